// Pushes, pulls and attaches OCI artifacts with npm registry-client
// libraries against a real mcr process with authentication on:
// oci-registry-client pushes and pulls an artifact with an artifactType,
// @sigstore/oci attaches a signature-like referrer to an image, and the
// Snyk client pulls. Each library also meets a wrong password and a
// policy denial.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { attachArtifactToImage, getImageDigest, OCIError } from '@sigstore/oci';

import {
  ociRegistryClient,
  pullWithOciRegistryClient,
  pullWithSnyk,
  pushWithOciRegistryClient,
  type Credentials,
} from './helpers/npm-clients.js';
import {
  OCI_EMPTY,
  OCI_INDEX,
  OCI_MANIFEST,
  descriptor,
  fetchManifest,
  pushImage,
  sha256,
} from './helpers/oci.js';
import {
  ADMIN_PASSWORD,
  ADMIN_USER,
  createAccount,
  startServer,
  type TestServer,
} from './helpers/server.js';
import type { Descriptor, ImageIndex } from './helpers/images.js';

const USER = 'npmuser';
const ADMIN: Credentials = { username: ADMIN_USER, password: ADMIN_PASSWORD };
const USER_CREDENTIALS: Credentials = { username: USER, password: 'npmuser-password' };
const WRONG_PASSWORD: Credentials = { username: ADMIN_USER, password: 'wrong-password' };
const SBOM_TYPE = 'application/vnd.example.sbom.v1+json';
const BUNDLE_TYPE = 'application/vnd.dev.sigstore.bundle.v0.3+json';
/** A repository that a policy rule closes to USER, for pulls too. */
const PRIVATE_REPOSITORY = 'admin/npm-private';

let server: TestServer;

before(async () => {
  server = await startServer();
  await createAccount(server, USER, USER_CREDENTIALS.password);
  const rule = await server.fetch('/v1/policies', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({
      priority: 10,
      effect: 'deny',
      description: `${USER} may not pull ${PRIVATE_REPOSITORY}`,
      subjects: [`account:${USER}`],
      actions: ['pull'],
      repositories: [PRIVATE_REPOSITORY],
    }),
  });
  assert.equal(rule.status, 201, `create policy rule: ${await rule.text()}`);
});

after(async () => {
  await server?.cleanup();
});

/** Builds an OCI artifact manifest with an empty config, one layer and an optional subject. */
function artifact(
  artifactType: string,
  layer: Buffer,
  subject?: Descriptor,
): { blobs: Buffer[]; manifest: Buffer } {
  const config = Buffer.from('{}');
  const manifest: Record<string, unknown> = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    artifactType,
    config: descriptor(OCI_EMPTY, config),
    layers: [descriptor('application/json', layer)],
  };
  if (subject) manifest.subject = subject;
  return { blobs: [config, layer], manifest: Buffer.from(JSON.stringify(manifest)) };
}

async function blobStatus(repository: string, digest: string): Promise<number> {
  const response = await server.fetch(`/v2/${repository}/blobs/${digest}`, { method: 'HEAD' });
  return response.status;
}

async function referrers(
  repository: string,
  digest: string,
  artifactType?: string,
): Promise<{
  status: number;
  filters: string | null;
  mediaType: string | null;
  index: ImageIndex;
}> {
  const query = artifactType ? `?artifactType=${encodeURIComponent(artifactType)}` : '';
  const response = await server.fetch(`/v2/${repository}/referrers/${digest}${query}`);
  return {
    status: response.status,
    filters: response.headers.get('oci-filters-applied'),
    mediaType: response.headers.get('content-type'),
    index: (await response.json()) as ImageIndex,
  };
}

/** Returns the error that `promise` rejects with; fails the test when it resolves. */
async function rejection(promise: Promise<unknown>): Promise<Error & Record<string, unknown>> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof Error, `rejects with an Error: ${String(error)}`);
    return error as Error & Record<string, unknown>;
  }
  assert.fail('the call succeeded, but it was expected to fail');
}

describe('oci-registry-client against mcr', () => {
  it('pushes and pulls artifact', async () => {
    const repository = 'admin/npm-artifact';
    const layer = Buffer.from(JSON.stringify({ sbom: 'components', nonce: Math.random() }));
    const { blobs, manifest } = artifact(SBOM_TYPE, layer);
    const client = ociRegistryClient(server.host, repository, ADMIN);

    const digest = await pushWithOciRegistryClient(client, blobs, manifest, OCI_MANIFEST, 'sbom');
    assert.equal(digest, sha256(manifest));
    const stored = await fetchManifest(server, repository, 'sbom');
    assert.equal(stored.status, 200);
    assert.equal(stored.mediaType, OCI_MANIFEST);
    assert.deepEqual(stored.body, manifest);

    const pulled = await pullWithOciRegistryClient(
      ociRegistryClient(server.host, repository, ADMIN),
      'sbom',
    );
    assert.equal(pulled.digest, sha256(manifest));
    assert.equal(pulled.mediaType, OCI_MANIFEST);
    assert.equal(pulled.manifest.artifactType, SBOM_TYPE);
    assert.deepEqual(pulled.blobs.get(sha256(layer)), layer);
    assert.deepEqual(pulled.blobs.get(sha256(blobs[0]!)), blobs[0]);
    assert.deepEqual((await client.listTags()).tags, ['sbom']);
  });

  it('reports wrong password', async () => {
    const repository = 'admin/npm-wrong-password';
    const layer = Buffer.from(`wrong password ${Math.random()}`);
    const { blobs, manifest } = artifact(SBOM_TYPE, layer);
    const client = ociRegistryClient(server.host, repository, WRONG_PASSWORD);

    const error = await rejection(
      pushWithOciRegistryClient(client, blobs, manifest, OCI_MANIFEST, 'v1'),
    );
    assert.match(error.message, /invalid username, password or access token/);
    assert.equal(error.statusCode, 401);
    assert.equal(await blobStatus(repository, sha256(layer)), 404);

    const pull = await rejection(
      pullWithOciRegistryClient(ociRegistryClient(server.host, repository, WRONG_PASSWORD), 'v1'),
    );
    assert.equal(pull.statusCode, 401);
  });

  it('reports policy denial', async () => {
    const repository = 'admin/npm-denied';
    const layer = Buffer.from(`denied ${Math.random()}`);
    const { blobs, manifest } = artifact(SBOM_TYPE, layer);
    const client = ociRegistryClient(server.host, repository, USER_CREDENTIALS);

    // The library hides the status of a rejected upload start behind its own message.
    const upload = await rejection(
      pushWithOciRegistryClient(client, blobs, manifest, OCI_MANIFEST, 'v1'),
    );
    assert.equal(upload.message, 'Blob upload rejected.');
    assert.equal(await blobStatus(repository, sha256(layer)), 404);

    const put = await rejection(
      client.putManifest({ manifestData: manifest, ref: 'v1', mediaType: OCI_MANIFEST }),
    );
    assert.equal(put.statusCode, 403);
    assert.match(put.message, new RegExp(`${USER} may not push ${repository}`));
    assert.equal((await fetchManifest(server, repository, 'v1')).status, 404);
  });
});

describe('@sigstore/oci against mcr', () => {
  it('attaches signature referrer', async () => {
    const repository = 'admin/npm-signed';
    const image = await pushImage(server, repository, 'v1');
    const imageName = `${server.host}/${repository}`;
    assert.equal(
      await getImageDigest({ imageName, imageTag: 'v1', credentials: ADMIN }),
      image.digest,
    );

    // Another referrer of another type, which the artifactType filter must leave out.
    const sbom = artifact(SBOM_TYPE, Buffer.from(`sbom ${Math.random()}`), {
      mediaType: OCI_MANIFEST,
      digest: image.digest,
      size: image.body.length,
    });
    await pushWithOciRegistryClient(
      ociRegistryClient(server.host, repository, ADMIN),
      sbom.blobs,
      sbom.manifest,
      OCI_MANIFEST,
      sha256(sbom.manifest),
    );

    const bundle = Buffer.from(JSON.stringify({ mediaType: BUNDLE_TYPE, nonce: Math.random() }));
    const attached = (await attachArtifactToImage({
      imageName,
      imageDigest: image.digest,
      artifact: bundle,
      mediaType: BUNDLE_TYPE,
      annotations: { 'dev.sigstore.bundle.predicateType': 'https://slsa.dev/provenance/v1' },
      credentials: ADMIN,
    })) as Descriptor & { subjectDigest?: string };
    // The library reads subjectDigest from mcr's OCI-Subject response header.
    assert.equal(attached.subjectDigest, image.digest, 'OCI-Subject on the manifest PUT');
    assert.equal(attached.mediaType, OCI_MANIFEST);

    const stored = await fetchManifest(server, repository, attached.digest);
    assert.equal(stored.status, 200);
    assert.equal(sha256(stored.body), attached.digest);
    const manifest = JSON.parse(stored.body.toString('utf8')) as {
      artifactType: string;
      subject: Descriptor;
      layers: Descriptor[];
    };
    assert.equal(manifest.artifactType, BUNDLE_TYPE);
    assert.equal(manifest.subject.digest, image.digest);
    assert.equal(manifest.layers[0]?.digest, sha256(bundle));

    const all = await referrers(repository, image.digest);
    assert.equal(all.status, 200);
    assert.equal(all.mediaType, OCI_INDEX);
    assert.equal(all.filters, null);
    assert.deepEqual(
      all.index.manifests.map((entry) => entry.digest).sort(),
      [attached.digest, sha256(sbom.manifest)].sort(),
    );

    const filtered = await referrers(repository, image.digest, BUNDLE_TYPE);
    assert.equal(filtered.status, 200);
    assert.equal(filtered.filters, 'artifactType');
    assert.equal(filtered.index.manifests.length, 1);
    const [entry] = filtered.index.manifests as Array<Descriptor & { artifactType?: string }>;
    assert.equal(entry?.digest, attached.digest);
    assert.equal(entry?.artifactType, BUNDLE_TYPE);
    assert.equal(entry?.size, stored.body.length);
    assert.equal(
      entry?.annotations?.['dev.sigstore.bundle.predicateType'],
      'https://slsa.dev/provenance/v1',
    );

    // With OCI-Subject returned and the referrers API returning 200, the library
    // must not fall back to the sha256-<hex> tag scheme.
    const tags = (await (await server.fetch(`/v2/${repository}/tags/list`)).json()) as {
      tags: string[];
    };
    assert.deepEqual(tags.tags, ['v1']);
  });

  it('reports wrong password', async () => {
    const repository = 'admin/npm-signed-wrong-password';
    const image = await pushImage(server, repository, 'v1');
    const error = await rejection(
      attachArtifactToImage({
        imageName: `${server.host}/${repository}`,
        imageDigest: image.digest,
        artifact: Buffer.from('signature'),
        mediaType: BUNDLE_TYPE,
        credentials: WRONG_PASSWORD,
      }),
    );
    assert.ok(error instanceof OCIError, `an OCIError: ${error.message}`);
    assert.equal(error.message, 'Error uploading artifact to container registry');
    const cause = error.cause as Error & { statusCode?: number };
    assert.equal(cause.statusCode, 401);
    assert.deepEqual((await referrers(repository, image.digest)).index.manifests, []);
  });

  it('reports policy denial', async () => {
    const repository = 'admin/npm-signed-denied';
    const image = await pushImage(server, repository, 'v1');
    const signature = Buffer.from(`signature ${Math.random()}`);
    const error = await rejection(
      attachArtifactToImage({
        imageName: `${server.host}/${repository}`,
        imageDigest: image.digest,
        artifact: signature,
        mediaType: BUNDLE_TYPE,
        credentials: USER_CREDENTIALS,
      }),
    );
    assert.ok(error instanceof OCIError, `an OCIError: ${error.message}`);
    const cause = error.cause as Error & { statusCode?: number };
    assert.equal(cause.statusCode, 403);
    assert.match(cause.message, /blobs\/uploads\/ - expected 202, received 403$/);
    assert.equal(await blobStatus(repository, sha256(signature)), 404);
    assert.deepEqual((await referrers(repository, image.digest)).index.manifests, []);
  });
});

describe('@snyk/docker-registry-v2-client against mcr', () => {
  it('pulls image', async () => {
    const repository = 'admin/npm-snyk';
    const image = await pushImage(server, repository, 'v1');
    const pulled = await pullWithSnyk(server.host, repository, 'v1', ADMIN);
    assert.equal(pulled.digest, image.digest);
    assert.equal(pulled.mediaType, OCI_MANIFEST);
    assert.equal(pulled.manifest.config.digest, image.configDigest);
    assert.equal(sha256(pulled.blobs.get(image.layerDigest)!), image.layerDigest);
  });

  it('reports wrong password', async () => {
    const repository = 'admin/npm-snyk-wrong-password';
    await pushImage(server, repository, 'v1');
    const error = await rejection(pullWithSnyk(server.host, repository, 'v1', WRONG_PASSWORD));
    assert.equal(error.statusCode, 401);
  });

  it('reports policy denial', async () => {
    await pushImage(server, PRIVATE_REPOSITORY, 'v1');
    const error = await rejection(
      pullWithSnyk(server.host, PRIVATE_REPOSITORY, 'v1', USER_CREDENTIALS),
    );
    assert.equal(error.statusCode, 403);
  });
});
