/**
 * `npm run bench`: load benchmark of the built bridge, with a floor measured in the same run.
 *
 * For each call count N:
 *  1. bridge: an echo agent (`dist/bench/echoAgent.js`: the local agent in echo mode, or with
 *     `--agent` a lean echo speaking the OpenAI, ElevenLabs or Deepgram protocol) and the bridge with its
 *     production start command (`node --max-semi-space-size=8 dist/main.js`, the flags read from `npm start`, signatures on, LOG_LEVEL=warn), each its own
 *     process; the bridge pinned to one core with `taskset` when it exists, the agent and the
 *     load generator to another. The load generator (`dist/bench/loadgen.js`, its own process)
 *     places N simulated Twilio calls and measures them (see loadgen.ts); the bridge's CPU and
 *     RSS come from /proc; its own /metrics are scraped at the end.
 *  2. floor: the same load generator and N against `dist/bench/echoFloor.js`, a minimal JSON
 *     media echo server, pinned the same way. bridge CPU / floor CPU is the ratio printed.
 *
 * Every child is killed when this process exits or is interrupted; every wait is bounded.
 * See BENCHMARKS.md for what each column means.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { accessSync, constants as fsConstants, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { BENCH_AGENT_INFO, BENCH_AGENTS, bridgeAgentEnv, isBenchAgent, type BenchAgent } from './agents/kinds.js';
import { formatImportDelay, runImportDelay } from './importDelay.js';
import { BenchSetupError, formatWorkersBench, runWorkersBench } from './workers.js';
import { allowedCpus, clockTicksPerSecond, readHostCpuTimes, readMemoryKb } from './procstat.js';
import { parsePromHistogram, promHistogramQuantile, promValue, round2, round3, type LatencySummary } from './stats.js';
import { freePort } from '../util/freePort.js';

const HELP = `Usage: npm run bench -- [options]

Benchmarks the built bridge (the production start command: node dist/main.js with the
flags of npm start) against an echo agent with N simulated Twilio calls per step,
and a minimal JSON media echo server (the floor) in the same run.
Prints a table and writes a JSON file. Linux only (reads /proc).

Options:
  --agent NAME        the agent's wire protocol, i.e. the bridge adapter measured (default playai):
                        playai            the local agent in echo mode (PlayAI protocol)
                        openai            OpenAI Realtime GA (audio/pcmu, JSON base64 deltas)
                        elevenlabs        ElevenLabs Agents set to ulaw_8000 (JSON base64)
                        deepgram          Deepgram Voice Agent (mulaw 8000, binary audio)
                        elevenlabs-pcm16  ElevenLabs Agents set to pcm_16000: the bridge converts
                                          both ways; echoes are matched by arrival (audio bytes
                                          per call, not frame ids) and no barge-in markers are sent
                      each a lean local echo server (src/bench/agents/); the bridge is pointed at
                      it with that provider's variables (DEFAULT_AGENT, the key, the URL)
  --calls LIST        call counts, comma separated (default 10,100,300)
  --with-600          add a 600-call step
  --duration S        steady-state window per step, seconds (default 20)
  --ramp-ms MS        spread call starts over MS (default 10 ms per call, at most 10000)
  --settle-ms MS      pause between "all calls connected" and the window (default 2000)
  --trailing-ms MS    after the window, wait up to MS for in-flight echoes (default 5000);
                      frames still missing then count as lost
  --agent-cpu CPU     CPU for the agent process, or "none" for no pinning (default: a third
                      CPU when there is one, else the load generator's)
  --barge-every-ms MS barge-in marker interval per call (default 2000; 0 = no barge-ins)
  --quiet-wait-s S    before each measurement, wait up to S seconds for other processes
                      to go quiet (default 60; 0 = do not wait)
  --retries N         measure again, up to N times, when other processes used more than
                      15% of a core during the window; the least disturbed attempt is kept (default 2)
  --no-floor          skip the floor measurement
  --no-pin            do not pin processes with taskset
  --json-out FILE     where to write the JSON result (default bench/results/latest.json)
  --bridge-env K=V    extra environment for the bridge (repeatable), e.g. AUDIO_IN_BATCH_MS=40
  --record            record every call (RECORDING=local: a stereo WAV per call in the bridge's
                      temporary DATA_DIR); compare with a run without it for the cost of recording
  --bridge-node-arg=FLAG
                      extra node flag for the bridge, after those of npm start (repeatable), e.g.
                      --bridge-node-arg=--cpu-prof --bridge-node-arg=--cpu-prof-dir=/tmp/prof
                      (a CPU profile of the bridge; node refuses --cpu-prof in NODE_OPTIONS)
  --quick             short smoke run: --calls 10,50 --duration 5 --settle-ms 1000
                      --quiet-wait-s 10 --retries 0 unless given
  --soak              memory over time at a fixed load: one step of --calls N (default 200)
                      held for --duration S (default 600, at least 120); the bridge's RSS and
                      V8 heap are sampled every --sample-s during the window, and the growth
                      from minute 1 to the end is reported. Implies --no-floor and --retries 0
  --sample-s S        soak sampling interval, seconds (default 10)
  --import ROWS       instead of calls: what uploading a CSV of ROWS contacts (e.g. 100000)
                      costs live calls; the bridge is probed every 10 ms (GET /healthz) before
                      and during the upload and the probe latencies are reported
  --workers N         instead of calls: the calls/s the bridge admits and its webhook→TwiML
                      latency (p50/p99), for one process without Redis (the default), one
                      process with Redis, and WORKERS=N with Redis (N from 2 to 64); starts its
                      own redis-server on 127.0.0.1 (--redis-server, default redis-server on PATH).
                      --duration S per set-up (default 10), --concurrency C clients (default 32)
  --concurrency C     with --workers: webhooks in flight at once (default 32)
  --redis-server PATH with --workers: the redis-server binary (default redis-server)
  -h, --help          this text
`;

/** Soak target: RSS growth after minute 1 at most this (sampling noise; 2 MB over a 10-minute run). */
const SOAK_GROWTH_MB_PER_MIN = 0.2;
/** The host counts as quiet when everything running uses less than this (% of one core). */
const QUIET_PCT = 15;
/** A measurement is repeated when processes outside the benchmark used more than this (% of one core). */
const OTHERS_RETRY_PCT = 15;

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DIST = join(ROOT, 'dist');
const PUBLIC_URL = 'https://bench.playline.invalid';
/** The API key the bridge sends and the echo agent requires (OpenAI, Deepgram; PlayAI sends it in setup). */
const AGENT_KEY = 'bench';

// ---------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------

interface Options {
  /** The echo agent's wire protocol (`--agent`). */
  agent: BenchAgent;
  calls: number[];
  durationS: number;
  rampMs: number | undefined;
  settleMs: number;
  trailingMs: number;
  bargeEveryMs: number;
  /** CPU for the agent, 'none' (unpinned), or undefined (automatic). */
  agentCpu: number | 'none' | undefined;
  floor: boolean;
  pin: boolean;
  quietWaitS: number;
  retries: number;
  jsonOut: string;
  quick: boolean;
  /** Extra environment for the bridge (`--bridge-env NAME=VALUE`), e.g. AUDIO_IN_BATCH_MS=40. */
  bridgeEnv: Record<string, string>;
  /** Extra node flags for the bridge (`--bridge-node-arg`), e.g. `--cpu-prof`. */
  bridgeNodeArgs: string[];
  /** Memory over time: one step, the bridge sampled every `sampleS` during the window. */
  soak: boolean;
  sampleS: number;
  /** `--import ROWS`: measure a contact upload instead of calls. */
  importRows: number | undefined;
  /** --workers N: admission rate and webhook latency, embedded vs WORKERS=N with Redis. */
  workers: number | undefined;
  /** --workers: webhooks in flight at once. */
  concurrency: number;
  /** --workers: the redis-server binary. */
  redisServer: string;
}

function usage(msg: string): never {
  process.stderr.write(`bench: ${msg}\n\n${HELP}`);
  process.exit(2);
}

function numOpt(name: string, v: string | undefined, def: number, min: number, max: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min || n > max) usage(`--${name} must be a number in [${min}, ${max}] (got ${JSON.stringify(v)})`);
  return n;
}

function parseOptions(): Options | undefined {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        agent: { type: 'string' },
        calls: { type: 'string' },
        'with-600': { type: 'boolean', default: false },
        duration: { type: 'string' },
        'ramp-ms': { type: 'string' },
        'settle-ms': { type: 'string' },
        'trailing-ms': { type: 'string' },
        'barge-every-ms': { type: 'string' },
        'agent-cpu': { type: 'string' },
        'no-floor': { type: 'boolean', default: false },
        'quiet-wait-s': { type: 'string' },
        retries: { type: 'string' },
        'no-pin': { type: 'boolean', default: false },
        'json-out': { type: 'string' },
        quick: { type: 'boolean', default: false },
        soak: { type: 'boolean', default: false },
        'sample-s': { type: 'string' },
        import: { type: 'string' },
        'bridge-env': { type: 'string', multiple: true },
        record: { type: 'boolean', default: false },
        'bridge-node-arg': { type: 'string', multiple: true },
        workers: { type: 'string' },
        concurrency: { type: 'string' },
        'redis-server': { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    usage(err instanceof Error ? err.message : String(err));
  }
  if (values.help) {
    process.stdout.write(HELP);
    return undefined;
  }
  const quick = values.quick;
  const soak = values.soak;
  if (soak && quick) usage('--soak and --quick do not go together');
  const callsText = values.calls ?? (soak ? '200' : quick ? '10,50' : '10,100,300');
  const calls = callsText.split(',').map((s) => Number(s.trim()));
  if (calls.length === 0 || calls.some((n) => !Number.isInteger(n) || n < 1 || n > 5000)) usage(`--calls must list integers in [1, 5000] (got ${JSON.stringify(callsText)})`);
  if (values['with-600'] && !calls.includes(600)) calls.push(600);
  if (soak && calls.length !== 1) usage(`--soak takes one call count (got ${JSON.stringify(calls.join(','))})`);
  const workers = values.workers === undefined ? undefined : Math.round(numOpt('workers', values.workers, 2, 2, 64));
  if (workers !== undefined && (soak || values.import !== undefined)) usage('--workers goes with neither --soak nor --import');
  if (values.concurrency !== undefined && workers === undefined) usage('--concurrency goes with --workers');
  const durationS = Math.round(numOpt('duration', values.duration, soak ? 600 : workers !== undefined ? 10 : quick ? 5 : 20, soak ? 120 : 1, 3600));
  const bridgeEnv: Record<string, string> = {};
  for (const kv of values['bridge-env'] ?? []) {
    const m = /^([A-Z][A-Z0-9_]*)=(.*)$/.exec(kv);
    if (m === null || m[1] === undefined || m[2] === undefined) usage(`--bridge-env takes NAME=VALUE (got ${JSON.stringify(kv)})`);
    bridgeEnv[m[1]] = m[2];
  }
  if (values.record) {
    bridgeEnv.RECORDING ??= 'local';
    bridgeEnv.RECORDING_DEFAULT ??= 'on';
  }
  const bridgeNodeArgs = values['bridge-node-arg'] ?? [];
  for (const a of bridgeNodeArgs) if (!a.startsWith('--')) usage(`--bridge-node-arg takes a node flag like --cpu-prof (got ${JSON.stringify(a)}; write --bridge-node-arg=--flag)`);
  const agent = values.agent ?? 'playai';
  if (!isBenchAgent(agent)) usage(`--agent must be one of ${BENCH_AGENTS.join(', ')} (got ${JSON.stringify(agent)})`);
  return {
    agent,
    bridgeEnv,
    bridgeNodeArgs,
    calls,
    durationS,
    rampMs: values['ramp-ms'] === undefined ? undefined : Math.round(numOpt('ramp-ms', values['ramp-ms'], 0, 0, 600_000)),
    settleMs: Math.round(numOpt('settle-ms', values['settle-ms'], quick ? 1000 : 2000, 0, 600_000)),
    trailingMs: Math.round(numOpt('trailing-ms', values['trailing-ms'], 5000, 0, 60_000)),
    agentCpu: values['agent-cpu'] === undefined || values['agent-cpu'] === 'none' ? values['agent-cpu'] : Math.round(numOpt('agent-cpu', values['agent-cpu'], 0, 0, 4095)),
    bargeEveryMs: Math.round(numOpt('barge-every-ms', values['barge-every-ms'], 2000, 0, 600_000)),
    floor: !values['no-floor'] && !soak,
    pin: !values['no-pin'],
    quietWaitS: Math.round(numOpt('quiet-wait-s', values['quiet-wait-s'], quick ? 10 : 60, 0, 3600)),
    retries: soak ? 0 : Math.round(numOpt('retries', values.retries, quick ? 0 : 2, 0, 10)),
    jsonOut: values['json-out'] ?? join('bench', 'results', 'latest.json'),
    quick,
    soak,
    sampleS: numOpt('sample-s', values['sample-s'], 10, 1, 600),
    importRows: values.import === undefined ? undefined : Math.round(numOpt('import', values.import, 100_000, 1, 100_000)),
    workers,
    concurrency: Math.round(numOpt('concurrency', values.concurrency, 32, 1, 1000)),
    redisServer: values['redis-server'] ?? 'redis-server',
  };
}

// ---------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------

const children = new Set<ChildProcess>();

function killAll(signal: NodeJS.Signals): void {
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) {
      try {
        c.kill(signal);
      } catch {
        /* already gone */
      }
    }
  }
}

interface Proc {
  name: string;
  child: ChildProcess;
  pid: number;
  /** Last stdout/stderr lines (bounded). */
  tail: string[];
  lines: number;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly alive: boolean;
  stdoutLines: string[];
  lineWaiters: Set<(line: string) => void>;
  /** Count of stdout JSON log lines by `msg` (pino), all lines. */
  msgCounts: Map<string, number>;
}

const TAIL_LINES = 40;

function gitRevision(): string {
  try {
    return execFileSync('git', ['describe', '--always', '--dirty'], { cwd: ROOT, encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return 'unknown';
  }
}

function findTaskset(): string | undefined {
  for (const dir of (process.env.PATH ?? '/usr/bin:/bin').split(':')) {
    if (dir === '') continue;
    const p = join(dir, 'taskset');
    try {
      accessSync(p, fsConstants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return undefined;
}

interface LaunchOptions {
  core: number | undefined;
  taskset: string | undefined;
  env: NodeJS.ProcessEnv;
  cwd?: string;
  /** Keep every stdout line (the load generator's result). */
  keepStdout?: boolean;
  /** Forward stderr lines to ours with this prefix. */
  forwardStderr?: string;
  /** Flags for node before the script. */
  nodeFlags?: string[];
}

/** Node flags of the production start command (`npm start`: `exec node <flags> dist/main.js`). */
function productionNodeFlags(): string[] {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts?: { start?: string } };
  const words = (pkg.scripts?.start ?? '').trim().split(/\s+/).filter((w, i) => !(i === 0 && w === 'exec'));
  return words.slice(1).filter((w) => w.startsWith('--'));
}

function launch(name: string, script: string, args: string[], o: LaunchOptions): Proc {
  const nodeArgs = [...(o.nodeFlags ?? []), script, ...args];
  const [cmd, argv] =
    o.core !== undefined && o.taskset !== undefined ? [o.taskset, ['-c', String(o.core), process.execPath, ...nodeArgs]] : [process.execPath, nodeArgs];
  // taskset execs the command: the pid is node's.
  const child = spawn(cmd, argv, { stdio: ['pipe', 'pipe', 'pipe'], env: o.env, cwd: o.cwd ?? ROOT });
  children.add(child);
  const proc: Proc = {
    name,
    child,
    pid: child.pid ?? -1,
    tail: [],
    lines: 0,
    exited: new Promise((r) => child.once('exit', (code, signal) => r({ code, signal }))),
    get alive() {
      return child.exitCode === null && child.signalCode === null;
    },
    stdoutLines: [],
    lineWaiters: new Set(),
    msgCounts: new Map(),
  };
  void proc.exited.then(() => children.delete(child));
  child.on('error', (err) => {
    proc.tail.push(`spawn error: ${err.message}`);
  });
  const keep = (line: string): void => {
    proc.lines++;
    proc.tail.push(line);
    if (proc.tail.length > TAIL_LINES) proc.tail.shift();
  };
  if (child.stdout !== null) {
    createInterface({ input: child.stdout }).on('line', (line) => {
      keep(line);
      if (o.keepStdout === true) proc.stdoutLines.push(line);
      if (line.startsWith('{') && proc.msgCounts.size < 100) {
        try {
          const o = JSON.parse(line) as { msg?: unknown; kind?: unknown; event?: unknown; reason?: unknown };
          if (typeof o.msg === 'string') {
            const detail = [o.kind, o.event, o.reason].filter((x) => typeof x === 'string').join(' ');
            const key = detail === '' ? o.msg : `${o.msg} (${detail})`;
            proc.msgCounts.set(key, (proc.msgCounts.get(key) ?? 0) + 1);
          }
        } catch {
          /* not a log line */
        }
      }
      for (const w of proc.lineWaiters) w(line);
    });
  }
  if (child.stderr !== null) {
    createInterface({ input: child.stderr }).on('line', (line) => {
      keep(line);
      if (o.forwardStderr !== undefined) process.stderr.write(`${o.forwardStderr}${line}\n`);
    });
  }
  child.stdin?.on('error', () => {
    /* child gone */
  });
  return proc;
}

/** Resolves with the first stdout line matching `re`; rejects on exit or timeout. */
function waitForLine(proc: Proc, re: RegExp, timeoutMs: number): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    const done = (fn: () => void): void => {
      clearTimeout(timer);
      proc.lineWaiters.delete(onLine);
      fn();
    };
    const onLine = (line: string): void => {
      const m = re.exec(line);
      if (m !== null) done(() => resolve(m));
    };
    const timer = setTimeout(() => done(() => reject(new Error(`${proc.name} did not start within ${timeoutMs} ms\n${proc.tail.join('\n')}`))), timeoutMs);
    proc.lineWaiters.add(onLine);
    void proc.exited.then(({ code, signal }) => done(() => reject(new Error(`${proc.name} exited (${code ?? signal}) before it was ready\n${proc.tail.join('\n')}`))));
  });
}

async function stop(proc: Proc, graceMs: number): Promise<void> {
  if (!proc.alive) return;
  proc.child.kill('SIGTERM');
  const t = setTimeout(() => {
    if (proc.alive) proc.child.kill('SIGKILL');
  }, graceMs);
  await proc.exited;
  clearTimeout(t);
}


const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Resolves true when `p` settles within `ms`, false otherwise; leaves no timer behind. */
async function within(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<false>((r) => (timer = setTimeout(() => r(false), ms)));
  try {
    return await Promise.race([p.then(() => true as const), t]);
  } finally {
    clearTimeout(timer);
  }
}

async function waitHttpOk(url: string, timeoutMs: number, proc: Proc): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    if (!proc.alive) throw new Error(`${proc.name} exited before it was ready\n${proc.tail.join('\n')}`);
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(1000) });
      await res.text();
      if (res.ok) return;
    } catch {
      /* not yet */
    }
    if (performance.now() > deadline) throw new Error(`${proc.name} did not answer ${url} within ${timeoutMs} ms\n${proc.tail.join('\n')}`);
    await sleep(100);
  }
}

/** Minimal environment: nothing from the caller's shell can change the bridge's configuration. */
function baseEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const k of ['PATH', 'HOME', 'LANG', 'TZ', 'TMPDIR']) if (process.env[k] !== undefined) env[k] = process.env[k];
  return env;
}

// ---------------------------------------------------------------------------
// Host
// ---------------------------------------------------------------------------

interface Machine {
  cpuModel: string;
  cpuMHz: number;
  logicalCpus: number;
  allowedCpus: number[];
  memGiB: number;
  kernel: string;
  platform: string;
  node: string;
  taskset: string | undefined;
  pinned: boolean;
  cores: { bridge?: number; loadgen?: number; agent?: number | 'none' };
  clkTck: number;
  /** Code measured: `git describe --always --dirty` of the checkout (dist/ is built from its working tree). */
  revision: string;
  /** 20 ms timer lag of an idle process on the load generator's CPU, alone and while the bridge's CPU is busy. */
  jitter?: { idle?: Jitter; otherCpuBusy?: Jitter };
}

interface Jitter {
  p50: number;
  p99: number;
  max: number;
}


// ---------------------------------------------------------------------------
// Loadgen result (see loadgen.ts)
// ---------------------------------------------------------------------------

interface LoadgenResult {
  type: 'result';
  /** How echoes were matched to frames (see loadgen.ts). */
  match?: 'id' | 'arrival';
  calls: number;
  rampMs: number;
  connectMs: number;
  connected: number;
  connectedEver: number;
  refused: number;
  errors: number;
  errorSamples: string[];
  unfinished: boolean;
  endedByBridge: number;
  protocolViolations: number;
  violationSamples: string[];
  window: {
    ms: number;
    clkTck: number;
    targetTicks?: number;
    targetUserTicks?: number;
    targetSystemTicks?: number;
    agentTicks?: number;
    loadgenCpuMs: number;
    loadgenSystemCpuMs: number;
    hostBusyTicks?: number;
    hostIdleTicks?: number;
    hostStealTicks?: number;
  };
  targetRssKb?: number;
  targetHwmKb?: number;
  frames: { drainMs?: number; counted: number; echoed: number; lost: number; callsWithLoss: number; duplicates: number; reordered: number; misrouted: number; foreign: number };
  arrival?: { shortfallBytesPerCall: number };
  rttMs: LatencySummary;
  firstAudioMs: LatencySummary;
  bargeIn: { markersSent: number; clears: number; noClear: number; unexpectedClears: number; markerToClearMs: LatencySummary };
  marks: { received: number; echoed: number };
  loadgen: { cpuPct: number; sendLagMs: LatencySummary; sendLagMaxWholeCallMs: number; eventLoopDelayMs: { p50: number; p99: number; max: number } };
}

interface BridgeMetrics {
  bargeInClear?: { count: number; meanMs: number; p50Ms?: number; p99Ms?: number };
  bargeInsTotal?: number;
  callerFramesLost?: number;
  agentFramesDroppedAfterBargeIn?: number;
  framesCallerToAgent?: number;
  framesAgentToCaller?: number;
  marksPlayed?: number;
  marksStale?: number;
  marksSent?: number;
  badFrames?: number;
  eventLoopLagP99Ms?: number;
  firstAgentAudioMeanMs?: number;
}

interface TargetRun {
  kind: 'bridge' | 'floor';
  calls: number;
  ok: boolean;
  failure?: string;
  connected: number;
  windowS: number;
  cpuMsPerCallSecond?: number;
  corePct?: number;
  agentCorePct?: number;
  rssBeforeMb?: number;
  rssSteadyMb?: number;
  rssHwmMb?: number;
  rssGrowthKbPerCall?: number;
  /** The bridge's V8 heap from /metrics: idle before the calls, and at the end of the window (calls live). */
  heapBefore?: HeapSample;
  heapEnd?: HeapSample;
  /** (V8 heap used outside the young generation at the end of the window − before calls) ÷ N. */
  heapGrowthKbPerCall?: number;
  /** --soak: memory sampled during the window. */
  soak?: Soak;
  /** Share of the target's CPU time spent in the kernel. */
  systemSharePct?: number;
  /** CPU used during the window by processes outside the benchmark, in % of one core. */
  otherProcessesPct?: number;
  /** Steal time reported by the host during the window, in % of one core. */
  hostStealPct?: number;
  /** The wait for a quiet host before this measurement. */
  quietWait?: QuietWait;
  /** Measurements made for this step (the least disturbed one is reported). */
  attempts?: number;
  /** The target used more than 90% of its core: it is CPU-bound, its latency includes queueing. */
  targetSaturated?: boolean;
  loadgenSaturated: boolean;
  loadgenNotes: string[];
  loadgen?: LoadgenResult;
  metrics?: BridgeMetrics;
  log?: { lines: number; byMessage: Record<string, number>; tail: string[] };
}

function parseBridgeMetrics(text: string): BridgeMetrics {
  const h = parsePromHistogram(text, 'playline_barge_in_clear_seconds');
  const ms = (s: number | undefined): number | undefined => (s === undefined ? undefined : round3(s * 1000));
  const first = parsePromHistogram(text, 'playline_first_agent_audio_seconds');
  const out: BridgeMetrics = {
    bargeInsTotal: promValue(text, 'playline_barge_ins_total'),
    callerFramesLost: promValue(text, 'playline_caller_frames_lost_total'),
    agentFramesDroppedAfterBargeIn: promValue(text, 'playline_agent_frames_dropped_total', 'reason="barge_in"'),
    framesCallerToAgent: promValue(text, 'playline_media_frames_total', 'direction="caller_to_agent"'),
    framesAgentToCaller: promValue(text, 'playline_media_frames_total', 'direction="agent_to_caller"'),
    marksPlayed: promValue(text, 'playline_marks_total', 'kind="played"'),
    marksStale: promValue(text, 'playline_marks_total', 'kind="stale"'),
    marksSent: promValue(text, 'playline_marks_total', 'kind="sent"'),
    badFrames: promValue(text, 'playline_bad_frames_total'),
    eventLoopLagP99Ms: ms(promValue(text, 'playline_nodejs_eventloop_lag_p99_seconds')),
  };
  if (h !== undefined) {
    out.bargeInClear = {
      count: h.count,
      meanMs: h.count > 0 ? round3((h.sum / h.count) * 1000) : 0,
      ...(h.count > 0 ? { p50Ms: ms(promHistogramQuantile(h, 0.5)), p99Ms: ms(promHistogramQuantile(h, 0.99)) } : {}),
    };
  }
  if (first !== undefined && first.count > 0) out.firstAgentAudioMeanMs = round3((first.sum / first.count) * 1000);
  return out;
}

// ---------------------------------------------------------------------------
// Memory: RSS from /proc, the V8 heap from the bridge's /metrics (prom-client default metrics)
// ---------------------------------------------------------------------------

interface HeapSample {
  /** nodejs_heap_size_used_bytes, MB. */
  usedMb: number;
  /** Used outside the young generation (old, code and large-object spaces), MB: less noisy than `usedMb`, whose young part is mostly garbage. */
  oldMb: number;
  /** Young generation (new space) size, MB: V8 doubles it once the allocation rate is high, whatever the number of calls. */
  youngTotalMb: number;
  /** nodejs_external_memory_bytes, MB (Buffers and other memory outside the V8 heap). */
  externalMb: number;
}

async function scrapeHeap(url: string): Promise<HeapSample | undefined> {
  try {
    const res = await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(5000) });
    const text = await res.text();
    const used = promValue(text, 'playline_nodejs_heap_size_used_bytes');
    if (used === undefined) return undefined;
    const youngUsed = promValue(text, 'playline_nodejs_heap_space_size_used_bytes', 'space="new"') ?? 0;
    const youngTotal = promValue(text, 'playline_nodejs_heap_space_size_total_bytes', 'space="new"') ?? 0;
    const external = promValue(text, 'playline_nodejs_external_memory_bytes') ?? 0;
    const mb = (b: number): number => round2(b / 2 ** 20);
    return { usedMb: mb(used), oldMb: mb(used - youngUsed), youngTotalMb: mb(youngTotal), externalMb: mb(external) };
  } catch {
    return undefined;
  }
}

interface MemorySample {
  /** Seconds since the window opened. */
  t: number;
  rssMb: number;
  heap?: HeapSample;
}

interface Soak {
  sampleS: number;
  samples: MemorySample[];
  /** The first sample at least 60 s into the window, and the last one. */
  minute1?: MemorySample;
  end?: MemorySample;
  rssGrowthMb?: number;
  rssGrowthMbPerMin?: number;
  /** Least-squares slope of RSS over the samples from minute 1 on, MB/min. */
  rssFitMbPerMin?: number;
  rssMaxAfterMinute1Mb?: number;
  /** The same for the V8 heap used outside the young generation. */
  heapOldGrowthMb?: number;
  heapOldFitMbPerMin?: number;
  /** Lowest and highest sample of each minute of the window (lows are past V8's garbage peaks). */
  perMinute: Array<{ minute: number; rssLowMb: number; rssHighMb: number; heapOldLowMb?: number }>;
}

/** Samples the bridge's RSS and heap every `everyS` from `started` until `ended`, and once more then. */
async function sampleWindow(
  pid: number,
  url: string,
  started: Promise<boolean>,
  ended: Promise<boolean>,
  everyS: number,
  onSample: (x: MemorySample) => void,
): Promise<MemorySample[]> {
  const out: MemorySample[] = [];
  if (!(await started)) return out;
  const t0 = performance.now();
  let last = false;
  for (let i = 1; ; i++) {
    let rssKb: number;
    try {
      rssKb = readMemoryKb(pid).rssKb;
    } catch {
      return out; // the bridge is gone
    }
    const heap = await scrapeHeap(url);
    const x: MemorySample = { t: round2((performance.now() - t0) / 1000), rssMb: round2(rssKb / 1024), ...(heap !== undefined ? { heap } : {}) };
    out.push(x);
    onSample(x);
    if (last) return out;
    // Wait for the next tick; when the window ends first, one last sample is taken at its end.
    last = await within(ended, Math.max(0, t0 + i * everyS * 1000 - performance.now()));
  }
}

/** Least-squares slope of y over t (seconds), per minute. */
function slopePerMin(points: Array<[number, number]>): number | undefined {
  if (points.length < 2) return undefined;
  const n = points.length;
  const mt = points.reduce((a, [t]) => a + t, 0) / n;
  const my = points.reduce((a, [, y]) => a + y, 0) / n;
  let num = 0;
  let den = 0;
  for (const [t, y] of points) {
    num += (t - mt) * (y - my);
    den += (t - mt) ** 2;
  }
  return den === 0 ? undefined : round3((num / den) * 60);
}

function summarizeSoak(samples: MemorySample[], sampleS: number): Soak {
  const soak: Soak = { sampleS, samples, perMinute: [] };
  for (let minute = 0; minute * 60 < (samples[samples.length - 1]?.t ?? 0); minute++) {
    const inMinute = samples.filter((x) => x.t >= minute * 60 && x.t < (minute + 1) * 60);
    if (inMinute.length === 0) continue;
    const heapLows = inMinute.flatMap((x) => (x.heap === undefined ? [] : [x.heap.oldMb]));
    soak.perMinute.push({
      minute: minute + 1,
      rssLowMb: Math.min(...inMinute.map((x) => x.rssMb)),
      rssHighMb: Math.max(...inMinute.map((x) => x.rssMb)),
      ...(heapLows.length > 0 ? { heapOldLowMb: Math.min(...heapLows) } : {}),
    });
  }
  const m1 = samples.find((x) => x.t >= 60);
  const end = samples[samples.length - 1];
  if (m1 === undefined || end === undefined || end.t - m1.t < 30) return soak;
  const after = samples.filter((x) => x.t >= m1.t);
  soak.minute1 = m1;
  soak.end = end;
  soak.rssGrowthMb = round2(end.rssMb - m1.rssMb);
  soak.rssGrowthMbPerMin = round3(soak.rssGrowthMb / ((end.t - m1.t) / 60));
  soak.rssFitMbPerMin = slopePerMin(after.map((x) => [x.t, x.rssMb]));
  soak.rssMaxAfterMinute1Mb = Math.max(...after.map((x) => x.rssMb));
  if (m1.heap !== undefined && end.heap !== undefined) soak.heapOldGrowthMb = round2(end.heap.oldMb - m1.heap.oldMb);
  soak.heapOldFitMbPerMin = slopePerMin(after.flatMap((x) => (x.heap === undefined ? [] : [[x.t, x.heap.oldMb] as [number, number]])));
  return soak;
}

function summarizeLog(proc: Proc): { lines: number; byMessage: Record<string, number>; tail: string[] } {
  return { lines: proc.lines, byMessage: Object.fromEntries(proc.msgCounts), tail: proc.tail.slice(-10) };
}

// ---------------------------------------------------------------------------
// One measurement: a target (bridge or floor) under N calls
// ---------------------------------------------------------------------------

interface Plan {
  opts: Options;
  machine: Machine;
  maxCalls: number;
  token: string;
  dataDir: string;
}

const LAG_P99_LIMIT_MS = 5;
/** Above this share of its core the target is CPU-bound: its ms per call-second is capped by the core. */
const TARGET_SATURATED_PCT = 90;
const LOADGEN_CPU_LIMIT_PCT = 90;
const SHARED_CORE_LIMIT_PCT = 95;

async function measure(kind: 'bridge' | 'floor', calls: number, plan: Plan): Promise<TargetRun> {
  const { opts, machine } = plan;
  const pin = machine.pinned ? machine.taskset : undefined;
  const run: TargetRun = { kind, calls, ok: false, connected: 0, windowS: 0, loadgenSaturated: false, loadgenNotes: [] };
  const info = BENCH_AGENT_INFO[opts.agent];
  const procs: Proc[] = [];
  const say = (msg: string): void => void process.stderr.write(`[${calls} calls, ${kind}] ${msg}\n`);
  try {
    let target: Proc;
    let agent: Proc | undefined;
    let url: string;
    let publicUrl: string;
    if (kind === 'bridge') {
      const agentCore = machine.cores.agent === 'none' ? undefined : machine.cores.agent;
      agent = launch('agent', join(DIST, 'bench', 'echoAgent.js'), ['--agent', opts.agent, '--api-key', AGENT_KEY, '--port', '0', '--watch-stdin'], {
        core: agentCore,
        taskset: pin,
        env: baseEnv(),
      });
      procs.push(agent);
      const m = await waitForLine(agent, /listening on ([a-z]+:\/\/\S+)/, 15_000);
      const agentUrl = m[1] ?? '';
      const port = await freePort();
      const env: NodeJS.ProcessEnv = {
        ...baseEnv(),
        NODE_ENV: 'production',
        PORT: String(port),
        HOST: '127.0.0.1',
        LOG_LEVEL: 'warn',
        TWILIO_AUTH_TOKEN: plan.token,
        PUBLIC_URL,
        ...bridgeAgentEnv(opts.agent, agentUrl, AGENT_KEY),
        MAX_CONCURRENT_CALLS: String(Math.max(1000, plan.maxCalls * 2)),
        DATA_DIR: plan.dataDir,
        DRAIN_TIMEOUT_S: '2',
        ...opts.bridgeEnv,
      };
      // cwd = the temp dir, so no .env of the checkout is loaded.
      target = launch('bridge', join(DIST, 'main.js'), [], { core: machine.cores.bridge, taskset: pin, env, cwd: plan.dataDir, nodeFlags: [...productionNodeFlags(), ...opts.bridgeNodeArgs] });
      procs.push(target);
      url = `http://127.0.0.1:${port}`;
      publicUrl = PUBLIC_URL;
      await waitHttpOk(`${url}/healthz`, 20_000, target);
    } else {
      target = launch('floor', join(DIST, 'bench', 'echoFloor.js'), ['--port', '0', '--watch-stdin'], { core: machine.cores.bridge, taskset: pin, env: baseEnv() });
      procs.push(target);
      const m = await waitForLine(target, /listening on (http:\/\/\S+)/, 15_000);
      url = m[1] ?? '';
      publicUrl = url;
    }
    await sleep(1000); // idle after boot, before the RSS baseline
    const before = readMemoryKb(target.pid);
    run.rssBeforeMb = round2(before.rssKb / 1024);
    if (kind === 'bridge') run.heapBefore = await scrapeHeap(url);

    const rampMs = opts.rampMs ?? Math.min(10_000, calls * 10);
    const connectTimeoutMs = 20_000;
    const args = [
      '--url', url,
      '--public-url', publicUrl,
      '--token', plan.token,
      '--calls', String(calls),
      '--ramp-ms', String(rampMs),
      '--connect-timeout-ms', String(connectTimeoutMs),
      '--settle-ms', String(opts.settleMs),
      '--duration', String(opts.durationS),
      '--trailing-ms', String(opts.trailingMs),
      '--barge-every-ms', String(kind === 'bridge' && info.bargeIn ? opts.bargeEveryMs : 0),
      // The floor echoes byte-exact whatever the agent: only the bridge's converted audio is matched by arrival.
      '--match', kind === 'bridge' ? info.match : 'id',
      '--target-pid', String(target.pid),
      ...(agent !== undefined ? ['--agent-pid', String(agent.pid)] : []),
      '--watch-stdin',
    ];
    say(`${kind} pid ${target.pid} at ${url}${agent !== undefined ? `, agent pid ${agent.pid}` : ''}; starting the load generator`);
    const lg = launch('loadgen', join(DIST, 'bench', 'loadgen.js'), args, {
      core: machine.cores.loadgen,
      taskset: pin,
      env: baseEnv(),
      keepStdout: true,
      forwardStderr: `[${calls} calls, ${kind}]   `,
    });
    procs.push(lg);
    const limitMs = rampMs + connectTimeoutMs + opts.settleMs + opts.durationS * 1000 + opts.trailingMs + 60_000;
    // The load generator says when the window opens and closes: the bridge's heap is read at the
    // end of the window (calls still live), and with --soak its memory is sampled throughout.
    const windowStarted = waitForLine(lg, /^\{"type":"window-start"\}/, limitMs).then(() => true, () => false);
    const windowEnded = waitForLine(lg, /^\{"type":"window-end"\}/, limitMs).then(() => true, () => false);
    const heapAtEnd = kind === 'bridge' ? windowEnded.then((ok) => (ok ? scrapeHeap(url) : undefined)) : Promise.resolve(undefined);
    const onSample = (x: MemorySample): void =>
      say(`soak t=${Math.round(x.t)} s: RSS ${f1(x.rssMb)} MB, heap used ${f1(x.heap?.usedMb)} MB (outside the young generation ${f1(x.heap?.oldMb)})`);
    const samples = kind === 'bridge' && opts.soak ? sampleWindow(target.pid, url, windowStarted, windowEnded, opts.sampleS, onSample) : Promise.resolve([]);
    if (!(await within(lg.exited, limitMs))) {
      await stop(lg, 1000);
      throw new Error(`load generator did not finish within ${Math.round(limitMs / 1000)} s`);
    }
    run.heapEnd = await heapAtEnd;
    if (kind === 'bridge' && opts.soak) run.soak = summarizeSoak(await samples, opts.sampleS);
    const line = [...lg.stdoutLines].reverse().find((l) => l.startsWith('{"type":"result"'));
    if (line === undefined) throw new Error(`load generator gave no result (exit ${lg.child.exitCode ?? lg.child.signalCode})\n${lg.tail.join('\n')}`);
    const r = JSON.parse(line) as LoadgenResult;
    run.loadgen = r;
    run.connected = r.connected;
    run.windowS = round3(r.window.ms / 1000);

    const secs = r.window.ms / 1000;
    const tck = r.window.clkTck;
    if (r.window.targetTicks !== undefined && secs > 0) {
      const cpuS = r.window.targetTicks / tck;
      run.corePct = round2((cpuS / secs) * 100);
      run.targetSaturated = machine.pinned && run.corePct > TARGET_SATURATED_PCT;
      if (r.connected > 0) run.cpuMsPerCallSecond = round3((cpuS * 1000) / (r.connected * secs));
    }
    if (r.window.agentTicks !== undefined && secs > 0) run.agentCorePct = round2((r.window.agentTicks / tck / secs) * 100);
    if (r.window.targetTicks !== undefined && r.window.targetSystemTicks !== undefined && r.window.targetTicks > 0) {
      run.systemSharePct = round2((r.window.targetSystemTicks / r.window.targetTicks) * 100);
    }
    if (r.window.hostBusyTicks !== undefined && secs > 0) {
      const ours = (r.window.targetTicks ?? 0) + (r.window.agentTicks ?? 0) + (r.window.loadgenCpuMs / 1000) * tck;
      run.otherProcessesPct = round2(Math.max(0, (r.window.hostBusyTicks - ours) / tck / secs) * 100);
    }
    if (r.window.hostStealTicks !== undefined && secs > 0) run.hostStealPct = round2((r.window.hostStealTicks / tck / secs) * 100);
    if (r.targetRssKb !== undefined) {
      run.rssSteadyMb = round2(r.targetRssKb / 1024);
      run.rssGrowthKbPerCall = round2((r.targetRssKb - before.rssKb) / calls);
    }
    if (r.targetHwmKb !== undefined) run.rssHwmMb = round2(r.targetHwmKb / 1024);
    if (run.heapBefore !== undefined && run.heapEnd !== undefined) run.heapGrowthKbPerCall = round2(((run.heapEnd.oldMb - run.heapBefore.oldMb) * 1024) / calls);

    // Is the load generator itself the bottleneck?
    const lag = r.loadgen.sendLagMs;
    if (lag.p99 > LAG_P99_LIMIT_MS) run.loadgenNotes.push(`send lag p99 ${lag.p99} ms > ${LAG_P99_LIMIT_MS} ms`);
    if (r.loadgen.cpuPct > LOADGEN_CPU_LIMIT_PCT) run.loadgenNotes.push(`load generator CPU ${r.loadgen.cpuPct}% > ${LOADGEN_CPU_LIMIT_PCT}%`);
    if (machine.pinned && machine.cores.agent === machine.cores.loadgen && run.agentCorePct !== undefined) {
      const shared = r.loadgen.cpuPct + run.agentCorePct;
      if (shared > SHARED_CORE_LIMIT_PCT) run.loadgenNotes.push(`load generator + agent use ${round2(shared)}% of their shared core`);
    }
    run.loadgenSaturated = run.loadgenNotes.length > 0;

    if (kind === 'bridge') {
      try {
        const res = await fetch(`${url}/metrics`, { signal: AbortSignal.timeout(5000) });
        run.metrics = parseBridgeMetrics(await res.text());
      } catch (err) {
        run.loadgenNotes.push(`could not scrape /metrics: ${err instanceof Error ? err.message : String(err)}`);
      }
    }
    if (!target.alive) throw new Error(`${kind} exited during the run\n${target.tail.join('\n')}`);
    run.ok = r.connected === calls && r.window.ms > 0;
    if (!run.ok) run.failure = `${r.connected}/${calls} calls connected${r.errorSamples.length ? `: ${r.errorSamples.join('; ')}` : ''}`;
    if (kind === 'bridge') run.log = summarizeLog(target);
  } catch (err) {
    run.ok = false;
    run.failure = err instanceof Error ? err.message : String(err);
    say(`FAILED: ${run.failure}`);
  } finally {
    for (const p of procs.reverse()) await stop(p, p.name === 'bridge' ? 8000 : 3000);
  }
  return run;
}

// ---------------------------------------------------------------------------
// Output
// ---------------------------------------------------------------------------

interface Step {
  calls: number;
  bridge: TargetRun;
  floor?: TargetRun;
  /** bridge CPU per call-second / floor CPU per call-second. */
  cpuRatio?: number;
}

const f1 = (x: number | undefined): string => (x === undefined ? '–' : x.toFixed(1));
const f2 = (x: number | undefined): string => (x === undefined ? '–' : x.toFixed(2));
const pair = (a: number | undefined, b: number | undefined, fmt = f2): string => (a === undefined || b === undefined ? '–' : `${fmt(a)}/${fmt(b)}`);

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const fmt = (cells: string[]): string => `| ${cells.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join(' | ')} |`;
  return [fmt(header), `|${widths.map((w) => '-'.repeat(w + 2)).join('|')}|`, ...rows.map(fmt)].join('\n');
}

function render(machine: Machine, opts: Options, steps: Step[]): string {
  const out: string[] = [];
  out.push(
    `code: ${machine.revision}; machine: ${machine.cpuModel}${machine.cpuMHz > 0 ? ` (${machine.cpuMHz} MHz)` : ''}, ${machine.logicalCpus} logical CPUs (allowed ${machine.allowedCpus.join(',') || '?'}), ${machine.memGiB} GiB, Linux ${machine.kernel}, Node ${machine.node}`,
  );
  out.push(
    machine.pinned
      ? `pinning: taskset yes — bridge/floor on CPU ${machine.cores.bridge}, load generator on CPU ${machine.cores.loadgen}, agent ${machine.cores.agent === 'none' ? 'not pinned' : `on CPU ${machine.cores.agent}`}${machine.cores.agent === machine.cores.loadgen ? ' (shared with the load generator)' : machine.cores.agent === machine.cores.bridge ? ' (shared with the bridge)' : ''}`
      : `pinning: none (${machine.taskset === undefined ? 'taskset not found' : opts.pin ? 'fewer than 2 usable CPUs' : '--no-pin'}) — figures are noisier`,
  );
  const j = machine.jitter;
  if (j?.idle !== undefined) {
    out.push(
      `machine noise: 20 ms timer lag of an idle process on the load generator's CPU p50/p99/max ${j.idle.p50}/${j.idle.p99}/${j.idle.max} ms` +
        (j.otherCpuBusy !== undefined ? `; while the bridge's CPU spins ${j.otherCpuBusy.p50}/${j.otherCpuBusy.p99}/${j.otherCpuBusy.max} ms` : ''),
    );
  }
  const info = BENCH_AGENT_INFO[opts.agent];
  out.push(`agent: ${info.describe}`);
  if (opts.bridgeEnv.RECORDING !== undefined && opts.bridgeEnv.RECORDING !== 'off') out.push(`recording: RECORDING=${opts.bridgeEnv.RECORDING} (every call)`);
  out.push(
    `window ${opts.durationS} s per step after all calls connected; 20 ms frames; agent echoes every frame; ` +
      (info.bargeIn ? `barge-in marker every ${opts.bargeEveryMs} ms per call` : 'no barge-in markers (they cannot pass a conversion)') +
      (info.match === 'arrival' ? '; echoes matched by arrival (audio bytes per call), so RTT includes the converters\' hold-back' : ''),
  );
  out.push('');
  const headline = steps.map((s) => {
    const b = s.bridge;
    const r = b.loadgen;
    const fl = s.floor;
    return [
      String(s.calls),
      `${b.connected}/${s.calls}`,
      f2(b.cpuMsPerCallSecond),
      `${f1(b.corePct)}${b.targetSaturated === true ? ' !' : ''}`,
      f2(fl?.cpuMsPerCallSecond),
      s.cpuRatio === undefined ? '–' : `${s.cpuRatio.toFixed(2)}x`,
      pair(r?.rttMs.p50, r?.rttMs.p99),
      pair(fl?.loadgen?.rttMs.p50, fl?.loadgen?.rttMs.p99),
      pair(r?.bargeIn.markerToClearMs.p50, r?.bargeIn.markerToClearMs.p99),
      r === undefined ? '–' : f1(r.firstAudioMs.p50),
      r === undefined ? '–' : String(r.frames.lost),
      f1(b.rssSteadyMb),
      f1(b.rssGrowthKbPerCall),
      f1(b.heapGrowthKbPerCall),
      r === undefined ? '–' : `${f2(r.loadgen.sendLagMs.p99)}${b.loadgenSaturated ? ' !' : ''}`,
    ];
  });
  out.push(
    table(
      [`calls (${opts.agent})`, 'connected', 'CPU ms/call-s', '% core', 'floor ms/call-s', 'ratio', 'RTT p50/p99 ms', 'floor RTT p50/p99', 'barge p50/p99 ms', '1st audio p50 ms', 'lost', 'RSS MB', 'RSS KB/call', 'heap KB/call', 'LG lag p99 ms'],
      headline,
    ),
  );
  // Each step is a fresh bridge, so the one-off growth of the first calls (young generation, compiled code) cancels out here.
  const marginal: string[] = [];
  const withRss = steps.filter((s) => s.bridge.rssSteadyMb !== undefined).sort((a, b) => a.calls - b.calls);
  for (let i = 1; i < withRss.length; i++) {
    const a = (withRss[i - 1] as Step).bridge;
    const b = (withRss[i] as Step).bridge;
    const perCall = (x: number | undefined, y: number | undefined): string => (x === undefined || y === undefined ? '–' : f1(((y - x) * 1024) / (b.calls - a.calls)));
    marginal.push(`${a.calls}->${b.calls}: RSS ${perCall(a.rssSteadyMb, b.rssSteadyMb)} KB, heap ${perCall(a.heapEnd?.oldMb, b.heapEnd?.oldMb)} KB`);
  }
  if (marginal.length > 0) out.push(`per added call between steps (fresh bridge each step, so one-off warm-up cancels out): ${marginal.join('; ')}`);
  out.push('');
  const detail = steps.map((s) => {
    const b = s.bridge;
    const r = b.loadgen;
    const fl = s.floor;
    const m = b.metrics;
    return [
      String(s.calls),
      r === undefined ? '–' : `${r.bargeIn.clears}/${r.bargeIn.markersSent}`,
      pair(m?.bargeInClear?.meanMs, m?.bargeInClear?.p99Ms, (x) => (x === undefined ? '–' : x.toFixed(3))),
      r === undefined ? '–' : `${f2(r.rttMs.p999)}/${f2(r.rttMs.max)}`,
      r === undefined ? '–' : f1(r.firstAudioMs.p99),
      f1(m?.eventLoopLagP99Ms),
      f1(b.agentCorePct),
      r === undefined ? '–' : f1(r.loadgen.cpuPct),
      r?.frames.drainMs === undefined ? '–' : String(r.frames.drainMs),
      m?.callerFramesLost === undefined ? '–' : String(m.callerFramesLost),
      f1(fl?.corePct),
      fl?.loadgen === undefined ? '–' : f1(fl.loadgen.loadgen.cpuPct),
      pair(fl?.rssSteadyMb, fl?.rssGrowthKbPerCall, f1),
      fl?.loadgen === undefined ? '–' : String(fl.loadgen.frames.lost),
      fl?.loadgen === undefined ? '–' : `${f2(fl.loadgen.loadgen.sendLagMs.p99)}${fl.loadgenSaturated ? ' !' : ''}`,
      f1(b.systemSharePct),
      `${f1(b.otherProcessesPct)}/${f1(b.hostStealPct)}`,
      `${f1(b.rssBeforeMb)}/${f1(b.heapBefore?.youngTotalMb)}/${f1(b.heapEnd?.youngTotalMb)}`,
    ];
  });
  out.push(
    table(
      ['calls', 'clears/markers', '/metrics clear mean/p99 ms', 'RTT p99.9/max', '1st audio p99', 'bridge loop lag p99', 'agent % core', 'LG % core', 'drain ms', 'bridge drops', 'floor % core', 'floor LG % core', 'floor RSS MB, KB/call', 'floor lost', 'floor LG lag p99', 'bridge sys %', 'others/steal % core', 'RSS before / young gen before/end MB'],
      detail,
    ),
  );
  for (const s of steps) {
    const k = s.bridge.soak;
    if (k === undefined) continue;
    out.push('');
    out.push(`soak: ${s.calls} calls for ${Math.round(s.bridge.windowS)} s, bridge RSS and heap sampled every ${k.sampleS} s (${k.samples.length} samples)`);
    if (k.minute1 === undefined || k.end === undefined) {
      out.push('  too few samples after minute 1 to say anything');
      continue;
    }
    const heapOld = (x: MemorySample): string => f1(x.heap?.oldMb);
    out.push(
      `  RSS MB: minute 1 (t=${f1(k.minute1.t)} s) ${f1(k.minute1.rssMb)}, end (t=${f1(k.end.t)} s) ${f1(k.end.rssMb)}: ${f2(k.rssGrowthMb)} MB, ${f2(k.rssGrowthMbPerMin)} MB/min (least-squares ${f2(k.rssFitMbPerMin)} MB/min); max after minute 1 ${f1(k.rssMaxAfterMinute1Mb)}`,
    );
    out.push(`  heap used outside the young generation MB: minute 1 ${heapOld(k.minute1)}, end ${heapOld(k.end)}: ${f2(k.heapOldGrowthMb)} MB (least-squares ${f2(k.heapOldFitMbPerMin)} MB/min)`);
    out.push(`  per minute, RSS low-high MB: ${k.perMinute.map((m) => `${m.minute}: ${f1(m.rssLowMb)}-${f1(m.rssHighMb)}`).join(', ')}`);
    out.push(`  per minute, heap outside the young generation, low MB: ${k.perMinute.map((m) => `${m.minute}: ${f1(m.heapOldLowMb)}`).join(', ')}`);
  }
  const notes: string[] = [];
  for (const s of steps) {
    for (const run of [s.bridge, s.floor]) {
      if (run === undefined) continue;
      if (!run.ok) notes.push(`${s.calls} calls, ${run.kind}: FAILED — ${(run.failure ?? '').split('\n')[0]}`);
      if (run.targetSaturated === true) {
        notes.push(
          `${s.calls} calls, ${run.kind}: CPU-bound (${run.corePct}% of its core): its ms per call-second is capped by the core` +
            (run.kind === 'bridge' && s.cpuRatio !== undefined ? `, so the ${s.cpuRatio}x ratio understates its cost` : '') +
            ', and its latency includes queueing',
        );
      }
      if (run.loadgenSaturated) notes.push(`${s.calls} calls, ${run.kind}: load generator saturated (${run.loadgenNotes.join('; ')}): latency figures include its own delay`);
      const r = run.loadgen;
      if (r !== undefined) {
        if (r.protocolViolations > 0) notes.push(`${s.calls} calls, ${run.kind}: ${r.protocolViolations} Twilio protocol violations, e.g. ${r.violationSamples[0] ?? ''}`);
        const fr = r.frames;
        if (fr.duplicates + fr.reordered + fr.misrouted + fr.foreign > 0) {
          notes.push(`${s.calls} calls, ${run.kind}: echoes duplicated ${fr.duplicates}, out of order ${fr.reordered}, to the wrong call ${fr.misrouted}, unrecognised ${fr.foreign}`);
        }
        if (r.arrival !== undefined) {
          notes.push(`${s.calls} calls, ${run.kind}: echoes matched by arrival; ${f1(r.arrival.shortfallBytesPerCall)} audio bytes per call sent but not back at hang-up (in flight, held in a converter, or lost)`);
        }
        if (run.kind === 'bridge' && r.bargeIn.noClear > 0) notes.push(`${s.calls} calls: ${r.bargeIn.noClear} of ${r.bargeIn.markersSent} barge-in markers got no clear`);
      }
      if ((run.otherProcessesPct ?? 0) > OTHERS_RETRY_PCT) {
        notes.push(`${s.calls} calls, ${run.kind}: processes outside the benchmark used ${run.otherProcessesPct}% of a core during the window (best of ${run.attempts ?? 1} attempts): figures are disturbed`);
      }
      if (run.log !== undefined && run.log.lines > 0) {
        notes.push(`${s.calls} calls, bridge logged ${run.log.lines} warn+ lines: ${Object.entries(run.log.byMessage).map(([k, v]) => `${v}× ${k}`).join('; ')}`);
      }
    }
  }
  const targets = evaluateTargets(steps, opts.agent);
  if (targets.length > 0) {
    out.push('');
    out.push('targets:');
    for (const t of targets) out.push(`  ${t.pass ? 'PASS' : 'FAIL'}  ${t.what}: ${t.value}`);
  }
  if (notes.length > 0) {
    out.push('');
    out.push('notes:');
    for (const n of notes) out.push(`  - ${n}`);
  }
  out.push('');
  out.push('RTT = caller frame sent -> same audio back (bridge -> agent -> bridge); barge = marker frame sent -> clear received (a round trip through both legs);');
  out.push('"!" after % core: the bridge was CPU-bound; after LG lag: the load generator was saturated. LG = load generator. See BENCHMARKS.md.');
  return out.join('\n');
}

interface TargetCheck {
  what: string;
  value: string;
  pass: boolean;
}

function evaluateTargets(steps: Step[], agent: BenchAgent): TargetCheck[] {
  const out: TargetCheck[] = [];
  // Issue 10: each passthrough adapter at 200 calls costs at most 2.0x the floor measured in the same run.
  const s200 = steps.find((s) => s.calls === 200);
  if (s200?.cpuRatio !== undefined && !BENCH_AGENT_INFO[agent].transcodes) {
    out.push({ what: `200 calls, ${agent}: <= 2.0x the floor`, value: `${s200.cpuRatio.toFixed(2)}x`, pass: s200.cpuRatio <= 2.0 });
  }
  const s300 = steps.find((s) => s.calls === 300);
  if (s300 !== undefined) {
    const b = s300.bridge;
    out.push({ what: '300 calls: CPU <= 1.8 ms per call-second', value: `${f2(b.cpuMsPerCallSecond)} ms`, pass: (b.cpuMsPerCallSecond ?? Infinity) <= 1.8 });
    if (s300.cpuRatio !== undefined) out.push({ what: '300 calls: <= 2.0x the floor', value: `${s300.cpuRatio.toFixed(2)}x`, pass: s300.cpuRatio <= 2.0 });
    const p99 = b.loadgen?.rttMs.p99;
    out.push({ what: '300 calls: RTT p99 <= 5 ms', value: `${f2(p99)} ms`, pass: (p99 ?? Infinity) <= 5 });
  }
  for (const s of steps.filter((x) => x.calls >= 300 && x.bridge.rssGrowthKbPerCall !== undefined)) {
    const kb = s.bridge.rssGrowthKbPerCall ?? 0;
    out.push({ what: `${s.calls} calls: RSS growth <= 0.1 MB per live call`, value: `${f2(kb / 1024)} MB (heap outside the young generation: ${f1(s.bridge.heapGrowthKbPerCall)} KB)`, pass: kb <= 102.4 });
  }
  for (const s of steps) {
    const k = s.bridge.soak;
    if (k?.rssGrowthMbPerMin === undefined) continue;
    out.push({
      what: `soak, ${s.calls} calls for ${Math.round(s.bridge.windowS)} s: no RSS growth after minute 1 (<= ${SOAK_GROWTH_MB_PER_MIN} MB/min)`,
      value: `${f2(k.rssGrowthMb)} MB, ${f2(k.rssGrowthMbPerMin)} MB/min`,
      pass: k.rssGrowthMbPerMin <= SOAK_GROWTH_MB_PER_MIN,
    });
  }
  const s600 = steps.find((s) => s.calls === 600);
  if (s600 !== undefined) {
    const b = s600.bridge;
    const r = b.loadgen;
    out.push({ what: '600 calls: every call connects', value: `${b.connected}/600`, pass: b.connected === 600 });
    out.push({ what: '600 calls: RTT p99 <= 25 ms', value: `${f2(r?.rttMs.p99)} ms`, pass: (r?.rttMs.p99 ?? Infinity) <= 25 });
    out.push({ what: '600 calls: zero lost frames', value: r === undefined ? '–' : String(r.frames.lost), pass: r !== undefined && r.frames.lost === 0 });
    out.push({
      what: '600 calls: load generator keeps up (send lag p99 <= 5 ms)',
      value: r === undefined ? '–' : `${f2(r.loadgen.sendLagMs.p99)} ms, LG CPU ${f1(r.loadgen.cpuPct)}%`,
      pass: !b.loadgenSaturated,
    });
  }
  return out;
}

// ---------------------------------------------------------------------------
// Machine noise
// ---------------------------------------------------------------------------

interface QuietWait {
  waitedS: number;
  /** Host CPU use in the last sample, % of one core. */
  hostBusyPct: number;
  quiet: boolean;
}

/** Host-wide CPU use over `ms`, in % of one core. */
async function hostBusyPct(ms: number): Promise<number | undefined> {
  const a = readHostCpuTimes();
  const t0 = performance.now();
  await sleep(ms);
  const b = readHostCpuTimes();
  const secs = (performance.now() - t0) / 1000;
  if (a === undefined || b === undefined || secs <= 0) return undefined;
  return round2(((b.busy - a.busy) / clockTicksPerSecond() / secs) * 100);
}

/** Waits (bounded) until the host is quiet: nothing but idle benchmark processes running. */
async function waitQuiet(maxWaitS: number): Promise<QuietWait> {
  const t0 = performance.now();
  let busy = (await hostBusyPct(1000)) ?? 0;
  let said = false;
  while (busy > QUIET_PCT && performance.now() - t0 < maxWaitS * 1000) {
    if (!said) process.stderr.write(`bench: other processes use ${busy}% of a core; waiting up to ${maxWaitS} s for a quiet machine\n`);
    said = true;
    await sleep(1000);
    busy = (await hostBusyPct(1000)) ?? 0;
  }
  const waitedS = round2((performance.now() - t0) / 1000);
  if (said) process.stderr.write(busy > QUIET_PCT ? `bench: still ${busy}% busy after ${waitedS} s; measuring anyway\n` : `bench: quiet after ${waitedS} s\n`);
  return { waitedS, hostBusyPct: busy, quiet: busy <= QUIET_PCT };
}

/** measure(), after waiting for a quiet host, repeated while other processes disturbed it. */
async function measureQuietly(kind: 'bridge' | 'floor', calls: number, plan: Plan): Promise<TargetRun> {
  let best: TargetRun | undefined;
  const disturbance = (r: TargetRun): number => (r.ok ? (r.otherProcessesPct ?? 0) : Infinity);
  for (let attempt = 1; attempt <= 1 + plan.opts.retries; attempt++) {
    const quietWait = plan.opts.quietWaitS > 0 ? await waitQuiet(plan.opts.quietWaitS) : undefined;
    const run = await measure(kind, calls, plan);
    if (quietWait !== undefined) run.quietWait = quietWait;
    if (best === undefined || disturbance(run) < disturbance(best)) best = run;
    best.attempts = attempt;
    if (!run.ok || (run.otherProcessesPct ?? 0) <= OTHERS_RETRY_PCT) break;
    if (attempt <= plan.opts.retries) {
      process.stderr.write(`[${calls} calls, ${kind}] other processes used ${run.otherProcessesPct}% of a core during the window; measuring again\n`);
    }
  }
  return best as TargetRun;
}

async function probeJitter(machine: Machine, spinOther: boolean): Promise<Jitter | undefined> {
  const pin = machine.pinned ? machine.taskset : undefined;
  const spinner = spinOther
    ? launch('spin', join(DIST, 'bench', 'jitter.js'), ['--seconds', '4', '--spin'], { core: machine.cores.bridge, taskset: pin, env: baseEnv() })
    : undefined;
  const probe = launch('jitter', join(DIST, 'bench', 'jitter.js'), ['--seconds', '3'], { core: machine.cores.loadgen, taskset: pin, env: baseEnv(), keepStdout: true });
  try {
    if (!(await within(probe.exited, 10_000))) return undefined;
    const line = probe.stdoutLines.find((l) => l.startsWith('{'));
    return line === undefined ? undefined : (JSON.parse(line) as Jitter);
  } finally {
    await stop(probe, 1000);
    if (spinner !== undefined) await stop(spinner, 1000);
  }
}

// ---------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------

async function main(): Promise<void> {
  const opts = parseOptions();
  if (opts === undefined) return;
  if (opts.workers !== undefined) {
    let r;
    try {
      r = await runWorkersBench({
        workers: opts.workers,
        durationS: opts.durationS,
        concurrency: opts.concurrency,
        distDir: DIST,
        nodeArgs: productionNodeFlags(),
        redisBin: opts.redisServer,
        log: (line) => process.stderr.write(`${line}\n`),
      });
    } catch (err) {
      if (!(err instanceof BenchSetupError)) throw err;
      process.stderr.write(`bench: ${err.message}\n`);
      process.exit(2);
    }
    process.stdout.write(`${formatWorkersBench(r)}\n`);
    const file = resolve(opts.jsonOut);
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, `${JSON.stringify({ kind: 'workers', startedAt: new Date().toISOString(), revision: gitRevision(), result: r }, null, 2)}\n`);
    process.stdout.write(`results: ${file}\n`);
    return;
  }
  if (opts.importRows !== undefined) {
    const r = await runImportDelay({ rows: opts.importRows, distDir: DIST, nodeArgs: productionNodeFlags() });
    process.stdout.write(`${formatImportDelay(r)}\n`);
    const file = resolve(opts.jsonOut);
    mkdirSync(dirname(file), { recursive: true });
    writeFileSync(file, `${JSON.stringify({ kind: 'import', startedAt: new Date().toISOString(), revision: gitRevision(), result: r }, null, 2)}\n`);
    process.stdout.write(`results: ${file}\n`);
    return;
  }
  if (process.platform !== 'linux') {
    process.stderr.write('bench: Linux only (CPU and memory are read from /proc)\n');
    process.exit(2);
  }
  for (const f of ['main.js', 'bench/loadgen.js', 'bench/echoAgent.js', 'bench/echoFloor.js', 'bench/jitter.js']) {
    try {
      accessSync(join(DIST, f));
    } catch {
      process.stderr.write(`bench: ${join(DIST, f)} is missing; run \`npm run build\` (npm run bench does)\n`);
      process.exit(2);
    }
  }

  const allowed = allowedCpus();
  const taskset = findTaskset();
  const pinned = opts.pin && taskset !== undefined && allowed.length >= 2;
  const cpus = os.cpus();
  const machine: Machine = {
    cpuModel: cpus[0]?.model.trim() ?? 'unknown',
    cpuMHz: cpus[0]?.speed ?? 0,
    logicalCpus: cpus.length,
    allowedCpus: allowed,
    memGiB: round2(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    platform: `${process.platform}-${process.arch}`,
    node: process.version,
    taskset,
    pinned,
    cores: pinned ? { bridge: allowed[0], loadgen: allowed[1], agent: opts.agentCpu ?? allowed[2] ?? allowed[1] } : {},
    clkTck: clockTicksPerSecond(),
    revision: gitRevision(),
  };

  const steps: Step[] = [];
  const startedAt = new Date().toISOString();
  const dataDir = mkdtempSync(join(os.tmpdir(), 'playline-bench-'));
  const writeJson = (complete: boolean): string => {
    const file = resolve(opts.jsonOut);
    mkdirSync(dirname(file), { recursive: true });
    const doc = {
      tool: 'playline npm run bench',
      agent: { name: opts.agent, ...BENCH_AGENT_INFO[opts.agent] },
      startedAt,
      finishedAt: new Date().toISOString(),
      complete,
      machine,
      options: opts,
      targets: evaluateTargets(steps, opts.agent),
      steps,
    };
    writeFileSync(file, `${JSON.stringify(doc, null, 2)}\n`);
    return file;
  };
  let interrupted = false;
  const onSignal = (sig: NodeJS.Signals): void => {
    if (interrupted) return;
    interrupted = true;
    process.stderr.write(`\nbench: ${sig}: stopping every child process\n`);
    killAll('SIGKILL');
    try {
      if (steps.length > 0) process.stderr.write(`bench: partial results written to ${writeJson(false)}\n`);
    } catch {
      /* best effort */
    }
    rmSync(dataDir, { recursive: true, force: true });
    process.exit(130);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', () => killAll('SIGKILL'));

  if (machine.pinned) {
    if (opts.quietWaitS > 0) await waitQuiet(opts.quietWaitS);
    process.stderr.write('bench: probing machine noise (timer lag on the load generator CPU, idle and with the bridge CPU busy)\n');
    const idle = await probeJitter(machine, false);
    const otherCpuBusy = await probeJitter(machine, true);
    machine.jitter = { ...(idle !== undefined ? { idle } : {}), ...(otherCpuBusy !== undefined ? { otherCpuBusy } : {}) };
  }

  const plan: Plan = { opts, machine, maxCalls: Math.max(...opts.calls), token: randomBytes(16).toString('hex'), dataDir };
  process.stderr.write(
    `bench: agent ${opts.agent}; steps ${opts.calls.join(', ')} calls, ${opts.durationS} s window each${opts.floor ? ', floor in the same run' : ''}; ${machine.pinned ? `pinned (bridge CPU ${machine.cores.bridge}, load CPU ${machine.cores.loadgen}, agent CPU ${machine.cores.agent})` : 'not pinned'}\n`,
  );
  try {
    for (const calls of opts.calls) {
      const bridge = await measureQuietly('bridge', calls, plan);
      const step: Step = { calls, bridge };
      if (opts.floor) {
        await sleep(500);
        step.floor = await measureQuietly('floor', calls, plan);
        const b = bridge.cpuMsPerCallSecond;
        const f = step.floor.cpuMsPerCallSecond;
        if (b !== undefined && f !== undefined && f > 0) step.cpuRatio = round2(b / f);
      }
      steps.push(step);
      const r = bridge.loadgen;
      process.stderr.write(
        `[${calls} calls] bridge ${f2(bridge.cpuMsPerCallSecond)} ms/call-s (${f1(bridge.corePct)}% core), floor ${f2(step.floor?.cpuMsPerCallSecond)}, ratio ${step.cpuRatio ?? '–'}; RTT p50/p99 ${pair(r?.rttMs.p50, r?.rttMs.p99)} ms; lost ${r?.frames.lost ?? '–'}; RSS ${f1(bridge.rssSteadyMb)} MB (${f1(bridge.rssGrowthKbPerCall)} KB/call)` +
          (bridge.soak?.rssGrowthMb !== undefined ? `; soak RSS growth after minute 1 ${f2(bridge.soak.rssGrowthMb)} MB` : '') +
          '\n',
      );
      await sleep(500);
    }
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
  const file = writeJson(true);
  process.stdout.write(`${render(machine, opts, steps)}\n\nJSON: ${file}\n`);
  const allOk = steps.every((s) => s.bridge.ok && (s.floor?.ok ?? true));
  process.exitCode = allOk ? 0 : 1;
}

main().catch((err: unknown) => {
  process.stderr.write(`bench: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  killAll('SIGKILL');
  process.exit(1);
});
