const PREFIX = 'pl:';
export class PlaybackTracker {
    #bytesPerMark;
    #generation = 0;
    #seq = 0;
    /** Names of marks sent in the current generation and not echoed yet, oldest first. */
    #pending = [];
    #head = 0;
    #unmarkedBytes = 0;
    /** Bytes of agent audio sent to Twilio (all generations). */
    sentBytes = 0;
    /** Bytes confirmed played by mark echoes. */
    playedBytes = 0;
    #pendingBytes = [];
    constructor(markIntervalMs) {
        this.#bytesPerMark = Math.max(1, Math.round(markIntervalMs * 8));
    }
    get generation() {
        return this.#generation;
    }
    /** True while agent audio may still be queued at Twilio (sent but not confirmed played). */
    get queued() {
        return this.#head < this.#pending.length || this.#unmarkedBytes > 0;
    }
    /** True when some audio was sent after the last mark. */
    get hasUnmarkedAudio() {
        return this.#unmarkedBytes > 0;
    }
    /** Marks sent and not yet echoed in the current generation. */
    get pendingMarks() {
        return this.#pending.length - this.#head;
    }
    /**
     * Records `bytes` of audio just sent. Returns the name of a mark to send now
     * when enough unmarked audio has accumulated, otherwise undefined.
     */
    onAudioSent(bytes) {
        this.sentBytes += bytes;
        this.#unmarkedBytes += bytes;
        return this.#unmarkedBytes >= this.#bytesPerMark ? this.flushMark() : undefined;
    }
    /** Returns a mark name covering all unmarked audio (end of a response, or a tail timer), or undefined if there is none. */
    flushMark() {
        if (this.#unmarkedBytes === 0)
            return undefined;
        const name = `${PREFIX}${this.#generation}:${++this.#seq}`;
        this.#pending.push(name);
        this.#pendingBytes.push(this.#unmarkedBytes);
        this.#unmarkedBytes = 0;
        return name;
    }
    /** Classifies a mark echoed by Twilio and advances playback when it is current. */
    onMarkEcho(name) {
        if (!name.startsWith(PREFIX))
            return 'unknown';
        const sep = name.indexOf(':', PREFIX.length);
        const gen = Number(name.slice(PREFIX.length, sep));
        if (sep < 0 || !Number.isInteger(gen))
            return 'unknown';
        if (gen !== this.#generation)
            return gen < this.#generation ? 'stale' : 'unknown';
        // Echoes come back in order; tolerate a lost one by skipping up to the echoed name.
        for (let i = this.#head; i < this.#pending.length; i++) {
            if (this.#pending[i] === name) {
                for (let j = this.#head; j <= i; j++)
                    this.playedBytes += this.#pendingBytes[j] ?? 0;
                this.#head = i + 1;
                this.#compact();
                return 'played';
            }
        }
        return 'unknown';
    }
    /**
     * Forgets everything queued (call right after sending `clear`): the
     * generation moves on so echoes of the flushed marks are stale.
     */
    reset() {
        this.#generation++;
        this.#pending = [];
        this.#pendingBytes = [];
        this.#head = 0;
        this.#unmarkedBytes = 0;
    }
    #compact() {
        if (this.#head === this.#pending.length) {
            this.#pending = [];
            this.#pendingBytes = [];
            this.#head = 0;
        }
        else if (this.#head > 64) {
            this.#pending = this.#pending.slice(this.#head);
            this.#pendingBytes = this.#pendingBytes.slice(this.#head);
            this.#head = 0;
        }
    }
}
//# sourceMappingURL=playback.js.map