/**
 * Twilio Media Streams codec: pure functions, no sockets, no REST.
 *
 * Inbound (Twilio → us): `connected`, `start`, `media`, `dtmf`, `mark`, `stop`.
 * Outbound (us → Twilio): only `media`, `mark` and `clear`, with exactly the
 * fields Twilio documents (anything else is rejected by Twilio with 31951).
 *
 * `decodeTwilioMessage` never throws: garbage comes back as a {@link TwilioDecodeError}
 * with a kind the caller counts.
 */
import { z } from 'zod';
import { isBase64 } from '../../audio/base64.js';
import { parseJsonObject } from '../../util/json.js';

export interface TwilioConnected {
  event: 'connected';
}
export interface TwilioStart {
  event: 'start';
  streamSid: string;
  callSid: string;
  accountSid: string;
  customParameters: Record<string, string>;
  tracks: string[];
  mediaFormat: { encoding: string; sampleRate: number; channels: number } | undefined;
}
export interface TwilioMedia {
  event: 'media';
  streamSid: string;
  /** base64 μ-law 8 kHz, passed through untouched. */
  payload: string;
  track: string | undefined;
}
export interface TwilioDtmf {
  event: 'dtmf';
  streamSid: string;
  digit: string;
}
export interface TwilioMark {
  event: 'mark';
  streamSid: string;
  name: string;
}
export interface TwilioStop {
  event: 'stop';
  streamSid: string;
}
export type TwilioInbound = TwilioConnected | TwilioStart | TwilioMedia | TwilioDtmf | TwilioMark | TwilioStop;

/** Why an inbound frame was not accepted. Used as a metric label. */
export type TwilioBadFrameKind =
  | 'binary'
  | 'non_json'
  | 'not_object'
  | 'unknown_event'
  | 'invalid_fields'
  | 'bad_payload'
  | 'oversized';

export interface TwilioDecodeError {
  event: undefined;
  kind: TwilioBadFrameKind;
  /** The offending event name when there was one (never payload data). */
  name?: string;
}

/** Largest base64 payload accepted in one inbound `media` frame (Twilio sends 216 chars). */
export const MAX_INBOUND_PAYLOAD_CHARS = 64 * 1024;

const sid = z.string().min(1).max(64);
const startSchema = z.object({
  event: z.literal('start'),
  streamSid: sid.optional(),
  start: z.object({
    streamSid: sid,
    callSid: sid,
    accountSid: z.string().max(64).optional().default(''),
    tracks: z.array(z.string()).optional().default([]),
    customParameters: z.record(z.string(), z.unknown()).optional().nullable(),
    mediaFormat: z
      .object({ encoding: z.string(), sampleRate: z.coerce.number(), channels: z.coerce.number() })
      .optional(),
  }),
});
const markSchema = z.object({ event: z.literal('mark'), streamSid: sid, mark: z.object({ name: z.string().max(256) }) });
const dtmfSchema = z.object({ event: z.literal('dtmf'), streamSid: sid, dtmf: z.object({ digit: z.string().max(8) }) });
const stopSchema = z.object({ event: z.literal('stop'), streamSid: sid });

const bad = (kind: TwilioBadFrameKind, name?: string): TwilioDecodeError =>
  name === undefined ? { event: undefined, kind } : { event: undefined, kind, name: name.slice(0, 40) };

function decodeMedia(o: Record<string, unknown>): TwilioMedia | TwilioDecodeError {
  const media = o.media;
  if (typeof o.streamSid !== 'string' || typeof media !== 'object' || media === null) return bad('invalid_fields', 'media');
  const m = media as Record<string, unknown>;
  const payload = m.payload;
  if (typeof payload !== 'string') return bad('invalid_fields', 'media');
  if (payload.length > MAX_INBOUND_PAYLOAD_CHARS || !isBase64(payload)) return bad('bad_payload', 'media');
  return { event: 'media', streamSid: o.streamSid, payload, track: typeof m.track === 'string' ? m.track : undefined };
}

/** Decodes one text frame from Twilio. Never throws. */
export function decodeTwilioMessage(text: string): TwilioInbound | TwilioDecodeError {
  const o = parseJsonObject(text);
  if (typeof o === 'string') return bad(o);
  switch (o.event) {
    case 'media':
      return decodeMedia(o);
    case 'mark': {
      const r = markSchema.safeParse(o);
      return r.success ? { event: 'mark', streamSid: r.data.streamSid, name: r.data.mark.name } : bad('invalid_fields', 'mark');
    }
    case 'connected':
      return { event: 'connected' };
    case 'start': {
      const r = startSchema.safeParse(o);
      if (!r.success) return bad('invalid_fields', 'start');
      const s = r.data.start;
      if (r.data.streamSid !== undefined && r.data.streamSid !== s.streamSid) return bad('invalid_fields', 'start');
      const customParameters: Record<string, string> = {};
      for (const [k, v] of Object.entries(s.customParameters ?? {})) {
        if (typeof v === 'string') customParameters[k] = v;
      }
      return {
        event: 'start',
        streamSid: s.streamSid,
        callSid: s.callSid,
        accountSid: s.accountSid,
        tracks: s.tracks,
        customParameters,
        mediaFormat: s.mediaFormat,
      };
    }
    case 'dtmf': {
      const r = dtmfSchema.safeParse(o);
      return r.success ? { event: 'dtmf', streamSid: r.data.streamSid, digit: r.data.dtmf.digit } : bad('invalid_fields', 'dtmf');
    }
    case 'stop': {
      const r = stopSchema.safeParse(o);
      return r.success ? { event: 'stop', streamSid: r.data.streamSid } : bad('invalid_fields', 'stop');
    }
    default:
      return bad('unknown_event', typeof o.event === 'string' ? o.event : undefined);
  }
}

/**
 * Encoders for the three messages Twilio accepts on a bidirectional stream,
 * bound to one streamSid. `media` is built as bytes: the caller's base64
 * (already validated, needing no JSON escaping) is copied between a fixed
 * head and tail, with no string in between.
 */
export class TwilioEncoder {
  /** `{"event":"media","streamSid":"…","media":{"payload":"` and the streamSid, in one buffer of their own. */
  readonly #mediaHead: Buffer;
  readonly #sid: Buffer;
  readonly #markPrefix: string;
  readonly #clear: string;

  constructor(readonly streamSid: string) {
    const sidJson = JSON.stringify(streamSid);
    const head = `{"event":"media","streamSid":${sidJson},"media":{"payload":"`;
    // Both live as long as the call, so they get one small allocation of their own: a small
    // Buffer.from() is a slice of Node's shared 8 KB pool and would keep the whole slab alive
    // (the per-frame buffers rotate that pool quickly, so every call would pin its own slabs).
    const headLen = Buffer.byteLength(head, 'utf8');
    const own = Buffer.allocUnsafeSlow(headLen + Buffer.byteLength(streamSid, 'utf8'));
    own.write(head, 0, 'utf8');
    own.write(streamSid, headLen, 'utf8');
    this.#mediaHead = own.subarray(0, headLen);
    this.#sid = own.subarray(headLen);
    this.#markPrefix = `{"event":"mark","streamSid":${sidJson},"mark":{"name":`;
    this.#clear = `{"event":"clear","streamSid":${sidJson}}`;
  }

  /** True when `buf[start, end)` is this stream's streamSid. */
  isStreamSid(buf: Buffer, start: number, end: number): boolean {
    return this.#sid.compare(buf, start, end) === 0;
  }

  /** A `media` message carrying the base64 audio `buf[start, end)` (validated base64). */
  mediaBytes(buf: Buffer, start: number, end: number): Buffer {
    const head = this.#mediaHead;
    const n = end - start;
    const out = Buffer.allocUnsafe(head.length + n + MEDIA_TAIL.length);
    head.copy(out, 0);
    buf.copy(out, head.length, start, end);
    MEDIA_TAIL.copy(out, head.length + n);
    return out;
  }

  /** The same as a string, for callers that hold a string (`payload` must be validated base64). */
  media(payload: string): string {
    return this.#mediaHead.toString('utf8') + payload + '"}}';
  }

  mark(name: string): string {
    return this.#markPrefix + JSON.stringify(name) + '}}';
  }

  clear(): string {
    return this.#clear;
  }
}

const MEDIA_TAIL = Buffer.from('"}}', 'latin1');
