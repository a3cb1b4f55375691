/**
 * Learned provider limits and fleet capacity across processes (session/fleetAdmission.ts over a
 * real redis-server): a capacity refusal (PlayAI 4429 and its equivalents) on one process caps
 * that provider on every process, and lifts on every process when a session ends or the cooldown
 * passes; `/readyz` and `/metrics` show the fleet's slots. Skipped without redis-server unless
 * PLAYLINE_REQUIRE_REDIS=1.
 */
import { randomBytes } from 'node:crypto';
import Fastify from 'fastify';
import { pino } from 'pino';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { AgentDirectory } from '../src/agent/directory.js';
import { healthRoutes } from '../src/http/health.js';
import { Metrics } from '../src/metrics.js';
import { FleetAdmission } from '../src/session/fleetAdmission.js';
import { SessionManager, type Slot } from '../src/session/manager.js';
import { fleetTestsEnabled, sleep, TestRedis } from './fleetRedis.js';

const enabled = fleetTestsEnabled();
const AGENT = 'playai:agent1';

async function until(what: string, check: () => boolean | Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe.skipIf(!enabled)('fleet-wide learned limits and capacity (real redis-server)', () => {
  let redis: TestRedis;
  const open: FleetAdmission[] = [];
  const managers: SessionManager[] = [];
  let n = 0;
  beforeAll(async () => {
    redis = await TestRedis.start();
  }, 20_000);
  afterEach(async () => {
    for (const f of open.splice(0)) await f.close();
    for (const m of managers.splice(0)) m.dispose();
  });
  afterAll(async () => {
    await redis?.stop();
  });

  /** `count` processes of one fleet, each with its own manager. */
  async function processes(count: number, opts: { cooldownMs?: number; max?: number } = {}): Promise<FleetAdmission[]> {
    const prefix = `lim${++n}${randomBytes(2).toString('hex')}:`;
    const out: FleetAdmission[] = [];
    for (let i = 0; i < count; i++) {
      const manager = new SessionManager({ maxConcurrentCalls: opts.max ?? 5, tokenTtlMs: 10_000, defaultAgentId: AGENT, routes: new Map() });
      managers.push(manager);
      const f = new FleetAdmission({
        redisUrl: redis.url,
        prefix,
        leaseMs: 5_000,
        maxConcurrentCalls: opts.max ?? 5,
        agentLimits: new Map(),
        maxCallMs: 3_600_000,
        tokenTtlMs: 10_000,
        ...(opts.cooldownMs !== undefined ? { agentCapacityCooldownMs: opts.cooldownMs } : {}),
        manager,
        agentCandidates: (ref) => [ref],
        logger: pino({ level: 'silent' }),
      });
      open.push(f);
      await f.start();
      out.push(f);
    }
    return out;
  }

  let sid = 0;
  /** A call admitted and its stream started on `f`: its local slot. */
  async function liveCall(f: FleetAdmission): Promise<Slot> {
    const callSid = `CA${++sid}`;
    const admitted = await f.admit({ callSid, from: '+15550001', to: '+15550002', direction: 'inbound' }, undefined);
    if (!admitted.ok) throw new Error(`not admitted: ${admitted.reason}`);
    const claimed = await f.claim(admitted.token, callSid);
    if (!claimed.ok) throw new Error(`not claimed: ${claimed.reason}`);
    return claimed.reservation.slot;
  }
  const webhook = (f: FleetAdmission) => f.admit({ callSid: `CA${++sid}`, from: '+15550001', to: '+15550002', direction: 'inbound' }, undefined);

  it('a capacity refusal on process A caps the provider on process B at the sessions open fleet-wide; a ready session ending on A lifts it for B', async () => {
    const [a, b] = await processes(2);
    if (a === undefined || b === undefined) throw new Error('two processes');
    const first = await liveCall(a);
    a.agentSessionReady(first);
    const second = await liveCall(b);
    b.agentSessionReady(second);
    await until('both sessions counted open', async () => (await a.slots.counts()).agentOpen.playai === 2);
    // A third call on A is refused by PlayAI (4429): the account holds 2 sessions.
    a.agentCapacityExceeded('CA-refused', 'playai');
    await until('the learned limit reaches B', async () => (await b.slots.learnedLimit('playai')) === 2);
    expect(await webhook(b)).toEqual({ ok: false, reason: 'agent_capacity' });
    expect(await webhook(a)).toEqual({ ok: false, reason: 'agent_capacity' });
    expect((await b.capacity()).providers.playai).toMatchObject({ slotsInUse: 2, limit: 2, learnedLimit: 2 });
    // One of the open sessions ends (on A): room again, on B too.
    a.agentSessionEnded(first, 'playai');
    await until('the learned limit lifted', async () => (await b.slots.learnedLimit('playai')) === undefined);
    expect((await webhook(b)).ok).toBe(true);
  });

  it('a learned limit lifts on every process when its cooldown (AGENT_CAPACITY_COOLDOWN) passes', async () => {
    const [a, b] = await processes(2, { cooldownMs: 300 });
    if (a === undefined || b === undefined) throw new Error('two processes');
    a.agentSessionReady(await liveCall(a));
    await until('the session counted open', async () => (await a.slots.counts()).agentOpen.playai === 1);
    a.agentCapacityExceeded('CA-refused', 'playai');
    await until('the learned limit reaches B', async () => (await b.slots.learnedLimit('playai')) === 1);
    expect(await webhook(b)).toEqual({ ok: false, reason: 'agent_capacity' });
    await until('the cooldown passed', async () => (await b.slots.learnedLimit('playai')) === undefined, 3_000);
    expect((await webhook(b)).ok).toBe(true);
  });

  it('/readyz shows the fleet slots in use and the limit, and this process’s own share; a draining process still answers 503', async () => {
    const [a, b] = await processes(2, { max: 4 });
    if (a === undefined || b === undefined) throw new Error('two processes');
    await liveCall(a);
    await liveCall(a);
    await liveCall(b);
    const agents: Pick<AgentDirectory, 'downAgents' | 'firstUp'> = { downAgents: () => [], firstUp: (ref: string) => ref };
    const app = Fastify();
    const manager = managers[1];
    if (manager === undefined) throw new Error('manager of b');
    await app.register(healthRoutes, {
      manager,
      // The route reads only these two of the directory.
      agents: agents as AgentDirectory,
      defaultAgent: AGENT,
      metrics: new Metrics({ liveCalls: () => 0, reservedSlots: () => 0, capacity: () => 4, draining: () => false }),
      fleet: b,
    });
    try {
      const ready = await app.inject({ method: 'GET', url: '/readyz' });
      expect(ready.statusCode).toBe(200);
      expect(ready.json()).toMatchObject({ ready: true, fleet: { redis: 'ok', slotsInUse: 3, slotLimit: 4, thisProcess: { slotsInUse: 1 }, providers: { playai: { slotsInUse: 3, limit: 4 } } } });
      manager.startDrain();
      const draining = await app.inject({ method: 'GET', url: '/readyz' });
      expect(draining.statusCode).toBe(503);
      expect(draining.json()).toMatchObject({ ready: false, draining: true, fleet: { slotsInUse: 3 } });
    } finally {
      await app.close();
    }
  });

  it('/readyz answers 503 naming REDIS_URL while this process cannot reach Redis, and 200 again once it can', async () => {
    const [a] = await processes(1);
    if (a === undefined) throw new Error('a process');
    const manager = managers[0];
    if (manager === undefined) throw new Error('its manager');
    const agents: Pick<AgentDirectory, 'downAgents' | 'firstUp'> = { downAgents: () => [], firstUp: (ref: string) => ref };
    const app = Fastify();
    await app.register(healthRoutes, {
      manager,
      agents: agents as AgentDirectory,
      defaultAgent: AGENT,
      metrics: new Metrics({ liveCalls: () => 0, reservedSlots: () => 0, capacity: () => 5, draining: () => false }),
      fleet: a,
    });
    let restarted = false;
    try {
      await redis.kill();
      const down = await app.inject({ method: 'GET', url: '/readyz' });
      expect(down.statusCode).toBe(503);
      expect(down.json()).toMatchObject({ ready: false, draining: false, fleet: { redis: 'unreachable', error: expect.stringContaining('REDIS_URL') } });
      await redis.restart();
      restarted = true;
      await until('ready again', async () => (await app.inject({ method: 'GET', url: '/readyz' })).statusCode === 200, 8_000);
    } finally {
      await app.close();
      if (!restarted) await redis.restart();
    }
  }, 15_000);

  it('/metrics reads the fleet slots from Redis at scrape time, with one label per provider', async () => {
    const [a, b] = await processes(2, { max: 4 });
    if (a === undefined || b === undefined) throw new Error('two processes');
    await liveCall(a);
    await liveCall(b);
    const metrics = new Metrics({ liveCalls: () => 0, reservedSlots: () => 0, capacity: () => 4, draining: () => false, fleet: () => a.capacity() });
    const text = await metrics.registry.metrics();
    expect(text).toMatch(/^playline_fleet_redis_up 1$/m);
    expect(text).toMatch(/^playline_fleet_slots_in_use 2$/m);
    expect(text).toMatch(/^playline_fleet_slots_limit 4$/m);
    expect(text).toMatch(/^playline_fleet_process_slots_in_use 1$/m);
    expect(text).toMatch(/^playline_fleet_provider_slots_in_use\{provider="playai"\} 2$/m);
    expect(text).toMatch(/^playline_fleet_provider_slots_limit\{provider="playai"\} 4$/m);
    // Nothing is read per call: a third call shows at the next scrape.
    await liveCall(b);
    await sleep(600);
    expect(await metrics.registry.metrics()).toMatch(/^playline_fleet_slots_in_use 3$/m);
  });
});
