/**
 * Fallback, capacity and health across agents, on a real CallSession,
 * SessionManager and AgentDirectory over scripted providers (no sockets):
 * each case is a situation an operator with two agent providers meets.
 */
import pino from 'pino';
import { describe, expect, it } from 'vitest';
import { AgentDirectory, type AgentDefinition } from '../src/agent/directory.js';
import type { AgentConnectOptions, AgentLeg, AgentProvider, AgentProviderName } from '../src/agent/port.js';
import { sessionSettings } from '../src/app.js';
import type { CarrierLeg } from '../src/carrier/twilio/stream.js';
import { loadConfig } from '../src/config.js';
import { Metrics } from '../src/metrics.js';
import { CallSession } from '../src/session/callSession.js';
import { SessionManager } from '../src/session/manager.js';
import { FakeCallControl } from '../src/testing/fakeCallControl.js';
import { RecordingJournal } from '../src/testing/recordingJournal.js';

class Leg implements AgentLeg {
  bufferedAmount = 0;
  isOpen = true;
  closedByUs = false;
  readonly audioIn: string[] = [];
  readonly interrupts: number[] = [];
  readonly toolResults: Array<{ id: string; isError: boolean }> = [];
  constructor(
    readonly provider: AgentProviderName,
    readonly opts: AgentConnectOptions,
  ) {}
  get ev() {
    return this.opts.events;
  }
  sendAudio(b64: string): boolean {
    if (!this.isOpen) return false;
    this.audioIn.push(b64);
    return true;
  }
  sendAudioBytes(buf: Buffer, start: number, end: number): boolean {
    return this.sendAudio(buf.toString('latin1', start, end));
  }
  interrupted(ms: number): void {
    this.interrupts.push(ms);
  }
  sendText(): void {}
  toolResult(id: string, _result: string, isError: boolean): void {
    this.toolResults.push({ id, isError });
  }
  close(): void {
    this.closedByUs = true;
    if (!this.isOpen) return;
    this.isOpen = false;
    this.opts.events.closed({ code: 1000, reason: '', byUs: true });
  }
  /** The connection fails (refused, reset) without an error frame. */
  drop(error = 'connect ECONNREFUSED'): void {
    this.isOpen = false;
    this.opts.events.closed({ code: 1006, reason: '', error, byUs: false });
  }
  refuse(kind: 'capacity' | 'auth' | 'fatal'): void {
    this.opts.events.error({ kind, code: kind, message: kind, legDone: true });
  }
  speak(bytes: number): void {
    const b = Buffer.from(Buffer.alloc(bytes, 0x55).toString('base64'), 'latin1');
    this.opts.events.audio(b, 0, b.length);
  }
}

/** Twilio's side, recording what the session sent. */
class Carrier implements CarrierLeg {
  readonly sent: string[] = [];
  isOpen = true;
  bufferedAmount = 0;
  sendMediaBytes(): void {
    this.sent.push('media');
  }
  sendMark(name: string): void {
    this.sent.push(`mark:${name}`);
  }
  sendClear(): void {
    this.sent.push('clear');
  }
  close(): void {
    this.isOpen = false;
  }
}

type Opened = { refused: string } | { session: CallSession; twilio: Carrier; callSid: string };

function build(definitions: Map<string, AgentDefinition> = new Map()) {
  const config = loadConfig({ PLAYAI_API_KEY: 'k', OPENAI_API_KEY: 'sk', DEFAULT_AGENT: 'playai:a' });
  const legs: Leg[] = [];
  const providers = new Map<AgentProviderName, AgentProvider>();
  for (const name of ['playai', 'openai'] as const) {
    providers.set(name, {
      name,
      resumesById: name === 'playai',
      acceptsText: name !== 'playai',
      supportsTools: name !== 'playai',
      connect: (o) => {
        const leg = new Leg(name, o);
        legs.push(leg);
        return leg;
      },
    });
  }
  const agents = new AgentDirectory({ providers, definitions });
  const manager = new SessionManager({ maxConcurrentCalls: 50, tokenTtlMs: 60_000, defaultAgentId: 'playai:a', routes: new Map(), agentCandidates: (ref) => agents.candidates(ref) });
  const metrics = new Metrics({ liveCalls: () => manager.liveCalls, reservedSlots: () => manager.reservedSlots, capacity: () => manager.capacity, draining: () => manager.draining });
  const journal = new RecordingJournal();
  const callControl = new FakeCallControl();
  let n = 0;
  const open = (): Opened => {
    const callSid = `CA${(++n).toString(16).padStart(32, '0')}`;
    const a = manager.admit({ callSid, from: '+15005550006', to: '+15550000001', direction: 'inbound' });
    if (!a.ok) return { refused: a.reason };
    const c = manager.claim(a.token, callSid);
    if (!c.ok) throw new Error('claim');
    const twilio = new Carrier();
    const session = new CallSession({
      reservation: c.reservation,
      streamSid: `MZ${callSid.slice(2)}`,
      carrier: twilio,
      agents,
      callControl,
      settings: sessionSettings(config),
      metrics,
      logger: pino({ level: 'silent' }),
      journal,
      onAgentCapacityExceeded: (_s, p) => manager.noteAgentCapacityExceeded(p),
      onAgentSwitched: (s, ref) => manager.moveSlot(s.slot, ref),
      onAgentSessionEnded: (_s, p) => manager.noteAgentSessionEnded(p),
      onClosed: (s) => manager.release(s),
      random: () => 0.5,
    });
    manager.register(session);
    session.start();
    return { session, twilio, callSid };
  };
  const last = (): Leg => {
    const l = legs.at(-1);
    if (l === undefined) throw new Error('no agent leg');
    return l;
  };
  return { legs, last, agents, manager, journal, callControl, open };
}

const withFallback = () => new Map<string, AgentDefinition>([['playai:a', { fallback: ['openai:gpt-realtime'] }]]);

describe('fallback agents', () => {
  it('an unreachable primary at call start hands the call to the fallback at once, with no retry delay and the early caller audio', () => {
    const h = build(withFallback());
    const call = h.open();
    if (!('session' in call)) throw new Error('refused');
    call.session.onMedia(Buffer.alloc(160, 1).toString('base64'));
    h.last().drop();
    // No timer has run: the fallback leg is already open.
    expect(h.legs.map((l) => l.provider)).toEqual(['playai', 'openai']);
    h.last().ev.ready({ conversationId: 'c2' });
    expect(h.last().audioIn).toHaveLength(1);
    expect(call.session.agentId).toBe('openai:gpt-realtime');
    expect(call.session.slot.agentId).toBe('openai:gpt-realtime');
    expect(h.journal.get(call.callSid).entries.some((e) => e.type === 'agent_switched')).toBe(true);
  });

  it("after the primary's provider refuses for capacity, new calls go to the fallback instead of being refused", () => {
    const h = build(withFallback());
    const first = h.open();
    if (!('session' in first)) throw new Error('refused');
    h.last().ev.ready({ conversationId: 'c1' });
    const second = h.open();
    if (!('session' in second)) throw new Error('refused');
    h.last().refuse('capacity');
    expect(h.last().provider).toBe('openai');
    h.last().ev.ready({ conversationId: 'c2' });
    expect(h.manager.capacityFor('playai')).toBe(1);
    // Call 3: PlayAI is at its learned limit, OpenAI has room: admitted, counted for OpenAI, started there.
    const third = h.open();
    expect('session' in third).toBe(true);
    if (!('session' in third)) return;
    expect(third.session.slot.agentId).toBe('openai:gpt-realtime');
    expect(h.last().provider).toBe('openai');
    expect(h.journal.get(third.callSid).entries.find((e) => e.type === 'agent_switched')).toMatchObject({ from: 'playai:a', to: 'openai:gpt-realtime', why: 'capacity' });
  });

  it('with no fallback, a capacity refusal says the busy prompt and caps that provider only', () => {
    const h = build();
    const call = h.open();
    if (!('session' in call)) throw new Error('refused');
    h.last().refuse('capacity');
    expect(h.callControl.spoken.map((s) => s.text)).toEqual([expect.stringContaining('busy')]);
    expect(h.manager.capacityFor('playai')).toBe(0);
    expect(h.manager.capacityFor('openai')).toBe(50);
  });

  it('a fallback provider that refuses for capacity keeps its learned limit when that call ends', () => {
    const h = build(withFallback());
    const call = h.open();
    if (!('session' in call)) throw new Error('refused');
    h.last().ev.ready({ conversationId: 'c1' });
    // PlayAI drops for good (the budget is spent at once with no retries left): the fallback takes over and refuses.
    for (let i = 0; i < 3; i++) h.agents.reportConnectFailure('playai:a', 'test');
    h.last().drop('reset');
    expect(h.last().provider).toBe('openai');
    h.last().refuse('capacity');
    expect(call.session.state).toBe('ending');
    call.session.close('caller_hangup');
    expect(h.manager.capacityFor('openai')).toBe(0);
  });

  it('a PlayAI session that ends when a fallback takes over lifts PlayAI’s learned limit', () => {
    const h = build(withFallback());
    const call = h.open();
    if (!('session' in call)) throw new Error('refused');
    h.last().ev.ready({ conversationId: 'c1' });
    h.manager.noteAgentCapacityExceeded('playai');
    expect(h.manager.capacityFor('playai')).toBe(1);
    for (let i = 0; i < 3; i++) h.agents.reportConnectFailure('playai:a', 'test');
    h.last().drop('reset');
    expect(h.manager.capacityFor('playai')).toBe(50);
  });

  it('a refusal of this call’s own request (fatal) does not mark the agent down; unreachability does', () => {
    const h = build();
    for (let i = 0; i < 3; i++) {
      const c = h.open();
      if (!('session' in c)) throw new Error('refused');
      h.last().refuse('fatal');
    }
    expect(h.agents.isDown('playai:a')).toBe(false);
    for (let i = 0; i < 3; i++) {
      const c = h.open();
      if (!('session' in c)) throw new Error('refused');
      h.last().refuse('auth');
    }
    expect(h.agents.isDown('playai:a')).toBe(true);
    expect(h.open()).toEqual({ refused: 'agent_down' });
  });
});

describe('the agent is told what the caller heard', () => {
  it('a barge-in with no mark echoed for a second of audio reports at most one mark interval heard, not what was sent', () => {
    const h = build();
    const call = h.open();
    if (!('session' in call)) throw new Error('refused');
    const leg = h.last();
    leg.ev.ready({ conversationId: 'c1' });
    // An earlier echo exists (marks work on this call), then 1 s is sent and Twilio confirms none of it.
    leg.ev.responseStart();
    leg.speak(160);
    const firstMark = call.twilio.sent.find((s) => s.startsWith('mark:'));
    call.session.onMark(firstMark?.slice(5) ?? 'none');
    leg.ev.responseStart();
    leg.speak(8000);
    leg.ev.callerSpeechStart();
    expect(leg.interrupts).toHaveLength(1);
    expect(leg.interrupts[0]).toBeLessThanOrEqual(160);
  });
});

describe('end_call', () => {
  it('the call ends when the leg drops after the agent asked to end it, instead of reconnecting', () => {
    const h = build();
    const call = h.open();
    if (!('session' in call)) throw new Error('refused');
    // OpenAI-like agent (tools) as the default.
    const leg = h.last();
    leg.ev.ready({ conversationId: 'c1' });
    leg.ev.responseStart();
    leg.speak(800);
    leg.ev.toolCall({ id: 't1', name: 'end_call', args: {} });
    expect(leg.toolResults).toEqual([{ id: 't1', isError: false }]);
    leg.drop('reset');
    expect(h.legs).toHaveLength(1);
    expect(call.session.state).toBe('draining');
  });

  it('a caller speaking over the goodbye keeps the call going', () => {
    const h = build();
    const call = h.open();
    if (!('session' in call)) throw new Error('refused');
    const leg = h.last();
    leg.ev.ready({ conversationId: 'c1' });
    leg.ev.responseStart();
    leg.speak(800);
    leg.ev.toolCall({ id: 't1', name: 'end_call', args: {} });
    leg.ev.callerSpeechStart();
    leg.ev.responseDone();
    expect(call.session.state).toBe('live');
  });

  it('an unknown tool gets an error result and the call goes on', () => {
    const h = build();
    const call = h.open();
    if (!('session' in call)) throw new Error('refused');
    const leg = h.last();
    leg.ev.ready({ conversationId: 'c1' });
    leg.ev.toolCall({ id: 't9', name: 'book_table', args: {} });
    expect(leg.toolResults).toEqual([{ id: 't9', isError: true }]);
    expect(call.session.state).toBe('live');
  });
});

describe('resume history', () => {
  it('one huge transcript turn is cut to the history bound before a new agent session gets it', () => {
    const h = build();
    const call = h.open();
    if (!('session' in call)) throw new Error('refused');
    h.last().ev.ready({ conversationId: 'c1' });
    h.last().ev.transcript('agent', 'x'.repeat(1_000_000));
    h.last().drop('reset');
    const retry = h.legs.length;
    // The retry timer opens the next leg; run it.
    return new Promise<void>((resolve) =>
      setTimeout(() => {
        expect(h.legs.length).toBe(retry + 1);
        const resume = h.last().opts.request.resume;
        const chars = (resume?.history ?? []).reduce((n, t) => n + t.text.length, 0);
        expect(chars).toBeLessThanOrEqual(12_001);
        resolve();
      }, 600),
    );
  });
});
