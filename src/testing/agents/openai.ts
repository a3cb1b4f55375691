/**
 * A protocol-faithful fake of the OpenAI Realtime API, GA interface, over
 * WebSocket (`/v1/realtime?model=…`), for tests and benchmarks. Written from
 * the protocol facts (`/work/shared/reference/agent-providers.md` §1, §7),
 * not from the client's codec, so a mistake in one is not mirrored in the
 * other. Listens on 127.0.0.1 on a random port.
 *
 * Strict where the service is strict: a missing or wrong bearer key is a 401
 * on the upgrade (or, as reported in 2024, an `invalid_api_key` error and
 * close 3000); an `OpenAI-Beta` header gets `beta_api_shape_disabled` and
 * close 4000; `session.update` needs `session.type` and refuses beta-named
 * or unknown fields as a whole ("Unknown parameter"); truncates must be
 * integers no longer than the item's audio. Everything else is scripted by
 * the test: `speak`, `callerSpeaks`, `userTranscript`, `callTool`, `error`,
 * `closeWith`, `refuseUpgrade`… and everything the client sent is recorded.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { isBase64 } from '../../audio/base64.js';
import { parseJsonObject } from '../../util/json.js';
import { rawText, waiterFor, type Waiter } from '../waiting.js';

/** The key the fake expects by default (`Authorization: Bearer <key>`). */
export const FAKE_OPENAI_KEY = 'sk-fake-openai-test-key';
/** The service's reason for close 1001 at its session limit. */
export const SESSION_MAX_REASON = 'Your session hit the maximum duration of 60 minutes.';

export interface FakeOpenAiOptions {
  /** The bearer key to require (default {@link FAKE_OPENAI_KEY}). */
  apiKey?: string;
  /** How a wrong key is refused: HTTP 401 on the upgrade (default) or `invalid_api_key` + close 3000. */
  badKeyAs?: 'http401' | 'close3000';
  /** Refuse every upgrade with this HTTP status while set (e.g. 429, 500). */
  refuseUpgrade?: number;
  /** Close each session with 1001 after this many ms (the service's is 60 minutes). */
  maxSessionMs?: number;
  /** Answer WebSocket pings (default true). False simulates a dead peer that still looks open. */
  answerPings?: boolean;
  /** Answer a valid `session.update` with `session.updated` at once (default true); false holds it until `confirmSession()`. */
  autoConfirm?: boolean;
  /** Hold `session.created` (and `conversation.created`) until `sendSessionCreated()` (default false: sent on open). */
  holdSessionCreated?: boolean;
  /** Refuse a valid `conversation.item.create` whose item this returns true for, with `invalid_value` (as the service refuses content it will not take). */
  refuseItem?: (item: Record<string, unknown>) => boolean;
}

/** A client event the fake refused, or a truncate it accepted. */
export interface FakeTruncate {
  itemId: unknown;
  contentIndex: unknown;
  audioEndMs: unknown;
  accepted: boolean;
  /** The error code sent when refused. */
  code?: string;
}

const DEFAULT_TIMEOUT_MS = 3000;
const VOICES = new Set(['alloy', 'ash', 'ballad', 'coral', 'echo', 'sage', 'shimmer', 'verse', 'marin', 'cedar']);
const TRANSCRIPTION_MODELS = new Set(['whisper-1', 'gpt-4o-mini-transcribe', 'gpt-4o-transcribe', 'gpt-4o-transcribe-diarize']);
const SESSION_KEYS = new Set(['type', 'model', 'instructions', 'output_modalities', 'audio', 'tools', 'tool_choice', 'max_output_tokens', 'tracing', 'truncation', 'prompt', 'include']);
const INPUT_KEYS = new Set(['format', 'transcription', 'turn_detection', 'noise_reduction']);
const OUTPUT_KEYS = new Set(['format', 'voice', 'speed']);
const SERVER_VAD_KEYS = new Set(['type', 'threshold', 'prefix_padding_ms', 'silence_duration_ms', 'create_response', 'interrupt_response', 'idle_timeout_ms']);
const SEMANTIC_VAD_KEYS = new Set(['type', 'eagerness', 'create_response', 'interrupt_response']);
const TRANSCRIPTION_KEYS = new Set(['model', 'language', 'prompt']);
/** Documented errors the test can ask for, with the `type` the service puts with each code. */
const SCRIPTED_ERRORS: Record<string, { type: string; code: string | null; message: string }> = {
  invalid_api_key: { type: 'invalid_request_error', code: 'invalid_api_key', message: 'Incorrect API key provided.' },
  insufficient_quota: { type: 'insufficient_quota', code: 'insufficient_quota', message: 'You exceeded your current quota, please check your plan and billing details.' },
  billing_hard_limit_reached: { type: 'invalid_request_error', code: 'billing_hard_limit_reached', message: 'Billing hard limit has been reached.' },
  account_deactivated: { type: 'invalid_request_error', code: 'account_deactivated', message: 'This account has been deactivated.' },
  rate_limit_exceeded: { type: 'tokens', code: 'rate_limit_exceeded', message: 'Rate limit reached for requests.' },
  server_error: { type: 'server_error', code: null, message: 'The server had an error while processing your request.' },
  beta_api_shape_disabled: { type: 'invalid_request_error', code: 'beta_api_shape_disabled', message: 'The Realtime beta API is no longer supported. Please use the GA interface.' },
  missing_required_parameter: { type: 'invalid_request_error', code: 'missing_required_parameter', message: "Missing required parameter: 'session.type'." },
  unknown_parameter: { type: 'invalid_request_error', code: 'unknown_parameter', message: "Unknown parameter: 'session.voice'." },
  response_cancel_not_active: { type: 'invalid_request_error', code: 'response_cancel_not_active', message: 'Cancellation failed: no active response found' },
  conversation_already_has_active_response: {
    type: 'invalid_request_error',
    code: 'conversation_already_has_active_response',
    message: 'Conversation already has an active response in progress.',
  },
};

const rid = (prefix: string): string => `${prefix}_${randomBytes(10).toString('hex')}`;
const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

const waitUntil = waiterFor('fake OpenAI');

/** A validation failure of a client event. */
interface Refusal {
  code: string;
  message: string;
  param: string | null;
}

const unknownParam = (path: string): Refusal => ({ code: 'unknown_parameter', message: `Unknown parameter: '${path}'.`, param: path });
const missingParam = (path: string): Refusal => ({ code: 'missing_required_parameter', message: `Missing required parameter: '${path}'.`, param: path });
const invalidValue = (path: string, v: unknown): Refusal => ({ code: 'invalid_value', message: `Invalid value: ${JSON.stringify(v)?.slice(0, 80)}.`, param: path });
const invalidType = (path: string, want: string): Refusal => ({ code: 'invalid_type', message: `Invalid type for '${path}': expected ${want}.`, param: path });

function unknownKey(o: Record<string, unknown>, allowed: ReadonlySet<string>, path: string): Refusal | undefined {
  for (const k of Object.keys(o)) if (!allowed.has(k)) return unknownParam(`${path}.${k}`);
  return undefined;
}

function checkFormat(v: unknown, path: string): Refusal | undefined {
  if (!isObj(v)) return invalidType(path, 'an object');
  const extra = unknownKey(v, new Set(['type', 'rate']), path);
  if (extra !== undefined) return extra;
  if (v.type === 'audio/pcmu' || v.type === 'audio/pcma') return undefined;
  if (v.type === 'audio/pcm') return v.rate === undefined ? missingParam(`${path}.rate`) : v.rate === 24000 ? undefined : invalidValue(`${path}.rate`, v.rate);
  return v.type === undefined ? missingParam(`${path}.type`) : invalidValue(`${path}.type`, v.type);
}

/** Checks a GA `session` object; returns the first refusal. Nothing is applied when one is returned. */
function checkSession(s: unknown): Refusal | undefined {
  if (!isObj(s)) return missingParam('session');
  const extra = unknownKey(s, SESSION_KEYS, 'session');
  if (extra !== undefined) return extra;
  if (s.type === undefined) return missingParam('session.type');
  if (s.type !== 'realtime') return invalidValue('session.type', s.type);
  if (s.instructions !== undefined && typeof s.instructions !== 'string') return invalidType('session.instructions', 'a string');
  if (s.output_modalities !== undefined) {
    const m = s.output_modalities;
    if (!Array.isArray(m) || m.length !== 1 || (m[0] !== 'audio' && m[0] !== 'text')) return invalidValue('session.output_modalities', m);
  }
  if (s.audio !== undefined) {
    const a = s.audio;
    if (!isObj(a)) return invalidType('session.audio', 'an object');
    const ax = unknownKey(a, new Set(['input', 'output']), 'session.audio');
    if (ax !== undefined) return ax;
    if (a.input !== undefined) {
      const i = a.input;
      if (!isObj(i)) return invalidType('session.audio.input', 'an object');
      const r = unknownKey(i, INPUT_KEYS, 'session.audio.input') ?? (i.format === undefined ? undefined : checkFormat(i.format, 'session.audio.input.format'));
      if (r !== undefined) return r;
      if (i.turn_detection !== undefined && i.turn_detection !== null) {
        const t = i.turn_detection;
        if (!isObj(t)) return invalidType('session.audio.input.turn_detection', 'an object');
        if (t.type === 'server_vad') {
          const tx = unknownKey(t, SERVER_VAD_KEYS, 'session.audio.input.turn_detection');
          if (tx !== undefined) return tx;
        } else if (t.type === 'semantic_vad') {
          const tx = unknownKey(t, SEMANTIC_VAD_KEYS, 'session.audio.input.turn_detection');
          if (tx !== undefined) return tx;
        } else return t.type === undefined ? missingParam('session.audio.input.turn_detection.type') : invalidValue('session.audio.input.turn_detection.type', t.type);
      }
      if (i.transcription !== undefined && i.transcription !== null) {
        const t = i.transcription;
        if (!isObj(t)) return invalidType('session.audio.input.transcription', 'an object');
        const tx = unknownKey(t, TRANSCRIPTION_KEYS, 'session.audio.input.transcription');
        if (tx !== undefined) return tx;
        if (typeof t.model !== 'string' || !TRANSCRIPTION_MODELS.has(t.model)) return invalidValue('session.audio.input.transcription.model', t.model);
        if (t.language !== undefined && (typeof t.language !== 'string' || !/^[a-z]{2,3}$/.test(t.language))) return invalidValue('session.audio.input.transcription.language', t.language);
      }
    }
    if (a.output !== undefined) {
      const o = a.output;
      if (!isObj(o)) return invalidType('session.audio.output', 'an object');
      const r = unknownKey(o, OUTPUT_KEYS, 'session.audio.output') ?? (o.format === undefined ? undefined : checkFormat(o.format, 'session.audio.output.format'));
      if (r !== undefined) return r;
      const v = o.voice;
      if (v !== undefined && !(typeof v === 'string' && VOICES.has(v)) && !(isObj(v) && typeof v.id === 'string')) return invalidValue('session.audio.output.voice', v);
    }
  }
  if (s.tools !== undefined) {
    if (!Array.isArray(s.tools)) return invalidType('session.tools', 'an array');
    for (const [n, t] of s.tools.entries()) {
      const path = `session.tools[${n}]`;
      if (!isObj(t)) return invalidType(path, 'an object');
      const tx = unknownKey(t, new Set(['type', 'name', 'description', 'parameters']), path);
      if (tx !== undefined) return tx;
      if (t.type !== 'function') return invalidValue(`${path}.type`, t.type);
      if (typeof t.name !== 'string' || t.name.length === 0) return missingParam(`${path}.name`);
      if (t.parameters !== undefined && !isObj(t.parameters)) return invalidType(`${path}.parameters`, 'an object');
    }
  }
  if (s.tool_choice !== undefined && !['auto', 'none', 'required'].includes(String(s.tool_choice)) && !isObj(s.tool_choice)) return invalidValue('session.tool_choice', s.tool_choice);
  return undefined;
}

/** One audio item of a fake response. */
interface FakeItem {
  id: string;
  outputIndex: number;
  /** μ-law bytes sent as deltas. */
  bytes: number;
  transcript: string;
  kind: 'audio' | 'function_call';
}

interface FakeResponse {
  id: string;
  items: FakeItem[];
}

/** One socket accepted by {@link FakeOpenAiServer}. */
export class FakeOpenAiConnection {
  readonly headers: IncomingHttpHeaders;
  /** The `model` query parameter. */
  readonly model: string;
  readonly sessionId = rid('sess');
  /** Every text frame the client sent, as received. */
  readonly texts: string[] = [];
  /** Every client event, parsed (invalid JSON excluded). */
  readonly frames: Array<Record<string, unknown>> = [];
  /** Every event the fake sent, in order. */
  readonly sent: Array<Record<string, unknown>> = [];
  /** Decoded μ-law of each `input_audio_buffer.append`, in order. */
  readonly audioIn: Buffer[] = [];
  /** Appends received before a `session.update` was applied (the service would take them as PCM16 24 kHz). */
  audioBeforeConfig = 0;
  /** The effective session config (what `session.updated` echoes). */
  readonly config: Record<string, unknown>;
  /** `session.update`s applied. */
  sessionUpdates = 0;
  /** Conversation items the client created (history, text, tool outputs). */
  readonly items: Array<Record<string, unknown>> = [];
  /** `response.create` events the client sent (accepted or not). */
  readonly responseCreates: Array<Record<string, unknown>> = [];
  /** Every `conversation.item.truncate`, accepted or refused. */
  readonly truncates: FakeTruncate[] = [];
  /** Codes of the `error` events sent in answer to client events. */
  readonly refusals: string[] = [];
  /** Text frames that were not JSON objects, and binary frames. */
  invalidFrames = 0;
  /** WebSocket pings received (answered unless `answerPings: false`). */
  pings = 0;
  readonly closed: Promise<{ code: number; reason: string }>;
  #response: FakeResponse | undefined;
  /** Assistant audio items of the conversation, by id (for truncates). */
  readonly #audioItems = new Map<string, FakeItem>();
  readonly #calls = new Set<string>();
  #events = 0;
  #unconfirmed = 0;
  #isClosed = false;
  #maxTimer: NodeJS.Timeout | undefined;
  readonly #waiters = new Set<Waiter>();

  /** @internal Created by {@link FakeOpenAiServer}. */
  constructor(
    private readonly ws: WebSocket,
    req: IncomingMessage,
    model: string,
    private readonly options: () => FakeOpenAiOptions,
    refuse: 'beta' | 'badKey' | undefined,
  ) {
    this.headers = req.headers;
    this.model = model;
    this.config = {
      object: 'realtime.session',
      type: 'realtime',
      id: this.sessionId,
      model,
      output_modalities: ['audio'],
      instructions: '',
      tools: [],
      tool_choice: 'auto',
      max_output_tokens: 'inf',
      expires_at: Math.floor(Date.now() / 1000) + 3600,
      audio: {
        input: {
          format: { type: 'audio/pcm', rate: 24000 },
          transcription: null,
          noise_reduction: null,
          turn_detection: { type: 'server_vad', threshold: 0.5, prefix_padding_ms: 300, silence_duration_ms: 500, create_response: true, interrupt_response: true, idle_timeout_ms: null },
        },
        output: { format: { type: 'audio/pcm', rate: 24000 }, voice: 'alloy', speed: 1 },
      },
    };
    this.closed = new Promise((resolve) => {
      ws.once('close', (code, reason) => {
        this.#isClosed = true;
        if (this.#maxTimer !== undefined) clearTimeout(this.#maxTimer);
        const err = new Error(`fake OpenAI: connection closed (code ${code})`);
        for (const w of [...this.#waiters]) if (!w.poll()) w.fail(err);
        resolve({ code, reason: reason.toString('utf8') });
      });
    });
    ws.on('error', () => {
      /* 'close' follows */
    });
    ws.on('ping', (data) => {
      this.pings++;
      if (this.options().answerPings !== false && ws.readyState === WebSocket.OPEN) ws.pong(data);
    });
    if (refuse === 'beta') {
      this.#sendError('beta_api_shape_disabled');
      this.closeWith(4000, 'invalid_request_error.beta_api_shape_disabled');
      return;
    }
    if (refuse === 'badKey') {
      this.#sendError('invalid_api_key');
      this.closeWith(3000, 'invalid_request_error.invalid_api_key');
      return;
    }
    ws.on('message', (data, isBinary) => this.#onMessage(data, isBinary));
    if (this.options().holdSessionCreated !== true) this.sendSessionCreated();
    const max = this.options().maxSessionMs;
    if (max !== undefined) {
      this.#maxTimer = setTimeout(() => this.expire(), max);
      this.#maxTimer.unref();
    }
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** All caller audio received, concatenated. */
  get audioBytes(): Buffer {
    return Buffer.concat(this.audioIn);
  }

  /** The response in progress, if any. */
  get activeResponseId(): string | undefined {
    return this.#response?.id;
  }

  /** Sends one server event, with a fresh `event_id` (no-op once the socket is not open). */
  send(msg: Record<string, unknown>): void {
    const full = { type: msg.type, event_id: `event_${++this.#events}`, ...msg };
    this.sent.push(full);
    this.sendRaw(JSON.stringify(full));
  }

  /** Sends a raw frame: strings as text, Buffers as binary. */
  sendRaw(data: string | Buffer): void {
    if (this.isOpen) this.ws.send(data, { binary: typeof data !== 'string' });
  }

  // ------------------------------------------------------------ scripting

  /** `session.created` then `conversation.created`: sent on open, or when the test says with `holdSessionCreated`. */
  sendSessionCreated(): void {
    this.send({ type: 'session.created', session: this.config });
    this.send({ type: 'conversation.created', conversation: { id: rid('conv'), object: 'realtime.conversation' } });
  }

  /** Sends the `session.updated` held back by `autoConfirm: false`. */
  confirmSession(): void {
    if (this.#unconfirmed === 0) throw new Error('fake OpenAI: no session.update to confirm');
    this.#unconfirmed--;
    this.send({ type: 'session.updated', session: this.config });
  }

  /** `response.created` (+ `rate_limits.updated`); returns the response id. */
  startResponse(): string {
    if (this.#response !== undefined) throw new Error('fake OpenAI: a response is already in progress');
    const r: FakeResponse = { id: rid('resp'), items: [] };
    this.#response = r;
    this.send({ type: 'response.created', response: { object: 'realtime.response', id: r.id, status: 'in_progress', status_details: null, output: [], output_modalities: ['audio'] } });
    this.send({ type: 'rate_limits.updated', rate_limits: [{ name: 'requests', limit: 1000, remaining: 999, reset_seconds: 0.06 }, { name: 'tokens', limit: 100000, remaining: 99000, reset_seconds: 0.6 }] });
    return r.id;
  }

  /**
   * Audio in a new assistant item of the current response, as `response.output_audio.delta`s of
   * `chunkMs` (default 100) each. `audio` is μ-law bytes or their base64. Returns the item id.
   */
  audio(audio: Buffer | string, opts: { chunkMs?: number; transcript?: string } = {}): string {
    const r = this.#response;
    if (r === undefined) throw new Error('fake OpenAI: startResponse() first');
    const bytes = typeof audio === 'string' ? Buffer.from(audio, 'base64') : audio;
    const item: FakeItem = { id: rid('item'), outputIndex: r.items.length, bytes: 0, transcript: opts.transcript ?? '', kind: 'audio' };
    r.items.push(item);
    this.#audioItems.set(item.id, item);
    const msgItem = { id: item.id, object: 'realtime.item', type: 'message', role: 'assistant', status: 'in_progress', content: [] };
    this.send({ type: 'response.output_item.added', response_id: r.id, output_index: item.outputIndex, item: msgItem });
    this.send({ type: 'conversation.item.added', previous_item_id: null, item: msgItem });
    this.send({ type: 'response.content_part.added', response_id: r.id, item_id: item.id, output_index: item.outputIndex, content_index: 0, part: { type: 'audio', transcript: '' } });
    const chunk = Math.max(1, Math.round((opts.chunkMs ?? 100) * 8));
    for (let at = 0; at < bytes.length; at += chunk) this.#delta(r.id, item, bytes.subarray(at, at + chunk));
    if (item.transcript.length > 0) {
      this.send({ type: 'response.output_audio_transcript.delta', response_id: r.id, item_id: item.id, output_index: item.outputIndex, content_index: 0, delta: item.transcript.slice(0, Math.ceil(item.transcript.length / 2)) });
    }
    return item.id;
  }

  /** One more delta for an item of the current response (its last audio item by default). */
  moreAudio(audio: Buffer, itemId?: string): void {
    const r = this.#response;
    if (r === undefined) throw new Error('fake OpenAI: no response in progress');
    const item = itemId === undefined ? r.items.filter((i) => i.kind === 'audio').at(-1) : r.items.find((i) => i.id === itemId);
    if (item === undefined) throw new Error('fake OpenAI: no such audio item');
    this.#delta(r.id, item, audio);
  }

  /** A raw delta with any ids (e.g. a late delta of a cancelled response). */
  delta(responseId: string, itemId: string, audio: Buffer): void {
    this.send({ type: 'response.output_audio.delta', response_id: responseId, item_id: itemId, output_index: 0, content_index: 0, delta: audio.toString('base64') });
  }

  /** Ends the current response: each audio item's done events, then `response.done`. */
  finishResponse(status: 'completed' | 'cancelled' | 'incomplete' = 'completed', reason?: string): void {
    const r = this.#response;
    if (r === undefined) throw new Error('fake OpenAI: no response in progress');
    this.#response = undefined;
    const output: Array<Record<string, unknown>> = [];
    for (const item of r.items) {
      if (item.kind !== 'audio') continue;
      const base = { response_id: r.id, item_id: item.id, output_index: item.outputIndex, content_index: 0 };
      this.send({ type: 'response.output_audio.done', ...base });
      this.send({ type: 'response.output_audio_transcript.done', ...base, transcript: item.transcript });
      this.send({ type: 'response.content_part.done', ...base, part: { type: 'audio', transcript: item.transcript } });
      const done = { id: item.id, object: 'realtime.item', type: 'message', role: 'assistant', status: status === 'completed' ? 'completed' : 'incomplete', content: [{ type: 'output_audio', transcript: item.transcript }] };
      this.send({ type: 'response.output_item.done', response_id: r.id, output_index: item.outputIndex, item: done });
      this.send({ type: 'conversation.item.done', previous_item_id: null, item: done });
      output.push(done);
    }
    const details = status === 'completed' ? null : { type: status, reason: reason ?? (status === 'cancelled' ? 'turn_detected' : 'max_output_tokens') };
    this.#responseDone(r.id, status, details, output);
  }

  /** Ends the current response (or a new empty one) as `failed` with this error code. */
  failResponse(code: string, type = 'server_error'): void {
    const id = this.#response?.id ?? this.startResponse();
    this.#response = undefined;
    this.#responseDone(id, 'failed', { type: 'failed', error: { type, code } }, []);
  }

  /**
   * One response that says `audio` (one item per entry), with transcripts, from
   * `response.created` to `response.done`. Returns the ids.
   */
  speak(audio: Buffer | string | Array<Buffer | string>, opts: { chunkMs?: number; transcript?: string | string[] } = {}): { responseId: string; itemIds: string[] } {
    const parts = Array.isArray(audio) ? audio : [audio];
    const t = opts.transcript;
    const transcripts = Array.isArray(t) ? t : parts.map((_, n) => (n === parts.length - 1 ? (t ?? '') : ''));
    const responseId = this.startResponse();
    const itemIds = parts.map((p, n) => this.audio(p, { chunkMs: opts.chunkMs, transcript: transcripts[n] ?? '' }));
    this.finishResponse();
    return { responseId, itemIds };
  }

  /**
   * The caller starts speaking (server VAD): `speech_started`, then, if a response is in
   * progress, `lateDeltas` more deltas of it (20 ms of silence each; they were in flight)
   * and its cancellation (`response.done` cancelled / turn_detected).
   */
  callerSpeaks(opts: { lateDeltas?: number; audioStartMs?: number } = {}): void {
    this.send({ type: 'input_audio_buffer.speech_started', audio_start_ms: opts.audioStartMs ?? 1000, item_id: rid('item') });
    const r = this.#response;
    if (r === undefined) return;
    const item = r.items.filter((i) => i.kind === 'audio').at(-1);
    if (item !== undefined) for (let n = 0; n < (opts.lateDeltas ?? 0); n++) this.#delta(r.id, item, Buffer.alloc(160, 0xff));
    this.finishResponse('cancelled', 'turn_detected');
  }

  /** The caller stopped: `speech_stopped` and the buffer committed. */
  callerStops(): void {
    const itemId = rid('item');
    this.send({ type: 'input_audio_buffer.speech_stopped', audio_end_ms: 2000, item_id: itemId });
    this.send({ type: 'input_audio_buffer.committed', previous_item_id: null, item_id: itemId });
  }

  /** The caller's words, transcribed: a partial (`.delta`) then the final (`.completed`). */
  userTranscript(text: string): void {
    const itemId = rid('item');
    this.send({ type: 'conversation.item.input_audio_transcription.delta', item_id: itemId, content_index: 0, delta: text.slice(0, Math.ceil(text.length / 2)) });
    this.send({ type: 'conversation.item.input_audio_transcription.completed', item_id: itemId, content_index: 0, transcript: text, usage: { type: 'duration', seconds: 1 } });
  }

  /**
   * The agent calls a tool: in the current response, or in a response of its own.
   * `args` is sent as JSON unless it is a string (sent as is). Returns the `call_id`.
   * `argumentsDone`: how `response.function_call_arguments.done` is sent: with `name`
   * (default), without it (as several SDK typings and the OpenAPI spec describe it), or not
   * at all (the call then shows only in `response.output_item.done`).
   */
  callTool(name: string, args: Record<string, unknown> | string = {}, opts: { argumentsDone?: 'with_name' | 'without_name' | 'none' } = {}): string {
    const own = this.#response === undefined;
    if (own) this.startResponse();
    const r = this.#response;
    if (r === undefined) throw new Error('unreachable');
    const callId = rid('call');
    const item: FakeItem = { id: rid('item'), outputIndex: r.items.length, bytes: 0, transcript: '', kind: 'function_call' };
    r.items.push(item);
    this.#calls.add(callId);
    const argsText = typeof args === 'string' ? args : JSON.stringify(args);
    const added = { id: item.id, object: 'realtime.item', type: 'function_call', status: 'in_progress', call_id: callId, name, arguments: '' };
    this.send({ type: 'response.output_item.added', response_id: r.id, output_index: item.outputIndex, item: added });
    this.send({ type: 'response.function_call_arguments.delta', response_id: r.id, item_id: item.id, output_index: item.outputIndex, call_id: callId, delta: argsText });
    const done = { type: 'response.function_call_arguments.done', response_id: r.id, item_id: item.id, output_index: item.outputIndex, call_id: callId, arguments: argsText };
    const how = opts.argumentsDone ?? 'with_name';
    if (how === 'with_name') this.send({ ...done, name });
    else if (how === 'without_name') this.send(done);
    this.send({ type: 'response.output_item.done', response_id: r.id, output_index: item.outputIndex, item: { ...added, status: 'completed', arguments: argsText } });
    if (own) this.finishResponse();
    return callId;
  }

  /** An `error` event with a documented code (see the table in this file); does not close. */
  error(code: string, overrides: { type?: string; message?: string; param?: string } = {}): void {
    const known = SCRIPTED_ERRORS[code];
    this.send({
      type: 'error',
      error: {
        type: overrides.type ?? known?.type ?? 'invalid_request_error',
        code: known === undefined ? code : known.code,
        message: overrides.message ?? known?.message ?? `fake error ${code}`,
        param: overrides.param ?? null,
        event_id: null,
      },
    });
  }

  /** Closes with a code (e.g. 3000 bad key, 4000 beta client, 1001 session limit). */
  closeWith(code: number, reason = ''): void {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close(code, reason);
  }

  /** The session limit: close 1001 with the service's reason. */
  expire(): void {
    this.closeWith(1001, SESSION_MAX_REASON);
  }

  /** Destroys the TCP connection without a close frame. */
  terminate(): void {
    this.ws.terminate();
  }

  /** Resolves with the first client event (received or future) matching `pred`. */
  waitFor(pred: (frame: Record<string, unknown>) => boolean, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Record<string, unknown>> {
    return this.#wait(() => {
      const f = this.frames.find(pred);
      return f === undefined ? undefined : { value: f };
    }, timeoutMs, 'a matching client event');
  }

  /** Resolves with the first client event of this type. */
  waitForType(type: string, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Record<string, unknown>> {
    return this.waitFor((f) => f.type === type, timeoutMs);
  }

  /** Resolves once at least `n` bytes of caller audio arrived. */
  waitForAudioBytes(n: number, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Buffer> {
    return this.#wait(() => (this.audioBytes.length >= n ? { value: this.audioBytes } : undefined), timeoutMs, `${n} audio bytes`);
  }

  /** Resolves once `n` client events have arrived. */
  waitForFrames(n: number, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Array<Record<string, unknown>>> {
    return this.#wait(() => (this.frames.length >= n ? { value: this.frames } : undefined), timeoutMs, `${n} client events`);
  }

  #wait<T>(check: () => { value: T } | undefined, timeoutMs: number, what: string): Promise<T> {
    return waitUntil(this.#waiters, check, timeoutMs, what, () => (this.#isClosed ? new Error(`fake OpenAI: connection closed before ${what}`) : undefined));
  }

  // ------------------------------------------------------------ internals

  #delta(responseId: string, item: FakeItem, audio: Buffer): void {
    item.bytes += audio.length;
    this.send({ type: 'response.output_audio.delta', response_id: responseId, item_id: item.id, output_index: item.outputIndex, content_index: 0, delta: audio.toString('base64') });
  }

  #responseDone(id: string, status: string, details: Record<string, unknown> | null, output: Array<Record<string, unknown>>): void {
    this.send({
      type: 'response.done',
      response: { object: 'realtime.response', id, status, status_details: details, output, usage: { total_tokens: 10, input_tokens: 5, output_tokens: 5 } },
    });
  }

  #sendError(code: string, param: string | null = null, message?: string, clientEventId: unknown = null): void {
    const known = SCRIPTED_ERRORS[code];
    this.send({
      type: 'error',
      error: {
        type: known?.type ?? 'invalid_request_error',
        code,
        message: message ?? known?.message ?? code,
        param,
        event_id: typeof clientEventId === 'string' ? clientEventId : null,
      },
    });
  }

  #refuse(r: Refusal, clientEventId: unknown): void {
    this.refusals.push(r.code);
    this.#sendError(r.code, r.param, r.message, clientEventId);
  }

  #onMessage(data: RawData, isBinary: boolean): void {
    if (isBinary) {
      this.invalidFrames++;
      this.#refuse({ code: 'invalid_json', message: 'Binary frames are not supported.', param: null }, null);
      return;
    }
    const text = rawText(data);
    this.texts.push(text);
    const o = parseJsonObject(text);
    if (typeof o === 'string') {
      this.invalidFrames++;
      this.#refuse({ code: 'invalid_json', message: 'The event is not valid JSON.', param: null }, null);
      return;
    }
    this.frames.push(o);
    this.#onEvent(o);
    for (const w of [...this.#waiters]) w.poll();
  }

  #onEvent(o: Record<string, unknown>): void {
    const eventId = o.event_id;
    switch (o.type) {
      case 'session.update': {
        const session = o.session;
        const refusal = checkSession(session);
        if (refusal !== undefined || !isObj(session)) return this.#refuse(refusal ?? missingParam('session'), eventId);
        this.#apply(session);
        this.sessionUpdates++;
        if (this.options().autoConfirm === false) this.#unconfirmed++;
        else this.send({ type: 'session.updated', session: this.config });
        return;
      }
      case 'input_audio_buffer.append': {
        if (typeof o.audio !== 'string' || !isBase64(o.audio)) return this.#refuse(invalidValue('audio', 'not base64'), eventId);
        if (this.sessionUpdates === 0) this.audioBeforeConfig++;
        this.audioIn.push(Buffer.from(o.audio, 'base64'));
        return;
      }
      case 'input_audio_buffer.commit':
      case 'input_audio_buffer.clear':
        return;
      case 'conversation.item.create': {
        const given = o.item;
        const refusal = this.#checkItem(given);
        if (refusal !== undefined || !isObj(given)) return this.#refuse(refusal ?? missingParam('item'), eventId);
        if (this.options().refuseItem?.(given) === true) return this.#refuse({ code: 'invalid_value', message: "Invalid 'item.content': this item cannot be added to the conversation.", param: 'item.content' }, eventId);
        const item = { id: rid('item'), ...given };
        this.items.push(item);
        this.send({ type: 'conversation.item.added', previous_item_id: null, item });
        this.send({ type: 'conversation.item.done', previous_item_id: null, item });
        return;
      }
      case 'conversation.item.truncate':
        return this.#truncate(o);
      case 'response.create':
        this.responseCreates.push(o);
        if (this.#response !== undefined) this.#refuse({ code: 'conversation_already_has_active_response', message: SCRIPTED_ERRORS.conversation_already_has_active_response?.message ?? '', param: null }, eventId);
        return;
      case 'response.cancel':
        if (this.#response === undefined) return this.#refuse({ code: 'response_cancel_not_active', message: 'Cancellation failed: no active response found', param: null }, eventId);
        this.finishResponse('cancelled', 'client_cancelled');
        return;
      default:
        this.#refuse(invalidValue('type', o.type), eventId);
    }
  }

  #checkItem(item: unknown): Refusal | undefined {
    if (!isObj(item)) return missingParam('item');
    if (item.type === 'function_call_output') {
      if (typeof item.call_id !== 'string') return missingParam('item.call_id');
      if (!this.#calls.has(item.call_id)) return { code: 'invalid_value', message: `Tool call ID '${item.call_id}' not found in conversation.`, param: 'item.call_id' };
      if (typeof item.output !== 'string') return invalidType('item.output', 'a string');
      return unknownKey(item, new Set(['type', 'id', 'call_id', 'output', 'object', 'status']), 'item');
    }
    if (item.type !== 'message') return invalidValue('item.type', item.type);
    const extra = unknownKey(item, new Set(['type', 'id', 'role', 'content', 'object', 'status']), 'item');
    if (extra !== undefined) return extra;
    // Per role, the content types the service takes (assistant items are text only in GA: `output_text`).
    const allowed = item.role === 'user' ? ['input_text', 'input_audio', 'input_image'] : item.role === 'system' ? ['input_text'] : item.role === 'assistant' ? ['output_text'] : undefined;
    if (allowed === undefined) return invalidValue('item.role', item.role);
    if (!Array.isArray(item.content) || item.content.length === 0) return missingParam('item.content');
    for (const [n, part] of item.content.entries()) {
      if (!isObj(part) || typeof part.type !== 'string' || !allowed.includes(part.type)) return invalidValue(`item.content[${n}].type`, isObj(part) ? part.type : part);
      if (part.type.endsWith('_text') && typeof part.text !== 'string') return missingParam(`item.content[${n}].text`);
    }
    return undefined;
  }

  #truncate(o: Record<string, unknown>): void {
    const t: FakeTruncate = { itemId: o.item_id, contentIndex: o.content_index, audioEndMs: o.audio_end_ms, accepted: false };
    this.truncates.push(t);
    const refuse = (r: Refusal): void => {
      t.code = r.code;
      this.#refuse(r, o.event_id);
    };
    if (typeof o.item_id !== 'string') return refuse(missingParam('item_id'));
    const item = this.#audioItems.get(o.item_id);
    if (item === undefined) return refuse({ code: 'invalid_value', message: `Item with item_id '${o.item_id}' not found.`, param: 'item_id' });
    if (o.content_index !== 0) return refuse(invalidValue('content_index', o.content_index));
    const ms = o.audio_end_ms;
    if (typeof ms !== 'number') return refuse(missingParam('audio_end_ms'));
    if (!Number.isInteger(ms)) return refuse({ code: 'invalid_type', message: "Invalid type for 'audio_end_ms': expected an integer, but got a decimal number instead.", param: 'audio_end_ms' });
    const length = Math.floor(item.bytes / 8);
    if (ms < 0 || ms > length) return refuse({ code: 'invalid_value', message: `Audio content of ${length}ms is already shorter than ${ms}ms`, param: 'audio_end_ms' });
    t.accepted = true;
    this.send({ type: 'conversation.item.truncated', item_id: item.id, content_index: 0, audio_end_ms: ms });
  }

  #apply(s: Record<string, unknown>): void {
    const c = this.config;
    for (const k of ['instructions', 'output_modalities', 'tools', 'tool_choice', 'max_output_tokens', 'tracing', 'truncation', 'prompt', 'include']) if (s[k] !== undefined) c[k] = s[k];
    const audio = s.audio;
    const mine = c.audio;
    if (!isObj(audio) || !isObj(mine)) return;
    for (const side of ['input', 'output'] as const) {
      const given = audio[side];
      const have = mine[side];
      if (isObj(given) && isObj(have)) for (const [k, v] of Object.entries(given)) have[k] = v;
    }
  }
}

/** Ends an upgrade with an HTTP error and an OpenAI-style JSON body. */
function refuseUpgrade(socket: Duplex, status: number, code: string, message: string): void {
  const body = JSON.stringify({ error: { message, type: 'invalid_request_error', code, param: null } });
  const text = status === 401 ? 'Unauthorized' : status === 403 ? 'Forbidden' : status === 429 ? 'Too Many Requests' : status === 404 ? 'Not Found' : status === 400 ? 'Bad Request' : 'Error';
  socket.end(`HTTP/1.1 ${status} ${text}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
}

/** A fake OpenAI Realtime endpoint on 127.0.0.1 (random port). */
export class FakeOpenAiServer {
  /** `ws://127.0.0.1:PORT/v1/realtime`: the provider's `url` (it appends `?model=`). */
  readonly url: string;
  /** Every accepted connection, in order. */
  readonly connections: FakeOpenAiConnection[] = [];
  /** Upgrades refused with an HTTP status, in order. */
  readonly refusedUpgrades: number[] = [];
  /** Behaviour for new connections; may be changed between calls. */
  options: FakeOpenAiOptions;
  #claimed = 0;
  readonly #waiters = new Set<Waiter>();
  #isClosed = false;

  private constructor(
    private readonly http: Server,
    private readonly wss: WebSocketServer,
    port: number,
    options: FakeOpenAiOptions,
  ) {
    this.url = `ws://127.0.0.1:${port}/v1/realtime`;
    this.options = options;
  }

  static async start(opts: FakeOpenAiOptions = {}): Promise<FakeOpenAiServer> {
    const http = createServer((_req, res) => {
      res.writeHead(426, { 'content-type': 'text/plain' }).end('WebSocket endpoint: /v1/realtime?model=…\n');
    });
    const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 16 * 1024 * 1024, autoPong: false });
    await new Promise<void>((resolve, reject) => {
      http.once('error', reject);
      http.listen(0, '127.0.0.1', () => {
        http.off('error', reject);
        resolve();
      });
    });
    const self = new FakeOpenAiServer(http, wss, (http.address() as AddressInfo).port, { ...opts });
    http.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => self.#onUpgrade(req, socket, head));
    return self;
  }

  /** Refuse upgrades with this status from now on (undefined: accept again). */
  refuseUpgrade(status: number | undefined): void {
    this.options.refuseUpgrade = status;
  }

  #onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const refuse = (status: number, code: string, message: string): void => {
      this.refusedUpgrades.push(status);
      refuseUpgrade(socket, status, code, message);
    };
    if (this.#isClosed) return refuse(503, 'server_error', 'shutting down');
    const url = new URL(req.url ?? '/', 'http://fake');
    if (url.pathname !== '/v1/realtime') return refuse(404, 'not_found', `No route for ${url.pathname}`);
    const opts = this.options;
    if (opts.refuseUpgrade !== undefined) return refuse(opts.refuseUpgrade, opts.refuseUpgrade === 429 ? 'rate_limit_exceeded' : 'refused', `refused with ${opts.refuseUpgrade}`);
    const expected = `Bearer ${opts.apiKey ?? FAKE_OPENAI_KEY}`;
    const badKey = req.headers.authorization !== expected;
    if (badKey && opts.badKeyAs !== 'close3000') return refuse(401, 'invalid_api_key', 'Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.');
    // Exactly one of model, call_id, intent.
    const selectors = ['model', 'call_id', 'intent'].filter((k) => url.searchParams.has(k));
    const model = url.searchParams.get('model');
    if (selectors.length !== 1 || model === null || model.length === 0) return refuse(400, 'invalid_request_error', 'Provide exactly one of the query parameters model, call_id or intent.');
    const beta = req.headers['openai-beta'] !== undefined;
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      if (this.#isClosed) {
        ws.terminate();
        return;
      }
      const conn = new FakeOpenAiConnection(ws, req, model, () => this.options, beta ? 'beta' : badKey ? 'badKey' : undefined);
      this.connections.push(conn);
      for (const w of [...this.#waiters]) if (w.poll()) break;
    });
  }

  /** Resolves with the oldest connection not yet returned by this method, waiting if needed. */
  nextConnection(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<FakeOpenAiConnection> {
    return waitUntil(
      this.#waiters,
      () => {
        const conn = this.connections[this.#claimed];
        if (conn === undefined) return undefined;
        this.#claimed++;
        return { value: conn };
      },
      timeoutMs,
      'a connection',
      () => (this.#isClosed ? new Error('fake OpenAI: server closed') : undefined),
    );
  }

  /** Terminates every socket, rejects pending waits and stops listening. */
  async close(): Promise<void> {
    if (this.#isClosed) return;
    this.#isClosed = true;
    const err = new Error('fake OpenAI: server closed');
    for (const w of [...this.#waiters]) w.fail(err);
    for (const conn of this.connections) conn.terminate();
    await Promise.all(this.connections.map((c) => c.closed));
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
    await new Promise<void>((resolve) => {
      this.http.close(() => resolve());
      this.http.closeAllConnections();
    });
  }
}
