import type { Transaction } from 'kysely';

import { PreparedQuery } from '../metadata/prepared.js';
import type { Database } from '../metadata/schema.js';
import { BlobNotFoundError, type BlobReader } from '../storage/types.js';
import type { CoreContext } from './core.js';
import type { Digest } from './digest.js';
import { RegistryError } from './errors.js';
import { findRepositoryId } from './repositories.js';

/** A blob as a repository serves it. */
export interface BlobInfo {
  digest: string;
  size: number;
}

/** Serves, links and unlinks blobs within repositories. */
export class Blobs {
  constructor(private readonly ctx: CoreContext) {}

  /** Returns the blob's size if the repository contains it, and throws BLOB_UNKNOWN otherwise. */
  async stat(repository: string, digest: Digest): Promise<BlobInfo> {
    const row = await this.ctx.db
      .selectFrom('blobs')
      .innerJoin('repository_blobs', 'repository_blobs.blob_id', 'blobs.id')
      .innerJoin('repositories', 'repositories.id', 'repository_blobs.repository_id')
      .select(['blobs.digest', 'blobs.size'])
      .where('repositories.name', '=', repository)
      .where('blobs.digest', '=', digest.value)
      .executeTakeFirst();
    if (!row) throw blobUnknown(repository, digest.value);
    return { digest: row.digest, size: row.size };
  }

  /** Opens the blob's bytes for reading into the caller's buffers. */
  async open(repository: string, digest: Digest): Promise<BlobReader> {
    try {
      return await this.ctx.store.openReader(digest);
    } catch (error) {
      if (!(error instanceof BlobNotFoundError)) throw error;
      throw this.missingBytes(repository, digest);
    }
  }

  /**
   * Throws BLOB_UNKNOWN unless storage has the blob's bytes, so that HEAD
   * agrees with GET. A client that gets 404 uploads the blob again, which puts
   * back bytes that were lost from storage.
   */
  async assertStored(repository: string, digest: Digest): Promise<void> {
    if ((await this.ctx.store.stat(digest)) === undefined) {
      throw this.missingBytes(repository, digest);
    }
  }

  private missingBytes(repository: string, digest: Digest): RegistryError {
    this.ctx.log.error(
      { repository, digest: digest.value },
      'blob is recorded in the database but its bytes are missing from storage',
    );
    return blobUnknown(repository, digest.value);
  }

  /**
   * Removes the blob from the repository. Its bytes stay until garbage
   * collection finds nothing else that references them.
   */
  async unlink(repository: string, digest: Digest): Promise<void> {
    const repositoryId = await findRepositoryId(this.ctx.db, repository);
    if (repositoryId === undefined) throw blobUnknown(repository, digest.value);

    const blob = await this.ctx.db
      .selectFrom('blobs')
      .select('id')
      .where('digest', '=', digest.value)
      .executeTakeFirst();
    if (!blob) throw blobUnknown(repository, digest.value);

    const result = await this.ctx.db
      .deleteFrom('repository_blobs')
      .where('repository_id', '=', repositoryId)
      .where('blob_id', '=', blob.id)
      .executeTakeFirst();
    if (result.numDeletedRows === 0n) throw blobUnknown(repository, digest.value);
  }

  /** Lists up to `limit` repositories that hold a blob, for a mount without `from`. */
  async repositoriesHolding(digest: string, limit: number): Promise<string[]> {
    const rows = await this.ctx.db
      .selectFrom('repositories')
      .innerJoin('repository_blobs', 'repository_blobs.repository_id', 'repositories.id')
      .innerJoin('blobs', 'blobs.id', 'repository_blobs.blob_id')
      .select('repositories.name')
      .where('blobs.digest', '=', digest)
      .orderBy('repositories.name')
      .limit(limit)
      .execute();
    return rows.map((row) => row.name);
  }
}

const upsertBlob = new PreparedQuery((db, digest: string, size: number, createdAt: number) =>
  db
    .insertInto('blobs')
    .values({ digest, size, created_at: createdAt })
    .onConflict((oc) => oc.column('digest').doUpdateSet({ digest }))
    .returning('id'),
);

const upsertBlobLink = new PreparedQuery(
  (db, repositoryId: number, blobId: number, createdAt: number) =>
    db
      .insertInto('repository_blobs')
      .values({ repository_id: repositoryId, blob_id: blobId, created_at: createdAt })
      .onConflict((oc) =>
        oc.columns(['repository_id', 'blob_id']).doUpdateSet({ created_at: createdAt }),
      ),
);

/** Records a stored blob (once, whatever the repository) and returns its row id. */
export async function recordBlob(
  trx: Transaction<Database>,
  digest: string,
  size: number,
): Promise<number> {
  const row = await upsertBlob.first(trx, digest, size, Date.now());
  if (row === undefined) throw new Error(`recording blob ${digest} returned no row`);
  return row.id;
}

/**
 * Lets a repository serve a blob. Linking again moves the link's created_at
 * to now. Garbage collection keeps blobs linked within its grace period, so
 * a client that uploads or mounts a blob it pushed long ago gets as much time
 * to push the manifest that references it as for a new blob.
 */
export async function linkBlob(
  trx: Transaction<Database>,
  repositoryId: number,
  blobId: number,
): Promise<void> {
  await upsertBlobLink.execute(trx, repositoryId, blobId, Date.now());
}

function blobUnknown(repository: string, digest: string): RegistryError {
  return new RegistryError('BLOB_UNKNOWN', `blob ${digest} is not in repository ${repository}`, {
    detail: { repository, digest },
  });
}
