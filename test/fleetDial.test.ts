/**
 * Three real bridge processes (`node dist`) sharing one redis-server (REDIS_URL) and one SQLite
 * file (DATA_DIR) dial one campaign together through the fleet's BullMQ queue, against a fake
 * Twilio REST API (TWILIO_API_URL) that plays every call and sends its callbacks to the process
 * that dialed it. Skipped without redis-server unless PLAYLINE_REQUIRE_REDIS=1.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FakeTwilioRest } from '../src/testing/fakeTwilioRest.js';
import { fleetTestsEnabled, useTestRedis } from './fleetRedis.js';
import { postgresTestsEnabled, TestPostgres } from './testPostgres.js';
import { freePort, killGroup, removeAfterAll, start, useProcessHarness, waitExit, waitFor, waitHealthy, type Child } from './processHarness.js';

const enabled = fleetTestsEnabled();
const TOKEN = 'api-token-0123456789abcdef';
const auth = { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' };

describe.skipIf(!enabled)('a campaign dialed by three processes (REDIS_URL, one database)', () => {
  useProcessHarness();
  const redis = useTestRedis();
  let n = 0;

  /** Bridges on one key prefix and one data directory (or one Postgres: `env.DATABASE_URL`), dialing through `rest`. */
  async function fleet(rest: FakeTwilioRest, ports: number[], env: Record<string, string>, publicUrls: string[] = []): Promise<Child[]> {
    const prefix = `d${++n}:`;
    const dataDir = mkdtempSync(join(tmpdir(), 'playline-fleetdial-'));
    removeAfterAll(dataDir);
    const common = {
      REDIS_URL: redis().url,
      FLEET_PREFIX: prefix,
      FLEET_LEASE_MS: '1500',
      TWILIO_ACCOUNT_SID: rest.accountSid,
      TWILIO_AUTH_TOKEN: rest.authToken,
      TWILIO_API_URL: rest.url,
      API_TOKEN: TOKEN,
      DEFAULT_CALLER_ID: '+14155550100',
      MAX_EVENT_LOOP_DELAY_MS: '0',
      LOG_LEVEL: 'warn',
      ...env,
    };
    const procs: Child[] = [];
    // The first one creates the database; the others open it once it exists.
    for (const [i, port] of ports.entries()) {
      // DATABASE_URL (Postgres): each process has a data directory of its own, as on separate machines.
      const own = env.DATABASE_URL !== undefined;
      const c = await start({ env: { ...common, PUBLIC_URL: publicUrls[i] ?? `http://127.0.0.1:${port}` }, port, ...(own ? {} : { dataDir }) });
      await waitHealthy(c);
      procs.push(c);
    }
    return procs;
  }

  async function createCampaign(c: Child, count: number, settings: Record<string, unknown>): Promise<string> {
    const contacts = Array.from({ length: count }, (_, i) => ({ phone: `+1415555${String(5000 + i)}` }));
    const res = await fetch(`${c.url}/v1/campaigns`, { method: 'POST', headers: auth, body: JSON.stringify({ name: 'fleet', settings, contacts, start: true }) });
    expect(res.status).toBe(201);
    return ((await res.json()) as { campaign: { id: string } }).campaign.id;
  }

  async function campaignOf(c: Child, id: string): Promise<{ status: string; progress: { counts: { byState: Record<string, number> } } }> {
    const r = await fetch(`${c.url}/v1/campaigns/${id}`, { headers: auth });
    return (await r.json()) as { status: string; progress: { counts: { byState: Record<string, number> } } };
  }

  const accepted = (rest: FakeTwilioRest) => rest.creates.filter((c) => c.httpStatus === 201);
  /** Numbers dialed more than once. */
  const dialedTwice = (rest: FakeTwilioRest) => {
    const seen = new Map<string, number>();
    for (const c of accepted(rest)) seen.set(c.to, (seen.get(c.to) ?? 0) + 1);
    return [...seen].filter(([, k]) => k > 1).map(([to]) => to);
  };

  it('dials a 200-contact campaign at OUTBOUND_MAX_CPS=5 over three processes: never 6 dials in a second at the carrier, never over maxConcurrent, every contact exactly once', async () => {
    const ports = [await freePort(), await freePort(), await freePort()];
    const rest = await FakeTwilioRest.start({
      bridgeUrl: `http://127.0.0.1:${ports[0]}`,
      // Every callee is busy after ringing: each call ends by its status callback, sent to the process that dialed it.
      outcomeFor: () => 'busy',
      ringMs: [300, 1000],
    });
    try {
      const procs = await fleet(rest, ports, { OUTBOUND_MAX_CPS: '5' });
      const id = await createCampaign(procs[0]!, 200, { callsPerSecond: 10, maxConcurrent: 8, retry: { maxAttempts: 1 } });
      await waitFor('the campaign to complete', async () => (await campaignOf(procs[1]!, id)).status === 'completed', 75_000);
      const dials = accepted(rest);
      expect(dials).toHaveLength(200);
      expect(new Set(dials.map((d) => d.to)).size).toBe(200);
      expect(rest.maxCreatesInWindow(1000)).toBeLessThanOrEqual(5);
      expect(rest.maxLive).toBeLessThanOrEqual(8);
      // Every process dialed.
      const byProcess = new Set(dials.map((d) => String(d.params.Url).replace(/\/twilio\/.*$/, '')));
      expect(byProcess.size).toBe(3);
      expect(rest.creates.filter((c) => c.httpStatus !== 201)).toEqual([]);
    } finally {
      await rest.close();
    }
  }, 120_000);

  it('kill -9 of a process while it is dialing: no contact is dialed twice, and none is lost', async () => {
    const ports = [await freePort(), await freePort(), await freePort()];
    const rest = await FakeTwilioRest.start({
      bridgeUrl: `http://127.0.0.1:${ports[0]}`,
      outcomeFor: () => 'busy',
      ringMs: [200, 600],
      // Creates are answered 400 ms late: a process killed now has dials the carrier made but it never heard back about.
      createResponseDelayMs: 400,
    });
    try {
      const procs = await fleet(rest, ports, { OUTBOUND_MAX_CPS: '5', LOG_LEVEL: 'info' });
      const id = await createCampaign(procs[0]!, 40, { callsPerSecond: 10, maxConcurrent: 10, retry: { maxAttempts: 1 } });
      await waitFor('10 dials', () => accepted(rest).length >= 10, 20_000);
      // The process that sent the latest dial is mid-request (its answer comes 400 ms later).
      const last = rest.creates[rest.creates.length - 1]!;
      const victim = procs.find((p) => String(last.params.Url).startsWith(`http://127.0.0.1:${p.port}/`))!;
      killGroup(victim.pid);
      await waitExit(victim, 5_000);
      const survivor = procs.find((p) => p !== victim)!;
      await waitFor('every contact dialed', () => new Set(accepted(rest).map((c) => c.to)).size === 40, 60_000);
      await new Promise((r) => setTimeout(r, 2_000));
      expect(dialedTwice(rest)).toEqual([]);
      expect(accepted(rest)).toHaveLength(40);
      const c = await campaignOf(survivor, id);
      expect(c.progress.counts.byState.pending ?? 0).toBe(0);
      // The victim's dial in flight was settled with the carrier by a survivor, which took over its job.
      const settled = procs.filter((p) => p !== victim).flatMap((p) => p.logs()).filter((l) => l.msg === 'dial queue: a dial whose worker died was settled with the carrier');
      expect(settled.length).toBeGreaterThanOrEqual(1);
    } finally {
      await rest.close();
    }
  }, 120_000);

  it('an answered call connects wherever its answer webhook and its stream land: placed by one process, answered and streamed on another (one PUBLIC_URL behind a balancer)', async () => {
    const ports = [await freePort(), await freePort(), await freePort()];
    const rest = await FakeTwilioRest.start({
      // Every stream goes to the first process, as a balancer may send it.
      bridgeUrl: `http://127.0.0.1:${ports[0]}`,
      outcomeFor: () => 'answered',
      ringMs: [100, 300],
      talkMs: 2500,
    });
    try {
      // One PUBLIC_URL for all, as behind a balancer: every answer webhook and stream reaches the
      // first process, so the calls the others dialed are answered and streamed where they were not placed.
      const base0 = `http://127.0.0.1:${ports[0]}`;
      const procs = await fleet(rest, ports, { OUTBOUND_MAX_CPS: '5', MAX_CONCURRENT_CALLS: '20', LOG_LEVEL: 'info' }, [base0, base0, base0]);
      const id = await createCampaign(procs[0]!, 12, { callsPerSecond: 10, maxConcurrent: 12, retry: { maxAttempts: 1 } });
      await waitFor('the campaign to complete', async () => (await campaignOf(procs[1]!, id)).status === 'completed', 60_000);
      expect(accepted(rest)).toHaveLength(12);
      expect(dialedTwice(rest)).toEqual([]);
      const logs = procs.flatMap((p) => p.logs());
      expect(logs.filter((l) => String(l.msg).startsWith('media stream refused'))).toEqual([]);
      const list = await fetch(`${procs[0]!.url}/v1/calls?campaignId=${id}&limit=50`, { headers: auth });
      const calls = ((await list.json()) as { data: Array<{ id: string; outcome: string | null; status: string }> }).data;
      expect(calls).toHaveLength(12);
      expect(calls.map((c) => c.outcome)).toEqual(Array(12).fill('answered'));
      // Every call reached its agent, wherever it was placed.
      for (const c of calls) {
        const detail = (await (await fetch(`${procs[0]!.url}/v1/calls/${c.id}`, { headers: auth })).json()) as { events?: Array<{ type: string }> };
        expect((detail.events ?? []).map((e) => e.type)).toEqual(expect.arrayContaining(['stream_started', 'agent_ready']));
      }
      // Other processes dialed too, and their calls' slots were adopted by the first (the stream's process).
      const dialedBy = await Promise.all(procs.map(async (p) => /playline_dial_jobs_total\{outcome="dialed"\} ([1-9]\d*)/.test(await (await fetch(`${p.url}/metrics`)).text())));
      expect(dialedBy.filter(Boolean).length).toBeGreaterThanOrEqual(2);
      expect(procs[0]!.logs().some((l) => String(l.msg).includes('slot adopted'))).toBe(true);
      // No slot outlives its call.
      await waitFor('every fleet slot back', async () => {
        const r = (await (await fetch(`${procs[2]!.url}/readyz`)).json()) as { fleet?: { slotsInUse: number } };
        return r.fleet?.slotsInUse === 0;
      }, 10_000);
    } finally {
      await rest.close();
    }
  }, 120_000);

  describe.runIf(postgresTestsEnabled())('with the records in Postgres (DATABASE_URL), each process on a data directory of its own', () => {
    let pg: TestPostgres | undefined;
    beforeAll(async () => {
      pg = await TestPostgres.start();
    }, 30_000);
    afterAll(async () => {
      await pg?.stop();
    });

    it('kill -9 of a process while it is dialing: no contact is dialed twice, none is lost, and every process shows the same records', async () => {
      const ports = [await freePort(), await freePort(), await freePort()];
      const rest = await FakeTwilioRest.start({ bridgeUrl: `http://127.0.0.1:${ports[0]}`, outcomeFor: () => 'busy', ringMs: [200, 600], createResponseDelayMs: 400 });
      try {
        const procs = await fleet(rest, ports, { OUTBOUND_MAX_CPS: '5', LOG_LEVEL: 'info', DATABASE_URL: await pg!.database() });
        const id = await createCampaign(procs[0]!, 30, { callsPerSecond: 10, maxConcurrent: 10, retry: { maxAttempts: 1 } });
        await waitFor('8 dials', () => accepted(rest).length >= 8, 20_000);
        const last = rest.creates[rest.creates.length - 1]!;
        const victim = procs.find((p) => String(last.params.Url).startsWith(`http://127.0.0.1:${p.port}/`))!;
        killGroup(victim.pid);
        await waitExit(victim, 5_000);
        const survivors = procs.filter((p) => p !== victim);
        await waitFor('every contact dialed', () => new Set(accepted(rest).map((c) => c.to)).size === 30, 60_000);
        await new Promise((r) => setTimeout(r, 2_000));
        expect(dialedTwice(rest)).toEqual([]);
        expect(accepted(rest)).toHaveLength(30);
        // Nobody is left pending, and both survivors read the same records. (A dial the victim had in
        // flight stays `dialing` until its final status: Twilio sends it to the victim's own URL here.)
        const counts = async () => Promise.all(survivors.map(async (p) => JSON.stringify((await campaignOf(p, id)).progress.counts.byState)));
        await waitFor('both survivors to read the same counts', async () => new Set(await counts()).size === 1, 5_000);
        const c = await campaignOf(survivors[0]!, id);
        expect(c.progress.counts.byState.pending ?? 0).toBe(0);
      } finally {
        await rest.close();
      }
    }, 120_000);
  });
});
