/** Calls: the call history (GET /v1/calls), filtered and paged with its cursor. */
import { useState } from 'preact/hooks';
import { api, qs } from '../api';
import { duration, time } from '../format';
import { callPage } from '../schemas';
import { Badge, ErrorBox, useAsync } from '../ui';

const STATUSES = ['', 'queued', 'ringing', 'in-progress', 'completed', 'busy', 'no-answer', 'failed', 'canceled', 'not-dialed'];

interface Filters {
  status: string;
  direction: string;
  to: string;
}

export function CallsPage() {
  const [filters, setFilters] = useState<Filters>({ status: '', direction: '', to: '' });
  const [draft, setDraft] = useState<Filters>(filters);
  // Cursors of the pages before the current one (the first page has none).
  const [cursors, setCursors] = useState<string[]>([]);
  const cursor = cursors[cursors.length - 1];
  const page = useAsync(
    (signal) => api(callPage, `/v1/calls${qs({ ...filters, cursor, limit: 25 })}`, { signal }),
    [filters.status, filters.direction, filters.to, cursor],
  );

  const apply = (e: Event): void => {
    e.preventDefault();
    setCursors([]);
    setFilters({ ...draft, to: draft.to.trim() });
  };

  return (
    <section aria-labelledby="calls-title">
      <div class="page-head">
        <h1 id="calls-title">Calls</h1>
      </div>
      <form class="filters" onSubmit={apply} aria-label="Filter calls">
        <div class="field">
          <label for="f-status">Status</label>
          <select id="f-status" value={draft.status} onChange={(e) => setDraft({ ...draft, status: e.currentTarget.value })}>
            {STATUSES.map((s) => (
              <option key={s} value={s}>
                {s === '' ? 'Any' : s}
              </option>
            ))}
          </select>
        </div>
        <div class="field">
          <label for="f-direction">Direction</label>
          <select id="f-direction" value={draft.direction} onChange={(e) => setDraft({ ...draft, direction: e.currentTarget.value })}>
            <option value="">Any</option>
            <option value="inbound">Inbound</option>
            <option value="outbound">Outbound</option>
            <option value="web">Browser</option>
          </select>
        </div>
        <div class="field">
          <label for="f-to">To (number)</label>
          <input id="f-to" type="search" inputMode="tel" placeholder="+14155550100" value={draft.to} onInput={(e) => setDraft({ ...draft, to: e.currentTarget.value })} />
        </div>
        <button type="submit">Filter</button>
      </form>
      <ErrorBox error={page.error} onRetry={page.reload} />
      {page.data !== undefined && page.data.data.length === 0 && <p class="empty">No calls match.</p>}
      {page.data !== undefined && page.data.data.length > 0 && (
        <div class="table-wrap">
          <table>
            <thead>
              <tr>
                <th scope="col">Started</th>
                <th scope="col">Direction</th>
                <th scope="col">From</th>
                <th scope="col">To</th>
                <th scope="col">Agent</th>
                <th scope="col">Status</th>
                <th scope="col">Outcome</th>
                <th scope="col">Duration</th>
              </tr>
            </thead>
            <tbody>
              {page.data.data.map((c) => (
                <tr key={c.id}>
                  <td>
                    <a href={`/calls/${encodeURIComponent(c.id)}`}>{time(c.createdAt)}</a>
                  </td>
                  <td>{c.direction}</td>
                  <td class="mono">{c.from}</td>
                  <td class="mono">{c.to}</td>
                  <td class="mono">{c.agentId}</td>
                  <td>
                    <Badge value={c.status} />
                  </td>
                  <td>{c.outcome ?? '–'}</td>
                  <td class="mono">{duration(c.durationSeconds)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
      <nav class="pager" aria-label="Pages">
        <button type="button" disabled={cursors.length === 0} onClick={() => setCursors(cursors.slice(0, -1))}>
          Newer
        </button>
        <span class="muted">Page {cursors.length + 1}</span>
        <button
          type="button"
          disabled={page.data?.nextCursor === null || page.data === undefined}
          onClick={() => {
            const next = page.data?.nextCursor;
            if (next !== null && next !== undefined) setCursors([...cursors, next]);
          }}
        >
          Older
        </button>
      </nav>
    </section>
  );
}
