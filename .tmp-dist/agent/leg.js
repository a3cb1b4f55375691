/**
 * The agent leg: one WebSocket to a PlayAI-protocol agent (`/v1/talk/{agentId}`).
 *
 * Transport only: it opens the socket, sends `setup` first, decodes frames with
 * the pure codec and hands them to the session through {@link AgentLegHandlers}.
 * It owns its socket and heartbeat timer and releases both in `close()`.
 */
import WebSocket from 'ws';
import { decodeAgentMessage, encodeAudioIn, encodeSetup } from './protocol.js';
export const DEFAULT_AGENT_MAX_PAYLOAD = 4 * 1024 * 1024;
/** Opens an agent leg over `ws`. */
export const connectAgent = (opts) => new WsAgentLeg(opts);
class WsAgentLeg {
    #ws;
    #handlers;
    #heartbeat;
    #awaitingPong = false;
    #closedNotified = false;
    #byUs = false;
    #error;
    constructor(opts) {
        this.#handlers = opts.handlers;
        const url = `${opts.baseUrl}/v1/talk/${encodeURIComponent(opts.agentId)}`;
        this.#ws = new WebSocket(url, {
            perMessageDeflate: false,
            maxPayload: opts.maxPayload ?? DEFAULT_AGENT_MAX_PAYLOAD,
            handshakeTimeout: opts.handshakeTimeoutMs ?? 10_000,
        });
        const ws = this.#ws;
        const setupText = encodeSetup(opts.setup);
        ws.on('open', () => {
            ws.send(setupText);
            const every = opts.heartbeatMs ?? 0;
            if (every > 0) {
                this.#heartbeat = setInterval(() => this.#beat(), every);
                this.#heartbeat.unref();
            }
            this.#handlers.onOpen();
        });
        ws.on('pong', () => {
            this.#awaitingPong = false;
        });
        ws.on('message', (data, isBinary) => this.#onMessage(data, isBinary));
        ws.on('error', (err) => {
            // ws emits 'close' after 'error'; remember why.
            this.#error ??= err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH' ? 'oversized frame' : err.message || 'socket error';
            if (err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH')
                this.#handlers.onBadFrame('oversized');
        });
        ws.on('unexpected-response', (_req, res) => {
            this.#error = `handshake refused with HTTP ${res.statusCode ?? '?'}`;
            res.resume();
            ws.terminate();
        });
        ws.on('close', (code, reason) => this.#notifyClose(code, reason.toString('utf8').slice(0, 200)));
    }
    get isOpen() {
        return this.#ws.readyState === WebSocket.OPEN;
    }
    get bufferedAmount() {
        return this.#ws.bufferedAmount;
    }
    sendAudio(b64) {
        if (this.#ws.readyState !== WebSocket.OPEN)
            return false;
        this.#ws.send(encodeAudioIn(b64));
        return true;
    }
    close(code = 1000, reason = '') {
        this.#byUs = true;
        this.#stopHeartbeat();
        const ws = this.#ws;
        if (ws.readyState === WebSocket.OPEN) {
            ws.close(code, reason);
            // Do not wait for the agent to complete the close handshake.
            setTimeout(() => ws.terminate(), 2000).unref();
        }
        else if (ws.readyState === WebSocket.CONNECTING) {
            ws.terminate();
        }
    }
    #beat() {
        if (this.#awaitingPong) {
            this.#error ??= 'heartbeat lost';
            this.#ws.terminate();
            return;
        }
        this.#awaitingPong = true;
        this.#ws.ping();
    }
    #stopHeartbeat() {
        if (this.#heartbeat !== undefined) {
            clearInterval(this.#heartbeat);
            this.#heartbeat = undefined;
        }
    }
    #onMessage(data, isBinary) {
        if (isBinary) {
            this.#handlers.onBadFrame('binary');
            return;
        }
        const text = typeof data === 'string' ? data : Array.isArray(data) ? Buffer.concat(data).toString('utf8') : Buffer.from(data).toString('utf8');
        const msg = decodeAgentMessage(text);
        if (msg.type === undefined)
            this.#handlers.onBadFrame(msg.kind, msg.name);
        else
            this.#handlers.onMessage(msg);
    }
    #notifyClose(code, reason) {
        this.#stopHeartbeat();
        if (this.#closedNotified)
            return;
        this.#closedNotified = true;
        const info = { code, reason, byUs: this.#byUs };
        if (this.#error !== undefined)
            info.error = this.#error;
        this.#handlers.onClose(info);
    }
}
//# sourceMappingURL=leg.js.map