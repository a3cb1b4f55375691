/**
 * Allocation-free scanning of the two hot messages of the bridge, straight
 * from the bytes a WebSocket delivered:
 *
 * - Twilio `media`: `{"event":"media","sequenceNumber":"…","media":{"track":"…","chunk":"…","timestamp":"…","payload":"<base64>"},"streamSid":"…"}`
 * - PlayAI `audioStream`: `{"type":"audioStream","data":"<base64>"}`
 *
 * A scan accepts only a complete JSON object of exactly that shape (keys in
 * any order, each at most once, only the documented keys, string values
 * without escapes, whitespace between tokens allowed, strict padded base64
 * audio) and reports where the audio and the streamSid sit in the buffer.
 * Anything else returns false, and the caller falls back to the full,
 * validating `JSON.parse` path, so the fast path never accepts what the slow
 * path would reject.
 */

/** Byte offsets of the interesting values (end exclusive); reused across calls. */
export interface Span {
  audioStart: number;
  audioEnd: number;
  sidStart: number;
  sidEnd: number;
}

export function newSpan(): Span {
  return { audioStart: 0, audioEnd: 0, sidStart: 0, sidEnd: 0 };
}

const QUOTE = 0x22;
const BACKSLASH = 0x5c;
const COLON = 0x3a;
const COMMA = 0x2c;
const OPEN = 0x7b;
const CLOSE = 0x7d;
const EQUALS = 0x3d;

/** 0 for bytes of the base64 alphabet (padding excluded), 1 for every other byte. */
const NOT_B64 = new Uint8Array(256).fill(1);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/') NOT_B64[c.charCodeAt(0)] = 0;

const bytes = (s: string): Uint8Array => Uint8Array.from(s, (c) => c.charCodeAt(0));
const K_EVENT = bytes('event');
const K_SEQ = bytes('sequenceNumber');
const K_SID = bytes('streamSid');
const K_MEDIA = bytes('media');
const K_TRACK = bytes('track');
const K_CHUNK = bytes('chunk');
const K_TIMESTAMP = bytes('timestamp');
const K_PAYLOAD = bytes('payload');
const K_TYPE = bytes('type');
const K_DATA = bytes('data');
const V_MEDIA = K_MEDIA;
const V_AUDIO_STREAM = bytes('audioStream');

function skipWs(buf: Uint8Array, i: number): number {
  for (;;) {
    const b = buf[i];
    if (b !== 0x20 && b !== 0x0a && b !== 0x0d && b !== 0x09) return i;
    i++;
  }
}

function eq(buf: Uint8Array, start: number, end: number, word: Uint8Array): boolean {
  if (end - start !== word.length) return false;
  for (let k = 0; k < word.length; k++) if (buf[start + k] !== word[k]) return false;
  return true;
}

/**
 * Scans a JSON string starting at the opening quote at `i`; returns the index
 * of the closing quote (the value is `buf[i + 1, result)`), or -1 for anything
 * with escapes or control characters (left to JSON.parse).
 */
function scanString(buf: Uint8Array, i: number): number {
  if (buf[i] !== QUOTE) return -1;
  // Keys and short values: a plain loop beats a call into native indexOf.
  for (let j = i + 1, n = buf.length; j < n; j++) {
    const b = buf[j] as number;
    if (b === QUOTE) return j;
    if (b === BACKSLASH || b < 0x20) return -1;
  }
  return -1;
}

/** Like {@link scanString} for a value that must be base64: one pass with the alphabet table. */
function scanBase64String(buf: Uint8Array, i: number, max: number): number {
  if (buf[i] !== QUOTE) return -1;
  const end = buf.indexOf(QUOTE, i + 1);
  if (end < 0 || end - i - 1 > max || !isBase64Bytes(buf, i + 1, end)) return -1;
  return end;
}

/** Strict padded base64 over buf[start, end). */
export function isBase64Bytes(buf: Uint8Array, start: number, end: number): boolean {
  const n = end - start;
  if ((n & 3) !== 0) return false;
  let stop = end;
  if (n > 0 && buf[end - 1] === EQUALS) stop = buf[end - 2] === EQUALS ? end - 2 : end - 1;
  let bad = 0;
  let k = start;
  // Branch-free over four bytes at a time; any byte outside the alphabet sets `bad`.
  for (const last = stop - 3; k < last; k += 4) {
    bad |= (NOT_B64[buf[k] as number] as number) | (NOT_B64[buf[k + 1] as number] as number) | (NOT_B64[buf[k + 2] as number] as number) | (NOT_B64[buf[k + 3] as number] as number);
  }
  for (; k < stop; k++) bad |= NOT_B64[buf[k] as number] as number;
  return bad === 0;
}

/**
 * Scans a Twilio `media` message. On success `span.audio*` is the payload and
 * `span.sid*` the streamSid. `maxPayload` bounds the payload length in chars.
 */
export function scanTwilioMedia(buf: Uint8Array, span: Span, maxPayload: number): boolean {
  const n = buf.length;
  let i = skipWs(buf, 0);
  if (buf[i] !== OPEN) return false;
  let seen = 0; // bits: 1 event, 2 seq, 4 sid, 8 media
  let mediaSeen = 0; // bits: 1 track, 2 chunk, 4 timestamp, 8 payload
  i = skipWs(buf, i + 1);
  for (;;) {
    const ke = scanString(buf, i);
    if (ke < 0) return false;
    const ks = i + 1;
    i = skipWs(buf, ke + 1);
    if (buf[i] !== COLON) return false;
    i = skipWs(buf, i + 1);
    let bit: number;
    if (eq(buf, ks, ke, K_MEDIA)) {
      bit = 8;
      if (buf[i] !== OPEN) return false;
      i = skipWs(buf, i + 1);
      for (;;) {
        const mke = scanString(buf, i);
        if (mke < 0) return false;
        const mks = i + 1;
        i = skipWs(buf, mke + 1);
        if (buf[i] !== COLON) return false;
        i = skipWs(buf, i + 1);
        let mbit: number;
        let ve: number;
        if (eq(buf, mks, mke, K_PAYLOAD)) {
          mbit = 8;
          ve = scanBase64String(buf, i, maxPayload);
          if (ve < 0) return false;
          span.audioStart = i + 1;
          span.audioEnd = ve;
        } else {
          if (eq(buf, mks, mke, K_TRACK)) mbit = 1;
          else if (eq(buf, mks, mke, K_CHUNK)) mbit = 2;
          else if (eq(buf, mks, mke, K_TIMESTAMP)) mbit = 4;
          else return false;
          ve = scanString(buf, i);
          if (ve < 0) return false;
        }
        if ((mediaSeen & mbit) !== 0) return false;
        mediaSeen |= mbit;
        i = skipWs(buf, ve + 1);
        if (buf[i] === COMMA) {
          i = skipWs(buf, i + 1);
          continue;
        }
        if (buf[i] !== CLOSE) return false;
        i++;
        break;
      }
    } else {
      const ve = scanString(buf, i);
      if (ve < 0) return false;
      if (eq(buf, ks, ke, K_EVENT)) {
        if (!eq(buf, i + 1, ve, V_MEDIA)) return false;
        bit = 1;
      } else if (eq(buf, ks, ke, K_SID)) {
        span.sidStart = i + 1;
        span.sidEnd = ve;
        bit = 4;
      } else if (eq(buf, ks, ke, K_SEQ)) bit = 2;
      else return false;
      i = ve + 1;
    }
    if ((seen & bit) !== 0) return false;
    seen |= bit;
    i = skipWs(buf, i);
    if (buf[i] === COMMA) {
      i = skipWs(buf, i + 1);
      continue;
    }
    if (buf[i] !== CLOSE) return false;
    i = skipWs(buf, i + 1);
    break;
  }
  // event, streamSid and media.payload are required; nothing may follow the object.
  return i === n && (seen & 13) === 13 && (mediaSeen & 8) === 8;
}

/** Scans a PlayAI `audioStream` message. On success `span.audio*` is the data. */
export function scanAgentAudio(buf: Uint8Array, span: Span, maxData: number): boolean {
  let i = skipWs(buf, 0);
  if (buf[i] !== OPEN) return false;
  let seen = 0; // 1 type, 2 data
  i = skipWs(buf, i + 1);
  for (;;) {
    const ke = scanString(buf, i);
    if (ke < 0) return false;
    const ks = i + 1;
    i = skipWs(buf, ke + 1);
    if (buf[i] !== COLON) return false;
    i = skipWs(buf, i + 1);
    let bit: number;
    let ve: number;
    if (eq(buf, ks, ke, K_TYPE)) {
      ve = scanString(buf, i);
      if (ve < 0 || !eq(buf, i + 1, ve, V_AUDIO_STREAM)) return false;
      bit = 1;
    } else if (eq(buf, ks, ke, K_DATA)) {
      ve = scanBase64String(buf, i, maxData);
      if (ve < 0) return false;
      span.audioStart = i + 1;
      span.audioEnd = ve;
      bit = 2;
    } else return false;
    if ((seen & bit) !== 0) return false;
    seen |= bit;
    i = skipWs(buf, ve + 1);
    if (buf[i] === COMMA) {
      i = skipWs(buf, i + 1);
      continue;
    }
    if (buf[i] !== CLOSE) return false;
    i = skipWs(buf, i + 1);
    break;
  }
  return i === buf.length && seen === 3;
}
