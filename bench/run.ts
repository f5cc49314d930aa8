// Runs mcr and the reference registry (CNCF Distribution 2.8,
// /usr/bin/docker-registry) side by side on loopback, each with a fresh data
// directory, runs every workload against both in alternating order, and
// prints the median of each figure with the ratio mcr/reference. Run it after
// a build:
//   npm run build && node dist/bench/run.js [--quick] [--only LABEL,...]
// --quick runs once with small sizes, for the smoke test. --only runs the
// named workloads alone (labels as in the progress lines, such as
// "small blobs" or "tags"), for measuring one change.
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { ADMIN_PASSWORD, ADMIN_USER, basicAuth, startServer } from '../test/helpers/server.js';
import { createClientSandbox } from '../test/helpers/images.js';
import { startReference } from '../test/helpers/reference.js';
import {
  measureIngest,
  measurePageWalk,
  measureSha256,
  startIngestServer,
} from './lib/ceilings.js';
import { MiB, type Target } from './lib/http.js';
import {
  createRepositories,
  FULL_SIZES,
  QUICK_SIZES,
  runBigBlob,
  runCatalogWalk,
  runManifestLoad,
  runSmallBlobs,
  runSkopeo,
  runTags,
  buildSkopeoImage,
  type Figures,
} from './lib/workloads.js';

/**
 * Name, unit and better direction of one figure in the table, with the
 * ratio mcr/reference it must reach (at least for higher-is-better figures,
 * at most otherwise). Without a target, mcr must merely be ahead.
 */
interface FigureSpec {
  name: string;
  unit: string;
  better: 'higher' | 'lower' | 'info';
  targetRatio?: number;
  /** An absolute limit on mcr's own value, for memory. */
  targetValue?: number;
}

const FIGURES: FigureSpec[] = [
  { name: 'blob push, monolithic', unit: 'MiB/s', better: 'higher', targetRatio: 1.5 },
  { name: 'blob push, chunked', unit: 'MiB/s', better: 'higher', targetRatio: 1.5 },
  { name: 'blob GET', unit: 'MiB/s', better: 'higher', targetRatio: 1 },
  { name: 'small blob push', unit: 'blobs/s', better: 'higher', targetRatio: 2 },
  { name: 'manifest GET', unit: 'req/s', better: 'higher', targetRatio: 5 },
  { name: 'manifest GET p50', unit: 'ms', better: 'lower' },
  { name: 'manifest GET p99', unit: 'ms', better: 'lower' },
  { name: 'manifest HEAD', unit: 'req/s', better: 'higher', targetRatio: 5 },
  { name: 'manifest HEAD p50', unit: 'ms', better: 'lower' },
  { name: 'manifest HEAD p99', unit: 'ms', better: 'lower' },
  { name: 'tag creation', unit: 'tags/s', better: 'higher', targetRatio: 3 },
  { name: 'tags listing, full', unit: 'ms', better: 'lower' },
  { name: 'tags listing, pages', unit: 'ms', better: 'lower' },
  { name: 'tags listing, page count', unit: 'pages', better: 'info' },
  { name: 'catalog walk', unit: 'ms', better: 'lower', targetRatio: 0.1 },
  { name: 'catalog page count', unit: 'pages', better: 'info' },
  { name: 'skopeo push', unit: 's', better: 'lower' },
  { name: 'skopeo pull', unit: 's', better: 'lower' },
  { name: 'peak RSS (VmHWM)', unit: 'MiB', better: 'lower', targetValue: 150 },
];

/** Describes the target of a figure and whether mcr's value met it. */
function judge(spec: FigureSpec, mcrValue: number, ratio: number): [string, string] {
  const verdict = (met: boolean) => (met ? 'met' : 'MISSED');
  if (spec.better === 'info') return ['', ''];
  if (spec.targetValue !== undefined) {
    return [`< ${spec.targetValue} ${spec.unit}`, verdict(mcrValue < spec.targetValue)];
  }
  const limit = spec.targetRatio;
  if (spec.better === 'higher') {
    return limit === undefined
      ? ['> 1', verdict(ratio > 1)]
      : [`>= ${limit}`, verdict(ratio >= limit)];
  }
  return limit === undefined
    ? ['< 1', verdict(ratio < 1)]
    : [`<= ${limit}`, verdict(ratio <= limit)];
}

type Workload = (target: Target, rep: number) => Promise<Figures>;

const quick = process.argv.includes('--quick');
const sizes = quick ? QUICK_SIZES : FULL_SIZES;
const reps = quick ? 1 : 3;
const onlyIndex = process.argv.indexOf('--only');
const only = onlyIndex === -1 ? undefined : (process.argv[onlyIndex + 1] ?? '').split(',');

/** Reads VmHWM (peak resident set size) of a process from /proc, in MiB. */
function peakRssMiB(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const match = /^VmHWM:\s+(\d+) kB$/m.exec(status);
  if (!match) throw new Error(`/proc/${pid}/status has no VmHWM line`);
  return Number(match[1]) / 1024;
}

/**
 * Finds the pid of the reference registry, a direct child of this process
 * running /usr/bin/docker-registry, because its helper does not expose it.
 */
function findReferencePid(): number {
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const status = readFileSync(`/proc/${entry}/status`, 'utf8');
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
      if (
        status.includes(`\nPPid:\t${process.pid}\n`) &&
        cmdline.startsWith('/usr/bin/docker-registry')
      ) {
        return Number(entry);
      }
    } catch {
      // The process exited while we looked; skip it.
    }
  }
  throw new Error('no /usr/bin/docker-registry child process found');
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? (sorted[middle] as number)
    : ((sorted[middle - 1] as number) + (sorted[middle] as number)) / 2;
}

function format(value: number): string {
  if (!Number.isFinite(value)) return 'n/a';
  if (Math.abs(value) >= 100) return value.toFixed(0);
  if (Math.abs(value) >= 10) return value.toFixed(1);
  return value.toFixed(2);
}

function printTable(header: string[], rows: string[][]): void {
  const widths = header.map((cell, i) =>
    Math.max(cell.length, ...rows.map((row) => (row[i] ?? '').length)),
  );
  const line = (cells: string[]) =>
    cells
      .map((cell, i) => (i === 0 ? cell.padEnd(widths[i] ?? 0) : cell.padStart(widths[i] ?? 0)))
      .join('  ');
  console.log(line(header));
  console.log(widths.map((width) => '-'.repeat(width)).join('  '));
  for (const row of rows) console.log(line(row));
}

/** The image skopeo pushes in each repetition, built before the first. */
const images: Array<{ source: string; digest: string }> = [];

const allWorkloads: Array<[string, Workload]> = [
  ['big blob', (target, rep) => runBigBlob(target, sizes, rep + 1, `bench/big-r${rep}`)],
  ['small blobs', (target, rep) => runSmallBlobs(target, sizes, rep, `bench/small-r${rep}`)],
  ['manifest load', (target, rep) => runManifestLoad(target, sizes, rep, `bench/load-r${rep}`)],
  ['tags', (target, rep) => runTags(target, sizes, rep, `bench/tags-r${rep}`)],
  ['catalog', (target) => runCatalogWalk(target, sizes)],
  ['skopeo', (target, rep) => runSkopeo(target, images[rep]!, sandbox, `bench/skopeo-r${rep}`)],
];
/** The workloads that write hundreds of MiB, whose files evictBulkData drops from the page cache. */
const BULK_WORKLOADS = new Set(['big blob', 'skopeo']);
const workloads = allWorkloads.filter(([label]) => only === undefined || only.includes(label));
// Checked before anything starts, so that a wrong label leaves no server running.
if (workloads.length === 0) {
  const labels = allWorkloads.map(([label]) => label).join(', ');
  throw new Error(
    `invalid --only value "${only?.join(',')}": it names no workload; give one or more of ${labels}, separated by commas`,
  );
}
const selected = (label: string) => workloads.some(([name]) => name === label);

const workDir = mkdtempSync(path.join(tmpdir(), 'mcr-bench-'));
const sandbox = createClientSandbox(path.join(workDir, 'clients'));
const mcr = await startServer();
const reference = await startReference();
const ingest = await startIngestServer();
const targets: Target[] = [
  {
    name: 'mcr',
    url: mcr.url,
    // mcr caches verified Basic credentials for 30 s, so each request after
    // the first skips the password hash.
    headers: { authorization: basicAuth(ADMIN_USER, ADMIN_PASSWORD) },
    creds: mcr.creds,
    agent: new http.Agent({ keepAlive: true }),
    singlePostUpload: true,
  },
  {
    name: 'reference',
    url: reference.url,
    headers: {},
    agent: new http.Agent({ keepAlive: true }),
    singlePostUpload: false,
  },
];
const dataDirs = new Map([
  ['mcr', mcr.dataDir],
  ['reference', reference.storageDir],
]);
const pids = new Map([
  ['mcr', mcr.process.pid!],
  ['reference', findReferencePid()],
]);

/** Files at least this large count as bulk data for `evictBulkData`. */
const BULK_FILE_BYTES = 16 * MiB;

/**
 * Drops the cached pages of every file of at least 16 MiB under `directory`,
 * untimed, with coreutils dd's `iflag=nocache count=0` (posix_fadvise
 * DONTNEED on the whole file). Called after the workloads that write hundreds
 * of MiB, so that the next one reuses the freed pages. On a virtual machine, a
 * page cache that grows into guest memory never touched before makes each
 * copy into it slower. On the machine in docs/benchmarks.md, the third 1 GiB
 * push in a row took 8.1 s of kernel CPU time against 2.4 s for the first,
 * for mcr and the reference alike. The cached pages of smaller files, such as
 * databases and small blobs, stay. Returns whether dd dropped every file.
 */
function evictBulkData(directory: string): boolean {
  spawnSync('sync');
  let evicted = true;
  for (const entry of readdirSync(directory, { recursive: true, withFileTypes: true })) {
    if (!entry.isFile()) continue;
    const file = path.join(entry.parentPath, entry.name);
    let size: number;
    try {
      size = statSync(file).size;
    } catch {
      continue; // The registry removed the file after the directory listing.
    }
    if (size < BULK_FILE_BYTES) continue;
    const dd = spawnSync('dd', [`if=${file}`, 'iflag=nocache', 'count=0', 'status=none']);
    if (dd.status !== 0) evicted = false;
  }
  return evicted;
}
let bulkEvicted = true;

/** Each target's values of each figure, one per repetition. */
const results = new Map<string, Map<string, number[]>>(targets.map((t) => [t.name, new Map()]));
const ceilings = { sha256: [] as number[], ingest: [] as number[], pageWalk: [] as number[] };

const startedAt = Date.now();
try {
  if (selected('skopeo')) {
    for (let rep = 0; rep < reps; rep++) {
      console.error(`setup: building skopeo image ${rep + 1}/${reps}`);
      images.push(await buildSkopeoImage(workDir, sizes, rep));
    }
  }
  if (selected('catalog')) {
    for (const target of targets) {
      console.error(`setup: creating ${sizes.repositories} repositories on ${target.name}`);
      await createRepositories(target, sizes);
    }
  }

  for (let rep = 0; rep < reps; rep++) {
    const order = rep % 2 === 0 ? targets : [...targets].reverse();
    for (const [label, workload] of workloads) {
      for (const target of order) {
        console.error(`run ${rep + 1}/${reps}: ${label} on ${target.name}`);
        // Writes out what earlier workloads left in the page cache, so that
        // neither registry's disk writes queue behind the other's.
        spawnSync('sync');
        const figures = await workload(target, rep);
        if (BULK_WORKLOADS.has(label) && !quick) {
          bulkEvicted = evictBulkData(dataDirs.get(target.name)!) && bulkEvicted;
        }
        const byFigure = results.get(target.name)!;
        for (const [name, value] of Object.entries(figures)) {
          byFigure.set(name, [...(byFigure.get(name) ?? []), value]);
        }
      }
    }
    if (selected('big blob')) {
      ceilings.sha256.push(measureSha256(sizes.bigBlobBytes));
      ceilings.ingest.push(await measureIngest(ingest, sizes.bigBlobBytes, 1000 + rep));
    }
    if (selected('tags')) {
      const pages = Math.ceil(sizes.tags / sizes.pageSize);
      ceilings.pageWalk.push(await measurePageWalk(ingest, pages));
    }
  }

  for (const target of targets) {
    results.get(target.name)!.set('peak RSS (VmHWM)', [peakRssMiB(pids.get(target.name)!)]);
  }
} finally {
  for (const target of targets) target.agent.destroy();
  await ingest.stop();
  await reference.stop();
  await mcr.cleanup();
  rmSync(workDir, { recursive: true, force: true });
}

const sizeLabel = (bytes: number) =>
  bytes >= 1024 * MiB ? `${bytes / 1024 / MiB} GiB` : `${bytes / MiB} MiB`;
console.log(
  `mcr vs reference registry (CNCF Distribution 2.8), ${quick ? 'quick run, 1 repetition' : `median of ${reps} repetitions`}, ${((Date.now() - startedAt) / 1000).toFixed(0)} s`,
);
console.log(
  `big blob ${sizeLabel(sizes.bigBlobBytes)}, chunks ${sizeLabel(sizes.chunkBytes)}, ${sizes.smallBlobs} small blobs of ${sizes.smallBlobBytes} B with ${sizes.clients} clients, ` +
    `manifest load ${sizes.loadSeconds} s with ${sizes.loadConnections} connections, ${sizes.tags} tags, ${sizes.repositories} repositories, pages of ${sizes.pageSize}, ` +
    `skopeo image of ${sizes.imageLayers} layers of ${sizeLabel(sizes.imageLayerBytes)}`,
);
console.log('');

const measured = FIGURES.filter((spec) => results.get('mcr')!.has(spec.name));
const rows = measured.map((spec) => {
  const mcrValue = median(results.get('mcr')!.get(spec.name) ?? [NaN]);
  const referenceValue = median(results.get('reference')!.get(spec.name) ?? [NaN]);
  const ratio = mcrValue / referenceValue;
  const [target, met] = judge(spec, mcrValue, ratio);
  return [
    spec.name,
    spec.unit,
    format(mcrValue),
    format(referenceValue),
    format(ratio),
    target,
    met,
  ];
});
printTable(['figure', 'unit', 'mcr', 'reference', 'mcr/ref', 'target', ''], rows);

const ceilingRows: string[][] = [];
if (selected('big blob')) {
  const ingestRate = median(ceilings.ingest);
  const mcrMonolithic = median(results.get('mcr')!.get('blob push, monolithic') ?? [NaN]);
  ceilingRows.push(
    ['SHA-256, one core', 'MiB/s', format(median(ceilings.sha256))],
    ['node:http receive+hash+write', 'MiB/s', format(ingestRate)],
    ['mcr monolithic push / that ceiling', 'fraction', format(mcrMonolithic / ingestRate)],
  );
}
if (selected('tags')) {
  const floor = median(ceilings.pageWalk);
  const mcrWalk = median(results.get('mcr')!.get('tags listing, pages') ?? [NaN]);
  ceilingRows.push(
    ['node:http, one GET per page of the tag walk', 'ms', format(floor)],
    ['mcr tag walk / that floor', 'fraction', format(mcrWalk / floor)],
  );
}
if (ceilingRows.length > 0) {
  console.log('');
  printTable(['machine ceiling', 'unit', 'value'], ceilingRows);
}

console.log('');
console.log('notes:');
console.log(
  '- reference has no single-POST upload: its monolithic push is POST then PUT with the whole body.',
);
console.log(
  `- small blob push uses POST then PUT ?digest= on both registries, after ${sizes.smallBlobWarmup} untimed pushes of other blobs.`,
);
console.log('- reference ignores n on tags/list (Distribution 2.8), so its tag walk is one page.');
console.log('- mcr requests carry Basic credentials; the reference runs without authentication.');
console.log(
  "- manifest load comes from wrk (one thread); the other workloads' clients run in this process. Both share the machine's cores with the registries.",
);
console.log('- before each workload on each registry, sync writes out the page cache, untimed.');
if (!quick) {
  console.log(
    bulkEvicted
      ? '- after big blob and skopeo, the cached pages of files of 16 MiB or more in both data directories are dropped (dd iflag=nocache), untimed.'
      : '- dd failed to drop the cached pages of some large files after big blob or skopeo, so the page cache grew over the run.',
  );
}
console.log('- skopeo exchanges the Basic credentials for a bearer token on mcr.');
console.log('- peak RSS is read once, after all workloads, from /proc/PID/status.');
