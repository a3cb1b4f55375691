/**
 * Audio between the port (base64 μ-law) and Deepgram (binary μ-law frames), with
 * no transcoding: caller audio is base64-decoded once per frame, agent audio
 * base64-encoded once per frame.
 */

/** For each byte: its 6-bit value shifted into place for position 0..3 of a quad, or INVALID. */
const INVALID = 0x1000000;
const Q0 = new Uint32Array(256).fill(INVALID);
const Q1 = new Uint32Array(256).fill(INVALID);
const Q2 = new Uint32Array(256).fill(INVALID);
const Q3 = new Uint32Array(256).fill(INVALID);
{
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/';
  for (let i = 0; i < 64; i++) {
    const c = alphabet.charCodeAt(i);
    Q0[c] = i << 18;
    Q1[c] = i << 12;
    Q2[c] = i << 6;
    Q3[c] = i;
  }
}

/**
 * Decodes padded standard base64 held as bytes in `buf[start, end)` into a new
 * Buffer, without making a string of it. Returns undefined for anything that is
 * not strict padded base64 (a length that is not a multiple of 4, a byte outside
 * the alphabet, misplaced padding).
 */
export function decodeBase64Span(buf: Uint8Array, start: number, end: number): Buffer | undefined {
  const n = end - start;
  if (n < 0 || (n & 3) !== 0) return undefined;
  let pad = 0;
  if (n > 0 && buf[end - 1] === 0x3d) pad = buf[end - 2] === 0x3d ? 2 : 1;
  const out = Buffer.allocUnsafe((n >>> 2) * 3 - pad);
  const full = pad === 0 ? end : end - 4;
  let bad = 0;
  let o = 0;
  let i = start;
  for (; i < full; i += 4) {
    const v = (Q0[buf[i] as number] as number) | (Q1[buf[i + 1] as number] as number) | (Q2[buf[i + 2] as number] as number) | (Q3[buf[i + 3] as number] as number);
    bad |= v;
    out[o] = v >>> 16;
    out[o + 1] = (v >>> 8) & 0xff;
    out[o + 2] = v & 0xff;
    o += 3;
  }
  if (pad !== 0) {
    const v = (Q0[buf[i] as number] as number) | (Q1[buf[i + 1] as number] as number) | (pad === 1 ? (Q2[buf[i + 2] as number] as number) : 0);
    bad |= v;
    out[o] = v >>> 16;
    if (pad === 1) out[o + 1] = (v >>> 8) & 0xff;
  }
  return (bad & INVALID) === 0 ? out : undefined;
}

/** The largest scratch kept per leg (base64 of 48 KiB of audio, 6 s); bigger frames get a one-off buffer. */
const MAX_KEPT_SCRATCH = 64 * 1024;

/**
 * Base64 of agent audio into a reusable scratch buffer: the span handed to
 * `events.audio` is only valid during that call, so one buffer per leg serves
 * every frame. A frame too big for it gets a buffer of its own, not kept.
 */
export class Base64Scratch {
  #kept = Buffer.allocUnsafe(8192);
  #buf = this.#kept;

  /** Encodes `bytes`; the base64 is `this.buffer[0, returned length)`. */
  encode(bytes: Buffer): number {
    const need = Math.ceil(bytes.length / 3) * 4;
    if (need > this.#kept.length) {
      if (need <= MAX_KEPT_SCRATCH) this.#kept = Buffer.allocUnsafe(MAX_KEPT_SCRATCH);
      else {
        this.#buf = Buffer.from(bytes.toString('base64'), 'latin1');
        return this.#buf.length;
      }
    }
    this.#buf = this.#kept;
    return this.#kept.write(bytes.toString('base64'), 0, 'latin1');
  }

  /** The buffer holding the last encoded frame. */
  get buffer(): Buffer {
    return this.#buf;
  }
}
