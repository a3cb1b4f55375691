/**
 * The benchmark's agent process: the built-in local agent (`src/sim/localAgent.ts`)
 * in `echo` mode with the barge-in marker hook on. Same server as `npm run agent --
 * --mode echo`, plus `bargeInMarker` (see the local agent's docs).
 *
 *   node dist/bench/echoAgent.js [--port N] [--no-barge-in-marker] [--watch-stdin]
 *
 * Prints `local agent listening on ws://127.0.0.1:PORT` on stdout.
 * Exits on SIGTERM/SIGINT, and with `--watch-stdin` when its stdin closes
 * (the benchmark runner died).
 */
import { LocalAgentServer } from '../sim/localAgent.js';
import { serverArgs, stopOn } from './processLife.js';

const HELP = `Usage: node dist/bench/echoAgent.js [--port N] [--no-barge-in-marker] [--watch-stdin]

Local PlayAI-protocol agent in echo mode for benchmarks, on 127.0.0.1.
`;

async function main(): Promise<void> {
  const args = serverArgs('echoAgent', HELP, ['no-barge-in-marker']);
  if (args === undefined) return;
  const port = args.port;
  const server = await LocalAgentServer.start({ host: '127.0.0.1', port, mode: 'echo', bargeInMarker: !args.flags['no-barge-in-marker'] });
  process.stdout.write(`local agent listening on ${server.url}\n`);
  const stop = (): void => {
    void server.close().finally(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  };
  stopOn(stop, args.watchStdin);
}

main().catch((err: unknown) => {
  process.stderr.write(`echoAgent: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
