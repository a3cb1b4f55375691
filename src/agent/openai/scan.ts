/**
 * Fast path for `response.output_audio.delta`, the OpenAI leg's hot message:
 * `{"type":"response.output_audio.delta","event_id":"…","response_id":"…",
 * "item_id":"…","output_index":0,"content_index":0,"delta":"<base64>"}`,
 * keys in any order, scanned straight from the bytes without JSON.parse (see
 * `util/jsonBytes.ts`). `event_id`, `output_index` and `content_index` may be
 * absent; any other key, escapes in a string, or a number that is not a plain
 * non-negative integer make it return false, and the frame goes to the full,
 * validating decoder (`codec.ts`) instead: the fast path never accepts what
 * the slow path would reject.
 */
import { afterMember, bytes, eq, MALFORMED, OPEN, readKey, scanBase64String, scanString, skipWs, type KeySpan } from '../../util/jsonBytes.js';

/** Byte offsets (end exclusive) of a delta's interesting values; reused across calls. */
export interface DeltaSpan {
  audioStart: number;
  audioEnd: number;
  responseStart: number;
  responseEnd: number;
  itemStart: number;
  itemEnd: number;
}

export function newDeltaSpan(): DeltaSpan {
  return { audioStart: 0, audioEnd: 0, responseStart: 0, responseEnd: 0, itemStart: 0, itemEnd: 0 };
}

const K_TYPE = bytes('type');
const K_EVENT_ID = bytes('event_id');
const K_RESPONSE_ID = bytes('response_id');
const K_ITEM_ID = bytes('item_id');
const K_OUTPUT_INDEX = bytes('output_index');
const K_CONTENT_INDEX = bytes('content_index');
const K_DELTA = bytes('delta');
const V_AUDIO_DELTA = bytes('response.output_audio.delta');
const B_TYPE = 1;
const B_EVENT = 2;
const B_RESPONSE = 4;
const B_ITEM = 8;
const B_OUTPUT = 16;
const B_CONTENT = 32;
const B_DELTA = 64;
const REQUIRED = B_TYPE | B_RESPONSE | B_ITEM | B_DELTA;
/** Ids longer than this go to the full decoder (which refuses them). */
const MAX_ID = 256;
/** The key being read (module-level: scanning allocates nothing). */
const KEY: KeySpan = { start: 0, end: 0 };

/** A plain non-negative integer at `i` (no sign, fraction or exponent); index just past it, or -1. */
function scanUint(buf: Uint8Array, i: number): number {
  let j = i;
  for (;;) {
    const b = buf[j];
    if (b === undefined || b < 0x30 || b > 0x39) break;
    j++;
  }
  if (j === i || j - i > 9) return -1;
  const next = buf[j];
  // `1.5`, `1e3` are numbers too: leave them to JSON.parse.
  if (next === 0x2e || next === 0x65 || next === 0x45) return -1;
  return j;
}

/** A non-empty id string at `i`; index of its closing quote, or -1. */
function scanId(buf: Uint8Array, i: number): number {
  const e = scanString(buf, i);
  return e < 0 || e === i + 1 || e - i - 1 > MAX_ID ? -1 : e;
}

/** Scans a `response.output_audio.delta`. On success `span` holds the ids and the audio. */
export function scanAudioDelta(buf: Uint8Array, span: DeltaSpan, maxData: number): boolean {
  let i = skipWs(buf, 0);
  if (buf[i] !== OPEN) return false;
  let seen = 0;
  i = skipWs(buf, i + 1);
  for (;;) {
    i = readKey(buf, i, KEY);
    if (i < 0) return false;
    let bit: number;
    let after: number; // index just past the value
    const ks = KEY.start;
    const ke = KEY.end;
    if (eq(buf, ks, ke, K_DELTA)) {
      const ve = scanBase64String(buf, i, maxData);
      if (ve < 0) return false;
      span.audioStart = i + 1;
      span.audioEnd = ve;
      bit = B_DELTA;
      after = ve + 1;
    } else if (eq(buf, ks, ke, K_TYPE)) {
      const ve = scanString(buf, i);
      if (ve < 0 || !eq(buf, i + 1, ve, V_AUDIO_DELTA)) return false;
      bit = B_TYPE;
      after = ve + 1;
    } else if (eq(buf, ks, ke, K_RESPONSE_ID)) {
      const ve = scanId(buf, i);
      if (ve < 0) return false;
      span.responseStart = i + 1;
      span.responseEnd = ve;
      bit = B_RESPONSE;
      after = ve + 1;
    } else if (eq(buf, ks, ke, K_ITEM_ID)) {
      const ve = scanId(buf, i);
      if (ve < 0) return false;
      span.itemStart = i + 1;
      span.itemEnd = ve;
      bit = B_ITEM;
      after = ve + 1;
    } else if (eq(buf, ks, ke, K_EVENT_ID)) {
      const ve = scanString(buf, i);
      if (ve < 0) return false;
      bit = B_EVENT;
      after = ve + 1;
    } else if (eq(buf, ks, ke, K_OUTPUT_INDEX) || eq(buf, ks, ke, K_CONTENT_INDEX)) {
      after = scanUint(buf, i);
      if (after < 0) return false;
      bit = ke - ks === K_OUTPUT_INDEX.length ? B_OUTPUT : B_CONTENT;
    } else return false;
    if ((seen & bit) !== 0) return false;
    seen |= bit;
    const next = afterMember(buf, after);
    if (next === MALFORMED) return false;
    if (next < 0) {
      i = skipWs(buf, ~next);
      break;
    }
    i = next;
  }
  return i === buf.length && (seen & REQUIRED) === REQUIRED;
}
