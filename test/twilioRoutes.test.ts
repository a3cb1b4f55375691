import twilio from 'twilio';
import { afterEach, describe, expect, it } from 'vitest';
import { FakeTwilioStream, newCallSid, postStatusCallback, postVoiceWebhook, StreamConnectError } from '../src/sim/twilioSim.js';
import { AUTH_TOKEN, eventually, PUBLIC_URL, startTestBridge, storedCall, STREAM_URL, type TestBridge } from './helpers.js';

let tb: TestBridge | undefined;
afterEach(async () => {
  await tb?.close();
  tb = undefined;
});

async function connectRefused(opts: Parameters<typeof FakeTwilioStream.connect>[0]): Promise<number | undefined> {
  try {
    const s = await FakeTwilioStream.connect(opts);
    s.terminate();
    return 101;
  } catch (err) {
    expect(err).toBeInstanceOf(StreamConnectError);
    return (err as StreamConnectError).status;
  }
}

describe('POST /twilio/voice', () => {
  it('answers a signed call with <Connect><Stream> on the wss URL, agent id and a token as Parameters, and <Hangup/> after it', async () => {
    tb = await startTestBridge();
    const hook = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN });
    expect(hook.status).toBe(200);
    const twiml = hook.twiml;
    expect(twiml?.streamUrl).toBe(STREAM_URL);
    expect(twiml?.streamUrl).not.toContain('?');
    expect(twiml?.parameters.agentId).toBe('playai:agent-default');
    expect(twiml?.parameters.token).toMatch(/^[A-Za-z0-9_-]{20,}$/);
    expect(twiml?.hangup).toBe(true);
    expect(tb.bridge.manager.reservedSlots).toBe(1);
  });

  it('routes the called number to its agent and unknown numbers to the default agent', async () => {
    tb = await startTestBridge();
    tb.config.routes.set('+15550001111', { agentId: 'sales-agent', prompt: 'be brief', customGreeting: 'Hi from sales' });
    const routed = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { To: '+15550001111' } });
    expect(routed.twiml?.parameters.agentId).toBe('playai:sales-agent');
    const other = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { To: '+15550009999' } });
    expect(other.twiml?.parameters.agentId).toBe('playai:agent-default');
  });

  it('refuses a forged signature with 403 and reserves nothing', async () => {
    tb = await startTestBridge();
    const forged = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, signature: 'bm90IGEgc2lnbmF0dXJl' });
    expect(forged.status).toBe(403);
    expect(forged.body).not.toContain('<Stream');
    expect(tb.bridge.manager.reservedSlots).toBe(0);
  });

  it('refuses a missing signature with 403', async () => {
    tb = await startTestBridge();
    const res = await fetch(`${tb.url}/twilio/voice`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ CallSid: newCallSid(), From: '+1555', To: '+1666' }).toString(),
    });
    expect(res.status).toBe(403);
  });

  it('refuses a signature made over the URL the proxy forwarded instead of PUBLIC_URL', async () => {
    tb = await startTestBridge();
    // Signed for the internal address: the bridge rebuilds URLs from PUBLIC_URL only.
    const res = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: tb.url, authToken: AUTH_TOKEN });
    expect(res.status).toBe(403);
  });

  it('refuses a signature made with another auth token', async () => {
    tb = await startTestBridge();
    const res = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: 'some-other-token' });
    expect(res.status).toBe(403);
  });

  it('answers a spoken apology and <Hangup/> without <Stream> when capacity is full', async () => {
    tb = await startTestBridge({ env: { MAX_CONCURRENT_CALLS: '2' } });
    for (let i = 0; i < 2; i++) {
      const ok = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN });
      expect(ok.twiml?.streamUrl).toBeDefined();
    }
    const refused = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN });
    expect(refused.status).toBe(200);
    expect(refused.body).not.toContain('<Stream');
    expect(refused.twiml?.streamUrl).toBeUndefined();
    expect(refused.twiml?.say.join(' ')).toMatch(/busy/i);
    expect(refused.twiml?.hangup).toBe(true);
    const metrics = await (await fetch(`${tb.url}/metrics`)).text();
    expect(metrics).toMatch(/playline_calls_refused_total\{reason="capacity"\} 1/);
    const ready = await fetch(`${tb.url}/readyz`);
    expect(ready.status).toBe(503);
  });

  it('gives the slot back when the admitted stream never arrives', async () => {
    tb = await startTestBridge({ env: { MAX_CONCURRENT_CALLS: '1', STREAM_TOKEN_TTL_S: '1' } });
    await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN });
    expect(tb.bridge.manager.usedSlots).toBe(1);
    const busy = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN });
    expect(busy.twiml?.streamUrl).toBeUndefined();
    await eventually(() => tb!.bridge.manager.usedSlots === 0, 2500, 'reservation expiry');
    const again = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN });
    expect(again.twiml?.streamUrl).toBe(STREAM_URL);
  });

  it('answers 400 to a body without CallSid', async () => {
    tb = await startTestBridge();
    const params = { From: '+1555' };
    const sig = twilio.getExpectedTwilioSignature(AUTH_TOKEN, `${PUBLIC_URL}/twilio/voice`, params);
    const res = await fetch(`${tb.url}/twilio/voice`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-twilio-signature': sig },
      body: new URLSearchParams(params).toString(),
    });
    expect(res.status).toBe(400);
  });
});

describe('POST /twilio/status', () => {
  it('records a signed status callback on the call, ordered by SequenceNumber', async () => {
    tb = await startTestBridge();
    const callSid = newCallSid();
    const base = { CallSid: callSid, AccountSid: 'AC' + '0'.repeat(32), From: '+1555', To: '+1666' };
    // The call is admitted first: its record is made at the webhook.
    const hook = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: base });
    expect(hook.status).toBe(200);
    const a = await postStatusCallback({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { ...base, CallStatus: 'completed', SequenceNumber: '2', CallDuration: '31' } });
    const b = await postStatusCallback({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { ...base, CallStatus: 'in-progress', SequenceNumber: '1' } });
    expect(a.status).toBe(204);
    expect(b.status).toBe(204);
    const record = await storedCall(tb, callSid);
    expect(record?.status).toBe('completed');
    expect(record?.events.filter((e) => e.type === 'status').map((e) => e.status)).toEqual(['completed', 'in-progress']);
  });

  it('refuses a forged status callback with 403 and records nothing', async () => {
    tb = await startTestBridge();
    const callSid = newCallSid();
    const res = await postStatusCallback({
      bridgeUrl: tb.url,
      publicUrl: PUBLIC_URL,
      authToken: AUTH_TOKEN,
      signature: 'Zm9yZ2Vk',
      params: { CallSid: callSid, CallStatus: 'completed' },
    });
    expect(res.status).toBe(403);
    expect(await storedCall(tb, callSid)).toBeUndefined();
  });
});

describe('WS /twilio/media-stream upgrade', () => {
  it('refuses an upgrade with a forged signature before accepting the socket', async () => {
    tb = await startTestBridge();
    expect(await connectRefused({ bridgeUrl: tb.url, streamUrl: STREAM_URL, signature: 'Zm9yZ2Vk' })).toBe(403);
    expect(tb.agent.connections).toHaveLength(0);
  });

  it('refuses an upgrade without a signature', async () => {
    tb = await startTestBridge();
    expect(await connectRefused({ bridgeUrl: tb.url, streamUrl: STREAM_URL, signature: null })).toBe(403);
  });

  it('refuses a signature computed over the https:// URL instead of wss://', async () => {
    tb = await startTestBridge();
    const sig = twilio.getExpectedTwilioSignature(AUTH_TOKEN, `${PUBLIC_URL}/twilio/media-stream`, {});
    expect(await connectRefused({ bridgeUrl: tb.url, streamUrl: STREAM_URL, signature: sig })).toBe(403);
  });

  it('accepts a signature over the wss:// URL with a trailing slash', async () => {
    tb = await startTestBridge();
    const sig = twilio.getExpectedTwilioSignature(AUTH_TOKEN, `${STREAM_URL}/`, {});
    const s = await FakeTwilioStream.connect({ bridgeUrl: tb.url, streamUrl: `${STREAM_URL}/`, signature: sig });
    expect(s.closed).toBe(false);
    s.terminate();
  });

  it('closes a stream whose start carries an unknown token, and opens no agent session', async () => {
    tb = await startTestBridge();
    const s = await FakeTwilioStream.connect({ bridgeUrl: tb.url, streamUrl: STREAM_URL, authToken: AUTH_TOKEN });
    s.sendConnected();
    s.sendStart({ customParameters: { token: 'made-up-token', agentId: 'agent-default' } });
    const closed = await s.waitForClose(2000);
    expect(closed.code).toBe(1008);
    expect(tb.agent.connections).toHaveLength(0);
    expect(tb.bridge.manager.liveCalls).toBe(0);
  });

  it('closes a stream whose start has no token at all', async () => {
    tb = await startTestBridge();
    const s = await FakeTwilioStream.connect({ bridgeUrl: tb.url, streamUrl: STREAM_URL, authToken: AUTH_TOKEN });
    s.sendStart({ customParameters: {} });
    expect((await s.waitForClose(2000)).code).toBe(1008);
    expect(tb.agent.connections).toHaveLength(0);
  });

  it('refuses a replayed token: the second stream is closed and only one agent session exists', async () => {
    tb = await startTestBridge();
    const callSid = newCallSid();
    const hook = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { CallSid: callSid } });
    const params = hook.twiml?.parameters ?? {};
    const first = await FakeTwilioStream.connect({ bridgeUrl: tb.url, streamUrl: STREAM_URL, authToken: AUTH_TOKEN });
    first.sendStart({ callSid, customParameters: params });
    await tb.agent.nextConnection();
    const replay = await FakeTwilioStream.connect({ bridgeUrl: tb.url, streamUrl: STREAM_URL, authToken: AUTH_TOKEN });
    replay.sendStart({ callSid, customParameters: params });
    expect((await replay.waitForClose(2000)).code).toBe(1008);
    expect(tb.agent.connections).toHaveLength(1);
    expect(first.closed).toBe(false);
    first.terminate();
  });

  it('refuses a token presented with another CallSid, without burning it for the real call', async () => {
    tb = await startTestBridge();
    const callSid = newCallSid();
    const hook = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { CallSid: callSid } });
    const s = await FakeTwilioStream.connect({ bridgeUrl: tb.url, streamUrl: STREAM_URL, authToken: AUTH_TOKEN });
    s.sendStart({ callSid: newCallSid(), customParameters: hook.twiml?.parameters ?? {} });
    expect((await s.waitForClose(2000)).code).toBe(1008);
    expect(tb.agent.connections).toHaveLength(0);
    // The slot stays reserved for the real call, whose stream still gets through with the same token.
    expect(tb.bridge.manager.usedSlots).toBe(1);
    const real = await FakeTwilioStream.connect({ bridgeUrl: tb.url, streamUrl: STREAM_URL, authToken: AUTH_TOKEN });
    real.sendStart({ callSid, customParameters: hook.twiml?.parameters ?? {} });
    await tb.agent.nextConnection();
    expect(tb.bridge.manager.liveCalls).toBe(1);
    real.sendStop();
    const bridge = tb.bridge;
    await eventually(() => bridge.manager.usedSlots === 0, 2000, "slot released");
  });

  it('closes a stream that never sends start within the start timeout', async () => {
    tb = await startTestBridge({ env: { START_TIMEOUT_MS: '200' } });
    const s = await FakeTwilioStream.connect({ bridgeUrl: tb.url, streamUrl: STREAM_URL, authToken: AUTH_TOKEN });
    s.sendConnected();
    const t0 = Date.now();
    expect((await s.waitForClose(2000)).code).toBe(1008);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(150);
    expect(tb.agent.connections).toHaveLength(0);
  });

  it('refuses an expired token', async () => {
    tb = await startTestBridge({ env: { STREAM_TOKEN_TTL_S: '1' } });
    const callSid = newCallSid();
    const hook = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { CallSid: callSid } });
    await eventually(() => tb!.bridge.manager.usedSlots === 0, 2500, 'expiry');
    const s = await FakeTwilioStream.connect({ bridgeUrl: tb.url, streamUrl: STREAM_URL, authToken: AUTH_TOKEN });
    s.sendStart({ callSid, customParameters: hook.twiml?.parameters ?? {} });
    expect((await s.waitForClose(2000)).code).toBe(1008);
    expect(tb.agent.connections).toHaveLength(0);
  });
});

describe('local mode (no TWILIO_AUTH_TOKEN)', () => {
  it('serves Twilio routes to loopback clients without signatures', async () => {
    tb = await startTestBridge({ signed: false });
    const hook = await postVoiceWebhook({ bridgeUrl: tb.url });
    expect(hook.status).toBe(200);
    expect(hook.twiml?.streamUrl).toBe(`${tb.config.publicUrl.replace('http', 'ws')}/twilio/media-stream`);
  });
});

describe('health', () => {
  it('answers /healthz and /readyz with 200 when idle', async () => {
    tb = await startTestBridge();
    expect((await fetch(`${tb.url}/healthz`)).status).toBe(200);
    const ready = await fetch(`${tb.url}/readyz`);
    expect(ready.status).toBe(200);
    expect(await ready.json()).toMatchObject({ ready: true, liveCalls: 0, capacity: 50 });
  });
});

describe('replayed signed requests cannot take over a call', () => {
  it("answers Twilio's retry of a voice webhook (same I-Twilio-Idempotency-Token) with the same token, and mints nothing new", async () => {
    tb = await startTestBridge();
    const callSid = newCallSid();
    const first = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { CallSid: callSid }, idempotencyToken: 'idem-1' });
    const retry = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { CallSid: callSid }, idempotencyToken: 'idem-1' });
    expect(first.twiml?.parameters.token).toBeDefined();
    expect(retry.twiml?.parameters.token).toBe(first.twiml?.parameters.token);
    expect(tb.bridge.manager.usedSlots).toBe(1);
  });

  it('answers a retry that carries no idempotency token (a carrier that does not send it) with the same token while it is pending', async () => {
    tb = await startTestBridge();
    const callSid = newCallSid();
    const first = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { CallSid: callSid }, idempotencyToken: false });
    const retry = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { CallSid: callSid }, idempotencyToken: false });
    expect(retry.twiml?.parameters.token).toBe(first.twiml?.parameters.token);
    expect(tb.bridge.manager.usedSlots).toBe(1);
  });

  it('refuses a replay that drops the idempotency token Twilio sent with the first request', async () => {
    tb = await startTestBridge();
    const callSid = newCallSid();
    const first = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { CallSid: callSid }, idempotencyToken: 'twilio-idem-1' });
    const replay = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { CallSid: callSid }, idempotencyToken: false });
    expect(first.status).toBe(200);
    expect(replay.status).toBe(409);
    expect(replay.body).not.toContain(first.twiml?.parameters.token ?? 'no-token');
  });

  it('refuses a replayed voice webhook (another idempotency token) while the call holds a token: 409, no second token', async () => {
    tb = await startTestBridge();
    const callSid = newCallSid();
    const first = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { CallSid: callSid } });
    const replay = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { CallSid: callSid } });
    expect(first.status).toBe(200);
    expect(replay.status).toBe(409);
    expect(replay.twiml).toBeUndefined();
    expect(JSON.parse(replay.body)).toMatchObject({ error: { code: 'duplicate_call' } });
    expect(tb.bridge.manager.usedSlots).toBe(1);
    expect(await metricsOf(tb)).toMatch(/playline_calls_refused_total\{reason="duplicate"\} 1/);
  });

  it('refuses a replayed voice webhook for a live call, and the live call goes on with its own stream', async () => {
    tb = await startTestBridge();
    const callSid = newCallSid();
    const hook = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { CallSid: callSid } });
    const stream = await FakeTwilioStream.connect({ bridgeUrl: tb.url, streamUrl: STREAM_URL, authToken: AUTH_TOKEN });
    stream.sendStart({ callSid, customParameters: hook.twiml?.parameters ?? {} });
    const agent = await tb.agent.nextConnection();
    await agent.waitForSetup();
    const replay = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { CallSid: callSid } });
    expect(replay.status).toBe(409);
    // Even a stream opened with the first token again is refused: one stream per call.
    const intruder = await FakeTwilioStream.connect({ bridgeUrl: tb.url, streamUrl: STREAM_URL, authToken: AUTH_TOKEN });
    intruder.sendStart({ callSid, customParameters: hook.twiml?.parameters ?? {} });
    expect((await intruder.waitForClose(2000)).code).toBe(1008);
    expect(stream.closed).toBe(false);
    expect(tb.agent.connections).toHaveLength(1);
    expect(agent.isOpen).toBe(true);
    stream.sendStop();
  });

  it('refuses a replayed voice webhook after the call ended: no token for a finished CallSid', async () => {
    tb = await startTestBridge();
    const callSid = newCallSid();
    const hook = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { CallSid: callSid } });
    const stream = await FakeTwilioStream.connect({ bridgeUrl: tb.url, streamUrl: STREAM_URL, authToken: AUTH_TOKEN });
    stream.sendStart({ callSid, customParameters: hook.twiml?.parameters ?? {} });
    await tb.agent.nextConnection();
    stream.sendStop();
    const bridge = tb.bridge;
    await eventually(() => bridge.manager.liveCalls === 0, 2000, 'call ended');
    const replay = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, params: { CallSid: callSid } });
    expect(replay.status).toBe(409);
    expect(tb.bridge.manager.usedSlots).toBe(0);
  });
});

async function metricsOf(t: TestBridge): Promise<string> {
  return (await fetch(`${t.url}/metrics`)).text();
}
