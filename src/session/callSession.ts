/**
 * One call: the only place where the carrier leg (Twilio) and the agent leg
 * (PlayAI protocol) meet.
 *
 * The session owns both sockets, its timers and its logger, and releases all
 * of them in one idempotent {@link CallSession.close}. Audio is relayed as
 * base64 strings without decoding in either direction.
 *
 * States: `connecting` (agent socket opening, waiting for `init`; caller audio
 * is buffered) → `live` → `draining` (agent hung up, its queued audio is
 * finishing) or `ending` (the caller is being told goodbye by call control)
 * → `closed`.
 */
import type { Logger } from 'pino';
import type { AgentConnector, AgentLeg, AgentLegHandlers, AgentCloseInfo } from '../agent/leg.js';
import { isFatalAgentError, type AgentBadFrameKind, type AgentServerMessage, type AgentSetup } from '../agent/protocol.js';
import { base64ByteLength } from '../audio/base64.js';
import { stripWavHeader } from '../audio/wav.js';
import type { CallControl } from '../carrier/twilio/callControl.js';
import type { CarrierBadFrameKind, CarrierHandlers, CarrierLeg } from '../carrier/twilio/stream.js';
import type { Metrics } from '../metrics.js';
import type { CallRecord, ManagedSession, Reservation } from './manager.js';
import { PlaybackTracker } from './playback.js';

export interface SessionSettings {
  agentBaseUrl: string;
  apiKey?: string;
  agentInitTimeoutMs: number;
  hangupDrainMs: number;
  callControlGraceMs: number;
  markIntervalMs: number;
  preInitBufferMs: number;
  apologyText: string;
  agentHeartbeatMs: number;
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
  /** Called exactly once, after the session has released everything. */
  onClosed(session: CallSession): void;
}

export type SessionState = 'connecting' | 'live' | 'draining' | 'ending' | 'closed';

/** Why a call ended (the `outcome` label of `playline_calls_total`). */
export type EndReason =
  | 'caller_hangup'
  | 'agent_hangup'
  | 'agent_error'
  | 'agent_disconnected'
  | 'agent_init_timeout'
  | 'shutdown'
  | 'internal_error';

/** Agent audio stays this far behind before the session stops queueing more on a stuck socket. */
const MAX_AGENT_SOCKET_BUFFER = 1024 * 1024;
const MAX_TRANSCRIPT_TURNS = 500;
const MAX_DTMF = 200;

export class CallSession implements CarrierHandlers, ManagedSession {
  readonly callSid: string;
  readonly streamSid: string;
  readonly record: CallRecord;
  readonly playback: PlaybackTracker;

  readonly #d: CallSessionDeps;
  readonly #s: SessionSettings;
  readonly #carrier: CarrierLeg;
  readonly #metrics: Metrics;
  #log: Logger;
  #state: SessionState = 'connecting';
  #agent: AgentLeg | undefined;
  #agentOpenedAt = 0;
  readonly #startedAt = performance.now();
  #firstAudioSeen = false;
  #endReason: EndReason | undefined;

  /** Caller audio waiting for the agent's `init` (base64 payloads, oldest first). */
  #pending: string[] = [];
  #pendingHead = 0;
  #pendingBytes = 0;
  readonly #pendingMaxBytes: number;

  /** Late audio of an interrupted response is dropped until the next `newAudioStream`. */
  #dropAgentAudio = false;

  #initTimer: NodeJS.Timeout | undefined;
  #tailMarkTimer: NodeJS.Timeout | undefined;
  #drainTimer: NodeJS.Timeout | undefined;
  #graceTimer: NodeJS.Timeout | undefined;

  readonly #badSeen = new Set<string>();
  /** Frame tallies for the end-of-call log line. */
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
    this.record = deps.reservation.record;
    this.record.streamSid = deps.streamSid;
    this.record.startedAt = new Date().toISOString();
    this.playback = new PlaybackTracker(this.#s.markIntervalMs);
    this.#pendingMaxBytes = this.#s.preInitBufferMs * 8;
    this.#log = deps.logger.child({ callSid: this.callSid, streamSid: this.streamSid, agentId: deps.reservation.route.agentId });
  }

  get state(): SessionState {
    return this.#state;
  }

  /** Opens the agent leg. Called once by whoever built the session, after registering it. */
  start(): void {
    this.#log.info({ from: this.record.from, to: this.record.to }, 'call started');
    this.#openAgent();
  }

  // ---------------------------------------------------------------- carrier → session

  onMedia(payload: string): void {
    if (this.#state === 'live') {
      const agent = this.#agent;
      if (agent !== undefined && agent.bufferedAmount < MAX_AGENT_SOCKET_BUFFER && agent.sendAudio(payload)) {
        this.#framesUp++;
        this.#metrics.framesUp++;
        this.#metrics.bytesUp += base64ByteLength(payload);
      } else {
        this.#metrics.framesLost++;
      }
    } else if (this.#state === 'connecting') {
      this.#bufferCallerAudio(payload);
    }
    // draining / ending: the agent is gone; the caller is hearing the last words.
  }

  onMark(name: string): void {
    const result = this.playback.onMarkEcho(name);
    this.#metrics.marksTotal.labels(result).inc();
    if (this.#state === 'draining' && !this.playback.queued) this.close('agent_hangup');
  }

  onDtmf(digit: string): void {
    if (this.record.dtmf.length < MAX_DTMF) this.record.dtmf.push(digit);
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

    const handlers: AgentLegHandlers = {
      onOpen: () => {},
      onMessage: (msg) => {
        try {
          this.#onAgentMessage(msg);
        } catch (err) {
          this.onInternalError(err);
        }
      },
      onBadFrame: (kind, name) => this.#onAgentBadFrame(kind, name),
      onClose: (info) => {
        try {
          this.#onAgentClose(info);
        } catch (err) {
          this.onInternalError(err);
        }
      },
    };
    this.#agentOpenedAt = performance.now();
    this.#agent = this.#d.connectAgent({
      baseUrl: this.#s.agentBaseUrl,
      agentId: route.agentId,
      setup,
      handlers,
      heartbeatMs: this.#s.agentHeartbeatMs,
    });
    this.#initTimer = setTimeout(() => {
      this.#initTimer = undefined;
      if (this.#state === 'connecting') {
        this.#log.warn({ timeoutMs: this.#s.agentInitTimeoutMs }, 'agent did not send init in time');
        this.#fail('agent_init_timeout');
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
        if (this.record.transcript.length < MAX_TRANSCRIPT_TURNS) {
          this.record.transcript.push({ role, text: msg.message, at: new Date().toISOString() });
        }
        this.#log.debug({ role, text: msg.message }, 'transcript');
        return;
      }
      case 'onAgentInterrupted':
        this.#log.debug('agent reports it was interrupted');
        return;
      case 'voiceActivityEnd':
      case 'audioStreamEnd': {
        // End of a response: mark its tail now rather than waiting for the tail timer.
        if (msg.type === 'audioStreamEnd') this.#flushTailMark();
        return;
      }
      case 'ignored':
        return;
      case 'unknown':
        this.#metrics.agentUnknownMessagesTotal.inc();
        this.#warnOnce(`agent-unknown:${msg.name}`, { type: msg.name }, 'ignored an agent message of unknown type');
        return;
    }
  }

  #onInit(conversationId: string): void {
    if (this.#state !== 'connecting') {
      this.#warnOnce('agent:duplicate_init', {}, 'ignored a second init from the agent');
      return;
    }
    this.#clearTimer('init');
    this.#metrics.agentInitSeconds.observe((performance.now() - this.#agentOpenedAt) / 1000);
    this.record.conversationId = conversationId;
    this.#log = this.#log.child({ conversationId });
    this.#state = 'live';
    this.#log.info({ bufferedFrames: this.#pending.length - this.#pendingHead }, 'agent ready');
    this.#flushPending();
  }

  #onAgentAudio(data: string): void {
    if (this.#state !== 'live') return;
    if (this.#dropAgentAudio) {
      this.#metrics.framesDroppedAfterBargeIn++;
      return;
    }
    if (data.length === 0) return;
    // Defensive: a WAV-wrapped chunk would play as noise on the phone.
    if (data.charCodeAt(0) === 85 /* U */ && data.startsWith('UklGR')) {
      const pcm = stripWavHeader(Buffer.from(data, 'base64'));
      if (pcm === undefined) return;
      data = Buffer.from(pcm).toString('base64');
    }
    this.#carrier.sendMedia(data);
    const bytes = base64ByteLength(data);
    this.#framesDown++;
    this.#metrics.framesDown++;
    this.#metrics.bytesDown += bytes;
    if (!this.#firstAudioSeen) {
      this.#firstAudioSeen = true;
      this.#metrics.firstAgentAudioSeconds.observe((performance.now() - this.#startedAt) / 1000);
    }
    const mark = this.playback.onAudioSent(bytes);
    if (mark !== undefined) {
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
    this.#clearTimer('tail');
  }

  #onAgentHangup(endedBy: string | undefined): void {
    if (this.#state !== 'live' && this.#state !== 'connecting') return;
    this.#log.info({ endedBy }, 'agent hung up');
    this.#endReason ??= 'agent_hangup';
    this.#state = 'draining';
    this.#clearTimer('init');
    this.#closeAgent();
    this.#flushTailMark();
    if (!this.playback.queued) {
      this.close('agent_hangup');
      return;
    }
    // Let the last words play; the echo of the final mark ends the call (see onMark).
    this.#drainTimer = setTimeout(() => {
      this.#drainTimer = undefined;
      this.#log.info({ pendingMarks: this.playback.pendingMarks }, 'playback did not confirm in time after agent hangup');
      this.close('agent_hangup');
    }, this.#s.hangupDrainMs);
  }

  #onAgentError(code: number | undefined, message: string, isFatal: boolean | undefined): void {
    const fatal = isFatalAgentError(code, isFatal);
    this.#metrics.agentErrorsTotal.labels(code === undefined ? 'none' : String(code), String(fatal)).inc();
    if (!fatal) {
      this.#log.warn({ code, agentMessage: message }, 'agent reported a non-fatal error');
      return;
    }
    this.#log.error({ code, agentMessage: message }, 'agent reported a fatal error');
    this.#fail('agent_error');
  }

  #onAgentClose(info: AgentCloseInfo): void {
    this.#agent = undefined;
    if (info.byUs || this.#state === 'closed' || this.#state === 'ending' || this.#state === 'draining') return;
    this.#log.warn({ code: info.code, reason: info.reason, error: info.error, state: this.#state }, 'agent socket closed without hangup');
    this.#fail('agent_disconnected');
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

  // ---------------------------------------------------------------- caller audio before init

  #bufferCallerAudio(payload: string): void {
    this.#pending.push(payload);
    this.#pendingBytes += base64ByteLength(payload);
    while (this.#pendingBytes > this.#pendingMaxBytes && this.#pendingHead < this.#pending.length) {
      const dropped = this.#pending[this.#pendingHead++] ?? '';
      this.#pendingBytes -= base64ByteLength(dropped);
      this.#metrics.framesLost++;
      this.#warnOnce('preinit_overflow', { maxMs: this.#s.preInitBufferMs }, 'caller audio buffer full before agent init; dropping oldest');
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
   * Ends the call with a spoken apology through call control. If the carrier
   * cannot speak it (no REST credentials, request failed) the stream is closed
   * and the TwiML falls through to `<Hangup/>`.
   */
  #fail(reason: EndReason): void {
    if (this.#state === 'closed' || this.#state === 'ending') return;
    this.#endReason ??= reason;
    this.#state = 'ending';
    this.#clearTimer('init');
    this.#clearTimer('drain');
    this.#closeAgent();
    const text = this.#s.apologyText;
    this.record.spokenToCaller.push(text);
    this.#d.callControl.sayAndHangup(this.callSid, text).then(
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
  close(reason: EndReason | string): void {
    if (this.#state === 'closed') return;
    const previous = this.#state;
    this.#state = 'closed';
    const outcome = this.#endReason ?? reason;
    try {
      this.#clearTimer('init');
      this.#clearTimer('tail');
      this.#clearTimer('drain');
      this.#clearTimer('grace');
      this.#closeAgent();
      if (this.#carrier.isOpen) this.#carrier.close(1000, 'call ended');
      this.#pending = [];
      this.#pendingHead = 0;
      this.#pendingBytes = 0;
      this.record.endedAt = new Date().toISOString();
      this.record.endReason = outcome;
      this.#metrics.callsTotal.labels(outcome).inc();
      this.#log.info(
        {
          outcome,
          previousState: previous,
          durationMs: Math.round(performance.now() - this.#startedAt),
          framesUp: this.#framesUp,
          framesDown: this.#framesDown,
          bargeIns: this.#bargeIns,
        },
        'call ended',
      );
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

  #clearTimer(which: 'init' | 'tail' | 'drain' | 'grace'): void {
    switch (which) {
      case 'init':
        if (this.#initTimer !== undefined) clearTimeout(this.#initTimer);
        this.#initTimer = undefined;
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
