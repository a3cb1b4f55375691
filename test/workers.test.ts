/**
 * `WORKERS=N`: one real `node dist/main.js` whose primary forks N workers behind one port, with a
 * real redis-server (REDIS_URL). Both workers serve, a killed worker is replaced, SIGTERM drains
 * every worker and exits 0; WORKERS>1 without REDIS_URL stops the boot saying why.
 * The Redis cases are skipped without redis-server unless PLAYLINE_REQUIRE_REDIS=1.
 */
import { request } from 'node:http';
import { availableParallelism } from 'node:os';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.js';
import { restartDelayMs } from '../src/workers.js';
import { formatWorkersBench, type SetupResult } from '../src/bench/workers.js';
import { fleetTestsEnabled, useTestRedis } from './fleetRedis.js';
import { liveCall, start, useProcessHarness, waitExit, waitFor, waitHealthy, type Child } from './processHarness.js';

const enabled = fleetTestsEnabled();

/** GET /readyz on a new connection each time (so the cluster may hand it to any worker). */
function readyz(c: Child): Promise<{ status: number; pid: number; worker: number | undefined; draining: boolean } | undefined> {
  return new Promise((resolve) => {
    const req = request(`${c.url}/readyz`, { agent: false, timeout: 1000 }, (res) => {
      let text = '';
      res.setEncoding('utf8').on('data', (d: string) => (text += d));
      res.on('end', () => {
        try {
          const body: unknown = JSON.parse(text);
          if (typeof body !== 'object' || body === null || !('pid' in body) || typeof body.pid !== 'number') return resolve(undefined);
          const worker = 'worker' in body && typeof body.worker === 'number' ? body.worker : undefined;
          const draining = 'draining' in body && body.draining === true;
          resolve({ status: res.statusCode ?? 0, pid: body.pid, worker, draining });
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

/** The worker pids answering /readyz, polled until `count` distinct ones answered. */
async function workerPids(c: Child, count: number, exclude: ReadonlySet<number> = new Set()): Promise<Map<number, number>> {
  const seen = new Map<number, number>(); // pid -> worker slot
  await waitFor(`${count} workers answering /readyz`, async () => {
    const r = await readyz(c);
    if (r !== undefined && r.worker !== undefined && !exclude.has(r.pid)) seen.set(r.pid, r.worker);
    return seen.size >= count;
  }, 15_000);
  return seen;
}

describe('WORKERS setting', () => {
  it('WORKERS defaults to 1 (one process, no cluster) and auto means one worker per core', () => {
    expect(loadConfig({}).workers).toBe(1);
    expect(loadConfig({ WORKERS: 'auto', REDIS_URL: 'redis://127.0.0.1:6379' }).workers).toBe(Math.max(1, availableParallelism()));
    expect(loadConfig({ WORKERS: '3', REDIS_URL: 'redis://127.0.0.1:6379' }).workers).toBe(3);
  });

  it('WORKERS=0 or a word other than auto is refused naming WORKERS', () => {
    expect(() => loadConfig({ WORKERS: '0' })).toThrow(/^WORKERS: .*auto \(one per core\)/);
    expect(() => loadConfig({ WORKERS: 'many' })).toThrow(ConfigError);
  });

  it('WORKERS=2 without REDIS_URL is refused: says that capacity, stream tokens and call routing must be shared, and how to fix it', () => {
    expect(() => loadConfig({ WORKERS: '2' })).toThrow(/^WORKERS: 2 worker processes need REDIS_URL.*capacity.*stream tokens.*call routing.*set REDIS_URL=.*or WORKERS=1/);
  });

  it('a slot whose workers keep dying young waits twice as long each time, up to 30 s', () => {
    expect([1, 2, 3, 4, 5, 6, 7].map((n) => restartDelayMs(n))).toEqual([1000, 2000, 4000, 8000, 16_000, 30_000, 30_000]);
  });
});

describe('bench --workers report', () => {
  const summary = (p50: number, p99: number) => ({ count: 100, mean: p50, p50, p90: p99, p99, p999: p99, max: p99 });
  const setup = (name: string, perS: number, p50: number, refusals: SetupResult['refusals'] = []): SetupResult => ({
    name, workers: 1, redis: false, windowS: 10, admitted: perS * 10, notAdmitted: refusals.reduce((n, r) => n + r.count, 0), refusals,
    admittedPerS: perS, latency: summary(p50 * 10, p50 * 40), unloaded: summary(p50, p50 * 4),
  });

  it('prints each set-up with its rate and latencies, the others relative to the embedded one, and why calls were not admitted', () => {
    const text = formatWorkersBench({
      concurrency: 32, durationS: 10, cpus: 2,
      setups: [setup('embedded', 1000, 1), setup('fleet, WORKERS=2 + Redis', 1500, 3, [{ why: 'HTTP 200: <Response><Say>busy', count: 7 }])],
    });
    expect(text).toMatch(/^embedded\s+1000\s+10\.00\s+40\.00\s+0\s+1\.00\s+4\.00$/m);
    expect(text).toContain('fleet, WORKERS=2 + Redis: 1.50x the embedded rate; one webhook at a time p50 +2.00 ms, p99 +8.00 ms');
    expect(text).toContain('fleet, WORKERS=2 + Redis: 7 × HTTP 200: <Response><Say>busy');
  });
});

describe('WORKERS=2 without REDIS_URL (a real process)', () => {
  useProcessHarness();

  it('stops the boot with exit 1 and the message naming REDIS_URL and WORKERS=1, before forking anything', async () => {
    const c = await start({ env: { WORKERS: '2' } });
    const exit = await waitExit(c, 15_000);
    expect(exit.code).toBe(1);
    expect(c.stderr).toMatch(/configuration error: WORKERS: 2 worker processes need REDIS_URL/);
    expect(c.stderr).toMatch(/set REDIS_URL=redis:\/\/.* or WORKERS=1/);
    expect(c.stdout, 'no worker started').not.toMatch(/"worker":/);
  }, 30_000);
});

describe.skipIf(!enabled)('WORKERS=2 with a real redis-server', () => {
  useProcessHarness();
  const redis = useTestRedis();
  let n = 0;

  async function cluster(env: Record<string, string> = {}): Promise<Child> {
    const c = await start({ env: { WORKERS: '2', REDIS_URL: redis().url, FLEET_PREFIX: `w${++n}:`, FLEET_LEASE_MS: '2000', ...env } });
    await waitHealthy(c, 30_000);
    return c;
  }

  it('both workers serve the one port: /readyz answers from two worker pids (slots 1 and 2), neither the primary, and their log lines name the worker', async () => {
    const c = await cluster();
    const pids = await workerPids(c, 2);
    expect([...pids.keys()]).not.toContain(c.pid);
    expect([...pids.values()].sort()).toEqual([1, 2]);
    await waitFor('both workers logging that they serve', () => c.logs().filter((l) => String(l.msg).startsWith('playline ready on')).length >= 2, 5000);
    const readyLines = c.logs().filter((l) => String(l.msg).startsWith('playline ready on'));
    expect(readyLines.map((l) => l.worker).sort()).toEqual([1, 2]);
    expect(c.logs().some((l) => l.msg === '2 workers serving on one port' && l.worker === undefined), 'the primary logs without a worker id').toBe(true);
  }, 60_000);

  it('a worker killed with SIGKILL is replaced by a new one in the same slot, logged, while the other keeps serving', async () => {
    const c = await cluster();
    const pids = await workerPids(c, 2);
    const [victim, slot] = [...pids.entries()][0]!;
    process.kill(victim, 'SIGKILL');
    await waitFor('the primary logging the unexpected exit', () => c.logs().some((l) => String(l.msg).startsWith(`worker ${slot} exited unexpectedly`)), 5000);
    const line = c.logs().find((l) => String(l.msg).startsWith(`worker ${slot} exited unexpectedly`));
    expect(line).toMatchObject({ worker: slot, workerPid: victim, signal: 'SIGKILL', restartInMs: 1000 });
    const replaced = await workerPids(c, 1, new Set(pids.keys()));
    expect([...replaced.values()]).toEqual([slot]);
    expect(c.exit, 'the primary keeps running').toBeUndefined();
  }, 60_000);

  it('SIGTERM to the primary drains every worker (a live call is ended by DRAIN_TIMEOUT_S) and exits 0', async () => {
    const c = await cluster({ DRAIN_TIMEOUT_S: '1' });
    await workerPids(c, 2);
    const call = await liveCall(c, { audioMs: 30_000, waitForBridgeHangup: true });
    process.kill(c.pid, 'SIGTERM');
    const exit = await waitExit(c, 20_000);
    expect(exit.code).toBe(0);
    const result = await call.result;
    expect(result.endedBy, 'the bridge ended the call (the drain), not a broken socket').toBe('bridge');
    const stopped = c.logs().filter((l) => l.msg === 'stopped');
    expect(stopped.map((l) => l.worker).sort()).toEqual([1, 2]);
    expect(c.logs().some((l) => String(l.msg).startsWith('drain timeout: ending the remaining calls'))).toBe(true);
    expect(c.logs().some((l) => l.msg === 'every worker has stopped')).toBe(true);
  }, 60_000);
});
