/**
 * `npm run call` driven in-process (`run(args, io)`) against real in-process bridges:
 * local mode (built-in local agent with a short greeting) and the test bridge with a
 * fake agent that never speaks. Also the simulator's wait-for-the-greeting option.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { createBridge, type Bridge } from '../src/app.js';
import { silence, speechLikeSignal } from '../src/audio/signal.js';
import { run } from '../src/cli/call.js';
import { loadConfig } from '../src/config.js';
import { LocalAgentServer } from '../src/sim/localAgent.js';
import { placeCall, type FakeTwilioStream } from '../src/sim/twilioSim.js';
import { openDb } from '../src/store/db.js';
import { memIo, tempDir } from './cliIo.js';
import { AUTH_TOKEN, PUBLIC_URL, startTestBridge, type TestBridge } from './helpers.js';

const GREETING_MS = 800;
const quiet = pino({ level: 'silent' }, new Writable({ write: (_c, _e, cb) => cb() }));

let bridge: Bridge | undefined;
let agent: LocalAgentServer | undefined;
let testBridge: TestBridge | undefined;
afterEach(async () => {
  await bridge?.app.close();
  await agent?.close();
  await testBridge?.close();
  bridge = undefined;
  agent = undefined;
  testBridge = undefined;
});

/** A local-mode bridge whose agent greets with GREETING_MS of speech; returns its URL. */
async function startLocal(): Promise<string> {
  const config = loadConfig({ PORT: '0', HOST: '127.0.0.1', MAX_EVENT_LOOP_DELAY_MS: '0' });
  agent = await LocalAgentServer.start({ greetingAudio: speechLikeSignal({ durationMs: GREETING_MS, talkMs: GREETING_MS, pauseMs: 0 }) });
  bridge = await createBridge(config, quiet, { agentBaseUrl: agent.url, db: openDb(':memory:') });
  return bridge.app.listen({ port: 0, host: '127.0.0.1' });
}

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const srv = createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const address = srv.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  await new Promise<void>((r) => srv.close(() => r()));
  return port;
}

const SILENT_FRAME = Buffer.alloc(160, 0xff).toString('base64');
const audible = (b: Uint8Array): number => b.reduce((n, x) => n + (x !== 0xff && x !== 0x7f ? 1 : 0), 0);

/** Records every caller frame (its media timestamp and payload) as the simulator sends it. */
function recordCallerFrames(frames: Array<{ ts: number; payload: string }>): (s: FakeTwilioStream) => void {
  return (s) => {
    const send = s.sendMedia.bind(s);
    s.sendMedia = (payload?: string, ts?: number) => {
      frames.push({ ts: ts ?? -1, payload: payload ?? SILENT_FRAME });
      send(payload, ts);
    };
  };
}

describe('npm run call: reaching the bridge', () => {
  it('exits 1 with one line naming the URL tried and how to fix it when nothing listens there', async () => {
    const port = await closedPort();
    const m = memIo();
    expect(await run(['--url', `http://127.0.0.1:${port}`], m.io)).toBe(1);
    const lines = m.err.text.trim().split('\n');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(`cannot reach the bridge at http://127.0.0.1:${port} (connection refused`);
    expect(lines[0]).toMatch(/npm start.*--url URL or PORT/);
    expect(m.out.text).toBe('');
  });

  it('takes PORT from .env in the working directory, and the shell environment wins over .env', async () => {
    const [fromFile, fromShell] = [await closedPort(), await closedPort()];
    const dir = tempDir();
    writeFileSync(join(dir, '.env'), `PORT=${fromFile}\n`);
    const a = memIo({ cwd: dir });
    expect(await run([], a.io)).toBe(1);
    expect(a.err.text).toContain(`http://127.0.0.1:${fromFile}`);
    const b = memIo({ cwd: dir, env: { PORT: String(fromShell) } });
    expect(await run([], b.io)).toBe(1);
    expect(b.err.text).toContain(`http://127.0.0.1:${fromShell}`);
  });

  it('exits 2 with the help on a bad option', async () => {
    const m = memIo();
    expect(await run(['--calls', 'zero'], m.io)).toBe(2);
    expect(m.err.text).toContain('--calls must be a number');
    expect(m.err.text).toContain('Usage: npm run call');
  });
});

describe('npm run call: a call against the local agent', () => {
  it('with .env PORT pointing at the bridge: waits for the greeting, exits 0 and writes what was heard', async () => {
    const url = await startLocal();
    const dir = tempDir();
    writeFileSync(join(dir, '.env'), `PORT=${new URL(url).port}\n`);
    const m = memIo({ cwd: dir });
    const code = await run(['--duration', '0.4', '--trailing', '0.3', '--out', 'heard.wav', '--json'], m.io);
    const result = JSON.parse(m.out.text) as { greetingWait?: { waitedMs: number; outcome: string }; clears: number; agentAudioHeardMs: number; failure: string | null };
    expect(code).toBe(0);
    expect(result.failure).toBeNull();
    expect(result.greetingWait?.outcome).toBe('ended');
    // The caller started talking only after the whole greeting and the quiet gap after it.
    expect(result.greetingWait!.waitedMs).toBeGreaterThanOrEqual(GREETING_MS + 500);
    expect(result.clears).toBe(0);
    expect(result.agentAudioHeardMs).toBeGreaterThan(GREETING_MS * 0.8);
    expect(existsSync(join(dir, 'heard.wav'))).toBe(true);
    expect(m.err.text).toContain('heard audio written to heard.wav');
  });

  it('--no-wait-greeting talks at once', async () => {
    const url = await startLocal();
    const m = memIo();
    await run(['--url', url, '--no-wait-greeting', '--duration', '0.2', '--trailing', '0', '--json'], m.io);
    const result = JSON.parse(m.out.text) as { greetingWait?: unknown; framesSent: number };
    expect(result.greetingWait).toBeUndefined();
    expect(result.framesSent).toBe(10);
  });
});

describe('npm run call: a call that hears no agent audio', () => {
  it('exits 1, says no agent audio was heard, and does not write the WAV (signed with PORT, PUBLIC_URL and TWILIO_AUTH_TOKEN from .env)', async () => {
    testBridge = await startTestBridge({ agent: { autoInit: true } });
    const dir = tempDir();
    writeFileSync(join(dir, '.env'), `PORT=${new URL(testBridge.url).port}\nPUBLIC_URL=${PUBLIC_URL}\nTWILIO_AUTH_TOKEN=${AUTH_TOKEN}\n`);
    const m = memIo({ cwd: dir });
    const code = await run(['--duration', '0.2', '--trailing', '0.1', '--greeting-timeout', '0.2', '--out', 'heard.wav'], m.io);
    expect(m.err.text).toContain(`(public ${PUBLIC_URL})`);
    expect(m.err.text).toMatch(/, signed\n/);
    // The signed call was admitted (an unsigned one would be refused with 403): it connected, then heard nothing.
    expect(m.out.text).toMatch(/ended by caller/);
    expect(code).toBe(1);
    expect(m.out.text).toContain('FAILED: no agent audio was heard');
    expect(m.out.text).toContain('heard.wav not written: no agent audio was heard');
    expect(m.out.text).toContain('greeting: none after 0.2 s');
    expect(existsSync(join(m.io.cwd, 'heard.wav'))).toBe(false);
  });
});

describe('placeCall waitForGreeting', () => {
  it('sends only silence until the greeting has played in full, then the caller audio', async () => {
    const url = await startLocal();
    const frames: Array<{ ts: number; payload: string }> = [];
    const audio = speechLikeSignal({ durationMs: 600, talkMs: 600, pauseMs: 0 });
    const r = await placeCall({ bridgeUrl: url, audio, trailingMs: 200, waitForGreeting: true, onStream: recordCallerFrames(frames) });
    expect(r.protocolViolations).toEqual([]);
    expect(r.greetingWait?.outcome).toBe('ended');
    const talkAt = r.greetingWait!.waitedMs;
    // The greeting as the caller heard it: every agent sample before the caller spoke.
    const before = r.heard.subarray(0, talkAt * 8);
    expect(audible(before)).toBeGreaterThan(GREETING_MS * 8 * 0.9);
    let lastGreetingSample = before.length - 1;
    while (lastGreetingSample > 0 && (before[lastGreetingSample] === 0xff || before[lastGreetingSample] === 0x7f)) lastGreetingSample--;
    const greetingEndMs = lastGreetingSample / 8;
    expect(talkAt).toBeGreaterThanOrEqual(greetingEndMs + 500);
    // Every caller frame up to the end of the greeting (and the quiet gap) is silence; speech comes after.
    const firstSpeech = frames.findIndex((f) => f.payload !== SILENT_FRAME);
    expect(firstSpeech).toBeGreaterThan(0);
    expect(frames.slice(0, firstSpeech).every((f) => f.payload === SILENT_FRAME)).toBe(true);
    expect(frames[firstSpeech]!.ts).toBe(talkAt);
    expect(frames[firstSpeech]!.ts).toBeGreaterThan(greetingEndMs);
    expect(r.clears).toBe(0);
    // The caller's 600 ms plus 200 ms of trailing silence follow the wait.
    expect(r.framesSent).toBe(talkAt / 20 + 30 + 10);
  });

  it('is off by default: the caller talks from the first frame', async () => {
    const url = await startLocal();
    const frames: Array<{ ts: number; payload: string }> = [];
    const audio = new Uint8Array([...speechLikeSignal({ durationMs: 200, talkMs: 200, pauseMs: 0 }), ...silence(100)]);
    const r = await placeCall({ bridgeUrl: url, audio, onStream: recordCallerFrames(frames) });
    expect(r.greetingWait).toBeUndefined();
    expect(frames[0]!.payload).not.toBe(SILENT_FRAME);
    expect(frames[0]!.ts).toBe(0);
    expect(r.framesSent).toBe(15);
  });
});
