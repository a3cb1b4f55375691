/**
 * One transaction at a time on one SQLite connection.
 *
 * better-sqlite3 is synchronous, but the store interface is async: a
 * transaction's body awaits between its statements, and meanwhile other
 * tasks of this process may call the store. Those calls wait here until the
 * transaction ends, so they never land inside it (nor see its uncommitted
 * rows). `BEGIN IMMEDIATE` takes SQLite's write lock at once, so a transaction
 * is also atomic against other processes sharing the file.
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import type { Db } from './db.js';

/** Which gate's transaction the current async context runs inside (if any). */
const inside = new AsyncLocalStorage<SqliteGate>();

export class SqliteGate {
  readonly #db: Db;
  #open: Promise<void> | undefined;

  constructor(db: Db) {
    this.#db = db;
  }

  /** True inside this gate's transaction (its own statements never wait). */
  get inTransaction(): boolean {
    return inside.getStore() === this;
  }

  /**
   * Runs `fn` (synchronous statements) when no transaction of another task is open, with no
   * await between that look and `fn`: it never lands inside another task's transaction.
   */
  async run<T>(fn: () => T): Promise<T> {
    if (!this.inTransaction) while (this.#open !== undefined) await this.#open;
    return fn();
  }

  /** Resolves when no transaction of another task is open on the connection (at once, usually). */
  async idle(): Promise<void> {
    if (this.inTransaction) return;
    while (this.#open !== undefined) await this.#open;
  }

  /**
   * Runs `fn` inside `BEGIN IMMEDIATE … COMMIT` (rolled back if it throws), after any open
   * transaction. Nested in a transaction of this gate: runs `fn` in it.
   */
  async transaction<T>(fn: () => Promise<T>): Promise<T> {
    if (this.inTransaction) return fn();
    // No await between the last look and taking the gate: two tasks never both take it.
    while (this.#open !== undefined) await this.#open;
    let release = (): void => {};
    this.#open = new Promise<void>((resolve) => (release = resolve));
    try {
      this.#db.exec('BEGIN IMMEDIATE');
      try {
        const out = await inside.run(this, fn);
        this.#db.exec('COMMIT');
        return out;
      } catch (err) {
        if (this.#db.inTransaction) this.#db.exec('ROLLBACK');
        throw err;
      }
    } finally {
      this.#open = undefined;
      release();
    }
  }
}

const gates = new WeakMap<Db, SqliteGate>();

/** The gate of a connection: every store object built on the same `Db` shares it. */
export function gateOf(db: Db): SqliteGate {
  let g = gates.get(db);
  if (g === undefined) {
    g = new SqliteGate(db);
    gates.set(db, g);
  }
  return g;
}
