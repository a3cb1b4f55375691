/**
 * The same end-to-end cases against every agent provider, through the whole
 * bridge: Twilio simulator → webhook → media stream → call session → adapter →
 * the provider's protocol-faithful fake. Each driver below speaks its fake's
 * language; the cases only use the driver.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { BridgeOverrides } from '../src/app.js';
import { FakeTwilioStream, newCallSid, postVoiceWebhook } from '../src/sim/twilioSim.js';
import { FakeDeepgramServer } from '../src/testing/agents/deepgram.js';
import { FakeElevenLabsServer, type FakeElevenLabsConnection } from '../src/testing/agents/elevenlabs.js';
import { FAKE_OPENAI_KEY, FakeOpenAiServer, type FakeOpenAiConnection } from '../src/testing/agents/openai.js';
import type { FakeAgentConnection } from '../src/testing/fakeAgent.js';
import { verifyWebhookSignature } from '../src/outbound/webhooks.js';
import type { TransferCarrier } from '../src/transfer/coordinator.js';
import { AUTH_TOKEN, eventually, startTestBridge, storedCall, type TestBridge } from './helpers.js';

/** One agent session on a provider's fake, as the cases need it. */
interface Conn {
  /** Resolves once the session has been set up the way the provider wants (the agent is ready). */
  ready(): Promise<void>;
  /** Caller audio the agent received, decoded. */
  audioIn(): Buffer;
  /** One whole agent response (audio in 20 ms chunks), with its transcript. */
  speak(audio: Buffer, transcript?: string): void;
  /** A response that starts and keeps going (not finished). */
  beginSpeaking(audio: Buffer): void;
  /** The caller starts speaking: the provider's barge-in signal, then audio of the cut response still in flight. */
  callerSpeaks(): void;
  /** The caller's words, final. */
  userSays(text: string): void;
  /** The agent says goodbye and calls end_call. */
  goodbyeAndEndCall(audio: Buffer): void;
  /** The connection drops without a goodbye. */
  drop(): void;
  /** What this session was told of the conversation before it (resume by id, or history as text). */
  resumedWith(): string;
  /** Text the agent received as the caller's words (keypad digits go this way). */
  userTexts(): string[];
  /** The agent calls a tool (undefined: the provider has no tools); returns the call's id. */
  callTool?(name: string, args: Record<string, unknown>): string;
  /** Tool results the agent received. */
  toolResults?(): Array<{ id: string; content: string; isError?: boolean }>;
}

const str = (v: unknown): string => (typeof v === 'string' ? v : '');
/** The text of an OpenAI `conversation.item.create` from the user. */
function openaiUserText(f: Record<string, unknown>): string | undefined {
  if (f.type !== 'conversation.item.create') return undefined;
  const item = f.item;
  if (typeof item !== 'object' || item === null || !('role' in item) || item.role !== 'user' || !('content' in item) || !Array.isArray(item.content)) return undefined;
  const part: unknown = item.content[0];
  return typeof part === 'object' && part !== null && 'text' in part ? str(part.text) : undefined;
}

interface Driver {
  name: string;
  /** The agent calls go to, as `provider:id`. */
  agent: string;
  env(): Record<string, string>;
  start(): Promise<void>;
  overrides(): BridgeOverrides;
  next(tb: TestBridge): Promise<Conn>;
  /** The next sessions are refused for capacity (true) or accepted again (false). */
  refuseForCapacity(tb: TestBridge, on: boolean): void;
  /** Bytes of the cut response that the fake sends after the barge-in signal. */
  lateBytes: number;
  close(): Promise<void>;
  /** OpenAI only: `audio_end_ms` of the truncates the agent received. */
  truncates?(conn: Conn): number[];
}

const tone = (bytes: number, fill: number): Buffer => Buffer.alloc(bytes, fill);

function playaiDriver(): Driver {
  const conns = new WeakMap<Conn, FakeAgentConnection>();
  return {
    name: 'playai',
    agent: 'playai:agent-default',
    lateBytes: 480,
    env: () => ({}),
    start: async () => {},
    overrides: () => ({}),
    async next(tb) {
      const c = await tb.agent.nextConnection();
      const conn: Conn = {
        async ready() {
          await c.waitForSetup();
          c.init();
        },
        audioIn: () => Buffer.concat(c.audioIn.map((d) => Buffer.from(d, 'base64'))),
        speak(audio, transcript) {
          c.newAudioStream();
          for (let at = 0; at < audio.length; at += 160) c.audio(audio.subarray(at, at + 160).toString('base64'));
          c.send({ type: 'audioStreamEnd' });
          if (transcript !== undefined) c.transcript('agent', transcript);
        },
        beginSpeaking(audio) {
          c.newAudioStream();
          for (let at = 0; at < audio.length; at += 160) c.audio(audio.subarray(at, at + 160).toString('base64'));
        },
        callerSpeaks() {
          c.voiceActivityStart();
          c.audio(tone(480, 0x22).toString('base64'));
        },
        userSays: (text) => c.transcript('user', text),
        goodbyeAndEndCall(audio) {
          // The PlayAI protocol has no tools: the agent's own hangup is its end of call.
          c.newAudioStream();
          for (let at = 0; at < audio.length; at += 160) c.audio(audio.subarray(at, at + 160).toString('base64'));
          c.hangup();
        },
        drop: () => c.terminate(),
        resumedWith: () => String(c.setup?.continueConversation ?? ''),
        userTexts: () => c.frames.filter((f) => f.type === 'customInput').map((f) => str(f.data)),
      };
      conns.set(conn, c);
      return conn;
    },
    refuseForCapacity(tb, on) {
      if (on) tb.agent.options.rejectWith = { code: 4429, message: 'maximum concurrent connections exceeded' };
      else delete tb.agent.options.rejectWith;
    },
    close: async () => {},
  };
}

function openaiDriver(): Driver {
  let server: FakeOpenAiServer | undefined;
  const conns = new WeakMap<Conn, FakeOpenAiConnection>();
  return {
    name: 'openai',
    agent: 'openai:gpt-realtime',
    // The fake sends 3 late deltas of 20 ms of the cut response.
    lateBytes: 480,
    env: () => ({ OPENAI_API_KEY: FAKE_OPENAI_KEY, DEFAULT_AGENT: 'openai:gpt-realtime' }),
    async start() {
      server = await FakeOpenAiServer.start();
    },
    overrides: () => ({ agentUrls: { openaiUrl: server?.url ?? '' } }),
    async next() {
      if (server === undefined) throw new Error('not started');
      const c = await server.nextConnection();
      const conn: Conn = {
        async ready() {
          await c.waitForType('session.update');
        },
        audioIn: () => Buffer.concat(c.audioIn),
        speak: (audio, transcript) => void c.speak(audio, { chunkMs: 20, ...(transcript !== undefined ? { transcript } : {}) }),
        beginSpeaking(audio) {
          c.startResponse();
          c.audio(audio, { chunkMs: 20 });
        },
        callerSpeaks: () => c.callerSpeaks({ lateDeltas: 3 }),
        userSays: (text) => c.userTranscript(text),
        goodbyeAndEndCall(audio) {
          c.startResponse();
          c.audio(audio, { chunkMs: 20, transcript: 'Goodbye!' });
          c.callTool('end_call', { reason: 'caller is done' });
          c.finishResponse();
        },
        drop: () => c.terminate(),
        resumedWith: () => JSON.stringify(c.items),
        userTexts: () => c.frames.map(openaiUserText).filter((t): t is string => t !== undefined),
        callTool: (name, args) => c.callTool(name, args),
        toolResults: () =>
          c.frames.flatMap((f) => {
            const item = f.type === 'conversation.item.create' ? f.item : undefined;
            if (typeof item !== 'object' || item === null || !('type' in item) || item.type !== 'function_call_output') return [];
            return [{ id: 'call_id' in item ? str(item.call_id) : '', content: 'output' in item ? str(item.output) : '' }];
          }),
      };
      conns.set(conn, c);
      return conn;
    },
    refuseForCapacity(_tb, on) {
      server?.refuseUpgrade(on ? 429 : undefined);
    },
    close: async () => server?.close(),
    truncates: (conn) => (conns.get(conn)?.truncates ?? []).map((t) => Number(t.audioEndMs)),
  };
}

function elevenlabsDriver(): Driver {
  let server: FakeElevenLabsServer | undefined;
  return {
    name: 'elevenlabs',
    agent: 'elevenlabs:agent_e2e',
    lateBytes: 480,
    env: () => ({ DEFAULT_AGENT: 'elevenlabs:agent_e2e' }),
    async start() {
      server = await FakeElevenLabsServer.start();
    },
    overrides: () => ({ agentUrls: { elevenlabsUrl: server?.url ?? '' } }),
    async next() {
      if (server === undefined) throw new Error('not started');
      const c: FakeElevenLabsConnection = await server.nextConnection();
      let lastEvent = 0;
      return {
        async ready() {
          await c.waitForInitiation();
        },
        audioIn: () => c.audioBytes(),
        speak(audio, transcript) {
          lastEvent = c.speak(audio, { chunkBytes: 160 });
          if (transcript !== undefined) c.agentResponse(transcript, lastEvent);
        },
        beginSpeaking(audio) {
          lastEvent = c.speak(audio, { chunkBytes: 160 });
        },
        callerSpeaks() {
          c.interrupt(lastEvent);
          // Audio of the interrupted response that was already in flight.
          c.speak(tone(480, 0x22), { eventId: lastEvent, chunkBytes: 160 });
        },
        userSays: (text) => c.userTranscript(text),
        goodbyeAndEndCall(audio) {
          lastEvent = c.speak(audio, { chunkBytes: 160 });
          c.callTool('end_call', { reason: 'caller is done' });
        },
        drop: () => c.terminate(),
        resumedWith: () => c.contextualUpdates.join('\n'),
        userTexts: () => [...c.userMessages],
        callTool: (name, args) => c.callTool(name, args),
        toolResults: () => c.toolResults.map((r) => ({ id: r.toolCallId, content: r.result, isError: r.isError })),
      };
    },
    refuseForCapacity(_tb, on) {
      if (server === undefined) return;
      if (on) server.options.upgradeStatus = 429;
      else delete server.options.upgradeStatus;
    },
    close: async () => server?.close(),
  };
}

const DEEPGRAM_KEY = 'fake-deepgram-key-0123456789';

function deepgramDriver(): Driver {
  let server: FakeDeepgramServer | undefined;
  return {
    name: 'deepgram',
    agent: 'deepgram:support',
    lateBytes: 480,
    env: () => ({ DEEPGRAM_API_KEY: DEEPGRAM_KEY, DEFAULT_AGENT: 'deepgram:support' }),
    async start() {
      server = await FakeDeepgramServer.start({ apiKey: DEEPGRAM_KEY });
    },
    overrides: () => ({ agentUrls: { deepgramUrl: server?.url ?? '' } }),
    async next() {
      if (server === undefined) throw new Error('not started');
      const c = await server.nextConnection();
      return {
        async ready() {
          await c.waitForSettings();
        },
        audioIn: () => Buffer.concat(c.audioChunks),
        speak: (audio, transcript) => c.speak(audio, { chunkMs: 20, ...(transcript !== undefined ? { text: transcript } : {}) }),
        beginSpeaking(audio) {
          c.startSpeaking();
          for (let at = 0; at < audio.length; at += 160) c.sendBinary(audio.subarray(at, at + 160));
        },
        callerSpeaks: () => c.userSpeaks({ lateAudio: tone(480, 0x22) }),
        userSays: (text) => c.userText(text),
        goodbyeAndEndCall(audio) {
          c.startSpeaking();
          for (let at = 0; at < audio.length; at += 160) c.sendBinary(audio.subarray(at, at + 160));
          c.callFunction('end_call', { reason: 'caller is done' });
          c.audioDone();
        },
        drop: () => c.terminate(),
        resumedWith: () => JSON.stringify(c.settings ?? {}),
        userTexts: () => c.frames.filter((f) => f.type === 'InjectUserMessage').map((f) => str(f.content)),
        callTool: (name, args) => c.callFunction(name, args, { clientSide: true }),
        toolResults: () => c.functionCallResponses.map((r) => ({ id: r.id, content: r.content })),
      };
    },
    refuseForCapacity(_tb, on) {
      if (server === undefined) return;
      if (on) server.options.maxConnections = 0;
      else delete server.options.maxConnections;
    },
    close: async () => server?.close(),
  };
}

const DRIVERS: Array<() => Driver> = [playaiDriver, openaiDriver, elevenlabsDriver, deepgramDriver];

let tb: TestBridge | undefined;
let driver: Driver | undefined;
afterEach(async () => {
  await tb?.close();
  await driver?.close();
  tb = undefined;
  driver = undefined;
});

async function start(make: () => Driver, env: Record<string, string> = {}, extra: BridgeOverrides = {}): Promise<{ tb: TestBridge; d: Driver }> {
  driver = make();
  await driver.start();
  tb = await startTestBridge({ env: { AGENT_HEARTBEAT_MS: '0', ...driver.env(), ...env }, overrides: { ...driver.overrides(), probeAgents: false, ...extra } });
  return { tb, d: driver };
}

/** The carrier side of a transfer as the session sees it: a redirect ends the stream, as Twilio does. */
function recordingTransferCarrier(): TransferCarrier & { redirects: Array<{ callSid: string; twiml: string }>; stream?: FakeTwilioStream } {
  const c: TransferCarrier & { redirects: Array<{ callSid: string; twiml: string }>; stream?: FakeTwilioStream } = {
    redirects: [],
    async redirect(callSid, twiml) {
      c.redirects.push({ callSid, twiml });
      const s = c.stream;
      if (s !== undefined) setTimeout(() => s.sendStop(), 5);
      return true;
    },
    async createCall() {
      return undefined;
    },
    async hangup() {
      return true;
    },
  };
  return c;
}

interface Call {
  stream: FakeTwilioStream;
  callSid: string;
  /** Caller audio played at the moment of each `clear` (ms since the first agent audio). */
  playedAtClear: number[];
}

/** Webhook → stream → start; the agent session is not waited for. */
async function dial(t: TestBridge): Promise<Call> {
  const callSid = newCallSid();
  const hook = await postVoiceWebhook({ bridgeUrl: t.url, publicUrl: t.config.publicUrl, authToken: AUTH_TOKEN, params: { CallSid: callSid } });
  const streamUrl = hook.twiml?.streamUrl;
  if (streamUrl === undefined) throw new Error(`call not admitted: ${hook.status} ${hook.body}`);
  const playedAtClear: number[] = [];
  let stream: FakeTwilioStream | undefined;
  stream = await FakeTwilioStream.connect({
    bridgeUrl: t.url,
    streamUrl,
    authToken: AUTH_TOKEN,
    onClear: () => {
      const s = stream;
      if (s !== undefined) playedAtClear.push(s.bytesReceived / 8 - s.bufferedMs);
    },
  });
  stream.sendConnected();
  stream.sendStart({ callSid, customParameters: hook.twiml?.parameters ?? {} });
  return { stream, callSid, playedAtClear };
}

const received = (s: FakeTwilioStream): Buffer => Buffer.concat(s.mediaPayloads.map((p) => Buffer.from(p, 'base64')));
const eventTypes = async (t: TestBridge, callSid: string): Promise<string[]> => (await storedCall(t, callSid))?.events.map((e) => e.type) ?? [];

describe.each(DRIVERS.map((make) => [make().name, make] as const))('%s through the bridge', (_name, make) => {
  it('echo: caller audio reaches the agent and agent audio reaches the caller, byte for byte', async () => {
    const { tb: t, d } = await start(make);
    const call = await dial(t);
    const conn = await d.next(t);
    await conn.ready();
    const frames = Array.from({ length: 10 }, (_, i) => Buffer.alloc(160, 0x10 + i));
    for (const f of frames) call.stream.sendMedia(f.toString('base64'));
    await eventually(() => conn.audioIn().length >= 1600, 3000, 'caller audio at the agent');
    expect(conn.audioIn().subarray(0, 1600).equals(Buffer.concat(frames))).toBe(true);
    const reply = Buffer.concat(Array.from({ length: 10 }, (_, i) => Buffer.alloc(160, 0x40 + i)));
    conn.speak(reply);
    await call.stream.waitFor((s) => s.bytesReceived >= reply.length);
    expect(received(call.stream).equals(reply)).toBe(true);
    call.stream.sendStop();
  });

  it('nothing lost at start: caller audio sent before the agent is ready arrives in order after', async () => {
    const { tb: t, d } = await start(make);
    const call = await dial(t);
    const frames = Array.from({ length: 25 }, (_, i) => {
      const b = Buffer.alloc(160, 0x7f);
      b.writeUInt16BE(i, 0);
      return b;
    });
    for (const f of frames) call.stream.sendMedia(f.toString('base64'));
    const conn = await d.next(t);
    await conn.ready();
    await eventually(() => conn.audioIn().length >= 25 * 160, 3000, 'the buffered caller audio');
    expect(conn.audioIn().subarray(0, 25 * 160).equals(Buffer.concat(frames))).toBe(true);
    call.stream.sendStop();
  });

  it('barge-in: Twilio gets clear, no late audio of the cut response reaches the caller, the next response plays', async () => {
    const { tb: t, d } = await start(make);
    const call = await dial(t);
    const conn = await d.next(t);
    await conn.ready();
    const long = tone(16_000, 0x11); // 2 s
    conn.beginSpeaking(long);
    await call.stream.waitFor((s) => s.bytesReceived >= long.length);
    await new Promise((r) => setTimeout(r, 300));
    conn.callerSpeaks();
    await call.stream.waitFor((s) => s.clears === 1);
    // Audio of the cut response still in flight is dropped at the bridge.
    await new Promise((r) => setTimeout(r, 150));
    expect(call.stream.bytesReceived).toBe(long.length);
    const next = tone(800, 0x33);
    conn.speak(next);
    await call.stream.waitFor((s) => s.bytesReceived >= long.length + next.length);
    expect(received(call.stream).subarray(long.length).equals(next)).toBe(true);
    expect(received(call.stream).includes(0x22)).toBe(false);
    if (d.truncates !== undefined) {
      // OpenAI: the transcript is cut where the caller stopped hearing, within one 20 ms frame.
      await eventually(() => (d.truncates?.(conn).length ?? 0) === 1, 2000, 'the truncate');
      const [endMs] = d.truncates(conn);
      const [played] = call.playedAtClear;
      expect(played).toBeGreaterThan(200);
      expect(Math.abs((endMs ?? 0) - (played ?? 0))).toBeLessThanOrEqual(20);
    }
    call.stream.sendStop();
  });

  it('async transcripts: final user and agent turns are stored on the call record', async () => {
    const { tb: t, d } = await start(make);
    const call = await dial(t);
    const conn = await d.next(t);
    await conn.ready();
    conn.userSays('I would like to book a table');
    conn.speak(tone(320, 0x44), 'Sure, for how many people?');
    await eventually(async () => ((await storedCall(t, call.callSid))?.transcript.length ?? 0) >= 2, 3000, 'two transcript turns');
    expect((await storedCall(t, call.callSid))?.transcript).toEqual([
      { role: 'user', text: 'I would like to book a table' },
      { role: 'agent', text: 'Sure, for how many people?' },
    ]);
    call.stream.sendStop();
  });

  it('capacity refusal: the caller hears the busy prompt and admissions to this provider are capped', async () => {
    const { tb: t, d } = await start(make);
    d.refuseForCapacity(t, true);
    const call = await dial(t);
    await eventually(() => t.callControl.spoken.length === 1, 5000, 'the busy prompt');
    expect(t.callControl.spoken[0]?.text).toBe(t.config.messages.busy);
    await call.stream.waitForClose();
    expect((await storedCall(t, call.callSid))?.endReason).toBe('agent_capacity');
    expect(t.bridge.manager.capacityFor(d.agent.split(':')[0] as 'playai')).toBe(0);
  });

  it('capacity refusal with a fallback: the call goes to the next agent at once and the record shows both', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'playline-agents-'));
    const file = join(dir, 'agents.json');
    const named = make().agent;
    const ref = named.startsWith('playai:') ? 'playai:primary' : named;
    writeFileSync(file, JSON.stringify({ [ref]: { fallback: ['playai:backup'] } }));
    const { tb: t, d } = await start(make, { AGENTS_FILE: file, ...(ref.startsWith('playai:') ? { PLAYAI_AGENT_ID: 'primary', DEFAULT_AGENT: 'playai:primary' } : {}) });
    if (ref.startsWith('playai:')) {
      // The same PlayAI-protocol server refuses the primary only.
      const call = await dial(t);
      const first = await t.agent.nextConnection();
      await first.waitForSetup();
      first.error(4429, 'maximum concurrent connections exceeded', true);
      first.close(1008, 'capacity');
      const backup = await t.agent.nextConnection();
      expect(backup.agentId).toBe('backup');
      await backup.waitForSetup();
      backup.init();
      backup.audio(tone(160, 0x55).toString('base64'));
      await call.stream.waitFor((s) => s.bytesReceived >= 160);
      expect(await eventTypes(t, call.callSid)).toContain('agent_switched');
      call.stream.sendStop();
      return;
    }
    d.refuseForCapacity(t, true);
    const call = await dial(t);
    const backup = await t.agent.nextConnection();
    expect(backup.agentId).toBe('backup');
    await backup.waitForSetup();
    backup.init();
    backup.audio(tone(160, 0x55).toString('base64'));
    await call.stream.waitFor((s) => s.bytesReceived >= 160);
    expect(t.callControl.spoken).toHaveLength(0);
    const switched = (await storedCall(t, call.callSid))?.events.find((e) => e.type === 'agent_switched');
    expect(switched?.data).toMatchObject({ from: ref, to: 'playai:backup' });
    call.stream.sendStop();
  });

  it('reconnect: a dropped agent session is replaced and resumes the conversation, caller audio kept meanwhile', async () => {
    const { tb: t, d } = await start(make);
    const call = await dial(t);
    const conn = await d.next(t);
    await conn.ready();
    conn.userSays('My order number is 4512');
    conn.speak(tone(160, 0x44), 'Thanks, let me look it up.');
    await eventually(async () => ((await storedCall(t, call.callSid))?.transcript.length ?? 0) >= 2, 3000, 'the transcript so far');
    conn.drop();
    const again = await d.next(t);
    await again.ready();
    // PlayAI resumes by conversation id; the others get the conversation so far as text.
    await eventually(() => (d.name === 'playai' ? again.resumedWith() !== '' : again.resumedWith().includes('4512')), 3000, 'the resumed conversation');
    call.stream.sendMedia(tone(160, 0x66).toString('base64'));
    await eventually(() => again.audioIn().includes(0x66), 3000, 'caller audio at the new session');
    await eventually(async () => (await eventTypes(t, call.callSid)).includes('agent_reconnected'), 3000, 'the reconnect on the record');
    expect(t.callControl.spoken).toHaveLength(0);
    call.stream.sendStop();
  });

  it('end_call: the agent says goodbye and the call ends once the goodbye has played', async () => {
    const { tb: t, d } = await start(make);
    const call = await dial(t);
    const conn = await d.next(t);
    await conn.ready();
    const goodbye = tone(4000, 0x77); // 500 ms
    const t0 = Date.now();
    conn.goodbyeAndEndCall(goodbye);
    await call.stream.waitForClose(5000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(400);
    expect(call.stream.bytesReceived).toBe(goodbye.length);
    expect((await storedCall(t, call.callSid))?.endReason).toBe('agent_hangup');
    expect(t.callControl.spoken).toHaveLength(0);
  });

  it('async keypad: "1234#" reaches the agent as one text message where the protocol takes text, and the record keeps the digits', async () => {
    const { tb: t, d } = await start(make, { DTMF_GATHER_MS: '400' });
    const call = await dial(t);
    const conn = await d.next(t);
    await conn.ready();
    for (const digit of '1234#') call.stream.sendDtmf(digit);
    // A pause ends a run too: "7" then silence.
    call.stream.sendDtmf('7');
    const gathered = async () => (await storedCall(t, call.callSid))?.events.filter((e) => e.type === 'dtmf_digits') ?? [];
    await eventually(async () => (await gathered()).length >= 2, 3000, 'both runs of digits on the record');
    const runs = (await gathered()).map((e) => e.data);
    const delivery = d.name === 'playai' ? 'not_supported' : 'sent';
    expect(runs).toEqual([
      { digits: '1234#', ended: 'terminator', delivery },
      { digits: '7', ended: 'pause', delivery },
    ]);
    expect((await storedCall(t, call.callSid))?.events.filter((e) => e.type === 'dtmf')).toHaveLength(6);
    if (d.name === 'playai') {
      // The PlayAI protocol takes no caller text (customInput's meaning is undocumented): nothing is sent.
      expect(conn.userTexts()).toEqual([]);
    } else {
      await eventually(() => conn.userTexts().length >= 2, 3000, 'the digits at the agent');
      expect(conn.userTexts()).toEqual(['The caller typed "1234#" on the phone keypad.', 'The caller typed "7" on the phone keypad.']);
    }
    call.stream.sendStop();
  });

  it('async keypad: digits typed before the agent is ready are sent once it is', async () => {
    const { tb: t, d } = await start(make);
    const call = await dial(t);
    call.stream.sendDtmf('5');
    call.stream.sendDtmf('#');
    const conn = await d.next(t);
    await conn.ready();
    await eventually(async () => ((await storedCall(t, call.callSid))?.events.some((e) => e.type === 'dtmf_digits') ?? false), 3000, 'the digits on the record');
    if (d.name === 'playai') expect(conn.userTexts()).toEqual([]);
    else await eventually(() => conn.userTexts().includes('The caller typed "5#" on the phone keypad.'), 3000, 'the digits at the agent');
    call.stream.sendStop();
  });

  it('operator tool: the call is POSTed, signed, to the operator URL and the answer goes back to the agent; a failing one comes back as a tool error', async () => {
    const hits: Array<{ body: string; signature: string | undefined }> = [];
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const sig = req.headers['playline-signature'];
        hits.push({ body: Buffer.concat(chunks).toString('utf8'), signature: typeof sig === 'string' ? sig : undefined });
        if (req.url === '/lookup') res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"shipped","eta":"Tuesday"}');
        else res.writeHead(500).end();
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    try {
      const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
      const probe = make();
      const dir = mkdtempSync(join(tmpdir(), 'playline-tools-'));
      const agentsFile = join(dir, 'agents.json');
      writeFileSync(
        agentsFile,
        JSON.stringify({
          [probe.agent]: {
            tools: [
              { name: 'lookup_order', description: 'Look an order up', parameters: { type: 'object', properties: { order: { type: 'string' } } }, url: `${base}/lookup` },
              { name: 'broken', description: 'Always fails', url: `${base}/broken` },
            ],
          },
        }),
      );
      const { tb: t, d } = await start(make, { AGENTS_FILE: agentsFile, WEBHOOK_SECRET: 'tool-secret-0123456789' });
      const call = await dial(t);
      const conn = await d.next(t);
      await conn.ready();
      if (conn.callTool === undefined || conn.toolResults === undefined) {
        // PlayAI-protocol agents have no tools.
        expect(d.name).toBe('playai');
        call.stream.sendStop();
        return;
      }
      const id = conn.callTool('lookup_order', { order: '4512' });
      await eventually(() => (conn.toolResults?.() ?? []).some((r) => r.id === id), 3000, 'the tool result at the agent');
      expect(conn.toolResults().find((r) => r.id === id)?.content).toBe('{"status":"shipped","eta":"Tuesday"}');
      const sent = JSON.parse(hits[0]?.body ?? '{}') as Record<string, unknown>;
      const rec = await storedCall(t, call.callSid);
      expect(sent).toMatchObject({ callId: rec?.id, tool: 'lookup_order', arguments: { order: '4512' } });
      expect(verifyWebhookSignature('tool-secret-0123456789', hits[0]?.signature, hits[0]?.body ?? '')).toBe(true);

      const bad = conn.callTool('broken', {});
      await eventually(() => (conn.toolResults?.() ?? []).some((r) => r.id === bad), 3000, 'the failed tool result at the agent');
      const failed = conn.toolResults().find((r) => r.id === bad);
      expect(failed?.content).toMatch(/HTTP 500/);
      if (failed?.isError !== undefined) expect(failed.isError).toBe(true);
      // The call goes on, and the record has both calls with their outcome (no arguments).
      const events = (await storedCall(t, call.callSid))?.events ?? [];
      expect(events.filter((e) => e.type === 'tool_called').map((e) => e.data?.tool)).toEqual(['lookup_order', 'broken']);
      expect(events.filter((e) => e.type === 'tool_result').map((e) => [e.data?.tool, e.data?.ok, e.data?.status])).toEqual([
        ['lookup_order', true, 200],
        ['broken', false, 500],
      ]);
      expect(call.stream.closed).toBe(false);
      call.stream.sendStop();
    } finally {
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    }
  });

  it('transfer_call: the agent hands the caller to a named person after its words played; a name that is not declared is refused and the agent is told the names', async () => {
    const carrier = recordingTransferCarrier();
    const probe = make();
    const dir = mkdtempSync(join(tmpdir(), 'playline-xfer-'));
    const agentsFile = join(dir, 'agents.json');
    writeFileSync(agentsFile, JSON.stringify({ [probe.agent]: { transferTargets: { frontdesk: '+14155550100' } } }));
    const { tb: t, d } = await start(make, { AGENTS_FILE: agentsFile }, { transferCarrier: carrier });
    const call = await dial(t);
    carrier.stream = call.stream;
    const conn = await d.next(t);
    await conn.ready();
    if (conn.callTool === undefined || conn.toolResults === undefined) {
      expect(d.name).toBe('playai'); // PlayAI-protocol agents have no tools: API and hotkeys only
      call.stream.sendStop();
      return;
    }
    const bad = conn.callTool('transfer_call', { target: '+15550000000' });
    await eventually(() => (conn.toolResults?.() ?? []).some((r) => r.id === bad), 3000, 'the refusal at the agent');
    expect(conn.toolResults().find((r) => r.id === bad)?.content).toMatch(/no transfer target named .*use one of \\?"frontdesk\\?"/);
    expect(carrier.redirects).toHaveLength(0);
    const words = tone(1600, 0x5a); // 200 ms: "I'll put you through."
    conn.speak(words);
    conn.callTool('transfer_call', { target: 'frontdesk', reason: 'asked for a person' });
    await eventually(() => carrier.redirects.length === 1, 5000, 'the transfer');
    // The announcement reached the caller before the carrier was asked.
    expect(call.stream.bytesReceived).toBe(words.length);
    expect(carrier.redirects[0]?.twiml).toContain('>+14155550100</Number>');
    await call.stream.waitForClose(3000);
    const events = (await storedCall(t, call.callSid))?.events ?? [];
    expect(events.find((e) => e.type === 'transfer_requested')?.data).toMatchObject({ by: 'tool', target: 'frontdesk', mode: 'cold' });
    expect(t.bridge.manager.usedSlots).toBe(1);
  });

  it('barge-in during an earlier response still playing: the earlier one is cut where the caller stopped hearing it, the queued one at 0', async () => {
    const { tb: t, d } = await start(make);
    if (d.truncates === undefined) return; // only OpenAI keeps a transcript to truncate
    const call = await dial(t);
    const conn = await d.next(t);
    await conn.ready();
    const a = tone(8000, 0x11); // 1 s, a whole response
    conn.speak(a);
    await call.stream.waitFor((s) => s.bytesReceived >= a.length);
    const b = tone(1600, 0x12); // 200 ms, a second whole response queued behind a
    conn.speak(b);
    await call.stream.waitFor((s) => s.bytesReceived >= a.length + b.length);
    await new Promise((r) => setTimeout(r, 250));
    conn.callerSpeaks();
    await call.stream.waitFor((s) => s.clears === 1);
    await eventually(() => (d.truncates?.(conn).length ?? 0) === 2, 2000, 'both truncates');
    const [aEnd, bEnd] = d.truncates(conn);
    const [played] = call.playedAtClear;
    expect(played).toBeLessThan(1000);
    expect(Math.abs((aEnd ?? 0) - (played ?? 0))).toBeLessThanOrEqual(20);
    expect(bEnd).toBe(0);
    call.stream.sendStop();
  });
});

