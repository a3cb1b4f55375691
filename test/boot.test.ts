/**
 * Starting up: DATA_DIR that cannot be used stops the start with a message naming the path, the
 * OS error and the fix; the log format follows LOG_FORMAT, else the terminal.
 */
import { accessSync, chmodSync, constants, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { resolveLogFormat } from '../src/log.js';
import { DataDirError, openDataDir } from '../src/store/db.js';

const root = mkdtempSync(join(tmpdir(), 'playline-boot-'));
afterAll(() => {
  chmodSync(root, 0o755);
  rmSync(root, { recursive: true, force: true });
});

function openError(dataDir: string): DataDirError {
  try {
    openDataDir(dataDir).close();
  } catch (err) {
    expect(err).toBeInstanceOf(DataDirError);
    return err as DataDirError;
  }
  throw new Error(`openDataDir(${dataDir}) succeeded`);
}

/** Whether this process can write into a directory it has made read-only (root can). */
function canWriteReadOnly(dir: string): boolean {
  try {
    accessSync(dir, constants.W_OK);
    return true;
  } catch {
    return false;
  }
}

describe('openDataDir', () => {
  it('creates DATA_DIR and the database when they are missing', () => {
    const dir = join(root, 'fresh', 'data');
    const db = openDataDir(dir);
    db.close();
    expect(existsSync(join(dir, 'playline.db'))).toBe(true);
  });

  it('refuses a DATA_DIR under a file, naming the path, the OS error and the fix', () => {
    const file = join(root, 'a-file');
    writeFileSync(file, 'not a directory');
    const dir = join(file, 'data');
    const err = openError(dir);
    expect(err.message).toContain(`DATA_DIR ${dir}`);
    expect(err.message).toContain('ENOTDIR');
    expect(err.message).toMatch(/point DATA_DIR at a directory$/);
  });

  it('refuses a DATA_DIR in a read-only directory, naming the user, the OS error and the fix', (ctx) => {
    const parent = join(root, 'read-only');
    mkdirSync(parent);
    chmodSync(parent, 0o555);
    if (canWriteReadOnly(parent)) ctx.skip(`running as uid ${process.getuid?.()}, which can write into a mode 555 directory`);
    const dir = join(parent, 'data');
    const err = openError(dir);
    expect(err.message).toContain(`DATA_DIR ${dir} cannot be created: ${parent} is not writable by uid ${process.getuid?.()}`);
    expect(err.message).toContain('EACCES');
    expect(err.message).toMatch(/chown -R \d+:\d+ /);
    expect(err.message).toMatch(/or point DATA_DIR elsewhere$/);
  });

  it('refuses an existing DATA_DIR it cannot write into, with the chown that fixes it', (ctx) => {
    const dir = join(root, 'not-writable');
    mkdirSync(dir);
    chmodSync(dir, 0o555);
    if (canWriteReadOnly(dir)) ctx.skip(`running as uid ${process.getuid?.()}, which can write into a mode 555 directory`);
    const err = openError(dir);
    expect(err.message).toContain(`DATA_DIR ${dir} is not writable by uid ${process.getuid?.()} (EACCES`);
    expect(err.message).toContain(`fix the volume's ownership (chown -R ${process.getuid?.()}:${process.getgid?.()} ${dir})`);
  });
});

describe('log format', () => {
  it('is readable on a terminal and JSON elsewhere, unless LOG_FORMAT says otherwise', () => {
    expect(resolveLogFormat(undefined, true)).toBe('pretty');
    expect(resolveLogFormat(undefined, false)).toBe('json');
    expect(resolveLogFormat(undefined, undefined)).toBe('json');
    expect(resolveLogFormat('json', true)).toBe('json');
    expect(resolveLogFormat('pretty', false)).toBe('pretty');
  });
});
