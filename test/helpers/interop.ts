// Starts what an interop test file shares: a working directory, a client
// sandbox, an mcr process with a user account, and optionally a private
// containerd and a dockerd on it.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { startContainerd, startDockerd, type Daemon } from './daemons.js';
import { createClientSandbox, run, type ClientSandbox } from './images.js';
import {
  ADMIN_PASSWORD,
  ADMIN_USER,
  createAccount,
  startServer,
  type TestServer,
} from './server.js';

/** The processes and directories of one interop test file. */
export interface InteropEnvironment {
  /** Temporary directory that `stop` removes. */
  workDir: string;
  sandbox: ClientSandbox;
  server: TestServer;
  /** Present when started with `containerd` or `docker`. */
  containerd?: Daemon;
  /** Present when started with `docker`; its plain-HTTP registry is the server. */
  dockerd?: Daemon;
  /** Stops dockerd, containerd and mcr, in that order, and removes `workDir`. */
  stop(): Promise<void>;
}

/**
 * Starts mcr with an account `user` of role user, and containerd (for
 * `containerd` or `docker`) and dockerd (for `docker`) under a fresh
 * temporary directory named after `name`.
 */
export async function startInteropEnvironment(options: {
  name: string;
  user: { username: string; password: string };
  containerd?: boolean;
  docker?: boolean;
}): Promise<InteropEnvironment> {
  const workDir = mkdtempSync(path.join(tmpdir(), `mcr-${options.name}-`));
  const sandbox = createClientSandbox(path.join(workDir, 'clients'));
  const environment: InteropEnvironment = {
    workDir,
    sandbox,
    server: await startServer(),
    async stop() {
      await environment.dockerd?.stop();
      await environment.containerd?.stop();
      await environment.server.cleanup();
      rmSync(workDir, { recursive: true, force: true });
    },
  };

  try {
    if (options.containerd || options.docker) {
      environment.containerd = await startContainerd(path.join(workDir, 'containerd'));
    }
    if (options.docker && environment.containerd) {
      environment.dockerd = await startDockerd(
        path.join(workDir, 'dockerd'),
        environment.containerd.socket,
        [environment.server.host],
      );
    }
    await createAccount(environment.server, options.user.username, options.user.password);
  } catch (error) {
    await environment.stop();
    throw error;
  }
  return environment;
}

/**
 * Logs skopeo in to `server` as the admin account. podman and buildah read
 * the same login from the sandbox's auth file (REGISTRY_AUTH_FILE).
 */
export async function loginSandbox(sandbox: ClientSandbox, server: TestServer): Promise<void> {
  await run(
    'skopeo',
    [
      'login',
      '--tls-verify=false',
      '--username',
      ADMIN_USER,
      '--password',
      ADMIN_PASSWORD,
      server.host,
    ],
    { env: sandbox.env },
  );
}
