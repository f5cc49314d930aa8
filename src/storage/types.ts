import type { Readable } from 'node:stream';

import type { Digest } from '../registry/digest.js';

/** An inclusive byte range, as in an HTTP Range header. */
export interface ByteRange {
  start: number;
  end: number;
}

/** A stored upload's partial data, found when listing for cleanup. */
export interface StoredUpload {
  key: string;
  modifiedAt: number;
}

/** The fate of an upload's bytes at commit: stored, or discarded as a duplicate. */
export type CommitOutcome = 'stored' | 'existing';

/** Random access to one stored blob. The caller must close it. */
export interface BlobReader {
  /** Reads up to `length` bytes at `position` into `buffer`; resolves with the count, 0 at the end. */
  read(buffer: Buffer, length: number, position: number): Promise<number>;
  close(): Promise<void>;
}

/**
 * Content-addressed blob storage. Every method streams: no implementation may
 * hold a whole blob in memory. Upload keys are opaque names chosen by the
 * registry core (letters, digits and dashes only).
 */
export interface BlobStore {
  /** Returns a blob's stored size and write time, or undefined when its bytes are absent. */
  stat(digest: Digest): Promise<{ size: number; modifiedAt: number } | undefined>;

  /** Opens a blob for reading; rejects with BlobNotFoundError when it is absent. */
  read(digest: Digest, range?: ByteRange): Promise<Readable>;

  /**
   * Opens a blob for reads into the caller's own buffers, which lets a
   * server reuse a few buffers for a whole download instead of allocating
   * one per chunk. Rejects with BlobNotFoundError when the blob is absent.
   */
  openReader(digest: Digest): Promise<BlobReader>;

  /**
   * Writes the source's bytes into an upload starting at offset, discarding any
   * bytes a failed earlier append left beyond offset. An append at offset 0
   * creates the upload's storage; a later one rejects with UploadNotFoundError
   * when there is none. Resolves with the number of bytes written; rejects,
   * leaving the upload's committed offset valid, when the source fails. With
   * `sync`, the bytes are on disk when it resolves, so a commit right after
   * need not flush them again.
   */
  appendUpload(
    key: string,
    offset: number,
    source: AsyncIterable<Uint8Array>,
    options?: { sync?: boolean },
  ): Promise<number>;

  /** Reads an upload's data from the start up to (excluding) length. */
  readUpload(key: string, length: number): Promise<Readable>;

  /**
   * Makes an upload's first `length` bytes durable as the blob `digest`. The
   * caller has verified the digest. If the blob already exists, the upload's
   * data is discarded instead (deduplication). Pass `synced` only when the
   * last append synced exactly `length` bytes, so they need no second flush.
   */
  commitUpload(
    key: string,
    digest: Digest,
    length: number,
    options?: { synced?: boolean },
  ): Promise<CommitOutcome>;

  /** Removes an upload's data; a missing upload is not an error. */
  abortUpload(key: string): Promise<void>;

  /** Removes a blob's bytes; a missing blob is not an error. */
  delete(digest: Digest): Promise<void>;

  /** Lists the digest of every stored blob. */
  list(): AsyncIterable<string>;

  /** Lists stored upload data, for removing abandoned uploads. */
  listUploads(): AsyncIterable<StoredUpload>;
}

/** A blob whose bytes are not in storage. */
export class BlobNotFoundError extends Error {
  constructor(readonly digest: string) {
    super(`blob ${digest} is not in storage`);
    this.name = 'BlobNotFoundError';
  }
}

/** An upload whose data is not in storage. */
export class UploadNotFoundError extends Error {
  constructor(readonly key: string) {
    super(`upload ${key} is not in storage`);
    this.name = 'UploadNotFoundError';
  }
}
