/**
 * The steps of one dial attempt that both dialers share (the in-process {@link DialLoop} and,
 * with REDIS_URL, the BullMQ {@link DialQueue}): claiming the work in the store before the
 * carrier is asked, the carrier request, recording its answer, and settling a failed request.
 *
 * Claims are conditional UPDATEs (`calls.update` and `campaigns.updateContact` with a `where`):
 * atomic in the database, so two processes sharing it can never both claim one API call or one
 * contact's attempt.
 */
import type { CampaignRow, ContactRow } from '../store/campaigns.js';
import type { CallRow } from '../store/calls.js';
import { errorMessage } from '../util/errors.js';
import { storeErrorHint } from '../calls/recorder.js';
import type { OutboundContext } from './context.js';
import { DialError, type DialRequest } from './dialer.js';
import type { Finalizer } from './finalizer.js';
import type { CampaignSettings } from './settings.js';
import { fillTemplate } from './template.js';
import { newId } from '../store/ids.js';

export interface PlaceOptions {
  /** Origin the carrier calls back (PUBLIC_URL). */
  publicUrl: string;
  /** Caller id used when a request or campaign names none. */
  defaultFrom?: string | undefined;
  defaultAgentId: string;
  /** Twilio `timeLimit` for outbound calls. */
  maxCallS: number;
}

/** Claims a queued API call (undefined: gone, no longer queued, or hung up meanwhile). */
export function claimQueuedCall(ctx: OutboundContext, id: string, now: number): Promise<CallRow | undefined> {
  // Atomic in the database: of several processes claiming one row, one gets it.
  return ctx.calls.update(id, { status: 'claimed', claimedAt: now }, { status: 'queued', hangupRequested: false });
}

/**
 * Claims a contact's next attempt and writes its call row (`claimed`) in one transaction, before
 * the carrier is asked. Undefined when the contact was claimed elsewhere (its state or attempt
 * count moved on), or was settled without a dial (missing template variable or caller id).
 */
export async function claimContactAttempt(ctx: OutboundContext, o: PlaceOptions, campaign: CampaignRow<CampaignSettings>, contact: ContactRow, now: number): Promise<CallRow | undefined> {
  const { calls, campaigns } = ctx;
  const s = campaign.settings;
  const fill = (t: string | undefined) => (t === undefined ? undefined : fillTemplate(t, contact.variables));
  const prompt = fill(s.prompt);
  const greeting = fill(s.customGreeting);
  const from = s.from ?? o.defaultFrom;
  if ((prompt !== undefined && !prompt.ok) || (greeting !== undefined && !greeting.ok) || from === undefined) {
    const why = from === undefined ? 'no caller id: set settings.from or DEFAULT_CALLER_ID' : 'a template variable is missing for this contact';
    await campaigns.updateContact(contact.id, { state: 'done', outcome: 'failed', lastError: why }, now, { state: 'pending' });
    if (from === undefined) await pauseRunning(ctx, campaign.id, 'configuration', why, now);
    return undefined;
  }
  const vm = s.voicemail;
  const id = newId('call', now);
  return calls.transaction(async (tx) => {
    // The contact is claimed first (a conditional UPDATE), only if it is still pending with the
    // attempts this claim expects: another process may have taken it.
    const claimed = await tx.campaigns.updateContact(contact.id, { state: 'dialing', attempts: contact.attempts + 1, lastCallId: id }, now, { state: 'pending', attempts: contact.attempts });
    if (!claimed) return undefined;
    return tx.calls.insert(
      {
        id,
        direction: 'outbound',
        to: contact.phone,
        from,
        agentId: s.agentId ?? o.defaultAgentId,
        prompt: prompt?.ok ? prompt.text : undefined,
        customGreeting: greeting?.ok ? greeting.text : undefined,
        metadata: { ...(s.metadata ?? {}), campaignName: campaign.name },
        machineDetection: vm.action !== 'continue',
        voicemailAction: vm.action === 'continue' ? undefined : vm.action,
        voicemailMessage: vm.action === 'message' ? vm.message : undefined,
        campaignId: campaign.id,
        contactId: contact.id,
        ...(s.record !== undefined ? { record: s.record } : {}),
        attempt: contact.attempts + 1,
        status: 'claimed',
        claimedAt: now,
      },
      now,
    );
  });
}

/** The carrier request for a claimed row. */
export function dialRequestFor(row: CallRow, o: PlaceOptions, timeoutS: number): DialRequest {
  const base = o.publicUrl;
  const q = `?callId=${encodeURIComponent(row.id)}`;
  const req: DialRequest = {
    callId: row.id,
    to: row.to,
    from: row.from,
    url: `${base}/twilio/voice${q}`,
    statusCallback: `${base}/twilio/status${q}`,
    timeoutS,
    timeLimitS: o.maxCallS,
  };
  if (row.machineDetection) {
    req.machineDetection = row.voicemailAction === 'message' ? 'DetectMessageEnd' : 'Enable';
    req.amdCallback = `${base}/twilio/amd${q}`;
  }
  return req;
}

/**
 * The carrier created the call: its CallSid is stored (`dialed`). Returns true when the call was
 * hung up through the API meanwhile (the caller ends it at the carrier).
 */
export async function recordDialed(ctx: OutboundContext, row: CallRow, sid: string, status: string): Promise<boolean> {
  const { calls } = ctx;
  const now = ctx.now();
  try {
    const fresh = await calls.get(row.id);
    const dialed = await calls.update(row.id, { callSid: sid, dialedAt: fresh?.dialedAt ?? now, status: fresh?.status === 'claimed' ? 'dialed' : fresh?.status });
    await calls.event(row.id, 'dialed', status, null, { callSid: sid }, now);
    if (dialed !== undefined) ctx.callEvents?.started(dialed);
    return fresh?.hangupRequested === true;
  } catch (err) {
    // The call exists at the carrier but its CallSid is not stored: its callbacks (by call id) or a recheck will tie it.
    ctx.onStoreError('dial_placed', err);
    ctx.log.error({ callId: row.id, callSid: sid, err: errorMessage(err) }, storeErrorHint(err));
    ctx.attempts.recheckAt(row.id, now + 15_000);
    return false;
  }
}

/** Pauses a campaign that is running (a finished or paused one is left alone). */
export async function pauseRunning(ctx: OutboundContext, campaignId: string, reason: string, lastError: string, now: number): Promise<void> {
  const c = await ctx.campaigns.get(campaignId);
  if (c === undefined || (c.status !== 'running' && c.status !== 'draft')) return;
  await ctx.campaigns.setStatus(campaignId, 'paused', { pauseReason: reason, lastError }, now);
}

export interface DialFailureHooks {
  onDial?: ((result: string) => void) | undefined;
  /** The carrier said 429: how long to hold off (the caller also pauses its pacing). */
  rateLimited(): number;
}

/** The carrier request failed: the attempt is finished, voided or rechecked by the kind of failure. */
export async function settleDialFailure(ctx: OutboundContext, f: Finalizer, row: CallRow, err: unknown, hooks: DialFailureHooks): Promise<void> {
  const { calls } = ctx;
  const now = ctx.now();
  const e = err instanceof DialError ? err : new DialError('unknown', errorMessage(err));
  hooks.onDial?.(e.kind);
  ctx.log.warn({ callId: row.id, kind: e.kind, code: e.code, httpStatus: e.httpStatus, err: e.message }, 'dial failed');
  await calls.event(row.id, 'dial_error', null, null, { kind: e.kind, code: e.code ?? null, httpStatus: e.httpStatus ?? null, message: e.message }, now);
  const fresh = (await calls.get(row.id)) ?? row;
  if (fresh.callSid !== null || fresh.finalizedAt !== null) return; // a callback already told us the call exists
  switch (e.kind) {
    case 'invalid-number':
      await calls.update(row.id, { errorCode: e.code ?? null, errorMessage: e.message });
      await f.finalize(fresh, 'failed', { errorCode: e.code, errorMessage: e.message, contactOutcome: 'invalid-number', noRetry: true });
      return;
    case 'rate-limited': {
      const backoff = hooks.rateLimited();
      await f.voidAttempt(fresh.id, `rate limited by the carrier (${e.code ?? 429}); retrying in ${backoff} ms`, now + backoff);
      return;
    }
    case 'auth':
      if (fresh.campaignId === null) {
        await f.finalize(fresh, 'failed', { errorCode: e.code, errorMessage: `carrier rejected our credentials: ${e.message}` });
        return;
      }
      await f.voidAttempt(fresh.id, e.message);
      await pauseRunning(ctx, fresh.campaignId, 'carrier_auth', `carrier rejected our credentials (${e.code ?? e.httpStatus ?? ''}): ${e.message}`, now);
      return;
    case 'rejected':
      await calls.update(row.id, { errorCode: e.code ?? null, errorMessage: e.message });
      await f.finalize(fresh, 'failed', { errorCode: e.code, errorMessage: e.message });
      return;
    case 'unknown':
      // The request may or may not have created a call: ask the carrier later rather than dial again.
      ctx.attempts.recheckAt(row.id, now + 15_000);
      ctx.attempts.releaseHeld(row.id);
      return;
  }
}
