/** The caller-audio buffer a session holds while its agent cannot take audio. */
import { describe, expect, it } from 'vitest';
import { CallerAudioBuffer } from '../src/session/callerBuffer.js';

const frame = (n: number, bytes = 160): string => Buffer.alloc(bytes, n).toString('base64');

describe('CallerAudioBuffer', () => {
  it('hands every frame back in arrival order and is empty afterwards', () => {
    const b = new CallerAudioBuffer(8000);
    for (let i = 0; i < 5; i++) expect(b.push(frame(i))).toBe(0);
    const out: string[] = [];
    b.drain((p) => out.push(p));
    expect(out).toEqual([0, 1, 2, 3, 4].map((i) => frame(i)));
    expect(b.length).toBe(0);
  });

  it('keeps the newest audio within its bound and says how many of the oldest frames it dropped', () => {
    const b = new CallerAudioBuffer(480); // 60 ms: three 20 ms frames
    expect([0, 1, 2].map((i) => b.push(frame(i)))).toEqual([0, 0, 0]);
    expect(b.push(frame(3))).toBe(1);
    expect(b.push(frame(4, 320))).toBe(2);
    const out: string[] = [];
    b.drain((p) => out.push(p));
    expect(out).toEqual([frame(3), frame(4, 320)]);
  });

  it('applies a new bound from the next frame, and clear() reports what it forgot', () => {
    const b = new CallerAudioBuffer(160 * 10);
    for (let i = 0; i < 6; i++) b.push(frame(i));
    b.setMaxBytes(160 * 2);
    expect(b.maxMs).toBe(40);
    expect(b.push(frame(6))).toBe(5);
    expect(b.clear()).toBe(2);
    expect(b.length).toBe(0);
  });
});
