import { describe, expect, it } from 'vitest';
import { mulawDecode, mulawEncode } from '../src/audio/mulaw.js';
import { createTranscoder, marginSamples, parseElevenLabsFormat, TWILIO_FORMAT, type AudioFormat, type Transcoder } from '../src/audio/transcode.js';

const pcm = (sampleRate: number): AudioFormat => ({ encoding: 'linear16', sampleRate });

function tone(freq: number, rate: number, n: number, amp = 8000): Int16Array {
  const out = new Int16Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.round(amp * Math.sin((2 * Math.PI * freq * i) / rate));
  return out;
}

const pcmBytes = (s: Int16Array): Buffer => Buffer.from(s.buffer, s.byteOffset, s.byteLength);

function pcmFrom(b64: string): Int16Array {
  const buf = Buffer.from(b64, 'base64');
  const out = new Int16Array(buf.length >> 1);
  for (let i = 0; i < out.length; i++) out[i] = buf.readInt16LE(i * 2);
  return out;
}

function must(t: Transcoder | undefined): Transcoder {
  if (t === undefined) throw new Error('expected a transcoder');
  return t;
}

/** Pushes `bytes` in chunks of `size` bytes and returns the concatenated output bytes. */
function pushChunks(t: Transcoder, bytes: Uint8Array, size: number): Buffer {
  const parts: Buffer[] = [];
  for (let i = 0; i < bytes.length; i += size) parts.push(Buffer.from(t.push(Buffer.from(bytes.subarray(i, i + size)).toString('base64')), 'base64'));
  return Buffer.concat(parts);
}

function pcmOf(buf: Buffer): Int16Array {
  return pcmFrom(buf.toString('base64'));
}

/** Amplitude of the `freq` component of `s[from…]` (a single-bin DFT). */
function amplitudeAt(s: Int16Array, rate: number, freq: number, from: number): number {
  let c = 0;
  let d = 0;
  for (let i = from; i < s.length; i++) {
    const v = s[i] ?? 0;
    c += v * Math.cos((2 * Math.PI * freq * i) / rate);
    d += v * Math.sin((2 * Math.PI * freq * i) / rate);
  }
  return (2 * Math.hypot(c, d)) / (s.length - from);
}

const db = (ratio: number): number => 20 * Math.log10(ratio);

function maxAbsDiff(a: Int16Array, b: Int16Array): number {
  let m = 0;
  for (let i = 0, n = Math.min(a.length, b.length); i < n; i++) m = Math.max(m, Math.abs((a[i] ?? 0) - (b[i] ?? 0)));
  return m;
}

function maxStep(s: Int16Array, from: number): number {
  let m = 0;
  for (let i = from + 1; i < s.length; i++) m = Math.max(m, Math.abs((s[i] ?? 0) - (s[i - 1] ?? 0)));
  return m;
}

describe('formats', () => {
  it('parses every ElevenLabs audio format name and nothing else', () => {
    expect(parseElevenLabsFormat('ulaw_8000')).toEqual(TWILIO_FORMAT);
    for (const rate of [8000, 16000, 22050, 24000, 44100, 48000]) expect(parseElevenLabsFormat(`pcm_${rate}`)).toEqual(pcm(rate));
    for (const bad of ['pcm_11025', 'ulaw_16000', 'mp3_44100_128', 'PCM_16000', '']) expect(parseElevenLabsFormat(bad)).toBeUndefined();
    expect(TWILIO_FORMAT).toEqual({ encoding: 'mulaw', sampleRate: 8000 });
  });

  it('gives no transcoder when both sides have the same format (bytes pass through)', () => {
    expect(createTranscoder(TWILIO_FORMAT, { encoding: 'mulaw', sampleRate: 8000 })).toBeUndefined();
    expect(createTranscoder(pcm(16000), pcm(16000))).toBeUndefined();
    expect(createTranscoder(TWILIO_FORMAT, pcm(8000))).toBeDefined();
  });

  it('refuses a sample rate that is not a positive integer', () => {
    expect(() => createTranscoder(TWILIO_FORMAT, pcm(0))).toThrow(/positive integer/);
    expect(() => createTranscoder(pcm(16000.5), TWILIO_FORMAT)).toThrow(/positive integer/);
  });
});

describe('transcoder quality', () => {
  it('a 1 kHz tone survives μ-law 8 kHz → PCM 16 kHz → μ-law 8 kHz in 20 ms frames with an SNR above 35 dB', () => {
    const original = tone(1000, 8000, 8000);
    const mu = mulawEncode(original);
    const up = must(createTranscoder(TWILIO_FORMAT, pcm(16000)));
    const down = must(createTranscoder(pcm(16000), TWILIO_FORMAT));
    const wide = pushChunks(up, mu, 160);
    const back = mulawDecode(pushChunks(down, wide, 640));
    // Only the last few milliseconds are held back, in each direction.
    expect(back.length).toBeGreaterThan(8000 - 2 * 8 * 12);
    let signal = 0;
    let noise = 0;
    for (let i = 400; i < back.length; i++) {
      const ref = original[i] ?? 0;
      signal += ref * ref;
      noise += ((back[i] ?? 0) - ref) ** 2;
    }
    // μ-law alone gives about 38 dB on this tone; the resampling adds nothing measurable (measured: same codes back).
    expect(10 * Math.log10(signal / Math.max(noise, 1e-9))).toBeGreaterThan(35);
  });

  it('a 3.8 kHz tone at 16 kHz → 8 kHz loses under 0.5 dB while a 6 kHz tone (above 4 kHz) is at least 60 dB down, not aliased to 2 kHz', () => {
    const at8k = (freq: number): Int16Array => pcmOf(pushChunks(must(createTranscoder(pcm(16000), pcm(8000))), pcmBytes(tone(freq, 16000, 16000)), 640));
    const pass = at8k(3800);
    expect(db(amplitudeAt(pass, 8000, 3800, 400) / 8000)).toBeGreaterThan(-0.5); // measured −0.06 dB
    const alias = at8k(6000);
    expect(db(Math.max(amplitudeAt(alias, 8000, 2000, 400), 1e-3) / 8000)).toBeLessThan(-60); // measured: nothing left
  });

  it('converts 24 kHz and 44.1 kHz agent audio to μ-law 8 kHz keeping a 1 kHz tone and the duration', () => {
    for (const rate of [24000, 44100]) {
      const t = must(createTranscoder(pcm(rate), TWILIO_FORMAT));
      const out = mulawDecode(pushChunks(t, pcmBytes(tone(1000, rate, rate)), (rate / 50) * 2));
      expect(out.length).toBeLessThanOrEqual(8000);
      expect(out.length).toBeGreaterThan(8000 - 8 * 12);
      expect(Math.abs(db(amplitudeAt(out, 8000, 1000, 400) / 8000))).toBeLessThan(0.3);
    }
  });

  it('converts μ-law 8 kHz caller audio to 24 kHz and 44.1 kHz PCM keeping a 1 kHz tone', () => {
    for (const rate of [24000, 44100]) {
      const t = must(createTranscoder(TWILIO_FORMAT, pcm(rate)));
      const out = pcmOf(pushChunks(t, mulawEncode(tone(1000, 8000, 8000)), 160));
      expect(out.length).toBeLessThanOrEqual(rate);
      expect(out.length).toBeGreaterThan(rate - (rate / 1000) * 12);
      expect(Math.abs(db(amplitudeAt(out, rate, 1000, rate / 20) / 8000))).toBeLessThan(0.3);
    }
  });
});

describe('transcoder state across chunks', () => {
  const pairs: Array<[number, number]> = [
    [16000, 8000],
    [8000, 16000],
    [24000, 8000],
    [8000, 24000],
    [44100, 8000],
    [8000, 44100],
  ];

  it('a tone cut into 20 ms frames converts to the same samples as the whole tone at once (within 4 LSB)', () => {
    for (const [from, to] of pairs) {
      const x = pcmBytes(tone(437, from, from));
      const whole = pcmFrom(must(createTranscoder(pcm(from), pcm(to))).push(x.toString('base64')));
      const chunked = pcmOf(pushChunks(must(createTranscoder(pcm(from), pcm(to))), x, (from / 50) * 2));
      expect(chunked.length, `${from} → ${to}`).toBe(whole.length);
      expect(maxAbsDiff(whole, chunked), `${from} → ${to}`).toBeLessThanOrEqual(4);
    }
  });

  it('shows no step at chunk edges: the largest sample-to-sample jump stays that of the tone', () => {
    for (const [from, to] of pairs) {
      const out = pcmOf(pushChunks(must(createTranscoder(pcm(from), pcm(to))), pcmBytes(tone(437, from, from)), (from / 50) * 2));
      // A sine of amplitude A moves at most 2·A·sin(π f / rate) per sample; skip the tone's own onset (50 ms).
      const bound = 2 * 8000 * Math.sin((Math.PI * 437) / to);
      expect(maxStep(out, to / 20), `${from} → ${to}`).toBeLessThanOrEqual(bound * 1.02 + 2);
    }
  });

  it('carries an odd byte of 16-bit PCM over to the next chunk', () => {
    const x = pcmBytes(tone(437, 16000, 16000));
    const whole = must(createTranscoder(pcm(16000), TWILIO_FORMAT)).push(x.toString('base64'));
    const odd = pushChunks(must(createTranscoder(pcm(16000), TWILIO_FORMAT)), x, 37);
    expect(maxAbsDiff(mulawDecode(Buffer.from(whole, 'base64')), mulawDecode(odd))).toBeLessThanOrEqual(1);
    // Without resampling the encoding alone must be exact, whatever the chunk edges.
    const x8 = pcmBytes(tone(437, 8000, 800));
    const exact = must(createTranscoder(pcm(8000), TWILIO_FORMAT));
    expect(pushChunks(exact, x8, 3)).toEqual(Buffer.from(mulawEncode(tone(437, 8000, 800))));
    expect(exact.push(Buffer.from([1]).toString('base64'))).toBe('');
  });

  it('after reset converts as a new transcoder would (nothing of the earlier audio leaks)', () => {
    const t = must(createTranscoder(pcm(16000), TWILIO_FORMAT));
    pushChunks(t, pcmBytes(tone(3000, 16000, 1600)), 641);
    t.reset();
    const y = pcmBytes(tone(500, 16000, 3200));
    expect(pushChunks(t, y, 640)).toEqual(pushChunks(must(createTranscoder(pcm(16000), TWILIO_FORMAT)), y, 640));
  });

  it('holds back only the filter margin: 8 to 12 ms at the ElevenLabs rates', () => {
    for (const rate of [16000, 22050, 24000, 44100, 48000]) {
      for (const [from, to] of [
        [rate, 8000],
        [8000, rate],
      ] as const) {
        const ms = (marginSamples(from, to) / from) * 1000;
        expect(ms).toBeGreaterThanOrEqual(7);
        expect(ms).toBeLessThanOrEqual(12);
      }
    }
  });
});
