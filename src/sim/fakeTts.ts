/**
 * A protocol-faithful PlayAI TTS WebSocket service on 127.0.0.1 (reference §3),
 * for local mode (the prompts a new user hears come from here) and tests.
 *
 * - `POST /api/v1/tts/websocket-auth` with `Authorization: Bearer <apiKey>` and
 *   `X-User-Id: <userId>` → `{ webSocketUrls: { [model]: ws://…/tts/<model>?token= }, expiresAt }`;
 *   401 `{"error":…}` otherwise.
 * - The socket URL is refused (HTTP 401 at the handshake) once its token expires
 *   (`tokenTtlMs`, default one hour) or if the token is unknown.
 * - Each text frame is one command `{ text, voice, output_format?, sample_rate?, request_id? }`,
 *   answered in order: `{"type":"start","request_id"}`, binary audio frames,
 *   `{"type":"end","request_id"}` (`request_id` null when not given). A command
 *   without `text`/`voice`, or with a format the fake does not make, is answered
 *   `{"error":…,"request_id"}`; a text frame that is not a JSON object, or a
 *   binary frame, closes the socket (1003).
 * - Audio is deterministic speech-like sound ({@link fakeTtsAudio}) whose length
 *   follows the text: `mulaw` is raw μ-law at 8 kHz (the only rate it makes for
 *   `mulaw`), `wav` a 16-bit PCM WAV at `sample_rate` (default 24 000), `raw`
 *   16-bit PCM.
 *
 * Test hooks: `dropNextAnswer(afterChunks)` closes the socket in the middle of
 * the next answer (a TCP drop, no close frame); `expireTokens()` makes every issued URL expire now;
 * `stall(on)` holds answers back; `commands`, `authRequests` and
 * `connections` count what came in.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import type { Logger } from 'pino';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import { z } from 'zod';
import { mulawDecode } from '../audio/mulaw.js';
import { speechLikeSignal } from '../audio/signal.js';
import { resamplePcm16, writeWavPcm16 } from '../audio/wav.js';

export interface FakeTtsOptions {
  host?: string;
  port?: number;
  /** Default: random. */
  apiKey?: string;
  /** Default: random. */
  userId?: string;
  /** Models offered (default `Play3.0-mini`, `PlayDialog`). */
  models?: string[];
  /** Lifetime of a socket URL (default one hour). */
  tokenTtlMs?: number;
  /** Bytes per binary frame (default 4000). */
  chunkBytes?: number;
  logger?: Logger;
  /** Wall clock (ms epoch) for token expiry (tests move it). */
  now?: () => number;
}

export interface FakeTtsCommand {
  text: string;
  voice: string;
  output_format: string | undefined;
  sample_rate: number | undefined;
  request_id: string | null;
  model: string;
}

const AUTH_PATH = '/api/v1/tts/websocket-auth';
const WS_PATH = /^\/tts\/([^/?]+)$/;
const MAX_TEXT = 5000;

const command = z.object({
  text: z.string().min(1).max(MAX_TEXT),
  voice: z.string().min(1).max(1000),
  output_format: z.string().optional(),
  sample_rate: z.number().int().min(8000).max(48_000).optional(),
  request_id: z.union([z.string(), z.number()]).nullable().optional(),
});

/** The fake's audio for a text: speech-like μ-law at 8 kHz, about 65 ms a character (0.6 s to 12 s), the same bytes every time. */
export function fakeTtsAudio(text: string, voice: string): Buffer {
  const seed = createHash('sha256').update(voice).update('\u0000').update(text).digest().readUInt32LE(0) || 1;
  const durationMs = Math.min(12_000, Math.max(600, text.length * 65));
  const ulaw = speechLikeSignal({ durationMs, talkMs: 1400, pauseMs: 160, seed });
  return Buffer.from(ulaw.buffer, ulaw.byteOffset, ulaw.length);
}

interface Token {
  model: string;
  expiresAt: number;
}

export class FakeTtsServer {
  readonly apiKey: string;
  readonly userId: string;
  readonly commands: FakeTtsCommand[] = [];
  authRequests = 0;
  connections = 0;
  readonly #server: Server;
  readonly #wss: WebSocketServer;
  readonly #tokens = new Map<string, Token>();
  readonly #sockets = new Set<WebSocket>();
  readonly #models: string[];
  readonly #ttlMs: number;
  readonly #chunk: number;
  readonly #log: Logger | undefined;
  readonly #now: () => number;
  #dropAfter: number | undefined;
  #stalled = false;
  readonly #onUnstall: Array<() => void> = [];
  #closing: Promise<void> | undefined;

  private constructor(server: Server, opts: FakeTtsOptions) {
    this.#server = server;
    this.apiKey = opts.apiKey ?? randomBytes(16).toString('hex');
    this.userId = opts.userId ?? `local-${randomBytes(6).toString('hex')}`;
    this.#models = opts.models ?? ['Play3.0-mini', 'PlayDialog'];
    this.#ttlMs = opts.tokenTtlMs ?? 60 * 60 * 1000;
    this.#chunk = Math.max(1, opts.chunkBytes ?? 4000);
    this.#log = opts.logger;
    this.#now = opts.now ?? Date.now;
    this.#wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024, perMessageDeflate: false });
    server.on('request', (req, res) => this.#http(req, res));
    server.on('upgrade', (req, socket, head) => this.#upgrade(req, socket, head));
  }

  static async start(opts: FakeTtsOptions = {}): Promise<FakeTtsServer> {
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    const self = new FakeTtsServer(server, opts);
    opts.logger?.info({ authUrl: self.authUrl }, 'local TTS listening');
    return self;
  }

  /** `http://127.0.0.1:<port>`. */
  get url(): string {
    const addr = this.#server.address() as AddressInfo | null;
    if (addr === null) throw new Error('fake TTS: not listening');
    return `http://127.0.0.1:${addr.port}`;
  }

  /** The auth endpoint (what PLAYAI_TTS_URL points at). */
  get authUrl(): string {
    return `${this.url}${AUTH_PATH}`;
  }

  /** Open sockets. */
  get openSockets(): number {
    return this.#sockets.size;
  }

  /** The next answer stops after `afterChunks` binary frames and its socket drops (no close frame). */
  dropNextAnswer(afterChunks = 1): void {
    this.#dropAfter = afterChunks;
  }

  /** Every URL issued so far expires now (new handshakes on them are refused). */
  expireTokens(): void {
    for (const t of this.#tokens.values()) t.expiresAt = 0;
  }

  /** Holds answers back (commands are read and counted) until `stall(false)`. */
  stall(on: boolean): void {
    this.#stalled = on;
    if (!on) for (const fn of this.#onUnstall.splice(0)) fn();
  }

  close(): Promise<void> {
    this.#closing ??= (async () => {
      for (const ws of this.#sockets) ws.terminate();
      this.#sockets.clear();
      this.#onUnstall.length = 0;
      this.#wss.close();
      this.#server.closeAllConnections();
      await new Promise<void>((resolve) => this.#server.close(() => resolve()));
    })();
    return this.#closing;
  }

  #http(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://fake.invalid');
    const send = (status: number, body: unknown): void => {
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    };
    if (url.pathname !== AUTH_PATH) return send(404, { error: 'Not found' });
    if (req.method !== 'POST') return send(405, { error: 'Method not allowed' });
    this.authRequests++;
    const userId = req.headers['x-user-id'];
    if (req.headers.authorization !== `Bearer ${this.apiKey}` || userId !== this.userId) {
      return send(401, { error: 'Unauthorized: check the API key and the user id' });
    }
    req.resume();
    const expiresAt = this.#now() + this.#ttlMs;
    const webSocketUrls: Record<string, string> = {};
    for (const model of this.#models) {
      const token = randomBytes(18).toString('base64url');
      this.#tokens.set(token, { model, expiresAt });
      webSocketUrls[model] = `${this.url.replace(/^http/, 'ws')}/tts/${encodeURIComponent(model)}?token=${token}`;
    }
    // Tokens of long ago are forgotten (bounded memory for a long-running local mode).
    if (this.#tokens.size > 1000) for (const [k, t] of this.#tokens) if (t.expiresAt < this.#now()) this.#tokens.delete(k);
    send(200, { webSocketUrls, expiresAt: new Date(expiresAt).toISOString() });
  }

  #upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const url = new URL(req.url ?? '/', 'http://fake.invalid');
    const m = WS_PATH.exec(url.pathname);
    const refuse = (status: number, text: string): void => {
      socket.end(`HTTP/1.1 ${status} ${text}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
    };
    if (m === null) return refuse(404, 'Not Found');
    const token = this.#tokens.get(url.searchParams.get('token') ?? '');
    const model = decodeURIComponent(m[1] ?? '');
    if (token === undefined || token.model !== model || token.expiresAt <= this.#now()) return refuse(401, 'Unauthorized');
    this.#wss.handleUpgrade(req, socket, head, (ws) => this.#connection(ws, model));
  }

  #connection(ws: WebSocket, model: string): void {
    this.connections++;
    this.#sockets.add(ws);
    // Commands are answered one after another, in the order they came.
    let chain = Promise.resolve();
    let closed = false;
    ws.on('close', () => {
      closed = true;
      this.#sockets.delete(ws);
    });
    ws.on('error', () => ws.terminate());
    ws.on('message', (data: RawData, isBinary: boolean) => {
      if (isBinary) {
        ws.close(1003, 'commands are JSON text frames');
        return;
      }
      const text = Buffer.isBuffer(data) ? data.toString('utf8') : Array.isArray(data) ? Buffer.concat(data).toString('utf8') : Buffer.from(data).toString('utf8');
      let json: unknown;
      try {
        json = JSON.parse(text);
      } catch {
        ws.close(1003, 'a command must be a JSON object');
        return;
      }
      if (typeof json !== 'object' || json === null || Array.isArray(json)) {
        ws.close(1003, 'a command must be a JSON object');
        return;
      }
      const rid = 'request_id' in json && (typeof json.request_id === 'string' || typeof json.request_id === 'number') ? json.request_id : null;
      const parsed = command.safeParse(json);
      chain = chain.then(() => (closed ? undefined : this.#answer(ws, model, parsed, rid, () => closed)));
    });
  }

  async #answer(ws: WebSocket, model: string, parsed: ReturnType<typeof command.safeParse>, rid: string | number | null, isClosed: () => boolean): Promise<void> {
    if (this.#stalled) await new Promise<void>((resolve) => this.#onUnstall.push(resolve));
    if (isClosed()) return;
    if (!parsed.success) {
      ws.send(JSON.stringify({ error: `Invalid command: ${parsed.error.issues.map((i) => `${i.path.join('.') || 'command'} ${i.message}`).join('; ')}`, request_id: rid }));
      return;
    }
    const c = parsed.data;
    const cmd: FakeTtsCommand = { text: c.text, voice: c.voice, output_format: c.output_format, sample_rate: c.sample_rate, request_id: c.request_id === undefined || c.request_id === null ? null : String(c.request_id), model };
    this.commands.push(cmd);
    if (this.commands.length > 10_000) this.commands.shift();
    const format = c.output_format ?? 'mp3';
    let audio: Buffer;
    const ulaw = fakeTtsAudio(c.text, c.voice);
    if (format === 'mulaw' && (c.sample_rate === undefined || c.sample_rate === 8000)) {
      audio = ulaw;
    } else if (format === 'wav' || format === 'raw') {
      const rate = c.sample_rate ?? 24_000;
      const pcm = resamplePcm16(mulawDecode(ulaw), 8000, rate);
      audio = format === 'wav' ? writeWavPcm16(pcm, rate) : Buffer.from(pcm.buffer, pcm.byteOffset, pcm.byteLength);
    } else {
      ws.send(JSON.stringify({ error: `output_format ${format}${c.sample_rate !== undefined ? ` at ${c.sample_rate} Hz` : ''} is not made by the local TTS (use mulaw at 8000, wav or raw)`, request_id: cmd.request_id }));
      return;
    }
    ws.send(JSON.stringify({ type: 'start', request_id: cmd.request_id }));
    const dropAfter = this.#dropAfter;
    this.#dropAfter = undefined;
    let sent = 0;
    for (let at = 0; at < audio.length; at += this.#chunk) {
      if (isClosed()) return;
      if (dropAfter !== undefined && sent >= dropAfter) {
        this.#log?.debug('local TTS: dropping the socket mid-answer (test hook)');
        ws.terminate();
        return;
      }
      ws.send(audio.subarray(at, at + this.#chunk), { binary: true });
      sent++;
      // Let other sockets and the client breathe between frames.
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
    if (!isClosed()) ws.send(JSON.stringify({ type: 'end', request_id: cmd.request_id }));
  }
}
