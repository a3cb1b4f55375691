/**
 * Live events across the fleet (REDIS_URL): every process appends its events to one Redis Stream
 * and reads that stream back, so `/v1/events` on any process shows every process's calls and
 * campaigns, in the stream's one order (the same on every process).
 *
 * Key (P = prefix, default `playline:`):
 *   P events   STREAM  fields `o` (publishing process id), `u` (its sequence number there),
 *                      `e` (the event as JSON, without its id). XADD … MAXLEN ~ `maxLen` (default
 *                      10 000): Redis trims it in whole nodes, so it holds about that many.
 *
 * Delivery: `publish` appends (XADD) and returns; the reader (one connection per process, a
 * `duplicate` of the publisher's, XREAD BLOCK) ingests every entry into an in-process
 * {@link MemoryEventBus}, which does the subscriptions, the flow control and the resume. An event's
 * id is its stream entry id (`<ms>-<n>`), so a `Last-Event-ID` taken on one process resumes on
 * another as long as the id is in that process's window (it reads the stream's tail at start).
 * A process delivers its own events once: from the stream, like the others.
 *
 * Redis away: `publish` delivers locally at once (the console of this process keeps its own
 * calls; the id is then this process's `<boot>-<seq>`), the reader logs once and retries with a
 * capped backoff, then carries on from the last entry it read (what the others appended
 * meanwhile, if Redis kept it). An append whose reply was lost but which reached Redis is not
 * delivered twice: its `u` is remembered and skipped when read back.
 *
 * A reader more than `maxLen` entries behind loses what was trimmed: each process numbers its
 * appends (`u`), so such a gap is counted (`missed`) and logged, never silent.
 *
 * Webhooks: events read from other processes are marked `remote`; the webhook forwarder skips
 * them (their own process forwards them), so WEBHOOK_EVENTS are sent once per fleet.
 */
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { z } from 'zod';
import { MemoryEventBus, type EventBus, type SubscribeOptions, type Subscription } from '../events/bus.js';
import { EVENT_TYPES, type EventInput, type PlaylineEvent } from '../events/types.js';
import { checkPrefix, DEFAULT_PREFIX, failFastOptions, waitReady, watchErrors } from './redis.js';

export interface FleetEventBusOptions {
  redisUrl: string;
  /** Key prefix (FLEET_PREFIX). */
  prefix?: string;
  /** This process's fleet id (its own entries are told from the others' by it). */
  processId: string;
  logger?: Logger;
  /** How long events stay resumable here (EVENTS_RETENTION_S; default 10 minutes). */
  retentionMs?: number;
  /** About how many entries the stream keeps (default 10 000), and most events kept here. */
  maxLen?: number;
  /** How long one XREAD waits for entries (default 5 s). */
  blockMs?: number;
}

const storedEvent = z.object({
  type: z.enum(EVENT_TYPES),
  at: z.string().max(40),
  callId: z.string().max(200).optional(),
  campaignId: z.string().max(200).optional(),
  data: z.record(z.string(), z.unknown()),
});

/** `<ms>-<n>`: a Redis Stream entry id. */
const STREAM_ID = /^(\d{1,16})-(\d{1,16})$/;

/** Orders two stream entry ids; undefined when either is not one. */
export function compareStreamIds(a: string, b: string): number | undefined {
  const x = STREAM_ID.exec(a);
  const y = STREAM_ID.exec(b);
  if (x === null || y === null) return undefined;
  const ms = BigInt(x[1] ?? '0') - BigInt(y[1] ?? '0');
  if (ms !== 0n) return ms < 0n ? -1 : 1;
  const n = BigInt(x[2] ?? '0') - BigInt(y[2] ?? '0');
  return n === 0n ? 0 : n < 0n ? -1 : 1;
}

/** Most `u` of appends delivered locally remembered (against reading them back). */
const MAX_FALLBACK_IDS = 10_000;

export class FleetEventBus implements EventBus {
  readonly #o: FleetEventBusOptions;
  readonly #key: string;
  readonly #ring: MemoryEventBus;
  readonly #pub: Redis;
  readonly #reader: Redis;
  readonly #log: Logger | undefined;
  readonly #maxLen: number;
  /** Sequence of this process's appends (`u`). */
  #seq = 0;
  /** `u` of this process's events delivered locally because the append failed. */
  readonly #fallback = new Set<string>();
  /** `u` of this process's appends sent and neither answered nor read back yet. */
  readonly #inFlight = new Set<string>();
  /** The last stream entry read; the next XREAD starts after it. */
  #lastId = '0-0';
  #loop: Promise<void> | undefined;
  #wake: (() => void) | undefined;
  #publishFailing = false;
  #closed = false;
  #badEntries = 0;
  /** The last `u` read from each publishing process (a jump is events this process never saw). */
  readonly #lastU = new Map<string, number>();
  #missed = 0;
  #missedLoggedAt = 0;

  constructor(o: FleetEventBusOptions) {
    this.#o = o;
    this.#key = `${checkPrefix(o.prefix ?? DEFAULT_PREFIX)}events`;
    this.#maxLen = Math.max(1, o.maxLen ?? 10_000);
    this.#log = o.logger?.child({ component: 'fleet.events' });
    this.#ring = new MemoryEventBus({ retentionMs: o.retentionMs ?? 600_000, maxEvents: this.#maxLen, compareIngestedIds: compareStreamIds });
    // No offline queue: while Redis is away, an append fails at once and the event is delivered locally.
    this.#pub = new Redis(o.redisUrl, { ...failFastOptions(), lazyConnect: true, enableOfflineQueue: false });
    watchErrors(this.#pub, this.#log, 'events');
    // The reader's XREAD blocks up to blockMs: its timeout leaves room for that.
    this.#reader = new Redis(o.redisUrl, { ...failFastOptions(), lazyConnect: true, commandTimeout: this.#blockMs + 5_000 });
    watchErrors(this.#reader, this.#log, 'events-reader');
  }

  get #blockMs(): number {
    return this.#o.blockMs ?? 5_000;
  }

  get subscriberCount(): number {
    return this.#ring.subscriberCount;
  }

  /**
   * Events of other processes this process never read: they left the stream (trimmed past its
   * maximum length) before it read them, or their append failed on their process.
   */
  get missed(): number {
    return this.#missed;
  }

  /** Entries read from the stream that were not events (another program writing there?). */
  get badEntries(): number {
    return this.#badEntries;
  }

  /**
   * Connects, reads the stream's entries within the retention window (so ids seen on other
   * processes resume here) and starts following it. Rejects, naming REDIS_URL, when Redis does not answer.
   */
  async start(timeoutMs = 5_000): Promise<void> {
    if (this.#closed || this.#loop !== undefined) return;
    await Promise.all([waitReady(this.#pub, timeoutMs), waitReady(this.#reader, timeoutMs)]);
    // The entries still within the retention window (oldest first); the follow loop reads the rest.
    const since = Math.max(0, Date.now() - (this.#o.retentionMs ?? 600_000));
    const tail: unknown = await this.#reader.xrange(this.#key, `${since}-0`, '+', 'COUNT', this.#maxLen);
    if (Array.isArray(tail)) this.#take(tail);
    this.#loop = this.#follow();
  }

  publish(input: EventInput): void {
    if (this.#closed) return;
    const u = String(++this.#seq);
    const stored: z.input<typeof storedEvent> = { type: input.type, at: new Date().toISOString(), data: input.data };
    if (input.callId !== undefined) stored.callId = input.callId;
    if (input.campaignId !== undefined) stored.campaignId = input.campaignId;
    if (this.#pub.status !== 'ready') {
      this.#deliverLocally(input, u, undefined);
      return;
    }
    this.#inFlight.add(u);
    this.#pub.xadd(this.#key, 'MAXLEN', '~', this.#maxLen, '*', 'o', this.#o.processId, 'u', u, 'e', JSON.stringify(stored)).then(
      () => {
        this.#inFlight.delete(u);
        if (!this.#publishFailing) return;
        this.#publishFailing = false;
        this.#log?.info('fleet events: Redis answers again; events are shared with the fleet again');
      },
      (err: unknown) => {
        // Already read back from the stream (the append reached Redis, its reply did not): delivered.
        if (this.#inFlight.delete(u)) this.#deliverLocally(input, u, err);
      },
    );
  }

  subscribe(opts: SubscribeOptions): Subscription {
    return this.#ring.subscribe(opts);
  }

  /** Stops reading and closes both connections; subscriptions end. Idempotent. */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.#wake?.();
    this.#ring.close();
    this.#reader.disconnect();
    // Appends still on their way go out before the connection closes.
    if (this.#pub.status === 'ready') this.#pub.quit().catch(() => this.#pub.disconnect());
    else this.#pub.disconnect();
  }

  /** Resolves once the reader has stopped (after `close`). */
  async closed(): Promise<void> {
    await this.#loop;
  }

  #deliverLocally(input: EventInput, u: string, err: unknown): void {
    if (this.#closed) return;
    if (!this.#publishFailing) {
      this.#publishFailing = true;
      this.#log?.warn({ err: err instanceof Error ? err.message : undefined }, 'fleet events: cannot append to the Redis stream; this process delivers its own events locally until Redis answers (check REDIS_URL and the Redis server)');
    }
    this.#fallback.add(u);
    if (this.#fallback.size > MAX_FALLBACK_IDS) {
      const oldest = this.#fallback.values().next().value;
      if (oldest !== undefined) this.#fallback.delete(oldest);
    }
    this.#ring.publish(input);
  }

  async #follow(): Promise<void> {
    let failing = false;
    let delay = 100;
    while (!this.#closed) {
      try {
        const reply: unknown = await this.#reader.xread('COUNT', 1000, 'BLOCK', this.#blockMs, 'STREAMS', this.#key, this.#lastId);
        if (failing) {
          failing = false;
          delay = 100;
          this.#log?.info({ after: this.#lastId }, 'fleet events: reading the Redis stream again');
        }
        if (!Array.isArray(reply)) continue;
        for (const stream of reply) {
          if (Array.isArray(stream) && Array.isArray(stream[1])) this.#take(stream[1]);
        }
      } catch (err) {
        if (this.#closed) return;
        if (!failing) {
          failing = true;
          this.#log?.warn({ err: err instanceof Error ? err.message : String(err) }, 'fleet events: lost the Redis stream; events of other processes stop until Redis answers, this process keeps its own (retrying)');
        }
        await this.#sleep(delay);
        delay = Math.min(delay * 2, 2_000);
      }
    }
  }

  /** Ingests stream entries (`[id, [field, value, …]]`), oldest first. */
  #take(entries: unknown[]): void {
    for (const entry of entries) {
      if (!Array.isArray(entry) || typeof entry[0] !== 'string' || !Array.isArray(entry[1])) continue;
      const id = entry[0];
      const fields = entry[1];
      if (compareStreamIds(id, this.#lastId) !== 1) continue;
      this.#lastId = id;
      let origin: string | undefined;
      let u: string | undefined;
      let json: string | undefined;
      for (let i = 0; i + 1 < fields.length; i += 2) {
        const name: unknown = fields[i];
        const value: unknown = fields[i + 1];
        if (typeof value !== 'string') continue;
        if (name === 'o') origin = value;
        else if (name === 'u') u = value;
        else if (name === 'e') json = value;
      }
      const mine = origin === this.#o.processId;
      if (!mine && origin !== undefined && u !== undefined) this.#checkSequence(origin, u);
      if (mine && u !== undefined) {
        if (this.#fallback.delete(u)) continue;
        this.#inFlight.delete(u);
      }
      const parsed = json === undefined ? undefined : storedEvent.safeParse(safeJson(json));
      if (parsed === undefined || !parsed.success) {
        if (this.#badEntries++ === 0) this.#log?.warn({ id }, 'fleet events: skipped a stream entry that is not a Playline event (another program writing under FLEET_PREFIX?)');
        continue;
      }
      const d = parsed.data;
      const event: PlaylineEvent = { id, type: d.type, at: d.at, data: d.data };
      if (d.callId !== undefined) event.callId = d.callId;
      if (d.campaignId !== undefined) event.campaignId = d.campaignId;
      this.#ring.ingest(event, !mine);
    }
  }

  /** Counts (and logs, at most once a minute) the events of `origin` skipped before its `u`. */
  #checkSequence(origin: string, uText: string): void {
    const u = Number(uText);
    if (!Number.isSafeInteger(u)) return;
    const last = this.#lastU.get(origin);
    this.#lastU.delete(origin);
    this.#lastU.set(origin, u);
    if (this.#lastU.size > 1_000) {
      const oldest = this.#lastU.keys().next().value;
      if (oldest !== undefined) this.#lastU.delete(oldest);
    }
    if (last === undefined || u <= last + 1) return;
    this.#missed += u - last - 1;
    const now = Date.now();
    if (now - this.#missedLoggedAt < 60_000) return;
    this.#missedLoggedAt = now;
    this.#log?.warn({ origin, missed: this.#missed }, 'fleet events: events of another process were not seen here (the stream was trimmed before they were read, or their append failed); consoles following this process missed them');
  }

  #sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const t = setTimeout(done, ms);
      function done() {
        clearTimeout(t);
        resolve();
      }
      this.#wake = done;
    });
  }
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
