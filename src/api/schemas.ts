/**
 * zod schemas of the /v1 API's requests and responses. Fastify validates
 * requests and encodes responses with them (fastify-type-provider-zod), and
 * the OpenAPI document at /docs is generated from them: what is documented is
 * what is enforced.
 */
import type { Readable } from 'node:stream';
import type { FastifyTypeProvider } from 'fastify';
import { z } from 'zod';
import { callApiSchema } from '../calls/view.js';
import { campaignSettingsSchema, createCampaignSchema, phoneSchema } from '../outbound/settings.js';
import { CALL_DIRECTIONS } from '../store/calls.js';

// Named schemas become components of the OpenAPI document (and types of a generated client).
z.globalRegistry.add(campaignSettingsSchema, { id: 'CampaignSettings' });

/** Media types whose bodies the handler reads as a stream; Fastify passes them through unvalidated. */
export const STREAMED_MEDIA_TYPES = ['text/csv', 'text/plain', 'multipart/form-data'] as const;
type StreamedMedia = (typeof STREAMED_MEDIA_TYPES)[number];

/**
 * The zod type provider, plus request bodies declared per media type
 * (`body: {content: {'application/json': {schema}, 'text/csv': …}}`): a JSON
 * body is typed from its schema, a `text/csv` body is the request stream, a
 * multipart body is read with `req.parts()` (undefined here), and a request
 * without a body is undefined.
 */
export interface ApiTypeProvider extends FastifyTypeProvider {
  validator: this['schema'] extends z.ZodType ? z.output<this['schema']> : this['schema'] extends { content: infer C } ? BodyOf<C> : unknown;
  serializer: this['schema'] extends z.ZodType ? z.output<this['schema']> : unknown;
}
type BodyOf<C> =
  | {
      [K in keyof C]: K extends 'multipart/form-data' ? undefined : K extends StreamedMedia ? Readable : C[K] extends { schema: infer S extends z.ZodType } ? z.output<S> : unknown;
    }[keyof C]
  | undefined;

const time = z.iso.datetime();
const cursor = z.string().max(64);
const limit = z.coerce.number().int().min(1).max(500).default(50).describe('Page size (1-500)');

/** A page of a list, newest or first in order; pass `nextCursor` as `cursor` for the next page. */
export function pageOf<T extends z.ZodType>(item: T) {
  return z.object({ data: z.array(item), nextCursor: z.string().nullable().describe('Cursor of the next page, null on the last') });
}

// ------------------------------------------------------------------ params

export const idParams = z.object({ id: z.string().min(1).max(64) });
export const contactParams = z.object({ id: z.string().min(1).max(64), contactId: z.string().min(1).max(64) });
export const dncParams = z.object({ phone: z.string().min(2).max(32).describe('The number, E.164 (URL-encode the +: %2B)') });

// ------------------------------------------------------------------- calls

export const createCallHeaders = z.looseObject({
  'idempotency-key': z.string().max(255).optional().describe('Repeat a request safely: the same key and body return the first call (200) instead of dialing again'),
});

export const listCallsQuery = z
  .object({
    status: z.string().max(32).optional(),
    direction: z.enum(CALL_DIRECTIONS).optional(),
    campaignId: z.string().max(64).optional(),
    to: z.string().max(32).optional(),
    since: z.iso.datetime({ offset: true }).optional().describe('Only calls created at or after this time'),
    cursor: cursor.optional(),
    limit,
  })
  .strict();

export const callDetailSchema = callApiSchema
  .extend({
    agents: z.array(z.string()).describe('The agents that served the call, in order (provider:id): its own, then each fallback that took it over'),
    events: z.array(
      z.object({ at: time, type: z.string(), status: z.string().nullable(), sequence: z.number().nullable(), data: z.record(z.string(), z.unknown()).nullable() }),
    ),
    transcript: z.array(z.object({ role: z.string(), text: z.string(), at: time })),
    transcriptSource: z.enum(['playai', 'live']).describe('playai: fetched from the PlayAI REST API; live: the turns seen during the call'),
    transfers: z
      .array(
        z.object({
          transferId: z.string(),
          target: z.string().nullable(),
          to: z.string(),
          mode: z.string(),
          by: z.string(),
          requestedAt: time,
          outcome: z.string().describe('pending, answered, busy, no-answer, failed or canceled'),
          returned: z.boolean().describe('The caller came back to the agent'),
        }),
      )
      .describe('Transfers to a person, in order'),
  })
  .meta({ id: 'CallDetail' });

// --------------------------------------------------------------- campaigns

const campaignStatus = z.enum(['draft', 'running', 'paused', 'completed', 'canceled']);

export const progressSchema = z.object({
  counts: z.object({
    total: z.number().int(),
    byState: z.object({ pending: z.number().int(), dialing: z.number().int(), done: z.number().int() }),
    byOutcome: z.record(z.string(), z.number().int()).describe('answered, voicemail, busy, no-answer, failed, canceled, dnc, invalid-number'),
    attempts: z.number().int(),
  }),
  activeCalls: z.number().int(),
  dialsLastMinute: z.number().int(),
  etaSeconds: z.number().nullable().describe('Estimated time to finish while running'),
});

export const campaignApiSchema = z
  .object({
    id: z.string(),
    name: z.string(),
    status: campaignStatus,
    settings: campaignSettingsSchema,
    pauseReason: z.string().nullable(),
    lastError: z.string().nullable(),
    createdAt: time,
    startedAt: time.nullable(),
    completedAt: time.nullable(),
    progress: progressSchema,
  })
  .meta({ id: 'Campaign' });
export type CampaignApi = z.output<typeof campaignApiSchema>;

export const importReportSchema = z
  .object({
    rows: z.number().int().describe('Data rows read'),
    added: z.number().int().describe('New contacts'),
    errors: z.array(z.object({ line: z.number().int(), column: z.string().optional(), message: z.string(), value: z.string().optional() })).describe('Rows not imported, with why'),
    duplicates: z.array(z.object({ line: z.number().int(), phone: z.string(), firstLine: z.number().int() })).describe('Rows merged into an earlier row with the same number'),
    mergedIntoExisting: z.array(z.object({ line: z.number().int().nullable(), phone: z.string(), contactId: z.string() })).describe('Rows merged into a contact already in the campaign'),
  })
  .meta({ id: 'ImportReport' });
export type ImportReport = z.output<typeof importReportSchema>;

export const createCampaignReply = z.object({ campaign: campaignApiSchema, import: importReportSchema.nullable() });

export const listCampaignsQuery = z.object({ status: campaignStatus.optional(), cursor: cursor.optional(), limit }).strict();

/** With a `text/csv` body, the campaign's name, settings (JSON) and start come in the query. */
export const createCampaignQuery = z
  .object({
    strict: z.enum(['true', 'false']).optional().describe('true: refuse the whole import if any row is bad'),
    name: z.string().min(1).max(200).optional().describe('text/csv body only'),
    settings: z.string().max(100_000).optional().describe('text/csv body only: the settings as JSON'),
    start: z.enum(['true', 'false']).optional().describe('text/csv body only'),
  })
  .strict();
export const importQuery = z.object({ strict: z.enum(['true', 'false']).optional().describe('true: refuse the whole import if any row is bad') }).strict();

const csvDoc = z
  .string()
  .describe(
    'CSV, UTF-8, delimited by `,` `;` or tab: a header row with a phone column (phone, phone_number, number, to or mobile), ' +
      'an optional timezone column (IANA), and any other columns as template variables. At most 100 000 rows and 20 MB.',
  );
const fileDoc = z.string().meta({ contentMediaType: 'text/csv', description: 'The CSV file (send it after the other fields)' });

/** The multipart form of `POST /v1/campaigns` (documentation; the handler validates the fields with {@link createCampaignSchema}). */
const campaignFormDoc = z
  .object({
    name: z.string().min(1).max(200),
    settings: z.string().optional().describe('The settings as a JSON object; or send each setting as its own field (callsPerSecond=5)'),
    start: z.enum(['true', 'false']).optional(),
    file: fileDoc.optional().describe('The CSV file, sent after the other fields; without it the campaign starts with no contacts'),
  })
  .catchall(z.string());

/** `POST /v1/campaigns` body: JSON, a multipart form with a CSV file, or a CSV body. */
export const createCampaignBody = {
  content: {
    'application/json': { schema: createCampaignSchema },
    'multipart/form-data': { schema: campaignFormDoc },
    'text/csv': { schema: csvDoc },
  },
};

export const contactsJsonBody = z
  .object({ contacts: z.array(z.unknown()).min(1).max(100_000).describe('Objects like {phone, timezone?, name: "Ada"} or phone number strings') })
  .strict();

/** `POST /v1/campaigns/:id/contacts` body. */
export const addContactsBody = {
  content: {
    'application/json': { schema: contactsJsonBody },
    'multipart/form-data': { schema: z.object({ file: fileDoc }) },
    'text/csv': { schema: csvDoc },
  },
};

export const contactApiSchema = z
  .object({
    id: z.string(),
    line: z.number().int().nullable().describe('CSV line (JSON: item index + 1)'),
    phone: z.string(),
    timezone: z.string().nullable(),
    variables: z.record(z.string(), z.string()),
    state: z.enum(['pending', 'dialing', 'done']),
    outcome: z.string().nullable(),
    attempts: z.number().int(),
    nextAttemptAt: time.nullable(),
    lastCallId: z.string().nullable(),
    lastError: z.string().nullable(),
    mergedLines: z.array(z.number().int()),
    updatedAt: time,
  })
  .meta({ id: 'Contact' });
export type ContactApi = z.output<typeof contactApiSchema>;

export const contactDetailSchema = contactApiSchema.extend({ calls: z.array(callApiSchema).describe('Every attempt, oldest first') });

export const listContactsQuery = z
  .object({ state: z.enum(['pending', 'dialing', 'done']).optional(), outcome: z.string().max(32).optional(), cursor: cursor.optional(), limit })
  .strict();

/** results.csv: one row per contact. */
export const resultsCsvReply = {
  description: 'Every contact and its result: line, phone, state, outcome, attempts, last_call_id, last_call_status, answered_by, duration_s, last_error, merged_lines, then the variables',
  content: { 'text/csv': { schema: z.string() } },
};

// ------------------------------------------------------------ do-not-call

export const dncQuery = z.object({ cursor: z.string().max(32).optional(), limit }).strict();
export const dncBody = z.object({ phone: phoneSchema, reason: z.string().max(500).optional() }).strict();
export const dncEntrySchema = z.object({ phone: z.string(), reason: z.string().nullable(), createdAt: time });
export const dncAddReply = z.object({ phone: z.string(), added: z.boolean().describe('false: it was already on the list') });

// ---------------------------------------------------------------- webhooks

export const deliveriesQuery = z.object({ status: z.enum(['pending', 'delivered', 'failed']).optional(), limit }).strict();
export const deliverySchema = z.object({
  id: z.string(),
  callId: z.string().nullable(),
  event: z.string(),
  url: z.string(),
  status: z.enum(['pending', 'delivered', 'failed']),
  attempts: z.number().int(),
  nextAttemptAt: z.number().describe('ms since the epoch; meaningful while pending'),
  lastStatusCode: z.number().nullable(),
  lastError: z.string().nullable(),
  createdAt: z.number().describe('ms since the epoch'),
  deliveredAt: z.number().nullable(),
  body: z.object({ id: z.string(), event: z.string(), createdAt: z.string(), data: z.unknown() }).describe('The exact JSON body POSTed'),
});
export const retryReply = z.object({ id: z.string(), requeued: z.boolean() });
export const deliveriesReply = z.object({ data: z.array(deliverySchema), webhookUrl: z.null().optional().describe('null when WEBHOOK_URL is not set') });

/** A `Location` response header (documented on 201s). */
export const locationHeader = { location: { type: 'string', description: 'URL of the created resource' } } as const;

// ------------------------------------------------------- live calls, setup, browser calls

/** A person a call may be handed to, as the console and scripts see it (never a secret: a name and where it rings). */
export const transferTargetInfoSchema = z
  .object({
    name: z.string().describe('What the agent, a hotkey or POST /v1/calls/{id}/transfer names it by'),
    to: z.string().describe('+E.164 number or sip: URI'),
    description: z.string().optional(),
    timeoutS: z.number().int().describe('How long the phone rings before the caller comes back to the agent'),
  })
  .meta({ id: 'TransferTargetInfo' });
export type TransferTargetInfoApi = z.output<typeof transferTargetInfoSchema>;

export const liveCallSchema = z
  .object({
    callId: z.string().nullable().describe('The call record (GET /v1/calls/{id}); null only when the record could not be read'),
    callSid: z.string(),
    direction: z.enum(CALL_DIRECTIONS),
    from: z.string(),
    to: z.string(),
    agentId: z.string().describe('The agent serving the call now (provider:id)'),
    state: z.string().describe('The call session state: connecting, live, reconnecting, draining, ending'),
    startedAt: time.describe('When the media stream started'),
    durationS: z.number().int().describe('Seconds since the media stream started'),
    bargeIns: z.number().int(),
    agentReconnects: z.number().int(),
    campaignId: z.string().nullable(),
    transfer: z
      .object({
        available: z.boolean().describe('false for browser calls and when no carrier can redirect calls (no Twilio credentials)'),
        targets: z.array(transferTargetInfoSchema).describe("The call's route's, campaign's and agent's targets (the route's or campaign's win on a name)"),
      })
      .describe('Whether POST /v1/calls/{id}/transfer can hand this call to a person, and to whom by name'),
  })
  .meta({ id: 'LiveCall' });
export type LiveCallApi = z.output<typeof liveCallSchema>;
export const liveReply = z.object({ data: z.array(liveCallSchema).describe('Calls with a media stream on this process (with REDIS_URL: on every process of the fleet), oldest first') });

export const setupReply = z
  .object({
    mode: z.enum(['local', 'twilio']).describe('local: no Twilio credentials (simulated carrier, loopback-only Twilio routes)'),
    defaultAgent: z.string().describe('The agent of numbers without a route (provider:id)'),
    agents: z.array(
      z.object({
        id: z.string().describe('provider:id'),
        provider: z.string(),
        up: z.boolean().describe('false while marked down after failed connects'),
        openSessions: z.number().int().describe('Agent sockets open and ready now'),
        limit: z.number().int().nullable().describe('Its AGENT_LIMITS cap, if any'),
        fallbacks: z.array(z.string()),
        customGreeting: z.string().optional().describe('Its greeting from AGENTS_FILE'),
        hasPrompt: z.boolean().describe('AGENTS_FILE gives it instructions'),
        transferTargets: z.array(transferTargetInfoSchema).describe('Its AGENTS_FILE transfer targets'),
      }),
    ),
    routes: z.array(
      z.object({
        number: z.string(),
        agentId: z.string(),
        prompt: z.string().optional(),
        customGreeting: z.string().optional(),
        transferTargets: z.array(transferTargetInfoSchema).describe("The route's own transfer targets (its agent's apply too; the route's win on a name)"),
        hotkeys: z.array(z.object({ key: z.string(), transfer: z.string(), mode: z.enum(['cold', 'warm']) })).describe('Keypad hotkeys (ROUTES_FILE dtmf)'),
      }),
    ),
    capacity: z.object({
      maxConcurrentCalls: z.number().int(),
      usedSlots: z.number().int().describe('Live calls plus admitted calls whose stream has not started'),
      liveCalls: z.number().int(),
      reservedSlots: z.number().int(),
      inboundReserved: z.number().int().describe('Slots outbound dialing never takes (INBOUND_RESERVED)'),
    }),
    ready: z.object({ ready: z.boolean(), draining: z.boolean(), agentsDown: z.array(z.string()) }),
    webhook: z.object({ configured: z.boolean().describe('WEBHOOK_URL is set (the URL itself is not shown)'), events: z.array(z.string()) }),
  })
  .meta({ id: 'Setup' });
export type SetupApi = z.output<typeof setupReply>;

export const createWebCallBody = z
  .object({
    agentId: z.string().min(1).max(200).optional().describe('The agent to talk to (provider:id); default: the default agent'),
    route: z.string().min(2).max(32).optional().describe('A number route (E.164, as in ROUTES_FILE): its agent, prompt and greeting'),
    prompt: z.string().max(20_000).optional().describe("Added to the agent's instructions"),
    customGreeting: z.string().max(2000).optional().describe("Replaces the agent's greeting"),
    record: z.boolean().optional().describe('Record the call (RECORDING must be local or twilio); absent: its route, agent and RECORDING_DEFAULT decide'),
  })
  .strict()
  .refine((b) => b.route === undefined || (b.agentId === undefined && b.prompt === undefined && b.customGreeting === undefined), {
    message: 'a route brings its own agent, prompt and greeting: send route alone, or agentId with prompt and customGreeting',
    path: ['route'],
  })
  .meta({ id: 'CreateWebCall' });

export const webCallReply = z
  .object({
    callId: z.string().describe('The call record (GET /v1/calls/{id}, POST /v1/calls/{id}/hangup)'),
    callSid: z.string().describe('Send it as start.callSid (WC + 32 hex digits)'),
    token: z.string().describe('Single use: send it as start.customParameters.token'),
    streamUrl: z.literal('/web/media-stream').describe('Open a WebSocket here, on this server, and speak the Twilio Media Streams protocol'),
    expiresAt: time.describe('The token is refused after this time, and the call ends as canceled'),
  })
  .meta({ id: 'WebCall' });
export type WebCallApi = z.output<typeof webCallReply>;
