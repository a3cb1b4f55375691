/**
 * The agent leg: one WebSocket to a PlayAI-protocol agent (`/v1/talk/{agentId}`).
 *
 * Transport only: it opens the socket, sends `setup` first, decodes frames with
 * the pure codec and hands them to the session through {@link PlayAiSocketHandlers}.
 * It owns its socket and heartbeat timer and releases both in `close()`.
 */
import WebSocket from 'ws';
import type { Socket } from 'node:net';
import { newSpan } from '../../util/jsonBytes.js';
import { scanAgentAudio } from './scan.js';
import { corkForThisTurn, socketOf } from '../../util/writeBatch.js';
import { closeWebSocket } from '../../util/wsClose.js';
import { AUDIO_IN_HEAD as AUDIO_IN_HEAD_TEXT, AUDIO_IN_TAIL as AUDIO_IN_TAIL_TEXT, decodeAgentMessage, encodeAudioIn, encodeSetup, type AgentBadFrameKind, type AgentServerMessage, type AgentSetup } from './codec.js';
import { Heartbeat } from '../heartbeat.js';

export interface PlayAiSocketHandlers {
  onMessage(msg: AgentServerMessage): void;
  /**
   * The hot path: an `audioStream` whose base64 data is `buf[start, end)`,
   * already validated. `buf` is only valid during the call.
   */
  onAudio(buf: Buffer, start: number, end: number): void;
  onBadFrame(kind: AgentBadFrameKind, name?: string): void;
  /** The socket is gone (closed by either side, failed to connect, or missed heartbeats). Called once. */
  onClose(info: PlayAiCloseInfo): void;
}

export interface PlayAiCloseInfo {
  code: number;
  reason: string;
  /** Set when the socket failed (network error, handshake refused, heartbeat lost). */
  error?: string;
  /** True when `close()` was called by us. */
  byUs: boolean;
}

export interface PlayAiSocketOptions {
  /** Base URL, e.g. `wss://api.play.ai`; the socket goes to `${baseUrl}/v1/talk/${agentId}`. */
  baseUrl: string;
  agentId: string;
  setup: AgentSetup;
  handlers: PlayAiSocketHandlers;
  /** Largest frame accepted from the agent (default {@link DEFAULT_AGENT_MAX_PAYLOAD}); a bigger one closes the socket with 1009. */
  maxPayload?: number;
  /** Ping interval; the socket is terminated when a pong does not come back in time. 0 disables. */
  heartbeatMs?: number;
  handshakeTimeoutMs?: number;
}

/** What the session needs from an agent leg; tests may substitute their own. */
export interface PlayAiSocket {
  /** Sends one `audioIn` (base64 μ-law, already validated). Returns false if the socket is not open. */
  sendAudio(b64: string): boolean;
  /** Same, with the base64 taken from `buf[start, end)` without making a string of it. */
  sendAudioBytes(buf: Buffer, start: number, end: number): boolean;
  /** Sends text as `customInput` (documented by the SDK as text input; its semantics are not). */
  sendText?(text: string): boolean;
  /** Bytes queued in the socket but not yet written. */
  readonly bufferedAmount: number;
  readonly isOpen: boolean;
  close(code?: number, reason?: string): void;
}

export type PlayAiConnector = (opts: PlayAiSocketOptions) => PlayAiSocket;

export const DEFAULT_AGENT_MAX_PAYLOAD = 4 * 1024 * 1024;

const AUDIO_IN_HEAD = Buffer.from(AUDIO_IN_HEAD_TEXT, 'latin1');
const AUDIO_IN_TAIL = Buffer.from(AUDIO_IN_TAIL_TEXT, 'latin1');
/** ws send options for a Buffer that holds a text message. */
const TEXT = { binary: false } as const;

/** Opens an agent leg over `ws`. */
export const connectAgent: PlayAiConnector = (opts) => new WsPlayAiSocket(opts);

class WsPlayAiSocket implements PlayAiSocket {
  readonly #ws: WebSocket;
  readonly #handlers: PlayAiSocketHandlers;
  readonly #heartbeat = new Heartbeat();
  #closedNotified = false;
  #socket: Socket | undefined;
  #byUs = false;
  #error: string | undefined;
  readonly #span = newSpan();
  /** The socket's maxPayload: the fast audio scan accepts nothing the socket would not. */
  readonly #maxPayload: number;

  constructor(opts: PlayAiSocketOptions) {
    this.#handlers = opts.handlers;
    this.#maxPayload = opts.maxPayload ?? DEFAULT_AGENT_MAX_PAYLOAD;
    const url = `${opts.baseUrl}/v1/talk/${encodeURIComponent(opts.agentId)}`;
    this.#ws = new WebSocket(url, {
      perMessageDeflate: false,
      maxPayload: this.#maxPayload,
      handshakeTimeout: opts.handshakeTimeoutMs ?? 10_000,
      // Every frame is validated by our own codec (ASCII base64 audio, JSON otherwise).
      skipUTF8Validation: true,
    });
    const ws = this.#ws;
    const setupText = encodeSetup(opts.setup);
    ws.on('open', () => {
      this.#socket = socketOf(ws);
      ws.send(setupText);
      this.#heartbeat.start(ws, opts.heartbeatMs ?? 0, () => {
        this.#error ??= 'heartbeat lost';
        ws.terminate();
      });
    });
    ws.on('message', (data, isBinary) => this.#onMessage(data, isBinary));
    ws.on('error', (err: Error & { code?: string }) => {
      // ws emits 'close' after 'error'; remember why.
      this.#error ??= err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH' ? 'oversized frame' : err.message || 'socket error';
      if (err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') this.#handlers.onBadFrame('oversized');
    });
    ws.on('unexpected-response', (_req, res) => {
      this.#error = `handshake refused with HTTP ${res.statusCode ?? '?'}`;
      res.resume();
      ws.terminate();
    });
    ws.on('close', (code, reason) => this.#notifyClose(code, reason.toString('utf8').slice(0, 200)));
  }

  get isOpen(): boolean {
    return this.#ws.readyState === WebSocket.OPEN;
  }

  get bufferedAmount(): number {
    return this.#ws.bufferedAmount;
  }

  sendAudio(b64: string): boolean {
    if (this.#ws.readyState !== WebSocket.OPEN) return false;
    corkForThisTurn(this.#socket);
    this.#ws.send(encodeAudioIn(b64));
    return true;
  }

  sendAudioBytes(buf: Buffer, start: number, end: number): boolean {
    if (this.#ws.readyState !== WebSocket.OPEN) return false;
    const head = AUDIO_IN_HEAD.length;
    const out = Buffer.allocUnsafe(head + (end - start) + AUDIO_IN_TAIL.length);
    AUDIO_IN_HEAD.copy(out, 0);
    buf.copy(out, head, start, end);
    AUDIO_IN_TAIL.copy(out, head + (end - start));
    corkForThisTurn(this.#socket);
    this.#ws.send(out, TEXT);
    return true;
  }

  sendText(text: string): boolean {
    if (this.#ws.readyState !== WebSocket.OPEN) return false;
    this.#ws.send(JSON.stringify({ type: 'customInput', data: text }));
    return true;
  }

  close(code = 1000, reason = ''): void {
    this.#byUs = true;
    this.#stopHeartbeat();
    // Do not wait for the agent to complete the close handshake.
    closeWebSocket(this.#ws, code, reason);
  }

  #stopHeartbeat(): void {
    this.#heartbeat.stop();
  }

  #onMessage(data: WebSocket.RawData, isBinary: boolean): void {
    this.#heartbeat.heard();
    if (isBinary) {
      this.#handlers.onBadFrame('binary');
      return;
    }
    const buf = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
    if (scanAgentAudio(buf, this.#span, this.#maxPayload)) {
      this.#handlers.onAudio(buf, this.#span.audioStart, this.#span.audioEnd);
      return;
    }
    const text = buf.toString('utf8');
    const msg = decodeAgentMessage(text);
    if (msg.type === undefined) this.#handlers.onBadFrame(msg.kind, msg.name);
    else this.#handlers.onMessage(msg);
  }

  #notifyClose(code: number, reason: string): void {
    this.#stopHeartbeat();
    if (this.#closedNotified) return;
    this.#closedNotified = true;
    const info: PlayAiCloseInfo = { code, reason, byUs: this.#byUs };
    if (this.#error !== undefined) info.error = this.#error;
    this.#handlers.onClose(info);
  }
}
