/**
 * Who may call the Twilio routes. With TWILIO_AUTH_TOKEN set, every request
 * (the WebSocket upgrade included) needs a valid X-Twilio-Signature over the
 * URL rebuilt from PUBLIC_URL. Without a token the bridge is in local mode and
 * serves these routes to loopback clients only (fail closed).
 */
import type { FastifyReply, FastifyRequest } from 'fastify';
import { errorBody } from '../api/errors.js';
import { isValidStreamSignature, isValidWebhookSignature } from '../carrier/twilio/signature.js';
import type { Metrics } from '../metrics.js';

export interface TwilioAuthOptions {
  authToken: string | undefined;
  publicUrl: string;
  streamUrl: string;
  metrics: Metrics;
}

export function isLoopback(address: string | undefined): boolean {
  if (address === undefined) return false;
  return address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.');
}

function signatureHeader(req: FastifyRequest): string | undefined {
  const h = req.headers['x-twilio-signature'];
  return Array.isArray(h) ? h[0] : h;
}

/** preValidation hook for the form-encoded webhooks (runs after the body is parsed). */
export function webhookAuth(opts: TwilioAuthOptions, route: string) {
  return async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (opts.authToken === undefined) {
      if (!isLoopback(req.socket.remoteAddress)) {
        opts.metrics.webhookSignatureFailures.labels(route).inc();
        await reply.code(403).send(errorBody('forbidden', 'local mode: Twilio routes only answer loopback clients (set TWILIO_AUTH_TOKEN)'));
      }
      return;
    }
    const params = typeof req.body === 'object' && req.body !== null ? (req.body as Record<string, unknown>) : {};
    const url = opts.publicUrl + req.raw.url;
    if (!isValidWebhookSignature(opts.authToken, signatureHeader(req), url, params)) {
      opts.metrics.webhookSignatureFailures.labels(route).inc();
      req.log.warn({ route }, 'refused a request with a missing or invalid X-Twilio-Signature');
      await reply.code(403).send(errorBody('forbidden', 'invalid X-Twilio-Signature: check TWILIO_AUTH_TOKEN and that PUBLIC_URL is the URL Twilio calls'));
    }
  };
}

/** preValidation hook for the media-stream upgrade (runs before the socket is accepted). */
export function streamAuth(opts: TwilioAuthOptions) {
  return async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (opts.authToken === undefined) {
      if (!isLoopback(req.socket.remoteAddress)) {
        opts.metrics.webhookSignatureFailures.labels('media-stream').inc();
        await reply.code(403).send(errorBody('forbidden', 'local mode: the media stream only accepts loopback clients (set TWILIO_AUTH_TOKEN)'));
      }
      return;
    }
    if (!isValidStreamSignature(opts.authToken, signatureHeader(req), opts.streamUrl)) {
      opts.metrics.webhookSignatureFailures.labels('media-stream').inc();
      req.log.warn('refused a media-stream upgrade with a missing or invalid X-Twilio-Signature');
      await reply.code(403).send(errorBody('forbidden', 'invalid X-Twilio-Signature on the media-stream upgrade'));
    }
  };
}
