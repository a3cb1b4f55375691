import { describe, expect, it } from 'vitest';
import { PlaybackTracker } from '../src/session/playback.js';

describe('PlaybackTracker', () => {
  it('asks for a mark after every mark interval of audio, not per chunk', () => {
    const t = new PlaybackTracker(160); // 1280 bytes
    const marks: string[] = [];
    for (let i = 0; i < 50; i++) {
      const m = t.onAudioSent(160);
      if (m) marks.push(m);
    }
    expect(marks).toHaveLength(6);
    expect(t.hasUnmarkedAudio).toBe(true);
    const tail = t.flushMark();
    expect(tail).toBeDefined();
    expect(t.flushMark()).toBeUndefined();
    expect(new Set([...marks, tail]).size).toBe(7);
  });

  it('knows audio is queued until the last mark echoes', () => {
    const t = new PlaybackTracker(100);
    expect(t.queued).toBe(false);
    const a = t.onAudioSent(800)!;
    const b = t.onAudioSent(800)!;
    expect(t.queued).toBe(true);
    expect(t.onMarkEcho(a)).toBe('played');
    expect(t.queued).toBe(true);
    expect(t.onMarkEcho(b)).toBe('played');
    expect(t.queued).toBe(false);
    expect(t.playedBytes).toBe(1600);
  });

  it('treats echoes of a cleared generation as stale and unknown names as unknown', () => {
    const t = new PlaybackTracker(100);
    const a = t.onAudioSent(800)!;
    t.reset();
    expect(t.queued).toBe(false);
    expect(t.onMarkEcho(a)).toBe('stale');
    const b = t.onAudioSent(800)!;
    expect(t.onMarkEcho('someone-else')).toBe('unknown');
    expect(t.onMarkEcho('pl:99:1')).toBe('unknown');
    expect(t.queued).toBe(true);
    expect(t.onMarkEcho(b)).toBe('played');
  });

  it('tolerates a lost echo by advancing to the echoed mark', () => {
    const t = new PlaybackTracker(100);
    const names = [t.onAudioSent(800)!, t.onAudioSent(800)!, t.onAudioSent(800)!];
    expect(t.onMarkEcho(names[2]!)).toBe('played');
    expect(t.queued).toBe(false);
    expect(t.onMarkEcho(names[0]!)).toBe('unknown');
  });
});
