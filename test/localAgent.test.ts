import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { encodeAudioIn, encodeSetup, type AgentSetup } from '../src/agent/playai/codec.js';
import { silence, speechLikeSignal } from '../src/audio/signal.js';
import { LocalAgentServer, type LocalAgentOptions } from '../src/sim/localAgent.js';

type Frame = Record<string, unknown>;

const SETUP: AgentSetup = {
  type: 'setup',
  apiKey: 'test-key',
  inputEncoding: 'mulaw',
  inputSampleRate: 8000,
  outputFormat: 'mulaw',
  outputSampleRate: 8000,
};

/** A short greeting (300 ms of tone) so tests do not wait for the real one. */
const SHORT_GREETING = speechLikeSignal({ durationMs: 300, talkMs: 300, pauseMs: 0, seed: 9 });

/** A minimal PlayAI client: records every server frame and can wait for one. */
class Client {
  readonly frames: Frame[] = [];
  readonly closed: Promise<{ code: number; reason: string }>;
  private listeners: Array<() => void> = [];

  constructor(readonly ws: WebSocket) {
    ws.on('message', (data, isBinary) => {
      if (isBinary) throw new Error('agent sent a binary frame');
      this.frames.push(JSON.parse(data.toString()) as Frame);
      for (const l of [...this.listeners]) l();
    });
    this.closed = new Promise((resolve) => ws.once('close', (code, reason) => resolve({ code, reason: reason.toString() })));
  }

  send(text: string | Buffer): void {
    this.ws.send(text);
  }

  /** First frame at or after index `from` matching `pred`. */
  waitFor(pred: (f: Frame) => boolean, from = 0, timeoutMs = 3000): Promise<{ frame: Frame; index: number }> {
    return new Promise((resolve, reject) => {
      const check = (): boolean => {
        const index = this.frames.findIndex((f, i) => i >= from && pred(f));
        if (index < 0) return false;
        cleanup();
        resolve({ frame: this.frames[index] as Frame, index });
        return true;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new Error(`timed out; frames: ${this.frames.map((f) => String(f.type)).join(',')}`));
      }, timeoutMs);
      const cleanup = (): void => {
        clearTimeout(timer);
        this.listeners = this.listeners.filter((l) => l !== listener);
      };
      const listener = (): void => void check();
      if (!check()) this.listeners.push(listener);
    });
  }

  waitType(type: string, from = 0, timeoutMs = 3000): Promise<{ frame: Frame; index: number }> {
    return this.waitFor((f) => f.type === type, from, timeoutMs);
  }

  types(from = 0, to = this.frames.length): string[] {
    return this.frames.slice(from, to).map((f) => String(f.type));
  }

  /** Sends mu-law audio as 20 ms `audioIn` frames, as fast as possible. */
  sendAudio(ulaw: Uint8Array): void {
    for (let i = 0; i < ulaw.length; i += 160) this.send(encodeAudioIn(Buffer.from(ulaw.subarray(i, i + 160)).toString('base64')));
  }

  /** Concatenated audio of the `audioStream` frames in [from, to). */
  audioBetween(from: number, to: number): Buffer {
    return Buffer.concat(
      this.frames.slice(from, to).filter((f) => f.type === 'audioStream').map((f) => Buffer.from(String(f.data), 'base64')),
    );
  }
}

const servers: LocalAgentServer[] = [];
const clients: Client[] = [];

afterEach(async () => {
  for (const c of clients.splice(0)) c.ws.terminate();
  await Promise.all(servers.splice(0).map((s) => s.close()));
});

async function startAgent(opts: LocalAgentOptions = {}): Promise<LocalAgentServer> {
  const server = await LocalAgentServer.start(opts);
  servers.push(server);
  return server;
}

function connect(server: LocalAgentServer, path = '/v1/talk/agent-1'): Promise<Client> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(server.url + path);
    const client = new Client(ws);
    clients.push(client);
    ws.once('open', () => resolve(client));
    ws.once('error', reject);
  });
}

async function session(server: LocalAgentServer, setup: Partial<AgentSetup> | Frame = {}): Promise<{ client: Client; init: Frame }> {
  const client = await connect(server);
  client.send(JSON.stringify({ ...SETUP, ...setup }));
  const { frame } = await client.waitType('init');
  return { client, init: frame };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('local agent: session setup', () => {
  it('answers a valid setup with init carrying a new conversationId', async () => {
    const server = await startAgent({ greetingAudio: SHORT_GREETING });
    expect(server.url).toBe(`ws://127.0.0.1:${server.port}`);
    const client = await connect(server);
    client.send(encodeSetup(SETUP));
    const { frame, index } = await client.waitType('init');
    expect(index).toBe(0);
    expect(frame.agentOwnerId).toBe('local');
    expect(frame.conversationId).toMatch(/^[A-Za-z0-9_-]{20}$/);
    expect(server.activeConnections).toBe(1);
  });

  it('rejects a first frame that is not setup with a fatal 4400 and closes', async () => {
    const server = await startAgent();
    for (const first of [encodeAudioIn(''), 'not json', JSON.stringify([1])]) {
      const client = await connect(server);
      client.send(first);
      const { frame } = await client.waitType('error');
      expect(frame).toMatchObject({ code: 4400, isFatal: true });
      expect(typeof frame.message).toBe('string');
      expect((await client.closed).code).toBe(1008);
    }
  });

  it('rejects unsupported audio formats with a fatal 4400', async () => {
    const server = await startAgent();
    const client = await connect(server);
    client.send(JSON.stringify({ ...SETUP, outputFormat: 'mp3', outputSampleRate: 44100 }));
    const { frame } = await client.waitType('error');
    expect(frame).toMatchObject({ code: 4400, isFatal: true });
    expect(client.types()).not.toContain('init');
    await client.closed;
  });

  it('rejects a wrong apiKey with a fatal 4401 when a key is configured', async () => {
    const server = await startAgent({ apiKey: 'right' });
    const bad = await connect(server);
    bad.send(encodeSetup({ ...SETUP, apiKey: 'wrong' }));
    expect((await bad.waitType('error')).frame).toMatchObject({ code: 4401, isFatal: true });
    await bad.closed;
    const good = await connect(server);
    good.send(encodeSetup({ ...SETUP, apiKey: 'right' }));
    await good.waitType('init');
  });

  it('refuses upgrades on other paths with 404', async () => {
    const server = await startAgent();
    const status = await new Promise<number | undefined>((resolve) => {
      const ws = new WebSocket(`${server.url}/v1/agents/x/start-conversation`);
      ws.once('unexpected-response', (_req, res) => {
        resolve(res.statusCode);
        ws.terminate();
      });
      ws.once('error', () => resolve(undefined));
    });
    expect(status).toBe(404);
  });

  it('reuses the conversationId on continueConversation and skips the greeting', async () => {
    const server = await startAgent({ greetingAudio: SHORT_GREETING });
    const first = await session(server);
    await first.client.waitType('newAudioStream');
    const id = String(first.init.conversationId);
    first.client.ws.close();
    await first.client.closed;

    const again = await session(server, { continueConversation: id });
    expect(again.init.conversationId).toBe(id);
    await sleep(150);
    expect(again.client.types()).toEqual(['init']);

    const unknown = await session(server, { continueConversation: 'not-issued-here' });
    expect(unknown.init.conversationId).not.toBe('not-issued-here');
    await unknown.client.waitType('newAudioStream');
  });
});

describe('local agent: echo-test mode', () => {
  it('greets with newAudioStream, the greeting transcript and paced 100 ms chunks of the greeting asset', async () => {
    const asset = readFileSync(new URL('../assets/greeting.ulaw', import.meta.url));
    const server = await startAgent();
    const { client } = await session(server, { customGreeting: 'Hi there' });
    const start = Date.now();
    const { index } = await client.waitFor((f) => f.type === 'audioStream', 0);
    expect(client.types(0, index + 1)).toEqual(['init', 'newAudioStream', 'onAgentTranscript', 'audioStream']);
    expect(client.frames[2]).toMatchObject({ message: 'Hi there' });
    // Wait for 4 chunks: the first comes at once, then one per 50 ms.
    await client.waitFor((f) => f.type === 'audioStream', index + 3);
    expect(Date.now() - start).toBeGreaterThanOrEqual(120);
    const audio = client.audioBetween(index, index + 4);
    expect(audio.length).toBe(3200);
    expect(audio.equals(asset.subarray(0, 3200))).toBe(true);
    expect(client.types()).not.toContain('audioStreamEnd');
  });

  it('uses a default greeting text and ends the greeting with audioStreamEnd', async () => {
    const server = await startAgent({ greetingAudio: SHORT_GREETING });
    const { client } = await session(server);
    const { index: end } = await client.waitType('audioStreamEnd');
    expect(client.types(0, end + 1)).toEqual(['init', 'newAudioStream', 'onAgentTranscript', 'audioStream', 'audioStream', 'audioStream', 'audioStreamEnd']);
    expect(String(client.frames[2]?.message)).toMatch(/echo test/i);
    expect(client.audioBetween(0, end).equals(Buffer.from(SHORT_GREETING))).toBe(true);
  });

  it('plays the caller audio back after speech ends, with VAD events and a user transcript', async () => {
    const server = await startAgent({ greetingAudio: SHORT_GREETING });
    const { client } = await session(server);
    const { index: greetEnd } = await client.waitType('audioStreamEnd');

    const speech = speechLikeSignal({ durationMs: 1000, talkMs: 1000, pauseMs: 0, seed: 5 });
    const sent = Buffer.concat([silence(300), speech, silence(900)]);
    client.sendAudio(sent);
    client.send(encodeAudioIn('')); // mute keep-alive: ignored

    const { index: end } = await client.waitType('audioStreamEnd', greetEnd + 1);
    const turn = client.types(greetEnd + 1, end + 1);
    const firstAudio = turn.indexOf('audioStream');
    expect(turn.slice(0, firstAudio)).toEqual(['voiceActivityStart', 'voiceActivityEnd', 'onUserTranscript', 'newAudioStream']);
    expect(turn.slice(-2)).toEqual(['onAgentTranscript', 'audioStreamEnd']);
    expect(turn.slice(firstAudio, -2).every((t) => t === 'audioStream')).toBe(true);

    const reply = client.audioBetween(greetEnd + 1, end);
    // The recording starts near the speech onset (up to 40 ms of lead-in, up to the VAD's
    // onset latency late) and keeps ~100 ms after the last voiced frame.
    const onset = sent.indexOf(reply.subarray(320, 640)) - 320;
    expect(onset).toBeGreaterThanOrEqual(2400 - 320);
    expect(onset).toBeLessThanOrEqual(2400 + 480);
    expect(reply.equals(sent.subarray(onset, onset + reply.length))).toBe(true);
    const speechEnd = 2400 + speech.length;
    expect(onset + reply.length).toBeGreaterThanOrEqual(speechEnd);
    expect(onset + reply.length).toBeLessThanOrEqual(speechEnd + 1000);
    const transcript = client.frames.find((f) => f.type === 'onUserTranscript');
    expect(transcript?.message).toBe(`(${(reply.length / 8000).toFixed(1)} seconds of audio)`);
  });

  it('caps a recording at 15 seconds', async () => {
    const server = await startAgent({ greetingAudio: SHORT_GREETING });
    const { client } = await session(server);
    client.sendAudio(Buffer.concat([speechLikeSignal({ durationMs: 16_000, talkMs: 16_000, pauseMs: 0 }), silence(800)]));
    const { frame } = await client.waitType('onUserTranscript');
    expect(frame.message).toBe('(15.0 seconds of audio)');
  });

  it('stops the reply and sends onAgentInterrupted when the caller talks over it', async () => {
    const longGreeting = speechLikeSignal({ durationMs: 3000, talkMs: 3000, pauseMs: 0, seed: 2 });
    const server = await startAgent({ greetingAudio: longGreeting });
    const { client } = await session(server);
    await client.waitType('audioStream');
    client.sendAudio(speechLikeSignal({ durationMs: 200, seed: 4 }));
    const { index: vas } = await client.waitType('voiceActivityStart');
    expect(client.frames[vas + 1]?.type).toBe('onAgentInterrupted');
    const count = client.frames.length;
    await sleep(200);
    expect(client.types(count)).toEqual([]);
    expect(client.types()).not.toContain('audioStreamEnd');
    expect(client.audioBetween(0, count).length).toBeLessThan(longGreeting.length);
  });

  it('reports bad audioIn and binary frames with a non-fatal 4400 and keeps going', async () => {
    const server = await startAgent({ greetingAudio: SHORT_GREETING });
    const { client } = await session(server);
    client.send(JSON.stringify({ type: 'audioIn', data: 'not*base64' }));
    expect((await client.waitType('error')).frame).toMatchObject({ code: 4400, isFatal: false });
    client.send(Buffer.from([1, 2, 3]));
    await client.waitFor((f) => f.type === 'error' && f.isFatal === false, client.frames.findIndex((f) => f.type === 'error') + 1);
    client.send(JSON.stringify({ type: 'bufferEmpty' }));
    await client.waitType('audioStreamEnd');
    expect(client.ws.readyState).toBe(WebSocket.OPEN);
  });
});

describe('local agent: echo mode', () => {
  it('answers every audioIn at once with the same data and sends no greeting', async () => {
    const server = await startAgent({ mode: 'echo' });
    const { client } = await session(server);
    const audio = speechLikeSignal({ durationMs: 60, seed: 11 });
    client.send(encodeAudioIn(''));
    const payloads: string[] = [];
    for (let i = 0; i < audio.length; i += 160) payloads.push(Buffer.from(audio.subarray(i, i + 160)).toString('base64'));
    client.send(JSON.stringify({ type: 'audioIn', data: payloads[0] })); // generic JSON path
    for (const p of payloads.slice(1)) client.send(encodeAudioIn(p)); // fast path
    await client.waitFor(() => client.frames.length >= 1 + payloads.length);
    expect(client.frames.slice(1)).toEqual(payloads.map((data) => ({ type: 'audioStream', data })));
    await sleep(50);
    expect(client.frames).toHaveLength(1 + payloads.length);
  });
});

describe('local agent: lifecycle', () => {
  it('hangs up with endedBy agent after #hangup-after and closes the socket', async () => {
    const server = await startAgent({ greetingAudio: speechLikeSignal({ durationMs: 3000, seed: 3 }) });
    const started = Date.now();
    const { client } = await session(server, { prompt: 'be brief #hangup-after:150 thanks' });
    const { index } = await client.waitType('hangup');
    expect(Date.now() - started).toBeGreaterThanOrEqual(140);
    expect(client.frames[index]).toEqual({ type: 'hangup', endedBy: 'agent' });
    expect((await client.closed).code).toBe(1000);
    expect(index).toBe(client.frames.length - 1);
    await sleep(20);
    expect(server.activeConnections).toBe(0);
  });

  it('close() terminates every socket and leaves no connections or timers', async () => {
    const timersBefore = process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const server = await startAgent();
    const sessions = await Promise.all([session(server), session(server, { prompt: '#hangup-after:60000' }), session(server)]);
    await Promise.all(sessions.map((s) => s.client.waitType('audioStream')));
    expect(server.activeConnections).toBe(3);
    await server.close();
    expect(server.activeConnections).toBe(0);
    await Promise.all(sessions.map((s) => s.client.closed));
    expect(process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length).toBeLessThanOrEqual(timersBefore);
    await expect(connect(server)).rejects.toThrow();
  });
});
