/**
 * Bearer-token auth of the /v1 API.
 *
 * The token is compared in constant time (both sides hashed to the same
 * length first). Fail closed: without API_TOKEN the API answers only local
 * requests (loopback, no proxy header: see `localRequest`), and only in local
 * mode (no Twilio credentials); otherwise every request is refused with a
 * message saying what to set.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { localRequest, notLocalMessage } from '../http/twilioAuth.js';

const digest = (s: string): Buffer => createHash('sha256').update(s, 'utf8').digest();

export function tokenMatches(expected: string, given: string): boolean {
  return timingSafeEqual(digest(expected), digest(given));
}

export interface ApiAuthOptions {
  token?: string;
  /** Local mode: without a token, loopback clients may use the API. */
  localMode: boolean;
}

export function apiAuth(opts: ApiAuthOptions) {
  const expected = opts.token;
  return async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
    if (expected === undefined) {
      const check = localRequest(req);
      if (opts.localMode && check.local) return;
      await reply.code(401).send({
        error: {
          code: 'unauthorized',
          message: opts.localMode && !check.local ? notLocalMessage(check, 'API_TOKEN', 'the API') : 'set API_TOKEN to use the API',
        },
      });
      return;
    }
    const header = req.headers.authorization;
    const m = typeof header === 'string' ? /^Bearer\s+(\S+)\s*$/i.exec(header) : null;
    if (m === null || m[1] === undefined || !tokenMatches(expected, m[1])) {
      void reply.header('www-authenticate', 'Bearer realm="playline"');
      await reply.code(401).send({ error: { code: 'unauthorized', message: 'missing or wrong bearer token' } });
    }
  };
}
