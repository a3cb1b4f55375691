/**
 * The agent reconnect budget: per outage (attempts, window), outages that end
 * only once a leg has stayed up AGENT_STABLE_MS, and a cap per call. In
 * process, on fake timers (see sessionHarness.ts).
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import { backoffMs, nextRetry, outageAfterLoss, type ReconnectPolicy } from '../src/session/reconnect.js';
import { startHarness, type Harness, type HarnessCall } from './sessionHarness.js';

let h: Harness | undefined;
afterEach(() => {
  h?.dispose();
  h = undefined;
  vi.useRealTimers();
});

/** Advances time in small steps until the call opens another agent leg or stops reconnecting. */
function untilNextLeg(call: HarnessCall, maxMs = 20_000): void {
  const n = call.legs.length;
  for (let t = 0; t < maxMs && call.legs.length === n; t += 10) {
    const st = call.session.state;
    if (st !== 'connecting' && st !== 'reconnecting') return;
    vi.advanceTimersByTime(10);
  }
}

describe('reconnect budget (pure)', () => {
  const policy: ReconnectPolicy = { attempts: 3, windowMs: 10_000, stableMs: 5000, maxPerCall: 10 };

  it('backs off 100 ms, 400 ms, 1 s, 2 s, then 3 s, each within ±25 %', () => {
    expect([0, 1, 2, 3, 4, 9].map((n) => backoffMs(n, 0.5))).toEqual([100, 400, 1000, 2000, 3000, 3000]);
    expect(backoffMs(0, 0)).toBe(75);
    expect(backoffMs(0, 0.999_999)).toBeCloseTo(125, 3);
  });

  it('retries while the outage has attempts and window left and the call is under its cap', () => {
    const outage = { startedAt: 0, attempts: 0 };
    expect(nextRetry(policy, outage, 0, 0, 0.5)).toEqual({ retry: true, delayMs: 100 });
    expect(nextRetry(policy, { startedAt: 0, attempts: 3 }, 3, 0, 0.5)).toEqual({ retry: false, spent: 'attempts' });
    expect(nextRetry(policy, { startedAt: 0, attempts: 2 }, 2, 9_500, 0.5)).toEqual({ retry: false, spent: 'window' });
    expect(nextRetry(policy, outage, 10, 0, 0.5)).toEqual({ retry: false, spent: 'per_call' });
  });

  it('continues the outage an init ended when the leg is lost within AGENT_STABLE_MS, and starts a new one after', () => {
    const ended = { startedAt: 100, attempts: 2 };
    expect(outageAfterLoss(policy, ended, 1000, 5999)).toBe(ended);
    expect(outageAfterLoss(policy, ended, 1000, 6000)).toEqual({ startedAt: 6000, attempts: 0 });
    expect(outageAfterLoss({ ...policy, stableMs: 0 }, ended, 1000, 1000)).toEqual({ startedAt: 1000, attempts: 0 });
  });
});

describe('a flapping agent', () => {
  it('ends a call whose agent drops right after every init with an apology after at most AGENT_RECONNECT_ATTEMPTS reconnects within AGENT_RECONNECT_WINDOW_MS, not a loop', async () => {
    vi.useFakeTimers();
    h = await startHarness({ AGENT_RECONNECT_ATTEMPTS: '3', AGENT_RECONNECT_WINDOW_MS: '10000', AGENT_STABLE_MS: '5000', MAX_CALL_DURATION_S: '3600' });
    const call = h.openCall();
    const t0 = performance.now();
    for (let i = 0; i < 100 && call.session.state !== 'ending' && call.session.state !== 'closed'; i++) {
      call.agent.drop();
      untilNextLeg(call);
      if (call.session.state === 'reconnecting') call.agent.init(); // up again… and down at once on the next turn
    }
    expect(call.session.state).toBe('ending');
    expect(performance.now() - t0).toBeLessThanOrEqual(10_000);
    expect(call.legs.length - 1).toBeLessThanOrEqual(3);
    expect(h.callControl.spoken).toEqual([{ callSid: call.callSid, text: h.config.messages.apology }]);
    await vi.advanceTimersByTimeAsync(h.config.timeouts.callControlGraceMs);
    expect(call.session.state).toBe('closed');
    expect(h.journal.get(call.callSid).endReason).toBe('agent_unreachable');
    expect(h.journal.get(call.callSid).agentReconnects).toBeLessThanOrEqual(3);
    expect(call.legs.every((l) => !l.isOpen)).toBe(true);
  });

  it('counts a leg lost within AGENT_STABLE_MS of its init against the same outage, and gives a leg that stayed up a fresh budget', async () => {
    vi.useFakeTimers();
    h = await startHarness({ AGENT_RECONNECT_ATTEMPTS: '1', AGENT_STABLE_MS: '1000' });
    const stable = h.openCall();
    stable.agent.drop();
    untilNextLeg(stable);
    stable.agent.init();
    vi.advanceTimersByTime(1000); // up for AGENT_STABLE_MS: that outage is over
    stable.agent.drop();
    expect(stable.session.state).toBe('reconnecting');
    untilNextLeg(stable);
    expect(stable.legs).toHaveLength(3);

    const flapping = h.openCall();
    flapping.agent.drop();
    untilNextLeg(flapping);
    flapping.agent.init();
    vi.advanceTimersByTime(999);
    flapping.agent.drop(); // the outage's one attempt is spent
    expect(flapping.session.state).toBe('ending');
    expect(flapping.legs).toHaveLength(2);
    expect(h.callControl.spoken.map((s) => s.callSid)).toEqual([flapping.callSid]);
  });

  it('ends the call with an apology once AGENT_MAX_RECONNECTS_PER_CALL reconnects are spent, though every outage is a new one with a fresh budget', async () => {
    vi.useFakeTimers();
    h = await startHarness({ AGENT_MAX_RECONNECTS_PER_CALL: '4', AGENT_STABLE_MS: '1000', AGENT_RECONNECT_ATTEMPTS: '5' });
    const call = h.openCall();
    const state = (): string => call.session.state;
    for (let i = 0; i < 20 && state() === 'live'; i++) {
      vi.advanceTimersByTime(1500); // long enough to count as stable: each drop is a new outage
      call.agent.drop();
      untilNextLeg(call);
      if (state() === 'reconnecting') call.agent.init();
    }
    expect(call.session.state).toBe('ending');
    expect(call.legs).toHaveLength(1 + 4);
    expect(h.journal.get(call.callSid).spoken).toEqual([h.config.messages.apology]);
    const spent = h.logs.lines.find((l) => l.msg === 'agent leg lost; reconnect budget spent');
    expect(spent).toMatchObject({ spent: 'per_call', callRetries: 4, level: 50 });
  });
});
