/**
 * Lean OpenAI Realtime (GA) echo agent for the benchmark, at
 * `ws://127.0.0.1:PORT/v1/realtime?model=…` (`OPENAI_REALTIME_URL`).
 *
 * As the service: the upgrade needs `Authorization: Bearer <key>` (401
 * otherwise) and exactly a `model` query parameter; an `OpenAI-Beta` header gets
 * `beta_api_shape_disabled` and close 4000. `session.created` on open; a
 * `session.update` (with `session.type: "realtime"`; this agent speaks
 * `audio/pcmu` only) is answered with `session.updated`; caller audio before it
 * is ignored.
 *
 * Echo: each `input_audio_buffer.append` comes back at once as one
 * `response.output_audio.delta` with the same base64, inside a response:
 * `response.created` and `response.output_item.added` open it (once per
 * response), and every delta carries its `response_id` and `item_id`. A marker
 * frame (see `bench/frames.ts`) is not echoed: it gets
 * `input_audio_buffer.speech_started`, the current response ends with
 * `response.done` (`cancelled`, `turn_detected`, as with `interrupt_response`),
 * and the next echo opens a new response. `conversation.item.truncate` is
 * checked against the audio sent for the item and answered with
 * `conversation.item.truncated`.
 *
 * Hot path: the append is recognised by its exact head and tail bytes (else
 * `JSON.parse`), and the delta is written into one Buffer (head, event id
 * digits, the response's ids, the audio bytes copied as they came, tail).
 */
import { randomBytes } from 'node:crypto';
import { WebSocket } from 'ws';
import { afterDelay, asBuffer, base64Bytes, framedBy, isBase64Span, isMarkerB64, isObj, listenEchoServer, parseObject, refuseUpgrade, writeDigits, type EchoAgent, type EchoAgentOptions } from './common.js';

export interface OpenAiEchoOptions extends EchoAgentOptions {
  /** The bearer key to require; any non-empty key when unset. */
  apiKey?: string;
}

const APPEND_HEAD = Buffer.from('{"type":"input_audio_buffer.append","audio":"', 'latin1');
const APPEND_TAIL = Buffer.from('"}', 'latin1');
const DELTA_HEAD = Buffer.from('{"type":"response.output_audio.delta","event_id":"event_', 'latin1');
const DELTA_TAIL = APPEND_TAIL;
/** Room for the event id digits. */
const DIGITS = 16;
const TEXT = { binary: false } as const;

const rid = (prefix: string): string => `${prefix}_${randomBytes(10).toString('hex')}`;

/** Starts the agent; resolves once it listens. */
export function startOpenAiEcho(opts: OpenAiEchoOptions = {}): Promise<EchoAgent> {
  const marker = opts.bargeInMarker !== false;
  return listenEchoServer(
    opts,
    (req, url, socket, accept) => {
      if (url.pathname !== '/v1/realtime') return refuseUpgrade(socket, 404, { error: { type: 'invalid_request_error', code: 'not_found', message: `No route for ${url.pathname}` } });
      const auth = req.headers.authorization ?? '';
      const key = /^Bearer (\S+)$/.exec(auth)?.[1];
      if (key === undefined || (opts.apiKey !== undefined && key !== opts.apiKey)) {
        return refuseUpgrade(socket, 401, { error: { type: 'invalid_request_error', code: 'invalid_api_key', message: 'Incorrect API key provided.' } });
      }
      const model = url.searchParams.get('model');
      if (model === null || model === '' || url.searchParams.has('call_id') || url.searchParams.has('intent')) {
        return refuseUpgrade(socket, 400, { error: { type: 'invalid_request_error', code: 'invalid_request_error', message: 'Provide exactly one of the query parameters model, call_id or intent.' } });
      }
      const beta = req.headers['openai-beta'] !== undefined;
      accept((ws) => new OpenAiEchoConnection(ws, model, beta, marker, opts.readyDelayMs ?? 0));
    },
    (origin) => `ws://${origin}/v1/realtime`,
  );
}

/** The audio item of a response, with the μ-law bytes sent for it. */
interface Item {
  id: string;
  bytes: number;
}

interface Response {
  id: string;
  item: Item;
  /** `","response_id":"…","item_id":"…","output_index":0,"content_index":0,"delta":"` */
  mid: Buffer;
}

class OpenAiEchoConnection {
  readonly #ws: WebSocket;
  readonly #marker: boolean;
  readonly #sessionId = rid('sess');
  #configured = false;
  #session: Record<string, unknown> = {};
  #events = 0;
  /** μ-law bytes of caller audio received since the session was configured. */
  #bytesIn = 0;
  #response: Response | undefined;
  /** The item of the previous response (the one a truncate after a barge-in names). */
  #previous: Item | undefined;

  readonly #readyDelayMs: number;

  constructor(ws: WebSocket, model: string, beta: boolean, marker: boolean, readyDelayMs: number) {
    this.#ws = ws;
    this.#marker = marker;
    this.#readyDelayMs = readyDelayMs;
    if (beta) {
      this.#error('invalid_request_error', 'beta_api_shape_disabled', 'The Realtime beta API is no longer supported. Please use the GA interface.');
      ws.close(4000, 'invalid_request_error.beta_api_shape_disabled');
      return;
    }
    ws.on('message', (data, isBinary) => this.#onMessage(asBuffer(data), isBinary));
    this.#session = {
      type: 'realtime',
      object: 'realtime.session',
      id: this.#sessionId,
      model,
      output_modalities: ['audio'],
      instructions: '',
      audio: {
        input: { format: { type: 'audio/pcm', rate: 24000 }, transcription: null, turn_detection: { type: 'server_vad', threshold: 0.5, prefix_padding_ms: 300, silence_duration_ms: 200 } },
        output: { format: { type: 'audio/pcm', rate: 24000 }, voice: 'marin', speed: 1 },
      },
      tools: [],
      tool_choice: 'auto',
    };
    this.#send({ type: 'session.created', event_id: this.#eventId(), session: this.#session });
    this.#send({ type: 'conversation.created', event_id: this.#eventId(), conversation: { id: rid('conv'), object: 'realtime.conversation' } });
  }

  #eventId(): string {
    return `event_${++this.#events}`;
  }

  #send(msg: Record<string, unknown>): void {
    if (this.#ws.readyState === WebSocket.OPEN) this.#ws.send(JSON.stringify(msg));
  }

  #error(type: string, code: string, message: string, param: string | null = null, clientEventId: unknown = null): void {
    this.#send({ type: 'error', event_id: this.#eventId(), error: { type, code, message, param, event_id: typeof clientEventId === 'string' ? clientEventId : null } });
  }

  #onMessage(buf: Buffer, isBinary: boolean): void {
    if (isBinary) {
      this.#error('invalid_request_error', 'invalid_json', 'Binary frames are not supported.');
      return;
    }
    if (framedBy(buf, APPEND_HEAD, APPEND_TAIL)) {
      const start = APPEND_HEAD.length;
      const end = buf.length - APPEND_TAIL.length;
      if (isBase64Span(buf, start, end)) {
        this.#onAudio(buf, start, end);
        return;
      }
    }
    const o = parseObject(buf.toString('utf8'));
    if (o === undefined) {
      this.#error('invalid_request_error', 'invalid_json', 'The event is not valid JSON.');
      return;
    }
    this.#onEvent(o);
  }

  #onEvent(o: Record<string, unknown>): void {
    const eventId = o.event_id;
    switch (o.type) {
      case 'session.update':
        this.#onSessionUpdate(o.session, eventId);
        return;
      case 'input_audio_buffer.append': {
        const audio = o.audio;
        if (typeof audio !== 'string') return this.#error('invalid_request_error', 'missing_required_parameter', "Missing required parameter: 'audio'.", 'audio', eventId);
        const bytes = Buffer.from(audio, 'latin1');
        if (!isBase64Span(bytes, 0, bytes.length)) return this.#error('invalid_request_error', 'invalid_value', 'Invalid base64 audio.', 'audio', eventId);
        this.#onAudio(bytes, 0, bytes.length);
        return;
      }
      case 'input_audio_buffer.commit':
      case 'input_audio_buffer.clear':
        return;
      case 'conversation.item.truncate':
        this.#onTruncate(o);
        return;
      case 'conversation.item.create': {
        if (!isObj(o.item)) return this.#error('invalid_request_error', 'missing_required_parameter', "Missing required parameter: 'item'.", 'item', eventId);
        const item = { id: rid('item'), ...o.item };
        this.#send({ type: 'conversation.item.added', event_id: this.#eventId(), previous_item_id: null, item });
        this.#send({ type: 'conversation.item.done', event_id: this.#eventId(), previous_item_id: null, item });
        return;
      }
      case 'response.create':
        if (this.#response !== undefined) {
          this.#error('invalid_request_error', 'conversation_already_has_active_response', 'Conversation already has an active response in progress.', null, eventId);
          return;
        }
        // An echo has nothing to say of its own: an empty response.
        this.#startResponse();
        this.#endResponse('completed', null);
        return;
      case 'response.cancel':
        if (this.#response === undefined) {
          this.#error('invalid_request_error', 'response_cancel_not_active', 'Cancellation failed: no active response found', null, eventId);
          return;
        }
        this.#endResponse('cancelled', 'client_cancelled');
        return;
      default:
        this.#error('invalid_request_error', 'invalid_value', `Invalid value: ${JSON.stringify(o.type)?.slice(0, 60)}.`, 'type', eventId);
    }
  }

  #onSessionUpdate(s: unknown, eventId: unknown): void {
    if (!isObj(s)) return this.#error('invalid_request_error', 'missing_required_parameter', "Missing required parameter: 'session'.", 'session', eventId);
    if (s.type === undefined) return this.#error('invalid_request_error', 'missing_required_parameter', "Missing required parameter: 'session.type'.", 'session.type', eventId);
    if (s.type !== 'realtime') return this.#error('invalid_request_error', 'invalid_value', 'Invalid value for session.type.', 'session.type', eventId);
    const audio = isObj(s.audio) ? s.audio : {};
    for (const side of ['input', 'output'] as const) {
      const given = audio[side];
      const format = isObj(given) && isObj(given.format) ? given.format.type : undefined;
      if (format !== 'audio/pcmu') {
        return this.#error('invalid_request_error', 'invalid_value', `The benchmark echo agent speaks audio/pcmu only (session.audio.${side}.format).`, `session.audio.${side}.format`, eventId);
      }
    }
    const mine = this.#session.audio;
    if (isObj(mine)) {
      for (const side of ['input', 'output'] as const) {
        const have = mine[side];
        const given = audio[side];
        if (isObj(have) && isObj(given)) Object.assign(have, given);
      }
    }
    for (const k of ['instructions', 'output_modalities', 'tools', 'tool_choice']) if (s[k] !== undefined) this.#session[k] = s[k];
    afterDelay(this.#ws, this.#readyDelayMs, () => {
      this.#configured = true;
      this.#send({ type: 'session.updated', event_id: this.#eventId(), session: this.#session });
    });
  }

  #onAudio(buf: Buffer, start: number, end: number): void {
    if (!this.#configured) return; // the service would take it as PCM16 24 kHz: not echoed
    const n = end - start;
    const bytes = base64Bytes(buf, start, end);
    this.#bytesIn += bytes;
    if (this.#marker && isMarkerB64(buf, start, end)) {
      this.#bargeIn();
      return;
    }
    if (n === 0) return;
    const r = this.#response ?? this.#startResponse();
    r.item.bytes += bytes;
    const out = Buffer.allocUnsafe(DELTA_HEAD.length + DIGITS + r.mid.length + n + DELTA_TAIL.length);
    let o = DELTA_HEAD.copy(out, 0);
    o = writeDigits(out, o, ++this.#events);
    o += r.mid.copy(out, o);
    o += buf.copy(out, o, start, end);
    o += DELTA_TAIL.copy(out, o);
    if (this.#ws.readyState === WebSocket.OPEN) this.#ws.send(out.subarray(0, o), TEXT);
  }

  /** The caller started speaking (server VAD): the response is cut and the next echo opens another. */
  #bargeIn(): void {
    this.#send({ type: 'input_audio_buffer.speech_started', event_id: this.#eventId(), audio_start_ms: Math.floor(this.#bytesIn / 8), item_id: rid('item') });
    if (this.#response !== undefined) this.#endResponse('cancelled', 'turn_detected');
  }

  #startResponse(): Response {
    const id = rid('resp');
    const item: Item = { id: rid('item'), bytes: 0 };
    const r: Response = { id, item, mid: Buffer.from(`","response_id":"${id}","item_id":"${item.id}","output_index":0,"content_index":0,"delta":"`, 'latin1') };
    this.#response = r;
    this.#send({
      type: 'response.created',
      event_id: this.#eventId(),
      response: { object: 'realtime.response', id, status: 'in_progress', status_details: null, output: [], conversation_id: null, output_modalities: ['audio'], usage: null },
    });
    this.#send({
      type: 'response.output_item.added',
      event_id: this.#eventId(),
      response_id: id,
      output_index: 0,
      item: { id: item.id, object: 'realtime.item', type: 'message', status: 'in_progress', role: 'assistant', content: [] },
    });
    return r;
  }

  #endResponse(status: 'completed' | 'cancelled', reason: string | null): void {
    const r = this.#response;
    if (r === undefined) return;
    this.#response = undefined;
    this.#previous = r.item;
    const output = [{ id: r.item.id, object: 'realtime.item', type: 'message', status: status === 'completed' ? 'completed' : 'incomplete', role: 'assistant', content: [{ type: 'output_audio', transcript: '' }] }];
    this.#send({
      type: 'response.done',
      event_id: this.#eventId(),
      response: {
        object: 'realtime.response',
        id: r.id,
        status,
        status_details: reason === null ? null : { type: status, reason },
        output,
        usage: { total_tokens: 0, input_tokens: 0, output_tokens: 0 },
      },
    });
  }

  #onTruncate(o: Record<string, unknown>): void {
    const eventId = o.event_id;
    const item = [this.#response?.item, this.#previous].find((it) => it !== undefined && it.id === o.item_id);
    if (item === undefined) return this.#error('invalid_request_error', 'invalid_value', `Item with item_id '${String(o.item_id).slice(0, 80)}' not found.`, 'item_id', eventId);
    if (o.content_index !== 0) return this.#error('invalid_request_error', 'invalid_value', 'Invalid value for content_index.', 'content_index', eventId);
    const ms = o.audio_end_ms;
    if (typeof ms !== 'number' || !Number.isInteger(ms)) return this.#error('invalid_request_error', 'invalid_type', "Invalid type for 'audio_end_ms': expected an integer.", 'audio_end_ms', eventId);
    const length = Math.floor(item.bytes / 8);
    if (ms < 0 || ms > length) return this.#error('invalid_request_error', 'invalid_value', `Audio content of ${length}ms is already shorter than ${ms}ms`, 'audio_end_ms', eventId);
    this.#send({ type: 'conversation.item.truncated', event_id: this.#eventId(), item_id: item.id, content_index: 0, audio_end_ms: ms });
  }
}
