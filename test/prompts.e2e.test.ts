/**
 * Prompts in the agent's voice through the whole bridge: the fake PlayAI TTS
 * service, the Twilio simulator, the webhook's `<Play>` of a signed URL served
 * by the bridge, and closing prompts played into a live stream.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { readWav } from '../src/audio/wav.js';
import { mulawDecode } from '../src/audio/mulaw.js';
import { FakeTtsServer, fakeTtsAudio } from '../src/sim/fakeTts.js';
import { newCallSid, parseTwimlVerbs, postStatusCallback, postVoiceWebhook } from '../src/sim/twilioSim.js';
import type { TransferCarrier } from '../src/transfer/coordinator.js';
import { TwilioDialer } from '../src/outbound/twilioDialer.js';
import { FakeTwilioRest } from '../src/testing/fakeTwilioRest.js';
import { AUTH_TOKEN, dialRequest, eventually, openCall, PUBLIC_URL, startTestBridge, storedCall, type TestBridge } from './helpers.js';

const VOICE = 's3://voices/agent/manifest.json';
const BUSY = 'Sorry, every line is busy.';
const APOLOGY = 'Sorry, something went wrong.';
const GOODBYE = 'Goodbye for now.';

const cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

async function bridgeWithTts(env: Record<string, string> = {}, setup?: (f: FakeTtsServer) => void, transferCarrier?: TransferCarrier): Promise<{ tb: TestBridge; tts: FakeTtsServer }> {
  const tts = await FakeTtsServer.start({ apiKey: 'test-playai-key', userId: 'user-1', chunkBytes: 1000 });
  cleanup.push(() => tts.close());
  setup?.(tts);
  const tb = await startTestBridge({
    env: {
      TTS: 'playai',
      PLAYAI_USER_ID: 'user-1',
      TTS_VOICE: VOICE,
      PLAYAI_TTS_URL: tts.authUrl,
      DATA_DIR: mkdtempSync(join(tmpdir(), 'prompts-')),
      BUSY_TEXT: BUSY,
      APOLOGY_TEXT: APOLOGY,
      GOODBYE_TEXT: GOODBYE,
      ...env,
    },
    ...(transferCarrier !== undefined ? { overrides: { transferCarrier } } : {}),
  });
  cleanup.push(() => tb.close());
  await tb.bridge.promptsWarm;
  return { tb, tts };
}

async function metrics(tb: TestBridge): Promise<string> {
  return tb.bridge.metrics.registry.metrics();
}

describe('prompts in the agent voice', () => {
  it('a busy refusal at the webhook answers <Play> of a signed URL that serves the busy prompt as mu-law WAV', async () => {
    const { tb } = await bridgeWithTts({ MAX_CONCURRENT_CALLS: '1' });
    const hook = (sid: string) => postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: tb.config.publicUrl, authToken: AUTH_TOKEN, params: { CallSid: sid } });
    expect((await hook(newCallSid())).twiml?.streamUrl).toBeDefined(); // takes the only slot
    const refused = await hook(newCallSid());
    const verbs = parseTwimlVerbs(refused.body);
    expect(verbs.map((v) => v.verb)).toEqual(['play', 'hangup']);
    const play = verbs[0];
    if (play?.verb !== 'play') throw new Error('no play');
    const url = new URL(play.url);
    expect(url.origin).toBe(tb.config.publicUrl);

    const res = await fetch(`${tb.url}${url.pathname}${url.search}`);
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toBe('audio/wav');
    const wav = readWav(new Uint8Array(await res.arrayBuffer()));
    expect(wav.sampleRate).toBe(8000);
    expect(Array.from(wav.samples)).toEqual(Array.from(mulawDecode(fakeTtsAudio(BUSY, VOICE))));

    const forged = new URL(url);
    forged.searchParams.set('sig', 'x'.repeat(43));
    expect((await fetch(`${tb.url}${forged.pathname}${forged.search}`)).status).toBe(403);
    const later = new URL(url);
    later.searchParams.set('exp', String(Number(url.searchParams.get('exp')) + 1));
    expect((await fetch(`${tb.url}${later.pathname}${later.search}`)).status).toBe(403);
    expect(await metrics(tb)).toMatch(/playline_prompts_total\{kind="busy",via="play"\} 1/);
  });

  it('the recording consent announcement is <Play> in the agent voice ahead of the stream', async () => {
    const consent = 'This call is recorded.';
    const { tb } = await bridgeWithTts({ RECORDING: 'local', RECORDING_CONSENT_TEXT: consent });
    const hook = await postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: tb.config.publicUrl, authToken: AUTH_TOKEN, params: { CallSid: newCallSid() } });
    const verbs = parseTwimlVerbs(hook.body);
    expect(verbs.map((v) => v.verb)).toEqual(['play', 'connect', 'hangup']);
    const url = verbs[0]?.verb === 'play' ? new URL(verbs[0].url) : undefined;
    const res = await fetch(`${tb.url}${url?.pathname ?? ''}${url?.search ?? ''}`);
    expect(Array.from(readWav(new Uint8Array(await res.arrayBuffer())).samples)).toEqual(Array.from(mulawDecode(fakeTtsAudio(consent, VOICE))));
  });

  it('a TTS socket dropped mid-prompt at boot leaves that prompt as <Say> and counts the failure; the others still play', async () => {
    const { tb } = await bridgeWithTts({ MAX_CONCURRENT_CALLS: '1' }, (f) => f.dropNextAnswer(1));
    const hook = (sid: string) => postVoiceWebhook({ bridgeUrl: tb.url, publicUrl: tb.config.publicUrl, authToken: AUTH_TOKEN, params: { CallSid: sid } });
    await hook(newCallSid());
    const verbs = parseTwimlVerbs((await hook(newCallSid())).body);
    expect(verbs[0]).toMatchObject({ verb: 'say', text: BUSY });
    const m = await metrics(tb);
    expect(m).toMatch(/playline_tts_failures_total\{reason="dropped"\} 1/);
    expect(m).toMatch(/playline_prompts_total\{kind="busy",via="say"\} 1/);
    expect(tb.bridge.prompts.cached('goodbye')).toBeDefined();
  });

  it('an apology after the agent refuses is played into the live stream, and the call ends cleanly after its last mark (no REST call)', async () => {
    const { tb } = await bridgeWithTts();
    const call = await openCall(tb, { init: false });
    call.agent.error(4401, 'invalid apiKey', true);
    const closed = await call.stream.waitForClose(5000);
    expect(closed.code).toBe(1000);
    const want = fakeTtsAudio(APOLOGY, VOICE);
    const sent = Buffer.concat(call.stream.mediaPayloads.map((p) => Buffer.from(p, 'base64')));
    expect(sent.equals(want)).toBe(true);
    // Every mark was echoed before the bridge closed the stream: the caller heard it all.
    expect(call.stream.marks.length).toBeGreaterThan(0);
    expect(call.stream.echoedMarks).toEqual(call.stream.marks);
    expect(tb.callControl.requests).toEqual([]);
    await eventually(async () => (await storedCall(tb, call.callSid))?.endReason === 'agent_error', 3000, 'end reason');
    expect((await storedCall(tb, call.callSid))?.spoken).toEqual([APOLOGY]);
    expect(await metrics(tb)).toMatch(/playline_prompts_total\{kind="apology",via="stream"\} 1/);
  });

  it('overflow to a number mid-async call: the busy prompt plays in the agent voice, then the call is forwarded with no spoken text', async () => {
    const { tb } = await bridgeWithTts({ OVERFLOW_ACTION: 'dial', FALLBACK_NUMBER: '+14155550188' });
    const call = await openCall(tb, { init: false });
    // Twilio runs the new TwiML and ends the stream.
    tb.callControl.onRequest = () => void setTimeout(() => call.stream.sendStop(), 5);
    call.agent.error(4429, 'maximum concurrent connections exceeded', true);
    await eventually(() => tb.callControl.requests.length === 1, 5000, 'the forward');
    const sent = Buffer.concat(call.stream.mediaPayloads.map((p) => Buffer.from(p, 'base64')));
    expect(sent.equals(fakeTtsAudio(BUSY, VOICE))).toBe(true);
    // Forwarded only once the caller had heard the whole prompt (every mark echoed), and without <Say>.
    expect(call.stream.echoedMarks).toEqual(call.stream.marks);
    expect(tb.callControl.requests).toEqual([{ callSid: call.callSid, forwardTo: '+14155550188' }]);
    await call.stream.waitForClose(5000);
    await eventually(async () => (await storedCall(tb, call.callSid))?.endReason === 'agent_capacity', 3000, 'end reason');
  });

  it('a goodbye (drain, max duration) replaces agent audio still queued and ends after its last mark', async () => {
    const { tb } = await bridgeWithTts();
    const call = await openCall(tb);
    call.agent.newAudioStream();
    for (let i = 0; i < 50; i++) call.agent.audio(Buffer.alloc(160, 0x55).toString('base64'));
    await call.stream.waitFor((s) => s.mediaPayloads.length >= 10);
    const session = tb.bridge.manager.getSession(call.callSid);
    session?.endWithGoodbye('max_duration');
    await call.stream.waitForClose(5000);
    expect(call.stream.received.some((r) => typeof r.msg === 'object' && r.msg !== null && 'event' in r.msg && r.msg.event === 'clear')).toBe(true);
    const tail = Buffer.concat(call.stream.mediaPayloads.map((p) => Buffer.from(p, 'base64')));
    const want = fakeTtsAudio(GOODBYE, VOICE);
    expect(tail.subarray(tail.length - want.length).equals(want)).toBe(true);
    expect(tb.callControl.requests).toEqual([]);
    await eventually(async () => (await storedCall(tb, call.callSid))?.endReason === 'max_duration', 3000, 'end reason');
  });

  it('with TTS off the goodbye goes through call control as text, as before', async () => {
    const tb = await startTestBridge({ env: { TTS: 'off', GOODBYE_TEXT: GOODBYE } });
    cleanup.push(() => tb.close());
    const call = await openCall(tb);
    tb.bridge.manager.getSession(call.callSid)?.endWithGoodbye('shutdown');
    await eventually(() => tb.callControl.requests.length === 1, 3000, 'call control');
    expect(tb.callControl.requests[0]).toMatchObject({ callSid: call.callSid, text: GOODBYE });
    expect(call.stream.mediaPayloads).toEqual([]);
  });
});

describe('transfers in the agent voice', () => {
  const FRONTDESK = '+14155550100';
  const CALLED = '+14155550999';
  const API_TOKEN = 'test-api-token-0123456789abcdef';
  const RETURN = 'Nobody answered, here is your agent again.';

  /** Records what a transfer asks of Twilio; a redirect ends the stream as Twilio does. */
  class Carrier implements TransferCarrier {
    readonly redirects: string[] = [];
    readonly created: string[] = [];
    stop: (() => void) | undefined;
    async redirect(_callSid: string, twiml: string): Promise<boolean> {
      this.redirects.push(twiml);
      setTimeout(() => this.stop?.(), 5);
      return true;
    }
    async createCall(o: { twiml: string }): Promise<string | undefined> {
      this.created.push(o.twiml);
      return `CA${'e'.repeat(32)}`;
    }
    async hangup(): Promise<boolean> {
      return true;
    }
  }

  async function start(): Promise<{ tb: TestBridge; carrier: Carrier }> {
    const dir = mkdtempSync(join(tmpdir(), 'prompts-routes-'));
    const routes = join(dir, 'routes.json');
    writeFileSync(routes, JSON.stringify({ [CALLED]: { agentId: 'playai:agent-default', transferTargets: { frontdesk: { to: FRONTDESK, timeoutS: 20 } } } }));
    const carrier = new Carrier();
    const { tb } = await bridgeWithTts({ ROUTES_FILE: routes, TWILIO_ACCOUNT_SID: `AC${'0'.repeat(32)}`, API_TOKEN, TRANSFER_RETURN_TEXT: RETURN }, undefined, carrier);
    return { tb, carrier };
  }

  const transfer = async (tb: TestBridge, callSid: string, mode: 'cold' | 'warm'): Promise<number> => {
    const id = (await storedCall(tb, callSid))?.id ?? '';
    const res = await fetch(`${tb.url}/v1/calls/${id}/transfer`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${API_TOKEN}` }, body: JSON.stringify({ target: 'frontdesk', mode }) });
    return res.status;
  };

  it('a caller back from a transfer nobody answered hears the return text as <Play> before the stream reconnects', async () => {
    const { tb, carrier } = await start();
    const call = await openCall(tb, { to: CALLED });
    carrier.stop = () => call.stream.sendStop();
    expect(await transfer(tb, call.callSid, 'cold')).toBe(202);
    const action = /<Dial action="([^"]+)"/.exec(carrier.redirects.at(-1) ?? '')?.[1]?.replaceAll('&amp;', '&') ?? '';
    await call.stream.waitForClose(3000);
    const back = await postStatusCallback({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, path: new URL(action).pathname, params: { CallSid: call.callSid, CallStatus: 'in-progress', DialCallStatus: 'no-answer' } });
    const verbs = parseTwimlVerbs(back.body);
    expect(verbs.map((v) => v.verb)).toEqual(['play', 'connect', 'hangup']);
    const play = verbs[0];
    const url = play?.verb === 'play' ? new URL(play.url) : undefined;
    const res = await fetch(`${tb.url}${url?.pathname ?? ''}${url?.search ?? ''}`);
    expect(res.status).toBe(200);
    expect(Array.from(readWav(new Uint8Array(await res.arrayBuffer())).samples)).toEqual(Array.from(mulawDecode(fakeTtsAudio(RETURN, VOICE))));
  });

  it('the person in a warm transfer hears the summary as <Play> of its synthesized audio', async () => {
    const { tb, carrier } = await start();
    const call = await openCall(tb, { to: CALLED });
    carrier.stop = () => call.stream.sendStop();
    expect(await transfer(tb, call.callSid, 'warm')).toBe(202);
    await eventually(() => carrier.created.length === 1, 5000, 'the call to the person');
    const verbs = parseTwimlVerbs(carrier.created[0] ?? '');
    expect(verbs[0]?.verb).toBe('play');
    expect(verbs[1]?.verb).toBe('dial');
  });
});

describe('a campaign voicemail message in the agent voice', () => {
  it('is left as <Play> of its synthesized audio (the carrier fetches our signed URL)', async () => {
    const { tb } = await bridgeWithTts({}, undefined);
    const rest = await FakeTwilioRest.start({ bridgeUrl: tb.url, publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, talkMs: 5000, ringMs: [10, 20], timing: { initiatedMs: 0, ringingMs: 10 }, outcomeFor: () => 'answered' });
    cleanup.push(() => rest.close());
    const dialer = new TwilioDialer({ accountSid: rest.accountSid, authToken: AUTH_TOKEN, apiUrl: rest.url, speech: (text) => tb.bridge.prompts.spokenSoon({ text }, 2500) });
    const created = await dialer.create(dialRequest('vm-1', { url: `${PUBLIC_URL}/twilio/voice`, statusCallback: `${PUBLIC_URL}/twilio/status` }));
    await eventually(() => rest.call(created.sid)?.status === 'in-progress', 3000, 'answered');
    await dialer.sayAndHangup(created.sid, 'Hi, this is Acme, please call us back.');
    const info = await rest.whenEnded(created.sid);
    expect(info?.said).toEqual([]);
    const url = new URL(info?.played[0] ?? 'http://none');
    expect(url.pathname).toMatch(/^\/prompts\/[0-9a-f]{64}\.wav$/);
    expect((await fetch(`${tb.url}${url.pathname}${url.search}`)).status).toBe(200);
  });
});
