/**
 * The session manager: the one place that knows every call in flight.
 *
 * Capacity is counted in slots. A call takes a slot when `/twilio/voice`
 * admits it, and the slot is released exactly once on every exit path: the
 * stream never arrives (the reservation expires), the token is refused, the
 * session could not be built, or the session closes for any reason. Slots are
 * objects with a `released` flag, so a double release cannot go negative and
 * a missed one shows up as a live slot in tests.
 *
 * Limits: MAX_CONCURRENT_CALLS, optional per-agent caps, and the account limit
 * learned from a PlayAI 4429 (the number of agent sessions open at that
 * moment), which holds until a call ends or a cooldown passes.
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
  /** Latest Twilio call status from status callbacks (highest SequenceNumber). */
  status?: string;
  statusHistory: Array<{ status: string; at: string; sequence?: number; duration?: number }>;
  transcript: TranscriptTurn[];
  dtmf: string[];
  /** Texts the bridge asked the carrier to speak to the caller (apologies, goodbyes). */
  spokenToCaller: string[];
  /** Agent reconnects during the call, successful ones. */
  agentReconnects: number;
  endReason?: string;
}

/** A unit of capacity held by one admitted call. */
export interface Slot {
  readonly callSid: string;
  readonly agentId: string;
  /** Taken by outbound dialing (counts against MAX_CONCURRENT_CALLS − INBOUND_RESERVED). */
  readonly outbound?: boolean;
  released: boolean;
}

export interface Reservation {
  token: string;
  callSid: string;
  route: CallRoute;
  record: CallRecord;
  slot: Slot;
}

export type RefusalReason = 'capacity' | 'agent_capacity' | 'agent_limit' | 'draining' | 'overload';

export type AdmitResult =
  | { ok: true; token: string; route: CallRoute; record: CallRecord }
  | { ok: false; reason: RefusalReason };

export type ClaimRefusal = 'missing_token' | 'unknown_token' | 'used_token' | 'expired_token' | 'call_mismatch';
export type ClaimResult = { ok: true; reservation: Reservation } | { ok: false; reason: ClaimRefusal };

/** What the manager needs from a live session. */
export interface ManagedSession {
  readonly callSid: string;
  readonly slot: Slot;
  /** True while the session holds an open agent socket (counts toward the agent account's limit). */
  readonly agentConnected: boolean;
  /** True once the agent leg has sent `init` at least once. */
  readonly agentConnectedOnce: boolean;
  /** Ends the call now. */
  close(reason: string): void;
  /** Ends the call with a goodbye spoken to the caller (drain, maximum length). */
  endWithGoodbye(reason: string): void;
  /** Periodic check: dead sockets, idle stream, maximum length. `now` is performance.now(). */
  sweep(now: number): void;
}

export interface SessionManagerOptions {
  maxConcurrentCalls: number;
  tokenTtlMs: number;
  defaultAgentId: string;
  routes: Map<string, NumberRoute>;
  /** Local mode: every call goes to this agent id whatever the route says. */
  forceAgentId?: string;
  agentLimits?: Map<string, number>;
  agentCapacityCooldownMs?: number;
  /** Called when a reservation expires without a stream (for metrics/logs). */
  onReservationExpired?(callSid: string): void;
  /** Clock for the learned-limit cooldown (tests). */
  now?: () => number;
  /** True while the process is too busy to take another call (see LoadGuard). */
  overloaded?: () => boolean;
  /** Slots outbound dialing never takes (INBOUND_RESERVED). */
  inboundReserved?: number;
  /** Called once when a live session has ended (after its slot is released), with its record. */
  onSessionEnded?(record: CallRecord): void;
}

const MAX_SPENT_TOKENS = 10_000;
const MAX_ENDED_RECORDS = 1_000;

interface PendingReservation extends Reservation {
  timer: NodeJS.Timeout;
}

export class SessionManager {
  readonly #opts: SessionManagerOptions;
  readonly #now: () => number;
  readonly #slots = new Set<Slot>();
  readonly #perAgent = new Map<string, number>();
  readonly #reservations = new Map<string, PendingReservation>();
  readonly #reservationByCall = new Map<string, string>();
  /** Tokens already claimed or expired, to tell a replay from a forgery in logs. */
  readonly #spent = new Map<string, 'used_token' | 'expired_token'>();
  readonly #sessions = new Map<string, ManagedSession>();
  readonly #records = new Map<string, CallRecord>();
  readonly #ended: string[] = [];
  #draining = false;
  #outboundSlots = 0;
  /** Account limit learned from a 4429, valid until `until` (or until a call ends). */
  #learned: { limit: number; until: number } | undefined;
  #sweepTimer: NodeJS.Timeout | undefined;

  constructor(opts: SessionManagerOptions) {
    this.#opts = opts;
    this.#now = opts.now ?? Date.now;
  }

  get liveCalls(): number {
    return this.#sessions.size;
  }

  /** Slots held by calls that have no live session yet (admitted, stream not started). */
  get reservedSlots(): number {
    return this.#slots.size - this.#sessions.size;
  }

  /** Slots in use: live sessions plus reservations. */
  get usedSlots(): number {
    return this.#slots.size;
  }

  /** The configured maximum. */
  get maxCalls(): number {
    return this.#opts.maxConcurrentCalls;
  }

  /** The maximum in force now: MAX_CONCURRENT_CALLS, or less after a 4429. */
  get capacity(): number {
    const learned = this.#learnedLimit();
    return learned === undefined ? this.#opts.maxConcurrentCalls : Math.min(this.#opts.maxConcurrentCalls, learned);
  }

  get draining(): boolean {
    return this.#draining;
  }

  /** True when a new call would be admitted now (for an agent without its own cap). */
  get ready(): boolean {
    return !this.#draining && this.usedSlots < this.capacity && this.#opts.overloaded?.() !== true;
  }

  /** Agent sessions with an open socket now. */
  get openAgentSessions(): number {
    let n = 0;
    for (const s of this.#sessions.values()) if (s.agentConnected) n++;
    return n;
  }

  resolveRoute(to: string): CallRoute {
    const route = this.#opts.routes.get(to);
    const agentId = this.#opts.forceAgentId ?? route?.agentId ?? this.#opts.defaultAgentId;
    const out: CallRoute = { agentId };
    if (route?.prompt !== undefined) out.prompt = route.prompt;
    if (route?.customGreeting !== undefined) out.customGreeting = route.customGreeting;
    return out;
  }

  /**
   * Holds a slot for an outbound call about to be dialed, so that a call
   * that answers always finds room. Outbound calls never take the last
   * INBOUND_RESERVED slots, and none is held while draining, overloaded, at
   * the agent's own cap, or after a PlayAI 4429 lowered the capacity.
   * The holder passes the slot to {@link admit} at answer, or gives it back
   * with {@link releaseSlot}.
   */
  holdOutboundSlot(key: string, agentId: string): Slot | undefined {
    if (this.outboundRoom === 0) return undefined;
    const agentCap = this.#opts.agentLimits?.get(this.#opts.forceAgentId ?? agentId);
    if (agentCap !== undefined && (this.#perAgent.get(this.#opts.forceAgentId ?? agentId) ?? 0) >= agentCap) return undefined;
    this.#outboundSlots++;
    return this.#takeSlot(key, this.#opts.forceAgentId ?? agentId, true);
  }

  /** Slots outbound dialing may still take now: within capacity, and never the inbound reserve. */
  get outboundRoom(): number {
    if (this.#draining || this.#opts.overloaded?.() === true) return 0;
    const capacity = this.capacity;
    return Math.max(0, Math.min(capacity - this.usedSlots, capacity - (this.#opts.inboundReserved ?? 0) - this.#outboundSlots));
  }

  /** Slots held by outbound calls (ringing or live). */
  get outboundSlots(): number {
    return this.#outboundSlots;
  }

  /**
   * Admits a call at the webhook: reserves a slot and mints its stream token.
   * An outbound call passes its route in `held`, and the slot held for it
   * when it was dialed: it is admitted on that slot without another capacity check.
   */
  admit(call: { callSid: string; from: string; to: string; direction: string }, held?: { slot?: Slot; route: CallRoute }): AdmitResult {
    const heldSlot = held?.slot !== undefined && !held.slot.released ? held.slot : undefined;
    if (this.#draining && heldSlot === undefined) return { ok: false, reason: 'draining' };
    // A retried webhook for the same call replaces its earlier reservation.
    const previous = this.#reservationByCall.get(call.callSid);
    if (previous !== undefined) this.#dropReservation(previous, 'expired_token');
    const route = held !== undefined ? { ...held.route, agentId: this.#opts.forceAgentId ?? held.route.agentId } : this.resolveRoute(call.to);
    let slot: Slot;
    if (heldSlot !== undefined) {
      slot = heldSlot;
    } else {
      if (this.#opts.overloaded?.() === true) return { ok: false, reason: 'overload' };
      if (this.usedSlots >= this.capacity) {
        return { ok: false, reason: this.#learnedLimit() !== undefined && this.usedSlots < this.#opts.maxConcurrentCalls ? 'agent_capacity' : 'capacity' };
      }
      const agentCap = this.#opts.agentLimits?.get(route.agentId);
      if (agentCap !== undefined && (this.#perAgent.get(route.agentId) ?? 0) >= agentCap) return { ok: false, reason: 'agent_limit' };
      slot = this.#takeSlot(call.callSid, route.agentId);
    }
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
      agentReconnects: 0,
    };
    const timer = setTimeout(() => {
      if (this.#dropReservation(token, 'expired_token')) this.#opts.onReservationExpired?.(call.callSid);
    }, this.#opts.tokenTtlMs);
    timer.unref();
    this.#reservations.set(token, { token, callSid: call.callSid, route, record, slot, timer });
    this.#reservationByCall.set(call.callSid, token);
    this.#records.set(record.callSid, record);
    return { ok: true, token, route, record };
  }

  /**
   * Redeems a stream token (single use). On success the caller owns the
   * reservation's slot: it must {@link register} a session that releases it,
   * or give it back with {@link releaseSlot}.
   */
  claim(token: string | undefined, callSid: string): ClaimResult {
    if (token === undefined || token === '') return { ok: false, reason: 'missing_token' };
    const r = this.#reservations.get(token);
    if (r === undefined) return { ok: false, reason: this.#spent.get(token) ?? 'unknown_token' };
    this.#forgetReservation(r, 'used_token');
    if (r.callSid !== callSid) {
      this.releaseSlot(r.slot);
      this.#retire(r.callSid);
      return { ok: false, reason: 'call_mismatch' };
    }
    return { ok: true, reservation: { token: r.token, callSid: r.callSid, route: r.route, record: r.record, slot: r.slot } };
  }

  register(session: ManagedSession): void {
    const existing = this.#sessions.get(session.callSid);
    // A second stream for the same call (should not happen): the older session goes.
    if (existing !== undefined && existing !== session) existing.close('replaced');
    this.#sessions.set(session.callSid, session);
  }

  /** Called by a session once, when it has closed: releases its slot and forgets it. */
  release(session: ManagedSession): void {
    if (this.#sessions.get(session.callSid) === session) this.#sessions.delete(session.callSid);
    const hadSlot = !session.slot.released;
    this.releaseSlot(session.slot);
    // A call ending frees a connection on the agent account: the learned limit no longer holds.
    if (hadSlot && session.agentConnectedOnce) this.#learned = undefined;
    this.#retire(session.callSid);
    const record = this.#records.get(session.callSid);
    if (record !== undefined && this.#opts.onSessionEnded !== undefined) {
      try {
        this.#opts.onSessionEnded(record);
      } catch {
        // A failing observer must not break slot accounting.
      }
    }
  }

  /** Releases a slot (idempotent). */
  releaseSlot(slot: Slot): void {
    if (slot.released) return;
    slot.released = true;
    this.#slots.delete(slot);
    if (slot.outbound === true) this.#outboundSlots--;
    const n = (this.#perAgent.get(slot.agentId) ?? 1) - 1;
    if (n <= 0) this.#perAgent.delete(slot.agentId);
    else this.#perAgent.set(slot.agentId, n);
  }

  /**
   * A PlayAI 4429: the account's real limit is the number of agent sessions
   * open now. Admission is capped there until a call ends or the cooldown passes.
   */
  noteAgentCapacityExceeded(): number {
    const limit = this.openAgentSessions;
    this.#learned = { limit, until: this.#now() + (this.#opts.agentCapacityCooldownMs ?? 60_000) };
    return limit;
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
        agentReconnects: 0,
      };
      this.#records.set(callSid, record);
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

  /** Starts the periodic sweep of live sessions (dead sockets, idle, maximum length). */
  startSweep(intervalMs: number): void {
    if (this.#sweepTimer !== undefined) return;
    this.#sweepTimer = setInterval(() => this.sweep(), intervalMs);
    this.#sweepTimer.unref();
  }

  /** One sweep over every live session. */
  sweep(now = performance.now()): void {
    for (const s of [...this.#sessions.values()]) {
      try {
        s.sweep(now);
      } catch {
        s.close('internal_error');
      }
    }
  }

  /** Stops admitting calls (readiness goes false at once). */
  startDrain(): void {
    this.#draining = true;
  }

  /** Drops every reservation and timer (shutdown). Live sessions are closed by the caller. */
  dispose(): void {
    if (this.#sweepTimer !== undefined) clearInterval(this.#sweepTimer);
    this.#sweepTimer = undefined;
    for (const token of [...this.#reservations.keys()]) this.#dropReservation(token, 'expired_token');
  }

  #learnedLimit(): number | undefined {
    if (this.#learned === undefined) return undefined;
    if (this.#now() >= this.#learned.until) {
      this.#learned = undefined;
      return undefined;
    }
    return this.#learned.limit;
  }

  #takeSlot(callSid: string, agentId: string, outbound = false): Slot {
    const slot: Slot = outbound ? { callSid, agentId, outbound, released: false } : { callSid, agentId, released: false };
    this.#slots.add(slot);
    this.#perAgent.set(agentId, (this.#perAgent.get(agentId) ?? 0) + 1);
    return slot;
  }

  /** Queues an ended call's record for eviction once enough newer calls have ended. */
  #retire(callSid: string): void {
    this.#ended.push(callSid);
    while (this.#ended.length > MAX_ENDED_RECORDS) {
      const old = this.#ended.shift();
      if (old !== undefined && !this.#sessions.has(old) && !this.#reservationByCall.has(old)) this.#records.delete(old);
    }
  }

  #forgetReservation(r: PendingReservation, as: 'used_token' | 'expired_token'): void {
    clearTimeout(r.timer);
    this.#reservations.delete(r.token);
    if (this.#reservationByCall.get(r.callSid) === r.token) this.#reservationByCall.delete(r.callSid);
    this.#spent.set(r.token, as);
    if (this.#spent.size > MAX_SPENT_TOKENS) {
      const oldest = this.#spent.keys().next().value;
      if (oldest !== undefined) this.#spent.delete(oldest);
    }
  }

  #dropReservation(token: string, as: 'used_token' | 'expired_token'): boolean {
    const r = this.#reservations.get(token);
    if (r === undefined) return false;
    this.#forgetReservation(r, as);
    this.releaseSlot(r.slot);
    r.record.endReason ??= 'stream_never_started';
    this.#retire(r.callSid);
    return true;
  }
}
