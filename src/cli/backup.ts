/**
 * `npm run backup -- [--out FILE]`: a consistent copy of Playline's SQLite database
 * (DATA_DIR/playline.db), taken with SQLite's online backup API, safe while the server runs.
 * In the Docker image: `docker compose exec playline node dist/cli/backup.js`. See `--help`.
 *
 * The work is in {@link runBackup} (tests call it directly); the entry point at the bottom
 * only loads `.env` and sets the exit code.
 */
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, realpathSync, renameSync, rmSync, statSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import Database from 'better-sqlite3';
import { loadDotEnv } from '../config.js';

/** The database file in DATA_DIR (src/store/db.ts `openDataDir`). */
export const DB_FILE = 'playline.db';

export const BACKUP_HELP = `Usage: npm run backup -- [options]
       node dist/cli/backup.js [options]        (in the Docker image, see deploy/README.md)

Copies Playline's SQLite database, DATA_DIR/${DB_FILE} (campaigns, contacts, call
records, webhook deliveries), into one self-contained file with SQLite's online
backup API. Safe while the server runs: the copy is a single consistent snapshot
and the server keeps writing meanwhile. No sqlite3 program is needed.

Options:
  --out FILE        where to write the copy (default: DATA_DIR/backups/playline-<UTC time>.db).
                    Written under a temporary name and renamed once complete and checked,
                    so FILE is never a half-written database.
  --force           replace FILE if it already exists (default: refuse)
  --data-dir DIR    the server's data directory (default: $DATA_DIR, else ./data, like the
                    server; .env in the working directory is read first, like npm start)
  -h, --help        show this help

In the Docker image:
  docker compose exec playline node dist/cli/backup.js --out /data/backups/playline.db

Restore: stop the server, replace DATA_DIR/${DB_FILE} with the copy, delete
${DB_FILE}-wal and ${DB_FILE}-shm next to it if they exist, start the server.

Exit code: 0 when the copy is written, 1 when it could not be, 2 on bad options.
`;

export interface BackupIo {
  /** Environment to read DATA_DIR from (default: process.env). */
  env?: Record<string, string | undefined>;
  /** Directory relative paths are resolved against (default: process.cwd()). */
  cwd?: string;
  stdout?: (text: string) => void;
  stderr?: (text: string) => void;
  /** Clock for the default file name. */
  now?: () => Date;
}

/** What the server uses as its data directory (src/config.ts: DATA_DIR, empty or unset → ./data, resolved). */
export function dataDirFrom(env: Record<string, string | undefined>, cwd: string = process.cwd()): string {
  const v = env.DATA_DIR;
  return resolve(cwd, v === undefined || v.trim() === '' ? './data' : v);
}

/** `playline-2026-12-06T09-04-12Z.db`: sortable, and no `:` (not allowed in Windows file names). */
export function defaultBackupName(now: Date): string {
  return `playline-${now.toISOString().replace(/\.\d+Z$/, 'Z').replace(/:/g, '-')}.db`;
}

/**
 * Pages per backup step: all of them. SQLite restarts a copy that another connection writes to between
 * steps; one step is one read transaction (one snapshot), which in WAL mode does not block the server.
 */
const ALL_PAGES = 0x7fffffff;

class BackupError extends Error {
  override name = 'BackupError';
}

function removeTemp(path: string): void {
  for (const suffix of ['', '-journal', '-wal', '-shm']) rmSync(path + suffix, { force: true });
}

function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/**
 * Runs the backup command with `args` (what follows `backup.js` on the command line).
 * Resolves to the exit code; never calls process.exit.
 */
export async function runBackup(args: string[], io: BackupIo = {}): Promise<number> {
  const out = io.stdout ?? ((t: string) => void process.stdout.write(t));
  const err = io.stderr ?? ((t: string) => void process.stderr.write(t));
  const cwd = io.cwd ?? process.cwd();
  const env = io.env ?? process.env;

  let values: { out?: string; force?: boolean; 'data-dir'?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      args,
      options: {
        out: { type: 'string' },
        force: { type: 'boolean' },
        'data-dir': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: false,
      strict: true,
    }));
  } catch (e) {
    err(`backup: ${messageOf(e)}\n\n${BACKUP_HELP}`);
    return 2;
  }
  if (values.help === true) {
    out(BACKUP_HELP);
    return 0;
  }
  if (values.out !== undefined && values.out.trim() === '') {
    err(`backup: --out needs a file name\n\n${BACKUP_HELP}`);
    return 2;
  }

  const dataDir = values['data-dir'] !== undefined ? resolve(cwd, values['data-dir']) : dataDirFrom(env, cwd);
  const source = join(dataDir, DB_FILE);
  const target = resolve(cwd, values.out ?? join(dataDir, 'backups', defaultBackupName((io.now ?? (() => new Date()))())));

  try {
    const bytes = await backupFile(source, target, values.force === true, values['data-dir'] !== undefined);
    out(`backup: wrote ${target} (${bytes} bytes) from ${source}\n`);
    return 0;
  } catch (e) {
    err(`backup: ${messageOf(e)}\n`);
    return 1;
  }
}

/** Copies `source` to `target` through a temporary file next to it; returns the size written. */
async function backupFile(source: string, target: string, force: boolean, fromFlag: boolean): Promise<number> {
  if (!existsSync(source)) {
    const where = fromFlag ? '--data-dir' : 'DATA_DIR';
    throw new BackupError(
      `no database at ${source}. ${where} must point at the server's data directory (the DATA_DIR it runs with; ` +
        `default ./data in the folder you start it from). In Docker, run the command inside the container: ` +
        `docker compose exec playline node dist/cli/backup.js`,
    );
  }
  if (resolve(source) === resolve(target)) throw new BackupError(`--out ${target} is the database itself; choose another file`);
  if (existsSync(target) && !force) throw new BackupError(`${target} already exists; choose another --out or pass --force to replace it`);

  const dir = dirname(target);
  try {
    mkdirSync(dir, { recursive: true });
  } catch (e) {
    throw new BackupError(`cannot create ${dir} for the backup (${messageOf(e)}); choose an --out in a writable folder`);
  }
  const temp = join(dir, `.${basename(target)}.${process.pid}-${randomBytes(4).toString('hex')}.tmp`);

  try {
    // Read-write (not readonly): a read-only connection cannot open a WAL database whose -shm
    // file is missing. This connection writes nothing; SQLite's reads in WAL never block the server.
    let db: Database.Database;
    try {
      db = new Database(source, { fileMustExist: true });
    } catch (e) {
      throw new BackupError(`cannot open ${source}: ${messageOf(e)}`);
    }
    try {
      db.pragma('busy_timeout = 5000');
      await db.backup(temp, { progress: () => ALL_PAGES });
    } catch (e) {
      throw new BackupError(`copying ${source} failed: ${messageOf(e)}`);
    } finally {
      db.close();
    }

    // Make the copy one self-contained file (no -wal beside it) and check it before it gets its name.
    const copy = new Database(temp, { fileMustExist: true });
    try {
      copy.pragma('journal_mode = DELETE');
      const check: unknown = copy.pragma('quick_check', { simple: true });
      if (check !== 'ok') throw new BackupError(`the copy of ${source} fails SQLite's quick_check (${String(check)}); the source may be damaged`);
    } finally {
      copy.close();
    }
    renameSync(temp, target);
  } catch (e) {
    removeTemp(temp);
    throw e;
  }
  return statSync(target).size;
}

function isEntryPoint(): boolean {
  const entry = process.argv[1];
  if (entry === undefined) return false;
  try {
    return import.meta.url === pathToFileURL(realpathSync(entry)).href;
  } catch {
    return false;
  }
}

if (isEntryPoint()) {
  loadDotEnv();
  runBackup(process.argv.slice(2)).then(
    (code) => {
      process.exitCode = code;
    },
    (e: unknown) => {
      process.stderr.write(`backup: ${messageOf(e)}\n`);
      process.exitCode = 1;
    },
  );
}
