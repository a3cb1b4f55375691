/**
 * Operator HTTP tools: functions an agent may call during a call, answered by
 * the operator's own API.
 *
 * An agent in AGENTS_FILE declares them (name, description, JSON Schema of the
 * parameters, URL, timeout). When the model calls one, Playline POSTs
 * `{callId, from, to, tool, arguments, metadata}` to the URL, signed like the
 * webhooks (`Playline-Signature`, so receivers verify both with the same code),
 * and hands the JSON answer back to the model. Nothing here throws: a timeout,
 * an error status, an oversized or non-JSON answer becomes a tool error the
 * model is told about, never a dropped call.
 */
import { z } from 'zod';
import { SIGNATURE_HEADER, webhookSignatureHeader } from '../outbound/webhooks.js';

export const TOOL_USER_AGENT = 'Playline-Tools/1';
export const TOOL_HEADER = 'Playline-Tool';

/** Names Playline gives its own tools; an operator tool may not take them. */
export const RESERVED_TOOL_NAMES: ReadonlySet<string> = new Set(['end_call', 'transfer_call']);

/** Largest answer accepted from a tool endpoint (the model's context is the limit, not the network). */
export const DEFAULT_TOOL_MAX_BYTES = 64 * 1024;
export const DEFAULT_TOOL_TIMEOUT_MS = 5000;

/** One operator tool, as declared in AGENTS_FILE (`tools: [...]`). */
export const httpToolSchema = z
  .object({
    name: z
      .string()
      .regex(/^[A-Za-z0-9_-]{1,64}$/, 'a tool name is 1 to 64 letters, digits, _ or - (what every provider accepts)')
      .refine((n) => !RESERVED_TOOL_NAMES.has(n), { message: `end_call and transfer_call are Playline's own tools: pick another name` }),
    description: z.string().min(1, 'describe what the tool does: the model reads it to decide when to call it').max(1024),
    /** JSON Schema of the arguments (an object schema). */
    parameters: z
      .record(z.string(), z.unknown())
      .default({ type: 'object', properties: {} })
      .refine((p) => p.type === undefined || p.type === 'object', { message: 'parameters is a JSON Schema of an object: {"type": "object", "properties": {...}}' }),
    url: z.url({ protocol: /^https?$/, error: 'url must be an http(s) URL the bridge can reach, e.g. https://crm.example.com/playline/lookup' }),
    timeoutMs: z.number().int().min(100).max(30_000).default(DEFAULT_TOOL_TIMEOUT_MS),
  })
  .strict();
export type HttpToolDef = z.output<typeof httpToolSchema>;

/** What the tool endpoint receives. */
export interface HttpToolRequest {
  callId: string;
  from: string;
  to: string;
  tool: string;
  arguments: unknown;
  metadata: Record<string, unknown>;
}

export type HttpToolFailure = 'timeout' | 'http_error' | 'too_large' | 'not_json' | 'network';

export type HttpToolOutcome =
  /** `result` is the endpoint's JSON, as text, for the model. */
  | { ok: true; result: string; status: number; bytes: number; ms: number }
  /** `error` is said to the model as the tool's error. */
  | { ok: false; failure: HttpToolFailure; error: string; status?: number; bytes?: number; ms: number };

export interface HttpToolOptions {
  /** WEBHOOK_SECRET: the request is signed with it (unsigned without one). */
  secret?: string;
  fetchImpl?: typeof fetch;
  maxBytes?: number;
  /** Epoch ms (the signature's timestamp). */
  now?: () => number;
}

/** Runs operator tools for live calls: knows each call's record (id, numbers, metadata). */
export interface ToolRunner {
  run(callSid: string, def: HttpToolDef, args: Record<string, unknown>): Promise<HttpToolOutcome>;
}

/** Calls one operator tool. Never throws. */
export async function callHttpTool(def: HttpToolDef, req: HttpToolRequest, opts: HttpToolOptions = {}): Promise<HttpToolOutcome> {
  const fetchImpl = opts.fetchImpl ?? fetch;
  const maxBytes = opts.maxBytes ?? DEFAULT_TOOL_MAX_BYTES;
  const now = opts.now ?? Date.now;
  const started = performance.now();
  const ms = (): number => Math.round(performance.now() - started);
  const body = JSON.stringify(req);
  const headers: Record<string, string> = { 'content-type': 'application/json', 'user-agent': TOOL_USER_AGENT, [TOOL_HEADER]: def.name };
  if (opts.secret !== undefined) headers[SIGNATURE_HEADER] = webhookSignatureHeader(opts.secret, Math.floor(now() / 1000), body);
  const ac = new AbortController();
  const timer = setTimeout(() => ac.abort(), def.timeoutMs);
  try {
    const res = await fetchImpl(def.url, { method: 'POST', headers, body, signal: ac.signal, redirect: 'manual' });
    const read = await readLimited(res, maxBytes);
    if (read === undefined) {
      return { ok: false, failure: 'too_large', error: `the ${def.name} service answered more than ${maxBytes} bytes; tell the caller the information is not available right now`, status: res.status, ms: ms() };
    }
    if (res.status < 200 || res.status >= 300) {
      return { ok: false, failure: 'http_error', error: `the ${def.name} service failed (HTTP ${res.status}); tell the caller it cannot be done right now`, status: res.status, bytes: read.length, ms: ms() };
    }
    const text = read.toString('utf8');
    if (text.trim() === '') return { ok: true, result: '{}', status: res.status, bytes: 0, ms: ms() };
    try {
      JSON.parse(text);
    } catch {
      return { ok: false, failure: 'not_json', error: `the ${def.name} service answered something that is not JSON; tell the caller it cannot be done right now`, status: res.status, bytes: read.length, ms: ms() };
    }
    return { ok: true, result: text, status: res.status, bytes: read.length, ms: ms() };
  } catch {
    if (ac.signal.aborted) return { ok: false, failure: 'timeout', error: `the ${def.name} service did not answer within ${def.timeoutMs} ms; tell the caller it cannot be done right now`, ms: ms() };
    return { ok: false, failure: 'network', error: `the ${def.name} service could not be reached; tell the caller it cannot be done right now`, ms: ms() };
  } finally {
    clearTimeout(timer);
  }
}

/** The body, or undefined once it grows past `max` bytes (the rest is not read). */
async function readLimited(res: Response, max: number): Promise<Buffer | undefined> {
  const declared = Number(res.headers.get('content-length'));
  if (Number.isFinite(declared) && declared > max) {
    await res.body?.cancel().catch(() => {});
    return undefined;
  }
  if (res.body === null) return Buffer.alloc(0);
  const reader = res.body.getReader();
  const chunks: Buffer[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > max) {
      await reader.cancel().catch(() => {});
      return undefined;
    }
    chunks.push(Buffer.from(value.buffer, value.byteOffset, value.byteLength));
  }
  return Buffer.concat(chunks, size);
}
