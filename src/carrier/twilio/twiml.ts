/**
 * TwiML answers, built with the `twilio` package's VoiceResponse (it escapes
 * attribute values and text).
 */
import twilio from 'twilio';

type SayAttributes = NonNullable<Parameters<InstanceType<typeof twilio.twiml.VoiceResponse>['say']>[0]>;

export interface SayOptions {
  voice?: string;
  language?: string;
}

function sayAttributes(opts: SayOptions): SayAttributes {
  const attrs: Record<string, string> = {};
  if (opts.voice) attrs.voice = opts.voice;
  if (opts.language) attrs.language = opts.language;
  return attrs as SayAttributes;
}

/**
 * `<Connect><Stream url>` with `<Parameter>`s, then `<Hangup/>`: when the
 * bridge closes the stream, the call falls through to the hang-up.
 */
export function connectStreamTwiml(streamUrl: string, parameters: Record<string, string>): string {
  const vr = new twilio.twiml.VoiceResponse();
  const stream = vr.connect().stream({ url: streamUrl });
  for (const [name, value] of Object.entries(parameters)) stream.parameter({ name, value });
  vr.hangup();
  return vr.toString();
}

/** A short spoken message, then hang up (no stream). */
export function sayHangupTwiml(text: string, opts: SayOptions = {}): string {
  const vr = new twilio.twiml.VoiceResponse();
  vr.say(sayAttributes(opts), text);
  vr.hangup();
  return vr.toString();
}

/** A short spoken message, then forward the call to `number`. */
export function sayDialTwiml(text: string | undefined, number: string, opts: SayOptions = {}): string {
  const vr = new twilio.twiml.VoiceResponse();
  if (text) vr.say(sayAttributes(opts), text);
  vr.dial(number);
  return vr.toString();
}

/** Just hang up (an outbound call that is no longer wanted when it answers). */
export function hangupTwiml(): string {
  const vr = new twilio.twiml.VoiceResponse();
  vr.hangup();
  return vr.toString();
}
