/**
 * Scriptable fake PlayAI agent (`/v1/talk/{agentId}`) for tests, fault
 * injection and benchmarks. By default it answers a valid `setup` with `init`
 * and then does nothing on its own: tests drive each connection by hand
 * (`audio`, `hangup`, `error`, `terminate`…) and inspect what the bridge sent
 * (`frames`, `audioIn`). Listens on 127.0.0.1 on a random port.
 */
import { randomBytes } from 'node:crypto';
import type { IncomingHttpHeaders, IncomingMessage } from 'node:http';
import { WebSocket, type RawData } from 'ws';
import { decodeSetup, encodeAudioStream, listenTalkServer, rawToString, type TalkServer } from '../agent/playai/server.js';
import { waiterFor, type Waiter } from './waiting.js';

/** Behaviour of new connections; read when each connection needs it, so it may change between calls. */
export interface FakeAgentOptions {
  /** Reply `init` to a valid `setup`. Default true. */
  autoInit?: boolean;
  /** Delay before the automatic `init`, in ms. Default 0. */
  initDelayMs?: number;
  /** Send this `error` instead of `init`, then close (e.g. 4429). `isFatal` defaults to true. */
  rejectWith?: { code: number; message?: string; isFatal?: boolean };
  /** Answer each non-empty `audioIn` with an `audioStream` of the same data. */
  echo?: boolean;
  /** Require `setup.apiKey === apiKey`, else error 4401 (fatal) and close. */
  apiKey?: string;
  /** Answer WebSocket pings (default true). False simulates a dead TCP peer that still looks open. */
  answerPings?: boolean;
}

const DEFAULT_TIMEOUT_MS = 3000;
/** Close code used after a fatal error frame. */
const POLICY_CLOSE = 1008;

const waitUntil = waiterFor('fake agent');

/** One socket accepted by {@link FakeAgentServer}. */
export class FakeAgentConnection {
  /** The `{agentId}` path segment (URL-decoded). */
  readonly agentId: string;
  /** Headers of the upgrade request. */
  readonly headers: IncomingHttpHeaders;
  /** The first frame, parsed (undefined until it arrives). */
  setup: Record<string, unknown> | undefined;
  /** Every parsed JSON-object text frame in arrival order, `setup` included. */
  readonly frames: Array<Record<string, unknown>> = [];
  /** `data` of every `audioIn` in order (empty keep-alives included). */
  readonly audioIn: string[] = [];
  /** Text frames that were not JSON objects, and binary frames. */
  invalidFrames = 0;
  /** Resolves when the socket has closed, with the close code and reason. */
  readonly closed: Promise<{ code: number; reason: string }>;
  private _conversationId: string | undefined;
  private isClosed = false;
  private readonly waiters = new Set<Waiter>();
  private initTimer: NodeJS.Timeout | undefined;

  /** @internal Created by {@link FakeAgentServer}. */
  constructor(
    private readonly ws: WebSocket,
    req: IncomingMessage,
    agentId: string,
    private readonly options: () => FakeAgentOptions,
  ) {
    this.agentId = agentId;
    this.headers = req.headers;
    this.closed = new Promise((resolve) => {
      ws.once('close', (code, reason) => {
        this.isClosed = true;
        if (this.initTimer !== undefined) clearTimeout(this.initTimer);
        this.initTimer = undefined;
        const err = new Error(`fake agent: connection closed (code ${code})`);
        for (const w of [...this.waiters]) if (!w.poll()) w.fail(err);
        resolve({ code, reason: reason.toString('utf8') });
      });
    });
    ws.on('error', () => {
      /* 'close' follows; nothing else to do */
    });
    ws.on('message', (data, isBinary) => this.onMessage(data, isBinary));
    ws.on('ping', (data) => {
      if (this.options().answerPings !== false && ws.readyState === WebSocket.OPEN) ws.pong(data);
    });
  }

  /** The `conversationId` sent in `init`, if any. */
  get conversationId(): string | undefined {
    return this._conversationId;
  }

  /** Whether the socket is open. */
  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** Sends one JSON message (no-op once the socket is not open). */
  send(msg: Record<string, unknown>): void {
    this.sendRaw(JSON.stringify(msg));
  }

  /** Sends a raw frame: strings as text, Buffers as binary (no-op once not open). */
  sendRaw(data: string | Buffer): void {
    if (this.isOpen) this.ws.send(data, { binary: typeof data !== 'string' });
  }

  /** Sends `init` with the given (or a new random) conversation id. */
  init(conversationId: string = randomBytes(15).toString('base64url')): void {
    this._conversationId = conversationId;
    this.send({ type: 'init', agentOwnerId: 'fake', conversationId });
  }

  /** Sends an `audioStream` chunk (`b64` is sent as is, unchecked). */
  audio(b64: string): void {
    this.sendRaw(encodeAudioStream(b64));
  }

  newAudioStream(): void {
    this.send({ type: 'newAudioStream' });
  }

  voiceActivityStart(): void {
    this.send({ type: 'voiceActivityStart' });
  }

  voiceActivityEnd(): void {
    this.send({ type: 'voiceActivityEnd' });
  }

  /** Sends `onUserTranscript` or `onAgentTranscript`. */
  transcript(role: 'user' | 'agent', message: string): void {
    this.send({ type: role === 'user' ? 'onUserTranscript' : 'onAgentTranscript', message });
  }

  /** Sends `hangup` (default `endedBy: "agent"`); does not close. */
  hangup(endedBy = 'agent'): void {
    this.send({ type: 'hangup', endedBy });
  }

  /** Sends an `error` frame; `isFatal` is omitted when not given. Does not close. */
  error(code: number, message = `fake error ${code}`, isFatal?: boolean): void {
    this.send(isFatal === undefined ? { type: 'error', code, message } : { type: 'error', code, message, isFatal });
  }

  /** Starts a clean close handshake. */
  close(code = 1000, reason = ''): void {
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close(code, reason);
  }

  /** Destroys the TCP connection without a close frame. */
  terminate(): void {
    this.ws.terminate();
  }

  /**
   * Resolves with the first frame (already received or future) matching `pred`.
   * Rejects on timeout or when the socket closes without a match.
   */
  waitFor(pred: (frame: Record<string, unknown>) => boolean, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Record<string, unknown>> {
    return this.wait(() => {
      const f = this.frames.find(pred);
      return f === undefined ? undefined : { value: f };
    }, timeoutMs, 'a matching frame');
  }

  /** Resolves with the first `count` `audioIn` payloads once that many arrived. */
  waitForAudioIn(count: number, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<string[]> {
    return this.wait(
      () => (this.audioIn.length >= count ? { value: this.audioIn.slice(0, count) } : undefined),
      timeoutMs,
      `${count} audioIn frame(s) (got ${this.audioIn.length})`,
    );
  }

  /** Resolves with the parsed first frame. */
  waitForSetup(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Record<string, unknown>> {
    return this.wait(() => (this.setup === undefined ? undefined : { value: this.setup }), timeoutMs, 'setup');
  }

  private wait<T>(check: () => { value: T } | undefined, timeoutMs: number, what: string): Promise<T> {
    return waitUntil(this.waiters, check, timeoutMs, what, () =>
      this.isClosed ? new Error(`fake agent: connection closed before ${what}`) : undefined,
    );
  }

  private onMessage(data: RawData, isBinary: boolean): void {
    if (isBinary) {
      this.invalidFrames++;
      return;
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(rawToString(data));
    } catch {
      this.invalidFrames++;
      return;
    }
    if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
      this.invalidFrames++;
      return;
    }
    const frame = parsed as Record<string, unknown>;
    this.frames.push(frame);
    if (this.setup === undefined && this.frames.length === 1) {
      this.setup = frame;
      this.onSetup(rawToString(data));
    } else if (frame.type === 'audioIn' && typeof frame.data === 'string') {
      this.audioIn.push(frame.data);
      if (this.options().echo === true && frame.data.length > 0) this.audio(frame.data);
    }
    for (const w of [...this.waiters]) w.poll();
  }

  private onSetup(text: string): void {
    const opts = this.options();
    const setup = decodeSetup(text);
    if (typeof setup === 'string') {
      this.error(4400, setup, true);
      this.close(POLICY_CLOSE, setup.slice(0, 120));
      return;
    }
    if (opts.apiKey !== undefined && setup.apiKey !== opts.apiKey) {
      this.error(4401, 'invalid apiKey', true);
      this.close(POLICY_CLOSE, 'unauthorized');
      return;
    }
    if (opts.rejectWith !== undefined) {
      const { code, message = `rejected with ${code}`, isFatal = true } = opts.rejectWith;
      this.error(code, message, isFatal);
      this.close(POLICY_CLOSE, message.slice(0, 120));
      return;
    }
    if (opts.autoInit === false) return;
    const delay = opts.initDelayMs ?? 0;
    if (delay <= 0) {
      this.init();
      return;
    }
    this.initTimer = setTimeout(() => {
      this.initTimer = undefined;
      this.init();
    }, delay);
  }
}

/** A fake PlayAI agent server on 127.0.0.1 (random port). */
export class FakeAgentServer {
  /** `ws://127.0.0.1:PORT`; the bridge appends `/v1/talk/{agentId}`. */
  readonly url: string;
  /** Every accepted connection, in order. */
  readonly connections: FakeAgentConnection[] = [];
  /** Behaviour for connections; may be changed between calls. */
  options: FakeAgentOptions;
  private claimed = 0;
  private readonly waiters = new Set<Waiter>();
  private isClosed = false;

  private constructor(
    private readonly server: TalkServer,
    options: FakeAgentOptions,
  ) {
    this.options = options;
    this.url = server.url;
  }

  /** Starts listening on 127.0.0.1 (random port). */
  static async start(opts: FakeAgentOptions = {}): Promise<FakeAgentServer> {
    let self: FakeAgentServer | undefined;
    const server = await listenTalkServer({
      ws: { maxPayload: 1024 * 1024, autoPong: false },
      onConnection: (ws, req, agentId) => {
        if (self === undefined || self.isClosed) {
          ws.terminate();
          return;
        }
        const owner = self;
        owner.connections.push(new FakeAgentConnection(ws, req, agentId, () => owner.options));
        for (const w of [...owner.waiters]) if (w.poll()) break;
      },
    });
    self = new FakeAgentServer(server, { ...opts });
    return self;
  }

  /** Resolves with the oldest connection not yet returned by this method, waiting if needed. */
  nextConnection(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<FakeAgentConnection> {
    return waitUntil(
      this.waiters,
      () => {
        const conn = this.connections[this.claimed];
        if (conn === undefined) return undefined;
        this.claimed++;
        return { value: conn };
      },
      timeoutMs,
      'a connection',
      () => (this.isClosed ? new Error('fake agent: server closed') : undefined),
    );
  }

  /** Terminates every socket, rejects pending waits and stops listening. */
  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    const err = new Error('fake agent: server closed');
    for (const w of [...this.waiters]) w.fail(err);
    for (const conn of this.connections) conn.terminate();
    await this.server.close();
    await Promise.all(this.connections.map((c) => c.closed));
  }
}
