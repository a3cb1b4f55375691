/**
 * Scriptable fake PlayAI agent (`/v1/talk/{agentId}`) for tests, fault
 * injection and benchmarks. By default it answers a valid `setup` with `init`
 * and then does nothing on its own: tests drive each connection by hand
 * (`audio`, `hangup`, `error`, `terminate`…) and inspect what the bridge sent
 * (`frames`, `audioIn`). Listens on 127.0.0.1 on a random port.
 */
import { randomBytes } from 'node:crypto';
import { createServer } from 'node:http';
import { WebSocket, WebSocketServer } from 'ws';
const DEFAULT_TIMEOUT_MS = 3000;
const TALK_PATH = /^\/v1\/talk\/([^/]+)$/;
const AUDIO_STREAM_PREFIX = '{"type":"audioStream","data":"';
/** Close code used after a fatal error frame. */
const POLICY_CLOSE = 1008;
function rawToString(data) {
    if (Buffer.isBuffer(data))
        return data.toString('utf8');
    if (Array.isArray(data))
        return Buffer.concat(data).toString('utf8');
    return Buffer.from(data).toString('utf8');
}
/**
 * Registers a waiter that settles when `check` yields a value, rejects after
 * `timeoutMs`, and always clears its timer.
 */
function waitUntil(waiters, check, timeoutMs, what, closedError) {
    const now = check();
    if (now !== undefined)
        return Promise.resolve(now.value);
    const early = closedError();
    if (early !== undefined)
        return Promise.reject(early);
    return new Promise((resolve, reject) => {
        const waiter = {
            poll: () => {
                const got = check();
                if (got === undefined)
                    return false;
                clearTimeout(timer);
                waiters.delete(waiter);
                resolve(got.value);
                return true;
            },
            fail: (err) => {
                clearTimeout(timer);
                waiters.delete(waiter);
                reject(err);
            },
        };
        const timer = setTimeout(() => waiter.fail(new Error(`fake agent: timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
        waiters.add(waiter);
    });
}
/** One socket accepted by {@link FakeAgentServer}. */
export class FakeAgentConnection {
    ws;
    options;
    /** The `{agentId}` path segment (URL-decoded). */
    agentId;
    /** Headers of the upgrade request. */
    headers;
    /** The first frame, parsed (undefined until it arrives). */
    setup;
    /** Every parsed JSON-object text frame in arrival order, `setup` included. */
    frames = [];
    /** `data` of every `audioIn` in order (empty keep-alives included). */
    audioIn = [];
    /** Text frames that were not JSON objects, and binary frames. */
    invalidFrames = 0;
    /** Resolves when the socket has closed, with the close code and reason. */
    closed;
    _conversationId;
    isClosed = false;
    waiters = new Set();
    initTimer;
    /** @internal Created by {@link FakeAgentServer}. */
    constructor(ws, req, agentId, options) {
        this.ws = ws;
        this.options = options;
        this.agentId = agentId;
        this.headers = req.headers;
        this.closed = new Promise((resolve) => {
            ws.once('close', (code, reason) => {
                this.isClosed = true;
                if (this.initTimer !== undefined)
                    clearTimeout(this.initTimer);
                this.initTimer = undefined;
                const err = new Error(`fake agent: connection closed (code ${code})`);
                for (const w of [...this.waiters])
                    if (!w.poll())
                        w.fail(err);
                resolve({ code, reason: reason.toString('utf8') });
            });
        });
        ws.on('error', () => {
            /* 'close' follows; nothing else to do */
        });
        ws.on('message', (data, isBinary) => this.onMessage(data, isBinary));
    }
    /** The `conversationId` sent in `init`, if any. */
    get conversationId() {
        return this._conversationId;
    }
    /** Whether the socket is open. */
    get isOpen() {
        return this.ws.readyState === WebSocket.OPEN;
    }
    /** Sends one JSON message (no-op once the socket is not open). */
    send(msg) {
        this.sendRaw(JSON.stringify(msg));
    }
    /** Sends a raw frame: strings as text, Buffers as binary (no-op once not open). */
    sendRaw(data) {
        if (this.isOpen)
            this.ws.send(data, { binary: typeof data !== 'string' });
    }
    /** Sends `init` with the given (or a new random) conversation id. */
    init(conversationId = randomBytes(15).toString('base64url')) {
        this._conversationId = conversationId;
        this.send({ type: 'init', agentOwnerId: 'fake', conversationId });
    }
    /** Sends an `audioStream` chunk (`b64` is sent as is, unchecked). */
    audio(b64) {
        this.sendRaw(AUDIO_STREAM_PREFIX + b64 + '"}');
    }
    newAudioStream() {
        this.send({ type: 'newAudioStream' });
    }
    voiceActivityStart() {
        this.send({ type: 'voiceActivityStart' });
    }
    voiceActivityEnd() {
        this.send({ type: 'voiceActivityEnd' });
    }
    /** Sends `onUserTranscript` or `onAgentTranscript`. */
    transcript(role, message) {
        this.send({ type: role === 'user' ? 'onUserTranscript' : 'onAgentTranscript', message });
    }
    /** Sends `hangup` (default `endedBy: "agent"`); does not close. */
    hangup(endedBy = 'agent') {
        this.send({ type: 'hangup', endedBy });
    }
    /** Sends an `error` frame; `isFatal` is omitted when not given. Does not close. */
    error(code, message = `fake error ${code}`, isFatal) {
        this.send(isFatal === undefined ? { type: 'error', code, message } : { type: 'error', code, message, isFatal });
    }
    /** Starts a clean close handshake. */
    close(code = 1000, reason = '') {
        if (this.ws.readyState === WebSocket.OPEN || this.ws.readyState === WebSocket.CONNECTING)
            this.ws.close(code, reason);
    }
    /** Destroys the TCP connection without a close frame. */
    terminate() {
        this.ws.terminate();
    }
    /**
     * Resolves with the first frame (already received or future) matching `pred`.
     * Rejects on timeout or when the socket closes without a match.
     */
    waitFor(pred, timeoutMs = DEFAULT_TIMEOUT_MS) {
        return this.wait(() => {
            const f = this.frames.find(pred);
            return f === undefined ? undefined : { value: f };
        }, timeoutMs, 'a matching frame');
    }
    /** Resolves with the first `count` `audioIn` payloads once that many arrived. */
    waitForAudioIn(count, timeoutMs = DEFAULT_TIMEOUT_MS) {
        return this.wait(() => (this.audioIn.length >= count ? { value: this.audioIn.slice(0, count) } : undefined), timeoutMs, `${count} audioIn frame(s) (got ${this.audioIn.length})`);
    }
    /** Resolves with the parsed first frame. */
    waitForSetup(timeoutMs = DEFAULT_TIMEOUT_MS) {
        return this.wait(() => (this.setup === undefined ? undefined : { value: this.setup }), timeoutMs, 'setup');
    }
    wait(check, timeoutMs, what) {
        return waitUntil(this.waiters, check, timeoutMs, what, () => this.isClosed ? new Error(`fake agent: connection closed before ${what}`) : undefined);
    }
    onMessage(data, isBinary) {
        if (isBinary) {
            this.invalidFrames++;
            return;
        }
        let parsed;
        try {
            parsed = JSON.parse(rawToString(data));
        }
        catch {
            this.invalidFrames++;
            return;
        }
        if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
            this.invalidFrames++;
            return;
        }
        const frame = parsed;
        this.frames.push(frame);
        if (this.setup === undefined && this.frames.length === 1) {
            this.setup = frame;
            this.onSetup(frame);
        }
        else if (frame.type === 'audioIn' && typeof frame.data === 'string') {
            this.audioIn.push(frame.data);
            if (this.options().echo === true && frame.data.length > 0)
                this.audio(frame.data);
        }
        for (const w of [...this.waiters])
            w.poll();
    }
    onSetup(setup) {
        const opts = this.options();
        if (setup.type !== 'setup') {
            this.error(4400, 'first frame must be setup', true);
            this.close(POLICY_CLOSE, 'first frame must be setup');
            return;
        }
        if (opts.apiKey !== undefined && setup.apiKey !== opts.apiKey) {
            this.error(4401, 'invalid apiKey', true);
            this.close(POLICY_CLOSE, 'unauthorized');
            return;
        }
        if (opts.rejectWith !== undefined) {
            const { code, message = `rejected with ${code}`, isFatal = true } = opts.rejectWith;
            this.error(code, message, isFatal);
            this.close(POLICY_CLOSE, message.slice(0, 120));
            return;
        }
        if (opts.autoInit === false)
            return;
        const delay = opts.initDelayMs ?? 0;
        if (delay <= 0) {
            this.init();
            return;
        }
        this.initTimer = setTimeout(() => {
            this.initTimer = undefined;
            this.init();
        }, delay);
    }
}
/** A fake PlayAI agent server on 127.0.0.1 (random port). */
export class FakeAgentServer {
    http;
    wss;
    /** `ws://127.0.0.1:PORT`; the bridge appends `/v1/talk/{agentId}`. */
    url;
    /** Every accepted connection, in order. */
    connections = [];
    /** Behaviour for connections; may be changed between calls. */
    options;
    claimed = 0;
    waiters = new Set();
    isClosed = false;
    constructor(http, wss, options) {
        this.http = http;
        this.wss = wss;
        this.options = options;
        this.url = `ws://127.0.0.1:${http.address().port}`;
        http.on('upgrade', (req, socket, head) => this.onUpgrade(req, socket, head));
    }
    /** Starts listening on 127.0.0.1 (random port). */
    static async start(opts = {}) {
        const http = createServer((_req, res) => {
            res.writeHead(426).end();
        });
        const wss = new WebSocketServer({ noServer: true, perMessageDeflate: false, maxPayload: 1024 * 1024 });
        await new Promise((resolve, reject) => {
            http.once('error', reject);
            http.listen(0, '127.0.0.1', () => {
                http.off('error', reject);
                resolve();
            });
        });
        return new FakeAgentServer(http, wss, { ...opts });
    }
    /** Resolves with the oldest connection not yet returned by this method, waiting if needed. */
    nextConnection(timeoutMs = DEFAULT_TIMEOUT_MS) {
        return waitUntil(this.waiters, () => {
            const conn = this.connections[this.claimed];
            if (conn === undefined)
                return undefined;
            this.claimed++;
            return { value: conn };
        }, timeoutMs, 'a connection', () => (this.isClosed ? new Error('fake agent: server closed') : undefined));
    }
    /** Terminates every socket, rejects pending waits and stops listening. */
    async close() {
        if (this.isClosed)
            return;
        this.isClosed = true;
        const err = new Error('fake agent: server closed');
        for (const w of [...this.waiters])
            w.fail(err);
        for (const conn of this.connections)
            conn.terminate();
        await new Promise((resolve) => this.wss.close(() => resolve()));
        await new Promise((resolve) => {
            this.http.close(() => resolve());
            this.http.closeAllConnections();
        });
        await Promise.all(this.connections.map((c) => c.closed));
    }
    onUpgrade(req, socket, head) {
        const match = TALK_PATH.exec((req.url ?? '').split('?', 1)[0] ?? '');
        if (this.isClosed || match === null) {
            socket.end(`HTTP/1.1 ${this.isClosed ? '503 Service Unavailable' : '404 Not Found'}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
            return;
        }
        let agentId;
        try {
            agentId = decodeURIComponent(match[1] ?? '');
        }
        catch {
            socket.end('HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
            return;
        }
        this.wss.handleUpgrade(req, socket, head, (ws) => {
            if (this.isClosed) {
                ws.terminate();
                return;
            }
            this.connections.push(new FakeAgentConnection(ws, req, agentId, () => this.options));
            for (const w of [...this.waiters])
                if (w.poll())
                    break;
        });
    }
}
//# sourceMappingURL=fakeAgent.js.map