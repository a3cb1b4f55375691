/**
 * `GET /v1/events` over a real listening bridge in local mode (local agent,
 * Twilio simulator, simulated carrier): order per call, resume, resync,
 * filters, auth, a consumer that never reads, campaign progress, and
 * WEBHOOK_EVENTS deliveries.
 */
import { connect } from 'node:net';
import { setImmediate as tick } from 'node:timers/promises';
import { Writable } from 'node:stream';
import { createParser, type EventSourceMessage } from 'eventsource-parser';
import pino from 'pino';
import Fastify from 'fastify';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { eventsRoutes } from '../src/api/events.js';
import { createBridge, type Bridge, type BridgeOverrides } from '../src/app.js';
import { silence, speechLikeSignal } from '../src/audio/signal.js';
import { loadConfig } from '../src/config.js';
import { MemoryEventBus } from '../src/events/bus.js';
import { verifyWebhookSignature } from '../src/outbound/webhooks.js';
import { LocalAgentServer } from '../src/sim/localAgent.js';
import { placeCall } from '../src/sim/twilioSim.js';
import { openDb } from '../src/store/db.js';

let bridge: Bridge | undefined;
let agent: LocalAgentServer | undefined;
const streams: Array<{ close(): void }> = [];
afterEach(async () => {
  for (const s of streams.splice(0)) s.close();
  await bridge?.app.close();
  await agent?.close();
  bridge = undefined;
  agent = undefined;
});

const quiet = pino({ level: 'silent' }, new Writable({ write: (_c, _e, cb) => cb() }));
const TOKEN = 'events-test-token-0123456789';

async function start(env: Record<string, string> = {}, overrides: BridgeOverrides = {}, greetingMs = 600): Promise<string> {
  const config = loadConfig({ PORT: '0', HOST: '127.0.0.1', MAX_EVENT_LOOP_DELAY_MS: '0', ...env });
  const greetingAudio = speechLikeSignal({ durationMs: greetingMs, talkMs: greetingMs, pauseMs: 0 });
  agent = await LocalAgentServer.start({ mode: config.localAgentOptions.mode, greetingAudio });
  bridge = await createBridge(config, quiet, { agentBaseUrl: agent.url, db: openDb(':memory:'), ...overrides });
  return bridge.app.listen({ port: 0, host: '127.0.0.1' });
}

interface Stream {
  status: number;
  headers: Headers;
  events: EventSourceMessage[];
  comments: string[];
  /** Parsed `data` of the events of these types (all when none given). */
  data(...types: string[]): any[];
  waitFor(pred: (events: EventSourceMessage[]) => boolean, timeoutMs?: number): Promise<void>;
  close(): void;
}

async function openEvents(base: string, path = '/v1/events', headers: Record<string, string> = {}): Promise<Stream> {
  const ac = new AbortController();
  const res = await fetch(`${base}${path}`, { headers, signal: ac.signal });
  const events: EventSourceMessage[] = [];
  const comments: string[] = [];
  const parser = createParser({ onEvent: (m) => events.push(m), onComment: (c) => comments.push(c) });
  if (res.body !== null && res.status === 200) {
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    void (async () => {
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done) return;
          parser.feed(value);
        }
      } catch {
        // aborted
      }
    })();
  }
  const s: Stream = {
    status: res.status,
    headers: res.headers,
    events,
    comments,
    data: (...types) => events.filter((e) => types.length === 0 || types.includes(e.event ?? '')).map((e) => JSON.parse(e.data)),
    waitFor: async (pred, timeoutMs = 15_000) => {
      const deadline = Date.now() + timeoutMs;
      while (!pred(events)) {
        if (Date.now() > deadline) throw new Error(`timed out; events so far: ${events.map((e) => e.event).join(', ')}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    close: () => ac.abort(),
  };
  if (res.status !== 200) s.data = () => [];
  streams.push(s);
  return s;
}

const has = (type: string, n = 1) => (events: EventSourceMessage[]) => events.filter((e) => e.event === type).length >= n;

describe('GET /v1/events', () => {
  it('streams one call as call.started, then updates (stream, agent, barge-in) and transcripts, then call.ended, each with an id', async () => {
    const url = await start({}, {}, 3000);
    const s = await openEvents(url);
    expect(s.status).toBe(200);
    expect(s.headers.get('content-type')).toMatch(/^text\/event-stream/);
    // The caller talks over a 3 s greeting: a barge-in, then a user turn and the agent's answer.
    const audio = new Uint8Array([...silence(400), ...speechLikeSignal({ durationMs: 1200, talkMs: 1200, pauseMs: 0 })]);
    await placeCall({ bridgeUrl: url, audio, trailingMs: 2500 });
    await s.waitFor(has('call.ended'));
    const all = s.data();
    const callId = all[0].callId;
    const mine = all.filter((e) => e.callId === callId);
    expect(mine.map((e) => e.type)[0]).toBe('call.started');
    expect(mine.at(-1).type).toBe('call.ended');
    expect(mine.filter((e) => e.type === 'call.started')).toHaveLength(1);
    expect(mine[0].data.call).toMatchObject({ id: callId, direction: 'inbound' });
    const changes = mine.filter((e) => e.type === 'call.updated').map((e) => e.data.change);
    expect(changes).toContain('stream_started');
    expect(changes).toContain('agent_ready');
    expect(changes.indexOf('stream_started')).toBeLessThan(changes.indexOf('agent_ready'));
    const barge = mine.find((e) => e.data.change === 'barge_in');
    expect(barge?.data.bargeIns).toBe(1);
    const turns = mine.filter((e) => e.type === 'call.transcript').map((e) => e.data.role);
    expect(turns).toContain('user');
    expect(turns).toContain('agent');
    expect(mine.at(-1).data.call).toMatchObject({ id: callId, status: 'completed', endReason: 'caller_hangup' });
    expect(mine.at(-1).data.durations).toHaveProperty('talkSeconds');
    // Ids on the wire are the events' ids, and they increase.
    const seqs = s.events.map((e) => Number(e.id?.split('-').at(-1)));
    expect(seqs).toEqual([...seqs].sort((a, b) => a - b));
    expect(s.events.every((e, i) => e.id === all[i].id)).toBe(true);
    // The call's timeline records the barge-in.
    const detail = (await (await fetch(`${url}/v1/calls/${callId}`)).json()) as { events: Array<{ type: string }> };
    expect(detail.events.map((e) => e.type)).toContain('barge_in');
  }, 30_000);

  it('resumes after Last-Event-ID (header or ?lastEventId=) with no gap and no duplicate, then goes live', async () => {
    const url = await start();
    const bus = bridge!.events;
    const first = await openEvents(url);
    for (let i = 0; i < 6; i++) bus.publish({ type: 'call.updated', callId: `call_${i}`, data: { change: 'status', n: i } });
    await first.waitFor((e) => e.length === 6);
    const lastSeen = first.events[2]!.id!;
    const byHeader = await openEvents(url, '/v1/events', { 'last-event-id': lastSeen });
    const byQuery = await openEvents(url, `/v1/events?lastEventId=${encodeURIComponent(lastSeen)}`);
    for (const s of [byHeader, byQuery]) await s.waitFor((e) => e.length === 3);
    bus.publish({ type: 'call.updated', callId: 'call_6', data: { change: 'status', n: 6 } });
    for (const s of [byHeader, byQuery]) {
      await s.waitFor((e) => e.length === 4);
      expect(s.data().map((e) => e.data.n)).toEqual([3, 4, 5, 6]);
      expect(s.events.some((e) => e.event === 'resync')).toBe(false);
    }
  });

  it('starts with a resync event for an unknown id, and for one older than the retained window', async () => {
    const url = await start({}, { events: new MemoryEventBus({ maxEvents: 5 }) });
    const unknown = await openEvents(url, '/v1/events', { 'last-event-id': 'lq0abc-12' });
    await unknown.waitFor((e) => e.length >= 1);
    expect(unknown.events[0]!.event).toBe('resync');
    expect(unknown.data('resync')[0]).toMatchObject({ reason: 'unknown_id', message: expect.stringMatching(/GET \/v1\/live and GET \/v1\/calls/) });
    const s = await openEvents(url);
    for (let i = 0; i < 10; i++) bridge!.events.publish({ type: 'call.updated', callId: 'c', data: { n: i } });
    await s.waitFor((e) => e.length === 10);
    const old = await openEvents(url, `/v1/events?lastEventId=${s.events[0]!.id}`);
    await old.waitFor((e) => e.length >= 1);
    expect(old.data('resync')[0]).toMatchObject({ reason: 'too_old' });
    bridge!.events.publish({ type: 'call.updated', callId: 'c', data: { n: 10 } });
    await old.waitFor((e) => e.length === 2);
    expect(old.events.map((e) => e.event)).toEqual(['resync', 'call.updated']);
  });

  it('filters by callId, campaignId and types, and refuses an unknown type with a 400 naming the valid ones', async () => {
    const url = await start();
    const byCall = await openEvents(url, '/v1/events?callId=call_a');
    const byCampaign = await openEvents(url, '/v1/events?campaignId=cmp_1');
    const byTypes = await openEvents(url, '/v1/events?types=call.started,call.ended');
    const bus = bridge!.events;
    bus.publish({ type: 'call.started', callId: 'call_a', data: {} });
    bus.publish({ type: 'call.updated', callId: 'call_b', campaignId: 'cmp_1', data: { change: 'status' } });
    bus.publish({ type: 'campaign.progress', campaignId: 'cmp_1', data: {} });
    bus.publish({ type: 'call.ended', callId: 'call_a', data: {} });
    bus.publish({ type: 'call.transcript', callId: 'call_a', data: { role: 'user', text: 'hi' } });
    await byCall.waitFor((e) => e.length === 3);
    await byCampaign.waitFor((e) => e.length === 2);
    await byTypes.waitFor((e) => e.length === 2);
    expect(byCall.events.map((e) => e.event)).toEqual(['call.started', 'call.ended', 'call.transcript']);
    expect(byCampaign.events.map((e) => e.event)).toEqual(['call.updated', 'campaign.progress']);
    expect(byTypes.events.map((e) => e.event)).toEqual(['call.started', 'call.ended']);
    const bad = await fetch(`${url}/v1/events?types=call.started,call.finished`);
    expect(bad.status).toBe(400);
    const body = (await bad.json()) as { error: { code: string; message: string } };
    expect(body.error.code).toBe('invalid_request');
    expect(body.error.message).toMatch(/"call\.finished".*call\.started, call\.updated, call\.transcript, call\.ended, campaign\.progress, campaign\.completed/);
  });

  it('sends a keepalive comment every 15 s, and stops its timer when the stream ends', async () => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
    const app = Fastify({ forceCloseConnections: true });
    try {
      const bus = new MemoryEventBus();
      await app.register(async (api) => eventsRoutes(api, { bus, localMode: true }));
      const url = await app.listen({ port: 0, host: '127.0.0.1' });
      const s = await openEvents(url);
      await s.waitFor(() => bus.subscriberCount === 1);
      expect(vi.getTimerCount()).toBe(1);
      vi.advanceTimersByTime(14_999);
      await new Promise((r) => setTimeout(r, 50));
      expect(s.comments.filter((c) => c.trim() === 'keepalive')).toHaveLength(0);
      vi.advanceTimersByTime(1);
      await s.waitFor(() => s.comments.filter((c) => c.trim() === 'keepalive').length === 1);
      vi.advanceTimersByTime(30_000);
      await s.waitFor(() => s.comments.filter((c) => c.trim() === 'keepalive').length === 3);
      s.close();
      await s.waitFor(() => bus.subscriberCount === 0);
      expect(vi.getTimerCount()).toBe(0);
    } finally {
      vi.useRealTimers();
      await app.close();
    }
  });

  it('is in the OpenAPI document as a text/event-stream with its filters', async () => {
    const url = await start();
    const doc = (await (await fetch(`${url}/docs/json`)).json()) as any;
    const op = doc.paths['/v1/events'].get;
    expect(Object.keys(op.responses['200'].content)).toEqual(['text/event-stream']);
    expect(op.parameters.map((p: { name: string }) => p.name)).toEqual(expect.arrayContaining(['callId', 'campaignId', 'types', 'lastEventId', 'last-event-id']));
  });

  it('refuses a missing or wrong bearer token with 401 when API_TOKEN is set, and opens no subscription', async () => {
    const url = await start({ API_TOKEN: TOKEN });
    const before = bridge!.events.subscriberCount;
    const none = await fetch(`${url}/v1/events`);
    expect(none.status).toBe(401);
    expect(((await none.json()) as { error: { code: string } }).error.code).toBe('unauthorized');
    const wrong = await fetch(`${url}/v1/events`, { headers: { authorization: 'Bearer not-the-token-at-all' } });
    expect(wrong.status).toBe(401);
    await wrong.body?.cancel();
    expect(bridge!.events.subscriberCount).toBe(before);
    const ok = await openEvents(url, '/v1/events', { authorization: `Bearer ${TOKEN}` });
    expect(ok.status).toBe(200);
    expect(bridge!.events.subscriberCount).toBe(before + 1);
  });

  it('releases the subscription when the client goes away and when the server closes', async () => {
    const url = await start();
    const before = bridge!.events.subscriberCount;
    const a = await openEvents(url);
    await openEvents(url);
    expect(bridge!.events.subscriberCount).toBe(before + 2);
    a.close();
    const deadline = Date.now() + 5000;
    while (bridge!.events.subscriberCount > before + 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(bridge!.events.subscriberCount).toBe(before + 1);
    // app.close() ends the open stream (it would otherwise hold the server open) and returns.
    const b = bridge!;
    bridge = undefined;
    await b.app.close();
    expect(b.events.subscriberCount).toBe(0);
  });

  it('cuts off a consumer that never reads once the events it has not taken leave the window, counts it, and releases its subscription', async () => {
    const url = await start({}, { events: new MemoryEventBus({ maxEvents: 200 }) });
    const { port } = new URL(url);
    const before = bridge!.events.subscriberCount;
    const sock = connect({ host: '127.0.0.1', port: Number(port) });
    await new Promise<void>((resolve) => sock.once('connect', () => resolve()));
    let closed = false;
    sock.on('close', () => (closed = true));
    sock.on('error', () => {});
    sock.write(`GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n`);
    // Read the headers, then never read again.
    await new Promise<void>((resolve) => sock.once('data', () => resolve()));
    sock.pause();
    while (bridge!.events.subscriberCount === before) await tick();
    const text = 'x'.repeat(64 * 1024);
    let published = 0;
    while (bridge!.events.subscriberCount > before && published < 4000) {
      for (let i = 0; i < 16; i++) bridge!.events.publish({ type: 'call.transcript', callId: 'c', data: { role: 'agent', text } });
      published += 16;
      await tick();
    }
    expect(bridge!.events.subscriberCount).toBe(before);
    // Cut off once 200 events (the window) waited for it: its memory is the kernel's socket buffers and a cursor.
    expect(published * text.length).toBeLessThan(64 * 1024 * 1024);
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).toMatch(/^playline_events_consumers_cut_total 1$/m);
    sock.resume();
    const deadline = Date.now() + 5000;
    while (!closed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
    expect(closed).toBe(true);
  }, 30_000);

  it('cuts off a consumer that has stopped reading once its socket has not drained for the stall time', async () => {
    const app = Fastify({ forceCloseConnections: true });
    try {
      const bus = new MemoryEventBus({ maxBytes: 64 * 1024 * 1024 });
      let cut = 0;
      await app.register(async (api) => eventsRoutes(api, { bus, localMode: true, stallMs: 200, onCutOff: () => cut++ }));
      const url = await app.listen({ port: 0, host: '127.0.0.1' });
      const sock = connect({ host: '127.0.0.1', port: Number(new URL(url).port) });
      await new Promise<void>((resolve) => sock.once('connect', () => resolve()));
      sock.on('error', () => {});
      sock.write(`GET /v1/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n`);
      await new Promise<void>((resolve) => sock.once('data', () => resolve()));
      sock.pause();
      while (bus.subscriberCount === 0) await tick();
      // Fill the socket a little at a time until the stream stalls; the window (64 MiB) is far from overrun.
      const text = 'z'.repeat(64 * 1024);
      for (let published = 0; bus.subscriberCount > 0 && published < 800; published += 8) {
        for (let i = 0; i < 8; i++) bus.publish({ type: 'call.transcript', callId: 'c', data: { text } });
        await new Promise((r) => setTimeout(r, 50));
      }
      expect(bus.subscriberCount).toBe(0);
      expect(cut).toBe(1);
      sock.destroy();
    } finally {
      await app.close();
    }
  });

  it('sends a large replay whole to a client that reads (the socket paces it; nothing is cut off)', async () => {
    const url = await start();
    const bus = bridge!.events;
    const first = await openEvents(url, '/v1/events?types=call.started');
    bus.publish({ type: 'call.started', callId: 'mark', data: {} });
    await first.waitFor((e) => e.length === 1);
    const text = 'y'.repeat(2000);
    for (let i = 0; i < 3000; i++) bus.publish({ type: 'call.transcript', callId: 'c', data: { role: 'agent', text, i } });
    // 6 MB to replay in one go, far over the 1 MiB bound of unsent bytes.
    const resumed = await openEvents(url, '/v1/events', { 'last-event-id': first.events[0]!.id! });
    await resumed.waitFor((e) => e.length === 3000, 30_000);
    expect(resumed.data().map((e) => e.data.i)).toEqual(Array.from({ length: 3000 }, (_, i) => i));
    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).toMatch(/^playline_events_consumers_cut_total 0$/m);
  }, 40_000);

  it('sends campaign.progress at most once a second per campaign, ending with the final state and campaign.completed', async () => {
    const url = await start({ LOCAL_CARRIER_TALK_S: '1', LOCAL_CARRIER_OUTCOMES: 'answered:1' });
    const created = await fetch(`${url}/v1/campaigns`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'events', contacts: Array.from({ length: 6 }, (_, i) => ({ phone: `+1415555${3000 + i}` })), settings: { callsPerSecond: 10, maxConcurrent: 3 } }),
    });
    expect(created.status).toBe(201);
    const id = ((await created.json()) as { campaign: { id: string } }).campaign.id;
    const s = await openEvents(url, `/v1/events?campaignId=${id}`);
    const started = await fetch(`${url}/v1/campaigns/${id}/start`, { method: 'POST' });
    expect(started.status).toBe(200);
    await s.waitFor(has('campaign.completed'), 30_000);
    const progress = s.data('campaign.progress');
    expect(progress.length).toBeGreaterThanOrEqual(2);
    for (let i = 1; i < progress.length; i++) expect(Date.parse(progress[i].at) - Date.parse(progress[i - 1].at)).toBeGreaterThanOrEqual(995);
    expect(progress.at(-1).data).toMatchObject({ status: 'completed', counts: { total: 6, byState: { pending: 0, dialing: 0, done: 6 } }, activeCalls: 0 });
    expect(s.events.at(-1)!.event).toBe('campaign.completed');
    expect(s.data('campaign.completed')[0].data).toMatchObject({ status: 'completed', counts: { total: 6 } });
    // The campaign's calls are in the same stream, each started before it ended.
    const calls = s.data('call.started', 'call.ended');
    const ids = new Set(calls.map((e) => e.callId));
    expect(ids.size).toBe(6);
    for (const cid of ids) expect(calls.filter((e) => e.callId === cid).map((e) => e.type)).toEqual(['call.started', 'call.ended']);
  }, 40_000);

  it('delivers the types listed in WEBHOOK_EVENTS to WEBHOOK_URL, signed, and leaves out call.completed when it is not listed', async () => {
    const secret = 'whsec-events-test-0123456789';
    const got: Array<{ event: string; body: string; signature: string | null }> = [];
    const fetchImpl: typeof fetch = async (_url, init) => {
      const headers = new Headers(init?.headers);
      got.push({ event: headers.get('playline-event') ?? '', body: String(init?.body), signature: headers.get('playline-signature') });
      return new Response('ok', { status: 200 });
    };
    const url = await start({ WEBHOOK_URL: 'http://127.0.0.1:9/hooks', WEBHOOK_SECRET: secret, WEBHOOK_EVENTS: 'call.started,call.ended' }, { fetchImpl });
    await placeCall({ bridgeUrl: url, audio: silence(300), trailingMs: 200 });
    const deadline = Date.now() + 10_000;
    while (got.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    await new Promise((r) => setTimeout(r, 300));
    expect(got.map((g) => g.event).sort()).toEqual(['call.ended', 'call.started']);
    for (const g of got) {
      expect(verifyWebhookSignature(secret, g.signature, g.body)).toBe(true);
      const body = JSON.parse(g.body);
      expect(body).toMatchObject({ event: g.event, data: { type: g.event, callId: expect.any(String), data: { call: expect.any(Object) } } });
    }
  }, 20_000);
});
