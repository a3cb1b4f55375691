/**
 * Live events: what happened on the bridge, as it happens, for `/v1/events`
 * (Server-Sent Events), `npm run watch`, the console, and webhooks listed in
 * `WEBHOOK_EVENTS`. Types and their `data` are part of the public API
 * (README "Live events").
 */
import { z } from 'zod';

export const EVENT_TYPES = ['call.started', 'call.updated', 'call.transcript', 'call.ended', 'campaign.progress', 'campaign.completed'] as const;
export type EventType = (typeof EVENT_TYPES)[number];

const TYPE_SET: ReadonlySet<string> = new Set(EVENT_TYPES);
export function isEventType(s: string): s is EventType {
  return TYPE_SET.has(s);
}

/** What `call.updated` says changed. */
export const CALL_CHANGES = ['status', 'stream_started', 'agent_ready', 'agent_reconnected', 'agent_switched', 'barge_in', 'dtmf', 'dtmf_digits', 'tool_called', 'tool_result', 'spoke', 'hangup_requested', 'session_ended', 'transfer'] as const;
export type CallChange = (typeof CALL_CHANGES)[number];

/** An event as published (the bus gives it its id and time). */
export interface EventInput {
  type: EventType;
  callId?: string | undefined;
  campaignId?: string | undefined;
  data: Record<string, unknown>;
}

/** An event as delivered: the `data:` line of an SSE event is this object as JSON. */
export interface PlaylineEvent {
  /** Opaque, increasing within a process lifetime: `<boot id>-<sequence>` (REDIS_URL: the Redis Stream entry id, increasing across the fleet). */
  id: string;
  type: EventType;
  /** ISO 8601. */
  at: string;
  callId?: string;
  campaignId?: string;
  data: Record<string, unknown>;
}

/** Which events a subscriber wants; every given field must match. */
export interface EventFilter {
  callId?: string | undefined;
  campaignId?: string | undefined;
  /** Empty or absent: every type. */
  types?: ReadonlySet<EventType> | undefined;
}

export function matches(f: EventFilter, e: PlaylineEvent): boolean {
  if (f.types !== undefined && f.types.size > 0 && !f.types.has(e.type)) return false;
  if (f.callId !== undefined && e.callId !== f.callId) return false;
  if (f.campaignId !== undefined && e.campaignId !== f.campaignId) return false;
  return true;
}

/** Why a resume from an id is not possible: the id is older than the window, or not one of this process. */
export type ResyncReason = 'too_old' | 'unknown_id';

export const RESYNC_MESSAGE =
  'events since that id are not available (older than the retained window, or from before a restart): refetch state with GET /v1/live and GET /v1/calls, then follow the events from here';

/** The `data` of an SSE `resync` event. */
export const resyncSchema = z.object({ reason: z.enum(['too_old', 'unknown_id']), message: z.string() }).meta({ id: 'EventResync' });

/** The JSON of an event's `data:` line, for the OpenAPI document. */
export const eventSchema = z
  .object({
    id: z.string().describe('Opaque, increasing within a process lifetime (with REDIS_URL, across the fleet); send it back as Last-Event-ID to resume'),
    type: z.enum(EVENT_TYPES),
    at: z.iso.datetime(),
    callId: z.string().optional(),
    campaignId: z.string().optional(),
    data: z
      .record(z.string(), z.unknown())
      .describe(
        'call.started / call.ended: {call}; call.updated: {change, status?, bargeIns?, …}; call.transcript: {role, text}; campaign.progress: {status, counts, activeCalls, etaSeconds}; campaign.completed: {status, counts}',
      ),
  })
  .meta({ id: 'Event' });

/** What `WEBHOOK_EVENTS` may list: the live event types, and `call.completed` (the post-call webhook). */
export const WEBHOOK_EVENT_TYPES = ['call.completed', ...EVENT_TYPES] as const;
export type WebhookEventType = (typeof WEBHOOK_EVENT_TYPES)[number];
