/**
 * A recorded call that comes back to its agent after a transfer nobody answered (the same
 * CallSid, a second media stream): RECORDING=local continues the same file, after a short
 * silence, through the simulated carrier behind the fake Twilio REST server.
 */
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, expect, it } from 'vitest';
import { TwilioRestCallControl } from '../src/carrier/twilio/callControl.js';
import { JOIN_GAP_MS } from '../src/recording/localRecording.js';
import type { SimTiming } from '../src/sim/simCarrier.js';
import { FakeTwilioRest } from '../src/testing/fakeTwilioRest.js';
import { AUTH_TOKEN, eventually, PUBLIC_URL, startTestBridge, type TestBridge } from './helpers.js';
import { readStereoWav } from './recordingWav.js';

const FAST: Partial<SimTiming> = { initiatedMs: 0, ringingMs: 10, noAnswerMaxMs: 300, sayMsPerChar: 1, sayMinMs: 10, sayMaxMs: 60, msPerDialSecond: 10 };
const CALLED = '+14155550999';
const FRONTDESK = '+14155550100';
const API_TOKEN = 'test-api-token-0123456789abcdef';

let tb: TestBridge | undefined;
let rest: FakeTwilioRest | undefined;
const dirs: string[] = [];
afterEach(async () => {
  await tb?.close();
  await rest?.close();
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});

it('continues the same WAV when the caller comes back after a transfer nobody answered', async () => {
  const r = await FakeTwilioRest.start({ bridgeUrl: 'http://127.0.0.1:1', publicUrl: PUBLIC_URL, authToken: AUTH_TOKEN, timing: FAST, ringMs: [10, 20], talkMs: 400, dialOutcome: () => 'busy' });
  rest = r;
  const dir = mkdtempSync(join(tmpdir(), 'playline-rec-xfer-'));
  dirs.push(dir);
  const routes = join(dir, 'routes.json');
  writeFileSync(routes, JSON.stringify({ [CALLED]: { agentId: 'playai:agent-default', transferTargets: { frontdesk: { to: FRONTDESK, timeoutS: 10 } } } }));
  const control = new TwilioRestCallControl({ accountSid: r.accountSid, authToken: AUTH_TOKEN, say: {}, log: pino({ level: 'silent' }), apiUrl: r.url });
  const t = await startTestBridge({
    env: { ROUTES_FILE: routes, TWILIO_ACCOUNT_SID: r.accountSid, TWILIO_API_URL: r.url, API_TOKEN, RECORDING: 'local', DATA_DIR: dir },
    agent: { autoInit: true },
    overrides: { callControl: control },
  });
  tb = t;
  r.setBridgeUrl(t.url);

  const sid = r.startInbound({ from: '+14155550123', to: CALLED, talkMs: 60_000 });
  await t.agent.nextConnection();
  await eventually(async () => t.bridge.manager.liveCalls === 1 && (await t.bridge.calls.getBySid(sid))?.conversationId !== null, 5000, 'the call live');
  await new Promise((res) => setTimeout(res, 600));
  const id = (await t.bridge.calls.getBySid(sid))!.id;
  const res = await fetch(`${t.url}/v1/calls/${id}/transfer`, { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${API_TOKEN}` }, body: JSON.stringify({ target: 'frontdesk' }) });
  expect(res.status).toBe(202);
  await (await t.agent.nextConnection()).waitForSetup();
  await eventually(() => t.bridge.manager.liveCalls === 1, 5000, 'the caller back with the agent');
  // The first part is finished (its header patched) before the second one appends.
  const firstPart = readStereoWav(t.bridge.recordings.pathOf(id)).left.length;
  await new Promise((res2) => setTimeout(res2, 400));
  await control.hangup(sid);
  await eventually(async () => (await t.bridge.calls.getBySid(sid))?.recordingStatus === 'completed' && t.bridge.manager.liveCalls === 0, 5000, 'the recording completed');

  expect(readdirSync(join(dir, 'recordings'))).toEqual([`${id}.wav`]);
  const streams = r.call(sid)!.streams;
  expect(streams).toHaveLength(2);
  const wav = readStereoWav(t.bridge.recordings.pathOf(id));
  const secondStreamMs = (streams[1]!.endedAt ?? 0) - streams[1]!.startedAt;
  const total = wav.left.length / 8;
  console.info(`transfer and back: first part ${firstPart / 8} ms, file ${total} ms, second stream ${secondStreamMs} ms`);
  expect(firstPart).toBeGreaterThan(500 * 8);
  // The file is the first part, the join gap, then the second stream (within a few frames of clock slack).
  expect(Math.abs(total - (firstPart / 8 + JOIN_GAP_MS + secondStreamMs))).toBeLessThan(100);
  expect((await t.bridge.calls.getBySid(sid))!.recordingDurationS).toBeCloseTo(total / 1000, 0);
});
