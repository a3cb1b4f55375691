/**
 * A tiny application for the carrier-simulator tests: an HTTP server that
 * answers TwiML per path and records every request (form fields, signature),
 * plus a Media Streams WebSocket endpoint that records what the carrier sends.
 */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import twilio from 'twilio';
import { WebSocketServer, type WebSocket } from 'ws';

export const SIM_TOKEN = 'sim-app-token-0123456789abcdef';

export interface AppRequest {
  path: string;
  method: string;
  /** Form fields (POST) or query fields (GET). */
  params: Record<string, string>;
  signature: string;
  /** The signature checks out with `twilio.validateRequest` over the app's public URL. */
  valid: boolean;
  at: number;
}

export interface AppStream {
  socket: WebSocket;
  /** Parsed JSON messages from the carrier, in order. */
  messages: Array<{ event: string; [k: string]: unknown }>;
  closed: Promise<void>;
  isClosed: () => boolean;
  /** `start.callSid`, once received. */
  callSid: () => string | undefined;
}

export type Answer = { status?: number; twiml?: string };

export interface SimApp {
  url: string;
  requests: AppRequest[];
  streams: AppStream[];
  /** Answer for a path (without query); default 200 `<Response/>`. */
  on: (path: string, answer: Answer | ((r: AppRequest) => Answer)) => void;
  /** Requests to one path. */
  to: (path: string) => AppRequest[];
  close: () => Promise<void>;
}

function validFor(url: string, params: Record<string, string>, signature: string): boolean {
  return twilio.validateRequest(SIM_TOKEN, signature, url, params);
}

export async function startSimApp(): Promise<SimApp> {
  const answers = new Map<string, Answer | ((r: AppRequest) => Answer)>();
  const requests: AppRequest[] = [];
  const streams: AppStream[] = [];
  const server: Server = createServer((req: IncomingMessage, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      const u = new URL(req.url ?? '/', url);
      const method = req.method ?? 'GET';
      const params = Object.fromEntries(method === 'GET' ? u.searchParams : new URLSearchParams(body));
      const signature = String(req.headers['x-twilio-signature'] ?? '');
      const r: AppRequest = { path: u.pathname, method, params, signature, valid: validFor(`${url}${req.url ?? ''}`, method === 'GET' ? {} : params, signature), at: Date.now() };
      requests.push(r);
      const a = answers.get(u.pathname);
      const got = typeof a === 'function' ? a(r) : (a ?? {});
      res.writeHead(got.status ?? 200, { 'content-type': 'text/xml' });
      res.end(got.twiml ?? '<Response/>');
    });
  });
  const wss = new WebSocketServer({ server });
  wss.on('connection', (socket) => {
    const messages: AppStream['messages'] = [];
    let closed = false;
    let done: () => void = () => {};
    const closedP = new Promise<void>((resolve) => (done = resolve));
    socket.on('message', (data) => {
      const parsed: unknown = JSON.parse(String(data));
      if (typeof parsed === 'object' && parsed !== null && 'event' in parsed && typeof parsed.event === 'string') messages.push({ ...parsed, event: parsed.event });
    });
    socket.on('close', () => {
      closed = true;
      done();
    });
    streams.push({
      socket,
      messages,
      closed: closedP,
      isClosed: () => closed,
      callSid: () => {
        const start = messages.find((m) => m.event === 'start');
        const s = start?.start;
        return typeof s === 'object' && s !== null && 'callSid' in s && typeof s.callSid === 'string' ? s.callSid : undefined;
      },
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    requests,
    streams,
    on: (path, answer) => answers.set(path, answer),
    to: (path) => requests.filter((r) => r.path === path),
    close: () =>
      new Promise<void>((resolve) => {
        for (const c of wss.clients) c.terminate();
        wss.close();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/** `<Response><Connect><Stream url="ws://…/media"><Parameter …/></Stream></Connect><Hangup/></Response>` on the app. */
export function connectTwiml(app: SimApp, params: Record<string, string> = {}): string {
  const vr = new twilio.twiml.VoiceResponse();
  const s = vr.connect().stream({ url: `${app.url.replace(/^http/, 'ws')}/media` });
  for (const [name, value] of Object.entries(params)) s.parameter({ name, value });
  vr.hangup();
  return vr.toString();
}
