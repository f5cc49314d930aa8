#!/usr/bin/env -S UV_THREADPOOL_SIZE=16 MALLOC_ARENA_MAX=2 node --max-semi-space-size=2 --expose-gc
import { Command } from 'commander';

import { startRegistry } from '../app.js';
import { ConfigError, loadConfig } from '../config/index.js';
import { createLogger } from '../log.js';
import { DatabaseOpenError } from '../metadata/db.js';
import { snapshotDatabase, SnapshotError } from '../snapshot.js';

const program = new Command();
program.name('mcr').description('mcr, a self-hosted OCI container registry');

program
  .command('serve', { isDefault: true })
  .description('run the registry (the default command)')
  .option(
    '-c, --config <path>',
    'TOML configuration file (default: $MCR_CONFIG, or built-in defaults)',
  )
  .action(async (options: { config?: string }) => {
    let log;
    let running;
    try {
      const config = loadConfig({ file: options.config });
      log = createLogger(config.log.level);
      running = await startRegistry(config, log);
    } catch (error) {
      // Mistakes an operator fixes get one line, without a stack trace.
      if (error instanceof ConfigError) {
        process.stderr.write(`mcr: ${error.message}\n`);
        process.exit(2);
      }
      if (error instanceof DatabaseOpenError) {
        process.stderr.write(`mcr: ${error.message}\n`);
        process.exit(1);
      }
      throw error;
    }

    let stopping = false;
    const stop = (signal: string) => {
      if (stopping) return;
      stopping = true;
      log.info({ signal }, 'mcr stopping');
      running.close().then(
        () => {
          log.info('mcr stopped');
          process.exit(0);
        },
        (error: unknown) => {
          log.error({ err: error }, 'error while stopping');
          process.exit(1);
        },
      );
    };
    process.on('SIGTERM', () => stop('SIGTERM'));
    process.on('SIGINT', () => stop('SIGINT'));
  });

program
  .command('snapshot <path>')
  .description(
    'copy the metadata database to PATH while mcr runs (SQLite VACUUM INTO); see the README for backup and restore',
  )
  .option(
    '-c, --config <path>',
    'TOML configuration file (default: $MCR_CONFIG, or built-in defaults)',
  )
  .action((target: string, options: { config?: string }) => {
    try {
      const config = loadConfig({ file: options.config });
      const result = snapshotDatabase(config, target);
      process.stdout.write(`snapshot written to ${result.path} (${result.bytes} bytes)\n`);
    } catch (error) {
      if (error instanceof ConfigError || error instanceof SnapshotError) {
        process.stderr.write(`mcr: ${error.message}\n`);
        process.exit(2);
      }
      throw error;
    }
  });

program.parseAsync(process.argv).catch((error: unknown) => {
  process.stderr.write(`mcr: ${(error as Error).stack ?? String(error)}\n`);
  process.exit(1);
});
