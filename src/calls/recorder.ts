/**
 * The call record's writer for what happens on the bridge: inbound calls at
 * admission, and every {@link CallJournalEntry} a live session reports. The
 * record itself (one row per call, its events and transcripts) is owned by
 * {@link CallStore}; there is no second, in-memory copy.
 *
 * Writes are async (the store may be Postgres): the entries of one call are
 * applied in the order they were reported, one after the other, and the
 * session never waits for them (nothing here is on the media path).
 *
 * A failed write (disk full, locked database) never reaches the session: it
 * is logged once per minute with the fix, and counted in
 * `playline_store_errors_total`, and the call goes on.
 */
import type { Logger } from 'pino';
import type { CallEvents } from '../events/callEvents.js';
import type { CallRow, CallStore } from '../store/calls.js';
import { errorCode, errorMessage } from '../util/errors.js';
import type { CallJournal, CallJournalEntry } from './journal.js';

/** Most live transcript turns kept per call. */
const MAX_TURNS = 500;
/** Most DTMF events kept per call. */
const MAX_DTMF = 200;
/** Most barge-in events kept per call (the count on `session_ended` is exact). */
const MAX_BARGE_INS = 200;

export interface CallRecorderOptions {
  calls: CallStore;
  log: Logger;
  /** Counts a failed store write (`op` names what was being written). */
  onStoreError?(op: string, err: unknown): void;
  /** Live `call.*` events (`/v1/events`). */
  events?: CallEvents;
  now?: () => number;
}

interface Live {
  id: string;
  turns: number;
  dtmf: number;
  bargeIns: number;
  /** The row as first seen (id, campaign, direction): what events need besides the entry. */
  row: CallRow;
}

export class CallRecorder implements CallJournal {
  readonly #calls: CallStore;
  readonly #log: Logger;
  readonly #o: CallRecorderOptions;
  readonly #now: () => number;
  /** Row ids of calls with a live session here, with their per-call counters. */
  readonly #live = new Map<string, Live>();
  /** Per call: the tail of its writes in progress (entries are applied in order). */
  readonly #chains = new Map<string, Promise<void>>();
  #lastErrorLogAt = -Infinity;

  constructor(opts: CallRecorderOptions) {
    this.#o = opts;
    this.#calls = opts.calls;
    this.#log = opts.log;
    this.#now = opts.now ?? Date.now;
  }

  /** An inbound call admitted at the webhook: its row, with the agent its route chose. */
  inboundAdmitted(call: { callSid: string; from: string; to: string; agentId: string }): Promise<void> {
    return this.#enqueue(call.callSid, 'inbound_admitted', async () => {
      if ((await this.#calls.getBySid(call.callSid)) !== undefined) return;
      const row = await this.#calls.insert({ direction: 'inbound', callSid: call.callSid, to: call.to, from: call.from, agentId: call.agentId, status: 'in-progress' }, this.#now());
      this.#o.events?.started(row);
    });
  }

  /** True when the call has a record (it was admitted or dialed before). A failed read says false. */
  async known(callSid: string): Promise<boolean> {
    try {
      return (await this.#calls.getBySid(callSid)) !== undefined;
    } catch (err) {
      this.#o.onStoreError?.('lookup', err);
      return false;
    }
  }

  record(callSid: string, entry: CallJournalEntry): void {
    const now = this.#now();
    void this.#enqueue(callSid, entry.type, () => this.#apply(callSid, entry, now));
  }

  /** Resolves when every write reported so far is done (tests, shutdown). */
  async flush(): Promise<void> {
    while (this.#chains.size > 0) await Promise.all([...this.#chains.values()]);
  }

  /** Runs `fn` after the call's earlier writes; a failure is counted and logged, never thrown. */
  #enqueue(callSid: string, op: string, fn: () => Promise<void>): Promise<void> {
    const prev = this.#chains.get(callSid) ?? Promise.resolve();
    const next: Promise<void> = prev.then(fn).catch((err: unknown) => this.#failed(op, err));
    const tail = next.finally(() => {
      if (this.#chains.get(callSid) === tail) this.#chains.delete(callSid);
    });
    this.#chains.set(callSid, tail);
    return next;
  }

  async #apply(callSid: string, e: CallJournalEntry, now: number): Promise<void> {
    let live = this.#live.get(callSid);
    if (live === undefined) {
      const row = await this.#calls.getBySid(callSid);
      if (row === undefined) return; // a call this bridge never recorded (bare tests)
      live = { id: row.id, turns: (await this.#calls.transcript(row.id, 'live')).length, dtmf: 0, bargeIns: 0, row };
      this.#live.set(callSid, live);
    }
    const id = live.id;
    const ev = this.#o.events;
    switch (e.type) {
      case 'stream_started':
        await this.#calls.event(id, 'stream_started', null, null, { streamSid: e.streamSid }, now);
        ev?.updated(live.row, 'stream_started', { streamSid: e.streamSid });
        return;
      case 'agent_ready':
        await this.#calls.update(id, { conversationId: e.conversationId });
        await this.#calls.event(id, e.reconnected ? 'agent_reconnected' : 'agent_ready', null, null, { conversationId: e.conversationId }, now);
        ev?.updated(live.row, e.reconnected ? 'agent_reconnected' : 'agent_ready', { conversationId: e.conversationId });
        return;
      case 'agent_switched':
        await this.#calls.event(id, 'agent_switched', null, null, { from: e.from, to: e.to, why: e.why }, now);
        ev?.updated(live.row, 'agent_switched', { from: e.from, to: e.to, why: e.why });
        return;
      case 'transcript':
        if (live.turns >= MAX_TURNS) return;
        await this.#calls.appendTranscriptTurn(id, 'live', live.turns++, { role: e.role, text: e.text, at: now });
        ev?.transcript(live.row, e.role, e.text);
        return;
      case 'dtmf':
        if (live.dtmf >= MAX_DTMF) return;
        live.dtmf++;
        await this.#calls.event(id, 'dtmf', null, null, { digit: e.digit }, now);
        ev?.updated(live.row, 'dtmf', { digit: e.digit });
        return;
      case 'barge_in':
        ev?.updated(live.row, 'barge_in', { bargeIns: e.count });
        if (live.bargeIns >= MAX_BARGE_INS) return;
        live.bargeIns++;
        await this.#calls.event(id, 'barge_in', null, null, { count: e.count }, now);
        return;
      case 'dtmf_digits':
        if (live.dtmf >= MAX_DTMF) return;
        live.dtmf++;
        await this.#calls.event(id, 'dtmf_digits', null, null, { digits: e.digits, ended: e.ended, delivery: e.delivery }, now);
        ev?.updated(live.row, 'dtmf_digits', { digits: e.digits, ended: e.ended, delivery: e.delivery });
        return;
      case 'tool_called':
        await this.#calls.event(id, 'tool_called', null, null, { tool: e.tool, argsBytes: e.argsBytes }, now);
        ev?.updated(live.row, 'tool_called', { tool: e.tool, argsBytes: e.argsBytes });
        return;
      case 'tool_result': {
        const { type: _type, ...data } = e;
        await this.#calls.event(id, 'tool_result', null, null, data, now);
        ev?.updated(live.row, 'tool_result', data);
        return;
      }
      case 'transfer': {
        const { type: _type, step, ...data } = e;
        await this.#calls.event(id, `transfer_${step}`, null, null, data, now);
        // A caller back with the agent: the transfer's end reason is not the call's.
        if (step === 'returned') await this.#calls.update(id, { endReason: null });
        if (step === 'completed' || step === 'answered') await this.#calls.update(id, { endReason: 'transferred' });
        ev?.updated(live.row, 'transfer', { step, ...data });
        return;
      }
      case 'spoke':
        await this.#calls.event(id, 'spoke', null, null, { kind: e.kind, text: e.text }, now);
        ev?.updated(live.row, 'spoke', { kind: e.kind, text: e.text });
        return;
      case 'session_ended': {
        this.#live.delete(callSid);
        const row = await this.#calls.get(id);
        // The first end reason wins: an API hang-up or a transfer is known before the stream closes.
        await this.#calls.update(id, { sessionEndedAt: now, ...(row === undefined || row.endReason === null ? { endReason: e.endReason } : {}) });
        await this.#calls.event(id, 'session_ended', null, null, { endReason: e.endReason, agentReconnects: e.agentReconnects, bargeIns: e.bargeIns, durationMs: e.durationMs }, now);
        // The media session is over (the call leaves GET /v1/live now); call.ended follows once the call's final status is known.
        ev?.updated(live.row, 'session_ended', { endReason: e.endReason, agentReconnects: e.agentReconnects, bargeIns: e.bargeIns, durationMs: e.durationMs });
        return;
      }
    }
  }

  #failed(op: string, err: unknown): void {
    this.#o.onStoreError?.(op, err);
    const now = this.#now();
    if (now - this.#lastErrorLogAt >= 60_000) {
      this.#lastErrorLogAt = now;
      this.#log.error({ op, err: errorMessage(err) }, storeErrorHint(err));
    }
  }
}

/** One line that says what a failed database write means and what to do about it. */
export function storeErrorHint(err: unknown): string {
  const code = errorCode(err);
  if (code === 'SQLITE_FULL') return 'database write failed: the disk is full; free space on the DATA_DIR volume (calls go on, records may be incomplete)';
  if (code === 'SQLITE_READONLY' || code === 'SQLITE_CANTOPEN') return 'database write failed: DATA_DIR is not writable; fix its permissions (calls go on, records may be incomplete)';
  if (code === 'SQLITE_BUSY' || code === 'SQLITE_LOCKED') return 'database write failed: the database is locked by another process; run one Playline per DATA_DIR';
  return 'database write failed (calls go on, records may be incomplete)';
}
