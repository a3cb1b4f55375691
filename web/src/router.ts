/**
 * History routing: `/live`, `/calls`, `/calls/:id`, `/campaigns`, `/campaigns/:id`, `/setup`, `/talk`.
 * The server answers index.html for each of these paths (src/http/console.ts), so a reload or a
 * shared link opens the same page. Same-origin link clicks are handled here, without a reload.
 */
import { signal } from './signal';

export interface Route {
  page: 'live' | 'calls' | 'call' | 'campaigns' | 'campaign' | 'setup' | 'talk' | 'notfound';
  id?: string;
}

export function parseRoute(pathname: string): Route {
  const parts = pathname.split('/').filter((p) => p !== '').map((p) => decodeURIComponent(p));
  const [first, second] = parts;
  if (first === undefined || first === 'live') return { page: 'live' };
  if (first === 'calls') return second === undefined ? { page: 'calls' } : { page: 'call', id: second };
  if (first === 'campaigns') return second === undefined ? { page: 'campaigns' } : { page: 'campaign', id: second };
  if (first === 'setup') return { page: 'setup' };
  if (first === 'talk') return { page: 'talk' };
  return { page: 'notfound' };
}

export const route = signal<Route>(parseRoute(location.pathname));

export function navigate(path: string, replace = false): void {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  route.value = parseRoute(location.pathname);
  window.scrollTo(0, 0);
}

export function startRouter(): void {
  window.addEventListener('popstate', () => {
    route.value = parseRoute(location.pathname);
  });
  document.addEventListener('click', (e) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    const target = e.target;
    if (!(target instanceof Element)) return;
    const a = target.closest('a');
    if (a === null || a.target !== '' || a.hasAttribute('download')) return;
    const url = new URL(a.href, location.href);
    if (url.origin !== location.origin || url.pathname.startsWith('/docs') || url.pathname.startsWith('/v1')) return;
    e.preventDefault();
    navigate(url.pathname + url.search);
  });
}
