import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The compiled mcrctl entry point, next to this compiled helper. */
export const MCRCTL_ENTRY = path.resolve(
  path.dirname(fileURLToPath(import.meta.url)),
  '../../src/cli/mcrctl.js',
);

/** The outcome of one mcrctl run. */
export interface McrctlResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface McrctlOptions {
  /** Path of the config file (MCRCTL_CONFIG); a fresh temporary one otherwise. */
  config?: string;
  /** Extra environment variables; undefined values remove a variable. */
  env?: Record<string, string | undefined>;
  /** Bytes written to stdin before it is closed. */
  input?: string;
  /** Maximum run time in milliseconds before the process is killed. */
  timeoutMs?: number;
}

/** Returns a path for a config file inside a new temporary directory that does not exist yet. */
export function tempConfigPath(): string {
  return path.join(mkdtempSync(path.join(tmpdir(), 'mcrctl-test-')), 'config', 'mcrctl.json');
}

/**
 * Builds the environment of an mcrctl process: no MCRCTL_* variable of the
 * test runner leaks in, and HOME points at a temporary directory so that a
 * real ~/.config is never read.
 */
function mcrctlEnv(options: McrctlOptions): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '',
    HOME: mkdtempSync(path.join(tmpdir(), 'mcrctl-home-')),
    MCRCTL_CONFIG: options.config ?? tempConfigPath(),
  };
  for (const [key, value] of Object.entries(options.env ?? {})) {
    if (value === undefined) delete env[key];
    else env[key] = value;
  }
  return env;
}

/** Starts mcrctl with piped stdio and returns the child process. */
export function spawnMcrctl(args: string[], options: McrctlOptions = {}): ChildProcess {
  return spawn(process.execPath, [MCRCTL_ENTRY, ...args], {
    env: mcrctlEnv(options),
    stdio: ['pipe', 'pipe', 'pipe'],
  });
}

/** Runs mcrctl to completion and returns its exit status and output. */
export async function runMcrctl(
  args: string[],
  options: McrctlOptions = {},
): Promise<McrctlResult> {
  const child = spawnMcrctl(args, options);
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  child.stdin?.end(options.input ?? '');

  const timeoutMs = options.timeoutMs ?? 30_000;
  const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  const code = await new Promise<number | null>((resolve) =>
    child.once('close', (exitCode) => resolve(exitCode)),
  );
  clearTimeout(timer);
  return { code, stdout, stderr };
}

/** Returns a loopback port that nothing listens on (bound once, then released). */
export async function unusedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') throw new Error('no port was assigned');
  return address.port;
}
