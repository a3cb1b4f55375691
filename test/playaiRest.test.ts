import { afterEach, describe, expect, it } from 'vitest';
import {
  fetchConversationTranscript,
  fetchConversationTranscriptPages,
  PlayAiRestError,
  type FetchTranscriptOptions,
} from '../src/agent/playai/rest.js';
import { FakePlayAiRest, type FakePlayAiRestOptions } from '../src/testing/fakePlayaiRest.js';

const API_KEY = 'sk-test-very-secret-playai-key-0123';
const USER_ID = 'user-42';

function turns(n: number, prefix = 't'): Array<{ id: string; role: string; content: string; timestamp: string }> {
  return Array.from({ length: n }, (_, i) => ({
    id: `${prefix}${String(i).padStart(4, '0')}`,
    role: i % 2 === 0 ? 'assistant' : 'user',
    content: `turn ${i}`,
    timestamp: new Date(Date.UTC(2025, 0, 1, 0, 0, i)).toISOString(),
  }));
}

let server: FakePlayAiRest | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

async function start(extra: FakePlayAiRestOptions = {}): Promise<FakePlayAiRest> {
  server = await FakePlayAiRest.start({ apiKey: API_KEY, userId: USER_ID, ...extra });
  return server;
}

function opts(s: FakePlayAiRest, extra: Partial<FetchTranscriptOptions> = {}): FetchTranscriptOptions {
  return { baseUrl: s.url, apiKey: API_KEY, userId: USER_ID, agentId: 'agent-1', conversationId: 'conv-1', ...extra };
}

async function catchError(p: Promise<unknown>): Promise<PlayAiRestError> {
  try {
    await p;
  } catch (err) {
    expect(err).toBeInstanceOf(PlayAiRestError);
    return err as PlayAiRestError;
  }
  throw new Error('expected a rejection');
}

describe('fetchConversationTranscript', () => {
  it('follows pagination over 120 turns with pageSize 50 (3 requests, auth headers on each)', async () => {
    const s = await start();
    const all = turns(120);
    s.setTranscript('agent-1', 'conv-1', all);

    const got = await fetchConversationTranscript(opts(s, { pageSize: 50 }));
    expect(got).toEqual(all);
    expect(s.requests.map((r) => r.query)).toEqual([
      { pageSize: '50' },
      { pageSize: '50', startAfter: 't0049' },
      { pageSize: '50', startAfter: 't0099' },
    ]);
    for (const r of s.requests) {
      expect(r.path).toBe('/api/v1/agents/agent-1/conversations/conv-1/transcript');
      expect(r.authorization).toBe(`Bearer ${API_KEY}`);
      expect(r.userId).toBe(USER_ID);
      expect(r.status).toBe(200);
    }
  });

  it('defaults to pageSize 50 and stops at X-Total-Count without an extra empty request', async () => {
    const s = await start();
    s.setTranscript('agent-1', 'conv-1', turns(100));
    const res = await fetchConversationTranscriptPages(opts(s));
    expect(res.turns).toHaveLength(100);
    expect(res.pages).toBe(2);
    expect(res.totalCount).toBe(100);
    expect(s.requests.map((r) => r.query['pageSize'])).toEqual(['50', '50']);
  });

  it('stops when X-Next-Start-After is absent', async () => {
    const s = await start({ omitNextOnLastPage: true });
    s.setTranscript('agent-1', 'conv-1', turns(10));
    const res = await fetchConversationTranscriptPages(opts(s, { pageSize: 5 }));
    expect(res.turns).toHaveLength(10);
    expect(res.pages).toBe(2);
  });

  it('uses the page size the server reports when it caps the requested one', async () => {
    const s = await start({ maxPageSize: 20 });
    s.setTranscript('agent-1', 'conv-1', turns(45));
    const res = await fetchConversationTranscriptPages(opts(s, { pageSize: 50 }));
    expect(res.turns).toHaveLength(45);
    expect(res.pages).toBe(3);
  });

  it('returns an empty transcript in one request', async () => {
    const s = await start();
    s.setTranscript('agent-1', 'conv-1', []);
    expect(await fetchConversationTranscript(opts(s))).toEqual([]);
    expect(s.requests).toHaveLength(1);
  });

  it('URL-encodes the agent and conversation ids', async () => {
    const s = await start();
    s.setTranscript('agent/ä 1', 'conv?x=1#2', turns(3));
    const got = await fetchConversationTranscript(opts(s, { agentId: 'agent/ä 1', conversationId: 'conv?x=1#2' }));
    expect(got).toHaveLength(3);
    expect(s.requests[0]?.path).toBe(
      `/api/v1/agents/${encodeURIComponent('agent/ä 1')}/conversations/${encodeURIComponent('conv?x=1#2')}/transcript`,
    );
  });

  it('skips and counts invalid items instead of failing', async () => {
    const s = await start();
    const good = turns(8);
    const items: unknown[] = [
      good[0],
      { id: 'bad1', role: 'user', content: 42, timestamp: '2025-01-01T00:00:00Z' },
      good[1],
      null,
      'not an object',
      { id: 'bad2', role: 'user' },
      good[2],
      good[3],
      { id: 'bad3', role: '', content: 'x', timestamp: 't' },
      good[4],
      good[5],
      good[6],
      good[7],
    ];
    s.setTranscript('agent-1', 'conv-1', items);
    const res = await fetchConversationTranscriptPages(opts(s, { pageSize: 4 }));
    expect(res.turns).toEqual(good);
    expect(res.invalid).toBe(5);
    expect(res.pages).toBe(4);
  });

  it('converts a numeric timestamp and keeps unknown roles', async () => {
    const s = await start();
    s.setTranscript('agent-1', 'conv-1', [{ id: 'a', role: 'system', content: 'hi', timestamp: 1735689600000, extra: 1 }]);
    expect(await fetchConversationTranscript(opts(s))).toEqual([
      { id: 'a', role: 'system', content: 'hi', timestamp: '2025-01-01T00:00:00.000Z' },
    ]);
  });

  it('rejects with 401 on bad credentials, without the key in the message', async () => {
    const s = await start();
    s.setTranscript('agent-1', 'conv-1', turns(3));
    const wrongKey = 'sk-wrong-key-do-not-print-999';
    const err = await catchError(fetchConversationTranscript(opts(s, { apiKey: wrongKey })));
    expect(err.kind).toBe('http');
    expect(err.status).toBe(401);
    expect(err.message).toContain('401');
    expect(err.message).not.toContain(wrongKey);

    const err2 = await catchError(fetchConversationTranscript(opts(s, { userId: 'someone-else' })));
    expect(err2.status).toBe(401);
    expect(s.requests.every((r) => r.status === 401)).toBe(true);
  });

  it('reports a 500 with its status and never the API key, even when the body echoes it', async () => {
    const s = await start();
    s.setTranscript('agent-1', 'conv-1', turns(3));
    s.failNext(500, JSON.stringify({ errorMessage: `boom while using Bearer ${API_KEY}` }));
    const err = await catchError(fetchConversationTranscript(opts(s)));
    expect(err.kind).toBe('http');
    expect(err.status).toBe(500);
    expect(err.message).toContain('HTTP 500');
    expect(err.message).toContain('/transcript');
    expect(err.message).toContain('boom');
    expect(err.message).not.toContain(API_KEY);
    expect(String(err.stack)).not.toContain(API_KEY);
  });

  it('fails on a later page too (no partial result)', async () => {
    const s = await start();
    s.setTranscript('agent-1', 'conv-1', turns(120));
    const fetchImpl: typeof fetch = async (input, init) => {
      if (s.requests.length === 1) s.failNext(503);
      return fetch(input, init);
    };
    const err = await catchError(fetchConversationTranscript(opts(s, { fetchImpl })));
    expect(err.status).toBe(503);
    expect(s.requests).toHaveLength(2);
  });

  it('404 for an unknown conversation', async () => {
    const s = await start();
    const err = await catchError(fetchConversationTranscript(opts(s, { conversationId: 'nope' })));
    expect(err.status).toBe(404);
  });

  it('rejects a non-array body and a non-JSON body', async () => {
    const s = await start();
    s.setTranscript('agent-1', 'conv-1', turns(3));
    s.failNext(200, '{"items":[]}');
    expect((await catchError(fetchConversationTranscript(opts(s)))).kind).toBe('invalid-response');
    s.failNext(200, '<html>');
    expect((await catchError(fetchConversationTranscript(opts(s)))).kind).toBe('invalid-response');
  });

  it('stops at maxPages and marks the result truncated', async () => {
    const s = await start();
    s.setTranscript('agent-1', 'conv-1', turns(120));
    const res = await fetchConversationTranscriptPages(opts(s, { pageSize: 10, maxPages: 3 }));
    expect(res.turns).toHaveLength(30);
    expect(res.truncated).toBe(true);
    expect(s.requests).toHaveLength(3);
  });

  it('stops when the cursor does not advance and drops repeated ids', async () => {
    const page = turns(2);
    let calls = 0;
    const fetchImpl: typeof fetch = async () => {
      calls++;
      return new Response(JSON.stringify(page), {
        status: 200,
        headers: { 'X-Next-Start-After': 't0001', 'X-Page-Size': '2' },
      });
    };
    const res = await fetchConversationTranscriptPages({
      apiKey: API_KEY,
      userId: USER_ID,
      agentId: 'a',
      conversationId: 'c',
      pageSize: 2,
      fetchImpl,
    });
    expect(calls).toBe(2);
    expect(res.turns).toEqual(page);
    expect(res.duplicates).toBe(2);
  });

  it('times out with a clear error', async () => {
    const fetchImpl: typeof fetch = (_input, init) =>
      new Promise((_resolve, reject) => {
        init?.signal?.addEventListener('abort', () => reject(new Error('aborted')));
      });
    const err = await catchError(
      fetchConversationTranscript({ apiKey: API_KEY, userId: USER_ID, agentId: 'a', conversationId: 'c', fetchImpl, timeoutMs: 50 }),
    );
    expect(err.kind).toBe('timeout');
    expect(err.message).toContain('timed out');
  });

  it('network errors name the path, not the key', async () => {
    const s = await start();
    const o = opts(s);
    await s.close();
    const err = await catchError(fetchConversationTranscript(o));
    expect(err.kind).toBe('network');
    expect(err.message).toContain('/transcript');
    expect(err.message).not.toContain(API_KEY);
  });

  it('refuses a key with characters that cannot go in a header, without quoting it', async () => {
    const bad = 'sk-abc\r\nX-Evil: 1';
    const err = await catchError(
      fetchConversationTranscript({ apiKey: bad, userId: USER_ID, agentId: 'a', conversationId: 'c', baseUrl: 'http://127.0.0.1:1' }),
    );
    expect(err.kind).toBe('invalid-argument');
    expect(err.message).not.toContain('sk-abc');
  });
});
