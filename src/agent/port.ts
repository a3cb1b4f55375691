/**
 * The agent port: what a call session needs from a voice agent, whatever the
 * provider. Each provider (PlayAI protocol, OpenAI Realtime, ElevenLabs
 * Agents, Deepgram Voice Agent) lives in its own folder under `src/agent/`
 * with its codec and client, and implements {@link AgentProvider}; nothing
 * outside that folder knows its wire format.
 *
 * Audio crossing the port is always base64 μ-law 8 kHz mono, the Twilio
 * format: an adapter whose provider speaks μ-law 8 kHz passes bytes through
 * untouched (the hot path: no decoding, no per-frame allocation it can avoid);
 * one whose agent is set to another format converts with `audio/transcode.ts`.
 *
 * The session keeps what is ours: holding caller audio until the agent is
 * ready, barge-in (Twilio `clear`, marks), reconnects and fallback, capacity,
 * transcripts on the call record, clean ends.
 */
import type { Logger } from 'pino';

/** The providers Playline speaks to. */
export const AGENT_PROVIDERS = ['playai', 'openai', 'elevenlabs', 'deepgram'] as const;
export type AgentProviderName = (typeof AGENT_PROVIDERS)[number];

/** A tool the agent may call; `parameters` is a JSON Schema object. */
export interface AgentTool {
  name: string;
  description: string;
  parameters: Record<string, unknown>;
}

/** The tool every agent whose provider supports tools is offered: the agent ends the call after its last words. */
export const END_CALL_TOOL: AgentTool = {
  name: 'end_call',
  description: 'End the phone call. Say goodbye first; the call ends once your last words have played.',
  parameters: { type: 'object', properties: { reason: { type: 'string', description: 'Why the call ends' } } },
};

/** One turn of the conversation so far (for a new session that continues an earlier one). */
export interface ConversationTurn {
  role: 'user' | 'agent';
  text: string;
}

/** Audio formats an agent may be configured to speak or hear (when it cannot do μ-law 8 kHz). */
export interface AgentAudioFormat {
  encoding: 'mulaw' | 'linear16';
  sampleRate: number;
}

/** What a call asks of its agent: the agent's settings merged with the call's route. */
export interface AgentRequest {
  /** The provider's own id of the agent: PlayAI agent id, OpenAI model, ElevenLabs agent_id, Deepgram configuration name. */
  id: string;
  /** Instructions or prompt (PlayAI `prompt` is appended to the agent's own). */
  instructions?: string;
  /** What the agent says first (PlayAI `customGreeting`, ElevenLabs `first_message`, Deepgram `greeting`, OpenAI an initial response). */
  greeting?: string;
  voice?: string;
  /** Model where the provider lets the caller choose it (OpenAI model, Deepgram think model). */
  model?: string;
  /** BCP 47 language, e.g. `en`. */
  language?: string;
  /** Tools offered to the agent (always includes {@link END_CALL_TOOL} where tools are supported). */
  tools: AgentTool[];
  /** The audio format the agent is set to, when it is not μ-law 8 kHz (the adapter converts). */
  format?: { input?: AgentAudioFormat; output?: AgentAudioFormat };
  /** The call, for providers that take caller context (dynamic variables, user id). */
  call: { callSid: string; from: string; to: string; direction: string };
  /**
   * Continue an earlier conversation (a reconnect, or a fallback agent taking over): the
   * provider's own id where it can resume by id (PlayAI `continueConversation`), and the
   * conversation so far as text for the others.
   */
  resume?: { conversationId?: string; history: ConversationTurn[] };
}

/**
 * How an agent failure is handled:
 * - `auth`: credentials refused (not retried; the agent is marked down; fallback if any);
 * - `capacity`: too many concurrent sessions on the account (PlayAI 4429 and its equivalents;
 *   feeds the adaptive capacity; busy prompt or fallback);
 * - `transient`: worth a reconnect;
 * - `fatal`: a reconnect cannot fix it (bad agent id, bad request, quota): apology or fallback.
 */
export type AgentErrorKind = 'auth' | 'capacity' | 'transient' | 'fatal';

export interface AgentError {
  kind: AgentErrorKind;
  /** The provider's code, for logs and the `code` label (bounded: adapters only pass documented codes, else `other`). */
  code: string;
  message: string;
  /** True when this socket is done (the session reconnects or ends by `kind`); false for a warning the call survives. */
  legDone: boolean;
}

export interface AgentCloseInfo {
  code: number;
  reason: string;
  /** Set when the socket failed (network error, handshake refused, heartbeat lost). */
  error?: string;
  /** True when `close()` was called by us. */
  byUs: boolean;
}

/** A tool call from the agent. */
export interface AgentToolCall {
  id: string;
  name: string;
  /** Parsed arguments (an object; `{}` when the provider sent none or unparsable JSON). */
  args: Record<string, unknown>;
}

/** Bad input from an agent socket (a metric label). */
export type AgentBadFrameKind =
  | 'binary'
  | 'non_json'
  | 'not_object'
  | 'invalid_fields'
  | 'bad_audio'
  | 'oversized'
  /** A message that is valid but out of place (a second session confirmation…). */
  | 'unexpected'
  /** A message type nobody documented: counted in `agent_unknown_messages_total` and ignored. */
  | 'unknown_type';

/** What an adapter tells the session. Every handler is called synchronously from the socket's events. */
export interface AgentEvents {
  /** Ready for audio (PlayAI `init`, OpenAI `session.updated`, ElevenLabs metadata, Deepgram `SettingsApplied`). */
  ready(info: { conversationId: string }): void;
  /**
   * Agent audio, base64 μ-law 8 kHz in `buf[start, end)` (already converted if the agent
   * speaks another format). The hot path: `buf` is only valid during the call.
   */
  audio(buf: Buffer, start: number, end: number): void;
  /**
   * A new agent response starts: audio of an interrupted response is over. `dropsPrevious`
   * (PlayAI `newAudioStream`) also stops what is still playing of the previous response;
   * otherwise a response that follows another plays after it.
   */
  responseStart(info?: { dropsPrevious?: boolean }): void;
  /** The agent has sent all audio of its current response (it may still be playing). */
  responseDone(): void;
  /** The caller started speaking while the agent talked: barge-in. */
  callerSpeechStart(): void;
  /** A final user or agent turn. */
  transcript(role: 'user' | 'agent', text: string): void;
  toolCall(call: AgentToolCall): void;
  /** The agent ended the conversation itself (PlayAI `hangup`, ElevenLabs' own end of call). */
  hangup(reason: string): void;
  error(err: AgentError): void;
  /** A frame that was dropped (counted; the call goes on). `name` is the message type when known. */
  badFrame(kind: AgentBadFrameKind, name?: string): void;
  /** The socket is gone (closed by either side, failed to connect, or missed heartbeats). Called once. */
  closed(info: AgentCloseInfo): void;
}

/** What the session may do with a connected agent. */
export interface AgentLeg {
  /** Caller audio, base64 μ-law 8 kHz (validated). False if the socket is not open. */
  sendAudio(b64: string): boolean;
  /** The same, from `buf[start, end)` without making a string of it (the hot path). */
  sendAudioBytes(buf: Buffer, start: number, end: number): boolean;
  /**
   * The caller interrupted the agent: `playedMs` of the current response's audio reached the
   * caller (from Twilio's mark echoes and the playback clock). Providers that keep a
   * transcript of what was said truncate it there (OpenAI `conversation.item.truncate`).
   * `previousUnplayedMs`: the earlier response's audio was still playing (a new response
   * started before it ended), and this much of its end never reached the caller.
   */
  interrupted(playedMs: number, previousUnplayedMs?: number): void;
  /** Text for the agent: as the caller's words (`user`: it answers) or as context only. */
  sendText(text: string, as: 'user' | 'context'): void;
  /** The result of a tool call: its JSON text, or with `isError` the error message in plain words (the adapter wraps it as its protocol wants). */
  toolResult(id: string, result: string, isError: boolean): void;
  /** Bytes queued in the socket but not yet written. */
  readonly bufferedAmount: number;
  readonly isOpen: boolean;
  close(code?: number, reason?: string): void;
}

export interface AgentConnectOptions {
  request: AgentRequest;
  events: AgentEvents;
  /** The call's logger (bound to callSid…); adapters log through it, never audio or secrets. */
  log: Logger;
  /** Ping interval on the socket; two silent intervals end it. 0 disables. */
  heartbeatMs: number;
}

/** One provider: how to open a session with one of its agents. */
export interface AgentProvider {
  readonly name: AgentProviderName;
  /** True when a lost session can be resumed by its conversation id (PlayAI); the others get the history as text. */
  readonly resumesById: boolean;
  /** True when the provider takes tools (end_call and later transfer). */
  readonly supportsTools: boolean;
  /** True when the caller's words can be sent as text (keypad digits go to the agent this way). */
  readonly acceptsText: boolean;
  /** Opens a session; events arrive through `opts.events`. Never throws: failures arrive as `error`/`closed`. */
  connect(opts: AgentConnectOptions): AgentLeg;
}

/** `provider:id` of an agent, e.g. `openai:gpt-realtime`. */
export interface AgentRef {
  provider: AgentProviderName;
  id: string;
}

/** `provider:id` or a bare PlayAI id; ids are 1 to 128 letters, digits, and `_ - . /` (OpenAI models have dots). */
export const AGENT_REF_PATTERN = /^(?:(?:playai|openai|elevenlabs|deepgram):)?[A-Za-z0-9_][A-Za-z0-9_./-]{0,127}$/;
/** What {@link AGENT_REF_PATTERN} accepts, in words (completes "… is not "). */
export const AGENT_REF_TEXT = `an agent like openai:gpt-realtime, elevenlabs:<agent id>, deepgram:<name> or playai:<agent id> (providers: ${AGENT_PROVIDERS.join(', ')})`;

/** Parses `provider:id`; a bare id (no known provider prefix) is a PlayAI agent id. */
export function parseAgentRef(text: string): AgentRef | undefined {
  const i = text.indexOf(':');
  if (i > 0) {
    const provider = text.slice(0, i);
    const id = text.slice(i + 1);
    if ((AGENT_PROVIDERS as readonly string[]).includes(provider)) return id.length > 0 ? { provider: provider as AgentProviderName, id } : undefined;
  }
  // A bare provider name (`openai`) is a mistake for `openai:<id>`, not a PlayAI agent of that name.
  if ((AGENT_PROVIDERS as readonly string[]).includes(text)) return undefined;
  return text.length > 0 && !text.includes(':') ? { provider: 'playai', id: text } : undefined;
}

export function formatAgentRef(ref: AgentRef): string {
  return `${ref.provider}:${ref.id}`;
}
