/**
 * What the outbound engine keeps in memory about attempts in flight; the
 * durable truth is in the store (call rows and contacts). One object, so
 * that every piece (dial loop, carrier callbacks, finalization,
 * reconciliation) reads and changes it the same way.
 *
 * - held slots: a dialed call holds a session-manager slot until it answers
 *   (the slot passes to the call's session) or ends;
 * - active attempts per campaign: `maxConcurrent` counts them;
 * - rechecks: rows to settle with the carrier at a given time;
 * - tasks: dials and post-call work in flight, awaited at shutdown.
 */
import type { Logger } from 'pino';
import type { Slot } from '../session/manager.js';

export interface SlotReleaser {
  releaseSlot(slot: Slot): void;
}

export class Attempts {
  readonly #slots: SlotReleaser;
  readonly #log: Logger;
  readonly #held = new Map<string, { slot: Slot; at: number }>();
  readonly #active = new Map<string, Set<string>>();
  readonly #recheck = new Map<string, number>();
  readonly #dials = new Set<Promise<void>>();
  readonly #afterCall = new Set<Promise<void>>();
  #onActiveRemoved: ((campaignId: string, callId: string) => void) | undefined;

  constructor(slots: SlotReleaser, log: Logger) {
    this.#slots = slots;
    this.#log = log;
  }

  // ------------------------------------------------------------ held slots

  /** The dialed call `callId` holds `slot` from `at`. */
  hold(callId: string, slot: Slot, at: number): void {
    this.#held.set(callId, { slot, at });
  }

  isHeld(callId: string): boolean {
    return this.#held.has(callId);
  }

  /** The slot passes to the call's session (answer): forgotten here, not released. */
  takeHeld(callId: string): Slot | undefined {
    const h = this.#held.get(callId);
    this.#held.delete(callId);
    return h?.slot;
  }

  /** Gives the call's held slot back (idempotent). */
  releaseHeld(callId: string): void {
    const h = this.#held.get(callId);
    if (h === undefined) return;
    this.#held.delete(callId);
    this.#slots.releaseSlot(h.slot);
  }

  /** Held slots, oldest first: [callId, since]. */
  held(): Array<[string, number]> {
    return [...this.#held].map(([id, h]) => [id, h.at]);
  }

  // ------------------------------------------------------ active attempts

  /** The live attempts of a campaign (created on first use). */
  activeOf(campaignId: string): ReadonlySet<string> {
    return this.#activeSet(campaignId);
  }

  addActive(campaignId: string, callId: string): void {
    this.#activeSet(campaignId).add(callId);
  }

  removeActive(campaignId: string, callId: string): void {
    this.#active.get(campaignId)?.delete(callId);
    this.#onActiveRemoved?.(campaignId, callId);
  }

  /** Hears of every attempt that stops being active (finalized or voided): the fleet dialer gives its campaign slot back. */
  onActiveRemoved(listener: (campaignId: string, callId: string) => void): void {
    this.#onActiveRemoved = listener;
  }

  activeCount(campaignId: string): number {
    return this.#active.get(campaignId)?.size ?? 0;
  }

  // ------------------------------------------------------------ rechecks

  /** Settle `callId` with the carrier at `at` (the later of two requests wins only if sooner). */
  recheckAt(callId: string, at: number): void {
    this.#recheck.set(callId, at);
  }

  cancelRecheck(callId: string): void {
    this.#recheck.delete(callId);
  }

  hasRecheck(callId: string): boolean {
    return this.#recheck.has(callId);
  }

  /** Removes and returns the rechecks due at `now`. */
  dueRechecks(now: number): string[] {
    const due: string[] = [];
    for (const [id, at] of this.#recheck) {
      if (at > now) continue;
      this.#recheck.delete(id);
      due.push(id);
    }
    return due;
  }

  // --------------------------------------------------------------- tasks

  /** Tracks a dial request until it settles (errors are logged, never thrown). */
  trackDial(p: Promise<void>): void {
    this.#track(this.#dials, p);
  }

  /** Tracks post-call work (transcript fetch, webhook, voicemail action). */
  trackAfterCall(p: Promise<void>): void {
    this.#track(this.#afterCall, p);
  }

  /** Waits for every tracked task, then releases every held slot (shutdown). */
  async settle(): Promise<void> {
    await Promise.allSettled([...this.#dials, ...this.#afterCall]);
    for (const id of [...this.#held.keys()]) this.releaseHeld(id);
  }

  get stats(): { held: number; inflight: number; recheck: number } {
    return { held: this.#held.size, inflight: this.#dials.size, recheck: this.#recheck.size };
  }

  #activeSet(campaignId: string): Set<string> {
    let s = this.#active.get(campaignId);
    if (s === undefined) {
      s = new Set();
      this.#active.set(campaignId, s);
    }
    return s;
  }

  #track(set: Set<Promise<void>>, p: Promise<void>): void {
    const tracked = p.catch((err: unknown) => this.#log.error({ err }, 'outbound task failed'));
    set.add(tracked);
    void tracked.finally(() => set.delete(tracked));
  }
}
