/**
 * The media path's side of recording: the carrier leg says each frame's Twilio timestamp while
 * it is delivered (read from the bytes, only when asked), and the tap hands caller audio, agent
 * audio and clears to the recording on their way.
 */
import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import type WebSocket from 'ws';
import type { CarrierHandlers, CarrierLeg } from '../src/carrier/twilio/stream.js';
import { TwilioStreamConnection } from '../src/carrier/twilio/stream.js';
import type { CallAudioRecorder } from '../src/recording/localRecording.js';
import { tapHandlers, tapLeg } from '../src/recording/tap.js';

class FakeWs extends EventEmitter {
  readyState = 1;
  bufferedAmount = 0;
  sent: string[] = [];
  send(data: unknown): void {
    this.sent.push(String(data));
  }
  close(): void {
    this.readyState = 3;
  }
  terminate(): void {
    this.readyState = 3;
  }
}

const SID = `MZ${'a'.repeat(32)}`;
const noop = (): void => undefined;

function handlers(over: Partial<CarrierHandlers>): CarrierHandlers {
  return { onMedia: noop, onMediaBytes: noop, onMark: noop, onDtmf: noop, onStop: noop, onClose: noop, onBadFrame: noop, onInternalError: noop, ...over };
}

describe('the carrier leg', () => {
  it("says the media timestamp of the frame being delivered, and none outside a delivery or for a frame without one", () => {
    const ws = new FakeWs();
    const seen: Array<number | undefined> = [];
    let leg: TwilioStreamConnection | undefined;
    leg = new TwilioStreamConnection(ws as unknown as WebSocket, {
      startTimeoutMs: 1000,
      onStart: () => ({ accept: true, handlers: handlers({ onMediaBytes: () => seen.push(leg?.mediaTimestampMs) }) }),
      onHandshakeEvent: noop,
      onHandshakeBadFrame: noop,
    });
    ws.emit('message', Buffer.from(JSON.stringify({ event: 'start', sequenceNumber: '1', streamSid: SID, start: { accountSid: `AC${'0'.repeat(32)}`, streamSid: SID, callSid: `CA${'0'.repeat(32)}`, tracks: ['inbound'], customParameters: {}, mediaFormat: { encoding: 'audio/x-mulaw', sampleRate: 8000, channels: 1 } } })), false);
    const media = (extra: string) => Buffer.from(`{"event":"media","sequenceNumber":"2","streamSid":"${SID}","media":{"track":"inbound","chunk":"1",${extra}"payload":"/w=="}}`);
    ws.emit('message', media('"timestamp":"1234",'), false);
    ws.emit('message', media(''), false);
    expect(seen).toEqual([1234, undefined]);
    expect(leg.mediaTimestampMs).toBeUndefined();
    leg.close();
  });
});

describe('the recording tap', () => {
  it('records caller audio with its timestamp before the session gets it, and agent audio and clears as they go out', () => {
    const log: string[] = [];
    const rec: CallAudioRecorder = {
      callerAudio: (buf, s, e, ts) => void log.push(`caller ${Buffer.from(buf.subarray(s, e)).toString()} @${ts}`),
      agentAudio: (buf, s, e) => void log.push(`agent ${Buffer.from(buf.subarray(s, e)).toString()}`),
      cleared: () => void log.push('cleared'),
      close: async () => undefined,
    };
    const leg: CarrierLeg & { mediaTimestampMs: number } = {
      mediaTimestampMs: 40,
      sendMediaBytes: (buf, s, e) => void log.push(`sent ${Buffer.from(buf.subarray(s, e)).toString()}`),
      sendMark: (n) => void log.push(`mark ${n}`),
      sendClear: () => void log.push('clear'),
      close: noop,
      isOpen: true,
      bufferedAmount: 0,
    };
    const session = handlers({ onMediaBytes: (buf, s, e) => void log.push(`session ${Buffer.from(buf.subarray(s, e)).toString()}`) });
    const h = tapHandlers(session, leg, rec);
    const out = tapLeg(leg, rec);
    h.onMediaBytes(Buffer.from('xxAAAAyy'), 2, 6);
    out.sendMediaBytes(Buffer.from('BBBB'), 0, 4);
    out.sendMark('m1');
    out.sendClear();
    expect(log).toEqual(['caller AAAA @40', 'session AAAA', 'sent BBBB', 'agent BBBB', 'mark m1', 'clear', 'cleared']);
    expect(out.isOpen).toBe(true);
  });
});
