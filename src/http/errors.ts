import type { FastifyReply, FastifyRequest } from 'fastify';

import { isDatabaseUnavailable } from '../metadata/db.js';
import { RegistryError } from '../registry/errors.js';

/** Builds the body of an error response in the distribution specification's format. */
export function errorBody(code: string, message: string, detail?: unknown): string {
  return JSON.stringify({
    errors: [{ code, message, ...(detail === undefined ? {} : { detail }) }],
  });
}

/**
 * Renders any error thrown while handling a /v2/ request. Registry errors keep
 * their code and status; anything else is logged and becomes a 500 whose body
 * hides the internals.
 */
export function sendError(
  request: FastifyRequest,
  reply: FastifyReply,
  error: unknown,
): FastifyReply {
  if (reply.sent || reply.raw.headersSent) {
    request.log.warn({ err: error }, 'error after the response started; closing the connection');
    reply.raw.destroy();
    return reply;
  }

  // An error in the middle of a request body, such as a full disk, leaves
  // the rest unread. A body stream still open is read and discarded, so
  // that the connection stays usable. One that the failed write destroyed
  // can no longer be read, so the connection closes after the response
  // instead of waiting for a read that never comes.
  if (hasBody(request) && !request.raw.complete) {
    if (request.raw.destroyed) reply.header('Connection', 'close');
    else request.raw.resume();
  }

  if (clientWentAway(request, error)) {
    request.log.info(
      { method: request.method, path: request.url.split('?')[0], error: (error as Error).message },
      'client closed the connection before the request finished',
    );
    reply.raw.destroy();
    return reply;
  }

  if (error instanceof RegistryError) {
    reply.code(error.status).headers(error.headers).type('application/json');
    if (error.status >= 500) request.log.error({ err: error }, 'request failed');
    return reply.send(errorBody(error.code, error.message, error.detail));
  }

  if (isDatabaseUnavailable(error)) {
    logUnavailable(request, error);
    return reply
      .code(503)
      .header('Retry-After', String(UNAVAILABLE_RETRY_SECONDS))
      .type('application/json')
      .send(errorBody('UNAVAILABLE', 'the metadata database is unavailable; retry later'));
  }

  if (isStorageFull(error)) {
    logStorageFull(request, error);
    return reply
      .code(507)
      .type('application/json')
      .send(errorBody('UNKNOWN', STORAGE_FULL_MESSAGE));
  }

  const status = httpStatusOf(error);
  if (status !== undefined && status < 500) {
    return reply
      .code(status)
      .type('application/json')
      .send(errorBody('UNSUPPORTED', (error as Error).message));
  }

  request.log.error({ err: error }, 'unhandled error while serving a request');
  return reply
    .code(500)
    .type('application/json')
    .send(errorBody('UNKNOWN', 'internal server error; the registry log has the details'));
}

/** Seconds a client is asked to wait (Retry-After) while the metadata database is unavailable. */
export const UNAVAILABLE_RETRY_SECONDS = 5;

/** A log of one kind of error that writes at most one line per LOG_INTERVAL_MS, with the number left out. */
class RateLimitedLog {
  private loggedAt = 0;
  private leftOut = 0;

  constructor(private readonly message: string) {}

  log(request: FastifyRequest, error: unknown): void {
    const now = Date.now();
    if (now - this.loggedAt < LOG_INTERVAL_MS) {
      this.leftOut += 1;
      return;
    }
    request.log.error({ err: error, similarErrorsNotLogged: this.leftOut }, this.message);
    this.loggedAt = now;
    this.leftOut = 0;
  }
}

const LOG_INTERVAL_MS = 10_000;

const unavailableLog = new RateLimitedLog('the metadata database is unavailable; answering 503');
const storageFullLog = new RateLimitedLog(
  'the data directory or the database is out of space; answering 507',
);

/** Logs an outage of the metadata database, at most once per LOG_INTERVAL_MS. */
export function logUnavailable(request: FastifyRequest, error: unknown): void {
  unavailableLog.log(request, error);
}

/** Logs a full disk, at most once per LOG_INTERVAL_MS. */
export function logStorageFull(request: FastifyRequest, error: unknown): void {
  storageFullLog.log(request, error);
}

/**
 * Reports whether an error means that the disk or quota of the blob store or
 * the metadata database is full: ENOSPC and EDQUOT from the file system,
 * SQLITE_FULL, and PostgreSQL's disk_full (53100).
 */
export function isStorageFull(error: unknown): boolean {
  const code = (error as { code?: unknown } | undefined)?.code;
  return code === 'ENOSPC' || code === 'EDQUOT' || code === 'SQLITE_FULL' || code === '53100';
}

/** The message of a 507 response to a full disk. */
export const STORAGE_FULL_MESSAGE =
  'the registry is out of storage space; retry after its operator has freed some';

/** Reports whether a request declared a body, by its length or chunked transfer coding. */
function hasBody(request: FastifyRequest): boolean {
  const length = request.headers['content-length'];
  return (
    (length !== undefined && length !== '0') || request.headers['transfer-encoding'] !== undefined
  );
}

function httpStatusOf(error: unknown): number | undefined {
  const status = (error as { statusCode?: unknown }).statusCode;
  return typeof status === 'number' ? status : undefined;
}

/**
 * Reports whether an error came from the client hanging up mid-request. The
 * request stream's `destroyed` flag is no evidence: it is also set once a
 * body has been read completely.
 */
function clientWentAway(request: FastifyRequest, error: unknown): boolean {
  if (error instanceof RegistryError) return false;
  const code = (error as NodeJS.ErrnoException).code;
  return (
    code === 'ECONNRESET' ||
    code === 'ERR_STREAM_PREMATURE_CLOSE' ||
    (error as Error).message === 'aborted' ||
    (request.raw.socket?.destroyed ?? false)
  );
}
