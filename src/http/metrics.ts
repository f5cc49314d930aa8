import Fastify, { type FastifyInstance, type FastifyRequest } from 'fastify';

import type { Metrics } from '../metrics/index.js';

const routeLabels = new WeakMap<FastifyRequest, string>();

/**
 * Names the route of a request for the metrics. The /v2/ API serves every
 * operation from one wildcard route, so it labels requests by operation.
 */
export function setRouteLabel(request: FastifyRequest, label: string): void {
  routeLabels.set(request, label);
}

/** Records every response's route, status and latency, and the bytes of complete blob responses. */
export function instrument(app: FastifyInstance, metrics: Metrics): void {
  app.addHook('onResponse', async (request, reply) => {
    const route = routeLabels.get(request) ?? request.routeOptions.url ?? 'unknown';
    metrics.observeRequest(route, request.method, reply.statusCode, reply.elapsedTime / 1000);

    const complete = reply.raw.writableFinished;
    if (route === '/v2/blob' && request.method === 'GET' && complete) {
      const length = Number(reply.getHeader('content-length') ?? 0);
      if (reply.statusCode === 200 || reply.statusCode === 206) metrics.blobBytesSent(length);
    }
  });
}

/** Serves /metrics on the main server, behind the check `authorize` makes. */
export function registerMetricsRoute(
  app: FastifyInstance,
  metrics: Metrics,
  authorize: (request: FastifyRequest) => Promise<void>,
): void {
  app.get('/metrics', async (request, reply) => {
    await authorize(request);
    reply.header('Content-Type', metrics.contentType).send(await metrics.render());
  });
}

/** Starts a separate server that serves /metrics to anyone who reaches its address. */
export async function startOpenMetricsServer(
  metrics: Metrics,
  host: string,
  port: number,
): Promise<FastifyInstance> {
  const server = Fastify();
  server.get('/metrics', async (_request, reply) => {
    reply.header('Content-Type', metrics.contentType).send(await metrics.render());
  });
  await server.listen({ host, port });
  return server;
}
