/**
 * The outbound engine's facade: single calls and campaigns, dialed through
 * the {@link Dialer} port, paced, within the session manager's capacity, and
 * persisted so that a crash loses nothing and dials nobody twice.
 *
 * It only takes API commands and wires the pieces, each in its own module:
 * - {@link DialLoop} (`dialLoop.ts`): picks due work, claims it, dials, paced;
 * - {@link CarrierCallbacks} (`callbacks.ts`): answer, status and AMD callbacks;
 * - {@link Finalizer} (`finalizer.ts`): outcome, contact settlement, breaker, completion, post-call work;
 * - {@link Reconciler} (`reconciler.ts`): restarts, lost requests, quiet calls;
 * - {@link Attempts} (`attempts.ts`): what is held in memory about attempts in flight.
 *
 * Dialing is crash-safe:
 * 1. a contact (or a queued API call) is **claimed** in one transaction that
 *    also writes its attempt's call row (`claimed`), before the carrier is asked;
 * 2. the carrier's answer stores the CallSid (`dialed`);
 * 3. on restart, claimed rows without a CallSid are reconciled with the
 *    carrier (`findRecent`): found → followed as dialed; not found → the
 *    attempt is voided (`not-dialed`) and the contact is due again.
 *    Rows with a CallSid are fetched from the carrier and finished if over.
 */
import type { Logger } from 'pino';
import type { CallRoute, SessionManager } from '../session/manager.js';
import type { CampaignRow, CampaignStore, ContactCounts } from '../store/campaigns.js';
import type { CallRow, CallStore } from '../store/calls.js';
import { errorMessage } from '../util/errors.js';
import { CampaignEvents } from '../events/campaignEvents.js';
import { CallEvents, type Publish } from '../events/callEvents.js';
import { Attempts } from './attempts.js';
import { CarrierCallbacks } from './callbacks.js';
import { settingsOf, type OutboundContext } from './context.js';
import { DialLoop } from './dialLoop.js';
import { DialQueue, type DialQueueOptions } from './dialQueue.js';
import type { Dialer } from './dialer.js';
import { Finalizer, type PostCallSink, type TranscriptFetcher } from './finalizer.js';
import { Reconciler } from './reconciler.js';
import type { CampaignSettings, CreateCallRequest } from './settings.js';

export type { PostCallSink, TranscriptFetcher } from './finalizer.js';

export interface OutboundOptions {
  calls: CallStore;
  campaigns: CampaignStore;
  dialer: Dialer;
  manager: SessionManager;
  log: Logger;
  /** Origin the carrier calls back (PUBLIC_URL). */
  publicUrl: string;
  /** Caller id used when a request or campaign names none. */
  defaultFrom?: string;
  defaultAgentId: string;
  /** Account-wide dials per second (all campaigns and API calls together). */
  maxCps: number;
  /** Ring time for API calls (campaigns have their own). */
  ringTimeoutS: number;
  /** Twilio `timeLimit` for outbound calls. */
  maxCallS: number;
  webhooks?: PostCallSink;
  /** Live events (`call.*` of outbound calls and carrier callbacks, `campaign.*`). */
  events?: { calls: CallEvents; publish: Publish };
  fetchTranscript?: TranscriptFetcher;
  now?: () => number;
  /** Longest sleep of the dial loop between checks. */
  pollMs?: number;
  /** Grace after a session ended before a call without a terminal status is settled from the carrier. */
  settleAfterMs?: number;
  onDial?(result: string): void;
  /** A store write failed (`playline_store_errors_total`). */
  onStoreError?(op: string, err: unknown): void;
  /** REDIS_URL: ends a call whose session is live on another process (false: live nowhere). */
  remoteHangup?(callSid: string): Promise<boolean>;
  /** REDIS_URL: dial through the fleet's BullMQ queue ({@link DialQueue}) instead of the in-process loop. */
  fleetDial?: Omit<DialQueueOptions, 'publicUrl' | 'defaultFrom' | 'defaultAgentId' | 'maxCallS' | 'maxCps' | 'onDial'> & {
    /** True when another live process owns the call (its rows are left to it at reconciliation). */
    ownedElsewhere?: (callSid: string) => Promise<boolean>;
  };
}

export class OutboundError extends Error {
  override name = 'OutboundError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface CampaignProgress {
  counts: ContactCounts;
  activeCalls: number;
  dialsLastMinute: number;
  etaSeconds: number | null;
}

export class OutboundService {
  readonly #o: OutboundOptions;
  readonly #ctx: OutboundContext;
  readonly #attempts: Attempts;
  readonly #finalizer: Finalizer;
  readonly #reconciler: Reconciler;
  /** The in-process dial loop (no REDIS_URL), or the fleet's dial queue. */
  readonly #loop: DialLoop | DialQueue;
  readonly #campaignEvents: CampaignEvents | undefined;
  /** The carrier's callbacks (answer, status, AMD): their one owner. */
  readonly callbacks: CarrierCallbacks;
  #stopped = false;

  constructor(opts: OutboundOptions) {
    this.#o = opts;
    const log = opts.log.child({ component: 'outbound' });
    this.#attempts = new Attempts(opts.manager, log);
    const ev = opts.events;
    this.#campaignEvents =
      ev === undefined
        ? undefined
        : new CampaignEvents({
            publish: ev.publish,
            read: async (id) => {
              const c = await opts.campaigns.get(id);
              if (c === undefined) return undefined;
              const p = await this.progress(id);
              return { status: c.status, counts: p.counts, activeCalls: p.activeCalls, etaSeconds: p.etaSeconds };
            },
            ...(opts.now !== undefined ? { now: opts.now } : {}),
          });
    this.#ctx = {
      calls: opts.calls,
      campaigns: opts.campaigns,
      dialer: opts.dialer,
      manager: opts.manager,
      attempts: this.#attempts,
      log,
      now: opts.now ?? Date.now,
      kick: () => this.kick(),
      wakeIn: (ms) => this.#loop.schedule(ms),
      ringTimeoutS: opts.ringTimeoutS,
      onStoreError: (op, err) => opts.onStoreError?.(op, err),
      callEvents: ev?.calls,
      campaignChanged: (id) => this.#campaignEvents?.changed(id),
    };
    this.#finalizer = new Finalizer(this.#ctx, { webhooks: opts.webhooks, fetchTranscript: opts.fetchTranscript });
    const place = { publicUrl: opts.publicUrl, defaultFrom: opts.defaultFrom, defaultAgentId: opts.defaultAgentId, maxCps: opts.maxCps, maxCallS: opts.maxCallS, onDial: opts.onDial };
    const fleetDial = opts.fleetDial;
    const claimGraceMs = fleetDial === undefined ? undefined : (fleetDial.claimGraceMs ?? 2 * fleetDial.leaseMs + 10_000);
    this.#reconciler = new Reconciler(this.#ctx, this.#finalizer, {
      ...(opts.settleAfterMs !== undefined ? { settleAfterMs: opts.settleAfterMs } : {}),
      ...(claimGraceMs !== undefined ? { claimGraceMs } : {}),
      ...(fleetDial?.ownedElsewhere !== undefined ? { ownedElsewhere: fleetDial.ownedElsewhere } : {}),
    });
    this.#loop =
      fleetDial === undefined
        ? new DialLoop(this.#ctx, this.#finalizer, this.#reconciler, { ...place, pollMs: opts.pollMs })
        : new DialQueue(this.#ctx, this.#finalizer, this.#reconciler, { ...place, ...fleetDial, ...(claimGraceMs !== undefined ? { claimGraceMs } : {}) });
    this.callbacks = new CarrierCallbacks(this.#ctx, this.#finalizer);
  }

  /** Reconciles what a previous run left behind, then starts the dial loop. */
  async start(): Promise<void> {
    await this.#reconciler.reconcile();
    // Stopped while the carrier was being asked: the loop does not start after the close.
    if (!this.#stopped) await this.#loop.start();
  }

  /** Stops dialing (drain); calls in progress go on. */
  pauseDialing(): void {
    this.#loop.pause();
  }

  /**
   * Stops the loop and waits for requests in flight (dials, post-call work). `force` (REDIS_URL)
   * does not wait for dials in flight: their jobs are taken over by another process after one lease.
   */
  async stop(opts: { force?: boolean } = {}): Promise<void> {
    this.#stopped = true;
    if (this.#loop instanceof DialQueue) await this.#loop.close(opts);
    else await this.#loop.stop();
    if (opts.force === true && this.#loop instanceof DialQueue) return this.#campaignEvents?.close();
    await this.#attempts.settle();
    this.#campaignEvents?.close();
  }

  /** Wakes the dial loop now (new work). */
  kick(): void {
    this.#loop.schedule(0);
  }

  /** Contacts were added to a campaign: its progress changed (a `campaign.progress` event). */
  contactsAdded(campaignId: string): void {
    this.#ctx.campaignChanged(campaignId);
    this.kick();
  }

  /** Settles unfinished rows with the carrier now (also run at start). */
  reconcile(): ReturnType<Reconciler['reconcile']> {
    return this.#reconciler.reconcile();
  }

  // ------------------------------------------------------------------ API: calls

  /**
   * Queues one call. With an idempotency key, a repeat with the same body
   * returns the first call (`replayed`), a different body is a 409.
   */
  async createCall(req: CreateCallRequest, idempotency?: { key: string; hash: string }): Promise<{ call: CallRow; replayed: boolean }> {
    const now = this.#ctx.now();
    // One transaction: the key and its call are stored together. Two processes racing with one
    // key: the second finds the key taken at its insert, rolls back and replays the first call.
    const attempt = (): Promise<{ call: CallRow; replayed: boolean }> =>
      this.#o.calls.transaction(async ({ calls }) => {
      if (idempotency !== undefined) {
        const seen = await calls.idempotency(idempotency.key);
        if (seen !== undefined) {
          if (seen.requestHash !== idempotency.hash) {
            throw new OutboundError(409, 'idempotency_conflict', 'this Idempotency-Key was used with a different request body');
          }
          const first = await calls.get(seen.callId);
          if (first !== undefined) return { call: first, replayed: true };
        }
      }
      const from = req.from ?? this.#o.defaultFrom;
      if (from === undefined) throw new OutboundError(400, 'missing_from', 'no "from" given and DEFAULT_CALLER_ID is not set');
      const row = await calls.insert(
        {
          direction: 'outbound',
          to: req.to,
          from,
          agentId: req.agentId ?? this.#o.defaultAgentId,
          prompt: req.prompt,
          customGreeting: req.customGreeting,
          metadata: req.metadata,
          machineDetection: req.machineDetection === true || req.voicemailMessage !== undefined,
          voicemailAction: req.voicemailMessage !== undefined ? 'message' : req.machineDetection === true ? 'hangup' : undefined,
          voicemailMessage: req.voicemailMessage,
          ...(req.record !== undefined ? { record: req.record } : {}),
          status: 'queued',
        },
        now,
      );
      if (idempotency !== undefined && !(await calls.putIdempotency(idempotency.key, idempotency.hash, row.id, now))) throw new IdempotencyRace();
      return { call: row, replayed: false };
    });
    let out: { call: CallRow; replayed: boolean };
    try {
      out = await attempt();
    } catch (err) {
      if (!(err instanceof IdempotencyRace)) throw err;
      out = await attempt();
    }
    if (!out.replayed) this.kick();
    return out;
  }

  /**
   * Ends a call in whatever state it is: a queued one is canceled, a live
   * one here is closed (its TwiML falls through to `<Hangup/>`) and the
   * carrier is asked to end it too; a browser call's session (or pending
   * token) is ended with no carrier request. The record says `endReason: api_hangup`.
   */
  async hangupCall(id: string): Promise<CallRow> {
    const { calls } = this.#o;
    const row = await calls.get(id);
    if (row === undefined) throw new OutboundError(404, 'not_found', `no call ${id}`);
    if (row.finalizedAt !== null) return row;
    const now = this.#ctx.now();
    await calls.update(id, { hangupRequested: true, ...(row.endReason === null ? { endReason: 'api_hangup' } : {}) });
    await calls.event(id, 'hangup_requested', null, null, null, now);
    if (row.status !== 'queued') {
      const marked = await calls.get(id);
      if (marked !== undefined) this.#ctx.callEvents?.updated(marked, 'hangup_requested');
    }
    if (row.status === 'queued') {
      await this.#finalizer.finalize(row, 'canceled', { endReason: 'api_hangup' });
      return (await calls.get(id)) ?? row;
    }
    if (row.direction === 'web' && row.callSid !== null) {
      // A browser call has no carrier: ending its session (or its pending stream token) ends it.
      this.#o.manager.getSession(row.callSid)?.close('api_hangup');
      this.#o.manager.cancelReservation(row.callSid);
      await this.finishWebCall(row.callSid);
      return (await calls.get(id)) ?? row;
    }
    if (row.callSid !== null) {
      const local = this.#o.manager.getSession(row.callSid);
      if (local !== undefined) local.close('api_hangup');
      else if (this.#o.remoteHangup !== undefined) {
        try {
          await this.#o.remoteHangup(row.callSid);
        } catch (err) {
          this.#o.log.warn({ callId: id, callSid: row.callSid, err: errorMessage(err) }, 'could not reach the process owning the call; hanging it up at the carrier only');
        }
      }
      try {
        await this.#o.dialer.hangup(row.callSid);
      } catch (err) {
        throw new OutboundError(502, 'carrier_error', `the carrier did not end the call: ${errorMessage(err)}`);
      }
    }
    return (await calls.get(id)) ?? row;
  }

  /**
   * A browser call is over (its session closed, its token expired or was given up): it is
   * finalized at once, since no carrier will send its final status: `completed` (answered)
   * when its stream started, else `canceled`. Idempotent; never throws.
   */
  /** The route of a call we placed or started (`callId`), read from its record; undefined when it has none. */
  async routeOfCall(callId: string): Promise<CallRoute | undefined> {
    const row = await this.#o.calls.get(callId);
    return row === undefined ? undefined : this.callbacks.routeOf(row);
  }

  /** The same, for a call known by its CallSid (a dialed caller coming back after a transfer). */
  async routeOfCallSid(callSid: string): Promise<CallRoute | undefined> {
    const row = await this.#o.calls.getBySid(callSid);
    return row === undefined ? undefined : this.callbacks.routeOf(row);
  }

  async finishWebCall(callSid: string): Promise<void> {
    try {
      const row = await this.#o.calls.getBySid(callSid);
      if (row === undefined || row.direction !== 'web' || row.finalizedAt !== null) return;
      const started = row.answeredAt !== null;
      await this.#finalizer.finalize(row, started ? 'completed' : 'canceled', started ? {} : { endReason: 'no_stream' });
    } catch (err) {
      this.#ctx.onStoreError('web_call_end', err);
      this.#ctx.log.error({ callSid, err: errorMessage(err) }, 'could not record the end of a browser call; the stale-call sweep settles it later');
    }
  }

  // ------------------------------------------------------------- API: campaigns

  async startCampaign(id: string): Promise<CampaignRow<CampaignSettings>> {
    const c = await this.#campaign(id);
    if (c.status === 'completed' || c.status === 'canceled') throw new OutboundError(409, 'campaign_finished', `campaign is ${c.status}`);
    await this.#o.campaigns.setStatus(id, 'running', { pauseReason: null, lastError: null }, this.#ctx.now());
    this.#ctx.campaignChanged(id);
    this.#finalizer.resetBreaker(id);
    this.kick();
    return this.#campaign(id);
  }

  async pauseCampaign(id: string, reason = 'paused by API'): Promise<CampaignRow<CampaignSettings>> {
    const c = await this.#campaign(id);
    if (c.status !== 'running' && c.status !== 'draft') throw new OutboundError(409, 'campaign_not_running', `campaign is ${c.status}`);
    await this.#o.campaigns.setStatus(id, 'paused', { pauseReason: reason }, this.#ctx.now());
    this.#ctx.campaignChanged(id);
    return this.#campaign(id);
  }

  async resumeCampaign(id: string): Promise<CampaignRow<CampaignSettings>> {
    const c = await this.#campaign(id);
    if (c.status !== 'paused') throw new OutboundError(409, 'campaign_not_paused', `campaign is ${c.status}`);
    return this.startCampaign(id);
  }

  /** Cancels: no more dials; pending contacts end as `canceled`; calls in progress finish. */
  async cancelCampaign(id: string): Promise<CampaignRow<CampaignSettings>> {
    const c = await this.#campaign(id);
    if (c.status === 'completed' || c.status === 'canceled') return c;
    const now = this.#ctx.now();
    await this.#o.campaigns.setStatus(id, 'canceled', {}, now);
    await this.#o.campaigns.finishAll(id, 'canceled', now);
    this.#ctx.campaignChanged(id);
    return this.#campaign(id);
  }

  /** Progress: counts, dials over the last minute, estimated time to finish. */
  async progress(id: string): Promise<CampaignProgress> {
    const c = await this.#campaign(id);
    const counts = await this.#o.campaigns.counts(id);
    const since = this.#ctx.now() - 60_000;
    const recent = await this.#o.calls.countDialedSince(id, since);
    const remaining = counts.byState.pending + counts.byState.dialing;
    const rate = recent > 0 ? recent / 60 : Math.min(c.settings.callsPerSecond, this.#o.maxCps);
    const eta = c.status === 'running' && remaining > 0 && rate > 0 ? Math.round(remaining / rate) : remaining === 0 ? 0 : null;
    return { counts, activeCalls: this.#attempts.activeCount(id), dialsLastMinute: recent, etaSeconds: eta };
  }

  /** Held outbound slots, dials in flight and rechecks (tests, metrics). */
  get stats(): { held: number; inflight: number; recheck: number } {
    return this.#attempts.stats;
  }

  async #campaign(id: string): Promise<CampaignRow<CampaignSettings>> {
    const c = await this.#o.campaigns.get(id);
    if (c === undefined) throw new OutboundError(404, 'not_found', `no campaign ${id}`);
    return { ...c, settings: settingsOf(c) };
  }
}

/** Two requests with one Idempotency-Key raced (several processes): the loser replays the winner's call. */
class IdempotencyRace extends Error {}
