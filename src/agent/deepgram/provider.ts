/**
 * The Deepgram Voice Agent provider: one WebSocket per agent leg to
 * `wss://agent.deepgram.com/v1/agent/converse`, behind the agent port.
 *
 * Sequence: upgrade with `Authorization: Token <key>` → `Welcome {request_id}` →
 * our one `Settings` (μ-law 8 kHz both ways, see `codec.ts`) → `SettingsApplied`
 * → `ready({conversationId: request_id})`. When `Welcome` has not come
 * {@link DEFAULT_WELCOME_WAIT_MS} after open, `Settings` goes anyway (a later
 * `Welcome` only supplies the conversation id). Nothing is sent before `Settings`, and
 * no audio or other message before `SettingsApplied` (what the session sends
 * early is queued, up to {@link MAX_EARLY_AUDIO_BYTES} of audio, the rest dropped
 * and counted).
 *
 * Audio is binary both ways: caller base64 is decoded once per frame and sent as
 * raw μ-law; agent frames are base64-encoded once into a scratch buffer. After
 * `UserStartedSpeaking` agent audio is dropped (the server discards the
 * interrupted reply; frames in flight may still arrive) until the new turn shows:
 * `AgentStartedSpeaking`, `AgentThinking`, or the user's `ConversationText` (the
 * turn is confirmed), whichever comes first, so a reply that comes without
 * `AgentStartedSpeaking`, or with it after its first audio, is not lost. Each
 * reply gets one `responseStart`.
 *
 * Ending: every leg that ends without our `close()` reports exactly one `error`
 * with `legDone: true` before `closed` (Deepgram's own `Error`, or a transient
 * `connection_closed` / `connect_failed` / `heartbeat_lost`, or the refused
 * upgrade's class). A `close()` by us reports only `closed({byUs: true})`.
 */
import { randomUUID } from 'node:crypto';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import WebSocket from 'ws';
import type { AgentCloseInfo, AgentConnectOptions, AgentError, AgentEvents, AgentLeg, AgentProvider, AgentRequest } from '../port.js';
import { corkForThisTurn, socketOf } from '../../util/writeBatch.js';
import { closeWebSocket } from '../../util/wsClose.js';
import { Base64Scratch, decodeBase64Span } from './audio.js';
import {
  buildDeepgramSettings,
  classifyDeepgramError,
  classifyHandshakeStatus,
  decodeDeepgramMessage,
  DEEPGRAM_AGENT_URL,
  encodeFunctionCallResponse,
  encodeInjectUserMessage,
  encodeSettings,
  encodeUpdatePrompt,
  errorKindFromWords,
  KEEP_ALIVE,
  type DeepgramServerMessage,
  type DeepgramSettingsOverrides,
} from './codec.js';
import { Heartbeat } from '../heartbeat.js';

export interface DeepgramProviderOptions {
  /** Deepgram API key (sent as `Authorization: Token <key>`; never logged). */
  apiKey: string;
  /** Default {@link DEEPGRAM_AGENT_URL}. */
  url?: string;
  /** Default 10 s. */
  handshakeTimeoutMs?: number;
  /** Largest frame accepted from Deepgram (default 4 MiB); a bigger one closes the socket with 1009. */
  maxPayload?: number;
  /** `KeepAlive` after this long without caller audio (default 3000 ms; 0 disables, for tests). */
  keepAliveMs?: number;
  /** Send `Settings` anyway when `Welcome` has not come this long after open (default 1500 ms; 0 waits for ever). */
  welcomeWaitMs?: number;
  /** Extra Settings for a request's configuration (e.g. a raw Settings object from an agents file). */
  settingsOverrides?: (request: AgentRequest) => DeepgramSettingsOverrides | undefined;
}

export const DEFAULT_DEEPGRAM_MAX_PAYLOAD = 4 * 1024 * 1024;
export const DEFAULT_KEEP_ALIVE_MS = 3000;
export const DEFAULT_WELCOME_WAIT_MS = 1500;
/** Distinct `Warning` codes logged per leg; every warning is still reported to the session. */
export const MAX_WARNING_CODES_LOGGED = 20;
/** Caller audio held before `SettingsApplied` (2 s of μ-law 8 kHz); more is dropped and counted. */
export const MAX_EARLY_AUDIO_BYTES = 16_000;

/** What a fatal `Error` code most likely means for the operator. */
const FIX_HINTS: Readonly<Record<string, string>> = {
  INVALID_SETTINGS: 'check the agent configuration (think model, voice, functions, language) against what the Deepgram project allows',
  USER_AUDIO_FORMAT: 'the caller audio did not match the declared mulaw 8000 Hz input',
  CLIENT_MESSAGE_TIMEOUT: 'no audio or KeepAlive reached Deepgram in time',
  NON_SETTINGS_MESSAGE_BEFORE_SETTINGS: 'a message was sent before Settings (a bug in this adapter)',
  SETTINGS_ALREADY_APPLIED: 'Settings was sent twice (a bug in this adapter)',
  UNPARSABLE_CLIENT_MESSAGE: 'Deepgram could not parse a message we sent (a bug in this adapter)',
};

/** What an `auth` or `capacity` error (by its words) most likely means for the operator. */
const KIND_HINTS: Readonly<Partial<Record<AgentError['kind'], string>>> = {
  auth: 'check the Deepgram API key, and any think or speak provider credentials in the agent configuration',
  capacity: 'the Deepgram project is over its concurrent Voice Agent sessions or a rate limit',
};

/** What a refused upgrade's status most likely means for the operator. */
const HANDSHAKE_HINTS: Readonly<Record<string, string>> = {
  http_401: 'check the Deepgram API key',
  http_403: 'check the Deepgram API key and its project permissions',
  http_429: 'too many concurrent Voice Agent connections for the project',
  http_400: 'the upgrade request was refused as malformed; check the Deepgram agent URL',
  http_402: 'the Deepgram project has no credit left; check its billing',
  http_404: 'no Voice Agent endpoint there; check the Deepgram agent URL',
};

const BINARY = { binary: true } as const;
const TEXT = { binary: false } as const;

/** The Deepgram Voice Agent provider (`createDeepgramProvider({ apiKey, url })`). */
export function createDeepgramProvider(opts: DeepgramProviderOptions): AgentProvider {
  return {
    name: 'deepgram',
    resumesById: false,
    supportsTools: true,
    acceptsText: true,
    connect: (c) => {
      try {
        return new DeepgramLeg(opts, c);
      } catch (err) {
        // `ws` refuses an unusable URL synchronously: a configuration error no reconnect fixes.
        const url = opts.url ?? DEEPGRAM_AGENT_URL;
        return new FailedLeg(c.events, `cannot open a Deepgram socket at ${url}: ${err instanceof Error ? err.message : String(err)}; set the Deepgram agent URL to a ws:// or wss:// URL`);
      }
    },
  };
}

/** A leg whose socket could not even be created: reports `error` (fatal) and `closed` on the next turn. */
class FailedLeg implements AgentLeg {
  readonly bufferedAmount = 0;
  readonly isOpen = false;
  #byUs = false;

  constructor(events: AgentEvents, message: string) {
    setImmediate(() => {
      if (!this.#byUs) events.error({ kind: 'fatal', code: 'bad_url', message, legDone: true });
      const info: AgentCloseInfo = { code: 1006, reason: '', error: message, byUs: this.#byUs };
      events.closed(info);
    });
  }

  sendAudio(): boolean {
    return false;
  }

  sendAudioBytes(): boolean {
    return false;
  }

  interrupted(): void {}

  sendText(): void {}

  toolResult(): void {}

  close(): void {
    this.#byUs = true;
  }
}

type Phase = 'connecting' | 'settings_sent' | 'ready';

const asBuffer = (data: WebSocket.RawData): Buffer => (Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data));

class DeepgramLeg implements AgentLeg {
  readonly #ws: WebSocket;
  readonly #events: AgentEvents;
  readonly #log: Logger;
  readonly #url: string;
  readonly #settingsText: string;
  readonly #offered: ReadonlySet<string>;
  readonly #keepAliveMs: number;
  #phase: Phase = 'connecting';
  #opened = false;
  #conversationId = '';
  /** Messages and audio the session sent before `SettingsApplied`, in order. */
  #early: Array<string | Buffer> = [];
  #earlyAudioBytes = 0;
  #earlyAudioDropped = 0;
  /** After `UserStartedSpeaking`: agent audio is dropped until the new turn shows (see the module comment). */
  #dropAgentAudio = false;
  /**
   * `responseStart` was reported when the drop ended on `AgentThinking` or the user's
   * `ConversationText`; an `AgentStartedSpeaking` before `AgentAudioDone` belongs to
   * that reply and reports no second one.
   */
  #inferredStart = false;
  /** Agent frames dropped since the last `UserStartedSpeaking`, and whether `AgentStartedSpeaking` came since. */
  #droppedSinceBargeIn = 0;
  #agentStartSinceBargeIn = false;
  #agentFramesDropped = 0;
  #badCallerFrames = 0;
  /** Client-side calls not answered yet: id → name (the response repeats the name). */
  readonly #calls = new Map<string, string>();
  readonly #scratch = new Base64Scratch();
  readonly #loggedOnce = new Set<string>();
  readonly #warningCodesLogged = new Set<string>();
  #socket: Socket | undefined;
  readonly #heartbeat = new Heartbeat();
  #keepAlive: NodeJS.Timeout | undefined;
  readonly #welcomeWaitMs: number;
  #welcomeTimer: NodeJS.Timeout | undefined;
  /** `Settings` went without `Welcome`: the first `Welcome` that comes is still expected. */
  #welcomeLate = false;
  #keepAliveTickMs = 1000;
  #audioSinceTick = false;
  #idleMs = 0;
  #handshake: { kind: AgentError['kind']; code: string; status: number | undefined } | undefined;
  #error: string | undefined;
  #legDoneReported = false;
  #byUs = false;
  #closedNotified = false;

  constructor(opts: DeepgramProviderOptions, c: AgentConnectOptions) {
    this.#url = opts.url ?? DEEPGRAM_AGENT_URL;
    // First: this throws on an unusable URL (see createDeepgramProvider).
    const ws = new WebSocket(this.#url, {
      headers: { Authorization: `Token ${opts.apiKey}` },
      perMessageDeflate: false,
      maxPayload: opts.maxPayload ?? DEFAULT_DEEPGRAM_MAX_PAYLOAD,
      handshakeTimeout: opts.handshakeTimeoutMs ?? 10_000,
    });
    this.#ws = ws;
    this.#events = c.events;
    const request = c.request;
    this.#log = c.log.child({ agentProvider: 'deepgram', agentConfig: request.id });
    this.#keepAliveMs = opts.keepAliveMs ?? DEFAULT_KEEP_ALIVE_MS;
    this.#welcomeWaitMs = opts.welcomeWaitMs ?? DEFAULT_WELCOME_WAIT_MS;
    const settings = buildDeepgramSettings(request, opts.settingsOverrides?.(request) ?? {});
    this.#settingsText = encodeSettings(settings);
    this.#offered = new Set(request.tools.map((t) => t.name));
    if (request.format !== undefined) this.#once('format', 'Deepgram takes mulaw 8000 Hz both ways; request.format is not used');

    ws.on('open', () => {
      this.#opened = true;
      this.#socket = socketOf(ws);
      if (this.#welcomeWaitMs > 0 && this.#phase === 'connecting') {
        this.#welcomeTimer = setTimeout(() => this.#welcomeOverdue(), this.#welcomeWaitMs);
        this.#welcomeTimer.unref();
      }
      this.#heartbeat.start(ws, c.heartbeatMs, () => {
        this.#error ??= 'heartbeat lost';
        ws.terminate();
      });
    });
    ws.on('message', (data, isBinary) => this.#onMessage(data, isBinary));
    ws.on('error', (err: Error & { code?: string }) => {
      // ws emits 'close' after 'error'; remember why.
      if (err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') {
        this.#error ??= 'oversized frame';
        this.#events.badFrame('oversized');
      } else {
        this.#error ??= err.message || err.code || 'socket error';
      }
    });
    ws.on('unexpected-response', (_req, res) => {
      const status = res.statusCode;
      this.#handshake = { ...classifyHandshakeStatus(status), status };
      this.#error = `handshake refused with HTTP ${status ?? '?'}`;
      if (status === 429) this.#once('http429', 'Deepgram refused the upgrade with HTTP 429; taken as capacity (unverified for this endpoint)');
      res.resume();
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
    if (!this.isOpen) return false;
    return this.#sendAudioRaw(Buffer.from(b64, 'base64'));
  }

  sendAudioBytes(buf: Buffer, start: number, end: number): boolean {
    if (!this.isOpen) return false;
    const raw = decodeBase64Span(buf, start, end);
    if (raw === undefined) {
      this.#badCallerFrames++;
      this.#once('bad-caller-audio', 'caller audio that is not base64 was not sent');
      return false;
    }
    return this.#sendAudioRaw(raw);
  }

  interrupted(_playedMs: number): void {
    // Deepgram decides server-side how an interrupted reply is kept; nothing to send.
  }

  sendText(text: string, as: 'user' | 'context'): void {
    if (as === 'user') {
      this.#sendControl(encodeInjectUserMessage(text));
      return;
    }
    // Deepgram adds an UpdatePrompt to the prompt it has: send the new text only.
    this.#sendControl(encodeUpdatePrompt(text));
  }

  toolResult(id: string, result: string, isError: boolean): void {
    const name = this.#calls.get(id);
    if (name === undefined) {
      this.#log.debug({ toolCallId: id }, 'tool result for a call that is unknown or was cancelled: not sent');
      return;
    }
    this.#calls.delete(id);
    this.#sendControl(encodeFunctionCallResponse(id, name, isError ? JSON.stringify({ error: result }) : result));
  }

  close(code = 1000, reason = ''): void {
    if (!this.#closedNotified) this.#byUs = true;
    this.#stopTimers();
    this.#early = [];
    closeWebSocket(this.#ws, code, reason);
  }

  // -------------------------------------------------------------------------

  #sendAudioRaw(raw: Buffer): boolean {
    if (raw.length === 0) return true;
    if (this.#phase !== 'ready') {
      if (this.#earlyAudioBytes + raw.length > MAX_EARLY_AUDIO_BYTES) {
        this.#earlyAudioDropped++;
      } else {
        this.#early.push(raw);
        this.#earlyAudioBytes += raw.length;
      }
      return true;
    }
    this.#audioSinceTick = true;
    corkForThisTurn(this.#socket);
    this.#ws.send(raw, BINARY);
    return true;
  }

  #sendControl(text: string): void {
    if (!this.isOpen) {
      this.#log.debug('agent socket not open: control message not sent');
      return;
    }
    if (this.#phase !== 'ready') {
      this.#early.push(text);
      return;
    }
    this.#ws.send(text, TEXT);
  }

  #onMessage(data: WebSocket.RawData, isBinary: boolean): void {
    this.#heartbeat.heard();
    if (isBinary) {
      this.#onAgentAudio(asBuffer(data));
      return;
    }
    const msg = decodeDeepgramMessage(asBuffer(data).toString('utf8'));
    if (msg.type === undefined) this.#events.badFrame(msg.kind, msg.name);
    else this.#onControl(msg);
  }

  #onAgentAudio(buf: Buffer): void {
    if (this.#phase !== 'ready') {
      this.#events.badFrame('unexpected', 'audio');
      return;
    }
    if (this.#dropAgentAudio) {
      this.#agentFramesDropped++;
      this.#droppedSinceBargeIn++;
      return;
    }
    if (buf.length === 0) return;
    const n = this.#scratch.encode(buf);
    this.#events.audio(this.#scratch.buffer, 0, n);
  }

  #onControl(msg: DeepgramServerMessage): void {
    const ev = this.#events;
    switch (msg.type) {
      case 'Welcome':
        if (this.#welcomeLate) {
          // Settings went without it: only the conversation id is left to take, if ready has not been reported.
          this.#welcomeLate = false;
          const fields = { requestId: msg.requestId, conversationId: this.#conversationId };
          if (this.#phase === 'settings_sent' && msg.requestId !== undefined) {
            this.#conversationId = msg.requestId;
            this.#log.debug(fields, 'Welcome came after Settings; its request_id is the conversation id');
          } else {
            this.#log.debug(fields, 'Welcome came after Settings; recorded only');
          }
          return;
        }
        if (this.#phase !== 'connecting') {
          ev.badFrame('unexpected', msg.type);
          return;
        }
        if (msg.requestId === undefined) this.#once('no-request-id', 'Welcome without a usable request_id; using a local conversation id');
        this.#sendSettings(msg.requestId ?? `local-${randomUUID()}`);
        return;
      case 'SettingsApplied':
        if (this.#phase !== 'settings_sent') {
          ev.badFrame('unexpected', msg.type);
          return;
        }
        this.#onSettingsApplied();
        return;
      case 'UserStartedSpeaking':
        this.#noteLostReply();
        this.#dropAgentAudio = true;
        this.#inferredStart = false;
        this.#droppedSinceBargeIn = 0;
        this.#agentStartSinceBargeIn = false;
        ev.callerSpeechStart();
        return;
      case 'AgentStartedSpeaking':
        this.#dropAgentAudio = false;
        this.#agentStartSinceBargeIn = true;
        if (this.#inferredStart) {
          this.#inferredStart = false;
          return;
        }
        ev.responseStart();
        return;
      case 'AgentThinking':
        this.#newTurnShown();
        return;
      case 'AgentAudioDone':
        this.#inferredStart = false;
        ev.responseDone();
        return;
      case 'ConversationText':
        ev.transcript(msg.role === 'assistant' ? 'agent' : 'user', msg.content);
        if (msg.role === 'user') this.#newTurnShown();
        return;
      case 'FunctionCallRequest':
        if (msg.skipped > 0) {
          this.#once('bad-function-element', 'FunctionCallRequest elements without a usable id or name were skipped; the others were kept', { skipped: msg.skipped });
          ev.badFrame('invalid_fields', msg.type);
        }
        for (const f of msg.functions) {
          let clientSide = f.clientSide;
          if (clientSide === undefined) {
            clientSide = this.#offered.has(f.name);
            this.#once('no-client-side', 'FunctionCallRequest without client_side; taken as ours when we offered the function');
          }
          if (!clientSide) {
            this.#log.debug({ function: f.name }, 'server-side function call: Deepgram answers it');
            continue;
          }
          this.#calls.set(f.id, f.name);
          ev.toolCall({ id: f.id, name: f.name, args: f.args });
        }
        return;
      case 'FunctionCallCancelled':
        if (msg.skipped > 0) {
          this.#once('bad-cancel-element', 'FunctionCallCancelled elements without a usable id were skipped; the others were cancelled', { skipped: msg.skipped });
          ev.badFrame('invalid_fields', msg.type);
        }
        for (const id of msg.ids) {
          if (this.#calls.delete(id)) this.#log.debug({ toolCallId: id }, 'function call cancelled by Deepgram: no response will be sent');
        }
        return;
      case 'PromptUpdated':
        this.#log.debug('prompt updated');
        return;
      case 'InjectionRefused':
        this.#log.debug({ description: msg.message }, 'Deepgram refused an injected message');
        return;
      case 'Error': {
        const c = classifyDeepgramError('Error', msg.code, msg.description);
        const hint = KIND_HINTS[c.kind] ?? FIX_HINTS[c.code];
        const message = `Deepgram error ${msg.code || '(no code)'}: ${msg.description}${hint === undefined ? '' : ` (${hint})`}`;
        if (this.#legDoneReported) {
          this.#log.debug({ code: c.code }, 'a further Deepgram error after the leg ended');
          return;
        }
        this.#report({ kind: c.kind, code: c.code, message, legDone: true });
        return;
      }
      case 'Warning': {
        const c = classifyDeepgramError('Warning', msg.code);
        this.#logWarning(msg.code, msg.description);
        ev.error({ kind: c.kind, code: c.code, message: `Deepgram warning ${msg.code}: ${msg.description}`, legDone: false });
        return;
      }
      case 'ignored':
        return;
      case 'unknown':
        this.#once(`unknown:${msg.name}`, 'ignored a Deepgram message of unknown type', { type: msg.name });
        ev.badFrame('unknown_type', msg.name);
        return;
    }
  }

  /** Each warning code is logged once per leg (a repeated warning says nothing new), up to {@link MAX_WARNING_CODES_LOGGED} codes. */
  #logWarning(code: string, description: string): void {
    if (this.#warningCodesLogged.has(code)) return;
    if (this.#warningCodesLogged.size >= MAX_WARNING_CODES_LOGGED) {
      this.#once('warning-codes', `further Deepgram warning codes are not logged (${MAX_WARNING_CODES_LOGGED} already were on this leg)`);
      return;
    }
    this.#warningCodesLogged.add(code);
    this.#log.debug({ code, description }, 'Deepgram warning');
  }

  #sendSettings(conversationId: string): void {
    if (this.#welcomeTimer !== undefined) clearTimeout(this.#welcomeTimer);
    this.#welcomeTimer = undefined;
    this.#conversationId = conversationId;
    this.#phase = 'settings_sent';
    this.#ws.send(this.#settingsText, TEXT);
  }

  /** No `Welcome` in time after open: send `Settings` anyway (once); a later `Welcome` is recorded. */
  #welcomeOverdue(): void {
    this.#welcomeTimer = undefined;
    if (this.#phase !== 'connecting' || !this.isOpen) return;
    this.#once('no-welcome', `no Welcome ${this.#welcomeWaitMs} ms after open: Settings sent without it`);
    this.#welcomeLate = true;
    this.#sendSettings(`local-${randomUUID()}`);
  }

  /** After a barge-in, the new turn shows before `AgentStartedSpeaking`: end the drop and start the reply. */
  #newTurnShown(): void {
    if (!this.#dropAgentAudio) return;
    this.#dropAgentAudio = false;
    this.#inferredStart = true;
    this.#events.responseStart();
  }

  /** At the next barge-in or the end of the leg: audio dropped after the last barge-in with no AgentStartedSpeaking since may have been a reply. */
  #noteLostReply(): void {
    if (this.#droppedSinceBargeIn === 0 || this.#agentStartSinceBargeIn) return;
    this.#once('lost-reply', 'agent audio was dropped after a barge-in and no AgentStartedSpeaking followed: part of a reply may have been lost', {
      frames: this.#droppedSinceBargeIn,
    });
  }

  #onSettingsApplied(): void {
    this.#phase = 'ready';
    const ws = this.#ws;
    const early = this.#early;
    this.#early = [];
    if (early.length > 0) {
      corkForThisTurn(this.#socket);
      for (const item of early) ws.send(item, typeof item === 'string' ? TEXT : BINARY);
      this.#audioSinceTick = this.#earlyAudioBytes > 0;
    }
    if (this.#earlyAudioDropped > 0) this.#log.debug({ frames: this.#earlyAudioDropped }, 'caller audio dropped before SettingsApplied');
    if (this.#keepAliveMs > 0) {
      this.#keepAliveTickMs = Math.max(1, Math.round(this.#keepAliveMs / 3));
      this.#keepAlive = setInterval(() => this.#keepAliveTick(), this.#keepAliveTickMs);
      this.#keepAlive.unref();
    }
    this.#events.ready({ conversationId: this.#conversationId });
  }

  /** Every third of the keep-alive interval: a `KeepAlive` once no caller audio went out for the whole interval. */
  #keepAliveTick(): void {
    if (this.#audioSinceTick) {
      this.#audioSinceTick = false;
      this.#idleMs = 0;
      return;
    }
    this.#idleMs += this.#keepAliveTickMs;
    if (this.#idleMs < this.#keepAliveMs || !this.isOpen) return;
    this.#idleMs = 0;
    this.#ws.send(KEEP_ALIVE, TEXT);
  }

  #stopTimers(): void {
    this.#heartbeat.stop();
    if (this.#keepAlive !== undefined) clearInterval(this.#keepAlive);
    if (this.#welcomeTimer !== undefined) clearTimeout(this.#welcomeTimer);
    this.#keepAlive = undefined;
    this.#welcomeTimer = undefined;
  }

  #report(err: AgentError): void {
    if (err.legDone) this.#legDoneReported = true;
    this.#events.error(err);
  }

  #onClose(code: number, reason: string): void {
    this.#stopTimers();
    if (this.#closedNotified) return;
    if (!this.#byUs && !this.#legDoneReported) {
      const hs = this.#handshake;
      if (hs !== undefined) {
        const fix = HANDSHAKE_HINTS[hs.code];
        this.#report({ kind: hs.kind, code: hs.code, message: `Deepgram refused the connection with HTTP ${hs.status ?? '?'}${fix === undefined ? '' : `: ${fix}`}`, legDone: true });
      } else if (!this.#opened) {
        this.#report({ kind: 'transient', code: 'connect_failed', message: `cannot reach Deepgram at ${this.#url}: ${this.#error ?? 'connection failed'}`, legDone: true });
      } else if (this.#error === 'heartbeat lost') {
        this.#report({ kind: 'transient', code: 'heartbeat_lost', message: 'Deepgram stopped answering pings', legDone: true });
      } else {
        // No `Error` first: the close reason is all there is to tell a refused key or a full project from a drop.
        const kind = errorKindFromWords(reason) ?? 'transient';
        const hint = KIND_HINTS[kind];
        const message = `Deepgram closed the connection without an error (code ${code}${reason === '' ? '' : `, ${reason}`})${hint === undefined ? '' : `: ${hint}`}`;
        this.#report({ kind, code: 'connection_closed', message, legDone: true });
      }
    }
    this.#notifyClose(code, reason, this.#error);
  }

  #notifyClose(code: number, reason: string, error: string | undefined): void {
    if (this.#closedNotified) return;
    this.#closedNotified = true;
    this.#stopTimers();
    this.#early = [];
    this.#noteLostReply();
    if (this.#agentFramesDropped > 0 || this.#badCallerFrames > 0) {
      this.#log.debug({ agentFramesDroppedAfterBargeIn: this.#agentFramesDropped, badCallerFrames: this.#badCallerFrames }, 'agent leg counters');
    }
    const info: AgentCloseInfo = { code, reason, byUs: this.#byUs };
    if (error !== undefined) info.error = error;
    this.#events.closed(info);
  }

  #once(key: string, msg: string, fields: Record<string, unknown> = {}): void {
    if (this.#loggedOnce.has(key)) return;
    this.#loggedOnce.add(key);
    this.#log.debug(fields, msg);
  }
}
