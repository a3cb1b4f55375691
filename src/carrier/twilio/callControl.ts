/**
 * Call control: speaking to the caller outside the agent (apologies,
 * goodbyes, overflow) once the call has left the webhook. One small port with
 * a REST implementation over the `twilio` client and a local one for runs
 * without Twilio credentials.
 */
import twilio from 'twilio';
import type { Logger } from 'pino';
import { sayDialTwiml, sayHangupTwiml, type SayOptions } from './twiml.js';

export interface CallControl {
  /**
   * Replaces the call's TwiML with `<Say>text</Say><Hangup/>`. Twilio then tears
   * the media stream down itself. Resolves true when the carrier accepted the
   * request, false when it could not be sent (the caller of this port then
   * simply closes the stream, which falls through to `<Hangup/>`).
   */
  sayAndHangup(callSid: string, text: string): Promise<boolean>;
  /** Replaces the call's TwiML with an optional `<Say>` and `<Dial>number</Dial>`. Same contract. */
  forward(callSid: string, number: string, text?: string): Promise<boolean>;
}

type RequestOptions<TData> = import('twilio/lib/base/RequestClient.js').RequestOptions<TData>;

/** The REST origin the `twilio` package talks to. */
const TWILIO_API_ORIGIN = 'https://api.twilio.com';

/**
 * A RequestClient that sends Twilio REST requests to another origin
 * (`TWILIO_API_URL`: a Twilio-compatible server for tests and gateways).
 */
export class RedirectingRequestClient extends twilio.RequestClient {
  constructor(
    private readonly origin: string,
    opts: ConstructorParameters<typeof twilio.RequestClient>[0],
  ) {
    super(opts);
  }

  override request<TData>(opts: RequestOptions<TData>) {
    if (typeof opts.uri === 'string' && opts.uri.startsWith(TWILIO_API_ORIGIN)) {
      opts.uri = this.origin + opts.uri.slice(TWILIO_API_ORIGIN.length);
    }
    return super.request<TData>(opts);
  }
}

export interface RestCallControlOptions {
  accountSid: string;
  authToken: string;
  say: SayOptions;
  log: Logger;
  /** Base URL replacing https://api.twilio.com (optional). */
  apiUrl?: string;
}

/** REST implementation (`calls(sid).update({ twiml })`). 429s are retried by the client. */
export class TwilioRestCallControl implements CallControl {
  readonly #client: ReturnType<typeof twilio>;
  readonly #say: SayOptions;
  readonly #log: Logger;

  constructor(opts: RestCallControlOptions) {
    this.#say = opts.say;
    this.#log = opts.log;
    const clientOpts = { autoRetry: true, maxRetries: 2, timeout: 5000 };
    this.#client =
      opts.apiUrl === undefined
        ? twilio(opts.accountSid, opts.authToken, clientOpts)
        : twilio(opts.accountSid, opts.authToken, { httpClient: new RedirectingRequestClient(opts.apiUrl, clientOpts) });
  }

  sayAndHangup(callSid: string, text: string): Promise<boolean> {
    return this.#update(callSid, sayHangupTwiml(text, this.#say));
  }

  forward(callSid: string, number: string, text?: string): Promise<boolean> {
    return this.#update(callSid, sayDialTwiml(text, number, this.#say));
  }

  /** Replaces the call's TwiML (a transfer's `<Dial>` or conference, the return to the agent). */
  redirect(callSid: string, twiml: string): Promise<boolean> {
    return this.#update(callSid, twiml);
  }

  /** Calls a person with inline TwiML (a warm transfer); their CallSid, or undefined. */
  async createCall(o: { to: string; from: string; twiml: string; statusCallbackUrl: string; timeoutS: number }): Promise<string | undefined> {
    try {
      const call = await this.#client.calls.create({
        to: o.to,
        from: o.from,
        twiml: o.twiml,
        timeout: o.timeoutS,
        statusCallback: o.statusCallbackUrl,
        statusCallbackMethod: 'POST',
        statusCallbackEvent: ['initiated', 'ringing', 'answered', 'completed'],
      });
      return typeof call.sid === 'string' ? call.sid : undefined;
    } catch (err) {
      const e = err as { status?: number; code?: number; message?: string };
      this.#log.warn({ status: e.status, code: e.code, err: e.message }, 'call control: could not create the transfer call');
      return undefined;
    }
  }

  /** Ends a call. */
  async hangup(callSid: string): Promise<boolean> {
    try {
      await this.#client.calls(callSid).update({ status: 'completed' });
      return true;
    } catch (err) {
      const e = err as { status?: number; code?: number; message?: string };
      this.#log.warn({ callSid, status: e.status, code: e.code, err: e.message }, 'call control: hang-up failed');
      return false;
    }
  }

  async #update(callSid: string, twiml: string): Promise<boolean> {
    try {
      await this.#client.calls(callSid).update({ twiml });
      return true;
    } catch (err) {
      const e = err as { status?: number; code?: number; message?: string };
      this.#log.warn({ callSid, status: e.status, code: e.code, err: e.message }, 'call control: update failed');
      return false;
    }
  }
}

/**
 * Without Twilio REST credentials nothing can speak to the caller once the
 * stream runs: the request is recorded and the session ends the stream itself.
 */
export class LocalCallControl implements CallControl {
  readonly requests: Array<{ callSid: string; text?: string; forwardTo?: string }> = [];

  async sayAndHangup(callSid: string, text: string): Promise<boolean> {
    this.#remember({ callSid, text });
    return false;
  }

  async forward(callSid: string, number: string, text?: string): Promise<boolean> {
    this.#remember(text === undefined ? { callSid, forwardTo: number } : { callSid, text, forwardTo: number });
    return false;
  }

  #remember(r: { callSid: string; text?: string; forwardTo?: string }): void {
    this.requests.push(r);
    if (this.requests.length > 1000) this.requests.shift();
  }
}
