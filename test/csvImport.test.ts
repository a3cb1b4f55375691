/**
 * The streaming contact import (`parseContactsStream`) against the
 * synchronous reader it shares its row logic with, delimiter detection, and
 * the stores' chunked insert and per-contact attempts query.
 */
import { setImmediate as tick } from 'node:timers/promises';
import { describe, expect, it, vi } from 'vitest';
import { detectDelimiter, parseContactsCsv, parseContactsJson, parseContactsJsonAsync, parseContactsStream } from '../src/outbound/csv.js';
import { SqliteCampaignStore } from '../src/store/campaigns.js';
import { SqliteCallStore } from '../src/store/calls.js';
import { openDb } from '../src/store/db.js';

/** `text` as UTF-8 Buffers of `size` bytes (multi-byte characters split across chunks). */
async function* chunks(text: string, size: number): AsyncGenerator<Buffer> {
  const bytes = Buffer.from(text, 'utf8');
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, i + size);
}

const SAMPLES: Array<[string, string]> = [
  ['header and rows', ' First Name ,PHONE, company\n Ann ,+1 415 555 0100,Acme\n'],
  ['BOM, CRLF, quoted multi-line field, unicode', '\uFEFFphone,name\r\n+14155550100,"Zoë\r\nline two"\r\n+14155550101,Émile Ünal\r\n'],
  ['blank lines and empty rows', '\n\nphone,name\n+14155550100,Ann\n\n,\n , \n+14155550101,Bob\n'],
  ['bad rows and duplicates', 'phone,tz\n+14155550100,Bad/Zone\n+14155550100,UTC\nnot-a-number,UTC\n+14155550100,UTC\n+14155550101\n'],
  ['unclosed quote', 'phone,name\r\n+14155550100,"multi\r\nline"\r\n+14155550101,Bob\r\n+14155550102,"never closed\r\n+14155550103,Di\r\n'],
  ['stray quote', 'phone,name\n+14155550100,Ann\n+14155550101,Bo"b\n'],
  ['no phone column', 'name,email\nAnn,a@example.com\n'],
  ['empty', ''],
  ['header only', 'phone,name\n'],
  ['no final line break', 'phone\n+14155550100'],
  ['semicolons', 'name;phone;note\nAnn;+14155550100;"a;b"\n'],
  ['tabs', 'phone\tname\n+14155550100\tAnn\n'],
];

describe('parseContactsStream', () => {
  it.each(SAMPLES)('reads %s exactly as parseContactsCsv does, whole or in 3-byte chunks', async (_name, text) => {
    const sync = parseContactsCsv(text, { requiredVariables: [] });
    expect(await parseContactsStream(chunks(text, 1 << 20))).toEqual(sync);
    expect(await parseContactsStream(chunks(text, 3))).toEqual(sync);
    expect(await parseContactsStream((async function* () { yield text; })())).toEqual(sync);
  });

  it('applies the required variables and the default country like the sync reader', async () => {
    const text = 'phone,first_name\n(415) 555-0100,Ann\n(415) 555-0101,\n';
    const opts = { requiredVariables: ['first_name'], defaultCountry: 'US' as const };
    const got = await parseContactsStream(chunks(text, 5), opts);
    expect(got).toEqual(parseContactsCsv(text, opts));
    expect(got.contacts.map((c) => c.phone)).toEqual(['+14155550100']);
    expect(got.errors).toEqual([{ line: 3, column: 'first_name', message: '"first_name" is empty; the campaign\'s template needs it' }]);
  });

  it('stops reading the source at the first row over maxRows, and reports that line', async () => {
    let pulled = 0;
    let returned = false;
    const source: AsyncIterable<string> = {
      [Symbol.asyncIterator]() {
        let i = -1;
        return {
          async next() {
            pulled++;
            i++;
            if (i === 0) return { done: false, value: 'phone\n' };
            if (i > 1000) return { done: true, value: undefined };
            return { done: false, value: `+1415${String(2000000 + i).padStart(7, '0')}\n` };
          },
          async return() {
            returned = true;
            return { done: true, value: undefined };
          },
        };
      },
    };
    const imp = await parseContactsStream(source, { maxRows: 10 });
    expect(imp.contacts).toEqual([]);
    expect(imp.errors).toEqual([{ line: 12, message: 'more than 10 rows: split the file' }]);
    // The source is told it will not be read further (asynchronously, as a stream is torn down).
    await vi.waitFor(() => expect(returned).toBe(true));
    expect(pulled).toBeLessThan(100);
  });

  it('rejects with the error of the source (a size limit, a closed connection)', async () => {
    async function* failing(): AsyncGenerator<string> {
      yield 'phone\n+14155550100\n';
      throw new Error('connection reset');
    }
    await expect(parseContactsStream(failing())).rejects.toThrow('connection reset');
  });

  it('hands the event loop back while it reads a big file', async () => {
    const rows = ['phone'];
    for (let i = 0; i < 5_000; i++) rows.push(`+1415${String(2000000 + i).padStart(7, '0')}`);
    let turns = 0;
    let reading = true;
    const count = async () => {
      while (reading) {
        await tick();
        turns++;
      }
    };
    const counting = count();
    const imp = await parseContactsStream(chunks(rows.join('\n'), 64 * 1024));
    reading = false;
    await counting;
    expect(imp.contacts).toHaveLength(5_000);
    expect(turns).toBeGreaterThanOrEqual(10);
  });
});

describe('detectDelimiter', () => {
  it('takes the delimiter that yields a phone column, else the one with most columns', () => {
    expect(detectDelimiter('phone,name')).toBe(',');
    expect(detectDelimiter('Name;Phone Number;City')).toBe(';');
    expect(detectDelimiter('name\tmobile')).toBe('\t');
    // "a,b" in quotes is one cell: the semicolons split the header.
    expect(detectDelimiter('"a,b";phone')).toBe(';');
    expect(detectDelimiter('name;email;city')).toBe(';');
    expect(detectDelimiter('name,email')).toBe(',');
    expect(detectDelimiter('')).toBe(',');
  });

  it('reads a semicolon file and reports a missing phone column with the headers it split', () => {
    expect(parseContactsCsv('Name;Phone\nAnn;+14155550100\n').contacts).toEqual([{ line: 2, phone: '+14155550100', variables: { Name: 'Ann' }, mergedLines: [] }]);
    const imp = parseContactsCsv('name;tel;city\nAnn;+14155550100;Paris\n');
    expect(imp.errors[0]?.message).toBe('no phone column: name one of phone, phone_number, number, to, mobile (got "name", "tel", "city")');
  });
});

describe('parseContactsJsonAsync', () => {
  it('gives the same result as parseContactsJson', async () => {
    const items = ['+14155550100', { phone: '+14155550101', name: 'Ann' }, { name: 'no phone' }, { phone: '+14155550100' }, 42];
    expect(await parseContactsJsonAsync(items, { requiredVariables: [] })).toEqual(parseContactsJson(items, { requiredVariables: [] }));
  });
});

describe('CampaignStore.addContactsInChunks', () => {
  it('inserts in transactions of chunkSize, yields between them, and merges numbers across chunks', async () => {
    const store = new SqliteCampaignStore(openDb(':memory:'));
    const c = await store.create('x', {});
    const contacts = Array.from({ length: 10 }, (_, i) => ({ line: i + 2, phone: `+1415555${String(100 + (i % 7)).padStart(4, '0')}`, variables: {} }));
    // What other work sees between two chunks: the contacts inserted so far.
    const seen: number[] = [];
    let inserting = true;
    const probe = (async () => {
      while (inserting) {
        await tick();
        seen.push((await store.counts(c.id)).total);
      }
    })();
    const r = await store.addContactsInChunks(c.id, contacts, 3);
    inserting = false;
    await probe;
    expect(r.added).toBe(7);
    expect(r.merged.map((m) => m.line)).toEqual([9, 10, 11]);
    expect(seen).toEqual(expect.arrayContaining([3, 6]));
    expect((await store.counts(c.id)).total).toBe(7);
  });

  it('stops before the next chunk once the campaign is no longer open (canceled during the upload), and says so', async () => {
    const store = new SqliteCampaignStore(openDb(':memory:'));
    const c = await store.create('x', {});
    const contacts = Array.from({ length: 9 }, (_, i) => ({ line: i + 2, phone: `+1415555${String(200 + i).padStart(4, '0')}`, variables: {} }));
    let chunks = 0;
    const r = await store.addContactsInChunks(c.id, contacts, 3, () => chunks++ < 1);
    expect(r).toMatchObject({ added: 3, stopped: true });
    expect((await store.counts(c.id)).total).toBe(3);
  });

  it('delete removes a campaign with its contacts', async () => {
    const store = new SqliteCampaignStore(openDb(':memory:'));
    const c = await store.create('x', {});
    await store.addContacts(c.id, [{ phone: '+14155550100', variables: {} }]);
    expect(await store.delete(c.id)).toBe(true);
    expect(await store.get(c.id)).toBeUndefined();
    expect(await store.contacts(c.id, { limit: 10 })).toEqual([]);
  });
});

describe('CallStore.listByContact', () => {
  it('returns every attempt of one contact, oldest first, however many other calls the campaign has', async () => {
    const db = openDb(':memory:');
    const campaigns = new SqliteCampaignStore(db);
    const calls = new SqliteCallStore(db);
    const c = await campaigns.create('x', {});
    await campaigns.addContacts(c.id, [{ phone: '+14155550100', variables: {} }, { phone: '+14155550101', variables: {} }]);
    const [a, b] = await campaigns.contacts(c.id, { limit: 2 });
    const call = (contactId: string, attempt: number, at: number) =>
      calls.insert({ direction: 'outbound', to: '+14155550100', from: '+12025550100', agentId: 'a', campaignId: c.id, contactId, attempt, status: 'queued' }, at);
    const first = await call(a!.id, 1, 1_000);
    for (let i = 0; i < 20; i++) await call(b!.id, i + 1, 2_000 + i);
    const second = await call(a!.id, 2, 5_000);
    expect((await calls.listByContact(c.id, a!.id)).map((r) => r.id)).toEqual([first.id, second.id]);
    expect(await calls.listByContact('cmp_other', a!.id)).toEqual([]);
  });
});
