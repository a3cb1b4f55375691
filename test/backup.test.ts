/**
 * `npm run backup` (src/cli/backup.ts), through its runBackup(args) function: a copy taken while
 * another connection writes, the default file name, help, and the errors a user meets.
 */
import { mkdirSync, mkdtempSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { DB_FILE, dataDirFrom, defaultBackupName, runBackup, type BackupIo } from '../src/cli/backup.js';
import { loadConfig } from '../src/config.js';
import { openDataDir } from '../src/store/db.js';

let tmp: string;
beforeEach(() => {
  tmp = mkdtempSync(join(tmpdir(), 'playline-backup-'));
});
afterEach(() => rmSync(tmp, { recursive: true, force: true }));

/** runBackup with captured output, reading DATA_DIR from `env` and relative paths from `tmp`. */
async function backup(args: string[], env: Record<string, string | undefined> = {}, extra: BackupIo = {}) {
  let stdout = '';
  let stderr = '';
  const code = await runBackup(args, {
    env,
    cwd: tmp,
    stdout: (t) => (stdout += t),
    stderr: (t) => (stderr += t),
    ...extra,
  });
  return { code, stdout, stderr };
}

/** A Playline database (real schema, WAL) with two probe tables every writer transaction fills together. */
function seedDataDir(dataDir: string, rows: number): void {
  const db = openDataDir(dataDir);
  db.exec('CREATE TABLE probe_a (n INTEGER PRIMARY KEY, pad BLOB NOT NULL); CREATE TABLE probe_b (n INTEGER PRIMARY KEY);');
  const a = db.prepare('INSERT INTO probe_a (n, pad) VALUES (?, ?)');
  const b = db.prepare('INSERT INTO probe_b (n) VALUES (?)');
  const pad = Buffer.alloc(4096, 7);
  db.transaction(() => {
    for (let n = 1; n <= rows; n++) {
      a.run(n, pad);
      b.run(n);
    }
  })();
  db.close();
}

/** Keeps inserting one row into each probe table per transaction, from a worker thread, until told to stop. */
const WRITER = `
const { workerData, parentPort } = require('node:worker_threads');
const Database = require(workerData.module);
const db = new Database(workerData.path);
db.pragma('busy_timeout = 5000');
const flags = new Int32Array(workerData.shared); // [0] stop, [1] transactions committed
const a = db.prepare('INSERT INTO probe_a (n, pad) VALUES (?, ?)');
const b = db.prepare('INSERT INTO probe_b (n) VALUES (?)');
const pad = Buffer.alloc(512, 1);
const tx = db.transaction((n) => { a.run(n, pad); b.run(n); });
let n = workerData.from;
let committed = 0;
while (Atomics.load(flags, 0) === 0) {
  tx(++n);
  Atomics.store(flags, 1, ++committed);
  if (committed === 50) parentPort.postMessage('writing');
}
db.close();
parentPort.postMessage('stopped');
`;

describe('npm run backup', () => {
  it('copies the database while another connection keeps writing: the copy is a valid, consistent snapshot with the committed rows', async () => {
    const dataDir = join(tmp, 'data');
    const SEED = 2000; // ~8 MB, so the copy takes a while
    seedDataDir(dataDir, SEED);

    const shared = new SharedArrayBuffer(8);
    const flags = new Int32Array(shared);
    const worker = new Worker(WRITER, {
      eval: true,
      workerData: { module: createRequire(import.meta.url).resolve('better-sqlite3'), path: join(dataDir, DB_FILE), shared, from: SEED },
    });
    const messages: string[] = [];
    const stopped = new Promise<void>((resolveStopped, reject) => {
      worker.on('error', reject);
      worker.on('message', (m: unknown) => {
        messages.push(String(m));
        if (m === 'stopped') resolveStopped();
      });
    });
    const writing = new Promise<void>((resolveWriting, reject) => {
      worker.on('error', reject);
      worker.on('message', (m: unknown) => {
        if (m === 'writing') resolveWriting();
      });
    });

    let result: Awaited<ReturnType<typeof backup>>;
    let before: number;
    let after: number;
    try {
      await writing;
      before = Atomics.load(flags, 1);
      result = await backup(['--out', 'copy.db'], { DATA_DIR: dataDir });
      after = Atomics.load(flags, 1);
    } finally {
      Atomics.store(flags, 0, 1);
      await stopped;
      await worker.terminate();
    }

    expect(result.stderr).toBe('');
    expect(result.code).toBe(0);
    expect(after, 'the writer committed transactions while the backup ran').toBeGreaterThan(before);

    const copy = new Database(join(tmp, 'copy.db'), { readonly: true, fileMustExist: true });
    try {
      expect(copy.pragma('integrity_check', { simple: true })).toBe('ok');
      expect(copy.pragma('journal_mode', { simple: true }), 'the copy is one self-contained file (no -wal needed)').toBe('delete');
      const countA = Number(copy.prepare('SELECT count(*) FROM probe_a').pluck().get());
      const countB = Number(copy.prepare('SELECT count(*) FROM probe_b').pluck().get());
      expect(countB, 'every writer transaction is in the copy whole or not at all').toBe(countA);
      expect(countA).toBeGreaterThanOrEqual(SEED + before);
      expect(countA).toBeLessThanOrEqual(SEED + after);
      // The Playline schema came along (migrations recorded in user_version).
      expect(Number(copy.pragma('user_version', { simple: true }))).toBeGreaterThan(0);
      expect(copy.prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'campaigns'").pluck().get()).toBe('campaigns');
    } finally {
      copy.close();
    }
    // Nothing but the copy in the output folder: no temporary file, no -wal or -journal.
    expect(readdirSync(tmp).filter((f) => f !== 'data').sort()).toEqual(['copy.db']);
  });

  it('writes DATA_DIR/backups/playline-<UTC time>.db by default and prints its path and size', async () => {
    seedDataDir(join(tmp, 'var'), 10);
    const now = new Date('2026-03-04T05:06:07.890Z');
    const r = await backup([], { DATA_DIR: 'var' }, { now: () => now });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    const file = join(tmp, 'var', 'backups', 'playline-2026-03-04T05-06-07Z.db');
    expect(defaultBackupName(now)).toBe('playline-2026-03-04T05-06-07Z.db');
    const size = statSync(file).size;
    expect(size).toBeGreaterThan(0);
    expect(r.stdout).toBe(`backup: wrote ${file} (${size} bytes) from ${join(tmp, 'var', DB_FILE)}\n`);
  });

  it('--data-dir takes precedence over DATA_DIR', async () => {
    seedDataDir(join(tmp, 'elsewhere'), 3);
    const r = await backup(['--data-dir', 'elsewhere', '--out', 'b.db'], { DATA_DIR: join(tmp, 'missing') });
    expect(r.stderr).toBe('');
    expect(r.code).toBe(0);
    expect(statSync(join(tmp, 'b.db')).size).toBeGreaterThan(0);
  });

  it('--help prints the usage (--out, the Docker command, how to restore) and exits 0', async () => {
    const r = await backup(['--help']);
    expect(r.code).toBe(0);
    expect(r.stderr).toBe('');
    expect(r.stdout).toMatch(/^Usage: npm run backup -- \[options\]/);
    expect(r.stdout).toContain('--out FILE');
    expect(r.stdout).toContain('docker compose exec playline node dist/cli/backup.js');
    expect(r.stdout).toMatch(/Restore: stop the server/);
    expect((await backup(['-h'])).stdout).toBe(r.stdout);
  });

  it('a missing database exits 1 with a message naming the path it looked at and DATA_DIR, and writes nothing', async () => {
    const r = await backup(['--out', 'copy.db'], { DATA_DIR: 'nowhere' });
    expect(r.code).toBe(1);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(`no database at ${join(tmp, 'nowhere', DB_FILE)}`);
    expect(r.stderr).toContain("DATA_DIR must point at the server's data directory");
    expect(r.stderr).toContain('docker compose exec playline');
    expect(readdirSync(tmp)).toEqual([]);

    const flag = await backup(['--data-dir', 'nowhere', '--out', 'copy.db']);
    expect(flag.code).toBe(1);
    expect(flag.stderr).toContain("--data-dir must point at the server's data directory");
  });

  it('refuses to replace an existing --out file unless --force is given', async () => {
    seedDataDir(join(tmp, 'data'), 5);
    writeFileSync(join(tmp, 'old.db'), 'keep me');
    const r = await backup(['--out', 'old.db'], { DATA_DIR: 'data' });
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('already exists');
    expect(r.stderr).toContain('--force');
    expect(statSync(join(tmp, 'old.db')).size).toBe('keep me'.length);

    const forced = await backup(['--out', 'old.db', '--force'], { DATA_DIR: 'data' });
    expect(forced.code).toBe(0);
    const copy = new Database(join(tmp, 'old.db'), { readonly: true });
    try {
      expect(copy.prepare('SELECT count(*) FROM probe_a').pluck().get()).toBe(5);
    } finally {
      copy.close();
    }
  });

  it('a source that is not a database exits 1 and leaves no temporary file behind', async () => {
    mkdirSync(join(tmp, 'data'));
    writeFileSync(join(tmp, 'data', DB_FILE), 'this is not sqlite, just some bytes that are long enough'.repeat(200));
    mkdirSync(join(tmp, 'out'));
    const r = await backup(['--out', 'out/copy.db'], { DATA_DIR: 'data' });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^backup: .*not a database/);
    expect(readdirSync(join(tmp, 'out'))).toEqual([]);
  });

  it('bad options exit 2 with the usage', async () => {
    const r = await backup(['--output', 'x.db']);
    expect(r.code).toBe(2);
    expect(r.stderr).toContain("Unknown option '--output'");
    expect(r.stderr).toContain('Usage: npm run backup');
    expect((await backup(['--out', ''])).code).toBe(2);
    expect((await backup(['stray'])).code).toBe(2);
  });

  it('reads DATA_DIR exactly as the server does (unset or empty is ./data, relative is against the working directory)', () => {
    for (const v of [undefined, '', 'rel/dir', '/abs/dir']) {
      expect(dataDirFrom({ DATA_DIR: v }, process.cwd()), `DATA_DIR=${String(v)}`).toBe(loadConfig({ DATA_DIR: v }).dataDir);
    }
  });
});
