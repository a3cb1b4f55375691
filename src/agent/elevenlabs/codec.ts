/**
 * ElevenLabs Agents WebSocket protocol (`/v1/convai/conversation`): pure codec.
 *
 * Decoding never throws and checks every field the bridge uses; documented
 * messages the bridge has no use for come back as `ignored`, undocumented ones
 * as `unknown`. Encoders build every message the bridge sends. The error table
 * (`classifyElevenLabsError`) follows the official AsyncAPI contract
 * (`error_event.error_type` and the close codes 1000/1002/1008/1011).
 */
import type { AgentBadFrameKind, AgentErrorKind, ConversationTurn } from '../port.js';
import { isBase64 } from '../../audio/base64.js';
import { parseJsonObject } from '../../util/json.js';

export type ElevenLabsServerMessage =
  /** A format is undefined when the field is missing or empty (the adapter decides what that means). */
  | { type: 'conversation_initiation_metadata'; conversationId: string; outputFormat: string | undefined; inputFormat: string | undefined }
  | { type: 'audio'; audio: string; eventId: number }
  /** `eventId` undefined: the message named no usable id (the reply being played was interrupted). */
  | { type: 'interruption'; eventId: number | undefined }
  | { type: 'agent_response'; text: string }
  | { type: 'agent_response_correction'; eventId: number | undefined; corrected: string }
  | { type: 'user_transcript'; text: string }
  /** `eventId` as received (an integer or a numeric string), for the pong to echo it exactly. */
  | { type: 'ping'; eventId: number | string; pingMs: number | undefined }
  | { type: 'client_tool_call'; toolName: string; toolCallId: string; parameters: Record<string, unknown> }
  | { type: 'agent_tool_response'; toolName: string; toolType: string | undefined; isError: boolean }
  | { type: 'error'; code: number | undefined; errorType: string | undefined; message: string; reason: string | undefined }
  /** A documented message the bridge has no use for (partial transcripts, VAD scores, internal events…). */
  | { type: 'ignored'; name: string }
  /** A `type` nobody documented: counted and ignored. */
  | { type: 'unknown'; name: string };

export interface ElevenLabsDecodeError {
  type: undefined;
  kind: AgentBadFrameKind;
  name?: string;
}

/** Documented server messages the bridge deliberately ignores. */
const IGNORED_TYPES = new Set([
  'tentative_user_transcript',
  'agent_chat_response_part',
  'vad_score',
  'agent_tool_request',
  'mcp_tool_call',
  'mcp_connection_status',
  'asr_initiation_metadata',
  'guardrail_triggered',
]);

const bad = (kind: AgentBadFrameKind, name?: string): ElevenLabsDecodeError =>
  name === undefined ? { type: undefined, kind } : { type: undefined, kind, name: name.slice(0, 40) };

function obj(v: unknown): Record<string, unknown> | undefined {
  return typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
}

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

/** A non-negative safe integer, else undefined. */
const int = (v: unknown): number | undefined => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : undefined);

/** An `event_id` sent as a string: 1 to 15 digits (always a safe integer). */
const EVENT_ID_STRING = /^\d{1,15}$/;

/**
 * An `event_id` as received: a non-negative safe integer (the contract), or a string of
 * 1 to 15 digits (some servers send `"3"`); else undefined.
 */
function rawEventId(v: unknown): number | string | undefined {
  if (typeof v === 'string') return EVENT_ID_STRING.test(v) ? v : undefined;
  return int(v);
}

/** The numeric value of an `event_id` (see {@link rawEventId}), else undefined. */
function eventIdOf(v: unknown): number | undefined {
  const raw = rawEventId(v);
  return typeof raw === 'string' ? Number(raw) : raw;
}

/** Decodes one text frame from the agent. Never throws. */
export function decodeElevenLabsMessage(text: string): ElevenLabsServerMessage | ElevenLabsDecodeError {
  const o = parseJsonObject(text);
  if (typeof o === 'string') return bad(o);
  const type = o.type;
  if (typeof type !== 'string') return bad('invalid_fields');
  switch (type) {
    case 'audio': {
      const ev = obj(o.audio_event);
      const audio = str(ev?.audio_base_64);
      const eventId = eventIdOf(ev?.event_id);
      if (audio === undefined || eventId === undefined) return bad('invalid_fields', type);
      if (!isBase64(audio)) return bad('bad_audio', type);
      return { type, audio, eventId };
    }
    case 'conversation_initiation_metadata': {
      const ev = obj(o.conversation_initiation_metadata_event);
      const conversationId = str(ev?.conversation_id);
      if (conversationId === undefined || conversationId.length === 0 || conversationId.length > 256) return bad('invalid_fields', type);
      const format = (v: unknown): string | undefined => {
        const f = str(v);
        return f === undefined || f.length === 0 ? undefined : f;
      };
      return { type, conversationId, outputFormat: format(ev?.agent_output_audio_format), inputFormat: format(ev?.user_input_audio_format) };
    }
    case 'interruption':
      // Barge-in matters more than the id: without a usable one it still interrupts.
      return { type, eventId: eventIdOf(obj(o.interruption_event)?.event_id) };
    case 'agent_response': {
      const text = str(obj(o.agent_response_event)?.agent_response);
      return text === undefined ? bad('invalid_fields', type) : { type, text };
    }
    case 'agent_response_correction': {
      const ev = obj(o.agent_response_correction_event);
      const corrected = str(ev?.corrected_agent_response);
      return corrected === undefined ? bad('invalid_fields', type) : { type, eventId: eventIdOf(ev?.event_id), corrected };
    }
    case 'user_transcript': {
      const text = str(obj(o.user_transcription_event)?.user_transcript);
      return text === undefined ? bad('invalid_fields', type) : { type, text };
    }
    case 'ping': {
      const ev = obj(o.ping_event);
      const eventId = rawEventId(ev?.event_id);
      return eventId === undefined ? bad('invalid_fields', type) : { type, eventId, pingMs: int(ev?.ping_ms) };
    }
    case 'client_tool_call': {
      const call = obj(o.client_tool_call);
      const toolName = str(call?.tool_name);
      const toolCallId = str(call?.tool_call_id);
      if (toolName === undefined || toolCallId === undefined || toolName.length === 0 || toolCallId.length === 0) return bad('invalid_fields', type);
      return { type, toolName, toolCallId, parameters: obj(call?.parameters) ?? {} };
    }
    case 'agent_tool_response': {
      const r = obj(o.agent_tool_response);
      const toolName = str(r?.tool_name);
      if (toolName === undefined) return bad('invalid_fields', type);
      return { type, toolName, toolType: str(r?.tool_type), isError: r?.is_error === true };
    }
    case 'error': {
      const ev = obj(o.error_event);
      const code = typeof ev?.code === 'number' && Number.isInteger(ev.code) ? ev.code : undefined;
      return { type, code, errorType: str(ev?.error_type)?.slice(0, 64), message: (str(ev?.message) ?? '').slice(0, 500), reason: str(ev?.reason)?.slice(0, 200) };
    }
    default:
      if (IGNORED_TYPES.has(type) || type.startsWith('internal_')) return { type: 'ignored', name: type };
      return { type: 'unknown', name: type.slice(0, 40) };
  }
}

// ---------------------------------------------------------------------------
// Client messages

/** What the first frame carries (only the fields set are sent). */
export interface ElevenLabsInitiation {
  prompt?: string;
  /** `""` makes the agent wait for the caller (used on resume when a greeting override is in use). */
  firstMessage?: string;
  language?: string;
  voiceId?: string;
  dynamicVariables: Record<string, string>;
  userId?: string;
}

/** `conversation_initiation_client_data`, always the first frame. */
export function encodeInitiation(init: ElevenLabsInitiation): string {
  const agent: Record<string, unknown> = {};
  if (init.prompt !== undefined) agent.prompt = { prompt: init.prompt };
  if (init.firstMessage !== undefined) agent.first_message = init.firstMessage;
  if (init.language !== undefined) agent.language = init.language;
  const override: Record<string, unknown> = {};
  if (Object.keys(agent).length > 0) override.agent = agent;
  if (init.voiceId !== undefined) override.tts = { voice_id: init.voiceId };
  const msg: Record<string, unknown> = { type: 'conversation_initiation_client_data' };
  if (Object.keys(override).length > 0) msg.conversation_config_override = override;
  msg.dynamic_variables = init.dynamicVariables;
  if (init.userId !== undefined) msg.user_id = init.userId;
  return JSON.stringify(msg);
}

/** The overrides a first frame asks for, in the dashboard's words (for the `override_error` message). */
export function overridesAsked(init: ElevenLabsInitiation): string[] {
  const asked: string[] = [];
  if (init.prompt !== undefined) asked.push('System prompt');
  if (init.firstMessage !== undefined) asked.push('First message');
  if (init.language !== undefined) asked.push('Language');
  if (init.voiceId !== undefined) asked.push('Voice');
  return asked;
}

/**
 * ElevenLabs takes ISO 639-1 codes plus `pt-br` (its `Language` enum): `en-US` → `en`,
 * `pt-BR` → `pt-br`. Anything else is passed lowercased for the server to judge.
 */
export function elevenLabsLanguage(bcp47: string): string {
  const lower = bcp47.trim().toLowerCase().replace('_', '-');
  if (lower === 'pt-br') return lower;
  const primary = lower.split('-')[0] ?? lower;
  return primary;
}

/** Caller audio is `USER_AUDIO_HEAD + base64 + USER_AUDIO_TAIL` (no `type` field: the server recognises the key). */
export const USER_AUDIO_HEAD = '{"user_audio_chunk":"';
export const USER_AUDIO_TAIL = '"}';
/** `b64` must be validated base64 (it needs no JSON escaping). */
export function encodeUserAudio(b64: string): string {
  return USER_AUDIO_HEAD + b64 + USER_AUDIO_TAIL;
}

/** The pong for a ping: its `event_id` echoed exactly as received (an integer, or a numeric string, which needs no escaping). */
export function encodePong(eventId: number | string): string {
  return typeof eventId === 'string' ? `{"type":"pong","event_id":"${eventId}"}` : `{"type":"pong","event_id":${eventId}}`;
}

export function encodeUserMessage(text: string): string {
  return JSON.stringify({ type: 'user_message', text });
}

export function encodeContextualUpdate(text: string): string {
  return JSON.stringify({ type: 'contextual_update', text });
}

export function encodeToolResult(toolCallId: string, result: string, isError: boolean): string {
  return JSON.stringify({ type: 'client_tool_result', tool_call_id: toolCallId, result, is_error: isError });
}

/** Longest resume context sent (characters); older turns are dropped first. */
export const RESUME_CONTEXT_MAX_CHARS = 4000;

/**
 * The earlier turns as one `contextual_update` text: "Conversation so far:" and one
 * line per turn, keeping the most recent turns within `maxChars`.
 */
export function resumeContext(history: readonly ConversationTurn[], maxChars = RESUME_CONTEXT_MAX_CHARS): string | undefined {
  const head = 'Conversation so far (the call was reconnected; continue it without greeting again):';
  const lines: string[] = [];
  let length = head.length;
  for (let i = history.length - 1; i >= 0; i--) {
    const turn = history[i];
    if (turn === undefined) continue;
    const text = turn.text.replace(/\s+/g, ' ').trim();
    if (text.length === 0) continue;
    const line = `${turn.role === 'user' ? 'Caller' : 'Agent'}: ${text}`;
    if (length + 1 + line.length > maxChars) {
      if (lines.length === 0) lines.push(line.slice(0, Math.max(0, maxChars - length - 2)) + '…');
      break;
    }
    lines.push(line);
    length += 1 + line.length;
  }
  if (lines.length === 0) return undefined;
  return [head, ...lines.reverse()].join('\n');
}

// ---------------------------------------------------------------------------
// Errors

/** `error_event.error_type` values of the contract, with how each is handled. */
const ERROR_TYPES: ReadonlyMap<string, AgentErrorKind | 'end'> = new Map<string, AgentErrorKind | 'end'>([
  // 1008: the request itself is wrong; a retry sends it again.
  ['invalid_message', 'fatal'],
  ['missing_fields', 'fatal'],
  ['value_error', 'fatal'],
  ['override_error', 'fatal'],
  ['missing_dynamic_variable', 'fatal'],
  ['missing_dynamic_variable_transfer', 'fatal'],
  ['telephony_agent_error', 'fatal'],
  ['mcp_tool_error', 'fatal'],
  ['mcp_https_error', 'fatal'],
  // 1002: operational.
  ['safety_violation', 'fatal'],
  ['transport_receive_timeout', 'fatal'],
  ['llm_timeout', 'transient'],
  ['llm_error', 'transient'],
  ['custom_llm_error', 'transient'],
  ['cascade_brain_error', 'transient'],
  ['asr_transcription_error', 'transient'],
  ['vad_error', 'transient'],
  ['turn_probability_error', 'transient'],
  ['tts_cascade_error', 'transient'],
  ['redis_timeout_error', 'transient'],
  ['http_exception', 'transient'],
  ['asyncio_timeout', 'transient'],
  // 1011 and the rest.
  ['unknown_websocket_crash', 'transient'],
  ['websocket_disconnect', 'transient'],
  // Decided by the close code.
  ['unknown', 'transient'],
  // 1000: the conversation is over, not an error.
  ['max_duration_exceeded', 'end'],
]);

/** Close codes the contract documents (the `code` label when there is no documented error type). */
const CLOSE_CODES = new Set([1000, 1002, 1008, 1011]);

const AUTH_WORDS = /\b(auth\w*|unauthori[sz]ed|forbidden|signature|api[ _-]?key|invalid[ _-]?token|expired[ _-]?token|permission)\b/i;
/**
 * (unverified) The wire signal of a concurrency cap is not documented: wording about
 * concurrency, too many sessions, or a rate limit counts; any other "limit" (a prompt over
 * the character limit) does not.
 */
const CAPACITY_WORDS = /concurren|too many (sessions|conversations|connections|requests)|rate.?limit|quota of concurrent/i;

export interface ElevenLabsErrorInfo {
  closeCode: number | undefined;
  errorType: string | undefined;
  message: string;
  reason: string | undefined;
}

export interface ElevenLabsErrorClass {
  /** `end`: a normal end of the conversation (close 1000, `max_duration_exceeded`). */
  kind: AgentErrorKind | 'end';
  /** Bounded label: a documented error type, else `close_<code>` for a documented close code, else `other`. */
  code: string;
}

/**
 * Error types that say little by themselves (or nothing was sent): their message decides
 * between auth or capacity and the close code's default.
 */
const GENERIC_TYPES = new Set(['unknown', 'invalid_message', 'value_error', 'missing_fields', 'http_exception']);

/** Classifies an `error` frame and/or a close (reference §2.11–2.12). */
export function classifyElevenLabsError(e: ElevenLabsErrorInfo): ElevenLabsErrorClass {
  const known = e.errorType !== undefined ? ERROR_TYPES.get(e.errorType) : undefined;
  const code = known !== undefined && e.errorType !== undefined ? e.errorType : e.closeCode !== undefined && CLOSE_CODES.has(e.closeCode) ? `close_${e.closeCode}` : 'other';
  if (known === 'end') return { kind: 'end', code };
  if (known === undefined || GENERIC_TYPES.has(e.errorType ?? '')) {
    const words = `${e.errorType ?? ''} ${e.message} ${e.reason ?? ''}`;
    if (CAPACITY_WORDS.test(words)) return { kind: 'capacity', code };
    if ((e.closeCode === 1008 || e.closeCode === undefined) && AUTH_WORDS.test(words)) return { kind: 'auth', code };
  }
  if (known !== undefined && e.errorType !== 'unknown') return { kind: known, code };
  switch (e.closeCode) {
    case 1000:
      return { kind: 'end', code };
    case 1008:
      return { kind: 'fatal', code };
    default:
      return { kind: 'transient', code };
  }
}

/** An HTTP refusal (signed-URL request or WebSocket upgrade). */
export function classifyHttpStatus(status: number): { kind: AgentErrorKind; code: string } {
  if (status === 401 || status === 403 || status === 422) return { kind: 'auth', code: `http_${status}` };
  if (status === 429) return { kind: 'capacity', code: 'http_429' };
  if (status === 404) return { kind: 'fatal', code: 'http_404' };
  return { kind: 'transient', code: status >= 500 && status < 600 ? 'http_5xx' : 'http_other' };
}
