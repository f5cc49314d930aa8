import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { openTestDatabase, queryTestDatabase } from './database.js';
import { DOCKER_LIST, DOCKER_MANIFEST, OCI_INDEX, OCI_MANIFEST, sha256 } from './oci.js';
import type { TestServer } from './server.js';

/** A garbage collection run as GET /v1/gc/:id returns it. */
export interface GcRunJson {
  id: number;
  trigger: string;
  state: 'running' | 'succeeded' | 'failed';
  dry_run: boolean;
  started_at: string;
  finished_at: string | null;
  progress: Record<string, number | string>;
  blobs_deleted: number;
  bytes_freed: number;
  manifests_deleted: number;
  uploads_deleted: number;
  error: string | null;
}

/** Starts a run with POST /v1/gc and throws unless the server accepts it with 202. */
export async function startGc(server: TestServer, body: object = {}): Promise<GcRunJson> {
  const response = await server.fetch('/v1/gc', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify(body),
  });
  const text = await response.text();
  if (response.status !== 202) throw new Error(`POST /v1/gc returned ${response.status}: ${text}`);
  return JSON.parse(text) as GcRunJson;
}

export async function getGcRun(server: TestServer, id: number): Promise<GcRunJson> {
  const response = await server.fetch(`/v1/gc/${id}`);
  const text = await response.text();
  if (response.status !== 200)
    throw new Error(`GET /v1/gc/${id} returned ${response.status}: ${text}`);
  return JSON.parse(text) as GcRunJson;
}

/** Polls a run until it is no longer running; throws after `timeoutMs`. */
export async function waitForGc(
  server: TestServer,
  id: number,
  timeoutMs = 60_000,
): Promise<GcRunJson> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const run = await getGcRun(server, id);
    if (run.state !== 'running') return run;
    if (Date.now() > deadline) {
      throw new Error(`garbage collection run ${id} still running after ${timeoutMs} ms`);
    }
    await sleep(20);
  }
}

/** Starts a run and waits for it to finish. */
export async function runGc(server: TestServer, body: object = {}): Promise<GcRunJson> {
  const started = await startGc(server, body);
  return waitForGc(server, started.id);
}

/** Blob rows: digest mapped to size. */
export async function blobRows(dataDir: string): Promise<Map<string, number>> {
  const { rows } = await queryTestDatabase(dataDir, 'select digest, size from blobs');
  return new Map(rows.map((row) => [row.digest as string, Number(row.size)]));
}

/** Digests of every blob file under the data directory. */
export function blobFiles(dataDir: string): Set<string> {
  const files = new Set<string>();
  const root = path.join(dataDir, 'blobs');
  for (const algorithm of readdirOrEmpty(root)) {
    for (const prefix of readdirOrEmpty(path.join(root, algorithm))) {
      for (const hex of readdirOrEmpty(path.join(root, algorithm, prefix))) {
        files.add(`${algorithm}:${hex}`);
      }
    }
  }
  return files;
}

/** Path of a blob's file under the data directory. */
export function blobFilePath(dataDir: string, digest: string): string {
  const [algorithm, hex] = digest.split(':') as [string, string];
  return path.join(dataDir, 'blobs', algorithm, hex.slice(0, 2), hex);
}

/**
 * Checks the store against the database: every blob file's bytes hash to the
 * digest its path names, and every blob row has a file of the recorded size.
 * Returns one line per problem.
 */
export async function storeProblems(dataDir: string): Promise<string[]> {
  const problems: string[] = [];
  const files = blobFiles(dataDir);
  for (const digest of files) {
    const [algorithm] = digest.split(':') as [string];
    const bytes = readFileSync(blobFilePath(dataDir, digest));
    const actual = `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
    if (actual !== digest) problems.push(`file ${digest} holds bytes of ${actual}`);
  }
  for (const [digest, size] of await blobRows(dataDir)) {
    if (!files.has(digest)) {
      problems.push(`row ${digest} has no file`);
      continue;
    }
    const length = readFileSync(blobFilePath(dataDir, digest)).length;
    if (length !== size) problems.push(`row ${digest} records ${size} bytes, file has ${length}`);
  }
  return problems;
}

/**
 * Checks the database's references: every manifest_references row of kind
 * blob points at an existing blob row with the same digest. Returns one line
 * per problem.
 */
export async function referenceProblems(dataDir: string): Promise<string[]> {
  const { rows } = await queryTestDatabase(
    dataDir,
    `select r.digest as digest, b.digest as stored from manifest_references r
     left join blobs b on b.id = r.blob_id where r.kind = 'blob'`,
  );
  return rows
    .filter((row) => row.stored !== row.digest)
    .map(
      (row) => `manifest reference ${String(row.digest)} points at blob row ${String(row.stored)}`,
    );
}

const MANIFEST_ACCEPT = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(', ');

/**
 * Pulls a manifest (and, for an index, every child) with all its blobs and
 * checks every digest. Returns one line per problem, so none means complete.
 */
export async function pullProblems(
  server: TestServer,
  repository: string,
  reference: string,
): Promise<string[]> {
  const response = await server.fetch(`/v2/${repository}/manifests/${reference}`, {
    headers: { Accept: MANIFEST_ACCEPT },
  });
  if (response.status !== 200) {
    return [`${repository}:${reference}: manifest returned ${response.status}`];
  }
  const body = Buffer.from(await response.arrayBuffer());
  if (reference.includes(':') && sha256(body) !== reference) {
    return [`${repository}@${reference}: manifest bytes hash to ${sha256(body)}`];
  }

  const manifest = JSON.parse(body.toString('utf8')) as {
    manifests?: Array<{ digest: string }>;
    config?: { digest: string };
    layers?: Array<{ digest: string }>;
  };
  const problems: string[] = [];
  for (const child of manifest.manifests ?? []) {
    problems.push(...(await pullProblems(server, repository, child.digest)));
  }
  const blobs = [manifest.config, ...(manifest.layers ?? [])].filter(
    (descriptor): descriptor is { digest: string } => descriptor !== undefined,
  );
  for (const { digest } of blobs) {
    const blob = await server.fetch(`/v2/${repository}/blobs/${digest}`);
    if (blob.status !== 200) {
      problems.push(`${repository}:${reference}: blob ${digest} returned ${blob.status}`);
      await blob.body?.cancel();
      continue;
    }
    const bytes = Buffer.from(await blob.arrayBuffer());
    if (sha256(bytes) !== digest) {
      problems.push(`${repository}:${reference}: blob ${digest} hashes to ${sha256(bytes)}`);
    }
  }
  return problems;
}

/**
 * Writes `count` small blobs straight into a server's data directory and
 * database, next to the running server: files plus blob rows and links into
 * `repository`, created an hour ago, so garbage collection finds them
 * unreferenced and old. Returns their digests mapped to their bytes.
 */
export async function insertGarbageBlobs(
  dataDir: string,
  repository: string,
  count: number,
): Promise<Map<string, Buffer>> {
  const db = await openTestDatabase(dataDir);
  const createdAt = Date.now() - 3_600_000;
  const blobs = new Map<string, Buffer>();
  try {
    await db.query('begin');
    const inserted = await db.query(
      `insert into repositories (name, created_at) values (?, ?)
       on conflict (name) do update set name = excluded.name returning id`,
      [repository, createdAt],
    );
    const repositoryId = inserted.rows[0]?.id as number;
    for (let i = 0; i < count; i++) {
      const bytes = randomBytes(64 + (i % 200));
      const digest = sha256(bytes);
      const file = blobFilePath(dataDir, digest);
      mkdirSync(path.dirname(file), { recursive: true });
      writeFileSync(file, bytes);
      const blob = await db.query(
        'insert into blobs (digest, size, created_at) values (?, ?, ?) returning id',
        [digest, bytes.length, createdAt],
      );
      await db.query(
        'insert into repository_blobs (repository_id, blob_id, created_at) values (?, ?, ?)',
        [repositoryId, blob.rows[0]?.id, createdAt],
      );
      blobs.set(digest, bytes);
    }
    await db.query('commit');
  } finally {
    await db.close();
  }
  return blobs;
}

function readdirOrEmpty(directory: string): string[] {
  try {
    return readdirSync(directory);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw error;
  }
}
