/**
 * The TTS port: text in, telephone audio out. Every adapter answers in the one
 * format callers hear, raw 8 kHz mono μ-law (no header), whatever its service
 * speaks; converting (once, in the adapter) is the adapter's job.
 */

/** The only output format of the port: headerless G.711 μ-law, 8000 Hz, mono. */
export const TTS_FORMAT = 'mulaw_8000';

/** Why a synthesis failed (the label of `playline_tts_failures_total`). */
export type TtsFailure =
  /** The service refused our credentials (auth endpoint 401/403, or the socket refused the URL). */
  | 'auth'
  /** No answer in time (auth, connect, or the audio of one request). */
  | 'timeout'
  /** The socket closed while this request was being answered. */
  | 'dropped'
  /** The service answered this request with an error. */
  | 'service'
  /** The service's answer could not be understood (bad JSON, audio in an unknown format, empty audio). */
  | 'protocol'
  /** The adapter is closed, or could not reach the service at all. */
  | 'unavailable';

export class TtsError extends Error {
  override name = 'TtsError';
  constructor(
    readonly kind: TtsFailure,
    message: string,
  ) {
    super(message);
  }
}

export interface TtsPort {
  /** `playai`, `local`…: shown in logs and metrics. */
  readonly name: string;
  /**
   * Speaks `text` in `voice`. Resolves with raw 8 kHz μ-law; rejects with a
   * {@link TtsError}. Never hangs: every adapter bounds each request in time.
   */
  synthesize(text: string, voice: string): Promise<Buffer>;
  /** Closes sockets and timers; pending requests reject with `unavailable`. Idempotent. */
  close(): Promise<void>;
}
