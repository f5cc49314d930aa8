/** Exit statuses that scripts can rely on; `mcrctl --help` lists them. */
export const ExitCode = {
  success: 0,
  failure: 1,
  usage: 2,
  unauthenticated: 3,
  notFound: 4,
  conflict: 5,
  forbidden: 6,
  unreachable: 7,
  damaged: 8,
} as const;
export type ExitCode = (typeof ExitCode)[keyof typeof ExitCode];

/** Help text that documents ExitCode. */
export const EXIT_CODE_HELP = `Exit status:
  0  success
  1  other failure (server error, degraded health, failed GC run, broken audit chain)
  2  usage error, or input that the server rejected as invalid (HTTP 400)
  3  not logged in, or authentication failed (HTTP 401)
  4  not found (HTTP 404)
  5  conflict (HTTP 409 or 412)
  6  permission denied (HTTP 403)
  7  server unreachable (connection failed or timed out)
  8  fsck found damage that it did not repair`;

/**
 * A failure that ends the command: `message` goes to stderr, followed by
 * `hint` (what to do next) when there is one, and the process exits with `exitCode`.
 */
export class CliError extends Error {
  constructor(
    readonly exitCode: ExitCode,
    message: string,
    readonly hint?: string,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

/** Builds a usage error (exit status 2). */
export function usageError(message: string, hint?: string): CliError {
  return new CliError(ExitCode.usage, message, hint);
}
