import { sql, type Kysely } from 'kysely';
import type { Logger } from 'pino';

import { runTransaction } from '../metadata/db.js';
import type { Dialect } from '../metadata/migrations.js';
import type { Database } from '../metadata/schema.js';
import { isDigest, parseDigest } from '../registry/digest.js';
import { deleteRepositoryIfEmpty, repositoryIsEmpty } from '../registry/repositories.js';
import type { BlobStore } from '../storage/types.js';
import type { GcPhase, GcProgress } from './runs.js';
import { insertTombstones, lockDigests, removeTombstones, STALE_COMMIT_MS } from './tombstones.js';

/**
 * Rows each transaction of a sweep examines. Small, because every request
 * of the process waits for the database while a transaction is open.
 */
export const BATCH_SIZE = 100;

/**
 * Ids that one query scans at most. better-sqlite3 runs queries on the
 * event loop, so a query over every row would stall all requests while
 * it runs.
 */
const SCAN_WINDOW = 2000;

/** Upload keys the registry creates: random UUIDs. Other files in uploads/ are not uploads. */
const UPLOAD_KEY = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

/** The state one run's phases share. */
export interface SweepRun {
  db: Kysely<Database>;
  dialect: Dialect;
  store: BlobStore;
  log: Logger;
  runId: number;
  /** The GC lock holder; tombstones carry it. */
  holder: string;
  dryRun: boolean;
  /** Blobs and manifests created, and links made, at or after this time (epoch ms) are kept. */
  cutoff: number;
  /** Upload sessions and upload files last written before this time (epoch ms) are abandoned. */
  uploadCutoff: number;
  progress: GcProgress;
  /**
   * Renews the GC lock when due. Called between batches and right before
   * files are deleted, it throws when the run must stop or has lost the lock.
   */
  checkpoint(): Promise<void>;
  /** Stores the progress, at most a few times a second unless the phase changes. */
  report(phase?: GcPhase): Promise<void>;
}

type Executor = Kysely<Database>;

/**
 * Walks row ids from 1 to the largest id at the start, one window of
 * SCAN_WINDOW ids at a time. Rows added later are newer than the run's
 * cutoff, so no phase needs them.
 */
class IdWindows {
  afterId = 0;

  constructor(private readonly maxId: number) {}

  get end(): number {
    return Math.min(this.afterId + SCAN_WINDOW, this.maxId);
  }

  get done(): boolean {
    return this.afterId >= this.maxId;
  }

  /** Moves past a batch: within the window when the batch was full, else to the window's end. */
  advance(batch: Array<{ id: number }>, limit: number): void {
    const last = batch[batch.length - 1];
    this.afterId = batch.length >= limit && last ? last.id : this.end;
  }
}

async function maxId(db: Executor, table: 'blobs' | 'manifests' | 'repositories'): Promise<number> {
  const row = await db
    .selectFrom(table)
    .select((eb) => eb.fn.max<number | null>('id').as('max'))
    .executeTakeFirst();
  return Number(row?.max ?? 0);
}

/**
 * Deletes the files of tombstones that a crashed or stopped run left, then
 * the tombstones, and drops blob_commits rows older than STALE_COMMIT_MS.
 * Only the GC lock holder may call it. A tombstone means that no row exists
 * for its digest and that no upload stores the digest until it is removed.
 */
export async function recoverTombstones(run: SweepRun): Promise<void> {
  if (run.dryRun) return;
  for (;;) {
    await run.checkpoint();
    const rows = await run.db
      .selectFrom('blob_tombstones')
      .select('digest')
      .where('holder', '!=', run.holder)
      .orderBy('digest')
      .limit(BATCH_SIZE)
      .execute();
    if (rows.length === 0) break;

    const digests = rows.map((row) => row.digest);
    await deleteFiles(run, digests);
    await run.db
      .deleteFrom('blob_tombstones')
      .where('digest', 'in', digests)
      .where('holder', '!=', run.holder)
      .execute();
    run.progress.tombstones_recovered += digests.length;
    run.log.info(
      { run: run.runId, count: digests.length },
      'deleted the files of tombstones that an interrupted run left',
    );
    await run.report();
  }

  // NOTE: a process stalled for longer than STALE_COMMIT_MS between storing
  // a blob's file and recording its row could lose the file here.
  const stale = await run.db
    .deleteFrom('blob_commits')
    .where('started_at', '<', Date.now() - STALE_COMMIT_MS)
    .executeTakeFirst();
  if (stale.numDeletedRows > 0n) {
    run.log.warn(
      { run: run.runId, count: Number(stale.numDeletedRows) },
      'removed blob_commits rows that crashed uploads left',
    );
  }
}

/**
 * Deletes manifests that no tag points at, that no index in their repository
 * lists, that were pushed before the cutoff, and that are either not
 * referrers or referrers whose subject is not in the repository. Deleting an
 * index or a subject can make its children or referrers deletable, so a real
 * run repeats until a pass deletes nothing. A dry run makes one pass, so it
 * counts only the first level.
 *
 * NOTE: pushing an existing manifest again does not change its created_at,
 * so an old untagged manifest that a client pushes again by digest, to list
 * it in an index it pushes next, can be deleted in between. The index push
 * then fails with MANIFEST_BLOB_UNKNOWN until the client pushes the manifest
 * again.
 */
export async function sweepUntaggedManifests(run: SweepRun): Promise<void> {
  await run.report('manifests');
  for (;;) {
    let deletedInPass = 0;
    const windows = new IdWindows(await maxId(run.db, 'manifests'));
    while (!windows.done) {
      await run.checkpoint();
      const batch = await runTransaction(run.db, async (trx) => {
        const candidates = await untaggedManifests(trx, run.cutoff)
          .where('m.id', '>', windows.afterId)
          .where('m.id', '<=', windows.end)
          .orderBy('m.id')
          .limit(BATCH_SIZE)
          .execute();
        if (run.dryRun || candidates.length === 0) return { candidates, deleted: candidates };

        let deleted = candidates;
        if (run.dialect === 'postgres') {
          // A push that tags one of these manifests, or lists it in an index,
          // holds a lock on its row until it commits. Locking the rows waits
          // for such pushes, and the select after it reads what they added.
          const ids = candidates.map((row) => row.id);
          await trx
            .selectFrom('manifests')
            .select('id')
            .where('id', 'in', ids)
            .forUpdate()
            .execute();
          deleted = await untaggedManifests(trx, run.cutoff).where('m.id', 'in', ids).execute();
          if (deleted.length === 0) return { candidates, deleted };
        }
        // manifest_references rows go with the manifest (ON DELETE CASCADE).
        await trx
          .deleteFrom('manifests')
          .where(
            'id',
            'in',
            deleted.map((row) => row.id),
          )
          .execute();
        return { candidates, deleted };
      });
      windows.advance(batch.candidates, BATCH_SIZE);
      const rows = batch.deleted;
      if (rows.length === 0) continue;

      deletedInPass += rows.length;
      run.progress.manifests_deleted += rows.length;
      for (const row of rows) {
        run.log.debug(
          { run: run.runId, repository: row.repository, digest: row.digest, dryRun: run.dryRun },
          'untagged manifest deleted',
        );
      }
      await run.report();
    }
    if (run.dryRun || deletedInPass === 0) return;
  }
}

/**
 * Manifests that nothing keeps: created before the cutoff, without a tag, not
 * listed in an index of their repository, and not referring to a subject
 * that is stored.
 */
function untaggedManifests(db: Executor, cutoff: number) {
  return db
    .selectFrom('manifests as m')
    .innerJoin('repositories as r', 'r.id', 'm.repository_id')
    .select(['m.id', 'm.digest', 'r.name as repository'])
    .where('m.created_at', '<', cutoff)
    .where((eb) =>
      eb.not(
        eb.exists(
          eb
            .selectFrom('tags')
            .select(sql`1`.as('one'))
            .whereRef('tags.manifest_id', '=', 'm.id'),
        ),
      ),
    )
    .where((eb) =>
      eb.not(
        eb.exists(
          eb
            .selectFrom('manifest_references as ref')
            .innerJoin('manifests as parent', 'parent.id', 'ref.manifest_id')
            .select(sql`1`.as('one'))
            .where('ref.kind', '=', 'manifest')
            .whereRef('ref.digest', '=', 'm.digest')
            .whereRef('parent.repository_id', '=', 'm.repository_id'),
        ),
      ),
    )
    .where((eb) =>
      eb.or([
        eb('m.subject_digest', 'is', null),
        eb.not(
          eb.exists(
            eb
              .selectFrom('manifests as subject')
              .select(sql`1`.as('one'))
              .whereRef('subject.repository_id', '=', 'm.repository_id')
              .whereRef('subject.digest', '=', 'm.subject_digest'),
          ),
        ),
      ]),
    );
}

/**
 * Blobs that nothing keeps: no manifest references them (by row or by
 * digest), the blob row and every repository link are older than the
 * cutoff, and no upload is committing the digest.
 */
function unusedBlobs(db: Executor, cutoff: number) {
  return db
    .selectFrom('blobs as b')
    .where('b.created_at', '<', cutoff)
    .where((eb) =>
      eb.not(
        eb.exists(
          eb
            .selectFrom('manifest_references as ref')
            .select(sql`1`.as('one'))
            .whereRef('ref.blob_id', '=', 'b.id'),
        ),
      ),
    )
    .where((eb) =>
      eb.not(
        eb.exists(
          eb
            .selectFrom('manifest_references as ref')
            .select(sql`1`.as('one'))
            .whereRef('ref.digest', '=', 'b.digest'),
        ),
      ),
    )
    .where((eb) =>
      eb.not(
        eb.exists(
          eb
            .selectFrom('repository_blobs as link')
            .select(sql`1`.as('one'))
            .whereRef('link.blob_id', '=', 'b.id')
            .where('link.created_at', '>=', cutoff),
        ),
      ),
    )
    .where((eb) =>
      eb.not(
        eb.exists(
          eb
            .selectFrom('blob_commits as commit')
            .select(sql`1`.as('one'))
            .whereRef('commit.digest', '=', 'b.digest'),
        ),
      ),
    );
}

/** Counts blob rows and the live ones among them, for the progress report. */
export async function markBlobs(run: SweepRun): Promise<void> {
  await run.report('marking');
  const windows = new IdWindows(await maxId(run.db, 'blobs'));
  while (!windows.done) {
    await run.checkpoint();
    const total = await run.db
      .selectFrom('blobs as b')
      .select((eb) => eb.fn.countAll<number>().as('count'))
      .where('b.id', '>', windows.afterId)
      .where('b.id', '<=', windows.end)
      .executeTakeFirstOrThrow();
    const unused = await unusedBlobs(run.db, run.cutoff)
      .select((eb) => eb.fn.countAll<number>().as('count'))
      .where('b.id', '>', windows.afterId)
      .where('b.id', '<=', windows.end)
      .executeTakeFirstOrThrow();
    run.progress.blobs_total += Number(total.count);
    run.progress.blobs_marked += Number(total.count) - Number(unused.count);
    windows.advance([], BATCH_SIZE);
    await run.report();
  }
}

/**
 * Deletes unused blobs in batches: step G1 (rows and tombstones, in one
 * transaction that selects the batch and so re-checks every condition),
 * G2 (files) and G3 (tombstones). tombstones.ts has the argument for why an
 * upload of the same content at the same time cannot lose its bytes.
 */
export async function sweepBlobs(run: SweepRun): Promise<void> {
  await run.report('blobs');
  const windows = new IdWindows(await maxId(run.db, 'blobs'));
  while (!windows.done) {
    await run.checkpoint();
    const batch = await runTransaction(run.db, async (trx) => {
      const candidates = await unusedBlobs(trx, run.cutoff)
        .select(['b.id', 'b.digest', 'b.size'])
        .where('b.id', '>', windows.afterId)
        .where('b.id', '<=', windows.end)
        .orderBy('b.id')
        .limit(BATCH_SIZE)
        .execute();
      if (run.dryRun || candidates.length === 0) return { candidates, deleted: candidates };

      await lockDigests(
        trx,
        run.dialect,
        candidates.map((row) => row.digest),
      );
      // On SQLite this re-select returns the same rows; on PostgreSQL it
      // re-checks them under the advisory locks.
      const deleted = await unusedBlobs(trx, run.cutoff)
        .select(['b.id', 'b.digest', 'b.size'])
        .where(
          'b.id',
          'in',
          candidates.map((row) => row.id),
        )
        .execute();
      if (deleted.length === 0) return { candidates, deleted };

      const ids = deleted.map((row) => row.id);
      await trx.deleteFrom('repository_blobs').where('blob_id', 'in', ids).execute();
      await trx.deleteFrom('blobs').where('id', 'in', ids).execute();
      await insertTombstones(
        trx,
        deleted.map((row) => row.digest),
        run.holder,
      );
      return { candidates, deleted };
    });
    windows.advance(batch.candidates, BATCH_SIZE);
    if (batch.candidates.length === 0) continue;

    const digests = batch.deleted.map((row) => row.digest);
    if (!run.dryRun) {
      await deleteFiles(run, digests);
      await removeTombstones(run.db, digests, run.holder);
    }
    run.progress.blobs_deleted += batch.deleted.length;
    run.progress.bytes_freed += batch.deleted.reduce((sum, row) => sum + row.size, 0);
    run.log.debug({ run: run.runId, digests, dryRun: run.dryRun }, 'unused blobs deleted');
    await run.report();
  }
}

/**
 * Deletes blob files that have no row, no upload committing them and no
 * tombstone, using the same tombstone steps as sweepBlobs. Such files come
 * from a crash between storing a file and recording its row, or from a file
 * deletion that failed.
 */
export async function sweepOrphanedBlobFiles(run: SweepRun): Promise<void> {
  await run.report('orphaned blob files');
  let batch: string[] = [];
  for await (const name of run.store.list()) {
    if (!isDigest(name)) {
      run.log.warn(
        { run: run.runId, file: name },
        'skipping a blob file whose name is not a valid digest',
      );
      continue;
    }
    batch.push(name);
    if (batch.length >= BATCH_SIZE) {
      await deleteOrphanedBlobFiles(run, batch);
      batch = [];
    }
  }
  if (batch.length > 0) await deleteOrphanedBlobFiles(run, batch);
}

async function deleteOrphanedBlobFiles(run: SweepRun, digests: string[]): Promise<void> {
  await run.checkpoint();
  const orphans = await runTransaction(run.db, async (trx) => {
    await lockDigests(trx, run.dialect, digests);
    const known = new Set<string>();
    const queries = [
      trx.selectFrom('blobs').select('digest').where('digest', 'in', digests),
      trx.selectFrom('blob_commits').select('digest').where('digest', 'in', digests),
      trx.selectFrom('blob_tombstones').select('digest').where('digest', 'in', digests),
    ];
    for (const query of queries) {
      for (const row of await query.execute()) known.add(row.digest);
    }
    const found = digests.filter((digest) => !known.has(digest));
    if (!run.dryRun) await insertTombstones(trx, found, run.holder);
    return found;
  });
  if (orphans.length === 0) return;

  let bytes = 0;
  for (const digest of orphans) bytes += (await run.store.stat(parseDigest(digest)))?.size ?? 0;
  if (!run.dryRun) {
    await deleteFiles(run, orphans);
    await removeTombstones(run.db, orphans, run.holder);
  }
  run.progress.orphaned_blob_files_deleted += orphans.length;
  run.progress.bytes_freed += bytes;
  run.log.info(
    { run: run.runId, digests: orphans, dryRun: run.dryRun },
    'blob files without a row deleted',
  );
  await run.report();
}

/**
 * Deletes upload sessions last written before the upload cutoff (rows, then
 * data), then upload files older than the cutoff that belong to no session
 * and no blob commit.
 */
export async function sweepUploads(run: SweepRun): Promise<void> {
  await run.report('uploads');
  let afterId = '';
  for (;;) {
    await run.checkpoint();
    const batch = await runTransaction(run.db, async (trx) => {
      const abandoned = await trx
        .selectFrom('uploads as u')
        .select(['u.id', 'u.storage_key', 'u.repository_id'])
        .where('u.updated_at', '<', run.uploadCutoff)
        .where('u.id', '>', afterId)
        .where((eb) => eb.or([eb('u.holder', 'is', null), eb('u.held_until', '<', Date.now())]))
        .where((eb) =>
          eb.not(
            eb.exists(
              eb
                .selectFrom('blob_commits as commit')
                .select(sql`1`.as('one'))
                .whereRef('commit.storage_key', '=', 'u.storage_key'),
            ),
          ),
        )
        .orderBy('u.id')
        .limit(BATCH_SIZE)
        .execute();
      if (run.dryRun || abandoned.length === 0) return { abandoned, deleted: abandoned };

      // A request may have taken hold of a session since the select (on
      // PostgreSQL, which does not lock the rows it read), so the delete
      // checks the hold again and only what it deleted counts.
      const deletedIds = new Set(
        (
          await trx
            .deleteFrom('uploads')
            .where(
              'id',
              'in',
              abandoned.map((row) => row.id),
            )
            .where((eb) => eb.or([eb('holder', 'is', null), eb('held_until', '<', Date.now())]))
            .returning('id')
            .execute()
        ).map((row) => row.id),
      );
      // As when a client cancels: a repository that only the session created goes too.
      for (const repositoryId of new Set(abandoned.map((row) => row.repository_id))) {
        await deleteRepositoryIfEmpty(trx, run.dialect, repositoryId);
      }
      return { abandoned, deleted: abandoned.filter((row) => deletedIds.has(row.id)) };
    });
    if (batch.abandoned.length === 0) break;
    afterId = batch.abandoned[batch.abandoned.length - 1]!.id;

    const { deleted } = batch;
    if (!run.dryRun) {
      await Promise.all(deleted.map((row) => abortUpload(run, row.storage_key)));
    }
    run.progress.uploads_deleted += deleted.length;
    run.log.info(
      { run: run.runId, uploads: deleted.map((row) => row.id), dryRun: run.dryRun },
      'abandoned upload sessions deleted',
    );
    await run.report();
  }

  let batch: string[] = [];
  for await (const upload of run.store.listUploads()) {
    if (!UPLOAD_KEY.test(upload.key) || upload.modifiedAt >= run.uploadCutoff) continue;
    batch.push(upload.key);
    if (batch.length >= BATCH_SIZE) {
      await deleteOrphanedUploadFiles(run, batch);
      batch = [];
    }
  }
  if (batch.length > 0) await deleteOrphanedUploadFiles(run, batch);
}

/**
 * Deletes repositories that contain nothing any more: no manifest, blob link
 * or upload session, as after their tags were deleted and swept. The catalog
 * already leaves them out, and this removes them from the admin API's list.
 */
export async function sweepEmptyRepositories(run: SweepRun): Promise<void> {
  await run.report('repositories');
  const windows = new IdWindows(await maxId(run.db, 'repositories'));
  while (!windows.done) {
    await run.checkpoint();
    const batch = await runTransaction(run.db, async (trx) => {
      const candidates = await trx
        .selectFrom('repositories')
        .select(['id', 'name'])
        .where('id', '>', windows.afterId)
        .where('id', '<=', windows.end)
        .where('created_at', '<', run.cutoff)
        .where(repositoryIsEmpty)
        .orderBy('id')
        .limit(BATCH_SIZE)
        .execute();
      if (run.dryRun) return { candidates, deleted: candidates };
      const deleted: typeof candidates = [];
      for (const row of candidates) {
        if (await deleteRepositoryIfEmpty(trx, run.dialect, row.id)) deleted.push(row);
      }
      return { candidates, deleted };
    });
    windows.advance(batch.candidates, BATCH_SIZE);
    if (batch.deleted.length === 0) continue;

    run.progress.repositories_deleted += batch.deleted.length;
    run.log.info(
      {
        run: run.runId,
        repositories: batch.deleted.map((row) => row.name),
        dryRun: run.dryRun,
      },
      'empty repositories deleted',
    );
    await run.report();
  }
}

async function deleteOrphanedUploadFiles(run: SweepRun, keys: string[]): Promise<void> {
  await run.checkpoint();
  const known = new Set<string>();
  const sessions = await run.db
    .selectFrom('uploads')
    .select('storage_key')
    .where('storage_key', 'in', keys)
    .execute();
  const commits = await run.db
    .selectFrom('blob_commits')
    .select('storage_key')
    .where('storage_key', 'in', keys)
    .execute();
  for (const row of [...sessions, ...commits]) known.add(row.storage_key);

  const orphans = keys.filter((key) => !known.has(key));
  if (orphans.length === 0) return;
  if (!run.dryRun) await Promise.all(orphans.map((key) => abortUpload(run, key)));
  run.progress.upload_files_deleted += orphans.length;
  run.log.info(
    { run: run.runId, uploads: orphans, dryRun: run.dryRun },
    'upload files without a session deleted',
  );
  await run.report();
}

async function abortUpload(run: SweepRun, key: string): Promise<void> {
  try {
    await run.store.abortUpload(key);
  } catch (error) {
    run.log.error({ err: error, run: run.runId, upload: key }, 'failed to delete upload data');
  }
}

/**
 * Step G2: deletes blob files. Checks the GC lock first, so that a run that
 * has lost it stops before deleting a file that a new holder's recovery may
 * have given back to uploads. A failed deletion leaves an orphaned file,
 * which a later run deletes.
 *
 * NOTE: the check relies on time: a process stalled for longer than the
 * lock's time to live between the check and the unlink could still delete a
 * file stored again in the meantime.
 */
async function deleteFiles(run: SweepRun, digests: string[]): Promise<void> {
  await run.checkpoint();
  await Promise.all(
    digests.map(async (value) => {
      if (!isDigest(value)) {
        run.log.warn(
          { run: run.runId, digest: value },
          'skipping a tombstone whose digest is invalid',
        );
        return;
      }
      try {
        await run.store.delete(parseDigest(value));
      } catch (error) {
        run.log.error(
          { err: error, run: run.runId, digest: value },
          'failed to delete a blob file; a later run deletes it as an orphaned file',
        );
      }
    }),
  );
}
