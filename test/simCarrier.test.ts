/**
 * The simulated carrier against a real in-process bridge: outcomes, status
 * callbacks (fields, order, SequenceNumber), the media stream with callee
 * audio, hang-ups, TwiML updates, AMD callbacks, failures, and a clean close().
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import twilio from 'twilio';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { postStatusCallback, postVoiceWebhook } from '../src/sim/twilioSim.js';
import { LocalDialer, type LocalDialerOptions, type Outcome, type SimCallInfo, type SimTiming } from '../src/sim/simCarrier.js';
import type { DialRequest } from '../src/outbound/dialer.js';
import { AUTH_TOKEN, PUBLIC_URL, eventually, startTestBridge, storedCall, type TestBridge, dialRequest } from './helpers.js';

const FAST: Partial<SimTiming> = {
  initiatedMs: 0,
  ringingMs: 10,
  noAnswerMaxMs: 300,
  amdHumanMs: 100,
  amdMachineStartMs: 150,
  amdMachineEndMs: 250,
  sayMsPerChar: 1,
  sayMinMs: 20,
  sayMaxMs: 100,
};
const RFC2822 = /^(Mon|Tue|Wed|Thu|Fri|Sat|Sun), \d{2} (Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \d{4} \d{2}:\d{2}:\d{2} \+0000$/;

let tb: TestBridge;
const dialers: LocalDialer[] = [];
let n = 0;

beforeAll(async () => {
  tb = await startTestBridge({ agent: { autoInit: true } });
});
afterEach(async () => {
  await Promise.all(dialers.splice(0).map((d) => d.close()));
});
afterAll(async () => {
  await tb.close();
});

function dialer(opts: Partial<LocalDialerOptions> = {}): LocalDialer {
  const d = new LocalDialer({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, talkMs: 800, ringMs: [20, 40], seed: 1, timing: FAST, ...opts });
  dialers.push(d);
  return d;
}

function request(extra: Partial<DialRequest> = {}): DialRequest {
  return dialRequest(`sim-${++n}`, extra);
}

async function ended(d: LocalDialer, sid: string): Promise<SimCallInfo> {
  const info = await d.simulator.whenEnded(sid);
  if (info === undefined) throw new Error(`unknown call ${sid}`);
  return info;
}

const statuses = (info: SimCallInfo): string[] => info.events.map((e) => e.callStatus ?? '?');

/** A tiny HTTP stub recording requests and answering with `answer`. */
async function startStub(answer: (req: IncomingMessage) => { status: number; type?: string; body?: string } = () => ({ status: 204 })) {
  const requests: Array<{ url: string; headers: IncomingMessage['headers']; params: Record<string, string> }> = [];
  const server: Server = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      requests.push({ url: req.url ?? '', headers: req.headers, params: Object.fromEntries(new URLSearchParams(body)) });
      const a = answer(req);
      res.writeHead(a.status, a.type ? { 'content-type': a.type } : {});
      res.end(a.body ?? '');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

describe('LocalDialer against the bridge', () => {
  it('async answered: streams callee audio, then the callee hangs up; four signed callbacks in order', async () => {
    const d = dialer({ talkMs: 1000 });
    const req = request();
    const created = await d.create(req);
    expect(created.sid).toMatch(/^CA[0-9a-f]{32}$/);
    expect(created).toMatchObject({ status: 'queued', to: req.to, from: req.from });
    expect(typeof created.createdAt).toBe('number');

    const agent = await tb.agent.nextConnection(5000);
    const frames = await agent.waitForAudioIn(10, 5000);
    // The callee says something: the first frames are not digital silence.
    expect(frames.some((f) => Buffer.from(f, 'base64').some((b) => b !== 0xff))).toBe(true);

    const info = await ended(d, created.sid);
    expect(info.status).toBe('completed');
    expect(info.endedBy).toBe('callee');
    expect(info.errorCode).toBeUndefined();
    expect(statuses(info)).toEqual(['initiated', 'ringing', 'in-progress', 'completed']);
    expect(info.events.map((e) => e.event)).toEqual(['initiated', 'ringing', 'answered', 'completed']);
    expect(info.events.map((e) => e.sequence)).toEqual([0, 1, 2, 3]);
    // Signed with the query string: the bridge accepted every one.
    expect(info.events.map((e) => e.httpStatus)).toEqual([204, 204, 204, 204]);
    expect(info.twimlRequests).toEqual([{ url: req.url, httpStatus: 200 }]);
    for (const e of info.events) {
      expect(e.url).toBe(req.statusCallback);
      expect(e.params).toMatchObject({
        CallSid: created.sid,
        From: req.from,
        To: req.to,
        Direction: 'outbound-api',
        ApiVersion: '2010-04-01',
        CallbackSource: 'call-progress-events',
        SequenceNumber: String(e.sequence),
      });
      expect(e.params.AccountSid).toMatch(/^AC[0-9a-f]{32}$/);
      expect(e.params.Timestamp).toMatch(RFC2822);
    }
    const last = info.events[3]?.params ?? {};
    expect(Number(last.CallDuration)).toBeGreaterThanOrEqual(1);
    expect(last.SipResponseCode).toBe('200');
    expect(info.events[0]?.params.CallDuration).toBeUndefined();
    expect(info.framesSent).toBeGreaterThan(25);
    expect(info.streamSid).toMatch(/^MZ/);

    // The bridge saw the call end (stop from the callee), and recorded the callbacks.
    await agent.closed;
    await eventually(async () => (await storedCall(tb, created.sid))?.status === 'completed', 3000, 'bridge record completed');
    const fetched = await d.fetch(created.sid);
    expect(fetched).toMatchObject({ sid: created.sid, status: 'completed', to: req.to, from: req.from });
    expect(fetched?.durationS).toBeGreaterThanOrEqual(1);
  });

  it('busy, no-answer and failed end the call after ringing with the right status and SIP code', async () => {
    const by: Record<string, Outcome> = { '+15550000001': 'busy', '+15550000002': 'no-answer', '+15550000003': 'failed' };
    const d = dialer({ outcomeFor: (to) => by[to] ?? 'answered' });
    const t0 = Date.now();
    const sids = await Promise.all(Object.keys(by).map(async (to) => (await d.create(request({ to, timeoutS: 1 }))).sid));
    const infos = await Promise.all(sids.map((sid) => ended(d, sid)));
    expect(infos.map((i) => i.status)).toEqual(['busy', 'no-answer', 'failed']);
    expect(infos.map((i) => i.outcome)).toEqual(['busy', 'no-answer', 'failed']);
    for (const info of infos) {
      expect(info.endedBy).toBe('carrier');
      expect(statuses(info)).toEqual(['initiated', 'ringing', info.status]);
      expect(info.events.map((e) => e.sequence)).toEqual([0, 1, 2]);
      expect(info.events.every((e) => e.httpStatus === 204)).toBe(true);
      expect(info.events[2]?.params.CallDuration).toBe('0');
      expect(info.twimlRequests).toEqual([]);
      expect(info.answeredAt).toBeUndefined();
    }
    expect(infos.map((i) => i.events[2]?.params.SipResponseCode)).toEqual(['486', '487', '404']);
    // no-answer rings min(timeoutS, noAnswerMaxMs) = 300 ms here
    expect((infos[1]?.endedAt ?? 0) - t0).toBeGreaterThanOrEqual(280);
    expect(d.stats()).toMatchObject({ created: 3, live: 0, maxConcurrent: 3 });
  });

  it('hangup while ringing cancels the call', async () => {
    const d = dialer({ ringMs: [5000, 5000] });
    const { sid } = await d.create(request());
    await eventually(() => d.simulator.get(sid)?.status === 'ringing', 2000, 'ringing');
    await d.hangup(sid);
    const info = await ended(d, sid);
    expect(info.status).toBe('canceled');
    expect(info.endedBy).toBe('hangup');
    expect(statuses(info)).toEqual(['initiated', 'ringing', 'canceled']);
    expect(info.events[2]?.params.SipResponseCode).toBe('487');
    expect((await d.fetch(sid))?.status).toBe('canceled');
    // Hanging up an ended call is a no-op.
    await d.hangup(sid);
    expect(d.calls()[0]?.events.length).toBe(3);
  });

  it('hangup in progress: the carrier sends stop and closes the stream; completed', async () => {
    const d = dialer({ talkMs: 30_000 });
    const { sid } = await d.create(request());
    const agent = await tb.agent.nextConnection(5000);
    await agent.waitForAudioIn(5, 5000);
    expect((await d.fetch(sid))?.status).toBe('in-progress');
    await d.hangup(sid);
    const info = await ended(d, sid);
    expect(info.status).toBe('completed');
    expect(info.endedBy).toBe('hangup');
    expect(statuses(info)).toEqual(['initiated', 'ringing', 'in-progress', 'completed']);
    await agent.closed;
    await eventually(() => tb.bridge.manager.getSession(sid) === undefined, 3000, 'session gone');
  });

  it('sayAndHangup tears the stream down, says the text, then completes', async () => {
    const d = dialer({ talkMs: 30_000 });
    const { sid } = await d.create(request());
    const agent = await tb.agent.nextConnection(5000);
    await agent.waitForAudioIn(3, 5000);
    await d.sayAndHangup(sid, 'Hello, this is a message for you.');
    const info = await ended(d, sid);
    expect(info.said).toEqual(['Hello, this is a message for you.']);
    expect(info.status).toBe('completed');
    expect(statuses(info)).toEqual(['initiated', 'ringing', 'in-progress', 'completed']);
    await agent.closed;
    // Too late now: Twilio's 21220.
    await expect(d.sayAndHangup(sid, 'again')).rejects.toMatchObject({ name: 'DialError', kind: 'rejected', code: 21220 });
    await expect(d.hangup('CA00000000000000000000000000000000')).rejects.toMatchObject({ kind: 'rejected', code: 20404 });
  });

  it('the bridge ends the call (agent hangup closes the stream): completed, ended by the bridge', async () => {
    const d = dialer({ talkMs: 30_000 });
    const { sid } = await d.create(request());
    const agent = await tb.agent.nextConnection(5000);
    await agent.waitForAudioIn(3, 5000);
    agent.hangup();
    const info = await ended(d, sid);
    expect(info.status).toBe('completed');
    expect(info.endedBy).toBe('bridge');
    expect(statuses(info)).toEqual(['initiated', 'ringing', 'in-progress', 'completed']);
  });

  it('time limit ends an answered call', async () => {
    const d = dialer({ talkMs: 30_000 });
    const { sid } = await d.create(request({ timeLimitS: 1 }));
    const info = await ended(d, sid);
    expect(info.endedBy).toBe('time-limit');
    expect(info.status).toBe('completed');
    expect(info.durationS).toBe(1);
  });

  it('async AMD: machine_start / machine_end_beep / human posted, signed, to the AMD callback', async () => {
    const stub = await startStub();
    try {
      const by: Record<string, Outcome> = { '+15550000011': 'voicemail', '+15550000012': 'voicemail', '+15550000013': 'answered' };
      const d = dialer({ talkMs: 1500, outcomeFor: (to) => by[to] ?? 'answered' });
      const mk = (to: string, mode: 'Enable' | 'DetectMessageEnd'): DialRequest => {
        const r = request({ to, machineDetection: mode });
        return { ...r, amdCallback: `${stub.url}/twilio/amd?callId=${r.callId}` };
      };
      const reqs = [mk('+15550000011', 'Enable'), mk('+15550000012', 'DetectMessageEnd'), mk('+15550000013', 'Enable')];
      const sids: string[] = [];
      for (const r of reqs) sids.push((await d.create(r)).sid);
      const infos = await Promise.all(sids.map((sid) => ended(d, sid)));

      expect(infos.map((i) => i.answeredBy)).toEqual(['machine_start', 'machine_end_beep', 'human']);
      expect(stub.requests).toHaveLength(3);
      for (const [i, info] of infos.entries()) {
        const got = stub.requests.find((r) => r.params.CallSid === info.sid);
        expect(got).toBeDefined();
        if (got === undefined) continue;
        expect(got.url).toBe(`/twilio/amd?callId=${reqs[i]?.callId}`);
        expect(got.params).toEqual({
          CallSid: info.sid,
          AccountSid: info.accountSid,
          AnsweredBy: info.answeredBy,
          MachineDetectionDuration: ['150', '250', '100'][i],
        });
        const sig = String(got.headers['x-twilio-signature']);
        expect(twilio.validateRequest(AUTH_TOKEN, sig, `${stub.url}${got.url}`, got.params)).toBe(true);
        expect(info.amd?.httpStatus).toBe(204);
        // The stream connected at answer (async AMD), and the terminal callback carries AnsweredBy.
        expect(info.twimlRequests[0]?.httpStatus).toBe(200);
        expect(info.events.at(-1)?.params.AnsweredBy).toBe(info.answeredBy);
        expect(info.events.find((e) => e.event === 'answered')?.params.AnsweredBy).toBeUndefined();
      }
      expect(infos.map((i) => i.framesSent > 0)).toEqual([true, true, true]);
    } finally {
      await stub.close();
    }
  });

  it('voicemail: after machine_end_beep, sayAndHangup leaves the message', async () => {
    const stub = await startStub();
    try {
      const d = dialer({ talkMs: 30_000, outcomeFor: () => 'voicemail' });
      const r = request({ machineDetection: 'DetectMessageEnd' });
      const { sid } = await d.create({ ...r, amdCallback: `${stub.url}/twilio/amd?callId=${r.callId}` });
      await eventually(() => stub.requests.length === 1, 3000, 'AMD callback');
      expect(stub.requests[0]?.params.AnsweredBy).toBe('machine_end_beep');
      await d.sayAndHangup(sid, 'Please call us back.');
      const info = await ended(d, sid);
      expect(info.said).toEqual(['Please call us back.']);
      expect(info.status).toBe('completed');
    } finally {
      await stub.close();
    }
  });

  it('a refusing TwiML (<Say>…<Hangup/>) is said and the call completes without a stream', async () => {
    const stub = await startStub(() => ({ status: 200, type: 'text/xml', body: '<?xml version="1.0"?><Response><Say>Sorry, all agents are busy.</Say><Hangup/></Response>' }));
    try {
      const d = dialer({ publicUrl: PUBLIC_URL });
      const r = request();
      const { sid } = await d.create({ ...r, url: `${stub.url}/twiml?callId=${r.callId}` });
      const info = await ended(d, sid);
      expect(info.said).toEqual(['Sorry, all agents are busy.']);
      expect(info.status).toBe('completed');
      expect(info.streamSid).toBeUndefined();
      expect(stub.requests[0]?.params).toMatchObject({ CallSid: sid, CallStatus: 'in-progress', Direction: 'outbound-api', ApiVersion: '2010-04-01' });
    } finally {
      await stub.close();
    }
  });

  it('a refused stream upgrade (31920) falls through to <Hangup/>: completed', async () => {
    const stub = await startStub(() => ({
      status: 200,
      type: 'text/xml',
      body: '<Response><Connect><Stream url="wss://voice.example.test/not-a-stream"><Parameter name="a" value="b"/></Stream></Connect><Hangup/></Response>',
    }));
    try {
      const d = dialer();
      const { sid } = await d.create(request({ url: `${stub.url}/twiml` }));
      const info = await ended(d, sid);
      expect(info.errorCode).toBe(31920);
      expect(info.status).toBe('completed');
      expect(info.endedBy).toBe('bridge');
      expect(info.events.at(-1)?.params.ErrorCode).toBeUndefined();
      expect(d.simulator.resources().streams).toBe(0);
    } finally {
      await stub.close();
    }
  });

  it('a TwiML update by URL (redirect) tears the stream down and runs the new document', async () => {
    const stub = await startStub(() => ({ status: 200, type: 'text/xml', body: '<Response><Say>Goodbye from the redirect.</Say><Hangup/></Response>' }));
    try {
      const d = dialer({ talkMs: 30_000 });
      const { sid } = await d.create(request());
      // (Earlier tests left agent connections unclaimed: wait on the bridge's session of this call.)
      await eventually(() => tb.bridge.manager.getSession(sid) !== undefined, 5000, 'stream up');
      expect(d.simulator.update(sid, { url: `${stub.url}/next` })).toBe('ok');
      const info = await ended(d, sid);
      expect(info.said).toEqual(['Goodbye from the redirect.']);
      expect(info.twimlRequests.map((r) => r.httpStatus)).toEqual([200, 200]);
      expect(stub.requests[0]?.params).toMatchObject({ CallSid: sid, CallStatus: 'in-progress' });
      await eventually(() => tb.bridge.manager.getSession(sid) === undefined, 3000, 'session over');
    } finally {
      await stub.close();
    }
  });

  it('TwiML request failures end the call with 11200 (404 route, bad signature)', async () => {
    const d = dialer();
    const r = request();
    const { sid } = await d.create({ ...r, url: `${PUBLIC_URL}/twilio/nope?callId=${r.callId}` });
    const info = await ended(d, sid);
    expect(info.errorCode).toBe(11200);
    expect(info.endedBy).toBe('error');
    expect(info.status).toBe('completed');
    expect(info.twimlRequests[0]?.httpStatus).toBe(404);
    expect(info.events.at(-1)?.params.ErrorCode).toBe('11200');

    // Wrong token: the bridge refuses every request (403), proving it checks what we sign.
    const bad = dialer({ authToken: 'not-the-token' });
    const b = await bad.create(request());
    const binfo = await ended(bad, b.sid);
    expect(binfo.errorCode).toBe(11200);
    expect(binfo.twimlRequests[0]?.httpStatus).toBe(403);
    expect(binfo.events.map((e) => e.httpStatus)).toEqual([403, 403, 403, 403]);
  });

  it('a bridge that is down: failed deliveries are recorded, the call still ends', async () => {
    const d = dialer({ bridgeUrl: 'http://127.0.0.1:1' });
    const { sid } = await d.create(request());
    const info = await ended(d, sid);
    expect(info.errorCode).toBe(11200);
    expect(info.events.length).toBe(4);
    expect(info.events.every((e) => e.httpStatus === 0 && e.error !== undefined)).toBe(true);
  });

  it('close() ends every call and leaves no timer, socket or request behind', async () => {
    const by: Record<string, Outcome> = { '+15550000021': 'answered', '+15550000022': 'no-answer', '+15550000023': 'answered' };
    const d = dialer({ talkMs: 60_000, ringMs: [20, 20], outcomeFor: (to) => by[to] ?? 'answered', timing: { ...FAST, noAnswerMaxMs: 60_000 } });
    const a = await d.create(request({ to: '+15550000021' }));
    const b = await d.create(request({ to: '+15550000022', timeoutS: 60 }));
    await eventually(() => d.simulator.get(a.sid)?.streamSid !== undefined && d.simulator.get(b.sid)?.status === 'ringing', 3000, 'calls up');
    const c = await d.create(request({ to: '+15550000023' })); // still queued
    expect(d.simulator.resources().liveCalls).toBe(3);
    expect(d.simulator.resources().streams).toBe(1);

    await d.close();
    expect(d.simulator.resources()).toEqual({ liveCalls: 0, timers: 0, streams: 0, requests: 0, waiters: 0 });
    const infos = d.calls();
    expect(infos.map((i) => i.status)).toEqual(['completed', 'canceled', 'canceled']);
    expect(infos.map((i) => i.endedBy)).toEqual(['close', 'close', 'close']);
    expect(infos[0]?.events.at(-1)?.params.CallStatus).toBe('completed');
    // Canceled while still queued: no callbacks at all (as on Twilio).
    expect(infos.find((i) => i.sid === c.sid)?.events.length ?? 0).toBeLessThanOrEqual(1);
    await expect(d.create(request())).rejects.toMatchObject({ name: 'DialError' });
    await d.close(); // idempotent
  });

  it('the same seed gives the same outcomes; weights are honoured', async () => {
    const weights = { answered: 5, busy: 2, 'no-answer': 2, voicemail: 1, failed: 1 };
    const run = async (): Promise<Outcome[]> => {
      const d = dialer({ bridgeUrl: 'http://127.0.0.1:1', outcomes: weights, seed: 42, ringMs: [5000, 5000] });
      for (let i = 0; i < 40; i++) await d.create(request());
      const out = d.calls().map((c) => c.outcome);
      await d.close();
      return out;
    };
    const a = await run();
    const b = await run();
    expect(a).toEqual(b);
    expect(new Set(a).size).toBeGreaterThanOrEqual(4);
    expect(a.filter((o) => o === 'answered').length).toBeGreaterThan(a.filter((o) => o === 'failed').length);
  });

  it('forgets the oldest ended calls beyond keepEnded', async () => {
    const d = dialer({ bridgeUrl: 'http://127.0.0.1:1', ringMs: [0, 0], outcomeFor: () => 'busy', keepEnded: 2 });
    const sids: string[] = [];
    for (let i = 0; i < 4; i++) sids.push((await d.create(request())).sid);
    await Promise.all(sids.map((sid) => d.simulator.whenEnded(sid)));
    expect(d.calls().map((c) => c.sid)).toEqual(sids.slice(2));
    expect(d.stats()).toMatchObject({ created: 4, live: 0 });
    expect(await d.fetch(sids[0] ?? '')).toBeUndefined();
  });

  it('findRecent: calls to a number from a number since a time, newest first; attempts counted per number', async () => {
    const attempts: number[] = [];
    const d = dialer({ bridgeUrl: 'http://127.0.0.1:1', ringMs: [5000, 5000], outcomeFor: (_to, attempt) => (attempts.push(attempt), 'busy') });
    const t0 = Date.now();
    const x1 = await d.create(request({ to: '+15550000031' }));
    await new Promise((r) => setTimeout(r, 5));
    const x2 = await d.create(request({ to: '+15550000031' }));
    await d.create(request({ to: '+15550000032' }));
    expect(attempts).toEqual([1, 2, 1]);
    const found = await d.findRecent('+15550000031', '+15557654321', t0);
    expect(found.map((c) => c.sid)).toEqual([x2.sid, x1.sid]);
    expect(await d.findRecent('+15550000031', '+15550009999', t0)).toEqual([]);
    expect(await d.findRecent('+15550000031', '+15557654321', Date.now() + 1000)).toEqual([]);
    expect(await d.fetch('CA00000000000000000000000000000000')).toBeUndefined();
  });
});

describe('twilioSim: path with a query string', () => {
  it('signs over the public URL including the query, as Twilio does', async () => {
    const ok = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, path: '/twilio/voice?callId=sim-q1' });
    expect(ok.status).toBe(200);
    expect(ok.twiml?.streamUrl).toBeDefined();
    const callSid = ok.params.CallSid ?? '';
    // A signature computed without the query does not validate.
    const sigWithoutQuery = twilio.getExpectedTwilioSignature(AUTH_TOKEN, `${PUBLIC_URL}/twilio/status`, { CallSid: callSid, CallStatus: 'completed' });
    const bad = await postStatusCallback({
      bridgeUrl: tb.url,
      publicUrl: PUBLIC_URL,
      path: '/twilio/status?callId=sim-q1',
      params: { CallSid: callSid, CallStatus: 'completed' },
      signature: sigWithoutQuery,
    });
    expect(bad.status).toBe(403);
    const good = await postStatusCallback({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, path: '/twilio/status?callId=sim-q1', params: { CallSid: callSid, CallStatus: 'completed' } });
    expect(good.status).toBe(204);
  });
});
