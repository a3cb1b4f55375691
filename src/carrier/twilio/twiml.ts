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
 * What a prompt says: the text for `<Say>`, or (when its audio is ready in the agent's voice)
 * `<Play>` of `playUrl`, a signed URL on our own origin. A plain string is `<Say>`.
 */
export type Speech = string | { text: string; playUrl?: string };

function speak(vr: InstanceType<typeof twilio.twiml.VoiceResponse>, speech: Speech, opts: SayOptions): void {
  if (typeof speech !== 'string' && speech.playUrl !== undefined) vr.play(speech.playUrl);
  else vr.say(sayAttributes(opts), typeof speech === 'string' ? speech : speech.text);
}

const textOf = (speech: Speech): string => (typeof speech === 'string' ? speech : speech.text);

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

/** A short spoken message, then `<Connect><Stream>` (a caller coming back to the agent), then `<Hangup/>`. */
export function sayConnectStreamTwiml(text: Speech, streamUrl: string, parameters: Record<string, string>, opts: SayOptions = {}): string {
  const vr = new twilio.twiml.VoiceResponse();
  if (textOf(text) !== '') speak(vr, text, opts);
  const stream = vr.connect().stream({ url: streamUrl });
  for (const [name, value] of Object.entries(parameters)) stream.parameter({ name, value });
  vr.hangup();
  return vr.toString();
}

/** A short spoken message, then hang up (no stream). */
export function sayHangupTwiml(text: Speech, opts: SayOptions = {}): string {
  const vr = new twilio.twiml.VoiceResponse();
  speak(vr, text, opts);
  vr.hangup();
  return vr.toString();
}

/** A short spoken message, then forward the call to `number`. */
export function sayDialTwiml(text: Speech | undefined, number: string, opts: SayOptions = {}): string {
  const vr = new twilio.twiml.VoiceResponse();
  if (text !== undefined && textOf(text) !== '') speak(vr, text, opts);
  vr.dial(number);
  return vr.toString();
}

/** Just hang up (an outbound call that is no longer wanted when it answers). */
export function hangupTwiml(): string {
  const vr = new twilio.twiml.VoiceResponse();
  vr.hangup();
  return vr.toString();
}

export interface TransferDialOptions {
  /** `+E.164` or a `sip:` URI. */
  to: string;
  /** Caller ID the person sees (E.164); Twilio's default (the caller's number) when absent. */
  callerId?: string;
  /** Seconds the person's phone rings. */
  timeoutS: number;
  /** Requested when the dialed leg ends, with `DialCallStatus`; its answer is what the caller gets next. */
  actionUrl: string;
  /** The dialed leg's status callbacks (`answered`, `completed`), to know at once that the person picked up. */
  statusCallbackUrl?: string;
}

/**
 * A cold transfer: `<Dial action timeout callerId answerOnBridge><Number|Sip>`. The caller hears
 * ringing until the person answers; the action URL decides what comes after (hang up, or back to
 * the agent when nobody answered).
 */
export function transferDialTwiml(o: TransferDialOptions): string {
  const vr = new twilio.twiml.VoiceResponse();
  const dial = vr.dial({ action: o.actionUrl, method: 'POST', timeout: o.timeoutS, answerOnBridge: true, ...(o.callerId !== undefined ? { callerId: o.callerId } : {}) });
  const progress = o.statusCallbackUrl === undefined ? {} : { statusCallback: o.statusCallbackUrl, statusCallbackMethod: 'POST' as const, statusCallbackEvent: ['answered', 'completed'] as Array<'answered' | 'completed'> };
  if (/^sips?:/i.test(o.to)) dial.sip(progress, o.to);
  else dial.number(progress, o.to);
  return vr.toString();
}

export interface ConferenceOptions {
  room: string;
  /** Hold audio while the caller waits (a URL Twilio fetches; `waitUrl=""` means silence). */
  waitUrl?: string;
  /** Conference events (start, join, leave, end). */
  statusCallbackUrl?: string;
}

/**
 * The caller's side of a warm transfer: waiting in a conference (hold audio) that starts when the
 * person joins; when the conference ends (the person hung up), the call goes on to `<Hangup/>`.
 */
export function conferenceWaitTwiml(o: ConferenceOptions): string {
  const vr = new twilio.twiml.VoiceResponse();
  vr.dial().conference(
    {
      startConferenceOnEnter: false,
      endConferenceOnExit: true,
      beep: 'false',
      waitUrl: o.waitUrl ?? '',
      ...(o.statusCallbackUrl !== undefined ? { statusCallback: o.statusCallbackUrl, statusCallbackMethod: 'POST' as const, statusCallbackEvent: ['start', 'end', 'join', 'leave'] as Array<'start' | 'end' | 'join' | 'leave'> } : {}),
    },
    o.room,
  );
  vr.hangup();
  return vr.toString();
}

/**
 * The person's side of a warm transfer: hears the summary, then joins the caller's conference,
 * which starts then and ends when the person leaves.
 */
export function conferenceJoinTwiml(summary: Speech, room: string, opts: SayOptions = {}): string {
  const vr = new twilio.twiml.VoiceResponse();
  if (textOf(summary) !== '') speak(vr, summary, opts);
  vr.dial().conference({ startConferenceOnEnter: true, endConferenceOnExit: true, beep: 'false' }, room);
  return vr.toString();
}
