/**
 * `npm run campaign -- contacts.csv`: uploads a CSV of contacts to a running Playline
 * as a new campaign, starts it, and shows its progress until it finishes; also pauses,
 * resumes, cancels or watches an existing campaign. See `--help`. `run(args, io)` is
 * the whole tool; `main()` only wires it to the process.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { basename, isAbsolute, join } from 'node:path';
import { parseArgs } from 'node:util';
import { parse as parseCsv } from 'csv-parse/sync';
import { PHONE_COLUMNS, resultsToCsv } from '../outbound/csv.js';
import {
  campaignSchema,
  createCampaignAnswer,
  describeFailure,
  importReportLines,
  importReportSchema,
  parseApiError,
  readAnswer,
  type ApiFailure,
  type Campaign,
  type ImportReport,
} from './api.js';
import { UsageError, errorMessage, isEntryPoint, networkFailure, processIo, withDotEnv, type CliIo, withUsage } from './io.js';
import { ProgressView } from './progress.js';

export const HELP = `Usage: npm run campaign -- CONTACTS.csv [options]
       npm run campaign -- --watch ID | --pause ID | --resume ID | --cancel ID [--url URL]

Creates a campaign from a CSV file on a running Playline (POST /v1/campaigns),
starts it, and shows its progress until every contact is done: on a terminal one
line updated in place (bar, counts, dials/min, ETA), otherwise one line per second.
The CSV needs a phone column (phone, phone_number, number, to or mobile); an
optional timezone column; every other column is a variable for the templates.

Ctrl-C stops watching only: the campaign keeps running on the server, and the
commands to pause or cancel it are printed. Ctrl-C twice quits at once.

Options:
  --url URL           Playline address (default http://127.0.0.1:$PORT, PORT defaults to 8080)
  --token TOKEN       API token (default $API_TOKEN). Not needed in local mode from this machine.
                      PORT and API_TOKEN are read from ./.env too, as npm start does;
                      variables set in the shell win.
  --name NAME         campaign name (default: the file name)
  --cps N             dials per second (default 1)
  --concurrent N      calls at once (default 5)
  --prompt TEXT       agent prompt; {{column}} is filled from the contact's row
  --greeting TEXT     agent greeting, same templating
  --retries N         attempts per contact in all (default 2) on busy, no-answer and failed
  --retry-delay S     seconds between attempts (default 5)
  --voicemail MODE    continue (default), hangup, or message
  --message TEXT      voicemail message (with --voicemail message)
  --strict            refuse the whole file if any row is bad (default: bad rows are
                      reported and skipped, the others imported)
  --results FILE      write the results CSV there at the end, with the rows the import
                      rejected (state "rejected", the reason in last_error)
  --no-watch          create and start, then exit

  --watch ID          show the progress of an existing campaign until it stops
  --pause ID          stop dialing new contacts (calls in progress finish)
  --resume ID         resume a paused campaign
  --cancel ID         cancel: no more dials; pending contacts end as canceled
  -h, --help          show this help

Exit code: 0 when the campaign completed (or --pause/--resume/--cancel/--no-watch
succeeded); 1 when it stopped otherwise, could not be created (the file's problems
are listed), or Playline could not be reached; 2 on bad options; 130 when Ctrl-C
stopped the watching.
`;

const ACTIONS = ['pause', 'resume', 'cancel'] as const;
type Action = (typeof ACTIONS)[number];

/** Shared by the modes: where Playline is and how to talk to it. */
interface Ctx {
  io: CliIo;
  env: Record<string, string | undefined>;
  base: string;
  headers: Record<string, string>;
  /** Options to repeat in the commands we suggest (`--url …`). */
  repeat: string;
  tokenSet: boolean;
  signal: AbortSignal;
}

/** What Ctrl-C needs to know to explain itself. */
interface WatchState {
  id: string | undefined;
  view: ProgressView | undefined;
  interrupted: boolean;
}

const phoneColumns: readonly string[] = PHONE_COLUMNS;

/**
 * The results CSV from the server plus one row per line the import rejected
 * (`state` "rejected", the reasons in `last_error`), in line order.
 */
export function mergeRejectedRows(serverCsv: string, report: ImportReport | null | undefined): { csv: string; rejected: number } {
  const records: string[][] = parseCsv(serverCsv, { bom: true, relax_column_count: true, skip_empty_lines: true });
  const columns = [...(records[0] ?? ['line', 'phone', 'state', 'outcome', 'attempts', 'last_error'])];
  for (const c of ['line', 'phone', 'state', 'last_error']) if (!columns.includes(c)) columns.push(c);
  const rows: Array<Record<string, string>> = records.slice(1).map((r) => Object.fromEntries(columns.map((c, i) => [c, r[i] ?? ''])));
  const byLine = new Map<number, { phone: string; reasons: string[] }>();
  for (const e of report?.errors ?? []) {
    const entry = byLine.get(e.line) ?? { phone: '', reasons: [] };
    if (e.value && e.column && phoneColumns.includes(e.column.trim().toLowerCase())) entry.phone = e.value;
    entry.reasons.push(`${e.column ? `${e.column}: ` : ''}${e.message}`);
    byLine.set(e.line, entry);
  }
  for (const [line, e] of byLine) rows.push({ line: String(line), phone: e.phone, state: 'rejected', last_error: e.reasons.join('; ') });
  const lineOf = (r: Record<string, string>): number => {
    const n = Number(r.line);
    return Number.isFinite(n) && r.line !== '' ? n : Number.MAX_SAFE_INTEGER;
  };
  rows.sort((a, b) => lineOf(a) - lineOf(b));
  return { csv: resultsToCsv(rows, columns), rejected: byLine.size };
}

/** What to type to pause, cancel or watch campaign `id` again. */
export function controlHelp(base: string, id: string, repeat: string, tokenSet: boolean): string[] {
  const auth = tokenSet ? ' -H "Authorization: Bearer $API_TOKEN"' : '';
  return [
    `  pause it:    npm run campaign -- --pause ${id}${repeat}`,
    `  cancel it:   npm run campaign -- --cancel ${id}${repeat}`,
    `  watch again: npm run campaign -- --watch ${id}${repeat}`,
    `  or with curl: curl -X POST${auth} ${base}/v1/campaigns/${id}/pause   (…/resume, …/cancel)`,
  ];
}

/**
 * The Ctrl-C handler: the first press stops watching (aborts `abort`) and says how to
 * pause or cancel the campaign that keeps running; the second exits at once.
 */
export function sigintHandler(ctx: Pick<Ctx, 'io' | 'base' | 'repeat' | 'tokenSet'>, state: WatchState, abort: AbortController): () => void {
  return () => {
    if (state.interrupted) {
      ctx.io.exit(130);
      return;
    }
    state.interrupted = true;
    state.view?.finish();
    const lines =
      state.id === undefined
        ? [
            'campaign: interrupted before Playline answered; the campaign may have been created anyway.',
            `  list campaigns: curl${ctx.tokenSet ? ' -H "Authorization: Bearer $API_TOKEN"' : ''} ${ctx.base}/v1/campaigns`,
          ]
        : [`campaign: stopped watching. Campaign ${state.id} keeps running on the server.`, ...controlHelp(ctx.base, state.id, ctx.repeat, ctx.tokenSet)];
    ctx.io.stderr.write(`${lines.join('\n')}\n(Ctrl-C again quits at once)\n`);
    abort.abort();
  };
}

/** One line for a failed request, and the import report when the failure carries one. */
function reportFailure(ctx: Ctx, what: string, f: ApiFailure): void {
  ctx.io.stderr.write(`campaign: ${what}: Playline answered ${describeFailure(f)}\n`);
  const report = importReportSchema.safeParse(f.details);
  if (report.success) {
    const lines = importReportLines(report.data);
    if (lines.length > 0) ctx.io.stderr.write(`${lines.join('\n')}\n`);
  } else if (f.details !== undefined && f.status === 400) {
    ctx.io.stderr.write(`${JSON.stringify(f.details, null, 2)}\n`);
  }
}

/** A request; network failures come back as one line saying what to do. */
async function request(ctx: Ctx, path: string, init: RequestInit = {}): Promise<Response | { down: string }> {
  try {
    return await ctx.io.fetch(`${ctx.base}${path}`, { ...init, headers: ctx.headers, signal: ctx.signal });
  } catch (err) {
    if (ctx.signal.aborted) throw err;
    return { down: `campaign: cannot reach Playline at ${ctx.base} (${networkFailure(err)}). Start it first (npm start), or point at it with --url URL or PORT (in the shell or .env).` };
  }
}

type WatchEnd = { kind: 'stopped'; campaign: Campaign } | { kind: 'interrupted' } | { kind: 'failed' };

async function watch(ctx: Ctx, state: WatchState, id: string): Promise<WatchEnd> {
  const { io } = ctx;
  const view = new ProgressView(io.stdout, ctx.env);
  state.view = view;
  state.id = id;
  const started = io.now();
  try {
    for (;;) {
      const res = await request(ctx, `/v1/campaigns/${encodeURIComponent(id)}`);
      if ('down' in res) {
        view.finish();
        io.stderr.write(`${res.down}\nThe campaign may still be running there; watch it again with npm run campaign -- --watch ${id}${ctx.repeat}\n`);
        return { kind: 'failed' };
      }
      const a = await readAnswer(res, campaignSchema);
      if (ctx.signal.aborted) return { kind: 'interrupted' };
      if (!a.ok) {
        view.finish();
        reportFailure(ctx, `progress of campaign ${id}`, a.failure);
        return { kind: 'failed' };
      }
      view.update(a.data, (io.now() - started) / 1000);
      if (a.data.status !== 'running') {
        view.finish();
        return { kind: 'stopped', campaign: a.data };
      }
      await io.sleep(1000, ctx.signal);
    }
  } catch (err) {
    if (ctx.signal.aborted) return { kind: 'interrupted' };
    throw err;
  } finally {
    state.view = undefined;
  }
}

/** Writes the results CSV (with the rejected rows) to `file`; false when it could not be fetched. */
async function writeResults(ctx: Ctx, id: string, file: string, report: ImportReport | null | undefined): Promise<boolean> {
  const res = await request(ctx, `/v1/campaigns/${encodeURIComponent(id)}/results.csv`);
  if ('down' in res) {
    ctx.io.stderr.write(`${res.down}\n`);
    return false;
  }
  const text = await res.text();
  if (!res.ok) {
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      body = undefined;
    }
    reportFailure(ctx, `results of campaign ${id}`, parseApiError(res.status, body, text));
    return false;
  }
  const merged = mergeRejectedRows(text, report);
  writeFileSync(isAbsolute(file) ? file : join(ctx.io.cwd, file), merged.csv);
  ctx.io.stdout.write(`results written to ${file}${merged.rejected > 0 ? ` (with ${merged.rejected} rejected row(s))` : ''}\n`);
  return true;
}

/** After watching: what happened, the results file, and the exit code. */
async function conclude(ctx: Ctx, end: WatchEnd, id: string, resultsFile: string | undefined, report: ImportReport | null | undefined): Promise<number> {
  const { io } = ctx;
  if (end.kind === 'interrupted') {
    if (resultsFile !== undefined) {
      io.stderr.write(
        `results not written (the campaign is still running); later: curl -o ${resultsFile} ${ctx.base}/v1/campaigns/${id}/results.csv` +
          `${report && report.errors.length > 0 ? ' (the rows the import rejected are listed above, not in that file)' : ''}\n`,
      );
    }
    return 130;
  }
  if (end.kind === 'failed') return 1;
  const c = end.campaign;
  const outcomes = Object.entries(c.progress.counts.byOutcome)
    .map(([k, v]) => `${v} ${k}`)
    .join(', ');
  if (c.status === 'completed') {
    io.stdout.write(`campaign ${id} completed: ${c.progress.counts.total} contact(s)${outcomes ? `, ${outcomes}` : ''}\n`);
  } else if (c.status === 'paused') {
    io.stdout.write(
      `campaign ${id} paused${c.pauseReason ? `: ${c.pauseReason}` : ''}${c.lastError ? ` (${c.lastError})` : ''}; resume with npm run campaign -- --resume ${id}${ctx.repeat}\n`,
    );
  } else {
    io.stdout.write(`campaign ${id} is ${c.status}${c.lastError ? ` (${c.lastError})` : ''}\n`);
  }
  let ok = true;
  if (resultsFile !== undefined) ok = await writeResults(ctx, id, resultsFile, report);
  else io.stdout.write(`results: ${ctx.base}/v1/campaigns/${id}/results.csv\n`);
  return c.status === 'completed' && ok ? 0 : 1;
}

export function run(args: string[], io: CliIo): Promise<number> {
  return withUsage('campaign', HELP, io, () => campaign(args, io));
}

async function campaign(args: string[], io: CliIo): Promise<number> {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      allowPositionals: true,
      strict: true,
      options: {
        url: { type: 'string' },
        token: { type: 'string' },
        name: { type: 'string' },
        cps: { type: 'string' },
        concurrent: { type: 'string' },
        prompt: { type: 'string' },
        greeting: { type: 'string' },
        retries: { type: 'string' },
        'retry-delay': { type: 'string' },
        voicemail: { type: 'string' },
        message: { type: 'string' },
        strict: { type: 'boolean', default: false },
        results: { type: 'string' },
        'no-watch': { type: 'boolean', default: false },
        watch: { type: 'string' },
        pause: { type: 'string' },
        resume: { type: 'string' },
        cancel: { type: 'string' },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (err) {
    throw new UsageError(errorMessage(err));
  }
  const { values, positionals } = parsed;
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
  const token = values.token ?? (env.API_TOKEN || undefined);
  const abort = new AbortController();
  const ctx: Ctx = {
    io,
    env,
    base,
    headers: token !== undefined ? { authorization: `Bearer ${token}` } : {},
    repeat: `${values.url !== undefined ? ` --url ${base}` : ''}${values.token !== undefined ? ' --token TOKEN' : ''}`,
    tokenSet: token !== undefined,
    signal: abort.signal,
  };

  const modes = [
    ...ACTIONS.filter((a) => values[a] !== undefined).map((a) => `--${a}`),
    ...(values.watch !== undefined ? ['--watch'] : []),
    ...(positionals.length > 0 ? ['a CSV file'] : []),
  ];
  if (modes.length === 0) throw new UsageError('give the CSV file of contacts (or --watch/--pause/--resume/--cancel ID)');
  if (modes.length > 1) throw new UsageError(`give one of ${modes.join(', ')}, not several`);
  if (positionals.length > 1) throw new UsageError(`one CSV file at a time (got ${positionals.length})`);

  const action = ACTIONS.find((a) => values[a] !== undefined);
  if (action !== undefined) return act(ctx, action, values[action] ?? '');

  const state: WatchState = { id: undefined, view: undefined, interrupted: false };
  const offSigint = io.onSigint(sigintHandler(ctx, state, abort));
  try {
    if (values.watch !== undefined) {
      const end = await watch(ctx, state, values.watch);
      return await conclude(ctx, end, values.watch, values.results, undefined);
    }
    return await create(ctx, state, values, positionals[0] ?? '');
  } catch (err) {
    if (abort.signal.aborted) return 130;
    throw err;
  } finally {
    offSigint();
  }
}

async function act(ctx: Ctx, action: Action, id: string): Promise<number> {
  const res = await request(ctx, `/v1/campaigns/${encodeURIComponent(id)}/${action}`, { method: 'POST' });
  if ('down' in res) {
    ctx.io.stderr.write(`${res.down}\n`);
    return 1;
  }
  const a = await readAnswer(res, campaignSchema);
  if (!a.ok) {
    reportFailure(ctx, `${action} campaign ${id}`, a.failure);
    return 1;
  }
  const c = a.data;
  const counts = c.progress.counts;
  const next =
    c.status === 'paused'
      ? `calls in progress finish; resume with npm run campaign -- --resume ${id}${ctx.repeat}`
      : c.status === 'running'
        ? `watch it with npm run campaign -- --watch ${id}${ctx.repeat}`
        : `results: ${ctx.base}/v1/campaigns/${id}/results.csv`;
  ctx.io.stdout.write(`campaign ${id} is now ${c.status} (${counts.byState.done ?? 0}/${counts.total} done); ${next}\n`);
  return 0;
}

interface CreateOptions {
  name?: string | undefined;
  cps?: string | undefined;
  concurrent?: string | undefined;
  prompt?: string | undefined;
  greeting?: string | undefined;
  retries?: string | undefined;
  'retry-delay'?: string | undefined;
  voicemail?: string | undefined;
  message?: string | undefined;
  strict?: boolean | undefined;
  results?: string | undefined;
  'no-watch'?: boolean | undefined;
}

async function create(ctx: Ctx, state: WatchState, values: CreateOptions, file: string): Promise<number> {
  const { io } = ctx;
  const path = isAbsolute(file) ? file : join(io.cwd, file);
  if (!existsSync(path)) throw new UsageError(`no such file: ${file}`);
  const num = (name: string, v: string | undefined, def: number): number => {
    if (v === undefined) return def;
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new UsageError(`--${name} must be a positive number (got ${JSON.stringify(v)})`);
    return n;
  };
  const voicemail = values.voicemail ?? 'continue';
  if (!['continue', 'hangup', 'message'].includes(voicemail)) throw new UsageError('--voicemail must be continue, hangup or message');
  if (voicemail === 'message' && values.message === undefined) throw new UsageError('--voicemail message needs --message TEXT');
  if (values['no-watch'] === true && values.results !== undefined) throw new UsageError('--results writes the results at the end of the campaign: leave out --no-watch');

  const settings: Record<string, unknown> = {
    callsPerSecond: num('cps', values.cps, 1),
    maxConcurrent: Math.round(num('concurrent', values.concurrent, 5)),
    retry: { maxAttempts: Math.round(num('retries', values.retries, 2)), on: ['busy', 'no-answer', 'failed'], delaySeconds: Math.round(num('retry-delay', values['retry-delay'], 5)) },
    voicemail: voicemail === 'message' ? { action: 'message', message: values.message } : { action: voicemail },
  };
  if (values.prompt !== undefined) settings.prompt = values.prompt;
  if (values.greeting !== undefined) settings.customGreeting = values.greeting;

  const form = new FormData();
  form.set('name', values.name ?? basename(file));
  form.set('settings', JSON.stringify(settings));
  form.set('start', 'true');
  form.set('file', new Blob([readFileSync(path)], { type: 'text/csv' }), basename(file));
  const res = await request(ctx, `/v1/campaigns${values.strict === true ? '?strict=true' : ''}`, { method: 'POST', body: form });
  if ('down' in res) {
    io.stderr.write(`${res.down}\n`);
    return 1;
  }
  const a = await readAnswer(res, createCampaignAnswer);
  if (!a.ok) {
    reportFailure(ctx, `${file} was not accepted`, a.failure);
    if (a.failure.status === 422) {
      io.stderr.write(
        `Nothing was created. Fix the lines above and run again${values.strict === true ? ', or leave out --strict to import the good rows and skip the bad ones' : ''}.\n`,
      );
    }
    return 1;
  }
  const imp = a.data.import;
  const id = a.data.campaign.id;
  state.id = id;
  io.stdout.write(`campaign ${id}: ${imp?.added ?? 0} contact(s) imported from ${imp?.rows ?? 0} row(s)${imp && imp.errors.length > 0 ? `, ${imp.errors.length} rejected` : ''}\n`);
  if (imp) {
    const lines = importReportLines(imp, 20, ' (not imported)');
    if (lines.length > 0) io.stdout.write(`${lines.join('\n')}\n`);
  }
  if ((imp?.added ?? 0) === 0 && a.data.campaign.progress.counts.total === 0) {
    io.stderr.write(`campaign: no contacts were imported from ${file}, so campaign ${id} has nothing to dial. Fix the file and run again.\n`);
    return 1;
  }
  if (values['no-watch'] === true) {
    io.stdout.write(`campaign ${id} started.\n${controlHelp(ctx.base, id, ctx.repeat, ctx.tokenSet).join('\n')}\n`);
    return 0;
  }
  const end = await watch(ctx, state, id);
  return conclude(ctx, end, id, values.results, imp);
}

async function main(): Promise<void> {
  process.exitCode = await run(process.argv.slice(2), processIo());
}

if (isEntryPoint(import.meta.url)) {
  main().catch((err: unknown) => {
    process.stderr.write(`campaign: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  });
}
