/**
 * `WS /twilio/media-stream`: the signature is checked in a preValidation hook,
 * before the upgrade; the carrier connection attaches its listeners
 * synchronously in the handler; `start` must present a token minted by
 * /twilio/voice before a call session (and its agent socket) is created.
 */
import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';
import type { AgentConnector } from '../agent/playai/leg.js';
import type { CallJournal } from '../calls/journal.js';
import type { CallControl } from '../carrier/twilio/callControl.js';
import { TwilioStreamConnection, type StartDecision } from '../carrier/twilio/stream.js';
import type { TwilioStart } from '../carrier/twilio/codec.js';
import type { Config } from '../config.js';
import type { Metrics } from '../metrics.js';
import { CallSession, type SessionSettings } from '../session/callSession.js';
import type { SessionManager } from '../session/manager.js';
import { streamAuth } from './twilioAuth.js';

export interface MediaStreamDeps {
  config: Config;
  manager: SessionManager;
  metrics: Metrics;
  logger: Logger;
  callControl: CallControl;
  connectAgent: AgentConnector;
  settings: SessionSettings;
  journal: CallJournal;
}

export async function mediaStreamRoute(app: FastifyInstance, deps: MediaStreamDeps): Promise<void> {
  const { config, manager, metrics, logger } = deps;
  const authOpts = { authToken: config.twilio.authToken, publicUrl: config.publicUrl, streamUrl: config.streamUrl, metrics };

  const onStart = (start: TwilioStart, leg: TwilioStreamConnection): StartDecision => {
    const claim = manager.claim(start.customParameters.token, start.callSid);
    if (!claim.ok) {
      metrics.streamRejectedTotal.labels(claim.reason).inc();
      logger.warn({ callSid: start.callSid, streamSid: start.streamSid, reason: claim.reason }, 'media stream refused: bad token');
      return { accept: false, reason: claim.reason };
    }
    let session: CallSession;
    try {
      session = new CallSession({
        reservation: claim.reservation,
        streamSid: start.streamSid,
        carrier: leg,
        connectAgent: deps.connectAgent,
        callControl: deps.callControl,
        settings: deps.settings,
        metrics,
        logger,
        journal: deps.journal,
        onAgentCapacityExceeded: (s) => {
          const limit = manager.noteAgentCapacityExceeded();
          logger.warn({ callSid: s.callSid, learnedLimit: limit }, 'agent account refused a connection (4429); capping admissions');
        },
        onClosed: (s) => manager.release(s),
      });
    } catch (err) {
      manager.releaseSlot(claim.reservation.slot);
      logger.error({ err, callSid: start.callSid }, 'could not create a call session');
      return { accept: false, reason: 'internal_error' };
    }
    manager.register(session);
    session.start();
    return { accept: true, handlers: session };
  };

  app.get('/twilio/media-stream', { websocket: true, preValidation: streamAuth(authOpts) }, (socket) => {
    new TwilioStreamConnection(socket, {
      startTimeoutMs: config.timeouts.startTimeoutMs,
      onStart,
      onHandshakeEvent: (event, detail) => {
        if (event === 'refused') return; // counted in onStart
        metrics.streamRejectedTotal.labels(event).inc();
        logger.warn({ event, detail }, 'media stream ended before a call started');
      },
      onHandshakeBadFrame: (kind, name) => {
        metrics.badFramesTotal.labels('twilio', kind).inc();
        logger.warn({ kind, event: name }, 'dropped a bad frame before start');
      },
    });
  });
}
