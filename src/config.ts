/**
 * Configuration: the only module that reads `process.env`.
 *
 * Every variable is validated at boot; a bad or missing value throws a
 * {@link ConfigError} whose message names the variable, and `main` prints it
 * and exits before anything listens.
 */
import { existsSync, readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import type { AgentDefinition } from './agent/directory.js';
import { httpToolSchema } from './tools/http.js';
import { dtmfActionSchema, transferTargetsSchema, type DtmfAction, type TransferTargets } from './transfer/targets.js';
import { AGENT_REF_PATTERN, AGENT_REF_TEXT, formatAgentRef, parseAgentRef, type AgentProviderName } from './agent/port.js';
import { E164_SHAPE, isCountryCode, type CountryCode } from './outbound/phone.js';
import { LOCAL_OUTCOMES } from './sim/outcomes.js';
import { WEBHOOK_EVENT_TYPES, type WebhookEventType } from './events/types.js';

export class ConfigError extends Error {
  override name = 'ConfigError';
}

/** One entry of the number-routing file. */
export interface NumberRoute {
  /** `provider:id` (a bare id in the file is a PlayAI agent). */
  agentId: string;
  prompt?: string;
  customGreeting?: string;
  /** People this number's calls may be transferred to, by name (over the agent's own). */
  transferTargets?: TransferTargets;
  /** Keypad hotkeys: a key pressed on its own does this (e.g. "0": transfer to frontdesk). */
  dtmf?: Record<string, DtmfAction>;
  /** Record this number's calls (over the agent's `record` and RECORDING_DEFAULT). */
  record?: boolean;
}

export interface Config {
  port: number;
  host: string;
  logLevel: 'fatal' | 'error' | 'warn' | 'info' | 'debug' | 'trace' | 'silent';
  /** `json`, `pretty`, or unset: pretty when stdout is a terminal, JSON otherwise (Docker, systemd). */
  logFormat?: 'json' | 'pretty';
  /** Bearer token `/metrics` requires; without one it answers anyone who reaches the port. */
  metricsToken?: string;
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
    /** Base of the agent socket; the bridge connects to `${wsUrl}/v1/talk/{agentId}`. */
    wsUrl: string;
  };
  agents: {
    /** The agent of numbers without a route (`provider:id`): DEFAULT_AGENT, or `playai:` + PLAYAI_AGENT_ID. */
    defaultAgent: string;
    openai?: { apiKey: string; url: string };
    /** ElevenLabs is always reachable: public agents need no key (private ones get a signed URL with it). */
    elevenlabs: { apiKey?: string; url: string };
    deepgram?: { apiKey: string; url: string };
    /** AGENTS_FILE: per-agent settings, keyed by `provider:id`. */
    definitions: Map<string, AgentDefinition>;
  };
  /** No agent credentials and no DEFAULT_AGENT: the built-in local agent answers every call. */
  localAgent: boolean;
  /** Settings of the built-in local agent, used when {@link Config.localAgent} is true. */
  localAgentOptions: { port: number; mode: 'echo-test' | 'echo' };
  /** Called number (E.164 `To`) → route. Unknown numbers go to the default agent. */
  routes: Map<string, NumberRoute>;
  maxConcurrentCalls: number;
  /** REDIS_URL set: capacity, stream tokens and call control shared by every process on that Redis (else one process, in memory). */
  fleet?: { redisUrl: string; prefix: string; leaseMs: number };
  /** WORKERS: processes serving the one port (Node's cluster module); 1 = this process serves, no cluster. */
  workers: number;
  /** DATABASE_URL set: calls, campaigns, contacts, DNC, idempotency keys, webhook deliveries and recording metadata live in that Postgres (else SQLite in DATA_DIR). */
  database?: { url: string };
  /** Optional per-agent caps on concurrent calls (keys `provider:id`), on top of {@link Config.maxConcurrentCalls}. */
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
    /** Keypad digits are gathered until `#` or a pause this long, then sent to the agent as one message. */
    dtmfGatherMs: number;
  };
  outbound: {
    /** Bearer token of the /v1 API; without one the API answers only on loopback in local mode. */
    apiToken?: string;
    /** Caller id for calls and campaigns that name none. */
    defaultCallerId?: string;
    /** Country (ISO 3166 alpha-2) for CSV numbers written without +country code. */
    defaultCountry?: CountryCode;
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
  webhook: { url?: string; secret?: string; events: WebhookEventType[] };
  /** How long live events stay resumable with Last-Event-ID (`/v1/events`). */
  eventsRetentionMs: number;
  /** PlayAI REST (transcripts after the call) when PLAYAI_USER_ID is set. */
  playaiRest: { baseUrl: string; userId?: string };
  /** Caller-facing prompts in the agent's voice (TTS); `<Say>` when off. */
  tts: {
    /** `playai`: PlayAI's TTS WebSocket; `local`: the built-in fake service (local mode); `off`: `<Say>`. */
    mode: 'off' | 'playai' | 'local';
    /** TTS_VOICE; undefined: the default PlayAI agent's own voice (read through the REST API at boot). */
    voice?: string;
    /** Key of the auth answer's `webSocketUrls` (TTS_MODEL). */
    model: string;
    /** PLAYAI_TTS_URL: the socket auth endpoint. */
    authUrl: string;
    /** Most bytes of synthesized prompts kept in DATA_DIR/tts-cache. */
    cacheBytes: number;
  };
  /** Call recording (RECORDING…). */
  recording: {
    /** `off`: nothing is recorded and `record: true` is refused; `local`: a stereo WAV in DATA_DIR/recordings; `twilio`: Twilio's dual-channel recording. */
    backend: 'off' | 'local' | 'twilio';
    /** Whether calls that say nothing (no `record` on their route, agent, campaign or API call) are recorded. */
    byDefault: boolean;
    /** Said to the caller before the agent speaks, on recorded phone calls. */
    consentText?: string;
    /** Recordings older than this many days are deleted (0: kept). */
    retentionDays: number;
    /** DATA_DIR/recordings. */
    dir: string;
  };
  messages: {
    apology: string;
    busy: string;
    goodbye: string;
    /** Said to a caller coming back to the agent after a transfer nobody answered. */
    transferReturn: string;
    /** Hold audio (a TwiML or audio URL) of a warm transfer's caller; Twilio's default music when absent. */
    transferHoldUrl?: string;
    voice?: string;
    language?: string;
  };
}

/** An empty value (a line of a copied .env.example) means "the default". */
const emptyToUndefined = (v: unknown) => (typeof v === 'string' && v.trim() === '' ? undefined : v);
const optional = <T extends z.ZodType>(schema: T) => z.preprocess(emptyToUndefined, schema.optional());
const optionalString = optional(z.string());

// Every `error` below completes the sentence `NAME: "value" is not …` (see formatIssue).

const intIn = (min: number, max: number, def: number) => {
  const expected = `a whole number from ${min} to ${max}`;
  return z.preprocess(
    emptyToUndefined,
    z
      .string({ error: expected })
      .trim()
      .regex(/^\d{1,15}$/, { error: expected })
      .transform(Number)
      .pipe(z.number().min(min, { error: expected }).max(max, { error: expected }))
      .default(def),
  );
};
const oneOf = <const T extends readonly [string, ...string[]]>(values: T) =>
  z.enum(values, { error: `one of ${values.join(', ')}` });
const text = (max: number, def: string) =>
  z.preprocess(emptyToUndefined, z.string().max(max, { error: `a text of at most ${max} characters` }).default(def));
const secret = optional(z.string().min(16, { error: 'a token of at least 16 characters' }));
const e164 = optional(z.string().regex(E164_SHAPE, { error: 'an E.164 number like +15551234567' }));
const AGENT_ID = /^[A-Za-z0-9_-]{1,128}$/;
const AGENT_REF = AGENT_REF_PATTERN;

const WORKERS_TEXT = 'a number of worker processes from 1 to 1024, or auto (one per core)';

const envSchema = z.object({
  PORT: intIn(0, 65535, 8080),
  HOST: z.preprocess(emptyToUndefined, z.string().default('0.0.0.0')),
  LOG_LEVEL: z.preprocess(emptyToUndefined, oneOf(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info')),
  LOG_FORMAT: optional(oneOf(['json', 'pretty'])),
  PUBLIC_URL: optionalString,
  TWILIO_ACCOUNT_SID: optional(z.string().regex(/^AC[0-9a-fA-F]{32}$/, { error: 'an account SID (AC followed by 32 hex digits)' })),
  TWILIO_AUTH_TOKEN: optionalString,
  PLAYAI_API_KEY: optionalString,
  PLAYAI_AGENT_ID: optional(z.string().regex(AGENT_ID, { error: 'an agent id (1 to 128 letters, digits, - or _)' })),
  PLAYAI_WS_URL: z.preprocess(emptyToUndefined, z.string().default('wss://api.play.ai')),
  DEFAULT_AGENT: optional(z.string().refine((v) => parseAgentRef(v) !== undefined && AGENT_REF.test(v), { error: AGENT_REF_TEXT })),
  AGENTS_FILE: optionalString,
  OPENAI_API_KEY: optionalString,
  OPENAI_REALTIME_URL: z.preprocess(emptyToUndefined, z.string().default('wss://api.openai.com/v1/realtime')),
  ELEVENLABS_API_KEY: optionalString,
  ELEVENLABS_URL: z.preprocess(emptyToUndefined, z.string().default('https://api.elevenlabs.io')),
  DEEPGRAM_API_KEY: optionalString,
  DEEPGRAM_AGENT_URL: z.preprocess(emptyToUndefined, z.string().default('wss://agent.deepgram.com/v1/agent/converse')),
  ROUTES_FILE: optionalString,
  MAX_CONCURRENT_CALLS: intIn(1, 100_000, 50),
  DATA_DIR: z.preprocess(emptyToUndefined, z.string().default('./data')),
  LOCAL_AGENT_PORT: intIn(0, 65535, 0),
  LOCAL_AGENT_MODE: z.preprocess(emptyToUndefined, oneOf(['echo-test', 'echo']).default('echo-test')),
  STREAM_TOKEN_TTL_S: intIn(1, 120, 10),
  START_TIMEOUT_MS: intIn(100, 60_000, 5_000),
  AGENT_INIT_TIMEOUT_MS: intIn(100, 60_000, 10_000),
  HANGUP_DRAIN_TIMEOUT_MS: intIn(0, 120_000, 10_000),
  CALL_CONTROL_GRACE_MS: intIn(0, 60_000, 5_000),
  MARK_INTERVAL_MS: intIn(20, 2_000, 160),
  PREINIT_BUFFER_MS: intIn(0, 60_000, 15_000),
  AUDIO_IN_BATCH_MS: intIn(0, 500, 0),
  DTMF_GATHER_MS: intIn(200, 10_000, 1_500),
  APOLOGY_TEXT: text(1000, 'Sorry, we are having trouble connecting your call. Please try again later. Goodbye.'),
  BUSY_TEXT: text(1000, 'Sorry, all of our agents are busy right now. Please call again in a few minutes. Goodbye.'),
  GOODBYE_TEXT: text(1000, 'We have to end this call now. Thank you for calling. Goodbye.'),
  TRANSFER_RETURN_TEXT: text(1000, 'Sorry, nobody could take your call. I am putting you back now.'),
  TRANSFER_HOLD_URL: optionalString,
  SAY_VOICE: optionalString,
  AGENT_LIMITS: optionalString,
  AGENT_CAPACITY_COOLDOWN_S: intIn(1, 3600, 60),
  OVERFLOW_ACTION: z.preprocess(emptyToUndefined, oneOf(['say', 'dial']).default('say')),
  FALLBACK_NUMBER: e164,
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
  API_TOKEN: secret,
  METRICS_TOKEN: secret,
  DEFAULT_CALLER_ID: e164,
  DEFAULT_COUNTRY: optional(z.string().refine(isCountryCode, { error: 'a two-letter country code like US' })),
  OUTBOUND_MAX_CPS: optional(
    z
      .string()
      .trim()
      .regex(/^\d{1,4}(\.\d{1,3})?$/, { error: 'a number of dials per second above 0 and at most 1000, like 1 or 0.5' })
      .transform(Number)
      .pipe(z.number().positive({ error: 'a number of dials per second above 0 and at most 1000, like 1 or 0.5' }).max(1000, { error: 'a number of dials per second above 0 and at most 1000, like 1 or 0.5' })),
  ),
  INBOUND_RESERVED: intIn(0, 100_000, 0),
  RING_TIMEOUT_S: intIn(5, 600, 30),
  LOCAL_CARRIER_OUTCOMES: z.preprocess(emptyToUndefined, z.string().default('answered:70,busy:10,no-answer:10,voicemail:10')),
  LOCAL_CARRIER_TALK_S: intIn(1, 3600, 8),
  WEBHOOK_URL: optionalString,
  WEBHOOK_SECRET: secret,
  WEBHOOK_EVENTS: z.preprocess(emptyToUndefined, z.string().default('call.completed')),
  EVENTS_RETENTION_S: intIn(10, 86_400, 600),
  PLAYAI_USER_ID: optionalString,
  PLAYAI_API_URL: z.preprocess(emptyToUndefined, z.string().default('https://api.play.ai')),
  TTS: optional(oneOf(['off', 'playai', 'local'])),
  TTS_VOICE: optional(z.string().max(1000, { error: 'a voice id or manifest URL of at most 1000 characters' })),
  TTS_MODEL: z.preprocess(emptyToUndefined, z.string().regex(/^[A-Za-z0-9._-]{1,64}$/, { error: 'a PlayAI TTS model name like Play3.0-mini or PlayDialog' }).default('Play3.0-mini')),
  PLAYAI_TTS_URL: z.preprocess(emptyToUndefined, z.string().default('https://api.play.ai/api/v1/tts/websocket-auth')),
  TTS_CACHE_MB: intIn(1, 100_000, 50),
  RECORDING: z.preprocess(emptyToUndefined, oneOf(['off', 'local', 'twilio']).default('off')),
  RECORDING_DEFAULT: z.preprocess(emptyToUndefined, oneOf(['on', 'off']).default('on')),
  RECORDING_CONSENT_TEXT: optional(z.string().max(1000, { error: 'a text of at most 1000 characters' })),
  RECORDING_RETENTION_DAYS: intIn(0, 36_500, 0),
  REDIS_URL: optional(z.string().regex(/^rediss?:\/\/[^\s]+$/, { error: 'a Redis URL like redis://127.0.0.1:6379 (rediss:// for TLS), or leave it unset for one process' })),
  FLEET_PREFIX: z.preprocess(emptyToUndefined, z.string().regex(/^[A-Za-z0-9:_.-]{1,64}$/, { error: 'a key prefix of 1 to 64 letters, digits, ":", "_", "." or "-", like playline:' }).default('playline:')),
  FLEET_LEASE_MS: intIn(1_000, 600_000, 15_000),
  WORKERS: z.preprocess(
    emptyToUndefined,
    z
      .string()
      .trim()
      .regex(/^(auto|\d{1,4})$/, { error: WORKERS_TEXT })
      .transform((v) => (v === 'auto' ? availableParallelism() : Number(v)))
      .pipe(z.number().min(1, { error: WORKERS_TEXT }).max(1024, { error: WORKERS_TEXT }))
      .default(1),
  ),
  DATABASE_URL: optional(
    z.string().regex(/^postgres(ql)?:\/\/[^\s]+$/, { error: 'a Postgres URL like postgres://user:password@host:5432/playline (postgresql:// works too), or leave it unset to keep the records in SQLite in DATA_DIR' }),
  ),
});

/** Every variable Playline reads. */
export const SETTING_NAMES: readonly string[] = Object.keys(envSchema.shape);

/** Values of variables whose name says they are secret are never echoed in messages. */
export function isSecretName(name: string): boolean {
  return /TOKEN|KEY|SECRET|PASSWORD|REDIS_URL|DATABASE_URL/i.test(name);
}

/** How an error message shows the value of `name`: quoted (and cut if long), or `(hidden)` for secrets. */
export function shownValue(name: string, value: string | undefined): string {
  if (value === undefined) return '(unset)';
  if (isSecretName(name)) return '(hidden)';
  return JSON.stringify(value.length > 80 ? `${value.slice(0, 77)}...` : value);
}

const OUTCOME_NAMES = LOCAL_OUTCOMES;

/** Parses WEBHOOK_EVENTS: a comma list of event types, or `none`. Exported for tests. */
export function parseWebhookEvents(text: string): WebhookEventType[] {
  if (text.trim().toLowerCase() === 'none') return [];
  const out: WebhookEventType[] = [];
  for (const part of text.split(',')) {
    const name = part.trim();
    const known = WEBHOOK_EVENT_TYPES.find((t) => t === name);
    if (known === undefined) {
      throw new ConfigError(
        `WEBHOOK_EVENTS: ${JSON.stringify(name)} is not an event type; use a comma-separated list of ${WEBHOOK_EVENT_TYPES.join(', ')} (or none), like call.completed,call.started`,
      );
    }
    if (!out.includes(known)) out.push(known);
  }
  return out;
}

/** Parses `answered:70,busy:10,...` (weights; missing outcomes weigh 0). Exported for tests. */
export function parseOutcomeWeights(text: string): Record<(typeof OUTCOME_NAMES)[number], number> {
  const out = { answered: 0, busy: 0, 'no-answer': 0, voicemail: 0, failed: 0 };
  for (const part of text.split(',')) {
    const m = /^\s*([a-z-]+)\s*[:=]\s*(\d{1,6})\s*$/.exec(part);
    const name = m?.[1];
    if (m === null || name === undefined || !(OUTCOME_NAMES as readonly string[]).includes(name)) {
      throw new ConfigError(
        `LOCAL_CARRIER_OUTCOMES: ${shownValue('LOCAL_CARRIER_OUTCOMES', text)} is not a list of outcome:weight pairs of ${OUTCOME_NAMES.join(', ')}, like answered:70,busy:30 (bad part: ${JSON.stringify(part)})`,
      );
    }
    out[name as (typeof OUTCOME_NAMES)[number]] = Number(m[2]);
  }
  if (Object.values(out).every((w) => w === 0)) {
    throw new ConfigError(`LOCAL_CARRIER_OUTCOMES: ${shownValue('LOCAL_CARRIER_OUTCOMES', text)} has no weight above 0 (at least one outcome must be possible)`);
  }
  return out;
}

const agentRefSchema = z.string().refine((v) => AGENT_REF.test(v) && parseAgentRef(v) !== undefined, { error: AGENT_REF_TEXT });
const routeSchema = z
  .object({
    agentId: agentRefSchema,
    prompt: z.string().max(10_000).optional(),
    customGreeting: z.string().max(1_000).optional(),
    transferTargets: transferTargetsSchema.optional(),
    dtmf: z.record(z.string().regex(/^[0-9*#]$/, 'a hotkey is one key: 0-9, * or #'), dtmfActionSchema).optional(),
    record: z.boolean({ error: 'true or false' }).optional(),
  })
  .strict();
const routesFileSchema = z.record(z.string(), routeSchema);

const audioFormatSchema = z
  .object({ encoding: z.enum(['mulaw', 'linear16'], { error: 'mulaw or linear16' }), sampleRate: z.union([z.literal(8000), z.literal(16000), z.literal(22050), z.literal(24000), z.literal(44100), z.literal(48000)], { error: 'one of 8000, 16000, 22050, 24000, 44100, 48000' }) })
  .strict();
const agentDefinitionSchema = z
  .object({
    instructions: z.string().max(50_000).optional(),
    greeting: z.string().max(2_000).optional(),
    voice: z.string().max(200).optional(),
    model: z.string().max(200).optional(),
    language: z.string().regex(/^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$/, { error: 'a language tag like en or en-US' }).optional(),
    tools: z.array(httpToolSchema).max(64).optional(),
    transferTargets: transferTargetsSchema.optional(),
    fallback: z.array(agentRefSchema).max(8).optional(),
    format: z.object({ input: audioFormatSchema.optional(), output: audioFormatSchema.optional() }).strict().optional(),
    record: z.boolean({ error: 'true or false' }).optional(),
  })
  .strict();
const agentsFileSchema = z.record(agentRefSchema, agentDefinitionSchema);

/** An issue's message; for a bad record key, the key's own issue ("a hotkey is one key…", not "Invalid key in record"). */
function issueText(issue: z.core.$ZodIssue): string {
  if (issue.code === 'invalid_key') {
    const inner = issue.issues[0];
    if (inner !== undefined) return `${JSON.stringify(String(issue.path.at(-1) ?? ''))}: ${inner.message}`;
  }
  return issue.message;
}

/** Parses AGENTS_FILE: `{ "openai:gpt-realtime": { "instructions": …, "fallback": ["playai:…"] }, … }`. Exported for tests. */
export function parseAgentsFile(path: string): Map<string, AgentDefinition> {
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    throw new ConfigError(`AGENTS_FILE: cannot read ${path} as JSON (${(err as Error).message})`);
  }
  const parsed = agentsFileSchema.safeParse(raw);
  if (!parsed.success) {
    const first = parsed.error.issues[0];
    const where = first ? first.path.map(String).join('.') : '';
    throw new ConfigError(`AGENTS_FILE: ${path}: ${where ? `${where}: ` : ''}${first === undefined ? 'invalid' : issueText(first)}`);
  }
  const out = new Map<string, AgentDefinition>();
  for (const [name, def] of Object.entries(parsed.data)) {
    const ref = normalizeRef(name);
    if (out.has(ref)) throw new ConfigError(`AGENTS_FILE: ${path}: ${JSON.stringify(name)} names the same agent as another key (${ref})`);
    const fallback = def.fallback?.map(normalizeRef);
    if (fallback?.includes(ref)) throw new ConfigError(`AGENTS_FILE: ${path}: ${name}.fallback: an agent cannot be its own fallback`);
    out.set(ref, { ...def, ...(fallback !== undefined ? { fallback } : {}) });
  }
  return out;
}

/** `provider:id` of a validated agent name. */
function normalizeRef(name: string): string {
  const ref = parseAgentRef(name);
  if (ref === undefined) throw new ConfigError(`${JSON.stringify(name)} is not ${AGENT_REF_TEXT}`);
  return formatAgentRef(ref);
}

/** The variable a provider needs before any of its agents can be used (ElevenLabs public agents need none). */
const PROVIDER_KEY: Record<AgentProviderName, string | undefined> = { playai: undefined, openai: 'OPENAI_API_KEY', elevenlabs: undefined, deepgram: 'DEEPGRAM_API_KEY' };

/** `PORT: "abc" is not a whole number from 0 to 65535`: the variable, its value (unless secret), what it should be. */
function formatIssue(issue: z.core.$ZodIssue, env: Record<string, string | undefined>): string {
  const name = issue.path.length ? String(issue.path[0]) : '(env)';
  return `${name}: ${shownValue(name, env[name])} is not ${issue.message}`;
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
    throw new ConfigError(`ROUTES_FILE: ${path}: ${where ? `${where}: ` : ''}${first === undefined ? 'invalid' : issueText(first)}`);
  }
  const routes = new Map<string, NumberRoute>();
  for (const [number, route] of Object.entries(parsed.data)) {
    if (!E164_SHAPE.test(number)) {
      throw new ConfigError(`ROUTES_FILE: ${path}: ${JSON.stringify(number)} is not an E.164 number like +15551234567`);
    }
    routes.set(number, { ...route, agentId: normalizeRef(route.agentId) });
  }
  return routes;
}

function parseUrl(name: string, value: string, schemes: string[]): URL {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError(`${name}: ${shownValue(name, value)} is not a URL (expected ${schemes.map((s) => `${s}//…`).join(' or ')})`);
  }
  if (!schemes.includes(url.protocol)) {
    throw new ConfigError(`${name}: ${shownValue(name, value)} is not a URL starting with ${schemes.map((s) => `${s}//`).join(' or ')}`);
  }
  return url;
}

/** The id the local agent answers for when no agent is configured. */
export const LOCAL_AGENT_ID = 'local-echo';

/** The default agent when OPENAI_API_KEY is the only agent credential. */
export const DEFAULT_OPENAI_AGENT = 'openai:gpt-realtime';

/** Caller id of simulated calls in local mode when DEFAULT_CALLER_ID is not set. */
export const LOCAL_CALLER_ID = '+12025550100';

/**
 * Builds the configuration from an environment map (normally `process.env`).
 * Throws {@link ConfigError} naming the first bad variable.
 */
export function loadConfig(env: Record<string, string | undefined> = process.env): Config {
  const parsed = envSchema.safeParse(env);
  if (!parsed.success) {
    throw new ConfigError(parsed.error.issues.map((issue) => formatIssue(issue, env)).join('; '));
  }
  const e = parsed.data;

  const anyAgentCredentials = e.PLAYAI_API_KEY !== undefined || e.OPENAI_API_KEY !== undefined || e.ELEVENLABS_API_KEY !== undefined || e.DEEPGRAM_API_KEY !== undefined;
  const localAgent = !anyAgentCredentials && e.DEFAULT_AGENT === undefined;
  let defaultAgent: string;
  if (e.DEFAULT_AGENT !== undefined) defaultAgent = normalizeRef(e.DEFAULT_AGENT);
  else if (e.PLAYAI_AGENT_ID !== undefined) defaultAgent = `playai:${e.PLAYAI_AGENT_ID}`;
  else if (localAgent) defaultAgent = `playai:${LOCAL_AGENT_ID}`;
  else if (e.PLAYAI_API_KEY !== undefined && e.OPENAI_API_KEY === undefined && e.DEEPGRAM_API_KEY === undefined && e.ELEVENLABS_API_KEY === undefined) {
    throw new ConfigError('PLAYAI_AGENT_ID: required when PLAYAI_API_KEY is set (the agent for numbers without a route; or set DEFAULT_AGENT=playai:<agent id>)');
  }
  else if (e.OPENAI_API_KEY !== undefined && e.PLAYAI_API_KEY === undefined && e.DEEPGRAM_API_KEY === undefined && e.ELEVENLABS_API_KEY === undefined) defaultAgent = DEFAULT_OPENAI_AGENT;
  else {
    throw new ConfigError(
      `DEFAULT_AGENT: required (the agent for numbers without a route), like ${e.OPENAI_API_KEY !== undefined ? DEFAULT_OPENAI_AGENT : e.DEEPGRAM_API_KEY !== undefined ? 'deepgram:support' : e.ELEVENLABS_API_KEY !== undefined ? 'elevenlabs:<agent id from the ElevenLabs dashboard>' : 'playai:<agent id> (or set PLAYAI_AGENT_ID)'}`,
    );
  }
  if (e.TWILIO_ACCOUNT_SID !== undefined && e.TWILIO_AUTH_TOKEN === undefined) {
    throw new ConfigError('TWILIO_AUTH_TOKEN: required when TWILIO_ACCOUNT_SID is set');
  }
  if (e.WORKERS > 1 && e.REDIS_URL === undefined) {
    throw new ConfigError(
      `WORKERS: ${e.WORKERS} worker processes need REDIS_URL, because they must share call capacity (MAX_CONCURRENT_CALLS), ` +
        'single-use stream tokens and call routing (a webhook, its media stream and its status callbacks may reach different workers): ' +
        'set REDIS_URL=redis://127.0.0.1:6379 (a Redis all workers reach), or WORKERS=1 for one process',
    );
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
      throw new ConfigError(`PUBLIC_URL: ${shownValue('PUBLIC_URL', e.PUBLIC_URL)} is not an origin only (no path, query or user), like https://voice.example.com`);
    }
    publicUrl = url.origin;
  }
  const streamUrl = `${publicUrl.replace(/^http/, 'ws')}/twilio/media-stream`;

  const wsUrl = parseUrl('PLAYAI_WS_URL', e.PLAYAI_WS_URL, ['wss:', 'ws:']);
  if (wsUrl.search || wsUrl.hash) {
    throw new ConfigError(`PLAYAI_WS_URL: ${shownValue('PLAYAI_WS_URL', e.PLAYAI_WS_URL)} is not a base URL without a query string or fragment`);
  }

  const openaiUrl = parseUrl('OPENAI_REALTIME_URL', e.OPENAI_REALTIME_URL, ['wss:', 'ws:']);
  const elevenlabsUrl = parseUrl('ELEVENLABS_URL', e.ELEVENLABS_URL, ['https:', 'http:', 'wss:', 'ws:']);
  const deepgramUrl = parseUrl('DEEPGRAM_AGENT_URL', e.DEEPGRAM_AGENT_URL, ['wss:', 'ws:']);
  let definitions = new Map<string, AgentDefinition>();
  if (e.AGENTS_FILE !== undefined) {
    const agentsFile = resolve(e.AGENTS_FILE);
    if (!existsSync(agentsFile)) throw new ConfigError(`AGENTS_FILE: ${shownValue('AGENTS_FILE', e.AGENTS_FILE)} is not a file that exists (looked for ${agentsFile})`);
    definitions = parseAgentsFile(agentsFile);
  }

  let routes = new Map<string, NumberRoute>();
  if (e.ROUTES_FILE !== undefined) {
    const routesFile = resolve(e.ROUTES_FILE);
    if (!existsSync(routesFile)) throw new ConfigError(`ROUTES_FILE: ${shownValue('ROUTES_FILE', e.ROUTES_FILE)} is not a file that exists (looked for ${routesFile})`);
    routes = parseRoutesFile(routesFile);
  }

  const agentLimits = new Map<string, number>();
  if (e.AGENT_LIMITS !== undefined) {
    for (const part of e.AGENT_LIMITS.split(',')) {
      // `agent=max` (or `agent:max` for a bare PlayAI id); the agent may itself be `provider:id`.
      const m = /^\s*(\S+?)\s*[:=]\s*(\d{1,6})\s*$/.exec(part);
      const ref = m?.[1] === undefined ? undefined : AGENT_REF.test(m[1]) ? parseAgentRef(m[1]) : undefined;
      if (m === null || ref === undefined || m[2] === undefined) {
        throw new ConfigError(
          `AGENT_LIMITS: ${shownValue('AGENT_LIMITS', e.AGENT_LIMITS)} is not a list of agent=max pairs separated by commas, like openai:gpt-realtime=5,playai:sales=10 (bad part: ${JSON.stringify(part)})`,
        );
      }
      agentLimits.set(formatAgentRef(ref), Number(m[2]));
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
    throw new ConfigError(
      `INBOUND_RESERVED: "${e.INBOUND_RESERVED}" is not below MAX_CONCURRENT_CALLS (${e.MAX_CONCURRENT_CALLS}), so outbound calls could never be placed`,
    );
  }
  let webhookUrl: string | undefined;
  if (e.WEBHOOK_URL !== undefined) webhookUrl = parseUrl('WEBHOOK_URL', e.WEBHOOK_URL, ['https:', 'http:']).href;
  const playaiApi = parseUrl('PLAYAI_API_URL', e.PLAYAI_API_URL, ['https:', 'http:']).href.replace(/\/+$/, '');
  const localCarrier = e.TWILIO_ACCOUNT_SID === undefined;

  // A route's hotkeys transfer to targets the route or its agent declares.
  for (const [number, route] of routes) {
    for (const [key, action] of Object.entries(route.dtmf ?? {})) {
      const known = { ...definitions.get(route.agentId)?.transferTargets, ...route.transferTargets };
      if (!Object.hasOwn(known, action.transfer)) {
        const names = Object.keys(known);
        throw new ConfigError(
          `ROUTES_FILE: ${number}: dtmf.${key} transfers to ${JSON.stringify(action.transfer)}, which is not a transfer target of this route or of its agent ${route.agentId}` +
            (names.length > 0 ? ` (targets: ${names.join(', ')})` : ': add it to the route\'s transferTargets'),
        );
      }
    }
  }

  if (e.RECORDING === 'twilio' && localCarrier) {
    throw new ConfigError('RECORDING: "twilio" needs Twilio credentials (set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN), or use RECORDING=local to record on this server');
  }
  if (e.RECORDING === 'off') {
    const asks = [...[...routes].filter(([, r]) => r.record === true).map(([n]) => `ROUTES_FILE (${n})`), ...[...definitions].filter(([, d]) => d.record === true).map(([ref]) => `AGENTS_FILE (${ref})`)];
    if (asks.length > 0) throw new ConfigError(`RECORDING: required because ${asks[0]} says record: true; set RECORDING=local (a WAV in DATA_DIR/recordings) or RECORDING=twilio`);
  }

  // Every agent the configuration names must be reachable: a provider without its key stops the boot.
  const named: Array<{ ref: string; where: string }> = [{ ref: defaultAgent, where: e.DEFAULT_AGENT !== undefined ? 'DEFAULT_AGENT' : 'the default agent' }];
  for (const [number, route] of routes) named.push({ ref: route.agentId, where: `ROUTES_FILE (${number})` });
  for (const [ref, def] of definitions) {
    named.push({ ref, where: 'AGENTS_FILE' });
    for (const f of def.fallback ?? []) named.push({ ref: f, where: `AGENTS_FILE (fallback of ${ref})` });
  }
  for (const ref of agentLimits.keys()) named.push({ ref, where: 'AGENT_LIMITS' });
  const keys: Record<AgentProviderName, string | undefined> = { playai: e.PLAYAI_API_KEY, openai: e.OPENAI_API_KEY, elevenlabs: e.ELEVENLABS_API_KEY, deepgram: e.DEEPGRAM_API_KEY };
  for (const { ref, where } of named) {
    const provider = parseAgentRef(ref)?.provider;
    const key = provider === undefined ? undefined : PROVIDER_KEY[provider];
    if (key !== undefined && provider !== undefined && keys[provider] === undefined) {
      throw new ConfigError(`${key}: required because ${where} names ${ref}`);
    }
  }

  const ttsAuthUrl = parseUrl('PLAYAI_TTS_URL', e.PLAYAI_TTS_URL, ['https:', 'http:']).href;
  const playaiDefault = parseAgentRef(defaultAgent)?.provider === 'playai' && !localAgent;
  let ttsMode: Config['tts']['mode'];
  if (e.TTS !== undefined) ttsMode = e.TTS;
  // PlayAI keys for TTS, and a voice (TTS_VOICE, or the PlayAI default agent's own).
  else if (e.PLAYAI_API_KEY !== undefined && e.PLAYAI_USER_ID !== undefined && (e.TTS_VOICE !== undefined || playaiDefault)) ttsMode = 'playai';
  // A new user with no keys at all hears the prompts through the built-in TTS service.
  else if (localAgent && e.TWILIO_AUTH_TOKEN === undefined) ttsMode = 'local';
  else ttsMode = 'off';
  if (ttsMode === 'playai') {
    if (e.PLAYAI_API_KEY === undefined) throw new ConfigError('PLAYAI_API_KEY: required when TTS=playai (the key the TTS socket auth takes; or set TTS=off)');
    if (e.PLAYAI_USER_ID === undefined) throw new ConfigError('PLAYAI_USER_ID: required when TTS=playai (the X-User-Id of the TTS socket auth; or set TTS=off)');
    if (e.TTS_VOICE === undefined && !playaiDefault) {
      throw new ConfigError('TTS_VOICE: required when TTS=playai and the default agent is not a PlayAI agent (a PlayAI voice id or manifest URL, like s3://voice-cloning-zero-shot/…/manifest.json; or set TTS=off)');
    }
  }

  return {
    port: e.PORT,
    host: e.HOST,
    logLevel: e.LOG_LEVEL,
    logFormat: e.LOG_FORMAT,
    metricsToken: e.METRICS_TOKEN,
    publicUrl,
    streamUrl,
    twilio: { accountSid: e.TWILIO_ACCOUNT_SID, authToken: e.TWILIO_AUTH_TOKEN },
    playai: {
      apiKey: e.PLAYAI_API_KEY,
      wsUrl: wsUrl.href.replace(/\/+$/, ''),
    },
    agents: {
      defaultAgent,
      ...(e.OPENAI_API_KEY !== undefined ? { openai: { apiKey: e.OPENAI_API_KEY, url: openaiUrl.href } } : {}),
      elevenlabs: { apiKey: e.ELEVENLABS_API_KEY, url: elevenlabsUrl.href.replace(/\/+$/, '') },
      ...(e.DEEPGRAM_API_KEY !== undefined ? { deepgram: { apiKey: e.DEEPGRAM_API_KEY, url: deepgramUrl.href } } : {}),
      definitions,
    },
    localAgent,
    localAgentOptions: { port: e.LOCAL_AGENT_PORT, mode: e.LOCAL_AGENT_MODE },
    routes,
    maxConcurrentCalls: e.MAX_CONCURRENT_CALLS,
    ...(e.REDIS_URL !== undefined ? { fleet: { redisUrl: e.REDIS_URL, prefix: e.FLEET_PREFIX, leaseMs: e.FLEET_LEASE_MS } } : {}),
    workers: e.WORKERS,
    ...(e.DATABASE_URL !== undefined ? { database: { url: e.DATABASE_URL } } : {}),
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
    media: { markIntervalMs: e.MARK_INTERVAL_MS, preInitBufferMs: e.PREINIT_BUFFER_MS, audioInBatchMs: e.AUDIO_IN_BATCH_MS, dtmfGatherMs: e.DTMF_GATHER_MS },
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
    webhook: { url: webhookUrl, secret: e.WEBHOOK_SECRET, events: parseWebhookEvents(e.WEBHOOK_EVENTS) },
    eventsRetentionMs: e.EVENTS_RETENTION_S * 1000,
    playaiRest: { baseUrl: playaiApi, userId: e.PLAYAI_USER_ID },
    tts: { mode: ttsMode, ...(e.TTS_VOICE !== undefined ? { voice: e.TTS_VOICE } : {}), model: e.TTS_MODEL, authUrl: ttsAuthUrl, cacheBytes: e.TTS_CACHE_MB * 1024 * 1024 },
    recording: {
      backend: e.RECORDING,
      byDefault: e.RECORDING_DEFAULT === 'on',
      ...(e.RECORDING_CONSENT_TEXT !== undefined && e.RECORDING_CONSENT_TEXT.trim() !== '' ? { consentText: e.RECORDING_CONSENT_TEXT.trim() } : {}),
      retentionDays: e.RECORDING_RETENTION_DAYS,
      dir: join(resolve(e.DATA_DIR), 'recordings'),
    },
    messages: {
      apology: e.APOLOGY_TEXT,
      busy: e.BUSY_TEXT,
      goodbye: e.GOODBYE_TEXT,
      transferReturn: e.TRANSFER_RETURN_TEXT,
      ...(e.TRANSFER_HOLD_URL !== undefined ? { transferHoldUrl: parseUrl('TRANSFER_HOLD_URL', e.TRANSFER_HOLD_URL, ['https:', 'http:']).href } : {}),
      voice: e.SAY_VOICE,
      language: e.SAY_LANGUAGE,
    },
  };
}

/** Loads `.env` from the working directory into `process.env` if present (existing variables win). */
export function loadDotEnv(path = '.env'): boolean {
  if (!existsSync(path)) return false;
  process.loadEnvFile(path);
  return true;
}

/** Damerau-Levenshtein distance (optimal string alignment): a swap of two neighbours counts as one edit. */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => Array.from({ length: b.length + 1 }, (_, j) => (i === 0 ? j : j === 0 ? i : 0)));
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  }
  return d[a.length]![b.length]!;
}

const firstWord = (name: string): string => name.split('_')[0] ?? name;
const KNOWN = new Set(SETTING_NAMES);
const KNOWN_FIRST_WORDS = new Set(SETTING_NAMES.map(firstWord));

/**
 * Variables that look like a misspelt Playline setting (`MAX_CONCURENT_CALLS`, `port`), each
 * with the setting it is probably meant to be. A name is suspect when, in upper case, it is a
 * setting, or it is at most 2 edits from one and shares its first word (`MAX_`, `TWILIO_`…),
 * or it is close on its own: 1 edit for names of 4+ characters, 2 for names of 10+. Variables
 * of other programs (PATH, HOME, NODE_*, npm_*) are never reported.
 */
export function misspeltSettings(names: Iterable<string>): Array<{ name: string; suggestion: string }> {
  const out: Array<{ name: string; suggestion: string }> = [];
  for (const name of names) {
    if (KNOWN.has(name) || !/^[A-Za-z][A-Za-z0-9_]*$/.test(name) || /^(npm_|NODE_)/i.test(name)) continue;
    const upper = name.toUpperCase();
    if (KNOWN.has(upper)) {
      out.push({ name, suggestion: upper });
      continue;
    }
    let best: { suggestion: string; distance: number } | undefined;
    for (const known of SETTING_NAMES) {
      const distance = editDistance(upper, known);
      if (distance <= 2 && (best === undefined || distance < best.distance)) best = { suggestion: known, distance };
    }
    if (best === undefined) continue;
    const sharesFirstWord = KNOWN_FIRST_WORDS.has(firstWord(upper)) && firstWord(upper) === firstWord(best.suggestion);
    const close = (best.distance <= 1 && upper.length >= 4) || upper.length >= 10;
    if (sharesFirstWord || close) out.push({ name, suggestion: best.suggestion });
  }
  return out;
}
