/**
 * The browser softphone: a web call (`POST /v1/web-calls`) whose media goes
 * over a WebSocket to `/web/media-stream` in the Twilio Media Streams protocol,
 * so the bridge treats it exactly as a phone call (same session, capacity,
 * agent and barge-in path).
 *
 * Microphone → capture worklet → 160-byte μ-law frames → `media` messages.
 * `media` from the server → playback worklet (jitter buffer); `mark` is handed
 * to the worklet and echoed only when its audio has played; `clear` empties
 * the worklet's buffer at once.
 *
 * One softphone per page: it lives outside the components, so a call goes on
 * while the user looks at other pages.
 */
import { api } from '../api';
import { streamMessage, webCall, type WebCall } from '../schemas';
import { signal } from '../signal';

export type PhoneState = 'idle' | 'starting' | 'connecting' | 'live' | 'ending' | 'ended';

export interface PhoneStats {
  framesSent: number;
  framesReceived: number;
  audioReceivedMs: number;
  bufferedMs: number;
  /** Underruns since agent audio first played (a gap inside a stream). */
  underruns: number;
  clears: number;
  /** Agent audio the last clear dropped from the playout buffer. */
  clearedMs: number;
  marksEchoed: number;
  playedMs: number;
  /** End of the user's speech (detected here) → first agent audio received, per reply, ms. */
  responseMs: number[];
  /** `start` sent → first agent audio received (the greeting), ms. */
  firstAudioMs: number | undefined;
  micLevel: number;
}

export interface CallTarget {
  agentId?: string;
  route?: string;
  prompt?: string;
  customGreeting?: string;
}

const emptyStats = (): PhoneStats => ({
  framesSent: 0,
  framesReceived: 0,
  audioReceivedMs: 0,
  bufferedMs: 0,
  underruns: 0,
  clears: 0,
  clearedMs: 0,
  marksEchoed: 0,
  playedMs: 0,
  responseMs: [],
  firstAudioMs: undefined,
  micLevel: 0,
});

/** Frame level above which the user is taken to be speaking (about -36 dBFS). */
const VOICE_RMS = 0.016;
/** Voiced frames (20 ms) before an utterance counts, and silent frames that end it. */
const VOICED_TO_START = 5;
const SILENT_TO_END = 15;

const hex = (n: number): string => Array.from(crypto.getRandomValues(new Uint8Array(n)), (b) => b.toString(16).padStart(2, '0')).join('');

function base64(bytes: Uint8Array): string {
  let s = '';
  for (let i = 0; i < bytes.length; i++) s += String.fromCharCode(bytes[i] ?? 0);
  return btoa(s);
}

function unbase64(b64: string): Uint8Array {
  const s = atob(b64);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

function isFrameMessage(v: unknown): v is { type: 'frame'; frame: Uint8Array; rms: number } {
  return typeof v === 'object' && v !== null && 'type' in v && v.type === 'frame' && 'frame' in v && v.frame instanceof Uint8Array && 'rms' in v && typeof v.rms === 'number';
}

type WorkletMessage =
  | { type: 'played'; name: string }
  | { type: 'stats'; bufferedMs: number; underruns: number; clears: number; droppedMs: number; playedMs: number; playing: boolean };

function isWorkletMessage(v: unknown): v is WorkletMessage {
  if (typeof v !== 'object' || v === null || !('type' in v)) return false;
  if (v.type === 'played') return 'name' in v && typeof v.name === 'string';
  return (
    v.type === 'stats' &&
    'bufferedMs' in v &&
    typeof v.bufferedMs === 'number' &&
    'underruns' in v &&
    typeof v.underruns === 'number' &&
    'clears' in v &&
    typeof v.clears === 'number' &&
    'droppedMs' in v &&
    typeof v.droppedMs === 'number' &&
    'playedMs' in v &&
    typeof v.playedMs === 'number'
  );
}

class Softphone {
  readonly state = signal<PhoneState>('idle');
  readonly stats = signal<PhoneStats>(emptyStats());
  readonly error = signal<string | undefined>(undefined);
  readonly call = signal<WebCall | undefined>(undefined);
  /** Why the call ended (shown after it). */
  readonly endedBy = signal<string | undefined>(undefined);
  readonly startedAt = signal<number | undefined>(undefined);

  #ctx: AudioContext | undefined;
  #mic: MediaStream | undefined;
  #ws: WebSocket | undefined;
  #capture: AudioWorkletNode | undefined;
  #playback: AudioWorkletNode | undefined;
  #streamSid = '';
  #seq = 0;
  #chunk = 0;
  #s: PhoneStats = emptyStats();
  #statsTimer: ReturnType<typeof setInterval> | undefined;
  #underrunsAtFirstPlay: number | undefined;
  // Speech detection for the response time.
  #voiced = 0;
  #silent = 0;
  #speaking = false;
  #lastVoicedAt = 0;
  #lastMediaAt = 0;
  #awaitingReplySince: number | undefined;
  #startSentAt = 0;
  #closed = true;

  async start(target: CallTarget): Promise<void> {
    if (this.state.value !== 'idle' && this.state.value !== 'ended') return;
    this.#closed = false;
    this.#reset();
    this.state.value = 'starting';
    try {
      if (navigator.mediaDevices?.getUserMedia === undefined) throw new Error('this browser gives no microphone access here: open the console over https or from 127.0.0.1');
      const ctx = new AudioContext({ latencyHint: 'interactive' });
      this.#ctx = ctx;
      await ctx.resume();
      const mic = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
      });
      this.#mic = mic;
      if (this.#closed) return this.#release();
      await Promise.all([ctx.audioWorklet.addModule(__CAPTURE_WORKLET__), ctx.audioWorklet.addModule(__PLAYBACK_WORKLET__)]);
      if (this.#closed) return this.#release();
      const call = await api(webCall, '/v1/web-calls', { body: target });
      if (this.#closed) return this.#release();
      this.call.value = call;
      this.state.value = 'connecting';
      this.#connect(ctx, mic, call);
    } catch (err) {
      this.#fail(err);
    }
  }

  #connect(ctx: AudioContext, mic: MediaStream, call: WebCall): void {
    const url = new URL(call.streamUrl, location.href);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(url.href);
    this.#ws = ws;
    this.#streamSid = `MZ${hex(16)}`;
    ws.onopen = () => {
      this.#sendJson({ event: 'connected', protocol: 'Call', version: '1.0.0' });
      this.#sendJson({
        event: 'start',
        sequenceNumber: String(++this.#seq),
        start: {
          streamSid: this.#streamSid,
          accountSid: 'web',
          callSid: call.callSid,
          tracks: ['inbound'],
          customParameters: { token: call.token },
          mediaFormat: { encoding: 'audio/x-mulaw', sampleRate: 8000, channels: 1 },
        },
        streamSid: this.#streamSid,
      });
      this.#startSentAt = performance.now();
      this.#startAudio(ctx, mic);
      this.state.value = 'live';
      this.startedAt.value = Date.now();
    };
    ws.onmessage = (e: MessageEvent<unknown>) => {
      if (typeof e.data !== 'string') return;
      let json: unknown;
      try {
        json = JSON.parse(e.data);
      } catch {
        return;
      }
      const m = streamMessage.safeParse(json);
      if (!m.success) return;
      const msg = m.data;
      if (msg.event === 'media') {
        const bytes = unbase64(msg.media.payload);
        const now = performance.now();
        this.#lastMediaAt = now;
        this.#s.firstAudioMs ??= Math.round(now - this.#startSentAt);
        if (this.#awaitingReplySince !== undefined) {
          this.#s.responseMs = [...this.#s.responseMs, Math.round(now - this.#awaitingReplySince)];
          this.#awaitingReplySince = undefined;
        }
        this.#s.framesReceived++;
        this.#s.audioReceivedMs += bytes.length / 8;
        this.#playback?.port.postMessage({ type: 'audio', bytes }, [bytes.buffer]);
      } else if (msg.event === 'mark') {
        this.#playback?.port.postMessage({ type: 'mark', name: msg.mark.name });
      } else {
        this.#playback?.port.postMessage({ type: 'clear' });
      }
    };
    ws.onclose = (e) => {
      if (this.#closed) return;
      this.#finish(this.state.value === 'connecting' ? `the server closed the media stream before the call started (${e.code}${e.reason !== '' ? `: ${e.reason}` : ''})` : 'the call ended');
    };
    ws.onerror = () => {
      // The close event follows with the details.
    };
  }

  #startAudio(ctx: AudioContext, mic: MediaStream): void {
    const capture = new AudioWorkletNode(ctx, 'playline-capture', { numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1] });
    const playback = new AudioWorkletNode(ctx, 'playline-playback', { numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1] });
    this.#capture = capture;
    this.#playback = playback;
    capture.port.onmessage = (e: MessageEvent<unknown>) => {
      if (isFrameMessage(e.data)) this.#onFrame(e.data.frame, e.data.rms);
    };
    playback.port.onmessage = (e: MessageEvent<unknown>) => {
      const m = e.data;
      if (!isWorkletMessage(m)) return;
      if (m.type === 'played') {
        this.#sendJson({ event: 'mark', sequenceNumber: String(++this.#seq), streamSid: this.#streamSid, mark: { name: m.name } });
        this.#s.marksEchoed++;
        return;
      }
      if (m.playedMs > 0 && this.#underrunsAtFirstPlay === undefined) this.#underrunsAtFirstPlay = m.underruns;
      this.#s.bufferedMs = m.bufferedMs;
      this.#s.underruns = m.underruns - (this.#underrunsAtFirstPlay ?? m.underruns);
      this.#s.clears = m.clears;
      this.#s.clearedMs = m.droppedMs;
      this.#s.playedMs = m.playedMs;
    };
    ctx.createMediaStreamSource(mic).connect(capture);
    // The capture node outputs silence; it is connected so the graph pulls it.
    capture.connect(ctx.destination);
    playback.connect(ctx.destination);
    this.#statsTimer = setInterval(() => {
      this.stats.value = { ...this.#s };
    }, 200);
  }

  #onFrame(frame: Uint8Array, rms: number): void {
    const ws = this.#ws;
    if (ws === undefined || ws.readyState !== WebSocket.OPEN) return;
    this.#chunk++;
    ws.send(
      JSON.stringify({
        event: 'media',
        sequenceNumber: String(++this.#seq),
        streamSid: this.#streamSid,
        media: { track: 'inbound', chunk: String(this.#chunk), timestamp: String((this.#chunk - 1) * 20), payload: base64(frame) },
      }),
    );
    this.#s.framesSent++;
    this.#s.micLevel = rms;
    this.#detectSpeech(rms);
  }

  /** Finds the end of each utterance, to time the agent's reply (the "response time" stat). */
  #detectSpeech(rms: number): void {
    const now = performance.now();
    if (rms >= VOICE_RMS) {
      this.#voiced++;
      this.#silent = 0;
      this.#lastVoicedAt = now;
      if (this.#voiced >= VOICED_TO_START && !this.#speaking) {
        this.#speaking = true;
        this.#awaitingReplySince = undefined;
      }
      return;
    }
    this.#silent++;
    if (this.#silent >= 3) this.#voiced = 0;
    if (this.#speaking && this.#silent >= SILENT_TO_END) {
      this.#speaking = false;
      // Timed only when the agent was quiet at the end of the utterance (it is a reply, not audio already under way).
      if (this.#lastMediaAt < this.#lastVoicedAt) this.#awaitingReplySince = this.#lastVoicedAt;
    }
  }

  #sendJson(m: unknown): void {
    const ws = this.#ws;
    if (ws !== undefined && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(m));
  }

  hangup(): void {
    if (this.#closed) return;
    this.#sendJson({ event: 'stop', sequenceNumber: String(++this.#seq), streamSid: this.#streamSid, stop: { accountSid: 'web', callSid: this.call.value?.callSid ?? '' } });
    this.#finish('you hung up');
  }

  #fail(err: unknown): void {
    const name = err instanceof DOMException ? err.name : '';
    const message =
      name === 'NotAllowedError'
        ? 'microphone access was refused: allow it for this site and call again'
        : name === 'NotFoundError'
          ? 'no microphone was found'
          : err instanceof Error
            ? err.message
            : String(err);
    this.error.value = message;
    this.#finish(undefined);
  }

  /** The one close path: socket, microphone, audio graph and timer. */
  #finish(endedBy: string | undefined): void {
    if (this.#closed) return;
    this.#closed = true;
    this.state.value = 'ending';
    if (this.#statsTimer !== undefined) clearInterval(this.#statsTimer);
    this.#statsTimer = undefined;
    this.stats.value = { ...this.#s };
    const ws = this.#ws;
    this.#ws = undefined;
    if (ws !== undefined) {
      ws.onmessage = null;
      ws.onclose = null;
      if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(1000, 'hangup');
    }
    this.#release();
    this.endedBy.value = endedBy;
    this.state.value = 'ended';
  }

  /** Microphone and audio graph (also after a hang-up that came while the call was starting). */
  #release(): void {
    for (const t of this.#mic?.getTracks() ?? []) t.stop();
    this.#mic = undefined;
    this.#capture?.port.close();
    this.#playback?.port.close();
    this.#capture = undefined;
    this.#playback = undefined;
    void this.#ctx?.close().catch(() => undefined);
    this.#ctx = undefined;
  }

  #reset(): void {
    this.#s = emptyStats();
    this.stats.value = { ...this.#s };
    this.error.value = undefined;
    this.endedBy.value = undefined;
    this.call.value = undefined;
    this.startedAt.value = undefined;
    this.#seq = 0;
    this.#chunk = 0;
    this.#underrunsAtFirstPlay = undefined;
    this.#voiced = 0;
    this.#silent = 0;
    this.#speaking = false;
    this.#lastVoicedAt = 0;
    this.#lastMediaAt = 0;
    this.#awaitingReplySince = undefined;
  }
}

export const phone = new Softphone();
