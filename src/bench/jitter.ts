/**
 * Machine noise probe for the benchmark: how late a 20 ms timer fires in an otherwise
 * idle Node process (drift-corrected, like the simulator's frame clock), or, with
 * `--spin`, a busy loop that keeps one CPU fully loaded.
 *
 *   node dist/bench/jitter.js [--seconds S] [--spin]
 *
 * Prints one JSON line: `{"p50":…,"p99":…,"max":…}` in ms (nothing with --spin).
 */
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { LatencyHistogram } from './stats.js';

const { values } = parseArgs({
  options: { seconds: { type: 'string', default: '3' }, spin: { type: 'boolean', default: false } },
  strict: true,
});
const ms = Math.max(0.1, Math.min(60, Number(values.seconds) || 3)) * 1000;

if (values.spin) {
  const end = performance.now() + ms;
  let x = 0;
  while (performance.now() < end) x = (x + 1) % 1_000_003;
  process.exit(x < 0 ? 1 : 0);
} else {
  const h = new LatencyHistogram();
  const start = performance.now();
  let n = 1;
  const tick = (): void => {
    const now = performance.now();
    h.record(now - (start + n * 20));
    n++;
    if (now - start >= ms) {
      const s = h.summary();
      process.stdout.write(`${JSON.stringify({ p50: s.p50, p99: s.p99, max: s.max })}\n`);
      return;
    }
    setTimeout(tick, Math.max(0, start + n * 20 - performance.now()));
  };
  setTimeout(tick, 20);
}
