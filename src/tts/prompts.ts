/**
 * Caller-facing prompts in the agent's voice: everything Playline itself says
 * to a caller (busy, apology, goodbye, the transfer return, a voicemail
 * message, recording consent…) goes through here.
 *
 * - {@link PromptService.promptAudio} gives a prompt's μ-law audio: from the
 *   cache (memory, then disk), else synthesized through the TTS port.
 * - {@link PromptService.cached} is the synchronous form used on the call
 *   path: a cache hit, or undefined at once (and a synthesis starts in the
 *   background, so the next caller has it).
 * - {@link PromptService.spoken} is what TwiML needs: `<Play>` of a signed,
 *   short-lived URL on our own origin (`GET /prompts/:key.wav`) when the audio
 *   is cached, else the text for `<Say>`.
 * - {@link PromptService.warm} synthesizes the configured prompts at boot.
 *
 * With TTS off (or failing) every answer falls back to the text, and
 * failures are counted in `playline_tts_failures_total`.
 */
import { createHmac, timingSafeEqual } from 'node:crypto';
import type { Logger } from 'pino';
import client from 'prom-client';
import { TtsCache } from './cache.js';
import { TTS_FORMAT, TtsError, type TtsPort } from './port.js';

/** The prompts Playline says on its own. `consent` is the recording announcement (RECORDING_CONSENT_TEXT, when set). */
export type PromptKind = 'busy' | 'apology' | 'goodbye' | 'transferReturn' | 'consent';
/** A configured prompt, or any text (a campaign's voicemail message, a warm-transfer summary). */
export type PromptRef = PromptKind | { text: string };
/** How a prompt reached the caller (`playline_prompts_total{via}`). */
export type PromptVia = 'stream' | 'play' | 'say';

export interface PromptAudio {
  /** Cache key (also the name in the signed URL). */
  key: string;
  text: string;
  /** Raw 8 kHz μ-law. */
  audio: Buffer;
  durationMs: number;
}

/** What a TwiML answer says: `<Play>playUrl</Play>` when there is audio, else `<Say>text</Say>`. */
export interface Spoken {
  text: string;
  playUrl?: string;
}

export interface PromptServiceOptions {
  /** Undefined: TTS is off, every prompt is `<Say>`. */
  tts?: TtsPort;
  /** TTS_VOICE. */
  voice?: string;
  /** Finds the voice when TTS_VOICE is not set (the default PlayAI agent's own voice); called once. */
  resolveVoice?: () => Promise<string | undefined>;
  cache?: TtsCache;
  texts: Partial<Record<PromptKind, string>>;
  /** Origin the signed URLs are on (PUBLIC_URL). */
  publicUrl: string;
  /** HMAC key of the signed URLs. */
  secret: Buffer;
  /** How long a signed URL works (default 10 minutes). */
  urlTtlMs?: number;
  /** Where the TTS metrics are registered (the app's registry). */
  registry?: client.Registry;
  log: Logger;
  now?: () => number;
}

/** A key that failed is not tried again in the background for this long. */
const RETRY_AFTER_MS = 30_000;

export class PromptService {
  readonly #o: PromptServiceOptions;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #urlTtlMs: number;
  readonly #inflight = new Map<string, Promise<PromptAudio | undefined>>();
  readonly #failedAt = new Map<string, number>();
  #voice: Promise<string | undefined> | undefined;
  #voiceNow: string | undefined;
  #closed = false;
  readonly #failures: client.Counter<'reason'> | undefined;
  readonly #requests: client.Counter<'result'> | undefined;
  readonly #prompts: client.Counter<'kind' | 'via'> | undefined;

  constructor(o: PromptServiceOptions) {
    this.#o = o;
    this.#log = o.log;
    this.#now = o.now ?? Date.now;
    this.#urlTtlMs = o.urlTtlMs ?? 10 * 60 * 1000;
    this.#voiceNow = o.voice;
    if (o.voice !== undefined) this.#voice = Promise.resolve(o.voice);
    const registers = o.registry === undefined ? undefined : [o.registry];
    if (registers !== undefined) {
      this.#failures = new client.Counter({ name: 'playline_tts_failures_total', help: 'Prompt syntheses that failed, by reason (auth, timeout, dropped, service, protocol, unavailable); the caller heard <Say> instead', labelNames: ['reason'] as const, registers });
      this.#requests = new client.Counter({ name: 'playline_tts_requests_total', help: 'Prompt audio asked for, by result (cache_hit, synthesized)', labelNames: ['result'] as const, registers });
      this.#prompts = new client.Counter({ name: 'playline_prompts_total', help: 'Prompts said to callers, by kind and how (stream: into the live call; play: <Play> of our signed URL; say: Twilio <Say>, TTS off or not ready)', labelNames: ['kind', 'via'] as const, registers });
    }
  }

  /** True when prompts are synthesized (TTS is not off). */
  get enabled(): boolean {
    return this.#o.tts !== undefined && !this.#closed;
  }

  /** The text of a prompt (undefined: a kind with no text configured). */
  textOf(ref: PromptRef): string | undefined {
    const text = typeof ref === 'string' ? this.#o.texts[ref] : ref.text;
    return text === undefined || text.trim() === '' ? undefined : text;
  }

  /** A prompt's audio if it is cached now; otherwise undefined at once, and a synthesis starts in the background. */
  cached(ref: PromptRef): PromptAudio | undefined {
    const text = this.textOf(ref);
    const voice = this.#voiceNow;
    if (!this.enabled || text === undefined) return undefined;
    if (voice !== undefined) {
      const key = TtsCache.key(voice, text);
      const audio = this.#o.cache?.get(key);
      if (audio !== undefined) {
        this.#requests?.labels('cache_hit').inc();
        return { key, text, audio, durationMs: audio.length / 8 };
      }
      const failed = this.#failedAt.get(key);
      if (failed !== undefined && this.#now() - failed < RETRY_AFTER_MS) return undefined;
    }
    void this.promptAudio(ref);
    return undefined;
  }

  /** A prompt's audio: cached, or synthesized now. Undefined when TTS is off or failed (then say the text). Never rejects. */
  async promptAudio(ref: PromptRef): Promise<PromptAudio | undefined> {
    const tts = this.#o.tts;
    const text = this.textOf(ref);
    if (tts === undefined || this.#closed || text === undefined) return undefined;
    const voice = await this.#resolveVoice();
    if (voice === undefined) return undefined;
    const key = TtsCache.key(voice, text);
    const hit = this.#o.cache?.get(key);
    if (hit !== undefined) {
      this.#requests?.labels('cache_hit').inc();
      return { key, text, audio: hit, durationMs: hit.length / 8 };
    }
    const running = this.#inflight.get(key);
    if (running !== undefined) return running;
    const job = (async (): Promise<PromptAudio | undefined> => {
      try {
        const audio = await tts.synthesize(text, voice);
        this.#requests?.labels('synthesized').inc();
        this.#failedAt.delete(key);
        if (this.#o.cache !== undefined) await this.#o.cache.put(key, audio);
        return { key, text, audio, durationMs: audio.length / 8 };
      } catch (err) {
        const reason = err instanceof TtsError ? err.kind : 'unavailable';
        this.#failures?.labels(reason).inc();
        this.#failedAt.set(key, this.#now());
        if (this.#failedAt.size > 1000) this.#failedAt.clear();
        this.#log.warn({ reason, err: err instanceof Error ? err.message : String(err), chars: text.length }, 'prompt synthesis failed; the caller hears <Say> instead');
        return undefined;
      } finally {
        this.#inflight.delete(key);
      }
    })();
    this.#inflight.set(key, job);
    return job;
  }

  /** Synthesizes every configured prompt into the cache. Resolves when all are done (never rejects). */
  async warm(): Promise<{ ready: number; failed: number }> {
    if (!this.enabled) return { ready: 0, failed: 0 };
    const started = this.#now();
    const kinds = (Object.keys(this.#o.texts) as PromptKind[]).filter((k) => this.textOf(k) !== undefined);
    const results = await Promise.all(kinds.map((k) => this.promptAudio(k)));
    const ready = results.filter((r) => r !== undefined).length;
    const failed = results.length - ready;
    this.#log[failed > 0 ? 'warn' : 'info'](
      { ready, failed, ms: this.#now() - started, cache: this.#o.cache?.stats },
      failed > 0 ? 'some prompts could not be synthesized; callers hear <Say> for those until TTS works' : `prompts synthesized (${this.#o.tts?.name ?? 'no'} TTS) and cached`,
    );
    return { ready, failed };
  }

  /** Length of a cached prompt in ms (0 when not cached). */
  durationMs(ref: PromptRef): number {
    const text = this.textOf(ref);
    const voice = this.#voiceNow;
    if (text === undefined || voice === undefined) return 0;
    const audio = this.#o.cache?.get(TtsCache.key(voice, text));
    return audio === undefined ? 0 : audio.length / 8;
  }

  /** TwiML speech for a prompt: `<Play>` of a signed URL when its audio is cached, else `<Say>`. Counted in the metrics. */
  spoken(ref: PromptRef): Spoken {
    const text = this.textOf(ref) ?? (typeof ref === 'string' ? '' : ref.text);
    const hit = this.cached(ref);
    this.count(ref, hit === undefined ? 'say' : 'play');
    return hit === undefined ? { text } : { text, playUrl: this.signedUrl(hit.key) };
  }

  /** Like {@link spoken}, waiting up to `waitMs` for a synthesis (a text heard a little later, e.g. a transfer summary). */
  async spokenSoon(ref: PromptRef, waitMs: number): Promise<Spoken> {
    const text = this.textOf(ref) ?? (typeof ref === 'string' ? '' : ref.text);
    let timer: NodeJS.Timeout | undefined;
    const hit = await Promise.race([
      this.promptAudio(ref),
      new Promise<undefined>((resolve) => {
        timer = setTimeout(() => resolve(undefined), waitMs);
      }),
    ]).finally(() => clearTimeout(timer));
    this.count(ref, hit === undefined ? 'say' : 'play');
    return hit === undefined ? { text } : { text, playUrl: this.signedUrl(hit.key) };
  }

  /** Counts a prompt said to a caller. */
  count(ref: PromptRef, via: PromptVia): void {
    this.#prompts?.labels(typeof ref === 'string' ? ref : 'text', via).inc();
  }

  /** `PUBLIC_URL/prompts/<key>.wav?exp=&sig=`: works until `exp` (epoch seconds), for this key only. */
  signedUrl(key: string): string {
    const exp = Math.ceil((this.#now() + this.#urlTtlMs) / 1000);
    return `${this.#o.publicUrl}/prompts/${key}.wav?exp=${exp}&sig=${this.#sign(key, exp)}`;
  }

  /** Checks a signed URL's `exp` and `sig` for `key`. */
  verify(key: string, exp: string | undefined, sig: string | undefined): 'ok' | 'expired' | 'forged' {
    if (exp === undefined || sig === undefined || !/^\d{1,12}$/.test(exp)) return 'forged';
    const want = Buffer.from(this.#sign(key, Number(exp)));
    const got = Buffer.from(sig);
    if (want.length !== got.length || !timingSafeEqual(want, got)) return 'forged';
    return Number(exp) * 1000 < this.#now() ? 'expired' : 'ok';
  }

  /** Cached audio by key (the prompt route). */
  audioByKey(key: string): Buffer | undefined {
    return this.#o.cache?.get(key);
  }

  async close(): Promise<void> {
    this.#closed = true;
    await this.#o.tts?.close();
  }

  #sign(key: string, exp: number): string {
    return createHmac('sha256', this.#o.secret).update(`${TTS_FORMAT}:${key}:${exp}`).digest('base64url');
  }

  #resolveVoice(): Promise<string | undefined> {
    this.#voice ??= (async () => {
      let voice: string | undefined;
      try {
        voice = await this.#o.resolveVoice?.();
      } catch (err) {
        this.#log.warn({ err: err instanceof Error ? err.message : String(err) }, 'could not find the agent voice for prompts');
      }
      if (voice === undefined) {
        this.#log.warn('prompts stay <Say>: no voice for TTS (set TTS_VOICE, or TTS=off to silence this)');
      }
      this.#voiceNow = voice;
      return voice;
    })();
    return this.#voice;
  }
}
