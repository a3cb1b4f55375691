/**
 * One call: the only place where the carrier leg (Twilio) and the agent leg
 * (any provider, through the agent port `agent/port.ts`) meet.
 *
 * The session owns both sockets, its timers and its logger, and releases all
 * of them in one idempotent {@link CallSession.close}. Audio is relayed as
 * base64 without decoding in either direction.
 *
 * States (`state.ts`; each state carries the agent leg it holds, if any):
 * - `connecting`: first agent socket opening, waiting for it to be ready; caller audio is buffered.
 * - `live`: audio flows both ways (always with an agent leg).
 * - `reconnecting`: the agent leg was lost without a `hangup`; the caller stays on the
 *   line, caller audio is buffered, agent audio already queued at Twilio keeps playing,
 *   and the session reconnects within a bounded budget (`reconnect.ts`), resuming the
 *   conversation (by id where the provider can, else with the transcript so far). When the
 *   budget is spent, or the agent refuses the call, a fallback agent takes over if it has one.
 * - `draining`: the agent hung up; its queued audio is finishing.
 * - `ending`: call control is telling the caller goodbye (or forwarding the call).
 * - `closed`.
 */
import type { Logger } from 'pino';
import { AgentDirectory } from '../agent/directory.js';
import type { AgentBadFrameKind, AgentCloseInfo, AgentError, AgentEvents, AgentLeg, AgentProviderName, AgentRequest, AgentToolCall, ConversationTurn } from '../agent/port.js';
import { END_CALL_TOOL, parseAgentRef } from '../agent/port.js';
import { base64ByteLength, base64ByteLengthOf } from '../audio/base64.js';
import { stripWavHeader } from '../audio/wav.js';
import type { CallJournal, EndReason, SpokenKind } from '../calls/journal.js';
import type { CallControl } from '../carrier/twilio/callControl.js';
import type { CarrierBadFrameKind, CarrierHandlers, CarrierLeg } from '../carrier/twilio/stream.js';
import type { Metrics } from '../metrics.js';
import type { CallRoute, ManagedSession, Reservation, SessionSnapshot, Slot } from './manager.js';
import { PlaybackTracker } from './playback.js';
import { nextRetry, outageAfterLoss, type Outage, type ReconnectPolicy } from './reconnect.js';
import { agentOf, type SessionPhase, type SessionState } from './state.js';
import { Timers } from './timers.js';
import type { HttpToolDef, HttpToolOutcome, ToolRunner } from '../tools/http.js';
import type { TransferBy, TransferMode, TransferPlan, TransferTargetInfo } from '../transfer/coordinator.js';
import { DEFAULT_TRANSFER_TIMEOUT_S, lookupTarget, type DtmfAction } from '../transfer/targets.js';
import { DtmfGatherer, dtmfMessage, type DtmfEnd, type DtmfOutcome } from './dtmf.js';
import { CallerAudioBuffer } from './callerBuffer.js';

export interface SessionSettings {
  agentInitTimeoutMs: number;
  hangupDrainMs: number;
  callControlGraceMs: number;
  markIntervalMs: number;
  preInitBufferMs: number;
  /** Coalesce caller audio into `audioIn` messages of this many ms; 0 forwards each frame as it comes. */
  audioInBatchMs?: number;
  /** Keypad digits are gathered until `#` or a pause this long (default 1500 ms). */
  dtmfGatherMs?: number;
  agentHeartbeatMs: number;
  /** The reconnect budget, and the caller audio (ms) kept during an outage. */
  reconnect: ReconnectPolicy & { bufferMs: number };
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
  /** The agents: providers, each agent's settings and fallbacks, and their health. */
  agents: AgentDirectory;
  callControl: CallControl;
  settings: SessionSettings;
  metrics: Metrics;
  logger: Logger;
  /** Where the call's record hears what happens (stream start, agent init, transcripts, digits, prompts, the end). */
  journal: CallJournal;
  /** An agent account refused a session for capacity (PlayAI 4429 and its equivalents). */
  onAgentCapacityExceeded(session: CallSession, provider: AgentProviderName): void;
  /** The call moved to another agent (a fallback): its slot now counts for that agent. */
  onAgentSwitched?(session: CallSession, agentId: string): void;
  /** An agent session that had been ready ended: its provider's account has a session free again. */
  onAgentSessionEnded?(session: CallSession, provider: AgentProviderName): void;
  /** An agent session became ready (REDIS_URL: counted fleet-wide for the learned limits). */
  onAgentSessionReady?(session: CallSession, provider: AgentProviderName): void;
  /** Runs the operator HTTP tools the agent calls (AGENTS_FILE `tools`); without it they are answered with an error. */
  tools?: ToolRunner;
  /** Hands calls to people (transfers); without it the call cannot be transferred (no transfer_call tool). */
  transfers?: TransferPort;
  /** Gives a slot back (a transfer that failed after the session had closed). */
  releaseSlot?(slot: Slot): void;
  /** Prompts in the agent's voice (TTS); without one, or before its audio is ready, call control says the text. */
  prompts?: SessionPrompts;
  /** Called exactly once, after the session has released everything. */
  onClosed(session: CallSession): void;
  /** Backoff jitter source (tests). */
  random?: () => number;
}

/** Caller-facing prompts as a session sees them (`tts/prompts.ts`). */
export interface SessionPrompts {
  /** A prompt's audio (raw 8 kHz μ-law) if it is ready now; undefined at once otherwise. */
  cached(kind: 'apology' | 'busy' | 'goodbye'): { audio: Buffer } | undefined;
  /** Counts a prompt said to a caller, and how. */
  count(kind: 'apology' | 'busy' | 'goodbye', via: 'stream' | 'say'): void;
}

/** The transfer coordinator as a session sees it. */
export interface TransferPort {
  begin(plan: TransferPlan): Promise<{ ok: true; id: string } | { ok: false; error: string }>;
  requested(plan: Pick<TransferPlan, 'callSid' | 'mode' | 'by' | 'target' | 'reason'>): string;
}

/** A transfer asked of a live call. */
export interface TransferRequest {
  /** A target name the call's route, agent or campaign declares. */
  target?: string;
  /** An explicit address (the API only: an operator's decision, never a model's). */
  to?: string;
  mode: TransferMode;
  reason?: string;
  /** What the person hears first in a warm transfer (the agent's own words). */
  summary?: string;
  by: TransferBy;
}

export type TransferStart = { ok: true; transferId: string } | { ok: false; code: 'unavailable' | 'not_live' | 'unknown_target' | 'in_progress' | 'carrier_refused'; error: string };

export type { SessionState } from './state.js';
export type { EndReason } from '../calls/journal.js';

/** Agent audio stays this far behind before the session stops queueing more on a stuck socket. */
const MAX_AGENT_SOCKET_BUFFER = 1024 * 1024;
/**
 * Agent audio queued in the Twilio socket (bytes of `media` messages not yet
 * written) above which more agent audio is dropped: about 45 s of audio in
 * 20 ms messages, 35 s in 100 ms ones. Twilio reads as fast as we write, so
 * only a socket that stopped draining gets here.
 */
export const MAX_CARRIER_SOCKET_BUFFER = 512 * 1024;
/** A Twilio socket still above {@link MAX_CARRIER_SOCKET_BUFFER} this long after the first drop ends the call (`carrier_stalled`). */
export const CARRIER_STALL_MS = 10_000;
/**
 * Largest `media` message sent to Twilio, in base64 characters: 1280 characters
 * are 960 bytes, 120 ms of μ-law. Bigger agent chunks are cut at multiples of
 * this (a multiple of 4 characters, so each piece is valid base64 on its own and
 * nothing is decoded); 960 bytes is the smallest multiple of 3 bytes and of
 * 20 ms at or above 100 ms, so chunks of up to 100 ms (800 bytes) still go out
 * whole, as one message.
 */
export const MAX_MEDIA_PAYLOAD_CHARS = 1280;
/** A stream with no media for this long is dead (Twilio sends a frame every 20 ms, silence included). */
const STREAM_DEAD_AFTER_MS = 3000;
/**
 * After an agent hangup, if Twilio never confirms playback with marks, the call
 * ends this long after the queued audio should have finished playing (within
 * HANGUP_DRAIN_TIMEOUT_MS in any case).
 */
const PLAYBACK_SLACK_MS = 2000;

type TimerName = 'init' | 'retry' | 'tail' | 'drain' | 'grace' | 'batch' | 'stall' | 'endcall' | 'dtmf' | 'transfer';

/** A transfer the agent asked for waits at most this long for its last words to play. */
const TRANSFER_PLAYOUT_MAX_MS = 8000;

/** Operator tool calls one call may have in flight at once. */
const MAX_TOOLS_IN_FLIGHT = 4;

/** Keypad messages kept for an agent that is not ready (connecting, reconnecting); older ones are dropped. */
const MAX_DTMF_WAITING = 4;

/**
 * After an `end_call` during a response, the call ends once the agent says the response is done,
 * or once no agent audio has come for this long (providers without an end-of-audio event).
 */
const END_CALL_QUIET_MS = 700;

/** Conversation kept in memory for a new agent session to continue from (a reconnect, a fallback). */
const MAX_HISTORY_TURNS = 40;
const MAX_HISTORY_CHARS = 12_000;

export class CallSession implements CarrierHandlers, ManagedSession {
  readonly callSid: string;
  readonly streamSid: string;
  readonly slot: Slot;
  readonly playback: PlaybackTracker;

  readonly #d: CallSessionDeps;
  readonly #s: SessionSettings;
  readonly #carrier: CarrierLeg;
  readonly #metrics: Metrics;
  readonly #baseLog: Logger;
  readonly #timers = new Timers<TimerName>();
  #log: Logger;
  #st: SessionPhase;
  readonly #startedAt = performance.now();
  /** The same moment on the wall clock (GET /v1/live). */
  readonly #startedAtMs = Date.now();
  #firstAudioSeen = false;
  #endReason: EndReason | undefined;
  /** The conversation, from the agent's latest `init`; kept across legs for `continueConversation`. */
  #conversationId: string | undefined;
  #everInit = false;
  /** The agent serving the call now (`provider:id`): the route's, or a fallback that took over. */
  #agentRef: string;
  /** Agents this call has used, in order (the first is the route's). */
  readonly #agentsTried: string[] = [];
  /** The conversation so far, for a new agent session to continue from. */
  readonly #history: ConversationTurn[] = [];
  #historyChars = 0;
  /** The agent asked to end the call (end_call) while its response was still streaming. */
  #endCallPending = false;
  /** True from a response's first audio until the agent says all of its audio was sent. */
  #responseStreaming = false;
  /** Bytes of agent audio sent to Twilio in the current response (what was played is derived from it). */
  #responseBytes = 0;
  /** When agent audio last went to Twilio (performance.now() ms). */
  #lastAgentAudioAt = 0;
  /** Agent audio sent since the call started, less what a `clear` flushed (bytes; the coordinates of `playback.playedBytes`). */
  #sentTotal = 0;
  /** `#sentTotal` when the current response's first byte went out. */
  #responseStartPos = 0;
  /** When Twilio last echoed a current mark (performance.now() ms; 0: never). */
  #lastEchoAt = 0;
  /** The agent whose session `#conversationId` belongs to. */
  #conversationAgent: string | undefined;
  /** Successful reconnects (a new `init` after a lost leg). */
  #agentReconnects = 0;
  /** Reconnect attempts scheduled in this call, all outages together. */
  #retries = 0;

  /** Caller audio waiting for the agent (base64 payloads, oldest first). */
  readonly #pending: CallerAudioBuffer;

  /** Late audio of an interrupted response is dropped until the next `newAudioStream`. */
  #dropAgentAudio = false;
  /** When the agent audio sent so far should have finished playing at Twilio (performance.now() ms). */
  #playEnd = 0;
  /** Agent audio was dropped because the Twilio socket is not draining (the stall timer runs). */
  #carrierBackedUp = false;
  /** A barge-in being timed: when `voiceActivityStart` came, and the first mark its `clear` flushed. */
  #bargeInAt = 0;
  #bargeInMark: string | undefined;

  /** AUDIO_IN_BATCH_MS: decoded caller audio waiting to fill one `audioIn` (undefined when off). */
  readonly #batch: Buffer | undefined;
  #batchLen = 0;

  /** Sweep bookkeeping: media frames seen, and when that count last moved. */
  #mediaIn = 0;
  #sweepMediaIn = -1;
  #lastMediaMoveAt = performance.now();

  readonly #badSeen = new Set<string>();
  #framesUp = 0;
  #framesDown = 0;
  #bargeIns = 0;

  /** Operator tool calls waiting for their answer. */
  #toolsInFlight = 0;

  /** The resume note (what happened to a transfer) was given to the agent. */
  #noteSent = false;
  /** A transfer is under way (asked for, waiting for playout, or handed to the carrier). */
  #transferring = false;
  /** The call went to a transfer: its slot belongs to the transfer now, not to this session. */
  #slotHandedOff = false;
  /** The carrier is being asked to take the call (the slot's owner is decided by its answer). */
  #transferInFlight = false;
  /** How the session ended while a transfer was in flight (counted if the transfer then fails). */
  #closedDuringTransfer: EndReason | undefined;

  /** Keypad digits being gathered into one message for the agent. */
  readonly #dtmf: DtmfGatherer<DtmfAction>;
  /** Keypad messages waiting for the agent to be ready. */
  readonly #dtmfWaiting: Array<{ digits: string; ended: DtmfEnd }> = [];

  /** A closing prompt is playing in the stream: the echo of its last mark ends the call. */
  #promptPlaying = false;
  /** Where the call goes once the closing prompt has played (overflow: forwarded to a number), instead of ending. */
  #forwardAfterPrompt: string | undefined;

  constructor(deps: CallSessionDeps) {
    this.#d = deps;
    this.#s = deps.settings;
    this.#carrier = deps.carrier;
    this.#metrics = deps.metrics;
    this.callSid = deps.reservation.callSid;
    this.streamSid = deps.streamSid;
    this.#agentRef = AgentDirectory.normalize(deps.reservation.route.agentId) ?? deps.reservation.route.agentId;
    this.#agentsTried.push(this.#agentRef);
    this.slot = deps.reservation.slot;
    this.playback = new PlaybackTracker(this.#s.markIntervalMs);
    this.#pending = new CallerAudioBuffer(this.#s.preInitBufferMs * 8);
    const batchMs = this.#s.audioInBatchMs ?? 0;
    this.#batch = batchMs > 0 ? Buffer.alloc(batchMs * 8) : undefined;
    this.#baseLog = deps.logger.child({ callSid: this.callSid, streamSid: this.streamSid });
    this.#log = this.#baseLog.child({ agentId: this.#agentRef });
    // The first connection is budgeted like a reconnect: its outage starts with the call.
    this.#st = { kind: 'connecting', agent: undefined, openedAt: 0, outage: { startedAt: this.#startedAt, attempts: 0 } };
    const resume = deps.reservation.resume;
    if (resume !== undefined) {
      // A caller back from a transfer nobody answered: the same agent, the same conversation.
      this.#agentRef = AgentDirectory.normalize(resume.agentId) ?? resume.agentId;
      this.#agentsTried[0] = this.#agentRef;
      this.#log = this.#baseLog.child({ agentId: this.#agentRef });
      for (const turn of resume.history) this.#remember(turn);
      if (resume.conversationId !== undefined) {
        this.#conversationId = resume.conversationId;
        this.#conversationAgent = this.#agentRef;
      }
    }
    const hotkeys = new Map(Object.entries(deps.reservation.route.dtmf ?? {}));
    this.#dtmf = new DtmfGatherer<DtmfAction>({
      ...(this.#s.dtmfGatherMs !== undefined ? { gatherMs: this.#s.dtmfGatherMs } : {}),
      hotkeys,
      timer: { set: (ms, fn) => this.#timers.set('dtmf', ms, fn), clear: () => this.#timers.clear('dtmf') },
      emit: (o) => this.#onDtmfGathered(o),
    });
  }

  get state(): SessionState {
    return this.#st.kind;
  }

  get agentConnected(): boolean {
    return this.#st.kind === 'live';
  }

  get agentConnectedOnce(): boolean {
    return this.#everInit;
  }

  get streamDead(): boolean {
    if (this.#st.kind === 'closed' || !this.#carrier.isOpen) return true;
    // Media counted since the last sweep means alive; otherwise the sweep's last sighting decides.
    return this.#mediaIn === this.#sweepMediaIn && performance.now() - this.#lastMediaMoveAt >= STREAM_DEAD_AFTER_MS;
  }

  /** Conversation id from the agent's latest `init`. */
  get conversationId(): string | undefined {
    return this.#conversationId;
  }

  /** The agent serving the call now (`provider:id`). */
  get agentId(): string {
    return this.#agentRef;
  }

  /** The provider of the agent serving the call now. */
  get agentProvider(): AgentProviderName {
    return parseAgentRef(this.#agentRef)?.provider ?? 'playai';
  }

  /** What `GET /v1/live` shows: a few fields read, nothing computed. */
  snapshot(): SessionSnapshot {
    return {
      state: this.#st.kind,
      startedAt: this.#startedAtMs,
      bargeIns: this.#bargeIns,
      agentReconnects: this.#agentReconnects,
      agentId: this.#agentRef,
      agentConnected: this.#st.kind === 'live',
      call: this.#d.reservation.call,
      route: this.#d.reservation.route,
      transferable: this.#d.transfers !== undefined,
    };
  }

  /** Opens the agent leg. Called once by whoever built the session, after registering it. */
  start(): void {
    const call = this.#d.reservation.call;
    this.#log.info({ from: call.from, to: call.to }, 'call started');
    this.#d.journal.record(this.callSid, { type: 'stream_started', streamSid: this.streamSid });
    try {
      this.#pickStartAgent();
      this.#openAgent();
    } catch (err) {
      this.onInternalError(err);
    }
  }

  /**
   * The agent the call starts on: the one admission counted its slot for (the route's agent, or
   * a fallback when it was down or full), or, if that one went down since (an outbound call
   * answering), the first of the route's agent and its fallbacks that is up.
   */
  #pickStartAgent(): void {
    const primary = this.#agentRef;
    const agents = this.#d.agents;
    const options = [primary, ...agents.fallbacksOf(primary)];
    const counted = AgentDirectory.normalize(this.slot.agentId);
    let ref = counted !== undefined && options.includes(counted) ? counted : primary;
    if (agents.isDown(ref)) ref = options.find((r) => !agents.isDown(r) && agents.provider(r) !== undefined) ?? ref;
    if (ref !== this.slot.agentId) this.#d.onAgentSwitched?.(this, ref);
    if (ref === primary) return;
    const why = agents.isDown(primary) ? 'down' : 'capacity';
    this.#agentRef = ref;
    this.#agentsTried.push(ref);
    this.#metrics.agentFallbacksTotal.inc();
    this.#log = this.#baseLog.child({ agentId: ref });
    this.#log.warn({ from: primary, to: ref, why }, 'the call starts on a fallback agent');
    this.#d.journal.record(this.callSid, { type: 'agent_switched', from: primary, to: ref, why });
  }

  /** The ready agent session of this call has ended (`prev` was live): its provider's account has room again. */
  #readySessionEnded(prev: SessionPhase): void {
    if (prev.kind === 'live') this.#d.onAgentSessionEnded?.(this, this.agentProvider);
  }

  // ---------------------------------------------------------------- carrier → session

  onMedia(payload: string): void {
    const buf = Buffer.from(payload, 'latin1');
    this.onMediaBytes(buf, 0, buf.length);
  }

  onMediaBytes(buf: Buffer, start: number, end: number): void {
    this.#mediaIn++;
    const st = this.#st;
    if (st.kind === 'live') {
      const agent = st.agent;
      if (agent.isOpen) {
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
    } else if (st.kind === 'connecting' || st.kind === 'reconnecting') {
      this.#bufferCallerAudio(buf.toString('latin1', start, end));
    }
    // draining / ending: the agent is gone; the caller is hearing the last words.
  }

  /** AUDIO_IN_BATCH_MS: appends a frame's decoded audio; a full batch goes out at once. */
  #addToBatch(buf: Buffer, start: number, end: number): void {
    const batch = this.#batch;
    if (batch === undefined) return;
    const audio = Buffer.from(buf.toString('latin1', start, end), 'base64');
    for (let off = 0; off < audio.length; ) {
      const n = audio.copy(batch, this.#batchLen, off);
      this.#batchLen += n;
      off += n;
      if (this.#batchLen === batch.length) this.#flushBatch();
    }
    if (this.#batchLen > 0 && !this.#timers.has('batch')) {
      // A stalled stream must not hold audio back for long.
      this.#timers.set('batch', this.#s.audioInBatchMs ?? 0, this.#onBatchTimer);
    }
  }

  readonly #onBatchTimer = (): void => this.#flushBatch();

  /** Sends the batched caller audio (or keeps it for the reconnect when the agent leg is down). */
  #flushBatch(): void {
    this.#timers.clear('batch');
    if (this.#batch === undefined || this.#batchLen === 0) return;
    const b64 = this.#batch.toString('base64', 0, this.#batchLen);
    const frames = Math.max(1, Math.round(this.#batchLen / 160));
    this.#batchLen = 0;
    const st = this.#st;
    if (st.kind === 'live' && st.agent.isOpen) {
      if (st.agent.bufferedAmount < MAX_AGENT_SOCKET_BUFFER && st.agent.sendAudio(b64)) {
        this.#framesUp += frames;
        this.#metrics.framesUp += frames;
        this.#metrics.bytesUp += base64ByteLength(b64);
      } else {
        this.#metrics.framesLost += frames;
      }
    } else if (st.kind === 'connecting' || st.kind === 'reconnecting' || st.kind === 'live') {
      this.#bufferCallerAudio(b64);
    }
  }

  onMark(name: string): void {
    const result = this.playback.onMarkEcho(name);
    this.#metrics.marksTotal.labels(result).inc();
    if (result === 'played') this.#lastEchoAt = performance.now();
    if (name === this.#bargeInMark) {
      // Twilio echoes the marks a `clear` flushed once playback has stopped.
      this.#bargeInMark = undefined;
      this.#metrics.bargeInClearSeconds.observe((performance.now() - this.#bargeInAt) / 1000);
    }
    if (this.#st.kind === 'draining' && !this.playback.queued) this.close('agent_hangup');
    else if (this.#st.kind === 'ending' && this.#promptPlaying && !this.playback.queued) this.#promptDone();
  }

  /** The closing prompt played: the call ends, or is forwarded (overflow) without a second, robotic message. */
  #promptDone(): void {
    const to = this.#forwardAfterPrompt;
    if (to === undefined || !this.#promptPlaying) {
      this.close(this.#endReason ?? 'internal_error');
      return;
    }
    this.#promptPlaying = false;
    this.#forwardAfterPrompt = undefined;
    this.#timers.clear('grace');
    this.#d.callControl.forward(this.callSid, to).then(
      (accepted) => this.#afterCallControl(accepted),
      () => this.#afterCallControl(false),
    );
  }

  onDtmf(digit: string): void {
    this.#d.journal.record(this.callSid, { type: 'dtmf', digit });
    if (this.#st.kind === 'closed') return;
    if (!this.#dtmf.push(digit)) this.#warnOnce('dtmf:unknown_key', { digit: digit.slice(0, 8) }, 'ignored a keypad event that is not a key (0-9, *, #, A-D)');
  }

  /** Gathered digits go to the agent as one message where its protocol takes text; otherwise they stay in the record. */
  #onDtmfGathered(o: DtmfOutcome<DtmfAction>): void {
    if (o.kind === 'hotkey') {
      void this.requestTransfer({ target: o.action.transfer, mode: o.action.mode, by: 'dtmf' }).then((r) => {
        if (!r.ok) this.#log.warn({ key: o.key, code: r.code, error: r.error }, 'keypad hotkey: transfer not possible');
      });
      return;
    }
    if (this.#d.agents.provider(this.#agentRef)?.acceptsText !== true) {
      this.#d.journal.record(this.callSid, { type: 'dtmf_digits', digits: o.digits, ended: o.ended, delivery: 'not_supported' });
      return;
    }
    const st = this.#st;
    if (st.kind === 'live') {
      this.#sendDtmf(st.agent, o.digits, o.ended);
    } else if (st.kind === 'connecting' || st.kind === 'reconnecting') {
      // Sent once the agent is ready; a caller who keeps typing into an outage keeps the latest.
      if (this.#dtmfWaiting.length >= MAX_DTMF_WAITING) this.#dtmfWaiting.shift();
      this.#dtmfWaiting.push({ digits: o.digits, ended: o.ended });
    }
  }

  #sendDtmf(agent: AgentLeg, digits: string, ended: DtmfEnd): void {
    agent.sendText(dtmfMessage(digits), 'user');
    this.#d.journal.record(this.callSid, { type: 'dtmf_digits', digits, ended, delivery: 'sent' });
  }

  onStop(): void {
    this.close('caller_hangup');
  }

  onClose(code: number): void {
    if (this.#st.kind !== 'closed') this.#log.debug({ code }, 'carrier socket closed');
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
    if (this.#st.kind === 'closed' || this.#st.kind === 'ending') return;
    this.#log.info({ reason }, 'ending the call with a goodbye');
    this.#endWith(reason, 'goodbye');
  }

  /**
   * True once the call went to a transfer (the transfer holds its slot, not this session), and
   * while the carrier is being asked: Twilio may end the stream before its REST answer arrives.
   */
  get slotHandedOff(): boolean {
    return this.#slotHandedOff || this.#transferInFlight;
  }

  /**
   * Hands the call to a person (the API, a keypad hotkey, the agent's transfer_call). A target
   * is looked up by name among the route's, agent's or campaign's; a name that is not declared is
   * refused (a model never dials a number it made up). When the agent asked, its last words play
   * first. Resolves once the carrier took the call, or with why it could not (the call then stays
   * with the agent).
   */
  requestTransfer(req: TransferRequest): Promise<TransferStart> {
    const port = this.#d.transfers;
    if (port === undefined) return Promise.resolve({ ok: false, code: 'unavailable', error: 'this call cannot be transferred (a browser call, or no carrier that can redirect calls: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN)' });
    if (this.#st.kind !== 'live') return Promise.resolve({ ok: false, code: 'not_live', error: `the call is ${this.#st.kind}, not talking to its agent: it cannot be transferred now` });
    if (this.#transferring) return Promise.resolve({ ok: false, code: 'in_progress', error: 'a transfer of this call is already under way' });
    let target: TransferTargetInfo;
    if (req.to !== undefined) {
      target = { to: req.to, timeoutS: DEFAULT_TRANSFER_TIMEOUT_S };
    } else {
      const found = lookupTarget(this.#d.agents.transferTargets({ agentId: this.#agentRef, transferTargets: this.#d.reservation.route.transferTargets }), req.target ?? '');
      if (!found.ok) return Promise.resolve({ ok: false, code: 'unknown_target', error: found.error });
      target = { name: found.name, to: found.target.to, timeoutS: found.target.timeoutS, ...(found.target.callerId !== undefined ? { callerId: found.target.callerId } : {}) };
    }
    this.#transferring = true;
    const id = port.requested({ callSid: this.callSid, mode: req.mode, by: req.by, target, ...(req.reason !== undefined ? { reason: req.reason } : {}) });
    this.#log.info({ target: target.name, mode: req.mode, by: req.by }, 'transfer requested');
    return new Promise<TransferStart>((resolve) => {
      const go = (): void => {
        this.#beginTransfer(port, id, req, target).then(resolve, (err: unknown) => {
          this.onInternalError(err);
          resolve({ ok: false, code: 'carrier_refused', error: 'the transfer failed inside Playline' });
        });
      };
      // The agent announced the transfer: let those words reach the caller (a redirect cuts audio still queued at Twilio).
      if (req.by === 'tool') this.#afterPlayout(performance.now() + TRANSFER_PLAYOUT_MAX_MS, go);
      else go();
    });
  }

  /** Runs `fn` once the agent's response is over and its audio has played (or at `deadline`). */
  #afterPlayout(deadline: number, fn: () => void): void {
    const now = performance.now();
    const quietFor = now - this.#lastAgentAudioAt;
    const streaming = this.#responseStreaming && quietFor < END_CALL_QUIET_MS;
    const playingFor = Math.max(0, this.#playEnd - now);
    if ((!streaming && playingFor === 0) || now >= deadline || this.#st.kind !== 'live') {
      fn();
      return;
    }
    this.#timers.set('transfer', Math.min(deadline - now, Math.max(20, streaming ? END_CALL_QUIET_MS - quietFor : playingFor)), () => this.#afterPlayout(deadline, fn));
  }

  async #beginTransfer(port: TransferPort, id: string, req: TransferRequest, target: TransferTargetInfo): Promise<TransferStart> {
    const st = this.#st;
    if (st.kind !== 'live') {
      this.#transferring = false;
      return { ok: false, code: 'not_live', error: 'the call ended before the transfer could start' };
    }
    const route = { ...this.#d.reservation.route, agentId: this.#agentRef };
    this.#transferInFlight = true;
    let r: Awaited<ReturnType<TransferPort['begin']>>;
    try {
      r = await this.#askCarrier(port, id, req, target, route);
    } finally {
      this.#transferInFlight = false;
    }
    if (!r.ok) {
      this.#transferring = false;
      const ended = this.#closedDuringTransfer;
      if (ended !== undefined) {
        // The call ended while the carrier was asked, and the transfer did not happen: the slot and the count are this session's after all.
        this.#d.releaseSlot?.(this.slot);
        this.#metrics.callsTotal.labels(ended).inc();
      }
      return { ok: false, code: 'carrier_refused', error: r.error };
    }
    if (this.#st.kind === 'closed') {
      // The stream ended while the carrier was asked (Twilio stops it as it runs the new TwiML): the transfer holds the slot.
      this.#slotHandedOff = true;
      return { ok: true, transferId: r.id };
    }
    return this.#handOff(r.id);
  }

  #askCarrier(port: TransferPort, id: string, req: TransferRequest, target: TransferTargetInfo, route: CallRoute): ReturnType<TransferPort['begin']> {
    return port.begin({
      id,
      callSid: this.callSid,
      call: this.#d.reservation.call,
      route,
      slot: this.slot,
      target,
      mode: req.mode,
      by: req.by,
      ...(req.reason !== undefined ? { reason: req.reason } : {}),
      summary: req.summary ?? this.#transferSummary(),
      resume: { agentId: this.#agentRef, history: [...this.#history], ...(this.#conversationId !== undefined && this.#conversationAgent === this.#agentRef ? { conversationId: this.#conversationId } : {}) },
    });
  }

  /** The carrier runs the transfer now and stops this stream: the agent session ends, the slot stays with the call. */
  #handOff(transferId: string): TransferStart {
    this.#slotHandedOff = true;
    this.#endReason ??= 'transferred';
    const now = this.#st;
    this.#st = { kind: 'ending' };
    this.#readySessionEnded(now);
    this.#timers.clear('init');
    this.#timers.clear('retry');
    this.#timers.clear('drain');
    agentOf(now)?.close(1000, 'call transferred');
    this.#timers.set('grace', this.#s.callControlGraceMs, this.#onGraceTimeout);
    return { ok: true, transferId };
  }

  /** One sentence for the person in a warm transfer when the agent gave none: who calls, and their last words. */
  #transferSummary(): string {
    const lastUser = [...this.#history].reverse().find((t) => t.role === 'user')?.text;
    const call = this.#d.reservation.call;
    const who = call.direction === 'inbound' ? `A caller from ${call.from}` : `The person at ${call.to}`;
    if (lastUser === undefined) return `${who} is being transferred to you.`;
    const words = lastUser.length > 200 ? `${lastUser.slice(0, 200)}…` : lastUser;
    return `${who} is being transferred to you. They last said: ${words}`;
  }

  sweep(now: number): void {
    if (this.#st.kind === 'closed') return;
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
    if (now - this.#startedAt >= this.#s.maxCallMs && this.#st.kind !== 'ending') {
      this.endWithGoodbye('max_duration');
    }
  }

  // ---------------------------------------------------------------- agent leg

  /** Opens an agent leg for the `connecting`/`reconnecting` state (which then holds it) and starts its init timer. */
  #openAgent(): void {
    const st = this.#st;
    if (st.kind !== 'connecting' && st.kind !== 'reconnecting') return;
    const ref = this.#agentRef;
    const provider = this.#d.agents.provider(ref);
    if (provider === undefined) {
      // Config refuses to start without a provider for the default agent; a route or campaign may still name another.
      this.#log.error({ agent: ref }, 'no provider is configured for this agent: set its API key (see "Choose your agent" in the README)');
      this.#agentRefused({ kind: 'fatal', code: 'not_configured', message: 'provider not configured', legDone: true });
      return;
    }
    const route = this.#d.reservation.route;
    const call = this.#d.reservation.call;
    const request = this.#d.agents.request(
      { agentId: ref, prompt: route.prompt, customGreeting: route.customGreeting, transferTargets: route.transferTargets, noTransfer: this.#d.transfers === undefined, tools: route.tools },
      { callSid: call.callSid, from: call.from, to: call.to, direction: call.direction },
      this.#resumeFor(provider.resumesById),
    );

    let leg: AgentLeg | undefined;
    // Events from a leg the session no longer holds (it was dropped) are ignored.
    const current = (): boolean => leg !== undefined && leg === agentOf(this.#st);
    const guarded =
      <A extends unknown[]>(fn: (...args: A) => void) =>
      (...args: A): void => {
        if (!current()) return;
        try {
          fn(...args);
        } catch (err) {
          this.onInternalError(err);
        }
      };
    const events: AgentEvents = {
      ready: guarded((info: { conversationId: string }) => this.#onReady(info.conversationId)),
      // The hot path: no rest-argument wrapper.
      audio: (buf, start, end) => {
        if (!current()) return;
        try {
          this.#onAgentAudioBytes(buf, start, end);
        } catch (err) {
          this.onInternalError(err);
        }
      },
      responseStart: guarded((info?: { dropsPrevious?: boolean }) => this.#onResponseStart(info?.dropsPrevious === true)),
      responseDone: guarded(() => this.#onResponseDone()),
      callerSpeechStart: guarded(() => this.#onCallerSpeechStart()),
      transcript: guarded((role: 'user' | 'agent', text: string) => this.#onTranscript(role, text)),
      toolCall: guarded((tc: AgentToolCall) => this.#onToolCall(tc)),
      hangup: guarded((reason: string) => this.#onAgentHangup(reason)),
      error: guarded((err: AgentError) => this.#onAgentError(err)),
      badFrame: (kind, name) => this.#onAgentBadFrame(kind, name),
      closed: guarded((info: AgentCloseInfo) => this.#onAgentClose(info)),
    };
    st.openedAt = performance.now();
    this.#log = this.#baseLog.child(this.#conversationId === undefined ? { agentId: ref } : { agentId: ref, conversationId: this.#conversationId });
    leg = provider.connect({ request, events, log: this.#log, heartbeatMs: this.#s.agentHeartbeatMs });
    st.agent = leg;
    this.#timers.set('init', this.#s.agentInitTimeoutMs, this.#onInitTimeout);
  }

  /** What a new agent session continues from: the conversation id where the provider resumes by id, else the transcript so far. */
  #resumeFor(byId: boolean): AgentRequest['resume'] {
    const conversationId = byId && this.#conversationAgent === this.#agentRef ? this.#conversationId : undefined;
    if (conversationId === undefined && this.#history.length === 0) return undefined;
    return conversationId === undefined ? { history: [...this.#history] } : { conversationId, history: [...this.#history] };
  }

  readonly #onInitTimeout = (): void => {
    const kind = this.#st.kind;
    if (kind === 'connecting' || kind === 'reconnecting') {
      this.#log.warn({ timeoutMs: this.#s.agentInitTimeoutMs }, 'agent was not ready in time');
      this.#d.agents.reportConnectFailure(this.#agentRef, 'not ready in time');
      this.#agentLost('init timeout', 'agent_init_timeout');
    }
  };

  #onReady(conversationId: string): void {
    const st = this.#st;
    if (st.kind !== 'connecting' && st.kind !== 'reconnecting') {
      this.#warnOnce('agent:duplicate_init', {}, 'ignored a second ready from the agent');
      return;
    }
    const agent = st.agent;
    if (agent === undefined) return; // events only come from the leg the state holds
    this.#timers.clear('init');
    const now = performance.now();
    this.#metrics.agentInitSeconds.observe((now - st.openedAt) / 1000);
    this.#d.agents.reportReady(this.#agentRef);
    const reconnected = st.kind === 'reconnecting';
    if (conversationId !== this.#conversationId) {
      this.#conversationId = conversationId;
      this.#log = this.#baseLog.child({ agentId: this.#agentRef, conversationId });
    }
    this.#conversationAgent = this.#agentRef;
    this.#d.journal.record(this.callSid, { type: 'agent_ready', conversationId, reconnected });
    // The outage is over only once this leg has stayed up AGENT_STABLE_MS (see reconnect.ts).
    this.#st = { kind: 'live', agent, since: now, outage: st.outage };
    this.#d.onAgentSessionReady?.(this, this.agentProvider);
    this.#everInit = true;
    this.#responseStreaming = false;
    this.#responseBytes = 0;
    const buffered = this.#pending.length;
    if (reconnected) {
      this.#agentReconnects++;
      this.#metrics.agentReconnectsTotal.labels('success').inc();
      this.#log.info({ outageMs: Math.round(now - st.outage.startedAt), bufferedFrames: buffered }, 'agent reconnected');
    } else {
      this.#log.info({ bufferedFrames: buffered }, 'agent ready');
    }
    this.#flushPending(agent);
    const note = this.#d.reservation.resume?.note;
    if (note !== undefined && !this.#noteSent && this.#d.agents.provider(this.#agentRef)?.acceptsText === true) {
      this.#noteSent = true;
      agent.sendText(note, 'user');
    }
    for (const w of this.#dtmfWaiting.splice(0)) this.#sendDtmf(agent, w.digits, w.ended);
  }

  /** A new agent response: audio of an interrupted one is over; PlayAI's `newAudioStream` also drops what is still queued. */
  #onResponseStart(dropsPrevious: boolean): void {
    if (this.#st.kind !== 'live') return;
    if (dropsPrevious && this.playback.queued) this.#clearPlayback();
    this.#dropAgentAudio = false;
    this.#responseStreaming = true;
    this.#responseBytes = 0;
  }

  /** The agent sent all audio of its response: mark its tail now, and end the call if it asked to once done talking. */
  #onResponseDone(): void {
    this.#responseStreaming = false;
    this.#flushTailMark();
    if (this.#endCallPending) {
      this.#endCallPending = false;
      this.#timers.clear('endcall');
      this.#onAgentHangup('end_call');
    }
  }

  /** The caller started speaking while the agent may be talking: barge-in, and tell the agent what was heard. */
  #onCallerSpeechStart(): void {
    const st = this.#st;
    if (st.kind !== 'live') return;
    const heard = this.#heardPos();
    // Audio of an earlier response still playing when this one started: its end was not heard either.
    const boundary = this.#responseBytes > 0 ? this.#responseStartPos : this.#sentTotal;
    const previousUnplayedMs = Math.max(0, boundary - heard) / 8;
    if (this.#responseBytes > 0 && (this.#responseStreaming || this.playback.queued)) {
      st.agent.interrupted(Math.round(Math.max(0, Math.min(this.#responseBytes, heard - this.#responseStartPos)) / 8), Math.round(previousUnplayedMs));
    } else if (previousUnplayedMs > 0 && this.playback.queued) {
      st.agent.interrupted(0, Math.round(previousUnplayedMs));
    }
    if (this.#endCallPending) {
      // "Wait, one more thing": the caller spoke over the goodbye, so the call goes on.
      this.#endCallPending = false;
      this.#timers.clear('endcall');
      this.#log.info('caller spoke during the goodbye; the call goes on');
    }
    this.#responseStreaming = false;
    this.#responseBytes = 0;
    this.#bargeIn();
  }

  /**
   * How far into the agent audio sent so far the caller has heard (bytes, in `#sentTotal`'s
   * coordinates). Two estimates, the lower wins: the playback clock (audio sent, less what is
   * still queued at Twilio if it plays in real time), and Twilio's mark echoes (audio confirmed
   * played, plus at most one mark interval since the last echo), so a Twilio that plays late is
   * not taken to have played.
   */
  #heardPos(): number {
    const now = performance.now();
    let heard = this.#sentTotal - Math.max(0, this.#playEnd - now) * 8;
    if (this.#lastEchoAt > 0) heard = Math.min(heard, this.playback.playedBytes + Math.min(this.#s.markIntervalMs, now - this.#lastEchoAt) * 8);
    return Math.max(0, Math.min(this.#sentTotal, heard));
  }

  /** An `end_call` waits for its response to finish: done once the agent audio has stopped coming. */
  readonly #onEndCallTimer = (): void => {
    if (!this.#endCallPending) return;
    const quietFor = performance.now() - this.#lastAgentAudioAt;
    if (this.#responseStreaming && quietFor < END_CALL_QUIET_MS) {
      this.#timers.set('endcall', END_CALL_QUIET_MS - quietFor, this.#onEndCallTimer);
      return;
    }
    this.#endCallPending = false;
    this.#onAgentHangup('end_call');
  };

  #onTranscript(role: 'user' | 'agent', text: string): void {
    if (text === '') return;
    this.#d.journal.record(this.callSid, { type: 'transcript', role, text });
    this.#remember({ role, text });
  }

  /** Keeps a turn for a later agent session (bounded: the newest turns, a huge turn's end). */
  #remember({ role, text }: ConversationTurn): void {
    const kept = text.length > MAX_HISTORY_CHARS ? `…${text.slice(-MAX_HISTORY_CHARS)}` : text;
    this.#history.push({ role, text: kept });
    this.#historyChars += kept.length;
    while (this.#history.length > MAX_HISTORY_TURNS || (this.#historyChars > MAX_HISTORY_CHARS && this.#history.length > 1)) {
      this.#historyChars -= this.#history.shift()?.text.length ?? 0;
    }
  }

  #onToolCall(tc: AgentToolCall): void {
    const st = this.#st;
    if (st.kind !== 'live') return;
    if (tc.name === END_CALL_TOOL.name) {
      const reason = typeof tc.args.reason === 'string' ? tc.args.reason.slice(0, 200) : undefined;
      this.#log.info({ reason }, 'agent asked to end the call');
      st.agent.toolResult(tc.id, JSON.stringify({ ok: true }), false);
      // The goodbye may still be streaming: the call ends once the response is done and has played.
      if (this.#responseStreaming) {
        this.#endCallPending = true;
        this.#timers.set('endcall', END_CALL_QUIET_MS, this.#onEndCallTimer);
      } else {
        this.#onAgentHangup('end_call');
      }
      return;
    }
    if (tc.name === 'transfer_call' && this.#d.transfers !== undefined) {
      const agent = st.agent;
      const str = (v: unknown): string | undefined => (typeof v === 'string' && v.trim() !== '' ? v.trim().slice(0, 500) : undefined);
      const target = str(tc.args.target) ?? '';
      const reason = str(tc.args.reason);
      const mode: TransferMode = tc.args.mode === 'warm' ? 'warm' : 'cold';
      void this.requestTransfer({ target, mode, by: 'tool', ...(reason !== undefined ? { reason, summary: reason } : {}) }).then((r) => {
        // Told only when the call stays: a transfer that went through closes this agent session.
        if (r.ok) return;
        if (agentOf(this.#st) === agent) agent.toolResult(tc.id, r.error, true);
      });
      return;
    }
    const def = this.#d.tools === undefined ? undefined : (this.#d.reservation.route.tools?.find((t) => t.name === tc.name) ?? this.#d.agents.httpTool(this.#agentRef, tc.name));
    if (def !== undefined && this.#d.tools !== undefined) {
      this.#runTool(this.#d.tools, st.agent, tc, def);
      return;
    }
    this.#warnOnce(`agent-tool:${tc.name.slice(0, 64)}`, { tool: tc.name.slice(0, 64) }, 'the agent called a tool Playline does not offer; answered with an error');
    st.agent.toolResult(tc.id, `unknown tool ${tc.name}: use only the tools you were given`, true);
  }

  /**
   * An operator tool: POSTed to the operator's URL while the call goes on; the answer (or the
   * failure, as a tool error) goes back to the agent session that asked, if it is still there.
   */
  #runTool(runner: ToolRunner, agent: AgentLeg, tc: AgentToolCall, def: HttpToolDef): void {
    if (this.#toolsInFlight >= MAX_TOOLS_IN_FLIGHT) {
      this.#metrics.toolCallsTotal.labels('busy').inc();
      agent.toolResult(tc.id, `${MAX_TOOLS_IN_FLIGHT} tool calls are already running: wait for their answers first`, true);
      return;
    }
    this.#toolsInFlight++;
    this.#d.journal.record(this.callSid, { type: 'tool_called', tool: def.name, argsBytes: Buffer.byteLength(JSON.stringify(tc.args)) });
    this.#log.debug({ tool: def.name, args: tc.args }, 'operator tool called');
    const done = (out: HttpToolOutcome): void => {
      this.#toolsInFlight--;
      this.#metrics.toolCallsTotal.labels(out.ok ? 'ok' : out.failure).inc();
      if (this.#st.kind === 'closed') return;
      const { ms } = out;
      this.#d.journal.record(
        this.callSid,
        out.ok
          ? { type: 'tool_result', tool: def.name, ok: true, ms, status: out.status, bytes: out.bytes }
          : { type: 'tool_result', tool: def.name, ok: false, ms, failure: out.failure, ...(out.status !== undefined ? { status: out.status } : {}), ...(out.bytes !== undefined ? { bytes: out.bytes } : {}) },
      );
      if (!out.ok) this.#log.warn({ tool: def.name, failure: out.failure, status: out.status, ms }, 'operator tool failed; the agent was told');
      const st = this.#st;
      if (st.kind !== 'live' || st.agent !== agent) {
        this.#log.info({ tool: def.name }, 'operator tool answered after the agent session that asked had ended; not sent');
        return;
      }
      agent.toolResult(tc.id, out.ok ? out.result : out.error, !out.ok);
    };
    runner.run(this.callSid, def, tc.args).then(done, () => done({ ok: false, failure: 'network', error: `the ${def.name} tool failed; tell the caller it cannot be done right now`, ms: 0 }));
  }

  /** Agent audio (base64 μ-law in `buf[start, end)`) to the caller, without decoding it. */
  #onAgentAudioBytes(buf: Buffer, start: number, end: number): void {
    if (this.#st.kind !== 'live') return;
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
    if (this.#carrier.bufferedAmount > MAX_CARRIER_SOCKET_BUFFER) {
      this.#onCarrierBackpressure();
      return;
    }
    if (this.#carrierBackedUp) {
      this.#carrierBackedUp = false;
      this.#timers.clear('stall');
    }
    if (end - start <= MAX_MEDIA_PAYLOAD_CHARS) {
      this.#sendAgentMedia(buf, start, end);
    } else {
      // An oversized chunk goes out as several messages (4-character cuts: each piece is valid base64).
      for (let at = start; at < end; at += MAX_MEDIA_PAYLOAD_CHARS) this.#sendAgentMedia(buf, at, Math.min(end, at + MAX_MEDIA_PAYLOAD_CHARS));
    }
    if (!this.#firstAudioSeen) {
      this.#firstAudioSeen = true;
      this.#metrics.firstAgentAudioSeconds.observe((performance.now() - this.#startedAt) / 1000);
    }
  }

  /** One `media` message to Twilio, and a mark when about MARK_INTERVAL_MS of audio went out unmarked. */
  #sendAgentMedia(buf: Buffer, start: number, end: number): void {
    this.#carrier.sendMediaBytes(buf, start, end);
    const bytes = base64ByteLengthOf(buf, start, end);
    const now = performance.now();
    this.#playEnd = (this.#playEnd > now ? this.#playEnd : now) + bytes / 8;
    if (this.#responseBytes === 0) this.#responseStartPos = this.#sentTotal;
    this.#responseBytes += bytes;
    this.#sentTotal += bytes;
    this.#lastAgentAudioAt = now;
    this.#framesDown++;
    this.#metrics.framesDown++;
    this.#metrics.bytesDown += bytes;
    const mark = this.playback.onAudioSent(bytes);
    if (mark !== undefined) {
      // This mark covers everything sent so far: no tail mark is due until more audio comes.
      this.#timers.clear('tail');
      this.#sendMark(mark);
    } else if (!this.#timers.has('tail')) {
      this.#timers.set('tail', this.#s.markIntervalMs, this.#onTailMarkTimer);
    }
  }

  /** Twilio's socket is not draining: the agent audio is dropped, and the call ends if it stays so. */
  #onCarrierBackpressure(): void {
    this.#metrics.agentFramesDroppedBackpressure++;
    if (this.#carrierBackedUp) return;
    this.#carrierBackedUp = true;
    this.#warnOnce('carrier_backpressure', { bufferedBytes: this.#carrier.bufferedAmount }, 'Twilio socket is not draining; dropping agent audio');
    this.#timers.set('stall', CARRIER_STALL_MS, this.#onStallTimer);
  }

  readonly #onStallTimer = (): void => {
    this.#carrierBackedUp = false;
    const buffered = this.#carrier.bufferedAmount;
    if (buffered <= MAX_CARRIER_SOCKET_BUFFER) return;
    this.#log.warn({ bufferedBytes: buffered, stalledMs: CARRIER_STALL_MS }, 'Twilio socket stopped draining; ending the call');
    this.close('carrier_stalled');
  };

  readonly #onTailMarkTimer = (): void => this.#flushTailMark();

  #flushTailMark(): void {
    this.#timers.clear('tail');
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
    const at = performance.now();
    const flushed = this.#clearPlayback();
    this.#dropAgentAudio = true;
    this.#bargeIns++;
    this.#metrics.bargeInsTotal.inc();
    this.#d.journal.record(this.callSid, { type: 'barge_in', count: this.#bargeIns });
    // Timed until Twilio echoes the first mark the clear flushed (playback has stopped then).
    if (flushed !== undefined) {
      this.#bargeInAt = at;
      this.#bargeInMark = flushed;
    }
  }

  /** Sends `clear` and forgets the flushed marks (their echoes become stale). Returns the first flushed mark, if any. */
  #clearPlayback(): string | undefined {
    this.#carrier.sendClear();
    const flushed = this.playback.reset();
    // What was flushed never plays: sent and played are counted alike from here.
    this.#sentTotal = this.playback.playedBytes;
    this.#playEnd = 0;
    this.#timers.clear('tail');
    return flushed;
  }

  #onAgentHangup(endedBy: string | undefined): void {
    const st = this.#st;
    if (st.kind !== 'live' && st.kind !== 'connecting' && st.kind !== 'reconnecting') return;
    this.#log.info({ endedBy }, 'agent hung up');
    this.#endReason ??= 'agent_hangup';
    this.#st = { kind: 'draining' };
    this.#readySessionEnded(st);
    this.#timers.clear('init');
    this.#timers.clear('retry');
    st.agent?.close(1000, 'call ended');
    this.#flushTailMark();
    if (!this.playback.queued) {
      this.close('agent_hangup');
      return;
    }
    // Let the last words play; the echo of the final mark ends the call (see onMark). Without
    // echoes, give up a little after the audio should have played, and never later than the bound.
    const remainingMs = Math.max(0, this.#playEnd - performance.now());
    this.#timers.set('drain', Math.min(this.#s.hangupDrainMs, remainingMs + PLAYBACK_SLACK_MS), this.#onDrainTimeout);
  }

  readonly #onDrainTimeout = (): void => {
    this.#log.info({ pendingMarks: this.playback.pendingMarks }, 'playback did not confirm in time after agent hangup');
    this.close('agent_hangup');
  };

  #onAgentError(err: AgentError): void {
    this.#metrics.agentErrorsTotal.labels(this.agentProvider, err.code, String(err.legDone)).inc();
    if (!err.legDone) {
      this.#log.warn({ code: err.code, agentMessage: err.message }, 'agent reported a non-fatal error');
      return;
    }
    const kind = this.#st.kind;
    if (kind !== 'live' && kind !== 'connecting' && kind !== 'reconnecting') return;
    // Health counts what says the agent is unreachable or refusing everyone (not capacity, not a
    // refusal of this call's own request, which other calls need not share).
    if (kind !== 'live' && (err.kind === 'transient' || err.kind === 'auth')) this.#d.agents.reportConnectFailure(this.#agentRef, `${err.kind} ${err.code}`);
    if (err.kind === 'transient') {
      this.#log.warn({ code: err.code, agentMessage: err.message }, 'agent reported a retryable error');
      this.#agentLost(`error ${err.code}`);
      return;
    }
    if (err.kind === 'capacity') {
      this.#metrics.agentCapacityTotal.inc();
      this.#d.onAgentCapacityExceeded(this, this.agentProvider);
    }
    this.#log.error({ code: err.code, kind: err.kind, agentMessage: err.message }, err.kind === 'auth' ? 'agent refused our credentials: check the provider API key' : 'agent refused the call; a reconnect cannot fix it');
    this.#agentRefused(err);
  }

  /** The agent refused the call for good (capacity, credentials, a bad request): a fallback agent takes it, or the caller is told. */
  #agentRefused(err: AgentError): void {
    if (this.#switchAgent(`${err.kind} ${err.code}`)) return;
    if (err.kind === 'capacity') this.#endWith('agent_capacity', 'busy', this.#s.overflow);
    else this.#endWith('agent_error', 'apology');
  }

  #onAgentClose(info: AgentCloseInfo): void {
    const kind = this.#st.kind;
    if (info.byUs || kind === 'closed' || kind === 'ending' || kind === 'draining') return;
    const why = info.error ?? `closed with ${info.code}`;
    this.#log.warn({ code: info.code, reason: info.reason, error: info.error, state: kind }, 'agent socket closed without hangup');
    if (kind !== 'live') this.#d.agents.reportConnectFailure(this.#agentRef, why);
    this.#agentLost(why);
  }

  /**
   * The agent leg is gone (or useless) without a hangup: reconnect within the budget (resuming
   * the conversation), then a fallback agent if there is one, or end the call with an apology.
   */
  #agentLost(why: string, failReason: EndReason = 'agent_unreachable'): void {
    const st = this.#st;
    if (st.kind !== 'live' && st.kind !== 'connecting' && st.kind !== 'reconnecting') return;
    if (this.#endCallPending) {
      // The agent had already said goodbye and asked to end the call: do that, no reconnect.
      this.#endCallPending = false;
      this.#onAgentHangup('end_call');
      return;
    }
    // An agent that failed before the call ever reached it, or that is now marked down, is not
    // retried when a fallback can take the call at once.
    if ((!this.#everInit || this.#d.agents.isDown(this.#agentRef)) && this.#switchAgent(why)) return;
    this.#timers.clear('init');
    const now = performance.now();
    let outage: Outage;
    if (st.kind === 'live') {
      this.#readySessionEnded(st);
      outage = outageAfterLoss(this.#s.reconnect, st.outage, st.since, now);
      this.#pending.setMaxBytes(this.#s.reconnect.bufferMs * 8);
      this.#st = { kind: 'reconnecting', agent: undefined, openedAt: 0, outage };
    } else {
      outage = st.outage;
      this.#st = { kind: st.kind, agent: undefined, openedAt: 0, outage };
    }
    st.agent?.close(1000, 'call ended');
    this.#responseStreaming = false;
    this.#endCallPending = false;
    this.#flushBatch(); // with the agent gone, batched audio joins the reconnect buffer
    const elapsed = now - outage.startedAt;
    const decision = nextRetry(this.#s.reconnect, outage, this.#retries, now, this.#d.random?.() ?? Math.random());
    if (!decision.retry) {
      if (this.#everInit) this.#metrics.agentReconnectsTotal.labels('gave_up').inc();
      this.#log.error(
        { why, attempts: outage.attempts, outageMs: Math.round(elapsed), callRetries: this.#retries, spent: decision.spent },
        'agent leg lost; reconnect budget spent',
      );
      if (this.#switchAgent(why)) return;
      this.#endWith(failReason, 'apology');
      return;
    }
    outage.attempts++;
    this.#retries++;
    this.#log.warn({ why, attempt: outage.attempts, delayMs: Math.round(decision.delayMs) }, 'agent leg lost; reconnecting');
    this.#timers.set('retry', decision.delayMs, this.#onRetryTimer);
  }

  /**
   * Hands the call to the next fallback of the route's agent (AGENTS_FILE `fallback`) that this
   * call has not tried and that is not down. The new agent gets the conversation so far and a
   * fresh reconnect budget. False when there is none.
   */
  #switchAgent(why: string): boolean {
    const st = this.#st;
    if (st.kind !== 'live' && st.kind !== 'connecting' && st.kind !== 'reconnecting') return false;
    const first = this.#agentsTried[0] ?? this.#agentRef;
    const next = this.#d.agents.fallbacksOf(first).find((ref) => !this.#agentsTried.includes(ref) && !this.#d.agents.isDown(ref) && this.#d.agents.provider(ref) !== undefined);
    if (next === undefined) return false;
    const from = this.#agentRef;
    this.#timers.clear('init');
    this.#timers.clear('retry');
    this.#readySessionEnded(st);
    agentOf(st)?.close(1000, 'call ended');
    this.#agentRef = next;
    this.#agentsTried.push(next);
    this.#d.onAgentSwitched?.(this, next);
    // A fresh reconnect budget for the new agent.
    this.#retries = 0;
    this.#responseStreaming = false;
    this.#endCallPending = false;
    const outage: Outage = { startedAt: performance.now(), attempts: 0 };
    if (this.#everInit) this.#pending.setMaxBytes(this.#s.reconnect.bufferMs * 8);
    this.#st = { kind: this.#everInit ? 'reconnecting' : 'connecting', agent: undefined, openedAt: 0, outage };
    this.#flushBatch();
    this.#metrics.agentFallbacksTotal.inc();
    this.#log.warn({ from, to: next, why }, 'handing the call to a fallback agent');
    this.#d.journal.record(this.callSid, { type: 'agent_switched', from, to: next, why });
    this.#openAgent();
    return true;
  }

  readonly #onRetryTimer = (): void => {
    const kind = this.#st.kind;
    if (kind !== 'connecting' && kind !== 'reconnecting') return;
    if (this.#everInit) this.#metrics.agentReconnectsTotal.labels('attempt').inc();
    try {
      this.#openAgent();
    } catch (err) {
      this.onInternalError(err);
    }
  };

  #onAgentBadFrame(kind: AgentBadFrameKind, name?: string): void {
    if (kind === 'unknown_type') {
      this.#metrics.agentUnknownMessagesTotal.inc();
      this.#warnOnce(`agent-unknown:${(name ?? '').slice(0, 64)}`, { type: name?.slice(0, 64) }, 'ignored an agent message of unknown type');
      return;
    }
    this.#metrics.badFramesTotal.labels('agent', kind).inc();
    this.#warnOnce(`agent:${kind}`, { kind, type: name }, 'dropped a bad frame from the agent');
  }

  // ---------------------------------------------------------------- caller audio while the agent is not ready

  #bufferCallerAudio(payload: string): void {
    const dropped = this.#pending.push(payload);
    if (dropped === 0) return;
    this.#metrics.framesLost += dropped;
    this.#warnOnce('buffer_overflow', { maxMs: this.#pending.maxMs }, 'caller audio buffer full while the agent is not ready; dropping oldest');
  }

  #flushPending(agent: AgentLeg): void {
    this.#pending.drain((payload) => {
      if (agent.sendAudio(payload)) {
        this.#framesUp++;
        this.#metrics.framesUp++;
        this.#metrics.bytesUp += base64ByteLength(payload);
      } else {
        this.#metrics.framesLost++;
      }
    });
  }

  // ---------------------------------------------------------------- ending

  /**
   * Ends the call through call control: speaks `text` (or forwards the call),
   * then Twilio tears the stream down. If the carrier cannot do it (no REST
   * credentials, request failed) the stream is closed and the TwiML falls
   * through to `<Hangup/>`.
   */
  #endWith(reason: EndReason, kind: 'apology' | 'busy' | 'goodbye', overflow?: SessionSettings['overflow']): void {
    const st = this.#st;
    if (st.kind === 'closed' || st.kind === 'ending') return;
    this.#endReason ??= reason;
    this.#st = { kind: 'ending' };
    this.#readySessionEnded(st);
    this.#timers.clear('init');
    this.#timers.clear('retry');
    this.#timers.clear('drain');
    agentOf(st)?.close(1000, 'call ended');
    const forwardTo = overflow?.action === 'dial' ? overflow.fallbackNumber : undefined;
    const text = this.#s.texts[kind];
    const spoken: SpokenKind = forwardTo === undefined ? kind : 'forward';
    this.#d.journal.record(this.callSid, { type: 'spoke', kind: spoken, text });
    // Said in the agent's voice into the live stream, then the call ends (or, at overflow, is
    // forwarded) after its last mark: no REST round trip to speak, no robot voice.
    const prompt = this.#d.prompts?.cached(kind);
    if (prompt !== undefined && this.#playPrompt(prompt.audio)) {
      this.#forwardAfterPrompt = forwardTo;
      this.#d.prompts?.count(kind, 'stream');
      return;
    }
    this.#d.prompts?.count(kind, 'say');
    const request =
      forwardTo === undefined ? this.#d.callControl.sayAndHangup(this.callSid, text) : this.#d.callControl.forward(this.callSid, forwardTo, text);
    request.then(
      (accepted) => this.#afterCallControl(accepted),
      () => this.#afterCallControl(false),
    );
  }

  /**
   * Plays a closing prompt (raw μ-law) into the stream after whatever agent audio is still
   * queued is cleared, with playback marks; the echo of the last one ends the call (see onMark),
   * or a timer a little after it should have played. False when the stream cannot take it.
   */
  #playPrompt(audio: Buffer): boolean {
    if (!this.#carrier.isOpen || audio.length === 0 || this.#carrier.bufferedAmount > MAX_CARRIER_SOCKET_BUFFER) return false;
    if (this.playback.queued) this.#clearPlayback();
    this.#promptPlaying = true;
    const b64 = Buffer.from(audio.toString('base64'), 'latin1');
    for (let at = 0; at < b64.length; at += MAX_MEDIA_PAYLOAD_CHARS) this.#sendAgentMedia(b64, at, Math.min(b64.length, at + MAX_MEDIA_PAYLOAD_CHARS));
    this.#flushTailMark();
    const remainingMs = Math.max(0, this.#playEnd - performance.now());
    this.#timers.set('grace', remainingMs + PLAYBACK_SLACK_MS, this.#onPromptTimeout);
    return true;
  }

  readonly #onPromptTimeout = (): void => {
    this.#log.info({ pendingMarks: this.playback.pendingMarks, forwarding: this.#forwardAfterPrompt !== undefined }, 'playback of the closing prompt did not confirm in time; going on');
    this.#promptDone();
  };

  #afterCallControl(accepted: boolean): void {
    if (this.#st.kind === 'closed') return;
    if (!accepted) {
      this.close(this.#endReason ?? 'internal_error');
      return;
    }
    // Twilio now runs the new TwiML and stops the stream; close it ourselves if it does not.
    this.#timers.set('grace', this.#s.callControlGraceMs, this.#onGraceTimeout);
  }

  readonly #onGraceTimeout = (): void => this.close(this.#endReason ?? 'internal_error');

  /** Ends the call now, from any state. Idempotent; releases every socket, timer and slot. */
  close(reason: EndReason): void {
    const previous = this.#st;
    if (previous.kind === 'closed') return;
    this.#st = { kind: 'closed' };
    try {
      this.#readySessionEnded(previous);
    } catch (err) {
      this.#log.error({ err }, 'reporting the agent session end failed');
    }
    const outcome = this.#endReason ?? reason;
    try {
      this.#dtmf.close();
      this.#dtmfWaiting.length = 0;
      this.#timers.clearAll();
      this.#batchLen = 0;
      this.#bargeInMark = undefined;
      agentOf(previous)?.close(1000, 'call ended');
      if (this.#carrier.isOpen) this.#carrier.close(1000, 'call ended');
      this.#metrics.framesLost += this.#pending.clear();
      const durationMs = Math.round(performance.now() - this.#startedAt);
      // A call handed to a person is counted by its transfer (once), not by this session; while the
      // carrier is still being asked, the count waits for its answer.
      if (this.#transferInFlight) this.#closedDuringTransfer = outcome;
      else if (!this.#slotHandedOff) this.#metrics.callsTotal.labels(outcome).inc();
      this.#log.info(
        {
          outcome,
          previousState: previous.kind,
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
    // Bounded: a peer sending endless new message types cannot grow it (or the log) without limit.
    if (this.#badSeen.has(key) || this.#badSeen.size >= 64) return;
    this.#badSeen.add(key);
    this.#log.warn(obj, msg);
  }
}
