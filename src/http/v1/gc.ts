import type { FastifyInstance } from 'fastify';

import { parseDuration } from '../../config/duration.js';
import { GcConflictError, type GarbageCollector, type GcRun } from '../../gc/index.js';
import {
  adminCaller,
  ApiError,
  audit,
  decodeCursor,
  DEFAULT_PAGE,
  isNumber,
  page,
  pageQuery,
  sendJson,
  type V1Deps,
} from './context.js';

/** Name under which app.ts decorates the server with its GarbageCollector. */
export const GC_DECORATOR = 'gc';

/** A body is optional: an empty POST starts a run with the configured defaults. */
const startBody = {
  type: 'object',
  nullable: true,
  additionalProperties: false,
  properties: {
    dry_run: { type: 'boolean' },
    delete_untagged: { type: 'boolean' },
    upload_max_age: { type: 'string', maxLength: 32 },
  },
} as const;

const idParam = {
  type: 'object',
  additionalProperties: false,
  properties: { id: { type: 'integer', minimum: 1 } },
  required: ['id'],
} as const;

interface StartBody {
  dry_run?: boolean;
  delete_untagged?: boolean;
  upload_max_age?: string;
}

function runJson(run: GcRun) {
  return {
    id: run.id,
    trigger: run.trigger,
    state: run.state,
    dry_run: run.dryRun,
    started_at: new Date(run.startedAt).toISOString(),
    finished_at: run.finishedAt === null ? null : new Date(run.finishedAt).toISOString(),
    progress: run.progress,
    blobs_deleted: run.blobsDeleted,
    bytes_freed: run.bytesFreed,
    manifests_deleted: run.manifestsDeleted,
    uploads_deleted: run.uploadsDeleted,
    error: run.error,
  };
}

/**
 * Registers POST /v1/gc (start a run), GET /v1/gc (runs, newest first) and
 * GET /v1/gc/:id. The collector comes from the server's `gc` decoration.
 */
export function registerGcRoutes(app: FastifyInstance, { auth }: V1Deps): void {
  const collector = () => app.getDecorator<GarbageCollector>(GC_DECORATOR);

  app.post<{ Body: StartBody | null }>(
    '/v1/gc',
    {
      schema: {
        tags: ['gc'],
        summary: 'Start a garbage collection run',
        body: startBody,
      },
    },
    async (request, reply) => {
      const caller = await adminCaller(request, auth);
      const body = request.body ?? {};
      let uploadMaxAgeMs: number | undefined;
      if (body.upload_max_age !== undefined) {
        uploadMaxAgeMs = parseDuration(body.upload_max_age);
        if (uploadMaxAgeMs === undefined) {
          throw new ApiError(
            400,
            `invalid upload_max_age "${body.upload_max_age}": use a duration such as "24h" or "90m"`,
          );
        }
      }

      let id: number;
      try {
        id = await collector().start({
          trigger: 'api',
          dryRun: body.dry_run,
          deleteUntagged: body.delete_untagged,
          uploadMaxAgeMs,
        });
      } catch (error) {
        if (error instanceof GcConflictError) throw new ApiError(409, error.message);
        throw error;
      }
      await audit(auth, caller, {
        type: 'gc.start',
        details: {
          run: id,
          dry_run: body.dry_run ?? false,
          delete_untagged: body.delete_untagged ?? null,
          upload_max_age: body.upload_max_age ?? null,
        },
      });
      sendJson(reply, 202, runJson((await collector().get(id)) as GcRun));
    },
  );

  app.get<{ Querystring: { limit?: number; cursor?: string } }>(
    '/v1/gc',
    {
      schema: {
        tags: ['gc'],
        summary: 'List garbage collection runs, newest first',
        querystring: { type: 'object', additionalProperties: false, properties: pageQuery },
      },
    },
    async (request, reply) => {
      await adminCaller(request, auth);
      const limit = request.query.limit ?? DEFAULT_PAGE;
      const beforeId = decodeCursor(request.query.cursor, isNumber);
      const runs = await collector().list(limit + 1, beforeId);
      const { items, nextCursor } = page(runs, limit, (run) => run.id);
      sendJson(reply, 200, { runs: items.map(runJson), next_cursor: nextCursor });
    },
  );

  app.get<{ Params: { id: number } }>(
    '/v1/gc/:id',
    { schema: { tags: ['gc'], summary: 'Show a garbage collection run', params: idParam } },
    async (request, reply) => {
      await adminCaller(request, auth);
      const run = await collector().get(request.params.id);
      if (!run) throw new ApiError(404, `garbage collection run ${request.params.id} not found`);
      sendJson(reply, 200, runJson(run));
    },
  );
}
