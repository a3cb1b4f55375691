/**
 * Transfers end to end against the simulated carrier behind the fake Twilio REST server: an
 * inbound call is answered by the bridge's webhook, the agent takes it, and a transfer is asked
 * by the API. Playline's real REST call control drives the carrier, which runs the <Dial>, the
 * conference and the person's call as Twilio does and calls back (signed). What each path was
 * seen to do is asserted on both sides: the carrier's record of the call and Playline's.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { TwilioRestCallControl } from '../src/carrier/twilio/callControl.js';
import type { DialOutcome, DialPartyStatus, SimTiming } from '../src/sim/simCarrier.js';
import { FakeTwilioRest } from '../src/testing/fakeTwilioRest.js';
import { TwilioDialer } from '../src/outbound/twilioDialer.js';
import { AUTH_TOKEN, eventually, PUBLIC_URL, startTestBridge, storedCall, type TestBridge } from './helpers.js';

const FAST: Partial<SimTiming> = { initiatedMs: 0, ringingMs: 10, noAnswerMaxMs: 300, sayMsPerChar: 1, sayMinMs: 10, sayMaxMs: 60, msPerDialSecond: 10 };
const CALLER = '+14155550123';
const CALLED = '+14155550999';
const FRONTDESK = '+14155550100';
const API_TOKEN = 'test-api-token-0123456789abcdef';

let tb: TestBridge | undefined;
let control: TwilioRestCallControl | undefined;
/** The caller hangs up (a REST hang-up, as the carrier would end it). */
const hangup = async (sid: string): Promise<void> => {
  await control?.hangup(sid);
};
let rest: FakeTwilioRest | undefined;
afterEach(async () => {
  await tb?.close();
  await rest?.close();
  tb = undefined;
  rest = undefined;
});

async function start(frontdesk: DialOutcome | DialPartyStatus): Promise<{ t: TestBridge; r: FakeTwilioRest }> {
  const r = await FakeTwilioRest.start({
    bridgeUrl: 'http://127.0.0.1:1',
    publicUrl: PUBLIC_URL,
    authToken: AUTH_TOKEN,
    timing: FAST,
    ringMs: [10, 20],
    talkMs: 400,
    dialOutcome: (to) => (to === FRONTDESK ? frontdesk : 'answered'),
  });
  rest = r;
  const dir = mkdtempSync(join(tmpdir(), 'playline-xfer-sim-'));
  const routes = join(dir, 'routes.json');
  writeFileSync(routes, JSON.stringify({ [CALLED]: { agentId: 'playai:agent-default', transferTargets: { frontdesk: { to: FRONTDESK, timeoutS: 10 } } } }));
  const callControl = new TwilioRestCallControl({ accountSid: r.accountSid, authToken: AUTH_TOKEN, say: {}, log: pino({ level: 'silent' }), apiUrl: r.url });
  control = callControl;
  const t = await startTestBridge({
    env: { ROUTES_FILE: routes, TWILIO_ACCOUNT_SID: r.accountSid, TWILIO_API_URL: r.url, API_TOKEN, OPENAI_API_KEY: 'sk-test-unused' },
    agent: { autoInit: true },
    overrides: { callControl, dialer: new TwilioDialer({ accountSid: r.accountSid, authToken: AUTH_TOKEN, apiUrl: r.url }) },
  });
  tb = t;
  r.setBridgeUrl(t.url);
  return { t, r };
}

async function transfer(t: TestBridge, callSid: string, body: Record<string, unknown>): Promise<number> {
  const id = (await storedCall(t, callSid))?.id ?? '';
  const res = await fetch(`${t.url}/v1/calls/${id}/transfer`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${API_TOKEN}` }, body: JSON.stringify(body) });
  return res.status;
}

/** `playline_calls_total` by outcome. */
async function callsCounted(t: TestBridge): Promise<Record<string, number>> {
  const m = await t.bridge.metrics.callsTotal.get();
  return Object.fromEntries(m.values.map((v) => [String(v.labels.outcome), v.value]));
}

const steps = async (t: TestBridge, callSid: string): Promise<string[]> => ((await storedCall(t, callSid))?.events ?? []).map((e) => e.type).filter((x) => x.startsWith('transfer_'));

/** An inbound call the bridge answered and its agent took. */
async function liveCall(t: TestBridge, r: FakeTwilioRest, talkMs = 60_000): Promise<string> {
  const sid = r.startInbound({ from: CALLER, to: CALLED, talkMs });
  await t.agent.nextConnection();
  await eventually(async () => t.bridge.manager.liveCalls === 1 && ((await storedCall(t, sid))?.conversationId ?? null) !== null, 5000, 'the call live with its agent');
  return sid;
}

describe('transfers through the simulated carrier', () => {
  it('cold, answered: the carrier dials the person, the slot is freed at the answer, and the call ends when the person hangs up', async () => {
    const { t, r } = await start({ status: 'answered', talkMs: 300 });
    const sid = await liveCall(t, r);
    expect(await transfer(t, sid, { target: 'frontdesk' })).toBe(202);
    const info = await r.whenEnded(sid);
    const dial = info?.dials[0];
    expect(dial).toMatchObject({ to: FRONTDESK, timeoutS: 10, answerOnBridge: true, dialCallStatus: 'completed', bridged: true });
    // The person's answer reached Playline at once (the <Number> status callback), before the dial ended.
    expect(dial?.legs[0]?.events.map((e) => [e.event, e.httpStatus])).toEqual([
      ['answered', 204],
      ['completed', 204],
    ]);
    expect(dial?.actionRequest?.used).toBe(true);
    expect(info?.status).toBe('completed');
    await eventually(async () => (await steps(t, sid)).includes('transfer_completed'), 3000, 'the transfer recorded as completed');
    expect(await steps(t, sid)).toEqual(['transfer_requested', 'transfer_dialing', 'transfer_answered', 'transfer_completed']);
    expect(t.bridge.manager.usedSlots).toBe(0);
    expect(t.bridge.manager.liveCalls).toBe(0);
    expect(info?.streams).toHaveLength(1);
    // Counted once, as transferred (the session that handed the call over does not count it).
    expect(await callsCounted(t)).toEqual({ transferred: 1 });
  });

  it('cold, busy: the caller hears the return prompt and is back with the same agent on a new stream of the same call', async () => {
    const { t, r } = await start('busy');
    const sid = await liveCall(t, r);
    const conversationId = (await storedCall(t, sid))?.conversationId;
    expect(await transfer(t, sid, { target: 'frontdesk' })).toBe(202);
    const again = await t.agent.nextConnection();
    const setup = await again.waitForSetup();
    expect(setup.continueConversation).toBe(conversationId);
    await eventually(() => t.bridge.manager.liveCalls === 1, 5000, 'the caller back with the agent');
    expect(t.bridge.manager.usedSlots).toBe(1);
    const info = r.call(sid);
    expect(info?.dials[0]).toMatchObject({ dialCallStatus: 'busy' });
    expect(info?.streams).toHaveLength(2);
    expect(info?.said.some((s) => /nobody could take your call/.test(s))).toBe(true);
    expect(await steps(t, sid)).toEqual(['transfer_requested', 'transfer_dialing', 'transfer_failed', 'transfer_returned']);
    await hangup(sid);
    await eventually(() => t.bridge.manager.usedSlots === 0, 5000, 'the slot released once');
    await eventually(() => t.bridge.manager.liveCalls === 0, 5000, 'the session ended');
    expect(await callsCounted(t)).toEqual({ caller_hangup: 1 });
    expect((await storedCall(t, sid))?.endReason).toBe('caller_hangup');
  });

  it('warm, answered: the caller waits in a conference, the person hears the summary and joins, and both leave', async () => {
    const { t, r } = await start({ status: 'answered', talkMs: 300 });
    const sid = await liveCall(t, r);
    expect(await transfer(t, sid, { target: 'frontdesk', mode: 'warm', reason: 'The caller wants to change an order.' })).toBe(202);
    const info = await r.whenEnded(sid);
    const person = r.calls().find((c) => c.to === FRONTDESK);
    expect(person?.said).toContain('The caller wants to change an order.');
    expect(info?.dials[0]?.kind).toBe('conference');
    await eventually(async () => (await steps(t, sid)).includes('transfer_completed'), 3000, 'the transfer completed');
    expect(await steps(t, sid)).toEqual(expect.arrayContaining(['transfer_requested', 'transfer_dialing', 'transfer_answered', 'transfer_joined', 'transfer_completed']));
    expect(t.bridge.manager.usedSlots).toBe(0);
  });

  it('warm, no answer: the caller is taken off hold back to the agent', async () => {
    const { t, r } = await start('no-answer');
    const sid = await liveCall(t, r);
    expect(await transfer(t, sid, { target: 'frontdesk', mode: 'warm' })).toBe(202);
    const again = await t.agent.nextConnection();
    await again.waitForSetup();
    await eventually(() => t.bridge.manager.liveCalls === 1, 5000, 'the caller back with the agent');
    expect(r.calls().find((c) => c.to === FRONTDESK)?.status).toBe('no-answer');
    expect(await steps(t, sid)).toEqual(['transfer_requested', 'transfer_dialing', 'transfer_failed', 'transfer_returned']);
    expect(t.bridge.manager.usedSlots).toBe(1);
    await hangup(sid);
    await eventually(() => t.bridge.manager.usedSlots === 0, 5000, 'the slot released once');
  });

  it("a campaign's call goes to the campaign's own target (a warm lead handed to sales), and its tools are offered", async () => {
    const { t, r } = await start({ status: 'answered', talkMs: 200 });
    const SALES = '+14155550177';
    const res = await fetch(`${t.url}/v1/campaigns`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: `Bearer ${API_TOKEN}` },
      body: JSON.stringify({
        name: 'leads',
        start: true,
        settings: {
          from: CALLED,
          transferTargets: { sales: { to: SALES, description: 'a sales person' } },
          tools: [{ name: 'book_demo', description: 'Book a demo', url: 'https://crm.example.com/book' }],
        },
        contacts: [{ phone: '+14155550142' }],
      }),
    });
    expect(res.status, await res.clone().text()).toBe(201);
    await eventually(() => t.bridge.manager.liveCalls === 1, 5000, 'the lead on the line with the agent');
    await t.agent.nextConnection();
    const callSid = [...t.bridge.manager.sessions()][0]?.callSid ?? '';
    await eventually(async () => ((await storedCall(t, callSid))?.conversationId ?? null) !== null, 5000, 'the agent ready');
    expect(await transfer(t, callSid, { target: 'sales' })).toBe(202);
    await eventually(() => (r.call(callSid)?.dials.length ?? 0) === 1, 5000, 'the dial to sales');
    expect(r.call(callSid)?.dials[0]).toMatchObject({ to: SALES });
    // The agent of a campaign call would be offered the campaign's transfer target and tool.
    const offered = t.bridge.agents.request({ agentId: 'openai:gpt-realtime', transferTargets: { sales: { to: SALES, timeoutS: 30 } }, tools: [{ name: 'book_demo', description: 'Book a demo', url: 'https://crm.example.com/book', timeoutMs: 5000, parameters: { type: 'object', properties: {} } }] }, { callSid, from: CALLED, to: '+14155550142', direction: 'outbound-api' });
    expect(offered.tools.map((x) => x.name)).toEqual(['end_call', 'transfer_call', 'book_demo']);
  });
});

