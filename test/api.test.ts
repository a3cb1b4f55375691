/**
 * The /v1 API as a client sees it: one error shape for every error (the
 * API's, Fastify's own, the Twilio routes'), Location headers, the OpenAPI
 * document, and the contact import (refusals that create nothing, streamed
 * uploads under their limits, a 100 000-row import that leaves the event loop
 * free).
 */
import { Readable } from 'node:stream';
import twilio from 'twilio';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { FakeDialer } from '../src/testing/fakeDialer.js';
import { AUTH_TOKEN, PUBLIC_URL, startTestBridge, type TestBridge } from './helpers.js';

let tb: TestBridge | undefined;
afterEach(async () => {
  vi.restoreAllMocks();
  await tb?.close();
  tb = undefined;
});

async function start(env: Record<string, string> = {}): Promise<TestBridge> {
  tb = await startTestBridge({ env: { OUTBOUND_MAX_CPS: '50', ...env }, overrides: { dialer: new FakeDialer() } });
  return tb;
}

interface Res {
  status: number;
  headers: Record<string, unknown>;
  body: any;
}

async function inject(t: TestBridge, method: 'GET' | 'POST' | 'DELETE', url: string, payload?: string | Readable, contentType?: string, headers: Record<string, string> = {}): Promise<Res> {
  const res = await t.bridge.app.inject({
    method,
    url,
    headers: { ...(contentType !== undefined ? { 'content-type': contentType } : {}), ...headers },
    ...(payload !== undefined ? { payload } : {}),
  });
  const json = res.headers['content-type']?.toString().includes('json') === true;
  return { status: res.statusCode, headers: res.headers, body: json && res.body !== '' ? JSON.parse(res.body) : res.body };
}

const postJson = (t: TestBridge, url: string, body: unknown) => inject(t, 'POST', url, JSON.stringify(body), 'application/json');
const postCsv = (t: TestBridge, url: string, csv: string | Readable) => inject(t, 'POST', url, csv, 'text/csv');

/** Asserts the common error shape and returns its `error`. */
function expectError(r: Res, status: number, code: string): { code: string; message: string; details?: any } {
  expect(r.status, JSON.stringify(r.body)).toBe(status);
  expect(r.headers['content-type']).toMatch(/application\/json/);
  expect(Object.keys(r.body)).toEqual(['error']);
  expect(r.body.error.code).toBe(code);
  expect(typeof r.body.error.message).toBe('string');
  expect(r.body.error.message.length).toBeGreaterThan(10);
  return r.body.error;
}

const phones = (n: number, from = 0) => Array.from({ length: n }, (_, i) => `+1415${String(2000000 + from + i).padStart(7, '0')}`);
const csvOf = (numbers: string[]) => ['phone', ...numbers].join('\n') + '\n';

function signedForm(path: string, params: Record<string, string>) {
  return {
    headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-twilio-signature': twilio.getExpectedTwilioSignature(AUTH_TOKEN, PUBLIC_URL + path, params) },
    payload: new URLSearchParams(params).toString(),
  };
}

describe('one error shape', () => {
  it('answers an unknown route with not_found, naming the route', async () => {
    const t = await start();
    const e = expectError(await inject(t, 'GET', '/v1/nothing-here?x=1'), 404, 'not_found');
    expect(e.message).toBe('no route GET /v1/nothing-here: the routes are listed at /docs');
    expectError(await inject(t, 'POST', '/elsewhere'), 404, 'not_found');
  });

  it("answers Fastify's own refusals: bad JSON, an empty JSON body, an unsupported media type, a body too large", async () => {
    const t = await start();
    expect(expectError(await inject(t, 'POST', '/v1/calls', '{"to": ', 'application/json'), 400, 'invalid_request').message).toMatch(/not valid JSON/);
    expect(expectError(await inject(t, 'POST', '/v1/calls', '', 'application/json'), 400, 'invalid_request').message).toMatch(/empty/);
    expect(expectError(await inject(t, 'POST', '/v1/calls', '<call/>', 'application/xml'), 415, 'unsupported_media_type').message).toMatch(/application\/xml.*application\/json/);
    // CSV is for the campaign routes only.
    expectError(await postCsv(t, '/v1/calls', 'phone\n'), 415, 'unsupported_media_type');
    const big = await postJson(t, '/v1/calls', { to: '+14155550100', prompt: 'x'.repeat(300_000) });
    expect(expectError(big, 413, 'too_large').message).toMatch(/256 KB/);
    const bigCampaign = await postJson(t, '/v1/campaigns', { name: 'big', contacts: phones(20_000) });
    expect(expectError(bigCampaign, 413, 'too_large').message).toMatch(/send large contact lists as CSV/);
  });

  it('lists every invalid field in details and names the first in the message', async () => {
    const t = await start();
    const r = await postJson(t, '/v1/campaigns', { name: 'x', settings: { window: { start: '25:00', end: '10:00' }, callsPerSecond: -1 } });
    const e = expectError(r, 400, 'invalid_request');
    expect(e.message).toMatch(/^body: settings\.window\.start: must be HH:MM, 00:00 to 23:59 \(and 1 more; see details\)$/);
    expect(e.details).toEqual([
      { path: 'settings.window.start', message: 'must be HH:MM, 00:00 to 23:59' },
      { path: 'settings.callsPerSecond', message: expect.stringMatching(/>0/) },
    ]);
    expect(expectError(await inject(t, 'GET', '/v1/calls?limit=0'), 400, 'invalid_request').message).toMatch(/^query: limit: /);
    expect(expectError(await inject(t, 'GET', '/v1/calls?colour=red'), 400, 'invalid_request').details).toEqual([{ path: '', message: expect.stringMatching(/colour/) }]);
  });

  it("maps the outbound service's errors (409s) and missing records (404) onto the shape", async () => {
    const t = await start();
    const c = await postJson(t, '/v1/campaigns', { name: 'draft' });
    expect(expectError(await inject(t, 'POST', `/v1/campaigns/${c.body.campaign.id}/resume`), 409, 'campaign_not_paused').message).toBe('campaign is draft');
    expect(expectError(await inject(t, 'GET', '/v1/calls/call_nope'), 404, 'not_found').message).toMatch(/no call call_nope/);
    expectError(await inject(t, 'GET', '/v1/campaigns/cmp_nope/contacts'), 404, 'not_found');
    expectError(await inject(t, 'DELETE', '/v1/dnc/%2B14155550100'), 404, 'not_found');
  });

  it('answers 401 in the shape when API_TOKEN is set and the token is wrong', async () => {
    const t = await start({ API_TOKEN: 'secret-token-0123456789' });
    const r = await inject(t, 'GET', '/v1/calls', undefined, undefined, { authorization: 'Bearer nope' });
    expect(expectError(r, 401, 'unauthorized').message).toMatch(/bearer token/);
  });

  it("answers the Twilio routes' 400 and 403 in the shape", async () => {
    const t = await start();
    const forged = await t.bridge.app.inject({ method: 'POST', url: '/twilio/status', headers: { 'content-type': 'application/x-www-form-urlencoded', 'x-twilio-signature': 'forged' }, payload: 'CallSid=CA1&CallStatus=completed' });
    expectError({ status: forged.statusCode, headers: forged.headers, body: JSON.parse(forged.body) }, 403, 'forbidden');
    const bad = await t.bridge.app.inject({ method: 'POST', url: '/twilio/status', ...signedForm('/twilio/status', { CallSid: 'CA' + 'a'.repeat(32) }) });
    expect(expectError({ status: bad.statusCode, headers: bad.headers, body: JSON.parse(bad.body) }, 400, 'invalid_request').message).toMatch(/CallStatus/);
  });

  it('keeps the readiness report as the body of a 503 from /readyz', async () => {
    const t = await start();
    t.bridge.manager.startDrain();
    const r = await inject(t, 'GET', '/readyz');
    expect(r.status).toBe(503);
    expect(r.body).toMatchObject({ ready: false, draining: true, liveCalls: 0 });
  });
});

describe('created resources', () => {
  it('answers 201 with a Location header for a call and a campaign, which GET serves', async () => {
    const t = await start();
    t.bridge.outbound.pauseDialing();
    const call = await postJson(t, '/v1/calls', { to: '+14155550123' });
    expect(call.status).toBe(201);
    expect(call.headers.location).toBe(`/v1/calls/${call.body.id}`);
    expect((await inject(t, 'GET', String(call.headers.location))).body.id).toBe(call.body.id);
    const c = await postJson(t, '/v1/campaigns', { name: 'c', contacts: ['+14155550100'] });
    expect(c.status).toBe(201);
    expect(c.headers.location).toBe(`/v1/campaigns/${c.body.campaign.id}`);
    expect((await inject(t, 'GET', String(c.headers.location))).body.id).toBe(c.body.campaign.id);
  });

  it('reports dialsLastMinute in a campaign progress, without the duplicate dialRatePerMinute', async () => {
    const t = await start();
    const c = await postJson(t, '/v1/campaigns', { name: 'c', contacts: ['+14155550100'] });
    const got = await inject(t, 'GET', `/v1/campaigns/${c.body.campaign.id}`);
    expect(got.body.progress).toMatchObject({ dialsLastMinute: 0, activeCalls: 0, counts: { total: 1 } });
    expect(got.body.progress).not.toHaveProperty('dialRatePerMinute');
  });

  it('fills a calling window without days with every day', async () => {
    const t = await start();
    const c = await postJson(t, '/v1/campaigns', { name: 'c', settings: { window: { start: '09:00', end: '17:00' } } });
    expect(c.status).toBe(201);
    expect(c.body.campaign.settings.window).toEqual({ days: ['mon', 'tue', 'wed', 'thu', 'fri', 'sat', 'sun'], start: '09:00', end: '17:00' });
  });

  it("lists a contact's attempts even when they are older than 500 other calls of the campaign", async () => {
    const t = await start();
    const c = await postJson(t, '/v1/campaigns', { name: 'c', contacts: ['+14155550100', '+14155550101'] });
    const id: string = c.body.campaign.id;
    const [a, b] = await t.bridge.campaigns.contacts(id, { limit: 2 });
    const attempt = (contactId: string, n: number, at: number) =>
      t.bridge.calls.insert({ direction: 'outbound', to: '+14155550100', from: '+12025550100', agentId: 'a', campaignId: id, contactId, attempt: n, status: 'completed' }, at);
    const first = await attempt(a!.id, 1, Date.now() - 3_600_000);
    await t.bridge.calls.transaction(async () => {
      for (let i = 0; i < 600; i++) await attempt(b!.id, i + 1, Date.now() - 3_000_000 + i);
    });
    const got = await inject(t, 'GET', `/v1/campaigns/${id}/contacts/${a!.id}`);
    expect(got.status).toBe(200);
    expect(got.body.calls.map((x: any) => x.id)).toEqual([first.id]);
  });
});

describe('GET /docs/json', () => {
  it('documents every /v1 operation with its success code and its 400, 401 and (with an id) 404 error bodies', async () => {
    const t = await start();
    const r = await t.bridge.app.inject({ method: 'GET', url: '/docs/json' });
    expect(r.statusCode).toBe(200);
    const doc = JSON.parse(r.body) as { openapi: string; paths: Record<string, Record<string, any>>; components: { schemas: Record<string, unknown> } };
    expect(doc.openapi).toBe('3.1.0');
    expect(Object.keys(doc.components.schemas)).toEqual(expect.arrayContaining(['Error', 'Call', 'Campaign', 'Contact', 'ImportReport', 'CampaignSettings']));
    const ops = Object.entries(doc.paths).flatMap(([path, methods]) => Object.entries(methods).map(([method, op]) => ({ path, method, op })));
    expect(ops.length).toBeGreaterThanOrEqual(20);
    for (const { path, method, op } of ops) {
      const where = `${method.toUpperCase()} ${path}`;
      expect(path.startsWith('/v1/'), where).toBe(true);
      const codes = Object.keys(op.responses);
      expect(codes.some((c) => /^2\d\d$/.test(c)), `${where} has a success response`).toBe(true);
      for (const c of ['400', '401', ...(path.includes('{') ? ['404'] : [])]) {
        expect(op.responses[c]?.content?.['application/json']?.schema, `${where} documents ${c}`).toEqual({ $ref: '#/components/schemas/Error' });
      }
    }
    expect(doc.paths['/v1/calls']!.post.responses['201'].headers.location).toBeDefined();
    expect(doc.paths['/v1/campaigns']!.post.responses['201'].headers.location).toBeDefined();
    expect(Object.keys(doc.paths['/v1/campaigns']!.post.requestBody.content)).toEqual(['application/json', 'multipart/form-data', 'text/csv']);
    expect(Object.keys(doc.paths['/v1/campaigns/{id}/contacts']!.post.requestBody.content)).toEqual(['application/json', 'multipart/form-data', 'text/csv']);
    expect(doc.paths['/v1/campaigns/{id}/results.csv']!.get.responses['200'].content['text/csv']).toBeDefined();
    expect(doc.paths['/v1/dnc/{phone}']!.delete.responses['204']).toBeDefined();
    expect(JSON.parse(JSON.stringify(doc))).toEqual(doc);
    expect((await t.bridge.app.inject({ method: 'GET', url: '/docs' })).statusCode).toBeLessThan(400);
  });
});

describe('contact import', () => {
  it('reads a semicolon-separated file', async () => {
    const t = await start();
    const r = await postCsv(t, '/v1/campaigns?name=semi', 'Name;Phone\nAda;+14155550100\nBob;+14155550101\n');
    expect(r.status).toBe(201);
    expect(r.body.import).toMatchObject({ rows: 2, added: 2, errors: [] });
  });

  it('refuses a file without a phone column with 422 and the report, and creates no campaign', async () => {
    const t = await start();
    const e = expectError(await postCsv(t, '/v1/campaigns?name=x&start=true', 'name;tel\nAda;+14155550100\n'), 422, 'invalid_contacts');
    expect(e.message).toMatch(/no phone column: name one of phone/);
    expect(e.details).toMatchObject({ rows: 0, added: 0, errors: [{ line: 1 }] });
    expect(await t.bridge.campaigns.list({ limit: 10 })).toEqual([]);
  });

  it('refuses an import where every row is bad, or a header with no rows, creating nothing', async () => {
    const t = await start();
    const bad = expectError(await postCsv(t, '/v1/campaigns?name=x', 'phone\nnope\n12\n'), 422, 'invalid_contacts');
    expect(bad.message).toMatch(/^no contact could be imported: line 2 \(phone\): .* \(and 1 more errors; see details\)$/);
    expect(bad.details.errors).toHaveLength(2);
    expect(expectError(await postCsv(t, '/v1/campaigns?name=x', 'phone\n'), 422, 'invalid_contacts').message).toMatch(/no contacts/);
    expectError(await postJson(t, '/v1/campaigns', { name: 'x', contacts: ['nope', { name: 'no phone' }] }), 422, 'invalid_contacts');
    const form = new FormData();
    form.set('name', 'x');
    form.set('file', new Blob(['name\nAda\n'], { type: 'text/csv' }), 'c.csv');
    const m = await fetch(`${t.url}/v1/campaigns`, { method: 'POST', body: form });
    expect(m.status).toBe(422);
    expect(((await m.json()) as any).error.code).toBe('invalid_contacts');
    expect(await t.bridge.campaigns.list({ limit: 10 })).toEqual([]);
    // Adding to an existing campaign is refused the same way, and adds nothing.
    const c = await postJson(t, '/v1/campaigns', { name: 'ok' });
    expectError(await postCsv(t, `/v1/campaigns/${c.body.campaign.id}/contacts`, 'phone\nnope\n'), 422, 'invalid_contacts');
    expect((await t.bridge.campaigns.counts(c.body.campaign.id)).total).toBe(0);
  });

  it('still creates a draft campaign with no contacts when none are sent', async () => {
    const t = await start();
    const r = await postJson(t, '/v1/campaigns', { name: 'empty' });
    expect(r.status).toBe(201);
    expect(r.body.campaign.status).toBe('draft');
    expect(r.body.import).toBeNull();
  });

  it('with strict=true refuses a file with any bad row, creating nothing', async () => {
    const t = await start();
    const e = expectError(await postCsv(t, '/v1/campaigns?name=x&strict=true', 'phone\n+14155550100\nnope\n'), 422, 'invalid_contacts');
    expect(e.message).toMatch(/strict=true/);
    expect(await t.bridge.campaigns.list({ limit: 10 })).toEqual([]);
  });

  it('refuses a file of more than 100 000 rows at the first row too many, creating nothing', async () => {
    const t = await start();
    const e = expectError(await postCsv(t, '/v1/campaigns?name=big&start=true', csvOf(phones(100_001))), 422, 'invalid_contacts');
    expect(e.message).toBe('no contact could be imported: line 100002: more than 100000 rows: split the file');
    expect(await t.bridge.campaigns.list({ limit: 10 })).toEqual([]);
  });

  it('refuses a CSV body over 20 MB with 413, declared or found while streaming', async () => {
    const t = await start();
    const declared = await t.bridge.app.inject({ method: 'POST', url: '/v1/campaigns?name=x', headers: { 'content-type': 'text/csv', 'content-length': String(21 * 1024 * 1024) }, payload: 'phone\n' });
    expect(declared.statusCode).toBe(413);
    expect(JSON.parse(declared.body).error.code).toBe('too_large');
    // One row whose quoted note never ends: the size limit is what stops it.
    const piece = Buffer.alloc(64 * 1024, 'x');
    const streamed = Readable.from((function* () {
      yield Buffer.from('phone,note\n+14155550100,"');
      for (let n = 0; n < (21 * 1024 * 1024) / piece.length; n++) yield piece;
    })());
    const e = expectError(await postCsv(t, '/v1/campaigns?name=x', streamed), 413, 'too_large');
    expect(e.message).toMatch(/20 MB/);
    expect(await t.bridge.campaigns.list({ limit: 10 })).toEqual([]);
  });

  it('refuses a multipart file over 20 MB with 413, and a field sent after the file with 400', async () => {
    const t = await start();
    const big = new FormData();
    big.set('name', 'big');
    big.set('file', new Blob(['phone,note\n+14155550100,"', Buffer.alloc(21 * 1024 * 1024, 'x')], { type: 'text/csv' }), 'big.csv');
    const r = await fetch(`${t.url}/v1/campaigns`, { method: 'POST', body: big });
    expect(r.status).toBe(413);
    expect(((await r.json()) as any).error).toMatchObject({ code: 'too_large', message: expect.stringMatching(/20 MB/) });
    const fileFirst = new FormData();
    fileFirst.set('file', new Blob(['phone\n+14155550100\n'], { type: 'text/csv' }), 'c.csv');
    fileFirst.set('name', 'late');
    const f = await fetch(`${t.url}/v1/campaigns`, { method: 'POST', body: fileFirst });
    expect(f.status).toBe(400);
    expect(((await f.json()) as any).error.message).toMatch(/^form: name: .*\(send the form fields first and the file last/);
    const late = new FormData();
    late.set('name', 'late');
    late.set('file', new Blob(['phone\n+14155550100\n'], { type: 'text/csv' }), 'c.csv');
    late.set('start', 'true');
    const l = await fetch(`${t.url}/v1/campaigns`, { method: 'POST', body: late });
    expect(l.status).toBe(400);
    expect(((await l.json()) as any).error.message).toBe('form field "start" comes after the file: send the form fields first and the file last (with curl, put -F file=@… last)');
    expect(await t.bridge.campaigns.list({ limit: 10 })).toEqual([]);
  });

  it('deletes the new campaign when inserting its contacts fails', async () => {
    const t = await start();
    vi.spyOn(t.bridge.campaigns, 'addContactsInChunks').mockRejectedValueOnce(new Error('disk full'));
    expectError(await postCsv(t, '/v1/campaigns?name=x', csvOf(phones(3))), 500, 'internal_error');
    expect(await t.bridge.campaigns.list({ limit: 10 })).toEqual([]);
  });

  it('exports results.csv page by page: the header once, then every contact in file order with its variables', async () => {
    const t = await start();
    const lines = ['phone,name', ...phones(2_500).map((p, i) => `${p},Person ${i}`)];
    const r = await postCsv(t, '/v1/campaigns?name=export', `${lines.join('\n')}\n`);
    expect(r.status).toBe(201);
    const res = await fetch(`${t.url}/v1/campaigns/${r.body.campaign.id}/results.csv`);
    expect(res.headers.get('content-type')).toMatch(/^text\/csv/);
    const text = (await res.text()).trim().split('\n');
    expect(text[0]).toBe('line,phone,state,outcome,attempts,last_call_id,last_call_status,answered_by,duration_s,last_error,merged_lines,name');
    expect(text).toHaveLength(2_501);
    expect(text.filter((l) => l.startsWith('line,'))).toHaveLength(1);
    expect(text[1]).toMatch(/^2,\+14152000000,pending,/);
    expect(text[2_500]).toMatch(/^2501,\+14152002499,pending,.*,Person 2499$/);
  });

  it('imports 100 000 rows while a 10 ms timer keeps firing', async () => {
    const t = await start();
    const csv = csvOf(phones(100_000));
    let ticks = 0;
    let last = performance.now();
    let longestGap = 0;
    const timer = setInterval(() => {
      const now = performance.now();
      longestGap = Math.max(longestGap, now - last);
      last = now;
      ticks++;
    }, 10);
    let r: Res;
    try {
      r = await postCsv(t, '/v1/campaigns?name=big', csv);
    } finally {
      clearInterval(timer);
    }
    expect(r.status).toBe(201);
    expect(r.body.import).toMatchObject({ rows: 100_000, added: 100_000, errors: [] });
    expect((await t.bridge.campaigns.counts(r.body.campaign.id)).total).toBe(100_000);
    // Structural, not a performance target: the loop was handed back all along.
    expect(ticks).toBeGreaterThan(20);
    expect(longestGap).toBeLessThan(1_000);
  }, 60_000);
});

describe('the error shape reaches the edges', () => {
  it('answers a malformed URL and a plain GET of the media-stream endpoint in the common error shape', async () => {
    const { startTestBridge } = await import('./helpers.js');
    const t = await startTestBridge({ signed: false });
    try {
      const bad = await t.bridge.app.inject({ method: 'GET', url: '/v1/calls/%zz' });
      expect(bad.statusCode).toBe(400);
      expect(JSON.parse(bad.body)).toMatchObject({ error: { code: 'invalid_request' } });
      const plain = await fetch(`${t.url}/twilio/media-stream`);
      expect(plain.status).toBe(426);
      expect(await plain.json()).toMatchObject({ error: { code: 'upgrade_required' } });
    } finally {
      await t.close();
    }
  });
});
