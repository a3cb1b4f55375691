/**
 * `POST /twilio/voice` (answer a call) and `POST /twilio/status` (status callbacks).
 */
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { connectStreamTwiml, hangupTwiml, sayDialTwiml, sayHangupTwiml } from '../carrier/twilio/twiml.js';
import { errorBody } from '../api/errors.js';
import type { Config } from '../config.js';
import type { Metrics } from '../metrics.js';
import type { OutboundService } from '../outbound/service.js';
import type { AdmitResult, SessionManager } from '../session/manager.js';
import { webhookAuth } from './twilioAuth.js';

const sid = z.string().min(2).max(64).regex(/^[A-Za-z0-9]+$/);
const voiceBody = z.object({
  CallSid: sid,
  From: z.string().max(256).optional().default(''),
  To: z.string().max(256).optional().default(''),
  Direction: z.string().max(64).optional().default('inbound'),
});
const statusBody = z.object({
  CallSid: sid,
  CallStatus: z.string().min(1).max(32),
  SequenceNumber: z.coerce.number().int().min(0).optional(),
  CallDuration: z.coerce.number().int().min(0).optional(),
  From: z.string().max(256).optional(),
  To: z.string().max(256).optional(),
  Direction: z.string().max(64).optional(),
  AnsweredBy: z.string().max(64).optional(),
  SipResponseCode: z.coerce.number().int().optional(),
  ErrorCode: z.coerce.number().int().optional(),
});
const amdBody = z.object({
  CallSid: sid,
  AnsweredBy: z.string().min(1).max(64),
  MachineDetectionDuration: z.coerce.number().int().min(0).optional(),
});
/** Our call id on the callback URLs of outbound calls. */
const callQuery = z.object({ callId: z.string().regex(/^call_[0-9a-z]{19}$/).optional() });

const TERMINAL_STATUSES = new Set(['completed', 'busy', 'failed', 'no-answer', 'canceled']);

export interface TwilioWebhookDeps {
  /** TWILIO_AUTH_TOKEN; without it (local mode) only loopback clients are served. */
  authToken: string | undefined;
  /** The public base URL Twilio calls (signatures are checked against it). */
  publicUrl: string;
  /** The media-stream URL put in the TwiML. */
  streamUrl: string;
  /** What a refused caller hears, and the voice it is said in. */
  messages: Pick<Config['messages'], 'busy' | 'voice' | 'language'>;
  /** What to do with a call when the bridge is full. */
  overflow: Config['overflow'];
  manager: SessionManager;
  metrics: Metrics;
  /** Outbound calls and call records (absent in bare tests). */
  outbound?: OutboundService;
}

export async function twilioWebhooks(app: FastifyInstance, deps: TwilioWebhookDeps): Promise<void> {
  const { manager, metrics, outbound } = deps;
  const authOpts = { authToken: deps.authToken, publicUrl: deps.publicUrl, streamUrl: deps.streamUrl, metrics };
  const say = { voice: deps.messages.voice, language: deps.messages.language };

  app.post('/twilio/voice', { preValidation: webhookAuth(authOpts, 'voice'), bodyLimit: 64 * 1024 }, async (req, reply) => {
    const parsed = voiceBody.safeParse(req.body);
    if (!parsed.success) {
      return reply.code(400).send(errorBody('invalid_request', 'expected a Twilio voice webhook with CallSid'));
    }
    const call = parsed.data;
    const log = req.log.child({ callSid: call.CallSid });
    const callId = callQuery.safeParse(req.query).data?.callId;
    reply.type('text/xml');
    let admitted: AdmitResult;
    if (callId !== undefined && outbound !== undefined) {
      // An outbound call answering: its route (and held slot) come from its record.
      const answer = outbound.answer(callId, call.CallSid);
      if (answer === undefined) {
        log.info({ callId }, 'outbound call answered but no longer wanted; hanging up');
        return hangupTwiml();
      }
      admitted = manager.admit({ callSid: call.CallSid, from: call.From, to: call.To, direction: answer.direction }, answer);
    } else {
      admitted = manager.admit({ callSid: call.CallSid, from: call.From, to: call.To, direction: call.Direction });
      if (admitted.ok) outbound?.recordInbound(admitted.record);
    }
    if (!admitted.ok) {
      metrics.refusedTotal.labels(admitted.reason).inc();
      log.warn({ reason: admitted.reason, used: manager.usedSlots, capacity: manager.capacity }, 'call refused');
      const fallback = deps.overflow.action === 'dial' && admitted.reason !== 'draining' ? deps.overflow.fallbackNumber : undefined;
      return fallback === undefined ? sayHangupTwiml(deps.messages.busy, say) : sayDialTwiml(undefined, fallback, say);
    }
    log.info({ agentId: admitted.route.agentId, to: call.To }, 'call admitted');
    return connectStreamTwiml(deps.streamUrl, { agentId: admitted.route.agentId, token: admitted.token });
  });

  app.post('/twilio/status', { preValidation: webhookAuth(authOpts, 'status'), bodyLimit: 64 * 1024 }, async (req, reply) => {
    const parsed = statusBody.safeParse(req.body);
    if (!parsed.success) {
      return reply.code(400).send(errorBody('invalid_request', 'expected a Twilio status callback with CallSid and CallStatus'));
    }
    const b = parsed.data;
    manager.recordStatus(b.CallSid, b.CallStatus, {
      sequence: b.SequenceNumber,
      duration: b.CallDuration,
      from: b.From,
      to: b.To,
      direction: b.Direction,
    });
    req.log.info({ callSid: b.CallSid, status: b.CallStatus, sequence: b.SequenceNumber }, 'call status');
    // A finished call cannot keep a session: end it even if its socket lingers.
    if (TERMINAL_STATUSES.has(b.CallStatus)) manager.getSession(b.CallSid)?.close('caller_hangup');
    const update: Parameters<OutboundService['onStatus']>[1] = { callSid: b.CallSid, status: b.CallStatus };
    if (b.SequenceNumber !== undefined) update.sequence = b.SequenceNumber;
    if (b.CallDuration !== undefined) update.durationS = b.CallDuration;
    if (b.AnsweredBy !== undefined) update.answeredBy = b.AnsweredBy;
    if (b.SipResponseCode !== undefined) update.sipResponseCode = b.SipResponseCode;
    if (b.ErrorCode !== undefined) update.errorCode = b.ErrorCode;
    outbound?.onStatus(callQuery.safeParse(req.query).data?.callId, update);
    return reply.code(204).send();
  });

  // Async answering-machine detection result of an outbound call.
  app.post('/twilio/amd', { preValidation: webhookAuth(authOpts, 'amd'), bodyLimit: 64 * 1024 }, async (req, reply) => {
    const parsed = amdBody.safeParse(req.body);
    if (!parsed.success) {
      return reply.code(400).send(errorBody('invalid_request', 'expected an AMD callback with CallSid and AnsweredBy'));
    }
    const b = parsed.data;
    req.log.info({ callSid: b.CallSid, answeredBy: b.AnsweredBy, ms: b.MachineDetectionDuration }, 'answering machine detection');
    const amd: Parameters<OutboundService['onAmd']>[1] = { callSid: b.CallSid, answeredBy: b.AnsweredBy };
    if (b.MachineDetectionDuration !== undefined) amd.durationMs = b.MachineDetectionDuration;
    outbound?.onAmd(callQuery.safeParse(req.query).data?.callId, amd);
    return reply.code(204).send();
  });
}
