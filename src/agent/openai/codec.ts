/**
 * OpenAI Realtime API, GA interface, over WebSocket: the pure codec.
 *
 * Encoders for every client event the adapter sends, a decoder that turns one
 * server frame into a closed union (never throws, checks every field it uses,
 * reports unknown types as `unknown`), and the error classification of the
 * reference (`/work/shared/reference/agent-providers.md` §1.11) as pure
 * functions. Nothing outside `src/agent/openai/` knows this wire format.
 *
 * GA, not beta: no `OpenAI-Beta` header, `session.type:"realtime"`, nested
 * `audio.input` / `audio.output` settings, `response.output_audio.*` events.
 */
import { isBase64 } from '../../audio/base64.js';
import { parseJsonObject } from '../../util/json.js';
import type { AgentBadFrameKind, AgentErrorKind, AgentTool, ConversationTurn } from '../port.js';

export const DEFAULT_OPENAI_URL = 'wss://api.openai.com/v1/realtime';
/** The voice when the agent names none (one of the GA built-in voices). */
export const DEFAULT_OPENAI_VOICE = 'marin';
/** Without `audio.input.transcription` the service sends no user transcript at all. */
export const OPENAI_TRANSCRIPTION_MODEL = 'gpt-4o-mini-transcribe';
/** μ-law 8 kHz, the Twilio format, both ways: no transcoding anywhere. */
export const PCMU = 'audio/pcmu';

/** The socket URL for one model (`?model=` is the one query parameter a model session takes). */
export function realtimeUrl(base: string, model: string): string {
  return `${base}${base.includes('?') ? '&' : '?'}model=${encodeURIComponent(model)}`;
}

// ---------------------------------------------------------------- client events

/** What `session.update` is built from (a subset of the port's `AgentRequest`). */
export interface OpenAiSessionSettings {
  instructions?: string;
  voice?: string;
  /** BCP 47; the transcription model takes the primary language subtag (`en-US` → `en`). */
  language?: string;
  tools: AgentTool[];
}

/** The transcription language for a BCP 47 tag, or undefined when it has no usable primary subtag. */
export function transcriptionLanguage(tag: string | undefined): string | undefined {
  const primary = tag?.split(/[-_]/, 1)[0]?.toLowerCase();
  return primary !== undefined && /^[a-z]{2,3}$/.test(primary) ? primary : undefined;
}

/** The one `session.update` sent, right after `session.created`. */
export function buildSessionUpdate(s: OpenAiSessionSettings): Record<string, unknown> {
  const language = transcriptionLanguage(s.language);
  const session: Record<string, unknown> = {
    type: 'realtime',
    output_modalities: ['audio'],
    audio: {
      input: {
        format: { type: PCMU },
        transcription: language === undefined ? { model: OPENAI_TRANSCRIPTION_MODEL } : { model: OPENAI_TRANSCRIPTION_MODEL, language },
        turn_detection: { type: 'server_vad', create_response: true, interrupt_response: true },
      },
      output: { format: { type: PCMU }, voice: s.voice ?? DEFAULT_OPENAI_VOICE },
    },
    tools: s.tools.map((t) => ({ type: 'function', name: t.name, description: t.description, parameters: t.parameters })),
    tool_choice: 'auto',
  };
  if (s.instructions !== undefined) session.instructions = s.instructions;
  return { type: 'session.update', session };
}

export function encodeSessionUpdate(s: OpenAiSessionSettings): string {
  return JSON.stringify(buildSessionUpdate(s));
}

/** `input_audio_buffer.append` is `AUDIO_APPEND_HEAD + base64 + AUDIO_APPEND_TAIL` (the leg builds it as bytes). */
export const AUDIO_APPEND_HEAD = '{"type":"input_audio_buffer.append","audio":"';
export const AUDIO_APPEND_TAIL = '"}';
/** `b64` must be validated base64 (it needs no JSON escaping). */
export function encodeAudioAppend(b64: string): string {
  return AUDIO_APPEND_HEAD + b64 + AUDIO_APPEND_TAIL;
}

export const RESPONSE_CREATE = '{"type":"response.create"}';

/**
 * The greeting: GA has no first-message field, so the first response is asked
 * for with per-response instructions (they replace the session's for that
 * response only).
 */
export function encodeGreeting(greeting: string): string {
  return JSON.stringify({
    type: 'response.create',
    response: { instructions: `Greet the caller by saying exactly the following, and nothing else: ${JSON.stringify(greeting)}` },
  });
}

function messageItem(role: 'user' | 'assistant' | 'system', text: string, eventId?: string): string {
  // Assistant items take `output_text` in GA (beta said `text`); audio items cannot be created.
  const part = role === 'assistant' ? 'output_text' : 'input_text';
  const item = { type: 'message', role, content: [{ type: part, text }] };
  return JSON.stringify(eventId === undefined ? { type: 'conversation.item.create', item } : { type: 'conversation.item.create', event_id: eventId, item });
}

/** One earlier turn replayed into a new session (resume); `eventId` lets an `error` name the item it refuses. */
export function encodeHistoryItem(turn: ConversationTurn, eventId?: string): string {
  return messageItem(turn.role === 'agent' ? 'assistant' : 'user', turn.text, eventId);
}

/** Text as the caller's words (a `response.create` must follow for the agent to answer). */
export function encodeUserText(text: string): string {
  return messageItem('user', text);
}

/** Text as context only: a system item, no response. */
export function encodeContextText(text: string): string {
  return messageItem('system', text);
}

/** The output of a tool call; a failed call is told to the model as `{"error": …}`. */
export function encodeFunctionCallOutput(callId: string, result: string, isError: boolean): string {
  const output = isError ? JSON.stringify({ error: result }) : result;
  return JSON.stringify({ type: 'conversation.item.create', item: { type: 'function_call_output', call_id: callId, output } });
}

/** `audio_end_ms` must be an integer no longer than the item's audio; the caller ensures both. */
export function encodeTruncate(itemId: string, audioEndMs: number, eventId: string): string {
  return JSON.stringify({ type: 'conversation.item.truncate', event_id: eventId, item_id: itemId, content_index: 0, audio_end_ms: audioEndMs });
}

/** Tool arguments as an object: `{}` for none, unparsable JSON or a non-object. */
export function parseToolArguments(text: string): Record<string, unknown> {
  const o = parseJsonObject(text);
  return typeof o === 'string' ? {} : o;
}

// ---------------------------------------------------------------- server events

/** The `error` object of an `error` event or of a failed `response.done`. */
export interface OpenAiErrorBody {
  type: string | undefined;
  code: string | undefined;
  message: string;
  param: string | undefined;
  /** The client event it answers, when the client set `event_id`. */
  eventId: string | undefined;
}

export type OpenAiServerMessage =
  | { type: 'session.created'; sessionId: string | undefined }
  | { type: 'session.updated'; inputFormat: string | undefined; outputFormat: string | undefined }
  | { type: 'response.created'; responseId: string }
  | { type: 'response.output_audio.delta'; responseId: string; itemId: string; delta: string }
  | { type: 'response.output_audio_transcript.done'; responseId: string | undefined; transcript: string }
  | { type: 'response.done'; responseId: string | undefined; status: string | undefined; reason: string | undefined; error: OpenAiErrorBody | undefined }
  | { type: 'input_audio_buffer.speech_started' }
  | { type: 'conversation.item.input_audio_transcription.completed'; transcript: string }
  /**
   * The end of a tool call's arguments. `name` (and even `call_id`) may be missing: several SDK
   * typings and the OpenAPI spec leave `name` out, so the leg completes it from the item it saw
   * in `response.output_item.added`.
   */
  | { type: 'response.function_call_arguments.done'; callId: string | undefined; itemId: string | undefined; name: string | undefined; arguments: string }
  /** A `function_call` output item (other item types are `ignored`). */
  | { type: 'response.output_item.added' | 'response.output_item.done'; call: FunctionCallItem }
  | { type: 'error'; error: OpenAiErrorBody }
  /** The account's limits, sent at each response start: `exhausted` names the first one with nothing remaining. */
  | { type: 'rate_limits.updated'; exhausted: string | undefined }
  /** A documented event the adapter has no use for. */
  | { type: 'ignored'; name: string }
  /** A type nobody documented (or a beta-only one). */
  | { type: 'unknown'; name: string };

/** The fields of a `function_call` item the leg uses; any may be missing. */
export interface FunctionCallItem {
  itemId: string | undefined;
  callId: string | undefined;
  name: string | undefined;
  /** `in_progress`, `completed` or `incomplete`. */
  status: string | undefined;
  arguments: string | undefined;
}

export interface OpenAiDecodeError {
  type: undefined;
  kind: AgentBadFrameKind;
  name?: string;
}

/** Documented GA server events the adapter deliberately ignores. */
const IGNORED = new Set([
  'conversation.created',
  'conversation.item.added',
  'conversation.item.done',
  'conversation.item.created',
  'conversation.item.retrieved',
  'conversation.item.deleted',
  'conversation.item.truncated',
  'conversation.item.input_audio_transcription.delta',
  'conversation.item.input_audio_transcription.segment',
  'conversation.item.input_audio_transcription.failed',
  'input_audio_buffer.committed',
  'input_audio_buffer.cleared',
  'input_audio_buffer.speech_stopped',
  'input_audio_buffer.timeout_triggered',
  'response.content_part.added',
  'response.content_part.done',
  'response.output_audio.done',
  'response.output_audio_transcript.delta',
  'response.output_text.delta',
  'response.output_text.done',
  'response.function_call_arguments.delta',
]);

const bad = (kind: AgentBadFrameKind, name?: string): OpenAiDecodeError =>
  name === undefined ? { type: undefined, kind } : { type: undefined, kind, name: name.slice(0, 60) };
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
const obj = (v: unknown): Record<string, unknown> | undefined =>
  typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
const id = (v: unknown): string | undefined => (typeof v === 'string' && v.length > 0 && v.length <= 256 ? v : undefined);

function errorBody(v: unknown): OpenAiErrorBody | undefined {
  const e = obj(v);
  if (e === undefined) return undefined;
  return { type: str(e.type), code: str(e.code), message: (str(e.message) ?? '').slice(0, 500), param: str(e.param), eventId: str(e.event_id) };
}

function formatType(v: unknown): string | undefined {
  return str(obj(obj(v)?.format)?.type);
}

/** Decodes one text frame from the service. Never throws. */
export function decodeOpenAiMessage(text: string): OpenAiServerMessage | OpenAiDecodeError {
  const o = parseJsonObject(text);
  if (typeof o === 'string') return bad(o);
  const type = o.type;
  if (typeof type !== 'string') return bad('invalid_fields');
  switch (type) {
    case 'response.output_audio.delta': {
      const responseId = id(o.response_id);
      const itemId = id(o.item_id);
      const delta = o.delta;
      if (responseId === undefined || itemId === undefined || typeof delta !== 'string') return bad('invalid_fields', type);
      if (!isBase64(delta)) return bad('bad_audio', type);
      return { type, responseId, itemId, delta };
    }
    case 'session.created':
      return { type, sessionId: id(obj(o.session)?.id) };
    case 'session.updated': {
      const audio = obj(obj(o.session)?.audio);
      return { type, inputFormat: formatType(audio?.input), outputFormat: formatType(audio?.output) };
    }
    case 'response.created': {
      const responseId = id(obj(o.response)?.id);
      return responseId === undefined ? bad('invalid_fields', type) : { type, responseId };
    }
    case 'response.output_audio_transcript.done':
    case 'conversation.item.input_audio_transcription.completed': {
      const transcript = str(o.transcript);
      if (transcript === undefined) return bad('invalid_fields', type);
      return type === 'response.output_audio_transcript.done' ? { type, responseId: id(o.response_id), transcript } : { type, transcript };
    }
    case 'response.done': {
      const r = obj(o.response);
      if (r === undefined) return bad('invalid_fields', type);
      const details = obj(r.status_details);
      return { type, responseId: id(r.id), status: str(r.status), reason: str(details?.reason), error: errorBody(details?.error) };
    }
    case 'input_audio_buffer.speech_started':
      return { type };
    case 'response.function_call_arguments.done': {
      const callId = id(o.call_id);
      const itemId = id(o.item_id);
      if (callId === undefined && itemId === undefined) return bad('invalid_fields', type);
      return { type, callId, itemId, name: id(o.name), arguments: str(o.arguments) ?? '' };
    }
    case 'response.output_item.added':
    case 'response.output_item.done': {
      const item = obj(o.item);
      if (item === undefined) return bad('invalid_fields', type);
      if (item.type !== 'function_call') return { type: 'ignored', name: type };
      const call: FunctionCallItem = { itemId: id(item.id), callId: id(item.call_id), name: id(item.name), status: str(item.status), arguments: str(item.arguments) };
      return call.itemId === undefined && call.callId === undefined ? bad('invalid_fields', type) : { type, call };
    }
    case 'rate_limits.updated': {
      const limits = o.rate_limits;
      if (!Array.isArray(limits)) return bad('invalid_fields', type);
      let exhausted: string | undefined;
      for (const l of limits) {
        const limit = obj(l);
        if (limit !== undefined && typeof limit.remaining === 'number' && limit.remaining <= 0) {
          exhausted = id(limit.name) ?? 'unnamed';
          break;
        }
      }
      return { type, exhausted };
    }
    case 'error': {
      const error = errorBody(o.error);
      return error === undefined ? bad('invalid_fields', type) : { type, error };
    }
    default:
      return IGNORED.has(type) ? { type: 'ignored', name: type } : { type: 'unknown', name: type.slice(0, 60) };
  }
}

// ---------------------------------------------------------------- errors (reference §1.11)

/** How one error is handled, with a bounded `code` label. */
export interface OpenAiErrorClass {
  kind: AgentErrorKind;
  code: string;
  legDone: boolean;
}

const AUTH_CODES = new Set(['invalid_api_key']);
/** Account problems a reconnect cannot fix. */
const QUOTA_CODES = new Set(['insufficient_quota', 'billing_hard_limit_reached', 'account_deactivated']);
/** The Realtime rate/concurrency codes are (unverified); `rate_limit_exceeded` is the API-wide one. */
const CAPACITY_CODES = new Set(['rate_limit_exceeded', 'concurrent_sessions_exceeded', 'session_limit_reached']);
/** Our request was wrong: a bug on our side, not worth a reconnect. */
const OUR_BUG_CODES = new Set(['beta_api_shape_disabled', 'missing_required_parameter', 'unknown_parameter']);
/** Harmless races the call survives. */
const IGNORE_CODES = new Set(['response_cancel_not_active', 'conversation_already_has_active_response']);
/** Other documented codes kept as their own label. */
const OTHER_LABELS = new Set(['invalid_value', 'invalid_type', 'server_error']);

/** The label for a code: documented codes as themselves, anything else `other`. */
export function openAiCodeLabel(code: string | undefined): string {
  if (code === undefined) return 'other';
  return AUTH_CODES.has(code) || QUOTA_CODES.has(code) || CAPACITY_CODES.has(code) || OUR_BUG_CODES.has(code) || IGNORE_CODES.has(code) || OTHER_LABELS.has(code) ? code : 'other';
}

/** A truncate the service refused (float or too long): the call goes on. */
export function isTruncateError(e: OpenAiErrorBody, truncateEventIds: ReadonlySet<string>): boolean {
  return (
    (e.eventId !== undefined && truncateEventIds.has(e.eventId)) ||
    (e.param !== undefined && e.param.includes('audio_end_ms')) ||
    /already shorter than/i.test(e.message)
  );
}

/**
 * Classifies an `error` event (or the error of a failed response).
 * `ready`: the session config was confirmed; before that, any error but a
 * harmless race means the session cannot start, so the leg is done.
 * `about`: the client event the error answers, when it is one of ours that the
 * call survives without: a truncate ({@link isTruncateError}) or a history item
 * replayed on resume (only account-wide errors end the leg then).
 */
export function classifyOpenAiError(e: OpenAiErrorBody, ready: boolean, about?: 'truncate' | 'history'): OpenAiErrorClass {
  const code = e.code;
  if (code !== undefined && AUTH_CODES.has(code)) return { kind: 'auth', code, legDone: true };
  if (code !== undefined && QUOTA_CODES.has(code)) return { kind: 'fatal', code, legDone: true };
  if ((code !== undefined && CAPACITY_CODES.has(code)) || e.type === 'rate_limit_error') {
    return { kind: 'capacity', code: code !== undefined && CAPACITY_CODES.has(code) ? code : 'rate_limit_exceeded', legDone: true };
  }
  if (about === 'history') return { kind: 'transient', code: 'history_rejected', legDone: false };
  if (code !== undefined && OUR_BUG_CODES.has(code)) return { kind: 'fatal', code, legDone: true };
  if (/^unknown parameter/i.test(e.message)) return { kind: 'fatal', code: 'unknown_parameter', legDone: true };
  if (code !== undefined && IGNORE_CODES.has(code)) return { kind: 'transient', code, legDone: false };
  if (about === 'truncate') return { kind: 'transient', code: 'truncate_rejected', legDone: false };
  if (e.type === 'server_error' || code === 'server_error') return { kind: 'transient', code: 'server_error', legDone: !ready };
  // Anything else: a request the service refused. Before ready it was our session.update.
  return ready ? { kind: 'transient', code: openAiCodeLabel(code), legDone: false } : { kind: 'fatal', code: openAiCodeLabel(code), legDone: true };
}

/** Codes (and error types) a close reason may name that end the leg, classified as the same error event would be. */
const CLOSE_REASON_CODES = new Set([...AUTH_CODES, ...QUOTA_CODES, ...CAPACITY_CODES, ...OUR_BUG_CODES, 'server_error', 'rate_limit_error']);

/** The first known code named in a close reason (`invalid_request_error.invalid_api_key` → `invalid_api_key`). */
export function closeReasonCode(reason: string): string | undefined {
  for (const word of reason.toLowerCase().match(/[a-z][a-z0-9_]*/g) ?? []) if (CLOSE_REASON_CODES.has(word)) return word;
  return undefined;
}

/**
 * A close by the service: a known error code named in the reason text decides (the same table
 * as `error` events); else the close codes the service documents (1001 after 60 minutes, 3000
 * bad key, 4000 beta client); undefined for the others.
 */
export function classifyOpenAiClose(code: number, reason = ''): OpenAiErrorClass | undefined {
  const named = closeReasonCode(reason);
  if (named !== undefined) {
    const cls = classifyOpenAiError({ type: named, code: named, message: reason, param: undefined, eventId: undefined }, true);
    return { ...cls, legDone: true };
  }
  switch (code) {
    case 1001:
      return { kind: 'transient', code: 'session_max_duration', legDone: true };
    case 3000:
      return { kind: 'auth', code: 'invalid_api_key', legDone: true };
    case 4000:
      return { kind: 'fatal', code: 'beta_api_shape_disabled', legDone: true };
    default:
      return undefined;
  }
}

/**
 * A refused WebSocket upgrade: 401/403 auth, 429 capacity; 400 (a wrong model id or query),
 * 402 (billing) and 404 (a wrong URL path) fatal, as a reconnect would be refused the same
 * way; 5xx and anything else transient.
 */
export function classifyUpgradeStatus(status: number): OpenAiErrorClass {
  if (status === 401 || status === 403) return { kind: 'auth', code: `http_${status}`, legDone: true };
  if (status === 429) return { kind: 'capacity', code: 'http_429', legDone: true };
  if (status === 400 || status === 402 || status === 404) return { kind: 'fatal', code: `http_${status}`, legDone: true };
  return { kind: 'transient', code: status >= 500 && status < 600 ? 'http_5xx' : 'http_other', legDone: true };
}

/** What to check after a refused upgrade, completing "OpenAI refused the connection with HTTP n". */
export function upgradeRefusalHint(status: number): string {
  switch (status) {
    case 401:
    case 403:
      return ': check OPENAI_API_KEY';
    case 429:
      return ': the account is at its rate or session limit';
    case 400:
      return ': check the model id (the agent id or its `model` setting, e.g. gpt-realtime)';
    case 402:
      return ': check the billing of the OpenAI account';
    case 404:
      return ': check OPENAI_REALTIME_URL (default wss://api.openai.com/v1/realtime)';
    default:
      return '';
  }
}
