import { isValidStreamSignature, isValidWebhookSignature } from '../carrier/twilio/signature.js';
export function isLoopback(address) {
    if (address === undefined)
        return false;
    return address === '::1' || address.startsWith('127.') || address.startsWith('::ffff:127.');
}
function signatureHeader(req) {
    const h = req.headers['x-twilio-signature'];
    return Array.isArray(h) ? h[0] : h;
}
/** preValidation hook for the form-encoded webhooks (runs after the body is parsed). */
export function webhookAuth(opts, route) {
    return async (req, reply) => {
        if (opts.authToken === undefined) {
            if (!isLoopback(req.socket.remoteAddress)) {
                opts.metrics.webhookSignatureFailures.labels(route).inc();
                await reply.code(403).send({ error: 'forbidden', message: 'local mode: Twilio routes only answer loopback clients (set TWILIO_AUTH_TOKEN)' });
            }
            return;
        }
        const params = typeof req.body === 'object' && req.body !== null ? req.body : {};
        const url = opts.publicUrl + req.raw.url;
        if (!isValidWebhookSignature(opts.authToken, signatureHeader(req), url, params)) {
            opts.metrics.webhookSignatureFailures.labels(route).inc();
            req.log.warn({ route }, 'refused a request with a missing or invalid X-Twilio-Signature');
            await reply.code(403).send({ error: 'forbidden', message: 'invalid X-Twilio-Signature' });
        }
    };
}
/** preValidation hook for the media-stream upgrade (runs before the socket is accepted). */
export function streamAuth(opts) {
    return async (req, reply) => {
        if (opts.authToken === undefined) {
            if (!isLoopback(req.socket.remoteAddress)) {
                opts.metrics.webhookSignatureFailures.labels('media-stream').inc();
                await reply.code(403).send({ error: 'forbidden' });
            }
            return;
        }
        if (!isValidStreamSignature(opts.authToken, signatureHeader(req), opts.streamUrl)) {
            opts.metrics.webhookSignatureFailures.labels('media-stream').inc();
            req.log.warn('refused a media-stream upgrade with a missing or invalid X-Twilio-Signature');
            await reply.code(403).send({ error: 'forbidden' });
        }
    };
}
//# sourceMappingURL=twilioAuth.js.map