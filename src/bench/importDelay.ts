/**
 * `npm run bench -- --import ROWS`: what a big contact upload costs the calls in progress.
 *
 * Starts the built bridge (production start command, local mode, its own data directory),
 * probes it every 10 ms with `GET /healthz` (a request answered on the event loop, like every
 * media frame), and uploads a CSV of ROWS contacts as a new campaign (`text/csv`, streamed).
 * Reports the probes' latency before and during the upload: a stalled event loop shows as a
 * slow probe, the way it would show as late audio on a live call.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { round2, summarize, type LatencySummary } from './stats.js';
import { freePort } from '../util/freePort.js';

export interface ImportDelayResult {
  rows: number;
  csvBytes: number;
  status: number;
  importMs: number;
  contactsAdded: number | undefined;
  /** Probe latency over 2 s before the upload. */
  idle: LatencySummary;
  /** Probe latency while the upload ran. */
  duringUpload: LatencySummary;
  probesDuringUpload: number;
}

/** `rows` distinct valid US numbers with a name, as a CSV text. */
export function contactsCsv(rows: number): string {
  const lines = ['phone,name'];
  for (let i = 0; i < rows; i++) lines.push(`+1415${200 + Math.floor(i / 10_000)}${String(i % 10_000).padStart(4, '0')},Person ${i}`);
  return `${lines.join('\n')}\n`;
}


const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Probes `url` every `everyMs` until `stop()` resolves; returns each probe's latency in ms. */
function probe(url: string, everyMs: number): { stop(): Promise<number[]> } {
  const latencies: number[] = [];
  let running = true;
  const loop = (async () => {
    while (running) {
      const t0 = performance.now();
      try {
        await fetch(url, { signal: AbortSignal.timeout(30_000) }).then((r) => r.arrayBuffer());
        latencies.push(performance.now() - t0);
      } catch {
        latencies.push(performance.now() - t0);
      }
      await sleep(everyMs);
    }
  })();
  return {
    async stop() {
      running = false;
      await loop;
      return latencies;
    },
  };
}

export async function runImportDelay(opts: { rows: number; distDir: string; nodeArgs: string[]; env?: Record<string, string> }): Promise<ImportDelayResult> {
  const port = await freePort();
  const dataDir = mkdtempSync(join(os.tmpdir(), 'playline-import-bench-'));
  const child = spawn(process.execPath, [...opts.nodeArgs, join(opts.distDir, 'main.js')], {
    env: { PATH: process.env.PATH ?? '', HOME: os.tmpdir(), PORT: String(port), HOST: '127.0.0.1', LOG_LEVEL: 'warn', LOG_FORMAT: 'json', DATA_DIR: dataDir, ...opts.env },
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  const base = `http://127.0.0.1:${port}`;
  try {
    for (let i = 0; ; i++) {
      if (child.exitCode !== null) throw new Error(`the bridge exited (${child.exitCode}) before it was ready`);
      const ok = await fetch(`${base}/healthz`).then((r) => r.ok, () => false);
      if (ok) break;
      if (i > 300) throw new Error('the bridge did not become ready within 15 s');
      await sleep(50);
    }
    const csv = contactsCsv(opts.rows);
    const idleProbe = probe(`${base}/healthz`, 10);
    await sleep(2000);
    const idle = await idleProbe.stop();
    const during = probe(`${base}/healthz`, 10);
    const t0 = performance.now();
    const res = await fetch(`${base}/v1/campaigns?name=import-bench`, { method: 'POST', headers: { 'content-type': 'text/csv' }, body: csv });
    const body = (await res.json()) as { import?: { added?: number } };
    const importMs = performance.now() - t0;
    const latencies = await during.stop();
    return {
      rows: opts.rows,
      csvBytes: Buffer.byteLength(csv),
      status: res.status,
      importMs: round2(importMs),
      contactsAdded: body.import?.added,
      idle: summarize(idle),
      duringUpload: summarize(latencies),
      probesDuringUpload: latencies.length,
    };
  } finally {
    child.kill('SIGKILL');
    rmSync(dataDir, { recursive: true, force: true });
  }
}

/** The result as a few printable lines. */
export function formatImportDelay(r: ImportDelayResult): string {
  const f = (s: LatencySummary) => `p50 ${s.p50.toFixed(1)} ms, p99 ${s.p99.toFixed(1)} ms, max ${s.max.toFixed(1)} ms`;
  return [
    `import of ${r.rows} contacts (${(r.csvBytes / 1e6).toFixed(2)} MB CSV, text/csv): HTTP ${r.status}, ${r.contactsAdded ?? '?'} added in ${(r.importMs / 1000).toFixed(2)} s`,
    `event-loop probe (GET /healthz every 10 ms) before the upload: ${f(r.idle)}`,
    `event-loop probe during the upload (${r.probesDuringUpload} probes):  ${f(r.duringUpload)}`,
  ].join('\n');
}
