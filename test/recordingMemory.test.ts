/**
 * A local recording's memory does not grow with the call's length: a one-hour call in compressed
 * time (a fake clock advanced 20 ms per caller frame, the agent talking a third of the time with
 * barge-ins), heap measured after 10 and after 60 minutes.
 */
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import pino from 'pino';
import { afterEach, expect, it } from 'vitest';
import { LocalCallRecording } from '../src/recording/localRecording.js';
import { readStereoWav } from './recordingWav.js';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

let dir: string | undefined;
afterEach(() => {
  if (dir !== undefined) rmSync(dir, { recursive: true, force: true });
});

const heapAfterGc = (): number => {
  gc();
  gc();
  return process.memoryUsage().heapUsed;
};

it('keeps memory flat over a one-hour call (compressed time): heap at 60 min within 2 MiB of heap at 10 min', async () => {
  dir = mkdtempSync(join(tmpdir(), 'playline-rec-mem-'));
  let now = 0;
  const rec = new LocalCallRecording({ path: join(dir, 'hour.wav'), log: pino({ level: 'silent' }), now: () => now });
  const frame = Buffer.from(Buffer.alloc(160, 0x05).toString('base64'), 'latin1');
  const agentChunk = Buffer.from(Buffer.alloc(800, 0x85).toString('base64'), 'latin1');
  const FRAMES = 60 * 60 * 50; // one hour of 20 ms frames
  let at10 = 0;
  let maxQueued = 0;
  for (let i = 0; i < FRAMES; i++) {
    now = i * 20;
    rec.callerAudio(frame, 0, frame.length, i * 20);
    // Every 15 s the agent answers with 5 s of audio sent at once; every other answer is cut by a barge-in after 2 s.
    const inCycle = i % 750;
    if (inCycle === 0) for (let k = 0; k < 50; k++) rec.agentAudio(agentChunk, 0, agentChunk.length);
    if (inCycle === 100 && i % 1500 === 100) rec.cleared();
    maxQueued = Math.max(maxQueued, rec.agentQueuedFrames);
    // Each second of audio, let its writes reach the disk (in real time they have that second).
    if (i % 50 === 49) while (rec.pendingWrites > 0) await new Promise((r) => setTimeout(r, 0));
    if (i === 10 * 60 * 50) at10 = heapAfterGc();
  }
  const at60 = heapAfterGc();
  const result = await rec.close();
  console.info(`heap after 10 min ${(at10 / 1048576).toFixed(1)} MiB, after 60 min ${(at60 / 1048576).toFixed(1)} MiB; agent audio held at most ${maxQueued / 8} ms`);
  expect(result?.droppedFrames).toBe(0);
  expect(result?.durationS).toBeCloseTo(3600, 0);
  expect(at60 - at10).toBeLessThan(2 * 1048576);
  // Held agent audio is bounded by what the agent sent ahead (5 s), not by the call.
  expect(maxQueued).toBeLessThanOrEqual(5 * 8000);
  expect(statSync(join(dir, 'hour.wav')).size).toBe(44 + 3600 * 8000 * 4);
}, 120_000);

it('keeps the audio after a barge-in out and fills gaps in the caller stream with silence', async () => {
  dir = mkdtempSync(join(tmpdir(), 'playline-rec-gap-'));
  let now = 0;
  const path = join(dir, 'gap.wav');
  const rec = new LocalCallRecording({ path, log: pino({ level: 'silent' }), now: () => now });
  const frame = Buffer.from(Buffer.alloc(160, 0x05).toString('base64'), 'latin1');
  const agent = Buffer.from(Buffer.alloc(8000, 0x85).toString('base64'), 'latin1'); // 1 s
  rec.agentAudio(agent, 0, agent.length);
  for (let i = 0; i < 50; i++) {
    now = i * 20;
    if (i === 25) rec.cleared(); // at 500 ms
    if (i < 10 || i >= 20) rec.callerAudio(frame, 0, frame.length, i * 20); // frames 10-19 never came
  }
  now = 1000;
  await rec.close();
  const wav = readStereoWav(path);
  expect(wav.left.length).toBe(8000);
  expect(wav.right.slice(0, 4000).every((v) => v > 1000)).toBe(true);
  expect(wav.right.slice(4000).every((v) => v === 0)).toBe(true);
  expect(wav.left.slice(0, 1600).every((v) => v < -1000)).toBe(true);
  expect(wav.left.slice(1600, 3200).every((v) => v === 0)).toBe(true);
  expect(wav.left.slice(3200).every((v) => v < -1000)).toBe(true);
});
