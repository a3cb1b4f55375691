/**
 * Fast path for ElevenLabs `audio` frames, the agent socket's hot message:
 * `{"type":"audio","audio_event":{"audio_base_64":"<base64>","event_id":<int>}}`,
 * keys in any order at both levels, scanned straight from the bytes without
 * JSON.parse (see `util/jsonBytes.ts`). The `event_id` may also be a string of
 * 1 to 15 digits (`"3"`), as some servers send it. Anything else (an `alignment`
 * member, another message, a number that is not a plain integer, a string with
 * escapes…) is left to the validating codec (`codec.ts`), which accepts
 * everything this accepts.
 */
import { afterMember, bytes, CLOSE, eq, MALFORMED, OPEN, QUOTE, readKey, scanBase64String, scanString, skipWs, type KeySpan } from '../../util/jsonBytes.js';

/** Where the audio sits in the frame, and its response's event id; reused across calls. */
export interface AudioScan {
  audioStart: number;
  audioEnd: number;
  eventId: number;
}

export function newAudioScan(): AudioScan {
  return { audioStart: 0, audioEnd: 0, eventId: 0 };
}

const K_TYPE = bytes('type');
const K_AUDIO_EVENT = bytes('audio_event');
const K_AUDIO = bytes('audio_base_64');
const K_EVENT_ID = bytes('event_id');
const V_AUDIO = bytes('audio');
/** The key being read (module-level: scanning allocates nothing). */
const KEY: KeySpan = { start: 0, end: 0 };
/** Longest integer accepted (15 digits: always a safe integer). */
const MAX_DIGITS = 15;

/**
 * Scans a non-negative JSON integer at `i` into `out.eventId`; returns the index
 * past it, or -1 (leading zeros, a fraction or exponent, too many digits).
 */
function scanInt(buf: Uint8Array, i: number, out: AudioScan): number {
  let j = i;
  let v = 0;
  for (; j < buf.length; j++) {
    const d = (buf[j] as number) - 0x30;
    if (d < 0 || d > 9) break;
    v = v * 10 + d;
  }
  const n = j - i;
  if (n === 0 || n > MAX_DIGITS || (n > 1 && buf[i] === 0x30)) return -1;
  const next = buf[j];
  if (next === 0x2e || next === 0x65 || next === 0x45) return -1; // . e E
  out.eventId = v;
  return j;
}

/**
 * Scans a JSON string of 1 to {@link MAX_DIGITS} digits at `i` (the opening quote) into
 * `out.eventId`; returns the index past the closing quote, or -1.
 */
function scanDigitString(buf: Uint8Array, i: number, out: AudioScan): number {
  let j = i + 1;
  let v = 0;
  for (; j < buf.length; j++) {
    const d = (buf[j] as number) - 0x30;
    if (d < 0 || d > 9) break;
    v = v * 10 + d;
  }
  const n = j - i - 1;
  if (n === 0 || n > MAX_DIGITS || buf[j] !== QUOTE) return -1;
  out.eventId = v;
  return j + 1;
}

/** Scans the `audio_event` object at `i`; returns the index past its `}`, or -1. */
function scanAudioEvent(buf: Uint8Array, i: number, out: AudioScan, maxData: number): number {
  if (buf[i] !== OPEN) return -1;
  let seen = 0; // 1 audio, 2 event_id
  i = skipWs(buf, i + 1);
  if (buf[i] === CLOSE) return -1;
  for (;;) {
    i = readKey(buf, i, KEY);
    if (i < 0) return -1;
    let bit: number;
    let after: number;
    if (eq(buf, KEY.start, KEY.end, K_AUDIO)) {
      const ve = scanBase64String(buf, i, maxData);
      if (ve < 0) return -1;
      out.audioStart = i + 1;
      out.audioEnd = ve;
      after = ve + 1;
      bit = 1;
    } else if (eq(buf, KEY.start, KEY.end, K_EVENT_ID)) {
      after = buf[i] === QUOTE ? scanDigitString(buf, i, out) : scanInt(buf, i, out);
      if (after < 0) return -1;
      bit = 2;
    } else return -1;
    if ((seen & bit) !== 0) return -1;
    seen |= bit;
    const next = afterMember(buf, after);
    if (next === MALFORMED) return -1;
    if (next < 0) return seen === 3 ? ~next : -1;
    i = next;
  }
}

/** Scans an ElevenLabs `audio` message. On success `out` holds the audio span and event id. */
export function scanElevenLabsAudio(buf: Uint8Array, out: AudioScan, maxData: number): boolean {
  let i = skipWs(buf, 0);
  if (buf[i] !== OPEN) return false;
  let seen = 0; // 1 type, 2 audio_event
  i = skipWs(buf, i + 1);
  for (;;) {
    i = readKey(buf, i, KEY);
    if (i < 0) return false;
    let bit: number;
    let after: number;
    if (eq(buf, KEY.start, KEY.end, K_TYPE)) {
      const ve = scanString(buf, i);
      if (ve < 0 || !eq(buf, i + 1, ve, V_AUDIO)) return false;
      after = ve + 1;
      bit = 1;
    } else if (eq(buf, KEY.start, KEY.end, K_AUDIO_EVENT)) {
      after = scanAudioEvent(buf, i, out, maxData);
      if (after < 0) return false;
      bit = 2;
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
  return i === buf.length && seen === 3;
}
