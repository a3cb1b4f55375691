/**
 * The recording-consent announcement a caller hears before the agent speaks.
 *
 * For now it is Twilio `<Say>` ahead of `<Connect><Stream>` in the answer's TwiML
 * (so it is over before the stream, and the recording, start). This is the one
 * place that decides how it is spoken: a TTS prompt (`<Play>` of cached audio)
 * replaces it here.
 */
import { connectStreamTwiml, sayConnectStreamTwiml, type SayOptions } from '../carrier/twilio/twiml.js';

/** The answer TwiML of an admitted call: the consent announcement (when there is one), then the stream. */
export function streamTwimlWithConsent(consentText: string | undefined, streamUrl: string, parameters: Record<string, string>, say: SayOptions): string {
  return consentText === undefined ? connectStreamTwiml(streamUrl, parameters) : sayConnectStreamTwiml(consentText, streamUrl, parameters, say);
}
