/**
 * `npm run chaos`: many simulated calls while the agent service misbehaves.
 *
 * Runs, in one process and on 127.0.0.1 only: a signed bridge, the fake
 * PlayAI agent in echo mode, and N concurrent Twilio-simulated calls. While
 * the calls run, agent sockets are dropped at random moments (terminated,
 * closed, or sent a retryable error). Every caller frame is unique, so at the
 * end the tool checks, per call, that the agent received every frame the
 * caller sent, in order, across all of the call's agent connections.
 * Bounded in time and count; exits non-zero if a call failed or a frame was lost.
 */
import { Writable } from 'node:stream';
import { parseArgs } from 'node:util';
import pino from 'pino';
import { createBridge } from '../app.js';
import { openDb } from '../store/db.js';
import { loadConfig } from '../config.js';
import { FakeAgentServer, type FakeAgentConnection } from '../testing/fakeAgent.js';
import { FakeCallControl } from '../testing/fakeCallControl.js';
import { placeCalls, type SimCallResult } from '../sim/twilioSim.js';
import { prng } from '../util/prng.js';

const HELP = `Usage: npm run chaos -- [options]

Places many simulated calls against an in-process bridge whose agent service
drops sockets at random moments, then checks that every call survived and that
no caller frame was lost or reordered.

Options:
  --calls N          concurrent calls (default 50)
  --duration S       seconds of caller audio per call (default 15)
  --drop-every MS    mean interval between injected agent faults (default 250)
  --faults LIST      which faults to inject, from terminate,close,error (default: all three)
  --seed N           seed for the fault schedule (default: random)
  --json             print the result as JSON
  -h, --help         this text
`;

const FRAME = 160;
const TOKEN = 'chaos-auth-token';
const PUBLIC_URL = 'https://chaos.playline.invalid';

/** Caller audio whose every 20 ms frame is unique: bytes 0-1 call index, 2-3 frame index. */
function uniqueAudio(call: number, frames: number): Uint8Array {
  const buf = Buffer.alloc(frames * FRAME, 0x7e);
  for (let i = 0; i < frames; i++) {
    buf.writeUInt16BE(call, i * FRAME);
    buf.writeUInt16BE(i, i * FRAME + 2);
  }
  return buf;
}

function frameId(b64: string): { call: number; seq: number } | undefined {
  const b = Buffer.from(b64, 'base64');
  if (b.length !== FRAME) return undefined;
  return { call: b.readUInt16BE(0), seq: b.readUInt16BE(2) };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      calls: { type: 'string', default: '50' },
      duration: { type: 'string', default: '15' },
      'drop-every': { type: 'string', default: '250' },
      seed: { type: 'string' },
      faults: { type: 'string', default: 'terminate,close,error' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  const calls = Math.max(1, Math.min(1000, Number(values.calls)));
  const durationS = Math.max(1, Math.min(300, Number(values.duration)));
  const dropEvery = Math.max(20, Number(values['drop-every']));
  const seed = values.seed !== undefined ? Number(values.seed) : Math.floor(Math.random() * 2 ** 31);
  if (![calls, durationS, dropEvery, seed].every(Number.isFinite)) {
    process.stderr.write(HELP);
    process.exit(2);
  }
  const rand = prng(seed);
  const kinds = (values.faults ?? '').split(',').map((k) => k.trim()).filter(Boolean);
  if (kinds.length === 0 || kinds.some((k) => k !== 'terminate' && k !== 'close' && k !== 'error')) {
    process.stderr.write(`chaos: --faults takes terminate, close and/or error\n\n${HELP}`);
    process.exit(2);
  }

  const agent = await FakeAgentServer.start({ autoInit: true, echo: true });
  const config = loadConfig({
    PORT: '0',
    HOST: '127.0.0.1',
    PUBLIC_URL,
    TWILIO_AUTH_TOKEN: TOKEN,
    PLAYAI_API_KEY: 'chaos',
    PLAYAI_AGENT_ID: 'chaos-agent',
    PLAYAI_WS_URL: agent.url,
    MAX_CONCURRENT_CALLS: String(calls),
    // Everything shares one event loop here; this run is about agent faults, not admission control.
    MAX_EVENT_LOOP_DELAY_MS: '0',
    LOG_LEVEL: 'warn',
  });
  const silent = pino({ level: 'silent' }, new Writable({ write: (_c, _e, cb) => cb() }));
  const callControl = new FakeCallControl();
  const bridge = await createBridge(config, silent, { callControl, db: openDb(':memory:') });
  const url = await bridge.app.listen({ port: 0, host: '127.0.0.1' });

  // Fault injector: at random moments, hit a random open agent connection.
  const faults = { terminate: 0, close: 0, error4500: 0 };
  let injector: NodeJS.Timeout | undefined;
  const scheduleFault = () => {
    injector = setTimeout(() => {
      const open = agent.connections.filter((c) => c.isOpen && c.conversationId !== undefined);
      const victim = open[Math.floor(rand() * open.length)];
      if (victim !== undefined) {
        const kind = kinds[Math.floor(rand() * kinds.length)];
        if (kind === 'terminate') {
          victim.terminate();
          faults.terminate++;
        } else if (kind === 'close') {
          victim.close(1011, 'chaos');
          faults.close++;
        } else {
          victim.error(4500, 'chaos: internal error', true);
          victim.close(1011, 'chaos');
          faults.error4500++;
        }
      }
      scheduleFault();
    }, dropEvery * (0.5 + rand()));
  };

  const framesPerCall = Math.round((durationS * 1000) / 20);
  const audios = Array.from({ length: calls }, (_, i) => uniqueAudio(i, framesPerCall));
  const t0 = performance.now();
  scheduleFault();
  let results: SimCallResult[];
  try {
    results = await placeCalls(
      calls,
      (i) => ({
        bridgeUrl: url,
        publicUrl: PUBLIC_URL,
        authToken: TOKEN,
        audio: audios[i] as Uint8Array,
        trailingMs: 500,
        recordMessages: false,
        statusCallback: false,
      }),
      { rampMs: Math.min(2000, calls * 20) },
    );
  } finally {
    if (injector !== undefined) clearTimeout(injector);
  }
  const wallS = (performance.now() - t0) / 1000;

  // Per call: what the agent received across all connections, in connection order.
  const received = new Map<number, number[]>();
  const conns: FakeAgentConnection[] = agent.connections;
  for (const c of conns) {
    for (const b64 of c.audioIn) {
      const id = frameId(b64);
      if (id === undefined || id.seq >= framesPerCall) continue; // trailing silence frames
      let list = received.get(id.call);
      if (list === undefined) received.set(id.call, (list = []));
      list.push(id.seq);
    }
  }
  let lost = 0;
  let duplicated = 0;
  let reordered = 0;
  let callsWithLoss = 0;
  for (let call = 0; call < calls; call++) {
    const seqs = received.get(call) ?? [];
    const seen = new Set<number>();
    let last = -1;
    for (const s of seqs) {
      if (seen.has(s)) duplicated++;
      else if (s < last) reordered++;
      seen.add(s);
      last = Math.max(last, s);
    }
    const missing = framesPerCall - seen.size;
    if (missing > 0) callsWithLoss++;
    lost += missing;
  }
  const survived = results.filter((r) => r.endedBy === 'caller' && r.protocolViolations.length === 0).length;
  const metricsText = await bridge.metrics.registry.metrics();
  const metric = (name: string) =>
    metricsText
      .split('\n')
      .filter((l) => l.startsWith(name))
      .join('; ');

  const summary = {
    seed,
    calls,
    durationS,
    wallS: Math.round(wallS * 10) / 10,
    faultsInjected: faults,
    agentConnections: conns.length,
    callsSurvived: survived,
    apologiesSpoken: callControl.spoken.length,
    callerFramesSent: calls * framesPerCall,
    callerFramesLost: lost,
    callsWithLoss,
    duplicatedFrames: duplicated,
    reorderedFrames: reordered,
    protocolViolations: results.reduce((n, r) => n + r.protocolViolations.length, 0),
    reconnects: metric('playline_agent_reconnects_total'),
    leakedSlots: bridge.manager.usedSlots,
  };

  await bridge.app.close();
  await agent.close();

  if (values.json) {
    process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
  } else {
    process.stdout.write(
      [
        `chaos: ${calls} calls x ${durationS} s, seed ${seed}, ${summary.wallS} s wall`,
        `faults injected: ${faults.terminate} terminated, ${faults.close} closed, ${faults.error4500} error 4500 (${conns.length} agent connections in all)`,
        `calls survived: ${survived}/${calls}; apologies spoken: ${summary.apologiesSpoken}; protocol violations: ${summary.protocolViolations}`,
        `caller frames: ${summary.callerFramesSent} sent, ${lost} lost (${callsWithLoss} calls), ${duplicated} duplicated, ${reordered} out of order`,
        `reconnects: ${summary.reconnects}`,
        `slots left reserved: ${summary.leakedSlots}`,
      ].join('\n') + '\n',
    );
  }
  const ok = survived === calls && lost === 0 && duplicated === 0 && reordered === 0 && summary.leakedSlots === 0;
  process.exit(ok ? 0 : 1);
}

main().catch((err: unknown) => {
  process.stderr.write(`chaos: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
