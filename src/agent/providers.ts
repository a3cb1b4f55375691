/**
 * The agents a bridge is configured with: one provider per configured
 * service (PlayAI protocol always; OpenAI, ElevenLabs and Deepgram when set
 * up), AGENTS_FILE's definitions, and the health probe that brings an agent
 * marked down back. The one module that knows every provider folder.
 */
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import { AgentDirectory } from './directory.js';
import { createDeepgramProvider } from './deepgram/provider.js';
import { createElevenLabsProvider } from './elevenlabs/provider.js';
import { createOpenAiProvider } from './openai/provider.js';
import { createPlayAiProvider } from './playai/provider.js';
import type { PlayAiConnector } from './playai/leg.js';
import type { AgentEvents, AgentLeg, AgentProvider, AgentProviderName } from './port.js';

/** Where each provider's sockets go, for tests and gateways (defaults from the configuration). */
export interface AgentEndpointOverrides {
  /** PlayAI-protocol base URL (the local agent's in local mode). */
  playaiBaseUrl?: string;
  /** PlayAI socket transport (the in-process fakes). */
  playaiConnect?: PlayAiConnector;
  openaiUrl?: string;
  elevenlabsUrl?: string;
  deepgramUrl?: string;
}

export interface AgentDirectorySetup {
  config: Config;
  overrides?: AgentEndpointOverrides;
  log: Logger;
  onHealthChange?(ref: string, up: boolean, why: string): void;
}

/** Builds the providers the configuration enables and the directory over them. */
export function buildAgentDirectory({ config, overrides = {}, log, onHealthChange }: AgentDirectorySetup): AgentDirectory {
  const providers = new Map<AgentProviderName, AgentProvider>();
  providers.set(
    'playai',
    createPlayAiProvider({
      baseUrl: overrides.playaiBaseUrl ?? config.playai.wsUrl,
      apiKey: config.playai.apiKey,
      ...(overrides.playaiConnect !== undefined ? { connect: overrides.playaiConnect } : {}),
    }),
  );
  const openai = config.agents.openai;
  if (openai !== undefined) providers.set('openai', createOpenAiProvider({ apiKey: openai.apiKey, url: overrides.openaiUrl ?? openai.url }));
  const elevenlabs = config.agents.elevenlabs;
  providers.set('elevenlabs', createElevenLabsProvider({ ...(elevenlabs.apiKey !== undefined ? { apiKey: elevenlabs.apiKey } : {}), url: overrides.elevenlabsUrl ?? elevenlabs.url }));
  const deepgram = config.agents.deepgram;
  if (deepgram !== undefined) providers.set('deepgram', createDeepgramProvider({ apiKey: deepgram.apiKey, url: overrides.deepgramUrl ?? deepgram.url }));
  return new AgentDirectory({
    providers,
    definitions: config.agents.definitions,
    onHealthChange: (ref, up, why) => {
      if (up) log.info({ agent: ref }, 'agent is up again');
      else log.error({ agent: ref, why }, 'agent is down: new calls go to its fallback or hear the busy prompt');
      onHealthChange?.(ref, up, why);
    },
  });
}

/**
 * Opens a session with `ref` and closes it once ready: true when the agent answered within
 * `timeoutMs`. No audio is sent; for providers that bill by session time it costs a few seconds.
 */
export function probeAgent(directory: AgentDirectory, ref: string, log: Logger, timeoutMs = 10_000): Promise<boolean> {
  const provider = directory.provider(ref);
  if (provider === undefined) return Promise.resolve(false);
  return new Promise((resolve) => {
    let done = false;
    let leg: AgentLeg | undefined;
    const finish = (ok: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      leg?.close(1000, 'probe');
      resolve(ok);
    };
    const noop = (): void => {};
    const events: AgentEvents = {
      ready: () => finish(true),
      audio: noop,
      responseStart: noop,
      responseDone: noop,
      callerSpeechStart: noop,
      transcript: noop,
      toolCall: noop,
      hangup: () => finish(false),
      error: (err) => {
        if (err.legDone) finish(false);
      },
      badFrame: noop,
      closed: () => finish(false),
    };
    const timer = setTimeout(() => finish(false), timeoutMs);
    timer.unref();
    // No greeting: the session is closed as soon as it is ready.
    const { greeting: _greeting, ...request } = directory.request({ agentId: ref }, { callSid: 'probe', from: '', to: '', direction: 'probe' });
    const opened = provider.connect({ request, events, log: log.child({ probe: ref }), heartbeatMs: 0 });
    if (done) opened.close(1000, 'probe');
    else leg = opened;
  });
}
