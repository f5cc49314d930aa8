// Runs the Docker CLI against a private dockerd that startDockerd started.
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';

import type { Daemon } from './daemons.js';
import { run, runCommand, type ClientSandbox, type CommandResult } from './images.js';

const COMMAND_TIMEOUT_MS = 60_000;

/** What `docker image inspect` reports about an image, in part. */
export interface DockerImage {
  /** Digest of the image's config. */
  Id: string;
  /** `repository@digest` of every manifest the image was pulled or pushed by. */
  RepoDigests: string[];
}

/**
 * The Docker CLI with its own configuration directory (DOCKER_CONFIG), so
 * each instance keeps its own login and its own local manifest lists.
 */
export class DockerCli {
  constructor(
    private readonly dockerd: Daemon,
    private readonly sandbox: ClientSandbox,
    /** DOCKER_CONFIG directory; created when missing. */
    readonly configDir: string,
  ) {
    mkdirSync(configDir, { recursive: true });
  }

  /**
   * Runs the CLI and resolves with its exit status and output. It never
   * rejects on a non-zero status, and it kills the CLI after 60 s.
   */
  command(args: string[], input?: string): Promise<CommandResult> {
    return runCommand('docker', args, {
      env: {
        PATH: process.env.PATH ?? '',
        HOME: this.sandbox.env.HOME,
        DOCKER_HOST: `unix://${this.dockerd.socket}`,
        DOCKER_CONFIG: this.configDir,
        // `docker manifest` is experimental in Docker CLI 20.10.
        DOCKER_CLI_EXPERIMENTAL: 'enabled',
      },
      input,
      timeoutMs: COMMAND_TIMEOUT_MS,
    });
  }

  /** Runs the CLI and returns its standard output; fails the test on a non-zero status. */
  async run(...args: string[]): Promise<string> {
    const result = await this.command(args);
    assert.equal(
      result.status,
      0,
      `docker ${args.join(' ')} failed with exit status ${result.status}: ${result.stderr.trim()}`,
    );
    return result.stdout;
  }

  /** Runs the CLI and returns its standard error; fails the test when the command succeeds. */
  async failure(...args: string[]): Promise<string> {
    const result = await this.command(args);
    assert.notEqual(
      result.status,
      0,
      `docker ${args.join(' ')} succeeded, but it was expected to fail: ${result.stdout.trim()}`,
    );
    return result.stderr;
  }

  /** Runs `docker login` with the password on standard input and returns the result. */
  login(registry: string, username: string, password: string): Promise<CommandResult> {
    return this.command(['login', '--username', username, '--password-stdin', registry], password);
  }

  /** Logs in and fails the test unless the login succeeds. */
  async loginOrFail(registry: string, username: string, password: string): Promise<void> {
    const result = await this.login(registry, username, password);
    assert.equal(result.status, 0, `docker login as ${username}: ${result.stderr.trim()}`);
  }

  /** Loads a docker-archive file and checks that dockerd names the image `reference`. */
  async load(archive: string, reference: string): Promise<void> {
    const output = await this.run('load', '--input', archive);
    assert.match(output, new RegExp(`Loaded image: ${escapeRegExp(reference)}`));
  }

  async inspectImage(reference: string): Promise<DockerImage> {
    const output = await this.run('image', 'inspect', reference);
    const [image] = JSON.parse(output) as DockerImage[];
    assert.ok(image, `docker image inspect ${reference} returns one image`);
    return image;
  }

  /** Pushes `reference` and returns the manifest digest that the CLI printed. */
  async push(reference: string): Promise<string> {
    return pushedDigest(await this.run('push', reference));
  }
}

/**
 * Writes the image tagged `tag` in the OCI layout `layout` as a
 * docker-archive file named `reference`, with skopeo, for `docker load`.
 */
export async function writeDockerArchive(
  sandbox: ClientSandbox,
  layout: string,
  tag: string,
  archive: string,
  reference: string,
): Promise<void> {
  await run('skopeo', ['copy', `oci:${layout}:${tag}`, `docker-archive:${archive}:${reference}`], {
    env: sandbox.env,
  });
}

/** Reads the manifest digest from the "TAG: digest: sha256:... size: N" line of `docker push`. */
export function pushedDigest(output: string): string {
  const match = /: digest: (sha256:[0-9a-f]{64}) size: \d+/.exec(output);
  assert.ok(match?.[1], `docker push output has a digest line:\n${output}`);
  return match[1];
}

export function escapeRegExp(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
