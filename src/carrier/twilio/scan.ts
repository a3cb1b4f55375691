/**
 * Fast path for Twilio `media` frames, the carrier leg's hot message:
 * `{"event":"media","sequenceNumber":"…","media":{"track":"…","chunk":"…","timestamp":"…","payload":"<base64>"},"streamSid":"…"}`,
 * scanned straight from the bytes without JSON.parse (see `util/jsonBytes.ts`).
 * Anything else is left to the validating codec (`codec.ts`).
 */
import { afterMember, bytes, eq, MALFORMED, OPEN, readKey, scanBase64String, scanString, skipWs, type KeySpan, type Span } from '../../util/jsonBytes.js';

const K_EVENT = bytes('event');
const K_SEQ = bytes('sequenceNumber');
const K_SID = bytes('streamSid');
const K_MEDIA = bytes('media');
const K_TRACK = bytes('track');
const K_CHUNK = bytes('chunk');
const K_TIMESTAMP = bytes('timestamp');
const K_PAYLOAD = bytes('payload');
const V_MEDIA = K_MEDIA;
/** The key being read (module-level: scanning allocates nothing). */
const KEY: KeySpan = { start: 0, end: 0 };

/**
 * Scans a Twilio `media` message. On success `span.audio*` is the payload and
 * `span.sid*` the streamSid. `maxPayload` bounds the payload length in chars.
 */
export function scanTwilioMedia(buf: Uint8Array, span: Span, maxPayload: number): boolean {
  let i = skipWs(buf, 0);
  if (buf[i] !== OPEN) return false;
  let seen = 0; // bits: 1 event, 2 seq, 4 sid, 8 media
  let mediaSeen = 0; // bits: 1 track, 2 chunk, 4 timestamp, 8 payload
  span.tsStart = -1;
  i = skipWs(buf, i + 1);
  for (;;) {
    i = readKey(buf, i, KEY);
    if (i < 0) return false;
    let bit: number;
    let end: number;
    if (eq(buf, KEY.start, KEY.end, K_MEDIA)) {
      bit = 8;
      if (buf[i] !== OPEN) return false;
      i = skipWs(buf, i + 1);
      for (;;) {
        i = readKey(buf, i, KEY);
        if (i < 0) return false;
        let mbit: number;
        let ve: number;
        if (eq(buf, KEY.start, KEY.end, K_PAYLOAD)) {
          mbit = 8;
          ve = scanBase64String(buf, i, maxPayload);
          if (ve < 0) return false;
          span.audioStart = i + 1;
          span.audioEnd = ve;
        } else {
          if (eq(buf, KEY.start, KEY.end, K_TRACK)) mbit = 1;
          else if (eq(buf, KEY.start, KEY.end, K_CHUNK)) mbit = 2;
          else if (eq(buf, KEY.start, KEY.end, K_TIMESTAMP)) mbit = 4;
          else return false;
          ve = scanString(buf, i);
          if (ve < 0) return false;
          if (mbit === 4) {
            span.tsStart = i + 1;
            span.tsEnd = ve;
          }
        }
        if ((mediaSeen & mbit) !== 0) return false;
        mediaSeen |= mbit;
        const next = afterMember(buf, ve + 1);
        if (next === MALFORMED) return false;
        if (next < 0) {
          end = ~next;
          break;
        }
        i = next;
      }
    } else {
      const ve = scanString(buf, i);
      if (ve < 0) return false;
      if (eq(buf, KEY.start, KEY.end, K_EVENT)) {
        if (!eq(buf, i + 1, ve, V_MEDIA)) return false;
        bit = 1;
      } else if (eq(buf, KEY.start, KEY.end, K_SID)) {
        span.sidStart = i + 1;
        span.sidEnd = ve;
        bit = 4;
      } else if (eq(buf, KEY.start, KEY.end, K_SEQ)) bit = 2;
      else return false;
      end = ve + 1;
    }
    if ((seen & bit) !== 0) return false;
    seen |= bit;
    const next = afterMember(buf, end);
    if (next === MALFORMED) return false;
    if (next < 0) {
      i = skipWs(buf, ~next);
      break;
    }
    i = next;
  }
  // event, streamSid and media.payload are required; nothing may follow the object.
  return i === buf.length && (seen & 13) === 13 && (mediaSeen & 8) === 8;
}
