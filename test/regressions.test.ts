/**
 * Regressions found by the lifecycle fuzz: a start that arrives after the
 * start timeout, and agent connectors that throw (at start and on a reconnect).
 */
import { NULL_JOURNAL } from '../src/calls/journal.js';
import { EventEmitter } from 'node:events';
import pino from 'pino';
import type WebSocket from 'ws';
import { afterEach, expect, it, vi } from 'vitest';
import type { PlayAiConnector, PlayAiSocket } from '../src/agent/playai/leg.js';
import { loadConfig } from '../src/config.js';
import { streamRouteSettings, streamSocketHandler } from '../src/http/mediaStream.js';
import { Metrics } from '../src/metrics.js';
import { SessionManager } from '../src/session/manager.js';
import { FakeCallControl } from '../src/testing/fakeCallControl.js';
import { playaiDirectory } from './playaiDirectory.js';

/** The parts of a `ws` socket the carrier connection uses. */
class Ws extends EventEmitter {
  readyState = 1;
  bufferedAmount = 0;
  sent: string[] = [];
  send(d: string) {
    this.sent.push(d);
  }
  close() {
    this.readyState = 2;
  }
  terminate() {
    this.readyState = 3;
    this.emit('close', 1006, Buffer.alloc(0));
  }
}
const leg = (): PlayAiSocket => ({ sendAudio: () => true, sendAudioBytes: () => true, bufferedAmount: 0, isOpen: true, close: () => {} });

async function setup(connectAgent: PlayAiConnector) {
  const config = loadConfig({ PLAYAI_API_KEY: 'k', PLAYAI_AGENT_ID: 'agent', START_TIMEOUT_MS: '500', AGENT_INIT_TIMEOUT_MS: '1000' });
  const manager = new SessionManager({ maxConcurrentCalls: 5, tokenTtlMs: 10_000, defaultAgentId: 'agent', routes: new Map() });
  const settings = { agentInitTimeoutMs: 1000, hangupDrainMs: 1000, callControlGraceMs: 500, markIntervalMs: 160, preInitBufferMs: 1000, agentHeartbeatMs: 0, reconnect: { attempts: 3, windowMs: 10_000, bufferMs: 1000, stableMs: 5000, maxPerCall: 10 }, maxCallMs: 60_000, idleMs: 20_000, texts: config.messages, overflow: { action: 'say' as const } };
  const handler = streamSocketHandler({ stream: streamRouteSettings(config), manager, metrics: new Metrics({ liveCalls: () => 0, reservedSlots: () => 0, capacity: () => 0, draining: () => false }), logger: pino({ level: 'silent' }), callControl: new FakeCallControl(), agents: playaiDirectory(connectAgent, { apiKey: 'k', baseUrl: 'ws://x' }), settings, journal: NULL_JOURNAL });
  const start = (ws: Ws, callSid: string, token: string) => ws.emit('message', Buffer.from(JSON.stringify({ event: 'start', streamSid: 'MZ1', start: { streamSid: 'MZ1', callSid, customParameters: { token } } })), false);
  return { manager, handler, start };
}
afterEach(() => { vi.useRealTimers(); });

it('A: a start that arrives after the start timeout closed the socket is refused', async () => {
  vi.useFakeTimers();
  let legs = 0;
  const { manager, handler, start } = await setup(() => (legs++, leg()));
  const admitted = manager.admit({ callSid: 'CA1', from: '', to: '', direction: 'inbound' });
  if (!admitted.ok) throw new Error('not admitted');
  const ws = new Ws();
  handler(ws as unknown as WebSocket);
  vi.advanceTimersByTime(500); // start timeout: the bridge closes the socket (close frame sent, socket still CLOSING)
  expect(ws.readyState).toBe(2);
  start(ws, 'CA1', admitted.token); // Twilio's start was already in flight
  expect(legs).toBe(0); // FAILS: an agent socket is opened for a stream the bridge already closed
  expect(manager.liveCalls).toBe(0);
});

it('B1: a connector that throws when the session starts does not leave the session registered', async () => {
  vi.useFakeTimers();
  const { manager, handler, start } = await setup(() => { throw new Error('connector failed'); });
  const admitted = manager.admit({ callSid: 'CA1', from: '', to: '', direction: 'inbound' });
  if (!admitted.ok) throw new Error('not admitted');
  const ws = new Ws();
  handler(ws as unknown as WebSocket);
  start(ws, 'CA1', admitted.token);
  ws.terminate(); // the bridge closed the stream; the socket is gone
  expect(manager.liveCalls).toBe(0); // FAILS: 1 — the session holds its slot until a sweep reaps it as carrier_gone
  expect(manager.usedSlots).toBe(0);
});

it('B2: a connector that throws on a reconnect does not escape the retry timer', async () => {
  vi.useFakeTimers();
  let n = 0;
  let handlers: Parameters<PlayAiConnector>[0]['handlers'] | undefined;
  const { manager, handler, start } = await setup((opts) => {
    if (++n > 1) throw new Error('connector failed');
    handlers = opts.handlers;
    return leg();
  });
  const admitted = manager.admit({ callSid: 'CA1', from: '', to: '', direction: 'inbound' });
  if (!admitted.ok) throw new Error('not admitted');
  const ws = new Ws();
  handler(ws as unknown as WebSocket);
  start(ws, 'CA1', admitted.token);
  handlers!.onMessage({ type: 'init', conversationId: 'c', agentOwnerId: undefined });
  handlers!.onClose({ code: 1006, reason: '', byUs: false }); // agent drops: reconnect scheduled
  expect(() => vi.advanceTimersByTime(200)).not.toThrow(); // FAILS: the connector's error escapes the retry timer (uncaughtException in production)
});
