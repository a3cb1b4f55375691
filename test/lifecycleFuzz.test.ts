/**
 * Lifecycle fuzz: thousands of randomized call lifecycles, in memory, on fake
 * timers and one seeded PRNG. A failure names its seed; replay it exactly with
 * `FUZZ_SEED=<n> npx vitest run test/lifecycleFuzz.test.ts`.
 *
 * Real code under test: SessionManager, the media-stream route's `onStart`
 * (claim → CallSession → register → start, captured from `mediaStreamRoute`),
 * TwilioStreamConnection (fed by a fake `ws` socket) and CallSession. Fakes: the
 * Twilio socket, the agent legs (any message, bad frames, closes with or without
 * error, never-init) and call control (accepts, refuses, rejects, slow).
 *
 * Pinned down after every step, not only at the end:
 * - slots: usedSlots = live sessions + pending reservations of the model, never
 *   negative, never above MAX_CONCURRENT_CALLS; admissions, refusals and claims
 *   (good, unknown, missing, replayed, expired, mismatched tokens) match the
 *   model; reservations expire exactly at their TTL; the 4429-learned capacity
 *   matches the live agent sessions and is lifted when a call ends or cools down.
 * - sessions: a closed session is never listed; its Twilio socket and agent legs
 *   are closed or closing; nothing reaches the carrier after close; only media,
 *   mark and clear with Twilio's exact fields are ever sent.
 * - every step moves a session only along the transitions its cause allows, and
 *   what is spoken matches: apology for agent failures, busy for 4429, goodbye
 *   for drain and maximum length, nothing for clean hang-ups.
 * - reconnect budgets: a lost agent leg is retried or the call ends exactly as
 *   the model of the budget says (attempts and window per outage, an outage
 *   continued by a leg lost within AGENT_STABLE_MS of its init, a cap per
 *   call; only the ±25 % backoff jitter leaves a band where both are allowed),
 *   and no retry ever opens a leg outside the budget, timers included.
 * - a Twilio socket that stops draining: agent audio is dropped, not queued,
 *   and the call ends (`carrier_stalled`) once it stays stuck CARRIER_STALL_MS.
 * - caller audio: frames sent while the agent is live reach it at once, in order;
 *   frames of a gap (before init, during a reconnect) reach the next agent leg
 *   in order, all of them while the buffer bound holds, else its newest suffix.
 * - at every quiet point: zero slots and sessions, every fake socket closed, and
 *   the only timers left are the bridge's 2 s terminate timers and the sweep
 *   interval; after dispose() they are gone and vi.getTimerCount() is 0.
 */
import { newSpan } from '../src/util/jsonBytes.js';
import { scanAgentAudio } from '../src/agent/playai/scan.js';
import { EventEmitter } from 'node:events';
import pino from 'pino';
import type WebSocket from 'ws';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it, vi } from 'vitest';
import type { PlayAiCloseInfo, PlayAiConnector, PlayAiSocket, PlayAiSocketOptions } from '../src/agent/playai/leg.js';
import { decodeAgentMessage } from '../src/agent/playai/codec.js';
import { TwilioStreamConnection } from '../src/carrier/twilio/stream.js';
import { loadConfig, type NumberRoute } from '../src/config.js';
import { streamRouteSettings, streamSocketHandler } from '../src/http/mediaStream.js';
import { Metrics } from '../src/metrics.js';
import { CARRIER_STALL_MS, MAX_CARRIER_SOCKET_BUFFER, type CallSession, type SessionSettings, type SessionState } from '../src/session/callSession.js';
import { SessionManager, type ClaimResult } from '../src/session/manager.js';
import { FakeCallControl } from '../src/testing/fakeCallControl.js';
import { RecordingJournal } from '../src/testing/recordingJournal.js';
import { Rng } from '../src/util/prng.js';
import { playaiDirectory } from './playaiDirectory.js';

// Captured before any test fakes the timers: yields to the real event loop so every microtask runs.
const realSetImmediate = globalThis.setImmediate;
const realDateNow = Date.now.bind(Date);
const flushMicrotasks = (): Promise<void> => new Promise((resolve) => realSetImmediate(resolve));

const MASTER_SEED = process.env.FUZZ_SEED !== undefined && process.env.FUZZ_SEED !== '' ? Number(process.env.FUZZ_SEED) >>> 0 : 20_240_611;

// ---------------------------------------------------------------- seeded PRNG


// ---------------------------------------------------------------- protocol facts the oracle relies on (documented, not imported)

const NON_RETRYABLE = [1001, 1002, 1003, 1005, 4400, 4401, 4429];
const RETRYABLE = [4500, 3001, 3002, 3003, 3004, 5001];
const UNKNOWN_CODES = [999, 4000, 4999, 1234];
const ACTIVE: ReadonlySet<SessionState> = new Set(['connecting', 'live', 'reconnecting']);
/** The session stops feeding an agent socket with this much queued (CallSession's MAX_AGENT_SOCKET_BUFFER). */
const STUCK_AGENT_BUFFER = 2 * 1024 * 1024;
/** A Twilio socket that stopped draining holds more than the session's bound. */
const STUCK_CARRIER_BUFFER = MAX_CARRIER_SOCKET_BUFFER + 1;
/** Reconnect backoff before retry n, before the ±25 % jitter (reconnect.ts). */
const BACKOFF_MS = [100, 400, 1000, 2000, 3000];
/** TwilioStreamConnection.close() terminates a socket that has not finished closing after this long. */
const TERMINATE_AFTER_MS = 2000;
const WS_OPEN = 1;
const WS_CLOSING = 2;
const WS_CLOSED = 3;

const TEXTS = loadConfig({ PLAYAI_API_KEY: 'k', PLAYAI_AGENT_ID: 'a' }).messages;
const APOLOGY = TEXTS.apology;
const BUSY = TEXTS.busy;
const GOODBYE = TEXTS.goodbye;
const FALLBACK_NUMBER = '+15550009999';

/** What may have been spoken to the caller, given how the call ended. */
function allowedSpoken(endReason: string): string[][] {
  switch (endReason) {
    case 'agent_error':
    case 'agent_unreachable':
    case 'agent_init_timeout':
      return [[APOLOGY]];
    case 'agent_capacity':
      return [[BUSY]];
    case 'max_duration':
      return [[GOODBYE]];
    case 'shutdown':
    case 'agent_hangup':
      return [[], [GOODBYE]];
    case 'caller_hangup':
    case 'idle':
    case 'carrier_gone':
    case 'carrier_stalled':
    case 'replaced':
    case 'internal_error':
      return [[]];
    default:
      return [];
  }
}

const bytesOf = (b64: string): number => Buffer.from(b64, 'base64').length;
const now = (): number => performance.now();

// ---------------------------------------------------------------- Twilio frames (what Twilio sends)

const ACCOUNT_SID = `AC${'0'.repeat(32)}`;
const tw = {
  connected: (): string => '{"event":"connected","protocol":"Call","version":"1.0.0"}',
  start: (streamSid: string, callSid: string, params: Record<string, string>): string =>
    JSON.stringify({
      event: 'start',
      sequenceNumber: '1',
      streamSid,
      start: {
        accountSid: ACCOUNT_SID,
        streamSid,
        callSid,
        tracks: ['inbound'],
        customParameters: params,
        mediaFormat: { encoding: 'audio/x-mulaw', sampleRate: 8000, channels: 1 },
      },
    }),
  media: (sid: string, payload: string): string =>
    `{"event":"media","sequenceNumber":"2","streamSid":${JSON.stringify(sid)},"media":{"track":"inbound","chunk":"1","timestamp":"0","payload":"${payload}"}}`,
  mark: (sid: string, name: string): string => JSON.stringify({ event: 'mark', sequenceNumber: '3', streamSid: sid, mark: { name } }),
  dtmf: (sid: string, digit: string): string => JSON.stringify({ event: 'dtmf', sequenceNumber: '4', streamSid: sid, dtmf: { track: 'inbound_track', digit } }),
  stop: (sid: string): string => JSON.stringify({ event: 'stop', sequenceNumber: '5', streamSid: sid, stop: { accountSid: ACCOUNT_SID, callSid: 'CA0' } }),
};

/** A WAV header around `pcm` (the session strips it before relaying). */
function wavWrap(pcm: Buffer): Buffer {
  const h = Buffer.alloc(44);
  h.write('RIFF', 0, 'ascii');
  h.writeUInt32LE(36 + pcm.length, 4);
  h.write('WAVE', 8, 'ascii');
  h.write('fmt ', 12, 'ascii');
  h.writeUInt32LE(16, 16);
  h.writeUInt16LE(7, 20); // mu-law
  h.writeUInt16LE(1, 22);
  h.writeUInt32LE(8000, 24);
  h.writeUInt32LE(8000, 28);
  h.writeUInt16LE(1, 32);
  h.writeUInt16LE(8, 34);
  h.write('data', 36, 'ascii');
  h.writeUInt32LE(pcm.length, 40);
  return Buffer.concat([h, pcm]);
}

// ---------------------------------------------------------------- fake Twilio socket (the parts of `ws` TwilioStreamConnection uses)

class FakeTwilioWs extends EventEmitter {
  readyState = WS_OPEN;
  bufferedAmount = 0;
  /** When the bridge called close() on the open socket (its terminate timer fires 2 s later). */
  bridgeClosedAt: number | undefined;
  bridgeCloseCode: number | undefined;
  #timer: NodeJS.Timeout | undefined;
  #timerAt = Infinity;
  #finished = false;

  constructor(
    /** How long the caller takes to answer our close frame; undefined = never (only terminate ends it). */
    private readonly ackDelayMs: number | undefined,
    private readonly onFrame: (text: string) => void,
    private readonly onViolation: (why: string) => void,
  ) {
    super();
  }

  // ---- ws API used by the bridge
  send(data: unknown, opts?: { binary?: boolean }): void {
    if (this.readyState !== WS_OPEN) this.onViolation(`sent a frame on a Twilio socket in state ${this.readyState}`);
    // Like ws: strings are text frames; a Buffer is binary unless sent with { binary: false }.
    if (typeof data === 'string') this.onFrame(data);
    else if (Buffer.isBuffer(data) && opts?.binary === false) this.onFrame(data.toString('utf8'));
    else this.onViolation('sent a binary frame to Twilio');
  }

  close(code?: number): void {
    if (this.readyState !== WS_OPEN) return;
    this.readyState = WS_CLOSING;
    this.bridgeClosedAt = now();
    this.bridgeCloseCode = code;
    if (this.ackDelayMs !== undefined) this.#finishIn(this.ackDelayMs, code ?? 1005);
  }

  terminate(): void {
    if (this.#finished) return;
    this.readyState = WS_CLOSING;
    this.#finishIn(0, 1006);
  }

  // ---- the caller's side
  get finished(): boolean {
    return this.#finished;
  }

  deliver(text: string): void {
    if (!this.#finished) this.emit('message', Buffer.from(text), false);
  }

  deliverBinary(): void {
    if (!this.#finished) this.emit('message', Buffer.from([1, 2, 3]), true);
  }

  /** A close frame from the caller or a dropped TCP connection: the bridge sees 'close' now. */
  hangUp(code: number): void {
    this.#finish(code);
  }

  /** The caller's side went away but the socket lingers (ws finishes it within its close timeout). */
  halfClose(lingerMs: number): void {
    if (this.readyState !== WS_OPEN) return;
    this.readyState = WS_CLOSING;
    this.#finishIn(lingerMs, 1006);
  }

  /** A frame above maxPayload: ws reports the error, then closes with 1009. */
  oversized(): void {
    if (this.#finished) return;
    this.emit('error', Object.assign(new Error('Max payload size exceeded'), { code: 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH' }));
    this.#finish(1009);
  }

  #finishIn(ms: number, code: number): void {
    const at = now() + ms;
    if (at >= this.#timerAt) return;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timerAt = at;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#finish(code);
    }, ms);
  }

  #finish(code: number): void {
    if (this.#finished) return;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.readyState = WS_CLOSED;
    this.#finished = true;
    this.emit('close', code, Buffer.alloc(0));
  }
}

// ---------------------------------------------------------------- fake agent leg

type LegState = 'connecting' | 'open' | 'closing' | 'closed';

class FakeAgentLeg implements PlayAiSocket {
  state: LegState = 'connecting';
  readonly audio: string[] = [];
  bufferedAmount = 0;
  closedByUs = false;
  /** The agent started closing; the bridge has not been told yet. */
  peerClosing = false;
  /** The next sendAudio throws (injected handler crash). */
  throwOnSend = false;
  #timer: NodeJS.Timeout | undefined;
  readonly #span = newSpan();

  constructor(
    readonly opts: PlayAiSocketOptions,
    private readonly closeDelayMs: number,
    private readonly onInjected: () => void,
  ) {}

  get isOpen(): boolean {
    return this.state === 'open';
  }

  sendAudio(b64: string): boolean {
    if (this.throwOnSend) {
      this.throwOnSend = false;
      this.onInjected();
      throw new Error('injected: agent socket send failed');
    }
    if (this.state !== 'open') return false;
    this.audio.push(b64);
    return true;
  }

  sendAudioBytes(buf: Buffer, start: number, end: number): boolean {
    return this.sendAudio(buf.toString('latin1', start, end));
  }

  close(code = 1000, reason = ''): void {
    this.closedByUs = true;
    if (this.state === 'open' || this.state === 'connecting' || (this.state === 'closing' && this.#timer === undefined)) {
      this.state = 'closing';
      this.#timer = setTimeout(() => this.notifyClose(code, reason), this.closeDelayMs);
    }
  }

  // ---- the agent's side
  open(): void {
    if (this.state !== 'connecting') return;
    this.state = 'open';
  }

  /** One text frame from the agent, decoded as the real leg does. */
  deliver(text: string): void {
    const buf = Buffer.from(text, 'utf8');
    if (scanAgentAudio(buf, this.#span, 4 * 1024 * 1024)) {
      this.opts.handlers.onAudio(buf, this.#span.audioStart, this.#span.audioEnd);
      return;
    }
    const msg = decodeAgentMessage(text);
    if (msg.type === undefined) this.opts.handlers.onBadFrame(msg.kind, msg.name);
    else this.opts.handlers.onMessage(msg);
  }

  deliverBinary(): void {
    this.opts.handlers.onBadFrame('binary');
  }

  peerCloseStart(): void {
    if (this.state !== 'open' && this.state !== 'connecting') return;
    this.state = 'closing';
    this.peerClosing = true;
  }

  notifyClose(code: number, reason: string, error?: string): void {
    if (this.state === 'closed') return;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.state = 'closed';
    const info: PlayAiCloseInfo = { code, reason, byUs: this.closedByUs };
    if (error !== undefined) info.error = error;
    this.opts.handlers.onClose(info);
  }
}

// ---------------------------------------------------------------- call control: FakeCallControl that may also be slow or reject

type CallControlMode = 'accept' | 'refuse' | 'reject' | 'slow-accept' | 'slow-reject';

class FuzzCallControl extends FakeCallControl {
  readonly inflight = new Map<string, number>();
  readonly byCall = new Map<string, Array<{ text?: string; forwardTo?: string }>>();

  constructor(
    private readonly choose: () => { mode: CallControlMode; delayMs: number },
    private readonly onAccepted: (callSid: string) => void,
  ) {
    super();
    this.onRequest = (r) => {
      const list = this.byCall.get(r.callSid) ?? [];
      list.push(r.forwardTo === undefined ? { text: r.text } : { text: r.text, forwardTo: r.forwardTo });
      this.byCall.set(r.callSid, list);
    };
  }

  override sayAndHangup(callSid: string, text: string): Promise<boolean> {
    return this.#run(callSid, () => super.sayAndHangup(callSid, text));
  }

  override forward(callSid: string, number: string, text?: string): Promise<boolean> {
    return this.#run(callSid, () => super.forward(callSid, number, text));
  }

  async #run(callSid: string, request: () => Promise<boolean>): Promise<boolean> {
    const { mode, delayMs } = this.choose();
    this.accept = mode === 'accept' || mode === 'slow-accept';
    this.inflight.set(callSid, (this.inflight.get(callSid) ?? 0) + 1);
    try {
      const accepted = await request();
      if (mode === 'slow-accept' || mode === 'slow-reject') await new Promise((r) => setTimeout(r, delayMs));
      if (mode === 'reject' || mode === 'slow-reject') throw new Error('injected: Twilio REST request failed');
      if (accepted) this.onAccepted(callSid);
      return accepted;
    } finally {
      this.inflight.set(callSid, (this.inflight.get(callSid) ?? 1) - 1);
    }
  }
}

// ---------------------------------------------------------------- the model

interface ReservationModel {
  token: string;
  call: CallModel;
  status: 'pending' | 'used' | 'expired';
  expiresAt: number;
  /** I-Twilio-Idempotency-Token of the webhook that minted it. */
  idem: string | undefined;
}

interface CallModel {
  id: number;
  callSid: string;
  to: string;
  agentId: string;
  admitted: boolean;
  reservations: ReservationModel[];
  streams: StreamModel[];
  steps: number;
  /** Decided when nothing is left: whether a late stream with a stale token still comes. */
  lateStream: boolean | undefined;
}

interface StreamModel {
  id: number;
  call: CallModel;
  ws: FakeTwilioWs;
  streamSid: string;
  startSent: boolean;
  session: CallSession | undefined;
  legs: FakeAgentLeg[];
  conversationId: string | undefined;
  everInit: boolean;
  /** Caller frames waiting for the next agent init (oldest first). */
  gap: string[];
  gapBytes: number;
  /** Late agent audio is dropped after a barge-in until the next newAudioStream. */
  dropAgentAudio: boolean;
  /** Marks received and not echoed; marks flushed by a clear (Twilio echoes them at once). */
  pendingMarks: string[];
  flushedMarks: string[];
  seenMarks: Set<string>;
  /** What the bridge sent on this socket. */
  media: string[];
  marks: number;
  clears: number;
  throwCarrier: boolean;
  /** The Twilio socket stopped draining (its bufferedAmount is above the session's bound). */
  stuck: boolean;
  /** When agent audio was first dropped on the stuck socket (the session's stall timer runs from then). */
  stallArmedAt: number | undefined;
  /**
   * The reconnect budget: the current outage (its start, and the call's retries
   * when it started), the outage a live leg's init ended, and when that init came.
   * The call's retries are observed: agent legs opened after the first, plus one
   * while a retry is pending.
   */
  outageStart: number;
  outageBase: number;
  liveOutageStart: number;
  liveOutageBase: number;
  liveSince: number;
  halfClosed: boolean;
  /** Allowed end reasons, fixed when the session first left connecting/live/reconnecting. */
  reasons: string[] | undefined;
  closedChecked: boolean;
  done: boolean;
  teardown: NodeJS.Timeout | undefined;
}

interface Snap {
  state: SessionState;
  spoken: number;
  audio: number;
  media: number;
  marks: number;
  clears: number;
}

/** What a step may do to one session. Deltas default to 0. */
interface Spec {
  to: SessionState[];
  speak?: string[];
  reasons?: string[];
  audio?: number | 'any';
  media?: number | 'any';
  marks?: number | 'any';
  clears?: number | 'any';
}

interface Profile {
  name: string;
  rounds: number;
  callsPerRound: number;
  concurrency: readonly [number, number];
  capacity: readonly [number, number];
  /** Chance that a freshly opened agent leg refuses the call at once (4429 storms). */
  storm: number;
  /** Weight of init among agent actions: low = slow or missing init. */
  initWeight: number;
  drainChance: number;
  tinyBuffers: boolean;
  dialChance: number;
  periodicSweepChance: number;
  /** Reconnect budgets that usually allow a reconnect. */
  patientReconnects: boolean;
}

interface Totals {
  lifecycles: number;
  steps: number;
  sessions: number;
  refusedAtWebhook: number;
  /** Second webhooks for a pending or live call, refused. */
  duplicatesRefused: number;
  /** Twilio's retries of a webhook, answered with the same token. */
  webhookRetries: number;
  claimsRefused: number;
  expiredReservations: number;
  reconnects: number;
  gapsVerified: number;
  gapsTrimmed: number;
  injectedCrashes: number;
  drains: number;
  outcomes: Record<string, number>;
}

const newTotals = (): Totals => ({
  lifecycles: 0,
  steps: 0,
  sessions: 0,
  refusedAtWebhook: 0,
  duplicatesRefused: 0,
  webhookRetries: 0,
  claimsRefused: 0,
  expiredReservations: 0,
  reconnects: 0,
  gapsVerified: 0,
  gapsTrimmed: 0,
  injectedCrashes: 0,
  drains: 0,
  outcomes: {},
});

const metrics = new Metrics({ liveCalls: () => 0, reservedSlots: () => 0, capacity: () => 0, draining: () => false });
const baseLogger = pino({ level: 'silent' });
/** The route's logger; its child() throws once when armed, so building a CallSession fails. */
const logger = new Proxy(baseLogger, {
  get(target, prop) {
    if (prop === 'child' && currentWorld?.failSessionBuild === true) {
      return () => {
        if (currentWorld !== undefined) currentWorld.failSessionBuild = false;
        throw new Error('injected: session construction failed');
      };
    }
    return Reflect.get(target, prop, target);
  },
});

/** The world the carrier-send hooks report to (one round at a time). */
let currentWorld: World | undefined;

type StreamHandler = (socket: WebSocket) => void;

/** The real media-stream route's socket handler. */
async function captureStreamHandler(deps: Parameters<typeof streamSocketHandler>[0]): Promise<StreamHandler> {
  return streamSocketHandler(deps);
}

// ---------------------------------------------------------------- one round: one manager, many overlapping lifecycles

class World {
  readonly rng: Rng;
  readonly manager: SessionManager;
  readonly settings: SessionSettings;
  readonly callControl: FuzzCallControl;
  readonly routes = new Map<string, NumberRoute>();
  readonly maxCalls: number;
  readonly tokenTtlMs: number;
  readonly cooldownMs: number;
  readonly periodicSweep: boolean;
  readonly concurrency: number;
  readonly budget: number;
  readonly drainAt: number;
  readonly dial: boolean;
  handler!: StreamHandler;

  readonly active: CallModel[] = [];
  readonly tokens = new Map<string, ReservationModel>();
  readonly streamsBySid = new Map<string, StreamModel>();
  readonly callsByAgent = new Map<string, CallModel>();
  readonly sockets: FakeTwilioWs[] = [];
  readonly violations: string[] = [];
  readonly expiredCallbacks: string[] = [];
  readonly trace: string[] = [];
  starting: StreamModel | undefined;
  lastClaim: ClaimResult | undefined;
  /** What every session reported for its call's record. */
  readonly journal = new RecordingJournal();
  #idem = 0;
  injectedFired = false;
  failSessionBuild = false;
  /** Model of the 4429-learned limit. */
  learned: { limit: number; until: number } | undefined;
  started = 0;
  steps = 0;
  drainStarted = false;
  drainDeadline = Infinity;
  drainEnded = false;
  #ids = 0;
  #frameNo = 0;

  constructor(
    readonly seed: number,
    readonly profile: Profile,
    readonly label: string,
    readonly totals: Totals,
  ) {
    const rng = (this.rng = new Rng(seed));
    this.maxCalls = rng.int(profile.capacity[0], profile.capacity[1]);
    this.concurrency = rng.int(profile.concurrency[0], profile.concurrency[1]);
    this.budget = profile.callsPerRound;
    this.tokenTtlMs = rng.pick([1000, 3000, 10_000]);
    this.cooldownMs = rng.pick([2000, 60_000]);
    this.periodicSweep = rng.chance(profile.periodicSweepChance);
    this.drainAt = rng.chance(profile.drainChance) ? rng.int(Math.floor(this.budget * 0.7), this.budget) : Infinity;
    this.dial = rng.chance(profile.dialChance);
    const tiny = profile.tinyBuffers;
    this.settings = {
      agentInitTimeoutMs: rng.pick([300, 1500, 5000, 10_000]),
      hangupDrainMs: rng.pick([0, 500, 3000, 10_000]),
      callControlGraceMs: rng.pick([0, 200, 1000, 5000]),
      markIntervalMs: rng.pick([20, 60, 160, 400]),
      preInitBufferMs: tiny ? rng.pick([0, 20, 40, 100]) : rng.pick([100, 1000, 15_000]),
      agentHeartbeatMs: 0,
      reconnect: {
        attempts: profile.patientReconnects ? rng.pick([1, 3, 5, 5]) : rng.pick([0, 1, 3, 5]),
        windowMs: profile.patientReconnects ? rng.pick([500, 3000, 10_000, 10_000]) : rng.pick([0, 500, 3000, 10_000]),
        bufferMs: tiny ? rng.pick([0, 20, 60, 200]) : rng.pick([200, 2000, 10_000]),
        stableMs: rng.pick([0, 1000, 5000, 5000]),
        maxPerCall: rng.pick([1, 3, 10, 10]),
      },
      maxCallMs: rng.pick([8000, 30_000, 120_000, 3_600_000]),
      idleMs: rng.pick([1000, 5000, 20_000]),
      texts: { apology: APOLOGY, busy: BUSY, goodbye: GOODBYE },
      overflow: this.dial ? { action: 'dial', fallbackNumber: FALLBACK_NUMBER } : { action: 'say' },
    };
    this.manager = new SessionManager({
      maxConcurrentCalls: this.maxCalls,
      tokenTtlMs: this.tokenTtlMs,
      defaultAgentId: 'agent-default',
      routes: this.routes,
      agentCapacityCooldownMs: this.cooldownMs,
      onReservationExpired: (callSid) => this.expiredCallbacks.push(callSid),
    });
    // Watch every claim the route makes.
    const claim = this.manager.claim.bind(this.manager);
    this.manager.claim = (token, callSid) => {
      const r = claim(token, callSid);
      this.lastClaim = r;
      return r;
    };
    this.callControl = new FuzzCallControl(
      () => ({
        mode: rng.weighted<CallControlMode>([
          [5, 'accept'],
          [3, 'refuse'],
          [1, 'reject'],
          [1, 'slow-accept'],
          [1, 'slow-reject'],
        ]),
        delayMs: rng.int(1, 8000),
      }),
      (callSid) => this.#twilioTearsDown(callSid),
    );
  }

  async init(): Promise<void> {
    const config = loadConfig({
      PLAYAI_API_KEY: 'fuzz-key',
      PLAYAI_AGENT_ID: 'agent-default',
      START_TIMEOUT_MS: String(this.rng.pick([500, 2000, 5000])),
    });
    this.handler = await captureStreamHandler({
      stream: streamRouteSettings(config),
      manager: this.manager,
      metrics,
      logger,
      callControl: this.callControl,
      agents: playaiDirectory(this.connector, { apiKey: 'fuzz-key' }),
      settings: this.settings,
      journal: this.journal,
    });
    if (this.periodicSweep) this.manager.startSweep(this.rng.pick([1000, 5000]));
  }

  // ---------------------------------------------------------------- failure reporting

  fail(msg: string): never {
    throw new Error(
      `${msg}\n  seed=${MASTER_SEED} ${this.label} (round seed ${this.seed}) step=${this.steps} t=${Math.round(now())}\n` +
        `  replay: FUZZ_SEED=${MASTER_SEED} npx vitest run test/lifecycleFuzz.test.ts\n  last steps:\n    ${this.trace.join('\n    ')}`,
    );
  }

  #note(text: string): void {
    this.trace.push(`#${this.steps} t=${Math.round(now())} ${text}`);
    if (this.trace.length > 60) this.trace.shift();
  }

  // ---------------------------------------------------------------- fakes wired to the model

  readonly connector: PlayAiConnector = (opts) => {
    const call = this.callsByAgent.get(opts.agentId);
    const sm = this.starting ?? call?.streams.find((s) => s.session !== undefined && s.session.state !== 'closed');
    const leg = new FakeAgentLeg(opts, this.rng.pick([0, 5, 50, 1500]), () => (this.injectedFired = true));
    if (call === undefined || sm === undefined || sm.call !== call) {
      // Recorded, not thrown: this runs inside the bridge, which would turn a throw into an internal error.
      this.violations.push(`agent leg opened for an unknown call (agent ${opts.agentId})`);
      return leg;
    }
    if (sm.session !== undefined && sm.session.state !== 'connecting' && sm.session.state !== 'reconnecting') {
      this.violations.push(`agent leg opened while the session is ${sm.session.state}`);
    }
    if (!sm.legs.every((l) => l.closedByUs || l.state === 'closed')) this.violations.push('a new agent leg was opened while an older one is still open');
    const setup = opts.setup;
    if (setup.type !== 'setup' || setup.inputEncoding !== 'mulaw' || setup.outputFormat !== 'mulaw' || setup.apiKey !== 'fuzz-key') {
      this.violations.push(`bad setup ${JSON.stringify(setup)}`);
    }
    if (setup.continueConversation !== sm.conversationId) {
      this.violations.push(`setup.continueConversation ${setup.continueConversation} but the conversation is ${sm.conversationId}`);
    }
    // A retry opens its leg within its outage's window (the backoff was checked against it).
    if (sm.legs.length > 0 && now() - sm.outageStart > this.settings.reconnect.windowMs) {
      this.violations.push(`a retry opened an agent leg ${Math.round(now() - sm.outageStart)} ms into its outage; the window is ${this.settings.reconnect.windowMs} ms`);
    }
    sm.legs.push(leg);
    return leg;
  };

  /** The carrier-send hook (installed on TwilioStreamConnection.prototype): nothing after close; injected throws. */
  onCarrierCall(streamSid: string, kind: 'media' | 'mark' | 'clear'): void {
    const sm = this.streamsBySid.get(streamSid);
    if (sm === undefined) return;
    if (sm.session === undefined || sm.session.state === 'closed') this.violations.push(`sent ${kind} to the carrier after the session closed`);
    if (kind === 'media' && sm.throwCarrier) {
      sm.throwCarrier = false;
      this.injectedFired = true;
      throw new Error('injected: carrier send failed');
    }
  }

  #onCarrierFrame(sm: StreamModel, text: string): void {
    let v: unknown;
    try {
      v = JSON.parse(text);
    } catch {
      this.violations.push(`non-JSON frame to Twilio: ${text.slice(0, 80)}`);
      return;
    }
    if (typeof v !== 'object' || v === null || Array.isArray(v)) {
      this.violations.push('frame to Twilio is not an object');
      return;
    }
    const o = v as Record<string, unknown>;
    const keys = Object.keys(o).sort().join(',');
    if (o.streamSid !== sm.streamSid) this.violations.push(`frame to Twilio with streamSid ${String(o.streamSid)}`);
    const body = (k: string): Record<string, unknown> => (typeof o[k] === 'object' && o[k] !== null ? (o[k] as Record<string, unknown>) : {});
    switch (o.event) {
      case 'media': {
        const m = body('media');
        if (keys !== 'event,media,streamSid' || Object.keys(m).join(',') !== 'payload' || typeof m.payload !== 'string') {
          this.violations.push(`media with other fields: ${text.slice(0, 120)}`);
          return;
        }
        sm.media.push(m.payload);
        return;
      }
      case 'mark': {
        const m = body('mark');
        if (keys !== 'event,mark,streamSid' || Object.keys(m).join(',') !== 'name' || typeof m.name !== 'string') {
          this.violations.push(`mark with other fields: ${text.slice(0, 120)}`);
          return;
        }
        if (sm.seenMarks.has(m.name)) this.violations.push(`mark name reused: ${m.name}`);
        sm.seenMarks.add(m.name);
        sm.pendingMarks.push(m.name);
        sm.marks++;
        return;
      }
      case 'clear':
        if (keys !== 'event,streamSid') this.violations.push(`clear with other fields: ${text}`);
        sm.clears++;
        // Twilio echoes every pending mark at once after a clear.
        sm.flushedMarks.push(...sm.pendingMarks);
        sm.pendingMarks = [];
        return;
      default:
        this.violations.push(`sent ${String(o.event)} to Twilio (only media, mark and clear are allowed)`);
    }
  }

  /** Twilio runs the new TwiML after an accepted call-control request and tears the stream down (sometimes it does not). */
  #twilioTearsDown(callSid: string): void {
    const call = this.active.find((c) => c.callSid === callSid);
    const sm = call?.streams.find((s) => s.session?.state === 'ending');
    if (sm === undefined || sm.teardown !== undefined || !this.rng.chance(0.7)) return;
    sm.teardown = setTimeout(() => {
      sm.teardown = undefined;
      if (sm.ws.finished) return;
      sm.ws.deliver(tw.stop(sm.streamSid));
      sm.ws.hangUp(1000);
    }, this.rng.int(10, 3000));
  }

  frame(bytes: number): string {
    const b = Buffer.alloc(bytes, 0x7f);
    b.writeUInt32BE(++this.#frameNo, 0);
    b.writeUInt32BE(this.seed, 4);
    return b.toString('base64');
  }

  currentLeg(sm: StreamModel): FakeAgentLeg | undefined {
    const last = sm.legs[sm.legs.length - 1];
    return last !== undefined && !last.closedByUs && last.state !== 'closed' ? last : undefined;
  }

  // ---------------------------------------------------------------- snapshots and transition checks

  #liveStreams(): StreamModel[] {
    const out: StreamModel[] = [];
    for (const c of this.active) for (const s of c.streams) if (s.session !== undefined && s.session.state !== 'closed') out.push(s);
    return out;
  }

  #snap(sm: StreamModel): Snap {
    const s = sm.session;
    if (s === undefined) throw new Error('no session');
    let audio = 0;
    for (const l of sm.legs) audio += l.audio.length;
    return { state: s.state, spoken: this.journal.get(s.callSid).spoken.length, audio, media: sm.media.length, marks: sm.marks, clears: sm.clears };
  }

  #checkSpec(sm: StreamModel, b: Snap, spec: Spec, what: string): void {
    const s = sm.session;
    if (s === undefined) return;
    const a = this.#snap(sm);
    if (!spec.to.includes(a.state)) this.fail(`${what}: call #${sm.call.id} went ${b.state} → ${a.state}; allowed: ${spec.to.join(', ')}`);
    // A ready agent session ending (the call leaves `live`) frees a connection on the account: the learned limit no longer holds.
    if (b.state === 'live' && a.state !== 'live') this.learned = undefined;
    const spoken = this.journal.get(s.callSid).spoken.slice(b.spoken);
    if (spoken.length > 1) this.fail(`${what}: spoke ${spoken.length} texts in one step`);
    const text = spoken[0];
    if (text !== undefined && !(spec.speak ?? []).includes(text)) this.fail(`${what}: call #${sm.call.id} was told "${text}" (${b.state} → ${a.state})`);
    if (a.state === 'ending' && b.state !== 'ending' && text === undefined) this.fail(`${what}: entered ending without speaking to the caller`);
    const delta = (allowed: number | 'any' | undefined, got: number, name: string): void => {
      if (allowed !== 'any' && got !== (allowed ?? 0)) this.fail(`${what}: call #${sm.call.id} ${name} changed by ${got}, expected ${allowed ?? 0}`);
    };
    delta(spec.audio, a.audio - b.audio, 'agent audioIn count');
    delta(spec.media, a.media - b.media, 'carrier media count');
    delta(spec.marks, a.marks - b.marks, 'carrier mark count');
    delta(spec.clears, a.clears - b.clears, 'carrier clear count');
    if (ACTIVE.has(b.state) && !ACTIVE.has(a.state)) {
      if (spec.reasons === undefined || spec.reasons.length === 0) this.fail(`${what}: call #${sm.call.id} left ${b.state} for ${a.state} without a cause`);
      sm.reasons ??= spec.reasons;
    }
  }

  /** Transitions that timers, the periodic sweep and call-control completions may cause. */
  #timeSpec(sm: StreamModel, b: Snap, opts: { timers: boolean; sweep: boolean }): Spec {
    const st = b.state;
    const sweepy = opts.sweep || sm.halfClosed;
    const to: SessionState[] = [st];
    const speak: string[] = [];
    const reasons: string[] = [];
    if (opts.timers && (st === 'connecting' || st === 'reconnecting')) {
      to.push('ending', 'closed');
      speak.push(APOLOGY);
      reasons.push('agent_init_timeout');
    }
    if (opts.timers && (st === 'draining' || st === 'ending')) to.push('closed');
    if (opts.timers && sm.stallArmedAt !== undefined && sm.stuck && now() >= sm.stallArmedAt + CARRIER_STALL_MS && st !== 'closed') {
      // The stall timer fired on a socket still stuck: the call is over, whatever else happened first.
      return { to: ['closed'], speak, reasons: [...reasons, 'carrier_stalled', 'idle', 'carrier_gone', 'caller_hangup', ...(opts.sweep ? ['max_duration'] : [])], marks: 'any' };
    }
    if (sweepy && st !== 'closed') {
      to.push('closed');
      reasons.push('idle', 'carrier_gone', 'caller_hangup');
      if (opts.sweep && st !== 'ending') {
        to.push('ending');
        speak.push(GOODBYE);
        reasons.push('max_duration');
      }
    }
    return { to, speak, reasons, marks: opts.timers ? 'any' : 0 };
  }

  #refineTimeReasons(sm: StreamModel, b: Snap): void {
    // Left the active states during a time step: the spoken text tells which timer did it.
    const s = sm.session;
    if (s === undefined || !ACTIVE.has(b.state) || ACTIVE.has(s.state) || sm.reasons === undefined) return;
    const text = this.journal.get(s.callSid).spoken[b.spoken];
    if (text === APOLOGY) sm.reasons = ['agent_init_timeout'];
    else if (text === GOODBYE) sm.reasons = ['max_duration'];
    else sm.reasons = sm.reasons.filter((r) => r === 'idle' || r === 'carrier_gone' || r === 'caller_hangup' || r === 'carrier_stalled');
  }

  #checkViolations(what: string): void {
    if (this.violations.length > 0) this.fail(`${what}: ${this.violations.join('; ')}`);
  }

  /**
   * Runs one synchronous action. `run` returns the spec of its target session (if any);
   * every other live session must not change at all, unless `others` says otherwise.
   */
  async act(label: string, target: StreamModel | undefined, run: (before: Snap | undefined) => Spec | undefined, others?: (sm: StreamModel, b: Snap) => Spec | undefined): Promise<void> {
    this.steps++;
    const befores = new Map<StreamModel, Snap>();
    for (const sm of this.#liveStreams()) befores.set(sm, this.#snap(sm));
    this.injectedFired = false;
    const spec = run(target === undefined ? undefined : befores.get(target));
    if (this.injectedFired) this.totals.injectedCrashes++;
    const what = `${label}${target ? ` (call #${target.call.id} stream #${target.id})` : ''}`;
    this.#note(`${what}${target?.session ? ` ${befores.get(target)?.state ?? 'new'} → ${target.session.state}` : ''}`);
    this.#checkViolations(what);
    for (const [sm, b] of befores) {
      const sp = sm === target && spec !== undefined ? spec : (others?.(sm, b) ?? { to: [b.state] });
      this.#checkSpec(sm, b, sp, what);
    }
    // Microtasks only (call-control completions): ending → closed at most.
    const mid = new Map<StreamModel, Snap>();
    for (const sm of this.#liveStreams()) mid.set(sm, this.#snap(sm));
    await flushMicrotasks();
    this.#checkViolations(`${what} (microtasks)`);
    for (const [sm, b] of mid) this.#checkSpec(sm, b, { to: b.state === 'ending' ? ['ending', 'closed'] : [b.state] }, `${what} (microtasks)`);
    this.invariants(what);
  }

  async timeStep(ms: number): Promise<void> {
    this.steps++;
    const befores = new Map<StreamModel, Snap>();
    for (const sm of this.#liveStreams()) befores.set(sm, this.#snap(sm));
    let left = ms;
    do {
      const d = Math.min(left, 250);
      vi.advanceTimersByTime(d);
      await flushMicrotasks();
      left -= d;
    } while (left > 0);
    const what = `advance ${ms} ms`;
    this.#note(what);
    this.#checkViolations(what);
    for (const [sm, b] of befores) {
      this.#checkSpec(sm, b, this.#timeSpec(sm, b, { timers: true, sweep: this.periodicSweep }), what);
      this.#refineTimeReasons(sm, b);
      if (sm.stallArmedAt !== undefined && now() >= sm.stallArmedAt + CARRIER_STALL_MS) sm.stallArmedAt = undefined;
    }
    this.#checkExpiries(what);
    if (this.drainStarted && !this.drainEnded && now() >= this.drainDeadline) await this.#drainDeadline();
    this.invariants(what);
  }

  #checkExpiries(what: string): void {
    const t = now();
    const expected: string[] = [];
    for (const c of this.active) {
      for (const r of c.reservations) {
        if (r.status === 'pending' && r.expiresAt <= t) {
          r.status = 'expired';
          expected.push(c.callSid);
          this.totals.expiredReservations++;
        }
      }
    }
    const got = this.expiredCallbacks.splice(0);
    if (expected.sort().join() !== got.sort().join()) this.fail(`${what}: reservations expired ${JSON.stringify(got)}, model expected ${JSON.stringify(expected)}`);
  }

  #expectedCapacity(): number {
    if (this.learned !== undefined && now() >= this.learned.until) this.learned = undefined;
    return this.learned === undefined ? this.maxCalls : Math.min(this.maxCalls, this.learned.limit);
  }

  /** Slot, session and socket accounting; run after every step. */
  invariants(what: string): void {
    const m = this.manager;
    let live = 0;
    let reserved = 0;
    const listed = new Set(m.sessions());
    for (const c of this.active) {
      for (const r of c.reservations) if (r.status === 'pending') reserved++;
      for (const sm of c.streams) {
        const s = sm.session;
        if (s === undefined) continue;
        if (s.state !== 'closed') {
          live++;
          if (!listed.has(s)) this.fail(`${what}: live session of call #${c.id} is not listed by the manager`);
          this.checkBudget(sm, what);
        } else {
          if (listed.has(s)) this.fail(`${what}: closed session of call #${c.id} is still listed by the manager`);
          if (!sm.closedChecked) this.#onSessionClosed(sm, what);
        }
      }
    }
    if (listed.size !== live) this.fail(`${what}: the manager lists ${listed.size} sessions, the model knows ${live}`);
    if (m.usedSlots !== live + reserved || m.liveCalls !== live || m.reservedSlots !== reserved) {
      this.fail(`${what}: usedSlots=${m.usedSlots} liveCalls=${m.liveCalls} reservedSlots=${m.reservedSlots}; model: ${live} live + ${reserved} reserved`);
    }
    if (m.usedSlots < 0 || m.usedSlots > this.maxCalls) this.fail(`${what}: usedSlots=${m.usedSlots} outside 0..${this.maxCalls}`);
    if (m.capacity !== this.#expectedCapacity()) this.fail(`${what}: capacity ${m.capacity}, model ${this.#expectedCapacity()} (learned ${JSON.stringify(this.learned)})`);
    if (m.draining !== this.drainStarted) this.fail(`${what}: draining=${m.draining}`);
  }

  #onSessionClosed(sm: StreamModel, what: string): void {
    const s = sm.session;
    if (s === undefined) return;
    sm.closedChecked = true;
    const reason = this.journal.get(s.callSid).endReason ?? '(none)';
    this.totals.outcomes[reason] = (this.totals.outcomes[reason] ?? 0) + 1;
    if (sm.reasons === undefined || !sm.reasons.includes(reason)) this.fail(`${what}: call #${sm.call.id} ended as ${reason}; the path allows ${JSON.stringify(sm.reasons)}`);
    const spoken = this.journal.get(s.callSid).spoken;
    if (!allowedSpoken(reason).some((a) => a.length === spoken.length && a.every((t, i) => t === spoken[i]))) {
      this.fail(`${what}: call #${sm.call.id} ended as ${reason} after saying ${JSON.stringify(spoken)}`);
    }
    if (sm.ws.readyState === WS_OPEN) this.fail(`${what}: call #${sm.call.id} closed but its Twilio socket is open`);
    for (const l of sm.legs) {
      if (l.state === 'open' || l.state === 'connecting') this.fail(`${what}: call #${sm.call.id} closed but agent leg ${sm.legs.indexOf(l)} is ${l.state}`);
    }
    if (this.manager.getSession(s.callSid) === s) this.fail(`${what}: closed session still registered`);
  }

  // ---------------------------------------------------------------- the round

  async run(): Promise<void> {
    const maxSteps = this.budget * 600;
    while (this.started < this.budget || this.active.length > 0) {
      if (this.steps > maxSteps) this.fail(`round did not converge: ${this.active.length} calls still active`);
      const r = this.rng.next();
      const pTime = 0.1 + 0.25 / Math.max(1, this.active.length / 3);
      if (this.started < this.budget && this.active.length < this.concurrency && r < 0.1) {
        await this.#newCall();
      } else if (r < pTime || this.active.length === 0) {
        await this.timeStep(this.#randomDelay());
      } else if (r < pTime + 0.01) {
        await this.act('manager.sweep()', undefined, () => undefined, (sm, b) => this.#timeSpec(sm, b, { timers: false, sweep: true }));
      } else {
        const call = this.rng.pick(this.active);
        await this.#callStep(call);
      }
      if (!this.drainStarted && this.started >= this.drainAt) await this.#startDrain();
      this.#retire();
      if (this.active.length === 0) this.checkQuiet('quiet point');
    }
  }

  #randomDelay(): number {
    return this.rng.weighted<() => number>([
      [70, () => this.rng.int(0, 60)],
      [20, () => this.rng.int(60, 600)],
      [7, () => this.rng.int(600, 6000)],
      [3, () => this.rng.int(10_000, 70_000)],
    ])();
  }

  /** Nothing in flight: every slot free, every socket closed, only the bridge's terminate timers (and the sweep) left. */
  checkQuiet(what: string): void {
    const m = this.manager;
    if (m.usedSlots !== 0 || m.liveCalls !== 0 || m.reservedSlots !== 0) this.fail(`${what}: usedSlots=${m.usedSlots} live=${m.liveCalls} reserved=${m.reservedSlots}`);
    const t = now();
    for (const ws of this.sockets) if (!ws.finished) this.fail(`${what}: a Twilio socket is still open`);
    const terminateTimers = this.sockets.filter((ws) => ws.bridgeClosedAt !== undefined && ws.bridgeClosedAt + TERMINATE_AFTER_MS > t).length;
    const expected = terminateTimers + (this.periodicSweep ? 1 : 0);
    if (vi.getTimerCount() !== expected) this.fail(`${what}: ${vi.getTimerCount()} timers pending, expected ${expected} (${terminateTimers} terminate timers)`);
    // Forget finished sockets whose terminate timer has run.
    for (let i = this.sockets.length - 1; i >= 0; i--) {
      const ws = this.sockets[i];
      if (ws !== undefined && (ws.bridgeClosedAt === undefined || ws.bridgeClosedAt + TERMINATE_AFTER_MS <= t)) this.sockets.splice(i, 1);
    }
  }

  async finish(): Promise<void> {
    this.checkQuiet('end of round');
    this.manager.dispose();
    vi.advanceTimersByTime(TERMINATE_AFTER_MS);
    await flushMicrotasks();
    if (vi.getTimerCount() !== 0) this.fail(`after dispose: ${vi.getTimerCount()} timers pending`);
    if (this.manager.usedSlots !== 0 || this.manager.liveCalls !== 0) this.fail('after dispose: slots or sessions left');
  }

  // ---------------------------------------------------------------- drain

  async #startDrain(): Promise<void> {
    this.drainStarted = true;
    this.totals.drains++;
    this.drainDeadline = now() + this.rng.pick([0, 1000, 5000, 20_000]);
    await this.act('startDrain()', undefined, () => {
      this.manager.startDrain();
      return undefined;
    });
  }

  /** Drain timeout: the calls still up are ended with a goodbye, as Bridge.drain does. */
  async #drainDeadline(): Promise<void> {
    this.drainEnded = true;
    const live = [...this.manager.sessions()];
    await this.act(
      `drain timeout: endWithGoodbye on ${live.length} calls`,
      undefined,
      () => {
        for (const s of live) s.endWithGoodbye('shutdown');
        return undefined;
      },
      (_sm, b) => this.#goodbyeSpec(b, 'shutdown'),
    );
  }

  #goodbyeSpec(b: Snap, reason: string): Spec {
    if (b.state === 'ending' || b.state === 'closed') return { to: [b.state] };
    return { to: ['ending'], speak: [GOODBYE], reasons: [reason] };
  }

  // ---------------------------------------------------------------- lifecycles

  async #newCall(): Promise<void> {
    const id = ++this.#ids;
    const call: CallModel = {
      id,
      callSid: `CA${this.seed.toString(16).padStart(8, '0')}${id.toString(16).padStart(24, '0')}`,
      to: `+1555${String(id).padStart(7, '0')}`,
      agentId: `agent-${id}`,
      admitted: false,
      reservations: [],
      streams: [],
      steps: 0,
      lateStream: undefined,
    };
    this.routes.set(call.to, { agentId: call.agentId });
    this.callsByAgent.set(call.agentId, call);
    this.active.push(call);
    this.started++;
    this.totals.lifecycles++;
    await this.#admit(call, 'POST /twilio/voice');
  }

  /**
   * A voice webhook for the call. `kind`: the first one; Twilio's retry of the
   * pending one (same I-Twilio-Idempotency-Token: the same token comes back);
   * a replay of it (another idempotency token: refused as a duplicate); or
   * one for a call that is live (refused as a duplicate).
   */
  async #admit(call: CallModel, label: string, kind: 'first' | 'retry' | 'replay' | 'live' = 'first'): Promise<void> {
    await this.act(`${label} for call #${call.id}`, undefined, () => {
      const m = this.manager;
      const draining = this.drainStarted;
      const prev = call.reservations.find((r) => r.status === 'pending');
      // Twilio's retry sends the same idempotency token; a carrier that does not send the header
      // sends none, first time and on the retry alike.
      // A replay carries another token, or none at all (the header is not signed, a replayer can drop it).
      const idem =
        kind === 'retry' && prev !== undefined
          ? prev.idem
          : (kind === 'first' && this.rng.chance(0.2)) || (kind === 'replay' && this.rng.chance(0.5))
            ? undefined
            : `idem-${++this.#idem}`;
      const usedBefore = m.usedSlots;
      const capacity = this.#expectedCapacity();
      const r = m.admit({ callSid: call.callSid, from: '+15005550006', to: call.to, direction: 'inbound' }, undefined, idem);
      call.admitted = true;
      if (m.usedSlots !== usedBefore && (kind !== 'first' || !r.ok)) this.fail(`${label}: slots moved ${usedBefore} → ${m.usedSlots}`);
      // A first request without the header cannot be told from its replay: the same token comes back.
      if ((kind === 'retry' || kind === 'replay') && prev !== undefined && (kind === 'retry' || prev.idem === undefined)) {
        if (!r.ok || !r.replayed || r.token !== prev.token) this.fail(`Twilio's retry of the webhook did not get the same token: ${JSON.stringify(r)}`);
        this.totals.webhookRetries++;
        return undefined;
      }
      if (kind === 'replay' || kind === 'live') {
        if (r.ok || r.reason !== 'duplicate') this.fail(`${label}: a second webhook for a call ${kind === 'live' ? 'that is live' : 'with a pending token'} was not refused as a duplicate: ${JSON.stringify(r)}`);
        this.totals.duplicatesRefused++;
        return undefined;
      }
      if (draining) {
        if (r.ok || r.reason !== 'draining') this.fail(`admit while draining: ${JSON.stringify(r)}`);
        this.totals.refusedAtWebhook++;
        return undefined;
      }
      if (usedBefore >= capacity) {
        if (r.ok || (r.reason !== 'capacity' && r.reason !== 'agent_capacity')) this.fail(`admit at ${usedBefore}/${capacity}: ${JSON.stringify(r)}`);
        this.totals.refusedAtWebhook++;
        return undefined;
      }
      if (!r.ok) this.fail(`admit refused at ${usedBefore}/${capacity}: ${r.reason}`);
      if (r.route.agentId !== `playai:${call.agentId}`) this.fail(`admit routed to ${r.route.agentId}`);
      const res: ReservationModel = { token: r.token, call, status: 'pending', expiresAt: now() + this.tokenTtlMs, idem };
      call.reservations.push(res);
      this.tokens.set(r.token, res);
      return undefined;
    });
  }

  #retire(): void {
    for (let i = this.active.length - 1; i >= 0; i--) {
      const call = this.active[i];
      if (call === undefined) continue;
      for (const sm of call.streams) {
        if (sm.done) continue;
        const s = sm.session;
        if (sm.ws.finished && (s === undefined || s.state === 'closed') && sm.legs.every((l) => l.state === 'closed') && sm.teardown === undefined) {
          sm.done = true;
        }
      }
      if (!call.admitted || call.reservations.some((r) => r.status === 'pending') || !call.streams.every((s) => s.done)) continue;
      if ((this.callControl.inflight.get(call.callSid) ?? 0) > 0) continue;
      if (call.lateStream === undefined) {
        call.lateStream = call.reservations.length > 0 && call.streams.length < 4 && this.rng.chance(0.05);
        if (call.lateStream) continue;
      } else if (call.lateStream) continue;
      this.#finalCallChecks(call);
      this.active.splice(i, 1);
      this.routes.delete(call.to);
      this.callsByAgent.delete(call.agentId);
      for (const sm of call.streams) this.streamsBySid.delete(sm.streamSid);
    }
  }

  #finalCallChecks(call: CallModel): void {
    const spoken: string[] = [];
    if (call.streams.some((sm) => sm.session !== undefined)) spoken.push(...this.journal.get(call.callSid).spoken);
    const requests = this.callControl.byCall.get(call.callSid) ?? [];
    this.callControl.byCall.delete(call.callSid);
    const asked = requests.map((r) => r.text ?? '');
    if ([...asked].sort().join('|') !== [...spoken].sort().join('|')) this.fail(`call #${call.id}: call control was asked ${JSON.stringify(asked)}, the records say ${JSON.stringify(spoken)}`);
    for (const r of requests) {
      const forwarded = r.forwardTo !== undefined;
      if (forwarded !== (this.dial && r.text === BUSY)) this.fail(`call #${call.id}: request ${JSON.stringify(r)} (overflow dial=${this.dial})`);
      if (forwarded && r.forwardTo !== FALLBACK_NUMBER) this.fail(`call #${call.id}: forwarded to ${r.forwardTo}`);
    }
  }

  async #callStep(call: CallModel): Promise<void> {
    call.steps++;
    if (call.steps > 300) {
      // A caller who stays too long hangs up.
      for (const sm of call.streams) {
        if (!sm.ws.finished) await this.#callerHangsUp(sm, 'caller gives up', () => sm.ws.hangUp(1000));
      }
      return;
    }
    const open = call.streams.filter((s) => !s.done && !s.ws.finished);
    const pending = call.reservations.find((r) => r.status === 'pending');
    const choices: Array<readonly [number, () => Promise<void>]> = [];
    for (const sm of open) {
      if (!sm.startSent) {
        if (sm.ws.readyState === WS_OPEN) choices.push([10, () => this.#handshakeStep(sm)]);
      }
      else if (sm.session !== undefined) choices.push([10, () => this.#sessionStep(sm)]);
    }
    const handshaking = open.some((s) => !s.startSent);
    if (pending !== undefined && !handshaking) {
      choices.push([open.length === 0 ? 10 : 3, () => this.#connect(call)]);
      choices.push([open.length === 0 ? 0.2 : 0, () => this.#admit(call, 'Twilio retries the webhook', 'retry')]);
      choices.push([0.2, () => this.#admit(call, 'replayed webhook', 'replay')]);
    }
    if (call.lateStream === true && !handshaking) {
      call.lateStream = false;
      choices.push([100, () => this.#connect(call)]);
    }
    if (open.some((s) => s.session?.state === 'live') && pending === undefined && !this.drainStarted) {
      choices.push([0.15, () => this.#admit(call, 'webhook again for a live call', 'live')]);
    }
    if (choices.length === 0) return;
    await this.rng.weighted(choices)();
  }

  async #connect(call: CallModel): Promise<void> {
    const id = ++this.#ids;
    const ackDelay = this.rng.weighted<number | undefined>([
      [70, this.rng.int(0, 50)],
      [20, this.rng.int(50, 1500)],
      [10, undefined],
    ]);
    const streamSid = `MZ${this.seed.toString(16).padStart(8, '0')}${id.toString(16).padStart(24, '0')}`;
    const sm: StreamModel = {
      id,
      call,
      ws: undefined as unknown as FakeTwilioWs,
      streamSid,
      startSent: false,
      session: undefined,
      legs: [],
      conversationId: undefined,
      everInit: false,
      gap: [],
      gapBytes: 0,
      dropAgentAudio: false,
      pendingMarks: [],
      flushedMarks: [],
      seenMarks: new Set(),
      media: [],
      marks: 0,
      clears: 0,
      throwCarrier: false,
      halfClosed: false,
      stuck: false,
      stallArmedAt: undefined,
      outageStart: 0,
      outageBase: 0,
      liveOutageStart: 0,
      liveOutageBase: 0,
      liveSince: 0,
      reasons: undefined,
      closedChecked: false,
      done: false,
      teardown: undefined,
    };
    sm.ws = new FakeTwilioWs(
      ackDelay,
      (text) => this.#onCarrierFrame(sm, text),
      (why) => this.violations.push(why),
    );
    call.streams.push(sm);
    this.sockets.push(sm.ws);
    this.streamsBySid.set(streamSid, sm);
    await this.act('media stream connects', undefined, () => {
      this.handler(sm.ws as unknown as WebSocket);
      return undefined;
    });
  }

  // ---------------------------------------------------------------- before `start`

  async #handshakeStep(sm: StreamModel): Promise<void> {
    const ws = sm.ws;
    const step = this.rng.weighted<() => Promise<void>>([
      [12, () => this.#start(sm)],
      [2, () => this.act('connected', undefined, () => void ws.deliver(tw.connected()))],
      [1, () => this.act('media before start', undefined, () => void ws.deliver(tw.media(sm.streamSid, this.frame(160))))],
      [0.5, () => this.act('mark/dtmf before start', undefined, () => void ws.deliver(this.rng.chance(0.5) ? tw.mark(sm.streamSid, 'x') : tw.dtmf(sm.streamSid, '1')))],
      [0.5, () => this.act('garbage before start', undefined, () => void (this.rng.chance(0.5) ? ws.deliverBinary() : ws.deliver('{nope')))],
      [0.4, () => this.act('stop before start', undefined, () => void ws.deliver(tw.stop(sm.streamSid)))],
      [0.5, () => this.act('caller hangs up before start', undefined, () => void ws.hangUp(this.rng.pick([1000, 1006])))],
      [2, async () => {}],
    ]);
    await step();
  }

  async #start(sm: StreamModel): Promise<void> {
    const call = sm.call;
    const rng = this.rng;
    let callSid = call.callSid;
    let token: string | undefined;
    const variant = rng.weighted<string>([
      [70, 'good'],
      [5, 'unknown'],
      [3, 'missing'],
      [5, 'replayed'],
      [4, 'other callSid'],
      [3, "another call's token"],
      [2, 'good, session build fails'],
    ]);
    switch (variant) {
      case 'good':
      case 'good, session build fails':
        token = call.reservations[call.reservations.length - 1]?.token;
        break;
      case 'unknown':
        token = `forged-${rng.int(0, 1e9)}`;
        break;
      case 'replayed': {
        const used = [...this.tokens.values()].filter((r) => r.status === 'used');
        token = used.length > 0 ? rng.pick(used).token : `forged-${rng.int(0, 1e9)}`;
        break;
      }
      case 'other callSid':
        token = call.reservations.find((r) => r.status === 'pending')?.token ?? call.reservations[0]?.token;
        callSid = `CA${'f'.repeat(32)}`;
        break;
      case "another call's token": {
        const others = [...this.tokens.values()].filter((r) => r.status === 'pending' && r.call !== call);
        token = others.length > 0 ? rng.pick(others).token : undefined;
        break;
      }
    }
    const res = token === undefined ? undefined : this.tokens.get(token);
    const liveHere = this.manager.getSession(callSid);
    const expected =
      token === undefined
        ? 'missing_token'
        : res === undefined
          ? 'unknown_token'
          : res.status === 'pending'
            ? res.call.callSid !== callSid
              ? 'call_mismatch'
              : liveHere !== undefined && !liveHere.streamDead
                ? 'call_live'
                : 'ok'
            : res.status === 'used'
              ? 'used_token'
              : 'expired_token';
    const params: Record<string, string> = { agentId: call.agentId };
    if (token !== undefined) params.token = token;
    const replacing = call.streams.filter((s) => s !== sm && s.session !== undefined && s.session.state !== 'closed');
    sm.startSent = true;
    await this.act(
      `start (${variant} token → ${expected})`,
      sm,
      () => {
        this.starting = sm;
        this.lastClaim = undefined;
        const buildFails = variant === 'good, session build fails';
        this.failSessionBuild = buildFails;
        try {
          sm.ws.deliver(tw.start(sm.streamSid, callSid, params));
        } finally {
          this.starting = undefined;
          this.failSessionBuild = false;
        }
        const got = this.lastClaim as ClaimResult | undefined;
        const gotText = got === undefined ? 'no claim' : got.ok ? 'ok' : got.reason;
        if (gotText !== expected) this.fail(`start with a ${variant} token: claim ${gotText}, expected ${expected}`);
        // A refused claim (wrong CallSid, call live) leaves the token valid for its own call.
        if (res !== undefined && res.status === 'pending' && expected === 'ok') res.status = 'used';
        if (expected === 'ok' && buildFails) {
          // The token is spent, the slot is given back and the stream refused.
          this.totals.injectedCrashes++;
          if (this.manager.getSession(call.callSid) !== undefined && !replacing.some((r) => r.session === this.manager.getSession(call.callSid))) {
            this.fail('a session was registered although building it failed');
          }
          if (sm.ws.bridgeCloseCode !== 1008 || sm.legs.length !== 0) this.fail('failed session build: stream not refused, or an agent leg was opened');
          return undefined;
        }
        if (expected !== 'ok') {
          this.totals.claimsRefused++;
          if (sm.ws.bridgeCloseCode !== 1008) this.fail(`refused stream not closed with 1008 (got ${sm.ws.bridgeCloseCode})`);
          return undefined;
        }
        const session = this.manager.getSession(call.callSid) as CallSession | undefined;
        if (session === undefined || session.streamSid !== sm.streamSid) this.fail('accepted start without a registered session');
        if (session.state !== 'connecting' || sm.legs.length !== 1) this.fail(`new session is ${session.state} with ${sm.legs.length} agent legs`);
        sm.session = session;
        // The first connection is budgeted like a reconnect: its outage starts with the session.
        sm.outageStart = now();
        sm.outageBase = 0;
        this.totals.sessions++;
        return undefined;
      },
      (other) => (expected === 'ok' && variant !== 'good, session build fails' && replacing.includes(other) ? { to: ['closed'], reasons: ['replaced'] } : undefined),
    );
  }

  // ---------------------------------------------------------------- a live session

  async #sessionStep(sm: StreamModel): Promise<void> {
    const s = sm.session;
    if (s === undefined) return;
    const rng = this.rng;
    const cur = this.currentLeg(sm);
    const wsUp = !sm.ws.finished && !sm.halfClosed;
    const st = s.state;
    const acts: Array<readonly [number, () => Promise<void>]> = [];
    const live = st === 'live';
    if (wsUp) {
      acts.push([live ? 30 : 6, () => this.#callerMedia(sm)]);
      acts.push([live ? 6 : 1, () => this.#markEcho(sm)]);
      acts.push([live ? 1.5 : 0.3, () => this.#dtmf(sm)]);
      acts.push([live ? 2 : 0.5, () => this.#callerBadFrame(sm)]);
      // Callers hang up less while the agent is (re)connecting, so reconnects get a chance.
      const h = live ? 1 : 0.3;
      acts.push([0.6 * h, () => this.#callerHangsUp(sm, 'caller stop', () => sm.ws.deliver(tw.stop(sm.streamSid)))]);
      acts.push([0.3 * h, () => this.#callerHangsUp(sm, 'caller closes', () => sm.ws.hangUp(1000))]);
      acts.push([0.25 * h, () => this.#callerHangsUp(sm, 'caller connection drops', () => sm.ws.hangUp(1006))]);
      acts.push([0.05 * h, () => this.#callerHangsUp(sm, 'caller sends an oversized frame', () => sm.ws.oversized())]);
      acts.push([live ? 0.4 : 0.1, () => this.act(sm.stuck ? 'Twilio socket drains again' : 'Twilio socket stops draining', sm, (b) => {
        sm.stuck = !sm.stuck;
        sm.ws.bufferedAmount = sm.stuck ? STUCK_CARRIER_BUFFER : 0;
        return { to: [b?.state ?? 'closed'] };
      })]);
      acts.push([0.1 * h, () => this.act('caller half-closes', sm, (b) => {
        sm.halfClosed = true;
        sm.ws.halfClose(rng.int(0, 30_000));
        return { to: [b?.state ?? 'closed'] };
      })]);
    }
    if (cur?.state === 'connecting') {
      acts.push([15, () => this.act('agent socket opens', sm, (b) => (cur.open(), { to: [b?.state ?? 'closed'] }))]);
      acts.push([15 * this.profile.storm, () => this.#agentRefuses(sm, cur)]);
      acts.push([1, () => this.#agentGone(sm, cur, 'agent handshake fails', () => cur.notifyClose(1006, '', 'handshake refused with HTTP 503'))]);
    }
    if (cur?.state === 'open') {
      if (st === 'connecting' || st === 'reconnecting') acts.push([2 * this.profile.initWeight, () => this.#agentInit(sm, cur)]);
      else acts.push([0.3, () => this.#agentInit(sm, cur)]);
      acts.push([live ? 15 : 2, () => this.#agentAudio(sm, cur)]);
      acts.push([live ? 3 : 0.5, () => this.#agentSimple(sm, cur, 'newAudioStream')]);
      acts.push([live ? 3 : 0.5, () => this.#agentSimple(sm, cur, 'voiceActivityStart')]);
      acts.push([live ? 2 : 0.5, () => this.#agentSimple(sm, cur, 'audioStreamEnd')]);
      acts.push([live ? 3 : 1, () => this.#agentChatter(sm, cur)]);
      acts.push([0.8, () => this.#agentHangup(sm, cur)]);
      acts.push([2.5, () => this.#agentError(sm, cur)]);
      acts.push([live ? 2 : 1, () => this.act('agent starts closing', sm, (b) => (cur.peerCloseStart(), { to: [b?.state ?? 'closed'] }))]);
      acts.push([live ? 2 : 1, () => this.#agentGone(sm, cur, 'agent socket drops', () => cur.notifyClose(1006, '', 'socket error'))]);
      acts.push([0.5, () => this.act('agent socket backpressure toggles', sm, (b) => {
        cur.bufferedAmount = cur.bufferedAmount === 0 ? STUCK_AGENT_BUFFER : 0;
        return { to: [b?.state ?? 'closed'] };
      })]);
      acts.push([0.3, () => this.act('arm: next agent send throws', sm, (b) => ((cur.throwOnSend = true), { to: [b?.state ?? 'closed'] }))]);
      acts.push([0.3, () => this.act('arm: next carrier media throws', sm, (b) => ((sm.throwCarrier = true), { to: [b?.state ?? 'closed'] }))]);
    }
    if (cur?.state === 'closing' && cur.peerClosing) {
      acts.push([4, () => this.#agentGone(sm, cur, 'agent close completes', () => cur.notifyClose(rng.pick([1001, 1006, 1011, 4000]), 'bye', rng.chance(0.3) ? 'socket error' : undefined))]);
    }
    const stale = sm.legs.filter((l) => l !== cur && (l.state === 'open' || l.state === 'closing') && l.closedByUs);
    if (stale.length > 0) acts.push([1, () => this.#staleLeg(sm, rng.pick(stale))]);
    acts.push([0.3 * (live ? 1 : 0.3), () => this.#manager(sm, 'endWithGoodbye')]);
    acts.push([0.12 * (live ? 1 : 0.3), () => this.#manager(sm, 'close')]);
    acts.push([0.25 * (live ? 1 : 0.3), () => this.#manager(sm, 'status completed')]);
    acts.push([2, async () => {}]);
    await rng.weighted(acts)();
  }

  // ---- caller side

  async #callerMedia(sm: StreamModel): Promise<void> {
    const payload = this.frame(this.rng.chance(0.85) ? 160 : 320);
    await this.act('caller media', sm, (b) => {
      const st = b?.state ?? 'closed';
      const cur = this.currentLeg(sm);
      const disposition =
        st === 'live' && cur !== undefined && cur.isOpen ? (cur.bufferedAmount >= STUCK_AGENT_BUFFER ? 'drop' : 'direct') : ACTIVE.has(st) ? 'gap' : 'none';
      const armed = disposition === 'direct' && cur?.throwOnSend === true;
      const before = cur?.audio.length ?? 0;
      sm.ws.deliver(tw.media(sm.streamSid, payload));
      if (armed) return { to: ['closed'], reasons: ['internal_error'] };
      if (disposition === 'direct') {
        if (cur === undefined || cur.audio.length !== before + 1 || cur.audio[before] !== payload) this.fail('a caller frame did not reach the live agent at once, in order');
        return { to: [st], audio: 1 };
      }
      if (disposition === 'gap') {
        sm.gap.push(payload);
        sm.gapBytes += bytesOf(payload);
      }
      return { to: [st] };
    });
  }

  async #markEcho(sm: StreamModel): Promise<void> {
    const names =
      sm.flushedMarks.length > 0
        ? sm.flushedMarks.splice(0)
        : sm.pendingMarks.length > 0 && this.rng.chance(0.85)
          ? sm.pendingMarks.splice(0, 1)
          : [this.rng.pick(['pl:99:1', 'pl:x', 'foo', 'pl:0:999999'])];
    await this.act(`caller echoes marks ${names.join(',')}`, sm, (b) => {
      for (const n of names) sm.ws.deliver(tw.mark(sm.streamSid, n));
      const st = b?.state ?? 'closed';
      return { to: st === 'draining' ? ['draining', 'closed'] : [st] };
    });
  }

  async #dtmf(sm: StreamModel): Promise<void> {
    await this.act('caller presses a key', sm, (b) => {
      const s = sm.session as CallSession;
      const n = this.journal.get(s.callSid).dtmf.length;
      sm.ws.deliver(tw.dtmf(sm.streamSid, this.rng.pick(['1', '5', '#', '*'])));
      if (this.journal.get(s.callSid).dtmf.length !== n + 1) this.fail('dtmf not recorded');
      return { to: [b?.state ?? 'closed'] };
    });
  }

  async #callerBadFrame(sm: StreamModel): Promise<void> {
    const rng = this.rng;
    const kind = rng.pick(['binary', 'non-json', 'array', 'unknown event', 'bad payload', 'wrong streamSid', 'duplicate start', 'wrong-sid stop']);
    await this.act(`caller sends ${kind}`, sm, (b) => {
      const ws = sm.ws;
      switch (kind) {
        case 'binary':
          ws.deliverBinary();
          break;
        case 'non-json':
          ws.deliver('{"event":');
          break;
        case 'array':
          ws.deliver('[1,2]');
          break;
        case 'unknown event':
          ws.deliver(JSON.stringify({ event: 'surprise', streamSid: sm.streamSid }));
          break;
        case 'bad payload':
          ws.deliver(tw.media(sm.streamSid, '***'));
          break;
        case 'wrong streamSid':
          ws.deliver(tw.media(`MZ${'e'.repeat(32)}`, this.frame(160)));
          break;
        case 'duplicate start':
          ws.deliver(tw.start(sm.streamSid, sm.call.callSid, { token: 'again' }));
          break;
        case 'wrong-sid stop':
          ws.deliver(tw.stop(`MZ${'d'.repeat(32)}`));
          break;
      }
      return { to: [b?.state ?? 'closed'] };
    });
  }

  async #callerHangsUp(sm: StreamModel, label: string, hangUp: () => void): Promise<void> {
    await this.act(label, sm, (b) => {
      hangUp();
      if (sm.session === undefined || b === undefined) return undefined;
      return { to: ['closed'], reasons: ['caller_hangup'] };
    });
  }

  // ---- agent side

  async #agentInit(sm: StreamModel, leg: FakeAgentLeg): Promise<void> {
    const cid = sm.conversationId !== undefined && this.rng.chance(0.85) ? sm.conversationId : `conv-${this.seed}-${++this.#ids}`;
    await this.act('agent init', sm, (b) => {
      const s = sm.session as CallSession;
      const st = b?.state ?? 'closed';
      const armed = leg.throwOnSend;
      const before = leg.audio.length;
      leg.deliver(JSON.stringify({ type: 'init', agentOwnerId: 'fake', conversationId: cid }));
      if (st !== 'connecting' && st !== 'reconnecting') return { to: [st] };
      if (armed && s.state === 'closed') {
        sm.everInit = true; // init was taken before the flush crashed
        this.learned = undefined; // that ready session ended with the call
        return { to: ['closed'], reasons: ['internal_error'], audio: 'any' };
      }
      // The gap is delivered first, in order: all of it within the bound, else its newest part.
      const delivered = leg.audio.slice(before);
      const pre = this.settings.preInitBufferMs * 8;
      const rec = this.settings.reconnect.bufferMs * 8;
      const gap = sm.gap;
      if (sm.gapBytes <= Math.min(pre, rec)) {
        if (delivered.length !== gap.length || delivered.some((p, i) => p !== gap[i])) {
          this.fail(`init: ${delivered.length} buffered frames delivered, expected all ${gap.length} in order (${sm.gapBytes} bytes within the bound)`);
        }
      } else {
        this.totals.gapsTrimmed++;
        const offset = gap.length - delivered.length;
        if (offset < 0 || delivered.some((p, i) => p !== gap[offset + i])) this.fail('init: buffered frames delivered are not the newest part of the gap, in order');
        const bytes = delivered.reduce((n, p) => n + bytesOf(p), 0);
        if (bytes > Math.max(pre, rec)) this.fail(`init: ${bytes} buffered bytes delivered, above the bound`);
        const last = gap[gap.length - 1];
        if (last !== undefined && bytesOf(last) <= Math.min(pre, rec) && delivered[delivered.length - 1] !== last) this.fail('init: the newest buffered frame was dropped');
      }
      if (this.journal.get(s.callSid).conversationId !== cid) this.fail('init: conversationId not recorded');
      if (gap.length > 0) this.totals.gapsVerified++;
      if (st === 'reconnecting') this.totals.reconnects++;
      sm.gap = [];
      sm.gapBytes = 0;
      sm.conversationId = cid;
      sm.everInit = true;
      sm.liveSince = now();
      sm.liveOutageStart = sm.outageStart;
      sm.liveOutageBase = sm.outageBase;
      return { to: ['live'], audio: delivered.length };
    });
  }

  async #agentAudio(sm: StreamModel, leg: FakeAgentLeg): Promise<void> {
    const rng = this.rng;
    const kind = rng.weighted<string>([
      [85, 'plain'],
      [3, 'empty'],
      [5, 'wav'],
      [4, 'bad base64'],
      [3, 'broken wav'],
    ]);
    const pcm = Buffer.alloc(rng.int(1, 480), rng.int(0, 255));
    let data: string;
    let relayed: string | undefined;
    switch (kind) {
      case 'plain':
        data = pcm.toString('base64');
        relayed = data;
        break;
      case 'empty':
        data = '';
        break;
      case 'wav':
        data = wavWrap(pcm).toString('base64');
        relayed = pcm.toString('base64');
        break;
      case 'bad base64':
        data = '!!!not base64';
        break;
      default:
        data = Buffer.concat([Buffer.from('RIFF'), pcm]).toString('base64');
        break;
    }
    await this.act(`agent audio (${kind})`, sm, (b) => {
      const st = b?.state ?? 'closed';
      // The session hands the chunk to the carrier leg, which drops it if the socket is not open.
      const relays = st === 'live' && !sm.dropAgentAudio && relayed !== undefined;
      // A stuck Twilio socket gets nothing more: the chunk is dropped and the stall timer armed.
      const willSend = relays && !sm.stuck && sm.ws.readyState === WS_OPEN;
      const armed = relays && !sm.stuck && sm.throwCarrier;
      if (relays && sm.stuck) sm.stallArmedAt ??= now();
      if (relays && !sm.stuck) sm.stallArmedAt = undefined;
      const before = sm.media.length;
      leg.deliver(`{"type":"audioStream","data":"${data}"}`);
      if (armed) return { to: ['closed'], reasons: ['internal_error'] };
      if (willSend && sm.media[before] !== relayed) this.fail(`agent audio relayed as ${sm.media[before]?.slice(0, 20)}, expected ${relayed?.slice(0, 20)}`);
      return { to: [st], media: willSend ? 1 : 0, marks: 'any' };
    });
  }

  async #agentSimple(sm: StreamModel, leg: FakeAgentLeg, type: 'newAudioStream' | 'voiceActivityStart' | 'audioStreamEnd'): Promise<void> {
    await this.act(`agent ${type}`, sm, (b) => {
      const s = sm.session as CallSession;
      const st = b?.state ?? 'closed';
      const queued = s.playback.queued;
      const carrierUp = sm.ws.readyState === WS_OPEN;
      leg.deliver(JSON.stringify({ type }));
      if (st !== 'live') return { to: [st], marks: type === 'audioStreamEnd' && (st === 'connecting' || st === 'reconnecting') ? 'any' : 0 };
      switch (type) {
        case 'voiceActivityStart':
          if (queued) sm.dropAgentAudio = true;
          return { to: [st], clears: queued && carrierUp ? 1 : 0 };
        case 'newAudioStream':
          sm.dropAgentAudio = false;
          return { to: [st], clears: queued && carrierUp ? 1 : 0 };
        default:
          return { to: [st], marks: 'any' };
      }
    });
  }

  async #agentChatter(sm: StreamModel, leg: FakeAgentLeg): Promise<void> {
    const rng = this.rng;
    const kind = rng.pick(['user transcript', 'agent transcript', 'voiceActivityEnd', 'onAgentInterrupted', 'ignored type', 'unknown type', 'non-json', 'no type', 'binary', 'bad init']);
    await this.act(`agent sends ${kind}`, sm, (b) => {
      const s = sm.session as CallSession;
      const turns = this.journal.get(s.callSid).transcript.length;
      switch (kind) {
        case 'user transcript':
          leg.deliver(JSON.stringify({ type: 'onUserTranscript', message: 'hello' }));
          break;
        case 'agent transcript':
          leg.deliver(JSON.stringify({ type: 'onAgentTranscript', message: 'hi there' }));
          break;
        case 'voiceActivityEnd':
        case 'onAgentInterrupted':
          leg.deliver(JSON.stringify({ type: kind }));
          break;
        case 'ignored type':
          leg.deliver(JSON.stringify({ type: rng.pick(['exchangeMetrics', 'SYS_LOG', 'onAgentGreeting', 'audioStreamStart']) }));
          break;
        case 'unknown type':
          leg.deliver(JSON.stringify({ type: `surprise${rng.int(0, 3)}` }));
          break;
        case 'non-json':
          leg.deliver('{"type":');
          break;
        case 'no type':
          leg.deliver('{"data":"AAAA"}');
          break;
        case 'binary':
          leg.deliverBinary();
          break;
        case 'bad init':
          leg.deliver(JSON.stringify({ type: 'init', conversationId: '' }));
          break;
      }
      const st = b?.state ?? 'closed';
      const recorded = kind.endsWith('transcript') && st !== 'closed' && st !== 'ending';
      const nowTurns = this.journal.get(s.callSid).transcript.length;
      if (nowTurns !== turns + (recorded ? 1 : 0)) this.fail(`${kind}: transcript has ${nowTurns} turns`);
      return { to: [st] };
    });
  }

  async #agentHangup(sm: StreamModel, leg: FakeAgentLeg): Promise<void> {
    await this.act('agent hangup', sm, (b) => {
      const st = b?.state ?? 'closed';
      leg.deliver(JSON.stringify({ type: 'hangup', endedBy: 'agent' }));
      // A hangup before this leg's init is ignored (PlayAI clients ignore anything before init).
      if (st !== 'live') return { to: [st] };
      if (!leg.closedByUs) this.fail('agent hangup: the agent socket was not closed');
      return { to: ['draining', 'closed'], reasons: ['agent_hangup'], marks: 'any' };
    });
  }

  /** Retries the session has scheduled so far: legs opened after the first, plus one pending (awaiting init with no leg). */
  #retries(sm: StreamModel): number {
    const st = sm.session?.state;
    const pending = (st === 'connecting' || st === 'reconnecting') && this.currentLeg(sm) === undefined ? 1 : 0;
    return Math.max(0, sm.legs.length - 1) + pending;
  }

  /**
   * The spec of a fatal error (or a lost socket) that a reconnect may fix: the
   * model of the budget decides between a retry and the apology (both only
   * inside the jitter band); the model follows what happened.
   */
  #lostSpec(sm: StreamModel, st: SessionState): Spec {
    if (!ACTIVE.has(st)) return { to: [st] };
    const p = this.settings.reconnect;
    const t = now();
    // The lost leg was current, so no retry was pending: the call's retries are the legs after the first.
    const retries = sm.legs.length - 1;
    let start = sm.outageStart;
    let base = sm.outageBase;
    if (st === 'live') {
      const continued = t - sm.liveSince < p.stableMs;
      start = continued ? sm.liveOutageStart : t;
      base = continued ? sm.liveOutageBase : retries;
    }
    const attempts = retries - base;
    const next: SessionState = st === 'live' ? 'reconnecting' : st;
    const delay = BACKOFF_MS[Math.min(attempts, BACKOFF_MS.length - 1)] ?? 1000;
    const allowed = attempts < p.attempts && retries < p.maxPerCall;
    const surely = allowed && t - start + delay * 1.25 <= p.windowMs;
    const never = !allowed || t - start + delay * 0.75 > p.windowMs;
    const to: SessionState[] = surely ? [next] : never ? ['ending'] : [next, 'ending'];
    if (sm.session?.state === next) {
      sm.outageStart = start;
      sm.outageBase = base;
    }
    return { to, speak: [APOLOGY], reasons: ['agent_unreachable'] };
  }

  /** After any step: no retry beyond the budget of the current outage or of the call. */
  checkBudget(sm: StreamModel, what: string): void {
    const st = sm.session?.state;
    if (st !== 'connecting' && st !== 'reconnecting') return;
    const p = this.settings.reconnect;
    const retries = this.#retries(sm);
    if (retries - sm.outageBase > p.attempts) this.fail(`${what}: call #${sm.call.id} made ${retries - sm.outageBase} retries in one outage; the budget is ${p.attempts}`);
    if (retries > p.maxPerCall) this.fail(`${what}: call #${sm.call.id} made ${retries} retries; the per-call cap is ${p.maxPerCall}`);
  }

  async #agentError(sm: StreamModel, leg: FakeAgentLeg): Promise<void> {
    const rng = this.rng;
    const codeKind = rng.weighted<string>([
      [35, 'non-retryable'],
      [35, 'retryable'],
      [15, 'unknown'],
      [5, 'none'],
      [10, 'as string'],
    ]);
    const code =
      codeKind === 'non-retryable'
        ? rng.pick(NON_RETRYABLE)
        : codeKind === 'retryable' || codeKind === 'as string'
          ? rng.pick(RETRYABLE)
          : codeKind === 'unknown'
            ? rng.pick(UNKNOWN_CODES)
            : undefined;
    const isFatal = rng.weighted<boolean | undefined>([
      [50, true],
      [25, false],
      [25, undefined],
    ]);
    await this.#agentErrorWith(sm, leg, code, isFatal, codeKind === 'as string');
  }

  async #agentErrorWith(sm: StreamModel, leg: FakeAgentLeg, code: number | undefined, isFatal: boolean | undefined, codeAsString = false): Promise<void> {
    const frame: Record<string, unknown> = { type: 'error', message: 'fuzz' };
    if (code !== undefined) frame.code = codeAsString ? String(code) : code;
    if (isFatal !== undefined) frame.isFatal = isFatal;
    await this.act(`agent error ${JSON.stringify(frame.code)} isFatal=${String(isFatal)}`, sm, (b) => {
      const st = b?.state ?? 'closed';
      const liveAgents = this.#liveStreams().filter((x) => x.session?.state === 'live').length;
      leg.deliver(JSON.stringify(frame));
      if (!ACTIVE.has(st)) return { to: [st] };
      const known = code !== undefined && (NON_RETRYABLE.includes(code) || RETRYABLE.includes(code));
      const fatal = isFatal ?? known;
      if (!fatal) return { to: [st] };
      if (!leg.closedByUs) this.fail('fatal agent error: the agent socket was not closed');
      if (code === 4429) {
        this.learned = { limit: liveAgents, until: now() + this.cooldownMs };
        return { to: ['ending'], speak: [BUSY], reasons: ['agent_capacity'] };
      }
      if (code !== undefined && NON_RETRYABLE.includes(code)) return { to: ['ending'], speak: [APOLOGY], reasons: ['agent_error'] };
      return this.#lostSpec(sm, st);
    });
  }

  /** The agent refuses the call right after the socket opens (FakeAgentServer's rejectWith): 4429 storms. */
  async #agentRefuses(sm: StreamModel, leg: FakeAgentLeg): Promise<void> {
    leg.open();
    await this.#agentErrorWith(sm, leg, this.rng.chance(0.8) ? 4429 : this.rng.pick(RETRYABLE), true);
  }

  async #agentGone(sm: StreamModel, leg: FakeAgentLeg, label: string, close: () => void): Promise<void> {
    await this.act(label, sm, (b) => {
      const st = b?.state ?? 'closed';
      const current = this.currentLeg(sm) === leg;
      close();
      return current ? this.#lostSpec(sm, st) : { to: [st] };
    });
  }

  /** A leg we already dropped keeps talking: nothing may change. */
  async #staleLeg(sm: StreamModel, leg: FakeAgentLeg): Promise<void> {
    const frame = this.rng.pick([
      JSON.stringify({ type: 'init', conversationId: 'late' }),
      `{"type":"audioStream","data":"${Buffer.alloc(160, 1).toString('base64')}"}`,
      JSON.stringify({ type: 'hangup' }),
      JSON.stringify({ type: 'error', code: 4429, isFatal: true }),
      JSON.stringify({ type: 'error', code: 1002, isFatal: true }),
      JSON.stringify({ type: 'voiceActivityStart' }),
    ]);
    await this.act(`stale agent leg sends ${frame.slice(0, 40)}`, sm, (b) => {
      if (this.rng.chance(0.3)) leg.notifyClose(1006, '', 'socket error');
      else leg.deliver(frame);
      return { to: [b?.state ?? 'closed'] };
    });
  }

  // ---- the manager and Twilio status callbacks

  async #manager(target: StreamModel, kind: 'endWithGoodbye' | 'close' | 'status completed'): Promise<void> {
    const reason = this.rng.pick(['shutdown', 'max_duration'] as const);
    // A status callback ends whichever session the call has now.
    const registered = this.manager.getSession(target.call.callSid);
    const sm = kind === 'status completed' ? (target.call.streams.find((x) => x.session !== undefined && x.session === registered) ?? target) : target;
    await this.act(kind === 'endWithGoodbye' ? `endWithGoodbye(${reason})` : kind, sm, (b) => {
      const s = sm.session as CallSession;
      const st = b?.state ?? 'closed';
      switch (kind) {
        case 'endWithGoodbye':
          s.endWithGoodbye(reason);
          return this.#goodbyeSpec({ ...(b as Snap), state: st }, reason);
        case 'close':
          s.close('shutdown');
          return { to: ['closed'], reasons: ['shutdown'] };
        case 'status completed':
          // What the status callbacks' owner does for a terminal status: end the call's session.
          this.manager.getSession(s.callSid)?.close('caller_hangup');
          return { to: ['closed'], reasons: ['caller_hangup'] };
      }
    });
  }
}

// ---------------------------------------------------------------- runs

const PROFILES: Profile[] = [
  {
    name: 'mixed faults',
    rounds: 12,
    callsPerRound: 110,
    concurrency: [2, 14],
    capacity: [2, 10],
    storm: 0.1,
    initWeight: 8,
    drainChance: 0.3,
    tinyBuffers: false,
    dialChance: 0.2,
    periodicSweepChance: 0.3,
    patientReconnects: true,
  },
  {
    name: '4429 storms, slow or missing init, drain with live calls',
    rounds: 10,
    callsPerRound: 110,
    concurrency: [4, 16],
    capacity: [2, 10],
    storm: 1.5,
    initWeight: 1.5,
    drainChance: 0.9,
    tinyBuffers: false,
    dialChance: 0.3,
    periodicSweepChance: 0.5,
    patientReconnects: false,
  },
  {
    name: 'tiny audio buffers, flaky agents, second streams',
    rounds: 10,
    callsPerRound: 110,
    concurrency: [1, 10],
    capacity: [1, 6],
    storm: 0.2,
    initWeight: 6,
    drainChance: 0.2,
    tinyBuffers: true,
    dialChance: 0.1,
    periodicSweepChance: 0.2,
    patientReconnects: false,
  },
];

const grandTotals = newTotals();
const carrierOriginals = {
  sendMediaBytes: TwilioStreamConnection.prototype.sendMediaBytes,
  sendMark: TwilioStreamConnection.prototype.sendMark,
  sendClear: TwilioStreamConnection.prototype.sendClear,
};

beforeAll(() => {
  // Watch every carrier send the session makes (and inject failures), then let it through.
  const proto = TwilioStreamConnection.prototype;
  proto.sendMediaBytes = function (this: TwilioStreamConnection, buf: Buffer, start: number, end: number) {
    currentWorld?.onCarrierCall(this.streamSid, 'media');
    carrierOriginals.sendMediaBytes.call(this, buf, start, end);
  };
  proto.sendMark = function (this: TwilioStreamConnection, name: string) {
    currentWorld?.onCarrierCall(this.streamSid, 'mark');
    carrierOriginals.sendMark.call(this, name);
  };
  proto.sendClear = function (this: TwilioStreamConnection) {
    currentWorld?.onCarrierCall(this.streamSid, 'clear');
    carrierOriginals.sendClear.call(this);
  };
});

afterAll(() => {
  Object.assign(TwilioStreamConnection.prototype, carrierOriginals);
  const t = grandTotals;
  console.log(
    `lifecycle fuzz (seed ${MASTER_SEED}): ${t.lifecycles} lifecycles, ${t.steps} steps, ${t.sessions} sessions, ` +
      `${t.refusedAtWebhook} refused at the webhook, ${t.duplicatesRefused} duplicate webhooks refused, ${t.webhookRetries} webhook retries, ${t.claimsRefused} streams refused, ${t.expiredReservations} reservations expired, ` +
      `${t.reconnects} reconnects, ${t.gapsVerified} buffered gaps verified (${t.gapsTrimmed} trimmed), ${t.injectedCrashes} injected crashes, ` +
      `${t.drains} drains; outcomes ${JSON.stringify(t.outcomes)}`,
  );
});

beforeEach(() => {
  vi.useFakeTimers();
});

afterEach(() => {
  currentWorld = undefined;
  vi.restoreAllMocks();
  vi.useRealTimers();
});

async function runProfile(index: number): Promise<Totals> {
  const t0 = realDateNow();
  const profile = PROFILES[index];
  if (profile === undefined) throw new Error(`no profile ${index}`);
  const totals = newTotals();
  for (let round = 0; round < profile.rounds; round++) {
    const seed = (Math.imul(MASTER_SEED ^ (index * 0x9e3779b9), 2654435761) + round * 7919) >>> 0;
    // Backoff jitter in CallSession uses Math.random: make it part of the seed.
    const jitter = new Rng(seed ^ 0xa5a5a5a5);
    vi.spyOn(Math, 'random').mockImplementation(() => jitter.next());
    const world = new World(seed, profile, `profile "${profile.name}" round ${round}`, totals);
    currentWorld = world;
    await world.init();
    await world.run();
    await world.finish();
    totals.steps += world.steps;
    currentWorld = undefined;
  }
  if (process.env.FUZZ_VERBOSE) console.log(`${profile.name}: ${realDateNow() - t0} ms ${JSON.stringify(totals)}`);
  for (const [k, v] of Object.entries(totals)) {
    if (k === 'outcomes') for (const [o, n] of Object.entries(v as Record<string, number>)) grandTotals.outcomes[o] = (grandTotals.outcomes[o] ?? 0) + n;
    else (grandTotals as unknown as Record<string, number>)[k] = ((grandTotals as unknown as Record<string, number>)[k] ?? 0) + (v as number);
  }
  return totals;
}

describe('call lifecycle fuzz (seeded, fake timers)', () => {
  it('mixed faults: every exit path gives back its slot, sockets and timers', async () => {
    const t = await runProfile(0);
    expect(t.lifecycles).toBeGreaterThanOrEqual(1000);
    expect(t.sessions).toBeGreaterThan(200);
    expect(t.reconnects).toBeGreaterThan(20);
    expect(t.injectedCrashes).toBeGreaterThan(0);
    expect(t.expiredReservations).toBeGreaterThan(0);
  });

  it('4429 storms, slow or missing init and drain with live calls leak nothing and say the right words', async () => {
    const t = await runProfile(1);
    expect(t.lifecycles).toBeGreaterThanOrEqual(1000);
    expect(t.outcomes.agent_capacity ?? 0).toBeGreaterThan(20);
    expect(t.outcomes.agent_init_timeout ?? 0).toBeGreaterThan(0);
    expect(t.drains).toBeGreaterThan(3);
  });

  it('tiny audio buffers, flaky agents and second webhooks keep caller audio in order, slots balanced, and one stream per call', async () => {
    const t = await runProfile(2);
    expect(t.lifecycles).toBeGreaterThanOrEqual(1000);
    expect(t.gapsTrimmed).toBeGreaterThan(0);
    // A second webhook never mints a second token: no live call is ever replaced by another stream.
    expect(t.duplicatesRefused).toBeGreaterThan(0);
    expect(t.webhookRetries).toBeGreaterThan(0);
    expect(t.outcomes.replaced ?? 0).toBe(0);
  });
});
