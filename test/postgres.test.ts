// The metadata database on PostgreSQL: its change counter, which the caches
// of credentials and manifests rely on. Runs in the PostgreSQL pass only.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import pg from 'pg';

import { openMetadataDb, type MetadataDb } from '../src/metadata/db.js';
import { createDatabaseFor, dropDatabaseFor, testPostgresUrl } from './helpers/postgres.js';

const serverUrl = testPostgresUrl();

describe(
  'PostgreSQL change counter',
  { skip: serverUrl ? false : 'not a PostgreSQL test run' },
  () => {
    let dataDir: string;
    let url: string;
    let handle: MetadataDb;
    let other: pg.Client;
    const connectionErrors: Error[] = [];

    before(async () => {
      dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-pg-'));
      url = await createDatabaseFor(serverUrl as string, dataDir);
      handle = await openMetadataDb({
        driver: 'postgres',
        dataDir,
        url,
        onConnectionError: (error) => connectionErrors.push(error),
      });
      other = new pg.Client({ connectionString: url });
      // The last test ends this connection by dropping the database.
      other.on('error', () => undefined);
      await other.connect();
    });
    after(async () => {
      await other?.end().catch(() => undefined);
      await handle?.close();
      await dropDatabaseFor(serverUrl as string, dataDir);
      rmSync(dataDir, { recursive: true, force: true });
    });

    /** The counters as a request arriving now reads them. */
    async function arrive(): Promise<{ all: number; external: number }> {
      await handle.onRequestArrival?.();
      return { all: handle.changeCounter!(), external: handle.externalChangeCounter!() };
    }

    /**
     * Commits a row from the other connection and returns the log position
     * just after it, as a number: every request that arrives later must read
     * at least this. Other test files write to the same server meanwhile, so
     * the position may have moved further.
     */
    async function commitElsewhere(name: string): Promise<number> {
      await other.query('insert into repositories (name, created_at) values ($1, 0)', [name]);
      const { rows } = await other.query<{ lsn: string }>(
        'select pg_current_wal_insert_lsn() as lsn',
      );
      const [high, low] = (rows[0]?.lsn ?? '').split('/');
      return parseInt(high ?? '', 16) * 2 ** 32 + parseInt(low ?? '', 16);
    }

    it('moves past each commit of another connection', async () => {
      await arrive();
      for (let i = 0; i < 20; i++) {
        const committed = await commitElsewhere(`pg/r${i}`);
        const seen = await arrive();
        assert.ok(seen.all >= committed, `commit ${i}: at ${committed}, read ${seen.all}`);
        assert.ok(
          seen.external >= committed,
          `commit ${i}: at ${committed}, read ${seen.external}`,
        );
      }
    });

    it('moves past a commit for arrivals after it, while earlier ones wait', async () => {
      const waiting = Array.from({ length: 50 }, () => handle.onRequestArrival?.());
      const committed = await commitElsewhere('pg/late');
      const late = Array.from({ length: 50 }, () => handle.onRequestArrival?.());
      await Promise.all(late);
      assert.ok(handle.changeCounter!() >= committed);
      await Promise.all(waiting);
    });

    it('never repeats a value while the database cannot be reached', async () => {
      const reachable = await arrive();
      await dropDatabaseFor(serverUrl as string, dataDir);
      const seen = new Set([reachable.all]);
      for (let i = 0; i < 3; i++) {
        // Resolves although the query fails, because the request itself
        // meets the failure in its own queries.
        const { all } = await arrive();
        assert.ok(!seen.has(all), `value ${all} repeated`);
        seen.add(all);
      }
      // The pool's idle connections were ended too. Each failure is reported
      // instead of ending the process.
      assert.ok(connectionErrors.length > 0);
      assert.match(connectionErrors[0]?.message ?? '', /terminat/);
    });
  },
);
