/**
 * Pacing and failure detection for dialing.
 */

/** One dial as the pacer sees it: when it was issued, and when the carrier had answered it. */
export interface PacerTicket {
  issuedAt: number;
  answeredAt: number | undefined;
}

/**
 * Dial pacing that holds at the carrier, whatever the jitter between issuing
 * a request and its arrival (event-loop lag under load, connection set-up):
 *
 * - a token bucket with a burst of one: at most one dial per `1000 / rate` ms;
 * - a window: a dial goes only when the dial `rate` places before it was
 *   answered by the carrier at least 1000 ms ago. The carrier received that
 *   dial before it answered it, and receives this one after it is issued, so
 *   it never counts `rate + 1` dials within one second (Twilio's CPS).
 *
 * With a fast API the window costs nothing; with a slow one the rate drops
 * by about the request's round trip per `rate` dials. `pauseUntil` pushes
 * the next dial out (after a 20429).
 */
export class Pacer {
  #spacingMs = 0;
  #size = 1;
  #recent: PacerTicket[] = [];
  #last = Number.NEGATIVE_INFINITY;
  #pausedUntil = 0;

  constructor(ratePerSecond: number) {
    this.setRate(ratePerSecond);
  }

  setRate(ratePerSecond: number): void {
    this.#spacingMs = 1000 / ratePerSecond;
    this.#size = Math.max(1, Math.floor(ratePerSecond));
    if (this.#recent.length > this.#size) this.#recent = this.#recent.slice(-this.#size);
  }

  /** Earliest time (ms) the next dial may go; Infinity while the window waits for an answer. */
  nextAt(): number {
    let t = Math.max(this.#last + this.#spacingMs, this.#pausedUntil);
    if (this.#recent.length >= this.#size) {
      const oldest = this.#recent[this.#recent.length - this.#size];
      t = Math.max(t, oldest?.answeredAt === undefined ? Number.POSITIVE_INFINITY : oldest.answeredAt + 1000);
    }
    return t;
  }

  ready(now: number): boolean {
    return now >= this.nextAt();
  }

  /** Records a dial issued now; set its `answeredAt` when the carrier has answered it (or the request failed). */
  take(now: number): PacerTicket {
    const ticket: PacerTicket = { issuedAt: now, answeredAt: undefined };
    this.#last = now;
    this.#recent.push(ticket);
    if (this.#recent.length > this.#size) this.#recent.splice(0, this.#recent.length - this.#size);
    return ticket;
  }

  pauseUntil(t: number): void {
    this.#pausedUntil = Math.max(this.#pausedUntil, t);
  }
}

export interface BreakerSettings {
  /** Share of failed attempts (0–1) that trips the breaker. */
  threshold: number;
  /** Attempts in the window before the share counts. */
  minCalls: number;
  windowSeconds: number;
}

/** Trips when failed attempts reach a share of all attempts finished in a sliding window. */
export class FailureBreaker {
  readonly #events: Array<{ at: number; failed: boolean }> = [];

  constructor(private readonly settings: BreakerSettings) {}

  record(failed: boolean, now: number): void {
    this.#events.push({ at: now, failed });
    this.#trim(now);
  }

  /** The failure share when it is over the threshold with enough attempts, else undefined. */
  tripped(now: number): { failed: number; total: number } | undefined {
    this.#trim(now);
    const total = this.#events.length;
    if (total < this.settings.minCalls) return undefined;
    const failed = this.#events.reduce((n, e) => n + (e.failed ? 1 : 0), 0);
    return failed / total >= this.settings.threshold ? { failed, total } : undefined;
  }

  reset(): void {
    this.#events.length = 0;
  }

  #trim(now: number): void {
    const from = now - this.settings.windowSeconds * 1000;
    while (this.#events.length > 0 && (this.#events[0]?.at ?? 0) < from) this.#events.shift();
    // Bounded: a window never needs more than a few thousand entries.
    if (this.#events.length > 10_000) this.#events.splice(0, this.#events.length - 10_000);
  }
}
