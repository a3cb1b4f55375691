import { afterEach, describe, expect, it } from 'vitest';
import { eventually, numberedFrames, openCall, startTestBridge, storedCall, ulaw, type TestBridge } from './helpers.js';

let tb: TestBridge | undefined;
afterEach(async () => {
  if (tb) {
    // Every path must give its slot back.
    await eventually(() => tb!.bridge.manager.usedSlots === 0, 3000, 'slots released');
    await tb.close();
  }
  tb = undefined;
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const metricsText = async (t: TestBridge) => (await fetch(`${t.url}/metrics`)).text();

describe('call start', () => {
  it('sends setup first with mu-law 8 kHz both ways, the API key and the route prompt and greeting', async () => {
    tb = await startTestBridge();
    tb.config.routes.set('+15550001111', { agentId: 'sales', prompt: 'Be brief.', customGreeting: 'Hello from sales' });
    const call = await openCall(tb, { to: '+15550001111' });
    expect(call.agent.agentId).toBe('sales');
    expect(call.agent.frames[0]).toEqual({
      type: 'setup',
      apiKey: 'test-playai-key',
      inputEncoding: 'mulaw',
      inputSampleRate: 8000,
      outputFormat: 'mulaw',
      outputSampleRate: 8000,
      prompt: 'Be brief.',
      customGreeting: 'Hello from sales',
    });
    call.stream.sendStop();
  });

  it('buffers caller audio that arrives before init and delivers all of it in order after init', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb, { init: false });
    const frames = numberedFrames(40);
    for (const f of frames.slice(0, 30)) call.stream.sendMedia(f);
    await sleep(100);
    expect(call.agent.audioIn).toHaveLength(0);
    call.agent.init('conv-1');
    for (const f of frames.slice(30)) call.stream.sendMedia(f);
    const got = await call.agent.waitForAudioIn(40);
    expect(got).toEqual(frames);
    expect((await storedCall(tb, call.callSid))?.conversationId).toBe('conv-1');
    call.stream.sendStop();
  });

  it('passes caller payloads to the agent untouched as audioIn', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    const odd = Buffer.from([0, 1, 2, 250, 251, 252, 253, 254, 255, 3]).toString('base64');
    call.stream.sendMedia(odd);
    const [first] = await call.agent.waitForAudioIn(1);
    expect(first).toBe(odd);
    const frame = await call.agent.waitFor((f) => f.type === 'audioIn');
    expect(Object.keys(frame).sort()).toEqual(['data', 'type']);
    call.stream.sendStop();
  });

  it('ends the call with an apology when the agent never sends init and no retry is allowed', async () => {
    tb = await startTestBridge({ env: { AGENT_INIT_TIMEOUT_MS: '300', AGENT_RECONNECT_ATTEMPTS: '0' } });
    const call = await openCall(tb, { init: false });
    await call.agent.closed;
    await call.stream.waitForClose(2000);
    expect(tb.callControl.spoken).toEqual([{ callSid: call.callSid, text: tb.config.messages.apology }]);
    expect((await storedCall(tb, call.callSid))?.endReason).toBe('agent_init_timeout');
  });
});

describe('agent audio to the caller', () => {
  it('relays audioStream as media with exactly Twilio fields and the same payload', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    call.agent.newAudioStream();
    const chunks = [ulaw(160, 0x11), ulaw(320, 0x22), ulaw(800, 0x33)];
    for (const c of chunks) call.agent.audio(c);
    await call.stream.waitFor((s) => s.mediaPayloads.length === 3);
    expect(call.stream.mediaPayloads).toEqual(chunks);
    const media = call.stream.received.find((r) => (r.msg as { event?: string }).event === 'media')?.msg;
    expect(media).toEqual({ event: 'media', streamSid: call.stream.streamSid, media: { payload: chunks[0] } });
    expect(call.stream.violations).toEqual([]);
    call.stream.sendStop();
  });

  it('places about one mark per 160 ms of audio, not one per chunk', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    call.agent.newAudioStream();
    for (let i = 0; i < 50; i++) call.agent.audio(ulaw(160)); // 1 s in 20 ms chunks
    call.agent.send({ type: 'audioStreamEnd' });
    await call.stream.waitFor((s) => s.mediaPayloads.length === 50);
    await sleep(50);
    expect(call.stream.marks.length).toBeGreaterThanOrEqual(6);
    expect(call.stream.marks.length).toBeLessThanOrEqual(8);
    expect(new Set(call.stream.marks).size).toBe(call.stream.marks.length);
    call.stream.sendStop();
  });

  it('marks the tail of a response when the agent stops sending', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb, { autoEchoMarks: false });
    call.agent.newAudioStream();
    for (let i = 0; i < 3; i++) call.agent.audio(ulaw(160));
    await call.stream.waitFor((s) => s.marks.length === 1, 1000);
    call.stream.sendStop();
  });

  it('strips a WAV header if the agent wraps its mu-law in one', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    const pcm = Buffer.alloc(160, 0x42);
    const header = Buffer.alloc(44);
    header.write('RIFF', 0);
    header.writeUInt32LE(36 + pcm.length, 4);
    header.write('WAVE', 8);
    header.write('fmt ', 12);
    header.writeUInt32LE(16, 16);
    header.writeUInt16LE(7, 20);
    header.writeUInt16LE(1, 22);
    header.writeUInt32LE(8000, 24);
    header.writeUInt32LE(8000, 28);
    header.writeUInt16LE(1, 32);
    header.writeUInt16LE(8, 34);
    header.write('data', 36);
    header.writeUInt32LE(pcm.length, 40);
    call.agent.audio(Buffer.concat([header, pcm]).toString('base64'));
    await call.stream.waitFor((s) => s.mediaPayloads.length === 1);
    expect(call.stream.mediaPayloads[0]).toBe(pcm.toString('base64'));
    call.stream.sendStop();
  });
});

describe('barge-in', () => {
  it('sends clear on voiceActivityStart while agent audio is queued and drops late audio until newAudioStream', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    call.agent.newAudioStream();
    for (let i = 0; i < 25; i++) call.agent.audio(ulaw(800, 0x21)); // 2.5 s, queued at "Twilio"
    await call.stream.waitFor((s) => s.mediaPayloads.length === 25);
    call.agent.voiceActivityStart();
    await call.stream.waitFor((s) => s.clears === 1);
    // Late audio of the interrupted response must not reach the caller.
    call.agent.audio(ulaw(800, 0x99));
    call.agent.audio(ulaw(800, 0x99));
    await sleep(100);
    expect(call.stream.mediaPayloads).toHaveLength(25);
    // The next response plays.
    call.agent.newAudioStream();
    call.agent.audio(ulaw(160, 0x44));
    await call.stream.waitFor((s) => s.mediaPayloads.length === 26);
    expect(call.stream.mediaPayloads[25]).toBe(ulaw(160, 0x44));
    expect(call.stream.clears).toBe(1);
    const m = await metricsText(tb);
    expect(m).toMatch(/playline_barge_ins_total 1/);
    expect(m).toMatch(/playline_marks_total\{kind="stale"\} [1-9]/);
    expect(m).toMatch(/playline_agent_frames_dropped_total\{reason="barge_in"\} 2/);
    expect(call.stream.violations).toEqual([]);
    call.stream.sendStop();
  });

  it('sends no clear when the caller speaks while nothing is queued', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    call.agent.newAudioStream();
    call.agent.audio(ulaw(160)); // 20 ms, played almost at once
    call.agent.send({ type: 'audioStreamEnd' });
    await call.stream.waitFor((s) => s.marksEchoed >= 1, 2000);
    await sleep(30);
    call.agent.voiceActivityStart();
    call.agent.audio(ulaw(160, 0x10));
    await call.stream.waitFor((s) => s.mediaPayloads.length === 2);
    expect(call.stream.clears).toBe(0);
    call.stream.sendStop();
  });

  it('ignores mark echoes of a cleared generation: playback state follows only current marks', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb, { autoEchoMarks: false });
    call.agent.newAudioStream();
    for (let i = 0; i < 10; i++) call.agent.audio(ulaw(800));
    await call.stream.waitFor((s) => s.marks.length >= 5);
    call.agent.voiceActivityStart();
    await call.stream.waitFor((s) => s.clears === 1);
    const session = tb.bridge.manager.getSession(call.callSid) as unknown as { playback: { queued: boolean } };
    expect(session.playback.queued).toBe(false);
    call.stream.echoPendingMarks(); // what Twilio does after clear
    call.agent.newAudioStream();
    call.agent.audio(ulaw(800));
    await call.stream.waitFor((s) => s.mediaPayloads.length === 11);
    await sleep(20);
    // The stale echoes must not have been taken as playback of the new audio.
    expect(session.playback.queued).toBe(true);
    call.stream.sendStop();
  });

  it('clears what is left of the previous response on newAudioStream', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    call.agent.newAudioStream();
    for (let i = 0; i < 20; i++) call.agent.audio(ulaw(800));
    await call.stream.waitFor((s) => s.mediaPayloads.length === 20);
    call.agent.newAudioStream();
    await call.stream.waitFor((s) => s.clears === 1);
    call.agent.audio(ulaw(160, 0x31));
    await call.stream.waitFor((s) => s.mediaPayloads.length === 21);
    call.stream.sendStop();
  });
});

describe('ending the call', () => {
  it('takes a clean close (1000) after init without hangup as the agent ending the call, as PlayAI clients do', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    call.agent.close(1000, 'done');
    await call.stream.waitForClose();
    expect((await storedCall(tb, call.callSid))?.endReason).toBe('agent_hangup');
    expect(tb.agent.connections).toHaveLength(1);
    expect(tb.callControl.spoken).toHaveLength(0);
  });

  it('reconnects after a going-away close (1001), which is not the agent ending the call', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    call.agent.close(1001, 'restarting');
    const again = await tb.agent.nextConnection();
    const setup = await again.waitForSetup();
    expect(setup.continueConversation).toBe(call.agent.conversationId);
    call.stream.sendStop();
  });

  it('ignores a hangup before init', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb, { init: false });
    call.agent.hangup();
    call.agent.init();
    call.agent.audio(ulaw(160));
    await call.stream.waitFor((s) => s.mediaPayloads.length === 1);
    expect(call.stream.closed).toBe(false);
    call.stream.sendStop();
  });

  it('lets queued agent audio finish after an agent hangup, then closes the stream', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    call.agent.newAudioStream();
    for (let i = 0; i < 8; i++) call.agent.audio(ulaw(800)); // 800 ms
    await call.stream.waitFor((s) => s.mediaPayloads.length === 8);
    const t0 = Date.now();
    call.agent.hangup('agent');
    await call.agent.closed;
    await sleep(200);
    expect(call.stream.closed).toBe(false);
    const closed = await call.stream.waitForClose(3000);
    expect(closed.code).toBe(1000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(500);
    expect((await storedCall(tb, call.callSid))?.endReason).toBe('agent_hangup');
  });

  it('closes at once after an agent hangup when nothing is queued', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    const t0 = Date.now();
    call.agent.hangup('agent');
    await call.stream.waitForClose(1000);
    expect(Date.now() - t0).toBeLessThan(500);
  });

  it('bounds the wait for playback when Twilio never echoes the marks', async () => {
    tb = await startTestBridge({ env: { HANGUP_DRAIN_TIMEOUT_MS: '400' } });
    const call = await openCall(tb, { autoEchoMarks: false });
    call.agent.newAudioStream();
    for (let i = 0; i < 5; i++) call.agent.audio(ulaw(800));
    await call.stream.waitFor((s) => s.mediaPayloads.length === 5);
    const t0 = Date.now();
    call.agent.hangup();
    await call.stream.waitForClose(2000);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(350);
  });

  it('closes the agent socket at once when the caller hangs up with stop', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    const t0 = Date.now();
    call.stream.sendStop();
    await call.agent.closed;
    expect(Date.now() - t0).toBeLessThan(500);
    expect((await storedCall(tb, call.callSid))?.endReason).toBe('caller_hangup');
  });

  it('closes the agent socket when the Twilio socket drops without stop', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    call.stream.terminate();
    await call.agent.closed;
  });

  it('speaks an apology and ends the call on a fatal agent error that a reconnect cannot fix', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    call.agent.error(1002, 'invalid agent id', true);
    await call.agent.closed;
    await call.stream.waitForClose(2000);
    expect(tb.callControl.spoken).toEqual([{ callSid: call.callSid, text: tb.config.messages.apology }]);
    const record = await storedCall(tb, call.callSid);
    expect(record?.endReason).toBe('agent_error');
    expect(record?.spoken).toEqual([tb.config.messages.apology]);
  });

  it('treats a documented non-retryable code without isFatal as fatal', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    call.agent.send({ type: 'error', code: 4401, message: 'unauthorized' });
    await call.stream.waitForClose(2000);
    expect(tb.callControl.spoken).toHaveLength(1);
    expect(tb.agent.connections).toHaveLength(1);
  });

  it('closes the stream itself when call control cannot speak (falls through to <Hangup/>)', async () => {
    tb = await startTestBridge();
    tb.callControl.accept = false;
    const call = await openCall(tb);
    const t0 = Date.now();
    call.agent.error(1005, 'insufficient credits', true);
    await call.stream.waitForClose(1000);
    expect(Date.now() - t0).toBeLessThan(400);
  });

  it('logs a non-fatal agent error and keeps the call going', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    call.agent.error(2001, 'minor', false);
    call.agent.audio(ulaw(160));
    await call.stream.waitFor((s) => s.mediaPayloads.length === 1);
    call.stream.sendMedia(ulaw(160));
    await call.agent.waitForAudioIn(1);
    expect(call.stream.closed).toBe(false);
    expect(tb.callControl.spoken).toHaveLength(0);
    expect(tb.logs.lines.some((l) => l.msg === 'agent reported a non-fatal error' && l.code === 'other')).toBe(true);
    call.stream.sendStop();
  });
});

describe('tolerance of bad input', () => {
  it('counts and ignores unknown agent message types and keeps transcripts on the call record (debug log only)', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    call.agent.send({ type: 'somethingNew', x: 1 });
    call.agent.send({ type: 'somethingNew', x: 2 });
    call.agent.send({ type: 'SYS_LOG', payload: { type: 'ORC_X' } });
    call.agent.transcript('user', 'my account number is 1234');
    call.agent.transcript('agent', 'thanks');
    call.agent.audio(ulaw(160));
    await call.stream.waitFor((s) => s.mediaPayloads.length === 1);
    const record = await storedCall(tb, call.callSid);
    expect(record?.transcript.map((t) => [t.role, t.text])).toEqual([
      ['user', 'my account number is 1234'],
      ['agent', 'thanks'],
    ]);
    expect(await metricsText(tb)).toMatch(/playline_agent_unknown_messages_total 2/);
    const infoLines = tb.logs.lines.filter((l) => (l.level as number) >= 30).map((l) => JSON.stringify(l));
    expect(infoLines.join('\n')).not.toContain('1234');
    expect(tb.logs.lines.filter((l) => l.msg === 'ignored an agent message of unknown type')).toHaveLength(1);
    call.stream.sendStop();
  });

  it('drops bad Twilio frames of every kind, logs each kind once, and keeps relaying audio', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    const s = call.stream;
    s.sendRaw('this is not json');
    s.sendRaw('this is not json either');
    s.sendRaw(Buffer.from([1, 2, 3]));
    s.sendRaw(JSON.stringify({ event: 'surprise', streamSid: s.streamSid }));
    s.sendRaw(JSON.stringify({ event: 'media', streamSid: 'MZ' + 'f'.repeat(32), media: { payload: ulaw(160) } }));
    s.sendRaw(JSON.stringify({ event: 'media', streamSid: s.streamSid, media: { payload: '***not base64***' } }));
    s.sendRaw(JSON.stringify({ event: 'media', streamSid: s.streamSid }));
    s.sendRaw('[1,2,3]');
    s.sendMedia(ulaw(160, 0x12));
    const [got] = await call.agent.waitForAudioIn(1);
    expect(got).toBe(ulaw(160, 0x12));
    const m = await metricsText(tb);
    for (const kind of ['non_json', 'binary', 'unknown_event', 'wrong_stream_sid', 'bad_payload', 'invalid_fields', 'not_object']) {
      expect(m).toMatch(new RegExp(`playline_bad_frames_total\\{leg="twilio",kind="${kind}"\\} [1-9]`));
    }
    expect(tb.logs.lines.filter((l) => l.msg === 'dropped a bad frame from Twilio' && l.kind === 'non_json')).toHaveLength(1);
    expect(s.closed).toBe(false);
    s.sendStop();
  });

  it('closes only the offending call when Twilio sends an oversized frame', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    const other = await openCall(tb);
    call.stream.sendRaw(JSON.stringify({ event: 'media', streamSid: call.stream.streamSid, media: { payload: 'A'.repeat(100_000) } }));
    const closed = await call.stream.waitForClose(2000);
    expect(closed.code).toBe(1009);
    await call.agent.closed;
    other.stream.sendMedia(ulaw(160));
    await other.agent.waitForAudioIn(1);
    other.stream.sendStop();
  });

  it('drops bad agent frames and keeps the call going', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    call.agent.sendRaw('{{{');
    call.agent.sendRaw(Buffer.from([0, 1, 2]));
    call.agent.send({ type: 'audioStream', data: '%%%%' });
    call.agent.send({ type: 'audioStream' });
    call.agent.send({ noType: true });
    call.agent.audio(ulaw(160, 0x61));
    await call.stream.waitFor((s) => s.mediaPayloads.length === 1);
    expect(call.stream.mediaPayloads[0]).toBe(ulaw(160, 0x61));
    expect(call.stream.violations).toEqual([]);
    const m = await metricsText(tb);
    expect(m).toMatch(/playline_bad_frames_total\{leg="agent",kind="bad_audio"\} 1/);
    expect(m).toMatch(/playline_bad_frames_total\{leg="agent",kind="non_json"\} 1/);
    call.stream.sendStop();
  });
});

describe('logging', () => {
  it('binds callSid, streamSid, agentId and conversationId to call log lines and never logs secrets, tokens or audio', async () => {
    tb = await startTestBridge();
    const call = await openCall(tb);
    const payload = ulaw(160, 0x3c);
    call.stream.sendMedia(payload);
    await call.agent.waitForAudioIn(1);
    call.agent.audio(ulaw(160, 0x3d));
    await call.stream.waitFor((s) => s.mediaPayloads.length === 1);
    call.agent.hangup();
    await call.stream.waitForClose(3000);
    const text = tb.logs.text();
    for (const secret of ['test-playai-key', 'test-auth-token', call.token, payload, ulaw(160, 0x3d)]) {
      expect(text).not.toContain(secret);
    }
    const ended = tb.logs.lines.find((l) => l.msg === 'call ended');
    expect(ended).toMatchObject({
      callSid: call.callSid,
      streamSid: call.stream.streamSid,
      agentId: 'playai:agent-default',
      conversationId: call.agent.conversationId,
      outcome: 'agent_hangup',
    });
    // Nothing is logged per frame.
    expect(tb.logs.lines.length).toBeLessThan(20);
  });
});

describe('AUDIO_IN_BATCH_MS', () => {
  const decode = (frames: string[]) => Buffer.concat(frames.map((f) => Buffer.from(f, 'base64')));

  it('coalesces caller frames into audioIn messages of the batch length, in order, and flushes a partial batch after the batch time', async () => {
    tb = await startTestBridge({ env: { AUDIO_IN_BATCH_MS: '40' } });
    const call = await openCall(tb);
    const frames = numberedFrames(11);
    for (const f of frames) call.stream.sendMedia(f);
    const got = await call.agent.waitForAudioIn(6, 2000);
    expect(got.slice(0, 5).map((g) => Buffer.from(g, 'base64').length)).toEqual([320, 320, 320, 320, 320]);
    expect(Buffer.from(got[5]!, 'base64').length).toBe(160); // the 11th frame, after the timer
    expect(decode(got).equals(decode(frames))).toBe(true);
    call.stream.sendStop();
  });

  it('keeps a partial batch for the reconnect when the agent leg drops', async () => {
    tb = await startTestBridge({ env: { AUDIO_IN_BATCH_MS: '100' } });
    const call = await openCall(tb);
    const frames = numberedFrames(13);
    for (const f of frames.slice(0, 7)) call.stream.sendMedia(f); // 5 go out as one batch, 2 wait
    await call.agent.waitForAudioIn(1);
    call.agent.terminate();
    const second = await tb.agent.nextConnection(3000);
    await second.waitForSetup();
    for (const f of frames.slice(7)) call.stream.sendMedia(f);
    second.init();
    await eventually(() => decode([...call.agent.audioIn, ...second.audioIn]).length === 13 * 160, 3000, 'all audio');
    expect(decode([...call.agent.audioIn, ...second.audioIn]).equals(decode(frames))).toBe(true);
    call.stream.sendStop();
  });
});
