/**
 * `npm run bench -- --workers N`: how many calls per second the bridge admits, and how long the
 * voice webhook takes to answer its TwiML, in three set-ups started one after the other:
 *
 *  1. embedded: one process, no Redis (the default);
 *  2. fleet, one process: WORKERS=1 with REDIS_URL (what Redis adds to each webhook: a Lua slot
 *     claim and a stream token written there);
 *  3. fleet, N workers: WORKERS=N with REDIS_URL (the cores of this machine).
 *
 * Each set-up is the built bridge with its production start command in local mode (its own data
 * directory), and a redis-server this bench starts on 127.0.0.1 (a temporary directory, no
 * persistence). A closed loop of `concurrency` clients posts `POST /twilio/voice` over kept-alive
 * connections for `durationS` after a one-second warm-up; an answer with `<Connect><Stream>` is an
 * admitted call. Capacity is set far above what the window can fill, so no call is refused for
 * capacity: what is measured is the admission path itself. Every wait is bounded; every child is
 * killed (its whole process group) at the end.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { Agent, request } from 'node:http';
import { Socket } from 'node:net';
import os from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { round2, summarize, type LatencySummary } from './stats.js';
import { freePort } from '../util/freePort.js';

export interface WorkersBenchOptions {
  workers: number;
  durationS: number;
  concurrency: number;
  distDir: string;
  nodeArgs: string[];
  /** The redis-server binary (`--redis-server`, default `redis-server`). */
  redisBin: string;
  log(line: string): void;
}

export interface SetupResult {
  name: string;
  workers: number;
  redis: boolean;
  windowS: number;
  admitted: number;
  /** Answers that were not an admission (busy TwiML, errors, timeouts). */
  notAdmitted: number;
  /** The answers that were not admissions, by kind (at most 5 kinds). */
  refusals: Array<{ why: string; count: number }>;
  admittedPerS: number;
  /** Webhook sent → TwiML fully received under the closed-loop load, ms (includes queueing). */
  latency: LatencySummary;
  /** The same, one webhook at a time (no queueing): the cost of the admission path itself. */
  unloaded: LatencySummary;
}

export interface WorkersBenchResult {
  concurrency: number;
  durationS: number;
  cpus: number;
  setups: SetupResult[];
}

export class BenchSetupError extends Error {
  override name = 'BenchSetupError';
}

/** Webhooks measured one at a time before the closed loop. */
const UNLOADED_WEBHOOKS = 300;

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));


/** Children, each leading its own process group (a cluster primary and its workers die together). */
const groups = new Set<ChildProcess>();
function killGroup(c: ChildProcess): void {
  groups.delete(c);
  if (c.pid === undefined || c.exitCode !== null || c.signalCode !== null) return;
  try {
    process.kill(-c.pid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}
const killEveryGroup = () => {
  for (const c of [...groups]) killGroup(c);
};

function startGroup(cmd: string, args: string[], env: NodeJS.ProcessEnv, cwd?: string): { child: ChildProcess; output: () => string } {
  const child = spawn(cmd, args, { env, cwd, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  groups.add(child);
  let out = '';
  const keep = (d: Buffer) => {
    out = (out + d.toString('utf8')).slice(-4000);
  };
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  return { child, output: () => out };
}

async function startRedis(bin: string): Promise<{ url: string; stop(): void }> {
  if (spawnSync(bin, ['--version'], { encoding: 'utf8' }).status !== 0) {
    throw new BenchSetupError(`${bin} not found: --workers compares against a real Redis; install it (apt-get install redis-server) or pass --redis-server /path/to/redis-server`);
  }
  const port = await freePort();
  const dir = mkdtempSync(join(os.tmpdir(), 'playline-bench-redis-'));
  const { child, output } = startGroup(bin, ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no', '--loglevel', 'warning'], { PATH: process.env.PATH ?? '' });
  const stop = () => {
    killGroup(child);
    rmSync(dir, { recursive: true, force: true });
  };
  // Ready once it accepts a TCP connection and answers PING.
  for (const deadline = performance.now() + 5000; ; ) {
    if (child.exitCode !== null) {
      stop();
      throw new BenchSetupError(`redis-server exited (${child.exitCode}): ${output()}`);
    }
    if (await redisPing(port)) break;
    if (performance.now() > deadline) {
      stop();
      throw new BenchSetupError(`redis-server did not answer on 127.0.0.1:${port} within 5 s: ${output()}`);
    }
    await sleep(50);
  }
  return { url: `redis://127.0.0.1:${port}`, stop };
}

async function redisPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = new Socket();
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(500, () => done(false));
    s.once('error', () => done(false));
    s.connect(port, '127.0.0.1', () => s.write('PING\r\n'));
    s.once('data', (d) => done(d.toString().startsWith('+PONG')));
  });
}

interface Bridge {
  url: string;
  stop(): void;
}

async function startBridge(o: WorkersBenchOptions, workers: number, redisUrl: string | undefined, prefix: string): Promise<Bridge> {
  const port = await freePort();
  const dataDir = mkdtempSync(join(os.tmpdir(), 'playline-bench-workers-'));
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '',
    HOME: os.tmpdir(),
    PORT: String(port),
    HOST: '127.0.0.1',
    // Error only: every admitted call of the bench ends unused (its token expires), which logs a warning.
    LOG_LEVEL: 'error',
    LOG_FORMAT: 'json',
    DATA_DIR: dataDir,
    MAX_CONCURRENT_CALLS: '100000',
    // An admission not followed by its stream holds its slot until the token expires: keep that short.
    STREAM_TOKEN_TTL_S: '5',
    WORKERS: String(workers),
    ...(redisUrl !== undefined ? { REDIS_URL: redisUrl, FLEET_PREFIX: prefix } : {}),
  };
  const { child, output } = startGroup(process.execPath, [...o.nodeArgs, join(o.distDir, 'main.js')], env);
  const url = `http://127.0.0.1:${port}`;
  const stop = () => {
    killGroup(child);
    rmSync(dataDir, { recursive: true, force: true });
  };
  // Ready when every worker answers /readyz (each worker names itself in the body).
  const seen = new Set<number>();
  for (const deadline = performance.now() + 30_000; ; ) {
    if (child.exitCode !== null) {
      stop();
      throw new BenchSetupError(`the bridge (WORKERS=${workers}) exited (${child.exitCode}) before it was ready: ${output()}`);
    }
    const body = await getJson(`${url}/readyz`);
    if (body !== undefined && typeof body.pid === 'number') seen.add(body.pid);
    if (seen.size >= workers) break;
    if (performance.now() > deadline) {
      stop();
      throw new BenchSetupError(`the bridge (WORKERS=${workers}) was not ready within 30 s (${seen.size} workers answered): ${output()}`);
    }
    await sleep(50);
  }
  return { url, stop };
}

/** GET on a new connection (so a cluster may hand it to any worker); undefined on any failure. */
function getJson(url: string): Promise<Record<string, unknown> | undefined> {
  return new Promise((resolve) => {
    const req = request(url, { agent: false, timeout: 1000 }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (d: string) => (text += d));
      res.on('end', () => {
        try {
          const v: unknown = JSON.parse(text);
          resolve(typeof v === 'object' && v !== null ? Object.fromEntries(Object.entries(v)) : undefined);
        } catch {
          resolve(undefined);
        }
      });
    });
    req.on('error', () => resolve(undefined));
    req.on('timeout', () => req.destroy());
    req.end();
  });
}

const hex32 = () => randomBytes(16).toString('hex');

/** Why webhooks were not admitted: `HTTP <status>: <first words of the answer>`, or the network error. */
const refusals = new Map<string, number>();
const noteRefusal = (why: string) => refusals.set(why, (refusals.get(why) ?? 0) + 1);

/** One voice webhook, as Twilio posts it for an incoming call; resolves with whether it admitted the call. */
function postWebhook(agent: Agent, base: URL): Promise<boolean> {
  const body = new URLSearchParams({
    CallSid: `CA${hex32()}`,
    AccountSid: `AC${hex32()}`,
    From: '+15005550006',
    To: '+15005550001',
    Caller: '+15005550006',
    Called: '+15005550001',
    CallStatus: 'ringing',
    Direction: 'inbound',
    ApiVersion: '2010-04-01',
  }).toString();
  return new Promise((resolve) => {
    const req = request(
      { host: base.hostname, port: base.port, path: '/twilio/voice', method: 'POST', agent, timeout: 10_000, headers: { 'content-type': 'application/x-www-form-urlencoded', 'content-length': Buffer.byteLength(body) } },
      (res) => {
        let text = '';
        res.setEncoding('utf8').on('data', (d: string) => (text += d));
        res.on('end', () => {
          const ok = res.statusCode === 200 && /<Connect>\s*<Stream\b/.test(text);
          if (!ok) noteRefusal(`HTTP ${res.statusCode ?? 0}: ${text.replace(/\s+/g, ' ').slice(0, 120)}`);
          resolve(ok);
        });
        res.on('error', (err) => {
          noteRefusal(`response error: ${err.message}`);
          resolve(false);
        });
      },
    );
    req.on('error', (err) => {
      noteRefusal(`request error: ${err.message}`);
      resolve(false);
    });
    req.on('timeout', () => req.destroy());
    req.end(body);
  });
}

/** Webhooks sent one at a time on one kept-alive connection (so on one worker), after a short warm-up. */
async function oneAtATime(url: string, count: number): Promise<LatencySummary> {
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const base = new URL(url);
  const latencies: number[] = [];
  for (let i = 0; i < count + 50; i++) {
    const t0 = performance.now();
    await postWebhook(agent, base);
    if (i >= 50) latencies.push(performance.now() - t0);
  }
  agent.destroy();
  return summarize(latencies);
}

/** `concurrency` clients in a closed loop for warm-up + window; only the window is counted. */
async function drive(url: string, o: WorkersBenchOptions): Promise<Omit<SetupResult, 'name' | 'workers' | 'redis' | 'unloaded'>> {
  const agent = new Agent({ keepAlive: true, maxSockets: o.concurrency });
  const base = new URL(url);
  const warmUntil = performance.now() + 1000;
  const endAt = warmUntil + o.durationS * 1000;
  const latencies: number[] = [];
  let admitted = 0;
  let notAdmitted = 0;
  refusals.clear();
  const client = async () => {
    while (performance.now() < endAt) {
      const t0 = performance.now();
      const ok = await postWebhook(agent, base);
      if (t0 < warmUntil) continue;
      latencies.push(performance.now() - t0);
      if (ok) admitted++;
      else notAdmitted++;
    }
  };
  await Promise.all(Array.from({ length: o.concurrency }, client));
  agent.destroy();
  const kinds = [...refusals.entries()].sort((a, b) => b[1] - a[1]).slice(0, 5).map(([why, count]) => ({ why, count }));
  return { windowS: o.durationS, admitted, notAdmitted, refusals: kinds, admittedPerS: round2(admitted / o.durationS), latency: summarize(latencies) };
}

export async function runWorkersBench(o: WorkersBenchOptions): Promise<WorkersBenchResult> {
  process.once('exit', killEveryGroup);
  const redis = await startRedis(o.redisBin);
  const setups: SetupResult[] = [];
  try {
    const plan = [
      { name: 'embedded (one process, no Redis)', workers: 1, redis: false },
      { name: 'fleet, one process (WORKERS=1 + Redis)', workers: 1, redis: true },
      { name: `fleet, WORKERS=${o.workers} + Redis`, workers: o.workers, redis: true },
    ];
    let n = 0;
    for (const p of plan) {
      o.log(`bench --workers: ${p.name}: starting, then ${o.concurrency} clients for 1 s warm-up + ${o.durationS} s`);
      const bridge = await startBridge(o, p.workers, p.redis ? redis.url : undefined, `bench${++n}:`);
      try {
        const unloaded = await oneAtATime(bridge.url, UNLOADED_WEBHOOKS);
        const r = await drive(bridge.url, o);
        setups.push({ name: p.name, workers: p.workers, redis: p.redis, ...r, unloaded });
      } finally {
        bridge.stop();
      }
      await sleep(500);
    }
  } finally {
    redis.stop();
    process.removeListener('exit', killEveryGroup);
  }
  return { concurrency: o.concurrency, durationS: o.durationS, cpus: os.availableParallelism(), setups };
}

const signed = (x: number) => `${x >= 0 ? '+' : ''}${x.toFixed(2)}`;

/** The result as a small table. */
export function formatWorkersBench(r: WorkersBenchResult): string {
  const rows = r.setups.map((s) => [
    s.name,
    s.admittedPerS.toFixed(0),
    s.latency.p50.toFixed(2),
    s.latency.p99.toFixed(2),
    String(s.notAdmitted),
    s.unloaded.p50.toFixed(2),
    s.unloaded.p99.toFixed(2),
  ]);
  const head = ['set-up', 'admitted calls/s', 'loaded p50 ms', 'loaded p99 ms', 'not admitted', 'one-at-a-time p50 ms', 'p99 ms'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((row) => row[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join('  ');
  const base = r.setups[0];
  const notes = r.setups.slice(1).map((s) =>
    base === undefined
      ? ''
      : `${s.name}: ${(s.admittedPerS / Math.max(base.admittedPerS, 1e-9)).toFixed(2)}x the embedded rate; one webhook at a time p50 ${signed(s.unloaded.p50 - base.unloaded.p50)} ms, p99 ${signed(s.unloaded.p99 - base.unloaded.p99)} ms; loaded p50 ${signed(s.latency.p50 - base.latency.p50)} ms, p99 ${signed(s.latency.p99 - base.latency.p99)} ms`,
  );
  const refused = r.setups.flatMap((s) => s.refusals.map((x) => `${s.name}: ${x.count} × ${x.why}`));
  return [
    ...refused.map((l) => `not admitted (warm-up included) — ${l}`),
    `admission of inbound calls (POST /twilio/voice → <Connect><Stream>) on ${r.cpus} CPUs (the load generator and redis-server share them):`,
    `  loaded: ${r.concurrency} clients in a closed loop for ${r.durationS} s (latency includes queueing); one at a time: ${UNLOADED_WEBHOOKS} webhooks in sequence (webhook→TwiML)`,
    line(head),
    ...rows.map(line),
    ...notes,
  ].join('\n');
}
