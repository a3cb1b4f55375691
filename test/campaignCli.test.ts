/**
 * `npm run campaign` driven in-process (`run(args, io)`): against a small fake of the
 * campaign API (scripted answers, recorded requests) and, for the results file and
 * files with no usable rows, against a real local-mode bridge.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { parse as parseCsv } from 'csv-parse/sync';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { createBridge, type Bridge } from '../src/app.js';
import { parseApiError } from '../src/cli/api.js';
import { run } from '../src/cli/campaign.js';
import { loadConfig } from '../src/config.js';
import { LocalAgentServer } from '../src/sim/localAgent.js';
import { openDb } from '../src/store/db.js';
import { memIo, tempDir } from './cliIo.js';

interface SeenRequest {
  method: string;
  path: string;
  query: URLSearchParams;
  body: string;
}
interface Answer {
  status: number;
  json?: unknown;
  text?: string;
}

/** A stand-in for Playline's campaign API: answers with `handle`, records every request. */
class FakeApi {
  url = '';
  readonly requests: SeenRequest[] = [];
  constructor(
    private readonly server: Server,
    public handle: (r: SeenRequest) => Answer,
  ) {}

  static async start(handle: (r: SeenRequest) => Answer): Promise<FakeApi> {
    let api: FakeApi | undefined;
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on('data', (c: Buffer) => chunks.push(c));
      req.on('end', () => {
        const u = new URL(req.url ?? '/', 'http://x');
        const seen = { method: req.method ?? '', path: u.pathname, query: u.searchParams, body: Buffer.concat(chunks).toString('utf8') };
        api?.requests.push(seen);
        const a = api?.handle(seen) ?? { status: 500, json: {} };
        res.writeHead(a.status, { 'content-type': a.text !== undefined ? 'text/csv' : 'application/json' });
        res.end(a.text ?? JSON.stringify(a.json));
      });
    });
    api = new FakeApi(server, handle);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    api.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    return api;
  }

  close(): Promise<void> {
    return new Promise((r) => this.server.close(() => r()));
  }
}

function campaignJson(id: string, status: string, done: number, total: number, opts: { outcomes?: Record<string, number>; pauseReason?: string } = {}) {
  const dialing = status === 'running' ? Math.min(2, total - done) : 0;
  return {
    id,
    name: 'contacts.csv',
    status,
    pauseReason: opts.pauseReason ?? null,
    lastError: null,
    progress: {
      counts: { total, byState: { pending: total - done - dialing, dialing, done }, byOutcome: opts.outcomes ?? (done > 0 ? { answered: done } : {}), attempts: done + dialing },
      activeCalls: dialing,
      dialsLastMinute: 12,
      etaSeconds: status === 'running' ? (total - done) * 5 : 0,
    },
  };
}

const REPORT_OK = { rows: 3, added: 3, errors: [], duplicates: [] };

let api: FakeApi | undefined;
let bridge: Bridge | undefined;
let agent: LocalAgentServer | undefined;
afterEach(async () => {
  await api?.close();
  await bridge?.app.close();
  await agent?.close();
  api = undefined;
  bridge = undefined;
  agent = undefined;
});

/** A working directory holding `contacts.csv`. */
function csvDir(csv = 'phone,name\n+14155550100,Ada\n+14155550101,Grace\n+14155550102,Alan\n'): string {
  const dir = tempDir();
  writeFileSync(join(dir, 'contacts.csv'), csv);
  return dir;
}

/** A fake API that creates campaign c1 and then reports it done 1, 2, 3 of 3. */
async function threeStepApi(): Promise<FakeApi> {
  let polls = 0;
  return FakeApi.start((r) => {
    if (r.method === 'POST' && r.path === '/v1/campaigns') return { status: 201, json: { campaign: campaignJson('c1', 'running', 0, 3), import: REPORT_OK } };
    if (r.method === 'GET' && r.path === '/v1/campaigns/c1') {
      polls++;
      return { status: 200, json: campaignJson('c1', polls >= 3 ? 'completed' : 'running', polls, 3) };
    }
    return { status: 404, json: { error: { code: 'not_found', message: `no route ${r.path}` } } };
  });
}

describe('npm run campaign: API errors', () => {
  it('reads both error shapes, nested {error: {code, message}} and flat {error, message}, and falls back to the raw body', () => {
    expect(parseApiError(422, { error: { code: 'invalid_contacts', message: 'no usable rows', details: { rows: 1 } } })).toEqual({
      status: 422,
      code: 'invalid_contacts',
      message: 'no usable rows',
      details: { rows: 1 },
    });
    expect(parseApiError(404, { error: 'not_found', message: 'no campaign x' })).toEqual({ status: 404, code: 'not_found', message: 'no campaign x', details: undefined });
    expect(parseApiError(502, undefined, '<html>Bad gateway</html>')).toMatchObject({ status: 502, code: undefined, message: '<html>Bad gateway</html>' });
  });

  it('a file refused with 422 exits 1 and prints each bad line and why, at most 20, then how many more', async () => {
    const errors = Array.from({ length: 25 }, (_, i) => ({ line: i + 2, column: 'phone', message: 'not a valid phone number', value: `+1${i}` }));
    api = await FakeApi.start(() => ({
      status: 422,
      json: { error: { code: 'invalid_contacts', message: 'no usable rows in the file', details: { rows: 25, added: 0, errors, duplicates: [] } } },
    }));
    const m = memIo({ cwd: csvDir() });
    expect(await run(['contacts.csv', '--url', api.url], m.io)).toBe(1);
    expect(m.err.text).toContain('Playline answered HTTP 422 invalid_contacts: no usable rows in the file');
    expect(m.err.text).toContain('line 2 (phone): not a valid phone number ["+10"]');
    expect(m.err.text).toContain('line 21 (phone)');
    expect(m.err.text).not.toContain('line 22 (phone)');
    expect(m.err.text).toContain('…and 5 more');
    expect(m.err.text).toContain('Nothing was created');
    expect(api.requests.filter((r) => r.method === 'GET')).toEqual([]);
  });

  it('--strict sends strict=true, and a refusal in the earlier flat error shape is reported with its code and message', async () => {
    api = await FakeApi.start((r) =>
      r.query.get('strict') === 'true'
        ? { status: 422, json: { error: 'invalid_contacts', message: '1 contact row(s) have errors; nothing was created', details: { rows: 3, added: 0, errors: [{ line: 3, column: 'phone', message: 'too short' }], duplicates: [] } } }
        : { status: 201, json: { campaign: campaignJson('c1', 'running', 0, 2), import: REPORT_OK } },
    );
    const m = memIo({ cwd: csvDir() });
    expect(await run(['contacts.csv', '--url', api.url, '--strict'], m.io)).toBe(1);
    expect(api.requests[0]?.query.get('strict')).toBe('true');
    expect(m.err.text).toContain('HTTP 422 invalid_contacts: 1 contact row(s) have errors; nothing was created');
    expect(m.err.text).toContain('line 3 (phone): too short');
    expect(m.err.text).toContain('leave out --strict');
  });

  it('a campaign created with no contacts exits 1 instead of watching a campaign that never runs', async () => {
    api = await FakeApi.start(() => ({
      status: 201,
      json: { campaign: campaignJson('c0', 'completed', 0, 0), import: { rows: 0, added: 0, errors: [{ line: 1, message: 'no phone column' }], duplicates: [] } },
    }));
    const m = memIo({ cwd: csvDir('phone;name\n+14155550100;Ada\n') });
    expect(await run(['contacts.csv', '--url', api.url], m.io)).toBe(1);
    expect(m.out.text).toContain('line 1: no phone column');
    expect(m.err.text).toContain('nothing to dial');
    expect(api.requests.filter((r) => r.method === 'GET')).toEqual([]);
  });

  it('exits 1 naming the URL when Playline cannot be reached, with PORT taken from .env', async () => {
    const probe = await FakeApi.start(() => ({ status: 200, json: {} }));
    const port = new URL(probe.url).port;
    await probe.close();
    const dir = csvDir();
    writeFileSync(join(dir, '.env'), `PORT=${port}\n`);
    const m = memIo({ cwd: dir });
    expect(await run(['contacts.csv'], m.io)).toBe(1);
    expect(m.err.text).toContain(`cannot reach Playline at http://127.0.0.1:${port} (connection refused`);
    expect(m.err.text).toContain('npm start');
  });
});

describe('npm run campaign: progress', () => {
  it('on a terminal redraws one line in place with a bar, counts, dials/min and ETA, in colour', async () => {
    api = await threeStepApi();
    const sleeps: number[] = [];
    const m = memIo({ cwd: csvDir(), tty: true, columns: 120, sleep: async (ms) => void sleeps.push(ms) });
    expect(await run(['contacts.csv', '--url', api.url], m.io)).toBe(0);
    const out = m.out.text;
    expect(out.split('\r\x1b[2K')).toHaveLength(4); // three redraws of the same line
    const redraws = out.split('\r\x1b[2K').slice(1);
    expect(redraws.slice(0, 2).every((r) => !r.includes('\n'))).toBe(true);
    const plain = (s: string) => s.replace(/\x1b\[[0-9;]*m/g, '');
    expect(plain(redraws[0]!)).toMatch(/^running \[█{7}░{13}\]\s+33% 1\/3 done · 1 answered · 2 in flight · 12 dials\/min · ETA 10 s · 0 s$/);
    expect(plain(redraws[2]!)).toMatch(/^completed \[█{20}\] 100% 3\/3 done/);
    expect(out).toContain('\x1b[32m'); // colour on a terminal
    expect(sleeps).toEqual([1000, 1000]);
    expect(out).toContain('campaign c1 completed: 3 contact(s), 3 answered');
  });

  it('respects NO_COLOR on a terminal, and fits the line to the terminal width', async () => {
    api = await threeStepApi();
    const m = memIo({ cwd: csvDir(), tty: true, columns: 60, env: { NO_COLOR: '1' }, sleep: async () => {} });
    expect(await run(['contacts.csv', '--url', api.url], m.io)).toBe(0);
    expect(m.out.text).toContain('\r\x1b[2K');
    expect(m.out.text).not.toMatch(/\x1b\[[0-9;]*m/);
    for (const redraw of m.out.text.split('\r\x1b[2K').slice(1)) expect(redraw.split('\n')[0]!.length).toBeLessThan(60);
  });

  it('not on a terminal prints one plain line per poll, every second', async () => {
    api = await threeStepApi();
    const sleeps: number[] = [];
    const m = memIo({ cwd: csvDir(), tty: false, sleep: async (ms) => void sleeps.push(ms) });
    expect(await run(['contacts.csv', '--url', api.url], m.io)).toBe(0);
    expect(m.out.text).not.toContain('\r');
    expect(m.out.text).not.toContain('\x1b');
    const ticks = m.out.text.split('\n').filter((l) => l.startsWith('['));
    expect(ticks).toHaveLength(3);
    expect(ticks[0]).toMatch(/^\[\s+0 s\] running\s+done 1\/3 · in flight 2 · attempts 3 · 12 dials\/min · ETA 10 s · answered 1$/);
    expect(ticks[2]).toMatch(/completed done 3\/3/);
    expect(sleeps).toEqual([1000, 1000]);
  });
});

describe('npm run campaign: Ctrl-C and campaign control', () => {
  it('Ctrl-C stops watching, says the campaign keeps running and how to pause or cancel it; a second Ctrl-C exits at once', async () => {
    api = await FakeApi.start((r) =>
      r.method === 'POST' ? { status: 201, json: { campaign: campaignJson('c7', 'running', 0, 3), import: REPORT_OK } } : { status: 200, json: campaignJson('c7', 'running', 1, 3) },
    );
    let pressed = false;
    const m = memIo({
      cwd: csvDir(),
      tty: true,
      sleep: (_ms, signal) => {
        // Ctrl-C while waiting for the next poll.
        if (!pressed) {
          pressed = true;
          m.sigint();
        }
        return signal?.aborted ? Promise.reject(signal.reason) : new Promise(() => {});
      },
    });
    expect(await run(['contacts.csv', '--url', api.url, '--results', 'out.csv'], m.io)).toBe(130);
    const err = m.err.text;
    expect(err).toContain('Campaign c7 keeps running on the server');
    expect(err).toContain(`npm run campaign -- --pause c7 --url ${api.url}`);
    expect(err).toContain(`npm run campaign -- --cancel c7 --url ${api.url}`);
    expect(err).toContain(`npm run campaign -- --watch c7 --url ${api.url}`);
    expect(err).toContain(`curl -X POST ${api.url}/v1/campaigns/c7/pause`);
    expect(err).toContain('results not written');
    // The progress line was ended before the message.
    expect(m.out.text.endsWith('\n')).toBe(true);
    // Nothing was paused or canceled on the user's behalf.
    expect(api.requests.filter((r) => r.method === 'POST').map((r) => r.path)).toEqual(['/v1/campaigns']);
    expect(m.exits).toEqual([]);
    m.lastSigintHandler()?.();
    expect(m.exits).toEqual([130]);
  });

  it('--pause, --resume and --cancel post the action and print the new state; a refusal exits 1 with its message', async () => {
    api = await FakeApi.start((r) => {
      const action = /^\/v1\/campaigns\/c2\/(pause|resume|cancel)$/.exec(r.path)?.[1];
      if (r.method !== 'POST' || action === undefined) return { status: 404, json: { error: { code: 'not_found', message: `no campaign ${r.path.split('/')[3]}` } } };
      return { status: 200, json: campaignJson('c2', action === 'pause' ? 'paused' : action === 'resume' ? 'running' : 'canceled', 1, 3) };
    });
    for (const [flag, state] of [
      ['--pause', 'paused'],
      ['--resume', 'running'],
      ['--cancel', 'canceled'],
    ] as const) {
      const m = memIo();
      expect(await run([flag, 'c2', '--url', api.url], m.io)).toBe(0);
      expect(m.out.text).toContain(`campaign c2 is now ${state} (1/3 done)`);
    }
    expect(api.requests.map((r) => `${r.method} ${r.path}`)).toEqual(['POST /v1/campaigns/c2/pause', 'POST /v1/campaigns/c2/resume', 'POST /v1/campaigns/c2/cancel']);
    const m = memIo();
    expect(await run(['--cancel', 'nope', '--url', api.url], m.io)).toBe(1);
    expect(m.err.text).toContain('HTTP 404 not_found: no campaign nope');
  });

  it('--watch follows an existing campaign until it stops and exits 1 when it ends paused', async () => {
    let polls = 0;
    api = await FakeApi.start(() => {
      polls++;
      return { status: 200, json: campaignJson('c3', polls >= 2 ? 'paused' : 'running', 1, 3, { pauseReason: 'error rate breaker' }) };
    });
    const m = memIo({ sleep: async () => {} });
    expect(await run(['--watch', 'c3', '--url', api.url], m.io)).toBe(1);
    expect(api.requests.map((r) => `${r.method} ${r.path}`)).toEqual(['GET /v1/campaigns/c3', 'GET /v1/campaigns/c3']);
    expect(m.out.text).toContain('campaign c3 paused: error rate breaker; resume with npm run campaign -- --resume c3');
  });

  it('refuses two modes at once with exit 2', async () => {
    const m = memIo({ cwd: csvDir() });
    expect(await run(['contacts.csv', '--pause', 'c1'], m.io)).toBe(2);
    expect(m.err.text).toContain('not several');
  });
});

describe('npm run campaign against a local-mode bridge', () => {
  const quiet = pino({ level: 'silent' }, new Writable({ write: (_c, _e, cb) => cb() }));
  async function startLocal(): Promise<string> {
    const config = loadConfig({ PORT: '0', HOST: '127.0.0.1', MAX_EVENT_LOOP_DELAY_MS: '0', LOCAL_CARRIER_OUTCOMES: 'busy:100' });
    agent = await LocalAgentServer.start({ mode: config.localAgentOptions.mode });
    bridge = await createBridge(config, quiet, { agentBaseUrl: agent.url, db: openDb(':memory:') });
    return bridge.app.listen({ port: 0, host: '127.0.0.1' });
  }

  it('--results writes the rows the import rejected too, with their CSV line and reason, in line order', async () => {
    const url = await startLocal();
    const dir = csvDir('phone,name\n+14155550100,Ada\n+1415555,Typo\n+14155550102,Alan\n');
    const m = memIo({ cwd: dir, sleep: (ms, signal) => new Promise((r, j) => (signal?.aborted ? j(signal.reason) : setTimeout(r, Math.min(ms, 50)))) });
    const code = await run(['contacts.csv', '--url', url, '--cps', '10', '--retries', '1', '--results', 'results.csv'], m.io);
    expect(m.out.text).toContain('results written to results.csv (with 1 rejected row(s))');
    expect(code).toBe(0);
    const rows: Array<Record<string, string>> = parseCsv(readFileSync(join(dir, 'results.csv')), { columns: true });
    expect(rows.map((r) => [r.line, r.state])).toEqual([
      ['2', 'done'],
      ['3', 'rejected'],
      ['4', 'done'],
    ]);
    expect(rows[1]).toMatchObject({ line: '3', phone: '+1415555', state: 'rejected' });
    expect(rows[1]!.last_error).toMatch(/^phone: /);
    expect(rows[0]).toMatchObject({ phone: '+14155550100', outcome: 'busy', name: 'Ada' });
  });

  it('a file with no usable rows (no phone column) is refused by the server: exits 1 and shows why', async () => {
    const url = await startLocal();
    const m = memIo({ cwd: csvDir('name;email\nAda;ada@example.com\n'), sleep: async () => {} });
    expect(await run(['contacts.csv', '--url', url], m.io)).toBe(1);
    expect(m.out.text + m.err.text).toMatch(/line 1: no phone column/);
  });
});
