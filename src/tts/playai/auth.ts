/**
 * PlayAI TTS WebSocket authentication: `POST {authUrl}` with
 * `Authorization: Bearer <apiKey>` and `X-User-Id: <userId>` answers the
 * socket URL of each model and when those URLs expire.
 *
 * The documented answer is `{ webSocketUrls: { [model]: url }, expiresAt: ISO }`.
 * Older shapes seen in PlayAI's own code are accepted too, and reported once
 * in the log (see the reference, §3): `{ [model]: { webSocketUrl }, expiresAt }`
 * (`/api/v1/tts/auth`) and PlayHT's `{ websocket_urls, expires_at }`. An
 * `expiresAt` that is missing or unreadable is taken as one hour (the
 * documented connection lifetime), also logged.
 */
import type { Logger } from 'pino';
import { z } from 'zod';
import { TtsError } from '../port.js';

export const DEFAULT_TTS_AUTH_URL = 'https://api.play.ai/api/v1/tts/websocket-auth';
/** Documented lifetime of a socket URL. */
const DEFAULT_LIFETIME_MS = 60 * 60 * 1000;

export interface TtsAuth {
  /** Socket URL of each model the account may use. */
  urls: Map<string, string>;
  /** When the URLs stop working (ms epoch). */
  expiresAt: number;
  /** Which answer shape the service used (`current` is the documented one). */
  shape: 'current' | 'nested' | 'snake_case';
}

const wsUrl = z.string().regex(/^wss?:\/\//i);
const current = z.object({ webSocketUrls: z.record(z.string(), wsUrl), expiresAt: z.unknown().optional() });
const snake = z.object({ websocket_urls: z.record(z.string(), wsUrl), expires_at: z.unknown().optional() });
const nestedEntry = z.object({ webSocketUrl: wsUrl });

/** Reads an expiry given as an ISO date, epoch seconds or epoch ms. */
function expiryOf(v: unknown): number | undefined {
  if (typeof v === 'string' && v.trim() !== '') {
    if (/^\d+$/.test(v.trim())) return expiryOf(Number(v));
    const t = Date.parse(v);
    return Number.isFinite(t) ? t : undefined;
  }
  if (typeof v === 'number' && Number.isFinite(v) && v > 0) return v > 1e12 ? v : v * 1000;
  return undefined;
}

/** Parses an auth answer (any known shape). Undefined when it has no socket URL at all. Exported for tests. */
export function parseTtsAuth(body: unknown, now: number): (TtsAuth & { expiryGuessed: boolean }) | undefined {
  let urls: Map<string, string> | undefined;
  let rawExpiry: unknown;
  let shape: TtsAuth['shape'] = 'current';
  const c = current.safeParse(body);
  const s = snake.safeParse(body);
  if (c.success) {
    urls = new Map(Object.entries(c.data.webSocketUrls));
    rawExpiry = c.data.expiresAt;
  } else if (s.success) {
    urls = new Map(Object.entries(s.data.websocket_urls));
    rawExpiry = s.data.expires_at;
    shape = 'snake_case';
  } else if (typeof body === 'object' && body !== null && !Array.isArray(body)) {
    shape = 'nested';
    urls = new Map();
    for (const [model, entry] of Object.entries(body)) {
      if (model === 'expiresAt') {
        rawExpiry = entry;
        continue;
      }
      const e = nestedEntry.safeParse(entry);
      if (e.success) urls.set(model, e.data.webSocketUrl);
    }
  }
  if (urls === undefined || urls.size === 0) return undefined;
  const expiresAt = expiryOf(rawExpiry);
  return { urls, expiresAt: expiresAt ?? now + DEFAULT_LIFETIME_MS, shape, expiryGuessed: expiresAt === undefined };
}

export interface FetchTtsAuthOptions {
  authUrl: string;
  apiKey: string;
  userId: string;
  fetchImpl?: typeof fetch;
  timeoutMs: number;
  log: Logger;
  now?: () => number;
}

const shapesLogged = new WeakSet<Logger>();

/** Asks for socket URLs. Rejects with a {@link TtsError} (`auth` on 401/403, else `unavailable`/`timeout`/`protocol`). */
export async function fetchTtsAuth(o: FetchTtsAuthOptions): Promise<TtsAuth> {
  const fetchImpl = o.fetchImpl ?? fetch;
  const now = o.now ?? Date.now;
  let res: Response;
  let text: string;
  try {
    res = await fetchImpl(o.authUrl, {
      method: 'POST',
      headers: { authorization: `Bearer ${o.apiKey}`, 'x-user-id': o.userId, 'content-type': 'application/json', accept: 'application/json' },
      body: '{}',
      signal: AbortSignal.timeout(o.timeoutMs),
    });
    text = await res.text();
  } catch (err) {
    if (err instanceof Error && (err.name === 'TimeoutError' || err.name === 'AbortError')) {
      throw new TtsError('timeout', `PlayAI TTS auth: no answer from ${o.authUrl} within ${o.timeoutMs} ms`);
    }
    const cause = err instanceof Error && err.cause instanceof Error ? `: ${err.cause.message}` : '';
    throw new TtsError('unavailable', `PlayAI TTS auth: cannot reach ${o.authUrl}${cause} (check PLAYAI_TTS_URL and the network)`);
  }
  if (res.status === 401 || res.status === 403) {
    throw new TtsError('auth', `PlayAI TTS auth: HTTP ${res.status} from ${o.authUrl}: check PLAYAI_API_KEY and PLAYAI_USER_ID`);
  }
  if (res.status < 200 || res.status >= 300) {
    throw new TtsError('unavailable', `PlayAI TTS auth: HTTP ${res.status} from ${o.authUrl}`);
  }
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch {
    throw new TtsError('protocol', `PlayAI TTS auth: the answer of ${o.authUrl} is not JSON`);
  }
  const parsed = parseTtsAuth(body, now());
  if (parsed === undefined) {
    throw new TtsError('protocol', `PlayAI TTS auth: the answer of ${o.authUrl} has no webSocketUrls (keys: ${typeof body === 'object' && body !== null ? Object.keys(body).slice(0, 8).join(', ') : typeof body})`);
  }
  if ((parsed.shape !== 'current' || parsed.expiryGuessed) && !shapesLogged.has(o.log)) {
    shapesLogged.add(o.log);
    o.log.warn({ shape: parsed.shape, expiryGuessed: parsed.expiryGuessed, models: [...parsed.urls.keys()] }, 'PlayAI TTS auth answered in an undocumented shape; accepted');
  }
  return { urls: parsed.urls, expiresAt: parsed.expiresAt, shape: parsed.shape };
}
