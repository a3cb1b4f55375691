/**
 * Turns what the call record learns into `call.*` events, in order per call:
 * `call.started` first (once), then `call.updated` and `call.transcript`,
 * then `call.ended`. Whoever reports first about a call this process has not
 * announced yet (the inbound webhook, the dial loop, a status callback, the
 * session) gets `call.started` published for it before its own event.
 *
 * Cheap and never throwing: called from the recorder and the carrier
 * callbacks, per turn or per status change, never per frame.
 */
import { callToApi } from '../calls/view.js';
import type { CallRow } from '../store/calls.js';
import type { CallChange, EventInput } from './types.js';

export type Publish = (e: EventInput) => void;

/** Most calls remembered as announced (each is forgotten at its `call.ended`; this only bounds leaks). */
const MAX_OPEN = 50_000;
/** Calls remembered as ended, so a straggling report does not announce them again. */
const MAX_ENDED = 4096;

function durations(row: CallRow): Record<string, number | null> {
  return {
    ringSeconds: row.answeredAt !== null && row.dialedAt !== null ? Math.max(0, Math.round((row.answeredAt - row.dialedAt) / 1000)) : null,
    talkSeconds: row.durationS,
    totalSeconds: row.endedAt !== null ? Math.round((row.endedAt - (row.dialedAt ?? row.createdAt)) / 1000) : null,
  };
}

export class CallEvents {
  readonly #publish: Publish;
  /** Calls announced with `call.started` and not ended yet, by row id. */
  readonly #open = new Set<string>();
  /** Calls ended recently, oldest first. */
  readonly #ended = new Set<string>();

  constructor(publish: Publish) {
    this.#publish = publish;
  }

  /** A call record starts existing for a live call (admitted, dialed, or first heard of). Once per call. */
  started(row: CallRow): void {
    if (this.#open.has(row.id) || row.finalizedAt !== null || this.#ended.has(row.id)) return;
    if (this.#open.size >= MAX_OPEN) {
      const oldest = this.#open.values().next();
      if (oldest.done !== true) this.#open.delete(oldest.value);
    }
    this.#open.add(row.id);
    this.#emit({ type: 'call.started', callId: row.id, campaignId: row.campaignId ?? undefined, data: { call: callToApi(row) } });
  }

  /** Something changed on a live call. `row` is announced first if it was not. */
  updated(row: CallRow, change: CallChange, details: Record<string, unknown> = {}): void {
    if (this.#ended.has(row.id)) return;
    this.started(row);
    this.#emit({ type: 'call.updated', callId: row.id, campaignId: row.campaignId ?? undefined, data: { change, ...details } });
  }

  /** One final user or agent turn. */
  transcript(row: CallRow, role: 'user' | 'agent', text: string): void {
    if (this.#ended.has(row.id)) return;
    this.started(row);
    this.#emit({ type: 'call.transcript', callId: row.id, campaignId: row.campaignId ?? undefined, data: { role, text } });
  }

  /** The call is final. Only for calls announced here or that reached the carrier (a canceled queued call never started). */
  ended(row: CallRow): void {
    const announced = this.#open.delete(row.id);
    if ((!announced && row.callSid === null) || this.#ended.has(row.id)) return;
    if (this.#ended.size >= MAX_ENDED) {
      const oldest = this.#ended.values().next();
      if (oldest.done !== true) this.#ended.delete(oldest.value);
    }
    this.#ended.add(row.id);
    this.#emit({ type: 'call.ended', callId: row.id, campaignId: row.campaignId ?? undefined, data: { call: callToApi(row), durations: durations(row) } });
  }

  /** Calls announced and not ended (tests). */
  get openCalls(): number {
    return this.#open.size;
  }

  #emit(e: EventInput): void {
    try {
      this.#publish(e);
    } catch {
      // Events are best effort: a failing bus never reaches a call.
    }
  }
}
