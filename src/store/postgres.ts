/**
 * The records store on Postgres (DATABASE_URL), through the `postgres`
 * driver (porsager): one connection pool per process, every statement
 * parameterized, transactions with `sql.begin`.
 *
 * Same meaning as the SQLite store (`calls.ts`, `campaigns.ts`,
 * `webhookDeliveries.ts`): times are BIGINT milliseconds since the epoch,
 * flags are SMALLINT 0/1, JSON is stored as its text (byte for byte what
 * was given). Several processes share the database: the claims are single
 * conditional statements (`UPDATE … WHERE state = … RETURNING`), and the
 * webhook pick-up locks the rows it takes (`FOR UPDATE SKIP LOCKED`).
 *
 * Migrations are numbered; they run at boot in one transaction holding a
 * Postgres advisory lock, so processes booting together apply each once.
 * The applied versions are rows of `playline_schema_migrations`.
 */
import postgres from 'postgres';
import {
  addInChunks,
  contactUpdateSql,
  parseJson,
  tally,
  toCampaign,
  toContact,
  toDnc,
  toResultRow,
  variableNames,
  type CampaignRow,
  type CampaignStatus,
  type CampaignStore,
  type ContactCondition,
  type ContactCounts,
  type ContactPatch,
  type ContactRow,
  type ContactState,
  type MergedContact,
  type NewContact,
  type ResultRow,
} from './campaigns.js';
import {
  conditionColumns,
  NEW_CALL_COLUMNS,
  newCallValues,
  patchColumns,
  toCallEvent,
  toCallRow,
  callListSql,
  toTurn,
  type CallCondition,
  type CallEvent,
  type CallListFilter,
  type CallPatch,
  type CallRow,
  type CallStore,
  type NewCall,
  type TranscriptTurnRow,
  type TxStores,
} from './calls.js';
import { newId } from './ids.js';
import type { Store } from './store.js';
import { toDeliveryRow, type WebhookDeliveryRow, type WebhookDeliveryStore, type WebhookStatus } from './webhookDeliveries.js';

type Raw = Record<string, unknown>;
type Sql = postgres.Sql | postgres.TransactionSql;
type Param = postgres.ParameterOrJSON<never>;

/** Migrations, in order. Never edit one that has shipped; add a new one. */
export const PG_MIGRATIONS: readonly string[] = [
  // 1: everything the SQLite schema has after its migration 4.
  `
  CREATE TABLE calls (
    id                   TEXT PRIMARY KEY,
    call_sid             TEXT UNIQUE,
    direction            TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound', 'web')),
    to_number            TEXT NOT NULL,
    from_number          TEXT NOT NULL,
    agent_id             TEXT NOT NULL,
    prompt               TEXT,
    custom_greeting      TEXT,
    metadata             TEXT,
    machine_detection    SMALLINT NOT NULL DEFAULT 0,
    voicemail_action     TEXT,
    voicemail_message    TEXT,
    campaign_id          TEXT,
    contact_id           TEXT,
    attempt              INTEGER,
    status               TEXT NOT NULL,
    outcome              TEXT,
    answered_by          TEXT,
    last_sequence        INTEGER,
    error_code           INTEGER,
    error_message        TEXT,
    hangup_requested     SMALLINT NOT NULL DEFAULT 0,
    created_at           BIGINT NOT NULL,
    claimed_at           BIGINT,
    dialed_at            BIGINT,
    answered_at          BIGINT,
    ended_at             BIGINT,
    duration_s           INTEGER,
    conversation_id      TEXT,
    end_reason           TEXT,
    session_ended_at     BIGINT,
    finalized_at         BIGINT,
    record               SMALLINT,
    recording_backend    TEXT,
    recording_status     TEXT,
    recording_sid        TEXT,
    recording_url        TEXT,
    recording_duration_s DOUBLE PRECISION,
    recording_started_at BIGINT
  );
  CREATE INDEX calls_status ON calls (status);
  CREATE INDEX calls_campaign ON calls (campaign_id, contact_id);
  CREATE INDEX calls_created ON calls (created_at);
  CREATE INDEX calls_campaign_created ON calls (campaign_id, created_at);
  CREATE INDEX calls_unfinished ON calls (id) WHERE finalized_at IS NULL;
  CREATE INDEX calls_queued ON calls (id) WHERE status = 'queued' AND campaign_id IS NULL;
  CREATE INDEX calls_recordings ON calls (recording_started_at) WHERE recording_backend IS NOT NULL;

  CREATE TABLE call_events (
    id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    call_id   TEXT NOT NULL,
    at        BIGINT NOT NULL,
    type      TEXT NOT NULL,
    status    TEXT,
    sequence  INTEGER,
    data      TEXT
  );
  CREATE INDEX call_events_call ON call_events (call_id, id);

  CREATE TABLE transcript_turns (
    call_id TEXT NOT NULL,
    source  TEXT NOT NULL CHECK (source IN ('live', 'playai')),
    seq     INTEGER NOT NULL,
    role    TEXT NOT NULL,
    text    TEXT NOT NULL,
    at      BIGINT NOT NULL,
    PRIMARY KEY (call_id, source, seq)
  );

  CREATE TABLE idempotency_keys (
    key          TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    call_id      TEXT NOT NULL,
    created_at   BIGINT NOT NULL
  );
  CREATE INDEX idempotency_created ON idempotency_keys (created_at);

  CREATE TABLE campaigns (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    status       TEXT NOT NULL,
    settings     TEXT NOT NULL,
    pause_reason TEXT,
    last_error   TEXT,
    created_at   BIGINT NOT NULL,
    updated_at   BIGINT NOT NULL,
    started_at   BIGINT,
    completed_at BIGINT
  );
  CREATE INDEX campaigns_status ON campaigns (status, id);

  CREATE TABLE contacts (
    seq             BIGINT GENERATED ALWAYS AS IDENTITY,
    id              TEXT PRIMARY KEY,
    campaign_id     TEXT NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    line            INTEGER,
    phone           TEXT NOT NULL,
    variables       TEXT NOT NULL DEFAULT '{}',
    timezone        TEXT,
    state           TEXT NOT NULL,
    outcome         TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL DEFAULT 0,
    last_call_id    TEXT,
    last_error      TEXT,
    merged_lines    TEXT,
    updated_at      BIGINT NOT NULL,
    UNIQUE (campaign_id, phone)
  );
  CREATE INDEX contacts_due ON contacts (campaign_id, state, next_attempt_at);
  CREATE INDEX contacts_counts ON contacts (campaign_id, state, outcome, attempts);
  CREATE INDEX contacts_campaign_seq ON contacts (campaign_id, seq);

  CREATE TABLE dnc (
    phone      TEXT PRIMARY KEY,
    reason     TEXT,
    created_at BIGINT NOT NULL
  );

  CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    call_id          TEXT,
    event            TEXT NOT NULL,
    url              TEXT NOT NULL,
    payload          TEXT NOT NULL,
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    last_status_code INTEGER,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    delivered_at     BIGINT
  );
  CREATE INDEX webhook_due ON webhook_deliveries (status, next_attempt_at);
  CREATE INDEX webhook_call ON webhook_deliveries (call_id);
  `,
];

/** The advisory lock key the migrations hold ("playline" in ASCII, as a 64-bit number). */
const MIGRATION_LOCK = 0x706c61796c696e65n;

/** A schema newer than this code: the message says to upgrade Playline. */
export class SchemaTooNewError extends Error {
  override name = 'SchemaTooNewError';
}

/** Rewrites `?` placeholders as `$1…$n` (the SQL here has no `?` in literals). */
function numbered(text: string): string {
  let n = 0;
  return text.replace(/\?/g, () => `$${++n}`);
}

async function q(sql: Sql, text: string, values: readonly unknown[] = []): Promise<Raw[]> {
  // Values are strings, numbers and nulls built here (booleans are stored as 0/1).
  const rows = await sql.unsafe(numbered(text), values as Param[]);
  return [...rows];
}

async function one(sql: Sql, text: string, values: readonly unknown[] = []): Promise<Raw | undefined> {
  return (await q(sql, text, values))[0];
}

async function changed(sql: Sql, text: string, values: readonly unknown[] = []): Promise<number> {
  const rows = await sql.unsafe(numbered(text), values as Param[]);
  return rows.count;
}

/** Applies the migrations the database has not seen yet, under an advisory lock, in one transaction. Returns how many ran. */
export async function migratePostgres(sql: postgres.Sql): Promise<number> {
  return sql.begin(async (tx) => {
    await tx`SELECT pg_advisory_xact_lock(${MIGRATION_LOCK.toString()}::bigint)`;
    await tx`CREATE TABLE IF NOT EXISTS playline_schema_migrations (version INTEGER PRIMARY KEY, applied_at BIGINT NOT NULL)`;
    const [row] = await tx`SELECT COALESCE(MAX(version), 0)::int AS v FROM playline_schema_migrations`;
    const current = Number(row?.v ?? 0);
    if (current > PG_MIGRATIONS.length) {
      throw new SchemaTooNewError(`database schema version ${current} is newer than this Playline (${PG_MIGRATIONS.length}); upgrade Playline`);
    }
    for (let v = current; v < PG_MIGRATIONS.length; v++) {
      const text = PG_MIGRATIONS[v];
      if (text === undefined) break;
      await tx.unsafe(text);
      await tx`INSERT INTO playline_schema_migrations (version, applied_at) VALUES (${v + 1}, ${Date.now()})`;
    }
    return PG_MIGRATIONS.length - current;
  });
}

export interface PostgresStoreOptions {
  /** Pool size (default 10). */
  max?: number;
  /** Seconds to wait for a connection (default 10). */
  connectTimeoutS?: number;
}

/**
 * Connects to `url`, checks it answers, and brings its schema up to date. Throws an error naming
 * DATABASE_URL (without the password) when the server cannot be reached.
 */
export async function openPostgresStore(url: string, opts: PostgresStoreOptions = {}): Promise<Store> {
  const sql = postgres(url, {
    max: opts.max ?? 10,
    connect_timeout: opts.connectTimeoutS ?? 10,
    onnotice: () => {},
    // BIGINT (times in ms, counts) as JS numbers: every value here is far below 2^53.
    types: { bigint: { to: 20, from: [20], serialize: (x: number) => String(x), parse: (x: string) => Number(x) } },
  });
  try {
    await sql`SELECT 1`;
    await migratePostgres(sql);
  } catch (err) {
    await sql.end({ timeout: 1 }).catch(() => undefined);
    if (err instanceof SchemaTooNewError) throw err;
    throw new Error(`DATABASE_URL ${redactUrl(url)}: cannot use the database (${err instanceof Error ? err.message : String(err)}): check that Postgres runs there and accepts these credentials`);
  }
  return postgresStore(sql);
}

/** The URL with its password replaced by `***` (for logs and errors). */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password !== '') u.password = '***';
    return u.toString();
  } catch {
    return 'postgres://…';
  }
}

/** The store on an open pool (already migrated). `close` ends the pool. */
export function postgresStore(sql: postgres.Sql): Store {
  let closing: Promise<void> | undefined;
  return {
    backend: 'postgres',
    calls: new PgCallStore(sql, sql),
    campaigns: new PgCampaignStore(sql, sql),
    webhooks: new PgWebhookDeliveryStore(sql),
    close() {
      closing ??= sql.end({ timeout: 5 });
      return closing;
    },
  };
}

export class PgCallStore implements CallStore {
  readonly #sql: Sql;
  /** The pool (to begin transactions); the same as #sql outside one. */
  readonly #pool: postgres.Sql;
  readonly #inTx: boolean;

  constructor(sql: Sql, pool: postgres.Sql) {
    this.#sql = sql;
    this.#pool = pool;
    this.#inTx = sql !== pool;
  }

  async transaction<T>(fn: (tx: TxStores) => Promise<T>): Promise<T> {
    if (this.#inTx) return fn({ calls: this, campaigns: new PgCampaignStore(this.#sql, this.#pool) });
    const out = await this.#pool.begin((tx) => fn({ calls: new PgCallStore(tx, this.#pool), campaigns: new PgCampaignStore(tx, this.#pool) }));
    // `begin` types its result as possibly a list of results; `fn` returns one value.
    return out as T;
  }

  async insert(c: NewCall, now = Date.now()): Promise<CallRow> {
    const id = c.id ?? newId('call', now);
    const values = newCallValues(c, id, now);
    const cols = NEW_CALL_COLUMNS.split(',').length;
    const run = async (sql: Sql): Promise<CallRow> => {
      const r = await one(
        sql,
        `INSERT INTO calls (${NEW_CALL_COLUMNS}, record) VALUES (${Array.from({ length: cols }, () => '?').join(', ')}, ?) RETURNING *`,
        [...values, c.record === undefined ? null : c.record ? 1 : 0],
      );
      if (r === undefined) throw new Error(`call ${id} vanished after insert`);
      await q(sql, 'INSERT INTO call_events (call_id, at, type, status, sequence, data) VALUES (?, ?, ?, ?, ?, ?)', [id, now, 'created', c.status, null, null]);
      return toCallRow(r);
    };
    if (this.#inTx) return run(this.#sql);
    return (await this.#pool.begin((tx) => run(tx))) as CallRow;
  }

  async get(id: string): Promise<CallRow | undefined> {
    const r = await one(this.#sql, 'SELECT * FROM calls WHERE id = ?', [id]);
    return r === undefined ? undefined : toCallRow(r);
  }

  async getBySid(callSid: string): Promise<CallRow | undefined> {
    const r = await one(this.#sql, 'SELECT * FROM calls WHERE call_sid = ?', [callSid]);
    return r === undefined ? undefined : toCallRow(r);
  }

  async update(id: string, patch: CallPatch, where?: CallCondition): Promise<CallRow | undefined> {
    const sets = patchColumns(patch);
    const cond = conditionColumns(where);
    const tail = cond.sql.map((s) => ` AND ${s}`).join('');
    const r =
      sets.length === 0
        ? await one(this.#sql, `SELECT * FROM calls WHERE id = ?${tail}`, [id, ...cond.values])
        : await one(this.#sql, `UPDATE calls SET ${sets.map(([c]) => `${c} = ?`).join(', ')} WHERE id = ?${tail} RETURNING *`, [...sets.map(([, v]) => v), id, ...cond.values]);
    return r === undefined ? undefined : toCallRow(r);
  }

  async event(callId: string, type: string, status: string | null, sequence: number | null, data: Record<string, unknown> | null, at = Date.now()): Promise<void> {
    await q(this.#sql, 'INSERT INTO call_events (call_id, at, type, status, sequence, data) VALUES (?, ?, ?, ?, ?, ?)', [callId, at, type, status, sequence, data === null ? null : JSON.stringify(data)]);
  }

  async hasEvent(callId: string, type: string): Promise<boolean> {
    return (await one(this.#sql, 'SELECT 1 AS x FROM call_events WHERE call_id = ? AND type = ? LIMIT 1', [callId, type])) !== undefined;
  }

  async events(callId: string): Promise<CallEvent[]> {
    return (await q(this.#sql, 'SELECT * FROM call_events WHERE call_id = ? ORDER BY id', [callId])).map(toCallEvent);
  }

  async appendTranscriptTurn(callId: string, source: 'live' | 'playai', seq: number, turn: { role: string; text: string; at: number }): Promise<void> {
    await q(
      this.#sql,
      `INSERT INTO transcript_turns (call_id, source, seq, role, text, at) VALUES (?, ?, ?, ?, ?, ?)
       ON CONFLICT (call_id, source, seq) DO UPDATE SET role = EXCLUDED.role, text = EXCLUDED.text, at = EXCLUDED.at`,
      [callId, source, seq, turn.role, turn.text, turn.at],
    );
  }

  async saveTranscript(callId: string, source: 'live' | 'playai', turns: Array<{ role: string; text: string; at: number }>): Promise<void> {
    await this.transaction(async ({ calls }) => {
      for (const [i, t] of turns.entries()) await calls.appendTranscriptTurn(callId, source, i, t);
    });
  }

  async transcript(callId: string, source: 'live' | 'playai'): Promise<TranscriptTurnRow[]> {
    return (await q(this.#sql, 'SELECT * FROM transcript_turns WHERE call_id = ? AND source = ? ORDER BY seq', [callId, source])).map((r) => toTurn(source, r));
  }

  async list(f: CallListFilter): Promise<CallRow[]> {
    const { text, values } = callListSql(f);
    return (await q(this.#sql, text, values)).map(toCallRow);
  }


  async listByContact(campaignId: string, contactId: string): Promise<CallRow[]> {
    return (await q(this.#sql, 'SELECT * FROM calls WHERE campaign_id = ? AND contact_id = ? ORDER BY id', [campaignId, contactId])).map(toCallRow);
  }

  async countDialedSince(campaignId: string, since: number): Promise<number> {
    const r = await one(this.#sql, "SELECT COUNT(*) AS n FROM calls WHERE campaign_id = ? AND created_at >= ? AND status != 'not-dialed'", [campaignId, since]);
    return Number(r?.n ?? 0);
  }

  async unfinished(): Promise<CallRow[]> {
    return (await q(this.#sql, 'SELECT * FROM calls WHERE finalized_at IS NULL ORDER BY id')).map(toCallRow);
  }

  async clearRecording(id: string): Promise<void> {
    await q(this.#sql, "UPDATE calls SET recording_status = 'deleted', recording_sid = NULL, recording_url = NULL, recording_duration_s = NULL WHERE id = ?", [id]);
  }

  async recordingsBefore(before: number, limit: number): Promise<CallRow[]> {
    return (
      await q(
        this.#sql,
        "SELECT * FROM calls WHERE recording_backend IS NOT NULL AND recording_started_at < ? AND (recording_status IS NULL OR recording_status NOT IN ('deleted', 'deleting')) ORDER BY recording_started_at LIMIT ?",
        [before, limit],
      )
    ).map(toCallRow);
  }

  async claimRecordingDeletion(id: string, expected: string | null): Promise<boolean> {
    return (await changed(this.#sql, "UPDATE calls SET recording_status = 'deleting' WHERE id = ? AND recording_status IS NOT DISTINCT FROM ?::text", [id, expected])) === 1;
  }

  async queued(limit: number): Promise<CallRow[]> {
    return (await q(this.#sql, "SELECT * FROM calls WHERE status = 'queued' AND campaign_id IS NULL ORDER BY id LIMIT ?", [limit])).map(toCallRow);
  }

  async idempotency(key: string): Promise<{ requestHash: string; callId: string } | undefined> {
    const r = await one(this.#sql, 'SELECT * FROM idempotency_keys WHERE key = ?', [key]);
    return r === undefined ? undefined : { requestHash: String(r.request_hash), callId: String(r.call_id) };
  }

  async putIdempotency(key: string, requestHash: string, callId: string, now = Date.now()): Promise<boolean> {
    return (await changed(this.#sql, 'INSERT INTO idempotency_keys (key, request_hash, call_id, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO NOTHING', [key, requestHash, callId, now])) === 1;
  }

  async pruneIdempotency(olderThanMs: number, now = Date.now()): Promise<number> {
    return changed(this.#sql, 'DELETE FROM idempotency_keys WHERE created_at < ?', [now - olderThanMs]);
  }
}

export class PgCampaignStore implements CampaignStore {
  readonly #sql: Sql;
  readonly #pool: postgres.Sql;
  readonly #inTx: boolean;

  constructor(sql: Sql, pool: postgres.Sql) {
    this.#sql = sql;
    this.#pool = pool;
    this.#inTx = sql !== pool;
  }

  async create<S>(name: string, settings: S, now = Date.now()): Promise<CampaignRow<S>> {
    const id = newId('cmp', now);
    const r = await one(this.#sql, 'INSERT INTO campaigns (id, name, status, settings, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING *', [id, name, 'draft', JSON.stringify(settings), now, now]);
    if (r === undefined) throw new Error(`campaign ${id} vanished after insert`);
    return toCampaign<S>(r);
  }

  async get<S>(id: string): Promise<CampaignRow<S> | undefined> {
    const r = await one(this.#sql, 'SELECT * FROM campaigns WHERE id = ?', [id]);
    return r === undefined ? undefined : toCampaign<S>(r);
  }

  async list<S>(opts: { status?: CampaignStatus; before?: string; limit: number }): Promise<Array<CampaignRow<S>>> {
    const where: string[] = [];
    const values: unknown[] = [];
    if (opts.status !== undefined) (where.push('status = ?'), values.push(opts.status));
    if (opts.before !== undefined) (where.push('id < ?'), values.push(opts.before));
    const text = `SELECT * FROM campaigns ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ?`;
    return (await q(this.#sql, text, [...values, opts.limit])).map((r) => toCampaign<S>(r));
  }

  async byStatus<S>(status: CampaignStatus): Promise<Array<CampaignRow<S>>> {
    return (await q(this.#sql, 'SELECT * FROM campaigns WHERE status = ? ORDER BY id', [status])).map((r) => toCampaign<S>(r));
  }

  async setStatus(id: string, status: CampaignStatus, extra: { pauseReason?: string | null; lastError?: string | null } = {}, now = Date.now()): Promise<void> {
    const sets = ['status = ?', 'updated_at = ?'];
    const values: unknown[] = [status, now];
    if (status === 'running') sets.push('started_at = COALESCE(started_at, ?::bigint)'), values.push(now);
    if (status === 'completed' || status === 'canceled') sets.push('completed_at = ?'), values.push(now);
    if (extra.pauseReason !== undefined) sets.push('pause_reason = ?'), values.push(extra.pauseReason);
    if (extra.lastError !== undefined) sets.push('last_error = ?'), values.push(extra.lastError);
    await q(this.#sql, `UPDATE campaigns SET ${sets.join(', ')} WHERE id = ?`, [...values, id]);
  }

  async addContacts(campaignId: string, contacts: readonly NewContact[], now = Date.now()): Promise<{ added: number; merged: MergedContact[] }> {
    const run = async (sql: Sql): Promise<{ added: number; merged: MergedContact[] }> => {
      // One statement for the chunk (a number's first line in it); a number already in the
      // campaign, or repeated in the chunk, is merged into its contact after, in file order.
      const firsts = new Map<string, NewContact>();
      for (const c of contacts) if (!firsts.has(c.phone)) firsts.set(c.phone, c);
      const rows = [...firsts.values()].map((c) => ({
        id: newId('ct', now),
        line: c.line ?? null,
        phone: c.phone,
        variables: JSON.stringify(c.variables),
        tz: c.timezone ?? null,
        merged: JSON.stringify(c.mergedLines ?? []),
      }));
      const inserted = new Set(
        (
          await q(
            sql,
            `INSERT INTO contacts (id, campaign_id, line, phone, variables, timezone, state, merged_lines, updated_at)
             SELECT t.id, ?, t.line, t.phone, t.variables, t.tz, 'pending', t.merged, ?
             FROM jsonb_to_recordset(CAST(?::text AS jsonb)) AS t(id TEXT, line INTEGER, phone TEXT, variables TEXT, tz TEXT, merged TEXT)
             ON CONFLICT (campaign_id, phone) DO NOTHING RETURNING phone`,
            [campaignId, now, JSON.stringify(rows)],
          )
        ).map((r) => String(r.phone)),
      );
      const merged: MergedContact[] = [];
      let added = 0;
      for (const c of contacts) {
        if (firsts.get(c.phone) === c && inserted.has(c.phone)) {
          added++;
          continue;
        }
        const prior = await one(sql, 'SELECT id, merged_lines FROM contacts WHERE campaign_id = ? AND phone = ? FOR UPDATE', [campaignId, c.phone]);
        if (prior === undefined) continue;
        const lines = parseJson<number[]>(prior.merged_lines, []);
        if (c.line !== undefined) lines.push(c.line);
        await q(sql, 'UPDATE contacts SET merged_lines = ? WHERE id = ?', [JSON.stringify(lines), String(prior.id)]);
        merged.push({ line: c.line ?? null, phone: c.phone, contactId: String(prior.id) });
      }
      await q(sql, 'UPDATE campaigns SET updated_at = ? WHERE id = ?', [now, campaignId]);
      return { added, merged };
    };
    if (this.#inTx) return run(this.#sql);
    return (await this.#pool.begin((tx) => run(tx))) as { added: number; merged: MergedContact[] };
  }

  addContactsInChunks(
    campaignId: string,
    contacts: readonly NewContact[],
    chunkSize = 500,
    stillOpen: () => boolean | Promise<boolean> = () => true,
  ): Promise<{ added: number; merged: MergedContact[]; stopped: boolean }> {
    return addInChunks((chunk) => this.addContacts(campaignId, chunk), contacts, chunkSize, stillOpen);
  }

  async delete(id: string): Promise<boolean> {
    return (await changed(this.#sql, 'DELETE FROM campaigns WHERE id = ?', [id])) === 1;
  }

  async contact(id: string): Promise<ContactRow | undefined> {
    const r = await one(this.#sql, 'SELECT * FROM contacts WHERE id = ?', [id]);
    return r === undefined ? undefined : toContact(r);
  }

  async due(campaignId: string, now: number, limit: number): Promise<ContactRow[]> {
    return (
      await q(this.#sql, "SELECT * FROM contacts WHERE campaign_id = ? AND state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, line NULLS FIRST, id LIMIT ?", [campaignId, now, limit])
    ).map(toContact);
  }

  async nextDue(campaignId: string): Promise<number | undefined> {
    const r = await one(this.#sql, "SELECT MIN(next_attempt_at) AS t FROM contacts WHERE campaign_id = ? AND state = 'pending'", [campaignId]);
    return typeof r?.t === 'number' ? r.t : undefined;
  }

  async updateContact(id: string, patch: ContactPatch, now = Date.now(), where?: ContactCondition): Promise<boolean> {
    const { text, values } = contactUpdateSql(id, patch, now, where);
    return (await changed(this.#sql, text, values)) === 1;
  }


  async contacts(campaignId: string, opts: { state?: ContactState; outcome?: string; after?: string; limit: number }): Promise<ContactRow[]> {
    const where = ['campaign_id = ?'];
    const values: unknown[] = [campaignId];
    if (opts.state !== undefined) (where.push('state = ?'), values.push(opts.state));
    if (opts.outcome !== undefined) (where.push('outcome = ?'), values.push(opts.outcome));
    if (opts.after !== undefined) (where.push('id > ?'), values.push(opts.after));
    return (await q(this.#sql, `SELECT * FROM contacts WHERE ${where.join(' AND ')} ORDER BY id LIMIT ?`, [...values, opts.limit])).map(toContact);
  }

  async resultsPage(campaignId: string, afterRowid: number, limit: number): Promise<ResultRow[]> {
    const rows = await q(
      this.#sql,
      `SELECT c.seq AS rid, c.*, l.status AS l_status, l.answered_by AS l_answered_by, l.duration_s AS l_duration_s
       FROM contacts c LEFT JOIN calls l ON l.id = c.last_call_id
       WHERE c.campaign_id = ? AND c.seq > ? ORDER BY c.seq LIMIT ?`,
      [campaignId, afterRowid, limit],
    );
    return rows.map(toResultRow);
  }

  async variableNamesPage(campaignId: string, afterRowid: number, limit: number): Promise<{ names: Set<string>; lastRowid: number | undefined }> {
    return variableNames(await q(this.#sql, 'SELECT seq AS rid, variables FROM contacts WHERE campaign_id = ? AND seq > ? ORDER BY seq LIMIT ?', [campaignId, afterRowid, limit]));
  }

  async counts(campaignId: string): Promise<ContactCounts> {
    return tally(await q(this.#sql, 'SELECT state, outcome, COUNT(*) AS n, SUM(attempts) AS a FROM contacts WHERE campaign_id = ? GROUP BY state, outcome', [campaignId]));
  }

  async finishAll(campaignId: string, outcome: string, now = Date.now()): Promise<number> {
    return changed(this.#sql, "UPDATE contacts SET state = 'done', outcome = ?, updated_at = ? WHERE campaign_id = ? AND state = 'pending'", [outcome, now, campaignId]);
  }

  async dncHas(phone: string): Promise<boolean> {
    return (await one(this.#sql, 'SELECT 1 AS x FROM dnc WHERE phone = ?', [phone])) !== undefined;
  }

  async dncAdd(phone: string, reason: string | null, now = Date.now()): Promise<boolean> {
    return (await changed(this.#sql, 'INSERT INTO dnc (phone, reason, created_at) VALUES (?, ?, ?) ON CONFLICT (phone) DO NOTHING', [phone, reason, now])) === 1;
  }

  async dncRemove(phone: string): Promise<boolean> {
    return (await changed(this.#sql, 'DELETE FROM dnc WHERE phone = ?', [phone])) === 1;
  }

  async dncList(opts: { after?: string; limit: number }): Promise<Array<{ phone: string; reason: string | null; createdAt: number }>> {
    const rows =
      opts.after === undefined
        ? await q(this.#sql, 'SELECT * FROM dnc ORDER BY phone LIMIT ?', [opts.limit])
        : await q(this.#sql, 'SELECT * FROM dnc WHERE phone > ? ORDER BY phone LIMIT ?', [opts.after, opts.limit]);
    return rows.map(toDnc);
  }
}

export class PgWebhookDeliveryStore implements WebhookDeliveryStore {
  readonly #sql: postgres.Sql;

  constructor(sql: postgres.Sql) {
    this.#sql = sql;
  }

  async insert(r: WebhookDeliveryRow): Promise<void> {
    await q(
      this.#sql,
      `INSERT INTO webhook_deliveries (id, call_id, event, url, payload, status, attempts, next_attempt_at, last_status_code, last_error, created_at, delivered_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
      [r.id, r.call_id, r.event, r.url, r.payload, r.status, r.attempts, r.next_attempt_at, r.last_status_code, r.last_error, r.created_at, r.delivered_at],
    );
  }

  async get(id: string): Promise<WebhookDeliveryRow | undefined> {
    const r = await one(this.#sql, 'SELECT * FROM webhook_deliveries WHERE id = ?', [id]);
    return r === undefined ? undefined : toDeliveryRow(r);
  }

  async list(opts: { status?: WebhookStatus; callId?: string; limit: number }): Promise<WebhookDeliveryRow[]> {
    const where: string[] = [];
    const values: unknown[] = [];
    if (opts.status !== undefined) (where.push('status = ?'), values.push(opts.status));
    if (opts.callId !== undefined) (where.push('call_id = ?'), values.push(opts.callId));
    const text = `SELECT * FROM webhook_deliveries ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY created_at DESC, id DESC LIMIT ?`;
    return (await q(this.#sql, text, [...values, opts.limit])).map(toDeliveryRow);
  }

  async claimDue(now: number, limit: number, leaseUntil: number): Promise<WebhookDeliveryRow[]> {
    // Rows another process is claiming right now are skipped, not waited for.
    const rows = await q(
      this.#sql,
      `UPDATE webhook_deliveries w SET next_attempt_at = ? FROM (
         SELECT id, next_attempt_at AS prev FROM webhook_deliveries WHERE status = 'pending' AND next_attempt_at <= ?
         ORDER BY next_attempt_at, created_at LIMIT ? FOR UPDATE SKIP LOCKED
       ) p WHERE w.id = p.id RETURNING w.*, p.prev`,
      [leaseUntil, now, limit],
    );
    return rows
      .map((r) => ({ ...toDeliveryRow(r), next_attempt_at: Number(r.prev) }))
      .sort((a, b) => a.next_attempt_at - b.next_attempt_at || a.created_at - b.created_at);
  }

  async nextDueAt(): Promise<number | undefined> {
    const r = await one(this.#sql, "SELECT MIN(next_attempt_at) AS t FROM webhook_deliveries WHERE status = 'pending'");
    return typeof r?.t === 'number' ? r.t : undefined;
  }

  async delivered(id: string, attempts: number, code: number, at: number): Promise<void> {
    await q(this.#sql, "UPDATE webhook_deliveries SET status = 'delivered', attempts = ?, last_status_code = ?, last_error = NULL, delivered_at = ? WHERE id = ? AND status = 'pending'", [attempts, code, at, id]);
  }

  async retryLater(id: string, attempts: number, next: number, code: number | null, error: string | null): Promise<void> {
    await q(this.#sql, "UPDATE webhook_deliveries SET attempts = ?, next_attempt_at = ?, last_status_code = ?, last_error = ? WHERE id = ? AND status = 'pending'", [attempts, next, code, error, id]);
  }

  async failed(id: string, attempts: number, code: number | null, error: string | null): Promise<void> {
    await q(this.#sql, "UPDATE webhook_deliveries SET status = 'failed', attempts = ?, last_status_code = ?, last_error = ? WHERE id = ? AND status = 'pending'", [attempts, code, error, id]);
  }

  async requeue(id: string, url: string, now: number): Promise<boolean> {
    return (await changed(this.#sql, "UPDATE webhook_deliveries SET status = 'pending', attempts = 0, next_attempt_at = ?, url = ? WHERE id = ? AND status = 'failed'", [now, url, id])) === 1;
  }
}
