/**
 * Builds the Fastify app and everything a running bridge needs, without
 * listening: `main.ts` listens, tests call `createBridge` with their own fakes.
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import formbody from '@fastify/formbody';
import websocket from '@fastify/websocket';
import type { Logger } from 'pino';
import { connectAgent as wsConnectAgent, type AgentConnector } from './agent/leg.js';
import { LocalCallControl, TwilioRestCallControl, type CallControl } from './carrier/twilio/callControl.js';
import type { Config } from './config.js';
import { healthRoutes } from './http/health.js';
import { mediaStreamRoute } from './http/mediaStream.js';
import { twilioWebhooks } from './http/twilioWebhooks.js';
import { Metrics } from './metrics.js';
import type { SessionSettings } from './session/callSession.js';
import { LoadGuard } from './session/loadGuard.js';
import { SessionManager } from './session/manager.js';

/** Largest frame accepted from Twilio (real frames are ~300 bytes). */
export const TWILIO_MAX_PAYLOAD = 64 * 1024;

export interface BridgeOverrides {
  callControl?: CallControl;
  connectAgent?: AgentConnector;
  /** Where agent sockets go (defaults to config.playai.wsUrl). */
  agentBaseUrl?: string;
}

export interface Bridge {
  app: FastifyInstance;
  manager: SessionManager;
  metrics: Metrics;
  callControl: CallControl;
  settings: SessionSettings;
  /**
   * Graceful drain: stop admitting calls (readiness 503 at once), let live
   * calls end on their own for up to `timeoutMs`, then end the rest with a
   * goodbye. Resolves when no call is left. Does not close the server.
   */
  drain(timeoutMs: number): Promise<{ endedByDrain: number }>;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

async function waitFor(check: () => boolean, timeoutMs: number): Promise<boolean> {
  const deadline = performance.now() + timeoutMs;
  while (!check()) {
    if (performance.now() >= deadline) return false;
    await sleep(Math.min(100, Math.max(1, deadline - performance.now())));
  }
  return true;
}

export async function createBridge(config: Config, logger: Logger, overrides: BridgeOverrides = {}): Promise<Bridge> {
  const loadGuard = new LoadGuard(config.maxEventLoopDelayMs);
  const manager = new SessionManager({
    overloaded: () => loadGuard.overloaded,
    maxConcurrentCalls: config.maxConcurrentCalls,
    tokenTtlMs: config.timeouts.streamTokenTtlMs,
    defaultAgentId: config.playai.defaultAgentId,
    routes: config.routes,
    forceAgentId: config.localAgent ? config.playai.defaultAgentId : undefined,
    agentLimits: config.agentLimits,
    agentCapacityCooldownMs: config.agentCapacityCooldownMs,
    onReservationExpired: (callSid) => {
      metrics.streamRejectedTotal.labels('reservation_expired').inc();
      logger.warn({ callSid }, 'no media stream arrived for an admitted call; slot released');
    },
  });
  const metrics = new Metrics({
    liveCalls: () => manager.liveCalls,
    reservedSlots: () => manager.reservedSlots,
    capacity: () => manager.capacity,
    draining: () => manager.draining,
  });
  const say = { voice: config.messages.voice, language: config.messages.language };
  const callControl =
    overrides.callControl ??
    (config.twilio.accountSid !== undefined && config.twilio.authToken !== undefined
      ? new TwilioRestCallControl({
          accountSid: config.twilio.accountSid,
          authToken: config.twilio.authToken,
          say,
          log: logger,
          apiUrl: config.twilioApiUrl,
        })
      : new LocalCallControl());
  const settings: SessionSettings = {
    agentBaseUrl: overrides.agentBaseUrl ?? config.playai.wsUrl,
    apiKey: config.playai.apiKey,
    agentInitTimeoutMs: config.timeouts.agentInitTimeoutMs,
    hangupDrainMs: config.timeouts.hangupDrainMs,
    callControlGraceMs: config.timeouts.callControlGraceMs,
    markIntervalMs: config.media.markIntervalMs,
    preInitBufferMs: config.media.preInitBufferMs,
    audioInBatchMs: config.media.audioInBatchMs,
    agentHeartbeatMs: config.agentReconnect.heartbeatMs,
    reconnect: config.agentReconnect,
    maxCallMs: config.timeouts.maxCallMs,
    idleMs: config.timeouts.idleMs,
    texts: config.messages,
    overflow: config.overflow,
  };

  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 256 * 1024,
    routerOptions: { ignoreTrailingSlash: true },
  });
  await app.register(formbody);
  await app.register(websocket, {
    // Frames are validated by our own codec (ASCII base64 audio, JSON otherwise), so ws need not
    // check UTF-8 on every frame first.
    options: { maxPayload: TWILIO_MAX_PAYLOAD, perMessageDeflate: false, skipUTF8Validation: true },
  });
  await app.register(healthRoutes, { manager, metrics });
  await app.register(twilioWebhooks, { config, manager, metrics });
  await app.register(mediaStreamRoute, {
    config,
    manager,
    metrics,
    logger,
    callControl,
    connectAgent: overrides.connectAgent ?? wsConnectAgent,
    settings,
  });
  manager.startSweep(config.timeouts.sweepIntervalMs);
  app.addHook('onClose', async () => {
    for (const s of [...manager.sessions()]) s.close('shutdown');
    manager.dispose();
    loadGuard.dispose();
  });
  const drain = async (timeoutMs: number): Promise<{ endedByDrain: number }> => {
    manager.startDrain();
    logger.info({ liveCalls: manager.liveCalls, reservedSlots: manager.reservedSlots, timeoutMs }, 'draining: no new calls; waiting for live calls to end');
    if (await waitFor(() => manager.usedSlots === 0, timeoutMs)) return { endedByDrain: 0 };
    const left = [...manager.sessions()];
    logger.warn({ liveCalls: left.length }, 'drain timeout: ending the remaining calls with a goodbye');
    for (const s of left) s.endWithGoodbye('shutdown');
    await waitFor(() => manager.liveCalls === 0, settings.callControlGraceMs + 1000);
    for (const s of [...manager.sessions()]) s.close('shutdown');
    manager.dispose();
    return { endedByDrain: left.length };
  };
  return { app, manager, metrics, callControl, settings, drain };
}
