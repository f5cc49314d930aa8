import { constants, type Dirent } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat, unlink, type FileHandle } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';

import type { Digest } from '../registry/digest.js';
import {
  BlobNotFoundError,
  UploadNotFoundError,
  type BlobReader,
  type BlobStore,
  type ByteRange,
  type CommitOutcome,
  type StoredUpload,
} from './types.js';

const UPLOAD_KEY = /^[A-Za-z0-9-]{1,128}$/;

/**
 * Stores blobs as files at `blobs/<algorithm>/<first two hex>/<hex>` and
 * uploads in progress at `uploads/<key>` under one root directory. A blob file
 * appears only by an atomic rename of fully written, fsynced data, so readers
 * never see a partial blob.
 */
export class FilesystemBlobStore implements BlobStore {
  private readonly blobsDir: string;
  private readonly uploadsDir: string;
  /**
   * Blob directories kept open, so that flushing a rename into one costs one
   * call instead of three. There are at most 256 per digest algorithm.
   */
  private readonly directories = new Map<string, Promise<FileHandle>>();

  constructor(root: string) {
    this.blobsDir = path.join(root, 'blobs');
    this.uploadsDir = path.join(root, 'uploads');
  }

  /**
   * Creates the store's directories and returns the errors of the sha256
   * prefix directories it could not create. Those are not fatal: a commit
   * creates a missing one itself, and only commits into one that cannot be
   * created fail.
   */
  async init(): Promise<Error[]> {
    await mkdir(this.blobsDir, { recursive: true, mode: 0o700 });
    await mkdir(this.uploadsDir, { recursive: true, mode: 0o700 });
    try {
      return await this.createPrefixDirectories('sha256');
    } catch (error) {
      return [error as Error];
    }
  }

  /**
   * Creates the missing prefix directories of an algorithm, so that no blob
   * commit waits to create and sync one. On a fresh store, 200 blobs from 16
   * clients went at 340 blobs/s without them and 453 with them (medians of
   * five runs). Returns the errors of those it could not create.
   */
  private async createPrefixDirectories(algorithm: string): Promise<Error[]> {
    const algorithmDir = path.join(this.blobsDir, algorithm);
    // Any entry counts as present, because a file or a broken link in a
    // directory's place would make its mkdir fail. Commits into it fail instead.
    const present = new Set((await readdirOrEmpty(algorithmDir)).map((entry) => entry.name));
    const missing = PREFIXES.filter((prefix) => !present.has(prefix));
    if (missing.length === 0) return [];
    await mkdir(algorithmDir, { recursive: true, mode: 0o700 });
    const results = await Promise.allSettled(
      // recursive, because another process on the same data directory may create one first.
      missing.map((prefix) =>
        mkdir(path.join(algorithmDir, prefix), { recursive: true, mode: 0o700 }),
      ),
    );
    await syncDirectory(algorithmDir);
    await syncDirectory(this.blobsDir);
    return results.flatMap((result) =>
      result.status === 'rejected' ? [result.reason as Error] : [],
    );
  }

  /** Writes, syncs and removes a probe file in the uploads directory; throws if it cannot. */
  async checkWritable(): Promise<void> {
    const probe = path.join(this.uploadsDir, `.health-${process.pid}-${Date.now()}`);
    const handle = await open(probe, 'w', 0o600);
    try {
      await handle.write('ok');
      await handle.sync();
    } finally {
      await handle.close();
      await rm(probe, { force: true });
    }
  }

  blobPath(digest: Digest): string {
    return path.join(this.blobsDir, digest.algorithm, digest.hex.slice(0, 2), digest.hex);
  }

  private uploadPath(key: string): string {
    if (!UPLOAD_KEY.test(key)) throw new Error(`invalid upload key ${JSON.stringify(key)}`);
    return path.join(this.uploadsDir, key);
  }

  async stat(digest: Digest): Promise<{ size: number; modifiedAt: number } | undefined> {
    try {
      const info = await stat(this.blobPath(digest));
      return { size: info.size, modifiedAt: info.mtimeMs };
    } catch (error) {
      if (isNotFound(error)) return undefined;
      throw error;
    }
  }

  async read(digest: Digest, range?: ByteRange): Promise<Readable> {
    let handle;
    try {
      handle = await open(this.blobPath(digest), constants.O_RDONLY);
    } catch (error) {
      if (isNotFound(error)) throw new BlobNotFoundError(digest.value);
      throw error;
    }
    return handle.createReadStream({
      ...(range ? { start: range.start, end: range.end } : {}),
      autoClose: true,
      highWaterMark: IO_CHUNK_BYTES,
    });
  }

  async openReader(digest: Digest): Promise<BlobReader> {
    let handle: FileHandle;
    try {
      handle = await open(this.blobPath(digest), constants.O_RDONLY);
    } catch (error) {
      if (isNotFound(error)) throw new BlobNotFoundError(digest.value);
      throw error;
    }
    return {
      read: async (buffer, length, position) =>
        (await handle.read(buffer, 0, length, position)).bytesRead,
      close: () => handle.close(),
    };
  }

  async appendUpload(
    key: string,
    offset: number,
    source: AsyncIterable<Uint8Array>,
    options: { sync?: boolean } = {},
  ): Promise<number> {
    let handle;
    try {
      // The first append creates the file, or empties what an earlier failed
      // first append left; later ones continue an existing file.
      handle = await open(this.uploadPath(key), offset === 0 ? 'w' : 'r+', 0o600);
    } catch (error) {
      if (isNotFound(error)) throw new UploadNotFoundError(key);
      throw error;
    }

    let position = offset;
    // Flushes written bytes to disk while more arrive, so that the last
    // flush has less left to do.
    let flushing: Promise<void> | undefined;
    let unflushed = 0;
    try {
      // Network chunks are small (often 64 KiB); gathering them into writes
      // of about IO_CHUNK_BYTES saves system calls without holding more.
      let batch: Uint8Array[] = [];
      let batched = 0;
      for await (const chunk of source) {
        // More data follows what is written, so a flush now overlaps with it.
        // None starts after the last write: the request would wait for it.
        if (unflushed >= FLUSH_BYTES) {
          await flushing;
          flushing = handle.datasync();
          unflushed = 0;
        }
        batch.push(chunk);
        batched += chunk.length;
        if (batched < IO_CHUNK_BYTES) continue;
        position += await writeAll(handle, batch, batched, position);
        unflushed += batched;
        batch = [];
        batched = 0;
      }
      if (batched > 0) position += await writeAll(handle, batch, batched, position);
      await flushing;
      // Drops whatever an earlier, failed append left beyond this one's end.
      // A first append opened an empty file, so nothing can be there.
      if (offset > 0) await handle.truncate(position);
      // fdatasync also writes the size, which reading the data needs, but
      // not the times, which nothing here reads.
      if (options.sync) await handle.datasync();
    } finally {
      // A flush still running when the body failed must end before the close.
      await flushing?.catch(() => undefined);
      await handle.close();
    }
    return position - offset;
  }

  async readUpload(key: string, length: number): Promise<Readable> {
    // An upload without data may have no file yet.
    if (length === 0) return Readable.from([]);
    let handle;
    try {
      handle = await open(this.uploadPath(key), constants.O_RDONLY);
    } catch (error) {
      if (isNotFound(error)) throw new UploadNotFoundError(key);
      throw error;
    }
    return handle.createReadStream({ start: 0, end: length - 1, autoClose: true });
  }

  async commitUpload(
    key: string,
    digest: Digest,
    length: number,
    options: { synced?: boolean } = {},
  ): Promise<CommitOutcome> {
    const source = this.uploadPath(key);
    const target = this.blobPath(digest);

    if (await exists(target)) {
      await rm(source, { force: true });
      return 'existing';
    }

    if (!options.synced) await syncUpload(source, key, length);
    await this.renameCreatingDirectory(source, target);
    await this.syncBlobDirectory(path.dirname(target));
    return 'stored';
  }

  /** Closes the blob directories kept open. */
  async close(): Promise<void> {
    const handles = [...this.directories.values()];
    this.directories.clear();
    await Promise.all(
      handles.map((handle) =>
        handle.then(
          (opened) => opened.close(),
          () => undefined,
        ),
      ),
    );
  }

  /**
   * Renames `source` to `target`, creating the target's directory when it is
   * missing. init creates the sha256 directories and mcr removes none, so
   * only a blob of another algorithm, or one whose directory was deleted by
   * hand, may need the second attempt.
   */
  private async renameCreatingDirectory(source: string, target: string): Promise<void> {
    try {
      await rename(source, target);
      return;
    } catch (error) {
      if (!isNotFound(error) || !(await exists(source))) throw error;
    }
    const directory = path.dirname(target);
    await mkdir(directory, { recursive: true, mode: 0o700 });
    // A handle kept open on a directory deleted by hand refers to the deleted
    // one; syncing it would not flush renames into the new directory.
    // NOTE: a commit that renamed into the new directory while this one was
    // still in mkdir may sync the old handle once.
    this.forgetDirectory(directory);
    // The entries of the new directories must reach the disk too: the prefix
    // directory, and the algorithm's directory when this is its first blob.
    await syncDirectory(path.dirname(directory));
    await syncDirectory(path.dirname(path.dirname(directory)));
    await rename(source, target);
  }

  /** Closes the kept handle of a directory, once the operations in progress on it end. */
  private forgetDirectory(directory: string): void {
    const handle = this.directories.get(directory);
    if (handle === undefined) return;
    this.directories.delete(directory);
    handle.then(
      (opened) => opened.close().catch(() => undefined),
      () => undefined,
    );
  }

  private async syncBlobDirectory(directory: string): Promise<void> {
    let handle = this.directories.get(directory);
    if (handle === undefined) {
      if (this.directories.size >= MAX_OPEN_DIRECTORIES) return syncDirectory(directory);
      handle = open(directory, constants.O_RDONLY);
      this.directories.set(directory, handle);
      const opening = handle;
      opening.catch(() => {
        if (this.directories.get(directory) === opening) this.directories.delete(directory);
      });
    }
    await (await handle).sync();
  }

  async abortUpload(key: string): Promise<void> {
    await rm(this.uploadPath(key), { force: true });
  }

  async delete(digest: Digest): Promise<void> {
    try {
      await unlink(this.blobPath(digest));
    } catch (error) {
      if (!isNotFound(error)) throw error;
    }
  }

  async *list(): AsyncIterable<string> {
    for (const algorithm of await readdirOrEmpty(this.blobsDir)) {
      if (!algorithm.isDirectory()) continue;
      const algorithmDir = path.join(this.blobsDir, algorithm.name);
      for (const prefix of await readdirOrEmpty(algorithmDir)) {
        if (!prefix.isDirectory()) continue;
        for (const file of await readdirOrEmpty(path.join(algorithmDir, prefix.name))) {
          if (file.isFile()) yield `${algorithm.name}:${file.name}`;
        }
      }
    }
  }

  async *listUploads(): AsyncIterable<StoredUpload> {
    for (const entry of await readdirOrEmpty(this.uploadsDir)) {
      // Skips anything that is not upload data, such as the health probe.
      if (!entry.isFile() || !UPLOAD_KEY.test(entry.name)) continue;
      try {
        const info = await stat(path.join(this.uploadsDir, entry.name));
        yield { key: entry.name, modifiedAt: info.mtimeMs };
      } catch (error) {
        if (!isNotFound(error)) throw error;
      }
    }
  }
}

/** The directory names under an algorithm's directory: two lowercase hex digits. */
const PREFIXES = Array.from({ length: 256 }, (_, index) => index.toString(16).padStart(2, '0'));

/** Size of reads and of gathered writes, in bytes. */
const IO_CHUNK_BYTES = 1024 * 1024;

/** Blob directories a store keeps open at most (256 per digest algorithm). */
const MAX_OPEN_DIRECTORIES = 512;

/**
 * Bytes an upload writes between two background flushes to disk. The flush
 * before the 201 writes at most this much, plus what a running flush has not
 * finished. With skopeo pushing 50 MiB layers on the machine in
 * docs/benchmarks.md, the final PUT took 12-16 ms at 32 MiB and 3-6 ms at
 * 8 MiB, and 1 GiB pushes were no slower.
 */
const FLUSH_BYTES = 8 * 1024 * 1024;

/** Writes every buffer at `position`, finishing a partial vectored write byte by byte. */
async function writeAll(
  handle: FileHandle,
  buffers: Uint8Array[],
  length: number,
  position: number,
): Promise<number> {
  const { bytesWritten } = await handle.writev(buffers, position);
  if (bytesWritten === length) return length;

  const rest = Buffer.concat(buffers, length).subarray(bytesWritten);
  let written = 0;
  while (written < rest.length) {
    const result = await handle.write(
      rest,
      written,
      rest.length - written,
      position + bytesWritten + written,
    );
    written += result.bytesWritten;
  }
  return length;
}

async function exists(file: string): Promise<boolean> {
  try {
    await stat(file);
    return true;
  } catch (error) {
    if (isNotFound(error)) return false;
    throw error;
  }
}

/**
 * Cuts an upload's file to `length` bytes and flushes them to disk. An empty
 * upload may never have received a chunk, so it has no file yet.
 */
async function syncUpload(file: string, key: string, length: number): Promise<void> {
  let handle;
  try {
    handle = await open(file, length === 0 ? 'w' : 'r+', 0o600);
  } catch (error) {
    if (isNotFound(error)) throw new UploadNotFoundError(key);
    throw error;
  }
  try {
    await handle.truncate(length);
    await handle.datasync();
  } finally {
    await handle.close();
  }
}

async function syncDirectory(directory: string): Promise<void> {
  const handle = await open(directory, constants.O_RDONLY);
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

async function readdirOrEmpty(directory: string): Promise<Dirent[]> {
  try {
    return await readdir(directory, { withFileTypes: true });
  } catch (error) {
    if (isNotFound(error)) return [];
    throw error;
  }
}

function isNotFound(error: unknown): boolean {
  return (error as NodeJS.ErrnoException).code === 'ENOENT';
}
