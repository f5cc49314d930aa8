import assert from 'node:assert/strict';
import { createCipheriv, createHash } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { describe, it } from 'node:test';

import Database from 'better-sqlite3';

import { OCI_MANIFEST, pushImage, sha256 } from './helpers/oci.js';
import {
  ADMIN_PASSWORD,
  ADMIN_USER,
  basicAuth,
  startServer,
  type TestServer,
} from './helpers/server.js';

// Each test kills mcr with SIGKILL in the middle of writes, restarts it on the
// same data directory and checks that the database is intact, that nothing
// half-written is served, and that the same pushes succeed afterwards.
// A SIGKILL ends the process but not the kernel, so writes that reached the
// page cache survive it. These tests therefore do not simulate a power loss.

const MiB = 1024 * 1024;

/** Size of the upload interrupted in the first test. */
const BIG_BLOB_SIZE = 200 * MiB;

function createDataDir(): string {
  return mkdtempSync(path.join(tmpdir(), 'mcr-crash-'));
}

/**
 * Streams `size` pseudo-random bytes: the AES-128-CTR keystream for a key
 * derived from `seed`, so the same seed always gives the same bytes without
 * holding them in memory. `onProgress` receives the running byte count.
 */
function generatedBytes(
  seed: string,
  size: number,
  onProgress?: (produced: number) => void,
): Readable {
  const key = createHash('sha256').update(seed).digest().subarray(0, 16);
  const cipher = createCipheriv('aes-128-ctr', key, Buffer.alloc(16));
  const zeros = Buffer.alloc(MiB);
  let produced = 0;
  return new Readable({
    highWaterMark: MiB,
    read() {
      if (produced >= size) {
        this.push(null);
        return;
      }
      const length = Math.min(MiB, size - produced);
      produced += length;
      this.push(cipher.update(zeros.subarray(0, length)));
      onProgress?.(produced);
    },
  });
}

async function digestOfGenerated(seed: string, size: number): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of generatedBytes(seed, size)) hash.update(chunk as Buffer);
  return `sha256:${hash.digest('hex')}`;
}

type StreamOutcome = { status: number; body: string } | { error: Error };

/**
 * Sends a request as the admin account with a streamed body. Resolves with the
 * response or the connection error.
 */
function streamRequest(
  server: TestServer,
  method: string,
  requestPath: string,
  headers: Record<string, string>,
  body: Readable,
): Promise<StreamOutcome> {
  return new Promise((resolve) => {
    const request = http.request(
      {
        host: '127.0.0.1',
        port: server.port,
        method,
        path: requestPath,
        headers: { Authorization: basicAuth(ADMIN_USER, ADMIN_PASSWORD), ...headers },
        agent: false,
      },
      (response) => {
        let text = '';
        response.setEncoding('utf8');
        response.on('data', (chunk: string) => (text += chunk));
        response.on('end', () => resolve({ status: response.statusCode ?? 0, body: text }));
        response.on('error', (error) => resolve({ error }));
      },
    );
    request.on('error', (error) => resolve({ error }));
    body.pipe(request);
  });
}

/**
 * Downloads a path from the server as the admin account, as a stream, and
 * returns the status, the byte count and the sha256 digest.
 */
function hashDownload(
  server: TestServer,
  requestPath: string,
): Promise<{ status: number; size: number; digest: string; header: string | undefined }> {
  const url = `${server.url}${requestPath}`;
  const headers = { Authorization: basicAuth(ADMIN_USER, ADMIN_PASSWORD) };
  return new Promise((resolve, reject) => {
    http
      .get(url, { agent: false, headers }, (response) => {
        const hash = createHash('sha256');
        let size = 0;
        response.on('data', (chunk: Buffer) => {
          size += chunk.length;
          hash.update(chunk);
        });
        response.on('end', () =>
          resolve({
            status: response.statusCode ?? 0,
            size,
            digest: `sha256:${hash.digest('hex')}`,
            header: response.headers['docker-content-digest'] as string | undefined,
          }),
        );
        response.on('error', reject);
      })
      .on('error', reject);
  });
}

/**
 * Opens the database read-only and runs SQLite's integrity and foreign key
 * checks. A read-only connection neither checkpoints nor deletes the WAL, so
 * the server that starts afterwards recovers the same files.
 */
function checkDatabase(dataDir: string): { integrity: string; foreignKeyViolations: unknown[] } {
  const db = new Database(path.join(dataDir, 'mcr.db'), { readonly: true, fileMustExist: true });
  try {
    return {
      integrity: db.pragma('integrity_check', { simple: true }) as string,
      foreignKeyViolations: db.pragma('foreign_key_check') as unknown[],
    };
  } finally {
    db.close();
  }
}

function queryDatabase<T>(dataDir: string, sql: string, ...parameters: unknown[]): T[] {
  const db = new Database(path.join(dataDir, 'mcr.db'), { readonly: true, fileMustExist: true });
  try {
    return db.prepare(sql).all(...parameters) as T[];
  } finally {
    db.close();
  }
}

function blobFile(dataDir: string, digest: string): string {
  const [algorithm, hex] = digest.split(':') as [string, string];
  return path.join(dataDir, 'blobs', algorithm, hex.slice(0, 2), hex);
}

function listFiles(directory: string): string[] {
  if (!existsSync(directory)) return [];
  return readdirSync(directory, { recursive: true, withFileTypes: true })
    .filter((entry) => entry.isFile())
    .map((entry) => path.relative(directory, path.join(entry.parentPath, entry.name)))
    .sort();
}

describe('SIGKILL during a large upload', () => {
  it('serves nothing of the upload and accepts it again', { timeout: 180_000 }, async (t) => {
    const seed = 'crash test blob';
    const digest = await digestOfGenerated(seed, BIG_BLOB_SIZE);
    const repository = 'crash/big';
    const dataDir = createDataDir();
    let server = await startServer({ dataDir });

    try {
      const start = await server.fetch(`/v2/${repository}/blobs/uploads/`, {
        method: 'POST',
      });
      assert.equal(start.status, 202);
      const location = start.headers.get('location');
      assert.ok(location, 'upload session has a Location header');
      const uploadId = location.slice(location.lastIndexOf('/') + 1);

      let producedAtKill = 0;
      let killed: Promise<void> | undefined;
      const running = server;
      const body = generatedBytes(seed, BIG_BLOB_SIZE, (produced) => {
        if (killed === undefined && produced >= BIG_BLOB_SIZE / 2) {
          producedAtKill = produced;
          killed = running.kill();
        }
      });
      const outcome = await streamRequest(
        server,
        'PATCH',
        location,
        {
          'Content-Type': 'application/octet-stream',
          'Content-Length': String(BIG_BLOB_SIZE),
          'Content-Range': `0-${BIG_BLOB_SIZE - 1}`,
        },
        body,
      );
      body.destroy();
      assert.ok(killed, 'the server was killed during the upload');
      await killed;
      assert.ok(
        'error' in outcome,
        `the interrupted PATCH got a response: ${JSON.stringify(outcome)}`,
      );

      const partialFile = path.join(dataDir, 'uploads', uploadId);
      const partialSize = existsSync(partialFile) ? statSync(partialFile).size : 0;
      t.diagnostic(
        `killed after ${(producedAtKill / MiB).toFixed(0)} MiB were generated; ` +
          `the upload file then had ${(partialSize / MiB).toFixed(1)} MiB`,
      );

      const afterKill = checkDatabase(dataDir);
      assert.equal(afterKill.integrity, 'ok', 'integrity check after the kill');
      assert.deepEqual(afterKill.foreignKeyViolations, [], 'foreign keys after the kill');

      server = await startServer({ dataDir });

      const head = await server.fetch(`/v2/${repository}/blobs/${digest}`, {
        method: 'HEAD',
      });
      assert.equal(head.status, 404, 'HEAD of the interrupted blob');
      assert.ok(!existsSync(blobFile(dataDir, digest)), 'no blob file for the digest');
      assert.deepEqual(listFiles(path.join(dataDir, 'blobs')), [], 'no file under blobs/');
      const rows = queryDatabase(dataDir, 'SELECT id FROM blobs WHERE digest = ?', digest);
      assert.deepEqual(rows, [], 'no blob row for the digest');

      t.diagnostic(
        `after the restart: ${listFiles(path.join(dataDir, 'uploads')).length} upload file(s) ` +
          `remain, the interrupted one with ${(partialSize / MiB).toFixed(1)} MiB`,
      );

      // The session's offset only moves when a chunk is complete.
      const status = await server.fetch(location);
      assert.equal(status.status, 204, 'the interrupted session still exists');
      assert.equal(status.headers.get('range'), '0-0', 'the session has no bytes');

      const push = await streamRequest(
        server,
        'POST',
        `/v2/${repository}/blobs/uploads/?digest=${digest}`,
        { 'Content-Type': 'application/octet-stream', 'Content-Length': String(BIG_BLOB_SIZE) },
        generatedBytes(seed, BIG_BLOB_SIZE),
      );
      assert.ok('status' in push, `push after the restart failed: ${String(push)}`);
      assert.equal(push.status, 201, `push after the restart: ${push.body}`);

      const download = await hashDownload(server, `/v2/${repository}/blobs/${digest}`);
      assert.equal(download.status, 200);
      assert.equal(download.size, BIG_BLOB_SIZE);
      assert.equal(download.digest, digest);
      assert.equal(download.header, digest);

      await server.stop();
      const afterStop = checkDatabase(dataDir);
      assert.equal(afterStop.integrity, 'ok', 'integrity check after the clean stop');
      assert.deepEqual(afterStop.foreignKeyViolations, [], 'foreign keys after the clean stop');
    } finally {
      await server.cleanup();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});

interface PushJob {
  repository: string;
  tag: string;
  layer: string;
}

/** Runs `work` on every item with at most `concurrency` running at once. */
async function runPool<T>(
  items: T[],
  concurrency: number,
  work: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: concurrency }, async () => {
    while (next < items.length) {
      const item = items[next++] as T;
      await work(item);
    }
  });
  await Promise.all(workers);
}

interface ManifestBody {
  config: { digest: string; size: number };
  layers: Array<{ digest: string; size: number }>;
}

/**
 * Fetches a manifest by tag and every blob it references, and returns what
 * does not match: a missing manifest or blob, or bytes whose digest or size
 * differ from the descriptor.
 */
async function verifyImage(
  server: TestServer,
  repository: string,
  tag: string,
  expectedDigest: string,
): Promise<string[]> {
  const problems: string[] = [];
  const response = await server.fetch(`/v2/${repository}/manifests/${tag}`, {
    headers: { Accept: OCI_MANIFEST },
  });
  if (response.status !== 200) return [`${repository}:${tag}: manifest GET ${response.status}`];
  const bytes = Buffer.from(await response.arrayBuffer());
  if (sha256(bytes) !== expectedDigest) {
    problems.push(`${repository}:${tag}: manifest is ${sha256(bytes)}, not ${expectedDigest}`);
  }
  const manifest = JSON.parse(bytes.toString('utf8')) as ManifestBody;
  for (const blob of [manifest.config, ...manifest.layers]) {
    const download = await hashDownload(server, `/v2/${repository}/blobs/${blob.digest}`);
    if (download.status !== 200) {
      problems.push(`${repository}:${tag}: blob ${blob.digest} GET ${download.status}`);
    } else if (download.digest !== blob.digest || download.size !== blob.size) {
      problems.push(
        `${repository}:${tag}: blob ${blob.digest} served ${download.size} bytes with digest ${download.digest}`,
      );
    }
  }
  return problems;
}

describe('SIGKILL during concurrent manifest pushes', () => {
  const REPOSITORIES = 5;
  const TAGS_PER_REPOSITORY = 10;
  const CONCURRENCY = 12;
  /** The kill comes after this many pushes were acknowledged with 201. */
  const KILL_AFTER = 25;

  const jobs: PushJob[] = [];
  for (let r = 0; r < REPOSITORIES; r++) {
    for (let i = 0; i < TAGS_PER_REPOSITORY; i++) {
      const repository = `crash/app${r}`;
      const tag = `v${i}`;
      // Deterministic content, so a second push produces the same digests.
      const layer = `layer of ${repository}:${tag}\n`.repeat(4096);
      jobs.push({ repository, tag, layer });
    }
  }
  const key = (job: PushJob) => `${job.repository}:${job.tag}`;

  it('keeps tags, manifests and blobs consistent', { timeout: 120_000 }, async (t) => {
    const dataDir = createDataDir();
    let server = await startServer({ dataDir });

    try {
      const acknowledged = new Map<string, string>();
      let killed: Promise<void> | undefined;
      let inFlightAtKill = 0;
      let inFlight = 0;
      let failed = 0;
      const running = server;
      await runPool(jobs, CONCURRENCY, async (job) => {
        if (killed) return;
        inFlight++;
        try {
          const result = await pushImage(running, job.repository, job.tag, {
            layer: job.layer,
          });
          acknowledged.set(key(job), result.digest);
          if (acknowledged.size >= KILL_AFTER && killed === undefined) {
            inFlightAtKill = inFlight - 1;
            killed = running.kill();
          }
        } catch {
          failed++;
        } finally {
          inFlight--;
        }
      });
      assert.ok(killed, 'the server was killed during the pushes');
      await killed;
      t.diagnostic(
        `killed with ${inFlightAtKill} pushes in flight; ${acknowledged.size} acknowledged, ` +
          `${failed} failed, ${jobs.length - acknowledged.size - failed} not started`,
      );

      const afterKill = checkDatabase(dataDir);
      assert.equal(afterKill.integrity, 'ok', 'integrity check after the kill');
      assert.deepEqual(afterKill.foreignKeyViolations, [], 'foreign keys after the kill');

      server = await startServer({ dataDir });

      // Every stored blob row must have its bytes: mcr renames the file into
      // place before it records the row.
      const blobs = queryDatabase<{ digest: string; size: number }>(
        dataDir,
        'SELECT digest, size FROM blobs',
      );
      const blobProblems = blobs
        .filter(({ digest, size }) => {
          const file = blobFile(dataDir, digest);
          return !existsSync(file) || statSync(file).size !== size;
        })
        .map(({ digest }) => digest);
      assert.deepEqual(blobProblems, [], 'blob rows whose file is missing or has another size');

      const tags = queryDatabase<{ repository: string; tag: string; digest: string }>(
        dataDir,
        `SELECT repositories.name AS repository, tags.name AS tag, manifests.digest AS digest
           FROM tags
           JOIN repositories ON repositories.id = tags.repository_id
           JOIN manifests ON manifests.id = tags.manifest_id`,
      );
      // The push's audit event commits in the push's own transaction, so no
      // surviving tag can lack it.
      const audited = new Set(
        queryDatabase<{ repository: string; reference: string; digest: string }>(
          dataDir,
          `SELECT repository, reference, digest FROM audit_events WHERE type = 'manifest.push'`,
        ).map((row) => `${row.repository}:${row.reference}@${row.digest}`),
      );
      const unaudited = tags
        .map((row) => `${row.repository}:${row.tag}@${row.digest}`)
        .filter((name) => !audited.has(name));
      assert.deepEqual(unaudited, [], 'tags that survived the kill without a manifest.push event');

      const recorded = new Set(blobs.map(({ digest }) => blobFile(dataDir, digest)));
      const unrecorded = listFiles(path.join(dataDir, 'blobs')).filter(
        (file) => !recorded.has(path.join(dataDir, 'blobs', file)),
      );
      t.diagnostic(
        `${tags.length} tags and ${blobs.length} blob rows survived the kill; ` +
          `${unrecorded.length} blob files have no row and ` +
          `${listFiles(path.join(dataDir, 'uploads')).length} upload files remain`,
      );
      const tagProblems: string[] = [];
      for (const { repository, tag, digest } of tags) {
        tagProblems.push(...(await verifyImage(server, repository, tag, digest)));
      }
      assert.deepEqual(tagProblems, [], 'tags whose manifest or blobs are not served intact');

      // A push acknowledged with 201 before the kill must survive it.
      const stored = new Map(tags.map((row) => [`${row.repository}:${row.tag}`, row.digest]));
      const lost = [...acknowledged]
        .filter(([name, digest]) => stored.get(name) !== digest)
        .map(([name]) => name);
      assert.deepEqual(lost, [], 'acknowledged pushes missing after the restart');

      const retryFailures: string[] = [];
      const pushed = new Map<string, string>();
      const restarted = server;
      await runPool(jobs, CONCURRENCY, async (job) => {
        try {
          const result = await pushImage(restarted, job.repository, job.tag, {
            layer: job.layer,
          });
          pushed.set(key(job), result.digest);
        } catch (error) {
          retryFailures.push(`${key(job)}: ${(error as Error).message}`);
        }
      });
      assert.deepEqual(retryFailures, [], 'pushes that failed after the restart');

      const changed = [...acknowledged]
        .filter(([name, digest]) => pushed.get(name) !== digest)
        .map(([name]) => name);
      assert.deepEqual(changed, [], 'repeated pushes that produced another digest');

      const finalProblems: string[] = [];
      for (const job of jobs) {
        const digest = pushed.get(key(job));
        if (digest === undefined) continue;
        finalProblems.push(...(await verifyImage(server, job.repository, job.tag, digest)));
      }
      assert.deepEqual(finalProblems, [], 'tags not served intact after the repeated pushes');
      assert.equal(pushed.size, jobs.length);

      await server.stop();
      const afterStop = checkDatabase(dataDir);
      assert.equal(afterStop.integrity, 'ok', 'integrity check after the clean stop');
      assert.deepEqual(afterStop.foreignKeyViolations, [], 'foreign keys after the clean stop');
    } finally {
      await server.cleanup();
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
