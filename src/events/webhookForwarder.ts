/**
 * Sends the live events listed in WEBHOOK_EVENTS to WEBHOOK_URL through the
 * durable webhook dispatcher (signed, retried, recorded like the post-call
 * webhook). The body's `data` is the event as `/v1/events` sends it; the
 * `Playline-Event` header is its type. With REDIS_URL the bus carries every
 * process's events; each process forwards only its own, so each is sent once.
 */
import type { EventBus, Subscription } from './bus.js';
import type { EventType } from './types.js';

export interface WebhookSink {
  enqueue(event: string, callId: string | null, payload: object): Promise<string>;
}

export function forwardEventsToWebhook(bus: EventBus, sink: WebhookSink, types: readonly EventType[], onError: (err: unknown) => void): Subscription | undefined {
  if (types.length === 0) return undefined;
  return bus.subscribe({
    filter: { types: new Set(types) },
    onEvent: ({ event, remote }) => {
      if (remote === true) return;
      sink.enqueue(event.type, event.callId ?? null, event).catch(onError);
    },
  });
}
