/**
 * Transfer targets: the people (numbers or SIP addresses) a call may be handed
 * to, by name. Routes, agents and campaigns declare them; the model, the API
 * and keypad hotkeys pick a name. Playline never dials a number a model made
 * up: a name that is not declared is refused, and the model is told which
 * names exist.
 */
import { z } from 'zod';
import { normalizePhone } from '../outbound/phone.js';

export const DEFAULT_TRANSFER_TIMEOUT_S = 30;

/** A SIP URI as `<Dial><Sip>` takes it. */
const SIP_URI = /^sips?:[^\s<>"]{3,250}$/i;

/**
 * `+E.164` (any international notation in, E.164 out) or a `sip:` URI. A codec, not a transform,
 * so the same schema also encodes the value in API responses (campaign settings).
 */
export const transferAddressSchema = z.codec(z.string().max(256), z.string().describe('+E.164 number or sip: URI'), {
  decode: (v, ctx) => {
    const s = v.trim();
    if (SIP_URI.test(s)) return s;
    const r = normalizePhone(s);
    if (r.ok) return r.e164;
    ctx.issues.push({ code: 'custom', input: v, message: `${JSON.stringify(v.slice(0, 40))} is neither a phone number with its +country code (like +15551234567) nor a sip: URI (like sip:desk@pbx.example.com)` });
    return z.NEVER;
  },
  encode: (v) => v,
});

const callerIdSchema = z.codec(z.string().max(64), z.string().describe('E.164'), {
  decode: (v, ctx) => {
    const r = normalizePhone(v);
    if (r.ok) return r.e164;
    ctx.issues.push({ code: 'custom', input: v, message: `callerId must be one of your Twilio numbers in E.164, like +15551234567 (${r.error})` });
    return z.NEVER;
  },
  encode: (v) => v,
});

const targetObjectSchema = z
  .object({
    to: transferAddressSchema,
    /** Caller ID shown to the person (default: the caller's own number for cold transfers). */
    callerId: callerIdSchema.optional(),
    /** How long the person's phone rings before the caller comes back to the agent. */
    timeoutS: z.number().int().min(5).max(120).default(DEFAULT_TRANSFER_TIMEOUT_S),
    /** What the model is told of this target (e.g. "billing questions"). */
    description: z.string().max(300).optional(),
  })
  .strict();

/** One target: `"+15551234567"` for short, or the object with caller ID and ring timeout. */
const targetInputSchema = z.looseObject({ to: z.string().max(256), callerId: z.string().max(64).optional(), timeoutS: z.number().optional(), description: z.string().optional() });
export const transferTargetSchema = z.codec(z.union([z.string().max(256), targetInputSchema]), targetObjectSchema, {
  decode: (v) => (typeof v === 'string' ? { to: v } : v),
  encode: (t) => t,
});
export type TransferTarget = z.output<typeof targetObjectSchema>;

/** A keypad hotkey's action: `{"transfer": "frontdesk", "mode": "cold"}`. */
export const dtmfActionSchema = z
  .object({ transfer: z.string().min(1).max(40), mode: z.enum(['cold', 'warm']).default('cold') })
  .strict();
export type DtmfAction = z.output<typeof dtmfActionSchema>;

/** Names are what the model says: short, plain words. */
const TARGET_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$/;

/** `transferTargets`: name → target. */
export const transferTargetsSchema = z
  .record(z.string().regex(TARGET_NAME, 'a target name is 1 to 40 letters, digits, _, . or - (the model says it): e.g. "frontdesk"'), transferTargetSchema)
  .refine((r) => Object.keys(r).length <= 32, { message: 'at most 32 transfer targets' });
export type TransferTargets = Record<string, TransferTarget>;

/** The targets a call may use: the route's or campaign's over the agent's (same name: the route wins). */
export function mergeTargets(...layers: Array<TransferTargets | undefined>): TransferTargets {
  const out: TransferTargets = {};
  for (const layer of layers) if (layer !== undefined) Object.assign(out, layer);
  return out;
}

export type TargetLookup = { ok: true; name: string; target: TransferTarget } | { ok: false; error: string };

/** A target by name; a name that is not declared is refused with the names that are. */
export function lookupTarget(targets: TransferTargets, name: string): TargetLookup {
  const target = Object.hasOwn(targets, name) ? targets[name] : undefined;
  if (target !== undefined) return { ok: true, name, target };
  const names = Object.keys(targets);
  return {
    ok: false,
    error:
      names.length === 0
        ? 'no transfer targets are set up for this call: tell the caller a transfer is not possible'
        : `there is no transfer target named ${JSON.stringify(name.slice(0, 40))}: use one of ${names.map((n) => JSON.stringify(n)).join(', ')}`,
  };
}

/** The `transfer_call` tool offered to agents of calls that have targets; `target` is an enum of their names. */
export function transferTool(targets: TransferTargets): { name: string; description: string; parameters: Record<string, unknown> } | undefined {
  const names = Object.keys(targets);
  if (names.length === 0) return undefined;
  const described = names.map((n) => {
    const d = targets[n]?.description;
    return d === undefined ? n : `${n} (${d})`;
  });
  return {
    name: 'transfer_call',
    description:
      `Transfer the caller to a person. Targets: ${described.join('; ')}. Tell the caller you are transferring them first. ` +
      'If nobody answers, the caller comes back to you and you are told what happened.',
    parameters: {
      type: 'object',
      properties: {
        target: { type: 'string', enum: names, description: 'Who to transfer to' },
        mode: { type: 'string', enum: ['cold', 'warm'], description: 'warm: the person hears a summary first; cold (default): connect at once' },
        reason: { type: 'string', description: 'Why, in a few words (the person hears it in a warm transfer)' },
      },
      required: ['target'],
    },
  };
}
