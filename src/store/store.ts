/**
 * The records of a bridge behind one interface: calls (with their events,
 * transcripts, recording metadata and idempotency keys), campaigns (with
 * contacts and the do-not-call list) and webhook deliveries.
 *
 * Two backends: SQLite in DATA_DIR (the default, one process or several on
 * one host sharing the file) and Postgres when DATABASE_URL is set (several
 * processes on several hosts). Both keep the same meaning; the behavioural
 * tests in `test/store.contract.test.ts` run against both.
 */
import { SqliteCampaignStore, type CampaignStore } from './campaigns.js';
import { SqliteCallStore, type CallStore } from './calls.js';
import type { Db } from './db.js';
import { SqliteWebhookDeliveryStore, type WebhookDeliveryStore } from './webhookDeliveries.js';

export interface Store {
  readonly backend: 'sqlite' | 'postgres';
  readonly calls: CallStore;
  readonly campaigns: CampaignStore;
  readonly webhooks: WebhookDeliveryStore;
  /** Closes the connection (or pool); idempotent. */
  close(): Promise<void>;
}

/** The SQLite store on an open database (`openDataDir`, `openDb`). `close` closes `db` unless `keepOpen`. */
export function sqliteStore(db: Db, opts: { keepOpen?: boolean } = {}): Store {
  let closed = false;
  return {
    backend: 'sqlite',
    calls: new SqliteCallStore(db),
    campaigns: new SqliteCampaignStore(db),
    webhooks: new SqliteWebhookDeliveryStore(db),
    async close() {
      if (closed) return;
      closed = true;
      if (opts.keepOpen !== true && db.open) db.close();
    },
  };
}
