import type { FastifyReply, FastifyRequest } from 'fastify';

import type { AuditEventInput, AuditLog } from '../../audit/log.js';
import type { AccessControl, Action, Caller } from '../../auth/access.js';
import type { Metrics } from '../../metrics/index.js';
import { RegistryError } from '../../registry/errors.js';
import { unauthorized, type AuthDeps } from '../auth.js';
import type { Registry } from '../../registry/index.js';
import { releaseReceivedChunks } from '../chunk-collection.js';

/** Dependencies shared by the /v2/ handlers. */
export interface V2Deps {
  registry: Registry;
  metrics: Metrics;
  access: AccessControl;
  auth: AuthDeps;
  audit: AuditLog;
  /** Public base URL for Location headers; relative locations when empty. */
  externalUrl: string;
}

/** One /v2/ request being handled. */
export interface V2Call {
  deps: V2Deps;
  request: FastifyRequest;
  reply: FastifyReply;
  caller: Caller;
  query: URLSearchParams;
}

/**
 * Authorizes an operation through the single access-control decision. Every
 * /v2/ handler calls this (or authorizeAny) before touching the registry core.
 */
export async function authorize(
  call: V2Call,
  repository: string | null,
  action: Action,
): Promise<void> {
  await authorizeAny(call, repository, [action]);
}

/**
 * Authorizes an operation that any one of `actions` permits. A refusal is 401
 * with a challenge when a new token could help (an anonymous caller, or a
 * bearer token without the scope that the policy would grant), and 403
 * otherwise.
 */
export async function authorizeAny(
  call: V2Call,
  repository: string | null,
  actions: Action[],
): Promise<void> {
  const { access, auth } = call.deps;
  for (const action of actions) {
    if (await access.decide(call.caller, repository, action)) return;
  }

  const scope = challengeScope(repository, actions);
  // A request without credentials is the first step of the token flow, not a
  // denial; every refusal after that is audited.
  if (call.caller.username === undefined && !call.caller.grants) {
    throw unauthorized(call.request, auth, 'authentication required', scope);
  }
  if (call.caller.grants) {
    for (const action of actions) {
      if (await access.policyAllows(call.caller, repository, action)) {
        throw unauthorized(call.request, auth, `token lacks ${scope}`, scope, 'insufficient_scope');
      }
    }
  }
  await recordAudit(call, {
    type: 'access.denied',
    repository,
    outcome: 'denied',
    details: { actions, method: call.request.method, path: call.request.url.split('?')[0] },
  });
  if (call.caller.username === undefined) {
    throw unauthorized(call.request, auth, 'authentication required', scope);
  }
  throw new RegistryError(
    'DENIED',
    `${call.caller.username} may not ${actions.join(' or ')}${repository ? ` ${repository}` : ''}`,
    { detail: repository ? { repository, actions } : { actions } },
  );
}

/**
 * Returns the scope a client must request, named after the first (preferred)
 * action. A push requests pull too, as the reference registry does.
 */
function challengeScope(repository: string | null, actions: Action[]): string {
  if (repository === null) return 'registry:catalog:*';
  const wanted = actions[0] === 'push' ? ['pull', 'push'] : [actions[0] as string];
  return `repository:${repository}:${wanted.join(',')}`;
}

/** Records an audit event on behalf of the caller. */
export function recordAudit(
  call: V2Call,
  event: Omit<AuditEventInput, 'actor' | 'clientAddress'>,
): Promise<void> {
  return call.deps.audit.record({
    ...event,
    actor: call.caller.username ?? null,
    clientAddress: call.caller.address,
  });
}

/** Builds a Location header value for a path under /v2/. */
export function location(call: V2Call, path: string): string {
  return call.deps.externalUrl ? `${call.deps.externalUrl.replace(/\/+$/, '')}${path}` : path;
}

/** Percent-encodes each segment of a repository name for use in a URL. */
export function namePath(name: string): string {
  return name.split('/').map(encodeURIComponent).join('/');
}

/** Reports whether the request has a body to read. */
export function hasBody(request: FastifyRequest): boolean {
  const length = request.headers['content-length'];
  if (length !== undefined) return Number(length) > 0;
  return request.headers['transfer-encoding'] !== undefined;
}

/** Parses Content-Length; undefined when absent. */
export function contentLength(request: FastifyRequest): number | undefined {
  const value = request.headers['content-length'];
  if (value === undefined) return undefined;
  const length = Number(value);
  if (!Number.isSafeInteger(length) || length < 0) {
    throw new RegistryError('SIZE_INVALID', `invalid Content-Length "${value}"`);
  }
  return length;
}

/** Parses the `n` pagination parameter. */
export function pageSize(call: V2Call): number | undefined {
  const value = call.query.get('n');
  if (value === null || value === '') return undefined;
  const n = Number(value);
  if (!/^\d+$/.test(value) || !Number.isSafeInteger(n)) {
    // UNSUPPORTED is the specification's code for an invalid set of parameters.
    throw new RegistryError(
      'UNSUPPORTED',
      `invalid n "${value.slice(0, 32)}": use a non-negative integer`,
      { status: 400, detail: { n: value.slice(0, 32) } },
    );
  }
  return n;
}

/** Passes a request body through, counting its bytes as received blob data. */
export async function* countReceived(
  body: AsyncIterable<Uint8Array>,
  metrics: Metrics,
): AsyncIterable<Uint8Array> {
  for await (const chunk of body) {
    metrics.blobBytesReceived(chunk.length);
    yield chunk;
    releaseReceivedChunks(chunk.length);
  }
}
