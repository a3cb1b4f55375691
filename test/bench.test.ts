/**
 * The benchmark's building blocks: unique frames, the latency histogram, /proc and
 * Prometheus parsers, the local agent's barge-in marker hook, the lean echo agents
 * of each provider against the real adapters, and the simulator's load-test hooks
 * end to end through a real bridge (for every `--agent`).
 */
import { Writable } from 'node:stream';
import pino from 'pino';
import { WebSocket } from 'ws';
import { afterEach, describe, expect, it } from 'vitest';
import { createDeepgramProvider } from '../src/agent/deepgram/provider.js';
import { createElevenLabsProvider } from '../src/agent/elevenlabs/provider.js';
import { createOpenAiProvider } from '../src/agent/openai/provider.js';
import { encodeAudioIn, encodeSetup } from '../src/agent/playai/codec.js';
import { END_CALL_TOOL, type AgentCloseInfo, type AgentError, type AgentEvents, type AgentLeg, type AgentProvider, type AgentRequest } from '../src/agent/port.js';
import type { EchoAgent } from '../src/bench/agents/common.js';
import { startDeepgramEcho } from '../src/bench/agents/deepgram.js';
import { startElevenLabsEcho } from '../src/bench/agents/elevenlabs.js';
import { BENCH_AGENT_INFO, bridgeAgentEnv, type BenchAgent } from '../src/bench/agents/kinds.js';
import { startOpenAiEcho } from '../src/bench/agents/openai.js';
import { createBridge, type Bridge } from '../src/app.js';
import { openDb } from '../src/store/db.js';
import { decodeFrameId, encodeFrame, FRAME_B64_LENGTH, FRAME_BYTES, isMarkerFrame } from '../src/bench/frames.js';
import { parseHostStat, parseProcStat, parseStatusKb, readCpuTicks, readMemoryKb } from '../src/bench/procstat.js';
import { LatencyHistogram, parsePromHistogram, promHistogramQuantile, promValue } from '../src/bench/stats.js';
import { loadConfig } from '../src/config.js';
import { BARGE_IN_MARKER, BARGE_IN_MARKER_B64, LocalAgentServer } from '../src/sim/localAgent.js';
import { placeCall, type FakeTwilioStream } from '../src/sim/twilioSim.js';

describe('bench frames', () => {
  it('encodes call index and sequence in the first 6 bytes and decodes them from 8 base64 characters', () => {
    for (const [call, seq] of [
      [0, 0],
      [1, 2],
      [599, 12_345],
      [65_535, 2 ** 32 - 1],
    ] as const) {
      const b64 = encodeFrame(call, seq);
      expect(b64).toHaveLength(FRAME_B64_LENGTH);
      const bytes = Buffer.from(b64, 'base64');
      expect(bytes).toHaveLength(FRAME_BYTES);
      expect(bytes.readUInt16BE(0)).toBe(call);
      expect(bytes.readUInt32BE(2)).toBe(seq);
      expect(bytes.subarray(6).every((b) => b === 0x7e)).toBe(true);
      expect(decodeFrameId(b64)).toEqual({ call, seq });
      expect(isMarkerFrame(b64)).toBe(false);
    }
    expect(decodeFrameId(Buffer.alloc(160).toString('base64').slice(4))).toBeUndefined();
    expect(decodeFrameId('!'.repeat(FRAME_B64_LENGTH))).toBeUndefined();
  });

  it('marker frames carry the local agent marker at bytes 6-11, i.e. base64 characters 8-15', () => {
    const b64 = encodeFrame(7, 99, true);
    const bytes = Buffer.from(b64, 'base64');
    expect([...bytes.subarray(6, 12)]).toEqual([...BARGE_IN_MARKER]);
    expect(b64.startsWith(BARGE_IN_MARKER_B64, 8)).toBe(true);
    expect(isMarkerFrame(b64)).toBe(true);
    expect(decodeFrameId(b64)).toEqual({ call: 7, seq: 99 });
  });
});

describe('bench stats', () => {
  it('latency histogram: nearest-rank percentiles within its resolution, exact max', () => {
    const h = new LatencyHistogram();
    for (let i = 1; i <= 1000; i++) h.record(i / 10); // 0.1 .. 100 ms
    const s = h.summary();
    expect(s.count).toBe(1000);
    expect(s.p50).toBeCloseTo(50, 1);
    expect(s.p99).toBeCloseTo(99, 0);
    expect(s.max).toBe(100);
    expect(s.mean).toBeCloseTo(50.05, 2);
    const small = new LatencyHistogram();
    small.record(0.123);
    small.record(-1); // clock noise counts as 0
    small.record(250_000); // overflow keeps the max
    expect(small.quantile(0.33)).toBe(0.005);
    expect(small.quantile(0.5)).toBeCloseTo(0.125, 3);
    expect(small.summary().max).toBe(250_000);
  });

  it('reads Prometheus counters and histograms and estimates quantiles like histogram_quantile', () => {
    const text = [
      '# HELP x_seconds help',
      '# TYPE x_seconds histogram',
      'x_seconds_bucket{le="0.001"} 50',
      'x_seconds_bucket{le="0.01"} 100',
      'x_seconds_bucket{le="+Inf"} 100',
      'x_seconds_sum 0.3',
      'x_seconds_count 100',
      'y_total{kind="a"} 3',
      'y_total{kind="b"} 4',
      'y_total_other 9',
    ].join('\n');
    const h = parsePromHistogram(text, 'x_seconds');
    expect(h).toEqual({ count: 100, sum: 0.3, buckets: [{ le: 0.001, count: 50 }, { le: 0.01, count: 100 }, { le: Infinity, count: 100 }] });
    expect(promHistogramQuantile(h!, 0.5)).toBeCloseTo(0.001, 9);
    expect(promHistogramQuantile(h!, 0.99)).toBeCloseTo(0.001 + (0.009 * 49) / 50, 9);
    expect(promValue(text, 'y_total')).toBe(7);
    expect(promValue(text, 'y_total', 'kind="b"')).toBe(4);
    expect(promValue(text, 'z_total')).toBeUndefined();
  });

  it('parses /proc stat and status, including command names with spaces and parentheses', () => {
    expect(parseProcStat('123 (node (x) y) S 1 2 3 4 5 6 7 8 9 10 250 17 0 0 20 0')).toEqual({ utime: 250, stime: 17 });
    expect(parseStatusKb('Name:\tnode\nVmHWM:\t  20000 kB\nVmRSS:\t   12345 kB\n', 'VmRSS')).toBe(12345);
    expect(parseHostStat('cpu  10 1 5 100 2 0 3 4 0 0\ncpu0 1 2 3 4 5 6 7 8 9 10\n')).toEqual({ busy: 19, idle: 102, steal: 4 });
    if (process.platform === 'linux') {
      expect(readCpuTicks(process.pid)).toBeGreaterThanOrEqual(0);
      expect(readMemoryKb(process.pid).rssKb).toBeGreaterThan(1000);
    }
  });
});

// ---------------------------------------------------------------------------

let agent: LocalAgentServer | undefined;
let bridge: Bridge | undefined;
afterEach(async () => {
  await bridge?.app.close();
  await agent?.close();
  bridge = undefined;
  agent = undefined;
});

/** Opens a PlayAI session on the local agent; returns the socket and the frames it receives. */
async function agentSession(url: string): Promise<{ ws: WebSocket; frames: Array<Record<string, unknown>>; waitCount: (n: number) => Promise<void> }> {
  const ws = new WebSocket(`${url}/v1/talk/echo`);
  const frames: Array<Record<string, unknown>> = [];
  const waiters: Array<() => void> = [];
  ws.on('message', (d) => {
    frames.push(JSON.parse(d.toString()) as Record<string, unknown>);
    for (const w of waiters.splice(0)) w();
  });
  await new Promise((resolve, reject) => ws.once('open', resolve).once('error', reject));
  ws.send(encodeSetup({ type: 'setup', inputEncoding: 'mulaw', inputSampleRate: 8000, outputFormat: 'mulaw', outputSampleRate: 8000 }));
  const waitCount = async (n: number): Promise<void> => {
    const deadline = Date.now() + 3000;
    while (frames.length < n) {
      if (Date.now() > deadline) throw new Error(`timed out; frames: ${frames.map((f) => String(f.type)).join(',')}`);
      await new Promise<void>((r) => {
        waiters.push(r);
        setTimeout(r, 50);
      });
    }
  };
  await waitCount(1);
  expect(frames[0]?.type).toBe('init');
  return { ws, frames, waitCount };
}

describe('local agent: barge-in marker (echo mode)', () => {
  it('answers a marker frame with voiceActivityStart + newAudioStream and echoes every other frame', async () => {
    agent = await LocalAgentServer.start({ mode: 'echo', bargeInMarker: true });
    const { ws, frames, waitCount } = await agentSession(agent.url);
    const a = encodeFrame(0, 1);
    const m = encodeFrame(0, 2, true);
    const b = encodeFrame(0, 3);
    ws.send(encodeAudioIn(a));
    ws.send(encodeAudioIn(m));
    ws.send(JSON.stringify({ type: 'audioIn', data: b }));
    await waitCount(5);
    expect(frames.slice(1)).toEqual([
      { type: 'audioStream', data: a },
      { type: 'voiceActivityStart' },
      { type: 'newAudioStream' },
      { type: 'audioStream', data: b },
    ]);
    ws.close();
  });

  it('echoes marker frames like any other without the option', async () => {
    agent = await LocalAgentServer.start({ mode: 'echo' });
    const { ws, frames, waitCount } = await agentSession(agent.url);
    const m = encodeFrame(0, 2, true);
    ws.send(encodeAudioIn(m));
    await waitCount(2);
    expect(frames[1]).toEqual({ type: 'audioStream', data: m });
    ws.close();
  });
});

describe('simulator load hooks through the bridge', () => {
  it('frameSource, onMedia, onClear: every frame echoed once, a marker gives exactly one clear, echoes resume after it', async () => {
    agent = await LocalAgentServer.start({ mode: 'echo', bargeInMarker: true });
    const token = 'bench-test-token';
    const publicUrl = 'https://bench.example.test';
    const config = loadConfig({
      PORT: '0',
      HOST: '127.0.0.1',
      TWILIO_AUTH_TOKEN: token,
      PUBLIC_URL: publicUrl,
      PLAYAI_API_KEY: 'bench',
      PLAYAI_AGENT_ID: 'echo',
      PLAYAI_WS_URL: agent.url,
      MAX_EVENT_LOOP_DELAY_MS: '0',
    });
    bridge = await createBridge(config, pino({ level: 'silent' }, new Writable({ write: (_c, _e, cb) => cb() })), { db: openDb(':memory:') });
    const url = await bridge.app.listen({ port: 0, host: '127.0.0.1' });

    const FRAMES = 75;
    let stream: FakeTwilioStream | undefined;
    let markerSeq = -1;
    let markerAt = 0;
    const sentAt = new Map<number, number>();
    const echoed = new Map<number, number>();
    const clears: number[] = [];
    const r = await placeCall({
      bridgeUrl: url,
      publicUrl,
      authToken: token,
      audio: new Uint8Array(FRAMES * 160),
      trailingMs: 300,
      recordMessages: false,
      recordHeard: false,
      onStream: (s) => (stream = s),
      frameSource: (n, now) => {
        if (markerSeq < 0 && n >= 40 && n < 60 && (stream?.bufferedMs ?? 0) >= 5) {
          markerSeq = n;
          markerAt = now;
          return encodeFrame(3, n, true);
        }
        sentAt.set(n, now);
        return encodeFrame(3, n);
      },
      onMedia: (payload, now) => {
        const id = decodeFrameId(payload);
        expect(id?.call).toBe(3);
        if (id !== undefined) {
          expect(echoed.has(id.seq)).toBe(false);
          echoed.set(id.seq, now);
        }
      },
      onClear: (now) => clears.push(now),
    });
    expect(r.endedBy).toBe('caller');
    expect(r.protocolViolations).toEqual([]);
    expect(markerSeq).toBeGreaterThanOrEqual(40);
    expect(clears).toHaveLength(1);
    expect(clears[0]!).toBeGreaterThan(markerAt);
    expect(r.clears).toBe(1);
    expect(echoed.has(markerSeq)).toBe(false);
    // Every audio frame of the caller's audio came back, before and after the barge-in.
    for (let n = 0; n < FRAMES; n++) {
      if (n === markerSeq) continue;
      expect(echoed.has(n), `frame ${n} echoed`).toBe(true);
      expect(echoed.get(n)!).toBeGreaterThanOrEqual(sentAt.get(n)!);
    }
    // recordHeard: false keeps nothing for heard(): silence only.
    expect(r.heard.every((b) => b === 0xff)).toBe(true);
    expect(r.bytesReceived).toBeGreaterThan(0);
  });
});

describe('bench --import', () => {
  it('generates a contact file whose every number is a distinct valid E.164 number', async () => {
    const { contactsCsv } = await import('../src/bench/importDelay.js');
    const { isE164 } = await import('../src/outbound/phone.js');
    const rows = contactsCsv(25_000).trim().split('\n').slice(1).map((l) => l.split(',')[0] ?? '');
    expect(rows).toHaveLength(25_000);
    expect(new Set(rows).size).toBe(25_000);
    expect(rows.filter((p) => !isE164(p))).toEqual([]);
  });
});

// ---------------------------------------------------------------------------
// Lean echo agents (src/bench/agents/) against the real adapters

type AgentEv =
  | { e: 'ready' }
  | { e: 'audio'; b64: string }
  | { e: 'responseStart' }
  | { e: 'responseDone' }
  | { e: 'callerSpeechStart' }
  | { e: 'error'; err: AgentError }
  | { e: 'badFrame'; kind: string; name: string | undefined }
  | { e: 'closed'; info: AgentCloseInfo }
  | { e: 'other'; what: string };

/** Every event a leg reports, in order; `until` waits (bounded) for one matching `pred`. */
class LegEvents implements AgentEvents {
  readonly log: AgentEv[] = [];
  readonly #waiters = new Set<() => void>();

  ready(): void {
    this.#push({ e: 'ready' });
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
  transcript(): void {
    this.#push({ e: 'other', what: 'transcript' });
  }
  toolCall(): void {
    this.#push({ e: 'other', what: 'toolCall' });
  }
  hangup(): void {
    this.#push({ e: 'other', what: 'hangup' });
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

  #push(ev: AgentEv): void {
    this.log.push(ev);
    for (const w of [...this.#waiters]) w();
  }

  /** Resolves with the index of the first event from `from` on matching `pred`. */
  until(pred: (ev: AgentEv) => boolean, from = 0, timeoutMs = 3000): Promise<number> {
    const find = (): number => this.log.findIndex((ev, i) => i >= from && pred(ev));
    const now = find();
    if (now >= 0) return Promise.resolve(now);
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const i = find();
        if (i < 0) return;
        clearTimeout(timer);
        this.#waiters.delete(check);
        resolve(i);
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(check);
        reject(new Error(`timed out; events: ${this.log.map((e) => e.e).join(',')}`));
      }, timeoutMs);
      this.#waiters.add(check);
    });
  }
}

const LEG_REQUEST: AgentRequest = {
  id: 'bench-echo',
  tools: [END_CALL_TOOL],
  call: { callSid: 'CA00000000000000000000000000000001', from: '+15550001111', to: '+15550002222', direction: 'inbound' },
};
const quietLog = pino({ level: 'silent' });

let echo: EchoAgent | undefined;
let leg: AgentLeg | undefined;
afterEach(async () => {
  leg?.close();
  leg = undefined;
  await echo?.close();
  echo = undefined;
});

/** Connects `provider` and waits for `ready`. */
async function openLeg(provider: AgentProvider, request: AgentRequest = LEG_REQUEST): Promise<LegEvents> {
  const ev = new LegEvents();
  leg = provider.connect({ request, events: ev, log: quietLog, heartbeatMs: 0 });
  await ev.until((e) => e.e === 'ready' || e.e === 'closed');
  expect(ev.log.filter((e) => e.e === 'error' || e.e === 'closed' || e.e === 'badFrame')).toEqual([]);
  return ev;
}

/** Sends `b64` the way the session does (the bytes path) and returns the events it caused once `pred` holds. */
async function sendAndWait(ev: LegEvents, b64: string, pred: (e: AgentEv) => boolean): Promise<AgentEv[]> {
  const from = ev.log.length;
  const buf = Buffer.from(b64, 'latin1');
  expect(leg?.sendAudioBytes(buf, 0, buf.length)).toBe(true);
  const at = await ev.until(pred, from);
  return ev.log.slice(from, at + 1);
}

const isAudio = (b64: string) => (e: AgentEv): boolean => e.e === 'audio' && e.b64 === b64;

/**
 * The bench's contract with every passthrough echo agent: a frame comes back byte-exact as the
 * start of a response; a marker frame is not echoed but reported as the caller starting to speak;
 * the next frame opens a new response and comes back byte-exact again.
 */
async function checkEchoAndBargeIn(ev: LegEvents): Promise<void> {
  const a = encodeFrame(0, 1);
  expect(await sendAndWait(ev, a, isAudio(a))).toEqual([{ e: 'responseStart' }, { e: 'audio', b64: a }]);
  const b = encodeFrame(0, 2);
  expect(await sendAndWait(ev, b, isAudio(b))).toEqual([{ e: 'audio', b64: b }]);
  const from = ev.log.length;
  const barge = await sendAndWait(ev, encodeFrame(0, 3, true), (e) => e.e === 'callerSpeechStart');
  expect(barge.filter((e) => e.e === 'audio')).toEqual([]);
  const c = encodeFrame(0, 4);
  await sendAndWait(ev, c, isAudio(c));
  // The new response starts with the barge-in (Deepgram: AgentStartedSpeaking right after UserStartedSpeaking) or with the next echo.
  expect(ev.log.slice(from).filter((e) => e.e !== 'responseDone')).toEqual([{ e: 'callerSpeechStart' }, { e: 'responseStart' }, { e: 'audio', b64: c }]);
  expect(ev.log.filter((e) => e.e === 'error' || e.e === 'badFrame' || e.e === 'closed')).toEqual([]);
}

describe('lean echo agents with the real adapters', () => {
  it('OpenAI: session.created -> session.update -> session.updated, echoes inside a response, a marker gives speech_started and a new response, a truncate is accepted', async () => {
    echo = await startOpenAiEcho({ apiKey: 'k-bench' });
    const ev = await openLeg(createOpenAiProvider({ apiKey: 'k-bench', url: echo.url }), { ...LEG_REQUEST, id: 'gpt-realtime' });
    await checkEchoAndBargeIn(ev);
    const barge = await sendAndWait(ev, encodeFrame(1, 2, true), (e) => e.e === 'callerSpeechStart');
    expect(barge).toEqual([{ e: 'callerSpeechStart' }]);
    // What the session does on barge-in: truncate the cut item at what was heard (20 ms were sent).
    leg?.interrupted(10);
    const c = encodeFrame(1, 3);
    expect(await sendAndWait(ev, c, isAudio(c))).toEqual([{ e: 'responseStart' }, { e: 'audio', b64: c }]);
    expect(ev.log.filter((e) => e.e === 'error' || e.e === 'badFrame' || e.e === 'closed')).toEqual([]);
  });

  it('OpenAI: refuses an upgrade without the key with 401, as the service does', async () => {
    echo = await startOpenAiEcho({ apiKey: 'k-bench' });
    const ev = new LegEvents();
    leg = createOpenAiProvider({ apiKey: 'wrong', url: echo.url }).connect({ request: LEG_REQUEST, events: ev, log: quietLog, heartbeatMs: 0 });
    await ev.until((e) => e.e === 'closed');
    expect(ev.log.find((e) => e.e === 'error')).toMatchObject({ err: { kind: 'auth' } });
  });

  it('ElevenLabs (ulaw_8000): client data -> metadata, echoes as audio events, a marker gives an interruption and the next echo a new event id', async () => {
    echo = await startElevenLabsEcho({ pingIntervalMs: 0 });
    const ev = await openLeg(createElevenLabsProvider({ url: echo.url }));
    await checkEchoAndBargeIn(ev);
  });

  it('ElevenLabs: its pings are answered by the adapter and do not disturb the echo', async () => {
    echo = await startElevenLabsEcho({ pingIntervalMs: 20 });
    const ev = await openLeg(createElevenLabsProvider({ url: echo.url }));
    await new Promise((r) => setTimeout(r, 100));
    await checkEchoAndBargeIn(ev);
  });

  it('ElevenLabs (pcm_16000): the adapter converts both ways and the converted echo comes back as mu-law', async () => {
    echo = await startElevenLabsEcho({ format: 'pcm_16000', pingIntervalMs: 0 });
    const ev = await openLeg(createElevenLabsProvider({ url: echo.url }));
    // A 1 kHz tone, 10 frames: the converters hold a few ms back, the rest returns as 8 kHz mu-law.
    const { mulawEncode } = await import('../src/audio/mulaw.js');
    const pcm = new Int16Array(1600);
    for (let i = 0; i < pcm.length; i++) pcm[i] = Math.round(8000 * Math.sin((2 * Math.PI * 1000 * i) / 8000));
    const mu = Buffer.from(mulawEncode(pcm));
    let got = 0;
    for (let f = 0; f < 10; f++) {
      const b64 = mu.subarray(f * 160, (f + 1) * 160).toString('base64');
      const from = ev.log.length;
      const buf = Buffer.from(b64, 'latin1');
      leg?.sendAudioBytes(buf, 0, buf.length);
      if (f >= 1) {
        const at = await ev.until((e) => e.e === 'audio', from);
        const e = ev.log[at];
        if (e?.e === 'audio') got += Buffer.from(e.b64, 'base64').length;
      }
    }
    expect(got).toBeGreaterThan(1000);
    expect(got).toBeLessThanOrEqual(1600);
    expect(ev.log.filter((e) => e.e === 'error' || e.e === 'badFrame' || e.e === 'closed')).toEqual([]);
  });

  it('Deepgram: Welcome -> Settings -> SettingsApplied, binary echoes after AgentStartedSpeaking, a marker gives UserStartedSpeaking then AgentStartedSpeaking', async () => {
    echo = await startDeepgramEcho({ apiKey: 'dg-bench' });
    const ev = await openLeg(createDeepgramProvider({ apiKey: 'dg-bench', url: echo.url, keepAliveMs: 0 }));
    await checkEchoAndBargeIn(ev);
  });

  it('Deepgram: audio before Settings is refused with NON_SETTINGS_MESSAGE_BEFORE_SETTINGS, as the service does', async () => {
    echo = await startDeepgramEcho();
    const ws = new WebSocket(echo.url, { headers: { Authorization: 'Token x' } });
    const got: string[] = [];
    const closed = new Promise<number>((r) => ws.on('close', (code) => r(code)));
    ws.on('message', (d, isBinary) => {
      if (!isBinary) got.push(d.toString());
      if (got.length === 1) ws.send(Buffer.alloc(160, 0xff));
    });
    expect(await closed).toBe(1008);
    expect(JSON.parse(got[0] ?? '{}')).toMatchObject({ type: 'Welcome' });
    expect(JSON.parse(got[1] ?? '{}')).toMatchObject({ type: 'Error', code: 'NON_SETTINGS_MESSAGE_BEFORE_SETTINGS' });
  });
});

describe('bench agents through the bridge (the environment npm run bench gives it)', () => {
  const starters: Record<Exclude<BenchAgent, 'playai' | 'elevenlabs-pcm16'>, () => Promise<EchoAgent>> = {
    // A setup time, as a real service has: the echo of the audio held meanwhile stays queued at the caller, so a marker can be sent.
    openai: () => startOpenAiEcho({ apiKey: 'bench', readyDelayMs: 80 }),
    elevenlabs: () => startElevenLabsEcho({ readyDelayMs: 80 }),
    deepgram: () => startDeepgramEcho({ apiKey: 'bench', readyDelayMs: 80 }),
  };
  for (const name of ['openai', 'elevenlabs', 'deepgram'] as const) {
    it(`${name}: every frame echoed once and byte-exact, a marker gives exactly one clear, echoes resume after it`, async () => {
      expect(BENCH_AGENT_INFO[name]).toMatchObject({ provider: name, transcodes: false, match: 'id', bargeIn: true });
      echo = await starters[name]();
      const token = 'bench-test-token';
      const publicUrl = 'https://bench.example.test';
      const config = loadConfig({
        PORT: '0',
        HOST: '127.0.0.1',
        TWILIO_AUTH_TOKEN: token,
        PUBLIC_URL: publicUrl,
        MAX_EVENT_LOOP_DELAY_MS: '0',
        ...bridgeAgentEnv(name, echo.url, 'bench'),
      });
      expect(config.agents.defaultAgent.startsWith(`${name}:`)).toBe(true);
      bridge = await createBridge(config, pino({ level: 'silent' }, new Writable({ write: (_c, _e, cb) => cb() })), { db: openDb(':memory:') });
      const url = await bridge.app.listen({ port: 0, host: '127.0.0.1' });
      const FRAMES = 40;
      let stream: FakeTwilioStream | undefined;
      let markerSeq = -1;
      const echoed = new Set<number>();
      let foreign = 0;
      let duplicates = 0;
      const r = await placeCall({
        bridgeUrl: url,
        publicUrl,
        authToken: token,
        audio: new Uint8Array(FRAMES * 160),
        trailingMs: 300,
        recordMessages: false,
        recordHeard: false,
        onStream: (s) => (stream = s),
        frameSource: (n) => {
          if (markerSeq < 0 && n >= 20 && n < 35 && (stream?.bufferedMs ?? 0) >= 5) {
            markerSeq = n;
            return encodeFrame(5, n, true);
          }
          return encodeFrame(5, n);
        },
        onMedia: (payload) => {
          const id = decodeFrameId(payload);
          if (id?.call !== 5) foreign++;
          else if (echoed.has(id.seq)) duplicates++;
          else echoed.add(id.seq);
        },
      });
      expect(r.endedBy).toBe('caller');
      expect(r.protocolViolations).toEqual([]);
      expect(markerSeq).toBeGreaterThanOrEqual(20);
      expect(r.clears).toBe(1);
      expect({ foreign, duplicates }).toEqual({ foreign: 0, duplicates: 0 });
      const missing = Array.from({ length: FRAMES }, (_, n) => n).filter((n) => n !== markerSeq && !echoed.has(n));
      expect(missing).toEqual([]);
      expect(echoed.has(markerSeq)).toBe(false);
    });
  }
});

describe('bench transcoding run through the bridge (--agent elevenlabs-pcm16)', () => {
  it('caller audio goes to the agent as PCM16 16 kHz and comes back converted: every byte returns but what is in flight at hang-up, no clear', async () => {
    expect(BENCH_AGENT_INFO['elevenlabs-pcm16']).toMatchObject({ provider: 'elevenlabs', transcodes: true, match: 'arrival', bargeIn: false });
    echo = await startElevenLabsEcho({ format: 'pcm_16000', pingIntervalMs: 0 });
    const token = 'bench-test-token';
    const publicUrl = 'https://bench.example.test';
    const config = loadConfig({
      PORT: '0',
      HOST: '127.0.0.1',
      TWILIO_AUTH_TOKEN: token,
      PUBLIC_URL: publicUrl,
      MAX_EVENT_LOOP_DELAY_MS: '0',
      ...bridgeAgentEnv('elevenlabs-pcm16', echo.url, 'bench'),
    });
    bridge = await createBridge(config, pino({ level: 'silent' }, new Writable({ write: (_c, _e, cb) => cb() })), { db: openDb(':memory:') });
    const url = await bridge.app.listen({ port: 0, host: '127.0.0.1' });
    let sent = 0;
    let received = 0;
    let exact = 0;
    const r = await placeCall({
      bridgeUrl: url,
      publicUrl,
      authToken: token,
      audio: new Uint8Array(30 * 160),
      trailingMs: 200,
      recordMessages: false,
      recordHeard: false,
      frameSource: (n) => {
        sent = n + 1;
        return encodeFrame(6, n);
      },
      onMedia: (payload) => {
        received += Buffer.from(payload, 'base64').length;
        const id = decodeFrameId(payload);
        if (id !== undefined && encodeFrame(id.call, id.seq) === payload) exact++;
      },
    });
    expect(r.endedBy).toBe('caller');
    expect(r.protocolViolations).toEqual([]);
    expect(r.clears).toBe(0);
    // Converted audio is not byte-exact: the bench counts it by arrival (loadgen --match arrival).
    expect(exact).toBe(0);
    const shortfall = sent * 160 - received;
    expect(shortfall).toBeGreaterThanOrEqual(0);
    // What the two converters hold back plus what was in flight when the caller hung up: well under 200 ms of audio.
    expect(shortfall).toBeLessThan(1600);
  });
});
