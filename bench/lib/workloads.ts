// The registry workloads of bench/run.ts. Each one runs against one target
// and returns its figures; setup steps (digests, seed data) are not timed.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

import {
  buildUmociImage,
  randomFiles,
  run,
  taggedDescriptor,
  type ClientSandbox,
} from '../../test/helpers/images.js';
import {
  expectStatus,
  GeneratedBlob,
  locationOf,
  MiB,
  runConcurrently,
  sha256,
  withQuery,
  type Target,
} from './http.js';

const execFileAsync = promisify(execFile);
const LOAD_GENERATOR = fileURLToPath(new URL('./load-generator.js', import.meta.url));

/** Workload sizes; `--quick` shrinks every one of them. */
export interface Sizes {
  bigBlobBytes: number;
  chunkBytes: number;
  smallBlobs: number;
  smallBlobBytes: number;
  /**
   * Small blobs pushed untimed before the timed ones, so that both servers are
   * warmed up. mcr's first few hundred pushes after a start are slower: 51%
   * of its CPU samples during the first 200 were in the node binary (V8's
   * interpreter, baseline code and compiler), and 21% after 2,000 more.
   */
  smallBlobWarmup: number;
  /** Concurrent clients for blob pushes and tag creation. */
  clients: number;
  loadSeconds: number;
  loadConnections: number;
  tags: number;
  repositories: number;
  pageSize: number;
  /** Layers of the image that skopeo pushes and pulls, and the size of each. */
  imageLayers: number;
  imageLayerBytes: number;
}

export const FULL_SIZES: Sizes = {
  bigBlobBytes: 1024 * MiB,
  chunkBytes: 64 * MiB,
  smallBlobs: 200,
  smallBlobBytes: 4096,
  smallBlobWarmup: 600,
  clients: 16,
  loadSeconds: 15,
  loadConnections: 64,
  tags: 10_000,
  repositories: 2_000,
  pageSize: 100,
  imageLayers: 4,
  imageLayerBytes: 50 * MiB,
};

export const QUICK_SIZES: Sizes = {
  bigBlobBytes: 8 * MiB,
  chunkBytes: 2 * MiB,
  smallBlobs: 20,
  smallBlobBytes: 4096,
  smallBlobWarmup: 4,
  clients: 16,
  loadSeconds: 2,
  loadConnections: 64,
  tags: 200,
  repositories: 50,
  pageSize: 100,
  imageLayers: 2,
  imageLayerBytes: MiB,
};

/** Figure name to measured value, from one workload run on one target. */
export type Figures = Record<string, number>;

const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar';

const octetStream = (length: number) => ({
  'content-type': 'application/octet-stream',
  'content-length': String(length),
});

/**
 * Uploads one blob from memory with POST then PUT ?digest=, the two-request
 * flow that every registry supports.
 */
export async function pushSmallBlob(
  target: Target,
  repository: string,
  data: Buffer,
): Promise<string> {
  const digest = sha256(data);
  const started = await expectStatus([202], target, `/v2/${repository}/blobs/uploads/`, {
    method: 'POST',
    headers: { 'content-length': '0' },
  });
  await expectStatus([201], target, withQuery(locationOf(target, started), { digest }), {
    method: 'PUT',
    headers: { 'content-type': 'application/octet-stream' },
    body: data,
  });
  return digest;
}

/**
 * Pushes a big generated blob in one request (mcr: POST ?digest=) or, on a
 * registry without single-POST upload, with POST then a PUT that carries the
 * whole body; then pushes a second one in PATCH chunks, and downloads the
 * first. Returns MiB/s for each.
 */
export async function runBigBlob(
  target: Target,
  sizes: Sizes,
  seed: number,
  repository: string,
): Promise<Figures> {
  const size = sizes.bigBlobBytes;
  const monolithic = new GeneratedBlob(seed * 2, size);
  const chunked = new GeneratedBlob(seed * 2 + 1, size);
  const monolithicDigest = await monolithic.digest();
  const chunkedDigest = await chunked.digest();

  let start = performance.now();
  if (target.singlePostUpload) {
    const url = withQuery(new URL(`/v2/${repository}/blobs/uploads/`, target.url), {
      digest: monolithicDigest,
    });
    await expectStatus([201], target, url, {
      method: 'POST',
      headers: octetStream(size),
      body: monolithic.stream(),
    });
  } else {
    const started = await expectStatus([202], target, `/v2/${repository}/blobs/uploads/`, {
      method: 'POST',
      headers: { 'content-length': '0' },
    });
    const url = withQuery(locationOf(target, started), { digest: monolithicDigest });
    await expectStatus([201], target, url, {
      method: 'PUT',
      headers: octetStream(size),
      body: monolithic.stream(),
    });
  }
  const monolithicSeconds = (performance.now() - start) / 1000;

  start = performance.now();
  let session = await expectStatus([202], target, `/v2/${repository}/blobs/uploads/`, {
    method: 'POST',
    headers: { 'content-length': '0' },
  });
  let location = locationOf(target, session);
  for (let offset = 0; offset < size; offset += sizes.chunkBytes) {
    const end = Math.min(size, offset + sizes.chunkBytes);
    session = await expectStatus([202], target, location, {
      method: 'PATCH',
      headers: { ...octetStream(end - offset), 'content-range': `${offset}-${end - 1}` },
      body: chunked.stream(offset, end),
    });
    location = locationOf(target, session);
  }
  await expectStatus([201], target, withQuery(location, { digest: chunkedDigest }), {
    method: 'PUT',
    headers: { 'content-length': '0' },
  });
  const chunkedSeconds = (performance.now() - start) / 1000;

  start = performance.now();
  const download = await expectStatus(
    [200],
    target,
    `/v2/${repository}/blobs/${monolithicDigest}`,
    {
      discardBody: true,
    },
  );
  const getSeconds = (performance.now() - start) / 1000;
  if (download.bytes !== size) {
    throw new Error(`${target.name}: GET blob returned ${download.bytes} bytes, expected ${size}`);
  }

  const mib = size / MiB;
  return {
    'blob push, monolithic': mib / monolithicSeconds,
    'blob push, chunked': mib / chunkedSeconds,
    'blob GET': mib / getSeconds,
  };
}

/**
 * Pushes distinct small blobs with concurrent clients and returns blobs/s.
 * A few distinct blobs go first, untimed, into another repository.
 */
export async function runSmallBlobs(
  target: Target,
  sizes: Sizes,
  seed: number,
  repository: string,
): Promise<Figures> {
  const makeBlobs = (label: string, count: number) =>
    Array.from({ length: count }, (_, i) => {
      const data = Buffer.alloc(sizes.smallBlobBytes, i % 251);
      data.write(`${label} ${seed} ${i}`);
      return data;
    });
  const push = (blobs: Buffer[], into: string) =>
    runConcurrently(blobs.length, sizes.clients, async (i) => {
      await pushSmallBlob(target, into, blobs[i] as Buffer);
    });

  await push(makeBlobs('warm-up blob', sizes.smallBlobWarmup), `${repository}-warmup`);
  const blobs = makeBlobs('small blob', sizes.smallBlobs);
  const start = performance.now();
  await push(blobs, repository);
  const seconds = (performance.now() - start) / 1000;
  return { 'small blob push': blobs.length / seconds };
}

/** An OCI image manifest with one config and one layer, and optional annotations. */
function imageManifest(
  config: { digest: string; size: number },
  layer: { digest: string; size: number },
  annotations?: Record<string, string>,
): string {
  return JSON.stringify({
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: { mediaType: OCI_CONFIG, ...config },
    layers: [{ mediaType: OCI_LAYER, ...layer }],
    ...(annotations ? { annotations } : {}),
  });
}

/** Uploads a config blob and a layer blob and returns their descriptors. */
async function pushImageBlobs(target: Target, repository: string, seed: number) {
  const configData = Buffer.from(
    JSON.stringify({
      architecture: 'amd64',
      os: 'linux',
      rootfs: { type: 'layers', diff_ids: [] },
      seed,
    }),
  );
  const layerData = Buffer.alloc(1024, seed % 251);
  layerData.write(`layer ${seed}`);
  const config = {
    digest: await pushSmallBlob(target, repository, configData),
    size: configData.length,
  };
  const layer = {
    digest: await pushSmallBlob(target, repository, layerData),
    size: layerData.length,
  };
  return { config, layer };
}

async function putManifest(target: Target, repository: string, reference: string, body: string) {
  await expectStatus([201], target, `/v2/${repository}/manifests/${reference}`, {
    method: 'PUT',
    headers: { 'content-type': OCI_MANIFEST },
    body,
  });
}

/**
 * Sends `method` requests for one manifest by tag over many keep-alive
 * connections for a fixed time from a separate process, after a one-second
 * warm-up, and returns requests/s and latency percentiles in ms. GET uses
 * wrk (one thread). HEAD uses bench/lib/load-generator.ts, because wrk
 * stalls on a HEAD response that carries Content-Length.
 */
async function loadManifest(
  target: Target,
  sizes: Sizes,
  path: string,
  method: 'GET' | 'HEAD',
): Promise<{ rate: number; p50: number; p99: number }> {
  const url = new URL(path, target.url).href;
  const headers = { ...target.headers, accept: OCI_MANIFEST };
  const timeout = (sizes.loadSeconds + 30) * 1000;
  const generate = async (seconds: number) => {
    if (method === 'GET') {
      const args = [
        '--threads=1',
        `--connections=${sizes.loadConnections}`,
        `--duration=${seconds}s`,
        '--latency',
        ...Object.entries(headers).flatMap(([name, value]) => ['--header', `${name}: ${value}`]),
        url,
      ];
      const { stdout } = await execFileAsync('wrk', args, { timeout });
      return parseWrk(target, stdout);
    }
    const options = { url, method, headers, connections: sizes.loadConnections, seconds };
    const { stdout } = await execFileAsync(
      process.execPath,
      [LOAD_GENERATOR, JSON.stringify(options)],
      { timeout },
    );
    const result = JSON.parse(stdout) as { rate: number; p50: number; p99: number; errors: number };
    if (result.errors > 0) {
      throw new Error(`${target.name}: ${result.errors} ${method} requests failed under load`);
    }
    return result;
  };
  await generate(1);
  return generate(sizes.loadSeconds);
}

/** Reads requests/s, p50 and p99 (ms) from wrk's report; throws on any non-2xx/3xx response. */
export function parseWrk(
  target: Target,
  report: string,
): { rate: number; p50: number; p99: number } {
  const errors = /Non-2xx or 3xx responses: (\d+)/.exec(report);
  if (errors) throw new Error(`${target.name}: wrk saw ${errors[1]} error responses:\n${report}`);
  const socketErrors = /Socket errors: (.*)/.exec(report);
  if (socketErrors) throw new Error(`${target.name}: wrk saw socket errors: ${socketErrors[1]}`);
  const rate = /Requests\/sec:\s+([\d.]+)/.exec(report);
  if (!rate) throw new Error(`${target.name}: no Requests/sec in wrk's report:\n${report}`);
  const percentile = (label: string) => {
    const match = new RegExp(`^\\s+${label}%\\s+([\\d.]+)(us|ms|s)$`, 'm').exec(report);
    if (!match) throw new Error(`${target.name}: no ${label}% latency in wrk's report:\n${report}`);
    const scale = { us: 0.001, ms: 1, s: 1000 }[match[2] as 'us' | 'ms' | 's'];
    return Number(match[1]) * scale;
  };
  return { rate: Number(rate[1]), p50: percentile('50'), p99: percentile('99') };
}

/** Loads manifest GET and then HEAD by tag; returns requests/s, p50 and p99 (ms). */
export async function runManifestLoad(
  target: Target,
  sizes: Sizes,
  seed: number,
  repository: string,
): Promise<Figures> {
  const { config, layer } = await pushImageBlobs(target, repository, seed);
  await putManifest(target, repository, 'latest', imageManifest(config, layer));
  const path = `/v2/${repository}/manifests/latest`;
  const get = await loadManifest(target, sizes, path, 'GET');
  const head = await loadManifest(target, sizes, path, 'HEAD');
  return {
    'manifest GET': get.rate,
    'manifest GET p50': get.p50,
    'manifest GET p99': get.p99,
    'manifest HEAD': head.rate,
    'manifest HEAD p50': head.p50,
    'manifest HEAD p99': head.p99,
  };
}

/**
 * Fetches a listing and follows `Link: <…>; rel="next"` until the last page.
 * Returns every item of `field` and the number of pages.
 */
export async function walkListing(
  target: Target,
  path: string,
  field: 'tags' | 'repositories',
): Promise<{ items: string[]; pages: number }> {
  const items: string[] = [];
  let pages = 0;
  let next: string | undefined = path;
  while (next !== undefined) {
    const response = await expectStatus([200], target, next);
    pages += 1;
    const page = JSON.parse(response.body.toString()) as Record<string, string[] | null>;
    items.push(...(page[field] ?? []));
    const link = response.headers.link;
    const match = typeof link === 'string' ? /<([^>]+)>\s*;\s*rel="?next"?/.exec(link) : null;
    next = match?.[1];
    if (pages > 1_000_000)
      throw new Error(`${target.name}: ${path} did not end after 1,000,000 pages`);
  }
  return { items, pages };
}

/**
 * Creates many tags (each a distinct manifest) with concurrent clients, then
 * times a listing without `n` and a walk in pages of `pageSize`.
 */
export async function runTags(
  target: Target,
  sizes: Sizes,
  seed: number,
  repository: string,
): Promise<Figures> {
  const { config, layer } = await pushImageBlobs(target, repository, seed);
  let start = performance.now();
  await runConcurrently(sizes.tags, sizes.clients, async (i) => {
    const tag = `t${String(i).padStart(6, '0')}`;
    await putManifest(target, repository, tag, imageManifest(config, layer, { 'bench.tag': tag }));
  });
  const createSeconds = (performance.now() - start) / 1000;

  start = performance.now();
  const full = await walkListing(target, `/v2/${repository}/tags/list`, 'tags');
  const fullMs = performance.now() - start;
  start = performance.now();
  const walk = await walkListing(target, `/v2/${repository}/tags/list?n=${sizes.pageSize}`, 'tags');
  const walkMs = performance.now() - start;
  for (const [label, listing] of [
    ['listing', full],
    ['walk', walk],
  ] as const) {
    if (listing.items.length !== sizes.tags) {
      throw new Error(
        `${target.name}: tags ${label} returned ${listing.items.length} tags, expected ${sizes.tags}`,
      );
    }
  }
  return {
    'tag creation': sizes.tags / createSeconds,
    'tags listing, full': fullMs,
    'tags listing, pages': walkMs,
    'tags listing, page count': walk.pages,
  };
}

/**
 * Creates `count` repositories, each with one manifest whose blobs are
 * mounted from `bench/catalog-seed`. Not timed: the repositories are the data
 * set for `runCatalogWalk`.
 */
export async function createRepositories(target: Target, sizes: Sizes): Promise<void> {
  const seedRepository = 'bench/catalog-seed';
  const { config, layer } = await pushImageBlobs(target, seedRepository, 0);
  const manifest = imageManifest(config, layer);
  await runConcurrently(sizes.repositories, sizes.clients, async (i) => {
    const repository = `bench/catalog/r${String(i).padStart(5, '0')}`;
    for (const digest of [config.digest, layer.digest]) {
      await expectStatus(
        [201],
        target,
        `/v2/${repository}/blobs/uploads/?mount=${digest}&from=${seedRepository}`,
        {
          method: 'POST',
          headers: { 'content-length': '0' },
        },
      );
    }
    await putManifest(target, repository, 'latest', manifest);
  });
}

/** Walks the catalog in pages of `pageSize` and returns the time in ms. */
export async function runCatalogWalk(target: Target, sizes: Sizes): Promise<Figures> {
  const start = performance.now();
  const walk = await walkListing(target, `/v2/_catalog?n=${sizes.pageSize}`, 'repositories');
  const ms = performance.now() - start;
  const created = walk.items.filter((name) => name.startsWith('bench/catalog/r')).length;
  if (created !== sizes.repositories) {
    throw new Error(
      `${target.name}: catalog walk returned ${created} of the ${sizes.repositories} bench/catalog/ repositories`,
    );
  }
  return { 'catalog walk': ms, 'catalog page count': walk.pages };
}

/**
 * Builds an OCI layout with one image of `imageLayers` layers of random
 * bytes, distinct for each `seed`, so that skopeo cannot skip or mount a
 * blob it pushed in an earlier repetition. Not timed. Returns the layout
 * reference for skopeo (`oci:PATH:TAG`) and the manifest digest.
 */
export async function buildSkopeoImage(
  dir: string,
  sizes: Sizes,
  seed: number,
): Promise<{ source: string; digest: string }> {
  const layout = join(dir, `image-${seed}`);
  const layers = Array.from({ length: sizes.imageLayers }, (_, i) =>
    randomFiles({ [`seed-${seed}/layer-${i}.bin`]: sizes.imageLayerBytes }),
  );
  const descriptor = await buildUmociImage({
    layout,
    tag: 'bench',
    layers,
    workDir: join(dir, `sources-${seed}`),
  });
  rmSync(join(dir, `sources-${seed}`), { recursive: true, force: true });
  return { source: `oci:${layout}:bench`, digest: descriptor.digest };
}

/**
 * Pushes an image with skopeo from an OCI layout, then pulls it back into a
 * new layout, and returns the seconds each took. mcr gets the admin's
 * credentials, which skopeo exchanges for a bearer token.
 */
export async function runSkopeo(
  target: Target,
  image: { source: string; digest: string },
  sandbox: ClientSandbox,
  repository: string,
): Promise<Figures> {
  const host = new URL(target.url).host;
  const remote = `docker://${host}/${repository}:v1`;
  const credentials = (flag: string) => (target.creds ? [flag, target.creds] : []);

  let start = performance.now();
  await run(
    'skopeo',
    ['copy', '--dest-tls-verify=false', ...credentials('--dest-creds'), image.source, remote],
    { env: sandbox.env, timeoutMs: 600_000 },
  );
  const pushSeconds = (performance.now() - start) / 1000;

  const pulled = mkdtempSync(join(sandbox.dir, 'pull-'));
  try {
    start = performance.now();
    await run(
      'skopeo',
      ['copy', '--src-tls-verify=false', ...credentials('--src-creds'), remote, `oci:${pulled}:v1`],
      { env: sandbox.env, timeoutMs: 600_000 },
    );
    const pullSeconds = (performance.now() - start) / 1000;
    const digest = taggedDescriptor(pulled, 'v1').digest;
    if (digest !== image.digest) {
      throw new Error(`${target.name}: skopeo pulled manifest ${digest}, pushed ${image.digest}`);
    }
    return { 'skopeo push': pushSeconds, 'skopeo pull': pullSeconds };
  } finally {
    rmSync(pulled, { recursive: true, force: true });
  }
}
