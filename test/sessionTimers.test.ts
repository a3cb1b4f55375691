/**
 * What time does to a call, on fake timers instead of real waits: the sweep
 * (idle streams, maximum length), the 4429 cooldown, the drain after an agent
 * hangup without mark echoes, and the session's timer table.
 * In process (see sessionHarness.ts).
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { Timers } from '../src/session/timers.js';
import { startHarness, type Harness } from './sessionHarness.js';

let h: Harness | undefined;
afterEach(() => {
  h?.dispose();
  h = undefined;
  vi.useRealTimers();
});

const ulaw = (bytes: number, fill = 0x55): string => Buffer.alloc(bytes, fill).toString('base64');

describe('limits and stuck calls', () => {
  it('ends a call whose stream sends no media for IDLE_TIMEOUT_S', async () => {
    vi.useFakeTimers();
    h = await startHarness({ IDLE_TIMEOUT_S: '1', SWEEP_INTERVAL_S: '1' });
    const call = h.openCall();
    vi.advanceTimersByTime(1000);
    expect(call.session.state).toBe('live');
    vi.advanceTimersByTime(2000);
    expect(call.agent.closedByUs).toBe(true);
    expect(call.ws.closed).toBe(true);
    expect(h.journal.get(call.callSid).endReason).toBe('idle');
    expect(h.manager.usedSlots).toBe(0);
  });

  it('ends a call that reaches MAX_CALL_DURATION_S with a goodbye', async () => {
    vi.useFakeTimers();
    h = await startHarness({ MAX_CALL_DURATION_S: '1', SWEEP_INTERVAL_S: '1' });
    const call = h.openCall();
    // The caller keeps talking (a frame every 20 ms): only the maximum length can end the call.
    for (let t = 0; t < 4000 && !call.ws.closed; t += 20) {
      call.ws.media();
      await vi.advanceTimersByTimeAsync(20);
    }
    expect(call.ws.closed).toBe(true);
    expect(h.callControl.spoken.map((s) => s.text)).toEqual([h.config.messages.goodbye]);
    expect(h.journal.get(call.callSid).endReason).toBe('max_duration');
    expect(h.manager.usedSlots).toBe(0);
  });
});

describe('PlayAI 4429 (account concurrency)', () => {
  it('lifts the learned limit after the cooldown', async () => {
    vi.useFakeTimers();
    h = await startHarness({ AGENT_CAPACITY_COOLDOWN_S: '1', STREAM_TOKEN_TTL_S: '1' });
    const a = h.openCall();
    const c = h.openCall({ init: false });
    c.agent.send({ type: 'error', code: 4429, message: 'full', isFatal: true });
    await vi.advanceTimersByTimeAsync(h.config.timeouts.callControlGraceMs);
    expect(c.ws.closed).toBe(true);
    const call = (n: number) => ({ callSid: `CA${'f'.repeat(31)}${n}`, from: '+15005550006', to: '+15550009999', direction: 'inbound' });
    expect(h.manager.admit(call(1))).toEqual({ ok: false, reason: 'agent_capacity' });
    vi.advanceTimersByTime(1100);
    expect(h.manager.admit(call(2))).toMatchObject({ ok: true });
    a.ws.deliver({ event: 'stop', streamSid: a.ws.streamSid });
    expect(a.session.state).toBe('closed');
  });
});

describe('ending the call', () => {
  it('without mark echoes, ends the call shortly after the queued audio should have played, well before the bound', async () => {
    vi.useFakeTimers();
    h = await startHarness({ HANGUP_DRAIN_TIMEOUT_MS: '20000' });
    const call = h.openCall();
    call.agent.send({ type: 'newAudioStream' });
    for (let i = 0; i < 5; i++) call.agent.audio(ulaw(800)); // 500 ms of audio
    expect(call.ws.mediaPayloads).toHaveLength(5);
    call.agent.send({ type: 'hangup', endedBy: 'agent' });
    expect(call.session.state).toBe('draining');
    vi.advanceTimersByTime(2000);
    expect(call.ws.closed).toBe(false);
    vi.advanceTimersByTime(2000);
    expect(call.ws.closed).toBe(true);
    expect(call.ws.closeCode).toBe(1000);
    expect(h.journal.get(call.callSid).endReason).toBe('agent_hangup');
  });
});

describe('the session timer table', () => {
  it('replaces a timer set again under the same name, clears one or all, and lets a callback set its own name again', () => {
    vi.useFakeTimers();
    const timers = new Timers<'a' | 'b'>();
    const fired: string[] = [];
    timers.set('a', 100, () => fired.push('a1'));
    timers.set('a', 200, () => fired.push('a2'));
    timers.set('b', 50, () => {
      fired.push('b');
      timers.set('b', 50, () => fired.push('b again'));
    });
    vi.advanceTimersByTime(150);
    expect(fired).toEqual(['b', 'b again']);
    expect(timers.has('a')).toBe(true);
    expect(timers.has('b')).toBe(false);
    timers.clear('a');
    vi.advanceTimersByTime(500);
    expect(fired).toEqual(['b', 'b again']);
    timers.set('a', 10, () => fired.push('late'));
    timers.set('b', 10, () => fired.push('late'));
    expect(timers.size).toBe(2);
    timers.clearAll();
    expect(vi.getTimerCount()).toBe(0);
    vi.advanceTimersByTime(100);
    expect(fired).toEqual(['b', 'b again']);
  });

  it('leaves no timer behind when a call is closed from any state', async () => {
    vi.useFakeTimers();
    h = await startHarness({ AUDIO_IN_BATCH_MS: '100' });
    const live = h.openCall();
    live.ws.media(); // batch timer
    live.agent.audio(ulaw(160)); // tail-mark timer
    const connecting = h.openCall({ init: false }); // init timer
    const reconnecting = h.openCall();
    reconnecting.agent.drop(); // retry timer
    const draining = h.openCall();
    draining.agent.audio(ulaw(800));
    draining.agent.send({ type: 'hangup', endedBy: 'agent' }); // drain timer
    expect(draining.session.state).toBe('draining');
    for (const c of [live, connecting, reconnecting, draining]) c.session.close('shutdown');
    h.manager.dispose();
    // Only the carrier legs' unref'd 2 s terminate fallbacks remain.
    expect(vi.getTimerCount()).toBe(4);
    vi.advanceTimersByTime(2000);
    expect(vi.getTimerCount()).toBe(0);
  });
});
