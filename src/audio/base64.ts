/** Strict standard base64 (RFC 4648 §4, padded). Twilio and PlayAI both use it for audio. */
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** True when `s` is padded standard base64 (the empty string included). */
export function isBase64(s: string): boolean {
  return (s.length & 3) === 0 && BASE64.test(s);
}

/** Number of bytes a valid padded base64 string decodes to, without decoding it. */
export function base64ByteLength(s: string): number {
  const n = s.length;
  if (n === 0) return 0;
  const pad = s.charCodeAt(n - 1) === 61 ? (s.charCodeAt(n - 2) === 61 ? 2 : 1) : 0;
  return (n >>> 2) * 3 - pad;
}

/** {@link base64ByteLength} for base64 held as bytes in `buf[start, end)`. */
export function base64ByteLengthOf(buf: Uint8Array, start: number, end: number): number {
  const n = end - start;
  if (n === 0) return 0;
  const pad = buf[end - 1] === 61 ? (buf[end - 2] === 61 ? 2 : 1) : 0;
  return (n >>> 2) * 3 - pad;
}
