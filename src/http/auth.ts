import type { FastifyRequest } from 'fastify';

import type { Caller } from '../auth/access.js';
import type { AccessTokens } from '../auth/access-tokens.js';
import type { Accounts } from '../auth/accounts.js';
import {
  LoginError,
  ThrottledError,
  type Authenticator,
  type Principal,
} from '../auth/authenticator.js';
import type { TokenIssuer } from '../auth/jwt.js';
import { RegistryError } from '../registry/errors.js';

/** Dependencies of request authentication. */
export interface AuthDeps {
  authenticator: Authenticator;
  tokens: AccessTokens;
  issuer: TokenIssuer;
  accounts: Accounts;
  /** The `service` of the token flow, and the audience of every token. */
  service: string;
  /** Public base URL; when empty, derived from each request's Host header. */
  externalUrl: string;
  tls: boolean;
}

/** Parsed Basic credentials. */
export interface BasicCredentials {
  username: string;
  password: string;
}

/** Reads Basic credentials from an Authorization header, if it carries them. */
export function basicCredentials(header: string | undefined): BasicCredentials | undefined {
  if (!header || !/^basic /i.test(header)) return undefined;
  const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
  const colon = decoded.indexOf(':');
  if (colon <= 0) return undefined;
  return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
}

/** Returns the base URL clients reach this registry at. */
export function baseUrl(request: FastifyRequest, deps: AuthDeps): string {
  if (deps.externalUrl) return deps.externalUrl.replace(/\/+$/, '');
  const host = request.headers.host ?? '127.0.0.1';
  return `${deps.tls ? 'https' : 'http'}://${host}`;
}

/** Builds the WWW-Authenticate challenge of the Docker token flow. */
export function challenge(
  request: FastifyRequest,
  deps: AuthDeps,
  scope?: string,
  error?: 'invalid_token' | 'insufficient_scope',
): string {
  let value = `Bearer realm="${baseUrl(request, deps)}/v2/token",service="${deps.service}"`;
  if (scope) value += `,scope="${scope}"`;
  if (error) value += `,error="${error}"`;
  return value;
}

/** Builds an UNAUTHORIZED error carrying the challenge. */
export function unauthorized(
  request: FastifyRequest,
  deps: AuthDeps,
  message: string,
  scope?: string,
  error?: 'invalid_token' | 'insufficient_scope',
): RegistryError {
  return new RegistryError('UNAUTHORIZED', message, {
    headers: { 'WWW-Authenticate': challenge(request, deps, scope, error) },
  });
}

/** Builds the caller of a request from a successful Basic login. */
export function callerFromPrincipal(principal: Principal, address: string): Caller {
  return {
    username: principal.account.username,
    role: principal.account.role,
    kind: principal.account.kind,
    address,
    tokenScopes: principal.tokenScopes,
    tokenId: principal.tokenId,
  };
}

/**
 * Identifies the caller from the Authorization header: anonymous (no header),
 * Basic credentials (password or access token), or a bearer token this
 * registry issued. Bad credentials are an error, never a silent fallback to
 * anonymous.
 */
export async function authenticate(request: FastifyRequest, deps: AuthDeps): Promise<Caller> {
  const address = request.ip;
  const header = request.headers.authorization;
  if (!header) return { address };

  const basic = basicCredentials(header);
  if (basic) {
    try {
      const principal = await deps.authenticator.login(basic.username, basic.password, address);
      return callerFromPrincipal(principal, address);
    } catch (error) {
      throw loginFailure(request, deps, error);
    }
  }

  if (/^basic /i.test(header)) {
    throw unauthorized(request, deps, 'malformed Basic credentials; send base64 of USER:PASSWORD');
  }

  if (/^bearer /i.test(header)) {
    const token = await deps.issuer.verify(header.slice(7).trim(), deps.service);
    if (!token) {
      throw unauthorized(
        request,
        deps,
        'bearer token is invalid or expired; request a new one',
        undefined,
        'invalid_token',
      );
    }
    if (token.subject === undefined) return { address, grants: token.access };
    const account = await deps.authenticator.tokenAccount(token.subject);
    // A change to the account (role, password, disabling, or deletion and a
    // new account of the same name) ends the tokens issued before it. The
    // issue time has whole seconds, so a change in the same second is missed.
    if (!account || account.updatedAt >= token.issuedAt + 1000) {
      throw unauthorized(
        request,
        deps,
        'the token belongs to an account that was changed, disabled or deleted since it was issued; request a new one',
        undefined,
        'invalid_token',
      );
    }
    return {
      username: account.username,
      role: account.role,
      kind: account.kind,
      address,
      grants: token.access,
    };
  }

  throw unauthorized(request, deps, 'unsupported Authorization scheme; use Basic or Bearer');
}

/** Maps a failed login to the response the client gets: 401, or 429 when throttled. */
export function loginFailure(
  request: FastifyRequest,
  deps: AuthDeps,
  error: unknown,
): RegistryError {
  if (error instanceof ThrottledError) {
    return new RegistryError('TOOMANYREQUESTS', error.message, {
      headers: { 'Retry-After': String(error.retryAfterSeconds) },
    });
  }
  if (error instanceof LoginError) {
    return unauthorized(request, deps, 'invalid username, password or access token');
  }
  throw error;
}
