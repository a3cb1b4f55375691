import { randomBytes } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { CallOwners, type CallOwnersOptions, type ControlMessage } from '../src/fleet/owners.js';
import { FleetError } from '../src/fleet/redis.js';
import { fleetTestsEnabled, sleep, TestRedis } from './fleetRedis.js';

const enabled = fleetTestsEnabled();

describe.skipIf(!enabled)('fleet call control (real redis-server)', () => {
  let redis: TestRedis;
  const open: CallOwners[] = [];
  /** The key prefix of the last fleet made. */
  let prefix = '';

  beforeAll(async () => {
    redis = await TestRedis.start();
  });
  afterAll(async () => {
    await redis?.stop();
  });
  afterEach(async () => {
    for (const o of open.splice(0)) await o.close();
  });

  function fleet(n: number, opts: Partial<CallOwnersOptions> = {}): CallOwners[] {
    prefix = `t${randomBytes(4).toString('hex')}:`;
    return Array.from({ length: n }, (_, i) => {
      const o = new CallOwners({ redis: redis.url, prefix, processId: `p${i}`, ...opts });
      open.push(o);
      return o;
    });
  }

  it("a hang-up sent from process B reaches the owner A's handler, and A's answer comes back", async () => {
    const [a, b] = fleet(2);
    const seen: ControlMessage[] = [];
    await a!.own('CA1', (m) => {
      seen.push(m);
      return { ok: true, data: { ended: true } };
    });
    expect(await b!.ownerOf('CA1')).toBe('p0');
    expect(await b!.send('CA1', { type: 'hangup', reason: 'api' })).toEqual({ ok: true, data: { ended: true } });
    expect(seen).toEqual([{ type: 'hangup', reason: 'api' }]);
  });

  it('status callbacks, transfers and end_call reach the owner typed as they were sent', async () => {
    const [a, b] = fleet(2);
    const seen: ControlMessage[] = [];
    await a!.own('CA1', (m) => {
      seen.push(m);
      return { ok: true };
    });
    const msgs: ControlMessage[] = [
      { type: 'status', params: { CallStatus: 'completed', AnsweredBy: 'human' } },
      { type: 'transfer', request: { target: 'front desk', mode: 'warm', by: 'api' } },
      { type: 'end_call' },
    ];
    for (const m of msgs) expect(await b!.send('CA1', m)).toEqual({ ok: true });
    expect(seen).toEqual(msgs);
  });

  it("a message for the owner's own call runs its handler without a round trip", async () => {
    const [a] = fleet(1);
    await a!.own('CA1', () => ({ ok: false, error: 'not transferable' }));
    expect(await a!.send('CA1', { type: 'transfer', request: { to: '+15550100', mode: 'cold', by: 'api' } })).toEqual({ ok: false, error: 'not transferable' });
  });

  it('a handler that throws answers ok: false with its message', async () => {
    const [a, b] = fleet(2);
    await a!.own('CA1', () => {
      throw new Error('session closed');
    });
    expect(await b!.send('CA1', { type: 'hangup' })).toEqual({ ok: false, error: 'session closed' });
  });

  it('a call nobody owns gives a no_owner error', async () => {
    const [b] = fleet(1);
    await expect(b!.send('CA404', { type: 'hangup' })).rejects.toMatchObject({ code: 'no_owner', message: expect.stringContaining('no process owns call CA404') });
  });

  it('a dead owner: refused at once while its key lives (nobody listens), then no owner once its TTL passed', async () => {
    const [a, b] = fleet(2, { ttlMs: 300 });
    await a!.own('CA1', () => ({ ok: true }));
    await a!.close(); // as if killed: its owner key stays until its TTL
    const early = await b!.send('CA1', { type: 'hangup' }).catch((e: unknown) => e);
    expect(early).toBeInstanceOf(FleetError);
    expect(early).toMatchObject({ code: 'no_owner', message: expect.stringContaining('not listening any more') });
    await sleep(350);
    await expect(b!.send('CA1', { type: 'hangup' })).rejects.toMatchObject({ code: 'no_owner', message: expect.stringContaining('no process owns call CA1') });
  });

  it('an owner that does not answer in time gives a timeout error naming it and the call', async () => {
    const [a, b] = fleet(2);
    await a!.own('CA1', () => new Promise(() => undefined));
    await expect(b!.send('CA1', { type: 'end_call' }, { timeoutMs: 150 })).rejects.toMatchObject({
      code: 'timeout',
      message: expect.stringContaining('process p0 did not answer the end_call for call CA1 within 150 ms'),
    });
  });

  it('a process named by the key that no longer has the call answers no_owner', async () => {
    const [a, b] = fleet(2);
    await a!.own('CA1', () => ({ ok: true }));
    await a!.disown('CA1');
    // The key names A again (as if its session ended while Redis was away and the key stayed).
    await redis.client().set(`${prefix}owner:CA1`, 'p0', 'PX', 5_000);
    await expect(b!.send('CA1', { type: 'hangup' })).rejects.toMatchObject({ code: 'no_owner', message: expect.stringContaining('not live on process p0') });
  });

  it('ownership outlives its TTL while refreshed; disown only drops the key while it names this process', async () => {
    const [a, b] = fleet(2, { ttlMs: 300 });
    await a!.own('CA1', () => ({ ok: true, data: { by: 'a' } }));
    a!.startRefreshing();
    await sleep(450);
    expect(await b!.send('CA1', { type: 'hangup' })).toEqual({ ok: true, data: { by: 'a' } });
    // B takes the call over (its stream replaced A's): A's refresh hears it lost it, A's disown leaves B's key.
    await b!.own('CA1', () => ({ ok: true, data: { by: 'b' } }));
    expect(await a!.refresh()).toEqual(['CA1']);
    await a!.disown('CA1');
    expect(await a!.ownerOf('CA1')).toBe('p1');
    expect(await a!.send('CA1', { type: 'hangup' })).toEqual({ ok: true, data: { by: 'b' } });
  });

  it('garbage on a control channel is dropped and the process keeps answering', async () => {
    const [a, b] = fleet(2);
    await a!.own('CA1', () => ({ ok: true }));
    const c = redis.client();
    // Not JSON, a wrong shape, an unknown message type, a reply nobody waits for.
    const junk = [
      '{',
      '{"v":1}',
      JSON.stringify({ v: 1, kind: 'request', id: 'x', from: 'p1', callSid: 'CA1', message: { type: 'rm -rf' } }),
      JSON.stringify({ v: 1, kind: 'reply', id: 'nobody', answer: { ok: true } }),
    ];
    for (const j of junk) expect(await c.publish(`${prefix}ctl:p0`, j)).toBe(1);
    expect(await b!.send('CA1', { type: 'hangup' })).toEqual({ ok: true });
  });

  it('a malformed message is refused before it is sent', async () => {
    const [a] = fleet(1);
    // @ts-expect-error: not a control message
    await expect(a!.send('CA1', { type: 'explode' })).rejects.toThrow(/not a control message/);
  });

  it('askAll gathers the answer of every other process (not its own) and returns as soon as all have answered', async () => {
    const [a, b, c] = fleet(3);
    b!.setQuestionHandler(() => ({ ok: true, data: { calls: ['CA-b'] } }));
    c!.setQuestionHandler(() => ({ ok: true, data: { calls: ['CA-c'] } }));
    a!.setQuestionHandler(() => ({ ok: true, data: { calls: ['CA-a'] } }));
    await Promise.all([a!.start(), b!.start(), c!.start()]);
    const started = Date.now();
    const answers = await a!.askAll('live', { timeoutMs: 5_000 });
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(answers.map((x) => (x.ok ? x.data?.calls : undefined)).sort()).toEqual([['CA-b'], ['CA-c']]);
  });

  it('askAll leaves out a process that does not answer in time, and answers nothing when alone', async () => {
    const [a, b, c] = fleet(3);
    b!.setQuestionHandler(() => ({ ok: true, data: { calls: [] } }));
    c!.setQuestionHandler(() => new Promise(() => undefined));
    await Promise.all([a!.start(), b!.start(), c!.start()]);
    const answers = await a!.askAll('live', { timeoutMs: 300 });
    expect(answers).toEqual([{ ok: true, data: { calls: [] } }]);
    const [alone] = fleet(1);
    expect(await alone!.askAll('live', { timeoutMs: 5_000 })).toEqual([]);
  });
});
