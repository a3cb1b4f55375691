/**
 * `npm start -- --help` prints what the server reads and exits, without starting a server; every
 * setting it names is one Playline reads.
 */
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { SETTING_NAMES } from '../src/config.js';
import { buildDistOnce, ROOT } from './processHarness.js';

describe('node dist/main.js --help', () => {
  beforeAll(() => buildDistOnce(), 150_000);
  it('prints the usage and the common settings and exits 0 without listening; every setting named exists', () => {
    const r = spawnSync(process.execPath, [join(ROOT, 'dist', 'main.js'), '--help'], { encoding: 'utf8', timeout: 10_000, env: { PATH: process.env.PATH ?? '', PORT: '1' } });
    expect(r.status).toBe(0);
    expect(r.stdout).toMatch(/^Usage: npm start/);
    const named = new Set(r.stdout.match(/\b[A-Z][A-Z0-9]*_[A-Z0-9_]+\b|\b(PORT|HOST|WORKERS)\b/g) ?? []);
    expect(named.size).toBeGreaterThan(10);
    for (const name of named) expect(SETTING_NAMES).toContain(name);
  });
});
