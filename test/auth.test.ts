/**
 * Who may call what: local requests (loopback and no proxy header) in local mode, the warning
 * a refused Twilio signature leaves in the log, and METRICS_TOKEN on /metrics.
 */
import { afterEach, describe, expect, it, vi } from 'vitest';
import WebSocket from 'ws';
import { isLocalRequest, PROXY_HEADERS } from '../src/http/twilioAuth.js';
import { newCallSid } from '../src/sim/twilioSim.js';
import { AUTH_TOKEN, PUBLIC_URL, startTestBridge, STREAM_URL, type TestBridge } from './helpers.js';

let tb: TestBridge | undefined;
afterEach(async () => {
  vi.useRealTimers();
  await tb?.close();
  tb = undefined;
});

const PROXY_HEADER_VALUES: Record<(typeof PROXY_HEADERS)[number], string> = {
  'x-forwarded-for': '203.0.113.9',
  forwarded: 'for=203.0.113.9;proto=https',
  'x-real-ip': '203.0.113.9',
  'cf-connecting-ip': '203.0.113.9',
  'x-forwarded-host': 'abc123.ngrok-free.app',
  'true-client-ip': '203.0.113.9',
  'x-forwarded-proto': 'https',
};
const proxyHeaders = Object.entries(PROXY_HEADER_VALUES);

const voiceForm = () => new URLSearchParams({ CallSid: newCallSid(), From: '+15005550006', To: '+15005550001', AccountSid: `AC${'0'.repeat(32)}` }).toString();
const form = { 'content-type': 'application/x-www-form-urlencoded' };

/** Status of a real WebSocket upgrade to the media-stream route (101 when accepted). */
function upgradeStatus(url: string, headers: Record<string, string>): Promise<number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/twilio/media-stream`, { headers });
    ws.on('unexpected-response', (req, res) => {
      resolve(res.statusCode ?? 0);
      res.resume();
      req.destroy();
    });
    ws.on('open', () => {
      resolve(101);
      ws.terminate();
    });
    ws.on('error', reject);
  });
}

describe('isLocalRequest', () => {
  const req = (remoteAddress: string | undefined, headers: Record<string, string> = {}) => ({ socket: { remoteAddress }, headers });

  it('takes loopback peers without proxy headers as local', () => {
    for (const address of ['127.0.0.1', '127.8.9.10', '::1', '::ffff:127.0.0.1']) expect(isLocalRequest(req(address)), address).toBe(true);
  });

  it('takes other peers, or none, as not local', () => {
    for (const address of ['203.0.113.9', '10.0.0.2', '::ffff:192.168.1.4', 'fe80::1', undefined]) expect(isLocalRequest(req(address)), String(address)).toBe(false);
  });

  it.each(proxyHeaders)('takes a loopback request carrying %s as not local (a same-host tunnel or proxy)', (name, value) => {
    expect(isLocalRequest(req('127.0.0.1', { [name]: value }))).toBe(false);
    expect(isLocalRequest(req('::1', { [name]: '' }))).toBe(false);
  });
});

describe('local mode (no tokens): requests through a tunnel on the same host', () => {
  it('serves the Twilio webhooks, the WebSocket upgrade and the API to loopback requests without proxy headers', async () => {
    tb = await startTestBridge({ signed: false });
    const voice = await tb.bridge.app.inject({ method: 'POST', url: '/twilio/voice', headers: form, payload: voiceForm() });
    expect(voice.statusCode).toBe(200);
    expect(voice.body).toContain('<Stream');
    expect((await tb.bridge.app.inject({ method: 'GET', url: '/v1/calls' })).statusCode).toBe(200);
    expect(await upgradeStatus(tb.url, {})).toBe(101);
  });

  it.each(proxyHeaders)('refuses the Twilio webhooks with 403 when a loopback request carries %s, saying why', async (name, value) => {
    tb = await startTestBridge({ signed: false });
    for (const url of ['/twilio/voice', '/twilio/status']) {
      const r = await tb.bridge.app.inject({ method: 'POST', url, headers: { ...form, [name]: value }, payload: voiceForm() });
      expect(r.statusCode, url).toBe(403);
      expect(r.body).toContain(`a proxy header (${name}) shows this request came through a tunnel or proxy`);
      expect(r.body).toContain('set TWILIO_AUTH_TOKEN');
    }
    expect(tb.bridge.manager.reservedSlots).toBe(0);
  });

  it.each(proxyHeaders)('refuses the media-stream WebSocket upgrade with 403 when it carries %s', async (name, value) => {
    tb = await startTestBridge({ signed: false });
    expect(await upgradeStatus(tb.url, { [name]: value })).toBe(403);
    expect(tb.agent.connections).toHaveLength(0);
  });

  it.each(proxyHeaders)('refuses the /v1 API with 401 when a loopback request carries %s, saying why', async (name, value) => {
    tb = await startTestBridge({ signed: false });
    const r = await tb.bridge.app.inject({ method: 'GET', url: '/v1/calls', headers: { [name]: value } });
    expect(r.statusCode).toBe(401);
    expect(r.body).toContain(`a proxy header (${name}) shows this request came through a tunnel or proxy`);
    expect(r.body).toContain('set API_TOKEN');
  });

  it('logs the refusal with the header, at most once a minute per route', async () => {
    tb = await startTestBridge({ signed: false });
    for (let i = 0; i < 3; i++) {
      await tb.bridge.app.inject({ method: 'POST', url: '/twilio/voice', headers: { ...form, 'x-forwarded-for': '203.0.113.9' }, payload: voiceForm() });
    }
    const warnings = tb.logs.lines.filter((l) => String(l.msg).startsWith('refused a Twilio request'));
    expect(warnings).toHaveLength(1);
    expect(warnings[0]).toMatchObject({ level: 40, route: 'voice', header: 'x-forwarded-for' });
  });
});

describe('a refused X-Twilio-Signature', () => {
  const signatureWarnings = (t: TestBridge) => t.logs.lines.filter((l) => /X-Twilio-Signature, checked against/.test(String(l.msg)));
  const forged = { ...form, 'x-twilio-signature': 'Zm9yZ2VkLXNpZ25hdHVyZQ==' };

  it('logs the URL it was checked against and the PUBLIC_URL hint, never the token or the signature', async () => {
    tb = await startTestBridge();
    const r = await tb.bridge.app.inject({ method: 'POST', url: '/twilio/voice?src=test', headers: forged, payload: voiceForm() });
    expect(r.statusCode).toBe(403);
    const [warning, ...more] = signatureWarnings(tb);
    expect(more).toEqual([]);
    expect(warning).toMatchObject({ level: 40, route: 'voice', checkedUrl: `${PUBLIC_URL}/twilio/voice?src=test` });
    expect(String(warning?.msg)).toContain('PUBLIC_URL must be the exact origin Twilio calls (scheme, host, port)');
    expect(tb.logs.text()).not.toContain(AUTH_TOKEN);
    expect(tb.logs.text()).not.toContain(forged['x-twilio-signature']);
  });

  it('logs the wss:// URL for a refused media-stream upgrade', async () => {
    tb = await startTestBridge();
    expect(await upgradeStatus(tb.url, { 'x-twilio-signature': forged['x-twilio-signature'] })).toBe(403);
    expect(signatureWarnings(tb)).toEqual([expect.objectContaining({ route: 'media-stream', checkedUrl: STREAM_URL })]);
  });

  it('logs at most once a minute per route, then says how many refusals it did not log', async () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    tb = await startTestBridge();
    const post = (url: string) => tb!.bridge.app.inject({ method: 'POST', url, headers: forged, payload: voiceForm() });
    for (let i = 0; i < 5; i++) await post('/twilio/voice');
    await post('/twilio/status');
    expect(signatureWarnings(tb).map((l) => l.route)).toEqual(['voice', 'status']);

    vi.setSystemTime(Date.now() + 59_000);
    await post('/twilio/voice');
    expect(signatureWarnings(tb)).toHaveLength(2);
    vi.setSystemTime(Date.now() + 2_000);
    await post('/twilio/voice');
    const warnings = signatureWarnings(tb);
    expect(warnings).toHaveLength(3);
    expect(warnings[2]).toMatchObject({ route: 'voice', similarRefusalsNotLogged: 5 });
  });
});

describe('/metrics', () => {
  const TOKEN = 'metrics-token-0123456789';

  it('answers anyone without METRICS_TOKEN (Prometheus setups rely on it)', async () => {
    tb = await startTestBridge();
    const r = await tb.bridge.app.inject({ method: 'GET', url: '/metrics', remoteAddress: '203.0.113.9' });
    expect(r.statusCode).toBe(200);
    expect(r.body).toContain('playline_calls_live');
  });

  it('with METRICS_TOKEN, refuses requests without the bearer token with 401 and WWW-Authenticate', async () => {
    tb = await startTestBridge({ env: { METRICS_TOKEN: TOKEN } });
    for (const authorization of [undefined, `Bearer ${TOKEN}x`, `Bearer ${TOKEN.slice(1)}`, `Basic ${TOKEN}`, TOKEN, 'Bearer']) {
      const r = await tb.bridge.app.inject({ method: 'GET', url: '/metrics', headers: authorization === undefined ? {} : { authorization } });
      expect(r.statusCode, String(authorization)).toBe(401);
      expect(r.headers['www-authenticate']).toMatch(/^Bearer /);
      expect(r.body).not.toContain('playline_');
      expect(r.body).toContain('METRICS_TOKEN');
    }
  });

  it.each(['Bearer', 'bearer', 'BEARER'])('with METRICS_TOKEN, answers "%s <token>" (any case of the scheme)', async (scheme) => {
    tb = await startTestBridge({ env: { METRICS_TOKEN: TOKEN } });
    const r = await tb.bridge.app.inject({ method: 'GET', url: '/metrics', headers: { authorization: `${scheme} ${TOKEN}` } });
    expect(r.statusCode).toBe(200);
    expect(r.body).toContain('playline_calls_live');
  });

  it('leaves /healthz and /readyz open when METRICS_TOKEN is set', async () => {
    tb = await startTestBridge({ env: { METRICS_TOKEN: TOKEN } });
    expect((await tb.bridge.app.inject({ method: 'GET', url: '/healthz' })).statusCode).toBe(200);
    expect((await tb.bridge.app.inject({ method: 'GET', url: '/readyz' })).statusCode).toBe(200);
  });
});
