/**
 * `GET /prompts/:key.wav?exp=&sig=`: a synthesized prompt as a μ-law WAV, for
 * `<Play>` in TwiML answered before a media stream exists (refusals, the
 * transfer return, a voicemail message). The URL is signed (HMAC over the key
 * and its expiry) and short-lived; an expired or forged one is refused with
 * 403, an unknown key with 404. Nothing else is served from here.
 */
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { errorBody } from '../api/errors.js';
import { CACHE_KEY } from '../tts/cache.js';
import type { PromptService } from '../tts/prompts.js';
import { mulawWav } from '../tts/wav.js';

export interface PromptRouteDeps {
  prompts: Pick<PromptService, 'verify' | 'audioByKey'>;
}

const paramsSchema = z.object({ file: z.string().max(100) });
const querySchema = z.object({ exp: z.string().max(20).optional(), sig: z.string().max(100).optional() });

export async function promptRoutes(app: FastifyInstance, deps: PromptRouteDeps): Promise<void> {
  app.get('/prompts/:file', async (req, reply) => {
    const file = paramsSchema.safeParse(req.params).data?.file ?? '';
    const key = file.endsWith('.wav') ? file.slice(0, -4) : '';
    if (!CACHE_KEY.test(key)) return reply.code(404).send(errorBody('not_found', 'no such prompt'));
    const q = querySchema.safeParse(req.query).data;
    const verdict = deps.prompts.verify(key, q?.exp, q?.sig);
    if (verdict !== 'ok') {
      req.log.warn({ verdict }, 'prompt URL refused');
      return reply.code(403).send(errorBody('forbidden', verdict === 'expired' ? 'this prompt URL has expired' : 'this prompt URL is not signed by this server'));
    }
    const audio = deps.prompts.audioByKey(key);
    if (audio === undefined) return reply.code(404).send(errorBody('not_found', 'no such prompt (it left the cache)'));
    return reply.type('audio/wav').header('cache-control', 'private, max-age=300').send(mulawWav(audio));
  });
}
