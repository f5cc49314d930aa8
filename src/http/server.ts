import { STATUS_CODES } from 'node:http';
import type { Duplex } from 'node:stream';

import Fastify, { LogController, type FastifyInstance, type FastifyReply } from 'fastify';
import type { Logger } from 'pino';

import type { AccessControl } from '../auth/access.js';
import { RegistryError } from '../registry/errors.js';
import type { Registry } from '../registry/index.js';
import type { AuthServices } from '../app.js';
import type { Metrics } from '../metrics/index.js';
import type { AuthDeps } from './auth.js';
import { errorBody, sendError } from './errors.js';
import { instrument, registerMetricsRoute } from './metrics.js';
import { registerTokenEndpoint } from './token.js';
import { ApiError, apiCaller, requireAdmin } from './v1/context.js';
import { registerV1, type V1Deps } from './v1/index.js';
import { registerV2 } from './v2/index.js';

/**
 * Sends an OCI error body for a request that Node's HTTP parser rejected
 * (malformed, or headers over its limit), then closes the connection.
 */
function sendClientError(error: Error & { code?: string }, socket: Duplex): void {
  // A reset connection cannot receive a reply.
  if (error.code === 'ECONNRESET' || socket.destroyed) return;
  let status = 400;
  let message = `malformed HTTP request (${error.code ?? error.message})`;
  if (error.code === 'HPE_HEADER_OVERFLOW') {
    status = 431;
    message = 'request headers are larger than the server accepts (16 KiB)';
  } else if (error.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    status = 408;
    message = 'the request did not arrive in time';
  }
  const body = errorBody('UNSUPPORTED', message);
  if (socket.writable) {
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json\r\n` +
        `Content-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy(error);
}

/** Milliseconds a connection may send and receive nothing before it is closed. */
export const IDLE_TIMEOUT_MS = 60_000;

export interface ServerOptions {
  registry: Registry;
  access: AccessControl;
  auth: AuthDeps;
  services: AuthServices;
  metrics: Metrics;
  /** Placement of /metrics: off, here behind admin credentials, or on its own address. */
  metricsMode: 'off' | 'auth' | 'open';
  checkHealth: V1Deps['checkHealth'];
  fsck: V1Deps['fsck'];
  tokenTtlMs: number;
  refreshTokenTtlMs: number;
  log: Logger;
  externalUrl: string;
  https?: { cert: Buffer; key: Buffer };
  /** Called and waited for as each request arrives, before its other hooks and handler run. */
  onRequestArrival?: () => void | Promise<void>;
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
    // No limit on a whole request, because a large blob may take long; a
    // connection idle this long, such as a stalled upload, is closed, which
    // also releases its upload session.
    requestTimeout: 0,
    connectionTimeout: IDLE_TIMEOUT_MS,
    routerOptions: { maxParamLength: 8192 },
    // A URL the router cannot decode still gets an error in the API's own format.
    frameworkErrors: (error, request, reply) => {
      const message = `invalid request URL: ${error.message}`;
      const body = request.url.startsWith('/v1/')
        ? JSON.stringify({ error: message })
        : errorBody('NAME_INVALID', message);
      (reply as FastifyReply).code(400).type('application/json').send(body);
    },
    // Requests Node's HTTP parser rejects never reach the router; they get
    // an error in the registry's format too.
    clientErrorHandler: sendClientError,
    // Unknown fields are an error, not silently dropped.
    ajv: { customOptions: { removeAdditional: false } },
    ...(options.https ? { https: { ...options.https, minVersion: 'TLSv1.3' as const } } : {}),
  }) as unknown as FastifyInstance;

  app.removeAllContentTypeParsers();
  app.addContentTypeParser('*', (request, _payload, done) => {
    // The admin API parses only JSON. Passing another type on as no body
    // would drop what the caller sent: {"dry_run": true} as text/plain
    // would start a real GC run.
    if (request.url.startsWith('/v1/')) {
      done(new ApiError(415, 'send the body as application/json'), undefined);
      return;
    }
    done(null);
  });

  app.addHook('onRequest', async (request, reply) => {
    reply.header('Docker-Distribution-API-Version', 'registry/2.0');
    // No name, reference, cursor or filter contains a NUL character, and
    // PostgreSQL rejects one in a query.
    if (request.url.includes('%00')) {
      const message = 'the request URL contains a NUL character (%00)';
      throw request.url.startsWith('/v1/')
        ? new ApiError(400, message)
        : new RegistryError('UNSUPPORTED', message, { status: 400 });
    }
    // SQLite's check is synchronous, so only PostgreSQL's needs the await.
    const arrival = options.onRequestArrival?.();
    if (arrival) await arrival;
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

  // Errors of routes outside /v2/ and /v1 (such as /metrics) use the admin
  // API's {"error"} form when they are ApiErrors.
  app.setErrorHandler((error, request, reply) => {
    if (error instanceof ApiError) {
      return reply
        .code(error.status)
        .headers(error.headers)
        .type('application/json')
        .send(JSON.stringify({ error: error.message }));
    }
    return sendError(request, reply, error);
  });
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
    fsck: options.fsck,
  });
  instrument(app, options.metrics);
  if (options.metricsMode === 'auth') {
    registerMetricsRoute(app, options.metrics, async (request) => {
      requireAdmin(await apiCaller(request, options.services));
    });
  }
  registerV2(app, {
    registry: options.registry,
    metrics: options.metrics,
    access: options.access,
    auth: options.auth,
    audit: options.services.audit,
    externalUrl: options.externalUrl,
  });
  return app;
}
