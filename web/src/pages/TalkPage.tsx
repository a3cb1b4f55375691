/** Talk: call an agent (or a number route, with its prompt and greeting) from the browser. */
import { useEffect, useState } from 'preact/hooks';
import { ApiError, api } from '../api';
import { useEvents } from '../events';
import { duration } from '../format';
import { phone, type CallTarget } from '../phone/softphone';
import { setup, transcriptData } from '../schemas';
import { ErrorBox, Notice, useAsync, useTicker } from '../ui';

function median(xs: number[]): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor((s.length - 1) / 2)];
}

export function TalkPage() {
  const s = useAsync((signal) => api(setup, '/v1/setup', { signal }), []);
  const state = phone.state.use();
  const stats = phone.stats.use();
  const error = phone.error.use();
  const call = phone.call.use();
  const endedBy = phone.endedBy.use();
  const startedAt = phone.startedAt.use();
  const now = useTicker(500);
  const [target, setTarget] = useState('');
  const [prompt, setPrompt] = useState('');
  const [greeting, setGreeting] = useState('');
  const [turns, setTurns] = useState<Array<{ role: string; text: string }>>([]);

  useEffect(() => {
    if (target !== '' || s.data === undefined) return;
    setTarget(`agent:${s.data.defaultAgent}`);
  }, [s.data, target]);
  useEffect(() => {
    if (state === 'starting') setTurns([]);
  }, [state]);
  useEvents((e) => {
    if (e.type !== 'call.transcript' || call === undefined || e.callId !== call.callId) return;
    const d = transcriptData.safeParse(e.data);
    if (d.success) setTurns((t) => [...t, { role: d.data.role, text: d.data.text }].slice(-20));
  });

  const inCall = state === 'starting' || state === 'connecting' || state === 'live';
  const route = s.data?.routes.find((r) => `route:${r.number}` === target);
  const start = (e: Event): void => {
    e.preventDefault();
    const t: CallTarget = {};
    // A number route brings its own agent, prompt and greeting.
    if (target.startsWith('route:')) t.route = target.slice('route:'.length);
    else {
      if (target.startsWith('agent:')) t.agentId = target.slice('agent:'.length);
      if (prompt.trim() !== '') t.prompt = prompt.trim();
      if (greeting.trim() !== '') t.customGreeting = greeting.trim();
    }
    void phone.start(t);
  };
  const rtt = stats.responseMs;
  const last = rtt[rtt.length - 1];
  const med = median(rtt);
  const setupMissing = s.error instanceof ApiError && s.error.status === 404;

  return (
    <section aria-labelledby="talk-title">
      <div class="page-head">
        <h1 id="talk-title">Talk to an agent</h1>
      </div>
      <p class="muted">
        A call from this browser goes through the same path as a phone call (capacity, agent, barge-in), at phone quality (8 kHz μ-law), with no carrier. It shows up
        in Live and Calls as a web call. Use headphones, or keep the volume low.
      </p>
      {setupMissing ? <Notice kind="warn">This server has no GET /v1/setup: the default agent is called.</Notice> : <ErrorBox error={s.error} onRetry={s.reload} />}
      <form class="card talk-form" onSubmit={start} aria-label="Call an agent">
        <div class="form-grid">
          <div class="field wide">
            <label for="t-target">Agent or number</label>
            <select id="t-target" value={target} disabled={inCall} onChange={(e) => setTarget(e.currentTarget.value)}>
              {s.data === undefined && <option value="">Default agent</option>}
              {s.data !== undefined && (
                <optgroup label="Agents">
                  {s.data.agents.map((a) => (
                    <option key={a.id} value={`agent:${a.id}`} disabled={!a.up}>
                      {a.id}
                      {a.id === s.data?.defaultAgent ? ' (default)' : ''}
                      {a.up ? '' : ' (down)'}
                    </option>
                  ))}
                </optgroup>
              )}
              {s.data !== undefined && s.data.routes.length > 0 && (
                <optgroup label="Number routes">
                  {s.data.routes.map((r) => (
                    <option key={r.number} value={`route:${r.number}`}>
                      {r.number} → {r.agentId}
                    </option>
                  ))}
                </optgroup>
              )}
            </select>
          </div>
          {route !== undefined ? (
            <p class="small wide muted">
              This number’s prompt: {route.prompt ?? '(none)'} · greeting: {route.customGreeting ?? '(the agent’s own)'}
            </p>
          ) : (
          <details class="wide">
            <summary>Prompt and greeting for this call (optional)</summary>
            <div class="field">
              <label for="t-prompt">Prompt</label>
              <textarea id="t-prompt" rows={2} value={prompt} disabled={inCall} onInput={(e) => setPrompt(e.currentTarget.value)} />
            </div>
            <div class="field">
              <label for="t-greeting">Greeting</label>
              <input id="t-greeting" value={greeting} disabled={inCall} onInput={(e) => setGreeting(e.currentTarget.value)} />
            </div>
          </details>
          )}
        </div>
        <div class="row">
          {!inCall ? (
            // Keys: a new element for each, so a click on Hang up cannot become a submit of the form once the button changes.
            <button key="call" type="submit" class="primary call-button">
              Call
            </button>
          ) : (
            <button key="hangup" type="button" class="danger call-button" onClick={() => phone.hangup()}>
              Hang up
            </button>
          )}
          <span role="status" class="call-state" data-state={state}>
            {state === 'starting'
              ? 'Starting the microphone…'
              : state === 'connecting'
                ? 'Connecting…'
                : state === 'live'
                  ? `In call · ${duration(startedAt === undefined ? 0 : (now - startedAt) / 1000)}`
                  : state === 'ended'
                    ? `Call ended${endedBy !== undefined ? `: ${endedBy}` : ''}.`
                    : 'Ready.'}
          </span>
        </div>
        {error !== undefined && (
          <p class="error" role="alert">
            {error}
          </p>
        )}
      </form>
      {(inCall || state === 'ended') && (
        <div class="grid2">
          <div class="card">
            <h2>Stats</h2>
            <dl class="kv stats">
              <dt>Frames sent</dt>
              <dd data-stat="framesSent">{stats.framesSent}</dd>
              <dt>Frames received</dt>
              <dd data-stat="framesReceived">{stats.framesReceived}</dd>
              <dt>Agent audio received</dt>
              <dd>{(stats.audioReceivedMs / 1000).toFixed(1)} s</dd>
              <dt>Playout buffer</dt>
              <dd data-stat="bufferedMs">{stats.bufferedMs} ms</dd>
              <dt>Underruns</dt>
              <dd data-stat="underruns">{stats.underruns}</dd>
              <dt>Cleared (barge-in)</dt>
              <dd data-stat="clears" data-cleared-ms={stats.clearedMs}>
                {stats.clears}
                {stats.clears > 0 && ` (the last dropped ${stats.clearedMs} ms of agent audio)`}
              </dd>
              <dt>Marks echoed</dt>
              <dd data-stat="marksEchoed">{stats.marksEchoed}</dd>
              <dt>
                Response time <span class="muted small">(end of your speech → first agent audio)</span>
              </dt>
              <dd data-stat="responseMs" data-values={rtt.join(',')}>
                {last === undefined ? '–' : `${last} ms (median ${med ?? last} ms of ${rtt.length})`}
              </dd>
              <dt>
                First agent audio <span class="muted small">(after the call connected)</span>
              </dt>
              <dd data-stat="firstAudioMs">{stats.firstAudioMs === undefined ? '–' : `${stats.firstAudioMs} ms`}</dd>
              <dt>Microphone</dt>
              <dd>
                <meter min={0} max={0.3} value={Math.min(0.3, stats.micLevel)} aria-label="Microphone level" />
              </dd>
            </dl>
            {call !== undefined && (
              <p class="small">
                <a href={`/calls/${encodeURIComponent(call.callId)}`}>This call’s record</a>
              </p>
            )}
          </div>
          <div class="card">
            <h2>Transcript</h2>
            <ol class="transcript" aria-live="polite" aria-label="Transcript">
              {turns.length === 0 ? (
                <li class="muted">Say something…</li>
              ) : (
                turns.map((t, i) => (
                  <li key={i} class={`turn ${t.role}`}>
                    <span class="who">{t.role === 'agent' ? 'Agent' : 'You'}</span> {t.text}
                  </li>
                ))
              )}
            </ol>
          </div>
        </div>
      )}
    </section>
  );
}
