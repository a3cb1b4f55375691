/**
 * A protocol-faithful fake of the ElevenLabs Agents API for tests, on
 * 127.0.0.1 (random port), written from the protocol reference
 * (`agent-providers.md` §2 and §7), not from Playline's client.
 *
 * HTTP `GET /v1/convai/conversation/get-signed-url?agent_id=…` needs the
 * `xi-api-key` header (401 otherwise; any status on demand, e.g. 429) and
 * returns `{"signed_url":"ws://…/v1/convai/conversation?agent_id=…&conversation_signature=…"}`.
 * The WebSocket `/v1/convai/conversation?agent_id=…`, strict where the service is:
 * - a private agent (`public: false`) needs a signature this server issued;
 * - the first frame must be `conversation_initiation_client_data`, else
 *   `error` `invalid_message` and close 1008; every override sent must be
 *   enabled on the agent, else `error` `override_error` and close 1008;
 * - then `conversation_initiation_metadata` with the agent's audio formats;
 * - caller audio is `{"user_audio_chunk":"<base64>"}` (no `type`); any frame
 *   that is not JSON or not a known client message is `invalid_message` (1008),
 *   a `client_tool_result` without its four fields `missing_fields` (1008);
 * - `ping` every `pingIntervalMs` (pongs recorded), and `error`
 *   `transport_receive_timeout` with close 1002 after `inputTimeoutMs` without
 *   caller audio (the service: 60 s);
 * - `eventIdsAsStrings`: every `event_id` goes out as a numeric string, and a
 *   `pong` must echo its ping's id as that string.
 * Tests script each connection (`speak`, `interrupt`, transcripts, tool calls,
 * errors, `endCall`) and read what the client sent (`frames`, decoded `audio`,
 * `pongs`, `userMessages`, `contextualUpdates`, `toolResults`).
 */
import { randomBytes } from 'node:crypto';
import { createServer, STATUS_CODES, type IncomingHttpHeaders, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocket, WebSocketServer, type RawData } from 'ws';
import { isBase64 } from '../../audio/base64.js';
import { parseJsonObject } from '../../util/json.js';
import { rawText, waiterFor, type Waiter } from '../waiting.js';

/** One agent as configured in the (fake) ElevenLabs dashboard. */
export interface FakeElevenLabsAgent {
  /** Overrides enabled in the agent's security settings (all off by default, as on a new agent). */
  overrides?: { prompt?: boolean; firstMessage?: boolean; language?: boolean; voice?: boolean };
  /** `agent_output_audio_format` (default `ulaw_8000`). */
  outputFormat?: string;
  /** `user_input_audio_format` (default `ulaw_8000`). */
  inputFormat?: string;
  /** Connections without a signed URL are accepted (default true). */
  public?: boolean;
}

/** Behaviour; read when needed, so it may change between calls. */
export interface FakeElevenLabsOptions {
  /** The account's API key (default `fake-elevenlabs-key`). */
  apiKey?: string;
  /** Agents by id; ids not listed use `defaultAgent`. */
  agents?: Record<string, FakeElevenLabsAgent>;
  /** Any agent id not in `agents` (default: a public μ-law agent without overrides). */
  defaultAgent?: FakeElevenLabsAgent;
  /** Answer `get-signed-url` with this HTTP status instead (e.g. 429, 500). */
  signedUrlStatus?: number;
  /** Refuse WebSocket upgrades with this HTTP status (e.g. 429). */
  upgradeStatus?: number;
  /** Send the metadata as soon as a valid first frame arrives (default true; else call `sendMetadata`). */
  autoMetadata?: boolean;
  /** `ping` interval after the metadata, in ms (default 0: only `ping()` sends one). */
  pingIntervalMs?: number;
  /** Silence without `user_audio_chunk` after which the conversation ends with `transport_receive_timeout` (default 0: never). */
  inputTimeoutMs?: number;
  /** Answer WebSocket pings (default true). False: a dead peer whose TCP connection still looks open. */
  answerPings?: boolean;
  /**
   * Send every `event_id` as a numeric string (`"3"`), as some servers do; a `pong` must then
   * echo the ping's id as that string (default false: integers, and an integer pong).
   */
  eventIdsAsStrings?: boolean;
}

export interface FakeSignedUrlRequest {
  agentId: string | undefined;
  /** Whether an `xi-api-key` header was present, and whether it was the right key. */
  hadKey: boolean;
  keyOk: boolean;
  status: number;
}

export interface FakeToolResult {
  toolCallId: string;
  result: string;
  isError: boolean;
}

const DEFAULT_TIMEOUT_MS = 3000;
const CONVERSATION_PATH = '/v1/convai/conversation';
const SIGNED_URL_PATH = '/v1/convai/conversation/get-signed-url';
const CLIENT_TYPES = new Set(['pong', 'user_message', 'user_activity', 'contextual_update', 'client_tool_result', 'feedback', 'conversation_initiation_client_data', 'mcp_tool_approval_result', 'multimodal_message']);

const waitUntil = waiterFor('fake ElevenLabs');

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** One conversation socket accepted by {@link FakeElevenLabsServer}. */
export class FakeElevenLabsConnection {
  readonly agentId: string;
  readonly agent: FakeElevenLabsAgent;
  /** The signature query parameter of the URL, if any. */
  readonly signature: string | undefined;
  readonly headers: IncomingHttpHeaders;
  /** The first frame, parsed (once it arrived). */
  initiation: Record<string, unknown> | undefined;
  /** Every JSON-object frame from the client in order (caller audio included). */
  readonly frames: Array<Record<string, unknown>> = [];
  /** Decoded bytes of each `user_audio_chunk`, in order. */
  readonly audio: Buffer[] = [];
  /** `event_id` of each `pong` (its numeric value). */
  readonly pongs: number[] = [];
  /** `event_id` of each `ping` sent. */
  readonly pings: number[] = [];
  readonly userMessages: string[] = [];
  readonly contextualUpdates: string[] = [];
  readonly toolResults: FakeToolResult[] = [];
  /** Frames refused (not JSON, binary, unknown type, bad audio). */
  invalidFrames = 0;
  conversationId: string | undefined;
  readonly closed: Promise<{ code: number; reason: string }>;
  #eventId = 0;
  #response = 0;
  #isClosed = false;
  /** Set once this side started closing: later frames are ignored, as the service would. */
  #closing = false;
  readonly #waiters = new Set<Waiter>();
  #pingTimer: NodeJS.Timeout | undefined;
  #inputTimer: NodeJS.Timeout | undefined;

  /** @internal Created by {@link FakeElevenLabsServer}. */
  constructor(
    private readonly ws: WebSocket,
    req: IncomingMessage,
    agentId: string,
    agent: FakeElevenLabsAgent,
    signature: string | undefined,
    private readonly options: () => FakeElevenLabsOptions,
  ) {
    this.agentId = agentId;
    this.agent = agent;
    this.signature = signature;
    this.headers = req.headers;
    this.closed = new Promise((resolve) => {
      ws.once('close', (code, reason) => {
        this.#isClosed = true;
        this.#stopTimers();
        const err = new Error(`fake ElevenLabs: connection closed (code ${code})`);
        for (const w of [...this.#waiters]) if (!w.poll()) w.fail(err);
        resolve({ code, reason: reason.toString('utf8') });
      });
    });
    ws.on('error', () => {
      /* 'close' follows */
    });
    ws.on('message', (data, isBinary) => this.#onMessage(data, isBinary));
    ws.on('ping', (data) => {
      if (this.options().answerPings !== false && ws.readyState === WebSocket.OPEN) ws.pong(data);
    });
  }

  get isOpen(): boolean {
    return this.ws.readyState === WebSocket.OPEN;
  }

  /** All caller audio received so far, concatenated. */
  audioBytes(): Buffer {
    return Buffer.concat(this.audio);
  }

  send(msg: Record<string, unknown>): void {
    this.sendRaw(JSON.stringify(msg));
  }

  /** Strings go as text frames, Buffers as binary (no-op once closed). */
  sendRaw(data: string | Buffer): void {
    if (this.isOpen) this.ws.send(data, { binary: typeof data !== 'string' });
  }

  /** `conversation_initiation_metadata` with the agent's formats (automatic unless `autoMetadata: false`). */
  sendMetadata(conversationId = `conv_${randomBytes(10).toString('hex')}`): void {
    this.conversationId = conversationId;
    this.send({
      type: 'conversation_initiation_metadata',
      conversation_initiation_metadata_event: {
        conversation_id: conversationId,
        agent_output_audio_format: this.agent.outputFormat ?? 'ulaw_8000',
        user_input_audio_format: this.agent.inputFormat ?? 'ulaw_8000',
      },
    });
    const opts = this.options();
    const every = opts.pingIntervalMs ?? 0;
    if (every > 0) this.#pingTimer = setInterval(() => this.ping(), every);
    this.#armInputTimeout();
  }

  /**
   * Agent audio (bytes in the agent's output format). Without `eventId` each call is a
   * new response with a greater event id; `chunkBytes` splits it into several frames;
   * `alignment` adds character timings (the shape the client's fast path declines).
   * Returns the event id used.
   */
  speak(audio: Uint8Array, opts: { eventId?: number; chunkBytes?: number; alignment?: boolean } = {}): number {
    const eventId = opts.eventId ?? this.#newResponse();
    const size = opts.chunkBytes ?? Math.max(1, audio.length);
    for (let i = 0; i < audio.length; i += size) {
      const audio_event: Record<string, unknown> = { audio_base_64: Buffer.from(audio.subarray(i, i + size)).toString('base64'), event_id: this.#id(eventId) };
      if (opts.alignment === true) audio_event.alignment = { chars: ['h', 'i'], char_start_times_ms: [0, 10], char_durations_ms: [10, 10] };
      this.send({ type: 'audio', audio_event });
    }
    return eventId;
  }

  /** The caller interrupted the current response (or `eventId`). */
  interrupt(eventId = this.#response): void {
    this.send({ type: 'interruption', interruption_event: { event_id: this.#id(eventId) } });
  }

  userTranscript(text: string): void {
    this.send({ type: 'user_transcript', user_transcription_event: { user_transcript: text, event_id: this.#id(++this.#eventId) } });
  }

  tentativeUserTranscript(text: string): void {
    this.send({ type: 'tentative_user_transcript', tentative_user_transcription_event: { user_transcript: text, event_id: this.#id(++this.#eventId) } });
  }

  /** The full text of the current response (or `eventId`'s). */
  agentResponse(text: string, eventId = this.#response): void {
    this.send({ type: 'agent_response', agent_response_event: { agent_response: text, event_id: this.#id(eventId) } });
  }

  agentResponseCorrection(original: string, corrected: string, eventId = this.#response): void {
    this.send({ type: 'agent_response_correction', agent_response_correction_event: { original_agent_response: original, corrected_agent_response: corrected, event_id: this.#id(eventId) } });
  }

  /** A client tool call; returns its `tool_call_id`. */
  callTool(name: string, parameters: Record<string, unknown> = {}): string {
    const id = `toolu_${randomBytes(8).toString('hex')}`;
    this.send({ type: 'client_tool_call', client_tool_call: { tool_name: name, tool_call_id: id, parameters, event_id: this.#id(++this.#eventId) } });
    return id;
  }

  /** `agent_tool_response` for a system tool (e.g. the built-in `end_call`). */
  agentToolResponse(toolName: string, isError = false): void {
    this.send({
      type: 'agent_tool_response',
      agent_tool_response: { tool_name: toolName, tool_call_id: `sys_${randomBytes(6).toString('hex')}`, tool_type: 'system', is_error: isError, is_called: true, event_id: this.#id(++this.#eventId) },
    });
  }

  /** A `ping`; returns its event id. */
  ping(pingMs: number | null = null): number {
    const eventId = ++this.#eventId;
    this.pings.push(eventId);
    this.send({ type: 'ping', ping_event: { event_id: this.#id(eventId), ping_ms: pingMs } });
    return eventId;
  }

  /**
   * An `error` frame for `errorType` (null: none) with close code `code`, then (unless
   * `close: false`) the close with that code, as the service does.
   */
  error(errorType: string | null, code: 1000 | 1002 | 1008 | 1011, opts: { message?: string; reason?: string; close?: boolean } = {}): void {
    const error_event: Record<string, unknown> = { code, message: opts.message ?? `fake ${errorType ?? 'error'}`, error_type: errorType };
    if (opts.reason !== undefined) error_event.reason = opts.reason;
    this.send({ type: 'error', error_event });
    if (opts.close !== false) this.close(code, (errorType ?? opts.reason ?? '').slice(0, 120));
  }

  /** The agent ends the conversation: close 1000 (`maxDuration`: after an `error` `max_duration_exceeded`). */
  endCall(opts: { maxDuration?: boolean } = {}): void {
    if (opts.maxDuration === true) this.error('max_duration_exceeded', 1000, { message: 'Maximum call duration exceeded' });
    else this.close(1000, 'Agent ended the conversation');
  }

  close(code = 1000, reason = ''): void {
    this.#closing = true;
    this.#stopTimers();
    if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING) this.ws.close(code, reason);
  }

  terminate(): void {
    this.#stopTimers();
    this.ws.terminate();
  }

  waitForInitiation(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Record<string, unknown>> {
    return this.#wait(() => (this.initiation === undefined ? undefined : { value: this.initiation }), timeoutMs, 'the first frame');
  }

  /** Resolves with the first frame (received or future) matching `pred`. */
  waitFor(pred: (frame: Record<string, unknown>) => boolean, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Record<string, unknown>> {
    return this.#wait(() => {
      const f = this.frames.find(pred);
      return f === undefined ? undefined : { value: f };
    }, timeoutMs, 'a matching frame');
  }

  /** Resolves once at least `n` bytes of caller audio arrived. */
  waitForAudioBytes(n: number, timeoutMs = DEFAULT_TIMEOUT_MS): Promise<Buffer> {
    return this.#wait(() => {
      const got = this.audio.reduce((s, b) => s + b.length, 0);
      return got >= n ? { value: this.audioBytes() } : undefined;
    }, timeoutMs, `${n} bytes of caller audio`);
  }

  #wait<T>(check: () => { value: T } | undefined, timeoutMs: number, what: string): Promise<T> {
    return waitUntil(this.#waiters, check, timeoutMs, what, () => (this.#isClosed ? new Error(`fake ElevenLabs: connection closed before ${what}`) : undefined));
  }

  /** An event id as sent on the wire (a numeric string with `eventIdsAsStrings`). */
  #id(n: number): number | string {
    return this.options().eventIdsAsStrings === true ? String(n) : n;
  }

  #newResponse(): number {
    this.#response = ++this.#eventId;
    return this.#response;
  }

  #refuse(errorType: string, message: string, code: 1002 | 1008 = 1008): void {
    this.invalidFrames++;
    this.error(errorType, code, { message });
  }

  #onMessage(data: RawData, isBinary: boolean): void {
    if (this.#closing) return;
    if (isBinary) {
      this.#refuse('invalid_message', 'Binary frames are not supported');
      return;
    }
    const o = parseJsonObject(rawText(data));
    if (typeof o === 'string') {
      this.#refuse('invalid_message', 'Invalid JSON message');
      return;
    }
    this.frames.push(o);
    if (this.initiation === undefined) this.#onFirst(o);
    else this.#onLater(o);
    for (const w of [...this.#waiters]) w.poll();
  }

  #onFirst(o: Record<string, unknown>): void {
    if (o.type !== 'conversation_initiation_client_data') {
      this.#refuse('invalid_message', 'The first message must be conversation_initiation_client_data');
      return;
    }
    this.initiation = o;
    const refused = this.#refusedOverrides(o.conversation_config_override);
    if (refused.length > 0) {
      this.error('override_error', 1008, { message: `Override for field(s) ${refused.join(', ')} is not allowed by config.` });
      return;
    }
    if (o.dynamic_variables !== undefined && !isObject(o.dynamic_variables)) {
      this.error('value_error', 1008, { message: 'dynamic_variables must be an object' });
      return;
    }
    if (this.options().autoMetadata !== false) this.sendMetadata();
  }

  /** The override fields present that the agent does not allow (unknown fields included). */
  #refusedOverrides(override: unknown): string[] {
    if (override === undefined || override === null) return [];
    if (!isObject(override)) return ['conversation_config_override'];
    const allowed = this.agent.overrides ?? {};
    const refused: string[] = [];
    for (const [section, value] of Object.entries(override)) {
      if (!isObject(value)) {
        refused.push(section);
        continue;
      }
      for (const field of Object.keys(value)) {
        const path = `${section}.${field}`;
        const ok =
          (path === 'agent.prompt' && allowed.prompt === true && isObject(value.prompt) && Object.keys(value.prompt).every((k) => k === 'prompt')) ||
          (path === 'agent.first_message' && allowed.firstMessage === true) ||
          (path === 'agent.language' && allowed.language === true) ||
          (path === 'tts.voice_id' && allowed.voice === true);
        if (!ok) refused.push(path);
      }
    }
    return refused;
  }

  #onLater(o: Record<string, unknown>): void {
    if ('user_audio_chunk' in o) {
      const chunk = o.user_audio_chunk;
      if (typeof chunk !== 'string' || !isBase64(chunk)) {
        this.#refuse('invalid_message', 'user_audio_chunk must be base64');
        return;
      }
      this.audio.push(Buffer.from(chunk, 'base64'));
      this.#armInputTimeout();
      return;
    }
    const type = o.type;
    if (typeof type !== 'string' || !CLIENT_TYPES.has(type)) {
      this.#refuse('invalid_message', `Unknown message type ${String(type).slice(0, 40)}`);
      return;
    }
    switch (type) {
      case 'pong': {
        // The ping's event_id echoed as sent: an integer, or the numeric string of eventIdsAsStrings.
        const id = o.event_id;
        if (this.options().eventIdsAsStrings === true) {
          if (typeof id !== 'string' || !/^\d{1,15}$/.test(id)) this.#refuse('missing_fields', "pong needs the ping's event_id as sent (a numeric string)");
          else this.pongs.push(Number(id));
        } else if (typeof id !== 'number' || !Number.isInteger(id)) this.#refuse('missing_fields', 'pong needs an integer event_id');
        else this.pongs.push(id);
        return;
      }
      case 'user_message':
        if (typeof o.text === 'string') this.userMessages.push(o.text);
        return;
      case 'contextual_update':
        if (typeof o.text !== 'string') this.#refuse('missing_fields', 'contextual_update needs text');
        else this.contextualUpdates.push(o.text);
        return;
      case 'client_tool_result': {
        const { tool_call_id, result, is_error } = o;
        if (typeof tool_call_id !== 'string' || typeof result !== 'string' || typeof is_error !== 'boolean') {
          this.#refuse('missing_fields', 'client_tool_result needs tool_call_id, result (a string) and is_error');
          return;
        }
        this.toolResults.push({ toolCallId: tool_call_id, result, isError: is_error });
        return;
      }
      default:
        return;
    }
  }

  #armInputTimeout(): void {
    if (this.#inputTimer !== undefined) clearTimeout(this.#inputTimer);
    this.#inputTimer = undefined;
    const after = this.options().inputTimeoutMs ?? 0;
    if (after <= 0 || this.#isClosed) return;
    this.#inputTimer = setTimeout(() => {
      this.#inputTimer = undefined;
      this.error('transport_receive_timeout', 1002, { message: 'No user input received for a while' });
    }, after);
  }

  #stopTimers(): void {
    if (this.#pingTimer !== undefined) clearInterval(this.#pingTimer);
    if (this.#inputTimer !== undefined) clearTimeout(this.#inputTimer);
    this.#pingTimer = undefined;
    this.#inputTimer = undefined;
  }
}

/** The fake ElevenLabs API (HTTP and WebSocket on one port). */
export class FakeElevenLabsServer {
  /** `http://127.0.0.1:PORT`: the provider's base URL. */
  readonly url: string;
  readonly connections: FakeElevenLabsConnection[] = [];
  readonly signedUrlRequests: FakeSignedUrlRequest[] = [];
  /** Upgrade attempts refused before a socket existed (status, agent id). */
  readonly refusedUpgrades: Array<{ status: number; agentId: string | undefined }> = [];
  options: FakeElevenLabsOptions;
  readonly #issued = new Set<string>();
  readonly #waiters = new Set<Waiter>();
  #claimed = 0;
  #isClosed = false;

  private constructor(
    private readonly server: Server,
    private readonly wss: WebSocketServer,
    options: FakeElevenLabsOptions,
  ) {
    this.options = options;
    const addr = server.address();
    if (addr === null || typeof addr === 'string') throw new Error('fake ElevenLabs: not listening');
    this.url = `http://127.0.0.1:${addr.port}`;
    server.on('request', (req, res) => this.#onRequest(req, res));
    server.on('upgrade', (req, socket, head) => this.#onUpgrade(req, socket, head));
  }

  static async start(opts: FakeElevenLabsOptions = {}): Promise<FakeElevenLabsServer> {
    const server = createServer();
    const wss = new WebSocketServer({ noServer: true, maxPayload: 16 * 1024 * 1024, autoPong: false });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    return new FakeElevenLabsServer(server, wss, { ...opts });
  }

  get apiKey(): string {
    return this.options.apiKey ?? 'fake-elevenlabs-key';
  }

  /** The oldest connection not yet returned by this method, waiting if needed. */
  nextConnection(timeoutMs = DEFAULT_TIMEOUT_MS): Promise<FakeElevenLabsConnection> {
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
      () => (this.#isClosed ? new Error('fake ElevenLabs: server closed') : undefined),
    );
  }

  async close(): Promise<void> {
    if (this.#isClosed) return;
    this.#isClosed = true;
    const err = new Error('fake ElevenLabs: server closed');
    for (const w of [...this.#waiters]) w.fail(err);
    for (const c of this.connections) c.terminate();
    await Promise.all(this.connections.map((c) => c.closed));
    this.wss.close();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  #agent(id: string): FakeElevenLabsAgent {
    return this.options.agents?.[id] ?? this.options.defaultAgent ?? {};
  }

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const json = (status: number, body: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json' });
      res.end(JSON.stringify(body));
    };
    if (req.method !== 'GET' || url.pathname !== SIGNED_URL_PATH) {
      json(404, { detail: 'Not Found' });
      return;
    }
    const agentId = url.searchParams.get('agent_id') ?? undefined;
    const key = req.headers['xi-api-key'];
    const hadKey = typeof key === 'string' && key.length > 0;
    const keyOk = hadKey && key === this.apiKey;
    const record = (status: number): void => {
      this.signedUrlRequests.push({ agentId, hadKey, keyOk, status });
    };
    if (this.options.signedUrlStatus !== undefined) {
      const status = this.options.signedUrlStatus;
      record(status);
      json(status, { detail: { status: status === 429 ? 'too_many_concurrent_requests' : 'error', message: `fake status ${status}` } });
      return;
    }
    if (!keyOk) {
      record(401);
      json(401, { detail: { status: hadKey ? 'invalid_api_key' : 'needs_authorization', message: 'Invalid API key' } });
      return;
    }
    if (agentId === undefined || agentId.length === 0) {
      record(422);
      json(422, { detail: [{ loc: ['query', 'agent_id'], msg: 'field required', type: 'value_error.missing' }] });
      return;
    }
    const signature = randomBytes(24).toString('base64url');
    this.#issued.add(signature);
    record(200);
    const wsUrl = this.url.replace(/^http/, 'ws');
    json(200, { signed_url: `${wsUrl}${CONVERSATION_PATH}?agent_id=${encodeURIComponent(agentId)}&conversation_signature=${signature}` });
  }

  #onUpgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const url = new URL(req.url ?? '/', 'http://127.0.0.1');
    const agentId = url.searchParams.get('agent_id') ?? undefined;
    const refuse = (status: number): void => {
      this.refusedUpgrades.push({ status, agentId });
      socket.end(`HTTP/1.1 ${status} ${STATUS_CODES[status] ?? 'Error'}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    };
    if (this.#isClosed) {
      socket.destroy();
      return;
    }
    if (url.pathname !== CONVERSATION_PATH) {
      refuse(404);
      return;
    }
    if (this.options.upgradeStatus !== undefined) {
      refuse(this.options.upgradeStatus);
      return;
    }
    if (agentId === undefined || agentId.length === 0) {
      refuse(400);
      return;
    }
    const signature = url.searchParams.get('conversation_signature') ?? undefined;
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      const agent = this.#agent(agentId);
      const conn = new FakeElevenLabsConnection(ws, req, agentId, agent, signature, () => this.options);
      this.connections.push(conn);
      const signedOk = signature !== undefined && this.#issued.has(signature);
      if ((signature !== undefined && !signedOk) || (signature === undefined && agent.public === false)) {
        // (unverified) the service's exact refusal; the contract only says 1008 for auth failures.
        conn.send({ type: 'error', error_event: { code: 1008, message: 'Authentication failed: this agent requires a valid signed URL', reason: 'authentication failed' } });
        conn.close(1008, 'Authentication failed');
      }
      for (const w of [...this.#waiters]) if (w.poll()) break;
    });
  }
}
