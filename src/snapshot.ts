import { chmodSync, existsSync } from 'node:fs';
import path from 'node:path';

import SqliteDatabase from 'better-sqlite3';

import type { Config } from './config/index.js';

/** The result of a snapshot: where it went and how large it is. */
export interface SnapshotResult {
  path: string;
  bytes: number;
}

/** A snapshot that could not be taken; the message gives the reason and the fix. */
export class SnapshotError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'SnapshotError';
  }
}

/**
 * Copies the SQLite metadata database to `target` with VACUUM INTO, which
 * reads one consistent state inside a read transaction, so it is safe while
 * mcr serves. The copy is checked with PRAGMA integrity_check and made 0600.
 * Blob files are not part of the snapshot (see the README's backup steps).
 */
export function snapshotDatabase(config: Config, target: string): SnapshotResult {
  if (config.database.driver !== 'sqlite') {
    throw new SnapshotError('snapshot copies the SQLite database only; for PostgreSQL use pg_dump');
  }
  const source = path.join(config.dataDir, 'mcr.db');
  if (!existsSync(source)) {
    throw new SnapshotError(`no database at ${source}: check data_dir (MCR_DATA_DIR)`);
  }
  const destination = path.resolve(target);
  if (existsSync(destination)) {
    throw new SnapshotError(`${destination} already exists: choose a new path`);
  }

  const database = new SqliteDatabase(source, { readonly: true, fileMustExist: true });
  try {
    database.pragma('busy_timeout = 10000');
    database.prepare('VACUUM INTO ?').run(destination);
  } finally {
    database.close();
  }
  chmodSync(destination, 0o600);

  const copy = new SqliteDatabase(destination, { readonly: true });
  try {
    const result = copy.pragma('integrity_check', { simple: true });
    if (result !== 'ok') {
      throw new SnapshotError(
        `the snapshot at ${destination} failed its integrity check: ${String(result)}`,
      );
    }
    const pages = copy.pragma('page_count', { simple: true }) as number;
    const pageSize = copy.pragma('page_size', { simple: true }) as number;
    return { path: destination, bytes: pages * pageSize };
  } finally {
    copy.close();
  }
}
