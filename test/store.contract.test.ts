/**
 * One set of behavioural tests for the records store, run against both backends: SQLite (a
 * file in a temp dir, two connections to it for the races) and Postgres (a throwaway server,
 * see test/testPostgres.ts; two pools for the races).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import postgres from 'postgres';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { CallRow } from '../src/store/calls.js';
import { MIGRATIONS, migrate, openDb } from '../src/store/db.js';
import { migratePostgres, openPostgresStore, PG_MIGRATIONS, redactUrl } from '../src/store/postgres.js';
import { sqliteStore, type Store } from '../src/store/store.js';
import type { WebhookDeliveryRow } from '../src/store/webhookDeliveries.js';
import { FakeDialer } from '../src/testing/fakeDialer.js';
import { eventually, startTestBridge, type TestBridge } from './helpers.js';
import { postgresTestsEnabled, TestPostgres } from './testPostgres.js';

interface Backend {
  /** Two stores on one new, empty database (Postgres: two pools, racing like two processes). */
  open(): Promise<[Store, Store]>;
}

const cleanups: Array<() => Promise<unknown> | unknown> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

// better-sqlite3 waits for SQLite's file lock synchronously, which would stall this one test
// process: the two SQLite stores share one connection (the store's transaction gate is what
// races); across processes, BEGIN IMMEDIATE makes the same statements atomic.
const sqlite: Backend = {
  async open() {
    const dir = mkdtempSync(join(tmpdir(), 'playline-store-'));
    const db = openDb(join(dir, 'playline.db'));
    const a = sqliteStore(db, { keepOpen: true });
    const b = sqliteStore(db, { keepOpen: true });
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }), () => db.close());
    return [a, b];
  },
};

let pg: TestPostgres | undefined;
const pgEnabled = postgresTestsEnabled();
const pgBackend: Backend = {
  async open() {
    if (pg === undefined) throw new Error('Postgres not started');
    const url = await pg.database();
    const a = await openPostgresStore(url, { max: 4 });
    const b = await openPostgresStore(url, { max: 4 });
    cleanups.push(() => a.close(), () => b.close());
    return [a, b];
  },
};

beforeAll(async () => {
  if (pgEnabled) pg = await TestPostgres.start();
}, 60_000);
afterAll(async () => {
  await pg?.stop();
});

const backends: Array<[string, Backend]> = [['sqlite', sqlite], ...(pgEnabled ? ([['postgres', pgBackend]] as Array<[string, Backend]>) : [])];

const T0 = 1_700_000_000_000;
const outbound = (over: Partial<Parameters<Store['calls']['insert']>[0]> = {}): Parameters<Store['calls']['insert']>[0] => ({
  direction: 'outbound',
  to: '+14155550100',
  from: '+12025550100',
  agentId: 'agent-a',
  status: 'queued',
  ...over,
});

function delivery(id: string, over: Partial<WebhookDeliveryRow> = {}): WebhookDeliveryRow {
  return { id, call_id: null, event: 'call.completed', url: 'http://127.0.0.1:9/hook', payload: `{"id":"${id}"}`, status: 'pending', attempts: 0, next_attempt_at: T0, last_status_code: null, last_error: null, created_at: T0, delivered_at: null, ...over };
}

describe.each(backends)('the %s store', (_name, backend) => {
  it('inserts a call with every field and a created event, and reads it back by id and CallSid', async () => {
    const [s] = await backend.open();
    const row = await s.calls.insert(
      outbound({ callSid: 'CA1', prompt: 'p', customGreeting: 'hi', metadata: { a: 1, nested: { b: 'x' } }, machineDetection: true, voicemailAction: 'message', voicemailMessage: 'call back', record: true, attempt: 2, claimedAt: T0 + 5 }),
      T0,
    );
    expect(row).toMatchObject({ callSid: 'CA1', direction: 'outbound', prompt: 'p', customGreeting: 'hi', metadata: { a: 1, nested: { b: 'x' } }, machineDetection: true, voicemailAction: 'message', record: true, attempt: 2, createdAt: T0, claimedAt: T0 + 5, finalizedAt: null, hangupRequested: false });
    expect(await s.calls.get(row.id)).toEqual(row);
    expect(await s.calls.getBySid('CA1')).toEqual(row);
    expect(await s.calls.get('call_missing')).toBeUndefined();
    expect(await s.calls.events(row.id)).toEqual([expect.objectContaining({ type: 'created', status: 'queued', at: T0, data: null })]);
  });

  it('updates only the fields given (booleans, numbers, nulls) and returns the row after', async () => {
    const [s] = await backend.open();
    const row = await s.calls.insert(outbound(), T0);
    const after = await s.calls.update(row.id, { status: 'in-progress', hangupRequested: true, answeredAt: T0 + 1000, recordingDurationS: 12.5, errorMessage: null });
    expect(after).toMatchObject({ status: 'in-progress', hangupRequested: true, answeredAt: T0 + 1000, recordingDurationS: 12.5, to: row.to });
    expect(await s.calls.update(row.id, {})).toEqual(after);
  });

  it('a conditional update happens once: the second finalize of a call finds it finalized and changes nothing', async () => {
    const [s] = await backend.open();
    const row = await s.calls.insert(outbound(), T0);
    expect(await s.calls.update(row.id, { status: 'completed', finalizedAt: T0 + 1 }, { finalizedAt: null })).toMatchObject({ status: 'completed' });
    expect(await s.calls.update(row.id, { status: 'failed', finalizedAt: T0 + 2 }, { finalizedAt: null })).toBeUndefined();
    expect((await s.calls.get(row.id))?.status).toBe('completed');
    expect(await s.calls.update(row.id, {}, { callSid: null })).toMatchObject({ id: row.id });
  });

  it('records events in order with their data, and says whether a call has an event of a type', async () => {
    const [s] = await backend.open();
    const row = await s.calls.insert(outbound(), T0);
    await s.calls.event(row.id, 'status', 'ringing', 3, { durationS: 0 }, T0 + 1);
    await s.calls.event(row.id, 'answered', 'in-progress', null, null, T0 + 2);
    expect((await s.calls.events(row.id)).map((e) => [e.type, e.status, e.sequence, e.data])).toEqual([
      ['created', 'queued', null, null],
      ['status', 'ringing', 3, { durationS: 0 }],
      ['answered', 'in-progress', null, null],
    ]);
    expect(await s.calls.hasEvent(row.id, 'answered')).toBe(true);
    expect(await s.calls.hasEvent(row.id, 'voided')).toBe(false);
  });

  it('keeps transcripts per source in turn order; a turn written again replaces it', async () => {
    const [s] = await backend.open();
    const row = await s.calls.insert(outbound(), T0);
    await s.calls.appendTranscriptTurn(row.id, 'live', 1, { role: 'agent', text: 'second', at: T0 + 2 });
    await s.calls.appendTranscriptTurn(row.id, 'live', 0, { role: 'user', text: 'first', at: T0 + 1 });
    await s.calls.appendTranscriptTurn(row.id, 'live', 1, { role: 'agent', text: 'second, again', at: T0 + 3 });
    await s.calls.saveTranscript(row.id, 'playai', [{ role: 'agent', text: 'a', at: T0 }, { role: 'user', text: 'b', at: T0 + 1 }]);
    expect((await s.calls.transcript(row.id, 'live')).map((t) => [t.seq, t.role, t.text])).toEqual([
      [0, 'user', 'first'],
      [1, 'agent', 'second, again'],
    ]);
    expect((await s.calls.transcript(row.id, 'playai')).map((t) => t.text)).toEqual(['a', 'b']);
  });

  it('lists calls newest first with filters and a cursor; finds a contact\'s attempts, recent dials, unfinished and queued calls', async () => {
    const [s] = await backend.open();
    const a = await s.calls.insert(outbound({ campaignId: 'cmp_1', contactId: 'ct_1', attempt: 1, status: 'completed' }), T0);
    const b = await s.calls.insert(outbound({ campaignId: 'cmp_1', contactId: 'ct_1', attempt: 2, status: 'not-dialed' }), T0 + 10);
    const c = await s.calls.insert(outbound({ to: '+14155550199' }), T0 + 20);
    const web = await s.calls.insert({ direction: 'web', callSid: 'WC1', to: 'agent-a', from: 'browser', agentId: 'agent-a', status: 'initiated' }, T0 + 30);
    await s.calls.update(a.id, { finalizedAt: T0 + 5 });
    expect((await s.calls.list({ limit: 10 })).map((r) => r.id)).toEqual([web.id, c.id, b.id, a.id]);
    expect((await s.calls.list({ limit: 2, before: c.id })).map((r) => r.id)).toEqual([b.id, a.id]);
    expect((await s.calls.list({ limit: 10, campaignId: 'cmp_1', status: 'completed' })).map((r) => r.id)).toEqual([a.id]);
    expect((await s.calls.list({ limit: 10, direction: 'web' })).map((r) => r.id)).toEqual([web.id]);
    expect((await s.calls.list({ limit: 10, to: '+14155550199', since: T0 + 15 })).map((r) => r.id)).toEqual([c.id]);
    expect((await s.calls.listByContact('cmp_1', 'ct_1')).map((r) => r.id)).toEqual([a.id, b.id]);
    expect(await s.calls.countDialedSince('cmp_1', T0)).toBe(1);
    expect((await s.calls.unfinished()).map((r) => r.id)).toEqual([b.id, c.id, web.id]);
    expect((await s.calls.queued(10)).map((r) => r.id)).toEqual([c.id]);
  });

  it('lists old recordings, lets one sweeper claim each, and clears a deleted one', async () => {
    const [s] = await backend.open();
    const old = await s.calls.insert(outbound(), T0);
    const young = await s.calls.insert(outbound(), T0);
    await s.calls.update(old.id, { recordingBackend: 'local', recordingStatus: 'completed', recordingStartedAt: T0, recordingDurationS: 3 });
    await s.calls.update(young.id, { recordingBackend: 'local', recordingStatus: 'completed', recordingStartedAt: T0 + 10_000 });
    expect((await s.calls.recordingsBefore(T0 + 5_000, 10)).map((r) => r.id)).toEqual([old.id]);
    expect(await s.calls.claimRecordingDeletion(old.id, 'in-progress')).toBe(false);
    expect(await s.calls.claimRecordingDeletion(old.id, 'completed')).toBe(true);
    expect(await s.calls.claimRecordingDeletion(old.id, 'completed')).toBe(false);
    expect(await s.calls.recordingsBefore(T0 + 5_000, 10)).toEqual([]);
    await s.calls.clearRecording(old.id);
    expect(await s.calls.get(old.id)).toMatchObject({ recordingStatus: 'deleted', recordingDurationS: null, recordingBackend: 'local' });
    const none = await s.calls.insert(outbound(), T0);
    await s.calls.update(none.id, { recordingBackend: 'twilio', recordingStartedAt: T0 });
    expect(await s.calls.claimRecordingDeletion(none.id, null)).toBe(true);
  });

  it('stores an idempotency key once, forgets old keys, and rolls a transaction back when it throws', async () => {
    const [s] = await backend.open();
    const row = await s.calls.insert(outbound(), T0);
    expect(await s.calls.putIdempotency('k1', 'h1', row.id, T0)).toBe(true);
    expect(await s.calls.putIdempotency('k1', 'h2', 'call_other', T0)).toBe(false);
    expect(await s.calls.idempotency('k1')).toEqual({ requestHash: 'h1', callId: row.id });
    expect(await s.calls.pruneIdempotency(1000, T0 + 500)).toBe(0);
    expect(await s.calls.pruneIdempotency(1000, T0 + 5_000)).toBe(1);
    expect(await s.calls.idempotency('k1')).toBeUndefined();
    await expect(
      s.calls.transaction(async ({ calls, campaigns }) => {
        await calls.insert(outbound({ id: 'call_rolled_back' }), T0);
        await campaigns.dncAdd('+14155550111', null, T0);
        throw new Error('boom');
      }),
    ).rejects.toThrow('boom');
    expect(await s.calls.get('call_rolled_back')).toBeUndefined();
    expect(await s.campaigns.dncHas('+14155550111')).toBe(false);
  });

  it('a write of another task while a transaction is open is not undone when that transaction rolls back', async () => {
    const [s] = await backend.open();
    let entered!: () => void;
    const inside = new Promise<void>((r) => (entered = r));
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    const tx = s.calls.transaction(async ({ campaigns }) => {
      await campaigns.dncAdd('+14155550121', null, T0);
      entered();
      await held;
      throw new Error('rolled back');
    });
    await inside;
    const other = s.campaigns.dncAdd('+14155550122', null, T0);
    release();
    await expect(tx).rejects.toThrow('rolled back');
    expect(await other).toBe(true);
    expect(await s.campaigns.dncHas('+14155550122')).toBe(true);
    expect(await s.campaigns.dncHas('+14155550121')).toBe(false);
  });

  it('creates, lists and moves campaigns through their states, keeping the first start time', async () => {
    const [s] = await backend.open();
    const a = await s.campaigns.create('a', { callsPerSecond: 2 }, T0);
    const b = await s.campaigns.create('b', {}, T0 + 1);
    expect(a).toMatchObject({ name: 'a', status: 'draft', settings: { callsPerSecond: 2 }, startedAt: null });
    await s.campaigns.setStatus(a.id, 'running', {}, T0 + 10);
    await s.campaigns.setStatus(a.id, 'paused', { pauseReason: 'failure_spike', lastError: 'why' }, T0 + 20);
    await s.campaigns.setStatus(a.id, 'running', { pauseReason: null }, T0 + 30);
    expect(await s.campaigns.get(a.id)).toMatchObject({ status: 'running', startedAt: T0 + 10, pauseReason: null, lastError: 'why', updatedAt: T0 + 30 });
    await s.campaigns.setStatus(b.id, 'canceled', {}, T0 + 40);
    expect((await s.campaigns.get(b.id))?.completedAt).toBe(T0 + 40);
    expect((await s.campaigns.list({ limit: 10 })).map((c) => c.id)).toEqual([b.id, a.id]);
    expect((await s.campaigns.list({ limit: 10, status: 'running' })).map((c) => c.id)).toEqual([a.id]);
    expect((await s.campaigns.list({ limit: 10, before: b.id })).map((c) => c.id)).toEqual([a.id]);
    expect((await s.campaigns.byStatus('running')).map((c) => c.id)).toEqual([a.id]);
    expect(await s.campaigns.get('cmp_missing')).toBeUndefined();
  });

  it('adds contacts, merging a repeated number into the first, in chunks that stop when the campaign closes', async () => {
    const [s] = await backend.open();
    const c = await s.campaigns.create('c', {}, T0);
    const r = await s.campaigns.addContacts(c.id, [
      { line: 2, phone: '+14155550100', variables: { name: 'Ann' }, timezone: 'America/New_York' },
      { line: 3, phone: '+14155550101', variables: {} },
      { line: 4, phone: '+14155550100', variables: { name: 'Dup' } },
    ], T0);
    expect(r.added).toBe(2);
    expect(r.merged).toEqual([{ line: 4, phone: '+14155550100', contactId: expect.any(String) }]);
    const first = await s.campaigns.contact(r.merged[0]!.contactId);
    expect(first).toMatchObject({ line: 2, variables: { name: 'Ann' }, timezone: 'America/New_York', mergedLines: [4], state: 'pending', attempts: 0 });
    const again = await s.campaigns.addContacts(c.id, [{ line: 9, phone: '+14155550101', variables: {} }, { line: 10, phone: '+14155550102', variables: {} }], T0);
    expect(again).toMatchObject({ added: 1, merged: [{ line: 9, phone: '+14155550101' }] });
    let looks = 0;
    const chunked = await s.campaigns.addContactsInChunks(c.id, [1, 2, 3, 4, 5].map((i) => ({ phone: `+1415555020${i}`, variables: {} })), 2, async () => looks++ < 2);
    expect(chunked).toMatchObject({ added: 4, stopped: true });
    expect((await s.campaigns.counts(c.id)).total).toBe(7);
    expect(await s.campaigns.delete(c.id)).toBe(true);
    expect(await s.campaigns.contacts(c.id, { limit: 10 })).toEqual([]);
    expect(await s.campaigns.delete(c.id)).toBe(false);
  });

  it('finds due contacts in due-then-file order, updates them (conditionally), counts and cancels them', async () => {
    const [s] = await backend.open();
    const c = await s.campaigns.create('c', {}, T0);
    await s.campaigns.addContacts(c.id, [3, 2, 1].map((i) => ({ line: i + 1, phone: `+141555503${i}0`, variables: { v: String(i) } })), T0);
    const all = await s.campaigns.contacts(c.id, { limit: 10 });
    expect((await s.campaigns.due(c.id, T0, 10)).map((x) => x.line)).toEqual([2, 3, 4]);
    const [x, y, z] = await s.campaigns.due(c.id, T0, 10);
    expect(await s.campaigns.updateContact(x!.id, { nextAttemptAt: T0 + 60_000 }, T0)).toBe(true);
    expect(await s.campaigns.nextDue(c.id)).toBe(0);
    expect(await s.campaigns.updateContact(y!.id, { state: 'dialing', attempts: 1, lastCallId: 'call_1' }, T0, { state: 'pending' })).toBe(true);
    expect(await s.campaigns.updateContact(y!.id, { state: 'dialing', attempts: 2 }, T0, { state: 'pending' })).toBe(false);
    expect(await s.campaigns.updateContact(y!.id, { state: 'done', outcome: 'busy' }, T0, { state: 'dialing', lastCallId: 'call_other' })).toBe(false);
    expect(await s.campaigns.updateContact(y!.id, { state: 'done', outcome: 'busy' }, T0, { state: 'dialing', lastCallId: 'call_1' })).toBe(true);
    expect((await s.campaigns.due(c.id, T0, 10)).map((d) => d.id)).toEqual([z!.id]);
    expect((await s.campaigns.contacts(c.id, { limit: 10, state: 'done', outcome: 'busy' })).map((d) => d.id)).toEqual([y!.id]);
    expect((await s.campaigns.contacts(c.id, { limit: 10, after: all[0]!.id })).length).toBe(2);
    expect(await s.campaigns.counts(c.id)).toEqual({ total: 3, byState: { pending: 2, dialing: 0, done: 1 }, byOutcome: { busy: 1 }, attempts: 1 });
    expect(await s.campaigns.finishAll(c.id, 'canceled', T0)).toBe(2);
    expect(await s.campaigns.nextDue(c.id)).toBeUndefined();
  });

  it('pages results in file order with each contact\'s last attempt, and the variable names used', async () => {
    const [s] = await backend.open();
    const c = await s.campaigns.create('c', {}, T0);
    await s.campaigns.addContacts(c.id, [1, 2, 3].map((i) => ({ line: i, phone: `+141555504${i}0`, variables: { [`k${i}`]: 'x' } })), T0);
    const first = (await s.campaigns.contacts(c.id, { limit: 10 })).find((x) => x.line === 1);
    const call = await s.calls.insert(outbound({ campaignId: c.id, contactId: first!.id, status: 'completed' }), T0);
    await s.calls.update(call.id, { answeredBy: 'human', durationS: 42 });
    await s.campaigns.updateContact(first!.id, { lastCallId: call.id }, T0);
    const page1 = await s.campaigns.resultsPage(c.id, 0, 2);
    expect(page1.map((r) => r.contact.line)).toEqual([1, 2]);
    expect(page1[0]).toMatchObject({ lastStatus: 'completed', answeredBy: 'human', durationS: 42 });
    expect(page1[1]).toMatchObject({ lastStatus: null });
    const page2 = await s.campaigns.resultsPage(c.id, page1[1]!.rowid, 2);
    expect(page2.map((r) => r.contact.line)).toEqual([3]);
    const names = await s.campaigns.variableNamesPage(c.id, 0, 10);
    expect([...names.names].sort()).toEqual(['k1', 'k2', 'k3']);
    expect(names.lastRowid).toBe(page2[0]!.rowid);
  });

  it('keeps a do-not-call list: added once, listed by number with a cursor, removed', async () => {
    const [s] = await backend.open();
    expect(await s.campaigns.dncAdd('+14155550200', 'asked', T0)).toBe(true);
    expect(await s.campaigns.dncAdd('+14155550200', 'again', T0)).toBe(false);
    expect(await s.campaigns.dncAdd('+14155550100', null, T0)).toBe(true);
    expect(await s.campaigns.dncHas('+14155550200')).toBe(true);
    expect(await s.campaigns.dncList({ limit: 10 })).toEqual([
      { phone: '+14155550100', reason: null, createdAt: T0 },
      { phone: '+14155550200', reason: 'asked', createdAt: T0 },
    ]);
    expect((await s.campaigns.dncList({ limit: 10, after: '+14155550100' })).map((r) => r.phone)).toEqual(['+14155550200']);
    expect(await s.campaigns.dncRemove('+14155550200')).toBe(true);
    expect(await s.campaigns.dncRemove('+14155550200')).toBe(false);
    expect(await s.campaigns.dncHas('+14155550200')).toBe(false);
  });

  it('keeps webhook deliveries: claimed with a lease, then delivered, retried, failed and requeued', async () => {
    const [s] = await backend.open();
    await s.webhooks.insert(delivery('whd_1', { call_id: 'call_1' }));
    await s.webhooks.insert(delivery('whd_2', { next_attempt_at: T0 + 10, created_at: T0 + 1 }));
    await s.webhooks.insert(delivery('whd_3', { next_attempt_at: T0 + 99_999, created_at: T0 + 2 }));
    expect(await s.webhooks.get('whd_1')).toEqual(delivery('whd_1', { call_id: 'call_1' }));
    expect(await s.webhooks.nextDueAt()).toBe(T0);
    const claimed = await s.webhooks.claimDue(T0 + 10, 5, T0 + 60_000);
    expect(claimed.map((r) => [r.id, r.next_attempt_at])).toEqual([
      ['whd_1', T0],
      ['whd_2', T0 + 10],
    ]);
    expect(await s.webhooks.claimDue(T0 + 10, 5, T0 + 60_000)).toEqual([]);
    expect((await s.webhooks.get('whd_1'))?.next_attempt_at).toBe(T0 + 60_000);
    await s.webhooks.delivered('whd_1', 1, 200, T0 + 20);
    await s.webhooks.retryLater('whd_2', 1, T0 + 1_000, 500, 'HTTP 500');
    expect(await s.webhooks.get('whd_1')).toMatchObject({ status: 'delivered', attempts: 1, last_status_code: 200, delivered_at: T0 + 20 });
    expect(await s.webhooks.get('whd_2')).toMatchObject({ status: 'pending', attempts: 1, next_attempt_at: T0 + 1_000, last_error: 'HTTP 500' });
    await s.webhooks.failed('whd_2', 2, null, 'timed out');
    expect(await s.webhooks.requeue('whd_1', 'http://new', T0)).toBe(false);
    expect(await s.webhooks.requeue('whd_2', 'http://new', T0 + 5)).toBe(true);
    expect(await s.webhooks.get('whd_2')).toMatchObject({ status: 'pending', attempts: 0, url: 'http://new', next_attempt_at: T0 + 5 });
    expect((await s.webhooks.list({ limit: 10 })).map((r) => r.id)).toEqual(['whd_3', 'whd_2', 'whd_1']);
    expect((await s.webhooks.list({ limit: 10, status: 'delivered', callId: 'call_1' })).map((r) => r.id)).toEqual(['whd_1']);
  });

  it('two processes racing to claim one pending contact: exactly one wins', async () => {
    const [a, b] = await backend.open();
    const c = await a.campaigns.create('c', {}, T0);
    await a.campaigns.addContacts(c.id, [{ phone: '+14155550100', variables: {} }], T0);
    const [ct] = await a.campaigns.contacts(c.id, { limit: 1 });
    for (let round = 0; round < 5; round++) {
      await a.campaigns.updateContact(ct!.id, { state: 'pending' }, T0);
      const claim = (s: Store, n: number) =>
        s.calls.transaction(async ({ calls, campaigns }) => {
          const id = `call_race_${round}_${n}`;
          if (!(await campaigns.updateContact(ct!.id, { state: 'dialing', lastCallId: id }, T0, { state: 'pending' }))) return undefined;
          return calls.insert(outbound({ id, campaignId: c.id, contactId: ct!.id, status: 'claimed' }), T0);
        });
      const results = await Promise.all([claim(a, 1), claim(b, 2), claim(a, 3), claim(b, 4)]);
      const winners = results.filter((r): r is CallRow => r !== undefined);
      expect(winners).toHaveLength(1);
      expect((await b.campaigns.contact(ct!.id))?.lastCallId).toBe(winners[0]!.id);
      expect(await b.calls.listByContact(c.id, ct!.id)).toHaveLength(round + 1);
    }
  });

  it('two processes racing to claim one queued call, and to pick up webhook deliveries: each row goes to one', async () => {
    const [a, b] = await backend.open();
    const row = await a.calls.insert(outbound(), T0);
    const claims = await Promise.all([a, b, a, b].map((s) => s.calls.update(row.id, { status: 'claimed', claimedAt: T0 }, { status: 'queued', hangupRequested: false })));
    expect(claims.filter((r) => r !== undefined)).toHaveLength(1);
    for (let i = 0; i < 20; i++) await a.webhooks.insert(delivery(`whd_${String(i).padStart(2, '0')}`, { created_at: T0 + i }));
    const picks = await Promise.all([a, b, a, b].map((s) => s.webhooks.claimDue(T0, 7, T0 + 60_000)));
    const ids = picks.flat().map((r) => r.id);
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids.length).toBe(20);
  });

  it('two processes storing one idempotency key at once: one stores it, the other is told it is taken', async () => {
    const [a, b] = await backend.open();
    const results = await Promise.all([a, b, a, b].map((s, i) => s.calls.putIdempotency('same-key', `h${i}`, `call_${i}`, T0)));
    expect(results.filter(Boolean)).toHaveLength(1);
  });
});

describe('SQLite migrations', () => {
  it('two processes opening a new file at once apply each migration once', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'playline-migrate-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'playline.db');
    const dbs = [openDb(file), openDb(file)];
    cleanups.push(() => dbs.forEach((d) => d.close()));
    expect(dbs.map((d) => Number(d.pragma('user_version', { simple: true })))).toEqual([MIGRATIONS.length, MIGRATIONS.length]);
    expect(migrate(dbs[0]!)).toBe(0);
  });

  it('refuses a database from a newer Playline, saying to upgrade', () => {
    const db = openDb(':memory:');
    db.pragma(`user_version = ${MIGRATIONS.length + 1}`);
    expect(() => migrate(db)).toThrow(/newer than this Playline.*upgrade Playline/);
    db.close();
  });
});

describe.runIf(pgEnabled)('Postgres migrations', () => {
  it('processes booting at once apply each migration once, under the advisory lock', async () => {
    const url = await pg!.database();
    const pools = [0, 1, 2].map(() => postgres(url, { max: 2, onnotice: () => {} }));
    cleanups.push(() => Promise.all(pools.map((p) => p.end())));
    const applied = await Promise.all(pools.map((p) => migratePostgres(p)));
    expect(applied.sort()).toEqual([0, 0, PG_MIGRATIONS.length]);
    const versions = await pools[0]!`SELECT version FROM playline_schema_migrations ORDER BY version`;
    expect(versions.map((r) => r.version)).toEqual(PG_MIGRATIONS.map((_, i) => i + 1));
  });

  it('refuses a database from a newer Playline, saying to upgrade', async () => {
    const url = await pg!.database();
    const p = postgres(url, { max: 1, onnotice: () => {} });
    cleanups.push(() => p.end());
    await migratePostgres(p);
    await p`INSERT INTO playline_schema_migrations (version, applied_at) VALUES (${PG_MIGRATIONS.length + 1}, 0)`;
    await expect(openPostgresStore(url)).rejects.toThrow(/newer than this Playline.*upgrade Playline/);
  });

  it('an unreachable server fails naming DATABASE_URL, without its password', async () => {
    const err = await openPostgresStore('postgres://u:s3cret@127.0.0.1:1/x', { connectTimeoutS: 2 }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(Error);
    expect(String(err)).toMatch(/DATABASE_URL postgres:\/\/u:\*\*\*@127\.0\.0\.1:1\/x/);
    expect(String(err)).not.toContain('s3cret');
    expect(redactUrl('postgresql://a:b@h/d')).toBe('postgresql://a:***@h/d');
  });
});

describe.runIf(pgEnabled)('two bridges on one Postgres (DATABASE_URL)', () => {
  it('share the call records: an idempotent request replays across bridges, and a queued call is dialed by exactly one of them', async () => {
    const url = await pg!.database();
    const TOKEN = 'api-token-0123456789abcdef';
    const bridges: TestBridge[] = [];
    const dialers = [new FakeDialer('twilio'), new FakeDialer('twilio')];
    for (const dialer of dialers) {
      const store = await openPostgresStore(url, { max: 4 });
      const tb = await startTestBridge({ env: { API_TOKEN: TOKEN, OUTBOUND_MAX_CPS: '50', DEFAULT_CALLER_ID: '+12025550100' }, overrides: { dialer, store } });
      cleanups.push(() => store.close(), () => tb.close());
      bridges.push(tb);
    }
    const [a, b] = bridges as [TestBridge, TestBridge];
    const post = (tb: TestBridge) =>
      tb.bridge.app.inject({
        method: 'POST',
        url: '/v1/calls',
        headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json', 'idempotency-key': 'order-42' },
        payload: JSON.stringify({ to: '+14155550100' }),
      });
    const first = await post(a);
    const again = await post(b);
    expect(first.statusCode).toBe(201);
    expect(again.statusCode).toBe(200);
    const id = JSON.parse(first.body).id as string;
    expect(JSON.parse(again.body).id).toBe(id);
    await eventually(() => dialers[0]!.created.length + dialers[1]!.created.length >= 1, 5000, 'the call dialed');
    await new Promise((r) => setTimeout(r, 1500));
    expect(dialers[0]!.created.length + dialers[1]!.created.length).toBe(1);
    const seen = await b.bridge.app.inject({ method: 'GET', url: `/v1/calls/${id}`, headers: { authorization: `Bearer ${TOKEN}` } });
    expect(JSON.parse(seen.body)).toMatchObject({ id, status: 'dialed' });
  }, 20_000);
});
