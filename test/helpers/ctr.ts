// Runs ctr against a private containerd that startContainerd started.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';

import type { Daemon } from './daemons.js';
import { run, runCommand, type ClientSandbox, type CommandResult } from './images.js';

const execFileAsync = promisify(execFile);

/**
 * ctr on one containerd. Every call names a containerd namespace, and the
 * daemon isolates the content of namespaces, so a test that uses a fresh
 * namespace starts with an empty content store.
 */
export class Ctr {
  private namespaceCount = 0;

  constructor(
    private readonly containerd: Daemon,
    private readonly sandbox: ClientSandbox,
  ) {}

  /** Returns a namespace no earlier call of this instance returned. */
  freshNamespace(): string {
    this.namespaceCount += 1;
    return `mcr-test-${this.namespaceCount}`;
  }

  private args(namespace: string, args: string[]): string[] {
    return ['--address', this.containerd.socket, '--namespace', namespace, ...args];
  }

  private get env(): NodeJS.ProcessEnv {
    return { PATH: process.env.PATH ?? '', HOME: this.sandbox.env.HOME };
  }

  /** Runs ctr in `namespace` and returns its standard output; rejects on a non-zero status. */
  run(namespace: string, ...args: string[]): Promise<string> {
    return run('ctr', this.args(namespace, args), { env: this.env });
  }

  /** Runs ctr in `namespace` and resolves with its exit status and output. */
  command(namespace: string, args: string[], input?: string | Buffer): Promise<CommandResult> {
    return runCommand('ctr', this.args(namespace, args), { env: this.env, input });
  }

  /** Runs ctr and returns the error message with its standard error. Fails the test when ctr succeeds. */
  async failure(namespace: string, ...args: string[]): Promise<string> {
    try {
      await this.run(namespace, ...args);
    } catch (error) {
      return (error as Error).message;
    }
    assert.fail(`ctr ${args.join(' ')} succeeded, but it was expected to fail`);
  }

  /**
   * Pushes the local image `local` (by default `reference` itself) to the
   * remote `reference` over plain HTTP with `credentials` (user:password).
   */
  async push(namespace: string, credentials: string, reference: string, local?: string) {
    const images = local ? [reference, local] : [reference];
    await this.run(namespace, 'images', 'push', '--plain-http', '--user', credentials, ...images);
  }

  /** Pulls and unpacks `reference` over plain HTTP with `credentials` (user:password). */
  async pull(namespace: string, credentials: string, reference: string, ...options: string[]) {
    await this.run(
      namespace,
      'images',
      'pull',
      '--plain-http',
      ...options,
      '--snapshotter',
      'native',
      '--user',
      credentials,
      reference,
    );
  }

  /** Imports an oci-archive file (the names it carries become image names) with the native snapshotter. */
  async importArchive(namespace: string, archive: string, ...options: string[]): Promise<void> {
    await this.run(namespace, 'images', 'import', ...options, '--snapshotter', 'native', archive);
  }

  /** Reads the target digest of `reference` from `ctr images ls`. */
  async imageDigest(namespace: string, reference: string): Promise<string> {
    const output = await this.run(namespace, 'images', 'ls');
    const line = output.split('\n').find((row) => row.split(/\s+/)[0] === reference);
    assert.ok(line, `ctr images ls in ${namespace} lists ${reference}:\n${output}`);
    const digest = line.split(/\s+/)[2] ?? '';
    assert.match(digest, /^sha256:[0-9a-f]{64}$/, `digest column of: ${line}`);
    return digest;
  }

  /** Reads one blob from the content store of `namespace`. */
  async contentGet(namespace: string, digest: string): Promise<Buffer> {
    const { stdout } = await execFileAsync(
      'ctr',
      this.args(namespace, ['content', 'get', digest]),
      {
        encoding: 'buffer',
        maxBuffer: 64 * 1024 * 1024,
        timeout: 60_000,
        env: this.env,
      },
    );
    return stdout;
  }

  /**
   * Writes `data` into the content store of `namespace` under its digest
   * and labels it as a garbage collection root. containerd's garbage
   * collector deletes content that no image, lease or root label
   * references, and `ctr content ingest` leaves none, so a collection
   * between ingest and label removes the blob: then this writes it again,
   * up to three times.
   */
  async contentIngest(namespace: string, digest: string, data: Buffer): Promise<void> {
    let labelError = '';
    for (let attempt = 1; attempt <= 3; attempt += 1) {
      const ingest = await this.command(
        namespace,
        [
          'content',
          'ingest',
          '--expected-digest',
          digest,
          '--expected-size',
          String(data.length),
          `ingest-${digest}`,
        ],
        data,
      );
      assert.equal(ingest.status, 0, `ctr content ingest ${digest}: ${ingest.stderr.trim()}`);
      const label = await this.command(namespace, [
        'content',
        'label',
        digest,
        `containerd.io/gc.root=${new Date().toISOString()}`,
      ]);
      if (label.status === 0) return;
      labelError = label.stderr.trim();
    }
    assert.fail(`ctr content label ${digest} failed after 3 ingests: ${labelError}`);
  }
}

/**
 * Writes the image tagged `tag` in the OCI layout `layout` as an
 * oci-archive file that names it `reference`, with skopeo, for
 * `ctr images import`. `all` copies every image of an index.
 */
export async function writeOciArchive(
  sandbox: ClientSandbox,
  layout: string,
  tag: string,
  archive: string,
  reference: string,
  all = false,
): Promise<void> {
  const options = all ? ['--all'] : [];
  await run(
    'skopeo',
    ['copy', ...options, `oci:${layout}:${tag}`, `oci-archive:${archive}:${reference}`],
    { env: sandbox.env },
  );
}
