/** Live: the calls in progress (GET /v1/live), kept current by /v1/events. */
import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, api, messageOf, send } from '../api';
import { usePollingFallback, useEvents } from '../events';
import { duration } from '../format';
import { callDetail, livePage, transcriptData, updatedData, type LiveCall } from '../schemas';
import { Badge, ErrorBox, useAsync, useThrottled, useTicker } from '../ui';

interface Turn {
  role: string;
  text: string;
}

const MAX_TURNS = 6;

export function LivePage() {
  const live = useAsync((signal) => api(livePage, '/v1/live', { signal }), []);
  const [calls, setCalls] = useState<LiveCall[]>([]);
  const [transcripts, setTranscripts] = useState<Record<string, Turn[]>>({});
  const [ending, setEnding] = useState<Record<string, string>>({});
  const seeded = useRef(new Set<string>());
  const now = useTicker(1000);
  const loadedAt = useRef(Date.now());

  useEffect(() => {
    if (live.data === undefined) return;
    loadedAt.current = Date.now();
    setCalls(live.data.data);
  }, [live.data]);

  // Calls already under way when the page opened: their transcript so far.
  useEffect(() => {
    for (const c of calls) {
      const id = c.callId;
      if (id === null || seeded.current.has(id)) continue;
      seeded.current.add(id);
      api(callDetail, `/v1/calls/${encodeURIComponent(id)}`).then(
        (d) => {
          // The record's transcript so far, unless the events already brought as much.
          setTranscripts((t) => (d.transcript.length >= (t[id]?.length ?? 0) ? { ...t, [id]: d.transcript.slice(-MAX_TURNS).map((x) => ({ role: x.role, text: x.text })) } : t));
        },
        () => undefined,
      );
    }
  }, [calls]);

  const refetch = useThrottled(live.reload, 500);
  useEvents((e) => {
    const id = e.callId ?? undefined;
    if (e.type === 'call.started' || e.type === 'call.ended') {
      if (e.type === 'call.ended' && id !== undefined) setCalls((cs) => cs.filter((c) => c.callId !== id));
      refetch();
    } else if (e.type === 'call.updated' && id !== undefined) {
      const d = updatedData.safeParse(e.data);
      if (!d.success) return;
      if (d.data.change === 'session_ended') {
        // The media session is over: the call has left /v1/live (call.ended follows with the carrier's final status).
        setCalls((cs) => cs.filter((c) => c.callId !== id));
        return;
      }
      const { state, bargeIns } = d.data;
      setCalls((cs) => cs.map((c) => (c.callId === id ? { ...c, ...(state !== undefined ? { state } : {}), ...(bargeIns !== undefined ? { bargeIns } : {}) } : c)));
      if (d.data.change === 'status' || d.data.change === 'stream_started' || d.data.change === 'agent_ready' || d.data.change === 'agent_switched') refetch();
    } else if (e.type === 'call.transcript' && id !== undefined) {
      const d = transcriptData.safeParse(e.data);
      if (!d.success) return;
      setTranscripts((t) => ({ ...t, [id]: [...(t[id] ?? []), { role: d.data.role, text: d.data.text }].slice(-MAX_TURNS) }));
    }
  }, live.reload);
  // Without the event stream: the list and each call's transcript every 2 s.
  usePollingFallback(() => {
    seeded.current.clear();
    live.reload();
  }, 2000);

  const end = async (id: string): Promise<void> => {
    setEnding((s) => ({ ...s, [id]: 'Ending…' }));
    try {
      await send(`/v1/calls/${encodeURIComponent(id)}/hangup`);
      setEnding((s) => ({ ...s, [id]: 'Ending…' }));
      refetch();
    } catch (err) {
      setEnding((s) => ({ ...s, [id]: `Could not end the call: ${messageOf(err)}` }));
    }
  };

  const missing = live.error instanceof ApiError && live.error.status === 404;
  return (
    <section aria-labelledby="live-title">
      <div class="page-head">
        <h1 id="live-title">Live calls</h1>
        <span class="muted" aria-live="polite">
          {calls.length === 1 ? '1 call in progress' : `${calls.length} calls in progress`}
        </span>
      </div>
      {missing ? (
        <p class="error" role="alert">
          This server has no GET /v1/live: update Playline.
        </p>
      ) : (
        <ErrorBox error={live.error} onRetry={live.reload} />
      )}
      {calls.length === 0 && live.data !== undefined && (
        <div class="empty">
          <p>No call in progress.</p>
          <p class="muted">
            Calls show up here as they start. <a href="/talk">Talk to an agent</a> from this browser, or start a <a href="/campaigns">campaign</a>.
          </p>
        </div>
      )}
      <ul class="cards live-list" aria-label="Calls in progress">
        {calls.map((c) => {
          const elapsed = c.durationS + (now - loadedAt.current) / 1000;
          const id = c.callId;
          const turns = id === null ? [] : (transcripts[id] ?? []);
          const counterpart = c.direction === 'inbound' ? c.from : c.direction === 'web' ? 'browser' : c.to;
          return (
            <li key={c.callSid} class="card live-call" data-call-id={id ?? undefined}>
              <div class="row spread">
                {id === null ? (
                  <span class="strong">{c.direction === 'web' ? `Browser → ${c.agentId}` : `${c.from} → ${c.to}`}</span>
                ) : (
                  <a href={`/calls/${encodeURIComponent(id)}`} class="strong">
                    {c.direction === 'web' ? `Browser → ${c.agentId}` : `${c.from} → ${c.to}`}
                  </a>
                )}
                <span class="mono" aria-label="Duration">
                  {duration(elapsed)}
                </span>
              </div>
              <dl class="facts">
                <div>
                  <dt>Direction</dt>
                  <dd>{c.direction}</dd>
                </div>
                <div>
                  <dt>Number</dt>
                  <dd>{counterpart}</dd>
                </div>
                <div>
                  <dt>Agent</dt>
                  <dd class="mono">{c.agentId}</dd>
                </div>
                <div>
                  <dt>State</dt>
                  <dd>
                    <Badge value={c.state} />
                  </dd>
                </div>
                <div>
                  <dt>Barge-ins</dt>
                  <dd data-field="bargeIns">{c.bargeIns}</dd>
                </div>
                {(c.agentReconnects ?? 0) > 0 && (
                  <div>
                    <dt>Agent reconnects</dt>
                    <dd>{c.agentReconnects}</dd>
                  </div>
                )}
              </dl>
              <ol class="transcript" aria-label="Live transcript" aria-live="polite">
                {turns.length === 0 ? (
                  <li class="muted">No words yet.</li>
                ) : (
                  turns.map((t, i) => (
                    <li key={i} class={`turn ${t.role}`}>
                      <span class="who">{t.role === 'agent' ? 'Agent' : 'Caller'}</span> {t.text}
                    </li>
                  ))
                )}
              </ol>
              {id !== null && (
                <div class="row">
                  <button type="button" class="danger" onClick={() => void end(id)} disabled={ending[id] === 'Ending…'}>
                    End call
                  </button>
                  {ending[id] !== undefined && (
                    <span class="muted" role="status">
                      {ending[id]}
                    </span>
                  )}
                </div>
              )}
            </li>
          );
        })}
      </ul>
    </section>
  );
}
