/**
 * Admission across a fleet of bridge processes sharing one Redis (REDIS_URL): the session
 * manager's capacity rules and stream tokens held in Redis (fleet/slots.ts, fleet/tokens.ts), and
 * call control reaching the process that owns a call (fleet/owners.ts).
 *
 * - The webhook (`admit`): drain and overload are this process' own checks; then a call already
 *   owned somewhere is a duplicate; then a fleet slot is leased (MAX_CONCURRENT_CALLS and
 *   AGENT_LIMITS fleet-wide) and a single-use stream token minted in Redis. The minting process
 *   renews the slot until the stream starts, and releases it when the token expires unused.
 * - The stream's `start` (`claim`): the token is redeemed in Redis (whichever process the stream
 *   landed on); a slot leased by another process is adopted here (this process renews it from then
 *   on); the slot is also counted in this process' manager (drain waits for it); this process owns
 *   the call (control messages for it run here).
 * - A session's end releases the local slot, which releases the fleet lease and the ownership.
 * - Leases this process lost (`expired`: Redis lost them or renewals failed for a whole lease;
 *   `too_old`: past the maximum call length) end their calls.
 *
 * Tokens minted by the manager itself (outbound calls' held slots, browser calls) are still
 * claimed from the manager: those streams must land on the process that minted them.
 *
 * - Learned provider limits (PlayAI 4429 and its equivalents) are fleet-wide: each call's agent
 *   session being open is recorded on its slot (`agentSessionReady` / `agentSessionEnded`); a
 *   capacity refusal on any process caps that provider at the number of its sessions open in the
 *   whole fleet for the cooldown (a Redis key with that TTL, read by every claim), and any ready
 *   session of it ending lifts the cap for every process (today's rule, fleet-wide).
 * - Agents marked down after failed connects stay per process: each process probes its agents
 *   and decides from its own connects (a network problem of one machine is not the fleet's).
 *
 * Outbound dials hold their slot through {@link FleetAdmission.holdOutboundSlot} (outbound/dialQueue.ts).
 *
 * INBOUND_RESERVED holds fleet-wide too: outbound dials never take the last INBOUND_RESERVED fleet slots.
 */
import { randomBytes } from 'node:crypto';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { z } from 'zod';
import { AGENT_PROVIDERS, type AgentProviderName } from '../agent/port.js';
import { CallOwners, type ControlAnswer, type ControlMessage } from '../fleet/owners.js';
import { failFastOptions, FleetError, waitReady, watchErrors } from '../fleet/redis.js';
import { FleetSlots, type FleetSlot, type LostSlot } from '../fleet/slots.js';
import { FleetTokens } from '../fleet/tokens.js';
import type { AdmitResult, AdmittedCall, CallRoute, ClaimResult, SessionManager, SessionResume, Slot } from './manager.js';

const fleetSlotSchema = z.object({ id: z.string().max(64), callSid: z.string().max(200), agentId: z.string().max(300), provider: z.enum(AGENT_PROVIDERS), outbound: z.boolean() });

const storedReservation = z.object({
  call: z.object({ callSid: z.string().max(64), from: z.string().max(256), to: z.string().max(256), direction: z.string().max(64) }),
  slot: fleetSlotSchema,
  /** Our record of a call we dialed: its route comes from the record. */
  callId: z.string().max(64).optional(),
  /** A call coming back to its agent after a transfer nobody answered: what the agent is told. */
  resume: z
    .object({
      agentId: z.string().max(300),
      conversationId: z.string().max(300).optional(),
      history: z.array(z.object({ role: z.enum(['user', 'agent']), text: z.string().max(100_000) })).max(10_000),
      note: z.string().max(10_000).optional(),
    })
    .optional(),
  /** The route of a browser call (what its API request chose). */
  route: z
    .object({ agentId: z.string().max(300), prompt: z.string().max(100_000).optional(), customGreeting: z.string().max(10_000).optional(), record: z.boolean().optional() })
    .optional(),
});
type StoredReservation = z.infer<typeof storedReservation>;

export interface FleetAdmissionOptions {
  redisUrl: string;
  prefix: string;
  leaseMs: number;
  maxConcurrentCalls: number;
  /** INBOUND_RESERVED: fleet slots outbound dialing never takes. */
  inboundReserved?: number;
  agentLimits: Map<string, number>;
  maxCallMs: number;
  tokenTtlMs: number;
  /** How long a learned provider limit holds at most (AGENT_CAPACITY_COOLDOWN). */
  agentCapacityCooldownMs?: number;
  manager: SessionManager;
  /** The route's agent and its fallbacks that are up, in order (agent/directory.ts). */
  agentCandidates(agentId: string): string[];
  logger: Logger;
  /** A token minted here expired without a stream. */
  onReservationExpired?(callSid: string): void;
  /**
   * The route of a call we placed or started (outbound, browser), read from its record: the
   * process its stream lands on may not be the one that placed it.
   */
  routeOfCall?(callId: string): CallRoute | undefined | Promise<CallRoute | undefined>;
  /** The same for a dialed call known by its CallSid (a caller coming back after a transfer). */
  routeOfCallSid?(callSid: string): CallRoute | undefined | Promise<CallRoute | undefined>;
}

/** How long the fleet slot held for a dialed call can be looked up by the process its answer lands on. */
const HELD_LOOKUP_TTL_MS = 15 * 60_000;

/** Fleet capacity as `/readyz` and `/metrics` show it. */
export interface FleetCapacity {
  /** Slots leased in the whole fleet (live calls and admitted calls whose stream has not started). */
  slotsInUse: number;
  /** MAX_CONCURRENT_CALLS, fleet-wide. */
  slotLimit: number;
  /** Slots taken by outbound dialing, fleet-wide. */
  outboundSlots: number;
  /** Per provider with calls or a learned limit: its slots, and the limit in force (lower while a learned limit holds). */
  providers: Partial<Record<AgentProviderName, { slotsInUse: number; limit: number; learnedLimit?: number; cooldownMsLeft?: number }>>;
  /** This process's own share: the fleet slots it leases now. */
  thisProcess: { processId: string; slotsInUse: number };
}

/** What the owner of a call does with a control message that landed on another process. */
export type CallControlHandler = (callSid: string, message: ControlMessage) => ControlAnswer | Promise<ControlAnswer>;

export class FleetAdmission {
  readonly slots: FleetSlots;
  readonly tokens: FleetTokens<StoredReservation>;
  readonly owners: CallOwners;
  readonly #redis: Redis;
  readonly #o: FleetAdmissionOptions;
  readonly #log: Logger;
  /** Fleet slots of tokens minted here and not yet redeemed, by token. */
  readonly #pending = new Map<string, FleetSlot>();
  /** The fleet slot of each local slot, and back. */
  readonly #fleetOf = new Map<Slot, FleetSlot>();
  readonly #localOf = new Map<string, Slot>();
  #control: CallControlHandler = () => ({ ok: false, error: 'call control is not set up on this process' });
  #closed = false;

  constructor(o: FleetAdmissionOptions) {
    this.#o = o;
    this.#log = o.logger.child({ component: 'fleet' });
    this.#redis = new Redis(o.redisUrl, { ...failFastOptions(), lazyConnect: true });
    watchErrors(this.#redis, this.#log, 'fleet');
    const common = { redis: this.#redis, prefix: o.prefix, logger: o.logger };
    this.slots = new FleetSlots({ ...common, maxConcurrentCalls: o.maxConcurrentCalls, ...(o.inboundReserved !== undefined ? { inboundReserved: o.inboundReserved } : {}), agentLimits: o.agentLimits, leaseMs: o.leaseMs, maxCallMs: o.maxCallMs, ...(o.agentCapacityCooldownMs !== undefined ? { agentCapacityCooldownMs: o.agentCapacityCooldownMs } : {}) });
    this.owners = new CallOwners({ ...common, processId: this.slots.processId, ttlMs: o.leaseMs });
    this.tokens = new FleetTokens<StoredReservation>({
      ...common,
      schema: storedReservation,
      onExpired: (token, callSid) => {
        const slot = this.#pending.get(token);
        this.#pending.delete(token);
        if (slot !== undefined) this.#releaseFleet(slot);
        this.#o.onReservationExpired?.(callSid);
      },
    });
  }

  get processId(): string {
    return this.slots.processId;
  }

  /** Connects (failing with a message naming REDIS_URL when Redis does not answer) and starts renewing. */
  async start(timeoutMs = 5_000): Promise<void> {
    await waitReady(this.#redis, timeoutMs);
    await this.owners.start();
    this.slots.startRenewing({ onLost: (lost) => this.#onLost(lost) });
    this.owners.startRefreshing();
  }

  /** What this process does with a control message for a call it owns. */
  setControlHandler(handler: CallControlHandler): void {
    this.#control = handler;
  }

  /** The voice webhook of an inbound call: a fleet slot and a stream token, or why not. */
  async admit(call: AdmittedCall, idempotencyToken: string | undefined): Promise<AdmitResult> {
    const m = this.#o.manager;
    if (m.draining) return { ok: false, reason: 'draining' };
    if (m.overloaded) return { ok: false, reason: 'overload' };
    const route = m.resolveRoute(call.to);
    let slot: FleetSlot | undefined;
    try {
      if ((await this.owners.ownerOf(call.callSid)) !== undefined) return { ok: false, reason: 'duplicate' };
      const claimed = await this.slots.claim({ callSid: call.callSid, agents: this.#o.agentCandidates(route.agentId) });
      if (!claimed.ok) return { ok: false, reason: claimed.reason };
      slot = claimed.slot;
      const minted = await this.#mint(call, slot, {}, idempotencyToken);
      // Twilio's retry of the same webhook: its first slot stays, this one goes back.
      if (!minted.ok || minted.replayed) this.#releaseFleet(slot);
      if (!minted.ok) return { ok: false, reason: 'duplicate' };
      if (!minted.replayed) this.#pending.set(minted.token, slot);
      return { ok: true, token: minted.token, route, replayed: minted.replayed };
    } catch (err) {
      if (slot !== undefined) this.#releaseFleet(slot);
      return this.#redisAway(call.callSid, err);
    }
  }

  /** Mints the single-use stream token of `call` on `slot`, with what its stream's process needs to serve it. */
  #mint(call: AdmittedCall, slot: FleetSlot, serve: Pick<StoredReservation, 'callId' | 'route' | 'resume'>, idempotencyToken: string | undefined) {
    return this.tokens.mint({
      token: randomBytes(18).toString('base64url'),
      callSid: call.callSid,
      reservation: { call: { ...call }, slot: { ...slot }, ...serve },
      ttlMs: this.#o.tokenTtlMs,
      ...(idempotencyToken !== undefined ? { idempotencyToken } : {}),
    });
  }

  /** Redis away at admission: the call is refused as at capacity (the caller hears BUSY_TEXT). */
  #redisAway(callSid: string, err: unknown, callId?: string): AdmitResult {
    this.#log.error({ callSid, ...(callId !== undefined ? { callId } : {}), err: errMessage(err) }, 'fleet: cannot reach Redis to admit a call; refusing it (check REDIS_URL and the Redis server)');
    return { ok: false, reason: 'capacity' };
  }

  /** Gives up a pending token minted by {@link admit} (its slot goes back). */
  async cancel(callSid: string, token: string): Promise<void> {
    const slot = this.#pending.get(token);
    this.#pending.delete(token);
    await this.tokens.cancel(callSid).catch(() => false);
    if (slot !== undefined) this.#releaseFleet(slot);
  }

  /**
   * The stream's `start`: redeems its token wherever it was minted, adopts the slot, counts it
   * here and owns the call. A token minted by this process' manager (outbound, browser calls) is
   * claimed there.
   */
  async claim(token: string | undefined, callSid: string): Promise<ClaimResult> {
    const m = this.#o.manager;
    if (m.hasToken(token)) return m.claim(token, callSid);
    const live = m.getSession(callSid);
    if (live !== undefined && !live.streamDead) return { ok: false, reason: 'call_live' };
    let fleetSlot: FleetSlot | undefined;
    try {
      const r = await this.tokens.claim(token, callSid);
      if (!r.ok) return { ok: false, reason: r.reason };
      if (token !== undefined) this.#pending.delete(token);
      const stored = r.reservation;
      fleetSlot = stored.slot;
      // A dialed call's slot held here by its attempt passes to the call (no second local slot).
      const heldHere = this.#localOf.get(fleetSlot.id);
      if (heldHere !== undefined) this.#detach(heldHere);
      if (!this.slots.held.has(fleetSlot.id)) {
        const adopted = await this.slots.adopt(fleetSlot);
        // The lease ran out between the webhook and the stream (its process died): as if the token had expired.
        if (adopted === undefined) return { ok: false, reason: 'expired_token' };
        this.#log.info({ callSid, slot: fleetSlot.id }, 'fleet: the stream landed here, not on its webhook process: slot adopted');
      }
      const local = m.trackSlot(callSid, fleetSlot.agentId);
      this.#fleetOf.set(local, fleetSlot);
      this.#localOf.set(fleetSlot.id, local);
      try {
        await this.owners.own(callSid, (message) => this.#control(callSid, message));
      } catch (err) {
        this.#log.warn({ callSid, err: errMessage(err) }, 'fleet: could not record this process as the call owner; hang-ups and status callbacks landing elsewhere will not reach it');
      }
      const resume = stored.resume === undefined ? undefined : storableResume(stored.resume);
      return { ok: true, reservation: { token: token ?? '', callSid, call: stored.call, route: await this.#routeOf(stored), slot: local, ...(resume !== undefined ? { resume } : {}) } };
    } catch (err) {
      if (fleetSlot !== undefined && !this.#localOf.has(fleetSlot.id)) this.#releaseFleet(fleetSlot);
      this.#log.error({ callSid, err: errMessage(err) }, 'fleet: cannot reach Redis to redeem a stream token; refusing the stream (check REDIS_URL and the Redis server)');
      return { ok: false, reason: 'unknown_token' };
    }
  }

  /**
   * The answer webhook of a call we dialed, or a browser call being created: a stream token in
   * Redis that names our record (`callId`, whose route the stream's process reads) or carries the
   * browser call's route, so its stream may land on any process. The fleet slot is the one the dial attempt holds (`held`, a local slot of
   * this process; else the one another process holds for `callId`, looked up in Redis); a call
   * without one takes a fleet slot here (for the route's agent, outbound or not).
   */
  async admitRecorded(
    call: AdmittedCall,
    o: { callId?: string | undefined; route: CallRoute; held?: Slot | undefined; outbound: boolean; resume?: SessionResume | undefined },
    idempotencyToken?: string,
  ): Promise<AdmitResult> {
    const m = this.#o.manager;
    const route = m.routeFor(o.route);
    let slot: FleetSlot | undefined = o.held !== undefined ? this.#detach(o.held) : undefined;
    // Given back when the call is not admitted: a slot taken here, or the one this attempt held.
    let fresh = slot !== undefined;
    try {
      if (slot === undefined && o.outbound && o.callId !== undefined) slot = await this.#heldElsewhere(o.callId);
      if (slot === undefined) {
        if (m.draining) return { ok: false, reason: 'draining' };
        if (m.overloaded) return { ok: false, reason: 'overload' };
        const claimed = await this.slots.claim({ callSid: call.callSid, agents: this.#o.agentCandidates(route.agentId), outbound: o.outbound });
        if (!claimed.ok) return { ok: false, reason: claimed.reason };
        slot = claimed.slot;
        fresh = true;
      }
      // A dialed call's route comes from its record; a resumed call's from its record or its number; a browser call's travels.
      const serve = o.callId !== undefined ? { callId: o.callId } : o.resume !== undefined ? { resume: storableResume(o.resume) } : { route: storableRoute(o.route) };
      const minted = await this.#mint(call, slot, serve, idempotencyToken);
      if (!minted.ok || minted.replayed) {
        // A retry's first token keeps its slot; a slot taken for the retry goes back.
        if (fresh && (!minted.ok || o.held === undefined)) this.#releaseFleet(slot);
        return minted.ok ? { ok: true, token: minted.token, route, replayed: true } : { ok: false, reason: 'duplicate' };
      }
      if (this.slots.held.has(slot.id)) this.#pending.set(minted.token, slot);
      if (o.callId !== undefined) this.#redis.del(this.#heldKey(o.callId)).catch(() => undefined);
      return { ok: true, token: minted.token, route, replayed: false };
    } catch (err) {
      if (fresh && slot !== undefined) this.#releaseFleet(slot);
      return this.#redisAway(call.callSid, err, o.callId);
    }
  }

  /**
   * A dial attempt of `callId` holds `local` (a slot from {@link holdOutboundSlot}): its fleet slot
   * is recorded in Redis, so the process its answer webhook lands on can hand it to the call.
   */
  noteHeld(callId: string, local: Slot): void {
    const slot = this.#fleetOf.get(local);
    if (slot === undefined || this.#closed) return;
    this.#redis.set(this.#heldKey(callId), JSON.stringify(slot), 'PX', HELD_LOOKUP_TTL_MS).catch((err: unknown) =>
      this.#log.warn({ callId, err: errMessage(err) }, 'fleet: could not record the slot of a dialed call (if its answer lands on another process, the call takes a second slot there)'),
    );
  }

  #heldKey(callId: string): string {
    return `${this.#o.prefix}heldslot:${callId}`;
  }

  /** The fleet slot another process holds for a dial attempt of `callId`, if it still lives. */
  async #heldElsewhere(callId: string): Promise<FleetSlot | undefined> {
    const raw = await this.#redis.get(this.#heldKey(callId));
    if (raw === null) return undefined;
    let json: unknown;
    try {
      json = JSON.parse(raw);
    } catch {
      json = undefined;
    }
    const parsed = fleetSlotSchema.safeParse(json);
    if (!parsed.success) {
      this.#log.warn({ callId }, 'fleet: the recorded slot of a dialed call is not readable; the call takes a slot of its own');
      return undefined;
    }
    return parsed.data;
  }

  /** A local slot gives its fleet slot up to a call (kept leased here): the local one is released alone. */
  #detach(local: Slot): FleetSlot | undefined {
    const slot = this.#fleetOf.get(local);
    if (slot === undefined) return undefined;
    this.#fleetOf.delete(local);
    this.#localOf.delete(slot.id);
    this.#o.manager.releaseSlot(local);
    return slot;
  }

  /** The route of a stream's call: from our record when the token names one, else the number's route. */
  async #routeOf(stored: StoredReservation): Promise<CallRoute> {
    const m = this.#o.manager;
    if (stored.route !== undefined) return m.routeFor(storableRoute(stored.route));
    if (stored.callId !== undefined && this.#o.routeOfCall !== undefined) {
      try {
        const route = await this.#o.routeOfCall(stored.callId);
        if (route !== undefined) return m.routeFor(route);
        this.#log.warn({ callId: stored.callId, callSid: stored.call.callSid }, 'fleet: the record of a call whose stream landed here is missing (do the processes share one database?); using its number route');
      } catch (err) {
        this.#log.error({ callId: stored.callId, err: errMessage(err) }, 'fleet: cannot read the record of a call whose stream landed here; using its number route');
      }
    }
    if (stored.callId === undefined && stored.call.direction.startsWith('outbound') && this.#o.routeOfCallSid !== undefined) {
      try {
        const route = await this.#o.routeOfCallSid(stored.call.callSid);
        if (route !== undefined) return m.routeFor(route);
      } catch (err) {
        this.#log.error({ callSid: stored.call.callSid, err: errMessage(err) }, 'fleet: cannot read the record of a dialed call whose stream landed here; using its number route');
      }
    }
    return m.resolveRoute(stored.call.to);
  }

  /**
   * A slot for an outbound dial (outbound/dialQueue.ts): a fleet lease (MAX_CONCURRENT_CALLS and
   * AGENT_LIMITS fleet-wide, never the INBOUND_RESERVED slots of this process' manager) and the
   * manager's local slot, tied so that releasing the local slot releases the lease. Undefined when
   * there is no room (or Redis cannot be reached: the dial waits).
   */
  async holdOutboundSlot(key: string, agentId: string): Promise<Slot | undefined> {
    const m = this.#o.manager;
    if (m.outboundRoom === 0) return undefined;
    let fleetSlot: FleetSlot;
    try {
      const claimed = await this.slots.claim({ callSid: key, agents: this.#o.agentCandidates(agentId), outbound: true });
      if (!claimed.ok) return undefined;
      fleetSlot = claimed.slot;
    } catch (err) {
      this.#log.warn({ key, err: errMessage(err) }, 'fleet: cannot reach Redis to hold a slot for a dial; dialing waits (check REDIS_URL and the Redis server)');
      return undefined;
    }
    const local = m.holdOutboundSlot(key, fleetSlot.agentId);
    if (local === undefined) {
      this.#releaseFleet(fleetSlot);
      return undefined;
    }
    this.#fleetOf.set(local, fleetSlot);
    this.#localOf.set(fleetSlot.id, local);
    return local;
  }

  /** The manager released a slot (SessionManagerOptions.onSlotReleased): its lease and ownership go. */
  slotReleased(local: Slot): void {
    const fleetSlot = this.#fleetOf.get(local);
    if (fleetSlot === undefined) return;
    this.#fleetOf.delete(local);
    this.#localOf.delete(fleetSlot.id);
    this.#releaseFleet(fleetSlot);
    if (!this.#closed) {
      this.owners.disown(local.callSid).catch((err: unknown) => this.#log.warn({ callSid: local.callSid, err: errMessage(err) }, 'fleet: could not give up call ownership (it expires by itself)'));
    }
  }

  /** The manager moved a slot to a fallback agent (SessionManagerOptions.onSlotMoved). */
  slotMoved(local: Slot, agentId: string): void {
    const fleetSlot = this.#fleetOf.get(local);
    if (fleetSlot === undefined || this.#closed) return;
    this.slots.move(fleetSlot, agentId).then(
      (moved) => {
        if (moved !== undefined && this.#fleetOf.has(local)) this.#fleetOf.set(local, moved);
      },
      (err: unknown) => this.#log.warn({ callSid: local.callSid, err: errMessage(err) }, 'fleet: could not move a call slot to its fallback agent'),
    );
  }

  /** A call's agent session became ready: it counts among its provider's open sessions fleet-wide. */
  agentSessionReady(local: Slot): void {
    const fleetSlot = this.#fleetOf.get(local);
    if (fleetSlot === undefined || this.#closed) return;
    this.slots.setAgentOpen(fleetSlot, true).catch((err: unknown) => this.#log.warn({ callSid: local.callSid, err: errMessage(err) }, 'fleet: could not count an open agent session (learned limits may undercount it)'));
  }

  /** A ready agent session ended: it no longer counts, and its provider's learned limit is lifted fleet-wide. */
  agentSessionEnded(local: Slot, provider: AgentProviderName): void {
    if (this.#closed) return;
    const fleetSlot = this.#fleetOf.get(local);
    const closed = fleetSlot === undefined ? Promise.resolve(false) : this.slots.setAgentOpen(fleetSlot, false);
    closed
      .then(() => this.slots.noteSessionEnded(provider))
      .catch((err: unknown) => this.#log.warn({ callSid: local.callSid, provider, err: errMessage(err) }, 'fleet: could not lift the learned limit of a provider (it lifts when its cooldown passes)'));
  }

  /** A provider refused a session for capacity: every process caps it at its sessions open fleet-wide now. */
  agentCapacityExceeded(callSid: string, provider: AgentProviderName): void {
    if (this.#closed) return;
    this.slots.noteCapacityExceeded(provider).then(
      (limit) => this.#log.warn({ callSid, provider, fleetLearnedLimit: limit }, 'fleet: agent account refused a session for capacity; capping its calls on every process'),
      (err: unknown) => this.#log.warn({ callSid, provider, err: errMessage(err) }, 'fleet: could not share a learned provider limit (this process still applies it)'),
    );
  }

  /** `GET /v1/live` across the fleet: this process answers the others with `list`. */
  serveLive(list: () => unknown[] | Promise<unknown[]>): void {
    this.owners.setQuestionHandler(async () => ({ ok: true, data: { calls: await list() } }));
  }

  /** The live calls of every other process that answered within a second (unchecked). */
  async liveElsewhere(): Promise<unknown[]> {
    const answers = await this.owners.askAll('live');
    const out: unknown[] = [];
    for (const a of answers) {
      const calls = a.ok ? a.data?.calls : undefined;
      if (Array.isArray(calls)) out.push(...calls);
    }
    return out;
  }

  /** Fleet capacity now (one Lua call; rejects with a FleetError when Redis is away). */
  async capacity(): Promise<FleetCapacity> {
    const c = await this.slots.counts();
    const max = this.#o.maxConcurrentCalls;
    const providers: FleetCapacity['providers'] = {};
    for (const p of AGENT_PROVIDERS) {
      const inUse = c.perProvider[p] ?? 0;
      const learned = c.learned[p];
      if (inUse === 0 && learned === undefined) continue;
      providers[p] = learned === undefined ? { slotsInUse: inUse, limit: max } : { slotsInUse: inUse, limit: Math.min(max, learned.limit), learnedLimit: learned.limit, cooldownMsLeft: Math.max(0, learned.msLeft) };
    }
    return { slotsInUse: c.total, slotLimit: max, outboundSlots: c.outbound, providers, thisProcess: { processId: this.processId, slotsInUse: this.slots.held.size } };
  }

  /** Fleet-wide slot counts (for logs and tests). */
  async usedSlots(): Promise<number> {
    return (await this.slots.counts()).total;
  }

  /** Stops renewing; the slots still held are released (a clean shutdown). Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.owners.close().catch(() => undefined);
    await this.tokens.close().catch(() => undefined);
    await this.slots.close({ releaseHeld: true }).catch(() => undefined);
    this.#redis.disconnect();
  }

  #onLost(lost: LostSlot[]): void {
    for (const { slot, reason } of lost) {
      for (const [token, s] of this.#pending) if (s.id === slot.id) this.#pending.delete(token);
      const local = this.#localOf.get(slot.id);
      if (local === undefined) continue;
      this.#localOf.delete(slot.id);
      this.#fleetOf.delete(local);
      if (reason === 'other_owner') {
        // Another process adopted it (the dialed call's stream landed there): only the local count goes.
        if (this.#o.manager.getSession(local.callSid) === undefined) this.#o.manager.releaseSlot(local);
        continue;
      }
      const session = this.#o.manager.getSession(local.callSid);
      this.#log.error({ callSid: local.callSid, reason }, 'fleet: this call lost its slot lease (Redis lost it, or the call passed its maximum length); ending it');
      if (session !== undefined) session.close(reason === 'too_old' ? 'max_duration' : 'internal_error');
      else this.#o.manager.releaseSlot(local);
    }
  }

  #releaseFleet(slot: FleetSlot): void {
    if (this.#closed) return;
    this.slots.release(slot).catch((err: unknown) => this.#log.warn({ callSid: slot.callSid, err: errMessage(err) }, 'fleet: could not release a call slot (its lease expires by itself)'));
  }
}

/** A resumed call's conversation as it travels through Redis (optional fields left out when absent). */
function storableResume(r: { agentId: string; conversationId?: string | undefined; history: Array<{ role: 'user' | 'agent'; text: string }>; note?: string | undefined }): SessionResume {
  return {
    agentId: r.agentId,
    history: r.history.map((t) => ({ role: t.role, text: t.text })),
    ...(r.conversationId !== undefined ? { conversationId: r.conversationId } : {}),
    ...(r.note !== undefined ? { note: r.note } : {}),
  };
}

/** What a browser call's route carries through Redis (its API request's choices). */
function storableRoute(r: { agentId: string; prompt?: string | undefined; customGreeting?: string | undefined; record?: boolean | undefined }): CallRoute {
  return {
    agentId: r.agentId,
    ...(r.prompt !== undefined ? { prompt: r.prompt } : {}),
    ...(r.customGreeting !== undefined ? { customGreeting: r.customGreeting } : {}),
    ...(r.record !== undefined ? { record: r.record } : {}),
  };
}

function errMessage(err: unknown): string {
  return err instanceof FleetError || err instanceof Error ? err.message : String(err);
}
