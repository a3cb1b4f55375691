/**
 * One call: the only place where the carrier leg (Twilio) and the agent leg
 * (PlayAI protocol) meet.
 *
 * The session owns both sockets, its timers and its logger, and releases all
 * of them in one idempotent {@link CallSession.close}. Audio is relayed as
 * base64 strings without decoding in either direction.
 *
 * States:
 * - `connecting`: first agent socket opening, waiting for `init`; caller audio is buffered.
 * - `live`: audio flows both ways.
 * - `reconnecting`: the agent leg was lost without a `hangup`; the caller stays on the
 *   line, caller audio is buffered, agent audio already queued at Twilio keeps playing,
 *   and the session reconnects with `continueConversation` within a bounded budget.
 * - `draining`: the agent hung up; its queued audio is finishing.
 * - `ending`: call control is telling the caller goodbye (or forwarding the call).
 * - `closed`.
 */
import type { Logger } from 'pino';
import type { AgentCloseInfo, AgentConnector, AgentLeg, AgentLegHandlers } from '../agent/playai/leg.js';
import { isFatalAgentError, NON_RETRYABLE_AGENT_ERRORS, type AgentBadFrameKind, type AgentServerMessage, type AgentSetup } from '../agent/playai/codec.js';
import { base64ByteLength, base64ByteLengthOf } from '../audio/base64.js';
import { stripWavHeader } from '../audio/wav.js';
import type { CallJournal, EndReason, SpokenKind } from '../calls/journal.js';
import type { CallControl } from '../carrier/twilio/callControl.js';
import type { CarrierBadFrameKind, CarrierHandlers, CarrierLeg } from '../carrier/twilio/stream.js';
import type { Metrics } from '../metrics.js';
import type { ManagedSession, Reservation, Slot } from './manager.js';
import { PlaybackTracker } from './playback.js';

export interface SessionSettings {
  agentBaseUrl: string;
  apiKey?: string;
  agentInitTimeoutMs: number;
  hangupDrainMs: number;
  callControlGraceMs: number;
  markIntervalMs: number;
  preInitBufferMs: number;
  /** Coalesce caller audio into `audioIn` messages of this many ms; 0 forwards each frame as it comes. */
  audioInBatchMs?: number;
  agentHeartbeatMs: number;
  reconnect: { attempts: number; windowMs: number; bufferMs: number };
  maxCallMs: number;
  idleMs: number;
  texts: { apology: string; busy: string; goodbye: string };
  /** What a caller refused for agent capacity (4429) gets. */
  overflow: { action: 'say' | 'dial'; fallbackNumber?: string };
}

export interface CallSessionDeps {
  reservation: Reservation;
  streamSid: string;
  carrier: CarrierLeg;
  connectAgent: AgentConnector;
  callControl: CallControl;
  settings: SessionSettings;
  metrics: Metrics;
  logger: Logger;
  /** Where the call's record hears what happens (stream start, agent init, transcripts, digits, prompts, the end). */
  journal: CallJournal;
  /** The agent account refused a connection (4429). */
  onAgentCapacityExceeded(session: CallSession): void;
  /** Called exactly once, after the session has released everything. */
  onClosed(session: CallSession): void;
  /** Backoff jitter source (tests). */
  random?: () => number;
}

export type SessionState = 'connecting' | 'live' | 'reconnecting' | 'draining' | 'ending' | 'closed';

export type { EndReason } from '../calls/journal.js';

/** Agent audio stays this far behind before the session stops queueing more on a stuck socket. */
const MAX_AGENT_SOCKET_BUFFER = 1024 * 1024;
/** A stream with no media for this long is dead (Twilio sends a frame every 20 ms, silence included). */
const STREAM_DEAD_AFTER_MS = 3000;
/** Backoff before reconnect attempt n (ms), before jitter. */
const BACKOFF_MS = [100, 400, 1000, 2000, 3000];
/**
 * After an agent hangup, if Twilio never confirms playback with marks, the call
 * ends this long after the queued audio should have finished playing (within
 * HANGUP_DRAIN_TIMEOUT_MS in any case).
 */
const PLAYBACK_SLACK_MS = 2000;

export class CallSession implements CarrierHandlers, ManagedSession {
  readonly callSid: string;
  readonly streamSid: string;
  readonly agentId: string;
  readonly slot: Slot;
  readonly playback: PlaybackTracker;

  readonly #d: CallSessionDeps;
  readonly #s: SessionSettings;
  readonly #carrier: CarrierLeg;
  readonly #metrics: Metrics;
  readonly #baseLog: Logger;
  #log: Logger;
  #state: SessionState = 'connecting';
  #agent: AgentLeg | undefined;
  #agentOpenedAt = 0;
  readonly #startedAt = performance.now();
  #firstAudioSeen = false;
  #endReason: EndReason | undefined;
  #conversationId: string | undefined;
  #everInit = false;
  #agentReconnects = 0;

  /** Reconnect bookkeeping for the current outage. */
  #outageStartedAt = 0;
  #attempts = 0;

  /** Caller audio waiting for the agent (base64 payloads, oldest first). */
  #pending: string[] = [];
  #pendingHead = 0;
  #pendingBytes = 0;
  #pendingMaxBytes: number;

  /** Late audio of an interrupted response is dropped until the next `newAudioStream`. */
  #dropAgentAudio = false;
  /** When the agent audio sent so far should have finished playing at Twilio (performance.now() ms). */
  #playEnd = 0;

  /** AUDIO_IN_BATCH_MS: decoded caller audio waiting to fill one `audioIn` (undefined when off). */
  readonly #batch: Buffer | undefined;
  #batchLen = 0;
  #batchTimer: NodeJS.Timeout | undefined;

  #initTimer: NodeJS.Timeout | undefined;
  #retryTimer: NodeJS.Timeout | undefined;
  #tailMarkTimer: NodeJS.Timeout | undefined;
  #drainTimer: NodeJS.Timeout | undefined;
  #graceTimer: NodeJS.Timeout | undefined;

  /** Sweep bookkeeping: media frames seen, and when that count last moved. */
  #mediaIn = 0;
  #sweepMediaIn = -1;
  #lastMediaMoveAt = performance.now();

  readonly #badSeen = new Set<string>();
  #framesUp = 0;
  #framesDown = 0;
  #bargeIns = 0;

  constructor(deps: CallSessionDeps) {
    this.#d = deps;
    this.#s = deps.settings;
    this.#carrier = deps.carrier;
    this.#metrics = deps.metrics;
    this.callSid = deps.reservation.callSid;
    this.streamSid = deps.streamSid;
    this.agentId = deps.reservation.route.agentId;
    this.slot = deps.reservation.slot;
    this.playback = new PlaybackTracker(this.#s.markIntervalMs);
    this.#pendingMaxBytes = this.#s.preInitBufferMs * 8;
    const batchMs = this.#s.audioInBatchMs ?? 0;
    this.#batch = batchMs > 0 ? Buffer.alloc(batchMs * 8) : undefined;
    this.#baseLog = deps.logger.child({ callSid: this.callSid, streamSid: this.streamSid, agentId: this.agentId });
    this.#log = this.#baseLog;
  }

  get state(): SessionState {
    return this.#state;
  }

  get agentConnected(): boolean {
    return this.#agent !== undefined && (this.#state === 'live' || this.#state === 'draining');
  }

  get agentConnectedOnce(): boolean {
    return this.#everInit;
  }

  get streamDead(): boolean {
    if (this.#state === 'closed' || !this.#carrier.isOpen) return true;
    // Media counted since the last sweep means alive; otherwise the sweep's last sighting decides.
    return this.#mediaIn === this.#sweepMediaIn && performance.now() - this.#lastMediaMoveAt >= STREAM_DEAD_AFTER_MS;
  }

  /** Conversation id from the agent's latest `init`. */
  get conversationId(): string | undefined {
    return this.#conversationId;
  }

  /** Opens the agent leg. Called once by whoever built the session, after registering it. */
  start(): void {
    const call = this.#d.reservation.call;
    this.#log.info({ from: call.from, to: call.to }, 'call started');
    this.#d.journal.record(this.callSid, { type: 'stream_started', streamSid: this.streamSid });
    this.#outageStartedAt = performance.now();
    try {
      this.#openAgent();
    } catch (err) {
      this.onInternalError(err);
    }
  }

  // ---------------------------------------------------------------- carrier → session

  onMedia(payload: string): void {
    const buf = Buffer.from(payload, 'latin1');
    this.onMediaBytes(buf, 0, buf.length);
  }

  onMediaBytes(buf: Buffer, start: number, end: number): void {
    this.#mediaIn++;
    if (this.#state === 'live') {
      const agent = this.#agent;
      if (agent !== undefined && agent.isOpen) {
        if (this.#batch !== undefined) {
          this.#addToBatch(buf, start, end);
        } else if (agent.bufferedAmount < MAX_AGENT_SOCKET_BUFFER && agent.sendAudioBytes(buf, start, end)) {
          this.#framesUp++;
          this.#metrics.framesUp++;
          this.#metrics.bytesUp += base64ByteLengthOf(buf, start, end);
        } else {
          // The agent is not reading: dropping beats queueing without bound.
          this.#metrics.framesLost++;
          this.#warnOnce('agent_backpressure', {}, 'agent socket is not draining; dropping caller audio');
        }
      } else {
        // The agent socket is closing but we have not been told yet: keep the audio for the reconnect.
        this.#bufferCallerAudio(buf.toString('latin1', start, end));
      }
    } else if (this.#state === 'connecting' || this.#state === 'reconnecting') {
      this.#bufferCallerAudio(buf.toString('latin1', start, end));
    }
    // draining / ending: the agent is gone; the caller is hearing the last words.
  }

  /** AUDIO_IN_BATCH_MS: appends a frame's decoded audio; a full batch goes out at once. */
  #addToBatch(buf: Buffer, start: number, end: number): void {
    const batch = this.#batch as Buffer;
    const audio = Buffer.from(buf.toString('latin1', start, end), 'base64');
    for (let off = 0; off < audio.length; ) {
      const n = audio.copy(batch, this.#batchLen, off);
      this.#batchLen += n;
      off += n;
      if (this.#batchLen === batch.length) this.#flushBatch();
    }
    if (this.#batchLen > 0 && this.#batchTimer === undefined) {
      // A stalled stream must not hold audio back for long.
      this.#batchTimer = setTimeout(this.#onBatchTimer, this.#s.audioInBatchMs ?? 0);
    }
  }

  readonly #onBatchTimer = (): void => {
    this.#batchTimer = undefined;
    this.#flushBatch();
  };

  /** Sends the batched caller audio (or keeps it for the reconnect when the agent leg is down). */
  #flushBatch(): void {
    this.#clearTimer('batch');
    if (this.#batch === undefined || this.#batchLen === 0) return;
    const b64 = this.#batch.toString('base64', 0, this.#batchLen);
    const frames = Math.max(1, Math.round(this.#batchLen / 160));
    this.#batchLen = 0;
    const agent = this.#agent;
    if (this.#state === 'live' && agent !== undefined && agent.isOpen) {
      if (agent.bufferedAmount < MAX_AGENT_SOCKET_BUFFER && agent.sendAudio(b64)) {
        this.#framesUp += frames;
        this.#metrics.framesUp += frames;
        this.#metrics.bytesUp += base64ByteLength(b64);
      } else {
        this.#metrics.framesLost += frames;
      }
    } else if (this.#state === 'connecting' || this.#state === 'reconnecting' || this.#state === 'live') {
      this.#bufferCallerAudio(b64);
    }
  }

  onMark(name: string): void {
    const result = this.playback.onMarkEcho(name);
    this.#metrics.marksTotal.labels(result).inc();
    if (this.#state === 'draining' && !this.playback.queued) this.close('agent_hangup');
  }

  onDtmf(digit: string): void {
    this.#d.journal.record(this.callSid, { type: 'dtmf', digit });
    this.#log.debug('dtmf received');
  }

  onStop(): void {
    this.close('caller_hangup');
  }

  onClose(code: number): void {
    if (this.#state !== 'closed') this.#log.debug({ code }, 'carrier socket closed');
    this.close('caller_hangup');
  }

  onBadFrame(kind: CarrierBadFrameKind, name?: string): void {
    this.#metrics.badFramesTotal.labels('twilio', kind).inc();
    this.#warnOnce(`twilio:${kind}`, { kind, event: name }, 'dropped a bad frame from Twilio');
  }

  onInternalError(err: unknown): void {
    this.#log.error({ err }, 'session handler failed; ending the call');
    this.#endReason ??= 'internal_error';
    try {
      this.close('internal_error');
    } catch (closeErr) {
      this.#log.error({ err: closeErr }, 'closing after an internal error failed');
    }
  }

  // ---------------------------------------------------------------- manager → session

  endWithGoodbye(reason: EndReason): void {
    if (this.#state === 'closed' || this.#state === 'ending') return;
    this.#log.info({ reason }, 'ending the call with a goodbye');
    this.#endWith(reason, 'goodbye');
  }

  sweep(now: number): void {
    if (this.#state === 'closed') return;
    if (!this.#carrier.isOpen) {
      this.close('carrier_gone');
      return;
    }
    if (this.#mediaIn !== this.#sweepMediaIn) {
      this.#sweepMediaIn = this.#mediaIn;
      this.#lastMediaMoveAt = now;
    } else if (now - this.#lastMediaMoveAt >= this.#s.idleMs) {
      this.#log.warn({ idleMs: Math.round(now - this.#lastMediaMoveAt) }, 'no media from Twilio; ending the call');
      this.close('idle');
      return;
    }
    if (now - this.#startedAt >= this.#s.maxCallMs && this.#state !== 'ending') {
      this.endWithGoodbye('max_duration');
      return;
    }
    if (this.#state === 'live' && this.#agent === undefined) this.#agentLost('agent leg missing');
  }

  // ---------------------------------------------------------------- agent leg

  #openAgent(): void {
    const route = this.#d.reservation.route;
    const setup: AgentSetup = {
      type: 'setup',
      inputEncoding: 'mulaw',
      inputSampleRate: 8000,
      outputFormat: 'mulaw',
      outputSampleRate: 8000,
    };
    if (this.#s.apiKey !== undefined) setup.apiKey = this.#s.apiKey;
    if (route.prompt !== undefined) setup.prompt = route.prompt;
    if (route.customGreeting !== undefined) setup.customGreeting = route.customGreeting;
    if (this.#conversationId !== undefined) setup.continueConversation = this.#conversationId;

    let leg: AgentLeg | undefined;
    const handlers: AgentLegHandlers = {
      onOpen: () => {},
      onMessage: (msg) => {
        if (leg !== this.#agent) return; // a late frame from a leg we already dropped
        try {
          this.#onAgentMessage(msg);
        } catch (err) {
          this.onInternalError(err);
        }
      },
      onAudio: (buf, start, end) => {
        if (leg !== this.#agent) return;
        try {
          this.#onAgentAudioBytes(buf, start, end);
        } catch (err) {
          this.onInternalError(err);
        }
      },
      onBadFrame: (kind, name) => this.#onAgentBadFrame(kind, name),
      onClose: (info) => {
        if (leg !== this.#agent) return;
        try {
          this.#onAgentClose(info);
        } catch (err) {
          this.onInternalError(err);
        }
      },
    };
    this.#agentOpenedAt = performance.now();
    leg = this.#d.connectAgent({
      baseUrl: this.#s.agentBaseUrl,
      agentId: this.agentId,
      setup,
      handlers,
      heartbeatMs: this.#s.agentHeartbeatMs,
    });
    this.#agent = leg;
    this.#initTimer = setTimeout(() => {
      this.#initTimer = undefined;
      if (this.#state === 'connecting' || this.#state === 'reconnecting') {
        this.#log.warn({ timeoutMs: this.#s.agentInitTimeoutMs }, 'agent did not send init in time');
        this.#agentLost('init timeout', 'agent_init_timeout');
      }
    }, this.#s.agentInitTimeoutMs);
  }

  #onAgentMessage(msg: AgentServerMessage): void {
    if (this.#state === 'closed' || this.#state === 'ending') return;
    switch (msg.type) {
      case 'audioStream':
        this.#onAgentAudio(msg.data);
        return;
      case 'voiceActivityStart':
        if (this.#state === 'live') this.#bargeIn();
        return;
      case 'newAudioStream':
        if (this.#state !== 'live') return;
        if (this.playback.queued) this.#clearPlayback();
        this.#dropAgentAudio = false;
        return;
      case 'init':
        this.#onInit(msg.conversationId);
        return;
      case 'hangup':
        this.#onAgentHangup(msg.endedBy);
        return;
      case 'error':
        this.#onAgentError(msg.code, msg.message, msg.isFatal);
        return;
      case 'onUserTranscript':
      case 'onAgentTranscript': {
        const role = msg.type === 'onUserTranscript' ? 'user' : 'agent';
        this.#d.journal.record(this.callSid, { type: 'transcript', role, text: msg.message });
        this.#log.debug({ role, text: msg.message }, 'transcript');
        return;
      }
      case 'onAgentInterrupted':
        this.#log.debug('agent reports it was interrupted');
        return;
      case 'audioStreamEnd':
        // End of a response: mark its tail now rather than waiting for the tail timer.
        this.#flushTailMark();
        return;
      case 'voiceActivityEnd':
      case 'ignored':
        return;
      case 'unknown':
        this.#metrics.agentUnknownMessagesTotal.inc();
        this.#warnOnce(`agent-unknown:${msg.name}`, { type: msg.name }, 'ignored an agent message of unknown type');
        return;
    }
  }

  #onInit(conversationId: string): void {
    if (this.#state !== 'connecting' && this.#state !== 'reconnecting') {
      this.#warnOnce('agent:duplicate_init', {}, 'ignored a second init from the agent');
      return;
    }
    this.#clearTimer('init');
    this.#metrics.agentInitSeconds.observe((performance.now() - this.#agentOpenedAt) / 1000);
    const reconnected = this.#state === 'reconnecting';
    if (conversationId !== this.#conversationId) {
      this.#conversationId = conversationId;
      this.#log = this.#baseLog.child({ conversationId });
    }
    this.#d.journal.record(this.callSid, { type: 'agent_ready', conversationId, reconnected: this.#state === 'reconnecting' });
    this.#state = 'live';
    this.#everInit = true;
    this.#attempts = 0;
    const buffered = this.#pending.length - this.#pendingHead;
    if (reconnected) {
      this.#agentReconnects++;
      this.#metrics.agentReconnectsTotal.labels('success').inc();
      this.#log.info({ outageMs: Math.round(performance.now() - this.#outageStartedAt), bufferedFrames: buffered }, 'agent reconnected');
    } else {
      this.#log.info({ bufferedFrames: buffered }, 'agent ready');
    }
    this.#flushPending();
  }

  #onAgentAudio(data: string): void {
    const buf = Buffer.from(data, 'latin1');
    this.#onAgentAudioBytes(buf, 0, buf.length);
  }

  /** Agent audio (base64 in `buf[start, end)`) to the caller, without decoding it. */
  #onAgentAudioBytes(buf: Buffer, start: number, end: number): void {
    if (this.#state !== 'live') return;
    if (this.#dropAgentAudio) {
      this.#metrics.framesDroppedAfterBargeIn++;
      return;
    }
    if (end === start) return;
    // Defensive: a WAV-wrapped chunk ("UklGR" = base64 of "RIFF") would play as noise on the phone.
    if (buf[start] === 0x55 && buf.toString('latin1', start, Math.min(end, start + 5)) === 'UklGR') {
      const pcm = stripWavHeader(Buffer.from(buf.toString('latin1', start, end), 'base64'));
      if (pcm === undefined || pcm.length === 0) return;
      buf = Buffer.from(Buffer.from(pcm).toString('base64'), 'latin1');
      start = 0;
      end = buf.length;
    }
    this.#carrier.sendMediaBytes(buf, start, end);
    const bytes = base64ByteLengthOf(buf, start, end);
    const now = performance.now();
    this.#playEnd = (this.#playEnd > now ? this.#playEnd : now) + bytes / 8;
    this.#framesDown++;
    this.#metrics.framesDown++;
    this.#metrics.bytesDown += bytes;
    if (!this.#firstAudioSeen) {
      this.#firstAudioSeen = true;
      this.#metrics.firstAgentAudioSeconds.observe((performance.now() - this.#startedAt) / 1000);
    }
    const mark = this.playback.onAudioSent(bytes);
    if (mark !== undefined) {
      // This mark covers everything sent so far: no tail mark is due until more audio comes.
      this.#clearTimer('tail');
      this.#sendMark(mark);
    } else if (this.#tailMarkTimer === undefined) {
      this.#tailMarkTimer = setTimeout(this.#onTailMarkTimer, this.#s.markIntervalMs);
    }
  }

  readonly #onTailMarkTimer = (): void => {
    this.#tailMarkTimer = undefined;
    this.#flushTailMark();
  };

  #flushTailMark(): void {
    this.#clearTimer('tail');
    const mark = this.playback.flushMark();
    if (mark !== undefined) this.#sendMark(mark);
  }

  #sendMark(name: string): void {
    this.#carrier.sendMark(name);
    this.#metrics.marksTotal.labels('sent').inc();
  }

  /** The caller started speaking: stop the agent's queued audio. */
  #bargeIn(): void {
    if (!this.playback.queued) return;
    const t0 = performance.now();
    this.#clearPlayback();
    this.#dropAgentAudio = true;
    this.#bargeIns++;
    this.#metrics.bargeInsTotal.inc();
    this.#metrics.bargeInClearSeconds.observe((performance.now() - t0) / 1000);
  }

  /** Sends `clear` and forgets the flushed marks (their echoes become stale). */
  #clearPlayback(): void {
    this.#carrier.sendClear();
    this.playback.reset();
    this.#playEnd = 0;
    this.#clearTimer('tail');
  }

  #onAgentHangup(endedBy: string | undefined): void {
    if (this.#state !== 'live' && this.#state !== 'connecting' && this.#state !== 'reconnecting') return;
    this.#log.info({ endedBy }, 'agent hung up');
    this.#endReason ??= 'agent_hangup';
    this.#state = 'draining';
    this.#clearTimer('init');
    this.#clearTimer('retry');
    this.#closeAgent();
    this.#flushTailMark();
    if (!this.playback.queued) {
      this.close('agent_hangup');
      return;
    }
    // Let the last words play; the echo of the final mark ends the call (see onMark). Without
    // echoes, give up a little after the audio should have played, and never later than the bound.
    const remainingMs = Math.max(0, this.#playEnd - performance.now());
    this.#drainTimer = setTimeout(() => {
      this.#drainTimer = undefined;
      this.#log.info({ pendingMarks: this.playback.pendingMarks }, 'playback did not confirm in time after agent hangup');
      this.close('agent_hangup');
    }, Math.min(this.#s.hangupDrainMs, remainingMs + PLAYBACK_SLACK_MS));
  }

  #onAgentError(code: number | undefined, message: string, isFatal: boolean | undefined): void {
    const fatal = isFatalAgentError(code, isFatal);
    this.#metrics.agentErrorsTotal.labels(code === undefined ? 'none' : String(code), String(fatal)).inc();
    if (!fatal) {
      this.#log.warn({ code, agentMessage: message }, 'agent reported a non-fatal error');
      return;
    }
    if (code !== undefined && NON_RETRYABLE_AGENT_ERRORS.has(code)) {
      this.#log.error({ code, agentMessage: message }, 'agent reported a fatal error that a reconnect cannot fix');
      if (code === 4429) {
        this.#metrics.agentCapacityTotal.inc();
        this.#d.onAgentCapacityExceeded(this);
        this.#endWith('agent_capacity', 'busy', this.#s.overflow);
      } else {
        this.#endWith('agent_error', 'apology');
      }
      return;
    }
    this.#log.warn({ code, agentMessage: message }, 'agent reported a retryable error');
    this.#agentLost(`error ${code ?? 'without code'}`);
  }

  #onAgentClose(info: AgentCloseInfo): void {
    this.#agent = undefined;
    if (info.byUs || this.#state === 'closed' || this.#state === 'ending' || this.#state === 'draining') return;
    this.#log.warn({ code: info.code, reason: info.reason, error: info.error, state: this.#state }, 'agent socket closed without hangup');
    // A close code that mirrors a non-retryable error code (4400, 4401, 4429) means what the error would.
    if (info.code >= 4000 && NON_RETRYABLE_AGENT_ERRORS.has(info.code)) {
      this.#onAgentError(info.code, info.reason, true);
      return;
    }
    this.#agentLost(info.error ?? `closed with ${info.code}`);
  }

  /**
   * The agent leg is gone (or useless) without a hangup: reconnect with
   * `continueConversation` within the budget, or end the call with an apology.
   */
  #agentLost(why: string, failReason: EndReason = 'agent_unreachable'): void {
    if (this.#state === 'closed' || this.#state === 'ending' || this.#state === 'draining') return;
    this.#clearTimer('init');
    this.#closeAgent();
    this.#flushBatch(); // with the agent gone, batched audio joins the reconnect buffer
    if (this.#state === 'live') {
      this.#state = 'reconnecting';
      this.#outageStartedAt = performance.now();
      this.#attempts = 0;
      this.#pendingMaxBytes = this.#s.reconnect.bufferMs * 8;
    }
    const elapsed = performance.now() - this.#outageStartedAt;
    const delay = this.#backoff(this.#attempts);
    if (this.#attempts >= this.#s.reconnect.attempts || elapsed + delay > this.#s.reconnect.windowMs) {
      if (this.#everInit) this.#metrics.agentReconnectsTotal.labels('gave_up').inc();
      this.#log.error({ why, attempts: this.#attempts, outageMs: Math.round(elapsed) }, 'agent leg lost; reconnect budget spent');
      this.#endWith(failReason, 'apology');
      return;
    }
    this.#attempts++;
    this.#log.warn({ why, attempt: this.#attempts, delayMs: Math.round(delay) }, 'agent leg lost; reconnecting');
    this.#retryTimer = setTimeout(() => {
      this.#retryTimer = undefined;
      if (this.#state === 'connecting' || this.#state === 'reconnecting') {
        if (this.#everInit) this.#metrics.agentReconnectsTotal.labels('attempt').inc();
        try {
          this.#openAgent();
        } catch (err) {
          this.onInternalError(err);
        }
      }
    }, delay);
  }

  #backoff(attempt: number): number {
    const base = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)] ?? 1000;
    const r = this.#d.random?.() ?? Math.random();
    return base * (0.75 + 0.5 * r);
  }

  #onAgentBadFrame(kind: AgentBadFrameKind, name?: string): void {
    this.#metrics.badFramesTotal.labels('agent', kind).inc();
    this.#warnOnce(`agent:${kind}`, { kind, type: name }, 'dropped a bad frame from the agent');
  }

  #closeAgent(): void {
    const agent = this.#agent;
    this.#agent = undefined;
    agent?.close(1000, 'call ended');
  }

  // ---------------------------------------------------------------- caller audio while the agent is not ready

  #bufferCallerAudio(payload: string): void {
    this.#pending.push(payload);
    this.#pendingBytes += base64ByteLength(payload);
    while (this.#pendingBytes > this.#pendingMaxBytes && this.#pendingHead < this.#pending.length) {
      const dropped = this.#pending[this.#pendingHead++] ?? '';
      this.#pendingBytes -= base64ByteLength(dropped);
      this.#metrics.framesLost++;
      this.#warnOnce('buffer_overflow', { maxMs: this.#pendingMaxBytes / 8 }, 'caller audio buffer full while the agent is not ready; dropping oldest');
    }
  }

  #flushPending(): void {
    const agent = this.#agent;
    for (let i = this.#pendingHead; i < this.#pending.length; i++) {
      const payload = this.#pending[i] as string;
      if (agent !== undefined && agent.sendAudio(payload)) {
        this.#framesUp++;
        this.#metrics.framesUp++;
        this.#metrics.bytesUp += base64ByteLength(payload);
      } else {
        this.#metrics.framesLost++;
      }
    }
    this.#pending = [];
    this.#pendingHead = 0;
    this.#pendingBytes = 0;
  }

  // ---------------------------------------------------------------- ending

  /**
   * Ends the call through call control: speaks `text` (or forwards the call),
   * then Twilio tears the stream down. If the carrier cannot do it (no REST
   * credentials, request failed) the stream is closed and the TwiML falls
   * through to `<Hangup/>`.
   */
  #endWith(reason: EndReason, kind: 'apology' | 'busy' | 'goodbye', overflow?: SessionSettings['overflow']): void {
    if (this.#state === 'closed' || this.#state === 'ending') return;
    this.#endReason ??= reason;
    this.#state = 'ending';
    this.#clearTimer('init');
    this.#clearTimer('retry');
    this.#clearTimer('drain');
    this.#closeAgent();
    const forwardTo = overflow?.action === 'dial' ? overflow.fallbackNumber : undefined;
    const text = this.#s.texts[kind];
    const spoken: SpokenKind = forwardTo === undefined ? kind : 'forward';
    this.#d.journal.record(this.callSid, { type: 'spoke', kind: spoken, text });
    const request =
      forwardTo === undefined ? this.#d.callControl.sayAndHangup(this.callSid, text) : this.#d.callControl.forward(this.callSid, forwardTo, text);
    request.then(
      (accepted) => this.#afterCallControl(accepted),
      () => this.#afterCallControl(false),
    );
  }

  #afterCallControl(accepted: boolean): void {
    if (this.#state === 'closed') return;
    if (!accepted) {
      this.close(this.#endReason ?? 'internal_error');
      return;
    }
    // Twilio now runs the new TwiML and stops the stream; close it ourselves if it does not.
    this.#graceTimer = setTimeout(() => {
      this.#graceTimer = undefined;
      this.close(this.#endReason ?? 'internal_error');
    }, this.#s.callControlGraceMs);
  }

  /** Ends the call now, from any state. Idempotent; releases every socket, timer and slot. */
  close(reason: EndReason): void {
    if (this.#state === 'closed') return;
    const previous = this.#state;
    this.#state = 'closed';
    const outcome = this.#endReason ?? reason;
    try {
      this.#clearTimer('init');
      this.#clearTimer('retry');
      this.#clearTimer('tail');
      this.#clearTimer('drain');
      this.#clearTimer('grace');
      this.#clearTimer('batch');
      this.#batchLen = 0;
      this.#closeAgent();
      if (this.#carrier.isOpen) this.#carrier.close(1000, 'call ended');
      const lost = this.#pending.length - this.#pendingHead;
      if (lost > 0) this.#metrics.framesLost += lost;
      this.#pending = [];
      this.#pendingHead = 0;
      this.#pendingBytes = 0;
      const durationMs = Math.round(performance.now() - this.#startedAt);
      this.#metrics.callsTotal.labels(outcome).inc();
      this.#log.info(
        {
          outcome,
          previousState: previous,
          durationMs,
          framesUp: this.#framesUp,
          framesDown: this.#framesDown,
          bargeIns: this.#bargeIns,
          agentReconnects: this.#agentReconnects,
        },
        'call ended',
      );
      this.#d.journal.record(this.callSid, { type: 'session_ended', endReason: outcome, agentReconnects: this.#agentReconnects, bargeIns: this.#bargeIns, durationMs });
    } finally {
      // The slot is given back whatever happened above.
      this.#d.onClosed(this);
    }
  }

  // ---------------------------------------------------------------- helpers

  #warnOnce(key: string, obj: Record<string, unknown>, msg: string): void {
    if (this.#badSeen.has(key)) return;
    this.#badSeen.add(key);
    this.#log.warn(obj, msg);
  }

  #clearTimer(which: 'init' | 'retry' | 'tail' | 'drain' | 'grace' | 'batch'): void {
    switch (which) {
      case 'batch':
        if (this.#batchTimer !== undefined) clearTimeout(this.#batchTimer);
        this.#batchTimer = undefined;
        return;
      case 'init':
        if (this.#initTimer !== undefined) clearTimeout(this.#initTimer);
        this.#initTimer = undefined;
        return;
      case 'retry':
        if (this.#retryTimer !== undefined) clearTimeout(this.#retryTimer);
        this.#retryTimer = undefined;
        return;
      case 'tail':
        if (this.#tailMarkTimer !== undefined) clearTimeout(this.#tailMarkTimer);
        this.#tailMarkTimer = undefined;
        return;
      case 'drain':
        if (this.#drainTimer !== undefined) clearTimeout(this.#drainTimer);
        this.#drainTimer = undefined;
        return;
      case 'grace':
        if (this.#graceTimer !== undefined) clearTimeout(this.#graceTimer);
        this.#graceTimer = undefined;
        return;
    }
  }
}
