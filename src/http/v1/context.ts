import type { FastifyReply, FastifyRequest } from 'fastify';

import type { AuthServices } from '../../app.js';
import type { AuditEventInput } from '../../audit/log.js';
import type { Caller } from '../../auth/access.js';
import type { Fsck } from '../../fsck/index.js';
import { LoginError, ThrottledError } from '../../auth/authenticator.js';
import type { Registry } from '../../registry/index.js';
import { basicCredentials, callerFromPrincipal } from '../auth.js';

/** Dependencies shared by the admin API handlers. */
export interface V1Deps {
  auth: AuthServices;
  registry: Registry;
  /** Checks that the database and blob storage respond, for the health endpoint. */
  checkHealth(): Promise<Record<string, { ok: boolean; error?: string }>>;
  fsck: Fsck;
}

/** An admin API failure: rendered as `{"error": message}` with its status. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'ApiError';
  }
}

const CHALLENGE = { 'WWW-Authenticate': 'Bearer realm="mcr", Basic realm="mcr"' };

/**
 * Authenticates an admin API request: a session token from /v1/auth/login as
 * a Bearer token, or Basic credentials (password or access token).
 */
export async function apiCaller(request: FastifyRequest, auth: AuthServices): Promise<Caller> {
  const header = request.headers.authorization;
  if (header && /^bearer /i.test(header)) {
    const account = await auth.sessions.verify(header.slice(7).trim());
    if (!account) {
      throw new ApiError(401, 'session is invalid or expired: log in again', CHALLENGE);
    }
    return {
      username: account.username,
      role: account.role,
      kind: account.kind,
      address: request.ip,
      tokenScopes: null,
    };
  }

  const credentials = basicCredentials(header);
  if (!credentials) {
    throw new ApiError(401, 'authentication required: log in or send Basic credentials', CHALLENGE);
  }
  try {
    const principal = await auth.authenticator.login(
      credentials.username,
      credentials.password,
      request.ip,
    );
    return callerFromPrincipal(principal, request.ip);
  } catch (error) {
    if (error instanceof ThrottledError) {
      throw new ApiError(429, error.message, { 'Retry-After': String(error.retryAfterSeconds) });
    }
    if (error instanceof LoginError) {
      throw new ApiError(401, 'invalid username, password or access token', CHALLENGE);
    }
    throw error;
  }
}

/** Throws 403 unless the caller has the admin role (and, for a token, the admin scope). */
export function requireAdmin(caller: Caller): void {
  const tokenAllows = !caller.tokenScopes || caller.tokenScopes.includes('admin');
  if (caller.role !== 'admin' || !tokenAllows) {
    throw new ApiError(403, `${caller.username} is not an administrator`);
  }
}

/** Authenticates the request and requires the admin role; returns the caller. */
export async function adminCaller(request: FastifyRequest, auth: AuthServices): Promise<Caller> {
  const caller = await apiCaller(request, auth);
  requireAdmin(caller);
  return caller;
}

/** Sends a JSON body with a status. */
export function sendJson(reply: FastifyReply, status: number, body: unknown): void {
  reply.code(status).type('application/json').send(JSON.stringify(body));
}

/** Records an admin action in the audit log on behalf of the caller. */
export function audit(
  auth: AuthServices,
  caller: Caller,
  event: Omit<AuditEventInput, 'actor' | 'clientAddress' | 'outcome'> & {
    outcome?: AuditEventInput['outcome'];
  },
): Promise<void> {
  return auth.audit.record({
    outcome: 'success',
    ...event,
    actor: caller.username ?? null,
    clientAddress: caller.address,
  });
}

/** Default and largest page size of every admin list. */
export const DEFAULT_PAGE = 100;
export const MAX_PAGE = 1000;

/** The querystring schema every list endpoint accepts. */
export const pageQuery = {
  limit: { type: 'integer', minimum: 1, maximum: MAX_PAGE },
  cursor: { type: 'string', maxLength: 1024 },
} as const;

/** Encodes the sort key of a page's last item as an opaque cursor. */
export function encodeCursor(key: unknown): string {
  return Buffer.from(JSON.stringify(key)).toString('base64url');
}

/** Decodes a cursor made by encodeCursor; a malformed one is a 400. */
export function decodeCursor<T>(
  cursor: string | undefined,
  check: (value: unknown) => value is T,
): T | undefined {
  if (cursor === undefined) return undefined;
  try {
    const value: unknown = JSON.parse(Buffer.from(cursor, 'base64url').toString('utf8'));
    if (check(value)) return value;
  } catch {
    // Reported below.
  }
  throw new ApiError(400, 'invalid cursor: pass the next_cursor of the previous page unchanged');
}

/**
 * Cuts a list fetched with limit + 1 rows down to one page and makes the
 * cursor of the next page when more remain.
 */
export function page<T>(
  rows: T[],
  limit: number,
  keyOf: (row: T) => unknown,
): { items: T[]; nextCursor: string | null } {
  if (rows.length <= limit) return { items: rows, nextCursor: null };
  const items = rows.slice(0, limit);
  return { items, nextCursor: encodeCursor(keyOf(items[items.length - 1] as T)) };
}

export const isString = (value: unknown): value is string => typeof value === 'string';
export const isNumber = (value: unknown): value is number => typeof value === 'number';
