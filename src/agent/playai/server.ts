/**
 * The server side of the PlayAI agent protocol (`ws://host/v1/talk/{agentId}`):
 * framing shared by every PlayAI-protocol server in this repository (the local
 * agent of local mode, the tests' fake agent, the benchmark's echo agent).
 *
 * - {@link listenTalkServer}: an HTTP server that upgrades `/v1/talk/{agentId}`
 *   and refuses anything else the way a WebSocket endpoint does (404/400/503).
 * - {@link decodeSetup}: the strict first frame (μ-law 8 kHz both ways).
 * - {@link decodeClientFrame}: later frames, with a fast path for the exact
 *   `audioIn` shape the bridge sends.
 * - {@link encodeAudioStream}: the hot server → client message.
 *
 * The client side (what the bridge sends and accepts) is `codec.ts`.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type RawData, type ServerOptions, type WebSocket } from 'ws';
import { isBase64 } from '../../audio/base64.js';
import { parseJsonObject } from '../../util/json.js';
import { AUDIO_IN_HEAD, AUDIO_IN_TAIL } from './codec.js';

const TALK_PATH = /^\/v1\/talk\/([^/]+)$/;
const AUDIO_STREAM_HEAD = '{"type":"audioStream","data":"';

/** An `audioStream` message (`b64` is sent as is: validated base64 needs no JSON escaping). */
export function encodeAudioStream(b64: string): string {
  return AUDIO_STREAM_HEAD + b64 + '"}';
}

/** A text frame as a string, whatever shape `ws` delivered it in. */
export function rawToString(data: RawData): string {
  if (Buffer.isBuffer(data)) return data.toString('utf8');
  if (Array.isArray(data)) return Buffer.concat(data).toString('utf8');
  return Buffer.from(data).toString('utf8');
}

/** The fields of a valid `setup` a server acts on. */
export interface ClientSetup {
  apiKey: string | undefined;
  prompt: string | undefined;
  customGreeting: string | undefined;
  continueConversation: string | undefined;
  /** The whole frame, parsed. */
  raw: Record<string, unknown>;
}

function parseObject(text: string): Record<string, unknown> | undefined {
  const o = parseJsonObject(text);
  return typeof o === 'string' ? undefined : o;
}

/** Validates the first frame; returns the refusal message (sent as a fatal 4400) when it is unusable. */
export function decodeSetup(text: string): ClientSetup | string {
  const o = parseObject(text);
  if (o === undefined) return 'first frame must be a JSON setup message';
  if (o.type !== 'setup') return 'first frame must be setup';
  if (o.inputEncoding !== 'mulaw' || o.inputSampleRate !== 8000 || o.outputFormat !== 'mulaw' || o.outputSampleRate !== 8000) {
    return 'only inputEncoding "mulaw" at 8000 Hz and outputFormat "mulaw" at 8000 Hz are supported';
  }
  const optStr = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);
  return {
    apiKey: optStr(o.apiKey),
    prompt: optStr(o.prompt),
    customGreeting: optStr(o.customGreeting),
    continueConversation: optStr(o.continueConversation),
    raw: o,
  };
}

/** A client frame after `setup`. */
export type ClientFrame =
  | { type: 'audioIn'; data: string }
  | { type: 'setup' }
  /** Another client message (bufferEmpty, customInput, …): accepted and ignored by servers. */
  | { type: 'other'; name: string }
  | { type: 'invalid'; why: string };

/** Decodes a frame after `setup`; the exact `audioIn` shape the bridge sends skips JSON.parse. */
export function decodeClientFrame(text: string): ClientFrame {
  if (text.startsWith(AUDIO_IN_HEAD) && text.endsWith(AUDIO_IN_TAIL)) {
    const b64 = text.slice(AUDIO_IN_HEAD.length, -AUDIO_IN_TAIL.length);
    if (isBase64(b64)) return { type: 'audioIn', data: b64 };
  }
  const o = parseObject(text);
  if (o === undefined) return { type: 'invalid', why: 'frame is not a JSON object' };
  if (o.type === 'audioIn') {
    return typeof o.data === 'string' && isBase64(o.data) ? { type: 'audioIn', data: o.data } : { type: 'invalid', why: 'audioIn.data must be base64' };
  }
  if (o.type === 'setup') return { type: 'setup' };
  return { type: 'other', name: typeof o.type === 'string' ? o.type.slice(0, 40) : '' };
}

/** Ends an upgrade request with a bare HTTP status (`"404 Not Found"`). */
export function rejectUpgrade(socket: Duplex, status: string): void {
  socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
}

export interface TalkServerOptions {
  host?: string;
  /** 0 (default) picks a free port. */
  port?: number;
  /** Options of the `ws` server (`noServer` is always set). */
  ws?: Omit<ServerOptions, 'noServer' | 'server' | 'port' | 'host'>;
  /** A socket was accepted on `/v1/talk/{agentId}` (agentId URL-decoded). */
  onConnection(ws: WebSocket, req: IncomingMessage, agentId: string): void;
}

/** A listening PlayAI-protocol endpoint. */
export interface TalkServer {
  /** `ws://host:port`; clients connect to `${url}/v1/talk/{agentId}`. */
  readonly url: string;
  readonly port: number;
  /** Stops accepting; new upgrades get 503. Then closes the listener (sockets are the owner's to end). */
  close(): Promise<void>;
}

/** Listens for `/v1/talk/{agentId}` upgrades; plain HTTP requests get 426. */
export async function listenTalkServer(opts: TalkServerOptions): Promise<TalkServer> {
  const host = opts.host ?? '127.0.0.1';
  const http: Server = createServer((_req, res) => {
    res.writeHead(426, { 'content-type': 'text/plain' }).end('WebSocket endpoint: /v1/talk/{agentId}\n');
  });
  const wss = new WebSocketServer({ perMessageDeflate: false, ...opts.ws, noServer: true });
  await new Promise<void>((resolve, reject) => {
    http.once('error', reject);
    http.listen(opts.port ?? 0, host, () => {
      http.off('error', reject);
      resolve();
    });
  });
  let closing = false;
  http.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    if (closing) return rejectUpgrade(socket, '503 Service Unavailable');
    const match = TALK_PATH.exec((req.url ?? '').split('?', 1)[0] ?? '');
    if (match === null) return rejectUpgrade(socket, '404 Not Found');
    let agentId: string;
    try {
      agentId = decodeURIComponent(match[1] ?? '');
    } catch {
      return rejectUpgrade(socket, '400 Bad Request');
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      if (closing) {
        ws.terminate();
        return;
      }
      opts.onConnection(ws, req, agentId);
    });
  });
  const port = (http.address() as AddressInfo).port;
  return {
    url: `ws://${host.includes(':') ? `[${host}]` : host}:${port}`,
    port,
    async close() {
      closing = true;
      await new Promise<void>((resolve) => wss.close(() => resolve()));
      await new Promise<void>((resolve) => {
        http.close(() => resolve());
        http.closeAllConnections();
      });
    },
  };
}
