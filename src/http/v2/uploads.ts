import { parseDigest } from '../../registry/digest.js';
import { RegistryError } from '../../registry/errors.js';
import { rangeHeader, validateRepositoryName, type ChunkRange } from '../../registry/index.js';
import type { UploadSession } from '../../registry/uploads.js';
import {
  authorize,
  contentLength,
  countReceived,
  hasBody,
  location,
  namePath,
  type V2Call,
} from './context.js';

/** How many repositories holding a blob a mount without `from` considers. */
const MOUNT_CANDIDATES = 50;

/**
 * POST /v2/NAME/blobs/uploads/: starts an upload session, stores a whole blob
 * (`digest`), or mounts a blob from another repository (`mount`, `from`).
 */
export async function startUpload(call: V2Call, name: string): Promise<void> {
  await authorize(call, name, 'push');
  const { uploads } = call.deps.registry;

  const mount = call.query.get('mount');
  if (mount !== null) {
    const digest = parseDigest(mount);
    if (await tryMount(call, name, digest.value, call.query.get('from'))) {
      sendBlobCreated(call, name, digest.value);
      return;
    }
    sendSession(call, 202, await uploads.start(name));
    return;
  }

  const digestParam = call.query.get('digest');
  if (digestParam !== null) {
    const digest = parseDigest(digestParam);
    const blob = await uploads.monolithic(
      name,
      digest,
      countReceived(call.request.raw, call.deps.metrics),
      contentLength(call.request),
    );
    sendBlobCreated(call, name, blob.digest);
    return;
  }

  sendSession(call, 202, await uploads.start(name));
}

/** PATCH /v2/NAME/blobs/uploads/ID: appends a chunk. */
export async function patchUpload(call: V2Call, name: string, id: string): Promise<void> {
  await authorize(call, name, 'push');
  const session = await call.deps.registry.uploads.append(name, id, {
    body: countReceived(call.request.raw, call.deps.metrics),
    range: parseContentRange(call.request.headers['content-range']),
    length: contentLength(call.request),
  });
  sendSession(call, 202, session);
}

/** PUT /v2/NAME/blobs/uploads/ID?digest=: appends an optional last chunk and commits. */
export async function finishUpload(call: V2Call, name: string, id: string): Promise<void> {
  await authorize(call, name, 'push');
  const digestParam = call.query.get('digest');
  if (digestParam === null || digestParam === '') {
    throw new RegistryError(
      'DIGEST_INVALID',
      'the digest query parameter is required to finish an upload',
    );
  }
  const digest = parseDigest(digestParam);

  const lastChunk = hasBody(call.request)
    ? {
        body: countReceived(call.request.raw, call.deps.metrics),
        range: parseContentRange(call.request.headers['content-range']),
        length: contentLength(call.request),
      }
    : undefined;
  const blob = await call.deps.registry.uploads.finalize(name, id, digest, lastChunk);
  sendBlobCreated(call, name, blob.digest);
}

/** GET /v2/NAME/blobs/uploads/ID: reports progress. */
export async function uploadStatus(call: V2Call, name: string, id: string): Promise<void> {
  await authorize(call, name, 'push');
  const session = await call.deps.registry.uploads.status(name, id);
  sendSession(call, 204, session);
}

/** DELETE /v2/NAME/blobs/uploads/ID: cancels the session. */
export async function cancelUpload(call: V2Call, name: string, id: string): Promise<void> {
  await authorize(call, name, 'push');
  await call.deps.registry.uploads.cancel(name, id);
  call.reply.code(204).send();
}

/**
 * Mounts a blob into `name` from `from`, or, without `from`, from any
 * repository that holds it and that the caller may pull. Returns false when
 * no mount is possible, so the caller falls back to an ordinary upload.
 */
async function tryMount(
  call: V2Call,
  name: string,
  digest: string,
  from: string | null,
): Promise<boolean> {
  const { uploads, blobs } = call.deps.registry;
  const candidates =
    from !== null && from !== ''
      ? [from]
      : await blobs.repositoriesHolding(digest, MOUNT_CANDIDATES);

  for (const source of candidates) {
    try {
      validateRepositoryName(source);
    } catch {
      continue;
    }
    if (source === name) continue;
    if (!(await call.deps.access.decide(call.caller, source, 'pull'))) continue;
    if (await uploads.mount(name, digest, source)) {
      call.request.log.info({ repository: name, digest, from: source }, 'blob mounted');
      return true;
    }
  }
  return false;
}

function sendSession(call: V2Call, status: 202 | 204, session: UploadSession): void {
  call.reply
    .code(status)
    .header(
      'Location',
      location(call, `/v2/${namePath(session.repository)}/blobs/uploads/${session.id}`),
    )
    .header('Range', rangeHeader(session.offset))
    .header('Docker-Upload-UUID', session.id);
  // RFC 9110 forbids Content-Length on a 204.
  if (status === 202) call.reply.header('Content-Length', 0);
  call.reply.send();
}

function sendBlobCreated(call: V2Call, name: string, digest: string): void {
  call.reply
    .code(201)
    .header('Location', location(call, `/v2/${namePath(name)}/blobs/${digest}`))
    .header('Docker-Content-Digest', digest)
    .header('Content-Length', 0)
    .send();
}

/**
 * Parses a chunk's Content-Range, `<start>-<end>` as the distribution
 * specification writes it; the HTTP form `bytes <start>-<end>/<size>` is
 * accepted too.
 */
function parseContentRange(header: string | undefined): ChunkRange | undefined {
  if (header === undefined) return undefined;
  const match = /^(?:bytes[ =])?(\d+)-(\d+)(?:\/(?:\d+|\*))?$/.exec(header.trim());
  if (!match) {
    throw new RegistryError(
      'BLOB_UPLOAD_INVALID',
      `invalid Content-Range "${header.slice(0, 64)}": expected <start>-<end>`,
      { status: 416 },
    );
  }
  const start = Number(match[1]);
  const end = Number(match[2]);
  if (end < start) {
    throw new RegistryError(
      'BLOB_UPLOAD_INVALID',
      `invalid Content-Range "${header}": end is before start`,
      { status: 416 },
    );
  }
  return { start, end };
}
