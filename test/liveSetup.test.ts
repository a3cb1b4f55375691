/**
 * `GET /v1/live` and `GET /v1/setup`: what is in progress on this process, and
 * the agents, routes, capacity and readiness in effect, without a secret.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { createBridge, type Bridge } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { openDb } from '../src/store/db.js';
import { FakeDialer } from '../src/testing/fakeDialer.js';
import type { TransferCarrier } from '../src/transfer/coordinator.js';
import { BrowserStream } from './browserStream.js';
import { eventually, openCall, startTestBridge, type TestBridge } from './helpers.js';

const quiet = pino({ level: 'silent' }, new Writable({ write: (_c, _e, cb) => cb() }));

let bridge: Bridge | undefined;
let tb: TestBridge | undefined;
afterEach(async () => {
  await bridge?.app.close();
  await tb?.close();
  bridge = undefined;
  tb = undefined;
});

const asRecord = (v: unknown): Record<string, unknown> => (typeof v === 'object' && v !== null ? Object.fromEntries(Object.entries(v)) : {});

/** Every secret the configuration below holds: none may appear in /v1/setup or /v1/live. */
const SECRETS = {
  TWILIO_AUTH_TOKEN: 'twilio-auth-token-SECRET-0001',
  PLAYAI_API_KEY: 'playai-api-key-SECRET-0002',
  OPENAI_API_KEY: 'openai-api-key-SECRET-0003',
  DEEPGRAM_API_KEY: 'deepgram-api-key-SECRET-0004',
  ELEVENLABS_API_KEY: 'elevenlabs-api-key-SECRET-0005',
  API_TOKEN: 'api-token-SECRET-0006-abcdef',
  METRICS_TOKEN: 'metrics-token-SECRET-0007-abc',
  WEBHOOK_SECRET: 'webhook-secret-SECRET-0008-ab',
};
/** The webhook URL can carry credentials of its own: not shown either. */
const WEBHOOK_URL = 'https://hookuser:hookpass-SECRET-0009@hooks.example.test/playline?key=SECRET-0010';

function configFiles(): { routes: string; agents: string } {
  const dir = mkdtempSync(join(tmpdir(), 'playline-setup-'));
  const routes = join(dir, 'routes.json');
  const agents = join(dir, 'agents.json');
  writeFileSync(
    routes,
    JSON.stringify({
      '+15551230001': {
        agentId: 'openai:gpt-realtime',
        prompt: 'You sell boats.',
        customGreeting: 'Boats here!',
        transferTargets: { frontdesk: { to: '+14155550110', timeoutS: 25, description: 'the front desk', callerId: '+14155550120' }, billing: 'sip:billing@pbx.example.test' },
        dtmf: { '0': { transfer: 'frontdesk' }, '9': { transfer: 'sales', mode: 'warm' } },
      },
      '+15551230002': { agentId: 'sales' },
    }),
  );
  writeFileSync(agents, JSON.stringify({ 'openai:gpt-realtime': { instructions: 'Be kind.', greeting: 'Hello there', fallback: ['playai:agent-default'], transferTargets: { sales: '+14155550112' } } }));
  return { routes, agents };
}

describe('GET /v1/setup', () => {
  it('shows the agents, routes, capacity, readiness and webhook in effect, and none of the configured secrets', async () => {
    const files = configFiles();
    const config = loadConfig({
      PORT: '0',
      HOST: '127.0.0.1',
      MAX_EVENT_LOOP_DELAY_MS: '0',
      ...SECRETS,
      TWILIO_ACCOUNT_SID: 'AC0123456789abcdef0123456789abcdef',
      PUBLIC_URL: 'https://voice.example.test',
      PLAYAI_AGENT_ID: 'agent-default',
      DEFAULT_AGENT: 'playai:agent-default',
      PLAYAI_USER_ID: 'playai-user',
      ROUTES_FILE: files.routes,
      AGENTS_FILE: files.agents,
      AGENT_LIMITS: 'playai:sales=3',
      MAX_CONCURRENT_CALLS: '7',
      INBOUND_RESERVED: '2',
      WEBHOOK_URL,
    });
    bridge = await createBridge(config, quiet, { db: openDb(':memory:'), probeAgents: false, dialer: new FakeDialer('twilio') });
    const res = await bridge.app.inject({ method: 'GET', url: '/v1/setup', headers: { authorization: `Bearer ${SECRETS.API_TOKEN}` } });
    expect(res.statusCode).toBe(200);
    for (const [name, value] of Object.entries(SECRETS)) expect(res.body, name).not.toContain(value);
    expect(res.body).not.toContain('SECRET');
    expect(res.body).not.toContain('hooks.example.test');

    const body = asRecord(res.json());
    expect(body).toMatchObject({
      mode: 'twilio',
      defaultAgent: 'playai:agent-default',
      routes: [
        {
          number: '+15551230001',
          agentId: 'openai:gpt-realtime',
          prompt: 'You sell boats.',
          customGreeting: 'Boats here!',
          transferTargets: [
            { name: 'frontdesk', to: '+14155550110', description: 'the front desk', timeoutS: 25 },
            { name: 'billing', to: 'sip:billing@pbx.example.test', timeoutS: 30 },
          ],
          hotkeys: [
            { key: '0', transfer: 'frontdesk', mode: 'cold' },
            { key: '9', transfer: 'sales', mode: 'warm' },
          ],
        },
        { number: '+15551230002', agentId: 'playai:sales', transferTargets: [], hotkeys: [] },
      ],
      capacity: { maxConcurrentCalls: 7, usedSlots: 0, liveCalls: 0, reservedSlots: 0, inboundReserved: 2 },
      ready: { ready: true, draining: false, agentsDown: [] },
      webhook: { configured: true, events: ['call.completed'] },
    });
    const agents = Array.isArray(body.agents) ? body.agents.map(asRecord) : [];
    expect(agents.map((a) => a.id)).toEqual(['playai:agent-default', 'openai:gpt-realtime', 'playai:sales']);
    expect(agents.find((a) => a.id === 'openai:gpt-realtime')).toEqual({
      id: 'openai:gpt-realtime',
      provider: 'openai',
      up: true,
      openSessions: 0,
      limit: null,
      fallbacks: ['playai:agent-default'],
      customGreeting: 'Hello there',
      hasPrompt: true,
      transferTargets: [{ name: 'sales', to: '+14155550112', timeoutS: 30 }],
    });
    expect(agents.find((a) => a.id === 'playai:sales')).toMatchObject({ limit: 3, hasPrompt: false, fallbacks: [], transferTargets: [] });
    // A caller ID is the operator's own number: the setup shows where a target rings, not what it shows.
    expect(res.body).not.toContain('callerId');

    // The OpenAPI document has the new routes.
    const docs = await bridge.app.inject({ method: 'GET', url: '/docs/json' });
    const paths = Object.keys(asRecord(asRecord(docs.json()).paths));
    expect(paths).toEqual(expect.arrayContaining(['/v1/live', '/v1/setup', '/v1/web-calls']));
    const components = Object.keys(asRecord(asRecord(asRecord(docs.json()).components).schemas));
    expect(components).toEqual(expect.arrayContaining(['LiveCall', 'Setup', 'TransferTargetInfo']));
  });

  it('in local mode says local, names the local agent and no webhook', async () => {
    const config = loadConfig({ PORT: '0', HOST: '127.0.0.1', MAX_EVENT_LOOP_DELAY_MS: '0' });
    bridge = await createBridge(config, quiet, { db: openDb(':memory:'), probeAgents: false });
    const res = await bridge.app.inject({ method: 'GET', url: '/v1/setup' });
    expect(res.statusCode).toBe(200);
    expect(res.json()).toMatchObject({
      mode: 'local',
      defaultAgent: 'playai:local-echo',
      agents: [{ id: 'playai:local-echo', provider: 'playai', up: true, openSessions: 0, limit: null, fallbacks: [], hasPrompt: false, transferTargets: [] }],
      routes: [],
      webhook: { configured: false, events: [] },
    });
  });

  it('refuses without the bearer token when API_TOKEN is set', async () => {
    const config = loadConfig({ PORT: '0', HOST: '127.0.0.1', API_TOKEN: SECRETS.API_TOKEN });
    bridge = await createBridge(config, quiet, { db: openDb(':memory:'), probeAgents: false });
    for (const url of ['/v1/setup', '/v1/live']) expect((await bridge.app.inject({ method: 'GET', url })).statusCode).toBe(401);
  });
});

describe('GET /v1/live', () => {
  it('lists a phone call in progress with its state, agent and counters, counts its agent session in /v1/setup, and drops it once it ends', async () => {
    tb = await startTestBridge();
    const live = async () => asRecord((await tb!.bridge.app.inject({ method: 'GET', url: '/v1/live' })).json());
    expect(await live()).toEqual({ data: [] });

    const call = await openCall(tb, { to: '+15559870000' });
    await eventually(() => tb!.bridge.manager.openAgentSessions() === 1, 3000, 'agent ready');
    const row = await tb.bridge.calls.getBySid(call.callSid);
    const data = Array.isArray((await live()).data) ? ((await live()).data as unknown[]).map(asRecord) : [];
    expect(data).toHaveLength(1);
    expect(data[0]).toMatchObject({
      callId: row?.id,
      callSid: call.callSid,
      direction: 'inbound',
      to: '+15559870000',
      agentId: 'playai:agent-default',
      state: 'live',
      bargeIns: 0,
      agentReconnects: 0,
      campaignId: null,
      // No carrier that can redirect a call (no Twilio credentials) and no targets.
      transfer: { available: false, targets: [] },
    });
    expect(Date.parse(String(data[0]?.startedAt))).toBeLessThanOrEqual(Date.now());
    expect(data[0]?.durationS).toBeGreaterThanOrEqual(0);

    const setup = asRecord((await tb.bridge.app.inject({ method: 'GET', url: '/v1/setup' })).json());
    expect(setup.capacity).toMatchObject({ usedSlots: 1, liveCalls: 1, reservedSlots: 0 });
    const agents = Array.isArray(setup.agents) ? setup.agents.map(asRecord) : [];
    expect(agents.find((a) => a.id === 'playai:agent-default')?.openSessions).toBe(1);

    // A barge-in while agent audio is queued is counted.
    call.stream.autoEchoMarks = false;
    call.agent.newAudioStream();
    for (let i = 0; i < 10; i++) call.agent.audio(Buffer.alloc(160, 0x55).toString('base64'));
    await eventually(() => call.stream.marks.length > 0, 3000, 'a mark');
    call.agent.voiceActivityStart();
    await eventually(() => call.stream.clears > 0, 3000, 'a clear');
    expect(asRecord(((await live()).data as unknown[])[0]).bargeIns).toBe(1);

    call.stream.sendStop();
    await eventually(() => tb!.bridge.manager.liveCalls === 0, 3000, 'the call to end');
    expect(await live()).toEqual({ data: [] });
  });
});

/** A carrier that takes every redirect (what /v1/live needs to call a phone call transferable). */
const acceptingCarrier: TransferCarrier = {
  redirect: async () => true,
  createCall: async () => undefined,
  hangup: async () => true,
};

const CALLED = '+14155550999';

describe('GET /v1/live: who a call can be transferred to', () => {
  async function start(): Promise<TestBridge> {
    const dir = mkdtempSync(join(tmpdir(), 'playline-live-transfer-'));
    const routes = join(dir, 'routes.json');
    const agentsFile = join(dir, 'agents.json');
    writeFileSync(
      routes,
      JSON.stringify({ [CALLED]: { agentId: 'playai:agent-default', transferTargets: { frontdesk: { to: '+14155550100', description: 'the front desk' }, billing: '+14155550101' } } }),
    );
    // The agent's own targets: the route's "billing" wins over the agent's of the same name.
    writeFileSync(agentsFile, JSON.stringify({ 'playai:agent-default': { transferTargets: { billing: '+14155550199', sales: { to: 'sip:sales@pbx.example.test', timeoutS: 40 } } } }));
    tb = await startTestBridge({
      env: { ROUTES_FILE: routes, AGENTS_FILE: agentsFile, TWILIO_ACCOUNT_SID: `AC${'0'.repeat(32)}`, API_TOKEN: SECRETS.API_TOKEN },
      overrides: { transferCarrier: acceptingCarrier },
    });
    return tb;
  }
  const liveCalls = async (t: TestBridge): Promise<Array<Record<string, unknown>>> => {
    const res = await t.bridge.app.inject({ method: 'GET', url: '/v1/live', headers: { authorization: `Bearer ${SECRETS.API_TOKEN}` } });
    const body = asRecord(res.json());
    return Array.isArray(body.data) ? body.data.map(asRecord) : [];
  };

  it("a phone call with a transfer carrier is transferable, to its route's targets over its agent's", async () => {
    const t = await start();
    const call = await openCall(t, { to: CALLED });
    await eventually(() => t.bridge.manager.openAgentSessions() === 1, 3000, 'agent ready');
    const [c] = await liveCalls(t);
    expect(c?.transfer).toEqual({
      available: true,
      targets: [
        { name: 'billing', to: '+14155550101', timeoutS: 30 },
        { name: 'sales', to: 'sip:sales@pbx.example.test', timeoutS: 40 },
        { name: 'frontdesk', to: '+14155550100', description: 'the front desk', timeoutS: 30 },
      ],
    });
    call.stream.sendStop();
    await eventually(() => t.bridge.manager.liveCalls === 0, 3000, 'the call to end');
  });

  it('a browser call is not transferable, even with a transfer carrier', async () => {
    const t = await start();
    const created = await t.bridge.app.inject({ method: 'POST', url: '/v1/web-calls', headers: { authorization: `Bearer ${SECRETS.API_TOKEN}` }, payload: {} });
    expect(created.statusCode).toBe(201);
    const { callSid, token } = asRecord(created.json());
    const browser = await BrowserStream.connect(t.url);
    browser.start(String(callSid), String(token));
    const agent = await t.agent.nextConnection();
    await agent.waitForSetup();
    agent.init();
    await eventually(() => t.bridge.manager.openAgentSessions() === 1, 3000, 'agent ready');
    const [c] = await liveCalls(t);
    expect(c).toMatchObject({ direction: 'web' });
    // The agent's own targets are listed; none can be used from a browser call.
    expect(c?.transfer).toEqual({ available: false, targets: [expect.objectContaining({ name: 'billing' }), expect.objectContaining({ name: 'sales' })] });
    browser.stop();
    await eventually(() => t.bridge.manager.liveCalls === 0, 3000, 'the call to end');
  });
});
