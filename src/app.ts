/**
 * Builds the Fastify app and everything a running bridge needs, without
 * listening: `main.ts` listens, tests call `createBridge` with their own fakes.
 */
import Fastify, { LogController, type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import formbody from '@fastify/formbody';
import websocket from '@fastify/websocket';
import type { Logger } from 'pino';
import type { PlayAiConnector } from './agent/playai/leg.js';
import { buildAgentDirectory, probeAgent, type AgentEndpointOverrides } from './agent/providers.js';
import type { AgentDirectory } from './agent/directory.js';
import { parseAgentRef } from './agent/port.js';
import { LocalCallControl, TwilioRestCallControl, type CallControl } from './carrier/twilio/callControl.js';
import { ConfigError, type Config } from './config.js';
import { consoleRoutes } from './http/console.js';
import { healthRoutes } from './http/health.js';
import { mediaStreamRoute, streamRouteSettings, onWebSocketError } from './http/mediaStream.js';
import { statusUpdateOf, twilioWebhooks } from './http/twilioWebhooks.js';
import { FleetAdmission } from './session/fleetAdmission.js';
import { FleetError } from './fleet/redis.js';
import { transferAddressSchema } from './transfer/targets.js';
import { z } from 'zod';
import { FleetEventBus } from './fleet/events.js';
import { TERMINAL_CALL_STATUSES } from './store/calls.js';
import { Metrics } from './metrics.js';
import type { SessionSettings, TransferRequest, TransferStart } from './session/callSession.js';
import { LoadGuard } from './session/loadGuard.js';
import { SessionManager, type AdmittedCall, type CallRoute, type SessionResume, type Slot } from './session/manager.js';
import { apiRoutes } from './api/routes.js';
import { docsRoutes } from './api/docs.js';
import { errorBody, errorHandler, notFoundHandler } from './api/errors.js';
import { fetchConversationTranscript } from './agent/playai/rest.js';
import { DeferredDialer, type Dialer } from './outbound/dialer.js';
import { OutboundService } from './outbound/service.js';
import { TwilioDialer } from './outbound/twilioDialer.js';
import { WebhookDispatcher } from './outbound/webhooks.js';
import { LocalDialer } from './sim/simCarrier.js';
import type { CampaignStore } from './store/campaigns.js';
import type { CallStore } from './store/calls.js';
import { sqliteStore, type Store } from './store/store.js';
import { CallRecorder } from './calls/recorder.js';
import { errorCode } from './util/errors.js';
import { openDataDir, type Db } from './store/db.js';
import { callHttpTool, type ToolRunner } from './tools/http.js';
import { TransferCoordinator, type TransferCarrier } from './transfer/coordinator.js';
import { runTransferCallback, transferCallbacks, type TransferCallbackFields, type TransferCallbackKind } from './http/transferCallbacks.js';
import { WebCalls } from './calls/webCalls.js';
import { setupFacts } from './api/liveRoutes.js';
import { webMediaStreamRoute } from './http/webMediaStream.js';
import { eventsRoutes } from './api/events.js';
import { MemoryEventBus, type EventBus } from './events/bus.js';
import { CallEvents } from './events/callEvents.js';
import { isEventType } from './events/types.js';
import { forwardEventsToWebhook } from './events/webhookForwarder.js';
import { promptRoutes } from './http/prompts.js';
import type { TtsPort } from './tts/port.js';
import type { PromptService } from './tts/prompts.js';
import { createPromptService } from './tts/setup.js';
import { RecordingService, recordingOffRefusal } from './recording/service.js';
import { TwilioRecordings, type TwilioRecordingsPort } from './recording/twilioRecordings.js';
import { recordingCallbacks } from './http/recordingCallbacks.js';
import { recordingRoutes } from './api/recordingRoutes.js';
import { AgentDirectory as AgentDirectoryClass } from './agent/directory.js';

/** A voicemail message waits at most this long for its audio in the agent's voice (then `<Say>`). */
const VOICEMAIL_TTS_WAIT_MS = 2500;

/** Largest frame accepted from Twilio (real frames are ~300 bytes). */
export const TWILIO_MAX_PAYLOAD = 64 * 1024;

export interface BridgeOverrides {
  callControl?: CallControl;
  /** PlayAI socket transport (in-process fakes). */
  connectAgent?: PlayAiConnector;
  /** Where PlayAI-protocol sockets go (defaults to config.playai.wsUrl; the local agent's in local mode). */
  agentBaseUrl?: string;
  /** Other providers' endpoints (tests point them at fakes). */
  agentUrls?: Pick<AgentEndpointOverrides, 'openaiUrl' | 'elevenlabsUrl' | 'deepgramUrl'>;
  /** Probe agents marked down (default true; tests that pin health without probes turn it off). */
  probeAgents?: boolean;
  /** Outbound carrier (defaults to Twilio REST with credentials, else the simulated local carrier). */
  dialer?: Dialer;
  /** SQLite database (defaults to `playline.db` in DATA_DIR); left open at close. */
  db?: Db;
  /** The records store (instead of `db`); left open at close. */
  store?: Store;
  /** HTTP client for webhooks and the PlayAI REST API (tests). */
  fetchImpl?: typeof fetch;
  /** What carries transfers out (defaults to Twilio REST when credentials are set; none otherwise). */
  transferCarrier?: TransferCarrier;
  /** The built web console to serve at `/` (defaults to dist/console; tests build their own). */
  consoleDir?: string;
  /** Live event bus (defaults to the in-process one). */
  events?: EventBus;
  /** Prompt TTS instead of the configured one (tests; TTS must not be off). */
  tts?: TtsPort;
  /** Twilio's Recordings API (defaults to Twilio REST when RECORDING=twilio). */
  twilioRecordings?: TwilioRecordingsPort;
}

export interface Bridge {
  app: FastifyInstance;
  manager: SessionManager;
  /** REDIS_URL set: fleet-wide capacity, stream tokens and call control. */
  fleet: FleetAdmission | undefined;
  agents: AgentDirectory;
  metrics: Metrics;
  callControl: CallControl;
  settings: SessionSettings;
  outbound: OutboundService;
  calls: CallStore;
  campaigns: CampaignStore;
  recorder: CallRecorder;
  webhooks: WebhookDispatcher | undefined;
  /** Live events (`/v1/events`, WEBHOOK_EVENTS). */
  events: EventBus;
  /** Call recording (RECORDING). */
  recordings: RecordingService;
  /** Where the records live (SQLite in DATA_DIR, or Postgres with DATABASE_URL). */
  store: Store;
  /** Caller-facing prompts (TTS, cache, signed prompt URLs). */
  prompts: PromptService;
  /** Settles when the boot warm-up of the prompts is done (it runs in the background). */
  promptsWarm: Promise<{ ready: number; failed: number }>;
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
  const agentLog = logger.child({ component: 'agents' });
  const agents = buildAgentDirectory({
    config,
    overrides: {
      ...(overrides.agentBaseUrl !== undefined ? { playaiBaseUrl: overrides.agentBaseUrl } : {}),
      ...(overrides.connectAgent !== undefined ? { playaiConnect: overrides.connectAgent } : {}),
      ...overrides.agentUrls,
    },
    log: agentLog,
  });
  if (overrides.probeAgents !== false) agents.startProbing((ref) => probeAgent(agents, ref, agentLog));
  // REDIS_URL: set once the manager exists (the manager tells it of released and moved slots).
  let fleet: FleetAdmission | undefined;
  const manager = new SessionManager({
    ...(config.fleet !== undefined
      ? { onSlotReleased: (slot: Slot) => fleet?.slotReleased(slot), onSlotMoved: (slot: Slot, agentId: string) => fleet?.slotMoved(slot, agentId) }
      : {}),
    overloaded: () => loadGuard.overloaded,
    maxConcurrentCalls: config.maxConcurrentCalls,
    tokenTtlMs: config.timeouts.streamTokenTtlMs,
    defaultAgentId: config.agents.defaultAgent,
    routes: config.routes,
    forceAgentId: config.localAgent ? config.agents.defaultAgent : undefined,
    agentCandidates: (ref) => agents.candidates(ref),
    agentLimits: config.agentLimits,
    agentCapacityCooldownMs: config.agentCapacityCooldownMs,
    inboundReserved: config.outbound.inboundReserved,
    onReservationExpired: (callSid) => {
      metrics.streamRejectedTotal.labels('reservation_expired').inc();
      logger.warn({ callSid }, 'no media stream arrived for an admitted call; slot released');
      // A browser call whose socket never opened ends here (no carrier will say so).
      void outbound.finishWebCall(callSid);
    },
  });
  if (config.fleet !== undefined) {
    fleet = new FleetAdmission({
      redisUrl: config.fleet.redisUrl,
      prefix: config.fleet.prefix,
      leaseMs: config.fleet.leaseMs,
      maxConcurrentCalls: config.maxConcurrentCalls,
      inboundReserved: config.outbound.inboundReserved,
      agentLimits: config.agentLimits,
      maxCallMs: config.timeouts.maxCallMs,
      tokenTtlMs: config.timeouts.streamTokenTtlMs,
      agentCapacityCooldownMs: config.agentCapacityCooldownMs,
      manager,
      agentCandidates: (ref) => agents.candidates(ref),
      logger,
      onReservationExpired: (callSid) => {
        metrics.streamRejectedTotal.labels('reservation_expired').inc();
        logger.warn({ callSid }, 'no media stream arrived for an admitted call; slot released');
        // A browser call whose socket never opened ends here (no carrier will say so).
        void outbound.finishWebCall(callSid);
      },
      // A dialed or browser call's stream may land on a process other than its webhook's: its route is in its record.
      routeOfCall: (callId: string): Promise<CallRoute | undefined> => outbound.routeOfCall(callId),
      routeOfCallSid: (callSid: string): Promise<CallRoute | undefined> => outbound.routeOfCallSid(callSid),
    });
    try {
      await fleet.start();
    } catch (err) {
      await fleet.close();
      throw new ConfigError(`REDIS_URL: Redis did not answer at that address (${err instanceof Error ? err.message : String(err)}); start Redis there, fix REDIS_URL, or unset it to run one process alone`);
    }
    logger.info({ processId: fleet.processId, prefix: config.fleet.prefix, leaseMs: config.fleet.leaseMs }, 'fleet: capacity, stream tokens and call control shared through Redis');
  }
  let events: EventBus;
  try {
    events = overrides.events ?? (fleet !== undefined && config.fleet !== undefined ? await fleetEvents(config.fleet, config.eventsRetentionMs, fleet.processId, logger) : new MemoryEventBus({ retentionMs: config.eventsRetentionMs }));
  } catch (err) {
    await fleet?.close();
    throw err;
  }
  const publish = events.publish.bind(events);
  const callEvents = new CallEvents(publish);
  const metrics = new Metrics({
    eventSubscribers: () => events.subscriberCount,
    liveCalls: () => manager.liveCalls,
    reservedSlots: () => manager.reservedSlots,
    capacity: () => manager.capacity,
    draining: () => manager.draining,
    outboundSlots: () => manager.outboundSlots,
    agents: () => agents.knownAgents(),
    ...(fleet !== undefined ? { fleet: () => fleet.capacity() } : {}),
  });
  const prompts = await createPromptService(config, logger, metrics.registry, {
    ...(overrides.tts !== undefined ? { tts: overrides.tts } : {}),
    ...(overrides.fetchImpl !== undefined ? { fetchImpl: overrides.fetchImpl } : {}),
  });
  // The configured prompts are synthesized into the cache now, in the background.
  const promptsWarm = prompts.warm();
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
  const settings = sessionSettings(config);

  const store = overrides.store ?? sqliteStore(overrides.db ?? openDataDir(config.dataDir), { keepOpen: overrides.db !== undefined });
  const { calls, campaigns } = store;
  const onStoreError = (op: string, err: unknown): void => {
    metrics.storeErrorsTotal.labels(op, errorCode(err) || 'unknown').inc();
  };
  const recorder = new CallRecorder({ calls, log: logger.child({ component: 'calls' }), onStoreError, events: callEvents });
  // The simulated carrier needs the address the bridge listens on: it is set at listen time.
  const recordings = new RecordingService({
    settings: config.recording,
    calls,
    agentRecord: (ref) => config.agents.definitions.get(AgentDirectoryClass.normalize(ref) ?? ref)?.record,
    ...(config.recording.backend === 'twilio' && config.twilio.accountSid !== undefined && config.twilio.authToken !== undefined
      ? {
          twilio:
            overrides.twilioRecordings ??
            new TwilioRecordings({
              accountSid: config.twilio.accountSid,
              authToken: config.twilio.authToken,
              ...(config.twilioApiUrl !== undefined ? { apiUrl: config.twilioApiUrl } : {}),
              ...(overrides.fetchImpl !== undefined ? { fetchImpl: overrides.fetchImpl } : {}),
            }),
        }
      : {}),
    publicUrl: config.publicUrl,
    log: logger.child({ component: 'recordings' }),
  });
  recordings.repairAtBoot();
  const deferred = new DeferredDialer('local');
  const dialer: Dialer =
    overrides.dialer ??
    (config.outbound.localCarrier
      ? deferred
      : new TwilioDialer({
          accountSid: config.twilio.accountSid ?? '',
          authToken: config.twilio.authToken ?? '',
          say,
          log: logger,
          ...(config.twilioApiUrl !== undefined ? { apiUrl: config.twilioApiUrl } : {}),
          speech: (text) => prompts.spokenSoon({ text }, VOICEMAIL_TTS_WAIT_MS),
        }));
  const webhooks =
    config.webhook.url === undefined
      ? undefined
      : new WebhookDispatcher({
          store: store.webhooks,
          url: config.webhook.url,
          ...(config.webhook.secret !== undefined ? { secret: config.webhook.secret } : {}),
          log: logger.child({ component: 'webhooks' }),
          ...(overrides.fetchImpl !== undefined ? { fetchImpl: overrides.fetchImpl } : {}),
        });
  const playaiUserId = config.playaiRest.userId;
  const playaiKey = config.playai.apiKey;
  const outbound = new OutboundService({
    calls,
    campaigns,
    dialer,
    manager,
    log: logger,
    publicUrl: config.publicUrl,
    ...(config.outbound.defaultCallerId !== undefined ? { defaultFrom: config.outbound.defaultCallerId } : {}),
    defaultAgentId: config.agents.defaultAgent,
    maxCps: config.outbound.maxCps,
    ringTimeoutS: config.outbound.ringTimeoutS,
    maxCallS: Math.round(config.timeouts.maxCallMs / 1000),
    // The post-call webhook is the `call.completed` of WEBHOOK_EVENTS (listed by default).
    ...(webhooks !== undefined && config.webhook.events.includes('call.completed') ? { webhooks } : {}),
    events: { calls: callEvents, publish },
    ...(playaiUserId !== undefined && playaiKey !== undefined && !config.localAgent
      ? {
          fetchTranscript: async (row) => {
            // PlayAI's REST API knows PlayAI conversations only; other agents' calls keep the live transcript.
            const ref = parseAgentRef(row.agentId);
            if (ref?.provider !== 'playai') return undefined;
            const turns = await fetchConversationTranscript({
              baseUrl: config.playaiRest.baseUrl,
              apiKey: playaiKey,
              userId: playaiUserId,
              agentId: ref.id,
              conversationId: row.conversationId ?? '',
              ...(overrides.fetchImpl !== undefined ? { fetchImpl: overrides.fetchImpl } : {}),
            });
            return turns.map((t) => ({ role: t.role, text: t.content, at: Date.parse(t.timestamp) || Date.now() }));
          },
        }
      : {}),
    onDial: (result) => metrics.outboundDialsTotal.labels(result).inc(),
    onStoreError,
    ...(fleet !== undefined ? { remoteHangup: (callSid: string) => remoteHangup(fleet, callSid) } : {}),
    ...(fleet !== undefined && config.fleet !== undefined
      ? {
          fleetDial: {
            redisUrl: config.fleet.redisUrl,
            prefix: config.fleet.prefix,
            leaseMs: config.fleet.leaseMs,
            holdSlot: (key: string, agentId: string) => fleet.holdOutboundSlot(key, agentId),
            noteHeld: (callId: string, slot: Slot) => fleet.noteHeld(callId, slot),
            ownedElsewhere: async (callSid: string) => {
              const owner = await fleet.owners.ownerOf(callSid);
              return owner !== undefined && owner !== fleet.processId;
            },
            onDepth: (d: { waiting: number; delayed: number; active: number }) => {
              for (const [state, n] of Object.entries(d)) metrics.dialQueueJobs.labels(state).set(n);
            },
            onJob: (outcome: string) => metrics.dialJobsTotal.labels(outcome).inc(),
          },
        }
      : {}),
  });

  // Operator HTTP tools get the call's record (id, numbers, metadata) and are signed like webhooks.
  const toolSecret = config.webhook.secret;
  const operatorTools: ToolRunner = {
    run: async (callSid, def, args) => {
      const row = await calls.getBySid(callSid).catch((err: unknown) => {
        onStoreError('tool_lookup', err);
        return undefined;
      });
      return callHttpTool(
        def,
        { callId: row?.id ?? callSid, from: row?.from ?? '', to: row?.to ?? '', tool: def.name, arguments: args, metadata: row?.metadata ?? {} },
        { ...(toolSecret !== undefined ? { secret: toolSecret } : {}), ...(overrides.fetchImpl !== undefined ? { fetchImpl: overrides.fetchImpl } : {}) },
      );
    },
  };
  const webCalls = new WebCalls({
    manager,
    calls,
    routes: config.routes,
    defaultAgentId: config.agents.defaultAgent,
    maxConcurrentCalls: config.maxConcurrentCalls,
    checkAgent: (agentId) => agents.whyUnusable(agentId),
    ...(fleet !== undefined ? { fleet } : {}),
    log: logger.child({ component: 'web-calls' }),
  });
  const forwarding =
    webhooks === undefined
      ? undefined
      : forwardEventsToWebhook(events, webhooks, config.webhook.events.filter(isEventType), (err) => onStoreError('webhook_event', err));

  // Transfers need a carrier that can redirect a live call (Twilio REST); without one, calls cannot be transferred.
  const transferCarrier = overrides.transferCarrier ?? (callControl instanceof TwilioRestCallControl ? callControl : undefined);
  /** REDIS_URL: this process owns a transfer's id while it runs it, so its callbacks come here. */
  const trackTransfer = (id: string, active: boolean): void => {
    const f = fleet;
    if (f === undefined) return;
    const failed = (err: unknown) => logger.warn({ transferId: id, err: err instanceof Error ? err.message : String(err) }, 'fleet: could not route the transfer callbacks here (those landing elsewhere are answered there)');
    if (!active) {
      f.owners.disown(id).catch(failed);
      return;
    }
    f.owners
      .own(id, async (m) => {
        if (m.type !== 'transfer_callback' || transfers === undefined) return { ok: false, error: 'not a transfer callback' };
        const twiml = await runTransferCallback(transfers, m.kind, id, m.params);
        return twiml === undefined ? { ok: false, error: `not a ${m.kind} callback: its fields are missing` } : { ok: true, data: { twiml } };
      })
      .catch(failed);
  };
  const transfers =
    transferCarrier === undefined
      ? undefined
      : new TransferCoordinator({
          manager,
          carrier: transferCarrier,
          journal: recorder,
          publicUrl: config.publicUrl,
          streamUrl: config.streamUrl,
          say,
          returnText: config.messages.transferReturn,
          apologyText: config.messages.apology,
          ...(config.messages.transferHoldUrl !== undefined ? { holdUrl: config.messages.transferHoldUrl } : {}),
          log: logger.child({ component: 'transfers' }),
          onTransferred: () => metrics.callsTotal.labels('transferred').inc(),
          // REDIS_URL: the caller coming back to the agent may land on any process (its token is in Redis).
          ...(fleet !== undefined
            ? {
                admitReturn: (call: AdmittedCall, held: { slot: Slot; route: CallRoute; resume: SessionResume }) =>
                  fleet.admitRecorded(call, { route: held.route, held: held.slot, outbound: held.slot.outbound === true, resume: held.resume }),
                cancelReturn: (callSid: string, token: string) => fleet.cancel(callSid, token),
              }
            : {}),
          // REDIS_URL: Twilio's callbacks about this transfer may land on any process; they come here.
          ...(fleet !== undefined ? { onTracking: (id: string, active: boolean) => trackTransfer(id, active) } : {}),
          prompts,
        });

  const app = Fastify({
    loggerInstance: logger as FastifyBaseLogger,
    logController: new LogController({ disableRequestLogging: true }),
    bodyLimit: 256 * 1024,
    routerOptions: { ignoreTrailingSlash: true },
    // Malformed URLs and similar are reported before routing: the same error shape for them too.
    frameworkErrors: (err, req, reply) => {
      errorHandler(err, req, reply);
    },
  });
  // One error shape for every error reply, Fastify's own included (errors.ts).
  app.setErrorHandler(errorHandler);
  app.setNotFoundHandler(notFoundHandler);
  await app.register(formbody);
  await app.register(websocket, {
    // Frames are validated by our own codec (ASCII base64 audio, JSON otherwise), so ws need not
    // check UTF-8 on every frame first.
    options: { maxPayload: TWILIO_MAX_PAYLOAD, perMessageDeflate: false, skipUTF8Validation: true },
    errorHandler: onWebSocketError,
  });
  await app.register(healthRoutes, { manager, metrics, metricsToken: config.metricsToken, agents, defaultAgent: config.agents.defaultAgent, fleet });
  await app.register(twilioWebhooks, {
    authToken: config.twilio.authToken,
    publicUrl: config.publicUrl,
    streamUrl: config.streamUrl,
    messages: config.messages,
    overflow: config.overflow,
    manager,
    metrics,
    callbacks: outbound.callbacks,
    recorder,
    ...(transfers !== undefined ? { onCallEnded: (callSid: string) => transfers.callEnded(callSid) } : {}),
    prompts,
    recording: recordings,
    ...(fleet !== undefined ? { fleet } : {}),
  });
  await app.register(promptRoutes, { prompts });
  await app.register(recordingCallbacks, { authToken: config.twilio.authToken, publicUrl: config.publicUrl, streamUrl: config.streamUrl, metrics, recordings });
  if (transfers !== undefined) {
    await app.register(transferCallbacks, {
      authToken: config.twilio.authToken,
      publicUrl: config.publicUrl,
      streamUrl: config.streamUrl,
      metrics,
      transfers,
      ...(fleet !== undefined ? { forward: (id: string, kind: TransferCallbackKind, fields: TransferCallbackFields) => forwardTransferCallback(fleet, id, kind, fields, logger) } : {}),
    });
  }
  if (config.recording.backend === 'off') {
    app.addHook('preHandler', async (req, reply) => {
      if (req.method !== 'POST' || !req.url.startsWith('/v1/')) return;
      const why = recordingOffRefusal(req.body);
      if (why !== undefined) await reply.code(400).send(errorBody('invalid_request', why));
    });
  }
  await app.register(docsRoutes);
  await app.register(async (api) => {
    await apiRoutes(api, {
      outbound,
      calls,
      campaigns,
      ...(webhooks !== undefined ? { webhooks } : {}),
      ...(config.outbound.apiToken !== undefined ? { apiToken: config.outbound.apiToken } : {}),
      localMode: config.outbound.localCarrier,
      checkAgent: (agentId) => agents.whyUnusable(agentId),
      sessionOf: (callSid) => manager.getSession(callSid),
      ...(fleet !== undefined ? { transferElsewhere: (callSid: string, req: TransferRequest) => remoteTransfer(fleet, callSid, req) } : {}),
      live: { manager, agents, calls, webCalls, setup: setupFacts(config), fleet },
      ...(config.outbound.defaultCountry !== undefined ? { defaultCountry: config.outbound.defaultCountry } : {}),
    });
  });
  await app.register(async (api) => {
    await recordingRoutes(api, { calls, recordings, ...(config.outbound.apiToken !== undefined ? { apiToken: config.outbound.apiToken } : {}), localMode: config.outbound.localCarrier });
  });
  await app.register(consoleRoutes, {
    ...(overrides.consoleDir !== undefined ? { dir: overrides.consoleDir } : {}),
    ...(config.outbound.apiToken !== undefined ? { apiToken: config.outbound.apiToken } : {}),
    localMode: config.outbound.localCarrier,
  });
  await app.register(async (api) => {
    await eventsRoutes(api, {
      bus: events,
      apiToken: config.outbound.apiToken,
      localMode: config.outbound.localCarrier,
      onCutOff: () => metrics.eventsConsumersCutTotal.inc(),
    });
  });
  // Phone and browser calls take the same session path; only phone calls can be transferred.
  const streamDeps = { stream: streamRouteSettings(config), manager, metrics, logger, callControl, agents, settings, journal: recorder, tools: operatorTools, recording: recordings, prompts };
  await app.register(mediaStreamRoute, { ...streamDeps, ...(transfers !== undefined ? { transfers } : {}), ...(fleet !== undefined ? { fleet } : {}) });
  // A hang-up or final status for a call live here that landed on another process.
  fleet?.setControlHandler(async (callSid, message) => {
    const session = manager.getSession(callSid);
    switch (message.type) {
      case 'hangup':
      case 'end_call':
        if (session === undefined) return { ok: false, error: `call ${callSid} is not live on this process` };
        if (message.type === 'hangup') session.close('api_hangup');
        else session.endWithGoodbye('api_hangup');
        return { ok: true };
      case 'status': {
        const update = statusUpdateOf(message.params);
        if (update === undefined) return { ok: false, error: 'not a status callback' };
        void outbound.callbacks.onStatus(undefined, update);
        if (TERMINAL_CALL_STATUSES.has(update.status)) {
          transfers?.callEnded(callSid);
          manager.getSession(callSid)?.close('caller_hangup');
        }
        return { ok: true };
      }
      case 'transfer': {
        // It crossed a socket: checked as the API checks its body before the session sees it.
        const req = forwardedTransferSchema.safeParse(message.request);
        if (!req.success) return { ok: false, error: `not a transfer request: ${req.error.issues[0]?.message ?? 'invalid'}`, code: 'invalid_request' };
        if (session === undefined) return { ok: false, error: `call ${callSid} is not live on this process`, code: 'not_live' };
        if (session.requestTransfer === undefined) return { ok: false, error: 'this call cannot be transferred', code: 'unavailable' };
        const r = await session.requestTransfer(req.data);
        return r.ok ? { ok: true, data: { transferId: r.transferId } } : { ok: false, error: r.error, code: r.code };
      }
      case 'transfer_callback':
        return { ok: false, error: 'a transfer callback goes to the process running the transfer (the owner of its transfer id), not of its call' };
    }
  });
  await app.register(webMediaStreamRoute, {
    ...streamDeps,
    // REDIS_URL: a browser call's token lives in Redis; its socket may reach any process.
    ...(fleet !== undefined ? { fleet } : {}),
    apiToken: config.outbound.apiToken,
    publicUrl: config.publicUrl,
    onStreamStarted: (callSid) => void webCalls.streamStarted(callSid),
    onSessionEnded: (callSid) => void outbound.finishWebCall(callSid),
  });
  manager.startSweep(config.timeouts.sweepIntervalMs);
  app.addHook('onListen', async () => {
    if (overrides.dialer === undefined && config.outbound.localCarrier) {
      const addr = app.server.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : config.port;
      deferred.set(
        new LocalDialer({
          bridgeUrl: `http://127.0.0.1:${port}`,
          publicUrl: config.publicUrl,
          ...(config.twilio.authToken !== undefined ? { authToken: config.twilio.authToken } : {}),
          outcomes: config.outbound.localOutcomes,
          talkMs: config.outbound.localTalkMs,
          log: logger.child({ component: 'local-carrier' }),
        }),
      );
    }
    webhooks?.start();
    recordings.startRetention();
    await outbound.start();
  });
  app.addHook('onClose', async () => {
    transfers?.dispose();
    await outbound.stop();
    for (const s of [...manager.sessions()]) s.close('shutdown');
    await recordings.closeAll();
    recordings.dispose();
    manager.dispose();
    agents.stopProbing();
    loadGuard.dispose();
    forwarding?.close();
    events.close();
    await webhooks?.stop();
    await dialer.close?.();
    await prompts.close();
    await fleet?.close();
    await recorder.flush();
    if (overrides.store === undefined) await store.close();
  });
  const drain = async (timeoutMs: number): Promise<{ endedByDrain: number }> => {
    manager.startDrain();
    outbound.pauseDialing();
    logger.info({ liveCalls: manager.liveCalls, reservedSlots: manager.reservedSlots, timeoutMs }, 'draining: no new calls; waiting for live calls to end');
    if (await waitFor(() => manager.usedSlots === 0, timeoutMs)) return { endedByDrain: 0 };
    const left = [...manager.sessions()];
    logger.warn({ liveCalls: left.length }, 'drain timeout: ending the remaining calls with a goodbye');
    for (const s of left) s.endWithGoodbye('shutdown');
    // A goodbye played into the stream takes its own length (see CallSession#endWith).
    await waitFor(() => manager.liveCalls === 0, Math.max(settings.callControlGraceMs, prompts.durationMs('goodbye') + 1000) + 1000);
    for (const s of [...manager.sessions()]) s.close('shutdown');
    manager.dispose();
    return { endedByDrain: left.length };
  };
  return { app, manager, fleet, agents, metrics, callControl, settings, drain, outbound, calls, campaigns, recorder, webhooks, events, recordings, store, prompts, promptsWarm };
}

/** REDIS_URL: live events of every process, through one Redis Stream. */
async function fleetEvents(settings: NonNullable<Config['fleet']>, retentionMs: number, processId: string, logger: Logger): Promise<FleetEventBus> {
  const bus = new FleetEventBus({ redisUrl: settings.redisUrl, prefix: settings.prefix, processId, logger, retentionMs });
  try {
    await bus.start();
  } catch (err) {
    bus.close();
    throw new ConfigError(`REDIS_URL: the live events stream could not be read (${err instanceof Error ? err.message : String(err)}); check that Redis is running there`);
  }
  return bus;
}

/** Ends a call live on another process (REDIS_URL); false when no process owns it. */
async function remoteHangup(fleet: FleetAdmission, callSid: string): Promise<boolean> {
  try {
    const answer = await fleet.owners.send(callSid, { type: 'hangup', reason: 'api' });
    if (!answer.ok) throw new Error(answer.error);
    return true;
  } catch (err) {
    if (err instanceof FleetError && err.code === 'no_owner') return false;
    throw err;
  }
}

/** A transfer request forwarded by another process (REDIS_URL), checked as the API checks its own. */
const forwardedTransferSchema = z
  .object({
    target: z.string().min(1).max(40).optional(),
    to: transferAddressSchema.optional(),
    mode: z.enum(['cold', 'warm']),
    reason: z.string().max(300).optional(),
    summary: z.string().max(4_000).optional(),
    by: z.enum(['api', 'tool', 'dtmf']),
  })
  .refine((b) => (b.target === undefined) !== (b.to === undefined), { message: 'give exactly one of target (a name) or to (a number or sip: URI)' })
  .transform((b): TransferRequest => ({
    mode: b.mode,
    by: b.by,
    ...(b.target !== undefined ? { target: b.target } : {}),
    ...(b.to !== undefined ? { to: b.to } : {}),
    ...(b.reason !== undefined ? { reason: b.reason } : {}),
    ...(b.summary !== undefined ? { summary: b.summary } : {}),
  }));
const transferStartedSchema = z.object({ transferId: z.string().min(1).max(64) });
const transferRefusalSchema = z.enum(['unavailable', 'not_live', 'unknown_target', 'in_progress', 'carrier_refused']);
/** The owner asks the carrier before it answers (a REST redirect or a dial): longer than a hang-up. */
const REMOTE_TRANSFER_TIMEOUT_MS = 15_000;

/**
 * Transfers a call live on another process (REDIS_URL): its owner runs the request as a local one
 * and its answer comes back; undefined when no process owns the call.
 */
async function remoteTransfer(fleet: FleetAdmission, callSid: string, req: TransferRequest): Promise<TransferStart | undefined> {
  let answer;
  try {
    answer = await fleet.owners.send(callSid, { type: 'transfer', request: req }, { timeoutMs: REMOTE_TRANSFER_TIMEOUT_MS });
  } catch (err) {
    if (err instanceof FleetError && err.code === 'no_owner') return undefined;
    throw err;
  }
  if (answer.ok) {
    const data = transferStartedSchema.safeParse(answer.data);
    if (!data.success) throw new Error(`fleet: the process owning call ${callSid} answered a transfer without its transferId`);
    return { ok: true, transferId: data.data.transferId };
  }
  const code = transferRefusalSchema.safeParse(answer.code);
  if (!code.success) throw new Error(`fleet: the process owning call ${callSid} could not run the transfer: ${answer.error}`);
  return { ok: false, code: code.data, error: answer.error };
}

/** What another process answers to a transfer callback it ran. */
const transferCallbackAnswerSchema = z.object({ twiml: z.string().max(64 * 1024) });

/** A callback about a transfer that another process runs (REDIS_URL): its answer, or undefined when no process runs it. */
async function forwardTransferCallback(fleet: FleetAdmission, id: string, kind: TransferCallbackKind, params: TransferCallbackFields, log: Logger): Promise<string | undefined> {
  try {
    const answer = await fleet.owners.send(id, { type: 'transfer_callback', kind, params });
    if (!answer.ok) {
      log.warn({ transferId: id, kind, err: answer.error }, 'fleet: the process running the transfer could not apply its callback');
      return undefined;
    }
    const data = transferCallbackAnswerSchema.safeParse(answer.data);
    return data.success ? data.data.twiml : undefined;
  } catch (err) {
    if (!(err instanceof FleetError && err.code === 'no_owner')) log.warn({ transferId: id, kind, err: err instanceof Error ? err.message : String(err) }, 'fleet: could not pass a transfer callback to the process running the transfer');
    return undefined;
  }
}

/** The call sessions' settings from the configuration. */
export function sessionSettings(config: Config): SessionSettings {
  return {
    agentInitTimeoutMs: config.timeouts.agentInitTimeoutMs,
    hangupDrainMs: config.timeouts.hangupDrainMs,
    callControlGraceMs: config.timeouts.callControlGraceMs,
    markIntervalMs: config.media.markIntervalMs,
    preInitBufferMs: config.media.preInitBufferMs,
    dtmfGatherMs: config.media.dtmfGatherMs,
    audioInBatchMs: config.media.audioInBatchMs,
    agentHeartbeatMs: config.agentReconnect.heartbeatMs,
    reconnect: config.agentReconnect,
    maxCallMs: config.timeouts.maxCallMs,
    idleMs: config.timeouts.idleMs,
    texts: config.messages,
    overflow: config.overflow,
  };
}
