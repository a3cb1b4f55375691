/**
 * Bad input is counted every time and logged little: frames before `start`
 * once per connection and kind, oversized frames on either leg as one warning
 * without a stack, and agent error codes as a bounded metric label.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import type WebSocket from 'ws';
import { FakeTwilioSocket, startHarness, type Harness } from './sessionHarness.js';
import { FakeTwilioStream } from '../src/sim/twilioSim.js';
import { AUTH_TOKEN, eventually, openCall, startTestBridge, type TestBridge } from './helpers.js';

let h: Harness | undefined;
let tb: TestBridge | undefined;
afterEach(async () => {
  h?.dispose();
  h = undefined;
  vi.useRealTimers();
  if (tb !== undefined) {
    await eventually(() => tb!.bridge.manager.usedSlots === 0, 3000, 'slots released');
    await tb.close();
  }
  tb = undefined;
});

const metricsText = async (t: TestBridge) => (await fetch(`${t.url}/metrics`)).text();
/** Lines at error level or above, or carrying a stack anywhere. */
const loud = (lines: Array<Record<string, unknown>>) => lines.filter((l) => (l.level as number) >= 50 || JSON.stringify(l).includes('stack'));

describe('bad frames before start', () => {
  it('counts every junk frame before start but logs each kind once per connection', async () => {
    vi.useFakeTimers();
    h = await startHarness();
    const sockets = [new FakeTwilioSocket(), new FakeTwilioSocket()];
    for (const ws of sockets) {
      h.handler(ws as unknown as WebSocket);
      for (let i = 0; i < 5000; i++) ws.deliver('this is not json');
      for (let i = 0; i < 3; i++) ws.emit('message', Buffer.from([1, 2, 3]), true);
    }
    const lines = h.logs.lines.filter((l) => l.msg === 'dropped a bad frame before start');
    expect(lines.map((l) => l.kind)).toEqual(['non_json', 'binary', 'non_json', 'binary']);
    expect(lines.every((l) => l.level === 40)).toBe(true);
    expect(await h.metric('playline_bad_frames_total', 'kind="non_json"')).toBe(10_000);
    expect(await h.metric('playline_bad_frames_total', 'kind="binary"')).toBe(6);
  });
});

describe('oversized frames', () => {
  it('warns once without a stack and counts it when Twilio sends a frame above maxPayload, before and after start', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    call.stream.sendRaw(JSON.stringify({ event: 'media', streamSid: call.stream.streamSid, media: { payload: 'A'.repeat(100_000) } }));
    expect((await call.stream.waitForClose(2000)).code).toBe(1009);
    await call.agent.closed;
    // A second stream sends one before its start.
    const raw = await FakeTwilioStream.connect({ bridgeUrl: tb.url, streamUrl: tb.config.streamUrl, authToken: AUTH_TOKEN, autoEchoMarks: false });
    raw.sendRaw('x'.repeat(100_000));
    expect((await raw.waitForClose(2000)).code).toBe(1009);
    await eventually(() => tb!.logs.lines.some((l) => l.msg === 'dropped a bad frame before start'), 2000, 'handshake warning');

    expect(loud(tb.logs.lines)).toEqual([]);
    const warned = tb.logs.lines.filter((l) => l.kind === 'oversized');
    expect(warned.map((l) => [l.level, l.msg])).toEqual([
      [40, 'dropped a bad frame from Twilio'],
      [40, 'dropped a bad frame before start'],
    ]);
    expect(await metricsText(tb)).toMatch(/playline_bad_frames_total\{leg="twilio",kind="oversized"\} 2/);
  });

  it('warns once without a stack and counts it when the agent sends a frame above maxPayload, then reconnects', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    call.agent.sendRaw(JSON.stringify({ type: 'audioStream', data: 'A'.repeat(4 * 1024 * 1024 + 4) }));
    const second = await tb.agent.nextConnection(3000);
    expect((await second.waitForSetup()).continueConversation).toBe(call.agent.conversationId);
    second.init();
    expect(loud(tb.logs.lines)).toEqual([]);
    const warned = tb.logs.lines.filter((l) => l.kind === 'oversized');
    expect(warned.map((l) => [l.level, l.msg])).toEqual([[40, 'dropped a bad frame from the agent']]);
    expect(await metricsText(tb)).toMatch(/playline_bad_frames_total\{leg="agent",kind="oversized"\} 1/);
    call.stream.sendStop();
  });
});

describe('agent error codes as metric labels', () => {
  it('labels documented codes as themselves and any other code as other, so an agent cannot grow the label set', async () => {
    vi.useFakeTimers();
    h = await startHarness();
    const call = h.openCall();
    for (const code of [2001, 2002, 987_654_321]) call.agent.send({ type: 'error', code, message: 'odd', isFatal: false });
    call.agent.send({ type: 'error', code: undefined, message: 'no code', isFatal: false });
    call.agent.send({ type: 'error', code: 4500, message: 'transient', isFatal: true });
    expect(await h.metric('playline_agent_errors_total', 'code="other",fatal="false"')).toBe(3);
    expect(await h.metric('playline_agent_errors_total', 'code="none",fatal="false"')).toBe(1);
    expect(await h.metric('playline_agent_errors_total', 'code="4500",fatal="true"')).toBe(1);
    const text = await h.metrics.registry.metrics();
    expect(text).not.toMatch(/code="(2001|2002|987654321)"/);
  });
});
