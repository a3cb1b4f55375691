/**
 * `GET /v1/events`: live events as Server-Sent Events (see `src/events/`).
 *
 * A stream writes straight to the response (hijacked: no serialisation, no
 * per-event logging). It resumes after `Last-Event-ID` (or `?lastEventId=`)
 * when the bus still has that id, else its first event is `resync`. A comment
 * goes out every 15 s so proxies and clients know the stream is alive.
 *
 * Writes follow the socket: when it stops draining, the stream pauses its
 * subscription (the bus keeps a cursor, not a copy) and resumes on `drain`,
 * so a large replay reaches a reading client whole. A client that does not
 * read is cut off (counted in `playline_events_consumers_cut_total`) when its
 * unsent bytes exceed a bound, when it has not drained for the stall time,
 * or when the events it has not taken leave the bus's window: a stuck
 * consumer costs at most the bound. Every way a stream ends (client gone, cut
 * off, server closing) goes through one idempotent close that releases its
 * subscription and timers.
 */
import type { ServerResponse } from 'node:http';
import type { FastifyInstance } from 'fastify';
import { serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { BusEvent, EventBus, Subscription } from '../events/bus.js';
import { EVENT_TYPES, eventSchema, isEventType, RESYNC_MESSAGE, resyncSchema, type EventType, type ResyncReason } from '../events/types.js';
import { apiAuth } from './auth.js';
import { ApiError, errorResponses } from './errors.js';
import type { ApiTypeProvider } from './schemas.js';

export interface EventsRouteOptions {
  bus: EventBus;
  apiToken?: string | undefined;
  localMode: boolean;
  /** A stream was cut off for not reading (metrics). */
  onCutOff?(): void;
  /** Interval of the keepalive comment (default 15 s). */
  keepaliveMs?: number;
  /** Unsent bytes a stream may hold before it is cut off (default 1 MiB). */
  maxBufferedBytes?: number;
  /** How long a stream may stay without draining before it is cut off (default 30 s). */
  stallMs?: number;
}

const id = z.string().min(1).max(64);

export const eventsQuery = z
  .object({
    callId: id.optional().describe('Only events of this call'),
    campaignId: id.optional().describe('Only events of this campaign (its calls and its progress)'),
    types: z.string().max(500).optional().describe(`Comma-separated event types to receive: ${EVENT_TYPES.join(', ')} (default all)`),
    lastEventId: z.string().max(100).optional().describe('Resume after this event id (as the Last-Event-ID header, for clients that cannot set headers)'),
  })
  .strict();

export const eventsHeaders = z.looseObject({
  'last-event-id': z.string().max(100).optional().describe('Resume after this event id: later retained events first, then live; an id too old or of another process lifetime gets a resync event'),
});

const eventsReply = {
  description: [
    'A text/event-stream. Each event: `id: <id>`, `event: <type>`, `data: <the Event object as JSON>`.',
    'A resumed stream whose id cannot be resumed starts with `event: resync` and `data: {"reason":"too_old"|"unknown_id","message":…}`.',
    'A `: keepalive` comment every 15 s.',
  ].join(' '),
  content: { 'text/event-stream': { schema: z.union([eventSchema, resyncSchema]) } },
};

/** Parses `?types=`: a 400 naming the valid types for an unknown one. */
export function parseTypes(text: string | undefined): Set<EventType> | undefined {
  if (text === undefined || text.trim() === '') return undefined;
  const out = new Set<EventType>();
  for (const part of text.split(',')) {
    const t = part.trim();
    if (t === '') continue;
    if (!isEventType(t)) throw new ApiError('invalid_request', `types: unknown event type ${JSON.stringify(t)}; use a comma-separated list of ${EVENT_TYPES.join(', ')}`, [{ path: 'types', message: `unknown event type ${JSON.stringify(t)}` }]);
    out.add(t);
  }
  return out;
}

/** One open event stream and the one way it ends. */
class EventStream {
  readonly #res: ServerResponse;
  readonly #maxBuffered: number;
  readonly #onCutOff: () => void;
  readonly #onClosed: (s: EventStream) => void;
  readonly #stallMs: number;
  #sub: Subscription | undefined;
  #timer: NodeJS.Timeout | undefined;
  /** Runs while the socket is not draining. */
  #stall: NodeJS.Timeout | undefined;
  #closed = false;

  constructor(res: ServerResponse, opts: { maxBuffered: number; keepaliveMs: number; stallMs: number; onCutOff(): void; onClosed(s: EventStream): void }) {
    this.#res = res;
    this.#maxBuffered = opts.maxBuffered;
    this.#stallMs = opts.stallMs;
    this.#onCutOff = opts.onCutOff;
    this.#onClosed = opts.onClosed;
    res.on('close', () => this.close('client'));
    res.on('error', () => this.close('client'));
    res.on('drain', () => {
      if (this.#stall !== undefined) clearTimeout(this.#stall);
      this.#stall = undefined;
      this.#sub?.resume();
    });
    this.#timer = setInterval(() => this.#write(': keepalive\n\n'), opts.keepaliveMs);
    this.#timer.unref();
  }

  /** Subscribes; replayed events (and a resync) are written before this returns. */
  follow(bus: EventBus, filter: Parameters<EventBus['subscribe']>[0]['filter'], after: string | undefined): void {
    const sub = bus.subscribe({
      filter,
      after,
      onEvent: (e) => this.#event(e),
      onResync: (reason) => this.#resync(reason),
      // It did not take its events while the bus still had them.
      onOverrun: () => this.close('cut_off'),
    });
    if (this.#closed) sub.close();
    else this.#sub = sub;
  }

  write(text: string): void {
    this.#write(text);
  }

  /** False: the socket is not draining, pause until it does. */
  #event(e: BusEvent): boolean {
    return this.#write(`id: ${e.event.id}\nevent: ${e.event.type}\ndata: ${e.json}\n\n`);
  }

  #resync(reason: ResyncReason): void {
    this.#write(`event: resync\ndata: ${JSON.stringify({ reason, message: RESYNC_MESSAGE })}\n\n`);
  }

  #write(text: string): boolean {
    if (this.#closed) return false;
    const res = this.#res;
    if (res.destroyed || res.writableEnded) {
      this.close('client');
      return false;
    }
    const flowing = res.write(text);
    // Unsent bytes: the response's own buffer and its socket's.
    if (res.writableLength > this.#maxBuffered) {
      this.close('cut_off');
      return false;
    }
    if (!flowing && this.#stall === undefined) {
      this.#stall = setTimeout(() => this.close('cut_off'), this.#stallMs);
      this.#stall.unref();
    }
    return flowing;
  }

  /** Ends the stream once, whatever the reason; releases the subscription and the timer. */
  close(why: 'client' | 'cut_off' | 'server'): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
    if (this.#stall !== undefined) clearTimeout(this.#stall);
    this.#stall = undefined;
    this.#sub?.close();
    this.#sub = undefined;
    this.#onClosed(this);
    if (why === 'cut_off') {
      this.#onCutOff();
      // Its unsent bytes are dropped with the socket: that is the memory bound.
      this.#res.destroy();
    } else if (why === 'client') {
      // A client that went away may leave its socket half open: it is of no more use.
      this.#res.destroy();
    } else {
      // The connection goes too once the stream's end is sent: a kept-alive socket would hold the server's close.
      const socket = this.#res.socket;
      this.#res.end(() => socket?.end());
    }
  }
}

export async function eventsRoutes(parent: FastifyInstance, opts: EventsRouteOptions): Promise<void> {
  const app = parent.withTypeProvider<ApiTypeProvider>();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  app.addHook('onRequest', apiAuth({ token: opts.apiToken, localMode: opts.localMode }));
  const open = new Set<EventStream>();
  const keepaliveMs = opts.keepaliveMs ?? 15_000;
  const maxBuffered = opts.maxBufferedBytes ?? 1024 * 1024;
  app.addHook('preClose', async () => {
    for (const s of [...open]) s.close('server');
  });

  app.get(
    '/v1/events',
    {
      schema: {
        tags: ['events'],
        summary: 'Live events (Server-Sent Events): calls starting, changing, speaking and ending; campaign progress',
        querystring: eventsQuery,
        headers: eventsHeaders,
        response: { 200: eventsReply, ...errorResponses(400, 401) },
      },
    },
    (req, reply) => {
      const q = req.query;
      const filter = { callId: q.callId, campaignId: q.campaignId, types: parseTypes(q.types) };
      const header = req.headers['last-event-id'];
      const after = typeof header === 'string' && header !== '' ? header : q.lastEventId !== '' ? q.lastEventId : undefined;
      reply.hijack();
      const res = reply.raw;
      res.writeHead(200, {
        'content-type': 'text/event-stream; charset=utf-8',
        'cache-control': 'no-cache, no-transform',
        connection: 'keep-alive',
        // Proxies (nginx) must pass events through as they come.
        'x-accel-buffering': 'no',
      });
      const stream = new EventStream(res, {
        maxBuffered,
        keepaliveMs,
        stallMs: opts.stallMs ?? 30_000,
        onCutOff: () => opts.onCutOff?.(),
        onClosed: (s) => open.delete(s),
      });
      open.add(stream);
      // The reconnection delay for EventSource-style clients, and the headers on their way at once.
      stream.write('retry: 2000\n\n');
      stream.follow(opts.bus, filter, after);
    },
  );
}
