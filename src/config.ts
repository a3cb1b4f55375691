/**
 * Configuration: the only module that reads `process.env`.
 *
 * Every variable is validated at boot; a bad or missing value throws a
 * {@link ConfigError} whose message names the variable, and `main` prints it
 * and exits before anything listens.
 */
import { existsSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { z } from 'zod';
import { isCountryCode } from './outbound/phone.js';

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** One entry of the number-routing file. */
export interface NumberRoute {
  agentId: string;
  prompt?: string;
  customGreeting?: string;
}

export interface Config {
  port: number;
  host: string;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  /** Origin Twilio reaches, e.g. `https://voice.example.com` (no path, no trailing slash). */
  publicUrl: string;
  /** `wss://…/twilio/media-stream` (or `ws://` for an http PUBLIC_URL in local use). */
  streamUrl: string;
  twilio: {
    accountSid?: string;
    authToken?: string;
  };
  playai: {
    apiKey?: string;
    defaultAgentId: string;
    /** Base of the agent socket; the bridge connects to `${wsUrl}/v1/talk/{agentId}`. */
    wsUrl: string;
  };
  /** No PLAYAI_API_KEY: the built-in local agent answers every call. */
  localAgent: boolean;
  /** Settings of the built-in local agent, used when {@link Config.localAgent} is true. */
  localAgentOptions: { port: number; mode: 'echo-test' | 'echo' };
  /** Called number (E.164 `To`) → route. Unknown numbers go to the default agent. */
  routes: Map<string, NumberRoute>;
  routesFile?: string;
  maxConcurrentCalls: number;
  /** Optional per-agent caps on concurrent calls, on top of {@link Config.maxConcurrentCalls}. */
  agentLimits: Map<string, number>;
  /** After a PlayAI 4429, how long the learned account limit holds (unless a call ends first). */
  agentCapacityCooldownMs: number;
  /** What a caller refused for capacity gets: a spoken apology, or a forward to FALLBACK_NUMBER. */
  overflow: { action: 'say' | 'dial'; fallbackNumber?: string };
  dataDir: string;
  /** New calls are refused while the event-loop delay p99 is above this (ms); 0 disables. */
  maxEventLoopDelayMs: number;
  /** Seconds live calls get to finish after SIGTERM/SIGINT before they are ended with a goodbye. */
  drainTimeoutMs: number;
  /** Twilio REST base URL override (a Twilio-compatible server, for tests and gateways). */
  twilioApiUrl?: string;
  timeouts: {
    /** How long a token minted by /twilio/voice stays valid (and the slot reserved). */
    streamTokenTtlMs: number;
    /** How long a new media-stream socket may wait for `start`. */
    startTimeoutMs: number;
    /** How long the agent may take to answer `setup` with `init`. */
    agentInitTimeoutMs: number;
    /** After an agent `hangup`, how long queued audio may keep playing before we end the call. */
    hangupDrainMs: number;
    /** After asking Twilio to speak an apology, how long before we close the stream ourselves. */
    callControlGraceMs: number;
    /** A call is ended (with a goodbye) after this long. */
    maxCallMs: number;
    /** A call with no media from Twilio for this long is ended (its stream is dead). */
    idleMs: number;
    /** How often the manager sweeps sessions for dead sockets, idle and over-long calls. */
    sweepIntervalMs: number;
  };
  agentReconnect: {
    /** Attempts per outage. */
    attempts: number;
    /** Time budget per outage, from the moment the agent leg was lost. */
    windowMs: number;
    /** Caller audio kept while the agent leg is down, in ms. */
    bufferMs: number;
    /** Ping interval on the agent socket; a missed pong terminates it. */
    heartbeatMs: number;
    /** A new agent leg must stay up this long after `init` before its outage is over. */
    stableMs: number;
    /** Reconnect attempts per call, all outages together. */
    maxPerCall: number;
  };
  media: {
    /** Agent audio between two playback marks, in ms. */
    markIntervalMs: number;
    /** Caller audio kept while the agent leg is not ready yet, in ms. */
    preInitBufferMs: number;
    /** Coalesce caller audio into `audioIn` messages of this many ms (0 = one message per Twilio frame). */
    audioInBatchMs: number;
  };
  outbound: {
    /** Bearer token of the /v1 API; without one the API answers only on loopback in local mode. */
    apiToken?: string;
    /** Caller id for calls and campaigns that name none. */
    defaultCallerId?: string;
    /** Country (ISO 3166 alpha-2) for CSV numbers written without +country code. */
    defaultCountry?: string;
    /** Account-wide dials per second. */
    maxCps: number;
    /** Slots outbound dialing never takes. */
    inboundReserved: number;
    /** Ring time of API calls before no-answer. */
    ringTimeoutS: number;
    /** No Twilio credentials: calls go to the built-in simulated carrier. */
    localCarrier: boolean;
    /** Weights of the simulated carrier's outcomes. */
    localOutcomes: Record<'answered' | 'busy' | 'no-answer' | 'voicemail' | 'failed', number>;
    /** How long a simulated callee stays on the line. */
    localTalkMs: number;
  };
  webhook: { url?: string; secret?: string };
  /** PlayAI REST (transcripts after the call) when PLAYAI_USER_ID is set. */
  playaiRest: { baseUrl: string; userId?: string };
  messages: {
    apology: string;
    busy: string;
    goodbye: string;
    voice?: string;
    language?: string;
  };
}

const emptyToUndefined = (v: unknown) => (typeof v === 'string' && v.trim() === '' ? undefined : v);
const optionalString = z.preprocess(emptyToUndefined, z.string().optional());
const intIn = (min: number, max: number, def: number) =>
  z.preprocess(emptyToUndefined, z.coerce.number().int().min(min).max(max).default(def));

const envSchema = z.object({
  PORT: intIn(0, 65535, 8080),
  HOST: z.preprocess(emptyToUndefined, z.string().default('0.0.0.0')),
  LOG_LEVEL: z.preprocess(
    emptyToUndefined,
    z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  ),
  PUBLIC_URL: optionalString,
  TWILIO_ACCOUNT_SID: z.preprocess(
    emptyToUndefined,
    z.string().regex(/^AC[0-9a-fA-F]{32}$/, 'must look like AC followed by 32 hex digits').optional(),
  ),
  TWILIO_AUTH_TOKEN: optionalString,
  PLAYAI_API_KEY: optionalString,
  PLAYAI_AGENT_ID: z.preprocess(
    emptyToUndefined,
    z.string().regex(/^[A-Za-z0-9_-]{1,128}$/, 'must be letters, digits, - or _').optional(),
  ),
  PLAYAI_WS_URL: z.preprocess(emptyToUndefined, z.string().default('wss://api.play.ai')),
  ROUTES_FILE: optionalString,
  MAX_CONCURRENT_CALLS: intIn(1, 100_000, 50),
  DATA_DIR: z.preprocess(emptyToUndefined, z.string().default('./data')),
  LOCAL_AGENT_PORT: intIn(0, 65535, 0),
  LOCAL_AGENT_MODE: z.preprocess(emptyToUndefined, z.enum(['echo-test', 'echo']).default('echo-test')),
  STREAM_TOKEN_TTL_S: intIn(1, 120, 10),
  START_TIMEOUT_MS: intIn(100, 60_000, 5_000),
  AGENT_INIT_TIMEOUT_MS: intIn(100, 60_000, 10_000),
  HANGUP_DRAIN_TIMEOUT_MS: intIn(0, 120_000, 10_000),
  CALL_CONTROL_GRACE_MS: intIn(0, 60_000, 5_000),
  MARK_INTERVAL_MS: intIn(20, 2_000, 160),
  PREINIT_BUFFER_MS: intIn(0, 60_000, 15_000),
  AUDIO_IN_BATCH_MS: intIn(0, 500, 0),
  APOLOGY_TEXT: z.preprocess(
    emptyToUndefined,
    z.string().max(1000).default('Sorry, we are having trouble connecting your call. Please try again later. Goodbye.'),
  ),
  BUSY_TEXT: z.preprocess(
    emptyToUndefined,
    z.string().max(1000).default('Sorry, all of our agents are busy right now. Please call again in a few minutes. Goodbye.'),
  ),
  GOODBYE_TEXT: z.preprocess(
    emptyToUndefined,
    z.string().max(1000).default('We have to end this call now. Thank you for calling. Goodbye.'),
  ),
  SAY_VOICE: optionalString,
  AGENT_LIMITS: optionalString,
  AGENT_CAPACITY_COOLDOWN_S: intIn(1, 3600, 60),
  OVERFLOW_ACTION: z.preprocess(emptyToUndefined, z.enum(['say', 'dial']).default('say')),
  FALLBACK_NUMBER: z.preprocess(
    emptyToUndefined,
    z.string().regex(/^\+[1-9]\d{1,14}$/, 'must be an E.164 number like +15551234567').optional(),
  ),
  DRAIN_TIMEOUT_S: intIn(0, 86_400, 120),
  MAX_EVENT_LOOP_DELAY_MS: intIn(0, 60_000, 500),
  MAX_CALL_DURATION_S: intIn(1, 86_400, 3600),
  IDLE_TIMEOUT_S: intIn(1, 3600, 20),
  SWEEP_INTERVAL_S: intIn(1, 600, 5),
  AGENT_RECONNECT_ATTEMPTS: intIn(0, 20, 5),
  AGENT_RECONNECT_WINDOW_MS: intIn(0, 120_000, 10_000),
  RECONNECT_BUFFER_MS: intIn(0, 120_000, 10_000),
  AGENT_HEARTBEAT_MS: intIn(0, 60_000, 3_000),
  AGENT_STABLE_MS: intIn(0, 600_000, 5_000),
  AGENT_MAX_RECONNECTS_PER_CALL: intIn(0, 1000, 10),
  TWILIO_API_URL: optionalString,
  SAY_LANGUAGE: optionalString,
  API_TOKEN: z.preprocess(emptyToUndefined, z.string().min(16, 'must be at least 16 characters').optional()),
  DEFAULT_CALLER_ID: z.preprocess(
    emptyToUndefined,
    z.string().regex(/^\+[1-9]\d{1,14}$/, 'must be an E.164 number like +15551234567').optional(),
  ),
  DEFAULT_COUNTRY: z.preprocess(emptyToUndefined, z.string().refine(isCountryCode, 'must be a two-letter country code like US').optional()),
  OUTBOUND_MAX_CPS: z.preprocess(emptyToUndefined, z.coerce.number().positive().max(1000).optional()),
  INBOUND_RESERVED: intIn(0, 100_000, 0),
  RING_TIMEOUT_S: intIn(5, 600, 30),
  LOCAL_CARRIER_OUTCOMES: z.preprocess(emptyToUndefined, z.string().default('answered:70,busy:10,no-answer:10,voicemail:10')),
  LOCAL_CARRIER_TALK_S: intIn(1, 3600, 8),
  WEBHOOK_URL: optionalString,
  WEBHOOK_SECRET: z.preprocess(emptyToUndefined, z.string().min(16, 'must be at least 16 characters').optional()),
  PLAYAI_USER_ID: optionalString,
  PLAYAI_API_URL: z.preprocess(emptyToUndefined, z.string().default('https://api.play.ai')),
});

const OUTCOME_NAMES = ['answered', 'busy', 'no-answer', 'voicemail', 'failed'] as const;

/** Parses `answered:70,busy:10,...` (weights; missing outcomes weigh 0). Exported for tests. */
export function parseOutcomeWeights(text: string): Record<(typeof OUTCOME_NAMES)[number], number> {
  const out = { answered: 0, busy: 0, 'no-answer': 0, voicemail: 0, failed: 0 };
  for (const part of text.split(',')) {
    const m = /^\s*([a-z-]+)\s*[:=]\s*(\d{1,6})\s*$/.exec(part);
    const name = m?.[1];
    if (m === null || name === undefined || !(OUTCOME_NAMES as readonly string[]).includes(name)) {
      throw new ConfigError(`LOCAL_CARRIER_OUTCOMES: expected outcome:weight pairs of ${OUTCOME_NAMES.join(', ')} (got ${JSON.stringify(part)})`);
    }
    out[name as (typeof OUTCOME_NAMES)[number]] = Number(m[2]);
  }
  if (Object.values(out).every((w) => w === 0)) throw new ConfigError('LOCAL_CARRIER_OUTCOMES: at least one weight must be above 0');
  return out;
}

const routeSchema = z
  .object({
    agentId: z.string().regex(/^[A-Za-z0-9_-]{1,128}$/),
    prompt: z.string().max(10_000).optional(),
    customGreeting: z.string().max(1_000).optional(),
  })
  .strict();
const routesFileSchema = z.record(z.string(), routeSchema);
const E164 = /^\+[1-9]\d{1,14}$/;

function formatIssue(issue: z.core.$ZodIssue): string {
  const name = issue.path.length ? String(issue.path[0]) : '(env)';
  return `${name}: ${issue.message}`;
}

/** Parses the number-routing JSON file. Exported for tests. */
export function parseRoutesFile(path: string): Map<string, NumberRoute> {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ConfigError(`ROUTES_FILE: cannot read ${path} as JSON (${(err as Error).message})`);
  }
  const parsed = routesFileSchema.safeParse(raw);
  if (!parsed.success) {
    const first = parsed.error.issues[0];
    const where = first ? first.path.join('.') : '';
    throw new ConfigError(`ROUTES_FILE: ${path}: ${where ? `${where}: ` : ''}${first?.message ?? 'invalid'}`);
  }
  const routes = new Map<string, NumberRoute>();
  for (const [number, route] of Object.entries(parsed.data)) {
    if (!E164.test(number)) {
      throw new ConfigError(`ROUTES_FILE: ${path}: ${JSON.stringify(number)} is not an E.164 number like +15551234567`);
    }
    routes.set(number, route);
  }
  return routes;
}

function parseUrl(name: string, value: string, schemes: string[]): URL {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError(`${name}: not a valid URL: ${JSON.stringify(value)}`);
  }
  if (!schemes.includes(url.protocol)) {
    throw new ConfigError(`${name}: scheme must be one of ${schemes.join(', ')} (got ${url.protocol})`);
  }
  return url;
}

/** The id the local agent answers for when no PLAYAI_AGENT_ID is configured. */
export const LOCAL_AGENT_ID = 'local-echo';

/** Caller id of simulated calls in local mode when DEFAULT_CALLER_ID is not set. */
export const LOCAL_CALLER_ID = '+12025550100';

/**
 * Builds the configuration from an environment map (normally `process.env`).
 * Throws {@link ConfigError} naming the first bad variable.
 */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const parsed = envSchema.safeParse(env);
  if (!parsed.success) {
    throw new ConfigError(parsed.error.issues.map(formatIssue).join('; '));
  }
  const e = parsed.data;

  const localAgent = e.PLAYAI_API_KEY === undefined;
  if (!localAgent && e.PLAYAI_AGENT_ID === undefined) {
    throw new ConfigError('PLAYAI_AGENT_ID: required when PLAYAI_API_KEY is set (the agent for numbers without a route)');
  }
  if (e.TWILIO_ACCOUNT_SID !== undefined && e.TWILIO_AUTH_TOKEN === undefined) {
    throw new ConfigError('TWILIO_AUTH_TOKEN: required when TWILIO_ACCOUNT_SID is set');
  }

  let publicUrl: string;
  if (e.PUBLIC_URL === undefined) {
    if (e.TWILIO_AUTH_TOKEN !== undefined) {
      throw new ConfigError('PUBLIC_URL: required when TWILIO_AUTH_TOKEN is set (the https origin Twilio reaches, used to check signatures)');
    }
    const host = e.HOST === '0.0.0.0' || e.HOST === '::' ? '127.0.0.1' : e.HOST;
    publicUrl = `http://${host.includes(':') ? `[${host}]` : host}:${e.PORT}`;
  } else {
    const url = parseUrl('PUBLIC_URL', e.PUBLIC_URL, ['https:', 'http:']);
    if ((url.pathname !== '/' && url.pathname !== '') || url.search || url.hash || url.username || url.password) {
      throw new ConfigError(`PUBLIC_URL: must be an origin only, like https://voice.example.com (got ${JSON.stringify(e.PUBLIC_URL)})`);
    }
    publicUrl = url.origin;
  }
  const streamUrl = `${publicUrl.replace(/^http/, 'ws')}/twilio/media-stream`;

  const wsUrl = parseUrl('PLAYAI_WS_URL', e.PLAYAI_WS_URL, ['wss:', 'ws:']);
  if (wsUrl.search || wsUrl.hash) throw new ConfigError('PLAYAI_WS_URL: must not have a query string or fragment');

  let routes = new Map<string, NumberRoute>();
  let routesFile: string | undefined;
  if (e.ROUTES_FILE !== undefined) {
    routesFile = resolve(e.ROUTES_FILE);
    if (!existsSync(routesFile)) throw new ConfigError(`ROUTES_FILE: file not found: ${routesFile}`);
    routes = parseRoutesFile(routesFile);
  }

  const agentLimits = new Map<string, number>();
  if (e.AGENT_LIMITS !== undefined) {
    for (const part of e.AGENT_LIMITS.split(',')) {
      const m = /^\s*([A-Za-z0-9_-]{1,128})\s*[:=]\s*(\d{1,6})\s*$/.exec(part);
      if (m === null || m[1] === undefined || m[2] === undefined) {
        throw new ConfigError(`AGENT_LIMITS: expected agentId:max pairs separated by commas, e.g. "sales:5,support:10" (got ${JSON.stringify(part)})`);
      }
      agentLimits.set(m[1], Number(m[2]));
    }
  }
  if (e.OVERFLOW_ACTION === 'dial' && e.FALLBACK_NUMBER === undefined) {
    throw new ConfigError('FALLBACK_NUMBER: required when OVERFLOW_ACTION=dial');
  }
  let twilioApiUrl: string | undefined;
  if (e.TWILIO_API_URL !== undefined) {
    twilioApiUrl = parseUrl('TWILIO_API_URL', e.TWILIO_API_URL, ['https:', 'http:']).href.replace(/\/+$/, '');
  }

  if (e.INBOUND_RESERVED >= e.MAX_CONCURRENT_CALLS) {
    throw new ConfigError(`INBOUND_RESERVED: must be below MAX_CONCURRENT_CALLS (${e.MAX_CONCURRENT_CALLS}), or outbound calls could never be placed`);
  }
  let webhookUrl: string | undefined;
  if (e.WEBHOOK_URL !== undefined) webhookUrl = parseUrl('WEBHOOK_URL', e.WEBHOOK_URL, ['https:', 'http:']).href;
  const playaiApi = parseUrl('PLAYAI_API_URL', e.PLAYAI_API_URL, ['https:', 'http:']).href.replace(/\/+$/, '');
  const localCarrier = e.TWILIO_ACCOUNT_SID === undefined;

  return {
    port: e.PORT,
    host: e.HOST,
    logLevel: e.LOG_LEVEL,
    publicUrl,
    streamUrl,
    twilio: { accountSid: e.TWILIO_ACCOUNT_SID, authToken: e.TWILIO_AUTH_TOKEN },
    playai: {
      apiKey: e.PLAYAI_API_KEY,
      defaultAgentId: e.PLAYAI_AGENT_ID ?? LOCAL_AGENT_ID,
      wsUrl: wsUrl.href.replace(/\/+$/, ''),
    },
    localAgent,
    localAgentOptions: { port: e.LOCAL_AGENT_PORT, mode: e.LOCAL_AGENT_MODE },
    routes,
    routesFile,
    maxConcurrentCalls: e.MAX_CONCURRENT_CALLS,
    agentLimits,
    agentCapacityCooldownMs: e.AGENT_CAPACITY_COOLDOWN_S * 1000,
    overflow: e.OVERFLOW_ACTION === 'dial' ? { action: 'dial', fallbackNumber: e.FALLBACK_NUMBER } : { action: 'say' },
    dataDir: resolve(e.DATA_DIR),
    drainTimeoutMs: e.DRAIN_TIMEOUT_S * 1000,
    maxEventLoopDelayMs: e.MAX_EVENT_LOOP_DELAY_MS,
    twilioApiUrl,
    timeouts: {
      streamTokenTtlMs: e.STREAM_TOKEN_TTL_S * 1000,
      startTimeoutMs: e.START_TIMEOUT_MS,
      agentInitTimeoutMs: e.AGENT_INIT_TIMEOUT_MS,
      hangupDrainMs: e.HANGUP_DRAIN_TIMEOUT_MS,
      callControlGraceMs: e.CALL_CONTROL_GRACE_MS,
      maxCallMs: e.MAX_CALL_DURATION_S * 1000,
      idleMs: e.IDLE_TIMEOUT_S * 1000,
      sweepIntervalMs: e.SWEEP_INTERVAL_S * 1000,
    },
    agentReconnect: {
      attempts: e.AGENT_RECONNECT_ATTEMPTS,
      windowMs: e.AGENT_RECONNECT_WINDOW_MS,
      bufferMs: e.RECONNECT_BUFFER_MS,
      heartbeatMs: e.AGENT_HEARTBEAT_MS,
      stableMs: e.AGENT_STABLE_MS,
      maxPerCall: e.AGENT_MAX_RECONNECTS_PER_CALL,
    },
    media: { markIntervalMs: e.MARK_INTERVAL_MS, preInitBufferMs: e.PREINIT_BUFFER_MS, audioInBatchMs: e.AUDIO_IN_BATCH_MS },
    outbound: {
      apiToken: e.API_TOKEN,
      defaultCallerId: e.DEFAULT_CALLER_ID ?? (localCarrier ? LOCAL_CALLER_ID : undefined),
      defaultCountry: e.DEFAULT_COUNTRY,
      maxCps: e.OUTBOUND_MAX_CPS ?? (localCarrier ? 10 : 1),
      inboundReserved: e.INBOUND_RESERVED,
      ringTimeoutS: e.RING_TIMEOUT_S,
      localCarrier,
      localOutcomes: parseOutcomeWeights(e.LOCAL_CARRIER_OUTCOMES),
      localTalkMs: e.LOCAL_CARRIER_TALK_S * 1000,
    },
    webhook: { url: webhookUrl, secret: e.WEBHOOK_SECRET },
    playaiRest: { baseUrl: playaiApi, userId: e.PLAYAI_USER_ID },
    messages: { apology: e.APOLOGY_TEXT, busy: e.BUSY_TEXT, goodbye: e.GOODBYE_TEXT, voice: e.SAY_VOICE, language: e.SAY_LANGUAGE },
  };
}

/** Loads `.env` from the working directory into `process.env` if present (existing variables win). */
export function loadDotEnv(path = '.env'): boolean {
  if (!existsSync(path)) return false;
  process.loadEnvFile(path);
  return true;
}
