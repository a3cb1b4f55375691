/**
 * A scripted in-memory carrier for tests of the outbound service: it records
 * every request, answers `create` with a CallSid (or a scripted error), and
 * lets the test move calls through their states. It never calls the bridge
 * back; tests post the callbacks themselves (or use the simulated carrier for
 * whole calls).
 */
import { randomBytes } from 'node:crypto';
import { DialError, type CarrierCall, type DialRequest, type Dialer } from '../outbound/dialer.js';

export interface FakeCarrierCall extends CarrierCall {
  req: DialRequest;
}

export class FakeDialer implements Dialer {
  readonly name: string;
  readonly created: Array<{ at: number; req: DialRequest; sid: string }> = [];
  readonly requests: DialRequest[] = [];
  readonly hangups: string[] = [];
  readonly said: Array<{ sid: string; text: string }> = [];
  readonly calls = new Map<string, FakeCarrierCall>();
  /** Errors thrown by the next `create` calls, in order. */
  readonly failNext: DialError[] = [];
  /** An error for a given destination, every time. */
  errorFor: (to: string) => DialError | undefined = () => undefined;
  /** When true, `fetch` and `findRecent` fail as if the carrier were unreachable. */
  unreachable = false;
  /** Delay before `create` answers, ms. */
  createDelayMs = 0;

  constructor(name = 'fake') {
    this.name = name;
  }

  async create(req: DialRequest): Promise<CarrierCall> {
    this.requests.push(req);
    if (this.createDelayMs > 0) await new Promise((r) => setTimeout(r, this.createDelayMs));
    const err = this.failNext.shift() ?? this.errorFor(req.to);
    if (err !== undefined) throw err;
    const sid = `CA${randomBytes(16).toString('hex')}`;
    const call: FakeCarrierCall = { sid, status: 'queued', to: req.to, from: req.from, createdAt: Date.now(), req };
    this.calls.set(sid, call);
    this.created.push({ at: Date.now(), req, sid });
    return { sid, status: call.status, to: call.to, from: call.from, createdAt: call.createdAt };
  }

  async hangup(sid: string): Promise<void> {
    this.hangups.push(sid);
    const c = this.calls.get(sid);
    if (c !== undefined) c.status = c.status === 'in-progress' ? 'completed' : 'canceled';
  }

  async sayAndHangup(sid: string, text: string): Promise<void> {
    this.said.push({ sid, text });
    const c = this.calls.get(sid);
    if (c !== undefined) c.status = 'completed';
  }

  async fetch(sid: string): Promise<CarrierCall | undefined> {
    if (this.unreachable) throw new DialError('unknown', 'fake carrier unreachable');
    const c = this.calls.get(sid);
    return c === undefined ? undefined : { ...c };
  }

  async findRecent(to: string, from: string, since: number): Promise<CarrierCall[]> {
    if (this.unreachable) throw new DialError('unknown', 'fake carrier unreachable');
    return [...this.calls.values()]
      .filter((c) => c.to === to && c.from === from && (c.createdAt ?? 0) >= since)
      .sort((a, b) => (b.createdAt ?? 0) - (a.createdAt ?? 0))
      .map((c) => ({ ...c }));
  }

  /** The call created for our call id. */
  byCallId(callId: string): FakeCarrierCall | undefined {
    for (const c of this.calls.values()) if (c.req.callId === callId) return c;
    return undefined;
  }

  /** Adds a call the bridge never heard about (as if created just before a crash). */
  inject(req: DialRequest, status = 'ringing'): FakeCarrierCall {
    const sid = `CA${randomBytes(16).toString('hex')}`;
    const call: FakeCarrierCall = { sid, status, to: req.to, from: req.from, createdAt: Date.now(), req };
    this.calls.set(sid, call);
    this.created.push({ at: Date.now(), req, sid });
    return call;
  }
}
