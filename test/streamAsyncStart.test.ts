/**
 * The carrier leg with an async `start` decision (REDIS_URL: the stream token is redeemed in
 * Redis): frames arriving meanwhile are kept in order and delivered once it is accepted; a close
 * meanwhile comes after them; a refusal drops them and closes the socket.
 */
import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import type { CarrierHandlers, StartDecision } from '../src/carrier/twilio/stream.js';
import { TwilioStreamConnection } from '../src/carrier/twilio/stream.js';

class FakeWs extends EventEmitter {
  readyState = 1;
  bufferedAmount = 0;
  closedWith: number | undefined;
  send(): void {}
  close(code?: number): void {
    this.readyState = 3;
    this.closedWith = code;
  }
  terminate(): void {
    this.readyState = 3;
  }
}

const SID = `MZ${'a'.repeat(32)}`;
const START = JSON.stringify({ event: 'start', sequenceNumber: '1', streamSid: SID, start: { accountSid: `AC${'0'.repeat(32)}`, streamSid: SID, callSid: `CA${'0'.repeat(32)}`, tracks: ['inbound'], customParameters: { token: 't' }, mediaFormat: { encoding: 'audio/x-mulaw', sampleRate: 8000, channels: 1 } } });
const media = (n: number) => Buffer.from(`{"event":"media","sequenceNumber":"${n}","streamSid":"${SID}","media":{"track":"inbound","chunk":"${n}","timestamp":"${n * 20}","payload":"/w=="}}`);
const dtmf = (d: string) => Buffer.from(JSON.stringify({ event: 'dtmf', streamSid: SID, sequenceNumber: '9', dtmf: { track: 'inbound_track', digit: d } }));

function setup() {
  const ws = new FakeWs();
  const log: string[] = [];
  const events: string[] = [];
  let decide: (d: StartDecision) => void = () => undefined;
  const handlers: CarrierHandlers = {
    onMedia: () => log.push('media(slow path)'),
    onMediaBytes: (buf, s, e) => log.push(`media ${buf.subarray(s, e).toString()}`),
    onMark: (name) => log.push(`mark ${name}`),
    onDtmf: (d) => log.push(`dtmf ${d}`),
    onStop: () => log.push('stop'),
    onClose: (code) => log.push(`close ${code}`),
    onBadFrame: (kind) => log.push(`bad ${kind}`),
    onInternalError: (err) => log.push(`error ${String(err)}`),
  };
  const leg = new TwilioStreamConnection(ws as unknown as WebSocket, {
    startTimeoutMs: 5000,
    onStart: () => new Promise<StartDecision>((resolve) => (decide = resolve)),
    onHandshakeEvent: (e, detail) => events.push(`${e}${detail !== undefined ? ` ${detail}` : ''}`),
    onHandshakeBadFrame: (kind) => events.push(`bad ${kind}`),
  });
  return { ws, leg, log, events, handlers, decide: (d: StartDecision) => decide(d) };
}

const settle = () => new Promise((r) => setImmediate(r));

describe('an async start decision', () => {
  it('keeps the frames that arrive while start is decided and delivers them in order once accepted', async () => {
    const t = setup();
    t.ws.emit('message', Buffer.from(START), false);
    t.ws.emit('message', media(2), false);
    t.ws.emit('message', dtmf('5'), false);
    t.ws.emit('message', media(3), false);
    expect(t.log).toEqual([]);
    t.decide({ accept: true, handlers: t.handlers });
    await settle();
    expect(t.log).toEqual(['media /w==', 'dtmf 5', 'media /w==']);
    // Afterwards frames go straight through.
    t.ws.emit('message', media(4), false);
    expect(t.log).toHaveLength(4);
    expect(t.events).toEqual([]);
    t.leg.close();
  });

  it('delivers a close that came while start was decided after the frames held before it', async () => {
    const t = setup();
    t.ws.emit('message', Buffer.from(START), false);
    t.ws.emit('message', media(2), false);
    t.ws.emit('close', 1006);
    t.decide({ accept: true, handlers: t.handlers });
    await settle();
    expect(t.log).toEqual(['media /w==', 'close 1006']);
    expect(t.events).toEqual([]);
  });

  it('drops the held frames and closes the socket when start is refused', async () => {
    const t = setup();
    t.ws.emit('message', Buffer.from(START), false);
    t.ws.emit('message', media(2), false);
    t.decide({ accept: false, reason: 'used_token' });
    await settle();
    expect(t.log).toEqual([]);
    expect(t.events).toEqual(['refused used_token']);
    expect(t.ws.closedWith).toBe(1008);
  });
});
