/**
 * In-process call harness for fake-timer tests: the real media-stream route
 * (`mediaStreamRoute`'s socket handler → TwilioStreamConnection → CallSession,
 * registered with a real SessionManager that sweeps) over a fake Twilio socket
 * and fake agent legs. No sockets, no sleeps: time moves with
 * `vi.advanceTimersByTime`. Settings come from `loadConfig` and are mapped as
 * `createBridge` maps them.
 */
import { EventEmitter } from 'node:events';
import pino from 'pino';
import type WebSocket from 'ws';
import { z } from 'zod';
import type { PlayAiConnector, PlayAiSocket, PlayAiSocketOptions } from '../src/agent/playai/leg.js';
import type { AgentServerMessage } from '../src/agent/playai/codec.js';
import { loadConfig, type Config } from '../src/config.js';
import { streamRouteSettings, streamSocketHandler } from '../src/http/mediaStream.js';
import { Metrics } from '../src/metrics.js';
import type { CallSession, SessionSettings } from '../src/session/callSession.js';
import { SessionManager } from '../src/session/manager.js';
import { FakeCallControl } from '../src/testing/fakeCallControl.js';
import { RecordingJournal } from '../src/testing/recordingJournal.js';
import { LogSink } from './helpers.js';
import { sessionSettings } from '../src/app.js';
import { playaiDirectory } from './playaiDirectory.js';

const twilioOut = z.discriminatedUnion('event', [
  z.strictObject({ event: z.literal('media'), streamSid: z.string(), media: z.strictObject({ payload: z.string() }) }),
  z.strictObject({ event: z.literal('mark'), streamSid: z.string(), mark: z.strictObject({ name: z.string() }) }),
  z.strictObject({ event: z.literal('clear'), streamSid: z.string() }),
]);
/** A message the bridge sent to Twilio, as Twilio would parse it. */
export type TwilioOut = z.infer<typeof twilioOut>;

/** The parts of a `ws` socket TwilioStreamConnection uses, played by the test as Twilio. */
export class FakeTwilioSocket extends EventEmitter {
  readyState = 1;
  /** Bytes "queued" in the socket: set it to play a Twilio that stopped reading. */
  bufferedAmount = 0;
  /** Everything the bridge sent, in order. */
  readonly sent: TwilioOut[] = [];
  /** Frames sent on a socket that was not open, or that Twilio would refuse. */
  readonly violations: string[] = [];
  closeCode: number | undefined;
  streamSid = '';

  send(data: unknown, opts?: { binary?: boolean }): void {
    if (this.readyState !== 1) this.violations.push('frame sent on a socket that is not open');
    const text = typeof data === 'string' ? data : Buffer.isBuffer(data) && opts?.binary === false ? data.toString('utf8') : undefined;
    if (text === undefined) {
      this.violations.push('binary frame sent to Twilio');
      return;
    }
    // Exactly Twilio's fields: anything else Twilio refuses (31951).
    const parsed = twilioOut.safeParse(JSON.parse(text));
    if (!parsed.success || parsed.data.streamSid !== this.streamSid) {
      this.violations.push(`not a message Twilio accepts: ${text.slice(0, 120)}`);
      return;
    }
    this.sent.push(parsed.data);
  }

  /** The bridge closes the socket: Twilio answers the close frame at once. */
  close(code?: number): void {
    if (this.readyState !== 1) return;
    this.readyState = 3;
    this.closeCode = code;
    this.emit('close', code ?? 1005, Buffer.alloc(0));
  }

  terminate(): void {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.emit('close', 1006, Buffer.alloc(0));
  }

  get closed(): boolean {
    return this.readyState === 3;
  }

  // ---- Twilio's side
  deliver(msg: string | Record<string, unknown>): void {
    this.emit('message', Buffer.from(typeof msg === 'string' ? msg : JSON.stringify(msg)), false);
  }

  start(callSid: string, token: string, streamSid = `MZ${'0'.repeat(31)}1`): void {
    this.streamSid = streamSid;
    this.deliver({ event: 'start', streamSid, start: { streamSid, callSid, accountSid: `AC${'0'.repeat(32)}`, tracks: ['inbound'], customParameters: { token } } });
  }

  media(payload = Buffer.alloc(160, 0x7f).toString('base64')): void {
    this.deliver(`{"event":"media","streamSid":"${this.streamSid}","media":{"track":"inbound","chunk":"1","timestamp":"0","payload":"${payload}"}}`);
  }

  mark(name: string): void {
    this.deliver({ event: 'mark', streamSid: this.streamSid, mark: { name } });
  }

  /** Echoes every mark sent so far that was not echoed yet (what Twilio does after playing them, or at once on `clear`). */
  echoMarks(): void {
    for (const name of this.marks.slice(this.#echoed)) this.mark(name);
    this.#echoed = this.marks.length;
  }

  #echoed = 0;

  get mediaPayloads(): string[] {
    return this.sent.flatMap((m) => (m.event === 'media' ? [m.media.payload] : []));
  }

  get marks(): string[] {
    return this.sent.flatMap((m) => (m.event === 'mark' ? [m.mark.name] : []));
  }

  get clears(): number {
    return this.sent.filter((m) => m.event === 'clear').length;
  }
}

/** An agent leg played by the test as the agent. */
export class FakeAgent implements PlayAiSocket {
  readonly audioIn: string[] = [];
  bufferedAmount = 0;
  isOpen = true;
  closedByUs = false;

  constructor(readonly opts: PlayAiSocketOptions) {}

  sendAudio(b64: string): boolean {
    if (!this.isOpen) return false;
    this.audioIn.push(b64);
    return true;
  }

  sendAudioBytes(buf: Buffer, start: number, end: number): boolean {
    return this.sendAudio(buf.toString('latin1', start, end));
  }

  close(): void {
    this.closedByUs = true;
    this.isOpen = false;
  }

  // ---- the agent's side
  send(msg: AgentServerMessage): void {
    this.opts.handlers.onMessage(msg);
  }

  init(conversationId = 'conv-1'): void {
    this.send({ type: 'init', conversationId, agentOwnerId: undefined });
  }

  /** One `audioStream` (its base64 as the fast scan hands it over). */
  audio(b64: string): void {
    const buf = Buffer.from(b64, 'latin1');
    this.opts.handlers.onAudio(buf, 0, buf.length);
  }

  /** The socket drops without a hangup. */
  drop(code = 1006, error = 'socket error'): void {
    if (!this.isOpen) return;
    this.isOpen = false;
    this.opts.handlers.onClose({ code, reason: '', error, byUs: false });
  }
}

export interface HarnessCall {
  callSid: string;
  ws: FakeTwilioSocket;
  session: CallSession;
  /** Agent legs opened for this call, oldest first. */
  legs: FakeAgent[];
  /** The newest agent leg. */
  readonly agent: FakeAgent;
}

export interface Harness {
  config: Config;
  settings: SessionSettings;
  manager: SessionManager;
  metrics: Metrics;
  journal: RecordingJournal;
  callControl: FakeCallControl;
  logs: LogSink;
  /** The media-stream route's socket handler: hand it a fake socket as @fastify/websocket would. */
  handler: (socket: WebSocket) => void;
  /** Webhook admission, stream, `start`; with `init` (default) the agent answers. Requires the session to be accepted. */
  openCall(opts?: { init?: boolean }): HarnessCall;
  /** One metric's value from a scrape (summed over series matching `labels`). */
  metric(name: string, labels?: string): Promise<number | undefined>;
  dispose(): void;
}

const base = {
  PLAYAI_API_KEY: 'test-playai-key',
  PLAYAI_AGENT_ID: 'agent-default',
  START_TIMEOUT_MS: '500',
  AGENT_INIT_TIMEOUT_MS: '1500',
  HANGUP_DRAIN_TIMEOUT_MS: '1500',
  CALL_CONTROL_GRACE_MS: '500',
  MAX_EVENT_LOOP_DELAY_MS: '0',
};

/** Builds the harness; call with fake timers already on. */
export async function startHarness(env: Record<string, string> = {}): Promise<Harness> {
  const config = loadConfig({ ...base, ...env });
  const logs = new LogSink();
  const logger = pino({ level: 'debug' }, logs.stream);
  const manager = new SessionManager({
    maxConcurrentCalls: config.maxConcurrentCalls,
    tokenTtlMs: config.timeouts.streamTokenTtlMs,
    defaultAgentId: config.agents.defaultAgent,
    routes: config.routes,
    agentLimits: config.agentLimits,
    agentCapacityCooldownMs: config.agentCapacityCooldownMs,
  });
  const metrics = new Metrics({ liveCalls: () => manager.liveCalls, reservedSlots: () => manager.reservedSlots, capacity: () => manager.capacity, draining: () => manager.draining });
  const settings: SessionSettings = sessionSettings(config);
  const journal = new RecordingJournal();
  const callControl = new FakeCallControl();
  const legsByAgentId = new Map<string, FakeAgent[]>();
  const connectAgent: PlayAiConnector = (opts) => {
    const leg = new FakeAgent(opts);
    const legs = legsByAgentId.get(opts.agentId) ?? [];
    legs.push(leg);
    legsByAgentId.set(opts.agentId, legs);
    return leg;
  };
  const agents = playaiDirectory(connectAgent, { apiKey: config.playai.apiKey ?? 'test-key', baseUrl: config.playai.wsUrl, definitions: config.agents.definitions });
  const onSocket = streamSocketHandler({ stream: streamRouteSettings(config), manager, metrics, logger, callControl, agents, settings, journal });
  manager.startSweep(config.timeouts.sweepIntervalMs);
  let n = 0;
  return {
    config,
    settings,
    manager,
    metrics,
    journal,
    callControl,
    logs,
    handler: onSocket,
    openCall(opts = {}) {
      const id = ++n;
      const callSid = `CA${id.toString(16).padStart(32, '0')}`;
      // One agent id per call, so each call's legs are told apart.
      const agentId = `agent-${id}`;
      config.routes.set(`+1555000${String(id).padStart(4, '0')}`, { agentId });
      const admitted = manager.admit({ callSid, from: '+15005550006', to: `+1555000${String(id).padStart(4, '0')}`, direction: 'inbound' });
      if (!admitted.ok) throw new Error(`call not admitted: ${admitted.reason}`);
      const ws = new FakeTwilioSocket();
      onSocket(ws as unknown as WebSocket);
      ws.deliver({ event: 'connected', protocol: 'Call', version: '1.0.0' });
      ws.start(callSid, admitted.token, `MZ${id.toString(16).padStart(32, '0')}`);
      const session = manager.getSession(callSid) as CallSession | undefined;
      if (session === undefined) throw new Error('stream not accepted');
      const legs = legsByAgentId.get(agentId) ?? [];
      const call: HarnessCall = {
        callSid,
        ws,
        session,
        legs,
        get agent(): FakeAgent {
          const leg = legs[legs.length - 1];
          if (leg === undefined) throw new Error('no agent leg');
          return leg;
        },
      };
      if (opts.init ?? true) call.agent.init();
      return call;
    },
    async metric(name, labels = '') {
      const text = await metrics.registry.metrics();
      let total: number | undefined;
      for (const line of text.split('\n')) {
        if (!line.startsWith(name) || (line[name.length] !== ' ' && line[name.length] !== '{')) continue;
        if (labels !== '' && !line.includes(labels)) continue;
        total = (total ?? 0) + Number(line.slice(line.lastIndexOf(' ') + 1));
      }
      return total;
    },
    dispose() {
      for (const s of [...manager.sessions()]) s.close('shutdown');
      manager.dispose();
    },
  };
}
