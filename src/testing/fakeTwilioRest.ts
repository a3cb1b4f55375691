/**
 * A fake Twilio REST API (the `Calls` resource of 2010-04-01) on 127.0.0.1, for
 * tests: the real `twilio` client talks to it (through a RequestClient that
 * rewrites https://api.twilio.com, see `RedirectingRequestClient`), and every
 * call it creates is run against a Playline bridge by the
 * {@link CarrierSimulator}: signed status callbacks, TwiML request at answer,
 * media stream, AMD, hang-ups and TwiML updates, as Twilio would.
 *
 * - `POST /2010-04-01/Accounts/{AC}/Calls.json` → 201 call JSON (snake_case, RFC 2822 dates);
 * - `GET  …/Calls.json?To=&From=&Status=&PageSize=&Page=` → Twilio page shape (newest first);
 * - `GET  …/Calls/{CA}.json` → call JSON, 404/20404 if unknown;
 * - `POST …/Calls/{CA}.json` with `Status=completed|canceled`, `Twiml=…` or `Url=…`
 *   (inbound calls from `startInbound` too);
 * - `POST …/Conferences/{CF… or friendly name}/Participants.json` → 201 participant JSON: dials
 *   `To` into the conference (created by friendly name when there is none, as Twilio does).
 * - `POST …/Calls/{CA}/Recordings.json` (`RecordingChannels`, `RecordingStatusCallback`,
 *   `RecordingStatusCallbackEvent`) → 201 recording JSON of an in-progress call (21220 otherwise);
 *   signed recording status callbacks (`in-progress` at once, `completed` when the call ends, with
 *   `RecordingSid`, `RecordingUrl`, `RecordingStatus`, `RecordingDuration`, `RecordingChannels`);
 *   `GET …/Recordings/{RE}.json`, `GET …/Recordings/{RE}.wav` (a stereo WAV as long as the
 *   recording, `Range` honoured) and `DELETE …/Recordings/{RE}.json` (204).
 *
 * HTTP basic auth with the account SID and auth token (401/20003 otherwise).
 * Errors use Twilio's JSON shape (`code`, `message`, `more_info`, `status`), so the
 * client throws a RestException with `.code` and `.status`. Error injection:
 * `errorFor` (e.g. 21211 → 400) and `rateLimit` (429/20429, the create is not processed).
 * It records every create and the most simultaneously live calls, so tests can
 * assert pacing and concurrency. It is a separate server: it outlives bridge
 * restarts (`setBridgeUrl` if the bridge comes back elsewhere); callbacks to a
 * bridge that is down are recorded as failed deliveries, never retried.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { randomBytes, timingSafeEqual } from 'node:crypto';
import type { Logger } from 'pino';
import twilio from 'twilio';
import { CarrierSimulator, isTerminalStatus, OUTCOMES, rfc2822, type DialOutcome, type DialOutcomeFn, type InboundCallParams, type Outcome, type SimCallInfo, type SimConferenceInfo, type SimStats, type SimTiming, type StatusCallbackEvent } from '../sim/simCarrier.js';
import type { AmdMode } from '../outbound/dialer.js';
import { Rng } from '../util/prng.js';
import { newAccountSid, postStatusCallback } from '../sim/twilioSim.js';
import { E164_SHAPE } from '../outbound/phone.js';

export interface TwilioErrorSpec {
  code: number;
  /** HTTP status (e.g. 400, 429, 500). */
  status: number;
  message?: string;
}

export interface FakeTwilioRestOptions {
  /** Where the bridge listens, e.g. `http://127.0.0.1:8080`. */
  bridgeUrl: string;
  /** Origin the bridge signs against (`PUBLIC_URL`): callback URLs on it go to `bridgeUrl`. Default `bridgeUrl`. */
  publicUrl?: string;
  /** Default: a random `AC…`. */
  accountSid?: string;
  /** Default: random. Also signs every request to the bridge. */
  authToken?: string;
  /** Outcome of each created call (`attempt` counts creates to `to`, 1 first). Default: `dialOutcome`, else the weights, else `answered`. */
  outcomeFor?: (to: string, attempt: number) => Outcome;
  /**
   * What each party does, for `<Dial>` legs and (without `outcomeFor`) for created calls and
   * participants too: answered / busy / no-answer / failed, with its own talk and ring time.
   */
  dialOutcome?: DialOutcomeFn;
  outcomes?: Partial<Record<Outcome, number>>;
  seed?: number;
  /** How long an answered callee stays, ms (default 2000). */
  talkMs?: number;
  /** Per-number talk time (undefined: `talkMs`). */
  talkMsFor?: (to: string) => number | undefined;
  /** Ring time range, ms (default [50, 150]). */
  ringMs?: [number, number];
  timing?: Partial<SimTiming>;
  /** Answer a create to `to` with this error instead of creating the call. */
  errorFor?: (to: string, params: Record<string, string | string[]>) => TwilioErrorSpec | undefined;
  /**
   * Answer some creates with 429 / 20429 (not processed): `perSecond` refuses
   * creates beyond that many accepted in the last second; `reject(n, to)` refuses
   * the n-th create request (1 first) when it returns true.
   */
  rateLimit?: { perSecond?: number; reject?: (n: number, to: string) => boolean };
  /**
   * Answer a successful create this many ms after the call was created (a slow
   * API or network): a client that dies meanwhile has a call it never heard of.
   */
  createResponseDelayMs?: number;
  log?: Logger;
}

export interface CreateRecord {
  /** ms epoch of the request. */
  at: number;
  to: string;
  from: string;
  /** Form fields as sent (repeated fields as arrays). */
  params: Record<string, string | string[]>;
  /** HTTP status answered (201 = created). */
  httpStatus: number;
  sid?: string;
  /** Twilio error code when refused. */
  code?: number;
}

export interface RequestRecord {
  at: number;
  method: string;
  path: string;
  httpStatus: number;
  code?: number;
}

const API_PREFIX = '/2010-04-01/Accounts/';
const LIST_RE = /^\/2010-04-01\/Accounts\/([^/]+)\/Calls\.json$/;
const CALL_RE = /^\/2010-04-01\/Accounts\/([^/]+)\/Calls\/([^/]+)\.json$/;
const PARTICIPANTS_RE = /^\/2010-04-01\/Accounts\/([^/]+)\/Conferences\/([^/]+)\/Participants\.json$/;
const CALL_RECORDINGS_RE = /^\/2010-04-01\/Accounts\/([^/]+)\/Calls\/([^/]+)\/Recordings\.json$/;
const RECORDING_RE = /^\/2010-04-01\/Accounts\/([^/]+)\/Recordings\/(RE[0-9a-f]{32})\.(json|wav|mp3)$/;

/** A recording made through the fake's Recordings API. */
export interface FakeRecording {
  sid: string;
  callSid: string;
  channels: 1 | 2;
  /** `in-progress`, `completed`, `deleted`. */
  status: string;
  startedAt: number;
  durationS?: number;
  statusCallback?: string;
  events: string[];
  /** Callbacks posted to the bridge: event and HTTP status answered. */
  callbacks: Array<{ status: string; httpStatus: number }>;
  /** The form fields of the create request. */
  params: Record<string, string | string[]>;
}
const MAX_BODY = 1024 * 1024;
const STATUS_EVENTS = new Set<StatusCallbackEvent>(['initiated', 'ringing', 'answered', 'completed']);

const DEFAULT_MESSAGES: Record<number, string> = {
  20003: 'Authenticate',
  20404: 'The requested resource was not found',
  20429: 'Too Many Requests',
  21201: "No 'To' number is specified",
  21205: 'Url parameter is required.',
  21211: "Invalid 'To' Phone Number",
  21215: 'Account not authorized to call this number (geo permissions)',
  21217: 'Phone number does not appear to be valid',
  21219: "'To' number not verified (trial account)",
  21220: 'Call is not in-progress. Cannot redirect.',
  21603: "A 'From' phone number is required.",
};

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: number,
    message?: string,
  ) {
    super(message ?? DEFAULT_MESSAGES[code] ?? `Twilio error ${code}`);
  }
}

function first(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

function parseForm(body: string): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [k, v] of new URLSearchParams(body)) {
    const prev = out[k];
    if (prev === undefined) out[k] = v;
    else if (Array.isArray(prev)) prev.push(v);
    else out[k] = [prev, v];
  }
  return out;
}

function all(v: string | string[] | undefined): string[] {
  return v === undefined ? [] : Array.isArray(v) ? v : [v];
}

function safeEqual(a: string, b: string): boolean {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
}

/** A fake Twilio REST server; see the module comment. */
export class FakeTwilioRest {
  /** Origin, e.g. `http://127.0.0.1:43121` (use as TWILIO_API_URL / `apiUrl`). */
  readonly url: string;
  readonly accountSid: string;
  readonly authToken: string;
  readonly simulator: CarrierSimulator;
  /** Every create request, accepted or not, in order. */
  readonly creates: CreateRecord[] = [];
  /** Every request, in order. */
  readonly requests: RequestRecord[] = [];
  /** Recordings created through `Calls/{CA}/Recordings.json`, in order. */
  readonly recordings: FakeRecording[] = [];
  readonly #server: Server;
  readonly #opts: FakeTwilioRestOptions;
  readonly #rng: Rng;
  readonly #weights: Array<readonly [number, Outcome]>;
  readonly #attempts = new Map<string, number>();
  #closing: Promise<void> | undefined;

  private constructor(server: Server, opts: FakeTwilioRestOptions, accountSid: string, authToken: string) {
    this.#server = server;
    this.#opts = opts;
    this.accountSid = accountSid;
    this.authToken = authToken;
    this.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const seed = opts.seed ?? randomBytes(4).readUInt32LE(0);
    this.#rng = new Rng(seed);
    this.#weights = OUTCOMES.map((o) => [Math.max(0, opts.outcomes?.[o] ?? 0), o] as const).filter(([w]) => w > 0);
    this.simulator = new CarrierSimulator({
      bridgeUrl: opts.bridgeUrl,
      accountSid,
      authToken,
      talkMs: opts.talkMs ?? 2000,
      ringMs: opts.ringMs ?? [50, 150],
      seed: (seed + 1) >>> 0,
      ...(opts.publicUrl !== undefined ? { publicUrl: opts.publicUrl } : {}),
      ...(opts.timing !== undefined ? { timing: opts.timing } : {}),
      ...(opts.log !== undefined ? { log: opts.log } : {}),
      ...(opts.dialOutcome !== undefined ? { dialOutcome: opts.dialOutcome } : {}),
    });
    server.on('request', (req, res) => this.#onRequest(req, res));
  }

  /** Starts listening on 127.0.0.1 (random port). */
  static async start(opts: FakeTwilioRestOptions): Promise<FakeTwilioRest> {
    const server = createServer();
    server.keepAliveTimeout = 1000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    return new FakeTwilioRest(server, opts, opts.accountSid ?? newAccountSid(), opts.authToken ?? randomBytes(16).toString('hex'));
  }

  /** Points the simulated carrier at a bridge that came back on another address. */
  setBridgeUrl(url: string): void {
    this.simulator.bridgeUrl = url.replace(/\/+$/, '');
  }

  /**
   * An incoming call to the bridge (see `CarrierSimulator.startInbound`); `voiceUrl` defaults to
   * `{publicUrl}/twilio/voice`. Returns the CallSid; REST updates and hang-ups work on it.
   */
  startInbound(p: Omit<InboundCallParams, 'voiceUrl'> & { voiceUrl?: string }): string {
    return this.simulator.startInbound({ ...p, voiceUrl: p.voiceUrl ?? `${this.simulator.publicUrl}/twilio/voice` });
  }

  /** A conference by friendly name or `CF…` SID. */
  conference(nameOrSid: string): SimConferenceInfo | undefined {
    return this.simulator.conference(nameOrSid, this.accountSid);
  }

  /** Every call created, oldest first. */
  calls(): SimCallInfo[] {
    return this.simulator.calls();
  }

  call(sid: string): SimCallInfo | undefined {
    return this.simulator.get(sid);
  }

  whenEnded(sid: string): Promise<SimCallInfo | undefined> {
    return this.simulator.whenEnded(sid);
  }

  /** Created calls, live now, most live at once, create times. */
  stats(): SimStats {
    return this.simulator.stats();
  }

  /** Most simultaneously live (non-terminal) calls so far. */
  get maxLive(): number {
    return this.simulator.stats().maxConcurrent;
  }

  /** Most accepted creates within any window of `windowMs` (pacing check). */
  maxCreatesInWindow(windowMs = 1000): number {
    const times = this.creates.filter((c) => c.httpStatus === 201).map((c) => c.at);
    let best = 0;
    let lo = 0;
    for (let hi = 0; hi < times.length; hi++) {
      while ((times[hi] ?? 0) - (times[lo] ?? 0) >= windowMs) lo++;
      best = Math.max(best, hi - lo + 1);
    }
    return best;
  }

  /** Ends every simulated call and stops the server. Idempotent. */
  close(): Promise<void> {
    this.#closing ??= (async () => {
      await this.simulator.close();
      await new Promise<void>((resolve) => {
        this.#server.close(() => resolve());
        this.#server.closeAllConnections();
      });
    })();
    return this.#closing;
  }

  // ---- HTTP --------------------------------------------------------------

  #onRequest(req: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = [];
    let size = 0;
    let tooBig = false;
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (size > MAX_BODY) tooBig = true;
      else chunks.push(c);
    });
    req.on('error', () => res.destroy());
    req.on('end', () => {
      const record: RequestRecord = { at: Date.now(), method: req.method ?? '', path: req.url ?? '', httpStatus: 0 };
      this.requests.push(record);
      let status = 500;
      let body: unknown;
      try {
        if (tooBig) throw new HttpError(413, 20001, 'Request entity too large');
        const media = this.#recordingMedia(req);
        if (media !== undefined) {
          record.httpStatus = media.status;
          res.writeHead(media.status, media.headers);
          res.end(media.body);
          return;
        }
        const r = this.#route(req, Buffer.concat(chunks).toString('utf8'));
        status = r.status;
        body = r.body;
      } catch (err) {
        const e = err instanceof HttpError ? err : new HttpError(500, 20500, err instanceof Error ? err.message : String(err));
        status = e.status;
        body = { code: e.code, message: e.message, more_info: `https://www.twilio.com/docs/errors/${e.code}`, status: e.status };
        record.code = e.code;
      }
      record.httpStatus = status;
      const text = status === 204 ? '' : JSON.stringify(body);
      const send = (): void => {
        if (res.destroyed) return;
        if (status === 204) {
          res.writeHead(204);
          res.end();
          return;
        }
        res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': Buffer.byteLength(text) });
        res.end(text);
      };
      const delay = status === 201 ? (this.#opts.createResponseDelayMs ?? 0) : 0;
      if (delay > 0) setTimeout(send, delay).unref();
      else send();
    });
  }

  #route(req: IncomingMessage, rawBody: string): { status: number; body: unknown } {
    const url = new URL(req.url ?? '/', 'http://fake.twilio');
    const method = (req.method ?? 'GET').toUpperCase();
    this.#authenticate(req);
    if (!url.pathname.startsWith(API_PREFIX)) throw new HttpError(404, 20404);
    const list = LIST_RE.exec(url.pathname);
    const one = CALL_RE.exec(url.pathname);
    const participants = PARTICIPANTS_RE.exec(url.pathname);
    const callRecordings = CALL_RECORDINGS_RE.exec(url.pathname);
    const recording = RECORDING_RE.exec(url.pathname);
    const account = list?.[1] ?? one?.[1] ?? participants?.[1] ?? callRecordings?.[1] ?? recording?.[1];
    if (account === undefined || account !== this.accountSid) throw new HttpError(404, 20404, `The requested resource ${url.pathname} was not found`);
    if (list !== null) {
      if (method === 'POST') return this.#create(parseForm(rawBody));
      if (method === 'GET') return { status: 200, body: this.#list(url) };
    } else if (callRecordings !== null) {
      if (method === 'POST') return this.#startRecording(decodeURIComponent(callRecordings[2] ?? ''), parseForm(rawBody), url.pathname);
    } else if (recording !== null) {
      const rec = this.recordings.find((r) => r.sid === recording[2] && r.status !== 'deleted');
      if (rec === undefined) throw new HttpError(404, 20404, `The requested resource ${url.pathname} was not found`);
      if (method === 'GET') return { status: 200, body: this.#recordingJson(rec) };
      if (method === 'DELETE') {
        rec.status = 'deleted';
        return { status: 204, body: undefined };
      }
    } else if (participants !== null) {
      if (method === 'POST') return this.#createParticipant(decodeURIComponent(participants[2] ?? ''), parseForm(rawBody), url.pathname);
    } else if (one !== null) {
      const sid = decodeURIComponent(one[2] ?? '');
      if (method === 'GET') return { status: 200, body: this.#json(this.#known(sid, url.pathname)) };
      if (method === 'POST') return { status: 200, body: this.#update(sid, parseForm(rawBody), url.pathname) };
    }
    throw new HttpError(405, 20004, 'Method not allowed');
  }

  /** `Calls/{CA}/Recordings.json`: records an in-progress call until it ends, with status callbacks. */
  #startRecording(callSid: string, form: Record<string, string | string[]>, path: string): { status: number; body: unknown } {
    const call = this.#known(callSid, path);
    if (call.status !== 'in-progress') throw new HttpError(400, 21220, 'Invalid call state: the call is not in progress');
    const channels = first(form.RecordingChannels) === 'dual' ? 2 : 1;
    const events = all(form.RecordingStatusCallbackEvent).flatMap((v) => v.split(/[\s,]+/)).filter((e) => e !== '');
    const statusCallback = first(form.RecordingStatusCallback);
    const rec: FakeRecording = {
      sid: `RE${randomBytes(16).toString('hex')}`,
      callSid,
      channels,
      status: 'in-progress',
      startedAt: Date.now(),
      ...(statusCallback !== undefined ? { statusCallback } : {}),
      events: events.length > 0 ? events : ['completed'],
      callbacks: [],
      params: form,
    };
    this.recordings.push(rec);
    if (rec.events.includes('in-progress')) void this.#recordingCallback(rec);
    void this.simulator.whenEnded(callSid).then(() => {
      if (rec.status !== 'in-progress') return;
      rec.status = 'completed';
      rec.durationS = Math.max(1, Math.round((Date.now() - rec.startedAt) / 1000));
      if (rec.events.includes('completed')) void this.#recordingCallback(rec);
    });
    return { status: 201, body: this.#recordingJson(rec) };
  }

  #recordingJson(r: FakeRecording): Record<string, unknown> {
    const base = `/2010-04-01/Accounts/${this.accountSid}/Recordings/${r.sid}`;
    return {
      sid: r.sid,
      account_sid: this.accountSid,
      call_sid: r.callSid,
      conference_sid: null,
      api_version: '2010-04-01',
      channels: r.channels,
      status: r.status,
      source: 'StartCallRecordingAPI',
      track: 'both',
      start_time: rfc2822(r.startedAt),
      date_created: rfc2822(r.startedAt),
      date_updated: rfc2822(Date.now()),
      duration: r.durationS === undefined ? '-1' : String(r.durationS),
      price: null,
      price_unit: 'USD',
      error_code: null,
      encryption_details: null,
      uri: `${base}.json`,
      media_url: `https://api.twilio.com${base}`,
    };
  }

  /** A signed recording status callback to the bridge (`RecordingStatusCallback`, mapped from PUBLIC_URL to the bridge). */
  async #recordingCallback(r: FakeRecording): Promise<void> {
    if (r.statusCallback === undefined) return;
    const target = new URL(r.statusCallback);
    const params: Record<string, string> = {
      AccountSid: this.accountSid,
      CallSid: r.callSid,
      RecordingSid: r.sid,
      RecordingUrl: `https://api.twilio.com/2010-04-01/Accounts/${this.accountSid}/Recordings/${r.sid}`,
      RecordingStatus: r.status,
      RecordingDuration: r.durationS === undefined ? '-1' : String(r.durationS),
      RecordingChannels: String(r.channels),
      RecordingSource: 'StartCallRecordingAPI',
      RecordingStartTime: rfc2822(r.startedAt),
      RecordingTrack: 'both',
    };
    const status = r.status;
    try {
      const res = await postStatusCallback({ bridgeUrl: this.simulator.bridgeUrl, publicUrl: target.origin, authToken: this.authToken, params, path: target.pathname + target.search });
      r.callbacks.push({ status, httpStatus: res.status });
    } catch {
      r.callbacks.push({ status, httpStatus: 0 });
    }
  }

  /** `GET …/Recordings/{RE}.wav`: the audio (a stereo 8 kHz WAV as long as the recording), `Range` honoured. */
  #recordingMedia(req: IncomingMessage): { status: number; headers: Record<string, string>; body: Buffer } | undefined {
    const url = new URL(req.url ?? '/', 'http://fake.twilio');
    const m = RECORDING_RE.exec(url.pathname);
    if (m === null || m[3] === 'json' || (req.method ?? 'GET').toUpperCase() !== 'GET') return undefined;
    this.#authenticate(req);
    const rec = this.recordings.find((r) => r.sid === m[2] && r.status !== 'deleted' && m[1] === this.accountSid);
    if (rec === undefined) throw new HttpError(404, 20404, `The requested resource ${url.pathname} was not found`);
    const wav = fakeRecordingWav(rec.durationS ?? 1, rec.channels);
    const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    if (range !== null) {
      const start = Number(range[1]);
      const end = range[2] === '' ? wav.length - 1 : Math.min(wav.length - 1, Number(range[2]));
      if (start >= wav.length || end < start) return { status: 416, headers: { 'content-range': `bytes */${wav.length}` }, body: Buffer.alloc(0) };
      return { status: 206, headers: { 'content-type': 'audio/x-wav', 'content-length': String(end - start + 1), 'content-range': `bytes ${start}-${end}/${wav.length}`, 'accept-ranges': 'bytes' }, body: wav.subarray(start, end + 1) };
    }
    return { status: 200, headers: { 'content-type': 'audio/x-wav', 'content-length': String(wav.length), 'accept-ranges': 'bytes' }, body: wav };
  }

  #authenticate(req: IncomingMessage): void {
    const h = req.headers.authorization ?? '';
    const m = /^Basic\s+(.+)$/i.exec(h);
    const decoded = m?.[1] !== undefined ? Buffer.from(m[1], 'base64').toString('utf8') : '';
    const colon = decoded.indexOf(':');
    const user = colon >= 0 ? decoded.slice(0, colon) : '';
    const pass = colon >= 0 ? decoded.slice(colon + 1) : '';
    if (!(safeEqual(user, this.accountSid) && safeEqual(pass, this.authToken))) throw new HttpError(401, 20003);
  }

  #known(sid: string, path: string): SimCallInfo {
    const info = this.simulator.get(sid);
    if (info === undefined) throw new HttpError(404, 20404, `The requested resource ${path} was not found`);
    return info;
  }

  #create(form: Record<string, string | string[]>): { status: number; body: unknown } {
    const now = Date.now();
    const to = first(form.To) ?? '';
    const from = first(form.From) ?? '';
    const rec: CreateRecord = { at: now, to, from, params: form, httpStatus: 0 };
    this.creates.push(rec);
    const n = this.creates.length;
    try {
      const rl = this.#opts.rateLimit;
      if (rl !== undefined) {
        const recent = this.creates.filter((c) => c.httpStatus === 201 && now - c.at < 1000).length;
        if ((rl.perSecond !== undefined && recent >= rl.perSecond) || rl.reject?.(n, to) === true) throw new HttpError(429, 20429);
      }
      const injected = this.#opts.errorFor?.(to, form);
      if (injected !== undefined) throw new HttpError(injected.status, injected.code, injected.message);
      if (to === '') throw new HttpError(400, 21201);
      if (from === '') throw new HttpError(400, 21603);
      if (!E164_SHAPE.test(to) && !/^(client|sip):/i.test(to)) throw new HttpError(400, 21211, `Invalid 'To' Phone Number: ${to}`);
      const url = first(form.Url);
      const twiml = first(form.Twiml);
      if (url === undefined && twiml === undefined) throw new HttpError(400, 21205);

      const { outcome, talkMs: partyTalkMs, ringMs } = this.#outcome(to);
      const statusCallback = first(form.StatusCallback);
      const requested = all(form.StatusCallbackEvent)
        .flatMap((v) => v.split(/[\s,]+/))
        .filter((e): e is StatusCallbackEvent => STATUS_EVENTS.has(e as StatusCallbackEvent));
      const timeout = Number(first(form.Timeout) ?? 60);
      const timeLimit = first(form.TimeLimit) !== undefined ? Number(first(form.TimeLimit)) : undefined;
      const md = first(form.MachineDetection);
      const machineDetection: AmdMode | undefined = md === 'Enable' || md === 'DetectMessageEnd' ? md : undefined;
      const amdCallback = first(form.AsyncAmdStatusCallback);
      const talkMs = this.#opts.talkMsFor?.(to) ?? partyTalkMs;
      const info = this.simulator.start(
        {
          to,
          from,
          ...(twiml !== undefined ? { twiml } : url !== undefined ? { url } : {}),
          ...(statusCallback !== undefined ? { statusCallback, statusCallbackEvents: requested.length > 0 ? requested : ['completed'] } : {}),
          timeoutS: Number.isFinite(timeout) ? Math.min(600, Math.max(1, timeout)) : 60,
          ...(timeLimit !== undefined && Number.isFinite(timeLimit) ? { timeLimitS: timeLimit } : {}),
          ...(machineDetection !== undefined ? { machineDetection, asyncAmd: first(form.AsyncAmd) === 'true' } : {}),
          ...(amdCallback !== undefined ? { amdCallback } : {}),
          ...(talkMs !== undefined ? { talkMs } : {}),
          ...(ringMs !== undefined ? { ringMs } : {}),
        },
        outcome,
      );
      rec.httpStatus = 201;
      rec.sid = info.sid;
      return { status: 201, body: this.#json(info) };
    } catch (err) {
      if (err instanceof HttpError) {
        rec.httpStatus = err.status;
        rec.code = err.code;
      }
      throw err;
    }
  }

  /** Outcome of a created call: `outcomeFor`, else `dialOutcome`, else the weights, else answered. */
  #outcome(to: string): { outcome: Outcome; talkMs?: number; ringMs?: number } {
    const attempt = (this.#attempts.get(to) ?? 0) + 1;
    this.#attempts.set(to, attempt);
    const chosen = this.#opts.outcomeFor?.(to, attempt);
    if (chosen !== undefined) return { outcome: chosen };
    const d = this.#opts.dialOutcome?.(to, { kind: 'call' });
    if (d !== undefined) {
      const o: DialOutcome = typeof d === 'string' ? { status: d } : d;
      return { outcome: o.status, ...(o.talkMs !== undefined ? { talkMs: o.talkMs } : {}), ...(o.ringMs !== undefined ? { ringMs: o.ringMs } : {}) };
    }
    return { outcome: this.#weights.length > 0 ? this.#rng.weighted(this.#weights) : 'answered' };
  }

  /**
   * `Participants.json` create: a call to `To` whose TwiML joins the conference, with the
   * participant's conference settings. The path takes the conference SID or its friendly name.
   */
  #createParticipant(ref: string, form: Record<string, string | string[]>, path: string): { status: number; body: unknown } {
    let name = ref;
    if (/^CF[0-9a-f]{32}$/i.test(ref)) {
      const known = this.simulator.conference(ref, this.accountSid);
      if (known === undefined || known.status === 'completed') throw new HttpError(404, 20404, `The requested resource ${path} was not found`);
      name = known.name;
    }
    const to = first(form.To) ?? '';
    const from = first(form.From) ?? '';
    if (to === '') throw new HttpError(400, 21201);
    if (from === '') throw new HttpError(400, 21603);
    const bool = (v: string | string[] | undefined): boolean | undefined => (first(v) === undefined ? undefined : first(v) === 'true');
    const events = (v: string | string[] | undefined): string[] => all(v).flatMap((e) => e.split(/[\s,]+/)).filter((e) => e !== '');
    const confEvents = events(form.ConferenceStatusCallbackEvent);
    const start = bool(form.StartConferenceOnEnter);
    const end = bool(form.EndConferenceOnExit);
    const beep = first(form.Beep);
    const waitUrl = first(form.WaitUrl);
    const confCallback = first(form.ConferenceStatusCallback);
    const vr = new twilio.twiml.VoiceResponse();
    vr.dial().conference(
      {
        ...(start !== undefined ? { startConferenceOnEnter: start } : {}),
        ...(end !== undefined ? { endConferenceOnExit: end } : {}),
        ...(beep !== undefined ? { beep: beep === 'true' ? 'true' : beep === 'false' ? 'false' : beep === 'onEnter' ? 'onEnter' : 'onExit' } : {}),
        ...(waitUrl !== undefined ? { waitUrl } : {}),
        ...(confCallback !== undefined ? { statusCallback: confCallback } : {}),
        ...(confEvents.length > 0 ? { statusCallbackEvent: confEvents.filter((e): e is 'start' | 'end' | 'join' | 'leave' => ['start', 'end', 'join', 'leave'].includes(e)) } : {}),
      },
      name,
    );
    const conf = this.simulator.ensureConference(name, this.accountSid);
    const created = this.#create({ ...form, Twiml: vr.toString(), Url: [] });
    const sid = typeof created.body === 'object' && created.body !== null && 'sid' in created.body ? String(created.body.sid) : '';
    const now = rfc2822(Date.now());
    return {
      status: 201,
      body: {
        account_sid: this.accountSid,
        call_sid: sid,
        coaching: false,
        call_sid_to_coach: null,
        conference_sid: conf.sid,
        date_created: now,
        date_updated: now,
        end_conference_on_exit: end ?? false,
        hold: false,
        label: first(form.Label) ?? null,
        muted: bool(form.Muted) ?? false,
        start_conference_on_enter: start ?? true,
        status: 'queued',
        uri: `${API_PREFIX}${this.accountSid}/Conferences/${conf.sid}/Participants/${sid}.json`,
      },
    };
  }

  #update(sid: string, form: Record<string, string | string[]>, path: string): unknown {
    let info = this.#known(sid, path);
    const status = first(form.Status);
    const twiml = first(form.Twiml);
    const url = first(form.Url);
    if (twiml !== undefined && url !== undefined) throw new HttpError(400, 21210, 'Twiml and Url are mutually exclusive');
    if (status !== undefined) {
      if (status !== 'completed' && status !== 'canceled') throw new HttpError(400, 21218, `Invalid Status ${status}`);
      info = this.simulator.hangup(sid, status) ?? info;
    } else if (twiml !== undefined || url !== undefined) {
      const r = this.simulator.update(sid, twiml !== undefined ? { twiml } : { url: url ?? '' });
      if (r === 'not-in-progress') throw new HttpError(400, 21220);
      info = this.simulator.get(sid) ?? info;
    }
    return this.#json(info);
  }

  #list(url: URL): unknown {
    const q = url.searchParams;
    const to = q.get('To');
    const from = q.get('From');
    const status = q.get('Status');
    const pageSize = Math.min(1000, Math.max(1, Number(q.get('PageSize') ?? 50) || 50));
    const page = Math.max(0, Number(q.get('Page') ?? 0) || 0);
    const matching = this.simulator
      .calls()
      .map((c, i) => ({ c, i }))
      .filter(({ c }) => (to === null || c.to === to) && (from === null || c.from === from) && (status === null || c.status === status))
      .sort((a, b) => b.c.createdAt - a.c.createdAt || b.i - a.i)
      .map(({ c }) => c);
    const start = page * pageSize;
    const items = matching.slice(start, start + pageSize);
    const base = `${API_PREFIX}${this.accountSid}/Calls.json`;
    const pageUri = (p: number): string => {
      const sp = new URLSearchParams();
      if (to !== null) sp.set('To', to);
      if (from !== null) sp.set('From', from);
      if (status !== null) sp.set('Status', status);
      sp.set('PageSize', String(pageSize));
      sp.set('Page', String(p));
      return `${base}?${sp.toString()}`;
    };
    const more = start + pageSize < matching.length;
    return {
      calls: items.map((c) => this.#json(c)),
      end: start + Math.max(0, items.length - 1),
      first_page_uri: pageUri(0),
      next_page_uri: more ? pageUri(page + 1) : null,
      page,
      page_size: pageSize,
      previous_page_uri: page > 0 ? pageUri(page - 1) : null,
      start,
      uri: pageUri(page),
    };
  }

  /** A call resource as Twilio renders it. */
  #json(c: SimCallInfo): Record<string, unknown> {
    const uri = `${API_PREFIX}${c.accountSid}/Calls/${c.sid}.json`;
    const ended = isTerminalStatus(c.status);
    const updated = c.endedAt ?? c.answeredAt ?? c.createdAt;
    const sub = (name: string): string => `${API_PREFIX}${c.accountSid}/Calls/${c.sid}/${name}.json`;
    return {
      account_sid: c.accountSid,
      annotation: null,
      answered_by: c.answeredBy ?? null,
      api_version: '2010-04-01',
      caller_name: null,
      date_created: rfc2822(c.createdAt),
      date_updated: rfc2822(updated),
      direction: c.direction,
      duration: ended ? String(c.durationS ?? 0) : null,
      end_time: c.endedAt !== undefined ? rfc2822(c.endedAt) : null,
      forwarded_from: null,
      from: c.from,
      from_formatted: c.from,
      group_sid: null,
      parent_call_sid: null,
      phone_number_sid: null,
      price: null,
      price_unit: 'USD',
      queue_time: '0',
      sid: c.sid,
      start_time: c.answeredAt !== undefined ? rfc2822(c.answeredAt) : null,
      status: c.status,
      subresource_uris: {
        notifications: sub('Notifications'),
        recordings: sub('Recordings'),
        payments: sub('Payments'),
        events: sub('Events'),
        siprec: sub('Siprec'),
        streams: sub('Streams'),
        transcriptions: sub('Transcriptions'),
        user_defined_message_subscriptions: sub('UserDefinedMessageSubscriptions'),
        user_defined_messages: sub('UserDefinedMessages'),
      },
      to: c.to,
      to_formatted: c.to,
      trunk_sid: null,
      uri,
    };
  }
}

/** A recording's stand-in audio: 16-bit PCM 8 kHz, a quiet tone on the first channel, silence on the second. */
function fakeRecordingWav(durationS: number, channels: 1 | 2): Buffer {
  const frames = Math.round(durationS * 8000);
  const dataBytes = frames * 2 * channels;
  const b = Buffer.alloc(44 + dataBytes);
  b.write('RIFF', 0, 'ascii');
  b.writeUInt32LE(36 + dataBytes, 4);
  b.write('WAVEfmt ', 8, 'ascii');
  b.writeUInt32LE(16, 16);
  b.writeUInt16LE(1, 20);
  b.writeUInt16LE(channels, 22);
  b.writeUInt32LE(8000, 24);
  b.writeUInt32LE(8000 * 2 * channels, 28);
  b.writeUInt16LE(2 * channels, 32);
  b.writeUInt16LE(16, 34);
  b.write('data', 36, 'ascii');
  b.writeUInt32LE(dataBytes, 40);
  for (let i = 0; i < frames; i++) b.writeInt16LE(Math.round(3000 * Math.sin((2 * Math.PI * 440 * i) / 8000)), 44 + i * 2 * channels);
  return b;
}
