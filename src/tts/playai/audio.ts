/**
 * What the PlayAI TTS socket sends back, made telephone audio. We ask for
 * headerless μ-law at 8000 Hz; a WAV-wrapped answer (the `wav` format, or a
 * service that ignores `output_format`) is converted once with the project's
 * WAV reader and resampler.
 */
import { toMulaw8k } from '../../audio/wav.js';
import { TtsError } from '../port.js';

const isRiff = (b: Uint8Array): boolean => b.length >= 12 && b[0] === 0x52 && b[1] === 0x49 && b[2] === 0x46 && b[3] === 0x46;

/** Raw 8 kHz μ-law from the bytes of one answer, and whether they had to be converted. */
export function toTelephoneAudio(bytes: Buffer): { audio: Buffer; converted: boolean } {
  if (bytes.length === 0) throw new TtsError('protocol', 'PlayAI TTS: the answer carried no audio');
  if (!isRiff(bytes)) return { audio: bytes, converted: false };
  let ulaw: Uint8Array;
  try {
    ulaw = toMulaw8k(bytes);
  } catch (err) {
    throw new TtsError('protocol', `PlayAI TTS: the answer is a WAV file that cannot be read (${err instanceof Error ? err.message : String(err)})`);
  }
  if (ulaw.length === 0) throw new TtsError('protocol', 'PlayAI TTS: the answer carried no audio');
  return { audio: Buffer.from(ulaw.buffer, ulaw.byteOffset, ulaw.length), converted: true };
}
