// Runs garbage collection back to back while a scripted client and skopeo
// push images that re-use the layers of deleted images, then checks that
// every kept image pulls back complete and every stored blob hashes to its
// digest.
//
// The grace period is 30s, so that no push outlives the protection of its
// own uploads. To make the layers of deleted images garbage at once, the
// test moves their blob and link times an hour back in the database. The
// next run then sweeps exactly the blobs that the following pushes upload
// again.
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import {
  blobRows,
  pullProblems,
  referenceProblems,
  runGc,
  storeProblems,
  type GcRunJson,
} from './helpers/gc.js';
import { openTestDatabase } from './helpers/database.js';
import { createClientSandbox, run, type ClientSandbox } from './helpers/images.js';
import {
  descriptor,
  OCI_CONFIG,
  OCI_LAYER,
  OCI_MANIFEST,
  pushBlob,
  sha256,
} from './helpers/oci.js';
import { startServer, type TestServer } from './helpers/server.js';

/** Rounds of (push doomed images, delete them, age their blobs, push kept images re-using them). */
const ROUNDS = 16;
const DOOMED_PER_ROUND = 10;
const KEPT_PER_ROUND = 20;
const LAYERS_PER_ROUND = 40;
const CLIENT_CONCURRENCY = 8;
const SKOPEO_PUSHES = 24;

let server: TestServer;
let workDir: string;
let sandbox: ClientSandbox;

before(async () => {
  workDir = mkdtempSync(path.join(tmpdir(), 'mcr-gc-race-'));
  sandbox = createClientSandbox(path.join(workDir, 'clients'));
  // Debug logging lists the digests each run deletes.
  server = await startServer({ env: { MCR_GC_GRACE_PERIOD: '30s', MCR_LOG_LEVEL: 'debug' } });
});

after(async () => {
  await server?.cleanup();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

/** Moves the times of these blobs and of their links an hour back, so GC may take them now. */
async function age(digests: string[]): Promise<void> {
  const db = await openTestDatabase(server.dataDir);
  try {
    const hourAgo = Date.now() - 3_600_000;
    await db.query('begin');
    for (const digest of digests) {
      await db.query('update blobs set created_at = ? where digest = ?', [hourAgo, digest]);
      await db.query(
        'update repository_blobs set created_at = ? where blob_id = (select id from blobs where digest = ?)',
        [hourAgo, digest],
      );
    }
    await db.query('commit');
  } finally {
    await db.close();
  }
}

/** Uploads a blob in one POST or, with `chunked`, as POST, PATCH and PUT. */
async function upload(repository: string, bytes: Buffer, chunked: boolean): Promise<void> {
  const digest = sha256(bytes);
  if (!chunked) {
    await pushBlob(server, repository, bytes);
    return;
  }
  const started = await server.fetch(`/v2/${repository}/blobs/uploads/`, { method: 'POST' });
  assert.equal(started.status, 202, `start upload to ${repository}`);
  const half = Math.floor(bytes.length / 2);
  const patched = await server.fetch(started.headers.get('location') as string, {
    method: 'PATCH',
    body: bytes.subarray(0, half),
    headers: {
      'Content-Type': 'application/octet-stream',
      'Content-Range': `0-${half - 1}`,
    },
  });
  assert.equal(patched.status, 202, `PATCH upload to ${repository}`);
  const finished = await server.fetch(`${patched.headers.get('location')}?digest=${digest}`, {
    method: 'PUT',
    body: bytes.subarray(half),
    headers: { 'Content-Type': 'application/octet-stream' },
  });
  if (finished.status !== 201) {
    throw new Error(
      `PUT upload of ${digest} returned ${finished.status}: ${await finished.text()}`,
    );
  }
}

/** Pushes an image with a fresh config and the given layers. Returns the manifest and config digests. */
async function pushImage(
  repository: string,
  tag: string,
  layers: Buffer[],
): Promise<{ digest: string; config: string }> {
  const config = Buffer.from(JSON.stringify({ os: 'linux', id: randomUUID() }));
  const blobs = [config, ...layers];
  for (const [index, blob] of blobs.entries()) await upload(repository, blob, index % 2 === 1);
  const manifest = Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: descriptor(OCI_CONFIG, config),
      layers: layers.map((layer) => descriptor(OCI_LAYER, layer)),
    }),
  );
  const response = await server.fetch(`/v2/${repository}/manifests/${tag}`, {
    method: 'PUT',
    body: manifest,
    headers: { 'Content-Type': OCI_MANIFEST },
  });
  if (response.status !== 201) {
    throw new Error(
      `PUT ${repository}:${tag} returned ${response.status}: ${await response.text()}`,
    );
  }
  return { digest: sha256(manifest), config: sha256(config) };
}

/** Runs `tasks` with at most `limit` at a time and rejects with the first failure. */
async function inParallel(limit: number, tasks: Array<() => Promise<void>>): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < tasks.length) await tasks[next++]!();
  };
  await Promise.all(Array.from({ length: limit }, worker));
}

function randomLayers(count: number): Buffer[] {
  return Array.from({ length: count }, () =>
    randomBytes(1024 + Math.floor(Math.random() * 16_384)),
  );
}

function pick<T>(items: T[], count: number): T[] {
  return [...items].sort(() => Math.random() - 0.5).slice(0, count);
}

/**
 * Writes an OCI image layout with one image under `tag`. The layers are
 * arbitrary bytes: skopeo copies them between an OCI layout and a registry
 * without reading them.
 */
function writeLayout(dir: string, tag: string, layers: Buffer[]): void {
  const blobsDir = path.join(dir, 'blobs', 'sha256');
  mkdirSync(blobsDir, { recursive: true });
  const write = (bytes: Buffer) => {
    writeFileSync(path.join(blobsDir, sha256(bytes).slice('sha256:'.length)), bytes);
    return bytes;
  };
  const config = write(
    Buffer.from(
      JSON.stringify({
        architecture: 'amd64',
        os: 'linux',
        rootfs: { type: 'layers', diff_ids: layers.map((layer) => sha256(layer)) },
      }),
    ),
  );
  for (const layer of layers) write(layer);
  const manifest = write(
    Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: descriptor(OCI_CONFIG, config),
        layers: layers.map((layer) => descriptor(OCI_LAYER, layer)),
      }),
    ),
  );
  writeFileSync(path.join(dir, 'oci-layout'), '{"imageLayoutVersion":"1.0.0"}');
  writeFileSync(
    path.join(dir, 'index.json'),
    JSON.stringify({
      schemaVersion: 2,
      manifests: [
        {
          ...descriptor(OCI_MANIFEST, manifest),
          annotations: { 'org.opencontainers.image.ref.name': tag },
        },
      ],
    }),
  );
}

describe('garbage collection during pushes', () => {
  it('restarts the grace period when a blob is uploaded again', async () => {
    const bytes = randomBytes(2048);
    const digest = await pushBlob(server, 'race/relink', bytes);
    await age([digest]);
    await pushBlob(server, 'race/relink', bytes);

    assert.equal((await runGc(server)).state, 'succeeded');
    assert.ok(
      (await blobRows(server.dataDir)).has(digest),
      'blob uploaded again within the grace period kept',
    );

    await age([digest]);
    assert.equal((await runGc(server)).state, 'succeeded');
    assert.ok(!(await blobRows(server.dataDir)).has(digest), 'blob deleted once its link is old');
  });

  it('loses nothing while pushes re-use the layers being swept', async () => {
    const keptImages: Array<{ repository: string; tag: string }> = [];
    let pushes = 0;
    let finished = false;

    // The layers of the newest aged round, which skopeo pushes re-use.
    let agedLayers: Buffer[] = randomLayers(LAYERS_PER_ROUND);

    const runs: GcRunJson[] = [];
    const collector = (async () => {
      while (!finished) runs.push(await runGc(server));
    })();

    const scripted = (async () => {
      for (let round = 0; round < ROUNDS; round++) {
        const layers = randomLayers(LAYERS_PER_ROUND);
        const doomed: Array<{ repository: string; digest: string; config: string }> = [];
        await inParallel(
          CLIENT_CONCURRENCY,
          Array.from({ length: DOOMED_PER_ROUND }, (_, i) => async () => {
            const repository = `race/doomed-${i % 3}`;
            const image = await pushImage(
              repository,
              `r${round}-${i}`,
              layers.slice(i * 4, i * 4 + 4),
            );
            doomed.push({ repository, ...image });
            pushes += 1;
          }),
        );
        for (const image of doomed) {
          const response = await server.fetch(`/v2/${image.repository}/manifests/${image.digest}`, {
            method: 'DELETE',
          });
          assert.equal(response.status, 202);
        }
        await age([
          ...layers.map((layer) => sha256(layer)),
          ...doomed.map((image) => image.config),
        ]);
        const previous = agedLayers;
        agedLayers = layers;

        await inParallel(
          CLIENT_CONCURRENCY,
          Array.from({ length: KEPT_PER_ROUND }, (_, i) => async () => {
            const repository = `race/kept-${i % 4}`;
            const tag = `r${round}-${i}`;
            await pushImage(repository, tag, [
              ...pick(layers, 3),
              ...pick(previous, 1),
              ...randomLayers(1),
            ]);
            keptImages.push({ repository, tag });
            pushes += 1;
          }),
        );
      }
    })();

    const skopeo = (async () => {
      for (let i = 0; i < SKOPEO_PUSHES; i++) {
        const layout = path.join(workDir, `layout-${i}`);
        writeLayout(layout, 'v1', [...pick(agedLayers, 2), ...randomLayers(1)]);
        const repository = `race/skopeo-${i}`;
        await run(
          'skopeo',
          [
            'copy',
            '--dest-tls-verify=false',
            '--dest-creds',
            server.creds,
            `oci:${layout}:v1`,
            `docker://${server.host}/${repository}:v1`,
          ],
          { env: sandbox.env },
        );
        keptImages.push({ repository, tag: 'v1' });
        pushes += 1;
      }
    })();

    try {
      await Promise.all([scripted, skopeo]);
    } finally {
      finished = true;
      await collector;
    }
    runs.push(await runGc(server));

    const waits = server.logs.filter(
      (entry) =>
        entry.msg === 'blob commit waited for garbage collection to delete the same digest',
    );
    const deleted = runs.reduce((sum, gc) => sum + gc.blobs_deleted, 0);
    const deletedDigests = new Set(
      server.logs
        .filter((entry) => entry.msg === 'unused blobs deleted')
        .flatMap((entry) => entry.digests as string[]),
    );
    const stored = await blobRows(server.dataDir);
    const recreated = [...deletedDigests].filter((digest) => stored.has(digest));
    console.log(
      `${pushes} pushes, ${runs.length} GC runs deleting ${deleted} blobs; ${recreated.length} deleted blobs were uploaded again and kept; ${waits.length} uploads waited for a tombstone`,
    );

    assert.ok(pushes >= ROUNDS * (DOOMED_PER_ROUND + KEPT_PER_ROUND) + SKOPEO_PUSHES);
    for (const gc of runs) assert.equal(gc.state, 'succeeded', gc.error ?? '');
    assert.ok(deleted > 0, 'the runs deleted the layers nobody pushed again');

    for (const image of keptImages) {
      assert.deepEqual(await pullProblems(server, image.repository, image.tag), []);
    }
    assert.deepEqual(await storeProblems(server.dataDir), []);
    assert.deepEqual(await referenceProblems(server.dataDir), []);
    const missingBytes = server.logs.filter(
      (entry) =>
        entry.msg === 'blob is recorded in the database but its bytes are missing from storage',
    );
    assert.deepEqual(missingBytes, []);
  });
});

describe('pushes racing garbage collection and repository deletion', () => {
  // Without a grace period, every run may delete what a push uploaded a
  // moment before, and the admin API deletes the repositories being pushed
  // to. On PostgreSQL, pushes and runs then violate foreign keys, and only
  // running the conflicting transaction again keeps them from failing.
  it('fails no push and no run', async () => {
    const racer = await startServer({ env: { MCR_GC_GRACE_PERIOD: '0s' } });
    const statuses = new Map<string, number>();
    const count = (key: string) => statuses.set(key, (statuses.get(key) ?? 0) + 1);
    const failures: string[] = [];
    const deadline = Date.now() + 6_000;
    const runs: GcRunJson[] = [];
    try {
      const pusher = async (client: number) => {
        for (let n = 0; Date.now() < deadline; n++) {
          const repository = `race/r${n % 3}`;
          const blobs = [randomBytes(64), randomBytes(64)];
          const digests: string[] = [];
          for (const bytes of blobs) {
            const digest = sha256(bytes);
            const response = await racer.fetch(
              `/v2/${repository}/blobs/uploads/?digest=${digest}`,
              {
                method: 'POST',
                headers: { 'Content-Type': 'application/octet-stream' },
                body: bytes,
              },
            );
            count(`blob ${response.status}`);
            if (response.status !== 201) failures.push(`blob: ${await response.text()}`);
            else await response.arrayBuffer();
            digests.push(digest);
          }
          const manifest = JSON.stringify({
            schemaVersion: 2,
            mediaType: OCI_MANIFEST,
            config: { mediaType: OCI_CONFIG, digest: digests[0], size: 64 },
            layers: [{ mediaType: OCI_LAYER, digest: digests[1], size: 64 }],
          });
          const response = await racer.fetch(`/v2/${repository}/manifests/c${client}-${n % 4}`, {
            method: 'PUT',
            headers: { 'Content-Type': OCI_MANIFEST },
            body: manifest,
          });
          count(`manifest ${response.status}`);
          const text = await response.text();
          // A blob that a run or a repository deletion removed before the
          // manifest arrived is unknown to the push, as it would be after.
          const lostBlob = response.status === 400 && text.includes('MANIFEST_BLOB_UNKNOWN');
          if (response.status !== 201 && !lostBlob) failures.push(`manifest: ${text}`);
        }
      };
      const collector = async () => {
        while (Date.now() < deadline) runs.push(await runGc(racer, { delete_untagged: true }));
      };
      const deleter = async () => {
        for (let n = 0; Date.now() < deadline; n++) {
          await sleep(150);
          const response = await racer.fetch(`/v1/repositories/race/r${n % 3}`, {
            method: 'DELETE',
          });
          count(`repository delete ${response.status}`);
          const text = await response.text();
          if (response.status !== 204 && response.status !== 404) {
            failures.push(`repository delete: ${text}`);
          }
        }
      };
      await Promise.all([pusher(0), pusher(1), pusher(2), pusher(3), collector(), deleter()]);
      console.log(JSON.stringify(Object.fromEntries(statuses)), `${runs.length} GC runs`);

      assert.deepEqual(failures, []);
      assert.ok((statuses.get('manifest 201') ?? 0) > 50, 'too few pushes to race');
      assert.ok((statuses.get('repository delete 204') ?? 0) > 5, 'too few repository deletions');
      assert.ok(runs.length > 5, 'too few GC runs');
      for (const gc of runs) assert.equal(gc.state, 'succeeded', gc.error ?? '');
      const errors = racer.logs.filter((entry) => Number(entry.level) >= 50);
      assert.deepEqual(errors, []);
      assert.deepEqual(await storeProblems(racer.dataDir), []);
      assert.deepEqual(await referenceProblems(racer.dataDir), []);
    } finally {
      await racer.cleanup();
    }
  });
});
