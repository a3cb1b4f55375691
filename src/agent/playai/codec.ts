/**
 * PlayAI agent WebSocket protocol (`/v1/talk/{agentId}`): pure codec.
 *
 * Parsing is tolerant, like PlayAI's own clients: unknown `type`s are reported
 * as `{ type: 'unknown' }` so the caller can count and ignore them, and unknown
 * fields are dropped. Fields the bridge acts on are checked, never cast.
 */
import { isBase64 } from '../../audio/base64.js';
import { parseJsonObject } from '../../util/json.js';

/** Fields of the first client frame. */
export interface AgentSetup {
  type: 'setup';
  apiKey?: string;
  /** `mulaw` 8000 (the passthrough); `linear16` only for an agent set up in AGENTS_FILE `format`. */
  inputEncoding: 'mulaw' | 'linear16';
  inputSampleRate: number;
  /** `mulaw` 8000 (the passthrough); `raw` (16-bit PCM) only for an agent set up in AGENTS_FILE `format`. */
  outputFormat: 'mulaw' | 'raw';
  outputSampleRate: number;
  prompt?: string;
  customGreeting?: string;
  continueConversation?: string;
}

export type AgentServerMessage =
  | { type: 'init'; conversationId: string; agentOwnerId: string | undefined }
  | { type: 'audioStream'; data: string }
  | { type: 'newAudioStream' }
  | { type: 'voiceActivityStart' }
  | { type: 'voiceActivityEnd' }
  | { type: 'hangup'; endedBy: string | undefined }
  | { type: 'error'; code: number | undefined; message: string; isFatal: boolean | undefined }
  | { type: 'onUserTranscript'; message: string }
  | { type: 'onAgentTranscript'; message: string }
  | { type: 'onAgentInterrupted'; updatedMessage: string | undefined }
  | { type: 'audioStreamEnd' }
  /** A documented message the bridge has no use for (greeting events, logs, metrics…). */
  | { type: 'ignored'; name: string }
  /** A `type` nobody documented: counted and ignored. */
  | { type: 'unknown'; name: string };

export type AgentBadFrameKind = 'binary' | 'non_json' | 'not_object' | 'invalid_fields' | 'bad_audio' | 'oversized';

export interface AgentDecodeError {
  type: undefined;
  kind: AgentBadFrameKind;
  name?: string;
}

/** Documented server messages the bridge deliberately ignores. */
const IGNORED_TYPES = new Set([
  'audioStreamStart',
  'onAgentGreeting',
  'onAgentGreetingEnd',
  'llmStreamEnd',
  'customEvent',
  'exchangeMetrics',
  'SYS_LOG',
  'MEDIA_LOG',
  'navigate',
  'uiEvent',
]);

const bad = (kind: AgentBadFrameKind, name?: string): AgentDecodeError =>
  name === undefined ? { type: undefined, kind } : { type: undefined, kind, name: name.slice(0, 40) };

const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

/** Decodes one text frame from the agent. Never throws. */
export function decodeAgentMessage(text: string): AgentServerMessage | AgentDecodeError {
  const o = parseJsonObject(text);
  if (typeof o === 'string') return bad(o);
  const type = o.type;
  if (typeof type !== 'string') return bad('invalid_fields');
  switch (type) {
    case 'audioStream': {
      const data = o.data;
      if (typeof data !== 'string') return bad('invalid_fields', type);
      if (!isBase64(data)) return bad('bad_audio', type);
      return { type, data };
    }
    case 'init': {
      const conversationId = o.conversationId;
      if (typeof conversationId !== 'string' || conversationId.length === 0 || conversationId.length > 256) {
        return bad('invalid_fields', type);
      }
      return { type, conversationId, agentOwnerId: str(o.agentOwnerId) };
    }
    case 'newAudioStream':
    case 'voiceActivityStart':
    case 'voiceActivityEnd':
    case 'audioStreamEnd':
      return { type };
    case 'hangup':
      return { type, endedBy: str(o.endedBy) };
    case 'error': {
      const code = typeof o.code === 'number' && Number.isFinite(o.code) ? o.code : typeof o.code === 'string' && /^\d+$/.test(o.code) ? Number(o.code) : undefined;
      return {
        type,
        code,
        message: (str(o.message) ?? '').slice(0, 500),
        isFatal: typeof o.isFatal === 'boolean' ? o.isFatal : undefined,
      };
    }
    case 'onUserTranscript':
    case 'onAgentTranscript': {
      const message = str(o.message);
      if (message === undefined) return bad('invalid_fields', type);
      return { type, message };
    }
    case 'onAgentInterrupted':
      return { type, updatedMessage: str(o.updatedMessage) };
    default:
      return IGNORED_TYPES.has(type) ? { type: 'ignored', name: type } : { type: 'unknown', name: type.slice(0, 40) };
  }
}

/** Serialises the `setup` frame (always the first frame on the agent socket). */
export function encodeSetup(setup: AgentSetup): string {
  return JSON.stringify(setup);
}

/** `audioIn` is `AUDIO_IN_HEAD + base64 + AUDIO_IN_TAIL` (shared with the byte-level encoder in leg.ts). */
export const AUDIO_IN_HEAD = '{"type":"audioIn","data":"';
export const AUDIO_IN_TAIL = '"}';
/** `data` must be validated base64 (it needs no JSON escaping). */
export function encodeAudioIn(data: string): string {
  return AUDIO_IN_HEAD + data + AUDIO_IN_TAIL;
}

/**
 * Error codes documented for the agent socket. Codes the bridge must not retry
 * (bad credentials, bad agent, no credits, bad request, unauthorised, concurrency).
 */
export const NON_RETRYABLE_AGENT_ERRORS: ReadonlySet<number> = new Set([1001, 1002, 1003, 1005, 4400, 4401, 4429]);
/** Codes worth a reconnect with `continueConversation`. */
export const RETRYABLE_AGENT_ERRORS: ReadonlySet<number> = new Set([3001, 3002, 3003, 3004, 4500, 5001]);

/**
 * Whether an `error` frame ends the agent session. `isFatal` wins when present;
 * otherwise documented non-retryable and retryable codes are fatal for this socket.
 */
export function isFatalAgentError(code: number | undefined, isFatal: boolean | undefined): boolean {
  if (isFatal !== undefined) return isFatal;
  if (code === undefined) return false;
  return NON_RETRYABLE_AGENT_ERRORS.has(code) || RETRYABLE_AGENT_ERRORS.has(code);
}
