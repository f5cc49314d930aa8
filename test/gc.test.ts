// Garbage collection against a real mcr process: which blobs, manifests and
// uploads a run deletes, what it keeps, and the /v1/gc API. The grace period
// is 0s, so everything pushed before a run starts and no longer referenced
// is garbage.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { existsSync, mkdirSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';

import {
  blobFilePath,
  blobFiles,
  blobRows,
  getGcRun,
  insertGarbageBlobs,
  pullProblems,
  referenceProblems,
  runGc,
  startGc,
  storeProblems,
  waitForGc,
  type GcRunJson,
} from './helpers/gc.js';
import { openTestDatabase, queryTestDatabase } from './helpers/database.js';
import {
  descriptor,
  OCI_CONFIG,
  OCI_INDEX,
  OCI_LAYER,
  OCI_MANIFEST,
  pushBlob,
  sha256,
} from './helpers/oci.js';
import { ConfigError, loadConfig } from '../src/config/index.js';
import { basicAuth, startServer, type TestServer } from './helpers/server.js';

let server: TestServer;
before(async () => {
  server = await startServer({ env: { MCR_GC_GRACE_PERIOD: '0s' } });
});
after(async () => {
  await server.cleanup();
});

/** A pushed manifest with the digests of its config and layers. */
interface Pushed {
  digest: string;
  size: number;
  config: string;
  layers: string[];
}

/**
 * Pushes an image with its own config and the given layers. Without a
 * reference it pushes by digest, leaving the manifest untagged.
 */
async function pushLayers(
  repository: string,
  reference: string | undefined,
  layers: string[],
  extra: Record<string, unknown> = {},
): Promise<Pushed> {
  const config = JSON.stringify({ architecture: 'amd64', os: 'linux', id: randomUUID() });
  await pushBlob(server, repository, config);
  for (const layer of layers) await pushBlob(server, repository, layer);
  const body = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: descriptor(OCI_CONFIG, config),
      layers: layers.map((layer) => descriptor(OCI_LAYER, layer)),
      ...extra,
    }),
  );
  await putManifest(repository, reference ?? sha256(body), body, OCI_MANIFEST);
  return {
    digest: sha256(body),
    size: body.length,
    config: sha256(config),
    layers: layers.map((layer) => sha256(layer)),
  };
}

async function putManifest(
  repository: string,
  reference: string,
  body: Buffer,
  mediaType: string,
): Promise<void> {
  const response = await server.fetch(`/v2/${repository}/manifests/${reference}`, {
    method: 'PUT',
    body,
    headers: { 'Content-Type': mediaType },
  });
  assert.equal(response.status, 201, `PUT ${repository}:${reference}: ${await response.text()}`);
}

async function deleteManifest(repository: string, reference: string): Promise<void> {
  const response = await server.fetch(`/v2/${repository}/manifests/${reference}`, {
    method: 'DELETE',
  });
  assert.equal(response.status, 202, `DELETE ${repository}:${reference}`);
}

async function assertPulls(repository: string, reference: string): Promise<void> {
  assert.deepEqual(await pullProblems(server, repository, reference), []);
}

function layer(name: string): string {
  return `${name} ${randomUUID()}`;
}

function assertSucceeded(run: GcRunJson): void {
  assert.equal(run.state, 'succeeded', `run ${run.id} failed: ${run.error}`);
  assert.equal(run.error, null);
  assert.notEqual(run.finished_at, null);
  assert.equal(run.progress.phase, 'done');
}

describe('garbage collection of blobs and manifests', () => {
  it('deletes exactly the unreferenced blobs', async () => {
    const shared = layer('shared');
    const one = await pushLayers('gc/a', 'one', [shared, layer('only in one')]);
    const two = await pushLayers('gc/a', 'two', [shared, layer('only in two')]);
    const three = await pushLayers('gc/b', 'three', [shared, layer('only in three')]);

    // An index whose children are untagged: their blobs are referenced only
    // through the index.
    const x = await pushLayers('gc/c', undefined, [layer('x')]);
    const y = await pushLayers('gc/c', undefined, [layer('y')]);
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_INDEX,
        manifests: [
          { mediaType: OCI_MANIFEST, digest: x.digest, size: x.size },
          { mediaType: OCI_MANIFEST, digest: y.digest, size: y.size },
        ],
      }),
    );
    await putManifest('gc/c', 'multi', index, OCI_INDEX);

    // An untagged referrer of a tagged image.
    const referrer = await pushLayers('gc/b', undefined, [layer('signature')], {
      artifactType: 'application/vnd.example.signature',
      subject: { mediaType: OCI_MANIFEST, digest: three.digest, size: three.size },
    });

    const lone = await pushBlob(server, 'gc/d', layer('never referenced'));

    await deleteManifest('gc/a', one.digest);
    await deleteManifest('gc/a', 'two');

    const garbage = [one.config, one.layers[1] as string, lone];
    const rowsBefore = await blobRows(server.dataDir);
    const filesBefore = blobFiles(server.dataDir);
    const garbageBytes = garbage.reduce((sum, digest) => sum + (rowsBefore.get(digest) ?? 0), 0);

    const dry = await runGc(server, { dry_run: true });
    assertSucceeded(dry);
    assert.equal(dry.dry_run, true);
    assert.equal(dry.blobs_deleted, garbage.length);
    assert.equal(dry.bytes_freed, garbageBytes);
    assert.deepEqual(await blobRows(server.dataDir), rowsBefore, 'a dry run deletes no row');
    assert.deepEqual(blobFiles(server.dataDir), filesBefore, 'a dry run deletes no file');

    const real = await runGc(server);
    assertSucceeded(real);
    assert.equal(real.dry_run, false);
    assert.equal(real.blobs_deleted, dry.blobs_deleted);
    assert.equal(real.bytes_freed, dry.bytes_freed);
    assert.equal(real.manifests_deleted, 0);

    const expectedRows = new Map(rowsBefore);
    for (const digest of garbage) expectedRows.delete(digest);
    assert.deepEqual(await blobRows(server.dataDir), expectedRows);
    assert.deepEqual(blobFiles(server.dataDir), new Set(expectedRows.keys()));
    assert.deepEqual(await storeProblems(server.dataDir), []);
    assert.deepEqual(await referenceProblems(server.dataDir), []);

    await assertPulls('gc/a', two.digest);
    await assertPulls('gc/b', 'three');
    await assertPulls('gc/b', referrer.digest);
    await assertPulls('gc/c', 'multi');
    for (const digest of [...x.layers, ...y.layers, sha256(shared)]) {
      assert.ok(expectedRows.has(digest), `blob ${digest} kept`);
    }

    // With delete_untagged, the untagged manifest two goes and frees the
    // blobs only it used; the index's children and the referrer stay.
    const untagged = await runGc(server, { delete_untagged: true });
    assertSucceeded(untagged);
    assert.equal(untagged.manifests_deleted, 1);
    assert.equal(untagged.blobs_deleted, 2);
    let rows = await blobRows(server.dataDir);
    assert.ok(!rows.has(two.config), 'config of two deleted');
    assert.ok(!rows.has(two.layers[1] as string), 'layer only in two deleted');
    assert.ok(rows.has(sha256(shared)), 'shared layer kept for three');
    await assertPulls('gc/b', 'three');
    await assertPulls('gc/b', referrer.digest);
    await assertPulls('gc/c', 'multi');

    // Untagging the index frees it, then its children, then their blobs.
    await deleteManifest('gc/c', 'multi');
    const children = await runGc(server, { delete_untagged: true });
    assertSucceeded(children);
    assert.equal(children.manifests_deleted, 3);
    assert.equal(children.blobs_deleted, 4);
    rows = await blobRows(server.dataDir);
    for (const digest of [x.config, y.config, ...x.layers, ...y.layers]) {
      assert.ok(!rows.has(digest), `blob ${digest} of an index child deleted`);
    }

    // Deleting the subject makes its referrer deletable, and then every
    // remaining blob is garbage.
    await deleteManifest('gc/b', three.digest);
    const last = await runGc(server, { delete_untagged: true });
    assertSucceeded(last);
    assert.equal(last.manifests_deleted, 1);
    assert.equal(last.blobs_deleted, 5);
    assert.deepEqual(await blobRows(server.dataDir), new Map());
    assert.deepEqual(blobFiles(server.dataDir), new Set());
  });
});

describe('garbage collection during a sweep', () => {
  it('keeps blobs pushed and referenced during the sweep', async () => {
    // Thousands of old garbage blobs make the sweep long enough to push
    // during it. The sweep goes by row id, so it has passed the first
    // garbage blob and not yet reached the last when the pushes land.
    const garbage = [...(await insertGarbageBlobs(server.dataDir, 'gc/bulk', 10_000))];
    const [firstDigest, firstBytes] = garbage[0]!;
    const [lastDigest, lastBytes] = garbage[garbage.length - 1]!;

    const started = await startGc(server);
    const db = await openTestDatabase(server.dataDir);
    const deadline = Date.now() + 30_000;
    while ((await db.query('select 1 from blobs where digest = ?', [firstDigest])).rows.length) {
      assert.ok(Date.now() < deadline, 'the sweep did not reach the first garbage blob in 30 s');
      await sleep(1);
    }
    await db.close();

    await pushBlob(server, 'gc/during', firstBytes);
    await pushBlob(server, 'gc/during', lastBytes);
    const fresh = layer('pushed during the sweep');
    await pushBlob(server, 'gc/during', fresh);
    const config = await pushBlob(server, 'gc/during', '{"os":"linux"}');
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: descriptor(OCI_CONFIG, '{"os":"linux"}'),
        layers: [firstBytes, lastBytes, Buffer.from(fresh)].map((bytes) =>
          descriptor(OCI_LAYER, bytes),
        ),
      }),
    );
    await putManifest('gc/during', 'v1', manifest, OCI_MANIFEST);
    const during = await getGcRun(server, started.id);
    assert.equal(during.state, 'running', 'the pushes finished while the run was still sweeping');

    const run = await waitForGc(server, started.id);
    assertSucceeded(run);
    const rows = await blobRows(server.dataDir);
    for (const digest of [firstDigest, lastDigest, sha256(fresh), config]) {
      assert.ok(rows.has(digest), `blob ${digest} kept`);
    }
    assert.equal(
      garbage.filter(([digest]) => rows.has(digest)).length,
      2,
      'every other garbage blob deleted',
    );
    await assertPulls('gc/during', 'v1');
    assert.deepEqual(await storeProblems(server.dataDir), []);
  });
});

describe('garbage collection of uploads and orphaned files', () => {
  it('deletes abandoned sessions and files without rows', async () => {
    const startUpload = async () => {
      const response = await server.fetch('/v2/gc/uploads/blobs/uploads/', { method: 'POST' });
      assert.equal(response.status, 202);
      const location = response.headers.get('location') as string;
      const patch = await server.fetch(location, {
        method: 'PATCH',
        body: 'partial data',
        headers: { 'Content-Type': 'application/octet-stream' },
      });
      assert.equal(patch.status, 202);
      return patch.headers.get('location') as string;
    };
    const abandoned = await startUpload();
    const active = await startUpload();
    const abandonedId = abandoned.split('/').pop() as string;
    const activeId = active.split('/').pop() as string;

    await queryTestDatabase(server.dataDir, 'update uploads set updated_at = ? where id = ?', [
      Date.now() - 2 * 3_600_000,
      abandonedId,
    ]);

    const uploadsDir = path.join(server.dataDir, 'uploads');
    const twoHoursAgo = new Date(Date.now() - 2 * 3_600_000);
    const orphanedUpload = path.join(uploadsDir, randomUUID());
    writeFileSync(orphanedUpload, 'left behind');
    utimesSync(orphanedUpload, twoHoursAgo, twoHoursAgo);
    const recentUpload = path.join(uploadsDir, randomUUID());
    writeFileSync(recentUpload, 'being written');
    const notAnUpload = path.join(uploadsDir, 'README');
    writeFileSync(notAnUpload, 'not an upload');
    utimesSync(notAnUpload, twoHoursAgo, twoHoursAgo);

    const orphanBytes = Buffer.from(`orphaned blob ${randomUUID()}`);
    const orphanDigest = sha256(orphanBytes);
    const orphanFile = blobFilePath(server.dataDir, orphanDigest);
    mkdirSync(path.dirname(orphanFile), { recursive: true });
    writeFileSync(orphanFile, orphanBytes);

    const run = await runGc(server, { upload_max_age: '1h' });
    assertSucceeded(run);
    assert.equal(run.uploads_deleted, 1);
    assert.equal(run.progress.upload_files_deleted, 1);
    assert.equal(run.progress.orphaned_blob_files_deleted, 1);

    assert.equal((await server.fetch(abandoned)).status, 404, 'abandoned session gone');
    assert.equal((await server.fetch(active)).status, 204, 'recent session kept');
    assert.ok(!existsSync(path.join(uploadsDir, abandonedId)), 'abandoned session data deleted');
    assert.ok(existsSync(path.join(uploadsDir, activeId)), 'recent session data kept');
    assert.ok(!existsSync(orphanedUpload), 'old upload file without a session deleted');
    assert.ok(existsSync(recentUpload), 'recent upload file kept');
    assert.ok(existsSync(notAnUpload), 'file that is no upload kept');
    assert.ok(!existsSync(orphanFile), 'blob file without a row deleted');

    const finish = await server.fetch(`${active}?digest=${sha256('partial data')}`, {
      method: 'PUT',
    });
    assert.equal(finish.status, 201, 'the kept session still completes');
  });

  it('keeps an old session while a request holds it', async () => {
    const startUpload = async () => {
      const started = await server.fetch('/v2/gc/held/blobs/uploads/', { method: 'POST' });
      assert.equal(started.status, 202);
      return started.headers.get('location') as string;
    };
    const heldSession = await startUpload();
    const expired = await startUpload();
    const hour = 3_600_000;
    for (const [location, heldUntil] of [
      [heldSession, Date.now() + hour],
      [expired, Date.now() - 1000],
    ] as const) {
      await queryTestDatabase(
        server.dataDir,
        'update uploads set updated_at = ?, holder = ?, held_until = ? where id = ?',
        [
          Date.now() - 2 * hour,
          'a request of another process',
          heldUntil,
          location.split('/').pop(),
        ],
      );
    }

    const run = await runGc(server, { upload_max_age: '1h' });
    assertSucceeded(run);
    assert.equal(run.uploads_deleted, 1);
    assert.equal((await server.fetch(heldSession)).status, 204, 'held session kept');
    assert.equal((await server.fetch(expired)).status, 404, 'session of an ended hold deleted');

    const cancel = await server.fetch(heldSession, { method: 'DELETE' });
    assert.equal(cancel.status, 416, 'a cancel waits for the holder');
    assert.equal(cancel.headers.get('range'), '0-0');
  });
});

describe('garbage collection of empty repositories', () => {
  async function repositoryNames(): Promise<string[]> {
    const response = await server.fetch('/v1/repositories?limit=1000');
    assert.equal(response.status, 200);
    const body = (await response.json()) as { repositories: Array<{ name: string }> };
    return body.repositories.map((row) => row.name);
  }

  it('deletes a repository whose images were deleted', async () => {
    const emptied = await pushLayers('emptied/app', 'v1', ['layer of emptied/app']);
    await pushLayers('kept/app', 'v1', ['layer of kept/app']);
    await deleteManifest('emptied/app', emptied.digest);

    const dry = await runGc(server, { dry_run: true });
    assert.equal(dry.state, 'succeeded');
    // The repository still links its blobs, which only a real run deletes.
    assert.equal(typeof dry.progress.repositories_deleted, 'number');
    assert.ok((await repositoryNames()).includes('emptied/app'), 'dry run deletes nothing');

    const real = await runGc(server);
    assert.equal(real.state, 'succeeded', real.error ?? '');
    assert.ok(Number(real.progress.repositories_deleted) >= 1);
    const names = await repositoryNames();
    assert.ok(!names.includes('emptied/app'), 'empty repository deleted');
    assert.ok(names.includes('kept/app'), 'repository with an image kept');
    const deletedLog = server.logs.filter(
      (entry) =>
        entry.msg === 'empty repositories deleted' &&
        (entry.repositories as string[]).includes('emptied/app'),
    );
    assert.equal(deletedLog.length, 1);

    // A push brings the repository back.
    await pushLayers('emptied/app', 'v2', ['layer of emptied/app, again']);
    assert.ok((await repositoryNames()).includes('emptied/app'));
    await assertPulls('emptied/app', 'v2');
  });
});

describe('/v1/gc', () => {
  it('lists runs newest first with a cursor', async () => {
    const first = await runGc(server, { dry_run: true });
    const second = await runGc(server, { dry_run: true });
    const third = await runGc(server, { dry_run: true });

    const page1 = await server.fetch('/v1/gc?limit=2');
    assert.equal(page1.status, 200);
    const body1 = (await page1.json()) as { runs: GcRunJson[]; next_cursor: string | null };
    assert.deepEqual(
      body1.runs.map((run) => run.id),
      [third.id, second.id],
    );
    assert.equal(typeof body1.next_cursor, 'string');

    const page2 = await server.fetch(
      `/v1/gc?limit=2&cursor=${encodeURIComponent(body1.next_cursor as string)}`,
    );
    const body2 = (await page2.json()) as { runs: GcRunJson[]; next_cursor: string | null };
    assert.equal(body2.runs[0]?.id, first.id);
    assert.equal(body2.runs[0]?.trigger, 'api');

    const bad = await server.fetch('/v1/gc?cursor=not-a-cursor');
    assert.equal(bad.status, 400);
  });

  it('rejects bad input and unknown runs', async () => {
    const post = (body: string, headers: Record<string, string> = {}) =>
      server.fetch('/v1/gc', {
        method: 'POST',
        body,
        headers: { 'Content-Type': 'application/json', ...headers },
      });

    const unknownKey = await post('{"dryrun": true}');
    assert.equal(unknownKey.status, 400);
    assert.match(((await unknownKey.json()) as { error: string }).error, /dryrun|additional/);

    const badAge = await post('{"upload_max_age": "soon"}');
    assert.equal(badAge.status, 400);
    assert.match(((await badAge.json()) as { error: string }).error, /upload_max_age/);

    const wrongType = await post('{"dry_run": "yes"}');
    assert.equal(wrongType.status, 400);

    const missing = await server.fetch('/v1/gc/999999');
    assert.equal(missing.status, 404);
    assert.match(((await missing.json()) as { error: string }).error, /999999 not found/);

    assert.equal((await server.fetch('/v1/gc/abc')).status, 400);

    const anonymous = await fetch(`${server.url}/v1/gc`, { method: 'POST' });
    assert.equal(anonymous.status, 401);

    const created = await server.fetch('/v1/accounts', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({
        username: 'gc-user',
        password: 'gc-user-password',
        role: 'user',
        kind: 'human',
      }),
    });
    assert.equal(created.status, 201);
    const forbidden = await post('{}', {
      authorization: basicAuth('gc-user', 'gc-user-password'),
    });
    assert.equal(forbidden.status, 403);
  });

  it('accepts a POST without a body', async () => {
    const response = await server.fetch('/v1/gc', { method: 'POST' });
    assert.equal(response.status, 202, await response.clone().text());
    const run = (await response.json()) as GcRunJson;
    assert.equal(run.trigger, 'api');
    assert.equal(run.dry_run, false);
    let finished = run;
    while (finished.state === 'running') finished = await getGcRun(server, run.id);
    assertSucceeded(finished);
  });
});

describe('gc configuration', () => {
  it('reads the gc keys from the environment', () => {
    const config = loadConfig({
      env: {
        MCR_GC_SCHEDULE: '12h',
        MCR_GC_UPLOAD_MAX_AGE: '2h',
        MCR_GC_DELETE_UNTAGGED: 'true',
        MCR_GC_LOCK_TTL: '30s',
      },
    });
    assert.equal(config.gcScheduleMs, 12 * 3_600_000);
    assert.equal(config.gcUploadMaxAgeMs, 2 * 3_600_000);
    assert.equal(config.gc.delete_untagged, true);
    assert.equal(config.gcLockTtlMs, 30_000);
  });

  it('defaults to no schedule', () => {
    const config = loadConfig({ env: {} });
    assert.equal(config.gcScheduleMs, undefined);
    assert.equal(config.gcUploadMaxAgeMs, 24 * 3_600_000);
    assert.equal(config.gc.delete_untagged, false);
    assert.equal(config.gcLockTtlMs, 60_000);
  });

  it('rejects invalid gc values', () => {
    for (const [name, value] of [
      ['MCR_GC_SCHEDULE', 'daily'],
      ['MCR_GC_SCHEDULE', '0s'],
      ['MCR_GC_UPLOAD_MAX_AGE', '1 day'],
      ['MCR_GC_DELETE_UNTAGGED', 'yes'],
      ['MCR_GC_LOCK_TTL', '500ms'],
    ] as const) {
      assert.throws(
        () => loadConfig({ env: { [name]: value } }),
        (error: unknown) => error instanceof ConfigError && error.message.includes(name),
        `${name}=${value}`,
      );
    }
  });

  it('runs garbage collection on the schedule', async () => {
    const scheduled = await startServer({
      env: { MCR_GC_SCHEDULE: '500ms', MCR_GC_GRACE_PERIOD: '0s' },
    });
    try {
      const lone = await pushBlob(scheduled, 'gc/scheduled', layer('unreferenced'));
      const deadline = Date.now() + 10_000;
      let runs: GcRunJson[] = [];
      while (runs.filter((run) => run.state === 'succeeded').length < 2) {
        assert.ok(Date.now() < deadline, 'two scheduled runs did not finish within 10 s');
        await sleep(100);
        const response = await scheduled.fetch('/v1/gc');
        runs = ((await response.json()) as { runs: GcRunJson[] }).runs;
      }
      assert.ok(runs.every((run) => run.trigger === 'schedule'));
      assert.ok(
        !(await blobRows(scheduled.dataDir)).has(lone),
        'the scheduled runs deleted the blob',
      );
    } finally {
      await scheduled.cleanup();
    }
  });
});
