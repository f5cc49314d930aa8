import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

/** The reference registry: CNCF Distribution 2.8 from the Debian package `docker-registry`. */
export const REFERENCE_BINARY = '/usr/bin/docker-registry';

/** A running reference registry on a loopback port with its own storage directory. */
export interface ReferenceServer {
  /** Base URL, for example http://127.0.0.1:41234 */
  url: string;
  /** Directory of the filesystem storage driver. */
  storageDir: string;
  /** Output the registry printed so far (stdout and stderr together). */
  output(): string;
  /** Stops the registry with SIGTERM, waits for it to exit and removes its directory. */
  stop(): Promise<void>;
}

/** Picks a free loopback port by listening on port 0 and closing again. */
export async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') {
    throw new Error(`listening on port 0 returned no port: ${String(address)}`);
  }
  return address.port;
}

/**
 * Starts the reference registry with filesystem storage in a fresh temporary
 * directory, deletes enabled and no authentication, and resolves once
 * GET /v2/ returns 200.
 */
export async function startReference(): Promise<ReferenceServer> {
  const dir = mkdtempSync(path.join(tmpdir(), 'mcr-reference-'));
  const port = await freePort();
  const configPath = path.join(dir, 'config.yml');
  const config = [
    'version: 0.1',
    'log:',
    '  level: warn',
    '  accesslog:',
    '    disabled: true',
    'storage:',
    '  filesystem:',
    `    rootdirectory: ${JSON.stringify(path.join(dir, 'storage'))}`,
    '  delete:',
    '    enabled: true',
    '  maintenance:',
    '    uploadpurging:',
    '      enabled: false',
    'http:',
    `  addr: 127.0.0.1:${port}`,
    '',
  ].join('\n');
  writeFileSync(configPath, config);

  const child = spawn(REFERENCE_BINARY, ['serve', configPath], {
    env: { PATH: process.env.PATH ?? '', HOME: dir },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));

  const stop = async () => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
    await exited;
    rmSync(dir, { recursive: true, force: true });
  };

  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      await stop();
      throw new Error(`${REFERENCE_BINARY} exited before it was ready; output: ${output}`);
    }
    try {
      const response = await fetch(`${url}/v2/`);
      await response.arrayBuffer();
      if (response.status === 200) break;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      await stop();
      throw new Error(
        `${REFERENCE_BINARY} did not return 200 for GET /v2/ within 20 s; output: ${output}`,
      );
    }
    await sleep(50);
  }

  return { url, storageDir: path.join(dir, 'storage'), output: () => output, stop };
}
