/**
 * Lean ElevenLabs Agents echo agent for the benchmark: the API base is
 * `http://127.0.0.1:PORT` (`ELEVENLABS_URL`), the conversation socket
 * `ws://127.0.0.1:PORT/v1/convai/conversation?agent_id=…` (a public agent: no
 * key, no signed URL).
 *
 * As the service: the first frame must be `conversation_initiation_client_data`
 * (else `error` `invalid_message` and close 1008); the answer is
 * `conversation_initiation_metadata` with the agent's audio formats, the same
 * both ways: `ulaw_8000` (the recommended setting, audio passes through the
 * bridge untouched) or `pcm_16000` (the bridge converts both ways). Caller audio
 * is `{"user_audio_chunk":"<base64>"}`; `ping` every `pingIntervalMs` (one timer
 * for the whole server), `pong` expected; unknown client messages get
 * `invalid_message` and close 1008.
 *
 * Echo: each chunk comes back at once as
 * `{"type":"audio","audio_event":{"audio_base_64":"<same base64>","event_id":N}}`,
 * N the response's id (it grows through the conversation; all audio of one
 * response shares it). A marker frame (μ-law only: a PCM16 frame cannot carry
 * it) is not echoed: it gets `interruption {event_id: N}`, and the next echo
 * has a greater id (a new response).
 */
import { randomBytes } from 'node:crypto';
import { WebSocket } from 'ws';
import { afterDelay, asBuffer, framedBy, isBase64Span, isMarkerB64, listenEchoServer, parseObject, refuseUpgrade, type EchoAgent, type EchoAgentOptions } from './common.js';

/** ElevenLabs format names this agent can be set to (both directions). */
export type ElevenLabsEchoFormat = 'ulaw_8000' | 'pcm_16000';

export interface ElevenLabsEchoOptions extends EchoAgentOptions {
  /** The agent's input and output audio format (default `ulaw_8000`). */
  format?: ElevenLabsEchoFormat;
  /** `ping` to every conversation this often (default 5000 ms; 0: never). The service's interval is not documented. */
  pingIntervalMs?: number;
}

const CHUNK_HEAD = Buffer.from('{"user_audio_chunk":"', 'latin1');
const CHUNK_TAIL = Buffer.from('"}', 'latin1');
const AUDIO_HEAD = Buffer.from('{"type":"audio","audio_event":{"audio_base_64":"', 'latin1');
const TEXT = { binary: false } as const;
/** Client message types the service takes after the first frame (besides `user_audio_chunk`). */
const CLIENT_TYPES = new Set(['pong', 'user_message', 'contextual_update', 'client_tool_result', 'user_activity']);

/** Starts the agent; resolves once it listens. */
export async function startElevenLabsEcho(opts: ElevenLabsEchoOptions = {}): Promise<EchoAgent> {
  const marker = opts.bargeInMarker !== false;
  const format = opts.format ?? 'ulaw_8000';
  const live = new Set<ElevenLabsEchoConnection>();
  const agent = await listenEchoServer(
    opts,
    (_req, url, socket, accept) => {
      if (url.pathname !== '/v1/convai/conversation') return refuseUpgrade(socket, 404, { detail: `No route for ${url.pathname}` });
      const agentId = url.searchParams.get('agent_id');
      if (agentId === null || agentId === '') return refuseUpgrade(socket, 400, { detail: 'agent_id is required' });
      accept((ws) => {
        const conn = new ElevenLabsEchoConnection(ws, format, marker, opts.readyDelayMs ?? 0);
        live.add(conn);
        ws.once('close', () => live.delete(conn));
      });
    },
    (origin) => `http://${origin}`,
  );
  const every = opts.pingIntervalMs ?? 5000;
  const timer = every > 0 ? setInterval(() => {
    for (const c of live) c.ping();
  }, every) : undefined;
  timer?.unref();
  return {
    url: agent.url,
    port: agent.port,
    get connections() {
      return agent.connections;
    },
    close(): Promise<void> {
      if (timer !== undefined) clearInterval(timer);
      live.clear();
      return agent.close();
    },
  };
}

class ElevenLabsEchoConnection {
  readonly #ws: WebSocket;
  readonly #format: ElevenLabsEchoFormat;
  readonly #marker: boolean;
  #started = false;
  #closing = false;
  /** The last event id given out (responses, pings, transcripts share the sequence). */
  #eventId = 0;
  /** The current response's tail `","event_id":N}}`, undefined until the next echo opens one. */
  #tail: Buffer | undefined;
  #responseId = 0;

  readonly #readyDelayMs: number;

  constructor(ws: WebSocket, format: ElevenLabsEchoFormat, marker: boolean, readyDelayMs: number) {
    this.#ws = ws;
    this.#readyDelayMs = readyDelayMs;
    this.#format = format;
    this.#marker = marker && format === 'ulaw_8000';
    ws.on('message', (data, isBinary) => this.#onMessage(asBuffer(data), isBinary));
  }

  ping(): void {
    if (!this.#started || this.#closing) return;
    this.#send({ type: 'ping', ping_event: { event_id: ++this.#eventId, ping_ms: null } });
  }

  #send(msg: Record<string, unknown>): void {
    if (this.#ws.readyState === WebSocket.OPEN) this.#ws.send(JSON.stringify(msg));
  }

  /** `error` then close, as the service ends a conversation. */
  #fail(errorType: string, message: string, code: 1002 | 1008 = 1008): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#send({ type: 'error', error_event: { code, message, error_type: errorType } });
    this.#ws.close(code, errorType);
  }

  #onMessage(buf: Buffer, isBinary: boolean): void {
    if (this.#closing) return;
    if (isBinary) return this.#fail('invalid_message', 'Binary frames are not supported');
    if (this.#started && framedBy(buf, CHUNK_HEAD, CHUNK_TAIL)) {
      const start = CHUNK_HEAD.length;
      const end = buf.length - CHUNK_TAIL.length;
      if (isBase64Span(buf, start, end)) {
        this.#onAudio(buf, start, end);
        return;
      }
    }
    const o = parseObject(buf.toString('utf8'));
    if (o === undefined) return this.#fail('invalid_message', 'Invalid JSON message');
    if (!this.#started) {
      if (o.type !== 'conversation_initiation_client_data') return this.#fail('invalid_message', 'The first message must be conversation_initiation_client_data');
      this.#started = true;
      afterDelay(this.#ws, this.#readyDelayMs, () =>
        this.#send({
          type: 'conversation_initiation_metadata',
          conversation_initiation_metadata_event: { conversation_id: `conv_${randomBytes(10).toString('hex')}`, agent_output_audio_format: this.#format, user_input_audio_format: this.#format },
        }),
      );
      return;
    }
    if ('user_audio_chunk' in o) {
      const chunk = o.user_audio_chunk;
      const bytes = typeof chunk === 'string' ? Buffer.from(chunk, 'latin1') : undefined;
      if (bytes === undefined || !isBase64Span(bytes, 0, bytes.length)) return this.#fail('invalid_message', 'user_audio_chunk must be base64');
      this.#onAudio(bytes, 0, bytes.length);
      return;
    }
    if (typeof o.type !== 'string' || !CLIENT_TYPES.has(o.type)) return this.#fail('invalid_message', `Unknown message type ${String(o.type).slice(0, 40)}`);
    if (o.type === 'pong' && !Number.isInteger(o.event_id)) return this.#fail('missing_fields', 'pong needs an integer event_id');
  }

  #onAudio(buf: Buffer, start: number, end: number): void {
    if (this.#marker && isMarkerB64(buf, start, end)) {
      this.#send({ type: 'interruption', interruption_event: { event_id: this.#responseId } });
      this.#tail = undefined;
      return;
    }
    if (end === start) return;
    if (this.#tail === undefined) {
      this.#responseId = ++this.#eventId;
      this.#tail = Buffer.from(`","event_id":${this.#responseId}}}`, 'latin1');
    }
    const tail = this.#tail;
    const n = end - start;
    const out = Buffer.allocUnsafe(AUDIO_HEAD.length + n + tail.length);
    AUDIO_HEAD.copy(out, 0);
    buf.copy(out, AUDIO_HEAD.length, start, end);
    tail.copy(out, AUDIO_HEAD.length + n);
    if (this.#ws.readyState === WebSocket.OPEN) this.#ws.send(out, TEXT);
  }
}
