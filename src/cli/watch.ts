/**
 * `npm run watch`: tails a running Playline's live events (`GET /v1/events`) as
 * readable lines: calls starting and ending, their transcripts and changes, and
 * campaign progress (on a terminal one line redrawn in place with a bar and
 * ETA; elsewhere plain lines). Reconnects with Last-Event-ID, so a dropped
 * connection loses nothing within the server's window. See `--help`.
 * `run(args, io)` is the whole tool; `main()` only wires it to the process.
 */
import { parseArgs } from 'node:util';
import { createParser, type EventSourceMessage } from 'eventsource-parser';
import { z } from 'zod';
import { EVENT_TYPES } from '../events/types.js';
import { describeFailure, parseApiError } from './api.js';
import { UsageError, errorMessage, isEntryPoint, networkFailure, processIo, withDotEnv, type CliIo, type Output, withUsage } from './io.js';
import { colourWanted, formatDuration } from './progress.js';

export const HELP = `Usage: npm run watch -- [options]

Follows what a running Playline does, as it happens (GET /v1/events): calls
starting and ending, what caller and agent say, barge-ins, agent changes, and
campaign progress. On a terminal, campaign progress is one line updated in place
with a bar and ETA; otherwise (pipes, logs) every line is plain text.
A lost connection is retried and resumes where it stopped (Last-Event-ID).
Ctrl-C quits.

Options:
  --url URL           Playline address (default http://127.0.0.1:$PORT, PORT defaults to 8080)
  --token TOKEN       API token (default $API_TOKEN). Not needed in local mode from this machine.
                      PORT and API_TOKEN are read from ./.env too, as npm start does;
                      variables set in the shell win.
  --call ID           only this call's events
  --campaign ID       only this campaign's events (its calls and its progress)
  --types LIST        comma-separated event types, among:
                      ${EVENT_TYPES.join(', ')}
  --quiet             leave out call.updated lines (keep starts, ends, transcripts, progress)
  --json              print each event as one line of JSON instead
  -h, --help          show this help

Exit code: 0 after Ctrl-C; 1 when Playline refused the request (a wrong token, a
bad filter); 2 on bad options.
`;

const eventSchema = z.object({
  id: z.string(),
  type: z.string(),
  at: z.string(),
  callId: z.string().optional(),
  campaignId: z.string().optional(),
  data: z.record(z.string(), z.unknown()),
});
type WireEvent = z.infer<typeof eventSchema>;

const callSchema = z.looseObject({
  id: z.string(),
  direction: z.string().optional(),
  from: z.string().optional(),
  to: z.string().optional(),
  agentId: z.string().optional(),
  status: z.string().optional(),
  outcome: z.string().nullish(),
  endReason: z.string().nullish(),
  durationSeconds: z.number().nullish(),
});
const progressSchema = z.object({
  status: z.string(),
  counts: z.object({ total: z.number(), byState: z.record(z.string(), z.number()), byOutcome: z.record(z.string(), z.number()) }),
  activeCalls: z.number().optional(),
  etaSeconds: z.number().nullish(),
});

const CLEAR_LINE = '\r\x1b[2K';
const BAR_WIDTH = 20;

/** Writes lines, keeping one campaign progress line redrawn at the bottom on a terminal. */
class Screen {
  readonly #out: Output;
  readonly #tty: boolean;
  readonly #colour: boolean;
  #status: string | undefined;

  constructor(out: Output, env: Readonly<Record<string, string | undefined>>) {
    this.#out = out;
    this.#tty = out.isTTY === true;
    this.#colour = colourWanted(out, env);
  }

  get tty(): boolean {
    return this.#tty;
  }

  paint(code: [number, number], s: string): string {
    return this.#colour ? `\x1b[${code[0]}m${s}\x1b[${code[1]}m` : s;
  }

  line(text: string): void {
    if (this.#tty && this.#status !== undefined) this.#out.write(`${CLEAR_LINE}${text}\n${this.#status}`);
    else this.#out.write(`${text}\n`);
  }

  /** The progress line: redrawn in place on a terminal, a plain line otherwise. */
  status(text: string): void {
    if (!this.#tty) {
      this.#out.write(`${text}\n`);
      return;
    }
    this.#status = text;
    this.#out.write(`${CLEAR_LINE}${text}`);
  }

  /** The progress line stays as a normal line. */
  settle(): void {
    if (this.#tty && this.#status !== undefined) this.#out.write('\n');
    this.#status = undefined;
  }
}

const DIM: [number, number] = [2, 22];
const BOLD: [number, number] = [1, 22];
const GREEN: [number, number] = [32, 39];
const CYAN: [number, number] = [36, 39];
const YELLOW: [number, number] = [33, 39];

function clock(at: string): string {
  const d = new Date(at);
  return Number.isNaN(d.getTime()) ? '--:--:--' : d.toTimeString().slice(0, 8);
}

const str = (v: unknown): string => (typeof v === 'string' ? v : v === undefined || v === null ? '' : JSON.stringify(v));

/** One event as text, or undefined to print nothing. Exported for tests. */
export function describeEvent(e: WireEvent, screen: Screen, opts: { quiet: boolean }): { line?: string; status?: string; settle?: boolean } {
  const t = screen.paint(DIM, clock(e.at));
  const id = e.callId ?? '';
  switch (e.type) {
    case 'call.started': {
      const c = callSchema.safeParse(e.data.call);
      const d = c.success ? c.data : undefined;
      return { line: `${t} ${screen.paint(GREEN, '▶')} ${screen.paint(BOLD, id)} ${d?.direction ?? ''} ${d?.from ?? '?'} → ${d?.to ?? '?'} · ${d?.agentId ?? ''}${e.campaignId ? ` · campaign ${e.campaignId}` : ''}` };
    }
    case 'call.updated': {
      if (opts.quiet) return {};
      const change = str(e.data.change);
      const what =
        change === 'status'
          ? `status ${str(e.data.status)}`
          : change === 'barge_in'
            ? `barge-in #${str(e.data.bargeIns)}`
            : change === 'agent_switched'
              ? `agent switched ${str(e.data.from)} → ${str(e.data.to)} (${str(e.data.why)})`
              : change === 'dtmf'
                ? `pressed ${str(e.data.digit)}`
                : change === 'spoke'
                  ? `Playline said (${str(e.data.kind)}): ${str(e.data.text)}`
                  : change.replace(/_/g, ' ');
      return { line: `${t}   ${screen.paint(DIM, id)} ${what}` };
    }
    case 'call.transcript': {
      const role = str(e.data.role);
      return { line: `${t}   ${screen.paint(DIM, id)} ${screen.paint(role === 'agent' ? CYAN : YELLOW, role.padEnd(5))} ${str(e.data.text)}` };
    }
    case 'call.ended': {
      const c = callSchema.safeParse(e.data.call);
      const d = c.success ? c.data : undefined;
      const parts = [d?.status, d?.outcome, d?.endReason, d?.durationSeconds !== undefined && d.durationSeconds !== null ? formatDuration(d.durationSeconds) : undefined].filter((p) => p !== undefined && p !== null && p !== '');
      return { line: `${t} ${screen.paint(DIM, '■')} ${screen.paint(BOLD, id)} ended${parts.length ? ` · ${parts.join(' · ')}` : ''}` };
    }
    case 'campaign.progress': {
      const p = progressSchema.safeParse(e.data);
      if (!p.success) return {};
      const { counts, status } = p.data;
      const done = counts.byState.done ?? 0;
      const pct = counts.total > 0 ? Math.floor((done / counts.total) * 100) : 0;
      const eta = p.data.etaSeconds !== null && p.data.etaSeconds !== undefined && status === 'running' ? ` · ETA ${formatDuration(p.data.etaSeconds)}` : '';
      const active = p.data.activeCalls !== undefined ? ` · ${p.data.activeCalls} live` : '';
      if (screen.tty) {
        const filled = counts.total > 0 ? Math.round((done / counts.total) * BAR_WIDTH) : 0;
        const bar = `${screen.paint(GREEN, '█'.repeat(filled))}${screen.paint(DIM, '░'.repeat(BAR_WIDTH - filled))}`;
        return { status: `campaign ${e.campaignId ?? ''} ${status} [${bar}] ${String(pct).padStart(3)}% ${done}/${counts.total}${active}${eta}` };
      }
      return { status: `${clock(e.at)} campaign ${e.campaignId ?? ''} ${status} ${pct}% ${done}/${counts.total} done${active}${eta}` };
    }
    case 'campaign.completed': {
      const p = progressSchema.pick({ status: true, counts: true }).safeParse(e.data);
      const outcomes = p.success
        ? Object.entries(p.data.counts.byOutcome)
            .map(([k, v]) => `${v} ${k}`)
            .join(', ')
        : '';
      return { settle: true, line: `${t} campaign ${e.campaignId ?? ''} ${p.success ? p.data.status : 'finished'}${p.success ? `: ${p.data.counts.total} contact(s)` : ''}${outcomes ? `, ${outcomes}` : ''}` };
    }
    default:
      return { line: `${t} ${e.type} ${id}` };
  }
}

type StreamEnd = { kind: 'aborted' } | { kind: 'refused'; message: string } | { kind: 'lost'; why: string };

export function run(args: string[], io: CliIo): Promise<number> {
  return withUsage('watch', HELP, io, () => watch(args, io));
}

async function watch(args: string[], io: CliIo): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: false,
      strict: true,
      options: {
        url: { type: 'string' },
        token: { type: 'string' },
        call: { type: 'string' },
        campaign: { type: 'string' },
        types: { type: 'string' },
        quiet: { type: 'boolean', default: false },
        json: { type: 'boolean', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    throw new UsageError(errorMessage(err));
  }
  const { values } = parsed;
  if (values.help) {
    io.stdout.write(HELP);
    return 0;
  }
  const env = withDotEnv(io.env, io.cwd);
  const base = (values.url ?? `http://127.0.0.1:${env.PORT || 8080}`).replace(/\/+$/, '');
  try {
    const u = new URL(base);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error(`unsupported scheme ${u.protocol}`);
  } catch (err) {
    throw new UsageError(`--url must be an http(s) address like http://127.0.0.1:8080 (got ${JSON.stringify(base)}: ${errorMessage(err)})`);
  }
  if (values.types !== undefined) {
    for (const t of values.types.split(',').map((s) => s.trim()).filter((s) => s !== '')) {
      if (!(EVENT_TYPES as readonly string[]).includes(t)) throw new UsageError(`--types: unknown event type ${JSON.stringify(t)}; use a comma-separated list of ${EVENT_TYPES.join(', ')}`);
    }
  }
  const token = values.token ?? (env.API_TOKEN || undefined);
  const query = new URLSearchParams();
  if (values.call !== undefined) query.set('callId', values.call);
  if (values.campaign !== undefined) query.set('campaignId', values.campaign);
  if (values.types !== undefined) query.set('types', values.types);
  const url = `${base}/v1/events${query.size > 0 ? `?${query}` : ''}`;

  const abort = new AbortController();
  const offSigint = io.onSigint(() => abort.abort());
  const screen = new Screen(io.stdout, env);
  let lastEventId: string | undefined;
  let failures = 0;
  let everConnected = false;
  try {
    while (!abort.signal.aborted) {
      const end = await follow();
      if (end.kind === 'aborted') break;
      if (end.kind === 'refused') {
        screen.settle();
        io.stderr.write(`watch: ${end.message}\n`);
        return 1;
      }
      failures++;
      const waitMs = Math.min(10_000, 500 * 2 ** Math.min(failures - 1, 5));
      if (failures === 1) {
        screen.settle();
        io.stderr.write(
          everConnected
            ? `watch: connection to ${base} lost (${end.why}); reconnecting…\n`
            : `watch: cannot reach Playline at ${base} (${end.why}). Start it (npm start), or point at it with --url URL or PORT; retrying…\n`,
        );
      }
      try {
        await io.sleep(waitMs, abort.signal);
      } catch {
        break;
      }
    }
  } finally {
    offSigint();
    screen.settle();
  }
  return 0;

  async function follow(): Promise<StreamEnd> {
    const headers: Record<string, string> = { accept: 'text/event-stream' };
    if (token !== undefined) headers.authorization = `Bearer ${token}`;
    if (lastEventId !== undefined) headers['last-event-id'] = lastEventId;
    let res: Response;
    try {
      res = await io.fetch(url, { headers, signal: abort.signal });
    } catch (err) {
      if (abort.signal.aborted) return { kind: 'aborted' };
      return { kind: 'lost', why: networkFailure(err) };
    }
    if (res.status === 401 || res.status === 400 || res.status === 403 || res.status === 404) {
      const text = await res.text().catch(() => '');
      let body: unknown;
      try {
        body = JSON.parse(text);
      } catch {
        body = undefined;
      }
      const hint = res.status === 401 ? (token === undefined ? ' (set API_TOKEN or pass --token)' : ' (check --token / API_TOKEN)') : '';
      return { kind: 'refused', message: `Playline answered ${describeFailure(parseApiError(res.status, body, text))}${hint}` };
    }
    if (!res.ok || res.body === null) {
      await res.body?.cancel().catch(() => {});
      return { kind: 'lost', why: `HTTP ${res.status}` };
    }
    if (failures > 0) io.stderr.write(`watch: ${everConnected ? 'reconnected' : 'connected'}\n`);
    everConnected = true;
    failures = 0;
    const parser = createParser({ onEvent: (m) => show(m) });
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    try {
      for (;;) {
        const { done, value } = await reader.read();
        if (done) return { kind: 'lost', why: 'the server ended the stream' };
        parser.feed(value);
      }
    } catch (err) {
      if (abort.signal.aborted) return { kind: 'aborted' };
      return { kind: 'lost', why: networkFailure(err) };
    }
  }

  function show(m: EventSourceMessage): void {
    if (m.event === 'resync') {
      screen.line(`watch: events were missed while disconnected (older than the server keeps); what is shown from here is live`);
      return;
    }
    let json: unknown;
    try {
      json = JSON.parse(m.data);
    } catch {
      return;
    }
    const e = eventSchema.safeParse(json);
    if (!e.success) return;
    lastEventId = e.data.id;
    if (values.json) {
      screen.line(m.data);
      return;
    }
    const d = describeEvent(e.data, screen, { quiet: values.quiet });
    if (d.status !== undefined) screen.status(d.status);
    if (d.settle === true) screen.settle();
    if (d.line !== undefined) screen.line(d.line);
  }
}

async function main(): Promise<void> {
  process.exitCode = await run(process.argv.slice(2), processIo());
}

if (isEntryPoint(import.meta.url)) {
  main().catch((err: unknown) => {
    process.stderr.write(`watch: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
