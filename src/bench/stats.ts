/**
 * Small statistics helpers for the benchmark: a fixed-size latency histogram
 * (constant memory, O(1) record), and a reader for Prometheus text histograms.
 */

/** Percentile summary of a latency distribution, in ms. */
export interface LatencySummary {
  count: number;
  mean: number;
  p50: number;
  p90: number;
  p99: number;
  p999: number;
  max: number;
}

const FINE_STEP = 0.01; // ms, up to FINE_LIMIT
const FINE_LIMIT = 100;
const COARSE_STEP = 1; // ms, up to COARSE_LIMIT
const COARSE_LIMIT = 60_000;
const FINE_BUCKETS = Math.round(FINE_LIMIT / FINE_STEP);
const COARSE_BUCKETS = Math.round((COARSE_LIMIT - FINE_LIMIT) / COARSE_STEP);

/**
 * Latency histogram in ms: 10 µs resolution up to 100 ms, 1 ms up to 60 s,
 * one overflow bucket above (the exact maximum is kept). Recording is an index
 * computation and an increment: cheap enough for every frame of every call.
 */
export class LatencyHistogram {
  readonly #fine = new Uint32Array(FINE_BUCKETS);
  readonly #coarse = new Uint32Array(COARSE_BUCKETS);
  #overflow = 0;
  #count = 0;
  #sum = 0;
  #max = 0;

  record(ms: number): void {
    if (!(ms >= 0)) ms = 0; // NaN and negative clock noise count as 0
    this.#count++;
    this.#sum += ms;
    if (ms > this.#max) this.#max = ms;
    if (ms < FINE_LIMIT) this.#fine[Math.floor(ms / FINE_STEP)]!++;
    else if (ms < COARSE_LIMIT) this.#coarse[Math.floor((ms - FINE_LIMIT) / COARSE_STEP)]!++;
    else this.#overflow++;
  }

  get count(): number {
    return this.#count;
  }

  /** Value at quantile q (0..1), nearest rank, bucket midpoint (the max for the top rank). */
  quantile(q: number): number {
    if (this.#count === 0) return 0;
    const rank = Math.max(1, Math.ceil(q * this.#count));
    if (rank >= this.#count) return this.#max;
    let seen = 0;
    for (let i = 0; i < FINE_BUCKETS; i++) {
      seen += this.#fine[i]!;
      if (seen >= rank) return Math.min(this.#max, (i + 0.5) * FINE_STEP);
    }
    for (let i = 0; i < COARSE_BUCKETS; i++) {
      seen += this.#coarse[i]!;
      if (seen >= rank) return Math.min(this.#max, FINE_LIMIT + (i + 0.5) * COARSE_STEP);
    }
    return this.#max;
  }

  summary(): LatencySummary {
    return {
      count: this.#count,
      mean: round3(this.#count === 0 ? 0 : this.#sum / this.#count),
      p50: round3(this.quantile(0.5)),
      p90: round3(this.quantile(0.9)),
      p99: round3(this.quantile(0.99)),
      p999: round3(this.quantile(0.999)),
      max: round3(this.#max),
    };
  }
}

export const round3 = (x: number): number => Math.round(x * 1000) / 1000;
export const round2 = (x: number): number => Math.round(x * 100) / 100;

/** Nearest-rank percentiles of a small array (ms), e.g. one value per call. */
export function summarize(values: number[]): LatencySummary {
  const h = new LatencyHistogram();
  for (const v of values) h.record(v);
  return h.summary();
}

// ---------------------------------------------------------------------------
// Prometheus text format
// ---------------------------------------------------------------------------

/** Sum of every sample of `name` (all label sets) whose labels contain `labelFilter`, or undefined if none. */
export function promValue(text: string, name: string, labelFilter = ''): number | undefined {
  let total: number | undefined;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== ' ' && rest[0] !== '{') continue;
    if (labelFilter !== '' && !rest.includes(labelFilter)) continue;
    const v = Number(rest.slice(rest.lastIndexOf(' ') + 1));
    if (Number.isFinite(v)) total = (total ?? 0) + v;
  }
  return total;
}

export interface PromHistogram {
  count: number;
  sum: number;
  /** Cumulative counts by upper bound (seconds), `+Inf` last. */
  buckets: Array<{ le: number; count: number }>;
}

/** Reads a Prometheus histogram (no other labels than `le`) from a scrape. */
export function parsePromHistogram(text: string, name: string): PromHistogram | undefined {
  const buckets: Array<{ le: number; count: number }> = [];
  let count: number | undefined;
  let sum: number | undefined;
  const bucketRe = new RegExp(`^${name}_bucket\\{(?:.*,)?le="([^"]+)"(?:,.*)?\\}\\s+(\\S+)`);
  for (const line of text.split('\n')) {
    const m = bucketRe.exec(line);
    if (m !== null) {
      const le = m[1] === '+Inf' ? Infinity : Number(m[1]);
      buckets.push({ le, count: Number(m[2]) });
      continue;
    }
    if (line.startsWith(`${name}_count `) || line.startsWith(`${name}_count{`)) count = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (line.startsWith(`${name}_sum `) || line.startsWith(`${name}_sum{`)) sum = Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  if (count === undefined || sum === undefined) return undefined;
  buckets.sort((a, b) => a.le - b.le);
  return { count, sum, buckets };
}

/**
 * Quantile estimate from cumulative buckets, like PromQL `histogram_quantile`:
 * linear interpolation inside the bucket; the lower bound of the first bucket is 0;
 * a rank in the `+Inf` bucket answers the highest finite bound.
 */
export function promHistogramQuantile(h: PromHistogram, q: number): number | undefined {
  if (h.count === 0 || h.buckets.length === 0) return undefined;
  const rank = q * h.count;
  let prevLe = 0;
  let prevCount = 0;
  for (const b of h.buckets) {
    if (b.count >= rank) {
      if (b.le === Infinity) return prevLe;
      const inBucket = b.count - prevCount;
      return inBucket === 0 ? b.le : prevLe + ((b.le - prevLe) * (rank - prevCount)) / inBucket;
    }
    prevLe = b.le;
    prevCount = b.count;
  }
  return prevLe;
}
