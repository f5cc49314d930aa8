import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { spawnSync } from 'node:child_process';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { blobFilePath } from './helpers/gc.js';
import { pushBlob, sha256, sha512 } from './helpers/oci.js';
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

async function startUpload(name: string): Promise<string> {
  const response = await server.fetch(`/v2/${name}/blobs/uploads/`, { method: 'POST' });
  assert.equal(response.status, 202);
  const location = response.headers.get('location');
  assert.ok(location);
  return location;
}

/** Polls `check` every 20 ms until it holds; fails after 5 s. */
async function waitFor(check: () => boolean): Promise<void> {
  for (let waited = 0; !check(); waited += 20) {
    if (waited > 5000) assert.fail('condition still false after 5 s');
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function uploadFiles(): string[] {
  return readdirSync(path.join(server.dataDir, 'uploads'));
}

describe('GET /v2/', () => {
  it('answers 200 with the API version header', async () => {
    const response = await server.fetch('/v2/');
    assert.equal(response.status, 200);
    assert.equal(response.headers.get('docker-distribution-api-version'), 'registry/2.0');
    assert.deepEqual(await response.json(), {});
  });

  it('puts the API version header on errors too', async () => {
    const response = await server.fetch(`/v2/nothing/here/blobs/${sha256('x')}`);
    assert.equal(response.status, 404);
    assert.equal(response.headers.get('docker-distribution-api-version'), 'registry/2.0');
  });
});

describe('requests without credentials', () => {
  it('rejects GET /v2/ with a Bearer challenge', async () => {
    const response = await fetch(`${server.url}/v2/`);
    assert.equal(response.status, 401);
    assert.match(response.headers.get('www-authenticate') ?? '', /^Bearer realm="/);
    assert.equal(await errorCode(response), 'UNAUTHORIZED');
  });

  it('rejects a blob GET for an existing blob', async () => {
    const data = 'blob that only authenticated callers may read';
    const digest = await pushBlob(server, 'private/blob', data);
    const response = await fetch(`${server.url}/v2/private/blob/blobs/${digest}`);
    assert.equal(response.status, 401);
    assert.match(response.headers.get('www-authenticate') ?? '', /^Bearer realm="/);
    const body = await response.text();
    assert.ok(!body.includes(data), `the 401 body contains the blob: ${body}`);
    assert.equal((await server.fetch(`/v2/private/blob/blobs/${digest}`)).status, 200);
  });
});

describe('monolithic upload', () => {
  it('stores a blob with POST ?digest= and serves it', async () => {
    const data = randomBytes(100_000);
    const digest = sha256(data);
    const response = await server.fetch(`/v2/mono/blobs/uploads/?digest=${digest}`, {
      method: 'POST',
      body: data,
    });
    assert.equal(response.status, 201);
    assert.equal(response.headers.get('location'), `/v2/mono/blobs/${digest}`);
    assert.equal(response.headers.get('docker-content-digest'), digest);

    const get = await server.fetch(`/v2/mono/blobs/${digest}`);
    assert.equal(get.status, 200);
    assert.equal(get.headers.get('content-length'), String(data.length));
    assert.equal(get.headers.get('docker-content-digest'), digest);
    assert.equal(get.headers.get('content-type'), 'application/octet-stream');
    assert.deepEqual(Buffer.from(await get.arrayBuffer()), data);

    const hex = digest.slice('sha256:'.length);
    assert.ok(existsSync(path.join(server.dataDir, 'blobs', 'sha256', hex.slice(0, 2), hex)));
    assert.deepEqual(uploadFiles(), []);
  });

  it('stores the zero-byte blob', async () => {
    const digest = sha256('');
    const response = await server.fetch(`/v2/zero/blobs/uploads/?digest=${digest}`, {
      method: 'POST',
    });
    assert.equal(response.status, 201);
    const head = await server.fetch(`/v2/zero/blobs/${digest}`, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-length'), '0');
    const get = await server.fetch(`/v2/zero/blobs/${digest}`);
    assert.equal(get.status, 200);
    assert.equal((await get.arrayBuffer()).byteLength, 0);
  });

  it('stores a blob under a sha512 digest', async () => {
    const data = randomBytes(5000);
    const digest = sha512(data);
    const response = await server.fetch(`/v2/long/blobs/uploads/?digest=${digest}`, {
      method: 'POST',
      body: data,
    });
    assert.equal(response.status, 201);
    assert.equal(response.headers.get('docker-content-digest'), digest);
    const get = await server.fetch(`/v2/long/blobs/${digest}`);
    assert.equal(get.status, 200);
    assert.deepEqual(Buffer.from(await get.arrayBuffer()), data);
  });

  it('rejects a body whose digest differs and stores nothing', async () => {
    const digest = sha256('expected');
    const response = await server.fetch(`/v2/mono/blobs/uploads/?digest=${digest}`, {
      method: 'POST',
      body: 'actual',
    });
    assert.equal(response.status, 400);
    assert.equal(await errorCode(response), 'DIGEST_INVALID');
    const head = await server.fetch(`/v2/mono/blobs/${digest}`, { method: 'HEAD' });
    assert.equal(head.status, 404);
    assert.deepEqual(uploadFiles(), []);
  });

  it('deduplicates a blob pushed to two repositories', async () => {
    const data = randomBytes(2048);
    const digest = await pushBlob(server, 'dedup/one', data);
    await pushBlob(server, 'dedup/two', data);
    const hex = digest.slice('sha256:'.length);
    const dir = path.join(server.dataDir, 'blobs', 'sha256', hex.slice(0, 2));
    assert.deepEqual(
      readdirSync(dir).filter((file) => file === hex),
      [hex],
    );
    for (const name of ['dedup/one', 'dedup/two']) {
      const get = await server.fetch(`/v2/${name}/blobs/${digest}`);
      assert.equal(get.status, 200);
      assert.deepEqual(Buffer.from(await get.arrayBuffer()), data);
    }
  });
});

describe('chunked upload', () => {
  it('appends chunks with Content-Range and finalizes with a last chunk', async () => {
    const data = randomBytes(30_000);
    const location = await startUpload('chunked/repo');
    assert.match(location, /^\/v2\/chunked\/repo\/blobs\/uploads\/[0-9a-f-]{36}$/);

    const first = await server.fetch(location, {
      method: 'PATCH',
      body: data.subarray(0, 10_000),
      headers: { 'Content-Range': '0-9999', 'Content-Type': 'application/octet-stream' },
    });
    assert.equal(first.status, 202);
    assert.equal(first.headers.get('range'), '0-9999');
    assert.equal(first.headers.get('location'), location);
    assert.equal(first.headers.get('docker-upload-uuid'), location.split('/').pop());

    const second = await server.fetch(location, {
      method: 'PATCH',
      body: data.subarray(10_000, 20_000),
      headers: { 'Content-Range': '10000-19999' },
    });
    assert.equal(second.status, 202);
    assert.equal(second.headers.get('range'), '0-19999');

    const status = await server.fetch(location);
    assert.equal(status.status, 204);
    assert.equal(status.headers.get('range'), '0-19999');
    assert.equal(status.headers.get('docker-upload-uuid'), location.split('/').pop());

    const digest = sha256(data);
    const put = await server.fetch(`${location}?digest=${digest}`, {
      method: 'PUT',
      body: data.subarray(20_000),
      headers: { 'Content-Range': '20000-29999' },
    });
    assert.equal(put.status, 201);
    assert.equal(put.headers.get('location'), `/v2/chunked/repo/blobs/${digest}`);
    assert.equal(put.headers.get('docker-content-digest'), digest);

    const get = await server.fetch(`/v2/chunked/repo/blobs/${digest}`);
    assert.deepEqual(Buffer.from(await get.arrayBuffer()), data);
    const gone = await server.fetch(location);
    assert.equal(gone.status, 404);
    assert.equal(await errorCode(gone), 'BLOB_UPLOAD_UNKNOWN');
  });

  it('streams a PATCH without Content-Range and finalizes without a body', async () => {
    const data = randomBytes(70_000);
    const location = await startUpload('streamed');
    const patch = await server.fetch(location, { method: 'PATCH', body: data });
    assert.equal(patch.status, 202);
    assert.equal(patch.headers.get('range'), `0-${data.length - 1}`);

    const digest = sha256(data);
    const put = await server.fetch(`${location}?digest=${digest}`, { method: 'PUT' });
    assert.equal(put.status, 201);
    const head = await server.fetch(`/v2/streamed/blobs/${digest}`, { method: 'HEAD' });
    assert.equal(head.headers.get('content-length'), String(data.length));
  });

  it('answers 416 with the current Range for an out-of-order chunk', async () => {
    const location = await startUpload('order');
    await server.fetch(location, {
      method: 'PATCH',
      body: 'abcde',
      headers: { 'Content-Range': '0-4' },
    });
    const skip = await server.fetch(location, {
      method: 'PATCH',
      body: 'xyz',
      headers: { 'Content-Range': '10-12' },
    });
    assert.equal(skip.status, 416);
    assert.equal(skip.headers.get('range'), '0-4');
    assert.equal(await errorCode(skip), 'BLOB_UPLOAD_INVALID');

    const resend = await server.fetch(location, {
      method: 'PATCH',
      body: 'abcde',
      headers: { 'Content-Range': '0-4' },
    });
    assert.equal(resend.status, 416);

    const next = await server.fetch(location, {
      method: 'PATCH',
      body: 'fgh',
      headers: { 'Content-Range': '5-7' },
    });
    assert.equal(next.status, 202);
    const put = await server.fetch(`${location}?digest=${sha256('abcdefgh')}`, {
      method: 'PUT',
    });
    assert.equal(put.status, 201);
  });

  it('finalizes an empty session as the zero-byte blob', async () => {
    const location = await startUpload('empty');
    const put = await server.fetch(`${location}?digest=${sha256('')}`, { method: 'PUT' });
    assert.equal(put.status, 201);
  });

  it('verifies a sha512 digest at finalize', async () => {
    const location = await startUpload('chunked512');
    await server.fetch(location, { method: 'PATCH', body: 'sha512 data' });
    const put = await server.fetch(`${location}?digest=${sha512('sha512 data')}`, {
      method: 'PUT',
    });
    assert.equal(put.status, 201);
    assert.equal(put.headers.get('docker-content-digest'), sha512('sha512 data'));
  });

  it('cancels the session when the final digest does not match', async () => {
    const location = await startUpload('mismatch');
    await server.fetch(location, { method: 'PATCH', body: 'some bytes' });
    const put = await server.fetch(`${location}?digest=${sha256('other bytes')}`, {
      method: 'PUT',
    });
    assert.equal(put.status, 400);
    assert.equal(await errorCode(put), 'DIGEST_INVALID');
    const status = await server.fetch(location);
    assert.equal(status.status, 404);
    assert.ok(!uploadFiles().includes(location.split('/').pop() as string));
  });

  it('requires the digest parameter to finalize', async () => {
    const location = await startUpload('nodigest');
    const put = await server.fetch(location, { method: 'PUT' });
    assert.equal(put.status, 400);
    assert.equal(await errorCode(put), 'DIGEST_INVALID');
  });

  it('cancels a session with DELETE', async () => {
    const location = await startUpload('cancel');
    await server.fetch(location, { method: 'PATCH', body: 'partial' });
    const cancel = await server.fetch(location, { method: 'DELETE' });
    assert.equal(cancel.status, 204);
    const again = await server.fetch(location, { method: 'DELETE' });
    assert.equal(again.status, 404);
    assert.equal(await errorCode(again), 'BLOB_UPLOAD_UNKNOWN');
    assert.ok(!uploadFiles().includes(location.split('/').pop() as string));
  });

  it('does not let another repository continue a session', async () => {
    const location = await startUpload('owner');
    const id = location.split('/').pop();
    const response = await server.fetch(`/v2/intruder/blobs/uploads/${id}`);
    assert.equal(response.status, 404);
    assert.equal(await errorCode(response), 'BLOB_UPLOAD_UNKNOWN');
  });

  it('answers 404 for an unknown session id', async () => {
    const response = await server.fetch(
      '/v2/owner/blobs/uploads/00000000-0000-4000-8000-000000000000',
      { method: 'PATCH', body: 'x' },
    );
    assert.equal(response.status, 404);
    assert.equal(await errorCode(response), 'BLOB_UPLOAD_UNKNOWN');
  });
});

describe('an upload whose repository is deleted meanwhile', () => {
  /** Sends a request whose body arrives in two parts, running `between` in the pause. */
  function sendInTwoParts(
    method: string,
    target: string,
    body: Buffer,
    between: () => Promise<void>,
  ): Promise<{ status: number; code: string | undefined }> {
    return new Promise((resolve, reject) => {
      const url = new URL(target, server.url);
      const request = http.request(url, {
        method,
        headers: {
          authorization: `Basic ${Buffer.from(server.creds).toString('base64')}`,
          'content-type': 'application/octet-stream',
          'content-length': body.length,
        },
      });
      request.on('error', reject);
      request.on('response', (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => {
          const text = Buffer.concat(chunks).toString();
          const parsed = text ? (JSON.parse(text) as { errors?: Array<{ code: string }> }) : {};
          resolve({ status: response.statusCode ?? 0, code: parsed.errors?.[0]?.code });
        });
      });
      request.write(body.subarray(0, body.length / 2));
      setTimeout(() => {
        between().then(() => request.end(body.subarray(body.length / 2)), reject);
      }, 300);
    });
  }

  async function deleteRepository(name: string): Promise<void> {
    const response = await server.fetch(`/v1/repositories/${name}`, { method: 'DELETE' });
    assert.equal(response.status, 204);
  }

  it('answers BLOB_UPLOAD_UNKNOWN to the finishing PUT', async () => {
    const data = randomBytes(64 * 1024);
    const location = await startUpload('deleted/put');
    const result = await sendInTwoParts('PUT', `${location}?digest=${sha256(data)}`, data, () =>
      deleteRepository('deleted/put'),
    );
    assert.deepEqual(result, { status: 404, code: 'BLOB_UPLOAD_UNKNOWN' });
    const catalog = await server.fetch('/v2/_catalog');
    const { repositories } = (await catalog.json()) as { repositories: string[] };
    assert.ok(!repositories.includes('deleted/put'));
  });

  it('answers BLOB_UPLOAD_UNKNOWN to a PATCH', async () => {
    const data = randomBytes(64 * 1024);
    const location = await startUpload('deleted/patch');
    const result = await sendInTwoParts('PATCH', location, data, () =>
      deleteRepository('deleted/patch'),
    );
    assert.deepEqual(result, { status: 404, code: 'BLOB_UPLOAD_UNKNOWN' });
  });

  it('never answers 416 to a request that races the deletion', async () => {
    const statuses = new Map<number, number>();
    for (let round = 0; round < 20; round++) {
      const name = `deleted/race${round}`;
      const location = await startUpload(name);
      const [patch] = await Promise.all([
        server.fetch(location, { method: 'PATCH', body: randomBytes(1024) }),
        server.fetch(`/v1/repositories/${name}`, { method: 'DELETE' }),
      ]);
      statuses.set(patch.status, (statuses.get(patch.status) ?? 0) + 1);
      if (patch.status === 404) assert.equal(await errorCode(patch), 'BLOB_UPLOAD_UNKNOWN');
      else await patch.arrayBuffer();
    }
    assert.deepEqual(
      [...statuses.keys()].filter((status) => status !== 202 && status !== 404),
      [],
    );
  });
});

describe('a full disk', () => {
  // A data directory on a small tmpfs of its own. Mounting needs root, which
  // CI runs as; elsewhere the test skips.
  const mountPoint = mkdtempSync(path.join(tmpdir(), 'mcr-full-'));
  const mounted =
    spawnSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', mountPoint]).status === 0;

  after(() => {
    if (mounted) spawnSync('umount', [mountPoint]);
    rmSync(mountPoint, { recursive: true, force: true });
  });

  it('answers 507 and keeps nothing of the blob', { skip: !mounted && 'needs mount' }, async () => {
    const full = await startServer({ dataDir: path.join(mountPoint, 'data') });
    try {
      const big = randomBytes(12 * 1024 * 1024);
      const response = await full.fetch(`/v2/full/app/blobs/uploads/?digest=${sha256(big)}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/octet-stream' },
        body: big,
      });
      assert.equal(response.status, 507);
      // The failed write ended the body stream, so the connection closes.
      assert.equal(response.headers.get('connection'), 'close');
      const body = (await response.json()) as { errors: Array<{ code: string; message: string }> };
      assert.deepEqual(body.errors[0], {
        code: 'UNKNOWN',
        message: 'the registry is out of storage space; retry after its operator has freed some',
      });
      // The log line can arrive after the response.
      await waitFor(() =>
        full.logs.some(
          (entry) =>
            entry.msg === 'the data directory or the database is out of space; answering 507',
        ),
      );

      // The failed upload's bytes are gone, so a small blob fits again.
      assert.deepEqual(readdirSync(path.join(full.dataDir, 'uploads')), []);
      const head = await full.fetch(`/v2/full/app/blobs/${sha256(big)}`, { method: 'HEAD' });
      assert.equal(head.status, 404);
      await pushBlob(full, 'full/app', randomBytes(4096));
    } finally {
      await full.stop();
    }
  });
});

describe('blob reads', () => {
  let digest: string;
  const data = Buffer.from('0123456789abcdefghij');
  before(async () => {
    digest = await pushBlob(server, 'reads', data);
  });

  it('answers HEAD with size and digest but no body', async () => {
    const head = await server.fetch(`/v2/reads/blobs/${digest}`, { method: 'HEAD' });
    assert.equal(head.status, 200);
    assert.equal(head.headers.get('content-length'), '20');
    assert.equal(head.headers.get('docker-content-digest'), digest);
    assert.equal((await head.arrayBuffer()).byteLength, 0);
  });

  const ranges: Array<[string, number, string, string]> = [
    ['bytes=0-4', 206, '01234', 'bytes 0-4/20'],
    ['bytes=15-', 206, 'fghij', 'bytes 15-19/20'],
    ['bytes=-3', 206, 'hij', 'bytes 17-19/20'],
    ['bytes=10-100', 206, 'abcdefghij', 'bytes 10-19/20'],
    ['bytes= 1-2', 206, '12', 'bytes 1-2/20'],
  ];
  for (const [range, status, body, contentRange] of ranges) {
    it(`serves Range ${range}`, async () => {
      const get = await server.fetch(`/v2/reads/blobs/${digest}`, {
        headers: { Range: range },
      });
      assert.equal(get.status, status);
      assert.equal(get.headers.get('content-range'), contentRange);
      assert.equal(get.headers.get('content-length'), String(body.length));
      assert.equal(await get.text(), body);
    });
  }

  it('serves a blob of several read buffers whole and in ranges', async () => {
    // 3.5 MiB: the server reads 1 MiB at a time into two alternating buffers.
    const large = randomBytes(3.5 * 1024 * 1024);
    const largeDigest = await pushBlob(server, 'reads', large);
    const requests = [
      { range: undefined, from: 0, to: large.length },
      { range: 'bytes=1048000-2097700', from: 1_048_000, to: 2_097_701 },
      {
        range: `bytes=-${1024 * 1024 + 5}`,
        from: large.length - 1024 * 1024 - 5,
        to: large.length,
      },
    ];
    // Concurrent downloads share the buffer pool, so none may see another's bytes.
    const responses = await Promise.all(
      requests.map(({ range }) =>
        server.fetch(`/v2/reads/blobs/${largeDigest}`, range ? { headers: { Range: range } } : {}),
      ),
    );
    for (const [index, response] of responses.entries()) {
      const { range, from, to } = requests[index]!;
      assert.equal(response.status, range ? 206 : 200, `status for ${range ?? 'no range'}`);
      const body = Buffer.from(await response.arrayBuffer());
      assert.equal(body.length, to - from, `length for ${range ?? 'no range'}`);
      assert.equal(
        sha256(body),
        sha256(large.subarray(from, to)),
        `bytes for ${range ?? 'no range'}`,
      );
    }
  });

  it('survives clients that leave in the middle of downloads', async () => {
    const large = randomBytes(8 * 1024 * 1024);
    const largeDigest = await pushBlob(server, 'reads', large);
    const url = new URL(`/v2/reads/blobs/${largeDigest}`, server.url);
    const leaveAfterFirstChunk = () =>
      new Promise<number>((resolve, reject) => {
        const request = http.get(
          url,
          { headers: { Authorization: `Basic ${Buffer.from(server.creds).toString('base64')}` } },
          (response) => {
            response.once('data', (chunk: Buffer) => {
              request.destroy();
              resolve(chunk.length);
            });
          },
        );
        request.on('error', (error) => {
          if (!request.destroyed) reject(error);
        });
      });
    for (let round = 0; round < 5; round++) {
      const received = await Promise.all(Array.from({ length: 20 }, leaveAfterFirstChunk));
      assert.ok(received.every((bytes) => bytes > 0 && bytes < large.length));
    }

    // The server is still up and serves the whole blob to the next client.
    const whole = await server.fetch(`/v2/reads/blobs/${largeDigest}`);
    assert.equal(whole.status, 200);
    assert.equal(sha256(Buffer.from(await whole.arrayBuffer())), largeDigest);
    await waitFor(() =>
      server.logs.some(
        (entry) => entry.msg === 'client closed the connection during a blob download',
      ),
    );
  });

  it('answers 416 for a range past the end', async () => {
    const get = await server.fetch(`/v2/reads/blobs/${digest}`, {
      headers: { Range: 'bytes=20-30' },
    });
    assert.equal(get.status, 416);
    assert.equal(get.headers.get('content-range'), 'bytes */20');
  });

  it('serves only blobs the repository holds', async () => {
    const get = await server.fetch(`/v2/elsewhere/blobs/${digest}`);
    assert.equal(get.status, 404);
    assert.equal(await errorCode(get), 'BLOB_UNKNOWN');
    const head = await server.fetch(`/v2/elsewhere/blobs/${digest}`, { method: 'HEAD' });
    assert.equal(head.status, 404);
  });

  it('answers 404 for bytes lost from storage until pushed again', async () => {
    const lost = Buffer.from('bytes an operator deleted by hand');
    const lostDigest = await pushBlob(server, 'reads', lost);
    rmSync(blobFilePath(server.dataDir, lostDigest));

    const head = await server.fetch(`/v2/reads/blobs/${lostDigest}`, { method: 'HEAD' });
    assert.equal(head.status, 404);
    assert.equal(head.headers.get('docker-content-digest'), null);
    const get = await server.fetch(`/v2/reads/blobs/${lostDigest}`);
    assert.equal(get.status, 404);
    assert.equal(await errorCode(get), 'BLOB_UNKNOWN');
    assert.ok(
      server.logs.some(
        (entry) =>
          entry.digest === lostDigest &&
          entry.msg === 'blob is recorded in the database but its bytes are missing from storage',
      ),
    );

    // A client that gets 404 uploads the blob again, which restores the file.
    assert.equal(await pushBlob(server, 'reads', lost), lostDigest);
    const restored = await server.fetch(`/v2/reads/blobs/${lostDigest}`);
    assert.equal(restored.status, 200);
    assert.deepEqual(Buffer.from(await restored.arrayBuffer()), lost);
    const headAgain = await server.fetch(`/v2/reads/blobs/${lostDigest}`, { method: 'HEAD' });
    assert.equal(headAgain.status, 200);
  });

  it('rejects a malformed digest', async () => {
    const get = await server.fetch('/v2/reads/blobs/sha256:1234');
    assert.equal(get.status, 400);
    assert.equal(await errorCode(get), 'DIGEST_INVALID');
  });
});

describe('DELETE blob', () => {
  it('removes the blob from one repository only', async () => {
    const data = randomBytes(64);
    const digest = await pushBlob(server, 'del/a', data);
    await pushBlob(server, 'del/b', data);

    const response = await server.fetch(`/v2/del/a/blobs/${digest}`, { method: 'DELETE' });
    assert.equal(response.status, 202);
    assert.equal((await server.fetch(`/v2/del/a/blobs/${digest}`)).status, 404);
    assert.equal((await server.fetch(`/v2/del/b/blobs/${digest}`)).status, 200);

    const again = await server.fetch(`/v2/del/a/blobs/${digest}`, { method: 'DELETE' });
    assert.equal(again.status, 404);
    assert.equal(await errorCode(again), 'BLOB_UNKNOWN');
  });
});

describe('cross-repository mount', () => {
  it('mounts a blob from another repository with 201', async () => {
    const digest = await pushBlob(server, 'mount/source', 'shared layer');
    const response = await server.fetch(
      `/v2/mount/target/blobs/uploads/?mount=${digest}&from=mount/source`,
      { method: 'POST' },
    );
    assert.equal(response.status, 201);
    assert.equal(response.headers.get('location'), `/v2/mount/target/blobs/${digest}`);
    assert.equal(response.headers.get('docker-content-digest'), digest);
    assert.equal(
      await (await server.fetch(`/v2/mount/target/blobs/${digest}`)).text(),
      'shared layer',
    );
  });

  it('falls back to an upload session (202) when the source lacks the blob', async () => {
    const digest = sha256('not anywhere');
    const response = await server.fetch(
      `/v2/mount/target/blobs/uploads/?mount=${digest}&from=mount/source`,
      { method: 'POST' },
    );
    assert.equal(response.status, 202);
    assert.match(response.headers.get('location') ?? '', /\/v2\/mount\/target\/blobs\/uploads\//);
    assert.equal(response.headers.get('range'), '0-0');
    assert.ok(response.headers.get('docker-upload-uuid'));
  });

  it('mounts without from when some repository holds the blob', async () => {
    const digest = await pushBlob(server, 'mount/origin', 'auto mount');
    const response = await server.fetch(`/v2/mount/auto/blobs/uploads/?mount=${digest}`, {
      method: 'POST',
    });
    assert.equal(response.status, 201);
    assert.equal(await (await server.fetch(`/v2/mount/auto/blobs/${digest}`)).text(), 'auto mount');
  });

  it('falls back to 202 without from when no repository holds the blob', async () => {
    const response = await server.fetch(
      `/v2/mount/auto/blobs/uploads/?mount=${sha256('nowhere at all')}`,
      { method: 'POST' },
    );
    assert.equal(response.status, 202);
  });
});

describe('a damaged blob directory at startup', () => {
  /** Returns bytes whose sha256 digest starts with `prefix` (two hex digits). */
  function bytesWithPrefix(prefix: string): Buffer {
    for (let i = 0; ; i++) {
      const data = Buffer.from(`blob ${i} for prefix ${prefix}`);
      if (sha256(data).startsWith(`sha256:${prefix}`)) return data;
    }
  }

  it('fails only pushes into a file prefix', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-damaged-'));
    mkdirSync(path.join(dataDir, 'blobs', 'sha256'), { recursive: true });
    writeFileSync(path.join(dataDir, 'blobs', 'sha256', 'ab'), 'not a directory');
    const damaged = await startServer({ dataDir });
    try {
      const blocked = bytesWithPrefix('ab');
      const response = await damaged.fetch(`/v2/damaged/blobs/uploads/?digest=${sha256(blocked)}`, {
        method: 'POST',
        body: blocked,
      });
      assert.equal(response.status, 500);
      assert.equal(await errorCode(response), 'UNKNOWN');

      const other = bytesWithPrefix('cd');
      assert.equal(await pushBlob(damaged, 'damaged', other), sha256(other));
      assert.equal(readdirSync(path.join(dataDir, 'blobs', 'sha256')).length, 256);
    } finally {
      await damaged.cleanup();
    }
  });

  it('starts with a warning when blobs/sha256 is a file', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-damaged-'));
    mkdirSync(path.join(dataDir, 'blobs'), { recursive: true });
    writeFileSync(path.join(dataDir, 'blobs', 'sha256'), 'not a directory');
    const damaged = await startServer({ dataDir });
    try {
      const warning = damaged.logs.find((line) =>
        String(line.msg).startsWith('failed to create blob prefix directories'),
      );
      assert.ok(warning, 'no warning about the prefix directories');
      assert.equal(warning.level, 40);
      assert.equal((await damaged.fetch('/v2/')).status, 200);
    } finally {
      await damaged.cleanup();
    }
  });
});
