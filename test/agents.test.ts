/**
 * Agents beyond PlayAI, outside the adapters: configuration (DEFAULT_AGENT,
 * provider keys, AGENTS_FILE), the agent directory (requests, fallbacks,
 * health and probes), per-provider capacity and down agents in the session
 * manager, and what operators see (/readyz, /metrics, the API).
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentDirectory } from '../src/agent/directory.js';
import type { AgentConnectOptions, AgentLeg, AgentProvider, AgentProviderName } from '../src/agent/port.js';
import { parseAgentRef } from '../src/agent/port.js';
import { loadConfig, parseAgentsFile } from '../src/config.js';
import { SessionManager, type ManagedSession, type Slot } from '../src/session/manager.js';
import { FakeTwilioStream, newCallSid, postVoiceWebhook } from '../src/sim/twilioSim.js';
import { AUTH_TOKEN, eventually, startTestBridge, storedCall, type TestBridge } from './helpers.js';

const tmpFile = (name: string, content: unknown): string => {
  const dir = mkdtempSync(join(tmpdir(), 'playline-agents-'));
  const file = join(dir, name);
  writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content));
  return file;
};

describe('agent configuration', () => {
  it('OPENAI_API_KEY alone makes openai:gpt-realtime the default agent and leaves local mode', () => {
    const c = loadConfig({ OPENAI_API_KEY: 'sk-test' });
    expect(c.localAgent).toBe(false);
    expect(c.agents.defaultAgent).toBe('openai:gpt-realtime');
    expect(c.agents.openai).toEqual({ apiKey: 'sk-test', url: 'wss://api.openai.com/v1/realtime' });
  });

  it('PLAYAI_AGENT_ID keeps working and means playai:<id>', () => {
    expect(loadConfig({ PLAYAI_API_KEY: 'k', PLAYAI_AGENT_ID: 'Agent-XP5' }).agents.defaultAgent).toBe('playai:Agent-XP5');
  });

  it('no agent credentials and no DEFAULT_AGENT is local mode, on the local agent', () => {
    const c = loadConfig({});
    expect(c.localAgent).toBe(true);
    expect(c.agents.defaultAgent).toBe('playai:local-echo');
  });

  it('DEFAULT_AGENT wins over PLAYAI_AGENT_ID and a public ElevenLabs agent needs no key', () => {
    const c = loadConfig({ DEFAULT_AGENT: 'elevenlabs:agent_8201k', PLAYAI_AGENT_ID: 'old' });
    expect(c.localAgent).toBe(false);
    expect(c.agents.defaultAgent).toBe('elevenlabs:agent_8201k');
    expect(c.agents.elevenlabs.apiKey).toBeUndefined();
  });

  it.each([
    [{ DEFAULT_AGENT: 'openai:gpt-realtime' }, /^OPENAI_API_KEY: required because DEFAULT_AGENT names openai:gpt-realtime/],
    [{ DEFAULT_AGENT: 'deepgram:support' }, /^DEEPGRAM_API_KEY: required because DEFAULT_AGENT names deepgram:support/],
    [{ DEEPGRAM_API_KEY: 'dg' }, /^DEFAULT_AGENT: required .*deepgram:support/],
    [{ DEFAULT_AGENT: 'acme:x' }, /^DEFAULT_AGENT: "acme:x" is not an agent like openai:gpt-realtime/],
    // A bare provider name is a slip for provider:id, not a PlayAI agent of that name.
    [{ OPENAI_API_KEY: 'k', DEFAULT_AGENT: 'openai' }, /^DEFAULT_AGENT: "openai" is not an agent like openai:gpt-realtime/],
    [{ OPENAI_API_KEY: 'k', AGENT_LIMITS: 'openai=5' }, /^AGENT_LIMITS: .* is not a list of agent=max pairs/],
    [{ OPENAI_API_KEY: 'k', OPENAI_REALTIME_URL: 'https://api.openai.com/v1/realtime' }, /^OPENAI_REALTIME_URL: .* is not a URL starting with wss:\/\/ or ws:\/\//],
    [{ OPENAI_API_KEY: 'k', AGENT_LIMITS: 'openai:gpt-realtime=five' }, /^AGENT_LIMITS: .*openai:gpt-realtime=5/],
    [{ OPENAI_API_KEY: 'k', AGENT_LIMITS: 'deepgram:support=2' }, /^DEEPGRAM_API_KEY: required because AGENT_LIMITS names deepgram:support/],
  ])('stops the boot on %j with a message naming the variable', (env, message) => {
    expect(() => loadConfig(env)).toThrow(message);
  });

  it('reads AGENT_LIMITS per provider:id, a bare id being a PlayAI agent', () => {
    const c = loadConfig({ OPENAI_API_KEY: 'k', AGENT_LIMITS: 'openai:gpt-realtime=5, sales:2' });
    expect([...c.agentLimits]).toEqual([
      ['openai:gpt-realtime', 5],
      ['playai:sales', 2],
    ]);
  });

  it('reads AGENTS_FILE keyed by provider:id, with fallbacks normalized', () => {
    const file = tmpFile('agents.json', { 'openai:gpt-realtime': { instructions: 'Be brief.', greeting: 'Hi!', voice: 'marin', fallback: ['backup-agent'] } });
    const c = loadConfig({ OPENAI_API_KEY: 'k', PLAYAI_API_KEY: 'p', DEFAULT_AGENT: 'openai:gpt-realtime', AGENTS_FILE: file });
    expect(c.agents.definitions.get('openai:gpt-realtime')).toEqual({ instructions: 'Be brief.', greeting: 'Hi!', voice: 'marin', fallback: ['playai:backup-agent'] });
  });

  it.each([
    [{ 'openai:gpt-realtime': { instructions: 1 } }, /^AGENTS_FILE: .*: openai:gpt-realtime\.instructions: /],
    [{ 'openai:gpt-realtime': { greting: 'typo' } }, /^AGENTS_FILE: .*: openai:gpt-realtime: Unrecognized key/],
    [{ 'openai:gpt-realtime': { fallback: ['openai:gpt-realtime'] } }, /cannot be its own fallback/],
    [{ 'openai:gpt-realtime': { fallback: ['deepgram:support'] } }, /^DEEPGRAM_API_KEY: required because AGENTS_FILE \(fallback of openai:gpt-realtime\) names deepgram:support/],
    [{ 'openai:gpt-realtime': { format: { output: { encoding: 'mp3', sampleRate: 8000 } } } }, /format\.output\.encoding: mulaw or linear16/],
    ['{not json', /^AGENTS_FILE: cannot read .* as JSON/],
  ])('refuses a bad AGENTS_FILE (%j) naming the key', (content, message) => {
    const file = tmpFile('agents.json', content);
    expect(() => loadConfig({ OPENAI_API_KEY: 'k', AGENTS_FILE: file })).toThrow(message);
  });

  it('a route to a provider without its key stops the boot naming the key and the number', () => {
    const file = tmpFile('routes.json', { '+15551230001': { agentId: 'deepgram:support' } });
    expect(() => loadConfig({ OPENAI_API_KEY: 'k', ROUTES_FILE: file })).toThrow(/^DEEPGRAM_API_KEY: required because ROUTES_FILE \(\+15551230001\) names deepgram:support/);
  });

  it('the example agents and routes files of deploy/config load', () => {
    const c = loadConfig({
      OPENAI_API_KEY: 'k',
      DEEPGRAM_API_KEY: 'd',
      DEFAULT_AGENT: 'openai:gpt-realtime',
      AGENTS_FILE: resolve('deploy/config/agents.example.json'),
      ROUTES_FILE: resolve('deploy/config/routes.example.json'),
    });
    expect(c.agents.definitions.get('openai:gpt-realtime')?.fallback).toEqual(['deepgram:support']);
    expect([...c.routes.values()].map((r) => r.agentId)).toEqual(['openai:gpt-realtime', 'elevenlabs:agent_8201k7examplesales']);
    expect(parseAgentsFile(resolve('deploy/config/agents.example.json')).size).toBe(3);
  });
});

/** A provider whose sessions are scripted by the test. */
function scriptedProvider(name: AgentProviderName, supportsTools = true): AgentProvider & { opened: AgentConnectOptions[] } {
  const opened: AgentConnectOptions[] = [];
  return {
    name,
    resumesById: name === 'playai',
    supportsTools,
    acceptsText: name !== 'playai',
    opened,
    connect(opts): AgentLeg {
      opened.push(opts);
      let open = true;
      return {
        sendAudio: () => open,
        sendAudioBytes: () => open,
        interrupted() {},
        sendText() {},
        toolResult() {},
        bufferedAmount: 0,
        get isOpen() {
          return open;
        },
        close() {
          open = false;
        },
      };
    },
  };
}

describe('agent directory', () => {
  const providers = (): Map<AgentProviderName, AgentProvider> =>
    new Map<AgentProviderName, AgentProvider>([
      ['openai', scriptedProvider('openai')],
      ['playai', scriptedProvider('playai', false)],
    ]);

  it('merges the agent settings with the route: prompt appended, greeting replaced, end_call offered where tools exist', () => {
    const d = new AgentDirectory({ providers: providers(), definitions: new Map([['openai:gpt-realtime', { instructions: 'Be brief.', greeting: 'Hi', voice: 'marin' }]]) });
    const call = { callSid: 'CA1', from: '+1', to: '+2', direction: 'inbound' };
    const r = d.request({ agentId: 'openai:gpt-realtime', prompt: 'Sales line.', customGreeting: 'Sales, hello' }, call);
    expect(r).toMatchObject({ id: 'gpt-realtime', instructions: 'Be brief.\n\nSales line.', greeting: 'Sales, hello', voice: 'marin' });
    expect(r.tools.map((t) => t.name)).toEqual(['end_call']);
    expect(d.request({ agentId: 'playai:abc' }, call).tools).toEqual([]);
  });

  it('says why an agent cannot be used, naming the variable', () => {
    const d = new AgentDirectory({ providers: providers() });
    expect(d.whyUnusable('openai:gpt-realtime')).toBeUndefined();
    expect(d.whyUnusable('deepgram:support')).toMatch(/set DEEPGRAM_API_KEY/);
    expect(d.whyUnusable('bare-playai-id')).toBeUndefined();
  });

  it('marks an agent down after three failed connects in a row, and a ready session brings it back', () => {
    let now = 0;
    const changes: string[] = [];
    const d = new AgentDirectory({ providers: providers(), now: () => now, onHealthChange: (ref, up) => changes.push(`${ref}:${up ? 'up' : 'down'}`) });
    d.reportConnectFailure('openai:gpt-realtime', 'refused');
    d.reportConnectFailure('openai:gpt-realtime', 'refused');
    expect(d.isDown('openai:gpt-realtime')).toBe(false);
    d.reportConnectFailure('openai:gpt-realtime', 'refused');
    expect(d.isDown('openai:gpt-realtime')).toBe(true);
    expect(d.downAgents()).toEqual(['openai:gpt-realtime']);
    expect(d.knownAgents()).toEqual([{ ref: 'openai:gpt-realtime', up: false }]);
    // Without a probe, the down time passing lets the next call try it.
    now = 30_000;
    expect(d.isDown('openai:gpt-realtime')).toBe(false);
    d.reportReady('openai:gpt-realtime');
    expect(changes).toEqual(['openai:gpt-realtime:down', 'openai:gpt-realtime:up']);
  });

  it('a success between failures resets the run', () => {
    const d = new AgentDirectory({ providers: providers() });
    d.reportConnectFailure('openai:gpt-realtime', 'x');
    d.reportConnectFailure('openai:gpt-realtime', 'x');
    d.reportReady('openai:gpt-realtime');
    d.reportConnectFailure('openai:gpt-realtime', 'x');
    d.reportConnectFailure('openai:gpt-realtime', 'x');
    expect(d.isDown('openai:gpt-realtime')).toBe(false);
  });

  it('sends calls of a down agent to its first fallback that is up, or to none', () => {
    const d = new AgentDirectory({ providers: providers(), definitions: new Map([['openai:gpt-realtime', { fallback: ['playai:b1', 'playai:b2'] }]]) });
    for (let i = 0; i < 3; i++) d.reportConnectFailure('openai:gpt-realtime', 'x');
    expect(d.firstUp('openai:gpt-realtime')).toBe('playai:b1');
    for (let i = 0; i < 3; i++) d.reportConnectFailure('playai:b1', 'x');
    expect(d.firstUp('openai:gpt-realtime')).toBe('playai:b2');
    for (let i = 0; i < 3; i++) d.reportConnectFailure('playai:b2', 'x');
    expect(d.firstUp('openai:gpt-realtime')).toBeUndefined();
  });

  it('with probing on, a down agent stays down until a probe answers, and a failed probe waits another down period', async () => {
    let now = 0;
    const d = new AgentDirectory({ providers: providers(), now: () => now, downForMs: 30_000 });
    const answers: boolean[] = [false, true];
    const probed: string[] = [];
    d.startProbing(async (ref) => {
      probed.push(ref);
      return answers.shift() ?? false;
    }, 60_000);
    for (let i = 0; i < 3; i++) d.reportConnectFailure('openai:gpt-realtime', 'x');
    d.probeDue();
    expect(probed).toEqual([]); // not before the down period is over
    now = 30_000;
    expect(d.isDown('openai:gpt-realtime')).toBe(true);
    d.probeDue();
    await Promise.resolve();
    expect(probed).toEqual(['openai:gpt-realtime']);
    expect(d.isDown('openai:gpt-realtime')).toBe(true);
    d.probeDue();
    expect(probed).toHaveLength(1); // the failed probe pushed the next one 30 s out
    now = 60_000;
    d.probeDue();
    await Promise.resolve();
    await Promise.resolve();
    expect(probed).toHaveLength(2);
    expect(d.isDown('openai:gpt-realtime')).toBe(false);
    d.stopProbing();
  });
});

describe('session manager: capacity per provider and down agents', () => {
  const session = (callSid: string, slot: Slot, provider: AgentProviderName): ManagedSession => ({
    callSid,
    slot,
    agentConnected: true,
    agentConnectedOnce: true,
    agentProvider: provider,
    streamDead: false,
    close() {},
    endWithGoodbye() {},
    sweep() {},
  });
  const call = (n: number, to = '+15550000001') => ({ callSid: `CA${n}`, from: '+15551112222', to, direction: 'inbound' });

  it("a provider's capacity refusal caps its agents only, and one of its calls ending lifts it", () => {
    const routes = new Map([['+15550000002', { agentId: 'playai:sales' }]]);
    const m = new SessionManager({ maxConcurrentCalls: 10, tokenTtlMs: 10_000, defaultAgentId: 'openai:gpt-realtime', routes });
    const a = m.admit(call(1));
    expect(a.ok).toBe(true);
    const claimed = a.ok ? m.claim(a.token, 'CA1') : undefined;
    if (claimed === undefined || !claimed.ok) throw new Error('claim');
    const s = session('CA1', claimed.reservation.slot, 'openai');
    m.register(s);
    expect(m.noteAgentCapacityExceeded('openai')).toBe(1);
    expect(m.capacityFor('openai')).toBe(1);
    expect(m.capacityFor('playai')).toBe(10);
    expect(m.admit(call(2))).toEqual({ ok: false, reason: 'agent_capacity' });
    expect(m.admit(call(3, '+15550000002')).ok).toBe(true);
    expect(m.holdOutboundSlot('k1', 'openai:gpt-realtime')).toBeUndefined();
    m.release(s);
    expect(m.admit(call(4)).ok).toBe(true);
  });

  it('refuses calls to an agent that is down with no fallback up (agent_down), and dials nothing for it', () => {
    const m = new SessionManager({ maxConcurrentCalls: 10, tokenTtlMs: 10_000, defaultAgentId: 'openai:gpt-realtime', routes: new Map(), agentCandidates: (ref) => (ref === 'openai:gpt-realtime' ? [] : [ref]) });
    expect(m.admit(call(1))).toEqual({ ok: false, reason: 'agent_down' });
    expect(m.holdOutboundSlot('k', 'openai:gpt-realtime')).toBeUndefined();
    expect(m.holdOutboundSlot('k2', 'playai:other')).toBeDefined();
  });

  it('counts AGENT_LIMITS per provider:id whether the agent is written bare or with its provider', () => {
    const m = new SessionManager({ maxConcurrentCalls: 10, tokenTtlMs: 10_000, defaultAgentId: 'sales', routes: new Map(), agentLimits: new Map([['sales', 1]]) });
    expect(m.holdOutboundSlot('k1', 'playai:sales')?.agentId).toBe('playai:sales');
    expect(m.holdOutboundSlot('k2', 'sales')).toBeUndefined();
    expect(parseAgentRef('sales')).toEqual({ provider: 'playai', id: 'sales' });
  });
});

describe('what operators see', () => {
  let tb: TestBridge | undefined;
  afterEach(async () => {
    await tb?.close();
    tb = undefined;
  });

  it('an agent that keeps failing to connect is marked down: /readyz and /metrics say so, and new calls hear the busy prompt at the webhook', async () => {
    // Nothing listens on port 9: every connect is refused.
    tb = await startTestBridge({ env: { AGENT_RECONNECT_ATTEMPTS: '0', PLAYAI_WS_URL: 'ws://127.0.0.1:9' }, overrides: { agentBaseUrl: 'ws://127.0.0.1:9', probeAgents: false } });
    for (let i = 0; i < 3; i++) {
      const callSid = newCallSid();
      const hook = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: tb.config.publicUrl, authToken: AUTH_TOKEN, params: { CallSid: callSid } });
      const stream = await FakeTwilioStream.connect({ bridgeUrl: tb.url, streamUrl: hook.twiml?.streamUrl ?? '', authToken: AUTH_TOKEN });
      stream.sendStart({ callSid, customParameters: hook.twiml?.parameters ?? {} });
      await stream.waitForClose(5000);
    }
    const ready = await tb.bridge.app.inject({ method: 'GET', url: '/readyz' });
    expect(ready.statusCode).toBe(200);
    expect(ready.json()).toMatchObject({ ready: true, defaultAgent: 'playai:agent-default', defaultAgentUp: false, agentsDown: ['playai:agent-default'] });
    const metrics = await tb.bridge.app.inject({ method: 'GET', url: '/metrics' });
    expect(metrics.body).toContain('playline_agent_up{agent="playai:agent-default"} 0');
    const hook = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: tb.config.publicUrl, authToken: AUTH_TOKEN, params: { CallSid: newCallSid() } });
    expect(hook.twiml?.streamUrl).toBeUndefined();
    expect(hook.body).toContain(tb.config.messages.busy);
    const after = await tb.bridge.app.inject({ method: 'GET', url: '/metrics' });
    expect(after.body).toContain('playline_calls_refused_total{reason="agent_down"} 1');
  });

  it('a call to an agent marked down starts on its fallback at once, and the record says so', async () => {
    const file = join(mkdtempSync(join(tmpdir(), 'playline-agents-')), 'agents.json');
    writeFileSync(file, JSON.stringify({ 'playai:agent-default': { fallback: ['playai:backup'] } }));
    tb = await startTestBridge({ env: { AGENTS_FILE: file }, overrides: { probeAgents: false } });
    for (let i = 0; i < 3; i++) tb.bridge.agents.reportConnectFailure('playai:agent-default', 'test');
    const callSid = newCallSid();
    const hook = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: tb.config.publicUrl, authToken: AUTH_TOKEN, params: { CallSid: callSid } });
    const stream = await FakeTwilioStream.connect({ bridgeUrl: tb.url, streamUrl: hook.twiml?.streamUrl ?? '', authToken: AUTH_TOKEN });
    stream.sendStart({ callSid, customParameters: hook.twiml?.parameters ?? {} });
    const conn = await tb.agent.nextConnection();
    expect(conn.agentId).toBe('backup');
    await conn.waitForSetup();
    conn.init();
    await eventually(async () => (await storedCall(tb!, callSid))?.events.some((e) => e.type === 'agent_switched') === true, 3000, 'the switch on the record');
    expect((await storedCall(tb, callSid))?.events.find((e) => e.type === 'agent_switched')?.data).toMatchObject({ from: 'playai:agent-default', to: 'playai:backup', why: 'down' });
    const row = await tb.bridge.calls.getBySid(callSid);
    const detail = await tb.bridge.app.inject({ method: 'GET', url: `/v1/calls/${row?.id ?? ''}` });
    expect(detail.json().agents).toEqual(['playai:agent-default', 'playai:backup']);
    stream.sendStop();
  });

  it('the API takes provider:id agents and refuses one whose provider is not set up, naming the variable', async () => {
    tb = await startTestBridge({ env: { OPENAI_API_KEY: 'sk-test' }, overrides: { probeAgents: false } });
    const post = (agentId: string) =>
      tb!.bridge.app.inject({ method: 'POST', url: '/v1/calls', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ to: '+14155550123', from: '+14155550100', agentId }) });
    const ok = await post('openai:gpt-realtime');
    expect(ok.statusCode).toBe(201);
    expect(ok.json()).toMatchObject({ agentId: 'openai:gpt-realtime' });
    const refused = await post('deepgram:support');
    expect(refused.statusCode).toBe(400);
    expect(refused.json().error.message).toMatch(/set DEEPGRAM_API_KEY/);
    const bad = await post('acme:bot');
    expect(bad.statusCode).toBe(400);
    const campaign = await tb.bridge.app.inject({ method: 'POST', url: '/v1/campaigns', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ name: 'c', settings: { agentId: 'deepgram:support' } }) });
    expect(campaign.statusCode).toBe(400);
    expect(campaign.json().error.message).toMatch(/DEEPGRAM_API_KEY/);
  });
});
