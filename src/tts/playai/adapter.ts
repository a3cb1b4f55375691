/**
 * The PlayAI TTS WebSocket as a {@link TtsPort} (reference §3).
 *
 * - **Auth:** `fetchTtsAuth` gives a socket URL per model and its expiry. The
 *   URL is re-fetched before it expires (`reauthMarginMs` ahead): a socket
 *   whose URL is about to expire takes no new command; it finishes what it was
 *   given and closes, and the next command opens a socket on a fresh URL.
 * - **One socket, in order:** commands `{text, voice, output_format, sample_rate,
 *   request_id}` are written as they come; the service answers each with
 *   `{"type":"start"}`, binary audio, `{"type":"end"}`, in the order sent. The
 *   answer belongs to the oldest unanswered command; a `request_id` that names
 *   another one is logged and the order is trusted (tolerant path).
 * - **Errors:** a JSON object with an `error` key is the answer to that command.
 * - **Drops:** a socket that closes mid-answer fails that command (`dropped`;
 *   the caller falls back to `<Say>`). Commands not yet answered are sent again
 *   on a new socket, once.
 * - **Timeouts:** each command has one deadline covering auth, connect and its
 *   audio. A command that times out after it was sent ends its socket (a late
 *   answer would otherwise be taken for the next one's).
 * - An idle socket closes after `idleMs`.
 */
import { randomUUID } from 'node:crypto';
import type { Logger } from 'pino';
import { WebSocket, type RawData } from 'ws';
import { z } from 'zod';
import { TtsError, type TtsFailure, type TtsPort } from '../port.js';
import { fetchTtsAuth, type TtsAuth } from './auth.js';
import { toTelephoneAudio } from './audio.js';

export interface PlayAiTtsOptions {
  /** `POST` endpoint of the socket auth (PLAYAI_TTS_URL). */
  authUrl: string;
  apiKey: string;
  userId: string;
  /** Key of `webSocketUrls` to use, e.g. `Play3.0-mini`. */
  model: string;
  log: Logger;
  fetchImpl?: typeof fetch;
  /** Deadline of one synthesis, auth and connect included (default 20 s). */
  requestTimeoutMs?: number;
  /** Auth request timeout (default 10 s). */
  authTimeoutMs?: number;
  /** WebSocket handshake timeout (default 5 s). */
  connectTimeoutMs?: number;
  /** An idle socket is closed after this long (default 30 s). */
  idleMs?: number;
  /** URLs are renewed this long before they expire (default 60 s). */
  reauthMarginMs?: number;
  /** Wall clock (ms epoch), for expiry (tests). */
  now?: () => number;
}

interface Job {
  id: string;
  text: string;
  voice: string;
  chunks: Buffer[];
  bytes: number;
  started: boolean;
  /** Sends so far (a command is sent again once, after a drop before its answer began). */
  sends: number;
  timer: NodeJS.Timeout | undefined;
  conn: Conn | undefined;
  resolve(audio: Buffer): void;
  reject(err: TtsError): void;
}

interface Conn {
  ws: WebSocket;
  open: boolean;
  /** Takes no new commands (its URL is about to expire, or it failed). */
  retiring: boolean;
  expiresAt: number;
  /** Sent commands waiting for their answers, oldest first. */
  queue: Job[];
  idle: NodeJS.Timeout | undefined;
  /** The handshake was refused with 401/403 (an expired or bad URL). */
  refused: boolean;
}

/** Largest audio accepted for one prompt (about 2 minutes of μ-law; WAV PCM answers are bigger). */
const MAX_ANSWER_BYTES = 8 * 1024 * 1024;
/** Longest text sent (the service's own limit is unknown; prompts are short). */
export const MAX_TTS_TEXT = 2000;

const controlFrame = z.looseObject({
  type: z.string().optional(),
  request_id: z.union([z.string(), z.number(), z.null()]).optional(),
  error: z.unknown().optional(),
});

export class PlayAiTts implements TtsPort {
  readonly name = 'playai';
  readonly #o: PlayAiTtsOptions;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #requestTimeoutMs: number;
  readonly #idleMs: number;
  readonly #marginMs: number;
  #auth: TtsAuth | undefined;
  #authing: Promise<TtsAuth> | undefined;
  #conn: Conn | undefined;
  #opening = false;
  /** Commands not sent yet, oldest first. */
  #waiting: Job[] = [];
  #closed = false;
  readonly #warned = new Set<string>();
  /** Sockets opened so far (tests, logs). */
  connections = 0;
  /** Auth requests made so far. */
  authRequests = 0;

  constructor(opts: PlayAiTtsOptions) {
    this.#o = opts;
    this.#log = opts.log;
    this.#now = opts.now ?? Date.now;
    this.#requestTimeoutMs = opts.requestTimeoutMs ?? 20_000;
    this.#idleMs = opts.idleMs ?? 30_000;
    this.#marginMs = opts.reauthMarginMs ?? 60_000;
  }

  synthesize(text: string, voice: string): Promise<Buffer> {
    if (this.#closed) return Promise.reject(new TtsError('unavailable', 'PlayAI TTS: closed'));
    if (text.trim() === '') return Promise.reject(new TtsError('protocol', 'PlayAI TTS: nothing to say (empty text)'));
    return new Promise<Buffer>((resolve, reject) => {
      const job: Job = {
        id: randomUUID(),
        text: text.slice(0, MAX_TTS_TEXT),
        voice,
        chunks: [],
        bytes: 0,
        started: false,
        sends: 0,
        timer: undefined,
        conn: undefined,
        resolve,
        reject,
      };
      job.timer = setTimeout(() => this.#onJobTimeout(job), this.#requestTimeoutMs);
      this.#waiting.push(job);
      this.#pump();
    });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const err = new TtsError('unavailable', 'PlayAI TTS: closed');
    for (const job of this.#waiting.splice(0)) this.#fail(job, err);
    const conn = this.#conn;
    this.#conn = undefined;
    if (conn !== undefined) {
      for (const job of conn.queue.splice(0)) this.#fail(job, err);
      this.#endConn(conn);
    }
  }

  // ------------------------------------------------------------------ sending

  /** Sends waiting commands on a usable socket, or opens one. */
  #pump(): void {
    if (this.#closed || this.#waiting.length === 0) return;
    const conn = this.#conn;
    if (conn !== undefined && !conn.retiring && this.#now() >= conn.expiresAt - this.#marginMs) {
      // Its URL is about to expire: no new commands; it closes once its answers are in.
      this.#log.debug({ expiresAt: new Date(conn.expiresAt).toISOString() }, 'PlayAI TTS: socket URL about to expire; renewing');
      this.#retire(conn);
    }
    const live = this.#conn;
    if (live !== undefined && live.open && !live.retiring) {
      if (live.idle !== undefined) clearTimeout(live.idle);
      live.idle = undefined;
      for (const job of this.#waiting.splice(0)) this.#send(live, job);
      return;
    }
    if ((live === undefined || live.retiring) && !this.#opening) void this.#open();
  }

  #send(conn: Conn, job: Job): void {
    job.conn = conn;
    job.sends++;
    conn.queue.push(job);
    conn.ws.send(JSON.stringify({ text: job.text, voice: job.voice, output_format: 'mulaw', sample_rate: 8000, request_id: job.id }));
  }

  async #open(retryAfterRefusal = true): Promise<void> {
    this.#opening = true;
    try {
      const auth = await this.#freshAuth();
      if (this.#closed || this.#waiting.length === 0) return;
      const url = auth.urls.get(this.#o.model);
      if (url === undefined) {
        throw new TtsError('protocol', `PlayAI TTS: the account has no socket for model ${this.#o.model} (models: ${[...auth.urls.keys()].join(', ')}): set TTS_MODEL to one of them`);
      }
      const conn = await this.#connect(url, auth.expiresAt);
      if (this.#closed) {
        this.#endConn(conn);
        return;
      }
      if (conn.refused && retryAfterRefusal) {
        // The URL was refused (expired early, or revoked): one more try on a fresh one.
        this.#log.warn('PlayAI TTS: the socket URL was refused; authenticating again');
        this.#auth = undefined;
        this.#opening = false;
        await this.#open(false);
        return;
      }
      if (conn.refused) throw new TtsError('auth', 'PlayAI TTS: the socket refused a fresh URL: check PLAYAI_API_KEY, PLAYAI_USER_ID and TTS_MODEL');
      if (!conn.open) throw new TtsError('unavailable', 'PlayAI TTS: could not open the socket');
    } catch (err) {
      const e = err instanceof TtsError ? err : new TtsError('unavailable', `PlayAI TTS: ${err instanceof Error ? err.message : String(err)}`);
      this.#warnOnce(`open:${e.kind}`, { kind: e.kind, err: e.message }, 'PlayAI TTS: cannot synthesize; callers hear <Say> instead');
      for (const job of this.#waiting.splice(0)) this.#fail(job, e);
    } finally {
      this.#opening = false;
    }
    this.#pump();
  }

  #freshAuth(): Promise<TtsAuth> {
    const auth = this.#auth;
    if (auth !== undefined && this.#now() < auth.expiresAt - this.#marginMs) return Promise.resolve(auth);
    this.#authing ??= (async () => {
      try {
        this.authRequests++;
        const next = await fetchTtsAuth({
          authUrl: this.#o.authUrl,
          apiKey: this.#o.apiKey,
          userId: this.#o.userId,
          timeoutMs: this.#o.authTimeoutMs ?? 10_000,
          log: this.#log,
          now: this.#now,
          ...(this.#o.fetchImpl !== undefined ? { fetchImpl: this.#o.fetchImpl } : {}),
        });
        if (next.expiresAt - this.#marginMs <= this.#now()) {
          // Already inside the renewal margin (clocks apart, or a very short lifetime): use it for a
          // minute rather than asking again at once.
          this.#warnOnce('short-expiry', { expiresAt: new Date(next.expiresAt).toISOString() }, 'PlayAI TTS: the socket URL expires sooner than the renewal margin (clock skew?); using it for a minute');
          next.expiresAt = this.#now() + this.#marginMs + 60_000;
        }
        this.#auth = next;
        this.#log.debug({ expiresAt: new Date(next.expiresAt).toISOString(), models: [...next.urls.keys()] }, 'PlayAI TTS: authenticated');
        return next;
      } finally {
        this.#authing = undefined;
      }
    })();
    return this.#authing;
  }

  /** Opens a socket; resolves once it is open, refused or failed (never rejects). */
  #connect(url: string, expiresAt: number): Promise<Conn> {
    return new Promise<Conn>((resolve) => {
      const ws = new WebSocket(url, { handshakeTimeout: this.#o.connectTimeoutMs ?? 5000, perMessageDeflate: false, maxPayload: MAX_ANSWER_BYTES });
      const conn: Conn = { ws, open: false, retiring: false, expiresAt, queue: [], idle: undefined, refused: false };
      this.connections++;
      let settled = false;
      const settle = (): void => {
        if (settled) return;
        settled = true;
        resolve(conn);
      };
      ws.on('unexpected-response', (_req, res) => {
        conn.refused = res.statusCode === 401 || res.statusCode === 403;
        this.#log.warn({ status: res.statusCode }, 'PlayAI TTS: the socket handshake was refused');
        res.resume();
        ws.terminate();
      });
      ws.on('open', () => {
        conn.open = true;
        this.#conn = conn;
        settle();
      });
      ws.on('message', (data, isBinary) => {
        try {
          this.#onMessage(conn, data, isBinary);
        } catch (err) {
          this.#log.error({ err }, 'PlayAI TTS: handling a message failed');
          this.#connFailed(conn, 'protocol');
        }
      });
      ws.on('error', (err) => {
        this.#log.debug({ err: err.message }, 'PlayAI TTS socket error');
      });
      ws.on('close', (code) => {
        this.#onClose(conn, code);
        settle();
      });
    });
  }

  // ------------------------------------------------------------------ answers

  #onMessage(conn: Conn, data: RawData, isBinary: boolean): void {
    const buf = Array.isArray(data) ? Buffer.concat(data) : Buffer.isBuffer(data) ? data : Buffer.from(data);
    const head = conn.queue[0];
    if (isBinary) {
      if (head === undefined) {
        this.#warnOnce('audio-unasked', { bytes: buf.length }, 'PlayAI TTS: audio arrived with no command waiting; ignored');
        return;
      }
      if (!head.started) {
        this.#warnOnce('audio-before-start', {}, 'PlayAI TTS: audio arrived before "start"; taken as the answer to the oldest command');
        head.started = true;
      }
      head.bytes += buf.length;
      if (head.bytes > MAX_ANSWER_BYTES) {
        this.#finish(conn, head, new TtsError('protocol', `PlayAI TTS: an answer exceeded ${MAX_ANSWER_BYTES} bytes`));
        this.#connFailed(conn, 'protocol');
        return;
      }
      head.chunks.push(buf);
      return;
    }
    let json: unknown;
    try {
      json = JSON.parse(buf.toString('utf8'));
    } catch {
      this.#warnOnce('not-json', { bytes: buf.length }, 'PlayAI TTS: a text frame that is not JSON; ignored');
      return;
    }
    const frame = controlFrame.safeParse(json);
    if (!frame.success) {
      this.#warnOnce('bad-frame', {}, 'PlayAI TTS: a JSON frame that is not an object; ignored');
      return;
    }
    const f = frame.data;
    if (f.error !== undefined) {
      const target = this.#byRequestId(conn, f.request_id) ?? head;
      const message = typeof f.error === 'string' ? f.error : JSON.stringify(f.error);
      if (target === undefined) {
        this.#log.warn({ error: message.slice(0, 300) }, 'PlayAI TTS: the service reported an error about no command');
        return;
      }
      this.#log.warn({ error: message.slice(0, 300), requestId: target.id }, 'PlayAI TTS: the service refused a command');
      this.#finish(conn, target, new TtsError('service', `PlayAI TTS: ${message.slice(0, 300)}`));
      return;
    }
    if (head === undefined) {
      this.#warnOnce(`unasked:${f.type ?? ''}`, { type: f.type }, 'PlayAI TTS: a message with no command waiting; ignored');
      return;
    }
    if (f.request_id !== undefined && f.request_id !== null && String(f.request_id) !== head.id) {
      this.#warnOnce('request-id', { type: f.type }, 'PlayAI TTS: an answer names another request_id than the oldest command; trusting the order');
    }
    if (f.type === 'start') {
      head.started = true;
    } else if (f.type === 'end') {
      let out: Buffer;
      try {
        const { audio, converted } = toTelephoneAudio(Buffer.concat(head.chunks));
        if (converted) this.#warnOnce('converted', {}, 'PlayAI TTS: the service answered WAV, not raw mu-law; converting');
        out = audio;
      } catch (err) {
        this.#finish(conn, head, err instanceof TtsError ? err : new TtsError('protocol', String(err)));
        return;
      }
      this.#finish(conn, head, out);
    } else {
      this.#warnOnce(`type:${String(f.type).slice(0, 40)}`, { type: String(f.type).slice(0, 40) }, 'PlayAI TTS: ignored a message of unknown type');
    }
  }

  #byRequestId(conn: Conn, id: unknown): Job | undefined {
    if (id === undefined || id === null) return undefined;
    return conn.queue.find((j) => j.id === String(id));
  }

  /** Settles a sent command and takes it off its socket; an idle or retiring socket then closes or waits. */
  #finish(conn: Conn, job: Job, result: Buffer | TtsError): void {
    const i = conn.queue.indexOf(job);
    if (i >= 0) conn.queue.splice(i, 1);
    if (result instanceof TtsError) this.#fail(job, result);
    else this.#succeed(job, result);
    this.#afterAnswer(conn);
  }

  #afterAnswer(conn: Conn): void {
    if (conn.queue.length > 0) return;
    if (conn.retiring) {
      this.#endConn(conn);
      return;
    }
    if (conn.idle === undefined && this.#waiting.length === 0) {
      conn.idle = setTimeout(() => {
        conn.idle = undefined;
        if (conn.queue.length === 0) this.#retire(conn);
      }, this.#idleMs);
      conn.idle.unref();
    }
  }

  // ------------------------------------------------------------------ failures

  #onJobTimeout(job: Job): void {
    job.timer = undefined;
    const err = new TtsError('timeout', `PlayAI TTS: no complete answer within ${this.#requestTimeoutMs} ms`);
    const w = this.#waiting.indexOf(job);
    if (w >= 0) {
      this.#waiting.splice(w, 1);
      this.#fail(job, err);
      return;
    }
    const conn = job.conn;
    if (conn === undefined) return;
    const i = conn.queue.indexOf(job);
    if (i < 0) return;
    conn.queue.splice(i, 1);
    this.#fail(job, err);
    // Its late answer would be taken for the next command's: this socket is done.
    this.#connFailed(conn, 'timeout');
  }

  /** The socket cannot be trusted any more: end it (its unanswered commands are handled by onClose). */
  #connFailed(conn: Conn, why: TtsFailure): void {
    this.#log.warn({ why, pending: conn.queue.length }, 'PlayAI TTS: ending the socket');
    this.#retire(conn);
    conn.ws.terminate();
  }

  #onClose(conn: Conn, code: number): void {
    if (conn.idle !== undefined) clearTimeout(conn.idle);
    conn.idle = undefined;
    conn.open = false;
    if (this.#conn === conn) this.#conn = undefined;
    const left = conn.queue.splice(0);
    if (left.length > 0) this.#log.warn({ code, unanswered: left.length }, 'PlayAI TTS: the socket closed with commands unanswered');
    const again: Job[] = [];
    for (const job of left) {
      if (job.started) this.#fail(job, new TtsError('dropped', `PlayAI TTS: the socket closed (${code}) in the middle of an answer`));
      else if (job.sends < 2 && !this.#closed) again.push(job);
      else this.#fail(job, new TtsError('dropped', `PlayAI TTS: the socket closed (${code}) before an answer`));
    }
    if (again.length > 0) {
      this.#waiting.unshift(...again);
      this.#pump();
    }
  }

  /** The socket takes no new commands; it closes once its answers are in (at once when none is due). */
  #retire(conn: Conn): void {
    conn.retiring = true;
    if (this.#conn === conn) this.#conn = undefined;
    if (conn.queue.length === 0) this.#endConn(conn);
  }

  #endConn(conn: Conn): void {
    if (conn.idle !== undefined) clearTimeout(conn.idle);
    conn.idle = undefined;
    conn.retiring = true;
    if (conn.ws.readyState === WebSocket.OPEN) conn.ws.close(1000, 'done');
    else if (conn.ws.readyState === WebSocket.CONNECTING) conn.ws.terminate();
  }

  #succeed(job: Job, audio: Buffer): void {
    if (job.timer !== undefined) clearTimeout(job.timer);
    job.timer = undefined;
    job.chunks = [];
    job.resolve(audio);
  }

  #fail(job: Job, err: TtsError): void {
    if (job.timer !== undefined) clearTimeout(job.timer);
    job.timer = undefined;
    job.chunks = [];
    job.reject(err);
  }

  #warnOnce(key: string, obj: Record<string, unknown>, msg: string): void {
    if (this.#warned.has(key) || this.#warned.size >= 64) return;
    this.#warned.add(key);
    this.#log.warn(obj, msg);
  }
}
