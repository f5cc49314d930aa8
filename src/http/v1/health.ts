import type { FastifyInstance } from 'fastify';

import { sendJson, type V1Deps } from './context.js';

/** Registers /v1/health: liveness and readiness, without authentication. */
export function registerHealthRoutes(app: FastifyInstance, deps: V1Deps): void {
  app.get(
    '/v1/health',
    { schema: { tags: ['health'], summary: 'Report whether the database and storage answer' } },
    async (_request, reply) => {
      const checks = await deps.checkHealth();
      const ok = Object.values(checks).every((check) => check.ok);
      sendJson(reply, ok ? 200 : 503, { status: ok ? 'ok' : 'degraded', checks });
    },
  );
}
