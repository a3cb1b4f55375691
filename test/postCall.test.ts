/**
 * After the call: the live transcript is stored with the call, the PlayAI
 * transcript is fetched when PLAYAI_USER_ID is set, and the signed post-call
 * webhook carries the record, outcome and transcript.
 */
import { createServer, type Server } from 'node:http';
import twilio from 'twilio';
import { afterEach, describe, expect, it } from 'vitest';
import { verifyWebhookSignature } from '../src/outbound/webhooks.js';
import { FakePlayAiRest } from '../src/testing/fakePlayaiRest.js';
import { AUTH_TOKEN, PUBLIC_URL, eventually, openCall, startTestBridge, type TestBridge } from './helpers.js';

const SECRET = 'webhook-secret-0123456789';

interface Received {
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

let tb: TestBridge | undefined;
let receiver: Server | undefined;
let playai: FakePlayAiRest | undefined;
afterEach(async () => {
  await tb?.close();
  await new Promise<void>((r) => (receiver ? receiver.close(() => r()) : r()));
  await playai?.close();
  tb = undefined;
  receiver = undefined;
  playai = undefined;
});

async function startReceiver(): Promise<{ url: string; got: Received[] }> {
  const got: Received[] = [];
  receiver = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString('utf8')));
    req.on('end', () => {
      got.push({ headers: req.headers, body });
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => receiver!.listen(0, '127.0.0.1', () => r()));
  const addr = receiver.address();
  if (addr === null || typeof addr === 'string') throw new Error('no address');
  return { url: `http://127.0.0.1:${addr.port}/hooks/playline`, got };
}

async function completeCall(t: TestBridge, callSid: string, seq: number): Promise<void> {
  const params = { CallSid: callSid, CallStatus: 'completed', SequenceNumber: String(seq), CallDuration: '3', Direction: 'inbound' };
  const res = await t.bridge.app.inject({
    method: 'POST',
    url: '/twilio/status',
    headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-twilio-signature': twilio.getExpectedTwilioSignature(AUTH_TOKEN, `${PUBLIC_URL}/twilio/status`, params) },
    payload: new URLSearchParams(params).toString(),
  });
  expect(res.statusCode).toBe(204);
}

describe('after the call', () => {
  it('stores the live transcript and sends a signed call.completed webhook with it', async () => {
    const hook = await startReceiver();
    tb = await startTestBridge({ env: { WEBHOOK_URL: hook.url, WEBHOOK_SECRET: SECRET } });
    const call = await openCall(tb);
    call.agent.transcript('user', 'Hi, is this Acme?');
    call.agent.transcript('agent', 'Yes, how can I help?');
    await new Promise((r) => setTimeout(r, 50));
    call.stream.sendStop();
    await completeCall(tb, call.callSid, 3);
    await eventually(() => hook.got.length === 1, 5000, 'the webhook');
    const { headers, body } = hook.got[0]!;
    expect(headers['playline-event']).toBe('call.completed');
    expect(verifyWebhookSignature(SECRET, headers['playline-signature'] as string, body)).toBe(true);
    expect(verifyWebhookSignature('another-secret-0123456789', headers['playline-signature'] as string, body)).toBe(false);
    const payload = JSON.parse(body) as { event: string; data: any };
    expect(payload.data.call).toMatchObject({ callSid: call.callSid, direction: 'inbound', status: 'completed', conversationId: call.agent.conversationId });
    expect(payload.data.outcome).toBe('answered');
    expect(payload.data.transcript.source).toBe('live');
    expect(payload.data.transcript.turns.map((t: any) => [t.role, t.text])).toEqual([
      ['user', 'Hi, is this Acme?'],
      ['agent', 'Yes, how can I help?'],
    ]);
    // The same record through the API.
    const row = (await tb.bridge.calls.getBySid(call.callSid))!;
    const api = JSON.parse((await tb.bridge.app.inject({ method: 'GET', url: `/v1/calls/${row.id}` })).body) as any;
    expect(api.transcript).toHaveLength(2);
    // The receiver answered; the delivery is recorded as delivered right after.
    await eventually(async () => (await tb!.bridge.webhooks?.list({ status: 'delivered' }))?.length === 1, 2000, 'the delivery recorded');
    const deliveries = JSON.parse((await tb.bridge.app.inject({ method: 'GET', url: '/v1/webhooks/deliveries' })).body) as any;
    expect(deliveries.data[0]).toMatchObject({ status: 'delivered', attempts: 1, callId: row.id });
  });

  it('fetches the transcript from the PlayAI REST API when PLAYAI_USER_ID is set', async () => {
    const hook = await startReceiver();
    playai = await FakePlayAiRest.start({ apiKey: 'test-playai-key', userId: 'user-1' });
    tb = await startTestBridge({ env: { WEBHOOK_URL: hook.url, PLAYAI_USER_ID: 'user-1', PLAYAI_API_URL: playai.url } });
    const call = await openCall(tb);
    call.agent.transcript('user', 'live words');
    playai.setTranscript(
      'agent-default',
      call.agent.conversationId!,
      Array.from({ length: 60 }, (_, i) => ({ id: `t${i}`, role: i % 2 ? 'assistant' : 'user', content: `turn ${i}`, timestamp: new Date(1_700_000_000_000 + i * 1000).toISOString() })),
    );
    await new Promise((r) => setTimeout(r, 50));
    call.stream.sendStop();
    await completeCall(tb, call.callSid, 2);
    await eventually(() => hook.got.length === 1, 5000, 'the webhook');
    const payload = JSON.parse(hook.got[0]!.body) as { data: any };
    expect(payload.data.transcript.source).toBe('playai');
    expect(payload.data.transcript.turns).toHaveLength(60);
    expect(payload.data.transcript.turns[59].text).toBe('turn 59');
    expect(playai.requests.length).toBeGreaterThanOrEqual(2);
  });
});
