/**
 * What the benchmark's lean echo agents share: an HTTP server on 127.0.0.1
 * whose upgrades each agent checks itself, the barge-in marker test on base64
 * and on raw bytes, a strict base64 check over a byte span, and writing a
 * number as ASCII digits without making a string.
 *
 * The agents (`openai.ts`, `elevenlabs.ts`, `deepgram.ts`) speak their
 * service's wire protocol the way the service does (handshake, audio events,
 * barge-in signal) but do nothing else: every caller chunk goes back at once as
 * agent audio, and no frame is recorded. Written from the protocol facts
 * (`/work/shared/reference/agent-providers.md`), not from Playline's adapters.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import { parseJsonObject } from '../../util/json.js';
import { BARGE_IN_MARKER, BARGE_IN_MARKER_B64, BARGE_IN_MARKER_OFFSET } from '../../sim/localAgent.js';

/** Options every echo agent takes. */
export interface EchoAgentOptions {
  /** Interface to listen on (default 127.0.0.1). */
  host?: string;
  /** 0 (default): any free port. */
  port?: number;
  /** Answer the benchmark's marker frames with the provider's "caller started speaking" (default true). */
  bargeInMarker?: boolean;
  /**
   * Hold the message that makes a session ready (`session.updated`, the conversation
   * metadata, `SettingsApplied`) this long, as a real service takes time to set up
   * (default 0). The caller audio the bridge holds meanwhile then comes back in a burst,
   * and that much echo stays queued at the simulated caller for the whole call.
   */
  readyDelayMs?: number;
}

/** Runs `fn` after `ms` (at once when 0), unless the socket closed meanwhile. */
export function afterDelay(ws: WebSocket, ms: number, fn: () => void): void {
  if (ms <= 0) {
    fn();
    return;
  }
  const timer = setTimeout(fn, ms);
  ws.once('close', () => clearTimeout(timer));
}

/** A running echo agent. */
export interface EchoAgent {
  /** What the bridge is configured with (the provider's URL variable). */
  readonly url: string;
  readonly port: number;
  /** Open agent sockets. */
  readonly connections: number;
  /** Terminates every socket and stops listening. */
  close(): Promise<void>;
}

/** Length of a 20 ms (160-byte) frame in base64. */
export const FRAME_160_B64 = 216;
const MARKER_B64_BYTES = Buffer.from(BARGE_IN_MARKER_B64, 'latin1');
const MARKER_B64_AT = (BARGE_IN_MARKER_OFFSET / 3) * 4;
const MARKER_BYTES = Buffer.from(BARGE_IN_MARKER);

/** True when the base64 audio at `buf[start, end)` is a benchmark marker frame. */
export function isMarkerB64(buf: Buffer, start: number, end: number): boolean {
  if (end - start !== FRAME_160_B64) return false;
  const at = start + MARKER_B64_AT;
  return buf.compare(MARKER_B64_BYTES, 0, MARKER_B64_BYTES.length, at, at + MARKER_B64_BYTES.length) === 0;
}

/** True when the raw μ-law frame `buf` is a benchmark marker frame. */
export function isMarkerBytes(buf: Buffer): boolean {
  if (buf.length !== 160) return false;
  return buf.compare(MARKER_BYTES, 0, MARKER_BYTES.length, BARGE_IN_MARKER_OFFSET, BARGE_IN_MARKER_OFFSET + MARKER_BYTES.length) === 0;
}

const B64_OK = new Uint8Array(256);
for (const c of 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/') B64_OK[c.charCodeAt(0)] = 1;

/** Strict padded base64 at `buf[start, end)` (what the services accept as audio). */
export function isBase64Span(buf: Buffer, start: number, end: number): boolean {
  const n = end - start;
  if ((n & 3) !== 0) return false;
  let stop = end;
  if (n > 0 && buf[end - 1] === 0x3d) stop = buf[end - 2] === 0x3d ? end - 2 : end - 1;
  for (let i = start; i < stop; i++) if (B64_OK[buf[i] as number] !== 1) return false;
  return true;
}

/** Bytes that the padded base64 at `buf[start, end)` decodes to. */
export function base64Bytes(buf: Buffer, start: number, end: number): number {
  const n = end - start;
  if (n === 0) return 0;
  return (n >>> 2) * 3 - (buf[end - 1] === 0x3d ? (buf[end - 2] === 0x3d ? 2 : 1) : 0);
}

/** True when `buf` starts with `head` and ends with `tail` (and holds something between them). */
export function framedBy(buf: Buffer, head: Buffer, tail: Buffer): boolean {
  const h = head.length;
  const t = tail.length;
  if (buf.length <= h + t) return false;
  return buf.compare(head, 0, h, 0, h) === 0 && buf.compare(tail, 0, t, buf.length - t, buf.length) === 0;
}

/** Writes the non-negative integer `n` as ASCII digits at `off`; returns the offset after them. */
export function writeDigits(buf: Buffer, off: number, n: number): number {
  let len = 1;
  for (let v = n; v >= 10; v = Math.floor(v / 10)) len++;
  let v = n;
  for (let i = off + len - 1; i >= off; i--) {
    buf[i] = 0x30 + (v % 10);
    v = Math.floor(v / 10);
  }
  return off + len;
}

/** The bytes of a text or binary WebSocket message. */
export function asBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

/** Parses a JSON object; undefined for anything else. */
export function parseObject(text: string): Record<string, unknown> | undefined {
  const o = parseJsonObject(text);
  return typeof o === 'string' ? undefined : o;
}

export const isObj = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** Ends an upgrade with an HTTP status and a JSON body. */
export function refuseUpgrade(socket: Duplex, status: number, body: Record<string, unknown>): void {
  const text = JSON.stringify(body);
  socket.end(`HTTP/1.1 ${status} ${status === 401 ? 'Unauthorized' : status === 404 ? 'Not Found' : status === 400 ? 'Bad Request' : 'Error'}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(text)}\r\nConnection: close\r\n\r\n${text}`);
}

/**
 * Listens on `host:port` with a WebSocket server in `noServer` mode: `onUpgrade`
 * checks each upgrade (path, key) and either refuses it or calls `accept`, which
 * hands over the socket and tracks it for `close()`.
 */
export async function listenEchoServer(
  opts: EchoAgentOptions,
  onUpgrade: (req: IncomingMessage, url: URL, socket: Duplex, accept: (onOpen: (ws: WebSocket) => void) => void) => void,
  urlFor: (origin: string) => string,
): Promise<EchoAgent> {
  const host = opts.host ?? '127.0.0.1';
  const http: Server = createServer((_req, res) => {
    res.writeHead(404, { 'content-type': 'text/plain' }).end('not found\n');
  });
  const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 1024 * 1024, skipUTF8Validation: true });
  const sockets = new Set<WebSocket>();
  let closing: Promise<void> | undefined;
  http.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    if (closing !== undefined) {
      socket.destroy();
      return;
    }
    const url = new URL(req.url ?? '/', 'http://echo.invalid');
    onUpgrade(req, url, socket, (onOpen) => {
      wss.handleUpgrade(req, socket, head, (ws) => {
        if (closing !== undefined) {
          ws.terminate();
          return;
        }
        sockets.add(ws);
        ws.once('close', () => sockets.delete(ws));
        ws.on('error', () => {
          /* 'close' follows */
        });
        onOpen(ws);
      });
    });
  });
  await new Promise<void>((resolve, reject) => {
    http.once('error', reject);
    http.listen(opts.port ?? 0, host, () => {
      http.off('error', reject);
      resolve();
    });
  });
  const port = (http.address() as AddressInfo).port;
  const origin = `${host.includes(':') ? `[${host}]` : host}:${port}`;
  return {
    url: urlFor(origin),
    port,
    get connections() {
      return sockets.size;
    },
    close(): Promise<void> {
      closing ??= (async () => {
        for (const ws of sockets) ws.terminate();
        sockets.clear();
        await new Promise<void>((resolve) => wss.close(() => resolve()));
        await new Promise<void>((resolve) => {
          http.close(() => resolve());
          http.closeAllConnections();
        });
      })();
      return closing;
    },
  };
}
