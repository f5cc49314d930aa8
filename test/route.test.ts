import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import { parseV2Path } from '../src/http/v2/route.js';
import { parseDigest } from '../src/registry/digest.js';
import { validateRepositoryName } from '../src/registry/names.js';

const D = `sha256:${'a'.repeat(64)}`;

describe('parseV2Path', () => {
  const cases: Array<[string, unknown]> = [
    ['/v2/', { kind: 'base' }],
    ['/v2', { kind: 'base' }],
    ['/v2/_catalog', { kind: 'catalog' }],
    ['/v2/a/tags/list', { kind: 'tags', name: 'a' }],
    ['/v2/a/b/c/manifests/latest', { kind: 'manifest', name: 'a/b/c', reference: 'latest' }],
    [
      '/v2/a/manifests/b/manifests/latest',
      { kind: 'manifest', name: 'a/manifests/b', reference: 'latest' },
    ],
    ['/v2/a/blobs/uploads/', { kind: 'upload', name: 'a', id: undefined }],
    ['/v2/a/blobs/uploads/1234', { kind: 'upload', name: 'a', id: '1234' }],
    [`/v2/a/blobs/${D}`, { kind: 'blob', name: 'a', digest: D }],
    [`/v2/a/blobs/x/blobs/${D}`, { kind: 'blob', name: 'a/blobs/x', digest: D }],
    [`/v2/a/referrers/${D}`, { kind: 'referrers', name: 'a', digest: D }],
    [`/v2/a/manifests/${D.replace(':', '%3A')}`, { kind: 'manifest', name: 'a', reference: D }],
    ['/v2/a/tags/list/extra', undefined],
    ['/v2/a', undefined],
    ['/v1/a/tags/list', undefined],
    ['/v2/a/manifests/%E0%A4%A', undefined],
  ];
  for (const [path, expected] of cases) {
    it(`parses ${path}`, () => assert.deepEqual(parseV2Path(path), expected));
  }
});

describe('validateRepositoryName', () => {
  const valid = ['a', 'library/ubuntu', 'a.b_c__d-e--f/g', 'x/'.repeat(100) + 'y', 'a'.repeat(255)];
  const invalid = [
    '',
    'A',
    'a/',
    '/a',
    'a//b',
    '..',
    'a/../b',
    'a_',
    '-a',
    'a___b',
    'a'.repeat(256),
  ];
  for (const name of valid) {
    it(`accepts ${name.slice(0, 40)}`, () => validateRepositoryName(name));
  }
  for (const name of invalid) {
    it(`rejects "${name.slice(0, 40)}"`, () =>
      assert.throws(() => validateRepositoryName(name), { code: 'NAME_INVALID' }));
  }
});

describe('parseDigest', () => {
  it('accepts sha256 and sha512', () => {
    assert.equal(parseDigest(D).algorithm, 'sha256');
    assert.equal(parseDigest(`sha512:${'0'.repeat(128)}`).algorithm, 'sha512');
  });
  const invalid = [
    'a'.repeat(64),
    `md5:${'a'.repeat(32)}`,
    `sha256:${'a'.repeat(63)}`,
    `sha256:${'A'.repeat(64)}`,
    `sha256:${'g'.repeat(64)}`,
    `sha512:${'a'.repeat(64)}`,
    'sha256:../../etc/passwd',
    `sha256:${'a'.repeat(64)}/x`,
  ];
  for (const digest of invalid) {
    it(`rejects ${digest.slice(0, 30)}`, () =>
      assert.throws(() => parseDigest(digest), { code: 'DIGEST_INVALID' }));
  }
});
