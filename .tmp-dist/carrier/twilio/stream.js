/**
 * The carrier leg: one Twilio Media Streams WebSocket.
 *
 * Listeners are attached in the constructor, synchronously with the upgrade,
 * so `connected`/`start` cannot be missed. Until `start` the connection is in
 * its handshake phase (bounded by a timer); `start` is handed to `onStart`,
 * which either returns the handlers of a call session or refuses the stream.
 * Afterwards every decoded frame goes to those handlers. Frames that fail to
 * decode, carry another streamSid, or arrive out of place are reported through
 * `onBadFrame` and dropped; the call goes on.
 */
import WebSocket from 'ws';
import { decodeTwilioMessage, TwilioEncoder } from './codec.js';
/** Close codes the bridge uses on the Twilio socket. */
export const CLOSE_NORMAL = 1000;
export const CLOSE_POLICY = 1008;
export class TwilioStreamConnection {
    #ws;
    #opts;
    #encoder;
    #streamSid = '';
    #handlers;
    #startTimer;
    #done = false;
    constructor(ws, opts) {
        this.#ws = ws;
        this.#opts = opts;
        ws.on('message', (data, isBinary) => this.#onMessage(data, isBinary));
        ws.on('close', (code) => this.#onClose(code));
        ws.on('error', (err) => {
            if (err.code === 'WS_ERR_UNSUPPORTED_MESSAGE_LENGTH')
                this.#bad('oversized');
        });
        this.#startTimer = setTimeout(() => {
            this.#startTimer = undefined;
            if (this.#handlers === undefined && !this.#done) {
                this.#opts.onHandshakeEvent('start_timeout');
                this.close(CLOSE_POLICY, 'start timeout');
            }
        }, opts.startTimeoutMs);
    }
    get isOpen() {
        return this.#ws.readyState === WebSocket.OPEN;
    }
    get bufferedAmount() {
        return this.#ws.bufferedAmount;
    }
    get streamSid() {
        return this.#streamSid;
    }
    sendMedia(payload) {
        if (this.#encoder !== undefined && this.#ws.readyState === WebSocket.OPEN)
            this.#ws.send(this.#encoder.media(payload));
    }
    sendMark(name) {
        if (this.#encoder !== undefined && this.#ws.readyState === WebSocket.OPEN)
            this.#ws.send(this.#encoder.mark(name));
    }
    sendClear() {
        if (this.#encoder !== undefined && this.#ws.readyState === WebSocket.OPEN)
            this.#ws.send(this.#encoder.clear());
    }
    close(code = CLOSE_NORMAL, reason = '') {
        this.#clearStartTimer();
        const ws = this.#ws;
        if (ws.readyState === WebSocket.OPEN) {
            ws.close(code, reason);
            setTimeout(() => ws.terminate(), 2000).unref();
        }
        else if (ws.readyState === WebSocket.CONNECTING) {
            ws.terminate();
        }
    }
    #clearStartTimer() {
        if (this.#startTimer !== undefined) {
            clearTimeout(this.#startTimer);
            this.#startTimer = undefined;
        }
    }
    #bad(kind, name) {
        if (this.#handlers !== undefined)
            this.#handlers.onBadFrame(kind, name);
        else
            this.#opts.onHandshakeBadFrame(kind, name);
    }
    #onMessage(data, isBinary) {
        try {
            this.#dispatch(data, isBinary);
        }
        catch (err) {
            const h = this.#handlers;
            if (h !== undefined)
                h.onInternalError(err);
            else
                this.close(CLOSE_POLICY, 'internal error');
        }
    }
    #dispatch(data, isBinary) {
        if (isBinary) {
            this.#bad('binary');
            return;
        }
        const msg = decodeTwilioMessage(data.toString());
        const h = this.#handlers;
        switch (msg.event) {
            case undefined:
                this.#bad(msg.kind, msg.name);
                return;
            case 'media':
                if (h === undefined)
                    this.#bad('before_start', 'media');
                else if (msg.streamSid !== this.#streamSid)
                    h.onBadFrame('wrong_stream_sid', 'media');
                else
                    h.onMedia(msg.payload);
                return;
            case 'mark':
                if (h === undefined)
                    this.#bad('before_start', 'mark');
                else if (msg.streamSid !== this.#streamSid)
                    h.onBadFrame('wrong_stream_sid', 'mark');
                else
                    h.onMark(msg.name);
                return;
            case 'dtmf':
                if (h === undefined)
                    this.#bad('before_start', 'dtmf');
                else if (msg.streamSid !== this.#streamSid)
                    h.onBadFrame('wrong_stream_sid', 'dtmf');
                else
                    h.onDtmf(msg.digit);
                return;
            case 'stop':
                if (h === undefined) {
                    this.#bad('before_start', 'stop');
                    this.close(CLOSE_NORMAL, 'stopped before start');
                }
                else if (msg.streamSid !== this.#streamSid)
                    h.onBadFrame('wrong_stream_sid', 'stop');
                else
                    h.onStop();
                return;
            case 'connected':
                return;
            case 'start':
                this.#onStart(msg);
                return;
        }
    }
    #onStart(start) {
        if (this.#handlers !== undefined || this.#done) {
            this.#bad('duplicate_start', 'start');
            return;
        }
        this.#clearStartTimer();
        this.#streamSid = start.streamSid;
        this.#encoder = new TwilioEncoder(start.streamSid);
        const decision = this.#opts.onStart(start, this);
        if (decision.accept) {
            this.#handlers = decision.handlers;
        }
        else {
            this.#done = true;
            this.#encoder = undefined;
            this.#opts.onHandshakeEvent('refused', decision.reason);
            this.close(CLOSE_POLICY, decision.reason.slice(0, 100));
        }
    }
    #onClose(code) {
        this.#clearStartTimer();
        const h = this.#handlers;
        this.#handlers = undefined;
        this.#encoder = undefined;
        if (h !== undefined) {
            try {
                h.onClose(code);
            }
            catch (err) {
                h.onInternalError(err);
            }
        }
        else if (!this.#done)
            this.#opts.onHandshakeEvent('closed_before_start');
        this.#done = true;
    }
}
//# sourceMappingURL=stream.js.map