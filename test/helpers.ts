/**
 * Test harness: an in-process bridge on 127.0.0.1:0 wired to the fake PlayAI
 * agent and a recording call-control fake, plus shortcuts to place calls with
 * the Twilio simulator.
 */
import { Writable } from 'node:stream';
import pino from 'pino';
import { createBridge, type Bridge, type BridgeOverrides } from '../src/app.js';
import type { DialRequest } from '../src/outbound/dialer.js';
import { openDb, type Db } from '../src/store/db.js';
import { loadConfig, type Config } from '../src/config.js';
import { FakeAgentServer, type FakeAgentConnection, type FakeAgentOptions } from '../src/testing/fakeAgent.js';
import { FakeCallControl } from '../src/testing/fakeCallControl.js';
import { FakeTwilioStream, newCallSid, postVoiceWebhook } from '../src/sim/twilioSim.js';

export const AUTH_TOKEN = 'test-auth-token-0123456789abcdef';
export const PUBLIC_URL = 'https://voice.example.test';
export const STREAM_URL = 'wss://voice.example.test/twilio/media-stream';

/** Captures log lines as parsed JSON objects. */
export class LogSink {
  readonly lines: Array<Record<string, unknown>> = [];
  readonly stream = new Writable({
    write: (chunk: Buffer, _enc, cb) => {
      for (const line of chunk.toString('utf8').split('\n')) {
        if (line.trim()) this.lines.push(JSON.parse(line) as Record<string, unknown>);
      }
      cb();
    },
  });
  text(): string {
    return this.lines.map((l) => JSON.stringify(l)).join('\n');
  }
}

export interface TestBridge {
  url: string;
  config: Config;
  bridge: Bridge;
  agent: FakeAgentServer;
  callControl: FakeCallControl;
  logs: LogSink;
  close(): Promise<void>;
}

export interface TestBridgeOptions {
  env?: Record<string, string | undefined>;
  agent?: FakeAgentOptions;
  /** Sign requests (default true). */
  signed?: boolean;
  /** Database (default: a fresh in-memory one). */
  db?: Db;
  overrides?: BridgeOverrides;
}

export async function startTestBridge(opts: TestBridgeOptions = {}): Promise<TestBridge> {
  const agent = await FakeAgentServer.start({ autoInit: false, ...opts.agent });
  const signed = opts.signed ?? true;
  const config = loadConfig({
    PORT: '0',
    HOST: '127.0.0.1',
    LOG_LEVEL: 'debug',
    PLAYAI_API_KEY: 'test-playai-key',
    PLAYAI_AGENT_ID: 'agent-default',
    PLAYAI_WS_URL: agent.url,
    START_TIMEOUT_MS: '500',
    AGENT_INIT_TIMEOUT_MS: '1500',
    HANGUP_DRAIN_TIMEOUT_MS: '1500',
    // A loaded CI machine must not make test bridges refuse calls (the guard has its own tests).
    MAX_EVENT_LOOP_DELAY_MS: '0',
    CALL_CONTROL_GRACE_MS: '500',
    ...(signed ? { TWILIO_AUTH_TOKEN: AUTH_TOKEN, PUBLIC_URL } : {}),
    ...opts.env,
  });
  const logs = new LogSink();
  const logger = pino({ level: 'debug' }, logs.stream);
  const callControl = new FakeCallControl();
  const bridge = await createBridge(config, logger, { callControl, db: opts.db ?? openDb(':memory:'), ...opts.overrides });
  const address = await bridge.app.listen({ port: 0, host: '127.0.0.1' });
  return {
    url: address,
    config,
    bridge,
    agent,
    callControl,
    logs,
    async close() {
      await bridge.app.close();
      await agent.close();
    },
  };
}

export interface OpenCall {
  stream: FakeTwilioStream;
  agent: FakeAgentConnection;
  callSid: string;
  token: string;
}

/**
 * Webhook → stream → `start`, then waits for the agent socket and its setup.
 * With `init` (default) the fake agent answers init before returning.
 */
export async function openCall(
  tb: TestBridge,
  opts: { to?: string; init?: boolean; autoEchoMarks?: boolean; connected?: boolean } = {},
): Promise<OpenCall> {
  const callSid = newCallSid();
  const signed = tb.config.twilio.authToken !== undefined;
  const hook = await postVoiceWebhook({
    bridgeUrl: tb.url,
    publicUrl: tb.config.publicUrl,
    authToken: signed ? AUTH_TOKEN : undefined,
    params: { CallSid: callSid, ...(opts.to ? { To: opts.to, Called: opts.to } : {}) },
  });
  const streamUrl = hook.twiml?.streamUrl;
  const token = hook.twiml?.parameters.token;
  if (streamUrl === undefined || token === undefined) throw new Error(`call not admitted: ${hook.status} ${hook.body}`);
  const stream = await FakeTwilioStream.connect({
    bridgeUrl: tb.url,
    streamUrl,
    authToken: signed ? AUTH_TOKEN : undefined,
    autoEchoMarks: opts.autoEchoMarks ?? true,
  });
  if (opts.connected ?? true) stream.sendConnected();
  stream.sendStart({ callSid, customParameters: hook.twiml?.parameters ?? {} });
  const agent = await tb.agent.nextConnection();
  await agent.waitForSetup();
  if (opts.init ?? true) agent.init();
  return { stream, agent, callSid, token };
}

/** Polls until `check` is true (for state that has no event to wait on). */
export async function eventually(check: () => boolean | Promise<boolean>, timeoutMs = 3000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** A base64 μ-law payload of `bytes` bytes filled with `fill`. */
export function ulaw(bytes: number, fill = 0x55): string {
  return Buffer.alloc(bytes, fill).toString('base64');
}

/** Distinct 20 ms frames (160 bytes), so order can be checked. */
export function numberedFrames(n: number): string[] {
  return Array.from({ length: n }, (_, i) => {
    const b = Buffer.alloc(160, 0x7f);
    b.writeUInt16BE(i, 0);
    return b.toString('base64');
  });
}

/** What the store holds about a call, the way tests read it. */
export interface StoredCall {
  id: string;
  endReason: string | null;
  conversationId: string | null;
  status: string;
  /** Texts Playline asked the carrier to speak, in order. */
  spoken: string[];
  transcript: Array<{ role: string; text: string }>;
  dtmf: string[];
  /** Successful agent reconnects so far. */
  agentReconnects: number;
  events: Array<{ type: string; status: string | null; sequence: number | null; data: Record<string, unknown> | null }>;
}

/** The call's record in the bridge's store, or undefined when it has none. */
export async function storedCall(tb: TestBridge, callSid: string): Promise<StoredCall | undefined> {
  const row = await tb.bridge.calls.getBySid(callSid);
  if (row === undefined) return undefined;
  const events = await tb.bridge.calls.events(row.id);
  const text = (d: Record<string, unknown> | null, k: string): string => (typeof d?.[k] === 'string' ? (d[k] as string) : '');
  return {
    id: row.id,
    endReason: row.endReason,
    conversationId: row.conversationId,
    status: row.status,
    spoken: events.filter((e) => e.type === 'spoke').map((e) => text(e.data, 'text')),
    transcript: (await tb.bridge.calls.transcript(row.id, 'live')).map((t) => ({ role: t.role, text: t.text })),
    dtmf: events.filter((e) => e.type === 'dtmf').map((e) => text(e.data, 'digit')),
    agentReconnects: events.filter((e) => e.type === 'agent_reconnected').length,
    events: events.map((e) => ({ type: e.type, status: e.status, sequence: e.sequence, data: e.data })),
  };
}

/** A dial request for our call id `id`, with the callback URLs the dial loop gives it. */
export function dialRequest(id: string, extra: Partial<DialRequest> = {}): DialRequest {
  return {
    callId: id,
    to: '+15551230001',
    from: '+15557654321',
    url: `${PUBLIC_URL}/twilio/voice?callId=${id}`,
    statusCallback: `${PUBLIC_URL}/twilio/status?callId=${id}`,
    timeoutS: 30,
    ...extra,
  };
}
