/**
 * What the command-line tools touch outside themselves (output streams, environment,
 * working directory, HTTP, Ctrl-C, the clock), in one object so tests can drive a
 * CLI's `run(args, io)` in-process; `processIo()` is the real thing.
 */
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { parseEnv } from 'node:util';

/** A place to write text; `isTTY`/`columns` as on `process.stdout`. */
export interface Output {
  write(chunk: string): unknown;
  isTTY?: boolean | undefined;
  columns?: number | undefined;
}

export interface CliIo {
  stdout: Output;
  stderr: Output;
  /** The environment as the shell gave it; `.env` is merged in by the CLI (see {@link withDotEnv}). */
  env: Readonly<Record<string, string | undefined>>;
  /** Where `.env` is looked for. */
  cwd: string;
  fetch: typeof globalThis.fetch;
  /** Registers a Ctrl-C handler; returns a function that removes it. */
  onSigint(handler: () => void): () => void;
  /** Resolves after `ms`, or rejects with an AbortError when `signal` aborts. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
  /** ms clock for elapsed times. */
  now(): number;
  /** Ends the process at once (a second Ctrl-C). */
  exit(code: number): void;
}

export function processIo(): CliIo {
  return {
    stdout: process.stdout,
    stderr: process.stderr,
    env: process.env,
    cwd: process.cwd(),
    fetch: globalThis.fetch,
    onSigint(handler) {
      process.on('SIGINT', handler);
      return () => process.off('SIGINT', handler);
    },
    sleep: (ms, signal) => delay(ms, undefined, signal === undefined ? {} : { signal }),
    now: () => performance.now(),
    exit: (code) => process.exit(code),
  };
}

/**
 * `env` with the variables of `dir/.env` added, as the server loads it (`loadDotEnv` in
 * `src/config.ts`, i.e. `process.loadEnvFile`): a variable already set wins over the file.
 */
export function withDotEnv(env: Readonly<Record<string, string | undefined>>, dir: string): Record<string, string | undefined> {
  const path = join(dir, '.env');
  const out: Record<string, string | undefined> = { ...env };
  if (!existsSync(path)) return out;
  for (const [k, v] of Object.entries(parseEnv(readFileSync(path, 'utf8')))) {
    if (out[k] === undefined) out[k] = v;
  }
  return out;
}

/** A bad command line: the CLI prints it with its help and exits 2. */
export class UsageError extends Error {
  override name = 'UsageError';
}

/** Runs a CLI's body; a {@link UsageError} is printed with the CLI's help and exits 2. */
export async function withUsage(name: string, help: string, io: CliIo, body: () => Promise<number>): Promise<number> {
  try {
    return await body();
  } catch (err) {
    if (err instanceof UsageError) {
      io.stderr.write(`${name}: ${err.message}\n\n${help}`);
      return 2;
    }
    throw err;
  }
}

/** True when the module at `moduleUrl` is the script node was started with. */
export function isEntryPoint(moduleUrl: string): boolean {
  const script = process.argv[1];
  if (script === undefined) return false;
  try {
    return realpathSync(script) === realpathSync(fileURLToPath(moduleUrl));
  } catch {
    return false;
  }
}

/** The system error code behind a failed `fetch` (`ECONNREFUSED`, `ENOTFOUND`, …), if any. */
export function networkErrorCode(err: unknown): string | undefined {
  for (let e: unknown = err, depth = 0; e instanceof Error && depth < 5; e = e.cause, depth++) {
    const code = 'code' in e ? e.code : undefined;
    if (typeof code === 'string' && /^E[A-Z]+$/.test(code)) return code;
    if (e instanceof AggregateError) {
      for (const inner of e.errors) {
        const c = networkErrorCode(inner);
        if (c !== undefined) return c;
      }
    }
  }
  return undefined;
}

/** Why a `fetch` failed, for one line: the refused connection, the system error code, or the innermost cause. */
export function networkFailure(err: unknown): string {
  const code = networkErrorCode(err);
  if (code === 'ECONNREFUSED') return 'connection refused, nothing listens there';
  if (code !== undefined) return code;
  if (err instanceof Error && err.name === 'TimeoutError') return 'no answer in time';
  let e: unknown = err;
  for (let depth = 0; e instanceof Error && e.cause instanceof Error && depth < 5; depth++) e = e.cause;
  return errorMessage(e);
}

export const errorMessage = (err: unknown): string => (err instanceof Error ? err.message : String(err));
