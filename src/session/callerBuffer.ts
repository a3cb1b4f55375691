/**
 * Caller audio held while the agent cannot take it (before its first `init`,
 * during a reconnect): base64 frames in arrival order, bounded in bytes of
 * audio. When the bound is passed the oldest frames go first, so the agent
 * gets the newest audio when it is back. Pure: no sockets, no timers.
 */
import { base64ByteLength } from '../audio/base64.js';

export class CallerAudioBuffer {
  #frames: string[] = [];
  #head = 0;
  #bytes = 0;
  #maxBytes: number;

  /** `maxBytes`: bytes of μ-law audio kept at most (8 per ms). */
  constructor(maxBytes: number) {
    this.#maxBytes = maxBytes;
  }

  /** Frames held now. */
  get length(): number {
    return this.#frames.length - this.#head;
  }

  /** The bound in ms of audio. */
  get maxMs(): number {
    return this.#maxBytes / 8;
  }

  /** Changes the bound (it applies from the next push). */
  setMaxBytes(maxBytes: number): void {
    this.#maxBytes = maxBytes;
  }

  /** Holds one frame (validated base64); returns how many of the oldest frames it pushed out. */
  push(payload: string): number {
    this.#frames.push(payload);
    this.#bytes += base64ByteLength(payload);
    let dropped = 0;
    while (this.#bytes > this.#maxBytes && this.#head < this.#frames.length) {
      this.#bytes -= base64ByteLength(this.#frames[this.#head++] ?? '');
      dropped++;
    }
    return dropped;
  }

  /** Hands every held frame, oldest first, to `send` and empties the buffer. */
  drain(send: (payload: string) => void): void {
    const frames = this.#frames;
    const from = this.#head;
    this.clear();
    for (let i = from; i < frames.length; i++) send(frames[i] ?? '');
  }

  /** Forgets every held frame; returns how many there were. */
  clear(): number {
    const n = this.length;
    this.#frames = [];
    this.#head = 0;
    this.#bytes = 0;
    return n;
  }
}
