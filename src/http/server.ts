import Fastify, { LogController, type FastifyInstance } from 'fastify';
import type { Logger } from 'pino';

import type { AccessControl } from '../auth/access.js';
import type { Registry } from '../registry/index.js';
import type { AuthServices } from '../app.js';
import type { AuthDeps } from './auth.js';
import { errorBody, sendError } from './errors.js';
import { registerTokenEndpoint } from './token.js';
import { registerV1, type V1Deps } from './v1/index.js';
import { registerV2 } from './v2/index.js';

export interface ServerOptions {
  registry: Registry;
  access: AccessControl;
  auth: AuthDeps;
  services: AuthServices;
  checkHealth: V1Deps['checkHealth'];
  tokenTtlMs: number;
  refreshTokenTtlMs: number;
  log: Logger;
  externalUrl: string;
  https?: { cert: Buffer; key: Buffer };
}

/**
 * Builds the HTTP server. Request bodies are never parsed by the framework:
 * handlers stream them, so blob bytes pass through without being buffered.
 */
export function buildServer(options: ServerOptions): FastifyInstance {
  const app = Fastify({
    loggerInstance: options.log,
    logController: new LogController({ disableRequestLogging: true }),
    exposeHeadRoutes: false,
    return503OnClosing: true,
    requestTimeout: 0,
    routerOptions: { maxParamLength: 8192 },
    // Unknown fields are an error, not silently dropped.
    ajv: { customOptions: { removeAdditional: false } },
    ...(options.https ? { https: { ...options.https, minVersion: 'TLSv1.3' as const } } : {}),
  }) as unknown as FastifyInstance;

  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (_request, _payload, done) => done(null));

  app.addHook('onRequest', async (_request, reply) => {
    reply.header('Docker-Distribution-API-Version', 'registry/2.0');
  });

  app.addHook('onResponse', async (request, reply) => {
    request.log.info(
      {
        method: request.method,
        path: request.url.split('?')[0],
        status: reply.statusCode,
        durationMs: Math.round(reply.elapsedTime * 10) / 10,
        client: request.ip,
      },
      'request',
    );
  });

  app.setErrorHandler((error, request, reply) => sendError(request, reply, error));
  app.setNotFoundHandler((request, reply) => {
    const path = request.url.split('?')[0] ?? '';
    const message = `no endpoint at ${request.method} ${path.slice(0, 300)}`;
    // The admin API reports errors as {"error"}; everything else in the OCI format.
    const body = path.startsWith('/v1/')
      ? JSON.stringify({ error: message })
      : errorBody('NOT_FOUND', message);
    reply.code(404).type('application/json').send(body);
  });

  registerTokenEndpoint(app, {
    ...options.auth,
    access: options.access,
    tokenTtlMs: options.tokenTtlMs,
    refreshTokenTtlMs: options.refreshTokenTtlMs,
  });
  void registerV1(app, {
    auth: options.services,
    registry: options.registry,
    checkHealth: options.checkHealth,
  });
  registerV2(app, {
    registry: options.registry,
    access: options.access,
    auth: options.auth,
    audit: options.services.audit,
    externalUrl: options.externalUrl,
  });
  return app;
}
