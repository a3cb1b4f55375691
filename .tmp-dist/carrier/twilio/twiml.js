/**
 * TwiML answers, built with the `twilio` package's VoiceResponse (it escapes
 * attribute values and text).
 */
import twilio from 'twilio';
function sayAttributes(opts) {
    const attrs = {};
    if (opts.voice)
        attrs.voice = opts.voice;
    if (opts.language)
        attrs.language = opts.language;
    return attrs;
}
/**
 * `<Connect><Stream url>` with `<Parameter>`s, then `<Hangup/>`: when the
 * bridge closes the stream, the call falls through to the hang-up.
 */
export function connectStreamTwiml(streamUrl, parameters) {
    const vr = new twilio.twiml.VoiceResponse();
    const stream = vr.connect().stream({ url: streamUrl });
    for (const [name, value] of Object.entries(parameters))
        stream.parameter({ name, value });
    vr.hangup();
    return vr.toString();
}
/** A short spoken message, then hang up (no stream). */
export function sayHangupTwiml(text, opts = {}) {
    const vr = new twilio.twiml.VoiceResponse();
    vr.say(sayAttributes(opts), text);
    vr.hangup();
    return vr.toString();
}
/** A short spoken message, then forward the call to `number`. */
export function sayDialTwiml(text, number, opts = {}) {
    const vr = new twilio.twiml.VoiceResponse();
    if (text)
        vr.say(sayAttributes(opts), text);
    vr.dial(number);
    return vr.toString();
}
//# sourceMappingURL=twiml.js.map