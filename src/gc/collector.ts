import { randomUUID } from 'node:crypto';
import { hostname } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';

import type { Kysely } from 'kysely';
import type { Logger } from 'pino';

import { isDatabaseUnavailable } from '../metadata/db.js';
import type { Locks } from '../metadata/locks.js';
import type { Dialect } from '../metadata/migrations.js';
import type { Database } from '../metadata/schema.js';
import type { BlobStore } from '../storage/types.js';
import { emptyProgress, GcRuns, type GcPhase, type GcRun, type GcTrigger } from './runs.js';
import {
  markBlobs,
  recoverTombstones,
  sweepBlobs,
  sweepEmptyRepositories,
  sweepOrphanedBlobFiles,
  sweepUntaggedManifests,
  sweepUploads,
  type SweepRun,
} from './sweep.js';

/** Name of the row in the locks table that makes GC runs exclusive across processes. */
export const GC_LOCK = 'gc';

/** Shortest time between two progress writes of a run, unless its phase changes. */
const PROGRESS_INTERVAL_MS = 250;

export interface CollectorOptions {
  db: Kysely<Database>;
  dialect: Dialect;
  store: BlobStore;
  log: Logger;
  locks: Locks;
  /** Blobs created or linked, and manifests pushed, this recently are kept. */
  gracePeriodMs: number;
  /**
   * How long the GC lock outlives a holder that stopped renewing it. A run
   * renews it every third of this.
   */
  lockTtlMs: number;
  /** Values for the run options a caller leaves out. */
  defaults: { deleteUntagged: boolean; uploadMaxAgeMs: number };
  /** Called with each finished run, succeeded or failed, for the audit log. */
  onFinished?: (run: GcRun) => Promise<void>;
}

export interface RunOptions {
  trigger: GcTrigger;
  /** Count what would be deleted without deleting anything. */
  dryRun?: boolean;
  /**
   * Also delete manifests that no tag points at and no index in their
   * repository lists, and referrers whose subject is gone.
   */
  deleteUntagged?: boolean;
  /** Upload sessions and upload files last written longer ago than this are deleted. */
  uploadMaxAgeMs?: number;
}

/** A run could not start because another run has the GC lock. */
export class GcConflictError extends Error {
  constructor(readonly runningId: number | undefined) {
    super(
      runningId === undefined
        ? 'a garbage collection run is already in progress; retry when it has finished'
        : `garbage collection run ${runningId} is in progress; retry when it has finished`,
    );
    this.name = 'GcConflictError';
  }
}

/** A run stopped because the server is shutting down or it lost the GC lock. */
class GcInterruptedError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'GcInterruptedError';
  }
}

/**
 * The GC lock, renewed while a run works. `check` renews it when a third of
 * its time to live has passed and throws once it is lost.
 */
class Lease {
  private renewedAt: number;
  private lost = false;
  private readonly timer: NodeJS.Timeout;

  constructor(
    private readonly locks: Locks,
    readonly holder: string,
    private readonly ttlMs: number,
    private readonly log: Logger,
    acquiredAt: number,
  ) {
    this.renewedAt = acquiredAt;
    // Renews also while a phase waits on one long operation, such as listing
    // a large directory.
    this.timer = setInterval(() => {
      this.renew().catch((error: unknown) =>
        this.log.error({ err: error, holder }, 'failed to renew the garbage collection lock'),
      );
    }, ttlMs / 3);
    this.timer.unref();
  }

  async check(): Promise<void> {
    if (!this.lost && Date.now() - this.renewedAt >= this.ttlMs / 3) await this.renew();
    if (this.lost) {
      throw new GcInterruptedError(
        'lost the garbage collection lock: another process took it after it expired',
      );
    }
  }

  private async renew(): Promise<void> {
    if (this.lost) return;
    const attemptedAt = Date.now();
    if (await this.locks.renew(GC_LOCK, this.holder, this.ttlMs)) {
      this.renewedAt = attemptedAt;
      return;
    }
    this.lost = true;
  }

  close(): void {
    clearInterval(this.timer);
  }
}

/**
 * Online garbage collection: deletes blobs that no manifest references and
 * that were not uploaded or linked within the grace period, while pushes and
 * pulls go on. Optionally deletes untagged manifests first, and always
 * removes abandoned uploads. One run at a time across every process that
 * shares the database, enforced by an expiring lock in the locks table.
 */
export class GarbageCollector {
  private readonly runs: GcRuns;
  private active: { id: number; done: Promise<void>; stopRequested: boolean } | undefined;
  private scheduleTimer: NodeJS.Timeout | undefined;
  private recoveryTimer: NodeJS.Timeout | undefined;
  private recovery: Promise<void> | undefined;
  private stopping = false;

  constructor(private readonly options: CollectorOptions) {
    this.runs = new GcRuns(options.db);
  }

  /**
   * Starts a run in the background and returns its id once the run has the
   * lock. Throws GcConflictError when another run has it.
   */
  async start(options: RunOptions): Promise<number> {
    return (await this.begin(options)).id;
  }

  /** Runs garbage collection to the end and returns the finished run. */
  async run(options: RunOptions): Promise<GcRun> {
    const { id, done } = await this.begin(options);
    await done;
    return (await this.runs.get(id)) as GcRun;
  }

  private async begin(options: RunOptions): Promise<{ id: number; done: Promise<void> }> {
    if (this.stopping)
      throw new Error('garbage collection is stopped because the server is shutting down');
    const { locks, log } = this.options;

    const holder = `${hostname()}:${process.pid}:${randomUUID()}`;
    const acquiredAt = Date.now();
    if (!(await locks.acquire(GC_LOCK, holder, this.options.lockTtlMs))) {
      throw new GcConflictError(await this.runs.running());
    }

    let id: number;
    try {
      const interrupted = await this.runs.failInterrupted();
      if (interrupted > 0) {
        log.warn(
          { count: interrupted },
          'marked garbage collection runs of stopped processes as failed',
        );
      }
      id = await this.runs.create(options.trigger, options.dryRun ?? false);
    } catch (error) {
      await locks.release(GC_LOCK, holder);
      throw error;
    }

    const lease = new Lease(locks, holder, this.options.lockTtlMs, log, acquiredAt);
    const active = { id, done: Promise.resolve(), stopRequested: false };
    active.done = this.execute(id, lease, options, () => active.stopRequested);
    this.active = active;
    return active;
  }

  get(id: number): Promise<GcRun | undefined> {
    return this.runs.get(id);
  }

  /** Lists runs newest first, below `beforeId` when given. */
  list(limit: number, beforeId?: number): Promise<GcRun[]> {
    return this.runs.list(limit, beforeId);
  }

  /**
   * Starts background work: a run every `scheduleMs` (when set), and the
   * recovery of what a crashed run left, as soon as the lock is free.
   */
  startBackground(scheduleMs: number | undefined): void {
    this.recoverInterrupted();
    if (scheduleMs === undefined) return;

    const { log, defaults } = this.options;
    this.scheduleTimer = setInterval(() => {
      this.start({ trigger: 'schedule', ...defaults }).then(
        (id) => log.info({ run: id }, 'scheduled garbage collection started'),
        (error: unknown) => {
          if (error instanceof GcConflictError) {
            log.info(
              { run: error.runningId },
              'scheduled garbage collection skipped: a run is in progress',
            );
            return;
          }
          log.error({ err: error }, 'scheduled garbage collection failed to start');
        },
      );
    }, scheduleMs);
    this.scheduleTimer.unref();
  }

  /** Stops the schedule and any run of this process, and waits for the run to end. */
  async stop(): Promise<void> {
    this.stopping = true;
    clearInterval(this.scheduleTimer);
    clearTimeout(this.recoveryTimer);
    await this.recovery;
    if (!this.active) return;
    this.active.stopRequested = true;
    await this.active.done;
  }

  private async execute(
    id: number,
    lease: Lease,
    options: RunOptions,
    stopRequested: () => boolean,
  ): Promise<void> {
    const { db, dialect, store, log, locks } = this.options;
    const startedAt = Date.now();
    const dryRun = options.dryRun ?? false;
    const deleteUntagged = options.deleteUntagged ?? this.options.defaults.deleteUntagged;
    const uploadMaxAgeMs = options.uploadMaxAgeMs ?? this.options.defaults.uploadMaxAgeMs;
    const progress = emptyProgress();
    let reportedAt = 0;

    const run: SweepRun = {
      db,
      dialect,
      store,
      log,
      runId: id,
      holder: lease.holder,
      dryRun,
      cutoff: startedAt - this.options.gracePeriodMs,
      uploadCutoff: startedAt - uploadMaxAgeMs,
      progress,
      checkpoint: async () => {
        if (stopRequested()) {
          throw new GcInterruptedError('stopped: the server is shutting down');
        }
        await lease.check();
      },
      report: async (phase?: GcPhase) => {
        const changed = phase !== undefined && phase !== progress.phase;
        if (phase !== undefined) progress.phase = phase;
        if (!changed && Date.now() - reportedAt < PROGRESS_INTERVAL_MS) return;
        reportedAt = Date.now();
        await this.runs.updateProgress(id, progress);
      },
    };

    log.info(
      { run: id, trigger: options.trigger, dryRun, deleteUntagged, uploadMaxAgeMs },
      'garbage collection started',
    );
    try {
      await run.report('recovering');
      await recoverTombstones(run);
      if (deleteUntagged) await sweepUntaggedManifests(run);
      await markBlobs(run);
      await sweepBlobs(run);
      await sweepOrphanedBlobFiles(run);
      await sweepUploads(run);
      await sweepEmptyRepositories(run);

      progress.phase = 'done';
      await this.runs.finish(id, 'succeeded', progress, null);
      log.info(
        { run: id, dryRun, durationMs: Date.now() - startedAt, ...progress },
        'garbage collection finished',
      );
    } catch (error) {
      const message = (error as Error).message;
      log.error({ err: error, run: id, phase: progress.phase }, 'garbage collection failed');
      // A run cut off by a database outage records its end once the
      // database is back, so that the next run need not wait for the lock
      // to expire.
      await whileUnavailable(
        () => this.runs.finish(id, 'failed', progress, message),
        this.options.lockTtlMs,
        () => this.stopping,
      ).catch((finishError: unknown) =>
        log.error(
          { err: finishError, run: id },
          'failed to record the end of a garbage collection run',
        ),
      );
    } finally {
      lease.close();
      await whileUnavailable(
        () => locks.release(GC_LOCK, lease.holder),
        this.options.lockTtlMs,
        () => this.stopping,
      ).catch((error: unknown) =>
        log.error({ err: error, run: id }, 'failed to release the garbage collection lock'),
      );
      if (this.active?.id === id) this.active = undefined;
    }

    const finished = await this.runs.get(id).catch(() => undefined);
    if (finished && this.options.onFinished) {
      await this.options
        .onFinished(finished)
        .catch((error: unknown) =>
          log.error({ err: error, run: id }, 'failed to report a finished garbage collection run'),
        );
    }
  }

  /**
   * Marks runs of crashed processes as failed and deletes the files of their
   * tombstones, which block uploads of the same digests until then. Retries
   * after the lock's time to live while another holder has the lock.
   */
  private recoverInterrupted(): void {
    const { db, locks, log, lockTtlMs } = this.options;
    const attempt = async () => {
      const pending = await db
        .selectFrom('blob_tombstones')
        .select('digest')
        .limit(1)
        .executeTakeFirst();
      const running = await this.runs.running();
      if (!pending && running === undefined) return;
      if (this.active || this.stopping) return;

      const holder = `${hostname()}:${process.pid}:${randomUUID()}`;
      const acquiredAt = Date.now();
      if (!(await locks.acquire(GC_LOCK, holder, lockTtlMs))) {
        this.recoveryTimer = setTimeout(run, lockTtlMs + 1000);
        this.recoveryTimer.unref();
        return;
      }
      const lease = new Lease(locks, holder, lockTtlMs, log, acquiredAt);
      try {
        const interrupted = await this.runs.failInterrupted();
        const progress = emptyProgress();
        await recoverTombstones({
          db,
          dialect: this.options.dialect,
          store: this.options.store,
          log,
          runId: 0,
          holder,
          dryRun: false,
          cutoff: 0,
          uploadCutoff: 0,
          progress,
          checkpoint: () => lease.check(),
          report: async () => undefined,
        });
        log.info(
          { interruptedRuns: interrupted, tombstones: progress.tombstones_recovered },
          'recovered from interrupted garbage collection runs',
        );
      } finally {
        lease.close();
        await locks.release(GC_LOCK, holder);
      }
    };
    const run = () => {
      this.recovery = attempt().catch((error: unknown) =>
        log.error({ err: error }, 'failed to recover from interrupted garbage collection runs'),
      );
    };
    run();
  }
}

/** Pause between attempts of whileUnavailable. */
const UNAVAILABLE_RETRY_MS = 2_000;

/**
 * Runs `write`, and again every 2 s while the database is unavailable, for up
 * to `limitMs` and until `stopping` returns true, as at shutdown.
 */
async function whileUnavailable(
  write: () => Promise<unknown>,
  limitMs: number,
  stopping: () => boolean,
): Promise<void> {
  const deadline = Date.now() + limitMs;
  for (;;) {
    try {
      await write();
      return;
    } catch (error) {
      const retry =
        isDatabaseUnavailable(error) &&
        !stopping() &&
        Date.now() + UNAVAILABLE_RETRY_MS <= deadline;
      if (!retry) throw error;
      await sleep(UNAVAILABLE_RETRY_MS);
    }
  }
}
