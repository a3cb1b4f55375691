/**
 * Twilio's callbacks about transfers (`/twilio/transfer/:id/…`), signed like
 * every Twilio webhook: the `<Dial action>` of a cold transfer (its answer is
 * the caller's next TwiML), the person's call status, and the warm transfer's
 * conference events. The coordinator owns what they mean.
 */
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { errorBody } from '../api/errors.js';
import type { Metrics } from '../metrics.js';
import type { TransferCoordinator } from '../transfer/coordinator.js';
import { webhookAuth } from './twilioAuth.js';

const params = z.object({ id: z.string().regex(/^tr_[0-9a-f]{18}$/) });
const token = z.string().min(1).max(64);
const actionBody = z.object({ DialCallStatus: token, CallStatus: token.optional(), CallSid: token.optional() });
const statusBody = z.object({ CallStatus: token, CallSid: token.optional() });
const conferenceBody = z.object({ StatusCallbackEvent: token, CallSid: token.optional() });

export type TransferCallbackKind = 'action' | 'status' | 'conference';

/** The fields of a transfer callback that mean something (what crosses to another process). */
const FORWARDED = ['DialCallStatus', 'CallStatus', 'CallSid', 'StatusCallbackEvent'] as const;
export type TransferCallbackFields = Partial<Record<(typeof FORWARDED)[number], string>>;

/** The fields of a callback's form body that `runTransferCallback` reads. */
export function transferCallbackFields(body: unknown): TransferCallbackFields {
  const out: TransferCallbackFields = {};
  if (typeof body !== 'object' || body === null) return out;
  for (const k of FORWARDED) {
    const v: unknown = Reflect.get(body, k);
    if (typeof v === 'string' && v.length <= 64) out[k] = v;
  }
  return out;
}

/**
 * Runs one transfer callback on the coordinator (the route's, or one forwarded from another
 * process): the answer's TwiML for `action`, '' for the others; undefined when the fields are not
 * what Twilio sends for that callback.
 */
export async function runTransferCallback(transfers: TransferCoordinator, kind: TransferCallbackKind, id: string, body: unknown): Promise<string | undefined> {
  switch (kind) {
    case 'action': {
      const b = actionBody.safeParse(body);
      if (!b.success) return undefined;
      return transfers.onDialAction(id, { dialCallStatus: b.data.DialCallStatus, ...(b.data.CallStatus !== undefined ? { callStatus: b.data.CallStatus } : {}) });
    }
    case 'status': {
      const b = statusBody.safeParse(body);
      if (!b.success) return undefined;
      transfers.onPersonStatus(id, { callStatus: b.data.CallStatus });
      return '';
    }
    case 'conference': {
      const b = conferenceBody.safeParse(body);
      if (!b.success) return undefined;
      transfers.onConference(id, { event: b.data.StatusCallbackEvent, ...(b.data.CallSid !== undefined ? { callSid: b.data.CallSid } : {}) });
      return '';
    }
  }
}

export interface TransferCallbackDeps {
  authToken: string | undefined;
  publicUrl: string;
  streamUrl: string;
  metrics: Metrics;
  transfers: TransferCoordinator;
  /**
   * REDIS_URL: a callback about a transfer another process runs goes there; resolves with that
   * process's answer (TwiML for `action`), or undefined when no process runs it.
   */
  forward?: (id: string, kind: TransferCallbackKind, fields: TransferCallbackFields) => Promise<string | undefined>;
}

export async function transferCallbacks(app: FastifyInstance, deps: TransferCallbackDeps): Promise<void> {
  const authOpts = { authToken: deps.authToken, publicUrl: deps.publicUrl, streamUrl: deps.streamUrl, metrics: deps.metrics };
  const opts = (route: string) => ({ preValidation: webhookAuth(authOpts, route), bodyLimit: 64 * 1024 });
  const bad = (what: string) => errorBody('invalid_request', `expected ${what}`);
  /** Runs the callback here, or where its transfer runs; undefined when its fields are not Twilio's. */
  const run = async (kind: TransferCallbackKind, id: string, body: unknown): Promise<string | undefined> => {
    if (deps.forward !== undefined && !deps.transfers.tracks(id)) {
      const answer = await deps.forward(id, kind, transferCallbackFields(body));
      if (answer !== undefined) return answer;
    }
    return runTransferCallback(deps.transfers, kind, id, body);
  };

  app.post('/twilio/transfer/:id/action', opts('transfer-action'), async (req, reply) => {
    const p = params.safeParse(req.params);
    const b = actionBody.safeParse(req.body);
    if (!p.success || !b.success) return reply.code(400).send(bad('a <Dial> action callback with DialCallStatus on /twilio/transfer/tr_…/action'));
    req.log.info({ transferId: p.data.id, dialCallStatus: b.data.DialCallStatus, callStatus: b.data.CallStatus }, 'transfer dial ended');
    const twiml = await run('action', p.data.id, req.body);
    return reply.type('text/xml').send(twiml);
  });

  app.post('/twilio/transfer/:id/status', opts('transfer-status'), async (req, reply) => {
    const p = params.safeParse(req.params);
    const b = statusBody.safeParse(req.body);
    if (!p.success || !b.success) return reply.code(400).send(bad('a status callback with CallStatus on /twilio/transfer/tr_…/status'));
    req.log.info({ transferId: p.data.id, status: b.data.CallStatus }, 'transfer call status');
    await run('status', p.data.id, req.body);
    return reply.code(204).send();
  });

  app.post('/twilio/transfer/:id/conference', opts('transfer-conference'), async (req, reply) => {
    const p = params.safeParse(req.params);
    const b = conferenceBody.safeParse(req.body);
    if (!p.success || !b.success) return reply.code(400).send(bad('a conference status callback with StatusCallbackEvent on /twilio/transfer/tr_…/conference'));
    await run('conference', p.data.id, req.body);
    return reply.code(204).send();
  });
}

