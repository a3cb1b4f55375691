/**
 * `campaign.progress` at most once per second per campaign, coalesced: a
 * change marks the campaign dirty, and the state read when the event goes out
 * is the latest. A campaign that finishes gets its final progress and then
 * `campaign.completed`, never lost (they wait for the campaign's next slot).
 */
import type { Publish } from './callEvents.js';

export interface CampaignState {
  status: string;
  counts: unknown;
  activeCalls: number;
  etaSeconds: number | null;
}

export interface CampaignEventsOptions {
  publish: Publish;
  /** The campaign's state now; undefined when it is gone. */
  /** The campaign's state now (a store on Postgres answers later: the event goes out then). */
  read(campaignId: string): CampaignState | undefined | Promise<CampaignState | undefined>;
  /** Shortest time between two progress events of one campaign (default 1000 ms). */
  intervalMs?: number;
  now?: () => number;
}

interface Pending {
  lastAt: number;
  timer: NodeJS.Timeout | undefined;
  final: boolean;
}

const FINAL: ReadonlySet<string> = new Set(['completed', 'canceled']);

export class CampaignEvents {
  readonly #o: CampaignEventsOptions;
  readonly #intervalMs: number;
  readonly #now: () => number;
  readonly #campaigns = new Map<string, Pending>();
  #closed = false;

  constructor(opts: CampaignEventsOptions) {
    this.#o = opts;
    this.#intervalMs = opts.intervalMs ?? 1000;
    this.#now = opts.now ?? Date.now;
  }

  /** The campaign's progress changed (a contact dialed or settled, a status change). */
  changed(campaignId: string): void {
    if (this.#closed) return;
    let p = this.#campaigns.get(campaignId);
    if (p === undefined) {
      p = { lastAt: -Infinity, timer: undefined, final: false };
      this.#campaigns.set(campaignId, p);
    }
    if (p.timer !== undefined) return; // already due: it will read the latest state
    const wait = p.lastAt + this.#intervalMs - this.#now();
    if (wait <= 0) this.#flush(campaignId, p);
    else {
      p.timer = setTimeout(() => this.#flush(campaignId, p), wait);
      p.timer.unref();
    }
  }

  /** Timers pending (tests). */
  get pending(): number {
    let n = 0;
    for (const p of this.#campaigns.values()) if (p.timer !== undefined) n++;
    return n;
  }

  /** Sends what is due now (final states included) and stops. Idempotent. */
  close(): void {
    if (this.#closed) return;
    for (const [id, p] of this.#campaigns) {
      if (p.timer === undefined) continue;
      clearTimeout(p.timer);
      this.#flush(id, p);
    }
    this.#closed = true;
    this.#campaigns.clear();
  }

  #flush(campaignId: string, p: Pending): void {
    p.timer = undefined;
    let read: CampaignState | undefined | Promise<CampaignState | undefined>;
    try {
      read = this.#o.read(campaignId);
    } catch {
      read = undefined; // a failed read: the next change tries again
    }
    if (read instanceof Promise) {
      read.then(
        (state) => this.#send(campaignId, p, state),
        () => this.#send(campaignId, p, undefined),
      );
      return;
    }
    this.#send(campaignId, p, read);
  }

  #send(campaignId: string, p: Pending, state: CampaignState | undefined): void {
    if (state === undefined) {
      this.#campaigns.delete(campaignId);
      return;
    }
    p.lastAt = this.#now();
    this.#emit({ type: 'campaign.progress', campaignId, data: { status: state.status, counts: state.counts, activeCalls: state.activeCalls, etaSeconds: state.etaSeconds } });
    if (FINAL.has(state.status) && state.activeCalls === 0) {
      // Once per campaign (the entry is kept, a few bytes per campaign, so a late change neither repeats it nor beats the rate).
      if (!p.final) this.#emit({ type: 'campaign.completed', campaignId, data: { status: state.status, counts: state.counts } });
      p.final = true;
    }
  }

  #emit(e: Parameters<Publish>[0]): void {
    try {
      this.#o.publish(e);
    } catch {
      // best effort
    }
  }
}
