/**
 * A browser's side of a web call, for tests: a WebSocket to `/web/media-stream`
 * that speaks the Twilio Media Streams protocol the way the console's
 * softphone does. It sends `connected`, `start` (its own MZ streamSid, the
 * callSid and token from `POST /v1/web-calls`), 20 ms μ-law `media` frames and
 * `stop`; it plays agent audio in real time in a model of a playout buffer,
 * echoes each `mark` once the audio before it has played, and on `clear`
 * empties the buffer and echoes every pending mark at once (as Twilio does).
 */
import { randomBytes } from 'node:crypto';
import WebSocket from 'ws';

export interface ConnectOptions {
  /** The Origin header a browser sends (default: the server's own origin); null sends none. */
  origin?: string | null;
  headers?: Record<string, string>;
}

/** The upgrade was refused with an HTTP answer. */
export class UpgradeRefused extends Error {
  constructor(
    readonly status: number,
    readonly body: string,
  ) {
    super(`upgrade refused: ${status} ${body}`);
  }
}

export class BrowserStream {
  readonly streamSid = `MZ${randomBytes(16).toString('hex')}`;
  readonly received: Array<Record<string, unknown>> = [];
  mediaFrames = 0;
  mediaBytes = 0;
  marksReceived = 0;
  marksEchoed = 0;
  clears = 0;
  framesSent = 0;
  closed: { code: number; reason: string } | undefined;
  readonly #ws: WebSocket;
  readonly #pending = new Map<string, NodeJS.Timeout>();
  #playEnd = 0;
  #seq = 0;
  #timestamp = 0;
  #callSid = '';
  #mic: NodeJS.Timeout | undefined;
  #queue = new Uint8Array(0);
  readonly #closedPromise: Promise<{ code: number; reason: string }>;

  private constructor(ws: WebSocket) {
    this.#ws = ws;
    this.#closedPromise = new Promise((resolve) => {
      ws.on('close', (code, reason) => {
        this.mute();
        for (const t of this.#pending.values()) clearTimeout(t);
        this.#pending.clear();
        this.closed = { code, reason: reason.toString('utf8') };
        resolve(this.closed);
      });
    });
    ws.on('message', (data: WebSocket.RawData) => this.#onMessage(data.toString()));
  }

  static connect(baseUrl: string, opts: ConnectOptions = {}): Promise<BrowserStream> {
    const http = new URL(baseUrl);
    const origin = opts.origin === undefined ? http.origin : opts.origin;
    const ws = new WebSocket(`ws://${http.host}/web/media-stream`, {
      headers: { ...(origin !== null ? { origin } : {}), ...opts.headers },
    });
    return new Promise((resolve, reject) => {
      ws.once('unexpected-response', (_req, res) => {
        let body = '';
        res.on('data', (c: Buffer) => (body += c.toString('utf8')));
        res.on('end', () => reject(new UpgradeRefused(res.statusCode ?? 0, body)));
      });
      ws.once('error', reject);
      ws.once('open', () => resolve(new BrowserStream(ws)));
    });
  }

  #send(msg: Record<string, unknown>): void {
    if (this.#ws.readyState === WebSocket.OPEN) this.#ws.send(JSON.stringify(msg));
  }

  /** `connected`, then `start` with the call's sid and token, exactly as the console sends them. */
  start(callSid: string, token: string): void {
    this.#callSid = callSid;
    this.#send({ event: 'connected', protocol: 'Call', version: '1.0.0' });
    this.#send({
      event: 'start',
      sequenceNumber: String(++this.#seq),
      start: {
        streamSid: this.streamSid,
        accountSid: 'web',
        callSid,
        tracks: ['inbound'],
        customParameters: { token },
        mediaFormat: { encoding: 'audio/x-mulaw', sampleRate: 8000, channels: 1 },
      },
      streamSid: this.streamSid,
    });
  }

  /** One 20 ms frame of microphone audio (160 bytes of μ-law). */
  sendFrame(frame: Uint8Array): void {
    this.#timestamp += 20;
    this.framesSent++;
    this.#send({
      event: 'media',
      sequenceNumber: String(++this.#seq),
      media: { track: 'inbound', chunk: String(this.framesSent), timestamp: String(this.#timestamp), payload: Buffer.from(frame).toString('base64') },
      streamSid: this.streamSid,
    });
  }

  /**
   * Turns the microphone on: a 20 ms frame every 20 ms, of what {@link say} queued or else
   * silence, as a browser's capture does, until the socket closes or {@link mute}.
   */
  unmute(): void {
    if (this.#mic !== undefined) return;
    const t0 = performance.now();
    let sent = 0;
    const tick = (): void => {
      // Catch up on frames a busy event loop delayed, so the stream stays real time.
      const due = Math.floor((performance.now() - t0) / 20) + 1;
      for (; sent < due; sent++) {
        const frame = new Uint8Array(160).fill(0xff);
        const chunk = this.#queue.subarray(0, 160);
        frame.set(chunk);
        this.#queue = this.#queue.subarray(chunk.length);
        this.sendFrame(frame);
      }
    };
    tick();
    this.#mic = setInterval(tick, 20);
  }

  mute(): void {
    if (this.#mic !== undefined) clearInterval(this.#mic);
    this.#mic = undefined;
  }

  /** Queues `audio` on the microphone (it plays after what is queued already). */
  say(audio: Uint8Array): void {
    const next = new Uint8Array(this.#queue.length + audio.length);
    next.set(this.#queue);
    next.set(audio, this.#queue.length);
    this.#queue = next;
  }

  stop(): void {
    this.#send({ event: 'stop', sequenceNumber: String(++this.#seq), stop: { accountSid: 'web', callSid: this.#callSid }, streamSid: this.streamSid });
  }

  close(): void {
    this.mute();
    this.#ws.close(1000, 'page closed');
  }

  whenClosed(): Promise<{ code: number; reason: string }> {
    return this.#closedPromise;
  }

  /** Resolves once `check` is true, polling (the socket's events drive it). */
  async until(check: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!check()) {
      if (Date.now() > deadline) throw new Error(`browser stream: timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 10));
    }
  }

  #onMessage(text: string): void {
    const msg: unknown = JSON.parse(text);
    if (typeof msg !== 'object' || msg === null) throw new Error(`not a JSON object: ${text}`);
    const m = Object.fromEntries(Object.entries(msg));
    this.received.push(m);
    const now = performance.now();
    switch (m.event) {
      case 'media': {
        const media: unknown = m.media;
        const payload = typeof media === 'object' && media !== null && 'payload' in media && typeof media.payload === 'string' ? media.payload : '';
        const bytes = Buffer.from(payload, 'base64').length;
        this.mediaFrames++;
        this.mediaBytes += bytes;
        this.#playEnd = Math.max(now, this.#playEnd) + bytes / 8;
        return;
      }
      case 'mark': {
        const mark: unknown = m.mark;
        const name = typeof mark === 'object' && mark !== null && 'name' in mark && typeof mark.name === 'string' ? mark.name : '';
        this.marksReceived++;
        const timer = setTimeout(() => this.#echo(name), Math.max(0, this.#playEnd - now));
        this.#pending.set(name, timer);
        return;
      }
      case 'clear':
        this.clears++;
        this.#playEnd = now;
        for (const [name, timer] of [...this.#pending]) {
          clearTimeout(timer);
          this.#echo(name);
        }
        return;
      default:
        return;
    }
  }

  #echo(name: string): void {
    this.#pending.delete(name);
    this.marksEchoed++;
    this.#send({ event: 'mark', sequenceNumber: String(++this.#seq), streamSid: this.streamSid, mark: { name } });
  }
}
