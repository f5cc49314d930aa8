import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import Database from 'better-sqlite3';
import { sql, type Kysely, type Transaction } from 'kysely';

import { openMetadataDb, runTransaction } from '../src/metadata/db.js';
import { MIGRATIONS } from '../src/metadata/migrations.js';
import type { Database as MetadataSchema } from '../src/metadata/schema.js';
import { PreparedQuery } from '../src/metadata/prepared.js';
import { selectManifestByDigest, selectManifestByTag } from '../src/registry/manifests.js';

/**
 * Opens a metadata database and a second connection to its file, as another
 * process would. Commits of the second reach the first only through SQLite.
 */
async function openWithOtherConnection() {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-meta-'));
  const handle = await openMetadataDb({ driver: 'sqlite', dataDir });
  const other = new Database(path.join(dataDir, 'mcr.db'));
  const insert = other.prepare('insert into repositories (name, created_at) values (?, 0)');
  const commitElsewhere = (name: string) => insert.run(name);
  return { handle, other, commitElsewhere };
}

describe('metadata database', () => {
  it('creates the SQLite file 0600 with WAL, full sync and foreign keys', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-meta-'));
    const handle = await openMetadataDb({ driver: 'sqlite', dataDir });
    // FULL (2): every commit flushes the write-ahead log.
    const { rows } = await sql<{ synchronous: number }>`pragma synchronous`.execute(handle.db);
    assert.deepEqual(rows, [{ synchronous: 2 }]);
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

  it('checkpoints the log in a background thread', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-meta-'));
    const file = path.join(dataDir, 'mcr.db');
    const errors: Error[] = [];
    const handle = await openMetadataDb({
      driver: 'sqlite',
      dataDir,
      backgroundCheckpoints: true,
      onCheckpointError: (error) => errors.push(error),
    });
    const sizeBefore = statSync(file).size;

    // About 2 MB of log, half of what makes a commit checkpoint on its own.
    await sql`create table filler (x blob)`.execute(handle.db);
    for (let i = 0; i < 8; i++) {
      await sql`insert into filler values (randomblob(250000))`.execute(handle.db);
    }
    const deadline = Date.now() + 5000;
    while (statSync(file).size < sizeBefore + 2_000_000 && Date.now() < deadline) {
      await sleep(50);
    }
    assert.ok(statSync(file).size >= sizeBefore + 2_000_000, 'the database file took the log');
    await handle.close();
    assert.deepEqual(errors, []);
  });

  it('bounds the log under steady writes', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-meta-'));
    const wal = path.join(dataDir, 'mcr.db-wal');
    const handle = await openMetadataDb({ driver: 'sqlite', dataDir, backgroundCheckpoints: true });
    await sql`create table filler (x blob)`.execute(handle.db);

    // About 48 MB of log in commits of 8 KB, with no pause in which a
    // background checkpoint could catch up with the writes.
    let largest = 0;
    for (let i = 0; i < 6000; i++) {
      await sql`insert into filler values (randomblob(8000))`.execute(handle.db);
      if (i % 500 === 0) largest = Math.max(largest, statSync(wal).size);
    }
    largest = Math.max(largest, statSync(wal).size);
    await handle.close();
    // 4,000 pages of 4 KiB are 16.5 MB with their frame headers. Commits
    // go on while the thread's checkpoint holds the lock, so the log can
    // pass that; a busy test run saw 23.5 MB. Without the bound, the same
    // writes made a log of 100 MB.
    assert.ok(largest < 50_000_000, `log reached ${largest} bytes`);
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

  it('rereads data_version after a request or a turn', async () => {
    const { handle, other, commitElsewhere } = await openWithOtherConnection();
    try {
      const counter = handle.externalChangeCounter!;
      const first = counter();
      const firstWithOwnWrites = handle.changeCounter!();

      // Within one turn of the event loop, the value read first is kept.
      commitElsewhere('one');
      assert.equal(counter(), first);
      assert.equal(handle.changeCounter!(), firstWithOwnWrites);

      // A request arriving makes the next read see the commit.
      handle.onRequestArrival!();
      const second = counter();
      assert.notEqual(second, first);

      // So does the next turn of the event loop.
      commitElsewhere('two');
      await new Promise((resolve) => setImmediate(resolve));
      assert.notEqual(counter(), second);
    } finally {
      other.close();
      await handle.close();
    }
  });
});

describe('transactions on SQLite', () => {
  async function open() {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-meta-'));
    const handle = await openMetadataDb({ driver: 'sqlite', dataDir });
    const other = new Database(path.join(dataDir, 'mcr.db'));
    const names = () =>
      (
        other.prepare('select name from repositories order by name').all() as Array<{
          name: string;
        }>
      ).map((row) => row.name);
    /** Checkpoints the log, and returns how many frames it holds. */
    const walFrames = () =>
      (other.prepare('pragma wal_checkpoint(PASSIVE)').get() as { log: number }).log;
    const close = async () => {
      other.close();
      await handle.close();
      rmSync(dataDir, { recursive: true, force: true });
    };
    return { handle, names, walFrames, close };
  }

  const insert = (name: string) => (trx: Transaction<MetadataSchema>) =>
    trx.insertInto('repositories').values({ name, created_at: 0 }).execute();

  /**
   * Starts three transactions together, so that they share one commit: the
   * inserts of `prefix/a` and `prefix/c` around `middle`.
   */
  function startThree(
    db: Kysely<MetadataSchema>,
    prefix: string,
    middle: (trx: Transaction<MetadataSchema>) => Promise<unknown>,
  ) {
    return Promise.allSettled([
      runTransaction(db, insert(`${prefix}/a`)),
      runTransaction(db, middle),
      runTransaction(db, insert(`${prefix}/c`)),
    ]);
  }

  it('commit together when started together', async () => {
    const { handle, names, walFrames, close } = await open();
    // Checkpoints the log, so that the next commit starts it over.
    walFrames();
    const results = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        runTransaction(handle.db, async (trx) => {
          await insert(`together/r${String(i).padStart(2, '0')}`)(trx);
          return i;
        }),
      ),
    );
    assert.deepEqual(
      results,
      Array.from({ length: 20 }, (_, i) => i),
    );
    assert.equal(names().length, 20);
    // One commit writes each changed page once, as a frame of the
    // write-ahead log. Twenty commits wrote each page twenty times.
    const frames = walFrames();
    assert.ok(frames <= 4, `${frames} log frames`);
    await close();
  });

  it('roll back only the transaction that fails', async () => {
    const { handle, names, close } = await open();
    const failure = new Error('work failed');
    const outcomes = await startThree(handle.db, 'alone', async (trx) => {
      await insert('alone/b')(trx);
      throw failure;
    });
    assert.deepEqual(
      outcomes.map((outcome) => outcome.status),
      ['fulfilled', 'rejected', 'fulfilled'],
    );
    assert.equal((outcomes[1] as PromiseRejectedResult).reason, failure);
    assert.deepEqual(names(), ['alone/a', 'alone/c']);
    await close();
  });

  it('fail together when the commit fails', async () => {
    const { handle, names, close } = await open();
    const outcomes = await startThree(handle.db, 'commit', async (trx) => {
      // A foreign key checked only at the commit, which it then fails.
      await sql`pragma defer_foreign_keys = on`.execute(trx);
      await trx
        .insertInto('tags')
        .values({ repository_id: 999, name: 'x', manifest_id: 999, updated_at: 0 })
        .execute();
    });
    for (const outcome of outcomes) {
      assert.equal(outcome.status, 'rejected');
      assert.match(String((outcome as PromiseRejectedResult).reason), /FOREIGN KEY/);
    }
    assert.deepEqual(names(), []);

    // The next transaction runs as usual.
    await runTransaction(handle.db, insert('commit/d'));
    assert.deepEqual(names(), ['commit/d']);
    await close();
  });

  it('report the error after SQLite rolled back by itself', async () => {
    const { handle, close } = await open();
    // As SQLite does after a full disk, this ends the transaction before the
    // error reaches Kysely, whose own rollback then has nothing to undo.
    const failure = new Error('database or disk is full');
    await assert.rejects(
      handle.db.transaction().execute(async (trx) => {
        await sql`rollback`.execute(trx);
        throw failure;
      }),
      (error: unknown) => error === failure,
    );
    await close();
  });

  it('fail together when one ends the whole transaction', async () => {
    const { handle, names, close } = await open();
    const outcomes = await startThree(handle.db, 'ended', async (trx) => {
      await insert('ended/b')(trx);
      await sql`rollback`.execute(trx);
    });
    assert.deepEqual(
      outcomes.map((outcome) => outcome.status),
      ['rejected', 'rejected', 'rejected'],
    );
    assert.deepEqual(names(), []);
    await runTransaction(handle.db, insert('ended/d'));
    assert.deepEqual(names(), ['ended/d']);
    await close();
  });
});

describe('commits of other connections', () => {
  it('are each seen by the next read of data_version', async () => {
    const { handle, other, commitElsewhere } = await openWithOtherConnection();
    const readAfterRequest = () => {
      handle.onRequestArrival!();
      return handle.externalChangeCounter!();
    };
    try {
      let previous = readAfterRequest();
      assert.equal(readAfterRequest(), previous, 'no commit, same value');
      for (let i = 0; i < 100; i++) {
        // Every tenth commit follows a checkpoint that empties the log and so
        // resets the frame count in the wal-index header.
        if (i % 10 === 9) other.pragma('wal_checkpoint(TRUNCATE)');
        commitElsewhere(`elsewhere/${i}`);
        const current = readAfterRequest();
        assert.notEqual(current, previous, `commit ${i} not seen`);
        assert.equal(readAfterRequest(), current, `value changed without a commit after ${i}`);
        previous = current;
      }
    } finally {
      other.close();
      await handle.close();
    }
  });
});

describe('prepared queries', () => {
  it("binds each call's arguments to SQL compiled once", async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-meta-'));
    const handle = await openMetadataDb({ driver: 'sqlite', dataDir });
    try {
      const insert = new PreparedQuery((db, name: string, createdAt: number) =>
        db.insertInto('repositories').values({ name, created_at: createdAt }).returning('id'),
      );
      const select = new PreparedQuery((db, name: string) =>
        db.selectFrom('repositories').select(['id', 'created_at']).where('name', '=', name),
      );
      const first = await insert.first(handle.db, 'team/one', 111);
      const second = await insert.first(handle.db, 'team/two', 222);
      assert.ok(first, 'first insert returned its id');
      assert.ok(second, 'second insert returned its id');
      assert.notEqual(first.id, second.id);
      assert.deepEqual(await select.first(handle.db, 'team/two'), {
        id: second.id,
        created_at: 222,
      });
      assert.deepEqual(await select.first(handle.db, 'team/one'), {
        id: first.id,
        created_at: 111,
      });
      assert.equal(await select.first(handle.db, 'team/none'), undefined);
      // Inside a transaction too, with the SQL compiled outside it.
      await handle.db.transaction().execute(async (trx) => {
        assert.deepEqual(await select.first(trx, 'team/one'), { id: first.id, created_at: 111 });
      });
    } finally {
      await handle.close();
    }
  });

  it('rejects a query that does not bind every argument', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-meta-'));
    const handle = await openMetadataDb({ driver: 'sqlite', dataDir });
    try {
      // The second argument is never used, so a call could not set it.
      const unbound = new PreparedQuery((db, name: string, _unused: number) =>
        db.selectFrom('repositories').select('id').where('name', '=', name),
      );
      await assert.rejects(unbound.first(handle.db, 'team/one', 1), /binds 1 of its 2 arguments/);
    } finally {
      await handle.close();
    }
  });
});

describe('query plans', () => {
  it('finds manifests through indexes only', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-meta-'));
    const handle = await openMetadataDb({ driver: 'sqlite', dataDir });
    const sqlite = new Database(path.join(dataDir, 'mcr.db'), { readonly: true });
    // Each step of SQLite's plan for a query, such as "SEARCH tags USING INDEX ...".
    const planOf = (query: typeof selectManifestByTag) =>
      (
        sqlite
          .prepare(`explain query plan ${query.sql(handle.db)}`)
          .all('repository', 'reference') as Array<{ detail: string }>
      ).map((row) => row.detail);
    try {
      const byTag = planOf(selectManifestByTag);
      const byDigest = planOf(selectManifestByDigest);
      for (const [name, steps] of [
        ['by tag', byTag],
        ['by digest', byDigest],
      ] as const) {
        // A SCAN reads a whole table, so every step must be an index SEARCH.
        for (const step of steps) assert.match(step, /^SEARCH /, `${name}: ${steps.join('; ')}`);
      }
      assert.ok(
        byTag.some((step) => /^SEARCH tags .*\(repository_id=\? AND name=\?\)/.test(step)),
        `tags are not found by repository and name: ${byTag.join('; ')}`,
      );
    } finally {
      sqlite.close();
      await handle.close();
    }
  });
});
