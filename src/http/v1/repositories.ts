import type { FastifyInstance, FastifyRequest } from 'fastify';

import { RegistryError } from '../../registry/errors.js';
import { validateRepositoryName } from '../../registry/names.js';
import {
  adminCaller,
  ApiError,
  audit,
  decodeCursor,
  DEFAULT_PAGE,
  isString,
  page,
  pageQuery,
  sendJson,
  type V1Deps,
} from './context.js';

const iso = (time: number) => new Date(time).toISOString();

type Target =
  | { kind: 'repository'; name: string }
  | { kind: 'tags'; name: string }
  | { kind: 'tag'; name: string; tag: string };

/**
 * Splits the path after /v1/repositories/. Repository names contain slashes,
 * so tags live under a "-" segment, which no repository name can contain:
 * NAME/-/tags and NAME/-/tags/TAG.
 */
function parseTarget(path: string): Target {
  const tag = /^(.+)\/-\/tags\/([^/]+)$/.exec(path);
  const target: Target = tag
    ? { kind: 'tag', name: tag[1] as string, tag: decodeURIComponent(tag[2] as string) }
    : path.endsWith('/-/tags')
      ? { kind: 'tags', name: path.slice(0, -'/-/tags'.length) }
      : { kind: 'repository', name: path };
  try {
    validateRepositoryName(target.name);
  } catch (error) {
    throw new ApiError(400, (error as RegistryError).message);
  }
  return target;
}

function wildcard(request: FastifyRequest): string {
  return (request.params as { '*': string })['*'];
}

/** Registers /v1/repositories: list, detail, delete, and tag list and delete. */
export function registerRepositoryRoutes(app: FastifyInstance, { auth, registry }: V1Deps): void {
  app.get<{ Querystring: { limit?: number; cursor?: string } }>(
    '/v1/repositories',
    {
      schema: {
        tags: ['repositories'],
        summary: 'List repositories with sizes and tag counts',
        querystring: { type: 'object', additionalProperties: false, properties: pageQuery },
      },
    },
    async (request, reply) => {
      await adminCaller(request, auth);
      const limit = request.query.limit ?? DEFAULT_PAGE;
      const after = decodeCursor(request.query.cursor, isString);
      const rows = await registry.admin.list(limit + 1, after);
      const { items, nextCursor } = page(rows, limit, (row) => row.name);
      sendJson(reply, 200, {
        repositories: items.map((row) => ({
          name: row.name,
          tag_count: row.tagCount,
          manifest_count: row.manifestCount,
          size_bytes: row.sizeBytes,
          created_at: iso(row.createdAt),
        })),
        next_cursor: nextCursor,
      });
    },
  );

  app.get<{ Querystring: { limit?: number; cursor?: string } }>(
    '/v1/repositories/*',
    {
      schema: {
        tags: ['repositories'],
        summary: 'Show a repository (NAME) or list its tags (NAME/-/tags)',
        querystring: { type: 'object', additionalProperties: false, properties: pageQuery },
      },
    },
    async (request, reply) => {
      await adminCaller(request, auth);
      const target = parseTarget(wildcard(request));
      if (target.kind === 'tag') throw new ApiError(405, 'use DELETE on a tag, or GET NAME/-/tags');

      const detail = await registry.admin.get(target.name);
      if (!detail) throw new ApiError(404, `repository ${target.name} not found`);

      if (target.kind === 'tags') {
        const limit = request.query.limit ?? DEFAULT_PAGE;
        const after = decodeCursor(request.query.cursor, isString);
        const tags = detail.tags.filter((tag) => after === undefined || tag.name > after);
        const { items, nextCursor } = page(tags.slice(0, limit + 1), limit, (tag) => tag.name);
        sendJson(reply, 200, {
          tags: items.map((tag) => ({
            name: tag.name,
            digest: tag.digest,
            updated_at: iso(tag.updatedAt),
          })),
          next_cursor: nextCursor,
        });
        return;
      }

      sendJson(reply, 200, {
        name: detail.name,
        created_at: iso(detail.createdAt),
        size_bytes: detail.sizeBytes,
        tag_count: detail.tagCount,
        manifest_count: detail.manifestCount,
        tags: detail.tags.map((tag) => ({
          name: tag.name,
          digest: tag.digest,
          updated_at: iso(tag.updatedAt),
        })),
        manifests: detail.manifests.map((manifest) => ({
          digest: manifest.digest,
          media_type: manifest.mediaType,
          artifact_type: manifest.artifactType,
          size: manifest.size,
          tags: manifest.tags,
          created_at: iso(manifest.createdAt),
        })),
      });
    },
  );

  app.delete(
    '/v1/repositories/*',
    {
      schema: {
        tags: ['repositories'],
        summary: 'Delete a repository (NAME) or a tag (NAME/-/tags/TAG)',
      },
    },
    async (request, reply) => {
      const caller = await adminCaller(request, auth);
      const target = parseTarget(wildcard(request));
      if (target.kind === 'tags') throw new ApiError(405, 'delete the repository or one tag');

      if (target.kind === 'tag') {
        try {
          await registry.manifests.delete(target.name, { kind: 'tag', tag: target.tag });
        } catch (error) {
          if (error instanceof RegistryError && error.code === 'MANIFEST_UNKNOWN') {
            throw new ApiError(404, `tag ${target.tag} not found in ${target.name}`);
          }
          throw error;
        }
        await audit(auth, caller, {
          type: 'tag.delete',
          repository: target.name,
          reference: target.tag,
        });
        reply.code(204).send();
        return;
      }

      if (!(await registry.admin.delete(target.name))) {
        throw new ApiError(404, `repository ${target.name} not found`);
      }
      await audit(auth, caller, { type: 'repository.delete', repository: target.name });
      reply.code(204).send();
    },
  );
}
