/**
 * The root pino logger. Per-call loggers are children bound to callSid,
 * streamSid, agentId and conversationId. Secrets are redacted wherever they
 * might appear in a logged object; audio is never logged.
 */
import pino from 'pino';
export const REDACT_PATHS = [
    'req.headers.authorization',
    'req.headers["x-twilio-signature"]',
    'headers.authorization',
    'headers["x-twilio-signature"]',
    'apiKey',
    '*.apiKey',
    'authToken',
    '*.authToken',
    'token',
    '*.token',
    'customParameters.token',
    '*.customParameters.token',
];
export function createLogger(level, destination) {
    return pino({
        level,
        base: { service: 'playline' },
        redact: { paths: REDACT_PATHS, censor: '[redacted]' },
        timestamp: pino.stdTimeFunctions.isoTime,
    }, destination);
}
//# sourceMappingURL=log.js.map