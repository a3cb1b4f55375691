/**
 * Standalone local PlayAI-protocol agent (see `src/sim/localAgent.ts`).
 *
 *   node dist/cli/agent.js [--port N] [--host H] [--mode echo-test|echo]
 *
 * Prints `local agent listening on ws://…` on stdout and exits 0 on SIGTERM/SIGINT.
 * Logs go to stderr (level from `LOG_LEVEL`, default `info`).
 */
import { parseArgs } from 'node:util';
import { pino } from 'pino';
import { LocalAgentServer } from '../sim/localAgent.js';

const USAGE = `Usage: node dist/cli/agent.js [options]

Runs the built-in PlayAI-protocol agent. The bridge connects to
ws://HOST:PORT/v1/talk/{agentId}.

Options:
  --port N        port to listen on (default 0 = random free port)
  --host H        interface to listen on (default 127.0.0.1)
  --mode M        echo-test (default: greeting, then plays back what you say)
                  or echo (answers every audio frame with itself, for benchmarks)
  --api-key K     require this apiKey in setup (default: accept any)
  -h, --help      show this help
`;

function fail(message: string): never {
  process.stderr.write(`agent: ${message}\n\n${USAGE}`);
  process.exit(2);
}

async function main(): Promise<void> {
  let values: { port?: string; host?: string; mode?: string; 'api-key'?: string; help?: boolean };
  try {
    ({ values } = parseArgs({
      options: {
        port: { type: 'string' },
        host: { type: 'string' },
        mode: { type: 'string' },
        'api-key': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      allowPositionals: false,
      strict: true,
    }));
  } catch (err) {
    fail(err instanceof Error ? err.message : String(err));
  }
  if (values.help === true) {
    process.stdout.write(USAGE);
    return;
  }
  const port = values.port === undefined ? 0 : Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`invalid --port ${values.port ?? ''}`);
  const mode = values.mode ?? 'echo-test';
  if (mode !== 'echo-test' && mode !== 'echo') fail(`invalid --mode ${mode}`);

  const logger = pino({ name: 'local-agent', level: process.env.LOG_LEVEL ?? 'info' }, pino.destination(2));
  const server = await LocalAgentServer.start({
    port,
    host: values.host ?? '127.0.0.1',
    mode,
    ...(values['api-key'] !== undefined ? { apiKey: values['api-key'] } : {}),
    logger,
  });
  process.stdout.write(`local agent listening on ${server.url} (mode ${mode}); agent URL: ${server.url}/v1/talk/{agentId}\n`);

  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, 'local agent stopping');
    server.close().then(
      () => process.exit(0),
      (err: unknown) => {
        logger.error({ err }, 'local agent close failed');
        process.exit(1);
      },
    );
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

main().catch((err: unknown) => {
  process.stderr.write(`agent: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
