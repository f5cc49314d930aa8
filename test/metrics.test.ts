import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { pushBlob, pushImage } from './helpers/oci.js';
import { basicAuth, startServer, type TestServer } from './helpers/server.js';

/** Parses Prometheus text into "name{labels}" -> value. */
function parse(text: string): Map<string, number> {
  const values = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    values.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return values;
}

async function scrape(server: TestServer): Promise<Map<string, number>> {
  const response = await server.fetch('/metrics');
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') ?? '', /^text\/plain/);
  return parse(await response.text());
}

function value(metrics: Map<string, number>, key: string): number {
  return metrics.get(key) ?? 0;
}

describe('metrics behind authentication', () => {
  let server: TestServer;
  before(async () => {
    server = await startServer();
  });
  after(async () => {
    await server.cleanup();
  });

  it('move by the right amounts after known pushes and pulls', async () => {
    const before = await scrape(server);

    const layer = Buffer.alloc(10_000, 7);
    const config = Buffer.from('{"os":"linux"}');
    await pushBlob(server, 'metrics/app', layer);
    await pushBlob(server, 'metrics/app', config);
    const image = await pushImage(server, 'metrics/app', 'v1', { layer: 'x'.repeat(500) });
    const imageBytes =
      500 +
      Buffer.byteLength(
        JSON.stringify({
          architecture: 'amd64',
          os: 'linux',
          rootfs: { type: 'layers', diff_ids: [] },
        }),
      );

    for (let i = 0; i < 3; i++) {
      const response = await server.fetch(`/v2/metrics/app/blobs/${image.layerDigest}`);
      assert.equal((await response.arrayBuffer()).byteLength, 500);
    }
    await server.fetch('/v2/metrics/app/blobs/uploads/', { method: 'POST' });
    await server.fetch('/v2/metrics/app/blobs/uploads/', { method: 'POST' });
    const missing = await server.fetch('/v2/metrics/app/manifests/nope');
    assert.equal(missing.status, 404);

    const after = await scrape(server);
    const delta = (key: string) => value(after, key) - value(before, key);

    assert.equal(delta('mcr_blob_bytes_received_total'), layer.length + config.length + imageBytes);
    assert.equal(delta('mcr_blob_bytes_sent_total'), 1500);
    assert.equal(delta('mcr_manifests_pushed_total'), 1);
    assert.equal(value(after, 'mcr_upload_sessions_open'), 2);
    assert.equal(delta('mcr_http_requests_total{route="/v2/blob",method="GET",status="200"}'), 3);
    assert.equal(
      delta('mcr_http_requests_total{route="/v2/manifest",method="GET",status="404"}'),
      1,
    );
    assert.equal(
      delta('mcr_http_requests_total{route="/v2/upload",method="POST",status="201"}'),
      4,
    );
    assert.equal(
      delta('mcr_http_request_duration_seconds_count{route="/v2/blob",method="GET",status="200"}'),
      3,
    );
    assert.equal(value(after, 'mcr_storage_bytes'), layer.length + config.length + imageBytes);
    assert.equal(value(after, 'mcr_gc_blobs_deleted_total'), 0);
  });

  it('require admin credentials', async () => {
    assert.equal((await fetch(`${server.url}/metrics`)).status, 401);
    await server.fetch('/v1/accounts', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        username: 'viewer',
        password: 'viewer-password',
        role: 'user',
        kind: 'human',
      }),
    });
    const user = await fetch(`${server.url}/metrics`, {
      headers: { authorization: basicAuth('viewer', 'viewer-password') },
    });
    assert.equal(user.status, 403);
  });
});

describe('metrics on a separate open address', () => {
  it('serve /metrics there without credentials and not on the registry port', async () => {
    const server = await startServer({
      env: { MCR_METRICS_MODE: 'open', MCR_METRICS_LISTEN_ADDR: '127.0.0.1:0' },
    });
    try {
      const line = server.logs.find(
        (entry) => entry.msg === 'metrics listening without authentication',
      );
      assert.ok(line, 'the metrics address is logged');
      const { port } = line.address as { port: number };
      const response = await fetch(`http://127.0.0.1:${port}/metrics`);
      assert.equal(response.status, 200);
      assert.ok(parse(await response.text()).has('mcr_storage_bytes'));
      assert.equal((await server.fetch('/metrics')).status, 404);
    } finally {
      await server.cleanup();
    }
  });

  it('turn off entirely', async () => {
    const server = await startServer({ env: { MCR_METRICS_MODE: 'off' } });
    try {
      assert.equal((await server.fetch('/metrics')).status, 404);
    } finally {
      await server.cleanup();
    }
  });
});
