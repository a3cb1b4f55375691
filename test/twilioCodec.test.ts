import { describe, expect, it } from 'vitest';
import { decodeTwilioMessage, TwilioEncoder } from '../src/carrier/twilio/codec.js';

const SID = 'MZ' + 'a'.repeat(32);

describe('Twilio codec', () => {
  it('decodes a recorded session: connected, start, media, dtmf, mark, stop', () => {
    const frames = [
      { event: 'connected', protocol: 'Call', version: '1.0.0' },
      {
        event: 'start',
        sequenceNumber: '1',
        streamSid: SID,
        start: {
          accountSid: 'AC' + '1'.repeat(32),
          streamSid: SID,
          callSid: 'CA' + '2'.repeat(32),
          tracks: ['inbound'],
          customParameters: { token: 'tok', agentId: 'a1' },
          mediaFormat: { encoding: 'audio/x-mulaw', sampleRate: 8000, channels: 1 },
        },
      },
      { event: 'media', sequenceNumber: '2', streamSid: SID, media: { track: 'inbound', chunk: '1', timestamp: '5', payload: '/////w==' } },
      { event: 'dtmf', sequenceNumber: '3', streamSid: SID, dtmf: { track: 'inbound_track', digit: '7' } },
      { event: 'mark', sequenceNumber: '4', streamSid: SID, mark: { name: 'pl:0:1' } },
      { event: 'stop', sequenceNumber: '5', streamSid: SID, stop: { accountSid: 'AC' + '1'.repeat(32), callSid: 'CA' + '2'.repeat(32) } },
    ];
    const decoded = frames.map((f) => decodeTwilioMessage(JSON.stringify(f)));
    expect(decoded.map((d) => d.event)).toEqual(['connected', 'start', 'media', 'dtmf', 'mark', 'stop']);
    expect(decoded[1]).toMatchObject({ streamSid: SID, callSid: 'CA' + '2'.repeat(32), customParameters: { token: 'tok', agentId: 'a1' } });
    expect(decoded[2]).toMatchObject({ payload: '/////w==', track: 'inbound' });
    expect(decoded[3]).toMatchObject({ digit: '7' });
    expect(decoded[4]).toMatchObject({ name: 'pl:0:1' });
  });

  it('accepts a start without customParameters and a start with non-string parameter values dropped', () => {
    const base = { event: 'start', streamSid: SID, start: { streamSid: SID, callSid: 'CA1', accountSid: 'AC1' } };
    expect(decodeTwilioMessage(JSON.stringify(base))).toMatchObject({ event: 'start', customParameters: {} });
    const odd = { ...base, start: { ...base.start, customParameters: { token: 5, agentId: 'x' } } };
    expect(decodeTwilioMessage(JSON.stringify(odd))).toMatchObject({ customParameters: { agentId: 'x' } });
  });

  it.each([
    ['not json', 'non_json'],
    ['[1]', 'not_object'],
    ['null', 'not_object'],
    ['{"event":"nope"}', 'unknown_event'],
    ['{"noevent":1}', 'unknown_event'],
    [`{"event":"media","streamSid":"${SID}"}`, 'invalid_fields'],
    [`{"event":"media","streamSid":"${SID}","media":{"payload":5}}`, 'invalid_fields'],
    [`{"event":"media","streamSid":"${SID}","media":{"payload":"a b c"}}`, 'bad_payload'],
    [`{"event":"media","streamSid":"${SID}","media":{"payload":"abc"}}`, 'bad_payload'],
    [`{"event":"start","streamSid":"${SID}","start":{}}`, 'invalid_fields'],
    [`{"event":"start","streamSid":"MZother","start":{"streamSid":"${SID}","callSid":"CA1"}}`, 'invalid_fields'],
    [`{"event":"mark","streamSid":"${SID}","mark":{}}`, 'invalid_fields'],
    [`{"event":"stop"}`, 'invalid_fields'],
  ])('reports %s as %s without throwing', (text, kind) => {
    const d = decodeTwilioMessage(text);
    expect(d.event).toBeUndefined();
    expect(d).toMatchObject({ kind });
  });

  it('encodes only media, mark and clear, with exactly Twilio fields', () => {
    const enc = new TwilioEncoder(SID);
    expect(JSON.parse(enc.media('AAAA'))).toEqual({ event: 'media', streamSid: SID, media: { payload: 'AAAA' } });
    expect(JSON.parse(enc.mark('pl:1:2'))).toEqual({ event: 'mark', streamSid: SID, mark: { name: 'pl:1:2' } });
    expect(JSON.parse(enc.clear())).toEqual({ event: 'clear', streamSid: SID });
    expect(JSON.parse(new TwilioEncoder('MZ"odd').mark('a"b')).mark.name).toBe('a"b');
  });
});
