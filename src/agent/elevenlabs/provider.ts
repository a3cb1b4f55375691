/**
 * ElevenLabs Agents (Conversational AI) over WebSocket, behind the agent port.
 *
 * One leg = one conversation at `wss://…/v1/convai/conversation?agent_id=…`:
 * with an API key the leg first asks `GET /v1/convai/conversation/get-signed-url`
 * (agents with authentication enabled) and connects to the returned URL, which
 * is never logged; without one it connects to the public URL. It sends
 * `conversation_initiation_client_data` first and is ready on
 * `conversation_initiation_metadata`, whose audio formats decide whether audio
 * passes through untouched (the agent is set to μ-law 8000 Hz both ways, the
 * recommended setting) or is converted with `audio/transcode.ts`.
 *
 * What the ElevenLabs agent must be set to (dashboard):
 * - Voice → output format and Advanced → input format "μ-law 8000 Hz" (else
 *   every call pays for a conversion, and a warning says so once per agent);
 * - Security → Overrides: enable each override Playline sends (system prompt
 *   for `instructions`, first message for `greeting`, language, voice), else
 *   the conversation is refused with `override_error`;
 * - Tools: add `end_call` as a *client* tool (the override schema cannot carry
 *   tools), so the agent can end the call after its last words; the built-in
 *   system `end_call` works too (the server closes with 1000, seen as a hangup).
 *
 * Mapping notes: a new response is the first `audio` with a greater `event_id`
 * (`responseStart`); ElevenLabs sends no end-of-audio event (unverified), so
 * this adapter never calls `responseDone` and the session's own tail timing
 * applies. On `interruption` the reply being played is over: audio with an
 * `event_id` up to the smaller of the interruption's id and the last audio id
 * seen is dropped (the Python client drops up to the interruption's id, the JS
 * client keeps the interruption's id; taking the smaller keeps a reply not
 * heard yet whose id an interruption names). An interruption without an id
 * interrupts the reply being played. `request.format` is not
 * used: the metadata says what the agent speaks. The conversion warning is
 * logged once per agent id per provider instance.
 */
import WebSocket from 'ws';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { AgentCloseInfo, AgentConnectOptions, AgentError, AgentEvents, AgentLeg, AgentProvider, AgentRequest } from '../port.js';
import { createTranscoder, parseElevenLabsFormat, TWILIO_FORMAT, type Transcoder } from '../../audio/transcode.js';
import { corkForThisTurn, socketOf } from '../../util/writeBatch.js';
import { closeWebSocket } from '../../util/wsClose.js';
import { newAudioScan, scanElevenLabsAudio } from './scan.js';
import {
  classifyElevenLabsError,
  classifyHttpStatus,
  decodeElevenLabsMessage,
  elevenLabsLanguage,
  encodeContextualUpdate,
  encodeInitiation,
  encodePong,
  encodeToolResult,
  encodeUserAudio,
  encodeUserMessage,
  overridesAsked,
  resumeContext,
  USER_AUDIO_HEAD,
  USER_AUDIO_TAIL,
  type ElevenLabsInitiation,
  type ElevenLabsServerMessage,
} from './codec.js';
import { Heartbeat } from '../heartbeat.js';

export const DEFAULT_ELEVENLABS_URL = 'https://api.elevenlabs.io';
export const DEFAULT_ELEVENLABS_MAX_PAYLOAD = 4 * 1024 * 1024;

export interface ElevenLabsProviderOptions {
  /** `xi-api-key`. Set: every conversation opens a signed URL (works for private and public agents). Unset: public agents only. */
  apiKey?: string;
  /** API base URL (default {@link DEFAULT_ELEVENLABS_URL}; a regional host, or a fake's `http://127.0.0.1:port`). */
  url?: string;
  /** Limit for the signed-URL request and for the WebSocket handshake (default 10 s). */
  handshakeTimeoutMs?: number;
  /** Largest frame accepted from the agent (default 4 MiB); a bigger one closes the socket with 1009. */
  maxPayload?: number;
}

export const CONVERSION_ADVICE =
  "set the agent's input and output audio format to μ-law 8000 Hz in ElevenLabs (Voice → Output format; Advanced → Input format) to avoid converting";

/** Control messages held until the conversation is ready (text, tool results). */
const MAX_PENDING = 64;
const USER_AUDIO_HEAD_BYTES = Buffer.from(USER_AUDIO_HEAD, 'latin1');
const USER_AUDIO_TAIL_BYTES = Buffer.from(USER_AUDIO_TAIL, 'latin1');
/** ws send options for a Buffer that holds a text message. */
const TEXT = { binary: false } as const;

export function createElevenLabsProvider(opts: ElevenLabsProviderOptions = {}): AgentProvider {
  const httpBase = (opts.url ?? DEFAULT_ELEVENLABS_URL).replace(/\/+$/, '');
  const shared: LegShared = {
    httpBase,
    wsBase: httpBase.replace(/^http(s?):\/\//i, 'ws$1://'),
    apiKey: opts.apiKey !== undefined && opts.apiKey.length > 0 ? opts.apiKey : undefined,
    handshakeTimeoutMs: opts.handshakeTimeoutMs ?? 10_000,
    maxPayload: opts.maxPayload ?? DEFAULT_ELEVENLABS_MAX_PAYLOAD,
    warnedConversion: new Set(),
  };
  return {
    name: 'elevenlabs',
    resumesById: false,
    supportsTools: true,
    acceptsText: true,
    connect: (c) => new ElevenLabsLeg(c, shared),
  };
}

interface LegShared {
  httpBase: string;
  wsBase: string;
  apiKey: string | undefined;
  handshakeTimeoutMs: number;
  maxPayload: number;
  /** Agent ids already warned about audio conversion (once per agent per process). */
  warnedConversion: Set<string>;
}

/** The first frame for a request. */
export function initiationFor(request: AgentRequest): ElevenLabsInitiation {
  const { call } = request;
  const outbound = call.direction.startsWith('outbound');
  const init: ElevenLabsInitiation = {
    dynamicVariables: { caller_number: call.from, called_number: call.to, call_sid: call.callSid },
  };
  const user = outbound ? call.to : call.from;
  if (user.length > 0) init.userId = user;
  if (request.instructions !== undefined) init.prompt = request.instructions;
  if (request.resume !== undefined) {
    // The agent must not greet again. An empty first message makes it wait for the caller;
    // it is an override, sent only when the route already overrides the greeting (so the
    // agent allows it). Otherwise the agent's own first message plays (unverified whether
    // the server skips it on its own).
    if (request.greeting !== undefined) init.firstMessage = '';
  } else if (request.greeting !== undefined) init.firstMessage = request.greeting;
  if (request.language !== undefined) init.language = elevenLabsLanguage(request.language);
  if (request.voice !== undefined) init.voiceId = request.voice;
  return init;
}

class ElevenLabsLeg implements AgentLeg {
  readonly #events: AgentEvents;
  readonly #log: Logger;
  readonly #request: AgentRequest;
  readonly #shared: LegShared;
  readonly #heartbeatMs: number;
  readonly #init: ElevenLabsInitiation;
  #ws: WebSocket | undefined;
  #socket: Socket | undefined;
  #abort: AbortController | undefined;
  readonly #heartbeat = new Heartbeat();
  #ready = false;
  #closedNotified = false;
  #byUs = false;
  #error: string | undefined;
  /** Set once an error (frame, refusal) was reported, so the close does not report it again. */
  #errorReported = false;
  #hungUp = false;
  /** The error type of an `error` frame announcing a normal end (`max_duration_exceeded`). */
  #endReason: string | undefined;
  /** Highest `event_id` of agent audio seen (delivered); a greater one starts a new response. */
  #lastEventId = -1;
  /** Audio with `event_id` ≤ this belongs to an interrupted response and is dropped. */
  #interruptedId = -1;
  #toAgent: Transcoder | undefined;
  #fromAgent: Transcoder | undefined;
  readonly #pending: string[] = [];
  readonly #scan = newAudioScan();
  readonly #unknownTypes = new Set<string>();
  #droppedLateAudio = 0;
  #droppedEarlyAudio = 0;
  /**
   * A resumed conversation whose agent greets on its own (no first-message override was asked,
   * so none could empty it): its first response, before the caller has said anything in this
   * session, is the greeting again and is not played. `undefined`: nothing to hold back;
   * `-1`: waiting for that first response; otherwise its `event_id`.
   */
  #regreetId: number | undefined;
  #droppedRegreetAudio = 0;

  constructor(c: AgentConnectOptions, shared: LegShared) {
    this.#events = c.events;
    this.#request = c.request;
    this.#shared = shared;
    this.#heartbeatMs = c.heartbeatMs;
    this.#log = c.log.child({ agentProvider: 'elevenlabs' });
    this.#init = initiationFor(c.request);
    if (c.request.resume !== undefined && this.#init.firstMessage === undefined) this.#regreetId = -1;
    const agentQuery = `agent_id=${encodeURIComponent(c.request.id)}`;
    if (shared.apiKey === undefined) this.#open(`${shared.wsBase}/v1/convai/conversation?${agentQuery}`);
    else void this.#openSigned(shared.apiKey, `${shared.httpBase}/v1/convai/conversation/get-signed-url?${agentQuery}`);
  }

  get isOpen(): boolean {
    return this.#ws !== undefined && this.#ws.readyState === WebSocket.OPEN;
  }

  get bufferedAmount(): number {
    return this.#ws?.bufferedAmount ?? 0;
  }

  sendAudio(b64: string): boolean {
    const ws = this.#ws;
    if (ws === undefined || ws.readyState !== WebSocket.OPEN) return false;
    if (!this.#ready) {
      this.#droppedEarlyAudio++;
      return false;
    }
    const data = this.#toAgent === undefined ? b64 : this.#toAgent.push(b64);
    if (data.length === 0) return true;
    corkForThisTurn(this.#socket);
    ws.send(encodeUserAudio(data));
    return true;
  }

  sendAudioBytes(buf: Buffer, start: number, end: number): boolean {
    const ws = this.#ws;
    if (ws === undefined || ws.readyState !== WebSocket.OPEN) return false;
    if (!this.#ready) {
      this.#droppedEarlyAudio++;
      return false;
    }
    if (this.#toAgent !== undefined) return this.sendAudio(buf.toString('latin1', start, end));
    // The base64 payload goes into the JSON untouched: head + payload + tail.
    const head = USER_AUDIO_HEAD_BYTES.length;
    const out = Buffer.allocUnsafe(head + (end - start) + USER_AUDIO_TAIL_BYTES.length);
    USER_AUDIO_HEAD_BYTES.copy(out, 0);
    buf.copy(out, head, start, end);
    USER_AUDIO_TAIL_BYTES.copy(out, head + (end - start));
    corkForThisTurn(this.#socket);
    ws.send(out, TEXT);
    return true;
  }

  interrupted(_playedMs: number): void {
    // ElevenLabs truncates its own record of the reply when it detects the interruption.
  }

  sendText(text: string, as: 'user' | 'context'): void {
    // Words for the agent to answer (keypad digits, what happened to a transfer): its next
    // response answers them, so it is not taken for a repeated greeting (one already playing still is).
    if (as === 'user' && this.#regreetId === -1) this.#regreetId = undefined;
    this.#sendControl(as === 'user' ? encodeUserMessage(text) : encodeContextualUpdate(text));
  }

  toolResult(id: string, result: string, isError: boolean): void {
    this.#sendControl(encodeToolResult(id, result, isError));
  }

  close(code = 1000, reason = ''): void {
    this.#byUs = true;
    this.#stopHeartbeat();
    if (this.#ws !== undefined) {
      closeWebSocket(this.#ws, code, reason);
      return;
    }
    // Still asking for a signed URL: nothing to close but the request.
    this.#abort?.abort();
    this.#notifyClose(1006, '');
  }

  // -------------------------------------------------------------------------
  // Opening

  async #openSigned(apiKey: string, signedUrlEndpoint: string): Promise<void> {
    const abort = new AbortController();
    this.#abort = abort;
    const timer = setTimeout(() => abort.abort(), this.#shared.handshakeTimeoutMs);
    timer.unref();
    let status = 0;
    let url: string | undefined;
    try {
      this.#log.debug({ signedUrl: true }, 'asking ElevenLabs for a signed conversation URL');
      const res = await fetch(signedUrlEndpoint, { headers: { 'xi-api-key': apiKey }, signal: abort.signal });
      status = res.status;
      if (res.ok) {
        const body: unknown = await res.json().catch(() => undefined);
        const signed = typeof body === 'object' && body !== null && 'signed_url' in body ? body.signed_url : undefined;
        if (typeof signed === 'string' && /^wss?:\/\//i.test(signed)) url = signed;
      } else {
        await res.body?.cancel().catch(() => undefined);
      }
    } catch (err) {
      if (this.#closedNotified) return;
      this.#error = abort.signal.aborted ? 'signed URL request timed out' : `signed URL request failed: ${err instanceof Error ? err.message : String(err)}`;
      this.#notifyClose(1006, '');
      return;
    } finally {
      clearTimeout(timer);
      this.#abort = undefined;
    }
    if (this.#closedNotified) return;
    if (url === undefined) {
      const refused = status >= 200 && status < 300 ? { kind: 'transient' as const, code: 'bad_signed_url' } : classifyHttpStatus(status);
      const what = status >= 200 && status < 300 ? 'answered without a usable signed_url' : `refused with HTTP ${status}`;
      this.#error = `signed URL request ${what}`;
      this.#reportError({
        kind: refused.kind,
        code: refused.code,
        message: `ElevenLabs signed URL request ${what}${refused.kind === 'auth' ? `: ${this.#authFix()}` : ''}`,
        legDone: true,
      });
      this.#notifyClose(1006, '');
      return;
    }
    this.#open(url);
  }

  #open(url: string): void {
    let ws: WebSocket;
    try {
      ws = new WebSocket(url, {
        perMessageDeflate: false,
        maxPayload: this.#shared.maxPayload,
        handshakeTimeout: this.#shared.handshakeTimeoutMs,
        // Every frame goes through our scanner or codec (base64 audio, JSON checked field by field).
        skipUTF8Validation: true,
      });
    } catch (err) {
      // A malformed URL (bad configuration or a bad signed URL): never throw from connect().
      this.#error = `invalid agent URL: ${err instanceof Error ? err.message.replace(/wss?:\/\/\S+/g, '<url>') : 'unknown'}`;
      this.#notifyClose(1006, '');
      return;
    }
    this.#ws = ws;
    ws.on('open', () => {
      if (this.#byUs) return;
      this.#socket = socketOf(ws);
      ws.send(encodeInitiation(this.#init));
      this.#heartbeat.start(ws, this.#heartbeatMs, () => {
        this.#error ??= 'heartbeat lost';
        ws.terminate();
      });
    });
    ws.on('message', (data, isBinary) => this.#onFrame(data, isBinary));
    ws.on('error', (err: Error & { code?: string }) => {
      if (err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') {
        this.#error ??= 'oversized frame';
        this.#events.badFrame('oversized');
      } else this.#error ??= (err.message || 'socket error').replace(/wss?:\/\/\S+/g, '<url>');
    });
    ws.on('unexpected-response', (_req, res) => {
      const status = res.statusCode ?? 0;
      res.resume();
      this.#error = `handshake refused with HTTP ${status}`;
      const refused = classifyHttpStatus(status);
      const fix = status === 401 || status === 403 ? `: ${this.#authFix()}` : '';
      this.#reportError({ kind: refused.kind, code: refused.code, message: `ElevenLabs refused the conversation with HTTP ${status}${fix}`, legDone: true });
      ws.terminate();
    });
    ws.on('close', (code, reason) => this.#onClose(code, reason.toString('utf8').slice(0, 200)));
  }

  // -------------------------------------------------------------------------
  // Inbound

  #onFrame(data: WebSocket.RawData, isBinary: boolean): void {
    this.#heartbeat.heard();
    if (isBinary) {
      this.#events.badFrame('binary');
      return;
    }
    const buf = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
    const scan = this.#scan;
    if (scanElevenLabsAudio(buf, scan, this.#shared.maxPayload)) {
      this.#onAudio(scan.eventId, buf, scan.audioStart, scan.audioEnd);
      return;
    }
    const msg = decodeElevenLabsMessage(buf.toString('utf8'));
    if (msg.type === undefined) this.#events.badFrame(msg.kind, msg.name);
    else this.#onMessage(msg);
  }

  /** Agent audio, base64 in the agent's output format at `buf[start, end)`. */
  #onAudio(eventId: number, buf: Buffer, start: number, end: number): void {
    if (!this.#ready) {
      // Before the metadata the format is unknown.
      this.#events.badFrame('unexpected', 'audio');
      return;
    }
    if (eventId <= this.#interruptedId || eventId < this.#lastEventId) {
      // Late audio of an interrupted (or superseded) response.
      this.#droppedLateAudio++;
      return;
    }
    if (this.#regreetId !== undefined) {
      if (this.#regreetId === -1) {
        this.#regreetId = eventId;
        this.#log.info('resumed ElevenLabs conversation: the agent greets again on its own; that greeting is not played to the caller');
      }
      if (eventId === this.#regreetId) {
        this.#droppedRegreetAudio++;
        return;
      }
      this.#regreetId = undefined;
    }
    if (eventId > this.#lastEventId) {
      this.#lastEventId = eventId;
      this.#events.responseStart();
    }
    if (end === start) return;
    const convert = this.#fromAgent;
    if (convert === undefined) {
      this.#events.audio(buf, start, end);
      return;
    }
    const out = convert.push(buf.toString('latin1', start, end));
    if (out.length === 0) return;
    const bytes = Buffer.from(out, 'latin1');
    this.#events.audio(bytes, 0, bytes.length);
  }

  #onMessage(msg: ElevenLabsServerMessage): void {
    switch (msg.type) {
      case 'conversation_initiation_metadata':
        this.#onMetadata(msg.conversationId, msg.inputFormat, msg.outputFormat);
        return;
      case 'audio': {
        // The full decode path: an `alignment` member, or a shape the scanner declined.
        const bytes = Buffer.from(msg.audio, 'latin1');
        this.#onAudio(msg.eventId, bytes, 0, bytes.length);
        return;
      }
      case 'ping':
        // Answered at once, ready or not, with the event_id exactly as received (integer or string).
        if (this.isOpen) this.#ws?.send(encodePong(msg.eventId));
        return;
      case 'interruption': {
        // Only audio already seen can have been interrupted: an id beyond it names a reply not heard yet.
        const cutoff = msg.eventId === undefined ? this.#lastEventId : Math.min(msg.eventId, this.#lastEventId);
        this.#interruptedId = Math.max(this.#interruptedId, cutoff);
        // The caller spoke over the repeated greeting (which they never heard): its late audio stays dropped.
        if (this.#regreetId !== undefined && this.#regreetId >= 0) this.#interruptedId = Math.max(this.#interruptedId, this.#regreetId);
        this.#regreetId = undefined;
        this.#fromAgent?.reset();
        this.#events.callerSpeechStart();
        return;
      }
      case 'agent_response':
        // The repeated greeting of a resumed conversation was not heard: it is not a turn either.
        if (this.#regreetId !== undefined) return;
        if (msg.text.trim().length > 0) this.#events.transcript('agent', msg.text);
        return;
      case 'user_transcript':
        // The caller spoke: whatever the agent says next answers them.
        this.#regreetId = undefined;
        if (msg.text.trim().length > 0) this.#events.transcript('user', msg.text);
        return;
      case 'agent_response_correction':
        // What the caller actually heard before interrupting; the stored transcript keeps the full reply.
        this.#log.debug({ eventId: msg.eventId, correctedLength: msg.corrected.length }, 'ElevenLabs corrected an interrupted agent response');
        return;
      case 'client_tool_call':
        this.#events.toolCall({ id: msg.toolCallId, name: msg.toolName, args: msg.parameters });
        return;
      case 'agent_tool_response':
        if (msg.toolName === 'end_call' && !msg.isError) this.#hangup('end_call');
        return;
      case 'error':
        this.#onErrorFrame(msg);
        return;
      case 'ignored':
        return;
      case 'unknown':
        if (!this.#unknownTypes.has(msg.name) && this.#unknownTypes.size < 32) {
          this.#unknownTypes.add(msg.name);
          this.#log.debug({ type: msg.name }, 'ignored an ElevenLabs message of unknown type');
        }
        this.#events.badFrame('unknown_type', msg.name);
        return;
    }
  }

  #onMetadata(conversationId: string, sentInputFormat: string | undefined, outputFormat: string | undefined): void {
    if (this.#ready) {
      this.#events.badFrame('unexpected', 'conversation_initiation_metadata');
      return;
    }
    // The official JS client takes a missing input format as pcm_16000 (reference §2.3); a
    // missing output format has no documented default and is refused below.
    const inputFormat = sentInputFormat ?? 'pcm_16000';
    const input = parseElevenLabsFormat(inputFormat);
    const output = outputFormat === undefined ? undefined : parseElevenLabsFormat(outputFormat);
    this.#log.debug({ conversationId, inputFormat, inputFormatSent: sentInputFormat !== undefined, outputFormat }, 'ElevenLabs conversation started');
    if (input === undefined || output === undefined) {
      const fix = CONVERSION_ADVICE.replace(' to avoid converting', '');
      const message =
        outputFormat === undefined
          ? `ElevenLabs agent ${this.#request.id} sent no agent_output_audio_format in its conversation_initiation_metadata: ${fix}`
          : `ElevenLabs agent ${this.#request.id} uses an unsupported audio ${input === undefined ? `input format "${inputFormat.slice(0, 40)}"` : `output format "${outputFormat.slice(0, 40)}"`}: ${fix}`;
      this.#reportError({ kind: 'fatal', code: 'unsupported_audio_format', message, legDone: true });
      this.close(1000, 'unsupported audio format');
      return;
    }
    this.#toAgent = createTranscoder(TWILIO_FORMAT, input);
    this.#fromAgent = createTranscoder(output, TWILIO_FORMAT);
    if ((this.#toAgent !== undefined || this.#fromAgent !== undefined) && !this.#shared.warnedConversion.has(this.#request.id)) {
      this.#shared.warnedConversion.add(this.#request.id);
      this.#log.warn({ agentId: this.#request.id, inputFormat, outputFormat }, `ElevenLabs agent audio is converted on every call: ${CONVERSION_ADVICE}`);
    }
    this.#ready = true;
    const history = this.#request.resume?.history;
    const context = history === undefined ? undefined : resumeContext(history);
    if (context !== undefined) this.#pending.unshift(encodeContextualUpdate(context));
    const ws = this.#ws;
    if (ws !== undefined && ws.readyState === WebSocket.OPEN) for (const m of this.#pending.splice(0)) ws.send(m);
    this.#events.ready({ conversationId });
  }

  #onErrorFrame(msg: Extract<ElevenLabsServerMessage, { type: 'error' }>): void {
    this.#log.debug({ code: msg.code, errorType: msg.errorType, message: msg.message, reason: msg.reason }, 'ElevenLabs sent an error');
    const cls = classifyElevenLabsError({ closeCode: msg.code, errorType: msg.errorType, message: msg.message, reason: msg.reason });
    if (cls.kind === 'end') {
      this.#endReason = msg.errorType ?? 'agent_ended';
      return;
    }
    let message = `ElevenLabs error${msg.errorType !== undefined ? ` ${msg.errorType}` : ''}: ${msg.message || msg.reason || 'no message'}`;
    if (msg.errorType === 'override_error') {
      const asked = overridesAsked(this.#init);
      message =
        `ElevenLabs agent ${this.#request.id} refused the overrides Playline sent (${asked.join(', ') || 'none'}): ` +
        `enable them in the agent's Security settings (Overrides) in ElevenLabs, or remove the instructions/greeting/language/voice set for this agent in Playline`;
    } else if (msg.errorType === 'transport_receive_timeout') {
      message += ' (no caller audio reached ElevenLabs for too long)';
    }
    if (cls.kind === 'auth') message = `${message.slice(0, 400)}: ${this.#authFix()}`;
    // An error frame comes right before the server closes the socket (contract §2.11).
    this.#reportError({ kind: cls.kind, code: cls.code, message: message.slice(0, 500), legDone: true });
  }

  #onClose(code: number, reason: string): void {
    this.#stopHeartbeat();
    if (!this.#byUs && !this.#closedNotified) {
      // 1000 once ready: the agent ended the call (its end_call tool, or the maximum duration).
      // Before ready no conversation took place: a failed leg, worth a retry or a fallback.
      if (code === 1000 && !this.#errorReported && this.#ready) this.#hangup(this.#endReason ?? 'agent_ended');
      else if (code === 1000 && !this.#errorReported) {
        this.#reportError({
          kind: 'transient',
          code: 'close_1000',
          message: `ElevenLabs closed with 1000${reason ? ` (${reason})` : ''}${this.#endReason !== undefined ? ` after ${this.#endReason}` : ''} before the conversation started`,
          legDone: true,
        });
      } else if ((code === 1002 || code === 1008 || code === 1011) && !this.#errorReported) {
        const cls = classifyElevenLabsError({ closeCode: code, errorType: undefined, message: reason, reason: undefined });
        this.#log.debug({ code, reason }, 'ElevenLabs closed the conversation without an error frame');
        if (cls.kind === 'end') this.#hangup('agent_ended');
        else {
          const fix = cls.kind === 'auth' ? `: ${this.#authFix()}` : '';
          this.#reportError({ kind: cls.kind, code: cls.code, message: `ElevenLabs closed the conversation (${code}${reason ? `: ${reason}` : ''})${fix}`, legDone: true });
        }
      }
    }
    this.#notifyClose(code, reason);
  }

  // -------------------------------------------------------------------------
  // Helpers

  #sendControl(text: string): void {
    const ws = this.#ws;
    if (this.#ready && ws !== undefined && ws.readyState === WebSocket.OPEN) {
      ws.send(text);
      return;
    }
    if (this.#closedNotified || this.#byUs) return;
    if (this.#pending.length < MAX_PENDING) this.#pending.push(text);
  }

  /** What to do about refused credentials: set a key (none is set), or check the one set. */
  #authFix(): string {
    return this.#shared.apiKey === undefined
      ? 'the agent requires authentication: set ELEVENLABS_API_KEY (Playline then opens each conversation with a signed URL)'
      : 'check ELEVENLABS_API_KEY (and that the key may use this agent)';
  }

  #hangup(reason: string): void {
    if (this.#hungUp) return;
    this.#hungUp = true;
    this.#events.hangup(reason);
  }

  #reportError(err: AgentError): void {
    if (this.#errorReported) return;
    this.#errorReported = true;
    this.#events.error(err);
  }

  #stopHeartbeat(): void {
    this.#heartbeat.stop();
  }

  #notifyClose(code: number, reason: string): void {
    this.#stopHeartbeat();
    if (this.#closedNotified) return;
    this.#closedNotified = true;
    this.#pending.length = 0;
    if (this.#droppedLateAudio > 0 || this.#droppedEarlyAudio > 0 || this.#unknownTypes.size > 0) {
      this.#log.debug(
        { droppedLateAudio: this.#droppedLateAudio, droppedEarlyAudio: this.#droppedEarlyAudio, unknownTypes: [...this.#unknownTypes] },
        'ElevenLabs leg closed',
      );
    }
    const info: AgentCloseInfo = { code, reason, byUs: this.#byUs };
    if (this.#error !== undefined) info.error = this.#error;
    this.#events.closed(info);
  }
}
