/**
 * The harness of the real-process tests (`processCmd.test.ts`, `processStart.test.ts`):
 * children started in their own process groups and always killed, a fresh data directory each,
 * the Twilio simulator to drive calls, and dist/ built once per run whatever the number of files.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll } from 'vitest';
import { speechLikeSignal } from '../src/audio/signal.js';
import { placeCall, type FakeTwilioStream, type SimCallResult } from '../src/sim/twilioSim.js';
export { freePort } from '../src/util/freePort.js';
import { freePort } from '../src/util/freePort.js';

export const ROOT = fileURLToPath(new URL('..', import.meta.url));
export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Every variable src/config.ts knows, so a developer's `.env` in the repo cannot leak into these runs. */
export function configKeys(): string[] {
  const src = readFileSync(join(ROOT, 'src/config.ts'), 'utf8');
  const start = src.indexOf('const envSchema = z.object({');
  const body = src.slice(start, src.indexOf('\n});', start));
  return [...body.matchAll(/^ {2}([A-Z][A-Z0-9_]*):/gm)].map((m) => m[1]!);
}
export const CONFIG_KEYS = configKeys();

/** `npm start` without `exec`: the production command, as the Dockerfile's CMD also runs it. */
export function productionCommand(): string[] {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: { start: string } };
  return pkg.scripts.start.trim().split(/\s+/).filter((w, i) => !(i === 0 && w === 'exec'));
}


// ---------------------------------------------------------------------------
// Children: every one is started in its own process group and killed after each test.
// ---------------------------------------------------------------------------

export interface Child {
  proc: ChildProcess;
  pid: number;
  url: string;
  port: number;
  stdout: string;
  stderr: string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }>;
  exit?: { code: number | null; signal: NodeJS.Signals | null; at: number };
  /** Parsed JSON log lines from stdout. */
  logs(): Array<Record<string, unknown>>;
  tail(): string;
}

const children: Child[] = [];
const dataDirs: string[] = [];

/** Removes `dir` after the file's tests. */
export function removeAfterAll(dir: string): void {
  dataDirs.push(dir);
}

export function killGroup(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}
/** Last resort if the worker dies without running afterAll. */
export const killAllSync = (): void => {
  for (const c of children) killGroup(c.pid);
};

/**
 * Registers the file's hooks: dist/ built once from the current sources (shared by every process
 * test file, see buildDistOnce), every child killed after each test, data directories removed.
 */
export function useProcessHarness(): void {
  process.once('exit', killAllSync);
  beforeAll(() => buildDistOnce(), 150_000);
  afterEach(async () => {
    for (const c of children.splice(0)) {
      killGroup(c.pid);
      await Promise.race([c.exited, sleep(2000)]);
    }
  });
  afterAll(() => {
    killAllSync();
    process.removeListener('exit', killAllSync);
    for (const d of dataDirs.splice(0)) rmSync(d, { recursive: true, force: true });
  });
}

export interface StartOptions {
  /** argv; default the production command (`npm start` without npm, the Dockerfile CMD). */
  command?: string[];
  env?: Record<string, string>;
  port?: number;
  /** Reuse a data directory (a restart); default: a fresh one. */
  dataDir?: string;
}

export async function start(opts: StartOptions = {}): Promise<Child> {
  const port = opts.port ?? (await freePort());
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'playline-data-'));
  if (opts.dataDir === undefined) dataDirs.push(dataDir);
  const env: Record<string, string> = {
    PATH: `${dirname(process.execPath)}:${process.env.PATH ?? ''}`,
    HOME: process.env.HOME ?? tmpdir(),
    ...(process.env.TMPDIR !== undefined ? { TMPDIR: process.env.TMPDIR } : {}),
    // Blank (= default) unless set below; blanks also win over a stray .env in the repo.
    ...Object.fromEntries(CONFIG_KEYS.map((k) => [k, ''])),
    PORT: String(port),
    HOST: '127.0.0.1',
    LOG_LEVEL: 'info',
    DATA_DIR: dataDir,
    ...opts.env,
  };
  const [cmd = 'node', ...args] = opts.command ?? productionCommand();
  const proc = spawn(cmd === 'node' ? process.execPath : cmd, args, { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  if (proc.pid === undefined) throw new Error(`could not spawn ${cmd}`);
  const child: Child = {
    proc,
    pid: proc.pid,
    port,
    url: `http://127.0.0.1:${port}`,
    stdout: '',
    stderr: '',
    exited: new Promise((resolve) => {
      proc.once('exit', (code, signal) => {
        child.exit = { code, signal, at: performance.now() };
        resolve(child.exit);
      });
    }),
    logs() {
      return child.stdout
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .flatMap((l) => {
          try {
            return [JSON.parse(l) as Record<string, unknown>];
          } catch {
            return [];
          }
        });
    },
    tail() {
      return `--- stdout ---\n${child.stdout.slice(-3000)}\n--- stderr ---\n${child.stderr.slice(-3000)}`;
    },
  };
  proc.stdout!.setEncoding('utf8').on('data', (d: string) => (child.stdout += d));
  proc.stderr!.setEncoding('utf8').on('data', (d: string) => (child.stderr += d));
  children.push(child);
  return child;
}

export async function get(url: string, timeoutMs = 1000): Promise<{ status: number; body: unknown } | undefined> {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
    const text = await res.text();
    let body: unknown = text;
    try {
      body = JSON.parse(text);
    } catch {
      /* not JSON */
    }
    return { status: res.status, body };
  } catch {
    return undefined; // connection refused, reset or timed out
  }
}

export async function waitHealthy(c: Child, timeoutMs = 15_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    if (c.exit !== undefined) throw new Error(`the server exited (${JSON.stringify(c.exit)}) before /healthz answered\n${c.tail()}`);
    const r = await get(`${c.url}/healthz`, 500);
    if (r?.status === 200) return;
    await sleep(50);
  }
  throw new Error(`/healthz did not answer within ${timeoutMs} ms\n${c.tail()}`);
}

export async function waitExit(c: Child, timeoutMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }> {
  const r = await Promise.race([c.exited, sleep(timeoutMs).then(() => undefined)]);
  if (r === undefined) throw new Error(`the process did not exit within ${timeoutMs} ms\n${c.tail()}`);
  return r;
}

export async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Places a call and resolves once its media is flowing both ways. */
export async function liveCall(c: Child, opts: { audioMs: number; waitForBridgeHangup?: boolean; authToken?: string }) {
  let stream: FakeTwilioStream | undefined;
  const result: Promise<SimCallResult> = placeCall({
    bridgeUrl: c.url,
    audio: speechLikeSignal({ durationMs: opts.audioMs }),
    waitForBridgeHangup: opts.waitForBridgeHangup ?? false,
    maxDurationMs: 30_000,
    // No status callback: Twilio sends it after the stream has closed, and a drained process may
    // already have stopped listening by then (see the report); these tests are about the call.
    statusCallback: false,
    ...(opts.authToken !== undefined ? { authToken: opts.authToken } : {}),
    onStream: (s) => (stream = s),
  });
  await waitFor('the call to be live (agent audio coming back)', () => (stream?.mediaReceived ?? 0) >= 10, 5000);
  return { stream: stream!, result };
}

/** `pid ppid pgid args` of every process. */
export function processTable(): Array<{ pid: number; ppid: number; pgid: number; args: string }> {
  return execFileSync('ps', ['-eo', 'pid=,ppid=,pgid=,args='], { encoding: 'utf8' })
    .split('\n')
    .map((l) => /^\s*(\d+)\s+(\d+)\s+(\d+)\s+(.*)$/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ pid: Number(m[1]), ppid: Number(m[2]), pgid: Number(m[3]), args: m[4] ?? '' }));
}

export const message = (r: Record<string, unknown>) => r.msg;
/** The first signal's line: `shutting down`, with how to force it when calls are live. */
export const isShutdownLine = (r: Record<string, unknown>) => String(r.msg).startsWith('shutting down');
export const FORCE_HINT = 'send SIGINT/SIGTERM again (Ctrl-C twice, more than 2 s apart) to end every call now';

/**
 * Builds dist/ from the current sources once per test run, whichever process-test file gets
 * here first: a lock directory makes the others wait for that build instead of racing it.
 */
export async function buildDistOnce(): Promise<void> {
  const lock = join(ROOT, 'dist', '.test-build-lock');
  const stamp = join(ROOT, 'dist', '.build-stamp');
  const runStart = Number(process.env.VITEST_RUN_STARTED_AT ?? '0');
  mkdirSync(join(ROOT, 'dist'), { recursive: true });
  const fresh = (): boolean => {
    try {
      return statSync(stamp).mtimeMs >= runStart && runStart > 0;
    } catch {
      return false;
    }
  };
  for (const deadline = performance.now() + 140_000; performance.now() < deadline; ) {
    if (fresh()) return;
    try {
      mkdirSync(lock);
    } catch {
      // Another file is building: wait for it (a stale lock older than 3 minutes is taken over).
      try {
        if (Date.now() - statSync(lock).mtimeMs > 180_000) rmSync(lock, { recursive: true, force: true });
      } catch {
        /* gone meanwhile */
      }
      await sleep(200);
      continue;
    }
    try {
      if (fresh()) return;
      await new Promise<void>((resolve, reject) => {
        execFile('npm', ['run', 'build', '--silent'], { cwd: ROOT, timeout: 120_000 }, (err, stdout, stderr) =>
          err ? reject(new Error(`npm run build failed: ${err.message}\n${stdout}${stderr}`)) : resolve(),
        );
      });
      return;
    } finally {
      rmSync(lock, { recursive: true, force: true });
    }
  }
  throw new Error('timed out waiting for another test file to build dist/');
}
