/** One call (GET /v1/calls/:id): summary, durations, timeline of events and transcript; live while it is under way. */
import { api, messageOf, request, send } from '../api';
import { useEvents } from '../events';
import { between, compactJson, duration, time } from '../format';
import { callDetail } from '../schemas';
import { Badge, ErrorBox, useAsync, useThrottled } from '../ui';
import { useEffect, useState } from 'preact/hooks';
import { CallTransfers } from './CallTransfers';

const FINAL = new Set(['completed', 'busy', 'no-answer', 'failed', 'canceled', 'not-dialed']);

/** Events of the call record, in words. */
const EVENT_LABELS: Record<string, string> = {
  webhook: 'Voice webhook',
  inbound: 'Voice webhook',
  dialed: 'Dialed',
  dial_error: 'Dial failed',
  answered: 'Answered',
  status: 'Status callback',
  amd: 'Answering machine detection',
  stream_started: 'Media stream started',
  agent_ready: 'Agent ready',
  agent_reconnected: 'Agent reconnected',
  agent_switched: 'Agent switched',
  barge_in: 'Barge-in',
  dtmf: 'Key pressed',
  dtmf_digits: 'Keypad digits to the agent',
  tool_called: 'Agent called a tool',
  tool_result: 'Tool answered',
  transfer_requested: 'Transfer requested',
  transfer_dialing: 'Transfer: dialing the person',
  transfer_answered: 'Transfer: the person answered',
  transfer_joined: 'Transfer: caller and person joined',
  transfer_failed: 'Transfer: person not reached',
  transfer_returned: 'Transfer: caller back with the agent',
  transfer_completed: 'Transfer completed',
  spoke: 'Spoke',
  hangup_requested: 'Hang-up requested',
  voicemail_message: 'Voicemail message left',
  voicemail_hangup: 'Hung up on voicemail',
  session_ended: 'Session ended',
  finalized: 'Finalized',
  requeued: 'Requeued',
  reconciled: 'Reconciled with the carrier',
};

export function CallPage(props: { id: string }) {
  const call = useAsync((signal) => api(callDetail, `/v1/calls/${encodeURIComponent(props.id)}`, { signal }), [props.id]);
  const [action, setAction] = useState<string | undefined>();
  const refetch = useThrottled(call.reload, 700);
  useEvents((e) => {
    if (e.callId === props.id) refetch();
  }, call.reload);

  const c = call.data;
  const ended = c !== undefined && (c.endedAt !== null || FINAL.has(c.status));
  const hangup = async (): Promise<void> => {
    setAction('Ending…');
    try {
      await send(`/v1/calls/${encodeURIComponent(props.id)}/hangup`);
      setAction(undefined);
      call.reload();
    } catch (err) {
      setAction(`Could not end the call: ${messageOf(err)}`);
    }
  };
  const t0 = c === undefined ? 0 : Date.parse(c.createdAt);

  return (
    <section aria-labelledby="call-title">
      <p>
        <a href="/calls">← Calls</a>
      </p>
      <div class="page-head">
        <h1 id="call-title">Call {c === undefined ? '' : c.direction === 'inbound' ? `from ${c.from}` : c.direction === 'web' ? 'from the browser' : `to ${c.to}`}</h1>
        {c !== undefined && <Badge value={c.status} />}
      </div>
      <ErrorBox error={call.error} onRetry={call.reload} />
      {c !== undefined && (
        <>
          <div class="grid2">
            <div class="card">
              <h2>Summary</h2>
              <dl class="kv">
                <dt>Call id</dt>
                <dd class="mono">{c.id}</dd>
                <dt>Call SID</dt>
                <dd class="mono">{c.callSid ?? '–'}</dd>
                <dt>Direction</dt>
                <dd>{c.direction}</dd>
                <dt>From</dt>
                <dd class="mono">{c.from}</dd>
                <dt>To</dt>
                <dd class="mono">{c.to}</dd>
                <dt>Agent{c.agents.length > 1 ? 's' : ''}</dt>
                <dd class="mono">{c.agents.join(' → ')}</dd>
                <dt>Outcome</dt>
                <dd>{c.outcome ?? '–'}</dd>
                <dt>End reason</dt>
                <dd>{c.endReason ?? '–'}</dd>
                {c.answeredBy !== null && (
                  <>
                    <dt>Answered by</dt>
                    <dd>{c.answeredBy}</dd>
                  </>
                )}
                {c.error !== null && (
                  <>
                    <dt>Error</dt>
                    <dd>
                      {c.error.code ?? ''} {c.error.message ?? ''}
                    </dd>
                  </>
                )}
                {c.campaignId !== null && (
                  <>
                    <dt>Campaign</dt>
                    <dd>
                      <a href={`/campaigns/${encodeURIComponent(c.campaignId)}`}>{c.campaignId}</a>
                    </dd>
                  </>
                )}
              </dl>
              {!ended && (
                <div class="row">
                  <button type="button" class="danger" onClick={() => void hangup()}>
                    End call
                  </button>
                  {action !== undefined && <span role="status">{action}</span>}
                </div>
              )}
            </div>
            <div class="card">
              <h2>Times</h2>
              <dl class="kv">
                <dt>Created</dt>
                <dd>{time(c.createdAt)}</dd>
                <dt>Dialed</dt>
                <dd>{time(c.dialedAt)}</dd>
                <dt>Answered</dt>
                <dd>{time(c.answeredAt)}</dd>
                <dt>Ended</dt>
                <dd>{time(c.endedAt)}</dd>
                <dt>Ringing</dt>
                <dd>{duration(between(c.dialedAt, c.answeredAt))}</dd>
                <dt>Talk</dt>
                <dd>{duration(c.durationSeconds)}</dd>
                <dt>Total</dt>
                <dd>{duration(between(c.dialedAt ?? c.createdAt, c.endedAt))}</dd>
              </dl>
            </div>
          </div>
          {c.recording != null && (
            <div class="card">
              <h2>Recording</h2>
              {c.recording.status === 'completed' ? (
                <RecordingPlayer url={c.recording.url} />
              ) : (
                <p class="muted">Recording {c.recording.status ?? 'in progress'}: it can be played once the call has ended.</p>
              )}
            </div>
          )}
          <div class="card">
            <h2>Timeline</h2>
            {c.events.length === 0 ? (
              <p class="muted">No events recorded.</p>
            ) : (
              <div class="table-wrap">
                <table class="timeline">
                  <thead>
                    <tr>
                      <th scope="col">At</th>
                      <th scope="col">Event</th>
                      <th scope="col">Status</th>
                      <th scope="col">Details</th>
                    </tr>
                  </thead>
                  <tbody>
                    {c.events.map((e, i) => (
                      <tr key={i}>
                        <td class="mono" title={e.at}>
                          +{((Date.parse(e.at) - t0) / 1000).toFixed(1)} s
                        </td>
                        <td>{EVENT_LABELS[e.type] ?? e.type}</td>
                        <td>{e.status ?? ''}</td>
                        <td class="mono small">{compactJson(e.data)}</td>
                      </tr>
                    ))}
                  </tbody>
                </table>
              </div>
            )}
          </div>
          <CallTransfers transfers={c.transfers} />
          <div class="card">
            <h2>Transcript {c.transcriptSource === 'playai' ? <span class="muted small">(from PlayAI)</span> : null}</h2>
            {c.transcript.length === 0 ? (
              <p class="muted">No transcript.</p>
            ) : (
              <ol class="transcript">
                {c.transcript.map((t, i) => (
                  <li key={i} class={`turn ${t.role}`}>
                    <span class="who">{t.role === 'agent' ? 'Agent' : 'Caller'}</span> {t.text}
                  </li>
                ))}
              </ol>
            )}
          </div>
        </>
      )}
    </section>
  );
}

/**
 * The call's recording in an `<audio>` player. `<audio src>` cannot send the bearer token, so the
 * WAV is fetched with it (the API's auth, like every console request) into a blob URL, which the
 * console's CSP allows (`media-src 'self' blob:`) and which is revoked when the page goes.
 */
function RecordingPlayer(props: { url: string }) {
  const [src, setSrc] = useState<string | undefined>();
  const [error, setError] = useState<string | undefined>();
  useEffect(() => {
    const ctrl = new AbortController();
    let objectUrl: string | undefined;
    setSrc(undefined);
    setError(undefined);
    request(props.url, { signal: ctrl.signal })
      .then((res) => res.blob())
      .then((blob) => {
        objectUrl = URL.createObjectURL(blob);
        setSrc(objectUrl);
      })
      .catch((err: unknown) => {
        if (!ctrl.signal.aborted) setError(`Could not load the recording: ${messageOf(err)}`);
      });
    return () => {
      ctrl.abort();
      if (objectUrl !== undefined) URL.revokeObjectURL(objectUrl);
    };
  }, [props.url]);
  if (error !== undefined) return <p role="alert">{error}</p>;
  if (src === undefined) return <p class="muted">Loading the recording…</p>;
  return (
    <audio controls preload="metadata" src={src} aria-label="Call recording (caller left, agent right)">
      <a href={src} download="recording.wav">
        Download the recording
      </a>
    </audio>
  );
}
