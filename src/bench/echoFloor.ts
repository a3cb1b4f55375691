/**
 * The benchmark floor: the least a Twilio Media Streams server can do per frame.
 *
 * A plain `node:http` + `ws` server on 127.0.0.1 that answers `POST /twilio/voice`
 * with TwiML connecting a stream to itself, and on the stream `JSON.parse`s every
 * message and answers every `media` with
 * `JSON.stringify({ event: 'media', streamSid, media: { payload } })`.
 * No agent leg, no marks, no signature checks, no metrics: a naive echo, the
 * same work per frame as the classic Twilio sample server.
 *
 *   node dist/bench/echoFloor.js [--port N] [--watch-stdin]
 *
 * Prints `echo floor listening on http://127.0.0.1:PORT` on stdout.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, type RawData } from 'ws';
import { serverArgs, stopOn } from './processLife.js';

const HELP = `Usage: node dist/bench/echoFloor.js [--port N] [--watch-stdin]

Minimal JSON media echo server (the benchmark floor), on 127.0.0.1.
`;

const STREAM_PATH = '/twilio/media-stream';

function text(data: RawData): string {
  if (Buffer.isBuffer(data)) return data.toString('utf8');
  if (Array.isArray(data)) return Buffer.concat(data).toString('utf8');
  return Buffer.from(data).toString('utf8');
}

async function main(): Promise<void> {
  const args = serverArgs('echoFloor', HELP);
  if (args === undefined) return;
  const port = args.port;

  let twiml = '';
  const http = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      const path = (req.url ?? '').split('?', 1)[0];
      if (req.method === 'POST' && path === '/twilio/voice') {
        res.writeHead(200, { 'content-type': 'text/xml' }).end(twiml);
      } else if (req.method === 'POST' && path === '/twilio/status') {
        res.writeHead(204).end();
      } else if (req.method === 'GET' && path === '/healthz') {
        res.writeHead(200, { 'content-type': 'text/plain' }).end('ok\n');
      } else {
        res.writeHead(404).end();
      }
    });
  });
  const wss = new WebSocketServer({ server: http, path: STREAM_PATH, perMessageDeflate: false, maxPayload: 64 * 1024 });
  wss.on('connection', (ws) => {
    ws.on('error', () => {
      /* 'close' follows */
    });
    ws.on('message', (data) => {
      let msg: { event?: unknown; streamSid?: unknown; media?: { payload?: unknown } };
      try {
        msg = JSON.parse(text(data)) as typeof msg;
      } catch {
        return;
      }
      if (msg.event === 'media') {
        ws.send(JSON.stringify({ event: 'media', streamSid: msg.streamSid, media: { payload: msg.media?.payload } }));
      } else if (msg.event === 'stop') {
        ws.close(1000);
      }
    });
  });
  await new Promise<void>((resolve, reject) => {
    http.once('error', reject);
    http.listen(port, '127.0.0.1', () => resolve());
  });
  const actual = (http.address() as AddressInfo).port;
  twiml = `<?xml version="1.0" encoding="UTF-8"?><Response><Connect><Stream url="ws://127.0.0.1:${actual}${STREAM_PATH}"/></Connect></Response>`;
  process.stdout.write(`echo floor listening on http://127.0.0.1:${actual}\n`);

  const stop = (): void => {
    for (const ws of wss.clients) ws.terminate();
    http.closeAllConnections();
    http.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 1000).unref();
  };
  stopOn(stop, args.watchStdin);
}

main().catch((err: unknown) => {
  process.stderr.write(`echoFloor: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exit(1);
});
