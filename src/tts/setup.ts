/**
 * Builds the prompt service from the configuration: which TTS (PlayAI, the
 * built-in local service, or none), which voice, where the cache lives, and
 * the key that signs prompt URLs.
 */
import { createHmac, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type client from 'prom-client';
import { fetchAgent } from '../agent/playai/rest.js';
import { parseAgentRef } from '../agent/port.js';
import type { Config } from '../config.js';
import { FakeTtsServer } from '../sim/fakeTts.js';
import { TtsCache } from './cache.js';
import { PlayAiTts } from './playai/adapter.js';
import type { TtsPort } from './port.js';
import { PromptService, type PromptKind } from './prompts.js';

/** The voice the local TTS speaks in (any string works there). */
const LOCAL_VOICE = 'playline-local';

export interface PromptSetupOverrides {
  /** A TTS to use instead of the configured one (tests). */
  tts?: TtsPort;
  /** HTTP client of the TTS auth and the PlayAI REST API (tests). */
  fetchImpl?: typeof fetch;
}

/** The texts of the prompts Playline says on its own (the ones warmed at boot). */
export function promptTexts(config: Config): Partial<Record<PromptKind, string>> {
  return {
    busy: config.messages.busy,
    apology: config.messages.apology,
    goodbye: config.messages.goodbye,
    transferReturn: config.messages.transferReturn,
    ...(config.recording.backend !== 'off' && config.recording.consentText !== undefined ? { consent: config.recording.consentText } : {}),
  };
}

export async function createPromptService(config: Config, logger: Logger, registry: client.Registry, overrides: PromptSetupOverrides = {}): Promise<PromptService> {
  const log = logger.child({ component: 'prompts' });
  // Prompt URLs signed with the Twilio auth token's derivative work on every instance behind one PUBLIC_URL.
  const secret = createHmac('sha256', config.twilio.authToken ?? randomBytes(32)).update('playline prompt urls').digest();
  const base = { texts: promptTexts(config), publicUrl: config.publicUrl, secret, registry, log };
  if (config.tts.mode === 'off') {
    log.info('TTS=off: prompts are said with Twilio <Say>');
    return new PromptService(base);
  }
  if (config.tts.mode === 'local') {
    // The built-in service speaks the PlayAI TTS protocol: the adapter runs the real path against it.
    const server = overrides.tts === undefined ? await FakeTtsServer.start({ logger: log }) : undefined;
    const adapter = overrides.tts ?? new PlayAiTts({ authUrl: server?.authUrl ?? '', apiKey: server?.apiKey ?? '', userId: server?.userId ?? '', model: 'Play3.0-mini', log });
    const tts: TtsPort = {
      name: 'local',
      synthesize: (text, voice) => adapter.synthesize(text, voice),
      close: async () => {
        await adapter.close();
        await server?.close();
      },
    };
    log.info('local mode: prompts come from the built-in TTS service (speech-like sound, not words); set TTS=playai with PLAYAI_API_KEY, PLAYAI_USER_ID and TTS_VOICE for a real voice');
    return new PromptService({ ...base, tts, voice: config.tts.voice ?? LOCAL_VOICE, cache: new TtsCache({ maxBytes: config.tts.cacheBytes, log }) });
  }
  const apiKey = config.playai.apiKey ?? '';
  const userId = config.playaiRest.userId ?? '';
  const tts =
    overrides.tts ??
    new PlayAiTts({ authUrl: config.tts.authUrl, apiKey, userId, model: config.tts.model, log, ...(overrides.fetchImpl !== undefined ? { fetchImpl: overrides.fetchImpl } : {}) });
  const cache = new TtsCache({ dir: join(config.dataDir, 'tts-cache'), maxBytes: config.tts.cacheBytes, log });
  const agent = parseAgentRef(config.agents.defaultAgent);
  const resolveVoice =
    config.tts.voice !== undefined || agent?.provider !== 'playai'
      ? undefined
      : async (): Promise<string | undefined> => {
          const found = await fetchAgent({ baseUrl: config.playaiRest.baseUrl, apiKey, userId, ...(overrides.fetchImpl !== undefined ? { fetchImpl: overrides.fetchImpl } : {}) }, agent.id);
          if (found.voice !== undefined) log.info({ agentId: agent.id, voice: found.voice }, 'prompts speak in the default agent voice (TTS_VOICE not set)');
          return found.voice;
        };
  log.info({ model: config.tts.model, voice: config.tts.voice ?? '(the default agent voice)', cache: cache.dir }, 'TTS=playai: prompts are synthesized with PlayAI TTS');
  return new PromptService({ ...base, tts, ...(config.tts.voice !== undefined ? { voice: config.tts.voice } : {}), ...(resolveVoice !== undefined ? { resolveVoice } : {}), cache });
}
