/**
 * The session manager: the one place that knows every call in flight.
 *
 * A call takes a capacity slot when `/twilio/voice` admits it and gives it
 * back on every exit path: the stream never arrives (the reservation expires),
 * the token is refused, or the session closes for any reason. Tokens minted at
 * the webhook are single use and short lived; the media stream must present
 * one to get a session.
 */
import { randomBytes } from 'node:crypto';
const MAX_SPENT_TOKENS = 10_000;
const MAX_ENDED_RECORDS = 1_000;
export class SessionManager {
    #opts;
    #reservations = new Map();
    #reservationByCall = new Map();
    /** Tokens already claimed or expired, to tell a replay from a forgery in logs. */
    #spent = new Map();
    #sessions = new Map();
    /** Claimed but not yet registered (the session is being built). */
    #claimed = 0;
    #records = new Map();
    #ended = [];
    #draining = false;
    constructor(opts) {
        this.#opts = opts;
    }
    get liveCalls() {
        return this.#sessions.size;
    }
    get reservedSlots() {
        return this.#reservations.size + this.#claimed;
    }
    get capacity() {
        return this.#opts.maxConcurrentCalls;
    }
    /** Slots in use: live sessions plus reservations. */
    get usedSlots() {
        return this.#sessions.size + this.#reservations.size + this.#claimed;
    }
    get draining() {
        return this.#draining;
    }
    /** True when a new call would be admitted now. */
    get ready() {
        return !this.#draining && this.usedSlots < this.capacity;
    }
    resolveRoute(to) {
        const route = this.#opts.routes.get(to);
        const agentId = this.#opts.forceAgentId ?? route?.agentId ?? this.#opts.defaultAgentId;
        const out = { agentId };
        if (route?.prompt !== undefined)
            out.prompt = route.prompt;
        if (route?.customGreeting !== undefined)
            out.customGreeting = route.customGreeting;
        return out;
    }
    /** Admits a call at the webhook: reserves a slot and mints its stream token. */
    admit(call) {
        if (this.#draining)
            return { ok: false, reason: 'draining' };
        // A retried webhook for the same call replaces its earlier reservation.
        const previous = this.#reservationByCall.get(call.callSid);
        if (previous !== undefined)
            this.#dropReservation(previous, 'expired_token');
        if (this.usedSlots >= this.capacity)
            return { ok: false, reason: 'capacity' };
        const route = this.resolveRoute(call.to);
        const token = randomBytes(18).toString('base64url');
        const record = {
            callSid: call.callSid,
            from: call.from,
            to: call.to,
            direction: call.direction,
            agentId: route.agentId,
            createdAt: new Date().toISOString(),
            statusHistory: [],
            transcript: [],
            dtmf: [],
            spokenToCaller: [],
        };
        const timer = setTimeout(() => {
            if (this.#dropReservation(token, 'expired_token'))
                this.#opts.onReservationExpired?.(call.callSid);
        }, this.#opts.tokenTtlMs);
        timer.unref();
        this.#reservations.set(token, { token, callSid: call.callSid, route, record, timer });
        this.#reservationByCall.set(call.callSid, token);
        this.#remember(record);
        return { ok: true, token, route, record };
    }
    /**
     * Redeems a stream token (single use). On success the slot stays held until
     * {@link register} + {@link release}, or {@link abandonClaim} if the session
     * could not be built.
     */
    claim(token, callSid) {
        if (token === undefined || token === '')
            return { ok: false, reason: 'missing_token' };
        const r = this.#reservations.get(token);
        if (r === undefined)
            return { ok: false, reason: this.#spent.get(token) ?? 'unknown_token' };
        this.#dropReservation(token, 'used_token');
        if (r.callSid !== callSid)
            return { ok: false, reason: 'call_mismatch' };
        this.#claimed++;
        return { ok: true, reservation: { token: r.token, callSid: r.callSid, route: r.route, record: r.record } };
    }
    /** Gives back a claimed slot whose session was never registered. */
    abandonClaim() {
        if (this.#claimed > 0)
            this.#claimed--;
    }
    register(session) {
        if (this.#claimed > 0)
            this.#claimed--;
        this.#sessions.set(session.callSid, session);
    }
    /** Called by a session once, when it has closed. */
    release(session) {
        if (this.#sessions.get(session.callSid) === session)
            this.#sessions.delete(session.callSid);
        this.#retire(session.callSid);
    }
    getRecord(callSid) {
        return this.#records.get(callSid);
    }
    getSession(callSid) {
        return this.#sessions.get(callSid);
    }
    sessions() {
        return this.#sessions.values();
    }
    /** Records a Twilio status callback on the call (creating a record for calls we never saw). */
    recordStatus(callSid, status, extra) {
        let record = this.#records.get(callSid);
        if (record === undefined) {
            record = {
                callSid,
                from: extra.from ?? '',
                to: extra.to ?? '',
                direction: extra.direction ?? '',
                agentId: '',
                createdAt: new Date().toISOString(),
                statusHistory: [],
                transcript: [],
                dtmf: [],
                spokenToCaller: [],
            };
            this.#remember(record);
            this.#retire(callSid);
        }
        const entry = { status, at: new Date().toISOString() };
        if (extra.sequence !== undefined)
            entry.sequence = extra.sequence;
        if (extra.duration !== undefined)
            entry.duration = extra.duration;
        record.statusHistory.push(entry);
        if (record.statusHistory.length > 50)
            record.statusHistory.shift();
        // Callbacks may arrive out of order: the latest status is the one with the highest sequence.
        const latest = record.statusHistory.reduce((a, b) => ((b.sequence ?? -1) >= (a.sequence ?? -1) ? b : a));
        record.status = latest.status;
        return record;
    }
    /** Stops admitting calls (readiness goes false). */
    startDrain() {
        this.#draining = true;
    }
    /** Drops every reservation and timer (shutdown). Live sessions are closed by the caller. */
    dispose() {
        for (const token of [...this.#reservations.keys()])
            this.#dropReservation(token, 'expired_token');
    }
    #remember(record) {
        this.#records.set(record.callSid, record);
    }
    /** Queues an ended call's record for eviction once enough newer calls have ended. */
    #retire(callSid) {
        this.#ended.push(callSid);
        while (this.#ended.length > MAX_ENDED_RECORDS) {
            const old = this.#ended.shift();
            if (old !== undefined && !this.#sessions.has(old) && !this.#reservationByCall.has(old))
                this.#records.delete(old);
        }
    }
    #dropReservation(token, as) {
        const r = this.#reservations.get(token);
        if (r === undefined)
            return false;
        clearTimeout(r.timer);
        this.#reservations.delete(token);
        if (this.#reservationByCall.get(r.callSid) === token)
            this.#reservationByCall.delete(r.callSid);
        this.#spent.set(token, as);
        if (this.#spent.size > MAX_SPENT_TOKENS) {
            const oldest = this.#spent.keys().next().value;
            if (oldest !== undefined)
                this.#spent.delete(oldest);
        }
        if (as === 'expired_token' && !this.#sessions.has(r.callSid)) {
            r.record.endReason ??= 'stream_never_started';
            this.#retire(r.callSid);
        }
        return true;
    }
}
//# sourceMappingURL=manager.js.map