import { createHash } from 'node:crypto';

import type { Kysely } from 'kysely';
import type { Logger } from 'pino';

import { lockDigests } from '../gc/tombstones.js';
import { runTransaction } from '../metadata/db.js';
import type { Dialect } from '../metadata/migrations.js';
import type { Database } from '../metadata/schema.js';
import { parseDigest, type Digest } from '../registry/digest.js';
import { BlobNotFoundError, type BlobStore } from '../storage/types.js';

/** The findings of fsck and the removals of --repair. */
export interface FsckReport {
  blobsChecked: number;
  bytesChecked: number;
  /** Blobs whose bytes hash to something other than their digest. */
  corrupt: Array<{ digest: string; actual: string }>;
  /** Blob rows whose bytes are missing or have the wrong size. */
  missingBytes: Array<{ digest: string; reason: string; referenced: boolean }>;
  /** Blob files without a row. */
  orphanFiles: string[];
  /** Manifests that reference a blob without bytes or a child manifest that is gone. */
  brokenManifests: Array<{ repository: string; digest: string; missing: string[] }>;
  repaired: { filesRemoved: number; rowsRemoved: number };
  /** True when nothing is wrong (after any repair). */
  clean: boolean;
}

/** Progress while fsck runs: the phase and how far it is. */
export interface FsckProgress {
  phase: 'blobs' | 'files' | 'manifests' | 'repair';
  done: number;
  total: number;
}

/**
 * Checks that database and storage agree: every blob's bytes hash to its
 * digest, every row has bytes, every file has a row, and every manifest's
 * references resolve. With `repair`, it removes orphaned files older than
 * the grace period and blob rows without bytes that nothing references; it
 * never touches a blob a manifest references.
 */
export class Fsck {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly dialect: Dialect,
    private readonly store: BlobStore,
    private readonly log: Logger,
    private readonly gracePeriodMs: number,
  ) {}

  async run(
    options: { repair: boolean },
    onProgress: (progress: FsckProgress) => void = () => undefined,
  ): Promise<FsckReport> {
    const report: FsckReport = {
      blobsChecked: 0,
      bytesChecked: 0,
      corrupt: [],
      missingBytes: [],
      orphanFiles: [],
      brokenManifests: [],
      repaired: { filesRemoved: 0, rowsRemoved: 0 },
      clean: false,
    };

    const rows = await this.db
      .selectFrom('blobs')
      .select(['id', 'digest', 'size'])
      .orderBy('id')
      .execute();
    const referenced = new Set(
      (
        await this.db
          .selectFrom('manifest_references')
          .select('blob_id')
          .where('blob_id', 'is not', null)
          .execute()
      ).map((row) => row.blob_id as number),
    );

    for (const [index, row] of rows.entries()) {
      onProgress({ phase: 'blobs', done: index, total: rows.length });
      const digest = parseDigest(row.digest);
      const problem = await this.checkBlob(digest, row.size);
      report.blobsChecked += 1;
      if (problem === undefined) {
        report.bytesChecked += row.size;
      } else if ('actual' in problem) {
        report.corrupt.push({ digest: row.digest, actual: problem.actual });
      } else {
        report.missingBytes.push({
          digest: row.digest,
          reason: problem.reason,
          referenced: referenced.has(row.id),
        });
      }
    }
    onProgress({ phase: 'blobs', done: rows.length, total: rows.length });

    const known = new Set(rows.map((row) => row.digest));
    const files: string[] = [];
    for await (const digest of this.store.list()) files.push(digest);
    for (const [index, digest] of files.entries()) {
      onProgress({ phase: 'files', done: index, total: files.length });
      if (!known.has(digest)) report.orphanFiles.push(digest);
    }
    onProgress({ phase: 'files', done: files.length, total: files.length });

    report.brokenManifests = await this.checkManifests(
      new Set(
        report.missingBytes
          .map((entry) => entry.digest)
          .concat(report.corrupt.map((entry) => entry.digest)),
      ),
      onProgress,
    );

    if (options.repair) await this.repair(report, onProgress);
    report.clean =
      report.corrupt.length === 0 &&
      report.missingBytes.length === 0 &&
      report.orphanFiles.length === 0 &&
      report.brokenManifests.length === 0;

    this.log.info(
      {
        blobsChecked: report.blobsChecked,
        corrupt: report.corrupt.length,
        missingBytes: report.missingBytes.length,
        orphanFiles: report.orphanFiles.length,
        brokenManifests: report.brokenManifests.length,
        repaired: report.repaired,
      },
      'fsck finished',
    );
    return report;
  }

  /** Re-hashes one blob; returns the problem, or undefined when it is sound. */
  private async checkBlob(
    digest: Digest,
    size: number,
  ): Promise<{ actual: string } | { reason: string } | undefined> {
    const info = await this.store.stat(digest);
    if (!info) return { reason: 'file missing' };
    if (info.size !== size)
      return { reason: `file has ${info.size} bytes, the database says ${size}` };

    const hash = createHash(digest.algorithm);
    try {
      for await (const chunk of await this.store.read(digest)) hash.update(chunk as Buffer);
    } catch (error) {
      if (error instanceof BlobNotFoundError) return { reason: 'file missing' };
      throw error;
    }
    const actual = `${digest.algorithm}:${hash.digest('hex')}`;
    return actual === digest.value ? undefined : { actual };
  }

  /** Finds manifests whose blobs have no sound bytes or whose child manifests are gone. */
  private async checkManifests(
    unsound: Set<string>,
    onProgress: (progress: FsckProgress) => void,
  ): Promise<FsckReport['brokenManifests']> {
    const references = await this.db
      .selectFrom('manifest_references')
      .innerJoin('manifests', 'manifests.id', 'manifest_references.manifest_id')
      .innerJoin('repositories', 'repositories.id', 'manifests.repository_id')
      .select([
        'repositories.name as repository',
        'manifests.repository_id',
        'manifests.digest as manifest',
        'manifest_references.digest',
        'manifest_references.kind',
      ])
      .execute();
    const manifests = new Set(
      (await this.db.selectFrom('manifests').select(['repository_id', 'digest']).execute()).map(
        (row) => `${row.repository_id} ${row.digest}`,
      ),
    );

    const broken = new Map<string, { repository: string; digest: string; missing: string[] }>();
    for (const [index, reference] of references.entries()) {
      if (index % 1000 === 0)
        onProgress({ phase: 'manifests', done: index, total: references.length });
      const missing =
        reference.kind === 'manifest'
          ? !manifests.has(`${reference.repository_id} ${reference.digest}`)
          : unsound.has(reference.digest);
      if (!missing) continue;
      const key = `${reference.repository} ${reference.manifest}`;
      const entry = broken.get(key) ?? {
        repository: reference.repository,
        digest: reference.manifest,
        missing: [],
      };
      entry.missing.push(reference.digest);
      broken.set(key, entry);
    }
    onProgress({ phase: 'manifests', done: references.length, total: references.length });
    return [...broken.values()];
  }

  /** Removes what nothing references: old orphaned files and unreferenced rows without bytes. */
  private async repair(
    report: FsckReport,
    onProgress: (progress: FsckProgress) => void,
  ): Promise<void> {
    const cutoff = Date.now() - this.gracePeriodMs;
    const total = report.orphanFiles.length + report.missingBytes.length;
    let done = 0;

    const keptFiles: string[] = [];
    for (const value of report.orphanFiles) {
      onProgress({ phase: 'repair', done: done++, total });
      const digest = parseDigest(value);
      const info = await this.store.stat(digest);
      // A young file may belong to an upload that is about to record its row.
      const row = await this.db
        .selectFrom('blobs')
        .select('id')
        .where('digest', '=', value)
        .executeTakeFirst();
      if (!info || info.modifiedAt > cutoff || row) {
        keptFiles.push(value);
        continue;
      }
      await this.store.delete(digest);
      report.repaired.filesRemoved += 1;
      this.log.warn({ digest: value }, 'fsck removed a blob file without a database row');
    }
    report.orphanFiles = keptFiles;

    const keptRows: FsckReport['missingBytes'] = [];
    for (const entry of report.missingBytes) {
      onProgress({ phase: 'repair', done: done++, total });
      const outcome = await runTransaction(this.db, async (trx) => {
        // As garbage collection does, so that an upload of the same digest
        // either finishes first or waits for this transaction.
        await lockDigests(trx, this.dialect, [entry.digest]);
        const row = await trx
          .selectFrom('blobs')
          .select('id')
          .where('digest', '=', entry.digest)
          .executeTakeFirst();
        if (!row) return 'gone';
        const reference = await trx
          .selectFrom('manifest_references')
          .select('manifest_id')
          .where('blob_id', '=', row.id)
          .limit(1)
          .executeTakeFirst();
        const committing = await trx
          .selectFrom('blob_commits')
          .select('digest')
          .where('digest', '=', entry.digest)
          .limit(1)
          .executeTakeFirst();
        // The bytes may have come back with an upload since the check.
        if (reference || committing || (await this.store.stat(parseDigest(entry.digest)))) {
          return 'kept';
        }
        await trx.deleteFrom('repository_blobs').where('blob_id', '=', row.id).execute();
        await trx.deleteFrom('blobs').where('id', '=', row.id).execute();
        return 'removed';
      });
      if (outcome === 'removed') {
        report.repaired.rowsRemoved += 1;
        this.log.warn({ digest: entry.digest }, 'fsck removed a blob row whose bytes are missing');
      } else if (outcome === 'kept') {
        keptRows.push(entry);
      }
    }
    report.missingBytes = keptRows;
    onProgress({ phase: 'repair', done: total, total });
  }
}
