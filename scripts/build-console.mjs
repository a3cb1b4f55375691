// Builds the web console (web/) into dist/console/: index.html, the app's JS and CSS and the two
// AudioWorklet modules of the softphone under assets/ with content hashes in their names, and a
// .build-stamp. Everything the page loads is in that directory: no CDN, no web fonts.
//
//   node scripts/build-console.mjs            (also run by `npm run build` and scripts/ensure-build.mjs)
//   node scripts/build-console.mjs --out DIR  (tests build into a temporary directory)
//
// Prints the gzipped size of the shipped JS, and fails when it is over the budget.
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { basename, join, relative, resolve } from 'node:path';
import { gzipSync } from 'node:zlib';

const root = resolve(new URL('..', import.meta.url).pathname);
const web = join(root, 'web');

/** Shipped JavaScript budget, gzipped. */
export const JS_BUDGET_BYTES = 150 * 1024;

/** The newest modification time under web/ (for scripts/ensure-build.mjs). */
export function newestWebSource() {
  const walk = (dir) => {
    let newest = 0;
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      const t = e.isDirectory() ? walk(p) : statSync(p).mtimeMs;
      if (t > newest) newest = t;
    }
    return newest;
  };
  return Math.max(walk(web), statSync(new URL(import.meta.url)).mtimeMs);
}

/** Output file (relative to outdir) of each entry point, from an esbuild metafile. */
function outputsByEntry(metafile, outdir) {
  const out = {};
  for (const [file, info] of Object.entries(metafile.outputs)) {
    if (info.entryPoint === undefined) continue;
    const name = basename(info.entryPoint).replace(/\.(tsx?|css)$/, '');
    const rel = relative(outdir, resolve(root, file));
    if (file.endsWith('.js')) out[name] = rel;
    if (info.cssBundle !== undefined) out[`${name}.css`] = relative(outdir, resolve(root, info.cssBundle));
  }
  return out;
}

/**
 * Builds the console. Returns the output directory and the size of every shipped file.
 * @param {{ outDir?: string, minify?: boolean, log?: (line: string) => void }} [opts]
 */
export async function buildConsole(opts = {}) {
  const outDir = resolve(opts.outDir ?? join(root, 'dist', 'console'));
  const minify = opts.minify ?? true;
  const log = opts.log ?? ((line) => console.error(line));
  let esbuild;
  try {
    esbuild = await import('esbuild');
  } catch {
    throw new Error('esbuild is not installed: run `npm ci` (the console is built with the dev dependencies)');
  }
  const assets = join(outDir, 'assets');
  rmSync(outDir, { recursive: true, force: true });
  mkdirSync(assets, { recursive: true });
  const common = {
    bundle: true,
    format: 'esm',
    target: ['es2022', 'chrome111', 'firefox115', 'safari16.4'],
    minify,
    legalComments: 'none',
    entryNames: '[name]-[hash]',
    outdir: assets,
    metafile: true,
    logLevel: 'warning',
    absWorkingDir: root,
  };
  // The worklets first: the app loads them by their hashed names.
  const worklets = await esbuild.build({
    ...common,
    entryPoints: [join(web, 'src', 'phone', 'capture-worklet.ts'), join(web, 'src', 'phone', 'playback-worklet.ts')],
  });
  const w = outputsByEntry(worklets.metafile, assets);
  const app = await esbuild.build({
    ...common,
    entryPoints: [join(web, 'src', 'main.tsx')],
    jsx: 'automatic',
    jsxImportSource: 'preact',
    define: {
      __CAPTURE_WORKLET__: JSON.stringify(`/assets/${w['capture-worklet']}`),
      __PLAYBACK_WORKLET__: JSON.stringify(`/assets/${w['playback-worklet']}`),
    },
  });
  const a = outputsByEntry(app.metafile, assets);
  if (a.main === undefined || a['main.css'] === undefined) throw new Error('console build: the app bundle or its CSS is missing');
  for (const f of readdirSync(join(web, 'public'))) copyFileSync(join(web, 'public', f), join(assets, f));
  const html = readFileSync(join(web, 'index.html'), 'utf8')
    .replace('%APP_JS%', `/assets/${a.main}`)
    .replace('%APP_CSS%', `/assets/${a['main.css']}`);
  writeFileSync(join(outDir, 'index.html'), html);

  const files = readdirSync(assets).map((f) => {
    const body = readFileSync(join(assets, f));
    return { file: `assets/${f}`, bytes: body.length, gzipBytes: gzipSync(body, { level: 9 }).length };
  });
  const jsGzipBytes = files.filter((f) => f.file.endsWith('.js')).reduce((n, f) => n + f.gzipBytes, 0);
  const kb = (n) => `${(n / 1024).toFixed(1)} KB`;
  const shown = relative(process.cwd(), outDir);
  log(`console: built ${shown === '' || shown.startsWith('..') ? outDir : shown}: JS ${kb(jsGzipBytes)} gzipped (budget ${kb(JS_BUDGET_BYTES)})`);
  for (const f of files) log(`  ${f.file.padEnd(44)} ${kb(f.bytes).padStart(9)}  ${kb(f.gzipBytes).padStart(9)} gz`);
  if (jsGzipBytes > JS_BUDGET_BYTES) throw new Error(`console build: the shipped JS is ${kb(jsGzipBytes)} gzipped, over the ${kb(JS_BUDGET_BYTES)} budget`);
  writeFileSync(join(outDir, '.build-stamp'), `${new Date().toISOString()}\n`);
  return { outDir, files, jsGzipBytes };
}

const isMain = process.argv[1] !== undefined && resolve(process.argv[1]) === resolve(new URL(import.meta.url).pathname);
if (isMain) {
  const i = process.argv.indexOf('--out');
  const outDir = i > 0 ? process.argv[i + 1] : undefined;
  buildConsole(outDir !== undefined ? { outDir } : {}).catch((err) => {
    console.error(err instanceof Error ? err.message : err);
    process.exit(1);
  });
}
