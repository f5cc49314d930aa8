import type { FastifyReply, FastifyRequest } from 'fastify';

import type { AuthServices } from '../../app.js';
import type { Caller } from '../../auth/access.js';
import { LoginError, ThrottledError } from '../../auth/authenticator.js';
import { basicCredentials, callerFromPrincipal } from '../auth.js';

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

/** Authenticates an admin API request with Basic credentials or an access token. */
export async function apiCaller(request: FastifyRequest, auth: AuthServices): Promise<Caller> {
  const credentials = basicCredentials(request.headers.authorization);
  if (!credentials) {
    throw new ApiError(401, 'authentication required: send Basic credentials', {
      'WWW-Authenticate': 'Basic realm="mcr"',
    });
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
      throw new ApiError(401, 'invalid username, password or access token', {
        'WWW-Authenticate': 'Basic realm="mcr"',
      });
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

/** Sends a JSON body with a status. */
export function sendJson(reply: FastifyReply, status: number, body: unknown): void {
  reply.code(status).type('application/json').send(JSON.stringify(body));
}
