import { Presets, SingleBar } from 'cli-progress';
import type { Command } from 'commander';

import { apiPath, type ApiClient } from './client.js';
import { addPageOptions, pageOptions, type RawPageOptions } from './common.js';
import { globalOptions, resolveSession } from './context.js';
import { CliError, ExitCode, usageError } from './errors.js';
import { formatBytes, formatTime, printFields, printJson, printPage } from './output.js';
import { checkDuration } from './time.js';

/** Polling interval of gc run --wait, in milliseconds. */
const WAIT_POLL_MS = 1000;

interface GcRun {
  id: number;
  trigger: string;
  state: 'running' | 'succeeded' | 'failed';
  dry_run: boolean;
  started_at: string;
  finished_at: string | null;
  progress: ({ phase?: string } & Record<string, unknown>) | null;
  blobs_deleted: number;
  bytes_freed: number;
  manifests_deleted: number;
  uploads_deleted: number;
  error: string | null;
}

/** Formats the counters of a run's progress, such as "blobs_total=10 blobs_marked=4". */
function formatCounters(
  progress: GcRun['progress'],
  options: { nonZeroOnly?: boolean } = {},
): string {
  return Object.entries(progress ?? {})
    .filter(([key]) => key !== 'phase')
    .filter(([, value]) => typeof value === 'number' || typeof value === 'string')
    .filter(([, value]) => !options.nonZeroOnly || (value !== 0 && value !== ''))
    .map(([key, value]) => `${key}=${String(value)}`)
    .join(' ');
}

function printRun(run: GcRun): void {
  const fields: Array<[string, string | number | null]> = [
    ['Run', run.id],
    ['State', run.state],
    // mcr counts what a real run would delete in a dry run's counters.
    ['Dry run', run.dry_run ? 'yes (counts are what a real run would delete)' : 'no'],
    ['Trigger', run.trigger],
    ['Started', formatTime(run.started_at)],
    ['Finished', formatTime(run.finished_at)],
  ];
  if (run.state === 'running') {
    fields.push(['Phase', run.progress?.phase ?? null], ['Progress', formatCounters(run.progress)]);
  }
  fields.push(
    ['Blobs deleted', run.blobs_deleted],
    ['Bytes freed', formatBytes(run.bytes_freed)],
    ['Manifests deleted', run.manifests_deleted],
    ['Uploads deleted', run.uploads_deleted],
  );
  if (run.error) fields.push(['Error', run.error]);
  printFields(fields);
}

function failedRunError(run: GcRun): CliError {
  return new CliError(
    ExitCode.failure,
    `garbage collection run ${run.id} failed: ${run.error ?? 'the server gave no reason'}`,
    'check the registry log, then run mcrctl gc run again',
  );
}

/**
 * Phases of an mcr garbage collection run, in order, as src/gc/runs.ts
 * defines them. NOTE: the /v1 contract does not list them. An unknown phase
 * leaves the bar where it was.
 */
const GC_PHASES = [
  'starting',
  'recovering',
  'manifests',
  'marking',
  'blobs',
  'orphaned blob files',
  'uploads',
  'repositories',
  'done',
];

/**
 * Polls a run until it leaves the running state. On a terminal, a progress
 * bar on stderr shows how many phases are done, the current phase and its
 * non-zero counters.
 */
async function waitForRun(client: ApiClient, run: GcRun): Promise<GcRun> {
  const bar = process.stderr.isTTY
    ? new SingleBar(
        {
          format:
            'garbage collection {id} [{bar}] {value}/{total} phases | {phase} | {counters} | {duration_formatted}',
          stream: process.stderr,
          hideCursor: true,
          clearOnComplete: true,
        },
        Presets.shades_classic,
      )
    : undefined;
  let phasesDone = 0;
  const update = (current: GcRun) => {
    const phase = current.progress?.phase ?? 'starting';
    const index = GC_PHASES.indexOf(phase);
    if (index > phasesDone) phasesDone = index;
    bar?.update(phasesDone, {
      id: current.id,
      phase,
      counters: formatCounters(current.progress, { nonZeroOnly: true }) || '-',
    });
  };
  bar?.start(GC_PHASES.length - 1, 0);
  update(run);

  let current = run;
  try {
    while (current.state === 'running') {
      await new Promise((resolve) => setTimeout(resolve, WAIT_POLL_MS));
      current = (
        await client.request<GcRun>(
          'GET',
          apiPath('/v1/gc', run.id),
          `check garbage collection run ${run.id}`,
        )
      ).body;
      update(current);
    }
  } finally {
    bar?.stop();
  }
  return current;
}

/** Registers `gc`. */
export function registerGcCommands(program: Command): void {
  const gc = program.command('gc').description('run garbage collection and show its runs');

  gc.command('run')
    .description('start a garbage collection run')
    .option('--dry-run', 'only count what would be deleted')
    .option('--delete-untagged', 'also delete manifests that no tag points to')
    .option(
      '--upload-max-age <duration>',
      'delete unfinished uploads older than this, such as 24h (default: the server setting)',
    )
    .option('-w, --wait', 'wait until the run finishes, then print a summary')
    .addHelpText(
      'after',
      `
Without --wait, the command prints the run and returns while it is running;
follow it with mcrctl gc status ID. Exits with 5 when a run is already in
progress and, with --wait, with 1 when the run fails.`,
    )
    .action(
      async (
        options: {
          dryRun?: boolean;
          deleteUntagged?: boolean;
          uploadMaxAge?: string;
          wait?: boolean;
        },
        command: Command,
      ) => {
        const body: Record<string, unknown> = {};
        if (options.dryRun) body.dry_run = true;
        if (options.deleteUntagged) body.delete_untagged = true;
        if (options.uploadMaxAge !== undefined) {
          // The server parses upload_max_age in its config's duration syntax, such as 24h.
          body.upload_max_age = checkDuration('--upload-max-age', options.uploadMaxAge);
        }

        const { client } = resolveSession(command);
        let run: GcRun;
        try {
          run = (
            await client.request<GcRun>('POST', '/v1/gc', 'start garbage collection', { body })
          ).body;
        } catch (error) {
          if (error instanceof CliError && error.exitCode === ExitCode.conflict) {
            throw new CliError(
              error.exitCode,
              error.message,
              'see the running run with mcrctl gc status',
            );
          }
          throw error;
        }
        if (options.wait) run = await waitForRun(client, run);

        if (globalOptions(command).json) printJson(run);
        else printRun(run);
        if (run.state === 'failed') throw failedRunError(run);
      },
    );

  addPageOptions(
    gc
      .command('status')
      .argument('[id]', 'run id; without it, list recent runs')
      .description('show one garbage collection run, or list recent runs'),
    'runs',
  ).action(async (id: string | undefined, options: RawPageOptions, command: Command) => {
    const json = globalOptions(command).json;
    if (id !== undefined) {
      if (!/^[1-9]\d*$/.test(id))
        throw usageError(`invalid run id ${JSON.stringify(id)}: expected a positive integer`);
      const { client } = resolveSession(command);
      const { body } = await client.request<GcRun>(
        'GET',
        apiPath('/v1/gc', id),
        `show garbage collection run ${id}`,
      );
      if (json) printJson(body);
      else printRun(body);
      return;
    }

    const { client } = resolveSession(command);
    const page = await client.list<GcRun>(
      '/v1/gc',
      'runs',
      'list garbage collection runs',
      pageOptions(options),
    );
    printPage(
      json,
      'runs',
      page,
      [
        'id',
        'state',
        'trigger',
        'dry run',
        'started',
        'finished',
        'blobs',
        'freed',
        'manifests',
        'uploads',
        'error',
      ],
      (run) => [
        run.id,
        run.state,
        run.trigger,
        run.dry_run ? 'yes' : 'no',
        formatTime(run.started_at),
        formatTime(run.finished_at),
        run.blobs_deleted,
        formatBytes(run.bytes_freed),
        run.manifests_deleted,
        run.uploads_deleted,
        run.error,
      ],
      'no garbage collection runs found',
    );
  });
}
