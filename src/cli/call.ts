/**
 * `npm run call`: places simulated Twilio calls against a running Playline bridge and
 * reports what happened. See `--help`.
 */
import { setMaxListeners } from 'node:events';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { mulawEncode } from '../audio/mulaw.js';
import { speechLikeSignal } from '../audio/signal.js';
import { toMulaw8k, writeWavMulaw } from '../audio/wav.js';
import { placeCalls, type SimCallOptions, type SimCallResult } from '../sim/twilioSim.js';

const HELP = `Usage: npm run call -- [options]

Places simulated Twilio phone calls against a running Playline bridge, exactly as
Twilio would: signed voice webhook, TwiML, signed Media Streams WebSocket, caller
audio in 20 ms frames, playback-buffer emulation (marks/clear), status callback.

Options:
  --url URL           bridge address to connect to
                      (default http://127.0.0.1:$PORT, PORT defaults to 8080)
  --public-url URL    public origin the bridge signs against (default $PUBLIC_URL, else --url)
  --token TOKEN       Twilio auth token used to sign requests (default $TWILIO_AUTH_TOKEN;
                      .env is loaded first when present). Without a token nothing is signed.
  --from NUMBER       caller number (default +15005550006)
  --to NUMBER         called number (default +15005550001)
  --wav FILE          caller audio from a WAV file (any rate; converted to 8 kHz mu-law)
  --duration SECONDS  length of the generated speech-like test signal when no --wav (default 8)
  --trailing SECONDS  silence streamed after the caller audio before hanging up (default 3)
  --wait-hangup       keep streaming silence until the bridge ends the call
  --max-duration SEC  hard limit per call; the caller hangs up then (default 60)
  --calls N           number of concurrent calls (default 1)
  --ramp MS           spread call starts over this many ms (default 0)
  --out FILE          write what the caller heard as a WAV (FILE-1.wav, FILE-2.wav, ... for several calls)
  --json              print the results as JSON instead of the summary
  -h, --help          show this help

Exit code: 0 when every call connected to a stream without protocol violations,
1 otherwise, 2 on bad options.
`;

function fail(msg: string): never {
  process.stderr.write(`call: ${msg}\n\n${HELP}`);
  process.exit(2);
}

function num(name: string, v: string | undefined, def: number, min: number): number {
  if (v === undefined) return def;
  const n = Number(v);
  if (!Number.isFinite(n) || n < min) fail(`--${name} must be a number >= ${min} (got ${JSON.stringify(v)})`);
  return n;
}

const secs = (bytes: number): string => (bytes / 8000).toFixed(1);

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
  const heardAgent = r.heard.reduce((n, b) => (b !== 0xff ? n + 1 : n), 0);
  return [
    `${head}: ${ended} after ${(r.durationMs / 1000).toFixed(1)} s`,
    `  audio: sent ${secs(r.bytesSent)} s, received ${secs(r.bytesReceived)} s, played to caller ~${secs(heardAgent)} s`,
    `  first agent audio: ${r.firstAgentAudioMs !== undefined ? `${r.firstAgentAudioMs} ms` : 'none'}; barge-ins (clear): ${r.clears}; marks: ${r.marksReceived} sent / ${r.marksEchoed} echoed`,
    `  protocol violations: ${r.protocolViolations.length}${r.protocolViolations.length ? `\n    - ${r.protocolViolations.slice(0, 10).join('\n    - ')}` : ''}`,
    `  send timer lag: p50 ${r.sendLag.p50} ms, p99 ${r.sendLag.p99} ms, max ${r.sendLag.max} ms`,
  ].join('\n');
}

const failed = (r: SimCallResult): boolean => r.endedBy === 'error' || r.refused || r.streamSid === undefined || r.protocolViolations.length > 0;

async function main(): Promise<void> {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        url: { type: 'string' },
        'public-url': { type: 'string' },
        token: { type: 'string' },
        from: { type: 'string' },
        to: { type: 'string' },
        wav: { type: 'string' },
        duration: { type: 'string' },
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
    fail(err instanceof Error ? err.message : String(err));
  }
  const v = parsed.values;
  if (v.help) {
    process.stdout.write(HELP);
    return;
  }
  if (existsSync('.env')) process.loadEnvFile('.env');

  const url = v.url ?? `http://127.0.0.1:${process.env.PORT || 8080}`;
  const publicUrl = v['public-url'] ?? process.env.PUBLIC_URL ?? url;
  const token = v.token ?? (process.env.TWILIO_AUTH_TOKEN || undefined);
  const calls = Math.floor(num('calls', v.calls, 1, 1));
  const durationMs = num('duration', v.duration, 8, 0) * 1000;
  const trailingMs = num('trailing', v.trailing, 3, 0) * 1000;
  const maxDurationMs = num('max-duration', v['max-duration'], 60, 1) * 1000;
  const rampMs = num('ramp', v.ramp, 0, 0);

  let audio: Uint8Array;
  if (v.wav !== undefined) {
    try {
      audio = toMulaw8k(readFileSync(v.wav));
    } catch (err) {
      fail(`cannot read --wav ${v.wav}: ${err instanceof Error ? err.message : String(err)}`);
    }
  } else {
    const signal: Uint8Array | Int16Array = speechLikeSignal({ durationMs });
    audio = signal instanceof Int16Array ? mulawEncode(signal) : signal;
  }

  const abort = new AbortController();
  setMaxListeners(0, abort.signal); // every concurrent call listens to it
  process.once('SIGINT', () => {
    process.stderr.write('call: interrupted, hanging up...\n');
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
    maxDurationMs,
    signal: abort.signal,
    ...(token !== undefined ? { authToken: token } : {}),
  };
  if (!v.json) {
    process.stderr.write(
      `call: ${calls} call(s) to ${url}${publicUrl !== url ? ` (public ${publicUrl})` : ''}, ${(audio.length / 8000).toFixed(1)} s of caller audio, ${token ? 'signed' : 'unsigned'}\n`,
    );
  }
  const results = await placeCalls(calls, () => ({ ...base, params: { ...params } }), { rampMs });

  if (v.out !== undefined) {
    const out = v.out;
    const stem = out.replace(/\.wav$/i, '');
    results.forEach((r, i) => {
      const file = calls === 1 ? out : `${stem}-${i + 1}.wav`;
      writeFileSync(file, writeWavMulaw(r.heard));
    });
  }

  const bad = results.filter(failed).length;
  if (v.json) {
    const out = results.map(({ heard, ...rest }) => ({ ...rest, heardMs: heard.length / 8 }));
    process.stdout.write(`${JSON.stringify(calls === 1 ? out[0] : out, null, 2)}\n`);
  } else {
    results.forEach((r, i) => process.stdout.write(`${summary(i, r)}\n`));
    const firsts = results.map((r) => r.firstAgentAudioMs).filter((x): x is number => x !== undefined);
    const sum = (f: (r: SimCallResult) => number): number => results.reduce((n, r) => n + f(r), 0);
    process.stdout.write(
      `total: ${calls} call(s), ${calls - bad} ok, ${results.filter((r) => r.refused).length} refused, ` +
        `${results.filter((r) => r.endedBy === 'error').length} errors; audio sent ${secs(sum((r) => r.bytesSent))} s, ` +
        `received ${secs(sum((r) => r.bytesReceived))} s; barge-ins ${sum((r) => r.clears)}; ` +
        `marks ${sum((r) => r.marksReceived)}/${sum((r) => r.marksEchoed)} echoed; ` +
        `first agent audio ${firsts.length ? `avg ${Math.round(firsts.reduce((a, b) => a + b, 0) / firsts.length)} ms, max ${Math.max(...firsts)} ms` : 'none'}; ` +
        `violations ${sum((r) => r.protocolViolations.length)}` +
        (v.out !== undefined ? `; heard audio written to ${calls === 1 ? v.out : `${v.out.replace(/\.wav$/i, '')}-N.wav`}` : '') +
        '\n',
    );
  }
  process.exitCode = bad > 0 ? 1 : 0;
}

main().catch((err: unknown) => {
  process.stderr.write(`call: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
