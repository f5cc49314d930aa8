// Logs in, pushes and pulls with the Docker CLI through a private dockerd
// (on its own containerd) against a real mcr process, checking digests
// against what mcr stores. Images come from OCI layouts that umoci builds
// and skopeo writes as docker-archive files for `docker load`, so dockerd
// only ever talks to the loopback server.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';
import { gunzipSync } from 'node:zlib';

import { findExecutable, startContainerd, startDockerd, type Daemon } from './helpers/daemons.js';
import {
  buildUmociImage,
  createClientSandbox,
  randomFiles,
  readJsonBlob,
  run,
  taggedDescriptor,
  writeImageIndex,
  type ClientSandbox,
  type ImageManifest,
} from './helpers/images.js';
import { DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, sha256 } from './helpers/oci.js';
import { ADMIN_PASSWORD, ADMIN_USER, startServer, type TestServer } from './helpers/server.js';

const MANIFEST_ACCEPT = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST].join(', ');
const USER = 'dockeruser';
const USER_PASSWORD = 'dockeruser-password';
const COMMAND_TIMEOUT_MS = 60_000;

const missing = ['dockerd', 'docker', 'containerd', 'ctr', 'skopeo', 'umoci'].filter(
  (name) => !findExecutable(name),
);
const skipReason =
  missing.length > 0
    ? `not found on PATH: ${missing.join(', ')}; install with scripts/install-test-deps.sh`
    : undefined;

let server: TestServer;
let containerd: Daemon;
let dockerd: Daemon;
let workDir: string;
let sandbox: ClientSandbox;
/** DOCKER_CONFIG directory of the CLI logged in as the admin account. */
let adminConfig: string;

before(async () => {
  if (skipReason) return;
  workDir = mkdtempSync(path.join(tmpdir(), 'mcr-docker-'));
  sandbox = createClientSandbox(path.join(workDir, 'clients'));
  server = await startServer();
  containerd = await startContainerd(path.join(workDir, 'containerd'));
  dockerd = await startDockerd(path.join(workDir, 'dockerd'), containerd.socket, [server.host]);

  const response = await server.fetch('/v1/accounts', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username: USER, password: USER_PASSWORD, role: 'user', kind: 'human' }),
  });
  assert.equal(response.status, 201, `create account ${USER}: ${await response.text()}`);

  adminConfig = newDockerConfig('admin');
  await login(adminConfig, ADMIN_USER, ADMIN_PASSWORD);
});

after(async () => {
  await dockerd?.stop();
  await containerd?.stop();
  await server?.cleanup();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

interface CommandResult {
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs the Docker CLI against the private dockerd with `configDir` as
 * DOCKER_CONFIG. Resolves with the exit status and output, never rejects
 * on a non-zero status, and kills the CLI after 60 s.
 */
function dockerCommand(configDir: string, args: string[], input?: string): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn('docker', args, {
      env: {
        PATH: process.env.PATH ?? '',
        HOME: sandbox.env.HOME,
        DOCKER_HOST: `unix://${dockerd.socket}`,
        DOCKER_CONFIG: configDir,
        // `docker manifest` is experimental in Docker CLI 20.10.
        DOCKER_CLI_EXPERIMENTAL: 'enabled',
      },
      stdio: ['pipe', 'pipe', 'pipe'],
      timeout: COMMAND_TIMEOUT_MS,
      killSignal: 'SIGKILL',
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.once('error', reject);
    child.once('close', (status) => resolve({ status, stdout, stderr }));
    child.stdin.end(input ?? '');
  });
}

/** Runs the Docker CLI and returns its standard output; fails the test on a non-zero status. */
async function docker(configDir: string, ...args: string[]): Promise<string> {
  const result = await dockerCommand(configDir, args);
  assert.equal(
    result.status,
    0,
    `docker ${args.join(' ')} failed with exit status ${result.status}: ${result.stderr.trim()}`,
  );
  return result.stdout;
}

/** Runs the Docker CLI and returns its standard error; fails the test when the command succeeds. */
async function dockerFailure(configDir: string, ...args: string[]): Promise<string> {
  const result = await dockerCommand(configDir, args);
  assert.notEqual(
    result.status,
    0,
    `docker ${args.join(' ')} succeeded, but it was expected to fail: ${result.stdout.trim()}`,
  );
  return result.stderr;
}

function login(configDir: string, username: string, password: string): Promise<CommandResult> {
  return dockerCommand(
    configDir,
    ['login', '--username', username, '--password-stdin', server.host],
    password,
  ).then((result) => {
    assert.equal(result.status, 0, `docker login as ${username}: ${result.stderr.trim()}`);
    return result;
  });
}

function newDockerConfig(name: string): string {
  const dir = path.join(workDir, 'docker-config', name);
  mkdirSync(dir, { recursive: true });
  return dir;
}

function testDir(name: string): string {
  const dir = path.join(workDir, name);
  mkdirSync(dir, { recursive: true });
  return dir;
}

function remote(repositoryAndTag: string): string {
  return `${server.host}/${repositoryAndTag}`;
}

/** Builds a one-layer image in a fresh OCI layout under tag v1 and returns the layout path. */
async function buildLayout(name: string): Promise<string> {
  const dir = testDir(name);
  const layout = path.join(dir, 'layout');
  await buildUmociImage({
    layout,
    tag: 'v1',
    layers: [randomFiles({ 'data/blob.bin': 64 * 1024 })],
    workDir: dir,
  });
  return layout;
}

/** Builds an image, writes it as a docker-archive tagged `reference` and loads it into dockerd. */
async function loadImage(name: string, reference: string): Promise<void> {
  const layout = await buildLayout(name);
  const archive = path.join(workDir, name, 'image.tar');
  await run('skopeo', ['copy', `oci:${layout}:v1`, `docker-archive:${archive}:${reference}`], {
    env: sandbox.env,
  });
  const output = await docker(adminConfig, 'load', '--input', archive);
  assert.match(output, new RegExp(`Loaded image: ${escapeRegExp(reference)}`));
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

/** Reads the manifest digest from the "TAG: digest: sha256:... size: N" line of `docker push`. */
function pushedDigest(output: string): string {
  const match = /: digest: (sha256:[0-9a-f]{64}) size: \d+/.exec(output);
  assert.ok(match?.[1], `docker push output has a digest line:\n${output}`);
  return match[1];
}

async function inspectImage(reference: string): Promise<{ Id: string; RepoDigests: string[] }> {
  const output = await docker(adminConfig, 'image', 'inspect', reference);
  const [image] = JSON.parse(output) as Array<{ Id: string; RepoDigests: string[] }>;
  assert.ok(image, `docker image inspect ${reference} returns one image`);
  return image;
}

function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
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
    const config = JSON.parse(readFileSync(path.join(adminConfig, 'config.json'), 'utf8')) as {
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
    await docker(adminConfig, 'tag', loaded, reference);
    const imageId = (await inspectImage(reference)).Id;

    const digest = pushedDigest(await docker(adminConfig, 'push', reference));
    const stored = await fetchManifest('admin/docker-push', 'v1');
    assert.equal(stored.status, 200);
    assert.equal(stored.digest, digest);
    assert.equal(sha256(stored.body), digest);

    const manifest = JSON.parse(stored.body.toString('utf8')) as ImageManifest;
    assert.equal(manifest.mediaType, DOCKER_MANIFEST);
    assert.equal(manifest.config.digest, imageId);
    const config = JSON.parse(
      (await fetchBlob('admin/docker-push', manifest.config.digest)).toString('utf8'),
    ) as { rootfs: { diff_ids: string[] } };
    assert.equal(manifest.layers.length, config.rootfs.diff_ids.length);
    for (const [number, layer] of manifest.layers.entries()) {
      const blob = await fetchBlob('admin/docker-push', layer.digest);
      assert.equal(sha256(blob), layer.digest, `layer ${number} digest`);
      assert.equal(
        sha256(gunzipSync(blob)),
        config.rootfs.diff_ids[number],
        `layer ${number} diff ID`,
      );
    }

    await docker(adminConfig, 'image', 'rm', loaded, reference);
    const pullOutput = await docker(adminConfig, 'pull', reference);
    assert.match(pullOutput, new RegExp(`Digest: ${digest}`));
    const pulled = await inspectImage(reference);
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

    const output = await docker(adminConfig, 'pull', reference);
    assert.match(output, new RegExp(`Digest: ${expected.digest}`));
    const pulled = await inspectImage(reference);
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
    const output = await docker(adminConfig, 'pull', '--platform', 'linux/arm64', reference);
    assert.match(output, new RegExp(`Digest: ${index.digest}`));
    const pulled = await inspectImage(reference);
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
    const digest = pushedDigest(await docker(adminConfig, 'push', loaded));

    const output = await docker(adminConfig, 'manifest', 'inspect', '--insecure', loaded);
    const stored = await fetchManifest('admin/docker-inspect', digest);
    assert.equal(stored.status, 200);
    assert.deepEqual(JSON.parse(output), JSON.parse(stored.body.toString('utf8')));
  });

  it('rejects wrong password', async (t) => {
    if (skipWithoutClients(t)) return;
    const configDir = newDockerConfig('wrong-password');
    const result = await dockerCommand(
      configDir,
      ['login', '--username', ADMIN_USER, '--password-stdin', server.host],
      'wrong-password',
    );
    assert.notEqual(result.status, 0, `docker login with a wrong password: ${result.stdout}`);
    assert.match(result.stderr, /unauthorized/);
  });

  it('denies push outside user namespace', async (t) => {
    if (skipWithoutClients(t)) return;
    const configDir = newDockerConfig('user');
    await login(configDir, USER, USER_PASSWORD);
    const loaded = remote('admin/docker-policy:v1');
    await loadImage('policy', loaded);

    const stderr = await dockerFailure(configDir, 'push', loaded);
    assert.match(stderr, /denied/);
    assert.equal((await fetchManifest('admin/docker-policy', 'v1')).status, 404);

    // The same account may push the same image under its own name.
    const own = remote(`${USER}/docker-policy:v1`);
    await docker(configDir, 'tag', loaded, own);
    const digest = pushedDigest(await docker(configDir, 'push', own));
    const stored = await fetchManifest(`${USER}/docker-policy`, 'v1');
    assert.equal(stored.status, 200);
    assert.equal(stored.digest, digest);
  });

  it('fails pull of missing tag', async (t) => {
    if (skipWithoutClients(t)) return;
    const stderr = await dockerFailure(adminConfig, 'pull', remote('admin/docker-push:missing'));
    assert.match(stderr, /manifest unknown|not found/);
  });
});
