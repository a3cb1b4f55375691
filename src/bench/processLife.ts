/** Shutdown wiring shared by the benchmark's child processes. */

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
