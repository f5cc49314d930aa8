import Table from 'cli-table3';

/** Writes one JSON document to stdout, for --json. */
export function printJson(value: unknown): void {
  process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

/** Writes a line to stdout. */
export function printLine(text = ''): void {
  process.stdout.write(`${text}\n`);
}

/** Writes a note to stderr, such as "no repositories found", so stdout keeps only data. */
export function printNote(text: string): void {
  process.stderr.write(`${text}\n`);
}

/** A cell value; null and undefined render as "-". */
export type Cell = string | number | boolean | null | undefined;

/**
 * Renders rows as a borderless table with upper-case headers, in the style of
 * kubectl and docker. Columns are separated by three spaces.
 */
export function renderTable(head: string[], rows: Cell[][]): string {
  const table = new Table({
    head: head.map((title) => title.toUpperCase()),
    chars: {
      top: '',
      'top-mid': '',
      'top-left': '',
      'top-right': '',
      bottom: '',
      'bottom-mid': '',
      'bottom-left': '',
      'bottom-right': '',
      left: '',
      'left-mid': '',
      mid: '',
      'mid-mid': '',
      right: '',
      'right-mid': '',
      middle: '   ',
    },
    style: { head: [], border: [], 'padding-left': 0, 'padding-right': 0, compact: true },
  });
  for (const row of rows) table.push(row.map(formatCell));
  // cli-table3 pads the last column too; trailing blanks only get in the way of grep and diff.
  return table
    .toString()
    .split('\n')
    .map((line) => line.trimEnd())
    .join('\n');
}

/** Prints a table, or `emptyNote` on stderr when there are no rows. */
export function printTable(head: string[], rows: Cell[][], emptyNote: string): void {
  if (rows.length === 0) {
    printNote(emptyNote);
    return;
  }
  printLine(renderTable(head, rows));
}

/** Prints "key: value" lines with the values aligned. */
export function printFields(fields: Array<[string, Cell]>): void {
  const width = Math.max(...fields.map(([key]) => key.length)) + 1;
  for (const [key, value] of fields) {
    printLine(`${`${key}:`.padEnd(width)} ${formatCell(value)}`);
  }
}

/** Tells the user that more pages exist and how to get them. */
export function printMoreNote(nextCursor: string | null): void {
  if (nextCursor !== null) {
    printNote(`more results: run again with --cursor ${nextCursor}, or with --all`);
  }
}

function formatCell(value: Cell): string {
  if (value === null || value === undefined || value === '') return '-';
  return String(value);
}

/** Formats an ISO 8601 time as "2024-05-01 12:34:56Z" (UTC, whole seconds). */
export function formatTime(value: string | null | undefined): string | null {
  if (!value) return null;
  const time = new Date(value);
  if (Number.isNaN(time.getTime())) return value;
  return `${time.toISOString().slice(0, 19).replace('T', ' ')}Z`;
}

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];

/** Formats a byte count with binary units: 0 B, 512 B, 1.5 KiB, 20 MiB. */
export function formatBytes(bytes: number | null | undefined): string | null {
  if (bytes === null || bytes === undefined) return null;
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  let digits = 2;
  if (unit === 0 || value >= 100) digits = 0;
  else if (value >= 10) digits = 1;
  return `${Number(value.toFixed(digits))} ${BYTE_UNITS[unit]}`;
}

/** Shortens a digest for tables: "sha256:0123456789ab". */
export function shortDigest(digest: string | null | undefined): string | null {
  if (!digest) return null;
  const colon = digest.indexOf(':');
  return colon === -1 ? digest.slice(0, 12) : digest.slice(0, colon + 13);
}

/** Joins a list for a table cell; an empty list renders as "-". */
export function formatList(values: readonly string[] | null | undefined): string | null {
  if (!values || values.length === 0) return null;
  return values.join(',');
}

/**
 * Prints one page of a list: as `{KEY: items, next_cursor}` with --json, or
 * else as a table followed by a note on how to fetch the next page.
 */
export function printPage<T>(
  json: boolean | undefined,
  key: string,
  page: { items: T[]; next_cursor: string | null },
  head: string[],
  row: (item: T) => Cell[],
  emptyNote: string,
): void {
  if (json) {
    printJson({ [key]: page.items, next_cursor: page.next_cursor });
    return;
  }
  printTable(head, page.items.map(row), emptyNote);
  printMoreNote(page.next_cursor);
}
