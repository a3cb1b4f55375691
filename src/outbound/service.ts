/**
 * The outbound service: single calls and campaigns, dialed through the
 * {@link Dialer} port, paced, within the session manager's capacity, and
 * persisted so that a crash loses nothing and dials nobody twice.
 *
 * Dialing is crash-safe:
 * 1. a contact (or a queued API call) is **claimed** in one transaction that
 *    also writes its attempt's call row (`claimed`), before the carrier is asked;
 * 2. the carrier's answer stores the CallSid (`dialed`);
 * 3. on restart, claimed rows without a CallSid are reconciled with the
 *    carrier (`findRecent`): found → followed as dialed; not found → the
 *    attempt is voided (`not-dialed`) and the contact is due again.
 *    Rows with a CallSid are fetched from the carrier and finished if over.
 *
 * Carrier callbacks carry our call id (`?callId=`), so a callback that
 * arrives before `calls.create` returned still finds its row. Status
 * callbacks are applied in `SequenceNumber` order; a terminal one finalizes
 * the call once (outcome, retry policy, campaign progress, post-call
 * webhook). Inbound calls are recorded here too (row at admission, transcript
 * at the end of the session, webhook at the terminal status).
 */
import type { Logger } from 'pino';
import type { CallRecord, CallRoute, SessionManager, Slot } from '../session/manager.js';
import type { CampaignStore, CampaignRow, ContactRow } from '../store/campaigns.js';
import { callPayload, isMachine, outcomeOf } from '../calls/view.js';
import { TERMINAL_CALL_STATUSES, type CallOutcome, type CallRow, type CallStore } from '../store/calls.js';
import { DialError, type DialRequest, type Dialer } from './dialer.js';
import { FailureBreaker, Pacer, type PacerTicket } from './pacing.js';
import { campaignSettingsSchema, type CampaignSettings, type CreateCallRequest } from './settings.js';
import { fillTemplate } from './template.js';
import { isWithinWindow, nextWindowStart } from './window.js';

export interface TranscriptFetcher {
  (call: CallRow): Promise<Array<{ role: string; text: string; at: number }> | undefined>;
}

export interface PostCallSink {
  enqueue(event: string, callId: string | null, payload: object): string;
}

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
  fetchTranscript?: TranscriptFetcher;
  now?: () => number;
  /** Longest sleep of the dial loop between checks. */
  pollMs?: number;
  /** Grace after a session ended before a call without a terminal status is settled from the carrier. */
  settleAfterMs?: number;
  onDial?(result: string): void;
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

type Job =
  | { kind: 'call'; row: CallRow; slot: Slot }
  | { kind: 'contact'; campaign: CampaignRow<CampaignSettings>; contact: ContactRow; slot: Slot };

const BACKOFF_429_MS = [1_000, 2_000, 5_000, 10_000, 30_000];

export class OutboundService {
  readonly #o: OutboundOptions;
  readonly #now: () => number;
  readonly #log: Logger;
  readonly #account: Pacer;
  readonly #campaignPacers = new Map<string, Pacer>();
  readonly #breakers = new Map<string, FailureBreaker>();
  /** Live (not finalized) outbound attempts per campaign. */
  readonly #active = new Map<string, Set<string>>();
  /** Slots held for dialed calls that have not answered yet, by call id. */
  readonly #held = new Map<string, { slot: Slot; at: number }>();
  readonly #inflight = new Set<Promise<void>>();
  readonly #afterCall = new Set<Promise<void>>();
  /**
   * Rows to settle with the carrier at the given time: dials the carrier never
   * answered, calls followed after a restart, calls whose callbacks stopped.
   */
  readonly #recheck = new Map<string, number>();
  #timer: NodeJS.Timeout | undefined;
  #running = false;
  #paused = false;
  #rr = 0;
  #rateBackoff = 0;
  #lastSweep = 0;
  #lastPrune = 0;

  constructor(opts: OutboundOptions) {
    this.#o = opts;
    this.#now = opts.now ?? Date.now;
    this.#log = opts.log.child({ component: 'outbound' });
    this.#account = new Pacer(opts.maxCps);
  }

  get dialerName(): string {
    return this.#o.dialer.name;
  }

  /** Reconciles what a previous run left behind, then starts the dial loop. */
  async start(): Promise<void> {
    this.#running = true;
    for (const c of this.#o.campaigns.byStatus<CampaignSettings>('running')) this.#activeOf(c.id);
    await this.reconcile();
    this.#schedule(0);
  }

  /** Stops dialing (drain); calls in progress go on. */
  pauseDialing(): void {
    this.#paused = true;
  }

  /** Stops the loop and waits for requests in flight (dials, post-call work). */
  async stop(): Promise<void> {
    this.#running = false;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = undefined;
    await Promise.allSettled([...this.#inflight, ...this.#afterCall]);
    for (const { slot } of this.#held.values()) this.#o.manager.releaseSlot(slot);
    this.#held.clear();
  }

  /** Wakes the dial loop now (new work). */
  kick(): void {
    if (this.#running) this.#schedule(0);
  }

  // ------------------------------------------------------------------ API: calls

  /**
   * Queues one call. With an idempotency key, a repeat with the same body
   * returns the first call (`replayed`), a different body is a 409.
   */
  createCall(req: CreateCallRequest, idempotency?: { key: string; hash: string }): { call: CallRow; replayed: boolean } {
    const { calls } = this.#o;
    return calls.transaction(() => {
      if (idempotency !== undefined) {
        const seen = calls.idempotency(idempotency.key);
        if (seen !== undefined) {
          if (seen.requestHash !== idempotency.hash) {
            throw new OutboundError(409, 'idempotency_conflict', 'this Idempotency-Key was used with a different request body');
          }
          const first = calls.get(seen.callId);
          if (first !== undefined) return { call: first, replayed: true };
        }
      }
      const from = req.from ?? this.#o.defaultFrom;
      if (from === undefined) throw new OutboundError(400, 'missing_from', 'no "from" given and DEFAULT_CALLER_ID is not set');
      const row = calls.insert(
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
          status: 'queued',
        },
        this.#now(),
      );
      if (idempotency !== undefined) calls.putIdempotency(idempotency.key, idempotency.hash, row.id, this.#now());
      this.kick();
      return { call: row, replayed: false };
    });
  }

  /** Ends a call in whatever state it is. */
  async hangupCall(id: string): Promise<CallRow> {
    const row = this.#o.calls.get(id);
    if (row === undefined) throw new OutboundError(404, 'not_found', `no call ${id}`);
    if (row.finalizedAt !== null) return row;
    if (row.status === 'queued') {
      this.#o.calls.update(id, { hangupRequested: true });
      this.#finalize(row, 'canceled', { endReason: 'hangup_requested' });
      return this.#o.calls.get(id) ?? row;
    }
    this.#o.calls.update(id, { hangupRequested: true });
    this.#o.calls.event(id, 'hangup_requested', null, null, null, this.#now());
    if (row.callSid !== null) {
      try {
        await this.#o.dialer.hangup(row.callSid);
      } catch (err) {
        throw new OutboundError(502, 'carrier_error', `the carrier did not end the call: ${(err as Error).message}`);
      }
    }
    return this.#o.calls.get(id) ?? row;
  }

  // ------------------------------------------------------------- API: campaigns

  startCampaign(id: string): CampaignRow<CampaignSettings> {
    const c = this.#campaign(id);
    if (c.status === 'completed' || c.status === 'canceled') throw new OutboundError(409, 'campaign_finished', `campaign is ${c.status}`);
    this.#o.campaigns.setStatus(id, 'running', { pauseReason: null, lastError: null }, this.#now());
    this.#breakers.get(id)?.reset();
    this.#activeOf(id);
    this.kick();
    return this.#campaign(id);
  }

  pauseCampaign(id: string, reason = 'paused by API', lastError?: string): CampaignRow<CampaignSettings> {
    const c = this.#campaign(id);
    if (c.status !== 'running' && c.status !== 'draft') throw new OutboundError(409, 'campaign_not_running', `campaign is ${c.status}`);
    this.#o.campaigns.setStatus(id, 'paused', { pauseReason: reason, ...(lastError !== undefined ? { lastError } : {}) }, this.#now());
    return this.#campaign(id);
  }

  resumeCampaign(id: string): CampaignRow<CampaignSettings> {
    const c = this.#campaign(id);
    if (c.status !== 'paused') throw new OutboundError(409, 'campaign_not_paused', `campaign is ${c.status}`);
    return this.startCampaign(id);
  }

  /** Cancels: no more dials; pending contacts end as `canceled`; calls in progress finish. */
  cancelCampaign(id: string): CampaignRow<CampaignSettings> {
    const c = this.#campaign(id);
    if (c.status === 'completed' || c.status === 'canceled') return c;
    this.#o.campaigns.setStatus(id, 'canceled', {}, this.#now());
    this.#o.campaigns.finishAll(id, 'canceled', this.#now());
    return this.#campaign(id);
  }

  /** Progress: counts, dial rate over the last minute, estimated time to finish. */
  progress(id: string): {
    counts: ReturnType<CampaignStore['counts']>;
    activeCalls: number;
    dialsLastMinute: number;
    dialRatePerMinute: number;
    etaSeconds: number | null;
  } {
    const c = this.#campaign(id);
    const counts = this.#o.campaigns.counts(id);
    const since = this.#now() - 60_000;
    const recent = this.#o.calls.list({ campaignId: id, since, limit: 10_000 }).filter((r) => r.status !== 'not-dialed').length;
    const remaining = counts.byState.pending + counts.byState.dialing;
    const settings = c.settings;
    const rate = recent > 0 ? recent / 60 : Math.min(settings.callsPerSecond, this.#o.maxCps);
    const eta = c.status === 'running' && remaining > 0 && rate > 0 ? Math.round(remaining / rate) : remaining === 0 ? 0 : null;
    return { counts, activeCalls: this.#active.get(id)?.size ?? 0, dialsLastMinute: recent, dialRatePerMinute: recent, etaSeconds: eta };
  }

  // --------------------------------------------------------- carrier callbacks

  /**
   * The carrier fetches TwiML for an outbound call (`/twilio/voice?callId=`).
   * Returns the route and held slot to admit it with, or undefined when the
   * call must be hung up (unknown, finished, or a hangup was requested).
   */
  answer(callId: string, callSid: string): { route: CallRoute; slot?: Slot; direction: string } | undefined {
    const row = this.#o.calls.get(callId);
    if (row === undefined || row.direction !== 'outbound') return undefined;
    if (row.callSid !== null && row.callSid !== callSid) {
      this.#log.warn({ callId, callSid, expected: row.callSid }, 'voice webhook for a call id with another CallSid; hanging up');
      return undefined;
    }
    const now = this.#now();
    if (row.callSid === null) this.#o.calls.update(callId, { callSid, dialedAt: row.dialedAt ?? now });
    if (row.finalizedAt !== null || row.hangupRequested) return undefined;
    this.#o.calls.update(callId, { answeredAt: now, status: TERMINAL_CALL_STATUSES.has(row.status) ? row.status : 'in-progress' });
    this.#o.calls.event(callId, 'answered', 'in-progress', null, null, now);
    const held = this.#held.get(callId);
    this.#held.delete(callId);
    const route: CallRoute = { agentId: row.agentId };
    if (row.prompt !== null) route.prompt = row.prompt;
    if (row.customGreeting !== null) route.customGreeting = row.customGreeting;
    return held === undefined ? { route, direction: 'outbound-api' } : { route, slot: held.slot, direction: 'outbound-api' };
  }

  /** An inbound call admitted by `/twilio/voice`: recorded with the call's route. */
  recordInbound(record: CallRecord): void {
    try {
      if (this.#o.calls.getBySid(record.callSid) !== undefined) return;
      this.#o.calls.insert(
        { direction: 'inbound', callSid: record.callSid, to: record.to, from: record.from, agentId: record.agentId, status: 'in-progress' },
        this.#now(),
      );
    } catch (err) {
      this.#log.error({ err, callSid: record.callSid }, 'could not record an inbound call');
    }
  }

  /** A status callback (`/twilio/status`, with `?callId=` for outbound calls). */
  onStatus(
    callId: string | undefined,
    b: { callSid: string; status: string; sequence?: number; durationS?: number; answeredBy?: string; sipResponseCode?: number; errorCode?: number },
  ): void {
    const row = (callId !== undefined ? this.#o.calls.get(callId) : undefined) ?? this.#o.calls.getBySid(b.callSid);
    if (row === undefined) return;
    const now = this.#now();
    const data: Record<string, unknown> = {};
    if (b.durationS !== undefined) data.durationS = b.durationS;
    if (b.answeredBy !== undefined) data.answeredBy = b.answeredBy;
    if (b.sipResponseCode !== undefined) data.sipResponseCode = b.sipResponseCode;
    this.#o.calls.event(row.id, 'status', b.status, b.sequence ?? null, Object.keys(data).length ? data : null, now);
    if (row.callSid === null) this.#o.calls.update(row.id, { callSid: b.callSid, dialedAt: row.dialedAt ?? now });
    if (row.finalizedAt !== null) return;
    // Out of order: an older callback than one already applied changes nothing.
    if (b.sequence !== undefined && row.lastSequence !== null && b.sequence <= row.lastSequence) return;
    const patch: Parameters<CallStore['update']>[1] = { status: b.status };
    if (b.sequence !== undefined) patch.lastSequence = b.sequence;
    if (b.answeredBy !== undefined) patch.answeredBy = b.answeredBy;
    if (b.status === 'in-progress' && row.answeredAt === null) patch.answeredAt = now;
    if (TERMINAL_CALL_STATUSES.has(b.status)) {
      this.#finalize(row, b.status, {
        durationS: b.durationS,
        answeredBy: b.answeredBy,
        sequence: b.sequence,
        errorCode: b.errorCode,
      });
      return;
    }
    this.#o.calls.update(row.id, patch);
  }

  /** The async AMD result (`/twilio/amd?callId=`). */
  onAmd(callId: string | undefined, b: { callSid: string; answeredBy: string; durationMs?: number }): void {
    const row = (callId !== undefined ? this.#o.calls.get(callId) : undefined) ?? this.#o.calls.getBySid(b.callSid);
    if (row === undefined) return;
    const now = this.#now();
    this.#o.calls.event(row.id, 'amd', null, null, { answeredBy: b.answeredBy, durationMs: b.durationMs ?? null }, now);
    this.#o.calls.update(row.id, { answeredBy: b.answeredBy });
    if (row.finalizedAt !== null) return;
    const machine = isMachine(b.answeredBy) || b.answeredBy === 'fax';
    if (!machine) return;
    const sid = row.callSid ?? b.callSid;
    const act = async (): Promise<void> => {
      try {
        if (row.voicemailAction === 'message' && row.voicemailMessage !== null && b.answeredBy !== 'fax') {
          this.#o.calls.event(row.id, 'voicemail_message', null, null, null, this.#now());
          await this.#o.dialer.sayAndHangup(sid, row.voicemailMessage);
        } else if (row.voicemailAction !== null) {
          this.#o.calls.event(row.id, 'voicemail_hangup', null, null, null, this.#now());
          await this.#o.dialer.hangup(sid);
        }
      } catch (err) {
        this.#log.warn({ callId: row.id, callSid: sid, err: (err as Error).message }, 'voicemail action failed');
      }
    };
    this.#track(this.#afterCall, act());
  }

  /** A live session ended: store its transcript and what the bridge knows. */
  onSessionEnded(record: CallRecord): void {
    try {
      const row = this.#o.calls.getBySid(record.callSid);
      if (row === undefined) return;
      const now = this.#now();
      const patch: Parameters<CallStore['update']>[1] = { sessionEndedAt: now };
      if (record.conversationId !== undefined) patch.conversationId = record.conversationId;
      if (record.endReason !== undefined) patch.endReason = record.endReason;
      this.#o.calls.update(row.id, patch);
      if (record.transcript.length > 0) {
        this.#o.calls.saveTranscript(
          row.id,
          'live',
          record.transcript.map((t) => ({ role: t.role, text: t.text, at: Date.parse(t.at) || now })),
        );
      }
    } catch (err) {
      this.#log.error({ err, callSid: record.callSid }, 'could not store the end of a session');
    }
  }

  // -------------------------------------------------------------- reconcile

  /**
   * Settles rows a previous run (or a lost request) left unfinished. Safe to
   * call at any time; rows the carrier cannot be asked about now are kept.
   */
  async reconcile(): Promise<{ attached: number; voided: number; finished: number; kept: number }> {
    const out = { attached: 0, voided: 0, finished: 0, kept: 0 };
    for (const row of this.#o.calls.unfinished()) {
      if (row.status === 'queued') continue;
      if (this.#held.has(row.id) || this.#o.manager.getSession(row.callSid ?? '') !== undefined) continue;
      try {
        const r = await this.#reconcileRow(row);
        out[r]++;
        // Followed, but nothing here will hear of it unless a callback comes: look again soon.
        if (r === 'kept' || r === 'attached') this.#recheck.set(row.id, this.#now() + 5_000);
      } catch (err) {
        out.kept++;
        this.#recheck.set(row.id, this.#now() + 15_000);
        this.#log.warn({ callId: row.id, err: (err as Error).message }, 'reconcile: carrier not reachable; will try again');
      }
    }
    if (out.attached + out.voided + out.finished > 0) this.#log.info(out, 'reconciled unfinished calls');
    return out;
  }

  async #reconcileRow(row: CallRow): Promise<'attached' | 'voided' | 'finished' | 'kept'> {
    const now = this.#now();
    if (row.direction === 'inbound') {
      if (row.sessionEndedAt === null && row.callSid !== null) {
        // The process that held its session is gone.
        this.#o.calls.update(row.id, { sessionEndedAt: now, endReason: row.endReason ?? 'bridge_restarted' });
      }
      const c = row.callSid !== null && this.#o.dialer.name === 'twilio' ? await this.#o.dialer.fetch(row.callSid) : undefined;
      if (c !== undefined && !TERMINAL_CALL_STATUSES.has(c.status)) return 'kept';
      this.#finalize(row, c?.status ?? 'completed', { durationS: c?.durationS });
      return 'finished';
    }
    if (row.callSid === null) {
      // Claimed, but did the carrier get the request? Ask it.
      const since = (row.claimedAt ?? row.createdAt) - 5_000;
      const found = (await this.#o.dialer.findRecent(row.to, row.from, since)).find((c) => this.#o.calls.getBySid(c.sid) === undefined);
      if (found === undefined) {
        this.#void(row, 'not found at the carrier after a restart or a lost request');
        return 'voided';
      }
      this.#o.calls.update(row.id, { callSid: found.sid, dialedAt: found.createdAt ?? now, status: found.status });
      this.#o.calls.event(row.id, 'reconciled', found.status, null, { callSid: found.sid }, now);
      if (TERMINAL_CALL_STATUSES.has(found.status)) this.#finalize({ ...row, callSid: found.sid }, found.status, { durationS: found.durationS, answeredBy: found.answeredBy });
      else if (row.campaignId !== null) this.#activeOf(row.campaignId).add(row.id);
      return 'attached';
    }
    const c = await this.#o.dialer.fetch(row.callSid);
    if (c === undefined) {
      this.#finalize(row, 'failed', { endReason: 'lost_by_carrier', errorMessage: 'the carrier no longer knows this call' });
      return 'finished';
    }
    if (TERMINAL_CALL_STATUSES.has(c.status)) {
      this.#finalize(row, c.status, { durationS: c.durationS, answeredBy: c.answeredBy });
      return 'finished';
    }
    if (row.campaignId !== null) this.#activeOf(row.campaignId).add(row.id);
    return 'kept';
  }

  // -------------------------------------------------------------- dial loop

  #schedule(delayMs: number): void {
    if (!this.#running) return;
    if (this.#timer !== undefined) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => this.#tick(), Math.max(0, delayMs));
  }

  #tick(): void {
    this.#timer = undefined;
    if (!this.#running) return;
    const now = this.#now();
    let wakeAt = now + (this.#o.pollMs ?? 1_000);
    try {
      if (now - this.#lastSweep >= 5_000) {
        this.#lastSweep = now;
        this.#sweep(now);
        if (now - this.#lastPrune >= 3_600_000) {
          this.#lastPrune = now;
          // Idempotency keys protect against retries, not forever: a day is plenty.
          this.#o.calls.pruneIdempotency(86_400_000, now);
        }
      }
      if (!this.#paused) {
        for (;;) {
          const next = this.#account.nextAt();
          if (next > now) {
            // Infinity: waiting for the carrier to answer a dial; its answer kicks the loop.
            wakeAt = Math.min(wakeAt, next);
            break;
          }
          const job = this.#pick(now);
          if (typeof job === 'number') {
            wakeAt = Math.min(wakeAt, job);
            break;
          }
          if (job === undefined) break;
          const tickets = [this.#account.take(now)];
          if (job.kind === 'contact') tickets.push(this.#pacerOf(job.campaign).take(now));
          this.#dial(job, now, tickets);
        }
      }
    } catch (err) {
      this.#log.error({ err }, 'dial loop error');
    }
    this.#schedule(wakeAt - this.#now());
  }

  /** The next job, a time to look again, or undefined when nothing is due. */
  #pick(now: number): Job | number | undefined {
    let wake: number | undefined;
    const soon = (t: number) => (wake = wake === undefined ? t : Math.min(wake, t));
    // API calls first.
    const [queued] = this.#o.calls.queued(1);
    if (queued !== undefined) {
      const slot = this.#o.manager.holdOutboundSlot(queued.id, queued.agentId);
      if (slot === undefined) return now + 250;
      return { kind: 'call', row: queued, slot };
    }
    const running = this.#o.campaigns.byStatus<CampaignSettings>('running');
    for (let i = 0; i < running.length; i++) {
      const campaign = running[(this.#rr + i) % running.length];
      if (campaign === undefined) continue;
      const settings = this.#settings(campaign);
      const active = this.#activeOf(campaign.id);
      if (active.size >= settings.maxConcurrent) continue;
      const pacer = this.#pacerOf(campaign);
      if (!pacer.ready(now)) {
        soon(pacer.nextAt());
        continue;
      }
      const contact = this.#nextContact(campaign, settings, now);
      if (typeof contact === 'number') {
        soon(contact);
        continue;
      }
      if (contact === undefined) {
        this.#maybeComplete(campaign.id);
        continue;
      }
      const slot = this.#o.manager.holdOutboundSlot(`${campaign.id}:${contact.id}`, settings.agentId ?? this.#o.defaultAgentId);
      if (slot === undefined) return now + 250;
      this.#rr = (this.#rr + i + 1) % Math.max(1, running.length);
      return { kind: 'contact', campaign: { ...campaign, settings }, contact, slot };
    }
    return wake;
  }

  /** The first due contact that may be called now; updates the others it passes over. */
  #nextContact(campaign: CampaignRow<unknown>, s: CampaignSettings, now: number): ContactRow | number | undefined {
    const { campaigns } = this.#o;
    for (let round = 0; round < 5; round++) {
      const due = campaigns.due(campaign.id, now, 50);
      if (due.length === 0) {
        const next = campaigns.nextDue(campaign.id);
        return next === undefined ? undefined : next;
      }
      for (const contact of due) {
        if (campaigns.dncHas(contact.phone)) {
          campaigns.updateContact(contact.id, { state: 'done', outcome: 'dnc', lastError: 'on the do-not-call list' }, now);
          continue;
        }
        if (s.window !== undefined && !isWithinWindow(s.window, now, contact.timezone ?? undefined)) {
          const next = nextWindowStart(s.window, now, contact.timezone ?? undefined);
          campaigns.updateContact(contact.id, { nextAttemptAt: next ?? now + 7 * 86_400_000 }, now);
          continue;
        }
        return contact;
      }
    }
    return now + 50;
  }

  #dial(job: Job, now: number, tickets: PacerTicket[]): void {
    const answered = (): void => {
      const t = this.#now();
      for (const ticket of tickets) ticket.answeredAt ??= t;
      this.kick();
    };
    const { calls, campaigns } = this.#o;
    let row: CallRow;
    let timeoutS = this.#o.ringTimeoutS;
    if (job.kind === 'call') {
      const claimed = calls.transaction(() => {
        const fresh = calls.get(job.row.id);
        if (fresh === undefined || fresh.status !== 'queued') return undefined;
        return calls.update(job.row.id, { status: 'claimed', claimedAt: now });
      });
      if (claimed === undefined) {
        this.#o.manager.releaseSlot(job.slot);
        answered();
        return;
      }
      row = claimed;
    } else {
      const { campaign, contact } = job;
      const s = campaign.settings;
      const fill = (t: string | undefined) => (t === undefined ? undefined : fillTemplate(t, contact.variables));
      const prompt = fill(s.prompt);
      const greeting = fill(s.customGreeting);
      const from = s.from ?? this.#o.defaultFrom;
      if ((prompt !== undefined && !prompt.ok) || (greeting !== undefined && !greeting.ok) || from === undefined) {
        const why = from === undefined ? 'no caller id: set settings.from or DEFAULT_CALLER_ID' : 'a template variable is missing for this contact';
        campaigns.updateContact(contact.id, { state: 'done', outcome: 'failed', lastError: why }, now);
        this.#o.manager.releaseSlot(job.slot);
        answered();
        if (from === undefined) this.pauseCampaign(campaign.id, 'configuration', why);
        return;
      }
      timeoutS = s.ringTimeoutSeconds;
      const vm = s.voicemail;
      row = calls.transaction(() => {
        const r = calls.insert(
          {
            direction: 'outbound',
            to: contact.phone,
            from,
            agentId: s.agentId ?? this.#o.defaultAgentId,
            prompt: prompt?.ok ? prompt.text : undefined,
            customGreeting: greeting?.ok ? greeting.text : undefined,
            metadata: { ...(s.metadata ?? {}), campaignName: campaign.name },
            machineDetection: vm.action !== 'continue',
            voicemailAction: vm.action === 'continue' ? undefined : vm.action,
            voicemailMessage: vm.action === 'message' ? vm.message : undefined,
            campaignId: campaign.id,
            contactId: contact.id,
            attempt: contact.attempts + 1,
            status: 'claimed',
            claimedAt: now,
          },
          now,
        );
        campaigns.updateContact(contact.id, { state: 'dialing', attempts: contact.attempts + 1, lastCallId: r.id }, now);
        return r;
      });
      this.#activeOf(campaign.id).add(row.id);
    }
    this.#held.set(row.id, { slot: job.slot, at: now });
    this.#track(this.#inflight, this.#place(row, timeoutS).finally(answered));
  }

  async #place(row: CallRow, timeoutS: number): Promise<void> {
    const base = this.#o.publicUrl;
    const q = `?callId=${encodeURIComponent(row.id)}`;
    const req: DialRequest = {
      callId: row.id,
      to: row.to,
      from: row.from,
      url: `${base}/twilio/voice${q}`,
      statusCallback: `${base}/twilio/status${q}`,
      timeoutS,
      timeLimitS: this.#o.maxCallS,
    };
    if (row.machineDetection) {
      req.machineDetection = row.voicemailAction === 'message' ? 'DetectMessageEnd' : 'Enable';
      req.amdCallback = `${base}/twilio/amd${q}`;
    }
    try {
      const c = await this.#o.dialer.create(req);
      const now = this.#now();
      this.#rateBackoff = 0;
      const fresh = this.#o.calls.get(row.id);
      this.#o.calls.update(row.id, {
        callSid: c.sid,
        dialedAt: fresh?.dialedAt ?? now,
        status: fresh?.status === 'claimed' ? 'dialed' : fresh?.status,
      });
      this.#o.calls.event(row.id, 'dialed', c.status, null, { callSid: c.sid }, now);
      this.#o.onDial?.('dialed');
      if (fresh?.hangupRequested === true) await this.#o.dialer.hangup(c.sid).catch(() => undefined);
    } catch (err) {
      this.#dialFailed(row, err);
    }
  }

  #dialFailed(row: CallRow, err: unknown): void {
    const now = this.#now();
    const e = err instanceof DialError ? err : new DialError('unknown', err instanceof Error ? err.message : String(err));
    this.#o.onDial?.(e.kind);
    this.#o.calls.event(row.id, 'dial_error', null, null, { kind: e.kind, code: e.code ?? null, httpStatus: e.httpStatus ?? null, message: e.message }, now);
    this.#log.warn({ callId: row.id, kind: e.kind, code: e.code, httpStatus: e.httpStatus, err: e.message }, 'dial failed');
    const fresh = this.#o.calls.get(row.id) ?? row;
    if (fresh.callSid !== null || fresh.finalizedAt !== null) return; // a callback already told us the call exists
    switch (e.kind) {
      case 'invalid-number':
        this.#o.calls.update(row.id, { errorCode: e.code ?? null, errorMessage: e.message });
        this.#finalize(fresh, 'failed', { errorCode: e.code, errorMessage: e.message, contactOutcome: 'invalid-number', noRetry: true });
        return;
      case 'rate-limited': {
        const backoff = BACKOFF_429_MS[Math.min(this.#rateBackoff, BACKOFF_429_MS.length - 1)] ?? 30_000;
        this.#rateBackoff++;
        this.#account.pauseUntil(now + backoff);
        this.#void(fresh, `rate limited by the carrier (${e.code ?? 429}); retrying in ${backoff} ms`, now + backoff);
        return;
      }
      case 'auth':
        if (fresh.campaignId === null) {
          this.#finalize(fresh, 'failed', { errorCode: e.code, errorMessage: `carrier rejected our credentials: ${e.message}` });
          return;
        }
        this.#void(fresh, e.message);
        {
          try {
            this.pauseCampaign(fresh.campaignId, 'carrier_auth', `carrier rejected our credentials (${e.code ?? e.httpStatus ?? ''}): ${e.message}`);
          } catch {
            // already paused or finished
          }
        }
        return;
      case 'rejected':
        this.#o.calls.update(row.id, { errorCode: e.code ?? null, errorMessage: e.message });
        this.#finalize(fresh, 'failed', { errorCode: e.code, errorMessage: e.message });
        return;
      case 'unknown':
        // The request may or may not have created a call: ask the carrier later rather than dial again.
        this.#recheck.set(row.id, now + 15_000);
        this.#releaseHeld(row.id);
        return;
    }
  }

  /** An attempt that never reached the carrier: the contact (or API call) is due again, without using up an attempt. */
  #void(row: CallRow, why: string, dueAt = this.#now()): void {
    const now = this.#now();
    this.#releaseHeld(row.id);
    this.#o.calls.transaction(() => {
      if (row.contactId !== null && row.campaignId !== null) {
        this.#o.calls.update(row.id, { status: 'not-dialed', outcome: 'not-dialed', errorMessage: why, finalizedAt: now, endedAt: now });
        this.#o.calls.event(row.id, 'voided', 'not-dialed', null, { why }, now);
        const contact = this.#o.campaigns.contact(row.contactId);
        if (contact !== undefined && contact.state === 'dialing' && contact.lastCallId === row.id) {
          this.#o.campaigns.updateContact(contact.id, { state: 'pending', attempts: Math.max(0, contact.attempts - 1), nextAttemptAt: dueAt, lastError: why }, now);
        }
        this.#active.get(row.campaignId)?.delete(row.id);
      } else {
        // An API call goes back to the queue.
        this.#o.calls.update(row.id, { status: 'queued', errorMessage: why });
        this.#o.calls.event(row.id, 'requeued', 'queued', null, { why }, now);
      }
    });
    if (dueAt > now) this.#schedule(dueAt - now);
    else this.kick();
  }

  // -------------------------------------------------------------- finishing

  #finalize(
    row: CallRow,
    status: string,
    f: {
      durationS?: number;
      answeredBy?: string;
      sequence?: number;
      errorCode?: number;
      errorMessage?: string;
      endReason?: string;
      contactOutcome?: string;
      noRetry?: boolean;
    },
  ): void {
    const now = this.#now();
    // A finished call keeps no session: ending it first stores its transcript.
    if (row.callSid !== null) this.#o.manager.getSession(row.callSid)?.close('caller_hangup');
    this.#releaseHeld(row.id);
    this.#recheck.delete(row.id);
    const fresh = this.#o.calls.get(row.id) ?? row;
    if (fresh.finalizedAt !== null) return;
    const answeredBy = f.answeredBy ?? fresh.answeredBy ?? undefined;
    const outcome = outcomeOf(status, answeredBy);
    const patch: Parameters<CallStore['update']>[1] = { status, outcome, endedAt: now, finalizedAt: now };
    if (f.durationS !== undefined) patch.durationS = f.durationS;
    else if (fresh.answeredAt !== null) patch.durationS = Math.round((now - fresh.answeredAt) / 1000);
    if (answeredBy !== undefined) patch.answeredBy = answeredBy;
    if (f.sequence !== undefined) patch.lastSequence = f.sequence;
    if (f.errorCode !== undefined) patch.errorCode = f.errorCode;
    if (f.errorMessage !== undefined) patch.errorMessage = f.errorMessage;
    if (f.endReason !== undefined && fresh.endReason === null) patch.endReason = f.endReason;
    this.#o.calls.transaction(() => {
      this.#o.calls.update(row.id, patch);
      this.#o.calls.event(row.id, 'finalized', status, f.sequence ?? null, { outcome }, now);
      if (fresh.contactId !== null && fresh.campaignId !== null) this.#settleContact(fresh, outcome, f, now);
    });
    if (fresh.campaignId !== null) {
      this.#active.get(fresh.campaignId)?.delete(row.id);
      this.#checkBreaker(fresh.campaignId, outcome, now);
      this.#maybeComplete(fresh.campaignId);
      this.kick();
    }
    const final = this.#o.calls.get(row.id);
    if (final !== undefined && final.outcome !== 'not-dialed') this.#track(this.#afterCall, this.#postCall(final));
  }

  #settleContact(row: CallRow, outcome: CallOutcome, f: { contactOutcome?: string; noRetry?: boolean; errorMessage?: string }, now: number): void {
    const contactId = row.contactId;
    const campaignId = row.campaignId;
    if (contactId === null || campaignId === null) return;
    const contact = this.#o.campaigns.contact(contactId);
    if (contact === undefined || contact.state === 'done' || contact.lastCallId !== row.id) return;
    const campaign = this.#o.campaigns.get<CampaignSettings>(campaignId);
    const s = campaign === undefined ? undefined : this.#settings(campaign);
    const retryable =
      s !== undefined &&
      campaign?.status !== 'canceled' &&
      f.noRetry !== true &&
      (s.retry.on as string[]).includes(outcome) &&
      contact.attempts < s.retry.maxAttempts;
    if (retryable) {
      this.#o.campaigns.updateContact(contactId, { state: 'pending', nextAttemptAt: now + s.retry.delaySeconds * 1000, lastError: f.errorMessage ?? outcome }, now);
    } else {
      this.#o.campaigns.updateContact(contactId, { state: 'done', outcome: f.contactOutcome ?? outcome, lastError: f.errorMessage ?? null }, now);
    }
  }

  #checkBreaker(campaignId: string, outcome: CallOutcome, now: number): void {
    const campaign = this.#o.campaigns.get<CampaignSettings>(campaignId);
    if (campaign === undefined || campaign.status !== 'running') return;
    const s = this.#settings(campaign);
    let b = this.#breakers.get(campaignId);
    if (b === undefined) {
      b = new FailureBreaker(s.failurePause);
      this.#breakers.set(campaignId, b);
    }
    b.record(outcome === 'failed', now);
    const t = b.tripped(now);
    if (t !== undefined) {
      const why = `${t.failed} of the last ${t.total} attempts failed (threshold ${Math.round(s.failurePause.threshold * 100)}% over ${s.failurePause.windowSeconds} s)`;
      this.#log.warn({ campaignId, ...t }, 'failure spike: campaign paused');
      this.#o.campaigns.setStatus(campaignId, 'paused', { pauseReason: 'failure_spike', lastError: why }, now);
      b.reset();
    }
  }

  #maybeComplete(campaignId: string): void {
    const campaign = this.#o.campaigns.get(campaignId);
    if (campaign === undefined || campaign.status !== 'running') return;
    const counts = this.#o.campaigns.counts(campaignId);
    if (counts.byState.pending === 0 && counts.byState.dialing === 0 && (this.#active.get(campaignId)?.size ?? 0) === 0) {
      this.#o.campaigns.setStatus(campaignId, 'completed', {}, this.#now());
      this.#log.info({ campaignId, outcomes: counts.byOutcome, attempts: counts.attempts }, 'campaign completed');
    }
  }

  /** Transcript from PlayAI (when configured), then the post-call webhook. */
  async #postCall(row: CallRow): Promise<void> {
    try {
      if (this.#o.fetchTranscript !== undefined && row.conversationId !== null) {
        try {
          const turns = await this.#o.fetchTranscript(row);
          if (turns !== undefined && turns.length > 0) this.#o.calls.saveTranscript(row.id, 'playai', turns);
        } catch (err) {
          this.#log.warn({ callId: row.id, err: (err as Error).message }, 'PlayAI transcript fetch failed; the live transcript is kept');
        }
      }
      if (this.#o.webhooks !== undefined) {
        const fresh = this.#o.calls.get(row.id) ?? row;
        this.#o.webhooks.enqueue('call.completed', row.id, callPayload(fresh, this.#o.calls, this.#o.campaigns));
      }
    } catch (err) {
      this.#log.error({ callId: row.id, err }, 'post-call work failed');
    }
  }

  // -------------------------------------------------------------- upkeep

  /**
   * Every few seconds: settle rows due for a recheck, release slots held far
   * past the ring time, and schedule a recheck for calls that went quiet (no
   * session here and no callback for a while: lost callbacks, a restart).
   */
  #sweep(now: number): void {
    for (const [id, h] of this.#held) {
      const row = this.#o.calls.get(id);
      if (row !== undefined && now - h.at < (this.#ringLimitS(row) + 60) * 1000) continue;
      // No answer and no final status long after the ring time: ask the carrier.
      this.#releaseHeld(id);
      this.#recheck.set(id, now);
    }
    const settle = this.#o.settleAfterMs ?? 20_000;
    for (const row of this.#o.calls.unfinished()) {
      if (row.status === 'queued' || this.#held.has(row.id) || this.#recheck.has(row.id)) continue;
      if (row.callSid !== null && this.#o.manager.getSession(row.callSid) !== undefined) continue;
      const last = Math.max(row.createdAt, row.claimedAt ?? 0, row.dialedAt ?? 0, row.answeredAt ?? 0, row.sessionEndedAt ?? 0);
      const quietFor = row.sessionEndedAt !== null ? settle : (this.#ringLimitS(row) + 60) * 1000;
      if (now - last > quietFor) this.#recheck.set(row.id, now);
    }
    for (const [id, at] of this.#recheck) {
      if (at > now) continue;
      this.#recheck.delete(id);
      const row = this.#o.calls.get(id);
      if (row === undefined || row.finalizedAt !== null || this.#held.has(id)) continue;
      if (row.callSid !== null && this.#o.manager.getSession(row.callSid) !== undefined) continue;
      this.#track(
        this.#inflight,
        this.#settleStale(row).then((finished) => {
          if (!finished) this.#recheck.set(id, this.#now() + 15_000);
        }),
      );
    }
  }

  /** Asks the carrier about a quiet call; true when the call is settled now. */
  async #settleStale(row: CallRow): Promise<boolean> {
    try {
      if (row.callSid === null) {
        const r = await this.#reconcileRow(row);
        return r === 'voided' || r === 'finished';
      }
      const c = await this.#o.dialer.fetch(row.callSid);
      if (c === undefined) {
        this.#finalize(row, row.answeredAt !== null || row.sessionEndedAt !== null ? 'completed' : 'failed', { endReason: row.endReason ?? 'no_final_status' });
        return true;
      }
      if (TERMINAL_CALL_STATUSES.has(c.status)) {
        this.#finalize(row, c.status, { durationS: c.durationS, answeredBy: c.answeredBy });
        return true;
      }
      if (c.status === 'in-progress' && row.answeredAt === null && row.direction === 'outbound') {
        // Answered, but its TwiML request never reached us: nobody is on our side of it.
        await this.#o.dialer.hangup(row.callSid);
      }
      return false;
    } catch (err) {
      this.#log.warn({ callId: row.id, err: (err as Error).message }, 'could not settle a quiet call; will try again');
      return false;
    }
  }

  #ringLimitS(row: CallRow | undefined): number {
    if (row?.campaignId !== null && row?.campaignId !== undefined) {
      const c = this.#o.campaigns.get<CampaignSettings>(row.campaignId);
      if (c !== undefined) return this.#settings(c).ringTimeoutSeconds;
    }
    return this.#o.ringTimeoutS;
  }

  #releaseHeld(id: string): void {
    const h = this.#held.get(id);
    if (h === undefined) return;
    this.#held.delete(id);
    this.#o.manager.releaseSlot(h.slot);
  }

  #track(set: Set<Promise<void>>, p: Promise<void>): void {
    const tracked = p.catch((err: unknown) => this.#log.error({ err }, 'outbound task failed'));
    set.add(tracked);
    void tracked.finally(() => set.delete(tracked));
  }

  #activeOf(campaignId: string): Set<string> {
    let s = this.#active.get(campaignId);
    if (s === undefined) {
      s = new Set();
      this.#active.set(campaignId, s);
    }
    return s;
  }

  #pacerOf(campaign: CampaignRow<unknown>): Pacer {
    const rate = this.#settings(campaign).callsPerSecond;
    let p = this.#campaignPacers.get(campaign.id);
    if (p === undefined) {
      p = new Pacer(rate);
      this.#campaignPacers.set(campaign.id, p);
    } else p.setRate(rate);
    return p;
  }

  #settings(campaign: CampaignRow<unknown>): CampaignSettings {
    return campaignSettingsSchema.parse(campaign.settings);
  }

  #campaign(id: string): CampaignRow<CampaignSettings> {
    const c = this.#o.campaigns.get<CampaignSettings>(id);
    if (c === undefined) throw new OutboundError(404, 'not_found', `no campaign ${id}`);
    return { ...c, settings: this.#settings(c) };
  }

  /** Held outbound slots and dials in flight (for tests and metrics). */
  get stats(): { held: number; inflight: number; recheck: number } {
    return { held: this.#held.size, inflight: this.#inflight.size, recheck: this.#recheck.size };
  }
}
