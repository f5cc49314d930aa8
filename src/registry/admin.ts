import { sql } from 'kysely';

import { runTransaction } from '../metadata/db.js';
import type { CoreContext } from './core.js';
import { byteOrder } from './listings.js';
import { findRepositoryId } from './repositories.js';

/** A repository as the admin API lists it. */
export interface RepositorySummary {
  name: string;
  tagCount: number;
  manifestCount: number;
  /** Bytes of the distinct blobs linked to the repository plus its manifests. */
  sizeBytes: number;
  createdAt: number;
}

/** A repository with its tags and manifests. */
export interface RepositoryDetail extends RepositorySummary {
  tags: Array<{ name: string; digest: string; updatedAt: number }>;
  manifests: Array<{
    digest: string;
    mediaType: string;
    artifactType: string | null;
    size: number;
    tags: string[];
    createdAt: number;
  }>;
}

/** Repository listing, inspection and deletion for operators. */
export class RepositoryAdmin {
  constructor(private readonly ctx: CoreContext) {}

  /** Lists repositories by name after `after`, with their counts and sizes. */
  async list(limit: number, after: string | undefined): Promise<RepositorySummary[]> {
    return this.summaries({ limit, after });
  }

  /** Returns a repository with its tags and manifests, or undefined. */
  async get(name: string): Promise<RepositoryDetail | undefined> {
    const [summary] = await this.summaries({ limit: 1, name });
    if (!summary) return undefined;

    const repositoryId = (await findRepositoryId(this.ctx.db, name)) as number;
    const tags = await this.ctx.db
      .selectFrom('tags')
      .innerJoin('manifests', 'manifests.id', 'tags.manifest_id')
      .select(['tags.name', 'manifests.digest', 'tags.updated_at'])
      .where('tags.repository_id', '=', repositoryId)
      // Byte order, because the admin API pages tags by comparing names.
      .orderBy(byteOrder(this.ctx.dialect, 'tags.name'))
      .execute();
    const manifests = await this.ctx.db
      .selectFrom('manifests')
      .select(['id', 'digest', 'media_type', 'artifact_type', 'size', 'created_at'])
      .where('repository_id', '=', repositoryId)
      .orderBy('created_at')
      .execute();

    const tagsByDigest = new Map<string, string[]>();
    for (const tag of tags) {
      tagsByDigest.set(tag.digest, [...(tagsByDigest.get(tag.digest) ?? []), tag.name]);
    }
    return {
      ...summary,
      tags: tags.map((tag) => ({ name: tag.name, digest: tag.digest, updatedAt: tag.updated_at })),
      manifests: manifests.map((manifest) => ({
        digest: manifest.digest,
        mediaType: manifest.media_type,
        artifactType: manifest.artifact_type,
        size: manifest.size,
        tags: tagsByDigest.get(manifest.digest) ?? [],
        createdAt: manifest.created_at,
      })),
    };
  }

  private async summaries(filter: {
    limit: number;
    after?: string;
    name?: string;
  }): Promise<RepositorySummary[]> {
    let query = this.ctx.db
      .selectFrom('repositories')
      .select((eb) => [
        'repositories.name',
        'repositories.created_at',
        eb
          .selectFrom('tags')
          .select(eb.fn.countAll<number>().as('count'))
          .whereRef('tags.repository_id', '=', 'repositories.id')
          .as('tag_count'),
        eb
          .selectFrom('manifests')
          .select(eb.fn.countAll<number>().as('count'))
          .whereRef('manifests.repository_id', '=', 'repositories.id')
          .as('manifest_count'),
        eb
          .selectFrom('repository_blobs')
          .innerJoin('blobs', 'blobs.id', 'repository_blobs.blob_id')
          .select(sql<number>`coalesce(sum(blobs.size), 0)`.as('total'))
          .whereRef('repository_blobs.repository_id', '=', 'repositories.id')
          .as('blob_bytes'),
        eb
          .selectFrom('manifests')
          .select(sql<number>`coalesce(sum(manifests.size), 0)`.as('total'))
          .whereRef('manifests.repository_id', '=', 'repositories.id')
          .as('manifest_bytes'),
      ])
      .orderBy('repositories.name')
      .limit(filter.limit);
    if (filter.after !== undefined) query = query.where('repositories.name', '>', filter.after);
    if (filter.name !== undefined) query = query.where('repositories.name', '=', filter.name);

    const rows = await query.execute();
    return rows.map((row) => ({
      name: row.name,
      tagCount: Number(row.tag_count ?? 0),
      manifestCount: Number(row.manifest_count ?? 0),
      sizeBytes: Number(row.blob_bytes ?? 0) + Number(row.manifest_bytes ?? 0),
      createdAt: row.created_at,
    }));
  }

  /**
   * Deletes a repository with its manifests, tags, blob links and upload
   * sessions. Blob bytes stay until garbage collection finds them unused.
   */
  async delete(name: string): Promise<boolean> {
    const repositoryId = await findRepositoryId(this.ctx.db, name);
    if (repositoryId === undefined) return false;
    const uploads = await this.ctx.db
      .selectFrom('uploads')
      .select('storage_key')
      .where('repository_id', '=', repositoryId)
      .execute();
    // Runs again after a deadlock with a push that is adding rows to it.
    await runTransaction(this.ctx.db, (trx) =>
      trx.deleteFrom('repositories').where('id', '=', repositoryId).execute(),
    );
    for (const upload of uploads) await this.ctx.store.abortUpload(upload.storage_key);
    this.ctx.log.info({ repository: name, uploadsCancelled: uploads.length }, 'repository deleted');
    return true;
  }
}
