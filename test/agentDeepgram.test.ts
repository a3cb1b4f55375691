/**
 * The Deepgram Voice Agent adapter against the fake Deepgram server, through the
 * agent port only (no call session), plus the pure codec and the fake's own
 * strictness.
 */
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:net';
import pino from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import WebSocket from 'ws';
import { Base64Scratch, decodeBase64Span } from '../src/agent/deepgram/audio.js';
import { buildDeepgramSettings, classifyDeepgramError, classifyHandshakeStatus, decodeDeepgramMessage, thinkProviderFor } from '../src/agent/deepgram/codec.js';
import { createDeepgramProvider, MAX_EARLY_AUDIO_BYTES, type DeepgramProviderOptions } from '../src/agent/deepgram/provider.js';
import { END_CALL_TOOL, type AgentCloseInfo, type AgentError, type AgentEvents, type AgentLeg, type AgentRequest, type AgentTool, type AgentToolCall } from '../src/agent/port.js';
import { FakeDeepgramServer, type FakeDeepgramConnection, type FakeDeepgramOptions } from '../src/testing/agents/deepgram.js';
import { LogSink } from './helpers.js';

/** Captured before any test fakes timers: waits on sockets keep a real deadline. */
const realSetTimeout = globalThis.setTimeout;
const realClearTimeout = globalThis.clearTimeout;
const KEY = 'dg-test-key-0123456789';
const TRANSFER: AgentTool = {
  name: 'transfer_call',
  description: 'Transfer to a human',
  parameters: { type: 'object', properties: { target: { type: 'string' } } },
};
const REQUEST: AgentRequest = {
  id: 'front-desk',
  instructions: 'You are the front desk of Acme.',
  greeting: 'Thanks for calling Acme, how can I help?',
  voice: 'aura-2-orion-en',
  model: 'gpt-4o',
  language: 'en',
  tools: [END_CALL_TOOL, TRANSFER],
  call: { callSid: 'CA0123', from: '+15550001111', to: '+15550002222', direction: 'inbound' },
};

type Ev =
  | { e: 'ready'; conversationId: string }
  | { e: 'audio'; b64: string }
  | { e: 'responseStart' }
  | { e: 'responseDone' }
  | { e: 'callerSpeechStart' }
  | { e: 'transcript'; role: 'user' | 'agent'; text: string }
  | { e: 'toolCall'; call: AgentToolCall }
  | { e: 'hangup'; reason: string }
  | { e: 'error'; err: AgentError }
  | { e: 'badFrame'; kind: string; name: string | undefined }
  | { e: 'closed'; info: AgentCloseInfo };

/** Records every event the adapter reports; `until` waits for one. */
class Recorder implements AgentEvents {
  readonly log: Ev[] = [];
  readonly #waiters = new Set<() => boolean>();

  ready(info: { conversationId: string }): void {
    this.#push({ e: 'ready', conversationId: info.conversationId });
  }
  audio(buf: Buffer, start: number, end: number): void {
    this.#push({ e: 'audio', b64: buf.toString('latin1', start, end) });
  }
  responseStart(): void {
    this.#push({ e: 'responseStart' });
  }
  responseDone(): void {
    this.#push({ e: 'responseDone' });
  }
  callerSpeechStart(): void {
    this.#push({ e: 'callerSpeechStart' });
  }
  transcript(role: 'user' | 'agent', text: string): void {
    this.#push({ e: 'transcript', role, text });
  }
  toolCall(call: AgentToolCall): void {
    this.#push({ e: 'toolCall', call });
  }
  hangup(reason: string): void {
    this.#push({ e: 'hangup', reason });
  }
  error(err: AgentError): void {
    this.#push({ e: 'error', err });
  }
  badFrame(kind: string, name?: string): void {
    this.#push({ e: 'badFrame', kind, name });
  }
  closed(info: AgentCloseInfo): void {
    this.#push({ e: 'closed', info });
  }

  of<K extends Ev['e']>(e: K): Array<Extract<Ev, { e: K }>> {
    return this.log.filter((x): x is Extract<Ev, { e: K }> => x.e === e);
  }

  /** The event names in order (audio included). */
  names(): string[] {
    return this.log.map((x) => x.e);
  }

  /** Resolves once an event of type `e` has been recorded `count` times; rejects after 3 s of real time. */
  until<K extends Ev['e']>(e: K, count = 1): Promise<Array<Extract<Ev, { e: K }>>> {
    return new Promise((resolve, reject) => {
      const timer = realSetTimeout(() => {
        this.#waiters.delete(check);
        reject(new Error(`waited 3 s for ${count} ${e} event(s); got: ${this.names().join(', ')}`));
      }, 3000);
      const check = (): boolean => {
        const got = this.of(e);
        if (got.length < count) return false;
        realClearTimeout(timer);
        resolve(got);
        return true;
      };
      if (!check()) this.#waiters.add(check);
    });
  }

  #push(ev: Ev): void {
    this.log.push(ev);
    for (const w of [...this.#waiters]) if (w()) this.#waiters.delete(w);
  }
}

let fake: FakeDeepgramServer | undefined;
const legs: AgentLeg[] = [];
let logs = new LogSink();

afterEach(async () => {
  vi.useRealTimers();
  for (const leg of legs.splice(0)) leg.close();
  await fake?.close();
  fake = undefined;
  logs = new LogSink();
});

async function startFake(opts: FakeDeepgramOptions = {}): Promise<FakeDeepgramServer> {
  fake = await FakeDeepgramServer.start({ apiKey: KEY, ...opts });
  return fake;
}

function connect(
  url: string,
  request: Partial<AgentRequest> = {},
  opts: Partial<DeepgramProviderOptions> = {},
  heartbeatMs = 0,
): { leg: AgentLeg; ev: Recorder } {
  const provider = createDeepgramProvider({ apiKey: KEY, url, ...opts });
  const ev = new Recorder();
  const leg = provider.connect({ request: { ...REQUEST, ...request }, events: ev, log: pino({ level: 'debug' }, logs.stream), heartbeatMs });
  legs.push(leg);
  return { leg, ev };
}

/** A leg past `SettingsApplied`, with its fake connection. */
async function ready(
  opts: { fake?: FakeDeepgramOptions; request?: Partial<AgentRequest>; provider?: Partial<DeepgramProviderOptions>; heartbeatMs?: number } = {},
): Promise<{ leg: AgentLeg; ev: Recorder; conn: FakeDeepgramConnection; server: FakeDeepgramServer }> {
  const server = fake ?? (await startFake(opts.fake));
  const { leg, ev } = connect(server.url, opts.request, opts.provider, opts.heartbeatMs);
  const conn = await server.nextConnection();
  await ev.until('ready');
  return { leg, ev, conn, server };
}

/** Waits until the fake has seen an InjectUserMessage `marker`: everything the leg sent before it has arrived. */
async function barrier(leg: AgentLeg, conn: FakeDeepgramConnection, marker = `barrier-${Math.random()}`): Promise<void> {
  leg.sendText(marker, 'user');
  await conn.waitUntil(() => (conn.injectUserMessages.includes(marker) ? true : undefined), marker);
}

const b64 = (bytes: Uint8Array): string => Buffer.from(bytes).toString('base64');

/** Waits in real time until the leg's socket is open (vi.waitFor would move fake timers on). */
async function untilOpen(leg: AgentLeg): Promise<void> {
  for (let i = 0; i < 300 && !leg.isOpen; i++) await new Promise((r) => realSetTimeout(r, 10));
  expect(leg.isOpen).toBe(true);
}

describe('Deepgram adapter: opening sequence', () => {
  it('sends exactly one Settings after Welcome, with μ-law 8 kHz both ways, the prompt, greeting, voice, think model, language and tools (end_call deferred to end of turn)', async () => {
    const { conn } = await ready();
    expect(conn.headers.authorization).toBe(`Token ${KEY}`);
    expect(conn.sequence).toEqual(['Settings']);
    expect(conn.settings).toEqual({
      type: 'Settings',
      audio: {
        input: { encoding: 'mulaw', sample_rate: 8000 },
        output: { encoding: 'mulaw', sample_rate: 8000, container: 'none' },
      },
      agent: {
        listen: { provider: { type: 'deepgram', model: 'nova-3', language: 'en' } },
        think: {
          provider: { type: 'open_ai', model: 'gpt-4o' },
          prompt: 'You are the front desk of Acme.',
          functions: [
            { name: 'end_call', description: END_CALL_TOOL.description, parameters: END_CALL_TOOL.parameters, defer_until_eot: true },
            { name: 'transfer_call', description: 'Transfer to a human', parameters: TRANSFER.parameters },
          ],
        },
        speak: { provider: { type: 'deepgram', model: 'aura-2-orion-en' } },
        greeting: 'Thanks for calling Acme, how can I help?',
      },
    });
  });

  it('uses nova-3, gpt-4o-mini on OpenAI and aura-2-thalia-en when the request names no language, model or voice, and sends no greeting when there is none', async () => {
    const { conn } = await ready({ request: { model: undefined, voice: undefined, language: undefined, greeting: undefined } });
    const agent = conn.settings?.agent;
    expect(agent).toMatchObject({
      listen: { provider: { type: 'deepgram', model: 'nova-3' } },
      think: { provider: { type: 'open_ai', model: 'gpt-4o-mini' } },
      speak: { provider: { type: 'deepgram', model: 'aura-2-thalia-en' } },
    });
    expect(agent).not.toHaveProperty('greeting');
    expect(agent).not.toHaveProperty('listen.provider.language');
  });

  it('waits for Welcome before sending Settings', async () => {
    const server = await startFake({ autoWelcome: false });
    const { ev } = connect(server.url);
    const conn = await server.nextConnection();
    await new Promise((r) => setTimeout(r, 30));
    expect(conn.sequence).toEqual([]);
    conn.welcome();
    await ev.until('ready');
    expect(conn.sequence).toEqual(['Settings']);
  });

  it('sends Settings anyway, once, when Welcome has not come 1500 ms after open, and takes the request_id of a Welcome that comes before SettingsApplied', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval'] });
    const server = await startFake({ autoWelcome: false, autoApply: false });
    const { leg, ev } = connect(server.url);
    const conn = await server.nextConnection();
    await untilOpen(leg);
    await vi.advanceTimersByTimeAsync(1499);
    await new Promise((r) => realSetTimeout(r, 30));
    expect(conn.sequence).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    await conn.waitForSettings();
    conn.welcome();
    conn.applySettings();
    expect(await ev.until('ready')).toEqual([{ e: 'ready', conversationId: conn.requestId }]);
    await vi.advanceTimersByTimeAsync(5000);
    await barrier(leg, conn);
    expect(conn.sequence.filter((t) => t === 'Settings')).toHaveLength(1);
    expect(conn.errorsSent).toEqual([]);
    expect(ev.of('badFrame')).toEqual([]);
    expect(logs.lines.filter((l) => typeof l.msg === 'string' && l.msg.includes('no Welcome'))).toHaveLength(1);
  });

  it('records a Welcome that comes after ready (Settings sent without it) without counting it, and counts a second one as unexpected', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval'] });
    const server = await startFake({ autoWelcome: false });
    const { leg, ev } = connect(server.url);
    const conn = await server.nextConnection();
    await untilOpen(leg);
    await vi.advanceTimersByTimeAsync(1500);
    const [r] = await ev.until('ready');
    expect(r?.conversationId).toMatch(/^local-/);
    conn.welcome();
    conn.userText('one');
    conn.welcome();
    conn.userText('two');
    await ev.until('transcript', 2);
    expect(ev.of('badFrame')).toEqual([{ e: 'badFrame', kind: 'unexpected', name: 'Welcome' }]);
    expect(logs.text()).toContain(conn.requestId);
  });

  it('with a Welcome in time, sends exactly one Settings however long the call lasts', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval'] });
    const { leg, conn } = await ready();
    await vi.advanceTimersByTimeAsync(5000);
    await barrier(leg, conn);
    expect(conn.sequence.filter((t) => t === 'Settings')).toHaveLength(1);
    expect(conn.errorsSent).toEqual([]);
  });

  it('reports ready only after SettingsApplied, once, with the Welcome request_id as the conversation id', async () => {
    const server = await startFake({ autoApply: false });
    const { ev } = connect(server.url);
    const conn = await server.nextConnection();
    await conn.waitForSettings();
    await new Promise((r) => setTimeout(r, 30));
    expect(ev.of('ready')).toEqual([]);
    conn.applySettings();
    expect(await ev.until('ready')).toEqual([{ e: 'ready', conversationId: conn.requestId }]);
    conn.send({ type: 'SettingsApplied' });
    conn.userText('after');
    await ev.until('transcript');
    expect(ev.of('ready')).toHaveLength(1);
    expect(ev.of('badFrame')).toEqual([{ e: 'badFrame', kind: 'unexpected', name: 'SettingsApplied' }]);
  });

  it('sends nothing but Settings before SettingsApplied: early audio and text are held, then sent in order, byte-exact', async () => {
    const server = await startFake({ autoApply: false });
    const { leg, ev } = connect(server.url);
    expect(leg.sendAudio(b64(randomBytes(160)))).toBe(false); // socket not open yet: the session keeps it
    const conn = await server.nextConnection();
    await conn.waitForSettings();
    const frames = [randomBytes(160), randomBytes(160), randomBytes(160)];
    for (const f of frames) expect(leg.sendAudio(b64(f))).toBe(true);
    leg.sendText('Caller pressed 5', 'user');
    leg.sendText('The caller is a VIP.', 'context');
    await new Promise((r) => setTimeout(r, 50));
    expect(conn.sequence).toEqual(['Settings']);
    conn.applySettings();
    await ev.until('ready');
    await conn.waitUntil(() => (conn.updatePrompts.length > 0 ? true : undefined));
    expect(conn.sequence).toEqual(['Settings', '(binary)', '(binary)', '(binary)', 'InjectUserMessage', 'UpdatePrompt']);
    expect(conn.audio.equals(Buffer.concat(frames))).toBe(true);
    expect(conn.audioBeforeApplied).toBe(0);
    expect(conn.errorsSent).toEqual([]);
  });

  it('holds at most 2 s of caller audio before SettingsApplied and drops the rest', async () => {
    const server = await startFake({ autoApply: false });
    const { leg, ev } = connect(server.url);
    const conn = await server.nextConnection();
    await conn.waitForSettings();
    const frames = Array.from({ length: 150 }, () => randomBytes(160));
    for (const f of frames) leg.sendAudio(b64(f));
    conn.applySettings();
    await ev.until('ready');
    await barrier(leg, conn);
    expect(conn.audio.equals(Buffer.concat(frames.slice(0, MAX_EARLY_AUDIO_BYTES / 160)))).toBe(true);
  });
});

describe('Deepgram adapter: audio', () => {
  it('sends caller audio as binary raw μ-law, byte-exact, one frame per port frame (base64 strings and byte spans)', async () => {
    const { leg, conn } = await ready();
    const frames = Array.from({ length: 8 }, (_, i) => randomBytes(i === 7 ? 161 : 160));
    for (let i = 0; i < frames.length; i++) {
      const f = frames[i] as Buffer;
      if (i % 2 === 0) {
        expect(leg.sendAudio(b64(f))).toBe(true);
      } else {
        // A Twilio media frame: the payload is a span inside the message bytes.
        const msg = Buffer.from(`{"event":"media","media":{"payload":"${b64(f)}"}}`, 'latin1');
        const start = msg.indexOf('payload":"') + 10;
        expect(leg.sendAudioBytes(msg, start, msg.indexOf('"', start))).toBe(true);
      }
    }
    const got = await conn.waitForAudio(8 * 160 + 1);
    expect(got.equals(Buffer.concat(frames))).toBe(true);
    expect(conn.audioChunks.map((c) => c.length)).toEqual(frames.map((f) => f.length));
  });

  it('does not send a caller span that is not base64', async () => {
    const { leg, conn } = await ready();
    const bad = Buffer.from('!!!!', 'latin1');
    expect(leg.sendAudioBytes(bad, 0, 4)).toBe(false);
    await barrier(leg, conn);
    expect(conn.audioChunks).toEqual([]);
  });

  it('delivers agent binary μ-law as base64 of exactly those bytes, between responseStart and responseDone, then the agent transcript', async () => {
    const { ev, conn } = await ready();
    const reply = randomBytes(1000);
    conn.speak(reply, { chunkMs: 20, text: 'Hello, this is Acme.' });
    await ev.until('transcript');
    expect(ev.names()).toEqual(['ready', 'responseStart', 'audio', 'audio', 'audio', 'audio', 'audio', 'audio', 'audio', 'responseDone', 'transcript']);
    const chunks = ev.of('audio').map((a) => a.b64);
    const expected: string[] = [];
    for (let i = 0; i < reply.length; i += 160) expected.push(b64(reply.subarray(i, i + 160)));
    expect(chunks).toEqual(expected);
    expect(Buffer.concat(chunks.map((c) => Buffer.from(c, 'base64'))).equals(reply)).toBe(true);
    expect(ev.of('transcript')).toEqual([{ e: 'transcript', role: 'agent', text: 'Hello, this is Acme.' }]);
  });

  it('on UserStartedSpeaking reports callerSpeechStart and drops late audio of the interrupted reply until the next AgentStartedSpeaking', async () => {
    const { ev, conn } = await ready();
    const first = randomBytes(160);
    const late = randomBytes(160);
    const later = randomBytes(160);
    const next = randomBytes(320);
    conn.startSpeaking();
    conn.sendBinary(first);
    conn.userSpeaks({ lateAudio: late });
    conn.sendBinary(later);
    conn.speak(next, { chunkMs: 40 });
    await ev.until('responseDone');
    expect(ev.names()).toEqual(['ready', 'responseStart', 'audio', 'callerSpeechStart', 'responseStart', 'audio', 'responseDone']);
    expect(ev.of('audio').map((a) => a.b64)).toEqual([b64(first), b64(next)]);
  });

  it('after UserStartedSpeaking, delivers a reply that comes without AgentStartedSpeaking once ConversationText(user) confirms the new turn, and logs the missing AgentStartedSpeaking once', async () => {
    const lostLog = (): unknown[] => logs.lines.filter((l) => typeof l.msg === 'string' && l.msg.includes('no AgentStartedSpeaking'));
    const { ev, conn } = await ready();
    const first = randomBytes(160);
    const late = randomBytes(160);
    const reply = [randomBytes(160), randomBytes(160)];
    conn.startSpeaking();
    conn.sendBinary(first);
    conn.userSpeaks({ lateAudio: late });
    conn.userText('What are your opening hours?');
    for (const r of reply) conn.sendBinary(r);
    conn.audioDone();
    await ev.until('responseDone');
    expect(ev.names()).toEqual(['ready', 'responseStart', 'audio', 'callerSpeechStart', 'transcript', 'responseStart', 'audio', 'audio', 'responseDone']);
    expect(ev.of('audio').map((a) => a.b64)).toEqual([b64(first), ...reply.map(b64)]);
    expect(lostLog()).toEqual([]);
    // The next barge-in: a window where audio was dropped and no AgentStartedSpeaking came is logged, once per leg.
    conn.userSpeaks({ lateAudio: late });
    conn.userText('sorry, go on');
    conn.userSpeaks({ lateAudio: late });
    conn.userText('and on Sunday?');
    await ev.until('callerSpeechStart', 3);
    await ev.until('transcript', 3);
    expect(lostLog()).toHaveLength(1);
  });

  it('after UserStartedSpeaking, AgentThinking ends the drop; an AgentStartedSpeaking after the first audio of that reply starts no second response', async () => {
    const { ev, conn, leg } = await ready();
    const late = randomBytes(160);
    const reply = [randomBytes(160), randomBytes(160)];
    const next = randomBytes(160);
    conn.startSpeaking();
    conn.userSpeaks({ lateAudio: late });
    conn.send({ type: 'AgentThinking', content: 'The caller asks about hours.' });
    conn.sendBinary(reply[0] as Buffer);
    conn.startSpeaking();
    conn.sendBinary(reply[1] as Buffer);
    conn.audioDone();
    conn.speak(next);
    await ev.until('responseDone', 2);
    expect(ev.names()).toEqual(['ready', 'responseStart', 'callerSpeechStart', 'responseStart', 'audio', 'audio', 'responseDone', 'responseStart', 'audio', 'responseDone']);
    expect(ev.of('audio').map((a) => a.b64)).toEqual([...reply.map(b64), b64(next)]);
    leg.close();
    await ev.until('closed');
    expect(logs.lines.filter((l) => typeof l.msg === 'string' && l.msg.includes('no AgentStartedSpeaking'))).toEqual([]);
  });

  it('does not end the drop on AgentThinking or a user ConversationText when no barge-in is under way (no extra responseStart)', async () => {
    const { ev, conn } = await ready();
    conn.send({ type: 'AgentThinking', content: 'x' });
    conn.userText('hello');
    conn.speak(randomBytes(160));
    await ev.until('responseDone');
    expect(ev.names()).toEqual(['ready', 'transcript', 'responseStart', 'audio', 'responseDone']);
  });

  it('makes no wire message for interrupted(playedMs): Deepgram keeps the reply server-side', async () => {
    const { leg, conn } = await ready();
    leg.interrupted(1234);
    await barrier(leg, conn, 'after-interrupt');
    expect(conn.sequence).toEqual(['Settings', 'InjectUserMessage']);
  });
});

describe('Deepgram adapter: transcripts, text and tools', () => {
  it('reports final user and agent turns from ConversationText, ignores AgentThinking, LatencyReport and History, and counts unknown types', async () => {
    const { ev, conn } = await ready();
    conn.send({ type: 'AgentThinking', content: 'hmm' });
    conn.send({ type: 'LatencyReport', total_latency: 1 });
    conn.send({ type: 'History', role: 'user', content: 'hi' });
    conn.send({ type: 'BrandNewThing' });
    conn.userText('I need a plumber');
    conn.conversationText('assistant', 'Sure.');
    await ev.until('transcript', 2);
    expect(ev.of('transcript')).toEqual([
      { e: 'transcript', role: 'user', text: 'I need a plumber' },
      { e: 'transcript', role: 'agent', text: 'Sure.' },
    ]);
    expect(ev.of('badFrame')).toEqual([{ e: 'badFrame', kind: 'unknown_type', name: 'BrandNewThing' }]);
  });

  it('counts bad frames and goes on', async () => {
    const { leg, ev, conn } = await ready();
    conn.sendText('nope');
    conn.sendText('[1,2]');
    conn.send({ type: 'ConversationText', role: 'user' });
    conn.send({ type: 'ConversationText', role: 'narrator', content: 'x' });
    conn.userText('still here');
    await ev.until('transcript');
    expect(ev.of('badFrame').map((b) => [b.kind, b.name])).toEqual([
      ['non_json', undefined],
      ['not_object', undefined],
      ['invalid_fields', 'ConversationText'],
      ['invalid_fields', 'ConversationText'],
    ]);
    expect(leg.isOpen).toBe(true);
    expect(ev.of('error')).toEqual([]);
  });

  it('sends sendText(user) as InjectUserMessage and sendText(context) as UpdatePrompt with only the new text (Deepgram appends it to the prompt)', async () => {
    const { leg, ev, conn } = await ready();
    leg.sendText('Caller pressed 5', 'user');
    leg.sendText('The caller is a VIP.', 'context');
    leg.sendText('Their order is #42.', 'context');
    await conn.waitUntil(() => (conn.updatePrompts.length === 2 ? true : undefined));
    expect(conn.injectUserMessages).toEqual(['Caller pressed 5']);
    expect(conn.updatePrompts).toEqual(['The caller is a VIP.', 'Their order is #42.']);
    await barrier(leg, conn); // PromptUpdated answers have arrived by now
    expect(ev.of('badFrame')).toEqual([]);
  });

  it('turns a client-side FunctionCallRequest into toolCall and answers toolResult with FunctionCallResponse {id, name, content}', async () => {
    const { leg, ev, conn } = await ready();
    const id = conn.callFunction('end_call', { reason: 'caller said goodbye' });
    const [call] = await ev.until('toolCall');
    expect(call?.call).toEqual({ id, name: 'end_call', args: { reason: 'caller said goodbye' } });
    leg.toolResult(id, '{"ok":true}', false);
    const id2 = conn.callFunction('transfer_call', { target: 'sales' });
    await ev.until('toolCall', 2);
    leg.toolResult(id2, 'no agent free', true);
    await conn.waitUntil(() => (conn.functionCallResponses.length === 2 ? true : undefined));
    expect(conn.functionCallResponses).toEqual([
      { id, name: 'end_call', content: '{"ok":true}' },
      { id: id2, name: 'transfer_call', content: '{"error":"no agent free"}' },
    ]);
  });

  it('leaves server-side functions to Deepgram and gives {} for unparsable arguments', async () => {
    const { ev, conn } = await ready();
    conn.callFunction('lookup', { q: 1 }, { clientSide: false });
    conn.send({ type: 'FunctionCallRequest', functions: [{ id: 'fc_x', name: 'end_call', arguments: 'not json', client_side: true }] });
    const calls = await ev.until('toolCall');
    expect(calls.map((c) => c.call)).toEqual([{ id: 'fc_x', name: 'end_call', args: {} }]);
  });

  it('delivers a FunctionCallRequest whose arguments are a JSON object instead of a string, end_call included', async () => {
    const { ev, conn } = await ready();
    conn.send({ type: 'FunctionCallRequest', functions: [{ id: 'fc_obj', name: 'end_call', arguments: { reason: 'caller said goodbye' }, client_side: true }] });
    const [call] = await ev.until('toolCall');
    expect(call?.call).toEqual({ id: 'fc_obj', name: 'end_call', args: { reason: 'caller said goodbye' } });
    expect(ev.of('badFrame')).toEqual([]);
  });

  it('keeps the good calls of a FunctionCallRequest with malformed elements and counts the frame as bad once', async () => {
    const { ev, conn } = await ready();
    conn.send({
      type: 'FunctionCallRequest',
      functions: [
        { id: 'fc_noname' },
        'junk',
        null,
        { id: 'fc_ok', name: 'transfer_call', arguments: '{"target":"sales"}', client_side: true },
        { id: 'fc_end', name: 'end_call', arguments: [1, 2], client_side: 'yes' },
      ],
    });
    await ev.until('toolCall', 2);
    conn.userText('sync');
    await ev.until('transcript');
    expect(ev.of('toolCall').map((c) => c.call)).toEqual([
      { id: 'fc_ok', name: 'transfer_call', args: { target: 'sales' } },
      { id: 'fc_end', name: 'end_call', args: {} },
    ]);
    expect(ev.of('badFrame')).toEqual([{ e: 'badFrame', kind: 'invalid_fields', name: 'FunctionCallRequest' }]);
  });

  it('drops calls named in FunctionCallCancelled and answers nothing for them', async () => {
    const { leg, ev, conn } = await ready();
    const id = conn.callFunction('transfer_call', { target: 'sales' });
    await ev.until('toolCall');
    conn.cancelFunctions([{ id, name: 'transfer_call' }]);
    conn.userText('sync');
    await ev.until('transcript');
    leg.toolResult(id, 'done', false);
    await barrier(leg, conn);
    expect(conn.functionCallResponses).toEqual([]);
    expect(conn.sequence).not.toContain('FunctionCallResponse');
  });

  it('drops calls named in FunctionCallCancelled as functions, function_call_ids or ids, by string or {id}, skipping bad elements one by one', async () => {
    const { leg, ev, conn } = await ready();
    const ids = ['a', 'b', 'c', 'd', 'e'].map((x) => conn.callFunction('transfer_call', { target: x }));
    const kept = conn.callFunction('transfer_call', { target: 'kept' });
    await ev.until('toolCall', 6);
    conn.send({ type: 'FunctionCallCancelled', functions: [{ id: ids[0] }, 42] });
    conn.send({ type: 'FunctionCallCancelled', function_call_ids: [ids[1], { name: 'no id' }] });
    conn.send({ type: 'FunctionCallCancelled', ids: [{ id: ids[2] }, ids[3]] });
    conn.send({ type: 'FunctionCallCancelled', functions: [ids[4]] });
    conn.send({ type: 'FunctionCallCancelled', nothing: [] });
    conn.userText('sync');
    await ev.until('transcript');
    for (const id of [...ids, kept]) leg.toolResult(id, 'done', false);
    await barrier(leg, conn);
    expect(conn.functionCallResponses.map((r) => r.id)).toEqual([kept]);
    expect(ev.of('badFrame').map((b) => [b.kind, b.name])).toEqual([
      ['invalid_fields', 'FunctionCallCancelled'],
      ['invalid_fields', 'FunctionCallCancelled'],
      ['invalid_fields', 'FunctionCallCancelled'],
    ]);
  });

  it('on resume puts the earlier turns in agent.context.messages and sends no greeting', async () => {
    const { conn } = await ready({
      request: { resume: { history: [{ role: 'user', text: 'Hi, I need a plumber' }, { role: 'agent', text: 'Sure, what is your address?' }] } },
    });
    const agent = conn.settings?.agent;
    expect(agent).toMatchObject({
      context: {
        messages: [
          { type: 'History', role: 'user', content: 'Hi, I need a plumber' },
          { type: 'History', role: 'assistant', content: 'Sure, what is your address?' },
        ],
      },
    });
    expect(agent).not.toHaveProperty('greeting');
  });
});

describe('Deepgram adapter: keep-alive and heartbeat (fake timers)', () => {
  const FAKE = { toFake: ['setTimeout', 'clearTimeout', 'setInterval', 'clearInterval'] } as const;

  it('sends KeepAlive after 3 s without caller audio, and none while audio flows', async () => {
    vi.useFakeTimers({ toFake: [...FAKE.toFake] });
    const { leg, conn } = await ready();
    await vi.advanceTimersByTimeAsync(2999);
    await barrier(leg, conn, 'at-2999');
    expect(conn.keepAlives).toBe(0);
    await vi.advanceTimersByTimeAsync(1);
    await barrier(leg, conn, 'at-3000');
    expect(conn.keepAlives).toBe(1);
    expect(conn.sequence.at(-2)).toBe('KeepAlive');
    const frame = randomBytes(160);
    for (let i = 0; i < 500; i++) {
      leg.sendAudio(b64(frame));
      await vi.advanceTimersByTimeAsync(20);
    }
    await barrier(leg, conn, 'after-10s-of-audio');
    expect(conn.keepAlives).toBe(1);
    expect(conn.audioChunks).toHaveLength(500);
  });

  it('CLIENT_MESSAGE_TIMEOUT (no audio, no KeepAlive) is a fatal error that ends the leg', async () => {
    vi.useFakeTimers({ toFake: [...FAKE.toFake] });
    const { ev } = await ready({ fake: { clientMessageTimeoutMs: 5000 }, provider: { keepAliveMs: 0 } });
    await vi.advanceTimersByTimeAsync(5000);
    await ev.until('closed');
    expect(ev.of('error').map((x) => x.err)).toEqual([expect.objectContaining({ kind: 'fatal', code: 'CLIENT_MESSAGE_TIMEOUT', legDone: true })]);
    expect(ev.of('closed')[0]?.info.byUs).toBe(false);
  });

  it('ends the leg as transient heartbeat_lost when pings go unanswered for two intervals', async () => {
    vi.useFakeTimers({ toFake: [...FAKE.toFake] });
    const { ev } = await ready({ fake: { answerPings: false }, heartbeatMs: 1000 });
    await vi.advanceTimersByTimeAsync(3000);
    await ev.until('closed');
    expect(ev.of('error').map((x) => [x.err.kind, x.err.code, x.err.legDone])).toEqual([['transient', 'heartbeat_lost', true]]);
    expect(ev.of('closed')[0]?.info).toMatchObject({ error: 'heartbeat lost', byUs: false });
  });
});

describe('Deepgram adapter: errors and closing', () => {
  it('reports a refused key (HTTP 401) as auth, then closed', async () => {
    const server = await startFake();
    const { ev } = connect(server.url, {}, { apiKey: 'wrong-key' });
    await ev.until('closed');
    expect(server.refused).toEqual([401]);
    expect(ev.names()).toEqual(['error', 'closed']);
    expect(ev.of('error')[0]?.err).toMatchObject({ kind: 'auth', code: 'http_401', legDone: true });
    expect(ev.of('closed')[0]?.info).toMatchObject({ byUs: false, error: 'handshake refused with HTTP 401' });
    expect(logs.text()).not.toContain('wrong-key');
  });

  it('reports an upgrade refused with HTTP 429 (over the concurrency limit) as capacity', async () => {
    await startFake({ maxConnections: 1 });
    await ready();
    const { ev } = connect(fake?.url ?? '');
    await ev.until('closed');
    expect(fake?.refused).toEqual([429]);
    expect(ev.of('error')[0]?.err).toMatchObject({ kind: 'capacity', code: 'http_429', legDone: true });
  });

  it('classifies Deepgram errors: ASR_DRIVER_TIMEOUT transient, an undocumented code transient as other, each ending the leg once', async () => {
    const { ev, conn } = await ready();
    conn.error('ASR_DRIVER_TIMEOUT', 'speech recognition timed out');
    conn.error('SOMETHING_NEW');
    conn.close(1011, 'bye');
    await ev.until('closed');
    expect(ev.of('error').map((x) => x.err)).toEqual([
      { kind: 'transient', code: 'ASR_DRIVER_TIMEOUT', message: 'Deepgram error ASR_DRIVER_TIMEOUT: speech recognition timed out', legDone: true },
    ]);
    expect(ev.of('closed')[0]?.info).toMatchObject({ code: 1011, byUs: false });
  });

  it('classifies an Error whose code or description speaks of credentials as auth, and of too many sessions or rate limits as capacity', async () => {
    const a = await ready();
    a.conn.error('SESSION_REFUSED', 'Invalid credentials for this project');
    await a.ev.until('error');
    const b = await ready();
    b.conn.error('TOO_MANY_CONNECTIONS', 'Project is over its limit');
    await b.ev.until('error');
    expect(a.ev.of('error')[0]?.err).toMatchObject({ kind: 'auth', code: 'other', legDone: true });
    expect(a.ev.of('error')[0]?.err.message).toMatch(/API key/);
    expect(b.ev.of('error')[0]?.err).toMatchObject({ kind: 'capacity', code: 'other', legDone: true });
  });

  it('classifies a close without an Error by its reason: auth words as auth, capacity words as capacity, anything else transient', async () => {
    const results: Array<[string, string]> = [];
    for (const reason of ['Unauthorized', 'too many concurrent sessions', 'bye']) {
      const { ev, conn } = await ready();
      conn.close(1008, reason);
      await ev.until('closed');
      const err = ev.of('error')[0]?.err;
      results.push([err?.kind ?? '', err?.code ?? '']);
    }
    expect(results).toEqual([
      ['auth', 'connection_closed'],
      ['capacity', 'connection_closed'],
      ['transient', 'connection_closed'],
    ]);
  });

  it('reports an upgrade refused with HTTP 404 (wrong agent URL) as fatal, not worth a reconnect', async () => {
    const server = await startFake();
    const { ev } = connect(server.url.replace('/v1/agent/converse', '/v1/agent/nowhere'));
    await ev.until('closed');
    expect(ev.of('error')[0]?.err).toMatchObject({ kind: 'fatal', code: 'http_404', legDone: true });
    expect(ev.of('error')[0]?.err.message).toMatch(/URL/);
  });

  it('is refused with INVALID_SETTINGS (fatal) by an agent not set for μ-law 8 kHz output', async () => {
    const server = await startFake({ audio: { input: { encoding: 'mulaw', sample_rate: 8000 }, output: { encoding: 'linear16', sample_rate: 24000, container: 'none' } } });
    const { ev } = connect(server.url);
    await ev.until('closed');
    expect(ev.of('ready')).toEqual([]);
    expect(ev.of('error')[0]?.err).toMatchObject({ kind: 'fatal', code: 'INVALID_SETTINGS', legDone: true });
  });

  it('reports a Warning with legDone false and keeps the leg', async () => {
    const { leg, ev, conn } = await ready();
    conn.warning('SPEAK_REQUEST_FAILED');
    conn.warning('SPEAK_REQUEST_FAILED');
    conn.warning('NEW_WARNING');
    conn.userText('go on');
    await ev.until('transcript');
    expect(ev.of('error').map((x) => [x.err.kind, x.err.code, x.err.legDone])).toEqual([
      ['transient', 'SPEAK_REQUEST_FAILED', false],
      ['transient', 'SPEAK_REQUEST_FAILED', false],
      ['transient', 'other', false],
    ]);
    expect(leg.isOpen).toBe(true);
    expect(logs.lines.filter((l) => l.msg === 'Deepgram warning')).toHaveLength(2);
  });

  it('logs each Warning code once however often it repeats, and at most 20 distinct codes per leg, while reporting every Warning', async () => {
    const { ev, conn } = await ready();
    for (let i = 0; i < 10; i++) conn.warning('SPEAK_REQUEST_FAILED');
    for (let i = 0; i < 30; i++) conn.warning(`NEW_WARNING_${i}`);
    conn.userText('sync');
    await ev.until('transcript');
    expect(ev.of('error')).toHaveLength(40);
    const warningLogs = logs.lines.filter((l) => l.msg === 'Deepgram warning');
    expect(warningLogs).toHaveLength(20);
    expect(warningLogs.filter((l) => l.code === 'SPEAK_REQUEST_FAILED')).toHaveLength(1);
    expect(logs.lines.filter((l) => typeof l.msg === 'string' && l.msg.includes('further Deepgram warning codes'))).toHaveLength(1);
  });

  it('reports a close without a prior Error as transient connection_closed', async () => {
    const { ev, conn } = await ready();
    conn.close(1000, 'done');
    await ev.until('closed');
    expect(ev.of('error').map((x) => x.err)).toEqual([expect.objectContaining({ kind: 'transient', code: 'connection_closed', legDone: true })]);
    expect(ev.of('closed')[0]?.info).toMatchObject({ code: 1000, reason: 'done', byUs: false });
  });

  it('closes by us with the given code, once, with no error', async () => {
    const { leg, ev, conn } = await ready();
    leg.close(1000, 'call ended');
    leg.close();
    await ev.until('closed');
    expect(await conn.closed).toEqual({ code: 1000, reason: 'call ended' });
    await new Promise((r) => setTimeout(r, 20));
    expect(ev.names()).toEqual(['ready', 'closed']);
    expect(ev.of('closed')[0]?.info).toMatchObject({ code: 1000, byUs: true });
    expect(leg.isOpen).toBe(false);
    expect(leg.sendAudio(b64(randomBytes(160)))).toBe(false);
  });

  it('reports a refused TCP connection as transient connect_failed with closed({error})', async () => {
    const port = await new Promise<number>((resolve) => {
      const s = createServer().listen(0, '127.0.0.1', () => {
        const a = s.address();
        s.close(() => resolve(typeof a === 'object' && a !== null ? a.port : 0));
      });
    });
    const { ev } = connect(`ws://127.0.0.1:${port}/v1/agent/converse`);
    await ev.until('closed');
    expect(ev.of('error')[0]?.err).toMatchObject({ kind: 'transient', code: 'connect_failed', legDone: true });
    expect(ev.of('closed')[0]?.info.error).toMatch(/ECONNREFUSED/);
  });

  it('reports an unusable URL as fatal bad_url without throwing from connect()', async () => {
    const { ev } = connect('not a url');
    await ev.until('closed');
    expect(ev.of('error')[0]?.err).toMatchObject({ kind: 'fatal', code: 'bad_url', legDone: true });
  });

  it('never logs the API key or audio', async () => {
    const { leg, ev, conn } = await ready();
    const audio = randomBytes(160);
    leg.sendAudio(b64(audio));
    conn.speak(audio, { text: 'hi' });
    await ev.until('responseDone');
    conn.warning('THINK_REQUEST_FAILED');
    await ev.until('error');
    leg.close();
    await ev.until('closed');
    expect(logs.lines.length).toBeGreaterThan(0);
    expect(logs.text()).not.toContain(KEY);
    expect(logs.text()).not.toContain(b64(audio));
  });
});

describe('Deepgram codec', () => {
  it('classifies every documented Error code, warnings as not ending the leg, and refused upgrades by status', () => {
    for (const code of ['INTERNAL_SERVER_ERROR', 'FAILED_TO_START_LISTENING', 'ASR_CONNECTION_CLOSED', 'ASR_DRIVER_TIMEOUT']) {
      expect(classifyDeepgramError('Error', code)).toEqual({ kind: 'transient', code, legDone: true });
    }
    for (const code of ['UNPARSABLE_CLIENT_MESSAGE', 'NON_SETTINGS_MESSAGE_BEFORE_SETTINGS', 'SETTINGS_ALREADY_APPLIED', 'INVALID_SETTINGS', 'USER_AUDIO_FORMAT', 'CLIENT_MESSAGE_TIMEOUT']) {
      expect(classifyDeepgramError('Error', code)).toEqual({ kind: 'fatal', code, legDone: true });
    }
    expect(classifyDeepgramError('Error', 'made-up code with spaces')).toEqual({ kind: 'transient', code: 'other', legDone: true });
    expect(classifyDeepgramError('Warning', 'FUNCTION_CALL_FAILED')).toEqual({ kind: 'transient', code: 'FUNCTION_CALL_FAILED', legDone: false });
    expect(classifyDeepgramError('Warning', 'x')).toEqual({ kind: 'transient', code: 'other', legDone: false });
    expect(classifyHandshakeStatus(401)).toEqual({ kind: 'auth', code: 'http_401' });
    expect(classifyHandshakeStatus(403)).toEqual({ kind: 'auth', code: 'http_403' });
    expect(classifyHandshakeStatus(429)).toEqual({ kind: 'capacity', code: 'http_429' });
    expect(classifyHandshakeStatus(502)).toEqual({ kind: 'transient', code: 'http_other' });
    for (const status of [400, 402, 404]) expect(classifyHandshakeStatus(status)).toEqual({ kind: 'fatal', code: `http_${status}` });
  });

  it('classifies Error codes and descriptions by auth and capacity words before the code tables', () => {
    const kind = (code: string, description = ''): string => classifyDeepgramError('Error', code, description).kind;
    expect(['UNAUTHORIZED', 'x unauthorised', 'INVALID_API_KEY', 'Invalid key', 'Forbidden', 'bad credentials'].map((d) => kind('X', d))).toEqual(Array(6).fill('auth'));
    expect(['Too many connections', 'TOO_MANY_REQUESTS', 'too many sessions', 'concurrency limit reached', 'RATE_LIMIT_EXCEEDED', 'ratelimit'].map((d) => kind('X', d))).toEqual(Array(6).fill('capacity'));
    expect(kind('UNAUTHORIZED')).toBe('auth');
    expect(classifyDeepgramError('Error', 'INTERNAL_SERVER_ERROR', 'LLM rate limit')).toEqual({ kind: 'capacity', code: 'INTERNAL_SERVER_ERROR', legDone: true });
    expect(kind('INTERNAL_SERVER_ERROR', 'something broke')).toBe('transient');
    expect(classifyDeepgramError('Warning', 'X', 'rate limit')).toEqual({ kind: 'transient', code: 'other', legDone: false });
  });

  it('decodes the server messages the adapter acts on and classifies the rest', () => {
    expect(decodeDeepgramMessage('{"type":"Welcome","request_id":"r1"}')).toEqual({ type: 'Welcome', requestId: 'r1' });
    expect(decodeDeepgramMessage('{"type":"Welcome"}')).toEqual({ type: 'Welcome', requestId: undefined });
    expect(decodeDeepgramMessage('{"type":"AgentStartedSpeaking","total_latency":1}')).toEqual({ type: 'AgentStartedSpeaking' });
    expect(decodeDeepgramMessage('{"type":"FunctionCallRequest","functions":[{"id":"a","name":"f","arguments":"{\\"x\\":1}","client_side":true}]}')).toEqual({
      type: 'FunctionCallRequest',
      functions: [{ id: 'a', name: 'f', args: { x: 1 }, clientSide: true }],
      skipped: 0,
    });
    expect(decodeDeepgramMessage('{"type":"FunctionCallRequest","functions":[{"id":"a"},{"id":"b","name":"f","arguments":{"x":1}}]}')).toEqual({
      type: 'FunctionCallRequest',
      functions: [{ id: 'b', name: 'f', args: { x: 1 }, clientSide: undefined }],
      skipped: 1,
    });
    expect(decodeDeepgramMessage('{"type":"FunctionCallRequest","functions":{}}')).toMatchObject({ kind: 'invalid_fields', name: 'FunctionCallRequest' });
    expect(decodeDeepgramMessage('{"type":"FunctionCallCancelled","functions":[{"id":"a","name":"f"}]}')).toEqual({ type: 'FunctionCallCancelled', ids: ['a'], skipped: 0 });
    expect(decodeDeepgramMessage('{"type":"FunctionCallCancelled","ids":["a",{"id":"b"},7],"function_call_ids":["c"]}')).toEqual({ type: 'FunctionCallCancelled', ids: ['c', 'a', 'b'], skipped: 1 });
    expect(decodeDeepgramMessage('{"type":"FunctionCallCancelled"}')).toMatchObject({ kind: 'invalid_fields', name: 'FunctionCallCancelled' });
    expect(decodeDeepgramMessage('{"type":"Error","code":"INVALID_SETTINGS","description":"d"}')).toEqual({ type: 'Error', code: 'INVALID_SETTINGS', description: 'd' });
    expect(decodeDeepgramMessage('{"type":"History","function_calls":[]}')).toEqual({ type: 'ignored', name: 'History' });
    expect(decodeDeepgramMessage('{"type":"Nope"}')).toEqual({ type: 'unknown', name: 'Nope' });
    expect(decodeDeepgramMessage('{"no":"type"}')).toMatchObject({ kind: 'invalid_fields' });
  });

  it('builds Settings purely: a <type>/<model> think model, overrides under the request, audio always μ-law 8 kHz', () => {
    expect(thinkProviderFor('anthropic/claude-3-5-haiku-latest')).toEqual({ type: 'anthropic', model: 'claude-3-5-haiku-latest' });
    expect(thinkProviderFor('groq/meta-llama/llama-4')).toEqual({ type: 'groq', model: 'meta-llama/llama-4' });
    expect(thinkProviderFor('meta-llama/llama-4')).toEqual({ type: 'open_ai', model: 'meta-llama/llama-4' });
    const request: AgentRequest = { ...REQUEST, voice: undefined, instructions: undefined, model: undefined };
    const overrides = {
      tags: ['playline'],
      agent: {
        think: {
          provider: { type: 'anthropic', model: 'claude-3-5-haiku-latest', temperature: 0.3 },
          prompt: 'From the file',
          functions: [{ name: 'lookup', endpoint: { url: 'https://example.test/lookup' } }, { name: 'end_call', description: 'old' }],
        },
        speak: { provider: { type: 'eleven_labs', model_id: 'eleven_turbo_v2' } },
        greeting: 'file greeting',
      },
    };
    const before = JSON.stringify(overrides);
    const s = buildDeepgramSettings(request, overrides);
    expect(JSON.stringify(overrides)).toBe(before);
    expect(s.tags).toEqual(['playline']);
    expect(s.audio).toEqual({ input: { encoding: 'mulaw', sample_rate: 8000 }, output: { encoding: 'mulaw', sample_rate: 8000, container: 'none' } });
    expect(s.agent.think.provider).toEqual({ type: 'anthropic', model: 'claude-3-5-haiku-latest', temperature: 0.3 });
    expect(s.agent.think.prompt).toBe('From the file');
    expect(s.agent.think.functions?.map((f) => f.name)).toEqual(['lookup', 'end_call', 'transfer_call']);
    expect(s.agent.think.functions?.[1]).toMatchObject({ description: END_CALL_TOOL.description, defer_until_eot: true });
    expect(s.agent.speak.provider).toEqual({ type: 'eleven_labs', model_id: 'eleven_turbo_v2' });
    expect(s.agent.greeting).toBe(REQUEST.greeting);
    expect(buildDeepgramSettings({ ...request, model: 'gpt-4.1' }, overrides).agent.think.provider).toEqual({ type: 'anthropic', model: 'gpt-4.1', temperature: 0.3 });
  });

  it('encodes agent audio of any size to exactly its base64, small frames reusing one scratch buffer', () => {
    const scratch = new Base64Scratch();
    for (const n of [0, 1, 160, 8192, 40_000, 100_000, 160]) {
      const bytes = randomBytes(n);
      const len = scratch.encode(bytes);
      expect(scratch.buffer.toString('latin1', 0, len), `length ${n}`).toBe(bytes.toString('base64'));
    }
  });

  it('decodes base64 spans exactly like Buffer.from for every length, and refuses what is not padded base64', () => {
    for (let n = 0; n <= 300; n++) {
      const bytes = randomBytes(n);
      const text = Buffer.from(`xx${bytes.toString('base64')}yy`, 'latin1');
      expect(decodeBase64Span(text, 2, text.length - 2)?.equals(bytes), `length ${n}`).toBe(true);
    }
    for (const bad of ['A', 'AB=', 'A===', '!!!!', 'AA=A', 'AAAA AAA', 'AAA\u00ff']) {
      const buf = Buffer.from(bad, 'latin1');
      expect(decodeBase64Span(buf, 0, buf.length), bad).toBeUndefined();
    }
  });
});

describe('Fake Deepgram strictness', () => {
  /** A bare client: what the fake answers to frames the adapter would never send. */
  async function raw(url: string, headers: Record<string, string> = { Authorization: `Token ${KEY}` }) {
    const ws = new WebSocket(url, { headers });
    const messages: Array<Record<string, unknown>> = [];
    ws.on('message', (data, isBinary) => {
      if (!isBinary) messages.push(JSON.parse(data.toString()) as Record<string, unknown>);
    });
    const closed = new Promise<number>((resolve) => ws.on('close', (code) => resolve(code)));
    const status = new Promise<number>((resolve) => ws.on('unexpected-response', (_req, res) => resolve(res.statusCode ?? 0)));
    ws.on('error', () => {});
    return { ws, messages, closed, status, open: new Promise<void>((resolve) => ws.on('open', () => resolve())) };
  }
  const settings = (output: Record<string, unknown> = { encoding: 'mulaw', sample_rate: 8000, container: 'none' }) =>
    JSON.stringify({ type: 'Settings', audio: { input: { encoding: 'mulaw', sample_rate: 8000 }, output }, agent: {} });

  it('refuses an upgrade without Authorization: Token with 401', async () => {
    const server = await startFake();
    const c = await raw(server.url, {});
    expect(await c.status).toBe(401);
    const c2 = await raw(server.url, { Authorization: `Bearer ${KEY}` });
    expect(await c2.status).toBe(401);
  });

  it('answers audio (or any message) before Settings with NON_SETTINGS_MESSAGE_BEFORE_SETTINGS and closes', async () => {
    const server = await startFake();
    const c = await raw(server.url);
    await c.open;
    c.ws.send(randomBytes(160));
    await c.closed;
    expect(c.messages.map((m) => m.type)).toEqual(['Welcome', 'Error']);
    expect(c.messages[1]).toMatchObject({ code: 'NON_SETTINGS_MESSAGE_BEFORE_SETTINGS' });
    const k = await raw(server.url);
    await k.open;
    k.ws.send('{"type":"KeepAlive"}');
    await k.closed;
    expect(k.messages[1]).toMatchObject({ type: 'Error', code: 'NON_SETTINGS_MESSAGE_BEFORE_SETTINGS' });
  });

  it('answers a second Settings with SETTINGS_ALREADY_APPLIED, and output that is not raw μ-law (container none) with INVALID_SETTINGS', async () => {
    const server = await startFake();
    const c = await raw(server.url);
    await c.open;
    c.ws.send(settings());
    c.ws.send(settings());
    await c.closed;
    expect(c.messages.map((m) => m.type === 'Error' ? m.code : m.type)).toEqual(['Welcome', 'SettingsApplied', 'SETTINGS_ALREADY_APPLIED']);
    for (const output of [{ encoding: 'mulaw', sample_rate: 8000, container: 'wav' }, { encoding: 'mulaw', sample_rate: 8000 }, { encoding: 'linear16', sample_rate: 8000, container: 'none' }]) {
      const w = await raw(server.url);
      await w.open;
      w.ws.send(settings(output));
      await w.closed;
      expect(w.messages[1], JSON.stringify(output)).toMatchObject({ type: 'Error', code: 'INVALID_SETTINGS' });
    }
  });
});
