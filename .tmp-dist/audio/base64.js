/** Strict standard base64 (RFC 4648 §4, padded). Twilio and PlayAI both use it for audio. */
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;
/** True when `s` is padded standard base64 (the empty string included). */
export function isBase64(s) {
    return (s.length & 3) === 0 && BASE64.test(s);
}
/** Number of bytes a valid padded base64 string decodes to, without decoding it. */
export function base64ByteLength(s) {
    const n = s.length;
    if (n === 0)
        return 0;
    const pad = s.charCodeAt(n - 1) === 61 ? (s.charCodeAt(n - 2) === 61 ? 2 : 1) : 0;
    return (n >>> 2) * 3 - pad;
}
//# sourceMappingURL=base64.js.map