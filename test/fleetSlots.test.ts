import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FleetSlots, type FleetSlot, type FleetSlotsOptions } from '../src/fleet/slots.js';
import { SessionManager, type Slot } from '../src/session/manager.js';
import { fleetTestsEnabled, sleep, TestRedis } from './fleetRedis.js';

const enabled = fleetTestsEnabled();

describe.skipIf(!enabled)('fleet slots (real redis-server)', () => {
  let redis: TestRedis;
  const open: FleetSlots[] = [];

  beforeAll(async () => {
    redis = await TestRedis.start();
  });
  afterAll(async () => {
    await redis?.stop();
  });
  afterEach(async () => {
    for (const s of open.splice(0)) await s.close();
  });

  /** `n` processes of one fleet: each its own connection, one shared prefix. */
  function fleet(n: number, opts: Partial<FleetSlotsOptions> = {}): FleetSlots[] {
    const prefix = `t${randomBytes(4).toString('hex')}:`;
    return Array.from({ length: n }, (_, i) => {
      const s = new FleetSlots({ redis: redis.url, prefix, maxConcurrentCalls: 5, processId: `p${i}`, ...opts });
      open.push(s);
      return s;
    });
  }

  it('a fleet cap of 5 holds exactly under 20 concurrent claims from 3 processes', async () => {
    const procs = fleet(3);
    await Promise.all(procs.map((p) => p.ready()));
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => procs[i % 3]!.claim({ callSid: `CA${i}`, agents: ['playai:a'] })));
    expect(results.filter((r) => r.ok)).toHaveLength(5);
    expect(results.filter((r) => !r.ok).map((r) => (r.ok ? '' : r.reason))).toEqual(Array(15).fill('capacity'));
    const counts = await procs[0]!.counts();
    expect(counts.total).toBe(5);
    expect(counts.perAgent).toEqual({ 'playai:a': 5 });
    expect(procs.reduce((n, p) => n + p.held.size, 0)).toBe(5);
  });

  it('outbound claims never take the INBOUND_RESERVED slots, and inbound calls still get them', async () => {
    const [a, b] = fleet(2, { inboundReserved: 2 });
    const out = [];
    for (let i = 0; i < 5; i++) out.push(await (i % 2 ? a! : b!).claim({ callSid: `OUT${i}`, agents: ['a'], outbound: true }));
    expect(out.map((r) => r.ok)).toEqual([true, true, true, false, false]);
    expect(out[3]).toEqual({ ok: false, reason: 'capacity' });
    const inbound = [];
    for (let i = 0; i < 3; i++) inbound.push(await a!.claim({ callSid: `IN${i}`, agents: ['a'] }));
    expect(inbound.map((r) => r.ok)).toEqual([true, true, false]);
    expect(await a!.counts()).toMatchObject({ total: 5, outbound: 3 });
  });

  it('an outbound claim also needs a free slot overall, as the manager counts outboundRoom', async () => {
    const [a] = fleet(1, { inboundReserved: 2 });
    for (let i = 0; i < 4; i++) expect((await a!.claim({ callSid: `IN${i}`, agents: ['a'] })).ok).toBe(true);
    expect((await a!.claim({ callSid: 'OUT', agents: ['a'], outbound: true })).ok).toBe(true);
    expect(await a!.claim({ callSid: 'OUT2', agents: ['a'], outbound: true })).toEqual({ ok: false, reason: 'capacity' });
  });

  it('AGENT_LIMITS caps an agent fleet-wide (bare ids are PlayAI agents); a fallback under its cap takes the call', async () => {
    const [a, b] = fleet(2, { agentLimits: new Map([['bot', 2]]) });
    expect((await a!.claim({ callSid: 'C1', agents: ['bot'] })).ok).toBe(true);
    expect((await b!.claim({ callSid: 'C2', agents: ['playai:bot'] })).ok).toBe(true);
    expect(await a!.claim({ callSid: 'C3', agents: ['playai:bot'] })).toEqual({ ok: false, reason: 'agent_limit' });
    const fallback = await b!.claim({ callSid: 'C4', agents: ['bot', 'openai:gpt-realtime'] });
    expect(fallback.ok && fallback.slot.agentId).toBe('openai:gpt-realtime');
    expect(fallback.ok && fallback.slot.provider).toBe('openai');
    expect(await a!.claim({ callSid: 'C5', agents: [] })).toEqual({ ok: false, reason: 'agent_down' });
  });

  it('a capacity refusal caps its provider at the sessions open fleet-wide until one ends', async () => {
    const [a, b] = fleet(2);
    const s1 = await a!.claim({ callSid: 'C1', agents: ['playai:x'] });
    const s2 = await b!.claim({ callSid: 'C2', agents: ['playai:y'] });
    const s3 = await b!.claim({ callSid: 'C3', agents: ['playai:x'] });
    if (!s1.ok || !s2.ok || !s3.ok) throw new Error('setup');
    await a!.setAgentOpen(s1.slot, true);
    await b!.setAgentOpen(s2.slot, true);
    // C3's agent session was the one refused (4429): two are open fleet-wide.
    expect(await b!.noteCapacityExceeded('playai')).toBe(2);
    expect(await a!.learnedLimit('playai')).toBe(2);
    expect(await a!.capacityFor('playai')).toBe(2);
    await b!.release(s3.slot);
    expect(await a!.claim({ callSid: 'C4', agents: ['playai:z'] })).toEqual({ ok: false, reason: 'agent_capacity' });
    // Other providers are not capped, and a fallback of another provider takes the call.
    const other = await a!.claim({ callSid: 'C5', agents: ['playai:x', 'openai:m'] });
    expect(other.ok && other.slot.agentId).toBe('openai:m');
    // One of its sessions ended: room again.
    await a!.noteSessionEnded('playai');
    expect(await a!.learnedLimit('playai')).toBeUndefined();
    expect((await b!.claim({ callSid: 'C6', agents: ['playai:z'] })).ok).toBe(true);
  });

  it('a learned limit lifts by itself when its cooldown passes', async () => {
    const [a] = fleet(1);
    const s1 = await a!.claim({ callSid: 'C1', agents: ['x'] });
    if (!s1.ok) throw new Error('setup');
    expect(await a!.noteCapacityExceeded('playai', 150)).toBe(0);
    expect(await a!.claim({ callSid: 'C2', agents: ['x'] })).toEqual({ ok: false, reason: 'agent_capacity' });
    expect((await a!.counts()).learned.playai?.limit).toBe(0);
    await sleep(200);
    expect((await a!.claim({ callSid: 'C2', agents: ['x'] })).ok).toBe(true);
  });

  it('a process that stops renewing loses its slots after the lease while the renewing one keeps its own', async () => {
    const [dead, alive] = fleet(2, { leaseMs: 300, maxConcurrentCalls: 4 });
    for (let i = 0; i < 2; i++) {
      expect((await dead!.claim({ callSid: `D${i}`, agents: ['a'] })).ok).toBe(true);
      expect((await alive!.claim({ callSid: `A${i}`, agents: ['a'] })).ok).toBe(true);
    }
    const lostAlive: unknown[] = [];
    alive!.startRenewing({ onLost: (l) => lostAlive.push(...l) });
    expect(await alive!.claim({ callSid: 'X', agents: ['a'] })).toEqual({ ok: false, reason: 'capacity' });
    await sleep(550);
    expect((await alive!.counts()).total).toBe(2);
    expect(lostAlive).toEqual([]);
    expect(alive!.held.size).toBe(2);
    // The dead process' slots are free again; when it wakes up, renew says they are gone.
    expect((await alive!.claim({ callSid: 'X', agents: ['a'] })).ok).toBe(true);
    const lost = await dead!.renew();
    expect(lost.map((l) => [l.slot.callSid, l.reason]).sort()).toEqual([
      ['D0', 'expired'],
      ['D1', 'expired'],
    ]);
    expect(dead!.held.size).toBe(0);
  });

  it('a slot renewed past the maximum call length plus one lease is reported too_old and left to expire', async () => {
    const [a] = fleet(1, { leaseMs: 1_000, maxCallMs: 0 });
    const s = await a!.claim({ callSid: 'C1', agents: ['a'] });
    expect(s.ok).toBe(true);
    await sleep(500);
    expect(await a!.renew()).toEqual([]);
    await sleep(600);
    const lost = await a!.renew();
    expect(lost.map((l) => [l.slot.callSid, l.reason])).toEqual([['C1', 'too_old']]);
    expect(a!.held.size).toBe(0);
    // Not renewed any more: it still counts until its last lease ends, then it is trimmed.
    expect((await a!.counts()).total).toBe(1);
  });

  it('release is idempotent and works from any process', async () => {
    const [a, b] = fleet(2);
    const s = await a!.claim({ callSid: 'C1', agents: ['a'], outbound: true });
    if (!s.ok) throw new Error('setup');
    expect(await b!.release(s.slot.id)).toBe(true);
    expect(await a!.release(s.slot)).toBe(false);
    expect(await a!.release(s.slot)).toBe(false);
    expect(await a!.counts()).toEqual({ total: 0, outbound: 0, perAgent: {}, perProvider: {}, agentOpen: {}, learned: {} });
    expect(a!.held.size).toBe(0);
  });

  it('move re-scopes a slot to the fallback agent and its provider', async () => {
    const [a] = fleet(1, { agentLimits: new Map([['openai:m', 1]]) });
    const s = await a!.claim({ callSid: 'C1', agents: ['playai:x'] });
    if (!s.ok) throw new Error('setup');
    await a!.setAgentOpen(s.slot, true);
    const moved = await a!.move(s.slot, 'openai:m');
    expect(moved).toMatchObject({ id: s.slot.id, agentId: 'openai:m', provider: 'openai' });
    const c = await a!.counts();
    expect(c).toMatchObject({ total: 1, perAgent: { 'openai:m': 1 }, perProvider: { openai: 1 }, agentOpen: { openai: 1 } });
    // The moved slot counts against the fallback's cap.
    expect(await a!.claim({ callSid: 'C2', agents: ['openai:m'] })).toEqual({ ok: false, reason: 'agent_limit' });
    expect(await a!.release(s.slot.id)).toBe(true);
    expect(await a!.move(s.slot, 'playai:x')).toBeUndefined();
  });

  it('adopt hands a slot to the process that got the stream; the old owner hears it is gone', async () => {
    const [webhook, stream] = fleet(2, { leaseMs: 300 });
    const s = await webhook!.claim({ callSid: 'C1', agents: ['a'] });
    if (!s.ok) throw new Error('setup');
    expect(await stream!.adopt(s.slot)).toEqual(s.slot);
    expect((await webhook!.renew()).map((l) => l.reason)).toEqual(['other_owner']);
    stream!.startRenewing();
    await sleep(450);
    expect((await stream!.counts()).total).toBe(1);
  });

  it('decides like the in-process SessionManager over 300 random claims and releases (capacity, inbound reserve, agent caps, fallbacks)', async () => {
    // A seeded generator, so a failure replays.
    let seed = 7;
    const rand = (n: number) => {
      // mulberry32
      seed = (seed + 0x6d2b79f5) | 0;
      let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
      t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
      return Math.floor((((t ^ (t >>> 14)) >>> 0) / 4_294_967_296) * n);
    };
    const agentLimits = new Map([
      ['a', 2],
      ['openai:b', 3],
    ]);
    const candidates: Record<string, string[]> = { 'playai:a': ['playai:a', 'openai:b'], 'openai:b': ['openai:b'], 'playai:c': ['playai:c', 'playai:a'] };
    const routes = new Map(Object.keys(candidates).map((agentId, i) => [`+1555000${i}`, { agentId }] as const));
    const manager = new SessionManager({
      maxConcurrentCalls: 6,
      inboundReserved: 2,
      tokenTtlMs: 60_000,
      defaultAgentId: 'playai:a',
      routes,
      agentLimits,
      agentCandidates: (agent) => candidates[agent] ?? [agent],
    });
    const [f1, f2] = fleet(2, { maxConcurrentCalls: 6, inboundReserved: 2, agentLimits });
    const live: { local: { slot: Slot; callSid: string }; remote: FleetSlot }[] = [];
    const outcomes = new Set<string>();
    try {
      for (let i = 0; i < 300; i++) {
        if (live.length > 0 && rand(4) === 0) {
          const [gone] = live.splice(rand(live.length), 1);
          manager.releaseSlot(gone!.local.slot);
          await (i % 2 ? f1! : f2!).release(gone!.remote);
          continue;
        }
        const callSid = `CA${i}`;
        const to = [...routes.keys()][rand(routes.size)]!;
        const agent = routes.get(to)!.agentId;
        const outbound = rand(2) === 0;
        const proc = rand(2) ? f1! : f2!;
        const remote = await proc.claim({ callSid, agents: candidates[agent]!, outbound });
        if (outbound) {
          const slot = manager.holdOutboundSlot(callSid, agent);
          expect(remote.ok, `op ${i}: outbound for ${agent}`).toBe(slot !== undefined);
          outcomes.add(remote.ok ? 'out_ok' : `out_${remote.reason}`);
          if (slot !== undefined && remote.ok) {
            expect(remote.slot.agentId).toBe(slot.agentId);
            live.push({ local: { slot, callSid }, remote: remote.slot });
          }
        } else {
          const admitted = manager.admit({ callSid, from: '+15559999', to, direction: 'inbound' });
          expect(remote.ok ? 'ok' : remote.reason, `op ${i}: inbound for ${agent}`).toBe(admitted.ok ? 'ok' : admitted.reason);
          outcomes.add(remote.ok ? 'ok' : remote.reason);
          if (admitted.ok && remote.ok) {
            // The stream redeems the token: the manager's slot shows the agent it picked (a fallback when full).
            const claimed = manager.claim(admitted.token, callSid);
            if (!claimed.ok) throw new Error(claimed.reason);
            expect(remote.slot.agentId, `op ${i}: picked agent`).toBe(claimed.reservation.slot.agentId);
            live.push({ local: { slot: claimed.reservation.slot, callSid }, remote: remote.slot });
          }
        }
        const counts = await f1!.counts();
        expect(counts.total, `op ${i}`).toBe(manager.usedSlots);
        expect(counts.outbound, `op ${i}`).toBe(manager.outboundSlots);
      }
      // The run went through every kind of decision.
      expect([...outcomes].sort()).toEqual(['agent_limit', 'capacity', 'ok', 'out_agent_limit', 'out_capacity', 'out_ok']);
    } finally {
      manager.dispose();
    }
  });
});
