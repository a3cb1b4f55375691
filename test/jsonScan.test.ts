import { describe, expect, it } from 'vitest';
import { decodeAgentMessage } from '../src/agent/playai/codec.js';
import { newSpan } from '../src/util/jsonBytes.js';
import { scanAgentAudio } from '../src/agent/playai/scan.js';
import { scanTwilioMedia } from '../src/carrier/twilio/scan.js';
import { decodeTwilioMessage } from '../src/carrier/twilio/codec.js';
import { prng } from '../src/util/prng.js';

const SID = 'MZ' + '0123456789abcdef'.repeat(2);
const PAYLOAD = Buffer.alloc(160, 0xd5).toString('base64');
const b = (s: string) => Buffer.from(s, 'utf8');
const text = (buf: Buffer, s: number, e: number) => buf.toString('latin1', s, e);

function twilioMedia(extra: Record<string, unknown> = {}, media: Record<string, unknown> = {}) {
  return JSON.stringify({
    event: 'media',
    sequenceNumber: '4',
    media: { track: 'inbound', chunk: '2', timestamp: '5', payload: PAYLOAD, ...media },
    streamSid: SID,
    ...extra,
  });
}

describe('fast scan of Twilio media', () => {
  it('finds the payload and streamSid of Twilio\'s documented shape, in any key order and with whitespace', () => {
    const span = newSpan();
    for (const msg of [
      twilioMedia(),
      JSON.stringify({ streamSid: SID, media: { payload: PAYLOAD }, event: 'media' }),
      JSON.stringify(JSON.parse(twilioMedia()), null, 2),
      `{ "event" : "media" , "streamSid":"${SID}", "media": {"payload":"${PAYLOAD}"} }`,
    ]) {
      const buf = b(msg);
      expect(scanTwilioMedia(buf, span, 65536)).toBe(true);
      expect(text(buf, span.audioStart, span.audioEnd)).toBe(PAYLOAD);
      expect(text(buf, span.sidStart, span.sidEnd)).toBe(SID);
    }
  });

  it.each([
    ['another event', twilioMedia({ event: 'mark' })],
    ['an unknown top-level key', twilioMedia({ extra: '1' })],
    ['an unknown media key', twilioMedia({}, { foo: 'x' })],
    ['a number value', twilioMedia({ sequenceNumber: 4 })],
    ['no payload', JSON.stringify({ event: 'media', streamSid: SID, media: { track: 'inbound' } })],
    ['no streamSid', JSON.stringify({ event: 'media', media: { payload: PAYLOAD } })],
    ['a duplicate key', `{"event":"media","streamSid":"${SID}","streamSid":"${SID}","media":{"payload":"${PAYLOAD}"}}`],
    ['escapes', `{"event":"media","streamSid":"${SID}","media":{"payload":"${PAYLOAD}","track":"in\\"bound"}}`],
    ['bad base64', twilioMedia({}, { payload: 'abc' })],
    ['trailing bytes', twilioMedia() + 'x'],
    ['a truncated frame', twilioMedia().slice(0, 100)],
    ['an array', `[${twilioMedia()}]`],
  ])('declines %s (left to the full parser)', (_what, msg) => {
    expect(scanTwilioMedia(b(msg), newSpan(), 65536)).toBe(false);
  });

  it('never accepts what the full parser rejects, and agrees with it on what it accepts (random mutations)', () => {
    const rand = prng(7);
    const base = twilioMedia();
    const span = newSpan();
    for (let n = 0; n < 20_000; n++) {
      const chars = [...base];
      const edits = 1 + Math.floor(rand() * 3);
      for (let e = 0; e < edits; e++) {
        const at = Math.floor(rand() * chars.length);
        const pick = '{}[]":,\\ ab=+/0'[Math.floor(rand() * 15)] as string;
        const op = rand();
        if (op < 0.4) chars[at] = pick;
        else if (op < 0.7) chars.splice(at, 1);
        else chars.splice(at, 0, pick);
      }
      const msg = chars.join('');
      if (!scanTwilioMedia(b(msg), span, 65536)) continue;
      const slow = decodeTwilioMessage(msg);
      expect(slow.event).toBe('media');
      if (slow.event === 'media') {
        expect(slow.payload).toBe(text(b(msg), span.audioStart, span.audioEnd));
        expect(slow.streamSid).toBe(text(b(msg), span.sidStart, span.sidEnd));
      }
    }
  });
});

describe('fast scan of agent audioStream', () => {
  it('finds the data of {"type":"audioStream","data":…} in either key order', () => {
    const span = newSpan();
    for (const msg of [`{"type":"audioStream","data":"${PAYLOAD}"}`, `{ "data": "${PAYLOAD}", "type": "audioStream" }`]) {
      const buf = b(msg);
      expect(scanAgentAudio(buf, span, 1 << 22)).toBe(true);
      expect(text(buf, span.audioStart, span.audioEnd)).toBe(PAYLOAD);
    }
  });

  it.each([
    ['another type', `{"type":"audioIn","data":"${PAYLOAD}"}`],
    ['an extra key', `{"type":"audioStream","data":"${PAYLOAD}","x":"1"}`],
    ['bad base64', `{"type":"audioStream","data":"a=b="}`],
    ['missing data', `{"type":"audioStream"}`],
    ['too long', `{"type":"audioStream","data":"${PAYLOAD}"}`],
  ])('declines %s', (what, msg) => {
    expect(scanAgentAudio(b(msg), newSpan(), what === 'too long' ? 8 : 1 << 22)).toBe(false);
  });

  it('agrees with the full parser under random mutations', () => {
    const rand = prng(11);
    const base = `{"type":"audioStream","data":"${PAYLOAD.slice(0, 40)}"}`;
    const span = newSpan();
    for (let n = 0; n < 20_000; n++) {
      const chars = [...base];
      const at = Math.floor(rand() * chars.length);
      chars[at] = '{}[]":,\\ ab=+/0'[Math.floor(rand() * 15)] as string;
      const msg = chars.join('');
      if (!scanAgentAudio(b(msg), span, 1 << 22)) continue;
      const slow = decodeAgentMessage(msg);
      expect(slow).toEqual({ type: 'audioStream', data: text(b(msg), span.audioStart, span.audioEnd) });
    }
  });
});
