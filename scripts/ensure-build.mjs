// Builds dist/ from src/ when it is missing or older than a source file, and the
// web console (dist/console, from web/) when it is missing or older than web/, so
// `npm start` works on a fresh clone without a separate build step. A stamp
// written after each successful build records when dist/ was last made
// (incremental tsc leaves unchanged outputs untouched, so their mtimes can't).
import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';

const root = new URL('..', import.meta.url).pathname;
const stamp = join(root, 'dist', '.build-stamp');

function newestMtime(dir) {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, entry.name);
    const t = entry.isDirectory() ? newestMtime(p) : statSync(p).mtimeMs;
    if (t > newest) newest = t;
  }
  return newest;
}

const built = existsSync(stamp) && existsSync(join(root, 'dist', 'main.js')) ? statSync(stamp).mtimeMs : 0;
const sources = Math.max(
  newestMtime(join(root, 'src')),
  statSync(join(root, 'tsconfig.json')).mtimeMs,
  statSync(join(root, 'tsconfig.build.json')).mtimeMs,
);
if (built < sources) buildServer();
await ensureConsole();

/** The server: tsc into dist/. */
function buildServer() {
  let tsc;
  try {
    tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  } catch {
    if (existsSync(join(root, 'dist', 'main.js'))) {
      console.error('playline: TypeScript is not installed (production install); running the existing dist/.');
      return;
    }
    console.error('playline: dist/ is missing and TypeScript is not installed. Run `npm ci` first.');
    process.exit(1);
  }
  console.error('playline: building dist/ from src/ ...');
  execFileSync(process.execPath, [tsc, '-p', join(root, 'tsconfig.build.json')], { stdio: 'inherit' });
  writeFileSync(stamp, `${new Date().toISOString()}\n`);
}

/** The web console: built when missing or older than web/ (needs esbuild, a dev dependency). */
async function ensureConsole() {
  const consoleStamp = join(root, 'dist', 'console', '.build-stamp');
  if (!existsSync(join(root, 'web'))) return;
  const { buildConsole, newestWebSource } = await import('./build-console.mjs');
  const consoleBuilt = existsSync(consoleStamp) && existsSync(join(root, 'dist', 'console', 'index.html')) ? statSync(consoleStamp).mtimeMs : 0;
  if (consoleBuilt >= newestWebSource()) return;
  try {
    createRequire(import.meta.url).resolve('esbuild');
  } catch {
    console.error(
      consoleBuilt > 0
        ? 'playline: esbuild is not installed (production install); serving the existing dist/console.'
        : 'playline: the web console is not built and esbuild is not installed: run `npm ci` then `npm run build` (the API works without it).',
    );
    return;
  }
  console.error('playline: building the web console (dist/console) from web/ ...');
  await buildConsole();
}
