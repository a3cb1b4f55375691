/** Argument and shutdown wiring shared by the benchmark's child processes. */
import { parseArgs } from 'node:util';

/**
 * Runs `stop` once on SIGTERM, SIGINT or, with `watchStdin`, when the parent
 * closes our stdin (so a killed runner does not leave children behind).
 */
export function stopOn(stop: () => void, watchStdin: boolean): void {
  let stopped = false;
  const once = (): void => {
    if (stopped) return;
    stopped = true;
    stop();
  };
  process.once('SIGTERM', once);
  process.once('SIGINT', once);
  if (watchStdin) {
    process.stdin.on('end', once);
    process.stdin.on('error', once);
    process.stdin.resume();
  }
}

/** Parses a `--port` value (0 = any free port); exits 2 with `help` when it is not a port. */
export function portArg(value: string | undefined, who: string, help: string): number {
  const port = Number(value);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    process.stderr.write(`${who}: invalid --port\n${help}`);
    process.exit(2);
  }
  return port;
}

/**
 * Parses a bench server's command line: `--port N`, `--watch-stdin`, `--help`,
 * the extra boolean `flags` and the extra string `strings`. Returns undefined
 * after printing `help`; exits 2 with `help` on an unknown option.
 */
export function serverArgs<F extends string, S extends string = never>(
  who: string,
  help: string,
  flags: readonly F[] = [],
  strings: readonly S[] = [],
): { port: number; watchStdin: boolean; flags: Record<F, boolean>; strings: Partial<Record<S, string>> } | undefined {
  const options: Record<string, { type: 'string' | 'boolean'; default?: string | boolean; short?: string }> = {
    port: { type: 'string', default: '0' },
    'watch-stdin': { type: 'boolean', default: false },
    help: { type: 'boolean', short: 'h', default: false },
  };
  for (const f of flags) options[f] = { type: 'boolean', default: false };
  for (const k of strings) options[k] = { type: 'string' };
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ options, strict: true }));
  } catch (err) {
    process.stderr.write(`${who}: ${err instanceof Error ? err.message : String(err)}\n${help}`);
    process.exit(2);
  }
  if (values.help === true) {
    process.stdout.write(help);
    return undefined;
  }
  const out = {} as Record<F, boolean>;
  for (const f of flags) out[f] = values[f] === true;
  const str: Partial<Record<S, string>> = {};
  for (const k of strings) {
    const v = values[k];
    if (typeof v === 'string') str[k] = v;
  }
  return { port: portArg(typeof values.port === 'string' ? values.port : undefined, who, help), watchStdin: values['watch-stdin'] === true, flags: out, strings: str };
}
