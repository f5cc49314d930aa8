import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import pino from 'pino';

import { Fsck } from '../src/fsck/index.js';
import { openMetadataDb } from '../src/metadata/db.js';
import { FilesystemBlobStore } from '../src/storage/filesystem.js';
import { pushBlob, pushImage } from './helpers/oci.js';
import { startServer, type TestServer } from './helpers/server.js';

interface Report {
  type: 'report';
  blobsChecked: number;
  corrupt: Array<{ digest: string; actual: string }>;
  missingBytes: Array<{ digest: string; reason: string; referenced: boolean }>;
  orphanFiles: string[];
  brokenManifests: Array<{ repository: string; digest: string; missing: string[] }>;
  repaired: { filesRemoved: number; rowsRemoved: number };
  clean: boolean;
}

let server: TestServer;
before(async () => {
  server = await startServer({ env: { MCR_GC_GRACE_PERIOD: '1m' } });
});
after(async () => {
  await server.cleanup();
});

function blobFile(digest: string): string {
  const hex = digest.slice('sha256:'.length);
  return path.join(server.dataDir, 'blobs', 'sha256', hex.slice(0, 2), hex);
}

async function fsck(repair = false): Promise<{ report: Report; progressLines: number }> {
  const response = await server.fetch('/v1/fsck', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ repair }),
  });
  assert.equal(response.status, 200);
  const lines = (await response.text())
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line) as { type: string });
  const report = lines[lines.length - 1] as Report;
  assert.equal(report.type, 'report');
  return { report, progressLines: lines.filter((line) => line.type === 'progress').length };
}

describe('fsck', () => {
  it('reports a clean registry as clean', async () => {
    await pushImage(server, 'fsck/clean', 'v1');
    const { report, progressLines } = await fsck();
    assert.equal(report.clean, true);
    assert.ok(report.blobsChecked >= 2);
    assert.ok(progressLines > 0);
  });

  it('names damage and repairs only orphans', async () => {
    const altered = await pushImage(server, 'fsck/damaged', 'altered');
    const missing = await pushImage(server, 'fsck/damaged', 'missing');
    const unreferenced = await pushBlob(server, 'fsck/damaged', randomBytes(300));

    // Same size, different bytes.
    const alteredFile = blobFile(altered.layerDigest);
    const bytes = readFileSync(alteredFile);
    bytes[0] = (bytes[0] as number) ^ 0xff;
    writeFileSync(alteredFile, bytes);
    rmSync(blobFile(missing.layerDigest));
    rmSync(blobFile(unreferenced));

    const orphanData = randomBytes(100);
    const orphan = `sha256:${createHash('sha256').update(orphanData).digest('hex')}`;
    mkdirSync(path.dirname(blobFile(orphan)), { recursive: true });
    writeFileSync(blobFile(orphan), orphanData);
    const old = new Date(Date.now() - 3_600_000);
    utimesSync(blobFile(orphan), old, old);

    const { report } = await fsck();
    assert.equal(report.clean, false);
    assert.deepEqual(
      report.corrupt.map((entry) => entry.digest),
      [altered.layerDigest],
    );
    const missingDigests = report.missingBytes.map((entry) => entry.digest).sort();
    assert.deepEqual(missingDigests, [missing.layerDigest, unreferenced].sort());
    assert.equal(
      report.missingBytes.find((entry) => entry.digest === missing.layerDigest)?.referenced,
      true,
    );
    assert.equal(
      report.missingBytes.find((entry) => entry.digest === unreferenced)?.referenced,
      false,
    );
    assert.deepEqual(report.orphanFiles, [orphan]);
    const broken = report.brokenManifests.map((entry) => entry.digest).sort();
    assert.deepEqual(broken, [altered.digest, missing.digest].sort());

    const repaired = await fsck(true);
    assert.deepEqual(repaired.report.repaired, { filesRemoved: 1, rowsRemoved: 1 });
    assert.equal(existsSync(blobFile(orphan)), false);
    // Referenced data is reported, never removed.
    assert.deepEqual(
      repaired.report.missingBytes.map((entry) => entry.digest),
      [missing.layerDigest],
    );
    assert.deepEqual(
      repaired.report.corrupt.map((entry) => entry.digest),
      [altered.layerDigest],
    );
    assert.equal(existsSync(alteredFile), true);
    assert.equal((await server.fetch(`/v2/fsck/damaged/manifests/missing`)).status, 200);
  });

  it('keeps a row whose bytes come back during the repair', async () => {
    const bytes = randomBytes(300);
    const digest = await pushBlob(server, 'fsck/again', bytes);
    rmSync(blobFile(digest));

    // An fsck in this process, on the server's data directory, whose
    // progress callback puts the bytes back as an upload would.
    const handle = await openMetadataDb({ driver: 'sqlite', dataDir: server.dataDir });
    const fsck = new Fsck(
      handle.db,
      handle.dialect,
      new FilesystemBlobStore(server.dataDir),
      pino({ level: 'silent' }),
      60_000,
    );
    let restored = false;
    const report = await fsck.run({ repair: true }, (progress) => {
      if (progress.phase !== 'repair' || restored) return;
      restored = true;
      writeFileSync(blobFile(digest), bytes);
    });
    await handle.close();

    assert.ok(restored);
    assert.ok(report.missingBytes.some((entry) => entry.digest === digest));
    assert.equal(report.repaired.rowsRemoved, 0);
    const head = await server.fetch(`/v2/fsck/again/blobs/${digest}`, { method: 'HEAD' });
    assert.equal(head.status, 200);
  });
});
