import type { Kysely, Selectable } from 'kysely';

import type { Database, GcRunsTable } from '../metadata/schema.js';

/** The source that started a run: the admin API, the CLI or the schedule. */
export type GcTrigger = 'api' | 'cli' | 'schedule';

/** The steps of a run, in order. */
export type GcPhase =
  | 'starting'
  | 'recovering'
  | 'manifests'
  | 'marking'
  | 'blobs'
  | 'orphaned blob files'
  | 'uploads'
  | 'repositories'
  | 'done';

/**
 * Counters of a run, stored as `gc_runs.progress` while it runs and after it
 * ends. In a dry run they count what a real run would delete.
 */
export interface GcProgress {
  phase: GcPhase;
  /** Blob rows when marking began, and how many of them were live. */
  blobs_total: number;
  blobs_marked: number;
  blobs_deleted: number;
  /** Bytes of deleted blob rows and orphaned blob files. */
  bytes_freed: number;
  manifests_deleted: number;
  /** Abandoned upload sessions (rows and data). */
  uploads_deleted: number;
  /** Upload data files without a session, older than the upload age limit. */
  upload_files_deleted: number;
  /** Blob files without a row. */
  orphaned_blob_files_deleted: number;
  /** Tombstones left by a crashed run whose files this run deleted. */
  tombstones_recovered: number;
  /** Repositories left without manifests, blobs or upload sessions. */
  repositories_deleted: number;
}

/** A run as the admin API reports it. */
export interface GcRun {
  id: number;
  trigger: string;
  state: 'running' | 'succeeded' | 'failed';
  dryRun: boolean;
  startedAt: number;
  finishedAt: number | null;
  progress: GcProgress;
  blobsDeleted: number;
  bytesFreed: number;
  manifestsDeleted: number;
  uploadsDeleted: number;
  error: string | null;
}

export function emptyProgress(): GcProgress {
  return {
    phase: 'starting',
    blobs_total: 0,
    blobs_marked: 0,
    blobs_deleted: 0,
    bytes_freed: 0,
    manifests_deleted: 0,
    uploads_deleted: 0,
    upload_files_deleted: 0,
    orphaned_blob_files_deleted: 0,
    tombstones_recovered: 0,
    repositories_deleted: 0,
  };
}

/** The gc_runs table: one row per run, written only by the run that holds the GC lock. */
export class GcRuns {
  constructor(private readonly db: Kysely<Database>) {}

  async create(trigger: GcTrigger, dryRun: boolean): Promise<number> {
    const row = await this.db
      .insertInto('gc_runs')
      .values({
        trigger,
        state: 'running',
        dry_run: dryRun ? 1 : 0,
        started_at: Date.now(),
        progress: JSON.stringify(emptyProgress()),
        blobs_deleted: 0,
        bytes_freed: 0,
        manifests_deleted: 0,
        uploads_deleted: 0,
        finished_at: null,
        error: null,
      })
      .returning('id')
      .executeTakeFirstOrThrow();
    return row.id;
  }

  async updateProgress(id: number, progress: GcProgress): Promise<void> {
    await this.db
      .updateTable('gc_runs')
      .set({ progress: JSON.stringify(progress) })
      .where('id', '=', id)
      .execute();
  }

  /** Records the end of a run with its totals. */
  async finish(
    id: number,
    state: 'succeeded' | 'failed',
    progress: GcProgress,
    error: string | null,
  ): Promise<void> {
    await this.db
      .updateTable('gc_runs')
      .set({
        state,
        finished_at: Date.now(),
        progress: JSON.stringify(progress),
        blobs_deleted: progress.blobs_deleted,
        bytes_freed: progress.bytes_freed,
        manifests_deleted: progress.manifests_deleted,
        uploads_deleted: progress.uploads_deleted,
        error,
      })
      .where('id', '=', id)
      .execute();
  }

  /**
   * Marks every other run still recorded as running as failed. Only the
   * holder of the GC lock may call this, because then no other run is alive.
   */
  async failInterrupted(exceptId?: number): Promise<number> {
    let query = this.db
      .updateTable('gc_runs')
      .set({
        state: 'failed',
        finished_at: Date.now(),
        error: 'interrupted: the process running it stopped before the run finished',
      })
      .where('state', '=', 'running');
    if (exceptId !== undefined) query = query.where('id', '!=', exceptId);
    const result = await query.executeTakeFirst();
    return Number(result.numUpdatedRows);
  }

  async get(id: number): Promise<GcRun | undefined> {
    const row = await this.db
      .selectFrom('gc_runs')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirst();
    return row ? toRun(row) : undefined;
  }

  /** Lists runs newest first, starting below `beforeId` when given. */
  async list(limit: number, beforeId?: number): Promise<GcRun[]> {
    let query = this.db.selectFrom('gc_runs').selectAll().orderBy('id', 'desc').limit(limit);
    if (beforeId !== undefined) query = query.where('id', '<', beforeId);
    return (await query.execute()).map(toRun);
  }

  /** Returns the id of the newest run recorded as running, if any. */
  async running(): Promise<number | undefined> {
    const row = await this.db
      .selectFrom('gc_runs')
      .select('id')
      .where('state', '=', 'running')
      .orderBy('id', 'desc')
      .executeTakeFirst();
    return row?.id;
  }
}

function toRun(row: Selectable<GcRunsTable>): GcRun {
  return {
    id: row.id,
    trigger: row.trigger,
    state: row.state,
    dryRun: row.dry_run === 1,
    startedAt: row.started_at,
    finishedAt: row.finished_at,
    progress: { ...emptyProgress(), ...(JSON.parse(row.progress) as Partial<GcProgress>) },
    blobsDeleted: row.blobs_deleted,
    bytesFreed: row.bytes_freed,
    manifestsDeleted: row.manifests_deleted,
    uploadsDeleted: row.uploads_deleted,
    error: row.error,
  };
}
