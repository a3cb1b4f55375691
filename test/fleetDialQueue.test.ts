/**
 * Outbound dialing through the fleet's BullMQ queue (REDIS_URL), against a real redis-server:
 * several outbound engines (as several processes would) share one Redis and one SQLite file, and
 * one scripted carrier. Real timers: BullMQ's delays, locks and rate limits run on the clock.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { CarrierCall, DialRequest, Dialer } from '../src/outbound/dialer.js';
import { dialJobId } from '../src/outbound/dialQueue.js';
import { OutboundService } from '../src/outbound/service.js';
import { campaignSettingsSchema } from '../src/outbound/settings.js';
import { SessionManager } from '../src/session/manager.js';
import { SqliteCampaignStore, type CampaignStore } from '../src/store/campaigns.js';
import { SqliteCallStore, type CallStore } from '../src/store/calls.js';
import { openDb, type Db } from '../src/store/db.js';
import { FakeDialer } from '../src/testing/fakeDialer.js';
import { fleetTestsEnabled, sleep, TestRedis } from './fleetRedis.js';

const FROM = '+12025550100';
const log = pino({ level: 'silent' });
const enabled = fleetTestsEnabled();
const phone = (i: number): string => `+1415555${String(1000 + i).padStart(4, '0')}`;

/** One process' view of the carrier: every request goes to the shared carrier, tagged with the process. */
class ProcessDialer implements Dialer {
  readonly name = 'twilio';
  /** When set, `create` registers the call at the carrier and never answers (the process dies mid-request). */
  hang: 'after-carrier' | 'before-carrier' | undefined;
  constructor(
    readonly carrier: FakeDialer,
    readonly tag: number,
    readonly log: Array<{ tag: number; callId: string; at: number }>,
  ) {}
  async create(req: DialRequest): Promise<CarrierCall> {
    if (this.hang === 'before-carrier') return new Promise(() => undefined);
    if (this.hang === 'after-carrier') {
      this.carrier.inject(req, 'ringing');
      this.log.push({ tag: this.tag, callId: req.callId, at: Date.now() });
      return new Promise(() => undefined);
    }
    const c = await this.carrier.create(req);
    this.log.push({ tag: this.tag, callId: req.callId, at: Date.now() });
    return c;
  }
  hangup(sid: string) {
    return this.carrier.hangup(sid);
  }
  sayAndHangup(sid: string, text: string) {
    return this.carrier.sayAndHangup(sid, text);
  }
  fetch(sid: string) {
    return this.carrier.fetch(sid);
  }
  findRecent(to: string, from: string, since: number) {
    return this.carrier.findRecent(to, from, since);
  }
}

interface Proc {
  db: Db;
  calls: CallStore;
  campaigns: CampaignStore;
  dialer: ProcessDialer;
  outbound: OutboundService;
  jobs: string[];
}

describe.skipIf(!enabled)('dialing through the fleet queue (REDIS_URL)', () => {
  let redis: TestRedis;
  let dir: string;
  let n = 0;
  let procs: Proc[] = [];
  let carrier: FakeDialer;
  let dials: Array<{ tag: number; callId: string; at: number }>;

  beforeAll(async () => {
    redis = await TestRedis.start();
    dir = mkdtempSync(join(tmpdir(), 'playline-fleetdial-'));
  });
  afterAll(async () => {
    await redis?.stop();
    if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
  });
  afterEach(async () => {
    await Promise.all(procs.map((p) => p.outbound.stop({ force: true })));
    for (const p of procs) p.db.close();
    procs = [];
  });

  /** `count` engines sharing one database file, one Redis prefix and one carrier. */
  function fleet(count: number, opts: { maxCps?: number; leaseMs?: number; claimGraceMs?: number; ownedElsewhere?: (callSid: string) => Promise<boolean> } = {}): Proc[] {
    n++;
    const file = join(dir, `fleet${n}.db`);
    const prefix = `t${n}:`;
    carrier = new FakeDialer('twilio');
    dials = [];
    for (let i = 0; i < count; i++) {
      const db = openDb(file);
      const calls = new SqliteCallStore(db);
      const campaigns = new SqliteCampaignStore(db);
      const dialer = new ProcessDialer(carrier, i, dials);
      const manager = new SessionManager({ maxConcurrentCalls: 100, tokenTtlMs: 10_000, defaultAgentId: 'agent', routes: new Map() });
      const jobs: string[] = [];
      const outbound = new OutboundService({
        calls,
        campaigns,
        dialer,
        manager,
        log,
        publicUrl: `https://p${i}.example.test`,
        defaultFrom: FROM,
        defaultAgentId: 'agent',
        maxCps: opts.maxCps ?? 50,
        ringTimeoutS: 30,
        maxCallS: 3600,
        fleetDial: {
          redisUrl: redis.url,
          prefix,
          leaseMs: opts.leaseMs ?? 2_000,
          pollMs: 200,
          ...(opts.claimGraceMs !== undefined ? { claimGraceMs: opts.claimGraceMs } : {}),
          ...(opts.ownedElsewhere !== undefined ? { ownedElsewhere: opts.ownedElsewhere } : {}),
          holdSlot: async (key, agentId) => manager.holdOutboundSlot(key, agentId),
          onJob: (outcome) => jobs.push(outcome),
        },
      });
      procs.push({ db, calls, campaigns, dialer, outbound, jobs });
    }
    return procs;
  }

  async function campaign(p: Proc, phones: string[], settings: Record<string, unknown> = {}): Promise<string> {
    const c = await p.campaigns.create('fleet', campaignSettingsSchema.parse({ callsPerSecond: 50, maxConcurrent: 100, ...settings }));
    await p.campaigns.addContacts(c.id, phones.map((ph, i) => ({ line: i + 2, phone: ph, variables: {} })));
    return c.id;
  }

  async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (!(await check())) {
      if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
      await sleep(50);
    }
  }

  /** The most dials that reached the carrier within any one second. */
  function maxPerSecond(at: number[]): number {
    const s = [...at].sort((a, b) => a - b);
    let best = 0;
    for (let i = 0, j = 0; i < s.length; i++) {
      while ((s[i] ?? 0) - (s[j] ?? 0) >= 1000) j++;
      best = Math.max(best, i - j + 1);
    }
    return best;
  }

  it('collapses the same attempt enqueued by three processes into one job', async () => {
    const [a, b, c] = fleet(3);
    const id = await campaign(a!, [phone(1), phone(2), phone(3), phone(4)]);
    // Due in 30 s: every process enqueues each contact as a delayed job, none runs yet.
    for (const ct of await a!.campaigns.contacts(id, { limit: 10 })) await a!.campaigns.updateContact(ct.id, { nextAttemptAt: Date.now() + 30_000 });
    await a!.outbound.startCampaign(id);
    await Promise.all([a!.outbound.start(), b!.outbound.start(), c!.outbound.start()]);
    await sleep(1_000);
    const q = redis.client();
    const keys = await q.zrange(`t${n}:bull:dial:delayed`, 0, -1);
    expect(keys.sort()).toEqual(
      (await a!.campaigns.contacts(id, { limit: 10 }))
        .map((ct) => dialJobId({ kind: 'contact', campaignId: id, contactId: ct.id, attempts: 0 }))
        .sort(),
    );
    expect(carrier.created).toHaveLength(0);
  });

  it('holds OUTBOUND_MAX_CPS across three workers at the carrier, and dials every contact exactly once', async () => {
    const ps = fleet(3, { maxCps: 5 });
    const id = await campaign(ps[0]!, Array.from({ length: 15 }, (_, i) => phone(i)));
    await ps[0]!.outbound.startCampaign(id);
    await Promise.all(ps.map((p) => p.outbound.start()));
    await waitFor('15 dials', () => dials.length === 15);
    await sleep(500);
    expect(dials).toHaveLength(15);
    expect(maxPerSecond(dials.map((d) => d.at))).toBeLessThanOrEqual(5);
    const to = carrier.created.map((c) => c.req.to);
    expect(new Set(to).size).toBe(15);
    // The work was shared: more than one process dialed.
    expect(new Set(dials.map((d) => d.tag)).size).toBeGreaterThan(1);
  });

  it("holds a campaign's maxConcurrent across workers, and dials the next contact once an attempt ends", async () => {
    const ps = fleet(3);
    const id = await campaign(ps[0]!, Array.from({ length: 8 }, (_, i) => phone(i)), { maxConcurrent: 3 });
    await ps[0]!.outbound.startCampaign(id);
    await Promise.all(ps.map((p) => p.outbound.start()));
    await waitFor('3 dials', () => dials.length === 3);
    await sleep(1_500);
    expect(dials).toHaveLength(3);
    // The first call ends (its status callback lands on the process that dialed it): one more goes.
    const first = dials[0]!;
    const sid = carrier.created.find((c) => c.req.callId === first.callId)!.sid;
    await ps[first.tag]!.outbound.callbacks.onStatus(first.callId, { callSid: sid, status: 'busy', sequence: 1 });
    await waitFor('a 4th dial', () => dials.length === 4);
    await sleep(1_000);
    expect(dials).toHaveLength(4);
  });

  it('enqueues the retry of a contact as a delayed job with the next attempt in its id', async () => {
    const ps = fleet(2);
    const id = await campaign(ps[0]!, [phone(1)], { retry: { maxAttempts: 2, delaySeconds: 30, on: ['no-answer'] } });
    await ps[0]!.outbound.startCampaign(id);
    await Promise.all(ps.map((p) => p.outbound.start()));
    await waitFor('the first dial', () => dials.length === 1);
    const d = dials[0]!;
    const sid = carrier.created[0]!.sid;
    await ps[d.tag]!.outbound.callbacks.onStatus(d.callId, { callSid: sid, status: 'no-answer', sequence: 1 });
    const contact = (await ps[0]!.campaigns.contacts(id, { limit: 1 }))[0]!;
    expect(contact.state).toBe('pending');
    const jobId = dialJobId({ kind: 'contact', campaignId: id, contactId: contact.id, attempts: 1 });
    const q = redis.client();
    const until = Date.now() + 5_000;
    let score: string | null = null;
    while (score === null && Date.now() < until) {
      score = await q.zscore(`t${n}:bull:dial:delayed`, jobId);
      if (score === null) await sleep(100);
    }
    expect(score).not.toBeNull();
    expect(dials).toHaveLength(1);
  });

  it('hands the job of a process that died after the carrier got its dial to another worker, which ties the call without dialing again', async () => {
    const [a, b] = fleet(2, { leaseMs: 1_000, claimGraceMs: 1_500 });
    a!.dialer.hang = 'after-carrier';
    const id = await campaign(a!, [phone(7)]);
    await a!.outbound.startCampaign(id);
    await a!.outbound.start();
    await waitFor('the dial at the carrier', () => carrier.created.length === 1);
    await a!.outbound.stop({ force: true }); // the process dies mid-request: its job's lock lapses
    await b!.outbound.start();
    await waitFor('the stalled job reconciled', () => b!.jobs.includes('reconciled'));
    const contact = (await b!.campaigns.contacts(id, { limit: 1 }))[0]!;
    const row = (await b!.calls.get(contact.lastCallId!))!;
    expect(row.callSid).toBe(carrier.created[0]!.sid);
    expect(contact.state).toBe('dialing');
    await sleep(1_000);
    expect(carrier.created).toHaveLength(1);
  });

  it('dials, once, the contact of a process that died before the carrier got its dial', async () => {
    const [a, b] = fleet(2, { leaseMs: 1_000, claimGraceMs: 1_500 });
    a!.dialer.hang = 'before-carrier';
    const id = await campaign(a!, [phone(8)]);
    await a!.outbound.startCampaign(id);
    await a!.outbound.start();
    await waitFor('the claim', async () => (await a!.campaigns.contacts(id, { limit: 1 }))[0]?.state === 'dialing');
    await a!.outbound.stop({ force: true });
    await b!.outbound.start();
    await waitFor('the contact dialed by the other process', () => carrier.created.length === 1);
    await sleep(1_500);
    expect(carrier.created).toHaveLength(1);
    expect(dials.map((d) => d.tag)).toEqual([1]);
    const rows = await b!.calls.listByContact(id, (await b!.campaigns.contacts(id, { limit: 1 }))[0]!.id);
    expect(rows.map((r) => r.status)).toEqual(['not-dialed', 'dialed']);
  });

  it("leaves to its owner, at a restart's reconciliation, an inbound call live on another process of the shared database", async () => {
    const live = 'CA' + '1'.repeat(32);
    const gone = 'CA' + '2'.repeat(32);
    const [p] = fleet(1, { ownedElsewhere: async (sid) => sid === live });
    for (const sid of [live, gone]) await p!.calls.insert({ callSid: sid, direction: 'inbound', to: '+14155550100', from: phone(1), agentId: 'agent', status: 'in-progress' });
    await p!.outbound.reconcile();
    const liveRow = (await p!.calls.getBySid(live))!;
    expect(liveRow.sessionEndedAt).toBeNull();
    expect(liveRow.finalizedAt).toBeNull();
    // A call no process owns is settled as before.
    expect((await p!.calls.getBySid(gone))!.finalizedAt).not.toBeNull();
  });

  it("leaves to their owners, at a restart's reconciliation, a browser call live on another process and one whose token may still be redeemed elsewhere", async () => {
    const live = 'WC' + '3'.repeat(32);
    const young = 'WC' + '4'.repeat(32);
    const old = 'WC' + '5'.repeat(32);
    const [p] = fleet(1, { claimGraceMs: 30_000, ownedElsewhere: async (sid) => sid === live });
    const now = Date.now();
    await p!.calls.insert({ callSid: live, direction: 'web', to: 'agent', from: 'browser', agentId: 'agent', status: 'in-progress' }, now - 120_000);
    await p!.calls.update((await p!.calls.getBySid(live))!.id, { answeredAt: now - 119_000 });
    await p!.calls.insert({ callSid: young, direction: 'web', to: 'agent', from: 'browser', agentId: 'agent', status: 'initiated' }, now - 1_000);
    await p!.calls.insert({ callSid: old, direction: 'web', to: 'agent', from: 'browser', agentId: 'agent', status: 'initiated' }, now - 120_000);
    await p!.outbound.reconcile();
    expect((await p!.calls.getBySid(live))!.finalizedAt).toBeNull();
    expect((await p!.calls.getBySid(young))!.finalizedAt).toBeNull();
    // A browser call whose socket never opened, long ago, is settled as before.
    expect((await p!.calls.getBySid(old))!.finalizedAt).not.toBeNull();
  });
});
