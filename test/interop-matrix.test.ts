// Cross-client matrix against one real mcr process: skopeo, podman,
// buildah, ctr, the Docker CLI and oci-registry-client each push an image
// of their own, and every other client (the Snyk client too) pulls it.
// Every pull is checked against what mcr stores for that push: the
// manifest digest and the config and layer digests. skopeo, ctr and
// oci-registry-client copy the source layout byte for byte, so their
// pushes must also keep the layout's manifest digest. podman and buildah
// push from their own stores and Docker compresses layers again, so those
// pushes are checked against the digest the client reported. podman,
// buildah and Docker store pulled layers uncompressed, so for them the
// test compares the manifest and config digests.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';

import { Ctr, writeOciArchive } from './helpers/ctr.js';
import { missingExecutables } from './helpers/daemons.js';
import { DockerCli, writeDockerArchive } from './helpers/docker.js';
import {
  buildBuildahImage,
  buildUmociImage,
  randomFiles,
  readJsonBlob,
  readLayoutBlob,
  run,
  storageArgs,
  taggedDescriptor,
  type ClientSandbox,
  type ImageManifest,
} from './helpers/images.js';
import {
  ociRegistryClient,
  pullWithOciRegistryClient,
  pullWithSnyk,
  pushWithOciRegistryClient,
  type Credentials,
} from './helpers/npm-clients.js';
import { fetchBlob, fetchManifest, sha256 } from './helpers/oci.js';
import {
  loginSandbox,
  startInteropEnvironment,
  type InteropEnvironment,
} from './helpers/interop.js';
import { ADMIN_PASSWORD, ADMIN_USER, type TestServer } from './helpers/server.js';

const ADMIN: Credentials = { username: ADMIN_USER, password: ADMIN_PASSWORD };
const USER = 'matrixuser';
const USER_PASSWORD = 'matrixuser-password';
/** Size of the one file in each image's one layer, in bytes. */
const LAYER_FILE_SIZE = 4 * 1024;

const skipReason = missingExecutables([
  'skopeo',
  'podman',
  'buildah',
  'umoci',
  'containerd',
  'ctr',
  'dockerd',
  'docker',
]);

let environment: InteropEnvironment;
let server: TestServer;
let workDir: string;
let sandbox: ClientSandbox;
let docker: DockerCli;
let ctr: Ctr;

before(async () => {
  if (skipReason) return;
  environment = await startInteropEnvironment({
    name: 'matrix',
    user: { username: USER, password: USER_PASSWORD },
    docker: true,
  });
  ({ server, workDir, sandbox } = environment);
  await loginSandbox(sandbox, server);
  docker = new DockerCli(environment.dockerd!, sandbox, path.join(workDir, 'docker-config'));
  await docker.loginOrFail(server.host, ADMIN_USER, ADMIN_PASSWORD);
  ctr = new Ctr(environment.containerd!, sandbox);
});

after(async () => {
  await environment?.stop();
});

/** An image as mcr stores it after one client's push. */
interface PushedImage {
  repository: string;
  /** host:port/repository:v1 */
  reference: string;
  digest: string;
  mediaType: string;
  configDigest: string;
  layerDigests: string[];
}

/** What a pusher reports: the manifest digest, and the source's digest when the push keeps it. */
interface PushResult {
  digest: string;
  sourceDigest?: string;
}

interface Pusher {
  name: string;
  push(repository: string): Promise<PushResult>;
}

interface Puller {
  name: string;
  /** Pulls `image` and checks the digests the client reports against it. */
  pull(image: PushedImage): Promise<void>;
}

function dir(...parts: string[]): string {
  const directory = path.join(workDir, ...parts);
  mkdirSync(directory, { recursive: true });
  return directory;
}

function remote(repository: string): string {
  return `${server.host}/${repository}:v1`;
}

/**
 * Returns the directory of the podman or buildah store `name`. podman 4.3
 * rejects a run root longer than 50 characters, so the path stays short.
 */
function storeDir(name: string): string {
  return dir('s', name);
}

function podman(store: string, ...args: string[]): Promise<string> {
  return run('podman', [...storageArgs(storeDir(store)), ...args], { env: sandbox.env });
}

function buildah(store: string, ...args: string[]): Promise<string> {
  return run('buildah', [...storageArgs(storeDir(store)), ...args], { env: sandbox.env });
}

/**
 * Pushes the image `name` from a podman or buildah store to
 * `repository`:v1 and returns the digest that the client wrote to its
 * --digestfile. `options` go before the image name, for example --creds.
 */
async function pushFromStore(
  client: 'podman' | 'buildah',
  store: string,
  name: string,
  repository: string,
  ...options: string[]
): Promise<string> {
  const digestFile = path.join(dir('digests'), store);
  await run(
    client,
    [
      ...storageArgs(storeDir(store)),
      'push',
      '--quiet',
      '--tls-verify=false',
      '--digestfile',
      digestFile,
      ...options,
      name,
      `docker://${remote(repository)}`,
    ],
    { env: sandbox.env },
  );
  return readDigestFile(digestFile);
}

/** Builds a one-layer image under tag v1 in a fresh OCI layout for `client` and returns the layout. */
async function buildLayout(client: string): Promise<string> {
  const layout = path.join(dir('layouts', client), 'layout');
  await buildUmociImage({
    layout,
    tag: 'v1',
    layers: [randomFiles({ [`${client}/data.bin`]: LAYER_FILE_SIZE })],
    workDir: dir('layouts', client),
  });
  return layout;
}

function readDigestFile(file: string): string {
  return readFileSync(file, 'utf8').trim();
}

const pushers: Pusher[] = [
  {
    name: 'skopeo',
    async push(repository) {
      const layout = await buildLayout('skopeo');
      const digestFile = path.join(dir('digests'), 'skopeo');
      await run(
        'skopeo',
        [
          'copy',
          '--dest-tls-verify=false',
          '--digestfile',
          digestFile,
          `oci:${layout}:v1`,
          `docker://${remote(repository)}`,
        ],
        { env: sandbox.env },
      );
      return {
        digest: readDigestFile(digestFile),
        sourceDigest: taggedDescriptor(layout, 'v1').digest,
      };
    },
  },
  {
    name: 'podman',
    async push(repository) {
      const layout = await buildLayout('podman');
      const archive = path.join(dir('layouts', 'podman'), 'image.tar');
      const name = 'localhost/matrix/podman:v1';
      await writeOciArchive(sandbox, layout, 'v1', archive, name);
      const loaded = await podman('podman-push', 'load', '--quiet', '--input', archive);
      assert.match(loaded, new RegExp(`Loaded image: ${name}`));
      return { digest: await pushFromStore('podman', 'podman-push', name, repository) };
    },
  },
  {
    name: 'buildah',
    async push(repository) {
      const name = 'localhost/matrix/buildah:v1';
      await buildBuildahImage({
        sandbox,
        storageDir: storeDir('buildah-push'),
        name,
        layers: [randomFiles({ 'buildah/data.bin': LAYER_FILE_SIZE })],
        workDir: dir('layouts', 'buildah'),
      });
      return { digest: await pushFromStore('buildah', 'buildah-push', name, repository) };
    },
  },
  {
    name: 'ctr',
    async push(repository) {
      const layout = await buildLayout('ctr');
      const archive = path.join(dir('layouts', 'ctr'), 'image.tar');
      await writeOciArchive(sandbox, layout, 'v1', archive, remote(repository));
      const namespace = ctr.freshNamespace();
      await ctr.importArchive(namespace, archive);
      await ctr.push(namespace, `${ADMIN_USER}:${ADMIN_PASSWORD}`, remote(repository));
      const sourceDigest = taggedDescriptor(layout, 'v1').digest;
      // ctr push prints no digest, so the test reads the digest of the image it imported.
      return { digest: await ctr.imageDigest(namespace, remote(repository)), sourceDigest };
    },
  },
  {
    name: 'docker',
    async push(repository) {
      const layout = await buildLayout('docker');
      const archive = path.join(dir('layouts', 'docker'), 'image.tar');
      await writeDockerArchive(sandbox, layout, 'v1', archive, remote(repository));
      await docker.load(archive, remote(repository));
      return { digest: await docker.push(remote(repository)) };
    },
  },
  {
    name: 'oci-registry-client',
    async push(repository) {
      const layout = await buildLayout('oci-registry-client');
      const source = taggedDescriptor(layout, 'v1');
      const manifest = readJsonBlob<ImageManifest>(layout, source.digest);
      const blobs = [manifest.config, ...manifest.layers].map((blob) =>
        readLayoutBlob(layout, blob.digest),
      );
      const digest = await pushWithOciRegistryClient(
        ociRegistryClient(server.host, repository, ADMIN),
        blobs,
        readLayoutBlob(layout, source.digest),
        source.mediaType,
        'v1',
      );
      assert.ok(digest, 'the registry returned Docker-Content-Digest');
      return { digest, sourceDigest: source.digest };
    },
  },
];

/** Asserts that a client's pulled blobs are exactly the config and layers of `image`. */
function assertSameBlobs(image: PushedImage, blobs: Map<string, Buffer>): void {
  assert.deepEqual(
    [...blobs.keys()].sort(),
    [image.configDigest, ...image.layerDigests].sort(),
    'config and layer digests',
  );
  for (const [digest, bytes] of blobs) {
    assert.equal(sha256(bytes), digest, `pulled blob ${digest} matches its digest`);
  }
}

const pullers: Puller[] = [
  {
    name: 'skopeo',
    async pull(image) {
      const target = path.join(dir('pulls', 'skopeo'), image.repository.replaceAll('/', '-'));
      await run(
        'skopeo',
        ['copy', '--src-tls-verify=false', `docker://${image.reference}`, `dir:${target}`],
        { env: sandbox.env },
      );
      // The dir: transport keeps the manifest bytes and names blobs by their hex digest.
      assert.equal(
        sha256(readFileSync(path.join(target, 'manifest.json'))),
        image.digest,
        'manifest digest',
      );
      const blobs = new Map<string, Buffer>();
      for (const digest of [image.configDigest, ...image.layerDigests]) {
        blobs.set(digest, readFileSync(path.join(target, digest.replace(/^sha256:/, ''))));
      }
      assertSameBlobs(image, blobs);
    },
  },
  {
    name: 'podman',
    async pull(image) {
      const imageId = (
        await podman('podman-pull', 'pull', '--quiet', '--tls-verify=false', image.reference)
      ).trim();
      assert.equal(`sha256:${imageId}`, image.configDigest, 'image ID is the config digest');
      const output = await podman('podman-pull', 'image', 'inspect', image.reference);
      const [inspected] = JSON.parse(output) as Array<{ Digest: string; RepoDigests: string[] }>;
      assert.equal(inspected?.Digest, image.digest, 'manifest digest');
      assert.ok(
        inspected.RepoDigests.includes(`${server.host}/${image.repository}@${image.digest}`),
        `RepoDigests ${inspected.RepoDigests.join(', ')} contain ${image.digest}`,
      );
    },
  },
  {
    name: 'buildah',
    async pull(image) {
      const imageId = (
        await buildah('buildah-pull', 'pull', '--quiet', '--tls-verify=false', image.reference)
      ).trim();
      assert.equal(`sha256:${imageId}`, image.configDigest, 'image ID is the config digest');
      const output = await buildah('buildah-pull', 'inspect', '--type', 'image', image.reference);
      const inspected = JSON.parse(output) as { FromImageDigest: string };
      assert.equal(inspected.FromImageDigest, image.digest, 'manifest digest');
    },
  },
  {
    name: 'ctr',
    async pull(image) {
      const namespace = ctr.freshNamespace();
      await ctr.pull(namespace, `${ADMIN_USER}:${ADMIN_PASSWORD}`, image.reference);
      assert.equal(
        await ctr.imageDigest(namespace, image.reference),
        image.digest,
        'manifest digest',
      );
      const blobs = new Map<string, Buffer>();
      for (const digest of [image.configDigest, ...image.layerDigests]) {
        blobs.set(digest, await ctr.contentGet(namespace, digest));
      }
      assertSameBlobs(image, blobs);
    },
  },
  {
    name: 'docker',
    async pull(image) {
      const output = await docker.run('pull', image.reference);
      assert.match(output, new RegExp(`Digest: ${image.digest}`), 'manifest digest');
      const pulled = await docker.inspectImage(image.reference);
      assert.equal(pulled.Id, image.configDigest, 'image ID is the config digest');
      assert.ok(
        pulled.RepoDigests.includes(`${server.host}/${image.repository}@${image.digest}`),
        `RepoDigests ${pulled.RepoDigests.join(', ')} contain ${image.digest}`,
      );
    },
  },
  {
    name: 'oci-registry-client',
    async pull(image) {
      const pulled = await pullWithOciRegistryClient(
        ociRegistryClient(server.host, image.repository, ADMIN),
        'v1',
      );
      assert.equal(pulled.digest, image.digest, 'manifest digest');
      assert.equal(pulled.mediaType, image.mediaType, 'manifest media type');
      assertSameBlobs(image, pulled.blobs);
    },
  },
  {
    name: 'snyk',
    async pull(image) {
      const pulled = await pullWithSnyk(server.host, image.repository, 'v1', ADMIN);
      assert.equal(pulled.digest, image.digest, 'manifest digest');
      assert.equal(pulled.mediaType, image.mediaType, 'manifest media type');
      assertSameBlobs(image, pulled.blobs);
    },
  },
];

/**
 * Reads what mcr stores for a push, checks it against what the pusher
 * reported, and checks every blob's bytes against its digest.
 */
async function storedImage(repository: string, result: PushResult): Promise<PushedImage> {
  const served = await fetchManifest(server, repository, 'v1');
  assert.equal(served.status, 200, `GET manifest ${repository}:v1`);
  assert.equal(
    served.digest,
    result.digest,
    'Docker-Content-Digest is the digest the client reported',
  );
  assert.equal(sha256(served.body), result.digest, 'stored manifest bytes match the digest');
  if (result.sourceDigest)
    assert.equal(result.digest, result.sourceDigest, 'the push kept the source manifest');

  const manifest = JSON.parse(served.body.toString('utf8')) as ImageManifest;
  const image: PushedImage = {
    repository,
    reference: remote(repository),
    digest: result.digest,
    mediaType: served.mediaType ?? '',
    configDigest: manifest.config.digest,
    layerDigests: manifest.layers.map((layer) => layer.digest),
  };
  assert.equal(image.layerDigests.length, 1, 'one layer');
  for (const digest of [image.configDigest, ...image.layerDigests]) {
    assert.equal(
      sha256(await fetchBlob(server, repository, digest)),
      digest,
      `stored blob ${digest}`,
    );
  }
  return image;
}

function skipWithoutClients(t: TestContext): boolean {
  if (!skipReason) return false;
  t.skip(skipReason);
  return true;
}

describe('cross-client matrix', () => {
  const pushed = new Map<string, PushedImage>();

  for (const pusher of pushers) {
    it(`${pusher.name} pushes`, async (t) => {
      if (skipWithoutClients(t)) return;
      const repository = `matrix/${pusher.name}`;
      pushed.set(pusher.name, await storedImage(repository, await pusher.push(repository)));
    });
  }

  for (const pusher of pushers) {
    for (const puller of pullers) {
      if (puller.name === pusher.name) continue;
      it(`${puller.name} pulls what ${pusher.name} pushed`, async (t) => {
        if (skipWithoutClients(t)) return;
        const image = pushed.get(pusher.name);
        assert.ok(image, `the push by ${pusher.name} failed; see its test`);
        await puller.pull(image);
      });
    }
  }
});

describe('podman and buildah denials', () => {
  /** Builds an image with buildah in the store `store`, which podman reads as well. */
  async function localImage(store: string, name: string): Promise<void> {
    await buildBuildahImage({
      sandbox,
      storageDir: storeDir(store),
      name,
      layers: [randomFiles({ 'denied/data.bin': LAYER_FILE_SIZE })],
      workDir: dir('layouts', store),
    });
  }

  for (const client of ['podman', 'buildah'] as const) {
    it(`${client} reports wrong password and denial`, async (t) => {
      if (skipWithoutClients(t)) return;
      const store = `${client}-denied`;
      const name = `localhost/matrix/${client}-denied:v1`;
      await localImage(store, name);
      const push = (repository: string, creds: string) =>
        pushFromStore(client, store, name, repository, '--creds', creds).then(
          () =>
            assert.fail(`${client} push to ${repository} succeeded, but it was expected to fail`),
          (error: Error) => error.message,
        );

      const wrongPassword = await push(`admin/${client}-denied`, `${ADMIN_USER}:wrong-password`);
      assert.match(wrongPassword, /invalid username, password or access token/);
      assert.equal((await fetchManifest(server, `admin/${client}-denied`, 'v1')).status, 404);

      const denied = await push(`admin/${client}-denied`, `${USER}:${USER_PASSWORD}`);
      assert.match(denied, new RegExp(`${USER} may not push admin/${client}-denied`));
      assert.equal((await fetchManifest(server, `admin/${client}-denied`, 'v1')).status, 404);
    });
  }
});
