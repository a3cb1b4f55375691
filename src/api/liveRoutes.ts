/**
 * `GET /v1/live` (calls in progress on this process; with REDIS_URL, on every process of the
 * fleet: each answers for its own calls over Redis pub/sub within a second), `GET /v1/setup` (the
 * agents, routes, capacity and readiness in effect: never a secret) and
 * `POST /v1/web-calls` (a browser call's single-use stream token). Registered
 * by `apiRoutes`, under the same auth, validation and error shape as the rest
 * of /v1.
 */
import type { FastifyInstance } from 'fastify';
import { AgentDirectory } from '../agent/directory.js';
import { parseAgentRef } from '../agent/port.js';
import { WEB_STREAM_PATH, type WebCalls } from '../calls/webCalls.js';
import type { Config, NumberRoute } from '../config.js';
import type { TransferTargets } from '../transfer/targets.js';
import type { SessionManager, SessionSnapshot } from '../session/manager.js';
import type { CallRow, CallStore } from '../store/calls.js';
import { ApiError, errorResponses } from './errors.js';
import { createWebCallBody, liveCallSchema, liveReply, setupReply, webCallReply, type ApiTypeProvider, type LiveCallApi, type SetupApi, type TransferTargetInfoApi } from './schemas.js';

/** The configuration `GET /v1/setup` shows: no key, token, secret or webhook URL is in here. */
export interface SetupFacts {
  mode: 'local' | 'twilio';
  defaultAgent: string;
  routes: ReadonlyMap<string, Pick<NumberRoute, 'agentId' | 'prompt' | 'customGreeting' | 'transferTargets' | 'dtmf'>>;
  /** Per agent (`provider:id`): its AGENTS_FILE greeting, whether it has instructions, and its transfer targets. */
  agentSettings: ReadonlyMap<string, { greeting?: string | undefined; hasPrompt: boolean; transferTargets?: TransferTargets | undefined }>;
  agentLimits: ReadonlyMap<string, number>;
  inboundReserved: number;
  webhook: { configured: boolean; events: string[] };
}

/** The webhook part of the configuration, with the events list the live-events work adds (WEBHOOK_EVENTS). */
interface WebhookConfig {
  url?: string | undefined;
  events?: readonly string[] | undefined;
}

/** The non-secret facts of the configuration that `GET /v1/setup` shows. */
export function setupFacts(config: Config): SetupFacts {
  const webhook: WebhookConfig = config.webhook;
  const agentSettings = new Map<string, { greeting?: string; hasPrompt: boolean; transferTargets?: TransferTargets }>();
  for (const [ref, def] of config.agents.definitions) {
    agentSettings.set(ref, {
      ...(def.greeting !== undefined ? { greeting: def.greeting } : {}),
      hasPrompt: (def.instructions ?? '') !== '',
      ...(def.transferTargets !== undefined ? { transferTargets: def.transferTargets } : {}),
    });
  }
  return {
    mode: config.outbound.localCarrier ? 'local' : 'twilio',
    defaultAgent: config.agents.defaultAgent,
    routes: config.routes,
    agentSettings,
    agentLimits: config.agentLimits,
    inboundReserved: config.outbound.inboundReserved,
    webhook: { configured: webhook.url !== undefined, events: webhook.url === undefined ? [] : [...(webhook.events ?? ['call.completed'])] },
  };
}

export interface LiveApiDeps {
  manager: SessionManager;
  agents: AgentDirectory;
  calls: CallStore;
  webCalls: WebCallsPort;
  setup: SetupFacts;
  /** REDIS_URL: the other processes' live calls, and this process's answer when they ask. */
  fleet?: FleetLivePort | undefined;
}

/** What `/v1/live` needs of the fleet (session/fleetAdmission.ts). */
export interface FleetLivePort {
  /** This process answers the others' `/v1/live` with `list`. */
  serveLive(list: () => Promise<LiveCallApi[]>): void;
  /** The other processes' live calls (unchecked: each is validated here). */
  liveElsewhere(): Promise<unknown[]>;
}

/** What the routes need of {@link WebCalls}. */
export type WebCallsPort = Pick<WebCalls, 'create'>;

/** Targets as the API lists them: name, where it rings, what the model is told, the ring timeout (caller IDs are left out). */
function targetList(targets: TransferTargets | undefined): TransferTargetInfoApi[] {
  return Object.entries(targets ?? {}).map(([name, t]) => ({ name, to: t.to, ...(t.description !== undefined ? { description: t.description } : {}), timeoutS: t.timeoutS }));
}

const STATUS_OF_REFUSAL = { unknown_route: 'not_found', invalid_agent: 'invalid_request' } as const;

export async function liveRoutes(app: FastifyInstance, deps: LiveApiDeps): Promise<void> {
  const api = app.withTypeProvider<ApiTypeProvider>();
  const { manager, agents, calls } = deps;

  /** Every live session with its snapshot, oldest first. */
  const snapshots = (): Array<{ callSid: string; snap: SessionSnapshot }> => {
    const out: Array<{ callSid: string; snap: SessionSnapshot }> = [];
    for (const s of manager.sessions()) {
      const snap = s.snapshot?.();
      if (snap !== undefined && snap.state !== 'closed') out.push({ callSid: s.callSid, snap });
    }
    return out.sort((a, b) => a.snap.startedAt - b.snap.startedAt);
  };

  /** This process's live calls, oldest first. */
  const localLive = async (): Promise<LiveCallApi[]> => {
    const now = Date.now();
    const snaps = snapshots();
    // The store is failing: the call is still shown, from memory.
    const rows = await Promise.all(snaps.map(({ callSid }) => calls.getBySid(callSid).catch(() => undefined)));
    return snaps.map(({ callSid, snap }, i) => {
      const row: CallRow | undefined = rows[i];
      const direction = row?.direction ?? (snap.call.direction.startsWith('outbound') ? 'outbound' : snap.call.direction === 'web' ? 'web' : 'inbound');
      return {
        callId: row?.id ?? null,
        callSid,
        direction,
        from: row?.from ?? snap.call.from,
        to: row?.to ?? snap.call.to,
        agentId: snap.agentId,
        state: snap.state,
        startedAt: new Date(snap.startedAt).toISOString(),
        durationS: Math.max(0, Math.floor((now - snap.startedAt) / 1000)),
        bargeIns: snap.bargeIns,
        agentReconnects: snap.agentReconnects,
        campaignId: row?.campaignId ?? null,
        transfer: {
          available: snap.transferable === true,
          // The same lookup a transfer by name makes: the serving agent's targets under the route's or campaign's.
          targets: targetList(agents.transferTargets({ agentId: snap.agentId, transferTargets: snap.route?.transferTargets })),
        },
      };
    });
  };
  deps.fleet?.serveLive(localLive);

  api.get(
    '/v1/live',
    {
      schema: {
        tags: ['live'],
        summary: 'Calls in progress on this process (with REDIS_URL: on every process of the fleet)',
        response: { 200: liveReply, ...errorResponses(400, 401) },
      },
    },
    async (req) => {
      const data = await localLive();
      if (deps.fleet === undefined) return { data };
      let elsewhere: unknown[] = [];
      try {
        elsewhere = await deps.fleet.liveElsewhere();
      } catch (err) {
        req.log.warn({ err: err instanceof Error ? err.message : String(err) }, 'fleet: could not ask the other processes for their live calls; /v1/live shows this process only (check REDIS_URL and the Redis server)');
      }
      const seen = new Set(data.map((c) => c.callSid));
      for (const item of elsewhere) {
        const parsed = liveCallSchema.safeParse(item);
        if (!parsed.success || seen.has(parsed.data.callSid)) continue;
        seen.add(parsed.data.callSid);
        data.push(parsed.data);
      }
      data.sort((a, b) => Date.parse(a.startedAt) - Date.parse(b.startedAt));
      return { data };
    },
  );

  api.get(
    '/v1/setup',
    {
      schema: {
        tags: ['live'],
        summary: 'The agents, number routes, capacity and readiness in effect (no secrets)',
        response: { 200: setupReply, ...errorResponses(400, 401) },
      },
    },
    async () => {
      const s = deps.setup;
      const open = new Map<string, number>();
      for (const { snap } of snapshots()) if (snap.agentConnected) open.set(snap.agentId, (open.get(snap.agentId) ?? 0) + 1);
      const down = agents.downAgents();
      // Every agent the configuration names, then any other whose health is tracked (named by API requests).
      const refs: string[] = [s.defaultAgent, ...[...s.routes.values()].map((r) => r.agentId), ...s.agentSettings.keys(), ...s.agentLimits.keys()];
      for (const ref of [...refs]) refs.push(...agents.fallbacksOf(ref));
      for (const k of agents.knownAgents()) refs.push(k.ref);
      for (const ref of open.keys()) refs.push(ref);
      const ids = [...new Set(refs.map((r) => AgentDirectory.normalize(r) ?? r))];
      const agentsOut: SetupApi['agents'] = ids.map((id) => {
        const settings = s.agentSettings.get(id);
        return {
          id,
          provider: parseAgentRef(id)?.provider ?? 'playai',
          up: !agents.isDown(id),
          openSessions: open.get(id) ?? 0,
          limit: s.agentLimits.get(id) ?? null,
          fallbacks: agents.fallbacksOf(id),
          ...(settings?.greeting !== undefined ? { customGreeting: settings.greeting } : {}),
          hasPrompt: settings?.hasPrompt ?? false,
          transferTargets: targetList(settings?.transferTargets),
        };
      });
      return {
        mode: s.mode,
        defaultAgent: s.defaultAgent,
        agents: agentsOut,
        routes: [...s.routes].map(([number, r]) => ({
          number,
          agentId: r.agentId,
          ...(r.prompt !== undefined ? { prompt: r.prompt } : {}),
          ...(r.customGreeting !== undefined ? { customGreeting: r.customGreeting } : {}),
          transferTargets: targetList(r.transferTargets),
          hotkeys: Object.entries(r.dtmf ?? {}).map(([key, a]) => ({ key, transfer: a.transfer, mode: a.mode })),
        })),
        capacity: {
          maxConcurrentCalls: manager.maxCalls,
          usedSlots: manager.usedSlots,
          liveCalls: manager.liveCalls,
          reservedSlots: manager.reservedSlots,
          inboundReserved: s.inboundReserved,
        },
        ready: { ready: manager.ready, draining: manager.draining, agentsDown: down },
        webhook: { configured: s.webhook.configured, events: [...s.webhook.events] },
      };
    },
  );

  api.post(
    '/v1/web-calls',
    {
      schema: {
        tags: ['live'],
        summary: 'Start a browser call: a single-use token for WS /web/media-stream',
        description:
          'Admits a call like a phone call (capacity, agent limits, drain, agents down) and creates its record (direction web). ' +
          'The browser then opens a WebSocket to streamUrl on this server and speaks the Twilio Media Streams protocol: `connected`, ' +
          '`start` with this callSid and `customParameters.token`, 20 ms μ-law `media` frames, `mark` echoes once a mark\'s audio has played, `stop`. ' +
          'The token is refused after expiresAt or a second use. End the call with POST /v1/calls/{callId}/hangup or by closing the socket.',
        body: createWebCallBody,
        response: {
          201: { description: 'Admitted: open the socket before expiresAt', content: { 'application/json': { schema: webCallReply } }, headers: { location: { type: 'string', description: 'URL of the call record' } } },
          ...errorResponses(400, 401, 404, 503),
        },
      },
    },
    async (req, reply) => {
      const r = await deps.webCalls.create(req.body);
      if (!r.ok) {
        const code = r.why === 'unknown_route' || r.why === 'invalid_agent' ? STATUS_OF_REFUSAL[r.why] : r.why === 'duplicate' ? 'conflict' : r.why;
        throw new ApiError(code, r.message, r.why === 'invalid_agent' ? { field: 'agentId' } : undefined);
      }
      const t = r.ticket;
      return reply
        .code(201)
        .header('location', `/v1/calls/${t.callId}`)
        .send({ callId: t.callId, callSid: t.callSid, token: t.token, streamUrl: WEB_STREAM_PATH, expiresAt: new Date(t.expiresAt).toISOString() });
    },
  );
}
