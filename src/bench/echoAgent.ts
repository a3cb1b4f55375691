/**
 * The benchmark's agent process: an echo agent speaking one provider's wire
 * protocol, with the barge-in marker hook on.
 *
 * - `playai` (default): the built-in local agent (`src/sim/localAgent.ts`) in
 *   `echo` mode, the same server as `npm run agent -- --mode echo`, plus
 *   `bargeInMarker`.
 * - `openai`, `elevenlabs`, `deepgram`, `elevenlabs-pcm16`: the lean echo agents
 *   of `src/bench/agents/` (see each file for what it sends).
 *
 *   node dist/bench/echoAgent.js [--agent NAME] [--api-key KEY] [--port N] [--no-barge-in-marker] [--watch-stdin]
 *
 * Prints `<agent> echo agent listening on URL` on stdout, URL being what the
 * bridge is configured with (see `agents/kinds.ts`). Exits on SIGTERM/SIGINT,
 * and with `--watch-stdin` when its stdin closes (the benchmark runner died).
 */
import { LocalAgentServer } from '../sim/localAgent.js';
import type { EchoAgent } from './agents/common.js';
import { startDeepgramEcho } from './agents/deepgram.js';
import { startElevenLabsEcho } from './agents/elevenlabs.js';
import { BENCH_AGENTS, isBenchAgent, type BenchAgent } from './agents/kinds.js';
import { startOpenAiEcho } from './agents/openai.js';
import { serverArgs, stopOn } from './processLife.js';

const HELP = `Usage: node dist/bench/echoAgent.js [--agent NAME] [--api-key KEY] [--port N] [--no-barge-in-marker] [--watch-stdin]

Echo agent for benchmarks, on 127.0.0.1: every caller audio chunk comes back at once.
  --agent NAME   wire protocol: ${BENCH_AGENTS.join(', ')} (default playai: the local agent)
  --api-key KEY  key the openai and deepgram agents require (default: any)
`;

async function start(agent: BenchAgent, port: number, bargeInMarker: boolean, apiKey: string | undefined): Promise<EchoAgent> {
  const base = { host: '127.0.0.1', port, bargeInMarker };
  const key = apiKey !== undefined ? { apiKey } : {};
  switch (agent) {
    case 'playai': {
      const server = await LocalAgentServer.start({ ...base, mode: 'echo' });
      return {
        url: server.url,
        port: server.port,
        get connections() {
          return server.activeConnections;
        },
        close: () => server.close(),
      };
    }
    case 'openai':
      return startOpenAiEcho({ ...base, ...key });
    case 'elevenlabs':
      return startElevenLabsEcho({ ...base, format: 'ulaw_8000' });
    case 'elevenlabs-pcm16':
      return startElevenLabsEcho({ ...base, format: 'pcm_16000' });
    case 'deepgram':
      return startDeepgramEcho({ ...base, ...key });
  }
}

async function main(): Promise<void> {
  const args = serverArgs('echoAgent', HELP, ['no-barge-in-marker'], ['agent', 'api-key']);
  if (args === undefined) return;
  const name = args.strings.agent ?? 'playai';
  if (!isBenchAgent(name)) {
    process.stderr.write(`echoAgent: --agent must be one of ${BENCH_AGENTS.join(', ')} (got ${JSON.stringify(name)})\n${HELP}`);
    process.exit(2);
  }
  const server = await start(name, args.port, !args.flags['no-barge-in-marker'], args.strings['api-key']);
  process.stdout.write(`${name} echo agent listening on ${server.url}\n`);
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
