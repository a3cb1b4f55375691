/** Reads a local recording back (stereo 16-bit 8 kHz WAV) for the recording tests. */
import { readFileSync } from 'node:fs';
import { mulawDecodeSample } from '../src/audio/mulaw.js';

export interface StereoWav {
  sampleRate: number;
  channels: number;
  /** The header's data size. */
  dataBytes: number;
  fileBytes: number;
  left: Int16Array;
  right: Int16Array;
}

export function readStereoWav(path: string): StereoWav {
  const buf = readFileSync(path);
  if (buf.toString('ascii', 0, 4) !== 'RIFF' || buf.toString('ascii', 8, 12) !== 'WAVE') throw new Error('not a WAV');
  if (buf.toString('ascii', 36, 40) !== 'data') throw new Error('unexpected header layout');
  const channels = buf.readUInt16LE(22);
  const sampleRate = buf.readUInt32LE(24);
  const dataBytes = buf.readUInt32LE(40);
  if (buf.readUInt32LE(4) !== 36 + dataBytes) throw new Error(`RIFF size ${buf.readUInt32LE(4)} does not match data size ${dataBytes}`);
  if (44 + dataBytes !== buf.length) throw new Error(`data size ${dataBytes} does not match the file (${buf.length - 44} bytes of audio)`);
  const frames = dataBytes / 4;
  const left = new Int16Array(frames);
  const right = new Int16Array(frames);
  for (let i = 0; i < frames; i++) {
    left[i] = buf.readInt16LE(44 + i * 4);
    right[i] = buf.readInt16LE(46 + i * 4);
  }
  return { sampleRate, channels, dataBytes, fileBytes: buf.length, left, right };
}

/** Index of the first sample at or after `from` whose magnitude is above `threshold`, or -1. */
export function onset(samples: ArrayLike<number>, from = 0, threshold = 1000): number {
  for (let i = from; i < samples.length; i++) if (Math.abs(samples[i] ?? 0) > threshold) return i;
  return -1;
}

/** Samples whose magnitude is above `threshold`. */
export function loudCount(samples: ArrayLike<number>, threshold = 1000): number {
  let n = 0;
  for (let i = 0; i < samples.length; i++) if (Math.abs(samples[i] ?? 0) > threshold) n++;
  return n;
}

/** μ-law bytes (what the simulator heard) as linear samples. */
export function decodeUlaw(bytes: Uint8Array): Int16Array {
  const out = new Int16Array(bytes.length);
  for (let i = 0; i < bytes.length; i++) out[i] = mulawDecodeSample(bytes[i] ?? 0xff);
  return out;
}
