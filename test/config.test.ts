import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../src/config.js';

const load = (env: Record<string, string>) => () => loadConfig(env);

describe('configuration', () => {
  it('runs in local mode with defaults when nothing is set', () => {
    const c = loadConfig({});
    expect(c.port).toBe(8080);
    expect(c.host).toBe('0.0.0.0');
    expect(c.localAgent).toBe(true);
    expect(c.twilio.authToken).toBeUndefined();
    expect(c.publicUrl).toBe('http://127.0.0.1:8080');
    expect(c.streamUrl).toBe('ws://127.0.0.1:8080/twilio/media-stream');
    expect(c.playai.wsUrl).toBe('wss://api.play.ai');
    expect(c.maxConcurrentCalls).toBe(50);
    expect(c.dataDir).toMatch(/data$/);
  });

  it('derives the wss:// stream URL from an https PUBLIC_URL', () => {
    const c = loadConfig({ PUBLIC_URL: 'https://voice.example.com/', TWILIO_AUTH_TOKEN: 't' });
    expect(c.publicUrl).toBe('https://voice.example.com');
    expect(c.streamUrl).toBe('wss://voice.example.com/twilio/media-stream');
  });

  it.each([
    [{ PORT: 'eighty' }, /^PORT:/],
    [{ PORT: '70000' }, /^PORT:/],
    [{ LOG_LEVEL: 'loud' }, /^LOG_LEVEL:/],
    [{ MAX_CONCURRENT_CALLS: '0' }, /^MAX_CONCURRENT_CALLS:/],
    [{ TWILIO_ACCOUNT_SID: 'nope' }, /^TWILIO_ACCOUNT_SID:/],
    [{ TWILIO_ACCOUNT_SID: 'AC' + 'a'.repeat(32) }, /^TWILIO_AUTH_TOKEN:/],
    [{ TWILIO_AUTH_TOKEN: 'secret' }, /^PUBLIC_URL:/],
    [{ PUBLIC_URL: 'voice.example.com' }, /^PUBLIC_URL:/],
    [{ PUBLIC_URL: 'https://voice.example.com/app' }, /^PUBLIC_URL:/],
    [{ PUBLIC_URL: 'ftp://voice.example.com' }, /^PUBLIC_URL:/],
    [{ PLAYAI_API_KEY: 'k' }, /^PLAYAI_AGENT_ID:/],
    [{ PLAYAI_WS_URL: 'https://api.play.ai' }, /^PLAYAI_WS_URL:/],
    [{ ROUTES_FILE: '/nonexistent/routes.json' }, /^ROUTES_FILE:/],
  ])('stops on %j with a message naming the variable', (env, pattern) => {
    expect(load(env)).toThrow(ConfigError);
    expect(load(env)).toThrow(pattern);
  });

  it('reads number routes from ROUTES_FILE', () => {
    const dir = mkdtempSync(join(tmpdir(), 'playline-'));
    const file = join(dir, 'routes.json');
    writeFileSync(file, JSON.stringify({ '+15551230001': { agentId: 'a1', prompt: 'p', customGreeting: 'g' } }));
    const c = loadConfig({ ROUTES_FILE: file, PLAYAI_API_KEY: 'k', PLAYAI_AGENT_ID: 'default' });
    expect(c.routes.get('+15551230001')).toEqual({ agentId: 'a1', prompt: 'p', customGreeting: 'g' });
    expect(c.localAgent).toBe(false);
  });

  it('rejects a routes file with a bad number or an unknown field, naming ROUTES_FILE', () => {
    const dir = mkdtempSync(join(tmpdir(), 'playline-'));
    const bad1 = join(dir, 'a.json');
    writeFileSync(bad1, JSON.stringify({ '5551230001': { agentId: 'a1' } }));
    expect(load({ ROUTES_FILE: bad1 })).toThrow(/^ROUTES_FILE:.*E\.164/);
    const bad2 = join(dir, 'b.json');
    writeFileSync(bad2, JSON.stringify({ '+15551230001': { agentId: 'a1', greting: 'typo' } }));
    expect(load({ ROUTES_FILE: bad2 })).toThrow(/^ROUTES_FILE:/);
    const bad3 = join(dir, 'c.json');
    writeFileSync(bad3, '{not json');
    expect(load({ ROUTES_FILE: bad3 })).toThrow(/^ROUTES_FILE:/);
  });

  it('treats empty values like unset ones (as left by a copied .env.example)', () => {
    const c = loadConfig({ PUBLIC_URL: '', TWILIO_AUTH_TOKEN: '', PLAYAI_API_KEY: '', PORT: '' });
    expect(c.localAgent).toBe(true);
    expect(c.port).toBe(8080);
  });
});
