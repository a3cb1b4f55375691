/**
 * Calls, their events and transcripts, and idempotency keys.
 *
 * A call row exists for every outbound call from the moment it is requested
 * (or its contact is claimed), for every inbound call the bridge admitted, and
 * for every browser call (`web`) from its `POST /v1/web-calls`.
 * Every state change is also appended to `call_events`.
 */
import { TWILIO_TERMINAL_STATUSES } from '../carrier/twilio/statuses.js';
import { SqliteCampaignStore, type CampaignStore } from './campaigns.js';
import type { Db } from './db.js';
import { gateOf } from './gate.js';
import { newId } from './ids.js';

/** `web`: a browser call (`POST /v1/web-calls`): no carrier, the browser speaks the Media Streams protocol itself. */
export const CALL_DIRECTIONS = ['inbound', 'outbound', 'web'] as const;
export type CallDirection = (typeof CALL_DIRECTIONS)[number];

/** Carrier statuses after which nothing more happens to a call, plus `not-dialed` (our own). */
export const TERMINAL_CALL_STATUSES: ReadonlySet<string> = new Set([...TWILIO_TERMINAL_STATUSES, 'not-dialed']);

/** What a finished call came to (`not-dialed`: an attempt that never reached the carrier). */
export const CALL_OUTCOMES = ['answered', 'voicemail', 'busy', 'no-answer', 'failed', 'canceled', 'not-dialed'] as const;
export type CallOutcome = (typeof CALL_OUTCOMES)[number];

export interface CallRow {
  id: string;
  callSid: string | null;
  direction: CallDirection;
  to: string;
  from: string;
  agentId: string;
  prompt: string | null;
  customGreeting: string | null;
  metadata: Record<string, unknown> | null;
  machineDetection: boolean;
  voicemailAction: 'hangup' | 'message' | null;
  voicemailMessage: string | null;
  campaignId: string | null;
  contactId: string | null;
  attempt: number | null;
  status: string;
  outcome: CallOutcome | null;
  answeredBy: string | null;
  lastSequence: number | null;
  errorCode: number | null;
  errorMessage: string | null;
  hangupRequested: boolean;
  createdAt: number;
  claimedAt: number | null;
  dialedAt: number | null;
  answeredAt: number | null;
  endedAt: number | null;
  durationS: number | null;
  conversationId: string | null;
  endReason: string | null;
  sessionEndedAt: number | null;
  finalizedAt: number | null;
  /** What the call asked for (API call, campaign): true/false, or null to follow its route, agent and RECORDING_DEFAULT. */
  record: boolean | null;
  /** The recording made of the call, if any. */
  recordingBackend: 'local' | 'twilio' | null;
  /** `in-progress`, `completed`, `absent` (Twilio made none), `failed`, `deleted` (retention). */
  recordingStatus: string | null;
  recordingSid: string | null;
  /** Twilio's URL of the recording resource (without extension). */
  recordingUrl: string | null;
  recordingDurationS: number | null;
  recordingStartedAt: number | null;
}

export interface CallEvent {
  id: number;
  at: number;
  type: string;
  status: string | null;
  sequence: number | null;
  data: Record<string, unknown> | null;
}

export interface TranscriptTurnRow {
  source: 'live' | 'playai';
  seq: number;
  role: string;
  text: string;
  at: number;
}

type Raw = Record<string, unknown>;

const str = (v: unknown): string | null => (typeof v === 'string' ? v : null);
const num = (v: unknown): number | null => (typeof v === 'number' ? v : typeof v === 'bigint' ? Number(v) : null);
function json<T>(v: unknown): T | null {
  if (typeof v !== 'string') return null;
  try {
    return JSON.parse(v) as T;
  } catch {
    return null;
  }
}

const OUTCOME_SET: ReadonlySet<string> = new Set(CALL_OUTCOMES);
const asOutcome = (v: unknown): CallOutcome | null => (typeof v === 'string' && OUTCOME_SET.has(v) ? (v as CallOutcome) : null);

export function toCallRow(r: Raw): CallRow {
  const va = str(r.voicemail_action);
  return {
    id: String(r.id),
    callSid: str(r.call_sid),
    direction: r.direction === 'inbound' || r.direction === 'web' ? r.direction : 'outbound',
    to: String(r.to_number),
    from: String(r.from_number),
    agentId: String(r.agent_id),
    prompt: str(r.prompt),
    customGreeting: str(r.custom_greeting),
    metadata: json<Record<string, unknown>>(r.metadata),
    machineDetection: r.machine_detection === 1,
    voicemailAction: va === 'hangup' || va === 'message' ? va : null,
    voicemailMessage: str(r.voicemail_message),
    campaignId: str(r.campaign_id),
    contactId: str(r.contact_id),
    attempt: num(r.attempt),
    status: String(r.status),
    outcome: asOutcome(r.outcome),
    answeredBy: str(r.answered_by),
    lastSequence: num(r.last_sequence),
    errorCode: num(r.error_code),
    errorMessage: str(r.error_message),
    hangupRequested: r.hangup_requested === 1,
    createdAt: Number(r.created_at),
    claimedAt: num(r.claimed_at),
    dialedAt: num(r.dialed_at),
    answeredAt: num(r.answered_at),
    endedAt: num(r.ended_at),
    durationS: num(r.duration_s),
    conversationId: str(r.conversation_id),
    endReason: str(r.end_reason),
    sessionEndedAt: num(r.session_ended_at),
    finalizedAt: num(r.finalized_at),
    record: r.record === 1 ? true : r.record === 0 ? false : null,
    recordingBackend: r.recording_backend === 'local' || r.recording_backend === 'twilio' ? r.recording_backend : null,
    recordingStatus: str(r.recording_status),
    recordingSid: str(r.recording_sid),
    recordingUrl: str(r.recording_url),
    recordingDurationS: num(r.recording_duration_s),
    recordingStartedAt: num(r.recording_started_at),
  };
}

export interface NewCall {
  id?: string;
  callSid?: string;
  direction: CallDirection;
  to: string;
  from: string;
  agentId: string;
  prompt?: string;
  customGreeting?: string;
  metadata?: Record<string, unknown>;
  machineDetection?: boolean;
  voicemailAction?: 'hangup' | 'message';
  voicemailMessage?: string;
  campaignId?: string;
  contactId?: string;
  attempt?: number;
  status: string;
  claimedAt?: number;
  /** Record the call (true/false); absent: its route, agent and RECORDING_DEFAULT decide. */
  record?: boolean;
}

export interface CallListFilter {
  status?: string;
  direction?: CallDirection;
  campaignId?: string;
  to?: string;
  /** Only calls created at or after this time (ms). */
  since?: number;
  /** Cursor: ids strictly older than this one. */
  before?: string;
  limit: number;
}

const CALL_COLUMNS: Record<string, string> = {
  callSid: 'call_sid',
  status: 'status',
  outcome: 'outcome',
  answeredBy: 'answered_by',
  lastSequence: 'last_sequence',
  errorCode: 'error_code',
  errorMessage: 'error_message',
  hangupRequested: 'hangup_requested',
  claimedAt: 'claimed_at',
  dialedAt: 'dialed_at',
  answeredAt: 'answered_at',
  endedAt: 'ended_at',
  durationS: 'duration_s',
  conversationId: 'conversation_id',
  endReason: 'end_reason',
  sessionEndedAt: 'session_ended_at',
  finalizedAt: 'finalized_at',
  recordingBackend: 'recording_backend',
  recordingStatus: 'recording_status',
  recordingSid: 'recording_sid',
  recordingUrl: 'recording_url',
  recordingDurationS: 'recording_duration_s',
  recordingStartedAt: 'recording_started_at',
};

/** The recording fields of a call (cleared together by retention). */
export type RecordingPatch = Pick<CallRow, 'recordingBackend' | 'recordingStatus' | 'recordingSid' | 'recordingUrl' | 'recordingDurationS' | 'recordingStartedAt'>;

export type CallPatch = Partial<Pick<CallRow, 'callSid' | 'status' | 'outcome' | 'answeredBy' | 'lastSequence' | 'errorCode' | 'errorMessage' | 'hangupRequested' | 'claimedAt' | 'dialedAt' | 'answeredAt' | 'endedAt' | 'durationS' | 'conversationId' | 'endReason' | 'sessionEndedAt' | 'finalizedAt'>> & Partial<RecordingPatch>;

/** Conditions for {@link CallStore.update}: the update happens only if the row still matches all of them. */
export interface CallCondition {
  status?: string;
  /** `null`: the call is not finalized yet. */
  finalizedAt?: null;
  /** `null`: no CallSid tied to the row yet. */
  callSid?: null;
  hangupRequested?: boolean;
}

/** Several store objects that see one transaction (see {@link CallStore.transaction}). */
export interface TxStores {
  calls: CallStore;
  campaigns: CampaignStore;
}

/**
 * Calls, their events and transcripts, and idempotency keys. Two
 * implementations: SQLite in DATA_DIR ({@link SqliteCallStore}) and Postgres
 * (`src/store/postgres.ts`); `test/store.contract.test.ts` runs one set of
 * behavioural tests against both. Several processes may share one database:
 * read-modify-write sequences use a conditional {@link update} or a
 * {@link transaction}.
 */
export interface CallStore {
  insert(c: NewCall, now?: number): Promise<CallRow>;
  get(id: string): Promise<CallRow | undefined>;
  getBySid(callSid: string): Promise<CallRow | undefined>;
  /**
   * Updates the given fields; returns the row after the update. With `where`, only a row that
   * still matches it is updated (atomically), and undefined says it did not match.
   */
  update(id: string, patch: CallPatch, where?: CallCondition): Promise<CallRow | undefined>;
  event(callId: string, type: string, status: string | null, sequence: number | null, data: Record<string, unknown> | null, at?: number): Promise<void>;
  /** True when the call has an event of this type. */
  hasEvent(callId: string, type: string): Promise<boolean>;
  events(callId: string): Promise<CallEvent[]>;
  /** Appends one turn to a transcript (`seq` = its index; the same seq again replaces it). */
  appendTranscriptTurn(callId: string, source: 'live' | 'playai', seq: number, turn: { role: string; text: string; at: number }): Promise<void>;
  saveTranscript(callId: string, source: 'live' | 'playai', turns: Array<{ role: string; text: string; at: number }>): Promise<void>;
  transcript(callId: string, source: 'live' | 'playai'): Promise<TranscriptTurnRow[]>;
  list(f: CallListFilter): Promise<CallRow[]>;
  /** Every attempt of a campaign contact, oldest first. */
  listByContact(campaignId: string, contactId: string): Promise<CallRow[]>;
  /** A campaign's attempts created at or after `since` that were dialed (not voided). */
  countDialedSince(campaignId: string, since: number): Promise<number>;
  /** Calls not finished yet (for restart reconciliation and the stale sweep). */
  unfinished(): Promise<CallRow[]>;
  /** Clears a call's recording fields (retention deleted the audio); `recording_status` says `deleted`. */
  clearRecording(id: string): Promise<void>;
  /** Calls with a recording (neither deleted nor being deleted) started before `before` (ms), oldest first. */
  recordingsBefore(before: number, limit: number): Promise<CallRow[]>;
  /**
   * Claims a recording for deletion by retention: its status becomes `deleting` only if it is
   * still `expected`. True for exactly one of several processes sweeping at once.
   */
  claimRecordingDeletion(id: string, expected: string | null): Promise<boolean>;
  /** Outbound calls waiting to be dialed (single API calls), oldest first. */
  queued(limit: number): Promise<CallRow[]>;
  idempotency(key: string): Promise<{ requestHash: string; callId: string } | undefined>;
  /** Records an idempotency key; false when the key is already there (another request took it). */
  putIdempotency(key: string, requestHash: string, callId: string, now?: number): Promise<boolean>;
  /** Forgets idempotency keys older than `olderThanMs`. */
  pruneIdempotency(olderThanMs: number, now?: number): Promise<number>;
  /**
   * Runs `fn` in one database transaction: everything it does through `tx` commits together or
   * not at all (it throws). Keep it short: no network calls inside.
   */
  transaction<T>(fn: (tx: TxStores) => Promise<T>): Promise<T>;
}

/** The query of a calls page (`?` placeholders; both backends run it), newest first. */
export function callListSql(f: CallListFilter): { text: string; values: unknown[] } {
  const where: string[] = [];
  const values: unknown[] = [];
  if (f.status !== undefined) (where.push('status = ?'), values.push(f.status));
  if (f.direction !== undefined) (where.push('direction = ?'), values.push(f.direction));
  if (f.campaignId !== undefined) (where.push('campaign_id = ?'), values.push(f.campaignId));
  if (f.to !== undefined) (where.push('to_number = ?'), values.push(f.to));
  if (f.since !== undefined) (where.push('created_at >= ?'), values.push(f.since));
  if (f.before !== undefined) (where.push('id < ?'), values.push(f.before));
  return { text: `SELECT * FROM calls ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ?`, values: [...values, f.limit] };
}

/** Column assignments and values for a patch (booleans as 0/1). */
export function patchColumns(patch: CallPatch): Array<[string, unknown]> {
  const out: Array<[string, unknown]> = [];
  for (const [k, v] of Object.entries(patch)) {
    const col = CALL_COLUMNS[k];
    if (col === undefined || v === undefined) continue;
    out.push([col, typeof v === 'boolean' ? (v ? 1 : 0) : v]);
  }
  return out;
}

/** SQL conditions and values for a {@link CallCondition}. */
export function conditionColumns(where: CallCondition | undefined): { sql: string[]; values: unknown[] } {
  const sql: string[] = [];
  const values: unknown[] = [];
  if (where === undefined) return { sql, values };
  if (where.status !== undefined) (sql.push('status = ?'), values.push(where.status));
  if (where.finalizedAt === null) sql.push('finalized_at IS NULL');
  if (where.callSid === null) sql.push('call_sid IS NULL');
  if (where.hangupRequested !== undefined) (sql.push('hangup_requested = ?'), values.push(where.hangupRequested ? 1 : 0));
  return { sql, values };
}

export const toCallEvent = (r: Raw): CallEvent => ({
  id: Number(r.id),
  at: Number(r.at),
  type: String(r.type),
  status: str(r.status),
  sequence: num(r.sequence),
  data: json<Record<string, unknown>>(r.data),
});

export const toTurn = (source: 'live' | 'playai', r: Raw): TranscriptTurnRow => ({
  source,
  seq: Number(r.seq),
  role: String(r.role),
  text: String(r.text),
  at: Number(r.at),
});

/** The values of a new call row, in the column order of `NEW_CALL_COLUMNS`. */
export function newCallValues(c: NewCall, id: string, now: number): unknown[] {
  return [
    id,
    c.callSid ?? null,
    c.direction,
    c.to,
    c.from,
    c.agentId,
    c.prompt ?? null,
    c.customGreeting ?? null,
    c.metadata === undefined ? null : JSON.stringify(c.metadata),
    c.machineDetection === true ? 1 : 0,
    c.voicemailAction ?? null,
    c.voicemailMessage ?? null,
    c.campaignId ?? null,
    c.contactId ?? null,
    c.attempt ?? null,
    c.status,
    now,
    c.claimedAt ?? null,
  ];
}
export const NEW_CALL_COLUMNS =
  'id, call_sid, direction, to_number, from_number, agent_id, prompt, custom_greeting, metadata, machine_detection, voicemail_action, voicemail_message, campaign_id, contact_id, attempt, status, created_at, claimed_at';

/** The SQLite implementation of {@link CallStore} (better-sqlite3 on the DATA_DIR file). */
export class SqliteCallStore implements CallStore {
  readonly #db: Db;
  #campaigns: SqliteCampaignStore | undefined;
  readonly #insert;
  readonly #byId;
  readonly #bySid;
  readonly #event;
  readonly #events;
  readonly #turn;
  readonly #turns;
  readonly #idemGet;
  readonly #idemPut;

  constructor(db: Db) {
    this.#db = db;
    this.#insert = db.prepare(`INSERT INTO calls (${NEW_CALL_COLUMNS}) VALUES (${NEW_CALL_COLUMNS.split(',').map(() => '?').join(', ')})`);
    this.#byId = db.prepare('SELECT * FROM calls WHERE id = ?');
    this.#bySid = db.prepare('SELECT * FROM calls WHERE call_sid = ?');
    this.#event = db.prepare('INSERT INTO call_events (call_id, at, type, status, sequence, data) VALUES (?, ?, ?, ?, ?, ?)');
    this.#events = db.prepare('SELECT * FROM call_events WHERE call_id = ? ORDER BY id');
    this.#turn = db.prepare('INSERT OR REPLACE INTO transcript_turns (call_id, source, seq, role, text, at) VALUES (?, ?, ?, ?, ?, ?)');
    this.#turns = db.prepare('SELECT * FROM transcript_turns WHERE call_id = ? AND source = ? ORDER BY seq');
    this.#idemGet = db.prepare('SELECT * FROM idempotency_keys WHERE key = ?');
    this.#idemPut = db.prepare('INSERT INTO idempotency_keys (key, request_hash, call_id, created_at) VALUES (?, ?, ?, ?) ON CONFLICT (key) DO NOTHING');
  }

  /** Runs `fn` once no transaction of another task is open (at once inside one's own). */
  #run<T>(fn: () => T): Promise<T> {
    return gateOf(this.#db).run(fn);
  }

  /** SQLite: the stores seen inside are these same objects (the transaction is the connection's). */
  transaction<T>(fn: (tx: TxStores) => Promise<T>): Promise<T> {
    this.#campaigns ??= new SqliteCampaignStore(this.#db);
    const campaigns = this.#campaigns;
    return gateOf(this.#db).transaction(() => fn({ calls: this, campaigns }));
  }

  async insert(c: NewCall, now = Date.now()): Promise<CallRow> {
    return this.#run(() => {
      const id = c.id ?? newId('call', now);
      const write = (): void => {
        this.#insert.run(...newCallValues(c, id, now));
        // Set apart (rarely given), so the insert also works on a database from before recordings.
        if (c.record !== undefined) this.#db.prepare('UPDATE calls SET record = ? WHERE id = ?').run(c.record ? 1 : 0, id);
        this.#event.run(id, now, 'created', c.status, null, null);
      };
      if (gateOf(this.#db).inTransaction) write();
      else this.#db.transaction(write)();
      const row = this.#getSync(id);
      if (row === undefined) throw new Error(`call ${id} vanished after insert`);
      return row;
    });
  }

  #getSync(id: string): CallRow | undefined {
    const r = this.#byId.get(id) as Raw | undefined;
    return r === undefined ? undefined : toCallRow(r);
  }

  get(id: string): Promise<CallRow | undefined> {
    return this.#run(() => {
      return this.#getSync(id);
    });
  }

  getBySid(callSid: string): Promise<CallRow | undefined> {
    return this.#run(() => {
      const r = this.#bySid.get(callSid) as Raw | undefined;
      return r === undefined ? undefined : toCallRow(r);
    });
  }

  update(id: string, patch: CallPatch, where?: CallCondition): Promise<CallRow | undefined> {
    return this.#run(() => {
      const sets = patchColumns(patch);
      const cond = conditionColumns(where);
      if (sets.length === 0) {
        if (cond.sql.length === 0) return this.#getSync(id);
        const r = this.#db.prepare(`SELECT * FROM calls WHERE id = ? AND ${cond.sql.join(' AND ')}`).get(id, ...cond.values) as Raw | undefined;
        return r === undefined ? undefined : toCallRow(r);
      }
      const sql = `UPDATE calls SET ${sets.map(([c]) => `${c} = ?`).join(', ')} WHERE id = ?${cond.sql.map((s) => ` AND ${s}`).join('')} RETURNING *`;
      const r = this.#db.prepare(sql).get(...sets.map(([, v]) => v), id, ...cond.values) as Raw | undefined;
      return r === undefined ? undefined : toCallRow(r);
    });
  }

  event(callId: string, type: string, status: string | null, sequence: number | null, data: Record<string, unknown> | null, at = Date.now()): Promise<void> {
    return this.#run(() => {
      this.#event.run(callId, at, type, status, sequence, data === null ? null : JSON.stringify(data));
    });
  }

  hasEvent(callId: string, type: string): Promise<boolean> {
    return this.#run(() => {
      return this.#db.prepare('SELECT 1 FROM call_events WHERE call_id = ? AND type = ? LIMIT 1').get(callId, type) !== undefined;
    });
  }

  events(callId: string): Promise<CallEvent[]> {
    return this.#run(() => {
      return (this.#events.all(callId) as Raw[]).map(toCallEvent);
    });
  }

  appendTranscriptTurn(callId: string, source: 'live' | 'playai', seq: number, turn: { role: string; text: string; at: number }): Promise<void> {
    return this.#run(() => {
      this.#turn.run(callId, source, seq, turn.role, turn.text, turn.at);
    });
  }

  saveTranscript(callId: string, source: 'live' | 'playai', turns: Array<{ role: string; text: string; at: number }>): Promise<void> {
    return this.#run(() => {
      const write = (): void => turns.forEach((t, i) => this.#turn.run(callId, source, i, t.role, t.text, t.at));
      if (gateOf(this.#db).inTransaction) write();
      else this.#db.transaction(write)();
    });
  }

  transcript(callId: string, source: 'live' | 'playai'): Promise<TranscriptTurnRow[]> {
    return this.#run(() => {
      return (this.#turns.all(callId, source) as Raw[]).map((r) => toTurn(source, r));
    });
  }

  list(f: CallListFilter): Promise<CallRow[]> {
    return this.#run(() => {
      const { text, values } = callListSql(f);
      return (this.#db.prepare(text).all(...values) as Raw[]).map(toCallRow);
    });
  }

  listByContact(campaignId: string, contactId: string): Promise<CallRow[]> {
    return this.#run(() => {
      return (this.#db.prepare('SELECT * FROM calls WHERE campaign_id = ? AND contact_id = ? ORDER BY id').all(campaignId, contactId) as Raw[]).map(toCallRow);
    });
  }

  countDialedSince(campaignId: string, since: number): Promise<number> {
    return this.#run(() => {
      const r = this.#db
        .prepare("SELECT COUNT(*) AS n FROM calls WHERE campaign_id = ? AND created_at >= ? AND status != 'not-dialed'")
        .get(campaignId, since) as Raw | undefined;
      return Number(r?.n ?? 0);
    });
  }

  unfinished(): Promise<CallRow[]> {
    return this.#run(() => {
      return (this.#db.prepare('SELECT * FROM calls WHERE finalized_at IS NULL ORDER BY id').all() as Raw[]).map(toCallRow);
    });
  }

  clearRecording(id: string): Promise<void> {
    return this.#run(() => {
      this.#db
        .prepare("UPDATE calls SET recording_status = 'deleted', recording_sid = NULL, recording_url = NULL, recording_duration_s = NULL WHERE id = ?")
        .run(id);
    });
  }

  recordingsBefore(before: number, limit: number): Promise<CallRow[]> {
    return this.#run(() => {
      return (
        this.#db
          .prepare(
            "SELECT * FROM calls WHERE recording_backend IS NOT NULL AND recording_started_at < ? AND (recording_status IS NULL OR recording_status NOT IN ('deleted', 'deleting')) ORDER BY recording_started_at LIMIT ?",
          )
          .all(before, limit) as Raw[]
      ).map(toCallRow);
    });
  }

  claimRecordingDeletion(id: string, expected: string | null): Promise<boolean> {
    return this.#run(() => {
      return this.#db.prepare("UPDATE calls SET recording_status = 'deleting' WHERE id = ? AND recording_status IS ?").run(id, expected).changes === 1;
    });
  }

  queued(limit: number): Promise<CallRow[]> {
    return this.#run(() => {
      return (this.#db.prepare("SELECT * FROM calls WHERE status = 'queued' AND campaign_id IS NULL ORDER BY id LIMIT ?").all(limit) as Raw[]).map(toCallRow);
    });
  }

  idempotency(key: string): Promise<{ requestHash: string; callId: string } | undefined> {
    return this.#run(() => {
      const r = this.#idemGet.get(key) as Raw | undefined;
      return r === undefined ? undefined : { requestHash: String(r.request_hash), callId: String(r.call_id) };
    });
  }

  putIdempotency(key: string, requestHash: string, callId: string, now = Date.now()): Promise<boolean> {
    return this.#run(() => {
      return this.#idemPut.run(key, requestHash, callId, now).changes === 1;
    });
  }

  pruneIdempotency(olderThanMs: number, now = Date.now()): Promise<number> {
    return this.#run(() => {
      return this.#db.prepare('DELETE FROM idempotency_keys WHERE created_at < ?').run(now - olderThanMs).changes;
    });
  }
}
