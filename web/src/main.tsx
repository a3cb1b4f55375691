/**
 * The Playline console: the app shell (header, navigation, sign-in) and the
 * pages. Everything it shows comes from the public /v1 API and /v1/events.
 */
import { render } from 'preact';
import { useEffect, useRef, useState } from 'preact/hooks';
import './style.css';
import { ApiError, getToken, messageOf, onUnauthorized, request, setToken } from './api';
import { startEvents, stopEvents, streamState } from './events';
import { route, startRouter, type Route } from './router';
import { CallPage } from './pages/CallPage';
import { CallsPage } from './pages/CallsPage';
import { CampaignPage } from './pages/CampaignPage';
import { CampaignsPage } from './pages/CampaignsPage';
import { LivePage } from './pages/LivePage';
import { SetupPage } from './pages/SetupPage';
import { TalkPage } from './pages/TalkPage';
import { phone } from './phone/softphone';

type AuthState = { kind: 'checking' } | { kind: 'signin'; message?: string } | { kind: 'ready' } | { kind: 'failed'; message: string };

/** Whether the API answers with the stored token (or without one, in local mode). */
async function probe(): Promise<'ok' | 'unauthorized'> {
  try {
    const res = await request('/v1/calls?limit=1');
    await res.body?.cancel();
    return 'ok';
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) return 'unauthorized';
    throw err;
  }
}

const NAV: Array<{ href: string; label: string; pages: Route['page'][] }> = [
  { href: '/live', label: 'Live', pages: ['live'] },
  { href: '/calls', label: 'Calls', pages: ['calls', 'call'] },
  { href: '/campaigns', label: 'Campaigns', pages: ['campaigns', 'campaign'] },
  { href: '/talk', label: 'Talk', pages: ['talk'] },
  { href: '/setup', label: 'Setup', pages: ['setup'] },
];

const STREAM_LABEL: Record<string, string> = {
  live: 'Live updates on',
  connecting: 'Connecting…',
  reconnecting: 'Reconnecting…',
  unavailable: 'Live updates unavailable: refreshing every few seconds',
  stopped: '',
};

function SignIn(props: { message: string | undefined; onSignedIn: () => void }) {
  const [token, setTokenValue] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | undefined>(props.message);
  const input = useRef<HTMLInputElement>(null);
  useEffect(() => input.current?.focus(), []);
  const submit = async (e: Event): Promise<void> => {
    e.preventDefault();
    const t = token.trim();
    if (t === '') {
      setError('Enter the API token (the API_TOKEN the server was started with).');
      return;
    }
    setBusy(true);
    setToken(t);
    try {
      if ((await probe()) === 'ok') {
        setTokenValue('');
        props.onSignedIn();
        return;
      }
      setToken(undefined);
      setError('That token was refused: check API_TOKEN on the server.');
    } catch (err) {
      setToken(undefined);
      setError(messageOf(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <main id="main" class="signin">
      <form class="card" onSubmit={(e) => void submit(e)} aria-labelledby="signin-title">
        <h1 id="signin-title">Sign in to Playline</h1>
        <p class="muted">This server needs its API token (API_TOKEN). It is kept in this tab only, until you close it.</p>
        <label for="token">API token</label>
        <input
          id="token"
          ref={input}
          type="password"
          autocomplete="off"
          spellcheck={false}
          value={token}
          onInput={(e) => setTokenValue(e.currentTarget.value)}
          aria-describedby={error !== undefined ? 'signin-error' : undefined}
          aria-invalid={error !== undefined}
        />
        {error !== undefined && (
          <p id="signin-error" class="error" role="alert">
            {error}
          </p>
        )}
        <button type="submit" class="primary" disabled={busy}>
          {busy ? 'Signing in…' : 'Sign in'}
        </button>
      </form>
    </main>
  );
}

function Page(props: { route: Route }) {
  const r = props.route;
  switch (r.page) {
    case 'live':
      return <LivePage />;
    case 'calls':
      return <CallsPage />;
    case 'call':
      return <CallPage id={r.id ?? ''} />;
    case 'campaigns':
      return <CampaignsPage />;
    case 'campaign':
      return <CampaignPage id={r.id ?? ''} />;
    case 'setup':
      return <SetupPage />;
    case 'talk':
      return <TalkPage />;
    default:
      return (
        <section>
          <h1>Not found</h1>
          <p>
            There is no such page. Go to <a href="/live">Live calls</a>.
          </p>
        </section>
      );
  }
}

function App() {
  const [auth, setAuth] = useState<AuthState>({ kind: 'checking' });
  const r = route.use();
  const stream = streamState.use();
  const inCall = phone.state.use();

  const check = (): void => {
    setAuth({ kind: 'checking' });
    probe().then(
      (result) => setAuth(result === 'ok' ? { kind: 'ready' } : { kind: 'signin' }),
      (err: unknown) => setAuth({ kind: 'failed', message: messageOf(err) }),
    );
  };
  useEffect(check, []);
  useEffect(
    () =>
      onUnauthorized(() => {
        const hadToken = getToken() !== undefined;
        setToken(undefined);
        stopEvents();
        setAuth({ kind: 'signin', ...(hadToken ? { message: 'The server refused the token: sign in again.' } : {}) });
      }),
    [],
  );
  useEffect(() => {
    if (auth.kind === 'ready') startEvents();
  }, [auth.kind]);
  useEffect(() => {
    const names: Record<Route['page'], string> = {
      live: 'Live',
      calls: 'Calls',
      call: 'Call',
      campaigns: 'Campaigns',
      campaign: 'Campaign',
      setup: 'Setup',
      talk: 'Talk',
      notfound: 'Not found',
    };
    document.title = `${names[r.page]} · Playline`;
  }, [r.page]);

  if (auth.kind === 'checking') {
    return (
      <main id="main" class="center">
        <p class="muted" aria-live="polite">
          Connecting to Playline…
        </p>
      </main>
    );
  }
  if (auth.kind === 'failed') {
    return (
      <main id="main" class="center">
        <div class="card">
          <h1>Cannot reach the API</h1>
          <p class="error" role="alert">
            {auth.message}
          </p>
          <button type="button" class="primary" onClick={check}>
            Try again
          </button>
        </div>
      </main>
    );
  }
  if (auth.kind === 'signin') return <SignIn message={auth.message} onSignedIn={() => setAuth({ kind: 'ready' })} />;

  const signOut = (): void => {
    setToken(undefined);
    stopEvents();
    setAuth({ kind: 'signin' });
  };
  return (
    <>
      <a class="skip" href="#main" onClick={(e) => (e.preventDefault(), document.getElementById('main')?.focus())}>
        Skip to content
      </a>
      <header class="top">
        <a class="brand" href="/live">
          Playline
        </a>
        <nav aria-label="Main">
          <ul>
            {NAV.map((n) => (
              <li key={n.href}>
                <a href={n.href} aria-current={n.pages.includes(r.page) ? 'page' : undefined}>
                  {n.label}
                  {n.href === '/talk' && inCall !== 'idle' && inCall !== 'ended' && <span class="dot" aria-label="(call in progress)" />}
                </a>
              </li>
            ))}
          </ul>
        </nav>
        <div class="top-right">
          <span class={`stream s-${stream}`} title={STREAM_LABEL[stream]} role="status" aria-label={STREAM_LABEL[stream]} />
          {getToken() !== undefined && (
            <button type="button" class="link" onClick={signOut}>
              Sign out
            </button>
          )}
        </div>
      </header>
      <main id="main" tabIndex={-1}>
        <Page route={r} />
      </main>
    </>
  );
}

startRouter();
const root = document.getElementById('app');
if (root !== null) {
  root.textContent = '';
  render(<App />, root);
}
