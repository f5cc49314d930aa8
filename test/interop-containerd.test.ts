// Pushes, pulls and fetches images between a real mcr process and a
// private containerd with ctr, checking digests and bytes against what mcr
// stores. Images come from OCI layouts that umoci builds and skopeo turns
// into oci-archive files, so ctr only ever talks to the loopback server.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it, type TestContext } from 'node:test';

import { Ctr, writeOciArchive } from './helpers/ctr.js';
import { missingExecutables } from './helpers/daemons.js';
import {
  buildUmociImage,
  randomFiles,
  readJsonBlob,
  readLayoutBlob,
  taggedDescriptor,
  writeImageIndex,
  type ClientSandbox,
  type ImageIndex,
  type ImageManifest,
} from './helpers/images.js';
import {
  OCI_EMPTY,
  OCI_INDEX,
  OCI_MANIFEST,
  descriptor,
  fetchBlob,
  fetchManifest,
  sha256,
  type ServedManifest,
} from './helpers/oci.js';
import { startInteropEnvironment, type InteropEnvironment } from './helpers/interop.js';
import { ADMIN_PASSWORD, ADMIN_USER, type TestServer } from './helpers/server.js';

const USER = 'ctruser';
const USER_PASSWORD = 'ctruser-password';
const SBOM_TYPE = 'application/vnd.example.sbom.v1+json';
const SIGNATURE_TYPE = 'application/vnd.example.signature.v1+json';
const ADMIN_CREDENTIALS = `${ADMIN_USER}:${ADMIN_PASSWORD}`;

const skipReason = missingExecutables(['containerd', 'ctr', 'skopeo', 'umoci']);

let environment: InteropEnvironment;
let server: TestServer;
let workDir: string;
let sandbox: ClientSandbox;
let ctr: Ctr;

before(async () => {
  if (skipReason) return;
  environment = await startInteropEnvironment({
    name: 'ctr',
    user: { username: USER, password: USER_PASSWORD },
    containerd: true,
  });
  ({ server, workDir, sandbox } = environment);
  ctr = new Ctr(environment.containerd!, sandbox);
});

after(async () => {
  await environment?.stop();
});

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
  await writeOciArchive(sandbox, layout, 'v1', archive, reference);
  await ctr.importArchive(namespace, archive);
  return layout;
}

function getManifest(repository: string, reference: string): Promise<ServedManifest> {
  return fetchManifest(server, repository, reference);
}

/** Builds an OCI artifact manifest: an empty config, one layer and a subject. */
function artifactManifest(
  artifactType: string,
  config: Buffer,
  layer: Buffer,
  subject: { mediaType: string; digest: string; size: number },
): Buffer {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      artifactType,
      config: descriptor(OCI_EMPTY, config),
      layers: [descriptor('application/json', layer)],
      subject,
    }),
  );
}

/** `ctr content push-object` arguments that push `digest` from the content store as `mediaType`. */
function pushObjectArgs(
  credentials: string,
  target: string,
  digest: string,
  mediaType: string,
): string[] {
  return [
    'content',
    'push-object',
    '--plain-http',
    '--user',
    credentials,
    target,
    digest,
    mediaType,
  ];
}

/**
 * Reads the OCI-Subject header of the response to the manifest PUT from the
 * output of `ctr content push-object --http-dump`, which logs each request
 * line and each response header on a line of its own.
 */
function dumpedSubject(stderr: string, manifestDigest: string): string | undefined {
  const put = stderr.indexOf(`PUT /v2/`);
  assert.notEqual(put, -1, 'the HTTP dump shows a PUT request');
  const response = stderr.slice(put);
  assert.match(response, new RegExp(`manifests/${manifestDigest} HTTP/1.1`));
  assert.match(response, /HTTP\/1.1 201 Created/);
  return /Oci-Subject: (\S+?)"/i.exec(response)?.[1];
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
    const pushNamespace = ctr.freshNamespace();
    const layout = await importImage('single', reference, pushNamespace);
    const expected = taggedDescriptor(layout, 'v1');
    const manifest = readJsonBlob<ImageManifest>(layout, expected.digest);

    await ctr.push(pushNamespace, ADMIN_CREDENTIALS, reference);

    const stored = await getManifest('admin/ctr-single', 'v1');
    assert.equal(stored.status, 200);
    assert.equal(stored.digest, expected.digest);
    assert.deepEqual(stored.body, readLayoutBlob(layout, expected.digest));
    for (const blob of [manifest.config, ...manifest.layers]) {
      assert.deepEqual(
        await fetchBlob(server, 'admin/ctr-single', blob.digest),
        readLayoutBlob(layout, blob.digest),
        `blob ${blob.digest} in mcr`,
      );
    }

    const pullNamespace = ctr.freshNamespace();
    await ctr.pull(pullNamespace, ADMIN_CREDENTIALS, reference);
    assert.equal(await ctr.imageDigest(pullNamespace, reference), expected.digest);
    for (const blob of [expected, manifest.config, ...manifest.layers]) {
      assert.deepEqual(
        await ctr.contentGet(pullNamespace, blob.digest),
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
    await writeOciArchive(sandbox, layout, 'multi', archive, reference, true);

    const pushNamespace = ctr.freshNamespace();
    await ctr.importArchive(pushNamespace, archive, '--all-platforms');
    await ctr.push(pushNamespace, ADMIN_CREDENTIALS, reference);

    const stored = await getManifest('admin/ctr-index', 'multi');
    assert.equal(stored.status, 200);
    assert.equal(stored.digest, indexDescriptor.digest);
    for (const child of index.manifests) {
      const childManifest = await getManifest('admin/ctr-index', child.digest);
      assert.equal(childManifest.status, 200, `child manifest ${child.digest} in mcr`);
    }

    const pullNamespace = ctr.freshNamespace();
    await ctr.pull(pullNamespace, ADMIN_CREDENTIALS, reference, '--all-platforms');
    assert.equal(await ctr.imageDigest(pullNamespace, reference), indexDescriptor.digest);
    for (const child of index.manifests) {
      const childManifest = readJsonBlob<ImageManifest>(layout, child.digest);
      for (const blob of [child, childManifest.config, ...childManifest.layers]) {
        assert.deepEqual(
          await ctr.contentGet(pullNamespace, blob.digest),
          readLayoutBlob(layout, blob.digest),
          `blob ${blob.digest} of ${child.platform?.architecture} in containerd after pull`,
        );
      }
    }
  });

  it('fetches content without unpacking', async (t) => {
    if (skipWithoutClients(t)) return;
    const reference = remote('admin/ctr-fetch:v1');
    const pushNamespace = ctr.freshNamespace();
    const layout = await importImage('fetch', reference, pushNamespace);
    const expected = taggedDescriptor(layout, 'v1');
    const manifest = readJsonBlob<ImageManifest>(layout, expected.digest);
    await ctr.push(pushNamespace, ADMIN_CREDENTIALS, reference);

    const fetchNamespace = ctr.freshNamespace();
    await ctr.run(
      fetchNamespace,
      'content',
      'fetch',
      '--plain-http',
      '--user',
      ADMIN_CREDENTIALS,
      reference,
    );
    for (const blob of [expected, manifest.config, ...manifest.layers]) {
      assert.deepEqual(
        await ctr.contentGet(fetchNamespace, blob.digest),
        readLayoutBlob(layout, blob.digest),
        `blob ${blob.digest} in containerd after content fetch`,
      );
    }
  });

  it('rejects wrong password', async (t) => {
    if (skipWithoutClients(t)) return;
    const reference = remote('admin/ctr-badpass:v1');
    const namespace = ctr.freshNamespace();
    await importImage('badpass', reference, namespace);

    const pushError = await ctr.failure(
      namespace,
      'images',
      'push',
      '--plain-http',
      '--user',
      `${ADMIN_USER}:wrong-password`,
      reference,
    );
    assert.match(pushError, /401 Unauthorized/);
    assert.equal((await getManifest('admin/ctr-badpass', 'v1')).status, 404);

    const pullError = await ctr.failure(
      ctr.freshNamespace(),
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
    const namespace = ctr.freshNamespace();
    const layout = await importImage('policy', source, namespace);
    const expected = taggedDescriptor(layout, 'v1');

    const pushError = await ctr.failure(
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
    assert.equal((await getManifest('admin/ctr-policy', 'v1')).status, 404);

    // The same account may push the same image under its own name.
    await ctr.push(namespace, `${USER}:${USER_PASSWORD}`, remote(`${USER}/ctr-policy:v1`), source);
    const own = await getManifest(`${USER}/ctr-policy`, 'v1');
    assert.equal(own.status, 200);
    assert.equal(own.digest, expected.digest);
  });

  it('pushes artifact with push-object', async (t) => {
    if (skipWithoutClients(t)) return;
    const repository = 'admin/ctr-artifact';
    const namespace = ctr.freshNamespace();
    const layout = await importImage('artifact', remote(`${repository}:v1`), namespace);
    await ctr.push(namespace, ADMIN_CREDENTIALS, remote(`${repository}:v1`));
    const image = taggedDescriptor(layout, 'v1');
    const subject = { mediaType: image.mediaType, digest: image.digest, size: image.size };

    const config = Buffer.from('{}');
    const sbom = Buffer.from(JSON.stringify({ sbom: 'components', nonce: Math.random() }));
    const sbomManifest = artifactManifest(SBOM_TYPE, config, sbom, subject);
    const sbomDigest = sha256(sbomManifest);
    for (const data of [config, sbom, sbomManifest]) {
      await ctr.contentIngest(namespace, sha256(data), data);
    }

    // Blobs first, then the manifest by digest, as the specification orders it.
    await ctr.run(
      namespace,
      ...pushObjectArgs(ADMIN_CREDENTIALS, remote(repository), sha256(config), OCI_EMPTY),
    );
    await ctr.run(
      namespace,
      ...pushObjectArgs(ADMIN_CREDENTIALS, remote(repository), sha256(sbom), 'application/json'),
    );
    const pushed = await ctr.command(namespace, [
      ...pushObjectArgs(
        ADMIN_CREDENTIALS,
        remote(`${repository}@${sbomDigest}`),
        sbomDigest,
        OCI_MANIFEST,
      ),
      '--http-dump',
    ]);
    assert.equal(pushed.status, 0, `ctr content push-object of the manifest: ${pushed.stdout}`);
    assert.match(pushed.stdout, new RegExp(`Pushed ${sbomDigest}`));
    // NOTE: in one full test run, ctr 1.6's dump ended after the 201 status
    // line, before the Oci-Subject header. So the dump is checked when it has
    // the header, and a PUT of the same bytes with fetch checks it every time.
    const dumped = dumpedSubject(pushed.stderr, sbomDigest);
    if (dumped !== undefined) assert.equal(dumped, image.digest, 'OCI-Subject in the ctr dump');
    const again = await server.fetch(`/v2/${repository}/manifests/${sbomDigest}`, {
      method: 'PUT',
      body: sbomManifest,
      headers: { 'Content-Type': OCI_MANIFEST },
    });
    assert.equal(again.status, 201);
    assert.equal(again.headers.get('oci-subject'), image.digest, 'OCI-Subject on the PUT');

    const stored = await getManifest(repository, sbomDigest);
    assert.equal(stored.status, 200);
    assert.equal(stored.mediaType, OCI_MANIFEST);
    assert.equal(stored.digest, sbomDigest);
    assert.deepEqual(stored.body, sbomManifest);
    assert.deepEqual(await fetchBlob(server, repository, sha256(sbom)), sbom);

    // ctr reads both back by digest into an empty namespace.
    const fetchNamespace = ctr.freshNamespace();
    const fetchObject = (digest: string) =>
      ctr.run(
        fetchNamespace,
        'content',
        'fetch-object',
        '--plain-http',
        '--user',
        ADMIN_CREDENTIALS,
        remote(`${repository}@${digest}`),
      );
    assert.equal(await fetchObject(sbomDigest), sbomManifest.toString('utf8'));
    assert.equal(await fetchObject(sha256(sbom)), sbom.toString('utf8'));

    // A second referrer of another type shares the config blob that is now
    // in the repository. ctr 1.6 reports an existing blob as an error.
    const signature = Buffer.from(JSON.stringify({ signature: 'bytes', nonce: Math.random() }));
    const signatureManifest = artifactManifest(SIGNATURE_TYPE, config, signature, subject);
    const signatureDigest = sha256(signatureManifest);
    for (const data of [signature, signatureManifest]) {
      await ctr.contentIngest(namespace, sha256(data), data);
    }
    const existing = await ctr.failure(
      namespace,
      ...pushObjectArgs(ADMIN_CREDENTIALS, remote(repository), sha256(config), OCI_EMPTY),
    );
    assert.match(existing, new RegExp(`content ${sha256(config)} on remote: already exists`));
    await ctr.run(
      namespace,
      ...pushObjectArgs(
        ADMIN_CREDENTIALS,
        remote(repository),
        sha256(signature),
        'application/json',
      ),
    );
    await ctr.run(
      namespace,
      ...pushObjectArgs(
        ADMIN_CREDENTIALS,
        remote(`${repository}@${signatureDigest}`),
        signatureDigest,
        OCI_MANIFEST,
      ),
    );

    const referrer = (artifactType: string, manifest: Buffer) => ({
      mediaType: OCI_MANIFEST,
      digest: sha256(manifest),
      size: manifest.length,
      artifactType,
    });
    const all = await server.fetch(`/v2/${repository}/referrers/${image.digest}`);
    assert.equal(all.status, 200);
    assert.equal(all.headers.get('content-type'), OCI_INDEX);
    assert.equal(all.headers.get('oci-filters-applied'), null);
    const allIndex = (await all.json()) as ImageIndex;
    assert.deepEqual(
      [...allIndex.manifests].sort((a, b) => a.digest.localeCompare(b.digest)),
      [referrer(SBOM_TYPE, sbomManifest), referrer(SIGNATURE_TYPE, signatureManifest)].sort(
        (a, b) => a.digest.localeCompare(b.digest),
      ),
    );

    const filtered = await server.fetch(
      `/v2/${repository}/referrers/${image.digest}?artifactType=${encodeURIComponent(SBOM_TYPE)}`,
    );
    assert.equal(filtered.status, 200);
    assert.equal(filtered.headers.get('oci-filters-applied'), 'artifactType');
    assert.deepEqual(((await filtered.json()) as ImageIndex).manifests, [
      referrer(SBOM_TYPE, sbomManifest),
    ]);

    const none = await server.fetch(
      `/v2/${repository}/referrers/${image.digest}?artifactType=${encodeURIComponent('application/vnd.example.none')}`,
    );
    assert.equal(none.status, 200);
    assert.equal(none.headers.get('oci-filters-applied'), 'artifactType');
    assert.deepEqual(((await none.json()) as ImageIndex).manifests, []);
  });

  it('rejects push-object without rights', async (t) => {
    if (skipWithoutClients(t)) return;
    const repository = 'admin/ctr-artifact-denied';
    const namespace = ctr.freshNamespace();
    const layer = Buffer.from(JSON.stringify({ denied: Math.random() }));
    const config = Buffer.from('{}');
    const manifest = artifactManifest(SBOM_TYPE, config, layer, {
      mediaType: OCI_MANIFEST,
      digest: sha256('no such subject'),
      size: 15,
    });
    for (const data of [config, layer, manifest]) {
      await ctr.contentIngest(namespace, sha256(data), data);
    }

    const wrongPassword = await ctr.failure(
      namespace,
      ...pushObjectArgs(
        `${ADMIN_USER}:wrong-password`,
        remote(repository),
        sha256(layer),
        'application/json',
      ),
    );
    assert.match(wrongPassword, /401 Unauthorized/);

    const credentials = `${USER}:${USER_PASSWORD}`;
    const deniedBlob = await ctr.failure(
      namespace,
      ...pushObjectArgs(credentials, remote(repository), sha256(layer), 'application/json'),
    );
    assert.match(deniedBlob, /403 Forbidden/);
    const deniedManifest = await ctr.failure(
      namespace,
      ...pushObjectArgs(
        credentials,
        remote(`${repository}@${sha256(manifest)}`),
        sha256(manifest),
        OCI_MANIFEST,
      ),
    );
    assert.match(deniedManifest, /403 Forbidden/);

    const blob = await server.fetch(`/v2/${repository}/blobs/${sha256(layer)}`, { method: 'HEAD' });
    assert.equal(blob.status, 404, 'the layer is not stored');
    assert.equal((await getManifest(repository, sha256(manifest))).status, 404);
  });
});
