// The metadata database on PostgreSQL: its change counter, which the caches
// of credentials and manifests rely on. Runs in the PostgreSQL pass only.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import pg from 'pg';

import { openMetadataDb, type MetadataDb } from '../src/metadata/db.js';
import {
  createDatabaseFor,
  databaseUrlFor,
  dropDatabaseFor,
  startPostgres,
  testPostgresUrl,
} from './helpers/postgres.js';
import { getGcRun, insertGarbageBlobs, runGc, startGc, waitForGc } from './helpers/gc.js';
import {
  descriptor,
  OCI_CONFIG,
  OCI_INDEX,
  OCI_LAYER,
  OCI_MANIFEST,
  pushBlob,
  pushImage,
  sha256,
} from './helpers/oci.js';
import { unusedPort } from './helpers/mcrctl.js';
import { runUntilExit, startServer, type TestServer } from './helpers/server.js';

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

    /** Refreshes the counters as an arriving request does, and returns them. */
    async function arrive(): Promise<{ all: number; external: number }> {
      await handle.onRequestArrival?.();
      return { all: handle.changeCounter!(), external: handle.externalChangeCounter!() };
    }

    async function commitElsewhere(name: string): Promise<void> {
      await other.query('insert into repositories (name, created_at) values ($1, 0)', [name]);
    }

    it('changes after each commit of another connection', async () => {
      let previous = await arrive();
      for (let i = 0; i < 20; i++) {
        await commitElsewhere(`pg/r${i}`);
        const seen = await arrive();
        assert.notEqual(seen.all, previous.all, `commit ${i}`);
        assert.notEqual(seen.external, previous.external, `commit ${i}`);
        previous = seen;
      }
    });

    it('changes for arrivals after a commit while earlier ones wait', async () => {
      const before = await arrive();
      const waiting = Array.from({ length: 50 }, () => handle.onRequestArrival?.());
      await commitElsewhere('pg/late');
      const late = Array.from({ length: 50 }, () => handle.onRequestArrival?.());
      await Promise.all(late);
      assert.notEqual(handle.changeCounter!(), before.all);
      await Promise.all(waiting);
    });

    it('keeps no stale row from a commit not yet visible', async () => {
      // A lookup cached under the counter read before it, as the manifest
      // cache does.
      let cached: { version: number; value: number } | undefined;
      const cachedRead = async () => {
        await handle.onRequestArrival?.();
        const version = handle.changeCounter!();
        if (cached?.version === version) return cached.value;
        const row = await handle.db
          .selectFrom('repositories')
          .select('created_at')
          .where('name', '=', 'pg/visible')
          .executeTakeFirstOrThrow();
        cached = { version, value: Number(row.created_at) };
        return cached.value;
      };
      await commitElsewhere('pg/visible');
      // Each commit of the other connection waits 50 ms after writing its
      // commit record and before other sessions see it, while lookups run.
      await other.query('set synchronous_commit = on');
      await other.query('set commit_siblings = 0');
      await other.query('set commit_delay = 50000');
      let writing = true;
      const reader = (async () => {
        while (writing) await cachedRead();
      })();
      try {
        for (let value = 1; value <= 10; value++) {
          await other.query("update repositories set created_at = $1 where name = 'pg/visible'", [
            value,
          ]);
          assert.equal(await cachedRead(), value);
        }
      } finally {
        writing = false;
        await reader;
        await other.query('reset commit_delay');
      }
    });

    it('survives connections ended during a query', async () => {
      await other.query('begin');
      await other.query('lock table tags in access exclusive mode');
      // Inside a transaction, as a manifest push or a garbage collection
      // batch would be.
      const blocked = handle.db
        .transaction()
        .execute((trx) => trx.selectFrom('tags').select('id').execute());
      // Its failure can arrive while the termination below is still under
      // way, so it is caught from the start rather than when asserted.
      const outcome = blocked.then(
        () => new Error('the blocked query finished'),
        (error: unknown) => error,
      );

      const admin = new pg.Client({ connectionString: url });
      await admin.connect();
      try {
        // Waits until the query is blocked, then ends mcr's connections as a
        // server shutdown would.
        for (;;) {
          const { rows } = await admin.query(
            "select 1 from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()",
          );
          if (rows.length > 0) break;
          await sleep(10);
        }

        const otherPid = (other as unknown as { processID: number }).processID;
        await admin.query(
          `select pg_terminate_backend(pid) from pg_stat_activity
            where datname = current_database() and pid <> pg_backend_pid() and pid <> $1`,
          [otherPid],
        );
        assert.match(String(await outcome), /terminat/);
      } finally {
        await other.query('rollback');
        await admin.end();
      }

      // The pool opens new connections for the next queries.
      const rows = await handle.db.selectFrom('tags').select('id').execute();
      assert.ok(Array.isArray(rows));
      assert.ok((await arrive()).all > 0);
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

describe(
  'mcr during a PostgreSQL outage',
  { skip: serverUrl ? false : 'not a PostgreSQL test run' },
  () => {
    it('answers 503 with Retry-After', async () => {
      // A server of its own, because this test stops it.
      const postgres = await startPostgres();
      const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-outage-'));
      let server: TestServer | undefined;
      try {
        server = await startServer({
          dataDir,
          env: {
            MCR_DATABASE_DRIVER: 'postgres',
            MCR_DATABASE_URL: await createDatabaseFor(postgres.url, dataDir),
          },
        });
        const before = await server.fetch('/v2/_catalog');
        assert.equal(before.status, 200);
        await before.arrayBuffer();

        await postgres.stop();
        for (const target of ['/v2/', '/v2/_catalog', '/v2/team/app/manifests/latest']) {
          const response = await server.fetch(target);
          assert.equal(response.status, 503, target);
          assert.equal(response.headers.get('retry-after'), '5', target);
          const body = (await response.json()) as { errors: Array<{ code: string }> };
          assert.equal(body.errors[0]?.code, 'UNAVAILABLE', target);
        }
        const admin = await server.fetch('/v1/repositories');
        assert.equal(admin.status, 503);
        assert.deepEqual(await admin.json(), {
          error: 'the metadata database is unavailable; retry later',
        });
        const health = await server.fetch('/v1/health');
        assert.equal(health.status, 503);
        await health.arrayBuffer();
        // Requests are logged once per 10 s, not once each.
        const logged = server.logs.filter(
          (entry) => entry.msg === 'the metadata database is unavailable; answering 503',
        );
        assert.equal(logged.length, 1);
      } finally {
        await server?.stop();
        await postgres.stop();
        rmSync(dataDir, { recursive: true, force: true });
      }
    });
  },
);

describe(
  'mcr on a database whose collation is not C',
  { skip: serverUrl ? false : 'not a PostgreSQL test run' },
  () => {
    it('pages admin tags in byte order', async () => {
      const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-icu-'));
      const name = `mcr_icu_${path
        .basename(dataDir)
        .toLowerCase()
        .replace(/[^a-z0-9]/g, '')}`;
      const admin = new pg.Client({ connectionString: serverUrl });
      await admin.connect();
      await admin.query(
        `create database ${name} template template0 locale_provider icu icu_locale 'en-US'`,
      );
      const url = new URL(serverUrl as string);
      url.pathname = `/${name}`;
      let server: TestServer | undefined;
      try {
        server = await startServer({
          dataDir,
          env: { MCR_DATABASE_DRIVER: 'postgres', MCR_DATABASE_URL: url.toString() },
        });
        // An ICU collation sorts these otherwise: case and punctuation last.
        const tags = ['1', 'A', 'B', 'Z', '_x', 'a', 'a-b', 'a-c', 'a.b', 'a_b', 'ab', 'b', 'z0'];
        for (const tag of tags) await pushImage(server, 'icu/app', tag);

        const seen: string[] = [];
        let cursor: string | null = null;
        do {
          const query: string = cursor === null ? '' : `&cursor=${encodeURIComponent(cursor)}`;
          const response: Response = await server.fetch(
            `/v1/repositories/icu/app/-/tags?limit=3${query}`,
          );
          assert.equal(response.status, 200);
          const body = (await response.json()) as {
            tags: Array<{ name: string }>;
            next_cursor: string | null;
          };
          seen.push(...body.tags.map((tag) => tag.name));
          cursor = body.next_cursor;
        } while (cursor !== null);
        assert.deepEqual(seen, [...tags].sort());
      } finally {
        await server?.stop();
        await admin.query(`drop database if exists ${name} with (force)`);
        await admin.end();
        rmSync(dataDir, { recursive: true, force: true });
      }
    });
  },
);

/**
 * Starts mcr on a database of its own and opens a second connection to that
 * database, runs `test` with both, then closes them.
 */
async function withSecondConnection(
  env: Record<string, string>,
  test: (server: TestServer, client: pg.Client) => Promise<void>,
): Promise<void> {
  const server = await startServer({ env });
  const client = new pg.Client({ connectionString: databaseUrlFor(server.dataDir) });
  await client.connect();
  try {
    await test(server, client);
  } finally {
    await client.end();
    await server.cleanup();
  }
}

describe(
  'PostgreSQL statement timeout',
  { skip: serverUrl ? false : 'not a PostgreSQL test run' },
  () => {
    it('answers 503 to a request stuck on a lock', async () => {
      await withSecondConnection(
        { MCR_DATABASE_STATEMENT_TIMEOUT: '1s' },
        async (server, locker) => {
          await locker.query('begin');
          await locker.query('lock table repositories in access exclusive mode');
          const started = Date.now();
          const stuck = await server.fetch('/v2/_catalog');
          const waited = Date.now() - started;
          assert.equal(stuck.status, 503);
          assert.equal(stuck.headers.get('retry-after'), '5');
          const body = (await stuck.json()) as { errors: Array<{ code: string }> };
          assert.equal(body.errors[0]?.code, 'UNAVAILABLE');
          assert.ok(waited >= 900, `answered after ${waited} ms, before the timeout`);
          assert.ok(waited < 8_000, `answered after ${waited} ms`);

          await locker.query('rollback');
          const freed = await server.fetch('/v2/_catalog');
          assert.equal(freed.status, 200);
          assert.deepEqual(await freed.json(), { repositories: [] });
        },
      );
    });
  },
);

describe(
  'repository deletion on PostgreSQL',
  { skip: serverUrl ? false : 'not a PostgreSQL test run' },
  () => {
    it('keeps what a concurrent transaction adds', async () => {
      await withSecondConnection({}, async (server, writer) => {
        const layer = await pushBlob(server, 'other/app', 'a layer to link');
        // The repository exists only through this upload session, so
        // cancelling the session deletes it unless something else arrives.
        const started = await server.fetch('/v2/lock/app/blobs/uploads/', { method: 'POST' });
        assert.equal(started.status, 202);
        const location = started.headers.get('location') as string;

        await writer.query('begin');
        await writer.query(
          `insert into repository_blobs (repository_id, blob_id, created_at)
           select r.id, b.id, 0 from repositories r, blobs b where r.name = $1 and b.digest = $2`,
          ['lock/app', layer],
        );
        const cancelling = server.fetch(location, { method: 'DELETE' });
        await sleep(500);
        await writer.query('commit');
        const cancelled = await cancelling;
        assert.equal(cancelled.status, 204);

        const links = await writer.query(
          `select count(*)::int as n from repository_blobs l
           join repositories r on r.id = l.repository_id where r.name = $1`,
          ['lock/app'],
        );
        assert.equal(links.rows[0].n, 1);
        const head = await server.fetch(`/v2/lock/app/blobs/${layer}`, { method: 'HEAD' });
        assert.equal(head.status, 200);
      });
    });
  },
);

describe(
  'garbage collection of manifests on PostgreSQL',
  { skip: serverUrl ? false : 'not a PostgreSQL test run' },
  () => {
    let server: TestServer;
    let other: pg.Client;
    before(async () => {
      server = await startServer({ env: { MCR_GC_GRACE_PERIOD: '0s' } });
      other = new pg.Client({ connectionString: databaseUrlFor(server.dataDir) });
      await other.connect();
    });
    after(async () => {
      await other?.end();
      await server?.cleanup();
    });

    /** Pushes an image by digest, so that nothing tags it, and returns the manifest. */
    async function pushUntagged(repository: string): Promise<{ digest: string; body: Buffer }> {
      const config = JSON.stringify({ architecture: 'amd64', os: 'linux', id: Math.random() });
      const layer = `layer ${Math.random()}`;
      await pushBlob(server, repository, config);
      await pushBlob(server, repository, layer);
      const body = Buffer.from(
        JSON.stringify({
          schemaVersion: 2,
          mediaType: OCI_MANIFEST,
          config: descriptor(OCI_CONFIG, config),
          layers: [descriptor(OCI_LAYER, layer)],
        }),
      );
      const digest = sha256(body);
      const response = await server.fetch(`/v2/${repository}/manifests/${digest}`, {
        method: 'PUT',
        headers: { 'Content-Type': OCI_MANIFEST },
        body,
      });
      assert.equal(response.status, 201);
      return { digest, body };
    }

    it('keeps a manifest that a push tags while the run waits', async () => {
      const { digest } = await pushUntagged('gcwait/tagged');
      // The tag goes in as a push's would, holding a lock on the manifest's
      // row until the commit.
      await other.query('begin');
      await other.query(
        `insert into tags (repository_id, name, manifest_id, updated_at)
         select repository_id, 'late', id, 0 from manifests where digest = $1`,
        [digest],
      );
      const started = await startGc(server, { delete_untagged: true });
      await sleep(500);
      await other.query('commit');
      const run = await waitForGc(server, started.id);
      assert.equal(run.state, 'succeeded', run.error ?? '');

      const tagged = await server.fetch('/v2/gcwait/tagged/manifests/late', {
        headers: { Accept: OCI_MANIFEST },
      });
      assert.equal(tagged.status, 200);
      assert.equal(tagged.headers.get('docker-content-digest'), digest);
      await tagged.arrayBuffer();
    });

    it('rejects an index whose child the run deletes meanwhile', async () => {
      const child = await pushUntagged('gcwait/index');
      // The run's lock on the child's row, and its delete, come first.
      await other.query('begin');
      await other.query('select id from manifests where digest = $1 for update', [child.digest]);
      const index = JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_INDEX,
        manifests: [{ mediaType: OCI_MANIFEST, digest: child.digest, size: child.body.length }],
      });
      const pushing = server.fetch('/v2/gcwait/index/manifests/all', {
        method: 'PUT',
        headers: { 'Content-Type': OCI_INDEX },
        body: index,
      });
      await sleep(500);
      await other.query('delete from manifests where digest = $1', [child.digest]);
      await other.query('commit');

      const pushed = await pushing;
      const body = (await pushed.json()) as { errors: Array<{ code: string }> };
      assert.equal(pushed.status, 400);
      assert.equal(body.errors[0]?.code, 'MANIFEST_BLOB_UNKNOWN');
      const stored = await other.query(
        'select count(*)::int as n from manifests where digest = $1',
        [sha256(index)],
      );
      assert.equal(stored.rows[0].n, 0);
    });
  },
);

/**
 * Builds a TCP forwarder from a loopback port to the test's PostgreSQL
 * server, to stand between mcr and the server. `open` starts listening, and
 * `cut` ends every connection and stops listening, as an outage would.
 */
function databaseForwarder(port: number, target: URL) {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    const upstream = connect(Number(target.port), target.hostname);
    for (const end of [socket, upstream]) {
      sockets.add(end);
      end.on('close', () => sockets.delete(end));
    }
    socket.pipe(upstream).pipe(socket);
    socket.on('error', () => upstream.destroy());
    upstream.on('error', () => socket.destroy());
  });
  return {
    open: () => new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve)),
    cut: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of sockets) socket.destroy();
      }),
  };
}

/** Creates the database of a new data directory and a forwarder to it, and a way to remove all three. */
async function forwardedDatabase() {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-pg-forward-'));
  const target = new URL(await createDatabaseFor(serverUrl as string, dataDir));
  const forwarded = new URL(target);
  forwarded.port = String(await unusedPort());
  const forwarder = databaseForwarder(Number(forwarded.port), target);
  const remove = async () => {
    await forwarder.cut();
    await dropDatabaseFor(serverUrl as string, dataDir);
    rmSync(dataDir, { recursive: true, force: true });
  };
  return { dataDir, forwarded, forwarder, remove };
}

describe(
  'mcr started before PostgreSQL accepts connections',
  { skip: serverUrl ? false : 'not a PostgreSQL test run' },
  () => {
    it('retries until it can connect', async () => {
      const { dataDir, forwarded, forwarder, remove } = await forwardedDatabase();
      // Nothing listens on the port until the forwarder opens it, 2.5 s
      // after mcr starts.
      const opening = sleep(2_500).then(() => forwarder.open());
      let server: TestServer | undefined;
      try {
        server = await startServer({
          dataDir,
          env: {
            MCR_DATABASE_DRIVER: 'postgres',
            MCR_DATABASE_URL: forwarded.toString(),
            MCR_DATABASE_CONNECT_WAIT: '30s',
          },
        });
        await opening;
        const retries = server.logs.filter(
          (entry) =>
            entry.msg === 'PostgreSQL cannot be reached yet; trying again (database.connect_wait)',
        );
        assert.ok(retries.length >= 1, 'no retry was logged');
        assert.equal(retries[0]?.code, 'ECONNREFUSED');
        assert.match(String(retries[0]?.error), /ECONNREFUSED/);
        assert.equal(retries[0]?.err, undefined, 'a retry logs no stack trace');
        await pushImage(server, 'late/app', 'v1');
        const tags = await server.fetch('/v2/late/app/tags/list');
        assert.deepEqual(await tags.json(), { name: 'late/app', tags: ['v1'] });
      } finally {
        await server?.cleanup();
        await remove();
      }
    });
  },
);

describe(
  'garbage collection during an outage',
  { skip: serverUrl ? false : 'not a PostgreSQL test run' },
  () => {
    it('records its end once the database is back', async () => {
      const { dataDir, forwarded, forwarder, remove } = await forwardedDatabase();
      await forwarder.open();
      let server: TestServer | undefined;
      try {
        server = await startServer({
          dataDir,
          env: {
            MCR_DATABASE_DRIVER: 'postgres',
            MCR_DATABASE_URL: forwarded.toString(),
            MCR_GC_GRACE_PERIOD: '0s',
            MCR_GC_LOCK_TTL: '2m',
          },
        });
        // Enough garbage that the run is still going when the outage starts.
        await insertGarbageBlobs(dataDir, 'outage/app', 4_000);
        const started = await startGc(server);
        await sleep(100);
        await forwarder.cut();
        await sleep(3_000);
        await forwarder.open();

        const deadline = Date.now() + 15_000;
        let run = await getGcRun(server, started.id).catch(() => undefined);
        while (run?.state !== 'failed' && Date.now() < deadline) {
          await sleep(200);
          run = await getGcRun(server, started.id).catch(() => undefined);
        }
        assert.equal(run?.state, 'failed');
        // The lock is free again long before its two minutes are up.
        const next = await runGc(server);
        assert.equal(next.state, 'succeeded', next.error ?? '');
      } finally {
        await server?.cleanup();
        await remove();
      }
    });
  },
);

describe('mcr started without a reachable PostgreSQL', () => {
  it('exits with one line naming the URL', async () => {
    const port = await unusedPort();
    const result = runUntilExit({
      MCR_DATABASE_DRIVER: 'postgres',
      MCR_DATABASE_URL: `postgres://mcr:secret-password@127.0.0.1:${port}/mcr`,
      MCR_DATABASE_CONNECT_WAIT: '0s',
    });
    assert.equal(result.status, 1, result.stderr);
    assert.equal(
      result.stderr,
      `mcr: failed to open the PostgreSQL database postgres://mcr:***@127.0.0.1:${port}/mcr (MCR_DATABASE_URL): connect ECONNREFUSED 127.0.0.1:${port}\n`,
    );
  });
});
