/**
 * Which calls are recorded, and the recording settings' errors (each names the fix).
 */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.js';
import { LocalCallRecording, JOIN_GAP_MS } from '../src/recording/localRecording.js';
import { RecordingService } from '../src/recording/service.js';
import { openDb } from '../src/store/db.js';
import { SqliteCallStore } from '../src/store/calls.js';
import { startTestBridge, type TestBridge } from './helpers.js';
import { readStereoWav } from './recordingWav.js';

const dirs: string[] = [];
let tb: TestBridge | undefined;
afterEach(async () => {
  await tb?.close();
  tb = undefined;
  for (const d of dirs.splice(0)) rmSync(d, { recursive: true, force: true });
});
const tmp = (): string => {
  const d = mkdtempSync(join(tmpdir(), 'playline-rec-cfg-'));
  dirs.push(d);
  return d;
};
const configError = (env: Record<string, string>): string => {
  try {
    loadConfig(env);
  } catch (err) {
    if (err instanceof ConfigError) return err.message;
    throw err;
  }
  throw new Error('expected a ConfigError');
};

describe('recording settings', () => {
  it('defaults to no recording, every call recorded once a backend is set, files kept', () => {
    expect(loadConfig({}).recording).toMatchObject({ backend: 'off', byDefault: true, retentionDays: 0 });
    const c = loadConfig({ RECORDING: 'local', DATA_DIR: '/srv/playline', RECORDING_CONSENT_TEXT: '  This call is recorded.  ' });
    expect(c.recording).toEqual({ backend: 'local', byDefault: true, consentText: 'This call is recorded.', retentionDays: 0, dir: '/srv/playline/recordings' });
  });

  it('refuses a backend it does not know, and RECORDING=twilio without Twilio credentials, saying what to set', () => {
    expect(configError({ RECORDING: 'yes' })).toMatch(/^RECORDING: "yes" is not one of off, local, twilio/);
    expect(configError({ RECORDING: 'twilio' })).toMatch(/TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN.*RECORDING=local/);
    expect(configError({ RECORDING_RETENTION_DAYS: '-1' })).toMatch(/^RECORDING_RETENTION_DAYS: .*whole number/);
  });

  it('refuses record: true in ROUTES_FILE or AGENTS_FILE when RECORDING=off, and a record that is not a boolean', () => {
    const dir = tmp();
    const routes = join(dir, 'routes.json');
    writeFileSync(routes, JSON.stringify({ '+15550001111': { agentId: 'playai:a', record: true } }));
    expect(configError({ ROUTES_FILE: routes })).toMatch(/^RECORDING: required because ROUTES_FILE \(\+15550001111\) says record: true; set RECORDING=local/);
    const agents = join(dir, 'agents.json');
    writeFileSync(agents, JSON.stringify({ 'playai:a': { record: 'yes' } }));
    expect(configError({ AGENTS_FILE: agents, PLAYAI_API_KEY: 'k', PLAYAI_AGENT_ID: 'a' })).toMatch(/record.*true or false/);
  });
});

describe('which calls are recorded', () => {
  const service = (env: Record<string, string>, agentRecord?: boolean): RecordingService =>
    new RecordingService({ settings: loadConfig({ DATA_DIR: tmp(), ...env }).recording, calls: new SqliteCallStore(openDb(':memory:')), agentRecord: () => agentRecord, publicUrl: 'http://127.0.0.1', log: pino({ level: 'silent' }) });

  it('takes the call (API, campaign, route) over the agent, the agent over RECORDING_DEFAULT', () => {
    expect(service({ RECORDING: 'local' }).wanted({ agentId: 'playai:a' })).toBe(true);
    expect(service({ RECORDING: 'local', RECORDING_DEFAULT: 'off' }).wanted({ agentId: 'playai:a' })).toBe(false);
    expect(service({ RECORDING: 'local', RECORDING_DEFAULT: 'off' }, true).wanted({ agentId: 'playai:a' })).toBe(true);
    expect(service({ RECORDING: 'local' }, true).wanted({ agentId: 'playai:a', record: false })).toBe(false);
    expect(service({ RECORDING: 'local', RECORDING_DEFAULT: 'off' }, false).wanted({ agentId: 'playai:a', record: true })).toBe(true);
  });

  it('records nothing with RECORDING=off, and says the consent text only to recorded calls', () => {
    expect(service({}).wanted({ agentId: 'playai:a', record: true })).toBe(false);
    const s = service({ RECORDING: 'local', RECORDING_CONSENT_TEXT: 'Recorded.' });
    expect(s.consentFor({ agentId: 'playai:a' })).toBe('Recorded.');
    expect(s.consentFor({ agentId: 'playai:a', record: false })).toBeUndefined();
  });

  it('answers 400 to an API call asking to be recorded when RECORDING=off, naming the setting', async () => {
    tb = await startTestBridge({ env: { API_TOKEN: 'api-token-0123456789abcdef', DEFAULT_CALLER_ID: '+14155550100' } });
    const res = await fetch(`${tb.url}/v1/calls`, {
      method: 'POST',
      headers: { authorization: 'Bearer api-token-0123456789abcdef', 'content-type': 'application/json' },
      body: JSON.stringify({ to: '+14155550123', record: true }),
    });
    expect(res.status).toBe(400);
    expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(/RECORDING=local/);
  });

  it('stores an API call\'s record: false on its row, for its answer to use', async () => {
    tb = await startTestBridge({ env: { API_TOKEN: 'api-token-0123456789abcdef', DEFAULT_CALLER_ID: '+14155550100', RECORDING: 'local', DATA_DIR: tmp() } });
    const res = await fetch(`${tb.url}/v1/calls`, {
      method: 'POST',
      headers: { authorization: 'Bearer api-token-0123456789abcdef', 'content-type': 'application/json' },
      body: JSON.stringify({ to: '+14155550123', record: false }),
    });
    expect(res.status).toBe(201);
    const { id } = (await res.json()) as { id: string };
    expect((await tb.bridge.calls.get(id))?.record).toBe(false);
  });
});

describe('a call back from a transfer', () => {
  it('continues its recording in the same file after a short silence', async () => {
    const path = join(tmp(), 'call.wav');
    const log = pino({ level: 'silent' });
    const frame = Buffer.from(Buffer.alloc(160, 0x05).toString('base64'), 'latin1');
    const part = async (append: boolean, frames: number): Promise<void> => {
      let now = 0;
      const rec = new LocalCallRecording({ path, append, log, now: () => now });
      for (let i = 0; i < frames; i++) {
        now = i * 20;
        rec.callerAudio(frame, 0, frame.length, i * 20);
      }
      now = frames * 20;
      await rec.close();
    };
    await part(false, 50); // 1 s before the transfer
    await part(true, 25); // 0.5 s after it
    const wav = readStereoWav(path);
    const gap = (JOIN_GAP_MS * 8000) / 1000;
    expect(wav.left.length).toBe(8000 + gap + 4000);
    expect(wav.left.slice(0, 8000).every((v) => v < -1000)).toBe(true);
    expect(wav.left.slice(8000, 8000 + gap).every((v) => v === 0)).toBe(true);
    expect(wav.left.slice(8000 + gap).every((v) => v < -1000)).toBe(true);
  });
});
