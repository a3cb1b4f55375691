/**
 * G.711 mu-law codec (8-bit companded samples, as used by Twilio Media Streams
 * and the PlayAI `mulaw` format). Thin typed wrapper over `alawmulaw`.
 */
import alawmulaw from 'alawmulaw';

/** The mu-law byte for a zero sample (digital silence). */
export const MULAW_SILENCE = 0xff;

/** Encodes 16-bit linear PCM samples to mu-law bytes (one byte per sample). */
export function mulawEncode(pcm: Int16Array): Uint8Array {
  return alawmulaw.mulaw.encode(pcm);
}

/** Decodes mu-law bytes to 16-bit linear PCM samples. */
export function mulawDecode(ulaw: Uint8Array): Int16Array {
  return alawmulaw.mulaw.decode(ulaw);
}

/** Decodes a single mu-law byte to its linear value. */
export function mulawDecodeSample(byte: number): number {
  return alawmulaw.mulaw.decodeSample(byte & 0xff);
}
