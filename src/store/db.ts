/**
 * The embedded database: SQLite in DATA_DIR through better-sqlite3.
 *
 * WAL journal, foreign keys on, and numbered migrations recorded in
 * `PRAGMA user_version`, each applied in its own transaction. better-sqlite3
 * is synchronous: every statement here is short (one row or one small page),
 * and nothing on the media path touches the database.
 *
 * Durability: `synchronous=NORMAL` in WAL mode survives a crash or `kill -9`
 * of the process (a committed transaction is in the WAL before `commit`
 * returns); only a power loss can take back the last transactions.
 *
 * Times are integers: milliseconds since the epoch (UTC).
 */
import { accessSync, constants, existsSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import Database from 'better-sqlite3';

export type Db = Database.Database;

/** Migrations, in order. Never edit one that has shipped; add a new one. */
export const MIGRATIONS: readonly string[] = [
  // 1: calls, events, transcripts, idempotency keys, campaigns, contacts, do-not-call list, webhook deliveries.
  `
  CREATE TABLE calls (
    id               TEXT PRIMARY KEY,
    call_sid         TEXT UNIQUE,
    direction        TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    to_number        TEXT NOT NULL,
    from_number      TEXT NOT NULL,
    agent_id         TEXT NOT NULL,
    prompt           TEXT,
    custom_greeting  TEXT,
    metadata         TEXT,
    machine_detection INTEGER NOT NULL DEFAULT 0,
    voicemail_action TEXT,
    voicemail_message TEXT,
    campaign_id      TEXT,
    contact_id       TEXT,
    attempt          INTEGER,
    -- queued → claimed → dialed → (initiated | ringing | in-progress) → terminal
    -- terminal: completed | busy | no-answer | failed | canceled | not-dialed
    status           TEXT NOT NULL,
    outcome          TEXT,
    answered_by      TEXT,
    last_sequence    INTEGER,
    error_code       INTEGER,
    error_message    TEXT,
    hangup_requested INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    claimed_at       INTEGER,
    dialed_at        INTEGER,
    answered_at      INTEGER,
    ended_at         INTEGER,
    duration_s       INTEGER,
    conversation_id  TEXT,
    end_reason       TEXT,
    session_ended_at INTEGER,
    finalized_at     INTEGER
  );
  CREATE INDEX calls_status ON calls (status);
  CREATE INDEX calls_campaign ON calls (campaign_id, contact_id);
  CREATE INDEX calls_created ON calls (created_at);

  CREATE TABLE call_events (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id   TEXT NOT NULL,
    at        INTEGER NOT NULL,
    type      TEXT NOT NULL,
    status    TEXT,
    sequence  INTEGER,
    data      TEXT
  );
  CREATE INDEX call_events_call ON call_events (call_id, id);

  CREATE TABLE transcript_turns (
    call_id TEXT NOT NULL,
    source  TEXT NOT NULL CHECK (source IN ('live', 'playai')),
    seq     INTEGER NOT NULL,
    role    TEXT NOT NULL,
    text    TEXT NOT NULL,
    at      INTEGER NOT NULL,
    PRIMARY KEY (call_id, source, seq)
  );

  CREATE TABLE idempotency_keys (
    key          TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    call_id      TEXT NOT NULL,
    created_at   INTEGER NOT NULL
  );

  CREATE TABLE campaigns (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    -- draft | running | paused | completed | canceled
    status       TEXT NOT NULL,
    settings     TEXT NOT NULL,
    pause_reason TEXT,
    last_error   TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL,
    started_at   INTEGER,
    completed_at INTEGER
  );

  CREATE TABLE contacts (
    id              TEXT PRIMARY KEY,
    campaign_id     TEXT NOT NULL REFERENCES campaigns (id) ON DELETE CASCADE,
    line            INTEGER,
    phone           TEXT NOT NULL,
    variables       TEXT NOT NULL DEFAULT '{}',
    timezone        TEXT,
    -- pending | dialing | done
    state           TEXT NOT NULL,
    -- set when done: answered | voicemail | busy | no-answer | failed | canceled | dnc | invalid-number
    outcome         TEXT,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    last_call_id    TEXT,
    last_error      TEXT,
    merged_lines    TEXT,
    updated_at      INTEGER NOT NULL,
    UNIQUE (campaign_id, phone)
  );
  CREATE INDEX contacts_due ON contacts (campaign_id, state, next_attempt_at);

  CREATE TABLE dnc (
    phone      TEXT PRIMARY KEY,
    reason     TEXT,
    created_at INTEGER NOT NULL
  );

  CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    call_id          TEXT,
    event            TEXT NOT NULL,
    url              TEXT NOT NULL,
    payload          TEXT NOT NULL,
    -- pending | delivered | failed
    status           TEXT NOT NULL,
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    last_status_code INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    delivered_at     INTEGER
  );
  CREATE INDEX webhook_due ON webhook_deliveries (status, next_attempt_at);
  `,
  // 2: reads that stay cheap on big campaigns and a long call history: contact counts from a
  //    covering index, a campaign's recent dials without reading its calls, paged exports, and
  //    the unfinished calls the sweep reads.
  `
  CREATE INDEX contacts_counts ON contacts (campaign_id, state, outcome, attempts);
  CREATE INDEX calls_campaign_created ON calls (campaign_id, created_at);
  -- Exports page through a campaign's contacts in insertion order (campaign_id, then rowid).
  CREATE INDEX contacts_campaign ON contacts (campaign_id);
  -- The sweep reads the calls not finished yet every few seconds: only those are indexed.
  CREATE INDEX calls_unfinished ON calls (id) WHERE finalized_at IS NULL;
  `,
  // 3: browser calls (`direction = 'web'`, POST /v1/web-calls). SQLite cannot change a CHECK
  //    constraint in place: the table is rebuilt with the same columns and indexes.
  `
  CREATE TABLE calls_v3 (
    id               TEXT PRIMARY KEY,
    call_sid         TEXT UNIQUE,
    direction        TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound', 'web')),
    to_number        TEXT NOT NULL,
    from_number      TEXT NOT NULL,
    agent_id         TEXT NOT NULL,
    prompt           TEXT,
    custom_greeting  TEXT,
    metadata         TEXT,
    machine_detection INTEGER NOT NULL DEFAULT 0,
    voicemail_action TEXT,
    voicemail_message TEXT,
    campaign_id      TEXT,
    contact_id       TEXT,
    attempt          INTEGER,
    status           TEXT NOT NULL,
    outcome          TEXT,
    answered_by      TEXT,
    last_sequence    INTEGER,
    error_code       INTEGER,
    error_message    TEXT,
    hangup_requested INTEGER NOT NULL DEFAULT 0,
    created_at       INTEGER NOT NULL,
    claimed_at       INTEGER,
    dialed_at        INTEGER,
    answered_at      INTEGER,
    ended_at         INTEGER,
    duration_s       INTEGER,
    conversation_id  TEXT,
    end_reason       TEXT,
    session_ended_at INTEGER,
    finalized_at     INTEGER
  );
  INSERT INTO calls_v3 SELECT id, call_sid, direction, to_number, from_number, agent_id, prompt, custom_greeting, metadata,
    machine_detection, voicemail_action, voicemail_message, campaign_id, contact_id, attempt, status, outcome, answered_by,
    last_sequence, error_code, error_message, hangup_requested, created_at, claimed_at, dialed_at, answered_at, ended_at,
    duration_s, conversation_id, end_reason, session_ended_at, finalized_at FROM calls;
  DROP TABLE calls;
  ALTER TABLE calls_v3 RENAME TO calls;
  CREATE INDEX calls_status ON calls (status);
  CREATE INDEX calls_campaign ON calls (campaign_id, contact_id);
  CREATE INDEX calls_created ON calls (created_at);
  CREATE INDEX calls_campaign_created ON calls (campaign_id, created_at);
  CREATE INDEX calls_unfinished ON calls (id) WHERE finalized_at IS NULL;
  `,
  // 4: call recordings. `record` is what the call asked for (API call or campaign: 1/0, NULL: its
  //    route, agent and RECORDING_DEFAULT decide); the recording_* columns describe the recording
  //    made, if any. (One self-contained block: renumber freely when branches merge.)
  `
  ALTER TABLE calls ADD COLUMN record INTEGER;
  ALTER TABLE calls ADD COLUMN recording_backend TEXT;
  ALTER TABLE calls ADD COLUMN recording_status TEXT;
  ALTER TABLE calls ADD COLUMN recording_sid TEXT;
  ALTER TABLE calls ADD COLUMN recording_url TEXT;
  ALTER TABLE calls ADD COLUMN recording_duration_s REAL;
  ALTER TABLE calls ADD COLUMN recording_started_at INTEGER;
  CREATE INDEX calls_recordings ON calls (recording_started_at) WHERE recording_backend IS NOT NULL;
  `,
];

/** Opens (creating if needed) the database file and brings its schema up to date. */
export function openDb(path: string): Db {
  const db = new Database(path);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = NORMAL');
  db.pragma('foreign_keys = ON');
  db.pragma('busy_timeout = 5000');
  migrate(db);
  return db;
}

/** DATA_DIR cannot be created, written or opened; the message names the path, the OS error and the fix. */
export class DataDirError extends Error {
  override name = 'DataDirError';
}

/** The error code (`EACCES`, `SQLITE_CANTOPEN`…) and message of a file-system or SQLite error. */
function errnoOf(err: unknown): { code: string; message: string } {
  if (err instanceof Error) {
    const code = 'code' in err && typeof err.code === 'string' ? err.code : 'error';
    return { code, message: err.message };
  }
  return { code: 'error', message: String(err) };
}

/** The closest directory above `path` that exists (what blocks creating `path`). */
function nearestExisting(path: string): string {
  let dir = dirname(path);
  while (!existsSync(dir) && dirname(dir) !== dir) dir = dirname(dir);
  return dir;
}

function dataDirError(dataDir: string, err: unknown): DataDirError {
  const { code, message: text } = errnoOf(err);
  // Node's messages start with the code already ("EACCES: permission denied, mkdir '/data'").
  const message = text.startsWith(`${code}:`) ? text.slice(code.length + 1).trim() : text;
  const uid = process.getuid?.();
  const gid = process.getgid?.();
  const who = uid === undefined ? 'this user' : `uid ${uid}`;
  const elsewhere = 'or point DATA_DIR elsewhere';
  switch (code.startsWith('SQLITE_READONLY') ? 'SQLITE_READONLY' : code) {
    case 'EACCES':
    case 'EPERM':
    case 'SQLITE_CANTOPEN':
    case 'SQLITE_PERM':
    case 'SQLITE_READONLY': {
      const owner = uid === undefined ? '' : `${uid}:${gid ?? uid}`;
      if (!existsSync(dataDir)) {
        return new DataDirError(
          `DATA_DIR ${dataDir} cannot be created: ${nearestExisting(dataDir)} is not writable by ${who} (${code}: ${message}): ` +
            `create it for that user${owner ? ` (mkdir -p ${dataDir} && chown -R ${owner} ${dataDir})` : ''} ${elsewhere}`,
        );
      }
      return new DataDirError(
        `DATA_DIR ${dataDir} is not writable by ${who} (${code}: ${message}): fix the volume's ownership` +
          `${owner ? ` (chown -R ${owner} ${dataDir})` : ''} ${elsewhere}`,
      );
    }
    case 'EROFS':
      return new DataDirError(`DATA_DIR ${dataDir} is on a read-only file system (${code}: ${message}): mount a writable volume there ${elsewhere}`);
    case 'ENOTDIR':
    case 'EEXIST':
      return new DataDirError(`DATA_DIR ${dataDir} is not a directory, or a part of its path is a file (${code}: ${message}): point DATA_DIR at a directory`);
    case 'ENOSPC':
    case 'SQLITE_FULL':
      return new DataDirError(`DATA_DIR ${dataDir} is on a full disk (${code}: ${message}): free some space ${elsewhere}`);
    default:
      return new DataDirError(`DATA_DIR ${dataDir}: cannot open the database there (${code}: ${message}): check that the directory exists and is writable by ${who}, ${elsewhere}`);
  }
}

/**
 * Opens `playline.db` in `dataDir` (created if missing). Throws {@link DataDirError} when the
 * directory cannot be created or written, instead of SQLite's bare "unable to open database file".
 */
export function openDataDir(dataDir: string): Db {
  const file = join(dataDir, 'playline.db');
  try {
    mkdirSync(dataDir, { recursive: true });
    // SQLite needs to create the WAL and shared-memory files next to the database.
    accessSync(dataDir, constants.W_OK | constants.X_OK);
    if (existsSync(file)) accessSync(file, constants.R_OK | constants.W_OK);
  } catch (err) {
    throw dataDirError(dataDir, err);
  }
  try {
    return openDb(file);
  } catch (err) {
    if (err instanceof Database.SqliteError && /^SQLITE_(CANTOPEN|READONLY|IOERR|PERM|FULL)/.test(err.code)) throw dataDirError(dataDir, err);
    throw err;
  }
}

/**
 * Applies the migrations the database has not seen yet, all in one `BEGIN IMMEDIATE`
 * transaction: the version is read again once SQLite's write lock is held, so two processes
 * booting at once on one file apply each migration once (the second one finds nothing to do).
 */
export function migrate(db: Db): number {
  const check = (current: number): void => {
    if (current > MIGRATIONS.length) {
      throw new Error(`database schema version ${current} is newer than this Playline (${MIGRATIONS.length}); upgrade Playline`);
    }
  };
  check(Number(db.pragma('user_version', { simple: true })));
  return db.transaction(() => {
    const current = Number(db.pragma('user_version', { simple: true }));
    check(current);
    for (let v = current; v < MIGRATIONS.length; v++) {
      const sql = MIGRATIONS[v];
      if (sql === undefined) break;
      db.exec(sql);
      db.pragma(`user_version = ${v + 1}`);
    }
    return MIGRATIONS.length - current;
  }).immediate();
}
