/**
 * End to end in local mode: the bridge as `npm start` runs it with no keys
 * (built-in local agent, unsigned loopback Twilio routes), driven by the
 * Twilio simulator exactly as `npm run call` drives it.
 */
import { Writable } from 'node:stream';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { createBridge, type Bridge } from '../src/app.js';
import { openDb } from '../src/store/db.js';
import { silence, speechLikeSignal } from '../src/audio/signal.js';
import { loadConfig } from '../src/config.js';
import { LocalAgentServer } from '../src/sim/localAgent.js';
import { placeCall, placeCalls } from '../src/sim/twilioSim.js';

let bridge: Bridge | undefined;
let agent: LocalAgentServer | undefined;
afterEach(async () => {
  await bridge?.app.close();
  await agent?.close();
  bridge = undefined;
  agent = undefined;
});

const quiet = pino({ level: 'silent' }, new Writable({ write: (_c, _e, cb) => cb() }));

async function startLocal(env: Record<string, string> = {}, greetingMs = 600): Promise<string> {
  const config = loadConfig({ PORT: '0', HOST: '127.0.0.1', MAX_EVENT_LOOP_DELAY_MS: '0', ...env });
  expect(config.localAgent).toBe(true);
  const greetingAudio = speechLikeSignal({ durationMs: greetingMs, talkMs: greetingMs, pauseMs: 0 });
  agent = await LocalAgentServer.start({ mode: config.localAgentOptions.mode, greetingAudio });
  bridge = await createBridge(config, quiet, { agentBaseUrl: agent.url, db: openDb(':memory:') });
  return bridge.app.listen({ port: 0, host: '127.0.0.1' });
}

const nonSilent = (b: Uint8Array) => b.reduce((n, x) => n + (x !== 0xff && x !== 0x7f ? 1 : 0), 0);

describe('local mode end to end', () => {
  it('greets the caller, then plays back what the caller said, with no protocol violations', async () => {
    const url = await startLocal();
    // 1.2 s of speech after 1 s of silence (so the greeting plays first), then silence to hear the echo.
    const speech = speechLikeSignal({ durationMs: 1200, talkMs: 1200, pauseMs: 0 });
    const audio = new Uint8Array([...silence(1000), ...speech]);
    const r = await placeCall({ bridgeUrl: url, audio, trailingMs: 3000 });
    expect(r.endedBy).toBe('caller');
    expect(r.protocolViolations).toEqual([]);
    expect(r.firstAgentAudioMs).toBeDefined();
    expect(r.firstAgentAudioMs!).toBeLessThan(1000);
    // Greeting (600 ms) + echo of 1.2 s of speech, give or take VAD edges.
    expect(r.bytesReceived).toBeGreaterThan(4800 + 8000);
    expect(nonSilent(r.heard)).toBeGreaterThan(8000);
    expect(r.marksReceived).toBeGreaterThan(0);
    expect(r.marksEchoed).toBe(r.marksReceived);
    expect(bridge!.manager.usedSlots).toBe(0);
  });

  it('interrupts the greeting when the caller talks over it (barge-in)', async () => {
    const url = await startLocal({}, 4000);
    const r = await placeCall({ bridgeUrl: url, audio: new Uint8Array([...silence(300), ...speechLikeSignal({ durationMs: 1000, talkMs: 1000, pauseMs: 0 })]), trailingMs: 1500 });
    expect(r.clears).toBeGreaterThanOrEqual(1);
    expect(r.protocolViolations).toEqual([]);
  });

  it('carries several concurrent calls and releases every slot', async () => {
    const url = await startLocal({ LOCAL_AGENT_MODE: 'echo' });
    const audio = speechLikeSignal({ durationMs: 2000 });
    const results = await placeCalls(8, () => ({ bridgeUrl: url, audio, trailingMs: 300, recordMessages: false }));
    for (const r of results) {
      expect(r.endedBy).toBe('caller');
      expect(r.protocolViolations).toEqual([]);
      // Echo mode returns every frame: all but the last few in flight come back.
      expect(r.mediaReceived).toBeGreaterThan(r.framesSent * 0.9);
    }
    expect(bridge!.manager.usedSlots).toBe(0);
  });
});

describe('local mode: a campaign against the simulated carrier and the local agent', () => {
  it('uploads a CSV, dials every contact through the simulated carrier, and finishes with one outcome per contact', async () => {
    const url = await startLocal({ LOCAL_CARRIER_TALK_S: '1', LOCAL_CARRIER_OUTCOMES: 'answered:60,busy:20,no-answer:10,failed:10' });
    const csv = ['phone,name', ...Array.from({ length: 12 }, (_, i) => `+1415555${String(2000 + i)},Person ${i}`)].join('\n');
    const form = new FormData();
    form.set('name', 'local demo');
    form.set('settings', JSON.stringify({ callsPerSecond: 10, maxConcurrent: 6, prompt: 'Say hello to {{name}}.', retry: { maxAttempts: 2, on: ['busy'], delaySeconds: 0 } }));
    form.set('start', 'true');
    form.set('file', new Blob([csv], { type: 'text/csv' }), 'contacts.csv');
    const res = await fetch(`${url}/v1/campaigns`, { method: 'POST', body: form });
    expect(res.status).toBe(201);
    const created = (await res.json()) as { campaign: { id: string }; import: { added: number; errors: unknown[] } };
    expect(created.import).toMatchObject({ added: 12, errors: [] });
    const id = created.campaign.id;
    const deadline = Date.now() + 40_000;
    let campaign: any;
    for (;;) {
      campaign = await (await fetch(`${url}/v1/campaigns/${id}`)).json();
      if (campaign.status === 'completed' || Date.now() > deadline) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    expect(campaign.status).toBe('completed');
    expect(campaign.progress.counts.total).toBe(12);
    expect(campaign.progress.counts.byState).toEqual({ pending: 0, dialing: 0, done: 12 });
    const contacts = ((await (await fetch(`${url}/v1/campaigns/${id}/contacts?limit=100`)).json()) as { data: any[] }).data;
    for (const c of contacts) {
      expect(['answered', 'busy', 'no-answer', 'failed']).toContain(c.outcome);
      expect(c.attempts).toBeGreaterThanOrEqual(1);
      expect(c.attempts).toBeLessThanOrEqual(c.outcome === 'busy' ? 2 : 2);
    }
    const calls = ((await (await fetch(`${url}/v1/calls?campaignId=${id}&limit=100`)).json()) as { data: any[] }).data;
    const answered = calls.filter((c) => c.outcome === 'answered');
    expect(answered.length).toBeGreaterThan(0);
    for (const c of answered) {
      expect(c.answeredAt).not.toBeNull();
      expect(c.durationSeconds).toBeGreaterThanOrEqual(1);
    }
    // Every slot came back.
    expect(bridge!.manager.usedSlots).toBe(0);
    expect(bridge!.outbound.stats.held).toBe(0);
  }, 60_000);
});
