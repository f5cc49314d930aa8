// mcr keeps manifests it looked up in memory while the database is
// unchanged. These tests read a manifest once, so that it is cached, then
// change what the tag or digest names (through the API, the admin API and
// directly in the database from another connection). The next read must
// return the changed manifest or 404.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { queryTestDatabase } from './helpers/database.js';
import { OCI_MANIFEST, pushImage } from './helpers/oci.js';
import { startServer, type TestServer } from './helpers/server.js';

let server: TestServer;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server.cleanup();
});

/** Reads a manifest and returns its status and Docker-Content-Digest. */
async function read(name: string, reference: string, method = 'GET') {
  const response = await server.fetch(`/v2/${name}/manifests/${reference}`, {
    method,
    headers: { Accept: OCI_MANIFEST },
  });
  await response.arrayBuffer();
  return { status: response.status, digest: response.headers.get('docker-content-digest') };
}

describe('manifest lookup cache', () => {
  it('serves the new manifest after the tag moves', async () => {
    const first = await pushImage(server, 'cache/move', 'v1');
    assert.deepEqual(await read('cache/move', 'v1'), { status: 200, digest: first.digest });
    assert.deepEqual(await read('cache/move', 'v1', 'HEAD'), { status: 200, digest: first.digest });

    const second = await pushImage(server, 'cache/move', 'v1');
    assert.notEqual(second.digest, first.digest);
    assert.deepEqual(await read('cache/move', 'v1'), { status: 200, digest: second.digest });
    assert.deepEqual(await read('cache/move', 'v1', 'HEAD'), {
      status: 200,
      digest: second.digest,
    });
  });

  it('answers 404 after the tag is deleted', async () => {
    const image = await pushImage(server, 'cache/tag-delete', 'v1');
    assert.equal((await read('cache/tag-delete', 'v1')).status, 200);

    const deleted = await server.fetch('/v2/cache/tag-delete/manifests/v1', { method: 'DELETE' });
    assert.equal(deleted.status, 202);
    assert.equal((await read('cache/tag-delete', 'v1')).status, 404);
    // The manifest itself stays, by digest.
    assert.deepEqual(await read('cache/tag-delete', image.digest), {
      status: 200,
      digest: image.digest,
    });
  });

  it('answers 404 by digest and by tag after the manifest is deleted', async () => {
    const image = await pushImage(server, 'cache/manifest-delete', 'v1');
    assert.equal((await read('cache/manifest-delete', image.digest)).status, 200);
    assert.equal((await read('cache/manifest-delete', 'v1')).status, 200);

    const deleted = await server.fetch(`/v2/cache/manifest-delete/manifests/${image.digest}`, {
      method: 'DELETE',
    });
    assert.equal(deleted.status, 202);
    assert.equal((await read('cache/manifest-delete', image.digest)).status, 404);
    assert.equal((await read('cache/manifest-delete', 'v1')).status, 404);
  });

  it('answers 404 after the admin API deletes the repository', async () => {
    await pushImage(server, 'cache/repository', 'v1');
    assert.equal((await read('cache/repository', 'v1')).status, 200);

    const deleted = await server.fetch('/v1/repositories/cache/repository', { method: 'DELETE' });
    assert.equal(deleted.status, 204);
    assert.equal((await read('cache/repository', 'v1')).status, 404);
  });

  it('sees a change another connection commits to the database', async () => {
    const first = await pushImage(server, 'cache/outside', 'v1');
    const second = await pushImage(server, 'cache/outside', 'v2');
    assert.deepEqual(await read('cache/outside', 'v1'), { status: 200, digest: first.digest });

    // Points v1 at v2's manifest from a connection of this test process, as
    // another mcr process or an operator's database shell would.
    const changed = await queryTestDatabase(
      server.dataDir,
      `UPDATE tags SET manifest_id = (SELECT id FROM manifests WHERE digest = ?)
        WHERE name = 'v1'
          AND repository_id = (SELECT id FROM repositories WHERE name = 'cache/outside')`,
      [second.digest],
    );
    assert.equal(changed.changes, 1);
    assert.deepEqual(await read('cache/outside', 'v1'), { status: 200, digest: second.digest });
  });
});
