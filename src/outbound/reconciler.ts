/**
 * Settling what nobody will tell us about: rows a previous run left
 * unfinished (crash, `kill -9`), dials the carrier never answered, and calls
 * whose callbacks stopped. Everything is asked of the carrier, and every
 * decision is taken on the row as it is when the carrier's answer arrives,
 * never on a snapshot taken before the request: a callback that landed in
 * the meantime wins.
 */
import { TERMINAL_CALL_STATUSES, type CallRow } from '../store/calls.js';
import { errorMessage } from '../util/errors.js';
import { ringLimitS, type OutboundContext } from './context.js';
import type { Finalizer } from './finalizer.js';

export type ReconcileResult = 'attached' | 'voided' | 'finished' | 'kept';

export interface ReconcilerOptions {
  /** Grace after a session ended before a call without a terminal status is settled with the carrier. */
  settleAfterMs?: number;
  /**
   * Fleet (shared store): a claim without a CallSid younger than this belongs to a dial another
   * process may still be placing; `reconcile` leaves it to that dial's job (default 0: none).
   */
  claimGraceMs?: number;
  /**
   * Fleet (shared store): true when another live process owns the call's media stream; `reconcile`
   * leaves such a row to its owner (it would otherwise end the record of a call that goes on there).
   */
  ownedElsewhere?: (callSid: string) => Promise<boolean>;
}

/** How long after a lost request or a restart a followed call is asked about again. */
const RECHECK_SOON_MS = 5_000;
const RECHECK_LATER_MS = 15_000;

export class Reconciler {
  readonly #c: OutboundContext;
  readonly #f: Finalizer;
  readonly #settleAfterMs: number;
  readonly #claimGraceMs: number;
  readonly #ownedElsewhere: ((callSid: string) => Promise<boolean>) | undefined;
  /** Outbound calls seen in progress at the carrier without their TwiML request served here, once. */
  readonly #orphans = new Set<string>();

  constructor(ctx: OutboundContext, finalizer: Finalizer, opts: ReconcilerOptions = {}) {
    this.#c = ctx;
    this.#f = finalizer;
    this.#settleAfterMs = opts.settleAfterMs ?? 20_000;
    this.#claimGraceMs = opts.claimGraceMs ?? 0;
    this.#ownedElsewhere = opts.ownedElsewhere;
  }

  /**
   * Settles rows a previous run (or a lost request) left unfinished. Safe to
   * call at any time; rows the carrier cannot be asked about now are kept.
   */
  async reconcile(): Promise<Record<ReconcileResult, number>> {
    const { calls, attempts, manager } = this.#c;
    const out: Record<ReconcileResult, number> = { attached: 0, voided: 0, finished: 0, kept: 0 };
    for (const row of await calls.unfinished()) {
      if (row.status === 'queued') continue;
      if (row.status === 'claimed' && row.callSid === null && this.#c.now() - (row.claimedAt ?? row.createdAt) < this.#claimGraceMs) continue;
      // A browser call whose token another process may still see redeemed (a shared database).
      if (row.direction === 'web' && row.answeredAt === null && this.#c.now() - row.createdAt < this.#claimGraceMs) continue;
      if (attempts.isHeld(row.id) || (row.callSid !== null && manager.getSession(row.callSid) !== undefined)) continue;
      try {
        if (row.callSid !== null && this.#ownedElsewhere !== undefined && (await this.#ownedElsewhere(row.callSid))) continue;
        const r = await this.reconcileRow(row);
        out[r]++;
        // Followed, but nothing here will hear of it unless a callback comes: look again soon.
        if (r === 'kept' || r === 'attached') attempts.recheckAt(row.id, this.#c.now() + RECHECK_SOON_MS);
      } catch (err) {
        out.kept++;
        attempts.recheckAt(row.id, this.#c.now() + RECHECK_LATER_MS);
        this.#c.log.warn({ callId: row.id, err: errorMessage(err) }, 'reconcile: carrier not reachable; will try again');
      }
    }
    if (out.attached + out.voided + out.finished > 0) this.#c.log.info(out, 'reconciled unfinished calls');
    return out;
  }

  /** Settles one unfinished row with the carrier. */
  async reconcileRow(row: CallRow): Promise<ReconcileResult> {
    const { calls, dialer } = this.#c;
    if (row.direction === 'web') {
      // A browser call: no carrier to ask. Still admitted here (token pending, stream live): kept.
      if (row.callSid !== null && this.#c.manager.hasCall(row.callSid)) return 'kept';
      if (row.sessionEndedAt === null) {
        await calls.update(row.id, { sessionEndedAt: this.#c.now(), endReason: row.endReason ?? (row.answeredAt === null ? 'no_stream' : 'bridge_restarted') });
      }
      await this.#f.finalize(row, row.answeredAt !== null ? 'completed' : 'canceled');
      return 'finished';
    }
    if (row.direction === 'inbound') {
      if (row.sessionEndedAt === null && row.callSid !== null && this.#c.manager.getSession(row.callSid) === undefined) {
        // The process that held its session is gone.
        await calls.update(row.id, { sessionEndedAt: this.#c.now(), endReason: row.endReason ?? 'bridge_restarted' });
      }
      const c = row.callSid !== null && dialer.name === 'twilio' ? await dialer.fetch(row.callSid) : undefined;
      if (c !== undefined && !TERMINAL_CALL_STATUSES.has(c.status)) return 'kept';
      await this.#f.finalize(row, c?.status ?? 'completed', { durationS: c?.durationS });
      return 'finished';
    }
    if (row.callSid === null) return this.#reconcileUnsent(row);
    const c = await dialer.fetch(row.callSid);
    const fresh = await calls.get(row.id);
    if (fresh === undefined || fresh.finalizedAt !== null) return 'finished';
    if (c === undefined) {
      await this.#f.finalize(fresh, 'failed', { endReason: 'lost_by_carrier', errorMessage: 'the carrier no longer knows this call' });
      return 'finished';
    }
    if (TERMINAL_CALL_STATUSES.has(c.status)) {
      await this.#f.finalize(fresh, c.status, { durationS: c.durationS, answeredBy: c.answeredBy });
      return 'finished';
    }
    if (fresh.campaignId !== null) this.#c.attempts.addActive(fresh.campaignId, fresh.id);
    return 'kept';
  }

  /** A claimed attempt without a CallSid: did the carrier get the request? */
  async #reconcileUnsent(row: CallRow): Promise<ReconcileResult> {
    const { calls } = this.#c;
    const since = (row.claimedAt ?? row.createdAt) - 5_000;
    const recent = await this.#c.dialer.findRecent(row.to, row.from, since);
    // The carrier's list took time: act on the row as it is now.
    const fresh = await calls.get(row.id);
    if (fresh === undefined || fresh.finalizedAt !== null) return 'finished';
    if (fresh.callSid !== null) {
      // A callback tied it to its call while we asked: it was dialed.
      if (fresh.campaignId !== null) this.#c.attempts.addActive(fresh.campaignId, fresh.id);
      return 'attached';
    }
    // A call of this attempt, or one nobody claims (not another attempt's).
    let found: (typeof recent)[number] | undefined;
    for (const c of recent) {
      const owner = await calls.getBySid(c.sid);
      if (owner === undefined || owner.id === fresh.id) {
        found = c;
        break;
      }
    }
    if (found === undefined) {
      return (await this.#f.voidAttempt(fresh.id, 'not found at the carrier after a restart or a lost request')) ? 'voided' : 'attached';
    }
    const now = this.#c.now();
    await calls.update(fresh.id, { callSid: found.sid, dialedAt: found.createdAt ?? now, status: found.status });
    await calls.event(fresh.id, 'reconciled', found.status, null, { callSid: found.sid }, now);
    if (TERMINAL_CALL_STATUSES.has(found.status)) {
      await this.#f.finalize({ ...fresh, callSid: found.sid }, found.status, { durationS: found.durationS, answeredBy: found.answeredBy });
    } else if (fresh.campaignId !== null) this.#c.attempts.addActive(fresh.campaignId, fresh.id);
    return 'attached';
  }

  /**
   * Every few seconds: settle rows due for a recheck, release slots held far
   * past the ring time, and schedule a recheck for calls that went quiet (no
   * session here and no callback for a while: lost callbacks, a restart).
   */
  async sweep(now: number): Promise<void> {
    const { calls, attempts, manager } = this.#c;
    for (const [id, at] of attempts.held()) {
      const row = await calls.get(id);
      if (row !== undefined && now - at < ((await ringLimitS(this.#c, row)) + 60) * 1000) continue;
      // No answer and no final status long after the ring time: ask the carrier.
      attempts.releaseHeld(id);
      attempts.recheckAt(id, now);
    }
    for (const row of await calls.unfinished()) {
      if (row.status === 'queued' || attempts.isHeld(row.id) || attempts.hasRecheck(row.id)) continue;
      if (row.callSid !== null && manager.getSession(row.callSid) !== undefined) continue;
      const last = Math.max(row.createdAt, row.claimedAt ?? 0, row.dialedAt ?? 0, row.answeredAt ?? 0, row.sessionEndedAt ?? 0);
      const quietFor = row.sessionEndedAt !== null ? this.#settleAfterMs : ((await ringLimitS(this.#c, row)) + 60) * 1000;
      if (now - last > quietFor) attempts.recheckAt(row.id, now);
    }
    for (const id of attempts.dueRechecks(now)) {
      const row = await calls.get(id);
      if (row === undefined || row.finalizedAt !== null || attempts.isHeld(id)) continue;
      if (row.callSid !== null && manager.getSession(row.callSid) !== undefined) continue;
      // A shared database (REDIS_URL): a call live on another process is its owner's to settle.
      if (row.callSid !== null && this.#ownedElsewhere !== undefined && (await this.#ownedElsewhere(row.callSid).catch(() => true))) {
        attempts.recheckAt(id, now + RECHECK_LATER_MS);
        continue;
      }
      attempts.trackDial(
        this.#settleStale(row).then((finished) => {
          if (!finished) attempts.recheckAt(id, this.#c.now() + RECHECK_LATER_MS);
        }),
      );
    }
  }

  /** Asks the carrier about a quiet call; true when the call is settled now. */
  async #settleStale(row: CallRow): Promise<boolean> {
    try {
      if (row.callSid === null || row.direction === 'web') {
        const r = await this.reconcileRow(row);
        return r === 'voided' || r === 'finished';
      }
      const c = await this.#c.dialer.fetch(row.callSid);
      const fresh = await this.#c.calls.get(row.id);
      if (fresh === undefined || fresh.finalizedAt !== null) return true;
      if (c === undefined) {
        await this.#f.finalize(fresh, fresh.answeredAt !== null || fresh.sessionEndedAt !== null ? 'completed' : 'failed', { endReason: fresh.endReason ?? 'no_final_status' });
        return true;
      }
      if (TERMINAL_CALL_STATUSES.has(c.status)) {
        await this.#f.finalize(fresh, c.status, { durationS: c.durationS, answeredBy: c.answeredBy });
        return true;
      }
      if (c.status === 'in-progress' && fresh.direction === 'outbound' && fresh.callSid !== null && !(await this.#c.calls.hasEvent(fresh.id, 'answered'))) {
        // Answered at the carrier but its TwiML request never reached us: nobody is on our side of
        // it. Seen twice in a row (a recheck apart), so a request still on its way is not cut off.
        if (this.#orphans.delete(fresh.id)) await this.#c.dialer.hangup(fresh.callSid);
        else this.#orphans.add(fresh.id);
      } else this.#orphans.delete(fresh.id);
      return false;
    } catch (err) {
      this.#c.log.warn({ callId: row.id, err: errorMessage(err) }, 'could not settle a quiet call; will try again');
      return false;
    }
  }
}
