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
const num = (v: unknown): number | null => (typeof v === 'number' ? v : null);

function parseJson<T>(v: unknown, fallback: T): T {
  if (typeof v !== 'string') return fallback;
  try {
    return JSON.parse(v) as T;
  } catch {
    return fallback;
  }
}

function toCampaign<S>(r: Raw): CampaignRow<S> {
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

export class CampaignStore {
  readonly #db: Db;

  constructor(db: Db) {
    this.#db = db;
  }

  create<S>(name: string, settings: S, now = Date.now()): CampaignRow<S> {
    const id = newId('cmp', now);
    this.#db
      .prepare('INSERT INTO campaigns (id, name, status, settings, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?)')
      .run(id, name, 'draft', JSON.stringify(settings), now, now);
    const c = this.get<S>(id);
    if (c === undefined) throw new Error(`campaign ${id} vanished after insert`);
    return c;
  }

  get<S>(id: string): CampaignRow<S> | undefined {
    const r = this.#db.prepare('SELECT * FROM campaigns WHERE id = ?').get(id) as Raw | undefined;
    return r === undefined ? undefined : toCampaign<S>(r);
  }

  list<S>(opts: { status?: CampaignStatus; before?: string; limit: number }): Array<CampaignRow<S>> {
    const where: string[] = [];
    const values: unknown[] = [];
    if (opts.status !== undefined) (where.push('status = ?'), values.push(opts.status));
    if (opts.before !== undefined) (where.push('id < ?'), values.push(opts.before));
    const sql = `SELECT * FROM campaigns ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ?`;
    return (this.#db.prepare(sql).all(...values, opts.limit) as Raw[]).map((r) => toCampaign<S>(r));
  }

  byStatus<S>(status: CampaignStatus): Array<CampaignRow<S>> {
    return (this.#db.prepare('SELECT * FROM campaigns WHERE status = ? ORDER BY id').all(status) as Raw[]).map((r) => toCampaign<S>(r));
  }

  setStatus(id: string, status: CampaignStatus, extra: { pauseReason?: string | null; lastError?: string | null } = {}, now = Date.now()): void {
    const sets = ['status = ?', 'updated_at = ?'];
    const values: unknown[] = [status, now];
    if (status === 'running') sets.push('started_at = COALESCE(started_at, ?)'), values.push(now);
    if (status === 'completed' || status === 'canceled') sets.push('completed_at = ?'), values.push(now);
    if (extra.pauseReason !== undefined) sets.push('pause_reason = ?'), values.push(extra.pauseReason);
    if (extra.lastError !== undefined) sets.push('last_error = ?'), values.push(extra.lastError);
    this.#db.prepare(`UPDATE campaigns SET ${sets.join(', ')} WHERE id = ?`).run(...values, id);
  }

  /**
   * Adds contacts; a number already in the campaign is merged into the
   * existing contact (returned in `merged`), never dialed twice.
   */
  addContacts(campaignId: string, contacts: NewContact[], now = Date.now()): { added: number; merged: Array<{ line: number | null; phone: string; contactId: string }> } {
    const insert = this.#db.prepare(`INSERT INTO contacts (id, campaign_id, line, phone, variables, timezone, state, merged_lines, updated_at)
      VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?) ON CONFLICT (campaign_id, phone) DO NOTHING`);
    const existing = this.#db.prepare('SELECT id, merged_lines FROM contacts WHERE campaign_id = ? AND phone = ?');
    const setMerged = this.#db.prepare('UPDATE contacts SET merged_lines = ? WHERE id = ?');
    const merged: Array<{ line: number | null; phone: string; contactId: string }> = [];
    let added = 0;
    this.#db.transaction(() => {
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
    })();
    return { added, merged };
  }

  /**
   * {@link addContacts} for big imports: `chunkSize` contacts per transaction,
   * handing the event loop back between transactions so live calls keep
   * their timers. Contacts are dialable as soon as their chunk is in.
   */
  async addContactsInChunks(
    campaignId: string,
    contacts: readonly NewContact[],
    chunkSize = 500,
    /** Checked before each chunk: false stops the insert (the campaign finished meanwhile); `stopped` says so. */
    stillOpen: () => boolean = () => true,
  ): Promise<{ added: number; merged: Array<{ line: number | null; phone: string; contactId: string }>; stopped: boolean }> {
    let added = 0;
    const merged: Array<{ line: number | null; phone: string; contactId: string }> = [];
    for (let i = 0; i < contacts.length; i += chunkSize) {
      if (i > 0) await yieldToLoop();
      if (!stillOpen()) return { added, merged, stopped: true };
      const r = this.addContacts(campaignId, contacts.slice(i, i + chunkSize));
      added += r.added;
      merged.push(...r.merged);
    }
    return { added, merged, stopped: false };
  }

  /** Deletes a campaign and its contacts (an import that failed half-way). */
  delete(id: string): boolean {
    return this.#db.prepare('DELETE FROM campaigns WHERE id = ?').run(id).changes === 1;
  }

  contact(id: string): ContactRow | undefined {
    const r = this.#db.prepare('SELECT * FROM contacts WHERE id = ?').get(id) as Raw | undefined;
    return r === undefined ? undefined : toContact(r);
  }

  /** Pending contacts due now, in order of due time then file order. */
  due(campaignId: string, now: number, limit: number): ContactRow[] {
    return (
      this.#db
        .prepare("SELECT * FROM contacts WHERE campaign_id = ? AND state = 'pending' AND next_attempt_at <= ? ORDER BY next_attempt_at, line, id LIMIT ?")
        .all(campaignId, now, limit) as Raw[]
    ).map(toContact);
  }

  /** When the next pending contact of the campaign is due (undefined if none is pending). */
  nextDue(campaignId: string): number | undefined {
    const r = this.#db.prepare("SELECT MIN(next_attempt_at) AS t FROM contacts WHERE campaign_id = ? AND state = 'pending'").get(campaignId) as Raw;
    return typeof r.t === 'number' ? r.t : undefined;
  }

  /**
   * Claims a pending contact for its next attempt: one conditional UPDATE, so two processes
   * sharing the database cannot both claim it (the second sees no row changed). True when this
   * call claimed it (state `dialing`, attempts + 1).
   */
  claimContact(id: string, expectedAttempts: number, now = Date.now()): boolean {
    const r = this.#db
      .prepare("UPDATE contacts SET state = 'dialing', attempts = attempts + 1, updated_at = ? WHERE id = ? AND state = 'pending' AND attempts = ?")
      .run(now, id, expectedAttempts);
    return r.changes === 1;
  }

  updateContact(id: string, patch: { state?: ContactState; outcome?: string | null; attempts?: number; nextAttemptAt?: number; lastCallId?: string | null; lastError?: string | null }, now = Date.now()): void {
    const map: Record<string, string> = { state: 'state', outcome: 'outcome', attempts: 'attempts', nextAttemptAt: 'next_attempt_at', lastCallId: 'last_call_id', lastError: 'last_error' };
    const sets = ['updated_at = ?'];
    const values: unknown[] = [now];
    for (const [k, v] of Object.entries(patch)) {
      const col = map[k];
      if (col === undefined || v === undefined) continue;
      sets.push(`${col} = ?`);
      values.push(v);
    }
    this.#db.prepare(`UPDATE contacts SET ${sets.join(', ')} WHERE id = ?`).run(...values, id);
  }

  contacts(campaignId: string, opts: { state?: ContactState; outcome?: string; after?: string; limit: number }): ContactRow[] {
    const where = ['campaign_id = ?'];
    const values: unknown[] = [campaignId];
    if (opts.state !== undefined) (where.push('state = ?'), values.push(opts.state));
    if (opts.outcome !== undefined) (where.push('outcome = ?'), values.push(opts.outcome));
    if (opts.after !== undefined) (where.push('id > ?'), values.push(opts.after));
    return (this.#db.prepare(`SELECT * FROM contacts WHERE ${where.join(' AND ')} ORDER BY id LIMIT ?`).all(...values, opts.limit) as Raw[]).map(toContact);
  }

  /**
   * One page of a campaign's contacts with their last attempt's status, in insertion order
   * (file order for an import), after the row `afterRowid` (0 for the first page). For exports
   * read a page at a time, so a big campaign never holds the connection or the event loop long.
   */
  resultsPage(campaignId: string, afterRowid: number, limit: number): Array<{ rowid: number; contact: ContactRow; lastStatus: string | null; answeredBy: string | null; durationS: number | null }> {
    const rows = this.#db
      .prepare(
        `SELECT c.rowid AS rid, c.*, l.status AS l_status, l.answered_by AS l_answered_by, l.duration_s AS l_duration_s
         FROM contacts c LEFT JOIN calls l ON l.id = c.last_call_id
         WHERE c.campaign_id = ? AND c.rowid > ? ORDER BY c.rowid LIMIT ?`,
      )
      .all(campaignId, afterRowid, limit) as Raw[];
    return rows.map((r) => ({ rowid: Number(r.rid), contact: toContact(r), lastStatus: str(r.l_status), answeredBy: str(r.l_answered_by), durationS: num(r.l_duration_s) }));
  }

  /** The variable names used by one page of a campaign's contacts (see {@link resultsPage}). */
  variableNamesPage(campaignId: string, afterRowid: number, limit: number): { names: Set<string>; lastRowid: number | undefined } {
    const rows = this.#db.prepare('SELECT rowid AS rid, variables FROM contacts WHERE campaign_id = ? AND rowid > ? ORDER BY rowid LIMIT ?').all(campaignId, afterRowid, limit) as Raw[];
    const names = new Set<string>();
    for (const r of rows) for (const k of Object.keys(parseJson<Record<string, string>>(r.variables, {}))) names.add(k);
    const last = rows[rows.length - 1];
    return { names, lastRowid: last === undefined ? undefined : Number(last.rid) };
  }

  counts(campaignId: string): ContactCounts {
    const byState: Record<ContactState, number> = { pending: 0, dialing: 0, done: 0 };
    const byOutcome: Record<string, number> = {};
    let total = 0;
    let attempts = 0;
    const rows = this.#db
      .prepare('SELECT state, outcome, COUNT(*) AS n, SUM(attempts) AS a FROM contacts WHERE campaign_id = ? GROUP BY state, outcome')
      .all(campaignId) as Raw[];
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

  /** Marks every not-done contact as done with `outcome` (cancel). */
  finishAll(campaignId: string, outcome: string, now = Date.now()): number {
    return this.#db
      .prepare("UPDATE contacts SET state = 'done', outcome = ?, updated_at = ? WHERE campaign_id = ? AND state = 'pending'")
      .run(outcome, now, campaignId).changes;
  }

  // ------------------------------------------------------------ do-not-call

  dncHas(phone: string): boolean {
    return this.#db.prepare('SELECT 1 FROM dnc WHERE phone = ?').get(phone) !== undefined;
  }

  dncAdd(phone: string, reason: string | null, now = Date.now()): boolean {
    return this.#db.prepare('INSERT INTO dnc (phone, reason, created_at) VALUES (?, ?, ?) ON CONFLICT (phone) DO NOTHING').run(phone, reason, now).changes === 1;
  }

  dncRemove(phone: string): boolean {
    return this.#db.prepare('DELETE FROM dnc WHERE phone = ?').run(phone).changes === 1;
  }

  dncList(opts: { after?: string; limit: number }): Array<{ phone: string; reason: string | null; createdAt: number }> {
    const rows = (
      opts.after === undefined
        ? this.#db.prepare('SELECT * FROM dnc ORDER BY phone LIMIT ?').all(opts.limit)
        : this.#db.prepare('SELECT * FROM dnc WHERE phone > ? ORDER BY phone LIMIT ?').all(opts.after, opts.limit)
    ) as Raw[];
    return rows.map((r) => ({ phone: String(r.phone), reason: str(r.reason), createdAt: Number(r.created_at) }));
  }
}
