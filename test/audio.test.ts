import { describe, expect, it } from 'vitest';
import { MULAW_SILENCE, mulawDecode, mulawEncode } from '../src/audio/mulaw.js';
import { silence, speechLikeSignal } from '../src/audio/signal.js';
import { EnergyVad } from '../src/audio/vad.js';
import { readWav, stripWavHeader, toMulaw8k, writeWavMulaw, writeWavPcm16 } from '../src/audio/wav.js';

/** Builds a WAV by hand: fmt + an odd-sized LIST chunk (with pad byte) + data, to exercise chunk walking. */
function handWav(opts: { format: number; channels: number; rate: number; bits: number; data: Uint8Array }): Buffer {
  const { format, channels, rate, bits, data } = opts;
  const fmt = Buffer.alloc(8 + 16);
  fmt.write('fmt ', 0, 'ascii');
  fmt.writeUInt32LE(16, 4);
  fmt.writeUInt16LE(format, 8);
  fmt.writeUInt16LE(channels, 10);
  fmt.writeUInt32LE(rate, 12);
  fmt.writeUInt32LE((rate * channels * bits) / 8, 16);
  fmt.writeUInt16LE((channels * bits) / 8, 20);
  fmt.writeUInt16LE(bits, 22);
  const list = Buffer.alloc(8 + 5 + 1);
  list.write('LIST', 0, 'ascii');
  list.writeUInt32LE(5, 4);
  list.write('INFOx', 8, 'ascii');
  const dataHdr = Buffer.alloc(8);
  dataHdr.write('data', 0, 'ascii');
  dataHdr.writeUInt32LE(data.length, 4);
  const body = Buffer.concat([Buffer.from('WAVE', 'ascii'), fmt, list, dataHdr, data]);
  const riff = Buffer.alloc(8);
  riff.write('RIFF', 0, 'ascii');
  riff.writeUInt32LE(body.length, 4);
  return Buffer.concat([riff, body]);
}

function tone(freq: number, rate: number, n: number, amp = 8000): Int16Array {
  const out = new Int16Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.round(amp * Math.sin((2 * Math.PI * freq * i) / rate));
  return out;
}

function rms(samples: Int16Array): number {
  let e = 0;
  for (const s of samples) e += s * s;
  return Math.sqrt(e / Math.max(1, samples.length));
}

/** Counts upward zero crossings per second. */
function frequencyOf(samples: Int16Array, rate: number): number {
  let crossings = 0;
  for (let i = 1; i < samples.length; i++) if ((samples[i - 1] ?? 0) < 0 && (samples[i] ?? 0) >= 0) crossings++;
  return (crossings * rate) / samples.length;
}

function runVad(vad: EnergyVad, audio: Uint8Array, frameBytes: number): Array<{ ms: number; event: 'start' | 'end' }> {
  const events: Array<{ ms: number; event: 'start' | 'end' }> = [];
  for (let i = 0; i < audio.length; i += frameBytes) {
    const frame = audio.subarray(i, i + frameBytes);
    const event = vad.push(frame);
    if (event !== undefined) events.push({ ms: (i + frame.length) / 8, event });
  }
  return events;
}

describe('mu-law codec', () => {
  it('round-trips linear samples within mu-law quantisation error', () => {
    const pcm = tone(440, 8000, 800, 20000);
    const back = mulawDecode(mulawEncode(pcm));
    expect(back).toHaveLength(pcm.length);
    for (let i = 0; i < pcm.length; i++) {
      const a = pcm[i] ?? 0;
      expect(Math.abs((back[i] ?? 0) - a)).toBeLessThanOrEqual(Math.abs(a) * 0.07 + 8);
    }
  });

  it('re-encodes every decoded byte to itself (except negative zero 0x7f)', () => {
    const all = Uint8Array.from({ length: 256 }, (_, i) => i);
    const again = mulawEncode(mulawDecode(all));
    for (let b = 0; b < 256; b++) expect(again[b]).toBe(b === 0x7f ? 0xff : b);
  });

  it('uses 0xff as silence', () => {
    expect(MULAW_SILENCE).toBe(0xff);
    expect(mulawDecode(new Uint8Array([MULAW_SILENCE]))[0]).toBe(0);
  });
});

describe('WAV', () => {
  it('writes and reads back a 16-bit PCM WAV', () => {
    const pcm = tone(300, 16000, 1600);
    const wav = writeWavPcm16(pcm, 16000);
    expect(wav.subarray(0, 4).toString('ascii')).toBe('RIFF');
    expect(wav.length).toBe(44 + pcm.length * 2);
    const back = readWav(wav);
    expect(back.sampleRate).toBe(16000);
    expect(back.samples).toEqual(pcm);
  });

  it('reads a 16 kHz stereo WAV with extra chunks, mixes it down and resamples it to 8 kHz mu-law', () => {
    const frames = 16000; // one second
    const left = tone(440, 16000, frames, 10000);
    const interleaved = new Int16Array(frames * 2);
    for (let i = 0; i < frames; i++) {
      interleaved[2 * i] = left[i] ?? 0;
      interleaved[2 * i + 1] = left[i] ?? 0;
    }
    const wav = handWav({ format: 1, channels: 2, rate: 16000, bits: 16, data: new Uint8Array(interleaved.buffer) });
    const mono = readWav(wav);
    expect(mono.sampleRate).toBe(16000);
    expect(mono.samples).toEqual(left);

    const ulaw = toMulaw8k(wav);
    expect(Math.abs(ulaw.length - 8000)).toBeLessThanOrEqual(2);
    const decoded = mulawDecode(ulaw);
    expect(frequencyOf(decoded, 8000)).toBeCloseTo(440, -1);
    expect(rms(decoded) / rms(left)).toBeGreaterThan(0.85);
    expect(rms(decoded) / rms(left)).toBeLessThan(1.15);
  });

  it('reads a mu-law (format 7) WAV and passes 8 kHz mu-law through toMulaw8k losslessly', () => {
    const ulaw = speechLikeSignal({ durationMs: 500, seed: 3 });
    const wav = handWav({ format: 7, channels: 1, rate: 8000, bits: 8, data: ulaw });
    const back = readWav(wav);
    expect(back.sampleRate).toBe(8000);
    expect(back.samples).toEqual(mulawDecode(ulaw));
    // Same samples (the encoder may pick 0xff where the input had 0x7f: both are zero).
    expect(mulawDecode(toMulaw8k(wav))).toEqual(mulawDecode(ulaw));
  });

  it('writes decoded mu-law as an 8 kHz PCM WAV', () => {
    const ulaw = speechLikeSignal({ durationMs: 200 });
    const back = readWav(writeWavMulaw(ulaw));
    expect(back.sampleRate).toBe(8000);
    expect(back.samples).toEqual(mulawDecode(ulaw));
  });

  it('rejects non-WAV input and unsupported encodings with a clear error', () => {
    expect(() => readWav(new Uint8Array(100))).toThrow(/RIFF\/WAVE/);
    const float = handWav({ format: 3, channels: 1, rate: 8000, bits: 32, data: new Uint8Array(64) });
    expect(() => readWav(float)).toThrow(/unsupported encoding \(format tag 3, 32 bits\)/);
    const pcm8 = handWav({ format: 1, channels: 1, rate: 8000, bits: 8, data: new Uint8Array(64) });
    expect(() => readWav(pcm8)).toThrow(/unsupported encoding/);
  });

  it('stripWavHeader returns the data chunk of a WAV and undefined for raw audio', () => {
    const ulaw = speechLikeSignal({ durationMs: 100 });
    const wav = handWav({ format: 7, channels: 1, rate: 8000, bits: 8, data: ulaw });
    expect(Buffer.from(stripWavHeader(wav) ?? []).equals(Buffer.from(ulaw))).toBe(true);
    expect(stripWavHeader(ulaw)).toBeUndefined();
    expect(stripWavHeader(new Uint8Array(0))).toBeUndefined();
    // A header that arrived without any audio yet.
    expect(stripWavHeader(wav.subarray(0, wav.length - ulaw.length))).toHaveLength(0);
  });
});

describe('speech-like test signal', () => {
  it('is deterministic per seed, about -20 dBFS while talking, and truly silent in pauses', () => {
    const a = speechLikeSignal({ durationMs: 3000, talkMs: 1000, pauseMs: 1000, seed: 7 });
    const b = speechLikeSignal({ durationMs: 3000, talkMs: 1000, pauseMs: 1000, seed: 7 });
    const c = speechLikeSignal({ durationMs: 3000, talkMs: 1000, pauseMs: 1000, seed: 8 });
    expect(a).toHaveLength(24000);
    expect(Buffer.from(a).equals(Buffer.from(b))).toBe(true);
    expect(Buffer.from(a).equals(Buffer.from(c))).toBe(false);
    const dbfs = 20 * Math.log10(rms(mulawDecode(a.subarray(0, 8000))) / 32768);
    expect(dbfs).toBeGreaterThan(-22);
    expect(dbfs).toBeLessThan(-18);
    expect(a.subarray(8000, 16000).every((x) => x === MULAW_SILENCE)).toBe(true);
    expect(a.subarray(16000, 24000).some((x) => x !== MULAW_SILENCE)).toBe(true);
  });

  it('silence(ms) is 8 bytes of 0xff per millisecond', () => {
    const s = silence(20);
    expect(s).toHaveLength(160);
    expect(s.every((x) => x === 0xff)).toBe(true);
  });
});

describe('EnergyVad', () => {
  it('starts about 60 ms into speech and ends about 700 ms after it stops', () => {
    const audio = speechLikeSignal({ durationMs: 5000, talkMs: 1200, pauseMs: 1800 });
    const vad = new EnergyVad();
    const events = runVad(vad, audio, 160);
    expect(events.map((e) => e.event)).toEqual(['start', 'end', 'start', 'end']);
    const [s1, e1, s2] = events;
    expect(s1?.ms).toBeLessThanOrEqual(120);
    expect(e1?.ms).toBeGreaterThanOrEqual(1200 + 600);
    expect(e1?.ms).toBeLessThanOrEqual(1200 + 800);
    expect(s2?.ms).toBeGreaterThanOrEqual(3000);
    expect(s2?.ms).toBeLessThanOrEqual(3120);
    expect(vad.speaking).toBe(false);
  });

  it('gives the same decisions whatever the frame size', () => {
    const audio = speechLikeSignal({ durationMs: 5000 });
    const small = runVad(new EnergyVad(), audio, 160).map((e) => e.event);
    const large = runVad(new EnergyVad(), audio, 1536).map((e) => e.event);
    const tiny = runVad(new EnergyVad(), audio, 33).map((e) => e.event);
    expect(large).toEqual(small);
    expect(tiny).toEqual(small);
  });

  it('never fires on silence or on low-level line noise', () => {
    const vad = new EnergyVad();
    expect(runVad(vad, silence(3000), 160)).toEqual([]);
    const noise = Uint8Array.from({ length: 24000 }, (_, i) => 0xfc + ((i * 7919) % 4)); // like PlayAI's mute frame
    expect(runVad(vad, noise, 160)).toEqual([]);
    expect(vad.speaking).toBe(false);
  });

  it('honours custom start and end times', () => {
    const audio = speechLikeSignal({ durationMs: 3000, talkMs: 1000, pauseMs: 2000 });
    const events = runVad(new EnergyVad({ startMs: 200, endMs: 300 }), audio, 160);
    expect(events.map((e) => e.event)).toEqual(['start', 'end']);
    expect(events[0]?.ms).toBeGreaterThanOrEqual(200);
    expect(events[1]?.ms).toBeLessThanOrEqual(1000 + 400);
  });
});
