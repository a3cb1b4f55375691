export async function healthRoutes(app, deps) {
    const { manager, metrics } = deps;
    app.get('/healthz', async () => ({ status: 'ok' }));
    app.get('/readyz', async (_req, reply) => {
        const body = {
            ready: manager.ready,
            draining: manager.draining,
            liveCalls: manager.liveCalls,
            reservedSlots: manager.reservedSlots,
            capacity: manager.capacity,
        };
        return reply.code(body.ready ? 200 : 503).send(body);
    });
    app.get('/metrics', async (_req, reply) => {
        reply.type(metrics.registry.contentType);
        return metrics.registry.metrics();
    });
}
//# sourceMappingURL=health.js.map