/**
 * The web console at `/`: the page for each client route (`/live`, `/calls/…`,
 * …) and its assets under `/assets/`, built by `npm run build` into
 * `dist/console` (scripts/build-console.mjs) and served with @fastify/static.
 * Only these paths are the console's: `/v1`, `/twilio`, `/web`, `/docs`,
 * `/metrics`, `/healthz` and `/readyz` keep their own routes and 404s.
 *
 * Who gets the page follows the API's rule (src/api/auth.ts): with API_TOKEN
 * anyone may load it and it asks for the token (the data needs it); without
 * one, only local requests in local mode, and everyone else gets a page saying
 * what to set. Every reply carries a strict Content-Security-Policy: scripts,
 * styles and connections from this origin only, no inline script.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import fastifyStatic from '@fastify/static';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { localRequest, notLocalMessage } from './twilioAuth.js';

/** `dist/console` of this package (the same from src/http and dist/http). */
export function defaultConsoleDir(): string {
  return fileURLToPath(new URL('../../dist/console', import.meta.url));
}

/** The console's client routes: each answers index.html, so reloads and links work. */
export const CONSOLE_PAGES = ['/', '/live', '/calls', '/calls/:id', '/campaigns', '/campaigns/:id', '/setup', '/talk'] as const;

export const CONSOLE_CSP = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "img-src 'self' data: blob:",
  "media-src 'self' blob:",
  "connect-src 'self'",
  "worker-src 'self'",
  "font-src 'self'",
  "object-src 'none'",
  "base-uri 'none'",
  "form-action 'self'",
  "frame-ancestors 'none'",
].join('; ');

const SECURITY_HEADERS: Record<string, string> = {
  'content-security-policy': CONSOLE_CSP,
  'x-content-type-options': 'nosniff',
  'x-frame-options': 'DENY',
  'referrer-policy': 'no-referrer',
  'cross-origin-opener-policy': 'same-origin',
  'cross-origin-resource-policy': 'same-origin',
  'permissions-policy': 'microphone=(self), camera=(), geolocation=()',
};

export interface ConsoleOptions {
  /** The built console (index.html and assets/); defaults to {@link defaultConsoleDir}. */
  dir?: string;
  /** API_TOKEN: when set, the page is served to anyone and signs in with the token. */
  apiToken?: string;
  /** Local mode: without a token, loopback clients may use the console (as the API). */
  localMode: boolean;
}

const escapeHtml = (s: string): string => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title: string, body: string): string {
  return (
    '<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">' +
    `<title>${escapeHtml(title)}</title></head><body style="font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem">` +
    `<h1>${escapeHtml(title)}</h1>${body}</body></html>`
  );
}

export const NOT_BUILT_PAGE = page(
  'The console is not built',
  '<p>This Playline has no built web console (<code>dist/console</code>). Run <code>npm run build</code> (or <code>npm start</code>, which builds it), then reload.</p>' +
    '<p>The API works without it: see <a href="/docs">/docs</a>.</p>',
);

export async function consoleRoutes(app: FastifyInstance, opts: ConsoleOptions): Promise<void> {
  const dir = opts.dir ?? defaultConsoleDir();
  const assets = join(dir, 'assets');

  app.addHook('onRequest', async (req: FastifyRequest, reply: FastifyReply) => {
    for (const [k, v] of Object.entries(SECURITY_HEADERS)) void reply.header(k, v);
    if (opts.apiToken !== undefined) return;
    const check = localRequest(req);
    if (opts.localMode && check.local) return;
    const why = opts.localMode && !check.local ? notLocalMessage(check, 'API_TOKEN', 'the console') : 'set API_TOKEN to use the console (and the API)';
    await reply
      .code(403)
      .type('text/html; charset=utf-8')
      .send(page('Playline console: not available here', `<p>${escapeHtml(why)}.</p><p>With API_TOKEN set, the console asks for that token.</p>`));
  });

  const index = async (_req: FastifyRequest, reply: FastifyReply): Promise<FastifyReply> => {
    let html: string;
    try {
      html = await readFile(join(dir, 'index.html'), 'utf8');
    } catch {
      return reply.code(503).header('cache-control', 'no-store').type('text/html; charset=utf-8').send(NOT_BUILT_PAGE);
    }
    return reply.header('cache-control', 'no-cache').type('text/html; charset=utf-8').send(html);
  };
  for (const url of CONSOLE_PAGES) app.get(url, index);

  if (existsSync(assets)) {
    // Asset names carry a content hash (scripts/build-console.mjs): cached for good.
    await app.register(fastifyStatic, { root: assets, prefix: '/assets/', index: false, immutable: true, maxAge: '365d', decorateReply: false });
  } else {
    app.get('/assets/*', async (_req, reply) => reply.code(404).type('text/plain; charset=utf-8').send('the console is not built: run `npm run build`'));
  }
}
