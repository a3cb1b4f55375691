/**
 * The agents a bridge can reach: the configured providers, each agent's own
 * settings (AGENTS_FILE), their fallbacks, and whether each is up.
 *
 * An agent is named `provider:id` (`openai:gpt-realtime`, `playai:Agent-XP5…`;
 * a bare id is a PlayAI agent). {@link AgentDirectory.request} turns a call's
 * route (its agent, and the route's or campaign's prompt and greeting) into
 * the {@link AgentRequest} a provider connects with.
 */
import { END_CALL_TOOL, formatAgentRef, parseAgentRef, type AgentAudioFormat, type AgentProvider, type AgentProviderName, type AgentRequest, type AgentTool } from './port.js';
import type { HttpToolDef } from '../tools/http.js';
import { mergeTargets, transferTool, type TransferTargets } from '../transfer/targets.js';

/** Agents whose health is tracked at most (each is a metric label and may be probed). */
const MAX_TRACKED_AGENTS = 256;

/** The variable that enables each provider. */
const PROVIDER_KEY_VARIABLE: Record<AgentProviderName, string> = { playai: 'PLAYAI_WS_URL', openai: 'OPENAI_API_KEY', elevenlabs: 'ELEVENLABS_URL', deepgram: 'DEEPGRAM_API_KEY' };

/** One agent's settings (an entry of AGENTS_FILE). */
/**
 * An operator tool as the model sees it. The description asks the model to tell the caller it is
 * checking before it calls, so that the wait for the operator's API is not dead air.
 */
function offeredTool(t: HttpToolDef): AgentTool {
  return { name: t.name, description: `${t.description} Before calling this, tell the caller briefly that you are checking.`, parameters: t.parameters };
}

export interface AgentDefinition {
  instructions?: string | undefined;
  greeting?: string | undefined;
  voice?: string | undefined;
  model?: string | undefined;
  language?: string | undefined;
  /** Operator HTTP tools (end_call is always offered where the provider takes tools). */
  tools?: HttpToolDef[] | undefined;
  /** People calls to this agent may be transferred to, by name. */
  transferTargets?: TransferTargets | undefined;
  /** Agents (`provider:id`) that take the call when this one refuses it or fails for good. */
  fallback?: string[] | undefined;
  /** Record this agent's calls (over RECORDING_DEFAULT; a route, campaign or API call can say otherwise). */
  record?: boolean | undefined;
  /** The audio format the agent is set to, when it cannot do μ-law 8 kHz. */
  format?: { input?: AgentAudioFormat; output?: AgentAudioFormat } | undefined;
}

/** What a call asks of an agent besides the agent's own settings. */
export interface CallAgentRoute {
  /** `provider:id`. */
  agentId: string;
  /** The route's or campaign's prompt: added to the agent's instructions. */
  prompt?: string | undefined;
  /** Replaces the agent's greeting. */
  customGreeting?: string | undefined;
  /** The route's or campaign's transfer targets (over the agent's own). */
  transferTargets?: TransferTargets | undefined;
  /** The call cannot be transferred (a browser call, no carrier that redirects): no transfer_call tool. */
  noTransfer?: boolean | undefined;
  /** The campaign's operator tools (over the agent's of the same name). */
  tools?: HttpToolDef[] | undefined;
}

export interface AgentDirectoryOptions {
  providers: ReadonlyMap<AgentProviderName, AgentProvider>;
  definitions?: ReadonlyMap<string, AgentDefinition>;
  /** Consecutive failed connects that mark an agent down (default 3). */
  downAfterFailures?: number;
  /** How long an agent stays down before a call may try it again (default 30 s). */
  downForMs?: number;
  now?: () => number;
  /** Reports an agent going down or coming back (logs, metrics). */
  onHealthChange?(ref: string, up: boolean, why: string): void;
}

interface Health {
  failures: number;
  downUntil: number;
  down: boolean;
  probing: boolean;
}

export class AgentDirectory {
  readonly #providers: ReadonlyMap<AgentProviderName, AgentProvider>;
  readonly #definitions: ReadonlyMap<string, AgentDefinition>;
  readonly #health = new Map<string, Health>();
  readonly #downAfter: number;
  readonly #downFor: number;
  readonly #now: () => number;
  readonly #onHealthChange: ((ref: string, up: boolean, why: string) => void) | undefined;
  #probe: ((ref: string) => Promise<boolean>) | undefined;
  #probeTimer: NodeJS.Timeout | undefined;

  constructor(opts: AgentDirectoryOptions) {
    this.#providers = opts.providers;
    this.#definitions = opts.definitions ?? new Map();
    this.#downAfter = opts.downAfterFailures ?? 3;
    this.#downFor = opts.downForMs ?? 30_000;
    this.#now = opts.now ?? Date.now;
    this.#onHealthChange = opts.onHealthChange;
  }

  /** `provider:id` of an agent name (a bare id is PlayAI's), or undefined when it is not one. */
  static normalize(ref: string): string | undefined {
    const r = parseAgentRef(ref);
    return r === undefined ? undefined : formatAgentRef(r);
  }

  /** The provider an agent is reached through, or undefined when its provider is not configured. */
  provider(ref: string): AgentProvider | undefined {
    const r = parseAgentRef(ref);
    return r === undefined ? undefined : this.#providers.get(r.provider);
  }

  /** Why calls cannot go to `ref` (its provider is not configured), naming the variable to set; undefined when they can. */
  whyUnusable(ref: string): string | undefined {
    const r = parseAgentRef(ref);
    if (r === undefined) return `${JSON.stringify(ref)} is not an agent (use provider:id, e.g. openai:gpt-realtime)`;
    if (this.#providers.has(r.provider)) return undefined;
    return `agent ${formatAgentRef(r)} cannot be used: its provider is not configured (set ${PROVIDER_KEY_VARIABLE[r.provider]})`;
  }

  /** Who a call on `route` may be transferred to: the route's targets over its agent's. */
  transferTargets(route: CallAgentRoute): TransferTargets {
    return mergeTargets(this.#definitions.get(route.agentId)?.transferTargets, route.transferTargets);
  }

  /** The operator HTTP tool `name` of agent `ref`, if it declares one. */
  httpTool(ref: string, name: string): HttpToolDef | undefined {
    return this.#definitions.get(ref)?.tools?.find((t) => t.name === name);
  }

  /** The agents that take over from `ref`, in order. */
  fallbacksOf(ref: string): string[] {
    return this.#definitions.get(ref)?.fallback ?? [];
  }

  /**
   * The request to connect `route.agentId` for a call: the agent's settings, the route's prompt
   * added to its instructions, the route's greeting instead of the agent's, end_call offered.
   */
  request(route: CallAgentRoute, call: AgentRequest['call'], resume?: AgentRequest['resume']): AgentRequest {
    const ref = parseAgentRef(route.agentId);
    const def = this.#definitions.get(route.agentId) ?? {};
    const provider = ref === undefined ? undefined : this.#providers.get(ref.provider);
    const instructions = [def.instructions, route.prompt].filter((s): s is string => s !== undefined && s !== '').join('\n\n');
    const greeting = route.customGreeting ?? def.greeting;
    const transfer = route.noTransfer === true ? undefined : transferTool(this.transferTargets(route));
    const operatorTools = new Map<string, HttpToolDef>();
    for (const t of [...(def.tools ?? []), ...(route.tools ?? [])]) operatorTools.set(t.name, t);
    const tools = provider?.supportsTools === true ? [END_CALL_TOOL, ...(transfer !== undefined ? [transfer] : []), ...[...operatorTools.values()].map(offeredTool)] : [];
    const request: AgentRequest = { id: ref?.id ?? route.agentId, tools, call };
    if (instructions !== '') request.instructions = instructions;
    if (greeting !== undefined) request.greeting = greeting;
    if (def.voice !== undefined) request.voice = def.voice;
    if (def.model !== undefined) request.model = def.model;
    if (def.language !== undefined) request.language = def.language;
    if (def.format !== undefined) request.format = def.format;
    if (resume !== undefined) request.resume = resume;
    return request;
  }

  // ---------------------------------------------------------------- health

  /**
   * True while `ref` is marked down (a run of failed connects). With a probe running, it stays
   * down until a probe (or a session) is ready; without one, until its down time has passed.
   */
  isDown(ref: string): boolean {
    const h = this.#health.get(ref);
    return h !== undefined && h.down && (this.#probe !== undefined || this.#now() < h.downUntil);
  }

  /**
   * Probes agents that are down, each at most once per down period (DOWN_FOR), and marks those
   * that answer up again. `probe` opens a session and resolves true once it is ready.
   */
  startProbing(probe: (ref: string) => Promise<boolean>, everyMs = 1000): void {
    if (this.#probeTimer !== undefined) return;
    this.#probe = probe;
    this.#probeTimer = setInterval(() => this.probeDue(), everyMs);
    this.#probeTimer.unref();
  }

  /** Runs the probes that are due now (the probe timer calls it; tests may too). */
  probeDue(): void {
    const probe = this.#probe;
    if (probe === undefined) return;
    for (const [ref, h] of this.#health) {
      if (!h.down || h.probing || this.#now() < h.downUntil) continue;
      h.probing = true;
      probe(ref).then(
        (ok) => {
          h.probing = false;
          if (ok) this.reportReady(ref);
          else h.downUntil = this.#now() + this.#downFor;
        },
        () => {
          h.probing = false;
          h.downUntil = this.#now() + this.#downFor;
        },
      );
    }
  }

  stopProbing(): void {
    if (this.#probeTimer !== undefined) clearInterval(this.#probeTimer);
    this.#probeTimer = undefined;
  }

  /** Agents marked down now. */
  downAgents(): string[] {
    return [...this.#health.entries()].filter(([ref]) => this.isDown(ref)).map(([ref]) => ref);
  }

  /** Every agent whose health is known (for metrics), with whether it is up. */
  knownAgents(): Array<{ ref: string; up: boolean }> {
    return [...this.#health.keys()].map((ref) => ({ ref, up: !this.isDown(ref) }));
  }

  /** `ref` and its fallbacks, in order, without those marked down or whose provider is not configured. */
  candidates(ref: string): string[] {
    return [ref, ...this.fallbacksOf(ref)].filter((r) => !this.isDown(r) && this.provider(r) !== undefined);
  }

  /** The first agent among `ref` and its fallbacks that is not down, or undefined. */
  firstUp(ref: string): string | undefined {
    if (!this.isDown(ref)) return ref;
    return this.fallbacksOf(ref).find((f) => !this.isDown(f));
  }

  /** A session with `ref` became ready: it is up. */
  reportReady(ref: string): void {
    const h = this.#health.get(ref);
    if (h === undefined) {
      if (this.#health.size < MAX_TRACKED_AGENTS) this.#health.set(ref, { failures: 0, downUntil: 0, down: false, probing: false });
      return;
    }
    h.failures = 0;
    if (h.down) {
      h.down = false;
      this.#onHealthChange?.(ref, true, 'a session became ready');
    }
  }

  /** A connect to `ref` failed before it was ready (refused, unreachable, no answer in time). */
  reportConnectFailure(ref: string, why: string): void {
    let h = this.#health.get(ref);
    if (h === undefined) {
      // Bounded: agents named by API requests are tracked too, but never more than this many.
      if (this.#health.size >= MAX_TRACKED_AGENTS) return;
      h = { failures: 0, downUntil: 0, down: false, probing: false };
      this.#health.set(ref, h);
    }
    h.failures++;
    if (h.failures >= this.#downAfter) {
      const wasDown = h.down;
      h.down = true;
      h.downUntil = this.#now() + this.#downFor;
      if (!wasDown) this.#onHealthChange?.(ref, false, why);
    }
  }
}
