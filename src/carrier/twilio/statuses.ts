/**
 * Twilio's call statuses (REST `Call.status` and status callbacks' `CallStatus`):
 * the one definition every module that reads them shares.
 */

/** Statuses after which nothing more happens to a call. */
export const TWILIO_TERMINAL_STATUSES = ['completed', 'busy', 'no-answer', 'failed', 'canceled'] as const;
export type TwilioTerminalStatus = (typeof TWILIO_TERMINAL_STATUSES)[number];

/** Every call status Twilio reports (`initiated` only in callbacks). */
export type TwilioCallStatus = 'queued' | 'initiated' | 'ringing' | 'in-progress' | TwilioTerminalStatus;

const TERMINAL: ReadonlySet<string> = new Set(TWILIO_TERMINAL_STATUSES);

export function isTerminalTwilioStatus(s: string): s is TwilioTerminalStatus {
  return TERMINAL.has(s);
}
