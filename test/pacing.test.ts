/**
 * Dial pacing and the failure breaker, on a virtual clock.
 */
import { describe, expect, it } from 'vitest';
import { FailureBreaker, Pacer, type PacerTicket } from '../src/outbound/pacing.js';
import { Rng } from '../src/util/prng.js';

describe('Pacer', () => {
  it('spaces dials by 1000/rate ms when the carrier answers at once', () => {
    const p = new Pacer(5);
    let now = 0;
    const issued: number[] = [];
    while (issued.length < 20) {
      now = Math.max(now, p.nextAt());
      const t = p.take(now);
      t.answeredAt = now + 1;
      issued.push(now);
    }
    for (let i = 1; i < issued.length; i++) expect(issued[i]! - issued[i - 1]!).toBeGreaterThanOrEqual(200);
    expect(issued[19]! - issued[0]!).toBeLessThan(19 * 200 + 50);
  });

  it('never lets the carrier count rate+1 dials in one second, whatever the delay of each request', () => {
    const rng = new Rng(7);
    for (const rate of [1, 2, 5, 10]) {
      const p = new Pacer(rate);
      let now = 0;
      const arrivals: number[] = [];
      const pending: Array<{ ticket: PacerTicket; answerAt: number }> = [];
      while (arrivals.length < 300) {
        // Answers that are due by now come in.
        for (const x of pending) if (x.answerAt <= now) x.ticket.answeredAt ??= x.answerAt;
        const next = p.nextAt();
        if (next > now) {
          const due = pending.filter((x) => x.ticket.answeredAt === undefined).map((x) => x.answerAt);
          now = Math.min(Number.isFinite(next) ? next : Infinity, ...due.filter((d) => d > now), now + 50);
          continue;
        }
        const ticket = p.take(now);
        // Up to 300 ms between issuing and arrival, then up to 200 ms to the answer.
        const arrival = now + rng.next() * 300;
        arrivals.push(arrival);
        pending.push({ ticket, answerAt: arrival + rng.next() * 200 });
      }
      arrivals.sort((a, b) => a - b);
      for (let i = rate; i < arrivals.length; i++) expect(arrivals[i]! - arrivals[i - rate]!, `rate ${rate}`).toBeGreaterThanOrEqual(1000);
    }
  });

  it('waits while the dial rate places back is unanswered, and honours pauseUntil', () => {
    const p = new Pacer(2);
    const a = p.take(0);
    p.take(500);
    expect(p.nextAt()).toBe(Number.POSITIVE_INFINITY);
    a.answeredAt = 100;
    expect(p.nextAt()).toBe(1100);
    p.pauseUntil(5000);
    expect(p.nextAt()).toBe(5000);
  });
});

describe('FailureBreaker', () => {
  it('trips at the failure share once enough attempts are in the window, and forgets old ones', () => {
    const b = new FailureBreaker({ threshold: 0.5, minCalls: 4, windowSeconds: 60 });
    b.record(true, 0);
    b.record(true, 1000);
    b.record(false, 2000);
    expect(b.tripped(2000)).toBeUndefined();
    b.record(true, 3000);
    expect(b.tripped(3000)).toEqual({ failed: 3, total: 4 });
    expect(b.tripped(62_500)).toBeUndefined();
  });
});
