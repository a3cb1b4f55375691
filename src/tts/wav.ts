/**
 * A WAV file around raw 8 kHz μ-law (`WAVE_FORMAT_MULAW`, 8 bits, mono): what
 * `<Play>` fetches from `GET /prompts/:key.wav`. The bytes are served as
 * synthesized, not decoded: Twilio plays G.711 μ-law WAV as it is.
 */

/** Header (RIFF, an 18-byte fmt, fact, data) + the audio. */
export function mulawWav(ulaw: Uint8Array): Buffer {
  const n = ulaw.length;
  const header = Buffer.alloc(58);
  header.write('RIFF', 0, 'ascii');
  header.writeUInt32LE(50 + n + (n & 1), 4);
  header.write('WAVE', 8, 'ascii');
  header.write('fmt ', 12, 'ascii');
  header.writeUInt32LE(18, 16);
  header.writeUInt16LE(7, 20); // WAVE_FORMAT_MULAW
  header.writeUInt16LE(1, 22); // mono
  header.writeUInt32LE(8000, 24);
  header.writeUInt32LE(8000, 28); // bytes per second
  header.writeUInt16LE(1, 32); // block align
  header.writeUInt16LE(8, 34); // bits per sample
  header.writeUInt16LE(0, 36); // cbSize
  header.write('fact', 38, 'ascii');
  header.writeUInt32LE(4, 42);
  header.writeUInt32LE(n, 46); // samples
  header.write('data', 50, 'ascii');
  header.writeUInt32LE(n, 54);
  return Buffer.concat([header, ulaw, Buffer.alloc(n & 1)]);
}
