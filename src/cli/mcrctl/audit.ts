import type { Command } from 'commander';

import type { ApiClient, PageOptions } from './client.js';
import { addPageOptions, pageOptions, type RawPageOptions } from './common.js';
import { globalOptions, resolveSession } from './context.js';
import { CliError, ExitCode, usageError } from './errors.js';
import { formatTime, printJson, printLine, printNote, printPage, shortDigest } from './output.js';
import { parsePointInTime, parsePositiveInteger } from './time.js';

interface AuditEvent {
  id: number | string;
  time: string;
  type: string;
  actor: string | null;
  client_address: string | null;
  repository: string | null;
  reference: string | null;
  digest: string | null;
  outcome: string;
  details: unknown;
}

interface VerifyResult {
  ok: boolean;
  checked: number;
  broken: null | { id: number | string; reason: string };
}

interface AuditListOptions extends RawPageOptions {
  type?: string;
  actor?: string;
  repository?: string;
  since?: string;
  until?: string;
  follow?: boolean;
  interval: string;
}

type Filters = Record<string, string | undefined>;

const HEAD = ['time', 'type', 'actor', 'client', 'repository', 'reference', 'outcome'];

function eventRow(event: AuditEvent) {
  return [
    formatTime(event.time),
    event.type,
    event.actor,
    event.client_address,
    event.repository,
    event.reference ?? shortDigest(event.digest),
    event.outcome,
  ];
}

/** Fixed column widths of --follow output, which cannot size columns in advance. */
const FOLLOW_WIDTHS = [20, 24, 16, 16, 32, 20];

function followLine(cells: Array<string | number | null | undefined>): string {
  return cells
    .map((cell, index) => {
      const text = cell === null || cell === undefined || cell === '' ? '-' : String(cell);
      const width = FOLLOW_WIDTHS[index];
      return width === undefined ? text : text.padEnd(width);
    })
    .join(' ')
    .trimEnd();
}

/** Registers `audit`. */
export function registerAuditCommands(program: Command): void {
  const audit = program.command('audit').description('read and verify the audit log');

  addPageOptions(
    audit
      .command('list')
      .description('list audit events, newest first')
      .option('--type <type>', 'only events of this type')
      .option('--actor <name>', 'only events by this account')
      .option('--repository <name>', 'only events on this repository')
      .option(
        '--since <when>',
        'only events at or after this time: a duration ago (15m, 2d) or an ISO 8601 date-time',
      )
      .option(
        '--until <when>',
        'only events before this time: a duration ago or an ISO 8601 date-time',
      )
      .option(
        '-f, --follow',
        'keep polling and print new events as they arrive, oldest first, until interrupted',
      )
      .option('--interval <seconds>', 'polling interval of --follow, in seconds', '2')
      .addHelpText(
        'after',
        `
With --follow, the latest page is printed oldest first and new events are
appended. With --json and --follow, each event is printed as one JSON object
per line (JSON Lines) instead of one document.`,
      ),
    'events',
  ).action(async (options: AuditListOptions, command: Command) => {
    const page = pageOptions(options);
    const filters: Filters = {
      type: options.type,
      actor: options.actor,
      repository: options.repository,
      since: options.since === undefined ? undefined : parsePointInTime('--since', options.since),
      until: options.until === undefined ? undefined : parsePointInTime('--until', options.until),
    };
    const intervalMs = parsePositiveInteger('--interval', options.interval) * 1000;
    if (options.follow && options.until !== undefined) {
      throw usageError(
        '--follow and --until cannot be combined',
        'drop --until to follow new events',
      );
    }
    if (options.follow && page.cursor !== undefined) {
      throw usageError('--follow and --cursor cannot be combined');
    }

    const { client } = resolveSession(command);
    const json = globalOptions(command).json === true;
    if (options.follow) {
      await followEvents(client, filters, page, intervalMs, json);
      return;
    }

    const result = await client.list<AuditEvent>(
      '/v1/audit',
      'events',
      'list audit events',
      page,
      filters,
    );
    printPage(json, 'events', result, HEAD, eventRow, 'no audit events found');
  });

  audit
    .command('verify')
    .description("check the audit log's hash chain for edited or removed events")
    .addHelpText('after', '\nExits with 1 when the chain is broken.')
    .action(async (_options: unknown, command: Command) => {
      const { client } = resolveSession(command);
      const { body } = await client.request<VerifyResult>(
        'GET',
        '/v1/audit/verify',
        'verify the audit log',
      );
      if (globalOptions(command).json) printJson(body);
      else if (body.ok) printLine(`Audit log intact: ${body.checked} events checked.`);
      else printLine(`Audit log broken: ${body.checked} events checked.`);
      if (!body.ok) {
        const where = body.broken ? ` at event ${body.broken.id}: ${body.broken.reason}` : '';
        throw new CliError(
          ExitCode.failure,
          `the audit log's hash chain is broken${where}`,
          'events were edited or removed after they were written; compare with a backup',
        );
      }
    });
}

/**
 * Prints the latest page, then polls for events newer than the newest one
 * seen. Events are distinguished by id, so an event is printed once even when
 * the server's `since` filter includes its bound. Runs until the process is
 * interrupted; an unreachable server is retried at the next interval.
 */
async function followEvents(
  client: ApiClient,
  filters: Filters,
  page: PageOptions,
  intervalMs: number,
  json: boolean,
): Promise<never> {
  const print = (events: AuditEvent[]) => {
    for (const event of events) {
      if (json) process.stdout.write(`${JSON.stringify(event)}\n`);
      else printLine(followLine(eventRow(event)));
    }
  };

  const first = await client.list<AuditEvent>(
    '/v1/audit',
    'events',
    'list audit events',
    page,
    filters,
  );
  if (!json) printLine(followLine(HEAD.map((title) => title.toUpperCase())));
  const initial = [...first.items].reverse();
  print(initial);

  let newestTime: string | undefined = initial.at(-1)?.time;
  let seenAtNewest = new Set(
    initial.filter((event) => event.time === newestTime).map((event) => event.id),
  );
  let outage = false;

  for (;;) {
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
    let events: AuditEvent[];
    try {
      const since = newestTime ?? filters.since;
      const result = await client.list<AuditEvent>(
        '/v1/audit',
        'events',
        'poll audit events',
        { all: true, limit: page.limit },
        { ...filters, since },
      );
      events = result.items;
    } catch (error) {
      if (!(error instanceof CliError) || error.exitCode !== ExitCode.unreachable) throw error;
      if (!outage) printNote(`mcrctl: ${error.message}; retrying every ${intervalMs / 1000} s`);
      outage = true;
      continue;
    }
    if (outage) printNote('mcrctl: the server is reachable again');
    outage = false;

    const fresh = events
      .filter((event) => !seenAtNewest.has(event.id))
      .filter((event) => newestTime === undefined || event.time >= newestTime)
      .reverse();
    if (fresh.length === 0) continue;
    print(fresh);
    const latest = fresh.at(-1)?.time as string;
    if (latest !== newestTime) seenAtNewest = new Set();
    newestTime = latest;
    for (const event of fresh) if (event.time === newestTime) seenAtNewest.add(event.id);
  }
}
