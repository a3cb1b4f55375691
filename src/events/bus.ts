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
 * Delivery has flow control: a subscriber whose `onEvent` returns false is
 * paused, and `resume()` carries on from where it stopped, reading from the
 * ring. So a slow subscriber costs a cursor, never a queue; one that falls
 * behind the retained window is told (`onOverrun`) and dropped.
 *
 * {@link MemoryEventBus} is the default. With REDIS_URL, fleet/events.ts puts a Redis Stream in
 * front of one: every process's events are appended to the stream and `ingest`ed here with the
 * stream entry's id, so each process delivers every process's events in one order.
 */
import { randomBytes } from 'node:crypto';
import { matches, type EventFilter, type EventInput, type PlaylineEvent, type ResyncReason } from './types.js';

/** An event and its JSON (serialised once, shared by every subscriber). */
export interface BusEvent {
  event: PlaylineEvent;
  json: string;
  /** Published by another process of the fleet (REDIS_URL): its own process forwards it to webhooks. */
  remote?: boolean;
}

export interface SubscribeOptions {
  filter: EventFilter;
  /** Resume after this id: retained later events are delivered first (or `onResync` when it cannot be resumed). */
  after?: string | undefined;
  /**
   * Called for each matching event, in order. Returning false pauses delivery until `resume()`
   * (the event was taken; the next one waits). Must not throw (a throw is swallowed).
   */
  onEvent(e: BusEvent): boolean | void;
  /** Called once, before any event, when `after` cannot be resumed. */
  onResync?(reason: ResyncReason): void;
  /** A paused subscriber fell behind what the bus retains: it is closed, and this says so. */
  onOverrun?(): void;
}

export interface Subscription {
  /** Delivers what came since the pause, then live events again (until `onEvent` returns false again). */
  resume(): void;
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
  subscribe: () => ({ resume() {}, close() {} }),
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
  /**
   * Orders ids given to {@link MemoryEventBus.ingest} (negative, 0, positive), or undefined when
   * an id is not of their form: a resume from such an id older than every retained one is
   * `too_old` rather than `unknown_id`.
   */
  compareIngestedIds?: (a: string, b: string) => number | undefined;
}

interface Retained extends BusEvent {
  seq: number;
  atMs: number;
  /** Its id came with it (ingest), rather than from this bus. */
  ingested: boolean;
}

interface Sub {
  filter: EventFilter;
  onEvent(e: BusEvent): boolean | void;
  onOverrun: (() => void) | undefined;
  open: boolean;
  paused: boolean;
  /** Sequence of the last event delivered or passed over. */
  cursor: number;
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
  readonly #paused = new Set<Sub>();
  /** Sequence of each retained ingested event, by id. */
  readonly #ingestedSeq = new Map<string, number>();
  /** The last event trimmed: a resume from it still has everything after it. */
  #lastTrimmed: { id: string; seq: number } | undefined;
  readonly #compareIngested: ((a: string, b: string) => number | undefined) | undefined;

  constructor(opts: MemoryEventBusOptions = {}) {
    this.#retentionMs = opts.retentionMs ?? 600_000;
    this.#maxEvents = Math.max(1, opts.maxEvents ?? 10_000);
    this.#maxBytes = Math.max(1, opts.maxBytes ?? 16 * 1024 * 1024);
    this.#now = opts.now ?? Date.now;
    this.#boot = bootId(this.#now());
    this.#compareIngested = opts.compareIngestedIds;
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
    this.#append({ event, json: JSON.stringify(event), seq, atMs, ingested: false });
  }

  /**
   * Appends an event that already has its id and time (a Redis Stream entry), and delivers it
   * like a published one. `remote`: another process published it. Its id must be unique.
   */
  ingest(event: PlaylineEvent, remote: boolean): void {
    const parsed = Date.parse(event.at);
    const atMs = Number.isFinite(parsed) ? parsed : this.#now();
    const seq = ++this.#seq;
    const r: Retained = { event, json: JSON.stringify(event), seq, atMs, ingested: true };
    if (remote) r.remote = true;
    this.#ingestedSeq.set(event.id, seq);
    this.#append(r);
  }

  #append(r: Retained): void {
    const { seq, atMs, event } = r;
    const json = r.json;
    this.#ring.push(r);
    this.#bytes += json.length;
    // An ingested event carries its publisher's time; the window is measured from this process's now.
    this.#trim(r.ingested ? this.#now() : atMs);
    for (const s of this.#subs) {
      if (!s.open || s.paused) continue;
      s.cursor = seq;
      if (matches(s.filter, event)) this.#deliver(s, r);
    }
  }

  subscribe(opts: SubscribeOptions): Subscription {
    const sub: Sub = { filter: opts.filter, onEvent: opts.onEvent, onOverrun: opts.onOverrun, open: true, paused: false, cursor: this.#seq };
    this.#subs.add(sub);
    if (opts.after !== undefined) {
      this.#trim(this.#now());
      const after = this.#resumePoint(opts.after);
      if (typeof after === 'string') {
        opts.onResync?.(after);
      } else {
        // Replay is synchronous: nothing can be published between the replay and going live.
        sub.cursor = after;
        this.#catchUp(sub);
      }
    }
    return {
      resume: () => {
        if (!sub.open || !sub.paused) return;
        sub.paused = false;
        this.#paused.delete(sub);
        this.#catchUp(sub);
      },
      close: () => this.#drop(sub),
    };
  }

  close(): void {
    for (const s of this.#subs) s.open = false;
    this.#subs.clear();
    this.#paused.clear();
  }

  /** Delivers the retained events after the subscriber's cursor, until it pauses or is live. */
  #catchUp(sub: Sub): void {
    const firstSeq = this.#ring[this.#head]?.seq ?? this.#seq + 1;
    if (sub.cursor + 1 < firstSeq) {
      this.#overrun(sub);
      return;
    }
    for (let i = this.#head + (sub.cursor + 1 - firstSeq); i < this.#ring.length; i++) {
      if (!sub.open || sub.paused) return;
      const r = this.#ring[i];
      if (r === undefined) continue;
      sub.cursor = r.seq;
      if (matches(sub.filter, r.event)) this.#deliver(sub, r);
    }
  }

  #deliver(s: Sub, r: BusEvent): void {
    let more: boolean | void = true;
    try {
      more = s.onEvent(r);
    } catch {
      // A subscriber's failure is its own; the others and the publisher go on.
    }
    if (more === false && s.open) {
      s.paused = true;
      this.#paused.add(s);
    }
  }

  #drop(sub: Sub): void {
    sub.open = false;
    this.#subs.delete(sub);
    this.#paused.delete(sub);
  }

  #overrun(sub: Sub): void {
    this.#drop(sub);
    try {
      sub.onOverrun?.();
    } catch {
      // its own failure
    }
  }

  /** The sequence number of `id` when what follows it is all retained, or why it cannot be resumed. */
  #resumePoint(id: string): number | ResyncReason {
    const ingested = this.#ingestedSeq.get(id) ?? (this.#lastTrimmed?.id === id ? this.#lastTrimmed.seq : undefined);
    if (ingested !== undefined) return ingested;
    if (this.#compareIngested !== undefined) {
      // An id of the ingested form that is no longer retained: too old when older than the oldest retained one.
      for (let i = this.#head; i < this.#ring.length; i++) {
        const r = this.#ring[i];
        if (r === undefined || !r.ingested) continue;
        const c = this.#compareIngested(id, r.event.id);
        if (c !== undefined && c < 0) return 'too_old';
        break;
      }
    }
    const dash = id.lastIndexOf('-');
    const seqText = id.slice(dash + 1);
    if (dash < 0 || id.slice(0, dash) !== this.#boot || !/^\d{1,15}$/.test(seqText)) return 'unknown_id';
    const seq = Number(seqText);
    if (seq < 1 || seq > this.#seq) return 'unknown_id';
    const first = this.#ring[this.#head];
    const firstSeq = first === undefined ? this.#seq + 1 : first.seq;
    // The id itself may have left the ring as long as nothing after it has.
    if (seq < firstSeq - 1) return 'too_old';
    return seq;
  }

  #trim(nowMs: number): void {
    const oldest = nowMs - this.#retentionMs;
    while (this.#head < this.#ring.length) {
      const r = this.#ring[this.#head];
      if (r === undefined) break;
      const count = this.#ring.length - this.#head;
      if (count <= this.#maxEvents && this.#bytes <= this.#maxBytes && r.atMs >= oldest) break;
      this.#bytes -= r.json.length;
      if (r.ingested) this.#ingestedSeq.delete(r.event.id);
      this.#lastTrimmed = { id: r.event.id, seq: r.seq };
      this.#head++;
    }
    // A paused subscriber whose next event has just been dropped can never be caught up.
    if (this.#paused.size > 0) {
      const firstSeq = this.#ring[this.#head]?.seq ?? this.#seq + 1;
      for (const s of this.#paused) if (s.cursor + 1 < firstSeq) this.#overrun(s);
    }
    // Compact now and then, so trimming stays O(1) amortised.
    if (this.#head > 1024 && this.#head * 2 > this.#ring.length) {
      this.#ring = this.#ring.slice(this.#head);
      this.#head = 0;
    }
  }
}
