// Machine ceilings measured in the same run as the registries: SHA-256 speed
// of one core, the push rate of a minimal receive-hash-write server, and the
// time of sequential page requests to that server.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import http from 'node:http';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { expectStatus, GeneratedBlob, MiB, type Target } from './http.js';

const INGEST_SERVER = path.join(path.dirname(fileURLToPath(import.meta.url)), 'ingest-server.js');

/** Hashes `bytes` of a 1 MiB buffer in this process and returns MiB/s. */
export function measureSha256(bytes: number): number {
  const block = Buffer.alloc(MiB, 7);
  const hash = createHash('sha256');
  const start = performance.now();
  for (let done = 0; done < bytes; done += MiB) hash.update(block);
  hash.digest();
  return bytes / MiB / ((performance.now() - start) / 1000);
}

/** A running ingest server and its stop function. */
export interface IngestServer {
  target: Target;
  pid: number;
  stop(): Promise<void>;
}

/** Starts bench/lib/ingest-server.js in a child process with a fresh directory. */
export async function startIngestServer(): Promise<IngestServer> {
  const directory = mkdtempSync(path.join(tmpdir(), 'mcr-bench-ingest-'));
  const child = spawn(process.execPath, [INGEST_SERVER, directory], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const port = await new Promise<number>((resolve, reject) => {
    createInterface({ input: child.stdout! }).once('line', (line) => resolve(Number(line)));
    child.once('exit', (code) => reject(new Error(`ingest server exited with code ${code}`)));
  });
  const agent = new http.Agent({ keepAlive: true });
  return {
    target: {
      name: 'ingest ceiling',
      url: `http://127.0.0.1:${port}`,
      headers: {},
      agent,
      singlePostUpload: true,
    },
    pid: child.pid!,
    async stop() {
      agent.destroy();
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
      rmSync(directory, { recursive: true, force: true });
    },
  };
}

/** Pushes one generated blob of `bytes` to the ingest server and returns MiB/s. */
export async function measureIngest(
  server: IngestServer,
  bytes: number,
  seed: number,
): Promise<number> {
  const blob = new GeneratedBlob(seed, bytes);
  const start = performance.now();
  await expectStatus([201], server.target, '/upload', {
    method: 'POST',
    headers: { 'content-type': 'application/octet-stream', 'content-length': String(bytes) },
    body: blob.stream(),
  });
  return bytes / MiB / ((performance.now() - start) / 1000);
}

/**
 * Sends `pages` sequential GETs to the ingest server over one keep-alive
 * connection and returns the time in ms. The server returns a fixed page of
 * 100 tags, so this is the floor of a paged tag walk with this client and
 * node:http.
 */
export async function measurePageWalk(server: IngestServer, pages: number): Promise<number> {
  const start = performance.now();
  for (let page = 0; page < pages; page++) {
    await expectStatus([200], server.target, '/v2/bench/tags/tags/list?n=100');
  }
  return performance.now() - start;
}
