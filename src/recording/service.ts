/**
 * Call recording: which calls are recorded, starting and finishing each
 * recording (local WAV or Twilio's Recordings API), Twilio's recording status
 * callbacks, serving the audio, and retention.
 *
 * A call is recorded when the first of these that says something says yes:
 * the API call's or campaign's `record`, its number route's (ROUTES_FILE), its
 * agent's (AGENTS_FILE), RECORDING_DEFAULT. Nothing is recorded with
 * RECORDING=off.
 */
import { createReadStream, existsSync, mkdirSync, statSync, unlinkSync } from 'node:fs';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import type { Config } from '../config.js';
import type { CallRoute } from '../session/manager.js';
import type { CallRow, CallStore } from '../store/calls.js';
import { errorMessage } from '../util/errors.js';
import { LocalCallRecording, type CallAudioRecorder } from './localRecording.js';
import type { TwilioRecordingsPort } from './twilioRecordings.js';
import { repairRecordings } from './wavFile.js';
import { hasRecording } from './available.js';

export type RecordingSettings = Config['recording'];

export interface RecordingServiceOptions {
  settings: RecordingSettings;
  calls: CallStore;
  /** The agent's own `record` (AGENTS_FILE), by `provider:id`. */
  agentRecord(agentId: string): boolean | undefined;
  /** Twilio's Recordings API (RECORDING=twilio). */
  twilio?: TwilioRecordingsPort;
  /** Origin Twilio reaches (the status callback URL). */
  publicUrl: string;
  log: Logger;
  now?: () => number;
  /** Clock of the media timeline (ms; tests). */
  mediaClock?: () => number;
}

/** The audio of a recording, ready to stream. */
export type RecordingMedia =
  | { kind: 'file'; path: string; size: number }
  | { kind: 'twilio'; response: Response }
  | { kind: 'none'; why: string };

/** What Twilio's recording status callback says. */
export interface TwilioRecordingStatus {
  callSid: string;
  recordingSid: string;
  status: string;
  url?: string;
  durationS?: number;
  channels?: number;
}

const DAY_MS = 86_400_000;

export class RecordingService {
  readonly settings: RecordingSettings;
  readonly #o: RecordingServiceOptions;
  readonly #log: Logger;
  readonly #now: () => number;
  readonly #live = new Map<string, { callId: string; rec?: CallAudioRecorder }>();
  /** Recordings being finished (their files closed, their records updated). */
  readonly #ending = new Set<Promise<void>>();
  readonly #endingBySid = new Map<string, Promise<void>>();
  #sweepTimer: NodeJS.Timeout | undefined;

  constructor(o: RecordingServiceOptions) {
    this.#o = o;
    this.settings = o.settings;
    this.#log = o.log;
    this.#now = o.now ?? Date.now;
    if (o.settings.backend === 'local') mkdirSync(o.settings.dir, { recursive: true });
  }

  get enabled(): boolean {
    return this.settings.backend !== 'off';
  }

  /** Whether a call on `route` is recorded. */
  wanted(route: Pick<CallRoute, 'agentId' | 'record'>): boolean {
    if (!this.enabled) return false;
    return route.record ?? this.#o.agentRecord(route.agentId) ?? this.settings.byDefault;
  }

  /** The consent announcement a call on `route` gets before its agent speaks, if any. */
  consentFor(route: Pick<CallRoute, 'agentId' | 'record'>): string | undefined {
    return this.settings.consentText !== undefined && this.wanted(route) ? this.settings.consentText : undefined;
  }

  /** Repairs local recordings a crash left with a wrong header (boot). */
  repairAtBoot(): string[] {
    if (this.settings.backend !== 'local' && !existsSync(this.settings.dir)) return [];
    const repaired = repairRecordings(this.settings.dir, (file, err) => this.#log.warn({ file, err: errorMessage(err) }, 'recording: could not repair a file'));
    if (repaired.length > 0) this.#log.warn({ files: repaired.length }, 'recordings left open by a crash were repaired (their audio up to the crash is playable)');
    return repaired;
  }

  /** The file of a call's local recording. */
  pathOf(callId: string): string {
    return join(this.settings.dir, `${callId}.wav`);
  }

  /**
   * A call's media stream started. Local: returns the recorder the media path feeds (a call back
   * from a transfer continues its file). Twilio: asks the Recordings API to record the call (once
   * per call: a call back from a transfer is still being recorded) and returns undefined.
   */
  async begin(callSid: string, route: Pick<CallRoute, 'agentId' | 'record'>, resumed: boolean): Promise<CallAudioRecorder | undefined> {
    if (!this.wanted(route)) return undefined;
    const row = await this.#o.calls.getBySid(callSid);
    if (row === undefined) {
      this.#log.warn({ callSid }, 'recording: the call has no record; not recorded');
      return undefined;
    }
    // Twilio records phone calls; a browser call never reaches Twilio, so it is recorded here.
    if (this.settings.backend === 'twilio' && row.direction !== 'web') {
      if (row.recordingBackend !== 'twilio' || row.recordingStatus === 'failed') await this.#startTwilio(row);
      return undefined;
    }
    const append = resumed && row.recordingBackend === 'local' && existsSync(this.pathOf(row.id));
    // The previous part may still be being finished (its last writes, its header): this one opens the file after it.
    const previous = append ? this.#endingBySid.get(callSid) : undefined;
    const rec = new LocalCallRecording({
      path: this.pathOf(row.id),
      append,
      ...(previous !== undefined ? { after: previous } : {}),
      log: this.#log.child({ callSid, callId: row.id }),
      ...(this.#o.mediaClock !== undefined ? { now: this.#o.mediaClock } : {}),
    });
    // A call back from a transfer is being recorded again: not `completed` until this part is finished too.
    await this.#o.calls.update(row.id, append ? { recordingStatus: 'in-progress' } : { recordingBackend: 'local', recordingStatus: 'in-progress', recordingStartedAt: this.#now() });
    this.#live.set(callSid, { callId: row.id, rec });
    return rec;
  }

  /** The call's stream ended: its local recording is finished and the record says how long it is. */
  end(callSid: string): Promise<void> {
    const live = this.#live.get(callSid);
    if (live?.rec === undefined) return Promise.resolve();
    this.#live.delete(callSid);
    const p: Promise<void> = this.#finish(callSid, live.callId, live.rec).finally(() => {
      this.#ending.delete(p);
      if (this.#endingBySid.get(callSid) === p) this.#endingBySid.delete(callSid);
    });
    this.#ending.add(p);
    this.#endingBySid.set(callSid, p);
    return p;
  }

  async #finish(callSid: string, callId: string, rec: CallAudioRecorder): Promise<void> {
    const live = { callId, rec };
    try {
      const result = await live.rec.close();
      await this.#o.calls.update(live.callId, result === undefined ? { recordingStatus: 'failed' } : { recordingStatus: 'completed', recordingDurationS: Math.round(result.durationS * 10) / 10 });
    } catch (err) {
      this.#log.error({ err, callSid }, 'recording: finishing the file failed');
    }
  }

  /** Finishes every live recording, and waits for those being finished (shutdown, before the database closes). */
  async closeAll(): Promise<void> {
    for (const sid of [...this.#live.keys()]) void this.end(sid);
    await Promise.all([...this.#ending]);
  }

  async #startTwilio(row: CallRow): Promise<void> {
    const port = this.#o.twilio;
    const callSid = row.callSid;
    if (port === undefined || callSid === null) return;
    const callback = `${this.#o.publicUrl}/twilio/recording?callId=${encodeURIComponent(row.id)}`;
    await this.#o.calls.update(row.id, { recordingBackend: 'twilio', recordingStatus: 'starting', recordingStartedAt: this.#now() });
    port.start(callSid, callback).then(
      async ({ sid }) => {
        const now = await this.#o.calls.get(row.id);
        // The status callback may have come first.
        if (now?.recordingSid === null || now?.recordingSid === undefined) await this.#o.calls.update(row.id, { recordingSid: sid, recordingStatus: now?.recordingStatus === 'starting' ? 'in-progress' : (now?.recordingStatus ?? 'in-progress') });
      },
      async (err: unknown) => {
        await this.#o.calls.update(row.id, { recordingStatus: 'failed' });
        this.#log.error({ callSid, err: errorMessage(err) }, 'recording: Twilio refused to record the call (check that the account can record calls)');
      },
    );
  }

  /** Twilio's recording status callback (signed; `callId` from its URL). */
  async onTwilioStatus(callId: string | undefined, s: TwilioRecordingStatus): Promise<boolean> {
    const row = (callId !== undefined ? await this.#o.calls.get(callId) : undefined) ?? (await this.#o.calls.getBySid(s.callSid));
    if (row === undefined || row.callSid !== s.callSid) return false;
    if (row.recordingStatus === 'deleted') return true;
    await this.#o.calls.update(row.id, {
      recordingBackend: 'twilio',
      recordingSid: s.recordingSid,
      recordingStatus: s.status,
      ...(s.url !== undefined ? { recordingUrl: s.url } : {}),
      ...(s.durationS !== undefined ? { recordingDurationS: s.durationS } : {}),
    });
    return true;
  }

  /** The audio of a call's recording: a local file, or Twilio's response (the `Range` passed through). */
  async media(row: CallRow, range: string | undefined): Promise<RecordingMedia> {
    if (!hasRecording(row)) return { kind: 'none', why: 'this call has no recording' };
    if (row.recordingBackend === 'local') {
      const path = this.pathOf(row.id);
      try {
        return { kind: 'file', path, size: statSync(path).size };
      } catch {
        return { kind: 'none', why: 'the recording file is gone from DATA_DIR/recordings' };
      }
    }
    if (this.#o.twilio === undefined || row.recordingSid === null) return { kind: 'none', why: 'Twilio recordings need TWILIO_ACCOUNT_SID and TWILIO_AUTH_TOKEN' };
    if (row.recordingStatus !== 'completed') return { kind: 'none', why: 'Twilio has not finished this recording yet; try again when the call has ended' };
    return { kind: 'twilio', response: await this.#o.twilio.fetchMedia(row.recordingSid, range) };
  }

  /** A read stream over a local file's bytes `[start, end]`. */
  static fileStream(path: string, start: number, end: number): Readable {
    return createReadStream(path, { start, end });
  }

  /**
   * Retention: recordings started more than RECORDING_RETENTION_DAYS ago are deleted (local files,
   * and Twilio's through its API), and their records say so. Returns how many were deleted.
   */
  async sweep(): Promise<number> {
    const days = this.settings.retentionDays;
    if (days <= 0) return 0;
    const before = this.#now() - days * DAY_MS;
    let deleted = 0;
    for (;;) {
      const rows = (await this.#o.calls.recordingsBefore(before, 100)).filter((r) => !(r.callSid !== null && this.#live.has(r.callSid)));
      if (rows.length === 0) break;
      let progressed = false;
      for (const row of rows) {
        // Another process sweeping at the same time may have taken this one.
        if (!(await this.#o.calls.claimRecordingDeletion(row.id, row.recordingStatus))) continue;
        try {
          if (row.recordingBackend === 'local') {
            try {
              unlinkSync(this.pathOf(row.id));
            } catch (err) {
              if (!(err instanceof Error && 'code' in err && err.code === 'ENOENT')) throw err;
            }
          } else if (row.recordingSid !== null) {
            if (this.#o.twilio === undefined) {
              await this.#o.calls.update(row.id, { recordingStatus: row.recordingStatus });
              continue;
            }
            await this.#o.twilio.delete(row.recordingSid);
          }
          await this.#o.calls.clearRecording(row.id);
          deleted++;
          progressed = true;
        } catch (err) {
          // Handed back: the next sweep (of any process) tries again.
          await this.#o.calls.update(row.id, { recordingStatus: row.recordingStatus }).catch(() => undefined);
          this.#log.warn({ callId: row.id, err: errorMessage(err) }, 'recording retention: could not delete a recording; trying again at the next sweep');
        }
      }
      if (!progressed) break;
    }
    if (deleted > 0) this.#log.info({ deleted, olderThanDays: days }, 'recording retention: old recordings deleted');
    return deleted;
  }

  /** Runs the retention sweep now and then every `intervalMs` (default daily). */
  startRetention(intervalMs = DAY_MS): void {
    if (this.settings.retentionDays <= 0 || this.#sweepTimer !== undefined) return;
    const run = (): void => {
      this.sweep().catch((err: unknown) => this.#log.error({ err }, 'recording retention failed'));
    };
    setImmediate(run);
    this.#sweepTimer = setInterval(run, intervalMs);
    this.#sweepTimer.unref();
  }

  dispose(): void {
    if (this.#sweepTimer !== undefined) clearInterval(this.#sweepTimer);
    this.#sweepTimer = undefined;
  }
}

/**
 * With RECORDING=off, an API request asking to record (`record: true` on a call, a browser call, or
 * a campaign's settings) is refused with what to set, instead of being accepted and not recorded.
 */
export function recordingOffRefusal(body: unknown): string | undefined {
  if (typeof body !== 'object' || body === null) return undefined;
  const asks = (o: unknown): boolean => typeof o === 'object' && o !== null && 'record' in o && o.record === true;
  if (asks(body) || ('settings' in body && asks(body.settings))) {
    return 'record: true needs a recording backend: set RECORDING=local (a WAV in DATA_DIR/recordings) or RECORDING=twilio, and restart';
  }
  return undefined;
}
