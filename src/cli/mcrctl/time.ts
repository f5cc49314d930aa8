import { parseDuration } from '../../config/duration.js';
import { usageError } from './errors.js';

/** Date-only or full ISO 8601 date-time, such as 2025-01-31 or 2025-01-31T12:00:00Z. */
const ISO_DATE =
  /^\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?)?$/;

const DURATION_HELP = 'a duration such as 90m, 12h, 30d or 1h30m';

/** Parses an ISO 8601 date or date-time, or returns undefined. Date-only values mean midnight UTC. */
function parseIsoDate(value: string): Date | undefined {
  if (!ISO_DATE.test(value)) return undefined;
  const time = new Date(value);
  return Number.isNaN(time.getTime()) ? undefined : time;
}

/**
 * Parses --expires: a duration from now (30d, 12h) or an ISO 8601 date or
 * date-time. Returns the expiry as an ISO 8601 string, which must be in the future.
 */
export function parseExpiry(value: string, now = Date.now()): string {
  const duration = parseDuration(value);
  if (duration !== undefined) {
    if (duration === 0) throw usageError(`invalid --expires ${value}: the duration must not be 0`);
    return new Date(now + duration).toISOString();
  }
  const date = parseIsoDate(value);
  if (!date) {
    throw usageError(
      `invalid --expires ${JSON.stringify(value)}`,
      `give ${DURATION_HELP}, or a date such as 2030-01-31`,
    );
  }
  if (date.getTime() <= now) {
    throw usageError(`invalid --expires ${value}: the date is in the past`);
  }
  return date.toISOString();
}

/**
 * Parses --since or --until: a duration back from now (15m, 2d) or an ISO
 * 8601 date or date-time. Returns an ISO 8601 string.
 */
export function parsePointInTime(option: string, value: string, now = Date.now()): string {
  const duration = parseDuration(value);
  if (duration !== undefined) return new Date(now - duration).toISOString();
  const date = parseIsoDate(value);
  if (!date) {
    throw usageError(
      `invalid ${option} ${JSON.stringify(value)}`,
      `give ${DURATION_HELP} (meaning that long ago), or a date such as 2030-01-31T12:00:00Z`,
    );
  }
  return date.toISOString();
}

/** Checks a duration such as 24h and returns it unchanged, in the server's config syntax. */
export function checkDuration(option: string, value: string): string {
  if (parseDuration(value) === undefined) {
    throw usageError(`invalid ${option} ${JSON.stringify(value)}`, `give ${DURATION_HELP}`);
  }
  return value;
}

/** Parses a positive integer option such as --limit. */
export function parsePositiveInteger(option: string, value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1 || !Number.isSafeInteger(Number(value))) {
    throw usageError(`invalid ${option} ${JSON.stringify(value)}: expected a positive integer`);
  }
  return Number(value);
}
