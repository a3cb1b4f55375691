/**
 * A live call's Transfer control (POST /v1/calls/:id/transfer): pick a target of the call (or
 * type a number), cold or warm, an optional reason, then Transfer. The answer (202: the carrier
 * is dialing) or the server's error is shown; the steps that follow come from the call's
 * `call.updated` events (`change: "transfer"`), which the Live page passes in as `progress`.
 */
import { useEffect, useRef, useState } from 'preact/hooks';
import { api, messageOf } from '../api';
import { transferReply, type TransferTarget } from '../schemas';
import { stepLabel, transferActive, type TransferProgress } from '../transfer';

const OTHER = '';

export function TransferControl(props: { callId: string; callLabel: string; targets: TransferTarget[]; progress: TransferProgress | undefined }) {
  const { callId, targets, progress } = props;
  const [open, setOpen] = useState(false);
  const [target, setTarget] = useState(targets[0]?.name ?? OTHER);
  const [to, setTo] = useState('');
  const [mode, setMode] = useState<'cold' | 'warm'>('cold');
  const [reason, setReason] = useState('');
  const [busy, setBusy] = useState(false);
  const [result, setResult] = useState<{ kind: 'ok' | 'error'; text: string } | undefined>();
  const first = useRef<HTMLSelectElement>(null);
  const opener = useRef<HTMLButtonElement>(null);
  const wasOpen = useRef(false);

  // Focus follows the form: into it when it opens, back to its button when it closes.
  useEffect(() => {
    if (open) first.current?.focus();
    else if (wasOpen.current) opener.current?.focus();
    wasOpen.current = open;
  }, [open]);

  const id = callId.replace(/[^A-Za-z0-9_-]/g, '');
  const chosen = targets.find((t) => t.name === target);
  const other = chosen === undefined;
  const under = transferActive(progress);
  const who = other ? to.trim() || 'the number you type' : `${chosen.name} (${chosen.to})`;

  const submit = async (e: Event): Promise<void> => {
    e.preventDefault();
    if (busy) return;
    setBusy(true);
    setResult(undefined);
    const body = { ...(other ? { to: to.trim() } : { target }), mode, ...(reason.trim() !== '' ? { reason: reason.trim() } : {}) };
    try {
      await api(transferReply, `/v1/calls/${encodeURIComponent(callId)}/transfer`, { body });
      setResult({ kind: 'ok', text: `Dialing ${other ? to.trim() : target}…` });
      setOpen(false);
    } catch (err) {
      setResult({ kind: 'error', text: `Could not transfer: ${messageOf(err)}` });
    } finally {
      setBusy(false);
    }
  };

  return (
    <div class="transfer">
      {open ? (
        <form
          id={`transfer-${id}`}
          class="transfer-form"
          aria-label={`Transfer ${props.callLabel}`}
          onSubmit={(e) => void submit(e)}
          onKeyDown={(e) => {
            if (e.key === 'Escape') setOpen(false);
          }}
        >
          <div class="field">
            <label for={`tt-${id}`}>Transfer to</label>
            <select id={`tt-${id}`} ref={first} value={target} onChange={(e) => setTarget(e.currentTarget.value)}>
              {targets.map((t) => (
                <option key={t.name} value={t.name}>
                  {t.name} · {t.to}
                  {t.description !== undefined ? ` (${t.description})` : ''}
                </option>
              ))}
              <option value={OTHER}>Another number…</option>
            </select>
          </div>
          {other && (
            <div class="field">
              <label for={`tn-${id}`}>Number or SIP URI</label>
              <input id={`tn-${id}`} inputMode="tel" required maxLength={256} placeholder="+14155550100" value={to} onInput={(e) => setTo(e.currentTarget.value)} />
            </div>
          )}
          <fieldset class="modes">
            <legend>Mode</legend>
            <label class="choice">
              <input type="radio" name={`tm-${id}`} value="cold" checked={mode === 'cold'} onChange={() => setMode('cold')} /> Cold: connect at once
            </label>
            <label class="choice">
              <input type="radio" name={`tm-${id}`} value="warm" checked={mode === 'warm'} onChange={() => setMode('warm')} /> Warm: the caller holds, the person hears a summary first
            </label>
          </fieldset>
          <div class="field">
            <label for={`tr-${id}`}>Reason (optional)</label>
            <input id={`tr-${id}`} maxLength={300} value={reason} onInput={(e) => setReason(e.currentTarget.value)} placeholder="wants to talk about an invoice" />
          </div>
          <p class="muted small">
            The caller is handed to {who}
            {mode === 'warm' ? ' after the person has heard a summary' : ''}. If nobody answers, the caller comes back to the agent.
          </p>
          <div class="row">
            <button type="submit" class="primary" disabled={busy}>
              {busy ? 'Transferring…' : 'Transfer'}
            </button>
            <button type="button" onClick={() => setOpen(false)}>
              Cancel
            </button>
          </div>
        </form>
      ) : (
        <button type="button" ref={opener} aria-expanded="false" disabled={under} onClick={() => setOpen(true)}>
          Transfer…
        </button>
      )}
      {/* Once the call's steps come in, they say what the 202 said (and more). */}
      {result !== undefined && !(result.kind === 'ok' && (progress?.steps.length ?? 0) > 0) && (
        <p class={result.kind === 'ok' ? 'ok small' : 'error small'} role={result.kind === 'ok' ? 'status' : 'alert'}>
          {result.text}
        </p>
      )}
      <TransferSteps progress={progress} />
    </div>
  );
}

/** A transfer's steps so far, as they come (requested → dialing → answered …). */
export function TransferSteps(props: { progress: TransferProgress | undefined }) {
  const p = props.progress;
  if (p === undefined || p.steps.length === 0) return null;
  return (
    <div class="transfer-steps">
      <span class="small muted">
        Transfer to {p.target}
        {p.mode !== undefined ? ` (${p.mode})` : ''}:
      </span>
      <ol aria-label="Transfer steps" aria-live="polite">
        {p.steps.map((s, i) => (
          <li key={i} data-step={s.step}>
            {stepLabel(s)}
          </li>
        ))}
      </ol>
    </div>
  );
}
