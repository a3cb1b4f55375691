/**
 * TwilioDialer (the real `twilio` client) against FakeTwilioRest, whose calls
 * run against an in-process bridge: create, fetch, list, hang-ups, TwiML
 * updates, and the mapping of Twilio errors to DialError kinds.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import twilio from 'twilio';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Outcome, SimCallInfo, SimTiming } from '../src/sim/simCarrier.js';
import { DialError, type DialRequest } from '../src/outbound/dialer.js';
import { TwilioDialer } from '../src/outbound/twilioDialer.js';
import { RedirectingRequestClient } from '../src/carrier/twilio/callControl.js';
import { FakeTwilioRest } from '../src/testing/fakeTwilioRest.js';
import { AUTH_TOKEN, PUBLIC_URL, eventually, startTestBridge, type TestBridge, dialRequest } from './helpers.js';

const FAST: Partial<SimTiming> = { initiatedMs: 0, ringingMs: 10, noAnswerMaxMs: 10_000, amdHumanMs: 100, amdMachineStartMs: 150, sayMsPerChar: 1, sayMinMs: 20, sayMaxMs: 100 };

const RINGING = '+15550001000'; // no-answer: rings until hung up
const LONG = '+15550001001'; // answered, callee stays long
const VOICEMAIL = '+15550001002';
const ERRORS: Record<string, { code: number; status: number }> = {
  '+15550002111': { code: 21211, status: 400 },
  '+15550002115': { code: 21215, status: 400 },
  '+15550002117': { code: 21217, status: 400 },
  '+15550002119': { code: 21219, status: 400 },
  '+15550002210': { code: 21210, status: 400 },
  '+15550002500': { code: 20500, status: 500 },
};
const RATE_LIMITED = '+15550002429';

let tb: TestBridge;
let rest: FakeTwilioRest;
let dialer: TwilioDialer;
let n = 0;

beforeAll(async () => {
  tb = await startTestBridge({ agent: { autoInit: true } });
  const outcomes: Record<string, Outcome> = { [RINGING]: 'no-answer', [VOICEMAIL]: 'voicemail' };
  rest = await FakeTwilioRest.start({
    bridgeUrl: tb.url,
    publicUrl: PUBLIC_URL,
    authToken: AUTH_TOKEN,
    talkMs: 800,
    talkMsFor: (to) => (to === LONG ? 30_000 : undefined),
    ringMs: [20, 40],
    timing: FAST,
    outcomeFor: (to) => outcomes[to] ?? 'answered',
    errorFor: (to) => ERRORS[to],
    rateLimit: { reject: (_n, to) => to === RATE_LIMITED },
  });
  dialer = new TwilioDialer({ accountSid: rest.accountSid, authToken: AUTH_TOKEN, apiUrl: rest.url });
});

afterAll(async () => {
  await rest.close();
  await tb.close();
});

function request(extra: Partial<DialRequest> = {}): DialRequest {
  return dialRequest(`rest-${++n}`, extra);
}

async function ended(r: FakeTwilioRest, sid: string): Promise<SimCallInfo> {
  const info = await r.whenEnded(sid);
  if (info === undefined) throw new Error(`unknown call ${sid}`);
  return info;
}

async function dialError(p: Promise<unknown>): Promise<DialError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof DialError) return err;
    throw err;
  }
  throw new Error('expected a DialError');
}

describe('TwilioDialer against FakeTwilioRest', () => {
  it('create places the call: the fake runs it against the bridge like Twilio', async () => {
    const req = request();
    const created = await dialer.create(req);
    expect(created.sid).toMatch(/^CA[0-9a-f]{32}$/);
    expect(created).toMatchObject({ status: 'queued', to: req.to, from: req.from });
    expect(Math.abs((created.createdAt ?? 0) - Date.now())).toBeLessThan(3000);

    const rec = rest.creates.at(-1);
    expect(rec?.httpStatus).toBe(201);
    expect(rec?.params).toMatchObject({
      To: req.to,
      From: req.from,
      Url: req.url,
      Method: 'POST',
      StatusCallback: req.statusCallback,
      StatusCallbackEvent: ['initiated', 'ringing', 'answered', 'completed'],
      StatusCallbackMethod: 'POST',
      Timeout: '30',
    });
    expect(rec?.params.MachineDetection).toBeUndefined();

    const agent = await tb.agent.nextConnection(5000);
    await agent.waitForAudioIn(5, 5000);
    const info = await ended(rest, created.sid);
    expect(info.status).toBe('completed');
    expect(info.events.map((e) => [e.callStatus, e.sequence, e.httpStatus])).toEqual([
      ['initiated', 0, 204],
      ['ringing', 1, 204],
      ['in-progress', 2, 204],
      ['completed', 3, 204],
    ]);
    expect(info.events[0]?.params.AccountSid).toBe(rest.accountSid);

    const fetched = await dialer.fetch(created.sid);
    expect(fetched).toMatchObject({ sid: created.sid, status: 'completed', to: req.to, from: req.from });
    expect(fetched?.durationS).toBeGreaterThanOrEqual(1);
    expect(await dialer.fetch('CA0123456789abcdef0123456789abcdef')).toBeUndefined();
  });

  it('sends async AMD and the time limit; the AMD result shows on the call', async () => {
    const req = request({ to: VOICEMAIL, machineDetection: 'Enable', timeLimitS: 120 });
    const created = await dialer.create({ ...req, amdCallback: `${PUBLIC_URL}/twilio/amd?callId=${req.callId}` });
    expect(rest.creates.at(-1)?.params).toMatchObject({
      MachineDetection: 'Enable',
      AsyncAmd: 'true',
      AsyncAmdStatusCallback: `${PUBLIC_URL}/twilio/amd?callId=${req.callId}`,
      AsyncAmdStatusCallbackMethod: 'POST',
      TimeLimit: '120',
    });
    await eventually(() => rest.call(created.sid)?.answeredBy !== undefined, 3000, 'AMD decided');
    expect((await dialer.fetch(created.sid))?.answeredBy).toBe('machine_start');
    expect(rest.call(created.sid)?.amd?.params).toMatchObject({ CallSid: created.sid, AnsweredBy: 'machine_start', MachineDetectionDuration: '150' });
    await dialer.sayAndHangup(created.sid, 'Sorry we missed you.');
    const info = await ended(rest, created.sid);
    expect(info.said).toEqual(['Sorry we missed you.']);
    expect(info.status).toBe('completed');
  });

  it('maps Twilio errors to DialError kinds', async () => {
    const before = rest.calls().length;
    for (const to of ['+15550002111', '+15550002115', '+15550002117', '+15550002119']) {
      const e = await dialError(dialer.create(request({ to })));
      expect(e).toMatchObject({ kind: 'invalid-number', code: ERRORS[to]?.code, httpStatus: 400 });
    }
    expect(await dialError(dialer.create(request({ to: '+15550002210' })))).toMatchObject({ kind: 'rejected', code: 21210, httpStatus: 400 });
    expect(await dialError(dialer.create(request({ to: '+15550002500' })))).toMatchObject({ kind: 'unknown', code: 20500, httpStatus: 500 });
    // 429: not processed, try again later.
    expect(await dialError(dialer.create(request({ to: RATE_LIMITED })))).toMatchObject({ kind: 'rate-limited', code: 20429, httpStatus: 429 });
    // A malformed number the fake itself refuses, like Twilio.
    expect(await dialError(dialer.create(request({ to: '12345' })))).toMatchObject({ kind: 'invalid-number', code: 21211 });
    expect(rest.calls().length).toBe(before);

    const wrong = new TwilioDialer({ accountSid: rest.accountSid, authToken: 'wrong-token', apiUrl: rest.url });
    expect(await dialError(wrong.create(request()))).toMatchObject({ kind: 'auth', code: 20003, httpStatus: 401 });
    expect(await dialError(wrong.fetch('CA0123456789abcdef0123456789abcdef'))).toMatchObject({ kind: 'auth' });
    expect(await dialError(wrong.findRecent('+15551230001', '+15557654321', 0))).toMatchObject({ kind: 'auth' });

    const down = new TwilioDialer({ accountSid: rest.accountSid, authToken: AUTH_TOKEN, apiUrl: 'http://127.0.0.1:1' });
    const e = await dialError(down.create(request()));
    expect(e.kind).toBe('unknown');
    expect(e.httpStatus).toBeUndefined();
    expect((await dialError(down.hangup('CA0123456789abcdef0123456789abcdef'))).kind).toBe('unknown');

    const badSid = new TwilioDialer({ accountSid: 'not-an-account', authToken: AUTH_TOKEN, apiUrl: rest.url });
    expect((await dialError(badSid.create(request()))).kind).toBe('auth');
  });

  it('findRecent lists calls to/from a number since a time (second resolution), newest first', async () => {
    const to = '+15550003001';
    const t0 = Date.now();
    const a = await dialer.create(request({ to }));
    const b = await dialer.create(request({ to }));
    await dialer.create(request({ to: '+15550003002' }));
    const found = await dialer.findRecent(to, '+15557654321', t0);
    expect(found.map((c) => c.sid)).toEqual([b.sid, a.sid]);
    // `since` later in the same second as date_created still matches.
    expect((await dialer.findRecent(to, '+15557654321', (b.createdAt ?? 0) + 999)).map((c) => c.sid)).toContain(b.sid);
    expect(await dialer.findRecent(to, '+15557654321', Date.now() + 2000)).toEqual([]);
    expect(await dialer.findRecent(to, '+15550000000', t0)).toEqual([]);
    await Promise.all([a, b].map((c) => ended(rest, c.sid)));
  });

  it('the list pages like Twilio (next_page_uri)', async () => {
    const client = twilio(rest.accountSid, AUTH_TOKEN, { httpClient: new RedirectingRequestClient(rest.url, {}) });
    const to = '+15550004001';
    const sids: string[] = [];
    for (let i = 0; i < 3; i++) sids.push((await dialer.create(request({ to }))).sid);
    const listed = await client.calls.list({ to, pageSize: 2 });
    expect(listed.map((c) => c.sid).sort()).toEqual([...sids].sort());
    expect(listed[0]?.direction).toBe('outbound-api');
    expect(listed[0]?.dateCreated).toBeInstanceOf(Date);
    await Promise.all(sids.map((sid) => ended(rest, sid)));
  });

  it('hangup: a ringing call is canceled, an answered one completed; an ended one is left alone', async () => {
    const ringing = await dialer.create(request({ to: RINGING }));
    await eventually(() => rest.call(ringing.sid)?.status === 'ringing', 3000, 'ringing');
    await dialer.hangup(ringing.sid);
    const r = await ended(rest, ringing.sid);
    expect(r.status).toBe('canceled');
    expect(r.events.map((e) => e.callStatus)).toEqual(['initiated', 'ringing', 'canceled']);

    const long = await dialer.create(request({ to: LONG }));
    await eventually(() => tb.bridge.manager.getSession(long.sid) !== undefined && (rest.call(long.sid)?.streamSid ?? '') !== '', 5000, 'stream up');
    await dialer.hangup(long.sid);
    const l = await ended(rest, long.sid);
    expect(l.status).toBe('completed');
    expect(l.endedBy).toBe('hangup');
    await eventually(() => tb.bridge.manager.getSession(long.sid) === undefined, 3000, 'session over');

    await dialer.hangup(long.sid); // already over: no error
    await expect(dialer.sayAndHangup(long.sid, 'too late')).rejects.toMatchObject({ kind: 'rejected', code: 21220 });
    await expect(dialer.hangup('CA0123456789abcdef0123456789abcdef')).rejects.toMatchObject({ kind: 'rejected', code: 20404, httpStatus: 404 });
  });
});

describe('FakeTwilioRest', () => {
  it('rate limit per second refuses creates with 429/20429 and records pacing', async () => {
    const fake = await FakeTwilioRest.start({ bridgeUrl: 'http://127.0.0.1:1', ringMs: [5000, 5000], rateLimit: { perSecond: 2 } });
    try {
      const d = new TwilioDialer({ accountSid: fake.accountSid, authToken: fake.authToken, apiUrl: fake.url });
      await d.create(request());
      await d.create(request());
      expect(await dialError(d.create(request()))).toMatchObject({ kind: 'rate-limited', code: 20429 });
      expect(fake.creates.map((c) => c.httpStatus)).toEqual([201, 201, 429]);
      expect(fake.maxCreatesInWindow(1000)).toBe(2);
      expect(fake.maxLive).toBe(2);
    } finally {
      await fake.close();
    }
    expect(fake.simulator.resources()).toEqual({ liveCalls: 0, timers: 0, streams: 0, requests: 0, waiters: 0 });
  });

  it('survives the bridge being down: failed deliveries are recorded; setBridgeUrl points it at the bridge again', async () => {
    const fake = await FakeTwilioRest.start({ bridgeUrl: 'http://127.0.0.1:1', publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, talkMs: 500, ringMs: [10, 20], timing: FAST });
    try {
      const d = new TwilioDialer({ accountSid: fake.accountSid, authToken: AUTH_TOKEN, apiUrl: fake.url });
      const lost = await d.create(request());
      const info = await ended(fake, lost.sid);
      expect(info.events.every((e) => e.httpStatus === 0)).toBe(true);
      expect(info.errorCode).toBe(11200);

      fake.setBridgeUrl(tb.url);
      const ok = await d.create(request());
      await tb.agent.nextConnection(5000);
      const okInfo = await ended(fake, ok.sid);
      expect(okInfo.events.map((e) => e.httpStatus)).toEqual([204, 204, 204, 204]);
      expect(okInfo.errorCode).toBeUndefined();
    } finally {
      await fake.close();
    }
  });

  it('POST Calls/{sid}.json with Url redirects a live call; Twiml on an ended call is 21220', async () => {
    const hits: string[] = [];
    const stub = createServer((req, res) => {
      hits.push(req.url ?? '');
      req.resume();
      req.on('end', () => res.writeHead(200, { 'content-type': 'text/xml' }).end('<Response><Say>Redirected.</Say><Hangup/></Response>'));
    });
    await new Promise<void>((resolve) => stub.listen(0, '127.0.0.1', resolve));
    const stubUrl = `http://127.0.0.1:${(stub.address() as AddressInfo).port}`;
    try {
      const client = twilio(rest.accountSid, AUTH_TOKEN, { httpClient: new RedirectingRequestClient(rest.url, {}) });
      const created = await dialer.create(request({ to: LONG }));
      await eventually(() => tb.bridge.manager.getSession(created.sid) !== undefined, 5000, 'stream up');
      const updated = await client.calls(created.sid).update({ url: `${stubUrl}/next?x=1`, method: 'POST' });
      expect(updated.status).toBe('in-progress');
      const info = await ended(rest, created.sid);
      expect(hits).toEqual(['/next?x=1']);
      expect(info.said).toEqual(['Redirected.']);
      await expect(client.calls(created.sid).update({ twiml: '<Response><Hangup/></Response>' })).rejects.toMatchObject({ code: 21220, status: 400 });
      await expect(client.calls('CA0123456789abcdef0123456789abcdef').fetch()).rejects.toMatchObject({ code: 20404, status: 404 });
    } finally {
      await new Promise<void>((resolve) => {
        stub.close(() => resolve());
        stub.closeAllConnections();
      });
    }
  });

  it('only the requested status events are posted (Twilio default: completed)', async () => {
    const fake = await FakeTwilioRest.start({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, ringMs: [10, 20], timing: FAST, outcomeFor: () => 'busy' });
    try {
      const client = twilio(fake.accountSid, AUTH_TOKEN, { httpClient: new RedirectingRequestClient(fake.url, {}) });
      const r = request();
      const call = await client.calls.create({ to: r.to, from: r.from, url: r.url, statusCallback: r.statusCallback });
      expect(call.status).toBe('queued');
      const info = await ended(fake, call.sid);
      expect(info.events.map((e) => [e.callStatus, e.sequence])).toEqual([['busy', 0]]);
      const fetched = await client.calls(call.sid).fetch();
      expect(fetched.status).toBe('busy');
      expect(fetched.duration).toBe('0');
    } finally {
      await fake.close();
    }
  });
});
