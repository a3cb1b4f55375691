/**
 * Built-in local agent: a protocol-faithful PlayAI agent server
 * (`ws://host:port/v1/talk/{agentId}`) for demos, tests and benchmarks when no
 * real agent is reachable.
 *
 * Modes:
 * - `echo-test` (default), like a carrier's echo test: greets the caller
 *   (`newAudioStream`, `onAgentTranscript`, paced `audioStream` chunks,
 *   `audioStreamEnd`), then detects each caller utterance with an energy VAD
 *   (`voiceActivityStart` / `voiceActivityEnd`), reports it with
 *   `onUserTranscript` and plays it back as a new audio stream. Speaking while
 *   a reply is still being sent stops it and sends `onAgentInterrupted`.
 *   Replies are sent as 100 ms chunks at twice real time, so they queue up at
 *   the carrier like real TTS output.
 * - `echo` (benchmarks): every non-empty `audioIn` is answered at once with an
 *   `audioStream` carrying the same data. No greeting, no VAD.
 *   Opt-in benchmark hook (`bargeInMarker`): a 160-byte frame carrying
 *   {@link BARGE_IN_MARKER} at byte {@link BARGE_IN_MARKER_OFFSET} is not echoed;
 *   the agent answers it with `voiceActivityStart` (the caller barged in) and
 *   `newAudioStream` (its next reply starts), so echoes after it play again.
 *   Without the option, or for any other frame, echo mode is unchanged.
 *
 * The first frame must be a `setup` asking for mu-law 8 kHz in and out;
 * anything else gets a fatal `error` 4400 (or 4401 for a wrong `apiKey`) and
 * the socket is closed with code 1008. `continueConversation` with an id this
 * server issued reuses that id and skips the greeting.
 *
 * Test hook: a `setup.prompt` containing `#hangup-after:<ms>` makes the agent
 * send `{"type":"hangup","endedBy":"agent"}` that many ms after `init`, then
 * close the socket (code 1000).
 *
 * The greeting audio is `assets/greeting.ulaw` (raw 8 kHz mu-law, made by
 * `scripts/make-greeting.sh`), found relative to the package root; when it is
 * missing a short two-tone chime is used instead.
 */
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import type { Logger } from 'pino';
import { WebSocket, type RawData } from 'ws';
import { decodeClientFrame, decodeSetup, encodeAudioStream, listenTalkServer, rawToString, type TalkServer } from '../agent/playai/server.js';
import { mulawEncode } from '../audio/mulaw.js';
import { EnergyVad } from '../audio/vad.js';

/** Options for {@link LocalAgentServer.start}. */
export interface LocalAgentOptions {
  /** Interface to listen on. Default `127.0.0.1`. */
  host?: string;
  /** Port; 0 (default) picks a free one. */
  port?: number;
  /** Behaviour, see the module docs. Default `echo-test`. */
  mode?: 'echo-test' | 'echo';
  /** When set, `setup.apiKey` must equal it (else error 4401). */
  apiKey?: string;
  logger?: Logger;
  /** Greeting audio (raw 8 kHz mu-law) instead of `assets/greeting.ulaw`; handy for short tests. */
  greetingAudio?: Uint8Array;
  /** `echo` mode only: answer marker frames with a barge-in (see the module docs). Default false. */
  bargeInMarker?: boolean;
}

/** Benchmark barge-in marker: these 6 bytes at {@link BARGE_IN_MARKER_OFFSET} of a 160-byte frame. */
export const BARGE_IN_MARKER: readonly number[] = [0xb4, 0x26, 0x1e, 0x5a, 0x0d, 0xc3];
/** Byte offset of the marker; a multiple of 3, so it is a fixed base64 substring. */
export const BARGE_IN_MARKER_OFFSET = 6;
/** The marker as it appears in the base64 payload, at character `BARGE_IN_MARKER_OFFSET / 3 * 4`. */
export const BARGE_IN_MARKER_B64 = Buffer.from(BARGE_IN_MARKER).toString('base64');
const BARGE_IN_MARKER_B64_AT = (BARGE_IN_MARKER_OFFSET / 3) * 4;
/** Base64 length of a 160-byte (20 ms) frame. */
const FRAME_160_B64_LENGTH = 216;

const MAX_PAYLOAD = 1024 * 1024;
/** 100 ms of 8 kHz mu-law per `audioStream`. */
const CHUNK_BYTES = 800;
/** One chunk every 50 ms: twice real time. */
const CHUNK_INTERVAL_MS = 50;
/** Longest caller utterance recorded for playback (15 s). */
const MAX_RECORDING_BYTES = 15 * 8000;
/** Audio kept from before the VAD fired, so the onset is not cut. */
const PREROLL_BYTES = 200 * 8;
/** Quiet audio kept before the first voiced frame of an utterance (soft onsets). */
const LEAD_IN_BYTES = 40 * 8;
/** Silence kept after the last voiced frame of an utterance. */
const TAIL_BYTES = 100 * 8;
/** How many issued conversation ids are remembered for `continueConversation`. */
const MAX_CONVERSATIONS = 1000;
const DEFAULT_GREETING = 'Hello, this is the Playline echo test. Say something, and I will play it back to you.';
const HANGUP_HOOK = /#hangup-after:(\d+)/;

/** Audio being sent to the client, chunk by chunk. */
interface OutgoingStream {
  audio: Uint8Array;
  offset: number;
  /** Spoken text; sent as `onAgentTranscript` after the audio unless already sent before it. */
  text: string;
  textSentFirst: boolean;
}

/** Conversation ids this server issued, oldest forgotten first beyond a cap. */
class ConversationRegistry {
  private readonly ids = new Set<string>();

  has(id: string): boolean {
    return this.ids.has(id);
  }

  remember(id: string): void {
    this.ids.delete(id);
    this.ids.add(id);
    if (this.ids.size > MAX_CONVERSATIONS) {
      const oldest = this.ids.values().next();
      if (oldest.done !== true) this.ids.delete(oldest.value);
    }
  }
}

let greetingCache: Promise<Uint8Array> | undefined;

/** Loads `assets/greeting.ulaw` once (two levels above this file in both src/ and dist/). */
function loadGreeting(): Promise<Uint8Array> {
  greetingCache ??= readFile(new URL('../../assets/greeting.ulaw', import.meta.url)).then(
    (buf): Uint8Array => (buf.length > 0 ? new Uint8Array(buf.buffer, buf.byteOffset, buf.length) : chime()),
    (): Uint8Array => chime(),
  );
  return greetingCache;
}

/** Fallback greeting: two 250 ms tones (660 Hz, 880 Hz) with short fades. */
function chime(): Uint8Array {
  const tone = 2000;
  const pcm = new Int16Array(tone * 2 + 1600);
  for (let n = 0; n < tone * 2; n++) {
    const f = n < tone ? 660 : 880;
    const i = n % tone;
    const fade = Math.min(1, i / 80, (tone - i) / 80);
    pcm[n] = Math.round(8000 * fade * Math.sin((2 * Math.PI * f * n) / 8000));
  }
  return mulawEncode(pcm);
}

function newConversationId(): string {
  return randomBytes(15).toString('base64url');
}

/** A PlayAI-protocol agent server running in this process. */
export class LocalAgentServer {
  /** Base URL, e.g. `ws://127.0.0.1:43121`; clients connect to `${url}/v1/talk/{agentId}`. */
  readonly url: string;
  readonly port: number;
  private readonly conversations = new ConversationRegistry();
  private readonly connections = new Set<AgentConnection>();
  private closing: Promise<void> | undefined;

  private constructor(
    private readonly server: TalkServer,
    private readonly options: Readonly<LocalAgentOptions>,
  ) {
    this.port = server.port;
    this.url = server.url;
  }

  /** Starts listening; resolves once the port is bound. */
  static async start(opts: LocalAgentOptions = {}): Promise<LocalAgentServer> {
    const greeting = opts.greetingAudio ?? (await loadGreeting());
    let self: LocalAgentServer | undefined;
    const server = await listenTalkServer({
      ...(opts.host !== undefined ? { host: opts.host } : {}),
      port: opts.port ?? 0,
      ws: { maxPayload: MAX_PAYLOAD },
      onConnection: (ws, _req, agentId) => {
        if (self === undefined || self.closing !== undefined) {
          ws.terminate();
          return;
        }
        const conn = new AgentConnection(self.conversations, ws, agentId, greeting, self.options);
        self.connections.add(conn);
        ws.once('close', () => self?.connections.delete(conn));
      },
    });
    self = new LocalAgentServer(server, { ...opts });
    opts.logger?.info({ url: self.url, mode: opts.mode ?? 'echo-test' }, 'local agent listening');
    return self;
  }

  /** Number of open agent sockets. */
  get activeConnections(): number {
    return this.connections.size;
  }

  /** Terminates every socket, clears every timer and stops listening. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      for (const conn of this.connections) conn.destroy();
      this.connections.clear();
      await this.server.close();
    })();
    return this.closing;
  }
}

/** One client socket and its state. */
class AgentConnection {
  private readonly log: Logger | undefined;
  private readonly mode: 'echo-test' | 'echo';
  private readonly bargeInMarker: boolean;
  private setupDone = false;
  /** No more frames are sent or handled (closing or closed). */
  private closed = false;
  private destroyed = false;
  private conversationId = '';
  private vad: EnergyVad | undefined;
  /** The last ~200 ms while not speaking, so the utterance onset is kept. */
  private preroll: Array<{ frame: Uint8Array; voiced: boolean }> = [];
  private prerollBytes = 0;
  /** The utterance being recorded. */
  private recording: Uint8Array[] = [];
  private recordingBytes = 0;
  /** Recorded length right after the last voiced frame (for trimming the tail). */
  private voicedBytes = 0;
  private outgoing: OutgoingStream | undefined;
  private pacer: NodeJS.Timeout | undefined;
  private hangupTimer: NodeJS.Timeout | undefined;
  private jobId = 0;

  constructor(
    private readonly conversations: ConversationRegistry,
    private readonly ws: WebSocket,
    agentId: string,
    private readonly greeting: Uint8Array,
    private readonly options: Readonly<LocalAgentOptions>,
  ) {
    this.mode = options.mode ?? 'echo-test';
    this.bargeInMarker = options.bargeInMarker === true && this.mode === 'echo';
    this.log = options.logger?.child({ agentId });
    ws.on('message', (data, isBinary) => this.onMessage(data, isBinary));
    ws.on('close', () => this.destroy());
    ws.on('error', (err) => {
      this.log?.debug({ err }, 'local agent socket error');
      this.destroy();
    });
  }

  /** Releases every timer and buffer, and terminates the socket. */
  destroy(): void {
    if (!this.destroyed) this.log?.debug({ conversationId: this.conversationId }, 'local agent connection closed');
    this.destroyed = true;
    this.closed = true;
    this.stopSending();
    if (this.hangupTimer !== undefined) clearTimeout(this.hangupTimer);
    this.hangupTimer = undefined;
    this.preroll = [];
    this.recording = [];
    this.vad = undefined;
    if (this.ws.readyState !== WebSocket.CLOSED) this.ws.terminate();
  }

  private send(text: string): void {
    if (!this.closed && this.ws.readyState === WebSocket.OPEN) this.ws.send(text);
  }

  private sendJson(msg: Record<string, unknown>): void {
    this.send(JSON.stringify(msg));
  }

  private error(code: number, message: string, isFatal: boolean): void {
    this.log?.debug({ code, message, isFatal }, 'local agent sends error');
    this.sendJson({ type: 'error', code, message, isFatal });
    if (isFatal) this.end(1008, message);
  }

  /** Closes the socket gracefully and stops all activity. */
  private end(code: number, reason: string): void {
    this.stopSending();
    if (this.hangupTimer !== undefined) clearTimeout(this.hangupTimer);
    this.hangupTimer = undefined;
    this.closed = true;
    this.ws.close(code, reason.slice(0, 120));
  }

  private onMessage(data: RawData, isBinary: boolean): void {
    if (this.closed) return;
    if (isBinary) {
      this.error(4400, 'binary frames are not supported', !this.setupDone);
      return;
    }
    const text = rawToString(data);
    if (!this.setupDone) {
      this.onSetup(text);
      return;
    }
    const frame = decodeClientFrame(text);
    switch (frame.type) {
      case 'audioIn':
        this.onAudioIn(frame.data);
        return;
      case 'invalid':
        this.error(4400, frame.why, false);
        return;
      case 'setup':
        this.error(4400, 'setup was already received', false);
        return;
      case 'other':
        // Other client messages (bufferEmpty, customInput, …) are accepted and ignored.
        return;
    }
  }

  private onSetup(text: string): void {
    const setup = decodeSetup(text);
    if (typeof setup === 'string') {
      this.error(4400, setup, true);
      return;
    }
    if (this.options.apiKey !== undefined && setup.apiKey !== this.options.apiKey) {
      this.error(4401, 'invalid apiKey', true);
      return;
    }
    this.setupDone = true;
    const resumed = setup.continueConversation !== undefined && this.conversations.has(setup.continueConversation);
    this.conversationId = resumed && setup.continueConversation !== undefined ? setup.continueConversation : newConversationId();
    this.conversations.remember(this.conversationId);
    this.sendJson({ type: 'init', agentOwnerId: 'local', conversationId: this.conversationId });
    this.log?.debug({ conversationId: this.conversationId, resumed, mode: this.mode }, 'local agent session started');

    const hook = setup.prompt === undefined ? null : HANGUP_HOOK.exec(setup.prompt);
    if (hook !== null) {
      const ms = Math.min(Number(hook[1]), 2_147_483_647);
      this.hangupTimer = setTimeout(() => {
        this.hangupTimer = undefined;
        this.stopSending();
        this.sendJson({ type: 'hangup', endedBy: 'agent' });
        this.end(1000, 'agent hangup');
      }, ms);
    }

    if (this.mode === 'echo-test') {
      this.vad = new EnergyVad();
      if (!resumed) this.startStream(this.greeting, setup.customGreeting ?? DEFAULT_GREETING, true);
    }
  }

  private onAudioIn(b64: string): void {
    if (b64.length === 0) return; // mute keep-alive
    if (this.mode === 'echo') {
      if (this.bargeInMarker && b64.length === FRAME_160_B64_LENGTH && b64.startsWith(BARGE_IN_MARKER_B64, BARGE_IN_MARKER_B64_AT)) {
        this.send('{"type":"voiceActivityStart"}');
        this.send('{"type":"newAudioStream"}');
        return;
      }
      this.send(encodeAudioStream(b64));
      return;
    }
    const vad = this.vad;
    if (vad === undefined) return;
    const frame = Buffer.from(b64, 'base64');
    const change = vad.push(frame);
    if (change === 'start') this.onSpeechStart();
    if (vad.speaking || change === 'end') this.record(frame, vad.voiced);
    else this.keepPreroll(frame, vad.voiced);
    if (change === 'end') this.onSpeechEnd();
  }

  private keepPreroll(frame: Uint8Array, voiced: boolean): void {
    this.preroll.push({ frame, voiced });
    this.prerollBytes += frame.length;
    while (this.preroll.length > 1 && this.prerollBytes - (this.preroll[0]?.frame.length ?? 0) >= PREROLL_BYTES) {
      this.prerollBytes -= this.preroll.shift()?.frame.length ?? 0;
    }
  }

  private record(frame: Uint8Array, voiced: boolean): void {
    const room = MAX_RECORDING_BYTES - this.recordingBytes;
    if (room <= 0) return;
    const part = frame.length <= room ? frame : frame.subarray(0, room);
    this.recording.push(part);
    this.recordingBytes += part.length;
    if (voiced) this.voicedBytes = this.recordingBytes;
  }

  private onSpeechStart(): void {
    this.sendJson({ type: 'voiceActivityStart' });
    if (this.outgoing !== undefined) {
      this.stopSending();
      this.sendJson({ type: 'onAgentInterrupted' });
    }
    // Start the recording with the pre-roll: its voiced part plus up to 40 ms of lead-in.
    this.recording = [];
    this.recordingBytes = 0;
    this.voicedBytes = 0;
    let first = this.preroll.findIndex((p) => p.voiced);
    if (first < 0) first = this.preroll.length;
    let leadIn = 0;
    while (first > 0 && leadIn + (this.preroll[first - 1]?.frame.length ?? 0) <= LEAD_IN_BYTES) {
      first--;
      leadIn += this.preroll[first]?.frame.length ?? 0;
    }
    for (const p of this.preroll.slice(first)) this.record(p.frame, p.voiced);
    this.preroll = [];
    this.prerollBytes = 0;
  }

  private onSpeechEnd(): void {
    const end = Math.min(this.recordingBytes, this.voicedBytes + TAIL_BYTES);
    const audio = Buffer.concat(this.recording, this.recordingBytes).subarray(0, end);
    this.recording = [];
    this.recordingBytes = 0;
    this.voicedBytes = 0;
    const seconds = (audio.length / 8000).toFixed(1);
    this.sendJson({ type: 'voiceActivityEnd' });
    this.sendJson({ type: 'onUserTranscript', message: `(${seconds} seconds of audio)` });
    this.startStream(audio, `Here is what you said: ${seconds} seconds of audio.`, false);
  }

  /** Begins a new agent response; the pacer sends it chunk by chunk. */
  private startStream(audio: Uint8Array, text: string, textFirst: boolean): void {
    this.stopSending();
    this.sendJson({ type: 'newAudioStream' });
    if (textFirst) this.sendJson({ type: 'onAgentTranscript', message: text });
    this.outgoing = { audio, offset: 0, text, textSentFirst: textFirst };
    this.sendChunk();
    if (this.outgoing !== undefined) this.pacer = setInterval(() => this.sendChunk(), CHUNK_INTERVAL_MS);
  }

  private sendChunk(): void {
    const out = this.outgoing;
    if (out === undefined || this.closed) {
      this.stopSending();
      return;
    }
    if (out.offset < out.audio.length) {
      const end = Math.min(out.audio.length, out.offset + CHUNK_BYTES);
      const chunk = out.audio.subarray(out.offset, end);
      out.offset = end;
      this.send(encodeAudioStream(Buffer.from(chunk.buffer, chunk.byteOffset, chunk.length).toString('base64')));
    }
    if (out.offset >= out.audio.length) {
      if (!out.textSentFirst) this.sendJson({ type: 'onAgentTranscript', message: out.text });
      this.sendJson({ type: 'audioStreamEnd', message: out.text, jobId: ++this.jobId });
      this.stopSending();
    }
  }

  private stopSending(): void {
    if (this.pacer !== undefined) clearInterval(this.pacer);
    this.pacer = undefined;
    this.outgoing = undefined;
  }
}
