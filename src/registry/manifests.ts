import type { Transaction } from 'kysely';

import { runTransaction } from '../metadata/db.js';
import { PreparedListQuery, PreparedQuery } from '../metadata/prepared.js';
import type { Database } from '../metadata/schema.js';
import type { CoreContext } from './core.js';
import { digestOf, parseDigest } from './digest.js';
import { RegistryError } from './errors.js';
import { parseManifest, type Descriptor, type ParsedManifest } from './manifest-parser.js';
import { NON_DISTRIBUTABLE_LAYER_TYPES } from './media-types.js';
import { isTag } from './names.js';
import { ensureRepository, findRepositoryId } from './repositories.js';

/** Largest manifest body accepted, in bytes (4 MiB). */
export const MAX_MANIFEST_SIZE = 4 * 1024 * 1024;

/** A stored manifest, with the exact bytes the client pushed. */
export interface StoredManifest {
  digest: string;
  mediaType: string;
  content: Buffer;
  size: number;
}

/** The outcome of a manifest push. */
export interface PushResult {
  digest: string;
  /** The subject's digest, returned to the client as OCI-Subject. */
  subject?: string;
  /** The tag moved by the push, with the digest it pointed at before. */
  tag?: { name: string; previous?: string };
}

/** A parsed reference: a tag or a digest. */
export type Reference = { kind: 'tag'; tag: string } | { kind: 'digest'; digest: string };

/** Parses the REF of /v2/NAME/manifests/REF; throws for anything else. */
export function parseReference(reference: string): Reference {
  if (reference.includes(':')) {
    return { kind: 'digest', digest: parseDigest(reference).value };
  }
  if (!isTag(reference)) {
    throw new RegistryError(
      'MANIFEST_INVALID',
      `invalid tag "${reference.slice(0, 200)}": use up to 128 letters, digits, "_", "." and "-", not starting with "." or "-"`,
      { status: 400, detail: { reference: reference.slice(0, 200) } },
    );
  }
  return { kind: 'tag', tag: reference };
}

const upsertManifestRow = new PreparedQuery(
  (
    db,
    repositoryId: number,
    digest: string,
    mediaType: string,
    artifactType: string | null,
    subjectDigest: string | null,
    annotations: string | null,
    content: Buffer,
    size: number,
    createdAt: number,
  ) =>
    db
      .insertInto('manifests')
      .values({
        repository_id: repositoryId,
        digest,
        media_type: mediaType,
        artifact_type: artifactType,
        subject_digest: subjectDigest,
        annotations,
        content,
        size,
        created_at: createdAt,
      })
      .onConflict((oc) =>
        oc
          .columns(['repository_id', 'digest'])
          .doUpdateSet((eb) => ({ media_type: eb.ref('excluded.media_type') })),
      )
      .returning('id'),
);

export const selectManifestByDigest = new PreparedQuery((db, repository: string, digest: string) =>
  db
    .selectFrom('manifests')
    .innerJoin('repositories', 'repositories.id', 'manifests.repository_id')
    .select(['manifests.digest', 'manifests.media_type', 'manifests.content', 'manifests.size'])
    .where('repositories.name', '=', repository)
    .where('manifests.digest', '=', digest),
);

// The tag is found by its repository and name, through the unique index on
// both. Joined on the manifest alone, SQLite read every manifest of the
// repository: 178 ms for one lookup among 37,000 manifests.
export const selectManifestByTag = new PreparedQuery((db, repository: string, tag: string) =>
  db
    .selectFrom('repositories')
    .innerJoin('tags', 'tags.repository_id', 'repositories.id')
    .innerJoin('manifests', 'manifests.id', 'tags.manifest_id')
    .select(['manifests.digest', 'manifests.media_type', 'manifests.content', 'manifests.size'])
    .where('repositories.name', '=', repository)
    .where('tags.name', '=', tag),
);

const selectLinkedBlobs = new PreparedListQuery((db, [repositoryId]: [number], digests: string[]) =>
  db
    .selectFrom('blobs')
    .innerJoin('repository_blobs', 'repository_blobs.blob_id', 'blobs.id')
    .select(['blobs.id', 'blobs.digest', 'blobs.size'])
    .where('repository_blobs.repository_id', '=', repositoryId)
    .where('blobs.digest', 'in', digests),
);

/** Inserts reference rows, with digest, kind and blob id of each row in turn in `values`. */
const insertReferences = new PreparedListQuery(
  (db, [manifestId]: [number], values: Array<string | number | null>) =>
    db
      .insertInto('manifest_references')
      .values(
        [...chunks(values, 3)].map(([digest, kind, blobId]) => ({
          manifest_id: manifestId,
          digest: digest as string,
          kind: kind as 'blob' | 'manifest',
          blob_id: blobId as number | null,
        })),
      )
      .onConflict((oc) => oc.columns(['manifest_id', 'digest']).doNothing()),
);

const selectTagDigest = new PreparedQuery((db, repositoryId: number, tag: string) =>
  db
    .selectFrom('tags')
    .innerJoin('manifests', 'manifests.id', 'tags.manifest_id')
    .select('manifests.digest')
    .where('tags.repository_id', '=', repositoryId)
    .where('tags.name', '=', tag),
);

const upsertTag = new PreparedQuery(
  (db, repositoryId: number, tag: string, manifestId: number, updatedAt: number) =>
    db
      .insertInto('tags')
      .values({
        repository_id: repositoryId,
        name: tag,
        manifest_id: manifestId,
        updated_at: updatedAt,
      })
      .onConflict((oc) =>
        oc.columns(['repository_id', 'name']).doUpdateSet((eb) => ({
          manifest_id: eb.ref('excluded.manifest_id'),
          updated_at: eb.ref('excluded.updated_at'),
        })),
      ),
);

/** Bounds of the manifest lookup cache, and the largest manifest it keeps. */
const MANIFEST_CACHE_ENTRIES = 1000;
const MANIFEST_CACHE_BYTES = 8 * 1024 * 1024;
const CACHED_MANIFEST_MAX_BYTES = 256 * 1024;

/** Stores, serves and deletes manifests, and moves tags with them. */
export class Manifests {
  /**
   * Manifests looked up by tag or digest, each valid while the database's
   * change counter keeps the value it had before the lookup. Any committed
   * write, here or in another process, changes the counter, so a moved or
   * deleted tag is never served from here.
   */
  private readonly cache = new Map<string, { version: number; manifest: StoredManifest }>();
  private cacheBytes = 0;

  constructor(private readonly ctx: CoreContext) {}

  /** Looks a manifest up by tag or digest; throws MANIFEST_UNKNOWN when absent. */
  async get(repository: string, reference: Reference): Promise<StoredManifest> {
    const key = `${repository}\0${reference.kind === 'tag' ? reference.tag : reference.digest}`;
    const version = this.ctx.changeCounter?.();
    const cached = this.cache.get(key);
    if (cached && cached.version === version) return cached.manifest;

    const row =
      reference.kind === 'digest'
        ? await selectManifestByDigest.first(this.ctx.db, repository, reference.digest)
        : await selectManifestByTag.first(this.ctx.db, repository, reference.tag);
    if (!row) throw manifestUnknown(repository, reference);
    const manifest = {
      digest: row.digest,
      mediaType: row.media_type,
      content: Buffer.from(row.content),
      size: row.size,
    };
    if (version !== undefined && manifest.size <= CACHED_MANIFEST_MAX_BYTES) {
      this.remember(key, { version, manifest });
    }
    return manifest;
  }

  /** Keeps a looked-up manifest, dropping the oldest entries beyond the cache's bounds. */
  private remember(key: string, entry: { version: number; manifest: StoredManifest }): void {
    const previous = this.cache.get(key);
    if (previous) {
      this.cacheBytes -= previous.manifest.size;
      this.cache.delete(key);
    }
    this.cache.set(key, entry);
    this.cacheBytes += entry.manifest.size;
    for (const [oldKey, old] of this.cache) {
      if (this.cache.size <= MANIFEST_CACHE_ENTRIES && this.cacheBytes <= MANIFEST_CACHE_BYTES)
        break;
      this.cache.delete(oldKey);
      this.cacheBytes -= old.manifest.size;
    }
  }

  /**
   * Pushes a manifest: verifies the digest of the exact bytes, validates every
   * referenced blob and child manifest, then in one transaction stores the
   * manifest and its references and points the tag at it. `beforeCommit`
   * runs last inside that transaction, to record what the push changed.
   */
  async put(
    repository: string,
    reference: Reference,
    content: Buffer,
    contentType: string | undefined,
    beforeCommit?: (trx: Transaction<Database>, result: PushResult) => Promise<void>,
  ): Promise<PushResult> {
    if (content.length > MAX_MANIFEST_SIZE) {
      throw new RegistryError(
        'SIZE_INVALID',
        `manifest is ${content.length} bytes; the maximum is ${MAX_MANIFEST_SIZE}`,
        { status: 413 },
      );
    }

    const algorithm =
      reference.kind === 'digest' ? parseDigest(reference.digest).algorithm : 'sha256';
    const digest = digestOf(content, algorithm);
    if (reference.kind === 'digest' && reference.digest !== digest) {
      throw new RegistryError(
        'DIGEST_INVALID',
        `manifest content has digest ${digest}, not ${reference.digest}`,
        { detail: { expected: reference.digest, actual: digest } },
      );
    }

    const manifest = parseManifest(content, contentType);

    const pushResult = (previous: string | undefined): PushResult => ({
      digest,
      subject: manifest.subject?.digest,
      tag: reference.kind === 'tag' ? { name: reference.tag, previous } : undefined,
    });
    const previous = await runTransaction(this.ctx.db, async (trx) => {
      const repositoryId = await ensureRepository(trx, repository);
      const references = await this.resolveReferences(trx, repositoryId, repository, manifest);
      const manifestId = await this.upsertManifest(trx, repositoryId, digest, content, manifest);

      // The references follow from the content, so a push of a manifest that
      // is already stored finds its rows there. In batches, because SQLite
      // limits the variables of one statement.
      for (const batch of chunks(references, 500)) {
        const values = batch.flatMap((ref) => [ref.digest, ref.kind, ref.blob_id]);
        await insertReferences.execute(trx, [manifestId], values);
      }

      const previous =
        reference.kind === 'tag'
          ? await this.moveTag(trx, repositoryId, reference.tag, manifestId)
          : undefined;
      await beforeCommit?.(trx, pushResult(previous));
      return previous;
    });

    this.ctx.log.info(
      {
        repository,
        digest,
        mediaType: manifest.mediaType,
        tag: reference.kind === 'tag' ? reference.tag : undefined,
      },
      'manifest pushed',
    );

    return pushResult(previous);
  }

  /**
   * Deletes by digest (the manifest and every tag pointing at it) or by tag
   * (the tag only). Throws MANIFEST_UNKNOWN when there is nothing to delete.
   */
  async delete(repository: string, reference: Reference): Promise<void> {
    const repositoryId = await findRepositoryId(this.ctx.db, repository);
    if (repositoryId === undefined) throw manifestUnknown(repository, reference);

    const result =
      reference.kind === 'digest'
        ? await this.ctx.db
            .deleteFrom('manifests')
            .where('repository_id', '=', repositoryId)
            .where('digest', '=', reference.digest)
            .executeTakeFirst()
        : await this.ctx.db
            .deleteFrom('tags')
            .where('repository_id', '=', repositoryId)
            .where('name', '=', reference.tag)
            .executeTakeFirst();
    if (result.numDeletedRows === 0n) throw manifestUnknown(repository, reference);

    this.ctx.log.info(
      {
        repository,
        digest: reference.kind === 'digest' ? reference.digest : undefined,
        tag: reference.kind === 'tag' ? reference.tag : undefined,
      },
      reference.kind === 'digest' ? 'manifest deleted' : 'tag deleted',
    );
  }

  /**
   * Checks that every blob and child manifest the manifest names is in the
   * repository, and returns the reference rows to store.
   */
  private async resolveReferences(
    trx: Transaction<Database>,
    repositoryId: number,
    repository: string,
    manifest: ParsedManifest,
  ): Promise<Array<{ digest: string; kind: 'blob' | 'manifest'; blob_id: number | null }>> {
    const rows: Array<{ digest: string; kind: 'blob' | 'manifest'; blob_id: number | null }> = [];

    if (manifest.isIndex) {
      const digests = unique(manifest.manifests.map((child) => child.digest));
      const found = new Set<string>();
      for (const batch of chunks(digests, 500)) {
        let query = trx
          .selectFrom('manifests')
          .select('digest')
          .where('repository_id', '=', repositoryId)
          .where('digest', 'in', batch);
        // Until this push commits, garbage collection waits to delete a
        // child manifest, and then finds it listed (see sweep.ts).
        if (this.ctx.dialect === 'postgres') query = query.forKeyShare();
        const present = await query.execute();
        for (const row of present) found.add(row.digest);
      }
      const missing = digests.filter((digest) => !found.has(digest));
      if (missing.length > 0) {
        // The specification reports a missing child manifest with the same
        // code as a missing blob.
        throw new RegistryError(
          'MANIFEST_BLOB_UNKNOWN',
          `index references manifest ${missing[0]}, which is not in repository ${repository}; push it first`,
          { detail: { repository, missing } },
        );
      }
      for (const digest of digests) rows.push({ digest, kind: 'manifest', blob_id: null });
      return rows;
    }

    const descriptors = [manifest.config as Descriptor, ...manifest.layers];
    const digests = unique(descriptors.map((descriptor) => descriptor.digest));
    const found = new Map<string, { id: number; size: number }>();
    for (const batch of chunks(digests, 500)) {
      const present = await selectLinkedBlobs.execute(trx, [repositoryId], batch);
      for (const row of present.rows) found.set(row.digest, { id: row.id, size: row.size });
    }

    const missing: string[] = [];
    const recorded = new Set<string>();
    for (const descriptor of descriptors) {
      const blob = found.get(descriptor.digest);
      if (!blob) {
        if (isExternalLayer(descriptor)) continue;
        missing.push(descriptor.digest);
        continue;
      }
      if (blob.size !== descriptor.size) {
        throw new RegistryError(
          'MANIFEST_INVALID',
          `descriptor of ${descriptor.digest} gives size ${descriptor.size}, but the blob has ${blob.size} bytes`,
          { detail: { digest: descriptor.digest, declared: descriptor.size, actual: blob.size } },
        );
      }
      if (recorded.has(descriptor.digest)) continue;
      recorded.add(descriptor.digest);
      rows.push({ digest: descriptor.digest, kind: 'blob', blob_id: blob.id });
    }

    if (missing.length > 0) {
      throw new RegistryError(
        'MANIFEST_BLOB_UNKNOWN',
        `manifest references blob ${missing[0]}, which is not in repository ${repository}; push it first`,
        { detail: { repository, missing: unique(missing) } },
      );
    }
    // Every referenced blob is already linked to the repository (checked
    // above), so the push adds no repository_blobs rows of its own.
    return rows;
  }

  private async upsertManifest(
    trx: Transaction<Database>,
    repositoryId: number,
    digest: string,
    content: Buffer,
    manifest: ParsedManifest,
  ): Promise<number> {
    const row = await upsertManifestRow.first(
      trx,
      repositoryId,
      digest,
      manifest.mediaType,
      manifest.artifactType ?? null,
      manifest.subject?.digest ?? null,
      manifest.annotations ? JSON.stringify(manifest.annotations) : null,
      content,
      content.length,
      Date.now(),
    );
    if (!row) throw new Error(`storing manifest ${digest} returned no row`);
    return row.id;
  }

  /** Points a tag at a manifest; returns the digest it pointed at before, if any. */
  private async moveTag(
    trx: Transaction<Database>,
    repositoryId: number,
    tag: string,
    manifestId: number,
  ): Promise<string | undefined> {
    const previous = await selectTagDigest.first(trx, repositoryId, tag);
    await upsertTag.execute(trx, repositoryId, tag, manifestId, Date.now());
    return previous?.digest;
  }
}

function isExternalLayer(descriptor: Descriptor): boolean {
  return (
    NON_DISTRIBUTABLE_LAYER_TYPES.includes(descriptor.mediaType) &&
    (descriptor.urls?.length ?? 0) > 0
  );
}

function manifestUnknown(repository: string, reference: Reference): RegistryError {
  const ref = reference.kind === 'tag' ? reference.tag : reference.digest;
  return new RegistryError(
    'MANIFEST_UNKNOWN',
    `manifest ${ref} is not in repository ${repository}`,
    {
      detail: { repository, reference: ref },
    },
  );
}

function unique<T>(values: T[]): T[] {
  return [...new Set(values)];
}

function* chunks<T>(values: T[], size: number): Iterable<T[]> {
  for (let i = 0; i < values.length; i += size) yield values.slice(i, i + size);
}
