import assert from 'node:assert/strict';
import { mkdtempSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

import Database from 'better-sqlite3';

import { openMetadataDb } from '../src/metadata/db.js';
import { MIGRATIONS } from '../src/metadata/migrations.js';

describe('metadata database', () => {
  it('creates the SQLite file 0600 with WAL and foreign keys', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-meta-'));
    const handle = await openMetadataDb({ driver: 'sqlite', dataDir });
    await handle.close();

    const file = path.join(dataDir, 'mcr.db');
    assert.equal(statSync(file).mode & 0o777, 0o600);
    const db = new Database(file, { readonly: true });
    assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
    const tables = db
      .prepare("select name from sqlite_master where type = 'table' order by name")
      .all()
      .map((row) => (row as { name: string }).name);
    for (const table of [
      'blobs',
      'manifest_references',
      'manifests',
      'repositories',
      'repository_blobs',
      'schema_migrations',
      'tags',
      'uploads',
    ]) {
      assert.ok(tables.includes(table), table);
    }
    db.close();
  });

  it('applies migrations once and records them', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-meta-'));
    for (let run = 0; run < 3; run++) {
      const handle = await openMetadataDb({ driver: 'sqlite', dataDir });
      await handle.close();
    }
    const db = new Database(path.join(dataDir, 'mcr.db'), { readonly: true });
    const versions = db
      .prepare('select version from schema_migrations order by version')
      .all()
      .map((row) => (row as { version: number }).version);
    assert.deepEqual(
      versions,
      MIGRATIONS.map((migration) => migration.version),
    );
    db.close();
  });

  it('enforces foreign keys', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-meta-'));
    const handle = await openMetadataDb({ driver: 'sqlite', dataDir });
    await assert.rejects(
      handle.db
        .insertInto('tags')
        .values({ repository_id: 999, name: 'x', manifest_id: 999, updated_at: 0 })
        .execute(),
      /FOREIGN KEY/,
    );
    await handle.close();
  });
});
