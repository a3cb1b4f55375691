/**
 * Lean Deepgram Voice Agent echo agent for the benchmark, at
 * `ws://127.0.0.1:PORT/v1/agent/converse` (`DEEPGRAM_AGENT_URL`).
 *
 * As the service: the upgrade needs `Authorization: Token <key>` (401
 * otherwise); `Welcome {request_id}` on open; the first client message must be
 * one `Settings` declaring mulaw 8000 in and mulaw 8000 `container: "none"` out
 * (else `Error` `NON_SETTINGS_MESSAGE_BEFORE_SETTINGS` / `INVALID_SETTINGS` and
 * close), answered with `SettingsApplied`; a second `Settings` is
 * `SETTINGS_ALREADY_APPLIED`; `KeepAlive` is accepted, `UpdatePrompt` answered
 * with `PromptUpdated`; anything unparsable is `UNPARSABLE_CLIENT_MESSAGE`.
 *
 * Echo: binary audio both ways. Each caller frame goes back at once as the same
 * Buffer; `AgentStartedSpeaking` comes before the first audio of each reply. A
 * marker frame (see `bench/frames.ts`) is not echoed: it gets
 * `UserStartedSpeaking` (the barge-in signal) and then `AgentStartedSpeaking`
 * (the next reply starts, so the bridge plays echoes again).
 */
import { randomUUID } from 'node:crypto';
import { WebSocket } from 'ws';
import { afterDelay, asBuffer, isMarkerBytes, isObj, listenEchoServer, parseObject, refuseUpgrade, type EchoAgent, type EchoAgentOptions } from './common.js';

export interface DeepgramEchoOptions extends EchoAgentOptions {
  /** The key to require (`Authorization: Token <key>`); any key when unset. */
  apiKey?: string;
}

const BINARY = { binary: true } as const;
const AGENT_STARTED = JSON.stringify({ type: 'AgentStartedSpeaking', total_latency: 0.01, tts_latency: 0, ttt_latency: 0.01 });
const USER_STARTED = JSON.stringify({ type: 'UserStartedSpeaking' });
/** Client messages accepted after Settings (besides audio). */
const CLIENT_TYPES = new Set(['KeepAlive', 'UpdatePrompt', 'UpdateSpeak', 'UpdateThink', 'UpdateListen', 'InjectUserMessage', 'InjectAgentMessage', 'FunctionCallResponse']);

/** Starts the agent; resolves once it listens. */
export function startDeepgramEcho(opts: DeepgramEchoOptions = {}): Promise<EchoAgent> {
  const marker = opts.bargeInMarker !== false;
  return listenEchoServer(
    opts,
    (req, url, socket, accept) => {
      if (url.pathname !== '/v1/agent/converse') return refuseUpgrade(socket, 404, { err_code: 'NOT_FOUND', err_msg: `No route for ${url.pathname}` });
      const key = /^Token (\S+)$/.exec(req.headers.authorization ?? '')?.[1];
      if (key === undefined || (opts.apiKey !== undefined && key !== opts.apiKey)) {
        return refuseUpgrade(socket, 401, { err_code: 'INVALID_AUTH', err_msg: 'Invalid credentials.' });
      }
      accept((ws) => new DeepgramEchoConnection(ws, marker, opts.readyDelayMs ?? 0));
    },
    (origin) => `ws://${origin}/v1/agent/converse`,
  );
}

function settingsProblem(s: Record<string, unknown>): string | undefined {
  const audio = isObj(s.audio) ? s.audio : undefined;
  const input = isObj(audio?.input) ? audio.input : undefined;
  const output = isObj(audio?.output) ? audio.output : undefined;
  if (input?.encoding !== 'mulaw' || input.sample_rate !== 8000) return 'the benchmark echo agent takes audio.input mulaw 8000 only';
  if (output?.encoding !== 'mulaw' || output.sample_rate !== 8000 || output.container !== 'none') return 'the benchmark echo agent speaks audio.output mulaw 8000 container none only';
  if (!isObj(s.agent)) return 'agent is required';
  return undefined;
}

class DeepgramEchoConnection {
  readonly #ws: WebSocket;
  readonly #marker: boolean;
  #settingsSeen = false;
  /** SettingsApplied sent: audio is taken from now on. */
  #applied = false;
  #closing = false;
  /** A reply is under way (AgentStartedSpeaking sent). */
  #speaking = false;

  readonly #readyDelayMs: number;

  constructor(ws: WebSocket, marker: boolean, readyDelayMs: number) {
    this.#ws = ws;
    this.#readyDelayMs = readyDelayMs;
    this.#marker = marker;
    ws.on('message', (data, isBinary) => this.#onMessage(asBuffer(data), isBinary));
    this.#sendText(JSON.stringify({ type: 'Welcome', request_id: randomUUID() }));
  }

  #sendText(text: string): void {
    if (this.#ws.readyState === WebSocket.OPEN) this.#ws.send(text);
  }

  #fail(code: string, description: string): void {
    if (this.#closing) return;
    this.#closing = true;
    this.#sendText(JSON.stringify({ type: 'Error', code, description }));
    this.#ws.close(1008, code);
  }

  #onMessage(buf: Buffer, isBinary: boolean): void {
    if (this.#closing) return;
    if (isBinary) {
      if (!this.#settingsSeen) return this.#fail('NON_SETTINGS_MESSAGE_BEFORE_SETTINGS', 'Audio was sent before Settings.');
      if (this.#applied) this.#onAudio(buf);
      return;
    }
    const o = parseObject(buf.toString('utf8'));
    if (o === undefined || typeof o.type !== 'string') return this.#fail('UNPARSABLE_CLIENT_MESSAGE', 'We could not parse a message you sent.');
    if (!this.#settingsSeen) {
      if (o.type !== 'Settings') return this.#fail('NON_SETTINGS_MESSAGE_BEFORE_SETTINGS', `Expected Settings, got ${o.type.slice(0, 40)}.`);
      const problem = settingsProblem(o);
      if (problem !== undefined) return this.#fail('INVALID_SETTINGS', problem);
      this.#settingsSeen = true;
      afterDelay(this.#ws, this.#readyDelayMs, () => {
        this.#applied = true;
        this.#sendText('{"type":"SettingsApplied"}');
      });
      return;
    }
    if (o.type === 'Settings') return this.#fail('SETTINGS_ALREADY_APPLIED', 'Settings can only be sent once.');
    if (!CLIENT_TYPES.has(o.type)) return this.#fail('UNPARSABLE_CLIENT_MESSAGE', `Unknown message type ${o.type.slice(0, 40)}.`);
    if (o.type === 'UpdatePrompt') this.#sendText('{"type":"PromptUpdated"}');
  }

  #onAudio(buf: Buffer): void {
    if (this.#marker && isMarkerBytes(buf)) {
      this.#sendText(USER_STARTED);
      this.#sendText(AGENT_STARTED);
      this.#speaking = true;
      return;
    }
    if (buf.length === 0 || this.#ws.readyState !== WebSocket.OPEN) return;
    if (!this.#speaking) {
      this.#speaking = true;
      this.#ws.send(AGENT_STARTED);
    }
    this.#ws.send(buf, BINARY);
  }
}
