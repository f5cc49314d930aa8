// Kills mcr with SIGKILL while garbage collection sweeps 10,000 garbage
// blobs, restarts it on the same data directory and checks that the next run
// takes over the expired lock, deletes what is left, and loses nothing that
// is referenced. Also checks that only one run may be active at a time.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';

import {
  blobFilePath,
  blobRows,
  getGcRun,
  insertGarbageBlobs,
  pullProblems,
  referenceProblems,
  startGc,
  storeProblems,
  waitForGc,
  type GcRunJson,
} from './helpers/gc.js';
import { openTestDatabase, queryTestDatabase } from './helpers/database.js';
import {
  descriptor,
  OCI_CONFIG,
  OCI_LAYER,
  OCI_MANIFEST,
  pushBlob,
  pushImage,
  sha256,
} from './helpers/oci.js';
import { startServer, type TestServer } from './helpers/server.js';

const GARBAGE_BLOBS = 10_000;
const ENV = { MCR_GC_GRACE_PERIOD: '0s', MCR_GC_LOCK_TTL: '2s' };

let dataDir: string;
let server: TestServer;
let garbage: Map<string, Buffer>;
const images: Array<{ tag: string; digest: string }> = [];

before(async () => {
  dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-gc-crash-'));
  server = await startServer({ dataDir, env: ENV });
  for (let i = 0; i < 5; i++) {
    const image = await pushImage(server, 'crash/app', `v${i}`);
    images.push({ tag: `v${i}`, digest: image.digest });
  }
  await server.stop();
  garbage = await insertGarbageBlobs(dataDir, 'crash/garbage', GARBAGE_BLOBS);
  server = await startServer({ dataDir, env: ENV });
});

after(async () => {
  await server?.stop();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

async function countRows(table: string, where = ''): Promise<number> {
  const { rows } = await queryTestDatabase(dataDir, `select count(*) as n from ${table} ${where}`);
  return Number(rows[0]?.n);
}

/** Posts /v1/gc until it is accepted, which happens once the dead run's lock has expired. */
async function startGcWhenFree(timeoutMs: number): Promise<{ run: GcRunJson; conflicts: number }> {
  const deadline = Date.now() + timeoutMs;
  let conflicts = 0;
  for (;;) {
    const response = await server.fetch('/v1/gc', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: '{}',
    });
    if (response.status === 202) return { run: (await response.json()) as GcRunJson, conflicts };
    assert.equal(response.status, 409, await response.text());
    conflicts += 1;
    if (Date.now() > deadline) throw new Error(`POST /v1/gc still 409 after ${timeoutMs} ms`);
    await sleep(200);
  }
}

describe('garbage collection killed during a sweep', () => {
  let killed: GcRunJson;

  it('rejects a second run while one runs', async () => {
    killed = await startGc(server);
    const second = await server.fetch('/v1/gc', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: '{"dry_run": true}',
    });
    assert.equal(second.status, 409);
    const body = (await second.json()) as { error: string };
    assert.match(body.error, new RegExp(`run ${killed.id} is in progress`));
  });

  it('finishes on restart and keeps every referenced blob', async () => {
    const deadline = Date.now() + 30_000;
    let progress = killed;
    while (!(progress.progress.phase === 'blobs' && Number(progress.progress.blobs_deleted) > 0)) {
      assert.equal(progress.state, 'running', 'the run ended before the sweep could be killed');
      assert.ok(Date.now() < deadline, 'the sweep did not start within 30 s');
      await sleep(2);
      progress = await getGcRun(server, killed.id);
    }
    await server.kill();

    const rowsAfterKill = await blobRows(dataDir);
    const deletedBeforeKill = [...garbage.keys()].filter((digest) => !rowsAfterKill.has(digest));
    const tombstonesAfterKill = await countRows('blob_tombstones');
    console.log(
      `killed run ${killed.id} after it deleted ${deletedBeforeKill.length} of ${GARBAGE_BLOBS} garbage blobs; ${tombstonesAfterKill} tombstones left`,
    );
    assert.ok(deletedBeforeKill.length > 0, 'the sweep had deleted some garbage');
    assert.ok(deletedBeforeKill.length < GARBAGE_BLOBS, 'the sweep had not finished');

    const restartedAt = Date.now();
    server = await startServer({ dataDir, env: ENV });

    // Uploading content whose row the killed run deleted works again once
    // the tombstone (if the kill left one for it) is recovered.
    const [repushed, bytes] = [...garbage].find(([digest]) => !rowsAfterKill.has(digest))!;
    const upload = await server.fetch(`/v2/crash/again/blobs/uploads/?digest=${repushed}`, {
      method: 'POST',
      body: bytes,
      headers: { 'Content-Type': 'application/octet-stream' },
    });
    assert.equal(upload.status, 201, await upload.text());
    const config = await pushBlob(server, 'crash/again', '{"os":"linux"}');
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: descriptor(OCI_CONFIG, '{"os":"linux"}'),
        layers: [descriptor(OCI_LAYER, bytes)],
      }),
    );
    const put = await server.fetch('/v2/crash/again/manifests/v1', {
      method: 'PUT',
      body: manifest,
      headers: { 'Content-Type': OCI_MANIFEST },
    });
    assert.equal(put.status, 201, await put.text());
    assert.equal(config, sha256('{"os":"linux"}'));

    const { run: next, conflicts } = await startGcWhenFree(30_000);
    const finished = await waitForGc(server, next.id);
    console.log(
      `next run accepted ${Date.now() - restartedAt} ms after restart, after ${conflicts} conflicts; it deleted ${finished.blobs_deleted} blobs and recovered ${finished.progress.tombstones_recovered} tombstones`,
    );
    assert.equal(finished.state, 'succeeded', finished.error ?? '');

    const dead = await getGcRun(server, killed.id);
    assert.equal(dead.state, 'failed');
    assert.match(dead.error ?? '', /interrupted/);

    const rows = await blobRows(dataDir);
    const left = [...garbage.keys()].filter((digest) => rows.has(digest));
    assert.deepEqual(
      left,
      [repushed],
      'only the garbage blob uploaded again and referenced is left',
    );
    assert.equal(await countRows('blob_tombstones'), 0);
    assert.equal(await countRows('blob_commits'), 0);
    assert.equal(await countRows('gc_runs', "where state = 'running'"), 0);
    assert.deepEqual(await storeProblems(dataDir), []);
    assert.deepEqual(await referenceProblems(dataDir), []);
    for (const image of images) {
      assert.deepEqual(await pullProblems(server, 'crash/app', image.tag), []);
    }
    assert.deepEqual(await pullProblems(server, 'crash/again', 'v1'), []);

    // fsck, the operator's own check, agrees that nothing is damaged.
    const fsck = await server.fetch('/v1/fsck', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: '{}',
    });
    const lines = (await fsck.text()).trim().split('\n');
    const report = JSON.parse(lines[lines.length - 1] as string) as {
      type: string;
      clean: boolean;
      corrupt: unknown[];
      missingBytes: unknown[];
      brokenManifests: unknown[];
    };
    assert.equal(report.type, 'report');
    assert.deepEqual(report.corrupt, []);
    assert.deepEqual(report.missingBytes, []);
    assert.deepEqual(report.brokenManifests, []);
  });

  it('recovers a tombstone that a crashed run left', async () => {
    // The state a run leaves when it is killed between deleting a blob's
    // row and deleting its file: a tombstone, the file, and the lock of a
    // holder that no longer renews it.
    await server.stop();
    const bytes = Buffer.from(`tombstoned blob ${Date.now()}`);
    const digest = sha256(bytes);
    const file = blobFilePath(dataDir, digest);
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, bytes);
    const db = await openTestDatabase(dataDir);
    const now = Date.now();
    await db.query('insert into blob_tombstones (digest, holder, created_at) values (?, ?, ?)', [
      digest,
      'crashed-host:1:run',
      now,
    ]);
    await db.query(
      'insert into locks (name, holder, acquired_at, expires_at) values (?, ?, ?, ?)',
      ['gc', 'crashed-host:1:run', now, now + 2000],
    );
    await db.close();

    server = await startServer({ dataDir, env: ENV });
    const started = Date.now();
    const upload = await server.fetch(`/v2/crash/tombstoned/blobs/uploads/?digest=${digest}`, {
      method: 'POST',
      body: bytes,
      headers: { 'Content-Type': 'application/octet-stream' },
    });
    const waitedMs = Date.now() - started;
    console.log(`upload of a tombstoned digest completed after ${waitedMs} ms`);
    assert.equal(upload.status, 201, await upload.text());
    assert.ok(waitedMs >= 1000, 'the upload waited for the recovery');
    assert.equal(await countRows('blob_tombstones'), 0);
    assert.ok(
      server.logs.some(
        (entry) =>
          entry.msg === 'blob commit waited for garbage collection to delete the same digest',
      ),
    );
    assert.deepEqual(await storeProblems(dataDir), []);
    const pulled = await server.fetch(`/v2/crash/tombstoned/blobs/${digest}`);
    assert.equal(pulled.status, 200);
    assert.equal(sha256(Buffer.from(await pulled.arrayBuffer())), digest);
  });
});
