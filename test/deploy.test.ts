/**
 * Deployment files, checked as far as this machine allows (there is no Docker engine here):
 * the Dockerfile (parsed), deploy/compose.yaml (parsed with `yaml`), deploy/Caddyfile (adapted by
 * a real `caddy` binary), .dockerignore, and the settings documentation (.env.example and the
 * README table) against the variables src/config.ts actually reads.
 *
 * The image's start command is cross-checked with `npm start`; test/processCmd.test.ts runs that
 * same command as a real process.
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, posix, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseAllDocuments, parseDocument } from 'yaml';
import { loadConfig } from '../src/config.js';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DEPLOY = join(ROOT, 'deploy');
const read = (p: string): string => readFileSync(join(ROOT, p), 'utf8');

// ---------------------------------------------------------------------------
// Dockerfile
// ---------------------------------------------------------------------------

interface Instruction {
  /** Upper-cased keyword, e.g. `COPY`. */
  op: string;
  /** Everything after the keyword, continuation lines joined. */
  args: string;
  line: number;
}

interface Stage {
  image: string;
  name?: string;
  instructions: Instruction[];
}

/** A small Dockerfile reader: comments, blank lines, `\` continuations, stages split at FROM. */
function parseDockerfile(text: string): Stage[] {
  const instructions: Instruction[] = [];
  const lines = text.split(/\r?\n/);
  let buf = '';
  let startLine = 0;
  for (let i = 0; i < lines.length; i++) {
    const raw = lines[i] ?? '';
    const trimmed = raw.trim();
    if (buf === '' && (trimmed === '' || trimmed.startsWith('#'))) continue;
    if (buf !== '' && trimmed.startsWith('#')) continue; // comment lines inside a continuation are dropped
    if (buf === '') startLine = i + 1;
    if (trimmed.endsWith('\\')) {
      buf += trimmed.slice(0, -1) + ' ';
      continue;
    }
    buf += trimmed;
    const m = /^(\S+)\s*(.*)$/s.exec(buf);
    if (m?.[1] !== undefined) instructions.push({ op: m[1].toUpperCase(), args: (m[2] ?? '').trim(), line: startLine });
    buf = '';
  }
  if (buf !== '') throw new Error('Dockerfile ends inside a line continuation');

  const stages: Stage[] = [];
  for (const ins of instructions) {
    if (ins.op === 'FROM') {
      const words = ins.args.split(/\s+/).filter((w) => !w.startsWith('--'));
      const image = words[0] ?? '';
      const as = words.findIndex((w) => w.toUpperCase() === 'AS');
      stages.push({ image, ...(as >= 0 && words[as + 1] !== undefined ? { name: words[as + 1] } : {}), instructions: [] });
      continue;
    }
    const stage = stages[stages.length - 1];
    if (stage === undefined) {
      if (ins.op === 'ARG') continue; // ARG before the first FROM is allowed
      throw new Error(`Dockerfile line ${ins.line}: ${ins.op} before the first FROM`);
    }
    stage.instructions.push(ins);
  }
  return stages;
}

/** `["a", "b"]` (exec form) → the array; anything else (shell form) → undefined. */
function execForm(args: string): string[] | undefined {
  if (!args.startsWith('[')) return undefined;
  try {
    const v: unknown = JSON.parse(args);
    return Array.isArray(v) && v.every((x) => typeof x === 'string') ? (v as string[]) : undefined;
  } catch {
    return undefined;
  }
}

interface CopyOp {
  from?: string;
  sources: string[];
  /** Absolute path of what each source becomes in the image. */
  targets: string[];
}

/** COPY/ADD in one stage, with destinations resolved against the WORKDIR in effect. */
function copiesOf(stage: Stage): CopyOp[] {
  const out: CopyOp[] = [];
  let workdir = '/';
  for (const ins of stage.instructions) {
    if (ins.op === 'WORKDIR') workdir = posix.resolve(workdir, ins.args.trim());
    if (ins.op !== 'COPY' && ins.op !== 'ADD') continue;
    let words = execForm(ins.args) ?? ins.args.split(/\s+/);
    let from: string | undefined;
    words = words.filter((w) => {
      if (!w.startsWith('--')) return true;
      const m = /^--from=(.+)$/.exec(w);
      if (m?.[1] !== undefined) from = m[1];
      return false;
    });
    const dest = words[words.length - 1] ?? '';
    const sources = words.slice(0, -1);
    const destAbs = posix.resolve(workdir, dest);
    const intoDir = dest.endsWith('/') || dest === '.' || sources.length > 1;
    const targets = sources.map((s) => (intoDir ? posix.join(destAbs, posix.basename(s.replace(/\/+$/, ''))) : destAbs));
    out.push({ ...(from !== undefined ? { from } : {}), sources, targets });
  }
  return out;
}

function workdirOf(stage: Stage): string {
  let w = '/';
  for (const ins of stage.instructions) if (ins.op === 'WORKDIR') w = posix.resolve(w, ins.args.trim());
  return w;
}

const last = <T>(xs: T[]): T | undefined => xs[xs.length - 1];

/** The start script as argv, without a leading `exec` (which only replaces npm's shell). */
function startArgv(): string[] {
  const pkg = JSON.parse(read('package.json')) as { scripts?: Record<string, string> };
  const start = pkg.scripts?.start;
  expect(start, 'package.json has a start script').toBeTypeOf('string');
  expect(start, 'the start script is one plain command (no &&, pipes or quoting)').toMatch(/^[\w ./=-]+$/);
  return start!.trim().split(/\s+/).filter((w, i) => !(i === 0 && w === 'exec'));
}

/** Top-level folders that src/ reads at run time through `new URL('../…/<dir>/…', import.meta.url)`. */
function runtimeAssetDirs(): string[] {
  const dirs = new Set<string>();
  const walk = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walk(p);
      else if (e.name.endsWith('.ts')) {
        const text = readFileSync(p, 'utf8');
        for (const m of text.matchAll(/new URL\(\s*['"`]((?:\.\.\/)+)([\w.-]+)\//g)) {
          const target = resolve(dir, m[1] ?? '', m[2] ?? '');
          const rel = relative(ROOT, target);
          if (!rel.startsWith('..') && !rel.includes('/') && !rel.includes('\\') && rel !== 'src') dirs.add(rel);
        }
      }
    }
  };
  walk(join(ROOT, 'src'));
  return [...dirs].sort();
}

describe('Dockerfile', () => {
  let stages: Stage[] = [];
  let final: Stage;
  const finalOps = (op: string) => final.instructions.filter((i) => i.op === op);
  beforeAll(() => {
    stages = parseDockerfile(read('Dockerfile'));
    final = last(stages)!;
  });

  it('is multi-stage, and every stage uses one Node slim image pinned to an exact release of an even-numbered (LTS) line', () => {
    expect(stages.length).toBeGreaterThanOrEqual(2);
    const m = /^node:(\d+)\.(\d+)\.(\d+)-([a-z0-9]+-)*slim(@sha256:[0-9a-f]{64})?$/.exec(final.image);
    expect(m, `final stage FROM ${final.image} is not node:<major>.<minor>.<patch>-…-slim (a floating tag changes the runtime on every rebuild)`).not.toBeNull();
    const major = Number(m![1]);
    expect(major % 2, `node:${major} is not an LTS line (LTS majors are even)`).toBe(0);
    const engines = (JSON.parse(read('package.json')) as { engines?: { node?: string } }).engines?.node ?? '';
    const minMajor = Number(/(\d+)/.exec(engines)?.[1] ?? '0');
    expect(major).toBeGreaterThanOrEqual(minMajor);
    for (const s of stages) {
      if (!s.image.startsWith('node:')) continue;
      expect(s.image, `stage ${s.name ?? s.image} builds with another Node image than the one it runs with`).toBe(final.image);
    }
  });

  it('installs production dependencies only for the runtime image', () => {
    const copies = copiesOf(final);
    const modules = copies.find((c) => c.targets.some((t) => posix.basename(t) === 'node_modules'));
    expect(modules, 'the final stage copies node_modules').toBeDefined();
    // node_modules comes from a stage that ran `npm ci --omit=dev` (and nothing that adds dev deps after it).
    const from = stages.find((s) => s.name === modules!.from);
    expect(from, `COPY --from=${modules!.from ?? '(build context)'} names a stage`).toBeDefined();
    const runs = from!.instructions.filter((i) => i.op === 'RUN').map((i) => i.args);
    expect(runs.some((r) => /\bnpm ci\b[^&;|]*--omit=dev/.test(r)), `stage ${from!.name} runs npm ci --omit=dev`).toBe(true);
    expect(runs.some((r) => /\bnpm (i|install|ci)\b(?![^&;|]*--omit=dev)/.test(r)), `stage ${from!.name} also installs dev dependencies`).toBe(false);
    // The final stage installs nothing with dev dependencies itself.
    for (const r of finalOps('RUN')) expect(r.args).not.toMatch(/\bnpm (i|install|ci)\b(?![^&;|]*--omit=dev)/);
    expect(finalOps('ENV').map((e) => e.args).join(' ')).toMatch(/\bNODE_ENV=production\b/);
  });

  it('copies everything the server needs at run time into the final stage', () => {
    const workdir = workdirOf(final);
    const targets = new Set(copiesOf(final).flatMap((c) => c.targets));
    const needed = ['dist', 'node_modules', 'package.json', ...runtimeAssetDirs()];
    expect(needed, 'src/local/localAgent.ts reads assets/greeting.ulaw').toContain('assets');
    for (const n of needed) expect([...targets], `${posix.join(workdir, n)} is not copied into the final stage`).toContain(posix.join(workdir, n));
    // dist comes from the stage that builds it.
    const dist = copiesOf(final).find((c) => c.targets.includes(posix.join(workdir, 'dist')));
    const builder = stages.find((s) => s.name === dist?.from);
    expect(builder?.instructions.some((i) => i.op === 'RUN' && /\bnpm run build\b/.test(i.args)), 'dist is copied from the stage that runs npm run build').toBe(true);
    // Sources copied from the build context exist in the repository.
    for (const s of stages) {
      for (const c of copiesOf(s)) {
        if (c.from !== undefined) continue;
        for (const src of c.sources) expect(existsSync(join(ROOT, src)), `COPY ${src}: not in the repository`).toBe(true);
      }
    }
  });

  it('runs as a non-root user, with a health check and SIGTERM as the stop signal', () => {
    const user = last(finalOps('USER'))?.args.split(':')[0];
    expect(user, 'the final stage sets USER').toBeDefined();
    expect(['root', '0']).not.toContain(user);
    const userAt = final.instructions.findIndex((i) => i.op === 'USER');
    const cmdAt = final.instructions.findIndex((i) => i.op === 'CMD');
    expect(userAt).toBeLessThan(cmdAt);

    const hc = last(finalOps('HEALTHCHECK'));
    expect(hc, 'HEALTHCHECK present').toBeDefined();
    expect(hc!.args).not.toMatch(/^NONE\b/i);
    expect(hc!.args).toMatch(/\bCMD\b/);
    expect(hc!.args, 'the container health check asks /healthz (liveness), not /readyz').toContain('/healthz');

    expect(last(finalOps('STOPSIGNAL'))?.args).toBe('SIGTERM');
  });

  it('starts with an exec-form CMD equal to `npm start` (the command test/processCmd.test.ts runs)', () => {
    const cmd = last(finalOps('CMD'));
    expect(cmd, 'CMD present').toBeDefined();
    const argv = execForm(cmd!.args);
    expect(argv, `CMD ${cmd!.args} is not exec form (a JSON array): a shell would swallow SIGTERM`).toBeDefined();
    expect(argv).toEqual(startArgv());
    expect(argv?.[0]).toBe('node');
    expect(argv?.at(-1)).toBe('dist/main.js');
    // No ENTRYPOINT of our own (the node image's docker-entrypoint.sh execs the CMD).
    expect(finalOps('ENTRYPOINT')).toEqual([]);
  });
});

// ---------------------------------------------------------------------------
// .dockerignore
// ---------------------------------------------------------------------------

/** Docker's ignore rules, enough for plain patterns, `*`, `**`, `?` and `!` exceptions. */
function dockerIgnored(patterns: string[], path: string): boolean {
  let ignored = false;
  for (const raw of patterns) {
    let p = raw.trim();
    if (p === '' || p.startsWith('#')) continue;
    const negate = p.startsWith('!');
    if (negate) p = p.slice(1).trim();
    p = posix.normalize(p).replace(/^\/+/, '').replace(/\/+$/, '');
    let re = '';
    for (let i = 0; i < p.length; i++) {
      const c = p[i]!;
      if (c === '*' && p[i + 1] === '*') {
        // `**/` matches any number of leading folders (including none); `**` anything.
        if (p[i + 2] === '/') {
          re += '(?:.*/)?';
          i += 2;
        } else {
          re += '.*';
          i += 1;
        }
      } else if (c === '*') re += '[^/]*';
      else if (c === '?') re += '[^/]';
      else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
    }
    // A pattern that matches a folder excludes everything inside it.
    if (new RegExp(`^${re}(?:/.*)?$`).test(path)) ignored = !negate;
  }
  return ignored;
}

describe('.dockerignore', () => {
  const patterns = read('.dockerignore').split(/\r?\n/);

  it('keeps dependencies, builds and secrets out of the build context, wherever the .env is', () => {
    for (const p of ['node_modules', 'node_modules/zod/package.json', '.env', 'deploy/.env', 'dist', 'data', '.git']) {
      expect(dockerIgnored(patterns, p), `${p} is sent to the Docker build context`).toBe(true);
    }
  });

  it('does not exclude anything the Dockerfile copies from the context', () => {
    const sources = parseDockerfile(read('Dockerfile')).flatMap((s) => copiesOf(s).filter((c) => c.from === undefined).flatMap((c) => c.sources));
    expect(sources.length).toBeGreaterThan(0);
    for (const s of sources) expect(dockerIgnored(patterns, posix.normalize(s).replace(/\/+$/, '')), `${s} is excluded by .dockerignore`).toBe(false);
    expect(dockerIgnored(patterns, 'assets/greeting.ulaw')).toBe(false);
    expect(dockerIgnored(patterns, 'src/main.ts')).toBe(false);
  });
});

// ---------------------------------------------------------------------------
// compose.yaml
// ---------------------------------------------------------------------------

/** Compose durations: `90s`, `3m`, `1m30s`, `1.5h`, `500ms`, `2us`. */
function parseDurationMs(v: unknown): number {
  const s = String(v).trim();
  const unit: Record<string, number> = { h: 3_600_000, m: 60_000, s: 1000, ms: 1, us: 0.001, µs: 0.001, ns: 0.000001 };
  const re = /(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)/gy;
  let total = 0;
  let at = 0;
  for (let m = re.exec(s); m !== null; m = re.exec(s)) {
    total += Number(m[1]) * (unit[m[2] ?? ''] ?? NaN);
    at = re.lastIndex;
  }
  if (s === '' || at !== s.length || !Number.isFinite(total)) throw new Error(`not a compose duration: ${JSON.stringify(v)}`);
  return total;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);

/** `environment:` in map or list form. */
function envOf(service: Obj): Record<string, string> {
  const env = service.environment;
  const out: Record<string, string> = {};
  if (Array.isArray(env)) {
    for (const e of env) {
      const [k, ...v] = String(e).split('=');
      if (k !== undefined) out[k] = v.join('=');
    }
  } else if (isObj(env)) {
    for (const [k, v] of Object.entries(env)) out[k] = v === null ? '' : String(v);
  }
  return out;
}

/** What a user puts in deploy/.env (or the shell) for compose to interpolate. */
const DEPLOY_VARS: Record<string, string> = { PLAYLINE_DOMAIN: 'voice.example.test', ACME_EMAIL: 'ops@example.test' };

/**
 * Compose's variable interpolation: `$$`, `$VAR`, `${VAR}`, `${VAR:-default}`, `${VAR-default}`,
 * `${VAR:?error}`, `${VAR?error}`, `${VAR:+alt}`, `${VAR+alt}`. A required variable that is
 * missing throws, as `docker compose` refuses to start.
 */
function interpolate(value: string, vars: Record<string, string | undefined>): string {
  return value.replace(/\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?)([-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)/g, (all, braced?: string, colon?: string, op?: string, arg?: string, bare?: string) => {
    if (all === '$$') return '$';
    const name = (braced ?? bare)!;
    const v = vars[name];
    const unset = v === undefined || (colon === ':' && v === '');
    if (op === '-') return unset ? (arg ?? '') : v!;
    if (op === '?') {
      if (unset) throw new Error(`compose: ${name}: ${arg ?? 'required'}`);
      return v!;
    }
    if (op === '+') return unset ? '' : (arg ?? '');
    return v ?? '';
  });
}

/** A service's environment as the container gets it, with DEPLOY_VARS interpolated. */
function containerEnvOf(service: Obj, vars: Record<string, string | undefined> = DEPLOY_VARS): Record<string, string> {
  return Object.fromEntries(Object.entries(envOf(service)).map(([k, v]) => [k, interpolate(v, vars)]));
}

/** `volumes:` of a service in short (`src:dst[:ro]`) or long form. */
function mountsOf(service: Obj): Array<{ source: string; target: string; readOnly: boolean }> {
  const vols = Array.isArray(service.volumes) ? service.volumes : [];
  return vols.map((v: unknown) => {
    if (typeof v === 'string') {
      const [source = '', target = '', mode = ''] = v.split(':');
      return { source, target, readOnly: mode.split(',').includes('ro') };
    }
    const o = v as Obj;
    return { source: String(o.source ?? ''), target: String(o.target ?? ''), readOnly: o.read_only === true };
  });
}

/** `ports:` as published container ports. */
function publishedPorts(service: Obj): Array<{ published: number; target: number }> {
  const ports = Array.isArray(service.ports) ? service.ports : [];
  return ports.map((p: unknown) => {
    if (isObj(p)) return { published: Number(p.published), target: Number(p.target) };
    const parts = String(p).split('/')[0]!.split(':');
    const target = Number(parts[parts.length - 1]);
    const published = parts.length >= 2 ? Number(parts[parts.length - 2]) : target;
    return { published, target };
  });
}

const isNamedVolume = (source: string): boolean => /^[A-Za-z0-9][\w.-]*$/.test(source);

/** `name:1.2.3` (optionally `-variant`, `@sha256:…`): an exact release, not `latest`, `2` or `2.11`. */
const pinnedImageTag = (image: string): boolean => /^[^@]+:v?\d+\.\d+\.\d+(-[\w.-]+)?(@sha256:[0-9a-f]{64})?$/.test(image);

function loadCompose(): Obj {
  const doc = parseDocument(readFileSync(join(DEPLOY, 'compose.yaml'), 'utf8'), { uniqueKeys: true, prettyErrors: true });
  expect(doc.errors.map(String), 'compose.yaml parses').toEqual([]);
  expect(doc.warnings.map(String)).toEqual([]);
  const v: unknown = doc.toJS();
  expect(isObj(v)).toBe(true);
  return v as Obj;
}

describe('deploy/compose.yaml', () => {
  let compose: Obj;
  let playline: Obj;
  let caddy: Obj;
  /** The playline container's environment once compose interpolates DEPLOY_VARS. */
  let env: Record<string, string>;
  beforeAll(() => {
    compose = loadCompose();
    const services = (compose.services ?? {}) as Record<string, Obj>;
    playline = services.playline!;
    caddy = services.caddy!;
    env = containerEnvOf(playline ?? {});
  });

  it('has a playline service built from the repository Dockerfile', () => {
    expect(playline, 'service "playline"').toBeDefined();
    const build = playline.build;
    const context = typeof build === 'string' ? build : String((build as Obj).context ?? '.');
    const dockerfile = typeof build === 'string' ? 'Dockerfile' : String((build as Obj).dockerfile ?? 'Dockerfile');
    expect(resolve(DEPLOY, context)).toBe(resolve(ROOT));
    expect(resolve(DEPLOY, context, dockerfile)).toBe(join(ROOT, 'Dockerfile'));
  });

  it('keeps DATA_DIR on a named volume', () => {
    const dataDir = env.DATA_DIR;
    expect(dataDir, 'environment sets DATA_DIR').toBeDefined();
    expect(posix.isAbsolute(dataDir!)).toBe(true);
    const mount = mountsOf(playline).find((m) => posix.normalize(m.target) === posix.normalize(dataDir!));
    expect(mount, `a volume is mounted at DATA_DIR=${dataDir}`).toBeDefined();
    expect(isNamedVolume(mount!.source), `${mount!.source} is a named volume, not a host path`).toBe(true);
    expect(Object.keys((compose.volumes ?? {}) as Obj)).toContain(mount!.source);
    expect(mount!.readOnly).toBe(false);
  });

  it('gives the drain more time than DRAIN_TIMEOUT_S before Docker kills the container', () => {
    const config = loadConfig(env);
    const defaults = loadConfig({});
    expect(config.drainTimeoutMs).toBe(defaults.drainTimeoutMs); // compose does not override it
    expect(defaults.drainTimeoutMs).toBeGreaterThan(0);
    const grace = parseDurationMs(playline.stop_grace_period);
    expect(grace, `stop_grace_period ${String(playline.stop_grace_period)} vs DRAIN_TIMEOUT_S`).toBeGreaterThan(config.drainTimeoutMs);
    // After the drain timeout the goodbye phase may take CALL_CONTROL_GRACE_MS more.
    expect(grace).toBeGreaterThan(config.drainTimeoutMs + config.timeouts.callControlGraceMs);
    expect(playline.stop_signal ?? 'SIGTERM').toBe('SIGTERM');
    expect(parseDurationMs('1m30s')).toBe(90_000);
    expect(parseDurationMs('90s')).toBe(90_000);
    expect(parseDurationMs('3m')).toBe(180_000);
  });

  it('has a health check on /healthz, an env_file, and listens where Caddy expects it', () => {
    const hc = playline.healthcheck as Obj | undefined;
    expect(hc, 'healthcheck').toBeDefined();
    expect(hc!.disable).not.toBe(true);
    const test = Array.isArray(hc!.test) ? hc!.test.join(' ') : String(hc!.test);
    expect(test).not.toMatch(/^NONE\b/);
    // Liveness, not readiness: /readyz is 503 whenever the bridge is full or draining, and an
    // "unhealthy" busy container invites a restart that would drop every live call.
    expect(test).toContain('/healthz');
    expect(test).not.toContain('/readyz');
    parseDurationMs(hc!.interval ?? '30s');
    parseDurationMs(hc!.timeout ?? '30s');

    const envFiles = ([] as unknown[]).concat(playline.env_file ?? []).map((f) => (isObj(f) ? String(f.path) : String(f)));
    expect(envFiles).toContain('.env');
    expect(read('deploy/README.md')).toContain('cp ../.env.example .env');

    expect(env.HOST, 'Playline must listen on all interfaces of its container for Caddy to reach it').toMatch(/^(0\.0\.0\.0|::)$/);
    const config = loadConfig(env);
    expect(config.port).toBe(8080);
    // Playline is reachable only through Caddy.
    expect(playline.ports, 'playline publishes no ports of its own').toBeUndefined();
  });

  it('runs Caddy (an exact 2.7+ release) publishing 80 and 443 with the Caddyfile mounted and its certificates on a volume', () => {
    expect(caddy, 'service "caddy"').toBeDefined();
    const image = String(caddy.image);
    const m = /^caddy:(\d+)\.(\d+)\.(\d+)(-alpine)?(@sha256:[0-9a-f]{64})?$/.exec(image);
    expect(m, `caddy image ${image} is not caddy:2.<minor>.<patch>`).not.toBeNull();
    expect(Number(m![1])).toBe(2);
    expect(Number(m![2]), 'the Caddyfile uses stream_close_delay (Caddy 2.7+)').toBeGreaterThanOrEqual(7);
    const ports = publishedPorts(caddy);
    expect(ports).toContainEqual({ published: 80, target: 80 });
    expect(ports).toContainEqual({ published: 443, target: 443 });
    const mounts = mountsOf(caddy);
    const caddyfile = mounts.find((v) => v.target === '/etc/caddy/Caddyfile');
    expect(caddyfile, 'Caddyfile mounted at /etc/caddy/Caddyfile').toBeDefined();
    expect(resolve(DEPLOY, caddyfile!.source)).toBe(join(DEPLOY, 'Caddyfile'));
    const data = mounts.find((v) => v.target === '/data');
    expect(data && isNamedVolume(data.source), 'certificates (/data) on a named volume, or every restart asks Let’s Encrypt again').toBe(true);
    expect(([] as unknown[]).concat(caddy.depends_on ?? []).flatMap((d) => (isObj(d) ? Object.keys(d) : [String(d)]))).toContain('playline');
  });

  it('pins every image: no :latest, no tag-less or major-only images (a locally built image has its own tag)', () => {
    const services = (compose.services ?? {}) as Record<string, Obj>;
    expect(Object.keys(services).length).toBeGreaterThanOrEqual(2);
    for (const [name, svc] of Object.entries(services)) {
      const image = String(svc.image ?? '');
      expect(image, `service ${name} names its image`).not.toBe('');
      const tag = /^[^@]+:([\w][\w.-]*)(@sha256:[0-9a-f]{64})?$/.exec(image)?.[1];
      expect(tag, `service ${name}: ${image} has no tag (that means :latest)`).toBeDefined();
      expect(tag, `service ${name}: ${image}`).not.toBe('latest');
      // Pulled images must be an exact release; only an image compose builds here may have a local name.
      if (svc.build === undefined) expect(pinnedImageTag(image), `service ${name}: ${image} is not an exact version (x.y.z)`).toBe(true);
    }
    expect(pinnedImageTag('caddy:2')).toBe(false);
    expect(pinnedImageTag('caddy:2.11')).toBe(false);
    expect(pinnedImageTag('caddy:latest')).toBe(false);
    expect(pinnedImageTag('caddy:2.11.4')).toBe(true);
  });

  it('derives PUBLIC_URL from PLAYLINE_DOMAIN, so the domain is set once', () => {
    expect(envOf(playline).PUBLIC_URL, 'PUBLIC_URL in the playline environment').toMatch(/^https:\/\/\$\{PLAYLINE_DOMAIN(:\?[^}]+)?\}$/);
    // What the container gets: a valid https origin on the host Caddy has a certificate for.
    const config = loadConfig(env);
    expect(config.publicUrl).toBe('https://voice.example.test');
    expect(config.streamUrl).toBe('wss://voice.example.test/twilio/media-stream');
    expect(containerEnvOf(caddy).PLAYLINE_DOMAIN).toBe('voice.example.test');
    // Without the domain compose refuses to start, rather than giving Playline a broken PUBLIC_URL.
    expect(() => containerEnvOf(playline, { ACME_EMAIL: 'ops@example.test' })).toThrow(/PLAYLINE_DOMAIN/);
    // The guide does not ask for PUBLIC_URL in deploy/.env any more (compose's value would win anyway).
    expect(read('deploy/README.md')).not.toMatch(/^- `PUBLIC_URL=/m);
  });

  it('gives Caddy a health check on its admin API and starts it once Playline is healthy', () => {
    const hc = caddy.healthcheck as Obj | undefined;
    expect(hc, 'caddy healthcheck').toBeDefined();
    expect(hc!.disable).not.toBe(true);
    const test = Array.isArray(hc!.test) ? hc!.test.map(String) : String(hc!.test).split(/\s+/);
    // Exec form, with a program the Alpine-based caddy image has (busybox wget; no curl there).
    expect(test[0]).toBe('CMD');
    expect(test[1]).toBe('wget');
    expect(test.join(' ')).toMatch(/http:\/\/(127\.0\.0\.1|localhost):2019\//);
    parseDurationMs(hc!.interval ?? '30s');
    parseDurationMs(hc!.timeout ?? '30s');
    // The admin API the check asks must stay on.
    expect(read('deploy/Caddyfile').replace(/#[^\n]*/g, '')).not.toMatch(/^\s*admin\s+off\b/m);

    const dependsOn = caddy.depends_on;
    expect(isObj(dependsOn), 'depends_on in long form, with a condition').toBe(true);
    expect(((dependsOn as Obj).playline as Obj | undefined)?.condition).toBe('service_healthy');
    expect(playline.healthcheck, 'service_healthy needs a playline health check').toBeDefined();
  });

  it('rotates the logs of every service (json-file with max-size and max-file)', () => {
    for (const [name, svc] of Object.entries((compose.services ?? {}) as Record<string, Obj>)) {
      const logging = svc.logging as Obj | undefined;
      expect(logging, `service ${name} has logging options`).toBeDefined();
      expect(logging!.driver).toBe('json-file');
      const options = (logging!.options ?? {}) as Obj;
      expect(String(options['max-size']), `service ${name} max-size`).toMatch(/^\d+[kmg]$/);
      expect(Number(options['max-file']), `service ${name} max-file`).toBeGreaterThanOrEqual(2);
      // Docker wants these as strings; a bare YAML number is refused by some compose versions.
      expect(typeof options['max-file'], `service ${name} max-file is quoted`).toBe('string');
    }
  });

  it('passes Caddy every variable the Caddyfile reads, and requires those without a default', () => {
    const caddyEnv = envOf(caddy);
    const used = [...read('deploy/Caddyfile').matchAll(/\{\$([A-Z0-9_]+)(:[^}]*)?\}/g)];
    expect(used.map((u) => u[1])).toContain('PLAYLINE_DOMAIN');
    for (const [, name, dflt] of used) {
      expect(caddyEnv[name!], `compose passes ${name} to caddy`).toBeDefined();
      // A Caddyfile placeholder without a default that ends up empty breaks the config
      // (`email` with no argument, a site block with no address): compose must refuse to start.
      if (dflt === undefined) expect(caddyEnv[name!], `${name} must be required in compose: \${${name}:?message}`).toMatch(new RegExp(`^\\$\\{${name}:\\?.+\\}$`));
    }
  });
});

// ---------------------------------------------------------------------------
// Caddyfile (adapted by a real caddy)
// ---------------------------------------------------------------------------

/** Caddyfile subdirectives newer than some caddy we may validate with: name → first version. */
const NEWER_SUBDIRECTIVES: Record<string, [number, number]> = { stream_close_delay: [2, 7] };

function findCaddy(): string {
  const bin = process.env.CADDY ?? 'caddy';
  const r = spawnSync(bin, ['version'], { encoding: 'utf8' });
  if (r.error !== undefined || r.status !== 0) {
    throw new Error(
      `The Caddyfile check needs a caddy binary (${bin}: ${r.error?.message ?? r.stderr}). ` +
        'PLAYLINE_REQUIRE_CADDY=1 is set, so this check may not be skipped. .ci/run installs Debian’s caddy package; ' +
        'locally run `apt-get install caddy` (or `brew install caddy`), point CADDY at a caddy binary, or unset PLAYLINE_REQUIRE_CADDY to skip it.',
    );
  }
  return bin;
}

function caddyVersion(bin: string): [number, number, number] {
  const out = execFileSync(bin, ['version'], { encoding: 'utf8' });
  const m = /v?(\d+)\.(\d+)\.(\d+)/.exec(out);
  if (m === null) throw new Error(`cannot read the caddy version from ${JSON.stringify(out)}`);
  return [Number(m[1]), Number(m[2]), Number(m[3])];
}

function walk(v: unknown, visit: (o: Obj) => void): void {
  if (Array.isArray(v)) for (const x of v) walk(x, visit);
  else if (isObj(v)) {
    visit(v);
    for (const x of Object.values(v)) walk(x, visit);
  }
}

/** Whether a caddy binary is on this machine. */
const HAVE_CADDY = spawnSync(process.env.CADDY ?? 'caddy', ['version'], { encoding: 'utf8' }).status === 0;
/**
 * PLAYLINE_REQUIRE_CADDY=1 (set by .ci/run) makes a missing caddy fail the real-Caddy checks.
 * Otherwise, without caddy they are skipped with the reason below: `npm test` in someone else's
 * CI must not fail because a reverse proxy is not installed there.
 */
const REQUIRE_CADDY = process.env.PLAYLINE_REQUIRE_CADDY === '1';
const RUN_REAL_CADDY = HAVE_CADDY || REQUIRE_CADDY;
const CADDY_SKIP_REASON =
  `skipped: no caddy binary (${process.env.CADDY ?? 'caddy'}) on this machine. Install caddy (apt-get install caddy, brew install caddy) ` +
  'or set CADDY=/path/to/caddy to run them; PLAYLINE_REQUIRE_CADDY=1 (as in .ci/run) makes a missing caddy a failure';
if (!RUN_REAL_CADDY) console.warn(`test/deploy.test.ts: the real-Caddy checks of deploy/Caddyfile are ${CADDY_SKIP_REASON}.`);

describe('deploy/Caddyfile (structure, checked everywhere)', () => {
  const text = read('deploy/Caddyfile').replace(/#[^\n]*/g, '');

  it('has balanced braces, one site block for {$PLAYLINE_DOMAIN}, and keeps /metrics private', () => {
    let depth = 0;
    for (const ch of text) {
      if (ch === '{') depth++;
      if (ch === '}') depth--;
      expect(depth).toBeGreaterThanOrEqual(0);
    }
    expect(depth).toBe(0);
    expect(text).toMatch(/^\{\$PLAYLINE_DOMAIN\}\s*\{/m);
    const metrics = text.indexOf('@metrics');
    expect(metrics).toBeGreaterThan(-1);
    expect(metrics).toBeLessThan(text.indexOf('reverse_proxy'));
  });

  it('proxies to the compose service and port Playline listens on', () => {
    const targets = [...text.matchAll(/reverse_proxy\s+([^\s{]+)/g)].map((m) => m[1]);
    expect(targets).toEqual(['playline:8080']);
    const services = (loadCompose().services ?? {}) as Record<string, Obj>;
    expect(Object.keys(services)).toContain('playline');
    expect(String(loadConfig(containerEnvOf(services.playline!)).port)).toBe('8080');
  });
});

describe.runIf(RUN_REAL_CADDY)(`deploy/Caddyfile (adapted by a real caddy${RUN_REAL_CADDY ? '' : `; ${CADDY_SKIP_REASON}`})`, () => {
  // Made in beforeAll, not while collecting: a skipped block must leave nothing behind.
  let tmp = '';
  beforeAll(() => {
    tmp = mkdtempSync(join(tmpdir(), 'playline-caddy-'));
  });
  afterAll(() => {
    if (tmp !== '') rmSync(tmp, { recursive: true, force: true });
  });

  /** `caddy adapt` the Caddyfile; subdirectives this caddy is too old to know are checked and set aside. */
  function adapt(env: Record<string, string>, caddyfile = 'deploy/Caddyfile'): { json: Obj; setAside: string[] } {
    const bin = findCaddy();
    const [maj, min] = caddyVersion(bin);
    let text = read(caddyfile);
    const setAside: string[] = [];
    for (const [name, [needMaj, needMin]] of Object.entries(NEWER_SUBDIRECTIVES)) {
      if (maj > needMaj || (maj === needMaj && min >= needMin)) continue;
      text = text.replace(new RegExp(`^[ \\t]*${name}\\b(.*)\\r?\\n`, 'gm'), (_all, rest: string) => {
        setAside.push(`${name}${rest}`);
        return '';
      });
    }
    const file = join(tmp, 'Caddyfile');
    writeFileSync(file, text);
    const r = spawnSync(bin, ['adapt', '--config', file, '--adapter', 'caddyfile'], {
      encoding: 'utf8',
      env: { PATH: process.env.PATH ?? '', HOME: tmp, XDG_DATA_HOME: tmp, XDG_CONFIG_HOME: tmp, ...env },
      timeout: 20_000,
    });
    expect(r.status, `caddy adapt failed:\n${r.stderr}`).toBe(0);
    expect(r.stderr, 'caddy adapt warns').not.toMatch(/"level":"warn"|WARN/);
    return { json: JSON.parse(r.stdout) as Obj, setAside };
  }

  it('adapts without error, proxies the public host to playline:8080 and gets a certificate for it', () => {
    const { json, setAside } = adapt({ PLAYLINE_DOMAIN: 'voice.example.test', ACME_EMAIL: 'ops@example.test' });
    for (const line of setAside) expect(line, 'a subdirective set aside for an older caddy still has a valid form').toMatch(/^stream_close_delay\s+\d+(ms|s|m|h)\s*$/);

    const proxies: Obj[] = [];
    walk(json, (o) => {
      if (o.handler === 'reverse_proxy') proxies.push(o);
    });
    expect(proxies).toHaveLength(1);
    const dials = ((proxies[0]!.upstreams ?? []) as Obj[]).map((u) => u.dial);
    expect(dials).toEqual(['playline:8080']);

    // The upstream is the compose service and the port it listens on.
    const [host, port] = String(dials[0]).split(':');
    const services = (loadCompose().services ?? {}) as Record<string, Obj>;
    expect(Object.keys(services)).toContain(host);
    expect(String(loadConfig(containerEnvOf(services[host!]!)).port)).toBe(port);

    const hosts: string[] = [];
    walk(json, (o) => {
      if (Array.isArray(o.host)) hosts.push(...(o.host as string[]));
    });
    expect(hosts).toEqual(['voice.example.test']);
    const http = ((json.apps as Obj).http as Obj).servers as Record<string, Obj>;
    expect(Object.values(http).flatMap((s) => s.listen as string[])).toContain(':443');

    const emails: string[] = [];
    walk((json.apps as Obj).tls, (o) => {
      if (typeof o.email === 'string') emails.push(o.email);
    });
    expect(emails.length).toBeGreaterThan(0);
    expect(new Set(emails)).toEqual(new Set(['ops@example.test']));

    // /metrics stays private: a 404 route for it comes before the proxy.
    const text = JSON.stringify(json);
    expect(text.indexOf('"/metrics"')).toBeGreaterThan(-1);
    expect(text.indexOf('"/metrics"')).toBeLessThan(text.indexOf('"reverse_proxy"'));
  });

  it('deploy/Caddyfile.scale adapts without error: every replica of compose.scale.yaml an upstream, checked on /readyz, least connections, retried elsewhere', () => {
    const { json, setAside } = adapt({ PLAYLINE_DOMAIN: 'voice.example.test', ACME_EMAIL: 'ops@example.test' }, 'deploy/Caddyfile.scale');
    for (const line of setAside) expect(line).toMatch(/^stream_close_delay\s+\d+(ms|s|m|h)\s*$/);
    const proxies: Obj[] = [];
    walk(json, (o) => {
      if (o.handler === 'reverse_proxy') proxies.push(o);
    });
    expect(proxies).toHaveLength(1);
    const proxy = proxies[0]!;
    const dials = ((proxy.upstreams ?? []) as Obj[]).map((u) => String(u.dial));
    expect(dials.sort()).toEqual(scaleReplicas().map((r) => `${r}:8080`).sort());
    const health = proxy.health_checks as Obj;
    expect((health.active as Obj).uri).toBe('/readyz');
    expect((health.active as Obj).expect_status ?? 200).toBe(200);
    expect(Number((health.active as Obj).interval)).toBeLessThanOrEqual(5e9);
    const lb = proxy.load_balancing as Obj;
    expect((lb.selection_policy as Obj).policy).toBe('least_conn');
    expect(Number(lb.try_duration)).toBeGreaterThan(0);
    // Long-lived media streams: no read or write timeout at the proxy.
    const transport = proxy.transport as Obj;
    expect(transport.read_timeout ?? 0).toBe(0);
    expect(transport.write_timeout ?? 0).toBe(0);
    const text = JSON.stringify(json);
    expect(text.indexOf('"/metrics"')).toBeGreaterThan(-1);
    expect(text.indexOf('"/metrics"')).toBeLessThan(text.indexOf('"reverse_proxy"'));
  });

  it('deploy/Caddyfile.scale is what caddy fmt would write', () => {
    const file = join(tmp, 'Caddyfile.scale.fmt');
    writeFileSync(file, read('deploy/Caddyfile.scale'));
    const r = spawnSync(findCaddy(), ['fmt', file], { encoding: 'utf8', timeout: 20_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe(read('deploy/Caddyfile.scale'));
  });

  it('is what caddy fmt would write (no stray syntax)', () => {
    const bin = findCaddy();
    const file = join(tmp, 'Caddyfile.fmt');
    writeFileSync(file, read('deploy/Caddyfile'));
    const r = spawnSync(bin, ['fmt', file], { encoding: 'utf8', timeout: 20_000 });
    expect(r.status, r.stderr).toBe(0);
    expect(r.stdout).toBe(read('deploy/Caddyfile'));
  });
});

// ---------------------------------------------------------------------------
// compose.scale.yaml: Caddy, bridge replicas, Redis, Postgres
// ---------------------------------------------------------------------------

const SCALE_VARS: Record<string, string> = { ...DEPLOY_VARS, POSTGRES_PASSWORD: 'a-long-random-password' };

function loadScaleCompose(): Obj {
  // Compose follows YAML merge keys (`<<: *playline`).
  const doc = parseDocument(readFileSync(join(DEPLOY, 'compose.scale.yaml'), 'utf8'), { uniqueKeys: true, prettyErrors: true, merge: true });
  expect(doc.errors.map(String), 'compose.scale.yaml parses').toEqual([]);
  expect(doc.warnings.map(String)).toEqual([]);
  const v: unknown = doc.toJS();
  expect(isObj(v)).toBe(true);
  return v as Obj;
}

/** The bridge replicas: services built from the repository (or running the playline image). */
function scaleReplicas(): string[] {
  const services = (loadScaleCompose().services ?? {}) as Record<string, Obj>;
  return Object.entries(services)
    .filter(([, svc]) => String(svc.image ?? '').startsWith('playline') || svc.build !== undefined)
    .map(([name]) => name);
}

describe('deploy/compose.scale.yaml', () => {
  let compose: Obj;
  let services: Record<string, Obj>;
  let replicas: string[];
  beforeAll(() => {
    compose = loadScaleCompose();
    services = (compose.services ?? {}) as Record<string, Obj>;
    replicas = scaleReplicas();
  });
  const namedVolumes = () => Object.keys((compose.volumes ?? {}) as Obj);

  it('runs at least two bridge replicas, each with its own named data volume and no published port (Caddy is the way in)', () => {
    expect(replicas.length).toBeGreaterThanOrEqual(2);
    const sources = new Set<string>();
    for (const name of replicas) {
      const svc = services[name]!;
      const data = mountsOf(svc).find((m) => m.target === '/data');
      expect(data && isNamedVolume(data.source), `${name}: DATA_DIR on a named volume`).toBe(true);
      expect(namedVolumes()).toContain(data!.source);
      sources.add(data!.source);
      expect(svc.ports, `${name} publishes no port`).toBeUndefined();
      expect(svc.container_name, `${name}: no container_name (replicas need their own)`).toBeUndefined();
      expect(containerEnvOf(svc, SCALE_VARS).DATA_DIR).toBe('/data');
    }
    expect(sources.size, 'one data volume per replica').toBe(replicas.length);
  });

  it('wires REDIS_URL and DATABASE_URL of every replica to the redis and postgres services, and the settings load', () => {
    for (const name of replicas) {
      const env = containerEnvOf(services[name]!, SCALE_VARS);
      const redis = new URL(env.REDIS_URL ?? '');
      expect(redis.protocol).toBe('redis:');
      expect(Object.keys(services)).toContain(redis.hostname);
      const db = new URL(env.DATABASE_URL ?? '');
      expect(db.protocol).toBe('postgres:');
      expect(Object.keys(services)).toContain(db.hostname);
      expect(db.password).toBe(SCALE_VARS.POSTGRES_PASSWORD);
      const pg = containerEnvOf(services[db.hostname]!, SCALE_VARS);
      expect(decodeURIComponent(db.username)).toBe(pg.POSTGRES_USER);
      expect(db.pathname).toBe(`/${pg.POSTGRES_DB}`);
      const config = loadConfig(env);
      expect(config.fleet?.redisUrl).toBe(env.REDIS_URL);
      expect(config.port).toBe(8080);
      expect(config.workers).toBeGreaterThanOrEqual(1);
      expect(env.PUBLIC_URL).toBe(`https://${SCALE_VARS.PLAYLINE_DOMAIN}`);
      const dependsOn = services[name]!.depends_on as Obj;
      expect((dependsOn[redis.hostname] as Obj).condition).toBe('service_healthy');
      expect((dependsOn[db.hostname] as Obj).condition).toBe('service_healthy');
    }
    expect(() => containerEnvOf(services[replicas[0]!]!, DEPLOY_VARS), 'POSTGRES_PASSWORD is required').toThrow(/POSTGRES_PASSWORD/);
  });

  it('gives every replica a stop grace period above DRAIN_TIMEOUT_S (plus the goodbye and linger), SIGTERM, and a /healthz liveness check', () => {
    for (const name of replicas) {
      const svc = services[name]!;
      const config = loadConfig(containerEnvOf(svc, SCALE_VARS));
      const grace = parseDurationMs(svc.stop_grace_period);
      expect(grace, `${name}: stop_grace_period vs DRAIN_TIMEOUT_S`).toBeGreaterThan(config.drainTimeoutMs + config.timeouts.callControlGraceMs + 2000);
      expect(svc.stop_signal ?? 'SIGTERM').toBe('SIGTERM');
      const test = (svc.healthcheck as Obj).test;
      const line = Array.isArray(test) ? test.join(' ') : String(test);
      expect(line).toContain('/healthz');
      expect(line, 'a full or draining replica is not unhealthy').not.toContain('/readyz');
    }
  });

  it('runs Redis with the append-only file on, on a named volume, with a health check', () => {
    const redis = services.redis!;
    const cmd = Array.isArray(redis.command) ? redis.command.map(String) : String(redis.command).split(/\s+/);
    const at = cmd.indexOf('--appendonly');
    expect(at, 'redis-server --appendonly').toBeGreaterThan(-1);
    expect(cmd[at + 1]).toBe('yes');
    const data = mountsOf(redis).find((m) => m.target === '/data');
    expect(data && isNamedVolume(data.source) && namedVolumes().includes(data.source)).toBe(true);
    expect(JSON.stringify((redis.healthcheck as Obj).test)).toContain('ping');
    expect(redis.ports, 'Redis is not published').toBeUndefined();
  });

  it('runs Postgres on a named volume with a pg_isready health check, its password required', () => {
    const pg = services.postgres!;
    const data = mountsOf(pg).find((m) => m.target === '/var/lib/postgresql/data');
    expect(data && isNamedVolume(data.source) && namedVolumes().includes(data.source)).toBe(true);
    expect(JSON.stringify((pg.healthcheck as Obj).test)).toContain('pg_isready');
    expect(pg.ports, 'Postgres is not published').toBeUndefined();
    expect(() => containerEnvOf(pg, DEPLOY_VARS)).toThrow(/POSTGRES_PASSWORD/);
  });

  it('runs Caddy on 80 and 443 with Caddyfile.scale, certificates on a volume, once every replica is healthy', () => {
    const caddy = services.caddy!;
    expect(publishedPorts(caddy).map((p) => p.published).sort()).toEqual([443, 80]);
    const mounts = mountsOf(caddy);
    const file = mounts.find((m) => m.target === '/etc/caddy/Caddyfile');
    expect(resolve(DEPLOY, file!.source)).toBe(join(DEPLOY, 'Caddyfile.scale'));
    expect(file!.readOnly).toBe(true);
    const data = mounts.find((m) => m.target === '/data');
    expect(data && isNamedVolume(data.source)).toBe(true);
    const dependsOn = caddy.depends_on as Obj;
    for (const r of replicas) expect((dependsOn[r] as Obj | undefined)?.condition, `caddy waits for ${r}`).toBe('service_healthy');
    const env = containerEnvOf(caddy, SCALE_VARS);
    expect(env.PLAYLINE_DOMAIN).toBe(SCALE_VARS.PLAYLINE_DOMAIN);
    expect(env.ACME_EMAIL).toBe(SCALE_VARS.ACME_EMAIL);
  });

  it('pins every pulled image to an exact release (Postgres: major.minor, its release numbering)', () => {
    for (const [name, svc] of Object.entries(services)) {
      if (svc.build !== undefined) continue;
      const image = String(svc.image ?? '');
      const exact = name === 'postgres' ? /^postgres:\d+\.\d+(-[\w.-]+)?$/.test(image) : pinnedImageTag(image);
      expect(exact, `service ${name}: ${image} is not an exact release`).toBe(true);
    }
  });

  it('lists every replica in Caddyfile.scale (and nothing else), with /readyz health checks', () => {
    const text = read('deploy/Caddyfile.scale').replace(/#[^\n]*/g, '');
    const line = /reverse_proxy\s+([^{\n]+)\{/.exec(text)?.[1] ?? '';
    expect(line.trim().split(/\s+/).sort()).toEqual(replicas.map((r) => `${r}:8080`).sort());
    expect(text).toMatch(/^\s*health_uri\s+\/readyz\s*$/m);
  });
});

describe('deploy/k8s/playline.yaml', () => {
  const docs = parseAllDocuments(read('deploy/k8s/playline.yaml'), { uniqueKeys: true });
  const objects = (Array.isArray(docs) ? docs : [docs]).map((d) => {
    expect(d.errors.map(String)).toEqual([]);
    const v: unknown = d.toJS();
    expect(isObj(v)).toBe(true);
    return v as Obj;
  });
  const deployment = objects.find((o) => o.kind === 'Deployment')!;
  const pod = ((deployment?.spec as Obj).template as Obj).spec as Obj;
  const container = (pod.containers as Obj[])[0]!;
  const env = Object.fromEntries(((container.env ?? []) as Obj[]).map((e) => [String(e.name), String(e.value)]));

  it('a Deployment of at least two replicas that surges before it drains, with a Service and a disruption budget', () => {
    expect(deployment).toBeDefined();
    expect(Number((deployment.spec as Obj).replicas)).toBeGreaterThanOrEqual(2);
    const rolling = ((deployment.spec as Obj).strategy as Obj).rollingUpdate as Obj;
    expect(rolling.maxUnavailable).toBe(0);
    expect(objects.map((o) => o.kind)).toEqual(expect.arrayContaining(['Service', 'PodDisruptionBudget']));
    expect(pinnedImageTag(String(container.image))).toBe(true);
  });

  it('gives the pod more than preStop + DRAIN_TIMEOUT_S + the goodbye and linger before the kubelet kills it', () => {
    const config = loadConfig(env);
    const preStop = ((container.lifecycle as Obj).preStop as Obj).exec as Obj;
    const command = (preStop.command as unknown[]).map(String);
    expect(command[0]).toBe('sleep');
    const waitS = Number(command[1]);
    expect(waitS).toBeGreaterThan(0);
    expect(Number(pod.terminationGracePeriodSeconds) * 1000).toBeGreaterThan(waitS * 1000 + config.drainTimeoutMs + config.timeouts.callControlGraceMs + 2000);
  });

  it('routes by readiness on /readyz and restarts only on /healthz', () => {
    expect(((container.readinessProbe as Obj).httpGet as Obj).path).toBe('/readyz');
    expect(((container.livenessProbe as Obj).httpGet as Obj).path).toBe('/healthz');
    const port = ((container.ports as Obj[])[0]!).containerPort;
    expect(String(loadConfig(env).port)).toBe(String(port));
  });
});

// ---------------------------------------------------------------------------
// CI: .ci/run and the GitHub workflows
// ---------------------------------------------------------------------------

function loadWorkflow(name: string): Obj {
  const doc = parseDocument(read(`.github/workflows/${name}`), { uniqueKeys: true, prettyErrors: true });
  expect(doc.errors.map(String), `${name} parses`).toEqual([]);
  const v: unknown = doc.toJS();
  expect(isObj(v)).toBe(true);
  return v as Obj;
}

/** Every `uses:` of a workflow's steps (and of its jobs, for reusable workflows). */
function usesOf(workflow: Obj): string[] {
  const out: string[] = [];
  for (const job of Object.values((workflow.jobs ?? {}) as Record<string, Obj>)) {
    if (typeof job.uses === 'string') out.push(job.uses);
    for (const step of (Array.isArray(job.steps) ? job.steps : []) as Obj[]) if (typeof step.uses === 'string') out.push(step.uses);
  }
  return out;
}

/** The step of `job` that uses `action` (owner/name), with its `with:` inputs. */
function stepUsing(job: Obj, action: string): Obj | undefined {
  return ((Array.isArray(job.steps) ? job.steps : []) as Obj[]).find((s) => typeof s.uses === 'string' && s.uses.startsWith(`${action}@`));
}

describe('CI', () => {
  it('.ci/run requires the real-Caddy and browser checks and bounds every step', () => {
    const run = read('.ci/run');
    expect(run).toMatch(/^export (?=.*\bPLAYLINE_REQUIRE_CADDY=1\b)(?=.*\bPLAYLINE_REQUIRE_CHROMIUM=1\b)[A-Z_=1 ]+$/m);
    for (const line of run.split('\n').filter((l) => /\b(apt-get (update|install)|npm (ci|test))\b/.test(l) && !l.trim().startsWith('#'))) {
      expect(line, 'every apt-get and npm step runs under a time limit').toMatch(/\b(timeout|bounded)\b/);
    }
    // Declared limits add up to less than 15 minutes.
    const limits = [...run.matchAll(/\b(?:timeout -k \d+|bounded) (\d+) /g)].map((m) => Number(m[1]));
    expect(limits.length).toBeGreaterThanOrEqual(4);
    expect(limits.reduce((a, b) => a + b, 0)).toBeLessThan(15 * 60);
    expect(statSync(join(ROOT, '.ci/run')).mode & 0o111, '.ci/run is executable').not.toBe(0);
  });

  it('ci.yml runs .ci/run on ubuntu-latest on Node 20, 22 and the Docker image\'s Node, and can be called by image.yml', () => {
    const ci = loadWorkflow('ci.yml');
    const on = ci.on as Obj;
    expect(Object.keys(on)).toEqual(expect.arrayContaining(['pull_request', 'push', 'workflow_call']));
    const jobs = Object.values((ci.jobs ?? {}) as Record<string, Obj>);
    expect(jobs).toHaveLength(1);
    const job = jobs[0]!;
    expect(job['runs-on']).toBe('ubuntu-latest');
    expect(Number(job['timeout-minutes'])).toBeGreaterThan(15); // .ci/run ends within 15
    const nodes = (((job.strategy as Obj).matrix as Obj).node as unknown[]).map(String);
    const imageMajor = /^node:(\d+)\./.exec(last(parseDockerfile(read('Dockerfile')))!.image)?.[1];
    expect(nodes).toEqual(expect.arrayContaining(['20', '22', imageMajor]));
    expect(((stepUsing(job, 'actions/setup-node')?.with ?? {}) as Obj)['node-version']).toBe('${{ matrix.node }}');
    const runs = ((job.steps ?? []) as Obj[]).map((s) => s.run).filter((r) => r !== undefined);
    expect(runs).toEqual(['.ci/run']);
  });

  it('image.yml publishes a linux/amd64 + linux/arm64 image to GHCR on version tags and as edge from main, after the tests', () => {
    const wf = loadWorkflow('image.yml');
    const push = ((wf.on as Obj).push ?? {}) as Obj;
    expect(push.branches).toEqual(['main']);
    expect(push.tags).toEqual(['v*']);
    expect(wf.permissions).toEqual({ contents: 'read', packages: 'write' });

    const jobs = (wf.jobs ?? {}) as Record<string, Obj>;
    expect(jobs.test?.uses, 'the tests run first (ci.yml as a reusable workflow)').toBe('./.github/workflows/ci.yml');
    const image = jobs.image!;
    expect(image.needs).toBe('test');
    for (const action of ['actions/checkout', 'docker/setup-qemu-action', 'docker/setup-buildx-action', 'docker/login-action', 'docker/metadata-action', 'docker/build-push-action']) {
      expect(stepUsing(image, action), `image job uses ${action}`).toBeDefined();
    }
    expect((stepUsing(image, 'docker/login-action')!.with as Obj).registry).toBe('ghcr.io');
    const meta = stepUsing(image, 'docker/metadata-action')!.with as Obj;
    expect(meta.images).toBe('ghcr.io/${{ github.repository_owner }}/playline');
    const tags = String(meta.tags).split('\n').map((t) => t.trim()).filter(Boolean);
    expect(tags).toEqual(expect.arrayContaining(['type=semver,pattern={{version}}', 'type=edge,branch=main']));
    expect(meta.flavor, 'no floating latest tag').toBe('latest=false');
    const build = stepUsing(image, 'docker/build-push-action')!.with as Obj;
    expect(String(build.platforms).split(',').map((p) => p.trim()).sort()).toEqual(['linux/amd64', 'linux/arm64']);
    expect(build.push).toBe(true);
    expect(build.context).toBe('.');
    expect(resolve(ROOT, String(build.file))).toBe(join(ROOT, 'Dockerfile'));
    expect(build.tags).toBe('${{ steps.meta.outputs.tags }}');
  });

  it('workflows pin every action to a major version (never a branch)', () => {
    for (const name of readdirSync(join(ROOT, '.github/workflows')).filter((f) => /\.ya?ml$/.test(f))) {
      for (const uses of usesOf(loadWorkflow(name))) {
        if (uses.startsWith('./')) continue; // a workflow of this repository
        expect(uses, `${name}: ${uses}`).toMatch(/^[\w.-]+\/[\w.-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})$/);
      }
    }
  });

  it('deploy/README.md shows how to pull the published image instead of building it', () => {
    const guide = read('deploy/README.md');
    expect(guide).toMatch(/image: ghcr\.io\/<owner>\/playline:<version>/);
    expect(read('deploy/compose.yaml')).toMatch(/#\s*image: ghcr\.io\/<owner>\/playline:<version>/);
  });
});

// ---------------------------------------------------------------------------
// Settings documentation
// ---------------------------------------------------------------------------

/** Keys of `envSchema` in src/config.ts (the variables the config reads). */
function schemaKeys(): string[] {
  const src = read('src/config.ts');
  const start = src.indexOf('const envSchema = z.object({');
  expect(start, 'src/config.ts defines envSchema = z.object({…})').toBeGreaterThan(-1);
  const end = src.indexOf('\n});', start);
  const body = src.slice(start, end);
  const keys = [...body.matchAll(/^ {2}([A-Z][A-Z0-9_]*):/gm)].map((m) => m[1]!);
  return [...new Set(keys)].sort();
}

/** Every `process.env.X` / `process.env['X']` read anywhere in src/. */
function processEnvReads(): string[] {
  const names = new Set<string>();
  const walkDir = (dir: string): void => {
    for (const e of readdirSync(dir, { withFileTypes: true })) {
      const p = join(dir, e.name);
      if (e.isDirectory()) walkDir(p);
      else if (e.name.endsWith('.ts')) {
        for (const m of readFileSync(p, 'utf8').matchAll(/process\.env(?:\.([A-Z][A-Z0-9_]*)|\[\s*['"]([A-Z][A-Z0-9_]*)['"]\s*\])/g)) names.add((m[1] ?? m[2])!);
      }
    }
  };
  walkDir(join(ROOT, 'src'));
  return [...names].sort();
}

/** `.env.example` as lines of `NAME=value`, each with whether a comment documents it. */
function envExample(): Array<{ name: string; value: string; documented: boolean; line: number }> {
  const lines = read('.env.example').split(/\r?\n/);
  const out: Array<{ name: string; value: string; documented: boolean; line: number }> = [];
  for (let i = 0; i < lines.length; i++) {
    const m = /^([A-Za-z_][A-Za-z0-9_]*)=(.*)$/.exec(lines[i] ?? '');
    if (m === null) continue;
    // Documented: a comment line directly above it (a section ruler like `# --- Server ---` does not count).
    const above = lines[i - 1] ?? '';
    const documented = /^#\s*\S/.test(above) && !/^#\s*-{3}/.test(above);
    out.push({ name: m[1]!, value: m[2]!, documented, line: i + 1 });
  }
  return out;
}

/** Variables in the README "Settings" table, with the default column. */
function readmeSettings(): Array<{ name: string; dflt: string }> {
  const readme = read('README.md');
  const section = readme.slice(readme.indexOf('## Settings'), readme.indexOf('\n## ', readme.indexOf('## Settings') + 3));
  const rows: Array<{ name: string; dflt: string }> = [];
  for (const line of section.split('\n')) {
    const cells = line.split('|').map((c) => c.trim());
    if (cells.length < 4 || !cells[1]?.startsWith('`')) continue;
    for (const m of cells[1].matchAll(/`([A-Z][A-Z0-9_]*)`/g)) rows.push({ name: m[1]!, dflt: cells[2] ?? '' });
  }
  return rows;
}

describe('settings documentation', () => {
  const keys = schemaKeys();

  it('finds the variables src/config.ts reads, and nothing in src/ reads others', () => {
    expect(keys.length).toBeGreaterThan(20);
    expect(keys).toContain('DRAIN_TIMEOUT_S');
    expect(keys).toContain('PORT');
    // Operating-system variables (a benchmark passing PATH on to a child) are not settings.
    const system = new Set(['PATH', 'HOME', 'LANG', 'TZ', 'TMPDIR', 'USER', 'SHELL', 'CI', 'NODE_ENV', 'NODE_OPTIONS']);
    for (const n of processEnvReads().filter((n) => !system.has(n))) expect(keys, `src/ reads process.env.${n}, which config.ts does not know`).toContain(n);
  });

  it('.env.example lists every variable once, each with a comment, and nothing else', () => {
    const example = envExample();
    const names = example.map((e) => e.name);
    expect(names.filter((n, i) => names.indexOf(n) !== i), 'listed twice').toEqual([]);
    expect(keys.filter((k) => !names.includes(k)), 'missing from .env.example').toEqual([]);
    expect(names.filter((n) => !keys.includes(n)), 'in .env.example but unknown to src/config.ts').toEqual([]);
    expect(example.filter((e) => !e.documented).map((e) => `${e.name} (line ${e.line})`), 'no comment above').toEqual([]);
  });

  it('.env.example as written is a valid configuration equal to the defaults', () => {
    const env = Object.fromEntries(envExample().map((e) => [e.name, e.value]));
    expect(loadConfig(env)).toEqual(loadConfig({}));
  });

  it('the README settings table lists every variable, with the same defaults as .env.example', () => {
    const rows = readmeSettings();
    const names = rows.map((r) => r.name);
    expect(keys.filter((k) => !names.includes(k)), 'missing from the README settings table').toEqual([]);
    expect(names.filter((n) => !keys.includes(n)), 'in the README table but unknown to src/config.ts').toEqual([]);
    expect(names.filter((n, i) => names.indexOf(n) !== i), 'listed twice').toEqual([]);
    const example = new Map(envExample().map((e) => [e.name, e.value]));
    for (const r of rows) {
      const literal = /^`([^`]*)`$/.exec(r.dflt)?.[1];
      const value = example.get(r.name);
      if (literal !== undefined && value !== undefined && value !== '') expect(literal, `README default of ${r.name}`).toBe(value);
    }
  });
});

describe('test helpers', () => {
  it('read Docker ignore rules like Docker', () => {
    expect(dockerIgnored(['node_modules'], 'node_modules/x/y.js')).toBe(true);
    expect(dockerIgnored(['.env'], 'deploy/.env')).toBe(false);
    expect(dockerIgnored(['**/.env'], 'deploy/.env')).toBe(true);
    expect(dockerIgnored(['**/.env'], '.env')).toBe(true);
    expect(dockerIgnored(['*.log', '!keep.log'], 'keep.log')).toBe(false);
    expect(dockerIgnored(['*.log'], 'a/b.log')).toBe(false);
  });

  it('interpolate variables like compose', () => {
    const vars = { A: 'x', E: '' };
    expect(interpolate('https://${A}', vars)).toBe('https://x');
    expect(interpolate('$A-$$A', vars)).toBe('x-$A');
    expect(interpolate('${B:-d} ${E:-d} ${E-d}', vars)).toBe('d d ');
    expect(interpolate('${A:+yes}${B:+no}', vars)).toBe('yes');
    expect(interpolate('${A:?need A}', vars)).toBe('x');
    expect(() => interpolate('${E:?set E}', vars)).toThrow('E: set E');
  });

  it('parse Dockerfile continuations and stages', () => {
    const stages = parseDockerfile('ARG V=1\nFROM a AS one\nRUN x \\\n  # note\n  && y\nFROM b\nCOPY --from=one /app/dist ./dist\n');
    expect(stages.map((s) => s.image)).toEqual(['a', 'b']);
    expect(stages[0]!.instructions[0]!.args).toBe('x  && y');
    expect(copiesOf(stages[1]!)[0]).toEqual({ from: 'one', sources: ['/app/dist'], targets: ['/dist'] });
  });

  it('find the files these checks read', () => {
    for (const f of ['Dockerfile', '.dockerignore', '.env.example', 'deploy/compose.yaml', 'deploy/Caddyfile', 'deploy/README.md', 'assets/greeting.ulaw', '.ci/run', '.github/workflows/ci.yml', '.github/workflows/image.yml']) {
      expect(existsSync(join(ROOT, f)), `${f} is missing`).toBe(true);
      expect(statSync(join(ROOT, f)).size).toBeGreaterThan(0);
    }
  });
});
