/**
 * The session manager: the one place that knows every call in flight.
 *
 * A call takes a capacity slot when `/twilio/voice` admits it and gives it
 * back on every exit path: the stream never arrives (the reservation expires),
 * the token is refused, or the session closes for any reason. Tokens minted at
 * the webhook are single use and short lived; the media stream must present
 * one to get a session.
 */
import { randomBytes } from 'node:crypto';
import type { NumberRoute } from '../config.js';

export interface CallRoute {
  agentId: string;
  prompt?: string;
  customGreeting?: string;
}

export interface TranscriptTurn {
  role: 'user' | 'agent';
  text: string;
  at: string;
}

/** What the bridge knows about one call; kept for live calls and the most recent ended ones. */
export interface CallRecord {
  callSid: string;
  from: string;
  to: string;
  direction: string;
  agentId: string;
  createdAt: string;
  streamSid?: string;
  startedAt?: string;
  endedAt?: string;
  conversationId?: string;
  /** Latest Twilio call status from status callbacks. */
  status?: string;
  statusHistory: Array<{ status: string; at: string; sequence?: number; duration?: number }>;
  transcript: TranscriptTurn[];
  dtmf: string[];
  /** Texts the bridge asked the carrier to speak to the caller (apologies, goodbyes). */
  spokenToCaller: string[];
  endReason?: string;
}

export interface Reservation {
  token: string;
  callSid: string;
  route: CallRoute;
  record: CallRecord;
}

export type AdmitResult =
  | { ok: true; token: string; route: CallRoute; record: CallRecord }
  | { ok: false; reason: 'capacity' | 'draining' };

export type ClaimRefusal = 'missing_token' | 'unknown_token' | 'used_token' | 'expired_token' | 'call_mismatch';
export type ClaimResult = { ok: true; reservation: Reservation } | { ok: false; reason: ClaimRefusal };

/** What the manager needs from a live session. */
export interface ManagedSession {
  readonly callSid: string;
  close(reason: string): void;
}

export interface SessionManagerOptions {
  maxConcurrentCalls: number;
  tokenTtlMs: number;
  defaultAgentId: string;
  routes: Map<string, NumberRoute>;
  /** Local mode: every call goes to this agent id whatever the route says. */
  forceAgentId?: string;
  /** Called when a reservation expires without a stream (for metrics/logs). */
  onReservationExpired?(callSid: string): void;
}

const MAX_SPENT_TOKENS = 10_000;
const MAX_ENDED_RECORDS = 1_000;

interface PendingReservation extends Reservation {
  timer: NodeJS.Timeout;
}

export class SessionManager {
  readonly #opts: SessionManagerOptions;
  readonly #reservations = new Map<string, PendingReservation>();
  readonly #reservationByCall = new Map<string, string>();
  /** Tokens already claimed or expired, to tell a replay from a forgery in logs. */
  readonly #spent = new Map<string, 'used_token' | 'expired_token'>();
  readonly #sessions = new Map<string, ManagedSession>();
  /** Claimed but not yet registered (the session is being built). */
  #claimed = 0;
  readonly #records = new Map<string, CallRecord>();
  readonly #ended: string[] = [];
  #draining = false;

  constructor(opts: SessionManagerOptions) {
    this.#opts = opts;
  }

  get liveCalls(): number {
    return this.#sessions.size;
  }

  get reservedSlots(): number {
    return this.#reservations.size + this.#claimed;
  }

  get capacity(): number {
    return this.#opts.maxConcurrentCalls;
  }

  /** Slots in use: live sessions plus reservations. */
  get usedSlots(): number {
    return this.#sessions.size + this.#reservations.size + this.#claimed;
  }

  get draining(): boolean {
    return this.#draining;
  }

  /** True when a new call would be admitted now. */
  get ready(): boolean {
    return !this.#draining && this.usedSlots < this.capacity;
  }

  resolveRoute(to: string): CallRoute {
    const route = this.#opts.routes.get(to);
    const agentId = this.#opts.forceAgentId ?? route?.agentId ?? this.#opts.defaultAgentId;
    const out: CallRoute = { agentId };
    if (route?.prompt !== undefined) out.prompt = route.prompt;
    if (route?.customGreeting !== undefined) out.customGreeting = route.customGreeting;
    return out;
  }

  /** Admits a call at the webhook: reserves a slot and mints its stream token. */
  admit(call: { callSid: string; from: string; to: string; direction: string }): AdmitResult {
    if (this.#draining) return { ok: false, reason: 'draining' };
    // A retried webhook for the same call replaces its earlier reservation.
    const previous = this.#reservationByCall.get(call.callSid);
    if (previous !== undefined) this.#dropReservation(previous, 'expired_token');
    if (this.usedSlots >= this.capacity) return { ok: false, reason: 'capacity' };

    const route = this.resolveRoute(call.to);
    const token = randomBytes(18).toString('base64url');
    const record: CallRecord = {
      callSid: call.callSid,
      from: call.from,
      to: call.to,
      direction: call.direction,
      agentId: route.agentId,
      createdAt: new Date().toISOString(),
      statusHistory: [],
      transcript: [],
      dtmf: [],
      spokenToCaller: [],
    };
    const timer = setTimeout(() => {
      if (this.#dropReservation(token, 'expired_token')) this.#opts.onReservationExpired?.(call.callSid);
    }, this.#opts.tokenTtlMs);
    timer.unref();
    this.#reservations.set(token, { token, callSid: call.callSid, route, record, timer });
    this.#reservationByCall.set(call.callSid, token);
    this.#remember(record);
    return { ok: true, token, route, record };
  }

  /**
   * Redeems a stream token (single use). On success the slot stays held until
   * {@link register} + {@link release}, or {@link abandonClaim} if the session
   * could not be built.
   */
  claim(token: string | undefined, callSid: string): ClaimResult {
    if (token === undefined || token === '') return { ok: false, reason: 'missing_token' };
    const r = this.#reservations.get(token);
    if (r === undefined) return { ok: false, reason: this.#spent.get(token) ?? 'unknown_token' };
    this.#dropReservation(token, 'used_token');
    if (r.callSid !== callSid) return { ok: false, reason: 'call_mismatch' };
    this.#claimed++;
    return { ok: true, reservation: { token: r.token, callSid: r.callSid, route: r.route, record: r.record } };
  }

  /** Gives back a claimed slot whose session was never registered. */
  abandonClaim(): void {
    if (this.#claimed > 0) this.#claimed--;
  }

  register(session: ManagedSession): void {
    if (this.#claimed > 0) this.#claimed--;
    this.#sessions.set(session.callSid, session);
  }

  /** Called by a session once, when it has closed. */
  release(session: ManagedSession): void {
    if (this.#sessions.get(session.callSid) === session) this.#sessions.delete(session.callSid);
    this.#retire(session.callSid);
  }

  getRecord(callSid: string): CallRecord | undefined {
    return this.#records.get(callSid);
  }

  getSession(callSid: string): ManagedSession | undefined {
    return this.#sessions.get(callSid);
  }

  sessions(): IterableIterator<ManagedSession> {
    return this.#sessions.values();
  }

  /** Records a Twilio status callback on the call (creating a record for calls we never saw). */
  recordStatus(callSid: string, status: string, extra: { sequence?: number; duration?: number; from?: string; to?: string; direction?: string }): CallRecord {
    let record = this.#records.get(callSid);
    if (record === undefined) {
      record = {
        callSid,
        from: extra.from ?? '',
        to: extra.to ?? '',
        direction: extra.direction ?? '',
        agentId: '',
        createdAt: new Date().toISOString(),
        statusHistory: [],
        transcript: [],
        dtmf: [],
        spokenToCaller: [],
      };
      this.#remember(record);
      this.#retire(callSid);
    }
    const entry: CallRecord['statusHistory'][number] = { status, at: new Date().toISOString() };
    if (extra.sequence !== undefined) entry.sequence = extra.sequence;
    if (extra.duration !== undefined) entry.duration = extra.duration;
    record.statusHistory.push(entry);
    if (record.statusHistory.length > 50) record.statusHistory.shift();
    // Callbacks may arrive out of order: the latest status is the one with the highest sequence.
    const latest = record.statusHistory.reduce((a, b) => ((b.sequence ?? -1) >= (a.sequence ?? -1) ? b : a));
    record.status = latest.status;
    return record;
  }

  /** Stops admitting calls (readiness goes false). */
  startDrain(): void {
    this.#draining = true;
  }

  /** Drops every reservation and timer (shutdown). Live sessions are closed by the caller. */
  dispose(): void {
    for (const token of [...this.#reservations.keys()]) this.#dropReservation(token, 'expired_token');
  }

  #remember(record: CallRecord): void {
    this.#records.set(record.callSid, record);
  }

  /** Queues an ended call's record for eviction once enough newer calls have ended. */
  #retire(callSid: string): void {
    this.#ended.push(callSid);
    while (this.#ended.length > MAX_ENDED_RECORDS) {
      const old = this.#ended.shift();
      if (old !== undefined && !this.#sessions.has(old) && !this.#reservationByCall.has(old)) this.#records.delete(old);
    }
  }

  #dropReservation(token: string, as: 'used_token' | 'expired_token'): boolean {
    const r = this.#reservations.get(token);
    if (r === undefined) return false;
    clearTimeout(r.timer);
    this.#reservations.delete(token);
    if (this.#reservationByCall.get(r.callSid) === token) this.#reservationByCall.delete(r.callSid);
    this.#spent.set(token, as);
    if (this.#spent.size > MAX_SPENT_TOKENS) {
      const oldest = this.#spent.keys().next().value;
      if (oldest !== undefined) this.#spent.delete(oldest);
    }
    if (as === 'expired_token' && !this.#sessions.has(r.callSid)) {
      r.record.endReason ??= 'stream_never_started';
      this.#retire(r.callSid);
    }
    return true;
  }
}
