/**
 * `WS /web/media-stream`: browser calls. The browser speaks the Twilio Media
 * Streams protocol unchanged, so the socket goes through the same
 * `TwilioStreamConnection` and `CallSession` as `/twilio/media-stream`; only
 * its authorisation differs. There is no Twilio signature: the single-use
 * token minted by `POST /v1/web-calls` (an authenticated API request) is the
 * socket's authorisation, and `start.callSid` must be that browser call's.
 *
 * Before the upgrade is accepted:
 * - an `Origin` header naming another site is refused (cross-site WebSocket
 *   hijacking: a page elsewhere must not drive a socket here with the user's
 *   network position); clients that send no Origin (not browsers) are not
 *   affected;
 * - without API_TOKEN, only local clients are served (as the API itself).
 */
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { errorBody } from '../api/errors.js';
import { isWebCallSid, NO_CARRIER_CONTROL, WEB_STREAM_PATH } from '../calls/webCalls.js';
import { streamSocketHandler, type MediaStreamDeps } from './mediaStream.js';
import { localRequest, notLocalMessage, rateLimitedWarn, REFUSAL_LOG_INTERVAL_MS } from './twilioAuth.js';

export interface WebMediaStreamDeps extends MediaStreamDeps {
  /** API_TOKEN: without it only local clients may open a browser call's socket. */
  apiToken: string | undefined;
  /** PUBLIC_URL: an Origin equal to it is this server too (behind a proxy that rewrites Host). */
  publicUrl: string;
  /** A browser call's stream started. */
  onStreamStarted(callSid: string): void;
  /** A browser call's session ended (its slot is released already). */
  onSessionEnded(callSid: string): void;
}

/** Why an `Origin` header is not this server, or undefined when it is (or there is none). */
export function foreignOrigin(origin: string | undefined, host: string | undefined, publicUrl: string): string | undefined {
  if (origin === undefined) return undefined;
  let url: URL;
  try {
    url = new URL(origin);
  } catch {
    return `the Origin ${JSON.stringify(origin.slice(0, 100))} is not a web origin`;
  }
  if ((host !== undefined && url.host === host.toLowerCase()) || url.origin === publicUrl) return undefined;
  return `the Origin ${url.origin} is not this server (Host: ${host ?? 'none'}; PUBLIC_URL: ${publicUrl})`;
}

export async function webMediaStreamRoute(app: FastifyInstance, deps: WebMediaStreamDeps): Promise<void> {
  const warn = rateLimitedWarn(REFUSAL_LOG_INTERVAL_MS);
  const refuse = async (req: FastifyRequest, reply: FastifyReply, reason: string, message: string): Promise<void> => {
    deps.metrics.streamRejectedTotal.labels(reason).inc();
    warn(req.log, { route: 'web-media-stream', reason }, `refused a browser call socket: ${message}`);
    await reply.code(403).send(errorBody('forbidden', message));
  };
  app.route({
    method: 'GET',
    url: WEB_STREAM_PATH,
    preValidation: async (req, reply) => {
      const origin = typeof req.headers.origin === 'string' ? req.headers.origin : undefined;
      const foreign = foreignOrigin(origin, req.headers.host, deps.publicUrl);
      if (foreign !== undefined) {
        await refuse(req, reply, 'foreign_origin', `${foreign}: browser calls are accepted only from pages this server serves (cross-site WebSocket refused); open the console from this server`);
        return;
      }
      if (deps.apiToken === undefined) {
        const check = localRequest(req);
        if (!check.local) await refuse(req, reply, 'not_local', notLocalMessage(check, 'API_TOKEN', 'the browser call socket'));
      }
    },
    handler: (_req, reply) =>
      reply
        .code(426)
        .header('upgrade', 'websocket')
        .send(errorBody('upgrade_required', 'this is the browser call WebSocket endpoint: get a token with POST /v1/web-calls, then connect with a WebSocket upgrade')),
    wsHandler: streamSocketHandler(deps, {
      // A phone call's token is bound to its Twilio CallSid: only browser calls start here.
      refuse: (start) => (isWebCallSid(start.callSid) ? undefined : 'not_web_call'),
      callControl: NO_CARRIER_CONTROL,
      onStarted: (s) => deps.onStreamStarted(s.callSid),
      onClosed: (s) => deps.onSessionEnded(s.callSid),
    }),
  });
}
