/** Setup: agents, number routes, capacity and readiness (GET /v1/setup), the do-not-call list, webhook deliveries. */
import { useState } from 'preact/hooks';
import { ApiError, api, messageOf, qs, request, send } from '../api';
import { time } from '../format';
import { deliveries, dncPage, setup, type DncEntry, type TransferTarget } from '../schemas';
import { Badge, ErrorBox, Notice, useAsync } from '../ui';

/** Transfer targets as a list: name, where it rings, what the agent is told. */
function Targets(props: { targets: TransferTarget[] | undefined }) {
  const list = props.targets ?? [];
  if (list.length === 0) return <>–</>;
  return (
    <ul class="plain targets">
      {list.map((t) => (
        <li key={t.name}>
          <span class="strong">{t.name}</span> <span class="mono">{t.to}</span>
          {t.description !== undefined && <span class="muted"> · {t.description}</span>}
        </li>
      ))}
    </ul>
  );
}

function SetupInfo() {
  const s = useAsync((signal) => api(setup, '/v1/setup', { signal }), []);
  if (s.error instanceof ApiError && s.error.status === 404) {
    return <Notice kind="warn">This server has no GET /v1/setup: update Playline to see its agents, routes and capacity here.</Notice>;
  }
  const d = s.data;
  return (
    <>
      <ErrorBox error={s.error} onRetry={s.reload} />
      {d !== undefined && (
        <>
          <div class="grid2">
            <div class="card">
              <h2>Server</h2>
              <dl class="kv">
                <dt>Mode</dt>
                <dd>{d.mode === 'local' ? 'local (simulated carrier, no Twilio)' : d.mode}</dd>
                <dt>Ready</dt>
                <dd>
                  <Badge value={d.ready.draining ? 'draining' : d.ready.ready ? 'ready' : 'not-ready'} />
                </dd>
                <dt>Default agent</dt>
                <dd class="mono">{d.defaultAgent}</dd>
                <dt>Webhook</dt>
                <dd>{d.webhook.configured ? `on (${d.webhook.events.join(', ')})` : 'not set (WEBHOOK_URL)'}</dd>
              </dl>
            </div>
            <div class="card">
              <h2>Capacity</h2>
              <dl class="kv">
                <dt>Live calls</dt>
                <dd>{d.capacity.liveCalls}</dd>
                <dt>Slots used</dt>
                <dd>
                  {d.capacity.usedSlots} / {d.capacity.maxConcurrentCalls}
                </dd>
                <dt>Reserved</dt>
                <dd>{d.capacity.reservedSlots}</dd>
                <dt>Kept for inbound</dt>
                <dd>{d.capacity.inboundReserved}</dd>
              </dl>
              <meter min={0} max={Math.max(1, d.capacity.maxConcurrentCalls)} value={d.capacity.usedSlots} aria-label="Slots used" />
            </div>
          </div>
          <div class="card">
            <h2>Agents</h2>
            <div class="table-wrap">
              <table>
                <thead>
                  <tr>
                    <th scope="col">Agent</th>
                    <th scope="col">Status</th>
                    <th scope="col">Sessions</th>
                    <th scope="col">Fallbacks</th>
                    <th scope="col">Greeting</th>
                    <th scope="col">Transfer targets</th>
                  </tr>
                </thead>
                <tbody>
                  {d.agents.map((a) => (
                    <tr key={a.id}>
                      <td class="mono">
                        {a.id}
                        {a.id === d.defaultAgent && <span class="muted small"> (default)</span>}
                      </td>
                      <td>
                        <Badge value={a.up ? 'up' : 'down'} />
                      </td>
                      <td>
                        {a.openSessions}
                        {a.limit !== null ? ` / ${a.limit}` : ''}
                      </td>
                      <td class="mono">{a.fallbacks.join(', ') || '–'}</td>
                      <td>{a.customGreeting ?? (a.hasPrompt ? 'its own (has a prompt)' : 'the agent’s own')}</td>
                      <td class="small">
                        <Targets targets={a.transferTargets} />
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          </div>
          <div class="card">
            <h2>Number routes</h2>
            {d.routes.length === 0 ? (
              <p class="muted">No routes: every number goes to the default agent.</p>
            ) : (
              <div class="table-wrap">
                <table>
                  <thead>
                    <tr>
                      <th scope="col">Number</th>
                      <th scope="col">Agent</th>
                      <th scope="col">Prompt</th>
                      <th scope="col">Greeting</th>
                      <th scope="col">Transfer targets</th>
                      <th scope="col">Hotkeys</th>
                    </tr>
                  </thead>
                  <tbody>
                    {d.routes.map((r) => (
                      <tr key={r.number}>
                        <td class="mono">{r.number}</td>
                        <td class="mono">{r.agentId}</td>
                        <td class="small">{r.prompt ?? '–'}</td>
                        <td class="small">{r.customGreeting ?? '–'}</td>
                        <td class="small">
                          <Targets targets={r.transferTargets} />
                        </td>
                        <td class="small">
                          {(r.hotkeys ?? []).length === 0 ? (
                            '–'
                          ) : (
                            <ul class="plain targets">
                              {(r.hotkeys ?? []).map((h) => (
                                <li key={h.key}>
                                  <kbd>{h.key}</kbd> → {h.transfer}
                                  {h.mode === 'warm' ? ' (warm)' : ''}
                                </li>
                              ))}
                            </ul>
                          )}
                        </td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            )}
          </div>
        </>
      )}
    </>
  );
}

function DoNotCall() {
  const [entries, setEntries] = useState<DncEntry[]>([]);
  const [next, setNext] = useState<string | null>(null);
  const [phone, setPhone] = useState('');
  const [reason, setReason] = useState('');
  const [message, setMessage] = useState<{ kind: 'ok' | 'error'; text: string } | undefined>();
  const first = useAsync(async (signal) => {
    const p = await api(dncPage, `/v1/dnc${qs({ limit: 50 })}`, { signal });
    setEntries(p.data);
    setNext(p.nextCursor);
    return p;
  }, []);
  const more = async (): Promise<void> => {
    if (next === null) return;
    try {
      const p = await api(dncPage, `/v1/dnc${qs({ limit: 50, cursor: next })}`);
      setEntries([...entries, ...p.data]);
      setNext(p.nextCursor);
    } catch (err) {
      setMessage({ kind: 'error', text: messageOf(err) });
    }
  };
  const add = async (e: Event): Promise<void> => {
    e.preventDefault();
    setMessage(undefined);
    try {
      const res = await request('/v1/dnc', { body: { phone: phone.trim(), ...(reason.trim() !== '' ? { reason: reason.trim() } : {}) } });
      await res.body?.cancel();
      setMessage({ kind: 'ok', text: res.status === 201 ? `${phone.trim()} added.` : `${phone.trim()} was already on the list.` });
      setPhone('');
      setReason('');
      first.reload();
    } catch (err) {
      setMessage({ kind: 'error', text: messageOf(err) });
    }
  };
  const remove = async (p: string): Promise<void> => {
    setMessage(undefined);
    try {
      await send(`/v1/dnc/${encodeURIComponent(p)}`, { method: 'DELETE' });
      setEntries(entries.filter((x) => x.phone !== p));
      setMessage({ kind: 'ok', text: `${p} removed.` });
    } catch (err) {
      setMessage({ kind: 'error', text: messageOf(err) });
    }
  };
  return (
    <div class="card" aria-labelledby="dnc-title">
      <h2 id="dnc-title">Do-not-call list</h2>
      <p class="muted small">Numbers here are never dialed by any campaign (checked at dial time).</p>
      <form class="filters" onSubmit={(e) => void add(e)} aria-label="Add a number to the do-not-call list">
        <div class="field">
          <label for="dnc-phone">Number</label>
          <input id="dnc-phone" type="tel" required placeholder="+14155550100" value={phone} onInput={(e) => setPhone(e.currentTarget.value)} />
        </div>
        <div class="field">
          <label for="dnc-reason">Reason (optional)</label>
          <input id="dnc-reason" value={reason} onInput={(e) => setReason(e.currentTarget.value)} />
        </div>
        <button type="submit">Add</button>
      </form>
      {message !== undefined && (
        <p class={message.kind === 'ok' ? 'ok' : 'error'} role={message.kind === 'ok' ? 'status' : 'alert'}>
          {message.text}
        </p>
      )}
      <ErrorBox error={first.error} onRetry={first.reload} />
      {entries.length === 0 && first.data !== undefined ? (
        <p class="muted">The list is empty.</p>
      ) : (
        <ul class="plain dnc-list">
          {entries.map((d) => (
            <li key={d.phone} class="row spread">
              <span>
                <span class="mono">{d.phone}</span>
                {d.reason !== null && <span class="muted small"> · {d.reason}</span>}
                <span class="muted small"> · {time(d.createdAt)}</span>
              </span>
              <button type="button" class="link" onClick={() => void remove(d.phone)} aria-label={`Remove ${d.phone}`}>
                Remove
              </button>
            </li>
          ))}
        </ul>
      )}
      {next !== null && (
        <button type="button" onClick={() => void more()}>
          More
        </button>
      )}
    </div>
  );
}

function Deliveries() {
  const [status, setStatus] = useState('');
  const [message, setMessage] = useState<string | undefined>();
  const list = useAsync((signal) => api(deliveries, `/v1/webhooks/deliveries${qs({ status, limit: 50 })}`, { signal }), [status]);
  const retry = async (id: string): Promise<void> => {
    setMessage(undefined);
    try {
      await send(`/v1/webhooks/deliveries/${encodeURIComponent(id)}/retry`);
      setMessage(`Delivery ${id} queued again.`);
      list.reload();
    } catch (err) {
      setMessage(messageOf(err));
    }
  };
  const notSet = list.data?.webhookUrl === null;
  return (
    <div class="card" aria-labelledby="wh-title">
      <h2 id="wh-title">Webhook deliveries</h2>
      {notSet ? (
        <p class="muted">WEBHOOK_URL is not set: no webhooks are sent.</p>
      ) : (
        <>
          <form class="filters" onSubmit={(e) => e.preventDefault()} aria-label="Filter deliveries">
            <div class="field">
              <label for="wh-status">Status</label>
              <select id="wh-status" value={status} onChange={(e) => setStatus(e.currentTarget.value)}>
                <option value="">Any</option>
                <option value="pending">Pending</option>
                <option value="delivered">Delivered</option>
                <option value="failed">Failed</option>
              </select>
            </div>
            <button type="button" onClick={list.reload}>
              Refresh
            </button>
          </form>
          {message !== undefined && <p role="status">{message}</p>}
          <ErrorBox error={list.error} onRetry={list.reload} />
          {list.data !== undefined && list.data.data.length === 0 && <p class="muted">No deliveries.</p>}
          {list.data !== undefined && list.data.data.length > 0 && (
            <div class="table-wrap">
              <table>
                <thead>
                  <tr>
                    <th scope="col">Created</th>
                    <th scope="col">Event</th>
                    <th scope="col">Call</th>
                    <th scope="col">Status</th>
                    <th scope="col">Attempts</th>
                    <th scope="col">Last answer</th>
                    <th scope="col">
                      <span class="sr-only">Actions</span>
                    </th>
                  </tr>
                </thead>
                <tbody>
                  {list.data.data.map((d) => (
                    <tr key={d.id}>
                      <td>{time(new Date(d.createdAt).toISOString())}</td>
                      <td>{d.event}</td>
                      <td>{d.callId !== null ? <a href={`/calls/${encodeURIComponent(d.callId)}`}>view</a> : '–'}</td>
                      <td>
                        <Badge value={d.status} />
                      </td>
                      <td>{d.attempts}</td>
                      <td class="small">{d.lastStatusCode !== null ? `HTTP ${d.lastStatusCode}` : (d.lastError ?? '–')}</td>
                      <td>
                        {d.status === 'failed' && (
                          <button type="button" onClick={() => void retry(d.id)}>
                            Retry
                          </button>
                        )}
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}
        </>
      )}
    </div>
  );
}

export function SetupPage() {
  return (
    <section aria-labelledby="setup-title">
      <div class="page-head">
        <h1 id="setup-title">Setup</h1>
      </div>
      <SetupInfo />
      <DoNotCall />
      <Deliveries />
    </section>
  );
}
