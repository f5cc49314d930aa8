import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import Database from 'better-sqlite3';

import { openTestDatabase } from './helpers/database.js';
import {
  descriptor,
  DOCKER_MANIFEST,
  OCI_CONFIG,
  OCI_INDEX,
  OCI_LAYER,
  OCI_MANIFEST,
  pushBlob,
  sha256,
} from './helpers/oci.js';
import { testPostgresUrl } from './helpers/postgres.js';
import {
  ADMIN_PASSWORD,
  ADMIN_USER,
  basicAuth,
  startServer,
  type TestServer,
} from './helpers/server.js';

// Every case sends bad input over HTTP to a real mcr process. It then checks
// that the request stored nothing: every table keeps its row count, and the
// files under blobs/, under uploads/ and next to the data directory stay the same.

/** The tables of the metadata schema, all compared before and after each bad request. */
const TABLES = [
  'repositories',
  'blobs',
  'repository_blobs',
  'manifests',
  'manifest_references',
  'tags',
  'uploads',
] as const;

type Table = (typeof TABLES)[number];

/** The repository that contains the valid content the bad requests are aimed at. */
const REPO = 'base/app';

const CONFIG = JSON.stringify({
  architecture: 'amd64',
  os: 'linux',
  rootfs: { type: 'layers', diff_ids: [] },
});
const LAYER = 'layer bytes of base/app';

/** The Authorization header value every request in this file sends. */
const ADMIN_AUTHORIZATION = basicAuth(ADMIN_USER, ADMIN_PASSWORD);

/**
 * Largest manifest mcr accepts, in bytes. The OCI Distribution Specification v1.1
 * recommends that registries accept manifests of at least 4 megabytes.
 */
const MANIFEST_LIMIT = 4 * 1024 * 1024;

let root: string;
let server: TestServer;
/** The contents of files outside the data directory that path traversal would reach. */
const sentinels = new Map<string, string>();

before(async () => {
  // The data directory is a subdirectory, so that "../" out of it lands in a
  // directory this test owns and can watch.
  root = mkdtempSync(path.join(tmpdir(), 'mcr-bad-input-'));
  const dataDir = path.join(root, 'data');
  mkdirSync(dataDir);
  for (const name of ['secret', 'mcr.db']) {
    const file = path.join(root, name);
    const content = `sentinel ${name} ${randomUUID()}\n`;
    writeFileSync(file, content);
    sentinels.set(file, content);
  }

  server = await startServer({ dataDir });
  await pushBlob(server, REPO, CONFIG);
  await pushBlob(server, REPO, LAYER);
  const manifest = imageManifest([descriptor(OCI_LAYER, LAYER)]);
  const response = await send('PUT', `/v2/${REPO}/manifests/v1`, {
    body: manifest,
    headers: { 'Content-Type': OCI_MANIFEST },
  });
  assert.equal(response.status, 201, response.body.toString());
});

after(async () => {
  await server?.cleanup();
  if (root) rmSync(root, { recursive: true, force: true });
});

interface HttpResult {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/**
 * Sends one request as the admin account, on a new connection unless `agent`
 * is given. The path goes out exactly as given: unlike fetch, node:http neither resolves "." and
 * ".." segments nor re-encodes characters.
 */
function send(
  method: string,
  requestPath: string,
  options: { body?: Buffer | string; headers?: Record<string, string>; agent?: http.Agent } = {},
): Promise<HttpResult> {
  const body = options.body === undefined ? undefined : Buffer.from(options.body);
  const headers: Record<string, string> = {
    Authorization: ADMIN_AUTHORIZATION,
    ...options.headers,
  };
  if (body !== undefined && headers['Transfer-Encoding'] === undefined) {
    headers['Content-Length'] = String(body.length);
  }
  return new Promise((resolve, reject) => {
    let responded = false;
    const request = http.request(
      {
        host: '127.0.0.1',
        port: server.port,
        method,
        path: requestPath,
        headers,
        agent: options.agent ?? false,
      },
      (response) => {
        responded = true;
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () =>
          resolve({
            status: response.statusCode ?? 0,
            headers: response.headers,
            body: Buffer.concat(chunks),
          }),
        );
        response.on('error', reject);
      },
    );
    // A server may respond early and close the connection while the body is
    // still being written (413 on a declared length). That response is the result.
    request.on('error', (error) => {
      if (!responded) reject(error);
    });
    request.end(body);
  });
}

function errorCode(result: HttpResult): string | undefined {
  const parsed = JSON.parse(result.body.toString('utf8')) as {
    errors?: Array<{ code?: string }>;
  };
  return parsed.errors?.[0]?.code;
}

/** Asserts the status and, for responses with a body, the error code. */
function assertError(result: HttpResult, status: number, code: string | undefined, label: string) {
  assert.equal(result.status, status, `${label}: status (body ${result.body.toString()})`);
  if (code !== undefined) assert.equal(errorCode(result), code, `${label}: error code`);
}

function imageManifest(layers: object[], extra: Record<string, unknown> = {}): Buffer {
  return Buffer.from(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: OCI_MANIFEST,
      config: descriptor(OCI_CONFIG, CONFIG),
      layers,
      ...extra,
    }),
  );
}

/** What a request could have stored: row counts and the file lists in and next to the data directory. */
interface StoreSnapshot {
  rows: Record<Table, number>;
  blobFiles: string[];
  uploadFiles: string[];
  outside: string[];
}

function listFiles(directory: string): string[] {
  if (!existsSync(directory)) return [];
  return readdirSync(directory, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => path.relative(directory, path.join(entry.parentPath, entry.name)))
    .sort();
}

async function snapshot(): Promise<StoreSnapshot> {
  const db = await openTestDatabase(server.dataDir);
  const rows = {} as Record<Table, number>;
  try {
    for (const table of TABLES) {
      const result = await db.query(`SELECT count(*) AS n FROM ${table}`);
      rows[table] = Number(result.rows[0]?.n);
    }
  } finally {
    await db.close();
  }
  return {
    rows,
    blobFiles: listFiles(path.join(server.dataDir, 'blobs')),
    uploadFiles: listFiles(path.join(server.dataDir, 'uploads')),
    outside: readdirSync(root).sort(),
  };
}

async function assertNothingStored(before: StoreSnapshot, label: string): Promise<void> {
  const now = await await snapshot();
  assert.deepEqual(now.rows, before.rows, `${label}: row counts changed`);
  assert.deepEqual(now.blobFiles, before.blobFiles, `${label}: files under blobs/ changed`);
  assert.deepEqual(now.uploadFiles, before.uploadFiles, `${label}: files under uploads/ changed`);
  assert.deepEqual(
    now.outside,
    before.outside,
    `${label}: files next to the data directory changed`,
  );
}

/** Polls the condition until it is true or the timeout passes. Returns its last value. */
async function waitFor(condition: () => Promise<boolean>, timeoutMs = 5_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (await condition()) return true;
    await sleep(50);
  }
  return condition();
}

async function startSession(repository = REPO): Promise<string> {
  const response = await send('POST', `/v2/${repository}/blobs/uploads/`);
  assert.equal(response.status, 202, response.body.toString());
  const location = response.headers.location;
  assert.ok(location, 'upload session has a Location header');
  return location;
}

function uploadFile(location: string): string {
  return path.join(server.dataDir, 'uploads', location.slice(location.lastIndexOf('/') + 1));
}

/** Opens a raw connection, sends the head and part of a body, and hangs up. */
async function sendTruncated(head: string, partialBody: Buffer): Promise<void> {
  const socket = net.connect(server.port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  await new Promise<void>((resolve) => socket.write(head, () => resolve()));
  await new Promise<void>((resolve) => socket.write(partialBody, () => resolve()));
  // Lets the server read the partial body before the connection drops.
  await sleep(200);
  socket.destroy();
}

/** Sends raw bytes on a new connection and returns everything the server sent back. */
async function sendRaw(bytes: string): Promise<string> {
  const socket = net.connect(server.port, '127.0.0.1');
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  await new Promise<void>((resolve) => {
    socket.once('close', () => resolve());
    socket.once('error', () => resolve());
    socket.write(bytes);
  });
  return Buffer.concat(chunks).toString();
}

describe('requests the HTTP parser rejects', () => {
  const cases: Array<[string, string, number, RegExp]> = [
    [
      'headers over 16 KiB',
      `GET /v2/ HTTP/1.1\r\nHost: x\r\nX-Padding: ${'a'.repeat(20_000)}\r\n\r\n`,
      431,
      /larger than the server accepts/,
    ],
    [
      'a malformed Content-Length',
      'POST /v2/a/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1x\r\n\r\n',
      400,
      /malformed HTTP request/,
    ],
  ];
  for (const [name, request, status, message] of cases) {
    it(`answer ${name} in the OCI error format`, async () => {
      const response = await sendRaw(request);
      const [head, body] = response.split('\r\n\r\n');
      assert.match(head ?? '', new RegExp(`^HTTP/1.1 ${status} `));
      const parsed = JSON.parse(body ?? '') as { errors: Array<{ code: string; message: string }> };
      assert.equal(parsed.errors[0]?.code, 'UNSUPPORTED');
      assert.match(parsed.errors[0]?.message ?? '', message);
    });
  }
});

describe('repository names', () => {
  it('rejects upper case', async () => {
    const before = await snapshot();
    for (const name of ['Library/app', 'library/App']) {
      const start = await send('POST', `/v2/${name}/blobs/uploads/`);
      assertError(start, 400, 'NAME_INVALID', `POST uploads to ${name}`);
      const monolithic = await send('POST', `/v2/${name}/blobs/uploads/?digest=${sha256('x')}`, {
        body: 'x',
      });
      assertError(monolithic, 400, 'NAME_INVALID', `monolithic POST to ${name}`);
      const manifest = await send('PUT', `/v2/${name}/manifests/v1`, {
        body: imageManifest([]),
        headers: { 'Content-Type': OCI_MANIFEST },
      });
      assertError(manifest, 400, 'NAME_INVALID', `manifest PUT to ${name}`);
    }
    await assertNothingStored(before, 'upper-case names');
  });

  it('rejects ".." inside a component', async () => {
    const before = await snapshot();
    const response = await send('POST', '/v2/library..app/blobs/uploads/');
    assertError(response, 400, 'NAME_INVALID', 'POST uploads to library..app');
    await assertNothingStored(before, 'library..app');
  });

  // The request names the repository "library/../app" (or its encoded form),
  // which the name grammar forbids. Resolving the dot segments first would
  // act on another repository, "app", instead.
  for (const name of ['library/../app', 'library/%2e%2e/app', 'library/.%2E/app']) {
    it(`rejects "${name}" without touching another repository`, async () => {
      const before = await snapshot();
      const start = await send('POST', `/v2/${name}/blobs/uploads/`);
      assertError(start, 400, 'NAME_INVALID', `POST uploads to ${name}`);
      const manifest = await send('PUT', `/v2/${name}/manifests/v1`, {
        body: imageManifest([]),
        headers: { 'Content-Type': OCI_MANIFEST },
      });
      assertError(manifest, 400, 'NAME_INVALID', `manifest PUT to ${name}`);
      await assertNothingStored(before, name);
    });
  }

  // After the dot segments are resolved these paths name no repository, so
  // a 404 is an acceptable response as long as nothing is stored.
  for (const requestPath of ['/v2/library/../blobs/uploads/', '/v2/../library/blobs/uploads/']) {
    it(`rejects ${requestPath}`, async () => {
      const before = await snapshot();
      const response = await send('POST', requestPath);
      assert.ok(
        response.status >= 400 && response.status < 500,
        `POST ${requestPath}: expected 4xx, got ${response.status}`,
      );
      await assertNothingStored(before, requestPath);
    });
  }

  // "v1/../hijacked" is not a valid tag or digest. Resolving the dot segments
  // would turn it into the tag "hijacked".
  it('rejects dot segments in a manifest reference', async () => {
    const before = await snapshot();
    const body = imageManifest([descriptor(OCI_LAYER, LAYER)]);
    for (const reference of ['v1/../hijacked', `${sha256(body)}/../hijacked`]) {
      const response = await send('PUT', `/v2/${REPO}/manifests/${reference}`, {
        body,
        headers: { 'Content-Type': OCI_MANIFEST },
      });
      assert.ok(
        response.status >= 400 && response.status < 500,
        `PUT manifests/${reference}: expected 4xx, got ${response.status}`,
      );
    }
    await assertNothingStored(before, 'dot segments in a manifest reference');
    const tag = await send('GET', `/v2/${REPO}/manifests/hijacked`);
    assertError(tag, 404, 'MANIFEST_UNKNOWN', 'tag "hijacked"');
  });

  it('rejects a trailing slash', async () => {
    const before = await snapshot();
    const start = await send('POST', '/v2/library/app//blobs/uploads/');
    assertError(start, 400, 'NAME_INVALID', 'POST uploads to "library/app/"');
    const manifest = await send('PUT', '/v2/library/app//manifests/v1', {
      body: imageManifest([]),
      headers: { 'Content-Type': OCI_MANIFEST },
    });
    assertError(manifest, 400, 'NAME_INVALID', 'manifest PUT to "library/app/"');
    const blob = await send('GET', `/v2/${REPO}//blobs/${sha256(LAYER)}`);
    assertError(blob, 400, 'NAME_INVALID', `GET blob from "${REPO}/"`);
    await assertNothingStored(before, 'trailing slash');
  });

  it('rejects 256 characters and accepts 255', async () => {
    const longest = `${'a'.repeat(100)}/${'b'.repeat(154)}`;
    assert.equal(longest.length, 255);
    const tooLong = `${longest}c`;

    const before = await snapshot();
    const data = `blob for a ${tooLong.length}-character name`;
    const rejected = await send('POST', `/v2/${tooLong}/blobs/uploads/?digest=${sha256(data)}`, {
      body: data,
    });
    assertError(rejected, 400, 'NAME_INVALID', 'monolithic POST to a 256-character name');
    const session = await send('POST', `/v2/${tooLong}/blobs/uploads/`);
    assertError(session, 400, 'NAME_INVALID', 'POST uploads to a 256-character name');
    await assertNothingStored(before, '256-character name');

    const accepted = await send('POST', `/v2/${longest}/blobs/uploads/?digest=${sha256(data)}`, {
      body: data,
    });
    assert.equal(accepted.status, 201, accepted.body.toString());
    const blob = await send('GET', `/v2/${longest}/blobs/${sha256(data)}`);
    assert.equal(blob.status, 200);
    assert.equal(blob.body.toString(), data);
  });
});

/** A valid-looking hex part that contains letters, so that upper-casing changes it. */
const HEX = sha256('digest cases').slice('sha256:'.length);

const BAD_DIGESTS: Array<{ label: string; digest: string }> = [
  { label: 'no algorithm', digest: HEX },
  { label: 'empty algorithm', digest: `:${HEX}` },
  { label: 'unknown algorithm md5', digest: `md5:${HEX.slice(0, 32)}` },
  { label: 'unknown algorithm sha1', digest: `sha1:${HEX.slice(0, 40)}` },
  { label: 'hex one short', digest: `sha256:${HEX.slice(1)}` },
  { label: 'hex one long', digest: `sha256:${HEX}0` },
  { label: 'sha512 with 64 hex', digest: `sha512:${HEX}` },
  { label: 'empty hex', digest: 'sha256:' },
  { label: 'upper-case hex', digest: `sha256:${HEX.toUpperCase()}` },
  { label: 'non-hex letters', digest: `sha256:${'g'.repeat(64)}` },
  { label: 'non-hex symbols', digest: `sha256:${HEX.slice(0, 60)}-_=_` },
];

describe('malformed digests', () => {
  it('rejects them in blob GET, HEAD and DELETE', async () => {
    assert.notEqual(HEX.toUpperCase(), HEX, 'the upper-case case differs from valid hex');
    const before = await snapshot();
    for (const { label, digest } of BAD_DIGESTS) {
      const blobPath = `/v2/${REPO}/blobs/${encodeURIComponent(digest)}`;
      assertError(await send('GET', blobPath), 400, 'DIGEST_INVALID', `GET (${label})`);
      // HEAD responses carry no body, so only the status can be checked.
      assertError(await send('HEAD', blobPath), 400, undefined, `HEAD (${label})`);
      assertError(await send('DELETE', blobPath), 400, 'DIGEST_INVALID', `DELETE (${label})`);
    }
    await assertNothingStored(before, 'blob requests with malformed digests');
  });

  it('rejects them in ?digest= of a monolithic POST', async () => {
    const before = await snapshot();
    for (const { label, digest } of BAD_DIGESTS) {
      const response = await send(
        'POST',
        `/v2/${REPO}/blobs/uploads/?digest=${encodeURIComponent(digest)}`,
        {
          body: `monolithic body (${label})`,
          headers: { 'Content-Type': 'application/octet-stream' },
        },
      );
      assertError(response, 400, 'DIGEST_INVALID', `monolithic POST (${label})`);
    }
    await assertNothingStored(before, 'monolithic POSTs with malformed digests');
  });

  it('rejects them in ?digest= of a finalize PUT', async () => {
    const location = await startSession();
    const chunk = Buffer.from('first chunk');
    const patch = await send('PATCH', location, {
      body: chunk,
      headers: { 'Content-Range': `0-${chunk.length - 1}` },
    });
    assert.equal(patch.status, 202);

    const before = await snapshot();
    for (const { label, digest } of BAD_DIGESTS) {
      const withoutBody = await send('PUT', `${location}?digest=${encodeURIComponent(digest)}`);
      assertError(withoutBody, 400, 'DIGEST_INVALID', `finalize PUT (${label})`);
      const withBody = await send('PUT', `${location}?digest=${encodeURIComponent(digest)}`, {
        body: 'last chunk',
        headers: { 'Content-Range': `${chunk.length}-${chunk.length + 9}` },
      });
      assertError(withBody, 400, 'DIGEST_INVALID', `finalize PUT with a last chunk (${label})`);
    }
    const missing = await send('PUT', location);
    assertError(missing, 400, 'DIGEST_INVALID', 'finalize PUT without ?digest=');
    await assertNothingStored(before, 'finalize PUTs with malformed digests');

    const status = await send('GET', location);
    assert.equal(status.status, 204, 'the session survives a malformed digest');
    assert.equal(status.headers.range, `0-${chunk.length - 1}`);
    assert.equal(statSync(uploadFile(location)).size, chunk.length);
    assert.equal((await send('DELETE', location)).status, 204);
  });

  it('rejects them as the reference of a manifest PUT', async () => {
    const before = await snapshot();
    const body = imageManifest([descriptor(OCI_LAYER, LAYER)]);
    // Without a ":" the reference is a tag, so "no algorithm" is left out here.
    for (const { label, digest } of BAD_DIGESTS.filter((c) => c.digest.includes(':'))) {
      const response = await send('PUT', `/v2/${REPO}/manifests/${encodeURIComponent(digest)}`, {
        body,
        headers: { 'Content-Type': OCI_MANIFEST },
      });
      assertError(response, 400, 'DIGEST_INVALID', `manifest PUT (${label})`);
    }
    await assertNothingStored(before, 'manifest PUTs with malformed digests');
  });
});

/** Reports whether reading a file whose access time is older than its modification time updates the access time here. */
function readsUpdateAccessTime(directory: string): boolean {
  const file = path.join(directory, 'atime-probe');
  writeFileSync(file, 'probe');
  utimesSync(file, new Date('2001-01-01T00:00:00Z'), new Date());
  const before = statSync(file).atimeMs;
  readFileSync(file);
  const updated = statSync(file).atimeMs !== before;
  rmSync(file);
  return updated;
}

describe('path traversal', () => {
  // Targets relative to blobs/sha256/<first two hex>/ and to uploads/. With
  // the data directory at ROOT/data, "../../secret" out of uploads/ is
  // ROOT/secret, and "../mcr.db" is the live database.
  const DIGEST_PATHS = [
    'sha256:../../secret',
    'sha256:../mcr.db',
    'sha256%3a..%2f..%2fsecret',
    'sha256%3A%2e%2e%2f%2e%2e%2fsecret',
    'sha256:%2e%2e%2f%2e%2e%2fmcr.db',
    'sha256:..%5c..%5csecret',
    '..%2f..%2fsecret',
  ];
  const DIGEST_QUERIES = [
    'sha256:../../secret',
    'sha256%3a%2e%2e%2f%2e%2e%2fsecret',
    'sha256:..%2fmcr.db',
    `sha256:${HEX.slice(0, 2)}%2f..%2f..%2f..%2fsecret`,
  ];
  const UPLOAD_IDS = [
    '../../mcr.db',
    '..%2f..%2fmcr.db',
    '%2e%2e%2f%2e%2e%2fmcr.db',
    '..%2fmcr.db',
    '%2e%2e%2fmcr.db',
    '..%2f..%2fsecret',
    '%2e%2e%2F%2e%2e%2Fsecret',
    '%252e%252e%252f%252e%252e%252fsecret',
    '..%5c..%5csecret',
    `${randomUUID()}%2f..%2f..%2f..%2fsecret`,
  ];

  it('leaves files outside the store untouched', async (t) => {
    const detectsReads = readsUpdateAccessTime(root);
    t.diagnostic(
      detectsReads
        ? 'reads update access times here, so a read of a sentinel file fails the test'
        : 'reads do not update access times here; reads are checked in responses only',
    );
    const oldTime = new Date('2001-01-01T00:00:00Z');
    const stats = new Map<string, { atimeMs: number; mtimeMs: number }>();
    for (const file of sentinels.keys()) {
      utimesSync(file, oldTime, statSync(file).mtime);
      const info = statSync(file);
      stats.set(file, { atimeMs: info.atimeMs, mtimeMs: info.mtimeMs });
    }
    const dbFile = path.join(server.dataDir, 'mcr.db');
    const before = await snapshot();

    const results: Array<{ request: string; result: HttpResult }> = [];
    const record = async (method: string, requestPath: string, body?: string) => {
      const headers: Record<string, string> = { 'Content-Type': 'application/octet-stream' };
      const result = await send(method, requestPath, body === undefined ? {} : { body, headers });
      results.push({ request: `${method} ${requestPath}`, result });
    };

    const overwrite = `overwritten ${randomUUID()}`;
    for (const digestPath of DIGEST_PATHS) {
      for (const method of ['GET', 'HEAD', 'DELETE']) {
        await record(method, `/v2/${REPO}/blobs/${digestPath}`);
      }
      await record('GET', `/v2/${REPO}/referrers/${digestPath}`);
      // A literal "/../" in a manifest path is covered under repository names.
      if (!digestPath.includes('/../')) {
        await record('PUT', `/v2/${REPO}/manifests/${digestPath}`, imageManifest([]).toString());
      }
    }
    for (const digest of DIGEST_QUERIES) {
      await record('POST', `/v2/${REPO}/blobs/uploads/?digest=${digest}`, overwrite);
      await record('POST', `/v2/${REPO}/blobs/uploads/?mount=${digest}&from=${REPO}`);
    }
    for (const id of UPLOAD_IDS) {
      const uploadPath = `/v2/${REPO}/blobs/uploads/${id}`;
      await record('GET', uploadPath);
      await record('PATCH', uploadPath, overwrite);
      await record('PUT', `${uploadPath}?digest=${sha256(overwrite)}`, overwrite);
      await record('DELETE', uploadPath);
    }

    // Files first: a wrong status matters less than a touched file.
    for (const [file, content] of sentinels) {
      const info = statSync(file);
      const previous = stats.get(file);
      assert.equal(info.mtimeMs, previous?.mtimeMs, `${file} was modified`);
      if (detectsReads) assert.equal(info.atimeMs, previous?.atimeMs, `${file} was read`);
      assert.equal(readFileSync(file, 'utf8'), content, `${file} has other content`);
    }
    if (!testPostgresUrl()) assert.ok(existsSync(dbFile), 'mcr.db still exists');

    const leaks = results
      .filter(({ result }) => {
        const text = result.body.toString('latin1');
        if (text.includes('SQLite format 3')) return true;
        return [...sentinels.values()].some((content) => text.includes(content.trim()));
      })
      .map(({ request }) => request);
    assert.deepEqual(leaks, [], 'responses that contain a file');

    // A mount with a malformed digest may fall back to a new session (202),
    // as the specification allows; such a session is cancelled here.
    for (const { request, result } of results) {
      if (request.includes('?mount=') && result.status === 202 && result.headers.location) {
        assert.equal((await send('DELETE', result.headers.location)).status, 204, request);
      }
    }
    const unexpected = results
      .filter(({ request, result }) => {
        if (request.includes('?mount=') && result.status === 202) return false;
        return result.status < 400 || result.status >= 500;
      })
      .map(({ request, result }) => `${request} -> ${result.status}`);
    assert.deepEqual(unexpected, [], 'requests answered with other than 4xx');
    await assertNothingStored(before, 'path traversal');

    if (!testPostgresUrl()) {
      const db = new Database(dbFile, { readonly: true, fileMustExist: true });
      try {
        assert.equal(db.pragma('integrity_check', { simple: true }), 'ok');
      } finally {
        db.close();
      }
    }
  });
});

describe('NUL characters in URLs', () => {
  it('get 400 in the format of each API', async () => {
    const before = await snapshot();
    for (const target of [
      `/v2/${REPO}/tags/list?last=a%00b`,
      `/v2/${REPO}/tags/list?n=10&last=a%00`,
      '/v2/_catalog?last=a%00',
      `/v2/${REPO}/referrers/${sha256('x')}?artifactType=a%00`,
      `/v2/${REPO}/manifests/a%00b`,
    ]) {
      assertError(await send('GET', target), 400, 'UNSUPPORTED', target);
    }
    for (const target of ['/v1/audit?actor=a%00', '/v1/repositories?cursor=a%00']) {
      const response = await send('GET', target);
      assert.equal(response.status, 400, target);
      assert.deepEqual(JSON.parse(response.body.toString()), {
        error: 'the request URL contains a NUL character (%00)',
      });
    }
    await assertNothingStored(before, 'requests with NUL characters');
  });
});

describe('manifest validation', () => {
  const putManifest = (reference: string, body: Buffer | string, contentType = OCI_MANIFEST) =>
    send('PUT', `/v2/${REPO}/manifests/${reference}`, {
      body,
      headers: { 'Content-Type': contentType },
    });

  it('rejects a body that is not JSON', async () => {
    const before = await snapshot();
    for (const body of ['not json', '{"schemaVersion": 2,', '', '\u0000\u0001binary']) {
      const response = await putManifest('not-json', body);
      assertError(response, 400, 'MANIFEST_INVALID', `body ${JSON.stringify(body)}`);
    }
    const fresh = await send('PUT', '/v2/fresh/not-json/manifests/v1', {
      body: 'not json',
      headers: { 'Content-Type': OCI_MANIFEST },
    });
    assertError(fresh, 400, 'MANIFEST_INVALID', 'not JSON to a new repository');
    await assertNothingStored(before, 'manifests that are not JSON');
  });

  it('rejects a NUL character in artifactType', async () => {
    const before = await snapshot();
    const response = await putManifest(
      'nul-type',
      imageManifest([], { artifactType: 'application/x\u0000y' }),
    );
    assertError(response, 400, 'MANIFEST_INVALID', 'artifactType with NUL');
    assert.match(response.body.toString(), /must not contain a NUL character/);
    await assertNothingStored(before, 'manifest with a NUL in artifactType');
  });

  it('rejects schemaVersion 1', async () => {
    const before = await snapshot();
    const schema1 = JSON.stringify({
      schemaVersion: 1,
      name: REPO,
      tag: 'old',
      architecture: 'amd64',
      fsLayers: [{ blobSum: sha256(LAYER) }],
      history: [{ v1Compatibility: '{}' }],
    });
    const contentTypes = [
      'application/vnd.docker.distribution.manifest.v1+json',
      'application/vnd.docker.distribution.manifest.v1+prettyjws',
      OCI_MANIFEST,
    ];
    for (const contentType of contentTypes) {
      const response = await putManifest('old', schema1, contentType);
      assertError(response, 400, 'MANIFEST_INVALID', `schema 1 as ${contentType}`);
    }
    await assertNothingStored(before, 'schema 1 manifests');
  });

  it('rejects a reference to a missing blob', async () => {
    const before = await snapshot();
    const missingLayer = descriptor(OCI_LAYER, 'never pushed');
    const withMissingLayer = imageManifest([descriptor(OCI_LAYER, LAYER), missingLayer]);
    const byTag = await putManifest('missing-blob', withMissingLayer);
    assertError(byTag, 400, 'MANIFEST_BLOB_UNKNOWN', 'missing layer, by tag');
    const byDigest = await putManifest(sha256(withMissingLayer), withMissingLayer);
    assertError(byDigest, 400, 'MANIFEST_BLOB_UNKNOWN', 'missing layer, by digest');

    const missingConfig = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_MANIFEST,
        config: descriptor(OCI_CONFIG, '{"missing":true}'),
        layers: [descriptor(OCI_LAYER, LAYER)],
      }),
    );
    const config = await putManifest('missing-config', missingConfig);
    assertError(config, 400, 'MANIFEST_BLOB_UNKNOWN', 'missing config');

    // A blob held by another repository does not count.
    const elsewhere = 'only in another repository';
    await pushBlob(server, 'other/repo', elsewhere);
    const afterOtherPush = await snapshot();
    const foreign = await putManifest(
      'foreign-blob',
      imageManifest([descriptor(OCI_LAYER, elsewhere)]),
    );
    assertError(foreign, 400, 'MANIFEST_BLOB_UNKNOWN', 'layer held only by another repository');
    await assertNothingStored(afterOtherPush, 'manifest with a layer of another repository');

    assert.equal((await snapshot()).rows.manifests, before.rows.manifests);
    assert.equal((await snapshot()).rows.tags, before.rows.tags);
  });

  /** Builds a valid image manifest of exactly `size` bytes by padding an annotation. */
  const sizedManifest = (size: number) => {
    const empty = imageManifest([descriptor(OCI_LAYER, LAYER)], {
      annotations: { padding: '' },
    });
    const padded = imageManifest([descriptor(OCI_LAYER, LAYER)], {
      annotations: { padding: 'x'.repeat(size - empty.length) },
    });
    assert.equal(padded.length, size);
    return padded;
  };

  it('accepts 4 MiB and rejects 4 MiB + 1 byte with 413', async (t) => {
    // Keep-alive connections, as registry clients use them. Over a connection
    // the client closes, the 413 can be lost (see the next test).
    const agent = new http.Agent({ keepAlive: true });
    t.after(() => agent.destroy());
    const putOversized = (reference: string, body: Buffer, headers: Record<string, string>) =>
      send('PUT', `/v2/${REPO}/manifests/${reference}`, { body, headers, agent });

    const atLimit = await putManifest('at-limit', sizedManifest(MANIFEST_LIMIT));
    assert.equal(atLimit.status, 201, `4 MiB manifest: ${atLimit.body.toString()}`);

    const before = await snapshot();
    const overLimit = sizedManifest(MANIFEST_LIMIT + 1);
    // The specification recommends 413 and defines no error code for it.
    const declared = await putOversized('over-limit', overLimit, {
      'Content-Type': OCI_MANIFEST,
    });
    assertError(declared, 413, undefined, '4 MiB + 1 with Content-Length');
    assert.ok(errorCode(declared), 'the 413 has an error body');
    const chunked = await putOversized('over-limit', overLimit, {
      'Content-Type': OCI_MANIFEST,
      'Transfer-Encoding': 'chunked',
    });
    assertError(chunked, 413, undefined, '4 MiB + 1 with chunked encoding');
    const byDigest = await putOversized(sha256(overLimit), overLimit, {
      'Content-Type': OCI_MANIFEST,
    });
    assertError(byDigest, 413, undefined, '4 MiB + 1 by digest');
    await assertNothingStored(before, 'oversized manifests');
  });

  // mcr rejects a declared oversized body before reading it. If it then closes
  // the connection while the body is still arriving, the client's TCP stack
  // can receive a reset that discards the 413 before the client reads it
  // (RFC 9112, section 9.6, "Tear-down").
  it('returns 413 over Connection: close', async () => {
    const overLimit = sizedManifest(MANIFEST_LIMIT + 1);
    const before = await snapshot();
    const statusLines = new Map<string, number>();
    const attempts = 50;
    for (let i = 0; i < attempts; i++) {
      const statusLine = await new Promise<string>((resolve) => {
        const socket = net.connect(server.port, '127.0.0.1');
        let received = '';
        let failure = '';
        socket.on('data', (chunk: Buffer) => (received += chunk.toString('latin1')));
        socket.on('error', (error: NodeJS.ErrnoException) => (failure = error.code ?? 'error'));
        socket.on('close', () =>
          resolve(received === '' ? `no response (${failure})` : received.split('\r\n')[0]!),
        );
        socket.write(
          `PUT /v2/${REPO}/manifests/over-limit HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
            `Authorization: ${ADMIN_AUTHORIZATION}\r\n` +
            `Connection: close\r\nContent-Type: ${OCI_MANIFEST}\r\n` +
            `Content-Length: ${overLimit.length}\r\n\r\n`,
        );
        socket.write(overLimit);
      });
      statusLines.set(statusLine, (statusLines.get(statusLine) ?? 0) + 1);
    }
    assert.deepEqual(
      Object.fromEntries(statusLines),
      { 'HTTP/1.1 413 Payload Too Large': attempts },
      'status lines received over Connection: close',
    );
    await assertNothingStored(before, 'oversized manifests over Connection: close');
  });

  it('rejects a mediaType that disagrees with Content-Type', async () => {
    const before = await snapshot();
    const body = imageManifest([descriptor(OCI_LAYER, LAYER)]);
    for (const contentType of [DOCKER_MANIFEST, OCI_INDEX]) {
      const response = await putManifest('mismatch', body, contentType);
      assertError(response, 400, 'MANIFEST_INVALID', `OCI manifest sent as ${contentType}`);
    }
    await assertNothingStored(before, 'media type mismatch');
  });

  it('rejects an index whose child manifest is missing', async () => {
    const child = imageManifest([descriptor(OCI_LAYER, LAYER)]);
    const missingChild = imageManifest([descriptor(OCI_LAYER, LAYER)], {
      annotations: { variant: 'never pushed' },
    });
    const index = Buffer.from(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: OCI_INDEX,
        manifests: [
          { ...descriptor(OCI_MANIFEST, child), platform: { architecture: 'amd64', os: 'linux' } },
          {
            ...descriptor(OCI_MANIFEST, missingChild),
            platform: { architecture: 'arm64', os: 'linux' },
          },
        ],
      }),
    );
    const pushed = await putManifest(sha256(child), child);
    assert.equal(pushed.status, 201);

    const before = await snapshot();
    // A manifest rejected for naming content the registry does not hold must
    // fail with MANIFEST_BLOB_UNKNOWN, whether that content is a blob or a
    // manifest (OCI Distribution Specification v1.1, "Pushing Manifests").
    const byTag = await putManifest('index', index, OCI_INDEX);
    assertError(byTag, 400, 'MANIFEST_BLOB_UNKNOWN', 'index by tag');
    const byDigest = await putManifest(sha256(index), index, OCI_INDEX);
    assertError(byDigest, 400, 'MANIFEST_BLOB_UNKNOWN', 'index by digest');
    await assertNothingStored(before, 'index with a missing child');
  });
});

describe('upload sessions', () => {
  it('cancels an upload whose finalize digest does not match', async () => {
    const location = await startSession();
    const data = randomBytes(1000);
    const patch = await send('PATCH', location, {
      body: data,
      headers: { 'Content-Range': `0-${data.length - 1}` },
    });
    assert.equal(patch.status, 202);
    assert.ok(existsSync(uploadFile(location)));

    const before = await snapshot();
    const wrong = sha256(Buffer.concat([data, Buffer.from('!')]));
    const response = await send('PUT', `${location}?digest=${wrong}`);
    assertError(response, 400, 'DIGEST_INVALID', 'finalize with the wrong digest');

    const now = await snapshot();
    assert.equal(now.rows.blobs, before.rows.blobs, 'no blob row');
    assert.equal(now.rows.repository_blobs, before.rows.repository_blobs, 'no blob link');
    assert.equal(now.rows.uploads, before.rows.uploads - 1, 'the upload row is removed');
    assert.deepEqual(now.blobFiles, before.blobFiles, 'no file under blobs/');
    assert.ok(!existsSync(uploadFile(location)), 'the upload file is removed');
    for (const digest of [wrong, sha256(data)]) {
      const head = await send('HEAD', `/v2/${REPO}/blobs/${digest}`);
      assert.equal(head.status, 404, `HEAD ${digest}`);
    }
    const status = await send('GET', location);
    assertError(status, 404, 'BLOB_UPLOAD_UNKNOWN', 'status of the cancelled upload');
  });

  // A failed monolithic POST must not leave even an empty repository behind,
  // because tags/list of a repository without content must return 404 NAME_UNKNOWN.
  for (const repository of [REPO, 'mismatch/new']) {
    it(`rejects a mismatched monolithic POST to ${repository}`, async () => {
      const before = await snapshot();
      const data = randomBytes(5000);
      const wrong = sha256(Buffer.concat([data, Buffer.from('!')]));
      const response = await send('POST', `/v2/${repository}/blobs/uploads/?digest=${wrong}`, {
        body: data,
      });
      assertError(response, 400, 'DIGEST_INVALID', 'monolithic POST with the wrong digest');
      await assertNothingStored(before, `mismatched monolithic POST to ${repository}`);
      if (repository !== REPO) {
        const tags = await send('GET', `/v2/${repository}/tags/list`);
        assertError(tags, 404, 'NAME_UNKNOWN', `tags of ${repository}`);
      }
    });
  }

  it('rejects out-of-order chunks with 416', async () => {
    const location = await startSession();
    const data = randomBytes(30);
    const first = await send('PATCH', location, {
      body: data.subarray(0, 10),
      headers: { 'Content-Range': '0-9' },
    });
    assert.equal(first.status, 202);
    assert.equal(first.headers.range, '0-9');

    const before = await snapshot();
    const wrongChunks: Array<[string, Buffer]> = [
      ['20-29', data.subarray(20, 30)],
      ['5-14', data.subarray(5, 15)],
      ['0-9', data.subarray(0, 10)],
      ['11-20', data.subarray(11, 21)],
    ];
    for (const [range, chunk] of wrongChunks) {
      const response = await send('PATCH', location, {
        body: chunk,
        headers: { 'Content-Range': range },
      });
      assertError(response, 416, 'BLOB_UPLOAD_INVALID', `chunk ${range}`);
      assert.equal(response.headers.range, '0-9', `Range after chunk ${range}`);
    }
    await assertNothingStored(before, 'chunks out of order');
    assert.equal(statSync(uploadFile(location)).size, 10, 'upload file keeps 10 bytes');

    const second = await send('PATCH', location, {
      body: data.subarray(10, 20),
      headers: { 'Content-Range': '10-19' },
    });
    assert.equal(second.status, 202);
    assert.equal(second.headers.range, '0-19');
    const last = await send('PUT', `${location}?digest=${sha256(data)}`, {
      body: data.subarray(20, 30),
      headers: { 'Content-Range': '20-29' },
    });
    assert.equal(last.status, 201, last.body.toString());
    const blob = await send('GET', `/v2/${REPO}/blobs/${sha256(data)}`);
    assert.equal(blob.status, 200);
    assert.deepEqual(blob.body, data);
  });

  it('keeps the offset when the client hangs up mid-chunk', async () => {
    const location = await startSession();
    const data = randomBytes(20);
    const first = await send('PATCH', location, {
      body: data.subarray(0, 10),
      headers: { 'Content-Range': '0-9' },
    });
    assert.equal(first.status, 202);

    const before = await snapshot();
    const declared = 1000;
    await sendTruncated(
      `PATCH ${location} HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
        `Authorization: ${ADMIN_AUTHORIZATION}\r\n` +
        `Content-Type: application/octet-stream\r\nContent-Range: 10-${10 + declared - 1}\r\n` +
        `Content-Length: ${declared}\r\n\r\n`,
      randomBytes(100),
    );
    await sendTruncated(
      `PATCH ${location} HTTP/1.1\r\nHost: 127.0.0.1\r\n` +
        `Authorization: ${ADMIN_AUTHORIZATION}\r\n` +
        `Content-Type: application/octet-stream\r\nContent-Length: ${declared}\r\n\r\n`,
      randomBytes(300),
    );

    const status = await send('GET', location);
    assert.equal(status.status, 204);
    assert.equal(status.headers.range, '0-9', 'offset after the cut-off chunks');
    const now = await snapshot();
    assert.deepEqual(now.rows, before.rows, 'row counts after the cut-off chunks');
    assert.deepEqual(
      now.blobFiles,
      before.blobFiles,
      'files under blobs/ after the cut-off chunks',
    );

    // The next chunk must start at the old offset, and the bytes of the cut-off
    // chunks must not end up in the blob.
    const second = await send('PATCH', location, {
      body: data.subarray(10, 20),
      headers: { 'Content-Range': '10-19' },
    });
    assert.equal(second.status, 202, second.body.toString());
    assert.equal(second.headers.range, '0-19');
    const done = await send('PUT', `${location}?digest=${sha256(data)}`);
    assert.equal(done.status, 201, done.body.toString());
    const blob = await send('GET', `/v2/${REPO}/blobs/${sha256(data)}`);
    assert.deepEqual(blob.body, data);
  });

  for (const repository of [REPO, 'cut-off/new']) {
    it(`stores nothing when a monolithic POST to ${repository} is cut off`, async () => {
      const before = await snapshot();
      const data = randomBytes(64 * 1024);
      const digest = sha256(data);
      await sendTruncated(
        `POST /v2/${repository}/blobs/uploads/?digest=${digest} HTTP/1.1\r\n` +
          `Host: 127.0.0.1\r\nAuthorization: ${ADMIN_AUTHORIZATION}\r\n` +
          `Content-Type: application/octet-stream\r\n` +
          `Content-Length: ${data.length}\r\n\r\n`,
        data.subarray(0, data.length / 2),
      );
      // The server cleans up after it notices the hang-up, so wait for the
      // session to go away before comparing.
      const cleaned = await waitFor(async () => {
        const now = await snapshot();
        return (
          now.rows.uploads === before.rows.uploads &&
          now.uploadFiles.length === before.uploadFiles.length
        );
      });
      assert.ok(cleaned, 'the upload session of the cut-off POST is removed within 5 s');
      await assertNothingStored(before, `cut-off monolithic POST to ${repository}`);

      const head = await send('HEAD', `/v2/${repository}/blobs/${digest}`);
      assert.equal(head.status, 404);
      if (repository !== REPO) {
        const tags = await send('GET', `/v2/${repository}/tags/list`);
        assertError(tags, 404, 'NAME_UNKNOWN', `tags of ${repository}`);
      }
    });
  }
});
