import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import { after, before, describe, it } from 'node:test';

import { startServer, type TestServer } from './helpers/server.js';

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
      { method: 'POST', headers: { 'Content-Length': mib * MIB } },
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
