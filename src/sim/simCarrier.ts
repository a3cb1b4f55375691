/**
 * The built-in simulated carrier: places outbound calls against a running
 * Playline bridge exactly the way Twilio does, without Twilio.
 *
 * - {@link CarrierSimulator}: the call engine. Each call goes queued →
 *   initiated → ringing → (answered → TwiML → media stream) → terminal, with
 *   signed, form-encoded status callbacks (`SequenceNumber` 0, 1, 2, …), the
 *   TwiML request at answer, a Media Streams client ({@link FakeTwilioStream})
 *   streaming callee audio in 20 ms frames, async or sync answering-machine
 *   detection, REST-like hang-ups and TwiML updates. Shared by the local
 *   dialer and the fake Twilio REST server of the tests.
 *   Also: incoming calls (`startInbound`: signed voice-URL POST, then the
 *   TwiML), TwiML run verb by verb (`<Say>`, `<Play>`, `<Pause>`, `<Redirect>`,
 *   `<Reject>`, `<Hangup>`, `<Connect action><Stream>`), `<Dial>` to numbers,
 *   SIP and clients (child calls with `<Number statusCallback>` callbacks, the
 *   outcome from `dialOutcome`, the `action` request with DialCallStatus,
 *   DialCallSid, DialCallDuration, DialBridged and the TwiML it returns), and
 *   `<Dial><Conference>` rooms (start/end rules, wait URL, conference
 *   callbacks). Every dial is recorded on the call (`info.dials`), every
 *   stream too (`info.streams`). A REST update during a stream sends `stop`.
 * - {@link LocalDialer}: the `Dialer` port of local mode (no Twilio
 *   credentials): picks an outcome per call (weights, seed, or a function) and
 *   runs it on the engine.
 *
 * Behaviour follows Twilio (shared/reference/twilio.md §2.3, §2.5, §4), not
 * the bridge. Every timer, socket and request a call holds is released when
 * it ends, and `close()` ends every call.
 */
import { randomBytes } from 'node:crypto';
import http from 'node:http';
import https from 'node:https';
import { performance } from 'node:perf_hooks';
import type { Logger } from 'pino';
import twilio from 'twilio';
import { speechLikeSignal } from '../audio/signal.js';
import { sayHangupTwiml } from '../carrier/twilio/twiml.js';
import { DialError, type AmdMode, type CarrierCall, type Dialer, type DialRequest } from '../outbound/dialer.js';
import { FakeTwilioStream, newAccountSid, newCallSid, newStreamSid, parseTwimlVerbs, type DialConferenceNoun, type DialEndpointNoun, type DialNoun, type DialVerb, type TwimlVerb } from './twilioSim.js';
import { Rng } from '../util/prng.js';
import { isTerminalTwilioStatus, type TwilioTerminalStatus } from '../carrier/twilio/statuses.js';
import { LOCAL_OUTCOMES, type LocalOutcome } from './outcomes.js';

// ---------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------

/** What happens at the far end of a simulated call. */
export type Outcome = LocalOutcome;
export const OUTCOMES: readonly Outcome[] = LOCAL_OUTCOMES;

/** Twilio's `StatusCallbackEvent` values. */
export type StatusCallbackEvent = 'initiated' | 'ringing' | 'answered' | 'completed';
export const ALL_STATUS_EVENTS: readonly StatusCallbackEvent[] = ['initiated', 'ringing', 'answered', 'completed'];

export type TerminalStatus = TwilioTerminalStatus;
/** Twilio REST call statuses. */
export type SimCallStatus = 'queued' | 'ringing' | 'in-progress' | TerminalStatus;

export const isTerminalStatus = isTerminalTwilioStatus;

/** One outbound call as a carrier receives it (Twilio `Calls.json` create, in camelCase). */
export interface SimCallParams {
  /** CallSid to use (default: a new `CA…`). */
  sid?: string;
  /** Default: the simulator's account. */
  accountSid?: string;
  to: string;
  from: string;
  /** TwiML URL, POSTed at answer (public URL; mapped to the bridge address when its origin is the public origin). */
  url?: string;
  /** Inline TwiML instead of `url`. */
  twiml?: string;
  statusCallback?: string;
  /** Events posted to `statusCallback` (default: all four). */
  statusCallbackEvents?: readonly StatusCallbackEvent[];
  /** Ring time before `no-answer`, seconds (default 60; capped by `timing.noAnswerMaxMs`). */
  timeoutS?: number;
  /** Maximum call length after answer, seconds. */
  timeLimitS?: number;
  machineDetection?: AmdMode;
  /** Async AMD (default true): TwiML runs at answer, the result is POSTed to `amdCallback`. False: TwiML waits for the result and carries `AnsweredBy`. */
  asyncAmd?: boolean;
  amdCallback?: string;
  /** How long this callee stays after answer, ms (default: the simulator's `talkMs`). */
  talkMs?: number;
  /** Ring time before answer/busy/failed, ms (default: the simulator's `ringMs` range). */
  ringMs?: number;
}

/** One request the carrier made to the application (status callback or AMD result). */
export interface PostedCallback {
  kind: 'status' | 'amd' | 'conference' | 'child-status';
  /** Status callbacks: the event. */
  event?: StatusCallbackEvent;
  /** Conference callbacks: `StatusCallbackEvent` sent (`conference-start`, `participant-join`, …). */
  conferenceEvent?: string;
  /** Status callbacks: `CallStatus` sent. */
  callStatus?: string;
  /** Status callbacks: `SequenceNumber` sent. */
  sequence?: number;
  url: string;
  params: Record<string, string>;
  /** ms epoch when it was sent. */
  at: number;
  /** HTTP status of the answer; 0 when it was not delivered (no retry, like Twilio). -1 while in flight. */
  httpStatus: number;
  error?: string;
}

/** Why a call ended. */
export type EndedBy =
  /** the callee hung up (talk time over) */
  | 'callee'
  /** the application closed the media stream (falls through to `<Hangup/>`) or its TwiML ran out */
  | 'bridge'
  /** REST hang-up (`Status=completed|canceled`) */
  | 'hangup'
  /** `TimeLimit` reached */
  | 'time-limit'
  /** the carrier decided (busy, no-answer, failed) */
  | 'carrier'
  /** the simulator was closed */
  | 'close'
  /** an application error (TwiML fetch failed: 11200) */
  | 'error';

/** A snapshot of one simulated call. */
export interface SimCallInfo {
  sid: string;
  accountSid: string;
  to: string;
  from: string;
  outcome: Outcome;
  status: SimCallStatus;
  createdAt: number;
  answeredAt?: number;
  endedAt?: number;
  /** Seconds from answer to end, rounded, at least 1 (0 when never answered); set at the end. */
  durationS?: number;
  answeredBy?: string;
  machineDetectionDurationMs?: number;
  /** Status callbacks, in the order sent. */
  events: PostedCallback[];
  /** The async AMD callback, when one was sent. */
  amd?: PostedCallback;
  /** TwiML requests made (URL, HTTP status; 0 = no answer). */
  twimlRequests: Array<{ url: string; httpStatus: number; error?: string }>;
  /** Texts "said" to the callee (`<Say>` of fetched or updated TwiML). */
  said: string[];
  /** `outbound-api` (created by REST / the dialer) or `inbound` ({@link CarrierSimulator.startInbound}). */
  direction: 'outbound-api' | 'inbound';
  /** Every `<Dial>` the call ran, in order (see {@link SimDialInfo}). */
  dials: SimDialInfo[];
  /** Every media stream the call opened, in order (a new one after each `<Connect><Stream>`). */
  streams: SimStreamInfo[];
  /** `<Play>` URLs (recorded, never fetched). */
  played: string[];
  /** Verbs the simulator does not execute (`gather`, `record`, `start`, …), skipped in order. */
  skipped: string[];
  /** The latest stream's StreamSid. */
  streamSid?: string;
  /** Callee audio frames sent on the media stream. */
  framesSent: number;
  /** Agent audio frames received on the media stream. */
  mediaReceived: number;
  marksEchoed: number;
  endedBy?: EndedBy;
  /** Twilio error code when something went wrong (11200 TwiML fetch, 31920 stream handshake). */
  errorCode?: number;
  error?: string;
}

/** One `<Connect><Stream>` of a call. */
export interface SimStreamInfo {
  streamSid: string;
  /** `<Stream url>` as written. */
  url: string;
  parameters: Record<string, string>;
  startedAt: number;
  endedAt?: number;
  /**
   * `callee`: the far end hung up (stop sent); `hangup`: REST hang-up or time limit (stop sent);
   * `update`: REST TwiML update (stop sent, socket closed, new TwiML runs); `closed`: the application closed the socket.
   */
  endedBy?: 'callee' | 'hangup' | 'update' | 'closed';
  /** Whether the carrier sent `stop` before closing. */
  stopSent: boolean;
}

/** What the dialed party does (`dialOutcome`). */
export type DialPartyStatus = 'answered' | 'busy' | 'no-answer' | 'failed';
export interface DialOutcome {
  status: DialPartyStatus;
  /** How long the party stays after answering, ms (default: the simulator's `talkMs`). */
  talkMs?: number;
  /** Ring time before answer / busy / failed, ms (default: the simulator's `ringMs` range). Ignored for `no-answer`, which rings for the Dial timeout. */
  ringMs?: number;
}
/** Chooses the outcome of each party dialed by `<Dial>` (and, in the fake REST server, of each created call). */
export type DialOutcomeFn = (to: string, ctx: { parentCallSid?: string; callerId?: string; kind: 'number' | 'sip' | 'client' | 'call' }) => DialOutcome | DialPartyStatus | undefined;

/** `DialCallStatus` values Twilio sends to a `<Dial action>`. */
export type DialCallStatus = 'completed' | 'answered' | 'busy' | 'no-answer' | 'failed' | 'canceled';

/** One child call placed by `<Dial>` (`<Number>`, `<Sip>`, `<Client>` or a bare number). */
export interface SimDialLeg {
  /** The child's CallSid (`DialCallSid`). */
  sid: string;
  to: string;
  kind: DialEndpointNoun['kind'];
  /** What the party was set to do. */
  outcome: DialPartyStatus;
  /** Final status of the child call. */
  status: SimCallStatus;
  /** ms the party rang (until answer, busy, failure, timeout or cancel). */
  ringMs: number;
  answeredAt?: number;
  endedAt?: number;
  /** Seconds connected (0 when never answered). */
  durationS: number;
  /** The noun's status callbacks (`statusCallback`/`statusCallbackEvent`), in order. */
  events: PostedCallback[];
}

/** A conference the call took part in through `<Dial><Conference>`. */
export interface SimDialConference {
  name: string;
  /** `CF…` of the conference instance joined. */
  sid: string;
  startConferenceOnEnter: boolean;
  endConferenceOnExit: boolean;
  beep: string;
  /** `waitUrl` as written (undefined: Twilio's default hold music; `''`: silence). */
  waitUrl?: string;
  joinedAt: number;
  /** When the conference started while this participant was in it (or at join, if it had started). */
  conferenceStartedAt?: number;
  leftAt?: number;
  /** The participant waited for the conference to start (heard the wait URL). */
  waited: boolean;
  /** The wait URL request, when it was on the bridge's own origin (others are recorded, never fetched). */
  waitRequest?: { url: string; httpStatus: number; said: string[]; error?: string };
  /** Why the participant left: the conference ended, its call hung up / was updated, or the far end hung up. */
  leftBecause?: 'conference-ended' | 'hangup' | 'update' | 'callee';
}

/** One `<Dial>` run by a call. */
/** The request to a `<Dial action>`. */
export type SimActionRequest = NonNullable<SimDialInfo['actionRequest']>;

export interface SimDialInfo {
  kind: 'endpoints' | 'conference';
  /** The first target (number, SIP URI, client) or the conference name. */
  to: string;
  nouns: DialNoun[];
  callerId?: string;
  timeoutS: number;
  /** `action` as written (absolute, or resolved against the document's URL when relative: see `actionRequest.url`). */
  action?: string;
  method: string;
  answerOnBridge: boolean;
  timeLimitS?: number;
  startedAt: number;
  /** When a party answered (endpoints) or the call joined (conference). */
  answeredAt?: number;
  endedAt?: number;
  legs: SimDialLeg[];
  conference?: SimDialConference;
  dialCallStatus?: DialCallStatus;
  dialCallSid?: string;
  dialCallDurationS?: number;
  bridged: boolean;
  /** What ended the Dial: the dialed party hung up, the caller hung up, a REST update or hang-up, nobody answered/busy/failed, the conference ended. */
  endedBy?: 'callee' | 'caller' | 'update' | 'hangup' | 'time-limit' | 'carrier' | 'conference-end';
  /** The request to `action`: `used` false when Twilio ignores its answer (the call was updated or hung up meanwhile). */
  actionRequest?: { url: string; params: Record<string, string>; httpStatus: number; used: boolean; error?: string };
}

/** A conference room of the simulator. */
export interface SimConferenceInfo {
  sid: string;
  name: string;
  accountSid: string;
  status: 'init' | 'in-progress' | 'completed';
  createdAt: number;
  startedAt?: number;
  endedAt?: number;
  /** `participant-with-end-conference-on-exit-left` | `last-participant-left`. */
  reasonEnded?: string;
  callSidEndingConference?: string;
  /** Everyone who joined, in order. */
  participants: Array<{ callSid: string; startConferenceOnEnter: boolean; endConferenceOnExit: boolean; joinedAt: number; leftAt?: number; waitUrl?: string }>;
  /** Callback URL in use (the first participant's `statusCallback`). */
  statusCallback?: string;
  /** Conference status callbacks (`kind: 'conference'`), in order. */
  events: PostedCallback[];
}

/** An incoming call ({@link CarrierSimulator.startInbound}). */
export interface InboundCallParams {
  from: string;
  to: string;
  /** The number's voice URL (public URL; mapped to the bridge when on the public origin). */
  voiceUrl: string;
  /** CallSid to use (default: a new `CA…`). */
  sid?: string;
  accountSid?: string;
  /** The number's status callback. */
  statusCallback?: string;
  /** Events posted (default: `completed` only, as for a phone number). */
  statusCallbackEvents?: readonly StatusCallbackEvent[];
  /** How long the caller stays after the call is answered, ms (default: the simulator's `talkMs`). */
  talkMs?: number;
  /** Maximum call length after answer, seconds. */
  timeLimitS?: number;
  /** Extra form fields of every request about the call (e.g. `CallerName`, `ForwardedFrom`, geo fields). */
  extraParams?: Record<string, string>;
}

export interface SimStats {
  /** Calls created. */
  created: number;
  /** Non-terminal calls now. */
  live: number;
  /** Most non-terminal calls at once. */
  maxConcurrent: number;
  /** ms epoch of every create, in order (the most recent `keepEnded`, at least 1000). */
  createTimes: number[];
}

/** Delays of the simulation (ms). */
export interface SimTiming {
  /** queued → `initiated`. */
  initiatedMs: number;
  /** `initiated` → `ringing`. */
  ringingMs: number;
  /** `no-answer` comes after min(timeoutS, this) of ringing, so local runs stay quick. */
  noAnswerMaxMs: number;
  /** AMD: time to classify a human. */
  amdHumanMs: number;
  /** AMD `Enable`: time to `machine_start`. */
  amdMachineStartMs: number;
  /** AMD `DetectMessageEnd`: time to `machine_end_beep`. */
  amdMachineEndMs: number;
  /** `<Say>` playback per character, and its bounds. */
  sayMsPerChar: number;
  sayMinMs: number;
  sayMaxMs: number;
  /** Timeout of every request to the application (Twilio: 15 s). */
  requestTimeoutMs: number;
  /** `<Dial timeout>`, `<Dial timeLimit>` and `<Pause length>` scale: ms of simulated time per second (default 1000; e.g. 10 makes a 30 s Dial timeout ring 300 ms). Ringing out is still capped by `noAnswerMaxMs`. */
  msPerDialSecond: number;
}

export const DEFAULT_TIMING: Readonly<SimTiming> = {
  initiatedMs: 10,
  ringingMs: 100,
  noAnswerMaxMs: 4000,
  amdHumanMs: 1000,
  amdMachineStartMs: 1500,
  amdMachineEndMs: 3000,
  sayMsPerChar: 60,
  sayMinMs: 300,
  sayMaxMs: 4000,
  requestTimeoutMs: 15_000,
  msPerDialSecond: 1000,
};

export interface CarrierSimulatorOptions {
  /** Where to connect, e.g. `http://127.0.0.1:8080` (may be changed later with `bridgeUrl`). */
  bridgeUrl: string;
  /** Origin the bridge signs against (`PUBLIC_URL`); URLs on this origin go to `bridgeUrl`. Default `bridgeUrl`. */
  publicUrl?: string;
  /** Sign every request (`X-Twilio-Signature`) with this token. */
  authToken?: string;
  /** Default account of the calls (default: a random `AC…`). */
  accountSid?: string;
  /** How long an answered callee stays on the line, ms (default 10 000). */
  talkMs?: number;
  /** Ring time range before answer/busy/failed, ms (default [1000, 3000]). */
  ringMs?: [number, number];
  /** Seed of the ring-time choice (default random). */
  seed?: number;
  timing?: Partial<SimTiming>;
  log?: Logger;
  /** Ended calls kept for `get`/`calls`/`findRecent` (oldest forgotten first; default 10 000). Also caps `createTimes`. */
  keepEnded?: number;
  /** What each party dialed by `<Dial>` does (default: answers after `ringMs`, stays `talkMs`). */
  dialOutcome?: DialOutcomeFn;
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

const FRAME_MS = 20;
const FRAME_BYTES = 160;
const SILENCE_FRAME = Buffer.alloc(FRAME_BYTES, 0xff).toString('base64');
const MAX_RESPONSE_BYTES = 1024 * 1024;
/** Requests still running after close() are aborted after this. */
const CLOSE_REQUEST_TIMEOUT_MS = 1000;

let humanFramesCache: string[] | undefined;
/** A callee who says something ("Hello?"), then listens: 1.2 s of speech-like audio, 4.8 s of silence, looped. */
function humanFrames(): string[] {
  if (humanFramesCache !== undefined) return humanFramesCache;
  const audio = speechLikeSignal({ durationMs: 6000, talkMs: 1200, pauseMs: 4800, seed: 7 });
  const frames: string[] = [];
  for (let off = 0; off + FRAME_BYTES <= audio.length; off += FRAME_BYTES) {
    frames.push(Buffer.from(audio.buffer, audio.byteOffset + off, FRAME_BYTES).toString('base64'));
  }
  humanFramesCache = frames;
  return frames;
}

/** RFC 2822 date as Twilio writes it: `Tue, 31 Aug 2010 20:36:28 +0000`. */
export function rfc2822(ms: number): string {
  return new Date(ms).toUTCString().replace('GMT', '+0000');
}

const errorText = (e: unknown): string => (e instanceof Error ? e.message : String(e));

interface PostResult {
  status: number;
  body: string;
  contentType: string;
}

/**
 * POSTs a form with node:http (no keep-alive: no pooled socket outlives the
 * request). Rejects on network errors, timeout or abort.
 */
function postForm(target: string, params: Record<string, string>, headers: Record<string, string>, timeoutMs: number, signal: AbortSignal, method: 'GET' | 'POST' = 'POST'): Promise<PostResult> {
  return new Promise((resolve, reject) => {
    let url: URL;
    try {
      url = new URL(target);
    } catch (err) {
      reject(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    const body = method === 'POST' ? Buffer.from(new URLSearchParams(params).toString()) : Buffer.alloc(0);
    const mod = url.protocol === 'https:' ? https : http;
    let settled = false;
    const fail = (err: Error): void => {
      if (settled) return;
      settled = true;
      reject(err);
    };
    const req = mod.request(
      url,
      {
        method,
        agent: false,
        signal,
        headers: method === 'POST' ? { ...headers, 'content-type': 'application/x-www-form-urlencoded', 'content-length': String(body.length), connection: 'close' } : { ...headers, connection: 'close' },
      },
      (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size <= MAX_RESPONSE_BYTES) chunks.push(c);
        });
        res.on('end', () => {
          if (settled) return;
          settled = true;
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8'), contentType: String(res.headers['content-type'] ?? '') });
        });
        res.on('error', fail);
        res.on('aborted', () => fail(new Error('response aborted')));
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new Error(`no answer within ${timeoutMs} ms`)));
    req.on('error', fail);
    req.end(body);
  });
}

// ---------------------------------------------------------------------------
// The engine
// ---------------------------------------------------------------------------

type Interrupt =
  | { kind: 'hangup'; endedBy: 'hangup' | 'time-limit' | 'close' }
  | { kind: 'twiml'; twiml: string }
  | { kind: 'url'; url: string };

type Source = { twiml: string } | { url: string };
/** What runs next: a public source, or TwiML already fetched (an action URL's answer) with the URL it came from. */
type Next = Source | { verbs: TwimlVerb[]; base: string | undefined };
/** How a run of verbs ended. */
type RunResult = 'interrupted' | { end: EndedBy; status?: TerminalStatus } | { next: Next };

/** A participant in a simulated conference room. */
interface RoomMember {
  call: SimCall;
  noun: DialConferenceNoun;
  rec: SimDialConference;
  /** Called once when the room ends while the member is in it. */
  onRoomEnd: () => void;
}

interface Room {
  info: SimConferenceInfo;
  members: Map<string, RoomMember>;
  statusCallback?: string;
  events: ReadonlySet<string>;
  seq: number;
}

/** One child call of a running `<Dial>`. */
interface LegRun {
  leg: SimDialLeg;
  noun: DialEndpointNoun;
  /** Caller ID the party sees. */
  from: string;
  /** The noun's `statusCallback`, resolved. */
  callbackUrl?: string;
  talkMs: number;
  /** ms after ringing starts when it answers, is busy or fails, or rings out. */
  resolveAt: number;
  result: DialPartyStatus;
  seq: number;
  events: ReadonlySet<string>;
  ringStart: number;
}

/** The `<Dial action>` fields: DialCallStatus, and for dialed numbers DialCallSid, DialCallDuration, DialBridged. */
function dialParams(d: SimDialInfo): Record<string, string> {
  const out: Record<string, string> = { DialCallStatus: d.dialCallStatus ?? 'failed' };
  if (d.kind === 'conference') return out;
  if (d.dialCallSid !== undefined) out.DialCallSid = d.dialCallSid;
  out.DialCallDuration = String(d.dialCallDurationS ?? 0);
  out.DialBridged = String(d.bridged);
  return out;
}

function participantFields(callSid: string, noun: DialConferenceNoun): Record<string, string> {
  return {
    CallSid: callSid,
    Muted: String(noun.muted),
    Hold: 'false',
    Coaching: 'false',
    EndConferenceOnExit: String(noun.endConferenceOnExit),
    StartConferenceOnEnter: String(noun.startConferenceOnEnter),
  };
}

/** A TwiML URL (action, redirect, wait URL) resolved against the document it came from, else the public origin. */
function resolveUrl(url: string, base: string | undefined, publicUrl: string): string {
  try {
    return new URL(url, base ?? `${publicUrl}/`).href;
  } catch {
    return url;
  }
}

const DEFAULT_CONFERENCE_EVENTS = ['start', 'end'];
const CONFERENCE_EVENT_NAMES: Record<string, string> = { start: 'conference-start', end: 'conference-end', join: 'participant-join', leave: 'participant-leave' };

interface SimCall {
  info: SimCallInfo;
  params: SimCallParams;
  events: ReadonlySet<StatusCallbackEvent>;
  /** TwiML to run at answer (create's Url/Twiml, or an update made before answer). */
  source: Source | undefined;
  seq: number;
  /** Callbacks go out one after the other. */
  chain: Promise<void>;
  interrupt: Interrupt | undefined;
  wakers: Set<() => void>;
  timers: Set<NodeJS.Timeout>;
  requests: Set<AbortController>;
  stream: FakeTwilioStream | undefined;
  /** Extra form fields of every request (inbound: CallerName, ForwardedFrom, …). */
  extraParams: Record<string, string>;
  done: Promise<void>;
  /** Ended, callbacks settled, nothing held: may be forgotten. */
  finished: boolean;
}

/**
 * The call-simulation engine. `start()` runs one call with a given outcome;
 * `hangup`/`update`/`sayAndHangup` act on it like Twilio's `calls(sid).update`.
 */
/** The fields Twilio sends with every request about a call (TwiML fetch, status callbacks, action URLs). */
function callParams(c: SimCall, callStatus: string): Record<string, string> {
  const p = c.params;
  const params: Record<string, string> = {
    ...c.extraParams,
    CallSid: c.info.sid,
    AccountSid: c.info.accountSid,
    From: p.from,
    To: p.to,
    Caller: p.from,
    Called: p.to,
    CallStatus: callStatus,
    Direction: c.info.direction,
    ApiVersion: '2010-04-01',
  };
  if (c.info.answeredBy !== undefined) params.AnsweredBy = c.info.answeredBy;
  return params;
}

export class CarrierSimulator {
  /** Where requests for the public origin actually go; may change (e.g. a restarted bridge). */
  bridgeUrl: string;
  readonly publicUrl: string;
  readonly accountSid: string;
  readonly #authToken: string | undefined;
  readonly #talkMs: number;
  readonly #ringMs: [number, number];
  readonly #rng: Rng;
  readonly #t: SimTiming;
  readonly #log: Logger | undefined;
  readonly #calls = new Map<string, SimCall>();
  readonly #streams = new Set<FakeTwilioStream>();
  #live = 0;
  #maxLive = 0;
  #created = 0;
  readonly #createTimes: number[] = [];
  #ended = 0;
  readonly #keepEnded: number;
  #closing = false;
  readonly #dialOutcome: DialOutcomeFn | undefined;
  /** Live (not ended) rooms by `accountSid + name`; ended ones stay in `#roomLog`. */
  readonly #rooms = new Map<string, Room>();
  readonly #roomLog: Room[] = [];

  constructor(opts: CarrierSimulatorOptions) {
    this.#dialOutcome = opts.dialOutcome;
    this.bridgeUrl = opts.bridgeUrl.replace(/\/+$/, '');
    this.publicUrl = (opts.publicUrl ?? opts.bridgeUrl).replace(/\/+$/, '');
    this.accountSid = opts.accountSid ?? newAccountSid();
    this.#authToken = opts.authToken;
    this.#talkMs = Math.max(0, opts.talkMs ?? 10_000);
    const [lo, hi] = opts.ringMs ?? [1000, 3000];
    this.#ringMs = [Math.max(0, Math.min(lo, hi)), Math.max(0, lo, hi)];
    this.#rng = new Rng(opts.seed ?? randomBytes(4).readUInt32LE(0));
    this.#t = { ...DEFAULT_TIMING, ...opts.timing };
    this.#log = opts.log;
    this.#keepEnded = Math.max(0, opts.keepEnded ?? 10_000);
  }

  /** Places a call that will end with `outcome`. Returns the `queued` call at once. Throws after `close()`. */
  start(params: SimCallParams, outcome: Outcome): SimCallInfo {
    return this.#launch(params, outcome, 'outbound-api', {});
  }

  /**
   * An incoming call, as Twilio runs it: the call rings, the voice URL gets a
   * signed POST (`Direction=inbound`, `CallStatus=ringing`), and the TwiML it
   * returns runs (`<Reject>` first: not answered; anything else answers the
   * call). Returns the CallSid. REST `update`/`hangup` work as on outbound calls.
   */
  startInbound(p: InboundCallParams): string {
    const info = this.#launch(
      {
        to: p.to,
        from: p.from,
        url: p.voiceUrl,
        statusCallbackEvents: p.statusCallbackEvents ?? ['completed'],
        ...(p.sid !== undefined ? { sid: p.sid } : {}),
        ...(p.accountSid !== undefined ? { accountSid: p.accountSid } : {}),
        ...(p.statusCallback !== undefined ? { statusCallback: p.statusCallback } : {}),
        ...(p.talkMs !== undefined ? { talkMs: p.talkMs } : {}),
        ...(p.timeLimitS !== undefined ? { timeLimitS: p.timeLimitS } : {}),
      },
      'answered',
      'inbound',
      p.extraParams ?? {},
    );
    return info.sid;
  }

  #launch(params: SimCallParams, outcome: Outcome, direction: SimCallInfo['direction'], extraParams: Record<string, string>): SimCallInfo {
    if (this.#closing) throw new Error('carrier simulator: closed');
    const sid = params.sid ?? newCallSid();
    if (this.#calls.has(sid)) throw new Error(`carrier simulator: duplicate CallSid ${sid}`);
    const now = Date.now();
    const info: SimCallInfo = {
      sid,
      accountSid: params.accountSid ?? this.accountSid,
      to: params.to,
      from: params.from,
      outcome,
      status: direction === 'inbound' ? 'ringing' : 'queued',
      createdAt: now,
      events: [],
      twimlRequests: [],
      said: [],
      direction,
      dials: [],
      streams: [],
      played: [],
      skipped: [],
      framesSent: 0,
      mediaReceived: 0,
      marksEchoed: 0,
    };
    const source: Source | undefined = params.twiml !== undefined ? { twiml: params.twiml } : params.url !== undefined ? { url: params.url } : undefined;
    const call: SimCall = {
      info,
      params,
      events: new Set(params.statusCallbackEvents ?? ALL_STATUS_EVENTS),
      source,
      seq: 0,
      chain: Promise.resolve(),
      interrupt: undefined,
      wakers: new Set(),
      timers: new Set(),
      requests: new Set(),
      stream: undefined,
      extraParams,
      done: Promise.resolve(),
      finished: false,
    };
    this.#calls.set(sid, call);
    this.#created++;
    this.#createTimes.push(now);
    if (this.#createTimes.length > Math.max(1000, this.#keepEnded)) this.#createTimes.shift();
    this.#live++;
    this.#maxLive = Math.max(this.#maxLive, this.#live);
    call.done = this.#run(call)
      .then(() => call.chain)
      .then(() => {
        call.finished = true;
        this.#forgetOld();
      });
    return snapshot(info);
  }

  /**
   * Ends a call like `calls(sid).update({status})`: a queued or ringing call is
   * canceled (either status), an in-progress call is completed (`completed`
   * only; `canceled` has no effect on it, as on Twilio). Returns the call, or
   * undefined if unknown. Ended calls are left alone.
   */
  hangup(sid: string, status: 'completed' | 'canceled' = 'completed'): SimCallInfo | undefined {
    const c = this.#calls.get(sid);
    if (c === undefined) return undefined;
    if (!isTerminalStatus(c.info.status) && !(status === 'canceled' && c.info.status === 'in-progress')) {
      this.#interrupt(c, { kind: 'hangup', endedBy: 'hangup' });
    }
    return snapshot(c.info);
  }

  /**
   * Replaces the call's TwiML like `calls(sid).update({twiml | url})`: a running
   * media stream is torn down (socket closed) and the new TwiML runs; before
   * answer it replaces what runs at answer. `unknown` / `not-in-progress`
   * (the call has ended: Twilio's 21220) when it cannot apply.
   */
  update(sid: string, change: Source): 'ok' | 'unknown' | 'not-in-progress' {
    const c = this.#calls.get(sid);
    if (c === undefined) return 'unknown';
    if (isTerminalStatus(c.info.status)) return 'not-in-progress';
    if (c.info.status === 'in-progress' || c.info.direction === 'inbound') {
      this.#interrupt(c, 'twiml' in change ? { kind: 'twiml', twiml: change.twiml } : { kind: 'url', url: change.url });
    } else {
      c.source = change;
    }
    return 'ok';
  }

  /** `update(sid, {twiml: <Say>text</Say><Hangup/>})`. */
  sayAndHangup(sid: string, text: string): 'ok' | 'unknown' | 'not-in-progress' {
    return this.update(sid, { twiml: sayHangupTwiml(text) });
  }

  /** A conference by friendly name (the live one, else the latest) or `CF…` SID; undefined if none. */
  conference(nameOrSid: string, accountSid: string = this.accountSid): SimConferenceInfo | undefined {
    const live = this.#rooms.get(`${accountSid} ${nameOrSid}`);
    if (live !== undefined) return snapshotRoom(live.info);
    for (let i = this.#roomLog.length - 1; i >= 0; i--) {
      const r = this.#roomLog[i];
      if (r !== undefined && r.info.accountSid === accountSid && (r.info.sid === nameOrSid || r.info.name === nameOrSid)) return snapshotRoom(r.info);
    }
    return undefined;
  }

  /** Every conference room, oldest first. */
  conferences(): SimConferenceInfo[] {
    return this.#roomLog.map((r) => snapshotRoom(r.info));
  }

  /**
   * The live conference called `name` (created, in `init`, when there is none,
   * as the Participants API does with a friendly name); its SID.
   */
  ensureConference(name: string, accountSid: string = this.accountSid): SimConferenceInfo {
    return snapshotRoom(this.#room(accountSid, name).info);
  }

  get(sid: string): SimCallInfo | undefined {
    const c = this.#calls.get(sid);
    return c === undefined ? undefined : snapshot(c.info);
  }

  /** Every call, oldest first. */
  calls(): SimCallInfo[] {
    return [...this.#calls.values()].map((c) => snapshot(c.info));
  }

  stats(): SimStats {
    return { created: this.#created, live: this.#live, maxConcurrent: this.#maxLive, createTimes: [...this.#createTimes] };
  }

  /** Resolves once the call has ended and its callbacks were delivered (or failed); undefined if unknown. */
  async whenEnded(sid: string): Promise<SimCallInfo | undefined> {
    const c = this.#calls.get(sid);
    if (c === undefined) return undefined;
    await c.done;
    return snapshot(c.info);
  }

  /** What the simulator holds right now (all zero once every call has ended). */
  resources(): { liveCalls: number; timers: number; streams: number; requests: number; waiters: number } {
    let timers = 0;
    let requests = 0;
    let waiters = 0;
    for (const c of this.#calls.values()) {
      timers += c.timers.size;
      requests += c.requests.size;
      waiters += c.wakers.size;
    }
    return { liveCalls: this.#live, timers, streams: this.#streams.size, requests, waiters };
  }

  /**
   * Ends every call (streams get `stop` and are closed; ringing calls are
   * canceled), tries to deliver their final callbacks briefly, and resolves
   * when no call holds a timer, socket or request. Idempotent.
   */
  async close(): Promise<void> {
    this.#closing = true;
    const calls = [...this.#calls.values()];
    for (const c of calls) {
      if (!isTerminalStatus(c.info.status)) this.#interrupt(c, { kind: 'hangup', endedBy: 'close' });
    }
    // Requests sent before close() keep their long timeout: cut them short.
    const cut = setTimeout(() => {
      for (const c of calls) for (const ac of c.requests) ac.abort();
    }, CLOSE_REQUEST_TIMEOUT_MS);
    try {
      await Promise.all(calls.map((c) => c.done));
    } finally {
      clearTimeout(cut);
    }
  }

  /** Drops the oldest ended calls beyond `keepEnded`. */
  #forgetOld(): void {
    this.#ended++;
    if (this.#ended <= this.#keepEnded) return;
    for (const [sid, c] of this.#calls) {
      if (this.#ended <= this.#keepEnded) break;
      if (!c.finished) continue;
      this.#calls.delete(sid);
      this.#ended--;
    }
  }

  // ---- one call ----------------------------------------------------------

  async #run(c: SimCall): Promise<void> {
    try {
      await this.#lifecycle(c);
    } catch (err) {
      // Not expected: every step handles its own failures. End the call anyway.
      this.#log?.error({ callSid: c.info.sid, err: errorText(err) }, 'carrier simulator: call failed unexpectedly');
      c.info.error ??= errorText(err);
      this.#end(c, c.info.answeredAt !== undefined ? 'completed' : 'failed', 'error');
    } finally {
      for (const t of c.timers) clearTimeout(t);
      c.timers.clear();
      for (const w of [...c.wakers]) w();
      c.wakers.clear();
      if (c.stream !== undefined && !c.stream.closed) {
        c.stream.terminate();
        await c.stream.whenClosed;
      }
    }
  }

  async #lifecycle(c: SimCall): Promise<void> {
    if (c.info.direction === 'inbound') {
      // The call rings at Twilio while the voice URL is requested; the TwiML answers it (or rejects it).
      this.#postStatus(c, 'ringing', 'ringing');
      return this.#runFrom(c, c.source);
    }
    const t = this.#t;
    // queued → initiated. Canceled while queued: no callbacks at all (as on Twilio).
    if (await this.#sleep(c, t.initiatedMs)) return this.#end(c, 'canceled', this.#hangupReason(c), { silent: true });
    this.#postStatus(c, 'initiated', 'initiated');
    if (await this.#sleep(c, t.ringingMs)) return this.#end(c, 'canceled', this.#hangupReason(c));
    c.info.status = 'ringing';
    this.#postStatus(c, 'ringing', 'ringing');

    const outcome = c.info.outcome;
    const timeoutMs = Math.max(0, (c.params.timeoutS ?? 60) * 1000);
    if (outcome === 'no-answer') {
      if (await this.#sleep(c, Math.min(timeoutMs, t.noAnswerMaxMs))) return this.#end(c, 'canceled', this.#hangupReason(c));
      return this.#end(c, 'no-answer', 'carrier');
    }
    if (await this.#sleep(c, c.params.ringMs ?? this.#rng.int(this.#ringMs[0], this.#ringMs[1]))) return this.#end(c, 'canceled', this.#hangupReason(c));
    if (outcome === 'busy') return this.#end(c, 'busy', 'carrier');
    if (outcome === 'failed') return this.#end(c, 'failed', 'carrier');
    await this.#answered(c);
  }

  /** The call is answered: `in-progress`, the `answered` callback, the time limit. */
  #answer(c: SimCall): void {
    c.info.status = 'in-progress';
    c.info.answeredAt = Date.now();
    this.#postStatus(c, 'answered', 'in-progress');
    if (c.params.timeLimitS !== undefined && c.params.timeLimitS > 0) {
      this.#timer(c, c.params.timeLimitS * 1000, () => this.#interrupt(c, { kind: 'hangup', endedBy: 'time-limit' }));
    }
  }

  async #answered(c: SimCall): Promise<void> {
    this.#answer(c);
    const mode = c.params.machineDetection;
    if (mode !== undefined) {
      const human = c.info.outcome === 'answered';
      const answeredBy = human ? 'human' : mode === 'Enable' ? 'machine_start' : 'machine_end_beep';
      const ms = human ? this.#t.amdHumanMs : mode === 'Enable' ? this.#t.amdMachineStartMs : this.#t.amdMachineEndMs;
      const decide = (): void => {
        c.info.answeredBy = answeredBy;
        c.info.machineDetectionDurationMs = ms;
      };
      if (c.params.asyncAmd ?? true) {
        this.#timer(c, ms, () => {
          if (isTerminalStatus(c.info.status)) return;
          decide();
          this.#postAmd(c);
        });
      } else {
        // Sync AMD: the TwiML request waits for the result and carries AnsweredBy.
        if (await this.#sleep(c, ms)) return this.#end(c, 'completed', this.#hangupReason(c));
        decide();
      }
    }
    await this.#runFrom(c, c.source);
  }

  /** Runs TwiML from `first` until the call ends: fetched documents, action URLs, redirects and REST updates. */
  async #runFrom(c: SimCall, first: Next | undefined): Promise<void> {
    let next = first;
    for (;;) {
      if (next === undefined) {
        // Nothing to run (Twilio would not have created the call): the call just ends.
        return this.#end(c, 'completed', 'bridge');
      }
      let verbs: TwimlVerb[];
      let base: string | undefined;
      if ('verbs' in next) {
        verbs = next.verbs;
        base = next.base;
      } else if ('twiml' in next) {
        verbs = parseTwimlVerbs(next.twiml);
        base = undefined;
      } else {
        const r = await this.#fetchVerbs(c, next.url, {});
        if (r === 'interrupted') {
          next = this.#takeUpdate(c);
          if (next === undefined) return this.#endHungUp(c);
          continue;
        }
        if (r === undefined) {
          // 11200: the caller hears "an application error has occurred"; the call ends.
          c.info.errorCode = 11200;
          return this.#end(c, c.info.answeredAt !== undefined ? 'completed' : 'failed', 'error');
        }
        verbs = r;
        base = next.url;
      }
      const how = await this.#runVerbs(c, verbs, base);
      if (how === 'interrupted') {
        next = this.#takeUpdate(c);
        if (next === undefined) return this.#endHungUp(c);
        continue;
      }
      if ('next' in how) {
        next = how.next;
        continue;
      }
      return this.#end(c, how.status ?? 'completed', how.end);
    }
  }

  #endHungUp(c: SimCall): void {
    this.#end(c, c.info.answeredAt !== undefined ? 'completed' : 'canceled', this.#hangupReason(c));
  }

  /** Consumes a pending TwiML update; undefined when the interrupt is a hang-up. */
  #takeUpdate(c: SimCall): Source | undefined {
    const i = c.interrupt;
    if (i === undefined || i.kind === 'hangup') return undefined;
    c.interrupt = undefined;
    return i.kind === 'twiml' ? { twiml: i.twiml } : { url: i.url };
  }

  /** (A method, so TypeScript does not keep a narrowing of `c.interrupt` across awaits.) */
  #hangingUp(c: SimCall): boolean {
    return c.interrupt?.kind === 'hangup';
  }

  #hangupReason(c: SimCall): EndedBy {
    return c.interrupt?.kind === 'hangup' ? c.interrupt.endedBy : 'hangup';
  }

  /** What interrupted a Dial: a REST update, a hang-up, or the time limit. */
  #interruptKind(c: SimCall): 'update' | 'hangup' | 'time-limit' {
    const i = c.interrupt;
    if (i?.kind !== 'hangup') return 'update';
    return i.endedBy === 'time-limit' ? 'time-limit' : 'hangup';
  }

  /** ms until the far end of this call hangs up (the callee of an outbound call, the caller of an inbound one); Infinity before answer. */
  #callerLeft(c: SimCall): number {
    if (c.info.answeredAt === undefined) return Infinity;
    return Math.max(0, c.info.answeredAt + (c.params.talkMs ?? this.#talkMs) - Date.now());
  }

  #sayMs(text: string): number {
    return Math.min(this.#t.sayMaxMs, Math.max(this.#t.sayMinMs, text.length * this.#t.sayMsPerChar));
  }

  /** Runs the verbs of one document in order. */
  async #runVerbs(c: SimCall, verbs: TwimlVerb[], base: string | undefined): Promise<RunResult> {
    for (const v of verbs) {
      if (c.interrupt !== undefined) return 'interrupted';
      if (c.info.answeredAt === undefined) {
        // An inbound call is answered by its first verb, except <Reject> (never answered) and <Dial answerOnBridge> (answered at the bridge).
        if (v.verb === 'reject') return { end: 'bridge', status: v.reason === 'busy' ? 'busy' : 'no-answer' };
        if (!(v.verb === 'dial' && v.answerOnBridge)) this.#answer(c);
      }
      switch (v.verb) {
        case 'say': {
          const times = v.loop >= 1 ? Math.min(v.loop, 10) : 1;
          for (let i = 0; i < times; i++) {
            c.info.said.push(v.text);
            if (await this.#sleep(c, this.#sayMs(v.text))) return 'interrupted';
          }
          break;
        }
        case 'play':
          c.info.played.push(v.url !== '' ? v.url : `digits:${v.digits ?? ''}`);
          if (await this.#sleep(c, this.#t.sayMinMs)) return 'interrupted';
          break;
        case 'pause':
          if (await this.#sleep(c, v.lengthS * this.#t.msPerDialSecond)) return 'interrupted';
          break;
        case 'hangup':
        case 'reject':
          return { end: 'bridge' };
        case 'redirect':
          return { next: { url: resolveUrl(v.url, base, this.publicUrl) } };
        case 'connect': {
          if (v.streamUrl === undefined) {
            c.info.skipped.push('connect');
            break;
          }
          const r = await this.#runStream(c, v.streamUrl, v.parameters);
          if (r === 'callee') return { end: 'callee' };
          if (r === 'interrupted') return 'interrupted';
          // Closed by the application or refused: <Connect action> decides, else the verbs after </Connect> run.
          if (v.action !== undefined) {
            const url = resolveUrl(v.action, base, this.publicUrl);
            const got = await this.#fetchVerbs(c, url, {}, v.method);
            if (got === 'interrupted') return 'interrupted';
            if (got === undefined) {
              c.info.errorCode = 11200;
              return { end: 'error' };
            }
            return { next: { verbs: got, base: url } };
          }
          break;
        }
        case 'dial': {
          const r = await this.#runDial(c, v, base);
          if (r !== 'continue') return r;
          break;
        }
        case 'other':
          c.info.skipped.push(v.name);
          break;
      }
    }
    return { end: 'bridge' };
  }

  /**
   * Requests TwiML (voice URL, redirect, `<Connect>`/`<Dial>` action) and parses it.
   * undefined when it failed (11200); 'interrupted' when a REST update or hang-up came first.
   */
  async #fetchVerbs(c: SimCall, url: string, extra: Record<string, string>, method = 'POST', dial?: SimDialInfo): Promise<TwimlVerb[] | undefined | 'interrupted'> {
    if (c.interrupt !== undefined) return 'interrupted';
    const params = { ...callParams(c, c.info.answeredAt === undefined ? 'ringing' : 'in-progress'), ...extra };
    const ac = new AbortController();
    let interrupted = false;
    const wake = (): void => {
      interrupted = true;
      ac.abort();
    };
    c.wakers.add(wake);
    const rec: SimCallInfo['twimlRequests'][number] = { url, httpStatus: -1 };
    c.info.twimlRequests.push(rec);
    const action: SimActionRequest | undefined = dial !== undefined ? (dial.actionRequest = { url, params, httpStatus: -1, used: true }) : undefined;
    try {
      const r = await this.#request(c, url, params, ac, method);
      rec.httpStatus = r.status;
      if (action !== undefined) action.httpStatus = r.status;
      if (r.status < 200 || r.status >= 300 || !/<\s*Response[\s>/]/i.test(r.body)) {
        rec.error = `HTTP ${r.status} without TwiML`;
        c.info.error = `TwiML request answered HTTP ${r.status}`;
        if (action !== undefined) action.error = rec.error;
        this.#log?.warn({ callSid: c.info.sid, status: r.status }, 'carrier simulator: TwiML request failed (11200)');
        return undefined;
      }
      return parseTwimlVerbs(r.body);
    } catch (err) {
      rec.httpStatus = 0;
      if (action !== undefined) action.httpStatus = 0;
      if (interrupted) {
        rec.error = 'aborted';
        if (action !== undefined) {
          action.error = 'aborted';
          action.used = false;
        }
        return 'interrupted';
      }
      rec.error = errorText(err);
      if (action !== undefined) action.error = rec.error;
      c.info.error = `TwiML request failed: ${errorText(err)}`;
      this.#log?.warn({ callSid: c.info.sid, err: errorText(err) }, 'carrier simulator: TwiML request failed (11200)');
      return undefined;
    } finally {
      c.wakers.delete(wake);
    }
  }

  // ---- <Dial> ------------------------------------------------------------------

  async #runDial(c: SimCall, v: DialVerb, base: string | undefined): Promise<RunResult | 'continue'> {
    const conf = v.nouns.find((n): n is DialConferenceNoun => n.kind === 'conference');
    const first = v.nouns[0];
    const rec: SimDialInfo = {
      kind: conf !== undefined ? 'conference' : 'endpoints',
      to: conf !== undefined ? conf.name : first !== undefined && first.kind !== 'conference' ? first.value : '',
      nouns: v.nouns,
      timeoutS: v.timeoutS,
      method: v.method,
      answerOnBridge: v.answerOnBridge,
      startedAt: Date.now(),
      legs: [],
      bridged: false,
      ...(v.callerId !== undefined ? { callerId: v.callerId } : {}),
      ...(v.action !== undefined ? { action: v.action } : {}),
      ...(v.timeLimitS !== undefined ? { timeLimitS: v.timeLimitS } : {}),
    };
    c.info.dials.push(rec);
    const how = conf !== undefined ? await this.#dialConference(c, conf, rec, base) : await this.#dialEndpoints(c, v, rec, base);
    rec.endedAt = Date.now();
    // Nobody answered a <Dial answerOnBridge>: the call goes on (and is answered) to run what comes next.
    if (how === 'done' && c.info.answeredAt === undefined) this.#answer(c);

    if (v.action !== undefined) {
      const url = resolveUrl(v.action, base, this.publicUrl);
      const extra = dialParams(rec);
      if (how === 'done') {
        const got = await this.#fetchVerbs(c, url, extra, v.method, rec);
        if (got === 'interrupted') return 'interrupted';
        if (got === undefined) {
          c.info.errorCode = 11200;
          return { end: 'error' };
        }
        return { next: { verbs: got, base: url } };
      }
      // The call hung up or was given new TwiML during the Dial: Twilio still requests the action URL, and ignores its answer.
      this.#requestIgnoredAction(c, rec, url, { ...callParams(c, how === 'caller' || this.#hangingUp(c) ? 'completed' : 'in-progress'), ...extra }, v.method);
    }
    if (how === 'caller') return { end: 'callee' };
    if (how === 'interrupted') return 'interrupted';
    return 'continue';
  }

  #requestIgnoredAction(c: SimCall, rec: SimDialInfo, url: string, params: Record<string, string>, method: string): void {
    const action: SimActionRequest = (rec.actionRequest = { url, params, httpStatus: -1, used: false });
    c.chain = c.chain.then(async () => {
      const ac = new AbortController();
      try {
        const r = await this.#request(c, url, params, ac, method);
        action.httpStatus = r.status;
        if (r.status >= 400) action.error = `HTTP ${r.status}`;
      } catch (err) {
        action.httpStatus = 0;
        action.error = errorText(err);
      }
    });
  }

  #outcomeOf(to: string, ctx: Parameters<DialOutcomeFn>[1]): DialOutcome {
    const o = this.#dialOutcome?.(to, ctx);
    if (o === undefined) return { status: 'answered' };
    return typeof o === 'string' ? { status: o } : o;
  }

  /** Waits `ms` unless interrupted or the far end hangs up first. */
  async #wait(c: SimCall, ms: number): Promise<'elapsed' | 'interrupted' | 'caller'> {
    const left = this.#callerLeft(c);
    if (ms <= left) return (await this.#sleep(c, Math.max(0, ms))) ? 'interrupted' : 'elapsed';
    return (await this.#sleep(c, left)) ? 'interrupted' : 'caller';
  }

  /** `<Dial>` to numbers / SIP / clients: child calls with their callbacks; the first to answer is bridged. */
  async #dialEndpoints(c: SimCall, v: DialVerb, rec: SimDialInfo, base: string | undefined): Promise<'done' | 'interrupted' | 'caller'> {
    const eps = v.nouns.filter((n): n is DialEndpointNoun => n.kind !== 'conference');
    const first = eps[0];
    if (first === undefined) {
      rec.dialCallStatus = 'failed';
      rec.endedBy = 'carrier';
      return 'done';
    }
    // Like REST calls, ringing out is capped by noAnswerMaxMs so local runs stay quick.
    const timeoutMs = Math.max(0, Math.min(v.timeoutS * this.#t.msPerDialSecond, this.#t.noAnswerMaxMs));
    const from = v.callerId ?? c.params.from;
    const runs: LegRun[] = eps.map((noun) => {
      const o = this.#outcomeOf(noun.value, { parentCallSid: c.info.sid, kind: noun.kind, ...(v.callerId !== undefined ? { callerId: v.callerId } : {}) });
      const ring = o.status === 'no-answer' ? timeoutMs : Math.max(0, o.ringMs ?? this.#rng.int(this.#ringMs[0], this.#ringMs[1]));
      const late = o.status === 'answered' && ring >= timeoutMs;
      const leg: SimDialLeg = { sid: newCallSid(), to: noun.value, kind: noun.kind, outcome: o.status, status: 'queued', ringMs: 0, durationS: 0, events: [] };
      rec.legs.push(leg);
      const events = new Set(noun.statusCallbackEvents.length > 0 ? noun.statusCallbackEvents : ['completed']);
      return { leg, noun, from, ...(noun.statusCallback !== undefined ? { callbackUrl: resolveUrl(noun.statusCallback, base, this.publicUrl) } : {}), talkMs: Math.max(0, o.talkMs ?? this.#talkMs), resolveAt: late ? timeoutMs : ring, result: late ? 'no-answer' : o.status, seq: 0, events, ringStart: 0 };
    });
    rec.dialCallSid = first === undefined ? undefined : runs[0]?.leg.sid;
    for (const r of runs) this.#postChild(c, r, 'initiated', 'initiated');
    let w = await this.#wait(c, this.#t.ringingMs);
    const ringStart = Date.now();
    let winner: LegRun | undefined;
    if (w === 'elapsed') {
      for (const r of runs) {
        r.leg.status = 'ringing';
        r.ringStart = ringStart;
        this.#postChild(c, r, 'ringing', 'ringing');
      }
      let elapsed = 0;
      for (const r of [...runs].sort((a, b) => a.resolveAt - b.resolveAt)) {
        w = await this.#wait(c, r.resolveAt - elapsed);
        if (w !== 'elapsed') break;
        elapsed = r.resolveAt;
        if (r.result === 'answered') {
          winner = r;
          break;
        }
        this.#endLeg(c, r, r.result);
      }
    }
    // Whoever still rings is hung up on.
    for (const r of runs) if (r !== winner) this.#endLeg(c, r, 'canceled');
    if (winner === undefined) {
      rec.dialCallDurationS = 0;
      if (w !== 'elapsed') {
        rec.dialCallStatus = 'canceled';
        rec.endedBy = w === 'caller' ? 'caller' : this.#interruptKind(c);
        return w;
      }
      const finals = runs.map((r) => r.leg.status);
      rec.dialCallStatus = finals.includes('no-answer') ? 'no-answer' : finals.includes('busy') ? 'busy' : 'failed';
      rec.endedBy = 'carrier';
      return 'done';
    }
    const leg = winner.leg;
    leg.status = 'in-progress';
    leg.answeredAt = Date.now();
    leg.ringMs = leg.answeredAt - ringStart;
    rec.answeredAt = leg.answeredAt;
    rec.bridged = true;
    rec.dialCallSid = leg.sid;
    if (c.info.answeredAt === undefined) this.#answer(c);
    this.#postChild(c, winner, 'answered', 'in-progress');
    const limitMs = v.timeLimitS !== undefined ? v.timeLimitS * this.#t.msPerDialSecond : Infinity;
    w = await this.#wait(c, Math.min(winner.talkMs, limitMs));
    this.#endLeg(c, winner, 'completed');
    rec.dialCallStatus = 'completed';
    rec.dialCallDurationS = leg.durationS;
    rec.endedBy = w === 'elapsed' ? (winner.talkMs <= limitMs ? 'callee' : 'time-limit') : w === 'caller' ? 'caller' : this.#interruptKind(c);
    return w === 'elapsed' ? 'done' : w;
  }

  #endLeg(c: SimCall, r: LegRun, status: TerminalStatus): void {
    const leg = r.leg;
    if (isTerminalStatus(leg.status)) return;
    const now = Date.now();
    const answered = leg.answeredAt !== undefined;
    leg.status = status;
    leg.endedAt = now;
    if (!answered) leg.ringMs = r.ringStart > 0 ? now - r.ringStart : 0;
    leg.durationS = answered ? Math.max(1, Math.round((now - (leg.answeredAt ?? now)) / 1000)) : 0;
    const extra: Record<string, string> = { CallDuration: String(leg.durationS), SipResponseCode: String(sipCode(status, answered)) };
    if (status === 'completed' && answered) extra.Duration = String(Math.ceil(leg.durationS / 60));
    this.#postChild(c, r, 'completed', status, extra);
  }

  /** A status callback of a child call (`<Number statusCallback statusCallbackEvent>`). */
  #postChild(c: SimCall, r: LegRun, event: StatusCallbackEvent, callStatus: string, extra: Record<string, string> = {}): void {
    const url = r.callbackUrl;
    if (url === undefined || !r.events.has(event)) return;
    const params: Record<string, string> = {
      CallSid: r.leg.sid,
      ParentCallSid: c.info.sid,
      AccountSid: c.info.accountSid,
      From: r.from,
      To: r.leg.to,
      Caller: r.from,
      Called: r.leg.to,
      CallStatus: callStatus,
      Direction: 'outbound-dial',
      ApiVersion: '2010-04-01',
      Timestamp: rfc2822(Date.now()),
      CallbackSource: 'call-progress-events',
      SequenceNumber: String(r.seq++),
      ...extra,
    };
    const rec: PostedCallback = { kind: 'child-status', event, callStatus, sequence: Number(params.SequenceNumber), url, params, at: Date.now(), httpStatus: -1 };
    r.leg.events.push(rec);
    this.#deliver(c, rec, r.noun.statusCallbackMethod);
  }

  // ---- <Dial><Conference> ----------------------------------------------------------

  /** The live room called `name` (a new conference instance when there is none). */
  #room(accountSid: string, name: string): Room {
    const key = `${accountSid} ${name}`;
    const live = this.#rooms.get(key);
    if (live !== undefined) return live;
    const room: Room = {
      info: { sid: `CF${randomBytes(16).toString('hex')}`, name, accountSid, status: 'init', createdAt: Date.now(), participants: [], events: [] },
      members: new Map(),
      events: new Set(),
      seq: 0,
    };
    this.#rooms.set(key, room);
    this.#roomLog.push(room);
    if (this.#roomLog.length > Math.max(100, this.#keepEnded)) this.#roomLog.shift();
    return room;
  }

  async #dialConference(c: SimCall, noun: DialConferenceNoun, rec: SimDialInfo, base: string | undefined): Promise<'done' | 'interrupted' | 'caller'> {
    const room = this.#room(c.info.accountSid, noun.name);
    const now = Date.now();
    const conf: SimDialConference = {
      name: noun.name,
      sid: room.info.sid,
      startConferenceOnEnter: noun.startConferenceOnEnter,
      endConferenceOnExit: noun.endConferenceOnExit,
      beep: noun.beep,
      joinedAt: now,
      waited: false,
      ...(noun.waitUrl !== undefined ? { waitUrl: noun.waitUrl } : {}),
    };
    rec.conference = conf;
    rec.answeredAt = now;
    if (room.statusCallback === undefined && noun.statusCallback !== undefined) {
      room.statusCallback = resolveUrl(noun.statusCallback, base, this.publicUrl);
      room.info.statusCallback = room.statusCallback;
      room.events = new Set(noun.statusCallbackEvents.length > 0 ? noun.statusCallbackEvents : DEFAULT_CONFERENCE_EVENTS);
    }
    let roomEnded = false;
    let wakeRoom: (() => void) | undefined;
    const member: RoomMember = {
      call: c,
      noun,
      rec: conf,
      onRoomEnd: () => {
        roomEnded = true;
        wakeRoom?.();
      },
    };
    room.members.set(c.info.sid, member);
    room.info.participants.push({ callSid: c.info.sid, startConferenceOnEnter: noun.startConferenceOnEnter, endConferenceOnExit: noun.endConferenceOnExit, joinedAt: now, ...(noun.waitUrl !== undefined ? { waitUrl: noun.waitUrl } : {}) });
    this.#roomEvent(c, room, 'join', participantFields(c.info.sid, noun));
    if (room.info.status === 'in-progress') {
      conf.conferenceStartedAt = now;
    } else if (room.members.size >= 2 && [...room.members.values()].some((m) => m.noun.startConferenceOnEnter)) {
      // Started by a participant with startConferenceOnEnter, with someone to talk to.
      room.info.status = 'in-progress';
      room.info.startedAt = now;
      for (const m of room.members.values()) m.rec.conferenceStartedAt ??= now;
      this.#roomEvent(c, room, 'start', {});
    } else {
      conf.waited = true;
      this.#fetchWait(c, conf, noun, base);
    }

    const why = await new Promise<'room' | 'interrupted' | 'caller'>((resolve) => {
      if (roomEnded) return resolve('room');
      if (c.interrupt !== undefined) return resolve('interrupted');
      let done = false;
      let timer: NodeJS.Timeout | undefined;
      const finish = (w: 'room' | 'interrupted' | 'caller'): void => {
        if (done) return;
        done = true;
        c.wakers.delete(wake);
        if (timer !== undefined) {
          clearTimeout(timer);
          c.timers.delete(timer);
        }
        wakeRoom = undefined;
        resolve(w);
      };
      const wake = (): void => finish('interrupted');
      c.wakers.add(wake);
      wakeRoom = () => finish('room');
      const left = this.#callerLeft(c);
      if (Number.isFinite(left)) {
        timer = setTimeout(() => finish('caller'), left);
        c.timers.add(timer);
      }
    });
    conf.leftAt = Date.now();
    rec.dialCallStatus = 'answered';
    rec.bridged = conf.conferenceStartedAt !== undefined;
    if (why === 'room') {
      conf.leftBecause = 'conference-ended';
      rec.endedBy = 'conference-end';
      return 'done';
    }
    const hungUp = why === 'caller' || this.#hangingUp(c);
    conf.leftBecause = why === 'caller' ? 'callee' : hungUp ? 'hangup' : 'update';
    rec.endedBy = why === 'caller' ? 'caller' : this.#interruptKind(c);
    this.#leaveRoom(c, room, member, hungUp ? 'participant_hung_up' : 'participant_updated_via_api', hungUp ? 'completed' : 'in-progress');
    return why;
  }

  #leaveRoom(c: SimCall, room: Room, m: RoomMember, reason: string, callStatus: string): void {
    if (!room.members.delete(m.call.info.sid)) return;
    const p = room.info.participants.find((x) => x.callSid === m.call.info.sid && x.leftAt === undefined);
    if (p !== undefined) p.leftAt = Date.now();
    this.#roomEvent(c, room, 'leave', { ...participantFields(m.call.info.sid, m.noun), ReasonParticipantLeft: reason, ParticipantCallStatus: callStatus });
    if (m.noun.endConferenceOnExit) this.#endRoom(c, room, 'participant-with-end-conference-on-exit-left', m.call.info.sid);
    else if (room.members.size === 0) this.#endRoom(c, room, 'last-participant-left', m.call.info.sid);
  }

  /** Ends the conference: everyone still in it leaves (their `<Dial>` ends), then `conference-end`. */
  #endRoom(c: SimCall, room: Room, reason: string, endingSid: string): void {
    if (room.info.status === 'completed') return;
    room.info.status = 'completed';
    room.info.endedAt = Date.now();
    room.info.reasonEnded = reason;
    room.info.callSidEndingConference = endingSid;
    this.#rooms.delete(`${room.info.accountSid} ${room.info.name}`);
    for (const m of [...room.members.values()]) {
      room.members.delete(m.call.info.sid);
      const p = room.info.participants.find((x) => x.callSid === m.call.info.sid && x.leftAt === undefined);
      if (p !== undefined) p.leftAt = Date.now();
      this.#roomEvent(c, room, 'leave', { ...participantFields(m.call.info.sid, m.noun), ReasonParticipantLeft: reason.replace(/-/g, '_'), ParticipantCallStatus: 'in-progress' });
      m.onRoomEnd();
    }
    this.#roomEvent(c, room, 'end', { ReasonConferenceEnded: reason, CallSidEndingConference: endingSid });
  }

  /** A conference status callback (start, end, join, leave), signed, when the room has a callback and the event is subscribed. */
  #roomEvent(c: SimCall, room: Room, key: string, extra: Record<string, string>): void {
    const url = room.statusCallback;
    const name = CONFERENCE_EVENT_NAMES[key] ?? key;
    if (url === undefined || !room.events.has(key)) return;
    const params: Record<string, string> = {
      AccountSid: room.info.accountSid,
      ConferenceSid: room.info.sid,
      FriendlyName: room.info.name,
      StatusCallbackEvent: name,
      Timestamp: rfc2822(Date.now()),
      SequenceNumber: String(room.seq++),
      ...extra,
    };
    const rec: PostedCallback = { kind: 'conference', conferenceEvent: name, sequence: Number(params.SequenceNumber), url, params, at: Date.now(), httpStatus: -1 };
    room.info.events.push(rec);
    this.#deliver(c, rec);
  }

  /** The wait URL: fetched only when it is on the bridge's own origin (recorded either way). */
  #fetchWait(c: SimCall, conf: SimDialConference, noun: DialConferenceNoun, base: string | undefined): void {
    if (noun.waitUrl === undefined || noun.waitUrl === '') return;
    let url: string;
    try {
      url = resolveUrl(noun.waitUrl, base, this.publicUrl);
      if (new URL(url).origin !== new URL(this.publicUrl).origin) return;
    } catch {
      return;
    }
    const wr: NonNullable<SimDialConference['waitRequest']> = (conf.waitRequest = { url, httpStatus: -1, said: [] });
    c.chain = c.chain.then(async () => {
      const ac = new AbortController();
      try {
        const r = await this.#request(c, url, callParams(c, 'in-progress'), ac, noun.waitMethod ?? 'POST');
        wr.httpStatus = r.status;
        if (r.status >= 200 && r.status < 300 && /<\s*Response[\s>/]/i.test(r.body)) {
          for (const v of parseTwimlVerbs(r.body)) if (v.verb === 'say') wr.said.push(v.text);
        } else if (r.status >= 400) wr.error = `HTTP ${r.status}`;
      } catch (err) {
        wr.httpStatus = 0;
        wr.error = errorText(err);
      }
    });
  }

  /** The `<Connect><Stream>` part of a call. */
  async #runStream(c: SimCall, streamUrl: string, parameters: Record<string, string>): Promise<'callee' | 'closed' | 'refused' | 'interrupted'> {
    // Signed exactly as written; a relative url resolves against the public origin. No query (Twilio drops it).
    let signedUrl: string;
    try {
      const absolute = /^[a-z][a-z0-9+.-]*:/i.test(streamUrl);
      signedUrl = absolute ? streamUrl : new URL(streamUrl, this.publicUrl.replace(/^http/i, 'ws')).href;
      if (signedUrl.includes('?')) signedUrl = signedUrl.slice(0, signedUrl.indexOf('?'));
    } catch {
      c.info.errorCode = 31920;
      c.info.error = `invalid <Stream url> ${JSON.stringify(streamUrl)}`;
      return 'refused';
    }
    if (c.interrupt !== undefined) return 'interrupted';
    let stream: FakeTwilioStream;
    try {
      stream = await FakeTwilioStream.connect({
        bridgeUrl: this.bridgeUrl,
        streamUrl: signedUrl,
        ...(this.#authToken !== undefined ? { authToken: this.#authToken } : {}),
        autoEchoMarks: true,
        recordMessages: false,
        recordHeard: false,
        handshakeTimeoutMs: 10_000,
      });
    } catch (err) {
      c.info.errorCode = 31920;
      c.info.error = errorText(err);
      this.#log?.warn({ callSid: c.info.sid, err: errorText(err) }, 'carrier simulator: media stream refused (31920)');
      return 'refused';
    }
    c.stream = stream;
    this.#streams.add(stream);
    void stream.whenClosed.then(() => this.#streams.delete(stream));

    const streamSid = newStreamSid();
    c.info.streamSid = streamSid;
    const srec: SimStreamInfo = { streamSid, url: streamUrl, parameters: { ...parameters }, startedAt: Date.now(), stopSent: false };
    c.info.streams.push(srec);
    stream.sendConnected();
    stream.sendStart({ callSid: c.info.sid, streamSid, accountSid: c.info.accountSid, customParameters: parameters });

    const frames = c.info.outcome === 'answered' ? humanFrames() : undefined;
    const talkLeft = Math.max(0, (c.info.answeredAt ?? Date.now()) + (c.params.talkMs ?? this.#talkMs) - Date.now());
    const clockStart = performance.now();
    let n = 0;

    const how = await new Promise<'callee' | 'closed' | 'interrupted'>((resolve) => {
      let done = false;
      let frameTimer: NodeJS.Timeout | undefined;
      const finish = (why: 'callee' | 'closed' | 'interrupted'): void => {
        if (done) return;
        done = true;
        if (frameTimer !== undefined) {
          clearTimeout(frameTimer);
          c.timers.delete(frameTimer);
        }
        clearTimeout(talkTimer);
        c.timers.delete(talkTimer);
        c.wakers.delete(wake);
        resolve(why);
      };
      const wake = (): void => finish('interrupted');
      const talkTimer = setTimeout(() => finish('callee'), talkLeft);
      c.timers.add(talkTimer);
      c.wakers.add(wake);
      void stream.whenClosed.then(() => finish('closed'));
      const tick = (): void => {
        if (frameTimer !== undefined) c.timers.delete(frameTimer);
        frameTimer = undefined;
        if (done || stream.closed) return;
        const now = performance.now();
        while (clockStart + n * FRAME_MS <= now) {
          stream.sendMedia(frames !== undefined ? (frames[n % frames.length] ?? SILENCE_FRAME) : SILENCE_FRAME, n * FRAME_MS);
          n++;
        }
        frameTimer = setTimeout(tick, Math.max(0, clockStart + n * FRAME_MS - performance.now()));
        c.timers.add(frameTimer);
      };
      if (c.interrupt !== undefined) return finish('interrupted');
      tick();
    });

    if (how === 'callee' || how === 'interrupted') {
      // The call ends, or new TwiML replaces <Connect>: the stream stops, so Twilio sends `stop` and closes the socket.
      stream.sendStop();
      srec.stopSent = true;
      stream.close(1000);
    }
    srec.endedBy = how === 'callee' ? 'callee' : how === 'closed' ? 'closed' : this.#hangingUp(c) ? 'hangup' : 'update';
    if (!stream.closed) {
      const closed = await Promise.race([stream.whenClosed.then(() => true), this.#delay(c, 2000).then(() => false)]);
      if (!closed) {
        stream.terminate();
        await stream.whenClosed;
      }
    }
    c.info.framesSent = stream.framesSent;
    c.info.mediaReceived = stream.mediaReceived;
    c.info.marksEchoed = stream.marksEchoed;
    c.stream = undefined;
    srec.endedAt = Date.now();
    return how;
  }

  // ---- ending --------------------------------------------------------------

  /** Makes the call terminal and posts the `completed` event (unless `silent`). */
  #end(c: SimCall, status: TerminalStatus, endedBy: EndedBy, opts: { silent?: boolean } = {}): void {
    if (isTerminalStatus(c.info.status)) return;
    const now = Date.now();
    c.info.status = status;
    c.info.endedAt = now;
    c.info.endedBy = endedBy;
    const answered = c.info.answeredAt !== undefined;
    c.info.durationS = answered ? Math.max(1, Math.round((now - (c.info.answeredAt ?? now)) / 1000)) : 0;
    this.#live--;
    for (const t of c.timers) clearTimeout(t);
    c.timers.clear();
    this.#log?.debug({ callSid: c.info.sid, status, endedBy, durationS: c.info.durationS }, 'carrier simulator: call ended');
    if (opts.silent) return;
    const extra: Record<string, string> = {
      CallDuration: String(c.info.durationS),
      SipResponseCode: String(sipCode(status, answered)),
    };
    if (status === 'completed' && answered) extra.Duration = String(Math.ceil(c.info.durationS / 60));
    if (endedBy === 'error' && c.info.errorCode !== undefined) extra.ErrorCode = String(c.info.errorCode);
    this.#postStatus(c, 'completed', status, extra);
  }

  // ---- callbacks -------------------------------------------------------------

  #postStatus(c: SimCall, event: StatusCallbackEvent, callStatus: string, extra: Record<string, string> = {}): void {
    const url = c.params.statusCallback;
    if (url === undefined || !c.events.has(event)) return;
    const params: Record<string, string> = {
      ...callParams(c, callStatus),
      Timestamp: rfc2822(Date.now()),
      CallbackSource: 'call-progress-events',
      SequenceNumber: String(c.seq++),
      ...extra,
    };
    const rec: PostedCallback = { kind: 'status', event, callStatus, sequence: Number(params.SequenceNumber), url, params, at: Date.now(), httpStatus: -1 };
    c.info.events.push(rec);
    this.#deliver(c, rec);
  }

  #postAmd(c: SimCall): void {
    const url = c.params.amdCallback;
    if (url === undefined) return;
    const params: Record<string, string> = {
      CallSid: c.info.sid,
      AccountSid: c.info.accountSid,
      AnsweredBy: c.info.answeredBy ?? 'unknown',
      MachineDetectionDuration: String(c.info.machineDetectionDurationMs ?? 0),
    };
    const rec: PostedCallback = { kind: 'amd', url, params, at: Date.now(), httpStatus: -1 };
    c.info.amd = rec;
    this.#deliver(c, rec);
  }

  /** Queues one callback after the previous ones of the call; failures are recorded, never retried. */
  #deliver(c: SimCall, rec: PostedCallback, method = 'POST'): void {
    c.chain = c.chain.then(async () => {
      const ac = new AbortController();
      try {
        rec.at = Date.now();
        const r = await this.#request(c, rec.url, rec.params, ac, method);
        rec.httpStatus = r.status;
        if (r.status >= 400) rec.error = `HTTP ${r.status}`;
      } catch (err) {
        rec.httpStatus = 0;
        rec.error = errorText(err);
        this.#log?.debug({ callSid: c.info.sid, url: rec.url, err: rec.error }, 'carrier simulator: callback not delivered');
      }
    });
  }

  /**
   * One signed request to the application, tracked on the call: a form POST, or
   * (method GET) the parameters in the query string, signed over the whole URL.
   */
  async #request(c: SimCall, url: string, params: Record<string, string>, ac: AbortController, method = 'POST'): Promise<PostResult> {
    const get = method.toUpperCase() === 'GET';
    const full = get ? `${url}${url.includes('?') ? '&' : '?'}${new URLSearchParams(params).toString()}` : url;
    const headers: Record<string, string> = { 'user-agent': 'TwilioProxy/1.1 (playline-sim-carrier)', 'i-twilio-idempotency-token': randomBytes(16).toString('hex') };
    if (this.#authToken !== undefined) headers['x-twilio-signature'] = twilio.getExpectedTwilioSignature(this.#authToken, full, get ? {} : params);
    c.requests.add(ac);
    const timeout = this.#closing ? CLOSE_REQUEST_TIMEOUT_MS : this.#t.requestTimeoutMs;
    try {
      return await postForm(this.#target(full), get ? {} : params, headers, timeout, ac.signal, get ? 'GET' : 'POST');
    } finally {
      c.requests.delete(ac);
    }
  }

  /** A URL on the public origin goes to the bridge's real address (same path and query). */
  #target(url: string): string {
    try {
      const u = new URL(url);
      const pub = new URL(this.publicUrl);
      if (u.origin !== pub.origin) return url;
      return new URL(this.bridgeUrl).origin + u.pathname + u.search;
    } catch {
      return url;
    }
  }

  // ---- timers and interrupts --------------------------------------------------

  #interrupt(c: SimCall, i: Interrupt): void {
    // A hang-up wins over a pending TwiML update and is final.
    if (c.interrupt?.kind === 'hangup') return;
    c.interrupt = i;
    for (const w of [...c.wakers]) w();
  }

  #timer(c: SimCall, ms: number, fn: () => void): void {
    const t = setTimeout(() => {
      c.timers.delete(t);
      fn();
    }, ms);
    c.timers.add(t);
  }

  #delay(c: SimCall, ms: number): Promise<void> {
    return new Promise((resolve) => this.#timer(c, ms, resolve));
  }

  /** Waits `ms`; resolves true at once when the call is (or gets) interrupted. */
  #sleep(c: SimCall, ms: number): Promise<boolean> {
    if (c.interrupt !== undefined) return Promise.resolve(true);
    return new Promise((resolve) => {
      const t = setTimeout(() => {
        c.timers.delete(t);
        c.wakers.delete(wake);
        resolve(false);
      }, ms);
      const wake = (): void => {
        clearTimeout(t);
        c.timers.delete(t);
        c.wakers.delete(wake);
        resolve(true);
      };
      c.timers.add(t);
      c.wakers.add(wake);
    });
  }
}

function sipCode(status: TerminalStatus, answered: boolean): number {
  switch (status) {
    case 'completed':
      return 200;
    case 'busy':
      return 486;
    case 'no-answer':
    case 'canceled':
      return 487;
    case 'failed':
      return answered ? 500 : 404;
  }
}

function snapshotRoom(info: SimConferenceInfo): SimConferenceInfo {
  return {
    ...info,
    participants: info.participants.map((p) => ({ ...p })),
    events: info.events.map((e) => ({ ...e, params: { ...e.params } })),
  };
}

function snapshotDial(d: SimDialInfo): SimDialInfo {
  return {
    ...d,
    nouns: d.nouns.map((n) => ({ ...n, statusCallbackEvents: [...n.statusCallbackEvents] })),
    legs: d.legs.map((l) => ({ ...l, events: l.events.map((e) => ({ ...e, params: { ...e.params } })) })),
    ...(d.conference !== undefined ? { conference: { ...d.conference, ...(d.conference.waitRequest !== undefined ? { waitRequest: { ...d.conference.waitRequest, said: [...d.conference.waitRequest.said] } } : {}) } } : {}),
    ...(d.actionRequest !== undefined ? { actionRequest: { ...d.actionRequest, params: { ...d.actionRequest.params } } } : {}),
  };
}

function snapshot(info: SimCallInfo): SimCallInfo {
  return {
    ...info,
    dials: info.dials.map(snapshotDial),
    streams: info.streams.map((x) => ({ ...x, parameters: { ...x.parameters } })),
    played: [...info.played],
    skipped: [...info.skipped],
    events: info.events.map((e) => ({ ...e, params: { ...e.params } })),
    ...(info.amd !== undefined ? { amd: { ...info.amd, params: { ...info.amd.params } } } : {}),
    twimlRequests: info.twimlRequests.map((r) => ({ ...r })),
    said: [...info.said],
  };
}

/** REST view of a simulated call (the status a `GET Calls/{sid}` would show). */
export function toCarrierCall(info: SimCallInfo): CarrierCall {
  const call: CarrierCall = { sid: info.sid, status: info.status, to: info.to, from: info.from, createdAt: info.createdAt };
  if (info.answeredBy !== undefined) call.answeredBy = info.answeredBy;
  if (info.durationS !== undefined) call.durationS = info.durationS;
  return call;
}

// ---------------------------------------------------------------------------
// The local dialer
// ---------------------------------------------------------------------------

export interface LocalDialerOptions {
  /** Where to connect, e.g. `http://127.0.0.1:8080`. */
  bridgeUrl: string;
  /** Origin the bridge signs against (`PUBLIC_URL`). */
  publicUrl: string;
  /** Sign requests when set (`TWILIO_AUTH_TOKEN` of the bridge). */
  authToken?: string;
  /** Relative weights of the outcomes (missing ones count 0; all zero: every call is answered). */
  outcomes?: Partial<Record<Outcome, number>>;
  /** How long an answered callee (or a voicemail) stays, ms. */
  talkMs: number;
  /** Ring time range, ms (default [1000, 3000]). */
  ringMs?: [number, number];
  /** Seed of the outcome and ring-time choices (same seed, same sequence). */
  seed?: number;
  log?: Logger;
  /** Chooses the outcome instead of the weights; `attempt` counts creates to `to` (1 first). */
  outcomeFor?: (to: string, attempt: number) => Outcome;
  accountSid?: string;
  timing?: Partial<SimTiming>;
  /** Ended calls remembered (default 10 000). */
  keepEnded?: number;
  /** What each party dialed by `<Dial>` (a transfer) does; default: answers. */
  dialOutcome?: DialOutcomeFn;
}

/**
 * The `Dialer` of local mode: every call is simulated against the bridge by a
 * {@link CarrierSimulator}, with the four status events, async AMD when asked,
 * and the outcome chosen per call.
 */
export class LocalDialer implements Dialer {
  readonly name = 'local';
  readonly simulator: CarrierSimulator;
  readonly #outcomeFor: ((to: string, attempt: number) => Outcome) | undefined;
  readonly #weights: Array<readonly [number, Outcome]>;
  readonly #rng: Rng;
  readonly #attempts = new Map<string, number>();

  constructor(opts: LocalDialerOptions) {
    const seed = opts.seed ?? randomBytes(4).readUInt32LE(0);
    this.simulator = new CarrierSimulator({
      bridgeUrl: opts.bridgeUrl,
      publicUrl: opts.publicUrl,
      talkMs: opts.talkMs,
      seed: (seed + 1) >>> 0,
      ...(opts.authToken !== undefined ? { authToken: opts.authToken } : {}),
      ...(opts.ringMs !== undefined ? { ringMs: opts.ringMs } : {}),
      ...(opts.log !== undefined ? { log: opts.log } : {}),
      ...(opts.accountSid !== undefined ? { accountSid: opts.accountSid } : {}),
      ...(opts.timing !== undefined ? { timing: opts.timing } : {}),
      ...(opts.keepEnded !== undefined ? { keepEnded: opts.keepEnded } : {}),
      ...(opts.dialOutcome !== undefined ? { dialOutcome: opts.dialOutcome } : {}),
    });
    this.#outcomeFor = opts.outcomeFor;
    const weights = OUTCOMES.map((o) => [Math.max(0, opts.outcomes?.[o] ?? 0), o] as const).filter(([w]) => w > 0);
    this.#weights = weights.length > 0 ? weights : [[1, 'answered']];
    this.#rng = new Rng(seed);
  }

  async create(req: DialRequest): Promise<CarrierCall> {
    const attempt = (this.#attempts.get(req.to) ?? 0) + 1;
    this.#attempts.set(req.to, attempt);
    const outcome = this.#outcomeFor !== undefined ? this.#outcomeFor(req.to, attempt) : this.#rng.weighted(this.#weights);
    let info: SimCallInfo;
    try {
      info = this.simulator.start(
        {
          to: req.to,
          from: req.from,
          url: req.url,
          statusCallback: req.statusCallback,
          statusCallbackEvents: ALL_STATUS_EVENTS,
          timeoutS: req.timeoutS,
          ...(req.timeLimitS !== undefined ? { timeLimitS: req.timeLimitS } : {}),
          ...(req.machineDetection !== undefined ? { machineDetection: req.machineDetection, asyncAmd: true } : {}),
          ...(req.amdCallback !== undefined ? { amdCallback: req.amdCallback } : {}),
        },
        outcome,
      );
    } catch (err) {
      throw new DialError('rejected', `local carrier: ${errorText(err)}`);
    }
    return { sid: info.sid, status: 'queued', to: info.to, from: info.from, createdAt: info.createdAt };
  }

  async hangup(sid: string): Promise<void> {
    if (this.simulator.hangup(sid, 'completed') === undefined) throw new DialError('rejected', `local carrier: unknown call ${sid}`, 20404, 404);
  }

  async sayAndHangup(sid: string, text: string): Promise<void> {
    const r = this.simulator.sayAndHangup(sid, text);
    if (r === 'unknown') throw new DialError('rejected', `local carrier: unknown call ${sid}`, 20404, 404);
    if (r === 'not-in-progress') throw new DialError('rejected', `local carrier: call ${sid} is not in progress`, 21220, 400);
  }

  async fetch(sid: string): Promise<CarrierCall | undefined> {
    const info = this.simulator.get(sid);
    return info === undefined ? undefined : toCarrierCall(info);
  }

  async findRecent(to: string, from: string, since: number): Promise<CarrierCall[]> {
    return this.simulator
      .calls()
      .filter((c) => c.to === to && c.from === from && c.createdAt >= since)
      .sort((a, b) => b.createdAt - a.createdAt)
      .map(toCarrierCall);
  }

  /** Every simulated call (sid, to, from, outcome, callbacks posted, said texts, times…). */
  calls(): SimCallInfo[] {
    return this.simulator.calls();
  }

  stats(): SimStats {
    return this.simulator.stats();
  }

  close(): Promise<void> {
    return this.simulator.close();
  }
}
