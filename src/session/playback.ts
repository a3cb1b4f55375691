/**
 * Playback bookkeeping for agent audio queued at Twilio.
 *
 * Twilio plays `media` in order and echoes a `mark` once everything queued
 * before it has played, or at once when a `clear` flushes it. The tracker
 * names marks `pl:<generation>:<seq>`, places one after about every
 * `markIntervalMs` of audio (never one per chunk), and bumps the generation on
 * every `clear` so echoes of flushed marks are recognised as stale, not as
 * playback. Pure logic: no sockets, no timers.
 */
export type MarkEchoResult = 'played' | 'stale' | 'unknown';

const PREFIX = 'pl:';

export class PlaybackTracker {
  readonly #bytesPerMark: number;
  #generation = 0;
  #seq = 0;
  /** Names of marks sent in the current generation and not echoed yet, oldest first. */
  #pending: string[] = [];
  #head = 0;
  #unmarkedBytes = 0;
  /** Bytes confirmed played by mark echoes. */
  playedBytes = 0;
  #pendingBytes: number[] = [];

  constructor(markIntervalMs: number) {
    this.#bytesPerMark = Math.max(1, Math.round(markIntervalMs * 8));
  }

  /** True while agent audio may still be queued at Twilio (sent but not confirmed played). */
  get queued(): boolean {
    return this.#head < this.#pending.length || this.#unmarkedBytes > 0;
  }

  /** True when some audio was sent after the last mark. */
  get hasUnmarkedAudio(): boolean {
    return this.#unmarkedBytes > 0;
  }

  /** Marks sent and not yet echoed in the current generation. */
  get pendingMarks(): number {
    return this.#pending.length - this.#head;
  }

  /**
   * Records `bytes` of audio just sent. Returns the name of a mark to send now
   * when enough unmarked audio has accumulated, otherwise undefined.
   */
  onAudioSent(bytes: number): string | undefined {
    this.#unmarkedBytes += bytes;
    return this.#unmarkedBytes >= this.#bytesPerMark ? this.flushMark() : undefined;
  }

  /** Returns a mark name covering all unmarked audio (end of a response, or a tail timer), or undefined if there is none. */
  flushMark(): string | undefined {
    if (this.#unmarkedBytes === 0) return undefined;
    const name = `${PREFIX}${this.#generation}:${++this.#seq}`;
    this.#pending.push(name);
    this.#pendingBytes.push(this.#unmarkedBytes);
    this.#unmarkedBytes = 0;
    return name;
  }

  /** Classifies a mark echoed by Twilio and advances playback when it is current. */
  onMarkEcho(name: string): MarkEchoResult {
    if (!name.startsWith(PREFIX)) return 'unknown';
    const sep = name.indexOf(':', PREFIX.length);
    const gen = Number(name.slice(PREFIX.length, sep));
    if (sep < 0 || !Number.isInteger(gen)) return 'unknown';
    if (gen !== this.#generation) return gen < this.#generation ? 'stale' : 'unknown';
    // Echoes come back in order; tolerate a lost one by skipping up to the echoed name.
    for (let i = this.#head; i < this.#pending.length; i++) {
      if (this.#pending[i] === name) {
        for (let j = this.#head; j <= i; j++) this.playedBytes += this.#pendingBytes[j] ?? 0;
        this.#head = i + 1;
        this.#compact();
        return 'played';
      }
    }
    return 'unknown';
  }

  /**
   * Forgets everything queued (call right after sending `clear`): the
   * generation moves on so echoes of the flushed marks are stale. Returns the
   * oldest flushed mark (Twilio echoes it once playback has stopped), if any.
   */
  reset(): string | undefined {
    const oldest = this.#pending[this.#head];
    this.#generation++;
    this.#pending = [];
    this.#pendingBytes = [];
    this.#head = 0;
    this.#unmarkedBytes = 0;
    return oldest;
  }

  #compact(): void {
    if (this.#head === this.#pending.length) {
      this.#pending = [];
      this.#pendingBytes = [];
      this.#head = 0;
    } else if (this.#head > 64) {
      this.#pending = this.#pending.slice(this.#head);
      this.#pendingBytes = this.#pendingBytes.slice(this.#head);
      this.#head = 0;
    }
  }
}
