import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Readable } from 'node:stream';
import { after, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';

import { parseDigest } from '../src/registry/digest.js';
import {
  BlobNotFoundError,
  FilesystemBlobStore,
  UploadNotFoundError,
} from '../src/storage/index.js';
import { sha256 } from './helpers/oci.js';

/** Stores the tests opened, closed after them so that no directory handle is left open. */
const stores: FilesystemBlobStore[] = [];

async function newStore(): Promise<{ store: FilesystemBlobStore; root: string }> {
  const root = mkdtempSync(path.join(tmpdir(), 'mcr-store-'));
  const store = new FilesystemBlobStore(root);
  await store.init();
  stores.push(store);
  return { store, root };
}

async function collect(stream: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

/** Lists what this process's open descriptors point to under `root`, deleted ones marked. */
function openDirectoryLinks(root: string): string[] {
  const links: string[] = [];
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const target = readlinkSync(`/proc/self/fd/${fd}`);
      if (target.startsWith(root)) links.push(target);
    } catch {
      // The descriptor closed while listing.
    }
  }
  return links.sort();
}

describe('filesystem blob store', () => {
  after(async () => {
    await Promise.all(stores.map((store) => store.close()));
  });

  it('init creates the sha256 prefix directories', async () => {
    const { store, root } = await newStore();
    const algorithmDir = path.join(root, 'blobs', 'sha256');
    const expected = Array.from({ length: 256 }, (_, i) => i.toString(16).padStart(2, '0'));
    assert.deepEqual(readdirSync(algorithmDir).sort(), expected);

    const data = Buffer.from('into an existing prefix directory');
    const digest = parseDigest(sha256(data));
    await store.appendUpload('p1', 0, Readable.from([data]));
    assert.equal(await store.commitUpload('p1', digest, data.length), 'stored');

    const others = expected.filter((prefix) => prefix !== digest.hex.slice(0, 2));
    rmSync(path.join(algorithmDir, others[0] as string), { recursive: true });
    rmSync(path.join(algorithmDir, others.at(-1) as string), { recursive: true });
    const again = new FilesystemBlobStore(root);
    stores.push(again);
    await again.init();
    assert.deepEqual(readdirSync(algorithmDir).sort(), expected);
    assert.deepEqual(await collect(await again.read(digest)), data);
  });

  it('appends, commits by rename into the content-addressed path, and reads ranges', async () => {
    const { store, root } = await newStore();
    const data = randomBytes(200_000);
    const digest = parseDigest(sha256(data));

    assert.equal(
      await store.appendUpload('u1', 0, Readable.from([data.subarray(0, 50_000)])),
      50_000,
    );
    assert.equal(
      await store.appendUpload('u1', 50_000, Readable.from([data.subarray(50_000)])),
      150_000,
    );
    assert.equal(await store.commitUpload('u1', digest, data.length), 'stored');

    const file = path.join(root, 'blobs', 'sha256', digest.hex.slice(0, 2), digest.hex);
    assert.deepEqual(readFileSync(file), data);
    assert.deepEqual(readdirSync(path.join(root, 'uploads')), []);
    assert.equal((await store.stat(digest))?.size, data.length);
    assert.deepEqual(
      await collect(await store.read(digest, { start: 10, end: 19 })),
      data.subarray(10, 20),
    );
  });

  it('reads a stored blob into caller buffers', async () => {
    const { store } = await newStore();
    const data = randomBytes(70_000);
    const digest = parseDigest(sha256(data));
    await store.appendUpload('r1', 0, Readable.from([data]));
    await store.commitUpload('r1', digest, data.length);

    const reader = await store.openReader(digest);
    try {
      const buffer = Buffer.alloc(40_000);
      assert.equal(await reader.read(buffer, 40_000, 0), 40_000);
      assert.deepEqual(buffer, data.subarray(0, 40_000));
      assert.equal(await reader.read(buffer, 40_000, 40_000), 30_000);
      assert.deepEqual(buffer.subarray(0, 30_000), data.subarray(40_000));
      assert.equal(await reader.read(buffer, 40_000, 70_000), 0);
    } finally {
      await reader.close();
    }
    await assert.rejects(
      store.openReader(parseDigest(sha256(Buffer.from('absent')))),
      BlobNotFoundError,
    );
  });

  it('gathers many small chunks into whole writes', async () => {
    const { store } = await newStore();
    const chunks = Array.from({ length: 3000 }, (_, i) => randomBytes(700 + (i % 13)));
    const data = Buffer.concat(chunks);
    assert.equal(await store.appendUpload('many', 0, Readable.from(chunks)), data.length);
    assert.deepEqual(await collect(await store.readUpload('many', data.length)), data);
  });

  it('overwrites bytes a failed append left past the offset', async () => {
    const { store } = await newStore();
    await store.appendUpload('u2', 0, Readable.from([Buffer.from('hello')]));
    // A torn append: more bytes landed than the committed offset (5) covers.
    await store.appendUpload('u2', 5, Readable.from([Buffer.from('XXXXXXXX')]));
    await store.appendUpload('u2', 5, Readable.from([Buffer.from(' world')]));
    assert.equal((await collect(await store.readUpload('u2', 11))).toString(), 'hello world');
  });

  it('creates upload files on the first append', async () => {
    const { store, root } = await newStore();
    await assert.rejects(
      store.appendUpload('late', 5, Readable.from([Buffer.from('x')])),
      UploadNotFoundError,
    );
    assert.deepEqual(readdirSync(path.join(root, 'uploads')), []);
    assert.equal((await collect(await store.readUpload('none', 0))).length, 0);

    await store.appendUpload('first', 0, Readable.from([Buffer.from('a failed first chunk')]));
    await store.appendUpload('first', 0, Readable.from([Buffer.from('again')]));
    assert.equal(readFileSync(path.join(root, 'uploads', 'first'), 'utf8'), 'again');
  });

  it('commits a synced append', async () => {
    const { store, root } = await newStore();
    const data = Buffer.from('synced bytes');
    const digest = parseDigest(sha256(data));
    assert.equal(await store.appendUpload('s', 0, Readable.from([data]), { sync: true }), 12);
    assert.equal(await store.commitUpload('s', digest, data.length, { synced: true }), 'stored');
    const file = path.join(root, 'blobs', 'sha256', digest.hex.slice(0, 2), digest.hex);
    assert.deepEqual(readFileSync(file), data);
    assert.deepEqual(readdirSync(path.join(root, 'uploads')), []);

    // A second blob in the same prefix directory finds it in place.
    let other = Buffer.from('');
    for (let i = 0; ; i++) {
      other = Buffer.from(`other ${i}`);
      if (sha256(other).slice(7, 9) === digest.hex.slice(0, 2)) break;
    }
    await store.appendUpload('t', 0, Readable.from([other]));
    assert.equal(await store.commitUpload('t', parseDigest(sha256(other)), other.length), 'stored');
    assert.equal(readdirSync(path.dirname(file)).length, 2);
  });

  it('syncs a blob directory re-created after deletion', async () => {
    const { store, root } = await newStore();
    const first = Buffer.from('first blob');
    const digest = parseDigest(sha256(first));
    const directory = path.join(root, 'blobs', 'sha256', digest.hex.slice(0, 2));
    await store.appendUpload('d1', 0, Readable.from([first]), { sync: true });
    await store.commitUpload('d1', digest, first.length, { synced: true });
    assert.deepEqual(openDirectoryLinks(root), [directory]);

    // An operator deletes the directory; the next blob in it re-creates it.
    rmSync(directory, { recursive: true });
    await store.appendUpload('d2', 0, Readable.from([first]), { sync: true });
    await store.commitUpload('d2', digest, first.length, { synced: true });
    const deadline = Date.now() + 2000;
    while (openDirectoryLinks(root).length > 1 && Date.now() < deadline) await sleep(10);
    assert.deepEqual(openDirectoryLinks(root), [directory]);
    await store.close();
    assert.deepEqual(openDirectoryLinks(root), []);
  });

  it('commits a missing upload only when empty', async () => {
    const { store, root } = await newStore();
    await assert.rejects(
      store.commitUpload('gone', parseDigest(sha256('gone')), 4),
      UploadNotFoundError,
    );
    const empty = parseDigest(sha256(''));
    assert.equal(await store.commitUpload('none', empty, 0), 'stored');
    const file = path.join(root, 'blobs', 'sha256', empty.hex.slice(0, 2), empty.hex);
    assert.equal(readFileSync(file).length, 0);
  });

  it('discards the upload when the blob already exists', async () => {
    const { store, root } = await newStore();
    const digest = parseDigest(sha256('same'));
    for (const key of ['a', 'b']) {
      await store.appendUpload(key, 0, Readable.from([Buffer.from('same')]));
    }
    assert.equal(await store.commitUpload('a', digest, 4), 'stored');
    assert.equal(await store.commitUpload('b', digest, 4), 'existing');
    assert.deepEqual(readdirSync(path.join(root, 'uploads')), []);
  });

  it('lists blobs and reports missing ones', async () => {
    const { store } = await newStore();
    const digest = parseDigest(sha256('listed'));
    await store.appendUpload('c', 0, Readable.from([Buffer.from('listed')]));
    await store.commitUpload('c', digest, 6);
    const listed: string[] = [];
    for await (const item of store.list()) listed.push(item);
    assert.deepEqual(listed, [digest.value]);

    await store.delete(digest);
    assert.equal(await store.stat(digest), undefined);
    await assert.rejects(store.read(digest), BlobNotFoundError);
    await store.delete(digest);
  });

  it('rejects upload keys that could escape the uploads directory', async () => {
    const { store, root } = await newStore();
    for (const key of ['../mcr.db', 'a/b', '', '..']) {
      await assert.rejects(
        store.appendUpload(key, 0, Readable.from([Buffer.from('x')])),
        /invalid upload key/,
      );
    }
    assert.equal(existsSync(path.join(root, 'mcr.db')), false);
  });
});
