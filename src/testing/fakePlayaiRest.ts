/**
 * A fake of the PlayAI REST API (transcripts, agents, agent stats) on 127.0.0.1:0,
 * for tests and local runs.
 *
 * `GET /api/v1/agents/{agentId}` and `GET /api/v1/agent-stats/{agentId}` serve what
 * {@link FakePlayAiRest.setAgent} and {@link FakePlayAiRest.setStats} stored (404 otherwise).
 *
 * `GET /api/v1/agents/{agentId}/conversations/{conversationId}/transcript?pageSize=&startAfter=`
 * - 401 unless `Authorization: Bearer <apiKey>` and `X-USER-ID: <userId>`;
 * - 404 for an unknown conversation, 400 for an unknown `startAfter` or a bad `pageSize`;
 * - pages of at most `min(pageSize, maxPageSize)` items (default 50) with
 *   `X-Page-Size`, `X-Start-After`, `X-Next-Start-After` (last id of the page;
 *   left out on the last page when `omitNextOnLastPage`) and `X-Total-Count`.
 *
 * Items are served exactly as stored, so tests can store invalid ones. An
 * item's cursor id is its `id` when that is a string, otherwise `#<index>`.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';

export interface FakePlayAiRestOptions {
  apiKey?: string;
  userId?: string;
  /** Largest page served, whatever is asked (default 100). */
  maxPageSize?: number;
  /** Leave `X-Next-Start-After` out on the last page (default false: always the page's last id). */
  omitNextOnLastPage?: boolean;
}

export interface FakeRestRequest {
  method: string;
  path: string;
  query: Record<string, string>;
  authorization: string | undefined;
  userId: string | undefined;
  status: number;
}

interface InjectedFailure {
  status: number;
  body: string;
}

const AGENT_PATH = /^\/api\/v1\/agents\/([^/]+)$/;
const STATS_PATH = /^\/api\/v1\/agent-stats\/([^/]+)$/;
const TRANSCRIPT_PATH = /^\/api\/v1\/agents\/([^/]+)\/conversations\/([^/]+)\/transcript$/;

export class FakePlayAiRest {
  readonly apiKey: string;
  readonly userId: string;
  readonly requests: FakeRestRequest[] = [];
  readonly #transcripts = new Map<string, unknown[]>();
  readonly #failures: InjectedFailure[] = [];
  readonly #agents = new Map<string, unknown>();
  readonly #stats = new Map<string, unknown>();
  readonly #opts: Required<Pick<FakePlayAiRestOptions, 'maxPageSize' | 'omitNextOnLastPage'>>;
  #closed = false;

  private constructor(
    private readonly server: Server,
    opts: FakePlayAiRestOptions,
  ) {
    this.apiKey = opts.apiKey ?? 'fake-playai-api-key';
    this.userId = opts.userId ?? 'fake-playai-user';
    this.#opts = { maxPageSize: opts.maxPageSize ?? 100, omitNextOnLastPage: opts.omitNextOnLastPage ?? false };
    server.on('request', (req, res) => this.#handle(req, res));
  }

  /** Starts listening on 127.0.0.1 (random port). */
  static async start(opts: FakePlayAiRestOptions = {}): Promise<FakePlayAiRest> {
    const server = createServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    return new FakePlayAiRest(server, opts);
  }

  /** `http://127.0.0.1:<port>`, to pass as `baseUrl`. */
  get url(): string {
    const addr = this.server.address();
    if (addr === null || typeof addr === 'string') throw new Error('fake PlayAI REST: not listening');
    return `http://127.0.0.1:${addr.port}`;
  }

  /** Stores (replaces) a conversation's transcript items, served as they are. */
  setTranscript(agentId: string, conversationId: string, items: unknown[]): void {
    this.#transcripts.set(key(agentId, conversationId), [...items]);
  }

  /** Stores (replaces) an agent, served as it is by `GET /api/v1/agents/{id}`. */
  setAgent(agentId: string, agent: unknown): void {
    this.#agents.set(agentId, agent);
  }

  /** Stores (replaces) an agent's stats, served as they are by `GET /api/v1/agent-stats/{id}`. */
  setStats(agentId: string, stats: unknown): void {
    this.#stats.set(agentId, stats);
  }

  /** The next `count` authenticated requests answer `status` with `body` instead. */
  failNext(status: number, body = '{"errorMessage":"injected failure"}', count = 1): void {
    for (let i = 0; i < count; i++) this.#failures.push({ status, body });
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.server.closeAllConnections();
    await new Promise<void>((resolve) => this.server.close(() => resolve()));
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    const url = new URL(req.url ?? '/', 'http://fake.invalid');
    const record: FakeRestRequest = {
      method: req.method ?? '',
      path: url.pathname,
      query: Object.fromEntries(url.searchParams),
      authorization: req.headers.authorization,
      userId: header(req, 'x-user-id'),
      status: 0,
    };
    this.requests.push(record);
    const send = (status: number, body: unknown, headers: Record<string, string> = {}): void => {
      record.status = status;
      const text = typeof body === 'string' ? body : JSON.stringify(body);
      res.writeHead(status, { 'content-type': 'application/json', ...headers }).end(text);
    };

    if (record.authorization !== `Bearer ${this.apiKey}` || record.userId !== this.userId) {
      send(401, { errorMessage: 'Unauthorized' });
      return;
    }
    const failure = this.#failures.shift();
    if (failure) {
      send(failure.status, failure.body);
      return;
    }
    const single = req.method === 'GET' ? (AGENT_PATH.exec(url.pathname) ?? STATS_PATH.exec(url.pathname)) : null;
    if (single !== null) {
      let id: string;
      try {
        id = decodeURIComponent(single[1] ?? '');
      } catch {
        send(400, { errorMessage: 'Bad path' });
        return;
      }
      const found = (url.pathname.startsWith('/api/v1/agents/') ? this.#agents : this.#stats).get(id);
      if (found === undefined) send(404, { errorMessage: 'Agent not found' });
      else send(200, found);
      return;
    }
    const m = TRANSCRIPT_PATH.exec(url.pathname);
    if (!m || req.method !== 'GET') {
      send(404, { errorMessage: 'Not found' });
      return;
    }
    let agentId: string;
    let conversationId: string;
    try {
      agentId = decodeURIComponent(m[1] ?? '');
      conversationId = decodeURIComponent(m[2] ?? '');
    } catch {
      send(400, { errorMessage: 'Bad path' });
      return;
    }
    const items = this.#transcripts.get(key(agentId, conversationId));
    if (!items) {
      send(404, { errorMessage: 'Conversation not found' });
      return;
    }

    const rawSize = url.searchParams.get('pageSize');
    let pageSize = 50;
    if (rawSize !== null) {
      if (!/^\d+$/.test(rawSize) || Number(rawSize) < 1) {
        send(400, { errorMessage: 'pageSize must be a positive integer' });
        return;
      }
      pageSize = Number(rawSize);
    }
    pageSize = Math.min(pageSize, this.#opts.maxPageSize);

    const startAfter = url.searchParams.get('startAfter') ?? '';
    let from = 0;
    if (startAfter !== '') {
      const at = items.findIndex((item, i) => cursorId(item, i) === startAfter);
      if (at < 0) {
        send(400, { errorMessage: 'Unknown startAfter' });
        return;
      }
      from = at + 1;
    }
    const page = items.slice(from, from + pageSize);
    const isLast = from + page.length >= items.length;
    const headers: Record<string, string> = {
      'X-Page-Size': String(pageSize),
      'X-Start-After': startAfter,
      'X-Total-Count': String(items.length),
    };
    if (page.length > 0 && !(isLast && this.#opts.omitNextOnLastPage)) {
      headers['X-Next-Start-After'] = cursorId(page[page.length - 1], from + page.length - 1);
    }
    send(200, page, headers);
  }
}

function key(agentId: string, conversationId: string): string {
  return `${agentId}\u0000${conversationId}`;
}

function cursorId(item: unknown, index: number): string {
  if (item !== null && typeof item === 'object' && typeof (item as { id?: unknown }).id === 'string') {
    return (item as { id: string }).id;
  }
  return `#${index}`;
}

function header(req: IncomingMessage, name: string): string | undefined {
  const v = req.headers[name];
  return Array.isArray(v) ? v[0] : v;
}
