/**
 * The live event bus and its publishers, in process: ids, the ring (age,
 * count and byte bounds), resume and resync, filters, and the coalescing of
 * campaign progress.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { MemoryEventBus, type BusEvent } from '../src/events/bus.js';
import { CallEvents } from '../src/events/callEvents.js';
import { CampaignEvents, type CampaignState } from '../src/events/campaignEvents.js';
import { parseWebhookEvents } from '../src/config.js';
import type { EventInput, PlaylineEvent } from '../src/events/types.js';
import type { CallRow } from '../src/store/calls.js';

afterEach(() => {
  vi.useRealTimers();
});

const call = (n: number, callId = `call_${n}`): EventInput => ({ type: 'call.updated', callId, data: { change: 'status', n } });

function collect(bus: MemoryEventBus, opts: Partial<Parameters<MemoryEventBus['subscribe']>[0]> = {}) {
  const got: PlaylineEvent[] = [];
  const resyncs: string[] = [];
  const sub = bus.subscribe({ filter: {}, ...opts, onEvent: (e: BusEvent) => {
      got.push(e.event);
    }, onResync: (r) => resyncs.push(r) });
  return { got, resyncs, sub };
}

describe('event bus', () => {
  it('gives ids that increase within a process and differ between two buses (two process lifetimes)', () => {
    const a = new MemoryEventBus();
    const b = new MemoryEventBus();
    const seen = collect(a);
    for (let i = 0; i < 3; i++) a.publish(call(i));
    const ids = seen.got.map((e) => e.id);
    const seqs = ids.map((id) => Number(id.split('-').at(-1)));
    expect(seqs).toEqual([1, 2, 3]);
    expect(new Set(ids.map((id) => id.split('-')[0])).size).toBe(1);
    const other = collect(b);
    b.publish(call(0));
    expect(other.got[0]!.id).not.toBe(ids[0]);
  });

  it('resumes after a known id with every later event, in order, then live, with no duplicate', () => {
    const bus = new MemoryEventBus();
    const first = collect(bus);
    for (let i = 0; i < 5; i++) bus.publish(call(i));
    const resumed = collect(bus, { after: first.got[1]!.id });
    expect(resumed.resyncs).toEqual([]);
    expect(resumed.got.map((e) => e.data.n)).toEqual([2, 3, 4]);
    bus.publish(call(5));
    expect(resumed.got.map((e) => e.data.n)).toEqual([2, 3, 4, 5]);
    // The newest id: nothing to replay, live only.
    const tail = collect(bus, { after: first.got.at(-1)!.id });
    bus.publish(call(6));
    expect(tail.got.map((e) => e.data.n)).toEqual([6]);
  });

  it('says resync (unknown_id) for an id of another process lifetime, a malformed one or one not given yet', () => {
    const bus = new MemoryEventBus();
    bus.publish(call(0));
    for (const id of ['zzzz-1', 'garbage', `${'x'.repeat(10)}`, '']) {
      const c = collect(bus, { after: id });
      expect(c.resyncs, id).toEqual(['unknown_id']);
      expect(c.got).toEqual([]);
    }
    const known = collect(bus);
    bus.publish(call(1));
    const future = known.got[0]!.id.replace(/-\d+$/, '-99');
    expect(collect(bus, { after: future }).resyncs).toEqual(['unknown_id']);
  });

  it('forgets events older than the retention and answers their ids with resync (too_old)', () => {
    let now = 1_000_000;
    const bus = new MemoryEventBus({ retentionMs: 60_000, now: () => now });
    const c = collect(bus);
    bus.publish(call(0));
    bus.publish(call(1));
    now += 61_000;
    bus.publish(call(2));
    expect(bus.retained).toBe(1);
    expect(collect(bus, { after: c.got[0]!.id }).resyncs).toEqual(['too_old']);
    // The last evicted id is still resumable: nothing after it is missing.
    const r = collect(bus, { after: c.got[1]!.id });
    expect(r.resyncs).toEqual([]);
    expect(r.got.map((e) => e.data.n)).toEqual([2]);
    // Age is also checked on subscribe, with no publish in between.
    now += 61_000;
    expect(collect(bus, { after: c.got[1]!.id }).resyncs).toEqual(['too_old']);
    expect(bus.retained).toBe(0);
  });

  it('keeps at most maxEvents and maxBytes of events however many are published', () => {
    const bus = new MemoryEventBus({ maxEvents: 100, maxBytes: 1_000_000 });
    for (let i = 0; i < 10_000; i++) bus.publish(call(i));
    expect(bus.retained).toBe(100);
    const big = new MemoryEventBus({ maxEvents: 1000, maxBytes: 50_000 });
    for (let i = 0; i < 200; i++) big.publish({ type: 'call.transcript', callId: 'c', data: { text: 'x'.repeat(1000) } });
    expect(big.retained).toBeLessThanOrEqual(50);
    expect(big.retained).toBeGreaterThan(40);
  });

  it('delivers only what a filter asks for: call id, campaign id, types', () => {
    const bus = new MemoryEventBus();
    const byCall = collect(bus, { filter: { callId: 'a' } });
    const byCampaign = collect(bus, { filter: { campaignId: 'cmp' } });
    const byType = collect(bus, { filter: { types: new Set(['call.ended'] as const) } });
    bus.publish({ type: 'call.started', callId: 'a', data: {} });
    bus.publish({ type: 'call.started', callId: 'b', campaignId: 'cmp', data: {} });
    bus.publish({ type: 'call.ended', callId: 'a', data: {} });
    bus.publish({ type: 'campaign.progress', campaignId: 'cmp', data: {} });
    expect(byCall.got.map((e) => e.type)).toEqual(['call.started', 'call.ended']);
    expect(byCampaign.got.map((e) => `${e.type}:${e.callId ?? ''}`)).toEqual(['call.started:b', 'campaign.progress:']);
    expect(byType.got.map((e) => e.callId)).toEqual(['a']);
    // Replay applies the filter too.
    const replay = collect(bus, { after: `${byCall.got[0]!.id.replace(/-\d+$/, '-1')}`, filter: { campaignId: 'cmp' } });
    expect(replay.got.map((e) => e.type)).toEqual(['call.started', 'campaign.progress']);
  });

  it('pauses a subscriber whose onEvent returns false and catches it up from the ring on resume, in order, with no duplicate', () => {
    const bus = new MemoryEventBus();
    const got: number[] = [];
    let open = false;
    const sub = bus.subscribe({
      filter: {},
      onEvent: (e) => {
        got.push(Number(e.event.data.n));
        return open;
      },
    });
    bus.publish(call(0));
    bus.publish(call(1));
    bus.publish(call(2));
    expect(got).toEqual([0]);
    open = true;
    sub.resume();
    expect(got).toEqual([0, 1, 2]);
    bus.publish(call(3));
    expect(got).toEqual([0, 1, 2, 3]);
  });

  it('drops a paused subscriber as soon as what it has not received leaves the ring, and tells it', () => {
    const bus = new MemoryEventBus({ maxEvents: 10 });
    let overruns = 0;
    bus.subscribe({ filter: {}, onEvent: () => false, onOverrun: () => overruns++ });
    for (let i = 0; i < 10; i++) bus.publish(call(i));
    expect(bus.subscriberCount).toBe(1);
    expect(overruns).toBe(0);
    bus.publish(call(10));
    bus.publish(call(11));
    expect(overruns).toBe(1);
    expect(bus.subscriberCount).toBe(0);
  });

  it('counts subscribers, stops delivering after close (twice is fine), and a throwing subscriber does not stop the others', () => {
    const bus = new MemoryEventBus();
    bus.subscribe({ filter: {}, onEvent: () => { throw new Error('boom'); } });
    const c = collect(bus);
    expect(bus.subscriberCount).toBe(2);
    bus.publish(call(0));
    expect(c.got).toHaveLength(1);
    c.sub.close();
    c.sub.close();
    bus.publish(call(1));
    expect(c.got).toHaveLength(1);
    expect(bus.subscriberCount).toBe(1);
    bus.close();
    expect(bus.subscriberCount).toBe(0);
  });
});

describe('event bus fed from a shared stream (ingest, REDIS_URL)', () => {
  const streamEvent = (id: string, n: number): PlaylineEvent => ({ id, type: 'call.updated', at: new Date().toISOString(), callId: 'call_1', data: { change: 'status', n } });
  const byStreamId = (a: string, b: string): number | undefined => {
    const x = /^(\d+)-(\d+)$/.exec(a);
    const y = /^(\d+)-(\d+)$/.exec(b);
    if (x === null || y === null) return undefined;
    return Number(x[1]) - Number(y[1]) || Number(x[2]) - Number(y[2]);
  };

  it('delivers ingested events with their own ids, marks remote ones, and resumes after an ingested id', () => {
    const bus = new MemoryEventBus({ compareIngestedIds: byStreamId });
    const remote: boolean[] = [];
    const live = collect(bus);
    bus.subscribe({ filter: {}, onEvent: (e) => void remote.push(e.remote === true) });
    bus.ingest(streamEvent('100-0', 0), false);
    bus.ingest(streamEvent('100-1', 1), true);
    bus.ingest(streamEvent('105-0', 2), true);
    expect(live.got.map((e) => e.id)).toEqual(['100-0', '100-1', '105-0']);
    expect(remote).toEqual([false, true, true]);
    const resumed = collect(bus, { after: '100-0' });
    expect(resumed.resyncs).toEqual([]);
    expect(resumed.got.map((e) => e.data.n)).toEqual([1, 2]);
  });

  it('events published locally (Redis away) and ingested ones share one order for resuming', () => {
    const bus = new MemoryEventBus({ compareIngestedIds: byStreamId });
    const live = collect(bus);
    bus.ingest(streamEvent('100-0', 0), false);
    bus.publish(call(1));
    bus.ingest(streamEvent('200-0', 2), true);
    const resumed = collect(bus, { after: live.got[1]!.id });
    expect(resumed.got.map((e) => e.data.n)).toEqual([2]);
  });

  it('says too_old for an ingested-form id older than the window, resumes from the last trimmed one, unknown_id for an id never seen', () => {
    const bus = new MemoryEventBus({ compareIngestedIds: byStreamId, maxEvents: 2 });
    for (let i = 0; i < 4; i++) bus.ingest(streamEvent(`100-${i}`, i), true);
    expect(collect(bus, { after: '100-0' }).resyncs).toEqual(['too_old']);
    const fromTrimmed = collect(bus, { after: '100-1' });
    expect(fromTrimmed.resyncs).toEqual([]);
    expect(fromTrimmed.got.map((e) => e.data.n)).toEqual([2, 3]);
    expect(collect(bus, { after: '999-0' }).resyncs).toEqual(['unknown_id']);
  });
});

describe('call events', () => {
  const row = (over: Partial<CallRow> = {}): CallRow =>
    ({
      id: 'call_1', callSid: 'CA1', direction: 'inbound', to: '+1', from: '+2', agentId: 'playai:a', status: 'in-progress', outcome: null, answeredBy: null,
      campaignId: null, contactId: null, attempt: null, metadata: null, machineDetection: false, voicemailAction: null, voicemailMessage: null, errorCode: null,
      errorMessage: null, conversationId: null, endReason: null, createdAt: 0, dialedAt: null, answeredAt: null, endedAt: null, durationS: null, finalizedAt: null,
      ...over,
    }) as CallRow;

  it('announces a call once with call.started before its first update, and forgets it at call.ended', () => {
    const out: EventInput[] = [];
    const ev = new CallEvents((e) => out.push(e));
    ev.updated(row(), 'stream_started');
    ev.started(row());
    ev.transcript(row(), 'agent', 'hello');
    ev.updated(row(), 'barge_in', { bargeIns: 1 });
    ev.ended(row({ endedAt: 5000, durationS: 5, finalizedAt: 5000 }));
    expect(out.map((e) => e.type)).toEqual(['call.started', 'call.updated', 'call.transcript', 'call.updated', 'call.ended']);
    expect(out[3]!.data).toEqual({ change: 'barge_in', bargeIns: 1 });
    expect(ev.openCalls).toBe(0);
  });

  it('says nothing more about a call once it ended (a straggling report neither updates nor announces it again)', () => {
    const out: EventInput[] = [];
    const ev = new CallEvents((e) => out.push(e));
    ev.started(row());
    ev.ended(row({ finalizedAt: 1 }));
    ev.updated(row(), 'spoke', { kind: 'goodbye' });
    ev.transcript(row(), 'agent', 'late');
    ev.ended(row({ finalizedAt: 1 }));
    expect(out.map((e) => e.type)).toEqual(['call.started', 'call.ended']);
  });

  it('says nothing at the end of a queued call that never reached the carrier', () => {
    const out: EventInput[] = [];
    new CallEvents((e) => out.push(e)).ended(row({ callSid: null, status: 'canceled', finalizedAt: 1 }));
    expect(out).toEqual([]);
  });
});

describe('campaign progress', () => {
  it('sends at most one progress event per second per campaign, with the latest state, and the final one and completed', () => {
    vi.useFakeTimers();
    const out: EventInput[] = [];
    let state: CampaignState = { status: 'running', counts: { done: 0 }, activeCalls: 1, etaSeconds: 10 };
    const ce = new CampaignEvents({ publish: (e) => out.push(e), read: () => state, now: () => Date.now() });
    ce.changed('cmp');
    for (let i = 1; i <= 50; i++) {
      state = { ...state, counts: { done: i } };
      ce.changed('cmp');
      vi.advanceTimersByTime(50);
    }
    // 2.5 s of changes: the first at once, then one per second.
    const progress = () => out.filter((e) => e.type === 'campaign.progress');
    expect(progress()).toHaveLength(3);
    state = { status: 'completed', counts: { done: 51 }, activeCalls: 0, etaSeconds: 0 };
    ce.changed('cmp');
    vi.advanceTimersByTime(1000);
    expect(progress().at(-1)!.data).toMatchObject({ status: 'completed', counts: { done: 51 } });
    expect(out.at(-1)).toMatchObject({ type: 'campaign.completed', campaignId: 'cmp', data: { status: 'completed', counts: { done: 51 } } });
    // Never twice.
    ce.changed('cmp');
    vi.advanceTimersByTime(2000);
    expect(out.filter((e) => e.type === 'campaign.completed')).toHaveLength(1);
    expect(ce.pending).toBe(0);
  });

  it('flushes a pending final state when closed', () => {
    vi.useFakeTimers();
    const out: EventInput[] = [];
    let state: CampaignState = { status: 'running', counts: {}, activeCalls: 0, etaSeconds: null };
    const ce = new CampaignEvents({ publish: (e) => out.push(e), read: () => state, now: () => Date.now() });
    ce.changed('cmp');
    state = { ...state, status: 'canceled' };
    ce.changed('cmp');
    ce.close();
    expect(out.map((e) => e.type)).toEqual(['campaign.progress', 'campaign.progress', 'campaign.completed']);
    expect(vi.getTimerCount()).toBe(0);
  });
});

describe('WEBHOOK_EVENTS', () => {
  it('accepts a comma list of event types and none, and names the valid types for an unknown one', () => {
    expect(parseWebhookEvents('call.completed')).toEqual(['call.completed']);
    expect(parseWebhookEvents(' call.started , call.ended,call.started')).toEqual(['call.started', 'call.ended']);
    expect(parseWebhookEvents('none')).toEqual([]);
    expect(() => parseWebhookEvents('call.finished')).toThrow(/WEBHOOK_EVENTS: "call.finished" is not an event type; use .*call\.completed, call\.started/);
  });
});
