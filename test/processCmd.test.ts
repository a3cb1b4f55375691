/**
 * The real process as the Docker image runs it (`node dist/main.js`, the image's CMD), on
 * 127.0.0.1 in local mode, driven by the Twilio simulator: the graceful drain on SIGTERM/SIGINT,
 * the goodbye at the drain timeout, signals that arrive together, the ready line, and settings
 * or a data directory that stop the start with a message.
 */
import { createServer as createHttpServer, type IncomingMessage, type Server } from 'node:http';
import { mkdtempSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { describe, expect, it } from 'vitest';
import { postVoiceWebhook } from '../src/sim/twilioSim.js';
import {
  FORCE_HINT,
  freePort,
  get,
  isShutdownLine,
  liveCall,
  message,
  sleep,
  start,
  useProcessHarness,
  waitExit,
  waitFor,
  waitHealthy,
  removeAfterAll,
} from './processHarness.js';

useProcessHarness();

describe('node dist/main.js (the Docker CMD)', () => {
  it('drains on SIGTERM: /readyz 503 at once, new calls refused, the live call runs to its end, exit 0', async () => {
    const drainS = 20;
    const c = await start({ env: { DRAIN_TIMEOUT_S: String(drainS), LOCAL_AGENT_MODE: 'echo' } });
    await waitHealthy(c);
    expect((await get(`${c.url}/readyz`))?.status).toBe(200);
    const { stream, result } = await liveCall(c, { audioMs: 4000 });

    const tTerm = performance.now();
    process.kill(c.pid, 'SIGTERM');
    // Readiness flips at once.
    let ready = await get(`${c.url}/readyz`);
    while (ready?.status !== 503 && performance.now() - tTerm < 2000) ready = await get(`${c.url}/readyz`);
    const flipMs = performance.now() - tTerm;
    expect(ready?.status, c.tail()).toBe(503);
    expect(flipMs, '/readyz answered 503 within ~200 ms of SIGTERM').toBeLessThan(250);
    expect(ready?.body).toMatchObject({ ready: false, draining: true, liveCalls: 1 });
    expect((await get(`${c.url}/healthz`))?.status, 'still alive while draining').toBe(200);

    // A new call is refused at the webhook: TwiML without a <Stream>.
    const refused = await postVoiceWebhook({ bridgeUrl: c.url });
    expect(refused.status).toBe(200);
    expect(refused.twiml, refused.body).toBeDefined();
    expect(refused.twiml!.streamUrl).toBeUndefined();
    expect(refused.body).not.toMatch(/<Stream/i);
    expect(refused.twiml!.hangup || refused.twiml!.reject).toBe(true);

    // The live call keeps flowing: its audio keeps being echoed back.
    const before = stream.mediaReceived;
    await sleep(600);
    expect(stream.mediaReceived - before, 'frames echoed in the 600 ms after SIGTERM').toBeGreaterThanOrEqual(20);
    expect(c.exit, 'still running while a call is live').toBeUndefined();

    // ... and ends normally, by the caller.
    const r = await result;
    const tCallEnd = performance.now();
    expect(r.endedBy).toBe('caller');
    expect(r.error).toBeUndefined();
    expect(r.protocolViolations).toEqual([]);
    expect(r.mediaReceived).toBeGreaterThan(r.framesSent * 0.9);

    // Then the process exits 0 on its own, well before the drain timeout.
    const exit = await waitExit(c, 5000);
    expect(exit, c.tail()).toMatchObject({ code: 0, signal: null });
    expect(exit.at - tTerm).toBeLessThan(drainS * 1000);
    expect(exit.at - tCallEnd, 'exits soon after the last call ended').toBeLessThan(3000);
    const logs = c.logs();
    expect(logs.find((l) => isShutdownLine(l))).toMatchObject({ signal: 'SIGTERM', liveCalls: 1 });
    expect(String(logs.find((l) => isShutdownLine(l))?.msg), 'the first line says how to force the end').toContain(FORCE_HINT);
    expect(logs.find((l) => message(l) === 'call ended')).toMatchObject({ outcome: 'caller_hangup' });
    expect(logs.find((l) => message(l) === 'stopped')).toMatchObject({ endedByDrain: 0 });
    expect(await get(`${c.url}/healthz`), 'nothing listens any more').toBeUndefined();
  });

  it('ends a call still live at DRAIN_TIMEOUT_S (1 s) and exits 0', async () => {
    // TTS off: this pins the drain's timing; a goodbye played into the stream (local TTS) would add its length.
    const c = await start({ env: { DRAIN_TIMEOUT_S: '1', LOCAL_AGENT_MODE: 'echo', TTS: 'off' } });
    await waitHealthy(c);
    const { stream, result } = await liveCall(c, { audioMs: 2000, waitForBridgeHangup: true });

    const tTerm = performance.now();
    process.kill(c.pid, 'SIGTERM');
    await stream.whenClosed;
    const closedAfter = performance.now() - tTerm;
    const r = await result;
    expect(r.endedBy, 'the bridge closed the stream').toBe('bridge');
    expect(r.protocolViolations).toEqual([]);
    expect(r.timedOut).toBeUndefined();
    expect(closedAfter, 'not before the drain timeout').toBeGreaterThanOrEqual(900);
    expect(closedAfter, 'soon after the drain timeout').toBeLessThan(2500);

    const exit = await waitExit(c, 5000);
    expect(exit, c.tail()).toMatchObject({ code: 0, signal: null });
    expect(exit.at - tTerm).toBeLessThan(4000);
    const logs = c.logs();
    expect(logs.find((l) => message(l) === 'drain timeout: ending the remaining calls with a goodbye')).toMatchObject({ liveCalls: 1 });
    expect(logs.find((l) => message(l) === 'call ended')).toMatchObject({ outcome: 'shutdown' });
    expect(logs.find((l) => message(l) === 'stopped')).toMatchObject({ endedByDrain: 1 });
  });

  it('with Twilio credentials, the drain timeout says GOODBYE_TEXT through the REST API before the call ends', async () => {
    // A stand-in for api.twilio.com (TWILIO_API_URL) that records call updates.
    const updates: Array<{ path: string; form: URLSearchParams; auth: string | undefined }> = [];
    const rest: Server = createHttpServer((req: IncomingMessage, res) => {
      let body = '';
      req.setEncoding('utf8').on('data', (d: string) => (body += d));
      req.on('end', () => {
        updates.push({ path: req.url ?? '', form: new URLSearchParams(body), auth: req.headers.authorization });
        const sid = /Calls\/(CA[0-9a-f]{32})\.json/.exec(req.url ?? '')?.[1] ?? '';
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ sid, status: 'in-progress' }));
      });
    });
    await new Promise<void>((resolve) => rest.listen(0, '127.0.0.1', () => resolve()));
    try {
      const restUrl = `http://127.0.0.1:${(rest.address() as AddressInfo).port}`;
      const port = await freePort();
      const authToken = 'process-test-auth-token';
      const accountSid = `AC${'1'.repeat(32)}`;
      const goodbye = 'Playline is restarting. Goodbye.';
      const c = await start({
        port,
        env: {
          DRAIN_TIMEOUT_S: '1',
          LOCAL_AGENT_MODE: 'echo',
          TWILIO_ACCOUNT_SID: accountSid,
          TWILIO_AUTH_TOKEN: authToken,
          PUBLIC_URL: `http://127.0.0.1:${port}`,
          TWILIO_API_URL: restUrl,
          CALL_CONTROL_GRACE_MS: '300',
          GOODBYE_TEXT: goodbye,
        },
      });
      await waitHealthy(c);
      const { stream, result } = await liveCall(c, { audioMs: 2000, waitForBridgeHangup: true, authToken });
      const tTerm = performance.now();
      process.kill(c.pid, 'SIGTERM');
      const r = await result;
      expect(r.endedBy).toBe('bridge');
      expect(performance.now() - tTerm).toBeGreaterThanOrEqual(900);
      expect(updates, c.tail()).toHaveLength(1);
      const u = updates[0]!;
      expect(u.path).toBe(`/2010-04-01/Accounts/${accountSid}/Calls/${stream.callSid}.json`);
      expect(u.auth).toBe(`Basic ${Buffer.from(`${accountSid}:${authToken}`).toString('base64')}`);
      const twiml = u.form.get('Twiml') ?? '';
      expect(twiml).toContain(`<Say>${goodbye}</Say>`);
      expect(twiml).toContain('<Hangup/>');
      const exit = await waitExit(c, 5000);
      expect(exit, c.tail()).toMatchObject({ code: 0, signal: null });
    } finally {
      await new Promise<void>((resolve) => rest.close(() => resolve()));
    }
  });

  it('drains on SIGINT too', async () => {
    const c = await start();
    await waitHealthy(c);
    process.kill(c.pid, 'SIGINT');
    const exit = await waitExit(c, 5000);
    expect(exit, c.tail()).toMatchObject({ code: 0, signal: null });
    expect(c.logs().find((l) => isShutdownLine(l))).toMatchObject({ signal: 'SIGINT', liveCalls: 0 });
  });

  it('counts a second SIGINT 50 ms after the first as the same one (Ctrl-C reaches npm and node): the live call drains, none is ended', async () => {
    const c = await start({ env: { DRAIN_TIMEOUT_S: '20', LOCAL_AGENT_MODE: 'echo' } });
    await waitHealthy(c);
    const { stream, result } = await liveCall(c, { audioMs: 3000 });
    process.kill(c.pid, 'SIGINT');
    await sleep(50);
    process.kill(c.pid, 'SIGINT');
    const before = stream.mediaReceived;
    await sleep(500);
    expect(stream.mediaReceived - before, 'frames echoed in the 500 ms after the second SIGINT').toBeGreaterThanOrEqual(15);
    const r = await result;
    expect(r.endedBy, c.tail()).toBe('caller');
    expect(r.protocolViolations).toEqual([]);
    const exit = await waitExit(c, 5000);
    expect(exit, c.tail()).toMatchObject({ code: 0, signal: null });
    const logs = c.logs();
    expect(logs.find((l) => isShutdownLine(l))).toMatchObject({ signal: 'SIGINT', liveCalls: 1 });
    expect(logs.find((l) => String(l.msg).includes('still draining'))).toMatchObject({ signal: 'SIGINT' });
    expect(logs.find((l) => message(l) === 'second signal: ending every call now')).toBeUndefined();
    expect(logs.filter((l) => message(l) === 'call ended').map((l) => l.outcome)).toEqual(['caller_hangup']);
    expect(logs.find((l) => message(l) === 'stopped')).toMatchObject({ endedByDrain: 0 });
  });

  it('ends every live call at once on a second signal more than 2 s after the first', async () => {
    const c = await start({ env: { DRAIN_TIMEOUT_S: '60', LOCAL_AGENT_MODE: 'echo' } });
    await waitHealthy(c);
    const { stream, result } = await liveCall(c, { audioMs: 20_000, waitForBridgeHangup: true });
    process.kill(c.pid, 'SIGINT');
    await sleep(2300);
    expect(c.exit, 'still draining 2.3 s after the first SIGINT').toBeUndefined();
    const before = stream.mediaReceived;
    await sleep(200);
    expect(stream.mediaReceived - before, 'the call is still live before the second signal').toBeGreaterThan(0);

    const tForce = performance.now();
    process.kill(c.pid, 'SIGINT');
    const r = await result;
    expect(r.endedBy, c.tail()).toBe('bridge');
    expect(performance.now() - tForce, 'the call ends at once, not at the drain timeout').toBeLessThan(2000);
    const exit = await waitExit(c, 5000);
    expect(exit, c.tail()).toMatchObject({ code: 0, signal: null });
    const logs = c.logs();
    expect(logs.find((l) => message(l) === 'second signal: ending every call now')).toMatchObject({ signal: 'SIGINT', liveCalls: 1 });
    expect(logs.find((l) => message(l) === 'call ended'), c.tail()).toMatchObject({ outcome: 'shutdown' });
  });

  it('logs the URLs to open and the commands to try when ready, and warns about a misspelt setting', async () => {
    const c = await start({ env: { MAX_CONCURENT_CALLS: '3' } });
    await waitHealthy(c);
    await waitFor('the ready line', () => c.logs().some((l) => String(l.msg).startsWith('playline ready')), 2000);
    const ready = c.logs().find((l) => String(l.msg).startsWith('playline ready'))!;
    expect(ready).toMatchObject({ url: c.url, docs: `${c.url}/docs`, metrics: `${c.url}/metrics` });
    expect(String(ready.msg)).toContain(`npm run call -- --url ${c.url}`);
    expect(String(ready.msg)).toContain(`npm run campaign -- examples/contacts.csv --url ${c.url}`);
    expect(c.logs().find((l) => l.variable === 'MAX_CONCURENT_CALLS')).toMatchObject({
      level: 40,
      suggestion: 'MAX_CONCURRENT_CALLS',
      msg: 'MAX_CONCURENT_CALLS is not a Playline setting and is ignored: did you mean MAX_CONCURRENT_CALLS?',
    });
    expect(c.logs().filter((l) => l.variable !== undefined), 'no warning for PATH, HOME or npm variables').toHaveLength(1);
  });

  it('stops with one line naming DATA_DIR, the OS error and the fix when DATA_DIR cannot be created, exit 1', async () => {
    const parent = mkdtempSync(join(tmpdir(), 'playline-data-'));
    removeAfterAll(parent);
    writeFileSync(join(parent, 'file'), 'not a directory');
    const dataDir = join(parent, 'file', 'data');
    const c = await start({ dataDir });
    const exit = await waitExit(c, 10_000);
    expect(exit.code, c.tail()).toBe(1);
    expect(c.stderr).toBe(`playline: cannot start: DATA_DIR ${dataDir} is not a directory, or a part of its path is a file (ENOTDIR: not a directory, mkdir '${dataDir}'): point DATA_DIR at a directory\n`);
    expect(c.stdout, 'nothing started before the data directory was checked').toBe('');
  });

  it('refuses a bad configuration: non-zero exit, a message naming the variable, nothing listening', async () => {
    const port = await freePort();
    for (const [name, value] of [
      ['PORT', 'abc'],
      ['LOG_LEVEL', 'loud'],
      ['DRAIN_TIMEOUT_S', '-5'],
    ] as const) {
      const c = await start({ port, env: { [name]: value } });
      const exit = await waitExit(c, 10_000);
      expect(exit.code, c.tail()).not.toBe(0);
      expect(exit.code).not.toBeNull();
      expect(c.stderr).toMatch(new RegExp(`configuration error: .*\\b${name}: "${value}" is not `));
      expect(await get(`http://127.0.0.1:${port}/healthz`)).toBeUndefined();
    }
  });
});

