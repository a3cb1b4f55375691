/**
 * The recording-consent announcement a caller hears before the agent speaks.
 *
 * It comes ahead of `<Connect><Stream>` in the answer's TwiML (so it is over
 * before the stream, and the recording, start): `<Play>` of the consent prompt in
 * the agent voice when TTS has it ready (`tts/prompts.ts`), else Twilio `<Say>`.
 */
import { connectStreamTwiml, sayConnectStreamTwiml, type SayOptions, type Speech } from '../carrier/twilio/twiml.js';

/** The answer TwiML of an admitted call: the consent announcement (when there is one), then the stream. */
export function streamTwimlWithConsent(consentText: Speech | undefined, streamUrl: string, parameters: Record<string, string>, say: SayOptions): string {
  return consentText === undefined ? connectStreamTwiml(streamUrl, parameters) : sayConnectStreamTwiml(consentText, streamUrl, parameters, say);
}
