import { Presets, SingleBar } from 'cli-progress';
import type { Command } from 'commander';

import { globalOptions, resolveSession } from './context.js';
import { CliError, ExitCode } from './errors.js';
import { formatBytes, printFields, printJson, printLine, printTable } from './output.js';

interface FsckReport {
  blobsChecked: number;
  bytesChecked: number;
  corrupt: Array<{ digest: string; actual: string }>;
  missingBytes: Array<{ digest: string; reason: string; referenced: boolean }>;
  orphanFiles: string[];
  brokenManifests: Array<{ repository: string; digest: string; missing: string[] }>;
  repaired: { filesRemoved: number; rowsRemoved: number };
  clean: boolean;
}

/** Registers `fsck`: verify blobs and the agreement of database and storage. */
export function registerFsckCommands(program: Command): void {
  program
    .command('fsck')
    .description(
      're-hash every blob and check the database against storage; read-only unless --repair',
    )
    .option(
      '--repair',
      'remove orphaned files and unreferenced rows without bytes (never referenced data)',
    )
    .action(async (options: { repair?: boolean }, command: Command) => {
      const { client } = resolveSession(command);
      const bar = process.stderr.isTTY
        ? new SingleBar(
            {
              format: 'fsck {phase} [{bar}] {value}/{total}',
              stream: process.stderr,
              hideCursor: true,
              clearOnComplete: true,
            },
            Presets.shades_classic,
          )
        : undefined;
      let phase = '';
      let report: FsckReport | undefined;

      try {
        await client.stream(
          'POST',
          '/v1/fsck',
          'run fsck',
          { repair: options.repair === true },
          (line) => {
            if (line.type === 'progress') {
              const total = Number(line.total);
              if (line.phase !== phase) {
                phase = String(line.phase);
                bar?.stop();
                bar?.start(total, 0, { phase });
              }
              bar?.update(Number(line.done), { phase });
            } else if (line.type === 'report') {
              report = line as unknown as FsckReport;
            } else if (line.type === 'error') {
              throw new CliError(
                ExitCode.failure,
                `fsck failed on the server: ${String(line.error)}`,
                'check the registry log',
              );
            }
          },
        );
      } finally {
        bar?.stop();
      }
      if (!report) {
        throw new CliError(
          ExitCode.failure,
          'fsck ended without a report',
          'check the registry log',
        );
      }

      if (globalOptions(command).json) {
        printJson(report);
      } else {
        printReport(report);
      }
      if (!report.clean) {
        throw new CliError(
          ExitCode.damaged,
          'fsck found damage',
          options.repair
            ? 'what remains is referenced data: restore it from a backup'
            : 'run mcrctl fsck --repair to remove orphans',
        );
      }
    });
}

function printReport(report: FsckReport): void {
  printFields([
    ['Blobs checked', report.blobsChecked],
    ['Bytes checked', formatBytes(report.bytesChecked)],
    ['Corrupt blobs', report.corrupt.length],
    ['Rows without bytes', report.missingBytes.length],
    ['Files without rows', report.orphanFiles.length],
    ['Broken manifests', report.brokenManifests.length],
    ['Files removed', report.repaired.filesRemoved],
    ['Rows removed', report.repaired.rowsRemoved],
    ['Result', report.clean ? 'clean' : 'damage found'],
  ]);
  const rows: string[][] = [
    ...report.corrupt.map((entry) => ['corrupt', entry.digest, `bytes hash to ${entry.actual}`]),
    ...report.missingBytes.map((entry) => [
      'missing bytes',
      entry.digest,
      `${entry.reason}${entry.referenced ? ', referenced' : ''}`,
    ]),
    ...report.orphanFiles.map((digest) => ['orphaned file', digest, 'no database row']),
    ...report.brokenManifests.map((entry) => [
      'broken manifest',
      `${entry.repository}@${entry.digest}`,
      `missing ${entry.missing.join(', ')}`,
    ]),
  ];
  if (rows.length > 0) {
    printLine();
    printTable(['problem', 'object', 'detail'], rows, '(no problems)');
  }
}
