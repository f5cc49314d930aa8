import type { FastifyInstance } from 'fastify';

import { LoginError, ThrottledError } from '../../auth/authenticator.js';
import { ApiError, sendJson, type V1Deps } from './context.js';

const loginBody = {
  type: 'object',
  additionalProperties: false,
  required: ['username', 'password'],
  properties: {
    username: { type: 'string', minLength: 1, maxLength: 64 },
    password: { type: 'string', minLength: 1, maxLength: 1024 },
  },
} as const;

/** Registers login and logout, which open and close sessions for the CLI and web UI. */
export function registerSessionRoutes(app: FastifyInstance, { auth }: V1Deps): void {
  app.post<{ Body: { username: string; password: string } }>(
    '/v1/auth/login',
    { schema: { tags: ['auth'], summary: 'Open a session', body: loginBody } },
    async (request, reply) => {
      let principal;
      try {
        principal = await auth.authenticator.login(
          request.body.username,
          request.body.password,
          request.ip,
        );
      } catch (error) {
        if (error instanceof ThrottledError) {
          throw new ApiError(429, error.message, {
            'Retry-After': String(error.retryAfterSeconds),
          });
        }
        if (error instanceof LoginError) {
          throw new ApiError(401, 'invalid username, password or access token');
        }
        throw error;
      }
      // A session would outlive the token's revocation and drop its scopes.
      if (principal.method !== 'password') {
        throw new ApiError(
          401,
          'log in with a password; send an access token itself as Basic credentials or as a Bearer token',
        );
      }
      const session = await auth.sessions.create(principal.account);
      // The account changed while the password was checked.
      if (session === undefined)
        throw new ApiError(401, 'invalid username, password or access token');
      sendJson(reply, 200, {
        token: session.token,
        expires_at: new Date(session.expiresAt).toISOString(),
        account: {
          username: principal.account.username,
          role: principal.account.role,
          kind: principal.account.kind,
        },
      });
    },
  );

  app.post(
    '/v1/auth/logout',
    { schema: { tags: ['auth'], summary: 'Close the session of the Bearer token' } },
    async (request, reply) => {
      const header = request.headers.authorization ?? '';
      if (!/^bearer /i.test(header) || !(await auth.sessions.delete(header.slice(7).trim()))) {
        throw new ApiError(401, 'no live session in the Authorization header');
      }
      reply.code(204).send();
    },
  );
}
