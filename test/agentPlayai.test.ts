/**
 * The PlayAI-protocol provider behind the agent port, over a scripted socket:
 * what `setup` asks for, error and close classification, and the conversion
 * for an agent set (AGENTS_FILE `format`) to 16-bit PCM instead of μ-law 8 kHz.
 */
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import type { PlayAiSocket, PlayAiSocketOptions } from '../src/agent/playai/leg.js';
import { classifyPlayAiError, createPlayAiProvider } from '../src/agent/playai/provider.js';
import type { AgentEvents, AgentRequest } from '../src/agent/port.js';

function open(request: Partial<AgentRequest> = {}) {
  let socketOpts: PlayAiSocketOptions | undefined;
  const sent: string[] = [];
  const socket: PlayAiSocket = {
    sendAudio: (b64) => {
      sent.push(b64);
      return true;
    },
    sendAudioBytes: (buf, s, e) => {
      sent.push(buf.toString('latin1', s, e));
      return true;
    },
    bufferedAmount: 0,
    isOpen: true,
    close: () => {},
  };
  const provider = createPlayAiProvider({
    baseUrl: 'ws://agent.invalid',
    apiKey: 'k',
    connect: (o) => {
      socketOpts = o;
      return socket;
    },
  });
  const audio: Buffer[] = [];
  const seen: string[] = [];
  const events: AgentEvents = {
    ready: () => seen.push('ready'),
    audio: (buf, s, e) => void audio.push(Buffer.from(buf.toString('latin1', s, e), 'base64')),
    responseStart: () => seen.push('responseStart'),
    responseDone: () => seen.push('responseDone'),
    callerSpeechStart: () => seen.push('callerSpeechStart'),
    transcript: () => {},
    toolCall: () => {},
    hangup: (why) => seen.push(`hangup:${why}`),
    error: (err) => seen.push(`error:${err.kind}:${err.code}:${String(err.legDone)}`),
    badFrame: (kind, name) => seen.push(`bad:${kind}:${name ?? ''}`),
    closed: () => seen.push('closed'),
  };
  const leg = provider.connect({
    request: { id: 'agent-1', tools: [], call: { callSid: 'CA1', from: '+1', to: '+2', direction: 'inbound' }, ...request },
    events,
    log: pino({ level: 'silent' }),
    heartbeatMs: 0,
  });
  if (socketOpts === undefined) throw new Error('not connected');
  return { leg, opts: socketOpts, sent, audio, seen };
}

const tone = (ms: number, rate: number): Buffer => {
  const pcm = Buffer.alloc(ms * (rate / 1000) * 2);
  for (let i = 0; i < pcm.length / 2; i++) pcm.writeInt16LE(Math.round(8000 * Math.sin((2 * Math.PI * 440 * i) / rate)), i * 2);
  return pcm;
};

describe('PlayAI provider', () => {
  it('asks for μ-law 8 kHz both ways and passes audio through untouched', () => {
    const c = open();
    expect(c.opts.setup).toMatchObject({ inputEncoding: 'mulaw', inputSampleRate: 8000, outputFormat: 'mulaw', outputSampleRate: 8000, apiKey: 'k' });
    const b64 = Buffer.alloc(160, 0x42).toString('base64');
    c.leg.sendAudio(b64);
    expect(c.sent).toEqual([b64]);
    const buf = Buffer.from(b64, 'latin1');
    c.opts.handlers.onAudio(buf, 0, buf.length);
    expect(c.audio[0]?.equals(Buffer.alloc(160, 0x42))).toBe(true);
  });

  it('greets on a new conversation and on a takeover from another agent, not when resuming its own', () => {
    const call = { callSid: 'CA1', from: '+1', to: '+2', direction: 'inbound' };
    expect(open({ greeting: 'Hi!' }).opts.setup.customGreeting).toBe('Hi!');
    expect(open({ greeting: 'Hi!', resume: { history: [{ role: 'user', text: 'hello' }] } }).opts.setup.customGreeting).toBe('Hi!');
    const resumed = open({ greeting: 'Hi!', resume: { conversationId: 'conv-1', history: [] }, call });
    expect(resumed.opts.setup.customGreeting).toBeUndefined();
    expect(resumed.opts.setup.continueConversation).toBe('conv-1');
  });

  it('asks an agent set to 16-bit PCM 16 kHz for linear16 in and raw out, and converts both ways', () => {
    const format = { input: { encoding: 'linear16' as const, sampleRate: 16000 }, output: { encoding: 'linear16' as const, sampleRate: 16000 } };
    const c = open({ format });
    expect(c.opts.setup).toMatchObject({ inputEncoding: 'linear16', inputSampleRate: 16000, outputFormat: 'raw', outputSampleRate: 16000 });
    // 1 s of caller μ-law in 20 ms frames becomes about 1 s of 16 kHz PCM (32,000 bytes), less the filter's hold-back.
    for (let i = 0; i < 50; i++) c.leg.sendAudio(Buffer.alloc(160, 0x7e).toString('base64'));
    const pcmBytes = c.sent.reduce((n, b64) => n + Buffer.from(b64, 'base64').length, 0);
    expect(pcmBytes).toBeGreaterThan(31_000);
    expect(pcmBytes).toBeLessThanOrEqual(32_000);
    // 1 s of agent PCM at 16 kHz becomes about 8,000 bytes of μ-law for Twilio.
    const pcm = tone(1000, 16000);
    for (let at = 0; at < pcm.length; at += 640) {
      const b = Buffer.from(pcm.subarray(at, at + 640).toString('base64'), 'latin1');
      c.opts.handlers.onAudio(b, 0, b.length);
    }
    const mulaw = c.audio.reduce((n, b) => n + b.length, 0);
    expect(mulaw).toBeGreaterThan(7_800);
    expect(mulaw).toBeLessThanOrEqual(8_000);
  });

  it('classifies documented error codes, and a clean close after init as the agent ending the call', () => {
    expect([1001, 1003, 4401].map(classifyPlayAiError)).toEqual(['auth', 'auth', 'auth']);
    expect(classifyPlayAiError(4429)).toBe('capacity');
    expect([1002, 1005, 4400].map(classifyPlayAiError)).toEqual(['fatal', 'fatal', 'fatal']);
    expect([4500, 3001, undefined].map(classifyPlayAiError)).toEqual(['transient', 'transient', 'transient']);
    const c = open();
    c.opts.handlers.onMessage({ type: 'init', conversationId: 'conv', agentOwnerId: undefined });
    c.opts.handlers.onClose({ code: 1000, reason: '', byUs: false });
    expect(c.seen).toEqual(['ready', 'hangup:agent', 'closed']);
  });

  it('takes hangup endedBy "error" as a failure worth a reconnect, and ignores a hangup before init', () => {
    const c = open();
    c.opts.handlers.onMessage({ type: 'hangup', endedBy: 'agent' });
    expect(c.seen).toEqual(['bad:unexpected:hangup']);
    c.opts.handlers.onMessage({ type: 'init', conversationId: 'conv', agentOwnerId: undefined });
    c.opts.handlers.onMessage({ type: 'hangup', endedBy: 'error' });
    expect(c.seen.slice(1)).toEqual(['ready', 'error:transient:none:true']);
  });
});
