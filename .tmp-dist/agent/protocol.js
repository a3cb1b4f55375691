/**
 * PlayAI agent WebSocket protocol (`/v1/talk/{agentId}`): pure codec.
 *
 * Parsing is tolerant, like PlayAI's own clients: unknown `type`s are reported
 * as `{ type: 'unknown' }` so the caller can count and ignore them, and unknown
 * fields are dropped. Fields the bridge acts on are checked, never cast.
 */
import { isBase64 } from '../audio/base64.js';
/** Documented server messages the bridge deliberately ignores. */
const IGNORED_TYPES = new Set([
    'audioStreamStart',
    'onAgentGreeting',
    'onAgentGreetingEnd',
    'llmStreamEnd',
    'customEvent',
    'exchangeMetrics',
    'SYS_LOG',
    'MEDIA_LOG',
    'navigate',
    'uiEvent',
]);
const bad = (kind, name) => name === undefined ? { type: undefined, kind } : { type: undefined, kind, name: name.slice(0, 40) };
const str = (v) => (typeof v === 'string' ? v : undefined);
/** Decodes one text frame from the agent. Never throws. */
export function decodeAgentMessage(text) {
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
    const type = o.type;
    if (typeof type !== 'string')
        return bad('invalid_fields');
    switch (type) {
        case 'audioStream': {
            const data = o.data;
            if (typeof data !== 'string')
                return bad('invalid_fields', type);
            if (!isBase64(data))
                return bad('bad_audio', type);
            return { type, data };
        }
        case 'init': {
            const conversationId = o.conversationId;
            if (typeof conversationId !== 'string' || conversationId.length === 0 || conversationId.length > 256) {
                return bad('invalid_fields', type);
            }
            return { type, conversationId, agentOwnerId: str(o.agentOwnerId) };
        }
        case 'newAudioStream':
        case 'voiceActivityStart':
        case 'voiceActivityEnd':
        case 'audioStreamEnd':
            return { type };
        case 'hangup':
            return { type, endedBy: str(o.endedBy) };
        case 'error': {
            const code = typeof o.code === 'number' && Number.isFinite(o.code) ? o.code : typeof o.code === 'string' && /^\d+$/.test(o.code) ? Number(o.code) : undefined;
            return {
                type,
                code,
                message: (str(o.message) ?? '').slice(0, 500),
                isFatal: typeof o.isFatal === 'boolean' ? o.isFatal : undefined,
            };
        }
        case 'onUserTranscript':
        case 'onAgentTranscript': {
            const message = str(o.message);
            if (message === undefined)
                return bad('invalid_fields', type);
            return { type, message };
        }
        case 'onAgentInterrupted':
            return { type, updatedMessage: str(o.updatedMessage) };
        default:
            return IGNORED_TYPES.has(type) ? { type: 'ignored', name: type } : { type: 'unknown', name: type.slice(0, 40) };
    }
}
/** Serialises the `setup` frame (always the first frame on the agent socket). */
export function encodeSetup(setup) {
    return JSON.stringify(setup);
}
const AUDIO_IN_PREFIX = '{"type":"audioIn","data":"';
/** `data` must be validated base64 (it needs no JSON escaping). */
export function encodeAudioIn(data) {
    return AUDIO_IN_PREFIX + data + '"}';
}
/**
 * Error codes documented for the agent socket. Codes the bridge must not retry
 * (bad credentials, bad agent, no credits, bad request, unauthorised, concurrency).
 */
export const NON_RETRYABLE_AGENT_ERRORS = new Set([1001, 1002, 1003, 1005, 4400, 4401, 4429]);
/** Codes worth a reconnect with `continueConversation`. */
export const RETRYABLE_AGENT_ERRORS = new Set([3001, 3002, 3003, 3004, 4500, 5001]);
/**
 * Whether an `error` frame ends the agent session. `isFatal` wins when present;
 * otherwise documented non-retryable and retryable codes are fatal for this socket.
 */
export function isFatalAgentError(code, isFatal) {
    if (isFatal !== undefined)
        return isFatal;
    if (code === undefined)
        return false;
    return NON_RETRYABLE_AGENT_ERRORS.has(code) || RETRYABLE_AGENT_ERRORS.has(code);
}
//# sourceMappingURL=protocol.js.map