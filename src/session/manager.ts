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
 * Limits: MAX_CONCURRENT_CALLS, optional per-agent caps (AGENT_LIMITS, keyed
 * `provider:id`), and per provider the account limit learned when it refused a
 * session for capacity (PlayAI 4429 and its equivalents: the number of that
 * provider's agent sessions open at that moment), which holds until one of its
 * calls ends or a cooldown passes. An agent that is down (agent/directory.ts)
 * takes no calls unless a fallback of it is up.
 *
 * Stream tokens are single use and bound to their CallSid. A call holds at
 * most one token or one live session: a second webhook for it gets the same
 * token back only while that token is pending and the request carries the
 * first one's `I-Twilio-Idempotency-Token` (or the first carried none), and a stream for
 * a CallSid that is live here is refused unless the live one is provably dead. The call record lives in
 * the store (`calls/`), not here.
 */
import { randomBytes } from 'node:crypto';
import { formatAgentRef, parseAgentRef, type AgentProviderName } from '../agent/port.js';
import type { EndReason } from '../calls/journal.js';
import type { NumberRoute } from '../config.js';
import type { DtmfAction, TransferTargets } from '../transfer/targets.js';
import type { HttpToolDef } from '../tools/http.js';
import type { ConversationTurn } from '../agent/port.js';
import type { TransferRequest, TransferStart } from './callSession.js';

export interface CallRoute {
  /** `provider:id`. */
  agentId: string;
  prompt?: string;
  customGreeting?: string;
  /** People the call may be transferred to, by name (over the agent's own). */
  transferTargets?: TransferTargets;
  /** Keypad hotkeys. */
  dtmf?: Record<string, DtmfAction>;
  /** Operator HTTP tools of the call's campaign (over the agent's own of the same name). */
  tools?: HttpToolDef[];
  /** Record the call: the API call's or campaign's `record`, else the number route's (the agent's and RECORDING_DEFAULT decide when absent). */
  record?: boolean;
}

/** A unit of capacity held by one admitted call. */
export interface Slot {
  readonly callSid: string;
  /** The agent the slot counts for (`provider:id`): the one serving the call (see {@link SessionManager.moveSlot}). */
  readonly agentId: string;
  /** Taken by outbound dialing (counts against MAX_CONCURRENT_CALLS − INBOUND_RESERVED). */
  readonly outbound?: boolean;
  released: boolean;
}

/** The call as the webhook described it. */
export interface AdmittedCall {
  callSid: string;
  from: string;
  to: string;
  direction: string;
}

export interface Reservation {
  token: string;
  callSid: string;
  call: AdmittedCall;
  route: CallRoute;
  slot: Slot;
  /** The call comes back to its agent (a transfer nobody answered): what the new session continues from. */
  resume?: SessionResume;
}

/** What a new session of a call that comes back continues from. */
export interface SessionResume {
  /** The agent that served the call (`provider:id`). */
  agentId: string;
  conversationId?: string;
  history: ConversationTurn[];
  /** Said to the agent once it is ready (what happened meanwhile). */
  note?: string;
}

export type RefusalReason = 'capacity' | 'agent_capacity' | 'agent_limit' | 'agent_down' | 'draining' | 'overload' | 'duplicate';

export type AdmitResult =
  | { ok: true; token: string; route: CallRoute; replayed: boolean }
  | { ok: false; reason: RefusalReason };

export type ClaimRefusal = 'missing_token' | 'unknown_token' | 'used_token' | 'expired_token' | 'call_mismatch' | 'call_live';
export type ClaimResult = { ok: true; reservation: Reservation } | { ok: false; reason: ClaimRefusal };

/** What the manager needs from a live session. */
export interface ManagedSession {
  readonly callSid: string;
  readonly slot: Slot;
  /** True while the session holds an open agent socket (counts toward the agent account's limit). */
  readonly agentConnected: boolean;
  /** True once the agent leg has sent `init` at least once. */
  readonly agentConnectedOnce: boolean;
  /** The provider of the agent serving the call now. */
  readonly agentProvider: AgentProviderName;
  /** True when its Twilio stream is provably gone (socket closed, or no media for seconds). */
  readonly streamDead: boolean;
  /** Ends the call now. */
  close(reason: EndReason): void;
  /** Ends the call with a goodbye spoken to the caller (drain, maximum length). */
  endWithGoodbye(reason: EndReason): void;
  /** Periodic check: dead sockets, idle stream, maximum length. `now` is performance.now(). */
  sweep(now: number): void;
  /** What `GET /v1/live` shows of the call (cheap, read-only). */
  snapshot?(): SessionSnapshot;
  /** True once the call went to a transfer, which holds the slot from then on. */
  readonly slotHandedOff?: boolean;
  /** Hands the call to a person (phone calls with a carrier that redirects). */
  requestTransfer?(req: TransferRequest): Promise<TransferStart>;
}

/** A live session as `GET /v1/live` shows it. */
export interface SessionSnapshot {
  /** The session state's name (`connecting`, `live`, `reconnecting`, `draining`, `ending`, `closed`). */
  state: string;
  /** When the media stream started (ms since the epoch). */
  startedAt: number;
  bargeIns: number;
  agentReconnects: number;
  /** The agent serving the call now (`provider:id`). */
  agentId: string;
  /** True while the agent socket is open and ready. */
  agentConnected: boolean;
  /** The call as it was admitted. */
  call: AdmittedCall;
  /** The call's route (its transfer targets and hotkeys; the agent's own are added by the directory). */
  route?: CallRoute;
  /** True when the call can be handed to a person (a phone call, and a carrier that redirects calls). */
  transferable?: boolean;
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
  /**
   * The agents that may take a call for `agentId`, in order: itself and its fallbacks, without
   * those marked down (agent/directory.ts). Admission takes the first one under its caps; none
   * at all refuses the call (`agent_down`). Default: the agent alone.
   */
  agentCandidates?: (agentId: string) => string[];
  /** Called when a reservation expires without a stream (for metrics/logs). */
  onReservationExpired?(callSid: string): void;
  /** Clock for the learned-limit cooldown (tests). */
  now?: () => number;
  /** True while the process is too busy to take another call (see LoadGuard). */
  overloaded?: () => boolean;
  /** Slots outbound dialing never takes (INBOUND_RESERVED). */
  inboundReserved?: number;
  /** A slot was released (REDIS_URL: its fleet lease is given back). */
  onSlotReleased?(slot: Slot): void;
  /** A slot now counts for another agent (REDIS_URL: its fleet lease moves too). */
  onSlotMoved?(slot: Slot, agentId: string): void;
}

const MAX_SPENT_TOKENS = 10_000;

interface PendingReservation extends Reservation {
  timer: NodeJS.Timeout;
  /** `I-Twilio-Idempotency-Token` of the webhook that minted it (its retries carry the same). */
  idempotencyToken: string | undefined;
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
  #draining = false;
  #outboundSlots = 0;
  /** Per provider, the account limit learned from a capacity refusal, valid until `until` (or until one of its calls ends). */
  readonly #learned = new Map<AgentProviderName, { limit: number; until: number }>();
  /** Slots per provider (the learned limits count them). */
  readonly #perProvider = new Map<AgentProviderName, number>();
  #sweepTimer: NodeJS.Timeout | undefined;

  constructor(opts: SessionManagerOptions) {
    // Agents are compared as `provider:id` (a bare id is a PlayAI agent).
    const agentLimits = opts.agentLimits === undefined ? undefined : new Map([...opts.agentLimits].map(([agent, max]) => [normalizeAgent(agent), max] as const));
    this.#opts = { ...opts, ...(agentLimits !== undefined ? { agentLimits } : {}) };
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

  /** The maximum in force now for calls to the default agent: MAX_CONCURRENT_CALLS, or less after its provider refused a session for capacity. */
  get capacity(): number {
    return this.capacityFor(providerOf(this.#opts.forceAgentId ?? this.#opts.defaultAgentId));
  }

  /** The maximum of concurrent calls in force now for a provider's agents (lower after it refused a session for capacity). */
  capacityFor(provider: AgentProviderName): number {
    const learned = this.#learnedLimit(provider);
    return learned === undefined ? this.#opts.maxConcurrentCalls : Math.min(this.#opts.maxConcurrentCalls, learned);
  }

  get draining(): boolean {
    return this.#draining;
  }

  /** True while the process is too busy to take another call (LoadGuard). */
  get overloaded(): boolean {
    return this.#opts.overloaded?.() === true;
  }

  /**
   * Counts a slot here that was admitted elsewhere (REDIS_URL: the fleet checked the limits when
   * it leased the slot): no limit is checked. Released like any other slot.
   */
  trackSlot(callSid: string, agentId: string): Slot {
    return this.#takeSlot(callSid, normalizeAgent(agentId));
  }

  /** True while `token` is a pending stream token minted by this process (not in the fleet). */
  hasToken(token: string | undefined): boolean {
    return token !== undefined && this.#reservations.has(token);
  }

  /** True when a new call to the default agent would be admitted now (its own cap aside). */
  get ready(): boolean {
    if (this.#draining || this.#opts.overloaded?.() === true || this.usedSlots >= this.#opts.maxConcurrentCalls) return false;
    const provider = providerOf(this.#opts.forceAgentId ?? this.#opts.defaultAgentId);
    const learned = this.#learnedLimit(provider);
    return learned === undefined || (this.#perProvider.get(provider) ?? 0) < learned;
  }

  /** Agent sessions with an open socket now (of one provider, or all). */
  openAgentSessions(provider?: AgentProviderName): number {
    let n = 0;
    for (const s of this.#sessions.values()) if (s.agentConnected && (provider === undefined || s.agentProvider === provider)) n++;
    return n;
  }

  resolveRoute(to: string): CallRoute {
    const route = this.#opts.routes.get(to);
    const agentId = normalizeAgent(this.#opts.forceAgentId ?? route?.agentId ?? this.#opts.defaultAgentId);
    const out: CallRoute = { agentId };
    if (route?.prompt !== undefined) out.prompt = route.prompt;
    if (route?.customGreeting !== undefined) out.customGreeting = route.customGreeting;
    if (route?.transferTargets !== undefined) out.transferTargets = route.transferTargets;
    if (route?.dtmf !== undefined) out.dtmf = route.dtmf;
    if (route?.record !== undefined) out.record = route.record;
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
    const pick = this.#pickAgent(normalizeAgent(this.#opts.forceAgentId ?? agentId));
    if (typeof pick !== 'string') return undefined;
    this.#outboundSlots++;
    return this.#takeSlot(key, pick, true);
  }

  /** Slots outbound dialing may still take now: within capacity, and never the inbound reserve. */
  get outboundRoom(): number {
    if (this.#draining || this.#opts.overloaded?.() === true) return 0;
    const capacity = this.#opts.maxConcurrentCalls;
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
   *
   * A call that already holds a token or a live session is not admitted
   * again: a replayed webhook cannot mint a second token. While the token is
   * pending, Twilio's own retry of the same request (same `idempotencyToken`;
   * or any, when the first request carried none) gets that token back
   * (`replayed`); anything else, or any request once the call is live, is a
   * `duplicate`.
   */
  admit(call: AdmittedCall, held?: { slot?: Slot; route: CallRoute; resume?: SessionResume }, idempotencyToken?: string): AdmitResult {
    const pendingToken = this.#reservationByCall.get(call.callSid);
    const pending = pendingToken === undefined ? undefined : this.#reservations.get(pendingToken);
    if (pending !== undefined) {
      // Twilio's retry carries the same I-Twilio-Idempotency-Token: anything else (another token, or
      // none, since a replayer can strip the unsigned header) is a different request: refused. Only
      // when the first request had no header (a Twilio-compatible carrier that does not send it)
      // is a retry answered without one; the same token comes back, nothing new is minted.
      const sameRequest = pending.idempotencyToken === undefined || idempotencyToken === pending.idempotencyToken;
      if (sameRequest) return { ok: true, token: pending.token, route: pending.route, replayed: true };
      return { ok: false, reason: 'duplicate' };
    }
    if (this.#sessions.has(call.callSid)) return { ok: false, reason: 'duplicate' };
    const heldSlot = held?.slot !== undefined && !held.slot.released ? held.slot : undefined;
    if (this.#draining && heldSlot === undefined) return { ok: false, reason: 'draining' };
    const route = held !== undefined ? this.routeFor(held.route) : this.resolveRoute(call.to);
    let slot: Slot;
    if (heldSlot !== undefined) {
      slot = heldSlot;
    } else {
      if (this.#opts.overloaded?.() === true) return { ok: false, reason: 'overload' };
      if (this.usedSlots >= this.#opts.maxConcurrentCalls) return { ok: false, reason: 'capacity' };
      const pick = this.#pickAgent(route.agentId);
      if (typeof pick !== 'string') return { ok: false, reason: pick.refused };
      // The slot counts for the agent that will serve the call (a fallback when the route's agent is down or full).
      slot = this.#takeSlot(call.callSid, pick);
    }
    const token = randomBytes(18).toString('base64url');
    const timer = setTimeout(() => {
      if (this.#dropReservation(token, 'expired_token')) this.#opts.onReservationExpired?.(call.callSid);
    }, this.#opts.tokenTtlMs);
    timer.unref();
    this.#reservations.set(token, { token, callSid: call.callSid, call: { ...call }, route, slot, timer, idempotencyToken, ...(held?.resume !== undefined ? { resume: held.resume } : {}) });
    this.#reservationByCall.set(call.callSid, token);
    return { ok: true, token, route, replayed: false };
  }

  /** A route chosen elsewhere (a call's record, an API request) as this process serves it (FORCE agent, `provider:id`). */
  routeFor(route: CallRoute): CallRoute {
    return { ...route, agentId: normalizeAgent(this.#opts.forceAgentId ?? route.agentId) };
  }

  /** How long a minted stream token stays valid (and its slot reserved), in ms. */
  get tokenTtlMs(): number {
    return this.#opts.tokenTtlMs;
  }

  /**
   * Gives up a call's pending reservation (its token no longer works, its slot is released), as
   * when it expires; false when the call has none (its stream started, or it never had one).
   */
  cancelReservation(callSid: string): boolean {
    const token = this.#reservationByCall.get(callSid);
    return token !== undefined && this.#dropReservation(token, 'expired_token');
  }

  /** True while the call holds a stream token or a live session here. */
  hasCall(callSid: string): boolean {
    return this.#reservationByCall.has(callSid) || this.#sessions.has(callSid);
  }

  /**
   * Redeems a stream token (single use). On success the caller owns the
   * reservation's slot: it must {@link register} a session that releases it,
   * or give it back with {@link releaseSlot}. A token presented with another
   * CallSid is refused and stays valid for its own call; a CallSid that
   * already has a live stream here is refused unless that stream is dead.
   */
  claim(token: string | undefined, callSid: string): ClaimResult {
    if (token === undefined || token === '') return { ok: false, reason: 'missing_token' };
    const r = this.#reservations.get(token);
    if (r === undefined) return { ok: false, reason: this.#spent.get(token) ?? 'unknown_token' };
    if (r.callSid !== callSid) return { ok: false, reason: 'call_mismatch' };
    const live = this.#sessions.get(callSid);
    if (live !== undefined && !live.streamDead) return { ok: false, reason: 'call_live' };
    this.#forgetReservation(r, 'used_token');
    return { ok: true, reservation: { token: r.token, callSid: r.callSid, call: r.call, route: r.route, slot: r.slot, ...(r.resume !== undefined ? { resume: r.resume } : {}) } };
  }

  register(session: ManagedSession): void {
    const existing = this.#sessions.get(session.callSid);
    // Only a dead stream is replaced (see claim); its session goes.
    if (existing !== undefined && existing !== session) existing.close('replaced');
    this.#sessions.set(session.callSid, session);
  }

  /** Called by a session once, when it has closed: releases its slot and forgets it. */
  release(session: ManagedSession): void {
    if (this.#sessions.get(session.callSid) === session) this.#sessions.delete(session.callSid);
    // A transfer took the call (and its slot) over: it releases the slot or hands it to the return stream.
    if (session.slotHandedOff !== true) this.releaseSlot(session.slot);
  }

  /**
   * A call moved to another agent (a fallback took it over): its slot now counts for that agent
   * and its provider (AGENT_LIMITS and learned limits follow the agent serving the call).
   */
  moveSlot(slot: Slot, agentId: string): void {
    if (slot.released) return;
    const to = normalizeAgent(agentId);
    if (to === slot.agentId) return;
    this.#count(slot.agentId, -1);
    (slot as { agentId: string }).agentId = to;
    this.#count(to, 1);
    this.#opts.onSlotMoved?.(slot, to);
  }

  /** An agent session that had been ready ended (hung up, lost, replaced, or its call ended): its provider has room again. */
  noteAgentSessionEnded(provider: AgentProviderName): void {
    this.#learned.delete(provider);
  }

  /** Releases a slot (idempotent). */
  releaseSlot(slot: Slot): void {
    if (slot.released) return;
    slot.released = true;
    this.#slots.delete(slot);
    if (slot.outbound === true) this.#outboundSlots--;
    this.#count(slot.agentId, -1);
    this.#opts.onSlotReleased?.(slot);
  }

  /** Adds `delta` to the slot counts of an agent and of its provider. */
  #count(agentId: string, delta: number): void {
    const n = (this.#perAgent.get(agentId) ?? 0) + delta;
    if (n <= 0) this.#perAgent.delete(agentId);
    else this.#perAgent.set(agentId, n);
    const provider = providerOf(agentId);
    const p = (this.#perProvider.get(provider) ?? 0) + delta;
    if (p <= 0) this.#perProvider.delete(provider);
    else this.#perProvider.set(provider, p);
  }

  /**
   * A provider refused a session for capacity (PlayAI 4429 and its equivalents): its account's
   * real limit is the number of its agent sessions open now. Its calls are capped there until
   * one of them ends or the cooldown passes. Defaults to the default agent's provider.
   */
  noteAgentCapacityExceeded(provider: AgentProviderName = providerOf(this.#opts.forceAgentId ?? this.#opts.defaultAgentId)): number {
    const limit = this.openAgentSessions(provider);
    this.#learned.set(provider, { limit, until: this.#now() + (this.#opts.agentCapacityCooldownMs ?? 60_000) });
    return limit;
  }

  getSession(callSid: string): ManagedSession | undefined {
    return this.#sessions.get(callSid);
  }

  sessions(): IterableIterator<ManagedSession> {
    return this.#sessions.values();
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

  #learnedLimit(provider: AgentProviderName): number | undefined {
    const learned = this.#learned.get(provider);
    if (learned === undefined) return undefined;
    if (this.#now() >= learned.until) {
      this.#learned.delete(provider);
      return undefined;
    }
    return learned.limit;
  }

  /** Why a new call cannot go to `agent` now, beyond MAX_CONCURRENT_CALLS: its provider's learned limit, or its own cap. */
  #agentRefusal(agent: string): 'agent_capacity' | 'agent_limit' | undefined {
    const provider = providerOf(agent);
    const learned = this.#learnedLimit(provider);
    if (learned !== undefined && (this.#perProvider.get(provider) ?? 0) >= learned) return 'agent_capacity';
    const agentCap = this.#opts.agentLimits?.get(agent);
    if (agentCap !== undefined && (this.#perAgent.get(agent) ?? 0) >= agentCap) return 'agent_limit';
    return undefined;
  }

  /**
   * The agent a new call for `agent` goes to: the first of it and its fallbacks that is up and
   * under its caps; else why not (the route's agent's own reason, or `agent_down` when none is up).
   */
  #pickAgent(agent: string): string | { refused: RefusalReason } {
    const candidates = this.#opts.agentCandidates?.(agent).map(normalizeAgent) ?? [agent];
    let first: RefusalReason | undefined;
    for (const candidate of candidates) {
      const refusal = this.#agentRefusal(candidate);
      if (refusal === undefined) return candidate;
      first ??= refusal;
    }
    return { refused: first ?? 'agent_down' };
  }

  #takeSlot(callSid: string, agentId: string, outbound = false): Slot {
    const slot: Slot = outbound ? { callSid, agentId, outbound, released: false } : { callSid, agentId, released: false };
    this.#slots.add(slot);
    this.#count(agentId, 1);
    return slot;
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
    return true;
  }
}

/** `provider:id` of an agent name (a bare id is a PlayAI agent); names that are not agents are kept as they are. */
function normalizeAgent(agentId: string): string {
  const ref = parseAgentRef(agentId);
  return ref === undefined ? agentId : formatAgentRef(ref);
}

function providerOf(agentId: string): AgentProviderName {
  return parseAgentRef(agentId)?.provider ?? 'playai';
}
