// Pushes images to a real mcr process with skopeo, podman and buildah and
// pulls them back, checking digests and bytes. Every client talks only to
// the loopback server. Sources are local OCI layouts and vfs stores in a
// temporary directory.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { gunzipSync } from 'node:zlib';

import {
  buildBuildahImage,
  buildUmociImage,
  createClientSandbox,
  randomFiles,
  readAllBlobs,
  readJsonBlob,
  readLayoutBlob,
  readTarFiles,
  run,
  storageArgs,
  taggedDescriptor,
  writeImageIndex,
  type ClientSandbox,
  type FileTree,
  type ImageIndex,
  type ImageManifest,
} from './helpers/images.js';
import { loginSandbox } from './helpers/interop.js';
import { DOCKER_CONFIG, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, sha256 } from './helpers/oci.js';
import { startServer, type TestServer } from './helpers/server.js';

const MiB = 1024 * 1024;
const DOCKER_LAYER = 'application/vnd.docker.image.rootfs.diff.tar.gzip';
const MANIFEST_ACCEPT = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST].join(', ');

let server: TestServer;
let workDir: string;
let sandbox: ClientSandbox;

before(async () => {
  workDir = mkdtempSync(path.join(tmpdir(), 'mcr-interop-'));
  sandbox = createClientSandbox(path.join(workDir, 'clients'));
  server = await startServer();
  // Every client in the sandbox reads the credentials this login stores in
  // its REGISTRY_AUTH_FILE.
  await loginSandbox(sandbox, server);
});

after(async () => {
  await server?.cleanup();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

function skopeo(...args: string[]): Promise<string> {
  return run('skopeo', args, { env: sandbox.env });
}

function podman(storageDir: string, ...args: string[]): Promise<string> {
  return run('podman', [...storageArgs(storageDir), ...args], { env: sandbox.env });
}

function buildah(storageDir: string, ...args: string[]): Promise<string> {
  return run('buildah', [...storageArgs(storageDir), ...args], { env: sandbox.env });
}

/** Creates a directory for one test, which the after hook removes with workDir. */
function testDir(name: string): string {
  const dir = path.join(workDir, name);
  mkdirSync(dir, { recursive: true });
  return dir;
}

/** Prefixes the test server's host:port, for example 127.0.0.1:41234/repo:tag. */
function remote(repositoryAndTag: string): string {
  return `${server.host}/${repositoryAndTag}`;
}

async function fetchManifest(
  repository: string,
  reference: string,
  accept = MANIFEST_ACCEPT,
): Promise<{ status: number; headers: Headers; body: Buffer }> {
  const response = await server.fetch(`${server.url}/v2/${repository}/manifests/${reference}`, {
    headers: { Accept: accept },
  });
  return {
    status: response.status,
    headers: response.headers,
    body: Buffer.from(await response.arrayBuffer()),
  };
}

async function fetchBlob(repository: string, digest: string): Promise<Buffer> {
  const response = await server.fetch(`${server.url}/v2/${repository}/blobs/${digest}`);
  assert.equal(response.status, 200, `GET blob ${digest} from ${repository}`);
  return Buffer.from(await response.arrayBuffer());
}

async function errorCode(response: Response): Promise<string | undefined> {
  const body = (await response.json()) as { errors?: Array<{ code: string }> };
  return body.errors?.[0]?.code;
}

function readDigestFile(file: string): string {
  return readFileSync(file, 'utf8').trim();
}

/** Waits until the server has logged a line that matches, so earlier lines are in `logs` too. */
async function waitForLog(
  matches: (entry: Record<string, unknown>) => boolean,
  timeoutMs = 5_000,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!server.logs.some(matches)) {
    if (Date.now() > deadline) {
      throw new Error(`no matching server log line within ${timeoutMs} ms`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/**
 * Asserts that `pulled` contains the image tagged `pulledTag` with the same
 * descriptor as `sourceTag` in `source`, and that both layouts contain exactly
 * the same blobs, byte for byte, each matching the digest it is stored under.
 */
function assertSameLayout(
  source: string,
  sourceTag: string,
  pulled: string,
  pulledTag: string,
): void {
  const expected = taggedDescriptor(source, sourceTag);
  const actual = taggedDescriptor(pulled, pulledTag);
  assert.equal(actual.digest, expected.digest, 'top-level manifest digest');
  assert.equal(actual.mediaType, expected.mediaType, 'top-level media type');
  assert.equal(actual.size, expected.size, 'top-level manifest size');

  const sourceBlobs = readAllBlobs(source);
  const pulledBlobs = readAllBlobs(pulled);
  assert.deepEqual([...pulledBlobs.keys()].sort(), [...sourceBlobs.keys()].sort(), 'blob digests');
  for (const [digest, bytes] of pulledBlobs) {
    assert.equal(sha256(bytes), digest, `pulled blob ${digest} content matches its digest`);
    assert.ok(bytes.equals(sourceBlobs.get(digest)!), `pulled blob ${digest} equals the source`);
  }
}

/** Asserts that the image manifest `digest` has the same config and layers in both layouts. */
function assertSameImage(source: string, pulled: string, digest: string): ImageManifest {
  const expected = readJsonBlob<ImageManifest>(source, digest);
  const actual = readJsonBlob<ImageManifest>(pulled, digest);
  assert.equal(actual.config.digest, expected.config.digest, 'config digest');
  assert.deepEqual(
    actual.layers.map((layer) => layer.digest),
    expected.layers.map((layer) => layer.digest),
    'layer digests',
  );
  return actual;
}

describe('skopeo', () => {
  it('copies a three-layer OCI image unchanged', async () => {
    const dir = testDir('three-layers');
    const source = path.join(dir, 'source');
    const pulled = path.join(dir, 'pulled');
    const layers: FileTree[] = [
      randomFiles({ 'etc/app.conf': 2_000, 'etc/motd': 300 }),
      randomFiles({ 'data/part-1.bin': 12 * MiB, 'data/part-2.bin': 10 * MiB }),
      randomFiles({ 'usr/bin/tool': 64 * 1024 }),
    ];
    const image = await buildUmociImage({ layout: source, tag: 'v1', layers, workDir: dir });
    const manifest = readJsonBlob<ImageManifest>(source, image.digest);
    assert.equal(manifest.layers.length, 3);
    assert.ok(
      manifest.layers.some((layer) => layer.size > 20 * MiB),
      'one layer is larger than 20 MiB',
    );

    const digestFile = path.join(dir, 'pushed.digest');
    await skopeo(
      'copy',
      '--dest-tls-verify=false',
      '--digestfile',
      digestFile,
      `oci:${source}:v1`,
      `docker://${remote('interop/three-layers:v1')}`,
    );
    assert.equal(readDigestFile(digestFile), image.digest);

    const served = await fetchManifest('interop/three-layers', 'v1');
    assert.equal(served.status, 200);
    assert.equal(served.headers.get('content-type'), OCI_MANIFEST);
    assert.equal(served.headers.get('docker-content-digest'), image.digest);
    assert.ok(served.body.equals(readLayoutBlob(source, image.digest)), 'served manifest bytes');

    await skopeo(
      'copy',
      '--src-tls-verify=false',
      `docker://${remote('interop/three-layers:v1')}`,
      `oci:${pulled}:v1`,
    );
    assertSameLayout(source, 'v1', pulled, 'v1');
    assertSameImage(source, pulled, image.digest);
  });

  it('copies a two-platform image index with --all', async () => {
    const dir = testDir('index');
    const source = path.join(dir, 'source');
    const pulled = path.join(dir, 'pulled');
    for (const architecture of ['amd64', 'arm64']) {
      await buildUmociImage({
        layout: source,
        tag: architecture,
        layers: [
          randomFiles({ [`opt/${architecture}/lib.so`]: 300 * 1024 }),
          randomFiles({ [`opt/${architecture}/bin`]: 40 * 1024 }),
        ],
        workDir: dir,
        architecture,
        os: 'linux',
      });
    }
    const index = await writeImageIndex(source, 'multi', ['amd64', 'arm64']);
    const indexBytes = readLayoutBlob(source, index.digest);
    const children = (JSON.parse(indexBytes.toString('utf8')) as ImageIndex).manifests;
    assert.deepEqual(
      children.map((child) => child.platform),
      [
        { architecture: 'amd64', os: 'linux' },
        { architecture: 'arm64', os: 'linux' },
      ],
    );

    const digestFile = path.join(dir, 'pushed.digest');
    await skopeo(
      'copy',
      '--all',
      '--dest-tls-verify=false',
      '--digestfile',
      digestFile,
      `oci:${source}:multi`,
      `docker://${remote('interop/multi:v1')}`,
    );
    assert.equal(readDigestFile(digestFile), index.digest);

    const served = await fetchManifest('interop/multi', 'v1', OCI_INDEX);
    assert.equal(served.status, 200);
    assert.equal(served.headers.get('content-type'), OCI_INDEX);
    assert.equal(served.headers.get('docker-content-digest'), index.digest);
    assert.ok(served.body.equals(indexBytes), 'served index bytes');

    for (const child of children) {
      const childManifest = await fetchManifest('interop/multi', child.digest, OCI_MANIFEST);
      assert.equal(childManifest.status, 200, `GET child manifest ${child.digest}`);
      assert.equal(childManifest.headers.get('content-type'), OCI_MANIFEST);
      assert.equal(childManifest.headers.get('docker-content-digest'), child.digest);
      assert.ok(
        childManifest.body.equals(readLayoutBlob(source, child.digest)),
        `child manifest ${child.digest} bytes`,
      );
    }

    await skopeo(
      'copy',
      '--all',
      '--src-tls-verify=false',
      `docker://${remote('interop/multi:v1')}`,
      `oci:${pulled}:v1`,
    );
    assertSameLayout(source, 'multi', pulled, 'v1');
    for (const child of children) assertSameImage(source, pulled, child.digest);
  });

  it('pushes and pulls a Docker schema 2 image', async () => {
    const dir = testDir('docker-v2s2');
    const source = path.join(dir, 'source');
    const pulled = path.join(dir, 'pulled');
    const image = await buildUmociImage({
      layout: source,
      tag: 'v1',
      layers: [randomFiles({ 'srv/a.bin': 200 * 1024 }), randomFiles({ 'srv/b.bin': 1 * MiB })],
      workDir: dir,
    });
    const sourceManifest = readJsonBlob<ImageManifest>(source, image.digest);

    const digestFile = path.join(dir, 'pushed.digest');
    await skopeo(
      'copy',
      '--format',
      'v2s2',
      '--dest-tls-verify=false',
      '--digestfile',
      digestFile,
      `oci:${source}:v1`,
      `docker://${remote('interop/docker:v1')}`,
    );
    const pushedDigest = readDigestFile(digestFile);
    assert.notEqual(pushedDigest, image.digest, 'conversion to schema 2 rewrites the manifest');

    const served = await fetchManifest('interop/docker', 'v1', DOCKER_MANIFEST);
    assert.equal(served.status, 200);
    assert.equal(served.headers.get('content-type'), DOCKER_MANIFEST);
    assert.equal(served.headers.get('docker-content-digest'), pushedDigest);
    assert.equal(sha256(served.body), pushedDigest);
    const manifest = JSON.parse(served.body.toString('utf8')) as ImageManifest;
    assert.equal(manifest.mediaType, DOCKER_MANIFEST);
    assert.equal(manifest.config.mediaType, DOCKER_CONFIG);
    assert.equal(manifest.config.digest, sourceManifest.config.digest);
    assert.deepEqual(
      manifest.layers.map((layer) => [layer.mediaType, layer.digest, layer.size]),
      sourceManifest.layers.map((layer) => [DOCKER_LAYER, layer.digest, layer.size]),
    );

    // The dir: transport stores the manifest and blobs as they were served.
    await skopeo(
      'copy',
      '--src-tls-verify=false',
      `docker://${remote('interop/docker:v1')}`,
      `dir:${pulled}`,
    );
    const pulledManifest = readFileSync(path.join(pulled, 'manifest.json'));
    assert.equal(sha256(pulledManifest), pushedDigest);
    assert.ok(pulledManifest.equals(served.body), 'pulled manifest bytes');
    for (const blob of [manifest.config, ...manifest.layers]) {
      const bytes = readFileSync(path.join(pulled, blob.digest.slice('sha256:'.length)));
      assert.equal(sha256(bytes), blob.digest, `pulled blob ${blob.digest} matches its digest`);
      assert.ok(bytes.equals(readLayoutBlob(source, blob.digest)), `blob ${blob.digest} bytes`);
    }
  });

  it('mounts layers when copying between repositories', async () => {
    const dir = testDir('mount');
    const source = path.join(dir, 'source');
    const image = await buildUmociImage({
      layout: source,
      tag: 'v1',
      layers: [randomFiles({ 'a/one.bin': 500 * 1024 }), randomFiles({ 'b/two.bin': 700 * 1024 })],
      workDir: dir,
    });
    const manifest = readJsonBlob<ImageManifest>(source, image.digest);
    const layerDigests = manifest.layers.map((layer) => layer.digest);

    await skopeo(
      'copy',
      '--dest-tls-verify=false',
      `oci:${source}:v1`,
      `docker://${remote('interop/mount-source:v1')}`,
    );
    // NOTE: skopeo only tries a mount for a blob that its blob info cache has
    // seen in another repository of the same registry. The push above records
    // the layers there.
    await skopeo(
      'copy',
      '--src-tls-verify=false',
      '--dest-tls-verify=false',
      `docker://${remote('interop/mount-source:v1')}`,
      `docker://${remote('interop/mount-target:v1')}`,
    );
    await waitForLog(
      (entry) => entry.msg === 'manifest pushed' && entry.repository === 'interop/mount-target',
    );

    const mounts = server.logs.filter(
      (entry) => entry.msg === 'blob mounted' && entry.repository === 'interop/mount-target',
    );
    for (const digest of layerDigests) {
      const mount = mounts.find((entry) => entry.digest === digest);
      assert.ok(mount, `layer ${digest} was mounted into interop/mount-target`);
      assert.equal(mount.from, 'interop/mount-source');
    }
    const uploaded = server.logs
      .filter(
        (entry) =>
          entry.msg === 'blob upload completed' && entry.repository === 'interop/mount-target',
      )
      .map((entry) => entry.digest);
    for (const digest of layerDigests) {
      assert.ok(!uploaded.includes(digest), `layer ${digest} was not uploaded again`);
    }

    const served = await fetchManifest('interop/mount-target', 'v1');
    assert.equal(served.status, 200);
    assert.equal(served.headers.get('docker-content-digest'), image.digest);
    for (const blob of [manifest.config, ...manifest.layers]) {
      const bytes = await fetchBlob('interop/mount-target', blob.digest);
      assert.equal(sha256(bytes), blob.digest);
      assert.ok(bytes.equals(readLayoutBlob(source, blob.digest)), `blob ${blob.digest} bytes`);
    }
  });

  it('lists tags, inspects and deletes', async () => {
    const dir = testDir('lifecycle');
    const source = path.join(dir, 'source');
    const image = await buildUmociImage({
      layout: source,
      tag: 'v1',
      layers: [randomFiles({ 'x/file': 10 * 1024 })],
      workDir: dir,
    });
    const keptImage = await buildUmociImage({
      layout: source,
      tag: 'keep',
      layers: [randomFiles({ 'y/file': 10 * 1024 })],
      workDir: dir,
    });
    const manifest = readJsonBlob<ImageManifest>(source, image.digest);
    const push = (tag: string, remoteTag: string) =>
      skopeo(
        'copy',
        '--dest-tls-verify=false',
        `oci:${source}:${tag}`,
        `docker://${remote(`interop/lifecycle:${remoteTag}`)}`,
      );
    await push('v1', 'v1');
    await push('v1', 'v1-alias');
    await push('keep', 'keep');

    const listed = JSON.parse(
      await skopeo('list-tags', '--tls-verify=false', `docker://${remote('interop/lifecycle')}`),
    ) as { Repository: string; Tags: string[] };
    assert.equal(listed.Repository, remote('interop/lifecycle'));
    assert.deepEqual([...listed.Tags].sort(), ['keep', 'v1', 'v1-alias']);

    const inspected = JSON.parse(
      await skopeo('inspect', '--tls-verify=false', `docker://${remote('interop/lifecycle:v1')}`),
    ) as { Digest: string; Layers: string[]; Architecture: string; Os: string };
    assert.equal(inspected.Digest, image.digest);
    assert.deepEqual(
      inspected.Layers,
      manifest.layers.map((layer) => layer.digest),
    );
    const raw = await skopeo(
      'inspect',
      '--raw',
      '--tls-verify=false',
      `docker://${remote('interop/lifecycle:v1')}`,
    );
    assert.equal(sha256(raw), image.digest);

    // skopeo resolves the tag and deletes the manifest by digest, which
    // removes every tag pointing at it.
    await skopeo('delete', '--tls-verify=false', `docker://${remote('interop/lifecycle:v1')}`);
    const isDelete = (entry: Record<string, unknown>) =>
      entry.msg === 'request' &&
      entry.method === 'DELETE' &&
      entry.path === `/v2/interop/lifecycle/manifests/${image.digest}`;
    await waitForLog(isDelete);
    assert.equal(server.logs.find(isDelete)?.status, 202);

    for (const reference of [image.digest, 'v1', 'v1-alias']) {
      const response = await server.fetch(
        `${server.url}/v2/interop/lifecycle/manifests/${reference}`,
        {
          headers: { Accept: MANIFEST_ACCEPT },
        },
      );
      assert.equal(response.status, 404, `GET manifest ${reference} after delete`);
      assert.equal(await errorCode(response), 'MANIFEST_UNKNOWN');
    }

    const keptManifest = await fetchManifest('interop/lifecycle', 'keep');
    assert.equal(keptManifest.status, 200);
    assert.equal(keptManifest.headers.get('docker-content-digest'), keptImage.digest);
    const remaining = JSON.parse(
      await skopeo('list-tags', '--tls-verify=false', `docker://${remote('interop/lifecycle')}`),
    ) as { Tags: string[] };
    assert.deepEqual(remaining.Tags, ['keep']);
  });
});

describe('podman', () => {
  it('pulls from mcr and pushes to another repository', async () => {
    const dir = testDir('podman');
    const source = path.join(dir, 'source');
    const storage = path.join(dir, 'storage');
    const image = await buildUmociImage({
      layout: source,
      tag: 'v1',
      layers: [randomFiles({ 'srv/a.bin': 300 * 1024 }), randomFiles({ 'srv/b.bin': 2 * MiB })],
      workDir: dir,
    });
    const manifest = readJsonBlob<ImageManifest>(source, image.digest);
    const layerDigests = manifest.layers.map((layer) => layer.digest);
    await skopeo(
      'copy',
      '--dest-tls-verify=false',
      `oci:${source}:v1`,
      `docker://${remote('interop/podman-source:v1')}`,
    );

    const pulledId = await podman(
      storage,
      'pull',
      '--quiet',
      '--tls-verify=false',
      remote('interop/podman-source:v1'),
    );
    assert.equal(`sha256:${pulledId.trim()}`, manifest.config.digest, 'image ID is the config');
    const [inspected] = JSON.parse(
      await podman(storage, 'image', 'inspect', remote('interop/podman-source:v1')),
    ) as Array<{ Id: string; Digest: string; RepoDigests: string[] }>;
    assert.ok(inspected);
    assert.equal(`sha256:${inspected.Id}`, manifest.config.digest);
    assert.equal(inspected.Digest, image.digest);
    assert.ok(
      inspected.RepoDigests.includes(`${remote('interop/podman-source')}@${image.digest}`),
      `RepoDigests ${inspected.RepoDigests.join(', ')}`,
    );

    const digestFile = path.join(dir, 'pushed.digest');
    await podman(
      storage,
      'push',
      '--quiet',
      '--tls-verify=false',
      '--digestfile',
      digestFile,
      remote('interop/podman-source:v1'),
      `docker://${remote('interop/podman-copy:v1')}`,
    );
    const pushedDigest = readDigestFile(digestFile);

    // podman re-encodes the manifest, so only its config and layers keep
    // their digests. NOTE: the layers keep theirs only because podman's blob
    // info cache remembers the compressed blobs of the pull and mounts them
    // from interop/podman-source. Without a mount it would recompress them.
    const served = await fetchManifest('interop/podman-copy', 'v1');
    assert.equal(served.status, 200);
    assert.equal(served.headers.get('docker-content-digest'), pushedDigest);
    assert.equal(sha256(served.body), pushedDigest);
    const copied = JSON.parse(served.body.toString('utf8')) as ImageManifest;
    assert.equal(copied.config.digest, manifest.config.digest);
    assert.deepEqual(
      copied.layers.map((layer) => layer.digest),
      layerDigests,
    );

    const inspectedCopy = JSON.parse(
      await skopeo('inspect', '--tls-verify=false', `docker://${remote('interop/podman-copy:v1')}`),
    ) as { Digest: string; Layers: string[] };
    assert.equal(inspectedCopy.Digest, pushedDigest);
    assert.deepEqual(inspectedCopy.Layers, layerDigests);
    for (const blob of [copied.config, ...copied.layers]) {
      const bytes = await fetchBlob('interop/podman-copy', blob.digest);
      assert.ok(bytes.equals(readLayoutBlob(source, blob.digest)), `blob ${blob.digest} bytes`);
    }
  });
});

describe('buildah', () => {
  it('pushes a scratch image and pulls it back', async () => {
    const dir = testDir('buildah');
    const buildStorage = path.join(dir, 'build-storage');
    const pullStorage = path.join(dir, 'pull-storage');
    const layers: FileTree[] = [
      randomFiles({ 'app/data.bin': 256 * 1024, 'app/config.json': 1_000 }),
      randomFiles({ 'app/extra/blob.bin': 1 * MiB }),
    ];
    const name = 'localhost/interop/built:v1';
    const imageId = await buildBuildahImage({
      sandbox,
      storageDir: buildStorage,
      name,
      layers,
      workDir: dir,
    });
    const local = JSON.parse(await buildah(buildStorage, 'inspect', '--type', 'image', name)) as {
      FromImageID: string;
      OCIv1: { rootfs: { diff_ids: string[] } };
    };
    assert.equal(local.FromImageID, imageId);
    const diffIds = local.OCIv1.rootfs.diff_ids;
    assert.equal(diffIds.length, 2);

    const digestFile = path.join(dir, 'pushed.digest');
    await buildah(
      buildStorage,
      'push',
      '--quiet',
      '--tls-verify=false',
      '--digestfile',
      digestFile,
      name,
      `docker://${remote('interop/buildah:v1')}`,
    );
    const pushedDigest = readDigestFile(digestFile);

    const served = await fetchManifest('interop/buildah', 'v1');
    assert.equal(served.status, 200);
    assert.equal(served.headers.get('content-type'), OCI_MANIFEST);
    assert.equal(served.headers.get('docker-content-digest'), pushedDigest);
    assert.equal(sha256(served.body), pushedDigest);
    const manifest = JSON.parse(served.body.toString('utf8')) as ImageManifest;
    assert.equal(manifest.config.digest, `sha256:${imageId}`);
    assert.equal(manifest.layers.length, 2);

    const tagsResponse = await server.fetch(`${server.url}/v2/interop/buildah/tags/list`);
    assert.equal(tagsResponse.status, 200);
    assert.deepEqual(await tagsResponse.json(), { name: 'interop/buildah', tags: ['v1'] });

    const inspected = JSON.parse(
      await skopeo('inspect', '--tls-verify=false', `docker://${remote('interop/buildah:v1')}`),
    ) as { Digest: string; Layers: string[] };
    assert.equal(inspected.Digest, pushedDigest);
    assert.deepEqual(
      inspected.Layers,
      manifest.layers.map((layer) => layer.digest),
    );

    const config = await fetchBlob('interop/buildah', manifest.config.digest);
    assert.equal(sha256(config), manifest.config.digest);
    const configJson = JSON.parse(config.toString('utf8')) as { rootfs: { diff_ids: string[] } };
    assert.deepEqual(configJson.rootfs.diff_ids, diffIds);
    for (const [number, layer] of manifest.layers.entries()) {
      const compressed = await fetchBlob('interop/buildah', layer.digest);
      assert.equal(sha256(compressed), layer.digest, `layer ${number} matches its digest`);
      const archive = gunzipSync(compressed);
      assert.equal(sha256(archive), diffIds[number], `layer ${number} diff ID`);
      const files = readTarFiles(archive);
      for (const [file, content] of Object.entries(layers[number]!)) {
        assert.ok(files.get(file)?.equals(content), `layer ${number} contains ${file} unchanged`);
      }
    }

    const pulledId = await buildah(
      pullStorage,
      'pull',
      '--quiet',
      '--tls-verify=false',
      remote('interop/buildah:v1'),
    );
    assert.equal(pulledId.trim(), imageId);
    const pulledImages = JSON.parse(await buildah(pullStorage, 'images', '--json')) as Array<{
      id: string;
      digest: string;
      names: string[];
    }>;
    const pulled = pulledImages.find((entry) => imageId.startsWith(entry.id));
    assert.ok(pulled, `pulled image ${imageId} is listed`);
    assert.equal(pulled.digest, pushedDigest);
    assert.deepEqual(pulled.names, [remote('interop/buildah:v1')]);
    const pulledInspect = JSON.parse(
      await buildah(pullStorage, 'inspect', '--type', 'image', remote('interop/buildah:v1')),
    ) as { FromImageDigest: string; OCIv1: { rootfs: { diff_ids: string[] } } };
    assert.equal(pulledInspect.FromImageDigest, pushedDigest);
    assert.deepEqual(pulledInspect.OCIv1.rootfs.diff_ids, diffIds);
  });
});
