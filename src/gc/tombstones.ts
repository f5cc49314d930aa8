import { setTimeout as sleep } from 'node:timers/promises';

import { sql, type Kysely, type Transaction } from 'kysely';

import { runTransaction } from '../metadata/db.js';
import type { Dialect } from '../metadata/migrations.js';
import { PreparedQuery } from '../metadata/prepared.js';
import type { Database } from '../metadata/schema.js';
import type { CoreContext } from '../registry/core.js';
import type { Digest } from '../registry/digest.js';
import { RegistryError } from '../registry/errors.js';

// Uploads store blob bytes and garbage collection deletes them, concurrently.
// This module keeps one invariant between the two: a blob row never exists
// without its file.
//
// An upload commits digest D in three steps (commitBlob):
//   C1. A transaction that finds no tombstone for D inserts a blob_commits
//       row (D, upload key). While a tombstone exists it waits and retries.
//   C2. The store renames the upload's bytes to D's path, or discards them
//       when D's file exists.
//   C3. A transaction upserts D's row and repository link and deletes the
//       blob_commits row.
// Garbage collection deletes D in three steps (see sweep.ts):
//   G1. A transaction that finds D unreferenced, created and linked before
//       the run's cutoff, and without a blob_commits row deletes D's rows
//       and inserts a tombstone for D.
//   G2. The store deletes D's file.
//   G3. A transaction deletes the tombstone.
//
// C1 and G1 are ordered, because SQLite runs one write transaction at a
// time. If G1 comes first, C1 waits for G3, so C2 runs after G2, finds no
// file and stores the upload's bytes. If C1 comes first, G1 cannot take D
// until C3 has removed the blob_commits row, so the file that C2 kept or
// stored is still there at C3. After C3, G1 can take D only by deleting its
// row before G2 deletes the file. So when any row for D exists, its file does.
//
// A crash between the steps leaves one of three things. A file without a
// row (after C2 or G1) is deleted by the orphaned-file sweep. A blob_commits
// row keeps D until it is older than STALE_COMMIT_MS. A tombstone blocks
// commits of D until the next run, or the next start, deletes the file and
// the tombstone.
//
// Manifest pushes and mounts need none of this. They read D's row inside the
// transaction that references or links it, so they either see the row (and
// G1 later finds the new reference or link) or fail with BLOB_UNKNOWN.
//
// PostgreSQL runs transactions concurrently at READ COMMITTED, so C1 and G1
// could both see the other's row absent. Both therefore take a
// transaction-scoped advisory lock per digest (lockDigests). Manifest pushes
// and mounts take no such lock. On PostgreSQL, a push racing G1 fails on the
// foreign key to blobs, or makes G1 fail on it, and runTransaction runs the
// loser again: the push then finds the blob gone, or G1 finds the reference.

/** How long an upload waits for garbage collection to finish deleting the same digest. */
const COMMIT_WAIT_MS = 30_000;

/**
 * Age past which a blob_commits row counts as left behind by a crashed
 * process. Between C1 and C3 a process only renames and fsyncs one file.
 */
export const STALE_COMMIT_MS = 60 * 60 * 1000;

/**
 * Moves an upload's verified bytes into the blob store as `digest` (C1 to C3
 * above). `record` runs inside the final transaction and inserts the blob's
 * rows. Throws TOOMANYREQUESTS when a tombstone for the digest is still there
 * after COMMIT_WAIT_MS.
 */
export async function commitBlob(
  ctx: CoreContext,
  upload: { key: string; digest: Digest; size: number; synced?: boolean },
  record: (trx: Transaction<Database>) => Promise<void>,
): Promise<void> {
  await claimDigest(ctx, upload.key, upload.digest.value);
  try {
    await ctx.store.commitUpload(upload.key, upload.digest, upload.size, {
      synced: upload.synced ?? false,
    });
    await runTransaction(ctx.db, async (trx) => {
      await record(trx);
      await deleteCommit.execute(trx, upload.key);
    });
  } catch (error) {
    // The blob's file, if C2 stored it, stays as an orphan for the next run.
    await deleteCommit
      .execute(ctx.db, upload.key)
      .catch((cleanupError: unknown) =>
        ctx.log.error(
          { err: cleanupError, digest: upload.digest.value, upload: upload.key },
          'failed to remove the blob_commits row of a failed blob commit',
        ),
      );
    throw error;
  }
}

const selectTombstone = new PreparedQuery((db, digest: string) =>
  db.selectFrom('blob_tombstones').select('digest').where('digest', '=', digest),
);

const upsertCommit = new PreparedQuery((db, key: string, digest: string, startedAt: number) =>
  db
    .insertInto('blob_commits')
    .values({ storage_key: key, digest, started_at: startedAt })
    .onConflict((oc) => oc.column('storage_key').doUpdateSet({ digest, started_at: startedAt })),
);

const deleteCommit = new PreparedQuery((db, key: string) =>
  db.deleteFrom('blob_commits').where('storage_key', '=', key),
);

/** Step C1: records that `key` is committing `digest`, waiting out any tombstone. */
async function claimDigest(ctx: CoreContext, key: string, digest: string): Promise<void> {
  const started = Date.now();
  for (let attempt = 0; ; attempt++) {
    const claimed = await runTransaction(ctx.db, async (trx) => {
      await lockDigests(trx, ctx.dialect, [digest]);
      if (await selectTombstone.first(trx, digest)) return false;
      await upsertCommit.execute(trx, key, digest, Date.now());
      return true;
    });

    const waitedMs = Date.now() - started;
    if (claimed) {
      if (attempt > 0) {
        ctx.log.info(
          { digest, upload: key, waitedMs },
          'blob commit waited for garbage collection to delete the same digest',
        );
      }
      return;
    }
    if (waitedMs > COMMIT_WAIT_MS) {
      ctx.log.warn(
        { digest, upload: key, waitedMs },
        'blob commit gave up waiting for garbage collection to delete the same digest',
      );
      throw new RegistryError(
        'TOOMANYREQUESTS',
        `blob ${digest} is being deleted by garbage collection; retry the upload in a minute`,
        { headers: { 'Retry-After': '60' }, detail: { digest } },
      );
    }
    await sleep(Math.min(5 * 2 ** attempt, 250));
  }
}

/**
 * Serialises transactions that work on the same digests. On SQLite, where
 * write transactions already run one at a time, it does nothing. On
 * PostgreSQL it takes transaction-scoped advisory locks in a fixed order.
 */
export async function lockDigests(
  trx: Transaction<Database>,
  dialect: Dialect,
  digests: string[],
): Promise<void> {
  if (dialect !== 'postgres') return;
  for (const digest of [...new Set(digests)].sort()) {
    await sql`select pg_advisory_xact_lock(hashtextextended(${digest}, 0))`.execute(trx);
  }
}

/** Step G1's last part: tombstones for digests whose rows the transaction deleted. */
export async function insertTombstones(
  trx: Transaction<Database>,
  digests: string[],
  holder: string,
): Promise<void> {
  if (digests.length === 0) return;
  const now = Date.now();
  await trx
    .insertInto('blob_tombstones')
    .values(digests.map((digest) => ({ digest, holder, created_at: now })))
    .onConflict((oc) => oc.column('digest').doNothing())
    .execute();
}

/** Step G3: removes the tombstones `holder` inserted for `digests`. */
export async function removeTombstones(
  db: Kysely<Database>,
  digests: string[],
  holder: string,
): Promise<void> {
  if (digests.length === 0) return;
  await db
    .deleteFrom('blob_tombstones')
    .where('digest', 'in', digests)
    .where('holder', '=', holder)
    .execute();
}
