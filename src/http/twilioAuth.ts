/**
 * Who may call the Twilio routes. With TWILIO_AUTH_TOKEN set, every request
 * (the WebSocket upgrade included) needs a valid X-Twilio-Signature over the
 * URL rebuilt from PUBLIC_URL. Without a token the bridge is in local mode and
 * serves these routes to local requests only (fail closed): from a loopback
 * address and without any proxy header, since a tunnel on the same host
 * (ngrok, cloudflared) delivers internet traffic from loopback.
 */
import type { IncomingHttpHeaders } from 'node:http';
import type { FastifyBaseLogger, FastifyReply, FastifyRequest } from 'fastify';
import { errorBody } from '../api/errors.js';
import { isValidStreamSignature, isValidWebhookSignature } from '../carrier/twilio/signature.js';
import type { Metrics } from '../metrics.js';

export interface TwilioAuthOptions {
  authToken: string | undefined;
  publicUrl: string;
  streamUrl: string;
  metrics: Metrics;
}

function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false;
  return address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.');
}

/** Headers a reverse proxy or tunnel adds; a loopback request with any of them came from further away. */
export const PROXY_HEADERS = [
  'x-forwarded-for',
  'forwarded',
  'x-real-ip',
  'cf-connecting-ip',
  'x-forwarded-host',
  'true-client-ip',
  'x-forwarded-proto',
] as const;

/** The parts of a request {@link localRequest} looks at (a Fastify request has them). */
export interface RequestOrigin {
  socket: { remoteAddress?: string | undefined };
  headers: IncomingHttpHeaders;
}

export type LocalCheck = { local: true } | { local: false; reason: 'not-loopback' } | { local: false; reason: 'proxied'; header: string };

/** Whether a request comes from this host itself: a loopback peer that carries no proxy header. */
export function localRequest(req: RequestOrigin): LocalCheck {
  if (!isLoopback(req.socket.remoteAddress)) return { local: false, reason: 'not-loopback' };
  const header = PROXY_HEADERS.find((h) => req.headers[h] !== undefined);
  return header === undefined ? { local: true } : { local: false, reason: 'proxied', header };
}

export function isLocalRequest(req: RequestOrigin): boolean {
  return localRequest(req).local;
}

/** Why a request that is not local was refused, and what to set (`TWILIO_AUTH_TOKEN` or `API_TOKEN`). */
export function notLocalMessage(check: Exclude<LocalCheck, { local: true }>, setting: string, what: string): string {
  return check.reason === 'proxied'
    ? `a proxy header (${check.header}) shows this request came through a tunnel or proxy, and ${what} only answers local requests without a token: set ${setting}`
    : `${what} only answers loopback clients without a token: set ${setting}`;
}

/** At most one warning per `intervalMs`; counts what it held back. */
export function rateLimitedWarn(intervalMs: number) {
  let lastAt = -Infinity;
  let held = 0;
  return (log: FastifyBaseLogger, fields: Record<string, unknown>, msg: string): void => {
    const now = Date.now();
    if (now - lastAt < intervalMs) {
      held++;
      return;
    }
    lastAt = now;
    log.warn({ ...fields, ...(held > 0 ? { similarRefusalsNotLogged: held } : {}) }, msg);
    held = 0;
  };
}

/** Signature and local-mode refusals are logged at most once a minute per route. */
export const REFUSAL_LOG_INTERVAL_MS = 60_000;
const SIGNATURE_HINT = 'PUBLIC_URL must be the exact origin Twilio calls (scheme, host, port)';

function signatureHeader(req: FastifyRequest): string | undefined {
  const h = req.headers['x-twilio-signature'];
  return Array.isArray(h) ? h[0] : h;
}

/** Local mode: refuses (403) a request that is not local; returns whether it refused. */
async function refuseNotLocal(
  req: FastifyRequest,
  reply: FastifyReply,
  opts: TwilioAuthOptions,
  route: string,
  warn: ReturnType<typeof rateLimitedWarn>,
): Promise<boolean> {
  const check = localRequest(req);
  if (check.local) return false;
  opts.metrics.webhookSignatureFailures.labels(route).inc();
  const message = `local mode: ${notLocalMessage(check, 'TWILIO_AUTH_TOKEN (and PUBLIC_URL) so Twilio requests are signed', 'the Twilio routes')}`;
  warn(req.log, { route, ...(check.reason === 'proxied' ? { header: check.header } : {}) }, `refused a Twilio request: ${message}`);
  await reply.code(403).send(errorBody('forbidden', message));
  return true;
}

/** preValidation hook for the form-encoded webhooks (runs after the body is parsed). */
export function webhookAuth(opts: TwilioAuthOptions, route: string) {
  const warn = rateLimitedWarn(REFUSAL_LOG_INTERVAL_MS);
  return async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (opts.authToken === undefined) {
      await refuseNotLocal(req, reply, opts, route, warn);
      return;
    }
    const params = typeof req.body === 'object' && req.body !== null ? (req.body as Record<string, unknown>) : {};
    const url = opts.publicUrl + req.raw.url;
    if (!isValidWebhookSignature(opts.authToken, signatureHeader(req), url, params)) {
      opts.metrics.webhookSignatureFailures.labels(route).inc();
      const why = signatureHeader(req) === undefined ? 'a missing' : 'an invalid';
      warn(req.log, { route, checkedUrl: url }, `refused a request with ${why} X-Twilio-Signature, checked against ${url}: ${SIGNATURE_HINT}`);
      await reply.code(403).send(errorBody('forbidden', 'invalid X-Twilio-Signature: check TWILIO_AUTH_TOKEN and that PUBLIC_URL is the URL Twilio calls'));
    }
  };
}

/** preValidation hook for the media-stream upgrade (runs before the socket is accepted). */
export function streamAuth(opts: TwilioAuthOptions) {
  const warn = rateLimitedWarn(REFUSAL_LOG_INTERVAL_MS);
  return async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (opts.authToken === undefined) {
      await refuseNotLocal(req, reply, opts, 'media-stream', warn);
      return;
    }
    if (!isValidStreamSignature(opts.authToken, signatureHeader(req), opts.streamUrl)) {
      opts.metrics.webhookSignatureFailures.labels('media-stream').inc();
      const why = signatureHeader(req) === undefined ? 'a missing' : 'an invalid';
      warn(
        req.log,
        { route: 'media-stream', checkedUrl: opts.streamUrl },
        `refused a media-stream upgrade with ${why} X-Twilio-Signature, checked against ${opts.streamUrl}: ${SIGNATURE_HINT}`,
      );
      await reply.code(403).send(errorBody('forbidden', 'invalid X-Twilio-Signature on the media-stream upgrade: check TWILIO_AUTH_TOKEN and PUBLIC_URL'));
    }
  };
}
