/**
 * The web console's build and how the server serves it (src/http/console.ts): the
 * page for each client route, hashed assets, the API's 404s left alone, the
 * not-built page, security headers, and who may load it (the API's rule).
 * Also the Live page's transfer steps in words (web/src/transfer.ts).
 * The console itself, in a browser, is test/console.browser.test.ts.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { buildConsole, JS_BUDGET_BYTES } from '../scripts/build-console.mjs';
import { CONSOLE_PAGES } from '../src/http/console.js';
import { outcomeLabel, stepLabel, transferActive, withStep } from '../web/src/transfer.js';
import { startTestBridge, type TestBridge } from './helpers.js';

let dir: string;
let tb: TestBridge | undefined;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'playline-console-'));
  mkdirSync(join(dir, 'site', 'assets'), { recursive: true });
  writeFileSync(join(dir, 'site', 'index.html'), '<!doctype html><title>console</title><script type="module" src="/assets/main-ABC.js"></script>');
  writeFileSync(join(dir, 'site', 'assets', 'main-ABC.js'), 'console.log("hi")');
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));
afterEach(async () => {
  await tb?.close();
  tb = undefined;
});

const site = () => join(dir, 'site');
const pages = CONSOLE_PAGES.map((p) => p.replace(':id', 'c_123'));

describe('console build (scripts/build-console.mjs)', () => {
  it('writes index.html that loads only its own hashed assets, and keeps the JS within the gzipped budget', async () => {
    const out = join(dir, 'built');
    const lines: string[] = [];
    const build = await buildConsole({ outDir: out, log: (l) => lines.push(l) });
    const html = readFileSync(join(out, 'index.html'), 'utf8');
    const refs = [...html.matchAll(/(?:src|href)="([^"]+)"/g)].map((m) => m[1] ?? '');
    expect(refs.length).toBeGreaterThanOrEqual(3);
    for (const ref of refs) {
      expect(ref, 'no CDN or other origin').toMatch(/^\/assets\//);
      expect(existsSync(join(out, ref)), ref).toBe(true);
    }
    expect(html).not.toMatch(/<script>|<style>|\son[a-z]+=/i);
    const names = build.files.map((f) => f.file);
    expect(names.some((n) => /^assets\/capture-worklet-\w+\.js$/.test(n))).toBe(true);
    expect(names.some((n) => /^assets\/playback-worklet-\w+\.js$/.test(n))).toBe(true);
    // The app finds the worklets by their hashed names.
    const app = names.find((n) => /^assets\/main-\w+\.js$/.test(n));
    const worklet = names.find((n) => n.startsWith('assets/capture-worklet-'));
    expect(readFileSync(join(out, app!), 'utf8')).toContain(`/${worklet}`);
    expect(build.jsGzipBytes).toBeGreaterThan(0);
    expect(build.jsGzipBytes).toBeLessThanOrEqual(JS_BUDGET_BYTES);
    expect(lines[0]).toMatch(/JS [\d.]+ KB gzipped \(budget 150\.0 KB\)/);
  }, 30_000);
});

describe('console routes', () => {
  it('answers index.html for every client route, with a strict CSP and no caching', async () => {
    tb = await startTestBridge({ signed: false, overrides: { consoleDir: site() } });
    for (const url of pages) {
      const r = await tb.bridge.app.inject({ method: 'GET', url });
      expect(r.statusCode, url).toBe(200);
      expect(r.headers['content-type']).toMatch(/^text\/html/);
      expect(r.body).toContain('<title>console</title>');
      expect(r.headers['cache-control']).toBe('no-cache');
      const csp = String(r.headers['content-security-policy']);
      expect(csp).toContain("script-src 'self'");
      expect(csp).toContain("default-src 'self'");
      expect(csp).not.toContain('unsafe-inline');
      expect(r.headers['x-content-type-options']).toBe('nosniff');
      expect(r.headers['x-frame-options']).toBe('DENY');
    }
  });

  it('serves hashed assets to be cached for good, and an unknown asset is a 404', async () => {
    tb = await startTestBridge({ signed: false, overrides: { consoleDir: site() } });
    const js = await tb.bridge.app.inject({ method: 'GET', url: '/assets/main-ABC.js' });
    expect(js.statusCode).toBe(200);
    expect(js.headers['content-type']).toMatch(/javascript/);
    expect(js.headers['cache-control']).toMatch(/immutable/);
    expect((await tb.bridge.app.inject({ method: 'GET', url: '/assets/nope.js' })).statusCode).toBe(404);
  });

  it('leaves the 404s of the API, Twilio, web-call, docs and health paths to their JSON error', async () => {
    tb = await startTestBridge({ signed: false, overrides: { consoleDir: site() } });
    for (const url of ['/v1/nope', '/v1/calls/x/nope', '/twilio/nope', '/web/nope', '/docs/nope/x', '/metricsx', '/healthz/x', '/readyz/x', '/nope']) {
      const r = await tb.bridge.app.inject({ method: 'GET', url });
      expect(r.statusCode, url).toBe(404);
      expect(r.json(), url).toMatchObject({ error: { code: 'not_found' } });
    }
    expect((await tb.bridge.app.inject({ method: 'GET', url: '/healthz' })).json()).toEqual({ status: 'ok' });
    expect((await tb.bridge.app.inject({ method: 'GET', url: '/v1/calls' })).statusCode).toBe(200);
  });

  it('answers a page naming `npm run build` when the console was not built', async () => {
    tb = await startTestBridge({ signed: false, overrides: { consoleDir: join(dir, 'missing') } });
    const r = await tb.bridge.app.inject({ method: 'GET', url: '/' });
    expect(r.statusCode).toBe(503);
    expect(r.headers['content-type']).toMatch(/^text\/html/);
    expect(r.body).toContain('npm run build');
    expect((await tb.bridge.app.inject({ method: 'GET', url: '/live' })).body).toContain('npm run build');
  });
});

describe('who may load the console', () => {
  it('local mode without API_TOKEN: loopback clients get it; other clients and proxied requests get a page naming API_TOKEN', async () => {
    tb = await startTestBridge({ signed: false, overrides: { consoleDir: site() } });
    expect((await tb.bridge.app.inject({ method: 'GET', url: '/live' })).statusCode).toBe(200);
    const remote = await tb.bridge.app.inject({ method: 'GET', url: '/live', remoteAddress: '203.0.113.9' });
    expect(remote.statusCode).toBe(403);
    expect(remote.body).toContain('API_TOKEN');
    expect(remote.body).not.toContain('<title>console</title>');
    const proxied = await tb.bridge.app.inject({ method: 'GET', url: '/assets/main-ABC.js', headers: { 'x-forwarded-for': '203.0.113.9' } });
    expect(proxied.statusCode).toBe(403);
    expect(proxied.body).toContain('x-forwarded-for');
  });

  it('with API_TOKEN: anyone gets the page (it asks for the token), while the API still needs the token', async () => {
    tb = await startTestBridge({ signed: false, env: { API_TOKEN: 'console-token-0123456789' }, overrides: { consoleDir: site() } });
    const r = await tb.bridge.app.inject({ method: 'GET', url: '/calls', remoteAddress: '203.0.113.9' });
    expect(r.statusCode).toBe(200);
    expect(r.body).toContain('<title>console</title>');
    expect((await tb.bridge.app.inject({ method: 'GET', url: '/v1/calls', remoteAddress: '203.0.113.9' })).statusCode).toBe(401);
  });

  it('with Twilio credentials and no API_TOKEN: refused even on loopback, naming API_TOKEN', async () => {
    tb = await startTestBridge({ signed: true, env: { TWILIO_ACCOUNT_SID: `AC${'0'.repeat(32)}` }, overrides: { consoleDir: site() } });
    const r = await tb.bridge.app.inject({ method: 'GET', url: '/' });
    expect(r.statusCode).toBe(403);
    expect(r.body).toContain('set API_TOKEN');
  });
});

describe('transfer steps on the Live page (web/src/transfer.ts)', () => {
  it('follows a transfer step by step from its call.updated events, and a new transfer of the same call starts afresh', () => {
    const base = { transferId: 'tr_1', target: 'frontdesk', to: '+14155550100', mode: 'cold' };
    let p = withStep(undefined, { ...base, step: 'requested' });
    expect(transferActive(p)).toBe(true);
    p = withStep(p, { ...base, step: 'dialing' });
    p = withStep(p, { ...base, step: 'failed', outcome: 'no-answer' });
    expect(p.steps.map(stepLabel)).toEqual(['Requested', 'Dialing…', 'Not reached (no answer)']);
    expect(transferActive(p)).toBe(false);
    p = withStep(p, { ...base, step: 'returned' });
    expect(p.steps.map((s) => s.step)).toEqual(['requested', 'dialing', 'failed', 'returned']);
    // The operator tries again, to a number: the steps are the new transfer's only.
    p = withStep(p, { transferId: 'tr_2', to: '+14155550177', mode: 'warm', step: 'requested' });
    expect(p).toEqual({ transferId: 'tr_2', target: '+14155550177', mode: 'warm', steps: [{ transferId: 'tr_2', to: '+14155550177', mode: 'warm', step: 'requested' }] });
    expect(transferActive(undefined)).toBe(false);
  });

  it('says every step and outcome the server sends in words, and an unknown one as it is', () => {
    expect(['requested', 'dialing', 'answered', 'joined', 'failed', 'returned', 'completed'].map((step) => stepLabel({ step }))).toEqual([
      'Requested',
      'Dialing…',
      'Answered',
      'Joined: the caller and the person are talking',
      'Not reached (failed)',
      'Back with the agent',
      'Completed',
    ]);
    expect(stepLabel({ step: 'failed', outcome: 'busy' })).toBe('Not reached (busy)');
    expect(stepLabel({ step: 'parked' })).toBe('parked');
    expect(outcomeLabel('pending')).toBe('under way');
    expect(outcomeLabel('voicemail')).toBe('voicemail');
  });
});
