/**
 * A local recording of one call: a stereo WAV (caller left, agent right,
 * 16-bit PCM at 8 kHz; see `wavFile.ts`) written to disk as the call runs.
 *
 * The timeline is the call's own, in 8 kHz sample frames from the moment the
 * stream started:
 * - **Caller audio** sits where Twilio's media `timestamp` puts it (ms since the stream
 *   started), or at its arrival when a frame has none. It is the recording's clock: each
 *   frame commits the timeline up to its end.
 * - **Agent audio** sits where it played: Twilio plays what it is sent in order, in real
 *   time, so a chunk sent at time t starts at max(t, end of the audio queued before it).
 *   A `clear` (barge-in) cuts the queue at the moment it was sent: what Twilio flushed is
 *   dropped, so the recording has the cut the caller heard. Agent audio waits in memory
 *   only until the timeline reaches it (what Twilio itself still has queued).
 * - Silence fills every gap, so both channels stay aligned.
 *
 * Writes leave the media path: committed audio goes to a write buffer (32 KiB, 1 s of
 * audio), and full buffers are written by libuv's thread pool one at a time (positioned
 * writes), with the header's sizes patched every few seconds and on close. A crash loses at
 * most the buffer being filled. A disk that
 * falls behind by more than a few buffers gets a silent gap rather than unbounded memory.
 * A call that comes back after a transfer appends to the same file after a short silence.
 */
import { close as fsClose, ftruncate as fsFtruncate, open as fsOpen, write as fsWrite, openSync, closeSync } from 'node:fs';
import { endianness } from 'node:os';
import type { Logger } from 'pino';
import { mulawDecodeSample } from '../audio/mulaw.js';
import { decodeBase64Into, decodedLength } from './base64Bytes.js';
import { FRAME_BYTES, HEADER_BYTES, RECORDING_SAMPLE_RATE, repairOpenFile, sizeFields, wavHeader } from './wavFile.js';

/** μ-law byte → 16-bit linear sample. */
const ULAW = new Int16Array(256);
for (let i = 0; i < 256; i++) ULAW[i] = mulawDecodeSample(i);

const FRAMES_PER_MS = RECORDING_SAMPLE_RATE / 1000;
/** One write buffer: 8192 sample frames of 4 bytes (1.024 s of audio) = 32 KiB: one disk write per second of call. */
const WRITE_BUFFER_BYTES = 32 * 1024;
/** Write buffers a call may have waiting for the disk (8 × 1 s); beyond, audio becomes a silent gap. */
const MAX_WRITE_BUFFERS = 8;
/** Samples are stored through an Int16Array view (one store each) where the CPU is little-endian, as WAV is. */
const LITTLE_ENDIAN = endianness() === 'LE';
/** The header's sizes are patched after this much new audio reached the disk. */
const PATCH_EVERY_FRAMES = 5 * RECORDING_SAMPLE_RATE;
/** Silence between the parts of a call that came back after a transfer. */
export const JOIN_GAP_MS = 250;
/** Agent audio waiting to play, at most (Twilio itself discards beyond 10 minutes queued). */
const MAX_AGENT_AHEAD_FRAMES = 10 * 60 * RECORDING_SAMPLE_RATE;
/** A caller timestamp further than this ahead of the clock is not trusted (the clock is used). */
const MAX_TIMESTAMP_LEAD_FRAMES = 2 * RECORDING_SAMPLE_RATE;
/** Caller audio placed ahead of what is committed, at most (4 s of μ-law; normally a frame or two). */
const CALLER_RING = 4 * RECORDING_SAMPLE_RATE;
/** Largest caller frame the ring takes without forcing a commit. */
const MAX_FRAME_BYTES = 8 * 1024;
const ULAW_SILENCE = 0xff;

interface AgentChunk {
  /** First frame (stream timeline) at which it plays. */
  pos: number;
  data: Buffer;
  /** Bytes of `data` that play (less after a clear). */
  len: number;
}

interface PendingWrite {
  buf: Buffer;
  len: number;
  /** Stream-timeline frame of its first sample. */
  frame: number;
}

export interface LocalRecordingOptions {
  path: string;
  /** The call came back after a transfer: continue the file (after {@link JOIN_GAP_MS} of silence). */
  append?: boolean;
  /** With `append`: the previous part is still being finished; the file is opened once it is (audio waits in the write queue). */
  after?: Promise<unknown>;
  log: Logger;
  /** Clock in ms (default `performance.now`). */
  now?: () => number;
}

export interface RecordingResult {
  path: string;
  /** Seconds of audio in the file (all parts of the call). */
  durationS: number;
  /** Sample frames this stream added. */
  frames: number;
  /** Frames lost to a disk that could not keep up (written as silence). */
  droppedFrames: number;
}

/** What the media path tells a recording. */
export interface CallAudioRecorder {
  /** Caller audio (base64 μ-law `buf[start, end)`), with Twilio's media timestamp (ms) when known. */
  callerAudio(buf: Uint8Array, start: number, end: number, timestampMs: number | undefined): void;
  /** Agent audio (base64 μ-law `buf[start, end)`) just sent to Twilio. */
  agentAudio(buf: Uint8Array, start: number, end: number): void;
  /** A `clear` was just sent: the agent audio not played yet is gone. */
  cleared(): void;
  /** The call's stream ended; idempotent. */
  close(): Promise<RecordingResult | undefined>;
}

export class LocalCallRecording implements CallAudioRecorder {
  readonly path: string;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #t0: number;
  /** Frames committed (stream timeline): both channels are final before this. */
  #written = 0;
  readonly #agent: AgentChunk[] = [];
  #agentHead = 0;
  /** Where the agent audio queued so far ends (stream timeline). */
  #agentEnd = 0;
  /** Reused: one caller frame's μ-law bytes. */
  #scratch = Buffer.alloc(1024);
  /** Caller audio placed but not committed yet (μ-law, by frame position modulo its size). */
  readonly #ring = Buffer.alloc(CALLER_RING, ULAW_SILENCE);
  /** Where the caller audio placed so far ends (stream timeline). */
  #callerEnd = 0;
  #buf: Buffer;
  /** `#buf` as 16-bit samples (little-endian CPUs). */
  #view: Int16Array;
  #bufLen = 0;
  /** Stream-timeline frame of `#buf`'s first sample. */
  #bufFrame = 0;
  readonly #free: Buffer[] = [];
  #buffers = 1;
  readonly #queue: PendingWrite[] = [];
  #writing = false;
  #fd: number | undefined;
  /** Frames already in the file before this stream (and the join gap). */
  #base = 0;
  #onDisk = 0;
  #patchedAt = 0;
  #dropped = 0;
  #failed = false;
  #closed: Promise<RecordingResult | undefined> | undefined;
  #resolveDrained: (() => void) | undefined;

  constructor(opts: LocalRecordingOptions) {
    this.path = opts.path;
    this.#log = opts.log;
    this.#now = opts.now ?? (() => performance.now());
    this.#t0 = this.#now();
    this.#buf = Buffer.alloc(WRITE_BUFFER_BYTES);
    this.#view = new Int16Array(this.#buf.buffer, this.#buf.byteOffset, WRITE_BUFFER_BYTES / 2);
    if (opts.append !== true) this.#openNew();
    else if (opts.after === undefined) this.#openAppend();
    else {
      const open = (): void => this.#openAppend();
      opts.after.then(open, open);
    }
  }

  /** Sample frames committed so far by this stream. */
  get frames(): number {
    return this.#written;
  }

  /** Agent audio waiting for its time to play, in frames (what the recording holds in memory). */
  get agentQueuedFrames(): number {
    return Math.max(0, this.#agentEnd - this.#written);
  }

  /** Write buffers waiting for (or being written to) the disk. */
  get pendingWrites(): number {
    return this.#queue.length + (this.#writing ? 1 : 0);
  }

  #nowFrame(): number {
    return Math.max(0, Math.round((this.#now() - this.#t0) * FRAMES_PER_MS));
  }

  callerAudio(buf: Uint8Array, start: number, end: number, timestampMs: number | undefined): void {
    if (this.#closed !== undefined) return;
    const n = decodedLength(buf, start, end);
    if (n > this.#scratch.length) this.#scratch = Buffer.alloc(n);
    decodeBase64Into(buf, start, end, this.#scratch);
    const clock = this.#nowFrame();
    let at = timestampMs === undefined ? clock : Math.round(timestampMs * FRAMES_PER_MS);
    if (at > clock + MAX_TIMESTAMP_LEAD_FRAMES) at = clock;
    // A frame behind what is already placed (jitter, a repeated timestamp) continues it.
    if (at < this.#callerEnd) at = this.#callerEnd;
    const ring = this.#ring;
    // A gap (frames Twilio never sent) is caller silence.
    for (let k = this.#callerEnd; k < at; k++) ring[k % CALLER_RING] = ULAW_SILENCE;
    for (let i = 0; i < n; i++) ring[(at + i) % CALLER_RING] = this.#scratch[i] as number;
    this.#callerEnd = at + n;
    // Committed up to the caller audio placed, but never past the clock: agent audio sent now
    // plays now, and must still find its place. The ring keeps what is ahead (a frame or two).
    let to = Math.min(this.#callerEnd, clock);
    if (this.#callerEnd - to > CALLER_RING - MAX_FRAME_BYTES) to = this.#callerEnd - (CALLER_RING - MAX_FRAME_BYTES);
    if (to > this.#written) this.#commit(to);
  }

  agentAudio(buf: Uint8Array, start: number, end: number): void {
    if (this.#closed !== undefined || end <= start) return;
    // Held until it plays: its own buffer (from Node's pool), decoded straight from the frame's bytes.
    const data = Buffer.allocUnsafe(decodedLength(buf, start, end));
    if (data.length === 0) return;
    decodeBase64Into(buf, start, end, data);
    const pos = Math.max(this.#agentEnd, this.#nowFrame(), this.#written);
    // Twilio discards audio queued beyond 10 minutes; so does the recording.
    if (pos + data.length - this.#written > MAX_AGENT_AHEAD_FRAMES) return;
    this.#agent.push({ pos, data, len: data.length });
    this.#agentEnd = pos + data.length;
  }

  cleared(): void {
    if (this.#closed !== undefined) return;
    const cut = Math.max(this.#nowFrame(), this.#written);
    const q = this.#agent;
    while (q.length > this.#agentHead) {
      const last = q[q.length - 1];
      if (last === undefined || last.pos + last.len <= cut) break;
      if (last.pos >= cut) {
        q.pop();
      } else {
        last.len = cut - last.pos;
        break;
      }
    }
    if (this.#agentEnd > cut) this.#agentEnd = cut;
  }

  /** Commits the timeline up to frame `to`: the caller's samples from the ring (silence past its end), the agent's from its queue (or silence). */
  #commit(to: number): void {
    const callerEnd = this.#callerEnd;
    const q = this.#agent;
    let f = this.#written;
    while (f < to) {
      let head = q[this.#agentHead];
      // Chunks wholly before `f` have been written (or were cut to nothing).
      while (head !== undefined && head.pos + head.len <= f) head = this.#shiftAgent();
      // The longest run with one agent source (a chunk, or silence up to the next chunk).
      let runEnd = to;
      let agentData: Buffer | undefined;
      let agentOff = 0;
      if (head !== undefined) {
        if (head.pos <= f) {
          agentData = head.data;
          agentOff = f - head.pos;
          runEnd = Math.min(to, head.pos + head.len);
        } else {
          runEnd = Math.min(to, head.pos);
        }
      }
      const room = (WRITE_BUFFER_BYTES - this.#bufLen) / FRAME_BYTES;
      if (runEnd - f > room) runEnd = f + room;
      this.#bufLen = this.#fill(f, runEnd, callerEnd, agentData, agentOff);
      f = runEnd;
      this.#written = f;
      if (this.#bufLen === WRITE_BUFFER_BYTES) this.#flushBuffer();
    }
  }

  /** Writes frames [f, end) into the write buffer (caller from the ring, agent from `agent` at `agentOff`); returns the new buffer length. */
  #fill(f: number, end: number, callerEnd: number, agent: Buffer | undefined, agentOff: number): number {
    const ring = this.#ring;
    let o = this.#bufLen;
    if (LITTLE_ENDIAN) {
      const out = this.#view;
      let i = o >> 1;
      for (let k = f; k < end; k++, i += 2) {
        out[i] = k < callerEnd ? (ULAW[ring[k % CALLER_RING] as number] as number) : 0;
        out[i + 1] = agent === undefined ? 0 : (ULAW[agent[agentOff + (k - f)] as number] as number);
      }
      return o + (end - f) * FRAME_BYTES;
    }
    const out = this.#buf;
    for (let k = f; k < end; k++, o += 4) {
      out.writeInt16LE(k < callerEnd ? (ULAW[ring[k % CALLER_RING] as number] as number) : 0, o);
      out.writeInt16LE(agent === undefined ? 0 : (ULAW[agent[agentOff + (k - f)] as number] as number), o + 2);
    }
    return o;
  }

  /** Drops the oldest agent chunk (written); returns the next. */
  #shiftAgent(): AgentChunk | undefined {
    const q = this.#agent;
    this.#agentHead++;
    if (this.#agentHead === q.length) {
      q.length = 0;
      this.#agentHead = 0;
    } else if (this.#agentHead >= 64) {
      q.splice(0, this.#agentHead);
      this.#agentHead = 0;
    }
    return q[this.#agentHead];
  }

  /** Hands the write buffer to the disk queue and takes a free one. */
  #flushBuffer(): void {
    if (this.#bufLen === 0) return;
    const full = this.#buf;
    const frames = this.#bufLen / FRAME_BYTES;
    // Whole buffers of their own (never slices of Node's pool), so the Int16Array view is aligned.
    const next = this.#free.pop() ?? (this.#buffers < MAX_WRITE_BUFFERS ? (this.#buffers++, Buffer.alloc(WRITE_BUFFER_BYTES)) : undefined);
    if (next === undefined || this.#failed) {
      // The disk is not keeping up (or failed): this audio becomes silence in the file.
      if (!this.#failed && this.#dropped === 0) this.#log.warn({ path: this.path }, 'recording: the disk is not keeping up; some audio is written as silence');
      this.#dropped += frames;
      this.#bufLen = 0;
      this.#bufFrame += frames;
      return;
    }
    this.#queue.push({ buf: full, len: this.#bufLen, frame: this.#bufFrame });
    this.#buf = next;
    this.#view = new Int16Array(next.buffer, next.byteOffset, WRITE_BUFFER_BYTES / 2);
    this.#bufLen = 0;
    this.#bufFrame += frames;
    this.#pump();
  }

  #pump(): void {
    if (this.#writing || this.#fd === undefined) return;
    const w = this.#queue.shift();
    if (w === undefined) {
      this.#resolveDrained?.();
      return;
    }
    this.#writing = true;
    const fd = this.#fd;
    fsWrite(fd, w.buf, 0, w.len, HEADER_BYTES + (this.#base + w.frame) * FRAME_BYTES, (err) => {
      this.#writing = false;
      this.#free.push(w.buf);
      if (err !== null) this.#fail('write', err);
      else {
        const end = this.#base + w.frame + w.len / FRAME_BYTES;
        if (end > this.#onDisk) this.#onDisk = end;
        if (this.#onDisk - this.#patchedAt >= PATCH_EVERY_FRAMES) this.#patchSizes(fd);
      }
      this.#pump();
    });
  }

  #patchSizes(fd: number): void {
    this.#patchedAt = this.#onDisk;
    const { riff, data } = sizeFields(this.#onDisk * FRAME_BYTES);
    fsWrite(fd, riff, 0, 4, 4, () => undefined);
    fsWrite(fd, data, 0, 4, 40, () => undefined);
  }

  #fail(op: string, err: unknown): void {
    if (this.#failed) return;
    this.#failed = true;
    this.#queue.length = 0;
    this.#log.error({ err, path: this.path, op }, 'recording: the file cannot be written; the rest of this call is not recorded (check DATA_DIR/recordings: free space and permissions)');
  }

  #openNew(): void {
    fsOpen(this.path, 'w', 0o640, (err, fd) => {
      if (err !== null) {
        this.#fail('open', err);
        this.#resolveDrained?.();
        return;
      }
      this.#fd = fd;
      fsWrite(fd, wavHeader(0), 0, HEADER_BYTES, 0, (e) => {
        if (e !== null) this.#fail('header', e);
      });
      this.#pump();
    });
  }

  /** A call back from a transfer: the file's audio so far is kept (repaired if needed), this part follows a short silence. */
  #openAppend(): void {
    let fd: number | undefined;
    try {
      fd = openSync(this.path, 'r+');
      const existing = repairOpenFile(fd);
      if (existing === undefined) {
        closeSync(fd);
        this.#openNew();
        return;
      }
      this.#base = existing.dataBytes / FRAME_BYTES + Math.round(JOIN_GAP_MS * FRAMES_PER_MS);
      this.#onDisk = existing.dataBytes / FRAME_BYTES;
      this.#patchedAt = this.#onDisk;
      this.#fd = fd;
    } catch {
      if (fd !== undefined) closeSync(fd);
      this.#openNew();
    }
  }

  /** Ends the recording: the audio played by now is committed, the rest dropped, the header patched. */
  close(): Promise<RecordingResult | undefined> {
    this.#closed ??= this.#finish();
    return this.#closed;
  }

  async #finish(): Promise<RecordingResult | undefined> {
    // Agent audio that had played when the stream ended is in; what was still queued never played.
    const end = Math.max(this.#nowFrame(), this.#callerEnd);
    if (end > this.#written) this.#commit(end);
    this.#flushBuffer();
    this.#agent.length = 0;
    this.#agentHead = 0;
    // Wait for the open and every queued write.
    await new Promise<void>((resolve) => {
      const check = (): void => {
        if ((this.#fd !== undefined || this.#failed) && !this.#writing && this.#queue.length === 0) {
          this.#resolveDrained = undefined;
          resolve();
        }
      };
      this.#resolveDrained = check;
      check();
    });
    const fd = this.#fd;
    this.#fd = undefined;
    if (fd === undefined) return undefined;
    const total = this.#base + this.#written;
    const { riff, data } = sizeFields(total * FRAME_BYTES);
    await new Promise<void>((resolve) => {
      // A disk that dropped audio leaves the size short: the file is extended with silence to the full length.
      fsWrite(fd, riff, 0, 4, 4, () => fsWrite(fd, data, 0, 4, 40, () => fsFtruncate(fd, HEADER_BYTES + total * FRAME_BYTES, () => fsClose(fd, () => resolve()))));
    });
    if (this.#failed) return undefined;
    return { path: this.path, durationS: total / RECORDING_SAMPLE_RATE, frames: this.#written, droppedFrames: this.#dropped };
  }
}
