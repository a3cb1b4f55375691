/**
 * Reading the Playline /v1 API's answers in the command-line tools: error bodies in
 * both shapes the server has used, campaigns with their progress, and import reports.
 */
import { z } from 'zod';

/** One API error, whatever shape the server sent it in. */
export interface ApiFailure {
  status: number;
  /** Machine-readable code (`invalid_contacts`, `not_found`…) when the body had one. */
  code: string | undefined;
  message: string;
  details: unknown;
}

/** `{"error": {"code", "message", "details"?}}`: one shape for every error. */
const nestedError = z.object({ error: z.object({ code: z.string(), message: z.string(), details: z.unknown().optional() }) });
/** `{"error": "code", "message", "details"?}`: the earlier shape. */
const flatError = z.object({ error: z.string(), message: z.string().optional(), details: z.unknown().optional() });

/**
 * The error in an API answer: `body` is the parsed JSON (or undefined when it was not
 * JSON), `text` the raw body for a message when nothing better is there.
 */
export function parseApiError(status: number, body: unknown, text = ''): ApiFailure {
  const nested = nestedError.safeParse(body);
  if (nested.success) return { status, code: nested.data.error.code, message: nested.data.error.message, details: nested.data.error.details };
  const flat = flatError.safeParse(body);
  if (flat.success) return { status, code: flat.data.error, message: flat.data.message ?? flat.data.error, details: flat.data.details };
  const snippet = text.trim().replace(/\s+/g, ' ').slice(0, 200);
  return { status, code: undefined, message: snippet === '' ? `HTTP ${status} with no error message` : snippet, details: undefined };
}

/** `HTTP 422 invalid_contacts: message`. */
export function describeFailure(f: ApiFailure): string {
  return `HTTP ${f.status}${f.code !== undefined ? ` ${f.code}` : ''}: ${f.message}`;
}

export const importReportSchema = z.object({
  rows: z.number(),
  added: z.number(),
  errors: z.array(z.object({ line: z.number(), column: z.string().nullish(), message: z.string(), value: z.string().nullish() })),
  duplicates: z.array(z.object({ line: z.number(), firstLine: z.number(), phone: z.string().nullish() })).default([]),
});
export type ImportReport = z.infer<typeof importReportSchema>;

export const campaignSchema = z.object({
  id: z.string(),
  name: z.string().optional(),
  status: z.string(),
  pauseReason: z.string().nullish(),
  lastError: z.string().nullish(),
  progress: z.object({
    counts: z.object({
      total: z.number(),
      byState: z.record(z.string(), z.number()),
      byOutcome: z.record(z.string(), z.number()),
      attempts: z.number(),
    }),
    activeCalls: z.number().default(0),
    dialsLastMinute: z.number().default(0),
    etaSeconds: z.number().nullable().default(null),
  }),
});
export type Campaign = z.infer<typeof campaignSchema>;

export const createCampaignAnswer = z.object({ campaign: campaignSchema, import: importReportSchema.nullish() });

/** Lines describing an import report's bad rows (each followed by `rejectedNote`) and merged duplicates, at most `cap` of them. */
export function importReportLines(report: ImportReport, cap = 20, rejectedNote = ''): string[] {
  const all = [
    ...report.errors.map((e) => ({
      line: e.line,
      text: `  line ${e.line}${e.column ? ` (${e.column})` : ''}: ${e.message}${e.value ? ` [${JSON.stringify(e.value)}]` : ''}${rejectedNote}`,
    })),
    ...report.duplicates.map((d) => ({ line: d.line, text: `  line ${d.line}: same number as line ${d.firstLine}, merged` })),
  ].sort((a, b) => a.line - b.line);
  const shown = all.slice(0, cap).map((x) => x.text);
  if (all.length > cap) shown.push(`  …and ${all.length - cap} more`);
  return shown;
}

export type ApiResult<T> = { ok: true; status: number; data: T } | { ok: false; failure: ApiFailure };

/** Reads an answer: a 2xx body checked against `schema`, or the error it carries. */
export async function readAnswer<T>(res: Response, schema: z.ZodType<T>): Promise<ApiResult<T>> {
  const text = await res.text();
  let body: unknown;
  try {
    body = text === '' ? undefined : JSON.parse(text);
  } catch {
    body = undefined;
  }
  if (!res.ok) return { ok: false, failure: parseApiError(res.status, body, text) };
  const parsed = schema.safeParse(body);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    return {
      ok: false,
      failure: {
        status: res.status,
        code: 'unexpected_answer',
        message: `the answer is not what this tool expects (${issue ? `${issue.path.join('.') || 'body'}: ${issue.message}` : 'invalid'}); is --url a Playline server of the same version?`,
        details: undefined,
      },
    };
  }
  return { ok: true, status: res.status, data: parsed.data };
}
