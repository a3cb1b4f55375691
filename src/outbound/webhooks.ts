/**
 * Post-call webhooks: durable, signed, retried deliveries of JSON events to
 * the operator's URL.
 *
 * Every event is first written to `webhook_deliveries` (status `pending`),
 * then POSTed by a small delivery loop. Rows survive restarts: whatever is
 * still pending when a dispatcher starts is delivered. Delivery is
 * at-least-once; receivers deduplicate on the `Playline-Delivery` header (the
 * same id on every attempt, also the body's `id`).
 *
 * Request:
 *   POST <url>
 *   content-type: application/json
 *   user-agent: Playline-Webhooks/1
 *   Playline-Event: <event>
 *   Playline-Delivery: <delivery id>
 *   Playline-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>
 *   body: {"id": "<delivery id>", "event": "<event>", "createdAt": "<ISO 8601>", "data": {...}}
 *
 * The body is fixed at enqueue time (byte-identical across retries); the
 * signature is recomputed at each attempt with a fresh timestamp. Without a
 * secret the header is left out (and a warning is logged once).
 *
 * Outcomes of an attempt:
 * - 2xx: `delivered`.
 * - 410 Gone: `failed` at once (the receiver asked us to stop).
 * - any other status (3xx included: redirects are not followed), a network
 *   error or a timeout: `attempts` + 1 and a retry after `backoffMs[attempts - 1]`
 *   (+ up to 10 % jitter); once every backoff step has been used, `failed`
 *   (dead letter, kept for inspection and `retry()`). With the default
 *   schedule that is 9 attempts over about 4.6 hours.
 *
 * Receivers verify with {@link verifyWebhookSignature} (or the same recipe in
 * any language): split the header on `,`, take `t` and the `v1` values,
 * reject a `t` more than 5 minutes from now, compute the HMAC over
 * `t + "." + rawBody` (the raw bytes, before any JSON parsing) and compare
 * in constant time.
 */
import { createHmac, randomBytes, timingSafeEqual } from 'node:crypto';
import type { Logger } from 'pino';
import type { WebhookDeliveryRow as Row, WebhookDeliveryStore, WebhookStatus } from '../store/webhookDeliveries.js';

export type { WebhookStatus } from '../store/webhookDeliveries.js';

export const SIGNATURE_HEADER = 'Playline-Signature';
export const EVENT_HEADER = 'Playline-Event';
export const DELIVERY_HEADER = 'Playline-Delivery';
export const WEBHOOK_USER_AGENT = 'Playline-Webhooks/1';

/** 1 s, 5 s, 30 s, 2 min, 10 min, 30 min, 1 h, 3 h: 9 attempts in all. */
export const DEFAULT_BACKOFF_MS: readonly number[] = [
  1_000, 5_000, 30_000, 120_000, 600_000, 1_800_000, 3_600_000, 10_800_000,
];

// ---------------------------------------------------------------------------
// Signatures

/** Hex HMAC-SHA256 of `${timestampSec}.${body}` under `secret`. */
export function signWebhook(secret: string, timestampSec: number, body: string | Uint8Array): string {
  const hmac = createHmac('sha256', secret);
  hmac.update(`${timestampSec}.`);
  hmac.update(body);
  return hmac.digest('hex');
}

/** The `Playline-Signature` header value: `t=<unix seconds>,v1=<hex>`. */
export function webhookSignatureHeader(secret: string, timestampSec: number, body: string | Uint8Array): string {
  return `t=${timestampSec},v1=${signWebhook(secret, timestampSec, body)}`;
}

export interface VerifyOptions {
  /** Largest accepted distance between `t` and now, either way (default 300 s). */
  toleranceSec?: number;
  /** Current time in unix seconds (default: the system clock). */
  nowSec?: number;
}

/**
 * Checks a `Playline-Signature` header against the raw request body.
 * True only if the header is well formed, its timestamp is within
 * `toleranceSec` of now, and one of its `v1` signatures matches (several
 * `v1` entries are accepted, for secret rotation). Constant-time compare.
 */
export function verifyWebhookSignature(
  secret: string,
  header: string | null | undefined,
  body: string | Uint8Array,
  opts: VerifyOptions = {},
): boolean {
  if (typeof header !== 'string' || header.length === 0 || header.length > 4096) return false;
  const toleranceSec = opts.toleranceSec ?? 300;
  const nowSec = opts.nowSec ?? Math.floor(Date.now() / 1000);
  let t: number | undefined;
  const candidates: string[] = [];
  for (const part of header.split(',')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    const key = part.slice(0, eq).trim();
    const value = part.slice(eq + 1).trim();
    if (key === 't') {
      if (t !== undefined || !/^\d{1,12}$/.test(value)) return false;
      t = Number(value);
    } else if (key === 'v1') {
      candidates.push(value);
    }
  }
  if (t === undefined || candidates.length === 0) return false;
  if (!Number.isFinite(nowSec) || Math.abs(nowSec - t) > toleranceSec) return false;
  const expected = Buffer.from(signWebhook(secret, t, body), 'hex');
  let ok = false;
  for (const c of candidates) {
    if (!/^[0-9a-fA-F]{64}$/.test(c)) continue;
    const given = Buffer.from(c, 'hex');
    // Both are 32 bytes here; check every candidate (no early exit).
    if (given.length === expected.length && timingSafeEqual(given, expected)) ok = true;
  }
  return ok;
}

// ---------------------------------------------------------------------------
// Deliveries

export interface WebhookDelivery {
  id: string;
  callId: string | null;
  event: string;
  url: string;
  status: WebhookStatus;
  /** Attempts made so far. */
  attempts: number;
  /** When the next attempt is due (ms since the epoch); meaningful while pending. */
  nextAttemptAt: number;
  lastStatusCode: number | null;
  lastError: string | null;
  createdAt: number;
  deliveredAt: number | null;
  /** The exact JSON body POSTed: `{ id, event, createdAt, data }`. */
  body: WebhookBody;
}

export interface WebhookBody {
  id: string;
  event: string;
  createdAt: string;
  data: unknown;
}

export interface WebhookDispatcherOptions {
  /** The deliveries table (SQLite or Postgres); several processes may share it. */
  store: WebhookDeliveryStore;
  /** Destination of new deliveries (and of requeued ones, see `retry`). */
  url: string;
  /** HMAC secret; without one, requests go unsigned (a warning is logged once). */
  secret?: string;
  log: Logger;
  fetchImpl?: typeof fetch;
  /** Clock in ms since the epoch (default Date.now). */
  now?: () => number;
  /** Delay before each retry; its length is the number of retries (default {@link DEFAULT_BACKOFF_MS}). */
  backoffMs?: readonly number[];
  /** Per-request timeout, response headers and body included (default 10 s). */
  timeoutMs?: number;
  /** Longest sleep of the loop between looks at the table (default 1 s). */
  pollMs?: number;
  /** Most requests in flight at once (default 4). */
  maxConcurrent?: number;
}

interface AttemptResult {
  statusCode: number | null;
  error: string | null;
}

const ID_ALPHABET = '0123456789abcdefghijklmnopqrstuv';

/** `whd_` + time in base 36 (sortable) + 10 random base-32 characters. */
function newDeliveryId(nowMs: number): string {
  let rand = '';
  for (const b of randomBytes(10)) rand += ID_ALPHABET[b & 31];
  return `whd_${Math.max(0, Math.floor(nowMs)).toString(36).padStart(9, '0')}${rand}`;
}

function truncate(s: string, max: number): string {
  return s.length <= max ? s : `${s.slice(0, max)}…`;
}

function describeError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = (err as { cause?: unknown }).cause;
  const causeMsg = cause instanceof Error ? cause.message : typeof cause === 'string' ? cause : '';
  return causeMsg && !err.message.includes(causeMsg) ? `${err.message}: ${causeMsg}` : err.message;
}

/** Reads at most `max` bytes of a response body as text, then drops the rest. */
async function readSnippet(res: Response, max: number): Promise<string> {
  if (!res.body) return '';
  const reader = res.body.getReader();
  const chunks: Uint8Array[] = [];
  let size = 0;
  try {
    while (size < max) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push(value);
      size += value.byteLength;
    }
  } catch {
    // Best effort: the status code is what matters.
  } finally {
    reader.cancel().catch(() => {});
  }
  return Buffer.concat(chunks).subarray(0, max).toString('utf8');
}

export class WebhookDispatcher {
  readonly #store: WebhookDeliveryStore;
  readonly #url: string;
  readonly #secret: string | undefined;
  readonly #log: Logger;
  readonly #fetch: typeof fetch;
  readonly #now: () => number;
  readonly #backoff: readonly number[];
  readonly #timeoutMs: number;
  readonly #pollMs: number;
  readonly #maxConcurrent: number;

  #running = false;
  #timer: NodeJS.Timeout | undefined;
  readonly #inflight = new Map<string, Promise<void>>();
  /** A look at the table in progress (one at a time). */
  #ticking: Promise<void> | undefined;
  #tickAgain = false;

  constructor(opts: WebhookDispatcherOptions) {
    this.#store = opts.store;
    this.#url = opts.url;
    this.#secret = opts.secret ? opts.secret : undefined;
    const bound = typeof opts.log.bindings === 'function' ? opts.log.bindings() : {};
    this.#log = bound['component'] === undefined ? opts.log.child({ component: 'webhooks' }) : opts.log;
    this.#fetch = opts.fetchImpl ?? fetch;
    this.#now = opts.now ?? (() => Date.now());
    this.#backoff = [...(opts.backoffMs ?? DEFAULT_BACKOFF_MS)].map((ms) => Math.max(0, ms));
    this.#timeoutMs = Math.max(1, opts.timeoutMs ?? 10_000);
    this.#pollMs = Math.max(1, opts.pollMs ?? 1_000);
    this.#maxConcurrent = Math.max(1, Math.floor(opts.maxConcurrent ?? 4));
    if (this.#secret === undefined) {
      this.#log.warn('no webhook secret configured: webhook requests are sent without a Playline-Signature header');
    }
  }

  /** Whether the delivery loop runs. */
  get running(): boolean {
    return this.#running;
  }

  /** Requests currently in flight. */
  get inFlight(): number {
    return this.#inflight.size;
  }

  /**
   * Records a delivery of `event` (body `{ id, event, createdAt, data: payload }`)
   * and, if the loop runs, starts delivering it. Returns the delivery id.
   */
  async enqueue(event: string, callId: string | null, payload: object): Promise<string> {
    const now = this.#now();
    const id = newDeliveryId(now);
    const body: WebhookBody = { id, event, createdAt: new Date(now).toISOString(), data: payload };
    await this.#store.insert({
      id,
      call_id: callId,
      event,
      url: this.#url,
      payload: JSON.stringify(body),
      status: 'pending',
      attempts: 0,
      next_attempt_at: now,
      last_status_code: null,
      last_error: null,
      created_at: now,
      delivered_at: null,
    });
    this.#kick();
    return id;
  }

  /** Starts the loop; deliveries already pending (e.g. from before a restart) are picked up. */
  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#kick();
  }

  /** Stops the loop and waits for the requests in flight (each bounded by `timeoutMs`). Leaves no timers. */
  async stop(): Promise<void> {
    this.#running = false;
    if (this.#timer !== undefined) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    while (this.#inflight.size > 0 || this.#ticking !== undefined) {
      await Promise.allSettled([...this.#inflight.values(), this.#ticking]);
    }
  }

  async get(id: string): Promise<WebhookDelivery | undefined> {
    const row = await this.#store.get(id);
    return row ? toDelivery(row) : undefined;
  }

  /** Newest first. `limit` is clamped to 1..500 (default 50). */
  async list(opts: { status?: WebhookStatus; callId?: string; limit?: number } = {}): Promise<WebhookDelivery[]> {
    const limit = Math.min(500, Math.max(1, Math.floor(opts.limit ?? 50)));
    return (await this.#store.list({ ...opts, limit })).map(toDelivery);
  }

  /**
   * Requeues a failed (dead-lettered) delivery: pending again, due now, with a
   * fresh backoff schedule (attempts reset to 0) and the currently configured
   * URL; body and delivery id unchanged. False when there is no such delivery
   * or it is not `failed` (use `get` to tell which).
   */
  async retry(id: string): Promise<boolean> {
    if (!(await this.#store.requeue(id, this.#url, this.#now()))) return false;
    this.#log.info({ deliveryId: id }, 'webhook delivery requeued');
    this.#kick();
    return true;
  }

  // -------------------------------------------------------------------------

  #kick(): void {
    this.#schedule(0);
  }

  #schedule(delayMs: number): void {
    if (!this.#running) return;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#tick(), delayMs);
  }

  #tick(): void {
    this.#timer = undefined;
    if (!this.#running) return;
    if (this.#ticking !== undefined) {
      this.#tickAgain = true;
      return;
    }
    this.#ticking = this.#look().finally(() => {
      this.#ticking = undefined;
      if (this.#tickAgain) {
        this.#tickAgain = false;
        this.#kick();
      }
    });
  }

  /** One look at the table: claims what is due (up to the free slots) and starts delivering it. */
  async #look(): Promise<void> {
    const free = this.#maxConcurrent - this.#inflight.size;
    const now = this.#now();
    if (free > 0) {
      let rows: Row[];
      try {
        // Claimed until the attempt is surely over (its timeout plus a margin): meanwhile no other process takes it.
        rows = await this.#store.claimDue(now, free, now + this.#timeoutMs + 30_000);
      } catch (err) {
        this.#log.error({ err }, 'webhook queue read failed');
        this.#schedule(this.#pollMs);
        return;
      }
      for (const row of rows) this.#startDelivery(row);
      if (rows.length >= free) return;
    }
    // A slot freeing up or an enqueue kicks the loop; otherwise wake up when the
    // next retry is due, and at least every pollMs.
    if (this.#timer === undefined) this.#schedule(await this.#untilNextDue(now));
  }

  async #untilNextDue(now: number): Promise<number> {
    try {
      const next = await this.#store.nextDueAt();
      if (next === undefined) return this.#pollMs;
      return Math.min(this.#pollMs, Math.max(1, next - now));
    } catch {
      return this.#pollMs;
    }
  }

  #startDelivery(row: Row): void {
    const p = this.#deliver(row)
      .catch((err: unknown) => {
        this.#log.error({ err, deliveryId: row.id }, 'webhook delivery bookkeeping failed');
      })
      .finally(() => {
        this.#inflight.delete(row.id);
        this.#kick();
      });
    this.#inflight.set(row.id, p);
  }

  async #deliver(row: Row): Promise<void> {
    const result = await this.#attempt(row);
    const attempts = row.attempts + 1;
    const ctx = { deliveryId: row.id, event: row.event, callId: row.call_id, attempt: attempts };
    const { statusCode, error } = result;
    if (statusCode !== null && statusCode >= 200 && statusCode < 300) {
      await this.#store.delivered(row.id, attempts, statusCode, this.#now());
      this.#log.info({ ...ctx, statusCode }, 'webhook delivered');
      return;
    }
    if (statusCode === 410) {
      await this.#store.failed(row.id, attempts, statusCode, error);
      this.#log.warn({ ...ctx, statusCode }, 'webhook receiver answered 410 Gone: delivery failed, not retried');
      return;
    }
    const step = this.#backoff[attempts - 1];
    if (step === undefined) {
      await this.#store.failed(row.id, attempts, statusCode, error);
      this.#log.error({ ...ctx, statusCode, error }, 'webhook delivery failed after its last attempt (dead letter)');
      return;
    }
    const jitter = Math.floor(step * 0.1 * Math.random());
    const next = this.#now() + step + jitter;
    await this.#store.retryLater(row.id, attempts, next, statusCode, error);
    this.#log.warn({ ...ctx, statusCode, error, retryInMs: step + jitter }, 'webhook attempt failed, will retry');
  }

  async #attempt(row: Row): Promise<AttemptResult> {
    const body = row.payload;
    const headers: Record<string, string> = {
      'content-type': 'application/json',
      'user-agent': WEBHOOK_USER_AGENT,
      [EVENT_HEADER]: row.event,
      [DELIVERY_HEADER]: row.id,
    };
    if (this.#secret !== undefined) {
      headers[SIGNATURE_HEADER] = webhookSignatureHeader(this.#secret, Math.floor(this.#now() / 1000), body);
    }
    const ac = new AbortController();
    const timer = setTimeout(() => ac.abort(), this.#timeoutMs);
    try {
      const res = await this.#fetch(row.url, {
        method: 'POST',
        headers,
        body,
        signal: ac.signal,
        redirect: 'manual',
      });
      if (res.status >= 200 && res.status < 300) {
        await res.body?.cancel().catch(() => {});
        return { statusCode: res.status, error: null };
      }
      const snippet = (await readSnippet(res, 512)).trim();
      return { statusCode: res.status, error: truncate(`HTTP ${res.status}${snippet ? `: ${snippet}` : ''}`, 500) };
    } catch (err) {
      const error = ac.signal.aborted ? `timed out after ${this.#timeoutMs} ms` : describeError(err);
      return { statusCode: null, error: truncate(error, 500) };
    } finally {
      clearTimeout(timer);
    }
  }
}

function toDelivery(row: Row): WebhookDelivery {
  let body: WebhookBody;
  try {
    body = JSON.parse(row.payload) as WebhookBody;
  } catch {
    body = { id: row.id, event: row.event, createdAt: new Date(row.created_at).toISOString(), data: null };
  }
  return {
    id: row.id,
    callId: row.call_id,
    event: row.event,
    url: row.url,
    status: row.status,
    attempts: row.attempts,
    nextAttemptAt: row.next_attempt_at,
    lastStatusCode: row.last_status_code,
    lastError: row.last_error,
    createdAt: row.created_at,
    deliveredAt: row.delivered_at,
    body,
  };
}
