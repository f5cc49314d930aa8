#!/usr/bin/env node
import { Command, CommanderError, Option } from 'commander';

import { registerAccountCommands } from './mcrctl/accounts.js';
import { registerAuditCommands } from './mcrctl/audit.js';
import { CliError, EXIT_CODE_HELP, ExitCode } from './mcrctl/errors.js';
import { registerFsckCommands } from './mcrctl/fsck.js';
import { registerGcCommands } from './mcrctl/gc.js';
import { registerPolicyCommands } from './mcrctl/policies.js';
import { registerRepositoryCommands } from './mcrctl/repositories.js';
import { registerSessionCommands } from './mcrctl/session.js';

const program = new Command();
program
  .name('mcrctl')
  .description('operate an mcr registry through its admin API')
  .addOption(
    new Option('--url <url>', 'server URL (default: the URL of the stored login)').env(
      'MCRCTL_URL',
    ),
  )
  .addOption(
    new Option(
      '--token <token>',
      'session token or access token to use instead of the stored login',
    ).env('MCRCTL_TOKEN'),
  )
  .addOption(
    new Option('--user <name>', 'account that an access token (mcr_pat_...) belongs to').env(
      'MCRCTL_USER',
    ),
  )
  .option('--json', 'print one JSON document on stdout instead of tables')
  .showHelpAfterError('(run with --help for usage)')
  .exitOverride()
  .configureOutput({
    outputError: (text, write) => write(`mcrctl: ${text.replace(/^error: /, '')}`),
  })
  .addHelpText(
    'after',
    `
Configuration:
  mcrctl login stores the server URL and a session token in $MCRCTL_CONFIG,
  else $XDG_CONFIG_HOME/mcr/mcrctl.json, else ~/.config/mcr/mcrctl.json.

${EXIT_CODE_HELP}

Examples:
  mcrctl login https://registry.example.com
  mcrctl repo list
  mcrctl --json account list
  MCRCTL_URL=http://127.0.0.1:5000 MCRCTL_USER=ci MCRCTL_TOKEN=mcr_pat_... mcrctl repo list`,
  );

// A reader such as `head` that closes the pipe early has all it wants, so
// that ends the command quietly instead of with an EPIPE stack trace.
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code === 'EPIPE') process.exit(ExitCode.success);
  throw error;
});

registerSessionCommands(program);
registerRepositoryCommands(program);
registerAccountCommands(program);
registerPolicyCommands(program);
registerAuditCommands(program);
registerGcCommands(program);
registerFsckCommands(program);

/** Maps a commander exit to our exit statuses: help is success, anything else a usage error. */
function commanderExitCode(error: CommanderError): number {
  if (error.code === 'commander.helpDisplayed' || error.code === 'commander.version') {
    return ExitCode.success;
  }
  return ExitCode.usage;
}

try {
  await program.parseAsync(process.argv);
} catch (error) {
  if (error instanceof CommanderError) {
    process.exitCode = commanderExitCode(error);
  } else if (error instanceof CliError) {
    process.stderr.write(`mcrctl: ${error.message}\n`);
    if (error.hint) process.stderr.write(`mcrctl: ${error.hint}\n`);
    process.exitCode = error.exitCode;
  } else {
    process.stderr.write(`mcrctl: unexpected error: ${(error as Error).stack ?? String(error)}\n`);
    process.exitCode = ExitCode.failure;
  }
}
