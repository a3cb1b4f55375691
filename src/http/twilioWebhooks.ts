/**
 * `POST /twilio/voice` (answer a call) and `POST /twilio/status` (status callbacks).
 */
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { hangupTwiml, sayDialTwiml, sayHangupTwiml } from '../carrier/twilio/twiml.js';
import type { CallRecorder } from '../calls/recorder.js';
import { errorBody } from '../api/errors.js';
import type { Config } from '../config.js';
import type { Metrics } from '../metrics.js';
import type { CarrierCallbacks, StatusUpdate } from '../outbound/callbacks.js';
import type { AdmitResult, SessionManager } from '../session/manager.js';
import { webhookAuth } from './twilioAuth.js';
import { TERMINAL_CALL_STATUSES } from '../store/calls.js';
import type { PromptService } from '../tts/prompts.js';
import type { RecordingService } from '../recording/service.js';
import { streamTwimlWithConsent } from '../recording/consent.js';
import type { FleetAdmission } from '../session/fleetAdmission.js';
import { FleetError } from '../fleet/redis.js';

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

export interface TwilioWebhookDeps {
  /** TWILIO_AUTH_TOKEN; without it (local mode) only loopback clients are served. */
  authToken: string | undefined;
  /** The public base URL Twilio calls (signatures are checked against it). */
  publicUrl: string;
  /** The media-stream URL put in the TwiML. */
  streamUrl: string;
  /** What a refused caller hears, and the voice it is said in. */
  messages: Pick<Config['messages'], 'busy' | 'apology' | 'voice' | 'language'>;
  /** What to do with a call when the bridge is full. */
  overflow: Config['overflow'];
  manager: SessionManager;
  metrics: Metrics;
  /** The carrier callbacks' owner (answer, status, AMD). */
  callbacks: CarrierCallbacks;
  /** Writes inbound calls' records. */
  recorder: CallRecorder;
  /** A call reached a final status (a transfer holding it lets go). */
  onCallEnded?(callSid: string): void;
  /** Refusals and the consent announcement in the agent's voice (`<Play>` of a signed prompt URL) when TTS has them ready; `<Say>` otherwise. */
  prompts?: Pick<PromptService, 'spoken'>;
  /** Call recording: a recorded call hears the consent announcement first (RECORDING_CONSENT_TEXT). */
  recording?: RecordingService;
  /**
   * REDIS_URL: inbound calls are admitted against fleet-wide capacity, and a final status of a
   * call live on another process is forwarded to it.
   */
  fleet?: FleetAdmission;
}

/** A status callback's fields as the status route reads them (a forwarded one included); undefined when they are not one. */
export function statusUpdateOf(params: Record<string, string>): StatusUpdate | undefined {
  const parsed = statusBody.safeParse(params);
  if (!parsed.success) return undefined;
  const b = parsed.data;
  return { callSid: b.CallSid, status: b.CallStatus, sequence: b.SequenceNumber, durationS: b.CallDuration, answeredBy: b.AnsweredBy, sipResponseCode: b.SipResponseCode, errorCode: b.ErrorCode };
}

/** Forwards a final status callback to the process that owns the call (none: nothing is live anywhere). */
async function forwardStatus(fleet: FleetAdmission, callSid: string, body: unknown, log: { warn(o: object, msg: string): void }): Promise<void> {
  const params: Record<string, string> = {};
  if (typeof body === 'object' && body !== null) for (const [k, v] of Object.entries(body)) if (typeof v === 'string') params[k] = v;
  try {
    const answer = await fleet.owners.send(callSid, { type: 'status', params });
    if (!answer.ok) log.warn({ callSid, err: answer.error }, 'fleet: the process owning the call could not apply its final status');
  } catch (err) {
    if (err instanceof FleetError && err.code === 'no_owner') return;
    log.warn({ callSid, err: err instanceof Error ? err.message : String(err) }, 'fleet: could not forward a final status to the process owning the call');
  }
}

/** Header Twilio sends on every webhook; a retry of the same request carries the same value. */
const IDEMPOTENCY_HEADER = 'i-twilio-idempotency-token';

export async function twilioWebhooks(app: FastifyInstance, deps: TwilioWebhookDeps): Promise<void> {
  const { manager, metrics, callbacks, recorder } = deps;
  const authOpts = { authToken: deps.authToken, publicUrl: deps.publicUrl, streamUrl: deps.streamUrl, metrics };
  const say = { voice: deps.messages.voice, language: deps.messages.language };
  const spoken = (kind: 'busy' | 'apology') => deps.prompts?.spoken(kind) ?? deps.messages[kind];

  app.post('/twilio/voice', { preValidation: webhookAuth(authOpts, 'voice'), bodyLimit: 64 * 1024 }, async (req, reply) => {
    const parsed = voiceBody.safeParse(req.body);
    if (!parsed.success) {
      return reply.code(400).send(errorBody('invalid_request', 'expected a Twilio voice webhook with CallSid'));
    }
    const call = parsed.data;
    const log = req.log.child({ callSid: call.CallSid });
    const callId = callQuery.safeParse(req.query).data?.callId;
    const idemHeader = req.headers[IDEMPOTENCY_HEADER];
    const idempotencyToken = typeof idemHeader === 'string' && idemHeader.length > 0 ? idemHeader.slice(0, 200) : undefined;
    const admittedCall = { callSid: call.CallSid, from: call.From, to: call.To, direction: call.Direction };
    const duplicate = () => {
      metrics.refusedTotal.labels('duplicate').inc();
      log.warn({ callId }, 'a second voice webhook for a call that already has a stream token, a live stream or a record was refused (a replayed request?)');
      return reply.code(409).send(errorBody('duplicate_call', `call ${call.CallSid} was already admitted; a stream token is minted once per call`));
    };
    // Twilio's retry of a request already answered gets the same TwiML; anything else is not admitted twice.
    if (manager.hasCall(call.CallSid)) {
      const again = manager.admit(admittedCall, undefined, idempotencyToken);
      if (!again.ok) return duplicate();
      log.info('retried voice webhook: same stream token');
      return reply.type('text/xml').send(streamTwimlWithConsent(deps.recording?.consentFor(again.route), deps.streamUrl, { agentId: again.route.agentId, token: again.token }, say));
    }
    let admitted: AdmitResult;
    if (callId !== undefined) {
      // An outbound call answering: its route (and held slot) come from its record.
      const answer = await callbacks.answer(callId, call.CallSid);
      if (!answer.ok) {
        if (answer.why === 'duplicate') return duplicate();
        if (answer.why === 'store_error') return reply.type('text/xml').send(sayHangupTwiml(spoken('apology'), say));
        log.info({ callId }, 'outbound call answered but no longer wanted; hanging up');
        return reply.type('text/xml').send(hangupTwiml());
      }
      admitted =
        deps.fleet === undefined
          ? manager.admit({ ...admittedCall, direction: answer.direction }, answer, idempotencyToken)
          : // REDIS_URL: the stream may land on any process; it reads the route from the call's record.
            await deps.fleet.admitRecorded({ ...admittedCall, direction: answer.direction }, { callId, route: answer.route, held: answer.slot, outbound: true }, idempotencyToken);
    } else if (deps.fleet !== undefined) {
      // Fleet-wide: Twilio's retry may land here or elsewhere; the token in Redis answers it.
      admitted = await deps.fleet.admit(admittedCall, idempotencyToken);
      if (admitted.ok && !admitted.replayed) {
        if (await recorder.known(call.CallSid)) {
          await deps.fleet.cancel(call.CallSid, admitted.token);
          return duplicate();
        }
        await recorder.inboundAdmitted({ callSid: call.CallSid, from: call.From, to: call.To, agentId: admitted.route.agentId });
      }
    } else {
      if (await recorder.known(call.CallSid)) return duplicate();
      admitted = manager.admit(admittedCall, undefined, idempotencyToken);
      if (admitted.ok) await recorder.inboundAdmitted({ callSid: call.CallSid, from: call.From, to: call.To, agentId: admitted.route.agentId });
    }
    reply.type('text/xml');
    if (!admitted.ok) {
      metrics.refusedTotal.labels(admitted.reason).inc();
      log.warn({ reason: admitted.reason, used: manager.usedSlots, capacity: manager.capacity }, 'call refused');
      const fallback = deps.overflow.action === 'dial' && admitted.reason !== 'draining' ? deps.overflow.fallbackNumber : undefined;
      return fallback === undefined ? sayHangupTwiml(spoken('busy'), say) : sayDialTwiml(undefined, fallback, say);
    }
    log.info({ agentId: admitted.route.agentId, to: call.To }, 'call admitted');
    const consent = deps.recording?.consentFor(admitted.route);
    const consentSpeech = consent === undefined ? undefined : deps.prompts?.spoken('consent');
    return streamTwimlWithConsent(consentSpeech !== undefined && consentSpeech.text === consent ? consentSpeech : consent, deps.streamUrl, { agentId: admitted.route.agentId, token: admitted.token }, say);
  });

  app.post('/twilio/status', { preValidation: webhookAuth(authOpts, 'status'), bodyLimit: 64 * 1024 }, async (req, reply) => {
    const parsed = statusBody.safeParse(req.body);
    if (!parsed.success) {
      return reply.code(400).send(errorBody('invalid_request', 'expected a Twilio status callback with CallSid and CallStatus'));
    }
    const b = parsed.data;
    req.log.info({ callSid: b.CallSid, status: b.CallStatus, sequence: b.SequenceNumber }, 'call status');
    const update: StatusUpdate = {
      callSid: b.CallSid,
      status: b.CallStatus,
      sequence: b.SequenceNumber,
      durationS: b.CallDuration,
      answeredBy: b.AnsweredBy,
      sipResponseCode: b.SipResponseCode,
      errorCode: b.ErrorCode,
    };
    await callbacks.onStatus(callQuery.safeParse(req.query).data?.callId, update);
    if (TERMINAL_CALL_STATUSES.has(b.CallStatus)) {
      deps.onCallEnded?.(b.CallSid);
      // The call's media stream is on another process: the final status reaches it there.
      if (deps.fleet !== undefined && manager.getSession(b.CallSid) === undefined) await forwardStatus(deps.fleet, b.CallSid, req.body, req.log);
    }
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
    await callbacks.onAmd(callQuery.safeParse(req.query).data?.callId, { callSid: b.CallSid, answeredBy: b.AnsweredBy, durationMs: b.MachineDetectionDuration });
    return reply.code(204).send();
  });
}
