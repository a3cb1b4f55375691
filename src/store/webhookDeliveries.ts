/**
 * The webhook deliveries table behind `src/outbound/webhooks.ts`: SQLite
 * ({@link SqliteWebhookDeliveryStore}) or Postgres (`src/store/postgres.ts`).
 *
 * Several processes may deliver from one table: a delivery is claimed
 * ({@link WebhookDeliveryStore.claimDue}) before it is POSTed, which pushes its
 * `next_attempt_at` to the end of a lease, so no other process picks it up
 * meanwhile; a process that dies mid-attempt leaves it to be retried once
 * the lease ends (delivery stays at-least-once).
 */
import type { Db } from './db.js';
import { gateOf } from './gate.js';

export type WebhookStatus = 'pending' | 'delivered' | 'failed';

export interface WebhookDeliveryRow {
  id: string;
  call_id: string | null;
  event: string;
  url: string;
  payload: string;
  status: WebhookStatus;
  attempts: number;
  next_attempt_at: number;
  last_status_code: number | null;
  last_error: string | null;
  created_at: number;
  delivered_at: number | null;
}

export interface WebhookDeliveryStore {
  insert(row: WebhookDeliveryRow): Promise<void>;
  get(id: string): Promise<WebhookDeliveryRow | undefined>;
  /** Newest first. */
  list(opts: { status?: WebhookStatus; callId?: string; limit: number }): Promise<WebhookDeliveryRow[]>;
  /**
   * Claims up to `limit` pending deliveries due at `now` (oldest due first), atomically: each
   * one's `next_attempt_at` becomes `leaseUntil`, so another process does not pick it up
   * before then. Returns the rows as they were before the claim.
   */
  claimDue(now: number, limit: number, leaseUntil: number): Promise<WebhookDeliveryRow[]>;
  /** When the next pending delivery is due (undefined when none is pending). */
  nextDueAt(): Promise<number | undefined>;
  delivered(id: string, attempts: number, code: number, at: number): Promise<void>;
  retryLater(id: string, attempts: number, next: number, code: number | null, error: string | null): Promise<void>;
  failed(id: string, attempts: number, code: number | null, error: string | null): Promise<void>;
  /** A failed delivery is pending again (attempts 0, due `now`, to `url`); false when it was not failed. */
  requeue(id: string, url: string, now: number): Promise<boolean>;
}

const text = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const int = (v: unknown): number | null => (typeof v === 'number' ? v : typeof v === 'bigint' || typeof v === 'string' ? Number(v) : null);

/** A database row as a {@link WebhookDeliveryRow} (checked field by field). */
export function toDeliveryRow(r: Record<string, unknown>): WebhookDeliveryRow {
  const status = r.status === 'delivered' || r.status === 'failed' ? r.status : 'pending';
  return {
    id: String(r.id),
    call_id: text(r.call_id),
    event: String(r.event),
    url: String(r.url),
    payload: String(r.payload),
    status,
    attempts: int(r.attempts) ?? 0,
    next_attempt_at: int(r.next_attempt_at) ?? 0,
    last_status_code: int(r.last_status_code),
    last_error: text(r.last_error),
    created_at: int(r.created_at) ?? 0,
    delivered_at: int(r.delivered_at),
  };
}

type Raw = Record<string, unknown>;

export class SqliteWebhookDeliveryStore implements WebhookDeliveryStore {
  readonly #db: Db;
  readonly #s;

  constructor(db: Db) {
    this.#db = db;
    this.#s = {
      insert: db.prepare(
        `INSERT INTO webhook_deliveries
           (id, call_id, event, url, payload, status, attempts, next_attempt_at, last_status_code, last_error, created_at, delivered_at)
         VALUES (@id, @call_id, @event, @url, @payload, @status, @attempts, @next_attempt_at, @last_status_code, @last_error, @created_at, @delivered_at)`,
      ),
      due: db.prepare(`SELECT * FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, created_at LIMIT ?`),
      lease: db.prepare(`UPDATE webhook_deliveries SET next_attempt_at = ? WHERE id = ? AND status = 'pending' AND next_attempt_at <= ?`),
      next: db.prepare(`SELECT MIN(next_attempt_at) AS t FROM webhook_deliveries WHERE status = 'pending'`),
      get: db.prepare(`SELECT * FROM webhook_deliveries WHERE id = ?`),
      delivered: db.prepare(
        `UPDATE webhook_deliveries SET status = 'delivered', attempts = ?, last_status_code = ?, last_error = NULL, delivered_at = ? WHERE id = ? AND status = 'pending'`,
      ),
      retryLater: db.prepare(
        `UPDATE webhook_deliveries SET attempts = ?, next_attempt_at = ?, last_status_code = ?, last_error = ? WHERE id = ? AND status = 'pending'`,
      ),
      failed: db.prepare(`UPDATE webhook_deliveries SET status = 'failed', attempts = ?, last_status_code = ?, last_error = ? WHERE id = ? AND status = 'pending'`),
      requeue: db.prepare(`UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?, url = ? WHERE id = ? AND status = 'failed'`),
    };
  }

  /** Runs `fn` once no transaction of another task is open (at once inside one's own). */
  #run<T>(fn: () => T): Promise<T> {
    return gateOf(this.#db).run(fn);
  }

  insert(row: WebhookDeliveryRow): Promise<void> {
    return this.#run(() => {
      this.#s.insert.run(row);
    });
  }

  get(id: string): Promise<WebhookDeliveryRow | undefined> {
    return this.#run(() => {
      const r = this.#s.get.get(id) as Raw | undefined;
      return r === undefined ? undefined : toDeliveryRow(r);
    });
  }

  list(opts: { status?: WebhookStatus; callId?: string; limit: number }): Promise<WebhookDeliveryRow[]> {
    return this.#run(() => {
      const where: string[] = [];
      const params: unknown[] = [];
      if (opts.status !== undefined) (where.push('status = ?'), params.push(opts.status));
      if (opts.callId !== undefined) (where.push('call_id = ?'), params.push(opts.callId));
      const sql = `SELECT * FROM webhook_deliveries ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at DESC, id DESC LIMIT ?`;
      return (this.#db.prepare(sql).all(...params, opts.limit) as Raw[]).map(toDeliveryRow);
    });
  }

  claimDue(now: number, limit: number, leaseUntil: number): Promise<WebhookDeliveryRow[]> {
    // One transaction (the file's write lock): no other process claims the same rows.
    return gateOf(this.#db).transaction(async () => {
      const rows = (this.#s.due.all(now, limit) as Raw[]).map(toDeliveryRow);
      return rows.filter((r) => this.#s.lease.run(leaseUntil, r.id, now).changes === 1);
    });
  }

  async nextDueAt(): Promise<number | undefined> {
    return this.#run(() => {
      const r = this.#s.next.get() as Raw | undefined;
      return typeof r?.t === 'number' ? r.t : undefined;
    });
  }

  delivered(id: string, attempts: number, code: number, at: number): Promise<void> {
    return this.#run(() => {
      this.#s.delivered.run(attempts, code, at, id);
    });
  }

  retryLater(id: string, attempts: number, next: number, code: number | null, error: string | null): Promise<void> {
    return this.#run(() => {
      this.#s.retryLater.run(attempts, next, code, error, id);
    });
  }

  failed(id: string, attempts: number, code: number | null, error: string | null): Promise<void> {
    return this.#run(() => {
      this.#s.failed.run(attempts, code, error, id);
    });
  }

  requeue(id: string, url: string, now: number): Promise<boolean> {
    return this.#run(() => {
      return this.#s.requeue.run(now, url, id).changes === 1;
    });
  }
}
