/**
 * Benchmark caller frames: every 20 ms frame (160 bytes of mu-law) is unique,
 * so the load generator can tell which frame an echo is, without decoding it.
 *
 * Layout: bytes 0-1 call index (uint16 BE), bytes 2-5 frame sequence (uint32 BE),
 * bytes 6-11 filler or the barge-in marker of the local agent, bytes 12-159 filler.
 * 6 and 12 are multiples of 3, so in base64 the id is exactly characters 0-7 and
 * the marker characters 8-15: a frame is an 8-character id + one of two constant
 * tails, and decoding the id reads 8 characters.
 */
import { BARGE_IN_MARKER, BARGE_IN_MARKER_OFFSET } from '../sim/localAgent.js';

export const FRAME_BYTES = 160;
/** Filler byte: quiet but not digital silence (0xff), so nothing mistakes it for a mute frame. */
const FILL = 0x7e;
const ID_CHARS = 8;
const B64 = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
const B64_INDEX = new Int8Array(128).fill(-1);
for (let i = 0; i < 64; i++) B64_INDEX[B64.charCodeAt(i)] = i;

function tail(marker: boolean): string {
  const bytes = Buffer.alloc(FRAME_BYTES - 6, FILL);
  if (marker) Buffer.from(BARGE_IN_MARKER).copy(bytes, BARGE_IN_MARKER_OFFSET - 6);
  return bytes.toString('base64');
}
if (BARGE_IN_MARKER_OFFSET !== 6 || BARGE_IN_MARKER.length !== 6) throw new Error('bench frames: marker layout changed');
const PLAIN_TAIL = tail(false);
const MARKER_TAIL = tail(true);
/** Base64 length of one frame. */
export const FRAME_B64_LENGTH = ID_CHARS + PLAIN_TAIL.length;

/** Base64 payload of frame `seq` of call `call` (a barge-in marker frame when `marker`). */
export function encodeFrame(call: number, seq: number, marker = false): string {
  // 48 bits: call (16) then seq (32); safe in a double (< 2^53).
  let v = (call & 0xffff) * 0x1_0000_0000 + (seq >>> 0);
  let id = '';
  for (let i = 0; i < ID_CHARS; i++) {
    const d = Math.floor(v / 2 ** (42 - 6 * i));
    id += B64[d & 63];
    v -= d * 2 ** (42 - 6 * i);
  }
  return id + (marker ? MARKER_TAIL : PLAIN_TAIL);
}

/** Call index and sequence of a benchmark frame, or undefined if `b64` is not one. */
export function decodeFrameId(b64: string): { call: number; seq: number } | undefined {
  if (b64.length !== FRAME_B64_LENGTH) return undefined;
  let v = 0;
  for (let i = 0; i < ID_CHARS; i++) {
    const c = b64.charCodeAt(i);
    const d = c < 128 ? (B64_INDEX[c] ?? -1) : -1;
    if (d < 0) return undefined;
    v = v * 64 + d;
  }
  const call = Math.floor(v / 0x1_0000_0000);
  return { call, seq: v - call * 0x1_0000_0000 };
}

/** True when the frame carries the barge-in marker. */
export function isMarkerFrame(b64: string): boolean {
  return b64.length === FRAME_B64_LENGTH && b64.endsWith(MARKER_TAIL);
}
