/**
 * Scriptable fake PlayAI agent (`/v1/talk/{agentId}`) for tests, fault
 * injection and benchmarks. By default it answers a valid `setup` with `init`
 * and then does nothing on its own: tests drive each connection by hand
 * (`audio`, `hangup`, `error`, `terminate`…) and inspect what the bridge sent
 * (`frames`, `audioIn`). Listens on 127.0.0.1 on a random port.
 */
import { randomBytes } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer, type RawData } from 'ws';

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
const TALK_PATH = /^\/v1\/talk\/([^/]+)$/;
const AUDIO_STREAM_PREFIX = '{"type":"audioStream","data":"';
/** Close code used after a fatal error frame. */
const POLICY_CLOSE = 1008;

interface Waiter {
  /** Tries to settle; returns true when done. */
  poll(): boolean;
  fail(err: Error): void;
}

function rawToString(data: RawData): string {
  if (Buffer.isBuffer(data)) return data.toString('utf8');
  if (Array.isArray(data)) return Buffer.concat(data).toString('utf8');
  return Buffer.from(data).toString('utf8');
}

/**
 * Registers a waiter that settles when `check` yields a value, rejects after
 * `timeoutMs`, and always clears its timer.
 */
function waitUntil<T>(
  waiters: Set<Waiter>,
  check: () => { value: T } | undefined,
  timeoutMs: number,
  what: string,
  closedError: () => Error | undefined,
): Promise<T> {
  const now = check();
  if (now !== undefined) return Promise.resolve(now.value);
  const early = closedError();
  if (early !== undefined) return Promise.reject(early);
  return new Promise<T>((resolve, reject) => {
    const waiter: Waiter = {
      poll: () => {
        const got = check();
        if (got === undefined) return false;
        clearTimeout(timer);
        waiters.delete(waiter);
        resolve(got.value);
        return true;
      },
      fail: (err) => {
        clearTimeout(timer);
        waiters.delete(waiter);
        reject(err);
      },
    };
    const timer = setTimeout(() => waiter.fail(new Error(`fake agent: timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
    waiters.add(waiter);
  });
}

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
    this.sendRaw(AUDIO_STREAM_PREFIX + b64 + '"}');
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
      this.onSetup(frame);
    } else if (frame.type === 'audioIn' && typeof frame.data === 'string') {
      this.audioIn.push(frame.data);
      if (this.options().echo === true && frame.data.length > 0) this.audio(frame.data);
    }
    for (const w of [...this.waiters]) w.poll();
  }

  private onSetup(setup: Record<string, unknown>): void {
    const opts = this.options();
    if (setup.type !== 'setup') {
      this.error(4400, 'first frame must be setup', true);
      this.close(POLICY_CLOSE, 'first frame must be setup');
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
    private readonly http: Server,
    private readonly wss: WebSocketServer,
    options: FakeAgentOptions,
  ) {
    this.options = options;
    this.url = `ws://127.0.0.1:${(http.address() as AddressInfo).port}`;
    http.on('upgrade', (req, socket, head) => this.onUpgrade(req, socket, head));
  }

  /** Starts listening on 127.0.0.1 (random port). */
  static async start(opts: FakeAgentOptions = {}): Promise<FakeAgentServer> {
    const http = createServer((_req, res) => {
      res.writeHead(426).end();
    });
    const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 1024 * 1024, autoPong: false });
    await new Promise<void>((resolve, reject) => {
      http.once('error', reject);
      http.listen(0, '127.0.0.1', () => {
        http.off('error', reject);
        resolve();
      });
    });
    return new FakeAgentServer(http, wss, { ...opts });
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
    await new Promise<void>((resolve) => this.wss.close(() => resolve()));
    await new Promise<void>((resolve) => {
      this.http.close(() => resolve());
      this.http.closeAllConnections();
    });
    await Promise.all(this.connections.map((c) => c.closed));
  }

  private onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const match = TALK_PATH.exec((req.url ?? '').split('?', 1)[0] ?? '');
    if (this.isClosed || match === null) {
      socket.end(`HTTP/1.1 ${this.isClosed ? '503 Service Unavailable' : '404 Not Found'}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
      return;
    }
    let agentId: string;
    try {
      agentId = decodeURIComponent(match[1] ?? '');
    } catch {
      socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      if (this.isClosed) {
        ws.terminate();
        return;
      }
      this.connections.push(new FakeAgentConnection(ws, req, agentId, () => this.options));
      for (const w of [...this.waiters]) if (w.poll()) break;
    });
  }
}
