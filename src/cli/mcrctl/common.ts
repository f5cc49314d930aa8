import { Option, type Command } from 'commander';

import type { PageOptions } from './client.js';
import { usageError } from './errors.js';
import { parsePositiveInteger } from './time.js';

/** Options of list commands, before validation. */
export interface RawPageOptions {
  limit?: string;
  cursor?: string;
  all?: boolean;
}

/** Adds --limit, --cursor and --all to a list command. */
export function addPageOptions(command: Command, noun: string): Command {
  return command
    .option('--limit <n>', `maximum number of ${noun} per page (default: the server's page size)`)
    .option('--cursor <cursor>', 'continue from the next_cursor of an earlier page')
    .option('--all', `fetch every page and print all ${noun}`);
}

/** Validates the options added by addPageOptions. */
export function pageOptions(options: RawPageOptions): PageOptions {
  const page: PageOptions = { all: options.all === true };
  if (options.limit !== undefined) page.limit = parsePositiveInteger('--limit', options.limit);
  if (options.cursor !== undefined) page.cursor = options.cursor;
  if (page.all && page.cursor !== undefined) {
    throw usageError('--all and --cursor cannot be combined', 'use one of them');
  }
  return page;
}

/** Adds --yes to a destructive command. */
export function addYesOption(command: Command): Command {
  return command.addOption(
    new Option('-y, --yes', 'do not ask for confirmation (required without a terminal)'),
  );
}

/** Collects a repeatable option whose values may also be comma-separated. */
export function collectList(value: string, previous: string[] | undefined): string[] {
  const items = value
    .split(',')
    .map((item) => item.trim())
    .filter((item) => item !== '');
  return [...(previous ?? []), ...items];
}
