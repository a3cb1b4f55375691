/** Live: the calls in progress (GET /v1/live), kept current by /v1/events. */
import { useEffect, useRef, useState } from 'preact/hooks';
import { ApiError, api, messageOf, send } from '../api';
import { usePollingFallback, useEvents } from '../events';
import { duration } from '../format';
import { callDetail, livePage, transcriptData, transferData, updatedData, type LiveCall } from '../schemas';
import { transferActive, withStep, type TransferProgress } from '../transfer';
import { Badge, ErrorBox, useAsync, useThrottled, useTicker } from '../ui';
import { TransferControl, TransferSteps } from './TransferControl';

interface Turn {
  role: string;
  text: string;
}

const MAX_TURNS = 6;

/** How a card names its call. */
const titleOf = (c: LiveCall): string => (c.direction === 'web' ? `Browser → ${c.agentId}` : `${c.from} → ${c.to}`);

export function LivePage() {
  const live = useAsync((signal) => api(livePage, '/v1/live', { signal }), []);
  const [calls, setCalls] = useState<LiveCall[]>([]);
  const [transcripts, setTranscripts] = useState<Record<string, Turn[]>>({});
  const [ending, setEnding] = useState<Record<string, string>>({});
  const [transfers, setTransferState] = useState<Record<string, TransferProgress>>({});
  /** Calls whose media session ended while a transfer was under way: with a person (or ringing one) now. */
  const [handed, setHanded] = useState<Record<string, string>>({});
  const callsRef = useRef(calls);
  callsRef.current = calls;
  // Several events can arrive in one read: each step sees the one before it at once, not at the next render.
  const transfersRef = useRef(transfers);
  const setTransfers = (fn: (t: Record<string, TransferProgress>) => Record<string, TransferProgress>): void => {
    transfersRef.current = fn(transfersRef.current);
    setTransferState(transfersRef.current);
  };
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
          // A transfer already under way when the page opened (its later steps come as events).
          const pending = d.transfers?.at(-1);
          if (pending?.outcome === 'pending') {
            setTransfers((tr) => (tr[id] !== undefined ? tr : { ...tr, [id]: withStep(undefined, { step: 'dialing', transferId: pending.transferId, target: pending.target ?? pending.to, mode: pending.mode }) }));
          }
        },
        () => undefined,
      );
    }
  }, [calls]);

  const refetch = useThrottled(live.reload, 500);
  useEvents((e) => {
    const id = e.callId ?? undefined;
    if (e.type === 'call.started' || e.type === 'call.ended') {
      if (e.type === 'call.ended' && id !== undefined) {
        setCalls((cs) => cs.filter((c) => c.callId !== id));
        setHanded(({ [id]: _gone, ...rest }) => rest);
        setTransfers(({ [id]: _gone, ...rest }) => rest);
      }
      refetch();
    } else if (e.type === 'call.updated' && id !== undefined) {
      const d = updatedData.safeParse(e.data);
      if (!d.success) return;
      if (d.data.change === 'session_ended') {
        // The media session is over: the call has left /v1/live (call.ended follows with the carrier's final status).
        const gone = callsRef.current.find((c) => c.callId === id);
        if (gone !== undefined && transferActive(transfersRef.current[id])) setHanded((h) => ({ ...h, [id]: titleOf(gone) }));
        setCalls((cs) => cs.filter((c) => c.callId !== id));
        return;
      }
      if (d.data.change === 'transfer') {
        const t = transferData.safeParse(e.data);
        if (!t.success) return;
        setTransfers((tr) => ({ ...tr, [id]: withStep(tr[id], t.data) }));
        // Back with the agent on a new stream: the call is live again.
        if (t.data.step === 'returned') {
          setHanded(({ [id]: _back, ...rest }) => rest);
          refetch();
        }
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
  }, () => {
    // Events were missed: what /v1/live says is the truth again (a handed-off call may have ended meanwhile).
    setHanded({});
    live.reload();
  });
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
      {calls.length === 0 && live.data !== undefined && Object.keys(handed).length === 0 && (
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
                  <span class="strong">{titleOf(c)}</span>
                ) : (
                  <a href={`/calls/${encodeURIComponent(id)}`} class="strong">
                    {titleOf(c)}
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
              {id !== null && c.transfer?.available === true && <TransferControl callId={id} callLabel={`the call ${titleOf(c)}`} targets={c.transfer.targets} progress={transfers[id]} />}
              {c.transfer?.available === false && c.direction !== 'web' && c.transfer.targets.length > 0 && (
                <p class="muted small">Not transferable here: transfers need a carrier that can redirect calls (Twilio credentials).</p>
              )}
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
      <HandedOff handed={handed} transfers={transfers} live={calls} />
    </section>
  );
}

/** Calls handed to a person: their media session is over, the transfer is not (ringing, or talking to the person). */
function HandedOff(props: { handed: Record<string, string>; transfers: Record<string, TransferProgress>; live: LiveCall[] }) {
  const ids = Object.keys(props.handed).filter((id) => !props.live.some((c) => c.callId === id));
  if (ids.length === 0) return null;
  return (
    <div class="card handed" aria-labelledby="handed-title">
      <h2 id="handed-title">Handed to a person</h2>
      <ul class="plain">
        {ids.map((id) => (
          <li key={id} data-call-id={id}>
            <a href={`/calls/${encodeURIComponent(id)}`} class="strong">
              {props.handed[id]}
            </a>
            <TransferSteps progress={props.transfers[id]} />
          </li>
        ))}
      </ul>
    </div>
  );
}
