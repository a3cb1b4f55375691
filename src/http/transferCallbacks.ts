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

export interface TransferCallbackDeps {
  authToken: string | undefined;
  publicUrl: string;
  streamUrl: string;
  metrics: Metrics;
  transfers: TransferCoordinator;
}

export async function transferCallbacks(app: FastifyInstance, deps: TransferCallbackDeps): Promise<void> {
  const authOpts = { authToken: deps.authToken, publicUrl: deps.publicUrl, streamUrl: deps.streamUrl, metrics: deps.metrics };
  const opts = (route: string) => ({ preValidation: webhookAuth(authOpts, route), bodyLimit: 64 * 1024 });
  const bad = (what: string) => errorBody('invalid_request', `expected ${what}`);

  app.post('/twilio/transfer/:id/action', opts('transfer-action'), async (req, reply) => {
    const p = params.safeParse(req.params);
    const b = actionBody.safeParse(req.body);
    if (!p.success || !b.success) return reply.code(400).send(bad('a <Dial> action callback with DialCallStatus on /twilio/transfer/tr_…/action'));
    req.log.info({ transferId: p.data.id, dialCallStatus: b.data.DialCallStatus, callStatus: b.data.CallStatus }, 'transfer dial ended');
    const twiml = deps.transfers.onDialAction(p.data.id, { dialCallStatus: b.data.DialCallStatus, ...(b.data.CallStatus !== undefined ? { callStatus: b.data.CallStatus } : {}) });
    return reply.type('text/xml').send(twiml);
  });

  app.post('/twilio/transfer/:id/status', opts('transfer-status'), async (req, reply) => {
    const p = params.safeParse(req.params);
    const b = statusBody.safeParse(req.body);
    if (!p.success || !b.success) return reply.code(400).send(bad('a status callback with CallStatus on /twilio/transfer/tr_…/status'));
    req.log.info({ transferId: p.data.id, status: b.data.CallStatus }, 'transfer call status');
    deps.transfers.onPersonStatus(p.data.id, { callStatus: b.data.CallStatus });
    return reply.code(204).send();
  });

  app.post('/twilio/transfer/:id/conference', opts('transfer-conference'), async (req, reply) => {
    const p = params.safeParse(req.params);
    const b = conferenceBody.safeParse(req.body);
    if (!p.success || !b.success) return reply.code(400).send(bad('a conference status callback with StatusCallbackEvent on /twilio/transfer/tr_…/conference'));
    deps.transfers.onConference(p.data.id, { event: b.data.StatusCallbackEvent, ...(b.data.CallSid !== undefined ? { callSid: b.data.CallSid } : {}) });
    return reply.code(204).send();
  });
}
