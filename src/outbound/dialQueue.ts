/**
 * Outbound dialing shared by every process of a fleet (REDIS_URL set), through a BullMQ queue.
 * Without REDIS_URL the in-process {@link DialLoop} dials instead.
 *
 * - **Jobs.** A dial attempt is a job with an idempotent id: `contact-<campaign>-<contact>-<attempts
 *   made>` or `call-<queued API call>`. Every process scans the store for due work (`scan`) and
 *   enqueues it; the same attempt enqueued by three processes is one job. A contact due later (a
 *   retry) is a delayed job. Workers in every process take the jobs.
 * - **Limits, fleet-wide.** `OUTBOUND_MAX_CPS` is the queue's global rate limit (BullMQ `limiter`,
 *   kept in Redis), made exact at the carrier by the window of {@link FleetDialRate}, which also
 *   paces each campaign's `callsPerSecond`. A campaign's `maxConcurrent` is a lease slot per campaign
 *   ({@link FleetSlots} under `<prefix>c:<campaign>:`), held from the claim until the attempt
 *   ends: a call outlives its job (it rings, then talks for minutes), so BullMQ's own concurrency,
 *   which counts jobs being processed, cannot count it. `MAX_CONCURRENT_CALLS` is the fleet slot
 *   (`holdSlot`), as for inbound calls.
 * - **A job that cannot run yet** (no slot, campaign at its cap, not due) is moved back to delayed;
 *   one whose campaign is not running, or whose contact is outside its calling window, is dropped:
 *   the contact stays pending in the store and the scan enqueues it again when it is due.
 * - **Crash safety.** The contact (or API call) is claimed in the store by a conditional UPDATE
 *   before `calls.create`, and the job completes only after the carrier answered. A process killed
 *   mid-dial leaves an active job whose lock expires; BullMQ hands it to another worker (stalled
 *   job), which finds the claim and settles it with the carrier ({@link Reconciler.reconcileRow}:
 *   found → followed as dialed; not found → voided and due again). Nobody is dialed twice, and
 *   nobody is lost. A claim younger than `claimGraceMs` is left alone (its process may still be
 *   waiting for the carrier's answer).
 */
import { DelayedError, Queue, Worker, type Job } from 'bullmq';
import { Redis } from 'ioredis';
import { z } from 'zod';
import { FleetDialRate, type RateScope, type RateTicket } from '../fleet/dialRate.js';
import { checkPrefix, failFastOptions, waitReady, watchErrors } from '../fleet/redis.js';
import { FleetSlots, type FleetSlot } from '../fleet/slots.js';
import type { Slot } from '../session/manager.js';
import type { CampaignRow, ContactRow } from '../store/campaigns.js';
import type { CallRow } from '../store/calls.js';
import { errorMessage } from '../util/errors.js';
import { settingsOf, type OutboundContext } from './context.js';
import type { Finalizer } from './finalizer.js';
import { claimContactAttempt, claimQueuedCall, dialRequestFor, recordDialed, settleDialFailure, type PlaceOptions } from './placing.js';
import type { Reconciler } from './reconciler.js';
import type { CampaignSettings } from './settings.js';
import { isWithinWindow, nextWindowStart } from './window.js';

export interface DialQueueOptions extends PlaceOptions {
  redisUrl: string;
  /** FLEET_PREFIX: every key (BullMQ's under `<prefix>bull:`). */
  prefix: string;
  /** FLEET_LEASE_MS: campaign slot leases and the job lock (a dead worker's job is taken over after about this long). */
  leaseMs: number;
  /** OUTBOUND_MAX_CPS, fleet-wide. */
  maxCps: number;
  /** A fleet-wide MAX_CONCURRENT_CALLS slot for a dial (undefined: no room now). */
  holdSlot(key: string, agentId: string): Promise<Slot | undefined>;
  /** The dialed call `callId` holds `slot`: the process its answer lands on can take the slot over. */
  noteHeld?(callId: string, slot: Slot): void;
  /** Jobs this process works on at once (default 20; most wait for the pacing or the carrier). */
  concurrency?: number;
  /** How often the store is scanned for due work (default 1000 ms). */
  pollMs?: number;
  /** A claim without a CallSid younger than this is not reconciled (default 2 × lease + 10 s). */
  claimGraceMs?: number;
  /** The longest a carrier request takes (the dialer's timeout; default 10 s). */
  requestTimeoutMs?: number;
  onDial?: ((result: string) => void) | undefined;
  /** Queue depth after each scan (metrics). */
  onDepth?: ((depth: { waiting: number; delayed: number; active: number }) => void) | undefined;
  /** What each job came to (tests, metrics): dialed, failed, stale, reconciled, dropped, settled. */
  onJob?: ((outcome: JobOutcome, jobId: string) => void) | undefined;
}

export type JobOutcome = 'dialed' | 'failed' | 'stale' | 'reconciled' | 'dropped' | 'settled';

const jobData = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('call'), callId: z.string().min(1).max(100) }),
  z.object({ kind: z.literal('contact'), campaignId: z.string().min(1).max(100), contactId: z.string().min(1).max(100), attempts: z.number().int().min(0) }),
]);
type JobData = z.infer<typeof jobData>;

export const DIAL_QUEUE_NAME = 'dial';
/** Contacts due within this horizon are enqueued now, as delayed jobs. */
const HORIZON_MS = 60_000;
/** No more jobs are enqueued while this many wait (a million-contact campaign enters the queue bit by bit). */
const MAX_BACKLOG = 2_000;
const SCAN_BATCH = 500;
const RETRY_SLOT_MS = 300;
const SWEEP_EVERY_MS = 5_000;
const BACKOFF_429_MS = [1_000, 2_000, 5_000, 10_000, 30_000];

/** The idempotent job id of a contact's next attempt, or of a queued API call (BullMQ ids may not hold ':'). */
export function dialJobId(d: JobData): string {
  const id = d.kind === 'call' ? `call-${d.callId}` : `contact-${d.campaignId}-${d.contactId}-${d.attempts}`;
  return id.replaceAll(':', '_');
}

export class DialQueue {
  readonly #c: OutboundContext;
  readonly #f: Finalizer;
  readonly #r: Reconciler;
  readonly #o: DialQueueOptions;
  readonly #prefix: string;
  readonly #redis: Redis;
  readonly #queue: Queue;
  readonly #rate: FleetDialRate;
  #worker: Worker | undefined;
  /** The clients given to BullMQ (it leaves clients it was given open: closed here). */
  readonly #bullClients: Redis[] = [];
  /** Campaign lease slots, by campaign and cap (a changed cap gets its own instance over the same keys). */
  readonly #campaignSlots = new Map<string, FleetSlots>();
  /** The campaign slot held for each attempt (call row id) this process dialed. */
  readonly #campaignHeld = new Map<string, { slots: FleetSlots; slot: FleetSlot }>();
  #timer: NodeJS.Timeout | undefined;
  #scanning: Promise<void> | undefined;
  #rescan = false;
  #lastSweep = 0;
  #rateBackoff = 0;
  #paused = false;
  #closed = false;

  constructor(ctx: OutboundContext, finalizer: Finalizer, reconciler: Reconciler, opts: DialQueueOptions) {
    this.#c = ctx;
    this.#f = finalizer;
    this.#r = reconciler;
    this.#o = opts;
    this.#prefix = checkPrefix(opts.prefix);
    this.#redis = new Redis(opts.redisUrl, { ...failFastOptions(), lazyConnect: true });
    watchErrors(this.#redis, ctx.log, 'dial');
    this.#queue = new Queue(DIAL_QUEUE_NAME, { connection: this.#bullConnection(false), prefix: `${this.#prefix}bull` });
    this.#queue.on('error', (err) => ctx.log.warn({ err: errorMessage(err) }, 'dial queue: Redis error (check REDIS_URL)'));
    this.#rate = new FleetDialRate(this.#redis, this.#prefix, opts.requestTimeoutMs ?? 10_000);
    ctx.attempts.onActiveRemoved((_campaignId, callId) => this.#releaseCampaignSlot(callId));
  }

  /** Connects and starts the worker and the scans (fails naming REDIS_URL when Redis does not answer). */
  async start(): Promise<void> {
    await waitReady(this.#redis);
    const maxCps = this.#o.maxCps;
    const worker = new Worker(DIAL_QUEUE_NAME, (job, token) => this.#process(job, token), {
      connection: this.#bullConnection(true),
      prefix: `${this.#prefix}bull`,
      concurrency: this.#o.concurrency ?? 20,
      // Fleet-wide: BullMQ keeps the limiter in Redis, shared by every worker of the queue.
      limiter: maxCps >= 1 ? { max: Math.floor(maxCps), duration: 1000 } : { max: 1, duration: Math.ceil(1000 / maxCps) },
      lockDuration: this.#o.leaseMs,
      stalledInterval: Math.max(500, Math.floor(this.#o.leaseMs / 2)),
      maxStalledCount: 10,
      // A finished job's id is free again: the store says whether its work is done.
      removeOnComplete: { count: 0 },
      removeOnFail: { count: 0 },
    });
    worker.on('error', (err) => this.#c.log.warn({ err: errorMessage(err) }, 'dial worker: Redis error (check REDIS_URL)'));
    worker.on('failed', (job, err) => this.#c.log.error({ jobId: job?.id, err: errorMessage(err) }, 'dial job failed; its work stays in the store and is enqueued again'));
    this.#worker = worker;
    this.schedule(0);
  }

  /** No new dials (drain); dials in flight finish. */
  pause(): void {
    this.#paused = true;
    void this.#worker?.pause(true).catch(() => undefined);
  }

  /** Scans the store for due work in `delayMs` (unless a scan is already due sooner). */
  schedule(delayMs: number): void {
    if (this.#closed) return;
    if (delayMs <= 0 && this.#scanning !== undefined) {
      this.#rescan = true;
      return;
    }
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => void this.#tick(), Math.max(0, Math.min(delayMs, this.#o.pollMs ?? 1_000)));
  }

  /**
   * Stops the worker (waiting for jobs in flight unless `force`: then their locks lapse and another
   * process takes them over as stalled jobs) and closes every connection. Idempotent.
   */
  async close(opts: { force?: boolean } = {}): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    await this.#scanning?.catch(() => undefined);
    await this.#worker?.close(opts.force === true).catch(() => undefined);
    await this.#queue.close().catch(() => undefined);
    for (const s of this.#campaignSlots.values()) await s.close({ releaseHeld: true }).catch(() => undefined);
    for (const c of this.#bullClients) c.disconnect();
    this.#redis.disconnect();
  }

  /** Job counts (tests, metrics). */
  async depth(): Promise<{ waiting: number; delayed: number; active: number }> {
    const c = await this.#queue.getJobCounts('waiting', 'prioritized', 'delayed', 'active');
    return { waiting: (c.waiting ?? 0) + (c.prioritized ?? 0), delayed: c.delayed ?? 0, active: c.active ?? 0 };
  }

  /** BullMQ's connections: workers block on Redis, so their commands never give up (`maxRetriesPerRequest: null`). */
  #bullConnection(worker: boolean): Redis {
    const r = new Redis(this.#o.redisUrl, { maxRetriesPerRequest: worker ? null : 1, retryStrategy: (n: number) => Math.min(100 * n, 2_000) });
    watchErrors(r, this.#c.log, worker ? 'dial-worker' : 'dial-queue');
    this.#bullClients.push(r);
    return r;
  }

  // ------------------------------------------------------------------ scan

  async #tick(): Promise<void> {
    this.#timer = undefined;
    if (this.#closed) return;
    this.#scanning = this.#scan();
    await this.#scanning;
    this.#scanning = undefined;
    const again = this.#rescan;
    this.#rescan = false;
    this.schedule(again ? 0 : (this.#o.pollMs ?? 1_000));
  }

  /** Enqueues the due work of the store (idempotent ids: every process may do it), and sweeps. */
  async #scan(): Promise<void> {
    const now = this.#c.now();
    try {
      if (now - this.#lastSweep >= SWEEP_EVERY_MS) {
        this.#lastSweep = now;
        await this.#r.sweep(now);
        await this.#releaseEnded();
      }
      const depth = await this.depth();
      this.#o.onDepth?.(depth);
      if (this.#paused || depth.waiting + depth.delayed >= MAX_BACKLOG) return;
      const jobs: Array<{ name: string; data: JobData; opts: { jobId: string; delay?: number; priority: number } }> = [];
      for (const row of await this.#c.calls.queued(SCAN_BATCH)) {
        if (row.hangupRequested) continue;
        const data: JobData = { kind: 'call', callId: row.id };
        jobs.push({ name: 'call', data, opts: { jobId: dialJobId(data), priority: 1 } });
      }
      const running = await this.#c.campaigns.byStatus('running');
      for (const campaign of running) {
        // A few seconds' worth of a campaign's work in the queue at a time: a campaign at its cap
        // then has few jobs going round (each taken job counts in the rate limit of every campaign).
        const s = settingsOf(campaign);
        const batch = Math.min(SCAN_BATCH, Math.max(10, 2 * s.maxConcurrent, Math.ceil(5 * Math.min(s.callsPerSecond, this.#o.maxCps))));
        const due = await this.#c.campaigns.due(campaign.id, now + HORIZON_MS, batch);
        if (due.length === 0) await this.#f.maybeComplete(campaign.id);
        for (const contact of due) {
          const data: JobData = { kind: 'contact', campaignId: campaign.id, contactId: contact.id, attempts: contact.attempts };
          const delay = contact.nextAttemptAt - now;
          jobs.push({ name: 'contact', data, opts: { jobId: dialJobId(data), priority: 2, ...(delay > 0 ? { delay } : {}) } });
        }
      }
      if (jobs.length > 0) await this.#queue.addBulk(jobs);
    } catch (err) {
      this.#c.log.warn({ err: errorMessage(err) }, 'dial queue: could not enqueue due work; trying again at the next scan');
    }
  }

  // ------------------------------------------------------------------ jobs

  async #process(job: Job, token: string | undefined): Promise<JobOutcome> {
    const parsed = jobData.safeParse(job.data);
    if (!parsed.success) {
      this.#c.log.error({ jobId: job.id }, 'dial queue: a job with unexpected data was dropped (another program writing under FLEET_PREFIX?)');
      return 'dropped';
    }
    const outcome = parsed.data.kind === 'call' ? await this.#processCall(job, token, parsed.data.callId) : await this.#processContact(job, token, parsed.data);
    this.#o.onJob?.(outcome, job.id ?? '');
    return outcome;
  }

  async #processCall(job: Job, token: string | undefined, callId: string): Promise<JobOutcome> {
    const row = await this.#c.calls.get(callId);
    if (row === undefined || row.finalizedAt !== null) return 'stale';
    if (row.status !== 'queued') return this.#reconcileClaim(job, token, row);
    if (row.hangupRequested) return 'stale';
    const ticket = await this.#pace(job, token, []);
    const slot = await this.#withTicket(ticket, () => this.#o.holdSlot(row.id, row.agentId));
    if (slot === undefined) return this.#noRoom(job, token, ticket);
    const claimed = await this.#claimed(() => claimQueuedCall(this.#c, row.id, this.#c.now()), ticket, () => this.#c.manager.releaseSlot(slot));
    if (claimed === undefined) return 'stale';
    this.#c.attempts.hold(claimed.id, slot, this.#c.now());
    this.#o.noteHeld?.(claimed.id, slot);
    return this.#place(claimed, this.#c.ringTimeoutS, ticket);
  }

  async #processContact(job: Job, token: string | undefined, d: Extract<JobData, { kind: 'contact' }>): Promise<JobOutcome> {
    const { campaigns } = this.#c;
    const stored = await campaigns.get(d.campaignId);
    // Not running: dropped; its contacts stay pending and are enqueued again once it runs.
    if (stored === undefined || stored.status !== 'running') return 'dropped';
    const campaign: CampaignRow<CampaignSettings> = { ...stored, settings: settingsOf(stored) };
    const contact = await campaigns.contact(d.contactId);
    if (contact === undefined) return 'stale';
    if (contact.state === 'dialing' && contact.attempts === d.attempts + 1 && contact.lastCallId !== null) {
      // This attempt was claimed: by a worker that died (a stalled job), or it is being dialed.
      const row = await this.#c.calls.get(contact.lastCallId);
      return row === undefined ? 'stale' : this.#reconcileClaim(job, token, row);
    }
    if (contact.state !== 'pending' || contact.attempts !== d.attempts) return 'stale';
    const now = this.#c.now();
    if (contact.nextAttemptAt > now) return this.#later(job, token, contact.nextAttemptAt - now);
    const settled = await this.#screen(campaign, contact, now);
    if (settled !== undefined) return settled;
    const s = campaign.settings;
    const agentId = s.agentId ?? this.#o.defaultAgentId;
    // Paced first: no slot is held while a dial waits for its turn.
    const ticket = await this.#pace(job, token, [{ name: `campaign:${campaign.id}`, ratePerSecond: s.callsPerSecond }]);
    const campaignSlots = this.#campaignSlotsOf(campaign.id, s.maxConcurrent);
    const leased = await this.#withTicket(ticket, () => campaignSlots.claim({ callSid: `${campaign.id}:${contact.id}`, agents: [agentId] }));
    if (!leased.ok) return this.#noRoom(job, token, ticket);
    const giveBack = () => void campaignSlots.release(leased.slot).catch(() => undefined);
    const slot = await this.#withTicket(ticket, () => this.#o.holdSlot(`${campaign.id}:${contact.id}`, agentId)).catch((err: unknown) => {
      giveBack();
      throw err;
    });
    if (slot === undefined) {
      giveBack();
      return this.#noRoom(job, token, ticket);
    }
    const release = () => {
      giveBack();
      this.#c.manager.releaseSlot(slot);
    };
    const row = await this.#claimed(() => claimContactAttempt(this.#c, this.#o, campaign, contact, this.#c.now()), ticket, release);
    if (row === undefined) return 'stale';
    this.#campaignHeld.set(row.id, { slots: campaignSlots, slot: leased.slot });
    this.#c.attempts.hold(row.id, slot, this.#c.now());
    this.#c.attempts.addActive(campaign.id, row.id);
    this.#o.noteHeld?.(row.id, slot);
    this.#c.campaignChanged(campaign.id);
    return this.#place(row, s.ringTimeoutSeconds, ticket);
  }

  /** Settles a contact that must not be dialed now (do-not-call, outside its window); undefined when it may be. */
  async #screen(campaign: CampaignRow<CampaignSettings>, contact: ContactRow, now: number): Promise<JobOutcome | undefined> {
    const { campaigns } = this.#c;
    if (await campaigns.dncHas(contact.phone)) {
      await campaigns.updateContact(contact.id, { state: 'done', outcome: 'dnc', lastError: 'on the do-not-call list' }, now);
      return 'settled';
    }
    const w = campaign.settings.window;
    if (w !== undefined && !isWithinWindow(w, now, contact.timezone ?? undefined)) {
      const next = nextWindowStart(w, now, contact.timezone ?? undefined);
      await campaigns.updateContact(contact.id, { nextAttemptAt: next ?? now + 7 * 86_400_000 }, now);
      return 'dropped';
    }
    return undefined;
  }

  /**
   * A claimed row met again (a stalled job, or its API call requeued meanwhile): settled with the
   * carrier when its claim is old enough that its dialer is gone, else looked at again later.
   */
  async #reconcileClaim(job: Job, token: string | undefined, row: CallRow): Promise<JobOutcome> {
    if (row.finalizedAt !== null || row.callSid !== null || row.status !== 'claimed' || this.#c.attempts.isHeld(row.id)) return 'stale';
    const graceMs = this.#o.claimGraceMs ?? 2 * this.#o.leaseMs + 10_000;
    const age = this.#c.now() - (row.claimedAt ?? row.createdAt);
    if (age < graceMs) return this.#later(job, token, graceMs - age);
    const r = await this.#r.reconcileRow(row);
    this.#c.log.info({ callId: row.id, result: r }, 'dial queue: a dial whose worker died was settled with the carrier');
    return 'reconciled';
  }

  /** Waits for room in the fleet's pacing (account, and the campaign's); the job is delayed instead when that takes long. */
  async #pace(job: Job, token: string | undefined, scopes: RateScope[]): Promise<RateTicket> {
    const all: RateScope[] = [{ name: 'account', ratePerSecond: this.#o.maxCps }, ...scopes];
    const until = Date.now() + 5_000;
    for (;;) {
      const t = await this.#rate.take(all);
      if (typeof t !== 'number') return t;
      if (Date.now() + t > until || this.#closed) return this.#later(job, token, t);
      await new Promise((r) => setTimeout(r, Math.min(t, 250)));
    }
  }

  /** Runs a step after the ticket was taken; the ticket stops counting when the step throws. */
  async #withTicket<T>(ticket: RateTicket, step: () => Promise<T>): Promise<T> {
    try {
      return await step();
    } catch (err) {
      await this.#rate.forget(ticket).catch(() => undefined);
      throw err;
    }
  }

  /** No slot now: the ticket stops counting and the job waits as a delayed job. */
  async #noRoom(job: Job, token: string | undefined, ticket: RateTicket): Promise<never> {
    await this.#rate.forget(ticket).catch(() => undefined);
    return this.#later(job, token, RETRY_SLOT_MS);
  }

  /** Runs a store claim; a lost or failed claim gives back the ticket and the slots. */
  async #claimed(claim: () => CallRow | undefined | Promise<CallRow | undefined>, ticket: RateTicket, release: () => void): Promise<CallRow | undefined> {
    let row: CallRow | undefined;
    try {
      row = await claim();
    } catch (err) {
      this.#c.onStoreError('dial_claim', err);
      release();
      await this.#rate.forget(ticket).catch(() => undefined);
      throw err;
    }
    if (row === undefined) {
      release();
      await this.#rate.forget(ticket).catch(() => undefined);
    }
    return row;
  }

  async #place(row: CallRow, timeoutS: number, ticket: RateTicket): Promise<JobOutcome> {
    let sid: string;
    let status: string;
    try {
      ({ sid, status } = await this.#c.dialer.create(dialRequestFor(row, this.#o, timeoutS)));
    } catch (err) {
      await this.#rate.answered(ticket).catch(() => undefined);
      await settleDialFailure(this.#c, this.#f, row, err, {
        onDial: this.#o.onDial,
        rateLimited: () => {
          const backoff = BACKOFF_429_MS[Math.min(this.#rateBackoff, BACKOFF_429_MS.length - 1)] ?? 30_000;
          this.#rateBackoff++;
          // Every worker of the fleet holds off.
          void this.#queue.rateLimit(backoff).catch(() => undefined);
          return backoff;
        },
      });
      return 'failed';
    }
    await this.#rate.answered(ticket).catch(() => undefined);
    this.#rateBackoff = 0;
    this.#o.onDial?.('dialed');
    if (await recordDialed(this.#c, row, sid, status)) await this.#c.dialer.hangup(sid).catch(() => undefined);
    return 'dialed';
  }

  /** Puts the job back as delayed (same id) for `ms`. */
  async #later(job: Job, token: string | undefined, ms: number): Promise<never> {
    await job.moveToDelayed(Date.now() + Math.max(1, Math.ceil(ms)), token);
    throw new DelayedError();
  }

  // ------------------------------------------------------------ campaign slots

  #campaignSlotsOf(campaignId: string, max: number): FleetSlots {
    const key = `${campaignId}/${max}`;
    let s = this.#campaignSlots.get(key);
    if (s === undefined) {
      s = new FleetSlots({ redis: this.#redis, prefix: `${this.#prefix}c:${campaignId}:`, maxConcurrentCalls: max, leaseMs: this.#o.leaseMs, logger: this.#c.log });
      // A slot this process lost (Redis restarted) is simply forgotten: its attempt goes on.
      s.startRenewing({ onLost: (lost) => lost.forEach((l) => this.#forgetCampaignSlot(l.slot.id)) });
      this.#campaignSlots.set(key, s);
    }
    return s;
  }

  #releaseCampaignSlot(callId: string): void {
    const h = this.#campaignHeld.get(callId);
    if (h === undefined) return;
    this.#campaignHeld.delete(callId);
    h.slots.release(h.slot).catch((err: unknown) => this.#c.log.warn({ callId, err: errorMessage(err) }, 'dial queue: could not give back a campaign slot (its lease expires by itself)'));
  }

  #forgetCampaignSlot(slotId: string): void {
    for (const [callId, h] of this.#campaignHeld) if (h.slot.id === slotId) this.#campaignHeld.delete(callId);
  }

  /** Attempts another process finalized (a callback landed there): their campaign slots go back. */
  async #releaseEnded(): Promise<void> {
    for (const callId of [...this.#campaignHeld.keys()]) {
      const row = await this.#c.calls.get(callId);
      if (row === undefined || row.finalizedAt !== null) this.#releaseCampaignSlot(callId);
    }
  }
}
