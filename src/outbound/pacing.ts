/**
 * Pacing and failure detection for dialing.
 */

/**
 * Dial pacing: a token bucket with a burst of one (at most one dial per
 * `1000 / rate` ms), plus a sliding-window guard: never more than `rate`
 * dials within any `1000 + guardMs` ms, counted at the moment each dial is
 * issued. The guard absorbs jitter between issuing a request and its arrival
 * (event-loop lag, connection reuse), so the carrier never counts `rate + 1`
 * calls in one second (Twilio's CPS); it costs about `guardMs / 10` percent of
 * the rate. `pauseUntil` pushes the next dial out (after a 20429).
 */
export class Pacer {
  #spacingMs = 0;
  #window: number[] = [];
  #size = 1;
  #last = Number.NEGATIVE_INFINITY;
  #pausedUntil = 0;

  constructor(
    ratePerSecond: number,
    private readonly guardMs = 100,
  ) {
    this.setRate(ratePerSecond);
  }

  setRate(ratePerSecond: number): void {
    this.#spacingMs = 1000 / ratePerSecond;
    const size = Math.max(1, Math.floor(ratePerSecond));
    if (size !== this.#size) {
      this.#size = size;
      this.#window = this.#window.slice(-size);
    }
  }

  /** Earliest time (ms) the next dial may go. */
  nextAt(): number {
    let t = Math.max(this.#last + this.#spacingMs, this.#pausedUntil);
    if (this.#window.length >= this.#size) t = Math.max(t, (this.#window[this.#window.length - this.#size] ?? 0) + 1000 + this.guardMs);
    return t;
  }

  ready(now: number): boolean {
    return now >= this.nextAt();
  }

  take(now: number): void {
    this.#last = now;
    this.#window.push(now);
    if (this.#window.length > this.#size) this.#window.splice(0, this.#window.length - this.#size);
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
