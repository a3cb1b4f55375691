/**
 * Pacing and failure detection for dialing.
 */

/**
 * A token bucket with a burst of one: at most one dial per `1000 / rate` ms,
 * measured from the dial actually made. So no one-second window ever holds
 * more than `rate` dials (Twilio's CPS counts calls created per second). A
 * `pauseUntil` pushes the next dial out (after a 20429).
 */
export class Pacer {
  #spacingMs: number;
  #last = Number.NEGATIVE_INFINITY;
  #pausedUntil = 0;

  constructor(ratePerSecond: number) {
    this.#spacingMs = Pacer.spacing(ratePerSecond);
  }

  /** A small margin over 1000/rate keeps request jitter from ever putting rate+1 dials in one second. */
  static spacing(ratePerSecond: number): number {
    return 1000 / ratePerSecond + 2;
  }

  setRate(ratePerSecond: number): void {
    this.#spacingMs = Pacer.spacing(ratePerSecond);
  }

  /** Earliest time (ms) the next dial may go. */
  nextAt(): number {
    return Math.max(this.#last + this.#spacingMs, this.#pausedUntil);
  }

  ready(now: number): boolean {
    return now >= this.nextAt();
  }

  take(now: number): void {
    this.#last = now;
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
