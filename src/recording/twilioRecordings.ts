/**
 * Twilio's Recordings API, for `RECORDING=twilio`:
 * - start: `POST /2010-04-01/Accounts/{AC}/Calls/{CA}/Recordings.json` with
 *   `RecordingChannels=dual` (caller and Playline on separate channels) and a
 *   `RecordingStatusCallback` to our own, signed `/twilio/recording`;
 * - media: `GET /2010-04-01/Accounts/{AC}/Recordings/{RE}.wav` with HTTP basic
 *   auth (the account SID and auth token); Twilio may answer with a redirect to a
 *   short-lived URL, which fetch follows (without our credentials: it drops
 *   `Authorization` on a cross-origin redirect);
 * - delete: `DELETE /2010-04-01/Accounts/{AC}/Recordings/{RE}.json`.
 *
 * The media URL is built from the recording SID and our API origin, never taken from a
 * callback's `RecordingUrl`, so the credentials only ever go to Twilio (or TWILIO_API_URL).
 */
import twilio from 'twilio';
import { RedirectingRequestClient } from '../carrier/twilio/callControl.js';

export interface TwilioRecordingsPort {
  /** Starts a dual-channel recording of a live call; resolves with its SID. */
  start(callSid: string, statusCallbackUrl: string): Promise<{ sid: string }>;
  /** Deletes a recording (its audio too). A recording Twilio no longer has counts as deleted. */
  delete(recordingSid: string): Promise<void>;
  /** The recording's WAV from Twilio (a `Range` header passed through when given). */
  fetchMedia(recordingSid: string, range?: string): Promise<Response>;
}

export interface TwilioRecordingsOptions {
  accountSid: string;
  authToken: string;
  /** TWILIO_API_URL: a Twilio-compatible origin instead of https://api.twilio.com. */
  apiUrl?: string;
  fetchImpl?: typeof fetch;
}

const TWILIO_API_ORIGIN = 'https://api.twilio.com';

export class TwilioRecordings implements TwilioRecordingsPort {
  readonly #client: ReturnType<typeof twilio>;
  readonly #o: TwilioRecordingsOptions;
  readonly #origin: string;

  constructor(o: TwilioRecordingsOptions) {
    this.#o = o;
    this.#origin = o.apiUrl ?? TWILIO_API_ORIGIN;
    const clientOpts = { autoRetry: true, maxRetries: 2, timeout: 10_000 };
    this.#client =
      o.apiUrl === undefined ? twilio(o.accountSid, o.authToken, clientOpts) : twilio(o.accountSid, o.authToken, { httpClient: new RedirectingRequestClient(o.apiUrl, clientOpts) });
  }

  async start(callSid: string, statusCallbackUrl: string): Promise<{ sid: string }> {
    const r = await this.#client.calls(callSid).recordings.create({
      recordingChannels: 'dual',
      recordingStatusCallback: statusCallbackUrl,
      recordingStatusCallbackMethod: 'POST',
      recordingStatusCallbackEvent: ['in-progress', 'completed', 'absent'],
    });
    return { sid: r.sid };
  }

  async delete(recordingSid: string): Promise<void> {
    try {
      await this.#client.recordings(recordingSid).remove();
    } catch (err) {
      if (err instanceof twilio.RestException && err.status === 404) return;
      throw err;
    }
  }

  fetchMedia(recordingSid: string, range?: string): Promise<Response> {
    const url = `${this.#origin}/2010-04-01/Accounts/${encodeURIComponent(this.#o.accountSid)}/Recordings/${encodeURIComponent(recordingSid)}.wav?RequestedChannels=2`;
    const headers: Record<string, string> = { authorization: `Basic ${Buffer.from(`${this.#o.accountSid}:${this.#o.authToken}`).toString('base64')}` };
    if (range !== undefined) headers.range = range;
    return (this.#o.fetchImpl ?? fetch)(url, { headers, redirect: 'follow', signal: AbortSignal.timeout(30_000) });
  }
}
