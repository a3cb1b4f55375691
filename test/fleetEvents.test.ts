/**
 * Live events across processes through one Redis Stream (fleet/events.ts), against a real
 * redis-server: every bus delivers every bus's events once, in one order; ids resume on another
 * process; a Redis restart leaves local events flowing and the reader carries on; the stream stays
 * bounded; webhooks forward only a process's own events. Skipped without redis-server unless
 * PLAYLINE_REQUIRE_REDIS=1.
 */
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { BusEvent } from '../src/events/bus.js';
import { forwardEventsToWebhook } from '../src/events/webhookForwarder.js';
import { compareStreamIds, FleetEventBus } from '../src/fleet/events.js';
import { fleetTestsEnabled, sleep, TestRedis } from './fleetRedis.js';

const enabled = fleetTestsEnabled();

async function until(what: string, check: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

describe('stream ids', () => {
  it('orders stream entry ids by time then sequence, and refuses other ids', () => {
    expect(compareStreamIds('1-0', '1-1')).toBe(-1);
    expect(compareStreamIds('2-0', '1-9')).toBe(1);
    expect(compareStreamIds('1700000000000-3', '1700000000000-3')).toBe(0);
    expect(compareStreamIds('99999999999999-0', '100000000000000-0')).toBe(-1);
    expect(compareStreamIds('abc-1', '1-1')).toBeUndefined();
  });
});

describe.skipIf(!enabled)('fleet-wide live events (Redis Streams)', () => {
  let redis: TestRedis;
  let n = 0;
  const open: FleetEventBus[] = [];
  beforeAll(async () => {
    redis = await TestRedis.start();
  }, 20_000);
  afterEach(async () => {
    for (const b of open.splice(0)) {
      b.close();
      await b.closed();
    }
  });
  afterAll(async () => {
    await redis?.stop();
  });

  async function buses(count: number, opts: { maxLen?: number; blockMs?: number } = {}): Promise<{ buses: FleetEventBus[]; prefix: string }> {
    const prefix = `ev${++n}:`;
    const out: FleetEventBus[] = [];
    for (let i = 0; i < count; i++) {
      const b = new FleetEventBus({ redisUrl: redis.url, prefix, processId: `p${i}`, blockMs: opts.blockMs ?? 200, ...(opts.maxLen !== undefined ? { maxLen: opts.maxLen } : {}) });
      open.push(b);
      await b.start();
      out.push(b);
    }
    return { buses: out, prefix };
  }

  function collect(bus: FleetEventBus, after?: string): BusEvent[] {
    const got: BusEvent[] = [];
    bus.subscribe({ filter: {}, after, onEvent: (e) => void got.push(e) });
    return got;
  }

  it('every process delivers every process event exactly once, in the same order, each call in its publish order, with the stream entry id as event id', async () => {
    const { buses: [a, b] } = await buses(2);
    if (a === undefined || b === undefined) throw new Error('two buses');
    const onA = collect(a);
    const onB = collect(b);
    for (let i = 0; i < 50; i++) {
      a.publish({ type: 'call.updated', callId: 'CA-a', data: { i } });
      b.publish({ type: 'call.updated', callId: 'CA-b', data: { i } });
    }
    await until('100 events on both', () => onA.length >= 100 && onB.length >= 100);
    await sleep(300);
    expect(onA).toHaveLength(100);
    expect(onB).toHaveLength(100);
    expect(onA.map((e) => e.event.id)).toEqual(onB.map((e) => e.event.id));
    expect(new Set(onA.map((e) => e.event.id)).size).toBe(100);
    for (const e of onA) expect(e.event.id).toMatch(/^\d+-\d+$/);
    for (const call of ['CA-a', 'CA-b']) {
      expect(onA.filter((e) => e.event.callId === call).map((e) => e.event.data.i)).toEqual(Array.from({ length: 50 }, (_, i) => i));
    }
    // Each process marks the other's events remote, its own not.
    expect(onA.filter((e) => e.remote === true).every((e) => e.event.callId === 'CA-b')).toBe(true);
    expect(onA.filter((e) => e.remote !== true).every((e) => e.event.callId === 'CA-a')).toBe(true);
  });

  it('a Last-Event-ID seen on one process resumes on another, and one from before a process started is found in the tail it read', async () => {
    const { buses: [a, b], prefix } = await buses(2);
    if (a === undefined || b === undefined) throw new Error('two buses');
    const onA = collect(a);
    const onB = collect(b);
    for (let i = 0; i < 5; i++) a.publish({ type: 'call.transcript', callId: 'CA1', data: { i } });
    await until('5 events on a and b', () => onA.length === 5 && onB.length === 5);
    const second = onA[1]?.event.id;
    const resumedOnB = collect(b, second);
    expect(resumedOnB.map((e) => e.event.data.i)).toEqual([2, 3, 4]);
    // A process started later reads the stream's tail at start.
    const late = new FleetEventBus({ redisUrl: redis.url, prefix, processId: 'late', blockMs: 200 });
    open.push(late);
    await late.start();
    expect(collect(late, second).map((e) => e.event.data.i)).toEqual([2, 3, 4]);
  });

  it('while Redis is down a process still delivers its own events; after Redis restarts the reader carries on and other processes see new events again', async () => {
    const { buses: [a, b] } = await buses(2);
    if (a === undefined || b === undefined) throw new Error('two buses');
    const onA = collect(a);
    const onB = collect(b);
    a.publish({ type: 'call.started', callId: 'CA1', data: { n: 1 } });
    await until('first event on b', () => onB.length === 1);
    await redis.kill();
    await sleep(200);
    a.publish({ type: 'call.updated', callId: 'CA1', data: { n: 2 } });
    await until('local delivery on a while Redis is down', () => onA.length === 2);
    expect(onA[1]?.event.data).toEqual({ n: 2 });
    await redis.restart();
    // Both connections come back within the reconnection backoff (2 s at most).
    await until(
      'an event published after the restart reaches b',
      () => {
        if (onB.some((e) => e.event.data.n === 3)) return true;
        if (Date.now() % 500 < 15) a.publish({ type: 'call.updated', callId: 'CA1', data: { n: 3 } });
        return false;
      },
      10_000,
    );
    await sleep(300);
    // Nothing twice on either side.
    const seen = (got: BusEvent[]) => got.map((e) => e.event.id);
    expect(new Set(seen(onA)).size).toBe(onA.length);
    expect(new Set(seen(onB)).size).toBe(onB.length);
    // The event delivered locally during the outage is not on b (it never reached Redis).
    expect(onB.some((e) => e.event.data.n === 2)).toBe(false);
  }, 20_000);

  it('the stream stays bounded: XADD trims it to about its maximum length', async () => {
    const { buses: [a], prefix } = await buses(1, { maxLen: 100 });
    if (a === undefined) throw new Error('a bus');
    const onA = collect(a);
    for (let i = 0; i < 1000; i++) a.publish({ type: 'call.updated', callId: 'CA1', data: { i } });
    // A reader more than the maximum length behind loses what was trimmed: wait for the last one.
    await until('the last one read back', () => onA.at(-1)?.event.data.i === 999);
    const len = await redis.client().xlen(`${prefix}events`);
    expect(len).toBeGreaterThanOrEqual(100);
    // Approximate trimming cuts whole nodes (100 entries each by default).
    expect(len).toBeLessThan(300);
  });

  it('a reader that falls more than the maximum length behind counts the events it never saw instead of losing them silently', async () => {
    const { buses: [a, b] } = await buses(2, { maxLen: 100 });
    if (a === undefined || b === undefined) throw new Error('two buses');
    const onB = collect(b);
    a.publish({ type: 'call.updated', callId: 'CA1', data: { i: 0 } });
    await until('the first one read on b', () => onB.length === 1);
    // 1999 appends in one go: the stream is trimmed long before b reads it.
    for (let i = 1; i < 2000; i++) a.publish({ type: 'call.updated', callId: 'CA1', data: { i } });
    await until('the last one read on b', () => onB.at(-1)?.event.data.i === 1999);
    expect(onB.length).toBeLessThan(2000);
    expect(onB.length + b.missed).toBe(2000);
    expect(a.missed).toBe(0);
  });

  it('webhooks forward only the events a process published itself (each event once per fleet)', async () => {
    const { buses: [a, b] } = await buses(2);
    if (a === undefined || b === undefined) throw new Error('two buses');
    const sentByA: string[] = [];
    const sentByB: string[] = [];
    forwardEventsToWebhook(a, { enqueue: (_t, callId) => (sentByA.push(callId ?? ''), Promise.resolve('x')) }, ['call.started'], () => undefined);
    forwardEventsToWebhook(b, { enqueue: (_t, callId) => (sentByB.push(callId ?? ''), Promise.resolve('x')) }, ['call.started'], () => undefined);
    const onB = collect(b);
    a.publish({ type: 'call.started', callId: 'CA-a', data: {} });
    b.publish({ type: 'call.started', callId: 'CA-b', data: {} });
    await until('both events on b', () => onB.length === 2);
    await sleep(300);
    expect(sentByA).toEqual(['CA-a']);
    expect(sentByB).toEqual(['CA-b']);
  });

  it('close stops the reader and ends subscriptions; publishing after close is a no-op', async () => {
    const { buses: [a] } = await buses(1);
    if (a === undefined) throw new Error('a bus');
    collect(a);
    expect(a.subscriberCount).toBe(1);
    a.close();
    await a.closed();
    expect(a.subscriberCount).toBe(0);
    expect(() => a.publish({ type: 'call.started', callId: 'CA1', data: {} })).not.toThrow();
  });
});
