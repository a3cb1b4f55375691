/**
 * Shared plumbing of the fleet modules (slots.ts, tokens.ts, owners.ts): one way to get an ioredis
 * client, one error type, one way to run a Lua script.
 *
 * Connections. Every module takes either an ioredis client (the caller owns it and closes it) or a
 * URL (the module opens the client, owns it, and closes it in `close()`). A client opened from a
 * URL fails fast while Redis is away (one reconnection attempt per command, then
 * MaxRetriesPerRequestError; a 3 s command timeout) instead of queueing calls for minutes, and
 * reconnects in the background with a capped backoff: a webhook answered while Redis is down gets a clear error at once, and the
 * next one after Redis comes back works. Every client the fleet opens has an `error` listener, so
 * a lost connection is a log line, never an unhandled `error` event.
 *
 * Errors. Everything the modules reject with is a {@link FleetError} whose `code` says what went
 * wrong (`redis_unavailable`, `redis_error`, `no_owner`, `timeout`, `closed`, …) and whose message
 * names the fix. ioredis' own errors are wrapped (the original is the `cause`).
 *
 * Scripts. Lua runs through EVALSHA with the SHA computed here; a NOSCRIPT reply (Redis restarted,
 * or SCRIPT FLUSH) falls back to EVAL, which loads the script again. Script replies are `unknown`
 * and are checked by the callers (nothing from Redis is trusted by cast).
 *
 * Keys. Each module builds its keys from a prefix (default `playline:`), so tests and several
 * fleets can share one Redis. Scripts build keys from that prefix: one Redis (standalone, or
 * Sentinel-managed) is supported; Redis Cluster is not. Scripts read Redis' clock (TIME) before
 * writing, which needs Redis ≥ 5 (script effects replication; Debian 12 ships 7.0).
 */
import { createHash, randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';

export type FleetErrorCode =
  /** Redis cannot be reached (down, restarting, wrong REDIS_URL, timed out). */
  | 'redis_unavailable'
  /** Redis answered with an error or something the fleet did not expect (a bug or a foreign key). */
  | 'redis_error'
  /** No process owns the call (it ended, or its process died and its ownership expired). */
  | 'no_owner'
  /** The owning process did not answer in time (busy, or dead with its ownership not yet expired). */
  | 'timeout'
  /** The module was closed. */
  | 'closed';

export class FleetError extends Error {
  readonly code: FleetErrorCode;
  constructor(code: FleetErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'FleetError';
    this.code = code;
  }
}

/** An ioredis client, or a `redis://` / `rediss://` URL to open one from. */
export type RedisConnection = Redis | string;

export interface FleetCommonOptions {
  redis: RedisConnection;
  /** Prefix of every key and channel (default `playline:`); it should end with `:`. */
  prefix?: string;
  logger?: Logger;
}

export const DEFAULT_PREFIX = 'playline:';

/** A process id for leases and ownership: host, pid and a random tail (a restarted process is a new owner). */
export function defaultProcessId(): string {
  return `${hostname()}:${process.pid}:${randomBytes(4).toString('hex')}`;
}

/** A client and whether the fleet module owns it (opened from a URL) or borrowed it. */
export interface HeldClient {
  readonly client: Redis;
  readonly owned: boolean;
}

/** Opens a client from a URL with fail-fast settings, or borrows the one given. */
export function holdClient(conn: RedisConnection, logger: Logger | undefined, role: string): HeldClient {
  if (typeof conn !== 'string') return { client: conn, owned: false };
  const client = new Redis(conn, failFastOptions());
  watchErrors(client, logger, role);
  return { client, owned: true };
}

/** The options a fleet-owned client is opened with (also used for `duplicate()` subscribers). */
export function failFastOptions() {
  return {
    maxRetriesPerRequest: 1,
    commandTimeout: 3_000,
    connectTimeout: 3_000,
    // Reconnect forever, 100 ms growing to 2 s apart: Redis coming back is picked up within 2 s.
    retryStrategy: (times: number) => Math.min(100 * times, 2_000),
  } as const;
}

/** Logs a client's connection errors (at most one line per distinct message every 10 s). */
export function watchErrors(client: Redis, logger: Logger | undefined, role: string): void {
  let last = '';
  let lastAt = 0;
  client.on('error', (err: unknown) => {
    const msg = err instanceof Error ? err.message : String(err);
    const now = Date.now();
    if (msg === last && now - lastAt < 10_000) return;
    last = msg;
    lastAt = now;
    logger?.warn({ role, err: msg }, 'fleet: Redis connection error (check REDIS_URL and that Redis is running)');
  });
}

/** Waits until a client is ready, or fails naming the fix. */
export async function waitReady(client: Redis, timeoutMs = 5_000): Promise<void> {
  if (client.status === 'ready') return;
  if (client.status === 'end') throw new FleetError('closed', 'fleet: the Redis client was closed');
  if (client.status === 'wait') client.connect().catch(() => undefined);
  await new Promise<void>((resolve, reject) => {
    const done = (err?: FleetError) => {
      clearTimeout(timer);
      client.off('ready', onReady);
      if (err === undefined) resolve();
      else reject(err);
    };
    const onReady = () => done();
    const timer = setTimeout(
      () => done(new FleetError('redis_unavailable', `fleet: Redis did not become ready within ${timeoutMs} ms (status ${client.status}); check REDIS_URL and that Redis is running`)),
      timeoutMs,
    );
    timer.unref();
    client.on('ready', onReady);
  });
}

/** Closes a client the module owns (QUIT, or disconnect when Redis is gone); borrowed ones are left open. */
export async function releaseClient(held: HeldClient): Promise<void> {
  if (!held.owned) return;
  const c = held.client;
  if (c.status === 'end') return;
  if (c.status !== 'ready') {
    c.disconnect();
    return;
  }
  try {
    await c.quit();
  } catch {
    c.disconnect();
  }
}

/** Turns anything ioredis threw into a FleetError that says what to do. */
export function toFleetError(err: unknown, what: string): FleetError {
  if (err instanceof FleetError) return err;
  const msg = err instanceof Error ? err.message : String(err);
  const isReply = err instanceof Error && err.name === 'ReplyError';
  if (isReply) return new FleetError('redis_error', `fleet: ${what} failed: Redis replied ${msg}`, { cause: err });
  return new FleetError('redis_unavailable', `fleet: ${what} failed: Redis is unreachable (${msg}); check REDIS_URL and that Redis is running`, { cause: err });
}

/** A Lua script run with EVALSHA, loaded again with EVAL on NOSCRIPT. */
export class LuaScript {
  readonly sha: string;
  constructor(
    readonly name: string,
    readonly source: string,
  ) {
    this.sha = createHash('sha1').update(source).digest('hex');
  }

  /** Runs the script with no declared keys (the script builds them from the prefix in ARGV). */
  async run(client: Redis, args: (string | number)[]): Promise<unknown> {
    try {
      return await client.evalsha(this.sha, 0, ...args);
    } catch (err) {
      if (err instanceof Error && err.message.startsWith('NOSCRIPT')) {
        try {
          return await client.eval(this.source, 0, ...args);
        } catch (err2) {
          throw toFleetError(err2, this.name);
        }
      }
      throw toFleetError(err, this.name);
    }
  }
}

/** The time in ms from Redis' clock (shared by every process), as scripts compute it. */
export const LUA_NOW = `local __t = redis.call('TIME'); local now = tonumber(__t[1]) * 1000 + math.floor(tonumber(__t[2]) / 1000)`;

/** Checks a script reply is an array (of anything). */
export function asArray(v: unknown, what: string): unknown[] {
  if (!Array.isArray(v)) throw new FleetError('redis_error', `fleet: ${what} returned ${typeof v}, expected a list (another program writing under the fleet prefix?)`);
  return v;
}

export function asString(v: unknown, what: string): string {
  if (typeof v === 'string') return v;
  if (typeof v === 'number') return String(v);
  throw new FleetError('redis_error', `fleet: ${what} returned ${typeof v}, expected a string`);
}

export function asInt(v: unknown, what: string): number {
  const n = typeof v === 'number' ? v : typeof v === 'string' ? Number(v) : NaN;
  if (!Number.isInteger(n)) throw new FleetError('redis_error', `fleet: ${what} returned ${String(v)}, expected an integer`);
  return n;
}

/** Checks a key prefix: non-empty, printable, no spaces. */
export function checkPrefix(prefix: string): string {
  if (!/^[\x21-\x7e]{1,64}$/.test(prefix)) throw new Error(`fleet: the key prefix "${prefix}" must be 1 to 64 printable characters without spaces, e.g. "playline:"`);
  return prefix;
}
