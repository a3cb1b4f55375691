/**
 * What the pieces of the outbound engine share: the stores, the carrier, the
 * capacity holder, the clock, and a way to wake the dial loop. Built once by
 * the {@link OutboundService} facade.
 */
import type { Logger } from 'pino';
import type { CallEvents } from '../events/callEvents.js';
import type { SessionManager } from '../session/manager.js';
import type { CampaignRow, CampaignStore } from '../store/campaigns.js';
import type { CallRow, CallStore } from '../store/calls.js';
import type { Attempts } from './attempts.js';
import type { Dialer } from './dialer.js';
import { campaignSettingsSchema, type CampaignSettings } from './settings.js';

export interface OutboundContext {
  calls: CallStore;
  campaigns: CampaignStore;
  dialer: Dialer;
  manager: SessionManager;
  attempts: Attempts;
  log: Logger;
  now(): number;
  /** Wakes the dial loop now (new work, a slot freed, a dial answered). */
  kick(): void;
  /** Wakes the dial loop in `ms`. */
  wakeIn(ms: number): void;
  /** Ring time of API calls (campaigns have their own). */
  ringTimeoutS: number;
  /** A store write failed (counted in `playline_store_errors_total`). */
  onStoreError(op: string, err: unknown): void;
  /** Live `call.*` events, when published. */
  callEvents?: CallEvents | undefined;
  /** A campaign's progress changed (coalesced into `campaign.progress`, at most 1/s). */
  campaignChanged(campaignId: string): void;
}

/** A campaign's settings with their defaults (the stored JSON is validated again, never cast). */
export function settingsOf(campaign: CampaignRow<unknown>): CampaignSettings {
  return campaignSettingsSchema.parse(campaign.settings);
}

/** Ring time of the call's attempt: its campaign's, else the API default. */
export async function ringLimitS(ctx: Pick<OutboundContext, 'campaigns' | 'ringTimeoutS'>, row: CallRow): Promise<number> {
  if (row.campaignId !== null) {
    const c = await ctx.campaigns.get(row.campaignId);
    if (c !== undefined) return settingsOf(c).ringTimeoutSeconds;
  }
  return ctx.ringTimeoutS;
}
