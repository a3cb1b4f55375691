/**
 * The OpenAPI document of the /v1 API (`/docs/json`) and its browsable UI
 * (`/docs`), built from the route schemas (which come from the zod schemas).
 */
import swagger from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { FastifyInstance } from 'fastify';
import fp from 'fastify-plugin';

async function docs(app: FastifyInstance): Promise<void> {
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Playline API',
        description:
          'Outbound calls and campaigns. Authenticate with `Authorization: Bearer <API_TOKEN>`. ' +
          'Post-call webhooks are signed: `Playline-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body" with WEBHOOK_SECRET>`.',
        version: '1',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
    // Only the public API is documented, not the Twilio webhooks.
    hideUntagged: true,
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });
}

export const docsRoutes = fp(docs, { name: 'playline-docs' });
