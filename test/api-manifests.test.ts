import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  descriptor,
  DOCKER_CONFIG,
  DOCKER_LIST,
  DOCKER_MANIFEST,
  OCI_CONFIG,
  OCI_EMPTY,
  OCI_INDEX,
  OCI_LAYER,
  OCI_MANIFEST,
  pushBlob,
  pushImage,
  sha256,
  sha512,
} from './helpers/oci.js';
import { startServer, type TestServer } from './helpers/server.js';

let server: TestServer;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server.cleanup();
});

async function errorCode(response: Response): Promise<string | undefined> {
  const body = (await response.json()) as { errors?: Array<{ code: string }> };
  return body.errors?.[0]?.code;
}

function put(name: string, reference: string, body: Buffer | string, contentType?: string) {
  return server.fetch(`/v2/${name}/manifests/${reference}`, {
    method: 'PUT',
    body,
    headers: contentType ? { 'Content-Type': contentType } : {},
  });
}

describe('manifest push and pull', () => {
  it('stores the exact bytes and serves them by tag and digest', async () => {
    const config = await pushBlob(server, 'app/web', '{"os":"linux"}');
    const layer = await pushBlob(server, 'app/web', 'layer bytes');
    // Odd spacing and key order: the registry must keep the bytes as sent.
    const body = Buffer.from(
      `{ "schemaVersion": 2,\n  "mediaType": "${OCI_MANIFEST}",\n  "config": {"mediaType": "${OCI_CONFIG}", "size": 14, "digest": "${config}"},\n  "layers": [{"mediaType": "${OCI_LAYER}", "size": 11, "digest": "${layer}"}],\n  "annotations": {"b": "2", "a": "1"} }\n`,
    );
    const digest = sha256(body);

    const response = await put('app/web', 'v1', body, OCI_MANIFEST);
    assert.equal(response.status, 201);
    assert.equal(response.headers.get('location'), `/v2/app/web/manifests/${digest}`);
    assert.equal(response.headers.get('docker-content-digest'), digest);
    assert.equal(response.headers.get('oci-subject'), null);

    for (const reference of ['v1', digest]) {
      const get = await server.fetch(`/v2/app/web/manifests/${reference}`);
      assert.equal(get.status, 200);
      assert.equal(get.headers.get('content-type'), OCI_MANIFEST);
      assert.equal(get.headers.get('docker-content-digest'), digest);
      assert.equal(get.headers.get('etag'), `"${digest}"`);
      assert.equal(get.headers.get('content-length'), String(body.length));
      assert.deepEqual(Buffer.from(await get.arrayBuffer()), body);

      const head = await server.fetch(`/v2/app/web/manifests/${reference}`, {
        method: 'HEAD',
      });
      assert.equal(head.status, 200);
      assert.equal(head.headers.get('content-type'), OCI_MANIFEST);
      assert.equal(head.headers.get('docker-content-digest'), digest);
      assert.equal(head.headers.get('content-length'), String(body.length));
    }
  });

  it('pushes by digest without creating a tag', async () => {
    const image = await pushImage(server, 'bydigest', 'seed');
    const config = await pushBlob(server, 'bydigest', '{"v":2}');
    const body = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: descriptor(OCI_CONFIG, '{"v":2}'),
        layers: [],
      }),
    );
    assert.ok(config);
    const response = await put('bydigest', sha256(body), body, OCI_MANIFEST);
    assert.equal(response.status, 201);
    const tags = (await (await server.fetch('/v2/bydigest/tags/list')).json()) as {
      tags: string[];
    };
    assert.deepEqual(tags.tags, ['seed']);
    assert.ok(image.digest);
  });

  it('accepts a sha512 digest reference', async () => {
    await pushBlob(server, 'sha512repo', '{}');
    const body = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: descriptor(OCI_EMPTY, '{}'),
        layers: [],
      }),
    );
    const digest = sha512(body);
    const response = await put('sha512repo', digest, body, OCI_MANIFEST);
    assert.equal(response.status, 201);
    assert.equal(response.headers.get('docker-content-digest'), digest);
    const get = await server.fetch(`/v2/sha512repo/manifests/${digest}`);
    assert.equal(get.status, 200);
    assert.deepEqual(Buffer.from(await get.arrayBuffer()), body);
  });

  it('re-pushes one manifest under a second tag', async () => {
    const image = await pushImage(server, 'retag', 'first');
    const response = await put('retag', 'second', image.body, OCI_MANIFEST);
    assert.equal(response.status, 201);
    assert.equal(response.headers.get('docker-content-digest'), image.digest);
    for (const tag of ['first', 'second']) {
      const head = await server.fetch(`/v2/retag/manifests/${tag}`, { method: 'HEAD' });
      assert.equal(head.headers.get('docker-content-digest'), image.digest);
    }
  });

  it('moves a tag from an index to a plain manifest and back', async () => {
    const amd = await pushImage(server, 'moving', 'amd64');
    const arm = await pushImage(server, 'moving', 'arm64');
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_INDEX,
        manifests: [
          {
            ...descriptor(OCI_MANIFEST, amd.body),
            platform: { os: 'linux', architecture: 'amd64' },
          },
          {
            ...descriptor(OCI_MANIFEST, arm.body),
            platform: { os: 'linux', architecture: 'arm64' },
          },
        ],
      }),
    );
    assert.equal((await put('moving', 'latest', index, OCI_INDEX)).status, 201);
    let get = await server.fetch('/v2/moving/manifests/latest');
    assert.equal(get.headers.get('content-type'), OCI_INDEX);
    assert.equal(get.headers.get('docker-content-digest'), sha256(index));

    assert.equal((await put('moving', 'latest', amd.body, OCI_MANIFEST)).status, 201);
    get = await server.fetch('/v2/moving/manifests/latest');
    assert.equal(get.headers.get('content-type'), OCI_MANIFEST);
    assert.equal(get.headers.get('docker-content-digest'), amd.digest);

    // The index is still stored under its digest after the tag moved away.
    const byDigest = await server.fetch(`/v2/moving/manifests/${sha256(index)}`);
    assert.equal(byDigest.status, 200);

    assert.equal((await put('moving', 'latest', index, OCI_INDEX)).status, 201);
    get = await server.fetch('/v2/moving/manifests/latest');
    assert.equal(get.headers.get('docker-content-digest'), sha256(index));
  });

  it('accepts Docker schema 2 manifests and manifest lists', async () => {
    const config = '{"architecture":"amd64","os":"linux"}';
    await pushBlob(server, 'docker/img', config);
    await pushBlob(server, 'docker/img', 'docker layer');
    const manifest = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: DOCKER_MANIFEST,
        config: descriptor(DOCKER_CONFIG, config),
        layers: [descriptor('application/vnd.docker.image.rootfs.diff.tar.gzip', 'docker layer')],
      }),
    );
    assert.equal((await put('docker/img', 'v2', manifest, DOCKER_MANIFEST)).status, 201);
    const list = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: DOCKER_LIST,
        manifests: [
          {
            ...descriptor(DOCKER_MANIFEST, manifest),
            platform: { os: 'linux', architecture: 'amd64' },
          },
        ],
      }),
    );
    assert.equal((await put('docker/img', 'list', list, DOCKER_LIST)).status, 201);
    const get = await server.fetch('/v2/docker/img/manifests/list');
    assert.equal(get.headers.get('content-type'), DOCKER_LIST);
  });

  it('takes the media type from Content-Type when the body has none', async () => {
    await pushBlob(server, 'nomediatype', '{}');
    const body = JSON.stringify({
      schemaVersion: 2,
      config: descriptor(OCI_EMPTY, '{}'),
      layers: [],
    });
    assert.equal((await put('nomediatype', 'x', body, OCI_MANIFEST)).status, 201);
    const get = await server.fetch('/v2/nomediatype/manifests/x');
    assert.equal(get.headers.get('content-type'), OCI_MANIFEST);
  });

  it('accepts an artifact manifest with artifactType and the empty config', async () => {
    await pushBlob(server, 'artifacts', '{}');
    await pushBlob(server, 'artifacts', 'sbom contents');
    const body = JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      artifactType: 'application/spdx+json',
      config: descriptor(OCI_EMPTY, '{}'),
      layers: [descriptor('application/spdx+json', 'sbom contents')],
    });
    assert.equal((await put('artifacts', 'sbom', body, OCI_MANIFEST)).status, 201);
  });

  it('accepts a non-distributable layer with URLs that is not in the registry', async () => {
    const config = await pushBlob(server, 'foreign', '{"os":"windows"}');
    assert.ok(config);
    const body = JSON.stringify({
      schemaVersion: 2,
      mediaType: DOCKER_MANIFEST,
      config: descriptor(DOCKER_CONFIG, '{"os":"windows"}'),
      layers: [
        {
          mediaType: 'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
          digest: sha256('foreign layer'),
          size: 13,
          urls: ['https://example.invalid/layer'],
        },
      ],
    });
    assert.equal((await put('foreign', 'win', body, DOCKER_MANIFEST)).status, 201);
  });

  it('refuses, never converts, when Accept excludes the stored type', async () => {
    const image = await pushImage(server, 'negotiate', 'v1');
    const refused = await server.fetch('/v2/negotiate/manifests/v1', {
      headers: { Accept: DOCKER_MANIFEST },
    });
    assert.equal(refused.status, 404);
    assert.equal(await errorCode(refused), 'MANIFEST_UNKNOWN');

    for (const accept of [`${DOCKER_MANIFEST}, ${OCI_MANIFEST}`, '*/*', 'application/json']) {
      const served = await server.fetch('/v2/negotiate/manifests/v1', {
        headers: { Accept: accept },
      });
      assert.equal(served.status, 200, accept);
      assert.equal(served.headers.get('docker-content-digest'), image.digest);
    }
  });

  it('answers 304 to a matching If-None-Match', async () => {
    const image = await pushImage(server, 'etag', 'v1');
    const response = await server.fetch('/v2/etag/manifests/v1', {
      headers: { 'If-None-Match': `"${image.digest}"` },
    });
    assert.equal(response.status, 304);
  });
});

describe('manifest push validation', () => {
  const cases: Array<[string, () => Promise<Response>, number, string]> = [
    ['not JSON', () => put('bad', 'x', 'not json', OCI_MANIFEST), 400, 'MANIFEST_INVALID'],
    [
      'schemaVersion 1',
      () =>
        put('bad', 'x', JSON.stringify({ schemaVersion: 1, name: 'bad', tag: 'x', fsLayers: [] })),
      400,
      'MANIFEST_INVALID',
    ],
    [
      'schema 1 media type',
      () =>
        put(
          'bad',
          'x',
          JSON.stringify({ schemaVersion: 2, config: descriptor(OCI_CONFIG, '{}'), layers: [] }),
          'application/vnd.docker.distribution.manifest.v1+prettyjws',
        ),
      400,
      'MANIFEST_INVALID',
    ],
    [
      'missing blob',
      () =>
        put(
          'bad',
          'x',
          JSON.stringify({
            schemaVersion: 2,
            mediaType: OCI_MANIFEST,
            config: descriptor(OCI_CONFIG, 'absent config'),
            layers: [],
          }),
          OCI_MANIFEST,
        ),
      400,
      'MANIFEST_BLOB_UNKNOWN',
    ],
    [
      'mediaType disagreeing with Content-Type',
      () =>
        put(
          'bad',
          'x',
          JSON.stringify({
            schemaVersion: 2,
            mediaType: OCI_MANIFEST,
            config: descriptor(OCI_CONFIG, '{}'),
            layers: [],
          }),
          DOCKER_MANIFEST,
        ),
      400,
      'MANIFEST_INVALID',
    ],
    [
      'no media type anywhere',
      () => put('bad', 'x', JSON.stringify({ schemaVersion: 2, layers: [] })),
      400,
      'MANIFEST_INVALID',
    ],
    [
      'index with a missing child',
      () =>
        put(
          'bad',
          'x',
          JSON.stringify({
            schemaVersion: 2,
            mediaType: OCI_INDEX,
            manifests: [descriptor(OCI_MANIFEST, 'child')],
          }),
          OCI_INDEX,
        ),
      400,
      'MANIFEST_BLOB_UNKNOWN',
    ],
    [
      'digest reference that does not match the body',
      () => put('bad', sha256('something else'), '{}', OCI_MANIFEST),
      400,
      'DIGEST_INVALID',
    ],
    [
      'body over 4 MiB',
      () => put('bad', 'x', Buffer.alloc(4 * 1024 * 1024 + 1, 0x20), OCI_MANIFEST),
      413,
      'SIZE_INVALID',
    ],
    [
      'descriptor with a negative size',
      () =>
        put(
          'bad',
          'x',
          JSON.stringify({
            schemaVersion: 2,
            mediaType: OCI_MANIFEST,
            config: { mediaType: OCI_CONFIG, digest: sha256('{}'), size: -1 },
            layers: [],
          }),
          OCI_MANIFEST,
        ),
      400,
      'MANIFEST_INVALID',
    ],
  ];
  for (const [name, send, status, code] of cases) {
    it(`rejects ${name}`, async () => {
      const response = await send();
      assert.equal(response.status, status);
      assert.equal(await errorCode(response), code);
      const get = await server.fetch('/v2/bad/manifests/x');
      assert.equal(get.status, 404);
    });
  }

  it('rejects a descriptor size that differs from the stored blob', async () => {
    const layer = await pushBlob(server, 'sizes', 'twelve bytes');
    await pushBlob(server, 'sizes', '{}');
    const body = JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: descriptor(OCI_EMPTY, '{}'),
      layers: [{ mediaType: OCI_LAYER, digest: layer, size: 99 }],
    });
    const response = await put('sizes', 'x', body, OCI_MANIFEST);
    assert.equal(response.status, 400);
    assert.equal(await errorCode(response), 'MANIFEST_INVALID');
  });

  it('rejects a blob that only another repository holds', async () => {
    await pushBlob(server, 'holder', 'held elsewhere');
    await pushBlob(server, 'nonholder', '{}');
    const body = JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: descriptor(OCI_EMPTY, '{}'),
      layers: [descriptor(OCI_LAYER, 'held elsewhere')],
    });
    const response = await put('nonholder', 'x', body, OCI_MANIFEST);
    assert.equal(response.status, 400);
    assert.equal(await errorCode(response), 'MANIFEST_BLOB_UNKNOWN');
  });
});

describe('manifest delete', () => {
  it('deletes a tag only, keeping the manifest', async () => {
    const image = await pushImage(server, 'deltag', 'v1');
    const response = await server.fetch('/v2/deltag/manifests/v1', { method: 'DELETE' });
    assert.equal(response.status, 202);
    assert.equal((await server.fetch('/v2/deltag/manifests/v1')).status, 404);
    assert.equal((await server.fetch(`/v2/deltag/manifests/${image.digest}`)).status, 200);
  });

  it('deletes a manifest by digest with every tag on it', async () => {
    const image = await pushImage(server, 'deldigest', 'a');
    await put('deldigest', 'b', image.body, OCI_MANIFEST);
    const response = await server.fetch(`/v2/deldigest/manifests/${image.digest}`, {
      method: 'DELETE',
    });
    assert.equal(response.status, 202);
    for (const reference of ['a', 'b', image.digest]) {
      const get = await server.fetch(`/v2/deldigest/manifests/${reference}`);
      assert.equal(get.status, 404);
      assert.equal(await errorCode(get), 'MANIFEST_UNKNOWN');
    }
    const tags = (await (await server.fetch('/v2/deldigest/tags/list')).json()) as {
      tags: string[];
    };
    assert.deepEqual(tags.tags, []);
  });

  it('answers 404 MANIFEST_UNKNOWN for something absent', async () => {
    for (const reference of ['nope', sha256('nope')]) {
      const response = await server.fetch(`/v2/deldigest/manifests/${reference}`, {
        method: 'DELETE',
      });
      assert.equal(response.status, 404);
      assert.equal(await errorCode(response), 'MANIFEST_UNKNOWN');
    }
  });
});

describe('manifests in multi-segment repositories', () => {
  it('resolves names that contain API path words', async () => {
    const name = 'a/manifests/b/blobs/c';
    const layer = 'layer of a name with API path words';
    const image = await pushImage(server, name, 'latest', { layer });
    const get = await server.fetch(`/v2/${name}/manifests/latest`);
    assert.equal(get.status, 200);
    assert.equal(get.headers.get('docker-content-digest'), image.digest);
    assert.deepEqual(Buffer.from(await get.arrayBuffer()), image.body);
    const blob = await server.fetch(`/v2/${name}/blobs/${image.layerDigest}`);
    assert.equal(blob.status, 200);
    assert.equal(await blob.text(), layer);
  });
});
