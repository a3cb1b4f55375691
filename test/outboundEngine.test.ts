/**
 * The pieces of the outbound engine, in process, on a virtual clock: the dial
 * loop, carrier callbacks, finalization, reconciliation and attempt
 * bookkeeping, over an in-memory database and a scripted carrier. No HTTP, no
 * sockets: what the engine decides, exactly when it decides it.
 */
import pino from 'pino';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { EndReason } from '../src/calls/journal.js';
import { Attempts } from '../src/outbound/attempts.js';
import { DialError, type CarrierCall } from '../src/outbound/dialer.js';
import { OutboundService, type OutboundOptions } from '../src/outbound/service.js';
import { campaignSettingsSchema } from '../src/outbound/settings.js';
import { SessionManager, type ManagedSession, type Slot } from '../src/session/manager.js';
import { SqliteCampaignStore } from '../src/store/campaigns.js';
import { SqliteCallStore } from '../src/store/calls.js';
import { openDb, type Db } from '../src/store/db.js';
import { FakeDialer } from '../src/testing/fakeDialer.js';

const FROM = '+12025550100';
const log = pino({ level: 'silent' });

/** A store error as better-sqlite3 throws it when the disk is full. */
function diskFull(): Error {
  return Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
}

interface Engine {
  db: Db;
  calls: SqliteCallStore;
  campaigns: SqliteCampaignStore;
  dialer: FakeDialer;
  manager: SessionManager;
  outbound: OutboundService;
  storeErrors: string[];
  webhooks: Array<{ event: string; callId: string | null }>;
}

function engine(opts: { db?: Db; dialer?: FakeDialer; maxCps?: number; maxCalls?: number; agentLimits?: Map<string, number>; extra?: Partial<OutboundOptions> } = {}): Engine {
  const db = opts.db ?? openDb(':memory:');
  const calls = new SqliteCallStore(db);
  const campaigns = new SqliteCampaignStore(db);
  const dialer = opts.dialer ?? new FakeDialer('twilio');
  const manager = new SessionManager({ maxConcurrentCalls: opts.maxCalls ?? 20, tokenTtlMs: 10_000, defaultAgentId: 'agent', routes: new Map(), ...(opts.agentLimits !== undefined ? { agentLimits: opts.agentLimits } : {}) });
  const storeErrors: string[] = [];
  const webhooks: Engine['webhooks'] = [];
  const outbound = new OutboundService({
    calls,
    campaigns,
    dialer,
    manager,
    log,
    publicUrl: 'https://voice.example.test',
    defaultFrom: FROM,
    defaultAgentId: 'agent',
    maxCps: opts.maxCps ?? 10,
    ringTimeoutS: 30,
    maxCallS: 3600,
    pollMs: 200,
    onStoreError: (op) => storeErrors.push(op),
    webhooks: { enqueue: async (event, callId) => (webhooks.push({ event, callId }), 'd1') },
    ...opts.extra,
  });
  return { db, calls, campaigns, dialer, manager, outbound, storeErrors, webhooks };
}

async function campaign(e: Engine, phones: string[], settings: Record<string, unknown> = {}): Promise<string> {
  const c = await e.campaigns.create('test', campaignSettingsSchema.parse({ callsPerSecond: 10, maxConcurrent: 10, ...settings }));
  await e.campaigns.addContacts(c.id, phones.map((phone, i) => ({ line: i + 2, phone, variables: {} })));
  await e.outbound.startCampaign(c.id);
  return c.id;
}

const phone = (i: number): string => `+1415555${String(1000 + i).padStart(4, '0')}`;

/** A live session stand-in that records how it was ended. */
function fakeSession(callSid: string, slot: Slot): ManagedSession & { closes: EndReason[] } {
  const closes: EndReason[] = [];
  return {
    callSid,
    slot,
    agentConnected: true,
    agentConnectedOnce: true,
    agentProvider: 'playai',
    streamDead: false,
    closes,
    close: (reason) => closes.push(reason),
    endWithGoodbye: (reason) => closes.push(reason),
    sweep: () => {},
  };
}

let engines: Engine[] = [];
beforeEach(() => {
  vi.useFakeTimers({ now: Date.parse('2026-12-01T15:00:00Z') });
});
afterEach(async () => {
  for (const e of engines) await e.outbound.stop();
  engines = [];
  vi.useRealTimers();
});
const track = (e: Engine): Engine => (engines.push(e), e);

describe('dial loop', () => {
  it('paces a campaign at its callsPerSecond on the virtual clock, within the account rate', async () => {
    const e = track(engine({ maxCps: 10 }));
    const id = await campaign(e, [1, 2, 3, 4, 5, 6].map(phone), { callsPerSecond: 2 });
    await e.outbound.start();
    await vi.advanceTimersByTimeAsync(3_000);
    const at = e.dialer.created.map((c) => c.at);
    expect(at.length).toBeGreaterThanOrEqual(5);
    for (let i = 1; i < at.length; i++) expect(at[i]! - at[i - 1]!).toBeGreaterThanOrEqual(500);
    expect(await e.outbound.progress(id)).toMatchObject({ dialsLastMinute: at.length, activeCalls: at.length });
    // A minute later the dials are no longer recent.
    for (const c of e.dialer.created) await e.outbound.callbacks.onStatus(c.req.callId, { callSid: c.sid, status: 'completed', sequence: 1 });
    await vi.advanceTimersByTimeAsync(61_000);
    expect((await e.outbound.progress(id)).dialsLastMinute).toBe(e.dialer.created.length - at.length);
  });

  it('gives back the slot of a job whose claim could not be written, and dials again by itself once the store accepts writes (disk full)', async () => {
    // The Twilio-mode default account rate: one failure used to be enough to stop dialing for good.
    const e = track(engine({ maxCps: 1 }));
    const insert = e.calls.insert.bind(e.calls);
    let full = true;
    vi.spyOn(e.calls, 'insert').mockImplementation((...args) => {
      if (full) throw diskFull();
      return insert(...args);
    });
    await campaign(e, [1, 2, 3].map(phone));
    await e.outbound.start();
    await vi.advanceTimersByTimeAsync(10_000);
    expect(e.dialer.created).toHaveLength(0);
    expect(e.storeErrors.length).toBeGreaterThan(0);
    expect(e.storeErrors.every((op) => op === 'dial_claim')).toBe(true);
    // Nothing is held for a dial that never happened.
    expect(e.manager.usedSlots).toBe(0);
    expect(e.manager.outboundSlots).toBe(0);
    expect(e.outbound.stats.held).toBe(0);
    // The disk is freed: dialing resumes without a restart, pause or resume.
    full = false;
    await vi.advanceTimersByTimeAsync(40_000);
    expect(e.dialer.created.map((c) => c.req.to).sort()).toEqual([1, 2, 3].map(phone));
  });

  it('dials a single API call queued while the store was failing, once it recovers', async () => {
    const e = track(engine({ maxCps: 1 }));
    await e.outbound.start();
    const update = e.calls.update.bind(e.calls);
    let full = true;
    vi.spyOn(e.calls, 'update').mockImplementation((...args) => {
      if (full) throw diskFull();
      return update(...args);
    });
    const { call } = await e.outbound.createCall({ to: phone(1) });
    await vi.advanceTimersByTimeAsync(5_000);
    expect(e.dialer.created).toHaveLength(0);
    expect(e.manager.usedSlots).toBe(0);
    full = false;
    await vi.advanceTimersByTimeAsync(35_000);
    expect(e.dialer.created.map((c) => c.req.callId)).toEqual([call.id]);
    expect((await e.calls.get(call.id))?.status).toBe('dialed');
  });

  it('keeps dialing when the CallSid of a placed call cannot be stored, and ties the call back when its callback comes', async () => {
    const e = track(engine());
    await e.outbound.start();
    const { call } = await e.outbound.createCall({ to: phone(1) });
    const update = e.calls.update.bind(e.calls);
    const spy = vi.spyOn(e.calls, 'update').mockImplementation((id, patch) => {
      if (patch.callSid !== undefined) throw diskFull();
      return update(id, patch);
    });
    await vi.advanceTimersByTimeAsync(1_000);
    expect(e.dialer.created).toHaveLength(1);
    expect(e.storeErrors).toContain('dial_placed');
    spy.mockRestore();
    const sid = e.dialer.created[0]!.sid;
    await e.outbound.callbacks.onStatus(call.id, { callSid: sid, status: 'ringing', sequence: 1 });
    expect((await e.calls.get(call.id))?.callSid).toBe(sid);
  });
});

describe('review fixes: resources and ordering under faults', () => {
  it('connects an outbound call whose in-progress callback arrived before its TwiML request', async () => {
    const e = track(engine());
    await e.outbound.start();
    const { call } = await e.outbound.createCall({ to: phone(1) });
    await vi.advanceTimersByTimeAsync(500);
    const sid = e.dialer.created[0]!.sid;
    await e.outbound.callbacks.onStatus(call.id, { callSid: sid, status: 'ringing', sequence: 1 });
    await e.outbound.callbacks.onStatus(call.id, { callSid: sid, status: 'in-progress', sequence: 2 });
    const answer = await e.outbound.callbacks.answer(call.id, sid);
    expect(answer.ok).toBe(true);
    // Its held slot goes with it; a second TwiML request is still refused.
    expect(answer.ok && answer.slot !== undefined).toBe(true);
    expect(await e.outbound.callbacks.answer(call.id, sid)).toEqual({ ok: false, why: 'duplicate' });
  });

  it('does not dial again an API call hung up while its dial was in flight and then refused with 20429', async () => {
    const e = track(engine());
    await e.outbound.start();
    e.dialer.createDelayMs = 1_000;
    e.dialer.failNext.push(new DialError('rate-limited', 'Too many requests', 20429, 429));
    const { call } = await e.outbound.createCall({ to: phone(1) });
    await vi.advanceTimersByTimeAsync(100);
    await e.outbound.hangupCall(call.id);
    await vi.advanceTimersByTimeAsync(60_000);
    expect(e.dialer.requests).toHaveLength(1);
    expect(await e.calls.get(call.id)).toMatchObject({ status: 'canceled', outcome: 'canceled', endReason: 'api_hangup' });
    expect(e.manager.usedSlots).toBe(0);
  });

  it('ends a contact as canceled, not pending, when its in-flight dial is refused after the campaign was canceled', async () => {
    const e = track(engine());
    const id = await campaign(e, [phone(1)]);
    await e.outbound.start();
    e.dialer.createDelayMs = 1_000;
    e.dialer.failNext.push(new DialError('rate-limited', 'Too many requests', 20429, 429));
    await vi.advanceTimersByTimeAsync(100);
    await e.outbound.cancelCampaign(id);
    await vi.advanceTimersByTimeAsync(5_000);
    expect((await e.campaigns.contacts(id, { limit: 1 }))[0]).toMatchObject({ state: 'done', outcome: 'canceled' });
    expect(e.dialer.requests).toHaveLength(1);
  });

  it('notes a status callback of another call of the same call id without applying it, and leaves the live call alone', async () => {
    const e = track(engine());
    await e.outbound.start();
    const { call } = await e.outbound.createCall({ to: phone(1) });
    await vi.advanceTimersByTimeAsync(500);
    const sid = e.dialer.created[0]!.sid;
    await e.outbound.callbacks.onStatus(call.id, { callSid: 'CA' + 'f'.repeat(32), status: 'completed', sequence: 5 });
    expect(await e.calls.get(call.id)).toMatchObject({ callSid: sid, finalizedAt: null });
    expect((await e.calls.events(call.id)).map((ev) => ev.type)).toContain('status_other_call');
  });

  it('keeps dialing other agents while one agent is at its AGENT_LIMITS cap', async () => {
    const e = track(engine({ agentLimits: new Map([['capped', 1]]) }));
    await e.outbound.start();
    await e.outbound.createCall({ to: phone(1), agentId: 'capped' });
    await e.outbound.createCall({ to: phone(2), agentId: 'capped' });
    await e.outbound.createCall({ to: phone(3), agentId: 'other' });
    const id = await campaign(e, [phone(4)], { agentId: 'other' });
    await vi.advanceTimersByTimeAsync(3_000);
    const dialedTo = e.dialer.requests.map((r) => r.to);
    // One call of the capped agent (its cap is 1), and everything of the other agent.
    expect(dialedTo).toHaveLength(3);
    expect(dialedTo.filter((to) => to === phone(1) || to === phone(2))).toHaveLength(1);
    expect(dialedTo).toEqual(expect.arrayContaining([phone(3), phone(4)]));
    expect((await e.campaigns.contacts(id, { limit: 1 }))[0]?.state).toBe('dialing');
  });

  it('does not start dialing when stopped while the startup reconcile was still asking the carrier', async () => {
    const before = track(engine());
    await before.outbound.start();
    await before.outbound.createCall({ to: phone(1) });
    before.dialer.create = () => new Promise(() => {});
    await vi.advanceTimersByTimeAsync(500);
    void before.outbound.stop();
    engines = engines.filter((x) => x !== before);
    const dialer = new FakeDialer('twilio');
    const list = dialer.findRecent.bind(dialer);
    dialer.findRecent = async (...args) => {
      await new Promise((r) => setTimeout(r, 2_000));
      return list(...args);
    };
    const e = engine({ db: before.db, dialer });
    const started = e.outbound.start();
    await vi.advanceTimersByTimeAsync(500);
    const stopped = e.outbound.stop();
    await vi.advanceTimersByTimeAsync(30_000);
    await started;
    await stopped;
    expect(dialer.requests).toHaveLength(0);
  });

  it('still sends the post-call webhook when the campaign bookkeeping after a finalize fails', async () => {
    const e = track(engine());
    const id = await campaign(e, [phone(1)]);
    await e.outbound.start();
    await vi.advanceTimersByTimeAsync(500);
    const c = e.dialer.created[0]!;
    vi.spyOn(e.campaigns, 'counts').mockImplementation(() => {
      throw Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });
    });
    await e.outbound.callbacks.onStatus(c.req.callId, { callSid: c.sid, status: 'completed', sequence: 1 });
    await vi.advanceTimersByTimeAsync(10);
    expect(e.webhooks).toEqual([{ event: 'call.completed', callId: c.req.callId }]);
    expect(e.storeErrors).toContain('campaign_progress');
    vi.restoreAllMocks();
    expect((await e.calls.get(c.req.callId))?.finalizedAt).not.toBeNull();
    expect(id).toBeDefined();
  });
});

describe('carrier callbacks', () => {
  it('applies status callbacks by SequenceNumber, finalizes once, and ends a live session exactly once', async () => {
    const e = track(engine());
    await e.outbound.start();
    const { call } = await e.outbound.createCall({ to: phone(1) });
    await vi.advanceTimersByTimeAsync(500);
    const sid = e.dialer.created[0]!.sid;
    const answer = await e.outbound.callbacks.answer(call.id, sid);
    expect(answer.ok).toBe(true);
    const admitted = e.manager.admit({ callSid: sid, from: FROM, to: phone(1), direction: 'outbound-api' }, answer.ok ? answer : undefined);
    if (!admitted.ok) throw new Error('not admitted');
    const claim = e.manager.claim(admitted.token, sid);
    if (!claim.ok) throw new Error('not claimed');
    const session = fakeSession(sid, claim.reservation.slot);
    e.manager.register(session);
    await e.outbound.callbacks.onStatus(call.id, { callSid: sid, status: 'completed', sequence: 3, durationS: 12 });
    await e.outbound.callbacks.onStatus(call.id, { callSid: sid, status: 'in-progress', sequence: 2 });
    await e.outbound.callbacks.onStatus(call.id, { callSid: sid, status: 'completed', sequence: 3, durationS: 12 });
    const row = await e.calls.get(call.id);
    expect(row?.status).toBe('completed');
    expect(row?.outcome).toBe('answered');
    expect(row?.durationS).toBe(12);
    expect((await e.calls.events(call.id)).filter((ev) => ev.type === 'finalized')).toHaveLength(1);
    expect((await e.calls.events(call.id)).filter((ev) => ev.type === 'status').map((ev) => ev.sequence)).toEqual([3, 2, 3]);
    expect(session.closes).toEqual(['caller_hangup']);
    await vi.advanceTimersByTimeAsync(10);
    expect(e.webhooks).toEqual([{ event: 'call.completed', callId: call.id }]);
  });

  it('refuses a second TwiML request for an outbound call that is already answered', async () => {
    const e = track(engine());
    await e.outbound.start();
    const { call } = await e.outbound.createCall({ to: phone(1) });
    await vi.advanceTimersByTimeAsync(500);
    const sid = e.dialer.created[0]!.sid;
    expect((await e.outbound.callbacks.answer(call.id, sid)).ok).toBe(true);
    expect(await e.outbound.callbacks.answer(call.id, sid)).toEqual({ ok: false, why: 'duplicate' });
    expect(await e.outbound.callbacks.answer(call.id, 'CA' + 'e'.repeat(32))).toEqual({ ok: false, why: 'gone' });
  });
});

describe('finalization', () => {
  it('gives a busy contact another attempt after the retry delay, and completes the campaign after the last outcome', async () => {
    const e = track(engine());
    const id = await campaign(e, [phone(1)], { retry: { maxAttempts: 2, on: ['busy'], delaySeconds: 60 } });
    await e.outbound.start();
    await vi.advanceTimersByTimeAsync(500);
    const first = e.dialer.created[0]!;
    await e.outbound.callbacks.onStatus(first.req.callId, { callSid: first.sid, status: 'busy', sequence: 1 });
    const contact = (await e.campaigns.contacts(id, { limit: 1 }))[0]!;
    expect(contact.state).toBe('pending');
    expect(contact.nextAttemptAt).toBe(Date.now() + 60_000);
    await vi.advanceTimersByTimeAsync(59_000);
    expect(e.dialer.created).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(2_000);
    expect(e.dialer.created).toHaveLength(2);
    const second = e.dialer.created[1]!;
    await e.outbound.callbacks.onStatus(second.req.callId, { callSid: second.sid, status: 'busy', sequence: 1 });
    expect(await e.campaigns.contact(contact.id)).toMatchObject({ state: 'done', outcome: 'busy', attempts: 2 });
    expect((await e.campaigns.get(id))?.status).toBe('completed');
  });

  it('pauses a campaign when failed attempts spike', async () => {
    const e = track(engine());
    const id = await campaign(e, [1, 2, 3, 4, 5, 6].map(phone), { retry: { maxAttempts: 1 }, failurePause: { threshold: 0.5, minCalls: 4, windowSeconds: 60 } });
    await e.outbound.start();
    await vi.advanceTimersByTimeAsync(1_000);
    for (const c of e.dialer.created.slice(0, 4)) await e.outbound.callbacks.onStatus(c.req.callId, { callSid: c.sid, status: 'failed', sequence: 1 });
    expect(await e.campaigns.get(id)).toMatchObject({ status: 'paused', pauseReason: 'failure_spike' });
  });
});

describe('reconciliation after a restart', () => {
  /**
   * A contact whose first attempt ended busy and whose second attempt was
   * placed at the carrier, then the process died before it learned the
   * CallSid. Returns the restarted engine (same database) with a carrier whose
   * list reads are slow.
   */
  async function crashedSecondAttempt(listDelayMs: number): Promise<{ e: Engine; id: string; callId: string; call: CarrierCall }> {
    const before = track(engine());
    const id = await campaign(before, [phone(1)], { retry: { maxAttempts: 3, on: ['busy'], delaySeconds: 1 } });
    await before.outbound.start();
    await vi.advanceTimersByTimeAsync(500);
    const first = before.dialer.created[0]!;
    await before.outbound.callbacks.onStatus(first.req.callId, { callSid: first.sid, status: 'busy', sequence: 1 });
    // Attempt 2: the request reaches the carrier, and the process dies before the answer comes.
    before.dialer.create = (req) => {
      before.dialer.requests.push(req);
      return new Promise(() => {});
    };
    await vi.advanceTimersByTimeAsync(1_500);
    const callId = before.dialer.requests[1]!.callId;
    expect(await before.calls.get(callId)).toMatchObject({ status: 'claimed', callSid: null });
    // kill -9: the loop stops, nothing in flight ever completes.
    void before.outbound.stop();
    engines = engines.filter((x) => x !== before);
    // The carrier did place it.
    const dialer = new FakeDialer('twilio');
    const call = dialer.inject(before.dialer.requests[1]!, 'ringing');
    const findRecent = dialer.findRecent.bind(dialer);
    dialer.findRecent = async (...args) => {
      await new Promise((r) => setTimeout(r, listDelayMs));
      return findRecent(...args);
    };
    return { e: track(engine({ db: before.db, dialer })), id, callId, call };
  }

  it('does not void an attempt that a callback tied to its call while the carrier list was being read, and dials nobody twice', async () => {
    const { e, id, callId, call } = await crashedSecondAttempt(2_500);
    const started = e.outbound.start();
    // The callee answers during the slow lookup: TwiML request, then the answered callback.
    await vi.advanceTimersByTimeAsync(1_000);
    call.status = 'in-progress';
    expect((await e.outbound.callbacks.answer(callId, call.sid)).ok).toBe(true);
    await e.outbound.callbacks.onStatus(callId, { callSid: call.sid, status: 'in-progress', sequence: 2 });
    await vi.advanceTimersByTimeAsync(2_000);
    await started;
    const row = await e.calls.get(callId);
    expect(row).toMatchObject({ callSid: call.sid, status: 'in-progress', finalizedAt: null });
    expect(row?.outcome).toBeNull();
    expect((await e.calls.events(callId)).some((ev) => ev.type === 'voided')).toBe(false);
    const contact = (await e.campaigns.contacts(id, { limit: 1 }))[0]!;
    expect(contact).toMatchObject({ state: 'dialing', attempts: 2, lastCallId: callId });
    // Nobody is dialed again while the call is live.
    await vi.advanceTimersByTimeAsync(30_000);
    expect(e.dialer.requests).toHaveLength(0);
  });

  it('does not mark a call not-dialed when its completed callback landed just before the carrier list answered', async () => {
    const { e, callId, call } = await crashedSecondAttempt(1_000);
    const started = e.outbound.start();
    await vi.advanceTimersByTimeAsync(978);
    call.status = 'completed';
    await e.outbound.callbacks.onStatus(callId, { callSid: call.sid, status: 'completed', sequence: 3, durationS: 4 });
    await vi.advanceTimersByTimeAsync(100);
    await started;
    expect(await e.calls.get(callId)).toMatchObject({ status: 'completed', outcome: 'answered' });
    expect((await e.calls.events(callId)).some((ev) => ev.type === 'voided')).toBe(false);
  });

  it('attaches the carrier call found for the attempt when no callback came, and voids an attempt the carrier never got', async () => {
    const found = await crashedSecondAttempt(100);
    const started = found.e.outbound.start();
    await vi.advanceTimersByTimeAsync(200);
    expect(await started).toBeUndefined();
    expect(await found.e.calls.get(found.callId)).toMatchObject({ callSid: found.call.sid, status: 'ringing' });

    const lost = await crashedSecondAttempt(100);
    lost.e.dialer.calls.clear();
    const restarted = lost.e.outbound.start();
    await vi.advanceTimersByTimeAsync(200);
    await restarted;
    expect(await lost.e.calls.get(lost.callId)).toMatchObject({ status: 'not-dialed', outcome: 'not-dialed' });
    // Due again at once, without using up the attempt that never happened: the redial is attempt 2 again.
    expect(lost.e.dialer.requests).toHaveLength(1);
    const redial = await lost.e.calls.get(lost.e.dialer.requests[0]!.callId);
    expect(redial).toMatchObject({ to: phone(1), attempt: 2 });
    expect((await lost.e.campaigns.contacts(lost.id, { limit: 1 }))[0]).toMatchObject({ attempts: 2, lastCallId: redial?.id });
  });

  it('settles a quiet call from the carrier record when its callbacks never come', async () => {
    const e = track(engine());
    await e.outbound.start();
    const { call } = await e.outbound.createCall({ to: phone(1) });
    await vi.advanceTimersByTimeAsync(500);
    const c = e.dialer.created[0]!;
    e.dialer.calls.get(c.sid)!.status = 'no-answer';
    // Ring time (30 s) + 60 s of silence, then the next sweep asks the carrier.
    await vi.advanceTimersByTimeAsync(100_000);
    expect(await e.calls.get(call.id)).toMatchObject({ status: 'no-answer', outcome: 'no-answer' });
    expect(e.manager.usedSlots).toBe(0);
  });
});

describe('reconciliation of other rows', () => {
  it('settles an inbound call whose session died with the previous process from the carrier record', async () => {
    const first = track(engine());
    await first.calls.insert({ direction: 'inbound', callSid: 'CA' + '1'.repeat(32), to: phone(1), from: FROM, agentId: 'agent', status: 'in-progress' });
    const dialer = new FakeDialer('twilio');
    dialer.inject({ callId: 'x', to: phone(1), from: FROM, url: '', statusCallback: '', timeoutS: 30 }, 'completed');
    const sid = [...dialer.calls.keys()][0]!;
    first.db.prepare('UPDATE calls SET call_sid = ?').run(sid);
    const e = track(engine({ db: first.db, dialer }));
    expect(await e.outbound.reconcile()).toMatchObject({ finished: 1 });
    const row = await e.calls.getBySid(sid);
    expect(row).toMatchObject({ status: 'completed', endReason: 'bridge_restarted' });
    expect(row?.finalizedAt).not.toBeNull();
  });

  it('keeps asking about a quiet call while the carrier cannot be reached, and settles it once the carrier answers', async () => {
    const e = track(engine());
    await e.outbound.start();
    const { call } = await e.outbound.createCall({ to: phone(1) });
    await vi.advanceTimersByTimeAsync(500);
    const sid = e.dialer.created[0]!.sid;
    e.dialer.unreachable = true;
    // Ring time (30 s) + 60 s without a word: the sweep asks the carrier, which does not answer.
    await vi.advanceTimersByTimeAsync(100_000);
    expect((await e.calls.get(call.id))?.finalizedAt).toBeNull();
    expect(e.manager.usedSlots).toBe(0);
    e.dialer.calls.get(sid)!.status = 'busy';
    e.dialer.unreachable = false;
    await vi.advanceTimersByTimeAsync(30_000);
    expect(await e.calls.get(call.id)).toMatchObject({ status: 'busy', outcome: 'busy' });
  });

  it('after a restart, fails a followed call the carrier no longer knows, and hangs up an answered call whose TwiML request never reached us', async () => {
    const before = track(engine());
    await before.outbound.start();
    const lost = (await before.outbound.createCall({ to: phone(1) })).call;
    const orphan = (await before.outbound.createCall({ to: phone(2) })).call;
    await vi.advanceTimersByTimeAsync(1_000);
    const a = before.dialer.byCallId(lost.id);
    const b = before.dialer.byCallId(orphan.id);
    void before.outbound.stop();
    engines = engines.filter((x) => x !== before);
    const dialer = new FakeDialer('twilio');
    dialer.calls.set(b!.sid, { ...b!, status: 'in-progress' });
    const e = track(engine({ db: before.db, dialer }));
    await e.outbound.start();
    expect(await e.calls.get(lost.id)).toMatchObject({ status: 'failed', endReason: 'lost_by_carrier' });
    expect(a!.sid).not.toBe(b!.sid);
    await vi.advanceTimersByTimeAsync(30_000);
    expect(dialer.hangups).toEqual([b!.sid]);
    expect((await e.calls.get(orphan.id))?.answeredAt).toBeNull();
  });
});

describe('attempt bookkeeping', () => {
  it('releases every held slot at shutdown once tasks settle, and hands a slot to an answered call without releasing it', () => {
    const released: Slot[] = [];
    const a = new Attempts({ releaseSlot: (s) => released.push(s) }, log);
    const s1: Slot = { callSid: 'c1', agentId: 'x', released: false };
    const s2: Slot = { callSid: 'c2', agentId: 'x', released: false };
    a.hold('c1', s1, 0);
    a.hold('c2', s2, 0);
    expect(a.takeHeld('c1')).toBe(s1);
    a.releaseHeld('c2');
    a.releaseHeld('c2');
    expect(released).toEqual([s2]);
    a.recheckAt('x', 100);
    a.recheckAt('y', 50);
    expect(a.dueRechecks(75)).toEqual(['y']);
    expect(a.dueRechecks(100)).toEqual(['x']);
    expect(a.stats).toEqual({ held: 0, inflight: 0, recheck: 0 });
  });
});
