/** An agent directory with only the PlayAI-protocol provider, over a fake socket transport (tests). */
import { AgentDirectory, type AgentDefinition } from '../src/agent/directory.js';
import type { PlayAiConnector } from '../src/agent/playai/leg.js';
import { createPlayAiProvider } from '../src/agent/playai/provider.js';

export function playaiDirectory(connect: PlayAiConnector, opts: { apiKey?: string; baseUrl?: string; definitions?: Map<string, AgentDefinition> } = {}): AgentDirectory {
  const provider = createPlayAiProvider({ baseUrl: opts.baseUrl ?? 'ws://agent.invalid', apiKey: opts.apiKey ?? 'test-key', connect });
  return new AgentDirectory({ providers: new Map([['playai', provider]]), ...(opts.definitions !== undefined ? { definitions: opts.definitions } : {}) });
}
