/**
 * One table of named one-shot timers, so that whatever owns it can release
 * every timer in one call ({@link Timers.clearAll}) from its single close path.
 *
 * Setting a key replaces the timer already under it. A timer forgets its key
 * before its callback runs, so the callback may set the same key again.
 * Cheap enough for per-turn use: no closure is allocated per `set`.
 */
export class Timers<K extends string> {
  readonly #timers = new Map<K, NodeJS.Timeout>();

  /** Runs `fn` in `ms`, replacing any timer already set under `key`. */
  set(key: K, ms: number, fn: () => void): void {
    const old = this.#timers.get(key);
    if (old !== undefined) clearTimeout(old);
    this.#timers.set(key, setTimeout(this.#fire, ms, key, fn));
  }

  /** True while a timer is set under `key`. */
  has(key: K): boolean {
    return this.#timers.has(key);
  }

  clear(key: K): void {
    const t = this.#timers.get(key);
    if (t === undefined) return;
    clearTimeout(t);
    this.#timers.delete(key);
  }

  clearAll(): void {
    for (const t of this.#timers.values()) clearTimeout(t);
    this.#timers.clear();
  }

  /** Timers set now (tests). */
  get size(): number {
    return this.#timers.size;
  }

  readonly #fire = (key: K, fn: () => void): void => {
    this.#timers.delete(key);
    fn();
  };
}
