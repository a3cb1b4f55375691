/** A recording fake of the call-control port (what Twilio REST would be asked to say). */
import type { CallControl } from '../carrier/twilio/callControl.js';

export class FakeCallControl implements CallControl {
  readonly spoken: Array<{ callSid: string; text: string }> = [];
  /** What `sayAndHangup` resolves to (true = Twilio accepted the update). */
  accept = true;
  /** When set, called after a request is recorded (e.g. to close the stream like Twilio would). */
  onSay: ((callSid: string, text: string) => void) | undefined;

  async sayAndHangup(callSid: string, text: string): Promise<boolean> {
    this.spoken.push({ callSid, text });
    this.onSay?.(callSid, text);
    return this.accept;
  }
}
