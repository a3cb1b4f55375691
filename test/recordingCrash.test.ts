/**
 * kill -9 during a recorded call: the bridge runs in a child process (bundled with esbuild), a
 * call streams loud caller audio into it, the child is killed with SIGKILL mid-call, and the
 * bridge is started again on the same DATA_DIR: the WAV it left is repaired at boot and holds the
 * audio written before the kill.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';
import pino from 'pino';
import { afterAll, expect, it } from 'vitest';
import { createBridge } from '../src/app.js';
import { loadConfig } from '../src/config.js';
import { FakeTwilioStream, newCallSid, postVoiceWebhook } from '../src/sim/twilioSim.js';
import { readStereoWav } from './recordingWav.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const cleanup: string[] = [];
let child: ChildProcess | undefined;

afterAll(() => {
  if (child?.pid !== undefined && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  for (const p of cleanup) rmSync(p, { recursive: true, force: true });
});

it('leaves a playable WAV with the audio written so far when the bridge is killed with SIGKILL mid-call', async () => {
  const outDir = join(ROOT, '.tmp-dist');
  mkdirSync(outDir, { recursive: true });
  const bundle = join(outDir, `recording-child-${process.pid}.mjs`);
  cleanup.push(bundle);
  await build({ entryPoints: [join(ROOT, 'test/fixtures/recordingChild.ts')], bundle: true, platform: 'node', format: 'esm', packages: 'external', outfile: bundle, logLevel: 'silent' });

  const dataDir = mkdtempSync(join(tmpdir(), 'playline-rec-crash-'));
  cleanup.push(dataDir);
  const env = { PATH: process.env.PATH ?? '', RECORDING: 'local', DATA_DIR: dataDir, LOG_LEVEL: 'warn', PORT: '0', HOST: '127.0.0.1', MAX_EVENT_LOOP_DELAY_MS: '0' };
  const proc = spawn(process.execPath, [bundle], { env, cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  child = proc;
  let stderr = '';
  proc.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    proc.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /\{"url":"([^"]+)"\}/.exec(out);
      if (m?.[1] !== undefined) resolve(m[1]);
    });
    proc.once('exit', (code) => reject(new Error(`child exited (${code}) before listening: ${stderr}`)));
  });

  const callSid = newCallSid();
  const hook = await postVoiceWebhook({ bridgeUrl: url, publicUrl: url, params: { CallSid: callSid } });
  const stream = await FakeTwilioStream.connect({ bridgeUrl: url, streamUrl: hook.twiml!.streamUrl!, autoEchoMarks: true });
  stream.sendConnected();
  stream.sendStart({ callSid, customParameters: hook.twiml!.parameters });
  const loud = Buffer.alloc(160, 0x05).toString('base64');
  const t0 = performance.now();
  const FRAMES = 150; // 3 s
  for (let i = 0; i < FRAMES; i++) {
    stream.sendMedia(loud, i * 20);
    await new Promise((r) => setTimeout(r, Math.max(0, t0 + (i + 1) * 20 - performance.now())));
  }
  const sentMs = FRAMES * 20;
  const exited = new Promise<NodeJS.Signals | null>((resolve) => proc.once('exit', (_c, sig) => resolve(sig)));
  proc.kill('SIGKILL');
  expect(await exited).toBe('SIGKILL');
  stream.terminate();

  const files = readdirSync(join(dataDir, 'recordings')).filter((f) => f.endsWith('.wav'));
  expect(files).toHaveLength(1);
  const path = join(dataDir, 'recordings', files[0]!);
  // The header was not patched for the last writes: as left, the file does not read as what it holds.
  expect(() => readStereoWav(path)).toThrow();

  // Restart on the same DATA_DIR: the boot repairs the file.
  const bridge = await createBridge(loadConfig({ ...env, LOG_LEVEL: 'silent' }), pino({ level: 'silent' }), { probeAgents: false });
  await bridge.app.close();
  const wav = readStereoWav(path);
  const ms = wav.left.length / 8;
  console.info(`after kill -9: ${ms} ms of the ${sentMs} ms sent are in the file`);
  // Everything but the write buffer being filled (at most 1.024 s) reached the disk.
  expect(ms).toBeGreaterThanOrEqual(sentMs - 1100);
  expect(ms).toBeLessThanOrEqual(sentMs + 100);
  const loudLeft = wav.left.filter((v) => v < -1000).length;
  expect(loudLeft).toBeGreaterThanOrEqual(wav.left.length - 2 * 160);
}, 60_000);
