/**
 * A throwaway Postgres for the store tests: `initdb` in a temp dir, `postgres` on a free port
 * on 127.0.0.1 (trust auth, no fsync), stopped and removed after. As root it runs as the
 * `postgres` system user (Postgres refuses root). PLAYLINE_TEST_DATABASE_URL uses an existing
 * server instead (each test database is created in it and dropped after).
 *
 * Missing Postgres binaries skip the Postgres tests with a message, unless
 * PLAYLINE_REQUIRE_POSTGRES=1 (CI), where it fails naming the package to install.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import postgres from 'postgres';
import { freePort } from '../src/util/freePort.js';

/** The directory of initdb and postgres (PG_BIN, else the newest /usr/lib/postgresql/<v>/bin). */
function pgBin(): string | undefined {
  if (process.env.PG_BIN !== undefined) return process.env.PG_BIN;
  const root = '/usr/lib/postgresql';
  if (!existsSync(root)) return undefined;
  const versions = readdirSync(root)
    .filter((v) => /^\d+$/.test(v) && existsSync(join(root, v, 'bin', 'initdb')))
    .sort((a, b) => Number(b) - Number(a));
  return versions[0] === undefined ? undefined : join(root, versions[0], 'bin');
}

/** Who runs the server: the current user, or `postgres` when we are root (undefined: nobody can). */
function runAs(): { user: string | undefined; uid: number | undefined; gid: number | undefined } | undefined {
  if (process.getuid?.() !== 0) return { user: undefined, uid: undefined, gid: undefined };
  const id = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
  const gid = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
  if (id.status !== 0 || gid.status !== 0) return undefined;
  return { user: 'postgres', uid: Number(id.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

/** Why the Postgres tests cannot run here (undefined: they can). */
export function postgresMissing(): string | undefined {
  if (process.env.PLAYLINE_TEST_DATABASE_URL !== undefined) return undefined;
  if (pgBin() === undefined) return 'no Postgres binaries (apt-get install postgresql, or set PG_BIN or PLAYLINE_TEST_DATABASE_URL)';
  if (runAs() === undefined) return 'running as root and there is no "postgres" user to run the server as (or set PLAYLINE_TEST_DATABASE_URL)';
  return undefined;
}

/** True when the Postgres tests run; logs why not otherwise (or throws when Postgres is required). */
export function postgresTestsEnabled(): boolean {
  const why = postgresMissing();
  if (why === undefined) return true;
  if (process.env.PLAYLINE_REQUIRE_POSTGRES === '1') throw new Error(`PLAYLINE_REQUIRE_POSTGRES=1 but the Postgres tests cannot run: ${why}`);
  console.warn(`Postgres store tests skipped: ${why} (set PLAYLINE_REQUIRE_POSTGRES=1 to fail instead)`);
  return false;
}


function command(bin: string, args: string[], user: string | undefined): [string, string[]] {
  return user === undefined ? [bin, args] : ['runuser', ['-u', user, '--', bin, ...args]];
}

let dbCounter = 0;

export class TestPostgres {
  #proc: ChildProcess | undefined;
  #dir: string | undefined;
  readonly #admin: postgres.Sql;
  readonly #created: string[] = [];

  private constructor(
    readonly baseUrl: string,
    admin: postgres.Sql,
  ) {
    this.#admin = admin;
  }

  /** Starts a throwaway server (or connects to PLAYLINE_TEST_DATABASE_URL). */
  static async start(): Promise<TestPostgres> {
    const existing = process.env.PLAYLINE_TEST_DATABASE_URL;
    if (existing !== undefined) return new TestPostgres(existing, postgres(existing, { max: 2, onnotice: () => {} }));
    const bin = pgBin();
    const who = runAs();
    if (bin === undefined || who === undefined) throw new Error(`Postgres tests cannot run: ${postgresMissing() ?? 'unknown reason'}`);
    const dir = mkdtempSync(join(tmpdir(), 'playline-pg-'));
    if (who.uid !== undefined && who.gid !== undefined) chownSync(dir, who.uid, who.gid);
    const data = join(dir, 'data');
    const [initCmd, initArgs] = command(join(bin, 'initdb'), ['-D', data, '-U', 'playline', '--auth=trust', '--no-sync', '-E', 'UTF8', '--locale=C'], who.user);
    const init = spawnSync(initCmd, initArgs, { encoding: 'utf8' });
    if (init.status !== 0) throw new Error(`initdb failed: ${init.stderr || init.stdout}`);
    const port = await freePort();
    const [cmd, args] = command(
      join(bin, 'postgres'),
      ['-D', data, '-p', String(port), '-k', dir, '-c', 'listen_addresses=127.0.0.1', '-c', 'fsync=off', '-c', 'synchronous_commit=off', '-c', 'full_page_writes=off'],
      who.user,
    );
    const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    proc.stdout?.on('data', (b: Buffer) => (out += b.toString()));
    proc.stderr?.on('data', (b: Buffer) => (out += b.toString()));
    const baseUrl = `postgres://playline@127.0.0.1:${port}/postgres`;
    const deadline = Date.now() + 15_000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`postgres exited (${proc.exitCode}): ${out}`);
      const probe = postgres(baseUrl, { max: 1, connect_timeout: 2, onnotice: () => {} });
      try {
        await probe`SELECT 1`;
        await probe.end();
        break;
      } catch {
        await probe.end({ timeout: 0 }).catch(() => undefined);
        if (Date.now() > deadline) throw new Error(`postgres did not answer on port ${port}: ${out}`);
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    const pg = new TestPostgres(baseUrl, postgres(baseUrl, { max: 2, onnotice: () => {} }));
    pg.#proc = proc;
    pg.#dir = dir;
    return pg;
  }

  /** A new empty database on the server; its URL. */
  async database(): Promise<string> {
    const name = `playline_test_${process.pid}_${++dbCounter}`;
    await this.#admin.unsafe(`CREATE DATABASE ${name}`);
    this.#created.push(name);
    const u = new URL(this.baseUrl);
    u.pathname = `/${name}`;
    return u.toString();
  }

  /** Stops the server and removes its files (an existing server: drops the test databases). Idempotent. */
  async stop(): Promise<void> {
    if (this.#proc === undefined) {
      for (const name of this.#created.splice(0)) await this.#admin.unsafe(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch(() => undefined);
    }
    await this.#admin.end({ timeout: 1 }).catch(() => undefined);
    const proc = this.#proc;
    this.#proc = undefined;
    if (proc !== undefined && proc.exitCode === null) {
      const exited = new Promise<void>((resolve) => proc.once('exit', () => resolve()));
      // Fast shutdown (through runuser, the signal reaches postgres as its child's).
      proc.kill('SIGINT');
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000))]);
      if (proc.exitCode === null) proc.kill('SIGKILL');
    }
    if (this.#dir !== undefined) rmSync(this.#dir, { recursive: true, force: true });
    this.#dir = undefined;
  }
}
