/**
 * The real process, as users and the Docker image run it: `node dist/main.js` (the image's CMD)
 * and `npm start`, on 127.0.0.1, in local mode, driven by the Twilio simulator. Checks the
 * graceful drain on SIGTERM/SIGINT, the goodbye at the drain timeout, that `npm start` hands
 * SIGTERM to the server, and that a bad setting stops the start with a message.
 */
import { execFile, execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer as createHttpServer, type IncomingMessage, type Server } from 'node:http';
import { createServer as createNetServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { speechLikeSignal } from '../src/audio/signal.js';
import { FakeTwilioRest } from '../src/testing/fakeTwilioRest.js';
import { placeCall, postVoiceWebhook, type FakeTwilioStream, type SimCallResult } from '../src/sim/twilioSim.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** Every variable src/config.ts knows, so a developer's `.env` in the repo cannot leak into these runs. */
function configKeys(): string[] {
  const src = readFileSync(join(ROOT, 'src/config.ts'), 'utf8');
  const start = src.indexOf('const envSchema = z.object({');
  const body = src.slice(start, src.indexOf('\n});', start));
  return [...body.matchAll(/^ {2}([A-Z][A-Z0-9_]*):/gm)].map((m) => m[1]!);
}
const CONFIG_KEYS = configKeys();

/** `npm start` without `exec`: the production command, as the Dockerfile's CMD also runs it. */
function productionCommand(): string[] {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { scripts: { start: string } };
  return pkg.scripts.start.trim().split(/\s+/).filter((w, i) => !(i === 0 && w === 'exec'));
}

async function freePort(): Promise<number> {
  const srv = createNetServer();
  await new Promise<void>((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => resolve());
  });
  const { port } = srv.address() as AddressInfo;
  await new Promise<void>((resolve) => srv.close(() => resolve()));
  return port;
}

// ---------------------------------------------------------------------------
// Children: every one is started in its own process group and killed after each test.
// ---------------------------------------------------------------------------

interface Child {
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

function killGroup(pid: number): void {
  try {
    process.kill(-pid, 'SIGKILL');
  } catch {
    /* already gone */
  }
}
/** Last resort if the worker dies without running afterAll. */
const killAllSync = (): void => {
  for (const c of children) killGroup(c.pid);
};
process.once('exit', killAllSync);

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

interface StartOptions {
  /** argv; default the production command (`npm start` without npm, the Dockerfile CMD). */
  command?: string[];
  env?: Record<string, string>;
  port?: number;
  /** Reuse a data directory (a restart); default: a fresh one. */
  dataDir?: string;
}

async function start(opts: StartOptions = {}): Promise<Child> {
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

async function get(url: string, timeoutMs = 1000): Promise<{ status: number; body: unknown } | undefined> {
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

async function waitHealthy(c: Child, timeoutMs = 15_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (performance.now() < deadline) {
    if (c.exit !== undefined) throw new Error(`the server exited (${JSON.stringify(c.exit)}) before /healthz answered\n${c.tail()}`);
    const r = await get(`${c.url}/healthz`, 500);
    if (r?.status === 200) return;
    await sleep(50);
  }
  throw new Error(`/healthz did not answer within ${timeoutMs} ms\n${c.tail()}`);
}

async function waitExit(c: Child, timeoutMs: number): Promise<{ code: number | null; signal: NodeJS.Signals | null; at: number }> {
  const r = await Promise.race([c.exited, sleep(timeoutMs).then(() => undefined)]);
  if (r === undefined) throw new Error(`the process did not exit within ${timeoutMs} ms\n${c.tail()}`);
  return r;
}

async function waitFor(what: string, check: () => boolean | Promise<boolean>, timeoutMs: number): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!(await check())) {
    if (performance.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(10);
  }
}

/** Places a call and resolves once its media is flowing both ways. */
async function liveCall(c: Child, opts: { audioMs: number; waitForBridgeHangup?: boolean; authToken?: string }) {
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
function processTable(): Array<{ pid: number; ppid: number; pgid: number; args: string }> {
  return execFileSync('ps', ['-eo', 'pid=,ppid=,pgid=,args='], { encoding: 'utf8' })
    .split('\n')
    .map((l) => /^\s*(\d+)\s+(\d+)\s+(\d+)\s+(.*)$/.exec(l))
    .filter((m): m is RegExpExecArray => m !== null)
    .map((m) => ({ pid: Number(m[1]), ppid: Number(m[2]), pgid: Number(m[3]), args: m[4] ?? '' }));
}

const message = (r: Record<string, unknown>) => r.msg;
/** The first signal's line: `shutting down`, with how to force it when calls are live. */
const isShutdownLine = (r: Record<string, unknown>) => String(r.msg).startsWith('shutting down');
const FORCE_HINT = 'send SIGINT/SIGTERM again (Ctrl-C twice, more than 2 s apart) to end every call now';

// ---------------------------------------------------------------------------

beforeAll(async () => {
  // The image and `npm start` run the compiled dist/; build it from the current sources once.
  await new Promise<void>((resolve, reject) => {
    execFile('npm', ['run', 'build', '--silent'], { cwd: ROOT, timeout: 90_000 }, (err, stdout, stderr) =>
      err ? reject(new Error(`npm run build failed: ${err.message}\n${stdout}${stderr}`)) : resolve(),
    );
  });
}, 120_000);

describe('node dist/main.js (the Docker CMD)', () => {
  it('drains on SIGTERM: /readyz 503 at once, new calls refused, the live call runs to its end, exit 0', async () => {
    const drainS = 20;
    const c = await start({ env: { DRAIN_TIMEOUT_S: String(drainS), LOCAL_AGENT_MODE: 'echo' } });
    await waitHealthy(c);
    expect((await get(`${c.url}/readyz`))?.status).toBe(200);
    const { stream, result } = await liveCall(c, { audioMs: 4000 });

    const tTerm = performance.now();
    process.kill(c.pid, 'SIGTERM');
    // Readiness flips at once.
    let ready = await get(`${c.url}/readyz`);
    while (ready?.status !== 503 && performance.now() - tTerm < 2000) ready = await get(`${c.url}/readyz`);
    const flipMs = performance.now() - tTerm;
    expect(ready?.status, c.tail()).toBe(503);
    expect(flipMs, '/readyz answered 503 within ~200 ms of SIGTERM').toBeLessThan(250);
    expect(ready?.body).toMatchObject({ ready: false, draining: true, liveCalls: 1 });
    expect((await get(`${c.url}/healthz`))?.status, 'still alive while draining').toBe(200);

    // A new call is refused at the webhook: TwiML without a <Stream>.
    const refused = await postVoiceWebhook({ bridgeUrl: c.url });
    expect(refused.status).toBe(200);
    expect(refused.twiml, refused.body).toBeDefined();
    expect(refused.twiml!.streamUrl).toBeUndefined();
    expect(refused.body).not.toMatch(/<Stream/i);
    expect(refused.twiml!.hangup || refused.twiml!.reject).toBe(true);

    // The live call keeps flowing: its audio keeps being echoed back.
    const before = stream.mediaReceived;
    await sleep(600);
    expect(stream.mediaReceived - before, 'frames echoed in the 600 ms after SIGTERM').toBeGreaterThanOrEqual(20);
    expect(c.exit, 'still running while a call is live').toBeUndefined();

    // ... and ends normally, by the caller.
    const r = await result;
    const tCallEnd = performance.now();
    expect(r.endedBy).toBe('caller');
    expect(r.error).toBeUndefined();
    expect(r.protocolViolations).toEqual([]);
    expect(r.mediaReceived).toBeGreaterThan(r.framesSent * 0.9);

    // Then the process exits 0 on its own, well before the drain timeout.
    const exit = await waitExit(c, 5000);
    expect(exit, c.tail()).toMatchObject({ code: 0, signal: null });
    expect(exit.at - tTerm).toBeLessThan(drainS * 1000);
    expect(exit.at - tCallEnd, 'exits soon after the last call ended').toBeLessThan(3000);
    const logs = c.logs();
    expect(logs.find((l) => isShutdownLine(l))).toMatchObject({ signal: 'SIGTERM', liveCalls: 1 });
    expect(String(logs.find((l) => isShutdownLine(l))?.msg), 'the first line says how to force the end').toContain(FORCE_HINT);
    expect(logs.find((l) => message(l) === 'call ended')).toMatchObject({ outcome: 'caller_hangup' });
    expect(logs.find((l) => message(l) === 'stopped')).toMatchObject({ endedByDrain: 0 });
    expect(await get(`${c.url}/healthz`), 'nothing listens any more').toBeUndefined();
  });

  it('ends a call still live at DRAIN_TIMEOUT_S (1 s) and exits 0', async () => {
    const c = await start({ env: { DRAIN_TIMEOUT_S: '1', LOCAL_AGENT_MODE: 'echo' } });
    await waitHealthy(c);
    const { stream, result } = await liveCall(c, { audioMs: 2000, waitForBridgeHangup: true });

    const tTerm = performance.now();
    process.kill(c.pid, 'SIGTERM');
    await stream.whenClosed;
    const closedAfter = performance.now() - tTerm;
    const r = await result;
    expect(r.endedBy, 'the bridge closed the stream').toBe('bridge');
    expect(r.protocolViolations).toEqual([]);
    expect(r.timedOut).toBeUndefined();
    expect(closedAfter, 'not before the drain timeout').toBeGreaterThanOrEqual(900);
    expect(closedAfter, 'soon after the drain timeout').toBeLessThan(2500);

    const exit = await waitExit(c, 5000);
    expect(exit, c.tail()).toMatchObject({ code: 0, signal: null });
    expect(exit.at - tTerm).toBeLessThan(4000);
    const logs = c.logs();
    expect(logs.find((l) => message(l) === 'drain timeout: ending the remaining calls with a goodbye')).toMatchObject({ liveCalls: 1 });
    expect(logs.find((l) => message(l) === 'call ended')).toMatchObject({ outcome: 'shutdown' });
    expect(logs.find((l) => message(l) === 'stopped')).toMatchObject({ endedByDrain: 1 });
  });

  it('with Twilio credentials, the drain timeout says GOODBYE_TEXT through the REST API before the call ends', async () => {
    // A stand-in for api.twilio.com (TWILIO_API_URL) that records call updates.
    const updates: Array<{ path: string; form: URLSearchParams; auth: string | undefined }> = [];
    const rest: Server = createHttpServer((req: IncomingMessage, res) => {
      let body = '';
      req.setEncoding('utf8').on('data', (d: string) => (body += d));
      req.on('end', () => {
        updates.push({ path: req.url ?? '', form: new URLSearchParams(body), auth: req.headers.authorization });
        const sid = /Calls\/(CA[0-9a-f]{32})\.json/.exec(req.url ?? '')?.[1] ?? '';
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ sid, status: 'in-progress' }));
      });
    });
    await new Promise<void>((resolve) => rest.listen(0, '127.0.0.1', () => resolve()));
    try {
      const restUrl = `http://127.0.0.1:${(rest.address() as AddressInfo).port}`;
      const port = await freePort();
      const authToken = 'process-test-auth-token';
      const accountSid = `AC${'1'.repeat(32)}`;
      const goodbye = 'Playline is restarting. Goodbye.';
      const c = await start({
        port,
        env: {
          DRAIN_TIMEOUT_S: '1',
          LOCAL_AGENT_MODE: 'echo',
          TWILIO_ACCOUNT_SID: accountSid,
          TWILIO_AUTH_TOKEN: authToken,
          PUBLIC_URL: `http://127.0.0.1:${port}`,
          TWILIO_API_URL: restUrl,
          CALL_CONTROL_GRACE_MS: '300',
          GOODBYE_TEXT: goodbye,
        },
      });
      await waitHealthy(c);
      const { stream, result } = await liveCall(c, { audioMs: 2000, waitForBridgeHangup: true, authToken });
      const tTerm = performance.now();
      process.kill(c.pid, 'SIGTERM');
      const r = await result;
      expect(r.endedBy).toBe('bridge');
      expect(performance.now() - tTerm).toBeGreaterThanOrEqual(900);
      expect(updates, c.tail()).toHaveLength(1);
      const u = updates[0]!;
      expect(u.path).toBe(`/2010-04-01/Accounts/${accountSid}/Calls/${stream.callSid}.json`);
      expect(u.auth).toBe(`Basic ${Buffer.from(`${accountSid}:${authToken}`).toString('base64')}`);
      const twiml = u.form.get('Twiml') ?? '';
      expect(twiml).toContain(`<Say>${goodbye}</Say>`);
      expect(twiml).toContain('<Hangup/>');
      const exit = await waitExit(c, 5000);
      expect(exit, c.tail()).toMatchObject({ code: 0, signal: null });
    } finally {
      await new Promise<void>((resolve) => rest.close(() => resolve()));
    }
  });

  it('drains on SIGINT too', async () => {
    const c = await start();
    await waitHealthy(c);
    process.kill(c.pid, 'SIGINT');
    const exit = await waitExit(c, 5000);
    expect(exit, c.tail()).toMatchObject({ code: 0, signal: null });
    expect(c.logs().find((l) => isShutdownLine(l))).toMatchObject({ signal: 'SIGINT', liveCalls: 0 });
  });

  it('counts a second SIGINT 50 ms after the first as the same one (Ctrl-C reaches npm and node): the live call drains, none is ended', async () => {
    const c = await start({ env: { DRAIN_TIMEOUT_S: '20', LOCAL_AGENT_MODE: 'echo' } });
    await waitHealthy(c);
    const { stream, result } = await liveCall(c, { audioMs: 3000 });
    process.kill(c.pid, 'SIGINT');
    await sleep(50);
    process.kill(c.pid, 'SIGINT');
    const before = stream.mediaReceived;
    await sleep(500);
    expect(stream.mediaReceived - before, 'frames echoed in the 500 ms after the second SIGINT').toBeGreaterThanOrEqual(15);
    const r = await result;
    expect(r.endedBy, c.tail()).toBe('caller');
    expect(r.protocolViolations).toEqual([]);
    const exit = await waitExit(c, 5000);
    expect(exit, c.tail()).toMatchObject({ code: 0, signal: null });
    const logs = c.logs();
    expect(logs.find((l) => isShutdownLine(l))).toMatchObject({ signal: 'SIGINT', liveCalls: 1 });
    expect(logs.find((l) => String(l.msg).includes('still draining'))).toMatchObject({ signal: 'SIGINT' });
    expect(logs.find((l) => message(l) === 'second signal: ending every call now')).toBeUndefined();
    expect(logs.filter((l) => message(l) === 'call ended').map((l) => l.outcome)).toEqual(['caller_hangup']);
    expect(logs.find((l) => message(l) === 'stopped')).toMatchObject({ endedByDrain: 0 });
  });

  it('ends every live call at once on a second signal more than 2 s after the first', async () => {
    const c = await start({ env: { DRAIN_TIMEOUT_S: '60', LOCAL_AGENT_MODE: 'echo' } });
    await waitHealthy(c);
    const { stream, result } = await liveCall(c, { audioMs: 20_000, waitForBridgeHangup: true });
    process.kill(c.pid, 'SIGINT');
    await sleep(2300);
    expect(c.exit, 'still draining 2.3 s after the first SIGINT').toBeUndefined();
    const before = stream.mediaReceived;
    await sleep(200);
    expect(stream.mediaReceived - before, 'the call is still live before the second signal').toBeGreaterThan(0);

    const tForce = performance.now();
    process.kill(c.pid, 'SIGINT');
    const r = await result;
    expect(r.endedBy, c.tail()).toBe('bridge');
    expect(performance.now() - tForce, 'the call ends at once, not at the drain timeout').toBeLessThan(2000);
    const exit = await waitExit(c, 5000);
    expect(exit, c.tail()).toMatchObject({ code: 0, signal: null });
    const logs = c.logs();
    expect(logs.find((l) => message(l) === 'second signal: ending every call now')).toMatchObject({ signal: 'SIGINT', liveCalls: 1 });
    expect(logs.find((l) => message(l) === 'call ended'), c.tail()).toMatchObject({ outcome: 'shutdown' });
  });

  it('logs the URLs to open and the commands to try when ready, and warns about a misspelt setting', async () => {
    const c = await start({ env: { MAX_CONCURENT_CALLS: '3' } });
    await waitHealthy(c);
    await waitFor('the ready line', () => c.logs().some((l) => String(l.msg).startsWith('playline ready')), 2000);
    const ready = c.logs().find((l) => String(l.msg).startsWith('playline ready'))!;
    expect(ready).toMatchObject({ url: c.url, docs: `${c.url}/docs`, metrics: `${c.url}/metrics` });
    expect(String(ready.msg)).toContain(`npm run call -- --url ${c.url}`);
    expect(String(ready.msg)).toContain(`npm run campaign -- examples/contacts.csv --url ${c.url}`);
    expect(c.logs().find((l) => l.variable === 'MAX_CONCURENT_CALLS')).toMatchObject({
      level: 40,
      suggestion: 'MAX_CONCURRENT_CALLS',
      msg: 'MAX_CONCURENT_CALLS is not a Playline setting and is ignored: did you mean MAX_CONCURRENT_CALLS?',
    });
    expect(c.logs().filter((l) => l.variable !== undefined), 'no warning for PATH, HOME or npm variables').toHaveLength(1);
  });

  it('stops with one line naming DATA_DIR, the OS error and the fix when DATA_DIR cannot be created, exit 1', async () => {
    const parent = mkdtempSync(join(tmpdir(), 'playline-data-'));
    dataDirs.push(parent);
    writeFileSync(join(parent, 'file'), 'not a directory');
    const dataDir = join(parent, 'file', 'data');
    const c = await start({ dataDir });
    const exit = await waitExit(c, 10_000);
    expect(exit.code, c.tail()).toBe(1);
    expect(c.stderr).toBe(`playline: cannot start: DATA_DIR ${dataDir} is not a directory, or a part of its path is a file (ENOTDIR: not a directory, mkdir '${dataDir}'): point DATA_DIR at a directory\n`);
    expect(c.stdout, 'nothing started before the data directory was checked').toBe('');
  });

  it('refuses a bad configuration: non-zero exit, a message naming the variable, nothing listening', async () => {
    const port = await freePort();
    for (const [name, value] of [
      ['PORT', 'abc'],
      ['LOG_LEVEL', 'loud'],
      ['DRAIN_TIMEOUT_S', '-5'],
    ] as const) {
      const c = await start({ port, env: { [name]: value } });
      const exit = await waitExit(c, 10_000);
      expect(exit.code, c.tail()).not.toBe(0);
      expect(exit.code).not.toBeNull();
      expect(c.stderr).toMatch(new RegExp(`configuration error: .*\\b${name}: "${value}" is not `));
      expect(await get(`http://127.0.0.1:${port}/healthz`)).toBeUndefined();
    }
  });
});

describe('npm start', () => {
  it('passes SIGTERM to the server: the server drains and exits, then npm exits, and no server is left behind', async () => {
    const c = await start({ command: ['npm', 'start'] });
    // dist/ is fresh from beforeAll, so prestart has nothing to build; allow for it anyway.
    await waitHealthy(c, 60_000);

    // The server process is a descendant of npm (in npm's process group).
    const servers = processTable().filter((p) => p.pgid === c.pid && p.pid !== c.pid && /\bdist\/main\.js\b/.test(p.args) && !p.args.startsWith('sh '));
    expect(servers.length, `node dist/main.js under npm:\n${JSON.stringify(processTable().filter((p) => p.pgid === c.pid))}`).toBe(1);
    const server = servers[0]!;

    // SIGTERM to npm only, as `docker stop`, systemd or a terminal's kill would send it.
    const tTerm = performance.now();
    process.kill(c.pid, 'SIGTERM');
    const exit = await waitExit(c, 10_000);
    expect(exit.at - tTerm, 'npm exits within a few seconds').toBeLessThan(5000);

    // The server got the signal: it stops listening and its process is gone.
    await waitFor('the port to stop answering', async () => (await get(`${c.url}/healthz`, 300)) === undefined, 5000).catch(() => {
      throw new Error(`npm exited but node dist/main.js (pid ${server.pid}) still answers on ${c.url}: npm start did not pass SIGTERM to the server\n${c.tail()}`);
    });
    const alive = (pid: number) => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    await waitFor('the server process to exit', () => !alive(server.pid), 5000).catch(() => {
      throw new Error(`node dist/main.js (pid ${server.pid}) is still running after npm exited`);
    });
    const left = processTable().filter((p) => p.pgid === c.pid);
    expect(left, 'processes left from npm start').toEqual([]);
    expect(c.logs().find((l) => isShutdownLine(l)), `the server logged its drain\n${c.tail()}`).toMatchObject({ signal: 'SIGTERM' });
    expect(c.logs().find((l) => message(l) === 'stopped')).toBeDefined();
    expect(exit.code, c.tail()).toBe(0);
  });
});

describe('npm start in a terminal', () => {
  it('Ctrl-C (SIGINT to npm and node together, npm passing its copy on) drains the live call instead of ending it', async () => {
    const c = await start({ command: ['npm', 'start'], env: { DRAIN_TIMEOUT_S: '20', LOCAL_AGENT_MODE: 'echo' } });
    await waitHealthy(c, 60_000);
    const { result } = await liveCall(c, { audioMs: 3000 });
    // What a terminal does on Ctrl-C: SIGINT to every process of the foreground group.
    process.kill(-c.pid, 'SIGINT');
    const r = await result;
    expect(r.endedBy, c.tail()).toBe('caller');
    await waitExit(c, 10_000);
    const logs = c.logs();
    expect(logs.find((l) => isShutdownLine(l)), c.tail()).toMatchObject({ signal: 'SIGINT', liveCalls: 1 });
    expect(logs.find((l) => message(l) === 'second signal: ending every call now')).toBeUndefined();
    expect(logs.filter((l) => message(l) === 'call ended').map((l) => l.outcome)).toEqual(['caller_hangup']);
  });
});

describe('restart after kill -9 in the middle of a campaign', () => {
  it('dials nobody twice and forgets nobody', async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    // Creates are answered 500 ms late, so the crash also catches dials the carrier made but the bridge never heard back about.
    const rest = await FakeTwilioRest.start({ bridgeUrl: url, outcomeFor: () => 'answered', talkMs: 1500, ringMs: [100, 400], createResponseDelayMs: 500 });
    try {
      const dataDir = mkdtempSync(join(tmpdir(), 'playline-data-'));
      dataDirs.push(dataDir);
      const token = 'api-token-0123456789abcdef';
      const env = {
        TWILIO_ACCOUNT_SID: rest.accountSid,
        TWILIO_AUTH_TOKEN: rest.authToken,
        PUBLIC_URL: url,
        TWILIO_API_URL: rest.url,
        API_TOKEN: token,
        DEFAULT_CALLER_ID: '+14155550100',
        OUTBOUND_MAX_CPS: '10',
        MAX_EVENT_LOOP_DELAY_MS: '0',
        LOG_LEVEL: 'warn',
      };
      const auth = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
      const first = await start({ env, port, dataDir });
      await waitHealthy(first);
      const contacts = Array.from({ length: 60 }, (_, i) => ({ phone: `+1415555${String(5000 + i)}` }));
      const res = await fetch(`${url}/v1/campaigns`, {
        method: 'POST',
        headers: auth,
        body: JSON.stringify({ name: 'crash', settings: { callsPerSecond: 10, maxConcurrent: 20, retry: { maxAttempts: 1 } }, contacts, start: true }),
      });
      expect(res.status).toBe(201);
      const id = ((await res.json()) as { campaign: { id: string } }).campaign.id;
      // Mid-campaign: some contacts dialed, some in flight, most still pending.
      await waitFor('20 dials', () => rest.creates.length >= 20, 20_000);
      killGroup(first.pid);
      await waitExit(first, 5000);
      const dialsBeforeCrash = rest.creates.filter((c) => c.httpStatus === 201).length;

      const second = await start({ env: { ...env, LOG_LEVEL: 'info' }, port, dataDir });
      await waitHealthy(second);
      let campaign: { status: string; progress: { counts: { byState: Record<string, number>; byOutcome: Record<string, number> } } } | undefined;
      await waitFor(
        'the campaign to complete after the restart',
        async () => {
          const r = await fetch(`${url}/v1/campaigns/${id}`, { headers: auth });
          campaign = (await r.json()) as typeof campaign;
          return campaign?.status === 'completed';
        },
        60_000,
      ).catch((err: unknown) => {
        throw new Error(`${(err as Error).message}: ${JSON.stringify(campaign)}\n${second.tail()}`);
      });
      const dials = new Map<string, number>();
      for (const c of rest.creates) if (c.httpStatus === 201) dials.set(c.to, (dials.get(c.to) ?? 0) + 1);
      const twice = [...dials].filter(([, n]) => n > 1);
      expect(twice, 'numbers dialed more than once').toEqual([]);
      expect(dials.size).toBe(60);
      expect(campaign!.progress.counts.byState).toEqual({ pending: 0, dialing: 0, done: 60 });
      expect(campaign!.progress.counts.byOutcome).toEqual({ answered: 60 });
      const reconciled = second.logs().find((l) => l.msg === 'reconciled unfinished calls') as { attached?: number; voided?: number; finished?: number } | undefined;
      expect(reconciled?.attached ?? 0, 'claimed dials found at the carrier after the restart').toBeGreaterThan(0);
      process.stdout.write(
        `kill -9 restart: ${dialsBeforeCrash} dials before the crash (reconciled: ${JSON.stringify(reconciled)}), ${rest.creates.length} creates in all, 60 numbers, 0 dialed twice\n`,
      );
    } finally {
      await rest.close();
    }
  }, 120_000);
});
