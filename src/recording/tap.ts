/**
 * Where a call's audio reaches its recording: a tap around the carrier leg
 * (agent audio and `clear`s the session sends) and around the session's
 * handlers (caller audio Twilio sends). Only recorded calls get a tap; the
 * others keep the bare leg and session, so recording off costs nothing.
 */
import type { CarrierHandlers, CarrierLeg } from '../carrier/twilio/stream.js';
import type { CallAudioRecorder } from './localRecording.js';

/** A carrier leg that can say the media timestamp of the frame being delivered. */
export interface TimestampedLeg extends CarrierLeg {
  /** Twilio's `media.timestamp` (ms since the stream started) of the frame being delivered now, if it had one. */
  readonly mediaTimestampMs?: number | undefined;
}

/** The leg the session sends through: agent audio and clears are recorded as they go out. */
export function tapLeg(leg: TimestampedLeg, rec: CallAudioRecorder): CarrierLeg {
  return {
    sendMediaBytes(buf, start, end) {
      leg.sendMediaBytes(buf, start, end);
      rec.agentAudio(buf, start, end);
    },
    sendMark: (name) => leg.sendMark(name),
    sendClear() {
      leg.sendClear();
      rec.cleared();
    },
    close: (code, reason) => leg.close(code, reason),
    get isOpen() {
      return leg.isOpen;
    },
    get bufferedAmount() {
      return leg.bufferedAmount;
    },
  };
}

/** The handlers the carrier leg delivers to: caller audio is recorded, then goes to the session. */
export function tapHandlers(h: CarrierHandlers, leg: TimestampedLeg, rec: CallAudioRecorder): CarrierHandlers {
  return {
    onMediaBytes(buf, start, end) {
      rec.callerAudio(buf, start, end, leg.mediaTimestampMs);
      h.onMediaBytes(buf, start, end);
    },
    onMedia(payload) {
      const buf = Buffer.from(payload, 'latin1');
      rec.callerAudio(buf, 0, buf.length, undefined);
      h.onMediaBytes(buf, 0, buf.length);
    },
    onMark: (name) => h.onMark(name),
    onDtmf: (digit) => h.onDtmf(digit),
    onStop: () => h.onStop(),
    onClose: (code) => h.onClose(code),
    onBadFrame: (kind, name) => h.onBadFrame(kind, name),
    onInternalError: (err) => h.onInternalError(err),
  };
}
