/**
 * `npm run watch` driven in-process (`run(args, io)`) against a real bridge:
 * readable lines, campaign progress as a redrawn line on a terminal and plain
 * lines elsewhere, resuming with Last-Event-ID after a dropped connection,
 * and a refused token.
 */
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { createBridge, type Bridge } from '../src/app.js';
import { run } from '../src/cli/watch.js';
import { loadConfig } from '../src/config.js';
import { openDb } from '../src/store/db.js';
import { memIo } from './cliIo.js';

let bridge: Bridge | undefined;
afterEach(async () => {
  await bridge?.app.close();
  bridge = undefined;
});

const quiet = pino({ level: 'silent' }, new Writable({ write: (_c, _e, cb) => cb() }));

async function start(env: Record<string, string> = {}): Promise<string> {
  const config = loadConfig({ PORT: '0', HOST: '127.0.0.1', MAX_EVENT_LOOP_DELAY_MS: '0', ...env });
  bridge = await createBridge(config, quiet, { db: openDb(':memory:'), probeAgents: false });
  return bridge.app.listen({ port: 0, host: '127.0.0.1' });
}

async function until(check: () => boolean, what: () => string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting; so far:\n${what()}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

const call = { id: 'call_1', direction: 'inbound', from: '+14155550100', to: '+14155550199', agentId: 'local:echo', status: 'completed', outcome: 'answered', endReason: 'caller_hangup', durationSeconds: 65 };
const progress = (done: number, status = 'running') => ({ status, counts: { total: 4, byState: { pending: 4 - done, dialing: 0, done }, byOutcome: { answered: done } }, activeCalls: 1, etaSeconds: 30 });

describe('npm run watch', () => {
  it('prints calls, transcripts and barge-ins as lines, and campaign progress as plain lines when not a terminal', async () => {
    const url = await start();
    const m = memIo();
    const done = run(['--url', url], m.io);
    await until(() => bridge!.events.subscriberCount === 1, () => m.err.text);
    const bus = bridge!.events;
    bus.publish({ type: 'call.started', callId: 'call_1', data: { call: { ...call, status: 'in-progress' } } });
    bus.publish({ type: 'call.updated', callId: 'call_1', data: { change: 'barge_in', bargeIns: 2 } });
    bus.publish({ type: 'call.transcript', callId: 'call_1', data: { role: 'user', text: 'hello there' } });
    bus.publish({ type: 'call.ended', callId: 'call_1', data: { call } });
    bus.publish({ type: 'campaign.progress', campaignId: 'cmp_1', data: progress(2) });
    bus.publish({ type: 'campaign.completed', campaignId: 'cmp_1', data: { status: 'completed', counts: progress(4).counts } });
    await until(() => m.out.text.includes('campaign cmp_1 completed'), () => m.out.text);
    m.sigint();
    expect(await done).toBe(0);
    const lines = m.out.text.trim().split('\n');
    expect(lines).toHaveLength(6);
    expect(lines[0]).toMatch(/▶ call_1 inbound \+14155550100 → \+14155550199 · local:echo/);
    expect(lines[1]).toMatch(/call_1 barge-in #2/);
    expect(lines[2]).toMatch(/call_1 user\s+hello there/);
    expect(lines[3]).toMatch(/■ call_1 ended · completed · answered · caller_hangup · 1m05s/);
    expect(lines[4]).toMatch(/campaign cmp_1 running 50% 2\/4 done · 1 live · ETA 30 s/);
    expect(lines[5]).toMatch(/campaign cmp_1 completed: 4 contact\(s\), 4 answered/);
    expect(m.out.text).not.toContain('\x1b');
  });

  it('redraws campaign progress in place with a bar on a terminal, keeping other lines above it', async () => {
    const url = await start();
    const m = memIo({ tty: true, env: { NO_COLOR: '1' } });
    const done = run(['--url', url], m.io);
    await until(() => bridge!.events.subscriberCount === 1, () => m.err.text);
    const bus = bridge!.events;
    bus.publish({ type: 'campaign.progress', campaignId: 'cmp_1', data: progress(1) });
    bus.publish({ type: 'call.started', callId: 'call_2', campaignId: 'cmp_1', data: { call: { ...call, id: 'call_2', direction: 'outbound' } } });
    bus.publish({ type: 'campaign.progress', campaignId: 'cmp_1', data: progress(2) });
    await until(() => m.out.text.includes('50%'), () => m.out.text);
    m.sigint();
    expect(await done).toBe(0);
    expect(m.out.text).toContain('\r\x1b[2Kcampaign cmp_1 running [█████░░░░░░░░░░░░░░░]  25% 1/4 · 1 live · ETA 30 s');
    // The call line is printed over the progress line, which is drawn again below it.
    expect(m.out.text).toMatch(/\r\x1b\[2K\S+ ▶ call_2 outbound [^\n]*\ncampaign cmp_1 running \[█████░+\]  25%/);
    expect(m.out.text).toContain('\r\x1b[2Kcampaign cmp_1 running [██████████░░░░░░░░░░]  50% 2/4');
  });

  it('reconnects after a dropped connection with Last-Event-ID and shows what it missed once, in order', async () => {
    const url = await start();
    const seenIds: Array<string | null> = [];
    const drops: AbortController[] = [];
    let release: () => void = () => {};
    const gate = new Promise<void>((r) => (release = r));
    const fetchImpl: typeof fetch = async (input, init) => {
      seenIds.push(new Headers(init?.headers).get('last-event-id'));
      // The second connection waits until the test has published while nobody listened.
      if (seenIds.length === 2) await gate;
      const ac = new AbortController();
      init?.signal?.addEventListener('abort', () => ac.abort(), { once: true });
      drops.push(ac);
      return fetch(input, { ...init, signal: ac.signal });
    };
    const m = memIo({ fetch: fetchImpl, sleep: (_ms, signal) => new Promise((r, j) => { const t = setTimeout(r, 5); signal?.addEventListener('abort', () => { clearTimeout(t); j(new Error('aborted')); }, { once: true }); }) });
    const done = run(['--url', url, '--types', 'call.transcript'], m.io);
    await until(() => bridge!.events.subscriberCount === 1, () => m.err.text);
    const bus = bridge!.events;
    const say = (n: number) => bus.publish({ type: 'call.transcript', callId: 'call_1', data: { role: 'agent', text: `turn ${n}` } });
    say(1);
    say(2);
    await until(() => m.out.text.includes('turn 2'), () => m.out.text);
    drops[0]!.abort();
    await until(() => seenIds.length === 2 && bridge!.events.subscriberCount === 0, () => m.err.text);
    say(3);
    say(4);
    release();
    await until(() => m.out.text.includes('turn 4'), () => m.out.text + m.err.text);
    say(5);
    await until(() => m.out.text.includes('turn 5'), () => m.out.text);
    m.sigint();
    expect(await done).toBe(0);
    expect([...m.out.text.matchAll(/turn (\d)/g)].map((x) => x[1])).toEqual(['1', '2', '3', '4', '5']);
    expect(seenIds[0]).toBeNull();
    expect(seenIds[1]).toMatch(/-2$/);
    expect(m.err.text).toMatch(/connection to .* lost .*reconnecting/);
  });

  it('exits 1 naming the fix when the token is missing or wrong, and 2 for an unknown event type', async () => {
    const url = await start({ API_TOKEN: 'watch-test-token-0123456789' });
    const none = memIo();
    expect(await run(['--url', url], none.io)).toBe(1);
    expect(none.err.text).toMatch(/HTTP 401 unauthorized.*set API_TOKEN or pass --token/);
    const wrong = memIo();
    expect(await run(['--url', url, '--token', 'nope-nope-nope-nope'], wrong.io)).toBe(1);
    expect(wrong.err.text).toMatch(/check --token/);
    const bad = memIo();
    expect(await run(['--types', 'call.begun'], bad.io)).toBe(2);
    expect(bad.err.text).toMatch(/--types: unknown event type "call.begun"; use .*call\.started/);
    const help = memIo();
    expect(await run(['--help'], help.io)).toBe(0);
    expect(help.out.text).toMatch(/Usage: npm run watch/);
  });
});
