/**
 * The dial loop: picks the next due work (API calls first, then campaigns
 * round robin), holds a capacity slot, claims the attempt in the store, and
 * asks the carrier, paced by the account's and each campaign's {@link Pacer}.
 *
 * Every resource taken before a fallible step is given back when the step
 * fails: a slot held for a job whose claim could not be written goes back to
 * the manager, and pacer tickets are taken only once the claim is durable.
 * A failing store (disk full) backs the loop off and is counted; dialing
 * resumes by itself once writes succeed again.
 */
import type { CampaignRow, ContactRow } from '../store/campaigns.js';
import type { CallRow } from '../store/calls.js';
import type { Slot } from '../session/manager.js';
import { errorMessage } from '../util/errors.js';
import { storeErrorHint } from '../calls/recorder.js';
import { settingsOf, type OutboundContext } from './context.js';
import type { Finalizer } from './finalizer.js';
import { Pacer, type PacerTicket } from './pacing.js';
import type { Reconciler } from './reconciler.js';
import { claimContactAttempt, claimQueuedCall, dialRequestFor, recordDialed, settleDialFailure } from './placing.js';
import type { CampaignSettings } from './settings.js';
import { isWithinWindow, nextWindowStart } from './window.js';

export interface DialLoopOptions {
  /** Origin the carrier calls back (PUBLIC_URL). */
  publicUrl: string;
  /** Caller id used when a request or campaign names none. */
  defaultFrom?: string | undefined;
  defaultAgentId: string;
  /** Account-wide dials per second (all campaigns and API calls together). */
  maxCps: number;
  /** Twilio `timeLimit` for outbound calls. */
  maxCallS: number;
  /** Longest sleep of the loop between checks. */
  pollMs?: number | undefined;
  onDial?: ((result: string) => void) | undefined;
}

type Job =
  | { kind: 'call'; row: CallRow; slot: Slot }
  | { kind: 'contact'; campaign: CampaignRow<CampaignSettings>; contact: ContactRow; slot: Slot };

const BACKOFF_429_MS = [1_000, 2_000, 5_000, 10_000, 30_000];
const BACKOFF_STORE_MS = [1_000, 2_000, 5_000, 10_000, 30_000];
const SWEEP_EVERY_MS = 5_000;
/** Queued API calls looked at per pick (one capped agent must not hold up the rest). */
const QUEUED_LOOKAHEAD = 20;
const PRUNE_EVERY_MS = 3_600_000;
/** Idempotency keys protect against retries, not forever: a day is plenty. */
const IDEMPOTENCY_TTL_MS = 86_400_000;

export class DialLoop {
  readonly #c: OutboundContext;
  readonly #f: Finalizer;
  readonly #r: Reconciler;
  readonly #o: DialLoopOptions;
  readonly #account: Pacer;
  readonly #campaignPacers = new Map<string, Pacer>();
  #timer: NodeJS.Timeout | undefined;
  #timerAt = 0;
  #running = false;
  #paused = false;
  #rr = 0;
  #rateBackoff = 0;
  #storeBackoff = 0;
  #storeBlockedUntil = 0;
  #lastSweep = 0;
  #lastPrune = 0;
  /** The pass in progress (store calls are async: one pass at a time). */
  #ticking: Promise<void> | undefined;
  #tickAgain = false;

  constructor(ctx: OutboundContext, finalizer: Finalizer, reconciler: Reconciler, opts: DialLoopOptions) {
    this.#c = ctx;
    this.#f = finalizer;
    this.#r = reconciler;
    this.#o = opts;
    this.#account = new Pacer(opts.maxCps);
  }

  start(): void {
    this.#running = true;
    this.schedule(0);
  }

  /** Stops the loop; resolves when the pass in progress (if any) is over. */
  async stop(): Promise<void> {
    this.#running = false;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#ticking;
  }

  /** No new dials (drain); calls in progress go on. */
  pause(): void {
    this.#paused = true;
  }

  /** Runs the loop in `delayMs`, unless it already runs sooner. */
  schedule(delayMs: number): void {
    if (!this.#running) return;
    const at = this.#c.now() + Math.max(0, delayMs);
    if (this.#timer !== undefined) {
      if (this.#timerAt <= at) return;
      clearTimeout(this.#timer);
    }
    this.#timerAt = at;
    this.#timer = setTimeout(() => this.#tick(), Math.max(0, delayMs));
  }

  #tick(): void {
    this.#timer = undefined;
    if (!this.#running) return;
    if (this.#ticking !== undefined) {
      this.#tickAgain = true;
      return;
    }
    this.#ticking = this.#pass().finally(() => {
      this.#ticking = undefined;
      if (this.#tickAgain) {
        this.#tickAgain = false;
        this.schedule(0);
      }
    });
  }

  async #pass(): Promise<void> {
    const now = this.#c.now();
    let wakeAt = now + (this.#o.pollMs ?? 1_000);
    try {
      if (now - this.#lastSweep >= SWEEP_EVERY_MS) {
        this.#lastSweep = now;
        await this.#r.sweep(now);
        if (now - this.#lastPrune >= PRUNE_EVERY_MS) {
          this.#lastPrune = now;
          await this.#c.calls.pruneIdempotency(IDEMPOTENCY_TTL_MS, now);
        }
      }
    } catch (err) {
      this.#storeFailed('sweep', err, now);
    }
    if (!this.#paused && now >= this.#storeBlockedUntil) wakeAt = Math.min(wakeAt, await this.#dialDue(now));
    else if (!this.#paused) wakeAt = Math.min(wakeAt, this.#storeBlockedUntil);
    this.schedule(wakeAt - this.#c.now());
  }

  /** Dials everything due now; returns when to look again. */
  async #dialDue(now: number): Promise<number> {
    let wakeAt = Number.POSITIVE_INFINITY;
    for (;;) {
      const next = this.#account.nextAt();
      // Infinity: waiting for the carrier to answer a dial; its answer kicks the loop.
      if (next > now) return Math.min(wakeAt, next);
      let job: Job | number | undefined;
      try {
        job = await this.#pick(now);
      } catch (err) {
        this.#storeFailed('pick', err, now);
        return this.#storeBlockedUntil;
      }
      if (typeof job === 'number') return Math.min(wakeAt, job);
      if (job === undefined) return wakeAt;
      let row: CallRow | undefined;
      try {
        row = await this.#claim(job, now);
      } catch (err) {
        // Nothing was dialed: the slot goes back, no pacer ticket was taken.
        this.#c.manager.releaseSlot(job.slot);
        this.#storeFailed('claim', err, now);
        return this.#storeBlockedUntil;
      }
      this.#storeBackoff = 0;
      if (row === undefined) {
        this.#c.manager.releaseSlot(job.slot);
        continue;
      }
      const tickets = [this.#account.take(now)];
      if (job.kind === 'contact') tickets.push(this.#pacerOf(job.campaign).take(now));
      this.#c.attempts.hold(row.id, job.slot, now);
      if (row.campaignId !== null) {
        this.#c.attempts.addActive(row.campaignId, row.id);
        this.#c.campaignChanged(row.campaignId);
      }
      const timeoutS = job.kind === 'contact' ? job.campaign.settings.ringTimeoutSeconds : this.#c.ringTimeoutS;
      this.#c.attempts.trackDial(this.#place(row, timeoutS).finally(() => this.#answered(tickets)));
    }
  }

  #answered(tickets: PacerTicket[]): void {
    const t = this.#c.now();
    for (const ticket of tickets) ticket.answeredAt ??= t;
    this.#c.kick();
  }

  #storeFailed(op: string, err: unknown, now: number): void {
    const backoff = BACKOFF_STORE_MS[Math.min(this.#storeBackoff, BACKOFF_STORE_MS.length - 1)] ?? 30_000;
    this.#storeBackoff++;
    this.#storeBlockedUntil = now + backoff;
    this.#c.onStoreError(`dial_${op}`, err);
    this.#c.log.error({ op, err: errorMessage(err), retryInMs: backoff }, `dialing paused: ${storeErrorHint(err)}`);
  }

  /** The next job, a time to look again, or undefined when nothing is due. Holds a slot for the job. */
  async #pick(now: number): Promise<Job | number | undefined> {
    const { calls, campaigns, manager, attempts } = this.#c;
    let wake: number | undefined;
    const soon = (t: number) => (wake = wake === undefined ? t : Math.min(wake, t));
    // API calls first. One whose agent is at its AGENT_LIMITS cap waits without holding up the others.
    for (const queued of await calls.queued(QUEUED_LOOKAHEAD)) {
      if (queued.hangupRequested) continue;
      const slot = manager.holdOutboundSlot(queued.id, queued.agentId);
      if (slot !== undefined) return { kind: 'call', row: queued, slot };
      if (manager.outboundRoom === 0) return now + 250;
      soon(now + 250);
    }
    const running = await campaigns.byStatus('running');
    for (let i = 0; i < running.length; i++) {
      const campaign = running[(this.#rr + i) % running.length];
      if (campaign === undefined) continue;
      const settings = settingsOf(campaign);
      if (attempts.activeCount(campaign.id) >= settings.maxConcurrent) continue;
      const pacer = this.#pacerOf({ ...campaign, settings });
      if (!pacer.ready(now)) {
        soon(pacer.nextAt());
        continue;
      }
      const contact = await this.#nextContact(campaign.id, settings, now);
      if (typeof contact === 'number') {
        soon(contact);
        continue;
      }
      if (contact === undefined) {
        await this.#f.maybeComplete(campaign.id);
        continue;
      }
      const slot = manager.holdOutboundSlot(`${campaign.id}:${contact.id}`, settings.agentId ?? this.#o.defaultAgentId);
      if (slot === undefined) {
        if (manager.outboundRoom === 0) return now + 250;
        // This campaign's agent is at its cap: the other campaigns go on.
        soon(now + 250);
        continue;
      }
      this.#rr = (this.#rr + i + 1) % Math.max(1, running.length);
      return { kind: 'contact', campaign: { ...campaign, settings }, contact, slot };
    }
    return wake;
  }

  /** The first due contact that may be called now; updates the others it passes over. */
  async #nextContact(campaignId: string, s: CampaignSettings, now: number): Promise<ContactRow | number | undefined> {
    const { campaigns } = this.#c;
    for (let round = 0; round < 5; round++) {
      const due = await campaigns.due(campaignId, now, 50);
      if (due.length === 0) return campaigns.nextDue(campaignId);
      for (const contact of due) {
        if (await campaigns.dncHas(contact.phone)) {
          await campaigns.updateContact(contact.id, { state: 'done', outcome: 'dnc', lastError: 'on the do-not-call list' }, now, { state: 'pending' });
          continue;
        }
        if (s.window !== undefined && !isWithinWindow(s.window, now, contact.timezone ?? undefined)) {
          const next = nextWindowStart(s.window, now, contact.timezone ?? undefined);
          await campaigns.updateContact(contact.id, { nextAttemptAt: next ?? now + 7 * 86_400_000 }, now, { state: 'pending' });
          continue;
        }
        return contact;
      }
    }
    return now + 50;
  }

  /**
   * Claims the job (the API call's row, or the contact with its attempt's new row) before the
   * carrier is asked. Undefined when the job is no longer there to claim, or was settled without a dial.
   */
  async #claim(job: Job, now: number): Promise<CallRow | undefined> {
    if (job.kind === 'call') return claimQueuedCall(this.#c, job.row.id, now);
    return claimContactAttempt(this.#c, this.#o, job.campaign, job.contact, now);
  }

  async #place(row: CallRow, timeoutS: number): Promise<void> {
    let sid: string;
    let status: string;
    try {
      ({ sid, status } = await this.#c.dialer.create(dialRequestFor(row, this.#o, timeoutS)));
    } catch (err) {
      await settleDialFailure(this.#c, this.#f, row, err, {
        onDial: this.#o.onDial,
        rateLimited: () => {
          const backoff = BACKOFF_429_MS[Math.min(this.#rateBackoff, BACKOFF_429_MS.length - 1)] ?? 30_000;
          this.#rateBackoff++;
          this.#account.pauseUntil(this.#c.now() + backoff);
          return backoff;
        },
      });
      return;
    }
    this.#rateBackoff = 0;
    this.#o.onDial?.('dialed');
    if (await recordDialed(this.#c, row, sid, status)) await this.#c.dialer.hangup(sid).catch(() => undefined);
  }

  #pacerOf(campaign: CampaignRow<CampaignSettings>): Pacer {
    const rate = campaign.settings.callsPerSecond;
    let p = this.#campaignPacers.get(campaign.id);
    if (p === undefined) {
      p = new Pacer(rate);
      this.#campaignPacers.set(campaign.id, p);
    } else p.setRate(rate);
    return p;
  }
}
