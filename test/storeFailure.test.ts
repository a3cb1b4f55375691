/**
 * A failing database (disk full) through the bridge's HTTP and media paths:
 * calls keep being answered and carried, failures are counted in
 * `playline_store_errors_total` and logged with the fix, and nothing answers 500.
 */
import twilio from 'twilio';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { FakeTwilioStream, newCallSid, postStatusCallback, postVoiceWebhook } from '../src/sim/twilioSim.js';
import { FakeDialer } from '../src/testing/fakeDialer.js';
import { AUTH_TOKEN, eventually, PUBLIC_URL, startTestBridge, STREAM_URL, type TestBridge } from './helpers.js';

let tb: TestBridge | undefined;
afterEach(async () => {
  vi.restoreAllMocks();
  await tb?.close();
  tb = undefined;
});

const diskFull = (): Error => Object.assign(new Error('database or disk is full'), { code: 'SQLITE_FULL' });

async function metrics(t: TestBridge): Promise<string> {
  return (await fetch(`${t.url}/metrics`)).text();
}

describe('a full disk', () => {
  it('still answers and carries an inbound call, counts the failed writes, and logs the fix once', async () => {
    tb = await startTestBridge();
    const calls = tb.bridge.calls;
    vi.spyOn(calls, 'insert').mockImplementation(() => {
      throw diskFull();
    });
    const callSid = newCallSid();
    const hook = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { CallSid: callSid } });
    expect(hook.status).toBe(200);
    expect(hook.twiml?.streamUrl).toBe(STREAM_URL);
    const stream = await FakeTwilioStream.connect({ bridgeUrl: tb.url, streamUrl: STREAM_URL, authToken: AUTH_TOKEN });
    stream.sendStart({ callSid, customParameters: hook.twiml?.parameters ?? {} });
    const agent = await tb.agent.nextConnection();
    await agent.waitForSetup();
    agent.init();
    const status = await postStatusCallback({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { CallSid: callSid, CallStatus: 'completed', SequenceNumber: '3' } });
    expect(status.status).toBe(204);
    await stream.waitForClose(2000);
    expect(await metrics(tb)).toMatch(/playline_store_errors_total\{op="inbound_admitted",code="SQLITE_FULL"\} 1/);
    const hints = tb.logs.lines.filter((l) => typeof l.msg === 'string' && l.msg.includes('the disk is full'));
    expect(hints.length).toBe(1);
    const bridge = tb.bridge;
    await eventually(() => bridge.manager.usedSlots === 0, 2000, 'slot released');
  });

  it('answers an outbound call whose record cannot be read with an apology, not a 500', async () => {
    const dialer = new FakeDialer();
    tb = await startTestBridge({ env: { OUTBOUND_MAX_CPS: '50' }, overrides: { dialer } });
    const created = await tb.bridge.app.inject({ method: 'POST', url: '/v1/calls', headers: { 'content-type': 'application/json' }, payload: JSON.stringify({ to: '+14155550123' }) });
    const id = (JSON.parse(created.body) as { id: string }).id;
    await eventually(() => dialer.created.length === 1, 3000, 'the dial');
    const sid = dialer.created[0]!.sid;
    vi.spyOn(tb.bridge.calls, 'get').mockImplementation(() => {
      throw diskFull();
    });
    const params = { CallSid: sid, From: '+12025550100', To: '+14155550123', Direction: 'outbound-api' };
    const path = `/twilio/voice?callId=${id}`;
    const res = await tb.bridge.app.inject({
      method: 'POST',
      url: path,
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-twilio-signature': twilio.getExpectedTwilioSignature(AUTH_TOKEN, PUBLIC_URL + path, params) },
      payload: new URLSearchParams(params).toString(),
    });
    expect(res.statusCode).toBe(200);
    expect(res.body).toContain('<Say');
    expect(res.body).toContain(tb.config.messages.apology);
    expect(res.body).toContain('<Hangup');
    expect(await metrics(tb)).toMatch(/playline_store_errors_total\{op="answer",code="SQLITE_FULL"\} 1/);
  });
});
