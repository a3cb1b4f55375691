/**
 * Admission control on event-loop delay. When the process is so busy that
 * timers run late, every live call suffers (audio arrives late, tokens and
 * start timeouts expire before their streams are processed). The guard
 * samples event-loop delay and, while its p99 over the last window exceeds the
 * limit, tells the session manager to refuse new calls, so the calls already
 * up keep their quality.
 */
import { monitorEventLoopDelay, type IntervalHistogram } from 'node:perf_hooks';

export class LoadGuard {
  readonly #limitMs: number;
  readonly #histogram: IntervalHistogram | undefined;
  readonly #timer: NodeJS.Timeout | undefined;
  #p99Ms = 0;

  /** `limitMs` 0 disables the guard. */
  constructor(limitMs: number, windowMs = 2000) {
    this.#limitMs = limitMs;
    if (limitMs <= 0) return;
    const h = monitorEventLoopDelay({ resolution: 10 });
    h.enable();
    this.#histogram = h;
    this.#timer = setInterval(() => {
      this.#p99Ms = h.count > 0 ? h.percentile(99) / 1e6 : 0;
      h.reset();
    }, windowMs);
    this.#timer.unref();
  }

  /** Event-loop delay p99, in ms: the worse of the last full window and the one in progress. */
  get delayP99Ms(): number {
    const h = this.#histogram;
    const live = h !== undefined && h.count > 0 ? h.percentile(99) / 1e6 : 0;
    return Math.max(this.#p99Ms, live);
  }

  /** True while new calls should be refused. */
  get overloaded(): boolean {
    return this.#limitMs > 0 && this.delayP99Ms > this.#limitMs;
  }

  dispose(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#histogram?.disable();
  }
}
