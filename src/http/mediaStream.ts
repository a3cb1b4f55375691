/**
 * `WS /twilio/media-stream`: the signature is checked in a preValidation hook,
 * before the upgrade; the carrier connection attaches its listeners
 * synchronously in the handler; `start` must present a token minted by
 * /twilio/voice before a call session (and its agent socket) is created.
 */
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type WebSocket from 'ws';
import type { AgentDirectory } from '../agent/directory.js';
import type { CallJournal } from '../calls/journal.js';
import type { CallControl } from '../carrier/twilio/callControl.js';
import { TwilioStreamConnection, type CarrierBadFrameKind, type StartDecision } from '../carrier/twilio/stream.js';
import type { TwilioStart } from '../carrier/twilio/codec.js';
import type { Config } from '../config.js';
import type { Metrics } from '../metrics.js';
import { CallSession, type SessionPrompts, type SessionSettings, type TransferPort } from '../session/callSession.js';
import type { ClaimResult, Reservation, SessionManager } from '../session/manager.js';
import type { FleetAdmission } from '../session/fleetAdmission.js';
import { streamAuth } from './twilioAuth.js';
import { errorBody } from '../api/errors.js';
import type { ToolRunner } from '../tools/http.js';
import { isWebCallSid } from '../calls/webCalls.js';
import type { RecordingService } from '../recording/service.js';
import { tapHandlers, tapLeg } from '../recording/tap.js';
import type { CallAudioRecorder } from '../recording/localRecording.js';

/** What the media-stream route needs from the configuration. */
export interface StreamRouteSettings {
  /** TWILIO_AUTH_TOKEN; without it (local mode) only local requests may open a stream. */
  authToken: string | undefined;
  publicUrl: string;
  /** The `wss://…/twilio/media-stream` URL the upgrade's signature covers. */
  streamUrl: string;
  /** How long a new socket may wait for `start`. */
  startTimeoutMs: number;
}

/** The route's settings taken from the whole configuration. */
export function streamRouteSettings(config: Config): StreamRouteSettings {
  return { authToken: config.twilio.authToken, publicUrl: config.publicUrl, streamUrl: config.streamUrl, startTimeoutMs: config.timeouts.startTimeoutMs };
}

export interface MediaStreamDeps {
  stream: StreamRouteSettings;
  manager: SessionManager;
  metrics: Metrics;
  logger: Logger;
  callControl: CallControl;
  agents: AgentDirectory;
  settings: SessionSettings;
  journal: CallJournal;
  /** Runs the operator HTTP tools agents call. */
  tools?: ToolRunner;
  /** Hands calls to people (phone calls only). */
  transfers?: TransferPort;
  /** Prompts in the agent's voice, played into the stream (goodbye, apology, busy). */
  prompts?: SessionPrompts;
  /** Records the calls that are to be recorded (RECORDING). */
  recording?: RecordingService;
  /** REDIS_URL: stream tokens are redeemed in Redis (the webhook may have landed on another process). */
  fleet?: FleetAdmission;
}

export async function mediaStreamRoute(app: FastifyInstance, deps: MediaStreamDeps): Promise<void> {
  const { stream, metrics } = deps;
  const authOpts = { authToken: stream.authToken, publicUrl: stream.publicUrl, streamUrl: stream.streamUrl, metrics };
  app.route({
    method: 'GET',
    url: '/twilio/media-stream',
    preValidation: streamAuth(authOpts),
    // A plain GET (no WebSocket upgrade) gets the common error shape instead of an empty 404.
    handler: (_req, reply) => reply.code(426).header('upgrade', 'websocket').send(errorBody('upgrade_required', 'this is the Twilio Media Streams WebSocket endpoint: connect with a WebSocket upgrade')),
    // A browser call's token is for /web/media-stream, where its session gets no carrier control.
    wsHandler: streamSocketHandler(deps, { refuse: (start) => (isWebCallSid(start.callSid) ? 'web_call' : undefined) }),
  });
}

/** How a route's calls differ from phone calls (browser calls: `webMediaStream.ts`). */
export interface StreamVariant {
  /** Refuses a `start` before its token is claimed (a reason), or lets it through (undefined). */
  refuse?(start: TwilioStart): string | undefined;
  /** Call control of this route's calls instead of the carrier's. */
  callControl?: CallControl;
  /** A call's session was registered and is about to start. */
  onStarted?(session: CallSession): void;
  /** A call's session closed (after its slot was released). */
  onClosed?(session: CallSession): void;
}

/**
 * What happens on an accepted media-stream socket (the route's WebSocket handler; in-process
 * tests drive it with fake sockets): listeners attached at once, `start` awaited, its token
 * claimed, then a call session built, registered and started.
 */
export function streamSocketHandler(deps: MediaStreamDeps, variant: StreamVariant = {}): (socket: WebSocket) => void {
  const { stream, manager, metrics, logger } = deps;

  const onStart = (start: TwilioStart, leg: TwilioStreamConnection): StartDecision | Promise<StartDecision> => {
    const refused = variant.refuse?.(start);
    if (refused !== undefined) {
      metrics.streamRejectedTotal.labels(refused).inc();
      logger.warn({ callSid: start.callSid, streamSid: start.streamSid, reason: refused }, 'media stream refused');
      return { accept: false, reason: refused };
    }
    const fleet = deps.fleet;
    // REDIS_URL: the token is redeemed in Redis; frames arriving meanwhile wait in the connection.
    if (fleet !== undefined) return fleet.claim(start.customParameters.token, start.callSid).then((claim) => startSession(start, leg, claim));
    return startSession(start, leg, manager.claim(start.customParameters.token, start.callSid));
  };

  const startSession = (start: TwilioStart, leg: TwilioStreamConnection, claim: ClaimResult): StartDecision | Promise<StartDecision> => {
    if (!claim.ok) {
      metrics.streamRejectedTotal.labels(claim.reason).inc();
      logger.warn({ callSid: start.callSid, streamSid: start.streamSid, reason: claim.reason }, 'media stream refused: bad token');
      return { accept: false, reason: claim.reason };
    }
    // A recorded call's audio passes a tap on its way (RECORDING=local); the others go bare. Only
    // a recorded call waits for its record (frames are held in order meanwhile).
    const recording = deps.recording;
    if (recording === undefined || !recording.wanted(claim.reservation.route)) return buildSession(start, leg, claim.reservation, undefined);
    return recording.begin(start.callSid, claim.reservation.route, claim.reservation.resume !== undefined).then(
      (rec) => buildSession(start, leg, claim.reservation, rec),
      (err: unknown) => {
        logger.error({ err, callSid: start.callSid }, 'recording: could not start; the call goes on unrecorded');
        return buildSession(start, leg, claim.reservation, undefined);
      },
    );
  };

  const buildSession = (start: TwilioStart, leg: TwilioStreamConnection, reservation: Reservation, rec: CallAudioRecorder | undefined): StartDecision => {
    const claim = { reservation };
    let session: CallSession;
    try {
      session = new CallSession({
        reservation: claim.reservation,
        streamSid: start.streamSid,
        carrier: rec === undefined ? leg : tapLeg(leg, rec),
        agents: deps.agents,
        callControl: variant.callControl ?? deps.callControl,
        settings: deps.settings,
        metrics,
        logger,
        journal: deps.journal,
        ...(deps.tools !== undefined ? { tools: deps.tools } : {}),
        ...(deps.transfers !== undefined ? { transfers: deps.transfers } : {}),
        ...(deps.prompts !== undefined ? { prompts: deps.prompts } : {}),
        releaseSlot: (slot) => manager.releaseSlot(slot),
        onAgentCapacityExceeded: (s, provider) => {
          const limit = manager.noteAgentCapacityExceeded(provider);
          logger.warn({ callSid: s.callSid, provider, learnedLimit: limit }, 'agent account refused a session for capacity; capping admissions to its agents');
          // REDIS_URL: every process caps its admissions (the limit counts the fleet's open sessions).
          deps.fleet?.agentCapacityExceeded(s.callSid, provider);
        },
        onAgentSwitched: (s, agentId) => manager.moveSlot(s.slot, agentId),
        onAgentSessionEnded: (s, provider) => {
          manager.noteAgentSessionEnded(provider);
          deps.fleet?.agentSessionEnded(s.slot, provider);
        },
        ...(deps.fleet !== undefined ? { onAgentSessionReady: (s: CallSession) => deps.fleet?.agentSessionReady(s.slot) } : {}),
        onClosed: (s) => {
          manager.release(s);
          variant.onClosed?.(s);
          if (rec !== undefined) void deps.recording?.end(s.callSid);
        },
      });
    } catch (err) {
      if (rec !== undefined) void deps.recording?.end(start.callSid);
      manager.releaseSlot(claim.reservation.slot);
      logger.error({ err, callSid: start.callSid }, 'could not create a call session');
      return { accept: false, reason: 'internal_error' };
    }
    manager.register(session);
    variant.onStarted?.(session);
    session.start();
    return { accept: true, handlers: rec === undefined ? session : tapHandlers(session, leg, rec) };
  };

  return (socket: WebSocket): void => {
    // Before `start` there is no call to log against: bad frames are counted each, logged once per connection and kind.
    const logged = new Set<CarrierBadFrameKind>();
    new TwilioStreamConnection(socket, {
      startTimeoutMs: stream.startTimeoutMs,
      onStart,
      onHandshakeEvent: (event, detail) => {
        if (event === 'refused') return; // counted in onStart
        metrics.streamRejectedTotal.labels(event).inc();
        logger.warn({ event, detail }, 'media stream ended before a call started');
      },
      onHandshakeBadFrame: (kind, name) => {
        metrics.badFramesTotal.labels('twilio', kind).inc();
        if (logged.has(kind)) return;
        logged.add(kind);
        logger.warn({ kind, event: name }, 'dropped a bad frame before start');
      },
    });
  };
}

/**
 * @fastify/websocket's handler for errors on an accepted socket (its default
 * logs them at error level with a stack). `ws` reports a peer's protocol
 * violation this way, after sending its close frame; the carrier leg counts an
 * oversized frame as a bad frame and logs it once per call, so only other
 * errors are logged here, as a warning without a stack. Either way the socket
 * is terminated, as the default handler does.
 */
export function onWebSocketError(this: unknown, error: Error, socket: WebSocket, request: FastifyRequest): void {
  const code = 'code' in error && typeof error.code === 'string' ? error.code : undefined;
  if (code !== 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') request.log.warn({ code, reason: error.message }, 'websocket error; closing the socket');
  socket.terminate();
}
