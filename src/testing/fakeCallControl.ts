/** A recording fake of the call-control port (what Twilio REST would be asked to do). */
import type { CallControl } from '../carrier/twilio/callControl.js';

export interface CallControlRequest {
  callSid: string;
  /** Text to speak (`<Say>`), if any. */
  text?: string;
  /** Number the call was forwarded to (`<Dial>`), if any. */
  forwardTo?: string;
}

export class FakeCallControl implements CallControl {
  readonly requests: CallControlRequest[] = [];
  /** What the port resolves to (true = Twilio accepted the update). */
  accept = true;
  /** When set, called after a request is recorded (e.g. to stop the stream like Twilio would). */
  onRequest: ((r: CallControlRequest) => void) | undefined;

  /** Texts spoken, in order, with their call. */
  get spoken(): Array<{ callSid: string; text: string }> {
    return this.requests.flatMap((r) => (r.text === undefined ? [] : [{ callSid: r.callSid, text: r.text }]));
  }

  async sayAndHangup(callSid: string, text: string): Promise<boolean> {
    return this.#record({ callSid, text });
  }

  async forward(callSid: string, number: string, text?: string): Promise<boolean> {
    return this.#record(text === undefined ? { callSid, forwardTo: number } : { callSid, text, forwardTo: number });
  }

  #record(r: CallControlRequest): boolean {
    this.requests.push(r);
    this.onRequest?.(r);
    return this.accept;
  }
}
