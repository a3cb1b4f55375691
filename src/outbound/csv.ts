/**
 * Campaign contacts in (a CSV upload or a JSON array) and results out (CSV).
 *
 * An import never throws on bad data and never drops a row silently: every
 * row either becomes a contact, is merged into an earlier one with the same
 * number (`duplicates`), or is reported in `errors` with its line. CSV lines
 * are physical lines of the file (1-based, as an editor shows them), counting
 * blank lines and the lines inside quoted multi-line fields; a row is reported
 * at the line it starts on.
 *
 * Row errors (bad phone, bad time zone, a required variable left empty, a
 * wrong number of columns) reject that row only. File errors (no phone
 * column, a header that cannot be a variable name, no column for a required
 * variable, malformed CSV, too many rows) reject the whole file: `contacts`
 * and `duplicates` come back empty, so a half-read file cannot be imported by
 * mistake.
 *
 * The delimiter (`,`, `;` or tab) is told from the header line. Big inputs:
 * {@link parseContactsStream} reads a stream in slices of a few KB and hands
 * the event loop back between them, so a 100 000-row upload does not stall
 * live calls. {@link parseContactsCsv} is the same reader over a string,
 * synchronous, for small inputs and tests.
 */
import { StringDecoder } from 'node:string_decoder';
import { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { setImmediate as yieldToLoop } from 'node:timers/promises';
import { parse as parseStream, type Options as CsvParseOptions } from 'csv-parse';
import { CsvError, parse } from 'csv-parse/sync';
import { stringify } from 'csv-stringify/sync';
import { normalizePhone, type CountryCode } from './phone.js';
import { VARIABLE_NAME } from './template.js';
import { isValidTimeZone } from './window.js';

export interface ImportedContact {
  /** CSV: the line the row starts on; JSON: the item's index + 1. */
  line: number;
  /** E.164. */
  phone: string;
  /** Non-empty values only: an empty cell is no value. */
  variables: Record<string, string>;
  /** IANA zone, as written (validated). */
  timezone?: string;
  /** Lines of later rows with the same number, merged into this one. */
  mergedLines: number[];
}

export interface ImportError {
  line: number;
  /** The column (CSV header as written; JSON `phone`, `timezone`, `variables.x`). */
  column?: string;
  message: string;
  /** The offending value (cut to 100 characters). */
  value?: string;
}

export interface ImportDuplicate {
  line: number;
  phone: string;
  /** Line of the contact it was merged into. */
  firstLine: number;
}

export interface ContactsImport {
  contacts: ImportedContact[];
  errors: ImportError[];
  duplicates: ImportDuplicate[];
  /** Data rows read (CSV: non-blank rows after the header; JSON: items). */
  totalRows: number;
}

export interface ImportOptions {
  /** Country of numbers written without `+`. Without it they are errors. */
  defaultCountry?: CountryCode;
  /** Variables the campaign's templates use: every contact needs a non-empty value for each. */
  requiredVariables?: string[];
  /** More data rows than this reject the file (default 100 000). */
  maxRows?: number;
}

/** Header names taken as the phone column, by priority. */
export const PHONE_COLUMNS = ['phone', 'phone_number', 'number', 'to', 'mobile'] as const;
/** Header names taken as the time-zone column, by priority. */
export const TIMEZONE_COLUMNS = ['timezone', 'time_zone', 'tz'] as const;

const DEFAULT_MAX_ROWS = 100_000;
const BREAK = /\r\n|\r|\n/g;
/** Whole blank lines csv-parse skipped before a record (they lead its raw text). */
const LEADING_BLANK_LINES = /^(?:[ \t]*(?:\r\n|\r|\n))*/;

function countBreaks(s: string): number {
  return s.match(BREAK)?.length ?? 0;
}

function clip(s: string): string {
  return s.length > 100 ? `${s.slice(0, 99)}…` : s;
}

/** A header as a variable name: trimmed, runs of whitespace → `_`. */
function headerName(h: string): string {
  return h.trim().replace(/\s+/g, '_');
}

/** Validates rows and collects the result; shared by the CSV and JSON readers. */
class Collector {
  readonly contacts: ImportedContact[] = [];
  readonly errors: ImportError[] = [];
  readonly duplicates: ImportDuplicate[] = [];
  totalRows = 0;
  readonly #byPhone = new Map<string, ImportedContact>();

  constructor(readonly opts: ImportOptions) {}

  error(line: number, message: string, column?: string, value?: string): void {
    const e: ImportError = { line, message };
    if (column !== undefined) e.column = column;
    if (value !== undefined) e.value = clip(value);
    this.errors.push(e);
  }

  /**
   * One row: the phone cell, the time-zone cell (blank = none), the variables
   * (blank values already left out) and the required variables it lacks.
   */
  row(
    line: number,
    phone: { value: string; column: string },
    tz: { value: string; column: string } | undefined,
    variables: Record<string, string>,
    missing: Array<{ name: string; column: string }>,
  ): void {
    const before = this.errors.length;
    const p = normalizePhone(phone.value, this.opts.defaultCountry);
    if (!p.ok) this.error(line, phone.value.trim() === '' ? 'phone number is empty' : p.error, phone.column, phone.value);
    let timezone: string | undefined;
    if (tz !== undefined && tz.value.trim() !== '') {
      timezone = tz.value.trim();
      if (!isValidTimeZone(timezone)) this.error(line, 'not a known IANA time zone (e.g. America/New_York)', tz.column, tz.value);
    }
    for (const m of missing) this.error(line, `"${m.name}" is empty; the campaign's template needs it`, m.column);
    if (this.errors.length > before || !p.ok) return;
    const first = this.#byPhone.get(p.e164);
    if (first !== undefined) {
      first.mergedLines.push(line);
      this.duplicates.push({ line, phone: p.e164, firstLine: first.line });
      return;
    }
    const c: ImportedContact = { line, phone: p.e164, variables, mergedLines: [] };
    if (timezone !== undefined) c.timezone = timezone;
    this.contacts.push(c);
    this.#byPhone.set(p.e164, c);
  }

  /** The file as a whole is rejected: earlier row errors are kept, no contacts. */
  fail(line: number, message: string, column?: string, value?: string): ContactsImport {
    this.error(line, message, column, value);
    return { contacts: [], errors: this.errors, duplicates: [], totalRows: this.totalRows };
  }

  result(): ContactsImport {
    return { contacts: this.contacts, errors: this.errors, duplicates: this.duplicates, totalRows: this.totalRows };
  }
}

interface CsvLayout {
  phone: number;
  tz: number | undefined;
  /** Column index → variable name, for every other column. */
  vars: Array<{ index: number; name: string }>;
  headers: string[];
  required: Array<{ name: string; index: number }>;
}

/** Reads the header row; a string is a file error. */
function layout(header: string[], required: readonly string[]): CsvLayout | { error: string; column?: string } {
  const headers = header.map((h) => h.trim());
  const keys = headers.map((h) => headerName(h).toLowerCase());
  const phone = PHONE_COLUMNS.map((n) => keys.indexOf(n)).find((i) => i >= 0);
  if (phone === undefined) {
    return { error: `no phone column: name one of ${PHONE_COLUMNS.join(', ')} (got ${headers.map((h) => JSON.stringify(h)).join(', ')})` };
  }
  const tz = TIMEZONE_COLUMNS.map((n) => keys.indexOf(n)).find((i) => i >= 0);
  const vars: CsvLayout['vars'] = [];
  const seen = new Map<string, string>();
  for (let i = 0; i < headers.length; i++) {
    const h = headers[i] as string;
    if (i === phone || i === tz) continue;
    const name = headerName(h);
    if (!VARIABLE_NAME.test(name)) {
      return {
        error: h === ''
          ? `column ${i + 1} has no header; every column needs a name`
          : `header "${h}" cannot be a variable name: use letters, digits and _ (not starting with a digit)`,
        column: h,
      };
    }
    const other = seen.get(name.toLowerCase());
    if (other !== undefined) return { error: `headers "${other}" and "${h}" name the same variable`, column: h };
    seen.set(name.toLowerCase(), h);
    // A header matching a template variable but for case takes the template's spelling.
    const exact = required.find((r) => r.toLowerCase() === name.toLowerCase());
    vars.push({ index: i, name: exact ?? name });
  }
  const req: CsvLayout['required'] = [];
  for (const r of required) {
    const v = vars.find((x) => x.name === r);
    if (v === undefined) return { error: `no column for the template variable "${r}"`, column: r };
    req.push({ name: r, index: v.index });
  }
  return { phone, tz, vars, headers, required: req };
}

/** Thrown while reading records to stop: a bad header, or more than `maxRows` rows. */
class StopReading extends Error {
  constructor(readonly line: number, message: string, readonly column?: string) {
    super(message);
  }
}

/** Friendlier words for csv-parse's structural errors. */
function describeCsvError(code: string, message: string): string {
  switch (code) {
    case 'CSV_QUOTE_NOT_CLOSED':
      return 'unclosed quote: a quoted field starts here and never ends';
    case 'CSV_INVALID_CLOSING_QUOTE':
      return 'characters after a closing quote: a quoted field must end at a comma or the end of the line';
    case 'INVALID_OPENING_QUOTE':
      return 'a quote inside an unquoted field: quote the whole field and double the quotes inside ("")';
    default:
      return `malformed CSV: ${message.replace(/\s+at line \d+.*$|\s+on line \d+.*$/, '')}`;
  }
}

/** Offset in `raw` of the quote that opened a field never closed. */
function openingQuoteOffset(raw: string): number {
  let open = -1;
  let quoting = false;
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] !== '"') continue;
    quoting = !quoting; // `""` inside quotes toggles twice
    if (quoting) open = i;
  }
  return Math.max(open, 0);
}

// ---------------------------------------------------------------- delimiter

/** Delimiters recognised from the header line, in order of preference. */
export const DELIMITERS = [',', ';', '\t'] as const;
export type Delimiter = (typeof DELIMITERS)[number];

const BOM = '\uFEFF';
const FIRST_LINE = /^(?:[ \t]*(?:\r\n|\r|\n))*([^\r\n]*)/;

/** The first non-blank line of `text` (without a BOM), and whether it is complete (a line break follows). */
function headerLine(text: string): { line: string; complete: boolean } {
  const t = text.startsWith(BOM) ? text.slice(1) : text;
  const m = FIRST_LINE.exec(t);
  const line = m?.[1] ?? '';
  const end = (m?.index ?? 0) + (m?.[0].length ?? 0);
  return { line, complete: end < t.length };
}

function hasPhoneColumn(cells: readonly string[]): boolean {
  const keys = new Set(cells.map((h) => headerName(h).toLowerCase()));
  return PHONE_COLUMNS.some((n) => keys.has(n));
}

/**
 * The delimiter of a CSV file from its header line: the first of `,` `;` and
 * tab that yields a phone column, else the one that yields the most columns
 * (`,` on a tie).
 */
export function detectDelimiter(header: string): Delimiter {
  let best: { d: Delimiter; n: number } = { d: ',', n: 0 };
  for (const d of DELIMITERS) {
    let cells: string[];
    try {
      const rows: unknown[] = parse(header, { delimiter: d, relax_quotes: true, relax_column_count: true, trim: true, to_line: 1 });
      const first = rows[0];
      cells = Array.isArray(first) ? first.map(String) : [];
    } catch {
      continue;
    }
    if (hasPhoneColumn(cells)) return d;
    if (cells.length > best.n) best = { d, n: cells.length };
  }
  return best.d;
}

function csvOptions(delimiter: Delimiter): CsvParseOptions {
  return {
    bom: true,
    delimiter,
    skip_empty_lines: true,
    // Column counts are checked here, so a bad row is reported and the rest still read.
    relax_column_count: true,
    // Spaces around a delimiter are not data (`a, "b"` is allowed); quoted spaces are kept.
    trim: true,
    // Each record comes as {record, raw}: the raw text gives its line numbers.
    raw: true,
  };
}

// ------------------------------------------------------------------- reader

/** One CSV import in progress: takes records in file order, whichever parser reads them. */
class CsvImport {
  readonly #out: Collector;
  readonly #maxRows: number;
  readonly #required: string[];
  /** Line breaks in the raw text of the records before the current one. */
  #breaks = 0;
  #head: CsvLayout | undefined;

  constructor(opts: ImportOptions) {
    this.#out = new Collector(opts);
    this.#maxRows = opts.maxRows ?? DEFAULT_MAX_ROWS;
    this.#required = [...new Set(opts.requiredVariables ?? [])];
  }

  /** One record with its raw text; throws StopReading when the file must be rejected. */
  record(record: string[], raw: string): void {
    const out = this.#out;
    const line = 1 + this.#breaks + countBreaks(LEADING_BLANK_LINES.exec(raw)?.[0] ?? '');
    this.#breaks += countBreaks(raw);
    if (record.every((f) => f.trim() === '')) return;
    const head = this.#head;
    if (head === undefined) {
      const l = layout(record, this.#required);
      if ('error' in l) throw new StopReading(line, l.error, l.column);
      this.#head = l;
      return;
    }
    out.totalRows++;
    if (out.totalRows > this.#maxRows) throw new StopReading(line, `more than ${this.#maxRows} rows: split the file`);
    if (record.length !== head.headers.length) {
      out.error(line, `expected ${head.headers.length} columns (as in the header), found ${record.length}`);
      return;
    }
    const variables: Record<string, string> = {};
    for (const v of head.vars) {
      const value = record[v.index] ?? '';
      if (value.trim() !== '') variables[v.name] = value;
    }
    const missing = head.required.filter((r) => !Object.hasOwn(variables, r.name)).map((r) => ({ name: r.name, column: head.headers[r.index] ?? r.name }));
    out.row(
      line,
      { value: record[head.phone] ?? '', column: head.headers[head.phone] ?? 'phone' },
      head.tz === undefined ? undefined : { value: record[head.tz] ?? '', column: head.headers[head.tz] ?? 'timezone' },
      variables,
      missing,
    );
  }

  /** The result when reading stopped on `err` (a StopReading or a csv-parse error); rethrows anything else. */
  failed(err: unknown): ContactsImport {
    if (err instanceof StopReading) return this.#out.fail(err.line, err.message, err.column);
    if (!(err instanceof CsvError)) throw err;
    // `raw` is the text of the record being read when it failed.
    const raw = typeof err.raw === 'string' ? err.raw : '';
    const at = err.code === 'CSV_QUOTE_NOT_CLOSED' ? raw.slice(0, openingQuoteOffset(raw)) : raw;
    return this.#out.fail(1 + this.#breaks + countBreaks(at), `${describeCsvError(err.code, err.message)}; nothing was imported`);
  }

  /** The result once the whole input was read. */
  end(): ContactsImport {
    if (this.#head === undefined) return this.#out.fail(1, 'the file is empty: expected a header row with a phone column');
    return this.#out.result();
  }
}

/** A csv-parse record in `raw` mode. */
function rawRecord(rec: unknown): { record: string[]; raw: string } {
  if (typeof rec !== 'object' || rec === null || !('record' in rec) || !Array.isArray(rec.record)) throw new TypeError('csv-parse: expected a raw record');
  const raw = 'raw' in rec && typeof rec.raw === 'string' ? rec.raw : '';
  return { record: rec.record.map(String), raw };
}

/**
 * Reads contacts from CSV text (UTF-8, optional BOM; quotes as in RFC 4180).
 * The delimiter is `,`, `;` or tab, told from the header line (see
 * {@link detectDelimiter}). The first non-blank row is the header, matched
 * without regard to case or surrounding spaces: the phone column is the first
 * of {@link PHONE_COLUMNS}, the optional time-zone column the first of
 * {@link TIMEZONE_COLUMNS}, and every other column becomes a template
 * variable named after its header (spaces → `_`). Blank lines and rows whose
 * cells are all empty are skipped; a duplicate number is merged into its first
 * row. See the module comment for what rejects a row and what the file.
 *
 * Synchronous: for small inputs. Uploads go through {@link parseContactsStream}.
 */
export function parseContactsCsv(input: string | Buffer, opts: ImportOptions = {}): ContactsImport {
  const text = typeof input === 'string' ? input : input.toString('utf8');
  const imp = new CsvImport(opts);
  try {
    parse(text, {
      ...csvOptions(detectDelimiter(headerLine(text).line)),
      // Returning null keeps csv-parse from collecting the records: rows are handled one at a time.
      on_record: (rec: unknown) => {
        const r = rawRecord(rec);
        imp.record(r.record, r.raw);
        return null;
      },
    });
  } catch (err) {
    return imp.failed(err);
  }
  return imp.end();
}

/**
 * Text handed to the parser at a time, with a turn of the event loop between
 * two: a slice is read and its rows validated in one go (a few ms), so a
 * 100 000-row upload never holds the loop for long.
 */
const SLICE_CHARS = 4 * 1024;
/** JSON items validated between two turns of the event loop. */
const ROWS_PER_TURN = 250;
/** Text looked at for the header line when it has no line break yet. */
const MAX_HEADER_CHARS = 64 * 1024;

/**
 * {@link parseContactsCsv} over a stream or any async iterable of chunks
 * (Buffers as UTF-8, or strings): the same rules and result, read as the
 * chunks come, handing the event loop back between slices of a few KB.
 * Reading stops at the first file error (a bad header, more than `maxRows`
 * rows, malformed CSV): the rest of the input is not read. An error from
 * `source` itself (a size limit, a closed connection) rejects the promise.
 *
 * When reading stops early, `source` is left to its iterator's `return()`: a
 * Readable is destroyed, unless it is passed as
 * `readable.iterator({ destroyOnReturn: false })`.
 */
export async function parseContactsStream(source: AsyncIterable<Buffer | string> | Readable, opts: ImportOptions = {}): Promise<ContactsImport> {
  const imp = new CsvImport(opts);
  const it: AsyncIterator<unknown> = source[Symbol.asyncIterator]();
  const decoder = new StringDecoder('utf8');
  const text = (chunk: unknown): string => {
    if (typeof chunk === 'string') return chunk;
    if (Buffer.isBuffer(chunk)) return decoder.write(chunk);
    throw new TypeError('parseContactsStream: chunks must be Buffers or strings');
  };

  // The header line tells the delimiter: read until it is complete.
  let head = '';
  let done = false;
  while (!(headerLine(head).complete || head.length >= MAX_HEADER_CHARS)) {
    const next = await it.next();
    if (next.done === true) {
      head += decoder.end();
      done = true;
      break;
    }
    head += text(next.value);
  }

  async function* slices(): AsyncGenerator<string> {
    try {
      let t = head;
      for (;;) {
        for (let i = 0; i < t.length; i += SLICE_CHARS) {
          yield t.slice(i, i + SLICE_CHARS);
          await yieldToLoop();
        }
        if (done) return;
        const next = await it.next();
        if (next.done === true) {
          done = true;
          t = decoder.end();
        } else {
          t = text(next.value);
        }
      }
    } finally {
      // Stopped early (a file error): the source will not be read further.
      if (!done) await it.return?.();
    }
  }

  const parser = parseStream({
    ...csvOptions(detectDelimiter(headerLine(head).line)),
    // Rows are validated as the parser reads them, in order; nothing is collected.
    on_record: (rec: unknown) => {
      const r = rawRecord(rec);
      imp.record(r.record, r.raw);
      return null;
    },
  });
  try {
    await pipeline(Readable.from(slices()), parser, new Writable({ objectMode: true, write: (_chunk, _enc, cb) => cb() }));
  } catch (err) {
    return imp.failed(err);
  }
  return imp.end();
}

/**
 * Reads contacts from a JSON array with the same rules as
 * {@link parseContactsCsv}; `line` is the item's index + 1. An item is an
 * object read like a CSV row: the phone is the first of {@link PHONE_COLUMNS}
 * present, the time zone the first of {@link TIMEZONE_COLUMNS} (or
 * `timeZone`), and every other field is a variable, as is every entry of an
 * optional `variables` object (which wins on a clash). A bare string is a
 * phone number. Values may be strings, numbers or booleans (stored as text);
 * null or an empty string is no value; anything else is an error.
 */
export function parseContactsJson(items: unknown[], opts: ImportOptions = {}): ContactsImport {
  const out = new Collector(opts);
  const tooMany = jsonTooMany(out, items, opts);
  if (tooMany !== undefined) return tooMany;
  const required = [...new Set(opts.requiredVariables ?? [])];
  items.forEach((item, i) => jsonItem(out, item, i + 1, required));
  return out.result();
}

/** {@link parseContactsJson}, handing the event loop back every few hundred items (for API bodies). */
export async function parseContactsJsonAsync(items: unknown[], opts: ImportOptions = {}): Promise<ContactsImport> {
  const out = new Collector(opts);
  const tooMany = jsonTooMany(out, items, opts);
  if (tooMany !== undefined) return tooMany;
  const required = [...new Set(opts.requiredVariables ?? [])];
  for (let i = 0; i < items.length; i++) {
    jsonItem(out, items[i], i + 1, required);
    if ((i + 1) % ROWS_PER_TURN === 0) await yieldToLoop();
  }
  return out.result();
}

function jsonTooMany(out: Collector, items: unknown[], opts: ImportOptions): ContactsImport | undefined {
  const maxRows = opts.maxRows ?? DEFAULT_MAX_ROWS;
  if (items.length <= maxRows) return undefined;
  out.totalRows = items.length;
  return out.fail(maxRows + 1, `more than ${maxRows} contacts: send them in parts`);
}

/** One JSON item, read like a CSV row. */
function jsonItem(out: Collector, raw: unknown, line: number, required: readonly string[]): void {
  out.totalRows++;
  const item = typeof raw === 'string' ? { phone: raw } : raw;
  if (typeof item !== 'object' || item === null || Array.isArray(item)) {
    out.error(line, 'expected an object like {phone, timezone?, name: "…"} or a phone number string');
    return;
  }
  const o = new Map(Object.entries(item));
  const keys = [...o.keys()];
  const phoneKey = PHONE_COLUMNS.map((n) => keys.find((k) => k.toLowerCase() === n)).find((k) => k !== undefined);
  const tzKey = [...TIMEZONE_COLUMNS, 'timezone'].map((n) => keys.find((k) => k.toLowerCase() === n)).find((k) => k !== undefined);
  let bad = false;
  const phone = phoneKey === undefined ? undefined : o.get(phoneKey);
  if (typeof phone !== 'string' && typeof phone !== 'number') {
    out.error(line, `a phone number is required (a field named one of ${PHONE_COLUMNS.join(', ')})`, phoneKey ?? 'phone');
    bad = true;
  }
  const tzValue = tzKey === undefined ? undefined : o.get(tzKey);
  if (tzValue !== undefined && tzValue !== null && typeof tzValue !== 'string') {
    out.error(line, 'timezone must be a string (an IANA zone)', tzKey);
    bad = true;
  }
  const variables: Record<string, string> = {};
  const take = (k: string, v: unknown, column: string): void => {
    if (!VARIABLE_NAME.test(k)) {
      out.error(line, 'not a variable name: use letters, digits and _ (not starting with a digit)', column);
      bad = true;
    } else if (typeof v === 'string') {
      if (v.trim() !== '') variables[k] = v;
    } else if ((typeof v === 'number' && Number.isFinite(v)) || typeof v === 'boolean') {
      variables[k] = String(v);
    } else if (v !== null && v !== undefined) {
      out.error(line, 'a variable must be text, a number or a boolean', column);
      bad = true;
    }
  };
  for (const k of keys) {
    if (k === phoneKey || k === tzKey || k === 'variables') continue;
    take(k, o.get(k), k);
  }
  const vars = o.get('variables');
  if (vars !== undefined && vars !== null) {
    if (typeof vars !== 'object' || Array.isArray(vars)) {
      out.error(line, 'variables must be an object of name → text', 'variables');
      bad = true;
    } else {
      for (const [k, v] of Object.entries(vars)) take(k, v, `variables.${k}`);
    }
  }
  if (bad) return;
  const missing = required.filter((r) => !Object.hasOwn(variables, r)).map((r) => ({ name: r, column: `variables.${r}` }));
  const tz = typeof tzValue === 'string' && tzKey !== undefined ? { value: tzValue, column: tzKey } : undefined;
  out.row(line, { value: String(phone), column: phoneKey ?? 'phone' }, tz, variables, missing);
}

export interface CsvExportOptions {
  /**
   * Prefix `'` to text cells a spreadsheet would run as a formula (`=…`, `@…`,
   * `+`/`-` not followed by a plain number…). Default true: exported values
   * come from callers and contacts. E.164 numbers are left alone.
   */
  escapeFormulas?: boolean;
  /** Start with a UTF-8 BOM (helps Excel with non-ASCII text). Default false. */
  bom?: boolean;
  /** Write the header row. Default true (false for the later chunks of a streamed file). */
  header?: boolean;
}

const FORMULA_START = /^[=@\t\r\uFF1D\uFF20]|^[+\-\uFF0B\uFF0D](?![\d.]+$)/;

/**
 * CSV text with a header row of `columns`, then one line per row in that
 * column order (missing and null cells empty). Quoting as RFC 4180, `\n` line ends.
 */
export function resultsToCsv(rows: ReadonlyArray<Record<string, string | number | null>>, columns: string[], opts: CsvExportOptions = {}): string {
  const escape = opts.escapeFormulas ?? true;
  const records: string[][] = rows.map((r) =>
    columns.map((c) => {
      const v = Object.hasOwn(r, c) ? r[c] : null;
      if (v === null || v === undefined) return '';
      if (typeof v === 'number') return Number.isFinite(v) ? String(v) : '';
      return escape && FORMULA_START.test(v) ? `'${v}` : v;
    }),
  );
  // Cells with surrounding spaces are quoted, so reading the file back keeps them.
  return stringify(opts.header === false ? records : [columns, ...records], { bom: opts.bom ?? false, quoted_match: /^\s|\s$/ });
}
