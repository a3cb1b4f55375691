/**
 * Deterministic synthetic audio for simulated callers and tests (8 kHz mu-law).
 */
import { MULAW_SILENCE, mulawEncode } from './mulaw.js';
import { prng } from '../util/prng.js';

const RATE = 8000;
/** RMS of each talk spurt: -20 dBFS. */
const TARGET_RMS = 32767 * 0.1;

/** Options for {@link speechLikeSignal}. */
export interface SpeechLikeOptions {
  /** Total length of the signal. */
  durationMs: number;
  /** Length of each talk spurt. Default 1200 ms. */
  talkMs?: number;
  /** Silence between spurts. Default 1800 ms. */
  pauseMs?: number;
  /** PRNG seed; the same seed always gives the same bytes. Default 1. */
  seed?: number;
}

/** One talk spurt of `n` samples: a gliding harmonic tone shaped into syllables. */
function spurt(n: number, rand: () => number): Int16Array {
  const f0 = 100 + rand() * 120; // Hz, male-to-female pitch range
  const glide = (rand() - 0.5) * 0.3; // relative pitch change over the spurt
  const harmonics = [1, 0.6, 0.45, 0.3, 0.2];
  const phases = harmonics.map(() => rand() * 2 * Math.PI);
  const out = new Float64Array(n);

  // Syllables of 120..280 ms each, with a raised-cosine envelope.
  let s = 0;
  let phase = 0;
  while (s < n) {
    const len = Math.min(n - s, Math.round(RATE * (0.12 + rand() * 0.16)));
    const gain = 0.6 + rand() * 0.4;
    for (let i = 0; i < len; i++) {
      const t = (s + i) / n;
      const f = f0 * (1 + glide * t);
      phase += (2 * Math.PI * f) / RATE;
      const env = gain * (0.5 - 0.5 * Math.cos((2 * Math.PI * (i + 0.5)) / len));
      let v = 0;
      for (let h = 0; h < harmonics.length; h++) v += (harmonics[h] ?? 0) * Math.sin((h + 1) * phase + (phases[h] ?? 0));
      out[s + i] = env * v;
    }
    s += len;
  }

  let energy = 0;
  for (let i = 0; i < n; i++) energy += (out[i] ?? 0) ** 2;
  const rms = Math.sqrt(energy / Math.max(1, n));
  const scale = rms > 0 ? TARGET_RMS / rms : 0;
  const pcm = new Int16Array(n);
  for (let i = 0; i < n; i++) {
    const v = Math.round((out[i] ?? 0) * scale);
    pcm[i] = v > 32767 ? 32767 : v < -32768 ? -32768 : v;
  }
  return pcm;
}

/**
 * A deterministic speech-like caller signal as 8 kHz mu-law: talk spurts
 * (harmonics of a gliding pitch, syllable-shaped, about -20 dBFS RMS) separated
 * by digital silence (0xFF). Starts with a talk spurt.
 */
export function speechLikeSignal(opts: SpeechLikeOptions): Uint8Array {
  const { durationMs, talkMs = 1200, pauseMs = 1800, seed = 1 } = opts;
  const total = Math.max(0, Math.round((durationMs * RATE) / 1000));
  const talk = Math.max(0, Math.round((talkMs * RATE) / 1000));
  const pause = Math.max(0, Math.round((pauseMs * RATE) / 1000));
  const out = new Uint8Array(total).fill(MULAW_SILENCE);
  const rand = prng(seed);
  if (talk === 0) return out;
  for (let at = 0; at < total; at += talk + pause) {
    const n = Math.min(talk, total - at);
    out.set(mulawEncode(spurt(n, rand)), at);
  }
  return out;
}

/** `ms` milliseconds of 8 kHz mu-law digital silence. */
export function silence(ms: number): Uint8Array {
  return new Uint8Array(Math.max(0, Math.round((ms * RATE) / 1000))).fill(MULAW_SILENCE);
}
