/**
 * Campaigns, their contacts, and the do-not-call list.
 *
 * Contact states: `pending` (waiting for its next attempt at
 * `next_attempt_at`), `dialing` (claimed: an attempt is in flight), `done`
 * (terminal, with an `outcome`). A contact moves to `dialing` in the same
 * transaction that creates its attempt's call row, before the carrier is
 * asked to dial.
 */
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import type { Db } from './db.js';
import { gateOf } from './gate.js';
import { newId } from './ids.js';

export type CampaignStatus = 'draft' | 'running' | 'paused' | 'completed' | 'canceled';
export type ContactState = 'pending' | 'dialing' | 'done';

export interface CampaignRow<S = unknown> {
  id: string;
  name: string;
  status: CampaignStatus;
  settings: S;
  pauseReason: string | null;
  lastError: string | null;
  createdAt: number;
  updatedAt: number;
  startedAt: number | null;
  completedAt: number | null;
}

export interface ContactRow {
  id: string;
  campaignId: string;
  line: number | null;
  phone: string;
  variables: Record<string, string>;
  timezone: string | null;
  state: ContactState;
  outcome: string | null;
  attempts: number;
  nextAttemptAt: number;
  lastCallId: string | null;
  lastError: string | null;
  mergedLines: number[];
  updatedAt: number;
}

export interface NewContact {
  line?: number;
  phone: string;
  variables: Record<string, string>;
  timezone?: string;
  mergedLines?: number[];
}

type Raw = Record<string, unknown>;
const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const num = (v: unknown): number | null => (typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : null);

function parseJson<T>(v: unknown, fallback: T): T {
  if (typeof v !== 'string') return fallback;
  try {
    return JSON.parse(v) as T;
  } catch {
    return fallback;
  }
}

export function toCampaign<S>(r: Raw): CampaignRow<S> {
  return {
    id: String(r.id),
    name: String(r.name),
    status: String(r.status) as CampaignStatus,
    settings: parseJson<S>(r.settings, {} as S),
    pauseReason: str(r.pause_reason),
    lastError: str(r.last_error),
    createdAt: Number(r.created_at),
    updatedAt: Number(r.updated_at),
    startedAt: num(r.started_at),
    completedAt: num(r.completed_at),
  };
}

export function toContact(r: Raw): ContactRow {
  return {
    id: String(r.id),
    campaignId: String(r.campaign_id),
    line: num(r.line),
    phone: String(r.phone),
    variables: parseJson<Record<string, string>>(r.variables, {}),
    timezone: str(r.timezone),
    state: String(r.state) as ContactState,
    outcome: str(r.outcome),
    attempts: Number(r.attempts),
    nextAttemptAt: Number(r.next_attempt_at),
    lastCallId: str(r.last_call_id),
    lastError: str(r.last_error),
    mergedLines: parseJson<number[]>(r.merged_lines, []),
    updatedAt: Number(r.updated_at),
  };
}

export interface ContactCounts {
  total: number;
  byState: Record<ContactState, number>;
  byOutcome: Record<string, number>;
  attempts: number;
}

export interface ContactPatch {
  state?: ContactState;
  outcome?: string | null;
  attempts?: number;
  nextAttemptAt?: number;
  lastCallId?: string | null;
  lastError?: string | null;
}

/** Conditions for {@link CampaignStore.updateContact}: the update happens only if the contact still matches. */
/** The conditional UPDATE of one contact (`?` placeholders; both backends run it). */
export function contactUpdateSql(id: string, patch: ContactPatch, now: number, where?: ContactCondition): { text: string; values: unknown[] } {
  const sets = ['updated_at = ?'];
  const values: unknown[] = [now];
  for (const [k, v] of Object.entries(patch)) {
    const col = k in CONTACT_COLUMNS ? CONTACT_COLUMNS[k as keyof ContactPatch] : undefined;
    if (col === undefined || v === undefined) continue;
    sets.push(`${col} = ?`);
    values.push(v);
  }
  const cond = ['id = ?'];
  values.push(id);
  if (where?.state !== undefined) (cond.push('state = ?'), values.push(where.state));
  if (where?.lastCallId !== undefined) (cond.push('last_call_id = ?'), values.push(where.lastCallId));
  if (where?.attempts !== undefined) (cond.push('attempts = ?'), values.push(where.attempts));
  return { text: `UPDATE contacts SET ${sets.join(', ')} WHERE ${cond.join(' AND ')}`, values };
}

export interface ContactCondition {
  state?: ContactState;
  lastCallId?: string;
  /** The attempts made so far (a claim for attempt n + 1 holds only while n were made). */
  attempts?: number;
}

export type MergedContact = { line: number | null; phone: string; contactId: string };

export interface ResultRow {
  rowid: number;
  contact: ContactRow;
  lastStatus: string | null;
  answeredBy: string | null;
  durationS: number | null;
}

/**
 * Campaigns, their contacts, and the do-not-call list (SQLite: {@link SqliteCampaignStore};
 * Postgres: `src/store/postgres.ts`).
 */
export interface CampaignStore {
  create<S>(name: string, settings: S, now?: number): Promise<CampaignRow<S>>;
  get<S>(id: string): Promise<CampaignRow<S> | undefined>;
  list<S>(opts: { status?: CampaignStatus; before?: string; limit: number }): Promise<Array<CampaignRow<S>>>;
  byStatus<S>(status: CampaignStatus): Promise<Array<CampaignRow<S>>>;
  setStatus(id: string, status: CampaignStatus, extra?: { pauseReason?: string | null; lastError?: string | null }, now?: number): Promise<void>;
  /**
   * Adds contacts in one transaction; a number already in the campaign is merged into the
   * existing contact (returned in `merged`), never dialed twice.
   */
  addContacts(campaignId: string, contacts: readonly NewContact[], now?: number): Promise<{ added: number; merged: MergedContact[] }>;
  /**
   * {@link addContacts} for big imports: `chunkSize` contacts per transaction, handing the event
   * loop back between transactions so live calls keep their timers. Contacts are dialable as
   * soon as their chunk is in. `stillOpen` is checked before each chunk: false stops the insert
   * (the campaign finished meanwhile); `stopped` says so.
   */
  addContactsInChunks(
    campaignId: string,
    contacts: readonly NewContact[],
    chunkSize?: number,
    stillOpen?: () => boolean | Promise<boolean>,
  ): Promise<{ added: number; merged: MergedContact[]; stopped: boolean }>;
  /** Deletes a campaign and its contacts (an import that failed half-way). */
  delete(id: string): Promise<boolean>;
  contact(id: string): Promise<ContactRow | undefined>;
  /** Pending contacts due now, in order of due time then file order. */
  due(campaignId: string, now: number, limit: number): Promise<ContactRow[]>;
  /** When the next pending contact of the campaign is due (undefined if none is pending). */
  nextDue(campaignId: string): Promise<number | undefined>;
  /**
   * Updates a contact. With `where`, only a contact that still matches it is updated
   * (atomically: claiming a pending contact is `where: { state: 'pending' }`). True when updated.
   */
  updateContact(id: string, patch: ContactPatch, now?: number, where?: ContactCondition): Promise<boolean>;
  contacts(campaignId: string, opts: { state?: ContactState; outcome?: string; after?: string; limit: number }): Promise<ContactRow[]>;
  /**
   * One page of a campaign's contacts with their last attempt's status, in insertion order
   * (file order for an import), after the row `afterRowid` (0 for the first page).
   */
  resultsPage(campaignId: string, afterRowid: number, limit: number): Promise<ResultRow[]>;
  /** The variable names used by one page of a campaign's contacts (see {@link resultsPage}). */
  variableNamesPage(campaignId: string, afterRowid: number, limit: number): Promise<{ names: Set<string>; lastRowid: number | undefined }>;
  counts(campaignId: string): Promise<ContactCounts>;
  /** Marks every pending contact as done with `outcome` (cancel). */
  finishAll(campaignId: string, outcome: string, now?: number): Promise<number>;
  dncHas(phone: string): Promise<boolean>;
  dncAdd(phone: string, reason: string | null, now?: number): Promise<boolean>;
  dncRemove(phone: string): Promise<boolean>;
  dncList(opts: { after?: string; limit: number }): Promise<Array<{ phone: string; reason: string | null; createdAt: number }>>;
}

export const CONTACT_COLUMNS: Record<keyof ContactPatch, string> = {
  state: 'state',
  outcome: 'outcome',
  attempts: 'attempts',
  nextAttemptAt: 'next_attempt_at',
  lastCallId: 'last_call_id',
  lastError: 'last_error',
};

/** Shared by both backends: chunks of {@link CampaignStore.addContacts}, yielding between them. */
export async function addInChunks(
  add: (chunk: readonly NewContact[]) => Promise<{ added: number; merged: MergedContact[] }>,
  contacts: readonly NewContact[],
  chunkSize: number,
  stillOpen: () => boolean | Promise<boolean>,
): Promise<{ added: number; merged: MergedContact[]; stopped: boolean }> {
  let added = 0;
  const merged: MergedContact[] = [];
  for (let i = 0; i < contacts.length; i += chunkSize) {
    if (i > 0) await yieldToLoop();
    if (!(await stillOpen())) return { added, merged, stopped: true };
    const r = await add(contacts.slice(i, i + chunkSize));
    added += r.added;
    merged.push(...r.merged);
  }
  return { added, merged, stopped: false };
}

/** Tallies `(state, outcome, n, attempts)` groups into {@link ContactCounts}. */
export function tally(rows: readonly Raw[]): ContactCounts {
  const byState: Record<ContactState, number> = { pending: 0, dialing: 0, done: 0 };
  const byOutcome: Record<string, number> = {};
  let total = 0;
  let attempts = 0;
  for (const r of rows) {
    const n = Number(r.n);
    total += n;
    attempts += Number(r.a ?? 0);
    const state = String(r.state) as ContactState;
    byState[state] = (byState[state] ?? 0) + n;
    if (typeof r.outcome === 'string') byOutcome[r.outcome] = (byOutcome[r.outcome] ?? 0) + n;
  }
  return { total, byState, byOutcome, attempts };
}

export function variableNames(rows: readonly Raw[]): { names: Set<string>; lastRowid: number | undefined } {
  const names = new Set<string>();
  for (const r of rows) for (const k of Object.keys(parseJson<Record<string, string>>(r.variables, {}))) names.add(k);
  const last = rows[rows.length - 1];
  return { names, lastRowid: last === undefined ? undefined : Number(last.rid) };
}

export const toResultRow = (r: Raw): ResultRow => ({ rowid: Number(r.rid), contact: toContact(r), lastStatus: str(r.l_status), answeredBy: str(r.l_answered_by), durationS: num(r.l_duration_s) });

export { parseJson };

/** The SQLite implementation of {@link CampaignStore}. */
export class SqliteCampaignStore implements CampaignStore {
  readonly #db: Db;

  constructor(db: Db) {
    this.#db = db;
  }

  /** Runs `fn` once no transaction of another task is open (at once inside one's own). */
  #run<T>(fn: () => T): Promise<T> {
    return gateOf(this.#db).run(fn);
  }

  #getSync<S>(id: string): CampaignRow<S> | undefined {
    const r = this.#db.prepare('SELECT * FROM campaigns WHERE id = ?').get(id) as Raw | undefined;
    return r === undefined ? undefined : toCampaign<S>(r);
  }

  create<S>(name: string, settings: S, now = Date.now()): Promise<CampaignRow<S>> {
    return this.#run(() => {
      const id = newId('cmp', now);
      this.#db
        .prepare('INSERT INTO campaigns (id, name, status, settings, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)')
        .run(id, name, 'draft', JSON.stringify(settings), now, now);
      const c = this.#getSync<S>(id);
      if (c === undefined) throw new Error(`campaign ${id} vanished after insert`);
      return c;
    });
  }

  get<S>(id: string): Promise<CampaignRow<S> | undefined> {
    return this.#run(() => {
      return this.#getSync<S>(id);
    });
  }

  list<S>(opts: { status?: CampaignStatus; before?: string; limit: number }): Promise<Array<CampaignRow<S>>> {
    return this.#run(() => {
      const where: string[] = [];
      const values: unknown[] = [];
      if (opts.status !== undefined) (where.push('status = ?'), values.push(opts.status));
      if (opts.before !== undefined) (where.push('id < ?'), values.push(opts.before));
      const sql = `SELECT * FROM campaigns ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ?`;
      return (this.#db.prepare(sql).all(...values, opts.limit) as Raw[]).map((r) => toCampaign<S>(r));
    });
  }

  byStatus<S>(status: CampaignStatus): Promise<Array<CampaignRow<S>>> {
    return this.#run(() => {
      return (this.#db.prepare('SELECT * FROM campaigns WHERE status = ? ORDER BY id').all(status) as Raw[]).map((r) => toCampaign<S>(r));
    });
  }

  setStatus(id: string, status: CampaignStatus, extra: { pauseReason?: string | null; lastError?: string | null } = {}, now = Date.now()): Promise<void> {
    return this.#run(() => {
      const sets = ['status = ?', 'updated_at = ?'];
      const values: unknown[] = [status, now];
      if (status === 'running') sets.push('started_at = COALESCE(started_at, ?)'), values.push(now);
      if (status === 'completed' || status === 'canceled') sets.push('completed_at = ?'), values.push(now);
      if (extra.pauseReason !== undefined) sets.push('pause_reason = ?'), values.push(extra.pauseReason);
      if (extra.lastError !== undefined) sets.push('last_error = ?'), values.push(extra.lastError);
      this.#db.prepare(`UPDATE campaigns SET ${sets.join(', ')} WHERE id = ?`).run(...values, id);
    });
  }

  addContacts(campaignId: string, contacts: readonly NewContact[], now = Date.now()): Promise<{ added: number; merged: MergedContact[] }> {
    return this.#run(() => {
      const insert = this.#db.prepare(`INSERT INTO contacts (id, campaign_id, line, phone, variables, timezone, state, merged_lines, updated_at)
        VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT (campaign_id, phone) DO NOTHING`);
      const existing = this.#db.prepare('SELECT id, merged_lines FROM contacts WHERE campaign_id = ? AND phone = ?');
      const setMerged = this.#db.prepare('UPDATE contacts SET merged_lines = ? WHERE id = ?');
      const merged: MergedContact[] = [];
      let added = 0;
      const write = (): void => {
        for (const c of contacts) {
          const id = newId('ct', now);
          const res = insert.run(id, campaignId, c.line ?? null, c.phone, JSON.stringify(c.variables), c.timezone ?? null, JSON.stringify(c.mergedLines ?? []), now);
          if (res.changes === 1) {
            added++;
            continue;
          }
          const prior = existing.get(campaignId, c.phone) as Raw | undefined;
          if (prior === undefined) continue;
          const lines = parseJson<number[]>(prior.merged_lines, []);
          if (c.line !== undefined) lines.push(c.line);
          setMerged.run(JSON.stringify(lines), String(prior.id));
          merged.push({ line: c.line ?? null, phone: c.phone, contactId: String(prior.id) });
        }
        this.#db.prepare('UPDATE campaigns SET updated_at = ? WHERE id = ?').run(now, campaignId);
      };
      if (gateOf(this.#db).inTransaction) write();
      else this.#db.transaction(write)();
      return { added, merged };
    });
  }

  addContactsInChunks(
    campaignId: string,
    contacts: readonly NewContact[],
    chunkSize = 500,
    stillOpen: () => boolean | Promise<boolean> = () => true,
  ): Promise<{ added: number; merged: MergedContact[]; stopped: boolean }> {
    return addInChunks((chunk) => this.addContacts(campaignId, chunk), contacts, chunkSize, stillOpen);
  }

  delete(id: string): Promise<boolean> {
    return this.#run(() => {
      return this.#db.prepare('DELETE FROM campaigns WHERE id = ?').run(id).changes === 1;
    });
  }

  contact(id: string): Promise<ContactRow | undefined> {
    return this.#run(() => {
      const r = this.#db.prepare('SELECT * FROM contacts WHERE id = ?').get(id) as Raw | undefined;
      return r === undefined ? undefined : toContact(r);
    });
  }

  due(campaignId: string, now: number, limit: number): Promise<ContactRow[]> {
    return this.#run(() => {
      return (
        this.#db
          .prepare("SELECT * FROM contacts WHERE campaign_id = ? AND state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, line, id LIMIT ?")
          .all(campaignId, now, limit) as Raw[]
      ).map(toContact);
    });
  }

  nextDue(campaignId: string): Promise<number | undefined> {
    return this.#run(() => {
      const r = this.#db.prepare("SELECT MIN(next_attempt_at) AS t FROM contacts WHERE campaign_id = ? AND state = 'pending'").get(campaignId) as Raw;
      return typeof r.t === 'number' ? r.t : undefined;
    });
  }

  updateContact(id: string, patch: ContactPatch, now = Date.now(), where?: ContactCondition): Promise<boolean> {
    return this.#run(() => {
      const { text, values } = contactUpdateSql(id, patch, now, where);
      return this.#db.prepare(text).run(...values).changes === 1;
    });
  }

  contacts(campaignId: string, opts: { state?: ContactState; outcome?: string; after?: string; limit: number }): Promise<ContactRow[]> {
    return this.#run(() => {
      const where = ['campaign_id = ?'];
      const values: unknown[] = [campaignId];
      if (opts.state !== undefined) (where.push('state = ?'), values.push(opts.state));
      if (opts.outcome !== undefined) (where.push('outcome = ?'), values.push(opts.outcome));
      if (opts.after !== undefined) (where.push('id > ?'), values.push(opts.after));
      return (this.#db.prepare(`SELECT * FROM contacts WHERE ${where.join(' AND ')} ORDER BY id LIMIT ?`).all(...values, opts.limit) as Raw[]).map(toContact);
    });
  }

  resultsPage(campaignId: string, afterRowid: number, limit: number): Promise<ResultRow[]> {
    return this.#run(() => {
      const rows = this.#db
        .prepare(
          `SELECT c.rowid AS rid, c.*, l.status AS l_status, l.answered_by AS l_answered_by, l.duration_s AS l_duration_s
           FROM contacts c LEFT JOIN calls l ON l.id = c.last_call_id
           WHERE c.campaign_id = ? AND c.rowid > ? ORDER BY c.rowid LIMIT ?`,
        )
        .all(campaignId, afterRowid, limit) as Raw[];
      return rows.map(toResultRow);
    });
  }

  variableNamesPage(campaignId: string, afterRowid: number, limit: number): Promise<{ names: Set<string>; lastRowid: number | undefined }> {
    return this.#run(() => {
      return variableNames(this.#db.prepare('SELECT rowid AS rid, variables FROM contacts WHERE campaign_id = ? AND rowid > ? ORDER BY rowid LIMIT ?').all(campaignId, afterRowid, limit) as Raw[]);
    });
  }

  counts(campaignId: string): Promise<ContactCounts> {
    return this.#run(() => {
      return tally(
        this.#db.prepare('SELECT state, outcome, COUNT(*) AS n, SUM(attempts) AS a FROM contacts WHERE campaign_id = ? GROUP BY state, outcome').all(campaignId) as Raw[],
      );
    });
  }

  finishAll(campaignId: string, outcome: string, now = Date.now()): Promise<number> {
    return this.#run(() => {
      return this.#db
        .prepare("UPDATE contacts SET state = 'done', outcome = ?, updated_at = ? WHERE campaign_id = ? AND state = 'pending'")
        .run(outcome, now, campaignId).changes;
    });
  }

  // ------------------------------------------------------------ do-not-call

  dncHas(phone: string): Promise<boolean> {
    return this.#run(() => {
      return this.#db.prepare('SELECT 1 FROM dnc WHERE phone = ?').get(phone) !== undefined;
    });
  }

  dncAdd(phone: string, reason: string | null, now = Date.now()): Promise<boolean> {
    return this.#run(() => {
      return this.#db.prepare('INSERT INTO dnc (phone, reason, created_at) VALUES (?, ?, ?) ON CONFLICT (phone) DO NOTHING').run(phone, reason, now).changes === 1;
    });
  }

  dncRemove(phone: string): Promise<boolean> {
    return this.#run(() => {
      return this.#db.prepare('DELETE FROM dnc WHERE phone = ?').run(phone).changes === 1;
    });
  }

  dncList(opts: { after?: string; limit: number }): Promise<Array<{ phone: string; reason: string | null; createdAt: number }>> {
    return this.#run(() => {
      const rows = (
        opts.after === undefined
          ? this.#db.prepare('SELECT * FROM dnc ORDER BY phone LIMIT ?').all(opts.limit)
          : this.#db.prepare('SELECT * FROM dnc WHERE phone > ? ORDER BY phone LIMIT ?').all(opts.after, opts.limit)
      ) as Raw[];
      return rows.map(toDnc);
    });
  }
}

export const toDnc = (r: Raw): { phone: string; reason: string | null; createdAt: number } => ({ phone: String(r.phone), reason: str(r.reason), createdAt: Number(r.created_at) });
