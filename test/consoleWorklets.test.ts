/**
 * The softphone's two AudioWorklet processors (web/src/phone/), run in Node
 * against a minimal AudioWorkletGlobalScope: the capture side's framing,
 * resampling and anti-aliasing, and the playback side's jitter buffer, mark
 * echoes, clear and underrun counting. The browser run is console.browser.test.ts.
 */
import { beforeAll, describe, expect, it } from 'vitest';
import { mulawDecode, mulawEncode } from '../src/audio/mulaw.js';

interface Port {
  posted: unknown[];
  onmessage: ((e: { data: unknown }) => void) | null;
  postMessage(m: unknown): void;
}
interface Processor {
  port: Port;
  process(inputs: Float32Array[][], outputs: Float32Array[][]): boolean;
}
type ProcessorCtor = new () => Processor;

const registered = new Map<string, ProcessorCtor>();
const scope = { sampleRate: 48_000, currentTime: 0 };

beforeAll(async () => {
  const g: Record<string, unknown> = globalThis as unknown as Record<string, unknown>;
  g.AudioWorkletProcessor = class {
    readonly port: Port = {
      posted: [],
      onmessage: null,
      postMessage(m: unknown) {
        this.posted.push(m);
      },
    };
  };
  g.registerProcessor = (name: string, ctor: ProcessorCtor) => registered.set(name, ctor);
  Object.defineProperty(globalThis, 'sampleRate', { get: () => scope.sampleRate, configurable: true });
  Object.defineProperty(globalThis, 'currentTime', { get: () => scope.currentTime, configurable: true });
  // Imported by path at run time: these modules are type-checked by web/tsconfig.json (worklet globals), not here.
  const dir = '../web/src/phone/';
  await import(/* @vite-ignore */ `${dir}capture-worklet.ts`);
  await import(/* @vite-ignore */ `${dir}playback-worklet.ts`);
});

function make(name: string, rate: number): Processor {
  scope.sampleRate = rate;
  scope.currentTime = 0;
  const Ctor = registered.get(name);
  if (Ctor === undefined) throw new Error(`${name} was not registered`);
  return new Ctor();
}

// ------------------------------------------------------------------ capture

function sine(freq: number, seconds: number, rate: number, amplitude = 0.5): Float32Array {
  const out = new Float32Array(Math.round(seconds * rate));
  for (let i = 0; i < out.length; i++) out[i] = amplitude * Math.sin((2 * Math.PI * freq * i) / rate);
  return out;
}

/** Feeds `input` in quanta of the given sizes; returns the frames posted. */
function capture(input: Float32Array, rate: number, quantum: (i: number) => number = () => 128): Uint8Array[] {
  const p = make('playline-capture', rate);
  for (let at = 0, i = 0; at < input.length; i++) {
    const n = Math.min(quantum(i), input.length - at);
    p.process([[input.subarray(at, at + n)]], [[new Float32Array(n)]]);
    at += n;
  }
  return p.port.posted.map((m) => {
    if (typeof m !== 'object' || m === null || !('frame' in m) || !(m.frame instanceof Uint8Array)) throw new Error('not a frame message');
    return m.frame;
  });
}

const rms = (pcm: Int16Array): number => Math.sqrt(pcm.reduce((s, v) => s + v * v, 0) / Math.max(1, pcm.length));
const joined = (frames: Uint8Array[]): Uint8Array => {
  const out = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  let at = 0;
  for (const f of frames) {
    out.set(f, at);
    at += f.length;
  }
  return out;
};

describe('capture worklet', () => {
  it('turns a second of 48 kHz microphone audio into 50 μ-law frames of 160 bytes (20 ms at 8 kHz)', () => {
    const frames = capture(sine(1000, 1, 48_000), 48_000);
    expect(frames.length).toBe(50);
    for (const f of frames) expect(f.length).toBe(160);
    // A 1 kHz tone keeps its level (skip the filter's first frame).
    const level = rms(mulawDecode(joined(frames.slice(1))));
    expect(level / (0.5 * 32767 * Math.SQRT1_2)).toBeGreaterThan(0.9);
    expect(level / (0.5 * 32767 * Math.SQRT1_2)).toBeLessThan(1.1);
  });

  it('resamples 44.1 kHz input to 8 kHz as well (8000 samples a second)', () => {
    const frames = capture(sine(500, 2, 44_100), 44_100);
    expect(frames.length).toBe(100);
  });

  it('filters out what is above 4 kHz before resampling, so a 6 kHz tone does not alias into the call', () => {
    const pass = rms(mulawDecode(joined(capture(sine(1000, 1, 48_000), 48_000).slice(2))));
    const stop = rms(mulawDecode(joined(capture(sine(6000, 1, 48_000), 48_000).slice(2))));
    // Without the low-pass, 6 kHz sampled at 8 kHz comes back as a full-level 2 kHz tone (with it: about -40 dB).
    expect(stop / pass).toBeLessThan(0.03);
  });

  it('keeps filter and resampler state across render quanta: any split of the input gives the same frames', () => {
    const input = sine(700, 0.5, 48_000);
    const a = joined(capture(input, 48_000));
    const b = joined(capture(input, 48_000, (i) => [37, 128, 1, 250, 64][i % 5] ?? 128));
    expect(b).toEqual(a);
  });
});

// ----------------------------------------------------------------- playback

const QUANTUM = 128;

class Player {
  readonly p: Processor;
  readonly out: number[] = [];
  constructor(readonly rate = 48_000) {
    this.p = make('playline-playback', rate);
  }
  send(m: unknown): void {
    this.p.port.onmessage?.({ data: m });
  }
  audio(ms: number, level = 8000): void {
    this.send({ type: 'audio', bytes: mulawEncode(new Int16Array((ms * 8) | 0).fill(level)) });
  }
  /** Renders `ms` of output. */
  run(ms: number): void {
    const quanta = Math.ceil((ms / 1000) * (this.rate / QUANTUM));
    for (let i = 0; i < quanta; i++) {
      const ch = new Float32Array(QUANTUM);
      this.p.process([], [[ch]]);
      this.out.push(...ch);
      scope.currentTime += QUANTUM / this.rate;
    }
  }
  played(): string[] {
    return this.p.port.posted.flatMap((m) => (typeof m === 'object' && m !== null && 'type' in m && m.type === 'played' && 'name' in m ? [String(m.name)] : []));
  }
  stats(): Record<string, number> {
    const all = this.p.port.posted.filter((m): m is Record<string, number> => typeof m === 'object' && m !== null && 'type' in m && m.type === 'stats');
    const last = all[all.length - 1];
    if (last === undefined) throw new Error('no stats yet');
    return last;
  }
}

describe('playback worklet', () => {
  it('echoes a mark only once the audio queued before it has played', () => {
    const pl = new Player();
    pl.audio(200);
    pl.send({ type: 'mark', name: 'a' });
    pl.run(150);
    expect(pl.played()).toEqual([]);
    pl.run(80);
    expect(pl.played()).toEqual(['a']);
  });

  it('echoes a mark at once when nothing is queued before it', () => {
    const pl = new Player();
    pl.send({ type: 'mark', name: 'now' });
    expect(pl.played()).toEqual(['now']);
  });

  it('waits for the jitter buffer (80 ms) before playing, but plays a short reply once it has waited that long', () => {
    const pl = new Player();
    pl.audio(40);
    pl.run(60);
    expect(pl.out.some((v) => v !== 0)).toBe(false);
    pl.run(60);
    expect(pl.out.some((v) => v !== 0)).toBe(true);
  });

  it('clear empties the buffer at once, echoes every pending mark, and the output goes silent', () => {
    const pl = new Player();
    pl.audio(1000);
    pl.send({ type: 'mark', name: 'm1' });
    pl.audio(500);
    pl.send({ type: 'mark', name: 'm2' });
    pl.run(100);
    expect(pl.played()).toEqual([]);
    pl.send({ type: 'clear' });
    expect(pl.played()).toEqual(['m1', 'm2']);
    expect(pl.stats()).toMatchObject({ bufferedMs: 0, clears: 1 });
    expect(pl.stats().droppedMs).toBeGreaterThan(1300);
    const before = pl.out.length;
    pl.run(50);
    expect(pl.out.slice(before).every((v) => v === 0)).toBe(true);
  });

  it('counts an underrun when the buffer runs dry inside a stream, not when a reply simply ends', () => {
    const pl = new Player();
    pl.audio(100);
    pl.run(300);
    // A new reply a second later: the earlier one had ended, no underrun.
    pl.run(1000);
    pl.audio(100);
    pl.run(1000);
    expect(pl.stats().underruns).toBe(0);
    // Audio that arrives 100 ms after the buffer ran dry: a gap inside a stream.
    pl.audio(100);
    pl.run(200);
    pl.audio(100);
    pl.run(1000);
    expect(pl.stats().underruns).toBe(1);
  });

  it('plays the decoded audio at the context rate (8 kHz upsampled, level kept)', () => {
    const pl = new Player(48_000);
    pl.audio(500, 16_000);
    pl.run(600);
    const loud = pl.out.filter((v) => Math.abs(v) > 0.4);
    // 500 ms at 48 kHz, less the ramps at both ends.
    expect(loud.length).toBeGreaterThan(0.49 * 48_000);
    expect(loud.length).toBeLessThan(0.51 * 48_000);
  });
});
