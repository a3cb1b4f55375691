/**
 * Several real bridge processes sharing one redis-server (REDIS_URL) behave as one bridge for
 * inbound calls: one capacity, streams landing on another process than their webhook, hang-ups
 * and final statuses reaching the owner, leases of a killed process coming back, drain per process.
 * Skipped without redis-server unless PLAYLINE_REQUIRE_REDIS=1.
 */
import { describe, expect, it } from 'vitest';
import { Redis } from 'ioredis';
import { FakeTwilioStream, postStatusCallback, postVoiceWebhook, type VoiceWebhookResult } from '../src/sim/twilioSim.js';
import type { DialOutcomeFn } from '../src/sim/simCarrier.js';
import { FakeAgentServer } from '../src/testing/fakeAgent.js';
import { FakeTwilioRest } from '../src/testing/fakeTwilioRest.js';
import { BrowserStream } from './browserStream.js';
import { fleetTestsEnabled, useTestRedis } from './fleetRedis.js';
import { freePort, get, killGroup, sleep, start, useProcessHarness, waitExit, waitFor, waitHealthy, type Child } from './processHarness.js';

const enabled = fleetTestsEnabled();
const LEASE_MS = 1500;

describe.skipIf(!enabled)('bridges sharing one Redis (REDIS_URL)', () => {
  useProcessHarness();
  const redis = useTestRedis();
  let n = 0;

  /** Two (or more) bridges on one fresh key prefix. */
  async function fleet(count: number, env: Record<string, string> = {}): Promise<{ procs: Child[]; prefix: string }> {
    const prefix = `t${++n}:`;
    const procs = await Promise.all(
      Array.from({ length: count }, () =>
        start({ env: { REDIS_URL: redis().url, FLEET_PREFIX: prefix, FLEET_LEASE_MS: String(LEASE_MS), MAX_CONCURRENT_CALLS: '5', LOG_LEVEL: 'info', ...env } }),
      ),
    );
    await Promise.all(procs.map((p) => waitHealthy(p)));
    return { procs, prefix };
  }

  /** Fleet slots in Redis now (expired leases trimmed). */
  async function slotsInUse(prefix: string): Promise<number> {
    const c = new Redis(redis().port, '127.0.0.1');
    try {
      await c.zremrangebyscore(`${prefix}slots:all`, '-inf', Date.now());
      return await c.zcard(`${prefix}slots:all`);
    } finally {
      c.disconnect();
    }
  }

  /** A live call: webhook to `hook`, stream to `streamTo`; silence sent every 20 ms. */
  interface Call {
    voice: VoiceWebhookResult;
    callSid: string;
    stream: FakeTwilioStream;
    stop(): void;
  }
  async function call(hook: Child, streamTo: Child = hook): Promise<Call> {
    const voice = await postVoiceWebhook({ bridgeUrl: hook.url });
    const streamUrl = voice.twiml?.streamUrl;
    if (streamUrl === undefined) throw new Error(`the call was not admitted: ${voice.status} ${voice.body}`);
    const callSid = voice.params.CallSid ?? '';
    const stream = await FakeTwilioStream.connect({ bridgeUrl: streamTo.url, streamUrl });
    stream.sendConnected();
    stream.sendStart({ callSid, customParameters: voice.twiml?.parameters ?? {} });
    const timer = setInterval(() => {
      if (!stream.closed) stream.sendMedia();
    }, 20);
    return { voice, callSid, stream, stop: () => clearInterval(timer) };
  }
  /** The busy answer: TwiML that speaks (a <Say>, or a <Play> of the prompt in the agent's voice) and opens no stream. */
  const busy = (v: VoiceWebhookResult) => v.status === 200 && v.twiml !== undefined && v.twiml.streamUrl === undefined && /<(Say|Play)\b/.test(v.body);
  const agentAudio = (c: Call) => waitFor('agent audio on the call', () => c.stream.mediaReceived >= 10, 8000);

  it('a fleet cap of MAX_CONCURRENT_CALLS=5 holds exactly across processes: the 6th webhook on either process hears the busy answer', async () => {
    const { procs, prefix } = await fleet(2);
    const [a, b] = procs as [Child, Child];
    const calls: Call[] = [];
    try {
      for (let i = 0; i < 5; i++) calls.push(await call(i % 2 === 0 ? a : b));
      await Promise.all(calls.map(agentAudio));
      expect(await slotsInUse(prefix)).toBe(5);
      const sixthA = await postVoiceWebhook({ bridgeUrl: a.url });
      const sixthB = await postVoiceWebhook({ bridgeUrl: b.url });
      expect(busy(sixthA)).toBe(true);
      expect(busy(sixthB)).toBe(true);
      // One call ends: its slot comes back and the next webhook, on either process, is admitted.
      calls[0]!.stream.sendStop();
      calls[0]!.stream.close();
      await waitFor('the slot to be released', async () => (await slotsInUse(prefix)) === 4, 5000);
      const next = await postVoiceWebhook({ bridgeUrl: b.url });
      expect(next.twiml?.streamUrl).toBeDefined();
    } finally {
      for (const c of calls) c.stop();
    }
  }, 40_000);

  it('a stream that lands on another process than its webhook works (agent audio flows), and a final status and an API hang-up sent to the non-owner reach the owner', async () => {
    const { procs, prefix } = await fleet(2);
    const [a, b] = procs as [Child, Child];
    // Webhook on A, stream on B: B owns the call.
    const first = await call(a, b);
    const second = await call(a, b);
    try {
      await agentAudio(first);
      await agentAudio(second);
      expect(await slotsInUse(prefix)).toBe(2);
      expect(b.logs().some((l) => String(l.msg).includes('slot adopted'))).toBe(true);

      // Twilio's final status lands on A (the webhook's process): B ends the call.
      const status = await postStatusCallback({ bridgeUrl: a.url, params: { CallSid: first.callSid, CallStatus: 'completed', SequenceNumber: '3', CallDuration: '2' } });
      expect(status.status).toBe(204);
      await first.stream.waitForClose(5000);

      // An API hang-up sent to A (where the call's record is): B ends the call.
      const list = (await get(`${a.url}/v1/calls?limit=10`))?.body as { data?: Array<{ id: string; callSid?: string }> } | undefined;
      const id = list?.data?.find((r) => r.callSid === second.callSid)?.id;
      expect(id).toBeDefined();
      const res = await fetch(`${a.url}/v1/calls/${id}/hangup`, { method: 'POST' });
      // The local carrier does not know simulated inbound calls (502), but the call ends on its owner first.
      expect([200, 502]).toContain(res.status);
      await second.stream.waitForClose(5000);
      await waitFor('both slots released', async () => (await slotsInUse(prefix)) === 0, 5000);
    } finally {
      first.stop();
      second.stop();
    }
  }, 40_000);

  it('an API transfer sent to the non-owner is run by the owner’s session and its answer (here its refusal) comes back; an AMD result landing on the non-owner is on the call’s record', async () => {
    const { procs, prefix } = await fleet(2);
    const [a, b] = procs as [Child, Child];
    // Webhook on A, stream on B: B owns the call.
    const c = await call(a, b);
    try {
      await agentAudio(c);
      const list = (await get(`${a.url}/v1/calls?limit=10`))?.body as { data?: Array<{ id: string; callSid?: string }> } | undefined;
      const id = list?.data?.find((r) => r.callSid === c.callSid)?.id;
      expect(id).toBeDefined();

      // Each process has its own SQLite file here: the call's record is on A, its session on B.
      // These processes have no carrier that can redirect calls: B's session refuses the transfer,
      // and A answers B's refusal (alone, A would say the call is not live on this server).
      const transfer = async (p: Child) => {
        const res = await fetch(`${p.url}/v1/calls/${id}/transfer`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ target: 'nobody', mode: 'warm', reason: 'r'.repeat(250) }) });
        const body = (await res.json()) as { error?: { code?: string; message?: string } };
        return { status: res.status, code: body.error?.code, message: body.error?.message };
      };
      expect(await transfer(a)).toEqual({
        status: 409,
        code: 'transfer_unavailable',
        message: 'this call cannot be transferred (a browser call, or no carrier that can redirect calls: set TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN)',
      });

      // Twilio's AMD result lands on A, not the owner: the call's record has it (with DATABASE_URL
      // every process reads that record; the voicemail actions are carrier REST calls, made from anywhere).
      const amd = await postStatusCallback({ bridgeUrl: a.url, path: '/twilio/amd', params: { CallSid: c.callSid, AnsweredBy: 'human', MachineDetectionDuration: '1200' } });
      expect(amd.status).toBe(204);
      const detail = (await get(`${a.url}/v1/calls/${id}`))?.body as { answeredBy?: string | null; events?: Array<{ type: string; data?: unknown }> } | undefined;
      expect(detail?.answeredBy).toBe('human');
      expect(detail?.events?.find((e) => e.type === 'amd')?.data).toEqual({ answeredBy: 'human', durationMs: 1200 });

      // Once the call ended, no process owns it: A says it is not live, as for a local call.
      c.stream.sendStop();
      c.stream.close();
      await waitFor('B to give up the call', async () => {
        const r = new Redis(redis().port, '127.0.0.1');
        try {
          return (await r.exists(`${prefix}owner:${c.callSid}`)) === 0;
        } finally {
          r.disconnect();
        }
      }, 5000);
      expect(await transfer(a)).toMatchObject({ status: 409, code: 'call_not_live' });
    } finally {
      c.stop();
    }
  }, 40_000);

  /**
   * Two processes on one fake Twilio (REST and callbacks): an inbound call runs on A, then every
   * Twilio request goes to B, and A is asked to transfer it to FRONTDESK (accepted: 202).
   */
  async function transferOnA(dialOutcome?: DialOutcomeFn) {
    const TOKEN = 'fleet-auth-token-0123456789abcdef';
    const API = 'fleet-api-token-0123456789abcdef';
    const PUBLIC = 'https://voice.example.test';
    const rest = await FakeTwilioRest.start({
      bridgeUrl: 'http://127.0.0.1:1',
      publicUrl: PUBLIC,
      authToken: TOKEN,
      timing: { initiatedMs: 0, ringingMs: 10, noAnswerMaxMs: 300, sayMsPerChar: 1, sayMinMs: 10, sayMaxMs: 60, msPerDialSecond: 10 },
      ringMs: [10, 20],
      talkMs: 300,
      ...(dialOutcome !== undefined ? { dialOutcome } : {}),
    });
    const { procs, prefix } = await fleet(2, { TWILIO_ACCOUNT_SID: rest.accountSid, TWILIO_AUTH_TOKEN: TOKEN, TWILIO_API_URL: rest.url, PUBLIC_URL: PUBLIC, API_TOKEN: API });
    const [a, b] = procs as [Child, Child];
    const auth = { authorization: `Bearer ${API}` };
    const getJson = async (url: string): Promise<unknown> => (await fetch(url, { headers: auth })).json();
    // The call's webhook and stream reach A: A runs the call, and will run its transfer.
    rest.setBridgeUrl(a.url);
    const sid = rest.startInbound({ from: '+14155550123', to: '+14155550999', talkMs: 60_000 });
    let id: string | undefined;
    await waitFor('the call on A’s records', async () => {
      const list = (await getJson(`${a.url}/v1/calls?limit=10`)) as { data?: Array<{ id: string; callSid?: string }> } | undefined;
      id = list?.data?.find((r) => r.callSid === sid)?.id;
      return id !== undefined;
    }, 8000);
    // From now on every Twilio request lands on B.
    rest.setBridgeUrl(b.url);
    let status = 0;
    await waitFor('the transfer accepted by A (once the agent talks)', async () => {
      const res = await fetch(`${a.url}/v1/calls/${id}/transfer`, { method: 'POST', headers: { ...auth, 'content-type': 'application/json' }, body: JSON.stringify({ to: FRONTDESK }) });
      status = res.status;
      await res.body?.cancel();
      return status !== 409;
    }, 8000);
    expect(status).toBe(202);
    /** The transfer steps on A's record of the call. */
    const steps = async () => (((await getJson(`${a.url}/v1/calls/${id}`)) as { events?: Array<{ type: string }> } | undefined)?.events ?? []).map((e) => e.type).filter((t) => t.startsWith('transfer_'));
    return { rest, a, b, sid, prefix, steps };
  }
  const FRONTDESK = '+14155550100';

  it('a cold transfer run by one process completes though Twilio’s callbacks about it land on another: the person’s answer and the dial’s end reach the process running it', async () => {
    const { rest, b, sid, steps } = await transferOnA();
    try {
      const info = await rest.whenEnded(sid);
      const dial = info?.dials[0];
      expect(dial).toMatchObject({ to: FRONTDESK, dialCallStatus: 'completed', bridged: true });
      expect(dial?.actionRequest?.used).toBe(true);
      // A (running the transfer) heard the person answer and the dial end, though B received them.
      await waitFor('the transfer completed on A', async () => (await steps()).includes('transfer_completed'), 5000);
      expect(await steps()).toEqual(['transfer_requested', 'transfer_dialing', 'transfer_answered', 'transfer_completed']);
      expect(b.logs().some((l) => l.msg === 'transfer dial ended')).toBe(true);
    } finally {
      await rest.close();
    }
  }, 40_000);

  it('a caller whose transfer nobody answered comes back to the agent on another process: the dial’s end lands there, and so does the new stream, which resumes the conversation', async () => {
    const { rest, b, sid, prefix, steps } = await transferOnA((to) => (to === FRONTDESK ? 'no-answer' : undefined));
    try {
      await waitFor('the caller returned to the agent', async () => (await steps()).includes('transfer_returned'), 8000);
      // B took the stream back to the agent: it adopted the held slot and its agent is ready again.
      await waitFor('the returned stream served on B', () => b.logs().some((l) => l.msg === 'agent ready'), 8000);
      expect(b.logs().some((l) => String(l.msg).includes('slot adopted'))).toBe(true);
      expect(b.logs().filter((l) => String(l.msg).startsWith('media stream refused'))).toEqual([]);
      expect(await slotsInUse(prefix)).toBe(1);
      rest.simulator.hangup(sid);
      await waitFor('the slot released when the caller hangs up', async () => (await slotsInUse(prefix)) === 0, 8000);
    } finally {
      await rest.close();
    }
  }, 40_000);

  it('a browser call created on one process streams on another: agent audio flows, it counts in the fleet cap, and its slot comes back when it ends', async () => {
    const { procs, prefix } = await fleet(2);
    const [a, b] = procs as [Child, Child];
    const created = await fetch(`${a.url}/v1/web-calls`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    expect(created.status).toBe(201);
    const ticket = (await created.json()) as { callSid: string; token: string };
    expect(await slotsInUse(prefix)).toBe(1);
    const s = await BrowserStream.connect(b.url);
    try {
      s.start(ticket.callSid, ticket.token);
      s.unmute();
      await s.until(() => s.mediaFrames >= 10, 8000, 'agent audio on the browser call');
      expect(b.logs().some((l) => String(l.msg).includes('slot adopted'))).toBe(true);
      expect(await slotsInUse(prefix)).toBe(1);
    } finally {
      s.stop();
      s.close();
    }
    await waitFor('the browser call slot released', async () => (await slotsInUse(prefix)) === 0, 5000);
  }, 40_000);

  it('kill -9 of a process with live calls: its slots come back within the lease, and the other process keeps its calls', async () => {
    const { procs, prefix } = await fleet(2);
    const [a, b] = procs as [Child, Child];
    const onA = [await call(a), await call(a)];
    const onB = [await call(b), await call(b)];
    try {
      await Promise.all([...onA, ...onB].map(agentAudio));
      expect(await slotsInUse(prefix)).toBe(4);
      killGroup(a.pid);
      await a.exited;
      const killedAt = Date.now();
      await waitFor('the killed process’ slots to expire', async () => (await slotsInUse(prefix)) === 2, LEASE_MS * 3);
      expect(Date.now() - killedAt).toBeLessThanOrEqual(LEASE_MS + 1000);
      // B's calls go on: their leases are renewed past several lease times.
      await sleep(LEASE_MS * 2);
      expect(await slotsInUse(prefix)).toBe(2);
      for (const c of onB) expect(c.stream.closed).toBe(false);
      // The room is usable again: 3 more calls fit on B (2 + 3 = 5), the next one is busy.
      const more = [await call(b), await call(b), await call(b)];
      onB.push(...more);
      expect(busy(await postVoiceWebhook({ bridgeUrl: b.url }))).toBe(true);
    } finally {
      for (const c of [...onA, ...onB]) c.stop();
    }
  }, 40_000);

  it('a call whose slot lease Redis lost (flushed, restarted without persistence) is ended by its owner within a lease', async () => {
    const { procs, prefix } = await fleet(1);
    const [a] = procs as [Child];
    const live = await call(a);
    try {
      await agentAudio(live);
      const c = new Redis(redis().port, '127.0.0.1');
      try {
        const ids = await c.zrange(`${prefix}slots:all`, 0, -1);
        expect(ids).toHaveLength(1);
        await c.zrem(`${prefix}slots:all`, ...ids);
      } finally {
        c.disconnect();
      }
      await live.stream.waitForClose(LEASE_MS * 2);
      await waitFor('the owner to say why it ended the call', () => a.logs().some((l) => String(l.msg).includes('lost its slot lease')), 2000).catch((err: unknown) => {
        throw new Error(`${String(err)}\n${a.tail()}`);
      });
    } finally {
      live.stop();
    }
  }, 30_000);

  /** An open `/v1/events` stream: its events as they come. */
  async function followEvents(c: Child): Promise<{ events: Array<{ id: string; type: string; data: string }>; close(): void }> {
    const ac = new AbortController();
    const res = await fetch(`${c.url}/v1/events`, { headers: { accept: 'text/event-stream' }, signal: ac.signal });
    expect(res.status).toBe(200);
    const events: Array<{ id: string; type: string; data: string }> = [];
    const body = res.body;
    if (body === null) throw new Error('no body');
    void (async () => {
      const decoder = new TextDecoder();
      let text = '';
      try {
        for await (const chunk of body) {
          text += decoder.decode(chunk, { stream: true });
          for (let end = text.indexOf('\n\n'); end >= 0; end = text.indexOf('\n\n')) {
            const block = text.slice(0, end);
            text = text.slice(end + 2);
            const field = (name: string) => block.split('\n').find((l) => l.startsWith(`${name}: `))?.slice(name.length + 2);
            const data = field('data');
            if (data !== undefined) events.push({ id: field('id') ?? '', type: field('event') ?? '', data });
          }
        }
      } catch {
        // aborted
      }
    })();
    return { events, close: () => ac.abort() };
  }

  it('a call on process A appears in process B’s /v1/events, once, with the same ids as on A, and in B’s /v1/live; /readyz on each shows the fleet capacity and its own share', async () => {
    const { procs } = await fleet(2);
    const [a, b] = procs as [Child, Child];
    const onA = await followEvents(a);
    const onB = await followEvents(b);
    const live = await call(a);
    try {
      await agentAudio(live);
      await waitFor('call.started of A’s call on B', () => onB.events.some((e) => e.type === 'call.started' && e.data.includes(live.callSid)), 5000);
      const started = onB.events.find((e) => e.type === 'call.started' && e.data.includes(live.callSid));
      const callId = /"callId":"([^"]+)"/.exec(started?.data ?? '')?.[1];
      expect(callId).toBeDefined();
      const about = (e: { data: string }) => e.data.includes(`"callId":"${callId}"`);
      await waitFor('the agent ready on B', () => onB.events.some((e) => about(e) && e.data.includes('"agent_ready"')), 5000);
      const readyA = await get(`${a.url}/readyz`);
      const readyB = await get(`${b.url}/readyz`);
      expect(readyA?.status).toBe(200);
      expect(readyA?.body).toMatchObject({ fleet: { redis: 'ok', slotsInUse: 1, slotLimit: 5, thisProcess: { slotsInUse: 1 } } });
      expect(readyB?.body).toMatchObject({ fleet: { redis: 'ok', slotsInUse: 1, slotLimit: 5, thisProcess: { slotsInUse: 0 } } });
      const metricsB = await fetch(`${b.url}/metrics`).then((r) => r.text());
      expect(metricsB).toMatch(/^playline_fleet_slots_in_use 1$/m);
      // The console's live list on B shows the call on A.
      const liveOnB = (await get(`${b.url}/v1/live`))?.body;
      expect(liveOnB).toMatchObject({ data: [{ callSid: live.callSid }] });
      live.stream.sendStop();
      live.stream.close();
      await waitFor('call.updated session_ended on B', () => onB.events.some((e) => about(e) && e.data.includes('"session_ended"')), 5000);
      await sleep(300);
      // Each process shows the call's events once, in one order, with the stream's ids.
      const ofCall = (es: Array<{ id: string; data: string }>) => es.filter(about).map((e) => e.id);
      expect(ofCall(onB.events).length).toBeGreaterThanOrEqual(3);
      expect(new Set(ofCall(onB.events)).size).toBe(ofCall(onB.events).length);
      expect(ofCall(onA.events)).toEqual(ofCall(onB.events));
    } finally {
      live.stop();
      onA.close();
      onB.close();
    }
  }, 40_000);

  it('a PlayAI 4429 on process A caps the agent on process B too (its webhook hears the busy answer) until one of the open sessions ends', async () => {
    const agent = await FakeAgentServer.start();
    const calls: Call[] = [];
    try {
      const { procs } = await fleet(2, { PLAYAI_API_KEY: 'test-key', PLAYAI_AGENT_ID: 'agent1', PLAYAI_WS_URL: agent.url, TTS: 'off' });
      const [a, b] = procs as [Child, Child];
      const first = await call(a);
      calls.push(first);
      const firstLeg = await agent.nextConnection(5000);
      await firstLeg.waitForSetup();
      await waitFor('the first call’s agent session counted open', async () => {
        const body = (await get(`${b.url}/readyz`))?.body;
        return typeof body === 'object' && body !== null && JSON.stringify(body).includes('"playai":{"slotsInUse":1');
      }, 5000);
      await sleep(300);
      // The account is full: PlayAI refuses the next session with 4429.
      agent.options = { ...agent.options, rejectWith: { code: 4429, message: 'max concurrent connections exceeded' } };
      const second = await call(a);
      calls.push(second);
      await waitFor('A to share the learned limit', () => a.logs().some((l) => String(l.msg).includes('capping its calls on every process')), 8000).catch((err: unknown) => {
        throw new Error(`${String(err)}\n${a.tail()}`);
      });
      agent.options = { ...agent.options, rejectWith: undefined };
      expect(busy(await postVoiceWebhook({ bridgeUrl: b.url }))).toBe(true);
      // B never heard a 4429 itself: the refusal is the fleet's learned limit.
      expect(await fetch(`${b.url}/metrics`).then((r) => r.text())).toMatch(/^playline_calls_refused_total\{reason="agent_capacity"\} 1$/m);
      expect((await get(`${b.url}/readyz`))?.body).toMatchObject({ fleet: { providers: { playai: { limit: 1, learnedLimit: 1 } } } });
      // The first call ends: its session frees the account, on every process.
      first.stream.sendStop();
      first.stream.close();
      await waitFor('B to admit again', async () => (await postVoiceWebhook({ bridgeUrl: b.url })).twiml?.streamUrl !== undefined, 8000);
    } finally {
      for (const c of calls) c.stop();
      await agent.close();
    }
  }, 40_000);

  it('a process whose REDIS_URL does not answer stops at boot with a message naming REDIS_URL', async () => {
    const c = await start({ env: { REDIS_URL: `redis://127.0.0.1:${await freePort()}` } });
    const exit = await waitExit(c, 15_000);
    expect(exit.code).toBe(1);
    expect(c.stderr).toMatch(/REDIS_URL: Redis did not answer/);
  }, 20_000);

  it('a draining process says 503 on /readyz and refuses calls while the other keeps admitting them', async () => {
    const { procs } = await fleet(2);
    const [a, b] = procs as [Child, Child];
    const live = await call(a);
    try {
      await agentAudio(live);
      process.kill(a.pid, 'SIGTERM');
      await waitFor('A to be unready', async () => (await get(`${a.url}/readyz`))?.status === 503, 5000);
      expect((await get(`${b.url}/readyz`))?.status).toBe(200);
      expect(busy(await postVoiceWebhook({ bridgeUrl: a.url }))).toBe(true);
      const onB = await call(b);
      onB.stop();
      expect(onB.voice.twiml?.streamUrl).toBeDefined();
      await agentAudio(onB);
      // The draining process' call is still live.
      expect(live.stream.closed).toBe(false);
    } finally {
      live.stop();
    }
  }, 40_000);
});
