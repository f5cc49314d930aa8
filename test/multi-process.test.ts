// Two mcr processes on one data directory and one database (the SQLite file,
// or one PostgreSQL database), as when an operator runs a second instance.
// Each process remembers verified credentials. A change made through one
// process must take effect at the other's next request, not when its
// remembered entry expires. An upload session must continue on either
// process.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  ADMIN_PASSWORD,
  basicAuth,
  createAccount,
  startServer,
  type TestServer,
} from './helpers/server.js';
import { queryTestDatabase } from './helpers/database.js';
import { sha256 } from './helpers/oci.js';

let first: TestServer;
let second: TestServer;
before(async () => {
  first = await startServer();
  second = await startServer({ dataDir: first.dataDir });
});
after(async () => {
  await second?.stop();
  await first?.cleanup();
});

/** Sends GET /v2/ to `server` with Basic credentials and returns the status. */
async function statusAt(server: TestServer, username: string, secret: string): Promise<number> {
  const response = await fetch(`${server.url}/v2/`, {
    headers: { authorization: basicAuth(username, secret) },
  });
  await response.arrayBuffer();
  return response.status;
}

async function patchAccount(username: string, change: Record<string, unknown>): Promise<void> {
  const response = await first.fetch(`/v1/accounts/${username}`, {
    method: 'PATCH',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(change),
  });
  assert.equal(response.status, 200, await response.text());
}

describe('credentials remembered by another process', () => {
  it('stop working when the account is disabled', async () => {
    await createAccount(first, 'mp-disabled', 'mp-disabled-password');
    assert.equal(await statusAt(second, 'mp-disabled', 'mp-disabled-password'), 200);
    await patchAccount('mp-disabled', { disabled: true });
    assert.equal(await statusAt(second, 'mp-disabled', 'mp-disabled-password'), 401);
  });

  it('stop working when the password changes', async () => {
    await createAccount(first, 'mp-password', 'mp-old-password');
    assert.equal(await statusAt(second, 'mp-password', 'mp-old-password'), 200);
    await patchAccount('mp-password', { password: 'mp-new-password' });
    assert.equal(await statusAt(second, 'mp-password', 'mp-old-password'), 401);
    assert.equal(await statusAt(second, 'mp-password', 'mp-new-password'), 200);
  });

  it('stop working when the account is deleted', async () => {
    await createAccount(first, 'mp-deleted', 'mp-deleted-password');
    assert.equal(await statusAt(second, 'mp-deleted', 'mp-deleted-password'), 200);
    const deleted = await first.fetch('/v1/accounts/mp-deleted', { method: 'DELETE' });
    assert.equal(deleted.status, 204);
    assert.equal(await statusAt(second, 'mp-deleted', 'mp-deleted-password'), 401);
  });

  it('stop working when the access token is revoked', async () => {
    await createAccount(first, 'mp-token', 'mp-token-password');
    const issued = await first.fetch('/v1/accounts/mp-token/tokens', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: 'ci' }),
    });
    assert.equal(issued.status, 201);
    const { id, secret } = (await issued.json()) as { id: number; secret: string };
    assert.equal(await statusAt(second, 'mp-token', secret), 200);

    const revoked = await first.fetch(`/v1/accounts/mp-token/tokens/${id}`, { method: 'DELETE' });
    assert.equal(revoked.status, 200);
    assert.equal(await statusAt(second, 'mp-token', secret), 401);
  });

  it('stop working when the password hash changes in the database', async () => {
    await createAccount(first, 'mp-hash', 'mp-hash-password');
    assert.equal(await statusAt(second, 'mp-hash', 'mp-hash-password'), 200);

    // Gives mp-hash the admin's password hash from outside mcr, as a restore
    // or an operator's database shell would; updated_at stays as it was.
    const changed = await queryTestDatabase(
      first.dataDir,
      `UPDATE accounts SET password_hash =
         (SELECT password_hash FROM accounts WHERE username = 'admin')
       WHERE username = 'mp-hash'`,
    );
    assert.equal(changed.changes, 1);
    assert.equal(await statusAt(second, 'mp-hash', 'mp-hash-password'), 401);
    assert.equal(await statusAt(second, 'mp-hash', ADMIN_PASSWORD), 200);
  });
});

describe('upload sessions across processes', () => {
  /** Sends an upload request to `server` and returns the response, checking its status. */
  async function send(
    server: TestServer,
    target: string,
    init: RequestInit,
    status: number,
  ): Promise<Response> {
    const response = await server.fetch(target, init);
    assert.equal(response.status, status, await response.clone().text());
    return response;
  }

  it('never store the bytes of a racing chunk', async () => {
    // A finalizing PUT on one process and a PATCH with other bytes on the
    // other, sent together to one session: whichever loses is rejected, and
    // the blob, if stored, contains exactly the PUT's bytes.
    for (let round = 0; round < 10; round++) {
      const pushed = randomBytes(4 * 1024 * 1024);
      const other = randomBytes(pushed.length);
      const digest = sha256(pushed);
      const started = await send(first, '/v2/cross/race/blobs/uploads/', { method: 'POST' }, 202);
      const location = started.headers.get('location') ?? '';
      const [put, patch] = await Promise.all([
        first.fetch(`${location}${location.includes('?') ? '&' : '?'}digest=${digest}`, {
          method: 'PUT',
          headers: { 'content-type': 'application/octet-stream' },
          body: pushed,
        }),
        second.fetch(location, {
          method: 'PATCH',
          headers: {
            'content-type': 'application/octet-stream',
            'content-range': `0-${other.length - 1}`,
          },
          body: other,
        }),
      ]);
      await put.arrayBuffer();
      await patch.arrayBuffer();
      assert.ok(
        !(put.status === 201 && patch.status === 202),
        `round ${round}: both wrote the session (PUT ${put.status}, PATCH ${patch.status})`,
      );

      const blob = await first.fetch(`/v2/cross/race/blobs/${digest}`);
      const bytes = Buffer.from(await blob.arrayBuffer());
      if (put.status === 201) {
        assert.equal(blob.status, 200, `round ${round}`);
        assert.equal(sha256(bytes), digest, `round ${round}: the stored bytes hash elsewhere`);
      } else {
        assert.equal(blob.status, 404, `round ${round}: PUT ${put.status}`);
      }
    }
  });

  it('let a cancel wait for a finalizing PUT', async () => {
    for (let round = 0; round < 10; round++) {
      const data = randomBytes(4 * 1024 * 1024);
      const digest = sha256(data);
      const started = await send(first, '/v2/cross/cancel/blobs/uploads/', { method: 'POST' }, 202);
      const location = started.headers.get('location') ?? '';
      const putting = second.fetch(
        `${location}${location.includes('?') ? '&' : '?'}digest=${digest}`,
        {
          method: 'PUT',
          headers: { 'content-type': 'application/octet-stream' },
          body: data,
        },
      );
      await new Promise((resolve) => setTimeout(resolve, round * 3));
      const [put, cancel] = await Promise.all([
        putting,
        first.fetch(location, { method: 'DELETE' }),
      ]);
      await put.arrayBuffer();
      await cancel.arrayBuffer();
      assert.ok(put.status < 500, `round ${round}: PUT ${put.status}`);
      assert.ok(cancel.status < 500, `round ${round}: DELETE ${cancel.status}`);
      assert.ok(
        !(put.status === 201 && cancel.status === 204),
        `round ${round}: the session was both stored and cancelled`,
      );
      const blob = await first.fetch(`/v2/cross/cancel/blobs/${digest}`);
      await blob.arrayBuffer();
      assert.equal(
        blob.status,
        put.status === 201 ? 200 : 404,
        `round ${round}: PUT ${put.status}`,
      );
    }
  });

  it('continue chunks on either process', async () => {
    const data = randomBytes(300_000);
    const digest = sha256(data);
    const started = await send(first, '/v2/cross/chunked/blobs/uploads/', { method: 'POST' }, 202);
    let location = started.headers.get('location') ?? '';

    // Chunks alternate between the processes; the first one creates the upload's file.
    const servers = [second, first];
    for (let part = 0; part < 2; part++) {
      const chunk = data.subarray(part * 100_000, (part + 1) * 100_000);
      const patched = await send(
        servers[part]!,
        location,
        {
          method: 'PATCH',
          headers: { 'content-range': `${part * 100_000}-${(part + 1) * 100_000 - 1}` },
          body: chunk,
        },
        202,
      );
      location = patched.headers.get('location') ?? '';
    }
    const finalUrl = `${location}${location.includes('?') ? '&' : '?'}digest=${digest}`;
    await send(second, finalUrl, { method: 'PUT', body: data.subarray(200_000) }, 201);

    const blob = await send(first, `/v2/cross/chunked/blobs/${digest}`, {}, 200);
    assert.deepEqual(Buffer.from(await blob.arrayBuffer()), data);
  });

  it('finish with a PUT elsewhere', async () => {
    const data = randomBytes(4096);
    const digest = sha256(data);
    const started = await send(first, '/v2/cross/small/blobs/uploads/', { method: 'POST' }, 202);
    const location = started.headers.get('location') ?? '';
    await send(
      second,
      `${location}${location.includes('?') ? '&' : '?'}digest=${digest}`,
      {
        method: 'PUT',
        body: data,
      },
      201,
    );

    const blob = await send(first, `/v2/cross/small/blobs/${digest}`, {}, 200);
    assert.deepEqual(Buffer.from(await blob.arrayBuffer()), data);
  });
});

describe('two processes starting together', () => {
  it('both start on one fresh data directory', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-together-'));
    const started = await Promise.allSettled([startServer({ dataDir }), startServer({ dataDir })]);
    const servers = started.flatMap((result) =>
      result.status === 'fulfilled' ? [result.value] : [],
    );
    try {
      for (const result of started) {
        assert.equal(result.status, 'fulfilled', String((result as PromiseRejectedResult).reason));
      }
      for (const server of servers) {
        assert.equal(await statusAt(server, 'admin', ADMIN_PASSWORD), 200);
      }
      // Each may have created a signing key; the other must accept its tokens.
      for (const [issuer, verifier] of [servers, [...servers].reverse()]) {
        const issued = await fetch(`${issuer!.url}/v2/token?service=mcr`, {
          headers: { authorization: basicAuth('admin', ADMIN_PASSWORD) },
        });
        assert.equal(issued.status, 200);
        const { token } = (await issued.json()) as { token: string };
        const response = await fetch(`${verifier!.url}/v2/`, {
          headers: { authorization: `Bearer ${token}` },
        });
        await response.arrayBuffer();
        assert.equal(response.status, 200);
      }
    } finally {
      await Promise.all(servers.map((server) => server.stop()));
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
