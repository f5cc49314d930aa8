// Pushes, pulls and fetches images between a real mcr process and a
// private containerd with ctr, checking digests and bytes against what mcr
// stores. Images come from OCI layouts that umoci builds and skopeo turns
// into oci-archive files, so ctr only ever talks to the loopback server.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, it, type TestContext } from 'node:test';

import { findExecutable, startContainerd, type Daemon } from './helpers/daemons.js';
import {
  buildUmociImage,
  createClientSandbox,
  randomFiles,
  readJsonBlob,
  readLayoutBlob,
  run,
  taggedDescriptor,
  writeImageIndex,
  type ClientSandbox,
  type ImageIndex,
  type ImageManifest,
} from './helpers/images.js';
import { DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST } from './helpers/oci.js';
import { ADMIN_PASSWORD, ADMIN_USER, startServer, type TestServer } from './helpers/server.js';

const execFileAsync = promisify(execFile);
const MANIFEST_ACCEPT = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST].join(', ');
const USER = 'ctruser';
const USER_PASSWORD = 'ctruser-password';

const missing = ['containerd', 'ctr', 'skopeo', 'umoci'].filter((name) => !findExecutable(name));
const skipReason =
  missing.length > 0
    ? `not found on PATH: ${missing.join(', ')}; install with scripts/install-test-deps.sh`
    : undefined;

let server: TestServer;
let containerd: Daemon;
let workDir: string;
let sandbox: ClientSandbox;
let namespaceCount = 0;

before(async () => {
  if (skipReason) return;
  workDir = mkdtempSync(path.join(tmpdir(), 'mcr-ctr-'));
  sandbox = createClientSandbox(path.join(workDir, 'clients'));
  server = await startServer();
  containerd = await startContainerd(path.join(workDir, 'containerd'));

  const response = await server.fetch('/v1/accounts', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username: USER, password: USER_PASSWORD, role: 'user', kind: 'human' }),
  });
  assert.equal(response.status, 201, `create account ${USER}: ${await response.text()}`);
});

after(async () => {
  await containerd?.stop();
  await server?.cleanup();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

/** Runs ctr against the private containerd in `namespace`. */
function ctr(namespace: string, ...args: string[]): Promise<string> {
  return run('ctr', ['--address', containerd.socket, '--namespace', namespace, ...args], {
    env: { PATH: process.env.PATH ?? '', HOME: sandbox.env.HOME },
  });
}

/** Returns a containerd namespace no other test uses, so each test starts with an empty store. */
function freshNamespace(): string {
  namespaceCount += 1;
  return `mcr-test-${namespaceCount}`;
}

function remote(repositoryAndTag: string): string {
  return `${server.host}/${repositoryAndTag}`;
}

function testDir(name: string): string {
  const dir = path.join(workDir, name);
  mkdirSync(dir, { recursive: true });
  return dir;
}

/**
 * Builds a one-layer image in a fresh layout, writes it as an oci-archive
 * named `reference` and imports it into `namespace`. Returns the layout.
 */
async function importImage(name: string, reference: string, namespace: string): Promise<string> {
  const dir = testDir(name);
  const layout = path.join(dir, 'layout');
  await buildUmociImage({
    layout,
    tag: 'v1',
    layers: [randomFiles({ 'data/blob.bin': 64 * 1024 })],
    workDir: dir,
  });
  const archive = path.join(dir, 'image.tar');
  await run('skopeo', ['copy', `oci:${layout}:v1`, `oci-archive:${archive}:${reference}`], {
    env: sandbox.env,
  });
  await ctr(namespace, 'images', 'import', '--snapshotter', 'native', archive);
  return layout;
}

async function fetchManifest(
  repository: string,
  reference: string,
): Promise<{ status: number; digest: string | null; body: Buffer }> {
  const response = await server.fetch(`/v2/${repository}/manifests/${reference}`, {
    headers: { Accept: MANIFEST_ACCEPT },
  });
  return {
    status: response.status,
    digest: response.headers.get('docker-content-digest'),
    body: Buffer.from(await response.arrayBuffer()),
  };
}

async function fetchBlob(repository: string, digest: string): Promise<Buffer> {
  const response = await server.fetch(`/v2/${repository}/blobs/${digest}`);
  assert.equal(response.status, 200, `GET blob ${digest} from ${repository}`);
  return Buffer.from(await response.arrayBuffer());
}

/** Reads the target digest of `reference` from `ctr images ls`. */
async function imageDigest(namespace: string, reference: string): Promise<string> {
  const output = await ctr(namespace, 'images', 'ls');
  const line = output.split('\n').find((row) => row.split(/\s+/)[0] === reference);
  assert.ok(line, `ctr images ls in ${namespace} lists ${reference}:\n${output}`);
  const digest = line.split(/\s+/)[2] ?? '';
  assert.match(digest, /^sha256:[0-9a-f]{64}$/, `digest column of: ${line}`);
  return digest;
}

/** Reads one blob from the containerd content store of `namespace`. */
async function contentGet(namespace: string, digest: string): Promise<Buffer> {
  const { stdout } = await execFileAsync(
    'ctr',
    ['--address', containerd.socket, '--namespace', namespace, 'content', 'get', digest],
    { encoding: 'buffer', maxBuffer: 64 * 1024 * 1024, timeout: 60_000 },
  );
  return stdout;
}

/** Runs ctr and returns the error message with its standard error. Fails the test when ctr succeeds. */
async function ctrFailure(namespace: string, ...args: string[]): Promise<string> {
  try {
    await ctr(namespace, ...args);
  } catch (error) {
    return (error as Error).message;
  }
  assert.fail(`ctr ${args.join(' ')} succeeded, but it was expected to fail`);
}

function skipWithoutClients(t: TestContext): boolean {
  if (!skipReason) return false;
  t.skip(skipReason);
  return true;
}

describe('containerd ctr against mcr', () => {
  it('pushes and pulls one image', async (t) => {
    if (skipWithoutClients(t)) return;
    const reference = remote('admin/ctr-single:v1');
    const pushNamespace = freshNamespace();
    const layout = await importImage('single', reference, pushNamespace);
    const expected = taggedDescriptor(layout, 'v1');
    const manifest = readJsonBlob<ImageManifest>(layout, expected.digest);

    await ctr(
      pushNamespace,
      'images',
      'push',
      '--plain-http',
      '--user',
      `${ADMIN_USER}:${ADMIN_PASSWORD}`,
      reference,
    );

    const stored = await fetchManifest('admin/ctr-single', 'v1');
    assert.equal(stored.status, 200);
    assert.equal(stored.digest, expected.digest);
    assert.deepEqual(stored.body, readLayoutBlob(layout, expected.digest));
    for (const blob of [manifest.config, ...manifest.layers]) {
      assert.deepEqual(
        await fetchBlob('admin/ctr-single', blob.digest),
        readLayoutBlob(layout, blob.digest),
        `blob ${blob.digest} in mcr`,
      );
    }

    const pullNamespace = freshNamespace();
    await ctr(
      pullNamespace,
      'images',
      'pull',
      '--plain-http',
      '--snapshotter',
      'native',
      '--user',
      `${ADMIN_USER}:${ADMIN_PASSWORD}`,
      reference,
    );
    assert.equal(await imageDigest(pullNamespace, reference), expected.digest);
    for (const blob of [expected, manifest.config, ...manifest.layers]) {
      assert.deepEqual(
        await contentGet(pullNamespace, blob.digest),
        readLayoutBlob(layout, blob.digest),
        `blob ${blob.digest} in containerd after pull`,
      );
    }
  });

  it('pushes and pulls image index', async (t) => {
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
    const indexDescriptor = await writeImageIndex(layout, 'multi', ['amd64', 'arm64']);
    const index = readJsonBlob<ImageIndex>(layout, indexDescriptor.digest);
    const reference = remote('admin/ctr-index:multi');
    const archive = path.join(dir, 'index.tar');
    await run(
      'skopeo',
      ['copy', '--all', `oci:${layout}:multi`, `oci-archive:${archive}:${reference}`],
      { env: sandbox.env },
    );

    const pushNamespace = freshNamespace();
    await ctr(
      pushNamespace,
      'images',
      'import',
      '--all-platforms',
      '--snapshotter',
      'native',
      archive,
    );
    await ctr(
      pushNamespace,
      'images',
      'push',
      '--plain-http',
      '--user',
      `${ADMIN_USER}:${ADMIN_PASSWORD}`,
      reference,
    );

    const stored = await fetchManifest('admin/ctr-index', 'multi');
    assert.equal(stored.status, 200);
    assert.equal(stored.digest, indexDescriptor.digest);
    for (const child of index.manifests) {
      const childManifest = await fetchManifest('admin/ctr-index', child.digest);
      assert.equal(childManifest.status, 200, `child manifest ${child.digest} in mcr`);
    }

    const pullNamespace = freshNamespace();
    await ctr(
      pullNamespace,
      'images',
      'pull',
      '--plain-http',
      '--all-platforms',
      '--snapshotter',
      'native',
      '--user',
      `${ADMIN_USER}:${ADMIN_PASSWORD}`,
      reference,
    );
    assert.equal(await imageDigest(pullNamespace, reference), indexDescriptor.digest);
    for (const child of index.manifests) {
      const childManifest = readJsonBlob<ImageManifest>(layout, child.digest);
      for (const blob of [child, childManifest.config, ...childManifest.layers]) {
        assert.deepEqual(
          await contentGet(pullNamespace, blob.digest),
          readLayoutBlob(layout, blob.digest),
          `blob ${blob.digest} of ${child.platform?.architecture} in containerd after pull`,
        );
      }
    }
  });

  it('fetches content without unpacking', async (t) => {
    if (skipWithoutClients(t)) return;
    const reference = remote('admin/ctr-fetch:v1');
    const pushNamespace = freshNamespace();
    const layout = await importImage('fetch', reference, pushNamespace);
    const expected = taggedDescriptor(layout, 'v1');
    const manifest = readJsonBlob<ImageManifest>(layout, expected.digest);
    await ctr(
      pushNamespace,
      'images',
      'push',
      '--plain-http',
      '--user',
      `${ADMIN_USER}:${ADMIN_PASSWORD}`,
      reference,
    );

    const fetchNamespace = freshNamespace();
    await ctr(
      fetchNamespace,
      'content',
      'fetch',
      '--plain-http',
      '--user',
      `${ADMIN_USER}:${ADMIN_PASSWORD}`,
      reference,
    );
    for (const blob of [expected, manifest.config, ...manifest.layers]) {
      assert.deepEqual(
        await contentGet(fetchNamespace, blob.digest),
        readLayoutBlob(layout, blob.digest),
        `blob ${blob.digest} in containerd after content fetch`,
      );
    }
  });

  it('rejects wrong password', async (t) => {
    if (skipWithoutClients(t)) return;
    const reference = remote('admin/ctr-badpass:v1');
    const namespace = freshNamespace();
    await importImage('badpass', reference, namespace);

    const pushError = await ctrFailure(
      namespace,
      'images',
      'push',
      '--plain-http',
      '--user',
      `${ADMIN_USER}:wrong-password`,
      reference,
    );
    assert.match(pushError, /401 Unauthorized/);
    assert.equal((await fetchManifest('admin/ctr-badpass', 'v1')).status, 404);

    const pullError = await ctrFailure(
      freshNamespace(),
      'images',
      'pull',
      '--plain-http',
      '--snapshotter',
      'native',
      '--user',
      `${ADMIN_USER}:wrong-password`,
      reference,
    );
    assert.match(pullError, /401 Unauthorized/);
  });

  it('denies push outside user namespace', async (t) => {
    if (skipWithoutClients(t)) return;
    const source = remote('admin/ctr-policy:v1');
    const namespace = freshNamespace();
    const layout = await importImage('policy', source, namespace);
    const expected = taggedDescriptor(layout, 'v1');

    const pushError = await ctrFailure(
      namespace,
      'images',
      'push',
      '--plain-http',
      '--user',
      `${USER}:${USER_PASSWORD}`,
      remote('admin/ctr-policy:v1'),
      source,
    );
    assert.match(pushError, /403 Forbidden/);
    assert.equal((await fetchManifest('admin/ctr-policy', 'v1')).status, 404);

    // The same account may push the same image under its own name.
    await ctr(
      namespace,
      'images',
      'push',
      '--plain-http',
      '--user',
      `${USER}:${USER_PASSWORD}`,
      remote(`${USER}/ctr-policy:v1`),
      source,
    );
    const own = await fetchManifest(`${USER}/ctr-policy`, 'v1');
    assert.equal(own.status, 200);
    assert.equal(own.digest, expected.digest);
  });
});
