/**
 * RECORDING=twilio end to end against the simulated carrier behind the fake Twilio REST server:
 * an inbound call hears the consent announcement, its stream starts, Playline asks the
 * Recordings API for a dual-channel recording, Twilio's signed status callbacks fill the call
 * record, the audio is streamed through `GET /v1/calls/:id/recording`, and retention deletes it
 * through the API. Local retention is pinned here too.
 */
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { TwilioRestCallControl } from '../src/carrier/twilio/callControl.js';
import { loadConfig } from '../src/config.js';
import { RecordingService } from '../src/recording/service.js';
import type { SimTiming } from '../src/sim/simCarrier.js';
import { openDb } from '../src/store/db.js';
import { SqliteCallStore } from '../src/store/calls.js';
import { FakeTwilioRest } from '../src/testing/fakeTwilioRest.js';
import { AUTH_TOKEN, eventually, PUBLIC_URL, startTestBridge, type TestBridge } from './helpers.js';

const FAST: Partial<SimTiming> = { initiatedMs: 0, ringingMs: 10, sayMsPerChar: 1, sayMinMs: 10, sayMaxMs: 60 };
const API_TOKEN = 'test-api-token-0123456789abcdef';
const auth = { authorization: `Bearer ${API_TOKEN}` };
const CONSENT = 'This call is recorded for quality.';
const DAY = 86_400_000;

let tb: TestBridge | undefined;
let rest: FakeTwilioRest | undefined;
const dirs: string[] = [];
afterEach(async () => {
  await tb?.close();
  await rest?.close();
  tb = undefined;
  rest = undefined;
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

async function start(env: Record<string, string> = {}): Promise<{ t: TestBridge; r: FakeTwilioRest }> {
  const r = await FakeTwilioRest.start({ bridgeUrl: 'http://127.0.0.1:1', publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, timing: FAST, ringMs: [10, 20], talkMs: 1200 });
  rest = r;
  const callControl = new TwilioRestCallControl({ accountSid: r.accountSid, authToken: AUTH_TOKEN, say: {}, log: pino({ level: 'silent' }), apiUrl: r.url });
  const t = await startTestBridge({
    env: { TWILIO_ACCOUNT_SID: r.accountSid, TWILIO_API_URL: r.url, API_TOKEN, RECORDING: 'twilio', RECORDING_CONSENT_TEXT: CONSENT, ...env },
    agent: { autoInit: true },
    overrides: { callControl },
  });
  tb = t;
  r.setBridgeUrl(t.url);
  return { t, r };
}

describe('RECORDING=twilio', () => {
  it('starts a dual-channel recording when the stream starts, and the signed status callbacks fill the call record', async () => {
    const { t, r } = await start();
    const sid = r.startInbound({ from: '+14155550123', to: '+14155550999' });
    const info = await r.whenEnded(sid);
    // The consent announcement came first, before the stream (and the recording) started.
    expect(info?.said).toEqual([CONSENT]);
    expect(info?.streams).toHaveLength(1);
    expect(r.recordings).toHaveLength(1);
    const rec = r.recordings[0]!;
    const row0 = (await t.bridge.calls.getBySid(sid))!;
    expect(rec.callSid).toBe(sid);
    expect(rec.channels).toBe(2);
    expect(rec.params.RecordingStatusCallback).toBe(`${PUBLIC_URL}/twilio/recording?callId=${row0.id}`);
    expect(rec.events).toEqual(['in-progress', 'completed', 'absent']);
    await eventually(() => rec.callbacks.length === 2, 3000, 'both recording callbacks');
    expect(rec.callbacks).toEqual([
      { status: 'in-progress', httpStatus: 204 },
      { status: 'completed', httpStatus: 204 },
    ]);
    const row = (await t.bridge.calls.getBySid(sid))!;
    expect(row).toMatchObject({
      recordingBackend: 'twilio',
      recordingStatus: 'completed',
      recordingSid: rec.sid,
      recordingUrl: `https://api.twilio.com/2010-04-01/Accounts/${r.accountSid}/Recordings/${rec.sid}`,
      recordingDurationS: rec.durationS,
    });

    const view = (await (await fetch(`${t.url}/v1/calls/${row.id}`, { headers: auth })).json()) as { recording: unknown };
    expect(view.recording).toEqual({ backend: 'twilio', status: 'completed', durationS: rec.durationS, url: `/v1/calls/${row.id}/recording` });

    // The audio comes from Twilio with the account's credentials, streamed through to a client that has none.
    const media = await fetch(`${t.url}/v1/calls/${row.id}/recording`, { headers: auth });
    expect(media.status).toBe(200);
    const wav = Buffer.from(await media.arrayBuffer());
    expect(wav.toString('ascii', 0, 4)).toBe('RIFF');
    expect(wav.readUInt16LE(22)).toBe(2);
    const fetched = r.requests.filter((q) => q.path.includes(`/Recordings/${rec.sid}.wav`));
    expect(fetched.at(-1)?.path).toContain('RequestedChannels=2');
    const part = await fetch(`${t.url}/v1/calls/${row.id}/recording`, { headers: { ...auth, range: 'bytes=0-43' } });
    expect(part.status).toBe(206);
    expect(part.headers.get('content-range')).toBe(`bytes 0-43/${wav.length}`);
    expect((await part.arrayBuffer()).byteLength).toBe(44);
  });

  it('refuses an unsigned recording callback (403) and changes nothing', async () => {
    const { t } = await start();
    const res = await fetch(`${t.url}/twilio/recording`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ CallSid: `CA${'1'.repeat(32)}`, RecordingSid: `RE${'2'.repeat(32)}`, RecordingStatus: 'completed' }).toString(),
    });
    expect(res.status).toBe(403);
  });

  it('retention deletes a Twilio recording through the API and clears the call record', async () => {
    const { t, r } = await start({ RECORDING_RETENTION_DAYS: '1' });
    const sid = r.startInbound({ from: '+14155550123', to: '+14155550999' });
    await r.whenEnded(sid);
    const rec = r.recordings[0]!;
    await eventually(async () => (await t.bridge.calls.getBySid(sid))?.recordingStatus === 'completed', 3000, 'the recording completed');
    const row = (await t.bridge.calls.getBySid(sid))!;
    // Younger than a day: kept.
    expect(await t.bridge.recordings.sweep()).toBe(0);
    await t.bridge.calls.update(row.id, { recordingStartedAt: Date.now() - 2 * DAY });
    expect(await t.bridge.recordings.sweep()).toBe(1);
    expect(rec.status).toBe('deleted');
    expect(r.requests.some((q) => q.method === 'DELETE' && q.path.endsWith(`/Recordings/${rec.sid}.json`) && q.httpStatus === 204)).toBe(true);
    expect(await t.bridge.calls.get(row.id)).toMatchObject({ recordingStatus: 'deleted', recordingSid: null, recordingUrl: null, recordingDurationS: null });
    expect((await fetch(`${t.url}/v1/calls/${row.id}/recording`, { headers: auth })).status).toBe(404);
    const view = (await (await fetch(`${t.url}/v1/calls/${row.id}`, { headers: auth })).json()) as { recording: unknown };
    expect(view.recording).toBeNull();
  });
});

describe('local retention', () => {
  it('deletes local files older than RECORDING_RETENTION_DAYS and keeps younger ones', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'playline-rec-ret-'));
    dirs.push(dir);
    const config = loadConfig({ RECORDING: 'local', RECORDING_RETENTION_DAYS: '30', DATA_DIR: dir });
    const calls = new SqliteCallStore(openDb(':memory:'));
    const now = Date.now();
    const svc = new RecordingService({ settings: config.recording, calls, agentRecord: () => undefined, publicUrl: 'http://127.0.0.1', log: pino({ level: 'silent' }), now: () => now });
    const make = async (ageDays: number): Promise<string> => {
      const row = await calls.insert({ direction: 'inbound', to: '+1555', from: '+1666', agentId: 'playai:a', status: 'completed' });
      await calls.update(row.id, { recordingBackend: 'local', recordingStatus: 'completed', recordingDurationS: 3, recordingStartedAt: now - ageDays * DAY });
      writeFileSync(svc.pathOf(row.id), Buffer.alloc(44));
      return row.id;
    };
    const old = await make(31);
    const young = await make(29);
    expect(await svc.sweep()).toBe(1);
    expect(existsSync(svc.pathOf(old))).toBe(false);
    expect(existsSync(svc.pathOf(young))).toBe(true);
    expect(await calls.get(old)).toMatchObject({ recordingStatus: 'deleted', recordingDurationS: null });
    expect((await calls.get(young))?.recordingStatus).toBe('completed');
    // Nothing left to delete: a second sweep is a no-op.
    expect(await svc.sweep()).toBe(0);
  });
});
