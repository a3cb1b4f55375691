/**
 * The OpenAI Realtime adapter (GA interface) against the protocol-faithful fake,
 * through the agent port only (no call session).
 */
import { randomBytes } from 'node:crypto';
import pino from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { WebSocket } from 'ws';
import { classifyOpenAiError, decodeOpenAiMessage } from '../src/agent/openai/codec.js';
import { createOpenAiProvider } from '../src/agent/openai/provider.js';
import { newDeltaSpan, scanAudioDelta } from '../src/agent/openai/scan.js';
import { END_CALL_TOOL, type AgentCloseInfo, type AgentError, type AgentEvents, type AgentLeg, type AgentRequest, type AgentToolCall } from '../src/agent/port.js';
import { FAKE_OPENAI_KEY, FakeOpenAiServer, SESSION_MAX_REASON, type FakeOpenAiConnection, type FakeOpenAiOptions } from '../src/testing/agents/openai.js';

const log = pino({ level: 'silent' });

const REQUEST: AgentRequest = {
  id: 'gpt-realtime',
  instructions: 'You are the front desk of Acme.',
  language: 'en-US',
  tools: [END_CALL_TOOL],
  call: { callSid: 'CA0123', from: '+15550001111', to: '+15550002222', direction: 'inbound' },
};

type Ev =
  | { type: 'ready'; conversationId: string }
  | { type: 'audio'; bytes: Buffer }
  | { type: 'responseStart' }
  | { type: 'responseDone' }
  | { type: 'callerSpeechStart' }
  | { type: 'transcript'; role: 'user' | 'agent'; text: string }
  | { type: 'toolCall'; call: AgentToolCall }
  | { type: 'hangup'; reason: string }
  | { type: 'error'; err: AgentError }
  | { type: 'badFrame'; kind: string; name: string | undefined }
  | { type: 'closed'; info: AgentCloseInfo };

/** Records every event the adapter emits, in order. */
class Recorder {
  readonly log: Ev[] = [];
  readonly #wakers = new Set<() => void>();
  readonly events: AgentEvents = {
    ready: (info) => this.#push({ type: 'ready', conversationId: info.conversationId }),
    audio: (buf, start, end) => this.#push({ type: 'audio', bytes: Buffer.from(buf.toString('latin1', start, end), 'base64') }),
    responseStart: () => this.#push({ type: 'responseStart' }),
    responseDone: () => this.#push({ type: 'responseDone' }),
    callerSpeechStart: () => this.#push({ type: 'callerSpeechStart' }),
    transcript: (role, text) => this.#push({ type: 'transcript', role, text }),
    toolCall: (call) => this.#push({ type: 'toolCall', call }),
    hangup: (reason) => this.#push({ type: 'hangup', reason }),
    error: (err) => this.#push({ type: 'error', err }),
    badFrame: (kind, name) => this.#push({ type: 'badFrame', kind, name }),
    closed: (info) => this.#push({ type: 'closed', info }),
  };

  #push(e: Ev): void {
    this.log.push(e);
    for (const w of [...this.#wakers]) w();
  }

  of<T extends Ev['type']>(type: T): Array<Extract<Ev, { type: T }>> {
    return this.log.filter((e): e is Extract<Ev, { type: T }> => e.type === type);
  }

  types(): string[] {
    return this.log.map((e) => e.type);
  }

  /** All agent audio delivered, concatenated. */
  audio(): Buffer {
    return Buffer.concat(this.of('audio').map((e) => e.bytes));
  }

  /** Waits until `count` events of `type` were emitted; returns the last of them. */
  async wait<T extends Ev['type']>(type: T, count = 1, timeoutMs = 3000): Promise<Extract<Ev, { type: T }>> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const got = this.of(type);
      if (got.length >= count) return got[count - 1] as Extract<Ev, { type: T }>;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${count} × ${type}; got ${this.types().join(',')}`);
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, 50);
        function done(): void {
          clearTimeout(t);
          resolve();
        }
        const w = (): void => {
          this.#wakers.delete(w);
          done();
        };
        this.#wakers.add(w);
      });
    }
  }
}

const servers: FakeOpenAiServer[] = [];
const legs: AgentLeg[] = [];
const sockets: WebSocket[] = [];

afterEach(async () => {
  vi.useRealTimers();
  for (const leg of legs.splice(0)) leg.close();
  for (const ws of sockets.splice(0)) ws.terminate();
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function startFake(opts: FakeOpenAiOptions = {}): Promise<FakeOpenAiServer> {
  const fake = await FakeOpenAiServer.start(opts);
  servers.push(fake);
  return fake;
}

interface Setup {
  fake: FakeOpenAiServer;
  conn: FakeOpenAiConnection;
  leg: AgentLeg;
  rec: Recorder;
}

function connectLeg(fake: FakeOpenAiServer, request: Partial<AgentRequest> = {}, heartbeatMs = 0, apiKey = FAKE_OPENAI_KEY, logger = log): { leg: AgentLeg; rec: Recorder } {
  const rec = new Recorder();
  const leg = createOpenAiProvider({ apiKey, url: fake.url }).connect({ request: { ...REQUEST, ...request }, events: rec.events, log: logger, heartbeatMs });
  legs.push(leg);
  return { leg, rec };
}

/** A leg connected to a new fake, ready for audio. */
async function ready(request: Partial<AgentRequest> = {}, fakeOpts: FakeOpenAiOptions = {}, heartbeatMs = 0, logger = log): Promise<Setup> {
  const fake = await startFake(fakeOpts);
  const { leg, rec } = connectLeg(fake, request, heartbeatMs, FAKE_OPENAI_KEY, logger);
  const conn = await fake.nextConnection();
  await rec.wait('ready');
  return { fake, conn, leg, rec };
}

/**
 * A round trip both ways: everything the fake sent before has been handled by the leg, and
 * everything the leg sent until then has reached the fake (markers: a user transcript one way,
 * an empty audio append the other).
 */
async function settle(s: Setup): Promise<void> {
  const before = s.rec.of('transcript').length;
  s.conn.userTranscript('(marker)');
  await s.rec.wait('transcript', before + 1);
  const isMarker = (f: Record<string, unknown>): boolean => f.type === 'input_audio_buffer.append' && f.audio === '';
  const markers = s.conn.frames.filter(isMarker).length;
  expect(s.leg.sendAudio('')).toBe(true);
  await s.conn.waitFor(() => s.conn.frames.filter(isMarker).length > markers);
}

/** Client events other than the settle markers. */
const events = (conn: FakeOpenAiConnection): Array<Record<string, unknown>> => conn.frames.filter((f) => !(f.type === 'input_audio_buffer.append' && f.audio === ''));

const mulaw = (n: number): Buffer => randomBytes(n);

/** `v` as an object ({} when it is not one): reads fields of parsed frames without casts. */
const obj = (v: unknown): Record<string, unknown> => (typeof v === 'object' && v !== null && !Array.isArray(v) ? Object.fromEntries(Object.entries(v)) : {});

describe('OpenAI adapter: session setup', () => {
  it('sends exactly one GA session.update after session.created: μ-law both ways, voice, interrupting server VAD, transcription, instructions and function tools', async () => {
    const { conn } = await ready();
    expect(conn.headers.authorization).toBe(`Bearer ${FAKE_OPENAI_KEY}`);
    expect(conn.headers['openai-beta']).toBeUndefined();
    expect(conn.model).toBe('gpt-realtime');
    expect(conn.frames[0]).toEqual({
      type: 'session.update',
      session: {
        type: 'realtime',
        instructions: 'You are the front desk of Acme.',
        output_modalities: ['audio'],
        audio: {
          input: {
            format: { type: 'audio/pcmu' },
            transcription: { model: 'gpt-4o-mini-transcribe', language: 'en' },
            turn_detection: { type: 'server_vad', create_response: true, interrupt_response: true },
          },
          output: { format: { type: 'audio/pcmu' }, voice: 'marin' },
        },
        tools: [{ type: 'function', name: 'end_call', description: END_CALL_TOOL.description, parameters: END_CALL_TOOL.parameters }],
        tool_choice: 'auto',
      },
    });
    expect(conn.frames.filter((f) => f.type === 'session.update')).toHaveLength(1);
    expect(conn.sent[0]?.type).toBe('session.created');
    expect(conn.refusals).toEqual([]);
    expect(conn.sessionUpdates).toBe(1);
  });

  it('connects to the request model when given, else the agent id, with the requested voice', async () => {
    const { conn } = await ready({ model: 'gpt-realtime-mini', voice: 'cedar' });
    expect(conn.model).toBe('gpt-realtime-mini');
    expect(conn.frames[0]).toMatchObject({ session: { audio: { output: { voice: 'cedar' } } } });
  });

  it('is ready only once session.updated confirms the config, with the session id as conversation id; audio before that is not sent', async () => {
    const fake = await startFake({ autoConfirm: false });
    const { leg, rec } = connectLeg(fake);
    const conn = await fake.nextConnection();
    await conn.waitForType('session.update');
    expect(leg.sendAudio(mulaw(160).toString('base64'))).toBe(false);
    conn.userTranscript('before ready'); // a round trip: the leg has handled everything sent so far
    await rec.wait('transcript');
    expect(rec.of('ready')).toEqual([]);
    conn.confirmSession();
    const r = await rec.wait('ready');
    expect(r.conversationId).toBe(conn.sessionId);
    expect(leg.sendAudio(mulaw(160).toString('base64'))).toBe(true);
    await conn.waitForAudioBytes(160);
    expect(conn.audioBeforeConfig).toBe(0);
    expect(rec.of('ready')).toHaveLength(1);
  });

  it('sends the session.update anyway when session.created has not come 1500 ms after open, once, and takes the session id if it comes later', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const fake = await startFake({ holdSessionCreated: true, autoConfirm: false });
    const { leg, rec } = connectLeg(fake);
    const conn = await fake.nextConnection();
    await vi.waitFor(() => expect(leg.isOpen).toBe(true), { interval: 2 });
    vi.advanceTimersByTime(1500);
    await conn.waitForType('session.update');
    conn.sendSessionCreated(); // late: no second update
    vi.advanceTimersByTime(5000);
    conn.confirmSession();
    const r = await rec.wait('ready');
    expect(r.conversationId).toBe(conn.sessionId);
    conn.userTranscript('round trip');
    await rec.wait('transcript');
    expect(conn.frames.map((f) => f.type)).toEqual(['session.update']);
    expect(conn.sessionUpdates).toBe(1);
  });

  it('sends no second session.update when session.created came in time and the 1500 ms pass', async () => {
    vi.useFakeTimers({ toFake: ['setTimeout', 'clearTimeout'] });
    const s = await ready();
    vi.advanceTimersByTime(5000);
    s.conn.userTranscript('round trip');
    await s.rec.wait('transcript');
    expect(s.conn.frames.filter((f) => f.type === 'session.update')).toHaveLength(1);
  });

  it('asks for the greeting with one response.create after session.updated', async () => {
    const { conn } = await ready({ greeting: 'Thanks for calling Acme, how can I help?' });
    const create = await conn.waitForType('response.create');
    expect(conn.frames.map((f) => f.type)).toEqual(['session.update', 'response.create']);
    const instructions = obj(create.response).instructions;
    expect(typeof instructions).toBe('string');
    expect(instructions).toContain('"Thanks for calling Acme, how can I help?"');
    expect(conn.refusals).toEqual([]);
  });

  it('asks for no response when there is no greeting', async () => {
    const s = await ready();
    await settle(s);
    expect(s.conn.responseCreates).toEqual([]);
  });

  it('on resume, replays the history as text items in order (user input_text, assistant output_text) and does not greet', async () => {
    const s = await ready({
      greeting: 'Hello!',
      resume: {
        history: [
          { role: 'user', text: 'A table for tonight, please.' },
          { role: 'agent', text: 'For how many people?' },
          { role: 'user', text: 'Four.' },
        ],
      },
    });
    await settle(s);
    expect(events(s.conn).map((f) => f.type)).toEqual(['session.update', 'conversation.item.create', 'conversation.item.create', 'conversation.item.create']);
    expect(events(s.conn).slice(1).map((f) => f.item)).toEqual([
      { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'A table for tonight, please.' }] },
      { type: 'message', role: 'assistant', content: [{ type: 'output_text', text: 'For how many people?' }] },
      { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'Four.' }] },
    ]);
    expect(s.conn.items).toHaveLength(3);
    expect(s.conn.responseCreates).toEqual([]);
    expect(s.conn.refusals).toEqual([]);
  });
});

describe('OpenAI adapter: resume', () => {
  it('reports a history item the service refused as one warning naming it (its place and role), and the conversation goes on', async () => {
    const isAgentTurn = (item: Record<string, unknown>): boolean => item.role === 'assistant';
    const lines: string[] = [];
    const captured = pino({ level: 'debug' }, { write: (line: string) => void lines.push(line) });
    const s = await ready(
      {
        resume: {
          history: [
            { role: 'user', text: 'A table for tonight, please.' },
            { role: 'agent', text: 'For how many people?' },
            { role: 'user', text: 'Four.' },
          ],
        },
      },
      { refuseItem: isAgentTurn },
      0,
      captured,
    );
    await settle(s);
    expect(s.conn.refusals).toEqual(['invalid_value']);
    expect(s.conn.items).toHaveLength(2);
    const errors = s.rec.of('error').map((e) => e.err);
    expect(errors).toEqual([{ kind: 'transient', code: 'history_rejected', legDone: false, message: expect.stringContaining('history item 2 of 3 (agent turn') }]);
    expect(errors[0]?.message).not.toContain('For how many people?'); // the words stay out of logs
    // The session logs the non-fatal error as its one warning; the adapter adds none of its own.
    expect(lines.filter((l) => obj(JSON.parse(l)).level === 40)).toEqual([]);
    expect(s.leg.isOpen).toBe(true);
    s.conn.speak(mulaw(160));
    await s.rec.wait('responseDone');
  });
});

describe('OpenAI adapter: audio', () => {
  it('wraps caller audio in input_audio_buffer.append byte for byte, from a string or a buffer span', async () => {
    const { conn, leg } = await ready();
    const a = mulaw(160);
    const b = mulaw(160);
    expect(leg.sendAudio(a.toString('base64'))).toBe(true);
    const b64 = b.toString('base64');
    const frame = Buffer.from(`{"media":{"payload":"${b64}"}}`, 'latin1');
    const start = frame.indexOf(b64);
    expect(leg.sendAudioBytes(frame, start, start + b64.length)).toBe(true);
    const got = await conn.waitForAudioBytes(320);
    expect(got.equals(Buffer.concat([a, b]))).toBe(true);
    const appends = conn.texts.filter((t) => t.includes('input_audio_buffer.append'));
    expect(appends).toEqual([`{"type":"input_audio_buffer.append","audio":"${a.toString('base64')}"}`, `{"type":"input_audio_buffer.append","audio":"${b64}"}`]);
  });

  it('delivers agent audio byte-exact between responseStart and responseDone, once per response', async () => {
    const { conn, rec } = await ready();
    const first = mulaw(4000);
    const second = mulaw(1234);
    conn.speak(first, { chunkMs: 20 });
    conn.speak(second, { chunkMs: 100 });
    await rec.wait('responseDone', 2);
    expect(rec.audio().equals(Buffer.concat([first, second]))).toBe(true);
    const order = rec.types().filter((t) => t !== 'ready');
    const chunks1 = Math.ceil(4000 / 160);
    const chunks2 = Math.ceil(1234 / 800);
    expect(order).toEqual(['responseStart', ...Array<string>(chunks1).fill('audio'), 'responseDone', 'responseStart', ...Array<string>(chunks2).fill('audio'), 'responseDone']);
    // The service's delta shape is the one the fast scanner takes.
    const delta = conn.sent.find((e) => e.type === 'response.output_audio.delta');
    expect(scanAudioDelta(Buffer.from(JSON.stringify(delta)), newDeltaSpan(), 1 << 20)).toBe(true);
  });

  it('delivers a delta the fast scanner leaves to the full decoder (an extra key)', async () => {
    const s = await ready();
    const bytes = mulaw(800);
    const responseId = s.conn.startResponse();
    s.conn.sendRaw(JSON.stringify({ type: 'response.output_audio.delta', event_id: 'e1', response_id: responseId, item_id: 'item_x', output_index: 0, content_index: 0, delta: bytes.toString('base64'), obfuscation: 'ab' }));
    await s.rec.wait('audio');
    expect(s.rec.audio().equals(bytes)).toBe(true);
  });

  it('starts a response on the first delta of a response it was not told about', async () => {
    const s = await ready();
    s.conn.delta('resp_unannounced', 'item_1', mulaw(160));
    await s.rec.wait('audio');
    expect(s.rec.types().slice(-2)).toEqual(['responseStart', 'audio']);
  });
});

describe('OpenAI adapter: fast delta scanner', () => {
  const b64 = Buffer.alloc(160, 0xff).toString('base64');
  const scan = (text: string): boolean => scanAudioDelta(Buffer.from(text, 'utf8'), newDeltaSpan(), 1 << 20);

  it('accepts the delta shape with keys in any order, whitespace, and optional keys missing, and finds the ids and audio', () => {
    const text = `{ "delta" : "${b64}", "item_id":"item_1" ,"content_index":0,"type":"response.output_audio.delta","output_index": 12,"response_id":"resp_9","event_id":"event_3" }`;
    const buf = Buffer.from(text, 'latin1');
    const span = newDeltaSpan();
    expect(scanAudioDelta(buf, span, 1 << 20)).toBe(true);
    expect(buf.toString('latin1', span.audioStart, span.audioEnd)).toBe(b64);
    expect(buf.toString('latin1', span.responseStart, span.responseEnd)).toBe('resp_9');
    expect(buf.toString('latin1', span.itemStart, span.itemEnd)).toBe('item_1');
    expect(scan(`{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"${b64}"}`)).toBe(true);
  });

  it.each([
    ['an unknown key', `{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"${b64}","obfuscation":"x"}`],
    ['another type', `{"type":"response.output_text.delta","response_id":"r","item_id":"i","delta":"${b64}"}`],
    ['no item id', `{"type":"response.output_audio.delta","response_id":"r","delta":"${b64}"}`],
    ['an empty response id', `{"type":"response.output_audio.delta","response_id":"","item_id":"i","delta":"${b64}"}`],
    ['a repeated key', `{"type":"response.output_audio.delta","response_id":"r","item_id":"i","item_id":"j","delta":"${b64}"}`],
    ['an escape in an id', `{"type":"response.output_audio.delta","response_id":"r\\u0041","item_id":"i","delta":"${b64}"}`],
    ['a fractional index', `{"type":"response.output_audio.delta","response_id":"r","item_id":"i","output_index":1.5,"delta":"${b64}"}`],
    ['a negative index', `{"type":"response.output_audio.delta","response_id":"r","item_id":"i","content_index":-1,"delta":"${b64}"}`],
    ['invalid base64', `{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"abc"}`],
    ['trailing bytes', `{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"${b64}"}x`],
  ])('leaves a frame with %s to the full decoder', (_what, text) => {
    expect(scan(text)).toBe(false);
  });

  it('decodes conversation.item.truncated as ignored, function_call output items as calls (other items ignored), and rate limits with the one used up', () => {
    expect(decodeOpenAiMessage('{"type":"conversation.item.truncated","item_id":"i","content_index":0,"audio_end_ms":200}')).toEqual({ type: 'ignored', name: 'conversation.item.truncated' });
    expect(decodeOpenAiMessage('{"type":"response.output_item.added","item":{"id":"i","type":"message","role":"assistant"}}')).toEqual({ type: 'ignored', name: 'response.output_item.added' });
    expect(decodeOpenAiMessage('{"type":"response.output_item.done","item":{"id":"i","type":"function_call","call_id":"c","name":"end_call","status":"completed","arguments":"{}"}}')).toEqual({
      type: 'response.output_item.done',
      call: { itemId: 'i', callId: 'c', name: 'end_call', status: 'completed', arguments: '{}' },
    });
    expect(decodeOpenAiMessage('{"type":"response.output_item.added"}')).toMatchObject({ type: undefined, kind: 'invalid_fields' });
    expect(decodeOpenAiMessage('{"type":"response.function_call_arguments.done","arguments":"{}"}')).toMatchObject({ type: undefined, kind: 'invalid_fields' });
    expect(decodeOpenAiMessage('{"type":"rate_limits.updated","rate_limits":[{"name":"requests","remaining":5},{"name":"tokens","remaining":0}]}')).toEqual({ type: 'rate_limits.updated', exhausted: 'tokens' });
    expect(decodeOpenAiMessage('{"type":"rate_limits.updated","rate_limits":[{"name":"requests","remaining":5}]}')).toEqual({ type: 'rate_limits.updated', exhausted: undefined });
    expect(decodeOpenAiMessage('{"type":"rate_limits.updated"}')).toMatchObject({ type: undefined, kind: 'invalid_fields' });
  });

  it('the full decoder agrees on the ids and audio of a delta with an unknown key, and refuses bad base64', () => {
    expect(decodeOpenAiMessage(`{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"${b64}","obfuscation":"x"}`)).toEqual({
      type: 'response.output_audio.delta',
      responseId: 'r',
      itemId: 'i',
      delta: b64,
    });
    expect(decodeOpenAiMessage('{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"abc"}')).toMatchObject({ type: undefined, kind: 'bad_audio' });
  });
});

describe('OpenAI adapter: barge-in', () => {
  it('reports speech_started as callerSpeechStart and delivers no late audio of the cut response, before or after the next one starts', async () => {
    const s = await ready();
    const heard = mulaw(800);
    const cut = s.conn.startResponse();
    const item = s.conn.audio(heard, { chunkMs: 100 });
    await s.rec.wait('audio');
    s.conn.callerSpeaks({ lateDeltas: 2 });
    await s.rec.wait('callerSpeechStart');
    await settle(s);
    expect(s.rec.audio().equals(heard)).toBe(true);
    expect(s.rec.of('responseDone')).toEqual([]); // the cut response's end is no news
    const next = mulaw(1600);
    s.conn.speak(next);
    await s.rec.wait('responseDone');
    s.conn.delta(cut, item, mulaw(160)); // very late: after the next response started
    await settle(s);
    expect(s.rec.audio().equals(Buffer.concat([heard, next]))).toBe(true);
    const t = s.rec.types();
    expect(t.indexOf('responseStart', t.indexOf('callerSpeechStart'))).toBeLessThan(t.lastIndexOf('audio'));
  });

  it('truncates the item playing when a response has two audio items, at the played ms within that item', async () => {
    const s = await ready();
    s.conn.startResponse();
    const first = s.conn.audio(mulaw(8000)); // 1000 ms
    const second = s.conn.audio(mulaw(4000)); // 500 ms
    await s.rec.wait('audio', 15);
    s.conn.callerSpeaks();
    await s.rec.wait('callerSpeechStart');
    s.leg.interrupted(1200.7);
    const t = await s.conn.waitForType('conversation.item.truncate');
    expect(t).toMatchObject({ item_id: second, content_index: 0, audio_end_ms: 200 });
    expect(first).not.toBe(second);
    await settle(s);
    expect(s.conn.truncates).toEqual([{ itemId: second, contentIndex: 0, audioEndMs: 200, accepted: true }]);
    expect(s.conn.sent.some((e) => e.type === 'conversation.item.truncated')).toBe(true);
    expect(s.rec.of('error')).toEqual([]);
    // The service's truncated confirmation is known and changes nothing (the port has no event for it).
    expect(s.rec.of('badFrame')).toEqual([]);
    expect(s.rec.of('transcript').map((e) => e.text)).toEqual(['(marker)']);
  });

  it('truncates the first item when the caller was still hearing it', async () => {
    const s = await ready();
    s.conn.startResponse();
    const first = s.conn.audio(mulaw(8000));
    s.conn.audio(mulaw(4000));
    await s.rec.wait('audio', 15);
    s.leg.interrupted(640);
    expect(await s.conn.waitForType('conversation.item.truncate')).toMatchObject({ item_id: first, audio_end_ms: 640 });
  });

  it('clamps the truncate to the audio received for the item, as an integer the service accepts', async () => {
    const s = await ready();
    s.conn.startResponse();
    const item = s.conn.audio(mulaw(8004)); // 1000.5 ms
    await s.rec.wait('audio', 11);
    s.leg.interrupted(5000.25);
    expect(await s.conn.waitForType('conversation.item.truncate')).toMatchObject({ item_id: item, audio_end_ms: 1000 });
    await settle(s);
    expect(s.conn.truncates[0]?.accepted).toBe(true);
  });

  it('when a new response started while the earlier one still played, cuts the earlier one where the caller stopped hearing it, and the new one at 0', async () => {
    const s = await ready();
    s.conn.startResponse();
    const a = s.conn.audio(mulaw(8000)); // 1000 ms, still playing at the caller
    s.conn.finishResponse();
    s.conn.startResponse();
    const b = s.conn.audio(mulaw(1600)); // 200 ms, queued behind it, never heard
    await s.rec.wait('audio', 12);
    s.leg.interrupted(0, 300); // 300 ms of A's end not heard
    await settle(s);
    expect(s.conn.truncates.map((t) => [t.itemId, t.audioEndMs])).toEqual([
      [a, 700],
      [b, 0],
    ]);
    expect(s.conn.truncates.every((t) => t.accepted)).toBe(true);
  });

  it('when the earlier response played out and the new one was partly heard, cuts only the new one', async () => {
    const s = await ready();
    s.conn.startResponse();
    s.conn.audio(mulaw(800));
    s.conn.finishResponse();
    s.conn.startResponse();
    const b = s.conn.audio(mulaw(4000));
    await s.rec.wait('audio', 6);
    s.leg.interrupted(120, 0);
    await settle(s);
    expect(s.conn.truncates.map((t) => [t.itemId, t.audioEndMs])).toEqual([[b, 120]]);
  });

  it('sends no truncate when nothing was played, or the response has no audio', async () => {
    const s = await ready();
    s.conn.startResponse();
    s.conn.audio(mulaw(800));
    await s.rec.wait('audio');
    s.leg.interrupted(0);
    s.conn.finishResponse();
    s.conn.callTool('end_call'); // a response of its own, without audio
    await s.rec.wait('toolCall');
    s.leg.interrupted(300);
    await settle(s);
    expect(s.conn.frames.filter((f) => f.type === 'conversation.item.truncate')).toEqual([]);
  });
});

describe('OpenAI adapter: transcripts, tools and text', () => {
  it('reports final user and agent transcripts only, never partials', async () => {
    const s = await ready();
    s.conn.userTranscript('I would like to book a table.');
    s.conn.speak(mulaw(800), { transcript: 'Sure, for how many?' });
    await s.rec.wait('responseDone');
    expect(s.rec.of('transcript').map((e) => [e.role, e.text])).toEqual([
      ['user', 'I would like to book a table.'],
      ['agent', 'Sure, for how many?'],
    ]);
  });

  it('turns a function call into toolCall and answers it with function_call_output, then asks for a response once the calling one is done', async () => {
    const s = await ready();
    s.conn.startResponse();
    s.conn.audio(mulaw(800), { transcript: 'Goodbye!' });
    const callId = s.conn.callTool('end_call', { reason: 'caller is done' });
    const call = await s.rec.wait('toolCall');
    expect(call.call).toEqual({ id: callId, name: 'end_call', args: { reason: 'caller is done' } });
    s.leg.toolResult(callId, '{"ok":true}', false);
    const output = await s.conn.waitForType('conversation.item.create');
    expect(output.item).toEqual({ type: 'function_call_output', call_id: callId, output: '{"ok":true}' });
    await settle(s);
    expect(s.conn.responseCreates).toEqual([]); // the calling response is still in progress
    s.conn.finishResponse();
    await s.conn.waitForType('response.create');
    await settle(s);
    expect(s.conn.responseCreates).toHaveLength(1);
    expect(s.conn.refusals).toEqual([]);
  });

  it('reports a tool call once, though both function_call_arguments.done and response.output_item.done carry it', async () => {
    const s = await ready();
    const callId = s.conn.callTool('end_call', { reason: 'done' });
    await s.rec.wait('responseDone');
    await settle(s);
    expect(s.rec.of('toolCall').map((e) => e.call)).toEqual([{ id: callId, name: 'end_call', args: { reason: 'done' } }]);
    expect(s.rec.of('badFrame')).toEqual([]);
  });

  it('reports end_call when function_call_arguments.done lacks name, taking the name from response.output_item.added, once', async () => {
    const s = await ready();
    s.conn.startResponse();
    s.conn.audio(mulaw(800), { transcript: 'Goodbye!' });
    const callId = s.conn.callTool('end_call', { reason: 'caller is done' }, { argumentsDone: 'without_name' });
    s.conn.finishResponse();
    await s.rec.wait('responseDone');
    await settle(s);
    expect(s.rec.of('toolCall').map((e) => e.call)).toEqual([{ id: callId, name: 'end_call', args: { reason: 'caller is done' } }]);
    expect(s.rec.of('badFrame')).toEqual([]);
    // The call is pending: its result is answered and the response asked for once the calling one is done.
    s.leg.toolResult(callId, '{"ok":true}', false);
    await s.conn.waitForType('response.create');
    expect(s.conn.refusals).toEqual([]);
  });

  it('accepts a tool call from a completed response.output_item.done when function_call_arguments.done never comes', async () => {
    const s = await ready();
    const callId = s.conn.callTool('end_call', { reason: 'bye' }, { argumentsDone: 'none' });
    await s.rec.wait('responseDone');
    await settle(s);
    expect(s.rec.of('toolCall').map((e) => e.call)).toEqual([{ id: callId, name: 'end_call', args: { reason: 'bye' } }]);
  });

  it('takes name and call_id remembered from response.output_item.added when function_call_arguments.done has only item_id', async () => {
    const s = await ready();
    const responseId = s.conn.startResponse();
    const item = { id: 'item_fc1', object: 'realtime.item', type: 'function_call', status: 'in_progress', call_id: 'call_fc1', name: 'end_call', arguments: '' };
    s.conn.send({ type: 'response.output_item.added', response_id: responseId, output_index: 0, item });
    s.conn.send({ type: 'response.function_call_arguments.done', response_id: responseId, item_id: 'item_fc1', output_index: 0, arguments: '{}' });
    await s.rec.wait('toolCall');
    s.conn.send({ type: 'response.output_item.done', response_id: responseId, output_index: 0, item: { ...item, status: 'completed', arguments: '{}' } });
    await settle(s);
    expect(s.rec.of('toolCall').map((e) => e.call)).toEqual([{ id: 'call_fc1', name: 'end_call', args: {} }]);
  });

  it('does not report a function call whose response.output_item.done is incomplete (the response was cut)', async () => {
    const s = await ready();
    const responseId = s.conn.startResponse();
    const item = { id: 'item_fc2', object: 'realtime.item', type: 'function_call', status: 'in_progress', call_id: 'call_fc2', name: 'end_call', arguments: '' };
    s.conn.send({ type: 'response.output_item.added', response_id: responseId, output_index: 0, item });
    s.conn.send({ type: 'response.output_item.done', response_id: responseId, output_index: 0, item: { ...item, status: 'incomplete', arguments: '{"rea' } });
    await settle(s);
    expect(s.rec.of('toolCall')).toEqual([]);
  });

  it('counts a function_call_arguments.done with neither a name nor a known item as invalid, and reports no call', async () => {
    const s = await ready();
    s.conn.send({ type: 'response.function_call_arguments.done', response_id: 'resp_x', item_id: 'item_unknown', call_id: 'call_x', arguments: '{}' });
    await settle(s);
    expect(s.rec.of('toolCall')).toEqual([]);
    expect(s.rec.of('badFrame').map((e) => [e.kind, e.name])).toEqual([['invalid_fields', 'response.function_call_arguments.done']]);
  });

  it('holds an owed response.create while a newer response is active, even when the cut one ends after it started', async () => {
    const s = await ready();
    const cut = s.conn.startResponse();
    s.conn.audio(mulaw(800));
    s.conn.send({ type: 'input_audio_buffer.speech_started', audio_start_ms: 10, item_id: 'item_caller' });
    s.conn.send({ type: 'response.created', response: { object: 'realtime.response', id: 'resp_next', status: 'in_progress' } });
    s.conn.send({ type: 'response.done', response: { object: 'realtime.response', id: cut, status: 'cancelled', status_details: { type: 'cancelled', reason: 'turn_detected' } } });
    await settle(s);
    s.leg.sendText('Caller pressed DTMF 1', 'user');
    await settle(s);
    expect(s.conn.responseCreates).toEqual([]);
    s.conn.send({ type: 'response.done', response: { object: 'realtime.response', id: 'resp_next', status: 'completed' } });
    await s.conn.waitForType('response.create');
    expect(s.rec.types().filter((t) => t === 'responseStart' || t === 'responseDone')).toEqual(['responseStart', 'responseStart', 'responseDone']);
  });

  it('gives {} for unparsable tool arguments and reports a failed tool as an error object', async () => {
    const s = await ready();
    const callId = s.conn.callTool('lookup', '{not json');
    const call = await s.rec.wait('toolCall');
    expect(call.call.args).toEqual({});
    await s.rec.wait('responseDone');
    s.leg.toolResult(callId, 'no such booking', true);
    const output = await s.conn.waitForType('conversation.item.create');
    expect(output.item).toMatchObject({ output: '{"error":"no such booking"}' });
    await s.conn.waitForType('response.create');
  });

  it('sends user text as a user item and a response.create, and context as a system item without one', async () => {
    const s = await ready();
    s.leg.sendText('The caller is a returning customer.', 'context');
    s.leg.sendText('Caller pressed DTMF 5', 'user');
    await s.conn.waitForType('response.create');
    await settle(s);
    expect(events(s.conn).slice(1).map((f) => [f.type, f.item])).toEqual([
      ['conversation.item.create', { type: 'message', role: 'system', content: [{ type: 'input_text', text: 'The caller is a returning customer.' }] }],
      ['conversation.item.create', { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'Caller pressed DTMF 5' }] }],
      ['response.create', undefined],
    ]);
    expect(s.conn.refusals).toEqual([]);
  });
});

describe('OpenAI adapter: keep-alive and closing', () => {
  it('keeps the socket while the service answers heartbeat pings, and ends it when pongs stop', async () => {
    vi.useFakeTimers({ toFake: ['setInterval', 'clearInterval'] });
    const s = await ready({}, {}, 1000);
    for (let n = 1; n <= 4; n++) {
      vi.advanceTimersByTime(1000);
      await vi.waitFor(() => expect(s.conn.pings).toBe(n), { interval: 2 });
      await new Promise((r) => setTimeout(r, 10)); // the pong's way back
    }
    expect(s.leg.isOpen).toBe(true);
    expect(s.rec.of('closed')).toEqual([]);
    s.fake.options.answerPings = false;
    for (let n = 0; n < 3 && s.leg.isOpen; n++) {
      vi.advanceTimersByTime(1000);
      await new Promise((r) => setTimeout(r, 10));
    }
    const closed = await s.rec.wait('closed');
    expect(closed.info).toMatchObject({ error: 'heartbeat lost', byUs: false });
  });

  it('reports closed once, by us, when the session closes the leg; sends nothing after', async () => {
    const s = await ready();
    s.leg.close();
    s.leg.close();
    const closed = await s.rec.wait('closed');
    expect(closed.info).toMatchObject({ code: 1000, byUs: true });
    expect((await s.conn.closed).code).toBe(1000);
    expect(s.leg.sendAudio(mulaw(160).toString('base64'))).toBe(false);
    expect(s.rec.of('closed')).toHaveLength(1);
    expect(s.rec.of('error')).toEqual([]);
  });

  it('reports a normal close by the service without an error', async () => {
    const s = await ready();
    s.conn.closeWith(1000, 'bye');
    const closed = await s.rec.wait('closed');
    expect(closed.info).toEqual({ code: 1000, reason: 'bye', byUs: false });
    expect(s.rec.of('error')).toEqual([]);
  });

  it('maps the 60-minute session limit (close 1001) to a transient error, so the session reconnects with the history', async () => {
    const s = await ready({}, { maxSessionMs: 30 });
    const closed = await s.rec.wait('closed');
    expect(closed.info).toMatchObject({ code: 1001, reason: SESSION_MAX_REASON, byUs: false });
    expect(s.rec.of('error').map((e) => e.err)).toEqual([{ kind: 'transient', code: 'session_max_duration', message: expect.stringContaining('1001'), legDone: true }]);
  });

  it('reports a refused connection as closed with the error, never throwing', async () => {
    const fake = await startFake();
    const url = fake.url;
    await fake.close();
    const rec = new Recorder();
    const leg = createOpenAiProvider({ apiKey: FAKE_OPENAI_KEY, url }).connect({ request: REQUEST, events: rec.events, log, heartbeatMs: 0 });
    legs.push(leg);
    const closed = await rec.wait('closed');
    expect(closed.info.byUs).toBe(false);
    expect(closed.info.error).toMatch(/ECONNREFUSED|refused/i);
    expect(rec.of('ready')).toEqual([]);
  });
});

describe('OpenAI adapter: errors', () => {
  it.each([
    [401, 'auth', 'http_401'],
    [403, 'auth', 'http_403'],
    [429, 'capacity', 'http_429'],
    [400, 'fatal', 'http_400'],
    [402, 'fatal', 'http_402'],
    [404, 'fatal', 'http_404'],
    [500, 'transient', 'http_5xx'],
    [503, 'transient', 'http_5xx'],
  ] as const)('classifies an upgrade refused with HTTP %i as %s', async (status, kind, code) => {
    const fake = await startFake({ refuseUpgrade: status });
    const { rec } = connectLeg(fake);
    const closed = await rec.wait('closed');
    expect(closed.info.error).toContain(String(status));
    expect(rec.of('error').map((e) => e.err)).toEqual([{ kind, code, message: expect.stringContaining(String(status)), legDone: true }]);
    expect(fake.refusedUpgrades).toEqual([status]);
  });

  it('classifies an upgrade to a wrong path (HTTP 404) as fatal, naming the URL to check', async () => {
    const fake = await startFake();
    const rec = new Recorder();
    const leg = createOpenAiProvider({ apiKey: FAKE_OPENAI_KEY, url: fake.url.replace('/v1/realtime', '/v1/realtim') }).connect({ request: REQUEST, events: rec.events, log, heartbeatMs: 0 });
    legs.push(leg);
    await rec.wait('closed');
    expect(rec.of('error').map((e) => [e.err.kind, e.err.code, e.err.legDone])).toEqual([['fatal', 'http_404', true]]);
    expect(rec.of('error')[0]?.err.message).toContain('OPENAI_REALTIME_URL');
    expect(fake.refusedUpgrades).toEqual([404]);
  });

  it('classifies a wrong key refused on the upgrade as auth', async () => {
    const fake = await startFake();
    const { rec } = connectLeg(fake, {}, 0, 'sk-wrong');
    await rec.wait('closed');
    expect(rec.of('error').map((e) => [e.err.kind, e.err.code])).toEqual([['auth', 'http_401']]);
    expect(fake.connections).toEqual([]);
  });

  it('classifies a wrong key refused with invalid_api_key and close 3000 as auth, reported once', async () => {
    const fake = await startFake({ badKeyAs: 'close3000' });
    const { rec } = connectLeg(fake, {}, 0, 'sk-wrong');
    const closed = await rec.wait('closed');
    expect(closed.info.code).toBe(3000);
    expect(rec.of('error').map((e) => [e.err.kind, e.err.code, e.err.legDone])).toEqual([['auth', 'invalid_api_key', true]]);
  });

  it('classifies close 4000 (beta client refused) as fatal', async () => {
    const s = await ready();
    s.conn.closeWith(4000, 'invalid_request_error.beta_api_shape_disabled');
    await s.rec.wait('closed');
    expect(s.rec.of('error').map((e) => [e.err.kind, e.err.code, e.err.legDone])).toEqual([['fatal', 'beta_api_shape_disabled', true]]);
  });

  it.each([
    [1008, 'invalid_request_error.invalid_api_key', 'auth', 'invalid_api_key'],
    [1011, 'insufficient_quota: You exceeded your current quota', 'fatal', 'insufficient_quota'],
    [1011, 'Rate_Limit_Exceeded', 'capacity', 'rate_limit_exceeded'],
    [1008, 'invalid_request_error.beta_api_shape_disabled', 'fatal', 'beta_api_shape_disabled'],
    [1011, 'server_error', 'transient', 'server_error'],
    [1000, 'account_deactivated', 'fatal', 'account_deactivated'],
  ] as const)('classifies a close %i whose reason names %s by that code, as %s', async (code, reason, kind, label) => {
    const s = await ready();
    s.conn.closeWith(code, reason);
    await s.rec.wait('closed');
    expect(s.rec.of('error').map((e) => [e.err.kind, e.err.code, e.err.legDone])).toEqual([[kind, label, true]]);
  });

  it('reports no error for a close whose reason names no known code, nor for close 1006 without a reason', async () => {
    const s = await ready();
    s.conn.closeWith(1011, 'something broke: invalid_value_of_something');
    await s.rec.wait('closed');
    const t = await ready();
    t.conn.terminate();
    await t.rec.wait('closed');
    expect([...s.rec.of('error'), ...t.rec.of('error')]).toEqual([]);
  });

  it.each([
    ['invalid_api_key', 'auth', 'invalid_api_key', true],
    ['insufficient_quota', 'fatal', 'insufficient_quota', true],
    ['billing_hard_limit_reached', 'fatal', 'billing_hard_limit_reached', true],
    ['account_deactivated', 'fatal', 'account_deactivated', true],
    ['rate_limit_exceeded', 'capacity', 'rate_limit_exceeded', true],
    ['missing_required_parameter', 'fatal', 'missing_required_parameter', true],
    ['unknown_parameter', 'fatal', 'unknown_parameter', true],
    ['beta_api_shape_disabled', 'fatal', 'beta_api_shape_disabled', true],
    ['server_error', 'transient', 'server_error', false],
    ['conversation_already_has_active_response', 'transient', 'conversation_already_has_active_response', false],
    ['response_cancel_not_active', 'transient', 'response_cancel_not_active', false],
    ['some_new_code', 'transient', 'other', false],
  ] as const)('classifies the error event %s after ready as %s (%s, legDone %s)', async (code, kind, label, legDone) => {
    const s = await ready();
    s.conn.error(code);
    const e = await s.rec.wait('error');
    expect(e.err).toMatchObject({ kind, code: label, legDone });
    expect(e.err.message.length).toBeGreaterThan(0);
  });

  it('treats a truncate the service refused as a warning the call survives', async () => {
    const s = await ready();
    s.conn.error('invalid_value', { param: 'audio_end_ms', message: 'Audio content of 900ms is already shorter than 1000ms' });
    const e = await s.rec.wait('error');
    expect(e.err).toMatchObject({ kind: 'transient', code: 'truncate_rejected', legDone: false });
    expect(s.leg.isOpen).toBe(true);
  });

  it('ends the leg on any error before the config is confirmed (the session cannot start)', async () => {
    const fake = await startFake({ autoConfirm: false });
    const { rec } = connectLeg(fake);
    const conn = await fake.nextConnection();
    await conn.waitForType('session.update');
    conn.error('some_new_code');
    const e = await rec.wait('error');
    expect(e.err).toMatchObject({ kind: 'fatal', code: 'other', legDone: true });
  });

  it.each([
    ['server_error', 'server_error', 'transient', false],
    ['rate_limit_exceeded', 'requests', 'capacity', true],
  ] as const)('classifies a failed response.done with %s as %s', async (code, type, kind, legDone) => {
    const s = await ready();
    s.conn.failResponse(code, type);
    const e = await s.rec.wait('error');
    expect(e.err).toMatchObject({ kind, code, legDone });
  });

  /** `rate_limits.updated` as the service sends it at a response start. */
  const rateLimits = (conn: FakeOpenAiConnection, requests: number, tokens: number): void =>
    conn.send({ type: 'rate_limits.updated', rate_limits: [{ name: 'requests', limit: 1000, remaining: requests, reset_seconds: 0.06 }, { name: 'tokens', limit: 100000, remaining: tokens, reset_seconds: 30 }] });

  it('keeps the call going after one failed response without a recognised code, as a warning', async () => {
    const s = await ready();
    s.conn.failResponse('some_new_code', 'invalid_request_error');
    const e = await s.rec.wait('error');
    expect(e.err).toMatchObject({ kind: 'transient', code: 'other', legDone: false });
    await settle(s);
    expect(s.leg.isOpen).toBe(true);
  });

  it('ends the leg as transient on a second failed response in a row (no successful one between), so the session reconnects or falls back', async () => {
    const s = await ready();
    s.conn.failResponse('some_new_code', 'invalid_request_error');
    await s.rec.wait('error');
    // A failed response without any error object, as jambonz sees them.
    s.conn.startResponse();
    s.conn.send({ type: 'response.done', response: { object: 'realtime.response', id: s.conn.activeResponseId, status: 'failed', status_details: { type: 'failed' }, output: [] } });
    const e = await s.rec.wait('error', 2);
    expect(e.err).toMatchObject({ kind: 'transient', code: 'responses_failed', legDone: true });
    expect(e.err.message).toMatch(/two responses in a row/);
  });

  it('ends the leg as capacity on a second failed response in a row when the last rate_limits.updated showed a limit at 0', async () => {
    const s = await ready();
    s.conn.failResponse('some_new_code', 'invalid_request_error');
    await s.rec.wait('error');
    s.conn.startResponse();
    rateLimits(s.conn, 999, 0);
    s.conn.failResponse('some_new_code', 'invalid_request_error');
    const e = await s.rec.wait('error', 2);
    expect(e.err).toMatchObject({ kind: 'capacity', code: 'rate_limit_reached', legDone: true });
    expect(e.err.message).toContain('tokens');
  });

  it('judges capacity by the last rate_limits.updated only: a limit at 0 since refilled gives transient', async () => {
    const s = await ready();
    rateLimits(s.conn, 0, 0);
    s.conn.failResponse('some_new_code', 'invalid_request_error'); // its response start reports limits refilled
    await s.rec.wait('error');
    s.conn.failResponse('some_new_code', 'invalid_request_error');
    const e = await s.rec.wait('error', 2);
    expect(e.err).toMatchObject({ kind: 'transient', code: 'responses_failed', legDone: true });
  });

  it('keeps the call going when a successful response comes between two failed ones', async () => {
    const s = await ready();
    s.conn.failResponse('some_new_code', 'invalid_request_error');
    await s.rec.wait('error');
    s.conn.speak(mulaw(160));
    await s.rec.wait('responseDone');
    s.conn.failResponse('some_new_code', 'invalid_request_error');
    await s.rec.wait('error', 2);
    await settle(s);
    expect(s.rec.of('error').map((e) => [e.err.kind, e.err.legDone])).toEqual([
      ['transient', false],
      ['transient', false],
    ]);
    expect(s.leg.isOpen).toBe(true);
  });

  it('counts bad frames and unknown event types, and carries on', async () => {
    const s = await ready();
    s.conn.sendRaw(Buffer.from([1, 2, 3]));
    s.conn.sendRaw('not json');
    s.conn.sendRaw('[1,2]');
    s.conn.sendRaw('{"type":"response.output_audio.delta","response_id":"r","item_id":"i","delta":"@@@@"}');
    s.conn.sendRaw('{"type":"response.created","response":{}}');
    s.conn.sendRaw('{"type":"response.brand_new_event"}');
    s.conn.speak(mulaw(160));
    await s.rec.wait('responseDone');
    expect(s.rec.of('badFrame').map((e) => [e.kind, e.name])).toEqual([
      ['binary', undefined],
      ['non_json', undefined],
      ['not_object', undefined],
      ['bad_audio', 'response.output_audio.delta'],
      ['invalid_fields', 'response.created'],
      ['unknown_type', 'response.brand_new_event'],
    ]);
    expect(s.rec.audio()).toHaveLength(160);
    expect(s.leg.isOpen).toBe(true);
  });

  it('labels unknown codes `other` and never lets a code through unbounded', () => {
    const body = { type: 'invalid_request_error', code: 'x'.repeat(300), message: 'm', param: undefined, eventId: undefined };
    expect(classifyOpenAiError(body, true).code).toBe('other');
    expect(classifyOpenAiError({ ...body, code: undefined, type: 'server_error' }, true)).toEqual({ kind: 'transient', code: 'server_error', legDone: false });
    expect(classifyOpenAiError({ ...body, code: undefined, message: "Unknown parameter: 'session.voice'." }, true)).toEqual({ kind: 'fatal', code: 'unknown_parameter', legDone: true });
  });
});

/** A raw client of the fake (the fake's own strictness, without the adapter). */
function rawClient(url: string, headers: Record<string, string> = { Authorization: `Bearer ${FAKE_OPENAI_KEY}` }): Promise<{ ws: WebSocket; got: Array<Record<string, unknown>>; next(type: string): Promise<Record<string, unknown>>; closed: Promise<{ code: number; reason: string }> }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    sockets.push(ws);
    const got: Array<Record<string, unknown>> = [];
    const wakers = new Set<() => void>();
    ws.on('message', (data) => {
      const parsed: unknown = JSON.parse(data.toString());
      got.push(obj(parsed));
      for (const w of [...wakers]) w();
    });
    const closed = new Promise<{ code: number; reason: string }>((r) => ws.once('close', (code, reason) => r({ code, reason: reason.toString() })));
    const next = async (type: string): Promise<Record<string, unknown>> => {
      for (;;) {
        const f = got.find((g) => g.type === type);
        if (f !== undefined) return f;
        await new Promise<void>((r) => {
          const w = (): void => {
            wakers.delete(w);
            r();
          };
          wakers.add(w);
        });
      }
    };
    ws.once('open', () => resolve({ ws, got, next, closed }));
    ws.once('error', reject);
  });
}

describe('fake OpenAI Realtime: strict where the service is', () => {
  it('refuses a session.update without session.type with missing_required_parameter and applies nothing', async () => {
    const fake = await startFake();
    const c = await rawClient(`${fake.url}?model=gpt-realtime`);
    await c.next('session.created');
    c.ws.send(JSON.stringify({ type: 'session.update', event_id: 'evt_1', session: { instructions: 'x', audio: { output: { voice: 'cedar' } } } }));
    const err = await c.next('error');
    expect(err.error).toMatchObject({ type: 'invalid_request_error', code: 'missing_required_parameter', param: 'session.type', event_id: 'evt_1' });
    const conn = fake.connections[0];
    expect(conn?.sessionUpdates).toBe(0);
    expect(conn?.config.instructions).toBe('');
    expect(c.got.some((g) => g.type === 'session.updated')).toBe(false);
  });

  it('refuses a beta-shaped session.update (flat voice and formats) with "Unknown parameter" and applies nothing', async () => {
    const fake = await startFake();
    const c = await rawClient(`${fake.url}?model=gpt-realtime`);
    await c.next('session.created');
    c.ws.send(JSON.stringify({ type: 'session.update', session: { type: 'realtime', voice: 'alloy', input_audio_format: 'g711_ulaw', output_audio_format: 'g711_ulaw', instructions: 'x' } }));
    const err = await c.next('error');
    expect(err.error).toMatchObject({ code: 'unknown_parameter', message: "Unknown parameter: 'session.voice'.", param: 'session.voice' });
    expect(fake.connections[0]?.config.instructions).toBe('');
    expect(fake.connections[0]?.sessionUpdates).toBe(0);
  });

  it('refuses a client sending the OpenAI-Beta header with beta_api_shape_disabled and close 4000', async () => {
    const fake = await startFake();
    const c = await rawClient(`${fake.url}?model=gpt-realtime`, { Authorization: `Bearer ${FAKE_OPENAI_KEY}`, 'OpenAI-Beta': 'realtime=v1' });
    const err = await c.next('error');
    expect(err.error).toMatchObject({ code: 'beta_api_shape_disabled' });
    expect(await c.closed).toEqual({ code: 4000, reason: 'invalid_request_error.beta_api_shape_disabled' });
  });

  it('refuses the upgrade with 401 without the right bearer key', async () => {
    const fake = await startFake({ apiKey: 'sk-right' });
    await expect(rawClient(`${fake.url}?model=gpt-realtime`, { Authorization: 'Bearer sk-wrong' })).rejects.toThrow(/401/);
    await expect(rawClient(`${fake.url}?model=gpt-realtime`, {})).rejects.toThrow(/401/);
    expect(fake.refusedUpgrades).toEqual([401, 401]);
  });

  it('accepts an integer truncate within the item and refuses a fractional or too long one as the service does', async () => {
    const fake = await startFake();
    const c = await rawClient(`${fake.url}?model=gpt-realtime`);
    await c.next('session.created');
    const conn = await fake.nextConnection();
    conn.startResponse();
    const item = conn.audio(Buffer.alloc(8000, 0xff)); // 1000 ms
    conn.finishResponse();
    const send = (ms: number): void => c.ws.send(JSON.stringify({ type: 'conversation.item.truncate', item_id: item, content_index: 0, audio_end_ms: ms }));
    send(12.5);
    send(1001);
    send(1000);
    await c.next('conversation.item.truncated');
    expect(conn.truncates.map((t) => [t.audioEndMs, t.accepted, t.code])).toEqual([
      [12.5, false, 'invalid_type'],
      [1001, false, 'invalid_value'],
      [1000, true, undefined],
    ]);
    const errors = c.got.filter((g) => g.type === 'error').map((g) => obj(g.error).message);
    expect(errors[1]).toBe('Audio content of 1000ms is already shorter than 1001ms');
  });

  it('refuses a function_call_output for a call it never made, and a response.create while a response is active', async () => {
    const fake = await startFake();
    const c = await rawClient(`${fake.url}?model=gpt-realtime`);
    await c.next('session.created');
    const conn = await fake.nextConnection();
    c.ws.send(JSON.stringify({ type: 'conversation.item.create', item: { type: 'function_call_output', call_id: 'call_nope', output: '{}' } }));
    conn.startResponse();
    c.ws.send(JSON.stringify({ type: 'response.create' }));
    await conn.waitFor(() => conn.refusals.length === 2);
    expect(conn.refusals).toEqual(['invalid_value', 'conversation_already_has_active_response']);
  });
});
