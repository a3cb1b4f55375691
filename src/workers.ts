/**
 * `WORKERS=N`: N bridge processes serving the one port, through Node's cluster module.
 *
 * The primary serves no traffic and opens no database: it forks the workers (the first alone, so
 * the database migrations run once, then the others), replaces a worker that dies unexpectedly
 * (with a growing delay while workers keep dying young), passes SIGTERM/SIGINT on to every worker
 * so each drains its calls (DRAIN_TIMEOUT_S), and exits once they all have.
 *
 * Each worker is a whole bridge (src/main.ts) and a process of the fleet: capacity, stream tokens
 * and call control are shared through REDIS_URL, which config.ts requires when WORKERS > 1.
 */
import cluster, { type Worker } from 'node:cluster';
import type { Logger } from 'pino';

/** The environment variable that gives a worker its slot number (1..N, kept across restarts). */
const SLOT_ENV = 'PLAYLINE_WORKER_SLOT';
/** The message a worker sends its primary once its HTTP server listens. */
const READY_MESSAGE = 'playline:worker-ready';

/** This process' worker slot (1..N) when it is a worker of `WORKERS=N`, else undefined. */
export function workerSlot(): number | undefined {
  if (!cluster.isWorker) return undefined;
  const n = Number(process.env[SLOT_ENV]);
  return Number.isInteger(n) && n > 0 ? n : undefined;
}

/** Tells the primary (if any) that this worker serves; a no-op in a process of its own. */
export function reportWorkerReady(): void {
  if (cluster.isWorker && process.send !== undefined) process.send({ type: READY_MESSAGE });
}

const isReadyMessage = (m: unknown): boolean =>
  typeof m === 'object' && m !== null && 'type' in m && m.type === READY_MESSAGE;

export interface RestartPolicy {
  /** Delay before the first restart of a slot (doubled for each worker of that slot that died young). */
  initialMs: number;
  maxMs: number;
  /** A worker that served this long before dying resets its slot's delay. */
  stableMs: number;
}

export const DEFAULT_RESTART: RestartPolicy = { initialMs: 1000, maxMs: 30_000, stableMs: 60_000 };

/** The delay before restarting a slot whose workers died young `failures` times in a row (1 = first). */
export function restartDelayMs(failures: number, policy: RestartPolicy = DEFAULT_RESTART): number {
  return Math.min(policy.maxMs, policy.initialMs * 2 ** Math.max(0, failures - 1));
}

export interface PrimaryOptions {
  workers: number;
  logger: Logger;
  /** DRAIN_TIMEOUT_S in ms: after a stop signal, workers still running this long plus a margin are killed. */
  drainTimeoutMs: number;
  restart?: RestartPolicy;
}

interface Slot {
  n: number;
  worker: Worker | undefined;
  startedAt: number;
  ready: boolean;
  /** Workers of this slot that died young in a row. */
  failures: number;
  timer: NodeJS.Timeout | undefined;
}

/** Beyond the drain, what a worker may still need (status callback linger, closing). */
const STOP_MARGIN_MS = 15_000;

/**
 * Runs the primary until every worker has stopped; resolves with the exit code for the process
 * (0 after a drained stop, 1 when the workers could not start).
 */
export function runPrimary(opts: PrimaryOptions): Promise<number> {
  const { logger } = opts;
  const policy = opts.restart ?? DEFAULT_RESTART;
  const slots: Slot[] = Array.from({ length: opts.workers }, (_, i) => ({ n: i + 1, worker: undefined, startedAt: 0, ready: false, failures: 0, timer: undefined }));
  let booted = false;
  let stopping: NodeJS.Signals | undefined;
  let failed = false;
  let killTimer: NodeJS.Timeout | undefined;

  return new Promise<number>((resolve) => {
    const live = () => slots.filter((s) => s.worker !== undefined);
    const finish = (code: number) => {
      clearTimeout(killTimer);
      for (const s of slots) clearTimeout(s.timer);
      process.removeListener('SIGTERM', onSignal);
      process.removeListener('SIGINT', onSignal);
      resolve(code);
    };

    const fork = (slot: Slot) => {
      slot.timer = undefined;
      slot.ready = false;
      slot.startedAt = Date.now();
      const worker = cluster.fork({ [SLOT_ENV]: String(slot.n) });
      slot.worker = worker;
      worker.on('message', (m: unknown) => {
        if (!isReadyMessage(m) || slot.worker !== worker) return;
        slot.ready = true;
        logger.info({ worker: slot.n, workerPid: worker.process.pid }, `worker ${slot.n} serving`);
        if (!booted && slot.n === 1 && stopping === undefined && !failed) {
          // The database is migrated: the other workers may start together.
          for (const other of slots.slice(1)) fork(other);
        }
        if (!booted && stopping === undefined && slots.every((s) => s.ready)) {
          booted = true;
          logger.info({ workers: slots.length, primaryPid: process.pid }, `${slots.length} workers serving on one port`);
        }
      });
      // A worker's IPC channel failing (rare) must not crash the primary; its exit follows.
      worker.on('error', (err: Error) => logger.error({ err, worker: slot.n, workerPid: worker.process.pid }, `worker ${slot.n}: ${err.message}`));
      worker.on('exit', (code, signal) => exited(slot, worker, code, signal));
    };

    const exited = (slot: Slot, worker: Worker, code: number | null, signal: string | null) => {
      if (slot.worker !== worker) return;
      slot.worker = undefined;
      const livedMs = Date.now() - slot.startedAt;
      const where = { worker: slot.n, workerPid: worker.process.pid, code, signal, livedMs };
      if (stopping !== undefined || failed) {
        if (code !== 0 && stopping !== undefined) logger.warn(where, `worker ${slot.n} exited while stopping`);
        if (live().length === 0) {
          logger.info({ workers: slots.length }, 'every worker has stopped');
          finish(failed ? 1 : 0);
        }
        return;
      }
      if (!booted) {
        // A worker that cannot start (bad settings, Redis down, port taken) has said why on stderr:
        // the others would fail the same way, so stop instead of retrying forever.
        failed = true;
        logger.error(where, `worker ${slot.n} exited before serving: stopping (its error is above)`);
        for (const s of live()) s.worker?.process.kill('SIGTERM');
        if (live().length === 0) finish(1);
        return;
      }
      slot.failures = livedMs >= policy.stableMs ? 1 : slot.failures + 1;
      const delayMs = restartDelayMs(slot.failures, policy);
      logger.error({ ...where, restartInMs: delayMs }, `worker ${slot.n} exited unexpectedly; starting a new one in ${delayMs} ms`);
      slot.timer = setTimeout(() => fork(slot), delayMs);
    };

    const onSignal = (signal: NodeJS.Signals) => {
      const first = stopping === undefined;
      stopping ??= signal;
      for (const s of slots) {
        clearTimeout(s.timer);
        s.timer = undefined;
      }
      const running = live();
      if (first) {
        logger.info({ signal, workers: running.length, drainTimeoutMs: opts.drainTimeoutMs }, `${signal}: every worker drains its calls, then stops`);
        killTimer = setTimeout(() => {
          for (const s of live()) {
            logger.error({ worker: s.n, workerPid: s.worker?.process.pid }, `worker ${s.n} still running ${opts.drainTimeoutMs + STOP_MARGIN_MS} ms after ${signal}: killing it`);
            s.worker?.process.kill('SIGKILL');
          }
        }, opts.drainTimeoutMs + STOP_MARGIN_MS);
        killTimer.unref();
      }
      // Each worker tells a repeat within 2 s (the same stop, as npm or systemd pass it on) from a
      // later one (end every call now): pass every signal on as it came.
      for (const s of running) s.worker?.process.kill(signal);
      if (running.length === 0) finish(0);
    };
    process.on('SIGTERM', onSignal);
    process.on('SIGINT', onSignal);

    logger.info({ workers: slots.length, primaryPid: process.pid }, `starting ${slots.length} workers`);
    fork(slots[0]!);
  });
}
