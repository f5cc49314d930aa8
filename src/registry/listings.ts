import { sql } from 'kysely';

import type { Dialect } from '../metadata/migrations.js';
import { PreparedQuery } from '../metadata/prepared.js';
import { MAX_PAGE_SIZE, type CoreContext } from './core.js';
import { RegistryError } from './errors.js';
import { MEDIA_TYPES } from './media-types.js';
import { findRepositoryId } from './repositories.js';

/** One page of a lexically ordered listing; `next` is set when more remain. */
export interface Page {
  items: string[];
  /** The last item of this page, for the `last` parameter of the next request. */
  next?: string;
}

/** The OCI image index the referrers API returns. */
export interface ReferrersIndex {
  schemaVersion: 2;
  mediaType: typeof MEDIA_TYPES.ociIndex;
  manifests: Array<{
    mediaType: string;
    digest: string;
    size: number;
    artifactType?: string;
    annotations?: Record<string, string>;
  }>;
}

/** Tag lists, the catalog and referrers: the read-only listings of the API. */
export class Listings {
  /**
   * The two queries of a tag walk in pages, compiled once: the first page,
   * and a page after `last`. Each selects one row more than the page holds,
   * to tell whether another page follows.
   */
  private readonly firstTagPage = new PreparedQuery((db, repositoryId: number, rows: number) =>
    db
      .selectFrom('tags')
      .select('name')
      .where('repository_id', '=', repositoryId)
      .orderBy(this.byteOrder('name'))
      .limit(rows),
  );
  private readonly nextTagPage = new PreparedQuery(
    (db, repositoryId: number, last: string, rows: number) =>
      db
        .selectFrom('tags')
        .select('name')
        .where('repository_id', '=', repositoryId)
        .where(this.byteOrder('name'), '>', last)
        .orderBy(this.byteOrder('name'))
        .limit(rows),
  );

  constructor(private readonly ctx: CoreContext) {}

  /** Lists a repository's tags in lexical (byte) order after `last`. */
  async tags(
    repository: string,
    limit: number | undefined,
    last: string | undefined,
  ): Promise<Page> {
    const repositoryId = await findRepositoryId(this.ctx.db, repository);
    if (repositoryId === undefined) {
      throw new RegistryError('NAME_UNKNOWN', `repository ${repository} is not known`, {
        detail: { name: repository },
      });
    }
    if (limit === 0) return { items: [] };

    if (limit !== undefined) {
      const rows =
        last === undefined
          ? await this.firstTagPage.execute(this.ctx.db, repositoryId, limit + 1)
          : await this.nextTagPage.execute(this.ctx.db, repositoryId, last, limit + 1);
      return paginate(
        rows.rows.map((row) => row.name),
        limit,
      );
    }

    let query = this.ctx.db
      .selectFrom('tags')
      .select('name')
      .where('repository_id', '=', repositoryId)
      .orderBy(this.byteOrder('name'));
    if (last !== undefined) query = query.where(this.byteOrder('name'), '>', last);
    const names = (await query.execute()).map((row) => row.name);
    return { items: names };
  }

  /**
   * Lists repositories that hold content, in lexical order after `last`,
   * keeping only those `visible` allows. Filtering happens before paging, so a
   * page is full whenever enough visible repositories remain.
   */
  async catalog(
    limit: number,
    last: string | undefined,
    visible: (repository: string) => Promise<boolean>,
  ): Promise<Page> {
    if (limit === 0) return { items: [] };

    const items: string[] = [];
    let cursor = last;
    const batchSize = Math.min(Math.max(limit + 1, 100), MAX_PAGE_SIZE + 1);

    while (items.length <= limit) {
      let query = this.ctx.db
        .selectFrom('repositories')
        .select('name')
        .where((eb) =>
          eb.or([
            eb.exists(
              eb
                .selectFrom('manifests')
                .select(sql`1`.as('one'))
                .whereRef('manifests.repository_id', '=', 'repositories.id'),
            ),
            eb.exists(
              eb
                .selectFrom('repository_blobs')
                .select(sql`1`.as('one'))
                .whereRef('repository_blobs.repository_id', '=', 'repositories.id'),
            ),
          ]),
        )
        .orderBy(this.byteOrder('name'))
        .limit(batchSize);
      if (cursor !== undefined) query = query.where(this.byteOrder('name'), '>', cursor);

      const rows = await query.execute();
      for (const row of rows) {
        if (await visible(row.name)) items.push(row.name);
        if (items.length > limit) break;
      }
      if (rows.length < batchSize) break;
      cursor = rows[rows.length - 1]?.name;
    }

    return paginate(items, limit);
  }

  /** Lists manifests whose subject is `digest`, optionally of one artifact type. */
  async referrers(
    repository: string,
    digest: string,
    artifactType: string | undefined,
  ): Promise<ReferrersIndex> {
    const index: ReferrersIndex = {
      schemaVersion: 2,
      mediaType: MEDIA_TYPES.ociIndex,
      manifests: [],
    };
    const repositoryId = await findRepositoryId(this.ctx.db, repository);
    if (repositoryId === undefined) return index;

    let query = this.ctx.db
      .selectFrom('manifests')
      .select(['digest', 'media_type', 'size', 'artifact_type', 'annotations'])
      .where('repository_id', '=', repositoryId)
      .where('subject_digest', '=', digest)
      .orderBy('id');
    if (artifactType !== undefined) query = query.where('artifact_type', '=', artifactType);

    for (const row of await query.execute()) {
      index.manifests.push({
        mediaType: row.media_type,
        digest: row.digest,
        size: row.size,
        ...(row.artifact_type ? { artifactType: row.artifact_type } : {}),
        ...(row.annotations ? { annotations: JSON.parse(row.annotations) } : {}),
      });
    }
    return index;
  }

  private byteOrder(column: 'name') {
    return byteOrder(this.ctx.dialect, column);
  }
}

/**
 * Orders text by bytes in both dialects, as the specification's "lexical"
 * order, whatever the PostgreSQL database's default collation.
 */
export function byteOrder(dialect: Dialect, column: string) {
  return dialect === 'postgres'
    ? sql<string>`${sql.ref(column)} collate "C"`
    : sql<string>`${sql.ref(column)}`;
}

function paginate(items: string[], limit: number | undefined): Page {
  if (limit === undefined || items.length <= limit) return { items };
  const page = items.slice(0, limit);
  return { items: page, next: page[page.length - 1] };
}
