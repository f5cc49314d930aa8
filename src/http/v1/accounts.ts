import type { FastifyInstance } from 'fastify';

import type { Caller } from '../../auth/access.js';
import type { AccessToken } from '../../auth/access-tokens.js';
import type { Account } from '../../auth/accounts.js';
import { ACCOUNT_KINDS, ROLES } from '../../auth/identity.js';
import { POLICY_ACTIONS } from '../../auth/policy.js';
import {
  ApiError,
  adminCaller,
  apiCaller,
  audit,
  decodeCursor,
  DEFAULT_PAGE,
  isNumber,
  isString,
  page,
  pageQuery,
  requireAdmin,
  sendJson,
  type V1Deps,
} from './context.js';

const usernameParam = {
  type: 'object',
  properties: { name: { type: 'string', maxLength: 64 } },
  required: ['name'],
} as const;

const createAccountBody = {
  type: 'object',
  additionalProperties: false,
  required: ['username', 'role', 'kind'],
  properties: {
    username: { type: 'string', minLength: 1, maxLength: 64 },
    password: { type: 'string', minLength: 1, maxLength: 1024 },
    role: { type: 'string', enum: [...ROLES] },
    kind: { type: 'string', enum: [...ACCOUNT_KINDS] },
  },
} as const;

const updateAccountBody = {
  type: 'object',
  additionalProperties: false,
  minProperties: 1,
  properties: {
    password: { type: 'string', minLength: 1, maxLength: 1024 },
    role: { type: 'string', enum: [...ROLES] },
    kind: { type: 'string', enum: [...ACCOUNT_KINDS] },
    disabled: { type: 'boolean' },
  },
} as const;

const createTokenBody = {
  type: 'object',
  additionalProperties: false,
  required: ['name'],
  properties: {
    name: { type: 'string', minLength: 1, maxLength: 64 },
    expires_at: { type: 'string', format: 'date-time' },
    scopes: {
      type: 'array',
      items: { type: 'string', enum: [...POLICY_ACTIONS] },
      uniqueItems: true,
    },
  },
} as const;

/** Renders an account for the API; the password hash never leaves the store. */
export function accountJson(account: Account) {
  return {
    username: account.username,
    role: account.role,
    kind: account.kind,
    provider: account.provider,
    disabled: account.disabled,
    created_at: new Date(account.createdAt).toISOString(),
    updated_at: new Date(account.updatedAt).toISOString(),
  };
}

function tokenJson(token: AccessToken) {
  const iso = (time: number | null) => (time === null ? null : new Date(time).toISOString());
  return {
    id: token.id,
    name: token.name,
    scopes: token.scopes,
    expires_at: iso(token.expiresAt),
    last_used_at: iso(token.lastUsedAt),
    revoked_at: iso(token.revokedAt),
    created_at: iso(token.createdAt),
  };
}

/**
 * Throws 403 for a caller that logged in with a scope-limited access token
 * without the admin scope: such a token must not mint or revoke tokens, or
 * it could issue itself an unlimited one.
 */
function requireUnlimitedCredential(caller: Caller): void {
  if (caller.tokenScopes && !caller.tokenScopes.includes('admin')) {
    throw new ApiError(
      403,
      `an access token limited to ${caller.tokenScopes.join(', ')} cannot manage tokens; log in with a password`,
    );
  }
}

/** Registers /v1/accounts and /v1/accounts/{name}/tokens. */
export function registerAccountRoutes(app: FastifyInstance, { auth }: V1Deps): void {
  app.get<{ Querystring: { limit?: number; cursor?: string } }>(
    '/v1/accounts',
    {
      schema: {
        tags: ['accounts'],
        summary: 'List accounts',
        querystring: { type: 'object', additionalProperties: false, properties: pageQuery },
      },
    },
    async (request, reply) => {
      await adminCaller(request, auth);
      const limit = request.query.limit ?? DEFAULT_PAGE;
      const after = decodeCursor(request.query.cursor, isString);
      const { items, nextCursor } = page(
        await auth.accounts.list(limit + 1, after),
        limit,
        (account) => account.username,
      );
      sendJson(reply, 200, { accounts: items.map(accountJson), next_cursor: nextCursor });
    },
  );

  app.post<{
    Body: {
      username: string;
      password?: string;
      role: 'admin' | 'user' | 'guest';
      kind: 'human' | 'system';
    };
  }>(
    '/v1/accounts',
    { schema: { tags: ['accounts'], summary: 'Create an account', body: createAccountBody } },
    async (request, reply) => {
      const caller = await adminCaller(request, auth);
      const account = await auth.accounts.create(request.body);
      await audit(auth, caller, {
        type: 'account.create',
        details: { account: account.username, role: account.role, kind: account.kind },
      });
      sendJson(reply, 201, accountJson(account));
    },
  );

  app.get<{ Params: { name: string } }>(
    '/v1/accounts/:name',
    { schema: { tags: ['accounts'], summary: 'Show an account', params: usernameParam } },
    async (request, reply) => {
      const caller = await apiCaller(request, auth);
      if (caller.username !== request.params.name) requireAdmin(caller);
      const account = await auth.accounts.findByName(request.params.name);
      if (!account) throw new ApiError(404, `account ${request.params.name} not found`);
      sendJson(reply, 200, accountJson(account));
    },
  );

  app.patch<{
    Params: { name: string };
    Body: {
      password?: string;
      role?: 'admin' | 'user' | 'guest';
      kind?: 'human' | 'system';
      disabled?: boolean;
    };
  }>(
    '/v1/accounts/:name',
    {
      schema: {
        tags: ['accounts'],
        summary: 'Change an account',
        params: usernameParam,
        body: updateAccountBody,
      },
    },
    async (request, reply) => {
      const caller = await adminCaller(request, auth);
      const account = await auth.accounts.update(request.params.name, request.body);
      const { password, ...changes } = request.body;
      await audit(auth, caller, {
        type: 'account.update',
        details: { account: account.username, ...changes, passwordChanged: password !== undefined },
      });
      sendJson(reply, 200, accountJson(account));
    },
  );

  app.delete<{ Params: { name: string } }>(
    '/v1/accounts/:name',
    { schema: { tags: ['accounts'], summary: 'Delete an account', params: usernameParam } },
    async (request, reply) => {
      const caller = await adminCaller(request, auth);
      if (caller.username === request.params.name) {
        throw new ApiError(409, 'an administrator cannot delete their own account');
      }
      await auth.accounts.delete(request.params.name);
      await audit(auth, caller, {
        type: 'account.delete',
        details: { account: request.params.name },
      });
      reply.code(204).send();
    },
  );

  // Account holders manage their own tokens; administrators manage anyone's.
  app.get<{ Params: { name: string }; Querystring: { limit?: number; cursor?: string } }>(
    '/v1/accounts/:name/tokens',
    {
      schema: {
        tags: ['tokens'],
        summary: "List an account's access tokens",
        params: usernameParam,
        querystring: { type: 'object', additionalProperties: false, properties: pageQuery },
      },
    },
    async (request, reply) => {
      const caller = await apiCaller(request, auth);
      if (caller.username !== request.params.name) requireAdmin(caller);
      if (!(await auth.accounts.findByName(request.params.name))) {
        throw new ApiError(404, `account ${request.params.name} not found`);
      }
      const limit = request.query.limit ?? DEFAULT_PAGE;
      const after = decodeCursor(request.query.cursor, isNumber);
      const rows = await auth.tokens.list(request.params.name, limit + 1, after);
      const { items, nextCursor } = page(rows, limit, (token) => token.id);
      sendJson(reply, 200, { tokens: items.map(tokenJson), next_cursor: nextCursor });
    },
  );

  app.post<{
    Params: { name: string };
    Body: { name: string; expires_at?: string; scopes?: Array<(typeof POLICY_ACTIONS)[number]> };
  }>(
    '/v1/accounts/:name/tokens',
    {
      schema: {
        tags: ['tokens'],
        summary: 'Issue an access token',
        params: usernameParam,
        body: createTokenBody,
      },
    },
    async (request, reply) => {
      const caller = await apiCaller(request, auth);
      if (caller.username !== request.params.name) requireAdmin(caller);
      requireUnlimitedCredential(caller);
      const expiresAt = request.body.expires_at ? Date.parse(request.body.expires_at) : null;
      if (Number.isNaN(expiresAt)) {
        throw new ApiError(
          400,
          `invalid expires_at "${request.body.expires_at}": use an ISO 8601 time`,
        );
      }
      const { token, secret } = await auth.tokens.create(request.params.name, {
        name: request.body.name,
        expiresAt,
        scopes: request.body.scopes ?? null,
      });
      await audit(auth, caller, {
        type: 'token.issue',
        details: {
          account: request.params.name,
          token: token.name,
          tokenId: token.id,
          scopes: token.scopes,
        },
      });
      sendJson(reply, 201, { ...tokenJson(token), secret });
    },
  );

  app.delete<{ Params: { name: string; id: number } }>(
    '/v1/accounts/:name/tokens/:id',
    {
      schema: {
        tags: ['tokens'],
        summary: 'Revoke an access token',
        params: {
          type: 'object',
          properties: { name: { type: 'string' }, id: { type: 'integer', minimum: 1 } },
          required: ['name', 'id'],
        },
      },
    },
    async (request, reply) => {
      const caller = await apiCaller(request, auth);
      if (caller.username !== request.params.name) requireAdmin(caller);
      requireUnlimitedCredential(caller);
      const token = await auth.tokens.revoke(request.params.name, request.params.id);
      await audit(auth, caller, {
        type: 'token.revoke',
        details: { account: request.params.name, token: token.name, tokenId: token.id },
      });
      sendJson(reply, 200, tokenJson(token));
    },
  );
}
