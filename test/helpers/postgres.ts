// A throwaway PostgreSQL server for the test run, and one database per mcr
// test server on it.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import pg from 'pg';

import { unusedPort } from './mcrctl.js';

/**
 * The URL of the test run's PostgreSQL server, database `postgres`. When it is
 * set, `startServer` gives every mcr it starts a database of its own there.
 */
export const POSTGRES_URL_ENV = 'MCR_TEST_POSTGRES_URL';

/** Returns the URL of this test run's PostgreSQL server, or undefined when tests run on SQLite. */
export function testPostgresUrl(): string | undefined {
  return process.env[POSTGRES_URL_ENV] || undefined;
}

export interface PostgresServer {
  /** URL of the `postgres` database, as the superuser `mcr`. */
  url: string;
  /** Stops the server and removes its files. */
  stop(): Promise<void>;
}

/** Finds the bin folder of the newest PostgreSQL that Debian's packages installed. */
function binDirectory(): string {
  const root = '/usr/lib/postgresql';
  const versions = existsSync(root)
    ? readdirSync(root)
        .filter((name) => existsSync(path.join(root, name, 'bin', 'postgres')))
        .sort((a, b) => Number(b) - Number(a))
    : [];
  if (versions.length === 0) {
    throw new Error(`no PostgreSQL server under ${root}; run scripts/install-test-deps.sh`);
  }
  return path.join(root, versions[0] as string, 'bin');
}

/**
 * Returns the user and group to run the server as. PostgreSQL refuses to run
 * as root, so a root test run hands the server to the `postgres` account
 * that the Debian package creates.
 */
function serverIdentity(): { uid: number; gid: number } | undefined {
  if (process.getuid?.() !== 0) return undefined;
  const id = (flag: string) => spawnSync('id', [flag, 'postgres'], { encoding: 'utf8' });
  const uid = id('-u');
  const gid = id('-g');
  if (uid.status !== 0 || gid.status !== 0) {
    throw new Error('tests run as root and there is no postgres account to run PostgreSQL as');
  }
  return { uid: Number(uid.stdout.trim()), gid: Number(gid.stdout.trim()) };
}

/**
 * Creates a cluster in a new temporary folder and starts PostgreSQL on a free
 * loopback port. Commits do not wait for the disk (synchronous_commit): the
 * data is thrown away with the folder.
 */
export async function startPostgres(): Promise<PostgresServer> {
  const bin = binDirectory();
  const identity = serverIdentity();
  const folder = mkdtempSync(path.join(tmpdir(), 'mcr-postgres-'));
  if (identity) chownSync(folder, identity.uid, identity.gid);
  const dataDir = path.join(folder, 'data');

  const initdb = spawnSync(
    path.join(bin, 'initdb'),
    ['-D', dataDir, '-U', 'mcr', '-A', 'trust', '-E', 'UTF8', '--no-sync', '--locale=C'],
    { encoding: 'utf8', ...identity },
  );
  if (initdb.status !== 0) {
    rmSync(folder, { recursive: true, force: true });
    throw new Error(`initdb failed: ${initdb.stderr}`);
  }

  const port = await unusedPort();
  const settings = {
    listen_addresses: '127.0.0.1',
    unix_socket_directories: folder,
    max_connections: '300',
    // On, though nothing waits for it: synchronous_commit is off. A test
    // turns that on for one session to slow its commits with commit_delay,
    // which PostgreSQL ignores when fsync is off.
    fsync: 'on',
    synchronous_commit: 'off',
    full_page_writes: 'off',
  };
  const args = ['-D', dataDir, '-p', String(port)];
  for (const [name, value] of Object.entries(settings)) args.push('-c', `${name}=${value}`);
  const child: ChildProcess = spawn(path.join(bin, 'postgres'), args, {
    stdio: ['ignore', 'ignore', 'pipe'],
    ...identity,
  });
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr = (stderr + chunk.toString()).slice(-4000);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  const url = `postgres://mcr@127.0.0.1:${port}/postgres`;
  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
    await exited;
    rmSync(folder, { recursive: true, force: true });
  };

  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) {
      await stop();
      throw new Error(`PostgreSQL exited at start: ${stderr}`);
    }
    const client = new pg.Client({ connectionString: url });
    try {
      await client.connect();
      await client.end();
      return { url, stop };
    } catch (error) {
      await client.end().catch(() => undefined);
      if (Date.now() > deadline) {
        await stop();
        throw new Error(`PostgreSQL did not accept connections within 30 s: ${String(error)}`);
      }
      await sleep(100);
    }
  }
}

/** Runs one statement on the server's `postgres` database. */
async function administer(serverUrl: string, statement: string): Promise<void> {
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    await client.query(statement);
  } finally {
    await client.end();
  }
}

/**
 * Returns the URL of the database of the test server whose data directory
 * is `dataDir`, or undefined when tests run on SQLite.
 */
export function databaseUrlFor(dataDir: string): string | undefined {
  const serverUrl = testPostgresUrl();
  return serverUrl === undefined ? undefined : databaseUrl(serverUrl, dataDir);
}

function databaseUrl(serverUrl: string, dataDir: string): string {
  const url = new URL(serverUrl);
  url.pathname = `/${databaseName(dataDir)}`;
  return url.toString();
}

/**
 * Creates the database of the test server whose data directory is `dataDir`
 * unless it exists, so that a server restarted on the same directory finds
 * its metadata again. Returns its URL.
 */
export async function createDatabaseFor(serverUrl: string, dataDir: string): Promise<string> {
  try {
    await administer(serverUrl, `create database ${databaseName(dataDir)}`);
  } catch (error) {
    // 42P04: it exists, from an earlier start on this data directory. 23505:
    // a server started at the same time on the same directory is creating it.
    const code = (error as { code?: string }).code;
    if (code !== '42P04' && code !== '23505') throw error;
    await waitForDatabase(serverUrl, databaseName(dataDir));
  }
  return databaseUrl(serverUrl, dataDir);
}

/** Waits until another connection's `create database` of `name` has committed. */
async function waitForDatabase(serverUrl: string, name: string): Promise<void> {
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const found = await client.query('select 1 from pg_database where datname = $1', [name]);
      if (found.rowCount) return;
      if (Date.now() > deadline) throw new Error(`database ${name} did not appear within 10 s`);
      await sleep(50);
    }
  } finally {
    await client.end();
  }
}

/** Drops the database of a test server's data directory, if it is there. */
export async function dropDatabaseFor(serverUrl: string, dataDir: string): Promise<void> {
  await administer(serverUrl, `drop database if exists ${databaseName(dataDir)} with (force)`);
}

/** Derives a database name from the data directory's absolute path. */
function databaseName(dataDir: string): string {
  return `mcr_${createHash('sha256').update(path.resolve(dataDir)).digest('hex').slice(0, 24)}`;
}
