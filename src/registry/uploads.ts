import { randomUUID, type Hash } from 'node:crypto';

import type { Selectable } from 'kysely';

import { commitBlob } from '../gc/tombstones.js';
import { runTransaction } from '../metadata/db.js';
import { PreparedQuery } from '../metadata/prepared.js';
import type { UploadsTable } from '../metadata/schema.js';
import { UploadNotFoundError } from '../storage/types.js';
import { linkBlob, recordBlob } from './blobs.js';
import type { CoreContext } from './core.js';
import { createDigestHash, type Digest } from './digest.js';
import { RegistryError } from './errors.js';
import { deleteRepositoryIfEmpty, ensureRepository, findRepositoryId } from './repositories.js';

/** An upload session's state, as the Range and Location headers report it. */
export interface UploadSession {
  id: string;
  repository: string;
  /** Bytes received so far. */
  offset: number;
}

/** A chunk's position as a Content-Range header states it (inclusive end). */
export interface ChunkRange {
  start: number;
  end: number;
}

export interface ChunkInput {
  body: AsyncIterable<Uint8Array>;
  /** From Content-Range, when the client sent one. */
  range?: ChunkRange;
  /** From Content-Length, when the client sent one. */
  length?: number;
}

const UPLOAD_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

const insertSession = new PreparedQuery((db, id: string, repositoryId: number, now: number) =>
  db.insertInto('uploads').values({
    id,
    repository_id: repositoryId,
    offset: 0,
    storage_key: id,
    started_at: now,
    updated_at: now,
  }),
);

const selectSession = new PreparedQuery((db, id: string, repositoryId: number) =>
  db
    .selectFrom('uploads')
    .selectAll()
    .where('id', '=', id)
    .where('repository_id', '=', repositoryId),
);

/**
 * How long a request holds a session against requests of other processes.
 * NOTE: a process that dies while it holds a session leaves it held this
 * long. A client that retries gets 416 until then, or starts a new session.
 */
const LEASE_MS = 60 * 60_000;

const claimSession = new PreparedQuery(
  (db, id: string, offset: number, holder: string, now: number, heldUntil: number) =>
    db
      .updateTable('uploads')
      .set({ holder, held_until: heldUntil })
      .where('id', '=', id)
      .where('offset', '=', offset)
      .where((eb) => eb.or([eb('holder', 'is', null), eb('held_until', '<', now)])),
);

const advanceSession = new PreparedQuery(
  (db, id: string, holder: string, offset: number, now: number) =>
    db
      .updateTable('uploads')
      .set({ offset, updated_at: now, holder: null, held_until: null })
      .where('id', '=', id)
      .where('holder', '=', holder),
);

const releaseSession = new PreparedQuery((db, id: string, holder: string) =>
  db
    .updateTable('uploads')
    .set({ holder: null, held_until: null })
    .where('id', '=', id)
    .where('holder', '=', holder),
);

const selectSessionById = new PreparedQuery((db, id: string) =>
  db.selectFrom('uploads').select('id').where('id', '=', id),
);

const deleteSession = new PreparedQuery((db, id: string) =>
  db.deleteFrom('uploads').where('id', '=', id),
);

/** Hash states kept between the chunks of one upload; rebuilt from storage when missing. */
const MAX_CACHED_HASHES = 1024;

/**
 * Upload sessions: start, append chunks, finalize into a blob, cancel, and
 * the monolithic and mount shortcuts. The session's offset lives in the
 * database and its bytes in the blob store, so any process can continue it.
 * The running SHA-256 state is a per-process cache keyed by session and
 * offset; a process without it re-hashes the stored bytes.
 */
export class Uploads {
  private readonly hashes = new Map<string, { offset: number; hash: Hash }>();
  private readonly locks = new Map<string, Promise<unknown>>();

  constructor(private readonly ctx: CoreContext) {}

  /**
   * Starts a session in the repository, creating the repository if needed.
   * Storage for its bytes comes with the first chunk.
   */
  async start(repository: string): Promise<UploadSession> {
    const id = randomUUID();
    const now = Date.now();
    await runTransaction(this.ctx.db, async (trx) => {
      const repositoryId = await ensureRepository(trx, repository);
      await insertSession.execute(trx, id, repositoryId, now);
    });

    this.ctx.log.debug({ repository, upload: id }, 'upload session started');
    return { id, repository, offset: 0 };
  }

  /** Returns the session's state; throws BLOB_UPLOAD_UNKNOWN when there is none. */
  async status(repository: string, id: string): Promise<UploadSession> {
    const row = await this.find(repository, id);
    return { id, repository, offset: row.offset };
  }

  /**
   * Appends a chunk. A Content-Range must start at the current offset (416
   * otherwise, with the current Range), and the body must have exactly the
   * length it declares; a short or failed body leaves the offset unchanged.
   */
  async append(repository: string, id: string, chunk: ChunkInput): Promise<UploadSession> {
    return this.withLock(id, async () => {
      const row = await this.find(repository, id);
      const expected = expectedChunkLength(chunk, row.offset);
      const holder = await this.claim(repository, row);
      let received;
      try {
        received = await this.receive(row, chunk.body, expected, false);
      } catch (error) {
        await this.release(row.id, holder);
        throw error;
      }
      const { offset, hash } = received;

      const updated = await advanceSession.execute(this.ctx.db, row.id, holder, offset, Date.now());
      if (updated.numAffectedRows === 0n) {
        // The session was cancelled or collected while the chunk arrived.
        this.hashes.delete(row.id);
        throw uploadUnknown(repository, id);
      }
      this.rememberHash(row.id, offset, hash);
      return { id, repository, offset };
    });
  }

  /**
   * Completes a session: appends an optional last chunk, verifies the digest
   * of everything received, and stores the blob. A digest mismatch cancels
   * the session and throws DIGEST_INVALID. The last chunk's offset is never
   * recorded: the session ends with the commit, and if the commit fails the
   * session stays as it was before this request.
   */
  async finalize(
    repository: string,
    id: string,
    digest: Digest,
    lastChunk?: ChunkInput,
  ): Promise<{ digest: string; size: number }> {
    return this.withLock(id, async () => {
      const row = await this.find(repository, id);
      const expected = lastChunk ? expectedChunkLength(lastChunk, row.offset) : undefined;
      const holder = await this.claim(repository, row);
      try {
        return await this.complete(
          repository,
          row,
          digest,
          lastChunk && { ...lastChunk, expected },
        );
      } catch (error) {
        // Completing deletes the session. After a failure, it is either gone
        // or still held by this request.
        await this.release(row.id, holder);
        throw error;
      }
    });
  }

  /** Receives the last chunk, if any, verifies the digest and stores the blob. */
  private async complete(
    repository: string,
    row: Selectable<UploadsTable>,
    digest: Digest,
    lastChunk: (ChunkInput & { expected: number | undefined }) | undefined,
  ): Promise<{ digest: string; size: number }> {
    let received: { offset: number; hash: Hash } | undefined;
    if (lastChunk) {
      received = await this.receive(row, lastChunk.body, lastChunk.expected, true);
    }
    const offset = received?.offset ?? row.offset;

    const actual =
      received && digest.algorithm === 'sha256'
        ? `sha256:${received.hash.digest('hex')}`
        : await this.digestOf({ ...row, offset }, digest.algorithm);
    if (actual !== digest.value) {
      await this.discard(row);
      verifyDigest(actual, digest, 'the upload was cancelled');
    }

    // commitBlob keeps garbage collection from deleting the digest's file
    // between storing the bytes and recording the row.
    const upload = { key: row.storage_key, digest, size: offset, synced: received !== undefined };
    try {
      await commitBlob(this.ctx, upload, async (trx) => {
        // A repository deleted since the claim took the session with it.
        const ended = await deleteSession.execute(trx, row.id);
        if (ended.numAffectedRows === 0n) throw uploadUnknown(repository, row.id);
        const blobId = await recordBlob(trx, digest.value, offset);
        await linkBlob(trx, row.repository_id, blobId);
      });
    } catch (error) {
      // The session's file went away, removed by hand or by a process that
      // ignored the hold. The client starts a new session.
      if ((error as NodeJS.ErrnoException).code === 'ENOENT')
        throw uploadUnknown(repository, row.id);
      throw error;
    }
    this.hashes.delete(row.id);

    this.ctx.log.info(
      { repository, upload: row.id, digest: digest.value, size: offset },
      'blob upload completed',
    );
    return { digest: digest.value, size: offset };
  }

  /**
   * Stores a whole blob sent in one request (POST with `digest`). The body
   * streams into storage under a temporary key; nothing reaches the database,
   * not even the repository, unless the digest matches.
   */
  async monolithic(
    repository: string,
    digest: Digest,
    body: AsyncIterable<Uint8Array>,
    length?: number,
  ): Promise<{ digest: string; size: number }> {
    const key = randomUUID();
    let size: number;
    try {
      const hash = createDigestHash(digest.algorithm);
      size = await this.ctx.store.appendUpload(key, 0, metered(body, hash, length), {
        sync: true,
      });
      checkLength(size, length);
      verifyDigest(`${digest.algorithm}:${hash.digest('hex')}`, digest, 'the upload was discarded');
      await commitBlob(this.ctx, { key, digest, size, synced: true }, async (trx) => {
        const repositoryId = await ensureRepository(trx, repository);
        const blobId = await recordBlob(trx, digest.value, size);
        await linkBlob(trx, repositoryId, blobId);
      });
    } catch (error) {
      await this.ctx.store.abortUpload(key);
      throw error;
    }

    this.ctx.log.info({ repository, digest: digest.value, size }, 'blob upload completed');
    return { digest: digest.value, size };
  }

  /** Cancels a session and removes its data. */
  async cancel(repository: string, id: string): Promise<void> {
    await this.withLock(id, async () => {
      const row = await this.find(repository, id);
      // A request of another process that holds the session gets to finish.
      await this.claim(repository, row);
      await this.discard(row);
    });
  }

  /**
   * Links a blob that `from` contains into `repository` (a cross-repository
   * mount). Returns false, linking nothing, when `from` lacks the blob.
   */
  async mount(repository: string, digest: string, from: string): Promise<boolean> {
    return runTransaction(this.ctx.db, async (trx) => {
      const source = await trx
        .selectFrom('blobs')
        .innerJoin('repository_blobs', 'repository_blobs.blob_id', 'blobs.id')
        .innerJoin('repositories', 'repositories.id', 'repository_blobs.repository_id')
        .select('blobs.id')
        .where('repositories.name', '=', from)
        .where('blobs.digest', '=', digest)
        .executeTakeFirst();
      if (!source) return false;

      const repositoryId = await ensureRepository(trx, repository);
      await linkBlob(trx, repositoryId, source.id);
      return true;
    });
  }

  /**
   * Holds the session for this request, so that no request of another
   * process writes its file meanwhile. Throws 416 when another request holds
   * it or the offset moved since `row` was read, and BLOB_UPLOAD_UNKNOWN when
   * the session is gone.
   */
  private async claim(repository: string, row: { id: string; offset: number }): Promise<string> {
    const holder = randomUUID();
    const now = Date.now();
    const claimed = await claimSession.execute(
      this.ctx.db,
      row.id,
      row.offset,
      holder,
      now,
      now + LEASE_MS,
    );
    if (claimed.numAffectedRows === 0n) {
      // Cancelled, collected or deleted with its repository since `row` was read.
      if (!(await selectSessionById.first(this.ctx.db, row.id))) {
        throw uploadUnknown(repository, row.id);
      }
      throw new RegistryError(
        'BLOB_UPLOAD_INVALID',
        'upload is in use by another request or was modified concurrently',
        { status: 416, headers: { Range: rangeHeader(row.offset) } },
      );
    }
    return holder;
  }

  /** Gives up a held session after a failed request. A session deleted meanwhile stays deleted. */
  private async release(id: string, holder: string): Promise<void> {
    try {
      await releaseSession.execute(this.ctx.db, id, holder);
    } catch (error) {
      this.ctx.log.error(
        { upload: id, err: error },
        'failed to release an upload session; other processes can use it once its lease ends',
      );
    }
  }

  private async find(repository: string, id: string) {
    if (!UPLOAD_ID.test(id)) throw uploadUnknown(repository, id);
    const repositoryId = await findRepositoryId(this.ctx.db, repository);
    if (repositoryId === undefined) throw uploadUnknown(repository, id);

    const row = await selectSession.first(this.ctx.db, id, repositoryId);
    if (!row) throw uploadUnknown(repository, id);
    return row;
  }

  /**
   * Streams a body into the session's storage at its offset, and returns the
   * new offset with the SHA-256 state of all bytes up to it. Records nothing.
   */
  private async receive(
    row: { id: string; storage_key: string; offset: number },
    body: AsyncIterable<Uint8Array>,
    expectedLength: number | undefined,
    sync: boolean,
  ): Promise<{ offset: number; hash: Hash }> {
    const hash = (await this.hashAt(row, 'sha256')).copy();
    let written: number;
    try {
      written = await this.ctx.store.appendUpload(
        row.storage_key,
        row.offset,
        metered(body, hash, expectedLength),
        { sync },
      );
    } catch (error) {
      if (error instanceof UploadNotFoundError) throw uploadUnknown('', row.id);
      throw error;
    }
    checkLength(written, expectedLength);
    return { offset: row.offset + written, hash };
  }

  /** Returns the hash state of the session's first `offset` bytes. */
  private async hashAt(
    row: { id: string; storage_key: string; offset: number },
    algorithm: Digest['algorithm'],
  ): Promise<Hash> {
    const cached = this.hashes.get(row.id);
    if (algorithm === 'sha256' && cached && cached.offset === row.offset) return cached.hash;

    const hash = createDigestHash(algorithm);
    if (row.offset === 0) return hash;
    let stream;
    try {
      stream = await this.ctx.store.readUpload(row.storage_key, row.offset);
    } catch (error) {
      if (error instanceof UploadNotFoundError) throw uploadUnknown('', row.id);
      throw error;
    }
    for await (const chunk of stream) hash.update(chunk as Buffer);
    if (algorithm === 'sha256') this.rememberHash(row.id, row.offset, hash);
    return hash;
  }

  private async digestOf(
    row: { id: string; storage_key: string; offset: number },
    algorithm: Digest['algorithm'],
  ): Promise<string> {
    const hash = await this.hashAt(row, algorithm);
    return `${algorithm}:${hash.copy().digest('hex')}`;
  }

  private rememberHash(id: string, offset: number, hash: Hash): void {
    this.hashes.delete(id);
    this.hashes.set(id, { offset, hash });
    if (this.hashes.size > MAX_CACHED_HASHES) {
      const oldest = this.hashes.keys().next().value as string;
      this.hashes.delete(oldest);
    }
  }

  /**
   * Removes a session and its data. A repository that the session created
   * and that contains nothing else goes with it, so a cancelled upload leaves no
   * trace in the tag list.
   */
  private async discard(row: { id: string; storage_key: string; repository_id: number }) {
    this.hashes.delete(row.id);
    await runTransaction(this.ctx.db, async (trx) => {
      await deleteSession.execute(trx, row.id);
      await deleteRepositoryIfEmpty(trx, this.ctx.dialect, row.repository_id);
    });
    await this.ctx.store.abortUpload(row.storage_key);
  }

  /** Runs one operation at a time per session within this process. */
  private async withLock<T>(id: string, operation: () => Promise<T>): Promise<T> {
    const previous = this.locks.get(id) ?? Promise.resolve();
    const current = previous.catch(() => undefined).then(operation);
    this.locks.set(id, current);
    try {
      return await current;
    } finally {
      if (this.locks.get(id) === current) this.locks.delete(id);
    }
  }
}

/**
 * Works out how many bytes a chunk must have from its Content-Range and
 * Content-Length, and rejects a range that does not start at the offset.
 */
function expectedChunkLength(chunk: ChunkInput, offset: number): number | undefined {
  if (chunk.range) {
    const { start, end } = chunk.range;
    if (start !== offset) {
      throw new RegistryError(
        'BLOB_UPLOAD_INVALID',
        `chunk starts at byte ${start} but the upload has ${offset} bytes; send the chunk starting at ${offset}`,
        { status: 416, headers: { Range: rangeHeader(offset) } },
      );
    }
    const rangeLength = end - start + 1;
    if (chunk.length !== undefined && chunk.length !== rangeLength) {
      throw new RegistryError(
        'BLOB_UPLOAD_INVALID',
        `Content-Length ${chunk.length} does not match Content-Range ${start}-${end}`,
        { status: 416, headers: { Range: rangeHeader(offset) } },
      );
    }
    return rangeLength;
  }
  return chunk.length;
}

/** Passes a request body through, hashing it and enforcing its declared length. */
async function* metered(
  body: AsyncIterable<Uint8Array>,
  hash: Hash,
  expectedLength: number | undefined,
): AsyncIterable<Uint8Array> {
  let received = 0;
  for await (const chunk of body) {
    received += chunk.length;
    if (expectedLength !== undefined && received > expectedLength) {
      throw new RegistryError(
        'SIZE_INVALID',
        `chunk is longer than the ${expectedLength} bytes its headers declare`,
      );
    }
    hash.update(chunk);
    yield chunk;
  }
}

function checkLength(written: number, expectedLength: number | undefined): void {
  if (expectedLength !== undefined && written !== expectedLength) {
    throw new RegistryError(
      'SIZE_INVALID',
      `body has ${written} bytes but its headers declare ${expectedLength}`,
    );
  }
}

function verifyDigest(actual: string, expected: Digest, consequence: string): void {
  if (actual === expected.value) return;
  throw new RegistryError(
    'DIGEST_INVALID',
    `upload content has digest ${actual}, not the ${expected.value} given; ${consequence}`,
    { detail: { expected: expected.value, actual } },
  );
}

/** Formats the Range header of an upload with `offset` bytes: `0-<last byte>`. */
export function rangeHeader(offset: number): string {
  return `0-${Math.max(offset - 1, 0)}`;
}

function uploadUnknown(repository: string, id: string): RegistryError {
  return new RegistryError('BLOB_UPLOAD_UNKNOWN', `upload ${id.slice(0, 64)} is not known`, {
    detail: repository ? { repository, upload: id.slice(0, 64) } : { upload: id.slice(0, 64) },
  });
}
