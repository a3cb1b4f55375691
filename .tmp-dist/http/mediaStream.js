import { TwilioStreamConnection } from '../carrier/twilio/stream.js';
import { CallSession } from '../session/callSession.js';
import { streamAuth } from './twilioAuth.js';
export async function mediaStreamRoute(app, deps) {
    const { config, manager, metrics, logger } = deps;
    const authOpts = { authToken: config.twilio.authToken, publicUrl: config.publicUrl, streamUrl: config.streamUrl, metrics };
    const onStart = (start, leg) => {
        const claim = manager.claim(start.customParameters.token, start.callSid);
        if (!claim.ok) {
            metrics.streamRejectedTotal.labels(claim.reason).inc();
            logger.warn({ callSid: start.callSid, streamSid: start.streamSid, reason: claim.reason }, 'media stream refused: bad token');
            return { accept: false, reason: claim.reason };
        }
        let session;
        try {
            session = new CallSession({
                reservation: claim.reservation,
                streamSid: start.streamSid,
                carrier: leg,
                connectAgent: deps.connectAgent,
                callControl: deps.callControl,
                settings: deps.settings,
                metrics,
                logger,
                onClosed: (s) => manager.release(s),
            });
        }
        catch (err) {
            manager.abandonClaim();
            logger.error({ err, callSid: start.callSid }, 'could not create a call session');
            return { accept: false, reason: 'internal_error' };
        }
        manager.register(session);
        session.start();
        return { accept: true, handlers: session };
    };
    app.get('/twilio/media-stream', { websocket: true, preValidation: streamAuth(authOpts) }, (socket) => {
        new TwilioStreamConnection(socket, {
            startTimeoutMs: config.timeouts.startTimeoutMs,
            onStart,
            onHandshakeEvent: (event, detail) => {
                if (event === 'refused')
                    return; // counted in onStart
                metrics.streamRejectedTotal.labels(event).inc();
                logger.warn({ event, detail }, 'media stream ended before a call started');
            },
            onHandshakeBadFrame: (kind, name) => {
                metrics.badFramesTotal.labels('twilio', kind).inc();
                logger.warn({ kind, event: name }, 'dropped a bad frame before start');
            },
        });
    });
}
//# sourceMappingURL=mediaStream.js.map