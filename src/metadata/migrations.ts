import { sql, type ColumnDefinitionBuilder, type Kysely } from 'kysely';

import { DEFAULT_POLICY_RULES } from '../auth/default-policy.js';

import type { Database } from './schema.js';

export type Dialect = 'sqlite' | 'postgres';

interface Migration {
  version: number;
  name: string;
  up(db: Kysely<Database>, dialect: Dialect): Promise<void>;
}

/** Builds an auto-incrementing integer primary key in either dialect. */
function idColumnType(dialect: Dialect): 'integer' | 'bigserial' {
  return dialect === 'sqlite' ? 'integer' : 'bigserial';
}

/**
 * The schema's history, in order. A migration, once released, never changes:
 * add a new one instead. Each runs in its own transaction together with the
 * row that records it, so a crash leaves it either applied or not.
 */
export const MIGRATIONS: Migration[] = [
  {
    version: 1,
    name: 'registry core',
    async up(db, dialect) {
      const id = idColumnType(dialect);
      const bytes = dialect === 'sqlite' ? 'blob' : 'bytea';

      await db.schema
        .createTable('repositories')
        .addColumn('id', id, (col) =>
          dialect === 'sqlite' ? col.primaryKey().autoIncrement() : col.primaryKey(),
        )
        .addColumn('name', 'text', (col) => col.notNull().unique())
        .addColumn('created_at', 'bigint', (col) => col.notNull())
        .execute();

      await db.schema
        .createTable('blobs')
        .addColumn('id', id, (col) =>
          dialect === 'sqlite' ? col.primaryKey().autoIncrement() : col.primaryKey(),
        )
        .addColumn('digest', 'text', (col) => col.notNull().unique())
        .addColumn('size', 'bigint', (col) => col.notNull())
        .addColumn('created_at', 'bigint', (col) => col.notNull())
        .execute();

      await db.schema
        .createTable('repository_blobs')
        .addColumn('repository_id', 'bigint', (col) =>
          col.notNull().references('repositories.id').onDelete('cascade'),
        )
        .addColumn('blob_id', 'bigint', (col) => col.notNull().references('blobs.id'))
        .addColumn('created_at', 'bigint', (col) => col.notNull())
        .addPrimaryKeyConstraint('repository_blobs_pk', ['repository_id', 'blob_id'])
        .execute();
      await db.schema
        .createIndex('repository_blobs_blob')
        .on('repository_blobs')
        .column('blob_id')
        .execute();

      await db.schema
        .createTable('manifests')
        .addColumn('id', id, (col) =>
          dialect === 'sqlite' ? col.primaryKey().autoIncrement() : col.primaryKey(),
        )
        .addColumn('repository_id', 'bigint', (col) =>
          col.notNull().references('repositories.id').onDelete('cascade'),
        )
        .addColumn('digest', 'text', (col) => col.notNull())
        .addColumn('media_type', 'text', (col) => col.notNull())
        .addColumn('artifact_type', 'text')
        .addColumn('subject_digest', 'text')
        .addColumn('annotations', 'text')
        .addColumn('content', bytes, (col) => col.notNull())
        .addColumn('size', 'bigint', (col) => col.notNull())
        .addColumn('created_at', 'bigint', (col) => col.notNull())
        .addUniqueConstraint('manifests_repository_digest', ['repository_id', 'digest'])
        .execute();
      await db.schema
        .createIndex('manifests_subject')
        .on('manifests')
        .columns(['repository_id', 'subject_digest'])
        .execute();

      await db.schema
        .createTable('manifest_references')
        .addColumn('manifest_id', 'bigint', (col) =>
          col.notNull().references('manifests.id').onDelete('cascade'),
        )
        .addColumn('digest', 'text', (col) => col.notNull())
        .addColumn('kind', 'text', (col) => col.notNull())
        .addColumn('blob_id', 'bigint', (col) => col.references('blobs.id'))
        .addPrimaryKeyConstraint('manifest_references_pk', ['manifest_id', 'digest'])
        .execute();
      await db.schema
        .createIndex('manifest_references_blob')
        .on('manifest_references')
        .column('blob_id')
        .execute();
      await db.schema
        .createIndex('manifest_references_digest')
        .on('manifest_references')
        .column('digest')
        .execute();

      await db.schema
        .createTable('tags')
        .addColumn('id', id, (col) =>
          dialect === 'sqlite' ? col.primaryKey().autoIncrement() : col.primaryKey(),
        )
        .addColumn('repository_id', 'bigint', (col) =>
          col.notNull().references('repositories.id').onDelete('cascade'),
        )
        .addColumn('name', 'text', (col) => col.notNull())
        .addColumn('manifest_id', 'bigint', (col) =>
          col.notNull().references('manifests.id').onDelete('cascade'),
        )
        .addColumn('updated_at', 'bigint', (col) => col.notNull())
        .addUniqueConstraint('tags_repository_name', ['repository_id', 'name'])
        .execute();
      await db.schema.createIndex('tags_manifest').on('tags').column('manifest_id').execute();

      await db.schema
        .createTable('uploads')
        .addColumn('id', 'text', (col) => col.primaryKey())
        .addColumn('repository_id', 'bigint', (col) =>
          col.notNull().references('repositories.id').onDelete('cascade'),
        )
        .addColumn('offset', 'bigint', (col) => col.notNull())
        .addColumn('storage_key', 'text', (col) => col.notNull())
        .addColumn('started_at', 'bigint', (col) => col.notNull())
        .addColumn('updated_at', 'bigint', (col) => col.notNull())
        .execute();
    },
  },
  {
    version: 2,
    name: 'accounts, access tokens and policy rules',
    async up(db, dialect) {
      const id = idColumnType(dialect);
      const primaryKey = (col: ColumnDefinitionBuilder) =>
        dialect === 'sqlite' ? col.primaryKey().autoIncrement() : col.primaryKey();

      await db.schema
        .createTable('accounts')
        .addColumn('id', id, primaryKey)
        .addColumn('username', 'text', (col) => col.notNull().unique())
        .addColumn('password_hash', 'text')
        .addColumn('role', 'text', (col) => col.notNull())
        .addColumn('kind', 'text', (col) => col.notNull())
        .addColumn('provider', 'text', (col) => col.notNull())
        .addColumn('disabled', 'integer', (col) => col.notNull().defaultTo(0))
        .addColumn('created_at', 'bigint', (col) => col.notNull())
        .addColumn('updated_at', 'bigint', (col) => col.notNull())
        .execute();

      await db.schema
        .createTable('access_tokens')
        .addColumn('id', id, primaryKey)
        .addColumn('account_id', 'bigint', (col) =>
          col.notNull().references('accounts.id').onDelete('cascade'),
        )
        .addColumn('name', 'text', (col) => col.notNull())
        .addColumn('secret_sha256', 'text', (col) => col.notNull().unique())
        .addColumn('scopes', 'text')
        .addColumn('expires_at', 'bigint')
        .addColumn('last_used_at', 'bigint')
        .addColumn('revoked_at', 'bigint')
        .addColumn('created_at', 'bigint', (col) => col.notNull())
        .addUniqueConstraint('access_tokens_account_name', ['account_id', 'name'])
        .execute();

      await db.schema
        .createTable('policy_rules')
        .addColumn('id', id, primaryKey)
        .addColumn('priority', 'integer', (col) => col.notNull())
        .addColumn('effect', 'text', (col) => col.notNull())
        .addColumn('description', 'text', (col) => col.notNull())
        .addColumn('subjects', 'text', (col) => col.notNull())
        .addColumn('actions', 'text', (col) => col.notNull())
        .addColumn('repositories', 'text', (col) => col.notNull())
        .addColumn('enabled', 'integer', (col) => col.notNull().defaultTo(1))
        .addColumn('created_at', 'bigint', (col) => col.notNull())
        .addColumn('updated_at', 'bigint', (col) => col.notNull())
        .execute();

      await db.schema
        .createTable('auth_failures')
        .addColumn('key', 'text', (col) => col.primaryKey())
        .addColumn('window_start', 'bigint', (col) => col.notNull())
        .addColumn('failures', 'integer', (col) => col.notNull())
        .execute();

      const now = Date.now();
      await db
        .insertInto('policy_rules')
        .values(
          DEFAULT_POLICY_RULES.map((rule) => ({
            priority: rule.priority,
            effect: rule.effect,
            description: rule.description,
            subjects: JSON.stringify(rule.subjects),
            actions: JSON.stringify(rule.actions),
            repositories: JSON.stringify(rule.repositories),
            enabled: 1,
            created_at: now,
            updated_at: now,
          })),
        )
        .execute();
    },
  },
  {
    version: 3,
    name: 'sessions, audit events, garbage collection runs and locks',
    async up(db, dialect) {
      const id = idColumnType(dialect);
      const primaryKey = (col: ColumnDefinitionBuilder) =>
        dialect === 'sqlite' ? col.primaryKey().autoIncrement() : col.primaryKey();

      await db.schema
        .createTable('sessions')
        .addColumn('id', id, primaryKey)
        .addColumn('account_id', 'bigint', (col) =>
          col.notNull().references('accounts.id').onDelete('cascade'),
        )
        .addColumn('secret_sha256', 'text', (col) => col.notNull().unique())
        .addColumn('created_at', 'bigint', (col) => col.notNull())
        .addColumn('expires_at', 'bigint', (col) => col.notNull())
        .addColumn('last_used_at', 'bigint', (col) => col.notNull())
        .execute();

      await db.schema
        .createTable('audit_events')
        .addColumn('id', id, primaryKey)
        .addColumn('time', 'bigint', (col) => col.notNull())
        .addColumn('type', 'text', (col) => col.notNull())
        .addColumn('actor', 'text')
        .addColumn('client_address', 'text')
        .addColumn('repository', 'text')
        .addColumn('reference', 'text')
        .addColumn('digest', 'text')
        .addColumn('outcome', 'text', (col) => col.notNull())
        .addColumn('details', 'text', (col) => col.notNull())
        .addColumn('previous_hash', 'text', (col) => col.notNull())
        .addColumn('hash', 'text', (col) => col.notNull())
        .execute();
      await db.schema.createIndex('audit_events_time').on('audit_events').column('time').execute();
      await db.schema
        .createIndex('audit_events_type_time')
        .on('audit_events')
        .columns(['type', 'time'])
        .execute();

      await db.schema
        .createTable('gc_runs')
        .addColumn('id', id, primaryKey)
        .addColumn('trigger', 'text', (col) => col.notNull())
        .addColumn('state', 'text', (col) => col.notNull())
        .addColumn('dry_run', 'integer', (col) => col.notNull())
        .addColumn('started_at', 'bigint', (col) => col.notNull())
        .addColumn('finished_at', 'bigint')
        .addColumn('progress', 'text', (col) => col.notNull())
        .addColumn('blobs_deleted', 'bigint', (col) => col.notNull().defaultTo(0))
        .addColumn('bytes_freed', 'bigint', (col) => col.notNull().defaultTo(0))
        .addColumn('manifests_deleted', 'bigint', (col) => col.notNull().defaultTo(0))
        .addColumn('uploads_deleted', 'bigint', (col) => col.notNull().defaultTo(0))
        .addColumn('error', 'text')
        .execute();

      await db.schema
        .createTable('locks')
        .addColumn('name', 'text', (col) => col.primaryKey())
        .addColumn('holder', 'text', (col) => col.notNull())
        .addColumn('acquired_at', 'bigint', (col) => col.notNull())
        .addColumn('expires_at', 'bigint', (col) => col.notNull())
        .execute();

      await db.schema.createIndex('blobs_created').on('blobs').column('created_at').execute();
    },
  },
  {
    version: 4,
    name: 'blob tombstones and blob commits for online garbage collection',
    async up(db) {
      await db.schema
        .createTable('blob_tombstones')
        .addColumn('digest', 'text', (col) => col.primaryKey())
        .addColumn('holder', 'text', (col) => col.notNull())
        .addColumn('created_at', 'bigint', (col) => col.notNull())
        .execute();

      await db.schema
        .createTable('blob_commits')
        .addColumn('storage_key', 'text', (col) => col.primaryKey())
        .addColumn('digest', 'text', (col) => col.notNull())
        .addColumn('started_at', 'bigint', (col) => col.notNull())
        .execute();
      await db.schema
        .createIndex('blob_commits_digest')
        .on('blob_commits')
        .column('digest')
        .execute();

      await db.schema.createIndex('uploads_updated').on('uploads').column('updated_at').execute();
      await db.schema
        .createIndex('uploads_storage_key')
        .on('uploads')
        .column('storage_key')
        .execute();
    },
  },
  {
    version: 5,
    name: 'upload session leases',
    async up(db) {
      // The request that appends to or completes a session holds it, so that
      // requests of other processes cannot write its file at the same time.
      await db.schema.alterTable('uploads').addColumn('holder', 'text').execute();
      await db.schema.alterTable('uploads').addColumn('held_until', 'bigint').execute();
    },
  },
];

/** Key of the PostgreSQL advisory lock that migrating processes take in turn. */
const MIGRATION_LOCK = 7283001;

/**
 * Applies every migration newer than the database's version. Safe to run on
 * every start and from several processes: applied versions are skipped, and
 * the recording insert fails for a version another process applied first.
 */
export async function migrate(db: Kysely<Database>, dialect: Dialect): Promise<number[]> {
  await db.transaction().execute(async (trx) => {
    // PostgreSQL's "if not exists" fails in one of two processes that create
    // the table at the same time (a duplicate key in pg_type), so the
    // creation takes the migrations' lock there too.
    if (dialect === 'postgres')
      await sql`select pg_advisory_xact_lock(${MIGRATION_LOCK})`.execute(trx);
    await trx.schema
      .createTable('schema_migrations')
      .ifNotExists()
      .addColumn('version', 'integer', (col) => col.primaryKey())
      .addColumn('name', 'text', (col) => col.notNull())
      .addColumn('applied_at', 'bigint', (col) => col.notNull())
      .execute();
  });

  const applied: number[] = [];
  for (const migration of MIGRATIONS) {
    if (await isApplied(db, migration.version)) continue;

    await db.transaction().execute(async (trx) => {
      // Serialises concurrent starts of several processes on one database:
      // on SQLite the transaction itself takes the write lock as it begins.
      if (dialect === 'postgres')
        await sql`select pg_advisory_xact_lock(${MIGRATION_LOCK})`.execute(trx);
      if (await isApplied(trx, migration.version)) return;
      await migration.up(trx, dialect);
      await trx
        .insertInto('schema_migrations')
        .values({ version: migration.version, name: migration.name, applied_at: Date.now() })
        .execute();
      applied.push(migration.version);
    });
  }
  return applied;
}

async function isApplied(db: Kysely<Database>, version: number): Promise<boolean> {
  const row = await db
    .selectFrom('schema_migrations')
    .select('version')
    .where('version', '=', version)
    .executeTakeFirst();
  return row !== undefined;
}
