/**
 * `npm run call`: places simulated Twilio calls against a running Playline bridge and
 * reports what happened. See `--help`. `run(args, io)` is the whole tool; `main()` only
 * wires it to the process.
 */
import { setMaxListeners } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import { parseArgs } from 'node:util';
import { mulawEncode } from '../audio/mulaw.js';
import { speechLikeSignal } from '../audio/signal.js';
import { toMulaw8k, writeWavMulaw } from '../audio/wav.js';
import { placeCalls, type SimCallOptions, type SimCallResult } from '../sim/twilioSim.js';
import { UsageError, errorMessage, isEntryPoint, networkFailure, processIo, withDotEnv, type CliIo, withUsage } from './io.js';

export const HELP = `Usage: npm run call -- [options]

Places simulated Twilio phone calls against a running Playline bridge, exactly as
Twilio would: signed voice webhook, TwiML, signed Media Streams WebSocket, caller
audio in 20 ms frames, playback-buffer emulation (marks/clear), status callback.
By default the caller stays silent until the agent's greeting has played, then speaks.

Options:
  --url URL           bridge address to connect to
                      (default http://127.0.0.1:$PORT, PORT defaults to 8080)
  --public-url URL    public origin the bridge signs against (default $PUBLIC_URL, else --url)
  --token TOKEN       Twilio auth token used to sign requests (default $TWILIO_AUTH_TOKEN).
                      Without a token nothing is signed.
                      PORT, PUBLIC_URL and TWILIO_AUTH_TOKEN are read from ./.env too, as
                      npm start does; variables set in the shell win.
  --from NUMBER       caller number (default +15005550006)
  --to NUMBER         called number (default +15005550001)
  --wav FILE          caller audio from a WAV file (any rate; converted to 8 kHz mu-law)
  --duration SECONDS  length of the generated speech-like test signal when no --wav (default 8)
  --no-wait-greeting  talk at once, over the greeting (a barge-in), instead of waiting
                      until the agent's audio has stopped for 0.6 s
  --greeting-timeout SECONDS
                      longest wait for the greeting to end; the caller talks then anyway (default 8)
  --trailing SECONDS  silence streamed after the caller audio before hanging up (default 3)
  --wait-hangup       keep streaming silence until the bridge ends the call
  --max-duration SEC  hard limit per call; the caller hangs up then (default 60)
  --calls N           number of concurrent calls (default 1)
  --ramp MS           spread call starts over this many ms (default 0)
  --out FILE          write what the caller heard as a WAV (FILE-1.wav, FILE-2.wav, ... for
                      several calls); only for calls that connected and heard agent audio
  --json              print the results as JSON instead of the summary
  -h, --help          show this help

Exit code: 0 when every call connected to a stream, heard agent audio and saw no
protocol violations; 1 otherwise (a call failed or was refused, no agent audio was
heard, or the bridge could not be reached); 2 on bad options.
`;

function num(name: string, v: string | undefined, def: number, min: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min) throw new UsageError(`--${name} must be a number >= ${min} (got ${JSON.stringify(v)})`);
  return n;
}

const secs = (bytes: number): string => (bytes / 8000).toFixed(1);

/** Bytes of what the caller heard that are not mu-law silence (0xff / 0x7f). */
export function audibleBytes(heard: Uint8Array): number {
  let n = 0;
  for (const b of heard) if (b !== 0xff && b !== 0x7f) n++;
  return n;
}

/** Why a call counts as failed, or undefined when it went well. */
export function failureOf(r: SimCallResult): string | undefined {
  if (r.endedBy === 'error' && r.streamSid === undefined) return r.error ?? 'the call failed';
  if (r.refused) return 'refused by the bridge';
  if (r.streamSid === undefined) return 'no media stream';
  if (r.endedBy === 'error') return r.error ?? 'the call failed';
  if (r.protocolViolations.length > 0) return `${r.protocolViolations.length} protocol violation(s)`;
  if (audibleBytes(r.heard) === 0) {
    return r.mediaReceived === 0 ? 'no agent audio was heard: the bridge sent none' : 'no agent audio was heard: everything the bridge sent was silence';
  }
  return undefined;
}

function summary(i: number, r: SimCallResult): string {
  const head = `call ${i + 1} ${r.callSid}`;
  if (r.endedBy === 'error' && r.streamSid === undefined) {
    return `${head}: FAILED (webhook HTTP ${r.voiceStatus}${r.streamConnectStatus !== undefined ? `, stream upgrade HTTP ${r.streamConnectStatus}` : ''}): ${r.error ?? 'unknown error'}`;
  }
  if (r.refused) {
    const what = [
      ...r.sayTexts.map((t) => `Say ${JSON.stringify(t)}`),
      ...(r.twiml?.dial ?? []).map((d) => `Dial ${d}`),
      ...(r.twiml?.reject ? [`Reject${r.twiml.rejectReason ? ` (${r.twiml.rejectReason})` : ''}`] : []),
      ...(r.twiml?.hangup ? ['Hangup'] : []),
    ].join(', ');
    return `${head}: REFUSED by the bridge (HTTP ${r.voiceStatus}): ${what || 'no verbs'}`;
  }
  const ended = `ended by ${r.endedBy}${r.closeCode !== undefined ? ` (close ${r.closeCode})` : ''}${r.timedOut ? ' after --max-duration' : ''}`;
  const audible = audibleBytes(r.heard);
  const g = r.greetingWait;
  const lines = [
    `${head}: ${ended} after ${(r.durationMs / 1000).toFixed(1)} s`,
    `  audio: sent ${secs(r.bytesSent)} s, received ${secs(r.bytesReceived)} s, played to caller ~${secs(audible)} s`,
    `  first agent audio: ${r.firstAgentAudioMs !== undefined ? `${r.firstAgentAudioMs} ms` : 'none'}; barge-ins (clear): ${r.clears}; marks: ${r.marksReceived} sent / ${r.marksEchoed} echoed`,
  ];
  if (g !== undefined) {
    lines.push(
      g.outcome === 'ended'
        ? `  greeting: heard to its end; the caller started talking after ${(g.waitedMs / 1000).toFixed(1)} s`
        : `  greeting: ${r.firstAgentAudioMs === undefined || r.firstAgentAudioMs > g.waitedMs ? 'none' : 'still playing'} after ${(g.waitedMs / 1000).toFixed(1)} s (--greeting-timeout); the caller talked anyway`,
    );
  }
  lines.push(
    `  protocol violations: ${r.protocolViolations.length}${r.protocolViolations.length ? `\n    - ${r.protocolViolations.slice(0, 10).join('\n    - ')}` : ''}`,
    `  send timer lag: p50 ${r.sendLag.p50} ms, p99 ${r.sendLag.p99} ms, max ${r.sendLag.max} ms`,
  );
  if (audible === 0) lines.push(`  FAILED: ${failureOf(r) ?? 'no agent audio was heard'}`);
  return lines.join('\n');
}

/** One line saying why the bridge cannot be reached and how to fix it, or undefined when it answers. */
async function unreachable(io: CliIo, url: string): Promise<string | undefined> {
  try {
    const res = await io.fetch(new URL('/healthz', url), { signal: AbortSignal.timeout(5000) });
    await res.body?.cancel();
    return undefined;
  } catch (err) {
    const why = networkFailure(err);
    return `call: cannot reach the bridge at ${url} (${why}). Start it first (npm start), or point at it with --url URL or PORT (in the shell or .env).`;
  }
}

export function run(args: string[], io: CliIo): Promise<number> {
  return withUsage('call', HELP, io, () => call(args, io));
}

async function call(args: string[], io: CliIo): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: {
        url: { type: 'string' },
        'public-url': { type: 'string' },
        token: { type: 'string' },
        from: { type: 'string' },
        to: { type: 'string' },
        wav: { type: 'string' },
        duration: { type: 'string' },
        'no-wait-greeting': { type: 'boolean', default: false },
        'greeting-timeout': { type: 'string' },
        trailing: { type: 'string' },
        'wait-hangup': { type: 'boolean', default: false },
        'max-duration': { type: 'string' },
        calls: { type: 'string' },
        ramp: { type: 'string' },
        out: { type: 'string' },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (err) {
    throw new UsageError(errorMessage(err));
  }
  const v = parsed.values;
  if (v.help) {
    io.stdout.write(HELP);
    return 0;
  }
  const env = withDotEnv(io.env, io.cwd);

  const url = v.url ?? `http://127.0.0.1:${env.PORT || 8080}`;
  try {
    const u = new URL(url);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error(`unsupported scheme ${u.protocol}`);
  } catch (err) {
    throw new UsageError(`--url must be an http(s) address like http://127.0.0.1:8080 (got ${JSON.stringify(url)}: ${errorMessage(err)})`);
  }
  const publicUrl = v['public-url'] ?? env.PUBLIC_URL ?? url;
  const token = v.token ?? (env.TWILIO_AUTH_TOKEN || undefined);
  const calls = Math.floor(num('calls', v.calls, 1, 1));
  const durationMs = num('duration', v.duration, 8, 0) * 1000;
  const trailingMs = num('trailing', v.trailing, 3, 0) * 1000;
  const maxDurationMs = num('max-duration', v['max-duration'], 60, 1) * 1000;
  const greetingTimeoutMs = num('greeting-timeout', v['greeting-timeout'], 8, 0) * 1000;
  const rampMs = num('ramp', v.ramp, 0, 0);

  let audio: Uint8Array;
  if (v.wav !== undefined) {
    try {
      audio = toMulaw8k(readFileSync(isAbsolute(v.wav) ? v.wav : join(io.cwd, v.wav)));
    } catch (err) {
      throw new UsageError(`cannot read --wav ${v.wav}: ${errorMessage(err)}`);
    }
  } else {
    const signal: Uint8Array | Int16Array = speechLikeSignal({ durationMs });
    audio = signal instanceof Int16Array ? mulawEncode(signal) : signal;
  }

  const down = await unreachable(io, url);
  if (down !== undefined) {
    io.stderr.write(`${down}\n`);
    return 1;
  }

  const abort = new AbortController();
  setMaxListeners(0, abort.signal); // every concurrent call listens to it
  const offSigint = io.onSigint(() => {
    if (abort.signal.aborted) {
      io.exit(130);
      return;
    }
    io.stderr.write('call: interrupted, hanging up... (Ctrl-C again to quit at once)\n');
    abort.abort();
  });

  const params: Partial<Record<string, string>> = {};
  if (v.from !== undefined) params.From = v.from;
  if (v.to !== undefined) params.To = v.to;
  const base: SimCallOptions = {
    bridgeUrl: url,
    publicUrl,
    params,
    audio,
    trailingMs,
    waitForBridgeHangup: v['wait-hangup'],
    waitForGreeting: v['no-wait-greeting'] ? false : { maxWaitMs: greetingTimeoutMs },
    maxDurationMs,
    signal: abort.signal,
    ...(token !== undefined ? { authToken: token } : {}),
  };
  if (!v.json) {
    io.stderr.write(
      `call: ${calls} call(s) to ${url}${publicUrl !== url ? ` (public ${publicUrl})` : ''}, ${(audio.length / 8000).toFixed(1)} s of caller audio` +
        `${v['no-wait-greeting'] ? ' from the start' : ' after the greeting'}, ${token ? 'signed' : 'unsigned'}\n`,
    );
  }
  let results: SimCallResult[];
  try {
    results = await placeCalls(calls, () => ({ ...base, params: { ...params } }), { rampMs });
  } finally {
    offSigint();
  }

  const notes: string[] = [];
  if (v.out !== undefined) {
    const out = v.out;
    const stem = out.replace(/\.wav$/i, '');
    results.forEach((r, i) => {
      const file = calls === 1 ? out : `${stem}-${i + 1}.wav`;
      const why = r.streamSid === undefined ? 'the call never connected to a media stream' : audibleBytes(r.heard) === 0 ? 'no agent audio was heard' : undefined;
      if (why !== undefined) {
        notes.push(`call ${i + 1}: ${file} not written: ${why}`);
        return;
      }
      writeFileSync(isAbsolute(file) ? file : join(io.cwd, file), writeWavMulaw(r.heard));
      notes.push(`call ${i + 1}: heard audio written to ${file}`);
    });
  }

  const failures = results.map(failureOf);
  const bad = failures.filter((f) => f !== undefined).length;
  if (v.json) {
    const out = results.map(({ heard, ...rest }, i) => ({ ...rest, heardMs: heard.length / 8, agentAudioHeardMs: audibleBytes(heard) / 8, failure: failures[i] ?? null }));
    io.stdout.write(`${JSON.stringify(calls === 1 ? out[0] : out, null, 2)}\n`);
    for (const note of notes) io.stderr.write(`${note}\n`);
  } else {
    results.forEach((r, i) => io.stdout.write(`${summary(i, r)}\n`));
    for (const note of notes) io.stdout.write(`${note}\n`);
    const firsts = results.map((r) => r.firstAgentAudioMs).filter((x): x is number => x !== undefined);
    const sum = (f: (r: SimCallResult) => number): number => results.reduce((n, r) => n + f(r), 0);
    io.stdout.write(
      `total: ${calls} call(s), ${calls - bad} ok, ${results.filter((r) => r.refused).length} refused, ` +
        `${results.filter((r) => r.endedBy === 'error').length} errors, ${results.filter((r) => r.streamSid !== undefined && audibleBytes(r.heard) === 0).length} heard no agent audio; ` +
        `audio sent ${secs(sum((r) => r.bytesSent))} s, received ${secs(sum((r) => r.bytesReceived))} s; barge-ins ${sum((r) => r.clears)}; ` +
        `marks ${sum((r) => r.marksReceived)}/${sum((r) => r.marksEchoed)} echoed; ` +
        `first agent audio ${firsts.length ? `avg ${Math.round(firsts.reduce((a, b) => a + b, 0) / firsts.length)} ms, max ${Math.max(...firsts)} ms` : 'none'}; ` +
        `violations ${sum((r) => r.protocolViolations.length)}\n`,
    );
  }
  return bad > 0 ? 1 : 0;
}

async function main(): Promise<void> {
  process.exitCode = await run(process.argv.slice(2), processIo());
}

if (isEntryPoint(import.meta.url)) {
  main().catch((err: unknown) => {
    process.stderr.write(`call: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  });
}
