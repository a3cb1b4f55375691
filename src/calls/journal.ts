/**
 * What a live call tells its record while it runs: the port between a call
 * session and the call-record store. The session knows nothing of tables; the
 * store-backed implementation is {@link CallRecorder} (`recorder.ts`), tests
 * use a recording fake.
 *
 * An implementation must never throw into the session and must stay cheap:
 * these are per-turn events (a few per second at most), never per frame.
 */

import type { DtmfEnd } from '../session/dtmf.js';
import type { HttpToolFailure } from '../tools/http.js';

/** Why a call session ended (the `outcome` label of `playline_calls_total`, `endReason` on the record). */
export const END_REASONS = [
  'caller_hangup',
  'agent_hangup',
  'agent_error',
  'agent_capacity',
  'agent_unreachable',
  'agent_init_timeout',
  'idle',
  'max_duration',
  'carrier_gone',
  'carrier_stalled',
  'api_hangup',
  'shutdown',
  'replaced',
  'internal_error',
] as const;
export type EndReason = (typeof END_REASONS)[number];

/** What Playline itself asked the carrier to say to the caller, and why. */
export type SpokenKind = 'apology' | 'busy' | 'goodbye' | 'forward';

export type CallJournalEntry =
  /** The media stream started: the call is live on this process. */
  | { type: 'stream_started'; streamSid: string }
  /** The agent answered (`init`): first time, or after a reconnect. */
  | { type: 'agent_ready'; conversationId: string; reconnected: boolean }
  /** The call was handed to a fallback agent. */
  | { type: 'agent_switched'; from: string; to: string; why: string }
  /** One final user or agent turn. */
  | { type: 'transcript'; role: 'user' | 'agent'; text: string }
  /** The caller spoke over the agent and its playback was cleared; `count` is the call's barge-ins so far. */
  | { type: 'barge_in'; count: number }
  /** A keypad digit from the caller. */
  | { type: 'dtmf'; digit: string }
  /**
   * Digits gathered into one message (until `#`, a pause or a maximum length) and what became of
   * it: sent to the agent as text, or kept in the record only (the agent's protocol takes no text).
   */
  | { type: 'dtmf_digits'; digits: string; ended: DtmfEnd; delivery: 'sent' | 'not_supported' }
  /** The agent called an operator HTTP tool (arguments are not recorded: they may hold personal data). */
  | { type: 'tool_called'; tool: string; argsBytes: number }
  /** The operator's answer, or why there was none; the model was told either way. */
  | { type: 'tool_result'; tool: string; ok: boolean; ms: number; status?: number; bytes?: number; failure?: HttpToolFailure }
  /** Playline asked the carrier to speak to the caller (or forward the call). */
  | { type: 'spoke'; kind: SpokenKind; text: string }
  /** The session ended and released everything. */
  | { type: 'session_ended'; endReason: EndReason; agentReconnects: number; bargeIns: number; durationMs: number };

export interface CallJournal {
  /** Records one entry for the call. Never throws. */
  record(callSid: string, entry: CallJournalEntry): void;
}

/** A journal that keeps nothing (benchmarks, bare unit tests). */
export const NULL_JOURNAL: CallJournal = { record() {} };
