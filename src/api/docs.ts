/**
 * The OpenAPI 3.1 document of the /v1 API (`/docs/json`) and its browsable UI
 * (`/docs`), generated from the routes' zod schemas by
 * fastify-type-provider-zod's transform. Named schemas (`Call`, `Campaign`,
 * `Error`…) are components, so a generated client gets named types.
 */
import swagger, { type SwaggerTransform, type SwaggerTransformObject } from '@fastify/swagger';
import swaggerUi from '@fastify/swagger-ui';
import type { FastifyInstance, FastifySchema } from 'fastify';
import fp from 'fastify-plugin';
import { jsonSchemaTransform, jsonSchemaTransformObject } from 'fastify-type-provider-zod';
import { z } from 'zod';
import { ERROR_CODES } from './errors.js';

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof z.ZodType);
}

/**
 * jsonSchemaTransform, plus two things it leaves out: request bodies declared
 * per media type (`body: {content: {...}}`: JSON, multipart, CSV), and
 * response headers (`Location` on a 201).
 */
const transform: SwaggerTransform = (doc) => {
  const schema: FastifySchema | undefined = doc.schema;
  if (schema === undefined) return jsonSchemaTransform(doc);
  const toJson = (s: unknown): unknown => jsonSchemaTransform({ ...doc, schema: { body: s } }).schema.body;

  const { body, response, ...rest } = schema;
  const bodyContent = isRecord(body) && isRecord(body.content) ? body.content : undefined;
  const headers = new Map<string, unknown>();
  if (isRecord(response)) for (const [status, r] of Object.entries(response)) if (isRecord(r) && r.headers !== undefined) headers.set(status, r.headers);

  const out = jsonSchemaTransform({ ...doc, schema: { ...rest, ...(bodyContent === undefined && body !== undefined ? { body } : {}), ...(response !== undefined ? { response } : {}) } });
  const result: Record<string, unknown> = { ...out.schema };
  if (bodyContent !== undefined) {
    const content: Record<string, { schema: unknown }> = {};
    for (const [media, entry] of Object.entries(bodyContent)) if (isRecord(entry)) content[media] = { schema: toJson(entry.schema) };
    result.body = { content };
  }
  if (headers.size > 0 && isRecord(result.response)) {
    const responses: Record<string, unknown> = { ...result.response };
    for (const [status, h] of headers) {
      const r = responses[status];
      if (isRecord(r)) responses[status] = { ...r, headers: h };
    }
    result.response = responses;
  }
  return { schema: result, url: out.url };
};

const REF = '#/components/schemas/';

/**
 * jsonSchemaTransformObject, keeping only the component schemas the paths
 * use: every named schema is emitted in an input and an output variant, and
 * most are only ever one of the two.
 */
const transformObject: SwaggerTransformObject = (doc) => {
  const out = jsonSchemaTransformObject(doc);
  if (!('components' in out) || out.components?.schemas === undefined) return out;
  const schemas: Record<string, unknown> = out.components.schemas;
  const used = new Set<string>();
  const visit = (v: unknown): void => {
    if (Array.isArray(v)) for (const x of v) visit(x);
    else if (isRecord(v)) {
      for (const [k, x] of Object.entries(v)) {
        if (k === '$ref' && typeof x === 'string' && x.startsWith(REF)) {
          const name = x.slice(REF.length);
          if (!used.has(name)) {
            used.add(name);
            visit(schemas[name]);
          }
        } else visit(x);
      }
    }
  };
  visit(out.paths);
  // A fresh object of jsonSchemaTransformObject's: pruned in place.
  for (const name of Object.keys(out.components.schemas)) if (!used.has(name)) delete out.components.schemas[name];
  return out;
};

async function docs(app: FastifyInstance): Promise<void> {
  const codes = Object.entries(ERROR_CODES)
    .map(([code, e]) => `\`${code}\` (${e.status}): ${e.doc}`)
    .join('\n- ');
  await app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Playline API',
        description:
          'Outbound calls and campaigns. Authenticate with `Authorization: Bearer <API_TOKEN>`. ' +
          'Post-call webhooks are signed: `Playline-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "t.body" with WEBHOOK_SECRET>`.\n\n' +
          'Every error has one shape, `{"error": {"code", "message", "details"?}}`; the codes:\n- ' +
          codes,
        version: '1',
      },
      components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
      security: [{ bearer: [] }],
    },
    // Only the public API is documented, not the Twilio webhooks.
    hideUntagged: true,
    transform,
    transformObject,
  });
  await app.register(swaggerUi, { routePrefix: '/docs' });
}

export const docsRoutes = fp(docs, { name: 'playline-docs' });
