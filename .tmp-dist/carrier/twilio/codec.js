/**
 * Twilio Media Streams codec: pure functions, no sockets, no REST.
 *
 * Inbound (Twilio → us): `connected`, `start`, `media`, `dtmf`, `mark`, `stop`.
 * Outbound (us → Twilio): only `media`, `mark` and `clear`, with exactly the
 * fields Twilio documents (anything else is rejected by Twilio with 31951).
 *
 * `decodeTwilioMessage` never throws: garbage comes back as a {@link TwilioDecodeError}
 * with a kind the caller counts.
 */
import { z } from 'zod';
import { isBase64 } from '../../audio/base64.js';
/** Largest base64 payload accepted in one inbound `media` frame (Twilio sends 216 chars). */
export const MAX_INBOUND_PAYLOAD_CHARS = 64 * 1024;
const sid = z.string().min(1).max(64);
const startSchema = z.object({
    event: z.literal('start'),
    streamSid: sid.optional(),
    start: z.object({
        streamSid: sid,
        callSid: sid,
        accountSid: z.string().max(64).optional().default(''),
        tracks: z.array(z.string()).optional().default([]),
        customParameters: z.record(z.string(), z.unknown()).optional().nullable(),
        mediaFormat: z
            .object({ encoding: z.string(), sampleRate: z.coerce.number(), channels: z.coerce.number() })
            .optional(),
    }),
});
const markSchema = z.object({ event: z.literal('mark'), streamSid: sid, mark: z.object({ name: z.string().max(256) }) });
const dtmfSchema = z.object({ event: z.literal('dtmf'), streamSid: sid, dtmf: z.object({ digit: z.string().max(8) }) });
const stopSchema = z.object({ event: z.literal('stop'), streamSid: sid });
const bad = (kind, name) => name === undefined ? { event: undefined, kind } : { event: undefined, kind, name: name.slice(0, 40) };
function decodeMedia(o) {
    const media = o.media;
    if (typeof o.streamSid !== 'string' || typeof media !== 'object' || media === null)
        return bad('invalid_fields', 'media');
    const m = media;
    const payload = m.payload;
    if (typeof payload !== 'string')
        return bad('invalid_fields', 'media');
    if (payload.length > MAX_INBOUND_PAYLOAD_CHARS || !isBase64(payload))
        return bad('bad_payload', 'media');
    return { event: 'media', streamSid: o.streamSid, payload, track: typeof m.track === 'string' ? m.track : undefined };
}
/** Decodes one text frame from Twilio. Never throws. */
export function decodeTwilioMessage(text) {
    let raw;
    try {
        raw = JSON.parse(text);
    }
    catch {
        return bad('non_json');
    }
    if (typeof raw !== 'object' || raw === null || Array.isArray(raw))
        return bad('not_object');
    const o = raw;
    switch (o.event) {
        case 'media':
            return decodeMedia(o);
        case 'mark': {
            const r = markSchema.safeParse(o);
            return r.success ? { event: 'mark', streamSid: r.data.streamSid, name: r.data.mark.name } : bad('invalid_fields', 'mark');
        }
        case 'connected':
            return { event: 'connected' };
        case 'start': {
            const r = startSchema.safeParse(o);
            if (!r.success)
                return bad('invalid_fields', 'start');
            const s = r.data.start;
            if (r.data.streamSid !== undefined && r.data.streamSid !== s.streamSid)
                return bad('invalid_fields', 'start');
            const customParameters = {};
            for (const [k, v] of Object.entries(s.customParameters ?? {})) {
                if (typeof v === 'string')
                    customParameters[k] = v;
            }
            return {
                event: 'start',
                streamSid: s.streamSid,
                callSid: s.callSid,
                accountSid: s.accountSid,
                tracks: s.tracks,
                customParameters,
                mediaFormat: s.mediaFormat,
            };
        }
        case 'dtmf': {
            const r = dtmfSchema.safeParse(o);
            return r.success ? { event: 'dtmf', streamSid: r.data.streamSid, digit: r.data.dtmf.digit } : bad('invalid_fields', 'dtmf');
        }
        case 'stop': {
            const r = stopSchema.safeParse(o);
            return r.success ? { event: 'stop', streamSid: r.data.streamSid } : bad('invalid_fields', 'stop');
        }
        default:
            return bad('unknown_event', typeof o.event === 'string' ? o.event : undefined);
    }
}
/**
 * Encoders for the three messages Twilio accepts on a bidirectional stream.
 * Bound to one streamSid so the hot path only concatenates strings.
 */
export class TwilioEncoder {
    streamSid;
    #mediaPrefix;
    #markPrefix;
    #clear;
    constructor(streamSid) {
        this.streamSid = streamSid;
        const sidJson = JSON.stringify(streamSid);
        this.#mediaPrefix = `{"event":"media","streamSid":${sidJson},"media":{"payload":"`;
        this.#markPrefix = `{"event":"mark","streamSid":${sidJson},"mark":{"name":`;
        this.#clear = `{"event":"clear","streamSid":${sidJson}}`;
    }
    /** `payload` must already be validated base64 (it needs no JSON escaping). */
    media(payload) {
        return this.#mediaPrefix + payload + '"}}';
    }
    mark(name) {
        return this.#markPrefix + JSON.stringify(name) + '}}';
    }
    clear() {
        return this.#clear;
    }
}
//# sourceMappingURL=codec.js.map