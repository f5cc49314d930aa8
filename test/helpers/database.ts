// Direct access to a test server's metadata database, as an operator's
// sqlite3 or psql shell would have it, for tests that check or change rows
// behind mcr's back. Works on SQLite and on the PostgreSQL of a PostgreSQL
// test run alike.
import path from 'node:path';

import Database from 'better-sqlite3';
import pg from 'pg';

import { databaseUrlFor } from './postgres.js';

// Counts and ids come back as numbers on both databases.
pg.types.setTypeParser(pg.types.builtins.INT8, (value) => Number(value));

export interface QueryResult {
  rows: Array<Record<string, unknown>>;
  /** Rows a write changed. */
  changes: number;
}

/** An open connection to one test server's database. */
export interface TestDatabase {
  /** Runs one statement; `?` stands for each parameter in order. */
  query(text: string, params?: unknown[]): Promise<QueryResult>;
  close(): Promise<void>;
}

/**
 * Opens the database of the test server whose data directory is `dataDir`:
 * its SQLite file, or on a PostgreSQL test run the database `startServer`
 * gave it.
 */
export async function openTestDatabase(dataDir: string): Promise<TestDatabase> {
  const url = databaseUrlFor(dataDir);
  if (url === undefined) {
    const sqlite = new Database(path.join(dataDir, 'mcr.db'), { fileMustExist: true });
    sqlite.pragma('busy_timeout = 5000');
    return {
      async query(text, params = []) {
        const statement = sqlite.prepare(text);
        if (statement.reader) {
          return { rows: statement.all(...params) as QueryResult['rows'], changes: 0 };
        }
        return { rows: [], changes: statement.run(...params).changes };
      },
      async close() {
        sqlite.close();
      },
    };
  }
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  return {
    async query(text, params = []) {
      let index = 0;
      const result = await client.query(
        text.replace(/\?/g, () => `$${++index}`),
        params,
      );
      return { rows: result.rows as QueryResult['rows'], changes: result.rowCount ?? 0 };
    },
    close: () => client.end(),
  };
}

/** Opens the database, runs one statement and closes it again. */
export async function queryTestDatabase(
  dataDir: string,
  text: string,
  params: unknown[] = [],
): Promise<QueryResult> {
  const database = await openTestDatabase(dataDir);
  try {
    return await database.query(text, params);
  } finally {
    await database.close();
  }
}
