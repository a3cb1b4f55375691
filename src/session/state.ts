/**
 * The states of a call session, each carrying the resources it holds, so that
 * impossible combinations cannot be written down: a `live` session always has
 * an agent leg, a `draining` or `ending` one never has.
 *
 * Timers are not part of the state: the session keeps them in one table
 * ({@link Timers}) that its close path clears as a whole.
 */
import type { AgentLeg } from '../agent/port.js';
import type { Outage } from './reconnect.js';

/**
 * Waiting for the agent's `init`: the first connection (`connecting`) or after
 * a lost leg (`reconnecting`). `agent` is undefined between a lost leg and the
 * retry that opens the next one. Caller audio is buffered meanwhile.
 */
export interface AwaitingAgent {
  kind: 'connecting' | 'reconnecting';
  agent: AgentLeg | undefined;
  /** performance.now() when `agent` was opened. */
  openedAt: number;
  outage: Outage;
}

/** Audio flows both ways. */
export interface Live {
  kind: 'live';
  agent: AgentLeg;
  /** performance.now() of the `init` that made the session live. */
  since: number;
  /** The outage this `init` ended: a leg lost within AGENT_STABLE_MS of `since` continues it. */
  outage: Outage;
}

/** The agent hung up (its leg is closed); its audio queued at Twilio is finishing. */
export interface Draining {
  kind: 'draining';
}

/** Call control is telling the caller goodbye (or forwarding the call); the agent leg is closed. */
export interface Ending {
  kind: 'ending';
}

export interface Closed {
  kind: 'closed';
}

export type SessionPhase = AwaitingAgent | Live | Draining | Ending | Closed;

/** The state's name: what `CallSession.state` returns. */
export type SessionState = SessionPhase['kind'];

/** The agent leg a phase holds, if any. */
export function agentOf(phase: SessionPhase): AgentLeg | undefined {
  return phase.kind === 'live' || phase.kind === 'connecting' || phase.kind === 'reconnecting' ? phase.agent : undefined;
}
