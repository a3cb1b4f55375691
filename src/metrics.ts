/**
 * Prometheus metrics (prom-client), one registry per app instance.
 *
 * Per-frame counts are plain integer fields bumped on the media hot path and
 * copied into the prom-client counters only when /metrics is scraped, so a
 * frame costs an integer increment, not a label lookup.
 */
import client from 'prom-client';

export type Direction = 'caller_to_agent' | 'agent_to_caller';

export interface MetricsSources {
  liveCalls(): number;
  reservedSlots(): number;
  capacity(): number;
  draining(): boolean;
  /** Slots held by outbound calls (ringing or live). */
  outboundSlots?(): number;
  /** Agents whose health is known, and whether each is up. */
  agents?(): Array<{ ref: string; up: boolean }>;
  /** Open `/v1/events` subscriptions (every bus subscriber). */
  eventSubscribers?(): number;
  /** REDIS_URL: the fleet's slots (read from Redis at scrape time; rejects when Redis is away). */
  fleet?(): Promise<FleetSlotsSnapshot>;
}

/** The fleet's slots as `/metrics` shows them. */
export interface FleetSlotsSnapshot {
  slotsInUse: number;
  slotLimit: number;
  outboundSlots: number;
  /** Per agent provider (a bounded set of labels). */
  providers: Partial<Record<string, { slotsInUse: number; limit: number }>>;
  thisProcess: { slotsInUse: number };
}

/** How long one read of the fleet's slots serves the gauges of a scrape. */
const FLEET_SNAPSHOT_MS = 500;

export class Metrics {
  readonly registry = new client.Registry();

  /** Hot-path tallies, exported at scrape time. */
  framesUp = 0;
  bytesUp = 0;
  framesDown = 0;
  bytesDown = 0;
  /** Caller frames that could not be delivered to the agent (buffer overflow, agent gone). */
  framesLost = 0;
  /** Agent frames dropped on purpose after a barge-in. */
  framesDroppedAfterBargeIn = 0;
  /** Agent audio chunks dropped because the Twilio socket was not draining. */
  agentFramesDroppedBackpressure = 0;

  readonly callsTotal: client.Counter<'outcome'>;
  readonly refusedTotal: client.Counter<'reason'>;
  readonly streamRejectedTotal: client.Counter<'reason'>;
  readonly bargeInsTotal: client.Counter;
  readonly marksTotal: client.Counter<'kind'>;
  readonly badFramesTotal: client.Counter<'leg' | 'kind'>;
  readonly agentErrorsTotal: client.Counter<'provider' | 'code' | 'fatal'>;
  readonly agentFallbacksTotal: client.Counter;
  readonly toolCallsTotal: client.Counter<'result'>;
  readonly agentUnknownMessagesTotal: client.Counter;
  readonly agentReconnectsTotal: client.Counter<'result'>;
  readonly agentCapacityTotal: client.Counter;
  readonly webhookSignatureFailures: client.Counter<'route'>;
  readonly outboundDialsTotal: client.Counter<'result'>;
  /** REDIS_URL: the fleet's dial queue (the same figures on every process). */
  readonly dialQueueJobs: client.Gauge<'state'>;
  readonly dialJobsTotal: client.Counter<'outcome'>;
  readonly storeErrorsTotal: client.Counter<'op' | 'code'>;
  readonly eventsConsumersCutTotal: client.Counter;
  readonly firstAgentAudioSeconds: client.Histogram;
  readonly bargeInClearSeconds: client.Histogram;
  readonly agentInitSeconds: client.Histogram;

  /** The fleet's slots read for the current scrape (every fleet gauge shares one Redis call). */
  #fleetRead: { at: number; snapshot: Promise<FleetSlotsSnapshot | undefined> } | undefined;

  constructor(sources: MetricsSources) {
    const registers = [this.registry];
    client.collectDefaultMetrics({ register: this.registry, prefix: 'playline_' });

    new client.Gauge({ name: 'playline_calls_live', help: 'Calls with a live media session', registers, collect() { this.set(sources.liveCalls()); } });
    new client.Gauge({ name: 'playline_slots_reserved', help: 'Capacity reserved by /twilio/voice for streams not yet started', registers, collect() { this.set(sources.reservedSlots()); } });
    new client.Gauge({ name: 'playline_capacity', help: 'Effective maximum of concurrent calls to the default agent (lower than configured after its provider refused a session for capacity)', registers, collect() { this.set(sources.capacity()); } });
    new client.Gauge({ name: 'playline_outbound_slots', help: 'Slots held by outbound calls (dialed, ringing or live)', registers, collect() { this.set(sources.outboundSlots?.() ?? 0); } });
    new client.Gauge({
      name: 'playline_agent_up',
      help: '1 while an agent takes calls, 0 while a run of failed connects has marked it down (agents that have had a connect attempt)',
      labelNames: ['agent'] as const,
      registers,
      collect() {
        this.reset();
        for (const a of sources.agents?.() ?? []) this.labels(a.ref).set(a.up ? 1 : 0);
      },
    });
    new client.Gauge({ name: 'playline_draining', help: '1 while the bridge is draining for shutdown', registers, collect() { this.set(sources.draining() ? 1 : 0); } });
    if (sources.fleet !== undefined) this.#fleetGauges(sources.fleet, registers);

    const self = this;
    const frameCounter = (name: string, help: string, get: (d: Direction) => number) =>
      new client.Counter({
        name,
        help,
        labelNames: ['direction'] as const,
        registers,
        collect() {
          this.reset();
          this.labels('caller_to_agent').inc(get('caller_to_agent'));
          this.labels('agent_to_caller').inc(get('agent_to_caller'));
        },
      });
    frameCounter('playline_media_frames_total', 'Media messages forwarded', (d) => (d === 'caller_to_agent' ? self.framesUp : self.framesDown));
    frameCounter('playline_media_bytes_total', 'Audio bytes forwarded (decoded size)', (d) => (d === 'caller_to_agent' ? self.bytesUp : self.bytesDown));
    new client.Counter({ name: 'playline_caller_frames_lost_total', help: 'Caller frames that could not be delivered to the agent', registers, collect() { this.reset(); this.inc(self.framesLost); } });
    new client.Counter({
      name: 'playline_agent_frames_dropped_total',
      help: 'Agent audio chunks not sent to the caller, by reason: barge_in (late audio of an interrupted response), carrier_backpressure (the Twilio socket was not draining)',
      labelNames: ['reason'] as const,
      registers,
      collect() {
        this.reset();
        this.labels('barge_in').inc(self.framesDroppedAfterBargeIn);
        this.labels('carrier_backpressure').inc(self.agentFramesDroppedBackpressure);
      },
    });

    this.callsTotal = new client.Counter({ name: 'playline_calls_total', help: 'Ended calls by outcome', labelNames: ['outcome'] as const, registers });
    this.refusedTotal = new client.Counter({ name: 'playline_calls_refused_total', help: 'Calls refused at the webhook', labelNames: ['reason'] as const, registers });
    this.streamRejectedTotal = new client.Counter({ name: 'playline_streams_rejected_total', help: 'Media streams closed before a session started', labelNames: ['reason'] as const, registers });
    this.bargeInsTotal = new client.Counter({ name: 'playline_barge_ins_total', help: 'Agent playback cleared because the caller spoke', registers });
    this.marksTotal = new client.Counter({ name: 'playline_marks_total', help: 'Playback marks', labelNames: ['kind'] as const, registers });
    this.badFramesTotal = new client.Counter({ name: 'playline_bad_frames_total', help: 'Frames dropped as malformed or out of place', labelNames: ['leg', 'kind'] as const, registers });
    this.agentErrorsTotal = new client.Counter({ name: 'playline_agent_errors_total', help: 'Agent errors by provider, code (a documented code, none or other) and whether they ended the agent session (fatal)', labelNames: ['provider', 'code', 'fatal'] as const, registers });
    this.agentFallbacksTotal = new client.Counter({ name: 'playline_agent_fallbacks_total', help: 'Calls handed to a fallback agent (AGENTS_FILE fallback) after their agent refused or failed', registers });
    this.toolCallsTotal = new client.Counter({ name: 'playline_tool_calls_total', help: 'Operator HTTP tool calls by result (ok, timeout, http_error, too_large, not_json, network, busy)', labelNames: ['result'], registers });
    this.agentUnknownMessagesTotal = new client.Counter({ name: 'playline_agent_unknown_messages_total', help: 'Agent messages of an unknown type (ignored)', registers });
    this.agentReconnectsTotal = new client.Counter({ name: 'playline_agent_reconnects_total', help: 'Agent-leg reconnects by result (attempt, success, gave_up)', labelNames: ['result'] as const, registers });
    this.agentCapacityTotal = new client.Counter({ name: 'playline_agent_capacity_exceeded_total', help: 'Agent accounts refusing a session for capacity (PlayAI 4429 and the equivalents of other providers)', registers });
    this.outboundDialsTotal = new client.Counter({ name: 'playline_outbound_dials_total', help: 'Outbound dial requests by result (dialed, invalid-number, rate-limited, auth, rejected, unknown)', labelNames: ['result'] as const, registers });
    this.dialQueueJobs = new client.Gauge({ name: 'playline_dial_queue_jobs', help: 'REDIS_URL: dial jobs in the fleet queue by state (waiting, delayed, active), as of the last scan', labelNames: ['state'] as const, registers });
    this.dialJobsTotal = new client.Counter({
      name: 'playline_dial_jobs_total',
      help: 'REDIS_URL: dial jobs this process finished, by outcome (dialed, failed, stale, reconciled, dropped, settled)',
      labelNames: ['outcome'] as const,
      registers,
    });
    this.storeErrorsTotal = new client.Counter({
      name: 'playline_store_errors_total',
      help: 'Failed database writes or reads by operation and SQLite code (alert on any: disk full, unwritable DATA_DIR, locked database)',
      labelNames: ['op', 'code'] as const,
      registers,
    });
    new client.Gauge({ name: 'playline_events_subscribers', help: 'Open live-event subscriptions (/v1/events streams and webhook forwarding)', registers, collect() { this.set(sources.eventSubscribers?.() ?? 0); } });
    this.eventsConsumersCutTotal = new client.Counter({
      name: 'playline_events_consumers_cut_total',
      help: '/v1/events streams cut off because the client stopped reading (no progress for 30 s, its events left the retained window, or over 1 MiB unsent)',
      registers,
    });
    this.webhookSignatureFailures = new client.Counter({ name: 'playline_signature_failures_total', help: 'Requests refused for a missing or invalid X-Twilio-Signature', labelNames: ['route'] as const, registers });
    this.firstAgentAudioSeconds = new client.Histogram({
      name: 'playline_first_agent_audio_seconds',
      help: 'Time from stream start to the first agent audio sent to the caller',
      buckets: [0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10],
      registers,
    });
    this.bargeInClearSeconds = new client.Histogram({
      name: 'playline_barge_in_clear_seconds',
      help: 'Barge-in: time from the agent voiceActivityStart to Twilio echoing the first mark the clear flushed (the caller no longer hears the agent); barge-ins with no mark pending are not timed',
      buckets: [0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5],
      registers,
    });
    this.agentInitSeconds = new client.Histogram({
      name: 'playline_agent_init_seconds',
      help: 'Time from opening the agent socket to its init',
      buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10],
      registers,
    });
  }

  /** Fleet gauges (REDIS_URL), read from Redis when scraped, never per call. */
  #fleetGauges(read: () => Promise<FleetSlotsSnapshot>, registers: client.Registry[]): void {
    const snapshot = (): Promise<FleetSlotsSnapshot | undefined> => {
      const now = performance.now();
      if (this.#fleetRead === undefined || now - this.#fleetRead.at > FLEET_SNAPSHOT_MS) {
        this.#fleetRead = { at: now, snapshot: read().catch(() => undefined) };
      }
      return this.#fleetRead.snapshot;
    };
    new client.Gauge({
      name: 'playline_fleet_redis_up',
      help: '1 when this process read the fleet slots from Redis at this scrape, 0 when Redis did not answer (the other playline_fleet_* gauges then keep their last values)',
      registers,
      async collect() {
        this.set((await snapshot()) === undefined ? 0 : 1);
      },
    });
    const gauge = (name: string, help: string, value: (s: FleetSlotsSnapshot) => number) =>
      new client.Gauge({
        name,
        help,
        registers,
        async collect() {
          const s = await snapshot();
          if (s !== undefined) this.set(value(s));
        },
      });
    gauge('playline_fleet_slots_in_use', 'Call slots leased in the whole fleet (REDIS_URL): live calls and admitted calls whose stream has not started', (s) => s.slotsInUse);
    gauge('playline_fleet_slots_limit', 'MAX_CONCURRENT_CALLS, fleet-wide (REDIS_URL)', (s) => s.slotLimit);
    gauge('playline_fleet_outbound_slots', 'Call slots taken by outbound dialing in the whole fleet (REDIS_URL)', (s) => s.outboundSlots);
    gauge('playline_fleet_process_slots_in_use', "This process's share of the fleet's call slots (REDIS_URL)", (s) => s.thisProcess.slotsInUse);
    const perProvider = (name: string, help: string, value: (p: { slotsInUse: number; limit: number }) => number) =>
      new client.Gauge({
        name,
        help,
        labelNames: ['provider'] as const,
        registers,
        async collect() {
          const s = await snapshot();
          if (s === undefined) return;
          this.reset();
          for (const [provider, p] of Object.entries(s.providers)) if (p !== undefined) this.labels(provider).set(value(p));
        },
      });
    perProvider('playline_fleet_provider_slots_in_use', 'Call slots of one agent provider in the whole fleet (REDIS_URL; providers with calls or a learned limit)', (p) => p.slotsInUse);
    perProvider('playline_fleet_provider_slots_limit', 'Concurrent calls allowed to one agent provider fleet-wide now: MAX_CONCURRENT_CALLS, or less while a learned limit holds after a capacity refusal (REDIS_URL)', (p) => p.limit);
  }
}
