/**
 * Call control: speaking to the caller outside the agent (apologies,
 * goodbyes) once the call has left the webhook. One small port with a REST
 * implementation over the `twilio` client and a local one for runs without
 * Twilio credentials.
 */
import twilio from 'twilio';
import { sayHangupTwiml } from './twiml.js';
/** REST implementation (`calls(sid).update({ twiml })`). */
export class TwilioRestCallControl {
    say;
    log;
    #client;
    constructor(accountSid, authToken, say, log) {
        this.say = say;
        this.log = log;
        this.#client = twilio(accountSid, authToken, { autoRetry: true, maxRetries: 2, timeout: 5000 });
    }
    async sayAndHangup(callSid, text) {
        try {
            await this.#client.calls(callSid).update({ twiml: sayHangupTwiml(text, this.say) });
            return true;
        }
        catch (err) {
            const e = err;
            this.log.warn({ callSid, status: e.status, code: e.code, err: e.message }, 'call control: update failed');
            return false;
        }
    }
}
/**
 * Without Twilio REST credentials nothing can speak to the caller once the
 * stream runs: the text is recorded and the session ends the stream itself.
 */
export class LocalCallControl {
    spoken = [];
    async sayAndHangup(callSid, text) {
        this.spoken.push({ callSid, text });
        if (this.spoken.length > 1000)
            this.spoken.shift();
        return false;
    }
}
//# sourceMappingURL=callControl.js.map