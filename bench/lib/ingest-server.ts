// A minimal node:http server that receives a request body, hashes it with
// SHA-256 and writes it to a file: the ceiling for a blob push on this
// machine. It responds to a GET with a fixed page of 100 tag names, as the
// floor for a walk in pages. bench/run.ts starts it as a child process with
// a directory as the only argument, reads the port from the first line of
// stdout, and stops it with SIGTERM.
import { createHash } from 'node:crypto';
import { createWriteStream, rmSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';

const directory = process.argv[2];
if (directory === undefined) {
  console.error('usage: node ingest-server.js DIRECTORY');
  process.exit(2);
}

/** A tags/list page of 100 names, with the Link header of a next page. */
const PAGE_BODY = JSON.stringify({
  name: 'bench/tags',
  tags: Array.from({ length: 100 }, (_, i) => `t${String(i).padStart(6, '0')}`),
});
const PAGE_LINK = '</v2/bench/tags/tags/list?n=100&last=t000099>; rel="next"';

let uploads = 0;
const server = http.createServer((req, res) => {
  if (req.method === 'GET') {
    res.writeHead(200, { 'content-type': 'application/json', link: PAGE_LINK }).end(PAGE_BODY);
    return;
  }
  const file = path.join(directory, `upload-${uploads++}`);
  const hash = createHash('sha256');
  const hashing = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      hash.update(chunk);
      callback(null, chunk);
    },
  });
  pipeline(req, hashing, createWriteStream(file))
    .then(() => {
      rmSync(file, { force: true });
      res.writeHead(201, { 'docker-content-digest': `sha256:${hash.digest('hex')}` }).end();
    })
    .catch((error: unknown) => {
      console.error(`ingest failed: ${String(error)}`);
      res.writeHead(500).end();
    });
});

server.listen(0, '127.0.0.1', () => {
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('server has no port');
  console.log(String(address.port));
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
