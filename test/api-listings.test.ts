import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { descriptor, OCI_INDEX, OCI_MANIFEST, pushBlob, pushImage, sha256 } from './helpers/oci.js';
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

async function tagManifest(name: string, tags: string[]): Promise<void> {
  const image = await pushImage(server, name, tags[0] as string);
  for (const tag of tags.slice(1)) {
    const response = await server.fetch(`/v2/${name}/manifests/${tag}`, {
      method: 'PUT',
      body: image.body,
      headers: { 'Content-Type': OCI_MANIFEST },
    });
    assert.equal(response.status, 201);
  }
}

describe('tags list', () => {
  const tags = ['v1', 'v10', 'v2', 'Latest', 'beta', 'a_b', 'z.9'];
  const sorted = [...tags].sort();
  before(async () => {
    await tagManifest('paged/repo', tags);
  });

  it('lists every tag in lexical order', async () => {
    const response = await server.fetch('/v2/paged/repo/tags/list');
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('link'), null);
    assert.deepEqual(await response.json(), { name: 'paged/repo', tags: sorted });
  });

  it('pages with n and last, with a Link to the next page', async () => {
    const seen: string[] = [];
    let url: string | undefined = '/v2/paged/repo/tags/list?n=3';
    let pages = 0;
    while (url) {
      const response: Response = await server.fetch(url);
      assert.equal(response.status, 200);
      const body = (await response.json()) as { tags: string[] };
      assert.ok(body.tags.length <= 3);
      seen.push(...body.tags);
      pages += 1;
      const link = response.headers.get('link');
      url = link ? /^<([^>]+)>; rel="next"$/.exec(link)?.[1] : undefined;
      if (link) assert.ok(url, `malformed Link header ${link}`);
    }
    assert.equal(pages, 3);
    assert.deepEqual(seen, sorted);
  });

  it('starts after last without n', async () => {
    const response = await server.fetch('/v2/paged/repo/tags/list?last=v1');
    assert.deepEqual(((await response.json()) as { tags: string[] }).tags, ['v10', 'v2', 'z.9']);
  });

  it('gives no Link on the exact last page', async () => {
    const response = await server.fetch(`/v2/paged/repo/tags/list?n=${tags.length}`);
    assert.equal(response.headers.get('link'), null);
    assert.equal(((await response.json()) as { tags: string[] }).tags.length, tags.length);
  });

  it('answers n=0 with an empty list', async () => {
    const response = await server.fetch('/v2/paged/repo/tags/list?n=0');
    assert.deepEqual(((await response.json()) as { tags: string[] }).tags, []);
  });

  it('rejects an invalid n', async () => {
    const response = await server.fetch('/v2/paged/repo/tags/list?n=-1');
    assert.equal(response.status, 400);
    assert.equal(await errorCode(response), 'UNSUPPORTED');
  });

  it('answers NAME_UNKNOWN for an unknown repository', async () => {
    const response = await server.fetch('/v2/never/pushed/tags/list');
    assert.equal(response.status, 404);
    assert.equal(await errorCode(response), 'NAME_UNKNOWN');
  });
});

describe('catalog', () => {
  const names = ['cat/a', 'cat/b', 'cat/c', 'cat/d', 'cat/e'];
  before(async () => {
    for (const name of names) await pushBlob(server, name, `blob of ${name}`);
  });

  it('lists repositories with content in lexical order and pages with Link', async () => {
    const all = (await (await server.fetch('/v2/_catalog?n=1000')).json()) as {
      repositories: string[];
    };
    for (const name of names) assert.ok(all.repositories.includes(name), name);
    assert.deepEqual(all.repositories, [...all.repositories].sort());

    const first = await server.fetch('/v2/_catalog?n=2&last=cat/a');
    assert.deepEqual(await first.json(), { repositories: ['cat/b', 'cat/c'] });
    assert.equal(first.headers.get('link'), '</v2/_catalog?n=2&last=cat%2Fc>; rel="next"');
    const second = await server.fetch('/v2/_catalog?n=2&last=cat%2Fc');
    assert.deepEqual(((await second.json()) as { repositories: string[] }).repositories, [
      'cat/d',
      'cat/e',
    ]);
  });

  it('omits a repository whose only upload was cancelled', async () => {
    const start = await server.fetch('/v2/cat/cancelled/blobs/uploads/', { method: 'POST' });
    await server.fetch(`${start.headers.get('location')}`, { method: 'DELETE' });
    const all = (await (await server.fetch('/v2/_catalog?n=1000')).json()) as {
      repositories: string[];
    };
    assert.ok(!all.repositories.includes('cat/cancelled'));
  });
});

describe('referrers', () => {
  let subject: { digest: string; body: Buffer };
  let sbom: string;
  let signature: string;
  let indexReferrer: string;
  before(async () => {
    subject = await pushImage(server, 'refs/app', 'v1');
    const subjectDescriptor = descriptor(OCI_MANIFEST, subject.body);

    const sbomPush = await pushImage(server, 'refs/app', sha256('sbom-manifest-x'), {
      subject: subjectDescriptor,
      artifactType: 'application/spdx+json',
    }).catch(() => undefined);
    assert.equal(sbomPush, undefined, 'a digest reference that is not the body digest must fail');

    const sbomImage = await pushImage(server, 'refs/app', 'sbom', {
      subject: subjectDescriptor,
      artifactType: 'application/spdx+json',
    });
    sbom = sbomImage.digest;
    const sigImage = await pushImage(server, 'refs/app', 'sig', {
      subject: subjectDescriptor,
      configMediaType: 'application/vnd.dev.cosign.simplesigning.v1+json',
    });
    signature = sigImage.digest;

    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_INDEX,
        artifactType: 'application/vnd.example.bundle',
        manifests: [descriptor(OCI_MANIFEST, sbomImage.body)],
        subject: subjectDescriptor,
        annotations: { 'org.example.note': 'bundle' },
      }),
    );
    const response = await server.fetch('/v2/refs/app/manifests/bundle', {
      method: 'PUT',
      body: index,
      headers: { 'Content-Type': OCI_INDEX },
    });
    assert.equal(response.status, 201);
    assert.equal(response.headers.get('oci-subject'), subject.digest);
    indexReferrer = sha256(index);
  });

  it('returns OCI-Subject on push of a manifest with a subject', async () => {
    const image = await pushImage(server, 'refs/other', 'base');
    const config = await pushBlob(server, 'refs/other', '{}');
    assert.ok(config);
    const body = JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      artifactType: 'application/example',
      config: descriptor('application/vnd.oci.empty.v1+json', '{}'),
      layers: [],
      subject: descriptor(OCI_MANIFEST, image.body),
    });
    const response = await server.fetch(`/v2/refs/other/manifests/${sha256(body)}`, {
      method: 'PUT',
      body,
      headers: { 'Content-Type': OCI_MANIFEST },
    });
    assert.equal(response.status, 201);
    assert.equal(response.headers.get('oci-subject'), image.digest);
  });

  it('lists every referrer as an image index', async () => {
    const response = await server.fetch(`/v2/refs/app/referrers/${subject.digest}`);
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('content-type'), OCI_INDEX);
    assert.equal(response.headers.get('oci-filters-applied'), null);
    const index = (await response.json()) as {
      schemaVersion: number;
      mediaType: string;
      manifests: Array<{
        digest: string;
        artifactType?: string;
        mediaType: string;
        size: number;
        annotations?: Record<string, string>;
      }>;
    };
    assert.equal(index.schemaVersion, 2);
    assert.equal(index.mediaType, OCI_INDEX);
    const byDigest = new Map(index.manifests.map((entry) => [entry.digest, entry]));
    assert.equal(byDigest.size, 3);
    assert.equal(byDigest.get(sbom)?.artifactType, 'application/spdx+json');
    assert.equal(byDigest.get(sbom)?.mediaType, OCI_MANIFEST);
    // Without artifactType, an image manifest's config media type is used instead.
    assert.equal(
      byDigest.get(signature)?.artifactType,
      'application/vnd.dev.cosign.simplesigning.v1+json',
    );
    assert.equal(byDigest.get(indexReferrer)?.mediaType, OCI_INDEX);
    assert.equal(byDigest.get(indexReferrer)?.artifactType, 'application/vnd.example.bundle');
    assert.deepEqual(byDigest.get(indexReferrer)?.annotations, { 'org.example.note': 'bundle' });
    const sbomManifest = await server.fetch(`/v2/refs/app/manifests/${sbom}`);
    assert.equal(byDigest.get(sbom)?.size, Number(sbomManifest.headers.get('content-length')));
  });

  it('filters by artifactType and says so in OCI-Filters-Applied', async () => {
    const response = await server.fetch(
      `/v2/refs/app/referrers/${subject.digest}?artifactType=application/spdx%2Bjson`,
    );
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('oci-filters-applied'), 'artifactType');
    const index = (await response.json()) as { manifests: Array<{ digest: string }> };
    assert.deepEqual(
      index.manifests.map((entry) => entry.digest),
      [sbom],
    );
  });

  it('returns an empty index for a digest nothing refers to', async () => {
    const response = await server.fetch(`/v2/refs/app/referrers/${sha256('lonely')}`);
    assert.equal(response.status, 200);
    assert.deepEqual(((await response.json()) as { manifests: unknown[] }).manifests, []);
    const unknownRepo = await server.fetch(`/v2/refs/none/referrers/${sha256('lonely')}`);
    assert.equal(unknownRepo.status, 200);
  });

  it('rejects a malformed digest with 400', async () => {
    const response = await server.fetch('/v2/refs/app/referrers/sha256:abc');
    assert.equal(response.status, 400);
    assert.equal(await errorCode(response), 'DIGEST_INVALID');
  });

  it('drops a referrer once it is deleted', async () => {
    await server.fetch(`/v2/refs/app/manifests/${signature}`, { method: 'DELETE' });
    const response = await server.fetch(`/v2/refs/app/referrers/${subject.digest}`);
    const index = (await response.json()) as { manifests: Array<{ digest: string }> };
    assert.ok(!index.manifests.some((entry) => entry.digest === signature));
    assert.equal(index.manifests.length, 2);
  });
});
