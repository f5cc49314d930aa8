import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

import type { AccessControl, Action, Caller } from '../auth/access.js';
import type { AccessEntry } from '../auth/jwt.js';
import type { PolicyAction } from '../auth/policy.js';
import { RegistryError } from '../registry/errors.js';
import { validateRepositoryName } from '../registry/names.js';
import {
  basicCredentials,
  callerFromPrincipal,
  loginFailure,
  unauthorized,
  type AuthDeps,
} from './auth.js';
import { sendError } from './errors.js';

export interface TokenEndpointDeps extends AuthDeps {
  access: AccessControl;
  tokenTtlMs: number;
  refreshTokenTtlMs: number;
}

/** A scope a client asked for, as in `repository:team/app:pull,push`. */
export interface RequestedScope {
  type: string;
  name: string;
  actions: string[];
}

/** Largest form body the POST flow reads, in bytes. */
const MAX_FORM_BYTES = 64 * 1024;

const REPOSITORY_ACTIONS: readonly Action[] = ['pull', 'push', 'delete'];

/**
 * Parses one scope. The name sits between the first and the last colon, and
 * the resource type may carry a class, as in `repository(plugin)`.
 */
export function parseScope(scope: string): RequestedScope | undefined {
  const first = scope.indexOf(':');
  const last = scope.lastIndexOf(':');
  if (first <= 0 || last === first) return undefined;
  const type = scope.slice(0, first).replace(/\(.*\)$/, '');
  const name = scope.slice(first + 1, last);
  const actions = scope
    .slice(last + 1)
    .split(',')
    .map((action) => action.trim())
    .filter((action) => action !== '');
  if (name === '' || actions.length === 0) return undefined;
  return { type, name, actions };
}

/**
 * Works out what to grant for each requested scope: only the actions the
 * policy allows this caller, never more. Unknown types and invalid names get
 * nothing.
 */
export async function grantScopes(
  access: AccessControl,
  caller: Caller,
  scopes: RequestedScope[],
): Promise<AccessEntry[]> {
  const grants: AccessEntry[] = [];
  for (const scope of scopes) {
    if (scope.type === 'registry' && scope.name === 'catalog') {
      if (await access.policyAllows(caller, null, 'catalog')) {
        grants.push({ type: 'registry', name: 'catalog', actions: ['*'] });
      }
      continue;
    }
    if (scope.type !== 'repository') continue;
    try {
      validateRepositoryName(scope.name);
    } catch {
      continue;
    }

    const wanted = scope.actions.includes('*')
      ? REPOSITORY_ACTIONS
      : REPOSITORY_ACTIONS.filter((action) => scope.actions.includes(action));
    const allowed: string[] = [];
    for (const action of wanted) {
      if (await access.policyAllows(caller, scope.name, action)) allowed.push(action);
    }
    const existing = grants.find(
      (grant) => grant.type === 'repository' && grant.name === scope.name,
    );
    if (existing) {
      existing.actions = [...new Set([...existing.actions, ...allowed])];
    } else {
      grants.push({ type: 'repository', name: scope.name, actions: allowed });
    }
  }
  return grants;
}

/**
 * Registers /v2/token: GET with optional Basic credentials (the Docker token
 * flow) and POST with an OAuth2 password or refresh-token grant.
 */
export function registerTokenEndpoint(app: FastifyInstance, deps: TokenEndpointDeps): void {
  app.get('/v2/token', async (request, reply) => {
    try {
      await handleGet(request, reply, deps);
    } catch (error) {
      sendError(request, reply, error);
    }
    return reply;
  });
  app.post('/v2/token', async (request, reply) => {
    try {
      await handlePost(request, reply, deps);
    } catch (error) {
      sendError(request, reply, error);
    }
    return reply;
  });
}

async function handleGet(request: FastifyRequest, reply: FastifyReply, deps: TokenEndpointDeps) {
  const query = new URLSearchParams(
    request.url.includes('?') ? request.url.slice(request.url.indexOf('?') + 1) : '',
  );
  checkService(query.get('service'), deps);

  const header = request.headers.authorization;
  const credentials = basicCredentials(header);
  if (header !== undefined && !credentials) {
    // A malformed header is an error, never a silent anonymous token.
    throw unauthorized(
      request,
      deps,
      'malformed Authorization header: send Basic credentials or none',
    );
  }
  const caller = credentials
    ? await login(request, deps, credentials.username, credentials.password)
    : { address: request.ip };

  const scopes = splitScopes(query.getAll('scope'));
  const access = await grantScopes(deps.access, caller, scopes);
  const issued = await deps.issuer.issue({
    subject: caller.username,
    audience: deps.service,
    access,
    ttlMs: deps.tokenTtlMs,
  });

  const body: Record<string, unknown> = {
    token: issued.token,
    access_token: issued.token,
    expires_in: issued.expiresIn,
    issued_at: issued.issuedAt.toISOString(),
  };
  if (query.get('offline_token') === 'true' && caller.username !== undefined) {
    body.refresh_token = await refreshToken(deps, caller);
  }
  logIssue(request, caller, access);
  sendJson(reply, body);
}

async function handlePost(request: FastifyRequest, reply: FastifyReply, deps: TokenEndpointDeps) {
  const form = await readForm(request);
  checkService(form.get('service'), deps);

  const grantType = form.get('grant_type');
  let caller: Caller;
  let refresh: string | undefined;
  if (grantType === 'password') {
    const username = form.get('username') ?? '';
    const password = form.get('password') ?? '';
    if (username === '' || password === '') {
      throw new RegistryError('UNAUTHORIZED', 'grant_type=password needs username and password', {
        status: 400,
      });
    }
    caller = await login(request, deps, username, password);
    if (form.get('access_type') === 'offline') refresh = await refreshToken(deps, caller);
  } else if (grantType === 'refresh_token') {
    const token = form.get('refresh_token') ?? '';
    caller = await callerFromRefreshToken(request, deps, token);
    refresh = token;
  } else {
    throw new RegistryError(
      'UNSUPPORTED',
      `unsupported grant_type "${(grantType ?? '').slice(0, 40)}"; use password or refresh_token`,
      { status: 400 },
    );
  }

  const scopes = splitScopes(form.getAll('scope'));
  const access = await grantScopes(deps.access, caller, scopes);
  const issued = await deps.issuer.issue({
    subject: caller.username,
    audience: deps.service,
    access,
    ttlMs: deps.tokenTtlMs,
  });
  logIssue(request, caller, access);
  sendJson(reply, {
    access_token: issued.token,
    token: issued.token,
    expires_in: issued.expiresIn,
    issued_at: issued.issuedAt.toISOString(),
    scope: scopes
      .map((scope) => `${scope.type}:${scope.name}:${scope.actions.join(',')}`)
      .join(' '),
    ...(refresh ? { refresh_token: refresh } : {}),
  });
}

async function login(
  request: FastifyRequest,
  deps: TokenEndpointDeps,
  username: string,
  password: string,
): Promise<Caller> {
  try {
    const principal = await deps.authenticator.login(username, password, request.ip);
    return callerFromPrincipal(principal, request.ip);
  } catch (error) {
    throw loginFailure(request, deps, error);
  }
}

/**
 * Issues a refresh token that carries the limits of the login it came from:
 * the access token's scopes and id, so that revoking the access token also
 * ends its refresh tokens.
 */
async function refreshToken(deps: TokenEndpointDeps, caller: Caller): Promise<string> {
  const issued = await deps.issuer.issue({
    subject: caller.username,
    audience: deps.service,
    access: [],
    ttlMs: deps.refreshTokenTtlMs,
    kind: 'refresh',
    claims: {
      ...(caller.tokenScopes ? { scp: caller.tokenScopes } : {}),
      ...(caller.tokenId !== undefined ? { tid: caller.tokenId } : {}),
    },
  });
  return issued.token;
}

/**
 * Turns a refresh token back into its caller. It fails when the token is
 * invalid or expired, the account is disabled or changed after the token was
 * issued (a new password, for example), or the access token it came from was
 * revoked or expired.
 */
async function callerFromRefreshToken(
  request: FastifyRequest,
  deps: TokenEndpointDeps,
  token: string,
): Promise<Caller> {
  const refused = new RegistryError(
    'UNAUTHORIZED',
    'refresh token is invalid, expired or revoked, or its account changed; log in again',
  );
  const verified = await deps.issuer.verify(token, deps.service, 'refresh');
  if (!verified?.subject) throw refused;
  const account = await deps.accounts.findByName(verified.subject);
  // Tokens carry whole seconds, so compare at that resolution.
  if (
    !account ||
    account.disabled ||
    Math.floor(account.updatedAt / 1000) * 1000 > verified.issuedAt
  ) {
    throw refused;
  }

  const tokenId = verified.claims.tid;
  if (typeof tokenId === 'number' && !(await deps.tokens.isActive(tokenId))) throw refused;
  const scopes = verified.claims.scp;
  return {
    username: account.username,
    role: account.role,
    kind: account.kind,
    address: request.ip,
    tokenScopes: Array.isArray(scopes) ? (scopes as PolicyAction[]) : null,
    tokenId: typeof tokenId === 'number' ? tokenId : undefined,
  };
}

/** Splits repeated and space-separated scope parameters into parsed scopes. */
function splitScopes(values: string[]): RequestedScope[] {
  const scopes: RequestedScope[] = [];
  for (const value of values) {
    for (const part of value.split(' ')) {
      const scope = parseScope(part.trim());
      if (scope) scopes.push(scope);
    }
  }
  return scopes;
}

function checkService(service: string | null, deps: TokenEndpointDeps): void {
  if (service !== null && service !== '' && service !== deps.service) {
    throw new RegistryError(
      'UNSUPPORTED',
      `unknown service "${service.slice(0, 100)}"; this registry's service is "${deps.service}"`,
      { status: 400 },
    );
  }
}

async function readForm(request: FastifyRequest): Promise<URLSearchParams> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of request.raw) {
    total += (chunk as Buffer).length;
    if (total > MAX_FORM_BYTES) {
      throw new RegistryError(
        'SIZE_INVALID',
        `token request body exceeds ${MAX_FORM_BYTES} bytes`,
        { status: 413 },
      );
    }
    chunks.push(chunk as Buffer);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function logIssue(request: FastifyRequest, caller: Caller, access: AccessEntry[]): void {
  request.log.info(
    { account: caller.username ?? null, client: caller.address, access },
    'token issued',
  );
}

function sendJson(reply: FastifyReply, body: Record<string, unknown>): void {
  reply
    .code(200)
    .header('Cache-Control', 'no-store')
    .type('application/json')
    .send(JSON.stringify(body));
}
