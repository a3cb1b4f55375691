import { Writable } from 'node:stream';
import pino from 'pino';
import { WebSocket } from 'ws';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  classifyElevenLabsError,
  classifyHttpStatus,
  decodeElevenLabsMessage,
  elevenLabsLanguage,
  encodeInitiation,
  encodePong,
  encodeToolResult,
  encodeUserAudio,
  resumeContext,
} from '../src/agent/elevenlabs/codec.js';
import { CONVERSION_ADVICE, createElevenLabsProvider, type ElevenLabsProviderOptions } from '../src/agent/elevenlabs/provider.js';
import { newAudioScan, scanElevenLabsAudio } from '../src/agent/elevenlabs/scan.js';
import { END_CALL_TOOL, type AgentBadFrameKind, type AgentCloseInfo, type AgentError, type AgentEvents, type AgentLeg, type AgentRequest, type AgentToolCall } from '../src/agent/port.js';
import { mulawDecode, mulawEncode } from '../src/audio/mulaw.js';
import { FakeElevenLabsServer, type FakeElevenLabsConnection, type FakeElevenLabsOptions } from '../src/testing/agents/elevenlabs.js';
import { prng } from '../src/util/prng.js';

// ---------------------------------------------------------------------------
// Helpers

const CALL = { callSid: 'CA' + '0123456789abcdef'.repeat(2), from: '+15551230001', to: '+15557650002', direction: 'inbound' };
const request = (over: Partial<AgentRequest> = {}): AgentRequest => ({ id: 'agent_test', tools: [END_CALL_TOOL], call: CALL, ...over });

interface Recorded {
  events: AgentEvents;
  /** Event names in order (`audio` once per call). */
  order: string[];
  ready: string[];
  /** Decoded μ-law bytes of each `audio` event. */
  audio: Buffer[];
  transcripts: Array<{ role: string; text: string }>;
  toolCalls: AgentToolCall[];
  hangups: string[];
  errors: AgentError[];
  badFrames: Array<{ kind: AgentBadFrameKind; name: string | undefined }>;
  closed: AgentCloseInfo[];
}

function recorder(): Recorded {
  const r: Omit<Recorded, 'events'> = { order: [], ready: [], audio: [], transcripts: [], toolCalls: [], hangups: [], errors: [], badFrames: [], closed: [] };
  const events: AgentEvents = {
    ready: (i) => {
      r.order.push('ready');
      r.ready.push(i.conversationId);
    },
    audio: (buf, start, end) => {
      r.order.push('audio');
      r.audio.push(Buffer.from(buf.toString('latin1', start, end), 'base64'));
    },
    responseStart: () => r.order.push('responseStart'),
    responseDone: () => r.order.push('responseDone'),
    callerSpeechStart: () => r.order.push('callerSpeechStart'),
    transcript: (role, text) => {
      r.order.push('transcript');
      r.transcripts.push({ role, text });
    },
    toolCall: (call) => {
      r.order.push('toolCall');
      r.toolCalls.push(call);
    },
    hangup: (reason) => {
      r.order.push('hangup');
      r.hangups.push(reason);
    },
    error: (err) => {
      r.order.push('error');
      r.errors.push(err);
    },
    badFrame: (kind, name) => r.badFrames.push({ kind, name }),
    closed: (info) => {
      r.order.push('closed');
      r.closed.push(info);
    },
  };
  return { ...r, events };
}

class LogLines {
  readonly lines: string[] = [];
  readonly logger = pino(
    { level: 'debug' },
    new Writable({
      write: (chunk: Buffer, _enc, cb) => {
        this.lines.push(...chunk.toString('utf8').split('\n').filter((l) => l.length > 0));
        cb();
      },
    }),
  );
  parsed(): Array<Record<string, unknown>> {
    return this.lines.map((l) => JSON.parse(l) as Record<string, unknown>);
  }
}

function tone(freq: number, rate: number, n: number, amp = 8000): Int16Array {
  const out = new Int16Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.round(amp * Math.sin((2 * Math.PI * freq * i) / rate));
  return out;
}

/** Amplitude of the `freq` component of `s[from…]` (a single-bin DFT). */
function amplitudeAt(s: Int16Array, rate: number, freq: number, from: number): number {
  let c = 0;
  let d = 0;
  for (let i = from; i < s.length; i++) {
    const v = s[i] ?? 0;
    c += v * Math.cos((2 * Math.PI * freq * i) / rate);
    d += v * Math.sin((2 * Math.PI * freq * i) / rate);
  }
  return (2 * Math.hypot(c, d)) / (s.length - from);
}

const bytes = (n: number, seed = 1): Buffer => {
  const rand = prng(seed);
  return Buffer.from(Array.from({ length: n }, () => Math.floor(rand() * 256)));
};

// ---------------------------------------------------------------------------
// Codec

describe('ElevenLabs codec', () => {
  it('decodes the messages the bridge acts on, checking every field it uses', () => {
    expect(
      decodeElevenLabsMessage(
        '{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":{"conversation_id":"conv_1","agent_output_audio_format":"ulaw_8000","user_input_audio_format":"pcm_16000"}}',
      ),
    ).toEqual({ type: 'conversation_initiation_metadata', conversationId: 'conv_1', outputFormat: 'ulaw_8000', inputFormat: 'pcm_16000' });
    // Missing or empty formats come back undefined: the adapter decides (input defaults, output is refused).
    expect(
      decodeElevenLabsMessage('{"type":"conversation_initiation_metadata","conversation_initiation_metadata_event":{"conversation_id":"conv_2","agent_output_audio_format":""}}'),
    ).toEqual({ type: 'conversation_initiation_metadata', conversationId: 'conv_2', outputFormat: undefined, inputFormat: undefined });
    expect(decodeElevenLabsMessage('{"type":"audio","audio_event":{"audio_base_64":"AAAA","event_id":3,"alignment":{"chars":["a"]}}}')).toEqual({ type: 'audio', audio: 'AAAA', eventId: 3 });
    expect(decodeElevenLabsMessage('{"type":"interruption","interruption_event":{"event_id":4}}')).toEqual({ type: 'interruption', eventId: 4 });
    expect(decodeElevenLabsMessage('{"type":"agent_response","agent_response_event":{"agent_response":"Hi","event_id":1}}')).toEqual({ type: 'agent_response', text: 'Hi' });
    expect(decodeElevenLabsMessage('{"type":"user_transcript","user_transcription_event":{"user_transcript":"Yo","event_id":2}}')).toEqual({ type: 'user_transcript', text: 'Yo' });
    expect(decodeElevenLabsMessage('{"type":"ping","ping_event":{"event_id":7,"ping_ms":null}}')).toEqual({ type: 'ping', eventId: 7, pingMs: undefined });
    expect(decodeElevenLabsMessage('{"type":"client_tool_call","client_tool_call":{"tool_name":"end_call","tool_call_id":"t1","parameters":{"reason":"done"},"event_id":9}}')).toEqual({
      type: 'client_tool_call',
      toolName: 'end_call',
      toolCallId: 't1',
      parameters: { reason: 'done' },
    });
    expect(decodeElevenLabsMessage('{"type":"agent_tool_response","agent_tool_response":{"tool_name":"end_call","tool_call_id":"s","tool_type":"system","is_error":false,"is_called":true,"event_id":5}}')).toEqual({
      type: 'agent_tool_response',
      toolName: 'end_call',
      toolType: 'system',
      isError: false,
    });
    expect(decodeElevenLabsMessage('{"type":"error","error_event":{"code":1002,"error_type":"llm_error","message":"m","reason":"r"}}')).toEqual({
      type: 'error',
      code: 1002,
      errorType: 'llm_error',
      message: 'm',
      reason: 'r',
    });
  });

  it('ignores documented extras, reports unknown types, and classifies garbage without throwing', () => {
    for (const t of ['tentative_user_transcript', 'agent_chat_response_part', 'vad_score', 'internal_turn_probability', 'internal_tentative_agent_response']) {
      expect(decodeElevenLabsMessage(JSON.stringify({ type: t }))).toEqual({ type: 'ignored', name: t });
    }
    expect(decodeElevenLabsMessage('{"type":"brand_new"}')).toEqual({ type: 'unknown', name: 'brand_new' });
    expect(decodeElevenLabsMessage('nope')).toMatchObject({ kind: 'non_json' });
    expect(decodeElevenLabsMessage('[1]')).toMatchObject({ kind: 'not_object' });
    expect(decodeElevenLabsMessage('{"type":"audio","audio_event":{"audio_base_64":"AAAA"}}')).toMatchObject({ kind: 'invalid_fields', name: 'audio' });
    expect(decodeElevenLabsMessage('{"type":"audio","audio_event":{"audio_base_64":"AAAA","event_id":-1}}')).toMatchObject({ kind: 'invalid_fields' });
    expect(decodeElevenLabsMessage('{"type":"audio","audio_event":{"audio_base_64":"!!","event_id":1}}')).toMatchObject({ kind: 'bad_audio' });
    expect(decodeElevenLabsMessage('{"type":"ping","ping_event":{}}')).toMatchObject({ kind: 'invalid_fields', name: 'ping' });
    expect(decodeElevenLabsMessage('{"type":"conversation_initiation_metadata"}')).toMatchObject({ kind: 'invalid_fields' });
  });

  it('accepts event_id as an integer or a numeric string (up to 15 digits) wherever it is read, and refuses other strings', () => {
    const B = 'AAAA';
    expect(decodeElevenLabsMessage(`{"type":"audio","audio_event":{"audio_base_64":"${B}","event_id":"3"}}`)).toEqual({ type: 'audio', audio: B, eventId: 3 });
    expect(decodeElevenLabsMessage('{"type":"interruption","interruption_event":{"event_id":"4"}}')).toEqual({ type: 'interruption', eventId: 4 });
    expect(decodeElevenLabsMessage('{"type":"agent_response_correction","agent_response_correction_event":{"corrected_agent_response":"Hi","event_id":"5"}}')).toEqual({
      type: 'agent_response_correction',
      eventId: 5,
      corrected: 'Hi',
    });
    // A ping keeps the id as received, for the pong to echo it exactly.
    expect(decodeElevenLabsMessage('{"type":"ping","ping_event":{"event_id":"7","ping_ms":20}}')).toEqual({ type: 'ping', eventId: '7', pingMs: 20 });
    expect(decodeElevenLabsMessage('{"type":"ping","ping_event":{"event_id":7}}')).toEqual({ type: 'ping', eventId: 7, pingMs: undefined });
    expect(decodeElevenLabsMessage('{"type":"agent_response","agent_response_event":{"agent_response":"Hi","event_id":"8"}}')).toEqual({ type: 'agent_response', text: 'Hi' });
    expect(decodeElevenLabsMessage('{"type":"client_tool_call","client_tool_call":{"tool_name":"end_call","tool_call_id":"t1","parameters":{},"event_id":"9"}}')).toMatchObject({ type: 'client_tool_call' });
    for (const id of ['', '3a', '-1', ' 3', '1.5', '1e3', '1234567890123456']) {
      expect(decodeElevenLabsMessage(JSON.stringify({ type: 'audio', audio_event: { audio_base_64: B, event_id: id } }))).toMatchObject({ kind: 'invalid_fields', name: 'audio' });
      expect(decodeElevenLabsMessage(JSON.stringify({ type: 'ping', ping_event: { event_id: id } }))).toMatchObject({ kind: 'invalid_fields', name: 'ping' });
    }
  });

  it('decodes an interruption without an event_id (or with an unusable one) as an interruption of whatever is playing', () => {
    expect(decodeElevenLabsMessage('{"type":"interruption","interruption_event":{}}')).toEqual({ type: 'interruption', eventId: undefined });
    expect(decodeElevenLabsMessage('{"type":"interruption"}')).toEqual({ type: 'interruption', eventId: undefined });
    expect(decodeElevenLabsMessage('{"type":"interruption","interruption_event":{"event_id":null}}')).toEqual({ type: 'interruption', eventId: undefined });
    expect(decodeElevenLabsMessage('{"type":"interruption","interruption_event":{"event_id":-2}}')).toEqual({ type: 'interruption', eventId: undefined });
  });

  it('echoes the ping event_id in the pong with the JSON type it came in (integer or string)', () => {
    expect(encodePong(12)).toBe('{"type":"pong","event_id":12}');
    expect(encodePong('12')).toBe('{"type":"pong","event_id":"12"}');
  });

  it('encodes the first frame with only the fields set, and the other client messages', () => {
    expect(JSON.parse(encodeInitiation({ dynamicVariables: { call_sid: 'CA1' } }))).toEqual({ type: 'conversation_initiation_client_data', dynamic_variables: { call_sid: 'CA1' } });
    expect(JSON.parse(encodeInitiation({ prompt: 'P', firstMessage: 'Hi', language: 'en', voiceId: 'v1', dynamicVariables: {}, userId: '+1' }))).toEqual({
      type: 'conversation_initiation_client_data',
      conversation_config_override: { agent: { prompt: { prompt: 'P' }, first_message: 'Hi', language: 'en' }, tts: { voice_id: 'v1' } },
      dynamic_variables: {},
      user_id: '+1',
    });
    expect(JSON.parse(encodeInitiation({ voiceId: 'v', dynamicVariables: {} }))).toEqual({ type: 'conversation_initiation_client_data', conversation_config_override: { tts: { voice_id: 'v' } }, dynamic_variables: {} });
    expect(encodeUserAudio('AAAA')).toBe('{"user_audio_chunk":"AAAA"}');
    expect(JSON.parse(encodePong(12))).toEqual({ type: 'pong', event_id: 12 });
    expect(JSON.parse(encodeToolResult('t1', 'ok "quoted"', false))).toEqual({ type: 'client_tool_result', tool_call_id: 't1', result: 'ok "quoted"', is_error: false });
  });

  it('classifies errors as the contract table says, with bounded code labels', () => {
    const c = (closeCode: number | undefined, errorType: string | undefined, message = '', reason?: string) => classifyElevenLabsError({ closeCode, errorType, message, reason });
    expect(c(1002, 'llm_error')).toEqual({ kind: 'transient', code: 'llm_error' });
    expect(c(1002, 'tts_cascade_error')).toEqual({ kind: 'transient', code: 'tts_cascade_error' });
    expect(c(1002, 'llm_timeout')).toEqual({ kind: 'transient', code: 'llm_timeout' });
    expect(c(1002, 'safety_violation')).toEqual({ kind: 'fatal', code: 'safety_violation' });
    expect(c(1002, 'transport_receive_timeout')).toEqual({ kind: 'fatal', code: 'transport_receive_timeout' });
    expect(c(1011, 'unknown_websocket_crash')).toEqual({ kind: 'transient', code: 'unknown_websocket_crash' });
    expect(c(1008, 'override_error', 'Override for field(s) agent.prompt is not allowed, check permissions')).toEqual({ kind: 'fatal', code: 'override_error' });
    expect(c(1008, 'invalid_message')).toEqual({ kind: 'fatal', code: 'invalid_message' });
    expect(c(1008, 'missing_dynamic_variable')).toEqual({ kind: 'fatal', code: 'missing_dynamic_variable' });
    expect(c(1000, 'max_duration_exceeded')).toEqual({ kind: 'end', code: 'max_duration_exceeded' });
    expect(c(1008, undefined, 'Authentication failed')).toEqual({ kind: 'auth', code: 'close_1008' });
    expect(c(1008, 'invalid_message', 'invalid signature')).toEqual({ kind: 'auth', code: 'invalid_message' });
    expect(c(1008, undefined, 'bad request')).toEqual({ kind: 'fatal', code: 'close_1008' });
    expect(c(1008, 'unknown')).toEqual({ kind: 'fatal', code: 'unknown' });
    expect(c(1011, undefined)).toEqual({ kind: 'transient', code: 'close_1011' });
    expect(c(1002, undefined)).toEqual({ kind: 'transient', code: 'close_1002' });
    expect(c(1002, 'brand_new_type')).toEqual({ kind: 'transient', code: 'close_1002' });
    expect(c(4000, 'whatever')).toEqual({ kind: 'transient', code: 'other' });
    // (unverified) capacity: wording about concurrency, too many sessions or a rate limit, where the type does not say otherwise.
    expect(c(1008, undefined, 'Too many concurrent conversations for this agent')).toEqual({ kind: 'capacity', code: 'close_1008' });
    expect(c(1002, 'http_exception', 'Workspace concurrency limit reached')).toEqual({ kind: 'capacity', code: 'http_exception' });
    expect(c(1002, 'llm_error', 'upstream rate limit')).toEqual({ kind: 'transient', code: 'llm_error' });
  });

  it('counts as capacity only wording about concurrency, too many sessions or a rate limit, not any "limit" (a prompt over the character limit is fatal)', () => {
    const c = (closeCode: number | undefined, errorType: string | undefined, message: string) => classifyElevenLabsError({ closeCode, errorType, message, reason: undefined });
    expect(c(1008, 'value_error', 'prompt exceeds the character limit')).toEqual({ kind: 'fatal', code: 'value_error' });
    expect(c(1008, undefined, 'first_message is over the length limit')).toEqual({ kind: 'fatal', code: 'close_1008' });
    expect(c(1008, 'invalid_message', 'Too many tools: limit is 20')).toEqual({ kind: 'fatal', code: 'invalid_message' });
    for (const message of [
      'Too many concurrent conversations',
      'too many sessions for this agent',
      'Too many conversations running',
      'too many connections',
      'Too Many Requests',
      'rate limit exceeded',
      'Rate-limit reached for this workspace',
      'You have reached your quota of concurrent calls',
    ]) {
      expect(c(1008, undefined, message), message).toEqual({ kind: 'capacity', code: 'close_1008' });
      expect(c(1002, 'http_exception', message), message).toEqual({ kind: 'capacity', code: 'http_exception' });
    }
  });

  it('classifies HTTP refusals: 401/403/422 auth, 429 capacity, 404 fatal, anything else transient', () => {
    expect(classifyHttpStatus(401)).toEqual({ kind: 'auth', code: 'http_401' });
    expect(classifyHttpStatus(403)).toEqual({ kind: 'auth', code: 'http_403' });
    expect(classifyHttpStatus(422)).toEqual({ kind: 'auth', code: 'http_422' });
    expect(classifyHttpStatus(429)).toEqual({ kind: 'capacity', code: 'http_429' });
    expect(classifyHttpStatus(404)).toEqual({ kind: 'fatal', code: 'http_404' });
    expect(classifyHttpStatus(503)).toEqual({ kind: 'transient', code: 'http_5xx' });
    expect(classifyHttpStatus(418)).toEqual({ kind: 'transient', code: 'http_other' });
  });

  it('summarises a resumed conversation in bounded length, keeping the latest turns', () => {
    const history = Array.from({ length: 200 }, (_, i) => ({ role: i % 2 === 0 ? ('user' as const) : ('agent' as const), text: `turn ${i} ${'x'.repeat(40)}` }));
    const text = resumeContext(history, 1000);
    expect(text).toBeDefined();
    expect(text?.length).toBeLessThanOrEqual(1000);
    expect(text).toMatch(/^Conversation so far/);
    expect(text).toContain('Agent: turn 199');
    expect(text).not.toContain('turn 0 ');
    expect(resumeContext([{ role: 'user', text: 'Hello' }, { role: 'agent', text: 'Hi there' }])).toMatch(/\nCaller: Hello\nAgent: Hi there$/);
    expect(resumeContext([])).toBeUndefined();
  });

  it('maps BCP 47 language tags to the codes ElevenLabs takes', () => {
    expect(elevenLabsLanguage('en-US')).toBe('en');
    expect(elevenLabsLanguage('pt-BR')).toBe('pt-br');
    expect(elevenLabsLanguage('de')).toBe('de');
  });
});

describe('ElevenLabs fast audio scan', () => {
  const B64 = Buffer.alloc(160, 0xd5).toString('base64');
  const b = (s: string): Buffer => Buffer.from(s, 'utf8');

  it('finds the audio and event_id in any key order and with whitespace', () => {
    const scan = newAudioScan();
    for (const msg of [
      `{"type":"audio","audio_event":{"audio_base_64":"${B64}","event_id":42}}`,
      `{"audio_event":{"event_id":42,"audio_base_64":"${B64}"},"type":"audio"}`,
      `{ "type" : "audio" , "audio_event" : { "event_id" : 42 , "audio_base_64" : "${B64}" } }`,
    ]) {
      const buf = b(msg);
      expect(scanElevenLabsAudio(buf, scan, 1 << 22)).toBe(true);
      expect(buf.toString('latin1', scan.audioStart, scan.audioEnd)).toBe(B64);
      expect(scan.eventId).toBe(42);
    }
  });

  it('reads a numeric-string event_id on the fast path too, leading zeros included (as the decoder does)', () => {
    const scan = newAudioScan();
    for (const [id, value] of [
      ['"42"', 42],
      ['"007"', 7],
      ['"999999999999999"', 999999999999999],
    ] as const) {
      const msg = `{"type":"audio","audio_event":{"audio_base_64":"${B64}","event_id":${id}}}`;
      expect(scanElevenLabsAudio(b(msg), scan, 1 << 22)).toBe(true);
      expect(scan.eventId).toBe(value);
      expect(decodeElevenLabsMessage(msg)).toEqual({ type: 'audio', audio: B64, eventId: value });
    }
  });

  it.each([
    ['alignment', `{"type":"audio","audio_event":{"audio_base_64":"${B64}","event_id":1,"alignment":{"chars":[]}}}`],
    ['another type', `{"type":"ping","audio_event":{"audio_base_64":"${B64}","event_id":1}}`],
    ['a fractional event id', `{"type":"audio","audio_event":{"audio_base_64":"${B64}","event_id":1.5}}`],
    ['an exponent', `{"type":"audio","audio_event":{"audio_base_64":"${B64}","event_id":1e3}}`],
    ['a negative event id', `{"type":"audio","audio_event":{"audio_base_64":"${B64}","event_id":-1}}`],
    ['a leading zero', `{"type":"audio","audio_event":{"audio_base_64":"${B64}","event_id":01}}`],
    ['a non-numeric string event id', `{"type":"audio","audio_event":{"audio_base_64":"${B64}","event_id":"1a"}}`],
    ['an empty string event id', `{"type":"audio","audio_event":{"audio_base_64":"${B64}","event_id":""}}`],
    ['a 16-digit string event id', `{"type":"audio","audio_event":{"audio_base_64":"${B64}","event_id":"1234567890123456"}}`],
    ['an escaped digit', `{"type":"audio","audio_event":{"audio_base_64":"${B64}","event_id":"\\u0031"}}`],
    ['no event id', `{"type":"audio","audio_event":{"audio_base_64":"${B64}"}}`],
    ['a duplicate key', `{"type":"audio","audio_event":{"audio_base_64":"${B64}","event_id":1,"event_id":2}}`],
    ['bad base64', `{"type":"audio","audio_event":{"audio_base_64":"abc","event_id":1}}`],
    ['trailing bytes', `{"type":"audio","audio_event":{"audio_base_64":"${B64}","event_id":1}}x`],
  ])('declines %s (left to the full decode)', (_what, msg) => {
    expect(scanElevenLabsAudio(b(msg), newAudioScan(), 1 << 22)).toBe(false);
  });

  it('never accepts what the full decoder rejects, and agrees with it (random mutations)', () => {
    const rand = prng(5);
    const base = `{"type":"audio","audio_event":{"audio_base_64":"${B64.slice(0, 40)}","event_id":123}}`;
    const scan = newAudioScan();
    let accepted = 0;
    for (let n = 0; n < 20_000; n++) {
      const chars = [...base];
      const at = Math.floor(rand() * chars.length);
      const pick = '{}[]":,\\ ab=+/0.-e9'[Math.floor(rand() * 19)] as string;
      const op = rand();
      if (op < 0.5) chars[at] = pick;
      else if (op < 0.75) chars.splice(at, 1);
      else chars.splice(at, 0, pick);
      const msg = chars.join('');
      if (!scanElevenLabsAudio(b(msg), scan, 1 << 22)) continue;
      accepted++;
      expect(decodeElevenLabsMessage(msg)).toEqual({ type: 'audio', audio: b(msg).toString('latin1', scan.audioStart, scan.audioEnd), eventId: scan.eventId });
    }
    expect(accepted).toBeGreaterThan(100);
  });
});

// ---------------------------------------------------------------------------
// Adapter against the fake

describe('ElevenLabs adapter against the fake service', () => {
  let server: FakeElevenLabsServer;
  let logs: LogLines;
  const legs: AgentLeg[] = [];

  beforeEach(async () => {
    server = await FakeElevenLabsServer.start();
    logs = new LogLines();
  });

  afterEach(async () => {
    for (const leg of legs.splice(0)) leg.close();
    await server.close();
  });

  function connect(req: AgentRequest = request(), providerOpts: ElevenLabsProviderOptions = {}, provider = createElevenLabsProvider({ url: server.url, ...providerOpts })) {
    const rec = recorder();
    const leg = provider.connect({ request: req, events: rec.events, log: logs.logger, heartbeatMs: 0 });
    legs.push(leg);
    return { leg, rec };
  }

  /** Connects and waits until the leg is ready. */
  async function live(req: AgentRequest = request(), opts: FakeElevenLabsOptions = {}, providerOpts: ElevenLabsProviderOptions = {}) {
    Object.assign(server.options, opts);
    const { leg, rec } = connect(req, providerOpts);
    const conn = await server.nextConnection();
    await vi.waitFor(() => expect(rec.ready).toHaveLength(1));
    return { leg, rec, conn };
  }

  const allOverrides = { overrides: { prompt: true, firstMessage: true, language: true, voice: true } };

  it('sends conversation_initiation_client_data first, with the overrides, dynamic variables and user id the request asks for', async () => {
    server.options.defaultAgent = allOverrides;
    const { conn } = await live(request({ instructions: 'Be brief.', greeting: 'Hello from Acme', language: 'en-US', voice: 'voice_1' }));
    expect(conn.frames[0]).toBe(conn.initiation);
    expect(conn.initiation).toEqual({
      type: 'conversation_initiation_client_data',
      conversation_config_override: { agent: { prompt: { prompt: 'Be brief.' }, first_message: 'Hello from Acme', language: 'en' }, tts: { voice_id: 'voice_1' } },
      dynamic_variables: { caller_number: CALL.from, called_number: CALL.to, call_sid: CALL.callSid },
      user_id: CALL.from,
    });
  });

  it('sends no override the request does not set, so an agent with overrides disabled accepts it; on an outbound call the user is the callee', async () => {
    const { conn, rec } = await live(request({ call: { ...CALL, direction: 'outbound-api' } }));
    expect(conn.initiation).toEqual({
      type: 'conversation_initiation_client_data',
      dynamic_variables: { caller_number: CALL.from, called_number: CALL.to, call_sid: CALL.callSid },
      user_id: CALL.to,
    });
    expect(rec.errors).toEqual([]);
  });

  it('is ready only after conversation_initiation_metadata, with its conversation id; caller audio before it is not sent', async () => {
    server.options.autoMetadata = false;
    const { leg, rec } = connect();
    const conn = await server.nextConnection();
    await conn.waitForInitiation();
    expect(rec.ready).toEqual([]);
    expect(leg.isOpen).toBe(true);
    expect(leg.sendAudio(Buffer.alloc(160, 0xff).toString('base64'))).toBe(false);
    leg.sendText('early context', 'context');
    conn.sendMetadata('conv_ready_1');
    await vi.waitFor(() => expect(rec.ready).toEqual(['conv_ready_1']));
    // Text held before ready goes out right after it; the early audio never does.
    await vi.waitFor(() => expect(conn.contextualUpdates).toEqual(['early context']));
    expect(conn.audio).toEqual([]);
  });

  it('passes μ-law audio both ways byte-exact, the caller payload wrapped untouched', async () => {
    const { leg, rec, conn } = await live();
    const a = bytes(160, 1);
    const b = bytes(160, 2);
    expect(leg.sendAudio(a.toString('base64'))).toBe(true);
    const framed = Buffer.from(`xx${b.toString('base64')}yy`, 'latin1');
    expect(leg.sendAudioBytes(framed, 2, framed.length - 2)).toBe(true);
    await conn.waitForAudioBytes(320);
    expect(conn.audio).toEqual([a, b]);
    expect(conn.frames.slice(1)).toEqual([{ user_audio_chunk: a.toString('base64') }, { user_audio_chunk: b.toString('base64') }]);

    const out = bytes(800, 3);
    conn.speak(out, { chunkBytes: 160 });
    await vi.waitFor(() => expect(Buffer.concat(rec.audio)).toEqual(out));
    expect(rec.audio).toHaveLength(5);
  });

  it('starts a response before the first audio of each greater event_id, for fast-path and alignment frames alike', async () => {
    const { rec, conn } = await live();
    const first = conn.speak(bytes(160), { chunkBytes: 80 });
    conn.speak(bytes(160, 4), { eventId: first, alignment: true });
    conn.speak(bytes(160, 5), { alignment: true, chunkBytes: 80 });
    await vi.waitFor(() => expect(rec.audio).toHaveLength(5));
    expect(rec.order.slice(1)).toEqual(['responseStart', 'audio', 'audio', 'audio', 'responseStart', 'audio', 'audio']);
    expect(rec.badFrames).toEqual([]);
  });

  it('on interruption reports caller speech and drops late audio of the interrupted response; the next response starts afresh', async () => {
    const { rec, conn } = await live();
    const id = conn.speak(bytes(160), { chunkBytes: 160 });
    conn.interrupt();
    conn.speak(bytes(160, 6), { eventId: id }); // late audio of the interrupted reply
    conn.speak(bytes(160, 7), { eventId: id - 1 }); // even older
    const next = conn.speak(bytes(160, 8));
    expect(next).toBeGreaterThan(id);
    await vi.waitFor(() => expect(rec.audio).toHaveLength(2));
    expect(rec.order.slice(1)).toEqual(['responseStart', 'audio', 'callerSpeechStart', 'responseStart', 'audio']);
    expect(rec.audio[1]).toEqual(bytes(160, 8));
  });

  it('an interruption without an event_id still reports caller speech and drops the rest of the reply being played', async () => {
    for (const interruption of [{ type: 'interruption', interruption_event: {} }, { type: 'interruption' }]) {
      const { rec, conn } = await live();
      const id = conn.speak(bytes(160, 1));
      conn.send(interruption);
      conn.speak(bytes(160, 2), { eventId: id }); // late audio of the interrupted reply
      const next = conn.speak(bytes(160, 3));
      await vi.waitFor(() => expect(rec.audio).toHaveLength(2));
      expect(next).toBeGreaterThan(id);
      expect(rec.order.slice(1)).toEqual(['responseStart', 'audio', 'callerSpeechStart', 'responseStart', 'audio']);
      expect(rec.audio).toEqual([bytes(160, 1), bytes(160, 3)]);
      expect(rec.badFrames).toEqual([]);
    }
  });

  it('an interruption naming a reply not heard yet (the next reply id) drops only the reply being played, not the next reply', async () => {
    const { rec, conn } = await live();
    const id = conn.speak(bytes(160, 1));
    conn.interrupt(id + 1);
    conn.speak(bytes(160, 2), { eventId: id }); // late audio of the interrupted reply
    const next = conn.speak(bytes(160, 3), { chunkBytes: 80 });
    expect(next).toBe(id + 1);
    await vi.waitFor(() => expect(rec.audio).toHaveLength(3));
    expect(rec.order.slice(1)).toEqual(['responseStart', 'audio', 'callerSpeechStart', 'responseStart', 'audio', 'audio']);
    expect(Buffer.concat(rec.audio)).toEqual(Buffer.concat([bytes(160, 1), bytes(160, 3)]));
  });

  it('an interruption before any agent audio drops nothing that follows', async () => {
    const { rec, conn } = await live();
    conn.interrupt(5);
    const id = conn.speak(bytes(160, 1), { eventId: 5 });
    await vi.waitFor(() => expect(rec.audio).toHaveLength(1));
    expect(id).toBe(5);
    expect(rec.order.slice(1)).toEqual(['callerSpeechStart', 'responseStart', 'audio']);
  });

  it('reports final transcripts only: user_transcript and agent_response, not partials or corrections', async () => {
    const { rec, conn } = await live();
    conn.tentativeUserTranscript('I wan');
    conn.userTranscript('I want a table for two');
    conn.speak(bytes(160));
    conn.agentResponse('Sure, for what time?');
    conn.agentResponseCorrection('Sure, for what time?', 'Sure, for');
    conn.send({ type: 'agent_chat_response_part', text_response_part: { text: 'Sure', type: 'delta', event_id: 9 } });
    conn.send({ type: 'vad_score', vad_score_event: { vad_score: 0.9 } });
    conn.ping();
    await vi.waitFor(() => expect(conn.pongs).toHaveLength(1));
    expect(rec.transcripts).toEqual([
      { role: 'user', text: 'I want a table for two' },
      { role: 'agent', text: 'Sure, for what time?' },
    ]);
    expect(rec.badFrames).toEqual([]);
  });

  it('turns client_tool_call into toolCall and answers toolResult with client_tool_result', async () => {
    const { leg, rec, conn } = await live();
    const id = conn.callTool('end_call', { reason: 'caller said goodbye' });
    await vi.waitFor(() => expect(rec.toolCalls).toEqual([{ id, name: 'end_call', args: { reason: 'caller said goodbye' } }]));
    leg.toolResult(id, 'ending the call', false);
    leg.toolResult('other', '{"error":"unknown tool"}', true);
    await vi.waitFor(() => expect(conn.toolResults).toHaveLength(2));
    expect(conn.toolResults).toEqual([
      { toolCallId: id, result: 'ending the call', isError: false },
      { toolCallId: 'other', result: '{"error":"unknown tool"}', isError: true },
    ]);
    expect(conn.isOpen).toBe(true);
  });

  it('sends sendText as user_message (the caller speaking) or contextual_update (context only)', async () => {
    const { leg, conn } = await live();
    leg.sendText('Caller pressed 5', 'user');
    leg.sendText('The caller is a premium customer', 'context');
    await vi.waitFor(() => expect(conn.contextualUpdates).toHaveLength(1));
    expect(conn.userMessages).toEqual(['Caller pressed 5']);
    expect(conn.contextualUpdates).toEqual(['The caller is a premium customer']);
    expect(conn.frames.slice(1)).toEqual([
      { type: 'user_message', text: 'Caller pressed 5' },
      { type: 'contextual_update', text: 'The caller is a premium customer' },
    ]);
  });

  it('answers every ping at once with a pong of the same event_id', async () => {
    const { conn } = await live(request(), { pingIntervalMs: 5 });
    await vi.waitFor(() => expect(conn.pongs.length).toBeGreaterThanOrEqual(3));
    expect(conn.pongs.slice(0, 3)).toEqual(conn.pings.slice(0, 3));
    const id = conn.ping(42);
    await vi.waitFor(() => expect(conn.pongs).toContain(id));
  });

  it('with event ids sent as numeric strings: agent audio plays (fast path and alignment frames), pings get a pong echoing the string id, interruption drops the interrupted reply', async () => {
    const { rec, conn } = await live(request(), { eventIdsAsStrings: true });
    const first = conn.speak(bytes(160, 1), { chunkBytes: 80 });
    conn.speak(bytes(160, 2), { eventId: first, alignment: true });
    const ping = conn.ping(25);
    conn.interrupt();
    conn.speak(bytes(160, 3), { eventId: first }); // late audio of the interrupted reply
    conn.speak(bytes(160, 4), { alignment: true });
    await vi.waitFor(() => expect(rec.audio).toHaveLength(4));
    await vi.waitFor(() => expect(conn.pongs).toEqual([ping]));
    expect(conn.frames).toContainEqual({ type: 'pong', event_id: String(ping) });
    expect(Buffer.concat(rec.audio)).toEqual(Buffer.concat([bytes(160, 1), bytes(160, 2), bytes(160, 4)]));
    expect(rec.order.slice(1)).toEqual(['responseStart', 'audio', 'audio', 'audio', 'callerSpeechStart', 'responseStart', 'audio']);
    expect(rec.badFrames).toEqual([]);
    expect(conn.invalidFrames).toBe(0);
    expect(conn.isOpen).toBe(true);
  });

  it('resumes with the earlier turns as one contextual_update right after the metadata, and without the greeting', async () => {
    const history = [
      { role: 'agent' as const, text: 'Hello, Acme here.' },
      { role: 'user' as const, text: 'I need to move my booking.' },
    ];
    // An agent whose greeting Playline does not override: no first_message at all.
    const plain = await live(request({ resume: { history } }));
    await vi.waitFor(() => expect(plain.conn.contextualUpdates).toHaveLength(1));
    expect(plain.conn.initiation).not.toHaveProperty('conversation_config_override');
    expect(plain.conn.frames[1]).toEqual({ type: 'contextual_update', text: expect.stringMatching(/^Conversation so far/) });
    expect(plain.conn.contextualUpdates[0]).toContain('Agent: Hello, Acme here.\nCaller: I need to move my booking.');

    // A route that overrides the greeting: an empty first message keeps the agent from greeting again.
    server.options.defaultAgent = allOverrides;
    const greeted = await live(request({ greeting: 'Hello, Acme here.', resume: { history } }));
    expect(greeted.conn.initiation).toMatchObject({ conversation_config_override: { agent: { first_message: '' } } });
    await vi.waitFor(() => expect(greeted.conn.contextualUpdates).toHaveLength(1));
  });

  it('resumed without a greeting override: the greeting the agent says again on its own is not played nor stored as a turn; what it says after the caller spoke is', async () => {
    const history = [
      { role: 'agent' as const, text: 'Hello, Acme here.' },
      { role: 'user' as const, text: 'I need to move my booking.' },
    ];
    const { rec, conn } = await live(request({ resume: { history } }));
    await vi.waitFor(() => expect(conn.contextualUpdates).toHaveLength(1));
    const greeting = conn.speak(bytes(320, 7), { chunkBytes: 160 });
    conn.agentResponse('Hello, Acme here.', greeting);
    conn.userTranscript('Thursday would be better.');
    const answer = conn.speak(bytes(160, 8));
    conn.agentResponse('Thursday it is.', answer);
    await vi.waitFor(() => expect(rec.audio).toHaveLength(1));
    expect(Buffer.concat(rec.audio)).toEqual(bytes(160, 8));
    expect(rec.transcripts).toEqual([
      { role: 'user', text: 'Thursday would be better.' },
      { role: 'agent', text: 'Thursday it is.' },
    ]);
  });

  it('resumed, the caller speaking over the unheard repeated greeting: its late audio stays dropped, the answer plays', async () => {
    const { rec, conn } = await live(request({ resume: { history: [{ role: 'user' as const, text: 'Hi' }] } }));
    await vi.waitFor(() => expect(conn.contextualUpdates).toHaveLength(1));
    const greeting = conn.speak(bytes(160, 7));
    conn.interrupt(greeting);
    conn.speak(bytes(160, 7), { eventId: greeting }); // late audio of the repeated greeting
    conn.speak(bytes(160, 9));
    await vi.waitFor(() => expect(rec.audio).toHaveLength(1));
    expect(Buffer.concat(rec.audio)).toEqual(bytes(160, 9));
  });

  it('resumed, text sent for the agent to answer before any greeting: the answer plays', async () => {
    const { rec, conn, leg } = await live(request({ resume: { history: [{ role: 'user' as const, text: 'Hi' }] } }));
    await vi.waitFor(() => expect(conn.contextualUpdates).toHaveLength(1));
    leg.sendText('The transfer did not go through.', 'user');
    await vi.waitFor(() => expect(conn.userMessages).toHaveLength(1));
    conn.speak(bytes(160, 5));
    await vi.waitFor(() => expect(rec.audio).toHaveLength(1));
  });

  it('a new conversation plays its greeting as usual', async () => {
    const { rec, conn } = await live(request());
    conn.speak(bytes(160, 7));
    await vi.waitFor(() => expect(rec.audio).toHaveLength(1));
  });

  it('uses a signed URL when an API key is set, and logs neither the key nor the URL', async () => {
    server.options.defaultAgent = { public: false };
    const { conn } = await live(request(), {}, { apiKey: server.apiKey });
    expect(server.signedUrlRequests).toEqual([{ agentId: 'agent_test', hadKey: true, keyOk: true, status: 200 }]);
    expect(conn.signature).toMatch(/^[\w-]{20,}$/);
    const all = logs.lines.join('\n');
    expect(logs.lines.length).toBeGreaterThan(0);
    expect(all).not.toContain(conn.signature ?? 'never');
    expect(all).not.toContain(server.apiKey);
    expect(all).not.toContain('conversation_signature');
  });

  it('a wrong API key is an auth failure (HTTP 401 on the signed URL) and no socket is opened', async () => {
    const { rec } = connect(request(), { apiKey: 'wrong-key' });
    await vi.waitFor(() => expect(rec.closed).toHaveLength(1));
    expect(rec.errors).toEqual([{ kind: 'auth', code: 'http_401', message: expect.stringContaining('ELEVENLABS_API_KEY'), legDone: true }]);
    expect(rec.closed[0]).toMatchObject({ byUs: false, error: expect.stringContaining('401') });
    expect(server.connections).toHaveLength(0);
    expect(logs.lines.join('\n')).not.toContain('wrong-key');
  });

  it('without an API key, an upgrade refused with 401 or 403 is auth, and the message says to set ELEVENLABS_API_KEY', async () => {
    for (const status of [401, 403]) {
      server.options.upgradeStatus = status;
      const { rec } = connect();
      await vi.waitFor(() => expect(rec.closed).toHaveLength(1));
      expect(rec.errors).toEqual([{ kind: 'auth', code: `http_${status}`, message: expect.stringContaining('the agent requires authentication: set ELEVENLABS_API_KEY'), legDone: true }]);
      expect(rec.errors[0]?.message).toContain(`HTTP ${status}`);
    }
    // With a key, the same refusal points at the key itself.
    server.options.upgradeStatus = 403;
    const keyed = connect(request(), { apiKey: server.apiKey });
    await vi.waitFor(() => expect(keyed.rec.closed).toHaveLength(1));
    expect(keyed.rec.errors).toEqual([{ kind: 'auth', code: 'http_403', message: expect.stringContaining('check ELEVENLABS_API_KEY'), legDone: true }]);
  });

  it('a private agent reached without a signed URL is refused as auth (fake: error 1008), the message saying to set ELEVENLABS_API_KEY', async () => {
    server.options.defaultAgent = { public: false };
    const { rec } = connect();
    await vi.waitFor(() => expect(rec.closed).toHaveLength(1));
    expect(rec.errors).toEqual([{ kind: 'auth', code: 'close_1008', message: expect.stringContaining('Authentication failed'), legDone: true }]);
    expect(rec.errors[0]?.message).toContain('the agent requires authentication: set ELEVENLABS_API_KEY');
    expect(rec.ready).toEqual([]);
    expect(rec.closed[0]).toMatchObject({ code: 1008, byUs: false });
  });

  it('classifies capacity: HTTP 429 on the signed URL or on the upgrade, and an error frame about concurrency', async () => {
    server.options.signedUrlStatus = 429;
    const signed = connect(request(), { apiKey: server.apiKey });
    await vi.waitFor(() => expect(signed.rec.closed).toHaveLength(1));
    expect(signed.rec.errors).toMatchObject([{ kind: 'capacity', code: 'http_429', legDone: true }]);

    delete server.options.signedUrlStatus;
    server.options.upgradeStatus = 429;
    const upgrade = connect();
    await vi.waitFor(() => expect(upgrade.rec.closed).toHaveLength(1));
    expect(upgrade.rec.errors).toMatchObject([{ kind: 'capacity', code: 'http_429', legDone: true }]);
    expect(upgrade.rec.closed[0]?.error).toContain('HTTP 429');

    delete server.options.upgradeStatus;
    const { rec, conn } = await live();
    conn.error(null, 1008, { message: 'Too many concurrent conversations for this workspace' });
    await vi.waitFor(() => expect(rec.closed).toHaveLength(1));
    expect(rec.errors).toMatchObject([{ kind: 'capacity', code: 'close_1008', legDone: true }]);
  });

  it('classifies error frames and closes: llm_error transient, safety_violation fatal, 1011 transient, a bare 1008 close fatal', async () => {
    const cases: Array<[(c: FakeElevenLabsConnection) => void, Partial<AgentError>, number]> = [
      [(c) => c.error('llm_error', 1002), { kind: 'transient', code: 'llm_error' }, 1002],
      [(c) => c.error('safety_violation', 1002), { kind: 'fatal', code: 'safety_violation' }, 1002],
      [(c) => c.error('unknown_websocket_crash', 1011), { kind: 'transient', code: 'unknown_websocket_crash' }, 1011],
      [(c) => c.close(1011, 'internal'), { kind: 'transient', code: 'close_1011' }, 1011],
      [(c) => c.close(1008, 'policy'), { kind: 'fatal', code: 'close_1008' }, 1008],
    ];
    for (const [act, expected, code] of cases) {
      const { rec, conn } = await live();
      act(conn);
      await vi.waitFor(() => expect(rec.closed).toHaveLength(1));
      expect(rec.errors).toEqual([{ ...expected, message: expect.any(String), legDone: true }]);
      expect(rec.order.slice(-2)).toEqual(['error', 'closed']);
      expect(rec.closed[0]).toMatchObject({ code, byUs: false });
      expect(rec.hangups).toEqual([]);
    }
  });

  it('override_error is fatal, with a message naming the fix', async () => {
    server.options.defaultAgent = { overrides: { prompt: true } };
    const { rec } = connect(request({ instructions: 'Be brief.', voice: 'voice_1' }));
    await vi.waitFor(() => expect(rec.closed).toHaveLength(1));
    expect(rec.errors).toHaveLength(1);
    expect(rec.errors[0]).toMatchObject({ kind: 'fatal', code: 'override_error', legDone: true });
    expect(rec.errors[0]?.message).toMatch(/System prompt, Voice/);
    expect(rec.errors[0]?.message).toMatch(/Security settings \(Overrides\)/);
    expect(rec.errors[0]?.message).toMatch(/or remove/);
    expect(rec.ready).toEqual([]);
  });

  it('ends with a fatal transport_receive_timeout when no caller audio reaches the agent (fake: after inputTimeoutMs)', async () => {
    const { rec } = await live(request(), { inputTimeoutMs: 30 });
    await vi.waitFor(() => expect(rec.closed).toHaveLength(1));
    expect(rec.errors).toMatchObject([{ kind: 'fatal', code: 'transport_receive_timeout', legDone: true }]);
    expect(rec.closed[0]).toMatchObject({ code: 1002 });
  });

  it("the agent's own end is one hangup: close 1000, max_duration_exceeded, or the system end_call tool", async () => {
    const plain = await live();
    plain.conn.endCall();
    await vi.waitFor(() => expect(plain.rec.closed).toHaveLength(1));
    expect(plain.rec.hangups).toEqual(['agent_ended']);
    expect(plain.rec.errors).toEqual([]);
    expect(plain.rec.order.slice(-2)).toEqual(['hangup', 'closed']);

    const max = await live();
    max.conn.endCall({ maxDuration: true });
    await vi.waitFor(() => expect(max.rec.closed).toHaveLength(1));
    expect(max.rec.hangups).toEqual(['max_duration_exceeded']);
    expect(max.rec.errors).toEqual([]);

    const tool = await live();
    tool.conn.agentToolResponse('end_call');
    await vi.waitFor(() => expect(tool.rec.hangups).toEqual(['end_call']));
    tool.conn.endCall();
    await vi.waitFor(() => expect(tool.rec.closed).toHaveLength(1));
    expect(tool.rec.hangups).toEqual(['end_call']);
  });

  it('a close 1000 before the conversation is ready is a transient failure of the leg (retry or fallback), not the agent hanging up', async () => {
    server.options.autoMetadata = false;
    for (const end of [(c: FakeElevenLabsConnection) => c.endCall(), (c: FakeElevenLabsConnection) => c.endCall({ maxDuration: true })]) {
      const { rec } = connect();
      const conn = await server.nextConnection();
      await conn.waitForInitiation();
      end(conn);
      await vi.waitFor(() => expect(rec.closed).toHaveLength(1));
      expect(rec.errors).toEqual([{ kind: 'transient', code: 'close_1000', message: expect.stringContaining('before the conversation started'), legDone: true }]);
      expect(rec.hangups).toEqual([]);
      expect(rec.ready).toEqual([]);
      expect(rec.order).toEqual(['error', 'closed']);
      expect(rec.closed[0]).toMatchObject({ code: 1000, byUs: false });
    }
  });

  it('counts bad frames without ending the call', async () => {
    const { rec, conn } = await live();
    conn.sendRaw(Buffer.from([1, 2, 3]));
    conn.sendRaw('not json');
    conn.sendRaw('[1,2]');
    conn.send({ type: 'audio', audio_event: { audio_base_64: '!!!!', event_id: 1 } });
    conn.send({ type: 'audio', audio_event: { audio_base_64: 'AAAA' } });
    conn.send({ type: 'brand_new_event' });
    conn.speak(bytes(160));
    await vi.waitFor(() => expect(rec.audio).toHaveLength(1));
    expect(rec.badFrames).toEqual([
      { kind: 'binary', name: undefined },
      { kind: 'non_json', name: undefined },
      { kind: 'not_object', name: undefined },
      { kind: 'bad_audio', name: 'audio' },
      { kind: 'invalid_fields', name: 'audio' },
      { kind: 'unknown_type', name: 'brand_new_event' },
    ]);
    expect(rec.errors).toEqual([]);
    expect(rec.closed).toEqual([]);
  });

  it('converts a pcm_16000 agent both ways (PCM16 at 16 kHz to the agent, μ-law 8 kHz to the bridge) and warns once per agent how to avoid it', async () => {
    server.options.defaultAgent = { inputFormat: 'pcm_16000', outputFormat: 'pcm_16000' };
    const provider = createElevenLabsProvider({ url: server.url });
    const rec = recorder();
    const leg = provider.connect({ request: request(), events: rec.events, log: logs.logger, heartbeatMs: 0 });
    legs.push(leg);
    const conn = await server.nextConnection();
    await vi.waitFor(() => expect(rec.ready).toHaveLength(1));

    // 1 s of a 1 kHz tone from the caller, in 20 ms Twilio frames.
    const caller = mulawEncode(tone(1000, 8000, 8000));
    for (let i = 0; i < caller.length; i += 160) expect(leg.sendAudio(Buffer.from(caller.subarray(i, i + 160)).toString('base64'))).toBe(true);
    const heldBackBytes = 2 * 16 * 12; // at most 12 ms of 16 kHz PCM wait for the next frame
    const received = await conn.waitForAudioBytes(32000 - heldBackBytes);
    expect(received.length % 2).toBe(0);
    expect(received.length).toBeLessThanOrEqual(32000);
    const pcm = new Int16Array(received.length / 2);
    for (let i = 0; i < pcm.length; i++) pcm[i] = received.readInt16LE(i * 2);
    expect(Math.abs(20 * Math.log10(amplitudeAt(pcm, 16000, 1000, 800) / 8000))).toBeLessThan(0.5);

    // 1 s of a 1 kHz tone from the agent as PCM16 16 kHz, in 20 ms chunks.
    const agentPcm = tone(1000, 16000, 16000);
    conn.speak(Buffer.from(agentPcm.buffer), { chunkBytes: 640 });
    await vi.waitFor(() => expect(Buffer.concat(rec.audio).length).toBeGreaterThanOrEqual(8000 - 8 * 12));
    const mu = Buffer.concat(rec.audio);
    expect(mu.length).toBeLessThanOrEqual(8000);
    const decoded = mulawDecode(mu);
    expect(Math.abs(20 * Math.log10(amplitudeAt(decoded, 8000, 1000, 400) / 8000))).toBeLessThan(0.5);

    // A second call to the same agent converts too, without warning again.
    const rec2 = recorder();
    legs.push(provider.connect({ request: request(), events: rec2.events, log: logs.logger, heartbeatMs: 0 }));
    await vi.waitFor(() => expect(rec2.ready).toHaveLength(1));
    const warnings = logs.parsed().filter((l) => l.level === 40);
    expect(warnings).toHaveLength(1);
    expect(warnings[0]?.msg).toContain(CONVERSION_ADVICE);
    expect(warnings[0]).toMatchObject({ inputFormat: 'pcm_16000', outputFormat: 'pcm_16000' });
  });

  it('refuses an agent whose metadata names an audio format it cannot convert, as fatal', async () => {
    server.options.defaultAgent = { outputFormat: 'mp3_44100_128' };
    const { rec } = connect();
    await vi.waitFor(() => expect(rec.closed).toHaveLength(1));
    expect(rec.errors).toMatchObject([{ kind: 'fatal', code: 'unsupported_audio_format', legDone: true }]);
    expect(rec.errors[0]?.message).toContain('μ-law 8000 Hz');
    expect(rec.ready).toEqual([]);
  });

  it('refuses metadata without agent_output_audio_format as fatal, with a message saying the field is missing (no empty quotes)', async () => {
    server.options.autoMetadata = false;
    for (const event of [
      { conversation_id: 'conv_no_out', user_input_audio_format: 'ulaw_8000' },
      { conversation_id: 'conv_empty_out', agent_output_audio_format: '', user_input_audio_format: 'ulaw_8000' },
    ]) {
      const { rec } = connect();
      const conn = await server.nextConnection();
      await conn.waitForInitiation();
      conn.send({ type: 'conversation_initiation_metadata', conversation_initiation_metadata_event: event });
      await vi.waitFor(() => expect(rec.closed).toHaveLength(1));
      expect(rec.errors).toMatchObject([{ kind: 'fatal', code: 'unsupported_audio_format', legDone: true }]);
      const message = rec.errors[0]?.message ?? '';
      expect(message).toContain('sent no agent_output_audio_format');
      expect(message).toContain('μ-law 8000 Hz');
      expect(message).not.toContain('""');
      expect(rec.ready).toEqual([]);
    }
  });

  it('takes a metadata without user_input_audio_format as pcm_16000 input (as the official JS client does) and converts caller audio to it', async () => {
    server.options.autoMetadata = false;
    const { leg, rec } = connect();
    const conn = await server.nextConnection();
    await conn.waitForInitiation();
    conn.send({ type: 'conversation_initiation_metadata', conversation_initiation_metadata_event: { conversation_id: 'conv_no_in', agent_output_audio_format: 'ulaw_8000' } });
    await vi.waitFor(() => expect(rec.ready).toEqual(['conv_no_in']));
    for (let i = 0; i < 10; i++) leg.sendAudio(Buffer.alloc(160, 0xff).toString('base64'));
    // 200 ms of 8 kHz μ-law become about 200 ms of 16 kHz PCM16 (6400 bytes, less what the converter holds back).
    const got = await conn.waitForAudioBytes(6000);
    expect(got.length).toBeLessThanOrEqual(6400);
    expect(rec.errors).toEqual([]);
  });

  it('never throws on connect: a refused connection is a closed leg with the error', async () => {
    const port = Number(new URL(server.url).port);
    await server.close();
    const rec = recorder();
    const provider = createElevenLabsProvider({ url: `http://127.0.0.1:${port}` });
    expect(() => provider.connect({ request: request(), events: rec.events, log: logs.logger, heartbeatMs: 0 })).not.toThrow();
    await vi.waitFor(() => expect(rec.closed).toHaveLength(1));
    expect(rec.closed[0]).toMatchObject({ byUs: false, error: expect.stringMatching(/ECONNREFUSED|connect/) });
    const signed = recorder();
    createElevenLabsProvider({ url: `http://127.0.0.1:${port}`, apiKey: 'k' }).connect({ request: request(), events: signed.events, log: logs.logger, heartbeatMs: 0 });
    await vi.waitFor(() => expect(signed.closed).toHaveLength(1));
    expect(signed.closed[0]).toMatchObject({ byUs: false, error: expect.stringContaining('signed URL request failed') });
    server = await FakeElevenLabsServer.start();
  });

  it('close() reports closed exactly once with byUs, also while the signed URL is still being fetched', async () => {
    const { leg, rec, conn } = await live();
    leg.close();
    leg.close();
    await vi.waitFor(() => expect(rec.closed).toHaveLength(1));
    expect(rec.closed[0]).toMatchObject({ code: 1000, byUs: true });
    expect((await conn.closed).code).toBe(1000);
    expect(rec.hangups).toEqual([]);
    expect(rec.errors).toEqual([]);

    const early = connect(request(), { apiKey: server.apiKey });
    early.leg.close();
    await vi.waitFor(() => expect(early.rec.closed).toHaveLength(1));
    expect(early.rec.closed[0]).toMatchObject({ byUs: true });
    expect(early.rec.errors).toEqual([]);
    expect(early.leg.isOpen).toBe(false);
  });

  it('heartbeat: a peer that stops answering WebSocket pings is dropped', async () => {
    vi.useFakeTimers({ toFake: ['setInterval'] });
    try {
      const rec = recorder();
      const leg = createElevenLabsProvider({ url: server.url }).connect({ request: request(), events: rec.events, log: logs.logger, heartbeatMs: 1000 });
      legs.push(leg);
      const conn = await server.nextConnection();
      await vi.waitFor(() => expect(rec.ready).toHaveLength(1));
      expect(conn.isOpen).toBe(true);
      server.options.answerPings = false;
      vi.advanceTimersByTime(3000);
      await vi.waitFor(() => expect(rec.closed).toHaveLength(1));
      expect(rec.closed[0]?.error).toBe('heartbeat lost');
    } finally {
      vi.useRealTimers();
    }
  });
});

describe('ElevenLabs fake strictness', () => {
  let server: FakeElevenLabsServer;
  beforeEach(async () => {
    server = await FakeElevenLabsServer.start();
  });
  afterEach(async () => {
    await server.close();
  });

  async function rawClient(url: string): Promise<{ ws: WebSocket; messages: Array<Record<string, unknown>>; closed: Promise<number> }> {
    const ws = new WebSocket(url);
    const messages: Array<Record<string, unknown>> = [];
    ws.on('message', (d: Buffer) => messages.push(JSON.parse(d.toString('utf8')) as Record<string, unknown>));
    const closed = new Promise<number>((resolve) => ws.once('close', (code) => resolve(code)));
    await new Promise<void>((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    });
    return { ws, messages, closed };
  }

  const wsUrl = (agentId = 'a1'): string => `${server.url.replace('http', 'ws')}/v1/convai/conversation?agent_id=${agentId}`;

  it('refuses a first message that is not conversation_initiation_client_data: error invalid_message, close 1008', async () => {
    const c = await rawClient(wsUrl());
    c.ws.send(JSON.stringify({ user_audio_chunk: 'AAAA' }));
    expect(await c.closed).toBe(1008);
    expect(c.messages).toEqual([{ type: 'error', error_event: expect.objectContaining({ code: 1008, error_type: 'invalid_message' }) }]);
  });

  it('refuses an override the agent has not enabled, and answers a valid start with the metadata in the agent formats', async () => {
    server.options.agents = { a2: { inputFormat: 'pcm_16000', overrides: { voice: true } } };
    const bad = await rawClient(wsUrl('a2'));
    bad.ws.send(JSON.stringify({ type: 'conversation_initiation_client_data', conversation_config_override: { agent: { first_message: 'Hi' } } }));
    expect(await bad.closed).toBe(1008);
    expect(bad.messages[0]).toMatchObject({ type: 'error', error_event: { error_type: 'override_error' } });

    const good = await rawClient(wsUrl('a2'));
    good.ws.send(JSON.stringify({ type: 'conversation_initiation_client_data', conversation_config_override: { tts: { voice_id: 'v' } } }));
    await vi.waitFor(() => expect(good.messages).toHaveLength(1));
    expect(good.messages[0]).toMatchObject({
      type: 'conversation_initiation_metadata',
      conversation_initiation_metadata_event: { agent_output_audio_format: 'ulaw_8000', user_input_audio_format: 'pcm_16000' },
    });
    good.ws.send(JSON.stringify({ type: 'client_tool_result', tool_call_id: 't' }));
    expect(await good.closed).toBe(1008);
    expect(good.messages[1]).toMatchObject({ type: 'error', error_event: { error_type: 'missing_fields' } });
  });

  it('serves signed URLs only for the right xi-api-key, and refuses a forged signature', async () => {
    const noKey = await fetch(`${server.url}/v1/convai/conversation/get-signed-url?agent_id=a1`);
    expect(noKey.status).toBe(401);
    const ok = await fetch(`${server.url}/v1/convai/conversation/get-signed-url?agent_id=a1`, { headers: { 'xi-api-key': server.apiKey } });
    const body: unknown = await ok.json();
    expect(body).toEqual({ signed_url: expect.stringMatching(/^ws:\/\/127\.0\.0\.1:\d+\/v1\/convai\/conversation\?agent_id=a1&conversation_signature=/) });
    const forged = await rawClient(`${wsUrl()}&conversation_signature=forged`);
    expect(await forged.closed).toBe(1008);
    expect(forged.messages[0]).toMatchObject({ type: 'error', error_event: { code: 1008 } });
  });
});
