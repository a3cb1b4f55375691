/**
 * An in-memory {@link CliIo} for driving `run(args, io)` of the CLIs in tests: captured
 * stdout/stderr, a chosen environment and working directory (an empty temp dir unless
 * given, so a developer's `.env` is never read), and the Ctrl-C handler kept to call.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import type { CliIo, Output } from '../src/cli/io.js';

export interface MemOutput extends Output {
  text: string;
}

export interface MemIo {
  io: CliIo;
  out: MemOutput;
  err: MemOutput;
  /** Presses Ctrl-C: calls the handler the CLI registered (throws when none is). */
  sigint(): void;
  /** The last handler registered, even once removed (a second press racing the shutdown). */
  lastSigintHandler(): (() => void) | undefined;
  /** Codes passed to `io.exit`. */
  exits: number[];
}

export function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'playline-cli-'));
}

export function memIo(opts: Partial<Omit<CliIo, 'stdout' | 'stderr'>> & { tty?: boolean; columns?: number } = {}): MemIo {
  const mk = (tty: boolean): MemOutput => ({
    text: '',
    isTTY: tty,
    columns: opts.columns ?? 100,
    write(s: string) {
      this.text += s;
      return true;
    },
  });
  const out = mk(opts.tty ?? false);
  const err = mk(opts.tty ?? false);
  let handler: (() => void) | undefined;
  let last: (() => void) | undefined;
  const exits: number[] = [];
  const io: CliIo = {
    stdout: out,
    stderr: err,
    env: opts.env ?? {},
    cwd: opts.cwd ?? tempDir(),
    fetch: opts.fetch ?? globalThis.fetch,
    onSigint(h) {
      handler = h;
      last = h;
      return () => {
        if (handler === h) handler = undefined;
      };
    },
    sleep: opts.sleep ?? ((ms, signal) => delay(ms, undefined, signal === undefined ? {} : { signal })),
    now: opts.now ?? (() => performance.now()),
    exit: (code) => {
      exits.push(code);
    },
  };
  return {
    io,
    out,
    err,
    exits,
    lastSigintHandler: () => last,
    sigint() {
      if (handler === undefined) throw new Error('no Ctrl-C handler is registered');
      handler();
    },
  };
}
