/**
 * Call control: speaking to the caller outside the agent (apologies,
 * goodbyes) once the call has left the webhook. One small port with a REST
 * implementation over the `twilio` client and a local one for runs without
 * Twilio credentials.
 */
import twilio from 'twilio';
import type { Logger } from 'pino';
import { sayHangupTwiml, type SayOptions } from './twiml.js';

export interface CallControl {
  /**
   * Replaces the call's TwiML with `<Say>text</Say><Hangup/>`. Twilio then tears
   * the media stream down itself. Resolves true when the carrier accepted the
   * request, false when it could not be sent (the caller of this port then
   * simply closes the stream, which falls through to `<Hangup/>`).
   */
  sayAndHangup(callSid: string, text: string): Promise<boolean>;
}

/** REST implementation (`calls(sid).update({ twiml })`). */
export class TwilioRestCallControl implements CallControl {
  readonly #client: ReturnType<typeof twilio>;

  constructor(
    accountSid: string,
    authToken: string,
    private readonly say: SayOptions,
    private readonly log: Logger,
  ) {
    this.#client = twilio(accountSid, authToken, { autoRetry: true, maxRetries: 2, timeout: 5000 });
  }

  async sayAndHangup(callSid: string, text: string): Promise<boolean> {
    try {
      await this.#client.calls(callSid).update({ twiml: sayHangupTwiml(text, this.say) });
      return true;
    } catch (err) {
      const e = err as { status?: number; code?: number; message?: string };
      this.log.warn({ callSid, status: e.status, code: e.code, err: e.message }, 'call control: update failed');
      return false;
    }
  }
}

/**
 * Without Twilio REST credentials nothing can speak to the caller once the
 * stream runs: the text is recorded and the session ends the stream itself.
 */
export class LocalCallControl implements CallControl {
  readonly spoken: Array<{ callSid: string; text: string }> = [];

  async sayAndHangup(callSid: string, text: string): Promise<boolean> {
    this.spoken.push({ callSid, text });
    if (this.spoken.length > 1000) this.spoken.shift();
    return false;
  }
}
