/**
 * Benchmark load generator: N simulated Twilio calls (the `npm run call` engine:
 * signed webhook, TwiML, signed stream upgrade, `start`, 20 ms frames, mark
 * echoes, status callback) against one server, with per-frame measurements.
 * Runs as its own process; the result is one JSON line on stdout (`type: "result"`),
 * progress goes to stderr.
 *
 * Timeline: calls start spread over `--ramp-ms`; once every call has heard its first
 * echo (or `--connect-timeout-ms` after the ramp), `--settle-ms` pass, then the
 * steady window of `--duration` seconds, sampled at both ends: the target's (and
 * agent's) CPU ticks from /proc, the target's RSS, this process's CPU. Frames sent in
 * the window are the measured ones. After the window the calls keep streaming until
 * every measured frame has come back or `--trailing-ms` has passed, then every caller
 * hangs up; measured frames still missing then are lost.
 *
 * Per frame: every caller frame is unique (see `frames.ts`); its send time is kept in
 * a per-call ring, and an echo carrying the same id gives the round trip. With
 * `--match arrival` (an agent whose audio the bridge converts, so echoes are not
 * byte-exact) echoes are counted by arrival instead: the audio bytes received per
 * call are summed, and frame k counts as echoed when the 160 × (k + 1)-th byte has
 * come back (its round trip ends then); ids, duplicates, order and routing are not
 * checked, and no barge-in marker is sent (a conversion would not keep it). Barge-in:
 * every `--barge-every-ms` per call (staggered across calls), when at least 5 ms of
 * echoed audio is queued in the simulated Twilio buffer, a marker frame is sent
 * instead of audio; the local agent answers it with `voiceActivityStart`, the bridge
 * with `clear`; marker-sent → clear-received is recorded.
 *
 * Besides the result, stdout carries `{"type":"window-start"}` and `{"type":"window-end"}`
 * when the window opens and closes (the runner samples the target's memory in between).
 */
import { setMaxListeners } from 'node:events';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { placeCalls, type FakeTwilioStream, type SimCallResult } from '../sim/twilioSim.js';
import { base64ByteLength } from '../audio/base64.js';
import { decodeFrameId, encodeFrame, FRAME_BYTES } from './frames.js';
import { clockTicksPerSecond, readCpuTimes, readHostCpuTimes, readMemoryKb, type HostCpuTimes } from './procstat.js';
import { LatencyHistogram, round2, round3, summarize, type LatencySummary } from './stats.js';

const HELP = `Usage: node dist/bench/loadgen.js --url URL --calls N [options]

Places N simulated Twilio calls against URL and prints one JSON result line (and a
{"type":"window-start"} and a {"type":"window-end"} line when the window opens and closes).

Options:
  --url URL               server address (http://127.0.0.1:PORT)
  --public-url URL        origin the server signs against (default: --url)
  --token TOKEN           Twilio auth token to sign with (default: unsigned)
  --calls N               concurrent calls (default 10)
  --ramp-ms MS            spread call starts over MS (default 10 per call, max 10000)
  --connect-timeout-ms MS wait this long after the ramp for every call's first echo (default 20000)
  --settle-ms MS          pause between "all connected" and the window (default 2000)
  --duration S            steady window, seconds (default 20)
  --trailing-ms MS        after the window, wait up to MS for in-flight echoes before hanging up (default 5000)
  --barge-every-ms MS     barge-in marker interval per call; 0 = none (default 2000)
  --match id|arrival      how echoes are matched to frames: by the id in each frame (default,
                          byte-exact echoes) or by arrival, counting audio bytes per call
                          (converted audio; no barge-in markers then)
  --target-pid PID        process whose CPU/RSS is sampled over the window
  --agent-pid PID         second process whose CPU is sampled (the agent)
  --watch-stdin           exit when stdin closes (the runner died)
  -h, --help              this text
`;

const FRAME_MS = 20;
const RING = 4096; // frames remembered per call (82 s): far beyond any round trip
const MASK = RING - 1;
/** A marker is only sent when the simulated Twilio buffer holds at least this much echoed audio. */
const MIN_QUEUED_MS = 5;
/** A marker without a clear after this long counts as "no clear". */
const MARKER_TIMEOUT_MS = 2000;

const enum Phase {
  Warmup = 0,
  Steady = 1,
  Tail = 2,
}

interface Probe {
  idx: number;
  stream: FakeTwilioStream | undefined;
  /** Send time of frame 0 (the call's frame clock). */
  t0: number;
  sentAt: Float64Array;
  sentSeq: Int32Array;
  gotSeq: Int32Array;
  counted: number;
  echoed: number;
  duplicates: number;
  reordered: number;
  misrouted: number;
  foreign: number;
  lastSeq: number;
  /** --match arrival: audio bytes received, and frames completed by them. */
  rxBytes: number;
  rxFrames: number;
  /** Frames sent (all phases, markers included). */
  sentFrames: number;
  firstEchoAt: number;
  markerAt: number;
  nextMarkerAt: number;
}

interface Sample {
  t: number;
  cpu: NodeJS.CpuUsage;
  target: { utime: number; stime: number } | undefined;
  agentTicks: number | undefined;
  host: HostCpuTimes | undefined;
}

function fail(msg: string): never {
  process.stderr.write(`loadgen: ${msg}\n\n${HELP}`);
  process.exit(2);
}

function int(name: string, v: string | undefined, def: number, min: number, max: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min || n > max) fail(`--${name} must be a number in [${min}, ${max}] (got ${JSON.stringify(v)})`);
  return Math.round(n);
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, Math.max(0, ms)));
const log = (msg: string): void => void process.stderr.write(`loadgen: ${msg}\n`);
/** A timeline line on stdout, so the runner can sample the target during the window (calls still live). */
const marker = (type: 'window-start' | 'window-end'): void => void process.stdout.write(`${JSON.stringify({ type })}\n`);

function timesOf(pid: number | undefined): { utime: number; stime: number } | undefined {
  if (pid === undefined) return undefined;
  try {
    return readCpuTimes(pid);
  } catch {
    return undefined;
  }
}

function ticksOf(pid: number | undefined): number | undefined {
  const t = timesOf(pid);
  return t === undefined ? undefined : t.utime + t.stime;
}

function sample(targetPid: number | undefined, agentPid: number | undefined, since?: NodeJS.CpuUsage): Sample {
  return { t: performance.now(), cpu: process.cpuUsage(since), target: timesOf(targetPid), agentTicks: ticksOf(agentPid), host: readHostCpuTimes() };
}

async function main(): Promise<void> {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        url: { type: 'string' },
        'public-url': { type: 'string' },
        token: { type: 'string' },
        calls: { type: 'string' },
        'ramp-ms': { type: 'string' },
        'connect-timeout-ms': { type: 'string' },
        'settle-ms': { type: 'string' },
        duration: { type: 'string' },
        'trailing-ms': { type: 'string' },
        'barge-every-ms': { type: 'string' },
        match: { type: 'string' },
        'target-pid': { type: 'string' },
        'agent-pid': { type: 'string' },
        'watch-stdin': { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    fail(err instanceof Error ? err.message : String(err));
  }
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  if (values.url === undefined) fail('--url is required');
  const url = values.url;
  const publicUrl = values['public-url'] ?? url;
  const token = values.token;
  const calls = int('calls', values.calls, 10, 1, 5000);
  const rampMs = int('ramp-ms', values['ramp-ms'], Math.min(10_000, calls * 10), 0, 600_000);
  const connectTimeoutMs = int('connect-timeout-ms', values['connect-timeout-ms'], 20_000, 0, 600_000);
  const settleMs = int('settle-ms', values['settle-ms'], 2000, 0, 600_000);
  const durationMs = int('duration', values.duration, 20, 1, 3600) * 1000;
  const trailingMs = int('trailing-ms', values['trailing-ms'], 5000, 0, 60_000);
  const match = values.match ?? 'id';
  if (match !== 'id' && match !== 'arrival') fail(`--match must be id or arrival (got ${JSON.stringify(match)})`);
  const byArrival = match === 'arrival';
  // A marker cannot survive a conversion: no barge-ins when matching by arrival.
  const bargeEveryMs = byArrival ? 0 : int('barge-every-ms', values['barge-every-ms'], 2000, 0, 600_000);
  const targetPid = values['target-pid'] === undefined ? undefined : int('target-pid', values['target-pid'], 0, 1, 2 ** 31);
  const agentPid = values['agent-pid'] === undefined ? undefined : int('agent-pid', values['agent-pid'], 0, 1, 2 ** 31);

  const abort = new AbortController();
  setMaxListeners(0, abort.signal);
  if (values['watch-stdin']) {
    const bail = (): void => {
      abort.abort();
      process.exit(1);
    };
    process.stdin.on('end', bail);
    process.stdin.on('error', bail);
    process.stdin.resume();
  }
  process.once('SIGTERM', () => process.exit(1));
  process.once('SIGINT', () => process.exit(1));

  // ---- per-call probes and shared histograms ---------------------------------
  let phase: Phase = Phase.Warmup;
  const rtt = new LatencyHistogram();
  const lag = new LatencyHistogram();
  const barge = new LatencyHistogram();
  let connected = 0;
  let markersSent = 0;
  let markersNoClear = 0;
  let clearsMatched = 0;
  let clearsUnmatched = 0;

  const probes: Probe[] = Array.from({ length: calls }, (_, idx) => ({
    idx,
    stream: undefined,
    t0: 0,
    sentAt: new Float64Array(RING),
    sentSeq: new Int32Array(RING).fill(-1),
    gotSeq: new Int32Array(RING).fill(-1),
    counted: 0,
    echoed: 0,
    duplicates: 0,
    reordered: 0,
    misrouted: 0,
    foreign: 0,
    lastSeq: -1,
    rxBytes: 0,
    rxFrames: 0,
    sentFrames: 0,
    firstEchoAt: 0,
    markerAt: 0,
    nextMarkerAt: Infinity,
  }));

  const frameSource = (p: Probe) => (n: number, now: number): string => {
    if (n === 0) p.t0 = now;
    p.sentFrames = n + 1;
    if (phase !== Phase.Steady) return encodeFrame(p.idx, n);
    lag.record(now - (p.t0 + n * FRAME_MS));
    if (bargeEveryMs > 0) {
      if (p.markerAt > 0 && now - p.markerAt > MARKER_TIMEOUT_MS) {
        markersNoClear++;
        p.markerAt = 0;
      }
      if (p.markerAt === 0 && now >= p.nextMarkerAt && p.stream !== undefined && p.stream.bufferedMs >= MIN_QUEUED_MS) {
        p.markerAt = now;
        p.nextMarkerAt = now + bargeEveryMs;
        markersSent++;
        return encodeFrame(p.idx, n, true);
      }
    }
    const slot = n & MASK;
    p.sentAt[slot] = now;
    p.sentSeq[slot] = n;
    p.counted++;
    return encodeFrame(p.idx, n);
  };

  const onMedia = (p: Probe) => (payload: string, now: number): void => {
    if (p.firstEchoAt === 0) {
      p.firstEchoAt = now;
      connected++;
    }
    if (byArrival) {
      p.rxBytes += base64ByteLength(payload);
      const done = Math.floor(p.rxBytes / FRAME_BYTES);
      for (let seq = p.rxFrames; seq < done; seq++) {
        const slot = seq & MASK;
        if (p.sentSeq[slot] === seq) {
          rtt.record(now - (p.sentAt[slot] ?? now));
          p.echoed++;
        }
      }
      p.rxFrames = done;
      return;
    }
    const id = decodeFrameId(payload);
    if (id === undefined) {
      p.foreign++;
      return;
    }
    if (id.call !== p.idx) {
      p.misrouted++;
      return;
    }
    const seq = id.seq;
    const slot = seq & MASK;
    if (p.gotSeq[slot] === seq) {
      p.duplicates++;
      return;
    }
    p.gotSeq[slot] = seq;
    if (seq < p.lastSeq) p.reordered++;
    else p.lastSeq = seq;
    if (p.sentSeq[slot] === seq) {
      rtt.record(now - (p.sentAt[slot] ?? now));
      p.echoed++;
    }
  };

  const onClear = (p: Probe) => (now: number): void => {
    if (p.markerAt > 0) {
      barge.record(now - p.markerAt);
      p.markerAt = 0;
      clearsMatched++;
    } else {
      clearsUnmatched++;
    }
  };

  // ---- run ------------------------------------------------------------------
  const hardLimitMs = rampMs + connectTimeoutMs + settleMs + durationMs + trailingMs + 30_000;
  const t0 = performance.now();
  log(`${calls} calls to ${url}, ramp ${rampMs} ms, window ${durationMs / 1000} s${bargeEveryMs > 0 ? `, barge-in marker every ${bargeEveryMs} ms per call` : ''}`);
  let results: SimCallResult[] | undefined;
  let allDone = false;
  const all = placeCalls(
    calls,
    (i) => {
      const p = probes[i] as Probe;
      return {
        bridgeUrl: url,
        publicUrl,
        ...(token !== undefined ? { authToken: token } : {}),
        params: { From: `+1555${String(1_000_000 + i).slice(-7)}` },
        waitForBridgeHangup: true,
        maxDurationMs: hardLimitMs,
        recordMessages: false,
        recordHeard: false,
        signal: abort.signal,
        onStream: (s) => {
          p.stream = s;
        },
        frameSource: frameSource(p),
        onMedia: onMedia(p),
        onClear: onClear(p),
      };
    },
    { rampMs },
  ).then((r) => {
    allDone = true;
    results = r;
    return r;
  });

  const connectDeadline = t0 + rampMs + connectTimeoutMs;
  while (connected < calls && !allDone && performance.now() < connectDeadline) await sleep(25);
  const connectedBeforeWindow = connected;
  const connectMs = performance.now() - t0;
  log(`${connected}/${calls} calls hear their echo after ${Math.round(connectMs)} ms${connected < calls ? ' (NOT ALL CONNECTED)' : ''}`);

  let w0: Sample | undefined;
  let w1: Sample | undefined;
  let drainMs: number | undefined;
  let rssKb: number | undefined;
  let hwmKb: number | undefined;
  const eld = monitorEventLoopDelay({ resolution: 1 });
  if (!allDone) {
    await sleep(settleMs);
    const stagger = (i: number): number => (bargeEveryMs * i) / calls;
    w0 = sample(targetPid, agentPid);
    for (const p of probes) p.nextMarkerAt = w0.t + stagger(p.idx);
    eld.enable();
    phase = Phase.Steady;
    marker('window-start');
    await sleep(durationMs);
    phase = Phase.Tail;
    w1 = sample(targetPid, agentPid, w0.cpu);
    eld.disable();
    if (targetPid !== undefined) {
      try {
        ({ rssKb, hwmKb } = readMemoryKb(targetPid));
      } catch {
        /* target gone: reported as missing */
      }
    }
    marker('window-end');
    log(`window done (${((w1.t - w0.t) / 1000).toFixed(1)} s); waiting up to ${trailingMs} ms for in-flight echoes, then hanging up`);
    const drainStart = performance.now();
    const missing = (): number => probes.reduce((n, p) => n + p.counted - p.echoed, 0);
    while (missing() > 0 && performance.now() - drainStart < trailingMs) await sleep(20);
    drainMs = performance.now() - drainStart;
  }
  abort.abort();
  let endTimer: NodeJS.Timeout | undefined;
  const finished = await Promise.race([all, new Promise<undefined>((r) => (endTimer = setTimeout(() => r(undefined), 20_000)))]);
  clearTimeout(endTimer);
  if (finished === undefined) log('some calls did not end within 20 s of hanging up');
  for (const p of probes) {
    if (p.markerAt > 0) {
      markersNoClear++;
      p.markerAt = 0;
    }
  }

  // ---- report ---------------------------------------------------------------
  const rs = results ?? [];
  const sum = (f: (p: Probe) => number): number => probes.reduce((n, p) => n + f(p), 0);
  const errors = rs.filter((r) => r.endedBy === 'error');
  const errorSamples = [...new Set(errors.map((r) => r.error ?? 'unknown'))].slice(0, 5);
  const violations = rs.flatMap((r) => r.protocolViolations);
  const firstAudio: number[] = [];
  for (const p of probes) {
    const s = p.stream;
    if (s?.firstMediaAt !== undefined && s.startSentAt !== undefined) firstAudio.push(s.firstMediaAt - s.startSentAt);
  }
  const framesCounted = sum((p) => p.counted);
  const framesEchoed = sum((p) => p.echoed);
  const windowMs = w0 !== undefined && w1 !== undefined ? w1.t - w0.t : 0;
  const loadgenCpuMs = w1 !== undefined ? (w1.cpu.user + w1.cpu.system) / 1000 : 0;
  const delta = (a: number | undefined, b: number | undefined): number | undefined => (a !== undefined && b !== undefined ? b - a : undefined);
  const eldMs = (ns: number): number => round3(ns / 1e6);
  const emptySummary: LatencySummary = { count: 0, mean: 0, p50: 0, p90: 0, p99: 0, p999: 0, max: 0 };

  const result = {
    type: 'result',
    match,
    calls,
    rampMs,
    connectMs: Math.round(connectMs),
    connected: connectedBeforeWindow,
    connectedEver: connected,
    refused: rs.filter((r) => r.refused).length,
    errors: errors.length,
    errorSamples,
    unfinished: finished === undefined,
    endedByBridge: rs.filter((r) => r.endedBy === 'bridge').length,
    protocolViolations: violations.length,
    violationSamples: [...new Set(violations)].slice(0, 5),
    window: {
      ms: round2(windowMs),
      clkTck: clockTicksPerSecond(),
      targetTicks: w0?.target !== undefined && w1?.target !== undefined ? w1.target.utime + w1.target.stime - w0.target.utime - w0.target.stime : undefined,
      targetUserTicks: delta(w0?.target?.utime, w1?.target?.utime),
      targetSystemTicks: delta(w0?.target?.stime, w1?.target?.stime),
      agentTicks: delta(w0?.agentTicks, w1?.agentTicks),
      loadgenCpuMs: round2(loadgenCpuMs),
      loadgenSystemCpuMs: round2(w1 !== undefined ? w1.cpu.system / 1000 : 0),
      hostBusyTicks: delta(w0?.host?.busy, w1?.host?.busy),
      hostIdleTicks: delta(w0?.host?.idle, w1?.host?.idle),
      hostStealTicks: delta(w0?.host?.steal, w1?.host?.steal),
    },
    targetRssKb: rssKb,
    targetHwmKb: hwmKb,
    frames: {
      /** ms after the window until every measured frame was back (or the cap). */
      drainMs: drainMs === undefined ? undefined : Math.round(drainMs),
      counted: framesCounted,
      echoed: framesEchoed,
      lost: framesCounted - framesEchoed,
      callsWithLoss: probes.filter((p) => p.counted > p.echoed).length,
      duplicates: sum((p) => p.duplicates),
      reordered: sum((p) => p.reordered),
      misrouted: sum((p) => p.misrouted),
      foreign: sum((p) => p.foreign),
    },
    /**
     * --match arrival: audio bytes sent but not back when the caller hung up, mean per call
     * (what was in flight, held in a converter, or lost for good: a shortfall that also
     * delays every later frame's arrival-matched round trip by shortfall / 8 ms).
     */
    ...(byArrival ? { arrival: { shortfallBytesPerCall: round2(sum((p) => p.sentFrames * FRAME_BYTES - p.rxBytes) / calls) } } : {}),
    rttMs: rtt.summary(),
    firstAudioMs: firstAudio.length > 0 ? summarize(firstAudio) : emptySummary,
    bargeIn: {
      markersSent,
      clears: clearsMatched,
      noClear: markersNoClear,
      unexpectedClears: clearsUnmatched,
      markerToClearMs: barge.summary(),
    },
    marks: { received: rs.reduce((n, r) => n + r.marksReceived, 0), echoed: rs.reduce((n, r) => n + r.marksEchoed, 0) },
    loadgen: {
      cpuPct: windowMs > 0 ? round2((loadgenCpuMs / windowMs) * 100) : 0,
      sendLagMs: lag.summary(),
      sendLagMaxWholeCallMs: round2(rs.reduce((m, r) => Math.max(m, r.sendLag.max), 0)),
      eventLoopDelayMs: eld.count > 0 ? { p50: eldMs(eld.percentile(50)), p99: eldMs(eld.percentile(99)), max: eldMs(eld.max) } : { p50: 0, p99: 0, max: 0 },
    },
  };
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
}

main().catch((err: unknown) => {
  process.stderr.write(`loadgen: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
