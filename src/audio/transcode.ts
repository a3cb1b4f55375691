/**
 * Streaming audio conversion between the Twilio format (μ-law 8 kHz) and the
 * format an agent is set to (μ-law or 16-bit PCM at another rate), for the
 * adapters whose agent is not set to μ-law 8 kHz.
 *
 * One {@link Transcoder} per direction per call: base64 in, base64 out, with
 * state kept across chunks so that a signal cut into 20 ms frames converts to
 * the same samples as the whole signal converted at once (no clicks at frame
 * edges). μ-law uses `alawmulaw`; resampling uses `wave-resampler` with its
 * defaults: cubic interpolation plus a zero-phase Butterworth low-pass at the
 * lower rate's Nyquist, which removes what would alias when going down
 * (16 kHz → 8 kHz: 3.8 kHz −0.06 dB, 4.4 kHz −92 dB, 6 kHz gone) and the images
 * when going up. Measured against the library's sinc method: the same
 * anti-aliasing (the low-pass does it), half the CPU; cubic rolls off the top
 * of the telephone band going up (8 kHz → 16 kHz: 3 kHz −2.2 dB, 3.4 kHz
 * −3.5 dB), which speech recognition does not mind.
 *
 * `wave-resampler` converts whole buffers only, so {@link StreamResampler}
 * runs it overlap-save: each chunk is resampled together with the input just
 * before it (so the filter has settled) and the output whose filter would still
 * need input that has not arrived is held back until the next chunk (8–12 ms
 * of audio, see {@link marginSamples}; `reset` drops it). Windows always start on an input
 * sample that falls exactly on the output grid, so the fractional position is
 * carried exactly from one chunk to the next.
 */
import alawmulaw from 'alawmulaw';
import waveResampler from 'wave-resampler';

/** An audio encoding and rate; `linear16` is signed 16-bit little-endian PCM, mono. */
export interface AudioFormat {
  encoding: 'mulaw' | 'linear16';
  sampleRate: number;
}

/** A stateful one-direction converter. */
export interface Transcoder {
  /** Base64 in, base64 out (possibly empty while the first milliseconds are held back); state is kept across calls. */
  push(b64: string): string;
  /** Forgets the state (after a barge-in, or before audio that does not continue the previous audio). */
  reset(): void;
}

/** Twilio Media Streams audio: μ-law 8 kHz mono. */
export const TWILIO_FORMAT: AudioFormat = Object.freeze({ encoding: 'mulaw', sampleRate: 8000 });

const ELEVENLABS_FORMATS: ReadonlyMap<string, AudioFormat> = new Map([
  ['ulaw_8000', TWILIO_FORMAT],
  ...[8000, 16000, 22050, 24000, 44100, 48000].map((rate): [string, AudioFormat] => [`pcm_${rate}`, Object.freeze({ encoding: 'linear16', sampleRate: rate })]),
]);

/** ElevenLabs' audio format names (`ulaw_8000`, `pcm_16000`, …); undefined for any other. */
export function parseElevenLabsFormat(s: string): AudioFormat | undefined {
  return ELEVENLABS_FORMATS.get(s);
}

export function sameFormat(a: AudioFormat, b: AudioFormat): boolean {
  return a.encoding === b.encoding && a.sampleRate === b.sampleRate;
}

/**
 * A converter from `from` to `to`, or undefined when they are the same format
 * (the caller passes the bytes through untouched). Throws for a sample rate
 * that is not a positive integer (a programming error: formats come from
 * {@link parseElevenLabsFormat} or configuration validated at startup).
 */
export function createTranscoder(from: AudioFormat, to: AudioFormat): Transcoder | undefined {
  if (sameFormat(from, to)) return undefined;
  for (const rate of [from.sampleRate, to.sampleRate]) {
    if (!Number.isInteger(rate) || rate <= 0 || rate > 384_000) throw new Error(`Audio sample rate must be a positive integer of Hz, got ${rate}`);
  }
  return new StreamTranscoder(from, to);
}

const EMPTY = new Int16Array(0);

class StreamTranscoder implements Transcoder {
  readonly #from: AudioFormat;
  readonly #to: AudioFormat;
  readonly #resampler: StreamResampler | undefined;
  /** The odd last byte of linear16 input, waiting for its pair (-1: none). */
  #carry = -1;

  constructor(from: AudioFormat, to: AudioFormat) {
    this.#from = from;
    this.#to = to;
    this.#resampler = from.sampleRate === to.sampleRate ? undefined : new StreamResampler(from.sampleRate, to.sampleRate);
  }

  push(b64: string): string {
    const inBytes = Buffer.from(b64, 'base64');
    const samples = this.#from.encoding === 'mulaw' ? alawmulaw.mulaw.decode(inBytes) : this.#readLinear16(inBytes);
    const out = this.#resampler === undefined ? samples : this.#resampler.push(samples);
    if (out.length === 0) return '';
    if (this.#to.encoding === 'mulaw') {
      const mu = alawmulaw.mulaw.encode(out);
      return Buffer.from(mu.buffer, mu.byteOffset, mu.byteLength).toString('base64');
    }
    const bytes = Buffer.allocUnsafe(out.length * 2);
    for (let i = 0; i < out.length; i++) bytes.writeInt16LE(out[i] as number, i * 2);
    return bytes.toString('base64');
  }

  reset(): void {
    this.#carry = -1;
    this.#resampler?.reset();
  }

  /** Little-endian int16 samples of `bytes`, with an odd byte carried to the next call. */
  #readLinear16(bytes: Buffer): Int16Array {
    let at = 0;
    const total = bytes.length + (this.#carry >= 0 ? 1 : 0);
    const n = total >> 1;
    if (n === 0) {
      if (bytes.length === 1) this.#carry = bytes[0] as number;
      return EMPTY;
    }
    const out = new Int16Array(n);
    let i = 0;
    if (this.#carry >= 0) {
      const v = this.#carry | ((bytes[0] as number) << 8);
      out[i++] = v >= 0x8000 ? v - 0x10000 : v;
      at = 1;
    }
    for (; i < n; i++, at += 2) out[i] = bytes.readInt16LE(at);
    this.#carry = at < bytes.length ? (bytes[at] as number) : -1;
    return out;
  }
}

const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));

/** wave-resampler options (its defaults, spelled out): cubic interpolation plus its IIR low-pass of order 16. */
const RESAMPLE_OPTIONS = { method: 'cubic', LPF: true, LPFType: 'IIR', LPFOrder: 16 } as const;

/**
 * Input samples each side of an output sample that its value depends on (to
 * -90 dB): the zero-phase Butterworth's impulse response, which in cutoff
 * periods grows as the cutoff nears the filter's Nyquist (bilinear warping).
 * Fitted, with room, to the impulse response of wave-resampler 1.0 measured
 * at the rates ElevenLabs offers, plus the interpolator's 2 samples (e.g.
 * 16 kHz → 8 kHz: 163 measured, 186 kept; 8 kHz → 16 kHz: 72 measured, 94
 * kept; 44.1 kHz → 8 kHz: 312 measured, 354 kept). `test/transcode.test.ts`
 * checks that chunked and whole conversions agree at these rates.
 */
export function marginSamples(from: number, to: number): number {
  const cutoff = Math.min(from, to) / 2;
  const ratio = cutoff / Math.max(from, to);
  const periods = 26 + 20 * Math.tan(Math.PI * Math.min(ratio, 0.45));
  return Math.ceil((periods * from) / cutoff) + 2;
}

/**
 * Overlap-save around `waveResampler.resample`. Input sample `j` and output
 * sample `k` are absolute indexes since the last reset; output `k` sits at
 * input position `k * from / to`. Every window starts on an input index that
 * is a multiple of `p` (= from / gcd), where the output grid meets the input
 * grid, and spans a multiple of `p` samples, so the library's own position
 * mapping (`t * (length - 1) / outputs`) is exactly the global one.
 */
export class StreamResampler {
  readonly #from: number;
  readonly #to: number;
  readonly #p: number;
  readonly #q: number;
  readonly #margin: number;
  /** Input kept: absolute samples [#start, #start + #length). */
  #buf = new Float64Array(4096);
  #start = 0;
  #length = 0;
  /** Absolute index of the next output sample. */
  #next = 0;
  #window = new Float64Array(4096);

  constructor(from: number, to: number) {
    this.#from = from;
    this.#to = to;
    const g = gcd(from, to);
    this.#p = from / g;
    this.#q = to / g;
    this.#margin = marginSamples(from, to);
  }

  /** Input samples in, the output samples now final out (the last few milliseconds wait for the next push). */
  push(input: Int16Array): Int16Array {
    this.#append(input);
    const p = this.#p;
    const q = this.#q;
    const margin = this.#margin;
    const end = this.#start + this.#length; // absolute index past the last input sample
    // Window start: on the grid, `margin` before the next output's position (or the stream start).
    const ws = Math.max(0, Math.floor((Math.floor((this.#next * p) / q) - margin) / p) * p);
    // Outputs whose position is at least `margin` before the last input sample are final.
    const last = end - 1 - margin;
    if (last < 0) return EMPTY;
    const kEnd = Math.floor((last * q) / p) + 1;
    if (kEnd <= this.#next) return EMPTY;
    // Window end (inclusive): on the grid relative to ws, zero-padded past the input
    // (the padding only reaches outputs held back for the next push).
    const we = ws + Math.ceil((end - 1 - ws) / p) * p;
    const w = we - ws + 1;
    const m = ((w - 1) * q) / p;
    if (this.#window.length < w) this.#window = new Float64Array(growTo(w));
    const window = this.#window.subarray(0, w);
    window.set(this.#buf.subarray(ws - this.#start, end - this.#start));
    window.fill(0, end - ws);
    const y = waveResampler.resample(window, this.#from, this.#rateFor(w, m), { ...RESAMPLE_OPTIONS });
    const k0 = (ws * q) / p;
    const out = new Int16Array(kEnd - this.#next);
    for (let k = this.#next; k < kEnd; k++) {
      const v = Math.round(y[k - k0] ?? 0);
      out[k - this.#next] = v > 32767 ? 32767 : v < -32768 ? -32768 : v;
    }
    this.#next = kEnd;
    this.#trim(Math.max(0, Math.floor((Math.floor((kEnd * p) / q) - margin) / p) * p));
    return out;
  }

  reset(): void {
    this.#start = 0;
    this.#length = 0;
    this.#next = 0;
  }

  /**
   * The target rate to hand the library so that it makes exactly `m` outputs
   * of a `w`-sample window (it makes `floor(w * rate / from)`). Going down, the
   * true rate does (w - 1 is a multiple of p), so the filter's cutoff is exact;
   * going up it would make one too many, so the rate is nudged by under 0.5 %
   * (which moves the low-pass's design rate by as much).
   */
  #rateFor(w: number, m: number): number {
    const lib = (rate: number): number => Math.trunc(w * ((rate - this.#from) / this.#from + 1));
    if (lib(this.#to) === m) return this.#to;
    return (this.#from * (m + 0.5)) / w;
  }

  #append(input: Int16Array): void {
    const need = this.#length + input.length;
    if (need > this.#buf.length) {
      const bigger = new Float64Array(growTo(need));
      bigger.set(this.#buf.subarray(0, this.#length));
      this.#buf = bigger;
    }
    this.#buf.set(input, this.#length);
    this.#length = need;
  }

  /** Drops the input before absolute index `from`. */
  #trim(from: number): void {
    const drop = from - this.#start;
    if (drop <= 0) return;
    this.#buf.copyWithin(0, drop, this.#length);
    this.#start = from;
    this.#length -= drop;
  }
}

function growTo(n: number): number {
  let size = 4096;
  while (size < n) size *= 2;
  return size;
}
