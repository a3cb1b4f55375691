/**
 * What the console reads from the /v1 API and /v1/events, checked with zod
 * (the `mini` build keeps the bundle small). Only the fields the console shows
 * are declared; others pass through unchecked and unused.
 */
import * as z from 'zod/mini';

const str = z.string();
const nstr = z.nullable(z.string());
const num = z.number();
const nnum = z.nullable(z.number());

export const errorBody = z.object({ error: z.object({ code: str, message: str, details: z.optional(z.unknown()) }) });

export const call = z.object({
  id: str,
  callSid: nstr,
  direction: str,
  to: str,
  from: str,
  agentId: str,
  status: str,
  outcome: nstr,
  answeredBy: nstr,
  campaignId: nstr,
  contactId: nstr,
  endReason: nstr,
  createdAt: str,
  dialedAt: nstr,
  answeredAt: nstr,
  endedAt: nstr,
  durationSeconds: nnum,
  error: z.nullable(z.object({ code: nnum, message: nstr })),
});
export type Call = z.infer<typeof call>;

export const callPage = z.object({ data: z.array(call), nextCursor: nstr });

/** One transfer to a person on a call's record. */
export const transferRecord = z.object({ transferId: str, target: nstr, to: str, mode: str, by: str, requestedAt: str, outcome: str, returned: z.boolean() });
export type TransferRecord = z.infer<typeof transferRecord>;

export const callDetail = z.extend(call, {
  agents: z.array(str),
  events: z.array(z.object({ at: str, type: str, status: nstr, sequence: nnum, data: z.nullable(z.record(z.string(), z.unknown())) })),
  transcript: z.array(z.object({ role: str, text: str, at: str })),
  transcriptSource: str,
  // Servers before transfers have no such field.
  transfers: z.optional(z.array(transferRecord)),
  recording: z.optional(z.nullable(z.object({ backend: str, status: nstr, durationS: nnum, url: str }))),
});
export type CallDetail = z.infer<typeof callDetail>;

/** A person a call may be handed to (GET /v1/live, GET /v1/setup). */
export const transferTarget = z.object({ name: str, to: str, description: z.optional(str), timeoutS: z.optional(num) });
export type TransferTarget = z.infer<typeof transferTarget>;

export const liveCall = z.object({
  callId: nstr,
  callSid: str,
  direction: str,
  from: str,
  to: str,
  agentId: str,
  state: str,
  startedAt: str,
  durationS: num,
  bargeIns: num,
  agentReconnects: z.optional(num),
  campaignId: z.optional(nstr),
  transfer: z.optional(z.object({ available: z.boolean(), targets: z.array(transferTarget) })),
});
export type LiveCall = z.infer<typeof liveCall>;
export const livePage = z.object({ data: z.array(liveCall) });

export const counts = z.object({
  total: num,
  byState: z.object({ pending: num, dialing: num, done: num }),
  byOutcome: z.record(z.string(), num),
  attempts: z.optional(num),
});
export type Counts = z.infer<typeof counts>;

export const progress = z.object({ counts, activeCalls: num, dialsLastMinute: z.optional(num), etaSeconds: nnum });
export type Progress = z.infer<typeof progress>;

export const campaign = z.object({
  id: str,
  name: str,
  status: str,
  pauseReason: nstr,
  lastError: nstr,
  createdAt: str,
  startedAt: nstr,
  completedAt: nstr,
  progress,
  settings: z.record(z.string(), z.unknown()),
});
export type Campaign = z.infer<typeof campaign>;
export const campaignPage = z.object({ data: z.array(campaign), nextCursor: nstr });

export const importReport = z.object({
  rows: num,
  added: num,
  errors: z.array(z.object({ line: num, column: z.optional(str), message: str, value: z.optional(str) })),
  duplicates: z.array(z.object({ line: num, phone: str, firstLine: num })),
  mergedIntoExisting: z.array(z.object({ line: nnum, phone: str, contactId: str })),
});
export type ImportReport = z.infer<typeof importReport>;
export const createCampaignReply = z.object({ campaign, import: z.nullable(importReport) });

export const contact = z.object({
  id: str,
  line: nnum,
  phone: str,
  state: str,
  outcome: nstr,
  attempts: num,
  nextAttemptAt: nstr,
  lastCallId: nstr,
  lastError: nstr,
  updatedAt: str,
  variables: z.record(z.string(), z.string()),
});
export type Contact = z.infer<typeof contact>;
export const contactPage = z.object({ data: z.array(contact), nextCursor: nstr });

export const dncEntry = z.object({ phone: str, reason: nstr, createdAt: str });
export type DncEntry = z.infer<typeof dncEntry>;
export const dncPage = z.object({ data: z.array(dncEntry), nextCursor: nstr });

export const delivery = z.object({
  id: str,
  callId: nstr,
  event: str,
  url: str,
  status: str,
  attempts: num,
  nextAttemptAt: num,
  lastStatusCode: nnum,
  lastError: nstr,
  createdAt: num,
  deliveredAt: nnum,
});
export type Delivery = z.infer<typeof delivery>;
export const deliveries = z.object({ data: z.array(delivery), webhookUrl: z.optional(z.null()) });

export const setup = z.object({
  mode: str,
  defaultAgent: str,
  agents: z.array(
    z.object({
      id: str,
      provider: str,
      up: z.boolean(),
      openSessions: num,
      limit: nnum,
      fallbacks: z.array(str),
      customGreeting: z.optional(str),
      hasPrompt: z.boolean(),
      transferTargets: z.optional(z.array(transferTarget)),
    }),
  ),
  routes: z.array(
    z.object({
      number: str,
      agentId: str,
      prompt: z.optional(str),
      customGreeting: z.optional(str),
      transferTargets: z.optional(z.array(transferTarget)),
      hotkeys: z.optional(z.array(z.object({ key: str, transfer: str, mode: str }))),
    }),
  ),
  capacity: z.object({ maxConcurrentCalls: num, usedSlots: num, liveCalls: num, reservedSlots: num, inboundReserved: num }),
  ready: z.object({ ready: z.boolean(), draining: z.boolean(), agentsDown: z.array(z.unknown()) }),
  webhook: z.object({ configured: z.boolean(), events: z.array(str) }),
});
export type Setup = z.infer<typeof setup>;

export const webCall = z.object({ callId: str, callSid: str, token: str, streamUrl: str, expiresAt: str });
export type WebCall = z.infer<typeof webCall>;

/** One event of /v1/events (section A of the contract). */
export const event = z.object({
  id: str,
  type: str,
  at: str,
  callId: z.optional(nstr),
  campaignId: z.optional(nstr),
  data: z.record(z.string(), z.unknown()),
});
export type ApiEvent = z.infer<typeof event>;

export const transcriptData = z.object({ role: str, text: str });
export const updatedData = z.object({ change: str, status: z.optional(str), bargeIns: z.optional(num), state: z.optional(str) });
/** `call.updated` with `change: "transfer"`: one step of a transfer. */
export const transferData = z.object({
  step: str,
  transferId: z.optional(str),
  target: z.optional(str),
  to: z.optional(str),
  mode: z.optional(str),
  outcome: z.optional(str),
  why: z.optional(str),
});
export const transferReply = z.object({ callId: str, transferId: str, mode: str, status: str });
export const progressData = z.object({ status: str, counts, activeCalls: z.optional(num), etaSeconds: z.optional(nnum) });
export const callData = z.object({ call });

/** Server → browser messages of the media stream (Twilio's bidirectional protocol). */
export const streamMessage = z.discriminatedUnion('event', [
  z.object({ event: z.literal('media'), media: z.object({ payload: str }) }),
  z.object({ event: z.literal('mark'), mark: z.object({ name: str }) }),
  z.object({ event: z.literal('clear') }),
]);
