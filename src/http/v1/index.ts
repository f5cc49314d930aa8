import '@fastify/swagger';

import swagger from '@fastify/swagger';
import type { FastifyInstance } from 'fastify';

import { AccountError } from '../../auth/accounts.js';
import { PolicyValidationError } from '../../auth/policy.js';
import { registerAccountRoutes } from './accounts.js';
import { registerAuditRoutes } from './audit.js';
import { registerFsckRoutes } from './fsck.js';
import { registerGcRoutes } from './gc.js';
import { isDatabaseUnavailable } from '../../metadata/db.js';
import {
  isStorageFull,
  logStorageFull,
  logUnavailable,
  STORAGE_FULL_MESSAGE,
  UNAVAILABLE_RETRY_SECONDS,
} from '../errors.js';
import { ApiError, sendJson, type V1Deps } from './context.js';
import { registerHealthRoutes } from './health.js';
import { registerPolicyRoutes } from './policies.js';
import { registerRepositoryRoutes } from './repositories.js';
import { registerSessionRoutes } from './session.js';

export type { V1Deps } from './context.js';

const ACCOUNT_ERROR_STATUS = { invalid: 400, conflict: 409, not_found: 404 } as const;

/**
 * Registers the admin API under /v1 in its own encapsulated context, which
 * parses JSON bodies (the /v2/ API streams its bodies unparsed), and serves
 * the OpenAPI document generated from the routes' schemas.
 */
export async function registerV1(app: FastifyInstance, deps: V1Deps): Promise<void> {
  await app.register(async (v1) => {
    await v1.register(swagger, {
      openapi: {
        openapi: '3.0.3',
        info: { title: 'mcr admin API', version: '1' },
        components: {
          securitySchemes: {
            session: { type: 'http', scheme: 'bearer' },
            basic: { type: 'http', scheme: 'basic' },
          },
        },
        security: [{ session: [] }, { basic: [] }],
      },
      hideUntagged: true,
    });

    v1.addContentTypeParser(
      'application/json',
      { parseAs: 'string', bodyLimit: 1024 * 1024 },
      (_request, body, done) => {
        try {
          done(null, body === '' ? {} : JSON.parse(body as string));
        } catch {
          done(new ApiError(400, 'request body is not valid JSON'), undefined);
        }
      },
    );

    v1.setErrorHandler((error, request, reply) => {
      const send = (status: number, message: string, headers: Record<string, string> = {}) =>
        reply
          .code(status)
          .headers(headers)
          .type('application/json')
          .send(JSON.stringify({ error: message }));

      if (error instanceof ApiError) return send(error.status, error.message, error.headers);
      if (error instanceof AccountError) {
        return send(ACCOUNT_ERROR_STATUS[error.reason], error.message);
      }
      if (error instanceof PolicyValidationError) return send(400, error.message);
      const fastifyError = error as {
        validation?: unknown;
        statusCode?: number;
        message: string;
      };
      if (fastifyError.validation) return send(400, `invalid request: ${fastifyError.message}`);
      if (fastifyError.statusCode === 415) return send(415, 'send the body as application/json');
      if (fastifyError.statusCode !== undefined && fastifyError.statusCode < 500) {
        return send(fastifyError.statusCode, fastifyError.message);
      }
      if (isDatabaseUnavailable(error)) {
        logUnavailable(request, error);
        return send(503, 'the metadata database is unavailable; retry later', {
          'Retry-After': String(UNAVAILABLE_RETRY_SECONDS),
        });
      }
      if (isStorageFull(error)) {
        logStorageFull(request, error);
        return send(507, STORAGE_FULL_MESSAGE);
      }
      request.log.error({ err: error }, 'admin API request failed');
      return send(500, 'internal server error; the registry log has the details');
    });

    registerSessionRoutes(v1, deps);
    registerHealthRoutes(v1, deps);
    registerRepositoryRoutes(v1, deps);
    registerAccountRoutes(v1, deps);
    registerPolicyRoutes(v1, deps);
    registerAuditRoutes(v1, deps);
    registerFsckRoutes(v1, deps);
    registerGcRoutes(v1, deps);

    v1.get('/v1/openapi.json', async (_request, reply) => {
      sendJson(reply, 200, v1.swagger());
    });
  });
}
