/**
 * The outbound service through the /v1 API and the Twilio callback routes,
 * with a scripted carrier (FakeDialer): idempotency, auth, validation,
 * ordering of status callbacks, retries, carrier errors, capacity sharing,
 * do-not-call, AMD, and crash reconciliation.
 */
import twilio from 'twilio';
import { afterEach, describe, expect, it } from 'vitest';
import { DialError } from '../src/outbound/dialer.js';
import { FakeDialer } from '../src/testing/fakeDialer.js';
import { openDb, type Db } from '../src/store/db.js';
import { FakeTwilioStream } from '../src/sim/twilioSim.js';
import { AUTH_TOKEN, PUBLIC_URL, STREAM_URL, eventually, startTestBridge, type TestBridge } from './helpers.js';

let tb: TestBridge | undefined;
afterEach(async () => {
  await tb?.close();
  tb = undefined;
});

async function start(env: Record<string, string> = {}, dialer = new FakeDialer(), db?: Db): Promise<{ tb: TestBridge; dialer: FakeDialer }> {
  tb = await startTestBridge({ env: { OUTBOUND_MAX_CPS: '50', ...env }, overrides: { dialer }, ...(db ? { db } : {}) });
  return { tb, dialer };
}

async function api(t: TestBridge, method: 'GET' | 'POST' | 'DELETE', url: string, body?: unknown, headers: Record<string, string> = {}) {
  const res = await t.bridge.app.inject({
    method,
    url,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...headers },
    ...(body !== undefined ? { payload: typeof body === 'string' ? body : JSON.stringify(body) } : {}),
  });
  return { status: res.statusCode, body: res.body ? (res.headers['content-type']?.toString().includes('json') ? (JSON.parse(res.body) as any) : res.body) : undefined, headers: res.headers };
}

/** A signed Twilio form POST (status / AMD / voice callbacks). */
async function twilioPost(t: TestBridge, pathAndQuery: string, params: Record<string, string>) {
  const signature = twilio.getExpectedTwilioSignature(AUTH_TOKEN, PUBLIC_URL + pathAndQuery, params);
  const res = await t.bridge.app.inject({
    method: 'POST',
    url: pathAndQuery,
    headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-twilio-signature': signature },
    payload: new URLSearchParams(params).toString(),
  });
  return { status: res.statusCode, body: res.body };
}

const status = (t: TestBridge, callId: string, callSid: string, s: string, seq: number, extra: Record<string, string> = {}) =>
  twilioPost(t, `/twilio/status?callId=${callId}`, { CallSid: callSid, AccountSid: 'AC' + '0'.repeat(32), CallStatus: s, SequenceNumber: String(seq), ...extra });

describe('POST /v1/calls', () => {
  it('queues a call and dials it with our callback URLs carrying the call id', async () => {
    const { tb, dialer } = await start();
    const r = await api(tb, 'POST', '/v1/calls', { to: '+14155550123', metadata: { crm: 'lead-1' } });
    expect(r.status).toBe(201);
    expect(r.body.status).toBe('queued');
    expect(r.body.to).toBe('+14155550123');
    await eventually(() => dialer.created.length === 1, 3000, 'the dial');
    const req = dialer.requests[0]!;
    expect(req.url).toBe(`${PUBLIC_URL}/twilio/voice?callId=${r.body.id}`);
    expect(req.statusCallback).toBe(`${PUBLIC_URL}/twilio/status?callId=${r.body.id}`);
    expect(req.machineDetection).toBeUndefined();
    await eventually(async () => (await tb.bridge.calls.get(r.body.id))?.status === 'dialed', 2000, 'dialed');
    const got = await api(tb, 'GET', `/v1/calls/${r.body.id}`);
    expect(got.body.callSid).toBe(dialer.created[0]!.sid);
    expect(got.body.metadata).toEqual({ crm: 'lead-1' });
    expect(got.body.events.map((e: any) => e.type)).toEqual(['created', 'dialed']);
  });

  it('routes the answering call by the callId on its TwiML URL: its own prompt, on the slot held since the dial', async () => {
    const { tb, dialer } = await start();
    const r = await api(tb, 'POST', '/v1/calls', { to: '+14155550123', prompt: 'Remind them about Tuesday.' });
    await eventually(() => dialer.created.length === 1, 3000, 'the dial');
    expect(tb.bridge.manager.outboundSlots).toBe(1);
    const sid = dialer.created[0]!.sid;
    const voice = await twilioPost(tb, `/twilio/voice?callId=${r.body.id}`, { CallSid: sid, From: '+12025550100', To: '+14155550123', Direction: 'outbound-api', CallStatus: 'in-progress' });
    expect(voice.body).toContain('<Connect>');
    // No second slot: the held one became the call's reservation.
    expect(tb.bridge.manager.usedSlots).toBe(1);
    expect(await tb.bridge.calls.list({ direction: 'inbound', limit: 10 })).toEqual([]);
    const token = /name="token" value="([^"]+)"/.exec(voice.body)?.[1];
    expect(token).toBeDefined();
    const stream = await FakeTwilioStream.connect({ bridgeUrl: tb.url, streamUrl: STREAM_URL, authToken: AUTH_TOKEN });
    stream.sendConnected();
    stream.sendStart({ callSid: sid, customParameters: { token: token!, agentId: 'agent-default' } });
    const agent = await tb.agent.nextConnection();
    const setup = await agent.waitForSetup();
    expect(JSON.stringify(setup)).toContain('Remind them about Tuesday.');
    stream.close();
  });

  it('returns the first call for a repeated Idempotency-Key and dials once; another body with the key is a 409', async () => {
    const { tb, dialer } = await start();
    const body = { to: '+14155550123', prompt: 'Be brief.' };
    const a = await api(tb, 'POST', '/v1/calls', body, { 'idempotency-key': 'crm-42' });
    const b = await api(tb, 'POST', '/v1/calls', body, { 'idempotency-key': 'crm-42' });
    expect(a.status).toBe(201);
    expect(b.status).toBe(200);
    expect(b.headers['idempotent-replayed']).toBe('true');
    expect(b.body.id).toBe(a.body.id);
    const c = await api(tb, 'POST', '/v1/calls', { to: '+14155550199' }, { 'idempotency-key': 'crm-42' });
    expect(c.status).toBe(409);
    await eventually(() => dialer.created.length === 1, 3000, 'the dial');
    await new Promise((r) => setTimeout(r, 200));
    expect(dialer.created).toHaveLength(1);
  });

  it('refuses numbers that are not valid E.164 and unknown fields, saying which', async () => {
    const { tb } = await start();
    for (const to of ['12345', '+1415555012', 'not a number', '+999123']) {
      const r = await api(tb, 'POST', '/v1/calls', { to });
      expect(r.status, to).toBe(400);
      expect(r.body.error.code).toBe('invalid_request');
      expect(r.body.error.message).toMatch(/^body: to: /);
    }
    const extra = await api(tb, 'POST', '/v1/calls', { to: '+14155550123', colour: 'red' });
    expect(extra.status).toBe(400);
    const bad = await api(tb, 'POST', '/v1/calls', '{"to": ');
    expect(bad.status).toBe(400);
  });

  it('hangs up a queued call without dialing it', async () => {
    const { tb, dialer } = await start();
    tb.bridge.outbound.pauseDialing();
    const r = await api(tb, 'POST', '/v1/calls', { to: '+14155550123' });
    const h = await api(tb, 'POST', `/v1/calls/${r.body.id}/hangup`);
    expect(h.status).toBe(200);
    expect(h.body.status).toBe('canceled');
    expect(h.body.outcome).toBe('canceled');
    expect(h.body.endReason).toBe('api_hangup');
    expect(dialer.created).toHaveLength(0);
  });

  it('records a hang-up through the API as api_hangup, not as the caller hanging up, and ends the live stream', async () => {
    const { tb, dialer } = await start();
    const r = await api(tb, 'POST', '/v1/calls', { to: '+14155550123' });
    await eventually(() => dialer.created.length === 1, 3000, 'the dial');
    const sid = dialer.created[0]!.sid;
    const voice = await twilioPost(tb, `/twilio/voice?callId=${r.body.id}`, { CallSid: sid, From: '+12025550100', To: '+14155550123', Direction: 'outbound-api', CallStatus: 'in-progress' });
    const token = /name="token" value="([^"]+)"/.exec(voice.body)?.[1];
    const stream = await FakeTwilioStream.connect({ bridgeUrl: tb.url, streamUrl: STREAM_URL, authToken: AUTH_TOKEN });
    stream.sendStart({ callSid: sid, customParameters: { token: token ?? '' } });
    const agent = await tb.agent.nextConnection();
    await agent.waitForSetup();
    agent.init();
    const h = await api(tb, 'POST', `/v1/calls/${r.body.id}/hangup`);
    expect(h.status).toBe(200);
    await stream.waitForClose(2000);
    expect(dialer.hangups).toEqual([sid]);
    // Twilio's final callback comes after: the record keeps what really ended the call.
    await status(tb, r.body.id, sid, 'completed', 4, { CallDuration: '3' });
    const got = await api(tb, 'GET', `/v1/calls/${r.body.id}`);
    expect(got.body.endReason).toBe('api_hangup');
    expect(got.body.events.map((e: any) => e.type)).toContain('hangup_requested');
  });
});

describe('API auth', () => {
  it('requires the bearer token when API_TOKEN is set, compared exactly', async () => {
    const { tb } = await start({ API_TOKEN: 'secret-token-0123456789' });
    expect((await api(tb, 'GET', '/v1/calls')).status).toBe(401);
    expect((await api(tb, 'GET', '/v1/calls', undefined, { authorization: 'Bearer secret-token-012345678' })).status).toBe(401);
    expect((await api(tb, 'GET', '/v1/calls', undefined, { authorization: 'Basic secret-token-0123456789' })).status).toBe(401);
    expect((await api(tb, 'GET', '/v1/calls', undefined, { authorization: 'Bearer secret-token-0123456789' })).status).toBe(200);
  });

  it('fails closed without API_TOKEN outside local mode, and for non-loopback clients in local mode', async () => {
    const { tb } = await start({ TWILIO_ACCOUNT_SID: 'AC' + 'a'.repeat(32) });
    const r = await api(tb, 'GET', '/v1/calls');
    expect(r.status).toBe(401);
    expect(r.body.error).toMatchObject({ code: 'unauthorized', message: expect.stringMatching(/API_TOKEN/) });
    await tb.close();
    const local = await start();
    const remote = await local.tb.bridge.app.inject({ method: 'GET', url: '/v1/calls', remoteAddress: '203.0.113.9' });
    expect(remote.statusCode).toBe(401);
  });

  it('serves the OpenAPI document with the /v1 routes', async () => {
    const { tb } = await start();
    const r = await tb.bridge.app.inject({ method: 'GET', url: '/docs/json' });
    expect(r.statusCode).toBe(200);
    const docJson = JSON.parse(r.body) as { openapi: string; paths: Record<string, unknown> };
    expect(docJson.openapi).toBe('3.1.0');
    expect(Object.keys(docJson.paths)).toEqual(expect.arrayContaining(['/v1/calls', '/v1/calls/{id}', '/v1/campaigns', '/v1/campaigns/{id}/contacts']));
    expect(Object.keys(docJson.paths).some((p) => p.startsWith('/twilio'))).toBe(false);
  });
});

describe('status callbacks', () => {
  it('applies callbacks in SequenceNumber order and records every one, also out of order', async () => {
    const { tb, dialer } = await start();
    const r = await api(tb, 'POST', '/v1/calls', { to: '+14155550123' });
    await eventually(() => dialer.created.length === 1, 3000, 'the dial');
    const sid = dialer.created[0]!.sid;
    expect((await status(tb, r.body.id, sid, 'ringing', 1)).status).toBe(204);
    expect((await status(tb, r.body.id, sid, 'completed', 3, { CallDuration: '42' })).status).toBe(204);
    await status(tb, r.body.id, sid, 'in-progress', 2);
    await status(tb, r.body.id, sid, 'initiated', 0);
    const got = await api(tb, 'GET', `/v1/calls/${r.body.id}`);
    expect(got.body.status).toBe('completed');
    expect(got.body.outcome).toBe('answered');
    expect(got.body.durationSeconds).toBe(42);
    const seen = got.body.events.filter((e: any) => e.type === 'status').map((e: any) => `${e.status}:${e.sequence}`);
    expect(seen).toEqual(['ringing:1', 'completed:3', 'in-progress:2', 'initiated:0']);
  });

  it('refuses forged callbacks', async () => {
    const { tb } = await start();
    const res = await tb.bridge.app.inject({
      method: 'POST',
      url: '/twilio/status?callId=call_000000000aaaaaaaaaa',
      headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-twilio-signature': 'forged' },
      payload: 'CallSid=CA1&CallStatus=completed',
    });
    expect(res.statusCode).toBe(403);
  });
});

async function createCampaign(t: TestBridge, settings: Record<string, unknown>, contacts: unknown[], start = true) {
  const r = await api(t, 'POST', '/v1/campaigns', { name: 'test', settings, contacts, start });
  expect(r.status, JSON.stringify(r.body)).toBe(201);
  return r.body as { campaign: { id: string }; import: { added: number; errors: unknown[]; duplicates: unknown[] } };
}

const contact = (n: number, extra: Record<string, unknown> = {}) => ({ phone: `+1415555${String(1000 + n).slice(-4)}`, ...extra });

describe('campaigns', () => {
  it('fails invalid numbers without retry, retries 20429 without using an attempt, and pauses on bad credentials', async () => {
    const dialer = new FakeDialer();
    dialer.errorFor = (to) => (to === '+14155551001' ? new DialError('invalid-number', 'Invalid To', 21211, 400) : undefined);
    dialer.failNext.push(new DialError('rate-limited', 'Too many requests', 20429, 429));
    const { tb } = await start({}, dialer);
    const c = await createCampaign(tb, { callsPerSecond: 50, maxConcurrent: 5, retry: { maxAttempts: 3, on: ['failed'], delaySeconds: 0 } }, [contact(1), contact(2)]);
    await eventually(() => dialer.created.length === 1, 5000, 'the good contact dialed');
    const contacts = (await api(tb, 'GET', `/v1/campaigns/${c.campaign.id}/contacts`)).body.data as any[];
    const bad = contacts.find((x) => x.phone === '+14155551001');
    const good = contacts.find((x) => x.phone === '+14155551002');
    await eventually(async () => (await tb.bridge.campaigns.contact(bad.id))?.state === 'done', 3000, 'invalid number done');
    expect(await tb.bridge.campaigns.contact(bad.id)).toMatchObject({ outcome: 'invalid-number', attempts: 1 });
    // The 20429 attempt was voided: the good contact's one real dial is attempt 1.
    expect(await tb.bridge.campaigns.contact(good.id)).toMatchObject({ state: 'dialing', attempts: 1 });
    // One 20429 (not an attempt), one 21211 (the attempt), one dial that went through.
    expect(dialer.requests).toHaveLength(3);

    dialer.failNext.push(new DialError('auth', 'Authenticate', 20003, 401));
    await api(tb, 'POST', `/v1/campaigns/${c.campaign.id}/contacts`, { contacts: [contact(3)] });
    await eventually(async () => (await tb.bridge.campaigns.get(c.campaign.id))?.status === 'paused', 5000, 'paused on 20003');
    const camp = (await api(tb, 'GET', `/v1/campaigns/${c.campaign.id}`)).body;
    expect(camp.pauseReason).toBe('carrier_auth');
    expect(camp.lastError).toMatch(/20003/);
    const c3 = (await api(tb, 'GET', `/v1/campaigns/${c.campaign.id}/contacts?state=pending`)).body.data as any[];
    expect(c3.map((x) => x.phone)).toEqual(['+14155551003']);
    expect(c3[0].attempts).toBe(0);
  });

  it('retries by outcome up to maxAttempts and then settles the contact', async () => {
    const { tb, dialer } = await start();
    const c = await createCampaign(tb, { callsPerSecond: 50, retry: { maxAttempts: 2, on: ['busy'], delaySeconds: 0 } }, [contact(1), contact(2)]);
    const finish = async (n: number, s: string) => {
      await eventually(() => dialer.created.length >= n, 5000, `dial ${n}`);
      const d = dialer.created[n - 1]!;
      await status(tb, d.req.callId, d.sid, s, 5);
    };
    await finish(1, 'busy');
    await finish(2, 'no-answer');
    await finish(3, 'busy');
    await eventually(async () => (await tb.bridge.campaigns.get(c.campaign.id))?.status === 'completed', 5000, 'campaign completed');
    const contacts = (await api(tb, 'GET', `/v1/campaigns/${c.campaign.id}/contacts`)).body.data as any[];
    const byPhone = Object.fromEntries(contacts.map((x) => [x.phone, x]));
    const first = dialer.created[0]!.req.to;
    const second = dialer.created[1]!.req.to;
    expect(byPhone[first]).toMatchObject({ state: 'done', outcome: 'busy', attempts: 2 });
    expect(byPhone[second]).toMatchObject({ state: 'done', outcome: 'no-answer', attempts: 1 });
    expect(dialer.created).toHaveLength(3);
    const csv = (await api(tb, 'GET', `/v1/campaigns/${c.campaign.id}/results.csv`)).body as string;
    expect(csv.split('\n')[0]).toMatch(/^line,phone,state,outcome,attempts/);
    expect(csv).toContain(`${first},done,busy,2`);
  });

  it('honours the do-not-call list at dial time, and merges duplicate numbers', async () => {
    const { tb, dialer } = await start();
    await api(tb, 'POST', '/v1/dnc', { phone: '+14155551002', reason: 'asked' });
    const c = await createCampaign(tb, { callsPerSecond: 50 }, [contact(1), contact(2), contact(1)]);
    expect(c.import.added).toBe(2);
    expect(c.import.duplicates).toHaveLength(1);
    await eventually(() => dialer.created.length === 1, 5000, 'one dial');
    await new Promise((r) => setTimeout(r, 200));
    expect(dialer.requests.map((r) => r.to)).toEqual(['+14155551001']);
    const dnc = (await api(tb, 'GET', `/v1/campaigns/${c.campaign.id}/contacts?outcome=dnc`)).body.data as any[];
    expect(dnc.map((x) => x.phone)).toEqual(['+14155551002']);
  });

  it('takes a text/csv body with the campaign in the query, and multipart forms with one field per setting', async () => {
    const { tb, dialer } = await start();
    const csv = 'phone,name\n+14155551001,Ada\nnot-a-number,Bob\n';
    const settings = encodeURIComponent(JSON.stringify({ callsPerSecond: 50, prompt: 'Hi {{name}}' }));
    const r = await fetch(`${tb.url}/v1/campaigns?name=from-csv&start=true&settings=${settings}`, { method: 'POST', headers: { 'content-type': 'text/csv' }, body: csv });
    expect(r.status).toBe(201);
    const body = (await r.json()) as any;
    expect(body.campaign).toMatchObject({ name: 'from-csv', status: 'running' });
    expect(body.import).toMatchObject({ rows: 2, added: 1 });
    expect(body.import.errors).toEqual([expect.objectContaining({ line: 3, column: 'phone' })]);
    await eventually(() => dialer.created.length === 1, 3000, 'the dial');
    expect((await tb.bridge.calls.get(dialer.created[0]!.req.callId))?.prompt).toBe('Hi Ada');

    const form = new FormData();
    form.set('name', 'from-form');
    form.set('callsPerSecond', '2');
    form.set('maxConcurrent', '3');
    form.set('voicemail', '{"action":"hangup"}');
    form.set('contacts', new Blob(['number\n+14155551002\n'], { type: 'text/csv' }), 'c.csv');
    const m = await fetch(`${tb.url}/v1/campaigns`, { method: 'POST', body: form });
    expect(m.status).toBe(201);
    const mb = (await m.json()) as any;
    expect(mb.campaign.status).toBe('draft');
    expect(mb.campaign.settings).toMatchObject({ callsPerSecond: 2, maxConcurrent: 3, voicemail: { action: 'hangup' } });
    expect(mb.import.added).toBe(1);
    const badForm = new FormData();
    badForm.set('name', 'bad');
    badForm.set('callsPerSecond', 'fast');
    const bad = await fetch(`${tb.url}/v1/campaigns`, { method: 'POST', body: badForm });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as any).error.message).toMatch(/callsPerSecond/);
  });

  it('fills templates per contact and reports rows missing a variable with their line', async () => {
    const { tb, dialer } = await start();
    const c = await createCampaign(tb, { callsPerSecond: 50, prompt: 'Call {{name}} about order {{order}}.' }, [
      contact(1, { variables: { name: 'Ada', order: '7' } }),
      contact(2, { variables: { name: 'Bob' } }),
    ]);
    expect(c.import.added).toBe(1);
    expect(c.import.errors).toEqual([expect.objectContaining({ line: 2 })]);
    await eventually(() => dialer.created.length === 1, 5000, 'dial');
    expect((await tb.bridge.calls.get(dialer.created[0]!.req.callId))?.prompt).toBe('Call Ada about order 7.');
  });

  it('leaves contacts outside the calling window for the next window', async () => {
    const { tb, dialer } = await start();
    const now = new Date();
    // A window that closed an hour ago (UTC), every day.
    const h = (now.getUTCHours() + 22) % 24;
    const hh = (x: number) => String(x).padStart(2, '0');
    const c = await createCampaign(tb, { callsPerSecond: 50, window: { days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], start: `${hh(h)}:00`, end: `${hh(h)}:30`, timezone: 'UTC' } }, [contact(1)]);
    await new Promise((r) => setTimeout(r, 300));
    expect(dialer.created).toHaveLength(0);
    const [ct] = (await api(tb, 'GET', `/v1/campaigns/${c.campaign.id}/contacts`)).body.data as any[];
    expect(Date.parse(ct.nextAttemptAt)).toBeGreaterThan(Date.now() + 20 * 3600_000);
  });

  it('never takes the INBOUND_RESERVED slots and keeps maxConcurrent', async () => {
    const { tb, dialer } = await start({ MAX_CONCURRENT_CALLS: '4', INBOUND_RESERVED: '1' });
    await createCampaign(tb, { callsPerSecond: 50, maxConcurrent: 10 }, [1, 2, 3, 4, 5, 6].map((n) => contact(n)));
    await eventually(() => dialer.created.length === 3, 5000, 'three dials');
    await new Promise((r) => setTimeout(r, 300));
    expect(dialer.created).toHaveLength(3);
    expect(tb.bridge.manager.usedSlots).toBe(3);
    expect(tb.bridge.manager.outboundSlots).toBe(3);
    // An inbound call still gets in on the reserved slot.
    const res = await twilioPost(tb, '/twilio/voice', { CallSid: 'CA' + 'b'.repeat(32), From: '+14155550000', To: '+14155559999' });
    expect(res.body).toContain('<Connect>');
    const d = dialer.created[0]!;
    await status(tb, d.req.callId, d.sid, 'no-answer', 3);
    await eventually(() => dialer.created.length === 4, 5000, 'a fourth dial after one ended');
  });

  it('stops dialing while a PlayAI 4429 has lowered the capacity, and goes on when it lifts', async () => {
    const { tb, dialer } = await start({ AGENT_CAPACITY_COOLDOWN_S: '1' });
    // The agent account said it is full with no agent session open here: capacity 0 for the cooldown.
    tb.bridge.manager.noteAgentCapacityExceeded();
    expect(tb.bridge.manager.capacity).toBe(0);
    await createCampaign(tb, { callsPerSecond: 50 }, [contact(1)]);
    await new Promise((r) => setTimeout(r, 500));
    expect(dialer.created).toHaveLength(0);
    await eventually(() => dialer.created.length === 1, 3000, 'the dial after the cooldown');
  });

  it('pauses automatically when failures spike', async () => {
    const { tb, dialer } = await start();
    const c = await createCampaign(tb, { callsPerSecond: 50, maxConcurrent: 10, retry: { maxAttempts: 1 }, failurePause: { threshold: 0.5, minCalls: 4, windowSeconds: 60 } }, [1, 2, 3, 4, 5, 6, 7, 8].map((n) => contact(n)));
    await eventually(() => dialer.created.length === 8, 5000, 'eight dials');
    for (const d of dialer.created.slice(0, 4)) await status(tb, d.req.callId, d.sid, 'failed', 5);
    const camp = (await api(tb, 'GET', `/v1/campaigns/${c.campaign.id}`)).body;
    expect(camp.status).toBe('paused');
    expect(camp.pauseReason).toBe('failure_spike');
  });

  it('on a machine: hangs up, or leaves the message after the beep', async () => {
    const { tb, dialer } = await start();
    const a = await createCampaign(tb, { callsPerSecond: 50, voicemail: { action: 'message', message: 'Please call us back.' } }, [contact(1)]);
    await eventually(() => dialer.created.length === 1, 5000, 'dial');
    const d = dialer.created[0]!;
    expect(d.req.machineDetection).toBe('DetectMessageEnd');
    expect(d.req.amdCallback).toBe(`${PUBLIC_URL}/twilio/amd?callId=${d.req.callId}`);
    expect((await twilioPost(tb, `/twilio/amd?callId=${d.req.callId}`, { CallSid: d.sid, AnsweredBy: 'machine_end_beep', MachineDetectionDuration: '3100' })).status).toBe(204);
    await eventually(() => dialer.said.length === 1, 2000, 'the message');
    expect(dialer.said[0]).toEqual({ sid: d.sid, text: 'Please call us back.' });
    await status(tb, d.req.callId, d.sid, 'completed', 4, { CallDuration: '9' });
    await eventually(async () => (await tb.bridge.campaigns.get(a.campaign.id))?.status === 'completed', 3000, 'completed');
    const [ct] = (await api(tb, 'GET', `/v1/campaigns/${a.campaign.id}/contacts`)).body.data as any[];
    expect(ct.outcome).toBe('voicemail');

    await createCampaign(tb, { callsPerSecond: 50, voicemail: { action: 'hangup' } }, [contact(2)]);
    await eventually(() => dialer.created.length === 2, 5000, 'dial 2');
    const d2 = dialer.created[1]!;
    expect(d2.req.machineDetection).toBe('Enable');
    await twilioPost(tb, `/twilio/amd?callId=${d2.req.callId}`, { CallSid: d2.sid, AnsweredBy: 'human' });
    await new Promise((r) => setTimeout(r, 100));
    expect(dialer.hangups).toHaveLength(0);
    await twilioPost(tb, `/twilio/amd?callId=${d2.req.callId}`, { CallSid: d2.sid, AnsweredBy: 'machine_start' });
    await eventually(() => dialer.hangups.includes(d2.sid), 2000, 'hangup on a machine');
  });
});

describe('crash reconciliation', () => {
  it('attaches a claimed attempt the carrier did create, and re-queues one it never saw, without using an attempt', async () => {
    const db = openDb(':memory:');
    const dialer = new FakeDialer();
    const first = await start({}, dialer, db);
    const t1 = first.tb;
    t1.bridge.outbound.pauseDialing();
    const c = await createCampaign(t1, { callsPerSecond: 50, retry: { maxAttempts: 1 } }, [contact(1), contact(2)]);
    // What a crash between the claim and the carrier's answer leaves behind.
    const rows = await t1.bridge.campaigns.contacts(c.campaign.id, { limit: 10 });
    const claimed = await Promise.all(
      rows.map((ct) =>
        t1.bridge.calls.transaction(async ({ calls, campaigns }) => {
          const call = await calls.insert({ direction: 'outbound', to: ct.phone, from: '+12025550100', agentId: 'agent-default', campaignId: c.campaign.id, contactId: ct.id, attempt: 1, status: 'claimed', claimedAt: Date.now() });
          await campaigns.updateContact(ct.id, { state: 'dialing', attempts: 1, lastCallId: call.id });
          return call;
        }),
      ),
    );
    // The carrier got the first request; the second never left the process.
    const injected = dialer.inject({ callId: claimed[0]!.id, to: claimed[0]!.to, from: claimed[0]!.from, url: '', statusCallback: '', timeoutS: 30 });
    const t1Close = t1.close.bind(t1);
    await t1.bridge.outbound.stop();
    tb = undefined;
    // "Restart" on the same database.
    const second = await startTestBridge({ env: { OUTBOUND_MAX_CPS: '50' }, overrides: { dialer }, db });
    tb = second;
    await eventually(() => dialer.created.length === 2, 5000, 'the re-queued contact dialed');
    expect((await second.bridge.calls.get(claimed[0]!.id))?.callSid).toBe(injected.sid);
    expect((await second.bridge.calls.get(claimed[1]!.id))?.status).toBe('not-dialed');
    const dialedTo = dialer.created.map((d) => d.req.to).sort();
    expect(dialedTo).toEqual(['+14155551001', '+14155551002']);
    const ct2 = (await second.bridge.campaigns.contact(rows[1]!.id))!;
    expect(ct2.attempts).toBe(1);
    await t1Close().catch(() => undefined);
  });

  it('keeps a claimed attempt when the carrier cannot be asked, and never dials it again meanwhile', async () => {
    const db = openDb(':memory:');
    const dialer = new FakeDialer();
    dialer.unreachable = true;
    const { tb: t } = await start({}, dialer, db);
    t.bridge.outbound.pauseDialing();
    const c = await createCampaign(t, { callsPerSecond: 50 }, [contact(1)]);
    const [ct] = await t.bridge.campaigns.contacts(c.campaign.id, { limit: 1 });
    await t.bridge.calls.transaction(async ({ calls, campaigns }) => {
      const call = await calls.insert({ direction: 'outbound', to: ct!.phone, from: '+12025550100', agentId: 'a', campaignId: c.campaign.id, contactId: ct!.id, attempt: 1, status: 'claimed', claimedAt: Date.now() });
      await campaigns.updateContact(ct!.id, { state: 'dialing', attempts: 1, lastCallId: call.id });
    });
    const r = await t.bridge.outbound.reconcile();
    expect(r).toMatchObject({ kept: 1, voided: 0 });
    expect((await t.bridge.campaigns.contact(ct!.id))?.state).toBe('dialing');
    expect(dialer.created).toHaveLength(0);
  });
});
