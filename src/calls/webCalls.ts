/**
 * Browser calls (`POST /v1/web-calls`, `WS /web/media-stream`): a call with no
 * carrier. The browser speaks the Twilio Media Streams protocol itself, so the
 * call takes exactly the phone path once its stream starts: the session
 * manager admits it (same capacity, agent limits, drain and agent-down
 * refusals), mints its single-use stream token, and a `CallSession` carries it.
 *
 * What differs: the call's record is created here (`direction: "web"`), its
 * CallSid is ours (`WC` + 32 hex digits, which no Twilio CallSid looks like),
 * nothing can speak to the caller outside the agent ({@link NO_CARRIER_CONTROL}),
 * and no carrier will ever send its final status: the call is finalized when
 * its session ends, or when its token expires unused (`OutboundService.finishWebCall`).
 */
import { randomBytes } from 'node:crypto';
import type { Logger } from 'pino';
import type { CallControl } from '../carrier/twilio/callControl.js';
import type { NumberRoute } from '../config.js';
import type { CallRoute, RefusalReason, SessionManager } from '../session/manager.js';
import type { FleetAdmission } from '../session/fleetAdmission.js';
import type { CallStore } from '../store/calls.js';
import { errorMessage } from '../util/errors.js';

/** Where the browser opens its Media Streams socket (on the server that minted the token). */
export const WEB_STREAM_PATH = '/web/media-stream';

/** The caller of every browser call (its `from`). */
export const WEB_CALLER = 'browser';

/** `WC` + 32 lowercase hex digits. */
const WEB_CALL_SID = /^WC[0-9a-f]{32}$/;

/** A fresh browser-call CallSid: `WC` + 32 hex digits. Twilio's CallSids start with `CA`. */
export function newWebCallSid(): string {
  return `WC${randomBytes(16).toString('hex')}`;
}

export function isWebCallSid(callSid: string): boolean {
  return WEB_CALL_SID.test(callSid);
}

/**
 * A browser call has no carrier REST API: nothing can be said to the caller outside the agent,
 * and nothing forwarded. Both resolve false, so the session closes the stream itself.
 */
export const NO_CARRIER_CONTROL: CallControl = {
  sayAndHangup: async () => false,
  forward: async () => false,
};

export interface WebCallRequest {
  agentId?: string | undefined;
  route?: string | undefined;
  prompt?: string | undefined;
  customGreeting?: string | undefined;
  /** Record the call (over the route's, the agent's and RECORDING_DEFAULT). */
  record?: boolean | undefined;
}

export interface WebCallTicket {
  callId: string;
  callSid: string;
  token: string;
  expiresAt: number;
}

export type WebCallResult =
  | { ok: true; ticket: WebCallTicket }
  /** `unknown_route`: 404; `invalid_agent`: 400; the manager's refusals: 503. */
  | { ok: false; why: 'unknown_route' | 'invalid_agent' | RefusalReason; message: string };

export interface WebCallsOptions {
  manager: SessionManager;
  calls: CallStore;
  routes: ReadonlyMap<string, NumberRoute>;
  defaultAgentId: string;
  maxConcurrentCalls: number;
  /** Why calls cannot go to this agent (its provider is not configured), or undefined. */
  checkAgent(agentId: string): string | undefined;
  /** REDIS_URL: the call is admitted fleet-wide, and its token lives in Redis (its socket may reach any process). */
  fleet?: Pick<FleetAdmission, 'admitRecorded' | 'cancel'> | undefined;
  log: Logger;
  now?: () => number;
}

/** What each admission refusal means for a browser call, and what to do about it. */
function refusalMessage(reason: RefusalReason, agentId: string, max: number): string {
  switch (reason) {
    case 'capacity':
      return `the bridge has its MAX_CONCURRENT_CALLS (${max}) calls in progress or admitted: try again when one ends, or raise MAX_CONCURRENT_CALLS`;
    case 'agent_capacity':
      return `the provider of ${agentId} refused a session for capacity a moment ago: try again when one of its calls ends`;
    case 'agent_limit':
      return `${agentId} has as many calls as AGENT_LIMITS allows it: try again when one ends, or raise its limit in AGENT_LIMITS`;
    case 'agent_down':
      return `${agentId} and its fallbacks are marked down after failed connects: check the agent (GET /v1/setup lists those down) and try again in a moment`;
    case 'draining':
      return 'the bridge is shutting down and takes no new calls: try again once it has restarted';
    case 'overload':
      return 'the bridge process is too busy now (event-loop delay over MAX_EVENT_LOOP_DELAY_MS): try again in a moment';
    case 'duplicate':
      return 'this call id is already in use: try again';
  }
}

export class WebCalls {
  readonly #o: WebCallsOptions;
  readonly #now: () => number;

  constructor(opts: WebCallsOptions) {
    this.#o = opts;
    this.#now = opts.now ?? Date.now;
  }

  /**
   * Admits a browser call and creates its record: the token is the socket's authorisation.
   * A number route brings its agent, prompt and greeting; otherwise the agent named (or the
   * default one) with the prompt and greeting given.
   */
  async create(req: WebCallRequest): Promise<WebCallResult> {
    const { manager, calls } = this.#o;
    let route: CallRoute;
    let to: string;
    if (req.route !== undefined) {
      const r = this.#o.routes.get(req.route);
      if (r === undefined) {
        const known = [...this.#o.routes.keys()].slice(0, 10);
        return {
          ok: false,
          why: 'unknown_route',
          message: `no number route ${req.route}${known.length > 0 ? ` (routes: ${known.join(', ')})` : ' (ROUTES_FILE sets none)'}: GET /v1/setup lists them; or send agentId instead`,
        };
      }
      route = { agentId: r.agentId, ...(r.prompt !== undefined ? { prompt: r.prompt } : {}), ...(r.customGreeting !== undefined ? { customGreeting: r.customGreeting } : {}), ...(r.record !== undefined ? { record: r.record } : {}) };
      to = req.route;
    } else {
      const agentId = req.agentId ?? this.#o.defaultAgentId;
      route = { agentId, ...(req.prompt !== undefined ? { prompt: req.prompt } : {}), ...(req.customGreeting !== undefined ? { customGreeting: req.customGreeting } : {}) };
      to = agentId;
    }
    if (req.record !== undefined) route.record = req.record;
    const unusable = this.#o.checkAgent(route.agentId);
    if (unusable !== undefined) return { ok: false, why: 'invalid_agent', message: unusable };

    const callSid = newWebCallSid();
    const call = { callSid, from: WEB_CALLER, to, direction: 'web' };
    const fleet = this.#o.fleet;
    const admitted = fleet === undefined ? manager.admit(call, { route }) : await fleet.admitRecorded(call, { route, outbound: false });
    if (!admitted.ok) return { ok: false, why: admitted.reason, message: refusalMessage(admitted.reason, route.agentId, this.#o.maxConcurrentCalls) };
    const now = this.#now();
    try {
      const row = await calls.insert(
        {
          direction: 'web',
          callSid,
          to,
          from: WEB_CALLER,
          agentId: admitted.route.agentId,
          ...(admitted.route.prompt !== undefined ? { prompt: admitted.route.prompt } : {}),
          ...(admitted.route.customGreeting !== undefined ? { customGreeting: admitted.route.customGreeting } : {}),
          ...(req.record !== undefined ? { record: req.record } : {}),
          status: 'initiated',
        },
        now,
      );
      this.#o.log.info({ callId: row.id, callSid, agentId: admitted.route.agentId, to }, 'browser call admitted; waiting for its stream');
      return { ok: true, ticket: { callId: row.id, callSid, token: admitted.token, expiresAt: now + manager.tokenTtlMs } };
    } catch (err) {
      // No record, no call: its slot goes back at once.
      if (fleet === undefined) manager.cancelReservation(callSid);
      else await fleet.cancel(callSid, admitted.token);
      throw err;
    }
  }

  /** The browser's stream started (its token was accepted): the call is in progress. Never throws. */
  async streamStarted(callSid: string): Promise<void> {
    try {
      const row = await this.#o.calls.getBySid(callSid);
      if (row === undefined || row.finalizedAt !== null) return;
      const now = this.#now();
      await this.#o.calls.update(row.id, { status: 'in-progress', answeredAt: row.answeredAt ?? now });
      await this.#o.calls.event(row.id, 'status', 'in-progress', null, null, now);
    } catch (err) {
      this.#o.log.error({ callSid, err: errorMessage(err) }, 'could not record the start of a browser call; the call goes on');
    }
  }
}
