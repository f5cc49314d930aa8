import type { FastifyInstance } from 'fastify';

import {
  adminCaller,
  ApiError,
  decodeCursor,
  DEFAULT_PAGE,
  isNumber,
  page,
  pageQuery,
  sendJson,
  type V1Deps,
} from './context.js';

interface AuditQuery {
  type?: string;
  actor?: string;
  repository?: string;
  since?: string;
  until?: string;
  limit?: number;
  cursor?: string;
}

function parseTime(value: string | undefined, name: string): number | undefined {
  if (value === undefined) return undefined;
  const time = Date.parse(value);
  if (Number.isNaN(time))
    throw new ApiError(400, `invalid ${name} "${value}": use an ISO 8601 time`);
  return time;
}

/** Registers the audit log listing and its verification. */
export function registerAuditRoutes(app: FastifyInstance, { auth }: V1Deps): void {
  app.get<{ Querystring: AuditQuery }>(
    '/v1/audit',
    {
      schema: {
        tags: ['audit'],
        summary: 'List audit events, newest first',
        querystring: {
          type: 'object',
          additionalProperties: false,
          properties: {
            type: { type: 'string', maxLength: 100 },
            actor: { type: 'string', maxLength: 100 },
            repository: { type: 'string', maxLength: 255 },
            since: { type: 'string', format: 'date-time' },
            until: { type: 'string', format: 'date-time' },
            ...pageQuery,
          },
        },
      },
    },
    async (request, reply) => {
      await adminCaller(request, auth);
      const limit = request.query.limit ?? DEFAULT_PAGE;
      const events = await auth.audit.list({
        type: request.query.type,
        actor: request.query.actor,
        repository: request.query.repository,
        since: parseTime(request.query.since, 'since'),
        until: parseTime(request.query.until, 'until'),
        beforeId: decodeCursor(request.query.cursor, isNumber),
        limit: limit + 1,
      });
      const { items, nextCursor } = page(events, limit, (event) => event.id);
      sendJson(reply, 200, {
        events: items.map((event) => ({
          id: event.id,
          time: new Date(event.time).toISOString(),
          type: event.type,
          actor: event.actor,
          client_address: event.clientAddress,
          repository: event.repository,
          reference: event.reference,
          digest: event.digest,
          outcome: event.outcome,
          details: event.details,
        })),
        next_cursor: nextCursor,
      });
    },
  );

  app.get(
    '/v1/audit/verify',
    { schema: { tags: ['audit'], summary: 'Check the hash chain of the audit log' } },
    async (request, reply) => {
      await adminCaller(request, auth);
      sendJson(reply, 200, await auth.audit.verify());
    },
  );
}
