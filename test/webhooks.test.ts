import { createHmac } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';
import { afterEach, describe, expect, it, vi } from 'vitest';
import {
  signWebhook,
  verifyWebhookSignature,
  webhookSignatureHeader,
  WebhookDispatcher,
  type WebhookDispatcherOptions,
} from '../src/outbound/webhooks.js';
import { openDb, type Db } from '../src/store/db.js';
import { SqliteWebhookDeliveryStore } from '../src/store/webhookDeliveries.js';

const SECRET = 'whsec_test_0123456789';

// ---------------------------------------------------------------------------
// Helpers

interface Received {
  headers: IncomingHttpHeaders;
  body: string;
  at: number;
}

type Reply = number | { status: number; delayMs?: number; body?: string } | 'hang';

/** A webhook receiver on 127.0.0.1 answering from a script (then `fallback`). */
class Receiver {
  readonly received: Received[] = [];
  readonly script: Reply[] = [];
  fallback: Reply = 200;
  active = 0;
  maxActive = 0;
  readonly #hanging = new Set<() => void>();

  private constructor(readonly server: Server) {
    server.on('request', (req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        this.received.push({ headers: req.headers, body: Buffer.concat(chunks).toString('utf8'), at: Date.now() });
        this.active++;
        this.maxActive = Math.max(this.maxActive, this.active);
        const reply = this.script.shift() ?? this.fallback;
        const finish = (status: number, body = ''): void => {
          this.active--;
          res.writeHead(status, { 'content-type': 'text/plain' }).end(body);
        };
        if (reply === 'hang') {
          const release = (): void => {
            this.active--;
            res.destroy();
          };
          this.#hanging.add(release);
          res.on('close', () => this.#hanging.delete(release));
          return;
        }
        const r = typeof reply === 'number' ? { status: reply } : reply;
        if (r.delayMs) setTimeout(() => finish(r.status, r.body), r.delayMs);
        else finish(r.status, r.body ?? (r.status >= 300 ? `status ${r.status}` : 'ok'));
      });
    });
  }

  static async start(): Promise<Receiver> {
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return new Receiver(server);
  }

  get url(): string {
    const addr = this.server.address();
    if (addr === null || typeof addr === 'string') throw new Error('not listening');
    return `http://127.0.0.1:${addr.port}/hooks/playline`;
  }

  async close(): Promise<void> {
    for (const release of this.#hanging) release();
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }
}

class Logs {
  readonly lines: Array<Record<string, unknown>> = [];
  readonly logger: Logger = pino(
    { level: 'debug' },
    new Writable({
      write: (chunk: Buffer, _enc, cb) => {
        for (const line of chunk.toString('utf8').split('\n')) {
          if (line.trim()) this.lines.push(JSON.parse(line) as Record<string, unknown>);
        }
        cb();
      },
    }),
  );
}

async function waitFor(cond: () => boolean | Promise<boolean>, timeoutMs = 5_000, what = 'condition'): Promise<void> {
  const start = Date.now();
  while (!(await cond())) {
    if (Date.now() - start > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

const cleanups: Array<() => unknown> = [];
afterEach(async () => {
  vi.useRealTimers();
  while (cleanups.length > 0) await cleanups.pop()?.();
});

async function setup(
  extra: Partial<WebhookDispatcherOptions> = {},
): Promise<{ receiver: Receiver; db: Db; logs: Logs; d: WebhookDispatcher }> {
  const receiver = await Receiver.start();
  cleanups.push(() => receiver.close());
  const db = openDb(':memory:');
  cleanups.push(() => db.close());
  const logs = new Logs();
  const d = new WebhookDispatcher({
    store: new SqliteWebhookDeliveryStore(db),
    url: receiver.url,
    secret: SECRET,
    log: logs.logger,
    backoffMs: [20, 40, 60],
    pollMs: 50,
    ...extra,
  });
  cleanups.push(() => d.stop());
  return { receiver, db, logs, d };
}

// ---------------------------------------------------------------------------

describe('webhook signatures', () => {
  const body = JSON.stringify({ id: 'whd_1', event: 'call.completed', data: { a: 1 } });
  const t = 1_750_000_000;

  it('is the hex HMAC-SHA256 of "<t>.<body>"', () => {
    const expected = createHmac('sha256', SECRET).update(`${t}.${body}`).digest('hex');
    expect(signWebhook(SECRET, t, body)).toBe(expected);
    expect(webhookSignatureHeader(SECRET, t, body)).toBe(`t=${t},v1=${expected}`);
    expect(signWebhook(SECRET, t, Buffer.from(body))).toBe(expected);
  });

  it('verifies a good header and rejects wrong secret, tampered body, stale or future timestamps', () => {
    const header = webhookSignatureHeader(SECRET, t, body);
    expect(verifyWebhookSignature(SECRET, header, body, { nowSec: t })).toBe(true);
    expect(verifyWebhookSignature(SECRET, header, Buffer.from(body), { nowSec: t + 299 })).toBe(true);
    expect(verifyWebhookSignature('other-secret', header, body, { nowSec: t })).toBe(false);
    expect(verifyWebhookSignature(SECRET, header, body.replace('"a":1', '"a":2'), { nowSec: t })).toBe(false);
    expect(verifyWebhookSignature(SECRET, header, `${body} `, { nowSec: t })).toBe(false);
    expect(verifyWebhookSignature(SECRET, header, body, { nowSec: t + 301 })).toBe(false);
    expect(verifyWebhookSignature(SECRET, header, body, { nowSec: t - 301 })).toBe(false);
    expect(verifyWebhookSignature(SECRET, header, body, { nowSec: t + 3_000, toleranceSec: 3_600 })).toBe(true);
    // Default clock: a header signed now verifies, one from an hour ago does not.
    const nowSec = Math.floor(Date.now() / 1000);
    expect(verifyWebhookSignature(SECRET, webhookSignatureHeader(SECRET, nowSec, body), body)).toBe(true);
    expect(verifyWebhookSignature(SECRET, webhookSignatureHeader(SECRET, nowSec - 3_600, body), body)).toBe(false);
  });

  it('rejects malformed headers and accepts any matching v1 (secret rotation)', () => {
    const sig = signWebhook(SECRET, t, body);
    const v = (h: string | undefined | null): boolean => verifyWebhookSignature(SECRET, h, body, { nowSec: t });
    expect(v(undefined)).toBe(false);
    expect(v(null)).toBe(false);
    expect(v('')).toBe(false);
    expect(v(`v1=${sig}`)).toBe(false);
    expect(v(`t=${t}`)).toBe(false);
    expect(v(`t=${t},v1=${sig.slice(0, 62)}`)).toBe(false);
    expect(v(`t=${t},v1=${sig}zz`)).toBe(false);
    expect(v(`t=abc,v1=${sig}`)).toBe(false);
    expect(v(`t=${t},t=${t},v1=${sig}`)).toBe(false);
    expect(v(`t=${t}, v1=${'0'.repeat(64)}, v1=${sig}`)).toBe(true);
    expect(v(`t=${t},v0=${sig}`)).toBe(false);
  });
});

describe('WebhookDispatcher', () => {
  it('POSTs a signed JSON body with the Playline headers and marks the delivery delivered', async () => {
    const { receiver, d } = await setup();
    d.start();
    const id = await d.enqueue('call.completed', 'call_123', { callId: 'call_123', outcome: 'answered' });
    expect((await d.get(id))?.status).toBe('pending');
    await waitFor(async () => (await d.get(id))?.status === 'delivered', 5_000, 'delivered');

    expect(receiver.received).toHaveLength(1);
    const r = receiver.received[0]!;
    expect(r.headers['content-type']).toBe('application/json');
    expect(r.headers['user-agent']).toBe('Playline-Webhooks/1');
    expect(r.headers['playline-event']).toBe('call.completed');
    expect(r.headers['playline-delivery']).toBe(id);
    const sigHeader = String(r.headers['playline-signature']);
    expect(sigHeader).toMatch(/^t=\d+,v1=[0-9a-f]{64}$/);
    expect(verifyWebhookSignature(SECRET, sigHeader, r.body)).toBe(true);
    expect(verifyWebhookSignature('wrong', sigHeader, r.body)).toBe(false);

    const body = JSON.parse(r.body) as Record<string, unknown>;
    expect(body).toEqual({
      id,
      event: 'call.completed',
      createdAt: expect.stringMatching(/^\d{4}-\d\d-\d\dT/),
      data: { callId: 'call_123', outcome: 'answered' },
    });

    const row = (await d.get(id))!;
    expect(row).toMatchObject({ status: 'delivered', attempts: 1, lastStatusCode: 200, lastError: null, callId: 'call_123' });
    expect(row.deliveredAt).toBeTypeOf('number');
    expect(row.body).toEqual(body);
  });

  it('retries with backoff after 500s, same delivery id and body, re-signed each time, then succeeds', async () => {
    const { receiver, d } = await setup({ backoffMs: [150, 100, 100] });
    receiver.script.push({ status: 500, body: 'database down' }, 502);
    d.start();
    const id = await d.enqueue('call.completed', null, { n: 1 });

    await waitFor(async () => (await d.get(id))?.attempts === 1, 5_000, 'first attempt recorded');
    const afterFirst = (await d.get(id))!;
    expect(afterFirst).toMatchObject({ status: 'pending', attempts: 1, lastStatusCode: 500 });
    expect(afterFirst.lastError).toBe('HTTP 500: database down');
    expect(afterFirst.nextAttemptAt - Date.now()).toBeGreaterThan(50);

    await waitFor(async () => (await d.get(id))?.status === 'delivered', 5_000, 'delivered');
    expect(receiver.received).toHaveLength(3);
    expect(await d.get(id)).toMatchObject({ attempts: 3, lastStatusCode: 200, lastError: null });

    const [a, b, c] = receiver.received as [Received, Received, Received];
    expect(b.at - a.at).toBeGreaterThanOrEqual(140);
    expect(c.at - b.at).toBeGreaterThanOrEqual(90);
    for (const r of receiver.received) {
      expect(r.headers['playline-delivery']).toBe(id);
      expect(r.body).toBe(a.body);
      expect(verifyWebhookSignature(SECRET, String(r.headers['playline-signature']), r.body)).toBe(true);
    }
  });

  it('re-signs each attempt with a fresh timestamp', async () => {
    let clock = 1_750_000_000_000;
    const { receiver, d } = await setup({ backoffMs: [10], now: () => clock });
    receiver.script.push(500);
    d.start();
    const id = await d.enqueue('e', null, {});
    await waitFor(async () => (await d.get(id))?.attempts === 1);
    clock += 60_000; // a minute later (the retry is due: next_attempt_at is in the past)
    await waitFor(async () => (await d.get(id))?.status === 'delivered');
    const ts = receiver.received.map((r) => /^t=(\d+),/.exec(String(r.headers['playline-signature']))?.[1]);
    expect(ts).toEqual(['1750000000', '1750000060']);
  });

  it('dead-letters after the last backoff step, then retry() requeues it', async () => {
    const { receiver, d, logs } = await setup({ backoffMs: [10, 10, 10] });
    receiver.fallback = 503;
    d.start();
    const id = await d.enqueue('call.completed', 'call_9', { x: 1 });
    await waitFor(async () => (await d.get(id))?.status === 'failed', 5_000, 'failed');
    expect(await d.get(id)).toMatchObject({ attempts: 4, lastStatusCode: 503, lastError: 'HTTP 503: status 503' });
    await new Promise((r) => setTimeout(r, 150));
    expect(receiver.received).toHaveLength(4);
    expect(logs.lines.some((l) => String(l['msg']).includes('dead letter'))).toBe(true);
    expect((await d.list({ status: 'failed' })).map((x) => x.id)).toEqual([id]);

    expect(await d.retry('whd_missing')).toBe(false);
    receiver.fallback = 204;
    expect(await d.retry(id)).toBe(true);
    expect(await d.get(id)).toMatchObject({ status: 'pending', attempts: 0 });
    await waitFor(async () => (await d.get(id))?.status === 'delivered', 5_000, 'delivered after retry');
    expect(await d.get(id)).toMatchObject({ attempts: 1, lastStatusCode: 204 });
    expect(receiver.received).toHaveLength(5);
    expect(receiver.received[4]?.headers['playline-delivery']).toBe(id);
    expect(await d.retry(id)).toBe(false); // not failed
  });

  it('410 Gone fails the delivery at once', async () => {
    const { receiver, d } = await setup();
    receiver.fallback = 410;
    d.start();
    const id = await d.enqueue('call.completed', null, {});
    await waitFor(async () => (await d.get(id))?.status === 'failed', 5_000, 'failed');
    await new Promise((r) => setTimeout(r, 100));
    expect(receiver.received).toHaveLength(1);
    expect(await d.get(id)).toMatchObject({ attempts: 1, lastStatusCode: 410 });
  });

  it('records network errors and timeouts as failed attempts', async () => {
    const { receiver, d: d1 } = await setup({ backoffMs: [], timeoutMs: 100 });
    receiver.fallback = 'hang';
    d1.start();
    const slow = await d1.enqueue('e', null, {});
    await waitFor(async () => (await d1.get(slow))?.status === 'failed', 5_000, 'timeout');
    expect(await d1.get(slow)).toMatchObject({ attempts: 1, lastStatusCode: null, lastError: 'timed out after 100 ms' });

    const closed = await Receiver.start();
    const deadUrl = closed.url;
    await closed.close();
    const db = openDb(':memory:');
    cleanups.push(() => db.close());
    const d2 = new WebhookDispatcher({ store: new SqliteWebhookDeliveryStore(db), url: deadUrl, secret: SECRET, log: new Logs().logger, backoffMs: [] });
    cleanups.push(() => d2.stop());
    d2.start();
    const refused = await d2.enqueue('e', null, {});
    await waitFor(async () => (await d2.get(refused))?.status === 'failed', 5_000, 'refused');
    expect((await d2.get(refused))?.lastStatusCode).toBeNull();
    expect((await d2.get(refused))?.lastError).toMatch(/ECONNREFUSED|fetch failed/);
  });

  it('does not follow redirects (a 3xx is a failed attempt)', async () => {
    const { receiver, d } = await setup({ backoffMs: [] });
    receiver.fallback = 302;
    d.start();
    const id = await d.enqueue('e', null, {});
    await waitFor(async () => (await d.get(id))?.status === 'failed');
    expect((await d.get(id))?.lastStatusCode).toBe(302);
    expect(receiver.received).toHaveLength(1);
  });

  it('keeps at most maxConcurrent (default 4) requests in flight', async () => {
    const { receiver, d } = await setup();
    receiver.fallback = { status: 200, delayMs: 60 };
    const ids = await Promise.all(Array.from({ length: 12 }, (_, i) => d.enqueue('e', `call_${i}`, { i })));
    d.start();
    await waitFor(async () => (await Promise.all(ids.map((id) => d.get(id)))).every((r) => r?.status === 'delivered'), 5_000, 'all delivered');
    expect(receiver.maxActive).toBeLessThanOrEqual(4);
    expect(receiver.maxActive).toBeGreaterThan(1);
    expect(receiver.received).toHaveLength(12);
  });

  it('persists across restarts: pending rows are delivered by a new dispatcher', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'playline-webhooks-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const file = join(dir, 'playline.db');
    const receiver = await Receiver.start();
    cleanups.push(() => receiver.close());

    // Process 1 records an event but never delivers it (stopped before the loop ran).
    const db1 = openDb(file);
    const d1 = new WebhookDispatcher({ store: new SqliteWebhookDeliveryStore(db1), url: receiver.url, secret: SECRET, log: new Logs().logger });
    const queued = await d1.enqueue('call.completed', 'call_1', { before: 'restart' });
    await d1.stop();
    // A row left mid-retry by a crashed process (due already).
    db1
      .prepare(
        `INSERT INTO webhook_deliveries (id, call_id, event, url, payload, status, attempts, next_attempt_at, last_status_code, last_error, created_at)
         VALUES ('whd_crashed', NULL, 'call.completed', ?, ?, 'pending', 2, ?, 500, 'HTTP 500', ?)`,
      )
      .run(receiver.url, JSON.stringify({ id: 'whd_crashed', event: 'call.completed', createdAt: new Date().toISOString(), data: {} }), Date.now() - 1000, Date.now() - 60_000);
    db1.close();
    expect(receiver.received).toHaveLength(0);

    // Process 2.
    const db2 = openDb(file);
    cleanups.push(() => db2.close());
    const d2 = new WebhookDispatcher({ store: new SqliteWebhookDeliveryStore(db2), url: receiver.url, secret: SECRET, log: new Logs().logger, pollMs: 50 });
    cleanups.push(() => d2.stop());
    d2.start();
    await waitFor(async () => (await d2.get(queued))?.status === 'delivered' && (await d2.get('whd_crashed'))?.status === 'delivered', 5_000, 'delivered');
    expect((await d2.get('whd_crashed'))?.attempts).toBe(3);
    expect(receiver.received.map((r) => r.headers['playline-delivery']).sort()).toEqual([queued, 'whd_crashed'].sort());
    const first = receiver.received.find((r) => r.headers['playline-delivery'] === queued)!;
    expect(JSON.parse(first.body)).toMatchObject({ id: queued, data: { before: 'restart' } });
  });

  it('sends unsigned requests without a secret and warns once', async () => {
    const { receiver, d, logs } = await setup({ secret: undefined });
    d.start();
    const a = await d.enqueue('e', null, {});
    const b = await d.enqueue('e', null, {});
    await waitFor(async () => (await d.get(a))?.status === 'delivered' && (await d.get(b))?.status === 'delivered');
    expect(receiver.received.every((r) => r.headers['playline-signature'] === undefined)).toBe(true);
    expect(logs.lines.filter((l) => l['level'] === 40 && String(l['msg']).includes('secret'))).toHaveLength(1);
  });

  it('list() filters by status and call, newest first, with a limit', async () => {
    const { receiver, d } = await setup({ backoffMs: [] });
    receiver.script.push(200, 410, 200);
    d.start();
    const ids: string[] = [];
    for (let i = 0; i < 3; i++) {
      ids.push(await d.enqueue('e', i === 2 ? 'call_x' : null, { i }));
      await waitFor(async () => (await d.get(ids[i]!))?.status !== 'pending');
      await new Promise((r) => setTimeout(r, 2)); // distinct created_at
    }
    expect((await d.list()).map((x) => x.id)).toEqual([...ids].reverse());
    expect((await d.list({ status: 'delivered' })).map((x) => x.id)).toEqual([ids[2], ids[0]]);
    expect((await d.list({ status: 'failed' })).map((x) => x.id)).toEqual([ids[1]]);
    expect((await d.list({ callId: 'call_x' })).map((x) => x.id)).toEqual([ids[2]]);
    expect(await d.list({ limit: 1 })).toHaveLength(1);
    expect(await d.get('nope')).toBeUndefined();
  });

  it('does nothing until start(); stop() waits for the request in flight', async () => {
    const { receiver, d } = await setup();
    receiver.fallback = { status: 200, delayMs: 150 };
    const id = await d.enqueue('e', null, {});
    await new Promise((r) => setTimeout(r, 100));
    expect(receiver.received).toHaveLength(0);
    d.start();
    await waitFor(async () => receiver.received.length === 1);
    expect(d.inFlight).toBe(1);
    await d.stop();
    expect(d.inFlight).toBe(0);
    expect((await d.get(id))?.status).toBe('delivered');
    // Nothing new goes out once stopped.
    await d.enqueue('e', null, {});
    await new Promise((r) => setTimeout(r, 100));
    expect(receiver.received).toHaveLength(1);
  });

  it('stop() leaves no timers behind (fake clock)', async () => {
    vi.useFakeTimers();
    const db = openDb(':memory:');
    cleanups.push(() => db.close());
    let resolveFetch: ((r: Response) => void) | undefined;
    const fetchImpl = vi.fn(
      (_url: string | URL | Request, _init?: RequestInit) =>
        new Promise<Response>((resolve) => {
          resolveFetch = resolve;
        }),
    );
    const d = new WebhookDispatcher({
      store: new SqliteWebhookDeliveryStore(db),
      url: 'http://127.0.0.1:9/never',
      secret: SECRET,
      log: new Logs().logger,
      fetchImpl: fetchImpl as unknown as typeof fetch,
      backoffMs: [1_000],
    });
    expect(vi.getTimerCount()).toBe(0);
    d.start();
    const id = await d.enqueue('e', null, {});
    await vi.advanceTimersByTimeAsync(0);
    expect(fetchImpl).toHaveBeenCalledTimes(1);
    const init = fetchImpl.mock.calls[0]?.[1];
    expect(init?.method).toBe('POST');
    expect(vi.getTimerCount()).toBeGreaterThan(0); // request timeout + poll

    let stopped = false;
    const stopping = d.stop().then(() => {
      stopped = true;
    });
    await vi.advanceTimersByTimeAsync(0);
    expect(stopped).toBe(false); // waits for the request in flight
    resolveFetch?.(new Response('nope', { status: 500 }));
    await stopping;
    expect(stopped).toBe(true);
    expect(vi.getTimerCount()).toBe(0);
    expect(await d.get(id)).toMatchObject({ status: 'pending', attempts: 1, lastStatusCode: 500 });

    // Started again, the retry goes out once due.
    d.start();
    await vi.advanceTimersByTimeAsync(500);
    expect(fetchImpl).toHaveBeenCalledTimes(1);
    await vi.advanceTimersByTimeAsync(1_200);
    expect(fetchImpl).toHaveBeenCalledTimes(2);
    resolveFetch?.(new Response(null, { status: 200 }));
    await d.stop();
    expect(vi.getTimerCount()).toBe(0);
    expect(await d.get(id)).toMatchObject({ status: 'delivered', attempts: 2 });
  });
});
