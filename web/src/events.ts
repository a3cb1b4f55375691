/**
 * One connection to `GET /v1/events` for the whole console, read with fetch
 * (EventSource cannot send the Authorization header) and parsed with
 * eventsource-parser. It reconnects with `Last-Event-ID`, so nothing is missed
 * within the server's window; a `resync` event (the server no longer has the
 * events since our last id) tells the pages to refetch their state.
 *
 * When the server has no /v1/events (404) the pages fall back to polling.
 */
import { createParser } from 'eventsource-parser';
import { useEffect, useRef } from 'preact/hooks';
import { authHeaders, signalUnauthorized } from './api';
import { event, type ApiEvent } from './schemas';
import { signal } from './signal';

export type StreamState = 'connecting' | 'live' | 'reconnecting' | 'unavailable' | 'stopped';

/** The state of the event stream, for the header's indicator and the pages' polling fallback. */
export const streamState = signal<StreamState>('stopped');

type Handler = (e: ApiEvent) => void;
const handlers = new Set<Handler>();
const resyncHandlers = new Set<() => void>();

let controller: AbortController | undefined;
let lastEventId: string | undefined;
let retryMs = 1000;
let retryTimer: ReturnType<typeof setTimeout> | undefined;

function dispatch(e: ApiEvent): void {
  for (const h of handlers) {
    try {
      h(e);
    } catch (err) {
      console.error('event handler failed', err);
    }
  }
}

async function connect(): Promise<void> {
  controller = new AbortController();
  const { signal: abort } = controller;
  streamState.value = streamState.value === 'live' ? 'reconnecting' : streamState.value === 'stopped' ? 'connecting' : streamState.value;
  try {
    const res = await fetch('/v1/events', {
      headers: { accept: 'text/event-stream', ...authHeaders(), ...(lastEventId !== undefined ? { 'last-event-id': lastEventId } : {}) },
      signal: abort,
      cache: 'no-store',
      credentials: 'omit',
    });
    if (res.status === 404) {
      streamState.value = 'unavailable';
      return;
    }
    if (res.status === 401) {
      await res.body?.cancel();
      stopEvents();
      signalUnauthorized();
      return;
    }
    if (!res.ok || res.body === null) throw new Error(`events: ${res.status}`);
    streamState.value = 'live';
    retryMs = 1000;
    const parser = createParser({
      onEvent: (m) => {
        if (m.id !== undefined) lastEventId = m.id;
        if (m.event === 'resync') {
          for (const h of resyncHandlers) h();
          return;
        }
        let json: unknown;
        try {
          json = JSON.parse(m.data);
        } catch {
          return;
        }
        const parsed = event.safeParse(json);
        if (parsed.success) dispatch(parsed.data);
      },
      onRetry: (ms) => {
        retryMs = Math.max(500, Math.min(ms, 30_000));
      },
    });
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.feed(value);
    }
  } catch {
    // A network error or a cut stream: reconnect below.
  }
  if (abort.aborted) return;
  streamState.value = 'reconnecting';
  retryTimer = setTimeout(() => void connect(), retryMs);
  retryMs = Math.min(retryMs * 2, 15_000);
}

export function startEvents(): void {
  if (controller !== undefined && !controller.signal.aborted) return;
  void connect();
}

export function stopEvents(): void {
  controller?.abort();
  controller = undefined;
  if (retryTimer !== undefined) clearTimeout(retryTimer);
  streamState.value = 'stopped';
}

/** Calls `handler` for every event while the component is mounted (and `onResync` after a gap). */
export function useEvents(handler: Handler, onResync?: () => void): void {
  const ref = useRef(handler);
  ref.current = handler;
  const resyncRef = useRef(onResync);
  resyncRef.current = onResync;
  useEffect(() => {
    const h: Handler = (e) => ref.current(e);
    const r = (): void => resyncRef.current?.();
    handlers.add(h);
    resyncHandlers.add(r);
    return () => {
      handlers.delete(h);
      resyncHandlers.delete(r);
    };
  }, []);
}

/** Runs `poll` every `ms` while the event stream is not live (and once when it becomes live again). */
export function usePollingFallback(poll: () => void, ms: number, active = true): void {
  const state = streamState.use();
  const ref = useRef(poll);
  ref.current = poll;
  useEffect(() => {
    if (!active || state === 'live' || state === 'connecting') return;
    const t = setInterval(() => ref.current(), ms);
    return () => clearInterval(t);
  }, [state, ms, active]);
}
