/**
 * The /v1 HTTP API: calls, campaigns, the do-not-call list and webhook
 * deliveries. Fastify validates every request and encodes every response
 * with the zod schemas of `schemas.ts` (which also make the OpenAPI document
 * at /docs); handlers get typed `req.body`, `req.query` and `req.params`.
 * Errors are thrown (`ApiError`, `OutboundError`) and answered in the common
 * shape by the app's error handler (`errors.ts`).
 */
import { createHash } from 'node:crypto';
import { Readable } from 'node:stream';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import multipart from '@fastify/multipart';
import type { FastifyInstance, FastifyReply, FastifySchemaCompiler } from 'fastify';
import { serializerCompiler, validatorCompiler as zodValidatorCompiler } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { agentsOfCall, callApiSchema, callToApi, transfersOfCall } from '../calls/view.js';
import { parseContactsJsonAsync, parseContactsStream, resultsToCsv, type ContactsImport, type ImportOptions } from '../outbound/csv.js';
import type { CountryCode } from '../outbound/phone.js';
import type { OutboundService } from '../outbound/service.js';
import { campaignSettingsSchema, createCallSchema, createCampaignSchema, phoneSchema, requiredVariables, type CampaignSettings } from '../outbound/settings.js';
import type { WebhookDispatcher } from '../outbound/webhooks.js';
import type { CampaignRow, CampaignStore, ContactRow } from '../store/campaigns.js';
import type { CallStore } from '../store/calls.js';
import { apiAuth } from './auth.js';
import type { ManagedSession } from '../session/manager.js';
import type { TransferRequest, TransferStart } from '../session/callSession.js';
import { transferAddressSchema } from '../transfer/targets.js';
import { ApiError, errorResponses, parseOr400 } from './errors.js';
import {
  addContactsBody,
  callDetailSchema,
  campaignApiSchema,
  contactApiSchema,
  contactDetailSchema,
  contactParams,
  createCallHeaders,
  createCampaignBody,
  createCampaignQuery,
  createCampaignReply,
  deliveriesQuery,
  deliveriesReply,
  dncAddReply,
  dncBody,
  dncEntrySchema,
  dncParams,
  dncQuery,
  idParams,
  importQuery,
  importReportSchema,
  listCallsQuery,
  listCampaignsQuery,
  listContactsQuery,
  locationHeader,
  pageOf,
  resultsCsvReply,
  retryReply,
  STREAMED_MEDIA_TYPES,
  type ApiTypeProvider,
  type CampaignApi,
  type ContactApi,
  type ImportReport,
} from './schemas.js';
import { csvBody, readCsvForm } from './uploads.js';
import { liveRoutes, type LiveApiDeps } from './liveRoutes.js';

export interface ApiDeps {
  outbound: OutboundService;
  calls: CallStore;
  campaigns: CampaignStore;
  webhooks?: WebhookDispatcher;
  apiToken?: string;
  localMode: boolean;
  defaultCountry?: CountryCode;
  /** Why calls cannot go to this agent (its provider is not configured), or undefined when they can. */
  checkAgent?: (agentId: string) => string | undefined;
  /** The live session of a call on this server (transfers). */
  sessionOf?: (callSid: string) => ManagedSession | undefined;
  /**
   * REDIS_URL: asks the process that owns a call live elsewhere to transfer it (its answer, as a
   * local request's); undefined when no process owns the call.
   */
  transferElsewhere?: (callSid: string, req: TransferRequest) => Promise<TransferStart | undefined>;
  /** Live calls, setup and browser calls (`liveRoutes.ts`). */
  live?: LiveApiDeps;
}

const STREAMED: ReadonlySet<string> = new Set(STREAMED_MEDIA_TYPES);

const transferBody = z
  .object({
    target: z.string().min(1).max(40).optional().describe('A transfer target name of the call (its route, agent or campaign)'),
    to: transferAddressSchema.optional().describe('An explicit +E.164 number or sip: URI'),
    mode: z.enum(['cold', 'warm']).default('cold'),
    reason: z.string().max(300).optional().describe('Why; in a warm transfer the person hears it first'),
  })
  .strict()
  .refine((b) => (b.target === undefined) !== (b.to === undefined), { message: 'give exactly one of target (a name) or to (a number or sip: URI)' });
const transferReply = z.object({ callId: z.string(), transferId: z.string(), mode: z.enum(['cold', 'warm']), status: z.literal('dialing') });

/**
 * zod validation of every request part, except bodies the handler reads as a
 * stream (CSV, multipart): Fastify passes those through, and the handler
 * validates what it reads with the same schemas.
 */
const validatorCompiler: FastifySchemaCompiler<z.ZodType> = (route) =>
  route.httpPart === 'body' && route.contentType !== undefined && STREAMED.has(route.contentType) ? (data) => ({ value: data }) : zodValidatorCompiler(route);

/** A form field's value: JSON when it parses (numbers, booleans, objects), else the text itself. */
function formValue(v: string): unknown {
  try {
    return JSON.parse(v) as unknown;
  } catch {
    return v;
  }
}

/** `settings` sent as JSON text (a form field, a query parameter): an object, or a 400. */
function settingsObject(text: string | undefined, where: string): Record<string, unknown> {
  if (text === undefined) return {};
  const v = formValue(text);
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ApiError('invalid_request', `${where}: settings must be a JSON object, e.g. {"callsPerSecond": 2}`);
  return Object.fromEntries(Object.entries(v));
}

const iso = (t: number | null): string | null => (t === null ? null : new Date(t).toISOString());

function importReport(imp: ContactsImport, added: number, merged: ImportReport['mergedIntoExisting']): ImportReport {
  return { rows: imp.totalRows, added, errors: imp.errors, duplicates: imp.duplicates, mergedIntoExisting: merged };
}

/**
 * Refuses (422, nothing imported) an import with no contact to add (every row
 * bad, no phone column, a malformed or empty file), or, with `strict`, any
 * bad row. The report is in `details`.
 */
function acceptImport(imp: ContactsImport, strict: boolean): void {
  const report = importReport(imp, 0, []);
  const first = imp.errors[0];
  const at = first === undefined ? '' : `line ${first.line}${first.column !== undefined ? ` (${first.column})` : ''}: ${first.message}`;
  if (imp.contacts.length === 0) {
    const why =
      first !== undefined
        ? `no contact could be imported: ${at}${imp.errors.length > 1 ? ` (and ${imp.errors.length - 1} more errors; see details)` : ''}`
        : 'the file has a header row but no contacts: add one contact per line below the header';
    throw new ApiError('invalid_contacts', why, report);
  }
  if (strict && first !== undefined) {
    throw new ApiError('invalid_contacts', `${imp.errors.length} contact row(s) have errors and strict=true: nothing was imported; first: ${at}`, report);
  }
}

function contactToApi(c: ContactRow): ContactApi {
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
    updatedAt: new Date(c.updatedAt).toISOString(),
  };
}

export async function apiRoutes(parent: FastifyInstance, deps: ApiDeps): Promise<void> {
  const { outbound, calls, campaigns } = deps;
  const app = parent.withTypeProvider<ApiTypeProvider>();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  app.addHook('onRequest', apiAuth({ token: deps.apiToken, localMode: deps.localMode }));

  /** A call or campaign naming an agent whose provider is not set up is refused before anything is stored. */
  const assertAgent = (agentId: string | undefined): void => {
    if (agentId === undefined) return;
    const why = deps.checkAgent?.(agentId);
    if (why !== undefined) throw new ApiError('invalid_request', why, { field: 'agentId' });
  };

  const importOptions = (settings: Pick<CampaignSettings, 'prompt' | 'customGreeting'>): ImportOptions => ({
    requiredVariables: requiredVariables(settings),
    ...(deps.defaultCountry !== undefined ? { defaultCountry: deps.defaultCountry } : {}),
  });

  const loadCampaign = async (id: string): Promise<CampaignRow<CampaignSettings>> => {
    const c = await campaigns.get<unknown>(id);
    if (c === undefined) throw new ApiError('not_found', `no campaign ${id}: list them with GET /v1/campaigns`);
    return { ...c, settings: campaignSettingsSchema.parse(c.settings) };
  };

  const campaignToApi = async (c: CampaignRow<CampaignSettings>): Promise<CampaignApi> => {
    const p = await outbound.progress(c.id);
    return {
      id: c.id,
      name: c.name,
      status: c.status,
      settings: c.settings,
      pauseReason: c.pauseReason,
      lastError: c.lastError,
      createdAt: new Date(c.createdAt).toISOString(),
      startedAt: iso(c.startedAt),
      completedAt: iso(c.completedAt),
      progress: { counts: p.counts, activeCalls: p.activeCalls, dialsLastMinute: p.dialsLastMinute, etaSeconds: p.etaSeconds },
    };
  };

  /** Inserts an accepted import in chunks that hand the event loop back between them. */
  const insertContacts = async (campaignId: string, imp: ContactsImport): Promise<ImportReport> => {
    // The upload took time: a campaign that completed or was canceled meanwhile takes no more contacts.
    const open = async (): Promise<boolean> => {
      const status = (await campaigns.get(campaignId))?.status;
      return status !== undefined && status !== 'completed' && status !== 'canceled';
    };
    const { added, merged, stopped } = await campaigns.addContactsInChunks(
      campaignId,
      imp.contacts.map((c) => ({ line: c.line, phone: c.phone, variables: c.variables, ...(c.timezone !== undefined ? { timezone: c.timezone } : {}), mergedLines: c.mergedLines })),
      500,
      open,
    );
    const report = importReport(imp, added, merged);
    if (stopped) {
      throw new ApiError('campaign_finished', `campaign ${campaignId} finished while its contacts were being added: ${added} were added before it did, the rest were not`, report);
    }
    return report;
  };

  // ---------------------------------------------------------------- calls

  app.post(
    '/v1/calls',
    {
      schema: {
        tags: ['calls'],
        summary: 'Place one outbound call',
        body: createCallSchema,
        headers: createCallHeaders,
        response: {
          201: { description: 'Queued; it is dialed as soon as pacing and capacity allow', content: { 'application/json': { schema: callApiSchema } }, headers: locationHeader },
          200: { description: 'A repeat of an earlier request with the same Idempotency-Key (header Idempotent-Replayed: true)', content: { 'application/json': { schema: callApiSchema } } },
          ...errorResponses(400, 401, 409),
        },
      },
    },
    async (req, reply) => {
      const keyHeader = req.headers['idempotency-key'];
      const key = keyHeader !== undefined && keyHeader !== '' ? keyHeader : undefined;
      const hash = createHash('sha256').update(JSON.stringify(req.body)).digest('hex');
      assertAgent(req.body.agentId);
      const { call, replayed } = await outbound.createCall(req.body, key === undefined ? undefined : { key, hash });
      if (replayed) void reply.header('idempotent-replayed', 'true');
      return reply
        .code(replayed ? 200 : 201)
        .header('location', `/v1/calls/${call.id}`)
        .send(callToApi(call));
    },
  );

  app.get(
    '/v1/calls',
    { schema: { tags: ['calls'], summary: 'List calls, newest first', querystring: listCallsQuery, response: { 200: pageOf(callApiSchema), ...errorResponses(400, 401) } } },
    async (req) => {
      const q = req.query;
      const rows = await calls.list({
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
    },
  );

  app.get(
    '/v1/calls/:id',
    { schema: { tags: ['calls'], summary: 'One call with its events and transcript', params: idParams, response: { 200: callDetailSchema, ...errorResponses(400, 401, 404) } } },
    async (req) => {
      const { id } = req.params;
      const row = await calls.get(id);
      if (row === undefined) throw new ApiError('not_found', `no call ${id}: list them with GET /v1/calls`);
      const playai = await calls.transcript(id, 'playai');
      const live = await calls.transcript(id, 'live');
      return {
        ...callToApi(row),
        agents: await agentsOfCall(row, calls),
        transfers: await transfersOfCall(row, calls),
        events: (await calls.events(id)).map((e) => ({ at: new Date(e.at).toISOString(), type: e.type, status: e.status, sequence: e.sequence, data: e.data })),
        transcript: (playai.length > 0 ? playai : live).map((t) => ({ role: t.role, text: t.text, at: new Date(t.at).toISOString() })),
        transcriptSource: playai.length > 0 ? ('playai' as const) : ('live' as const),
      };
    },
  );

  app.post(
    '/v1/calls/:id/hangup',
    {
      schema: {
        tags: ['calls'],
        summary: 'End a call (cancels it if not answered yet)',
        params: idParams,
        response: { 200: callApiSchema, ...errorResponses(400, 401, 404, 502) },
      },
    },
    async (req) => callToApi(await outbound.hangupCall(req.params.id)),
  );

  app.post(
    '/v1/calls/:id/transfer',
    {
      schema: {
        tags: ['calls'],
        summary: 'Transfer a live call to a person',
        description:
          'Cold (`mode: "cold"`, default): the caller is connected to the person at once. Warm: the caller waits on hold while the person hears a summary, then they are joined. ' +
          '`target` is a name from the route\'s, agent\'s or campaign\'s `transferTargets`; `to` an explicit number or sip: URI (yours to choose, never a model\'s). ' +
          'The answer comes once the carrier took the call (202); the outcome (answered, busy, no-answer, failed, returned to the agent) follows as `transfer_*` events on the call and `call.updated` events with `change: "transfer"`.',
        params: idParams,
        body: transferBody,
        response: { 202: transferReply, ...errorResponses(400, 401, 404, 409, 422, 502) },
      },
    },
    async (req, reply) => {
      const { id } = req.params;
      const row = await calls.get(id);
      if (row === undefined) throw new ApiError('not_found', `no call ${id}: list them with GET /v1/calls`);
      const b = req.body;
      const request: TransferRequest = {
        mode: b.mode,
        by: 'api',
        ...(b.target !== undefined ? { target: b.target } : {}),
        ...(b.to !== undefined ? { to: b.to } : {}),
        ...(b.reason !== undefined ? { reason: b.reason, summary: b.reason } : {}),
      };
      const callSid = row.callSid;
      const session = callSid === null ? undefined : deps.sessionOf?.(callSid);
      let r: TransferStart | undefined;
      if (session !== undefined) {
        if (session.requestTransfer === undefined) throw new ApiError('transfer_unavailable', 'this call cannot be transferred');
        r = await session.requestTransfer(request);
      } else if (callSid !== null && deps.transferElsewhere !== undefined) {
        // REDIS_URL: the call's media stream may be on another process; that process runs the transfer.
        r = await deps.transferElsewhere(callSid, request);
      }
      if (r === undefined) throw new ApiError('call_not_live', `call ${id} is not talking to its agent on this server (status ${row.status}): only a live call can be transferred`);
      if (!r.ok) {
        const code = r.code === 'unknown_target' ? 'unknown_target' : r.code === 'unavailable' ? 'transfer_unavailable' : r.code === 'carrier_refused' ? 'carrier_error' : 'call_not_live';
        throw new ApiError(code, r.error);
      }
      return reply.code(202).send({ callId: id, transferId: r.transferId, mode: b.mode, status: 'dialing' as const });
    },
  );

  // ------------------------------------------------------------ campaigns

  // Campaign contacts come as JSON, a multipart CSV file or a text/csv body; the
  // last two are read as streams here, and only these routes accept them.
  await app.register(async (uploads) => {
    await uploads.register(multipart);
    uploads.addContentTypeParser(['text/csv', 'text/plain'], (_req, payload, done) => done(null, payload));
    const up = uploads.withTypeProvider<ApiTypeProvider>();

    up.post(
      '/v1/campaigns',
      {
        schema: {
          tags: ['campaigns'],
          summary: 'Create a campaign',
          description:
            'Three ways: JSON `{name, settings, contacts?, start?}`; a multipart form (fields `name`, `settings` as JSON or one field per setting, `start`, then the CSV `file` last); ' +
            'or a `text/csv` body with `name`, `settings` (JSON) and `start` in the query. An import where no row is usable (no phone column, every row bad) is refused with 422 ' +
            'and nothing is created; `strict=true` refuses it if any row is bad.',
          querystring: createCampaignQuery,
          body: createCampaignBody,
          response: {
            201: { description: 'Created, with the import report', content: { 'application/json': { schema: createCampaignReply } }, headers: locationHeader },
            ...errorResponses(400, 401, 413, 415, 422),
          },
        },
      },
      async (req, reply) => {
        const q = req.query;
        const strict = q.strict === 'true';
        let input: z.output<typeof createCampaignSchema>;
        let imp: ContactsImport | undefined;
        if (req.isMultipart()) {
          // Fields: name, start, settings (a JSON object), and any setting on its own (callsPerSecond=5).
          const form = await readCsvForm(
            req,
            (fields) => {
              const { name, start, settings: settingsText, ...rest } = fields;
              const settings = settingsObject(settingsText, 'form');
              for (const [k, v] of Object.entries(rest)) settings[k] ??= formValue(v);
              return parseOr400(createCampaignSchema, { name, settings, ...(start !== undefined ? { start: start === 'true' || start === '1' } : {}) }, 'form');
            },
            (chunks, value) => parseContactsStream(chunks, importOptions(value.settings)),
          );
          input = form.value;
          imp = form.imp;
        } else if (req.body instanceof Readable) {
          input = parseOr400(
            createCampaignSchema,
            { name: q.name ?? 'campaign', settings: settingsObject(q.settings, 'query'), ...(q.start !== undefined ? { start: q.start === 'true' } : {}) },
            'query',
          );
          imp = await parseContactsStream(csvBody(req, req.body), importOptions(input.settings));
        } else if (req.body !== undefined) {
          input = req.body;
          if (input.contacts !== undefined && input.contacts.length > 0) imp = await parseContactsJsonAsync(input.contacts, importOptions(input.settings));
        } else {
          throw new ApiError('invalid_request', 'no body: send JSON {"name": …}, a multipart form with a CSV file, or a text/csv body');
        }
        // Nothing is created for an import that is refused.
        assertAgent(input.settings?.agentId);
        if (imp !== undefined) acceptImport(imp, strict);
        const created = await campaigns.create(input.name, input.settings);
        let report: ImportReport | null = null;
        if (imp !== undefined) {
          try {
            report = await insertContacts(created.id, imp);
          } catch (err) {
            await campaigns.delete(created.id);
            throw err;
          }
        }
        if (input.start === true) await outbound.startCampaign(created.id);
        return reply
          .code(201)
          .header('location', `/v1/campaigns/${created.id}`)
          .send({ campaign: await campaignToApi(await loadCampaign(created.id)), import: report });
      },
    );

    up.post(
      '/v1/campaigns/:id/contacts',
      {
        schema: {
          tags: ['campaigns'],
          summary: 'Add contacts: a CSV body (text/csv), JSON {contacts: [...]}, or a multipart CSV file',
          params: idParams,
          querystring: importQuery,
          body: addContactsBody,
          response: { 201: importReportSchema, ...errorResponses(400, 401, 404, 409, 413, 415, 422) },
        },
      },
      async (req, reply) => {
        const { id } = req.params;
        const c = await loadCampaign(id);
        if (c.status === 'completed' || c.status === 'canceled') {
          throw new ApiError('campaign_finished', `campaign ${id} is ${c.status}: contacts can only be added to a draft, running or paused campaign`);
        }
        const opts = importOptions(c.settings);
        let imp: ContactsImport | undefined;
        if (req.isMultipart()) {
          imp = (await readCsvForm(req, () => undefined, (chunks) => parseContactsStream(chunks, opts))).imp;
        } else if (req.body instanceof Readable) {
          imp = await parseContactsStream(csvBody(req, req.body), opts);
        } else if (req.body !== undefined) {
          imp = await parseContactsJsonAsync(req.body.contacts, opts);
        }
        if (imp === undefined) throw new ApiError('invalid_request', 'no contacts: send a CSV body (text/csv), JSON {"contacts": [...]}, or a multipart CSV file');
        acceptImport(imp, req.query.strict === 'true');
        const report = await insertContacts(id, imp);
        outbound.contactsAdded(id);
        return reply.code(201).send(report);
      },
    );
  });

  app.get(
    '/v1/campaigns',
    {
      schema: { tags: ['campaigns'], summary: 'List campaigns, newest first', querystring: listCampaignsQuery, response: { 200: pageOf(campaignApiSchema), ...errorResponses(400, 401) } },
    },
    async (req) => {
      const q = req.query;
      const rows = await campaigns.list<unknown>({ ...(q.status !== undefined ? { status: q.status } : {}), ...(q.cursor !== undefined ? { before: q.cursor } : {}), limit: q.limit + 1 });
      const page = rows.slice(0, q.limit);
      return {
        data: await Promise.all(page.map((c) => campaignToApi({ ...c, settings: campaignSettingsSchema.parse(c.settings) }))),
        nextCursor: rows.length > q.limit ? (page[page.length - 1]?.id ?? null) : null,
      };
    },
  );

  app.get(
    '/v1/campaigns/:id',
    { schema: { tags: ['campaigns'], summary: 'A campaign with its progress', params: idParams, response: { 200: campaignApiSchema, ...errorResponses(400, 401, 404) } } },
    async (req) => campaignToApi(await loadCampaign(req.params.id)),
  );

  const action = (name: 'start' | 'pause' | 'resume' | 'cancel', summary: string) =>
    app.post(
      `/v1/campaigns/:id/${name}`,
      { schema: { tags: ['campaigns'], summary, params: idParams, response: { 200: campaignApiSchema, ...errorResponses(400, 401, 404, 409) } } },
      async (req) => {
        const { id } = req.params;
        await loadCampaign(id);
        const c =
          name === 'start'
            ? await outbound.startCampaign(id)
            : name === 'pause'
              ? await outbound.pauseCampaign(id)
              : name === 'resume'
                ? await outbound.resumeCampaign(id)
                : await outbound.cancelCampaign(id);
        return await campaignToApi(c);
      },
    );
  action('start', 'Start dialing');
  action('pause', 'Stop dialing new contacts (calls in progress go on)');
  action('resume', 'Resume a paused campaign');
  action('cancel', 'Cancel: no more dials; pending contacts end as canceled');

  app.get(
    '/v1/campaigns/:id/contacts',
    {
      schema: {
        tags: ['campaigns'],
        summary: 'Contacts with their state, outcome and attempts',
        params: idParams,
        querystring: listContactsQuery,
        response: { 200: pageOf(contactApiSchema), ...errorResponses(400, 401, 404) },
      },
    },
    async (req) => {
      const { id } = req.params;
      const q = req.query;
      await loadCampaign(id);
      const rows = await campaigns.contacts(id, {
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
    { schema: { tags: ['campaigns'], summary: 'One contact with every attempt', params: contactParams, response: { 200: contactDetailSchema, ...errorResponses(400, 401, 404) } } },
    async (req) => {
      const { id, contactId } = req.params;
      const contact = await campaigns.contact(contactId);
      if (contact === undefined || contact.campaignId !== id) throw new ApiError('not_found', `no contact ${contactId} in campaign ${id}`);
      return { ...contactToApi(contact), calls: (await calls.listByContact(id, contactId)).map(callToApi) };
    },
  );

  app.get(
    '/v1/campaigns/:id/results.csv',
    { schema: { tags: ['campaigns'], summary: 'Every contact and its result, as CSV', params: idParams, response: { 200: resultsCsvReply, ...errorResponses(400, 401, 404) } } },
    async (req, reply) => {
      const { id } = req.params;
      await loadCampaign(id);
      void reply.header('content-type', 'text/csv; charset=utf-8').header('content-disposition', `attachment; filename="${id}-results.csv"`);
      // Streamed: the documented body is the CSV text, sent as it is produced (the type provider
      // only knows bodies that are built whole, hence the plain reply).
      return (reply as FastifyReply).send(Readable.from(resultsCsv(id)));
    },
  );

  /**
   * A campaign's results as CSV, read and written a page at a time with the event loop handed
   * back between pages: a 100k-contact export does not stall the calls in progress.
   */
  async function* resultsCsv(id: string): AsyncGenerator<string> {
    const PAGE = 1000;
    const varNames = new Set<string>();
    for (let after = 0; ; ) {
      const page = await campaigns.variableNamesPage(id, after, PAGE * 5);
      for (const n of page.names) varNames.add(n);
      if (page.lastRowid === undefined) break;
      after = page.lastRowid;
      await yieldToLoop();
    }
    const columns = ['line', 'phone', 'state', 'outcome', 'attempts', 'last_call_id', 'last_call_status', 'answered_by', 'duration_s', 'last_error', 'merged_lines', ...varNames];
    let header = true;
    for (let after = 0; ; ) {
      const page = await campaigns.resultsPage(id, after, PAGE);
      const rows = page.map(({ contact: c, lastStatus, answeredBy, durationS }) => {
        const row: Record<string, string | number | null> = {
          line: c.line,
          phone: c.phone,
          state: c.state,
          outcome: c.outcome,
          attempts: c.attempts,
          last_call_id: c.lastCallId,
          last_call_status: lastStatus,
          answered_by: answeredBy,
          duration_s: durationS,
          last_error: c.lastError,
          merged_lines: c.mergedLines.join(' '),
        };
        for (const k of varNames) row[k] = c.variables[k] ?? null;
        return row;
      });
      if (rows.length > 0 || header) yield resultsToCsv(rows, columns, { header });
      header = false;
      const last = page[page.length - 1];
      if (last === undefined || page.length < PAGE) return;
      after = last.rowid;
      await yieldToLoop();
    }
  }

  // ---------------------------------------------------------------- do-not-call

  app.get(
    '/v1/dnc',
    { schema: { tags: ['do-not-call'], summary: 'The do-not-call list', querystring: dncQuery, response: { 200: pageOf(dncEntrySchema), ...errorResponses(400, 401) } } },
    async (req) => {
      const q = req.query;
      const rows = await campaigns.dncList({ ...(q.cursor !== undefined ? { after: q.cursor } : {}), limit: q.limit + 1 });
      const page = rows.slice(0, q.limit);
      return {
        data: page.map((r) => ({ phone: r.phone, reason: r.reason, createdAt: new Date(r.createdAt).toISOString() })),
        nextCursor: rows.length > q.limit ? (page[page.length - 1]?.phone ?? null) : null,
      };
    },
  );
  app.post(
    '/v1/dnc',
    {
      schema: {
        tags: ['do-not-call'],
        summary: 'Add a number (honoured at dial time by every campaign)',
        body: dncBody,
        response: { 201: { description: 'Added', content: { 'application/json': { schema: dncAddReply } } }, 200: { description: 'Already on the list', content: { 'application/json': { schema: dncAddReply } } }, ...errorResponses(400, 401) },
      },
    },
    async (req, reply) => {
      const b = req.body;
      const added = await campaigns.dncAdd(b.phone, b.reason ?? null);
      return reply.code(added ? 201 : 200).send({ phone: b.phone, added });
    },
  );
  app.delete(
    '/v1/dnc/:phone',
    { schema: { tags: ['do-not-call'], summary: 'Remove a number', params: dncParams, response: { 204: z.undefined().describe('Removed'), ...errorResponses(400, 401, 404) } } },
    async (req, reply) => {
      const { phone } = req.params;
      const normalized = phoneSchema.safeParse(phone);
      const removed = await campaigns.dncRemove(normalized.success ? normalized.data : phone);
      if (!removed) throw new ApiError('not_found', `${phone} is not on the do-not-call list`);
      return reply.code(204).send();
    },
  );

  // ------------------------------------------- live calls, setup, browser calls

  if (deps.live !== undefined) await liveRoutes(app, deps.live);

  // ---------------------------------------------------------------- webhooks

  app.get(
    '/v1/webhooks/deliveries',
    { schema: { tags: ['webhooks'], summary: 'Post-call webhook deliveries, newest first', querystring: deliveriesQuery, response: { 200: deliveriesReply, ...errorResponses(400, 401) } } },
    async (req) => {
      const q = req.query;
      if (deps.webhooks === undefined) return { data: [], webhookUrl: null };
      return { data: await deps.webhooks.list({ ...(q.status !== undefined ? { status: q.status } : {}), limit: q.limit }) };
    },
  );
  app.post(
    '/v1/webhooks/deliveries/:id/retry',
    {
      schema: {
        tags: ['webhooks'],
        summary: 'Send a failed delivery again',
        params: idParams,
        response: { 200: retryReply, ...errorResponses(400, 401, 404) },
      },
    },
    async (req) => {
      const { id } = req.params;
      if (deps.webhooks === undefined) throw new ApiError('not_found', 'no webhook deliveries: WEBHOOK_URL is not set');
      if (!await deps.webhooks.retry(id)) throw new ApiError('not_found', `no failed delivery ${id}: list them with GET /v1/webhooks/deliveries?status=failed`);
      return { id, requeued: true };
    },
  );
}
