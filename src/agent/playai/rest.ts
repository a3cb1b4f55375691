/**
 * PlayAI REST client (the part the bridge needs): a conversation's transcript,
 * and an agent's settings and stats (`npm run agents`, the boot check, the
 * agent's voice for prompts).
 *
 * `GET {baseUrl}/api/v1/agents/{agentId}/conversations/{conversationId}/transcript?pageSize=&startAfter=`
 * with `Authorization: Bearer <apiKey>` and `X-USER-ID: <userId>`. The answer
 * is a JSON array of `{ id, role, content, timestamp }`, paginated with the
 * response headers `X-Page-Size`, `X-Start-After`, `X-Next-Start-After` (the
 * last id of this page, passed back as `startAfter`) and `X-Total-Count`.
 *
 * Pages are followed until one of: `X-Next-Start-After` is absent or empty, a
 * page is shorter than the page size (the server's `X-Page-Size` when it sends
 * one, since it may cap the requested size), `X-Total-Count` items have been
 * read, the cursor stops advancing, or `maxPages` pages have been read (then
 * the result is marked truncated).
 *
 * Items are checked with zod: an invalid one is skipped and counted, never
 * fatal. Errors are {@link PlayAiRestError}s whose messages carry the HTTP
 * status and path but never the API key (the key is also scrubbed from any
 * echoed response text).
 */
import type { Logger } from 'pino';
import { z } from 'zod';

export const DEFAULT_PLAYAI_API_URL = 'https://api.play.ai';

export interface TranscriptTurn {
  id: string;
  /** 'user' | 'assistant' in practice; other strings are kept as they come. */
  role: 'user' | 'assistant' | (string & {});
  content: string;
  /** As sent by PlayAI (ISO 8601); a numeric epoch-ms timestamp is converted to ISO. */
  timestamp: string;
}

export interface FetchTranscriptOptions {
  /** Default {@link DEFAULT_PLAYAI_API_URL}. */
  baseUrl?: string;
  apiKey: string;
  userId: string;
  agentId: string;
  conversationId: string;
  /** Requested page size (default 50, clamped to 1..1000). */
  pageSize?: number;
  fetchImpl?: typeof fetch;
  /** Per-request timeout, body included (default 10 s). */
  timeoutMs?: number;
  /** Most pages read (default 100); past it the result is truncated. */
  maxPages?: number;
  /** Where skipped items and truncation are reported (warn). */
  log?: Logger;
}

export interface TranscriptResult {
  turns: TranscriptTurn[];
  /** Items skipped because they did not match the schema. */
  invalid: number;
  /** Items skipped because their id had already been seen (overlapping pages). */
  duplicates: number;
  pages: number;
  /** `X-Total-Count` of the last page that sent one. */
  totalCount: number | undefined;
  /** True when `maxPages` stopped the walk while the server announced more. */
  truncated: boolean;
}

export type PlayAiRestErrorKind = 'http' | 'network' | 'timeout' | 'invalid-response' | 'invalid-argument';

export class PlayAiRestError extends Error {
  override readonly name = 'PlayAiRestError';
  constructor(
    message: string,
    readonly kind: PlayAiRestErrorKind,
    /** HTTP status, for `kind: 'http'`. */
    readonly status?: number,
  ) {
    super(message);
  }
}

const TurnSchema = z.object({
  id: z.union([z.string().min(1), z.number().int().transform((n) => String(n))]),
  role: z.string().min(1),
  content: z.string(),
  timestamp: z.union([
    z.string().min(1),
    z
      .number()
      .finite()
      .refine((n) => Math.abs(n) <= 8.64e15)
      .transform((n) => new Date(n).toISOString()),
  ]),
});

/** The transcript's turns, in server order. See {@link fetchConversationTranscriptPages} for the counts. */
export async function fetchConversationTranscript(opts: FetchTranscriptOptions): Promise<TranscriptTurn[]> {
  return (await fetchConversationTranscriptPages(opts)).turns;
}

/** Same walk as {@link fetchConversationTranscript}, with what was skipped and how many pages it took. */
export async function fetchConversationTranscriptPages(opts: FetchTranscriptOptions): Promise<TranscriptResult> {
  const { apiKey, userId, agentId, conversationId } = opts;
  for (const [name, value] of [
    ['apiKey', apiKey],
    ['userId', userId],
    ['agentId', agentId],
    ['conversationId', conversationId],
  ] as const) {
    if (typeof value !== 'string' || value.length === 0) {
      throw new PlayAiRestError(`PlayAI REST: ${name} is required`, 'invalid-argument');
    }
  }
  // Checked here so that fetch's own error (which quotes the value) never sees a bad key.
  if (!isHeaderSafe(apiKey)) throw new PlayAiRestError('PlayAI REST: apiKey contains characters not allowed in an HTTP header', 'invalid-argument');
  if (!isHeaderSafe(userId)) throw new PlayAiRestError('PlayAI REST: userId contains characters not allowed in an HTTP header', 'invalid-argument');

  const baseUrl = (opts.baseUrl ?? DEFAULT_PLAYAI_API_URL).replace(/\/+$/, '');
  const pageSize = clampInt(opts.pageSize ?? 50, 1, 1000);
  const maxPages = clampInt(opts.maxPages ?? 100, 1, 100_000);
  const timeoutMs = Math.max(1, opts.timeoutMs ?? 10_000);
  const fetchImpl = opts.fetchImpl ?? fetch;
  const path = `/api/v1/agents/${encodeURIComponent(agentId)}/conversations/${encodeURIComponent(conversationId)}/transcript`;
  const headers = {
    authorization: `Bearer ${apiKey}`,
    'x-user-id': userId,
    accept: 'application/json',
  };
  const scrub = (s: string): string => s.split(apiKey).join('[redacted]');

  const result: TranscriptResult = { turns: [], invalid: 0, duplicates: 0, pages: 0, totalCount: undefined, truncated: false };
  const seen = new Set<string>();
  let read = 0;
  let startAfter: string | undefined;

  for (;;) {
    const query = new URLSearchParams({ pageSize: String(pageSize) });
    if (startAfter !== undefined) query.set('startAfter', startAfter);
    const label = `GET ${path}?${query.toString()}`;
    const page = await getJson(fetchImpl, `${baseUrl}${path}?${query.toString()}`, headers, timeoutMs, label, scrub);
    result.pages++;

    if (!Array.isArray(page.body)) {
      throw new PlayAiRestError(`PlayAI REST: ${label}: expected a JSON array, got ${describe(page.body)}`, 'invalid-response');
    }
    read += page.body.length;
    for (const item of page.body) {
      const parsed = TurnSchema.safeParse(item);
      if (!parsed.success) {
        result.invalid++;
        continue;
      }
      if (seen.has(parsed.data.id)) {
        result.duplicates++;
        continue;
      }
      seen.add(parsed.data.id);
      result.turns.push(parsed.data);
    }

    const total = headerInt(page.headers, 'x-total-count');
    if (total !== undefined) result.totalCount = total;
    const effectivePageSize = headerInt(page.headers, 'x-page-size') ?? pageSize;
    const next = page.headers.get('x-next-start-after') ?? '';

    if (next === '' || next === startAfter) break;
    if (page.body.length === 0 || page.body.length < effectivePageSize) break;
    if (total !== undefined && read >= total) break;
    if (result.pages >= maxPages) {
      result.truncated = true;
      break;
    }
    startAfter = next;
  }

  if (opts.log && (result.invalid > 0 || result.duplicates > 0 || result.truncated)) {
    opts.log.warn(
      {
        agentId,
        conversationId,
        invalid: result.invalid,
        duplicates: result.duplicates,
        pages: result.pages,
        truncated: result.truncated,
      },
      'PlayAI transcript: some items were skipped or pages left unread',
    );
  }
  return result;
}

// ---------------------------------------------------------------------------
// Agents and their stats (reference §4): `GET /api/v1/agents/{agentId}`, `GET /api/v1/agent-stats/{agentId}`.

export interface PlayAiRestAccess {
  /** Default {@link DEFAULT_PLAYAI_API_URL}. */
  baseUrl?: string;
  apiKey: string;
  userId: string;
  fetchImpl?: typeof fetch;
  /** Per-request timeout (default 10 s). */
  timeoutMs?: number;
}

const nullableString = z.string().nullish().transform((v) => v ?? undefined);

/** The fields of an agent operators look at; unknown fields are kept out, missing optional ones are undefined. */
const AgentSchema = z.object({
  id: z.union([z.string().min(1), z.number().int().transform((n) => String(n))]),
  displayName: nullableString,
  description: nullableString,
  voice: nullableString,
  voiceSpeed: z.number().nullish().transform((v) => v ?? undefined),
  ttsModel: nullableString,
  greeting: nullableString,
  prompt: nullableString,
  visibility: nullableString,
  language: nullableString,
  phoneNumbers: z.array(z.object({ phoneNumber: z.union([z.number(), z.string()]).transform(String) }).loose()).nullish().transform((v) => (v ?? []).map((p) => p.phoneNumber)),
  actions: z.array(z.string()).nullish().transform((v) => v ?? []),
});
export type PlayAiAgent = z.infer<typeof AgentSchema>;

const StatsSchema = z.object({
  id: z.union([z.string(), z.number().transform(String)]).optional(),
  numberOfConversations: z.number().nonnegative(),
  numberOfPhoneConversations: z.number().nonnegative().optional(),
  numberOfSecondsTalked: z.number().nonnegative(),
});
export type PlayAiAgentStats = z.infer<typeof StatsSchema>;

async function getOne<T>(access: PlayAiRestAccess, path: string, schema: z.ZodType<T>, what: string): Promise<T> {
  const { apiKey, userId } = access;
  if (apiKey === '' || userId === '') throw new PlayAiRestError('PlayAI REST: apiKey and userId are required', 'invalid-argument');
  if (!isHeaderSafe(apiKey)) throw new PlayAiRestError('PlayAI REST: apiKey contains characters not allowed in an HTTP header', 'invalid-argument');
  if (!isHeaderSafe(userId)) throw new PlayAiRestError('PlayAI REST: userId contains characters not allowed in an HTTP header', 'invalid-argument');
  const baseUrl = (access.baseUrl ?? DEFAULT_PLAYAI_API_URL).replace(/\/+$/, '');
  const headers = { authorization: `Bearer ${apiKey}`, 'x-user-id': userId, accept: 'application/json' };
  const scrub = (s: string): string => s.split(apiKey).join('[redacted]');
  const page = await getJson(access.fetchImpl ?? fetch, `${baseUrl}${path}`, headers, Math.max(1, access.timeoutMs ?? 10_000), `GET ${path}`, scrub);
  const parsed = schema.safeParse(page.body);
  if (!parsed.success) {
    const first = parsed.error.issues[0];
    throw new PlayAiRestError(`PlayAI REST: GET ${path}: not ${what} (${first === undefined ? 'invalid' : `${first.path.join('.') || 'body'}: ${first.message}`})`, 'invalid-response');
  }
  return parsed.data;
}

/** An agent's settings (`GET /api/v1/agents/{agentId}`); a 404 is a {@link PlayAiRestError} with status 404. */
export function fetchAgent(access: PlayAiRestAccess, agentId: string): Promise<PlayAiAgent> {
  return getOne(access, `/api/v1/agents/${encodeURIComponent(agentId)}`, AgentSchema, 'an agent');
}

/** An agent's totals (`GET /api/v1/agent-stats/{agentId}`). */
export function fetchAgentStats(access: PlayAiRestAccess, agentId: string): Promise<PlayAiAgentStats> {
  return getOne(access, `/api/v1/agent-stats/${encodeURIComponent(agentId)}`, StatsSchema, 'agent stats');
}

// ---------------------------------------------------------------------------

async function getJson(
  fetchImpl: typeof fetch,
  url: string,
  headers: Record<string, string>,
  timeoutMs: number,
  label: string,
  scrub: (s: string) => string,
): Promise<{ body: unknown; headers: Headers }> {
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), timeoutMs);
  try {
    let res: Response;
    try {
      res = await fetchImpl(url, { method: 'GET', headers, signal: ac.signal });
    } catch (err) {
      if (ac.signal.aborted) throw new PlayAiRestError(`PlayAI REST: ${label}: timed out after ${timeoutMs} ms`, 'timeout');
      throw new PlayAiRestError(scrub(`PlayAI REST: ${label}: request failed: ${describeError(err)}`), 'network');
    }
    let text: string;
    try {
      text = await res.text();
    } catch (err) {
      if (ac.signal.aborted) throw new PlayAiRestError(`PlayAI REST: ${label}: timed out after ${timeoutMs} ms`, 'timeout');
      throw new PlayAiRestError(scrub(`PlayAI REST: ${label}: reading the response failed: ${describeError(err)}`), 'network');
    }
    if (res.status < 200 || res.status >= 300) {
      const snippet = text.trim().slice(0, 200);
      const statusText = res.statusText ? ` ${res.statusText}` : '';
      throw new PlayAiRestError(
        scrub(`PlayAI REST: ${label}: HTTP ${res.status}${statusText}${snippet ? `: ${snippet}` : ''}`),
        'http',
        res.status,
      );
    }
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      throw new PlayAiRestError(`PlayAI REST: ${label}: response is not JSON`, 'invalid-response');
    }
    return { body, headers: res.headers };
  } finally {
    clearTimeout(timer);
  }
}

function headerInt(headers: Headers, name: string): number | undefined {
  const raw = headers.get(name);
  if (raw === null || !/^\s*\d{1,15}\s*$/.test(raw)) return undefined;
  return Number(raw);
}

function clampInt(n: number, min: number, max: number): number {
  if (!Number.isFinite(n)) return min;
  return Math.min(max, Math.max(min, Math.floor(n)));
}

function isHeaderSafe(v: string): boolean {
  // Visible ASCII, space and tab; no CR/LF/NUL or non-Latin-1 characters.
  return /^[\t\x20-\x7e]*$/.test(v) && v.trim() === v;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  return typeof v === 'object' ? 'an object' : typeof v;
}

function describeError(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = (err as { cause?: unknown }).cause;
  const causeMsg = cause instanceof Error ? cause.message : '';
  return causeMsg && !err.message.includes(causeMsg) ? `${err.message}: ${causeMsg}` : err.message;
}
