import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { FleetError } from '../src/fleet/redis.js';
import { FleetTokens } from '../src/fleet/tokens.js';
import { fleetTestsEnabled, sleep, TestRedis } from './fleetRedis.js';

const enabled = fleetTestsEnabled();

const reservationSchema = z.object({ callSid: z.string(), agentId: z.string(), slotId: z.string() });
type R = z.infer<typeof reservationSchema>;
const res = (callSid: string): R => ({ callSid, agentId: 'playai:a', slotId: `slot-${callSid}` });

describe.skipIf(!enabled)('fleet stream tokens (real redis-server)', () => {
  let redis: TestRedis;
  const open: FleetTokens<unknown>[] = [];

  beforeAll(async () => {
    redis = await TestRedis.start();
  });
  afterAll(async () => {
    await redis?.stop();
  });
  afterEach(async () => {
    for (const t of open.splice(0)) await t.close();
  });

  function fleet(n: number, onExpired?: (token: string, callSid: string) => void): FleetTokens<R>[] {
    const prefix = `t${randomBytes(4).toString('hex')}:`;
    return Array.from({ length: n }, () => {
      const t = new FleetTokens<R>({ redis: redis.url, prefix, schema: reservationSchema, ...(onExpired ? { onExpired } : {}) });
      open.push(t);
      return t;
    });
  }

  it('a token minted by the webhook process is redeemed once by the stream process, and is then used', async () => {
    const [webhook, stream, third] = fleet(3);
    expect(await webhook!.mint({ token: 'tok1', callSid: 'CA1', reservation: res('CA1'), ttlMs: 5_000 })).toEqual({ ok: true, token: 'tok1', replayed: false });
    expect(await stream!.claim('tok1', 'CA1')).toEqual({ ok: true, reservation: res('CA1') });
    expect(await third!.claim('tok1', 'CA1')).toEqual({ ok: false, reason: 'used_token' });
    expect(await webhook!.state('tok1')).toBe('used_token');
  });

  it('three processes redeeming one token at once: exactly one wins', async () => {
    const procs = fleet(3);
    await procs[0]!.mint({ token: 'race', callSid: 'CA1', reservation: res('CA1'), ttlMs: 5_000 });
    const results = await Promise.all(procs.flatMap((p) => [p.claim('race', 'CA1'), p.claim('race', 'CA1')]));
    expect(results.filter((r) => r.ok)).toHaveLength(1);
    expect(results.filter((r) => !r.ok && r.reason === 'used_token')).toHaveLength(5);
  });

  it('a token presented with another CallSid is refused and stays valid for its own call', async () => {
    const [a, b] = fleet(2);
    await a!.mint({ token: 'tok', callSid: 'CA1', reservation: res('CA1'), ttlMs: 5_000 });
    expect(await b!.claim('tok', 'CA2')).toEqual({ ok: false, reason: 'call_mismatch' });
    expect(await b!.state('tok')).toBe('pending');
    expect(await b!.claim('tok', 'CA1')).toEqual({ ok: true, reservation: res('CA1') });
  });

  it('missing and unknown tokens are told apart from used and expired ones', async () => {
    const [a] = fleet(1);
    expect(await a!.claim(undefined, 'CA1')).toEqual({ ok: false, reason: 'missing_token' });
    expect(await a!.claim('', 'CA1')).toEqual({ ok: false, reason: 'missing_token' });
    expect(await a!.claim('forged', 'CA1')).toEqual({ ok: false, reason: 'unknown_token' });
  });

  it('a token not redeemed within its TTL is expired, and the minting process hears it once to release the slot', async () => {
    const expired: string[] = [];
    const [webhook, stream] = fleet(2, (token, callSid) => expired.push(`${token}/${callSid}`));
    await webhook!.mint({ token: 'late', callSid: 'CA1', reservation: res('CA1'), ttlMs: 150 });
    await webhook!.mint({ token: 'ontime', callSid: 'CA2', reservation: res('CA2'), ttlMs: 150 });
    expect((await stream!.claim('ontime', 'CA2')).ok).toBe(true);
    await sleep(300);
    expect(await stream!.claim('late', 'CA1')).toEqual({ ok: false, reason: 'expired_token' });
    expect(expired).toEqual(['late/CA1']);
  });

  it("Twilio's retry of the webhook (same idempotency token) gets the same token back; another request is a duplicate", async () => {
    const [a, b] = fleet(2);
    expect(await a!.mint({ token: 't1', callSid: 'CA1', reservation: res('CA1'), ttlMs: 5_000, idempotencyToken: 'idem-1' })).toMatchObject({ ok: true, replayed: false });
    expect(await b!.mint({ token: 't2', callSid: 'CA1', reservation: res('CA1'), ttlMs: 5_000, idempotencyToken: 'idem-1' })).toEqual({
      ok: true,
      token: 't1',
      replayed: true,
      reservation: res('CA1'),
    });
    expect(await b!.mint({ token: 't3', callSid: 'CA1', reservation: res('CA1'), ttlMs: 5_000, idempotencyToken: 'idem-2' })).toEqual({ ok: false, reason: 'duplicate' });
    expect(await b!.mint({ token: 't4', callSid: 'CA1', reservation: res('CA1'), ttlMs: 5_000 })).toEqual({ ok: false, reason: 'duplicate' });
    expect(await b!.state('t2')).toBe('unknown_token');
    // Once redeemed, the call holds no pending token any more.
    expect((await b!.claim('t1', 'CA1')).ok).toBe(true);
    expect(await a!.mint({ token: 't5', callSid: 'CA1', reservation: res('CA1'), ttlMs: 5_000, idempotencyToken: 'idem-3' })).toMatchObject({ ok: true, replayed: false });
  });

  it('when the first webhook carried no idempotency token, any retry gets the pending token back', async () => {
    const [a] = fleet(1);
    await a!.mint({ token: 't1', callSid: 'CA1', reservation: res('CA1'), ttlMs: 5_000 });
    expect(await a!.mint({ token: 't2', callSid: 'CA1', reservation: res('CA1'), ttlMs: 5_000, idempotencyToken: 'x' })).toMatchObject({ ok: true, token: 't1', replayed: true });
  });

  it('a token string is never minted twice (NX)', async () => {
    const [a] = fleet(1);
    await a!.mint({ token: 'same', callSid: 'CA1', reservation: res('CA1'), ttlMs: 5_000 });
    expect(await a!.mint({ token: 'same', callSid: 'CA2', reservation: res('CA2'), ttlMs: 5_000 })).toEqual({ ok: false, reason: 'token_exists' });
    await a!.claim('same', 'CA1');
    expect(await a!.mint({ token: 'same', callSid: 'CA3', reservation: res('CA3'), ttlMs: 5_000 })).toEqual({ ok: false, reason: 'token_exists' });
  });

  it('cancel drops a pending token as expired, without calling onExpired', async () => {
    const expired: string[] = [];
    const [a] = fleet(1, (t) => expired.push(t));
    await a!.mint({ token: 't1', callSid: 'CA1', reservation: res('CA1'), ttlMs: 200 });
    expect(await a!.cancel('CA1')).toBe(true);
    expect(await a!.cancel('CA1')).toBe(false);
    expect(await a!.claim('t1', 'CA1')).toEqual({ ok: false, reason: 'expired_token' });
    await sleep(250);
    expect(expired).toEqual([]);
  });

  it('a stored reservation that does not match the schema is an error naming it, not a cast', async () => {
    const prefix = `t${randomBytes(4).toString('hex')}:`;
    const loose = new FleetTokens<{ x: number }>({ redis: redis.url, prefix, schema: z.object({ x: z.number() }) });
    const strict = new FleetTokens<R>({ redis: redis.url, prefix, schema: reservationSchema });
    open.push(loose, strict);
    await loose.mint({ token: 'odd', callSid: 'CA1', reservation: { x: 1 }, ttlMs: 5_000 });
    const err = await strict.claim('odd', 'CA1').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(FleetError);
    expect(err).toMatchObject({ code: 'redis_error', message: expect.stringContaining('does not match its schema') });
  });
});
