/**
 * The boot check of PlayAI agents (when the REST API is configured: PLAYAI_API_KEY
 * and PLAYAI_USER_ID): each PlayAI agent the configuration names is looked up with
 * `GET /api/v1/agents/{agentId}`. An agent the API says does not exist (404) is a
 * configuration error naming where it is named; an API that cannot be reached, or
 * answers anything else, is a warning and the boot goes on.
 */
import type { Logger } from 'pino';
import { parseAgentRef } from '../port.js';
import type { Config } from '../../config.js';
import { fetchAgent, PlayAiRestError, type PlayAiAgent, type PlayAiRestAccess } from './rest.js';

/** Every PlayAI agent id the configuration names, with where (the default agent, ROUTES_FILE, AGENTS_FILE, AGENT_LIMITS). */
export function configuredPlayaiAgents(config: Config): Map<string, string[]> {
  const out = new Map<string, string[]>();
  const add = (ref: string, where: string): void => {
    const r = parseAgentRef(ref);
    if (r?.provider !== 'playai') return;
    const list = out.get(r.id) ?? [];
    if (!list.includes(where)) list.push(where);
    out.set(r.id, list);
  };
  if (!config.localAgent) add(config.agents.defaultAgent, 'the default agent');
  for (const [number, route] of config.routes) add(route.agentId, `ROUTES_FILE ${number}`);
  for (const [ref, def] of config.agents.definitions) {
    add(ref, 'AGENTS_FILE');
    for (const f of def.fallback ?? []) add(f, `AGENTS_FILE (fallback of ${ref})`);
  }
  for (const ref of config.agentLimits.keys()) add(ref, 'AGENT_LIMITS');
  return out;
}

/** The PlayAI REST access of a configuration, or undefined when REST is not configured. */
export function playaiRestAccess(config: Config, fetchImpl?: typeof fetch): PlayAiRestAccess | undefined {
  if (config.playai.apiKey === undefined || config.playaiRest.userId === undefined) return undefined;
  return { baseUrl: config.playaiRest.baseUrl, apiKey: config.playai.apiKey, userId: config.playaiRest.userId, timeoutMs: 5000, ...(fetchImpl !== undefined ? { fetchImpl } : {}) };
}

export type AgentCheck = { agentId: string; where: string[] } & ({ result: 'ok'; agent: PlayAiAgent } | { result: 'missing' | 'unreachable' | 'refused'; why: string });

/** Looks every configured PlayAI agent up. Never rejects; `missing` results are the caller's to act on. */
export async function checkPlayaiAgents(config: Config, log: Logger, fetchImpl?: typeof fetch): Promise<AgentCheck[]> {
  const access = playaiRestAccess(config, fetchImpl);
  if (access === undefined) return [];
  const agents = [...configuredPlayaiAgents(config)].slice(0, 50);
  const checks = await Promise.all(
    agents.map(async ([agentId, where]): Promise<AgentCheck> => {
      try {
        return { agentId, where, result: 'ok', agent: await fetchAgent(access, agentId) };
      } catch (err) {
        const why = err instanceof Error ? err.message : String(err);
        if (err instanceof PlayAiRestError && err.status === 404) return { agentId, where, result: 'missing', why };
        if (err instanceof PlayAiRestError && (err.status === 401 || err.status === 403)) return { agentId, where, result: 'refused', why };
        return { agentId, where, result: 'unreachable', why };
      }
    }),
  );
  for (const c of checks) {
    if (c.result === 'ok') log.info({ agentId: c.agentId, name: c.agent.displayName, voice: c.agent.voice }, 'PlayAI agent found');
    else if (c.result === 'missing') log.error({ agentId: c.agentId, where: c.where, why: c.why }, `PlayAI agent ${c.agentId} does not exist at ${access.baseUrl}: fix the id where it is named (${c.where.join(', ')})`);
    else if (c.result === 'refused') log.warn({ agentId: c.agentId, why: c.why }, 'the PlayAI REST API refused our credentials; agents not checked (check PLAYAI_API_KEY and PLAYAI_USER_ID)');
    else log.warn({ agentId: c.agentId, why: c.why }, `cannot reach the PlayAI REST API at ${access.baseUrl}; agent ${c.agentId} not checked`);
  }
  return checks;
}
