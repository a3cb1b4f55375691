/**
 * The carrier leg: one Twilio Media Streams WebSocket.
 *
 * Listeners are attached in the constructor, synchronously with the upgrade,
 * so `connected`/`start` cannot be missed. Until `start` the connection is in
 * its handshake phase (bounded by a timer); `start` is handed to `onStart`,
 * which either returns the handlers of a call session or refuses the stream.
 * Afterwards every decoded frame goes to those handlers. Frames that fail to
 * decode, carry another streamSid, or arrive out of place are reported through
 * `onBadFrame` and dropped; the call goes on.
 */
import WebSocket from 'ws';
import type { Socket } from 'node:net';
import { newSpan } from '../../util/jsonBytes.js';
import { scanTwilioMedia } from './scan.js';
import { corkForThisTurn, socketOf } from '../../util/writeBatch.js';
import { closeWebSocket } from '../../util/wsClose.js';
import { decodeTwilioMessage, MAX_INBOUND_PAYLOAD_CHARS, TwilioEncoder, type TwilioBadFrameKind, type TwilioStart } from './codec.js';

/** Why a frame from Twilio was dropped (metric label). */
export type CarrierBadFrameKind = TwilioBadFrameKind | 'wrong_stream_sid' | 'before_start' | 'duplicate_start' | 'late_start';

/** What the session receives from the carrier leg. */
export interface CarrierHandlers {
  onMedia(payload: string): void;
  /** The hot path: caller audio whose base64 is `buf[start, end)`, validated; `buf` is only valid during the call. */
  onMediaBytes(buf: Buffer, start: number, end: number): void;
  onMark(name: string): void;
  onDtmf(digit: string): void;
  onStop(): void;
  /** The socket closed (after or without `stop`). Called once. */
  onClose(code: number): void;
  onBadFrame(kind: CarrierBadFrameKind, name?: string): void;
  /** A handler threw: the session must end the call (the process must not crash). */
  onInternalError(err: unknown): void;
}

/** What the session may send to the carrier leg: only Twilio's three outbound messages. */
export interface CarrierLeg {
  /** Agent audio to the caller: the base64 `buf[start, end)`, validated, sent without making a string of it. */
  sendMediaBytes(buf: Buffer, start: number, end: number): void;
  sendMark(name: string): void;
  sendClear(): void;
  close(code?: number, reason?: string): void;
  readonly isOpen: boolean;
  readonly bufferedAmount: number;
}

export type StartDecision =
  | { accept: true; handlers: CarrierHandlers }
  | { accept: false; reason: string };

export interface TwilioStreamOptions {
  startTimeoutMs: number;
  /**
   * Decides what to do with `start`; called at most once. It may answer later (a promise: the
   * stream token is checked in Redis when REDIS_URL is set); frames arriving meanwhile are kept
   * in order and delivered once it has answered, and a close meanwhile is delivered after them.
   */
  onStart(start: TwilioStart, leg: CarrierLeg): StartDecision | Promise<StartDecision>;
  /** Handshake-phase events (bad frames before start, timeout, refusal, close before start). */
  onHandshakeEvent(event: 'start_timeout' | 'closed_before_start' | 'refused', detail?: string): void;
  onHandshakeBadFrame(kind: CarrierBadFrameKind, name?: string): void;
}

/** Close codes the bridge uses on the Twilio socket. */
export const CLOSE_NORMAL = 1000;
export const CLOSE_POLICY = 1008;

/** ws send options for a Buffer that holds a text message. */
const TEXT = { binary: false } as const;

export class TwilioStreamConnection implements CarrierLeg {
  readonly #ws: WebSocket;
  readonly #span = newSpan();
  readonly #socket: Socket | undefined;
  readonly #opts: TwilioStreamOptions;
  #encoder: TwilioEncoder | undefined;
  #streamSid = '';
  #handlers: CarrierHandlers | undefined;
  #startTimer: NodeJS.Timeout | undefined;
  #done = false;
  /** The media frame being delivered (only during `onMediaBytes`), for {@link mediaTimestampMs}. */
  #frame: Buffer | undefined;
  /** Frames received while an async `onStart` decides (undefined otherwise: the hot path checks this once). */
  #held: Array<[WebSocket.RawData, boolean]> | undefined;
  /** The close code of a socket that closed while an async `onStart` decided. */
  #closedWhileDeciding: number | undefined;

  constructor(ws: WebSocket, opts: TwilioStreamOptions) {
    this.#ws = ws;
    this.#socket = socketOf(ws);
    this.#opts = opts;
    ws.on('message', (data, isBinary) => this.#onMessage(data, isBinary));
    ws.on('close', (code) => this.#onClose(code));
    ws.on('error', (err: Error & { code?: string }) => {
      if (err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH') this.#bad('oversized');
    });
    this.#startTimer = setTimeout(() => {
      this.#startTimer = undefined;
      if (this.#handlers === undefined && !this.#done) {
        this.#done = true;
        this.#opts.onHandshakeEvent('start_timeout');
        this.close(CLOSE_POLICY, 'start timeout');
      }
    }, opts.startTimeoutMs);
  }

  get isOpen(): boolean {
    return this.#ws.readyState === WebSocket.OPEN;
  }

  get bufferedAmount(): number {
    return this.#ws.bufferedAmount;
  }

  get streamSid(): string {
    return this.#streamSid;
  }

  /** Twilio's `media.timestamp` (ms since the stream started) of the frame being delivered now; read on demand. */
  get mediaTimestampMs(): number | undefined {
    const buf = this.#frame;
    const { tsStart, tsEnd } = this.#span;
    if (buf === undefined || tsStart < 0 || tsEnd <= tsStart || tsEnd - tsStart > 12) return undefined;
    let v = 0;
    for (let i = tsStart; i < tsEnd; i++) {
      const d = (buf[i] as number) - 0x30;
      if (d < 0 || d > 9) return undefined;
      v = v * 10 + d;
    }
    return v;
  }

  sendMediaBytes(buf: Buffer, start: number, end: number): void {
    const encoder = this.#encoder;
    if (encoder === undefined || this.#ws.readyState !== WebSocket.OPEN) return;
    corkForThisTurn(this.#socket);
    this.#ws.send(encoder.mediaBytes(buf, start, end), TEXT);
  }

  sendMark(name: string): void {
    if (this.#encoder !== undefined && this.#ws.readyState === WebSocket.OPEN) {
      corkForThisTurn(this.#socket);
      this.#ws.send(this.#encoder.mark(name));
    }
  }

  sendClear(): void {
    if (this.#encoder !== undefined && this.#ws.readyState === WebSocket.OPEN) this.#ws.send(this.#encoder.clear());
  }

  close(code = CLOSE_NORMAL, reason = ''): void {
    this.#clearStartTimer();
    closeWebSocket(this.#ws, code, reason);
  }

  #clearStartTimer(): void {
    if (this.#startTimer !== undefined) {
      clearTimeout(this.#startTimer);
      this.#startTimer = undefined;
    }
  }

  #bad(kind: CarrierBadFrameKind, name?: string): void {
    if (this.#handlers !== undefined) this.#handlers.onBadFrame(kind, name);
    else this.#opts.onHandshakeBadFrame(kind, name);
  }

  #onMessage(data: WebSocket.RawData, isBinary: boolean): void {
    if (this.#held !== undefined) {
      this.#held.push([data, isBinary]);
      return;
    }
    try {
      this.#dispatch(data, isBinary);
    } catch (err) {
      const h = this.#handlers;
      if (h !== undefined) h.onInternalError(err);
      else this.close(CLOSE_POLICY, 'internal error');
    }
  }

  #dispatch(data: WebSocket.RawData, isBinary: boolean): void {
    if (isBinary) {
      this.#bad('binary');
      return;
    }
    const h = this.#handlers;
    const buf = Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data);
    // Hot path: a media frame of Twilio's exact shape goes through without JSON.parse or strings.
    const encoder = this.#encoder;
    if (h !== undefined && encoder !== undefined && scanTwilioMedia(buf, this.#span, MAX_INBOUND_PAYLOAD_CHARS)) {
      const span = this.#span;
      if (encoder.isStreamSid(buf, span.sidStart, span.sidEnd)) {
        this.#frame = buf;
        try {
          h.onMediaBytes(buf, span.audioStart, span.audioEnd);
        } finally {
          this.#frame = undefined;
        }
      } else h.onBadFrame('wrong_stream_sid', 'media');
      return;
    }
    const msg = decodeTwilioMessage(buf.toString('utf8'));
    switch (msg.event) {
      case undefined:
        this.#bad(msg.kind, msg.name);
        return;
      case 'media':
        if (h === undefined) this.#bad('before_start', 'media');
        else if (msg.streamSid !== this.#streamSid) h.onBadFrame('wrong_stream_sid', 'media');
        else h.onMedia(msg.payload);
        return;
      case 'mark':
        if (h === undefined) this.#bad('before_start', 'mark');
        else if (msg.streamSid !== this.#streamSid) h.onBadFrame('wrong_stream_sid', 'mark');
        else h.onMark(msg.name);
        return;
      case 'dtmf':
        if (h === undefined) this.#bad('before_start', 'dtmf');
        else if (msg.streamSid !== this.#streamSid) h.onBadFrame('wrong_stream_sid', 'dtmf');
        else h.onDtmf(msg.digit);
        return;
      case 'stop':
        if (h === undefined) {
          this.#bad('before_start', 'stop');
          this.close(CLOSE_NORMAL, 'stopped before start');
        } else if (msg.streamSid !== this.#streamSid) h.onBadFrame('wrong_stream_sid', 'stop');
        else h.onStop();
        return;
      case 'connected':
        return;
      case 'start':
        this.#onStart(msg);
        return;
    }
  }

  #onStart(start: TwilioStart): void {
    if (this.#handlers !== undefined) {
      this.#bad('duplicate_start', 'start');
      return;
    }
    // Too late (the start timeout already closed the socket): the token stays unused.
    if (this.#done || this.#ws.readyState !== WebSocket.OPEN) {
      this.#bad('late_start', 'start');
      return;
    }
    this.#clearStartTimer();
    this.#streamSid = start.streamSid;
    this.#encoder = new TwilioEncoder(start.streamSid);
    const decision = this.#opts.onStart(start, this);
    if (decision instanceof Promise) {
      this.#held = [];
      decision.then(
        (d) => this.#decided(d),
        () => this.#decided({ accept: false, reason: 'internal_error' }),
      );
      return;
    }
    this.#decide(decision);
  }

  /** An async `start` decision arrived: frames held meanwhile go through in order, then a close that came meanwhile. */
  #decided(decision: StartDecision): void {
    const held = this.#held ?? [];
    this.#held = undefined;
    const closed = this.#closedWhileDeciding;
    this.#closedWhileDeciding = undefined;
    this.#decide(decision);
    if (decision.accept) for (const [data, isBinary] of held) this.#onMessage(data, isBinary);
    if (closed !== undefined) this.#onClose(closed);
  }

  #decide(decision: StartDecision): void {
    if (decision.accept) {
      this.#handlers = decision.handlers;
    } else {
      this.#done = true;
      this.#encoder = undefined;
      this.#opts.onHandshakeEvent('refused', decision.reason);
      this.close(CLOSE_POLICY, decision.reason.slice(0, 100));
    }
  }

  #onClose(code: number): void {
    this.#clearStartTimer();
    if (this.#held !== undefined) {
      // `start` is being decided: the close is delivered after the decision (and the frames before it).
      this.#closedWhileDeciding = code;
      return;
    }
    const h = this.#handlers;
    this.#handlers = undefined;
    this.#encoder = undefined;
    if (h !== undefined) {
      try {
        h.onClose(code);
      } catch (err) {
        h.onInternalError(err);
      }
    } else if (!this.#done) this.#opts.onHandshakeEvent('closed_before_start');
    this.#done = true;
  }
}
