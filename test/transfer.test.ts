/**
 * Transfers to a person, bridge side: what Playline asks of the carrier (REST redirects, the
 * person's call) and what it does with Twilio's callbacks (the <Dial> action, the person's call
 * status, conference events). The carrier here is a recording fake that, like Twilio, ends the
 * media stream when a call's TwiML is replaced; the callbacks are signed like Twilio's.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { callPayload } from '../src/calls/view.js';
import { FakeTwilioStream, parseTwiml, postStatusCallback } from '../src/sim/twilioSim.js';
import type { TransferCarrier } from '../src/transfer/coordinator.js';
import { AUTH_TOKEN, eventually, openCall, PUBLIC_URL, startTestBridge, storedCall, type OpenCall, type TestBridge } from './helpers.js';

const FRONTDESK = '+14155550100';
const CALLED = '+14155550999';
const API_TOKEN = 'test-api-token-0123456789abcdef';

/** Twilio as a transfer sees it: REST updates replace TwiML (and end the stream), calls are created. */
class FakeTransferCarrier implements TransferCarrier {
  readonly redirects: Array<{ callSid: string; twiml: string }> = [];
  readonly created: Array<{ to: string; from: string; twiml: string; statusCallbackUrl: string; timeoutS: number; sid: string }> = [];
  readonly hangups: string[] = [];
  accept = true;
  /** The live stream of each call, ended on a redirect as Twilio does. */
  readonly streams = new Map<string, FakeTwilioStream>();

  async redirect(callSid: string, twiml: string): Promise<boolean> {
    this.redirects.push({ callSid, twiml });
    if (!this.accept) return false;
    const s = this.streams.get(callSid);
    if (s !== undefined) setTimeout(() => s.sendStop(), 5);
    return true;
  }

  async createCall(o: { to: string; from: string; twiml: string; statusCallbackUrl: string; timeoutS: number }): Promise<string | undefined> {
    const sid = `CA${'f'.repeat(28)}${String(this.created.length).padStart(4, '0')}`;
    this.created.push({ ...o, sid });
    return sid;
  }

  async hangup(callSid: string): Promise<boolean> {
    this.hangups.push(callSid);
    return true;
  }
}

let tb: TestBridge | undefined;
afterEach(async () => {
  await tb?.close();
  tb = undefined;
});

function routesFile(route: Record<string, unknown>): string {
  const dir = mkdtempSync(join(tmpdir(), 'playline-transfer-'));
  const file = join(dir, 'routes.json');
  writeFileSync(file, JSON.stringify({ [CALLED]: { agentId: 'playai:agent-default', transferTargets: { frontdesk: { to: FRONTDESK, timeoutS: 20 } }, ...route } }));
  return file;
}

async function start(route: Record<string, unknown> = {}): Promise<{ t: TestBridge; carrier: FakeTransferCarrier }> {
  const carrier = new FakeTransferCarrier();
  tb = await startTestBridge({ env: { ROUTES_FILE: routesFile(route), TWILIO_ACCOUNT_SID: `AC${'0'.repeat(32)}`, API_TOKEN }, overrides: { transferCarrier: carrier } });
  return { t: tb, carrier };
}

async function call(t: TestBridge, carrier: FakeTransferCarrier): Promise<OpenCall> {
  const c = await openCall(t, { to: CALLED });
  carrier.streams.set(c.callSid, c.stream);
  return c;
}

const api = async (t: TestBridge, path: string, body?: unknown): Promise<{ status: number; json: Record<string, unknown> }> => {
  const res = await fetch(`${t.url}${path}`, {
    method: body === undefined ? 'GET' : 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${API_TOKEN}` },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const json: unknown = await res.json();
  return { status: res.status, json: typeof json === 'object' && json !== null ? Object.fromEntries(Object.entries(json)) : {} };
};

/** Twilio's signed callback to one of the transfer URLs (path taken from the TwiML's absolute URL). */
const callback = (t: TestBridge, url: string, params: Record<string, string>) =>
  postStatusCallback({ bridgeUrl: t.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, path: new URL(url).pathname, params });

const callId = async (t: TestBridge, callSid: string): Promise<string> => (await storedCall(t, callSid))?.id ?? '';
const steps = async (t: TestBridge, callSid: string): Promise<string[]> => ((await storedCall(t, callSid))?.events ?? []).map((e) => e.type).filter((x) => x.startsWith('transfer_'));

/** The `<Dial>` of the latest redirect: its action and status callback URLs and what it dials. */
function dialOf(carrier: FakeTransferCarrier): { action: string; status: string; xml: string } {
  const xml = carrier.redirects.at(-1)?.twiml ?? '';
  const action = /<Dial action="([^"]+)"/.exec(xml)?.[1] ?? '';
  const status = /statusCallback="([^"]+)"/.exec(xml)?.[1] ?? '';
  return { action: action.replaceAll('&amp;', '&'), status, xml };
}

describe('cold transfer', () => {
  it('by the API, answered: the caller is dialed through to the named person, the slot is freed at the answer, and the call ends after', async () => {
    const { t, carrier } = await start();
    const c = await call(t, carrier);
    const id = await callId(t, c.callSid);
    const r = await api(t, `/v1/calls/${id}/transfer`, { target: 'frontdesk', reason: 'wants a person' });
    expect(r.status).toBe(202);
    expect(r.json).toMatchObject({ callId: id, mode: 'cold', status: 'dialing' });
    const { action, status, xml } = dialOf(carrier);
    expect(xml).toContain(`<Number statusCallback="${PUBLIC_URL}/twilio/transfer/`);
    expect(xml).toContain(`>${FRONTDESK}</Number>`);
    expect(xml).toContain('timeout="20"');
    // Twilio ends the stream; the slot stays with the call while the person's phone rings.
    await c.stream.waitForClose(3000);
    await eventually(() => t.bridge.manager.liveCalls === 0, 3000, 'the session to end');
    expect(t.bridge.manager.usedSlots).toBe(1);
    expect((await callback(t, status, { CallSid: 'CA' + '1'.repeat(32), CallStatus: 'in-progress' })).status).toBe(204);
    expect(t.bridge.manager.usedSlots).toBe(0);
    const after = await callback(t, action, { CallSid: c.callSid, CallStatus: 'in-progress', DialCallStatus: 'completed', DialCallDuration: '42' });
    expect(parseTwiml(after.body).hangup).toBe(true);
    expect(await steps(t, c.callSid)).toEqual(['transfer_requested', 'transfer_dialing', 'transfer_answered', 'transfer_completed']);
    const detail = await api(t, `/v1/calls/${id}`);
    expect(detail.json.transfers).toEqual([expect.objectContaining({ target: 'frontdesk', to: FRONTDESK, mode: 'cold', by: 'api', outcome: 'answered', returned: false })]);
    expect((await storedCall(t, c.callSid))?.endReason).toBe('transferred');
    expect(t.bridge.manager.usedSlots).toBe(0);
    // The post-call webhook carries the outcome.
    const row = await t.bridge.calls.get(id);
    const payload = row === undefined ? {} : await callPayload(row, t.bridge.calls, t.bridge.campaigns);
    expect(payload.transfers).toEqual([expect.objectContaining({ target: 'frontdesk', outcome: 'answered', returned: false })]);
  });

  it('busy: the caller comes back to the same agent on a new stream with the same slot, and the agent resumes the conversation', async () => {
    const { t, carrier } = await start();
    const c = await call(t, carrier);
    await eventually(async () => ((await storedCall(t, c.callSid))?.conversationId ?? null) !== null, 3000, 'the agent ready');
    const conversationId = (await storedCall(t, c.callSid))?.conversationId;
    const r = await api(t, `/v1/calls/${await callId(t, c.callSid)}/transfer`, { target: 'frontdesk' });
    expect(r.status).toBe(202);
    await c.stream.waitForClose(3000);
    const { action } = dialOf(carrier);
    const back = await callback(t, action, { CallSid: c.callSid, CallStatus: 'in-progress', DialCallStatus: 'busy' });
    const twiml = parseTwiml(back.body);
    expect(twiml.say[0]).toMatch(/nobody could take your call/);
    expect(twiml.streamUrl).toBeDefined();
    expect(t.bridge.manager.usedSlots).toBe(1);
    // Twilio runs the returned TwiML: a new stream on the same CallSid.
    const stream = await FakeTwilioStream.connect({ bridgeUrl: t.url, streamUrl: twiml.streamUrl ?? '', authToken: AUTH_TOKEN });
    stream.sendConnected();
    stream.sendStart({ callSid: c.callSid, customParameters: twiml.parameters });
    const again = await t.agent.nextConnection();
    const setup = await again.waitForSetup();
    expect(setup.continueConversation).toBe(conversationId);
    again.init();
    await eventually(() => t.bridge.manager.liveCalls === 1, 3000, 'the call live again');
    expect(t.bridge.manager.usedSlots).toBe(1);
    expect(await steps(t, c.callSid)).toEqual(['transfer_requested', 'transfer_dialing', 'transfer_failed', 'transfer_returned']);
    const detail = await api(t, `/v1/calls/${await callId(t, c.callSid)}`);
    expect(detail.json.transfers).toEqual([expect.objectContaining({ outcome: 'busy', returned: true })]);
    stream.sendStop();
    await eventually(() => t.bridge.manager.usedSlots === 0, 3000, 'the slot released once');
    expect((await storedCall(t, c.callSid))?.endReason).toBe('caller_hangup');
  });

  it('a DTMF hotkey transfers to its target', async () => {
    const { t, carrier } = await start({ dtmf: { '0': { transfer: 'frontdesk' } } });
    const c = await call(t, carrier);
    c.stream.sendDtmf('0');
    await eventually(() => carrier.redirects.length === 1, 3000, 'the transfer');
    expect(dialOf(carrier).xml).toContain(`>${FRONTDESK}</Number>`);
    expect((await steps(t, c.callSid))[0]).toBe('transfer_requested');
    expect((await storedCall(t, c.callSid))?.events.find((e) => e.type === 'transfer_requested')?.data).toMatchObject({ by: 'dtmf', target: 'frontdesk' });
  });

  it('refuses a target that is not declared, naming the ones that are, and dials nothing', async () => {
    const { t, carrier } = await start();
    const c = await call(t, carrier);
    const r = await api(t, `/v1/calls/${await callId(t, c.callSid)}/transfer`, { target: 'ceo' });
    expect(r.status).toBe(422);
    expect(JSON.stringify(r.json)).toMatch(/unknown_target.*use one of \\"frontdesk\\"/);
    expect(carrier.redirects).toHaveLength(0);
    expect(t.bridge.manager.liveCalls).toBe(1);
  });

  it('keeps the call with the agent when the carrier refuses the redirect', async () => {
    const { t, carrier } = await start();
    carrier.accept = false;
    const c = await call(t, carrier);
    const r = await api(t, `/v1/calls/${await callId(t, c.callSid)}/transfer`, { target: 'frontdesk' });
    expect(r.status).toBe(502);
    expect(t.bridge.manager.liveCalls).toBe(1);
    expect(await steps(t, c.callSid)).toEqual(['transfer_requested', 'transfer_failed']);
    // A second try is possible once the first failed.
    carrier.accept = true;
    expect((await api(t, `/v1/calls/${await callId(t, c.callSid)}/transfer`, { target: 'frontdesk' })).status).toBe(202);
  });

  it('answers 409 for a call that is not live, and 400 without exactly one of target and to', async () => {
    const { t, carrier } = await start();
    const c = await call(t, carrier);
    expect((await api(t, `/v1/calls/${await callId(t, c.callSid)}/transfer`, {})).status).toBe(400);
    expect((await api(t, `/v1/calls/${await callId(t, c.callSid)}/transfer`, { target: 'frontdesk', to: FRONTDESK })).status).toBe(400);
    c.stream.sendStop();
    await eventually(() => t.bridge.manager.liveCalls === 0, 3000, 'the call to end');
    const r = await api(t, `/v1/calls/${await callId(t, c.callSid)}/transfer`, { target: 'frontdesk' });
    expect(r.status).toBe(409);
    expect(r.json).toMatchObject({ error: { code: 'call_not_live' } });
  });
});

describe('warm transfer', () => {
  it('holds the caller in a conference, calls the person who hears the summary first, and joins them', async () => {
    const { t, carrier } = await start();
    const c = await call(t, carrier);
    const r = await api(t, `/v1/calls/${await callId(t, c.callSid)}/transfer`, { target: 'frontdesk', mode: 'warm', reason: 'Caller wants to change an order.' });
    expect(r.status).toBe(202);
    const hold = carrier.redirects.at(-1)?.twiml ?? '';
    expect(hold).toMatch(/<Dial><Conference startConferenceOnEnter="false" endConferenceOnExit="true"[^>]*>tr_[0-9a-f]{18}<\/Conference><\/Dial><Hangup\/>/);
    await eventually(() => carrier.created.length === 1, 3000, 'the call to the person');
    const person = carrier.created[0];
    expect(person).toMatchObject({ to: FRONTDESK, from: CALLED, timeoutS: 20 });
    expect(person?.twiml).toContain('<Say>Caller wants to change an order.</Say><Dial><Conference startConferenceOnEnter="true" endConferenceOnExit="true"');
    await c.stream.waitForClose(3000);
    expect(t.bridge.manager.usedSlots).toBe(1);
    await callback(t, person?.statusCallbackUrl ?? '', { CallSid: person?.sid ?? '', CallStatus: 'in-progress' });
    expect(t.bridge.manager.usedSlots).toBe(0);
    const confUrl = /statusCallback="([^"]+)"/.exec(hold)?.[1] ?? '';
    await callback(t, confUrl, { StatusCallbackEvent: 'participant-join', CallSid: person?.sid ?? '', ConferenceSid: 'CF' + '2'.repeat(32) });
    await callback(t, person?.statusCallbackUrl ?? '', { CallSid: person?.sid ?? '', CallStatus: 'completed' });
    expect(await steps(t, c.callSid)).toEqual(['transfer_requested', 'transfer_dialing', 'transfer_answered', 'transfer_joined', 'transfer_completed']);
  });

  it('no answer: the caller is taken off hold back to the agent, and the agent is not greeted twice', async () => {
    const { t, carrier } = await start();
    const c = await call(t, carrier);
    await api(t, `/v1/calls/${await callId(t, c.callSid)}/transfer`, { target: 'frontdesk', mode: 'warm' });
    await eventually(() => carrier.created.length === 1, 3000, 'the call to the person');
    const person = carrier.created[0];
    // Without a reason, the person would have heard a sentence built from the call.
    expect(person?.twiml).toMatch(/<Say>A caller from .* is being transferred to you\./);
    await c.stream.waitForClose(3000);
    await callback(t, person?.statusCallbackUrl ?? '', { CallSid: person?.sid ?? '', CallStatus: 'no-answer' });
    await eventually(() => carrier.redirects.length === 2, 3000, 'the caller taken back');
    const back = parseTwiml(carrier.redirects[1]?.twiml ?? '');
    expect(back.say[0]).toMatch(/nobody could take your call/);
    const stream = await FakeTwilioStream.connect({ bridgeUrl: t.url, streamUrl: back.streamUrl ?? '', authToken: AUTH_TOKEN });
    stream.sendConnected();
    stream.sendStart({ callSid: c.callSid, customParameters: back.parameters });
    const again = await t.agent.nextConnection();
    const setup = await again.waitForSetup();
    expect(setup.continueConversation).toBeDefined();
    again.init();
    await eventually(() => t.bridge.manager.liveCalls === 1, 3000, 'the call live again');
    expect(await steps(t, c.callSid)).toEqual(['transfer_requested', 'transfer_dialing', 'transfer_failed', 'transfer_returned']);
    stream.sendStop();
    await eventually(() => t.bridge.manager.usedSlots === 0, 3000, 'no slot left');
  });
});

describe('without a carrier that redirects', () => {
  it('refuses transfers (409) and offers no transfer tool', async () => {
    tb = await startTestBridge({ env: { ROUTES_FILE: routesFile({}), API_TOKEN } });
    const c = await openCall(tb, { to: CALLED });
    const r = await api(tb, `/v1/calls/${await callId(tb, c.callSid)}/transfer`, { target: 'frontdesk' });
    expect(r.status).toBe(409);
    expect(r.json).toMatchObject({ error: { code: 'transfer_unavailable' } });
  });
});
