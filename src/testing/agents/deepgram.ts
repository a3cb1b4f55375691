/**
 * A fake Deepgram Voice Agent (`/v1/agent/converse`) for tests: protocol-faithful
 * where the real service is strict, scriptable like `testing/fakeAgent.ts`.
 * Written from the protocol facts (`/work/shared/reference/agent-providers.md` §3
 * and §7), not from the client's codec, so a bug in one is not mirrored in the other.
 *
 * Strictness:
 * - the upgrade needs `Authorization: Token <key>` (401 otherwise; the key is
 *   checked when {@link FakeDeepgramOptions.apiKey} is set); beyond
 *   `maxConnections` concurrent sockets the upgrade is refused with 429;
 * - `Welcome {request_id}` on open; the first client message must be `Settings`
 *   (anything else, audio included: `NON_SETTINGS_MESSAGE_BEFORE_SETTINGS`, then
 *   close); a second `Settings`: `SETTINGS_ALREADY_APPLIED`, then close;
 * - `Settings` must declare the audio the fake agent is set for (default mulaw
 *   8000 in, mulaw 8000 out with `container: "none"` given explicitly, since raw
 *   μ-law is what a Twilio bridge needs), else `INVALID_SETTINGS`, then close;
 * - `CLIENT_MESSAGE_TIMEOUT` (then close) when neither audio nor `KeepAlive`
 *   arrives for `clientMessageTimeoutMs`;
 * - unparsable or unknown client messages: `UNPARSABLE_CLIENT_MESSAGE`, then close.
 *
 * Fake-only choices (not provider facts): the close code after a fatal `Error` is
 * 1008 (client's fault) or 1011 (the fake's own `serverError`), and the timeout
 * defaults to 10 s.
 */
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingHttpHeaders, type IncomingMessage, type Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { z } from 'zod';
import { waiterFor, type Waiter } from '../waiting.js';

export const FAKE_DEEPGRAM_PATH = '/v1/agent/converse';

export interface FakeAudioSpec {
  input: { encoding: string; sample_rate: number };
  output: { encoding: string; sample_rate: number; container: string };
}

/** Behaviour of new connections; read when each connection needs it, so it may change between calls. */
export interface FakeDeepgramOptions {
  /** When set, the upgrade needs `Authorization: Token <apiKey>` exactly (else 401). Any `Token <key>` otherwise. */
  apiKey?: string;
  /** Refuse upgrades with 429 while this many connections are open. Default unlimited. */
  maxConnections?: number;
  /** Answer a valid `Settings` with `SettingsApplied` at once (default true); else call `applySettings()`. */
  autoApply?: boolean;
  /** The audio this fake agent is set for (default mulaw 8000 in, mulaw 8000 container none out). */
  audio?: FakeAudioSpec;
  /** `CLIENT_MESSAGE_TIMEOUT` after this long without audio or `KeepAlive` (default 10 000 ms; 0 disables). */
  clientMessageTimeoutMs?: number;
  /** Answer WebSocket pings (default true). False simulates a dead peer that still looks open. */
  answerPings?: boolean;
  /** Send `Welcome` as soon as the socket opens (default true); else call `welcome()`. */
  autoWelcome?: boolean;
}

export const DEFAULT_FAKE_AUDIO: FakeAudioSpec = {
  input: { encoding: 'mulaw', sample_rate: 8000 },
  output: { encoding: 'mulaw', sample_rate: 8000, container: 'none' },
};

const DEFAULT_WAIT_MS = 3000;
const DEFAULT_CLIENT_TIMEOUT_MS = 10_000;
/** Close code after an error the client caused (fake choice). */
const CLIENT_FAULT_CLOSE = 1008;

// --- Settings as the reference describes them (§3.2) -------------------------

const Provider = z.looseObject({ type: z.string().min(1) });
const Fn = z.looseObject({
  name: z.string().min(1),
  description: z.string().optional(),
  parameters: z.record(z.string(), z.unknown()).optional(),
  endpoint: z.looseObject({ url: z.string() }).optional(),
  defer_until_eot: z.boolean().optional(),
});
const Think = z.looseObject({ provider: Provider, prompt: z.string().optional(), functions: z.array(Fn).optional() });
const Speak = z.looseObject({ provider: Provider });
const HistoryMessage = z.union([
  z.strictObject({ type: z.literal('History'), role: z.enum(['user', 'assistant']), content: z.string() }),
  z.strictObject({
    type: z.literal('History'),
    function_calls: z.array(z.looseObject({ id: z.string(), name: z.string(), client_side: z.boolean(), arguments: z.string(), response: z.string() })),
  }),
]);
const SettingsSchema = z.looseObject({
  type: z.literal('Settings'),
  audio: z.looseObject({
    input: z.looseObject({ encoding: z.string(), sample_rate: z.number().int().positive() }).optional(),
    output: z
      .looseObject({ encoding: z.string().optional(), sample_rate: z.number().int().positive().optional(), container: z.string().optional(), bitrate: z.number().optional() })
      .optional(),
  }),
  agent: z.looseObject({
    listen: z.looseObject({ provider: Provider }).optional(),
    think: z.union([Think, z.array(Think).min(1)]).optional(),
    speak: z.union([Speak, z.array(Speak).min(1)]).optional(),
    greeting: z.string().optional(),
    context: z.looseObject({ messages: z.array(HistoryMessage).optional() }).optional(),
    language: z.string().optional(),
  }),
  tags: z.array(z.string()).optional(),
  experimental: z.boolean().optional(),
  mip_opt_out: z.boolean().optional(),
  flags: z.looseObject({ history: z.boolean().optional() }).optional(),
});

// --- waiting ------------------------------------------------------------------

const waitOn = waiterFor('fake deepgram');

const rawBuffer = (data: RawData): Buffer => (Buffer.isBuffer(data) ? data : Array.isArray(data) ? Buffer.concat(data) : Buffer.from(data));

function objectOf(text: string): Record<string, unknown> | undefined {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    return undefined;
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) return undefined;
  return { ...v };
}

// --- one connection -------------------------------------------------------------

/** One socket accepted by {@link FakeDeepgramServer}. */
export class FakeDeepgramConnection {
  /** Headers of the upgrade request. */
  readonly headers: IncomingHttpHeaders;
  /** The `request_id` sent in `Welcome`. */
  readonly requestId = randomUUID();
  /** What arrived, in order: each text frame's `type` (or `(invalid)`), `(binary)` for audio. */
  readonly sequence: string[] = [];
  /** Every parsed text frame in arrival order (`Settings` included). */
  readonly frames: Array<Record<string, unknown>> = [];
  /** The accepted `Settings` (undefined until one was accepted). */
  settings: Record<string, unknown> | undefined;
  settingsApplied = false;
  /** Caller audio as received (raw bytes of each binary frame). */
  readonly audioChunks: Buffer[] = [];
  /** Binary frames that arrived after `Settings` but before `SettingsApplied`. */
  audioBeforeApplied = 0;
  keepAlives = 0;
  readonly injectUserMessages: string[] = [];
  readonly injectAgentMessages: string[] = [];
  readonly updatePrompts: string[] = [];
  readonly functionCallResponses: Array<{ id: string; name: string; content: string }> = [];
  /** Codes of every `Error` this fake sent. */
  readonly errorsSent: string[] = [];
  /** Resolves when the socket has closed, with the close code and reason. */
  readonly closed: Promise<{ code: number; reason: string }>;
  private isClosed = false;
  private readonly waiters = new Set<Waiter>();
  private idleTimer: NodeJS.Timeout | undefined;
  private functionSeq = 0;

  /** @internal Created by {@link FakeDeepgramServer}. */
  constructor(
    private readonly ws: WebSocket,
    req: IncomingMessage,
    private readonly options: () => FakeDeepgramOptions,
  ) {
    this.headers = req.headers;
    this.closed = new Promise((resolve) => {
      ws.once('close', (code, reason) => {
        this.isClosed = true;
        this.stopIdleTimer();
        const err = new Error(`fake deepgram: connection closed (code ${code})`);
        for (const w of [...this.waiters]) if (!w.poll()) w.fail(err);
        resolve({ code, reason: reason.toString('utf8') });
      });
    });
    ws.on('error', () => {
      /* 'close' follows */
    });
    ws.on('message', (data, isBinary) => this.onMessage(data, isBinary));
    ws.on('ping', (data) => {
      if (this.options().answerPings !== false && ws.readyState === WebSocket.OPEN) ws.pong(data);
    });
    if (this.options().autoWelcome !== false) this.welcome();
    this.armIdleTimer();
  }

  /** All caller audio received so far, concatenated. */
  get audio(): Buffer {
    return Buffer.concat(this.audioChunks);
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** Sends one JSON text frame (no-op once the socket is not open). */
  send(msg: Record<string, unknown>): void {
    this.sendText(JSON.stringify(msg));
  }

  /** Sends a raw text frame. */
  sendText(text: string): void {
    if (this.isOpen) this.ws.send(text, { binary: false });
  }

  /** Sends a binary frame (agent audio: raw bytes in the configured output format). */
  sendBinary(bytes: Uint8Array): void {
    if (this.isOpen) this.ws.send(Buffer.from(bytes), { binary: true });
  }

  /** Sends `Welcome {request_id}` (when `autoWelcome` is false). */
  welcome(): void {
    this.send({ type: 'Welcome', request_id: this.requestId });
  }

  /** Sends `SettingsApplied` (when `autoApply` is false). */
  applySettings(): void {
    this.settingsApplied = true;
    this.send({ type: 'SettingsApplied' });
  }

  /** `AgentStartedSpeaking`: the start of a new agent reply. */
  startSpeaking(): void {
    this.send({ type: 'AgentStartedSpeaking', total_latency: 0.8, tts_latency: 0.3, ttt_latency: 0.5 });
  }

  /** `AgentAudioDone`: all audio of the reply was sent. */
  audioDone(): void {
    this.send({ type: 'AgentAudioDone' });
  }

  /**
   * A whole agent reply: `AgentStartedSpeaking`, the audio as binary frames of
   * `chunkMs` (8 bytes per ms of μ-law 8 kHz), `AgentAudioDone`, then
   * `ConversationText` (assistant) when `text` is given.
   */
  speak(mulaw: Uint8Array, opts: { chunkMs?: number; text?: string } = {}): void {
    const chunk = Math.max(1, (opts.chunkMs ?? 20) * 8);
    this.startSpeaking();
    for (let i = 0; i < mulaw.length; i += chunk) this.sendBinary(mulaw.subarray(i, Math.min(i + chunk, mulaw.length)));
    this.audioDone();
    if (opts.text !== undefined) this.conversationText('assistant', opts.text);
  }

  /** `UserStartedSpeaking` (barge-in), then optionally a late binary chunk of the reply the server is discarding. */
  userSpeaks(opts: { lateAudio?: Uint8Array } = {}): void {
    this.send({ type: 'UserStartedSpeaking' });
    if (opts.lateAudio !== undefined) this.sendBinary(opts.lateAudio);
  }

  /** `ConversationText` for the user's confirmed turn. */
  userText(content: string): void {
    this.conversationText('user', content);
  }

  conversationText(role: 'user' | 'assistant', content: string): void {
    this.send({ type: 'ConversationText', role, content });
  }

  /** `FunctionCallRequest` with one function (arguments as a JSON string); returns its id. */
  callFunction(name: string, args: Record<string, unknown>, opts: { clientSide?: boolean; id?: string } = {}): string {
    const id = opts.id ?? `fc_${++this.functionSeq}_${randomUUID().slice(0, 8)}`;
    this.send({ type: 'FunctionCallRequest', functions: [{ id, name, arguments: JSON.stringify(args), client_side: opts.clientSide ?? true }] });
    return id;
  }

  /** `FunctionCallCancelled` for earlier calls. */
  cancelFunctions(calls: Array<{ id: string; name: string }>): void {
    this.send({ type: 'FunctionCallCancelled', functions: calls });
  }

  /** An `Error` frame (does not close; see {@link fail}). */
  error(code: string, description = `fake error ${code}`): void {
    this.errorsSent.push(code);
    this.send({ type: 'Error', code, description });
  }

  /** A `Warning` frame. */
  warning(code: string, description = `fake warning ${code}`): void {
    this.send({ type: 'Warning', code, description });
  }

  /** `Error` then close, as the service does after a fatal error. */
  fail(code: string, description?: string, closeCode = CLIENT_FAULT_CLOSE): void {
    this.error(code, description);
    this.close(closeCode, code);
  }

  /** Starts a clean close handshake. */
  close(code = 1000, reason = ''): void {
    this.stopIdleTimer();
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close(code, reason);
  }

  /** Destroys the TCP connection without a close frame. */
  terminate(): void {
    this.stopIdleTimer();
    this.ws.terminate();
  }

  /** Resolves with the first text frame (already received or future) matching `pred`. */
  waitFor(pred: (frame: Record<string, unknown>) => boolean, timeoutMs = DEFAULT_WAIT_MS): Promise<Record<string, unknown>> {
    return this.waitUntil(() => this.frames.find(pred), 'a matching frame', timeoutMs);
  }

  /** Resolves with the accepted `Settings`. */
  waitForSettings(timeoutMs = DEFAULT_WAIT_MS): Promise<Record<string, unknown>> {
    return this.waitUntil(() => this.settings, 'Settings', timeoutMs);
  }

  /** Resolves with the caller audio once at least `bytes` bytes arrived. */
  waitForAudio(bytes: number, timeoutMs = DEFAULT_WAIT_MS): Promise<Buffer> {
    return this.waitUntil(() => (this.audioChunks.reduce((n, c) => n + c.length, 0) >= bytes ? this.audio : undefined), `${bytes} audio bytes`, timeoutMs);
  }

  /** Resolves when `check` returns something other than undefined (checked after each client frame). */
  waitUntil<T>(check: () => T | undefined, what = 'a condition', timeoutMs = DEFAULT_WAIT_MS): Promise<T> {
    return waitOn(
      this.waiters,
      () => {
        const v = check();
        return v === undefined ? undefined : { value: v };
      },
      timeoutMs,
      what,
      () => (this.isClosed ? new Error(`fake deepgram: connection closed before ${what}`) : undefined),
    );
  }

  private armIdleTimer(): void {
    this.stopIdleTimer();
    const ms = this.options().clientMessageTimeoutMs ?? DEFAULT_CLIENT_TIMEOUT_MS;
    if (ms <= 0 || this.isClosed) return;
    this.idleTimer = setTimeout(() => {
      this.idleTimer = undefined;
      this.fail('CLIENT_MESSAGE_TIMEOUT', `no audio or KeepAlive for ${ms} ms`);
    }, ms);
  }

  private stopIdleTimer(): void {
    if (this.idleTimer !== undefined) clearTimeout(this.idleTimer);
    this.idleTimer = undefined;
  }

  private onMessage(data: RawData, isBinary: boolean): void {
    if (this.isClosed || this.ws.readyState !== WebSocket.OPEN) return;
    this.handle(rawBuffer(data), isBinary);
    for (const w of [...this.waiters]) w.poll();
  }

  private handle(buf: Buffer, isBinary: boolean): void {
    if (isBinary) {
      this.sequence.push('(binary)');
      if (this.settings === undefined) return this.fail('NON_SETTINGS_MESSAGE_BEFORE_SETTINGS', 'audio before Settings');
      if (!this.settingsApplied) this.audioBeforeApplied++;
      this.audioChunks.push(Buffer.from(buf));
      this.armIdleTimer();
      return;
    }
    const msg = objectOf(buf.toString('utf8'));
    const type = msg !== undefined && typeof msg.type === 'string' ? msg.type : undefined;
    this.sequence.push(type ?? '(invalid)');
    if (msg === undefined || type === undefined) return this.fail('UNPARSABLE_CLIENT_MESSAGE', 'not a JSON message with a type');
    this.frames.push(msg);
    if (type === 'Settings') return this.onSettings(msg);
    if (this.settings === undefined) return this.fail('NON_SETTINGS_MESSAGE_BEFORE_SETTINGS', `${type.slice(0, 40)} before Settings`);
    switch (type) {
      case 'KeepAlive':
        this.keepAlives++;
        this.armIdleTimer();
        return;
      case 'InjectUserMessage':
        if (typeof msg.content !== 'string') return this.fail('UNPARSABLE_CLIENT_MESSAGE', 'InjectUserMessage.content must be a string');
        this.injectUserMessages.push(msg.content);
        return;
      case 'InjectAgentMessage':
        if (typeof msg.message !== 'string') return this.fail('UNPARSABLE_CLIENT_MESSAGE', 'InjectAgentMessage.message must be a string');
        this.injectAgentMessages.push(msg.message);
        return;
      case 'UpdatePrompt':
        if (typeof msg.prompt !== 'string') return this.fail('UNPARSABLE_CLIENT_MESSAGE', 'UpdatePrompt.prompt must be a string');
        this.updatePrompts.push(msg.prompt);
        this.send({ type: 'PromptUpdated' });
        return;
      case 'FunctionCallResponse': {
        const { id, name, content } = msg;
        if (typeof id !== 'string' || typeof name !== 'string' || typeof content !== 'string') {
          return this.fail('UNPARSABLE_CLIENT_MESSAGE', 'FunctionCallResponse needs string id, name and content');
        }
        this.functionCallResponses.push({ id, name, content });
        return;
      }
      default:
        return this.fail('UNPARSABLE_CLIENT_MESSAGE', `unknown message type ${type.slice(0, 40)}`);
    }
  }

  private onSettings(msg: Record<string, unknown>): void {
    if (this.settings !== undefined) return this.fail('SETTINGS_ALREADY_APPLIED', 'Settings may be sent once');
    const parsed = SettingsSchema.safeParse(msg);
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      return this.fail('INVALID_SETTINGS', `${issue?.path.join('.') ?? ''}: ${issue?.message ?? 'invalid'}`);
    }
    const want = this.options().audio ?? DEFAULT_FAKE_AUDIO;
    const input = parsed.data.audio.input;
    const output = parsed.data.audio.output;
    if (input === undefined || input.encoding !== want.input.encoding || input.sample_rate !== want.input.sample_rate) {
      return this.fail('INVALID_SETTINGS', `audio.input must be ${want.input.encoding} at ${want.input.sample_rate} Hz for this agent`);
    }
    if (output === undefined || output.encoding !== want.output.encoding || output.sample_rate !== want.output.sample_rate || output.container !== want.output.container) {
      return this.fail('INVALID_SETTINGS', `audio.output must be ${want.output.encoding} at ${want.output.sample_rate} Hz, container "${want.output.container}"`);
    }
    this.settings = msg;
    this.armIdleTimer();
    if (this.options().autoApply !== false) this.applySettings();
  }
}

// --- the server -------------------------------------------------------------------

function refuse(socket: Duplex, status: number, text: string, body = ''): void {
  socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
}

/** A fake Deepgram Voice Agent server on 127.0.0.1 (random port). */
export class FakeDeepgramServer {
  /** `ws://127.0.0.1:PORT/v1/agent/converse`: the full agent URL. */
  readonly url: string;
  /** Every accepted connection, in order. */
  readonly connections: FakeDeepgramConnection[] = [];
  /** HTTP statuses of refused upgrades, in order. */
  readonly refused: number[] = [];
  /** Behaviour for new connections; may be changed between calls. */
  options: FakeDeepgramOptions;
  private claimed = 0;
  private readonly waiters = new Set<Waiter>();
  private isClosed = false;

  private constructor(
    private readonly http: Server,
    private readonly wss: WebSocketServer,
    port: number,
    options: FakeDeepgramOptions,
  ) {
    this.options = options;
    this.url = `ws://127.0.0.1:${port}${FAKE_DEEPGRAM_PATH}`;
  }

  /** Starts listening on 127.0.0.1 (random port). */
  static async start(opts: FakeDeepgramOptions = {}): Promise<FakeDeepgramServer> {
    const http = createServer((_req, res) => {
      res.writeHead(426, { 'content-type': 'text/plain' }).end(`WebSocket endpoint: ${FAKE_DEEPGRAM_PATH}\n`);
    });
    const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 1024 * 1024, autoPong: false });
    await new Promise<void>((resolve, reject) => {
      http.once('error', reject);
      http.listen(0, '127.0.0.1', () => {
        http.off('error', reject);
        resolve();
      });
    });
    const address = http.address();
    const port = typeof address === 'object' && address !== null ? address.port : 0;
    const self = new FakeDeepgramServer(http, wss, port, { ...opts });
    http.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => self.onUpgrade(req, socket, head));
    return self;
  }

  /** Connections currently open. */
  get openConnections(): number {
    return this.connections.filter((c) => c.isOpen).length;
  }

  /** Resolves with the oldest connection not yet returned by this method, waiting if needed. */
  nextConnection(timeoutMs = DEFAULT_WAIT_MS): Promise<FakeDeepgramConnection> {
    return waitOn(
      this.waiters,
      () => {
        const conn = this.connections[this.claimed];
        if (conn === undefined) return undefined;
        this.claimed++;
        return { value: conn };
      },
      timeoutMs,
      'a connection',
      () => (this.isClosed ? new Error('fake deepgram: server closed') : undefined),
    );
  }

  /** Terminates every socket, rejects pending waits and stops listening. */
  async close(): Promise<void> {
    if (this.isClosed) return;
    this.isClosed = true;
    const err = new Error('fake deepgram: server closed');
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
    socket.on('error', () => {
      /* the client went away */
    });
    if (this.isClosed) return refuse(socket, 503, 'Service Unavailable');
    if ((req.url ?? '').split('?', 1)[0] !== FAKE_DEEPGRAM_PATH) return refuse(socket, 404, 'Not Found');
    const opts = this.options;
    const auth = /^Token (\S+)$/.exec(req.headers.authorization ?? '');
    if (auth === null || (opts.apiKey !== undefined && auth[1] !== opts.apiKey)) {
      this.refused.push(401);
      return refuse(socket, 401, 'Unauthorized', JSON.stringify({ err_code: 'INVALID_AUTH', err_msg: 'Invalid credentials.' }));
    }
    if (opts.maxConnections !== undefined && this.openConnections >= opts.maxConnections) {
      this.refused.push(429);
      return refuse(socket, 429, 'Too Many Requests', JSON.stringify({ err_code: 'TOO_MANY_REQUESTS', err_msg: 'Too many concurrent connections.' }));
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      if (this.isClosed) {
        ws.terminate();
        return;
      }
      this.connections.push(new FakeDeepgramConnection(ws, req, () => this.options));
      for (const w of [...this.waiters]) if (w.poll()) break;
    });
  }
}
