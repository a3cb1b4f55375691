import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { CallOwners } from '../src/fleet/owners.js';
import { FleetError } from '../src/fleet/redis.js';
import { FleetSlots } from '../src/fleet/slots.js';
import { FleetTokens } from '../src/fleet/tokens.js';
import { fleetTestsEnabled, sleep, TestRedis } from './fleetRedis.js';

const enabled = fleetTestsEnabled();

/** Retries `f` until it resolves (Redis coming back), up to `ms`. */
async function eventually<T>(f: () => Promise<T>, ms = 5_000): Promise<T> {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await f();
    } catch (err) {
      if (Date.now() > deadline) throw err;
      await sleep(50);
    }
  }
}

describe.skipIf(!enabled)('fleet modules when Redis goes away (real redis-server)', () => {
  let redis: TestRedis;
  beforeAll(async () => {
    redis = await TestRedis.start();
  });
  afterAll(async () => {
    await redis?.stop();
  });

  it('a Redis crash gives clear redis_unavailable errors (no crash, no unhandled rejection); after a restart everything works and lost leases are reported', async () => {
    const slots = new FleetSlots({ redis: redis.url, prefix: 'r1:', maxConcurrentCalls: 5, leaseMs: 300 });
    const tokens = new FleetTokens({ redis: redis.url, prefix: 'r1:', schema: z.object({ n: z.number() }) });
    const a = new CallOwners({ redis: redis.url, prefix: 'r1:', processId: 'a' });
    const b = new CallOwners({ redis: redis.url, prefix: 'r1:', processId: 'b' });
    try {
      await slots.ready();
      await tokens.ready();
      const held = await slots.claim({ callSid: 'CA1', agents: ['x'] });
      expect(held.ok).toBe(true);
      await a.own('CA1', () => ({ ok: true }));
      await b.start();
      const renewErrors: FleetError[] = [];
      slots.startRenewing({ onError: (e) => renewErrors.push(e) });

      await redis.kill();

      const failures = await Promise.all([
        slots.claim({ callSid: 'CA2', agents: ['x'] }).catch((e: unknown) => e),
        slots.counts().catch((e: unknown) => e),
        tokens.mint({ token: 't', callSid: 'CA2', reservation: { n: 1 }, ttlMs: 1_000 }).catch((e: unknown) => e),
        tokens.claim('t', 'CA2').catch((e: unknown) => e),
        b.send('CA1', { type: 'hangup' }).catch((e: unknown) => e),
        a.disown('CA1').catch((e: unknown) => e),
      ]);
      for (const f of failures) {
        expect(f).toBeInstanceOf(FleetError);
        expect(f).toMatchObject({ code: 'redis_unavailable', message: expect.stringMatching(/Redis is unreachable .*check REDIS_URL and that Redis is running/) });
      }
      // Renewals kept failing in the background, reported, not thrown.
      await sleep(250);
      expect(renewErrors.length).toBeGreaterThan(0);
      expect(renewErrors[0]!.code).toBe('redis_unavailable');

      // Redis restarts empty (no persistence): the clients reconnect by themselves.
      await redis.restart();
      const lost = await eventually(() => slots.renew());
      expect(lost.map((l) => [l.slot.callSid, l.reason])).toEqual([['CA1', 'expired']]);
      expect((await eventually(() => slots.claim({ callSid: 'CA3', agents: ['x'] }))).ok).toBe(true);
      expect(await eventually(() => tokens.mint({ token: 't2', callSid: 'CA3', reservation: { n: 2 }, ttlMs: 1_000 }))).toMatchObject({ ok: true });
      // Ownership written again by its owner reaches it through a resubscribed channel.
      await eventually(() => a.own('CA1', () => ({ ok: true, data: { back: true } })));
      expect(await eventually(() => b.send('CA1', { type: 'hangup' }))).toEqual({ ok: true, data: { back: true } });
    } finally {
      await Promise.all([slots.close(), tokens.close(), a.close(), b.close()]);
    }
  });

  it('closing while Redis is down does not wait for it, waiting sends reject with closed, and a closed module refuses work', async () => {
    const a = new CallOwners({ redis: redis.url, prefix: 'r2:', processId: 'a' });
    const b = new CallOwners({ redis: redis.url, prefix: 'r2:', processId: 'b', timeoutMs: 5_000 });
    const slots = new FleetSlots({ redis: redis.url, prefix: 'r2:', maxConcurrentCalls: 1 });
    await a.own('CA1', () => new Promise(() => undefined));
    const pending = b.send('CA1', { type: 'end_call' }).catch((e: unknown) => e);
    await sleep(50);
    await b.close();
    expect(await pending).toMatchObject({ code: 'closed' });
    await redis.kill();
    // Closing does not wait for Redis to come back (the test's timeout would catch a hang).
    await Promise.all([a.close(), slots.close()]);
    await expect(slots.claim({ callSid: 'CA2', agents: ['x'] })).rejects.toMatchObject({ code: 'closed' });
    await redis.restart();
  });

  it('a module given a client borrows it: close leaves it open for its owner', async () => {
    const client = redis.client();
    const slots = new FleetSlots({ redis: client, prefix: 'r3:', maxConcurrentCalls: 1 });
    await slots.ready();
    expect((await slots.claim({ callSid: 'CA1', agents: ['x'] })).ok).toBe(true);
    await slots.close({ releaseHeld: true });
    expect(await client.zcard('r3:slots:all')).toBe(0);
  });
});
