/**
 * Request and campaign-settings schemas of the outbound API (zod), shared by
 * the HTTP routes (validation and OpenAPI) and the outbound service.
 */
import { z } from 'zod';
import { transferTargetsSchema } from '../transfer/targets.js';
import { httpToolSchema } from '../tools/http.js';
import { AGENT_REF_PATTERN, AGENT_REF_TEXT, parseAgentRef } from '../agent/port.js';
import { normalizePhone } from './phone.js';
import { templateVariables } from './template.js';
import { callingWindowSchema } from './window.js';

/**
 * A phone number in any international notation in, E.164 out (checked with
 * libphonenumber-js, not a regex). A codec, not a transform, so the same
 * schema also describes (and encodes) the E.164 value in API responses.
 */
export const phoneSchema = z.codec(z.string().max(64), z.string().describe('E.164, e.g. +14155550100'), {
  decode: (value, ctx) => {
    const r = normalizePhone(value);
    if (r.ok) return r.e164;
    ctx.issues.push({ code: 'custom', message: r.error, input: value });
    return z.NEVER;
  },
  encode: (e164) => e164,
});

/** An agent as `provider:id` (`openai:gpt-realtime`) or a bare PlayAI agent id. */
export const agentIdSchema = z
  .string()
  .regex(AGENT_REF_PATTERN, `must be ${AGENT_REF_TEXT}`)
  .refine((v) => parseAgentRef(v) !== undefined, `must be ${AGENT_REF_TEXT}`);

const metadataSchema = z
  .record(z.string().max(64), z.union([z.string().max(1000), z.number(), z.boolean(), z.null()]))
  .refine((m) => Object.keys(m).length <= 50, 'at most 50 keys');

export const createCallSchema = z
  .object({
    to: phoneSchema,
    from: phoneSchema.optional(),
    agentId: agentIdSchema.optional(),
    prompt: z.string().max(10_000).optional(),
    customGreeting: z.string().max(1_000).optional(),
    metadata: metadataSchema.optional(),
    /** Twilio async AMD; on a machine the call is hung up, or `voicemailMessage` is left after the beep. */
    machineDetection: z.boolean().optional(),
    voicemailMessage: z.string().min(1).max(1_000).optional(),
    /** Record this call (RECORDING must be local or twilio); absent: its agent and RECORDING_DEFAULT decide. */
    record: z.boolean().optional(),
  })
  .strict();
export type CreateCallRequest = z.infer<typeof createCallSchema>;

export const RETRYABLE_OUTCOMES = ['busy', 'no-answer', 'failed', 'voicemail'] as const;

export const campaignSettingsSchema = z
  .object({
    agentId: agentIdSchema.optional(),
    /** Caller id (a Twilio number or verified caller id); defaults to DEFAULT_CALLER_ID. */
    from: phoneSchema.optional(),
    /** Filled per contact: `{{name}}` takes the contact's `name` column. */
    prompt: z.string().max(10_000).optional(),
    customGreeting: z.string().max(1_000).optional(),
    /** Record the campaign's calls (RECORDING must be local or twilio); absent: the agent and RECORDING_DEFAULT decide. */
    record: z.boolean().optional(),
    /** When calls may be placed, in the contact's time zone (CSV `timezone`) or the window's. */
    window: callingWindowSchema.optional(),
    maxConcurrent: z.number().int().min(1).max(10_000).default(5),
    /** Dials per second (a token bucket); Twilio's default account limit is 1. */
    callsPerSecond: z.number().positive().max(100).default(1),
    retry: z
      .object({
        /** Attempts per contact in all, the first included. */
        maxAttempts: z.number().int().min(1).max(20).default(3),
        /** Outcomes that earn another attempt. */
        on: z.array(z.enum(RETRYABLE_OUTCOMES)).default(['busy', 'no-answer', 'failed']),
        delaySeconds: z.number().int().min(0).max(7 * 86_400).default(300),
      })
      .strict()
      .default({ maxAttempts: 3, on: ['busy', 'no-answer', 'failed'], delaySeconds: 300 }),
    /** What to do when a machine answers (Twilio async AMD): nothing (`continue`, no AMD), hang up, or leave `message` after the beep. */
    voicemail: z
      .object({ action: z.enum(['continue', 'hangup', 'message']), message: z.string().min(1).max(1_000).optional() })
      .strict()
      .refine((v) => v.action !== 'message' || v.message !== undefined, 'voicemail.message is required when action is "message"')
      .default({ action: 'continue' }),
    ringTimeoutSeconds: z.number().int().min(5).max(600).default(30),
    /** Pause the campaign automatically when failures spike. */
    failurePause: z
      .object({
        threshold: z.number().min(0.05).max(1).default(0.5),
        minCalls: z.number().int().min(1).max(10_000).default(10),
        windowSeconds: z.number().int().min(10).max(86_400).default(120),
      })
      .strict()
      .default({ threshold: 0.5, minCalls: 10, windowSeconds: 120 }),
    metadata: metadataSchema.optional(),
    /** People a campaign call may be handed to (a warm lead to sales), by name; the agent gets a transfer_call tool. */
    transferTargets: transferTargetsSchema.optional(),
    /** Operator HTTP tools the campaign's agent may call (as in AGENTS_FILE). */
    tools: z.array(httpToolSchema).max(64).optional(),
  })
  .strict();
export type CampaignSettings = z.infer<typeof campaignSettingsSchema>;

/** Template variables the campaign's prompt and greeting need from every contact. */
export function requiredVariables(s: Pick<CampaignSettings, 'prompt' | 'customGreeting'>): string[] {
  const names = new Set<string>();
  for (const t of [s.prompt, s.customGreeting]) if (t !== undefined) for (const n of templateVariables(t)) names.add(n);
  return [...names];
}

export const createCampaignSchema = z
  .object({
    name: z.string().min(1).max(200),
    settings: campaignSettingsSchema.default(campaignSettingsSchema.parse({})),
    contacts: z.array(z.unknown()).max(100_000).optional(),
    /** Start dialing at once. */
    start: z.boolean().optional(),
  })
  .strict();
