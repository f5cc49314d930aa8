import { RepositoryAdmin } from './admin.js';
import { Blobs } from './blobs.js';
import type { CoreContext } from './core.js';
import { Listings } from './listings.js';
import { Manifests } from './manifests.js';
import { Uploads } from './uploads.js';

export { MAX_PAGE_SIZE, type CoreContext } from './core.js';
export { parseDigest, type Digest } from './digest.js';
export { RegistryError, type ErrorCode } from './errors.js';
export { MAX_MANIFEST_SIZE, parseReference, type PushResult, type Reference } from './manifests.js';
export { validateRepositoryName } from './names.js';
export { rangeHeader, type ChunkRange } from './uploads.js';

/** The registry core: everything the /v2/ API does, independent of HTTP. */
export class Registry {
  readonly blobs: Blobs;
  readonly uploads: Uploads;
  readonly manifests: Manifests;
  readonly listings: Listings;
  readonly admin: RepositoryAdmin;

  constructor(readonly ctx: CoreContext) {
    this.blobs = new Blobs(ctx);
    this.uploads = new Uploads(ctx);
    this.manifests = new Manifests(ctx);
    this.listings = new Listings(ctx);
    this.admin = new RepositoryAdmin(ctx);
  }
}
