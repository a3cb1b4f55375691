import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig, misspeltSettings, SETTING_NAMES } from '../src/config.js';

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
    expect(c.routes.get('+15551230001')).toEqual({ agentId: 'playai:a1', prompt: 'p', customGreeting: 'g' });
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

  it.each([
    [{ PORT: 'abc' }, 'PORT: "abc" is not a whole number from 0 to 65535'],
    [{ PORT: '1.5' }, 'PORT: "1.5" is not a whole number from 0 to 65535'],
    [{ PORT: '0x10' }, 'PORT: "0x10" is not a whole number from 0 to 65535'],
    [{ DRAIN_TIMEOUT_S: '-5' }, 'DRAIN_TIMEOUT_S: "-5" is not a whole number from 0 to 86400'],
    [{ LOG_LEVEL: 'loud' }, 'LOG_LEVEL: "loud" is not one of fatal, error, warn, info, debug, trace, silent'],
    [{ LOG_FORMAT: 'text' }, 'LOG_FORMAT: "text" is not one of json, pretty'],
    [{ OVERFLOW_ACTION: 'drop' }, 'OVERFLOW_ACTION: "drop" is not one of say, dial'],
    [{ FALLBACK_NUMBER: '555-0100' }, 'FALLBACK_NUMBER: "555-0100" is not an E.164 number like +15551234567'],
    [{ DEFAULT_CALLER_ID: '0044207946' }, 'DEFAULT_CALLER_ID: "0044207946" is not an E.164 number like +15551234567'],
    [{ DEFAULT_COUNTRY: 'usa' }, 'DEFAULT_COUNTRY: "usa" is not a two-letter country code like US'],
    [{ OUTBOUND_MAX_CPS: '0' }, 'OUTBOUND_MAX_CPS: "0" is not a number of dials per second above 0'],
    [{ TWILIO_ACCOUNT_SID: 'nope' }, 'TWILIO_ACCOUNT_SID: "nope" is not an account SID (AC followed by 32 hex digits)'],
    [{ PLAYAI_AGENT_ID: 'a b' }, 'PLAYAI_AGENT_ID: "a b" is not an agent id'],
    [{ PUBLIC_URL: 'ftp://voice.example.com' }, 'PUBLIC_URL: "ftp://voice.example.com" is not a URL starting with https:// or http://'],
    [{ PUBLIC_URL: 'https://voice.example.com/app' }, 'PUBLIC_URL: "https://voice.example.com/app" is not an origin only'],
    [{ AGENT_LIMITS: 'sales=five' }, 'AGENT_LIMITS: "sales=five" is not a list of agent=max pairs'],
    [{ LOCAL_CARRIER_OUTCOMES: 'ok:1' }, 'LOCAL_CARRIER_OUTCOMES: "ok:1" is not a list of outcome:weight pairs'],
    [{ MAX_CONCURRENT_CALLS: '5', INBOUND_RESERVED: '5' }, 'INBOUND_RESERVED: "5" is not below MAX_CONCURRENT_CALLS (5)'],
  ])('echoes the bad value of %j and says what is expected', (env, message) => {
    expect(load(env)).toThrow(message);
  });

  it('reports every bad variable at once', () => {
    expect(load({ PORT: 'abc', LOG_LEVEL: 'loud' })).toThrow(/^PORT: "abc" is not .*; LOG_LEVEL: "loud" is not /);
  });

  it.each(['API_TOKEN', 'METRICS_TOKEN', 'WEBHOOK_SECRET'])('never echoes the value of the secret %s: it is shown as (hidden)', (name) => {
    const value = 'short-secret';
    let message = '';
    try {
      loadConfig({ [name]: value });
    } catch (err) {
      message = (err as Error).message;
    }
    expect(message).toBe(`${name}: (hidden) is not a token of at least 16 characters`);
    expect(message).not.toContain(value);
  });

  it('reads LOG_FORMAT and METRICS_TOKEN, both unset by default', () => {
    expect(loadConfig({}).logFormat).toBeUndefined();
    expect(loadConfig({}).metricsToken).toBeUndefined();
    const c = loadConfig({ LOG_FORMAT: 'json', METRICS_TOKEN: 'metrics-token-0123456789' });
    expect(c.logFormat).toBe('json');
    expect(c.metricsToken).toBe('metrics-token-0123456789');
  });
});

describe('misspeltSettings', () => {
  it.each([
    ['MAX_CONCURENT_CALLS', 'MAX_CONCURRENT_CALLS'],
    ['TWILIO_AUTH_TOKN', 'TWILIO_AUTH_TOKEN'],
    ['TWILLIO_AUTH_TOKEN', 'TWILIO_AUTH_TOKEN'],
    ['PLAY_AI_API_KEY', 'PLAYAI_API_KEY'],
    ['LOG_LEVL', 'LOG_LEVEL'],
    ['DATADIR', 'DATA_DIR'],
    ['PUBLIC_URI', 'PUBLIC_URL'],
    ['PROT', 'PORT'],
    ['port', 'PORT'],
    ['Drain_Timeout_S', 'DRAIN_TIMEOUT_S'],
  ])('suggests the setting %s was meant to be (%s)', (name, suggestion) => {
    expect(misspeltSettings([name])).toEqual([{ name, suggestion }]);
  });

  it('never reports a real setting or the variables of other programs', () => {
    const others = ['PATH', 'HOME', 'HOST', 'HOSTNAME', 'USER', 'SHELL', 'LANG', 'TERM', 'PWD', 'TZ', 'CI', 'TMPDIR', 'LOGNAME', 'EDITOR', 'DEBUG', 'HTTP_PROXY', 'no_proxy'];
    const node = ['NODE_ENV', 'NODE_OPTIONS', 'NODE_EXTRA_CA_CERTS', 'npm_config_cache', 'npm_lifecycle_event', 'npm_package_version'];
    expect(misspeltSettings([...SETTING_NAMES, ...others, ...node])).toEqual([]);
  });

  it('lists one entry per suspect name, in the order given', () => {
    expect(misspeltSettings(['PATH', 'MAX_CONCURENT_CALLS', 'HOME', 'API_TOKN']).map((m) => m.name)).toEqual(['MAX_CONCURENT_CALLS', 'API_TOKN']);
  });
});

describe('REDIS_URL (several processes as one bridge)', () => {
  it('leaves the fleet off without REDIS_URL, and reads its prefix and lease time with it', () => {
    expect(loadConfig({}).fleet).toBeUndefined();
    expect(loadConfig({ REDIS_URL: 'redis://127.0.0.1:6379' }).fleet).toEqual({ redisUrl: 'redis://127.0.0.1:6379', prefix: 'playline:', leaseMs: 15_000 });
    expect(loadConfig({ REDIS_URL: 'rediss://u:p@r.example:6380/2', FLEET_PREFIX: 'eu:', FLEET_LEASE_MS: '5000' }).fleet).toEqual({ redisUrl: 'rediss://u:p@r.example:6380/2', prefix: 'eu:', leaseMs: 5000 });
  });

  it('refuses a REDIS_URL that is not a redis:// URL, naming the fix and hiding the value (it may hold a password)', () => {
    expect(load({ REDIS_URL: 'http://pass@127.0.0.1:6379' })).toThrow(/^REDIS_URL:.*redis:\/\/127\.0\.0\.1:6379/);
    expect(load({ REDIS_URL: 'http://pass@127.0.0.1:6379' })).not.toThrow(/pass@/);
    expect(load({ REDIS_URL: 'redis://x', FLEET_LEASE_MS: '10' })).toThrow(/^FLEET_LEASE_MS:.*1000 to 600000/);
  });
});

describe('DATABASE_URL (records in Postgres)', () => {
  it('keeps the records in SQLite without DATABASE_URL, and takes a postgres:// or postgresql:// URL', () => {
    expect(loadConfig({}).database).toBeUndefined();
    expect(loadConfig({ DATABASE_URL: 'postgres://u:p@db.example:5432/playline' }).database).toEqual({ url: 'postgres://u:p@db.example:5432/playline' });
    expect(loadConfig({ DATABASE_URL: 'postgresql://db/playline?sslmode=require' }).database).toEqual({ url: 'postgresql://db/playline?sslmode=require' });
  });

  it('refuses a DATABASE_URL that is not a Postgres URL, naming DATABASE_URL and the fix, and hiding the value (it may hold a password)', () => {
    expect(load({ DATABASE_URL: 'mysql://u:s3cret@db/playline' })).toThrow(/^DATABASE_URL:.*postgres:\/\/user:password@host:5432\/playline/);
    expect(load({ DATABASE_URL: 'mysql://u:s3cret@db/playline' })).not.toThrow(/s3cret/);
  });
});
