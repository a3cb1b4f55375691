/**
 * The real process as users start it: `npm start` hands SIGTERM to the server and Ctrl-C in a
 * terminal drains instead of dropping calls; and a restart after `kill -9` in the middle of a
 * campaign dials nobody twice and forgets nobody.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { describe, expect, it } from 'vitest';
import { FakeTwilioRest } from '../src/testing/fakeTwilioRest.js';
import {
  freePort,
  get,
  isShutdownLine,
  killGroup,
  liveCall,
  message,
  processTable,
  start,
  useProcessHarness,
  waitExit,
  waitFor,
  waitHealthy,
  removeAfterAll,
} from './processHarness.js';

useProcessHarness();

describe('npm start', () => {
  it('passes SIGTERM to the server: the server drains and exits, then npm exits, and no server is left behind', async () => {
    const c = await start({ command: ['npm', 'start'] });
    // dist/ is fresh from beforeAll, so prestart has nothing to build; allow for it anyway.
    await waitHealthy(c, 60_000);

    // The server process is a descendant of npm (in npm's process group).
    const servers = processTable().filter((p) => p.pgid === c.pid && p.pid !== c.pid && /\bdist\/main\.js\b/.test(p.args) && !p.args.startsWith('sh '));
    expect(servers.length, `node dist/main.js under npm:\n${JSON.stringify(processTable().filter((p) => p.pgid === c.pid))}`).toBe(1);
    const server = servers[0]!;

    // SIGTERM to npm only, as `docker stop`, systemd or a terminal's kill would send it.
    const tTerm = performance.now();
    process.kill(c.pid, 'SIGTERM');
    const exit = await waitExit(c, 10_000);
    expect(exit.at - tTerm, 'npm exits within a few seconds').toBeLessThan(5000);

    // The server got the signal: it stops listening and its process is gone.
    await waitFor('the port to stop answering', async () => (await get(`${c.url}/healthz`, 300)) === undefined, 5000).catch(() => {
      throw new Error(`npm exited but node dist/main.js (pid ${server.pid}) still answers on ${c.url}: npm start did not pass SIGTERM to the server\n${c.tail()}`);
    });
    const alive = (pid: number) => {
      try {
        process.kill(pid, 0);
        return true;
      } catch {
        return false;
      }
    };
    await waitFor('the server process to exit', () => !alive(server.pid), 5000).catch(() => {
      throw new Error(`node dist/main.js (pid ${server.pid}) is still running after npm exited`);
    });
    const left = processTable().filter((p) => p.pgid === c.pid);
    expect(left, 'processes left from npm start').toEqual([]);
    expect(c.logs().find((l) => isShutdownLine(l)), `the server logged its drain\n${c.tail()}`).toMatchObject({ signal: 'SIGTERM' });
    expect(c.logs().find((l) => message(l) === 'stopped')).toBeDefined();
    expect(exit.code, c.tail()).toBe(0);
  });
});

describe('npm start in a terminal', () => {
  it('Ctrl-C (SIGINT to npm and node together, npm passing its copy on) drains the live call instead of ending it', async () => {
    const c = await start({ command: ['npm', 'start'], env: { DRAIN_TIMEOUT_S: '20', LOCAL_AGENT_MODE: 'echo' } });
    await waitHealthy(c, 60_000);
    const { result } = await liveCall(c, { audioMs: 3000 });
    // What a terminal does on Ctrl-C: SIGINT to every process of the foreground group.
    process.kill(-c.pid, 'SIGINT');
    const r = await result;
    expect(r.endedBy, c.tail()).toBe('caller');
    await waitExit(c, 10_000);
    const logs = c.logs();
    expect(logs.find((l) => isShutdownLine(l)), c.tail()).toMatchObject({ signal: 'SIGINT', liveCalls: 1 });
    expect(logs.find((l) => message(l) === 'second signal: ending every call now')).toBeUndefined();
    expect(logs.filter((l) => message(l) === 'call ended').map((l) => l.outcome)).toEqual(['caller_hangup']);
  });
});

describe('restart after kill -9 in the middle of a campaign', () => {
  it('dials nobody twice and forgets nobody', async () => {
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    // Creates are answered 500 ms late, so the crash also catches dials the carrier made but the bridge never heard back about.
    const rest = await FakeTwilioRest.start({ bridgeUrl: url, outcomeFor: () => 'answered', talkMs: 1500, ringMs: [100, 400], createResponseDelayMs: 500 });
    try {
      const dataDir = mkdtempSync(join(tmpdir(), 'playline-data-'));
      removeAfterAll(dataDir);
      const token = 'api-token-0123456789abcdef';
      const env = {
        TWILIO_ACCOUNT_SID: rest.accountSid,
        TWILIO_AUTH_TOKEN: rest.authToken,
        PUBLIC_URL: url,
        TWILIO_API_URL: rest.url,
        API_TOKEN: token,
        DEFAULT_CALLER_ID: '+14155550100',
        OUTBOUND_MAX_CPS: '10',
        MAX_EVENT_LOOP_DELAY_MS: '0',
        LOG_LEVEL: 'warn',
      };
      const auth = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
      const first = await start({ env, port, dataDir });
      await waitHealthy(first);
      const contacts = Array.from({ length: 60 }, (_, i) => ({ phone: `+1415555${String(5000 + i)}` }));
      const res = await fetch(`${url}/v1/campaigns`, {
        method: 'POST',
        headers: auth,
        body: JSON.stringify({ name: 'crash', settings: { callsPerSecond: 10, maxConcurrent: 20, retry: { maxAttempts: 1 } }, contacts, start: true }),
      });
      expect(res.status).toBe(201);
      const id = ((await res.json()) as { campaign: { id: string } }).campaign.id;
      // Mid-campaign: some contacts dialed, some in flight, most still pending.
      await waitFor('20 dials', () => rest.creates.length >= 20, 20_000);
      killGroup(first.pid);
      await waitExit(first, 5000);
      const dialsBeforeCrash = rest.creates.filter((c) => c.httpStatus === 201).length;

      const second = await start({ env: { ...env, LOG_LEVEL: 'info' }, port, dataDir });
      await waitHealthy(second);
      let campaign: { status: string; progress: { counts: { byState: Record<string, number>; byOutcome: Record<string, number> } } } | undefined;
      await waitFor(
        'the campaign to complete after the restart',
        async () => {
          const r = await fetch(`${url}/v1/campaigns/${id}`, { headers: auth });
          campaign = (await r.json()) as typeof campaign;
          return campaign?.status === 'completed';
        },
        60_000,
      ).catch((err: unknown) => {
        throw new Error(`${(err as Error).message}: ${JSON.stringify(campaign)}\n${second.tail()}`);
      });
      const dials = new Map<string, number>();
      for (const c of rest.creates) if (c.httpStatus === 201) dials.set(c.to, (dials.get(c.to) ?? 0) + 1);
      const twice = [...dials].filter(([, n]) => n > 1);
      expect(twice, 'numbers dialed more than once').toEqual([]);
      expect(dials.size).toBe(60);
      expect(campaign!.progress.counts.byState).toEqual({ pending: 0, dialing: 0, done: 60 });
      expect(campaign!.progress.counts.byOutcome).toEqual({ answered: 60 });
      const reconciled = second.logs().find((l) => l.msg === 'reconciled unfinished calls') as { attached?: number; voided?: number; finished?: number } | undefined;
      expect(reconciled?.attached ?? 0, 'claimed dials found at the carrier after the restart').toBeGreaterThan(0);
      process.stdout.write(
        `kill -9 restart: ${dialsBeforeCrash} dials before the crash (reconciled: ${JSON.stringify(reconciled)}), ${rest.creates.length} creates in all, 60 numbers, 0 dialed twice\n`,
      );
    } finally {
      await rest.close();
    }
  }, 120_000);
});

describe('DATABASE_URL', () => {
  it('a process whose DATABASE_URL does not answer stops at boot with a message naming DATABASE_URL, without its password', async () => {
    const c = await start({ env: { DATABASE_URL: `postgres://playline:s3cret-pw@127.0.0.1:${await freePort()}/playline` } });
    const exit = await waitExit(c, 20_000);
    expect(exit.code).toBe(1);
    expect(c.stderr).toMatch(/DATABASE_URL postgres:\/\/playline:\*\*\*@127\.0\.0\.1:\d+\/playline: cannot use the database/);
    expect(c.stderr + c.stdout).not.toContain('s3cret-pw');
  }, 30_000);
});
