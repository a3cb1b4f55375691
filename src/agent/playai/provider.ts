/**
 * The PlayAI agent protocol (`/v1/talk/{agentId}`) behind the agent port: any
 * PlayAI-protocol server, the built-in local agent among them.
 *
 * `setup` asks for μ-law 8 kHz both ways, so audio passes through untouched.
 * A lost session is resumed by id (`continueConversation`). The protocol has
 * no tools and no barge-in truncation (the agent keeps its own transcript);
 * text goes in as `customInput` (its semantics are not documented: sent for
 * the caller's words, nothing for context).
 */
import { createTranscoder, TWILIO_FORMAT, type Transcoder } from '../../audio/transcode.js';
import { stripWavHeader } from '../../audio/wav.js';
import type { AgentConnectOptions, AgentError, AgentErrorKind, AgentEvents, AgentLeg, AgentProvider } from '../port.js';
import { NON_RETRYABLE_AGENT_ERRORS, RETRYABLE_AGENT_ERRORS, isFatalAgentError, type AgentServerMessage, type AgentSetup } from './codec.js';
import { connectAgent as connectPlayAiSocket, type PlayAiCloseInfo, type PlayAiConnector, type PlayAiSocket } from './leg.js';

export interface PlayAiProviderOptions {
  /** Base URL, e.g. `wss://api.play.ai`; sockets go to `${baseUrl}/v1/talk/{agentId}`. */
  baseUrl: string;
  apiKey?: string | undefined;
  /** The socket transport (tests and the lifecycle fuzz pass their own). */
  connect?: PlayAiConnector;
}

/** Documented codes, as themselves in metric labels; anything else is `other`. */
const KNOWN_CODES: ReadonlySet<number> = new Set([...NON_RETRYABLE_AGENT_ERRORS, ...RETRYABLE_AGENT_ERRORS]);

/** What an error code means to the bridge (the PlayAI docs' list; see playai-agent-protocol.md §2). */
export function classifyPlayAiError(code: number | undefined): AgentErrorKind {
  switch (code) {
    case 1001: // invalid token
    case 1003: // invalid credentials
    case 4401: // unauthorized
      return 'auth';
    case 4429: // maximum concurrent connections exceeded
      return 'capacity';
    case 1002: // invalid agent id
    case 1005: // insufficient credits
    case 4400: // bad parameters or message
      return 'fatal';
    default:
      return 'transient';
  }
}

export function createPlayAiProvider(opts: PlayAiProviderOptions): AgentProvider {
  return {
    name: 'playai',
    resumesById: true,
    supportsTools: false,
    // `customInput` exists, but what an agent does with it is not documented: digits are not sent.
    acceptsText: false,
    connect: (o) => new PlayAiAgentLeg(opts, o),
  };
}

class PlayAiAgentLeg implements AgentLeg {
  readonly #socket: PlayAiSocket;
  readonly #events: AgentEvents;
  /** Caller audio to the agent's input format, when it is not μ-law 8 kHz (AGENTS_FILE `format`). */
  readonly #toAgent: Transcoder | undefined;
  /** Agent audio from its output format to μ-law 8 kHz, when it is not μ-law 8 kHz. */
  readonly #fromAgent: Transcoder | undefined;
  #ready = false;
  /** An error frame already said why this socket ends: its close adds nothing. */
  #errorReported = false;

  constructor(p: PlayAiProviderOptions, o: AgentConnectOptions) {
    this.#events = o.events;
    const r = o.request;
    const setup: AgentSetup = { type: 'setup', inputEncoding: 'mulaw', inputSampleRate: 8000, outputFormat: 'mulaw', outputSampleRate: 8000 };
    // An agent that cannot speak μ-law 8 kHz is asked for 16-bit PCM and converted; the others pass through.
    const input = r.format?.input;
    const output = r.format?.output;
    if (input !== undefined && input.encoding === 'linear16') {
      setup.inputEncoding = 'linear16';
      setup.inputSampleRate = input.sampleRate;
    } else if (input !== undefined) {
      setup.inputSampleRate = input.sampleRate;
    }
    if (output !== undefined && output.encoding === 'linear16') {
      setup.outputFormat = 'raw';
      setup.outputSampleRate = output.sampleRate;
    } else if (output !== undefined) {
      setup.outputSampleRate = output.sampleRate;
    }
    this.#toAgent = input === undefined ? undefined : createTranscoder(TWILIO_FORMAT, input);
    this.#fromAgent = output === undefined ? undefined : createTranscoder(output, TWILIO_FORMAT);
    if (this.#toAgent !== undefined || this.#fromAgent !== undefined) {
      o.log.debug({ input: input ?? TWILIO_FORMAT, output: output ?? TWILIO_FORMAT }, 'PlayAI-protocol agent set to another audio format: converting');
    }
    if (p.apiKey !== undefined) setup.apiKey = p.apiKey;
    if (r.instructions !== undefined) setup.prompt = r.instructions;
    // A resumed conversation is not greeted again. A PlayAI agent taking over from another agent
    // (no conversation of its own to continue, and no way to read the history) starts with its
    // greeting rather than in silence.
    if (r.greeting !== undefined && r.resume?.conversationId === undefined) setup.customGreeting = r.greeting;
    if (r.resume?.conversationId !== undefined) setup.continueConversation = r.resume.conversationId;
    const events = this.#events;
    this.#socket = (p.connect ?? connectPlayAiSocket)({
      baseUrl: p.baseUrl,
      agentId: r.id,
      setup,
      heartbeatMs: o.heartbeatMs,
      handlers: {
        onMessage: (msg) => this.#onMessage(msg),
        onAudio: (buf, start, end) => {
          if (this.#fromAgent === undefined) events.audio(buf, start, end);
          else this.#agentAudio(buf.toString('latin1', start, end));
        },
        onBadFrame: (kind, name) => events.badFrame(kind, name),
        onClose: (info) => this.#onClose(info),
      },
    });
  }

  get bufferedAmount(): number {
    return this.#socket.bufferedAmount;
  }

  get isOpen(): boolean {
    return this.#socket.isOpen;
  }

  sendAudio(b64: string): boolean {
    if (this.#toAgent === undefined) return this.#socket.sendAudio(b64);
    if (!this.#socket.isOpen) return false;
    const out = this.#toAgent.push(b64);
    return out.length === 0 || this.#socket.sendAudio(out);
  }

  sendAudioBytes(buf: Buffer, start: number, end: number): boolean {
    if (this.#toAgent === undefined) return this.#socket.sendAudioBytes(buf, start, end);
    return this.sendAudio(buf.toString('latin1', start, end));
  }

  /** Agent audio in its own format (base64): converted to μ-law 8 kHz for the session. */
  #agentAudio(b64: string): void {
    const t = this.#fromAgent;
    if (t === undefined) return;
    let data = b64;
    // A WAV-wrapped chunk ("UklGR" = base64 of "RIFF"): its header is not audio.
    if (data.startsWith('UklGR')) {
      const pcm = stripWavHeader(Buffer.from(data, 'base64'));
      if (pcm === undefined) return;
      data = Buffer.from(pcm).toString('base64');
    }
    const out = t.push(data);
    if (out.length > 0) this.#events.audio(Buffer.from(out, 'latin1'), 0, out.length);
  }

  interrupted(): void {
    // The agent detected the caller's speech itself and keeps its own record of what was said.
  }

  sendText(text: string, as: 'user' | 'context'): void {
    if (as === 'user') this.#socket.sendText?.(text);
  }

  toolResult(): void {
    // The PlayAI protocol has no client tools.
  }

  close(code = 1000, reason = ''): void {
    this.#socket.close(code, reason);
  }

  #error(code: number | undefined, message: string, legDone: boolean): void {
    const err: AgentError = {
      kind: legDone ? classifyPlayAiError(code) : 'transient',
      code: code === undefined ? 'none' : KNOWN_CODES.has(code) ? String(code) : 'other',
      message,
      legDone,
    };
    if (legDone) this.#errorReported = true;
    this.#events.error(err);
  }

  #onMessage(msg: AgentServerMessage): void {
    const e = this.#events;
    switch (msg.type) {
      case 'audioStream':
        // The slow path (a frame the fast scanner did not take): rare, so a Buffer is made here.
        if (this.#fromAgent !== undefined) this.#agentAudio(msg.data);
        else e.audio(Buffer.from(msg.data, 'latin1'), 0, msg.data.length);
        return;
      case 'init':
        if (this.#ready) {
          e.badFrame('unexpected', 'init');
          return;
        }
        this.#ready = true;
        e.ready({ conversationId: msg.conversationId });
        return;
      case 'newAudioStream':
        // A new stream does not continue the previous one's samples.
        this.#fromAgent?.reset();
        e.responseStart({ dropsPrevious: true });
        return;
      case 'audioStreamEnd':
        e.responseDone();
        return;
      case 'voiceActivityStart':
        this.#fromAgent?.reset();
        e.callerSpeechStart();
        return;
      case 'hangup':
        // Clients ignore anything before `init` (playai-agent-protocol.md §2.4).
        if (!this.#ready) {
          e.badFrame('unexpected', 'hangup');
          return;
        }
        // `endedBy: "error"` is the agent failing, not ending the call: worth a reconnect.
        if (msg.endedBy === 'error') {
          this.#error(undefined, 'the agent ended the conversation with an error', true);
          this.#socket.close(1000, 'agent error');
          return;
        }
        e.hangup(msg.endedBy ?? 'agent');
        return;
      case 'error':
        this.#error(msg.code, msg.message, isFatalAgentError(msg.code, msg.isFatal));
        return;
      case 'onUserTranscript':
        e.transcript('user', msg.message);
        return;
      case 'onAgentTranscript':
        e.transcript('agent', msg.message);
        return;
      case 'unknown':
        e.badFrame('unknown_type', msg.name);
        return;
      case 'voiceActivityEnd':
      case 'onAgentInterrupted':
      case 'ignored':
        return;
    }
  }

  #onClose(info: PlayAiCloseInfo): void {
    // A close code that mirrors a documented error (4400, 4401, 4429) means what that error would.
    if (!info.byUs && !this.#errorReported && info.code >= 4000 && NON_RETRYABLE_AGENT_ERRORS.has(info.code)) {
      this.#error(info.code, info.reason, true);
    } else if (!info.byUs && !this.#errorReported && this.#ready && info.code === 1000 && info.error === undefined) {
      // A clean close without `hangup` after `init`: the official clients take it as the agent
      // ending the call (playai-agent-protocol.md §2.5). A going-away (1001) or an abnormal close reconnects.
      this.#events.hangup('agent');
    }
    this.#events.closed(info.error === undefined ? { code: info.code, reason: info.reason, byUs: info.byUs } : { code: info.code, reason: info.reason, error: info.error, byUs: info.byUs });
  }
}
