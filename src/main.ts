/**
 * Entry point: load .env and config, start the local agent in local mode,
 * build the bridge, listen, and drain on SIGTERM/SIGINT.
 */
import cluster from 'node:cluster';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import { createBridge } from './app.js';
import { ConfigError, loadConfig, loadDotEnv, misspeltSettings, type Config } from './config.js';
import { LocalAgentServer } from './sim/localAgent.js';
import { createLogger, resolveLogFormat } from './log.js';
import { DataDirError, openDataDir } from './store/db.js';
import { openPostgresStore, redactUrl } from './store/postgres.js';
import { sqliteStore, type Store } from './store/store.js';
import { checkPlayaiAgents } from './agent/playai/bootCheck.js';
import { reportWorkerReady, runPrimary, workerSlot } from './workers.js';

/** After the drain, how long the HTTP server keeps answering (final status callbacks). */
const STATUS_CALLBACK_LINGER_MS = 2000;

/**
 * Signals that arrive this soon after the first one are the same request to stop: Ctrl-C in a
 * terminal reaches both npm and node, and npm passes its copy on; systemd's default
 * KillMode=control-group signals every process of the service. Only a later signal forces.
 */
const REPEAT_SIGNAL_WINDOW_MS = 2000;

/** Errors whose message already says what is wrong and what to do: printed as one line, no stack. */
class StartError extends Error {
  override name = 'StartError';
}

/** `listen` failures an operator can fix, as one line naming the setting. */
function listenError(err: unknown, config: Config): unknown {
  const code = err instanceof Error && 'code' in err ? err.code : undefined;
  const where = `${config.host}:${config.port}`;
  if (code === 'EADDRINUSE') return new StartError(`PORT ${config.port}: ${where} is already in use (EADDRINUSE): stop the other server or set another PORT`);
  if (code === 'EACCES') return new StartError(`PORT ${config.port}: not allowed to listen on ${where} (EACCES): use a port above 1023 or run with the right capability`);
  if (code === 'EADDRNOTAVAIL') return new StartError(`HOST ${config.host}: no such address on this machine (EADDRNOTAVAIL): use 127.0.0.1, 0.0.0.0 or an address of this host`);
  return err;
}

/** The address to open in a browser: the bound port on 127.0.0.1 when listening on every interface. */
function localUrl(host: string, port: number): string {
  const h = host === '0.0.0.0' || host === '::' || host === '' ? '127.0.0.1' : host;
  return `http://${h.includes(':') ? `[${h}]` : h}:${port}`;
}

/**
 * How long listening waits for the prompts' boot synthesis (and the PlayAI agent check): the
 * first refused caller then hears the agent voice, yet a slow TTS never holds the boot up for
 * long. Prompts not ready by then keep synthesizing in the background (callers get <Say> meanwhile).
 */
const PROMPT_WARM_WAIT_MS = 3000;

/** True when `p` settles within `ms`. */
async function settlesWithin(p: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  try {
    return await Promise.race([p.then(() => true, () => true), late]);
  } finally {
    clearTimeout(timer);
  }
}

/** The records store: Postgres with DATABASE_URL (migrated at boot), else SQLite in DATA_DIR. */
async function openStore(config: Config, logger: Logger): Promise<Store> {
  if (config.database === undefined) return sqliteStore(openDataDir(config.dataDir));
  try {
    const store = await openPostgresStore(config.database.url);
    logger.info({ database: redactUrl(config.database.url) }, 'records in Postgres (DATABASE_URL)');
    return store;
  } catch (err) {
    throw new StartError(err instanceof Error ? err.message : String(err));
  }
}

const plural = (n: number, what: string) => `${n} ${what}${n === 1 ? '' : 's'}`;

/** `npm start -- --help`: what the server reads and where the settings are documented. */
const HELP = `Usage: npm start            (node dist/main.js)

Starts the Playline bridge. Every setting comes from the environment (or a .env file in this
directory); none is given on the command line. With no keys set it runs in local mode: a local
agent and a simulated carrier on http://127.0.0.1:8080.

Often used:
  PORT, HOST, PUBLIC_URL          where it listens, and the https origin Twilio calls
  TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN
  DEFAULT_AGENT                   openai:<model>, elevenlabs:<agent_id>, deepgram:<name> or playai:<id>
  MAX_CONCURRENT_CALLS, AGENT_LIMITS, INBOUND_RESERVED, OUTBOUND_MAX_CPS
  API_TOKEN                       bearer token of the HTTP API and the console
  DATA_DIR                        SQLite records (default ./data)
  DATABASE_URL                    postgres://… : records in Postgres instead
  REDIS_URL                       redis://… : several processes act as one bridge
  WORKERS                         processes on this PORT (a number or auto; above 1 needs REDIS_URL)
  DRAIN_TIMEOUT_S                 how long SIGTERM lets live calls run

Every setting, with its default: README.md ("Settings") and .env.example.
`;

async function main(): Promise<void> {
  if (process.argv.includes('--help') || process.argv.includes('-h')) {
    process.stdout.write(HELP);
    return;
  }
  loadDotEnv();
  const config = loadConfig();
  const rootLogger = createLogger(config.logLevel, undefined, resolveLogFormat(config.logFormat, process.stdout.isTTY));
  const slot = workerSlot();
  // WORKERS=N: every line of a worker names it (1..N); the primary's lines have no `worker`.
  const logger = slot === undefined ? rootLogger : rootLogger.child({ worker: slot });
  if (slot === undefined) {
    for (const { name, suggestion } of misspeltSettings(Object.keys(process.env))) {
      logger.warn({ variable: name, suggestion }, `${name} is not a Playline setting and is ignored: did you mean ${suggestion}?`);
    }
  }
  if (config.workers > 1 && cluster.isPrimary) {
    // The primary: forks the workers, which serve; it opens neither the port's server nor the database.
    const code = await runPrimary({ workers: config.workers, logger, drainTimeoutMs: config.drainTimeoutMs });
    logger.flush?.();
    process.exit(code);
  }
  // First, so an unwritable DATA_DIR (or an unreachable DATABASE_URL) stops the start before anything else happens.
  const store = await openStore(config, logger);
  // Local mode: without a Twilio auth token the Twilio routes (and the API without API_TOKEN) serve this machine only.
  const localMode = config.twilio.authToken === undefined;

  let localAgent: LocalAgentServer | undefined;
  let agentBaseUrl = config.playai.wsUrl;
  if (config.localAgent) {
    localAgent = await LocalAgentServer.start({
      host: '127.0.0.1',
      port: config.localAgentOptions.port,
      mode: config.localAgentOptions.mode,
      logger: logger.child({ component: 'local-agent' }),
    });
    agentBaseUrl = localAgent.url;
    logger.info({ agentUrl: localAgent.url, mode: config.localAgentOptions.mode }, 'local mode: no agent credentials, every call goes to the built-in local agent');
  } else {
    logger.info({ defaultAgent: config.agents.defaultAgent, agentsFile: config.agents.definitions.size }, 'agents configured');
    if (config.agents.defaultAgent.startsWith('playai:') && /(^|\.)play\.ai$/i.test(new URL(config.playai.wsUrl).hostname)) {
      logger.warn(
        { defaultAgent: config.agents.defaultAgent, playaiWsUrl: config.playai.wsUrl },
        'the default agent is a PlayAI agent at api.play.ai, whose public API closed at the end of 2025: calls will fail. Set DEFAULT_AGENT to an openai:, elevenlabs: or deepgram: agent, or PLAYAI_WS_URL to your own PlayAI-protocol server',
      );
    }
  }
  if (localMode) {
    logger.warn('local mode: no TWILIO_AUTH_TOKEN, so Twilio signatures cannot be checked; Twilio routes only answer requests from this machine');
  } else if (!config.publicUrl.startsWith('https://')) {
    logger.warn({ publicUrl: config.publicUrl }, 'PUBLIC_URL is not https: Twilio only connects media streams to wss:// URLs');
  }

  // When the PlayAI REST API is configured, each PlayAI agent the configuration names must exist there.
  const agentCheck = config.localAgent ? Promise.resolve([]) : checkPlayaiAgents(config, logger.child({ component: 'agents' }));
  const bridge = await createBridge(config, logger, { agentBaseUrl, store });
  const [checks, promptsReady] = await Promise.all([agentCheck, settlesWithin(bridge.promptsWarm, PROMPT_WARM_WAIT_MS)]);
  if (!promptsReady) logger.info({ waitedMs: PROMPT_WARM_WAIT_MS }, 'prompts are still being synthesized; listening now (callers hear <Say> until each is ready)');
  const missing = checks.filter((c) => c.result === 'missing');
  if (missing.length > 0) {
    await bridge.app.close();
    await store.close();
    await localAgent?.close();
    throw new StartError(
      `PlayAI agent${missing.length === 1 ? '' : 's'} ${missing.map((c) => `${c.agentId} (${c.where.join(', ')})`).join('; ')} not found by the PlayAI REST API at ${config.playaiRest.baseUrl}: fix the agent id, or unset PLAYAI_USER_ID to skip this check`,
    );
  }
  try {
    await bridge.app.listen({ port: config.port, host: config.host });
  } catch (err) {
    throw listenError(err, config);
  }
  reportWorkerReady();
  const address = bridge.app.server.address();
  const port = typeof address === 'object' && address !== null ? address.port : config.port;
  const url = localUrl(config.host, port);
  // The CLIs default to http://127.0.0.1:8080 (or $PORT): name the address when it is another.
  const urlFlag = url === 'http://127.0.0.1:8080' ? '' : ` --url ${url}`;
  const tryIt = [`npm run call${urlFlag ? ` --${urlFlag}` : ''}`, `npm run campaign -- examples/contacts.csv${urlFlag}`];
  logger.info(
    {
      url,
      console: `${url}/`,
      docs: `${url}/docs`,
      metrics: `${url}/metrics`,
      publicUrl: config.publicUrl,
      streamUrl: config.streamUrl,
      maxConcurrentCalls: config.maxConcurrentCalls,
      routes: config.routes.size,
    },
    `playline ready on ${url} (API docs ${url}/docs, metrics ${url}/metrics)` +
      (localMode ? `; open ${url}/ to talk to the agent from this browser, or try it from another terminal: ${tryIt.join(' or ')}` : `; Twilio reaches ${config.publicUrl}`),
  );
  if (!localMode && config.metricsToken === undefined) {
    logger.info(
      `/metrics answers anyone who can reach ${config.host}:${port} (call counts and process stats, no numbers or audio): ` +
        'set METRICS_TOKEN to require a bearer token, or keep the port private (HOST=127.0.0.1 behind a proxy, a firewall)',
    );
  }

  let firstSignalAt: number | undefined;
  const endEveryCallNow = (signal: NodeJS.Signals): void => {
    logger.warn({ signal, liveCalls: bridge.manager.liveCalls }, 'second signal: ending every call now');
    for (const session of [...bridge.manager.sessions()]) session.close('shutdown');
    logger.flush?.();
    process.exit(0);
  };
  const drainAndExit = async (signal: NodeJS.Signals): Promise<void> => {
    const liveCalls = bridge.manager.liveCalls;
    logger.info(
      { signal, liveCalls, drainTimeoutMs: config.drainTimeoutMs },
      liveCalls === 0
        ? 'shutting down'
        : `shutting down: waiting up to ${Math.round(config.drainTimeoutMs / 1000)} s for ${plural(liveCalls, 'live call')} to end; ` +
            `send SIGINT/SIGTERM again (Ctrl-C twice, more than ${REPEAT_SIGNAL_WINDOW_MS / 1000} s apart) to end every call now`,
    );
    try {
      const { endedByDrain } = await bridge.drain(config.drainTimeoutMs);
      // Twilio posts the last status callbacks just after the streams close: keep answering briefly.
      await new Promise((resolve) => setTimeout(resolve, STATUS_CALLBACK_LINGER_MS));
      await bridge.app.close();
      await store.close();
      await localAgent?.close();
      logger.info({ endedByDrain }, 'stopped');
    } catch (err) {
      logger.error({ err }, 'error while shutting down');
    } finally {
      logger.flush?.();
      process.exit(0);
    }
  };
  const onSignal = (signal: NodeJS.Signals): void => {
    const now = performance.now();
    if (firstSignalAt === undefined) {
      firstSignalAt = now;
      void drainAndExit(signal);
    } else if (now - firstSignalAt < REPEAT_SIGNAL_WINDOW_MS) {
      logger.info({ signal }, `${signal} again within ${REPEAT_SIGNAL_WINDOW_MS / 1000} s of the first signal (npm or systemd passing it on): still draining`);
    } else {
      endEveryCallNow(signal);
    }
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

main().catch((err: unknown) => {
  if (err instanceof ConfigError) {
    process.stderr.write(`playline: configuration error: ${err.message}\n`);
  } else if (err instanceof DataDirError || err instanceof StartError) {
    process.stderr.write(`playline: cannot start: ${err.message}\n`);
  } else {
    process.stderr.write(`playline: failed to start: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  }
  process.exit(1);
});
