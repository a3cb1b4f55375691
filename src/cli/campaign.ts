/**
 * `npm run campaign -- contacts.csv`: uploads a CSV of contacts to a running
 * Playline as a new campaign, starts it, and shows its progress until it
 * finishes. See `--help`.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { basename } from 'node:path';
import { parseArgs } from 'node:util';

const HELP = `Usage: npm run campaign -- CONTACTS.csv [options]

Creates a campaign from a CSV file on a running Playline (POST /v1/campaigns),
starts it, and prints its progress every second until every contact is done.
The CSV needs a phone column (phone, phone_number, number, to or mobile); an
optional timezone column; every other column is a variable for the templates.

Options:
  --url URL           Playline address (default http://127.0.0.1:$PORT, PORT defaults to 8080)
  --token TOKEN       API token (default $API_TOKEN; .env is loaded first when present).
                      Not needed in local mode from this machine.
  --name NAME         campaign name (default: the file name)
  --cps N             dials per second (default 1)
  --concurrent N      calls at once (default 5)
  --prompt TEXT       agent prompt; {{column}} is filled from the contact's row
  --greeting TEXT     agent greeting, same templating
  --retries N         attempts per contact in all (default 2) on busy, no-answer and failed
  --retry-delay S     seconds between attempts (default 5)
  --voicemail MODE    continue (default), hangup, or message
  --message TEXT      voicemail message (with --voicemail message)
  --results FILE      write the results CSV there at the end
  --no-watch          create and start, then exit
  -h, --help          show this help

Exit code: 0 when the campaign completed, 1 when it stopped otherwise or failed
to start, 2 on bad options.
`;

function fail(msg: string): never {
  process.stderr.write(`campaign: ${msg}\n\n${HELP}`);
  process.exit(2);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

interface Progress {
  counts: { total: number; byState: Record<string, number>; byOutcome: Record<string, number>; attempts: number };
  activeCalls: number;
  dialsLastMinute: number;
  etaSeconds: number | null;
}
interface Campaign {
  id: string;
  status: string;
  pauseReason: string | null;
  lastError: string | null;
  progress: Progress;
}

async function main(): Promise<void> {
  if (existsSync('.env')) process.loadEnvFile('.env');
  const { values, positionals } = parseArgs({
    allowPositionals: true,
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
      results: { type: 'string' },
      'no-watch': { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help === true) {
    process.stdout.write(HELP);
    return;
  }
  const file = positionals[0];
  if (file === undefined) fail('give the CSV file of contacts');
  if (!existsSync(file)) fail(`no such file: ${file}`);
  const num = (name: string, v: string | undefined, def: number): number => {
    if (v === undefined) return def;
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) fail(`--${name} must be a positive number (got ${JSON.stringify(v)})`);
    return n;
  };
  const voicemail = values.voicemail ?? 'continue';
  if (!['continue', 'hangup', 'message'].includes(voicemail)) fail('--voicemail must be continue, hangup or message');
  if (voicemail === 'message' && values.message === undefined) fail('--voicemail message needs --message TEXT');
  const base = (values.url ?? `http://127.0.0.1:${process.env.PORT ?? 8080}`).replace(/\/+$/, '');
  const token = values.token ?? process.env.API_TOKEN;
  const headers: Record<string, string> = token ? { authorization: `Bearer ${token}` } : {};

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
  form.set('file', new Blob([readFileSync(file)], { type: 'text/csv' }), basename(file));
  let res: Response;
  try {
    res = await fetch(`${base}/v1/campaigns`, { method: 'POST', body: form, headers });
  } catch (err) {
    process.stderr.write(`campaign: cannot reach Playline at ${base} (${(err as Error).message}). Is it running (npm start)?\n`);
    process.exit(1);
  }
  const body = (await res.json()) as { campaign?: Campaign; import?: { rows: number; added: number; errors: Array<{ line: number; message: string; column?: string }>; duplicates: Array<{ line: number; firstLine: number }> }; message?: string; details?: unknown };
  if (res.status !== 201 || body.campaign === undefined) {
    process.stderr.write(`campaign: Playline answered ${res.status}: ${body.message ?? JSON.stringify(body)}\n`);
    if (body.details !== undefined) process.stderr.write(`${JSON.stringify(body.details, null, 2)}\n`);
    process.exit(1);
  }
  const imp = body.import;
  const id = body.campaign.id;
  process.stdout.write(`campaign ${id}: ${imp?.added ?? 0} contacts imported from ${imp?.rows ?? 0} rows\n`);
  for (const e of imp?.errors ?? []) process.stdout.write(`  line ${e.line}${e.column ? ` (${e.column})` : ''}: ${e.message} (not imported)\n`);
  for (const d of imp?.duplicates ?? []) process.stdout.write(`  line ${d.line}: same number as line ${d.firstLine}, merged\n`);
  if (values['no-watch'] === true) return;

  const started = Date.now();
  let c: Campaign = body.campaign;
  for (;;) {
    await sleep(1000);
    const r = await fetch(`${base}/v1/campaigns/${id}`, { headers });
    if (!r.ok) {
      process.stderr.write(`campaign: progress request answered ${r.status}\n`);
      process.exit(1);
    }
    c = (await r.json()) as Campaign;
    const p = c.progress;
    const outcomes = Object.entries(p.counts.byOutcome)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ');
    const t = Math.round((Date.now() - started) / 1000);
    process.stdout.write(
      `[${String(t).padStart(4)} s] ${c.status.padEnd(9)} done ${p.counts.byState.done}/${p.counts.total}` +
        ` · in flight ${p.counts.byState.dialing} · attempts ${p.counts.attempts} · ${p.dialsLastMinute} dials/min` +
        `${p.etaSeconds !== null && c.status === 'running' ? ` · ETA ${p.etaSeconds} s` : ''}${outcomes ? ` · ${outcomes}` : ''}\n`,
    );
    if (c.status !== 'running') break;
  }
  if (c.status === 'paused') process.stdout.write(`campaign paused: ${c.pauseReason ?? ''}${c.lastError ? ` (${c.lastError})` : ''}\n`);
  if (values.results !== undefined) {
    const r = await fetch(`${base}/v1/campaigns/${id}/results.csv`, { headers });
    writeFileSync(values.results, await r.text());
    process.stdout.write(`results written to ${values.results}\n`);
  } else {
    process.stdout.write(`results: ${base}/v1/campaigns/${id}/results.csv\n`);
  }
  process.exit(c.status === 'completed' ? 0 : 1);
}

main().catch((err: unknown) => {
  process.stderr.write(`campaign: ${err instanceof Error ? err.message : String(err)}\n`);
  process.exit(1);
});
