import { PassThrough } from 'node:stream';

import type { FastifyInstance } from 'fastify';

import type { FsckProgress } from '../../fsck/index.js';
import { adminCaller, audit, type V1Deps } from './context.js';

/** Shortest interval between two progress lines, in milliseconds. */
const PROGRESS_INTERVAL_MS = 200;

/**
 * Registers POST /v1/fsck. The response is newline-delimited JSON: progress
 * lines `{"type":"progress",...}` while it runs, then one
 * `{"type":"report",...}` (or `{"type":"error",...}`) line.
 */
export function registerFsckRoutes(app: FastifyInstance, { auth, fsck }: V1Deps): void {
  app.post<{ Body: { repair?: boolean } }>(
    '/v1/fsck',
    {
      schema: {
        tags: ['fsck'],
        summary: 'Verify every blob and the agreement of database and storage',
        body: {
          type: 'object',
          additionalProperties: false,
          properties: { repair: { type: 'boolean' } },
        },
      },
    },
    async (request, reply) => {
      const caller = await adminCaller(request, auth);
      const repair = request.body?.repair === true;
      const stream = new PassThrough();
      reply.code(200).type('application/x-ndjson').send(stream);

      let last = 0;
      const onProgress = (progress: FsckProgress) => {
        const now = Date.now();
        if (now - last < PROGRESS_INTERVAL_MS && progress.done !== progress.total) return;
        last = now;
        stream.write(`${JSON.stringify({ type: 'progress', ...progress })}\n`);
      };

      try {
        const report = await fsck.run({ repair }, onProgress);
        await audit(auth, caller, {
          type: 'fsck.run',
          outcome: report.clean ? 'success' : 'failure',
          details: {
            repair,
            corrupt: report.corrupt.length,
            missingBytes: report.missingBytes.length,
            orphanFiles: report.orphanFiles.length,
            brokenManifests: report.brokenManifests.length,
            repaired: report.repaired,
          },
        });
        stream.end(`${JSON.stringify({ type: 'report', ...report })}\n`);
      } catch (error) {
        request.log.error({ err: error }, 'fsck failed');
        stream.end(`${JSON.stringify({ type: 'error', error: (error as Error).message })}\n`);
      }
      return reply;
    },
  );
}
