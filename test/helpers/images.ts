import { execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';

import { OCI_INDEX, sha256 } from './oci.js';

const execFileAsync = promisify(execFile);

/** Files of one image layer: path relative to the image root, mapped to the file's content. */
export type FileTree = Record<string, Buffer>;

/** An OCI content descriptor as it appears in index.json, indexes and manifests. */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  annotations?: Record<string, string>;
  platform?: { architecture: string; os: string };
}

/** An OCI image index. The index.json of a layout has the same shape. */
export interface ImageIndex {
  schemaVersion: number;
  mediaType?: string;
  manifests: Descriptor[];
}

/** An OCI image manifest or Docker schema 2 manifest. */
export interface ImageManifest {
  schemaVersion: number;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
}

/**
 * Configuration that keeps skopeo, podman and buildah on loopback and out of
 * host state. HOME and the auth file point into the sandbox, so the clients
 * read no credentials from the host.
 */
export interface ClientSandbox {
  dir: string;
  /** The whole environment for client processes. Nothing else is inherited. */
  env: NodeJS.ProcessEnv;
}

const REF_NAME = 'org.opencontainers.image.ref.name';

/**
 * Runs a program without a shell and resolves with its standard output.
 * Rejects with the command line, the exit status and standard error.
 */
export async function run(
  file: string,
  args: string[],
  options: { env?: NodeJS.ProcessEnv; timeoutMs?: number } = {},
): Promise<string> {
  try {
    const { stdout } = await execFileAsync(file, args, {
      env: options.env,
      timeout: options.timeoutMs ?? 120_000,
      killSignal: 'SIGKILL',
      maxBuffer: 64 * 1024 * 1024,
      encoding: 'utf8',
    });
    return stdout;
  } catch (error) {
    const failure = error as Error & { code?: number | string; signal?: string; stderr?: string };
    if (failure.code === 'ENOENT') {
      throw new Error(`${file} not found on PATH; install it with scripts/install-test-deps.sh`, {
        cause: error,
      });
    }
    const status = failure.signal ? `signal ${failure.signal}` : `exit status ${failure.code}`;
    throw new Error(
      `${file} ${args.join(' ')} failed with ${status}: ${failure.stderr?.trim() || failure.message}`,
      { cause: error },
    );
  }
}

/** Exit status and output of a program that `runCommand` ran. */
export interface CommandResult {
  /** Exit status, or null when a signal ended the program. */
  status: number | null;
  stdout: string;
  stderr: string;
}

/**
 * Runs a program without a shell, writes `input` to its standard input and
 * resolves with its exit status and output. Unlike `run`, it resolves on a
 * non-zero status, so a test can check how a client fails. It kills the
 * program with SIGKILL after `timeoutMs` (default 120 s).
 */
export function runCommand(
  file: string,
  args: string[],
  options: { env?: NodeJS.ProcessEnv; input?: string | Buffer; timeoutMs?: number } = {},
): Promise<CommandResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, {
      env: options.env,
      stdio: ['pipe', 'pipe', 'pipe'],
      timeout: options.timeoutMs ?? 120_000,
      killSignal: 'SIGKILL',
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.once('error', (error: Error & { code?: string }) => {
      if (error.code === 'ENOENT') {
        reject(
          new Error(`${file} not found on PATH; install it with scripts/install-test-deps.sh`),
        );
      } else {
        reject(error);
      }
    });
    child.once('close', (status) => resolve({ status, stdout, stderr }));
    child.stdin.end(options.input ?? '');
  });
}

/**
 * Writes the sandbox configuration under `dir` and returns the environment
 * that points the clients at it:
 * - registries.conf has no unqualified-search registries, so a short name
 *   fails instead of resolving to a public registry, and blocks docker.io.
 * - containers.conf moves the podman temporary directory, the image copy
 *   directory and the network configuration (buildah and podman create a
 *   lock file there) into the sandbox, and selects the cgroupfs cgroup
 *   manager and file events, which need no systemd.
 *
 * NOTE: as root, skopeo 1.9, podman 4.3 and buildah 1.28 still write their
 * blob info cache to /var/lib/containers/cache. No command-line option of
 * theirs moves it.
 */
export function createClientSandbox(dir: string): ClientSandbox {
  const home = path.join(dir, 'home');
  const tmp = path.join(dir, 'tmp');
  const networks = path.join(dir, 'networks');
  for (const directory of [home, tmp, networks]) mkdirSync(directory, { recursive: true });

  const authFile = path.join(dir, 'auth.json');
  writeFileSync(authFile, '{"auths":{}}\n');

  const registriesConf = path.join(dir, 'registries.conf');
  writeFileSync(
    registriesConf,
    [
      'unqualified-search-registries = []',
      'short-name-mode = "enforcing"',
      '',
      '[[registry]]',
      'location = "docker.io"',
      'blocked = true',
      '',
    ].join('\n'),
  );

  const containersConf = path.join(dir, 'containers.conf');
  writeFileSync(
    containersConf,
    [
      '[engine]',
      'cgroup_manager = "cgroupfs"',
      'events_logger = "file"',
      `tmp_dir = ${JSON.stringify(path.join(dir, 'podman-tmp'))}`,
      `image_copy_tmp_dir = ${JSON.stringify(tmp)}`,
      '',
      '[network]',
      `network_config_dir = ${JSON.stringify(networks)}`,
      '',
    ].join('\n'),
  );

  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: home,
    TMPDIR: tmp,
    REGISTRY_AUTH_FILE: authFile,
    CONTAINERS_REGISTRIES_CONF: registriesConf,
    CONTAINERS_CONF: containersConf,
  };
  // Rootless podman and buildah keep their runtime state there.
  if (process.env.XDG_RUNTIME_DIR) env.XDG_RUNTIME_DIR = process.env.XDG_RUNTIME_DIR;
  return { dir, env };
}

/** Global podman and buildah options for a private vfs store under `storageDir`. */
export function storageArgs(storageDir: string): string[] {
  return [
    '--root',
    path.join(storageDir, 'root'),
    '--runroot',
    path.join(storageDir, 'runroot'),
    '--storage-driver',
    'vfs',
  ];
}

/** Creates files of random, incompressible bytes. `sizes` maps each path to its size in bytes. */
export function randomFiles(sizes: Record<string, number>): FileTree {
  const files: FileTree = {};
  for (const [file, size] of Object.entries(sizes)) files[file] = randomBytes(size);
  return files;
}

/** Writes every file of `files` below `dir`, creating directories as needed. */
export function writeTree(dir: string, files: FileTree): void {
  for (const [file, content] of Object.entries(files)) {
    const target = path.join(dir, file);
    mkdirSync(path.dirname(target), { recursive: true });
    writeFileSync(target, content);
  }
}

/**
 * Builds an image with umoci in the OCI layout `layout` (created when
 * missing) under the tag `tag`, one layer per entry of `layers`, and removes
 * the blobs that no tag references. `workDir` receives the layer sources.
 * Returns the descriptor of the new manifest.
 */
export async function buildUmociImage(options: {
  layout: string;
  tag: string;
  layers: FileTree[];
  workDir: string;
  architecture?: string;
  os?: string;
}): Promise<Descriptor> {
  const { layout, tag } = options;
  const image = `${layout}:${tag}`;
  if (!existsSync(path.join(layout, 'index.json'))) {
    await run('umoci', ['init', '--layout', layout]);
  }
  await run('umoci', ['new', '--image', image]);

  for (const [number, files] of options.layers.entries()) {
    const source = path.join(options.workDir, `${tag}-layer-${number}`);
    writeTree(source, files);
    await run('umoci', ['insert', '--rootless', '--image', image, source, '/']);
  }

  const platform: string[] = [];
  if (options.architecture) platform.push('--architecture', options.architecture);
  if (options.os) platform.push('--os', options.os);
  if (platform.length > 0) await run('umoci', ['config', '--image', image, ...platform]);

  await run('umoci', ['gc', '--layout', layout]);
  return taggedDescriptor(layout, tag);
}

/**
 * Writes an OCI image index of the images tagged `childTags` in `layout`,
 * with each child's platform taken from its config, and makes it the only
 * entry of index.json under `tag`. Blobs that only the child tags referenced
 * stay, because the index references them. Returns the index's descriptor.
 */
export async function writeImageIndex(
  layout: string,
  tag: string,
  childTags: string[],
): Promise<Descriptor> {
  const children: Descriptor[] = childTags.map((childTag) => {
    const child = taggedDescriptor(layout, childTag);
    const manifest = readJsonBlob<ImageManifest>(layout, child.digest);
    const config = readJsonBlob<{ architecture: string; os: string }>(
      layout,
      manifest.config.digest,
    );
    return {
      mediaType: child.mediaType,
      digest: child.digest,
      size: child.size,
      platform: { architecture: config.architecture, os: config.os },
    };
  });

  const index = Buffer.from(
    JSON.stringify({ schemaVersion: 2, mediaType: OCI_INDEX, manifests: children }),
  );
  const digest = sha256(index);
  writeFileSync(blobPath(layout, digest), index);

  const entry: Descriptor = {
    mediaType: OCI_INDEX,
    digest,
    size: index.length,
    annotations: { [REF_NAME]: tag },
  };
  writeFileSync(
    path.join(layout, 'index.json'),
    JSON.stringify({ schemaVersion: 2, manifests: [entry] }),
  );
  await run('umoci', ['gc', '--layout', layout]);
  return entry;
}

/**
 * Builds an image from scratch with buildah in the vfs store `storageDir`,
 * one commit (so one layer) per entry of `layers`, and names it `name`
 * (for example localhost/project/app:v1). `workDir` receives the layer
 * sources. Returns the image ID, which is the hex digest of its config.
 */
export async function buildBuildahImage(options: {
  sandbox: ClientSandbox;
  storageDir: string;
  name: string;
  layers: FileTree[];
  workDir: string;
}): Promise<string> {
  const buildah = (...args: string[]) =>
    run('buildah', [...storageArgs(options.storageDir), ...args], { env: options.sandbox.env });

  let imageId = '';
  for (const [number, files] of options.layers.entries()) {
    const base = number === 0 ? 'scratch' : options.name;
    const container = (await buildah('from', '--pull=never', base)).trim();
    const source = path.join(options.workDir, `buildah-layer-${number}`);
    writeTree(source, files);
    await buildah('copy', container, source, '/');
    const output = await buildah('commit', '--rm', '--format', 'oci', container, options.name);
    imageId = lastLine(output);
  }
  return imageId;
}

/** Reads index.json of an OCI layout. */
export function readLayoutIndex(layout: string): ImageIndex {
  return JSON.parse(readFileSync(path.join(layout, 'index.json'), 'utf8')) as ImageIndex;
}

/** Finds the index.json entry of `tag`. Throws when the layout has no such tag. */
export function taggedDescriptor(layout: string, tag: string): Descriptor {
  const index = readLayoutIndex(layout);
  const entry = index.manifests.find((descriptor) => descriptor.annotations?.[REF_NAME] === tag);
  if (!entry) {
    const tags = index.manifests.map((descriptor) => descriptor.annotations?.[REF_NAME]);
    throw new Error(`tag ${tag} not found in ${layout}/index.json; it has ${tags.join(', ')}`);
  }
  return entry;
}

/** Path of a blob file in an OCI layout. */
export function blobPath(layout: string, digest: string): string {
  const [algorithm, hex] = digest.split(':');
  return path.join(layout, 'blobs', algorithm ?? '', hex ?? '');
}

/** Reads a blob of an OCI layout. */
export function readLayoutBlob(layout: string, digest: string): Buffer {
  return readFileSync(blobPath(layout, digest));
}

/** Reads a blob of an OCI layout and parses it as JSON. */
export function readJsonBlob<T>(layout: string, digest: string): T {
  return JSON.parse(readLayoutBlob(layout, digest).toString('utf8')) as T;
}

/** Reads every blob file of an OCI layout, keyed by the digest its path names. */
export function readAllBlobs(layout: string): Map<string, Buffer> {
  const blobs = new Map<string, Buffer>();
  const root = path.join(layout, 'blobs');
  for (const algorithm of readdirSync(root)) {
    for (const hex of readdirSync(path.join(root, algorithm))) {
      blobs.set(`${algorithm}:${hex}`, readFileSync(path.join(root, algorithm, hex)));
    }
  }
  return blobs;
}

/**
 * Reads the regular files of an uncompressed tar archive, keyed by path
 * without a leading "./" or "/". Understands ustar headers and PAX `path`
 * records, and skips other entry types such as directories and links.
 */
export function readTarFiles(archive: Buffer): Map<string, Buffer> {
  const files = new Map<string, Buffer>();
  let offset = 0;
  let paxPath: string | undefined;

  while (offset + 512 <= archive.length) {
    const header = archive.subarray(offset, offset + 512);
    if (header.every((byte) => byte === 0)) break;

    const name = headerString(header, 0, 100);
    const size = parseInt(headerString(header, 124, 12).trim() || '0', 8);
    const type = String.fromCharCode(header[156] ?? 0);
    const prefix = headerString(header, 345, 155);
    const body = archive.subarray(offset + 512, offset + 512 + size);
    offset += 512 + Math.ceil(size / 512) * 512;

    if (type === 'x') {
      paxPath = /(?:^|\n)\d+ path=([^\n]*)\n/.exec(body.toString('utf8'))?.[1];
      continue;
    }
    if (type === 'g') continue;

    const fullName = paxPath ?? (prefix ? `${prefix}/${name}` : name);
    paxPath = undefined;
    if (type === '0' || type === '\0') {
      files.set(fullName.replace(/^(\.\/|\/)+/, ''), Buffer.from(body));
    }
  }
  return files;
}

function headerString(header: Buffer, start: number, length: number): string {
  const field = header.subarray(start, start + length);
  const end = field.indexOf(0);
  return field.subarray(0, end === -1 ? field.length : end).toString('utf8');
}

function lastLine(output: string): string {
  const lines = output.trim().split('\n');
  return lines[lines.length - 1]?.trim() ?? '';
}
