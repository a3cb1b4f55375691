/**
 * X-Twilio-Signature checks. URLs are always rebuilt from the configured
 * PUBLIC_URL, never from request headers (a proxy may rewrite Host and scheme).
 */
import twilio from 'twilio';
/** Checks a signed form-encoded webhook: `url` is PUBLIC_URL + the raw path and query. */
export function isValidWebhookSignature(authToken, signature, url, params) {
    if (!signature)
        return false;
    return twilio.validateRequest(authToken, signature, url, params);
}
/**
 * Checks the signature on a Media Streams WebSocket upgrade: Twilio signs the
 * `wss://` URL exactly as written in `<Stream url>` with no parameters; its docs
 * say to also try the URL with a trailing `/`.
 */
export function isValidStreamSignature(authToken, signature, streamUrl) {
    if (!signature)
        return false;
    return (twilio.validateRequest(authToken, signature, streamUrl, {}) ||
        twilio.validateRequest(authToken, signature, `${streamUrl}/`, {}));
}
//# sourceMappingURL=signature.js.map