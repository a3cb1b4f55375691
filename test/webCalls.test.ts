/**
 * Browser calls end to end: `POST /v1/web-calls`, then a WebSocket to
 * `/web/media-stream` speaking the Twilio Media Streams protocol as the
 * console's softphone does, through the same session manager, call session
 * and agent path as a phone call. Local mode (no keys, the built-in local
 * agent) as `npm start` runs, plus a signed bridge with a scripted agent for
 * what must never reach a carrier.
 */
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { createBridge, type Bridge } from '../src/app.js';
import { speechLikeSignal } from '../src/audio/signal.js';
import { loadConfig } from '../src/config.js';
import { LocalAgentServer } from '../src/sim/localAgent.js';
import Database from 'better-sqlite3';
import { SqliteCallStore } from '../src/store/calls.js';
import { MIGRATIONS, migrate, openDb } from '../src/store/db.js';
import { FakeDialer } from '../src/testing/fakeDialer.js';
import { FakeTwilioStream } from '../src/sim/twilioSim.js';
import { BrowserStream, UpgradeRefused } from './browserStream.js';
import { eventually, startTestBridge, type TestBridge } from './helpers.js';

const quiet = pino({ level: 'silent' }, new Writable({ write: (_c, _e, cb) => cb() }));

let bridge: Bridge | undefined;
let agent: LocalAgentServer | undefined;
let tb: TestBridge | undefined;
const streams: BrowserStream[] = [];
afterEach(async () => {
  for (const s of streams.splice(0)) s.close();
  await bridge?.app.close();
  await agent?.close();
  await tb?.close();
  bridge = undefined;
  agent = undefined;
  tb = undefined;
});

/** A local-mode bridge (no keys) with the local agent; its greeting lasts `greetingMs`. */
async function startLocal(env: Record<string, string> = {}, greetingMs = 600): Promise<string> {
  const config = loadConfig({ PORT: '0', HOST: '127.0.0.1', MAX_EVENT_LOOP_DELAY_MS: '0', ...env });
  agent = await LocalAgentServer.start({ mode: config.localAgentOptions.mode, greetingAudio: speechLikeSignal({ durationMs: greetingMs, talkMs: greetingMs, pauseMs: 0 }) });
  bridge = await createBridge(config, quiet, { agentBaseUrl: agent.url, db: openDb(':memory:') });
  return bridge.app.listen({ port: 0, host: '127.0.0.1' });
}

async function api(base: string, method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: Record<string, unknown> }> {
  const res = await fetch(base + path, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  const parsed: unknown = text === '' ? {} : JSON.parse(text);
  return { status: res.status, json: typeof parsed === 'object' && parsed !== null ? Object.fromEntries(Object.entries(parsed)) : {} };
}

const str = (v: unknown): string => (typeof v === 'string' ? v : '');
const errCode = (json: Record<string, unknown>): string => {
  const e: unknown = json.error;
  return typeof e === 'object' && e !== null && 'code' in e ? str(e.code) : '';
};
const errMessage = (json: Record<string, unknown>): string => {
  const e: unknown = json.error;
  return typeof e === 'object' && e !== null && 'message' in e ? str(e.message) : '';
};
const items = (json: Record<string, unknown>): Array<Record<string, unknown>> =>
  Array.isArray(json.data) ? json.data.map((d: unknown) => (typeof d === 'object' && d !== null ? Object.fromEntries(Object.entries(d)) : {})) : [];

async function connect(base: string, opts?: Parameters<typeof BrowserStream.connect>[1]): Promise<BrowserStream> {
  const s = await BrowserStream.connect(base, opts);
  streams.push(s);
  return s;
}

describe('browser calls in local mode', () => {
  it('a browser call gets the agent greeting with marks, barges in with a clear, shows on /v1/live, ends by API hang-up and is recorded as a web call', async () => {
    const base = await startLocal({}, 4000);
    const created = await api(base, 'POST', '/v1/web-calls', {});
    expect(created.status).toBe(201);
    const { callId, callSid, token, streamUrl, expiresAt } = created.json;
    expect(streamUrl).toBe('/web/media-stream');
    expect(str(callSid)).toMatch(/^WC[0-9a-f]{32}$/);
    expect(Date.parse(str(expiresAt))).toBeGreaterThan(Date.now());

    const s = await connect(base);
    s.start(str(callSid), str(token));
    // Silence while the greeting plays (its marks come back as its audio plays), then the caller talks over it.
    s.unmute();
    await s.until(() => s.mediaFrames > 0 && s.marksEchoed > 0, 5000, 'agent audio and an echoed mark');
    s.say(speechLikeSignal({ durationMs: 1000, talkMs: 1000, pauseMs: 0 }));
    await s.until(() => s.clears >= 1, 5000, 'a clear after the barge-in');

    const live = await api(base, 'GET', '/v1/live');
    expect(live.status).toBe(200);
    const calls = items(live.json);
    expect(calls).toHaveLength(1);
    expect(calls[0]).toMatchObject({ callId, callSid, direction: 'web', from: 'browser', state: 'live', campaignId: null, agentReconnects: 0 });
    expect(calls[0]?.bargeIns).toBeGreaterThanOrEqual(1);

    // The local agent plays the caller's words back and reports them: the live transcript has them.
    await eventually(async () => (await bridge!.calls.transcript(str(callId), 'live')).some((t) => t.role === 'user'), 5000, 'the user turn');
    const hung = await api(base, 'POST', `/v1/calls/${str(callId)}/hangup`);
    expect(hung.status).toBe(200);
    expect(hung.json).toMatchObject({ id: callId, direction: 'web', status: 'completed', outcome: 'answered', endReason: 'api_hangup' });
    await s.whenClosed();
    expect(bridge!.manager.usedSlots).toBe(0);
    expect(items((await api(base, 'GET', '/v1/live')).json)).toEqual([]);

    const listed = items((await api(base, 'GET', '/v1/calls?direction=web')).json);
    expect(listed.map((c) => c.id)).toEqual([callId]);
    const detail = await api(base, 'GET', `/v1/calls/${str(callId)}`);
    const types = (Array.isArray(detail.json.events) ? detail.json.events : []).map((e: unknown) => (typeof e === 'object' && e !== null && 'type' in e ? str(e.type) : ''));
    expect(types).toEqual(expect.arrayContaining(['created', 'stream_started', 'agent_ready', 'hangup_requested', 'session_ended', 'finalized']));
    expect(Array.isArray(detail.json.transcript) && detail.json.transcript.length).toBeGreaterThan(0);
    expect(s.marksEchoed).toBe(s.marksReceived);
  });

  it('refuses a token used a second time, and the call it belongs to goes on', async () => {
    const base = await startLocal();
    const { json } = await api(base, 'POST', '/v1/web-calls', {});
    const first = await connect(base);
    first.start(str(json.callSid), str(json.token));
    await first.until(() => first.mediaFrames > 0, 5000, 'agent audio');
    const again = await connect(base);
    again.start(str(json.callSid), str(json.token));
    const closed = await again.whenClosed();
    expect(closed).toEqual({ code: 1008, reason: 'used_token' });
    expect(first.closed).toBeUndefined();
    expect(bridge!.manager.liveCalls).toBe(1);
  });

  it('refuses a socket whose Origin is another site before the upgrade, naming why', async () => {
    const base = await startLocal();
    const refused = await BrowserStream.connect(base, { origin: 'https://evil.example' }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(UpgradeRefused);
    const r = refused instanceof UpgradeRefused ? refused : undefined;
    expect(r?.status).toBe(403);
    expect(r?.body).toContain('https://evil.example is not this server');
    expect(r?.body).toContain('cross-site WebSocket refused');
    // No Origin at all (not a browser) is not a cross-site request.
    const plain = await connect(base, { origin: null });
    expect(plain.closed).toBeUndefined();
  });

  it('without API_TOKEN refuses a socket that came through a proxy (not a local client)', async () => {
    const base = await startLocal();
    const refused = await BrowserStream.connect(base, { headers: { 'x-forwarded-for': '203.0.113.9' } }).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(UpgradeRefused);
    expect(refused instanceof UpgradeRefused && refused.status).toBe(403);
    expect(refused instanceof UpgradeRefused && refused.body).toContain('set API_TOKEN');
  });

  it('refuses a phone call token on the browser socket: only WC call sids start there', async () => {
    const base = await startLocal();
    const s = await connect(base);
    s.start('CA0123456789abcdef0123456789abcdef', 'whatever');
    expect(await s.whenClosed()).toEqual({ code: 1008, reason: 'not_web_call' });
  });

  it('refuses a browser call token on the phone media stream: its session would get the carrier call control', async () => {
    const base = await startLocal();
    const { json } = await api(base, 'POST', '/v1/web-calls', {});
    const stream = await FakeTwilioStream.connect({ bridgeUrl: base, streamUrl: `${base.replace('http', 'ws')}/twilio/media-stream` });
    stream.sendConnected();
    stream.sendStart({ callSid: str(json.callSid), customParameters: { token: str(json.token) } });
    const closed = await stream.whenClosed;
    expect(closed.reason).toBe('web_call');
    // The token was not spent: the browser can still use it.
    const s = await connect(base);
    s.start(str(json.callSid), str(json.token));
    await s.until(() => s.mediaFrames > 0, 5000, 'agent audio');
  });

  it('answers 503 capacity naming MAX_CONCURRENT_CALLS when the bridge is full, and admits again once the call ends', async () => {
    const base = await startLocal({ MAX_CONCURRENT_CALLS: '1' });
    const first = await api(base, 'POST', '/v1/web-calls', {});
    expect(first.status).toBe(201);
    const full = await api(base, 'POST', '/v1/web-calls', {});
    expect(full.status).toBe(503);
    expect(errCode(full.json)).toBe('capacity');
    expect(errMessage(full.json)).toContain('MAX_CONCURRENT_CALLS');
    // Hanging up the first (its socket never opened) gives its slot back at once.
    const hung = await api(base, 'POST', `/v1/calls/${str(first.json.callId)}/hangup`);
    expect(hung.json).toMatchObject({ status: 'canceled', outcome: 'canceled', endReason: 'api_hangup' });
    expect(bridge!.manager.usedSlots).toBe(0);
    expect((await api(base, 'POST', '/v1/web-calls', {})).status).toBe(201);
  });

  it('answers 503 draining while the bridge drains', async () => {
    const base = await startLocal();
    bridge!.manager.startDrain();
    const r = await api(base, 'POST', '/v1/web-calls', {});
    expect(r.status).toBe(503);
    expect(errCode(r.json)).toBe('draining');
  });

  it('answers 404 for a route that is not configured, and 400 for an agent whose provider is not set up', async () => {
    const base = await startLocal();
    const route = await api(base, 'POST', '/v1/web-calls', { route: '+15550001111' });
    expect(route.status).toBe(404);
    expect(errCode(route.json)).toBe('not_found');
    expect(errMessage(route.json)).toContain('GET /v1/setup');
    const agentReq = await api(base, 'POST', '/v1/web-calls', { agentId: 'openai:gpt-realtime' });
    expect(agentReq.status).toBe(400);
    expect(errMessage(agentReq.json)).toContain('OPENAI_API_KEY');
    const both = await api(base, 'POST', '/v1/web-calls', { route: '+15550001111', prompt: 'x' });
    expect(both.status).toBe(400);
    expect(bridge!.manager.usedSlots).toBe(0);
  });

  it('releases the slot and ends the call as canceled when the socket never opens before the token expires', async () => {
    const base = await startLocal({ STREAM_TOKEN_TTL_S: '1' });
    const { json } = await api(base, 'POST', '/v1/web-calls', {});
    expect(bridge!.manager.usedSlots).toBe(1);
    await eventually(() => bridge!.manager.usedSlots === 0, 3000, 'the reservation to expire');
    expect(await bridge!.calls.get(str(json.callId))).toMatchObject({ status: 'canceled', outcome: 'canceled', endReason: 'no_stream' });
  });

  it('a browser closing its page mid-call releases the slot and ends the call as completed', async () => {
    const base = await startLocal();
    const { json } = await api(base, 'POST', '/v1/web-calls', {});
    const s = await connect(base);
    s.start(str(json.callSid), str(json.token));
    await s.until(() => s.mediaFrames > 0, 5000, 'agent audio');
    s.stop();
    s.close();
    await eventually(() => bridge!.manager.usedSlots === 0, 3000, 'the slot to be released');
    await eventually(async () => (await bridge!.calls.get(str(json.callId)))?.finalizedAt !== null, 3000, 'the call to be finalized');
    expect(await bridge!.calls.get(str(json.callId))).toMatchObject({ direction: 'web', status: 'completed', outcome: 'answered', endReason: 'caller_hangup' });
  });
});

describe('browser calls never reach a carrier', () => {
  it('a browser call ended by the agent, by a goodbye and by the API makes no carrier request', async () => {
    const dialer = new FakeDialer('twilio');
    tb = await startTestBridge({ env: { API_TOKEN: 'api-token-for-web-calls-test' }, overrides: { dialer } });
    const auth = { authorization: 'Bearer api-token-for-web-calls-test' };
    const open = async () => {
      const { status, json } = await api(tb!.url, 'POST', '/v1/web-calls', { prompt: 'be brief' }, auth);
      expect(status).toBe(201);
      const s = await connect(tb!.url);
      s.start(str(json.callSid), str(json.token));
      const conn = await tb!.agent.nextConnection();
      const setup = await conn.waitForSetup();
      expect(JSON.stringify(setup)).toContain('be brief');
      conn.init();
      const callId = str(json.callId);
      await eventually(async () => ((await tb!.bridge.calls.get(callId))?.conversationId ?? null) !== null, 3000, 'agent ready');
      return { s, conn, callId, callSid: str(json.callSid) };
    };

    // 1. The agent hangs up.
    const a = await open();
    a.conn.hangup();
    await a.s.whenClosed();
    await eventually(async () => ((await tb!.bridge.calls.get(a.callId))?.finalizedAt ?? null) !== null, 3000, 'call a finalized');
    expect(await tb.bridge.calls.get(a.callId)).toMatchObject({ status: 'completed', endReason: 'agent_hangup' });

    // 2. A goodbye (maximum length, drain timeout): call control is asked, and it must not be the carrier's.
    const b = await open();
    tb.bridge.manager.getSession(b.callSid)?.endWithGoodbye('max_duration');
    await b.s.whenClosed();
    await eventually(async () => ((await tb!.bridge.calls.get(b.callId))?.finalizedAt ?? null) !== null, 3000, 'call b finalized');
    expect(await tb.bridge.calls.get(b.callId)).toMatchObject({ status: 'completed', endReason: 'max_duration' });

    // 3. The API hangs up a live browser call.
    const c = await open();
    const hung = await api(tb.url, 'POST', `/v1/calls/${c.callId}/hangup`, undefined, auth);
    expect(hung.status).toBe(200);
    expect(hung.json).toMatchObject({ status: 'completed', endReason: 'api_hangup' });
    await c.s.whenClosed();

    expect(tb.callControl.requests).toEqual([]);
    expect(dialer.hangups).toEqual([]);
    expect(dialer.said).toEqual([]);
    expect(tb.bridge.manager.usedSlots).toBe(0);
  });

  it('with API_TOKEN set, the API refuses to mint a browser call without the bearer token', async () => {
    tb = await startTestBridge({ env: { API_TOKEN: 'api-token-for-web-calls-test' } });
    const r = await api(tb.url, 'POST', '/v1/web-calls', {});
    expect(r.status).toBe(401);
    expect(tb.bridge.manager.usedSlots).toBe(0);
  });
});

describe('the call store and browser calls', () => {
  it('migrates a database from before browser calls, keeping its calls, and then stores web calls', async () => {
    const db = new Database(':memory:');
    db.exec(MIGRATIONS[0] ?? '');
    db.exec(MIGRATIONS[1] ?? '');
    db.pragma('user_version = 2');
    const before = await new SqliteCallStore(db).insert({ direction: 'inbound', callSid: 'CA00000000000000000000000000000001', to: '+15550001', from: '+15550002', agentId: 'playai:a', status: 'completed' });
    expect(() => db.prepare("UPDATE calls SET direction = 'web'").run()).toThrow(/CHECK/);
    expect(migrate(db)).toBe(MIGRATIONS.length - 2);
    const calls = new SqliteCallStore(db);
    expect(await calls.get(before.id)).toEqual(before);
    const web = await calls.insert({ direction: 'web', callSid: 'WC00000000000000000000000000000001', to: 'playai:a', from: 'browser', agentId: 'playai:a', status: 'initiated' });
    expect((await calls.list({ direction: 'web', limit: 10 })).map((c) => c.id)).toEqual([web.id]);
    expect((await calls.unfinished()).map((c) => c.id)).toEqual([before.id, web.id]);
    expect(() => db.prepare("UPDATE calls SET direction = 'sideways'").run()).toThrow(/CHECK/);
  });
});
