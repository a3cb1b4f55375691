/**
 * The carrier's callbacks about calls, and their one owner: the TwiML request
 * of an outbound call at answer, status callbacks (inbound and outbound), and
 * async AMD results. A status callback is recorded, applied in
 * `SequenceNumber` order, and a terminal one finalizes the call once (which
 * ends a session still open for it); nothing else reacts to it.
 */
import { z } from 'zod';
import { httpToolSchema, type HttpToolDef } from '../tools/http.js';
import { transferTargetsSchema, type TransferTargets } from '../transfer/targets.js';
import { storeErrorHint } from '../calls/recorder.js';
import { isMachine } from '../calls/view.js';
import type { CallRoute, Slot } from '../session/manager.js';
import { TERMINAL_CALL_STATUSES, type CallPatch, type CallRow } from '../store/calls.js';
import { errorMessage } from '../util/errors.js';
import type { OutboundContext } from './context.js';
import type { Finalizer } from './finalizer.js';

export interface StatusUpdate {
  callSid: string;
  status: string;
  sequence?: number | undefined;
  durationS?: number | undefined;
  answeredBy?: string | undefined;
  sipResponseCode?: number | undefined;
  errorCode?: number | undefined;
}

export interface AmdResult {
  callSid: string;
  answeredBy: string;
  durationMs?: number | undefined;
}

export type AnswerResult =
  | { ok: true; route: CallRoute; slot?: Slot; direction: 'outbound-api' }
  /**
   * `gone`: unknown, finished, or a hang-up was requested: the call is hung up.
   * `duplicate`: the call was already answered (a second TwiML request that is not Twilio's retry).
   * `store_error`: its record cannot be read now (disk or database failure): the callee hears an apology.
   */
  | { ok: false; why: 'gone' | 'duplicate' | 'store_error' };

export class CarrierCallbacks {
  readonly #c: OutboundContext;
  readonly #f: Finalizer;

  constructor(ctx: OutboundContext, finalizer: Finalizer) {
    this.#c = ctx;
    this.#f = finalizer;
  }

  /**
   * The carrier fetches TwiML for an outbound call (`/twilio/voice?callId=`):
   * the route and held slot to admit it with.
   */
  async answer(callId: string, callSid: string): Promise<AnswerResult> {
    const { calls, log } = this.#c;
    let row;
    try {
      row = await calls.get(callId);
    } catch (err) {
      this.#c.onStoreError('answer', err);
      log.error({ callId, callSid, err: errorMessage(err) }, `cannot read the record of an answered outbound call: ${storeErrorHint(err)}`);
      return { ok: false, why: 'store_error' };
    }
    if (row === undefined || row.direction !== 'outbound') return { ok: false, why: 'gone' };
    if (row.callSid !== null && row.callSid !== callSid) {
      log.warn({ callId, callSid, expected: row.callSid }, 'voice webhook for a call id with another CallSid; hanging up');
      return { ok: false, why: 'gone' };
    }
    const now = this.#c.now();
    try {
      // Its TwiML was served already (the `answered` event, which only this method writes; a status
      // callback saying in-progress may well come first): a second request is not Twilio's retry.
      if (row.finalizedAt === null && (await calls.hasEvent(callId, 'answered'))) return { ok: false, why: 'duplicate' };
      if (row.callSid === null) await calls.update(callId, { callSid, dialedAt: row.dialedAt ?? now });
      if (row.finalizedAt !== null || row.hangupRequested) return { ok: false, why: 'gone' };
      const answered = await calls.update(callId, { answeredAt: row.answeredAt ?? now, status: TERMINAL_CALL_STATUSES.has(row.status) ? row.status : 'in-progress' });
      await calls.event(callId, 'answered', 'in-progress', null, null, now);
      if (answered !== undefined && answered.status !== row.status) this.#c.callEvents?.updated(answered, 'status', { status: answered.status });
    } catch (err) {
      // The call goes on without its record being up to date; the store error is counted and logged.
      this.#c.onStoreError('answer', err);
      log.error({ callId, callSid, err: errorMessage(err) }, 'could not record the answer of an outbound call; connecting it anyway');
    }
    const slot = this.#c.attempts.takeHeld(callId);
    const route = await this.routeOf(row);
    return slot === undefined ? { ok: true, route, direction: 'outbound-api' } : { ok: true, route, slot, direction: 'outbound-api' };
  }

  /** The route of a call we placed or started, from its record (and its campaign's settings). */
  async routeOf(row: CallRow): Promise<CallRoute> {
    const route: CallRoute = { agentId: row.agentId };
    if (row.prompt !== null) route.prompt = row.prompt;
    if (row.customGreeting !== null) route.customGreeting = row.customGreeting;
    if (row.record !== null) route.record = row.record;
    const fromCampaign = await this.#campaignCallSettings(row.campaignId);
    if (fromCampaign.transferTargets !== undefined) route.transferTargets = fromCampaign.transferTargets;
    if (fromCampaign.tools !== undefined) route.tools = fromCampaign.tools;
    return route;
  }

  /** A campaign's transfer targets and tools (stored settings, validated again: they crossed a database). */
  async #campaignCallSettings(campaignId: string | null): Promise<{ transferTargets?: TransferTargets; tools?: HttpToolDef[] }> {
    if (campaignId === null) return {};
    try {
      const settings = (await this.#c.campaigns.get<unknown>(campaignId))?.settings;
      if (typeof settings !== 'object' || settings === null) return {};
      const out: { transferTargets?: TransferTargets; tools?: HttpToolDef[] } = {};
      const targets = 'transferTargets' in settings ? transferTargetsSchema.safeParse(settings.transferTargets) : undefined;
      if (targets?.success === true) out.transferTargets = targets.data;
      const tools = 'tools' in settings ? z.array(httpToolSchema).safeParse(settings.tools) : undefined;
      if (tools?.success === true) out.tools = tools.data;
      return out;
    } catch (err) {
      this.#c.onStoreError('campaign_settings', err);
      return {};
    }
  }

  /** A status callback (`/twilio/status`, with `?callId=` for outbound calls). Never throws. */
  async onStatus(callId: string | undefined, b: StatusUpdate): Promise<void> {
    try {
      await this.#applyStatus(callId, b);
    } catch (err) {
      // The record could not be updated; a finished call still keeps no session, and a recheck settles the row later.
      if (TERMINAL_CALL_STATUSES.has(b.status)) this.#c.manager.getSession(b.callSid)?.close('caller_hangup');
      this.#c.onStoreError('status', err);
      this.#c.log.error({ callSid: b.callSid, status: b.status, err: errorMessage(err) }, `could not record a status callback: ${storeErrorHint(err)}`);
    }
  }

  async #applyStatus(callId: string | undefined, b: StatusUpdate): Promise<void> {
    const { calls } = this.#c;
    const row = (callId !== undefined ? await calls.get(callId) : undefined) ?? (await calls.getBySid(b.callSid));
    if (row === undefined) {
      // No record here (refused at the webhook, or a store failure): a finished call still keeps no session.
      if (TERMINAL_CALL_STATUSES.has(b.status)) this.#c.manager.getSession(b.callSid)?.close('caller_hangup');
      this.#c.log.debug({ callSid: b.callSid, status: b.status }, 'status callback for a call without a record');
      return;
    }
    const now = this.#c.now();
    const data: Record<string, unknown> = {};
    if (b.durationS !== undefined) data.durationS = b.durationS;
    if (b.answeredBy !== undefined) data.answeredBy = b.answeredBy;
    if (b.sipResponseCode !== undefined) data.sipResponseCode = b.sipResponseCode;
    if (row.callSid !== null && row.callSid !== b.callSid) {
      // Another call of the same call id (an attempt dialed again after a lost request): noted, not applied.
      await calls.event(row.id, 'status_other_call', b.status, b.sequence ?? null, { callSid: b.callSid, ...data }, now);
      if (TERMINAL_CALL_STATUSES.has(b.status)) this.#c.manager.getSession(b.callSid)?.close('caller_hangup');
      return;
    }
    await calls.event(row.id, 'status', b.status, b.sequence ?? null, Object.keys(data).length ? data : null, now);
    if (row.callSid === null) await calls.update(row.id, { callSid: b.callSid, dialedAt: row.dialedAt ?? now });
    if (row.finalizedAt !== null) return;
    // Out of order: an older callback than one already applied changes nothing.
    if (b.sequence !== undefined && row.lastSequence !== null && b.sequence <= row.lastSequence) return;
    if (TERMINAL_CALL_STATUSES.has(b.status)) {
      await this.#f.finalize({ ...row, callSid: row.callSid ?? b.callSid }, b.status, {
        durationS: b.durationS,
        answeredBy: b.answeredBy,
        sequence: b.sequence,
        errorCode: b.errorCode,
      });
      return;
    }
    const patch: CallPatch = { status: b.status };
    if (b.sequence !== undefined) patch.lastSequence = b.sequence;
    if (b.answeredBy !== undefined) patch.answeredBy = b.answeredBy;
    if (b.status === 'in-progress' && row.answeredAt === null) patch.answeredAt = now;
    // A final status applied meanwhile (another process) is not taken back.
    const updated = await calls.update(row.id, patch, { finalizedAt: null });
    if (updated !== undefined && b.status !== row.status) this.#c.callEvents?.updated(updated, 'status', { status: b.status });
  }

  /** The async AMD result (`/twilio/amd?callId=`): a machine gets the campaign's voicemail policy. Never throws. */
  async onAmd(callId: string | undefined, b: AmdResult): Promise<void> {
    try {
      await this.#applyAmd(callId, b);
    } catch (err) {
      this.#c.onStoreError('amd', err);
      this.#c.log.error({ callSid: b.callSid, err: errorMessage(err) }, `could not record an AMD result: ${storeErrorHint(err)}`);
    }
  }

  async #applyAmd(callId: string | undefined, b: AmdResult): Promise<void> {
    const { calls, log, dialer, attempts } = this.#c;
    const row = (callId !== undefined ? await calls.get(callId) : undefined) ?? (await calls.getBySid(b.callSid));
    if (row === undefined) return;
    const now = this.#c.now();
    if (row.callSid !== null && row.callSid !== b.callSid) {
      await calls.event(row.id, 'amd_other_call', null, null, { callSid: b.callSid, answeredBy: b.answeredBy }, now);
      return;
    }
    await calls.event(row.id, 'amd', null, null, { answeredBy: b.answeredBy, durationMs: b.durationMs ?? null }, now);
    await calls.update(row.id, { answeredBy: b.answeredBy });
    if (row.finalizedAt !== null) return;
    if (!isMachine(b.answeredBy) && b.answeredBy !== 'fax') return;
    const sid = row.callSid ?? b.callSid;
    const act = async (): Promise<void> => {
      try {
        if (row.voicemailAction === 'message' && row.voicemailMessage !== null && b.answeredBy !== 'fax') {
          await calls.event(row.id, 'voicemail_message', null, null, null, this.#c.now());
          await dialer.sayAndHangup(sid, row.voicemailMessage);
        } else if (row.voicemailAction !== null) {
          await calls.event(row.id, 'voicemail_hangup', null, null, null, this.#c.now());
          await dialer.hangup(sid);
        }
      } catch (err) {
        log.warn({ callId: row.id, callSid: sid, err: errorMessage(err) }, 'voicemail action failed');
      }
    };
    attempts.trackAfterCall(act());
  }
}
