/**
 * The end of an attempt, exactly once: its outcome on the call row, the
 * contact settled by the retry policy, the campaign's failure breaker and
 * completion, then post-call work (PlayAI transcript, webhook). Also the
 * other way an attempt ends: voided, when it never reached the carrier (the
 * contact is due again without using up an attempt).
 */
import { callPayload, outcomeOf } from '../calls/view.js';
import { errorMessage } from '../util/errors.js';
import type { CampaignStore } from '../store/campaigns.js';
import type { CallOutcome, CallPatch, CallRow } from '../store/calls.js';
import { settingsOf, type OutboundContext } from './context.js';
import { FailureBreaker } from './pacing.js';

export interface TranscriptFetcher {
  (call: CallRow): Promise<Array<{ role: string; text: string; at: number }> | undefined>;
}

export interface PostCallSink {
  enqueue(event: string, callId: string | null, payload: object): Promise<string>;
}

export interface FinalizeFacts {
  durationS?: number | undefined;
  answeredBy?: string | undefined;
  sequence?: number | undefined;
  errorCode?: number | undefined;
  errorMessage?: string | undefined;
  endReason?: string | undefined;
  /** The contact's outcome when it differs from the call's (`invalid-number`). */
  contactOutcome?: string;
  /** Do not retry the contact whatever the policy says. */
  noRetry?: boolean;
}

export interface FinalizerOptions {
  webhooks?: PostCallSink | undefined;
  fetchTranscript?: TranscriptFetcher | undefined;
}

export class Finalizer {
  readonly #c: OutboundContext;
  readonly #o: FinalizerOptions;
  readonly #breakers = new Map<string, FailureBreaker>();

  constructor(ctx: OutboundContext, opts: FinalizerOptions = {}) {
    this.#c = ctx;
    this.#o = opts;
  }

  /**
   * Finishes the call with its final carrier `status` (once: a row already
   * finalized is left alone). A session still open for it here is ended first.
   */
  async finalize(row: CallRow, status: string, f: FinalizeFacts = {}): Promise<void> {
    const { calls, attempts } = this.#c;
    const now = this.#c.now();
    // A finished call keeps no session.
    if (row.callSid !== null) this.#c.manager.getSession(row.callSid)?.close('caller_hangup');
    attempts.releaseHeld(row.id);
    attempts.cancelRecheck(row.id);
    const fresh = (await calls.get(row.id)) ?? row;
    if (fresh.finalizedAt !== null) return;
    const answeredBy = f.answeredBy ?? fresh.answeredBy ?? undefined;
    const outcome = outcomeOf(status, answeredBy);
    const patch: CallPatch = { status, outcome, endedAt: now, finalizedAt: now };
    if (f.durationS !== undefined) patch.durationS = f.durationS;
    else if (fresh.answeredAt !== null) patch.durationS = Math.round((now - fresh.answeredAt) / 1000);
    if (answeredBy !== undefined) patch.answeredBy = answeredBy;
    if (f.sequence !== undefined) patch.lastSequence = f.sequence;
    if (f.errorCode !== undefined) patch.errorCode = f.errorCode;
    if (f.errorMessage !== undefined) patch.errorMessage = f.errorMessage;
    if (f.endReason !== undefined && fresh.endReason === null) patch.endReason = f.endReason;
    // Once, also across processes: only the update that finds the row unfinalized goes on.
    const final = await calls.transaction(async (tx) => {
      const done = await tx.calls.update(row.id, patch, { finalizedAt: null });
      if (done === undefined) return undefined;
      await tx.calls.event(row.id, 'finalized', status, f.sequence ?? null, { outcome }, now);
      if (fresh.contactId !== null && fresh.campaignId !== null) await this.#settleContact(tx.campaigns, fresh, outcome, f, now);
      return done;
    });
    if (final === undefined) return;
    this.#c.callEvents?.ended(final);
    if (final.outcome !== 'not-dialed') attempts.trackAfterCall(this.#postCall(final));
    if (fresh.campaignId !== null) {
      attempts.removeActive(fresh.campaignId, row.id);
      try {
        await this.#checkBreaker(fresh.campaignId, outcome, now);
        await this.maybeComplete(fresh.campaignId);
      } catch (err) {
        // The call is finalized; the campaign's breaker or completion is settled by the next finalize or tick.
        this.#c.onStoreError('campaign_progress', err);
      }
      this.#c.campaignChanged(fresh.campaignId);
      this.#c.kick();
    }
  }

  /**
   * An attempt that never reached the carrier: the contact (or API call) is
   * due again at `dueAt`, without using up an attempt. Acts on the row as it
   * is now: a row a callback has tied to a CallSid, or that is finished, is
   * not voided (returns false).
   */
  async voidAttempt(rowId: string, why: string, dueAt = this.#c.now()): Promise<boolean> {
    const { calls, attempts } = this.#c;
    const now = this.#c.now();
    let canceled: CallRow | undefined;
    const voided = await calls.transaction(async ({ calls, campaigns }) => {
      const row = await calls.get(rowId);
      if (row === undefined || row.callSid !== null || row.finalizedAt !== null) return false;
      if (row.contactId !== null && row.campaignId !== null) {
        // Conditional: a callback tying a CallSid to the row (another process) wins over voiding it.
        const done = await calls.update(row.id, { status: 'not-dialed', outcome: 'not-dialed', errorMessage: why, finalizedAt: now, endedAt: now }, { callSid: null, finalizedAt: null });
        if (done === undefined) return false;
        await calls.event(row.id, 'voided', 'not-dialed', null, { why }, now);
        const contact = await campaigns.contact(row.contactId);
        if (contact !== undefined && contact.state === 'dialing' && contact.lastCallId === row.id) {
          // A campaign canceled meanwhile dials nobody again: the contact ends as canceled.
          const campaignCanceled = (await campaigns.get(row.campaignId))?.status === 'canceled';
          await campaigns.updateContact(
            contact.id,
            campaignCanceled
              ? { state: 'done', outcome: 'canceled', attempts: Math.max(0, contact.attempts - 1), lastError: why }
              : { state: 'pending', attempts: Math.max(0, contact.attempts - 1), nextAttemptAt: dueAt, lastError: why },
            now,
            { state: 'dialing', lastCallId: row.id },
          );
        }
        attempts.removeActive(row.campaignId, row.id);
        this.#c.campaignChanged(row.campaignId);
      } else if (row.hangupRequested) {
        // Hung up through the API while its dial was in flight: it is not dialed again.
        canceled = row;
      } else {
        // An API call goes back to the queue.
        if ((await calls.update(row.id, { status: 'queued', errorMessage: why }, { callSid: null, finalizedAt: null })) === undefined) return false;
        await calls.event(row.id, 'requeued', 'queued', null, { why }, now);
      }
      return true;
    });
    if (!voided) return false;
    if (canceled !== undefined) {
      await this.finalize(canceled, 'canceled', { endReason: 'api_hangup', errorMessage: why });
      return true;
    }
    attempts.releaseHeld(rowId);
    if (dueAt > now) this.#c.wakeIn(dueAt - now);
    else this.#c.kick();
    return true;
  }

  /** Marks a running campaign completed when nothing is pending, dialing or live. */
  async maybeComplete(campaignId: string): Promise<void> {
    const { campaigns } = this.#c;
    const campaign = await campaigns.get(campaignId);
    if (campaign === undefined || campaign.status !== 'running') return;
    const counts = await campaigns.counts(campaignId);
    if (counts.byState.pending === 0 && counts.byState.dialing === 0 && this.#c.attempts.activeCount(campaignId) === 0) {
      await campaigns.setStatus(campaignId, 'completed', {}, this.#c.now());
      this.#c.log.info({ campaignId, outcomes: counts.byOutcome, attempts: counts.attempts }, 'campaign completed');
    }
  }

  /** Forgets a campaign's failure history (it was started or resumed). */
  resetBreaker(campaignId: string): void {
    this.#breakers.get(campaignId)?.reset();
  }

  async #settleContact(campaigns: CampaignStore, row: CallRow, outcome: CallOutcome, f: FinalizeFacts, now: number): Promise<void> {
    const contactId = row.contactId;
    const campaignId = row.campaignId;
    if (contactId === null || campaignId === null) return;
    const contact = await campaigns.contact(contactId);
    if (contact === undefined || contact.state === 'done' || contact.lastCallId !== row.id) return;
    const campaign = await campaigns.get(campaignId);
    const s = campaign === undefined ? undefined : settingsOf(campaign);
    const retryable =
      s !== undefined &&
      campaign?.status !== 'canceled' &&
      f.noRetry !== true &&
      (s.retry.on as readonly string[]).includes(outcome) &&
      contact.attempts < s.retry.maxAttempts;
    if (retryable) {
      await campaigns.updateContact(contactId, { state: 'pending', nextAttemptAt: now + s.retry.delaySeconds * 1000, lastError: f.errorMessage ?? outcome }, now);
    } else {
      await campaigns.updateContact(contactId, { state: 'done', outcome: f.contactOutcome ?? outcome, lastError: f.errorMessage ?? null }, now);
    }
  }

  async #checkBreaker(campaignId: string, outcome: CallOutcome, now: number): Promise<void> {
    const { campaigns } = this.#c;
    const campaign = await campaigns.get(campaignId);
    if (campaign === undefined || campaign.status !== 'running') return;
    const s = settingsOf(campaign);
    let b = this.#breakers.get(campaignId);
    if (b === undefined) {
      b = new FailureBreaker(s.failurePause);
      this.#breakers.set(campaignId, b);
    }
    b.record(outcome === 'failed', now);
    const t = b.tripped(now);
    if (t !== undefined) {
      const why = `${t.failed} of the last ${t.total} attempts failed (threshold ${Math.round(s.failurePause.threshold * 100)}% over ${s.failurePause.windowSeconds} s)`;
      this.#c.log.warn({ campaignId, ...t }, 'failure spike: campaign paused');
      await campaigns.setStatus(campaignId, 'paused', { pauseReason: 'failure_spike', lastError: why }, now);
      b.reset();
    }
  }

  /** Transcript from PlayAI (when configured), then the post-call webhook. */
  async #postCall(row: CallRow): Promise<void> {
    const { calls, campaigns, log } = this.#c;
    try {
      if (this.#o.fetchTranscript !== undefined && row.conversationId !== null) {
        try {
          const turns = await this.#o.fetchTranscript(row);
          if (turns !== undefined && turns.length > 0) await calls.saveTranscript(row.id, 'playai', turns);
        } catch (err) {
          log.warn({ callId: row.id, err: errorMessage(err) }, 'PlayAI transcript fetch failed; the live transcript is kept');
        }
      }
      if (this.#o.webhooks !== undefined) {
        const fresh = (await calls.get(row.id)) ?? row;
        await this.#o.webhooks.enqueue('call.completed', row.id, await callPayload(fresh, calls, campaigns));
      }
    } catch (err) {
      log.error({ callId: row.id, err }, 'post-call work failed');
    }
  }
}
