/**
 * RECORDING=local end to end: a call through the Twilio simulator and the fake agent, its WAV
 * read back and compared with what the simulator sent (caller frames and their timestamps) and
 * what it played (its emulation of Twilio's playback buffer: `heard()`).
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { FakeTwilioStream } from '../src/sim/twilioSim.js';
import { eventually, openCall, startTestBridge, type TestBridge } from './helpers.js';
import { decodeUlaw, loudCount, onset, readStereoWav } from './recordingWav.js';

const FRAME = 160;
const SILENT = Buffer.alloc(FRAME, 0xff).toString('base64');
const LOUD_CALLER = Buffer.alloc(FRAME, 0x05).toString('base64');
const loudAgent = (bytes: number): string => Buffer.alloc(bytes, 0x85).toString('base64');

let dir: string;
let tb: TestBridge | undefined;

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'playline-rec-'));
});
afterEach(async () => {
  await tb?.close();
  tb = undefined;
  rmSync(dir, { recursive: true, force: true });
});

/**
 * Sends `n` caller frames in real time (20 ms apart, drift-corrected); `frame(i)` picks each
 * payload. Timestamps are regular, 20 ms apart from the first frame's time since start, as
 * Twilio stamps captured audio (a frame sent a little late keeps its place). Returns them.
 */
async function pumpFrames(stream: FakeTwilioStream, n: number, frame: (i: number) => string, onFrame?: (i: number) => void): Promise<number[]> {
  const stamps: number[] = [];
  const t0 = performance.now();
  const ts0 = Math.max(0, Math.round(stream.now() - (stream.startSentAt ?? 0)));
  for (let i = 0; i < n; i++) {
    const ts = ts0 + i * 20;
    stream.sendMedia(frame(i), ts);
    stamps.push(ts);
    onFrame?.(i);
    const wait = t0 + (i + 1) * 20 - performance.now();
    await new Promise((r) => setTimeout(r, Math.max(0, wait)));
  }
  return stamps;
}

async function recordedFile(callSid: string): Promise<string> {
  const b = tb!.bridge;
  await eventually(async () => (await b.calls.getBySid(callSid))?.recordingStatus === 'completed', 5000, 'the recording to be completed');
  const row = (await b.calls.getBySid(callSid))!;
  return b.recordings.pathOf(row.id);
}

describe('RECORDING=local', () => {
  it('writes caller left and agent right, each within one 20 ms frame of when the simulator sent and played it', async () => {
    tb = await startTestBridge({ env: { RECORDING: 'local', DATA_DIR: dir } });
    const call = await openCall(tb);
    // The simulator, the fake agent and the bridge share this process: on a busy machine the
    // simulator receives the agent's audio late by the event loop's delay (its "playback" starts
    // then), which the bridge's clock does not see. That delay is measured and allowed for.
    const loop = monitorEventLoopDelay({ resolution: 5 });
    loop.enable();
    const stamps = await pumpFrames(
      call.stream,
      75,
      (i) => ((i >= 10 && i < 15) || (i >= 50 && i < 55) ? LOUD_CALLER : SILENT),
      (i) => {
        // 400 ms of agent audio in four chunks, sent at once (faster than real time, as agents do).
        if (i === 20) for (let k = 0; k < 4; k++) call.agent.audio(loudAgent(800));
      },
    );
    call.stream.sendStop();
    loop.disable();
    const lagSamples = Math.round((loop.max / 1e6) * 8);
    const wav = readStereoWav(await recordedFile(call.callSid));
    expect(wav.channels).toBe(2);
    expect(wav.sampleRate).toBe(8000);

    // Caller: each loud burst starts where its first frame's timestamp puts it.
    const a = onset(wav.left);
    const b = onset(wav.left, a + 6 * FRAME);
    const offA = a - stamps[10]! * 8;
    const offB = b - stamps[50]! * 8;
    // Agent: where (and for how long) the simulated Twilio played it.
    const heard = decodeUlaw(call.stream.heard());
    const offAgent = onset(wav.right) - onset(heard);
    const lenDiff = loudCount(wav.right) - loudCount(heard);
    console.info(`alignment (samples at 8 kHz; 160 = one frame): caller ${offA}, ${offB}; agent onset ${offAgent}, agent length ${lenDiff}; event-loop delay max ${lagSamples}`);
    expect(Math.abs(offA)).toBeLessThanOrEqual(FRAME);
    expect(Math.abs(offB)).toBeLessThanOrEqual(FRAME);
    expect(onset(heard)).toBeGreaterThan(0);
    expect(Math.abs(offAgent)).toBeLessThanOrEqual(FRAME + lagSamples);
    expect(loudCount(heard)).toBe(3200);
    expect(Math.abs(lenDiff)).toBeLessThanOrEqual(FRAME);
    // The two channels share one timeline: the file is as long as the call.
    expect(Math.abs(wav.left.length - stamps[74]! * 8 - FRAME)).toBeLessThanOrEqual(4 * FRAME);
  });

  it('has a barge-in as a cut: the agent audio Twilio cleared is not in the file', async () => {
    tb = await startTestBridge({ env: { RECORDING: 'local', DATA_DIR: dir } });
    const call = await openCall(tb);
    const loop = monitorEventLoopDelay({ resolution: 5 });
    loop.enable();
    await pumpFrames(
      call.stream,
      60,
      (i) => (i >= 30 && i < 40 ? LOUD_CALLER : SILENT),
      (i) => {
        if (i === 5) for (let k = 0; k < 20; k++) call.agent.audio(loudAgent(1200)); // 3 s queued at once
        if (i === 30) call.agent.voiceActivityStart(); // the caller talks over it: the bridge sends clear
      },
    );
    call.stream.sendStop();
    loop.disable();
    const lagSamples = Math.round((loop.max / 1e6) * 8);
    const wav = readStereoWav(await recordedFile(call.callSid));
    const heard = decodeUlaw(call.stream.heard());
    expect(call.stream.clears).toBe(1);
    const played = loudCount(heard);
    // About 500 ms played before the clear, of the 3 s sent.
    expect(played).toBeGreaterThan(3000);
    expect(played).toBeLessThan(8 * 800);
    const recorded = loudCount(wav.right);
    console.info(`barge-in: heard ${played} samples of agent audio, recorded ${recorded} (24000 were sent)`);
    expect(Math.abs(recorded - played)).toBeLessThanOrEqual(FRAME);
    // The cut is where the caller heard it, and nothing of the cleared audio comes after it.
    const lastHeard = heard.findLastIndex((v) => Math.abs(v) > 1000);
    const lastRecorded = wav.right.findLastIndex((v) => Math.abs(v) > 1000);
    // (Where the simulator heard it is late by this process's event-loop delay, as in the test above.)
    expect(Math.abs(lastRecorded - lastHeard)).toBeLessThanOrEqual(FRAME + lagSamples);
    // The caller's words that interrupted are on the left, at the cut.
    expect(Math.abs(onset(wav.left) - lastRecorded)).toBeLessThanOrEqual(2 * FRAME);
  });

  it('is on the call record, in the call view, and served with Range requests (206, 416)', async () => {
    tb = await startTestBridge({ env: { RECORDING: 'local', DATA_DIR: dir, API_TOKEN: 'api-token-0123456789abcdef' } });
    const call = await openCall(tb);
    await pumpFrames(call.stream, 25, () => LOUD_CALLER);
    call.stream.sendStop();
    const path = await recordedFile(call.callSid);
    const size = readStereoWav(path).fileBytes;
    const row = (await tb.bridge.calls.getBySid(call.callSid))!;
    const auth = { authorization: 'Bearer api-token-0123456789abcdef' };

    const view = await fetch(`${tb.url}/v1/calls/${row.id}`, { headers: auth });
    const body = (await view.json()) as { recording: { backend: string; durationS: number; url: string } | null };
    expect(body.recording).toMatchObject({ backend: 'local', url: `/v1/calls/${row.id}/recording` });
    expect(body.recording!.durationS).toBeGreaterThan(0.4);

    expect((await fetch(`${tb.url}/v1/calls/${row.id}/recording`)).status).toBe(401);
    const whole = await fetch(`${tb.url}/v1/calls/${row.id}/recording`, { headers: auth });
    expect(whole.status).toBe(200);
    expect(whole.headers.get('content-type')).toBe('audio/wav');
    expect(whole.headers.get('accept-ranges')).toBe('bytes');
    expect((await whole.arrayBuffer()).byteLength).toBe(size);

    const part = await fetch(`${tb.url}/v1/calls/${row.id}/recording`, { headers: { ...auth, range: 'bytes=0-43' } });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe(`bytes 0-43/${size}`);
    expect(Buffer.from(await part.arrayBuffer()).toString('ascii', 0, 4)).toBe('RIFF');
    const tail = await fetch(`${tb.url}/v1/calls/${row.id}/recording`, { headers: { ...auth, range: 'bytes=-100' } });
    expect(tail.status).toBe(206);
    expect(tail.headers.get('content-range')).toBe(`bytes ${size - 100}-${size - 1}/${size}`);
    expect((await tail.arrayBuffer()).byteLength).toBe(100);
    const past = await fetch(`${tb.url}/v1/calls/${row.id}/recording`, { headers: { ...auth, range: `bytes=${size}-` } });
    expect(past.status).toBe(416);
    expect(past.headers.get('content-range')).toBe(`bytes */${size}`);
  });

  it('records nothing for a call whose route says record: false', async () => {
    tb = await startTestBridge({ env: { RECORDING: 'local', RECORDING_DEFAULT: 'off', DATA_DIR: dir } });
    const call = await openCall(tb);
    await pumpFrames(call.stream, 5, () => SILENT);
    call.stream.sendStop();
    await eventually(async () => (await tb!.bridge.calls.getBySid(call.callSid))?.endReason !== null, 3000, 'the call to end');
    const row = (await tb.bridge.calls.getBySid(call.callSid))!;
    expect(row.recordingBackend).toBeNull();
  });
});
