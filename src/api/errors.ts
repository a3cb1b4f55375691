/**
 * The one error shape of every HTTP reply that is an error, the /v1 API's and
 * Fastify's own (bad JSON, unknown route, body too large, unsupported media
 * type, validation, multipart limits) alike:
 *
 *     {"error": {"code": "invalid_request", "message": "body: to: needs a country code (+…)", "details": [...]}}
 *
 * `code` is one of {@link ERROR_CODES} (declared here once, with its HTTP
 * status); `message` is for people and says what to change; `details` is
 * there when there is more to show (validation issues, an import report).
 */
import type { FastifyError } from '@fastify/error';
import type { FastifyReply, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { OutboundError } from '../outbound/service.js';

/** Every error code a reply can carry, with its HTTP status and when it is used. */
export const ERROR_CODES = {
  invalid_request: { status: 400, doc: 'The request is malformed or a field is invalid; `details` lists each bad field.' },
  missing_from: { status: 400, doc: 'No caller id: give `from` or set DEFAULT_CALLER_ID.' },
  unauthorized: { status: 401, doc: 'Missing or wrong bearer token (API_TOKEN).' },
  forbidden: { status: 403, doc: 'The caller may not use this route (a bad X-Twilio-Signature, a non-loopback client in local mode).' },
  not_found: { status: 404, doc: 'No such route, or no such call, campaign, contact or delivery.' },
  conflict: { status: 409, doc: 'The request conflicts with the current state.' },
  idempotency_conflict: { status: 409, doc: 'The Idempotency-Key was used with another request body.' },
  campaign_finished: { status: 409, doc: 'The campaign is completed or canceled.' },
  campaign_not_running: { status: 409, doc: 'Only a running or draft campaign can be paused.' },
  campaign_not_paused: { status: 409, doc: 'Only a paused campaign can be resumed.' },
  duplicate_call: { status: 409, doc: 'A second voice webhook for a call that already has a stream token, a live stream or a record (only Twilio retries of the same request get the same answer).' },
  call_not_live: { status: 409, doc: 'The call is not talking to its agent on this server (not started, ended, or already being transferred).' },
  transfer_unavailable: { status: 409, doc: 'This call cannot be transferred: a browser call, or no carrier that can redirect calls (Twilio credentials).' },
  unknown_target: { status: 422, doc: 'The transfer target is not one the call\'s route, agent or campaign declares; the message lists the ones that exist.' },
  range_not_satisfiable: { status: 416, doc: 'The Range asks for bytes past the end of the recording; `Content-Range: bytes */size` gives its size.' },
  upgrade_required: { status: 426, doc: 'A WebSocket endpoint was called without a WebSocket upgrade.' },
  too_large: { status: 413, doc: 'The body, file or form is over its limit.' },
  unsupported_media_type: { status: 415, doc: 'The Content-Type is not accepted by this route.' },
  invalid_contacts: { status: 422, doc: 'The contacts cannot be imported; `details` is the import report with every bad row.' },
  internal_error: { status: 500, doc: 'A bug or an unexpected failure; the server log has the details.' },
  carrier_error: { status: 502, doc: 'The carrier (Twilio) refused or failed the request.' },
  capacity: { status: 503, doc: 'A browser call was refused: MAX_CONCURRENT_CALLS calls are in progress or admitted; try again when one ends.' },
  agent_capacity: { status: 503, doc: "A browser call was refused: the agent's provider refused a session for capacity a moment ago; try again when one of its calls ends." },
  agent_limit: { status: 503, doc: 'A browser call was refused: the agent has its AGENT_LIMITS number of calls.' },
  agent_down: { status: 503, doc: 'A browser call was refused: the agent and its fallbacks are marked down (failed connects); see GET /v1/setup.' },
  draining: { status: 503, doc: 'A browser call was refused: the bridge is shutting down and takes no new calls.' },
  overload: { status: 503, doc: 'A browser call was refused: the process is too busy (event-loop delay over MAX_EVENT_LOOP_DELAY_MS).' },
} as const satisfies Record<string, { status: number; doc: string }>;

export type ErrorCode = keyof typeof ERROR_CODES;
const CODES = Object.keys(ERROR_CODES) as [ErrorCode, ...ErrorCode[]];

export function isErrorCode(s: string): s is ErrorCode {
  return Object.hasOwn(ERROR_CODES, s);
}

/** `{path, message}` of one invalid field (`path` dotted: `settings.window.days`). */
export const issueSchema = z.object({ path: z.string(), message: z.string() });
export type Issue = z.infer<typeof issueSchema>;

/** The body of every error reply. */
export const errorBodySchema = z
  .object({
    error: z.object({
      code: z.enum(CODES),
      message: z.string().describe('What went wrong and how to fix it'),
      details: z.unknown().optional().describe('Validation issues ({path, message}[]) or an import report'),
    }),
  })
  .meta({ id: 'Error' });
export type ErrorBody = z.infer<typeof errorBodySchema>;

/** An error an API handler throws; the error handler turns it into its reply. */
export class ApiError extends Error {
  override name = 'ApiError';
  readonly statusCode: number;
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
    this.statusCode = ERROR_CODES[code].status;
  }
}

/** The body of an error reply (for hooks that reply themselves instead of throwing). */
export function errorBody(code: ErrorCode, message: string, details?: unknown): ErrorBody {
  return { error: details === undefined ? { code, message } : { code, message, details } };
}

/** zod issues as `{path, message}`. */
export function zodIssues(err: z.ZodError): Issue[] {
  return err.issues.map((i) => ({ path: i.path.map(String).join('.'), message: i.message }));
}

/** `where: first.path: message`, naming the first bad field. */
export function issuesMessage(where: string, issues: readonly Issue[]): string {
  const first = issues[0];
  if (first === undefined) return `${where}: invalid`;
  const more = issues.length > 1 ? ` (and ${issues.length - 1} more; see details)` : '';
  return `${where}: ${first.path !== '' ? `${first.path}: ` : ''}${first.message}${more}`;
}

/** Parses with a zod schema; a failure is a 400 naming the first bad field. */
export function parseOr400<T extends z.ZodType>(schema: T, value: unknown, where: string): z.output<T> {
  const r = schema.safeParse(value);
  if (r.success) return r.data;
  const issues = zodIssues(r.error);
  throw new ApiError('invalid_request', issuesMessage(where, issues), issues);
}

const PARTS: Record<string, string> = { body: 'body', querystring: 'query', params: 'path', headers: 'headers' };

interface ValidationIssue {
  instancePath?: string;
  message?: string;
}

function isFastifyError(err: unknown): err is FastifyError & { validation?: ValidationIssue[]; validationContext?: string } {
  return err instanceof Error && typeof (err as { statusCode?: unknown }).statusCode === 'number';
}

/** Code and fix-naming message for Fastify's and its plugins' own errors. */
function frameworkError(err: FastifyError, req: FastifyRequest): { code: ErrorCode; message: string } | undefined {
  switch (err.code) {
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return { code: 'invalid_request', message: 'the body is not valid JSON: check its syntax (quotes, commas, brackets)' };
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return { code: 'invalid_request', message: 'the body is empty: send a JSON object, or drop the Content-Type header' };
    case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
      return { code: 'invalid_request', message: 'the body is shorter or longer than its Content-Length header' };
    case 'FST_ERR_CTP_BODY_TOO_LARGE': {
      const limit = `the body is larger than this route accepts (${Math.round(req.routeOptions.bodyLimit / 1024)} KB)`;
      return {
        code: 'too_large',
        message: req.url.startsWith('/v1/campaigns') ? `${limit}: send large contact lists as CSV (Content-Type: text/csv, or a multipart file), up to ${MAX_CSV_MB} MB` : limit,
      };
    }
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE': {
      const accepted = req.url.startsWith('/twilio/')
        ? 'send application/x-www-form-urlencoded, as Twilio does'
        : 'send application/json (campaign contacts may also be text/csv or multipart/form-data)';
      return { code: 'unsupported_media_type', message: `Content-Type ${JSON.stringify(req.headers['content-type'] ?? '')} is not accepted here: ${accepted}` };
    }
    case 'FST_REQ_FILE_TOO_LARGE':
      return { code: 'too_large', message: `the file is larger than ${MAX_CSV_MB} MB: split it and add the rest with POST /v1/campaigns/{id}/contacts` };
    case 'FST_FILES_LIMIT':
      return { code: 'too_large', message: 'send one file per request' };
    case 'FST_FIELDS_LIMIT':
      return { code: 'too_large', message: 'too many form fields: put the settings in one `settings` field as JSON' };
    case 'FST_PARTS_LIMIT':
      return { code: 'too_large', message: 'too many form parts: send the fields and one file' };
    case 'FST_PROTO_VIOLATION':
      return { code: 'invalid_request', message: 'a form field name is not allowed (prototype property)' };
    case 'FST_INVALID_JSON_FIELD_ERROR':
      return { code: 'invalid_request', message: 'a form field sent as application/json is not valid JSON' };
    case 'FST_MP_PREMATURE_CLOSE':
      return { code: 'invalid_request', message: 'the upload ended before the form was complete: send it again' };
    case 'FST_ERR_BAD_URL':
      return { code: 'invalid_request', message: `the URL is malformed: percent-encode special characters (${err.message})` };
    default:
      return undefined;
  }
}

/** Upload limit of CSV contacts, in megabytes (for messages). */
export const MAX_CSV_MB = 20;

function byStatus(status: number): ErrorCode {
  switch (status) {
    case 401:
      return 'unauthorized';
    case 403:
      return 'forbidden';
    case 404:
      return 'not_found';
    case 409:
      return 'conflict';
    case 413:
      return 'too_large';
    case 415:
      return 'unsupported_media_type';
    case 422:
      return 'invalid_contacts';
    default:
      return status >= 500 ? 'internal_error' : 'invalid_request';
  }
}

/** Status and body of the reply for any error thrown while handling `req`. */
export function toErrorReply(err: unknown, req: FastifyRequest): { status: number; body: ErrorBody; log: boolean } {
  if (err instanceof ApiError) return { status: err.statusCode, body: errorBody(err.code, err.message, err.details), log: false };
  if (err instanceof OutboundError) {
    const code = isErrorCode(err.code) ? err.code : byStatus(err.status);
    return { status: err.status, body: errorBody(code, err.message), log: err.status >= 500 };
  }
  if (isFastifyError(err)) {
    if (Array.isArray(err.validation)) {
      const where = PARTS[err.validationContext ?? 'body'] ?? 'body';
      const issues = err.validation.map((v) => ({
        path: (v.instancePath ?? '').split('/').filter((p) => p !== '').join('.'),
        message: v.message ?? 'invalid',
      }));
      return { status: 400, body: errorBody('invalid_request', issuesMessage(where, issues), issues), log: false };
    }
    const known = frameworkError(err, req);
    if (known !== undefined) return { status: ERROR_CODES[known.code].status, body: errorBody(known.code, known.message), log: false };
    const status = err.statusCode ?? 500;
    if (status >= 400 && status < 500) return { status, body: errorBody(byStatus(status), err.message), log: false };
  }
  return { status: 500, body: errorBody('internal_error', 'internal error: see the server log'), log: true };
}

/** Root error handler: every error reply in the common shape. */
export function errorHandler(err: unknown, req: FastifyRequest, reply: FastifyReply): FastifyReply {
  const { status, body, log } = toErrorReply(err, req);
  if (log) req.log.error({ err }, 'request failed');
  // A body still arriving (a refused upload) is not read further: the client must reconnect.
  if (req.raw.complete === false) void reply.header('connection', 'close');
  return reply.code(status).send(body);
}

/** Root not-found handler. */
export function notFoundHandler(req: FastifyRequest, reply: FastifyReply): FastifyReply {
  const path = req.url.split('?')[0] ?? req.url;
  const hint = path.startsWith('/v1/') ? ': the routes are listed at /docs' : '';
  return reply.code(404).send(errorBody('not_found', `no route ${req.method} ${path}${hint}`));
}

/**
 * Response schemas of the error statuses a route can answer, for its
 * `schema.response` (documented in the OpenAPI document and enforced on send).
 */
export function errorResponses<S extends number>(...statuses: S[]): Record<S, typeof errorBodySchema> {
  const out = {} as Record<S, typeof errorBodySchema>;
  for (const s of statuses) out[s] = errorBodySchema;
  return out;
}
