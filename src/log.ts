/**
 * The root pino logger. Per-call loggers are children bound to callSid,
 * streamSid, agentId and conversationId. Secrets are redacted wherever they
 * might appear in a logged object; audio is never logged.
 */
import pino, { type DestinationStream, type Logger } from 'pino';

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

export type LogFormat = 'json' | 'pretty';

/** LOG_FORMAT if set; otherwise readable logs on a terminal and JSON everywhere else (Docker, systemd, files). */
export function resolveLogFormat(setting: LogFormat | undefined, stdoutIsTTY: boolean | undefined): LogFormat {
  return setting ?? (stdoutIsTTY === true ? 'pretty' : 'json');
}

/**
 * The root logger. `pretty` writes readable, coloured lines through pino-pretty (as a pino
 * transport, in a worker thread); `json` writes one JSON object a line to `destination`
 * (stdout by default). Redaction applies to both.
 */
export function createLogger(level: string, destination?: DestinationStream, format: LogFormat = 'json'): Logger {
  const options = {
    level,
    base: { service: 'playline' },
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  if (format === 'pretty' && destination === undefined) {
    return pino(
      options,
      pino.transport({
        target: 'pino-pretty',
        options: { colorize: true, translateTime: 'SYS:HH:MM:ss.l', ignore: 'pid,hostname,service', singleLine: false },
      }),
    );
  }
  return pino(options, destination);
}
