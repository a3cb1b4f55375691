/**
 * The OpenAI Realtime provider (GA interface): one WebSocket per call to
 * `wss://api.openai.com/v1/realtime?model=…`, μ-law 8 kHz both ways so audio
 * passes through untouched.
 *
 * Sequence: open with `Authorization: Bearer <key>` → `session.created` (or
 * 1.5 s without it) → one `session.update` (format, voice, server VAD, transcription, tools) →
 * `session.updated` → history replay (resume) or the greeting → `ready`.
 *
 * What the adapter keeps per response, for barge-in: the audio items in order
 * and the ms of audio received for each, so `interrupted(playedMs)` can
 * truncate the item the caller was hearing at the point they stopped hearing
 * it. After `speech_started`, deltas of the interrupted response are dropped
 * until a new response starts (the service cancels it, but late deltas come).
 *
 * Tool calls: reported on `response.function_call_arguments.done`, whose
 * missing `name` (or `call_id`) is taken from the `function_call` item of
 * `response.output_item.added`; a call whose `.done` never comes is reported
 * from its completed `response.output_item.done`. Each call id once.
 */
import { randomUUID } from 'node:crypto';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import WebSocket from 'ws';
import { base64ByteLengthOf } from '../../audio/base64.js';
import { eq } from '../../util/jsonBytes.js';
import { corkForThisTurn, socketOf } from '../../util/writeBatch.js';
import { closeWebSocket } from '../../util/wsClose.js';
import type { AgentCloseInfo, AgentConnectOptions, AgentEvents, AgentLeg, AgentProvider, AgentRequest } from '../port.js';
import {
  AUDIO_APPEND_HEAD,
  AUDIO_APPEND_TAIL,
  DEFAULT_OPENAI_URL,
  PCMU,
  RESPONSE_CREATE,
  classifyOpenAiClose,
  classifyOpenAiError,
  classifyUpgradeStatus,
  decodeOpenAiMessage,
  encodeAudioAppend,
  encodeContextText,
  encodeFunctionCallOutput,
  encodeGreeting,
  encodeHistoryItem,
  encodeSessionUpdate,
  encodeTruncate,
  encodeUserText,
  isTruncateError,
  parseToolArguments,
  realtimeUrl,
  upgradeRefusalHint,
  type OpenAiErrorBody,
  type OpenAiErrorClass,
  type OpenAiServerMessage,
} from './codec.js';
import { newDeltaSpan, scanAudioDelta, type DeltaSpan } from './scan.js';
import { Heartbeat } from '../heartbeat.js';

export interface OpenAiProviderOptions {
  apiKey: string;
  /** Socket base URL; `?model=` is appended. Default {@link DEFAULT_OPENAI_URL}. */
  url?: string;
  handshakeTimeoutMs?: number;
  /** Largest frame accepted from the service (default 4 MiB); a bigger one closes the socket with 1009. */
  maxPayload?: number;
}

export const DEFAULT_OPENAI_MAX_PAYLOAD = 4 * 1024 * 1024;
/** How long after the socket opens the leg waits for `session.created` before sending its `session.update` anyway. */
export const SESSION_CREATED_WAIT_MS = 1500;

/** Opens OpenAI Realtime sessions with one API key. */
export function createOpenAiProvider(opts: OpenAiProviderOptions): AgentProvider {
  return {
    name: 'openai',
    resumesById: false,
    supportsTools: true,
    acceptsText: true,
    connect: (c) => new OpenAiLeg(opts, c),
  };
}

const APPEND_HEAD = Buffer.from(AUDIO_APPEND_HEAD, 'latin1');
const APPEND_TAIL = Buffer.from(AUDIO_APPEND_TAIL, 'latin1');
/** ws send options for a Buffer that holds a text message. */
const TEXT = { binary: false } as const;

/** One audio item of a response, with the bytes of audio received for it. */
interface AudioItem {
  id: string;
  idBytes: Buffer;
  bytes: number;
}

/** The response the adapter is following (from `response.created`, or a delta of an unseen response). */
interface Response {
  id: string;
  idBytes: Buffer;
  items: AudioItem[];
  /** The item deltas last went to (usually the last one). */
  current: AudioItem | undefined;
  truncated: boolean;
}

type Phase = 'connecting' | 'configuring' | 'ready' | 'closed';

/** What the leg knows of one function call, gathered from whichever events carried it. */
interface CallRecord {
  itemId: string | undefined;
  callId: string | undefined;
  name: string | undefined;
  /** Final arguments (from `function_call_arguments.done` or a completed item), never the in-progress ones. */
  args: string | undefined;
}

/** Function calls remembered per leg (a response carries a handful at most). */
const MAX_CALLS = 64;

class OpenAiLeg implements AgentLeg {
  readonly #ws: WebSocket;
  readonly #events: AgentEvents;
  readonly #log: Logger;
  readonly #request: AgentRequest;
  readonly #maxPayload: number;
  readonly #span: DeltaSpan = newDeltaSpan();
  #socket: Socket | undefined;
  #phase: Phase = 'connecting';
  /** `session.id` of `session.created`, the conversation id. */
  #sessionId: string | undefined;
  #sessionCreated = false;
  /** The one `session.update` was sent (on `session.created`, or when it is late). */
  #updateSent = false;
  /** Sends the `session.update` if `session.created` is late. */
  #createdWait: NodeJS.Timeout | undefined;
  readonly #heartbeat = new Heartbeat();
  #closedNotified = false;
  #byUs = false;
  #error: string | undefined;
  /** A leg-ending error was reported (a close code then adds nothing). */
  #doneReported = false;

  /** The response being followed; replaced by the next one. */
  #response: Response | undefined;
  /** The response before it (whose audio may still be playing when the caller barges in). */
  #previous: Response | undefined;
  /** Id of the response cut by the caller: its late deltas are dropped. */
  #cutIdBytes: Buffer | undefined;
  /** Deltas of the current response are dropped (caller barged in). */
  #dropping = false;
  /** A response is in progress on the service (between `response.created` and `response.done`). */
  #responseActive = false;
  /** A `response.create` is owed once no response is active and no tool call awaits its result. */
  #responseOwed = false;
  /** Tool calls the agent made that have no result yet. */
  readonly #pendingCalls = new Set<string>();
  /** Function calls seen, newest last, to complete `function_call_arguments.done` from the item. */
  readonly #calls: CallRecord[] = [];
  /** Call ids reported to the session (a call shows in two events: it is reported once). */
  readonly #reportedCalls = new Set<string>();
  readonly #truncateIds = new Set<string>();
  /** `event_id` of each history item replayed on resume → how to name it in a warning. */
  readonly #historyIds = new Map<string, string>();
  /** Failed responses since the last one that did not fail. */
  #failedInRow = 0;
  /** The limit the last `rate_limits.updated` showed with nothing remaining (`requests`, `tokens`). */
  #exhaustedLimit: string | undefined;
  #truncates = 0;

  #audioBeforeReady = 0;
  #lateDeltas = 0;
  readonly #warned = new Set<string>();

  constructor(opts: OpenAiProviderOptions, c: AgentConnectOptions) {
    this.#events = c.events;
    this.#request = c.request;
    this.#log = c.log.child({ agentProvider: 'openai' });
    this.#maxPayload = opts.maxPayload ?? DEFAULT_OPENAI_MAX_PAYLOAD;
    const model = c.request.model ?? c.request.id;
    const url = realtimeUrl(opts.url ?? DEFAULT_OPENAI_URL, model);
    if (c.request.format !== undefined) this.#log.debug('agent audio format setting ignored: OpenAI sessions are set to audio/pcmu both ways');
    this.#ws = new WebSocket(url, {
      perMessageDeflate: false,
      maxPayload: this.#maxPayload,
      handshakeTimeout: opts.handshakeTimeoutMs ?? 10_000,
      headers: { Authorization: `Bearer ${opts.apiKey}` },
      // Every frame is validated by our own scanner or codec.
      skipUTF8Validation: true,
    });
    const ws = this.#ws;
    ws.on('open', () => {
      this.#socket = socketOf(ws);
      this.#phase = 'configuring';
      this.#createdWait = setTimeout(() => {
        this.#createdWait = undefined;
        if (this.#updateSent || this.#phase !== 'configuring') return;
        this.#log.debug({ waitedMs: SESSION_CREATED_WAIT_MS }, 'OpenAI sent no session.created; sending session.update anyway');
        this.#sendSessionUpdate();
      }, SESSION_CREATED_WAIT_MS);
      this.#createdWait.unref();
      this.#heartbeat.start(ws, c.heartbeatMs, () => {
        this.#error ??= 'heartbeat lost';
        ws.terminate();
      });
    });
    ws.on('message', (data, isBinary) => this.#onFrame(data, isBinary));
    ws.on('error', (err: Error & { code?: string }) => {
      // ws emits 'close' after 'error'; remember why.
      const oversized = err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH';
      this.#error ??= oversized ? 'oversized frame' : err.message || 'socket error';
      if (oversized) this.#events.badFrame('oversized');
    });
    ws.on('unexpected-response', (_req, res) => {
      const status = res.statusCode ?? 0;
      this.#error = `handshake refused with HTTP ${status}`;
      res.resume();
      this.#reportError(classifyUpgradeStatus(status), `OpenAI refused the connection with HTTP ${status}${upgradeRefusalHint(status)}`);
      ws.terminate();
    });
    ws.on('close', (code, reason) => this.#onClose(code, reason.toString('utf8').slice(0, 200)));
  }

  get isOpen(): boolean {
    return this.#ws.readyState === WebSocket.OPEN;
  }

  get bufferedAmount(): number {
    return this.#ws.bufferedAmount;
  }

  sendAudio(b64: string): boolean {
    if (!this.#canSendAudio()) return false;
    corkForThisTurn(this.#socket);
    this.#ws.send(encodeAudioAppend(b64));
    return true;
  }

  sendAudioBytes(buf: Buffer, start: number, end: number): boolean {
    if (!this.#canSendAudio()) return false;
    const head = APPEND_HEAD.length;
    const n = end - start;
    const out = Buffer.allocUnsafe(head + n + APPEND_TAIL.length);
    APPEND_HEAD.copy(out, 0);
    buf.copy(out, head, start, end);
    APPEND_TAIL.copy(out, head + n);
    corkForThisTurn(this.#socket);
    this.#ws.send(out, TEXT);
    return true;
  }

  interrupted(playedMs: number, previousUnplayedMs = 0): void {
    if (!this.isOpen) return;
    // The earlier response was still playing when this one started: its end was not heard either.
    const prev = this.#previous;
    if (previousUnplayedMs > 0 && prev !== undefined && !prev.truncated) {
      const totalMs = prev.items.reduce((n, it) => n + it.bytes / 8, 0);
      this.#truncateAt(prev, Math.max(0, totalMs - previousUnplayedMs));
    }
    const r = this.#response;
    if (r === undefined || r.truncated || r.items.length === 0) return;
    // Nothing of it heard: truncated at 0 only when the earlier one was cut (else the caller heard nothing new).
    if (!(playedMs > 0) && !(previousUnplayedMs > 0)) return;
    this.#truncateAt(r, Math.max(0, playedMs));
  }

  /** `conversation.item.truncate` of the item holding `playedMs`, counting the response's items back to back. */
  #truncateAt(r: Response, playedMs: number): void {
    let before = 0;
    let target: AudioItem | undefined;
    for (const item of r.items) {
      target = item;
      const ms = item.bytes / 8;
      if (playedMs < before + ms) break;
      before += ms;
    }
    if (target === undefined) return;
    const itemMs = Math.floor(target.bytes / 8);
    const at = Math.min(Math.max(Math.floor(playedMs - before), 0), itemMs);
    r.truncated = true;
    const eventId = `playline_truncate_${++this.#truncates}`;
    this.#truncateIds.add(eventId);
    this.#ws.send(encodeTruncate(target.id, at, eventId));
  }

  sendText(text: string, as: 'user' | 'context'): void {
    if (!this.isOpen) return;
    if (as === 'context') {
      this.#ws.send(encodeContextText(text));
      return;
    }
    this.#ws.send(encodeUserText(text));
    this.#owesResponse();
  }

  toolResult(id: string, result: string, isError: boolean): void {
    if (!this.isOpen) return;
    this.#pendingCalls.delete(id);
    this.#ws.send(encodeFunctionCallOutput(id, result, isError));
    this.#owesResponse();
  }

  close(code = 1000, reason = ''): void {
    this.#byUs = true;
    this.#stopTimers();
    // Do not wait for the service to complete the close handshake.
    closeWebSocket(this.#ws, code, reason);
  }

  // -------------------------------------------------------------- inbound

  #onFrame(data: WebSocket.RawData, isBinary: boolean): void {
    this.#heartbeat.heard();
    if (isBinary) {
      this.#events.badFrame('binary');
      return;
    }
    const buf = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
    const span = this.#span;
    if (scanAudioDelta(buf, span, this.#maxPayload)) {
      this.#onDelta(buf, span);
      return;
    }
    const msg = decodeOpenAiMessage(buf.toString('utf8'));
    if (msg.type === undefined) this.#events.badFrame(msg.kind, msg.name);
    else this.#onMessage(msg);
  }

  /** A delta, from the scanner or (rebuilt as bytes) from the full decoder. */
  #onDelta(buf: Buffer, span: DeltaSpan): void {
    if (this.#phase !== 'ready') {
      this.#events.badFrame('unexpected', 'response.output_audio.delta');
      return;
    }
    let r = this.#response;
    if (r === undefined || !eq(buf, span.responseStart, span.responseEnd, r.idBytes)) {
      const cut = this.#cutIdBytes;
      if (cut !== undefined && eq(buf, span.responseStart, span.responseEnd, cut)) {
        this.#lateDeltas++;
        return;
      }
      // A delta of a response we were not told about: it starts now.
      r = this.#startResponse(buf.toString('utf8', span.responseStart, span.responseEnd));
    }
    if (this.#dropping) {
      this.#lateDeltas++;
      return;
    }
    let item = r.current;
    if (item === undefined || !eq(buf, span.itemStart, span.itemEnd, item.idBytes)) item = this.#itemOf(r, buf, span);
    item.bytes += base64ByteLengthOf(buf, span.audioStart, span.audioEnd);
    if (span.audioEnd > span.audioStart) this.#events.audio(buf, span.audioStart, span.audioEnd);
  }

  #itemOf(r: Response, buf: Buffer, span: DeltaSpan): AudioItem {
    for (const it of r.items) {
      if (eq(buf, span.itemStart, span.itemEnd, it.idBytes)) {
        r.current = it;
        return it;
      }
    }
    const id = buf.toString('utf8', span.itemStart, span.itemEnd);
    const item: AudioItem = { id, idBytes: Buffer.from(id, 'utf8'), bytes: 0 };
    r.items.push(item);
    r.current = item;
    return item;
  }

  #startResponse(id: string): Response {
    const r: Response = { id, idBytes: Buffer.from(id, 'utf8'), items: [], current: undefined, truncated: false };
    if (this.#response !== undefined && this.#response.items.length > 0) this.#previous = this.#response;
    this.#response = r;
    this.#dropping = false;
    this.#responseActive = true;
    // Calls of earlier responses still unanswered will not be: the conversation moved on.
    this.#pendingCalls.clear();
    this.#events.responseStart();
    return r;
  }

  #onMessage(msg: OpenAiServerMessage): void {
    switch (msg.type) {
      case 'response.output_audio.delta': {
        // A delta the scanner left to the full decoder (extra keys, escapes…).
        const head = Buffer.from(msg.responseId, 'utf8');
        const item = Buffer.from(msg.itemId, 'utf8');
        const buf = Buffer.concat([head, item, Buffer.from(msg.delta, 'latin1')]);
        const s: DeltaSpan = {
          responseStart: 0,
          responseEnd: head.length,
          itemStart: head.length,
          itemEnd: head.length + item.length,
          audioStart: head.length + item.length,
          audioEnd: buf.length,
        };
        this.#onDelta(buf, s);
        return;
      }
      case 'session.created':
        this.#onSessionCreated(msg.sessionId);
        return;
      case 'session.updated':
        this.#onSessionUpdated(msg.inputFormat, msg.outputFormat);
        return;
      case 'response.created':
        if (this.#response?.id !== msg.responseId) this.#startResponse(msg.responseId);
        this.#responseActive = true;
        return;
      case 'response.done':
        this.#onResponseDone(msg);
        return;
      case 'input_audio_buffer.speech_started':
        if (this.#response !== undefined) {
          this.#dropping = true;
          this.#cutIdBytes = this.#response.idBytes;
        }
        this.#events.callerSpeechStart();
        return;
      case 'response.output_audio_transcript.done':
        if (msg.transcript.trim().length > 0) this.#events.transcript('agent', msg.transcript);
        return;
      case 'conversation.item.input_audio_transcription.completed':
        if (msg.transcript.trim().length > 0) this.#events.transcript('user', msg.transcript);
        return;
      case 'response.function_call_arguments.done': {
        const r = this.#rememberCall(msg.itemId, msg.callId, msg.name, msg.arguments);
        if (r.callId === undefined || r.name === undefined) {
          // Counted; a completed `response.output_item.done` naming it may still report the call.
          this.#events.badFrame('invalid_fields', msg.type);
          return;
        }
        this.#reportCall(r.callId, r.name, r.args ?? '');
        return;
      }
      case 'response.output_item.added':
      case 'response.output_item.done': {
        const c = msg.call;
        // The arguments of an item being added are still streaming: only a done item's count.
        const r = this.#rememberCall(c.itemId, c.callId, c.name, msg.type === 'response.output_item.done' ? c.arguments : undefined);
        // A call whose `function_call_arguments.done` never came (or came without a name).
        if (msg.type !== 'response.output_item.done' || c.status !== 'completed') return;
        if (r.callId === undefined || r.name === undefined || r.args === undefined) {
          this.#events.badFrame('invalid_fields', msg.type);
          return;
        }
        this.#reportCall(r.callId, r.name, r.args);
        return;
      }
      case 'error':
        this.#onServerError(msg.error);
        return;
      case 'rate_limits.updated':
        this.#exhaustedLimit = msg.exhausted;
        return;
      case 'ignored':
        return;
      case 'unknown':
        // Counted (agent_unknown_messages_total) and logged once per type by the session.
        this.#events.badFrame('unknown_type', msg.name);
        return;
    }
  }

  /** The record of the call with this item or call id (created if new), completed with what is given. */
  #rememberCall(itemId: string | undefined, callId: string | undefined, name: string | undefined, args: string | undefined): CallRecord {
    let r = this.#calls.find((c) => (itemId !== undefined && c.itemId === itemId) || (callId !== undefined && c.callId === callId));
    if (r === undefined) {
      r = { itemId, callId, name, args };
      this.#calls.push(r);
      if (this.#calls.length > MAX_CALLS) this.#calls.shift();
      return r;
    }
    r.itemId ??= itemId;
    r.callId ??= callId;
    if (name !== undefined) r.name = name;
    if (args !== undefined) r.args = args;
    return r;
  }

  /** Tells the session about a tool call, once per call id. */
  #reportCall(callId: string, name: string, args: string): void {
    if (this.#reportedCalls.has(callId)) return;
    this.#reportedCalls.add(callId);
    if (this.#reportedCalls.size > MAX_CALLS) {
      const oldest = this.#reportedCalls.values().next();
      if (oldest.done !== true) this.#reportedCalls.delete(oldest.value);
    }
    this.#pendingCalls.add(callId);
    this.#events.toolCall({ id: callId, name, args: parseToolArguments(args) });
  }

  #onSessionCreated(sessionId: string | undefined): void {
    if (this.#phase !== 'configuring' || this.#sessionCreated) {
      this.#debugOnce('session.created:again', {}, 'ignored a repeated or late session.created');
      return;
    }
    this.#sessionCreated = true;
    this.#sessionId = sessionId;
    this.#sendSessionUpdate();
  }

  /** The one `session.update` (format, voice, VAD, transcription, tools); never sent twice. */
  #sendSessionUpdate(): void {
    if (this.#updateSent) return;
    this.#updateSent = true;
    this.#clearCreatedWait();
    const r = this.#request;
    this.#ws.send(encodeSessionUpdate({ instructions: r.instructions, voice: r.voice, language: r.language, tools: r.tools }));
  }

  #onSessionUpdated(inputFormat: string | undefined, outputFormat: string | undefined): void {
    if (this.#phase !== 'configuring' || !this.#updateSent) return;
    if ((inputFormat !== undefined && inputFormat !== PCMU) || (outputFormat !== undefined && outputFormat !== PCMU)) {
      this.#reportError(
        { kind: 'fatal', code: 'format_rejected', legDone: true },
        `OpenAI set the session to ${inputFormat ?? '?'} in / ${outputFormat ?? '?'} out instead of ${PCMU}: audio would be noise`,
      );
      return;
    }
    if (inputFormat === undefined || outputFormat === undefined) this.#log.debug('session.updated did not echo the audio formats; assuming audio/pcmu');
    this.#phase = 'ready';
    if (this.#sessionId === undefined) this.#log.debug('no session id from session.created; using a local conversation id');
    const conversationId = this.#sessionId ?? `openai-${randomUUID()}`;
    const resume = this.#request.resume;
    if (resume !== undefined) {
      // No server-side resume: the earlier turns as text items, and no greeting.
      const turns = resume.history.filter((t) => t.text.length > 0);
      for (const [n, turn] of turns.entries()) {
        const eventId = `playline_history_${n + 1}`;
        // Named by place, role and size: the words themselves stay out of logs.
        this.#historyIds.set(eventId, `history item ${n + 1} of ${turns.length} (${turn.role} turn, ${turn.text.length} characters)`);
        this.#ws.send(encodeHistoryItem(turn, eventId));
      }
    } else if (this.#request.greeting !== undefined && this.#request.greeting.length > 0) {
      this.#ws.send(encodeGreeting(this.#request.greeting));
    }
    this.#events.ready({ conversationId });
  }

  #onResponseDone(msg: Extract<OpenAiServerMessage, { type: 'response.done' }>): void {
    const r = this.#response;
    const current = r !== undefined && msg.responseId === r.id;
    // The end of a cut response may come after the next one started: that one is still active.
    if (current || r === undefined || msg.responseId === undefined) this.#responseActive = false;
    if (msg.status === 'failed') this.#onResponseFailed(msg.error);
    else if (msg.status !== undefined) this.#failedInRow = 0;
    // A cut response's end is not news: its audio was dropped and the session cleared it.
    if (current && !this.#dropping) this.#events.responseDone();
    this.#maybeCreateResponse();
  }

  /**
   * A failed response. One the call survives (no code that ends the leg) is a warning; a second
   * in a row means the session cannot answer: the leg ends as `capacity` when the last
   * `rate_limits.updated` showed a limit used up, else `transient` (reconnect or fallback).
   */
  #onResponseFailed(error: OpenAiErrorBody | undefined): void {
    const e: OpenAiErrorBody = error ?? { type: undefined, code: undefined, message: 'response failed', param: undefined, eventId: undefined };
    const cls = classifyOpenAiError(e, true);
    this.#log.warn({ code: cls.code, errorType: e.type, message: e.message }, 'OpenAI response failed');
    if (cls.legDone || ++this.#failedInRow < 2) {
      this.#reportError(cls, `OpenAI response failed: ${e.message}`);
      return;
    }
    const limit = this.#exhaustedLimit;
    if (limit !== undefined) {
      this.#reportError(
        { kind: 'capacity', code: 'rate_limit_reached', legDone: true },
        `OpenAI failed two responses in a row with the ${limit} rate limit used up (last: ${e.message}): the account is at its rate limit`,
      );
    } else {
      this.#reportError({ kind: 'transient', code: 'responses_failed', legDone: true }, `OpenAI failed two responses in a row (last: ${e.message})`);
    }
  }

  #onServerError(e: OpenAiErrorBody): void {
    const history = e.eventId === undefined ? undefined : this.#historyIds.get(e.eventId);
    if (history !== undefined) {
      // The session logs it (one warning naming the item); the conversation goes on without it.
      const cls = classifyOpenAiError(e, this.#phase === 'ready', 'history');
      this.#reportError(cls, cls.legDone ? e.message : `OpenAI refused ${history} replayed from the earlier session: ${e.message || cls.code}; the conversation goes on without it`);
      return;
    }
    const cls = classifyOpenAiError(e, this.#phase === 'ready', isTruncateError(e, this.#truncateIds) ? 'truncate' : undefined);
    if (!cls.legDone) this.#warnOnce(`error:${cls.code}`, { code: cls.code, errorType: e.type, param: e.param, message: e.message }, 'OpenAI reported an error; the call goes on');
    this.#reportError(cls, e.message.length > 0 ? e.message : `OpenAI error ${cls.code}`);
  }

  #reportError(cls: OpenAiErrorClass, message: string): void {
    if (cls.legDone) {
      if (this.#doneReported) return;
      this.#doneReported = true;
    }
    this.#events.error({ kind: cls.kind, code: cls.code, message, legDone: cls.legDone });
  }

  // -------------------------------------------------------------- outbound helpers

  #canSendAudio(): boolean {
    if (this.#ws.readyState !== WebSocket.OPEN) return false;
    if (this.#phase === 'ready') return true;
    // Before session.updated the service would take it as its default format: drop it.
    this.#audioBeforeReady++;
    return false;
  }

  #owesResponse(): void {
    this.#responseOwed = true;
    this.#maybeCreateResponse();
  }

  /** Asks for a response once none is active and every tool call of the agent has its result. */
  #maybeCreateResponse(): void {
    if (!this.#responseOwed || this.#responseActive || this.#pendingCalls.size > 0 || !this.isOpen) return;
    this.#responseOwed = false;
    this.#ws.send(RESPONSE_CREATE);
  }

  // -------------------------------------------------------------- lifecycle

  #stopTimers(): void {
    this.#heartbeat.stop();
    this.#clearCreatedWait();
  }

  #clearCreatedWait(): void {
    if (this.#createdWait !== undefined) {
      clearTimeout(this.#createdWait);
      this.#createdWait = undefined;
    }
  }

  #onClose(code: number, reason: string): void {
    this.#stopTimers();
    if (this.#closedNotified) return;
    this.#closedNotified = true;
    this.#phase = 'closed';
    if (!this.#byUs) {
      const cls = classifyOpenAiClose(code, reason);
      if (cls !== undefined) this.#reportError(cls, `OpenAI closed the session (${code}${reason.length > 0 ? ` ${reason}` : ''})`);
    }
    if (this.#audioBeforeReady > 0 || this.#lateDeltas > 0) {
      this.#log.debug({ audioBeforeReady: this.#audioBeforeReady, lateDeltasDropped: this.#lateDeltas }, 'OpenAI leg audio dropped');
    }
    const info: AgentCloseInfo = { code, reason, byUs: this.#byUs };
    if (this.#error !== undefined) info.error = this.#error;
    this.#events.closed(info);
  }

  #warnOnce(key: string, fields: Record<string, unknown>, msg: string): void {
    if (this.#warned.has(key) || this.#warned.size > 64) return;
    this.#warned.add(key);
    this.#log.warn(fields, msg);
  }

  #debugOnce(key: string, fields: Record<string, unknown>, msg: string): void {
    if (this.#warned.has(key) || this.#warned.size > 64) return;
    this.#warned.add(key);
    this.#log.debug(fields, msg);
  }
}
