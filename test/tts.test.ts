/**
 * The TTS port's PlayAI adapter against the protocol-faithful fake TTS service,
 * the prompt cache, and the prompt service's signed URLs.
 */
import { existsSync, mkdtempSync, readdirSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pino from 'pino';
import client from 'prom-client';
import { afterEach, describe, expect, it } from 'vitest';
import { WebSocket } from 'ws';
import { mulawDecode } from '../src/audio/mulaw.js';
import { readWav, writeWavPcm16 } from '../src/audio/wav.js';
import { FakeTtsServer, fakeTtsAudio } from '../src/sim/fakeTts.js';
import { ConfigError, loadConfig } from '../src/config.js';
import { TtsCache } from '../src/tts/cache.js';
import { parseTtsAuth } from '../src/tts/playai/auth.js';
import { toTelephoneAudio } from '../src/tts/playai/audio.js';
import { PlayAiTts, type PlayAiTtsOptions } from '../src/tts/playai/adapter.js';
import { TtsError } from '../src/tts/port.js';
import { PromptService } from '../src/tts/prompts.js';
import { mulawWav } from '../src/tts/wav.js';
import { LogSink } from './helpers.js';

const VOICE = 's3://voices/test/manifest.json';
const cleanup: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const fn of cleanup.splice(0).reverse()) await fn();
});

async function fake(opts: Parameters<typeof FakeTtsServer.start>[0] = {}): Promise<FakeTtsServer> {
  const f = await FakeTtsServer.start(opts);
  cleanup.push(() => f.close());
  return f;
}

function adapter(f: FakeTtsServer, extra: Partial<PlayAiTtsOptions> = {}): { tts: PlayAiTts; logs: LogSink } {
  const logs = new LogSink();
  const tts = new PlayAiTts({ authUrl: f.authUrl, apiKey: f.apiKey, userId: f.userId, model: 'Play3.0-mini', log: pino({ level: 'debug' }, logs.stream), ...extra });
  cleanup.push(() => tts.close());
  return { tts, logs };
}

async function rejection(p: Promise<unknown>): Promise<TtsError> {
  try {
    await p;
  } catch (err) {
    if (err instanceof TtsError) return err;
    throw err;
  }
  throw new Error('expected a rejection');
}

describe('PlayAI TTS adapter against the fake service', () => {
  it('authenticates with Bearer key and X-User-Id, asks for mu-law 8000 and returns the audio as sent', async () => {
    const f = await fake();
    const { tts } = adapter(f);
    const audio = await tts.synthesize('Hello there', VOICE);
    expect(audio.equals(fakeTtsAudio('Hello there', VOICE))).toBe(true);
    expect(f.authRequests).toBe(1);
    expect(f.commands).toEqual([expect.objectContaining({ text: 'Hello there', voice: VOICE, output_format: 'mulaw', sample_rate: 8000, model: 'Play3.0-mini' })]);
    expect(f.commands[0]?.request_id).toMatch(/^[0-9a-f-]{36}$/);
  });

  it('a wrong API key is refused at auth, and the error names the settings to check', async () => {
    const f = await fake();
    const { tts } = adapter(f, { apiKey: 'wrong' });
    const err = await rejection(tts.synthesize('Hello', VOICE));
    expect(err.kind).toBe('auth');
    expect(err.message).toMatch(/PLAYAI_API_KEY and PLAYAI_USER_ID/);
    expect(f.connections).toBe(0);
  });

  it('a model the account has no socket for fails naming the models there are', async () => {
    const f = await fake({ models: ['PlayDialog'] });
    const { tts } = adapter(f);
    const err = await rejection(tts.synthesize('Hello', VOICE));
    expect(err.kind).toBe('protocol');
    expect(err.message).toMatch(/TTS_MODEL.*|PlayDialog/);
  });

  it('commands sent together share one socket and are answered in order', async () => {
    const f = await fake({ chunkBytes: 500 });
    const { tts } = adapter(f);
    const texts = ['The first prompt, rather long to make it span many frames.', 'Second.', 'And a third one.'];
    const out = await Promise.all(texts.map((t) => tts.synthesize(t, VOICE)));
    texts.forEach((t, i) => expect(out[i]?.equals(fakeTtsAudio(t, VOICE)), t).toBe(true));
    expect(f.connections).toBe(1);
    expect(f.authRequests).toBe(1);
    expect(f.commands.map((c) => c.text)).toEqual(texts);
  });

  it('renews the socket URL before it expires: a new auth and a new socket, the old socket closed', async () => {
    let clock = Date.now();
    const f = await fake({ now: () => clock });
    const { tts } = adapter(f, { now: () => clock, reauthMarginMs: 60_000 });
    await tts.synthesize('Before', VOICE);
    expect([f.authRequests, f.connections]).toEqual([1, 1]);
    // 59 min 30 s later the URL (1 h) is inside the renewal margin.
    clock += 59.5 * 60_000;
    const audio = await tts.synthesize('After', VOICE);
    expect(audio.equals(fakeTtsAudio('After', VOICE))).toBe(true);
    expect([f.authRequests, f.connections]).toEqual([2, 2]);
    await expect.poll(() => f.openSockets).toBe(1);
  });

  it('a socket URL the service refuses (expired early) is renewed once and the prompt still comes', async () => {
    const f = await fake();
    const { tts, logs } = adapter(f, { idleMs: 20 });
    await tts.synthesize('One', VOICE);
    await expect.poll(() => f.openSockets).toBe(0); // idle socket closed
    f.expireTokens();
    const audio = await tts.synthesize('Two', VOICE);
    expect(audio.equals(fakeTtsAudio('Two', VOICE))).toBe(true);
    expect(f.authRequests).toBe(2);
    expect(logs.text()).toMatch(/socket handshake was refused/);
  });

  it('a socket dropped in the middle of an answer fails that prompt as dropped; the next prompt opens a new socket', async () => {
    const f = await fake({ chunkBytes: 400 });
    const { tts } = adapter(f);
    f.dropNextAnswer(2);
    const err = await rejection(tts.synthesize('This answer will be cut off half way through', VOICE));
    expect(err.kind).toBe('dropped');
    const audio = await tts.synthesize('Next', VOICE);
    expect(audio.equals(fakeTtsAudio('Next', VOICE))).toBe(true);
    expect(f.connections).toBe(2);
  });

  it('commands not answered yet when the socket drops are sent again on a new socket', async () => {
    const f = await fake({ chunkBytes: 400 });
    const { tts } = adapter(f);
    f.dropNextAnswer(1);
    const [first, second] = await Promise.allSettled([tts.synthesize('The first one is cut off mid answer', VOICE), tts.synthesize('The second is retried', VOICE)]);
    expect(first.status).toBe('rejected');
    expect(second.status === 'fulfilled' && second.value.equals(fakeTtsAudio('The second is retried', VOICE))).toBe(true);
    expect(f.commands.map((c) => c.text)).toEqual(['The first one is cut off mid answer', 'The second is retried', 'The second is retried']);
  });

  it('a service that does not answer in time fails the prompt as a timeout and ends the socket', async () => {
    const f = await fake();
    const { tts } = adapter(f, { requestTimeoutMs: 150 });
    f.stall(true);
    const err = await rejection(tts.synthesize('Stuck', VOICE));
    expect(err.kind).toBe('timeout');
    await expect.poll(() => f.openSockets).toBe(0);
    f.stall(false);
    expect((await tts.synthesize('Unstuck', VOICE)).equals(fakeTtsAudio('Unstuck', VOICE))).toBe(true);
  });

  it('an error answer fails that command only; later commands on the socket still get their audio', async () => {
    const f = await fake();
    const { tts } = adapter(f);
    // The fake refuses a voice longer than 1000 characters, like a bad command.
    const [bad, good] = await Promise.allSettled([tts.synthesize('Bad voice', 'x'.repeat(1001)), tts.synthesize('Good', VOICE)]);
    expect(bad.status === 'rejected' && bad.reason instanceof TtsError && bad.reason.kind).toBe('service');
    expect(good.status === 'fulfilled' && good.value.equals(fakeTtsAudio('Good', VOICE))).toBe(true);
    expect(f.connections).toBe(1);
  });

  it('close rejects what is pending and leaves no socket open', async () => {
    const f = await fake();
    const { tts } = adapter(f);
    f.stall(true);
    const p = tts.synthesize('Pending', VOICE);
    await expect.poll(() => f.commands.length + f.openSockets).toBeGreaterThan(0);
    await tts.close();
    expect((await rejection(p)).kind).toBe('unavailable');
    await expect.poll(() => f.openSockets).toBe(0);
  });
});

describe('the fake TTS service is strict where the real one is', () => {
  async function socketUrl(f: FakeTtsServer): Promise<string> {
    const res = await fetch(f.authUrl, { method: 'POST', headers: { authorization: `Bearer ${f.apiKey}`, 'x-user-id': f.userId } });
    const body: unknown = await res.json();
    const auth = parseTtsAuth(body, Date.now());
    const url = auth?.urls.get('Play3.0-mini');
    if (url === undefined) throw new Error('no url');
    return url;
  }

  it('refuses auth without the right user id', async () => {
    const f = await fake();
    const res = await fetch(f.authUrl, { method: 'POST', headers: { authorization: `Bearer ${f.apiKey}`, 'x-user-id': 'someone-else' } });
    expect(res.status).toBe(401);
  });

  it('answers a command without voice with an error carrying its request_id, and closes on a frame that is not JSON', async () => {
    const f = await fake();
    const ws = new WebSocket(await socketUrl(f));
    cleanup.push(() => ws.terminate());
    await new Promise((r) => ws.once('open', r));
    const first = new Promise<string>((r) => ws.once('message', (d) => r(String(d))));
    ws.send(JSON.stringify({ text: 'hi', request_id: 'r1' }));
    expect(JSON.parse(await first)).toEqual({ error: expect.stringMatching(/voice/), request_id: 'r1' });
    const closed = new Promise<number>((r) => ws.once('close', (code) => r(code)));
    ws.send('not json');
    expect(await closed).toBe(1003);
  });

  it('refuses the socket URL once it expired', async () => {
    const f = await fake();
    const url = await socketUrl(f);
    f.expireTokens();
    const ws = new WebSocket(url);
    ws.on('error', () => undefined);
    const status = await new Promise<number>((r) => ws.once('unexpected-response', (_req, res) => r(res.statusCode ?? 0)));
    ws.terminate();
    expect(status).toBe(401);
  });
});

describe('auth answers in older shapes and WAV audio', () => {
  it('accepts the documented, nested and snake_case answers, and guesses one hour when expiresAt is missing', () => {
    const now = 1_000_000;
    expect(parseTtsAuth({ webSocketUrls: { m: 'wss://a' }, expiresAt: '1970-01-01T00:20:00.000Z' }, now)).toMatchObject({ shape: 'current', expiresAt: 1_200_000, expiryGuessed: false });
    expect(parseTtsAuth({ m: { webSocketUrl: 'wss://b' }, expiresAt: 2000 }, now)).toMatchObject({ shape: 'nested', expiresAt: 2_000_000 });
    expect(parseTtsAuth({ websocket_urls: { m: 'wss://c' } }, now)).toMatchObject({ shape: 'snake_case', expiresAt: now + 3_600_000, expiryGuessed: true });
    expect(parseTtsAuth({ nothing: 1 }, now)).toBeUndefined();
  });

  it('a WAV answer at 24 kHz becomes 8 kHz mu-law once', () => {
    const pcm = new Int16Array(24_000).map((_, i) => Math.round(8000 * Math.sin((2 * Math.PI * 440 * i) / 24_000)));
    const { audio, converted } = toTelephoneAudio(writeWavPcm16(pcm, 24_000));
    expect(converted).toBe(true);
    expect(Math.abs(audio.length - 8000)).toBeLessThanOrEqual(2);
  });

  it('the prompt WAV is mu-law 8 kHz that reads back to the same samples', () => {
    const ulaw = fakeTtsAudio('Check the header', VOICE);
    const wav = readWav(mulawWav(ulaw));
    expect(wav.sampleRate).toBe(8000);
    expect(Array.from(wav.samples)).toEqual(Array.from(mulawDecode(ulaw)));
  });
});

describe('prompt cache', () => {
  const log = pino({ level: 'silent' });
  const dir = (): string => mkdtempSync(join(tmpdir(), 'tts-cache-'));

  it('keeps audio across instances, writes atomically, and removes leftovers of a crash', async () => {
    const d = dir();
    writeFileSync(join(d, `${'a'.repeat(64)}.123.tmp`), 'half');
    const a = new TtsCache({ dir: d, maxBytes: 1_000_000, log });
    expect(existsSync(join(d, `${'a'.repeat(64)}.123.tmp`))).toBe(false);
    const key = TtsCache.key(VOICE, 'hello');
    await a.put(key, Buffer.from('audio-bytes'));
    expect(readdirSync(d)).toEqual([`${key}.ulaw`]);
    const b = new TtsCache({ dir: d, maxBytes: 1_000_000, log });
    expect(b.get(key)?.toString()).toBe('audio-bytes');
    expect(TtsCache.key(VOICE, 'hello')).not.toBe(TtsCache.key('other-voice', 'hello'));
  });

  it('stays under its size by dropping the least recently used prompts', async () => {
    const d = dir();
    const c = new TtsCache({ dir: d, maxBytes: 2500, log });
    const k = (n: number): string => TtsCache.key(VOICE, `p${n}`);
    await c.put(k(1), Buffer.alloc(1000, 1));
    await c.put(k(2), Buffer.alloc(1000, 2));
    c.get(k(1)); // p1 used more recently than p2
    await c.put(k(3), Buffer.alloc(1000, 3));
    expect(c.stats.bytes).toBeLessThanOrEqual(2500);
    expect(readdirSync(d).sort()).toEqual([`${k(1)}.ulaw`, `${k(3)}.ulaw`].sort());
  });
});

describe('prompt service', () => {
  const secret = Buffer.from('0123456789abcdef0123456789abcdef');

  async function service(f: FakeTtsServer, cacheDir: string, now: () => number = Date.now): Promise<{ prompts: PromptService; registry: client.Registry }> {
    const log = pino({ level: 'silent' });
    const registry = new client.Registry();
    const tts = new PlayAiTts({ authUrl: f.authUrl, apiKey: f.apiKey, userId: f.userId, model: 'Play3.0-mini', log });
    const prompts = new PromptService({ tts, voice: VOICE, cache: new TtsCache({ dir: cacheDir, maxBytes: 1e7, log }), texts: { busy: 'All lines are busy.', goodbye: 'Goodbye.' }, publicUrl: 'https://voice.example.test', secret, registry, log, now });
    cleanup.push(() => prompts.close());
    return { prompts, registry };
  }

  it('warms every prompt at boot; a second service on the same cache asks the TTS for nothing', async () => {
    const f = await fake();
    const d = mkdtempSync(join(tmpdir(), 'tts-cache-'));
    const { prompts } = await service(f, d);
    expect(await prompts.warm()).toEqual({ ready: 2, failed: 0 });
    expect(f.commands).toHaveLength(2);
    const again = await service(f, d);
    expect(again.prompts.cached('busy')?.audio.equals(fakeTtsAudio('All lines are busy.', VOICE))).toBe(true);
    expect((await again.prompts.promptAudio('goodbye'))?.durationMs).toBeGreaterThan(0);
    expect(f.commands).toHaveLength(2);
    expect(await again.registry.getSingleMetricAsString('playline_tts_requests_total')).toMatch(/result="cache_hit"} 2/);
  });

  it('signed prompt URLs verify for their key until they expire; a changed key or signature is forged', async () => {
    const f = await fake();
    let clock = 1_700_000_000_000;
    const { prompts } = await service(f, mkdtempSync(join(tmpdir(), 'tts-cache-')), () => clock);
    const key = 'b'.repeat(64);
    const url = new URL(prompts.signedUrl(key));
    expect(url.origin + url.pathname).toBe(`https://voice.example.test/prompts/${key}.wav`);
    const exp = url.searchParams.get('exp') ?? undefined;
    const sig = url.searchParams.get('sig') ?? undefined;
    expect(prompts.verify(key, exp, sig)).toBe('ok');
    expect(prompts.verify('c'.repeat(64), exp, sig)).toBe('forged');
    expect(prompts.verify(key, String(Number(exp) + 60), sig)).toBe('forged');
    expect(prompts.verify(key, exp, `${sig?.slice(0, -1)}A`)).not.toBe('ok');
    clock += 11 * 60_000;
    expect(prompts.verify(key, exp, sig)).toBe('expired');
  });

  it('with the service down, prompts fall back to text and the failure is counted', async () => {
    const f = await fake();
    const { prompts, registry } = await service(f, mkdtempSync(join(tmpdir(), 'tts-cache-')));
    await f.close();
    expect(prompts.spoken('busy')).toEqual({ text: 'All lines are busy.' });
    await expect.poll(async () => registry.getSingleMetricAsString('playline_tts_failures_total')).toMatch(/reason="unavailable"} 1/);
    expect(await registry.getSingleMetricAsString('playline_prompts_total')).toMatch(/kind="busy",via="say"} 1/);
  });
});

describe('TTS settings', () => {
  const mode = (env: Record<string, string>): string => loadConfig(env).tts.mode;

  it('defaults to playai with PlayAI keys and a voice, local with no keys at all, off otherwise', () => {
    expect(mode({ PLAYAI_API_KEY: 'k', PLAYAI_USER_ID: 'u', PLAYAI_AGENT_ID: 'a' })).toBe('playai');
    expect(mode({ PLAYAI_API_KEY: 'k', PLAYAI_AGENT_ID: 'a' })).toBe('off');
    expect(mode({})).toBe('local');
    expect(mode({ TWILIO_AUTH_TOKEN: 't', PUBLIC_URL: 'https://x.example' })).toBe('off');
    expect(mode({ OPENAI_API_KEY: 'k', PLAYAI_API_KEY: 'k', PLAYAI_USER_ID: 'u', DEFAULT_AGENT: 'openai:gpt-realtime' })).toBe('off');
    expect(mode({ OPENAI_API_KEY: 'k', PLAYAI_API_KEY: 'k', PLAYAI_USER_ID: 'u', DEFAULT_AGENT: 'openai:gpt-realtime', TTS_VOICE: 'v' })).toBe('playai');
    expect(mode({ TTS: 'off' })).toBe('off');
  });

  it('TTS=playai without what it needs names the missing setting and the way out', () => {
    const err = (env: Record<string, string>): string => {
      try {
        loadConfig(env);
      } catch (e) {
        if (e instanceof ConfigError) return e.message;
      }
      return 'no error';
    };
    expect(err({ TTS: 'playai', OPENAI_API_KEY: 'k' })).toMatch(/^PLAYAI_API_KEY: required when TTS=playai.*TTS=off/);
    expect(err({ TTS: 'playai', PLAYAI_API_KEY: 'k', PLAYAI_AGENT_ID: 'a' })).toMatch(/^PLAYAI_USER_ID: required when TTS=playai/);
    expect(err({ TTS: 'playai', OPENAI_API_KEY: 'k', PLAYAI_API_KEY: 'k', PLAYAI_USER_ID: 'u', DEFAULT_AGENT: 'openai:gpt-realtime' })).toMatch(/^TTS_VOICE: required when TTS=playai/);
    expect(err({ TTS: 'loud' })).toMatch(/^TTS: "loud" is not one of off, playai, local/);
    expect(err({ PLAYAI_TTS_URL: 'ftp://x' })).toMatch(/^PLAYAI_TTS_URL/);
  });
});
