/**
 * Energy-based voice activity detector for 8 kHz mu-law audio.
 *
 * Audio is judged in 10 ms blocks (80 samples) whatever the frame size pushed,
 * using the mean absolute linear amplitude of each block. A precomputed
 * 256-entry table maps each mu-law byte to |linear|, so `push` never allocates.
 */
import { mulawDecodeSample } from './mulaw.js';

/** |linear sample| for every mu-law byte. */
const MULAW_MAGNITUDE: Uint16Array = (() => {
  const table = new Uint16Array(256);
  for (let b = 0; b < 256; b++) table[b] = Math.abs(mulawDecodeSample(b));
  return table;
})();

const BLOCK_SAMPLES = 80; // 10 ms at 8 kHz
const BLOCK_MS = 10;

/** Tuning for {@link EnergyVad}. */
export interface EnergyVadOptions {
  /** Mean |linear| amplitude a 10 ms block must exceed to count as voiced. Default 300 (about -40 dBFS). */
  threshold?: number;
  /** Voiced time needed (without an unvoiced block in between) before speech starts. Default 60 ms. */
  startMs?: number;
  /** Unvoiced time needed before speech ends. Default 700 ms. */
  endMs?: number;
}

/** Streaming energy VAD fed with 8 kHz mu-law frames of any size. */
export class EnergyVad {
  private readonly blockThreshold: number;
  private readonly startMs: number;
  private readonly endMs: number;
  private blockSum = 0;
  private blockCount = 0;
  private voicedRunMs = 0;
  private unvoicedRunMs = 0;
  private _speaking = false;
  private _voiced = false;

  constructor(opts: EnergyVadOptions = {}) {
    const threshold = opts.threshold ?? 300;
    this.blockThreshold = threshold * BLOCK_SAMPLES;
    this.startMs = opts.startMs ?? 60;
    this.endMs = opts.endMs ?? 700;
  }

  /** True between a `'start'` and the following `'end'`. */
  get speaking(): boolean {
    return this._speaking;
  }

  /** Whether the last complete 10 ms block was above the threshold. */
  get voiced(): boolean {
    return this._voiced;
  }

  /**
   * Feeds one mu-law frame. Returns `'start'` or `'end'` when the speaking state
   * changed during this frame (the last change if a huge frame held several).
   */
  push(frame: Uint8Array): 'start' | 'end' | undefined {
    let change: 'start' | 'end' | undefined;
    let sum = this.blockSum;
    let count = this.blockCount;
    for (let i = 0; i < frame.length; i++) {
      sum += MULAW_MAGNITUDE[frame[i] as number] as number;
      if (++count === BLOCK_SAMPLES) {
        const c = this.block(sum > this.blockThreshold);
        if (c !== undefined) change = c;
        sum = 0;
        count = 0;
      }
    }
    this.blockSum = sum;
    this.blockCount = count;
    return change;
  }

  /** Forgets all state (back to not speaking). */
  reset(): void {
    this.blockSum = 0;
    this.blockCount = 0;
    this.voicedRunMs = 0;
    this.unvoicedRunMs = 0;
    this._speaking = false;
    this._voiced = false;
  }

  private block(voiced: boolean): 'start' | 'end' | undefined {
    this._voiced = voiced;
    if (voiced) {
      this.unvoicedRunMs = 0;
      this.voicedRunMs += BLOCK_MS;
      if (!this._speaking && this.voicedRunMs >= this.startMs) {
        this._speaking = true;
        return 'start';
      }
    } else {
      this.voicedRunMs = 0;
      this.unvoicedRunMs += BLOCK_MS;
      if (this._speaking && this.unvoicedRunMs >= this.endMs) {
        this._speaking = false;
        return 'end';
      }
    }
    return undefined;
  }
}
