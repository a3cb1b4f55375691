/**
 * The console's only way to the server: the public /v1 API with the bearer
 * token from the sign-in form. The token lives in sessionStorage (gone when
 * the tab closes), is sent only in the Authorization header, and is never put
 * in a URL or written to the console log.
 */
import type * as z from 'zod/mini';
import { errorBody } from './schemas';

const TOKEN_KEY = 'playline.apiToken';

export function getToken(): string | undefined {
  try {
    return sessionStorage.getItem(TOKEN_KEY) ?? undefined;
  } catch {
    return undefined;
  }
}

export function setToken(token: string | undefined): void {
  try {
    if (token === undefined) sessionStorage.removeItem(TOKEN_KEY);
    else sessionStorage.setItem(TOKEN_KEY, token);
  } catch {
    // Storage disabled: the token lasts as long as the page.
  }
  memoryToken = token;
}

let memoryToken: string | undefined;

function currentToken(): string | undefined {
  return getToken() ?? memoryToken;
}

/** An API error, with the server's code and message (which says what to change). */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly details?: unknown,
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

type Listener = () => void;
const unauthorizedListeners = new Set<Listener>();
/** Called when the server answers 401: the sign-in form is shown again. */
export function onUnauthorized(l: Listener): () => void {
  unauthorizedListeners.add(l);
  return () => unauthorizedListeners.delete(l);
}

export function authHeaders(): Record<string, string> {
  const t = currentToken();
  return t === undefined ? {} : { authorization: `Bearer ${t}` };
}

/** Tells the app the server refused the credentials (the sign-in form comes back). */
export function signalUnauthorized(): void {
  for (const l of unauthorizedListeners) l();
}

async function errorOf(res: Response): Promise<ApiError> {
  let body: unknown;
  try {
    body = await res.json();
  } catch {
    body = undefined;
  }
  const parsed = errorBody.safeParse(body);
  if (parsed.success) return new ApiError(res.status, parsed.data.error.code, parsed.data.error.message, parsed.data.error.details);
  return new ApiError(res.status, 'http_error', `${res.status} ${res.statusText || 'error'} from ${new URL(res.url, location.href).pathname}`);
}

export interface RequestOptions {
  method?: string;
  body?: unknown;
  form?: FormData;
  signal?: AbortSignal;
}

/** A request that answers a Response (non-2xx becomes an ApiError; 401 also signs out). */
export async function request(path: string, opts: RequestOptions = {}): Promise<Response> {
  const headers: Record<string, string> = { ...authHeaders() };
  let body: BodyInit | undefined;
  if (opts.form !== undefined) body = opts.form;
  else if (opts.body !== undefined) {
    headers['content-type'] = 'application/json';
    body = JSON.stringify(opts.body);
  }
  const res = await fetch(path, {
    method: opts.method ?? (body === undefined ? 'GET' : 'POST'),
    headers,
    ...(body !== undefined ? { body } : {}),
    ...(opts.signal !== undefined ? { signal: opts.signal } : {}),
    credentials: 'omit',
    cache: 'no-store',
  });
  if (!res.ok) {
    const err = await errorOf(res);
    if (res.status === 401) signalUnauthorized();
    throw err;
  }
  return res;
}

/** A JSON request whose answer is checked against `schema`. */
export async function api<T>(schema: z.ZodMiniType<T>, path: string, opts: RequestOptions = {}): Promise<T> {
  const res = await request(path, opts);
  const json: unknown = await res.json();
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    throw new ApiError(res.status, 'unexpected_reply', `the server's reply to ${path.split('?')[0]} is not what this console expects (is the console older or newer than the server?)`);
  }
  return parsed.data;
}

/** A request whose body is not needed (204, or an answer the caller refetches). */
export async function send(path: string, opts: RequestOptions = {}): Promise<void> {
  const res = await request(path, { method: 'POST', ...opts });
  await res.body?.cancel();
}

/** Query string from the defined, non-empty values. */
export function qs(params: Record<string, string | number | undefined | null>): string {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') p.set(k, String(v));
  const s = p.toString();
  return s === '' ? '' : `?${s}`;
}

/** Downloads a file that needs the bearer token: fetched, then saved from a blob URL. */
export async function download(path: string, filename: string): Promise<void> {
  const res = await request(path);
  const blob = await res.blob();
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export function messageOf(err: unknown): string {
  if (err instanceof ApiError) return err.message;
  if (err instanceof Error) return err.name === 'TypeError' ? `the server cannot be reached (${err.message})` : err.message;
  return String(err);
}
