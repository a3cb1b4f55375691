import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { describe, expect, it } from 'vitest';
import { webhookSignatureHeader } from '../src/outbound/webhooks.js';

/** The receiver code the README gives (section "Verifying a signature"), loaded as its own module. */
async function readmeVerifier(): Promise<(secret: string, header: string, body: string) => boolean> {
  const readme = readFileSync(new URL('../README.md', import.meta.url), 'utf8');
  const at = readme.indexOf('id="verify-signatures"');
  const m = /```js\n([\s\S]*?)```/.exec(readme.slice(at));
  if (at < 0 || m?.[1] === undefined) throw new Error('README has no signature verification code');
  const file = join(mkdtempSync(join(tmpdir(), 'playline-readme-')), 'verify.mjs');
  writeFileSync(file, m[1]);
  const mod: unknown = await import(pathToFileURL(file).href);
  if (typeof mod !== 'object' || mod === null || !('verifyPlayline' in mod) || typeof mod.verifyPlayline !== 'function') throw new Error('README code exports no verifyPlayline');
  const fn = mod.verifyPlayline;
  return (secret, header, body) => fn(secret, header, body) === true;
}

describe("the README's signature verification code", () => {
  it('accepts what Playline signs (webhooks and tools), and refuses another secret, a changed body and an old timestamp', async () => {
    const verify = await readmeVerifier();
    const secret = 'whsec-0123456789abcdef';
    const body = JSON.stringify({ callId: 'call_1', tool: 'lookup_order', arguments: { order: '4512' } });
    const now = Math.floor(Date.now() / 1000);
    expect(verify(secret, webhookSignatureHeader(secret, now, body), body)).toBe(true);
    expect(verify('another-secret-0123456', webhookSignatureHeader(secret, now, body), body)).toBe(false);
    expect(verify(secret, webhookSignatureHeader(secret, now, body), body.replace('4512', '4513'))).toBe(false);
    expect(verify(secret, webhookSignatureHeader(secret, now - 3600, body), body)).toBe(false);
    expect(verify(secret, 'garbage', body)).toBe(false);
  });
});
