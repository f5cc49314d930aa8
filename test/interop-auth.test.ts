// Logs real clients (skopeo, podman) in to mcr with accounts and access
// tokens, and checks that pushes and pulls succeed or fail exactly as the
// accounts, tokens and policy decide.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  buildUmociImage,
  createClientSandbox,
  randomFiles,
  run,
  storageArgs,
  type ClientSandbox,
} from './helpers/images.js';
import { startServer, type TestServer } from './helpers/server.js';

let server: TestServer;
let workDir: string;
let sandbox: ClientSandbox;
let layout: string;
let imageDigest: string;

before(async () => {
  workDir = mkdtempSync(path.join(tmpdir(), 'mcr-interop-auth-'));
  sandbox = createClientSandbox(path.join(workDir, 'clients'));
  server = await startServer();
  layout = path.join(workDir, 'layout');
  const descriptor = await buildUmociImage({
    layout,
    tag: 'v1',
    layers: [randomFiles({ 'app/data': 64 * 1024 }), randomFiles({ 'app/more': 16 * 1024 })],
    workDir,
  });
  imageDigest = descriptor.digest;

  for (const [username, role] of [
    ['carol', 'user'],
    ['mallory', 'user'],
    ['ci-bot', 'user'],
  ] as const) {
    await api('POST', '/v1/accounts', {
      username,
      password: `${username}-password`,
      role,
      kind: username === 'ci-bot' ? 'system' : 'human',
    });
  }
});

after(async () => {
  await server?.cleanup();
  if (workDir) rmSync(workDir, { recursive: true, force: true });
});

async function api(
  method: string,
  target: string,
  body?: unknown,
): Promise<Record<string, unknown>> {
  const response = await server.fetch(target, {
    method,
    headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  assert.ok(
    response.status < 300,
    `${method} ${target}: ${response.status} ${await response.clone().text()}`,
  );
  return response.status === 204 ? {} : ((await response.json()) as Record<string, unknown>);
}

function skopeo(...args: string[]): Promise<string> {
  return run('skopeo', args, { env: sandbox.env });
}

function podman(...args: string[]): Promise<string> {
  return run('podman', [...storageArgs(path.join(workDir, 'podman')), ...args], {
    env: sandbox.env,
  });
}

/** Pushes the test image with explicit credentials; resolves with the pushed digest. */
async function pushWith(creds: string, repository: string): Promise<string> {
  const digestFile = path.join(workDir, `digest-${Math.random()}`);
  await skopeo(
    'copy',
    '--dest-tls-verify=false',
    '--dest-creds',
    creds,
    '--digestfile',
    digestFile,
    `oci:${layout}:v1`,
    `docker://${server.host}/${repository}:v1`,
  );
  const { readFileSync } = await import('node:fs');
  return readFileSync(digestFile, 'utf8').trim();
}

async function inspectWith(creds: string, reference: string): Promise<string> {
  const output = await skopeo(
    'inspect',
    '--tls-verify=false',
    '--creds',
    creds,
    `docker://${server.host}/${reference}`,
  );
  return (JSON.parse(output) as { Digest: string }).Digest;
}

/** Asserts that a client command fails and that its message matches. */
async function assertFails(command: Promise<string>, message: RegExp): Promise<void> {
  await assert.rejects(command, (error: Error) => {
    assert.match(error.message, message);
    return true;
  });
}

describe('skopeo with accounts', () => {
  it('pushes and pulls under the user namespace with a password', async () => {
    assert.equal(await pushWith('carol:carol-password', 'carol/app'), imageDigest);
    assert.equal(await inspectWith('carol:carol-password', 'carol/app:v1'), imageDigest);
    const pulled = path.join(workDir, 'pulled-carol');
    await skopeo(
      'copy',
      '--src-tls-verify=false',
      '--src-creds',
      'carol:carol-password',
      `docker://${server.host}/carol/app:v1`,
      `oci:${pulled}:v1`,
    );
  });

  it('fails cleanly for a wrong password', async () => {
    await assertFails(
      pushWith('carol:wrong-password', 'carol/app'),
      /unauthorized|authentication required|401/i,
    );
    await assertFails(inspectWith('carol:wrong-password', 'carol/app:v1'), /unauthorized|401/i);
  });

  it('fails cleanly for a push the policy denies', async () => {
    await assertFails(pushWith('mallory:mallory-password', 'carol/app'), /denied/i);
    // Pulling is allowed to every user by the default policy.
    assert.equal(await inspectWith('mallory:mallory-password', 'carol/app:v1'), imageDigest);
  });

  it('fails cleanly for a disabled account', async () => {
    await api('PATCH', '/v1/accounts/mallory', { disabled: true });
    await assertFails(inspectWith('mallory:mallory-password', 'carol/app:v1'), /unauthorized|401/i);
    await api('PATCH', '/v1/accounts/mallory', { disabled: false });
    assert.equal(await inspectWith('mallory:mallory-password', 'carol/app:v1'), imageDigest);
  });
});

describe('skopeo with access tokens', () => {
  it('pushes with a token and fails once it is revoked', async () => {
    const token = await api('POST', '/v1/accounts/ci-bot/tokens', { name: 'pipeline' });
    const creds = `ci-bot:${token.secret as string}`;
    assert.equal(await pushWith(creds, 'ci-bot/app'), imageDigest);
    assert.equal(await inspectWith(creds, 'ci-bot/app:v1'), imageDigest);

    await api('DELETE', `/v1/accounts/ci-bot/tokens/${token.id as number}`);
    await assertFails(inspectWith(creds, 'ci-bot/app:v1'), /unauthorized|401/i);
    await assertFails(pushWith(creds, 'ci-bot/app'), /unauthorized|authentication required|401/i);
  });

  it('fails once the token expires', async () => {
    const token = await api('POST', '/v1/accounts/ci-bot/tokens', {
      name: 'short-lived',
      expires_at: new Date(Date.now() + 2000).toISOString(),
    });
    const creds = `ci-bot:${token.secret as string}`;
    assert.equal(await inspectWith(creds, 'ci-bot/app:v1'), imageDigest);
    await new Promise((resolve) => setTimeout(resolve, 2200));
    await assertFails(inspectWith(creds, 'ci-bot/app:v1'), /unauthorized|401/i);
  });
});

describe('podman login', () => {
  it('logs in, pushes and pulls with a user account', async () => {
    await podman('login', '--tls-verify=false', '-u', 'carol', '-p', 'carol-password', server.host);
    await podman('pull', '--tls-verify=false', `${server.host}/carol/app:v1`);
    await podman('tag', `${server.host}/carol/app:v1`, `${server.host}/carol/copy:v1`);
    await podman('push', '--tls-verify=false', `${server.host}/carol/copy:v1`);
    const digest = await inspectWith('carol:carol-password', 'carol/copy:v1');
    assert.match(digest, /^sha256:[0-9a-f]{64}$/);

    await assertFails(
      podman(
        'push',
        '--tls-verify=false',
        `${server.host}/carol/copy:v1`,
        `docker://${server.host}/mallory/stolen:v1`,
      ),
      /denied/i,
    );
    await podman('logout', server.host);
  });

  it('logs in with an access token and rejects a wrong password', async () => {
    const token = await api('POST', '/v1/accounts/carol/tokens', { name: 'podman' });
    await podman(
      'login',
      '--tls-verify=false',
      '-u',
      'carol',
      '-p',
      token.secret as string,
      server.host,
    );
    await podman('pull', '--tls-verify=false', `${server.host}/carol/app:v1`);
    await podman('logout', server.host);

    await assertFails(
      podman('login', '--tls-verify=false', '-u', 'carol', '-p', 'not-the-password', server.host),
      /unauthorized|invalid username/i,
    );
  });
});
