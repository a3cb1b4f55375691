/**
 * Entry point: load .env and config, start the local agent in local mode,
 * build the bridge, listen, and drain on SIGTERM/SIGINT.
 */
import { mkdirSync } from 'node:fs';
import { createBridge } from './app.js';
import { ConfigError, loadConfig, loadDotEnv } from './config.js';
import { LocalAgentServer } from './sim/localAgent.js';
import { createLogger } from './log.js';

/** After the drain, how long the HTTP server keeps answering (final status callbacks). */
const STATUS_CALLBACK_LINGER_MS = 2000;

async function main(): Promise<void> {
  loadDotEnv();
  let config;
  try {
    config = loadConfig();
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`playline: configuration error: ${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
  const logger = createLogger(config.logLevel);
  mkdirSync(config.dataDir, { recursive: true });

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
    logger.info({ agentUrl: localAgent.url, mode: config.localAgentOptions.mode }, 'local mode: no PLAYAI_API_KEY, every call goes to the built-in local agent');
  }
  if (config.twilio.authToken === undefined) {
    logger.warn('local mode: no TWILIO_AUTH_TOKEN, so Twilio signatures cannot be checked; Twilio routes only answer loopback clients');
  } else if (!config.publicUrl.startsWith('https://')) {
    logger.warn({ publicUrl: config.publicUrl }, 'PUBLIC_URL is not https: Twilio only connects media streams to wss:// URLs');
  }

  const bridge = await createBridge(config, logger, { agentBaseUrl });
  await bridge.app.listen({ port: config.port, host: config.host });
  logger.info(
    { publicUrl: config.publicUrl, streamUrl: config.streamUrl, maxConcurrentCalls: config.maxConcurrentCalls, routes: config.routes.size },
    'playline ready',
  );

  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) {
      logger.warn({ signal }, 'second signal: ending every call now');
      for (const session of [...bridge.manager.sessions()]) session.close('shutdown');
      process.exit(0);
    }
    stopping = true;
    logger.info({ signal, liveCalls: bridge.manager.liveCalls, drainTimeoutMs: config.drainTimeoutMs }, 'shutting down');
    try {
      const { endedByDrain } = await bridge.drain(config.drainTimeoutMs);
      // Twilio posts the last status callbacks just after the streams close: keep answering briefly.
      await new Promise((resolve) => setTimeout(resolve, STATUS_CALLBACK_LINGER_MS));
      await bridge.app.close();
      await localAgent?.close();
      logger.info({ endedByDrain }, 'stopped');
    } catch (err) {
      logger.error({ err }, 'error while shutting down');
    } finally {
      logger.flush?.();
      process.exit(0);
    }
  };
  process.on('SIGTERM', () => void stop('SIGTERM'));
  process.on('SIGINT', () => void stop('SIGINT'));
}

main().catch((err: unknown) => {
  process.stderr.write(`playline: failed to start: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`);
  process.exit(1);
});
