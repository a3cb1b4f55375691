/**
 * The agent reconnect budget: pure decisions, no sockets, no timers.
 *
 * An outage starts when the agent leg is lost (or when the call starts: the
 * first connection is budgeted like a reconnect). Each retry counts against
 * the outage's `attempts` and must start within `windowMs` of its start. An
 * outage ends only once a new leg has stayed up `stableMs` after its `init`:
 * a leg lost sooner continues the same outage, so an agent that fails right
 * after every `init` cannot reset the budget. On top of that, a call gets at
 * most `maxPerCall` retries in all.
 */

export interface ReconnectPolicy {
  /** Retries per outage (AGENT_RECONNECT_ATTEMPTS). */
  attempts: number;
  /** An outage's time budget from its start (AGENT_RECONNECT_WINDOW_MS). */
  windowMs: number;
  /** How long a leg must stay up after `init` before its outage is over (AGENT_STABLE_MS). */
  stableMs: number;
  /** Retries per call, all outages together (AGENT_MAX_RECONNECTS_PER_CALL). */
  maxPerCall: number;
}

export interface Outage {
  /** performance.now() when the agent leg was lost (or the call started). */
  readonly startedAt: number;
  /** Retries scheduled in this outage so far. */
  attempts: number;
}

/** Backoff before retry n (ms), before jitter. */
const BACKOFF_MS = [100, 400, 1000, 2000, 3000];

/** Backoff before retry `attempt` (0-based): 100 ms, 400 ms, 1 s, 2 s, then 3 s, each ±25 % by `random()` ∈ [0, 1). */
export function backoffMs(attempt: number, random: number): number {
  const base = BACKOFF_MS[Math.min(attempt, BACKOFF_MS.length - 1)] ?? 1000;
  return base * (0.75 + 0.5 * random);
}

/**
 * The outage a lost leg belongs to: the one its `init` ended when it was up
 * less than `stableMs` (`since` is when that `init` came), otherwise a new one.
 */
export function outageAfterLoss(policy: ReconnectPolicy, ended: Outage | undefined, since: number, now: number): Outage {
  return ended !== undefined && now - since < policy.stableMs ? ended : { startedAt: now, attempts: 0 };
}

export type RetryDecision = { retry: true; delayMs: number } | { retry: false; spent: 'attempts' | 'window' | 'per_call' };

/** Whether to retry now, and after how long; `retriesSoFar` counts the call's retries over all outages. */
export function nextRetry(policy: ReconnectPolicy, outage: Outage, retriesSoFar: number, now: number, random: number): RetryDecision {
  if (outage.attempts >= policy.attempts) return { retry: false, spent: 'attempts' };
  if (retriesSoFar >= policy.maxPerCall) return { retry: false, spent: 'per_call' };
  const delayMs = backoffMs(outage.attempts, random);
  if (now - outage.startedAt + delayMs > policy.windowMs) return { retry: false, spent: 'window' };
  return { retry: true, delayMs };
}
