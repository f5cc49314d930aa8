// Compares mcr's 401 challenges with those of the reference registry
// (docker-registry, CNCF Distribution 2.8) configured for token
// authentication: same status, error code and challenge parameters.
import assert from 'node:assert/strict';
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { freePort, REFERENCE_BINARY } from './helpers/reference.js';
import { startServer, type TestServer } from './helpers/server.js';

const DIGEST = `sha256:${'a'.repeat(64)}`;

let server: TestServer;
let reference: { url: string; process: ChildProcess; dir: string };

/** Starts the reference registry with token auth whose realm points at mcr's token endpoint path. */
async function startTokenReference(): Promise<typeof reference> {
  const dir = mkdtempSync(path.join(tmpdir(), 'mcr-reference-token-'));
  const port = await freePort();
  // The reference needs a certificate bundle to verify tokens; this test only
  // reads its challenges, so a throwaway self-signed certificate does.
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      path.join(dir, 'key.pem'),
      '-out',
      path.join(dir, 'cert.pem'),
      '-days',
      '1',
      '-subj',
      '/CN=mcr-test-issuer',
    ],
    { stdio: 'ignore' },
  );
  const url = `http://127.0.0.1:${port}`;
  writeFileSync(
    path.join(dir, 'config.yml'),
    [
      'version: 0.1',
      'log:',
      '  level: warn',
      '  accesslog:',
      '    disabled: true',
      'storage:',
      '  filesystem:',
      `    rootdirectory: ${JSON.stringify(path.join(dir, 'storage'))}`,
      '  delete:',
      '    enabled: true',
      'auth:',
      '  token:',
      `    realm: ${url}/v2/token`,
      '    service: mcr',
      '    issuer: mcr',
      `    rootcertbundle: ${JSON.stringify(path.join(dir, 'cert.pem'))}`,
      'http:',
      `  addr: 127.0.0.1:${port}`,
      '',
    ].join('\n'),
  );
  const child = spawn(REFERENCE_BINARY, ['serve', path.join(dir, 'config.yml')], {
    env: { PATH: process.env.PATH ?? '', HOME: dir },
    stdio: 'ignore',
  });
  const deadline = Date.now() + 20_000;
  for (;;) {
    try {
      const response = await fetch(`${url}/v2/`);
      await response.arrayBuffer();
      if (response.status === 401) break;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline || child.exitCode !== null) {
      child.kill('SIGKILL');
      throw new Error('the reference registry with token auth did not start');
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return { url, process: child, dir };
}

before(async () => {
  server = await startServer();
  reference = await startTokenReference();
});

after(async () => {
  await server?.cleanup();
  if (reference) {
    const exited = new Promise((resolve) => reference.process.once('exit', resolve));
    reference.process.kill('SIGTERM');
    await exited;
    rmSync(reference.dir, { recursive: true, force: true });
  }
});

/** Splits a Bearer challenge into its parameters. */
function challengeParams(header: string | null): Record<string, string> {
  assert.ok(header, 'WWW-Authenticate is present');
  assert.match(header, /^Bearer /);
  const params: Record<string, string> = {};
  for (const match of header.slice('Bearer '.length).matchAll(/(\w+)="([^"]*)"/g)) {
    params[match[1] as string] = match[2] as string;
  }
  return params;
}

/** Sorts the actions of a scope such as repository:team/app:push,pull. */
function normalizeScope(scope: string | undefined): string | undefined {
  if (scope === undefined) return undefined;
  const last = scope.lastIndexOf(':');
  return `${scope.slice(0, last)}:${scope
    .slice(last + 1)
    .split(',')
    .sort()
    .join(',')}`;
}

const requests: Array<[string, string, string]> = [
  ['base', 'GET', '/v2/'],
  ['manifest pull', 'GET', '/v2/team/app/manifests/latest'],
  ['manifest head', 'HEAD', '/v2/team/app/manifests/latest'],
  ['blob pull', 'GET', `/v2/team/app/blobs/${DIGEST}`],
  ['upload start', 'POST', '/v2/team/app/blobs/uploads/'],
  ['manifest push', 'PUT', '/v2/team/app/manifests/latest'],
  ['manifest delete', 'DELETE', `/v2/team/app/manifests/${DIGEST}`],
  ['tags list', 'GET', '/v2/team/app/tags/list'],
  ['catalog', 'GET', '/v2/_catalog'],
];

describe('401 challenges match the reference registry', () => {
  for (const [name, method, target] of requests) {
    it(`${name}: ${method} ${target}`, async () => {
      const [ours, theirs] = await Promise.all([
        fetch(`${server.url}${target}`, { method }),
        fetch(`${reference.url}${target}`, { method }),
      ]);
      assert.equal(ours.status, 401);
      assert.equal(theirs.status, 401);

      const ourParams = challengeParams(ours.headers.get('www-authenticate'));
      const theirParams = challengeParams(theirs.headers.get('www-authenticate'));
      assert.equal(ourParams.realm, `${server.url}/v2/token`);
      assert.equal(theirParams.realm, `${reference.url}/v2/token`);
      assert.equal(ourParams.service, theirParams.service);
      // The reference lists a scope's actions in no fixed order (pull,push or push,pull).
      assert.deepEqual(normalizeScope(ourParams.scope), normalizeScope(theirParams.scope), 'scope');

      if (method !== 'HEAD') {
        const ourBody = (await ours.json()) as { errors: Array<{ code: string }> };
        const theirBody = (await theirs.json()) as { errors: Array<{ code: string }> };
        assert.deepEqual(
          ourBody.errors.map((error) => error.code),
          theirBody.errors.map((error) => error.code),
        );
      }
    });
  }
});
