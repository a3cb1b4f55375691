/**
 * The simulated carrier runs inbound calls and `<Dial>` the way Twilio documents:
 * voice URL, stream stopped by a REST update, child-call status callbacks,
 * the `<Dial action>` request (DialCallStatus, DialCallSid, DialCallDuration,
 * DialBridged) and the TwiML it returns, on the same CallSid.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { CarrierSimulator, type DialOutcomeFn, type SimCallInfo, type SimTiming } from '../src/sim/simCarrier.js';
import { parseTwimlVerbs } from '../src/sim/twilioSim.js';
import { connectTwiml, SIM_TOKEN, startSimApp, type SimApp } from './simApp.js';

const FAST: Partial<SimTiming> = { initiatedMs: 0, ringingMs: 10, noAnswerMaxMs: 300, sayMsPerChar: 1, sayMinMs: 10, sayMaxMs: 50, msPerDialSecond: 10 };
const CALLER = '+15005550006';
const NUMBER = '+15005550001';
const DESK = '+15551230000';

let app: SimApp;
let sim: CarrierSimulator;

function simulator(dialOutcome?: DialOutcomeFn): CarrierSimulator {
  sim = new CarrierSimulator({ bridgeUrl: app.url, authToken: SIM_TOKEN, talkMs: 30_000, ringMs: [20, 40], timing: FAST, ...(dialOutcome !== undefined ? { dialOutcome } : {}) });
  return sim;
}

async function until(check: () => boolean, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function ended(sid: string): Promise<SimCallInfo> {
  const info = await sim.whenEnded(sid);
  if (info === undefined) throw new Error(`unknown call ${sid}`);
  return info;
}

beforeEach(async () => {
  app = await startSimApp();
});
afterEach(async () => {
  await sim.close();
  expect(sim.resources()).toMatchObject({ liveCalls: 0, timers: 0, streams: 0, requests: 0, waiters: 0 });
  await app.close();
});

describe('inbound calls', () => {
  it('posts the signed voice webhook (inbound, ringing) and opens the stream the TwiML asks for', async () => {
    app.on('/voice', { twiml: connectTwiml(app, { token: 't1' }) });
    const s = simulator();
    const sid = s.startInbound({ from: CALLER, to: NUMBER, voiceUrl: `${app.url}/voice`, statusCallback: `${app.url}/status` });
    expect(sid).toMatch(/^CA[0-9a-f]{32}$/);
    await until(() => app.streams[0]?.callSid() === sid, 'stream start');
    const voice = app.to('/voice')[0];
    expect(voice?.valid).toBe(true);
    expect(voice?.params).toEqual({ CallSid: sid, AccountSid: s.accountSid, From: CALLER, To: NUMBER, Caller: CALLER, Called: NUMBER, CallStatus: 'ringing', Direction: 'inbound', ApiVersion: '2010-04-01' });
    const start = app.streams[0]?.messages.find((m) => m.event === 'start');
    expect(start?.start).toMatchObject({ callSid: sid, customParameters: { token: 't1' } });
    expect(s.get(sid)).toMatchObject({ status: 'in-progress', direction: 'inbound' });

    s.hangup(sid);
    const info = await ended(sid);
    expect(info).toMatchObject({ status: 'completed', endedBy: 'hangup' });
    expect(app.streams[0]?.messages.at(-1)?.event).toBe('stop');
    // A phone number's status callback gets `completed` only.
    expect(info.events.map((e) => e.callStatus)).toEqual(['completed']);
    expect(app.to('/status')[0]?.params).toMatchObject({ CallSid: sid, Direction: 'inbound', CallStatus: 'completed' });
    expect(app.to('/status')[0]?.valid).toBe(true);
  });

  it('<Reject reason="busy"> first: the call is never answered and ends busy', async () => {
    app.on('/voice', { twiml: '<Response><Reject reason="busy"/></Response>' });
    const s = simulator();
    const info = await ended(s.startInbound({ from: CALLER, to: NUMBER, voiceUrl: `${app.url}/voice` }));
    expect(info.status).toBe('busy');
    expect(info.answeredAt).toBeUndefined();
  });

  it('a REST update during <Connect><Stream> sends stop, closes the socket, then runs the new TwiML', async () => {
    app.on('/voice', { twiml: connectTwiml(app) });
    const s = simulator();
    const sid = s.startInbound({ from: CALLER, to: NUMBER, voiceUrl: `${app.url}/voice` });
    await until(() => (app.streams[0]?.messages.filter((m) => m.event === 'media').length ?? 0) > 2, 'media');
    expect(s.update(sid, { twiml: '<Response><Say>One moment please.</Say><Hangup/></Response>' })).toBe('ok');
    const info = await ended(sid);
    const stream = app.streams[0];
    await stream?.closed;
    expect(stream?.messages.at(-1)).toMatchObject({ event: 'stop', stop: { callSid: sid } });
    expect(info.streams).toHaveLength(1);
    expect(info.streams[0]).toMatchObject({ endedBy: 'update', stopSent: true });
    expect(info.said).toEqual(['One moment please.']);
    expect(info).toMatchObject({ status: 'completed', endedBy: 'bridge' });
  });
});

describe('<Dial> to a number', () => {
  it('answered: child callbacks, bridged duration, then the action URL with DialCallStatus=completed and its TwiML', async () => {
    app.on('/voice', { twiml: connectTwiml(app) });
    app.on('/after-dial', { twiml: '<Response><Say>Thanks for calling.</Say><Hangup/></Response>' });
    const s = simulator((to) => (to === DESK ? { status: 'answered', ringMs: 30, talkMs: 1300 } : undefined));
    const sid = s.startInbound({ from: CALLER, to: NUMBER, voiceUrl: `${app.url}/voice` });
    await until(() => app.streams.length === 1 && app.streams[0]?.callSid() === sid, 'stream');
    s.update(
      sid,
      {
        twiml: `<Response><Dial action="${app.url}/after-dial" timeout="20" callerId="${NUMBER}" answerOnBridge="true"><Number statusCallback="${app.url}/leg" statusCallbackEvent="initiated ringing answered completed">${DESK}</Number></Dial></Response>`,
      },
    );
    const info = await ended(sid);
    const dial = info.dials[0];
    expect(info.dials).toHaveLength(1);
    expect(dial).toMatchObject({ kind: 'endpoints', to: DESK, callerId: NUMBER, timeoutS: 20, answerOnBridge: true, bridged: true, dialCallStatus: 'completed', endedBy: 'callee' });
    const leg = dial?.legs[0];
    expect(leg).toMatchObject({ to: DESK, kind: 'number', outcome: 'answered', status: 'completed', durationS: 1 });
    expect(leg?.sid).toMatch(/^CA[0-9a-f]{32}$/);
    expect(leg?.sid).not.toBe(sid);

    const legCalls = app.to('/leg');
    expect(legCalls.map((r) => r.params.CallStatus)).toEqual(['initiated', 'ringing', 'in-progress', 'completed']);
    expect(legCalls.map((r) => r.params.SequenceNumber)).toEqual(['0', '1', '2', '3']);
    for (const r of legCalls) {
      expect(r.valid).toBe(true);
      expect(r.params).toMatchObject({ CallSid: leg?.sid, ParentCallSid: sid, From: NUMBER, To: DESK, Direction: 'outbound-dial', CallbackSource: 'call-progress-events' });
    }
    expect(legCalls[3]?.params).toMatchObject({ CallDuration: '1', SipResponseCode: '200' });

    const action = app.to('/after-dial');
    expect(action).toHaveLength(1);
    expect(action[0]?.valid).toBe(true);
    expect(action[0]?.params).toMatchObject({ CallSid: sid, CallStatus: 'in-progress', Direction: 'inbound', DialCallStatus: 'completed', DialCallSid: leg?.sid, DialCallDuration: '1', DialBridged: 'true' });
    expect(dial?.actionRequest).toMatchObject({ url: `${app.url}/after-dial`, httpStatus: 200, used: true });
    expect(info.said).toEqual(['Thanks for calling.']);
    expect(info.status).toBe('completed');
  });

  it('busy: the action gets DialCallStatus=busy and its <Connect><Stream> opens a new stream on the same CallSid', async () => {
    app.on('/voice', { twiml: connectTwiml(app, { leg: 'first' }) });
    app.on('/after-dial', { twiml: connectTwiml(app, { leg: 'back' }) });
    const s = simulator(() => 'busy');
    const sid = s.startInbound({ from: CALLER, to: NUMBER, voiceUrl: `${app.url}/voice` });
    await until(() => app.streams[0]?.callSid() === sid, 'first stream');
    s.update(sid, { twiml: `<Response><Dial action="/after-dial" timeout="20"><Sip>sip:desk@pbx.example.test</Sip></Dial></Response>` });
    await until(() => app.streams[1]?.callSid() === sid, 'second stream');
    const second = app.streams[1]?.messages.find((m) => m.event === 'start');
    expect(second?.start).toMatchObject({ callSid: sid, customParameters: { leg: 'back' } });
    const action = app.to('/after-dial')[0];
    expect(action?.valid).toBe(true);
    expect(action?.params).toMatchObject({ CallSid: sid, DialCallStatus: 'busy', DialCallDuration: '0', DialBridged: 'false' });
    const now = s.get(sid);
    expect(now?.dials[0]).toMatchObject({ kind: 'endpoints', to: 'sip:desk@pbx.example.test', dialCallStatus: 'busy', bridged: false, endedBy: 'carrier' });
    expect(now?.dials[0]?.legs[0]).toMatchObject({ kind: 'sip', status: 'busy' });
    expect(action?.params.DialCallSid).toBe(now?.dials[0]?.legs[0]?.sid);
    expect(now?.streams.map((x) => x.endedBy)).toEqual(['update', undefined]);
    expect(now?.streams[0]?.streamSid).not.toBe(now?.streams[1]?.streamSid);
    s.hangup(sid);
    expect((await ended(sid)).status).toBe('completed');
  });

  it('no-answer rings for the (scaled) Dial timeout; without action the verbs after <Dial> run', async () => {
    app.on('/voice', { twiml: `<Response><Dial timeout="25"><Number>${DESK}</Number></Dial><Say>Nobody is available.</Say></Response>` });
    const s = simulator(() => 'no-answer');
    const info = await ended(s.startInbound({ from: CALLER, to: NUMBER, voiceUrl: `${app.url}/voice` }));
    const dial = info.dials[0];
    expect(dial).toMatchObject({ dialCallStatus: 'no-answer', bridged: false, dialCallDurationS: 0 });
    // 25 s at 10 ms per simulated second.
    expect(dial?.legs[0]?.ringMs).toBeGreaterThanOrEqual(240);
    expect(dial?.legs[0]?.status).toBe('no-answer');
    expect(info.said).toEqual(['Nobody is available.']);
    expect(info).toMatchObject({ status: 'completed', endedBy: 'bridge' });
  });

  it('a REST update while the person rings cancels the Dial: the action URL gets DialCallStatus=canceled and is ignored', async () => {
    app.on('/voice', { twiml: `<Response><Dial action="/after-dial" timeout="60"><Number statusCallback="/leg">${DESK}</Number></Dial></Response>` });
    app.on('/after-dial', { twiml: '<Response><Say>ignored</Say></Response>' });
    const s = simulator(() => 'no-answer');
    const sid = s.startInbound({ from: CALLER, to: NUMBER, voiceUrl: `${app.url}/voice` });
    await until(() => s.get(sid)?.dials[0]?.legs[0]?.status === 'ringing', 'ringing');
    s.update(sid, { twiml: '<Response><Say>Back to the assistant.</Say></Response>' });
    const info = await ended(sid);
    expect(info.said).toEqual(['Back to the assistant.']);
    expect(info.dials[0]).toMatchObject({ dialCallStatus: 'canceled', endedBy: 'update', actionRequest: { used: false, httpStatus: 200 } });
    expect(info.dials[0]?.legs[0]?.status).toBe('canceled');
    expect(app.to('/after-dial')[0]?.params).toMatchObject({ DialCallStatus: 'canceled', CallStatus: 'in-progress' });
    // The leg's default event is `completed` only, with SIP 487.
    expect(app.to('/leg').map((r) => [r.params.CallStatus, r.params.SipResponseCode])).toEqual([['canceled', '487']]);
  });

  it('a REST hang-up while bridged: the action URL gets DialCallStatus=completed with CallStatus=completed; the call ends', async () => {
    app.on('/voice', { twiml: `<Response><Dial action="/after-dial">${DESK}</Dial></Response>` });
    const s = simulator(() => ({ status: 'answered', ringMs: 10, talkMs: 60_000 }));
    const sid = s.startInbound({ from: CALLER, to: NUMBER, voiceUrl: `${app.url}/voice` });
    await until(() => s.get(sid)?.dials[0]?.bridged === true, 'bridged');
    s.hangup(sid);
    const info = await ended(sid);
    expect(info).toMatchObject({ status: 'completed', endedBy: 'hangup' });
    expect(info.dials[0]).toMatchObject({ dialCallStatus: 'completed', endedBy: 'hangup', actionRequest: { used: false } });
    expect(app.to('/after-dial')[0]?.params).toMatchObject({ CallStatus: 'completed', DialCallStatus: 'completed', DialBridged: 'true' });
  });

  it('two <Number>s ring at once: the first to answer is bridged, the other is canceled', async () => {
    const OTHER = '+15551239999';
    app.on('/voice', { twiml: `<Response><Dial action="/after-dial"><Number>${OTHER}</Number><Number>${DESK}</Number></Dial></Response>` });
    const s = simulator((to) => (to === DESK ? { status: 'answered', ringMs: 20, talkMs: 100 } : { status: 'answered', ringMs: 200 }));
    const info = await ended(s.startInbound({ from: CALLER, to: NUMBER, voiceUrl: `${app.url}/voice` }));
    const legs = info.dials[0]?.legs ?? [];
    expect(legs.map((l) => [l.to, l.status])).toEqual([
      [OTHER, 'canceled'],
      [DESK, 'completed'],
    ]);
    expect(app.to('/after-dial')[0]?.params.DialCallSid).toBe(legs[1]?.sid);
  });
});

describe('parseTwimlVerbs', () => {
  it('reads verbs in order with the Dial, Number, Sip and Conference attributes and Twilio defaults', () => {
    const verbs = parseTwimlVerbs(
      `<?xml version="1.0"?><Response><Say voice="alice">Hi &amp; bye</Say><Dial action="/a" timeout="12" callerId="+15550001111" answerOnBridge="true"><Number statusCallback="https://x/s" statusCallbackEvent="initiated answered">+15551230000</Number><Sip>sip:a@b</Sip></Dial><Dial>sip:desk@pbx</Dial><Dial><Conference waitUrl="" endConferenceOnExit="true">room</Conference></Dial><Gather/><Hangup/></Response>`,
    );
    expect(verbs.map((v) => v.verb)).toEqual(['say', 'dial', 'dial', 'dial', 'other', 'hangup']);
    expect(verbs[0]).toMatchObject({ text: 'Hi & bye', voice: 'alice' });
    expect(verbs[1]).toMatchObject({
      action: '/a',
      method: 'POST',
      timeoutS: 12,
      callerId: '+15550001111',
      answerOnBridge: true,
      nouns: [
        { kind: 'number', value: '+15551230000', statusCallback: 'https://x/s', statusCallbackEvents: ['initiated', 'answered'] },
        { kind: 'sip', value: 'sip:a@b', statusCallbackEvents: [] },
      ],
    });
    expect(verbs[2]).toMatchObject({ timeoutS: 30, answerOnBridge: false, nouns: [{ kind: 'sip', value: 'sip:desk@pbx' }] });
    expect(verbs[3]).toMatchObject({ nouns: [{ kind: 'conference', name: 'room', waitUrl: '', startConferenceOnEnter: true, endConferenceOnExit: true, beep: 'true' }] });
  });
});
