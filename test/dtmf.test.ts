import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { DtmfGatherer, dtmfMessage, type DtmfOutcome, type DtmfTimer } from '../src/session/dtmf.js';

/** A timer slot like the session's timer table gives: one timeout, replaced on each set. */
function timerSlot(): DtmfTimer & { active: () => boolean } {
  let t: NodeJS.Timeout | undefined;
  return {
    set(ms, fn) {
      if (t !== undefined) clearTimeout(t);
      t = setTimeout(() => {
        t = undefined;
        fn();
      }, ms);
    },
    clear() {
      if (t !== undefined) clearTimeout(t);
      t = undefined;
    },
    active: () => t !== undefined,
  };
}

describe('DtmfGatherer', () => {
  beforeEach(() => vi.useFakeTimers());
  afterEach(() => vi.useRealTimers());

  const make = (opts: { hotkeys?: Map<string, string>; gatherMs?: number; maxDigits?: number } = {}) => {
    const out: DtmfOutcome<string>[] = [];
    const timer = timerSlot();
    const g = new DtmfGatherer<string>({ ...opts, timer, emit: (o) => out.push(o) });
    return { g, out, timer };
  };

  it('hands "1234#" on as one message when # is pressed, without waiting for the pause', () => {
    const { g, out, timer } = make();
    for (const d of '1234#') g.push(d);
    expect(out).toEqual([{ kind: 'digits', digits: '1234#', ended: 'terminator' }]);
    expect(timer.active()).toBe(false);
  });

  it('hands digits on after a 1.5 s pause, and not before', () => {
    const { g, out } = make();
    g.push('4');
    vi.advanceTimersByTime(1000);
    g.push('2');
    vi.advanceTimersByTime(1499);
    expect(out).toEqual([]);
    vi.advanceTimersByTime(1);
    expect(out).toEqual([{ kind: 'digits', digits: '42', ended: 'pause' }]);
  });

  it('honours a configured pause length', () => {
    const { g, out } = make({ gatherMs: 300 });
    g.push('7');
    vi.advanceTimersByTime(300);
    expect(out).toEqual([{ kind: 'digits', digits: '7', ended: 'pause' }]);
  });

  it('hands a run on when it reaches the maximum length', () => {
    const { g, out } = make({ maxDigits: 4 });
    for (const d of '123456') g.push(d);
    expect(out[0]).toEqual({ kind: 'digits', digits: '1234', ended: 'max_digits' });
    expect(g.pending).toBe('56');
  });

  it('fires a hotkey at once when nothing is being gathered', () => {
    const { g, out } = make({ hotkeys: new Map([['0', 'frontdesk']]) });
    g.push('0');
    expect(out).toEqual([{ kind: 'hotkey', key: '0', action: 'frontdesk' }]);
    expect(g.pending).toBe('');
  });

  it('treats a hotkey pressed in the middle of a number as a digit of that number', () => {
    const { g, out } = make({ hotkeys: new Map([['0', 'frontdesk']]) });
    for (const d of '102#') g.push(d);
    expect(out).toEqual([{ kind: 'digits', digits: '102#', ended: 'terminator' }]);
  });

  it('ignores anything that is not a keypad key', () => {
    const { g, out } = make();
    expect(g.push('x')).toBe(false);
    expect(g.push('12')).toBe(false);
    expect(g.push('')).toBe(false);
    expect(out).toEqual([]);
    expect(g.pending).toBe('');
  });

  it('flush hands on what is gathered; close drops it, stops the timer and ignores later keys', () => {
    const { g, out, timer } = make();
    g.push('9');
    g.flush();
    expect(out).toEqual([{ kind: 'digits', digits: '9', ended: 'flush' }]);
    g.push('8');
    g.close();
    expect(timer.active()).toBe(false);
    expect(g.push('1')).toBe(false);
    vi.advanceTimersByTime(5000);
    expect(out).toHaveLength(1);
  });

  it('words the agent message with the digits as typed', () => {
    expect(dtmfMessage('1234#')).toBe('The caller typed "1234#" on the phone keypad.');
  });
});
