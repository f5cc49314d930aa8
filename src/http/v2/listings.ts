import { parseDigest } from '../../registry/digest.js';
import { MAX_PAGE_SIZE } from '../../registry/index.js';
import { authorize, namePath, pageSize, type V2Call } from './context.js';

/** Page size of a catalog request without `n`. */
const DEFAULT_CATALOG_PAGE = 100;

/** GET /v2/NAME/tags/list, with `n` and `last`. */
export async function listTags(call: V2Call, name: string): Promise<void> {
  await authorize(call, name, 'pull');
  const requested = pageSize(call);
  const limit = requested === undefined ? undefined : Math.min(requested, MAX_PAGE_SIZE);
  const last = call.query.get('last') ?? undefined;
  const page = await call.deps.registry.listings.tags(name, limit, last);

  if (page.next !== undefined && limit !== undefined) {
    call.reply.header('Link', nextLink(`/v2/${namePath(name)}/tags/list`, limit, page.next));
  }
  call.reply
    .code(200)
    .type('application/json')
    .send(JSON.stringify({ name, tags: page.items }));
}

/** GET /v2/_catalog: the repositories the caller may pull. */
export async function listCatalog(call: V2Call): Promise<void> {
  await authorize(call, null, 'catalog');
  const limit = Math.min(pageSize(call) ?? DEFAULT_CATALOG_PAGE, MAX_PAGE_SIZE);
  const last = call.query.get('last') ?? undefined;
  const page = await call.deps.registry.listings.catalog(limit, last, (repository) =>
    call.deps.access.policyAllows(call.caller, repository, 'pull'),
  );

  if (page.next !== undefined)
    call.reply.header('Link', nextLink('/v2/_catalog', limit, page.next));
  call.reply
    .code(200)
    .type('application/json')
    .send(JSON.stringify({ repositories: page.items }));
}

/** GET /v2/NAME/referrers/DIGEST, with the `artifactType` filter. */
export async function listReferrers(
  call: V2Call,
  name: string,
  digestParam: string,
): Promise<void> {
  await authorize(call, name, 'pull');
  const digest = parseDigest(digestParam);
  const artifactType = call.query.get('artifactType') ?? undefined;
  const index = await call.deps.registry.listings.referrers(name, digest.value, artifactType);

  if (artifactType !== undefined) call.reply.header('OCI-Filters-Applied', 'artifactType');
  // A Buffer, so that the framework adds no charset parameter to the media type.
  call.reply
    .code(200)
    .header('Content-Type', 'application/vnd.oci.image.index.v1+json')
    .send(Buffer.from(JSON.stringify(index)));
}

function nextLink(path: string, limit: number, last: string): string {
  return `<${path}?n=${limit}&last=${encodeURIComponent(last)}>; rel="next"`;
}
