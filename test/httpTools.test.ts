import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { verifyWebhookSignature } from '../src/outbound/webhooks.js';
import { callHttpTool, httpToolSchema, type HttpToolDef } from '../src/tools/http.js';

type Handler = (req: IncomingMessage, body: string, res: ServerResponse) => void;

let server: Server;
let base = '';
const handlers = new Map<string, Handler>();
const seen: Array<{ path: string; headers: IncomingMessage['headers']; body: string }> = [];

beforeAll(async () => {
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const body = Buffer.concat(chunks).toString('utf8');
      seen.push({ path: req.url ?? '', headers: req.headers, body });
      const h = handlers.get(req.url ?? '');
      if (h === undefined) res.writeHead(404).end();
      else h(req, body, res);
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
afterAll(async () => {
  server.closeAllConnections();
  await new Promise<void>((r) => server.close(() => r()));
});

const tool = (path: string, extra: Partial<HttpToolDef> = {}): HttpToolDef =>
  httpToolSchema.parse({ name: 'lookup_order', description: 'Look an order up by its number', url: `${base}${path}`, ...extra });
const request = { callId: 'call_1', from: '+15550001111', to: '+15550002222', tool: 'lookup_order', arguments: { order: '42' }, metadata: { crm: 'x' } };

describe('operator HTTP tools', () => {
  it('POSTs the call, tool and arguments, and hands the JSON answer back with its size, status and duration', async () => {
    handlers.set('/ok', (_req, _body, res) => res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"shipped"}'));
    const out = await callHttpTool(tool('/ok'), request);
    expect(out).toMatchObject({ ok: true, result: '{"status":"shipped"}', status: 200, bytes: 20 });
    expect(out.ms).toBeGreaterThanOrEqual(0);
    const got = seen.find((s) => s.path === '/ok');
    expect(JSON.parse(got?.body ?? '')).toEqual(request);
    expect(got?.headers['playline-tool']).toBe('lookup_order');
  });

  it('signs the request so that the receiver verifies it with the same code as webhooks', async () => {
    handlers.set('/signed', (_req, _body, res) => res.writeHead(200).end('{}'));
    await callHttpTool(tool('/signed'), request, { secret: 'a-secret-of-16-chars+' });
    const got = seen.filter((s) => s.path === '/signed').at(-1);
    const header = got?.headers['playline-signature'];
    expect(typeof header).toBe('string');
    expect(verifyWebhookSignature('a-secret-of-16-chars+', typeof header === 'string' ? header : '', got?.body ?? '')).toBe(true);
    expect(verifyWebhookSignature('another-secret-16-chars', typeof header === 'string' ? header : '', got?.body ?? '')).toBe(false);
  });

  it('turns a slow endpoint into a timeout error for the model, within the tool timeout', async () => {
    handlers.set('/slow', (_req, _body, res) => setTimeout(() => res.writeHead(200).end('{}'), 2000).unref());
    const out = await callHttpTool(tool('/slow', { timeoutMs: 150 }), request);
    expect(out).toMatchObject({ ok: false, failure: 'timeout' });
    if (!out.ok) expect(out.error).toMatch(/did not answer within 150 ms/);
    expect(out.ms).toBeLessThan(1500);
  });

  it('turns an HTTP 500 into a tool error naming the status', async () => {
    handlers.set('/boom', (_req, _body, res) => res.writeHead(500).end('{"error":"db down"}'));
    const out = await callHttpTool(tool('/boom'), request);
    expect(out).toMatchObject({ ok: false, failure: 'http_error', status: 500 });
    if (!out.ok) expect(out.error).toMatch(/HTTP 500/);
  });

  it('refuses an oversized answer without reading it all, whether or not its length is declared', async () => {
    const big = `{"x":"${'a'.repeat(100_000)}"}`;
    handlers.set('/big', (_req, _body, res) => res.writeHead(200, { 'content-type': 'application/json' }).end(big));
    handlers.set('/big-chunked', (_req, _body, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      for (let i = 0; i < 20; i++) res.write('a'.repeat(8192));
      res.end();
    });
    for (const path of ['/big', '/big-chunked']) {
      const out = await callHttpTool(tool(path), request, { maxBytes: 16 * 1024 });
      expect(out).toMatchObject({ ok: false, failure: 'too_large' });
    }
  });

  it('refuses an answer that is not JSON, and an endpoint that cannot be reached', async () => {
    handlers.set('/html', (_req, _body, res) => res.writeHead(200, { 'content-type': 'text/html' }).end('<html>oops</html>'));
    expect(await callHttpTool(tool('/html'), request)).toMatchObject({ ok: false, failure: 'not_json' });
    const dead = httpToolSchema.parse({ name: 'dead', description: 'd', url: 'http://127.0.0.1:9/x', timeoutMs: 1000 });
    expect(await callHttpTool(dead, request)).toMatchObject({ ok: false, failure: 'network' });
  });

  it('validates declarations: reserved names, bad names, non-http URLs and non-object schemas are refused with the fix', () => {
    const base = { description: 'd', url: 'https://example.com/t' };
    const msg = (v: unknown) => {
      const r = httpToolSchema.safeParse(v);
      return r.success ? '' : r.error.issues.map((i) => i.message).join('; ');
    };
    expect(msg({ ...base, name: 'transfer_call' })).toMatch(/Playline's own tools/);
    expect(msg({ ...base, name: 'has space' })).toMatch(/1 to 64 letters/);
    expect(msg({ ...base, name: 'ok', url: 'ftp://x/y' })).toMatch(/http\(s\) URL/);
    expect(msg({ ...base, name: 'ok', parameters: { type: 'string' } })).toMatch(/JSON Schema of an object/);
    expect(httpToolSchema.parse({ ...base, name: 'ok' })).toMatchObject({ timeoutMs: 5000, parameters: { type: 'object' } });
  });
});
