/**
 * Microphone → 8 kHz μ-law, 20 ms frames (160 bytes), as a phone call's caller audio.
 *
 * The context runs at the device rate (44.1 or 48 kHz usually). Each sample goes through an
 * anti-aliasing low-pass (8th-order Butterworth at 3.4 kHz, four biquads: -40 dB at 6 kHz), then the 8 kHz samples
 * are taken by linear interpolation at a fractional step. Filter state and the resampling phase
 * are kept across render quanta, so frames join without clicks. Each full frame is posted to the
 * page with its RMS level (for the page's speech detection), transferring its buffer.
 */
import { mulaw } from 'alawmulaw';

const OUT_RATE = 8000;
const FRAME = 160;
const CUTOFF_HZ = 3400;

class Biquad {
  #b0: number;
  #b1: number;
  #b2: number;
  #a1: number;
  #a2: number;
  #x1 = 0;
  #x2 = 0;
  #y1 = 0;
  #y2 = 0;
  /** RBJ cookbook low-pass. */
  constructor(rate: number, cutoff: number, q: number) {
    const w = (2 * Math.PI * Math.min(cutoff, rate * 0.45)) / rate;
    const alpha = Math.sin(w) / (2 * q);
    const cos = Math.cos(w);
    const a0 = 1 + alpha;
    this.#b0 = (1 - cos) / 2 / a0;
    this.#b1 = (1 - cos) / a0;
    this.#b2 = (1 - cos) / 2 / a0;
    this.#a1 = (-2 * cos) / a0;
    this.#a2 = (1 - alpha) / a0;
  }
  step(x: number): number {
    const y = this.#b0 * x + this.#b1 * this.#x1 + this.#b2 * this.#x2 - this.#a1 * this.#y1 - this.#a2 * this.#y2;
    this.#x2 = this.#x1;
    this.#x1 = x;
    this.#y2 = this.#y1;
    this.#y1 = y;
    return y;
  }
}

class CaptureProcessor extends AudioWorkletProcessor {
  /** Input samples per output sample. */
  readonly #step = sampleRate / OUT_RATE;
  // Butterworth 8th order = four biquads with these Qs.
  readonly #lp = [0.5098, 0.6013, 0.9, 2.5629].map((q) => new Biquad(sampleRate, CUTOFF_HZ, q));
  /** Position of the next output sample, in input samples from the start of the next quantum. */
  #t = 0;
  #prev = 0;
  #frame = new Uint8Array(FRAME);
  #fill = 0;
  #energy = 0;

  process(inputs: Float32Array[][]): boolean {
    const input = inputs[0]?.[0];
    if (input === undefined) return true;
    const n = input.length;
    let t = this.#t;
    for (let i = 0; i < n; i++) {
      let y = input[i] ?? 0;
      for (const f of this.#lp) y = f.step(y);
      while (t <= i) {
        const v = this.#prev + (y - this.#prev) * (t - (i - 1));
        this.#push(v);
        t += this.#step;
      }
      this.#prev = y;
    }
    this.#t = t - n;
    return true;
  }

  #push(v: number): void {
    const clamped = v > 1 ? 1 : v < -1 ? -1 : v;
    this.#energy += clamped * clamped;
    this.#frame[this.#fill++] = mulaw.encodeSample(Math.round(clamped * 32767));
    if (this.#fill < FRAME) return;
    const frame = this.#frame;
    const rms = Math.sqrt(this.#energy / FRAME);
    this.port.postMessage({ type: 'frame', frame, rms }, [frame.buffer]);
    this.#frame = new Uint8Array(FRAME);
    this.#fill = 0;
    this.#energy = 0;
  }
}

registerProcessor('playline-capture', CaptureProcessor);
