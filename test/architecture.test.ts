/**
 * The tree reads as product plus tooling: product code (everything under src/
 * but the testing and bench folders) never imports the fakes in src/testing or
 * the benchmark tools, and each wire protocol's scanner lives with its codec.
 */
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { describe, expect, it } from 'vitest';

const SRC = join(import.meta.dirname, '..', 'src');

function files(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const p = join(dir, name);
    return statSync(p).isDirectory() ? files(p) : p.endsWith('.ts') ? [p] : [];
  });
}

const importsOf = (file: string): string[] => [...readFileSync(file, 'utf8').matchAll(/from\s+'([^']+)'/g)].map((m) => m[1] ?? '');

describe('architecture', () => {
  it('product code never imports test fakes or benchmark tools', () => {
    const offenders: string[] = [];
    for (const f of files(SRC)) {
      const rel = relative(SRC, f);
      if (rel.startsWith('testing/') || rel.startsWith('bench/')) continue;
      for (const spec of importsOf(f)) if (/\/(testing|bench)\//.test(spec)) offenders.push(`${rel} imports ${spec}`);
    }
    expect(offenders).toEqual([]);
  });

  it('only the Twilio and PlayAI folders hold their fast scanners; the shared primitives are protocol-free', () => {
    const shared = readFileSync(join(SRC, 'util', 'jsonBytes.ts'), 'utf8');
    expect(shared).not.toMatch(/streamSid|audioStream|sequenceNumber/);
    for (const f of files(SRC)) {
      const rel = relative(SRC, f);
      for (const spec of importsOf(f)) {
        if (spec.endsWith('twilio/scan.js')) expect(rel.startsWith('carrier/twilio/'), `${rel} imports ${spec}`).toBe(true);
        if (spec.endsWith('playai/scan.js')) expect(rel.startsWith('agent/playai/'), `${rel} imports ${spec}`).toBe(true);
      }
    }
  });
});
