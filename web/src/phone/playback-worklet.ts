/**
 * Agent audio (8 kHz μ-law) → the speakers, through a small jitter buffer.
 *
 * - Audio is queued in order. Playback starts once TARGET_MS is buffered (or the first audio has
 *   waited TARGET_MS, so a short reply still plays), and is upsampled to the context rate by
 *   linear interpolation.
 * - Positions are counted in 8 kHz samples: `written` (queued so far) and `played`. A mark is
 *   echoed (posted back as `played`) only when `played` reaches the position it was queued at,
 *   so its audio has really been played; a mark with nothing queued before it is echoed at once.
 * - `clear` empties the queue at once and echoes every pending mark, as Twilio does.
 * - An underrun is the queue running dry while playing and audio arriving again within
 *   UNDERRUN_GAP_S: a gap inside a stream, not the end of a reply.
 * Stats are posted about ten times a second.
 */
import { mulaw } from 'alawmulaw';

const IN_RATE = 8000;
const TARGET_MS = 80;
const TARGET_SAMPLES = (TARGET_MS * IN_RATE) / 1000;
const UNDERRUN_GAP_S = 0.25;
const STATS_EVERY_S = 0.1;

type Message = { type: 'audio'; bytes: Uint8Array } | { type: 'mark'; name: string } | { type: 'clear' };

function isMessage(v: unknown): v is Message {
  if (typeof v !== 'object' || v === null || !('type' in v)) return false;
  if (v.type === 'audio') return 'bytes' in v && v.bytes instanceof Uint8Array;
  if (v.type === 'mark') return 'name' in v && typeof v.name === 'string';
  return v.type === 'clear';
}

class PlaybackProcessor extends AudioWorkletProcessor {
  readonly #step = IN_RATE / sampleRate;
  #chunks: Float32Array[] = [];
  #chunkPos = 0;
  #buffered = 0;
  #written = 0;
  #played = 0;
  #marks: Array<{ name: string; at: number }> = [];
  #state: 'waiting' | 'playing' | 'drained' = 'waiting';
  #firstQueuedAt = -1;
  #drainedAt = 0;
  #phase = 0;
  #prev = 0;
  #cur = 0;
  #underruns = 0;
  #clears = 0;
  /** Agent audio the last `clear` dropped, in 8 kHz samples. */
  #dropped = 0;
  #playedTotal = 0;
  #lastStatsAt = 0;

  constructor() {
    super();
    this.port.onmessage = (e: MessageEvent<unknown>) => {
      const m = e.data;
      if (!isMessage(m)) return;
      if (m.type === 'audio') this.#queue(m.bytes);
      else if (m.type === 'mark') {
        this.#marks.push({ name: m.name, at: this.#written });
        this.#echoPlayedMarks();
      } else this.#clear();
    };
  }

  #queue(bytes: Uint8Array): void {
    if (bytes.length === 0) return;
    const f = new Float32Array(bytes.length);
    for (let i = 0; i < bytes.length; i++) f[i] = mulaw.decodeSample(bytes[i] ?? 0xff) / 32768;
    this.#chunks.push(f);
    this.#buffered += f.length;
    this.#written += f.length;
    if (this.#state === 'drained') {
      if (currentTime - this.#drainedAt < UNDERRUN_GAP_S) this.#underruns++;
      this.#state = 'waiting';
      this.#firstQueuedAt = currentTime;
    } else if (this.#state === 'waiting' && this.#firstQueuedAt < 0) this.#firstQueuedAt = currentTime;
  }

  #clear(): void {
    this.#dropped = this.#buffered;
    this.#chunks = [];
    this.#chunkPos = 0;
    this.#buffered = 0;
    this.#played = this.#written;
    this.#state = 'waiting';
    this.#firstQueuedAt = -1;
    this.#prev = 0;
    this.#cur = 0;
    this.#clears++;
    this.#echoPlayedMarks();
    this.#postStats();
  }

  #echoPlayedMarks(): void {
    while (this.#marks.length > 0 && (this.#marks[0]?.at ?? Infinity) <= this.#played) {
      const m = this.#marks.shift();
      if (m !== undefined) this.port.postMessage({ type: 'played', name: m.name });
    }
  }

  /** The next 8 kHz sample, or undefined when the queue is empty. */
  #next(): number | undefined {
    const c = this.#chunks[0];
    if (c === undefined) return undefined;
    const v = c[this.#chunkPos++] ?? 0;
    if (this.#chunkPos >= c.length) {
      this.#chunks.shift();
      this.#chunkPos = 0;
    }
    this.#buffered--;
    this.#played++;
    this.#playedTotal++;
    return v;
  }

  process(_inputs: Float32Array[][], outputs: Float32Array[][]): boolean {
    const out = outputs[0];
    const ch0 = out?.[0];
    if (out === undefined || ch0 === undefined) return true;
    if (this.#state === 'waiting' && this.#buffered > 0 && (this.#buffered >= TARGET_SAMPLES || currentTime - this.#firstQueuedAt >= TARGET_MS / 1000)) {
      this.#state = 'playing';
      this.#firstQueuedAt = -1;
    }
    if (this.#state === 'playing') {
      for (let i = 0; i < ch0.length; i++) {
        this.#phase += this.#step;
        while (this.#phase >= 1) {
          this.#phase -= 1;
          this.#prev = this.#cur;
          const s = this.#next();
          if (s === undefined) {
            this.#cur = 0;
            if (this.#state === 'playing') {
              this.#state = 'drained';
              this.#drainedAt = currentTime;
            }
          } else this.#cur = s;
        }
        ch0[i] = this.#prev + (this.#cur - this.#prev) * this.#phase;
      }
      this.#echoPlayedMarks();
    } else ch0.fill(0);
    for (let c = 1; c < out.length; c++) out[c]?.set(ch0);
    if (currentTime - this.#lastStatsAt >= STATS_EVERY_S) this.#postStats();
    return true;
  }

  #postStats(): void {
    this.#lastStatsAt = currentTime;
    this.port.postMessage({
      type: 'stats',
      bufferedMs: Math.round(this.#buffered / 8),
      underruns: this.#underruns,
      clears: this.#clears,
      droppedMs: Math.round(this.#dropped / 8),
      playedMs: Math.round(this.#playedTotal / 8),
      playing: this.#state === 'playing',
    });
  }
}

registerProcessor('playline-playback', PlaybackProcessor);
