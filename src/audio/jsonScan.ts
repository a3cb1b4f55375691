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

/** 1 for bytes of the base64 alphabet (padding excluded). */
const B64 = new Uint8Array(256);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/') B64[c.charCodeAt(0)] = 1;

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

function isWs(b: number): boolean {
  return b === 0x20 || b === 0x0a || b === 0x0d || b === 0x09;
}

function skipWs(buf: Uint8Array, i: number): number {
  while (i < buf.length && isWs(buf[i] as number)) i++;
  return i;
}

function eq(buf: Uint8Array, start: number, end: number, word: Uint8Array): boolean {
  if (end - start !== word.length) return false;
  for (let k = 0; k < word.length; k++) if (buf[start + k] !== word[k]) return false;
  return true;
}

/** Scans a JSON string starting at the opening quote; returns the index after the closing quote, or -1. */
let strStart = 0;
let strEnd = 0;
function scanString(buf: Uint8Array, i: number): number {
  if (buf[i] !== QUOTE) return -1;
  const start = i + 1;
  for (let j = start; j < buf.length; j++) {
    const b = buf[j] as number;
    if (b === QUOTE) {
      strStart = start;
      strEnd = j;
      return j + 1;
    }
    // Escapes and control characters: leave those to JSON.parse.
    if (b === BACKSLASH || b < 0x20) return -1;
  }
  return -1;
}

/** Strict padded base64 over buf[start, end). */
export function isBase64Bytes(buf: Uint8Array, start: number, end: number): boolean {
  const n = end - start;
  if ((n & 3) !== 0) return false;
  let stop = end;
  if (n > 0 && buf[end - 1] === EQUALS) stop = buf[end - 2] === EQUALS ? end - 2 : end - 1;
  for (let k = start; k < stop; k++) if (B64[buf[k] as number] === 0) return false;
  return true;
}

/**
 * Scans a Twilio `media` message. On success `span.audio*` is the payload and
 * `span.sid*` the streamSid. `maxPayload` bounds the payload length in chars.
 */
export function scanTwilioMedia(buf: Uint8Array, span: Span, maxPayload: number): boolean {
  let i = skipWs(buf, 0);
  if (buf[i] !== OPEN) return false;
  let seen = 0; // bits: 1 event, 2 seq, 4 sid, 8 media
  let mediaSeen = 0; // bits: 1 track, 2 chunk, 4 timestamp, 8 payload
  i = skipWs(buf, i + 1);
  for (;;) {
    i = scanString(buf, i);
    if (i < 0) return false;
    const ks = strStart;
    const ke = strEnd;
    i = skipWs(buf, i);
    if (buf[i] !== COLON) return false;
    i = skipWs(buf, i + 1);
    let bit: number;
    if (eq(buf, ks, ke, K_MEDIA)) {
      bit = 8;
      if (buf[i] !== OPEN) return false;
      i = skipWs(buf, i + 1);
      for (;;) {
        i = scanString(buf, i);
        if (i < 0) return false;
        const mks = strStart;
        const mke = strEnd;
        i = skipWs(buf, i);
        if (buf[i] !== COLON) return false;
        i = scanString(buf, skipWs(buf, i + 1));
        if (i < 0) return false;
        let mbit: number;
        if (eq(buf, mks, mke, K_PAYLOAD)) {
          mbit = 8;
          if (strEnd - strStart > maxPayload || !isBase64Bytes(buf, strStart, strEnd)) return false;
          span.audioStart = strStart;
          span.audioEnd = strEnd;
        } else if (eq(buf, mks, mke, K_TRACK)) mbit = 1;
        else if (eq(buf, mks, mke, K_CHUNK)) mbit = 2;
        else if (eq(buf, mks, mke, K_TIMESTAMP)) mbit = 4;
        else return false;
        if ((mediaSeen & mbit) !== 0) return false;
        mediaSeen |= mbit;
        i = skipWs(buf, i);
        if (buf[i] === COMMA) {
          i = skipWs(buf, i + 1);
          continue;
        }
        if (buf[i] !== CLOSE) return false;
        i++;
        break;
      }
    } else {
      i = scanString(buf, i);
      if (i < 0) return false;
      if (eq(buf, ks, ke, K_EVENT)) {
        if (!eq(buf, strStart, strEnd, V_MEDIA)) return false;
        bit = 1;
      } else if (eq(buf, ks, ke, K_SID)) {
        span.sidStart = strStart;
        span.sidEnd = strEnd;
        bit = 4;
      } else if (eq(buf, ks, ke, K_SEQ)) bit = 2;
      else return false;
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
  return i === buf.length && (seen & 13) === 13 && (mediaSeen & 8) === 8;
}

/** Scans a PlayAI `audioStream` message. On success `span.audio*` is the data. */
export function scanAgentAudio(buf: Uint8Array, span: Span, maxData: number): boolean {
  let i = skipWs(buf, 0);
  if (buf[i] !== OPEN) return false;
  let seen = 0; // 1 type, 2 data
  i = skipWs(buf, i + 1);
  for (;;) {
    i = scanString(buf, i);
    if (i < 0) return false;
    const ks = strStart;
    const ke = strEnd;
    i = skipWs(buf, i);
    if (buf[i] !== COLON) return false;
    i = scanString(buf, skipWs(buf, i + 1));
    if (i < 0) return false;
    let bit: number;
    if (eq(buf, ks, ke, K_TYPE)) {
      if (!eq(buf, strStart, strEnd, V_AUDIO_STREAM)) return false;
      bit = 1;
    } else if (eq(buf, ks, ke, K_DATA)) {
      if (strEnd - strStart > maxData || !isBase64Bytes(buf, strStart, strEnd)) return false;
      span.audioStart = strStart;
      span.audioEnd = strEnd;
      bit = 2;
    } else return false;
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
  return i === buf.length && seen === 3;
}
