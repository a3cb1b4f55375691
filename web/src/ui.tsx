/** Shared pieces of the pages: loading and error states, status badges, progress bars. */
import type { ComponentChildren } from 'preact';
import { useCallback, useEffect, useRef, useState } from 'preact/hooks';
import { messageOf } from './api';
import { percent } from './format';
import type { Counts } from './schemas';

export function ErrorBox(props: { error: unknown; onRetry?: () => void }) {
  if (props.error === undefined || props.error === null) return null;
  return (
    <div class="error" role="alert">
      <span>{messageOf(props.error)}</span>
      {props.onRetry !== undefined && (
        <button type="button" class="link" onClick={props.onRetry}>
          Try again
        </button>
      )}
    </div>
  );
}

export function Notice(props: { children: ComponentChildren; kind?: 'info' | 'ok' | 'warn' }) {
  return (
    <div class={`notice ${props.kind ?? 'info'}`} role="status">
      {props.children}
    </div>
  );
}

export function Badge(props: { value: string | null | undefined }) {
  const v = props.value ?? '–';
  return <span class={`badge b-${v.replace(/[^a-z0-9-]/gi, '')}`}>{v}</span>;
}

export function CampaignProgress(props: { counts: Counts; label: string }) {
  const { total, byState } = props.counts;
  const pct = percent(byState.done, total);
  return (
    <div class="progress">
      <progress max={Math.max(1, total)} value={byState.done} aria-label={props.label} data-percent={pct}>
        {pct}%
      </progress>
      <span class="progress-text">
        {byState.done}/{total} done · {pct}%
      </span>
    </div>
  );
}

export interface Async<T> {
  data: T | undefined;
  error: unknown;
  loading: boolean;
  reload: () => void;
  set: (v: T) => void;
}

/** Loads `load()` on mount and whenever `deps` change; `reload()` loads again keeping the old data on screen. */
export function useAsync<T>(load: (signal: AbortSignal) => Promise<T>, deps: unknown[]): Async<T> {
  const [data, setData] = useState<T | undefined>(undefined);
  const [error, setError] = useState<unknown>(undefined);
  const [loading, setLoading] = useState(true);
  const [tick, setTick] = useState(0);
  const loadRef = useRef(load);
  loadRef.current = load;
  useEffect(() => {
    const ac = new AbortController();
    setLoading(true);
    loadRef.current(ac.signal).then(
      (v) => {
        if (ac.signal.aborted) return;
        setData(() => v);
        setError(undefined);
        setLoading(false);
      },
      (err: unknown) => {
        if (ac.signal.aborted) return;
        setError(err);
        setLoading(false);
      },
    );
    return () => ac.abort();
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, tick]);
  const reload = useCallback(() => setTick((t) => t + 1), []);
  const set = useCallback((v: T) => setData(() => v), []);
  return { data, error, loading, reload, set };
}

/** Re-renders every `ms` (durations that tick). */
export function useTicker(ms: number): number {
  const [now, setNow] = useState(Date.now());
  useEffect(() => {
    const t = setInterval(() => setNow(Date.now()), ms);
    return () => clearInterval(t);
  }, [ms]);
  return now;
}

/** Runs `fn` at most once per `ms` (the first call at once, the last one later). */
export function useThrottled(fn: () => void, ms: number): () => void {
  const ref = useRef(fn);
  ref.current = fn;
  const state = useRef<{ last: number; timer: ReturnType<typeof setTimeout> | undefined }>({ last: 0, timer: undefined });
  useEffect(() => () => clearTimeout(state.current.timer), []);
  return useCallback(() => {
    const s = state.current;
    const wait = s.last + ms - Date.now();
    if (wait <= 0) {
      s.last = Date.now();
      ref.current();
      return;
    }
    if (s.timer !== undefined) return;
    s.timer = setTimeout(() => {
      s.timer = undefined;
      s.last = Date.now();
      ref.current();
    }, wait);
  }, [ms]);
}
