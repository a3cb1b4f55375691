/**
 * The one view of a call record that leaves the process: the API's call
 * object, and the post-call webhook body built from it. Read-only over the
 * store; no I/O besides reads.
 */
import { z } from 'zod';
import type { CampaignStore } from '../store/campaigns.js';
import { CALL_DIRECTIONS, CALL_OUTCOMES, type CallOutcome, type CallRow, type CallStore } from '../store/calls.js';
import { hasRecording } from '../recording/available.js';

/** Twilio AMD results that mean an answering machine (`machine_start`, `machine_end_beep`, …). */
export function isMachine(answeredBy: string | null | undefined): boolean {
  return answeredBy !== null && answeredBy !== undefined && answeredBy.startsWith('machine_');
}

/** Outcome of a finished call from its final carrier status and AMD result. */
export function outcomeOf(status: string, answeredBy: string | null | undefined): CallOutcome {
  switch (status) {
    case 'completed':
      if (isMachine(answeredBy)) return 'voicemail';
      if (answeredBy === 'fax') return 'failed';
      return 'answered';
    case 'busy':
    case 'no-answer':
    case 'failed':
    case 'canceled':
    case 'not-dialed':
      return status;
    default:
      return 'failed';
  }
}

const iso = (t: number | null): string | null => (t === null ? null : new Date(t).toISOString());

const time = z.iso.datetime();

/** The API's call object (the `/v1` responses and the webhook's `call`), as a zod schema for the OpenAPI document. */
export const callApiSchema = z
  .object({
    id: z.string(),
    callSid: z.string().nullable().describe('Twilio CallSid, once dialed (a browser call has its own: WC + 32 hex digits)'),
    direction: z.enum(CALL_DIRECTIONS).describe('web: a browser call (POST /v1/web-calls), no carrier'),
    to: z.string(),
    from: z.string(),
    agentId: z.string(),
    status: z.string().describe('queued, claimed, dialed, initiated, ringing, in-progress, or a final Twilio status (completed, busy, no-answer, failed, canceled) or not-dialed'),
    outcome: z.enum(CALL_OUTCOMES).nullable(),
    answeredBy: z.string().nullable().describe('Twilio AMD result (human, machine_start, …)'),
    campaignId: z.string().nullable(),
    contactId: z.string().nullable(),
    attempt: z.number().int().nullable(),
    metadata: z.record(z.string(), z.unknown()).nullable(),
    machineDetection: z.boolean(),
    voicemailAction: z.enum(['hangup', 'message']).nullable(),
    error: z.object({ code: z.number().nullable(), message: z.string().nullable() }).nullable(),
    conversationId: z.string().nullable(),
    endReason: z.string().nullable(),
    createdAt: time,
    dialedAt: time.nullable(),
    answeredAt: time.nullable(),
    endedAt: time.nullable(),
    durationSeconds: z.number().nullable(),
    recording: z
      .object({
        backend: z.enum(['local', 'twilio']).describe('local: a WAV in DATA_DIR/recordings; twilio: Twilio\'s recording, streamed through'),
        status: z.string().nullable().describe('in-progress while the call goes on, then completed'),
        durationS: z.number().nullable(),
        url: z.string().describe('GET it (same auth as /v1): audio/wav, Range requests supported'),
      })
      .nullable()
      .describe('The call\'s recording (stereo: caller left, agent right), or null'),
  })
  .meta({ id: 'Call' });
export type CallApi = z.output<typeof callApiSchema>;

/** The API's view of a call row. */
export function callToApi(r: CallRow): CallApi {
  return {
    id: r.id,
    callSid: r.callSid,
    direction: r.direction,
    to: r.to,
    from: r.from,
    agentId: r.agentId,
    status: r.status,
    outcome: r.outcome,
    answeredBy: r.answeredBy,
    campaignId: r.campaignId,
    contactId: r.contactId,
    attempt: r.attempt,
    metadata: r.metadata,
    machineDetection: r.machineDetection,
    voicemailAction: r.voicemailAction,
    error: r.errorCode !== null || r.errorMessage !== null ? { code: r.errorCode, message: r.errorMessage } : null,
    conversationId: r.conversationId,
    endReason: r.endReason,
    createdAt: new Date(r.createdAt).toISOString(),
    dialedAt: iso(r.dialedAt),
    answeredAt: iso(r.answeredAt),
    endedAt: iso(r.endedAt),
    durationSeconds: r.durationS,
    recording:
      r.recordingBackend !== null && hasRecording(r)
        ? { backend: r.recordingBackend, status: r.recordingStatus, durationS: r.recordingDurationS, url: `/v1/calls/${r.id}/recording` }
        : null,
  };
}

/** The agents that served a call, in order: its own, then each that took it over (`agent_switched` events). */
export async function agentsOfCall(row: CallRow, calls: CallStore): Promise<string[]> {
  const agents = [row.agentId];
  for (const e of await calls.events(row.id)) {
    if (e.type !== 'agent_switched') continue;
    const to = e.data?.to;
    const from = e.data?.from;
    // A call that started on a fallback (its agent was down) names the route's agent first.
    if (typeof from === 'string' && agents.length === 1 && agents[0] !== from) agents[0] = from;
    if (typeof to === 'string') agents.push(to);
  }
  return agents;
}

/** One transfer of a call, as its `transfer_*` events tell it. */
export interface TransferSummary {
  transferId: string;
  target: string | null;
  to: string;
  mode: string;
  by: string;
  requestedAt: string;
  /** `pending` (ringing or talking), `answered`, or why the person was not reached (busy, no-answer, failed, canceled). */
  outcome: string;
  /** The caller came back to the agent. */
  returned: boolean;
}

/** The transfers of a call, in order. */
export async function transfersOfCall(row: CallRow, calls: CallStore): Promise<TransferSummary[]> {
  const byId = new Map<string, TransferSummary>();
  const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
  for (const e of await calls.events(row.id)) {
    if (!e.type.startsWith('transfer_')) continue;
    const id = str(e.data?.transferId);
    if (id === undefined) continue;
    let t = byId.get(id);
    if (t === undefined) {
      t = { transferId: id, target: str(e.data?.target) ?? null, to: str(e.data?.to) ?? '', mode: str(e.data?.mode) ?? 'cold', by: str(e.data?.by) ?? 'api', requestedAt: new Date(e.at).toISOString(), outcome: 'pending', returned: false };
      byId.set(id, t);
    }
    const outcome = str(e.data?.outcome);
    if (e.type === 'transfer_answered' || e.type === 'transfer_completed') t.outcome = 'answered';
    else if (e.type === 'transfer_failed' && outcome !== undefined && t.outcome !== 'answered') t.outcome = outcome;
    else if (e.type === 'transfer_returned') t.returned = true;
  }
  return [...byId.values()];
}

/** The post-call webhook body: the call, its outcome, durations, transcript, campaign and contact. */
export async function callPayload(row: CallRow, calls: CallStore, campaigns: CampaignStore): Promise<Record<string, unknown>> {
  const playai = await calls.transcript(row.id, 'playai');
  const live = await calls.transcript(row.id, 'live');
  const transcript = playai.length > 0 ? playai : live;
  const contact = row.contactId !== null ? await campaigns.contact(row.contactId) : undefined;
  return {
    call: callToApi(row),
    agents: await agentsOfCall(row, calls),
    transfers: await transfersOfCall(row, calls),
    outcome: row.outcome,
    answeredBy: row.answeredBy,
    durations: {
      ringSeconds: row.answeredAt !== null && row.dialedAt !== null ? Math.max(0, Math.round((row.answeredAt - row.dialedAt) / 1000)) : null,
      talkSeconds: row.durationS,
      totalSeconds: row.endedAt !== null ? Math.round((row.endedAt - (row.dialedAt ?? row.createdAt)) / 1000) : null,
    },
    transcript: { source: playai.length > 0 ? 'playai' : 'live', turns: transcript.map((t) => ({ role: t.role, text: t.text, at: new Date(t.at).toISOString() })) },
    campaignId: row.campaignId,
    contactId: row.contactId,
    contact: contact === undefined ? null : { phone: contact.phone, variables: contact.variables, attempts: contact.attempts },
  };
}
