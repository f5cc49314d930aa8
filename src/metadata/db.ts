import { closeSync, mkdirSync, openSync } from 'node:fs';
import path from 'node:path';

import SqliteDatabase from 'better-sqlite3';
import { CompiledQuery, Kysely, PostgresDialect, SqliteDialect, type Driver } from 'kysely';
import pg from 'pg';

import { migrate, type Dialect } from './migrations.js';
import type { Database } from './schema.js';

/** An open metadata database with the dialect it speaks. */
export interface MetadataDb {
  db: Kysely<Database>;
  dialect: Dialect;
  /** The SQLite file, when the dialect is SQLite. */
  sqlitePath?: string;
  close(): Promise<void>;
}

export interface OpenOptions {
  driver: Dialect;
  /** Data directory; the SQLite file is `mcr.db` inside it. */
  dataDir: string;
  /** PostgreSQL connection URL. */
  url?: string;
}

/** Opens the metadata database and brings its schema up to date. */
export async function openMetadataDb(options: OpenOptions): Promise<MetadataDb> {
  const handle =
    options.driver === 'sqlite' ? openSqlite(options.dataDir) : openPostgres(options.url ?? '');
  await migrate(handle.db, handle.dialect);
  return handle;
}

function openSqlite(dataDir: string): MetadataDb {
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const file = path.join(dataDir, 'mcr.db');

  // Create the file ourselves first so that it gets mode 0600 whatever the umask.
  closeSync(openSync(file, 'a', 0o600));

  const sqlite = new SqliteDatabase(file);
  sqlite.pragma('journal_mode = WAL');
  sqlite.pragma('synchronous = NORMAL');
  sqlite.pragma('foreign_keys = ON');
  sqlite.pragma('busy_timeout = 5000');

  const db = new Kysely<Database>({ dialect: new ImmediateSqliteDialect({ database: sqlite }) });
  return {
    db,
    dialect: 'sqlite',
    sqlitePath: file,
    close: () => db.destroy(),
  };
}

function openPostgres(url: string): MetadataDb {
  // 64-bit integers (ids, sizes, times) fit in a JavaScript number below 2^53.
  pg.types.setTypeParser(pg.types.builtins.INT8, (value) => Number(value));
  const pool = new pg.Pool({ connectionString: url, max: 10 });
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  return { db, dialect: 'postgres', close: () => db.destroy() };
}

/**
 * SQLite dialect whose transactions start with BEGIN IMMEDIATE. A deferred
 * transaction that reads and then writes fails at once with "database is
 * locked" when another connection (the sqlite3 shell, a backup tool) wrote
 * in between; an immediate one takes the write lock first and so waits
 * politely for busy_timeout instead.
 */
class ImmediateSqliteDialect extends SqliteDialect {
  override createDriver(): Driver {
    const driver = super.createDriver();
    driver.beginTransaction = async (connection) => {
      await connection.executeQuery(CompiledQuery.raw('begin immediate'));
    };
    return driver;
  }
}
