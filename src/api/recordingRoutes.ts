/**
 * `GET /v1/calls/:id/recording`: a call's recording as `audio/wav`, with the
 * /v1 API's auth. A local recording is streamed from DATA_DIR/recordings with
 * `Range` support (206 and `Content-Range` for seeking, 416 past the end); a
 * Twilio recording is fetched from Twilio with the account's credentials and
 * streamed through (its `Range` answer included), so a browser plays it
 * without Twilio credentials.
 */
import { Readable } from 'node:stream';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import type { FastifyInstance, FastifyReply } from 'fastify';
import { serializerCompiler, validatorCompiler } from 'fastify-type-provider-zod';
import { z } from 'zod';
import type { CallStore } from '../store/calls.js';
import { RecordingService } from '../recording/service.js';
import { apiAuth } from './auth.js';
import { ApiError, errorResponses } from './errors.js';
import { idParams, type ApiTypeProvider } from './schemas.js';

export interface RecordingRoutesDeps {
  calls: CallStore;
  recordings: RecordingService;
  apiToken?: string;
  localMode: boolean;
}

const recordingHeaders = z.looseObject({ range: z.string().max(200).optional().describe('bytes=start-end: one range, for seeking') });

const wavReply = (description: string) => ({ description, content: { 'audio/wav': { schema: z.string().describe('WAV audio (binary)') } } });

/** One `bytes=` range of a file of `size` bytes: `[start, end]` inclusive, `undefined` when unsatisfiable, `null` when absent or not understood (the whole file). */
export function parseRange(header: string | undefined, size: number): { start: number; end: number } | undefined | null {
  if (header === undefined) return null;
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (m === null || (m[1] === '' && m[2] === '')) return null;
  if (m[1] === '') {
    // A suffix: the last N bytes.
    const n = Number(m[2]);
    if (n === 0 || size === 0) return undefined;
    return { start: Math.max(0, size - n), end: size - 1 };
  }
  const start = Number(m[1]);
  const end = m[2] === '' ? size - 1 : Math.min(Number(m[2]), size - 1);
  if (start >= size || end < start) return undefined;
  return { start, end };
}

const PASSED_THROUGH = ['content-type', 'content-length', 'content-range', 'accept-ranges'] as const;

export async function recordingRoutes(parent: FastifyInstance, deps: RecordingRoutesDeps): Promise<void> {
  const app = parent.withTypeProvider<ApiTypeProvider>();
  app.setValidatorCompiler(validatorCompiler);
  app.setSerializerCompiler(serializerCompiler);
  app.addHook('onRequest', apiAuth({ ...(deps.apiToken !== undefined ? { token: deps.apiToken } : {}), localMode: deps.localMode }));

  app.get(
    '/v1/calls/:id/recording',
    {
      schema: {
        tags: ['calls'],
        summary: "A call's recording (stereo WAV: caller left, agent right)",
        description: 'Local recordings support Range requests (206 with Content-Range; 416 past the end). Twilio recordings are fetched from Twilio and streamed through.',
        params: idParams,
        headers: recordingHeaders,
        response: { 200: wavReply('The whole recording'), 206: wavReply('The requested byte range'), ...errorResponses(400, 401, 404, 416, 502) },
      },
    },
    async (req, reply) => {
      const row = await deps.calls.get(req.params.id);
      if (row === undefined) throw new ApiError('not_found', `no call ${req.params.id}: list them with GET /v1/calls`);
      const media = await deps.recordings.media(row, req.headers.range);
      const raw = reply as FastifyReply;
      if (media.kind === 'none') throw new ApiError('not_found', `call ${row.id}: ${media.why}`);
      void raw.header('cache-control', 'private, no-store');
      if (media.kind === 'file') {
        void raw.header('accept-ranges', 'bytes').header('content-type', 'audio/wav');
        const range = parseRange(req.headers.range, media.size);
        if (range === undefined) {
          void raw.header('content-range', `bytes */${media.size}`);
          throw new ApiError('range_not_satisfiable', `the recording has ${media.size} bytes; ask for a range that starts before that`);
        }
        if (range === null) {
          void raw.header('content-length', String(media.size));
          return raw.code(200).send(RecordingService.fileStream(media.path, 0, Math.max(0, media.size - 1)));
        }
        void raw.header('content-length', String(range.end - range.start + 1)).header('content-range', `bytes ${range.start}-${range.end}/${media.size}`);
        return raw.code(206).send(RecordingService.fileStream(media.path, range.start, range.end));
      }
      const res = media.response;
      if (res.status === 416) {
        void raw.header('content-range', res.headers.get('content-range') ?? '');
        throw new ApiError('range_not_satisfiable', 'Twilio says the range is past the end of the recording');
      }
      if ((res.status !== 200 && res.status !== 206) || res.body === null) {
        await res.body?.cancel();
        if (res.status === 404) throw new ApiError('not_found', `call ${row.id}: Twilio no longer has this recording`);
        throw new ApiError('carrier_error', `Twilio answered ${res.status} for the recording's audio`);
      }
      for (const h of PASSED_THROUGH) {
        const v = res.headers.get(h);
        if (v !== null) void raw.header(h, v);
      }
      if (res.headers.get('content-type') === null) void raw.header('content-type', 'audio/wav');
      return raw.code(res.status).send(Readable.fromWeb(res.body as WebReadableStream<Uint8Array>));
    },
  );
}
