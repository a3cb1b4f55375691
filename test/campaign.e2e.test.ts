/**
 * A whole campaign through the real `twilio` client: the bridge's TwilioDialer
 * talks to a fake Twilio REST API (TWILIO_API_URL), which plays every call
 * against the bridge like Twilio (signed TwiML fetch, media stream, status
 * callbacks). 100 contacts at 10 calls per second and 20 at once, random
 * outcomes, retries: every contact ends in exactly one terminal state, within
 * the retry policy, paced and capped at the carrier's side.
 */
import { afterEach, describe, expect, it } from 'vitest';
import { TwilioDialer } from '../src/outbound/twilioDialer.js';
import { FakeTwilioRest } from '../src/testing/fakeTwilioRest.js';
import { AUTH_TOKEN, PUBLIC_URL, startTestBridge, type TestBridge } from './helpers.js';

let tb: TestBridge | undefined;
let rest: FakeTwilioRest | undefined;
afterEach(async () => {
  await tb?.close();
  await rest?.close();
  tb = undefined;
  rest = undefined;
});

const RETRY_ON = ['busy', 'no-answer'];

describe('a 100-contact campaign through the Twilio REST API', () => {
  it('paces at 10 dials/s, keeps 20 at once, and settles every contact once within the retry policy', async () => {
    rest = await FakeTwilioRest.start({
      bridgeUrl: 'http://127.0.0.1:1',
      publicUrl: PUBLIC_URL,
      authToken: AUTH_TOKEN,
      outcomes: { answered: 60, busy: 15, 'no-answer': 10, failed: 10, voicemail: 5 },
      seed: 20261121,
      talkMs: 2000,
      ringMs: [100, 600],
      timing: { noAnswerMaxMs: 1000 },
    });
    tb = await startTestBridge({
      env: { OUTBOUND_MAX_CPS: '10', MAX_CONCURRENT_CALLS: '100', LOG_LEVEL: 'info' },
      agent: { autoInit: true },
      overrides: { dialer: new TwilioDialer({ accountSid: rest.accountSid, authToken: AUTH_TOKEN, apiUrl: rest.url }) },
    });
    rest.setBridgeUrl(tb.url);
    const contacts = Array.from({ length: 100 }, (_, i) => ({ phone: `+1415555${String(i).padStart(4, '0')}`, variables: { name: `Contact ${i}` } }));
    const t0 = Date.now();
    const res = await tb.bridge.app.inject({
      method: 'POST',
      url: '/v1/campaigns',
      headers: { 'content-type': 'application/json' },
      payload: JSON.stringify({
        name: 'e2e',
        settings: { callsPerSecond: 10, maxConcurrent: 20, prompt: 'Talk to {{name}}.', retry: { maxAttempts: 2, on: RETRY_ON, delaySeconds: 1 } },
        contacts,
        start: true,
      }),
    });
    expect(res.statusCode, res.body).toBe(201);
    const id = (JSON.parse(res.body) as { campaign: { id: string } }).campaign.id;

    const deadline = Date.now() + 90_000;
    while ((await tb.bridge.campaigns.get(id))?.status === 'running' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 250));
    const elapsedS = (Date.now() - t0) / 1000;
    expect((await tb.bridge.campaigns.get(id))?.status).toBe('completed');

    // Every contact in exactly one terminal state.
    const all = await tb.bridge.campaigns.contacts(id, { limit: 1000 });
    expect(all).toHaveLength(100);
    for (const c of all) {
      expect(c.state).toBe('done');
      expect(['answered', 'voicemail', 'busy', 'no-answer', 'failed']).toContain(c.outcome);
    }
    // Attempts within the policy, and the carrier saw exactly those dials.
    const created = rest.creates.filter((c) => c.httpStatus === 201);
    const dialsTo = new Map<string, number>();
    for (const c of created) dialsTo.set(c.to, (dialsTo.get(c.to) ?? 0) + 1);
    const calls = await tb.bridge.calls.list({ campaignId: id, limit: 10_000 });
    for (const c of all) {
      expect(c.attempts).toBeGreaterThanOrEqual(1);
      expect(c.attempts).toBeLessThanOrEqual(2);
      expect(dialsTo.get(c.phone), c.phone).toBe(c.attempts);
      const attempts = calls.filter((r) => r.contactId === c.id).sort((a, b) => (a.attempt ?? 0) - (b.attempt ?? 0));
      expect(attempts).toHaveLength(c.attempts);
      // Only a retryable outcome earned another attempt; the last attempt's outcome is the contact's.
      for (const a of attempts.slice(0, -1)) expect(RETRY_ON).toContain(a.outcome);
      expect(attempts[attempts.length - 1]!.outcome).toBe(c.outcome);
      for (const a of attempts) expect(a.finalizedAt).not.toBeNull();
    }
    // Pacing and concurrency, measured at the carrier.
    const maxPerSecond = rest.maxCreatesInWindow(1000);
    if (maxPerSecond > 10) {
      const times = created.map((c) => c.at);
      for (let i = 10; i < times.length; i++) if (times[i]! - times[i - 10]! < 1000) process.stdout.write(`burst: ${times.slice(i - 10, i + 1).map((t) => t - times[i - 10]!).join(',')}\n`);
    }
    expect(maxPerSecond).toBeLessThanOrEqual(10);
    expect(rest.maxLive).toBeLessThanOrEqual(20);
    // Every answered call was routed as the outbound call it is (by the callId on its URLs).
    expect(await tb.bridge.calls.list({ direction: 'inbound', limit: 10 })).toEqual([]);
    // Accounting: nothing held, nothing live.
    expect(tb.bridge.manager.usedSlots).toBe(0);
    expect(tb.bridge.outbound.stats.held).toBe(0);
    expect(tb.bridge.manager.liveCalls).toBe(0);

    const outcomes: Record<string, number> = {};
    for (const c of all) outcomes[c.outcome ?? '?'] = (outcomes[c.outcome ?? '?'] ?? 0) + 1;
    const summary = {
      contacts: all.length,
      dials: created.length,
      seconds: Math.round(elapsedS * 10) / 10,
      dialsPerSecond: Math.round((created.length / elapsedS) * 100) / 100,
      maxDialsInAnySecond: maxPerSecond,
      maxLiveAtCarrier: rest.maxLive,
      outcomes,
    };
    process.stdout.write(`campaign e2e: ${JSON.stringify(summary)}\n`);
    // The cap was reached (so the test shows it holds).
    expect(rest.maxLive).toBeGreaterThanOrEqual(18);
  }, 120_000);
});
