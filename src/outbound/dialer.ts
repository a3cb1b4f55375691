/**
 * The outbound carrier port: what the outbound service needs from a carrier
 * to place and follow calls. Two implementations: Twilio REST
 * (`twilioDialer.ts`, also used against a Twilio-compatible server through
 * TWILIO_API_URL) and the built-in simulated carrier of local mode
 * (`src/sim/simCarrier.ts`).
 *
 * The carrier reaches the bridge back through three URLs, all carrying our
 * call id in the query string (the Twilio signature covers it):
 * - `POST {publicUrl}/twilio/voice?callId=…` at answer (TwiML),
 * - `POST {publicUrl}/twilio/status?callId=…` status callbacks
 *   (initiated, ringing, answered, completed; form fields as Twilio sends them,
 *   with `SequenceNumber`),
 * - `POST {publicUrl}/twilio/amd?callId=…` the async AMD result
 *   (`CallSid`, `AnsweredBy`, `MachineDetectionDuration`).
 */

export type AmdMode = 'Enable' | 'DetectMessageEnd';

export interface DialRequest {
  /** Our call id (also in the URLs). */
  callId: string;
  to: string;
  from: string;
  /** TwiML URL requested at answer. */
  url: string;
  statusCallback: string;
  /** Ring time in seconds before `no-answer`. */
  timeoutS: number;
  /** Maximum call length in seconds. */
  timeLimitS?: number;
  /** Async answering-machine detection: the stream connects at answer, the result arrives at `amdCallback`. */
  machineDetection?: AmdMode;
  amdCallback?: string;
}

/** A call as the carrier reports it. */
export interface CarrierCall {
  sid: string;
  status: string;
  to: string;
  from: string;
  /** When the carrier created the call (undefined if it did not say). */
  createdAt?: number;
  answeredBy?: string;
  durationS?: number;
}

/**
 * How a failed request should be treated:
 * - `invalid-number`: the contact can never be dialed (21211, 21215, 21217, 21219): fail it, no retry;
 * - `rate-limited`: the request was not processed (20429 / HTTP 429): try again later, not an attempt;
 * - `auth`: bad credentials (20003 / 401): pause dialing and show the error;
 * - `rejected`: any other error the carrier answered with: the call was not created;
 * - `unknown`: no answer (network error, timeout, 5xx): the call may or may not exist; reconcile.
 */
export type DialErrorKind = 'invalid-number' | 'rate-limited' | 'auth' | 'rejected' | 'unknown';

export class DialError extends Error {
  override name = 'DialError';
  constructor(
    readonly kind: DialErrorKind,
    message: string,
    readonly code?: number,
    readonly httpStatus?: number,
  ) {
    super(message);
  }
}

const INVALID_NUMBER_CODES = new Set([21211, 21215, 21217, 21219]);

/** Maps a carrier error (Twilio code and HTTP status) to what to do about it. */
export function classifyCarrierError(code: number | undefined, httpStatus: number | undefined): DialErrorKind {
  if (code !== undefined && INVALID_NUMBER_CODES.has(code)) return 'invalid-number';
  if (code === 20429 || httpStatus === 429) return 'rate-limited';
  if (code === 20003 || httpStatus === 401 || httpStatus === 403) return 'auth';
  if (httpStatus === undefined || httpStatus >= 500) return 'unknown';
  return 'rejected';
}

export interface Dialer {
  /** `twilio` or `local`; shown in logs and the API. */
  readonly name: string;
  /** Places a call. Throws {@link DialError}. */
  create(req: DialRequest): Promise<CarrierCall>;
  /** Ends a call whatever its state (`completed` if in progress, `canceled` if queued or ringing). */
  hangup(sid: string): Promise<void>;
  /** Replaces the call's TwiML with `<Say>text</Say><Hangup/>` (voicemail message). */
  sayAndHangup(sid: string, text: string): Promise<void>;
  /** The call's current state, or undefined if the carrier does not know it. Throws {@link DialError}. */
  fetch(sid: string): Promise<CarrierCall | undefined>;
  /**
   * Calls to `to` from `from` created at or after `since` (ms epoch), newest
   * first: how a restart finds out whether a claimed dial reached the carrier.
   * Throws {@link DialError}.
   */
  findRecent(to: string, from: string, since: number): Promise<CarrierCall[]>;
  /** Stops timers and simulated calls (local carrier); no-op for REST. */
  close?(): Promise<void>;
}

/** A dialer whose implementation is chosen later (the local carrier needs the listening address). */
export class DeferredDialer implements Dialer {
  #inner: Dialer | undefined;

  constructor(readonly name: string) {}

  set(inner: Dialer): void {
    this.#inner = inner;
  }

  #get(): Dialer {
    if (this.#inner === undefined) throw new DialError('unknown', 'the carrier is not ready yet (the server is not listening)');
    return this.#inner;
  }

  create(req: DialRequest): Promise<CarrierCall> {
    return Promise.resolve().then(() => this.#get().create(req));
  }
  hangup(sid: string): Promise<void> {
    return Promise.resolve().then(() => this.#get().hangup(sid));
  }
  sayAndHangup(sid: string, text: string): Promise<void> {
    return Promise.resolve().then(() => this.#get().sayAndHangup(sid, text));
  }
  fetch(sid: string): Promise<CarrierCall | undefined> {
    return Promise.resolve().then(() => this.#get().fetch(sid));
  }
  findRecent(to: string, from: string, since: number): Promise<CarrierCall[]> {
    return Promise.resolve().then(() => this.#get().findRecent(to, from, since));
  }
  async close(): Promise<void> {
    await this.#inner?.close?.();
  }
}
