/**
 * The web console in a real browser: Debian's chromium driven by playwright-core
 * (no browser download), with a fake microphone playing a WAV this file makes
 * (speech-like bursts, so the local agent's VAD hears the "user").
 *
 * One bridge in local mode (local agent, simulated carrier) with API_TOKEN set,
 * one browser, one page, the cases in order: sign in; a simulated phone call on
 * Live; a browser call (agent audio back, barge-in, the round trip printed);
 * a campaign from a CSV and its results.csv; the do-not-call list; a phone call
 * transferred from Live (a fake transfer carrier in place of Twilio's REST API);
 * every page at 360 and 1280 px, with screenshots under test/artifacts/console/.
 *
 * Chromium is CHROMIUM_PATH, else `chromium` on the PATH. Without it the file is
 * skipped with a message, unless PLAYLINE_REQUIRE_CHROMIUM=1 (as in .ci/run).
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, isAbsolute, join } from 'node:path';
import { Writable } from 'node:stream';
import pino from 'pino';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { z } from 'zod';
import { buildConsole } from '../scripts/build-console.mjs';
import { createBridge, type Bridge } from '../src/app.js';
import { mulawDecode } from '../src/audio/mulaw.js';
import { silence, speechLikeSignal } from '../src/audio/signal.js';
import { resamplePcm16, writeWavPcm16 } from '../src/audio/wav.js';
import { loadConfig } from '../src/config.js';
import { LocalAgentServer } from '../src/sim/localAgent.js';
import { placeCall, postStatusCallback, type FakeTwilioStream } from '../src/sim/twilioSim.js';
import { openDb } from '../src/store/db.js';
import type { TransferCarrier } from '../src/transfer/coordinator.js';

const ROOT = join(import.meta.dirname, '..');
const ARTIFACTS = join(ROOT, 'test', 'artifacts', 'console');
const TOKEN = 'browser-test-token-0123456789abcdef';

function findChromium(): string | undefined {
  const name = process.env.CHROMIUM_PATH ?? 'chromium';
  if (isAbsolute(name)) return existsSync(name) ? name : undefined;
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    if (dir !== '' && existsSync(join(dir, name))) return join(dir, name);
  }
  return undefined;
}

const CHROMIUM = findChromium();
const REQUIRE = process.env.PLAYLINE_REQUIRE_CHROMIUM === '1';
const SKIP_REASON =
  `skipped: no chromium (${process.env.CHROMIUM_PATH ?? 'chromium'}) on this machine. Install it (apt-get install chromium) or set CHROMIUM_PATH; ` +
  'PLAYLINE_REQUIRE_CHROMIUM=1 (as in .ci/run) makes a missing chromium a failure';
if (CHROMIUM === undefined && !REQUIRE) console.warn(`test/console.browser.test.ts: the browser tests are ${SKIP_REASON}.`);

/** The fake microphone: 2 s quiet, 1.2 s of speech-like sound, 4.8 s quiet (chromium loops it), at 48 kHz. */
function microphoneWav(): Buffer {
  const ulaw = new Uint8Array([...silence(2000), ...speechLikeSignal({ durationMs: 1200, talkMs: 1200, pauseMs: 0 }), ...silence(4800)]);
  return writeWavPcm16(resamplePcm16(mulawDecode(ulaw), 8000, 48_000), 48_000);
}

const callRecord = z.object({ id: z.string(), direction: z.string(), endedAt: z.string().nullable() });
const callList = z.object({ data: z.array(callRecord) });

/** The number routed with transfer targets, and the front desk it may be transferred to. */
const ROUTED = '+14155550998';
const FRONTDESK = '+14155550100';

/** Twilio's REST API as a transfer uses it: a redirect replaces the call's TwiML and ends its media stream. */
class FakeTransferCarrier implements TransferCarrier {
  readonly redirects: Array<{ callSid: string; twiml: string }> = [];
  readonly streams = new Map<string, FakeTwilioStream>();

  async redirect(callSid: string, twiml: string): Promise<boolean> {
    this.redirects.push({ callSid, twiml });
    const s = this.streams.get(callSid);
    if (s !== undefined) setTimeout(() => s.sendStop(), 5);
    return true;
  }

  async createCall(): Promise<string | undefined> {
    return `CA${'f'.repeat(32)}`;
  }

  async hangup(): Promise<boolean> {
    return true;
  }
}

const quiet = pino({ level: 'silent' }, new Writable({ write: (_c, _e, cb) => cb() }));

describe.runIf(CHROMIUM !== undefined || REQUIRE)(`web console in chromium${CHROMIUM === undefined ? ` (${SKIP_REASON})` : ''}`, () => {
  let tmp: string;
  let agent: LocalAgentServer;
  let bridge: Bridge;
  let url: string;
  let browser: Browser;
  let page: Page;
  const problems: string[] = [];
  let webCallId: string | undefined;
  let campaignId: string | undefined;
  let transferredCallId: string | undefined;
  const carrier = new FakeTransferCarrier();

  beforeAll(async () => {
    if (CHROMIUM === undefined) {
      throw new Error(
        `PLAYLINE_REQUIRE_CHROMIUM=1 is set, but there is no chromium (${process.env.CHROMIUM_PATH ?? 'chromium'}): ` +
          'run `apt-get install chromium` (Debian; .ci/run does), or set CHROMIUM_PATH to a Chromium binary.',
      );
    }
    tmp = mkdtempSync(join(tmpdir(), 'playline-browser-'));
    mkdirSync(ARTIFACTS, { recursive: true });
    const built = await buildConsole({ outDir: join(tmp, 'console'), log: () => undefined });
    const wav = join(tmp, 'microphone.wav');
    writeFileSync(wav, microphoneWav());
    const routes = join(tmp, 'routes.json');
    writeFileSync(routes, JSON.stringify({ [ROUTED]: { agentId: 'playai:local-echo', transferTargets: { frontdesk: { to: FRONTDESK, description: 'the front desk' }, billing: '+14155550101' }, dtmf: { '0': { transfer: 'frontdesk' } } } }));
    const config = loadConfig({
      ROUTES_FILE: routes,
      PORT: '0',
      HOST: '127.0.0.1',
      MAX_EVENT_LOOP_DELAY_MS: '0',
      API_TOKEN: TOKEN,
      LOCAL_CARRIER_TALK_S: '1',
      LOCAL_CARRIER_OUTCOMES: 'answered:100',
    });
    agent = await LocalAgentServer.start({ mode: 'echo-test' });
    bridge = await createBridge(config, quiet, { agentBaseUrl: agent.url, db: openDb(':memory:'), consoleDir: built.outDir, probeAgents: false, transferCarrier: carrier });
    url = await bridge.app.listen({ port: 0, host: '127.0.0.1' });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--use-fake-ui-for-media-stream',
        '--use-fake-device-for-media-stream',
        `--use-file-for-fake-audio-capture=${wav}`,
        '--autoplay-policy=no-user-gesture-required',
        ...(process.getuid?.() === 0 ? ['--no-sandbox'] : []),
      ],
    });
    page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
    page.on('pageerror', (err) => problems.push(`page error: ${err.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) problems.push(`console error: ${m.text()}`);
      if (/Content Security Policy/i.test(m.text())) problems.push(`CSP: ${m.text()}`);
    });
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await bridge?.app.close();
    await agent?.close();
    if (tmp !== undefined) rmSync(tmp, { recursive: true, force: true });
  });

  /** The number a `data-stat` cell of the Talk page shows. */
  const stat = async (name: string): Promise<number> => Number.parseFloat((await page.locator(`[data-stat="${name}"]`).textContent()) ?? 'NaN');
  const waitFor = async (what: string, check: () => Promise<boolean>, timeoutMs: number): Promise<void> => {
    const deadline = Date.now() + timeoutMs;
    while (!(await check())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  };

  it('asks for the API token, refuses a wrong one, and signs in with the right one kept out of the URL', async () => {
    await page.goto(`${url}/live`);
    const token = page.getByLabel('API token');
    await token.fill('not-the-token');
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByText('That token was refused').waitFor({ timeout: 5000 });
    // From the keyboard: Enter submits.
    await token.fill(TOKEN);
    await token.press('Enter');
    await page.getByRole('heading', { name: 'Live calls' }).waitFor({ timeout: 5000 });
    expect(page.url()).not.toContain(TOKEN);
    expect(await page.evaluate('Object.values(sessionStorage)')).toContain(TOKEN);
    expect(await page.evaluate('Object.values(localStorage)')).not.toContain(TOKEN);
    // The event stream is up (the header's indicator).
    await page.locator('.stream.s-live').waitFor({ timeout: 5000 });
  });

  it('shows a simulated phone call on Live with its live transcript, and drops it when the call ends', async () => {
    await page.goto(`${url}/live`);
    await page.getByRole('heading', { name: 'Live calls' }).waitFor();
    const speech = speechLikeSignal({ durationMs: 1200, talkMs: 1200, pauseMs: 0 });
    const call = placeCall({ bridgeUrl: url, audio: new Uint8Array([...silence(1000), ...speech]), trailingMs: 2500, params: { From: '+14155550123', To: '+14155550999' } });
    const card = page.locator('.live-call').filter({ hasText: '+14155550123' });
    await card.waitFor({ timeout: 5000 });
    expect(await card.textContent()).toContain('inbound');
    // The greeting's words, then the caller's turn, as they happen.
    await card.locator('.turn.agent').first().waitFor({ timeout: 6000 });
    await card.locator('.turn.user').first().waitFor({ timeout: 8000 });
    const result = await call;
    expect(result.endedBy).toBe('caller');
    await card.waitFor({ state: 'detached', timeout: 5000 });
  }, 20_000);

  it('talks to the local agent from the browser: agent audio plays without underruns, a barge-in clears it, the round trip is measured, and End call on Live ends it', async () => {
    await page.goto(`${url}/talk`);
    await page.getByRole('heading', { name: 'Talk to an agent' }).waitFor();
    await page.getByRole('button', { name: 'Call', exact: true }).click();
    await page.locator('.call-state[data-state="live"]').waitFor({ timeout: 8000 });
    await waitFor('agent audio', async () => (await stat('framesReceived')) > 0, 5000);
    // The fake microphone speaks 2 s in, over the greeting: the agent hears it, the bridge clears playback.
    await waitFor('a barge-in clear', async () => (await stat('clears')) >= 1, 8000);
    const clearedMs = Number(await page.locator('[data-stat="clears"]').getAttribute('data-cleared-ms'));
    expect(clearedMs, 'agent audio was queued when the clear came, and was dropped').toBeGreaterThan(0);
    // The agent plays back what it heard: the response time is measured from the end of the utterance.
    await waitFor('a reply after the utterance', async () => ((await page.locator('[data-stat="responseMs"]').getAttribute('data-values')) ?? '') !== '', 8000);
    await waitFor('the reply playing', async () => (await stat('bufferedMs')) > 0 || (await stat('marksEchoed')) > 0, 3000);
    await new Promise((r) => setTimeout(r, 1000));
    expect(await stat('underruns')).toBe(0);
    expect(await stat('framesSent')).toBeGreaterThan(100);
    expect(await stat('marksEchoed')).toBeGreaterThan(0);
    const rtt = ((await page.locator('[data-stat="responseMs"]').getAttribute('data-values')) ?? '').split(',').map(Number);
    const firstAudio = await stat('firstAudioMs');
    console.info(
      `browser call against the local agent: response time (end of the user's speech, detected in the page → first agent audio received) ${rtt.join(', ')} ms, ` +
        `of which 700 ms is the local agent's end-of-speech wait (EnergyVad endMs); first agent audio ${firstAudio} ms after the stream started`,
    );
    expect(firstAudio).toBeGreaterThan(0);
    expect(rtt[0]).toBeGreaterThan(0);
    expect(rtt[0]).toBeLessThan(3000);
    // The call is a web call on the record, and shows on Live while it lasts.
    const calls = callList.parse(await (await fetch(`${url}/v1/calls?direction=web`, { headers: { authorization: `Bearer ${TOKEN}` } })).json());
    expect(calls.data.length).toBe(1);
    expect(calls.data[0]?.direction).toBe('web');
    webCallId = calls.data[0]?.id;
    // The call goes on while another page is open (links, not reloads), shows on Live, and Live's End call ends it.
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Live', exact: true }).click();
    const card = page.locator('.live-call').filter({ hasText: 'Browser' });
    await card.waitFor({ timeout: 5000 });
    expect(await card.textContent()).toContain('web');
    await card.getByRole('button', { name: 'End call' }).click();
    await card.waitFor({ state: 'detached', timeout: 5000 });
    await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: /^Talk/ }).click();
    await page.locator('.call-state[data-state="ended"]').waitFor({ timeout: 5000 });
    await waitFor(
      'the web call to end',
      async () => callRecord.parse(await (await fetch(`${url}/v1/calls/${webCallId}`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()).endedAt !== null,
      5000,
    );
  }, 30_000);

  it('creates a campaign from a CSV upload, shows the import report with line numbers, and its progress bar reaches 100%', async () => {
    await page.goto(`${url}/campaigns`);
    await page.getByRole('heading', { name: 'Campaigns', exact: true }).waitFor();
    const csv = ['phone,name', '+14155552001,Ada', '+14155552002,Grace', 'not-a-number,Bad', '+14155552003,Linus', '+14155552004,Barbara'].join('\n');
    await page.getByLabel('Name').fill('Browser test campaign');
    await page.getByLabel('Contacts (CSV)').setInputFiles({ name: 'contacts.csv', mimeType: 'text/csv', buffer: Buffer.from(csv) });
    await page.getByLabel('Calls per second').fill('10');
    await page.getByLabel('Max concurrent calls').fill('4');
    await page.getByRole('button', { name: 'Upload and check' }).click();
    const summary = page.locator('[data-field="import-summary"]');
    await summary.waitFor({ timeout: 5000 });
    expect(await summary.textContent()).toMatch(/5 rows read, 4 added, 1 with errors/);
    const errorRow = page.locator('.report table tbody tr').first();
    expect((await errorRow.locator('td').first().textContent())?.trim()).toBe('4');
    await page.getByRole('button', { name: 'Start dialing' }).click();
    const card = page.locator('.campaign').filter({ hasText: 'Browser test campaign' });
    await card.waitFor({ timeout: 5000 });
    campaignId = (await card.getAttribute('data-campaign-id')) ?? undefined;
    await card.locator('progress[data-percent="100"]').waitFor({ timeout: 25_000 });
    expect(await card.locator('.progress-text').textContent()).toContain('4/4 done');
    // Its page: the contacts, and results.csv downloaded with the token (fetched, then saved from a blob).
    await card.getByRole('link', { name: 'Browser test campaign' }).click();
    await page.getByRole('heading', { name: 'Browser test campaign' }).waitFor();
    await page.locator('table tbody tr').nth(3).waitFor({ timeout: 5000 });
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Download results.csv' }).click()]);
    expect(download.suggestedFilename()).toBe(`${campaignId}-results.csv`);
    const saved = join(tmp, 'results.csv');
    await download.saveAs(saved);
    const rows = readFileSync(saved, 'utf8').trim().split('\n');
    expect(rows[0]).toMatch(/^line,phone,state,outcome/);
    expect(rows.length).toBe(5);
  }, 35_000);

  it('adds a number to the do-not-call list on Setup and removes it again', async () => {
    await page.goto(`${url}/setup`);
    await page.getByRole('heading', { name: 'Setup', exact: true }).waitFor();
    await page.getByLabel('Number', { exact: true }).fill('+14155550777');
    await page.getByLabel('Reason (optional)').fill('asked not to be called');
    await page.getByRole('button', { name: 'Add', exact: true }).click();
    await page.getByText('+14155550777 added.').waitFor({ timeout: 3000 });
    await page.locator('.dnc-list').getByText('+14155550777').waitFor({ timeout: 3000 });
    await page.getByRole('button', { name: 'Remove +14155550777' }).click();
    await page.getByText('+14155550777 removed.').waitFor({ timeout: 3000 });
    const list = z.object({ data: z.array(z.object({ phone: z.string() })) });
    expect(list.parse(await (await fetch(`${url}/v1/dnc`, { headers: { authorization: `Bearer ${TOKEN}` } })).json()).data).toEqual([]);
  });

  it('transfers a phone call from Live: the operator picks the target, presses Transfer, sees it dialing, and the carrier got the <Dial> to the target', async () => {
    await page.goto(`${url}/live`);
    await page.getByRole('heading', { name: 'Live calls' }).waitFor();
    const caller = '+14155550124';
    const callSid = `CA${'7'.repeat(32)}`;
    const call = placeCall({
      bridgeUrl: url,
      audio: silence(8000),
      statusCallback: false,
      params: { CallSid: callSid, From: caller, To: ROUTED },
      onStream: (s) => carrier.streams.set(callSid, s),
    });
    const card = page.locator('.live-call').filter({ hasText: caller });
    await card.locator('.b-live').waitFor({ timeout: 5000 });
    transferredCallId = (await card.getAttribute('data-call-id')) ?? undefined;
    // The form, from the keyboard: Transfer… opens it with the target list focused.
    await card.getByRole('button', { name: 'Transfer…' }).click();
    const select = card.getByLabel('Transfer to');
    const selectId = await select.getAttribute('id');
    await waitFor('focus on the target list', async () => (await page.evaluate("document.activeElement?.getAttribute('id') ?? ''")) === selectId, 2000);
    expect(await select.locator('option').allTextContents()).toEqual([`frontdesk · ${FRONTDESK} (the front desk)`, 'billing · +14155550101', 'Another number…']);
    // A number that is not one: the server's message, and the form stays open.
    await select.selectOption({ label: 'Another number…' });
    await card.getByLabel('Number or SIP URI').fill('12');
    await card.getByRole('button', { name: 'Transfer', exact: true }).click();
    const refused = card.getByRole('alert');
    await refused.waitFor({ timeout: 3000 });
    expect(await refused.textContent()).toMatch(/^Could not transfer: .*phone number/);
    expect(carrier.redirects).toEqual([]);
    await select.selectOption('frontdesk');
    // Usable on a phone: the open form fits 360 px.
    await page.setViewportSize({ width: 360, height: 740 });
    expect(await page.evaluate('document.documentElement.scrollWidth - window.innerWidth'), 'the transfer form at 360 px').toBeLessThanOrEqual(0);
    await page.screenshot({ path: join(ARTIFACTS, 'live-transfer-360.png'), fullPage: true });
    await page.setViewportSize({ width: 1280, height: 800 });
    await card.getByRole('button', { name: 'Transfer', exact: true }).click();
    // Twilio ends the media stream as it dials: the call leaves the cards for the "Handed to a person" list,
    // where its steps go on live.
    const handed = page.locator('.handed li').filter({ hasText: caller });
    await handed.locator('.transfer-steps li[data-step="dialing"]').waitFor({ timeout: 5000 });
    expect(await handed.locator('.transfer-steps').textContent()).toBe('Transfer to frontdesk (cold):RequestedDialing…');
    expect(await card.count()).toBe(0);
    // The carrier was asked to dial the front desk (only a declared target's number).
    expect(carrier.redirects.map((r) => r.callSid)).toEqual([callSid]);
    expect(carrier.redirects[0]?.twiml).toContain(`>${FRONTDESK}</Number>`);
    // The front desk answers (the person's status callback), then hangs up (the <Dial> action): each step shows as it comes.
    const twiml = carrier.redirects[0]?.twiml ?? '';
    const pathOf = (re: RegExp): string => new URL((re.exec(twiml)?.[1] ?? '').replaceAll('&amp;', '&')).pathname;
    await postStatusCallback({ bridgeUrl: url, path: pathOf(/statusCallback="([^"]+)"/), params: { CallSid: `CA${'8'.repeat(32)}`, CallStatus: 'in-progress' } });
    await handed.locator('.transfer-steps li[data-step="answered"]').waitFor({ timeout: 3000 });
    await page.screenshot({ path: join(ARTIFACTS, 'live-transfer-1280.png'), fullPage: true });
    await postStatusCallback({ bridgeUrl: url, path: pathOf(/<Dial action="([^"]+)"/), params: { CallSid: callSid, CallStatus: 'in-progress', DialCallStatus: 'completed', DialCallDuration: '8' } });
    await handed.locator('.transfer-steps li[data-step="completed"]').waitFor({ timeout: 3000 });
    // The call ends: it leaves Live.
    await call;
    await postStatusCallback({ bridgeUrl: url, params: { CallSid: callSid, CallStatus: 'completed', CallDuration: '9', From: caller, To: ROUTED } });
    await handed.waitFor({ state: 'detached', timeout: 5000 });
  }, 20_000);

  it('renders every page at 360 and 1280 px wide without horizontal overflow (screenshots in test/artifacts/console/)', async () => {
    const pages: Array<[string, string]> = [
      ['live', '/live'],
      ['calls', '/calls'],
      ['call', `/calls/${webCallId ?? 'unknown'}`],
      ['call-transfer', `/calls/${transferredCallId ?? 'unknown'}`],
      ['campaigns', '/campaigns'],
      ['campaign', `/campaigns/${campaignId ?? 'unknown'}`],
      ['setup', '/setup'],
      ['talk', '/talk'],
    ];
    for (const width of [360, 1280]) {
      await page.setViewportSize({ width, height: width === 360 ? 740 : 800 });
      for (const [name, path] of pages) {
        await page.goto(`${url}${path}`);
        await page.locator('main h1').first().waitFor();
        // The page's data (the event stream keeps the network busy, so no "network idle" here).
        await page.waitForTimeout(300);
        const overflow = await page.evaluate('document.documentElement.scrollWidth - window.innerWidth');
        expect(overflow, `${name} at ${width} px is wider than the window`).toBeLessThanOrEqual(0);
        await page.screenshot({ path: join(ARTIFACTS, `${name}-${width}.png`), fullPage: true });
        // Every form control has a label (a <label for>, or aria-label).
        const unlabelled = await page.evaluate(
          "[...document.querySelectorAll('input, select, textarea')].filter((e) => e.labels.length === 0 && !e.getAttribute('aria-label')).map((e) => e.id || e.outerHTML.slice(0, 60))",
        );
        expect(unlabelled, `${name}: controls without a label`).toEqual([]);
      }
    }
    // The keyboard reaches the navigation, and Enter on a link opens its page.
    await page.goto(`${url}/live`);
    await page.getByRole('heading', { name: 'Live calls' }).waitFor();
    const focused: string[] = [];
    for (let i = 0; i < 8 && !focused.includes('Setup'); i++) {
      await page.keyboard.press('Tab');
      focused.push(String(await page.evaluate('document.activeElement?.textContent?.trim() ?? ""')));
    }
    expect(focused).toContain('Setup');
    await page.keyboard.press('Enter');
    await page.getByRole('heading', { name: 'Setup', exact: true }).waitFor({ timeout: 3000 });
    expect(new URL(page.url()).pathname).toBe('/setup');
    expect(problems).toEqual([]);
  }, 30_000);
});
