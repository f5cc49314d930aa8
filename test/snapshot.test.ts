import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { promisify } from 'node:util';

import Database from 'better-sqlite3';

import { pushImage } from './helpers/oci.js';
import { MCR_ENTRY, startServer, type TestServer } from './helpers/server.js';

const execFileAsync = promisify(execFile);

let server: TestServer;
let workDir: string;
before(async () => {
  server = await startServer();
  workDir = mkdtempSync(path.join(tmpdir(), 'mcr-snapshot-'));
});
after(async () => {
  await server.cleanup();
  rmSync(workDir, { recursive: true, force: true });
});

async function snapshot(dataDir: string, target: string): Promise<string> {
  const { stdout } = await execFileAsync(process.execPath, [MCR_ENTRY, 'snapshot', target], {
    env: { PATH: process.env.PATH ?? '', MCR_DATA_DIR: dataDir },
  });
  return stdout;
}

describe('mcr snapshot', () => {
  it('snapshot during pushes restores intact', async () => {
    let pushing = true;
    let pushed = 0;
    const burst = Array.from({ length: 8 }, async (_, worker) => {
      for (let i = 0; pushing && i < 200; i++) {
        await pushImage(server, `burst/w${worker}`, `t${i}`);
        pushed += 1;
      }
    });

    await new Promise((resolve) => setTimeout(resolve, 300));
    const target = path.join(workDir, 'mcr-snapshot.db');
    const output = await snapshot(server.dataDir, target);
    assert.match(output, /snapshot written to/);
    pushing = false;
    await Promise.all(burst);
    assert.ok(pushed > 8, `the burst pushed ${pushed} images`);
    assert.equal(statSync(target).mode & 0o777, 0o600);

    const copy = new Database(target, { readonly: true });
    assert.equal(copy.pragma('integrity_check', { simple: true }), 'ok');
    assert.equal((copy.pragma('foreign_key_check') as unknown[]).length, 0);
    const tags = copy
      .prepare(
        `select repositories.name as repository, tags.name as tag, manifests.digest as digest
         from tags join manifests on manifests.id = tags.manifest_id
         join repositories on repositories.id = tags.repository_id`,
      )
      .all() as Array<{ repository: string; tag: string; digest: string }>;
    copy.close();
    assert.ok(tags.length > 0);
    assert.ok(
      tags.length < pushed + 1,
      'the snapshot holds the tags up to its moment, not later ones',
    );

    // Restore: the snapshot becomes the database of a new data directory,
    // and the blob files are copied after it (they never change once written).
    const restoredDir = path.join(workDir, 'restored');
    mkdirSync(restoredDir);
    cpSync(target, path.join(restoredDir, 'mcr.db'));
    cpSync(path.join(server.dataDir, 'blobs'), path.join(restoredDir, 'blobs'), {
      recursive: true,
    });
    const restored = await startServer({ dataDir: restoredDir });
    try {
      for (const { repository, tag, digest } of tags) {
        const response = await restored.fetch(`/v2/${repository}/manifests/${tag}`);
        assert.equal(response.status, 200, `${repository}:${tag}`);
        assert.equal(response.headers.get('docker-content-digest'), digest);
        const manifest = (await response.json()) as {
          config: { digest: string };
          layers: Array<{ digest: string }>;
        };
        for (const blob of [manifest.config, ...manifest.layers]) {
          const blobResponse = await restored.fetch(`/v2/${repository}/blobs/${blob.digest}`);
          assert.equal(blobResponse.status, 200);
          const bytes = Buffer.from(await blobResponse.arrayBuffer());
          assert.equal(`sha256:${createHash('sha256').update(bytes).digest('hex')}`, blob.digest);
        }
      }
    } finally {
      await restored.stop();
    }
  });

  it('refuses to overwrite an existing file', async () => {
    const target = path.join(workDir, 'taken.db');
    await snapshot(server.dataDir, target);
    await assert.rejects(snapshot(server.dataDir, target), /already exists/);
  });
});
