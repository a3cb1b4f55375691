/**
 * Single-use stream tokens in Redis, so the webhook (which mints a call's token) and the media
 * stream (which redeems it) may land on different processes or machines. Same rules as
 * session/manager.ts: a token is bound to its CallSid and used once; a token presented with
 * another CallSid is refused (`call_mismatch`) and stays valid for its own call; a call holds at
 * most one pending token, and Twilio's retry of the webhook (same `I-Twilio-Idempotency-Token`,
 * or any when the first request carried none) gets the same token back (`replayed`), anything
 * else is a `duplicate`.
 *
 * Keys (P = prefix, default `playline:`):
 *   P token:<token>        HASH callSid, data (the reservation as JSON), idem (idempotency token
 *                               or ''); PX = the token TTL
 *   P tokencall:<callSid>  STRING the call's pending token; PX = the token TTL
 *   P tokenspent:<token>   STRING `expired_token` from mint (outlives the token), `used_token`
 *                               once claimed; PX = TTL + `spentRetentionMs` (default 1 h): tells
 *                               a replay or a late stream from a forgery (`unknown_token`)
 *
 * Scripts: `mint` (replay check, then HSET under a NX check: a token never overwrites another),
 * `claim` (check the CallSid, delete, mark used: atomic, so two processes redeeming one token
 * concurrently cannot both win), `cancel` (drop a call's pending token), `settle` (at the TTL the
 * minting process asks whether its token was used or expired: it then releases the slot).
 *
 * Not here: the manager also refuses a webhook or a stream for a call that is live (`duplicate`,
 * `call_live`); fleet-wide that is `CallOwners.ownerOf(callSid)` (owners.ts), checked by the caller.
 *
 * The reservation is stored as JSON and checked with the caller's zod schema when claimed (a
 * value that does not match is an error naming it, never a cast).
 *
 * Failure modes: Redis unreachable → FleetError `redis_unavailable` (the webhook answers that the
 * call cannot be taken; the stream is refused). Redis restarted without persistence → pending
 * tokens are gone: their streams get `unknown_token`, their slots expire with their leases.
 */
import type { Logger } from 'pino';
import type { z } from 'zod';
import {
  asArray,
  asString,
  checkPrefix,
  DEFAULT_PREFIX,
  FleetError,
  holdClient,
  LuaScript,
  releaseClient,
  waitReady,
  type FleetCommonOptions,
  type HeldClient,
} from './redis.js';

export interface FleetTokensOptions<T> extends FleetCommonOptions {
  /** Checks a reservation read back from Redis. */
  schema: z.ZodType<T>;
  /** How long a used or expired token is remembered (to name it in refusals; default 1 h). */
  spentRetentionMs?: number;
  /**
   * Called when a token minted by this process expired unused (a timer here, at its TTL): the
   * caller releases the call's slot, as the manager does. Not called for tokens used meanwhile.
   */
  onExpired?(token: string, callSid: string): void;
}

export interface MintRequest<T> {
  token: string;
  callSid: string;
  reservation: T;
  ttlMs: number;
  /** `I-Twilio-Idempotency-Token` of the webhook (Twilio's retries carry the same). */
  idempotencyToken?: string;
}

export type MintResult<T> =
  | { ok: true; token: string; replayed: false }
  /** Twilio's retry of the same webhook: the pending token and its reservation come back. */
  | { ok: true; token: string; replayed: true; reservation: T }
  /** The call already holds a pending token minted for another request. */
  | { ok: false; reason: 'duplicate' }
  /** That token string is taken (never happens with random tokens). */
  | { ok: false; reason: 'token_exists' };

export type TokenRefusal = 'missing_token' | 'unknown_token' | 'used_token' | 'expired_token' | 'call_mismatch';

export type TokenClaimResult<T> = { ok: true; reservation: T } | { ok: false; reason: TokenRefusal };

const MINT = new LuaScript(
  'tokens.mint',
  `local P, token, callSid, data, ttl, idem, keep = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5]), ARGV[6], tonumber(ARGV[7])
local callKey = P .. 'tokencall:' .. callSid
local cur = redis.call('GET', callKey)
if cur then
  local h = redis.call('HMGET', P .. 'token:' .. cur, 'idem', 'data')
  if h[2] then
    if h[1] == '' or h[1] == idem then return {'replayed', cur, h[2]} end
    return {'duplicate'}
  end
end
local tk = P .. 'token:' .. token
if redis.call('EXISTS', tk) == 1 or redis.call('EXISTS', P .. 'tokenspent:' .. token) == 1 then return {'token_exists'} end
redis.call('HSET', tk, 'callSid', callSid, 'data', data, 'idem', idem)
redis.call('PEXPIRE', tk, ttl)
redis.call('SET', callKey, token, 'PX', ttl)
redis.call('SET', P .. 'tokenspent:' .. token, 'expired_token', 'PX', ttl + keep)
return {'minted', token}`,
);

const CLAIM = new LuaScript(
  'tokens.claim',
  `local P, token, callSid, keep = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local tk = P .. 'token:' .. token
local h = redis.call('HMGET', tk, 'callSid', 'data')
if not h[1] then
  return {'refused', redis.call('GET', P .. 'tokenspent:' .. token) or 'unknown_token'}
end
if h[1] ~= callSid then return {'refused', 'call_mismatch'} end
redis.call('DEL', tk)
local callKey = P .. 'tokencall:' .. callSid
if redis.call('GET', callKey) == token then redis.call('DEL', callKey) end
redis.call('SET', P .. 'tokenspent:' .. token, 'used_token', 'PX', keep)
return {'ok', h[2]}`,
);

/** Drops a pending token (by call, or by token when ARGV[3] is set) as expired; returns the token or false. */
const CANCEL = new LuaScript(
  'tokens.cancel',
  `local P, callSid, token, keep = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
if token == '' then token = redis.call('GET', P .. 'tokencall:' .. callSid) end
if not token then return false end
local tk = P .. 'token:' .. token
local owner = redis.call('HGET', tk, 'callSid')
if not owner then return false end
redis.call('DEL', tk)
local callKey = P .. 'tokencall:' .. owner
if redis.call('GET', callKey) == token then redis.call('DEL', callKey) end
redis.call('SET', P .. 'tokenspent:' .. token, 'expired_token', 'PX', keep)
return token`,
);

const SPENT_STATE = new LuaScript(
  'tokens.state',
  `local P, token = ARGV[1], ARGV[2]
if redis.call('EXISTS', P .. 'token:' .. token) == 1 then return 'pending' end
return redis.call('GET', P .. 'tokenspent:' .. token) or 'unknown_token'`,
);

/** Fleet-wide stream tokens; one instance per process. */
export class FleetTokens<T> {
  readonly #held: HeldClient;
  readonly #prefix: string;
  readonly #opts: FleetTokensOptions<T>;
  readonly #log: Logger | undefined;
  readonly #timers = new Map<string, NodeJS.Timeout>();
  #closed = false;

  constructor(opts: FleetTokensOptions<T>) {
    this.#opts = opts;
    this.#prefix = checkPrefix(opts.prefix ?? DEFAULT_PREFIX);
    this.#log = opts.logger?.child({ module: 'fleet.tokens' });
    this.#held = holdClient(opts.redis, this.#log, 'tokens');
  }

  /** Waits until Redis answers (at boot: fails with a message naming REDIS_URL when it does not). */
  async ready(timeoutMs = 5_000): Promise<void> {
    this.#open();
    await waitReady(this.#held.client, timeoutMs);
  }

  get #keepMs(): number {
    return this.#opts.spentRetentionMs ?? 3_600_000;
  }

  /**
   * Mints a call's token (SET NX semantics), or returns the pending one for Twilio's retry of the
   * same webhook. With `onExpired` set, this process checks at the TTL whether the token expired
   * unused and says so.
   */
  async mint(req: MintRequest<T>): Promise<MintResult<T>> {
    this.#open();
    if (req.token === '') throw new Error('fleet: a stream token cannot be empty');
    if (!Number.isInteger(req.ttlMs) || req.ttlMs <= 0) throw new Error(`fleet: a token TTL must be a whole number of ms > 0 (got ${req.ttlMs})`);
    const data = JSON.stringify(req.reservation);
    const reply = asArray(
      await MINT.run(this.#held.client, [this.#prefix, req.token, req.callSid, data, req.ttlMs, req.idempotencyToken ?? '', this.#keepMs]),
      'tokens.mint',
    );
    const kind = asString(reply[0], 'tokens.mint');
    if (kind === 'duplicate' || kind === 'token_exists') return { ok: false, reason: kind };
    if (kind === 'replayed') {
      return { ok: true, token: asString(reply[1], 'tokens.mint'), replayed: true, reservation: this.#parse(asString(reply[2], 'tokens.mint')) };
    }
    if (kind !== 'minted') throw new FleetError('redis_error', `fleet: tokens.mint answered "${kind}"`);
    if (this.#opts.onExpired !== undefined) this.#watch(req.token, req.callSid, req.ttlMs);
    return { ok: true, token: req.token, replayed: false };
  }

  /**
   * Redeems a token (single use) for the call presenting it. A token presented with another
   * CallSid is refused and stays valid for its own call.
   */
  async claim(token: string | undefined, callSid: string): Promise<TokenClaimResult<T>> {
    this.#open();
    if (token === undefined || token === '') return { ok: false, reason: 'missing_token' };
    const reply = asArray(await CLAIM.run(this.#held.client, [this.#prefix, token, callSid, this.#keepMs]), 'tokens.claim');
    const kind = asString(reply[0], 'tokens.claim');
    const value = asString(reply[1], 'tokens.claim');
    if (kind === 'ok') {
      this.#unwatch(token);
      return { ok: true, reservation: this.#parse(value) };
    }
    if (value === 'unknown_token' || value === 'used_token' || value === 'expired_token' || value === 'call_mismatch') return { ok: false, reason: value };
    throw new FleetError('redis_error', `fleet: tokens.claim refused with an unknown reason "${value}"`);
  }

  /** Gives up a call's pending token (it stops working); false when the call has none. */
  async cancel(callSid: string): Promise<boolean> {
    this.#open();
    const reply = await CANCEL.run(this.#held.client, [this.#prefix, callSid, '', this.#keepMs]);
    if (typeof reply !== 'string') return false;
    this.#unwatch(reply);
    return true;
  }

  /** Where a token stands: pending, used, expired, or unknown (never minted, or forgotten). */
  async state(token: string): Promise<'pending' | 'used_token' | 'expired_token' | 'unknown_token'> {
    this.#open();
    const s = asString(await SPENT_STATE.run(this.#held.client, [this.#prefix, token]), 'tokens.state');
    if (s === 'pending' || s === 'used_token' || s === 'expired_token' || s === 'unknown_token') return s;
    throw new FleetError('redis_error', `fleet: tokens.state answered "${s}"`);
  }

  /** Stops the expiry timers and closes the client if this module opened it (idempotent). */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    for (const t of this.#timers.values()) clearTimeout(t);
    this.#timers.clear();
    await releaseClient(this.#held);
  }

  #watch(token: string, callSid: string, ttlMs: number): void {
    const timer = setTimeout(() => {
      this.#timers.delete(token);
      if (this.#closed) return;
      // Expire it here (Redis may not have yet): whichever comes first, a claim or this, wins.
      CANCEL.run(this.#held.client, [this.#prefix, callSid, token, this.#keepMs])
        .then(async (reply) => (typeof reply === 'string' ? 'expired_token' : await this.state(token)))
        .then(
          (s) => {
            if (s === 'expired_token' && !this.#closed) this.#opts.onExpired?.(token, callSid);
          },
          (err: unknown) => {
            // Redis away at the TTL: the token expires there by itself; the slot's lease still runs out.
            this.#log?.warn({ callSid, err: err instanceof Error ? err.message : String(err) }, 'fleet: could not settle an expired stream token');
          },
        );
    }, ttlMs);
    timer.unref();
    this.#timers.set(token, timer);
  }

  #unwatch(token: string): void {
    const t = this.#timers.get(token);
    if (t !== undefined) clearTimeout(t);
    this.#timers.delete(token);
  }

  #parse(json: string): T {
    let value: unknown;
    try {
      value = JSON.parse(json);
    } catch {
      throw new FleetError('redis_error', 'fleet: a stored reservation is not JSON (another program writing under the fleet prefix?)');
    }
    const r = this.#opts.schema.safeParse(value);
    if (!r.success) throw new FleetError('redis_error', `fleet: a stored reservation does not match its schema: ${r.error.message}`);
    return r.data;
  }

  #open(): void {
    if (this.#closed) throw new FleetError('closed', 'fleet: the token store was closed');
  }
}
