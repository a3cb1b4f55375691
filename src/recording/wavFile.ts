/**
 * The on-disk shape of a local recording: a canonical 44-byte-header WAV,
 * 16-bit PCM, 8 kHz, two channels (caller left, agent right).
 *
 * A recording is written as the call runs, so its header's sizes are only
 * right once the file is closed. They are also patched every few seconds while
 * it is written, and {@link repairRecordings} fixes what a crash (kill -9, power
 * loss) left behind at boot: a file is always playable, up to the last audio
 * that reached the disk.
 */
import { closeSync, ftruncateSync, fstatSync, openSync, readSync, readdirSync, writeSync } from 'node:fs';
import { join } from 'node:path';

export const RECORDING_SAMPLE_RATE = 8000;
export const RECORDING_CHANNELS = 2;
/** Bytes per sample frame: two 16-bit samples. */
export const FRAME_BYTES = 4;
export const HEADER_BYTES = 44;

/** The 44-byte header of a stereo 16-bit 8 kHz WAV holding `dataBytes` of audio. */
export function wavHeader(dataBytes: number): Buffer {
  const h = Buffer.alloc(HEADER_BYTES);
  h.write('RIFF', 0, 'ascii');
  h.writeUInt32LE(36 + dataBytes, 4);
  h.write('WAVE', 8, 'ascii');
  h.write('fmt ', 12, 'ascii');
  h.writeUInt32LE(16, 16);
  h.writeUInt16LE(1, 20); // PCM
  h.writeUInt16LE(RECORDING_CHANNELS, 22);
  h.writeUInt32LE(RECORDING_SAMPLE_RATE, 24);
  h.writeUInt32LE(RECORDING_SAMPLE_RATE * FRAME_BYTES, 28);
  h.writeUInt16LE(FRAME_BYTES, 32);
  h.writeUInt16LE(16, 34);
  h.write('data', 36, 'ascii');
  h.writeUInt32LE(dataBytes, 40);
  return h;
}

/** The two size fields of the header (RIFF size at 4, data size at 40), as written by {@link writeSizes}. */
export function sizeFields(dataBytes: number): { riff: Buffer; data: Buffer } {
  const riff = Buffer.alloc(4);
  riff.writeUInt32LE(36 + dataBytes, 0);
  const data = Buffer.alloc(4);
  data.writeUInt32LE(dataBytes, 0);
  return { riff, data };
}

/** True when `h` is the header this module writes (whatever its sizes say). */
export function isOurHeader(h: Buffer): boolean {
  return (
    h.length >= HEADER_BYTES &&
    h.toString('ascii', 0, 4) === 'RIFF' &&
    h.toString('ascii', 8, 16) === 'WAVEfmt ' &&
    h.readUInt32LE(16) === 16 &&
    h.readUInt16LE(20) === 1 &&
    h.readUInt16LE(22) === RECORDING_CHANNELS &&
    h.readUInt32LE(24) === RECORDING_SAMPLE_RATE &&
    h.readUInt16LE(34) === 16 &&
    h.toString('ascii', 36, 40) === 'data'
  );
}

/** Whole sample frames of audio in a recording file of `fileBytes` bytes. */
export function framesIn(fileBytes: number): number {
  return Math.max(0, Math.floor((fileBytes - HEADER_BYTES) / FRAME_BYTES));
}

/**
 * Makes an open recording file consistent: a partial trailing frame is cut, and the header's
 * sizes are set to the audio present. Returns the audio bytes, or undefined when the file is
 * not a recording of ours (left alone).
 */
export function repairOpenFile(fd: number): { dataBytes: number; repaired: boolean } | undefined {
  const size = fstatSync(fd).size;
  const h = Buffer.alloc(HEADER_BYTES);
  if (size < HEADER_BYTES || readSync(fd, h, 0, HEADER_BYTES, 0) < HEADER_BYTES || !isOurHeader(h)) return undefined;
  const dataBytes = framesIn(size) * FRAME_BYTES;
  const ok = h.readUInt32LE(40) === dataBytes && h.readUInt32LE(4) === 36 + dataBytes && size === HEADER_BYTES + dataBytes;
  if (ok) return { dataBytes, repaired: false };
  if (size !== HEADER_BYTES + dataBytes) ftruncateSync(fd, HEADER_BYTES + dataBytes);
  const { riff, data } = sizeFields(dataBytes);
  writeSync(fd, riff, 0, 4, 4);
  writeSync(fd, data, 0, 4, 40);
  return { dataBytes, repaired: true };
}

/**
 * At boot: every `*.wav` in `dir` whose header does not match its length (a crash during the
 * call) is patched. Returns the names repaired. Files that are not ours are left alone.
 */
export function repairRecordings(dir: string, onError?: (file: string, err: unknown) => void): string[] {
  let names: string[];
  try {
    names = readdirSync(dir).filter((n) => n.endsWith('.wav'));
  } catch {
    return [];
  }
  const repaired: string[] = [];
  for (const name of names) {
    let fd: number | undefined;
    try {
      fd = openSync(join(dir, name), 'r+');
      if (repairOpenFile(fd)?.repaired === true) repaired.push(name);
    } catch (err) {
      onError?.(name, err);
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }
  return repaired;
}
