// Starts private containerd and dockerd processes for the interop tests.
// Every path they write (root, state, sockets, logs) is under a directory
// the caller owns, and no system configuration file is read, so the tests
// never touch a containerd or Docker service running on the host.
import { spawn, type ChildProcess } from 'node:child_process';
import { accessSync, constants, mkdirSync, openSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

import { run } from './images.js';

const READY_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 15_000;

/** A daemon this helper started, with its socket and log file. */
export interface Daemon {
  process: ChildProcess;
  /** Path of the daemon's API socket. */
  socket: string;
  /** File that receives the daemon's standard output and standard error. */
  logFile: string;
  /** Sends SIGTERM, waits for the exit and sends SIGKILL after 15 s. */
  stop(): Promise<void>;
}

/** Returns the full path of `name` on PATH, or undefined when no executable file has that name. */
export function findExecutable(name: string): string | undefined {
  for (const directory of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!directory) continue;
    const candidate = path.join(directory, name);
    try {
      accessSync(candidate, constants.X_OK);
      return candidate;
    } catch {
      // Not in this directory.
    }
  }
  return undefined;
}

/**
 * Starts containerd with a configuration under `dir`: its own root, state,
 * gRPC and ttrpc sockets, and /opt directory, and without the CRI plugin.
 * The bolt metadata plugin uses the "isolated" content sharing policy, so
 * a pull in a fresh namespace downloads every blob again instead of
 * reusing blobs another namespace already has.
 */
export async function startContainerd(dir: string): Promise<Daemon> {
  mkdirSync(dir, { recursive: true });
  const socket = path.join(dir, 'containerd.sock');
  const config = path.join(dir, 'config.toml');
  writeFileSync(
    config,
    [
      'version = 2',
      `root = ${JSON.stringify(path.join(dir, 'root'))}`,
      `state = ${JSON.stringify(path.join(dir, 'state'))}`,
      'disabled_plugins = ["io.containerd.grpc.v1.cri"]',
      '',
      '[grpc]',
      `  address = ${JSON.stringify(socket)}`,
      '',
      '[ttrpc]',
      `  address = ${JSON.stringify(`${socket}.ttrpc`)}`,
      '',
      '[plugins."io.containerd.internal.v1.opt"]',
      `  path = ${JSON.stringify(path.join(dir, 'opt'))}`,
      '',
      '[plugins."io.containerd.metadata.v1.bolt"]',
      '  content_sharing_policy = "isolated"',
      '',
    ].join('\n'),
  );

  const logFile = path.join(dir, 'containerd.log');
  const child = spawnDaemon('containerd', ['--config', config], logFile);
  const daemon = createDaemon(child, socket, logFile);
  await waitUntilReady(daemon, () =>
    run('ctr', ['--address', socket, 'version'], { timeoutMs: 5_000 }),
  );
  return daemon;
}

/**
 * Starts dockerd on the containerd at `containerdSocket`, with its data
 * root, exec root, pid file, API socket and configuration file under
 * `dir`. It uses the vfs storage driver, which needs no overlay mounts,
 * creates no bridge network and changes no iptables rules.
 * `insecureRegistries` lists host:port values dockerd may reach over
 * plain HTTP.
 */
export async function startDockerd(
  dir: string,
  containerdSocket: string,
  insecureRegistries: string[],
): Promise<Daemon> {
  mkdirSync(dir, { recursive: true });
  const socket = path.join(dir, 'docker.sock');
  const configFile = path.join(dir, 'daemon.json');
  writeFileSync(configFile, '{}\n');

  const args = [
    '--config-file',
    configFile,
    '--data-root',
    path.join(dir, 'data'),
    '--exec-root',
    path.join(dir, 'exec'),
    '--pidfile',
    path.join(dir, 'docker.pid'),
    '--host',
    `unix://${socket}`,
    '--containerd',
    containerdSocket,
    '--containerd-namespace',
    'mcr-test',
    '--containerd-plugins-namespace',
    'mcr-test-plugins',
    '--storage-driver',
    'vfs',
    '--iptables=false',
    '--ip-masq=false',
    '--bridge=none',
    ...insecureRegistries.flatMap((registry) => ['--insecure-registry', registry]),
  ];
  const logFile = path.join(dir, 'dockerd.log');
  const child = spawnDaemon('dockerd', args, logFile);
  const daemon = createDaemon(child, socket, logFile);
  await waitUntilReady(daemon, () =>
    run('docker', ['--host', `unix://${socket}`, 'version'], {
      timeoutMs: 5_000,
      env: { PATH: process.env.PATH ?? '', DOCKER_CONFIG: path.join(dir, 'cli-probe') },
    }),
  );
  return daemon;
}

function spawnDaemon(command: string, args: string[], logFile: string): ChildProcess {
  const log = openSync(logFile, 'a');
  return spawn(command, args, {
    env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin' },
    stdio: ['ignore', log, log],
  });
}

function createDaemon(child: ChildProcess, socket: string, logFile: string): Daemon {
  const exited = new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve();
    child.once('exit', () => resolve());
    child.once('error', () => resolve());
  });

  return {
    process: child,
    socket,
    logFile,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null || child.pid === undefined) return;
      child.kill('SIGTERM');
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<'timeout'>((resolve) => {
        timer = setTimeout(() => resolve('timeout'), STOP_TIMEOUT_MS);
      });
      const outcome = await Promise.race([exited, timedOut]);
      clearTimeout(timer);
      if (outcome === 'timeout') {
        child.kill('SIGKILL');
        await exited;
      }
    },
  };
}

/**
 * Retries `probe` until it succeeds. Throws with the daemon's log tail when
 * the daemon exits or 30 s pass.
 */
async function waitUntilReady(daemon: Daemon, probe: () => Promise<unknown>): Promise<void> {
  const deadline = Date.now() + READY_TIMEOUT_MS;
  let lastError: unknown;
  let spawnError: Error | undefined;
  daemon.process.once('error', (error) => {
    spawnError = error;
  });

  while (Date.now() < deadline) {
    if (spawnError) throw new Error(`failed to start daemon: ${spawnError.message}`);
    if (daemon.process.exitCode !== null || daemon.process.signalCode !== null) {
      throw new Error(
        `daemon exited with ${daemon.process.exitCode ?? daemon.process.signalCode} before its ` +
          `socket ${daemon.socket} was ready; log tail:\n${logTail(daemon.logFile)}`,
      );
    }
    try {
      await probe();
      return;
    } catch (error) {
      lastError = error;
    }
    await sleep(200);
  }

  await daemon.stop();
  const reason = lastError instanceof Error ? lastError.message : String(lastError);
  throw new Error(
    `daemon socket ${daemon.socket} not ready after ${READY_TIMEOUT_MS} ms: ${reason}; ` +
      `log tail:\n${logTail(daemon.logFile)}`,
  );
}

function logTail(logFile: string): string {
  try {
    return readFileSync(logFile, 'utf8').split('\n').slice(-20).join('\n');
  } catch {
    return '(no log)';
  }
}

/**
 * Returns why tests that need `names` must be skipped: the names not found on
 * PATH and how to install them. Returns undefined when all are there.
 */
export function missingExecutables(names: string[]): string | undefined {
  const missing = names.filter((name) => !findExecutable(name));
  if (missing.length === 0) return undefined;
  return `not found on PATH: ${missing.join(', ')}; install with scripts/install-test-deps.sh`;
}
