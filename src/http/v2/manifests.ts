import type { AuditEventInput, AuditHead } from '../../audit/log.js';
import { RegistryError } from '../../registry/errors.js';
import {
  MAX_MANIFEST_SIZE,
  parseReference,
  type PushResult,
  type Reference,
} from '../../registry/index.js';
import {
  authorize,
  authorizeAny,
  location,
  namePath,
  recordAudit,
  type V2Call,
} from './context.js';

/** GET and HEAD /v2/NAME/manifests/REF. */
export async function getManifest(call: V2Call, name: string, ref: string): Promise<void> {
  // A pusher checks with HEAD whether a manifest exists, so push permits HEAD.
  await authorizeAny(call, name, call.request.method === 'HEAD' ? ['pull', 'push'] : ['pull']);
  const reference = lookupReference(name, ref);
  const manifest = await call.deps.registry.manifests.get(name, reference);

  if (!acceptable(manifest.mediaType, call.request.headers.accept)) {
    throw new RegistryError(
      'MANIFEST_UNKNOWN',
      `manifest ${ref} has media type ${manifest.mediaType}, which the Accept header does not list`,
      { detail: { mediaType: manifest.mediaType } },
    );
  }

  const etag = `"${manifest.digest}"`;
  call.reply
    .header('Content-Type', manifest.mediaType)
    .header('Docker-Content-Digest', manifest.digest)
    .header('ETag', etag)
    .header('Content-Length', manifest.size);

  if (call.request.headers['if-none-match'] === etag) {
    call.reply.code(304).send();
    return;
  }
  if (call.request.method === 'HEAD') {
    call.reply.code(200).send();
    return;
  }
  if (call.deps.audit.recordPulls) {
    await recordAudit(call, {
      type: 'manifest.pull',
      repository: name,
      reference: ref,
      digest: manifest.digest,
      outcome: 'success',
    });
  }
  call.reply.code(200).send(manifest.content);
}

/** PUT /v2/NAME/manifests/REF. */
export async function putManifest(call: V2Call, name: string, ref: string): Promise<void> {
  await authorize(call, name, 'push');
  const reference = parseReference(ref);
  const content = await readBounded(call, MAX_MANIFEST_SIZE);
  // The audit events commit in the push's own transaction.
  let auditHead: AuditHead | undefined;
  const result = await call.deps.registry.manifests.put(
    name,
    reference,
    content,
    call.request.headers['content-type'],
    async (trx, pushed) => {
      auditHead = await call.deps.audit.appendIn(trx, pushEvents(call, name, ref, pushed));
    },
  );
  if (auditHead) call.deps.audit.committed(auditHead);
  call.deps.metrics.manifestPushed();

  call.reply
    .code(201)
    .header('Location', location(call, `/v2/${namePath(name)}/manifests/${result.digest}`))
    .header('Docker-Content-Digest', result.digest)
    .header('Content-Length', 0);
  if (result.subject) call.reply.header('OCI-Subject', result.subject);
  call.reply.send();
}

/** Builds the audit events of a manifest push: the push, and the tag move it made. */
function pushEvents(
  call: V2Call,
  name: string,
  ref: string,
  result: PushResult,
): AuditEventInput[] {
  const actor = { actor: call.caller.username ?? null, clientAddress: call.caller.address };
  const events: AuditEventInput[] = [
    {
      ...actor,
      type: 'manifest.push',
      repository: name,
      reference: ref,
      digest: result.digest,
      outcome: 'success',
      details: result.subject ? { subject: result.subject } : {},
    },
  ];
  if (result.tag && result.tag.previous !== undefined && result.tag.previous !== result.digest) {
    events.push({
      ...actor,
      type: 'tag.move',
      repository: name,
      reference: result.tag.name,
      digest: result.digest,
      outcome: 'success',
      details: { from: result.tag.previous },
    });
  }
  return events;
}

/** DELETE /v2/NAME/manifests/REF. */
export async function deleteManifest(call: V2Call, name: string, ref: string): Promise<void> {
  await authorize(call, name, 'delete');
  const reference = lookupReference(name, ref);
  await call.deps.registry.manifests.delete(name, reference);
  await recordAudit(call, {
    type: reference.kind === 'digest' ? 'manifest.delete' : 'tag.delete',
    repository: name,
    reference: ref,
    digest: reference.kind === 'digest' ? reference.digest : null,
    outcome: 'success',
  });
  call.reply.code(202).header('Content-Length', 0).send();
}

/**
 * Parses the reference of a pull or delete. A malformed tag names nothing, so
 * it gets the 404 the specification lists for these requests; a malformed
 * digest stays DIGEST_INVALID.
 */
function lookupReference(name: string, ref: string): Reference {
  try {
    return parseReference(ref);
  } catch (error) {
    if (error instanceof RegistryError && error.code === 'MANIFEST_INVALID') {
      throw new RegistryError(
        'MANIFEST_UNKNOWN',
        `manifest ${ref.slice(0, 200)} is not in repository ${name}`,
        {
          detail: { repository: name, reference: ref.slice(0, 200) },
        },
      );
    }
    throw error;
  }
}

/**
 * Reads a request body into memory, rejecting one larger than `limit` bytes
 * with 413 as soon as it passes the limit.
 */
async function readBounded(call: V2Call, limit: number): Promise<Buffer> {
  // A body up to DRAIN_FACTOR times the limit is read to its end even when it
  // is too large: closing a connection with unread request bytes makes the
  // kernel send a reset, which can destroy the 413 before the client reads it.
  const drainLimit = limit * DRAIN_FACTOR;
  const declared = Number(call.request.headers['content-length'] ?? 0);
  if (declared > drainLimit) throw tooLarge(declared, limit);

  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of call.request.raw) {
    total += (chunk as Buffer).length;
    if (total > drainLimit) throw tooLarge(total, limit);
    if (total <= limit) chunks.push(chunk as Buffer);
  }
  if (total > limit) throw tooLarge(total, limit);
  return Buffer.concat(chunks, total);
}

/** How far past the size limit a rejected manifest body is still read. */
const DRAIN_FACTOR = 4;

function tooLarge(size: number, limit: number): RegistryError {
  return new RegistryError(
    'SIZE_INVALID',
    `manifest is larger than the ${limit}-byte maximum (at least ${size} bytes)`,
    { status: 413 },
  );
}

/**
 * Reports whether the Accept header allows the stored media type. Negotiation
 * may only refuse, never convert: a request whose Accept lists no manifest
 * media type at all (or a wildcard) is served whatever is stored.
 */
function acceptable(mediaType: string, accept: string | undefined): boolean {
  if (!accept) return true;
  const listed = accept
    .split(',')
    .map((part) => part.split(';')[0]?.trim().toLowerCase() ?? '')
    .filter((part) => part !== '');
  if (listed.length === 0) return true;
  if (listed.some((type) => type === '*/*' || type === 'application/*')) return true;
  if (listed.includes(mediaType)) return true;

  const namesManifestTypes = listed.some(
    (type) =>
      type.startsWith('application/vnd.oci.image.') ||
      type.startsWith('application/vnd.docker.distribution.manifest.'),
  );
  return !namesManifestTypes;
}
