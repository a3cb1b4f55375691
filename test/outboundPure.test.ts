import { describe, expect, it } from 'vitest';
import { parseContactsCsv, parseContactsJson, resultsToCsv, type ContactsImport } from '../src/outbound/csv.js';
import { e164Schema, isCountryCode, isE164, normalizePhone } from '../src/outbound/phone.js';
import { fillTemplate, templateVariables } from '../src/outbound/template.js';
import {
  callingWindowSchema,
  isValidTimeZone,
  isWithinWindow,
  localTimeParts,
  nextWindowStart,
  WEEKDAYS,
  type CallingWindow,
  type Weekday,
} from '../src/outbound/window.js';
import { Rng } from '../src/util/prng.js';

const at = (iso: string) => Date.parse(iso);
const iso = (ms: number | undefined) => (ms === undefined ? undefined : new Date(ms).toISOString());

// ------------------------------------------------------------------- phone

describe('normalizePhone', () => {
  it('turns a US national number into E.164 with a default country', () => {
    expect(normalizePhone('(415) 555-0100', 'US')).toEqual({ ok: true, e164: '+14155550100' });
    expect(normalizePhone('  415.555.0100 ', 'US')).toEqual({ ok: true, e164: '+14155550100' });
  });

  it('accepts an international US number without a default country, and a tel: URI', () => {
    expect(normalizePhone('+1 415 555 0100')).toEqual({ ok: true, e164: '+14155550100' });
    expect(normalizePhone('tel:+14155550100')).toEqual({ ok: true, e164: '+14155550100' });
  });

  it('asks for a country code when a national number has no default country', () => {
    expect(normalizePhone('(415) 555-0100')).toEqual({ ok: false, error: 'needs a country code (+…) or DEFAULT_COUNTRY' });
  });

  it('normalizes UK numbers, international or national with GB', () => {
    expect(normalizePhone('+44 20 7946 0958')).toEqual({ ok: true, e164: '+442079460958' });
    expect(normalizePhone('020 7946 0958', 'GB')).toEqual({ ok: true, e164: '+442079460958' });
    expect(normalizePhone('+44 (0)20 7946 0958')).toEqual({ ok: true, e164: '+442079460958' });
  });

  it('refuses numbers that are not valid in their country (not just the wrong length)', () => {
    const r = normalizePhone('+1 555 123 0001'); // no 555 area code
    expect(r.ok).toBe(false);
    if (!r.ok) expect(r.error).toMatch(/not a valid phone number/);
    expect(normalizePhone('020 7946 0958', 'US').ok).toBe(false);
  });

  it('says when a number is too short or too long', () => {
    expect(normalizePhone('123', 'US')).toEqual({ ok: false, error: 'not a valid phone number (too short)' });
    expect(normalizePhone('+1 415 555 01000')).toEqual({ ok: false, error: 'not a valid phone number (too long)' });
  });

  it('refuses letters, extensions, empty input and an unknown default country', () => {
    expect(normalizePhone('1-800-FLOWERS', 'US')).toEqual({ ok: false, error: 'not a valid phone number (contains letters)' });
    expect(normalizePhone('abc')).toEqual({ ok: false, error: 'not a valid phone number (contains letters)' });
    expect(normalizePhone('+1 415 555 0100 ext. 12')).toEqual({ ok: false, error: 'phone extensions are not supported' });
    expect(normalizePhone('   ')).toEqual({ ok: false, error: 'empty phone number' });
    expect(normalizePhone('---')).toEqual({ ok: false, error: 'not a valid phone number' });
    expect(normalizePhone('4155550100', 'XX' as never).ok).toBe(false);
  });

  it('isE164 holds only for valid numbers written exactly in E.164', () => {
    expect(isE164('+14155550100')).toBe(true);
    expect(isE164('+442079460958')).toBe(true);
    expect(isE164('+1 415 555 0100')).toBe(false);
    expect(isE164('14155550100')).toBe(false);
    expect(isE164('+15551230001')).toBe(false);
    expect(isE164('')).toBe(false);
  });

  it('isCountryCode knows ISO codes libphonenumber supports', () => {
    expect(isCountryCode('US')).toBe(true);
    expect(isCountryCode('GB')).toBe(true);
    expect(isCountryCode('us')).toBe(false);
    expect(isCountryCode('XX')).toBe(false);
  });

  it('e164Schema normalizes API input and explains refusals', () => {
    expect(e164Schema.parse('+44 20 7946 0958')).toBe('+442079460958');
    const r = e164Schema.safeParse('(415) 555-0100');
    expect(r.success).toBe(false);
    expect(r.error?.issues[0]?.message).toBe('needs a country code (+…) or DEFAULT_COUNTRY');
    expect(e164Schema.safeParse(14155550100).success).toBe(false);
  });
});

// ---------------------------------------------------------------- template

describe('templates', () => {
  it('lists variables once each, in order of first use, spaces inside braces allowed', () => {
    expect(templateVariables('Hi {{name}}, this is {{ agent }} for {{name}} at {{\tcompany_2 }}.')).toEqual(['name', 'agent', 'company_2']);
    expect(templateVariables('no placeholders')).toEqual([]);
  });

  it('fills placeholders with values inserted verbatim', () => {
    const r = fillTemplate('Hi {{ name }}, your code is {{code}}.', { name: 'Ann $& {{code}}', code: '$1' });
    expect(r).toEqual({ ok: true, text: 'Hi Ann $& {{code}}, your code is $1.' });
    expect(fillTemplate('Hi {{name}}', { name: '' })).toEqual({ ok: true, text: 'Hi ' });
  });

  it('reports every missing variable and produces no text', () => {
    expect(fillTemplate('{{a}} {{b}} {{a}} {{c}}', { b: 'x' })).toEqual({ ok: false, missing: ['a', 'c'] });
  });

  it('does not take inherited properties for values', () => {
    expect(fillTemplate('{{constructor}} {{toString}}', {})).toEqual({ ok: false, missing: ['constructor', 'toString'] });
  });

  it('leaves triple braces, unbalanced braces and invalid names as literal text', () => {
    const tpl = '{{{name}}} {{name}}} {{{name}} {{name {name}} {{ first name }} {{1x}} }}name{{';
    expect(templateVariables(tpl)).toEqual([]);
    expect(fillTemplate(tpl, { name: 'X' })).toEqual({ ok: true, text: tpl });
    expect(fillTemplate('{{{a}}}{{b}}', { b: 'B' })).toEqual({ ok: true, text: '{{{a}}}B' });
  });
});

// --------------------------------------------------------------------- CSV

const errorsAt = (imp: ContactsImport) => imp.errors.map((e) => [e.line, e.message]);

describe('parseContactsCsv', () => {
  it('finds the phone column by name, case and spaces aside, and turns other columns into variables', () => {
    const imp = parseContactsCsv(' First Name ,PHONE, company\n Ann ,+1 415 555 0100,Acme\n');
    expect(imp.errors).toEqual([]);
    expect(imp.totalRows).toBe(1);
    expect(imp.contacts).toEqual([{ line: 2, phone: '+14155550100', variables: { First_Name: 'Ann', company: 'Acme' }, mergedLines: [] }]);
  });

  it('takes the phone column by priority (phone before mobile) and keeps the other as a variable', () => {
    const imp = parseContactsCsv('mobile,Phone Number\n+14155550101,+14155550100\n');
    expect(imp.contacts[0]).toMatchObject({ phone: '+14155550100', variables: { mobile: '+14155550101' } });
    expect(parseContactsCsv('to\n+14155550100\n').contacts[0]?.phone).toBe('+14155550100');
    expect(parseContactsCsv('Number, Time Zone \n+14155550100,Asia/Kolkata\n').contacts[0]).toMatchObject({ timezone: 'Asia/Kolkata', variables: {} });
  });

  it('rejects the file when no column is a phone column', () => {
    const imp = parseContactsCsv('name,email\nAnn,a@example.com\n');
    expect(imp.contacts).toEqual([]);
    expect(imp.errors).toHaveLength(1);
    expect(imp.errors[0]?.line).toBe(1);
    expect(imp.errors[0]?.message).toMatch(/^no phone column: name one of phone, phone_number, number, to, mobile/);
  });

  it('rejects a header that cannot be a variable name, an empty header and same-name headers, on line 1', () => {
    for (const header of ['phone,first-name', 'phone,name,', 'phone,Name,name', 'phone,2nd']) {
      const imp = parseContactsCsv(`${header}\n+14155550100,a,b\n`);
      expect(imp.contacts, header).toEqual([]);
      expect(imp.errors.map((e) => e.line), header).toEqual([1]);
    }
  });

  it('counts physical lines through quoted multi-line fields, blank lines and CRLF', () => {
    const csv = [
      'phone,note', // 1
      '', // 2
      '+14155550100,"two', // 3
      'lines"', // 4
      '', // 5
      '   ', // 6
      '+14155550101,"three', // 7
      '', // 8 (inside the quotes)
      'lines"', // 9
      'bad,x', // 10
      '+14155550102,ok', // 11
    ];
    for (const eol of ['\n', '\r\n', '\r']) {
      const imp = parseContactsCsv(csv.join(eol) + eol);
      expect(imp.contacts.map((c) => c.line), JSON.stringify(eol)).toEqual([3, 7, 11]);
      expect(imp.contacts[1]?.variables.note, JSON.stringify(eol)).toBe(`three${eol}${eol}lines`);
      expect(errorsAt(imp), JSON.stringify(eol)).toEqual([[10, 'not a valid phone number (contains letters)']]);
      expect(imp.totalRows).toBe(4);
    }
  });

  it('reports a row with the wrong number of columns at its line and reads on', () => {
    const imp = parseContactsCsv('phone,name\n+14155550100,Ann\n+14155550101\n+14155550102,Cy,extra\n+14155550103,Di\n');
    expect(errorsAt(imp)).toEqual([
      [3, 'expected 2 columns (as in the header), found 1'],
      [4, 'expected 2 columns (as in the header), found 3'],
    ]);
    expect(imp.contacts.map((c) => c.line)).toEqual([2, 5]);
  });

  it('reports bad phones, bad time zones and empty required variables with lines and columns', () => {
    const csv = 'phone,Region,tz,First Name,note\n' +
      '+14155550100,x,America/New_York,Ann,\n' + // 2 ok
      '4155550100,x,,Bob,\n' + // 3 no country code
      '+14155550102,x,Mars/Olympus,Cy,\n' + // 4 bad zone
      '+14155550103,x,UTC,  ,\n' + // 5 name empty
      ',x,Nowhere,,\n'; // 6 everything wrong
    const imp = parseContactsCsv(csv, { requiredVariables: ['first_name'] });
    expect(imp.contacts).toEqual([
      { line: 2, phone: '+14155550100', timezone: 'America/New_York', variables: { Region: 'x', first_name: 'Ann' }, mergedLines: [] },
    ]);
    expect(imp.errors).toEqual([
      { line: 3, column: 'phone', message: 'needs a country code (+…) or DEFAULT_COUNTRY', value: '4155550100' },
      { line: 4, column: 'tz', message: 'not a known IANA time zone (e.g. America/New_York)', value: 'Mars/Olympus' },
      { line: 5, column: 'First Name', message: `"first_name" is empty; the campaign's template needs it` },
      { line: 6, column: 'phone', message: 'phone number is empty', value: '' },
      { line: 6, column: 'tz', message: 'not a known IANA time zone (e.g. America/New_York)', value: 'Nowhere' },
      { line: 6, column: 'First Name', message: `"first_name" is empty; the campaign's template needs it` },
    ]);
    expect(imp.totalRows).toBe(5);
  });

  it('uses the default country for national numbers', () => {
    const imp = parseContactsCsv('phone\n(415) 555-0100\n020 7946 0958\n', { defaultCountry: 'GB' });
    expect(imp.contacts.map((c) => c.phone)).toEqual(['+442079460958']);
    expect(errorsAt(imp)).toEqual([[2, 'not a valid phone number']]);
  });

  it('rejects the file when a template variable has no column', () => {
    const imp = parseContactsCsv('phone,name\n+14155550100,Ann\n', { requiredVariables: ['name', 'company'] });
    expect(imp.contacts).toEqual([]);
    expect(imp.errors).toEqual([{ line: 1, column: 'company', message: 'no column for the template variable "company"' }]);
  });

  it('reads a UTF-8 BOM, as text or bytes', () => {
    const text = '\uFEFFphone,name\n+14155550100,Zoë\n';
    for (const input of [text, Buffer.from(text, 'utf8')]) {
      const imp = parseContactsCsv(input);
      expect(imp.errors).toEqual([]);
      expect(imp.contacts).toEqual([{ line: 2, phone: '+14155550100', variables: { name: 'Zoë' }, mergedLines: [] }]);
    }
  });

  it('merges duplicate numbers into the first row and records their lines', () => {
    const imp = parseContactsCsv('phone,name\n+14155550100,Ann\n(415) 555-0101,Bob\n+1 415 555 0100,Ann again\n\n4155550100,Ann thrice\n', { defaultCountry: 'US' });
    expect(imp.contacts).toEqual([
      { line: 2, phone: '+14155550100', variables: { name: 'Ann' }, mergedLines: [4, 6] },
      { line: 3, phone: '+14155550101', variables: { name: 'Bob' }, mergedLines: [] },
    ]);
    expect(imp.duplicates).toEqual([
      { line: 4, phone: '+14155550100', firstLine: 2 },
      { line: 6, phone: '+14155550100', firstLine: 2 },
    ]);
    expect(imp.errors).toEqual([]);
    expect(imp.totalRows).toBe(4);
  });

  it('does not merge into a rejected row: the first valid row with the number wins', () => {
    const imp = parseContactsCsv('phone,tz\n+14155550100,Bad/Zone\n+14155550100,UTC\n');
    expect(imp.contacts).toEqual([{ line: 3, phone: '+14155550100', timezone: 'UTC', variables: {}, mergedLines: [] }]);
    expect(imp.duplicates).toEqual([]);
    expect(errorsAt(imp)).toEqual([[2, 'not a known IANA time zone (e.g. America/New_York)']]);
  });

  it('a header and no rows is an empty import; an empty file is an error', () => {
    expect(parseContactsCsv('phone,name\n\n')).toEqual({ contacts: [], errors: [], duplicates: [], totalRows: 0 });
    for (const empty of ['', '\uFEFF', '\n\n', ' , \n']) {
      const imp = parseContactsCsv(empty);
      expect(imp.errors.map((e) => e.line)).toEqual([1]);
      expect(imp.errors[0]?.message).toMatch(/empty/);
    }
  });

  it('skips rows whose cells are all empty (spreadsheet exports) without counting them', () => {
    const imp = parseContactsCsv('phone,name\n+14155550100,Ann\n,\n , \n');
    expect(imp.totalRows).toBe(1);
    expect(imp.errors).toEqual([]);
  });

  it('reports an unclosed quote at the line it opens and imports nothing', () => {
    const imp = parseContactsCsv('phone,name\r\n+14155550100,"multi\r\nline"\r\n+14155550101,Bob\r\n+14155550102,"never closed\r\n+14155550103,Di\r\n');
    expect(imp.contacts).toEqual([]);
    expect(imp.duplicates).toEqual([]);
    expect(imp.errors).toEqual([{ line: 5, message: 'unclosed quote: a quoted field starts here and never ends; nothing was imported' }]);
    expect(imp.totalRows).toBe(2);
  });

  it('reports stray quotes at their line instead of throwing', () => {
    expect(errorsAt(parseContactsCsv('phone,name\n+14155550100,Ann\n+14155550101,Bo"b\n'))).toEqual([
      [3, 'a quote inside an unquoted field: quote the whole field and double the quotes inside (""); nothing was imported'],
    ]);
    expect(errorsAt(parseContactsCsv('phone,name\n+14155550100,"Ann"x\n'))).toEqual([
      [2, 'characters after a closing quote: a quoted field must end at a comma or the end of the line; nothing was imported'],
    ]);
  });

  it('keeps quoted text verbatim, doubled quotes included, and allows spaces around delimiters', () => {
    const imp = parseContactsCsv('phone, note\n+14155550100 , "  say ""hi"", then, go  "\n');
    expect(imp.contacts[0]?.variables).toEqual({ note: '  say "hi", then, go  ' });
  });

  it('rejects a file over maxRows at the first row too many', () => {
    const imp = parseContactsCsv('phone\n+14155550100\n+14155550101\n\n+14155550102\n', { maxRows: 2 });
    expect(imp.contacts).toEqual([]);
    expect(errorsAt(imp)).toEqual([[5, 'more than 2 rows: split the file']]);
  });
});

describe('parseContactsJson', () => {
  it('validates items like CSV rows, with line = index + 1', () => {
    const imp = parseContactsJson(
      [
        { phone: '+1 415 555 0100', timezone: 'Europe/London', variables: { name: 'Ann', n: 3, vip: true, empty: '', none: null } },
        { phone: '4155550101' },
        { phone: '+14155550100', variables: { name: 'dup' } },
        'just a string',
        { phone: '+14155550102', timeZone: 'UTC', name: 'Flat' },
        { phone: '+14155550103', timezone: 'Not/AZone', variables: { 'first name': 'x', obj: {} } },
        { phone: '+14155550104', variables: { name: ' ' } },
        '+14155550105',
        { mobile: '+14155550106', tz: 'Asia/Kolkata', name: 'Ravi', order: 42, variables: { name: 'Ravi K' } },
        { name: 'no phone' },
      ],
      { requiredVariables: ['name'] },
    );
    expect(imp.contacts).toEqual([
      { line: 1, phone: '+14155550100', timezone: 'Europe/London', variables: { name: 'Ann', n: '3', vip: 'true' }, mergedLines: [3] },
      { line: 5, phone: '+14155550102', timezone: 'UTC', variables: { name: 'Flat' }, mergedLines: [] },
      { line: 9, phone: '+14155550106', timezone: 'Asia/Kolkata', variables: { name: 'Ravi K', order: '42' }, mergedLines: [] },
    ]);
    expect(imp.duplicates).toEqual([{ line: 3, phone: '+14155550100', firstLine: 1 }]);
    expect(imp.errors.map((e) => [e.line, e.column])).toEqual([
      [2, 'phone'],
      [2, 'variables.name'],
      [4, 'phone'],
      [4, 'variables.name'],
      [6, 'variables.first name'],
      [6, 'variables.obj'],
      [7, 'variables.name'],
      [8, 'variables.name'],
      [10, 'phone'],
    ]);
    expect(imp.totalRows).toBe(10);
  });

  it('uses the default country and rejects more than maxRows items', () => {
    expect(parseContactsJson([{ phone: '(415) 555-0100' }], { defaultCountry: 'US' }).contacts[0]?.phone).toBe('+14155550100');
    const big = parseContactsJson([{ phone: '+14155550100' }, { phone: '+14155550101' }], { maxRows: 1 });
    expect(big.contacts).toEqual([]);
    expect(errorsAt(big)).toEqual([[2, 'more than 1 contacts: send them in parts']]);
  });
});

describe('CSV export', () => {
  it('writes a header and quoted rows in column order, null and missing cells empty', () => {
    const csv = resultsToCsv(
      [
        { line: 2, phone: '+14155550100', note: 'a, "b"\nc', outcome: null },
        { line: 3, phone: '+14155550101', note: ' padded ' },
      ],
      ['line', 'phone', 'outcome', 'note'],
    );
    expect(csv).toBe('line,phone,outcome,note\n2,+14155550100,,"a, ""b""\nc"\n3,+14155550101,," padded "\n');
  });

  it('neutralizes spreadsheet formulas but leaves numbers and E.164 alone', () => {
    const csv = resultsToCsv([{ a: '=HYPERLINK("x")', b: '@SUM(A1)', c: '+14155550100', d: '-12.5', e: '+1+cmd', f: -3 }], ['a', 'b', 'c', 'd', 'e', 'f']);
    expect(csv.split('\n')[1]).toBe(`"'=HYPERLINK(""x"")",'@SUM(A1),+14155550100,-12.5,'+1+cmd,-3`);
    expect(resultsToCsv([{ a: '=1' }], ['a'], { escapeFormulas: false })).toBe('a\n=1\n');
    expect(resultsToCsv([], ['a'], { bom: true })).toBe('\uFEFFa\n');
  });

  it('round-trips contacts through resultsToCsv and parseContactsCsv', () => {
    const rows = [
      { phone: '+14155550100', timezone: 'America/New_York', name: 'Ann "A" Lee', note: 'two\nlines' },
      { phone: '+442079460958', timezone: null, name: ' Bob ', note: 'x,y' },
    ];
    const imp = parseContactsCsv(resultsToCsv(rows, ['phone', 'timezone', 'name', 'note']));
    expect(imp.errors).toEqual([]);
    expect(imp.contacts).toEqual([
      { line: 2, phone: '+14155550100', timezone: 'America/New_York', variables: { name: 'Ann "A" Lee', note: 'two\nlines' }, mergedLines: [] },
      { line: 4, phone: '+442079460958', variables: { name: ' Bob ', note: 'x,y' }, mergedLines: [] },
    ]);
  });
});

// ------------------------------------------------------------------ window

const weekdays: Weekday[] = ['mon', 'tue', 'wed', 'thu', 'fri'];

describe('callingWindowSchema', () => {
  it('accepts days, HH:MM times, 24:00 as an end and IANA zones', () => {
    const w = { days: ['mon', 'fri'], start: '09:00', end: '24:00', timezone: 'America/New_York' };
    expect(callingWindowSchema.parse(w)).toEqual(w);
    expect(callingWindowSchema.parse({ days: ['sat'], start: '22:00', end: '02:00' })).toEqual({ days: ['sat'], start: '22:00', end: '02:00' });
  });

  it('calls every day when days are left out', () => {
    expect(callingWindowSchema.parse({ start: '09:00', end: '17:00' })).toEqual({ days: [...WEEKDAYS], start: '09:00', end: '17:00' });
  });

  it.each([
    [{ days: ['mon'], start: '9:00', end: '17:00' }, 'start'],
    [{ days: ['mon'], start: '24:00', end: '17:00' }, 'start'],
    [{ days: ['mon'], start: '09:00', end: '17:60' }, 'end'],
    [{ days: ['mon'], start: '09:00', end: '09:00' }, 'end'],
    [{ days: ['mon'], start: '09:00', end: '17:00', timezone: 'Mars/Base' }, 'timezone'],
    [{ days: ['mon'], start: '09:00', end: '17:00', timezone: '+05:30' }, 'timezone'],
    [{ days: ['monday'], start: '09:00', end: '17:00' }, 'days.0'],
    [{ days: [], start: '09:00', end: '17:00' }, 'days'],
    [{ days: ['mon', 'mon'], start: '09:00', end: '17:00' }, 'days'],
    [{ days: ['mon'], start: '09:00', end: '17:00', tz: 'UTC' }, ''],
  ])('rejects %j (at %s)', (w, path) => {
    const r = callingWindowSchema.safeParse(w);
    expect(r.success).toBe(false);
    expect(r.error?.issues[0]?.path.join('.')).toBe(path);
  });

  it('isValidTimeZone follows Intl', () => {
    expect(isValidTimeZone('America/New_York')).toBe(true);
    expect(isValidTimeZone('UTC')).toBe(true);
    expect(isValidTimeZone('Asia/Kolkata')).toBe(true);
    expect(isValidTimeZone('')).toBe(false);
    expect(isValidTimeZone('Nowhere/Land')).toBe(false);
    expect(isValidTimeZone('+02:00')).toBe(false);
  });
});

describe('isWithinWindow', () => {
  const w: CallingWindow = { days: weekdays, start: '09:00', end: '17:00' };

  it('is open from start to just before end on window days (UTC by default)', () => {
    expect(isWithinWindow(w, at('2025-06-06T08:59:59.999Z'))).toBe(false); // Friday
    expect(isWithinWindow(w, at('2025-06-06T09:00:00Z'))).toBe(true);
    expect(isWithinWindow(w, at('2025-06-06T16:59:59.999Z'))).toBe(true);
    expect(isWithinWindow(w, at('2025-06-06T17:00:00Z'))).toBe(false);
    expect(isWithinWindow(w, at('2025-06-07T12:00:00Z'))).toBe(false); // Saturday
  });

  it('a window crossing midnight belongs to the day it starts', () => {
    const night: CallingWindow = { days: ['fri'], start: '22:00', end: '02:00' };
    expect(isWithinWindow(night, at('2025-06-06T21:59:00Z'))).toBe(false);
    expect(isWithinWindow(night, at('2025-06-06T22:00:00Z'))).toBe(true); // Friday night
    expect(isWithinWindow(night, at('2025-06-07T01:59:00Z'))).toBe(true); // Saturday early, Friday's window
    expect(isWithinWindow(night, at('2025-06-07T02:00:00Z'))).toBe(false);
    expect(isWithinWindow(night, at('2025-06-06T01:00:00Z'))).toBe(false); // Friday early is Thursday's window
    expect(isWithinWindow(night, at('2025-06-07T22:30:00Z'))).toBe(false); // Saturday night
  });

  it('reads the weekday in the contact zone, else the window zone, else UTC', () => {
    // Friday 23:30 in New York is Saturday 03:30 UTC.
    const t = at('2025-06-07T03:30:00Z');
    const friEvening: CallingWindow = { days: ['fri'], start: '20:00', end: '24:00' };
    expect(isWithinWindow(friEvening, t)).toBe(false);
    expect(isWithinWindow(friEvening, t, 'America/New_York')).toBe(true);
    expect(isWithinWindow({ ...friEvening, timezone: 'America/New_York' }, t)).toBe(true);
    expect(isWithinWindow({ ...friEvening, timezone: 'America/New_York' }, t, 'UTC')).toBe(false);
    expect(isWithinWindow({ ...friEvening, timezone: 'America/New_York' }, t, '')).toBe(true);
  });

  it('follows wall-clock time across DST changes', () => {
    const ny = 'America/New_York';
    const early: CallingWindow = { days: ['sun'], start: '01:30', end: '02:00' };
    // Spring forward 2025-03-09 07:00Z: 01:59 EST → 03:00 EDT.
    expect(isWithinWindow(early, at('2025-03-09T06:45:00Z'), ny)).toBe(true); // 01:45 EST
    expect(isWithinWindow(early, at('2025-03-09T07:00:00Z'), ny)).toBe(false); // 03:00 EDT
    // Fall back 2025-11-02 06:00Z: 01:59 EDT → 01:00 EST; 01:30–02:00 happens twice.
    expect(isWithinWindow(early, at('2025-11-02T05:45:00Z'), ny)).toBe(true); // 01:45 EDT
    expect(isWithinWindow(early, at('2025-11-02T06:15:00Z'), ny)).toBe(false); // 01:15 EST
    expect(isWithinWindow(early, at('2025-11-02T06:45:00Z'), ny)).toBe(true); // 01:45 EST
  });

  it('throws on an unknown zone or a malformed window', () => {
    expect(() => isWithinWindow(w, 0, 'Nowhere/Land')).toThrow(RangeError);
    expect(() => isWithinWindow({ ...w, start: '9am' }, 0)).toThrow(RangeError);
    expect(() => isWithinWindow({ ...w, end: '09:00' }, 0)).toThrow(RangeError);
  });
});

describe('localTimeParts', () => {
  it('gives wall-clock fields and the offset, :30 zones included', () => {
    expect(localTimeParts(at('2025-06-06T03:45:07Z'), 'Asia/Kolkata')).toEqual({
      year: 2025, month: 6, day: 6, weekday: 'fri', hour: 9, minute: 15, second: 7, offsetMinutes: 330,
    });
    expect(localTimeParts(at('2025-06-07T03:30:00Z'), 'America/New_York')).toMatchObject({ day: 6, weekday: 'fri', hour: 23, minute: 30, offsetMinutes: -240 });
    expect(localTimeParts(at('2025-01-01T00:00:00Z'), 'Australia/Lord_Howe')).toMatchObject({ hour: 11, offsetMinutes: 660 });
  });
});

describe('nextWindowStart', () => {
  const office: CallingWindow = { days: weekdays, start: '09:00', end: '17:00' };

  it('is now when open, the next start when not, undefined without days', () => {
    const t = at('2025-06-06T10:00:00.123Z');
    expect(nextWindowStart(office, t)).toBe(t);
    expect(iso(nextWindowStart(office, at('2025-06-06T06:00:00Z')))).toBe('2025-06-06T09:00:00.000Z');
    expect(iso(nextWindowStart(office, at('2025-06-06T17:00:00Z')))).toBe('2025-06-09T09:00:00.000Z'); // Friday evening → Monday
    expect(nextWindowStart({ ...office, days: [] }, t)).toBeUndefined();
  });

  it('uses the contact zone and its weekday', () => {
    const sat: CallingWindow = { days: ['sat'], start: '10:00', end: '12:00', timezone: 'UTC' };
    // Friday 23:30 in New York; Saturday 10:00 there is 14:00Z.
    expect(iso(nextWindowStart(sat, at('2025-06-07T03:30:00Z'), 'America/New_York'))).toBe('2025-06-07T14:00:00.000Z');
    expect(iso(nextWindowStart(sat, at('2025-06-07T03:30:00Z')))).toBe('2025-06-07T10:00:00.000Z');
  });

  it('handles :30 offsets (Asia/Kolkata)', () => {
    const w: CallingWindow = { ...office, timezone: 'Asia/Kolkata' };
    expect(iso(nextWindowStart(w, at('2025-06-02T03:00:00Z')))).toBe('2025-06-02T03:30:00.000Z'); // Monday 08:30 IST
    expect(iso(nextWindowStart(w, at('2025-06-06T11:30:00Z')))).toBe('2025-06-09T03:30:00.000Z'); // Friday 17:00 IST
  });

  it('crosses the New York spring-forward day', () => {
    const ny = 'America/New_York';
    // Saturday 22:00 EST → Sunday 09:00 EDT.
    expect(iso(nextWindowStart({ days: ['sun'], start: '09:00', end: '17:00' }, at('2025-03-09T03:00:00Z'), ny))).toBe('2025-03-09T13:00:00.000Z');
    // A start in the skipped hour opens when the clock jumps past it (03:00 EDT).
    expect(iso(nextWindowStart({ days: ['sun'], start: '02:30', end: '04:00' }, at('2025-03-09T06:00:00Z'), ny))).toBe('2025-03-09T07:00:00.000Z');
    // A window entirely inside the skipped hour waits a week.
    expect(iso(nextWindowStart({ days: ['sun'], start: '02:10', end: '02:50' }, at('2025-03-09T06:00:00Z'), ny))).toBe('2025-03-16T06:10:00.000Z');
  });

  it('crosses the New York fall-back day', () => {
    const ny = 'America/New_York';
    // Saturday 22:00 EDT → Sunday 09:00 EST.
    expect(iso(nextWindowStart({ days: ['sun'], start: '09:00', end: '17:00' }, at('2025-11-02T02:00:00Z'), ny))).toBe('2025-11-02T14:00:00.000Z');
    // 01:30 happens twice: the first one opens the window…
    const early: CallingWindow = { days: ['sun'], start: '01:30', end: '01:45' };
    expect(iso(nextWindowStart(early, at('2025-11-02T05:00:00Z'), ny))).toBe('2025-11-02T05:30:00.000Z');
    // …and after it closed, the repeated 01:30 opens it again.
    expect(iso(nextWindowStart(early, at('2025-11-02T05:50:00Z'), ny))).toBe('2025-11-02T06:30:00.000Z');
    // A Saturday-night window ending 01:30 reopens when the clock falls back to 01:00.
    expect(iso(nextWindowStart({ days: ['sat'], start: '22:00', end: '01:30' }, at('2025-11-02T05:45:00Z'), ny))).toBe('2025-11-02T06:00:00.000Z');
  });

  it('handles the 30-minute DST shift of Australia/Lord_Howe', () => {
    const lh = 'Australia/Lord_Howe';
    // 2025-10-05 02:00 (+10:30) → 02:30 (+11) at 15:30Z: 02:00–02:20 does not exist that day.
    expect(iso(nextWindowStart({ days: ['sun'], start: '02:00', end: '02:20' }, at('2025-10-04T15:00:00Z'), lh))).toBe('2025-10-11T15:00:00.000Z');
    expect(iso(nextWindowStart({ days: ['sun'], start: '02:15', end: '03:00' }, at('2025-10-04T15:00:00Z'), lh))).toBe('2025-10-04T15:30:00.000Z');
  });

  it('matches a minute-by-minute scan for random windows, zones and instants around DST changes', () => {
    const rng = new Rng(20250309);
    const zones = ['UTC', 'America/New_York', 'Europe/London', 'Asia/Kolkata', 'Australia/Lord_Howe', 'Asia/Kathmandu', 'Pacific/Chatham', 'America/Santiago', 'America/St_Johns'];
    const near = ['2025-03-09', '2025-03-30', '2025-04-06', '2025-09-07', '2025-09-28', '2025-10-05', '2025-10-26', '2025-11-02', '2025-06-15'];
    const hhmm = (m: number) => `${String(Math.floor(m / 60)).padStart(2, '0')}:${String(m % 60).padStart(2, '0')}`;
    for (let i = 0; i < 100; i++) {
      const days = WEEKDAYS.filter(() => rng.chance(0.35));
      if (days.length === 0) days.push(rng.pick(WEEKDAYS));
      const start = rng.chance(0.5) ? rng.int(0, 1439) : rng.pick([60, 90, 120, 150, 1320, 0]);
      let end = rng.chance(0.5) ? rng.int(1, 1440) : rng.pick([105, 120, 135, 180, 1440, 90]);
      if (end === start) end = (end + 15) % 1440;
      const w: CallingWindow = { days, start: hhmm(start), end: end === 1440 ? '24:00' : hhmm(end) };
      const tz = rng.pick(zones);
      const now = at(`${rng.pick(near)}T00:00:00Z`) + rng.int(-4 * 1440, 4 * 1440) * 60_000 + rng.int(0, 59_999);
      // Reference: the first instant (now, then each minute boundary) at which the window is open.
      let expected: number | undefined;
      if (isWithinWindow(w, now, tz)) expected = now;
      else {
        for (let t = Math.ceil(now / 60_000) * 60_000; t < now + 16 * 86_400_000; t += 60_000) {
          if (isWithinWindow(w, t, tz)) {
            expected = t;
            break;
          }
        }
      }
      expect(iso(nextWindowStart(w, now, tz)), `${JSON.stringify(w)} ${tz} ${iso(now)}`).toBe(iso(expected));
    }
  });

  it('is cheap enough for thousands of contacts a second', () => {
    const zones = ['America/New_York', 'America/Los_Angeles', 'Europe/Berlin', 'Asia/Kolkata', 'Australia/Sydney'];
    const w: CallingWindow = { days: weekdays, start: '09:00', end: '20:00' };
    const t0 = at('2025-06-07T12:00:00Z'); // a Saturday: every contact needs a real computation
    const began = performance.now();
    const n = 20_000;
    for (let i = 0; i < n; i++) nextWindowStart(w, t0 + i * 7_919, zones[i % zones.length]);
    const perSecond = n / ((performance.now() - began) / 1000);
    expect(perSecond).toBeGreaterThan(5_000);
  });
});
