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
import { FakeTwilioStream, newAccountSid, newCallSid, newStreamSid, parseTwiml, type ParsedTwiml } from './twilioSim.js';
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
}

/** One request the carrier made to the application (status callback or AMD result). */
export interface PostedCallback {
  kind: 'status' | 'amd';
  /** Status callbacks: the event. */
  event?: StatusCallbackEvent;
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
function postForm(target: string, params: Record<string, string>, headers: Record<string, string>, timeoutMs: number, signal: AbortSignal): Promise<PostResult> {
  return new Promise((resolve, reject) => {
    let url: URL;
    try {
      url = new URL(target);
    } catch (err) {
      reject(err instanceof Error ? err : new Error(String(err)));
      return;
    }
    const body = Buffer.from(new URLSearchParams(params).toString());
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
        method: 'POST',
        agent: false,
        signal,
        headers: { ...headers, 'content-type': 'application/x-www-form-urlencoded', 'content-length': String(body.length), connection: 'close' },
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
  done: Promise<void>;
  /** Ended, callbacks settled, nothing held: may be forgotten. */
  finished: boolean;
}

/**
 * The call-simulation engine. `start()` runs one call with a given outcome;
 * `hangup`/`update`/`sayAndHangup` act on it like Twilio's `calls(sid).update`.
 */
/** The fields Twilio sends with every request about an outbound call (TwiML fetch, status callbacks). */
function callParams(c: SimCall, callStatus: string): Record<string, string> {
  const p = c.params;
  const params: Record<string, string> = {
    CallSid: c.info.sid,
    AccountSid: c.info.accountSid,
    From: p.from,
    To: p.to,
    Caller: p.from,
    Called: p.to,
    CallStatus: callStatus,
    Direction: 'outbound-api',
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

  constructor(opts: CarrierSimulatorOptions) {
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
      status: 'queued',
      createdAt: now,
      events: [],
      twimlRequests: [],
      said: [],
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
    if (c.info.status === 'in-progress') {
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
    if (await this.#sleep(c, this.#rng.int(this.#ringMs[0], this.#ringMs[1]))) return this.#end(c, 'canceled', this.#hangupReason(c));
    if (outcome === 'busy') return this.#end(c, 'busy', 'carrier');
    if (outcome === 'failed') return this.#end(c, 'failed', 'carrier');
    await this.#answered(c);
  }

  async #answered(c: SimCall): Promise<void> {
    c.info.status = 'in-progress';
    c.info.answeredAt = Date.now();
    this.#postStatus(c, 'answered', 'in-progress');
    if (c.params.timeLimitS !== undefined && c.params.timeLimitS > 0) {
      this.#timer(c, c.params.timeLimitS * 1000, () => this.#interrupt(c, { kind: 'hangup', endedBy: 'time-limit' }));
    }

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

    let source = c.source;
    for (;;) {
      if (source === undefined) {
        // Nothing to run (Twilio would not have created the call): the call just ends.
        return this.#end(c, 'completed', 'bridge');
      }
      let doc: ParsedTwiml | undefined;
      if ('twiml' in source) {
        doc = parseTwiml(source.twiml);
      } else {
        const r = await this.#fetchTwiml(c, source.url);
        if (r === 'interrupted') {
          const next = this.#takeUpdate(c);
          if (next === undefined) return this.#end(c, 'completed', this.#hangupReason(c));
          source = next;
          continue;
        }
        if (r === undefined) {
          // 11200: the callee hears "an application error has occurred"; the answered call completes.
          c.info.errorCode = 11200;
          return this.#end(c, 'completed', 'error');
        }
        doc = r;
      }
      const how = await this.#execute(c, doc);
      if (how === 'interrupted') {
        const next = this.#takeUpdate(c);
        if (next === undefined) return this.#end(c, 'completed', this.#hangupReason(c));
        source = next;
        continue;
      }
      return this.#end(c, 'completed', how);
    }
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

  /** Runs a TwiML document: the stream, or the `<Say>`s. 'callee' when the callee hung up, 'bridge' when the document ran out. */
  async #execute(c: SimCall, doc: ParsedTwiml): Promise<'callee' | 'bridge' | 'interrupted'> {
    if (doc.streamUrl !== undefined) {
      const r = await this.#runStream(c, doc.streamUrl, doc.parameters);
      // Stream closed by the application or refused: the verbs after </Connect> run (<Hangup/>).
      return r === 'closed' || r === 'refused' ? 'bridge' : r;
    }
    for (const text of doc.say) {
      c.info.said.push(text);
      const ms = Math.min(this.#t.sayMaxMs, Math.max(this.#t.sayMinMs, text.length * this.#t.sayMsPerChar));
      if (await this.#sleep(c, ms)) return 'interrupted';
    }
    return 'bridge';
  }

  async #fetchTwiml(c: SimCall, url: string): Promise<ParsedTwiml | undefined | 'interrupted'> {
    if (c.interrupt !== undefined) return 'interrupted';
    const params = callParams(c, 'in-progress');
    const ac = new AbortController();
    let interrupted = false;
    const wake = (): void => {
      interrupted = true;
      ac.abort();
    };
    c.wakers.add(wake);
    const rec: SimCallInfo['twimlRequests'][number] = { url, httpStatus: -1 };
    c.info.twimlRequests.push(rec);
    try {
      const r = await this.#request(c, url, params, ac);
      rec.httpStatus = r.status;
      if (r.status < 200 || r.status >= 300 || !/<\s*Response[\s>/]/i.test(r.body)) {
        rec.error = `HTTP ${r.status} without TwiML`;
        c.info.error = `TwiML request answered HTTP ${r.status}`;
        this.#log?.warn({ callSid: c.info.sid, status: r.status }, 'carrier simulator: TwiML request failed (11200)');
        return undefined;
      }
      return parseTwiml(r.body);
    } catch (err) {
      if (interrupted) {
        rec.httpStatus = 0;
        rec.error = 'aborted';
        return 'interrupted';
      }
      rec.httpStatus = 0;
      rec.error = errorText(err);
      c.info.error = `TwiML request failed: ${errorText(err)}`;
      this.#log?.warn({ callSid: c.info.sid, err: errorText(err) }, 'carrier simulator: TwiML request failed (11200)');
      return undefined;
    } finally {
      c.wakers.delete(wake);
    }
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

    if (how === 'callee' || (how === 'interrupted' && this.#hangingUp(c))) {
      // The call ends: Twilio sends `stop` and closes the socket.
      stream.sendStop();
      stream.close(1000);
    } else if (how === 'interrupted') {
      // New TwiML: the stream is torn down.
      stream.close(1000);
    }
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
  #deliver(c: SimCall, rec: PostedCallback): void {
    c.chain = c.chain.then(async () => {
      const ac = new AbortController();
      try {
        rec.at = Date.now();
        const r = await this.#request(c, rec.url, rec.params, ac);
        rec.httpStatus = r.status;
        if (r.status >= 400) rec.error = `HTTP ${r.status}`;
      } catch (err) {
        rec.httpStatus = 0;
        rec.error = errorText(err);
        this.#log?.debug({ callSid: c.info.sid, url: rec.url, err: rec.error }, 'carrier simulator: callback not delivered');
      }
    });
  }

  /** One signed POST to the application, tracked on the call. */
  async #request(c: SimCall, url: string, params: Record<string, string>, ac: AbortController): Promise<PostResult> {
    const headers: Record<string, string> = { 'user-agent': 'TwilioProxy/1.1 (playline-sim-carrier)', 'i-twilio-idempotency-token': randomBytes(16).toString('hex') };
    if (this.#authToken !== undefined) headers['x-twilio-signature'] = twilio.getExpectedTwilioSignature(this.#authToken, url, params);
    c.requests.add(ac);
    const timeout = this.#closing ? CLOSE_REQUEST_TIMEOUT_MS : this.#t.requestTimeoutMs;
    try {
      return await postForm(this.#target(url), params, headers, timeout, ac.signal);
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

function snapshot(info: SimCallInfo): SimCallInfo {
  return {
    ...info,
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
