/**
 * `POST /twilio/recording`: Twilio's recording status callback (RECORDING=twilio),
 * signed like every webhook. It fills the call record's recording SID, URL,
 * status and duration.
 */
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { errorBody } from '../api/errors.js';
import type { Metrics } from '../metrics.js';
import type { RecordingService } from '../recording/service.js';
import { webhookAuth } from './twilioAuth.js';

const sid = z.string().min(2).max(64).regex(/^[A-Za-z0-9]+$/);
const recordingBody = z.object({
  CallSid: sid,
  RecordingSid: sid,
  RecordingStatus: z.string().min(1).max(32),
  RecordingUrl: z.string().url().max(1000).optional(),
  /** Seconds; -1 while the recording is in progress. */
  RecordingDuration: z.coerce.number().optional(),
  RecordingChannels: z.coerce.number().int().min(1).max(2).optional(),
});
const callQuery = z.object({ callId: z.string().regex(/^call_[0-9a-z]{19}$/).optional() });

export interface RecordingCallbackDeps {
  authToken: string | undefined;
  publicUrl: string;
  streamUrl: string;
  metrics: Metrics;
  recordings: RecordingService;
}

export async function recordingCallbacks(app: FastifyInstance, deps: RecordingCallbackDeps): Promise<void> {
  const authOpts = { authToken: deps.authToken, publicUrl: deps.publicUrl, streamUrl: deps.streamUrl, metrics: deps.metrics };
  app.post('/twilio/recording', { preValidation: webhookAuth(authOpts, 'recording'), bodyLimit: 64 * 1024 }, async (req, reply) => {
    const parsed = recordingBody.safeParse(req.body);
    if (!parsed.success) return reply.code(400).send(errorBody('invalid_request', 'expected a Twilio recording status callback with CallSid, RecordingSid and RecordingStatus'));
    const b = parsed.data;
    const callId = callQuery.safeParse(req.query).data?.callId;
    req.log.info({ callSid: b.CallSid, recordingSid: b.RecordingSid, status: b.RecordingStatus, durationS: b.RecordingDuration }, 'recording status');
    const known = await deps.recordings.onTwilioStatus(callId, {
      callSid: b.CallSid,
      recordingSid: b.RecordingSid,
      status: b.RecordingStatus,
      ...(b.RecordingUrl !== undefined ? { url: b.RecordingUrl } : {}),
      ...(b.RecordingDuration !== undefined && b.RecordingDuration >= 0 ? { durationS: b.RecordingDuration } : {}),
      ...(b.RecordingChannels !== undefined ? { channels: b.RecordingChannels } : {}),
    });
    if (!known) req.log.warn({ callSid: b.CallSid, callId }, 'recording status for a call this server has no record of; ignored');
    return reply.code(204).send();
  });
}
