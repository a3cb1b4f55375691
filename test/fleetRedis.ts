/**
 * A real redis-server for the fleet tests: started on a free port on 127.0.0.1 with no
 * persistence, killed after. Missing redis-server skips the tests with a message, unless
 * PLAYLINE_REQUIRE_REDIS=1 (CI), where it fails naming the package to install.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { afterAll, beforeAll } from 'vitest';
import { Redis } from 'ioredis';
import { freePort } from '../src/util/freePort.js';

export const REDIS_BIN = process.env.REDIS_SERVER_PATH ?? 'redis-server';

export function redisAvailable(): boolean {
  const r = spawnSync(REDIS_BIN, ['--version'], { encoding: 'utf8' });
  return r.status === 0;
}

/** True when the fleet tests run; logs why not otherwise (or throws when Redis is required). */
export function fleetTestsEnabled(): boolean {
  if (redisAvailable()) return true;
  if (process.env.PLAYLINE_REQUIRE_REDIS === '1') {
    throw new Error(`PLAYLINE_REQUIRE_REDIS=1 but ${REDIS_BIN} was not found: install it (apt-get install redis-server) or set REDIS_SERVER_PATH`);
  }
  console.warn(`fleet tests skipped: ${REDIS_BIN} not found (apt-get install redis-server, or set PLAYLINE_REQUIRE_REDIS=1 to fail instead)`);
  return false;
}


export class TestRedis {
  #proc: ChildProcess | undefined;
  readonly clients: Redis[] = [];
  private constructor(readonly port: number) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  static async start(): Promise<TestRedis> {
    const r = new TestRedis(await freePort());
    await r.restart();
    return r;
  }

  /** Starts (again) on the same port, and waits until it answers. */
  async restart(): Promise<void> {
    const proc = spawn(REDIS_BIN, ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--loglevel', 'warning'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    this.#proc = proc;
    let out = '';
    proc.stdout?.on('data', (b: Buffer) => (out += b.toString()));
    proc.stderr?.on('data', (b: Buffer) => (out += b.toString()));
    const probe = new Redis(this.port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 0, retryStrategy: () => null, enableOfflineQueue: false });
    probe.on('error', () => undefined);
    const deadline = Date.now() + 5_000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`redis-server exited (${proc.exitCode}): ${out}`);
      try {
        await probe.connect();
        await probe.ping();
        break;
      } catch {
        probe.disconnect();
        if (Date.now() > deadline) throw new Error(`redis-server did not answer on port ${this.port}: ${out}`);
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    probe.disconnect();
  }

  /** Kills the server (SIGKILL: a crash) and waits until it is gone. */
  async kill(): Promise<void> {
    const proc = this.#proc;
    this.#proc = undefined;
    if (proc === undefined || proc.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      proc.once('exit', () => resolve());
      proc.kill('SIGKILL');
    });
  }

  /** A client the test owns (closed by stop). */
  client(): Redis {
    const c = new Redis(this.port, '127.0.0.1', { maxRetriesPerRequest: 1, retryStrategy: (n) => Math.min(50 * n, 500) });
    c.on('error', () => undefined);
    this.clients.push(c);
    return c;
  }

  async stop(): Promise<void> {
    for (const c of this.clients) c.disconnect();
    await this.kill();
  }
}

/** Resolves once a client is ready. */
export async function ready(c: Redis): Promise<void> {
  if (c.status === 'ready') return;
  await new Promise<void>((resolve) => c.once('ready', () => resolve()));
}

export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * One redis-server for the enclosing `describe` (started before its tests, stopped after):
 * call the returned function inside a test for it.
 */
export function useTestRedis(): () => TestRedis {
  let redis: TestRedis | undefined;
  beforeAll(async () => {
    redis = await TestRedis.start();
  }, 20_000);
  afterAll(async () => {
    await redis?.stop();
  });
  return () => {
    if (redis === undefined) throw new Error('the test redis-server is not started (useTestRedis() belongs in a describe block)');
    return redis;
  };
}
