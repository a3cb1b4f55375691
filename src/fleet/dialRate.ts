/**
 * Dial pacing held across the fleet, exactly at the carrier: the in-process {@link Pacer}'s window
 * (outbound/pacing.ts) kept in Redis, so every process sharing one Redis counts the same dials.
 *
 * BullMQ's global rate limiter (outbound/dialQueue.ts) spreads the dial jobs over time, but it is a
 * fixed window counted when a job starts: two windows back to back, and the jitter between a job's
 * start and its request reaching the carrier, can put more than `rate` dials into one second at the
 * carrier (Twilio's CPS). This window closes that gap:
 *
 *   P dialrate:<name>  ZSET ticket → score. A dial counts while its score > now − windowMs. While its
 *                      carrier request is in flight its score is `now + pendingMs` (it counts); when
 *                      the carrier has answered, its score becomes the answer time. A dial goes only
 *                      when fewer than `count` dials count, so the carrier, which received each
 *                      counted dial before answering it, never sees `count + 1` within one window.
 *
 * A process that dies mid-request leaves its ticket counting until `pendingMs + windowMs` passes
 * (it slows dialing for that long, and never overshoots). Times come from Redis' clock.
 */
import { randomBytes } from 'node:crypto';
import type { Redis } from 'ioredis';
import { asInt, checkPrefix, LUA_NOW, LuaScript } from './redis.js';

/** One pacing scope: `count` dials per `windowMs` (rate r ≥ 1: ⌊r⌋ per second; r < 1: one per 1/r s). */
export interface RateScope {
  name: string;
  ratePerSecond: number;
}

const TAKE = new LuaScript(
  'dialrate.take',
  `${LUA_NOW}
local prefix = ARGV[1]
local ticket = ARGV[2]
local pendingMs = tonumber(ARGV[3])
local n = tonumber(ARGV[4])
local wait = 0
for i = 0, n - 1 do
  local key = prefix .. 'dialrate:' .. ARGV[5 + i * 3]
  local count = tonumber(ARGV[6 + i * 3])
  local windowMs = tonumber(ARGV[7 + i * 3])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - windowMs)
  local c = redis.call('ZCARD', key)
  if c >= count then
    local r = redis.call('ZRANGE', key, c - count, c - count, 'WITHSCORES')
    local w = tonumber(r[2]) + windowMs - now + 1
    if w > wait then wait = w end
  end
end
if wait > 0 then return wait end
for i = 0, n - 1 do
  local key = prefix .. 'dialrate:' .. ARGV[5 + i * 3]
  redis.call('ZADD', key, now + pendingMs, ticket)
  redis.call('PEXPIRE', key, pendingMs + 2 * tonumber(ARGV[7 + i * 3]))
end
return 0`,
);

const ANSWERED = new LuaScript(
  'dialrate.answered',
  `${LUA_NOW}
for i = 3, #ARGV do redis.call('ZADD', ARGV[1] .. 'dialrate:' .. ARGV[i], 'XX', now, ARGV[2]) end
return 1`,
);

const FORGET = new LuaScript(
  'dialrate.forget',
  `for i = 3, #ARGV do redis.call('ZREM', ARGV[1] .. 'dialrate:' .. ARGV[i], ARGV[2]) end
return 1`,
);

/** A dial counted in its scopes until the carrier answers it (`answered`), or given back unused (`forget`). */
export interface RateTicket {
  readonly id: string;
  readonly scopes: readonly string[];
}

export class FleetDialRate {
  readonly #client: Redis;
  readonly #prefix: string;
  readonly #pendingMs: number;

  /** `pendingMs`: the longest a carrier request may take (the dialer's timeout). */
  constructor(client: Redis, prefix: string, pendingMs = 10_000) {
    this.#client = client;
    this.#prefix = checkPrefix(prefix);
    this.#pendingMs = pendingMs;
  }

  /** Takes a ticket in every scope when each has room now; else the ms to wait before asking again. */
  async take(scopes: RateScope[]): Promise<RateTicket | number> {
    const id = randomBytes(9).toString('base64url');
    const args: (string | number)[] = [this.#prefix, id, this.#pendingMs, scopes.length];
    for (const s of scopes) {
      const count = s.ratePerSecond >= 1 ? Math.floor(s.ratePerSecond) : 1;
      const windowMs = s.ratePerSecond >= 1 ? 1000 : Math.ceil(1000 / s.ratePerSecond);
      args.push(s.name, count, windowMs);
    }
    const wait = asInt(await TAKE.run(this.#client, args), 'dialrate.take');
    return wait > 0 ? wait : { id, scopes: scopes.map((s) => s.name) };
  }

  /** The carrier answered the ticket's request (or it failed): it counts one window from now. */
  async answered(t: RateTicket): Promise<void> {
    await ANSWERED.run(this.#client, [this.#prefix, t.id, ...t.scopes]);
  }

  /** The ticket's dial did not go (its claim was lost): it stops counting. */
  async forget(t: RateTicket): Promise<void> {
    await FORGET.run(this.#client, [this.#prefix, t.id, ...t.scopes]);
  }
}
