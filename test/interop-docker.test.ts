// Logs in, pushes and pulls with the Docker CLI through a private dockerd
// (on its own containerd) against a real mcr process, checking digests
// against what mcr stores. Images come from OCI layouts that umoci builds
// and skopeo writes as docker-archive files for `docker load`, so dockerd
// only ever talks to the loopback server.
import assert from 'node:assert/strict';
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { gunzipSync } from 'node:zlib';

import { missingExecutables } from './helpers/daemons.js';
import { DockerCli, writeDockerArchive } from './helpers/docker.js';
import {
  buildUmociImage,
  randomFiles,
  readJsonBlob,
  run,
  taggedDescriptor,
  writeImageIndex,
  type ClientSandbox,
  type ImageIndex,
  type ImageManifest,
} from './helpers/images.js';
import {
  DOCKER_LIST,
  DOCKER_MANIFEST,
  fetchBlob,
  fetchManifest,
  sha256,
  type ServedManifest,
} from './helpers/oci.js';
import { startInteropEnvironment, type InteropEnvironment } from './helpers/interop.js';
import { ADMIN_PASSWORD, ADMIN_USER, type TestServer } from './helpers/server.js';

const USER = 'dockeruser';
const USER_PASSWORD = 'dockeruser-password';

const skipReason = missingExecutables([
  'dockerd',
  'docker',
  'containerd',
  'ctr',
  'skopeo',
  'umoci',
]);

let environment: InteropEnvironment;
let server: TestServer;
let workDir: string;
let sandbox: ClientSandbox;
/** The Docker CLI logged in as the admin account. */
let admin: DockerCli;

before(async () => {
  if (skipReason) return;
  environment = await startInteropEnvironment({
    name: 'docker',
    user: { username: USER, password: USER_PASSWORD },
    docker: true,
  });
  ({ server, workDir, sandbox } = environment);
  admin = newDockerCli('admin');
  await admin.loginOrFail(server.host, ADMIN_USER, ADMIN_PASSWORD);
});

after(async () => {
  await environment?.stop();
});

/** Returns a Docker CLI with its own configuration directory, which has no login yet. */
function newDockerCli(name: string): DockerCli {
  return new DockerCli(environment.dockerd!, sandbox, path.join(workDir, 'docker-config', name));
}

function testDir(name: string): string {
  const dir = path.join(workDir, name);
  mkdirSync(dir, { recursive: true });
  return dir;
}

function remote(repositoryAndTag: string): string {
  return `${server.host}/${repositoryAndTag}`;
}

/**
 * Builds a one-layer image for `architecture` (the host's when omitted) in
 * a fresh OCI layout under tag v1 and returns the layout path.
 */
async function buildLayout(name: string, architecture?: string): Promise<string> {
  const dir = testDir(name);
  const layout = path.join(dir, 'layout');
  await buildUmociImage({
    layout,
    tag: 'v1',
    layers: [randomFiles({ 'data/blob.bin': 64 * 1024 })],
    workDir: dir,
    ...(architecture ? { architecture, os: 'linux' } : {}),
  });
  return layout;
}

/**
 * Builds an image, writes it as a docker-archive tagged `reference` and
 * loads it into dockerd. Returns the OCI layout the image came from.
 */
async function loadImage(name: string, reference: string, architecture?: string): Promise<string> {
  const layout = await buildLayout(name, architecture);
  const archive = path.join(workDir, name, 'image.tar');
  await writeDockerArchive(sandbox, layout, 'v1', archive, reference);
  await admin.load(archive, reference);
  return layout;
}

function getManifest(repository: string, reference: string): Promise<ServedManifest> {
  return fetchManifest(server, repository, reference);
}

function getBlob(repository: string, digest: string): Promise<Buffer> {
  return fetchBlob(server, repository, digest);
}

/** Reads the digest that `docker manifest push` prints as its last line. */
function manifestPushDigest(output: string): string {
  const digest = output.trim().split('\n').pop() ?? '';
  assert.match(digest, /^sha256:[0-9a-f]{64}$/, `docker manifest push output:\n${output}`);
  return digest;
}

function skipWithoutClients(t: TestContext): boolean {
  if (!skipReason) return false;
  t.skip(skipReason);
  return true;
}

describe('docker CLI against mcr', () => {
  it('login stores identity token', (t) => {
    if (skipWithoutClients(t)) return;
    // mcr returns a refresh token for the CLI's OAuth2 password grant, and
    // the CLI stores that token in place of the password.
    const config = JSON.parse(readFileSync(path.join(admin.configDir, 'config.json'), 'utf8')) as {
      auths: Record<string, { auth?: string; identitytoken?: string }>;
    };
    const entry = config.auths[server.host];
    assert.ok(entry, `config.json has an auths entry for ${server.host}`);
    assert.match(entry.identitytoken ?? '', /^[\w-]+\.[\w-]+\.[\w-]+$/);
    assert.ok(!JSON.stringify(config).includes(ADMIN_PASSWORD), 'config.json has no password');
  });

  it('pushes and pulls loaded image', async (t) => {
    if (skipWithoutClients(t)) return;
    const loaded = remote('admin/docker-load:v1');
    const reference = remote('admin/docker-push:v1');
    await loadImage('push', loaded);
    await admin.run('tag', loaded, reference);
    const imageId = (await admin.inspectImage(reference)).Id;

    const digest = await admin.push(reference);
    const stored = await getManifest('admin/docker-push', 'v1');
    assert.equal(stored.status, 200);
    assert.equal(stored.digest, digest);
    assert.equal(sha256(stored.body), digest);

    const manifest = JSON.parse(stored.body.toString('utf8')) as ImageManifest;
    assert.equal(manifest.mediaType, DOCKER_MANIFEST);
    assert.equal(manifest.config.digest, imageId);
    const config = JSON.parse(
      (await getBlob('admin/docker-push', manifest.config.digest)).toString('utf8'),
    ) as { rootfs: { diff_ids: string[] } };
    assert.equal(manifest.layers.length, config.rootfs.diff_ids.length);
    for (const [number, layer] of manifest.layers.entries()) {
      const blob = await getBlob('admin/docker-push', layer.digest);
      assert.equal(sha256(blob), layer.digest, `layer ${number} digest`);
      assert.equal(
        sha256(gunzipSync(blob)),
        config.rootfs.diff_ids[number],
        `layer ${number} diff ID`,
      );
    }

    await admin.run('image', 'rm', loaded, reference);
    const pullOutput = await admin.run('pull', reference);
    assert.match(pullOutput, new RegExp(`Digest: ${digest}`));
    const pulled = await admin.inspectImage(reference);
    assert.equal(pulled.Id, imageId);
    assert.ok(
      pulled.RepoDigests.includes(`${server.host}/admin/docker-push@${digest}`),
      `RepoDigests ${pulled.RepoDigests.join(', ')} contain the pushed digest`,
    );
  });

  it('pulls OCI image pushed by skopeo', async (t) => {
    if (skipWithoutClients(t)) return;
    const layout = await buildLayout('oci');
    const expected = taggedDescriptor(layout, 'v1');
    const manifest = readJsonBlob<ImageManifest>(layout, expected.digest);
    const reference = remote('admin/docker-oci:v1');
    await run(
      'skopeo',
      [
        'copy',
        '--dest-tls-verify=false',
        '--dest-creds',
        server.creds,
        `oci:${layout}:v1`,
        `docker://${reference}`,
      ],
      { env: sandbox.env },
    );

    const output = await admin.run('pull', reference);
    assert.match(output, new RegExp(`Digest: ${expected.digest}`));
    const pulled = await admin.inspectImage(reference);
    assert.equal(pulled.Id, manifest.config.digest);
    assert.ok(
      pulled.RepoDigests.includes(`${server.host}/admin/docker-oci@${expected.digest}`),
      `RepoDigests ${pulled.RepoDigests.join(', ')} contain ${expected.digest}`,
    );
  });

  it('pulls one platform of index', async (t) => {
    if (skipWithoutClients(t)) return;
    const dir = testDir('index');
    const layout = path.join(dir, 'layout');
    for (const architecture of ['amd64', 'arm64']) {
      await buildUmociImage({
        layout,
        tag: architecture,
        layers: [randomFiles({ [`${architecture}.bin`]: 32 * 1024 })],
        workDir: dir,
        architecture,
        os: 'linux',
      });
    }
    const arm64 = readJsonBlob<ImageManifest>(layout, taggedDescriptor(layout, 'arm64').digest);
    const index = await writeImageIndex(layout, 'multi', ['amd64', 'arm64']);
    const reference = remote('admin/docker-index:multi');
    await run(
      'skopeo',
      [
        'copy',
        '--all',
        '--dest-tls-verify=false',
        '--dest-creds',
        server.creds,
        `oci:${layout}:multi`,
        `docker://${reference}`,
      ],
      { env: sandbox.env },
    );

    // An explicit platform keeps the expected image the same on any host.
    const output = await admin.run('pull', '--platform', 'linux/arm64', reference);
    assert.match(output, new RegExp(`Digest: ${index.digest}`));
    const pulled = await admin.inspectImage(reference);
    assert.equal(pulled.Id, arm64.config.digest);
    assert.ok(
      pulled.RepoDigests.includes(`${server.host}/admin/docker-index@${index.digest}`),
      `RepoDigests ${pulled.RepoDigests.join(', ')} contain the index digest ${index.digest}`,
    );
  });

  it('inspects pushed manifest', async (t) => {
    if (skipWithoutClients(t)) return;
    const loaded = remote('admin/docker-inspect:v1');
    await loadImage('inspect', loaded);
    const digest = await admin.push(loaded);

    const output = await admin.run('manifest', 'inspect', '--insecure', loaded);
    const stored = await getManifest('admin/docker-inspect', digest);
    assert.equal(stored.status, 200);
    assert.deepEqual(JSON.parse(output), JSON.parse(stored.body.toString('utf8')));
  });

  it('creates and pushes manifest list', async (t) => {
    if (skipWithoutClients(t)) return;
    // The arm64 image lives in another repository, so `docker manifest push`
    // has to mount its blobs and push its manifest into the list's repository.
    const amd64 = remote('admin/docker-list:amd64');
    const arm64 = remote('admin/docker-list-arm64:v1');
    await loadImage('list-amd64', amd64, 'amd64');
    await loadImage('list-arm64', arm64, 'arm64');
    const children = [
      { architecture: 'amd64', digest: await admin.push(amd64) },
      { architecture: 'arm64', digest: await admin.push(arm64) },
    ];
    const arm64ConfigDigest = (await admin.inspectImage(arm64)).Id;

    const list = remote('admin/docker-list:multi');
    await admin.run('manifest', 'create', '--insecure', list, amd64, arm64);
    const digest = manifestPushDigest(await admin.run('manifest', 'push', '--insecure', list));

    const stored = await getManifest('admin/docker-list', 'multi');
    assert.equal(stored.status, 200);
    assert.equal(stored.mediaType, DOCKER_LIST);
    assert.equal(stored.digest, digest);
    assert.equal(sha256(stored.body), digest);
    const index = JSON.parse(stored.body.toString('utf8')) as ImageIndex;
    assert.equal(index.mediaType, DOCKER_LIST);
    assert.deepEqual(
      index.manifests.map((child) => ({
        architecture: child.platform?.architecture,
        digest: child.digest,
      })),
      children,
    );
    for (const child of index.manifests) {
      assert.equal(child.mediaType, DOCKER_MANIFEST, `media type of child ${child.digest}`);
      const served = await getManifest('admin/docker-list', child.digest);
      assert.equal(served.status, 200, `child ${child.digest} in the list's repository`);
      assert.equal(served.mediaType, DOCKER_MANIFEST);
      assert.equal(served.body.length, child.size, `size of child ${child.digest}`);
    }

    // mcr logs each cross-repository mount: the arm64 config and layers came that way.
    const arm64Manifest = JSON.parse(
      (await getManifest('admin/docker-list', children[1]!.digest)).body.toString('utf8'),
    ) as ImageManifest;
    const mounted = server.logs
      .filter(
        (entry) =>
          entry.msg === 'blob mounted' &&
          entry.repository === 'admin/docker-list' &&
          entry.from === 'admin/docker-list-arm64',
      )
      .map((entry) => entry.digest);
    assert.deepEqual(
      mounted.sort(),
      [arm64Manifest.config.digest, ...arm64Manifest.layers.map((layer) => layer.digest)].sort(),
    );

    // skopeo reads the same bytes back.
    const raw = await run(
      'skopeo',
      ['inspect', '--raw', '--tls-verify=false', '--creds', server.creds, `docker://${list}`],
      { env: sandbox.env },
    );
    assert.equal(raw, stored.body.toString('utf8'));

    const inspected = await admin.run('manifest', 'inspect', '--insecure', list);
    assert.deepEqual(JSON.parse(inspected), index);

    // dockerd resolves the arm64 image through the list.
    await admin.run('image', 'rm', arm64);
    const output = await admin.run('pull', '--platform', 'linux/arm64', list);
    assert.match(output, new RegExp(`Digest: ${digest}`));
    assert.equal((await admin.inspectImage(list)).Id, arm64ConfigDigest);
  });

  it('denies manifest list push outside user namespace', async (t) => {
    if (skipWithoutClients(t)) return;
    const amd64 = remote('admin/docker-list-denied:amd64');
    await loadImage('list-denied', amd64, 'amd64');
    await admin.push(amd64);

    const user = newDockerCli('user-manifest');
    await user.loginOrFail(server.host, USER, USER_PASSWORD);
    const list = remote('admin/docker-list-denied:multi');
    // Reading the child needs only pull, which the default policy grants.
    await user.run('manifest', 'create', '--insecure', list, amd64);
    const stderr = await user.failure('manifest', 'push', '--insecure', list);
    assert.match(stderr, /denied: dockeruser may not push admin\/docker-list-denied/);
    assert.equal((await getManifest('admin/docker-list-denied', 'multi')).status, 404);

    // The same list goes through under the account's own name.
    const own = remote(`${USER}/docker-list:multi`);
    await user.run('manifest', 'create', '--insecure', own, amd64);
    const digest = manifestPushDigest(await user.run('manifest', 'push', '--insecure', own));
    const stored = await getManifest(`${USER}/docker-list`, 'multi');
    assert.equal(stored.status, 200);
    assert.equal(stored.digest, digest);
  });

  it('rejects wrong password', async (t) => {
    if (skipWithoutClients(t)) return;
    const result = await newDockerCli('wrong-password').login(
      server.host,
      ADMIN_USER,
      'wrong-password',
    );
    assert.notEqual(result.status, 0, `docker login with a wrong password: ${result.stdout}`);
    assert.match(result.stderr, /unauthorized/);
  });

  it('denies push outside user namespace', async (t) => {
    if (skipWithoutClients(t)) return;
    const user = newDockerCli('user');
    await user.loginOrFail(server.host, USER, USER_PASSWORD);
    const loaded = remote('admin/docker-policy:v1');
    await loadImage('policy', loaded);

    const stderr = await user.failure('push', loaded);
    assert.match(stderr, /denied/);
    assert.equal((await getManifest('admin/docker-policy', 'v1')).status, 404);

    // The same account may push the same image under its own name.
    const own = remote(`${USER}/docker-policy:v1`);
    await user.run('tag', loaded, own);
    const digest = await user.push(own);
    const stored = await getManifest(`${USER}/docker-policy`, 'v1');
    assert.equal(stored.status, 200);
    assert.equal(stored.digest, digest);
  });

  it('fails pull of missing tag', async (t) => {
    if (skipWithoutClients(t)) return;
    const stderr = await admin.failure('pull', remote('admin/docker-push:missing'));
    assert.match(stderr, /manifest unknown|not found/);
  });
});
