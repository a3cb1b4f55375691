/**
 * Conferences in the simulated carrier, driven through the fake Twilio REST
 * server with the real `twilio` client: a caller waits in a room (wait URL),
 * a person called by REST with inline `<Say>…<Dial><Conference>` joins, the
 * conference starts, and ends when the endConferenceOnExit participant leaves;
 * signed conference callbacks; the Participants API; busy and no-answer.
 */
import twilio from 'twilio';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RedirectingRequestClient } from '../src/carrier/twilio/callControl.js';
import type { DialOutcomeFn, SimCallInfo, SimTiming } from '../src/sim/simCarrier.js';
import { FakeTwilioRest } from '../src/testing/fakeTwilioRest.js';
import { connectTwiml, SIM_TOKEN, startSimApp, type SimApp } from './simApp.js';

const FAST: Partial<SimTiming> = { initiatedMs: 0, ringingMs: 10, noAnswerMaxMs: 200, sayMsPerChar: 1, sayMinMs: 10, sayMaxMs: 50, msPerDialSecond: 10 };
const CALLER = '+15005550006';
const NUMBER = '+15005550001';
const DESK = '+15551230000';

let app: SimApp;
let rest: FakeTwilioRest;
let client: twilio.Twilio;

async function start(dialOutcome: DialOutcomeFn): Promise<void> {
  rest = await FakeTwilioRest.start({ bridgeUrl: app.url, authToken: SIM_TOKEN, timing: FAST, ringMs: [20, 40], dialOutcome });
  client = twilio(rest.accountSid, rest.authToken, { httpClient: new RedirectingRequestClient(rest.url, {}) });
}

async function until(check: () => boolean, what: string, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function ended(sid: string): Promise<SimCallInfo> {
  const info = await rest.whenEnded(sid);
  if (info === undefined) throw new Error(`unknown call ${sid}`);
  return info;
}

/** The caller's side of a warm transfer: waits in `room` with hold audio; the room ends when the caller leaves. */
function waitTwiml(room: string): string {
  return `<Response><Dial action="${app.url}/after-conf"><Conference startConferenceOnEnter="false" endConferenceOnExit="true" beep="false" waitUrl="${app.url}/hold" statusCallback="${app.url}/conf" statusCallbackEvent="start end join leave">${room}</Conference></Dial></Response>`;
}

const personTwiml = (room: string): string =>
  `<Response><Say>The caller asks about a refund.</Say><Dial><Conference startConferenceOnEnter="true" endConferenceOnExit="true" beep="false">${room}</Conference></Dial></Response>`;

/** A caller on a stream, then moved to the waiting room by a REST update. */
async function callerWaiting(room: string): Promise<string> {
  app.on('/voice', { twiml: connectTwiml(app) });
  app.on('/hold', { twiml: '<Response><Say>Please hold.</Say><Play>https://hold.example.test/music.mp3</Play></Response>' });
  const sid = rest.startInbound({ from: CALLER, to: NUMBER, voiceUrl: `${app.url}/voice`, talkMs: 60_000 });
  await until(() => app.streams[0]?.callSid() === sid, 'caller stream');
  await client.calls(sid).update({ twiml: waitTwiml(room) });
  await until(() => rest.conference(room)?.participants.length === 1, 'caller in the room');
  return sid;
}

beforeEach(async () => {
  app = await startSimApp();
});
afterEach(async () => {
  await rest.close();
  expect(rest.simulator.resources()).toMatchObject({ liveCalls: 0, timers: 0, streams: 0, requests: 0, waiters: 0 });
  await app.close();
});

describe('<Dial><Conference>', () => {
  it('warm transfer: the caller waits with the wait URL, the person hears the <Say> and joins, the room ends when they leave', async () => {
    await start((to) => (to === DESK ? { status: 'answered', ringMs: 20, talkMs: 600 } : undefined));
    app.on('/after-conf', { twiml: '<Response><Hangup/></Response>' });
    const sid = await callerWaiting('transfer-1');

    // The update ended the stream with stop, and the caller waits (the conference has not started).
    expect(app.streams[0]?.messages.at(-1)?.event).toBe('stop');
    let caller = rest.call(sid);
    expect(caller?.dials[0]).toMatchObject({ kind: 'conference', to: 'transfer-1', conference: { name: 'transfer-1', waited: true, waitUrl: `${app.url}/hold`, startConferenceOnEnter: false, endConferenceOnExit: true } });
    await until(() => app.to('/hold').length === 1, 'wait URL');
    expect(app.to('/hold')[0]?.valid).toBe(true);
    expect(rest.conference('transfer-1')?.status).toBe('init');

    const person = await client.calls.create({ to: DESK, from: NUMBER, twiml: personTwiml('transfer-1'), statusCallback: `${app.url}/person`, statusCallbackEvent: ['initiated', 'ringing', 'answered', 'completed'] });
    const personInfo = await ended(person.sid);
    const callerInfo = await ended(sid);

    expect(personInfo.said).toEqual(['The caller asks about a refund.']);
    expect(personInfo).toMatchObject({ status: 'completed', endedBy: 'callee' });
    expect(personInfo.dials[0]).toMatchObject({ kind: 'conference', dialCallStatus: 'answered', endedBy: 'caller', conference: { leftBecause: 'callee', waited: false } });
    expect(app.to('/person').map((r) => r.params.CallStatus)).toEqual(['initiated', 'ringing', 'in-progress', 'completed']);

    caller = callerInfo;
    expect(caller.dials[0]).toMatchObject({ dialCallStatus: 'answered', endedBy: 'conference-end', bridged: true, conference: { leftBecause: 'conference-ended', waitRequest: { httpStatus: 200, said: ['Please hold.'] } } });
    const action = app.to('/after-conf');
    expect(action).toHaveLength(1);
    expect(action[0]?.valid).toBe(true);
    expect(action[0]?.params).toMatchObject({ CallSid: sid, DialCallStatus: 'answered', CallStatus: 'in-progress' });
    expect(action[0]?.params.DialCallSid).toBeUndefined();
    expect(caller).toMatchObject({ status: 'completed', endedBy: 'bridge' });

    const conf = rest.conference('transfer-1');
    expect(conf).toMatchObject({ status: 'completed', reasonEnded: 'participant-with-end-conference-on-exit-left', callSidEndingConference: person.sid });
    expect(conf?.sid).toMatch(/^CF[0-9a-f]{32}$/);
    const events = app.to('/conf');
    expect(events.map((e) => [e.params.StatusCallbackEvent, e.params.CallSid])).toEqual([
      ['participant-join', sid],
      ['participant-join', person.sid],
      ['conference-start', undefined],
      ['participant-leave', person.sid],
      ['participant-leave', sid],
      ['conference-end', undefined],
    ]);
    expect(events.map((e) => e.params.SequenceNumber)).toEqual(['0', '1', '2', '3', '4', '5']);
    for (const e of events) {
      expect(e.valid).toBe(true);
      expect(e.params).toMatchObject({ ConferenceSid: conf?.sid, FriendlyName: 'transfer-1', AccountSid: rest.accountSid });
    }
    expect(events[5]?.params).toMatchObject({ ReasonConferenceEnded: 'participant-with-end-conference-on-exit-left', CallSidEndingConference: person.sid });
  });

  it('the person does not answer: the room never starts; a REST update brings the caller back to a new stream', async () => {
    await start((to) => (to === DESK ? 'no-answer' : undefined));
    const sid = await callerWaiting('transfer-2');
    const person = await client.calls.create({ to: DESK, from: NUMBER, twiml: personTwiml('transfer-2'), statusCallback: `${app.url}/person`, timeout: 20 });
    const personInfo = await ended(person.sid);
    expect(personInfo.status).toBe('no-answer');
    expect(app.to('/person').map((r) => r.params.CallStatus)).toEqual(['no-answer']);
    expect(rest.conference('transfer-2')?.status).toBe('init');

    app.on('/back', { twiml: connectTwiml(app, { back: '1' }) });
    await client.calls(sid).update({ url: `${app.url}/back` });
    await until(() => app.streams[1]?.callSid() === sid, 'new stream');
    const now = rest.call(sid);
    expect(now?.dials[0]).toMatchObject({ dialCallStatus: 'answered', endedBy: 'update', bridged: false, conference: { leftBecause: 'update' }, actionRequest: { used: false } });
    expect(rest.conference('transfer-2')).toMatchObject({ status: 'completed', reasonEnded: 'participant-with-end-conference-on-exit-left' });
    expect(app.to('/conf').map((e) => e.params.StatusCallbackEvent)).toEqual(['participant-join', 'participant-leave', 'conference-end']);
    await client.calls(sid).update({ status: 'completed' });
    expect((await ended(sid)).status).toBe('completed');
  });

  it('Participants API: by friendly name; a busy participant gets its status callback and never joins', async () => {
    await start((to) => (to === DESK ? 'busy' : undefined));
    const sid = await callerWaiting('transfer-3');
    const conf = rest.conference('transfer-3');
    const p = await client.conferences('transfer-3').participants.create({ from: NUMBER, to: DESK, startConferenceOnEnter: true, endConferenceOnExit: true, statusCallback: `${app.url}/person`, statusCallbackEvent: ['ringing', 'completed'] });
    expect(p.conferenceSid).toBe(conf?.sid);
    expect(p.status).toBe('queued');
    const info = await ended(p.callSid);
    expect(info.status).toBe('busy');
    expect(app.to('/person').map((r) => r.params.CallStatus)).toEqual(['ringing', 'busy']);
    expect(app.to('/person').every((r) => r.valid)).toBe(true);
    expect(rest.conference('transfer-3')?.participants.map((x) => x.callSid)).toEqual([sid]);
    // A conference SID that does not exist: 20404.
    await expect(client.conferences(`CF${'0'.repeat(32)}`).participants.create({ from: NUMBER, to: DESK })).rejects.toMatchObject({ status: 404, code: 20404 });
  });

  it('Participants API by conference SID: an answering participant joins and starts the conference', async () => {
    await start((to) => (to === DESK ? { status: 'answered', ringMs: 10, talkMs: 400 } : undefined));
    app.on('/after-conf', { twiml: '<Response><Say>The call has ended.</Say></Response>' });
    const sid = await callerWaiting('transfer-4');
    const confSid = rest.conference('transfer-4')?.sid ?? '';
    const p = await client.conferences(confSid).participants.create({ from: NUMBER, to: DESK, startConferenceOnEnter: true, endConferenceOnExit: true });
    await ended(p.callSid);
    const caller = await ended(sid);
    expect(rest.conference(confSid)).toMatchObject({ status: 'completed', callSidEndingConference: p.callSid });
    expect(rest.conference(confSid)?.startedAt).toBeDefined();
    expect(caller.said).toEqual(['The call has ended.']);
  });
});
