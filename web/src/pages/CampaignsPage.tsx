/** Campaigns: the list with live progress, and a new campaign from a CSV file (import report first, then Start). */
import { useState } from 'preact/hooks';
import { ApiError, api, messageOf, qs } from '../api';
import { usePollingFallback, useEvents } from '../events';
import { eta, time } from '../format';
import { campaign as campaignSchema, campaignPage, createCampaignReply, importReport, progressData, type Campaign, type ImportReport } from '../schemas';
import { Badge, CampaignProgress, ErrorBox, useAsync, useThrottled } from '../ui';

export function ImportReportView(props: { report: ImportReport; title?: string }) {
  const r = props.report;
  return (
    <div class="report" aria-label="Import report">
      <h3>{props.title ?? 'Import report'}</h3>
      <p data-field="import-summary">
        {r.rows} row{r.rows === 1 ? '' : 's'} read, <strong>{r.added} added</strong>
        {r.errors.length > 0 && `, ${r.errors.length} with errors`}
        {r.duplicates.length > 0 && `, ${r.duplicates.length} duplicate${r.duplicates.length === 1 ? '' : 's'} merged`}
        {r.mergedIntoExisting.length > 0 && `, ${r.mergedIntoExisting.length} merged into existing contacts`}.
      </p>
      {r.errors.length > 0 && (
        <div class="table-wrap">
          <table>
            <caption>Rows not imported</caption>
            <thead>
              <tr>
                <th scope="col">Line</th>
                <th scope="col">Column</th>
                <th scope="col">Problem</th>
                <th scope="col">Value</th>
              </tr>
            </thead>
            <tbody>
              {r.errors.slice(0, 200).map((e, i) => (
                <tr key={i}>
                  <td class="mono">{e.line}</td>
                  <td>{e.column ?? ''}</td>
                  <td>{e.message}</td>
                  <td class="mono">{e.value ?? ''}</td>
                </tr>
              ))}
            </tbody>
          </table>
          {r.errors.length > 200 && <p class="muted">…and {r.errors.length - 200} more.</p>}
        </div>
      )}
      {r.duplicates.length > 0 && (
        <details>
          <summary>Duplicates ({r.duplicates.length})</summary>
          <ul>
            {r.duplicates.slice(0, 200).map((d, i) => (
              <li key={i}>
                Line {d.line}: {d.phone} is the same number as line {d.firstLine}
              </li>
            ))}
          </ul>
        </details>
      )}
    </div>
  );
}

function NewCampaign(props: { onCreated: () => void }) {
  const [name, setName] = useState('');
  const [file, setFile] = useState<File | undefined>();
  const [cps, setCps] = useState('');
  const [maxConcurrent, setMaxConcurrent] = useState('');
  const [prompt, setPrompt] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | undefined>();
  const [refused, setRefused] = useState<ImportReport | undefined>();
  const [created, setCreated] = useState<{ campaign: Campaign; report: ImportReport | null } | undefined>();
  const [started, setStarted] = useState(false);

  const submit = async (e: Event): Promise<void> => {
    e.preventDefault();
    setError(undefined);
    setRefused(undefined);
    setCreated(undefined);
    setStarted(false);
    if (file === undefined) {
      setError('Choose a CSV file with a phone column.');
      return;
    }
    const form = new FormData();
    form.set('name', name.trim() === '' ? file.name.replace(/\.csv$/i, '') : name.trim());
    const settings: Record<string, unknown> = {};
    if (cps.trim() !== '') settings.callsPerSecond = Number(cps);
    if (maxConcurrent.trim() !== '') settings.maxConcurrent = Number(maxConcurrent);
    if (prompt.trim() !== '') settings.prompt = prompt.trim();
    form.set('settings', JSON.stringify(settings));
    form.set('start', 'false');
    form.set('file', file, file.name);
    setBusy(true);
    try {
      const reply = await api(createCampaignReply, '/v1/campaigns', { form });
      setCreated({ campaign: reply.campaign, report: reply.import });
      props.onCreated();
    } catch (err) {
      setError(messageOf(err));
      if (err instanceof ApiError) {
        const r = importReport.safeParse(err.details);
        if (r.success) setRefused(r.data);
      }
    } finally {
      setBusy(false);
    }
  };

  const start = async (): Promise<void> => {
    if (created === undefined) return;
    setBusy(true);
    try {
      const c = await api(campaignSchema, `/v1/campaigns/${encodeURIComponent(created.campaign.id)}/start`, { method: 'POST' });
      setCreated({ ...created, campaign: c });
      setStarted(true);
      props.onCreated();
    } catch (err) {
      setError(messageOf(err));
    } finally {
      setBusy(false);
    }
  };

  return (
    <details class="card new-campaign" open>
      <summary>
        <h2>New campaign from a CSV file</h2>
      </summary>
      <form onSubmit={(e) => void submit(e)} aria-label="New campaign">
        <p class="muted small">
          One contact per line, with a header row: a phone column (phone, number, to…), an optional timezone, and any other columns as variables for the prompt
          (e.g. <code>{'{{name}}'}</code>). Nothing is dialed until you press Start.
        </p>
        <div class="form-grid">
          <div class="field">
            <label for="c-name">Name</label>
            <input id="c-name" value={name} onInput={(e) => setName(e.currentTarget.value)} placeholder="Spring reminders" />
          </div>
          <div class="field">
            <label for="c-file">Contacts (CSV)</label>
            <input id="c-file" type="file" accept=".csv,text/csv" required onChange={(e) => setFile(e.currentTarget.files?.[0])} />
          </div>
          <div class="field">
            <label for="c-cps">Calls per second</label>
            <input id="c-cps" type="number" min="0.1" step="0.1" inputMode="decimal" value={cps} onInput={(e) => setCps(e.currentTarget.value)} placeholder="default" />
          </div>
          <div class="field">
            <label for="c-max">Max concurrent calls</label>
            <input id="c-max" type="number" min="1" step="1" inputMode="numeric" value={maxConcurrent} onInput={(e) => setMaxConcurrent(e.currentTarget.value)} placeholder="default" />
          </div>
          <div class="field wide">
            <label for="c-prompt">Prompt (optional)</label>
            <textarea id="c-prompt" rows={2} value={prompt} onInput={(e) => setPrompt(e.currentTarget.value)} placeholder="Remind {{name}} of the appointment." />
          </div>
        </div>
        <button type="submit" class="primary" disabled={busy}>
          {busy && created === undefined ? 'Uploading…' : 'Upload and check'}
        </button>
      </form>
      {error !== undefined && (
        <p class="error" role="alert">
          {error}
        </p>
      )}
      {refused !== undefined && <ImportReportView report={refused} title="Nothing was imported" />}
      {created !== undefined && (
        <div class="created" role="status">
          <p>
            Created <a href={`/campaigns/${encodeURIComponent(created.campaign.id)}`}>{created.campaign.name}</a> ({created.campaign.status}).
          </p>
          {created.report !== null && <ImportReportView report={created.report} />}
          {!started ? (
            <button type="button" class="primary" onClick={() => void start()} disabled={busy || created.campaign.progress.counts.total === 0}>
              Start dialing
            </button>
          ) : (
            <p>Started: progress is shown below.</p>
          )}
        </div>
      )}
    </details>
  );
}

export function CampaignsPage() {
  const [cursors, setCursors] = useState<string[]>([]);
  const cursor = cursors[cursors.length - 1];
  const list = useAsync((signal) => api(campaignPage, `/v1/campaigns${qs({ cursor, limit: 20 })}`, { signal }), [cursor]);
  const refetch = useThrottled(list.reload, 1000);
  useEvents((e) => {
    if (e.type === 'campaign.progress' && e.campaignId != null && list.data !== undefined) {
      const d = progressData.safeParse(e.data);
      if (!d.success) return;
      const id = e.campaignId;
      if (!list.data.data.some((c) => c.id === id)) return;
      list.set({
        ...list.data,
        data: list.data.data.map((c) =>
          c.id === id ? { ...c, status: d.data.status, progress: { ...c.progress, counts: d.data.counts, activeCalls: d.data.activeCalls ?? c.progress.activeCalls, etaSeconds: d.data.etaSeconds ?? null } } : c,
        ),
      });
    } else if (e.type === 'campaign.completed') refetch();
  }, list.reload);
  const running = list.data?.data.some((c) => c.status === 'running') ?? false;
  usePollingFallback(list.reload, 2000, running);

  return (
    <section aria-labelledby="campaigns-title">
      <div class="page-head">
        <h1 id="campaigns-title">Campaigns</h1>
      </div>
      <NewCampaign onCreated={list.reload} />
      <ErrorBox error={list.error} onRetry={list.reload} />
      {list.data !== undefined && list.data.data.length === 0 && <p class="empty">No campaigns yet. Upload a CSV above (examples/contacts.csv is one to try).</p>}
      <ul class="cards" aria-label="Campaigns">
        {list.data?.data.map((c) => (
          <li key={c.id} class="card campaign" data-campaign-id={c.id}>
            <div class="row spread">
              <a href={`/campaigns/${encodeURIComponent(c.id)}`} class="strong">
                {c.name}
              </a>
              <Badge value={c.status} />
            </div>
            <CampaignProgress counts={c.progress.counts} label={`Progress of ${c.name}`} />
            <p class="muted small">
              {c.progress.activeCalls} active · ETA {c.status === 'running' ? eta(c.progress.etaSeconds) : '–'} · created {time(c.createdAt)}
              {c.pauseReason !== null && ` · paused: ${c.pauseReason}`}
            </p>
          </li>
        ))}
      </ul>
      <nav class="pager" aria-label="Pages">
        <button type="button" disabled={cursors.length === 0} onClick={() => setCursors(cursors.slice(0, -1))}>
          Newer
        </button>
        <button
          type="button"
          disabled={list.data?.nextCursor == null}
          onClick={() => {
            const n = list.data?.nextCursor;
            if (n != null) setCursors([...cursors, n]);
          }}
        >
          Older
        </button>
      </nav>
    </section>
  );
}
