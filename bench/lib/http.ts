// HTTP client helpers for the registry benchmark: one keep-alive agent per
// registry, requests with streamed bodies, and generated blob content.
import { createHash } from 'node:crypto';
import http from 'node:http';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

export const MiB = 1024 * 1024;

/** A registry under test, as the workloads address it. */
export interface Target {
  /** Short label for the table, such as `mcr` or `reference`. */
  name: string;
  /** Base URL, for example http://127.0.0.1:41234 */
  url: string;
  /** Headers sent with every request, such as Authorization. */
  headers: Record<string, string>;
  /** `user:password` for clients such as skopeo; none when the registry has no authentication. */
  creds?: string;
  /** Keep-alive agent shared by every request to this registry. */
  agent: http.Agent;
  /** Whether POST ?digest= stores a whole blob in one request. */
  singlePostUpload: boolean;
}

export interface Response {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
  /** Number of body bytes received, also when `discardBody` dropped them. */
  bytes: number;
}

export interface RequestOptions {
  method?: string;
  headers?: Record<string, string>;
  /** A whole body, or a stream that is piped into the request. */
  body?: Buffer | string | Readable;
  /** Count the response body without keeping it, for large blob downloads. */
  discardBody?: boolean;
}

/** Resolves `location` (absolute URL or path) against the target's base URL. */
export function resolveUrl(target: Target, location: string): URL {
  return new URL(location, target.url);
}

/** Sends one request and reads the whole response. */
export function request(
  target: Target,
  pathOrUrl: string | URL,
  options: RequestOptions = {},
): Promise<Response> {
  const url = typeof pathOrUrl === 'string' ? resolveUrl(target, pathOrUrl) : pathOrUrl;
  const headers: Record<string, string> = { ...target.headers, ...options.headers };
  const body = options.body;
  if (typeof body === 'string' || Buffer.isBuffer(body)) {
    headers['content-length'] = String(Buffer.byteLength(body));
  }
  return new Promise<Response>((resolve, reject) => {
    const req = http.request(
      url,
      { method: options.method ?? 'GET', headers, agent: target.agent },
      (res) => {
        const chunks: Buffer[] = [];
        let received = 0;
        res.on('data', (chunk: Buffer) => {
          received += chunk.length;
          if (!options.discardBody) chunks.push(chunk);
        });
        res.on('error', reject);
        res.on('end', () => {
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: Buffer.concat(chunks),
            bytes: received,
          });
        });
      },
    );
    req.on('error', reject);
    if (body instanceof Readable) {
      pipeline(body, req).catch(reject);
    } else {
      req.end(body);
    }
  });
}

/** Like `request`, but rejects unless the status is one of `expected`. */
export async function expectStatus(
  expected: number[],
  target: Target,
  pathOrUrl: string | URL,
  options: RequestOptions = {},
): Promise<Response> {
  const response = await request(target, pathOrUrl, options);
  if (!expected.includes(response.status)) {
    const method = options.method ?? 'GET';
    throw new Error(
      `${target.name}: ${method} ${String(pathOrUrl)} returned ${response.status}, expected ${expected.join(' or ')}: ${response.body.toString().slice(0, 300)}`,
    );
  }
  return response;
}

/** Returns the `Location` header of a response, or throws when it is missing. */
export function locationOf(target: Target, response: Response): URL {
  const location = response.headers.location;
  if (location === undefined) throw new Error(`${target.name}: response has no Location header`);
  return resolveUrl(target, location);
}

/** Adds query parameters to a URL and returns it. */
export function withQuery(url: URL, query: Record<string, string>): URL {
  const copy = new URL(url);
  for (const [key, value] of Object.entries(query)) copy.searchParams.set(key, value);
  return copy;
}

/**
 * Streams `size` bytes of content determined by `seed`: a fixed random-looking
 * 1 MiB block whose first 16 bytes are replaced by the seed and block number,
 * so every block and every seed yield different bytes and digests.
 */
export class GeneratedBlob {
  private static readonly block = createPatternBlock();

  constructor(
    readonly seed: number,
    readonly size: number,
  ) {}

  /** Streams bytes [start, end) of the blob. */
  stream(start = 0, end = this.size): Readable {
    const seed = this.seed;
    return Readable.from(
      (function* () {
        let offset = start;
        while (offset < end) {
          const blockIndex = Math.floor(offset / MiB);
          const blockStart = blockIndex * MiB;
          const block = GeneratedBlob.blockAt(seed, blockIndex);
          const from = offset - blockStart;
          const to = Math.min(MiB, end - blockStart);
          yield block.subarray(from, to);
          offset = blockStart + to;
        }
      })(),
      { objectMode: false },
    );
  }

  /** Computes the blob's `sha256:` digest by streaming it once. */
  async digest(): Promise<string> {
    const hash = createHash('sha256');
    for await (const chunk of this.stream()) hash.update(chunk as Buffer);
    return `sha256:${hash.digest('hex')}`;
  }

  private static blockAt(seed: number, index: number): Buffer {
    const block = Buffer.allocUnsafe(MiB);
    GeneratedBlob.block.copy(block);
    block.writeDoubleLE(seed, 0);
    block.writeDoubleLE(index, 8);
    return block;
  }
}

function createPatternBlock(): Buffer {
  // A fixed xorshift sequence, so runs are repeatable without storing data.
  const block = Buffer.allocUnsafe(MiB);
  let state = 0x9e3779b9;
  for (let i = 0; i < MiB; i += 4) {
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    block.writeInt32LE(state | 0, i);
  }
  return block;
}

/** Returns the `sha256:` digest of a buffer or string. */
export function sha256(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/**
 * Runs `task(0) … task(count - 1)` with at most `concurrency` running at a
 * time and rejects on the first failure.
 */
export async function runConcurrently(
  count: number,
  concurrency: number,
  task: (index: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async () => {
    while (next < count) {
      const index = next;
      next += 1;
      await task(index);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, count) }, worker));
}
