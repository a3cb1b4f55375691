/**
 * The outbound carrier port over Twilio's REST API (`twilio` package), or any
 * Twilio-compatible server through `apiUrl` (TWILIO_API_URL; the fake of the
 * tests). Errors become {@link DialError}s classified by
 * {@link classifyCarrierError}; nothing is retried here (the caller decides).
 */
import type { Logger } from 'pino';
import twilio from 'twilio';
import type { CallInstance, CallListInstanceCreateOptions } from 'twilio/lib/rest/api/v2010/account/call.js';
import { RedirectingRequestClient } from '../carrier/twilio/callControl.js';
import { sayHangupTwiml, type SayOptions, type Speech } from '../carrier/twilio/twiml.js';
import { DialError, classifyCarrierError, type CarrierCall, type Dialer, type DialRequest } from './dialer.js';

export interface TwilioDialerOptions {
  accountSid: string;
  authToken: string;
  /** Base URL replacing https://api.twilio.com (a Twilio-compatible server or gateway). */
  apiUrl?: string;
  /** `<Say>` voice and language of {@link TwilioDialer.sayAndHangup}. */
  say?: SayOptions;
  log?: Logger;
  /** Request timeout, ms (default 10 000). A timeout is an `unknown` error: the call may exist. */
  timeoutMs?: number;
  /** A voicemail message in the agent's voice (`<Play>` of a signed prompt URL) when TTS has it; `<Say>` otherwise. */
  speech?(text: string): Promise<Speech>;
}

/** Twilio: the call is not in progress (ended), so it cannot be redirected or hung up. */
const NOT_IN_PROGRESS = 21220;
const NOT_FOUND = 20404;

type TwilioClient = ReturnType<typeof twilio>;

function num(v: unknown): number | undefined {
  return typeof v === 'number' && Number.isFinite(v) ? v : undefined;
}

/** Twilio code and HTTP status of a RestException (undefined for network errors and timeouts). */
function errorCodes(err: unknown): { code: number | undefined; status: number | undefined; message: string } {
  if (typeof err !== 'object' || err === null) return { code: undefined, status: undefined, message: String(err) };
  const e = err as { code?: unknown; status?: unknown; message?: unknown };
  return { code: num(e.code), status: num(e.status), message: typeof e.message === 'string' ? e.message : String(err) };
}

function toDialError(err: unknown, what: string): DialError {
  if (err instanceof DialError) return err;
  const { code, status, message } = errorCodes(err);
  const detail = code !== undefined ? `${message} (Twilio ${code}, HTTP ${status ?? '?'})` : status !== undefined ? `${message} (HTTP ${status})` : message;
  return new DialError(classifyCarrierError(code, status), `${what}: ${detail}`, code, status);
}

/** The port's view of a Twilio call resource. */
export function fromCallInstance(c: Pick<CallInstance, 'sid' | 'status' | 'to' | 'from' | 'dateCreated' | 'answeredBy' | 'duration'>): CarrierCall {
  const call: CarrierCall = { sid: c.sid, status: c.status, to: c.to, from: c.from };
  const created = c.dateCreated instanceof Date ? c.dateCreated.getTime() : undefined;
  if (created !== undefined && Number.isFinite(created)) call.createdAt = created;
  if (typeof c.answeredBy === 'string' && c.answeredBy !== '') call.answeredBy = c.answeredBy;
  if (c.duration !== null && c.duration !== undefined && c.duration !== '') {
    const d = Number(c.duration);
    if (Number.isFinite(d)) call.durationS = d;
  }
  return call;
}

export class TwilioDialer implements Dialer {
  readonly name = 'twilio';
  readonly #opts: TwilioDialerOptions;
  #client: TwilioClient | undefined;

  constructor(opts: TwilioDialerOptions) {
    this.#opts = opts;
  }

  /** Built on first use, so a bad account SID surfaces as an `auth` DialError, not a crash at boot. */
  #api(): TwilioClient {
    if (this.#client !== undefined) return this.#client;
    const { accountSid, authToken, apiUrl } = this.#opts;
    const clientOpts = { timeout: this.#opts.timeoutMs ?? 10_000, autoRetry: false };
    try {
      this.#client =
        apiUrl === undefined
          ? twilio(accountSid, authToken, clientOpts)
          : twilio(accountSid, authToken, { httpClient: new RedirectingRequestClient(apiUrl.replace(/\/+$/, ''), clientOpts) });
    } catch (err) {
      throw new DialError('auth', `Twilio client: ${errorCodes(err).message}`);
    }
    return this.#client;
  }

  async create(req: DialRequest): Promise<CarrierCall> {
    const params: CallListInstanceCreateOptions = {
      to: req.to,
      from: req.from,
      url: req.url,
      method: 'POST',
      statusCallback: req.statusCallback,
      statusCallbackEvent: ['initiated', 'ringing', 'answered', 'completed'],
      statusCallbackMethod: 'POST',
      timeout: req.timeoutS,
    };
    if (req.timeLimitS !== undefined) params.timeLimit = req.timeLimitS;
    if (req.machineDetection !== undefined) {
      params.machineDetection = req.machineDetection;
      params.asyncAmd = 'true';
      if (req.amdCallback !== undefined) {
        params.asyncAmdStatusCallback = req.amdCallback;
        params.asyncAmdStatusCallbackMethod = 'POST';
      }
    }
    try {
      const call = await this.#api().calls.create(params);
      this.#opts.log?.debug({ callId: req.callId, callSid: call.sid, status: call.status }, 'twilio: call created');
      return fromCallInstance(call);
    } catch (err) {
      const e = toDialError(err, 'create call');
      this.#opts.log?.warn({ callId: req.callId, kind: e.kind, code: e.code, status: e.httpStatus, err: e.message }, 'twilio: create call failed');
      throw e;
    }
  }

  /** `Status=completed` (Twilio ends a ringing call with it too); a call that has already ended is left alone. */
  async hangup(sid: string): Promise<void> {
    try {
      await this.#api().calls(sid).update({ status: 'completed' });
    } catch (err) {
      if (errorCodes(err).code === NOT_IN_PROGRESS) return;
      throw toDialError(err, `hang up ${sid}`);
    }
  }

  async sayAndHangup(sid: string, text: string): Promise<void> {
    const speech = (await this.#opts.speech?.(text).catch(() => text)) ?? text;
    try {
      await this.#api().calls(sid).update({ twiml: sayHangupTwiml(speech, this.#opts.say ?? {}) });
    } catch (err) {
      throw toDialError(err, `say and hang up ${sid}`);
    }
  }

  async fetch(sid: string): Promise<CarrierCall | undefined> {
    try {
      return fromCallInstance(await this.#api().calls(sid).fetch());
    } catch (err) {
      const { code, status } = errorCodes(err);
      if (code === NOT_FOUND || status === 404) return undefined;
      throw toDialError(err, `fetch ${sid}`);
    }
  }

  async findRecent(to: string, from: string, since: number): Promise<CarrierCall[]> {
    // date_created has whole seconds: a call made in the same second as `since` must still match.
    const floor = Math.floor(since / 1000) * 1000;
    try {
      const calls = await this.#api().calls.list({ to, from, pageSize: 20, limit: 20 });
      return calls
        .map(fromCallInstance)
        // A call whose date is missing or unreadable stays a candidate: better to follow it than to dial twice.
        .filter((c) => c.createdAt === undefined || c.createdAt >= floor)
        .sort((a, b) => (b.createdAt ?? 0) - (a.createdAt ?? 0));
    } catch (err) {
      throw toDialError(err, 'list calls');
    }
  }
}
