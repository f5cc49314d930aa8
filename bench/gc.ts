// Measures one garbage collection run over 10,000 blobs of which half are
// garbage: 500 manifests reference 5,000 blobs, and 5,000 more are linked
// but unreferenced and an hour old. Uses a temporary data directory with
// SQLite and filesystem storage. Run it after a build:
//   npm run build && node dist/bench/gc.js
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { Readable } from 'node:stream';

import { GarbageCollector } from '../src/gc/index.js';
import { createLogger } from '../src/log.js';
import { openMetadataDb } from '../src/metadata/db.js';
import { Locks } from '../src/metadata/locks.js';
import { parseDigest } from '../src/registry/digest.js';
import { FilesystemBlobStore } from '../src/storage/index.js';

const BLOBS = 10_000;
const LAYERS_PER_MANIFEST = 10;

const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-bench-gc-'));
const log = createLogger('warn');
const store = new FilesystemBlobStore(dataDir);
await store.init();
const metadata = await openMetadataDb({ driver: 'sqlite', dataDir });
const { db } = metadata;

try {
  const hourAgo = Date.now() - 3_600_000;
  const digests: Array<{ digest: string; size: number }> = [];
  for (let i = 0; i < BLOBS; i++) {
    const bytes = randomBytes(256);
    const digest = `sha256:${createHash('sha256').update(bytes).digest('hex')}`;
    const key = `bench-${i}`;
    await store.appendUpload(key, 0, Readable.from([bytes]));
    await store.commitUpload(key, parseDigest(digest), bytes.length);
    digests.push({ digest, size: bytes.length });
  }

  await db.transaction().execute(async (trx) => {
    const repository = await trx
      .insertInto('repositories')
      .values({ name: 'bench/app', created_at: hourAgo })
      .returning('id')
      .executeTakeFirstOrThrow();
    const blobIds: number[] = [];
    for (const { digest, size } of digests) {
      const blob = await trx
        .insertInto('blobs')
        .values({ digest, size, created_at: hourAgo })
        .returning('id')
        .executeTakeFirstOrThrow();
      await trx
        .insertInto('repository_blobs')
        .values({ repository_id: repository.id, blob_id: blob.id, created_at: hourAgo })
        .execute();
      blobIds.push(blob.id);
    }

    // Even-numbered blobs are referenced, odd-numbered ones are garbage.
    const referenced = blobIds.filter((_, i) => i % 2 === 0);
    for (let m = 0; m * LAYERS_PER_MANIFEST < referenced.length; m++) {
      const layers = referenced.slice(m * LAYERS_PER_MANIFEST, (m + 1) * LAYERS_PER_MANIFEST);
      const content = Buffer.from(`manifest ${m}`);
      const manifest = await trx
        .insertInto('manifests')
        .values({
          repository_id: repository.id,
          digest: `sha256:${createHash('sha256').update(content).digest('hex')}`,
          media_type: 'application/vnd.oci.image.manifest.v1+json',
          artifact_type: null,
          subject_digest: null,
          annotations: null,
          content,
          size: content.length,
          created_at: hourAgo,
        })
        .returning('id')
        .executeTakeFirstOrThrow();
      await trx
        .insertInto('manifest_references')
        .values(
          layers.map((blobId) => ({
            manifest_id: manifest.id,
            digest: digests[blobIds.indexOf(blobId)]!.digest,
            kind: 'blob' as const,
            blob_id: blobId,
          })),
        )
        .execute();
    }
  });

  const collector = new GarbageCollector({
    db,
    dialect: metadata.dialect,
    store,
    log,
    locks: new Locks(db),
    gracePeriodMs: 30 * 60_000,
    lockTtlMs: 60_000,
    defaults: { deleteUntagged: false, uploadMaxAgeMs: 86_400_000 },
  });

  let start = performance.now();
  const dry = await collector.run({ trigger: 'cli', dryRun: true });
  const dryMs = performance.now() - start;

  start = performance.now();
  const real = await collector.run({ trigger: 'cli' });
  const realMs = performance.now() - start;

  console.log(
    `dry run over ${BLOBS} blobs: ${dryMs.toFixed(0)} ms, would delete ${dry.blobsDeleted} (${dry.state})`,
  );
  console.log(
    `run over ${BLOBS} blobs: ${realMs.toFixed(0)} ms, deleted ${real.blobsDeleted} blobs, ${real.bytesFreed} bytes (${real.state})`,
  );
  await collector.stop();
} finally {
  await store.close();
  await metadata.close();
  rmSync(dataDir, { recursive: true, force: true });
}
