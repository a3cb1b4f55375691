export class FakeCallControl {
    spoken = [];
    /** What `sayAndHangup` resolves to (true = Twilio accepted the update). */
    accept = true;
    /** When set, called after a request is recorded (e.g. to close the stream like Twilio would). */
    onSay;
    async sayAndHangup(callSid, text) {
        this.spoken.push({ callSid, text });
        this.onSay?.(callSid, text);
        return this.accept;
    }
}
//# sourceMappingURL=fakeCallControl.js.map