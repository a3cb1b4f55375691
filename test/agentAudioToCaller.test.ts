/**
 * Agent audio on its way to the caller: bounded `media` messages, a bound on
 * what queues in a Twilio socket that stopped draining, and the barge-in
 * latency histogram. In process, on fake timers (see sessionHarness.ts).
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { CARRIER_STALL_MS, MAX_CARRIER_SOCKET_BUFFER, MAX_MEDIA_PAYLOAD_CHARS } from '../src/session/callSession.js';
import { startHarness, type Harness } from './sessionHarness.js';

let h: Harness | undefined;
afterEach(() => {
  h?.dispose();
  h = undefined;
  vi.useRealTimers();
});

const ulaw = (bytes: number, fill = 0x55): string => Buffer.alloc(bytes, fill).toString('base64');

describe('agent audio is sent to Twilio in bounded messages', () => {
  it('cuts a 1 MB audioStream into media messages of at most 1280 base64 characters that concatenate to the same audio, with a mark about every MARK_INTERVAL_MS', async () => {
    vi.useFakeTimers();
    h = await startHarness({ MARK_INTERVAL_MS: '160' });
    const call = h.openCall();
    const audio = Buffer.alloc(1024 * 1024);
    for (let i = 0; i < audio.length; i++) audio[i] = (i * 7) & 0xff;
    call.agent.send({ type: 'newAudioStream' });
    call.agent.audio(audio.toString('base64'));

    const payloads = call.ws.mediaPayloads;
    expect(payloads.length).toBe(Math.ceil(audio.toString('base64').length / MAX_MEDIA_PAYLOAD_CHARS));
    expect(Math.max(...payloads.map((p) => p.length))).toBeLessThanOrEqual(MAX_MEDIA_PAYLOAD_CHARS);
    expect(Buffer.concat(payloads.map((p) => Buffer.from(p, 'base64'))).equals(audio)).toBe(true);
    // Marks between the pieces: each covers at least MARK_INTERVAL_MS of audio and at most one piece more.
    const bytesPerMark = 160 * 8;
    let unmarked = 0;
    const covered: number[] = [];
    for (const m of call.ws.sent) {
      if (m.event === 'media') unmarked += Buffer.from(m.media.payload, 'base64').length;
      else if (m.event === 'mark') {
        covered.push(unmarked);
        unmarked = 0;
      }
    }
    expect(covered.length).toBeGreaterThan(audio.length / (bytesPerMark + 960) - 1);
    for (const bytes of covered) {
      expect(bytes).toBeGreaterThanOrEqual(bytesPerMark);
      expect(bytes).toBeLessThan(bytesPerMark + 960);
    }
    expect(call.ws.violations).toEqual([]);
  });

  it('sends agent chunks of 20 to 100 ms as one media message each, payload untouched', async () => {
    vi.useFakeTimers();
    h = await startHarness();
    const call = h.openCall();
    const chunks = [ulaw(160, 0x11), ulaw(480, 0x22), ulaw(800, 0x33), ulaw(960, 0x44)];
    for (const c of chunks) call.agent.audio(c);
    expect(call.ws.mediaPayloads).toEqual(chunks);
  });
});

describe('a Twilio socket that stops draining', () => {
  it('drops agent audio instead of queueing it, counts the drops, and ends the call (carrier_stalled) once stuck for CARRIER_STALL_MS', async () => {
    vi.useFakeTimers();
    h = await startHarness();
    const call = h.openCall();
    call.agent.audio(ulaw(800));
    expect(call.ws.mediaPayloads).toHaveLength(1);
    call.ws.bufferedAmount = MAX_CARRIER_SOCKET_BUFFER + 1;
    for (let i = 0; i < 10; i++) {
      call.agent.audio(ulaw(800));
      vi.advanceTimersByTime(100);
    }
    expect(call.ws.mediaPayloads).toHaveLength(1);
    expect(await h.metric('playline_agent_frames_dropped_total', 'reason="carrier_backpressure"')).toBe(10);
    expect(h.logs.lines.filter((l) => l.msg === 'Twilio socket is not draining; dropping agent audio')).toHaveLength(1);
    expect(call.session.state).toBe('live');
    vi.advanceTimersByTime(CARRIER_STALL_MS - 1000 - 1);
    expect(call.session.state).toBe('live');
    vi.advanceTimersByTime(1);
    expect(call.session.state).toBe('closed');
    expect(h.journal.get(call.callSid).endReason).toBe('carrier_stalled');
    expect(call.agent.isOpen).toBe(false);
    expect(call.ws.closed).toBe(true);
    expect(await h.metric('playline_calls_total', 'outcome="carrier_stalled"')).toBe(1);
  });

  it('keeps the call and sends agent audio again once the socket drains', async () => {
    vi.useFakeTimers();
    h = await startHarness();
    const call = h.openCall();
    call.ws.bufferedAmount = MAX_CARRIER_SOCKET_BUFFER + 1;
    call.agent.audio(ulaw(800, 0x11));
    vi.advanceTimersByTime(CARRIER_STALL_MS / 2);
    call.ws.bufferedAmount = 0;
    call.agent.audio(ulaw(800, 0x22));
    vi.advanceTimersByTime(CARRIER_STALL_MS + 1000); // past the stall timer of the first drop (and short of IDLE_TIMEOUT_S)
    expect(call.session.state).toBe('live');
    expect(call.ws.mediaPayloads).toEqual([ulaw(800, 0x22)]);
  });
});

describe('barge-in latency', () => {
  it('times a barge-in from voiceActivityStart to the echo of the first mark the clear flushed', async () => {
    vi.useFakeTimers();
    h = await startHarness();
    const call = h.openCall();
    call.agent.send({ type: 'newAudioStream' });
    for (let i = 0; i < 10; i++) call.agent.audio(ulaw(800)); // 1 s queued at Twilio, 6 marks
    expect(call.ws.marks.length).toBeGreaterThan(0);
    call.agent.send({ type: 'voiceActivityStart' });
    expect(call.ws.clears).toBe(1);
    expect(await h.metric('playline_barge_in_clear_seconds_count')).toBe(0);
    vi.advanceTimersByTime(150);
    call.ws.echoMarks(); // what Twilio does once the clear has emptied its buffer
    expect(await h.metric('playline_barge_in_clear_seconds_count')).toBe(1);
    expect(await h.metric('playline_barge_in_clear_seconds_sum')).toBeCloseTo(0.15, 2);
    expect(await h.metric('playline_barge_ins_total')).toBe(1);
  });

  it('does not time a barge-in whose clear flushed no mark', async () => {
    vi.useFakeTimers();
    h = await startHarness();
    const call = h.openCall();
    call.agent.audio(ulaw(160)); // 20 ms, not marked yet
    expect(call.ws.marks).toHaveLength(0);
    call.agent.send({ type: 'voiceActivityStart' });
    expect(call.ws.clears).toBe(1);
    vi.advanceTimersByTime(1000);
    call.ws.echoMarks();
    expect(await h.metric('playline_barge_ins_total')).toBe(1);
    expect(await h.metric('playline_barge_in_clear_seconds_count')).toBe(0);
  });
});
