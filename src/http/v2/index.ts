import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';

import { RegistryError } from '../../registry/errors.js';
import { validateRepositoryName } from '../../registry/index.js';
import { authenticate, unauthorized } from '../auth.js';
import { sendError } from '../errors.js';
import { setRouteLabel } from '../metrics.js';
import { deleteBlob, getBlob } from './blobs.js';
import type { V2Call, V2Deps } from './context.js';
import { listCatalog, listReferrers, listTags } from './listings.js';
import { deleteManifest, getManifest, putManifest } from './manifests.js';
import { parseV2Path, type V2Route } from './route.js';
import { cancelUpload, finishUpload, patchUpload, startUpload, uploadStatus } from './uploads.js';

export type { V2Deps } from './context.js';

const METHODS = ['GET', 'HEAD', 'PUT', 'PATCH', 'POST', 'DELETE', 'OPTIONS'] as const;

/** Registers the OCI distribution API under /v2/. */
export function registerV2(app: FastifyInstance, deps: V2Deps): void {
  const handler = async (request: FastifyRequest, reply: FastifyReply) => {
    // The raw path, deliberately not normalised: URL parsing would resolve
    // "a/../b" and "%2e%2e" into another repository's name before validation.
    const queryStart = request.url.indexOf('?');
    const pathname = queryStart === -1 ? request.url : request.url.slice(0, queryStart);
    const call: V2Call = {
      deps,
      request,
      reply,
      caller: { address: request.ip },
      query: new URLSearchParams(queryStart === -1 ? '' : request.url.slice(queryStart + 1)),
    };
    try {
      call.caller = await authenticate(request, deps.auth);
      await dispatch(call, parseV2Path(pathname));
    } catch (error) {
      sendError(request, reply, error);
    }
    return reply;
  };

  app.route({ method: [...METHODS], url: '/v2', handler });
  app.route({ method: [...METHODS], url: '/v2/', handler });
  app.route({ method: [...METHODS], url: '/v2/*', handler });
}

async function dispatch(call: V2Call, route: V2Route | undefined): Promise<void> {
  const method = call.request.method;
  setRouteLabel(call.request, route ? `/v2/${route.kind}` : '/v2/unknown');
  if (!route) throw notFound(call);

  if (route.kind === 'base') {
    if (method !== 'GET' && method !== 'HEAD') throw unsupported(method, '/v2/');
    // Anonymous callers are challenged here even when a policy grants them
    // something, so that clients start the token flow.
    if (call.caller.username === undefined && !call.caller.grants) {
      throw unauthorized(call.request, call.deps.auth, 'authentication required');
    }
    call.reply.code(200).type('application/json').send('{}');
    return;
  }
  if (route.kind === 'catalog') {
    if (method !== 'GET') throw unsupported(method, '/v2/_catalog');
    return listCatalog(call);
  }

  validateRepositoryName(route.name);

  switch (route.kind) {
    case 'manifest':
      if (method === 'GET' || method === 'HEAD')
        return getManifest(call, route.name, route.reference);
      if (method === 'PUT') return putManifest(call, route.name, route.reference);
      if (method === 'DELETE') return deleteManifest(call, route.name, route.reference);
      throw unsupported(method, 'manifests');
    case 'blob':
      if (method === 'GET' || method === 'HEAD') return getBlob(call, route.name, route.digest);
      if (method === 'DELETE') return deleteBlob(call, route.name, route.digest);
      throw unsupported(method, 'blobs');
    case 'upload':
      if (route.id === undefined) {
        if (method === 'POST') return startUpload(call, route.name);
        throw unsupported(method, 'blobs/uploads/');
      }
      if (method === 'PATCH') return patchUpload(call, route.name, route.id);
      if (method === 'PUT') return finishUpload(call, route.name, route.id);
      if (method === 'GET') return uploadStatus(call, route.name, route.id);
      if (method === 'DELETE') return cancelUpload(call, route.name, route.id);
      throw unsupported(method, 'blobs/uploads/ID');
    case 'tags':
      if (method === 'GET') return listTags(call, route.name);
      throw unsupported(method, 'tags/list');
    case 'referrers':
      if (method === 'GET') return listReferrers(call, route.name, route.digest);
      throw unsupported(method, 'referrers');
  }
}

function unsupported(method: string, what: string): RegistryError {
  return new RegistryError('UNSUPPORTED', `${method} is not supported on ${what}`);
}

function notFound(call: V2Call): RegistryError {
  return new RegistryError('NAME_UNKNOWN', `no API endpoint at ${call.request.url.slice(0, 300)}`, {
    status: 404,
  });
}
