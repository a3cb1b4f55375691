/**
 * Fast path for PlayAI `audioStream` frames, the agent leg's hot message:
 * `{"type":"audioStream","data":"<base64>"}`, scanned straight from the bytes
 * without JSON.parse (see `util/jsonBytes.ts`). Anything else is left to the
 * validating codec (`codec.ts`).
 */
import { afterMember, bytes, eq, MALFORMED, OPEN, readKey, scanBase64String, scanString, skipWs, type KeySpan, type Span } from '../../util/jsonBytes.js';

const K_TYPE = bytes('type');
const K_DATA = bytes('data');
const V_AUDIO_STREAM = bytes('audioStream');
/** The key being read (module-level: scanning allocates nothing). */
const KEY: KeySpan = { start: 0, end: 0 };

/** Scans a PlayAI `audioStream` message. On success `span.audio*` is the data. */
export function scanAgentAudio(buf: Uint8Array, span: Span, maxData: number): boolean {
  let i = skipWs(buf, 0);
  if (buf[i] !== OPEN) return false;
  let seen = 0; // 1 type, 2 data
  i = skipWs(buf, i + 1);
  for (;;) {
    i = readKey(buf, i, KEY);
    if (i < 0) return false;
    let bit: number;
    let ve: number;
    if (eq(buf, KEY.start, KEY.end, K_TYPE)) {
      ve = scanString(buf, i);
      if (ve < 0 || !eq(buf, i + 1, ve, V_AUDIO_STREAM)) return false;
      bit = 1;
    } else if (eq(buf, KEY.start, KEY.end, K_DATA)) {
      ve = scanBase64String(buf, i, maxData);
      if (ve < 0) return false;
      span.audioStart = i + 1;
      span.audioEnd = ve;
      bit = 2;
    } else return false;
    if ((seen & bit) !== 0) return false;
    seen |= bit;
    const next = afterMember(buf, ve + 1);
    if (next === MALFORMED) return false;
    if (next < 0) {
      i = skipWs(buf, ~next);
      break;
    }
    i = next;
  }
  return i === buf.length && seen === 3;
}
