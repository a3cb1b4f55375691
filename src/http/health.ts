/**
 * `GET /healthz` (process alive), `GET /readyz` (ready for new calls), `GET /metrics`.
 *
 * With REDIS_URL, `/readyz` adds `fleet`: the slots in use and the limit fleet-wide, per provider
 * (with a learned limit in force), and this process's own share; a process that cannot reach
 * Redis within a second is not ready. Drain and overload stay this process's own: a draining
 * process answers 503 while the others admit calls. A full fleet does not make a process unready
 * (the webhook still answers, with the busy message).
 *
 * `/metrics` (counts, latencies and process stats: no phone numbers, transcripts or audio)
 * answers anyone who reaches the port unless METRICS_TOKEN is set; then it needs
 * `Authorization: Bearer <METRICS_TOKEN>`, compared in constant time.
 */
import type { FastifyInstance } from 'fastify';
import { tokenMatches } from '../api/auth.js';
import type { Metrics } from '../metrics.js';
import type { AgentDirectory } from '../agent/directory.js';
import type { SessionManager } from '../session/manager.js';
import type { FleetCapacity } from '../session/fleetAdmission.js';
import { workerSlot } from '../workers.js';

export interface HealthDeps {
  manager: SessionManager;
  agents: AgentDirectory;
  /** The agent of numbers without a route: while it and its fallbacks are all down, the bridge is not ready. */
  defaultAgent: string;
  metrics: Metrics;
  /** METRICS_TOKEN: when set, `/metrics` requires it as a bearer token. */
  metricsToken?: string | undefined;
  /** REDIS_URL: the fleet's capacity, shown by `/readyz` (Redis unreachable: not ready). */
  fleet?: { capacity(): Promise<FleetCapacity> } | undefined;
}

/** How long `/readyz` waits for the fleet's counts before it answers that Redis is unreachable. */
const FLEET_READY_TIMEOUT_MS = 1_000;

/** The fleet part of `/readyz`: its capacity, or why it is not known. */
async function fleetReadiness(fleet: { capacity(): Promise<FleetCapacity> }): Promise<({ redis: 'ok' } & FleetCapacity) | { redis: 'unreachable'; error: string }> {
  let timer: NodeJS.Timeout | undefined;
  try {
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`no answer within ${FLEET_READY_TIMEOUT_MS} ms`)), FLEET_READY_TIMEOUT_MS);
    });
    return { redis: 'ok', ...(await Promise.race([fleet.capacity(), timeout])) };
  } catch (err) {
    return { redis: 'unreachable', error: `${err instanceof Error ? err.message : String(err)}; check REDIS_URL and the Redis server` };
  } finally {
    clearTimeout(timer);
  }
}

/** The token of an `Authorization: Bearer <token>` header (scheme in any case), if there is one. */
export function bearerToken(header: string | string[] | undefined): string | undefined {
  if (typeof header !== 'string') return undefined;
  return /^Bearer\s+(\S+)\s*$/i.exec(header)?.[1];
}

export async function healthRoutes(app: FastifyInstance, deps: HealthDeps): Promise<void> {
  const { manager, metrics, metricsToken, agents, defaultAgent } = deps;
  app.get('/healthz', async () => ({ status: 'ok' }));
  const worker = workerSlot();
  app.get('/readyz', async (_req, reply) => {
    // Agents down do not make the bridge unready: calls to them still get the busy prompt (or a
    // fallback), and numbers routed to other agents keep working. The body says which are down.
    const agentsDown = agents.downAgents();
    const defaultAgentUp = agents.firstUp(defaultAgent) !== undefined;
    const body = {
      ready: manager.ready,
      draining: manager.draining,
      liveCalls: manager.liveCalls,
      reservedSlots: manager.reservedSlots,
      capacity: manager.capacity,
      defaultAgent,
      defaultAgentUp,
      agentsDown,
      // Which process answered: with WORKERS=N, the worker (1..N) behind the shared port.
      pid: process.pid,
      ...(worker !== undefined ? { worker } : {}),
    };
    if (deps.fleet === undefined) return reply.code(body.ready ? 200 : 503).send(body);
    // REDIS_URL: every admission goes through Redis, so a process that cannot reach it is not ready.
    const fleet = await fleetReadiness(deps.fleet);
    const ready = body.ready && fleet.redis === 'ok';
    return reply.code(ready ? 200 : 503).send({ ...body, ready, fleet });
  });
  app.get('/metrics', async (req, reply) => {
    if (metricsToken !== undefined) {
      const given = bearerToken(req.headers.authorization);
      if (given === undefined || !tokenMatches(metricsToken, given)) {
        return reply
          .code(401)
          .header('www-authenticate', 'Bearer realm="playline-metrics"')
          .send({ error: { code: 'unauthorized', message: 'missing or wrong bearer token: /metrics needs Authorization: Bearer <METRICS_TOKEN>' } });
      }
    }
    reply.type(metrics.registry.contentType);
    return metrics.registry.metrics();
  });
}
