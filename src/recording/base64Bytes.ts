/**
 * Base64 decoding straight from the bytes a WebSocket delivered into a
 * reused buffer: the recorder's caller path decodes every frame without
 * making a string or a new Buffer.
 */
const DECODE = new Int16Array(256).fill(-1);
for (let i = 0; i < 64; i++) DECODE['ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/'.charCodeAt(i)] = i;

/** Bytes that base64 `src[start, end)` decodes to (it was validated: strict, padded). */
export function decodedLength(src: Uint8Array, start: number, end: number): number {
  const n = end - start;
  if (n === 0) return 0;
  let pad = 0;
  if (src[end - 1] === 0x3d) pad = src[end - 2] === 0x3d ? 2 : 1;
  return (n / 4) * 3 - pad;
}

/**
 * Decodes validated base64 `src[start, end)` into `dst` from offset 0; returns the bytes written.
 * `dst` must hold {@link decodedLength} bytes.
 */
export function decodeBase64Into(src: Uint8Array, start: number, end: number, dst: Uint8Array): number {
  let o = 0;
  for (let i = start; i + 4 <= end; i += 4) {
    const a = DECODE[src[i] as number] as number;
    const b = DECODE[src[i + 1] as number] as number;
    const c = DECODE[src[i + 2] as number] as number;
    const d = DECODE[src[i + 3] as number] as number;
    dst[o++] = (a << 2) | (b >> 4);
    if (c < 0) break;
    dst[o++] = ((b & 15) << 4) | (c >> 2);
    if (d < 0) break;
    dst[o++] = ((c & 3) << 6) | d;
  }
  return o;
}
