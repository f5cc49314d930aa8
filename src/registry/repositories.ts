import { sql, type ExpressionBuilder, type Kysely, type Transaction } from 'kysely';

import type { Dialect } from '../metadata/migrations.js';
import { PreparedQuery } from '../metadata/prepared.js';
import type { Database } from '../metadata/schema.js';

type Executor = Kysely<Database> | Transaction<Database>;

const selectRepositoryId = new PreparedQuery((db, name: string) =>
  db.selectFrom('repositories').select('id').where('name', '=', name),
);

/** Returns a repository's id, or undefined when it does not exist. */
export async function findRepositoryId(db: Executor, name: string): Promise<number | undefined> {
  return (await selectRepositoryId.first(db, name))?.id;
}

/** Creates a repository unless it exists; returns its id either way. */
export async function ensureRepository(db: Executor, name: string): Promise<number> {
  const existing = await findRepositoryId(db, name);
  if (existing !== undefined) return existing;

  // The no-op update makes RETURNING yield the id also when another request
  // created the row between the select above and this insert.
  const row = await db
    .insertInto('repositories')
    .values({ name, created_at: Date.now() })
    .onConflict((oc) => oc.column('name').doUpdateSet({ name }))
    .returning('id')
    .executeTakeFirstOrThrow();
  return row.id;
}

/**
 * Builds the condition that a repository (the `repositories` row of the
 * query) contains no manifest, blob link or upload session.
 */
export function repositoryIsEmpty(eb: ExpressionBuilder<Database, 'repositories'>) {
  return eb.not(
    eb.exists(
      eb
        .selectFrom('manifests')
        .select(sql`1`.as('one'))
        .whereRef('manifests.repository_id', '=', 'repositories.id')
        .unionAll(
          eb
            .selectFrom('repository_blobs')
            .select(sql`1`.as('one'))
            .whereRef('repository_blobs.repository_id', '=', 'repositories.id'),
        )
        .unionAll(
          eb
            .selectFrom('uploads')
            .select(sql`1`.as('one'))
            .whereRef('uploads.repository_id', '=', 'repositories.id'),
        ),
    ),
  );
}

/**
 * Deletes a repository that contains no manifest, blob or upload session, and
 * returns whether it did. The conditions and the delete are one statement, so
 * a concurrent push that already added content keeps the repository.
 *
 * On PostgreSQL the repository's row is locked first. A push that is adding
 * rows holds a lock on it through their foreign keys, so this waits for the
 * push to commit, and the delete's conditions then see the push's rows.
 * Without the lock, the delete would read the repository as empty and its
 * cascade would remove the manifest that the push had just committed.
 */
export async function deleteRepositoryIfEmpty(
  db: Executor,
  dialect: Dialect,
  repositoryId: number,
): Promise<boolean> {
  if (dialect === 'postgres') {
    await db
      .selectFrom('repositories')
      .select('id')
      .where('id', '=', repositoryId)
      .forUpdate()
      .execute();
  }
  const result = await db
    .deleteFrom('repositories')
    .where('id', '=', repositoryId)
    .where(repositoryIsEmpty)
    .executeTakeFirst();
  return result.numDeletedRows > 0n;
}
