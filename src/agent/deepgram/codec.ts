/**
 * Deepgram Voice Agent API V1 (`wss://agent.deepgram.com/v1/agent/converse`): pure codec.
 *
 * The wire, in short (see `/work/shared/reference/agent-providers.md` §3):
 * - the server opens with `Welcome {request_id}`; the client then sends exactly one
 *   `Settings` before anything else and may stream audio after `SettingsApplied`;
 * - audio goes both ways as **binary** frames of raw μ-law 8 kHz (no container);
 *   text frames are JSON control messages.
 *
 * Nothing here throws or touches a socket: {@link buildDeepgramSettings} turns an
 * {@link AgentRequest} into the `Settings` message, {@link decodeDeepgramMessage}
 * turns a text frame into a closed union (unknown types reported, bad frames
 * classified), {@link classifyDeepgramError} maps error codes to how the call
 * session handles them, and the `encode…` functions build client messages.
 */
import type { AgentBadFrameKind, AgentErrorKind, AgentRequest, AgentTool, ConversationTurn } from '../port.js';
import { parseJsonObject } from '../../util/json.js';

/** The production endpoint. */
export const DEEPGRAM_AGENT_URL = 'wss://agent.deepgram.com/v1/agent/converse';
/** Think provider when the request names no model. */
export const DEFAULT_THINK_PROVIDER = { type: 'open_ai', model: 'gpt-4o-mini' } as const;
/** Listen provider (speech to text). */
export const DEFAULT_LISTEN_MODEL = 'nova-3';
/** Aura-2 voice when the request names none. */
export const DEFAULT_VOICE = 'aura-2-thalia-en';
/** Think provider types a `request.model` of the form `<type>/<model>` may name. */
export const THINK_PROVIDER_TYPES = ['open_ai', 'anthropic', 'google', 'groq', 'aws_bedrock'] as const;

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

/** A listen/think/speak provider object (`type` plus provider-specific fields such as `model`). */
export interface DeepgramProviderSettings {
  type: string;
  model?: string;
  [field: string]: unknown;
}

/** A function offered to the think model (no `endpoint`: it runs on our side). */
export interface DeepgramFunction {
  name: string;
  description?: string;
  parameters?: Record<string, unknown>;
  /** Dispatch only once the user's turn is confirmed (recommended for `end_call`). */
  defer_until_eot?: boolean;
  [field: string]: unknown;
}

/** One earlier turn in `agent.context.messages`. */
export interface DeepgramHistoryMessage {
  type: 'History';
  role: 'user' | 'assistant';
  content: string;
}

/** The `Settings` message as Playline sends it (audio is always μ-law 8 kHz both ways). */
export interface DeepgramSettings {
  type: 'Settings';
  audio: {
    input: { encoding: 'mulaw'; sample_rate: 8000 };
    output: { encoding: 'mulaw'; sample_rate: 8000; container: 'none' };
  };
  agent: {
    listen: { provider: DeepgramProviderSettings };
    think: { provider: DeepgramProviderSettings; prompt?: string; functions?: DeepgramFunction[] };
    speak: { provider: DeepgramProviderSettings };
    greeting?: string;
    context?: { messages: DeepgramHistoryMessage[] };
  };
  tags?: string[];
  mip_opt_out?: boolean;
  experimental?: boolean;
  flags?: { history?: boolean };
}

/**
 * What a configuration may set beyond the {@link AgentRequest} (for a raw Settings
 * object carried by an agents file). Audio is not overridable: the bridge speaks
 * μ-law 8 kHz. Provider objects replace the defaults whole.
 */
export interface DeepgramSettingsOverrides {
  agent?: {
    listen?: { provider?: DeepgramProviderSettings };
    think?: { provider?: DeepgramProviderSettings; prompt?: string; functions?: DeepgramFunction[] };
    speak?: { provider?: DeepgramProviderSettings };
    greeting?: string;
  };
  tags?: string[];
  mip_opt_out?: boolean;
  experimental?: boolean;
  flags?: { history?: boolean };
}

/**
 * The think provider a `request.model` names: `<type>/<model>` when `<type>` is a
 * known provider type (`anthropic/claude-…`, `groq/meta-llama/…`), otherwise the
 * model of `base` (default OpenAI).
 */
export function thinkProviderFor(model: string, base: DeepgramProviderSettings = DEFAULT_THINK_PROVIDER): DeepgramProviderSettings {
  const slash = model.indexOf('/');
  if (slash > 0) {
    const type = model.slice(0, slash);
    if ((THINK_PROVIDER_TYPES as readonly string[]).includes(type)) return { type, model: model.slice(slash + 1) };
  }
  return { ...base, model };
}

function toFunction(tool: AgentTool): DeepgramFunction {
  const fn: DeepgramFunction = { name: tool.name, description: tool.description, parameters: tool.parameters };
  if (tool.name === 'end_call') fn.defer_until_eot = true;
  return fn;
}

function toHistory(turn: ConversationTurn): DeepgramHistoryMessage {
  return { type: 'History', role: turn.role === 'agent' ? 'assistant' : 'user', content: turn.text };
}

/**
 * The `Settings` message for a request (pure). Precedence: the request's own fields
 * (instructions, greeting, voice, model, language, tools) over `overrides` over the
 * defaults. On resume the greeting is omitted and the earlier turns seed
 * `agent.context.messages`.
 */
export function buildDeepgramSettings(request: AgentRequest, overrides: DeepgramSettingsOverrides = {}): DeepgramSettings {
  const o = overrides.agent ?? {};
  const listen: DeepgramProviderSettings = o.listen?.provider !== undefined ? { ...o.listen.provider } : { type: 'deepgram', model: DEFAULT_LISTEN_MODEL };
  if (request.language !== undefined && request.language !== '') listen.language = request.language;

  const baseThink: DeepgramProviderSettings = o.think?.provider !== undefined ? { ...o.think.provider } : { ...DEFAULT_THINK_PROVIDER };
  const thinkProvider = request.model !== undefined && request.model !== '' ? thinkProviderFor(request.model, baseThink) : baseThink;

  const speak: DeepgramProviderSettings = o.speak?.provider !== undefined ? { ...o.speak.provider } : { type: 'deepgram', model: DEFAULT_VOICE };
  if (request.voice !== undefined && request.voice !== '') speak.model = request.voice;

  const think: DeepgramSettings['agent']['think'] = { provider: thinkProvider };
  const prompt = request.instructions ?? o.think?.prompt;
  if (prompt !== undefined) think.prompt = prompt;
  const ours = request.tools.map(toFunction);
  const theirs = (o.think?.functions ?? []).filter((f) => !ours.some((t) => t.name === f.name));
  const functions = [...theirs, ...ours];
  if (functions.length > 0) think.functions = functions;

  const agent: DeepgramSettings['agent'] = { listen: { provider: listen }, think, speak: { provider: speak } };
  const resume = request.resume;
  if (resume === undefined) {
    const greeting = request.greeting ?? o.greeting;
    if (greeting !== undefined && greeting !== '') agent.greeting = greeting;
  } else if (resume.history.length > 0) {
    agent.context = { messages: resume.history.map(toHistory) };
  }

  const settings: DeepgramSettings = {
    type: 'Settings',
    audio: {
      input: { encoding: 'mulaw', sample_rate: 8000 },
      output: { encoding: 'mulaw', sample_rate: 8000, container: 'none' },
    },
    agent,
  };
  if (overrides.tags !== undefined) settings.tags = [...overrides.tags];
  if (overrides.mip_opt_out !== undefined) settings.mip_opt_out = overrides.mip_opt_out;
  if (overrides.experimental !== undefined) settings.experimental = overrides.experimental;
  if (overrides.flags !== undefined) settings.flags = { ...overrides.flags };
  return settings;
}

// ---------------------------------------------------------------------------
// Client messages
// ---------------------------------------------------------------------------

export function encodeSettings(settings: DeepgramSettings): string {
  return JSON.stringify(settings);
}

/** `{"type":"KeepAlive"}`, sent as a text frame while no caller audio flows. */
export const KEEP_ALIVE = '{"type":"KeepAlive"}';

/** A user turn the agent answers (DTMF and other caller input as text). */
export function encodeInjectUserMessage(content: string): string {
  return JSON.stringify({ type: 'InjectUserMessage', content });
}

/** Adds `prompt` to the agent's prompt; Deepgram appends, it does not replace (answered by `PromptUpdated`). */
export function encodeUpdatePrompt(prompt: string): string {
  return JSON.stringify({ type: 'UpdatePrompt', prompt });
}

/** The answer to a client-side function call; `name` is the one from the request. */
export function encodeFunctionCallResponse(id: string, name: string, content: string): string {
  return JSON.stringify({ type: 'FunctionCallResponse', id, name, content });
}

// ---------------------------------------------------------------------------
// Server messages
// ---------------------------------------------------------------------------

export interface DeepgramFunctionCall {
  id: string;
  name: string;
  /**
   * The arguments as an object: parsed from the documented JSON string, or taken as is
   * when the server sent an object; `{}` when missing or unusable.
   */
  args: Record<string, unknown>;
  /** Undefined when the server left it out (or sent something that is not a boolean). */
  clientSide: boolean | undefined;
}

export type DeepgramServerMessage =
  /** `requestId` is undefined when the field is missing or unusable. */
  | { type: 'Welcome'; requestId: string | undefined }
  | { type: 'SettingsApplied' }
  | { type: 'UserStartedSpeaking' }
  | { type: 'AgentStartedSpeaking' }
  | { type: 'AgentThinking' }
  | { type: 'AgentAudioDone' }
  | { type: 'ConversationText'; role: 'user' | 'assistant'; content: string }
  /** `skipped`: elements that were not usable calls (no id or name), left out one by one. */
  | { type: 'FunctionCallRequest'; functions: DeepgramFunctionCall[]; skipped: number }
  /** `skipped`: elements without a usable id, left out one by one. */
  | { type: 'FunctionCallCancelled'; ids: string[]; skipped: number }
  | { type: 'PromptUpdated' }
  | { type: 'InjectionRefused'; message: string }
  | { type: 'Error'; code: string; description: string }
  | { type: 'Warning'; code: string; description: string }
  /** A documented message the bridge has no use for (LatencyReport, History…). */
  | { type: 'ignored'; name: string }
  /** A `type` nobody documented: counted and ignored. */
  | { type: 'unknown'; name: string };

export interface DeepgramDecodeError {
  type: undefined;
  kind: AgentBadFrameKind;
  name?: string;
}

/** Documented server messages the bridge deliberately ignores. */
const IGNORED_TYPES: ReadonlySet<string> = new Set([
  'LatencyReport',
  'History',
  'SpeakUpdated',
  'ThinkUpdated',
  'ListenUpdated',
  // The server's own answer to a server-side function (one with an `endpoint`).
  'FunctionCallResponse',
]);

/** Fields of `FunctionCallCancelled` that may list the cancelled calls. */
const CANCELLED_LIST_FIELDS = ['functions', 'function_call_ids', 'ids'] as const;
const MAX_ID = 256;
const MAX_TEXT = 100_000;

const bad = (kind: AgentBadFrameKind, name?: string): DeepgramDecodeError =>
  name === undefined ? { type: undefined, kind } : { type: undefined, kind, name: name.slice(0, 40) };

const isId = (v: unknown): v is string => typeof v === 'string' && v.length > 0 && v.length <= MAX_ID;
const text = (v: unknown, max = 500): string => (typeof v === 'string' ? v.slice(0, max) : '');

const isPlainObject = (v: unknown): v is object => typeof v === 'object' && v !== null && !Array.isArray(v);

/**
 * Function arguments as an object: the documented JSON string parsed, an object
 * (sent by a server that skips the string step) taken as is, anything else `{}`.
 */
export function functionArgs(v: unknown): Record<string, unknown> {
  let value = v;
  if (typeof v === 'string') {
    if (v === '') return {};
    try {
      value = JSON.parse(v);
    } catch {
      return {};
    }
  }
  return isPlainObject(value) ? { ...value } : {};
}

/** One element of `functions`: undefined when it has no usable id or name (it cannot be answered). */
function decodeFunctionCall(v: unknown): DeepgramFunctionCall | undefined {
  if (!isPlainObject(v)) return undefined;
  const id: unknown = Reflect.get(v, 'id');
  const name: unknown = Reflect.get(v, 'name');
  const clientSide: unknown = Reflect.get(v, 'client_side');
  if (!isId(id) || !isId(name)) return undefined;
  return { id, name, args: functionArgs(Reflect.get(v, 'arguments')), clientSide: typeof clientSide === 'boolean' ? clientSide : undefined };
}

/** Decodes one text frame from the server. Never throws. */
export function decodeDeepgramMessage(frame: string): DeepgramServerMessage | DeepgramDecodeError {
  const o = parseJsonObject(frame);
  if (typeof o === 'string') return bad(o);
  const type = o.type;
  if (typeof type !== 'string') return bad('invalid_fields');
  switch (type) {
    case 'Welcome':
      return { type, requestId: isId(o.request_id) ? o.request_id : undefined };
    case 'SettingsApplied':
    case 'UserStartedSpeaking':
    case 'AgentStartedSpeaking':
    case 'AgentThinking':
    case 'AgentAudioDone':
    case 'PromptUpdated':
      return { type };
    case 'ConversationText': {
      const role = o.role;
      const content = o.content;
      if ((role !== 'user' && role !== 'assistant') || typeof content !== 'string') return bad('invalid_fields', type);
      return { type, role, content: content.slice(0, MAX_TEXT) };
    }
    case 'FunctionCallRequest': {
      if (!Array.isArray(o.functions)) return bad('invalid_fields', type);
      // One bad element must not cost the others (end_call among them).
      const functions: DeepgramFunctionCall[] = [];
      let skipped = 0;
      for (const f of o.functions) {
        const call = decodeFunctionCall(f);
        if (call === undefined) skipped++;
        else functions.push(call);
      }
      return { type, functions, skipped };
    }
    case 'FunctionCallCancelled': {
      // The element shape beyond `id` is unverified (reference §3.7): take any of the list
      // fields a server might use, each element an id or an object with one.
      const lists = CANCELLED_LIST_FIELDS.map((f) => o[f]).filter((v) => Array.isArray(v));
      if (lists.length === 0) return bad('invalid_fields', type);
      const ids: string[] = [];
      let skipped = 0;
      for (const list of lists) {
        for (const f of list) {
          const id: unknown = isPlainObject(f) ? Reflect.get(f, 'id') : f;
          if (isId(id)) ids.push(id);
          else skipped++;
        }
      }
      return { type, ids, skipped };
    }
    case 'InjectionRefused':
      return { type, message: text(o.message) };
    case 'Error':
    case 'Warning':
      return { type, code: text(o.code, 100), description: text(o.description) };
    default:
      return IGNORED_TYPES.has(type) ? { type: 'ignored', name: type } : { type: 'unknown', name: type.slice(0, 40) };
  }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/** `Error` codes after which a new session may work (reference §3.11). */
export const TRANSIENT_ERROR_CODES: ReadonlySet<string> = new Set([
  'INTERNAL_SERVER_ERROR',
  'FAILED_TO_START_LISTENING',
  'ASR_CONNECTION_CLOSED',
  'ASR_DRIVER_TIMEOUT',
]);

/** `Error` codes a reconnect with the same settings cannot fix (a bug on our side or a bad configuration). */
export const FATAL_ERROR_CODES: ReadonlySet<string> = new Set([
  'UNPARSABLE_CLIENT_MESSAGE',
  'NON_SETTINGS_MESSAGE_BEFORE_SETTINGS',
  'SETTINGS_ALREADY_APPLIED',
  'INVALID_SETTINGS',
  'USER_AUDIO_FORMAT',
  'CLIENT_MESSAGE_TIMEOUT',
]);

/** Documented `Warning` codes (the call goes on). */
export const WARNING_CODES: ReadonlySet<string> = new Set([
  'THINK_REQUEST_FAILED',
  'SPEAK_REQUEST_FAILED',
  'FUNCTION_CALL_FAILED',
  'PROMPT_TOO_LONG',
  'INJECT_AGENT_MESSAGE_DURING_USER_SPEECH',
  'INJECT_AGENT_MESSAGE_DURING_AGENT_SPEECH',
  'FORCE_END_TURN_UNSUPPORTED',
]);

/** Words of a refused key (code or description, any case; `_`, `-` or spaces between words). */
const AUTH_WORDS = /unauthori[sz]ed|invalid[\s_-]+(?:api[\s_-]+)?key|forbidden|credentials/i;
/** Words of an account over its limits (concurrent sessions, request rate). */
const CAPACITY_WORDS = /too[\s_-]+many[\s_-]+(?:connections|requests|sessions)|concurren|rate.?limit/i;

/**
 * `auth` or `capacity` when `text` (an `Error`'s code and description, or a close
 * reason) says so in words, else undefined. Deepgram documents no code for either
 * after the upgrade (reference §3.11), so the words are the only signal.
 */
export function errorKindFromWords(text: string): 'auth' | 'capacity' | undefined {
  if (AUTH_WORDS.test(text)) return 'auth';
  if (CAPACITY_WORDS.test(text)) return 'capacity';
  return undefined;
}

const DOCUMENTED_ERROR_CODES: ReadonlySet<string> = new Set([...TRANSIENT_ERROR_CODES, ...FATAL_ERROR_CODES]);

/**
 * How the session handles an `Error` (legDone) or a `Warning` (not legDone). `code`
 * is a bounded label: documented codes as themselves, anything else `other`. An
 * `Error` whose code or description speaks of credentials is `auth`, of too many
 * sessions or a rate limit `capacity` (before the code tables: those words say
 * more than a generic code). Any other undocumented `Error` is taken as transient
 * (a reconnect, within the session's reconnect budget, is the tolerant guess).
 */
export function classifyDeepgramError(type: 'Error' | 'Warning', code: string, description = ''): { kind: AgentErrorKind; code: string; legDone: boolean } {
  if (type === 'Warning') return { kind: 'transient', code: WARNING_CODES.has(code) ? code : 'other', legDone: false };
  const label = DOCUMENTED_ERROR_CODES.has(code) ? code : 'other';
  const byWords = errorKindFromWords(`${code} ${description}`);
  if (byWords !== undefined) return { kind: byWords, code: label, legDone: true };
  if (FATAL_ERROR_CODES.has(code)) return { kind: 'fatal', code, legDone: true };
  return { kind: 'transient', code: label, legDone: true };
}

/** Refused upgrades no reconnect fixes: a bad request, no credit left, no endpoint at that URL. */
const FATAL_HANDSHAKE_STATUSES: ReadonlySet<number> = new Set([400, 402, 404]);

/**
 * A refused upgrade: 401/403 `auth`, 429 `capacity` (both unverified for this
 * endpoint), 400/402/404 `fatal`, anything else `transient`.
 */
export function classifyHandshakeStatus(status: number | undefined): { kind: AgentErrorKind; code: string } {
  if (status === 401 || status === 403) return { kind: 'auth', code: `http_${status}` };
  if (status === 429) return { kind: 'capacity', code: 'http_429' };
  if (status !== undefined && FATAL_HANDSHAKE_STATUSES.has(status)) return { kind: 'fatal', code: `http_${status}` };
  return { kind: 'transient', code: 'http_other' };
}
