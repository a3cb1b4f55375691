/**
 * The /v1 HTTP API: calls, campaigns, the do-not-call list and webhook
 * deliveries. JSON in and out; bodies and queries are validated with zod
 * (the same schemas feed the OpenAPI document at /docs).
 */
import { createHash } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { parseContactsCsv, parseContactsJson, resultsToCsv, type ContactsImport } from '../outbound/csv.js';
import { callToApi } from '../calls/view.js';
import { OutboundError, type OutboundService } from '../outbound/service.js';
import {
  campaignSettingsSchema,
  createCallSchema,
  createCampaignSchema,
  phoneSchema,
  requiredVariables,
  type CampaignSettings,
} from '../outbound/settings.js';
import type { WebhookDispatcher } from '../outbound/webhooks.js';
import type { CampaignRow, CampaignStore } from '../store/campaigns.js';
import type { CallStore } from '../store/calls.js';
import { apiAuth } from './auth.js';

export interface ApiDeps {
  outbound: OutboundService;
  calls: CallStore;
  campaigns: CampaignStore;
  webhooks?: WebhookDispatcher;
  apiToken?: string;
  localMode: boolean;
  defaultCountry?: string;
}

const MAX_CSV_BYTES = 20 * 1024 * 1024;

const limitSchema = z.coerce.number().int().min(1).max(500).default(50);
const listCallsQuery = z
  .object({
    status: z.string().max(32).optional(),
    direction: z.enum(['inbound', 'outbound']).optional(),
    campaignId: z.string().max(64).optional(),
    to: z.string().max(32).optional(),
    since: z.iso.datetime({ offset: true }).optional(),
    cursor: z.string().max(64).optional(),
    limit: limitSchema,
  })
  .strict();
const listCampaignsQuery = z
  .object({ status: z.enum(['draft', 'running', 'paused', 'completed', 'canceled']).optional(), cursor: z.string().max(64).optional(), limit: limitSchema })
  .strict();
const listContactsQuery = z
  .object({ state: z.enum(['pending', 'dialing', 'done']).optional(), outcome: z.string().max(32).optional(), cursor: z.string().max(64).optional(), limit: limitSchema })
  .strict();
const idParams = z.object({ id: z.string().min(1).max(64) });
const contactParams = z.object({ id: z.string().min(1).max(64), contactId: z.string().min(1).max(64) });
const importQuery = z.object({ strict: z.enum(['true', 'false']).optional() }).strict();
/** With a `text/csv` body, the campaign's name, settings (JSON) and start come in the query. */
const createQuery = z
  .object({
    strict: z.enum(['true', 'false']).optional(),
    name: z.string().min(1).max(200).optional(),
    settings: z.string().max(100_000).optional(),
    start: z.enum(['true', 'false']).optional(),
  })
  .strict();

/** A form field's value: JSON when it parses (numbers, booleans, objects), else the text itself. */
function formValue(v: string): unknown {
  try {
    return JSON.parse(v) as unknown;
  } catch {
    return v;
  }
}

function parseSettingsJson(text: string | undefined, where: string): Record<string, unknown> {
  if (text === undefined) return {};
  const v = formValue(text);
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ApiError(400, 'invalid_request', `${where}: settings must be a JSON object`);
  return v as Record<string, unknown>;
}
const dncBody = z.object({ phone: phoneSchema, reason: z.string().max(500).optional() }).strict();
const dncParams = z.object({ phone: z.string().min(2).max(32) });
const contactsBody = z.object({ contacts: z.array(z.unknown()).min(1).max(100_000) }).strict();
const deliveriesQuery = z.object({ status: z.enum(['pending', 'delivered', 'failed']).optional(), limit: limitSchema }).strict();

class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
  }
}

function parse<T extends z.ZodType>(schema: T, value: unknown, where: string): z.infer<T> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issues = r.error.issues.map((i) => ({ path: i.path.join('.'), message: i.message }));
  const first = issues[0];
  throw new ApiError(400, 'invalid_request', `${where}: ${first ? `${first.path ? `${first.path}: ` : ''}${first.message}` : 'invalid'}`, issues);
}

/** JSON Schema of a zod schema for the OpenAPI document (input side of transforms). */
function doc(schema: z.ZodType): Record<string, unknown> {
  return z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as Record<string, unknown>;
}

const iso = (t: number | null): string | null => (t === null ? null : new Date(t).toISOString());

function campaignToApi(c: CampaignRow<CampaignSettings>, outbound: OutboundService): Record<string, unknown> {
  return {
    id: c.id,
    name: c.name,
    status: c.status,
    settings: c.settings,
    pauseReason: c.pauseReason,
    lastError: c.lastError,
    createdAt: iso(c.createdAt),
    startedAt: iso(c.startedAt),
    completedAt: iso(c.completedAt),
    progress: outbound.progress(c.id),
  };
}

function importReport(imp: ContactsImport, added: number, merged: Array<{ line: number | null; phone: string; contactId: string }>) {
  return {
    rows: imp.totalRows,
    added,
    errors: imp.errors,
    duplicates: imp.duplicates,
    mergedIntoExisting: merged,
  };
}

export async function apiRoutes(app: FastifyInstance, deps: ApiDeps): Promise<void> {
  const { outbound, calls, campaigns } = deps;

  // zod validates in the handlers; the route schemas are documentation for /docs.
  app.setValidatorCompiler(() => () => true);
  app.setSerializerCompiler(() => (data) => JSON.stringify(data));
  app.addHook('onRequest', apiAuth({ token: deps.apiToken, localMode: deps.localMode }));
  app.addContentTypeParser(['text/csv', 'text/plain'], { parseAs: 'string', bodyLimit: MAX_CSV_BYTES }, (_req, body, done) => done(null, body));

  app.setErrorHandler((err: unknown, req, reply) => {
    if (err instanceof ApiError) return reply.code(err.status).send({ error: err.code, message: err.message, details: err.details });
    if (err instanceof OutboundError) return reply.code(err.status).send({ error: err.code, message: err.message });
    const e = err as { statusCode?: number; code?: string; message?: string };
    if (typeof e.statusCode === 'number' && e.statusCode >= 400 && e.statusCode < 500) {
      return reply.code(e.statusCode).send({ error: e.code ?? 'bad_request', message: e.message ?? 'bad request' });
    }
    req.log.error({ err }, 'API error');
    return reply.code(500).send({ error: 'internal_error', message: 'internal error' });
  });

  const loadCampaign = (id: string): CampaignRow<CampaignSettings> => {
    const c = campaigns.get<CampaignSettings>(id);
    if (c === undefined) throw new ApiError(404, 'not_found', `no campaign ${id}`);
    return { ...c, settings: campaignSettingsSchema.parse(c.settings) };
  };

  /** Reads contacts from a CSV body, a JSON body or a multipart upload. */
  const readContacts = async (
    req: FastifyRequest,
    settings: CampaignSettings,
    json: unknown[] | undefined,
  ): Promise<ContactsImport | undefined> => {
    const opts = { requiredVariables: requiredVariables(settings), ...(deps.defaultCountry !== undefined ? { defaultCountry: deps.defaultCountry as never } : {}) };
    if (typeof req.body === 'string') return parseContactsCsv(req.body, opts);
    if (json !== undefined) return parseContactsJson(json, opts);
    return undefined;
  };

  const addContacts = (campaignId: string, imp: ContactsImport, strict: boolean) => {
    if (strict && imp.errors.length > 0) {
      throw new ApiError(422, 'invalid_contacts', `${imp.errors.length} contact row(s) have errors; nothing was imported`, importReport(imp, 0, []));
    }
    const { added, merged } = campaigns.addContacts(
      campaignId,
      imp.contacts.map((c) => ({ line: c.line, phone: c.phone, variables: c.variables, ...(c.timezone !== undefined ? { timezone: c.timezone } : {}), mergedLines: c.mergedLines })),
    );
    return importReport(imp, added, merged);
  };

  /** Multipart form: `settings` (JSON), `name`, `start`, and a CSV file. */
  const readMultipart = async (req: FastifyRequest): Promise<{ fields: Record<string, string>; csv?: string }> => {
    const fields: Record<string, string> = {};
    let csv: string | undefined;
    for await (const part of req.parts({ limits: { fileSize: MAX_CSV_BYTES, files: 1, fields: 20 } })) {
      if (part.type === 'file') {
        const buf = await part.toBuffer();
        if (part.file.truncated) throw new ApiError(413, 'too_large', `the CSV file is larger than ${MAX_CSV_BYTES} bytes`);
        csv = buf.toString('utf8');
      } else if (typeof part.value === 'string') {
        fields[part.fieldname] = part.value;
      }
    }
    return csv === undefined ? { fields } : { fields, csv };
  };

  // ---------------------------------------------------------------- calls

  app.post(
    '/v1/calls',
    { schema: { tags: ['calls'], summary: 'Place one outbound call', body: doc(createCallSchema), headers: { type: 'object', properties: { 'idempotency-key': { type: 'string', maxLength: 255 } } } } },
    async (req, reply) => {
      const body = parse(createCallSchema, req.body, 'body');
      const keyHeader = req.headers['idempotency-key'];
      const key = typeof keyHeader === 'string' && keyHeader.length > 0 ? keyHeader : undefined;
      if (key !== undefined && key.length > 255) throw new ApiError(400, 'invalid_request', 'Idempotency-Key: at most 255 characters');
      const hash = createHash('sha256').update(JSON.stringify(req.body ?? null)).digest('hex');
      const { call, replayed } = outbound.createCall(body, key === undefined ? undefined : { key, hash });
      if (replayed) void reply.header('idempotent-replayed', 'true');
      return reply.code(replayed ? 200 : 201).send(callToApi(call));
    },
  );

  app.get('/v1/calls', { schema: { tags: ['calls'], summary: 'List calls, newest first', querystring: doc(listCallsQuery) } }, async (req) => {
    const q = parse(listCallsQuery, req.query, 'query');
    const rows = calls.list({
      ...(q.status !== undefined ? { status: q.status } : {}),
      ...(q.direction !== undefined ? { direction: q.direction } : {}),
      ...(q.campaignId !== undefined ? { campaignId: q.campaignId } : {}),
      ...(q.to !== undefined ? { to: q.to } : {}),
      ...(q.since !== undefined ? { since: Date.parse(q.since) } : {}),
      ...(q.cursor !== undefined ? { before: q.cursor } : {}),
      limit: q.limit + 1,
    });
    const page = rows.slice(0, q.limit);
    return { data: page.map(callToApi), nextCursor: rows.length > q.limit ? (page[page.length - 1]?.id ?? null) : null };
  });

  app.get('/v1/calls/:id', { schema: { tags: ['calls'], summary: 'One call with its events and transcript', params: doc(idParams) } }, async (req) => {
    const { id } = parse(idParams, req.params, 'path');
    const row = calls.get(id);
    if (row === undefined) throw new ApiError(404, 'not_found', `no call ${id}`);
    const playai = calls.transcript(id, 'playai');
    const live = calls.transcript(id, 'live');
    return {
      ...callToApi(row),
      events: calls.events(id).map((e) => ({ at: iso(e.at), type: e.type, status: e.status, sequence: e.sequence, data: e.data })),
      transcript: (playai.length > 0 ? playai : live).map((t) => ({ role: t.role, text: t.text, at: iso(t.at) })),
      transcriptSource: playai.length > 0 ? 'playai' : 'live',
    };
  });

  app.post('/v1/calls/:id/hangup', { schema: { tags: ['calls'], summary: 'End a call (cancels it if not answered yet)', params: doc(idParams) } }, async (req) => {
    const { id } = parse(idParams, req.params, 'path');
    return callToApi(await outbound.hangupCall(id));
  });

  // ------------------------------------------------------------ campaigns

  app.post(
    '/v1/campaigns',
    {
      schema: {
        tags: ['campaigns'],
        summary:
          'Create a campaign: JSON {name, settings, contacts, start}; multipart (fields name, settings as JSON or one field per setting, start; a CSV file); or a text/csv body with name, settings and start in the query',
        body: doc(createCampaignSchema),
        querystring: doc(createQuery),
      },
    },
    async (req, reply) => {
      const q = parse(createQuery, req.query, 'query');
      let input: z.infer<typeof createCampaignSchema>;
      let csv: string | undefined;
      if (req.isMultipart()) {
        // Fields: name, start, settings (a JSON object), and any setting on its own (callsPerSecond=5).
        const mp = await readMultipart(req);
        const { name, start, settings: settingsText, ...rest } = mp.fields;
        const settings: Record<string, unknown> = parseSettingsJson(settingsText, 'form');
        for (const [k, v] of Object.entries(rest)) settings[k] ??= formValue(v);
        input = parse(createCampaignSchema, { name, settings, ...(start !== undefined ? { start: start === 'true' || start === '1' } : {}) }, 'form');
        csv = mp.csv;
      } else if (typeof req.body === 'string') {
        input = parse(createCampaignSchema, { name: q.name ?? 'campaign', settings: parseSettingsJson(q.settings, 'query'), ...(q.start !== undefined ? { start: q.start === 'true' } : {}) }, 'query');
        csv = req.body;
      } else {
        input = parse(createCampaignSchema, req.body, 'body');
      }
      const opts = { requiredVariables: requiredVariables(input.settings), ...(deps.defaultCountry !== undefined ? { defaultCountry: deps.defaultCountry as never } : {}) };
      const imp = csv !== undefined ? parseContactsCsv(csv, opts) : input.contacts !== undefined ? parseContactsJson(input.contacts, opts) : undefined;
      if (imp !== undefined && q.strict === 'true' && imp.errors.length > 0) {
        throw new ApiError(422, 'invalid_contacts', `${imp.errors.length} contact row(s) have errors; nothing was created`, importReport(imp, 0, []));
      }
      const created = campaigns.create(input.name, input.settings);
      const report = imp === undefined ? undefined : addContacts(created.id, imp, false);
      if (input.start === true) outbound.startCampaign(created.id);
      return reply.code(201).send({ campaign: campaignToApi(loadCampaign(created.id), outbound), import: report ?? null });
    },
  );

  app.get('/v1/campaigns', { schema: { tags: ['campaigns'], summary: 'List campaigns, newest first', querystring: doc(listCampaignsQuery) } }, async (req) => {
    const q = parse(listCampaignsQuery, req.query, 'query');
    const rows = campaigns.list<unknown>({ ...(q.status !== undefined ? { status: q.status } : {}), ...(q.cursor !== undefined ? { before: q.cursor } : {}), limit: q.limit + 1 });
    const page = rows.slice(0, q.limit);
    return {
      data: page.map((c) => campaignToApi({ ...c, settings: campaignSettingsSchema.parse(c.settings) }, outbound)),
      nextCursor: rows.length > q.limit ? (page[page.length - 1]?.id ?? null) : null,
    };
  });

  app.get('/v1/campaigns/:id', { schema: { tags: ['campaigns'], summary: 'A campaign with its progress', params: doc(idParams) } }, async (req) => {
    const { id } = parse(idParams, req.params, 'path');
    return campaignToApi(loadCampaign(id), outbound);
  });

  const action = (name: 'start' | 'pause' | 'resume' | 'cancel', summary: string) =>
    app.post(`/v1/campaigns/:id/${name}`, { schema: { tags: ['campaigns'], summary, params: doc(idParams) } }, async (req) => {
      const { id } = parse(idParams, req.params, 'path');
      loadCampaign(id);
      const c =
        name === 'start'
          ? outbound.startCampaign(id)
          : name === 'pause'
            ? outbound.pauseCampaign(id)
            : name === 'resume'
              ? outbound.resumeCampaign(id)
              : outbound.cancelCampaign(id);
      return campaignToApi(c, outbound);
    });
  action('start', 'Start dialing');
  action('pause', 'Stop dialing new contacts (calls in progress go on)');
  action('resume', 'Resume a paused campaign');
  action('cancel', 'Cancel: no more dials; pending contacts end as canceled');

  app.post(
    '/v1/campaigns/:id/contacts',
    { schema: { tags: ['campaigns'], summary: 'Add contacts: a CSV body (text/csv), JSON {contacts: [...]}, or a multipart CSV file', params: doc(idParams), querystring: doc(importQuery) } },
    async (req, reply) => {
      const { id } = parse(idParams, req.params, 'path');
      const q = parse(importQuery, req.query, 'query');
      const c = loadCampaign(id);
      if (c.status === 'completed' || c.status === 'canceled') throw new ApiError(409, 'campaign_finished', `campaign is ${c.status}`);
      let imp: ContactsImport | undefined;
      if (req.isMultipart()) {
        const mp = await readMultipart(req);
        if (mp.csv !== undefined) imp = parseContactsCsv(mp.csv, { requiredVariables: requiredVariables(c.settings), ...(deps.defaultCountry !== undefined ? { defaultCountry: deps.defaultCountry as never } : {}) });
      } else if (typeof req.body === 'string') {
        imp = await readContacts(req, c.settings, undefined);
      } else {
        imp = await readContacts(req, c.settings, parse(contactsBody, req.body, 'body').contacts);
      }
      if (imp === undefined) throw new ApiError(400, 'invalid_request', 'send a CSV body (text/csv), JSON {contacts: [...]}, or a multipart CSV file');
      const report = addContacts(id, imp, q.strict === 'true');
      outbound.kick();
      return reply.code(201).send(report);
    },
  );

  app.get(
    '/v1/campaigns/:id/contacts',
    { schema: { tags: ['campaigns'], summary: 'Contacts with their state, outcome and attempts', params: doc(idParams), querystring: doc(listContactsQuery) } },
    async (req) => {
      const { id } = parse(idParams, req.params, 'path');
      const q = parse(listContactsQuery, req.query, 'query');
      loadCampaign(id);
      const rows = campaigns.contacts(id, {
        ...(q.state !== undefined ? { state: q.state } : {}),
        ...(q.outcome !== undefined ? { outcome: q.outcome } : {}),
        ...(q.cursor !== undefined ? { after: q.cursor } : {}),
        limit: q.limit + 1,
      });
      const page = rows.slice(0, q.limit);
      return { data: page.map(contactToApi), nextCursor: rows.length > q.limit ? (page[page.length - 1]?.id ?? null) : null };
    },
  );

  app.get(
    '/v1/campaigns/:id/contacts/:contactId',
    { schema: { tags: ['campaigns'], summary: 'One contact with every attempt', params: doc(contactParams) } },
    async (req) => {
      const { id, contactId } = parse(contactParams, req.params, 'path');
      const contact = campaigns.contact(contactId);
      if (contact === undefined || contact.campaignId !== id) throw new ApiError(404, 'not_found', `no contact ${contactId} in campaign ${id}`);
      const attempts = calls.listByContact(id, contactId);
      return { ...contactToApi(contact), calls: attempts.map(callToApi) };
    },
  );

  app.get('/v1/campaigns/:id/results.csv', { schema: { tags: ['campaigns'], summary: 'Every contact and its result, as CSV', params: doc(idParams) } }, async (req, reply) => {
    const { id } = parse(idParams, req.params, 'path');
    loadCampaign(id);
    const varNames = new Set<string>();
    const contacts = [...campaigns.allContacts(id)];
    for (const c of contacts) for (const k of Object.keys(c.variables)) varNames.add(k);
    const columns = ['line', 'phone', 'state', 'outcome', 'attempts', 'last_call_id', 'last_call_status', 'answered_by', 'duration_s', 'last_error', 'merged_lines', ...varNames];
    const rows = contacts.map((c) => {
      const last = c.lastCallId !== null ? calls.get(c.lastCallId) : undefined;
      const row: Record<string, string | number | null> = {
        line: c.line,
        phone: c.phone,
        state: c.state,
        outcome: c.outcome,
        attempts: c.attempts,
        last_call_id: c.lastCallId,
        last_call_status: last?.status ?? null,
        answered_by: last?.answeredBy ?? null,
        duration_s: last?.durationS ?? null,
        last_error: c.lastError,
        merged_lines: c.mergedLines.join(' '),
      };
      for (const k of varNames) row[k] = c.variables[k] ?? null;
      return row;
    });
    void reply.header('content-type', 'text/csv; charset=utf-8');
    void reply.header('content-disposition', `attachment; filename="${id}-results.csv"`);
    return reply.send(resultsToCsv(rows, columns));
  });

  // ---------------------------------------------------------------- do-not-call

  app.get('/v1/dnc', { schema: { tags: ['do-not-call'], summary: 'The do-not-call list' } }, async (req) => {
    const q = parse(z.object({ cursor: z.string().max(32).optional(), limit: limitSchema }).strict(), req.query, 'query');
    const rows = campaigns.dncList({ ...(q.cursor !== undefined ? { after: q.cursor } : {}), limit: q.limit + 1 });
    const page = rows.slice(0, q.limit);
    return { data: page.map((r) => ({ phone: r.phone, reason: r.reason, createdAt: iso(r.createdAt) })), nextCursor: rows.length > q.limit ? (page[page.length - 1]?.phone ?? null) : null };
  });
  app.post('/v1/dnc', { schema: { tags: ['do-not-call'], summary: 'Add a number (honoured at dial time by every campaign)', body: doc(dncBody) } }, async (req, reply) => {
    const b = parse(dncBody, req.body, 'body');
    const added = campaigns.dncAdd(b.phone, b.reason ?? null);
    return reply.code(added ? 201 : 200).send({ phone: b.phone, added });
  });
  app.delete('/v1/dnc/:phone', { schema: { tags: ['do-not-call'], summary: 'Remove a number', params: doc(dncParams) } }, async (req, reply) => {
    const { phone } = parse(dncParams, req.params, 'path');
    const normalized = phoneSchema.safeParse(phone);
    const removed = campaigns.dncRemove(normalized.success ? normalized.data : phone);
    if (!removed) throw new ApiError(404, 'not_found', `${phone} is not on the list`);
    return reply.code(204).send();
  });

  // ---------------------------------------------------------------- webhooks

  app.get('/v1/webhooks/deliveries', { schema: { tags: ['webhooks'], summary: 'Post-call webhook deliveries, newest first', querystring: doc(deliveriesQuery) } }, async (req) => {
    const q = parse(deliveriesQuery, req.query, 'query');
    if (deps.webhooks === undefined) return { data: [], webhookUrl: null };
    return { data: deps.webhooks.list({ ...(q.status !== undefined ? { status: q.status } : {}), limit: q.limit }) };
  });
  app.post('/v1/webhooks/deliveries/:id/retry', { schema: { tags: ['webhooks'], summary: 'Send a failed delivery again', params: doc(idParams) } }, async (req) => {
    const { id } = parse(idParams, req.params, 'path');
    if (deps.webhooks === undefined) throw new ApiError(404, 'not_found', 'WEBHOOK_URL is not set');
    const ok = deps.webhooks.retry(id);
    if (!ok) throw new ApiError(404, 'not_found', `no failed delivery ${id}`);
    return { id, requeued: true };
  });
}

function contactToApi(c: import('../store/campaigns.js').ContactRow): Record<string, unknown> {
  return {
    id: c.id,
    line: c.line,
    phone: c.phone,
    timezone: c.timezone,
    variables: c.variables,
    state: c.state,
    outcome: c.outcome,
    attempts: c.attempts,
    nextAttemptAt: c.state === 'pending' ? iso(c.nextAttemptAt) : null,
    lastCallId: c.lastCallId,
    lastError: c.lastError,
    mergedLines: c.mergedLines,
    updatedAt: iso(c.updatedAt),
  };
}

