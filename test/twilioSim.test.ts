/**
 * Tests of the Twilio simulator itself, against a tiny in-test HTTP/WebSocket server
 * (not the bridge).
 */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { performance } from 'node:perf_hooks';
import twilio from 'twilio';
import { WebSocketServer, type WebSocket } from 'ws';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FakeTwilioStream, StreamConnectError, parseTwiml, placeCall, placeCalls, postVoiceWebhook } from '../src/sim/twilioSim.js';

const TOKEN = 'test-auth-token-0123456789abcdef';
const PUBLIC = 'https://voice.example.com';
const STREAM_URL = 'wss://voice.example.com/twilio/media-stream';

interface FormRequest {
  path: string;
  headers: IncomingHttpHeaders;
  params: Record<string, string>;
}

interface ServerSocket {
  ws: WebSocket;
  /** Parsed text messages with arrival time (performance.now()). */
  msgs: Array<{ at: number; msg: Record<string, unknown> }>;
  headers: IncomingHttpHeaders;
  path: string;
}

/** A stand-in for the bridge: answers webhooks with `twiml`, records everything. */
class MiniBridge {
  url = '';
  twiml = '';
  refuseUpgrade = false;
  forms: FormRequest[] = [];
  sockets: ServerSocket[] = [];
  onSocket: ((s: ServerSocket) => void) | undefined;
  readonly #http: Server;
  readonly #wss = new WebSocketServer({ noServer: true });
  #socketWaiters: Array<(s: ServerSocket) => void> = [];

  constructor() {
    this.#http = createServer((req, res) => {
      let body = '';
      req.setEncoding('utf8');
      req.on('data', (c: string) => (body += c));
      req.on('end', () => {
        const params = Object.fromEntries(new URLSearchParams(body));
        this.forms.push({ path: req.url ?? '', headers: req.headers, params });
        if (req.url === '/twilio/voice') {
          res.writeHead(200, { 'content-type': 'text/xml' });
          res.end(this.twiml);
        } else {
          res.writeHead(204);
          res.end();
        }
      });
    });
    this.#http.on('upgrade', (req, socket, head) => {
      if (this.refuseUpgrade) {
        socket.end('HTTP/1.1 403 Forbidden\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
        return;
      }
      this.#wss.handleUpgrade(req, socket, head, (ws) => {
        const s: ServerSocket = { ws, msgs: [], headers: req.headers, path: req.url ?? '' };
        ws.on('message', (data, isBinary) => {
          if (!isBinary) s.msgs.push({ at: performance.now(), msg: JSON.parse(data.toString()) as Record<string, unknown> });
        });
        this.sockets.push(s);
        this.onSocket?.(s);
        const waiters = this.#socketWaiters;
        this.#socketWaiters = [];
        for (const w of waiters) w(s);
      });
    });
  }

  async listen(): Promise<void> {
    await new Promise<void>((r) => this.#http.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${(this.#http.address() as AddressInfo).port}`;
  }

  nextSocket(): Promise<ServerSocket> {
    return new Promise((r) => this.#socketWaiters.push(r));
  }

  reset(): void {
    for (const s of this.sockets) s.ws.terminate();
    this.sockets = [];
    this.forms = [];
    this.onSocket = undefined;
    this.refuseUpgrade = false;
    this.twiml = connectTwiml({ token: 'tok-1' });
  }

  async close(): Promise<void> {
    for (const c of this.#wss.clients) c.terminate();
    await new Promise<void>((r) => this.#http.close(() => r()));
  }
}

function connectTwiml(params: Record<string, string>): string {
  const vr = new twilio.twiml.VoiceResponse();
  const stream = vr.connect().stream({ url: STREAM_URL });
  for (const [name, value] of Object.entries(params)) stream.parameter({ name, value });
  vr.hangup();
  return vr.toString();
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const b64 = (bytes: number, value: number) => Buffer.alloc(bytes, value).toString('base64');

let bridge: MiniBridge;
beforeAll(async () => {
  bridge = new MiniBridge();
  await bridge.listen();
});
afterAll(async () => {
  await bridge.close();
});
afterEach(() => bridge.reset());

/** Connects a low-level stream and sends connected + start; returns both ends. */
async function openStream(opts: { autoEchoMarks?: boolean } = {}) {
  const serverSide = bridge.nextSocket();
  const stream = await FakeTwilioStream.connect({ bridgeUrl: bridge.url, streamUrl: STREAM_URL, authToken: TOKEN, ...opts });
  const srv = await serverSide;
  stream.sendConnected();
  stream.sendStart({ customParameters: { token: 'x' } });
  const sid = stream.streamSid ?? '';
  const send = (o: unknown) => srv.ws.send(JSON.stringify(o));
  const media = (bytes: number, value = 0x55) => send({ event: 'media', streamSid: sid, media: { payload: b64(bytes, value) } });
  const mark = (name: string) => send({ event: 'mark', streamSid: sid, mark: { name } });
  const clear = () => send({ event: 'clear', streamSid: sid });
  const echoes = () => srv.msgs.filter((m) => m.msg.event === 'mark');
  return { stream, srv, sid, send, media, mark, clear, echoes };
}

describe('parseTwiml', () => {
  it('reads <Connect><Stream> with parameters from the twilio builder (entities decoded)', () => {
    const t = parseTwiml(connectTwiml({ token: 'a&b"c<d>', agent: "it's" }));
    expect(t.streamUrl).toBe(STREAM_URL);
    expect(t.parameters).toEqual({ token: 'a&b"c<d>', agent: "it's" });
    expect(t.hangup).toBe(true);
    expect(t.reject).toBe(false);
    expect(t.say).toEqual([]);
  });

  it('tolerates prolog, comments, single quotes, attribute order, open/close tags, char refs', () => {
    const xml = `<?xml version='1.0' encoding="UTF-8"?>
      <!-- a comment with <Stream url="wss://wrong/"> inside -->
      <Response>
        <Connect action = 'https://x/after'>
          <Stream statusCallback="https://x/s?a=1&amp;b=2" url = 'wss://h.example/twilio/media-stream' >
            <Parameter value="v&#38;1&#x21;" name='p1'></Parameter>
            <Parameter name="p2" value="x > y"  />
          </Stream>
        </Connect>
        <Hangup></Hangup>
      </Response>`;
    const t = parseTwiml(xml);
    expect(t.streamUrl).toBe('wss://h.example/twilio/media-stream');
    expect(t.parameters).toEqual({ p1: 'v&1!', p2: 'x > y' });
    expect(t.hangup).toBe(true);
  });

  it('reads refusals: Say + Hangup, Dial, Reject; ignores <Start><Stream>', () => {
    const t = parseTwiml(
      '<Response><Say voice="Polly.Joanna" language="en-US">Sorry, all lines are &quot;busy&quot;.</Say><Dial>+15550001111</Dial><Hangup/></Response>',
    );
    expect(t).toMatchObject({ say: ['Sorry, all lines are "busy".'], dial: ['+15550001111'], hangup: true, reject: false });
    expect(t.streamUrl).toBeUndefined();

    const r = parseTwiml('<?xml version="1.0"?><Response><Reject reason="busy"/></Response>');
    expect(r).toMatchObject({ reject: true, rejectReason: 'busy', hangup: false, say: [] });

    const d = parseTwiml('<Response><Dial callerId="+1"><Number>+15550002222</Number><Number>+15550003333</Number></Dial></Response>');
    expect(d.dial).toEqual(['+15550002222', '+15550003333']);

    const s = parseTwiml('<Response><Start><Stream url="wss://x/y"/></Start><Say>hi</Say></Response>');
    expect(s.streamUrl).toBeUndefined();
    expect(s.say).toEqual(['hi']);
  });
});

describe('postVoiceWebhook', () => {
  it('posts Twilio-like fields signed over the public URL', async () => {
    bridge.twiml = connectTwiml({ token: 't1' });
    const r = await postVoiceWebhook({ bridgeUrl: bridge.url, publicUrl: PUBLIC, authToken: TOKEN, params: { From: '+15551112222' } });
    expect(r.status).toBe(200);
    expect(r.twiml?.streamUrl).toBe(STREAM_URL);
    expect(r.twiml?.parameters).toEqual({ token: 't1' });
    const req = bridge.forms[0];
    expect(req?.path).toBe('/twilio/voice');
    expect(req?.headers['content-type']).toBe('application/x-www-form-urlencoded');
    expect(req?.params).toEqual(r.params);
    expect(req?.params).toMatchObject({ From: '+15551112222', Caller: '+15551112222', CallStatus: 'ringing', Direction: 'inbound', ApiVersion: '2010-04-01' });
    expect(req?.params.CallSid).toMatch(/^CA[0-9a-f]{32}$/);
    expect(req?.params.AccountSid).toMatch(/^AC[0-9a-f]{32}$/);
    const sig = String(req?.headers['x-twilio-signature']);
    expect(twilio.validateRequest(TOKEN, sig, `${PUBLIC}/twilio/voice`, req?.params ?? {})).toBe(true);
    expect(twilio.validateRequest(TOKEN, sig, `${bridge.url}/twilio/voice`, req?.params ?? {})).toBe(false);
  });

  it('sends a forged signature as given, and none without a token', async () => {
    await postVoiceWebhook({ bridgeUrl: bridge.url, authToken: TOKEN, signature: 'forged=' });
    await postVoiceWebhook({ bridgeUrl: bridge.url });
    expect(bridge.forms[0]?.headers['x-twilio-signature']).toBe('forged=');
    expect(bridge.forms[1]?.headers['x-twilio-signature']).toBeUndefined();
  });
});

describe('FakeTwilioStream', () => {
  it('connects to the real address with the TwiML path, signed over the TwiML url', async () => {
    const { stream, srv } = await openStream();
    expect(srv.path).toBe('/twilio/media-stream');
    const sig = String(srv.headers['x-twilio-signature']);
    expect(twilio.validateRequest(TOKEN, sig, STREAM_URL, {})).toBe(true);
    stream.close();
    await stream.waitForClose();
  });

  it('sends no signature header with signature null; rejects a refused upgrade with its status', async () => {
    const next = bridge.nextSocket();
    const s = await FakeTwilioStream.connect({ bridgeUrl: bridge.url, streamUrl: STREAM_URL, authToken: TOKEN, signature: null });
    expect((await next).headers['x-twilio-signature']).toBeUndefined();
    s.terminate();

    bridge.refuseUpgrade = true;
    const err = await FakeTwilioStream.connect({ bridgeUrl: bridge.url, streamUrl: STREAM_URL, authToken: TOKEN }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(StreamConnectError);
    expect((err as StreamConnectError).status).toBe(403);
  });

  it('echoes a mark only after the audio before it has played; at once when nothing is queued', async () => {
    const { stream, srv, media, mark, echoes } = await openStream();
    const t0 = performance.now();
    mark('empty');
    media(800); // 100 ms
    mark('after100');
    await stream.waitFor((s) => s.echoedMarks.length === 2, 2000);
    await sleep(20);
    const e = echoes();
    expect(e.map((m) => (m.msg.mark as { name: string }).name)).toEqual(['empty', 'after100']);
    // At once: not held for the 100 ms of audio queued after it (a wall-clock figure under parallel
    // test load is not a latency target; the bench measures those).
    expect((e[0]?.at ?? 0) - t0).toBeLessThan(95);
    expect((e[1]?.at ?? 0) - t0).toBeGreaterThanOrEqual(95);
    expect((e[1]?.at ?? 0) - t0).toBeLessThan(250);
    // Echo shape, sequence numbers as strings, increasing.
    expect(e[0]?.msg).toEqual({ event: 'mark', sequenceNumber: '2', streamSid: stream.streamSid, mark: { name: 'empty' } });
    expect(e[1]?.msg.sequenceNumber).toBe('3');
    expect(stream.violations).toEqual([]);
    expect(srv.msgs.map((m) => m.msg.event)).toEqual(['connected', 'start', 'mark', 'mark']);
    stream.close();
  });

  it('clear drops queued audio and echoes pending marks immediately', async () => {
    const { stream, media, mark, clear, echoes } = await openStream();
    media(8000, 0x11); // 1 s
    mark('m1');
    media(800, 0x11);
    mark('m2');
    await sleep(60);
    const tClear = performance.now();
    clear();
    await stream.waitFor((s) => s.echoedMarks.length === 2, 1000);
    await sleep(10);
    expect(echoes().map((m) => (m.msg.mark as { name: string }).name)).toEqual(['m1', 'm2']);
    expect((echoes()[1]?.at ?? 0) - tClear).toBeLessThan(40);
    expect(stream.clears).toBe(1);
    expect(stream.bufferedMs).toBe(0);
    // New audio after the clear plays at once, not after the dropped second.
    media(160, 0x22);
    await stream.waitFor((s) => s.mediaReceived === 3);
    await sleep(40);
    stream.sendStop();
    const heard = stream.heard();
    const first22 = heard.indexOf(0x22);
    const last11 = heard.lastIndexOf(0x11);
    expect(last11).toBeGreaterThan(8 * 40);
    expect(last11).toBeLessThan(8 * 150);
    expect(first22).toBeGreaterThan(last11);
    expect(first22 - last11).toBeLessThan(8 * 60);
    expect(heard.filter((b) => b === 0x11).length).toBeLessThan(8 * 150);
    stream.close();
  });

  it('records violations for binary frames, extra fields, wrong streamSid, early media, bad JSON', async () => {
    // Before start: the server speaks first.
    const serverSide = bridge.nextSocket();
    const stream = await FakeTwilioStream.connect({ bridgeUrl: bridge.url, streamUrl: STREAM_URL, authToken: TOKEN });
    const srv = await serverSide;
    srv.ws.send(JSON.stringify({ event: 'media', streamSid: 'MZx', media: { payload: b64(160, 1) } }));
    await stream.waitFor((s) => s.violations.length === 1);
    stream.sendConnected();
    stream.sendStart({ customParameters: {} });
    const sid = stream.streamSid;
    const bad: Array<string | Buffer> = [
      Buffer.alloc(160, 0xff),
      JSON.stringify({ event: 'media', streamSid: sid, media: { payload: b64(160, 1), track: 'outbound' } }),
      JSON.stringify({ event: 'media', streamSid: sid, media: { payload: b64(160, 1) }, sequenceNumber: '1' }),
      JSON.stringify({ event: 'media', streamSid: 'MZ00000000000000000000000000000000', media: { payload: b64(160, 1) } }),
      JSON.stringify({ event: 'media', streamSid: sid, media: { payload: 'not base64!' } }),
      JSON.stringify({ event: 'mark', streamSid: sid, mark: {} }),
      JSON.stringify({ event: 'clear', streamSid: sid, reason: 'x' }),
      JSON.stringify({ event: 'hangup', streamSid: sid }),
      '{"event":"media",',
      '[1,2]',
    ];
    for (const b of bad) srv.ws.send(b);
    srv.ws.send(JSON.stringify({ event: 'mark', streamSid: sid, mark: { name: 'sync' } }));
    await stream.waitFor((s) => s.echoedMarks.includes('sync'));
    const v = stream.violations;
    expect(v).toHaveLength(bad.length + 1);
    expect(v[0]).toMatch(/^31951 media: .*before start/);
    expect(v[1]).toMatch(/^31950 binary/);
    expect(v[2]).toMatch(/extra field "media.track"/);
    expect(v[3]).toMatch(/extra field "sequenceNumber"/);
    expect(v[4]).toMatch(/wrong streamSid/);
    expect(v[5]).toMatch(/^31924 .*base64/);
    expect(v[6]).toMatch(/mark\.name/);
    expect(v[7]).toMatch(/extra field "reason"/);
    expect(v[8]).toMatch(/unknown event "hangup"/);
    expect(v[9]).toMatch(/invalid JSON/);
    expect(v[10]).toMatch(/not a JSON object/);
    expect(stream.mediaReceived).toBe(0);
    expect(stream.clears).toBe(0);
    expect(stream.received).toHaveLength(bad.length + 2);
    stream.close();
  });

  it('heard() places audio at play time, queues back to back, fills gaps with silence', async () => {
    const { stream, media } = await openStream();
    media(160, 0x11);
    media(160, 0x12); // queued right behind the first
    await stream.waitFor((s) => s.mediaReceived === 2);
    await sleep(120);
    media(160, 0x22);
    await stream.waitFor((s) => s.mediaReceived === 3);
    await sleep(50);
    stream.sendStop();
    const heard = stream.heard();
    const at = (i: number) => Math.floor(((stream.received[i]?.at ?? 0) - (stream.startSentAt ?? 0)) * 8);
    const p1 = at(0);
    const p3 = at(2);
    expect(heard[p1 - 1] ?? 0xff).toBe(0xff);
    expect(heard.subarray(p1, p1 + 160).every((b) => b === 0x11)).toBe(true);
    expect(heard.subarray(p1 + 160, p1 + 320).every((b) => b === 0x12)).toBe(true);
    expect(heard.subarray(p1 + 320, p3).every((b) => b === 0xff)).toBe(true);
    expect(p3 - p1).toBeGreaterThan(8 * 100);
    expect(heard.subarray(p3, p3 + 160).every((b) => b === 0x22)).toBe(true);
    expect(heard.subarray(p3 + 160).every((b) => b === 0xff)).toBe(true);
    expect(heard.length).toBeGreaterThanOrEqual(p3 + 8 * 45); // stop sent >= 50 ms after it arrived
    stream.close();
  });

  it('holds marks with autoEchoMarks off until echoPendingMarks()/playAll()', async () => {
    const { stream, media, mark, echoes } = await openStream({ autoEchoMarks: false });
    mark('a');
    media(160);
    mark('b');
    await stream.waitFor((s) => s.marks.length === 2);
    await sleep(40);
    expect(echoes()).toHaveLength(0);
    expect(stream.pendingMarks).toEqual(['a', 'b']);
    expect(stream.playAll()).toEqual(['a', 'b']);
    await sleep(20);
    expect(echoes()).toHaveLength(2);
    stream.close();
  });

  it('waitFor rejects with a clear error on timeout and when the socket closes', async () => {
    const { stream, srv } = await openStream();
    await expect(stream.waitFor(() => false, 30)).rejects.toThrow(/timed out after 30 ms/);
    const pending = stream.waitFor(() => false, 2000);
    srv.ws.close(1011, 'bye');
    await expect(pending).rejects.toThrow(/closed/);
    expect(await stream.waitForClose()).toEqual({ code: 1011, reason: 'bye' });
    expect(stream.closed).toBe(true);
  });
});

describe('placeCall', () => {
  it('runs a whole call like Twilio: order and string fields of connected/start/media/stop, status callback', async () => {
    bridge.twiml = connectTwiml({ token: 'tok-9', agent: 'a&b' });
    const audio = new Uint8Array(800).map((_, i) => i & 0x7f); // 5 frames
    let seen: FakeTwilioStream | undefined;
    const r = await placeCall({ bridgeUrl: bridge.url, publicUrl: PUBLIC, authToken: TOKEN, audio, onStream: (s) => (seen = s) });
    expect(seen).toBeInstanceOf(FakeTwilioStream);
    expect(r).toMatchObject({ endedBy: 'caller', refused: false, voiceStatus: 200, framesSent: 5, bytesSent: 800, protocolViolations: [] });
    expect(r.callSid).toMatch(/^CA[0-9a-f]{32}$/);
    expect(r.streamSid).toMatch(/^MZ[0-9a-f]{32}$/);
    expect(r.durationMs).toBeGreaterThanOrEqual(90);
    expect(r.sendLag.max).toBeGreaterThanOrEqual(0);

    const msgs = bridge.sockets[0]?.msgs.map((m) => m.msg) ?? [];
    expect(msgs.map((m) => m.event)).toEqual(['connected', 'start', 'media', 'media', 'media', 'media', 'media', 'stop']);
    expect(msgs[0]).toEqual({ event: 'connected', protocol: 'Call', version: '1.0.0' });
    const voice = bridge.forms.find((f) => f.path === '/twilio/voice');
    expect(msgs[1]).toEqual({
      event: 'start',
      sequenceNumber: '1',
      streamSid: r.streamSid,
      start: {
        accountSid: voice?.params.AccountSid,
        streamSid: r.streamSid,
        callSid: r.callSid,
        tracks: ['inbound'],
        customParameters: { token: 'tok-9', agent: 'a&b' },
        mediaFormat: { encoding: 'audio/x-mulaw', sampleRate: 8000, channels: 1 },
      },
    });
    expect(voice?.params.CallSid).toBe(r.callSid);
    msgs.slice(2, 7).forEach((m, i) => {
      expect(m).toEqual({
        event: 'media',
        sequenceNumber: String(i + 2),
        streamSid: r.streamSid,
        media: { track: 'inbound', chunk: String(i + 1), timestamp: String(i * 20), payload: Buffer.from(audio.subarray(i * 160, i * 160 + 160)).toString('base64') },
      });
    });
    expect(msgs[7]).toEqual({ event: 'stop', sequenceNumber: '7', streamSid: r.streamSid, stop: { accountSid: voice?.params.AccountSid, callSid: r.callSid } });

    const status = bridge.forms.find((f) => f.path === '/twilio/status');
    expect(status?.params).toMatchObject({ CallSid: r.callSid, CallStatus: 'completed', SequenceNumber: '0' });
    expect(Number(status?.params.CallDuration)).toBeGreaterThanOrEqual(1);
    expect(twilio.validateRequest(TOKEN, String(status?.headers['x-twilio-signature']), `${PUBLIC}/twilio/status`, status?.params ?? {})).toBe(true);
    expect(r.statusCallbackStatus).toBe(204);
  });

  it('waits for the bridge to hang up, records agent audio and marks', async () => {
    bridge.onSocket = (s) => {
      s.ws.on('message', (d) => {
        const m = JSON.parse(d.toString()) as { event: string; streamSid: string };
        if (m.event !== 'start') return;
        s.ws.send(JSON.stringify({ event: 'media', streamSid: m.streamSid, media: { payload: b64(400, 0x33) } }));
        s.ws.send(JSON.stringify({ event: 'mark', streamSid: m.streamSid, mark: { name: 'one' } }));
        setTimeout(() => s.ws.close(1000, 'done'), 150);
      });
    };
    const r = await placeCall({ bridgeUrl: bridge.url, authToken: TOKEN, waitForBridgeHangup: true, maxDurationMs: 3000, statusCallback: false });
    expect(r).toMatchObject({ endedBy: 'bridge', closeCode: 1000, mediaReceived: 1, bytesReceived: 400, marksReceived: 1, marksEchoed: 1, clears: 0 });
    expect(r.firstAgentAudioMs).toBeLessThan(100);
    expect(r.framesSent).toBeGreaterThanOrEqual(5);
    expect(r.heard.filter((b) => b === 0x33)).toHaveLength(400);
    expect(bridge.sockets[0]?.msgs.some((m) => m.msg.event === 'stop')).toBe(false);
    expect(bridge.forms.some((f) => f.path === '/twilio/status')).toBe(false);
  });

  it('reports a refusal without opening a stream', async () => {
    bridge.twiml = '<?xml version="1.0" encoding="UTF-8"?><Response><Say>We are busy.</Say><Hangup/></Response>';
    const r = await placeCall({ bridgeUrl: bridge.url, authToken: TOKEN });
    expect(r).toMatchObject({ refused: true, endedBy: 'bridge', sayTexts: ['We are busy.'], framesSent: 0 });
    expect(bridge.sockets).toHaveLength(0);
    expect(bridge.forms.map((f) => f.path)).toEqual(['/twilio/voice', '/twilio/status']);
  });

  it('reports a refused WebSocket upgrade as an error', async () => {
    bridge.refuseUpgrade = true;
    const r = await placeCall({ bridgeUrl: bridge.url, authToken: TOKEN, statusCallback: false });
    expect(r).toMatchObject({ endedBy: 'error', streamConnectStatus: 403, refused: false });
    expect(r.error).toMatch(/403/);
  });

  it('placeCalls runs several calls at once', async () => {
    const t0 = performance.now();
    const rs = await placeCalls(4, () => ({ bridgeUrl: bridge.url, authToken: TOKEN, trailingMs: 100, statusCallback: false }), { concurrency: 4, rampMs: 40 });
    expect(rs).toHaveLength(4);
    expect(new Set(rs.map((r) => r.callSid)).size).toBe(4);
    for (const r of rs) expect(r).toMatchObject({ endedBy: 'caller', framesSent: 5 });
    expect(performance.now() - t0).toBeLessThan(1500);
    expect(bridge.sockets).toHaveLength(4);
  });
});
