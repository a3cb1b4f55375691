/** One campaign: progress (live), actions, contacts with filters, results.csv. */
import { useState } from 'preact/hooks';
import { api, download, messageOf, qs } from '../api';
import { usePollingFallback, useEvents } from '../events';
import { eta, time } from '../format';
import { campaign as campaignSchema, contactPage, progressData } from '../schemas';
import { Badge, CampaignProgress, ErrorBox, useAsync, useThrottled } from '../ui';

const OUTCOMES = ['', 'answered', 'voicemail', 'busy', 'no-answer', 'failed', 'canceled', 'dnc', 'invalid-number'];

function Contacts(props: { id: string; version: number }) {
  const [state, setState] = useState('');
  const [outcome, setOutcome] = useState('');
  const [cursors, setCursors] = useState<string[]>([]);
  const cursor = cursors[cursors.length - 1];
  const page = useAsync(
    (signal) => api(contactPage, `/v1/campaigns/${encodeURIComponent(props.id)}/contacts${qs({ state, outcome, cursor, limit: 25 })}`, { signal }),
    [props.id, state, outcome, cursor, props.version],
  );
  return (
    <div class="card">
      <h2>Contacts</h2>
      <form class="filters" onSubmit={(e) => e.preventDefault()} aria-label="Filter contacts">
        <div class="field">
          <label for="k-state">State</label>
          <select
            id="k-state"
            value={state}
            onChange={(e) => {
              setCursors([]);
              setState(e.currentTarget.value);
            }}
          >
            <option value="">Any</option>
            <option value="pending">Pending</option>
            <option value="dialing">Dialing</option>
            <option value="done">Done</option>
          </select>
        </div>
        <div class="field">
          <label for="k-outcome">Outcome</label>
          <select
            id="k-outcome"
            value={outcome}
            onChange={(e) => {
              setCursors([]);
              setOutcome(e.currentTarget.value);
            }}
          >
            {OUTCOMES.map((o) => (
              <option key={o} value={o}>
                {o === '' ? 'Any' : o}
              </option>
            ))}
          </select>
        </div>
      </form>
      <ErrorBox error={page.error} onRetry={page.reload} />
      {page.data !== undefined && page.data.data.length === 0 && <p class="muted">No contacts match.</p>}
      {page.data !== undefined && page.data.data.length > 0 && (
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Line</th>
                <th scope="col">Phone</th>
                <th scope="col">State</th>
                <th scope="col">Outcome</th>
                <th scope="col">Attempts</th>
                <th scope="col">Last call</th>
                <th scope="col">Updated</th>
              </tr>
            </thead>
            <tbody>
              {page.data.data.map((c) => (
                <tr key={c.id}>
                  <td class="mono">{c.line ?? ''}</td>
                  <td class="mono">{c.phone}</td>
                  <td>
                    <Badge value={c.state} />
                  </td>
                  <td>{c.outcome ?? '–'}</td>
                  <td>{c.attempts}</td>
                  <td>{c.lastCallId !== null ? <a href={`/calls/${encodeURIComponent(c.lastCallId)}`}>view</a> : '–'}</td>
                  <td>{time(c.updatedAt)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <nav class="pager" aria-label="Contact pages">
        <button type="button" disabled={cursors.length === 0} onClick={() => setCursors(cursors.slice(0, -1))}>
          Previous
        </button>
        <button
          type="button"
          disabled={page.data?.nextCursor == null}
          onClick={() => {
            const n = page.data?.nextCursor;
            if (n != null) setCursors([...cursors, n]);
          }}
        >
          Next
        </button>
      </nav>
    </div>
  );
}

export function CampaignPage(props: { id: string }) {
  const c = useAsync((signal) => api(campaignSchema, `/v1/campaigns/${encodeURIComponent(props.id)}`, { signal }), [props.id]);
  const [busy, setBusy] = useState(false);
  const [message, setMessage] = useState<string | undefined>();
  const [version, setVersion] = useState(0);
  const refetch = useThrottled(() => {
    c.reload();
    setVersion((v) => v + 1);
  }, 2000);
  useEvents((e) => {
    if (e.campaignId !== props.id) return;
    if (e.type === 'campaign.progress' && c.data !== undefined) {
      const d = progressData.safeParse(e.data);
      if (d.success) {
        c.set({ ...c.data, status: d.data.status, progress: { ...c.data.progress, counts: d.data.counts, activeCalls: d.data.activeCalls ?? c.data.progress.activeCalls, etaSeconds: d.data.etaSeconds ?? null } });
      }
    }
    refetch();
  }, c.reload);
  usePollingFallback(refetch, 2000, c.data?.status === 'running');

  const act = async (action: 'start' | 'pause' | 'resume' | 'cancel'): Promise<void> => {
    if (action === 'cancel' && !window.confirm('Cancel this campaign? Pending contacts will not be called.')) return;
    setBusy(true);
    setMessage(undefined);
    try {
      c.set(await api(campaignSchema, `/v1/campaigns/${encodeURIComponent(props.id)}/${action}`, { method: 'POST' }));
      setVersion((v) => v + 1);
    } catch (err) {
      setMessage(messageOf(err));
    } finally {
      setBusy(false);
    }
  };
  const results = async (): Promise<void> => {
    setMessage(undefined);
    try {
      await download(`/v1/campaigns/${encodeURIComponent(props.id)}/results.csv`, `${props.id}-results.csv`);
    } catch (err) {
      setMessage(messageOf(err));
    }
  };

  const d = c.data;
  return (
    <section aria-labelledby="campaign-title">
      <p>
        <a href="/campaigns">← Campaigns</a>
      </p>
      <div class="page-head">
        <h1 id="campaign-title">{d?.name ?? 'Campaign'}</h1>
        {d !== undefined && <Badge value={d.status} />}
      </div>
      <ErrorBox error={c.error} onRetry={c.reload} />
      {d !== undefined && (
        <>
          <div class="card">
            <CampaignProgress counts={d.progress.counts} label={`Progress of ${d.name}`} />
            <dl class="facts">
              <div>
                <dt>Pending</dt>
                <dd>{d.progress.counts.byState.pending}</dd>
              </div>
              <div>
                <dt>Dialing</dt>
                <dd>{d.progress.counts.byState.dialing}</dd>
              </div>
              <div>
                <dt>Done</dt>
                <dd>{d.progress.counts.byState.done}</dd>
              </div>
              <div>
                <dt>Active calls</dt>
                <dd>{d.progress.activeCalls}</dd>
              </div>
              <div>
                <dt>ETA</dt>
                <dd>{d.status === 'running' ? eta(d.progress.etaSeconds) : '–'}</dd>
              </div>
              {Object.entries(d.progress.counts.byOutcome)
                .filter(([, n]) => n > 0)
                .map(([k, n]) => (
                  <div key={k}>
                    <dt>{k}</dt>
                    <dd>{n}</dd>
                  </div>
                ))}
            </dl>
            {d.pauseReason !== null && <p class="notice warn">Paused: {d.pauseReason}</p>}
            {d.lastError !== null && <p class="error">{d.lastError}</p>}
            <div class="row wrap">
              {d.status === 'draft' && (
                <button type="button" class="primary" disabled={busy} onClick={() => void act('start')}>
                  Start
                </button>
              )}
              {d.status === 'running' && (
                <button type="button" disabled={busy} onClick={() => void act('pause')}>
                  Pause
                </button>
              )}
              {d.status === 'paused' && (
                <button type="button" class="primary" disabled={busy} onClick={() => void act('resume')}>
                  Resume
                </button>
              )}
              {d.status !== 'completed' && d.status !== 'canceled' && (
                <button type="button" class="danger" disabled={busy} onClick={() => void act('cancel')}>
                  Cancel
                </button>
              )}
              <button type="button" onClick={() => void results()}>
                Download results.csv
              </button>
            </div>
            {message !== undefined && (
              <p class="error" role="alert">
                {message}
              </p>
            )}
            <p class="muted small">
              Created {time(d.createdAt)}
              {d.startedAt !== null && ` · started ${time(d.startedAt)}`}
              {d.completedAt !== null && ` · finished ${time(d.completedAt)}`}
            </p>
          </div>
          <Contacts id={props.id} version={version} />
        </>
      )}
    </section>
  );
}
