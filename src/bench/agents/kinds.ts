/**
 * The agents `npm run bench -- --agent X` can measure, and how the bridge is
 * pointed at each: the environment of the bridge process (built from scratch
 * by the runner, never from the user's shell or .env) for the echo agent's URL.
 */

export const BENCH_AGENTS = ['playai', 'openai', 'elevenlabs', 'deepgram', 'elevenlabs-pcm16'] as const;
export type BenchAgent = (typeof BENCH_AGENTS)[number];

export function isBenchAgent(s: string): s is BenchAgent {
  return (BENCH_AGENTS as readonly string[]).includes(s);
}

export interface BenchAgentInfo {
  /** The bridge's provider (`src/agent/<provider>/`). */
  provider: 'playai' | 'openai' | 'elevenlabs' | 'deepgram';
  /** One line for the table header. */
  describe: string;
  /** The bridge converts audio in both directions (`src/audio/transcode.ts`). */
  transcodes: boolean;
  /**
   * How the load generator matches echoes to caller frames: `id` (byte-exact, each frame
   * knows its echo) or `arrival` (cumulative audio bytes: the k-th 160 bytes back complete
   * frame k), for agents whose audio is converted and so cannot come back byte-exact.
   */
  match: 'id' | 'arrival';
  /** The benchmark's barge-in marker can reach the agent (it cannot through a conversion). */
  bargeIn: boolean;
}

export const BENCH_AGENT_INFO: Readonly<Record<BenchAgent, BenchAgentInfo>> = {
  playai: {
    provider: 'playai',
    describe: 'playai: the local agent in echo mode (PlayAI protocol, JSON base64 audio, mulaw 8 kHz both ways)',
    transcodes: false,
    match: 'id',
    bargeIn: true,
  },
  openai: {
    provider: 'openai',
    describe: 'openai: lean OpenAI Realtime GA echo (session.update audio/pcmu, JSON base64 deltas, speech_started on barge-in)',
    transcodes: false,
    match: 'id',
    bargeIn: true,
  },
  elevenlabs: {
    provider: 'elevenlabs',
    describe: 'elevenlabs: lean ElevenLabs Agents echo, ulaw_8000 both ways (JSON base64 audio, interruption on barge-in)',
    transcodes: false,
    match: 'id',
    bargeIn: true,
  },
  deepgram: {
    provider: 'deepgram',
    describe: 'deepgram: lean Deepgram Voice Agent echo (Settings mulaw 8000, binary audio both ways, UserStartedSpeaking on barge-in)',
    transcodes: false,
    match: 'id',
    bargeIn: true,
  },
  'elevenlabs-pcm16': {
    provider: 'elevenlabs',
    describe: 'elevenlabs-pcm16: lean ElevenLabs Agents echo set to pcm_16000 both ways: the bridge transcodes mulaw 8k <-> PCM16 16k in both directions',
    transcodes: true,
    match: 'arrival',
    bargeIn: false,
  },
};

/** The agent id the bridge is configured with (the echo agents answer any). */
export const BENCH_AGENT_ID = 'bench-echo';

/** The bridge's agent environment for `agent` listening at `url` (what the echo agent printed), with `key` where the provider needs one. */
export function bridgeAgentEnv(agent: BenchAgent, url: string, key: string): Record<string, string> {
  switch (agent) {
    case 'playai':
      return { PLAYAI_API_KEY: key, PLAYAI_AGENT_ID: 'echo', PLAYAI_WS_URL: url };
    case 'openai':
      return { DEFAULT_AGENT: 'openai:gpt-realtime', OPENAI_API_KEY: key, OPENAI_REALTIME_URL: url };
    case 'elevenlabs':
    case 'elevenlabs-pcm16':
      // A public agent: no ELEVENLABS_API_KEY, so the adapter connects to the conversation URL directly.
      return { DEFAULT_AGENT: `elevenlabs:${BENCH_AGENT_ID}`, ELEVENLABS_URL: url };
    case 'deepgram':
      return { DEFAULT_AGENT: `deepgram:${BENCH_AGENT_ID}`, DEEPGRAM_API_KEY: key, DEEPGRAM_AGENT_URL: url };
  }
}
