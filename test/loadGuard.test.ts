import { afterEach, describe, expect, it } from 'vitest';
import { LoadGuard } from '../src/session/loadGuard.js';
import { SessionManager } from '../src/session/manager.js';

let guard: LoadGuard | undefined;
afterEach(() => guard?.dispose());

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
function blockFor(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    /* a stalled event loop */
  }
}

describe('admission control on event-loop delay', () => {
  it('reports overload while the event loop stalls beyond the limit, and recovers', async () => {
    guard = new LoadGuard(100, 150);
    await sleep(200);
    expect(guard.overloaded).toBe(false);
    for (let i = 0; i < 3; i++) {
      blockFor(180);
      await sleep(15);
    }
    expect(guard.delayP99Ms).toBeGreaterThan(100);
    expect(guard.overloaded).toBe(true);
    // Two quiet windows later the stall has aged out.
    await sleep(450);
    expect(guard.overloaded).toBe(false);
  });

  it('refuses new calls with reason overload and is not ready while overloaded', () => {
    let overloaded = true;
    const manager = new SessionManager({
      maxConcurrentCalls: 10,
      tokenTtlMs: 1000,
      defaultAgentId: 'a',
      routes: new Map(),
      overloaded: () => overloaded,
    });
    expect(manager.admit({ callSid: 'CA1', from: '', to: '', direction: 'inbound' })).toEqual({ ok: false, reason: 'overload' });
    expect(manager.ready).toBe(false);
    overloaded = false;
    expect(manager.admit({ callSid: 'CA2', from: '', to: '', direction: 'inbound' }).ok).toBe(true);
    expect(manager.ready).toBe(true);
    manager.dispose();
  });

  it('is off with a limit of 0', () => {
    guard = new LoadGuard(0);
    blockFor(50);
    expect(guard.overloaded).toBe(false);
  });
});
