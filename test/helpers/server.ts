import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { appendFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { createDatabaseFor, dropDatabaseFor, testPostgresUrl } from './postgres.js';

/** The compiled server entry point, next to this compiled helper. */
export const MCR_ENTRY = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  '../../src/cli/mcr.js',
);

/**
 * Node.js flags and environment that every launcher of mcr sets (package.json,
 * the shebang, the packaging files). A small young generation, collections
 * during uploads and two malloc arenas keep resident memory low. 16 libuv
 * threads let concurrent uploads wait on fsync together instead of four at a
 * time.
 */
export const MCR_NODE_FLAGS = ['--max-semi-space-size=2', '--expose-gc'];
export const MCR_NODE_ENV = { UV_THREADPOOL_SIZE: '16', MALLOC_ARENA_MAX: '2' };

/** The first admin account every test server starts with. */
export const ADMIN_USER = 'admin';
export const ADMIN_PASSWORD = 'test-admin-password';

/** Builds an Authorization header value for Basic credentials. */
export function basicAuth(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`).toString('base64')}`;
}

/** A real mcr process on a loopback port with its own data directory. */
export interface TestServer {
  /** Base URL, for example http://127.0.0.1:41234 */
  url: string;
  /** host:port, as container clients want it. */
  host: string;
  port: number;
  dataDir: string;
  process: ChildProcess;
  /** `admin:password`, for a client's --creds option. */
  creds: string;
  /**
   * Sends a request as the admin account (Basic credentials). `target` is a
   * path such as /v2/ or a full URL on this server.
   */
  fetch(target: string, init?: RequestInit): Promise<Response>;
  /** Every JSON log line the server printed so far. */
  logs: Array<Record<string, unknown>>;
  /** Stops the server with SIGTERM and waits for it to exit. */
  stop(): Promise<void>;
  /** Kills the server with SIGKILL and waits for it to exit. */
  kill(): Promise<void>;
  /** Stops the server and removes its data directory. */
  cleanup(): Promise<void>;
}

export interface StartOptions {
  /** Reuse this data directory (for restart tests); a fresh one otherwise. */
  dataDir?: string;
  env?: Record<string, string>;
  port?: number;
}

/**
 * Starts mcr and resolves once it logs that it is listening. On a PostgreSQL
 * test run (MCR_TEST_POSTGRES_URL), a server whose environment names no
 * database driver gets the database of its data directory on that server.
 */
export async function startServer(options: StartOptions = {}): Promise<TestServer> {
  const dataDir = options.dataDir ?? mkdtempSync(path.join(tmpdir(), 'mcr-test-'));
  const postgres = options.env?.MCR_DATABASE_DRIVER === undefined ? testPostgresUrl() : undefined;
  const database = postgres
    ? {
        MCR_DATABASE_DRIVER: 'postgres',
        MCR_DATABASE_URL: await createDatabaseFor(postgres, dataDir),
      }
    : {};
  const child = spawn(process.execPath, [...MCR_NODE_FLAGS, MCR_ENTRY, 'serve'], {
    env: {
      PATH: process.env.PATH ?? '',
      HOME: process.env.HOME ?? tmpdir(),
      MCR_DATA_DIR: dataDir,
      MCR_SERVER_LISTEN_ADDR: `127.0.0.1:${options.port ?? 0}`,
      MCR_LOG_LEVEL: 'info',
      MCR_ADMIN_PASSWORD: ADMIN_PASSWORD,
      ...MCR_NODE_ENV,
      ...database,
      ...options.env,
    },
    stdio: ['ignore', 'pipe', 'pipe'],
  });

  const logs: Array<Record<string, unknown>> = [];
  let stderr = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
  });

  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  const port = await new Promise<number>((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`mcr did not log "mcr listening" within 20 s; stderr: ${stderr}`));
    }, 20_000);
    const lines = createInterface({ input: child.stdout! });
    lines.on('line', (line) => {
      // MCR_TEST_SERVER_LOG names a file that collects every server's log, for debugging.
      if (process.env.MCR_TEST_SERVER_LOG)
        appendFileSync(process.env.MCR_TEST_SERVER_LOG, `${line}\n`);
      let entry: Record<string, unknown>;
      try {
        entry = JSON.parse(line) as Record<string, unknown>;
      } catch {
        return;
      }
      logs.push(entry);
      if (entry.msg === 'mcr listening') {
        clearTimeout(timer);
        resolve((entry.address as { port: number }).port);
      }
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      reject(new Error(`mcr exited (code ${code}, signal ${signal}) before listening: ${stderr}`));
    });
  });

  const stopWith = async (signal: NodeJS.Signals) => {
    if (child.exitCode === null && child.signalCode === null) child.kill(signal);
    await exited;
  };

  const url = `http://127.0.0.1:${port}`;
  const authorization = basicAuth(ADMIN_USER, ADMIN_PASSWORD);
  return {
    url,
    creds: `${ADMIN_USER}:${ADMIN_PASSWORD}`,
    fetch(target, init = {}) {
      const headers = new Headers(init.headers);
      if (!headers.has('authorization')) headers.set('authorization', authorization);
      return fetch(target.startsWith('http') ? target : `${url}${target}`, { ...init, headers });
    },
    host: `127.0.0.1:${port}`,
    port,
    dataDir,
    process: child,
    logs,
    stop: () => stopWith('SIGTERM'),
    kill: () => stopWith('SIGKILL'),
    async cleanup() {
      await stopWith('SIGTERM');
      if (!options.dataDir) {
        rmSync(dataDir, { recursive: true, force: true });
        if (postgres) await dropDatabaseFor(postgres, dataDir);
      }
    },
  };
}

/** Creates a human account through the admin API. Throws unless the server returns 201. */
export async function createAccount(
  server: TestServer,
  username: string,
  password: string,
  role: 'admin' | 'user' | 'guest' = 'user',
): Promise<void> {
  const response = await server.fetch('/v1/accounts', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username, password, role, kind: 'human' }),
  });
  if (response.status !== 201) {
    throw new Error(`create account ${username}: ${response.status} ${await response.text()}`);
  }
}

/**
 * Runs `mcr serve` on a fresh data directory with `env` and waits for it to
 * exit, for tests of what mcr prints when it cannot start. Gives up after 20 s.
 */
export function runUntilExit(env: Record<string, string>): {
  status: number | null;
  stderr: string;
} {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-exit-'));
  try {
    const result = spawnSync(process.execPath, [MCR_ENTRY, 'serve'], {
      env: {
        PATH: process.env.PATH ?? '',
        MCR_DATA_DIR: dataDir,
        MCR_SERVER_LISTEN_ADDR: '127.0.0.1:0',
        ...env,
      },
      encoding: 'utf8',
      timeout: 20_000,
    });
    return { status: result.status, stderr: result.stderr };
  } finally {
    rmSync(dataDir, { recursive: true, force: true });
  }
}
