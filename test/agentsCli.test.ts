/**
 * PlayAI agents through the REST API: `npm run agents -- list|show|stats`, the boot
 * check of configured agents, and the default agent's voice for prompts.
 */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import client from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { checkPlayaiAgents } from '../src/agent/playai/bootCheck.js';
import { run } from '../src/cli/agents.js';
import { loadConfig } from '../src/config.js';
import { FakeTtsServer } from '../src/sim/fakeTts.js';
import { FakePlayAiRest } from '../src/testing/fakePlayaiRest.js';
import { createPromptService } from '../src/tts/setup.js';
import { memIo } from './cliIo.js';
import { LogSink } from './helpers.js';

const SALES = { id: 'sales', displayName: 'Sales desk', voice: 's3://voices/sales/manifest.json', ttsModel: 'PlayDialog', greeting: 'Hi!', prompt: 'Sell.', visibility: 'private', phoneNumbers: [{ phoneNumber: 14155550100, country: 'US', locality: 'SF' }], actions: [], extraField: true };

const cleanup: Array<() => Promise<void>> = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

async function rest(): Promise<FakePlayAiRest> {
  const r = await FakePlayAiRest.start();
  cleanup.push(() => r.close());
  r.setAgent('sales', SALES);
  r.setStats('sales', { id: 'sales', numberOfConversations: 12, numberOfPhoneConversations: 5, numberOfSecondsTalked: 930 });
  return r;
}

const envFor = (r: FakePlayAiRest, extra: Record<string, string> = {}): Record<string, string> => ({
  PLAYAI_API_KEY: r.apiKey,
  PLAYAI_USER_ID: r.userId,
  PLAYAI_API_URL: r.url,
  PLAYAI_AGENT_ID: 'sales',
  DATA_DIR: mkdtempSync(join(tmpdir(), 'agents-')),
  ...extra,
});

describe('npm run agents', () => {
  it('list shows each configured PlayAI agent with its name, voice, model and where it is named', async () => {
    const r = await rest();
    const m = memIo({ env: envFor(r) });
    expect(await run(['list'], m.io)).toBe(0);
    expect(m.out.text).toMatch(/^AGENT\s+NAME\s+VOICE\s+MODEL\s+NAMED IN$/m);
    expect(m.out.text).toMatch(/sales\s+Sales desk\s+s3:\/\/voices\/sales\/manifest.json\s+PlayDialog\s+the default agent/);
    expect(r.requests.every((q) => q.authorization === `Bearer ${r.apiKey}` && q.userId === r.userId)).toBe(true);
  });

  it('show prints one agent, and exits 1 naming an agent the API does not know', async () => {
    const r = await rest();
    const m = memIo({ env: envFor(r) });
    expect(await run(['show', 'sales'], m.io)).toBe(0);
    expect(m.out.text).toMatch(/name:\s+Sales desk/);
    expect(m.out.text).toMatch(/phone numbers:\s+14155550100/);
    const missing = memIo({ env: envFor(r) });
    expect(await run(['show', 'nobody'], missing.io)).toBe(1);
    expect(missing.err.text).toMatch(/nobody: not found/);
  });

  it('stats prints conversations and time talked, as JSON with --json', async () => {
    const r = await rest();
    const m = memIo({ env: envFor(r) });
    expect(await run(['stats'], m.io)).toBe(0);
    expect(m.out.text).toMatch(/sales\s+12\s+5\s+15\.5 min/);
    const j = memIo({ env: envFor(r) });
    expect(await run(['stats', 'sales', '--json'], j.io)).toBe(0);
    expect(JSON.parse(j.out.text)).toEqual([{ agentId: 'sales', stats: { id: 'sales', numberOfConversations: 12, numberOfPhoneConversations: 5, numberOfSecondsTalked: 930 } }]);
  });

  it('without PLAYAI_USER_ID, or without a command, it says what is missing and exits 2', async () => {
    const r = await rest();
    const { PLAYAI_USER_ID: _drop, ...noUser } = envFor(r);
    const m = memIo({ env: noUser });
    expect(await run(['show', 'sales'], m.io)).toBe(2);
    expect(m.err.text).toMatch(/PLAYAI_USER_ID is not set/);
    const none = memIo({ env: envFor(r) });
    expect(await run([], none.io)).toBe(2);
    expect(none.err.text).toMatch(/a command is required: list, show or stats/);
    const help = memIo();
    expect(await run(['--help'], help.io)).toBe(0);
    expect(help.out.text).toMatch(/^Usage: npm run agents -- <command>/);
  });
});

describe('boot check of PlayAI agents', () => {
  it('finds configured agents, reports a missing one with where it is named, and only warns when the API is unreachable', async () => {
    const r = await rest();
    const logs = new LogSink();
    const log = pino({ level: 'debug' }, logs.stream);
    const ok = await checkPlayaiAgents(loadConfig(envFor(r)), log);
    expect(ok.map((c) => [c.agentId, c.result])).toEqual([['sales', 'ok']]);
    const missing = await checkPlayaiAgents(loadConfig(envFor(r, { PLAYAI_AGENT_ID: 'typo' })), log);
    expect(missing).toEqual([expect.objectContaining({ agentId: 'typo', result: 'missing', where: ['the default agent'] })]);
    const down = await checkPlayaiAgents(loadConfig(envFor(r, { PLAYAI_API_URL: 'http://127.0.0.1:1' })), log);
    expect(down.map((c) => c.result)).toEqual(['unreachable']);
    expect(logs.text()).toMatch(/cannot reach the PlayAI REST API/);
  });

  it('is skipped when PLAYAI_USER_ID is not set (REST not configured)', async () => {
    const r = await rest();
    const { PLAYAI_USER_ID: _drop, ...env } = envFor(r);
    expect(await checkPlayaiAgents(loadConfig(env), pino({ level: 'silent' }))).toEqual([]);
    expect(r.requests).toEqual([]);
  });
});

describe('the default agent voice for prompts', () => {
  it('without TTS_VOICE, prompts are synthesized in the voice the REST API gives the default PlayAI agent', async () => {
    const r = await rest();
    const tts = await FakeTtsServer.start({ apiKey: r.apiKey, userId: r.userId });
    cleanup.push(() => tts.close());
    const config = loadConfig(envFor(r, { PLAYAI_TTS_URL: tts.authUrl }));
    expect(config.tts.mode).toBe('playai');
    const prompts = await createPromptService(config, pino({ level: 'silent' }), new client.Registry());
    cleanup.push(() => prompts.close());
    expect(await prompts.promptAudio('busy')).toBeDefined();
    expect(tts.commands[0]?.voice).toBe(SALES.voice);
  });
});
