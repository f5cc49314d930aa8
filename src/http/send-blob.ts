import type { OutgoingHttpHeaders, ServerResponse } from 'node:http';

import type { BlobReader } from '../storage/index.js';
import type { V2Call } from './v2/context.js';

/** Size of each read of a blob download, in bytes. */
const CHUNK_BYTES = 1024 * 1024;

/** Free buffers kept for later downloads. Downloads beyond these allocate their own. */
const POOL_MAX = 4;
const pool: Buffer[] = [];

function takeBuffer(): Buffer {
  return pool.pop() ?? Buffer.allocUnsafeSlow(CHUNK_BYTES);
}

function returnBuffer(buffer: Buffer): void {
  if (pool.length < POOL_MAX) pool.push(buffer);
}

/**
 * Sends bytes `start` to `end` (inclusive) of a blob after the status and
 * headers set on the reply, then closes the reader. Two buffers take turns,
 * each reused only once the socket has taken all of it, because a new
 * buffer per chunk, as a file stream makes, kept the garbage collector busy.
 * A failure after the headers went out can only cut the connection.
 */
export async function sendBlob(
  call: V2Call,
  reader: BlobReader,
  start: number,
  end: number,
): Promise<void> {
  const { reply, request } = call;
  reply.hijack();
  const response = reply.raw;
  response.writeHead(reply.statusCode, reply.getHeaders() as OutgoingHttpHeaders);

  const buffers = [takeBuffer(), takeBuffer()];
  let writing: Promise<void> = Promise.resolve();
  let position = start;
  try {
    for (let turn = 0; position <= end; turn++) {
      const buffer = buffers[turn % 2] as Buffer;
      const length = Math.min(buffer.length, end - position + 1);
      const bytesRead = await reader.read(buffer, length, position);
      if (bytesRead === 0) {
        throw new Error(`blob file ends at byte ${position}, before byte ${end + 1}`);
      }
      // The write before this one used the other buffer; this buffer's last
      // write is the one awaited here.
      await writing;
      writing = writeChunk(response, buffer.subarray(0, bytesRead));
      // A client that leaves rejects this write while the next read runs,
      // before anything awaits it. The loop meets the rejection at its next
      // await, so until then it must not count as unhandled.
      writing.catch(() => undefined);
      position += bytesRead;
    }
    await writing;
    response.end();
  } catch (error) {
    const details = {
      path: request.url.split('?')[0],
      sent: position - start,
      size: end - start + 1,
    };
    if (response.destroyed) {
      request.log.info(details, 'client closed the connection during a blob download');
    } else {
      request.log.error(
        { ...details, err: error },
        'blob download failed after its headers were sent; closing the connection',
      );
    }
    response.destroy();
  } finally {
    await writing.catch(() => undefined);
    for (const buffer of buffers) returnBuffer(buffer);
    await reader.close();
  }
}

/** Writes a chunk and resolves once the socket has taken all of it. */
function writeChunk(response: ServerResponse, chunk: Buffer): Promise<void> {
  return new Promise((resolve, reject) => {
    if (response.destroyed) {
      reject(new Error('the client closed the connection'));
      return;
    }
    const onClose = () => reject(new Error('the client closed the connection'));
    response.once('close', onClose);
    response.write(chunk, (error) => {
      response.removeListener('close', onClose);
      if (error) reject(error);
      else resolve();
    });
  });
}
