const UNIT_MS: Record<string, number> = {
  ms: 1,
  s: 1000,
  m: 60_000,
  h: 3_600_000,
  d: 86_400_000,
};

/**
 * Parses a duration such as "90s", "1h" or "1h30m" into milliseconds.
 * Returns undefined for anything else, so the caller can name the bad key.
 */
export function parseDuration(input: string): number | undefined {
  const pattern = /(\d+)(ms|s|m|h|d)/gy;
  let total = 0;
  let consumed = 0;
  for (const match of input.matchAll(pattern)) {
    total += Number(match[1]) * (UNIT_MS[match[2] as string] as number);
    consumed += match[0].length;
  }
  if (input.length === 0 || consumed !== input.length) return undefined;
  // A number too large to count milliseconds exactly is no duration.
  return Number.isSafeInteger(total) ? total : undefined;
}
