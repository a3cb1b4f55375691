/**
 * Calls that survive: agent reconnect with continueConversation, PlayAI 4429,
 * per-agent limits, stuck-call reaping and graceful drain. (What only time
 * decides, the idle and maximum-length sweeps and the 4429 cooldown, is pinned
 * on fake timers in sessionTimers.test.ts.)
 */
import { afterEach, describe, expect, it } from 'vitest';
import { postVoiceWebhook } from '../src/sim/twilioSim.js';
import { AUTH_TOKEN, eventually, numberedFrames, openCall, PUBLIC_URL, startTestBridge, storedCall, ulaw, type TestBridge } from './helpers.js';

let tb: TestBridge | undefined;
afterEach(async () => {
  if (tb) {
    await eventually(() => tb!.bridge.manager.usedSlots === 0, 5000, 'slots released');
    await tb.close();
  }
  tb = undefined;
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const metricsText = async (t: TestBridge) => (await fetch(`${t.url}/metrics`)).text();
const webhook = (t: TestBridge, params: Record<string, string> = {}) =>
  postVoiceWebhook({ bridgeUrl: t.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params });

describe('agent reconnect', () => {
  it('reconnects with continueConversation after the agent socket drops, and delivers the caller audio of the gap in order', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    const firstConversation = call.agent.conversationId;
    const frames = numberedFrames(30);
    for (const f of frames.slice(0, 10)) call.stream.sendMedia(f);
    await call.agent.waitForAudioIn(10);
    call.agent.terminate();
    await call.agent.closed;
    await eventually(() => (tb!.bridge.manager.getSession(call.callSid) as unknown as { state: string }).state === 'reconnecting');
    // The caller keeps talking during the outage.
    for (const f of frames.slice(10, 20)) call.stream.sendMedia(f);
    const second = await tb.agent.nextConnection(3000);
    const setup = await second.waitForSetup();
    expect(setup.continueConversation).toBe(firstConversation);
    expect(setup.apiKey).toBe('test-playai-key');
    expect(call.stream.closed).toBe(false);
    for (const f of frames.slice(20, 25)) call.stream.sendMedia(f);
    second.init(firstConversation);
    for (const f of frames.slice(25)) call.stream.sendMedia(f);
    const got = await second.waitForAudioIn(20);
    expect(got).toEqual(frames.slice(10));
    second.audio(ulaw(160, 0x45));
    await call.stream.waitFor((s) => s.mediaPayloads.includes(ulaw(160, 0x45)));
    const record = await storedCall(tb, call.callSid);
    expect(record?.agentReconnects).toBe(1);
    expect(await metricsText(tb)).toMatch(/playline_agent_reconnects_total\{result="success"\} 1/);
    expect(tb.callControl.spoken).toHaveLength(0);
    call.stream.sendStop();
  });

  it('keeps agent audio already queued at Twilio playing during the outage', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    call.agent.newAudioStream();
    for (let i = 0; i < 10; i++) call.agent.audio(ulaw(800));
    await call.stream.waitFor((s) => s.mediaPayloads.length === 10);
    call.agent.terminate();
    await tb.agent.nextConnection(3000);
    expect(call.stream.clears).toBe(0);
    call.stream.sendStop();
  });

  it.each([4500, 3001, 5001])('reconnects after a retryable error %i', async (code) => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    call.agent.error(code, 'transient', true);
    const second = await tb.agent.nextConnection(3000);
    expect((await second.waitForSetup()).continueConversation).toBe(call.agent.conversationId);
    await call.agent.closed;
    second.init();
    call.stream.sendMedia(ulaw(160));
    await second.waitForAudioIn(1);
    call.stream.sendStop();
  });

  it.each([1001, 1002, 1003, 1005, 4400, 4401])('does not retry non-retryable error %i: apology and hang-up', async (code) => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    call.agent.error(code, 'no', true);
    await call.stream.waitForClose(2000);
    expect(tb.agent.connections).toHaveLength(1);
    expect(tb.callControl.spoken.map((s) => s.text)).toEqual([tb.config.messages.apology]);
  });

  it('gives up after the reconnect budget and apologises to the caller', async () => {
    tb = await startTestBridge({ env: { AGENT_RECONNECT_ATTEMPTS: '2' } });
    const call = await openCall(tb);
    tb.agent.options.rejectWith = { code: 4500, message: 'down' };
    call.agent.terminate();
    await call.stream.waitForClose(5000);
    expect(tb.agent.connections).toHaveLength(3);
    expect(tb.callControl.spoken.map((s) => s.text)).toEqual([tb.config.messages.apology]);
    expect((await storedCall(tb, call.callSid))?.endReason).toBe('agent_unreachable');
    expect(await metricsText(tb)).toMatch(/playline_agent_reconnects_total\{result="gave_up"\} 1/);
  });

  it('closes everything when the caller hangs up during a reconnect', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    tb.agent.options.autoInit = false;
    call.agent.terminate();
    const second = await tb.agent.nextConnection(3000);
    await second.waitForSetup();
    call.stream.sendStop();
    await second.closed;
    await sleep(600);
    expect(tb.agent.connections).toHaveLength(2);
    expect(tb.agent.connections.every((c) => !c.isOpen)).toBe(true);
  });

  it('retries the first connection when the agent refuses it with a retryable error', async () => {
    tb = await startTestBridge();
    tb.agent.options.rejectWith = { code: 4500 };
    const callPromise = openCall(tb, { init: false });
    const call = await callPromise;
    tb.agent.options.rejectWith = undefined;
    const second = await tb.agent.nextConnection(3000);
    const setup = await second.waitForSetup();
    expect(setup.continueConversation).toBeUndefined();
    second.init();
    call.stream.sendMedia(ulaw(160));
    await second.waitForAudioIn(1);
    call.stream.sendStop();
  });
});

describe('PlayAI 4429 (account concurrency)', () => {
  it('apologises to the caller, caps admissions at the open agent sessions, and reopens when a call ends', async () => {
    tb = await startTestBridge({ env: { STREAM_TOKEN_TTL_S: '1' } });
    const a = await openCall(tb);
    const b = await openCall(tb);
    // Third call: the account is full.
    const c = await openCall(tb, { init: false });
    c.agent.error(4429, 'max concurrent connections exceeded', true);
    await c.stream.waitForClose(2000);
    expect(tb.callControl.spoken.at(-1)).toEqual({ callSid: c.callSid, text: tb.config.messages.busy });
    expect((await storedCall(tb, c.callSid))?.endReason).toBe('agent_capacity');
    await eventually(() => tb!.bridge.manager.usedSlots === 2);
    expect(tb.bridge.manager.capacity).toBe(2);
    const refused = await webhook(tb);
    expect(refused.twiml?.streamUrl).toBeUndefined();
    expect(refused.twiml?.say.join(' ')).toMatch(/busy/i);
    expect((await fetch(`${tb.url}/readyz`)).status).toBe(503);
    const m = await metricsText(tb);
    expect(m).toMatch(/playline_agent_capacity_exceeded_total 1/);
    expect(m).toMatch(/playline_capacity 2/);
    // A call ends: a connection is free on the account again.
    a.stream.sendStop();
    await eventually(() => tb!.bridge.manager.liveCalls === 1);
    const admitted = await webhook(tb);
    expect(admitted.twiml?.streamUrl).toBeDefined();
    b.stream.sendStop();
  });

  it('forwards refused callers to the fallback number when OVERFLOW_ACTION=dial', async () => {
    tb = await startTestBridge({ env: { OVERFLOW_ACTION: 'dial', FALLBACK_NUMBER: '+15557654321', MAX_CONCURRENT_CALLS: '1' } });
    const c = await openCall(tb, { init: false });
    const full = await webhook(tb);
    expect(full.twiml?.streamUrl).toBeUndefined();
    expect(full.twiml?.dial).toEqual(['+15557654321']);
    c.agent.error(4429, 'full', true);
    await c.stream.waitForClose(2000);
    expect(tb.callControl.requests.at(-1)).toMatchObject({ callSid: c.callSid, forwardTo: '+15557654321' });
  });
});

describe('limits and stuck calls', () => {
  it('enforces per-agent limits on top of MAX_CONCURRENT_CALLS', async () => {
    tb = await startTestBridge({ env: { AGENT_LIMITS: 'sales:1' } });
    tb.config.routes.set('+15550000001', { agentId: 'sales' });
    const first = await webhook(tb, { To: '+15550000001' });
    expect(first.twiml?.parameters.agentId).toBe('playai:sales');
    const second = await webhook(tb, { To: '+15550000001' });
    expect(second.twiml?.streamUrl).toBeUndefined();
    const other = await webhook(tb, { To: '+15550000002' });
    expect(other.twiml?.parameters.agentId).toBe('playai:agent-default');
    expect(await metricsText(tb)).toMatch(/playline_calls_refused_total\{reason="agent_limit"\} 1/);
    tb.bridge.manager.dispose(); // the admitted calls never stream: drop their reservations now
  });

  it('closes a session whose status callback reports the call completed', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    const { postStatusCallback } = await import('../src/sim/twilioSim.js');
    await postStatusCallback({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { CallSid: call.callSid, CallStatus: 'completed', SequenceNumber: '3' } });
    await call.agent.closed;
    await call.stream.waitForClose(2000);
  });
});

describe('graceful drain', () => {
  it('answers 503 on /readyz at once, refuses new calls, and waits for live calls to end on their own', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    const drained = tb.bridge.drain(5000);
    expect((await fetch(`${tb.url}/readyz`)).status).toBe(503);
    const refused = await webhook(tb);
    expect(refused.twiml?.streamUrl).toBeUndefined();
    expect(refused.twiml?.hangup).toBe(true);
    // The live call goes on.
    call.stream.sendMedia(ulaw(160));
    await call.agent.waitForAudioIn(1);
    await sleep(200);
    expect(call.stream.closed).toBe(false);
    call.stream.sendStop();
    expect(await drained).toEqual({ endedByDrain: 0 });
    expect(tb.callControl.spoken).toHaveLength(0);
  });

  it('ends calls still live at the drain timeout with a goodbye', async () => {
    tb = await startTestBridge();
    tb.callControl.onRequest = (r) => {
      // Twilio would run the new TwiML and stop the stream.
      setTimeout(() => tb?.bridge.manager.getSession(r.callSid)?.close('caller_hangup'), 20);
    };
    const a = await openCall(tb);
    const b = await openCall(tb);
    const t0 = Date.now();
    const result = await tb.bridge.drain(300);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(280);
    expect(result).toEqual({ endedByDrain: 2 });
    expect(tb.callControl.spoken.map((s) => s.text)).toEqual([tb.config.messages.goodbye, tb.config.messages.goodbye]);
    await a.stream.waitForClose(2000);
    await b.stream.waitForClose(2000);
    expect((await storedCall(tb, a.callSid))?.endReason).toBe('shutdown');
  });
});

describe('agent heartbeat', () => {
  it('notices an agent that stops answering pings within seconds and reconnects', async () => {
    tb = await startTestBridge({ env: { AGENT_HEARTBEAT_MS: '200' } });
    const call = await openCall(tb);
    tb.agent.options.answerPings = false;
    const t0 = Date.now();
    const second = await tb.agent.nextConnection(3000);
    // One interval to send the ping, one more to find the pong missing.
    expect(Date.now() - t0).toBeLessThan(1000);
    tb.agent.options.answerPings = true;
    expect((await second.waitForSetup()).continueConversation).toBe(call.agent.conversationId);
    second.init();
    call.stream.sendMedia(ulaw(160));
    await second.waitForAudioIn(1);
    call.stream.sendStop();
  });
});

describe('agent close codes that mirror error codes', () => {
  it('treats a close with code 4429 like error 4429: busy text, learned limit, no reconnect', async () => {
    tb = await startTestBridge();
    const a = await openCall(tb);
    const c = await openCall(tb, { init: false });
    c.agent.close(4429, 'max concurrent connections');
    await c.stream.waitForClose(2000);
    expect(tb.agent.connections).toHaveLength(2);
    expect(tb.callControl.spoken.at(-1)).toEqual({ callSid: c.callSid, text: tb.config.messages.busy });
    expect(tb.bridge.manager.capacity).toBe(1);
    a.stream.sendStop();
  });

  it('treats a close with code 4401 as fatal (apology, no reconnect) and 4500 as retryable', async () => {
    tb = await startTestBridge();
    const a = await openCall(tb);
    a.agent.close(4500, 'internal');
    const again = await tb.agent.nextConnection(3000);
    expect((await again.waitForSetup()).continueConversation).toBe(a.agent.conversationId);
    again.close(4401, 'unauthorized');
    await a.stream.waitForClose(2000);
    expect(tb.callControl.spoken.map((s) => s.text)).toEqual([tb.config.messages.apology]);
  });
});
