/**
 * Calls, their events and transcripts, and idempotency keys.
 *
 * A call row exists for every outbound call from the moment it is requested
 * (or its contact is claimed), for every inbound call the bridge admitted, and
 * for every browser call (`web`) from its `POST /v1/web-calls`.
 * Every state change is also appended to `call_events`.
 */
import { TWILIO_TERMINAL_STATUSES } from '../carrier/twilio/statuses.js';
import type { Db } from './db.js';
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

export class CallStore {
  readonly #db: Db;
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
    this.#insert = db.prepare(`INSERT INTO calls (id, call_sid, direction, to_number, from_number, agent_id, prompt, custom_greeting, metadata,
      machine_detection, voicemail_action, voicemail_message, campaign_id, contact_id, attempt, status, created_at, claimed_at)
      VALUES (@id, @callSid, @direction, @to, @from, @agentId, @prompt, @customGreeting, @metadata,
      @machineDetection, @voicemailAction, @voicemailMessage, @campaignId, @contactId, @attempt, @status, @createdAt, @claimedAt)`);
    this.#byId = db.prepare('SELECT * FROM calls WHERE id = ?');
    this.#bySid = db.prepare('SELECT * FROM calls WHERE call_sid = ?');
    this.#event = db.prepare('INSERT INTO call_events (call_id, at, type, status, sequence, data) VALUES (?, ?, ?, ?, ?, ?)');
    this.#events = db.prepare('SELECT * FROM call_events WHERE call_id = ? ORDER BY id');
    this.#turn = db.prepare('INSERT OR REPLACE INTO transcript_turns (call_id, source, seq, role, text, at) VALUES (?, ?, ?, ?, ?, ?)');
    this.#turns = db.prepare('SELECT * FROM transcript_turns WHERE call_id = ? AND source = ? ORDER BY seq');
    this.#idemGet = db.prepare('SELECT * FROM idempotency_keys WHERE key = ?');
    this.#idemPut = db.prepare('INSERT INTO idempotency_keys (key, request_hash, call_id, created_at) VALUES (?, ?, ?, ?)');
  }

  insert(c: NewCall, now = Date.now()): CallRow {
    const id = c.id ?? newId('call', now);
    this.#insert.run({
      id,
      callSid: c.callSid ?? null,
      direction: c.direction,
      to: c.to,
      from: c.from,
      agentId: c.agentId,
      prompt: c.prompt ?? null,
      customGreeting: c.customGreeting ?? null,
      metadata: c.metadata === undefined ? null : JSON.stringify(c.metadata),
      machineDetection: c.machineDetection === true ? 1 : 0,
      voicemailAction: c.voicemailAction ?? null,
      voicemailMessage: c.voicemailMessage ?? null,
      campaignId: c.campaignId ?? null,
      contactId: c.contactId ?? null,
      attempt: c.attempt ?? null,
      status: c.status,
      createdAt: now,
      claimedAt: c.claimedAt ?? null,
    });
    // Set apart (rarely given), so the insert also works on a database from before recordings.
    if (c.record !== undefined) this.#db.prepare('UPDATE calls SET record = ? WHERE id = ?').run(c.record ? 1 : 0, id);
    this.event(id, 'created', c.status, null, null, now);
    const row = this.get(id);
    if (row === undefined) throw new Error(`call ${id} vanished after insert`);
    return row;
  }

  get(id: string): CallRow | undefined {
    const r = this.#byId.get(id) as Raw | undefined;
    return r === undefined ? undefined : toCallRow(r);
  }

  getBySid(callSid: string): CallRow | undefined {
    const r = this.#bySid.get(callSid) as Raw | undefined;
    return r === undefined ? undefined : toCallRow(r);
  }

  /** Updates the given fields; returns the row after the update. */
  /**
   * Claims a queued API call for dialing: one conditional UPDATE (atomic across processes sharing
   * the database). True when this call claimed it.
   */
  claimQueued(id: string, now = Date.now()): boolean {
    const r = this.#db.prepare("UPDATE calls SET status = 'claimed', claimed_at = ? WHERE id = ? AND status = 'queued' AND hangup_requested = 0").run(now, id);
    return r.changes === 1;
  }

  update(id: string, patch: CallPatch): CallRow | undefined {
    const sets: string[] = [];
    const values: unknown[] = [];
    for (const [k, v] of Object.entries(patch)) {
      const col = CALL_COLUMNS[k];
      if (col === undefined || v === undefined) continue;
      sets.push(`${col} = ?`);
      values.push(typeof v === 'boolean' ? (v ? 1 : 0) : v);
    }
    if (sets.length > 0) this.#db.prepare(`UPDATE calls SET ${sets.join(', ')} WHERE id = ?`).run(...values, id);
    return this.get(id);
  }

  event(callId: string, type: string, status: string | null, sequence: number | null, data: Record<string, unknown> | null, at = Date.now()): void {
    this.#event.run(callId, at, type, status, sequence, data === null ? null : JSON.stringify(data));
  }

  /** True when the call has an event of this type. */
  hasEvent(callId: string, type: string): boolean {
    return this.#db.prepare('SELECT 1 FROM call_events WHERE call_id = ? AND type = ? LIMIT 1').get(callId, type) !== undefined;
  }

  events(callId: string): CallEvent[] {
    return (this.#events.all(callId) as Raw[]).map((r) => ({
      id: Number(r.id),
      at: Number(r.at),
      type: String(r.type),
      status: str(r.status),
      sequence: num(r.sequence),
      data: json<Record<string, unknown>>(r.data),
    }));
  }

  /** Appends one turn to a transcript (`seq` = its index). */
  appendTranscriptTurn(callId: string, source: 'live' | 'playai', seq: number, turn: { role: string; text: string; at: number }): void {
    this.#turn.run(callId, source, seq, turn.role, turn.text, turn.at);
  }

  saveTranscript(callId: string, source: 'live' | 'playai', turns: Array<{ role: string; text: string; at: number }>): void {
    this.#db.transaction(() => {
      turns.forEach((t, i) => this.#turn.run(callId, source, i, t.role, t.text, t.at));
    })();
  }

  transcript(callId: string, source: 'live' | 'playai'): TranscriptTurnRow[] {
    return (this.#turns.all(callId, source) as Raw[]).map((r) => ({
      source,
      seq: Number(r.seq),
      role: String(r.role),
      text: String(r.text),
      at: Number(r.at),
    }));
  }

  list(f: CallListFilter): CallRow[] {
    const where: string[] = [];
    const values: unknown[] = [];
    if (f.status !== undefined) (where.push('status = ?'), values.push(f.status));
    if (f.direction !== undefined) (where.push('direction = ?'), values.push(f.direction));
    if (f.campaignId !== undefined) (where.push('campaign_id = ?'), values.push(f.campaignId));
    if (f.to !== undefined) (where.push('to_number = ?'), values.push(f.to));
    if (f.since !== undefined) (where.push('created_at >= ?'), values.push(f.since));
    if (f.before !== undefined) (where.push('id < ?'), values.push(f.before));
    const sql = `SELECT * FROM calls ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT ?`;
    return (this.#db.prepare(sql).all(...values, f.limit) as Raw[]).map(toCallRow);
  }

  /** Every attempt of a campaign contact, oldest first (uses the `calls_campaign` index). */
  listByContact(campaignId: string, contactId: string): CallRow[] {
    return (this.#db.prepare('SELECT * FROM calls WHERE campaign_id = ? AND contact_id = ? ORDER BY id').all(campaignId, contactId) as Raw[]).map(toCallRow);
  }

  /** A campaign's attempts created at or after `since` that were dialed (not voided). */
  countDialedSince(campaignId: string, since: number): number {
    const r = this.#db
      .prepare("SELECT COUNT(*) AS n FROM calls WHERE campaign_id = ? AND created_at >= ? AND status != 'not-dialed'")
      .get(campaignId, since) as Raw | undefined;
    return Number(r?.n ?? 0);
  }

  /** Calls not finished yet (for restart reconciliation and the stale sweep). */
  unfinished(): CallRow[] {
    return (this.#db.prepare('SELECT * FROM calls WHERE finalized_at IS NULL ORDER BY id').all() as Raw[]).map(toCallRow);
  }

  /** Clears a call's recording fields (retention deleted the audio); `recording_status` says `deleted`. */
  clearRecording(id: string): void {
    this.#db
      .prepare("UPDATE calls SET recording_status = 'deleted', recording_sid = NULL, recording_url = NULL, recording_duration_s = NULL WHERE id = ?")
      .run(id);
  }

  /** Calls with a recording (not deleted) started before `before` (ms), oldest first. */
  recordingsBefore(before: number, limit: number): CallRow[] {
    return (
      this.#db
        .prepare("SELECT * FROM calls WHERE recording_backend IS NOT NULL AND recording_started_at < ? AND (recording_status IS NULL OR recording_status != 'deleted') ORDER BY recording_started_at LIMIT ?")
        .all(before, limit) as Raw[]
    ).map(toCallRow);
  }

  /** Outbound calls waiting to be dialed (single API calls), oldest first. */
  queued(limit: number): CallRow[] {
    return (this.#db.prepare("SELECT * FROM calls WHERE status = 'queued' AND campaign_id IS NULL ORDER BY id LIMIT ?").all(limit) as Raw[]).map(toCallRow);
  }

  idempotency(key: string): { requestHash: string; callId: string } | undefined {
    const r = this.#idemGet.get(key) as Raw | undefined;
    return r === undefined ? undefined : { requestHash: String(r.request_hash), callId: String(r.call_id) };
  }

  putIdempotency(key: string, requestHash: string, callId: string, now = Date.now()): void {
    this.#idemPut.run(key, requestHash, callId, now);
  }

  /** Forgets idempotency keys older than `olderThanMs`. */
  pruneIdempotency(olderThanMs: number, now = Date.now()): number {
    return this.#db.prepare('DELETE FROM idempotency_keys WHERE created_at < ?').run(now - olderThanMs).changes;
  }

  transaction<T>(fn: () => T): T {
    return this.#db.transaction(fn)();
  }
}
