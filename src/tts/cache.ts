/**
 * On-disk cache of synthesized prompts: `DATA_DIR/tts-cache/<key>.ulaw`, raw
 * 8 kHz μ-law, one file per (voice, text, format). Files are written to a
 * temporary name and renamed (a crash never leaves half a prompt under a real
 * name), and the directory is kept under `maxBytes` by dropping the least
 * recently used files. Recently used prompts are also kept in memory (a few
 * MB), so playing a prompt does not touch the disk. A disk that cannot be
 * written leaves the cache working from memory, with one warning.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, statSync, unlinkSync } from 'node:fs';
import { rename, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import { TTS_FORMAT } from './port.js';

/** A cache key: 64 lowercase hex characters. */
export const CACHE_KEY = /^[0-9a-f]{64}$/;
const SUFFIX = '.ulaw';
/** Audio kept in memory besides the disk (the prompts in use). */
const MEMORY_BYTES = 4 * 1024 * 1024;

export interface TtsCacheOptions {
  /** The cache directory (created if missing); undefined keeps prompts in memory only. */
  dir?: string;
  /** Most bytes kept on disk. */
  maxBytes: number;
  log: Logger;
}

interface Entry {
  size: number;
  usedAt: number;
}

export class TtsCache {
  readonly dir: string | undefined;
  readonly #maxBytes: number;
  readonly #log: Logger;
  readonly #index = new Map<string, Entry>();
  /** Most recently used last. */
  readonly #memory = new Map<string, Buffer>();
  #memoryBytes = 0;
  #diskBytes = 0;
  #diskOk = true;
  #tick = 0;

  /** The key of a prompt: voice, text and format, hashed. */
  static key(voice: string, text: string, format: string = TTS_FORMAT): string {
    return createHash('sha256').update(JSON.stringify([format, voice, text])).digest('hex');
  }

  constructor(opts: TtsCacheOptions) {
    this.dir = opts.dir;
    this.#maxBytes = Math.max(0, opts.maxBytes);
    this.#log = opts.log;
    if (this.dir === undefined) {
      this.#diskOk = false;
      return;
    }
    try {
      mkdirSync(this.dir, { recursive: true });
      const files = readdirSync(this.dir);
      const found: Array<{ key: string; size: number; mtime: number }> = [];
      for (const name of files) {
        const path = join(this.dir, name);
        if (name.endsWith('.tmp')) {
          // Left by a crash between write and rename.
          unlinkSync(path);
          continue;
        }
        const key = name.slice(0, -SUFFIX.length);
        if (!name.endsWith(SUFFIX) || !CACHE_KEY.test(key)) continue;
        const st = statSync(path);
        if (st.size === 0) {
          unlinkSync(path);
          continue;
        }
        found.push({ key, size: st.size, mtime: st.mtimeMs });
      }
      found.sort((a, b) => a.mtime - b.mtime);
      for (const f of found) {
        this.#index.set(f.key, { size: f.size, usedAt: ++this.#tick });
        this.#diskBytes += f.size;
      }
      this.#evict();
    } catch (err) {
      this.#diskFailed(err);
    }
  }

  /** Prompts on disk, and their bytes. */
  get stats(): { entries: number; bytes: number } {
    return { entries: this.#index.size, bytes: this.#diskBytes };
  }

  has(key: string): boolean {
    return this.#memory.has(key) || this.#index.has(key);
  }

  /** The audio stored under `key`, or undefined. */
  get(key: string): Buffer | undefined {
    if (!CACHE_KEY.test(key)) return undefined;
    const mem = this.#memory.get(key);
    const entry = this.#index.get(key);
    if (entry !== undefined) entry.usedAt = ++this.#tick;
    if (mem !== undefined) {
      this.#memory.delete(key);
      this.#memory.set(key, mem);
      return mem;
    }
    if (entry === undefined || this.dir === undefined) return undefined;
    let audio: Buffer;
    try {
      audio = readFileSync(join(this.dir, key + SUFFIX));
    } catch {
      // Deleted behind our back: forget it.
      this.#index.delete(key);
      this.#diskBytes -= entry.size;
      return undefined;
    }
    this.#remember(key, audio);
    return audio;
  }

  /** Stores `audio` under `key` (memory at once, disk atomically). Resolves once written (never rejects). */
  async put(key: string, audio: Buffer): Promise<void> {
    if (!CACHE_KEY.test(key) || audio.length === 0) return;
    this.#remember(key, audio);
    if (!this.#diskOk || this.dir === undefined || audio.length > this.#maxBytes) return;
    const path = join(this.dir, key + SUFFIX);
    const tmp = join(this.dir, `${key}.${randomBytes(6).toString('hex')}.tmp`);
    try {
      await writeFile(tmp, audio);
      await rename(tmp, path);
    } catch (err) {
      await unlink(tmp).catch(() => undefined);
      this.#diskFailed(err);
      return;
    }
    const old = this.#index.get(key);
    if (old !== undefined) this.#diskBytes -= old.size;
    this.#index.set(key, { size: audio.length, usedAt: ++this.#tick });
    this.#diskBytes += audio.length;
    this.#evict();
  }

  #remember(key: string, audio: Buffer): void {
    const old = this.#memory.get(key);
    if (old !== undefined) {
      this.#memory.delete(key);
      this.#memoryBytes -= old.length;
    }
    if (audio.length > MEMORY_BYTES) return;
    this.#memory.set(key, audio);
    this.#memoryBytes += audio.length;
    for (const [k, v] of this.#memory) {
      if (this.#memoryBytes <= MEMORY_BYTES) break;
      this.#memory.delete(k);
      this.#memoryBytes -= v.length;
    }
  }

  /** Drops the least recently used files until the directory fits. */
  #evict(): void {
    if (this.#diskBytes <= this.#maxBytes || this.dir === undefined) return;
    const dir = this.dir;
    const byAge = [...this.#index.entries()].sort((a, b) => a[1].usedAt - b[1].usedAt);
    for (const [key, entry] of byAge) {
      if (this.#diskBytes <= this.#maxBytes) break;
      try {
        unlinkSync(join(dir, key + SUFFIX));
      } catch {
        // already gone
      }
      this.#index.delete(key);
      this.#diskBytes -= entry.size;
    }
  }

  #diskFailed(err: unknown): void {
    if (!this.#diskOk) return;
    this.#diskOk = false;
    const code = typeof err === 'object' && err !== null && 'code' in err ? String(err.code) : '';
    this.#log.warn({ dir: this.dir, code, err: err instanceof Error ? err.message : String(err) }, `TTS cache: cannot write ${this.dir}; prompts are kept in memory only (make DATA_DIR writable to keep them across restarts)`);
  }
}
