import type { Kysely } from 'kysely';
import type { Logger } from 'pino';

import type { Dialect } from '../metadata/migrations.js';
import type { Database } from '../metadata/schema.js';
import type { BlobStore } from '../storage/types.js';

/** Dependencies of every part of the registry core. */
export interface CoreContext {
  db: Kysely<Database>;
  dialect: Dialect;
  store: BlobStore;
  log: Logger;
  /** The metadata database's change counter, when it has one; see MetadataDb. */
  changeCounter?: () => number;
}

/** Largest page any listing returns, whatever `n` the client asks for. */
export const MAX_PAGE_SIZE = 1000;
