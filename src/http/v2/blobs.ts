import { parseDigest } from '../../registry/digest.js';
import { RegistryError } from '../../registry/errors.js';
import { sendBlob } from '../send-blob.js';
import { authorize, authorizeAny, recordAudit, type V2Call } from './context.js';

/** GET and HEAD /v2/NAME/blobs/DIGEST, with single byte ranges. */
export async function getBlob(call: V2Call, name: string, digestParam: string): Promise<void> {
  // A pusher checks with HEAD whether a blob exists, so push permits HEAD.
  await authorizeAny(call, name, call.request.method === 'HEAD' ? ['pull', 'push'] : ['pull']);
  const digest = parseDigest(digestParam);
  const blob = await call.deps.registry.blobs.stat(name, digest);
  // GET finds missing bytes when it opens the file, after the checks below.
  if (call.request.method === 'HEAD') await call.deps.registry.blobs.assertStored(name, digest);

  call.reply
    .header('Docker-Content-Digest', blob.digest)
    .header('ETag', `"${blob.digest}"`)
    .header('Accept-Ranges', 'bytes')
    .header('Cache-Control', 'max-age=31536000')
    .header('Content-Type', 'application/octet-stream');

  const range = parseRange(call.request.headers.range, blob.size);
  if (range === 'unsatisfiable') {
    throw new RegistryError(
      'SIZE_INVALID',
      `requested range is not satisfiable; blob ${blob.digest} has ${blob.size} bytes`,
      { status: 416, headers: { 'Content-Range': `bytes */${blob.size}` } },
    );
  }

  if (range) {
    call.reply
      .code(206)
      .header('Content-Range', `bytes ${range.start}-${range.end}/${blob.size}`)
      .header('Content-Length', range.end - range.start + 1);
  } else {
    call.reply.code(200).header('Content-Length', blob.size);
  }

  if (call.request.method === 'HEAD') {
    call.reply.send();
    return;
  }
  if (blob.size === 0) {
    call.reply.send(Buffer.alloc(0));
    return;
  }
  const reader = await call.deps.registry.blobs.open(name, digest);
  if (call.deps.audit.recordPulls && !range) {
    await recordAudit(call, {
      type: 'blob.pull',
      repository: name,
      digest: blob.digest,
      outcome: 'success',
    });
  }
  await sendBlob(call, reader, range?.start ?? 0, range?.end ?? blob.size - 1);
}

/** DELETE /v2/NAME/blobs/DIGEST. */
export async function deleteBlob(call: V2Call, name: string, digestParam: string): Promise<void> {
  await authorize(call, name, 'delete');
  const digest = parseDigest(digestParam);
  await call.deps.registry.blobs.unlink(name, digest);
  await recordAudit(call, {
    type: 'blob.delete',
    repository: name,
    digest: digest.value,
    outcome: 'success',
  });
  call.reply
    .code(202)
    .header('Docker-Content-Digest', digest.value)
    .header('Content-Length', 0)
    .send();
}

/**
 * Parses a Range header of one byte range. Returns null when there is no
 * usable header (the whole blob is served, as RFC 9110 allows for multiple
 * ranges or other units), or 'unsatisfiable'.
 */
function parseRange(
  header: string | undefined,
  size: number,
): { start: number; end: number } | null | 'unsatisfiable' {
  if (!header) return null;
  // Whitespace around the range, as some clients send it, is tolerated.
  const match = /^bytes=[ \t]*(\d*)-(\d*)[ \t]*$/.exec(header.trim());
  if (!match) return null;
  const [, first, last] = match as unknown as [string, string, string];
  if (first === '' && last === '') return null;

  if (first === '') {
    const suffix = Number(last);
    if (suffix === 0 || size === 0) return 'unsatisfiable';
    return { start: Math.max(size - suffix, 0), end: size - 1 };
  }

  const start = Number(first);
  const end = last === '' ? size - 1 : Math.min(Number(last), size - 1);
  if (start >= size || end < start) return 'unsatisfiable';
  return { start, end };
}
