/**
 * Primitives for allocation-free scanning of JSON messages straight from the
 * bytes a WebSocket delivered. Protocol-agnostic: each wire protocol's own
 * scanner (`carrier/twilio/scan.ts`, `agent/playai/scan.ts`) is built from them.
 *
 * A protocol scanner accepts only a complete JSON object of exactly its
 * message's shape (keys in any order, each at most once, only the documented
 * keys, string values without escapes, whitespace between tokens allowed,
 * strict padded base64 audio) and reports where the audio sits in the buffer.
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
  /** A media timestamp's digits, where the protocol has one (-1 when absent). */
  tsStart: number;
  tsEnd: number;
}

export function newSpan(): Span {
  return { audioStart: 0, audioEnd: 0, sidStart: 0, sidEnd: 0, tsStart: -1, tsEnd: -1 };
}

export const QUOTE = 0x22;
const BACKSLASH = 0x5c;
export const COLON = 0x3a;
export const COMMA = 0x2c;
export const OPEN = 0x7b;
export const CLOSE = 0x7d;
const EQUALS = 0x3d;

/** 0 for bytes of the base64 alphabet (padding excluded), 1 for every other byte. */
const NOT_B64 = new Uint8Array(256).fill(1);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/') NOT_B64[c.charCodeAt(0)] = 0;

export const bytes = (s: string): Uint8Array => Uint8Array.from(s, (c) => c.charCodeAt(0));

export function skipWs(buf: Uint8Array, i: number): number {
  for (;;) {
    const b = buf[i];
    if (b !== 0x20 && b !== 0x0a && b !== 0x0d && b !== 0x09) return i;
    i++;
  }
}

export function eq(buf: Uint8Array, start: number, end: number, word: Uint8Array): boolean {
  if (end - start !== word.length) return false;
  for (let k = 0; k < word.length; k++) if (buf[start + k] !== word[k]) return false;
  return true;
}

/**
 * Scans a JSON string starting at the opening quote at `i`; returns the index
 * of the closing quote (the value is `buf[i + 1, result)`), or -1 for anything
 * with escapes or control characters (left to JSON.parse).
 */
export function scanString(buf: Uint8Array, i: number): number {
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
export function scanBase64String(buf: Uint8Array, i: number, max: number): number {
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

/** Where a member's key sits in the buffer (end exclusive); filled by {@link readKey}, reused. */
export interface KeySpan {
  start: number;
  end: number;
}

/**
 * Reads a member's `"key"` and its `:` at `i` (whitespace allowed around the
 * colon), fills `key`, and returns the index of the value, or -1.
 */
export function readKey(buf: Uint8Array, i: number, key: KeySpan): number {
  const ke = scanString(buf, i);
  if (ke < 0) return -1;
  key.start = i + 1;
  key.end = ke;
  i = skipWs(buf, ke + 1);
  if (buf[i] !== COLON) return -1;
  return skipWs(buf, i + 1);
}

/** {@link afterMember}: the text after a member is neither `,` nor `}`. */
export const MALFORMED = Number.MIN_SAFE_INTEGER;

/**
 * After a member's value (`i` is just past it): a `,` gives the index of the
 * next key (≥ 0); a `}` gives `~end` (negative), where `end` is the index just
 * past the `}`; anything else gives {@link MALFORMED}.
 */
export function afterMember(buf: Uint8Array, i: number): number {
  i = skipWs(buf, i);
  if (buf[i] === COMMA) return skipWs(buf, i + 1);
  if (buf[i] !== CLOSE) return MALFORMED;
  return ~(i + 1);
}

