/**
 * Contact uploads as streams: a `text/csv` request body or a multipart file,
 * read chunk by chunk under the size limit (never buffered whole), so the
 * import can parse rows as they arrive and refuse a file as soon as it is
 * over a limit.
 */
import type { Readable } from 'node:stream';
import type { MultipartFile } from '@fastify/multipart';
import type { FastifyRequest } from 'fastify';
import type { ContactsImport } from '../outbound/csv.js';
import { ApiError, MAX_CSV_MB } from './errors.js';

/** Largest CSV body or file accepted. */
export const MAX_CSV_BYTES = MAX_CSV_MB * 1024 * 1024;

/** Multipart limits of the campaign routes: a few fields, then one CSV file. */
export const FORM_LIMITS = { fileSize: MAX_CSV_BYTES, files: 1, fields: 20, fieldSize: 100_000, parts: 30 };

const tooLarge = (what: string) =>
  new ApiError('too_large', `${what} is larger than ${MAX_CSV_MB} MB: split it and add the rest with POST /v1/campaigns/{id}/contacts`);

function asBuffer(chunk: unknown): Buffer {
  if (Buffer.isBuffer(chunk)) return chunk;
  if (typeof chunk === 'string') return Buffer.from(chunk, 'utf8');
  throw new TypeError('expected the body as bytes');
}

/** The chunks of `source`, failing with a 413 as soon as more than `max` bytes came. */
export async function* limitBytes(source: AsyncIterable<unknown>, max: number, what: string): AsyncGenerator<Buffer> {
  let n = 0;
  for await (const chunk of source) {
    const b = asBuffer(chunk);
    n += b.length;
    if (n > max) throw tooLarge(what);
    yield b;
  }
}

/**
 * A `text/csv` request body as limited chunks. When the import stops early
 * the request is left undestroyed, so the refusal can still be sent (the
 * error handler then closes the connection).
 */
export function csvBody(req: FastifyRequest, body: Readable): AsyncIterable<Buffer> {
  const declared = Number(req.headers['content-length']);
  if (Number.isFinite(declared) && declared > MAX_CSV_BYTES) throw tooLarge('the CSV body');
  return limitBytes(body.iterator({ destroyOnReturn: false }), MAX_CSV_BYTES, 'the CSV body');
}

/** A multipart file as chunks; busboy truncates a file over `fileSize`, which is a 413 here. */
async function* fileChunks(file: MultipartFile['file']): AsyncGenerator<Buffer> {
  for await (const chunk of file) {
    if (file.truncated) throw tooLarge('the CSV file');
    yield asBuffer(chunk);
  }
  if (file.truncated) throw tooLarge('the CSV file');
}

const FIELDS_FIRST = 'send the form fields first and the file last (with curl, put -F file=@… last)';

/**
 * Reads a multipart form of fields then at most one CSV file. When the file
 * starts (or the form ends without one), `onFields` turns the fields read so
 * far into the request (validating them; it throws a 400); then `parse` reads
 * the file as it streams. A field after the file is refused: its value would
 * come too late to apply to the rows already read.
 */
export async function readCsvForm<T>(
  req: FastifyRequest,
  onFields: (fields: Record<string, string>) => T,
  parse: (chunks: AsyncIterable<Buffer>, value: T) => Promise<ContactsImport>,
): Promise<{ value: T; imp: ContactsImport | undefined }> {
  const fields: Record<string, string> = {};
  let value: T | undefined;
  let imp: ContactsImport | undefined;
  for await (const part of req.parts({ limits: FORM_LIMITS })) {
    if (part.type === 'file') {
      try {
        value = onFields(fields);
      } catch (err) {
        if (err instanceof ApiError) throw new ApiError(err.code, `${err.message} (${FIELDS_FIRST})`, err.details);
        throw err;
      }
      // An import that stops early (a file error) ends the file stream, and with it the form.
      imp = await parse(fileChunks(part.file), value);
    } else {
      if (value !== undefined) {
        throw new ApiError('invalid_request', `form field "${part.fieldname}" comes after the file: ${FIELDS_FIRST}`);
      }
      // A field sent as application/json arrives parsed; fields are read as text either way.
      fields[part.fieldname] = typeof part.value === 'string' ? part.value : JSON.stringify(part.value);
    }
  }
  return { value: value ?? onFields(fields), imp };
}
