/**
 * Fleet-wide call capacity as leases in Redis: the rules of session/manager.ts (MAX_CONCURRENT_CALLS,
 * INBOUND_RESERVED, AGENT_LIMITS, the per-provider limit learned from a capacity refusal) held
 * across every process that shares one Redis.
 *
 * Keys (P = prefix, default `playline:`):
 *   P slots:all                  ZSET slot id → lease expiry (ms, Redis clock): every slot
 *   P slots:out                  ZSET the slots taken by outbound dialing
 *   P slots:agent:<provider:id>  ZSET the slots counting for one agent (AGENT_LIMITS)
 *   P slots:provider:<provider>  ZSET the slots counting for one provider (learned limits)
 *   P slots:scopes               SET  the agent and provider scopes in use (for `counts`)
 *   P slot:<id>                  HASH callSid, agent, provider, outbound (1/0), owner, started (ms),
 *                                     open (1/0: the call's agent session is open); PEXPIRE 2 × lease
 *   P agentopen:<provider>       ZSET the slots whose agent session is open now (what a learned
 *                                     limit is set to), scored like the slot's lease
 *   P learned:<provider>         STRING the learned limit, PX = the cooldown
 *
 * Scripts (atomic, EVALSHA with EVAL fallback; times from Redis' own clock, so processes on
 * machines with skewed clocks agree):
 *   claim    trims expired entries in every scope it reads, then checks in the manager's order:
 *            total < max (`capacity`); for outbound also outbound < max − inboundReserved
 *            (`capacity`); then the candidate agents in order (the route's agent, then its
 *            fallbacks): provider count < its learned limit when one is in force (`agent_capacity`),
 *            agent count < its AGENT_LIMITS entry when set (`agent_limit`). The first candidate that
 *            fits gets the slot; none gives the first one's reason (`agent_down` when none given).
 *            The slot is added to every scope with score now + lease.
 *   renew    the owner extends all its slots in one call; returns those it no longer holds (expired,
 *            adopted by another process, or older than the maximum call length + lease: such a
 *            slot is not renewed, so it expires within one lease even if its owner keeps asking).
 *   release  removes the slot from every scope (idempotent; any process may release).
 *   move     a fallback agent took the call over: the slot now counts for that agent and provider.
 *   adopt    another process takes over the slot (the stream landed there, not on the webhook's
 *            process): it renews the slot from then on, the old owner's renew reports it gone.
 *   counts   trims and counts every scope.
 *   capacity noteCapacityExceeded(provider) sets the learned limit to the number of that provider's
 *            agent sessions open fleet-wide now (P agentopen:<provider>) with PX cooldown;
 *            noteSessionEnded(provider) deletes it (one of its sessions ended: room again).
 *
 * TTLs: a lease lasts `leaseMs` (default 15 s) and is renewed every lease/3 by `startRenewing`;
 * a process that dies stops renewing, and its slots stop counting once their score passes (every
 * claim trims them first), so nothing leaks longer than one lease. A slot past the maximum call
 * length (`maxCallMs`, default 4 h) is not renewed any more.
 *
 * Wiring into session/manager.ts (not done yet; draining and overload stay per-process checks
 * made before `claim`):
 *   admit                 → claim({ callSid, agents: agentCandidates(route.agentId) }), then
 *                           tokens.mint with the slot in the reservation; tokens' onExpired → release
 *   holdOutboundSlot      → claim({ callSid: key, agents, outbound: true }) (undefined on refusal)
 *   stream claims a token → adopt(reservation.slot) when another process minted it
 *   releaseSlot/release   → release(slot)       moveSlot → move(slot, agentId)
 *   agent socket up/down  → setAgentOpen(slot, true/false) (what openAgentSessions counted; done:
 *                           FleetAdmission.agentSessionReady / agentSessionEnded)
 *   noteAgentCapacityExceeded / noteAgentSessionEnded → noteCapacityExceeded / noteSessionEnded
 *                           (done: FleetAdmission.agentCapacityExceeded / agentSessionEnded)
 *   capacityFor / usedSlots / outboundSlots → capacityFor / counts() (done for /readyz and
 *                           /metrics: FleetAdmission.capacity)
 *   startRenewing({ onLost }) → end calls whose slot `expired` or is `too_old`; `other_owner` is a
 *                           slot adopted elsewhere (nothing to end here)
 *
 * Failure modes: Redis unreachable → every call rejects with FleetError `redis_unavailable` (the
 * caller refuses the call, as at capacity); a renewal that fails is reported through `onError`
 * and retried at the next tick (leases last three ticks). Redis restarted without persistence →
 * the slots are gone: every owner's next renew reports them lost, and capacity is free again.
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import { AGENT_PROVIDERS, parseAgentRef, type AgentProviderName } from '../agent/port.js';
import {
  asArray,
  asInt,
  asString,
  checkPrefix,
  DEFAULT_PREFIX,
  defaultProcessId,
  FleetError,
  holdClient,
  LUA_NOW,
  LuaScript,
  releaseClient,
  waitReady,
  toFleetError,
  type FleetCommonOptions,
  type HeldClient,
} from './redis.js';

export interface FleetSlotsOptions extends FleetCommonOptions {
  /** MAX_CONCURRENT_CALLS (fleet-wide). */
  maxConcurrentCalls: number;
  /** INBOUND_RESERVED: slots outbound dialing never takes. */
  inboundReserved?: number;
  /** AGENT_LIMITS, keyed `provider:id` (a bare id is a PlayAI agent). */
  agentLimits?: Map<string, number>;
  /** How long a slot lives without renewal (default 15 000 ms). */
  leaseMs?: number;
  /** A slot older than this (plus one lease) is not renewed (default 4 h). */
  maxCallMs?: number;
  /** The learned-limit cooldown (default 60 000 ms, as the manager). */
  agentCapacityCooldownMs?: number;
  /** This process' id in slot hashes (default host:pid:random). */
  processId?: string;
}

/** A slot held in Redis. */
export interface FleetSlot {
  readonly id: string;
  readonly callSid: string;
  /** The agent the slot counts for (`provider:id`). */
  readonly agentId: string;
  readonly provider: AgentProviderName;
  readonly outbound: boolean;
}

export type SlotRefusal = 'capacity' | 'agent_capacity' | 'agent_limit' | 'agent_down';

export type SlotClaimResult = { ok: true; slot: FleetSlot } | { ok: false; reason: SlotRefusal };

export interface SlotClaimRequest {
  callSid: string;
  /** The agents that may take the call, in order (the route's agent, then its fallbacks that are up). */
  agents: string[];
  /** Taken by outbound dialing (never takes the INBOUND_RESERVED slots). */
  outbound?: boolean;
}

export type LostReason = 'expired' | 'other_owner' | 'too_old';

export interface LostSlot {
  slot: FleetSlot;
  reason: LostReason;
}

export interface SlotCounts {
  total: number;
  outbound: number;
  perAgent: Record<string, number>;
  perProvider: Record<string, number>;
  /** Agent sessions open now, per provider. */
  agentOpen: Record<string, number>;
  /** Learned limits in force: the limit and the ms left of its cooldown. */
  learned: Record<string, { limit: number; msLeft: number }>;
}

const CLAIM = new LuaScript(
  'slots.claim',
  `${LUA_NOW}
local P = ARGV[1]
local id, callSid, owner, outbound = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local max, reserved, lease = tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local n = tonumber(ARGV[9])
local all, out = P .. 'slots:all', P .. 'slots:out'
redis.call('ZREMRANGEBYSCORE', all, '-inf', now)
redis.call('ZREMRANGEBYSCORE', out, '-inf', now)
local total = redis.call('ZCARD', all)
if total >= max then return {'refused', 'capacity'} end
if outbound == '1' and redis.call('ZCARD', out) >= max - reserved then return {'refused', 'capacity'} end
local pick, pickProvider, first
for i = 0, n - 1 do
  local agent, provider, limit = ARGV[10 + i * 3], ARGV[11 + i * 3], tonumber(ARGV[12 + i * 3])
  local akey, pkey = P .. 'slots:agent:' .. agent, P .. 'slots:provider:' .. provider
  redis.call('ZREMRANGEBYSCORE', akey, '-inf', now)
  redis.call('ZREMRANGEBYSCORE', pkey, '-inf', now)
  local learned = redis.call('GET', P .. 'learned:' .. provider)
  local why
  if learned and redis.call('ZCARD', pkey) >= tonumber(learned) then why = 'agent_capacity'
  elseif limit >= 0 and redis.call('ZCARD', akey) >= limit then why = 'agent_limit' end
  if not why then pick, pickProvider = agent, provider; break end
  if not first then first = why end
end
if not pick then return {'refused', first or 'agent_down'} end
local exp = now + lease
redis.call('ZADD', all, exp, id)
if outbound == '1' then redis.call('ZADD', out, exp, id) end
redis.call('ZADD', P .. 'slots:agent:' .. pick, exp, id)
redis.call('ZADD', P .. 'slots:provider:' .. pickProvider, exp, id)
redis.call('SADD', P .. 'slots:scopes', 'agent:' .. pick, 'provider:' .. pickProvider)
local h = P .. 'slot:' .. id
redis.call('DEL', h)
redis.call('HSET', h, 'callSid', callSid, 'agent', pick, 'provider', pickProvider, 'outbound', outbound, 'owner', owner, 'started', now, 'open', '0')
redis.call('PEXPIRE', h, lease * 2)
return {'ok', pick, pickProvider}`,
);

/** Shared by renew/adopt: extends slot `id` (hash fields a, p, o, open) to `exp`. */
const LUA_EXTEND = `
local function extend(P, id, a, p, o, open, exp, lease)
  redis.call('ZADD', P .. 'slots:all', 'XX', exp, id)
  if o == '1' then redis.call('ZADD', P .. 'slots:out', 'XX', exp, id) end
  redis.call('ZADD', P .. 'slots:agent:' .. a, 'XX', exp, id)
  redis.call('ZADD', P .. 'slots:provider:' .. p, 'XX', exp, id)
  if open == '1' then redis.call('ZADD', P .. 'agentopen:' .. p, exp, id) end
  redis.call('PEXPIRE', P .. 'slot:' .. id, lease * 2)
end`;

const RENEW = new LuaScript(
  'slots.renew',
  `${LUA_NOW}
${LUA_EXTEND}
local P, owner, lease, maxAge = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
local lost = {}
for i = 5, #ARGV do
  local id = ARGV[i]
  local h = redis.call('HMGET', P .. 'slot:' .. id, 'owner', 'agent', 'provider', 'outbound', 'started', 'open')
  local score = redis.call('ZSCORE', P .. 'slots:all', id)
  if not h[1] or not score or tonumber(score) <= now then
    table.insert(lost, id); table.insert(lost, 'expired')
  elseif h[1] ~= owner then
    table.insert(lost, id); table.insert(lost, 'other_owner')
  elseif now - tonumber(h[5]) > maxAge then
    table.insert(lost, id); table.insert(lost, 'too_old')
  else
    extend(P, id, h[2], h[3], h[4], h[6], now + lease, lease)
  end
end
return lost`,
);

const ADOPT = new LuaScript(
  'slots.adopt',
  `${LUA_NOW}
${LUA_EXTEND}
local P, id, owner, lease = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local h = redis.call('HMGET', P .. 'slot:' .. id, 'owner', 'agent', 'provider', 'outbound', 'open')
local score = redis.call('ZSCORE', P .. 'slots:all', id)
if not h[1] or not score or tonumber(score) <= now then return 0 end
redis.call('HSET', P .. 'slot:' .. id, 'owner', owner)
extend(P, id, h[2], h[3], h[4], h[5], now + lease, lease)
return 1`,
);

const RELEASE = new LuaScript(
  'slots.release',
  `local P, id = ARGV[1], ARGV[2]
local h = redis.call('HMGET', P .. 'slot:' .. id, 'agent', 'provider')
local agent, provider = h[1] or ARGV[3], h[2] or ARGV[4]
local held = redis.call('ZREM', P .. 'slots:all', id)
redis.call('ZREM', P .. 'slots:out', id)
redis.call('ZREM', P .. 'slots:agent:' .. agent, id)
redis.call('ZREM', P .. 'slots:provider:' .. provider, id)
redis.call('ZREM', P .. 'agentopen:' .. provider, id)
redis.call('DEL', P .. 'slot:' .. id)
return held`,
);

const MOVE = new LuaScript(
  'slots.move',
  `${LUA_NOW}
local P, id, agent, provider = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local hk = P .. 'slot:' .. id
local h = redis.call('HMGET', hk, 'agent', 'provider', 'open')
local score = redis.call('ZSCORE', P .. 'slots:all', id)
if not h[1] or not score or tonumber(score) <= now then return 0 end
redis.call('ZREM', P .. 'slots:agent:' .. h[1], id)
redis.call('ZREM', P .. 'slots:provider:' .. h[2], id)
redis.call('ZREM', P .. 'agentopen:' .. h[2], id)
redis.call('ZADD', P .. 'slots:agent:' .. agent, score, id)
redis.call('ZADD', P .. 'slots:provider:' .. provider, score, id)
if h[3] == '1' then redis.call('ZADD', P .. 'agentopen:' .. provider, score, id) end
redis.call('SADD', P .. 'slots:scopes', 'agent:' .. agent, 'provider:' .. provider)
redis.call('HSET', hk, 'agent', agent, 'provider', provider)
return 1`,
);

const AGENT_OPEN = new LuaScript(
  'slots.agentOpen',
  `${LUA_NOW}
local P, id, open = ARGV[1], ARGV[2], ARGV[3]
local hk = P .. 'slot:' .. id
local provider = redis.call('HGET', hk, 'provider')
local score = redis.call('ZSCORE', P .. 'slots:all', id)
if not provider or not score or tonumber(score) <= now then return 0 end
if open == '1' then redis.call('ZADD', P .. 'agentopen:' .. provider, score, id)
else redis.call('ZREM', P .. 'agentopen:' .. provider, id) end
redis.call('HSET', hk, 'open', open)
return 1`,
);

const NOTE_CAPACITY = new LuaScript(
  'slots.noteCapacityExceeded',
  `${LUA_NOW}
local P, provider, cooldown = ARGV[1], ARGV[2], tonumber(ARGV[3])
local k = P .. 'agentopen:' .. provider
redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
local n = redis.call('ZCARD', k)
redis.call('SET', P .. 'learned:' .. provider, n, 'PX', cooldown)
return n`,
);

const COUNTS = new LuaScript(
  'slots.counts',
  `${LUA_NOW}
local P = ARGV[1]
local function trimmed(k)
  redis.call('ZREMRANGEBYSCORE', k, '-inf', now)
  return redis.call('ZCARD', k)
end
local res = {'total', trimmed(P .. 'slots:all'), 'outbound', trimmed(P .. 'slots:out')}
for _, scope in ipairs(redis.call('SMEMBERS', P .. 'slots:scopes')) do
  local c = trimmed(P .. 'slots:' .. scope)
  if c == 0 then redis.call('SREM', P .. 'slots:scopes', scope)
  else table.insert(res, scope); table.insert(res, c) end
end
for i = 2, #ARGV do
  local p = ARGV[i]
  local c = trimmed(P .. 'agentopen:' .. p)
  if c > 0 then table.insert(res, 'open:' .. p); table.insert(res, c) end
  local l = redis.call('GET', P .. 'learned:' .. p)
  if l then table.insert(res, 'learned:' .. p); table.insert(res, l .. ':' .. redis.call('PTTL', P .. 'learned:' .. p)) end
end
return res`,
);

const PROVIDERS: readonly AgentProviderName[] = AGENT_PROVIDERS;

/** Fleet-wide slots; one instance per process. */
export class FleetSlots {
  readonly processId: string;
  readonly leaseMs: number;
  readonly #held: HeldClient;
  readonly #prefix: string;
  readonly #opts: FleetSlotsOptions;
  readonly #agentLimits: Map<string, number>;
  readonly #log: Logger | undefined;
  /** The slots this process holds (what `renew` extends). */
  readonly #mine = new Map<string, FleetSlot>();
  #timer: NodeJS.Timeout | undefined;
  #renewing: Promise<LostSlot[]> | undefined;
  #closed = false;

  constructor(opts: FleetSlotsOptions) {
    if (!Number.isInteger(opts.maxConcurrentCalls) || opts.maxConcurrentCalls < 0) throw new Error('fleet: maxConcurrentCalls must be a whole number ≥ 0 (MAX_CONCURRENT_CALLS)');
    this.#opts = opts;
    this.#prefix = checkPrefix(opts.prefix ?? DEFAULT_PREFIX);
    this.#log = opts.logger?.child({ module: 'fleet.slots' });
    this.#held = holdClient(opts.redis, this.#log, 'slots');
    this.processId = opts.processId ?? defaultProcessId();
    this.leaseMs = opts.leaseMs ?? 15_000;
    this.#agentLimits = new Map([...(opts.agentLimits ?? new Map<string, number>())].map(([agent, max]) => [agentKey(agent).agent, max] as const));
  }

  /** The slots this process holds now (as far as it knows; `renew` tells it what it lost). */
  get held(): ReadonlyMap<string, FleetSlot> {
    return this.#mine;
  }

  /** Waits until Redis answers (at boot: fails with a message naming REDIS_URL when it does not). */
  async ready(timeoutMs = 5_000): Promise<void> {
    this.#open();
    await waitReady(this.#held.client, timeoutMs);
  }

  /** Takes a slot for a call, or says why not (the manager's reasons). */
  async claim(req: SlotClaimRequest): Promise<SlotClaimResult> {
    this.#open();
    const id = randomBytes(12).toString('base64url');
    const outbound = req.outbound === true;
    const args: (string | number)[] = [
      this.#prefix,
      id,
      req.callSid,
      this.processId,
      outbound ? '1' : '0',
      this.#opts.maxConcurrentCalls,
      this.#opts.inboundReserved ?? 0,
      this.leaseMs,
      req.agents.length,
    ];
    for (const a of req.agents) {
      const { agent, provider } = agentKey(a);
      args.push(agent, provider, this.#agentLimits.get(agent) ?? -1);
    }
    const reply = asArray(await CLAIM.run(this.#held.client, args), 'slots.claim');
    const kind = asString(reply[0], 'slots.claim');
    if (kind === 'refused') {
      const reason = asString(reply[1], 'slots.claim');
      if (!isRefusal(reason)) throw new FleetError('redis_error', `fleet: slots.claim refused with an unknown reason "${reason}"`);
      return { ok: false, reason };
    }
    const agentId = asString(reply[1], 'slots.claim');
    const provider = providerOf(asString(reply[2], 'slots.claim'));
    const slot: FleetSlot = { id, callSid: req.callSid, agentId, provider, outbound };
    this.#mine.set(id, slot);
    return { ok: true, slot };
  }

  /** Extends every lease this process holds; returns (and forgets) the slots it no longer holds. */
  async renew(): Promise<LostSlot[]> {
    this.#open();
    // One renewal at a time: a slow Redis must not pile them up.
    this.#renewing ??= this.#renewOnce().finally(() => {
      this.#renewing = undefined;
    });
    return this.#renewing;
  }

  async #renewOnce(): Promise<LostSlot[]> {
    const ids = [...this.#mine.keys()];
    if (ids.length === 0) return [];
    const maxAge = (this.#opts.maxCallMs ?? 4 * 3_600_000) + this.leaseMs;
    const reply = asArray(await RENEW.run(this.#held.client, [this.#prefix, this.processId, this.leaseMs, maxAge, ...ids]), 'slots.renew');
    const lost: LostSlot[] = [];
    for (let i = 0; i + 1 < reply.length; i += 2) {
      const id = asString(reply[i], 'slots.renew');
      const reason = asString(reply[i + 1], 'slots.renew');
      const slot = this.#mine.get(id);
      if (slot === undefined || (reason !== 'expired' && reason !== 'other_owner' && reason !== 'too_old')) continue;
      this.#mine.delete(id);
      lost.push({ slot, reason });
    }
    return lost;
  }

  /**
   * Renews every `leaseMs / 3` until closed. `onLost` hears of slots this process no longer holds
   * (their calls should end, or were taken over); `onError` of renewals that failed (Redis away:
   * the leases last two more ticks).
   */
  startRenewing(handlers: { onLost?(lost: LostSlot[]): void; onError?(err: FleetError): void } = {}): void {
    this.#open();
    if (this.#timer !== undefined) return;
    this.#timer = setInterval(
      () => {
        this.renew().then(
          (lost) => {
            if (lost.length > 0) handlers.onLost?.(lost);
          },
          (err: unknown) => {
            if (this.#closed) return;
            const e = err instanceof FleetError ? err : new FleetError('redis_error', `fleet: slots.renew failed: ${String(err)}`);
            this.#log?.warn({ err: e.message }, 'fleet: could not renew call slots');
            handlers.onError?.(e);
          },
        );
      },
      Math.max(10, Math.floor(this.leaseMs / 3)),
    );
    this.#timer.unref();
  }

  /** Gives a slot back (idempotent, from any process); true when it was still held. */
  async release(slot: FleetSlot | string): Promise<boolean> {
    this.#open();
    const known = typeof slot === 'string' ? this.#mine.get(slot) : slot;
    const id = typeof slot === 'string' ? slot : slot.id;
    this.#mine.delete(id);
    const reply = await RELEASE.run(this.#held.client, [this.#prefix, id, known?.agentId ?? '', known?.provider ?? '']);
    return asInt(reply, 'slots.release') === 1;
  }

  /** A fallback agent took the call over: the slot counts for `agentId` and its provider from now on. False when the slot is gone. */
  async move(slot: FleetSlot, agentId: string): Promise<FleetSlot | undefined> {
    this.#open();
    const { agent, provider } = agentKey(agentId);
    const ok = asInt(await MOVE.run(this.#held.client, [this.#prefix, slot.id, agent, provider]), 'slots.move') === 1;
    if (!ok) {
      this.#mine.delete(slot.id);
      return undefined;
    }
    const moved: FleetSlot = { ...slot, agentId: agent, provider };
    if (this.#mine.has(slot.id)) this.#mine.set(slot.id, moved);
    return moved;
  }

  /**
   * This process takes a slot over (the stream landed here, the webhook elsewhere): it renews it
   * from now on. Undefined when the slot is gone (its lease passed).
   */
  async adopt(slot: FleetSlot): Promise<FleetSlot | undefined> {
    this.#open();
    const ok = asInt(await ADOPT.run(this.#held.client, [this.#prefix, slot.id, this.processId, this.leaseMs]), 'slots.adopt') === 1;
    if (!ok) return undefined;
    this.#mine.set(slot.id, slot);
    return slot;
  }

  /** Forgets a slot locally without releasing it (another process adopted it). */
  forget(slotId: string): void {
    this.#mine.delete(slotId);
  }

  /** The call's agent session opened (true) or closed (false): what a learned limit counts. */
  async setAgentOpen(slot: FleetSlot, open: boolean): Promise<boolean> {
    this.#open();
    return asInt(await AGENT_OPEN.run(this.#held.client, [this.#prefix, slot.id, open ? '1' : '0']), 'slots.setAgentOpen') === 1;
  }

  /**
   * A provider refused a session for capacity (PlayAI 4429 and its equivalents): its calls are
   * capped at the number of its agent sessions open fleet-wide now, until one of them ends or the
   * cooldown passes. Returns that limit.
   */
  async noteCapacityExceeded(provider: AgentProviderName, cooldownMs = this.#opts.agentCapacityCooldownMs ?? 60_000): Promise<number> {
    this.#open();
    return asInt(await NOTE_CAPACITY.run(this.#held.client, [this.#prefix, provider, cooldownMs]), 'slots.noteCapacityExceeded');
  }

  /** An agent session of the provider that had been ready ended: its learned limit is lifted. */
  async noteSessionEnded(provider: AgentProviderName): Promise<void> {
    this.#open();
    try {
      await this.#held.client.del(`${this.#prefix}learned:${provider}`);
    } catch (err) {
      throw toFleetError(err, 'slots.noteSessionEnded');
    }
  }

  /** The learned limit in force for a provider, if any. */
  async learnedLimit(provider: AgentProviderName): Promise<number | undefined> {
    this.#open();
    let v: string | null;
    try {
      v = await this.#held.client.get(`${this.#prefix}learned:${provider}`);
    } catch (err) {
      throw toFleetError(err, 'slots.learnedLimit');
    }
    return v === null ? undefined : asInt(v, 'slots.learnedLimit');
  }

  /** The maximum of concurrent calls in force now for a provider's agents (the manager's capacityFor). */
  async capacityFor(provider: AgentProviderName): Promise<number> {
    const learned = await this.learnedLimit(provider);
    return learned === undefined ? this.#opts.maxConcurrentCalls : Math.min(this.#opts.maxConcurrentCalls, learned);
  }

  /** Every scope's count (expired leases trimmed first). */
  async counts(): Promise<SlotCounts> {
    this.#open();
    const reply = asArray(await COUNTS.run(this.#held.client, [this.#prefix, ...PROVIDERS]), 'slots.counts');
    const out: SlotCounts = { total: 0, outbound: 0, perAgent: {}, perProvider: {}, agentOpen: {}, learned: {} };
    for (let i = 0; i + 1 < reply.length; i += 2) {
      const name = asString(reply[i], 'slots.counts');
      const value = reply[i + 1];
      if (name === 'total') out.total = asInt(value, 'slots.counts');
      else if (name === 'outbound') out.outbound = asInt(value, 'slots.counts');
      else if (name.startsWith('agent:')) out.perAgent[name.slice(6)] = asInt(value, 'slots.counts');
      else if (name.startsWith('provider:')) out.perProvider[name.slice(9)] = asInt(value, 'slots.counts');
      else if (name.startsWith('open:')) out.agentOpen[name.slice(5)] = asInt(value, 'slots.counts');
      else if (name.startsWith('learned:')) {
        const [limit, msLeft] = asString(value, 'slots.counts').split(':');
        out.learned[name.slice(8)] = { limit: asInt(limit, 'slots.counts'), msLeft: asInt(msLeft, 'slots.counts') };
      }
    }
    return out;
  }

  /**
   * Stops renewing and closes the client if this module opened it (idempotent). The slots still
   * held are released when `releaseHeld` is set (a clean shutdown); otherwise they expire.
   */
  async close(opts: { releaseHeld?: boolean } = {}): Promise<void> {
    if (this.#closed) return;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    if (opts.releaseHeld === true) {
      for (const slot of [...this.#mine.values()]) await this.release(slot).catch(() => undefined);
    }
    this.#closed = true;
    this.#mine.clear();
    await this.#renewing?.catch(() => undefined);
    await releaseClient(this.#held);
  }

  #open(): void {
    if (this.#closed) throw new FleetError('closed', 'fleet: the slot store was closed');
  }
}

function isRefusal(s: string): s is SlotRefusal {
  return s === 'capacity' || s === 'agent_capacity' || s === 'agent_limit' || s === 'agent_down';
}

function providerOf(text: string): AgentProviderName {
  const p = PROVIDERS.find((x) => x === text);
  if (p === undefined) throw new FleetError('redis_error', `fleet: unknown agent provider "${text}" in a slot`);
  return p;
}

/** `provider:id` and the provider of an agent name (a bare id is a PlayAI agent), as the manager compares them. */
function agentKey(agentId: string): { agent: string; provider: AgentProviderName } {
  const ref = parseAgentRef(agentId);
  return ref === undefined ? { agent: agentId, provider: 'playai' } : { agent: `${ref.provider}:${ref.id}`, provider: ref.provider };
}
