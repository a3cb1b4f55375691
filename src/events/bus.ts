/**
 * The event bus port and its in-process implementation.
 *
 * Publishers (the call recorder, carrier callbacks, the outbound engine) call
 * `publish`; subscribers (the SSE route, the webhook forwarder) get every
 * matching event in publish order. Recent events are kept in a ring bounded by
 * age and by count and bytes, so a subscriber can resume after the last id it
 * saw with no gap and no duplicate; an id the ring no longer holds (or one of
 * another process lifetime) gets a resync notice instead.
 *
 * The port is what a shared implementation (Redis Streams, issue 14) would put
 * behind it; {@link MemoryEventBus} is the default.
 */
import { randomBytes } from 'node:crypto';
import { matches, type EventFilter, type EventInput, type PlaylineEvent, type ResyncReason } from './types.js';

/** An event and its JSON (serialised once, shared by every subscriber). */
export interface BusEvent {
  event: PlaylineEvent;
  json: string;
}

export interface SubscribeOptions {
  filter: EventFilter;
  /** Resume after this id: retained later events are delivered first (or `onResync` when it cannot be resumed). */
  after?: string | undefined;
  /** Called for each matching event, in order. Must not throw (a throw is swallowed). */
  onEvent(e: BusEvent): void;
  /** Called once, before any event, when `after` cannot be resumed. */
  onResync?(reason: ResyncReason): void;
}

export interface Subscription {
  /** Stops delivery. Idempotent. */
  close(): void;
}

export interface EventBus {
  publish(input: EventInput): void;
  subscribe(opts: SubscribeOptions): Subscription;
  /** Open subscriptions (tests, metrics). */
  readonly subscriberCount: number;
  /** Closes every subscription. */
  close(): void;
}

/** A bus that keeps nothing and delivers nothing (bare unit tests, benchmarks). */
export const NULL_BUS: EventBus = {
  publish() {},
  subscribe: () => ({ close() {} }),
  subscriberCount: 0,
  close() {},
};

export interface MemoryEventBusOptions {
  /** How long events stay resumable (default 10 minutes). */
  retentionMs?: number;
  /** Most events kept (default 10 000). */
  maxEvents?: number;
  /** Most bytes of event JSON kept (default 16 MiB). */
  maxBytes?: number;
  now?: () => number;
}

interface Retained extends BusEvent {
  seq: number;
  atMs: number;
}

interface Sub {
  filter: EventFilter;
  onEvent(e: BusEvent): void;
  open: boolean;
}

/** A process-unique prefix of event ids: boot time in base 36 and a random suffix (two boots in one millisecond differ). */
function bootId(nowMs: number): string {
  return `${Math.floor(nowMs).toString(36)}${randomBytes(2).toString('hex')}`;
}

export class MemoryEventBus implements EventBus {
  readonly #retentionMs: number;
  readonly #maxEvents: number;
  readonly #maxBytes: number;
  readonly #now: () => number;
  readonly #boot: string;
  /** Retained events, oldest first; `#ring[i].seq === #ring[0].seq + i`. Trimmed from the front. */
  #ring: Retained[] = [];
  #head = 0;
  #bytes = 0;
  #seq = 0;
  readonly #subs = new Set<Sub>();

  constructor(opts: MemoryEventBusOptions = {}) {
    this.#retentionMs = opts.retentionMs ?? 600_000;
    this.#maxEvents = Math.max(1, opts.maxEvents ?? 10_000);
    this.#maxBytes = Math.max(1, opts.maxBytes ?? 16 * 1024 * 1024);
    this.#now = opts.now ?? Date.now;
    this.#boot = bootId(this.#now());
  }

  get subscriberCount(): number {
    return this.#subs.size;
  }

  /** Events currently retained (tests). */
  get retained(): number {
    return this.#ring.length - this.#head;
  }

  publish(input: EventInput): void {
    const atMs = this.#now();
    const seq = ++this.#seq;
    const event: PlaylineEvent = { id: `${this.#boot}-${seq}`, type: input.type, at: new Date(atMs).toISOString(), data: input.data };
    if (input.callId !== undefined) event.callId = input.callId;
    if (input.campaignId !== undefined) event.campaignId = input.campaignId;
    const json = JSON.stringify(event);
    const r: Retained = { event, json, seq, atMs };
    this.#ring.push(r);
    this.#bytes += json.length;
    this.#trim(atMs);
    for (const s of this.#subs) if (s.open && matches(s.filter, event)) deliver(s, r);
  }

  subscribe(opts: SubscribeOptions): Subscription {
    const sub: Sub = { filter: opts.filter, onEvent: opts.onEvent, open: true };
    if (opts.after !== undefined) {
      this.#trim(this.#now());
      const from = this.#resumeIndex(opts.after);
      if (typeof from === 'string') {
        opts.onResync?.(from);
      } else {
        for (let i = from; i < this.#ring.length && sub.open; i++) {
          const r = this.#ring[i];
          if (r !== undefined && matches(sub.filter, r.event)) deliver(sub, r);
        }
      }
    }
    // Replay is synchronous: nothing can be published between the replay and going live.
    if (sub.open) this.#subs.add(sub);
    return {
      close: () => {
        sub.open = false;
        this.#subs.delete(sub);
      },
    };
  }

  close(): void {
    for (const s of this.#subs) s.open = false;
    this.#subs.clear();
  }

  /** Index in the ring of the first event after `id`, or why there is none to resume from. */
  #resumeIndex(id: string): number | ResyncReason {
    const dash = id.lastIndexOf('-');
    const seqText = id.slice(dash + 1);
    if (dash < 0 || id.slice(0, dash) !== this.#boot || !/^\d{1,15}$/.test(seqText)) return 'unknown_id';
    const seq = Number(seqText);
    if (seq < 1 || seq > this.#seq) return 'unknown_id';
    const first = this.#ring[this.#head];
    const firstSeq = first === undefined ? this.#seq + 1 : first.seq;
    // The id itself may have left the ring as long as nothing after it has.
    if (seq < firstSeq - 1) return 'too_old';
    return this.#head + (seq + 1 - firstSeq);
  }

  #trim(nowMs: number): void {
    const oldest = nowMs - this.#retentionMs;
    while (this.#head < this.#ring.length) {
      const r = this.#ring[this.#head];
      if (r === undefined) break;
      const count = this.#ring.length - this.#head;
      if (count <= this.#maxEvents && this.#bytes <= this.#maxBytes && r.atMs >= oldest) break;
      this.#bytes -= r.json.length;
      this.#head++;
    }
    // Compact now and then, so trimming stays O(1) amortised.
    if (this.#head > 1024 && this.#head * 2 > this.#ring.length) {
      this.#ring = this.#ring.slice(this.#head);
      this.#head = 0;
    }
  }
}

function deliver(s: Sub, r: BusEvent): void {
  try {
    s.onEvent(r);
  } catch {
    // A subscriber's failure is its own; the others and the publisher go on.
  }
}
