/**
 * Transfers: handing a caller from the agent to a person, and back when
 * nobody answers.
 *
 * The call session decides *that* a transfer happens (a tool call, a hotkey,
 * the API) and hands the call over; from then on the coordinator owns it:
 *
 * - **cold:** the call is redirected to `<Dial action>` the person. The
 *   person's leg reports `answered` (its status callback); the action URL
 *   reports the end: after an answer the caller is hung up, otherwise
 *   (busy, no-answer, failed, canceled) the caller goes back to the agent on
 *   a new media stream.
 * - **warm:** the caller waits in a conference (hold audio) while Playline
 *   calls the person, who first hears a summary and then joins; when the
 *   person does not answer, the caller is redirected back to the agent.
 *
 * The call's capacity slot follows it: held while the person's phone rings,
 * handed to the return stream when nobody answers, released once the person
 * answers (the agent is no longer needed) or the call ends. Every step is a
 * journal entry on the call's record. Nothing here throws into a request.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { CallJournal } from '../calls/journal.js';
import { conferenceJoinTwiml, conferenceWaitTwiml, hangupTwiml, sayConnectStreamTwiml, sayHangupTwiml, transferDialTwiml, type SayOptions } from '../carrier/twilio/twiml.js';
import type { AdmitResult, AdmittedCall, CallRoute, SessionManager, SessionResume, Slot } from '../session/manager.js';
import type { PromptService } from '../tts/prompts.js';

export type TransferMode = 'cold' | 'warm';
export type TransferBy = 'api' | 'tool' | 'dtmf';
/** How a transfer ended for the person: what `DialCallStatus` and the person's call status say. */
export type TransferOutcome = 'answered' | 'busy' | 'no-answer' | 'failed' | 'canceled';
export type TransferStep = 'requested' | 'dialing' | 'answered' | 'joined' | 'failed' | 'returned' | 'completed';

export interface TransferTargetInfo {
  /** The target's name (undefined for an API transfer to an explicit address). */
  name?: string;
  to: string;
  callerId?: string;
  timeoutS: number;
}

/** What the session hands over. */
export interface TransferPlan {
  /** From {@link TransferCoordinator.requested}. */
  id: string;
  callSid: string;
  call: AdmittedCall;
  route: CallRoute;
  slot: Slot;
  target: TransferTargetInfo;
  mode: TransferMode;
  by: TransferBy;
  reason?: string;
  /** What the person hears first in a warm transfer. */
  summary: string;
  resume: SessionResume;
}

/** The carrier operations a transfer needs (Twilio REST). */
export interface TransferCarrier {
  /** Replaces the call's TwiML (`calls(sid).update({twiml})`); false when it could not be done. */
  redirect(callSid: string, twiml: string): Promise<boolean>;
  /** Calls the person with inline TwiML; their CallSid, or undefined when the call could not be created. */
  createCall(o: { to: string; from: string; twiml: string; statusCallbackUrl: string; timeoutS: number }): Promise<string | undefined>;
  /** Ends a call (`status: completed`). */
  hangup(callSid: string): Promise<boolean>;
}

export interface TransferCoordinatorOptions {
  manager: SessionManager;
  /**
   * Admits the caller coming back to the agent on its held slot (default: the manager). With
   * REDIS_URL the fleet does it, so the new stream may land on any process.
   */
  admitReturn?: (call: AdmittedCall, held: { slot: Slot; route: CallRoute; resume: SessionResume }) => AdmitResult | Promise<AdmitResult>;
  /** Gives up a return's pending token (default: the manager's reservation). */
  cancelReturn?: (callSid: string, token: string) => void | Promise<void>;
  carrier: TransferCarrier;
  journal: CallJournal;
  /** Public https origin Twilio calls back (no trailing slash). */
  publicUrl: string;
  /** The media-stream URL for the return to the agent. */
  streamUrl: string;
  say: SayOptions;
  /** What the caller hears when nobody answered, before the agent is back. */
  returnText: string;
  /** What the caller hears when the agent cannot be reached again. */
  apologyText: string;
  /** Hold audio for a warm transfer's caller (Twilio's default music when absent). */
  holdUrl?: string;
  log: Logger;
  /** Counts a call handed to a person for good (`playline_calls_total{outcome="transferred"}`). */
  onTransferred?(): void;
  /** Extra time after the ring timeout before a transfer whose callbacks never came is given up. */
  callbackSlackMs?: number;
  /** A transfer starts (true) or ends (false) here: REDIS_URL routes its callbacks here meanwhile. */
  onTracking?(id: string, active: boolean): void;
  /** The return text and the warm summary in the agent's voice (`<Play>`) when TTS is on; `<Say>` otherwise. */
  prompts?: Pick<PromptService, 'spoken' | 'spokenSoon'>;
}

/** A warm transfer waits at most this long for its summary's audio before calling the person (then `<Say>`). */
const SUMMARY_TTS_WAIT_MS = 2500;

type Phase = 'dialing' | 'answered' | 'returning' | 'done';

interface Active {
  id: string;
  plan: TransferPlan;
  phase: Phase;
  /** Warm: the person's call. */
  personSid?: string;
  timer: NodeJS.Timeout | undefined;
  startedAt: number;
}

/** `DialCallStatus` / `CallStatus` values that mean the person was not reached. */
const NOT_REACHED: ReadonlySet<string> = new Set(['busy', 'no-answer', 'failed', 'canceled']);
const notReached = (s: string): s is Exclude<TransferOutcome, 'answered'> => NOT_REACHED.has(s);

type RecordedPlan = Pick<TransferPlan, 'callSid' | 'mode' | 'by' | 'target' | 'reason'>;

export class TransferCoordinator {
  readonly #o: TransferCoordinatorOptions;
  readonly #byId = new Map<string, Active>();
  readonly #byCall = new Map<string, Active>();

  constructor(opts: TransferCoordinatorOptions) {
    this.#o = opts;
  }

  /** True while `callSid` is being transferred (the person's phone rings, or they are talking). */
  has(callSid: string): boolean {
    return this.#byCall.has(callSid);
  }

  /** True while the transfer `id` is held by this coordinator (its callbacks mean something here). */
  tracks(id: string): boolean {
    return this.#byId.has(id);
  }

  get active(): number {
    return this.#byId.size;
  }

  /**
   * Starts a transfer the session handed over. Resolves once the carrier took the call (the
   * session then ends its stream and leaves the slot to the transfer), or with the reason it
   * could not (the session keeps the call and tells the agent).
   */
  async begin(plan: TransferPlan): Promise<{ ok: true; id: string } | { ok: false; error: string }> {
    if (this.#byCall.has(plan.callSid)) return { ok: false, error: 'a transfer of this call is already under way' };
    const id = plan.id;
    const t: Active = { id, plan, phase: 'dialing', timer: undefined, startedAt: Date.now() };
    const base = `${this.#o.publicUrl}/twilio/transfer/${id}`;
    const { target } = plan;
    let ok: boolean;
    if (plan.mode === 'cold') {
      const twiml = transferDialTwiml({
        to: target.to,
        timeoutS: target.timeoutS,
        actionUrl: `${base}/action`,
        statusCallbackUrl: `${base}/status`,
        ...(target.callerId !== undefined ? { callerId: target.callerId } : {}),
      });
      ok = await this.#o.carrier.redirect(plan.callSid, twiml);
    } else {
      ok = await this.#o.carrier.redirect(plan.callSid, conferenceWaitTwiml({ room: id, ...(this.#o.holdUrl !== undefined ? { waitUrl: this.#o.holdUrl } : {}), statusCallbackUrl: `${base}/conference` }));
    }
    if (!ok) {
      this.#record(plan, id, 'failed', { outcome: 'failed', why: 'the carrier did not accept the transfer' });
      return { ok: false, error: 'the carrier did not accept the transfer; the call stays with the agent' };
    }
    this.#byId.set(id, t);
    this.#byCall.set(plan.callSid, t);
    this.#o.onTracking?.(id, true);
    this.#record(plan, id, 'dialing', {});
    this.#arm(t, target.timeoutS * 1000 + (this.#o.callbackSlackMs ?? 60_000));
    if (plan.mode === 'warm') void this.#callPerson(t);
    return { ok: true, id };
  }

  /** Warm: call the person, who hears the summary and joins the caller's conference. */
  async #callPerson(t: Active): Promise<void> {
    const { plan } = t;
    const from = plan.target.callerId ?? (plan.call.direction === 'inbound' ? plan.call.to : plan.call.from);
    // The phase may change while we wait (the caller hung up).
    const over = (): boolean => t.phase === 'done';
    const summary = this.#o.prompts === undefined || plan.summary === '' ? plan.summary : await this.#o.prompts.spokenSoon({ text: plan.summary }, SUMMARY_TTS_WAIT_MS);
    if (over()) return;
    const sid = await this.#o.carrier.createCall({
      to: plan.target.to,
      from,
      twiml: conferenceJoinTwiml(summary, t.id, this.#o.say),
      statusCallbackUrl: `${this.#o.publicUrl}/twilio/transfer/${t.id}/status`,
      timeoutS: plan.target.timeoutS,
    });
    if (over()) return;
    if (sid === undefined) {
      this.#o.log.warn({ callSid: plan.callSid, transferId: t.id }, 'warm transfer: the call to the person could not be created; the caller goes back to the agent');
      await this.#returnByRedirect(t, 'failed');
      return;
    }
    t.personSid = sid;
  }

  /**
   * `<Dial action>` of a cold transfer: the person's leg ended. Answers the TwiML the caller
   * gets next: back to the agent when the person was not reached, else a hang-up.
   */
  async onDialAction(id: string, p: { dialCallStatus: string; callStatus?: string }): Promise<string> {
    const t = this.#byId.get(id);
    if (t === undefined) return hangupTwiml();
    const callerGone = p.callStatus === 'completed' || p.callStatus === 'canceled';
    const status = p.dialCallStatus;
    if (notReached(status) && t.phase === 'dialing' && !callerGone) return (await this.#returnTwiml(t, status)).twiml;
    // Answered and over (or the caller left): the call ends here.
    if (t.phase === 'dialing' && NOT_REACHED.has(p.dialCallStatus)) this.#record(t.plan, t.id, 'failed', { outcome: p.dialCallStatus });
    this.#finish(t, t.phase === 'answered' || p.dialCallStatus === 'completed' || p.dialCallStatus === 'answered' ? 'answered' : undefined);
    return hangupTwiml();
  }

  /**
   * The person's call status: `<Number statusCallback>` (cold) or the call Playline created
   * (warm). `in-progress`/`answered`: the person picked up; not reached: (warm) the caller goes back.
   */
  onPersonStatus(id: string, p: { callStatus: string }): void {
    const t = this.#byId.get(id);
    if (t === undefined) return;
    const s = p.callStatus;
    if ((s === 'in-progress' || s === 'answered') && t.phase === 'dialing') {
      t.phase = 'answered';
      this.#record(t.plan, t.id, 'answered', { outcome: 'answered' });
      // The agent is not needed any more: its capacity goes back now, not when the call ends.
      this.#o.manager.releaseSlot(t.plan.slot);
      this.#o.onTransferred?.();
      if (t.timer !== undefined) clearTimeout(t.timer);
      t.timer = undefined;
      return;
    }
    if (notReached(s) && t.phase === 'dialing' && t.plan.mode === 'warm') {
      void this.#returnByRedirect(t, s);
      return;
    }
    if (s === 'completed' && t.plan.mode === 'warm' && t.phase === 'answered') this.#finish(t, 'answered');
  }

  /** Warm: the conference's events. The person joining is the moment the two are connected. */
  onConference(id: string, p: { event: string; callSid?: string }): void {
    const t = this.#byId.get(id);
    if (t === undefined) return;
    if (p.event === 'participant-join' && p.callSid !== undefined && p.callSid === t.personSid) {
      if (t.phase === 'dialing') this.onPersonStatus(id, { callStatus: 'in-progress' });
      this.#record(t.plan, t.id, 'joined', {});
    } else if (p.event === 'participant-leave' && p.callSid === t.plan.callSid && t.phase !== 'returning') {
      // The caller left the conference (hung up while waiting, or after talking to the person).
      this.callEnded(t.plan.callSid);
    } else if (p.event === 'conference-end' && t.phase === 'answered') {
      this.#finish(t, 'answered');
    }
  }

  /** The caller's call ended (its final status callback) while a transfer held it. */
  callEnded(callSid: string): void {
    const t = this.#byCall.get(callSid);
    if (t === undefined) return;
    if (t.phase === 'dialing' && t.personSid !== undefined) void this.#o.carrier.hangup(t.personSid);
    this.#finish(t, t.phase === 'answered' ? 'answered' : undefined);
  }

  /** Releases every held slot and timer (shutdown). */
  dispose(): void {
    for (const t of [...this.#byId.values()]) this.#finish(t, undefined, false);
  }

  /** The TwiML that takes the caller back to the agent: a short prompt, then a new stream on the held slot. */
  async #returnTwiml(t: Active, outcome: TransferOutcome): Promise<{ twiml: string; token?: string }> {
    const { plan } = t;
    t.phase = 'returning';
    const note = `(Playline notice, not the caller: the transfer to ${plan.target.name ?? 'the person'} did not go through (${outcome.replace('-', ' ')}). The caller is back with you: tell them, and offer to help or to try again later.)`;
    const held = { slot: plan.slot, route: plan.route, resume: { ...plan.resume, note } };
    const admitted = this.#o.admitReturn !== undefined ? await this.#o.admitReturn(plan.call, held) : this.#o.manager.admit(plan.call, held);
    this.#record(plan, t.id, 'failed', { outcome });
    this.#forget(t);
    if (!admitted.ok) {
      this.#o.manager.releaseSlot(plan.slot);
      this.#o.log.warn({ callSid: plan.callSid, reason: admitted.reason }, 'transfer not answered and the agent cannot take the caller back; apologizing');
      return { twiml: sayHangupTwiml(this.#o.prompts?.spoken('apology') ?? this.#o.apologyText, this.#o.say) };
    }
    this.#record(plan, t.id, 'returned', { outcome });
    return {
      twiml: sayConnectStreamTwiml(this.#o.prompts?.spoken('transferReturn') ?? this.#o.returnText, this.#o.streamUrl, { agentId: admitted.route.agentId, token: admitted.token }, this.#o.say),
      token: admitted.token,
    };
  }

  async #returnByRedirect(t: Active, outcome: TransferOutcome): Promise<void> {
    if (t.phase !== 'dialing') return;
    const { twiml, token } = await this.#returnTwiml(t, outcome);
    const ok = await this.#o.carrier.redirect(t.plan.callSid, twiml);
    if (!ok) {
      this.#o.log.warn({ callSid: t.plan.callSid, transferId: t.id }, 'could not take the caller back from the hold; ending the call');
      if (token !== undefined && this.#o.cancelReturn !== undefined) await this.#o.cancelReturn(t.plan.callSid, token);
      else this.#o.manager.cancelReservation(t.plan.callSid);
      this.#o.manager.releaseSlot(t.plan.slot);
      void this.#o.carrier.hangup(t.plan.callSid);
    }
  }

  /** Callbacks never came (a carrier that does not send them, a lost request): the slot is not held forever. */
  #arm(t: Active, ms: number): void {
    t.timer = setTimeout(() => {
      t.timer = undefined;
      if (t.phase !== 'dialing') return;
      this.#o.log.warn({ callSid: t.plan.callSid, transferId: t.id, ms }, 'no callback about the transfer in time; releasing its slot');
      this.#record(t.plan, t.id, 'failed', { outcome: 'failed', why: 'no callback from the carrier' });
      this.#finish(t, undefined);
    }, ms);
    t.timer.unref();
  }

  #finish(t: Active, outcome: 'answered' | undefined, record = true): void {
    if (t.phase === 'done') return;
    const wasAnswered = t.phase === 'answered';
    t.phase = 'done';
    this.#forget(t);
    this.#o.manager.releaseSlot(t.plan.slot);
    if (record && outcome === 'answered') this.#record(t.plan, t.id, 'completed', { outcome: 'answered', seconds: Math.round((Date.now() - t.startedAt) / 1000) });
    if (outcome === 'answered' && !wasAnswered) this.#o.onTransferred?.();
  }

  #forget(t: Active): void {
    if (t.timer !== undefined) clearTimeout(t.timer);
    t.timer = undefined;
    if (this.#byId.delete(t.id)) this.#o.onTracking?.(t.id, false);
    if (this.#byCall.get(t.plan.callSid) === t) this.#byCall.delete(t.plan.callSid);
  }

  #record(plan: RecordedPlan, id: string, step: TransferStep, extra: { outcome?: string; why?: string; seconds?: number }): void {
    this.#o.journal.record(plan.callSid, {
      type: 'transfer',
      step,
      transferId: id,
      mode: plan.mode,
      by: plan.by,
      to: plan.target.to,
      ...(plan.target.name !== undefined ? { target: plan.target.name } : {}),
      ...(plan.reason !== undefined && step === 'requested' ? { reason: plan.reason } : {}),
      ...extra,
    });
  }

  /** Records the `requested` step (before the carrier is involved) and names the transfer. */
  requested(plan: RecordedPlan): string {
    const id = `tr_${randomBytes(9).toString('hex')}`;
    this.#record(plan, id, 'requested', {});
    return id;
  }
}
