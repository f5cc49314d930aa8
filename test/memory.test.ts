import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';

import {
  ADMIN_PASSWORD,
  ADMIN_USER,
  basicAuth,
  startServer,
  type TestServer,
} from './helpers/server.js';

const MIB = 1024 * 1024;

let server: TestServer;
before(async () => {
  server = await startServer();
});
after(async () => {
  await server.cleanup();
});

/** Peak resident set size of a process so far, in bytes (Linux only). */
function peakRss(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /VmHWM:\s+(\d+) kB/.exec(status);
  assert.ok(match, 'VmHWM missing from /proc status');
  return Number(match[1]) * 1024;
}

/**
 * Resets the peak resident set size of a process to its current size, by
 * writing 5 to /proc/PID/clear_refs (Linux 4.0 and later).
 */
function resetPeakRss(pid: number): void {
  writeFileSync(`/proc/${pid}/clear_refs`, '5');
}

/** Fills 1 MiB chunk number i with bytes that differ from chunk to chunk. */
function fillChunk(chunk: Buffer, i: number): void {
  chunk.writeUInt32BE(i, 0);
}

/** Streams `mib` MiB as a monolithic upload without holding it in memory. */
async function pushGenerated(name: string, mib: number): Promise<number> {
  const chunk = Buffer.alloc(MIB, 7);
  const hash = createHash('sha256');
  for (let i = 0; i < mib; i++) {
    fillChunk(chunk, i);
    hash.update(chunk);
  }
  const digest = `sha256:${hash.digest('hex')}`;

  return new Promise((resolve, reject) => {
    const request = http.request(
      `${server.url}/v2/${name}/blobs/uploads/?digest=${digest}`,
      {
        method: 'POST',
        headers: {
          'Content-Length': mib * MIB,
          Authorization: basicAuth(ADMIN_USER, ADMIN_PASSWORD),
        },
      },
      (response) => {
        response.resume();
        response.on('end', () => resolve(response.statusCode ?? 0));
      },
    );
    request.on('error', reject);
    let i = 0;
    const write = () => {
      while (i < mib) {
        const next = Buffer.from(chunk);
        fillChunk(next, i);
        i += 1;
        if (!request.write(next)) {
          request.once('drain', write);
          return;
        }
      }
      request.end();
    };
    write();
  });
}

describe('server memory', () => {
  it('does not grow with blob size', async () => {
    const pid = server.process.pid as number;
    // mcr runs argon2id with 64 MiB of memory (the default cost of the argon2
    // package, version 0.45) to hash the admin password at startup and again to
    // check it on the first request. Logging in and then resetting the peak
    // keeps both out of the baseline. mcr caches the login for 30 s, so the
    // pushes below run no argon2.
    const login = await server.fetch('/v2/');
    assert.equal(login.status, 200);
    resetPeakRss(pid);

    assert.equal(await pushGenerated('memory/small', 16), 201);
    const afterSmall = peakRss(pid);
    assert.equal(await pushGenerated('memory/large', 512), 201);
    const afterLarge = peakRss(pid);

    // A server that buffered the body would grow by about 512 MiB.
    const growth = afterLarge - afterSmall;
    assert.ok(
      growth < 48 * MIB,
      `peak RSS grew by ${Math.round(growth / MIB)} MiB between a 16 MiB and a 512 MiB push`,
    );
  });
});
