import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import {
  runMcrctl,
  spawnMcrctl,
  tempConfigPath,
  unusedPort,
  type McrctlOptions,
  type McrctlResult,
} from './helpers/mcrctl.js';
import { pushImage } from './helpers/oci.js';
import { ADMIN_PASSWORD, ADMIN_USER, startServer, type TestServer } from './helpers/server.js';

const DEV_USER = 'dev';
const DEV_PASSWORD = 'dev-password';

let server: TestServer;
/** Config file of an mcrctl logged in as the admin account. */
let adminConfig: string;

before(async () => {
  server = await startServer();
  await pushImage(server, 'team/app', 'v1');
  await pushImage(server, 'team/app', 'v2');
  await pushImage(server, 'team/lib', 'v1');
  await pushImage(server, 'alpine', 'latest');
  const created = await server.fetch('/v1/accounts', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({
      username: DEV_USER,
      password: DEV_PASSWORD,
      role: 'user',
      kind: 'human',
    }),
  });
  assert.equal(created.status, 201, await created.text());
  adminConfig = await loggedInConfig(ADMIN_USER, ADMIN_PASSWORD);
});

after(async () => {
  await server.cleanup();
});

/** Logs in with a fresh config file and returns its path. */
async function loggedInConfig(username: string, password: string): Promise<string> {
  const config = tempConfigPath();
  const result = await runMcrctl(['login', server.url, '-u', username, '--password-stdin'], {
    config,
    input: password,
  });
  assertExit(result, 0);
  return config;
}

/** Runs mcrctl as the logged-in admin. */
function admin(args: string[], options: McrctlOptions = {}): Promise<McrctlResult> {
  return runMcrctl(args, { config: adminConfig, ...options });
}

function assertExit(result: McrctlResult, expected: number): void {
  assert.equal(
    result.code,
    expected,
    `expected exit ${expected}, got ${result.code}\nstdout: ${result.stdout}\nstderr: ${result.stderr}`,
  );
}

function parseJson<T>(result: McrctlResult): T {
  assertExit(result, 0);
  return JSON.parse(result.stdout) as T;
}

/** Splits table output into rows of cells (columns are separated by 2 or more blanks). */
function tableRows(stdout: string): string[][] {
  return stdout
    .trimEnd()
    .split('\n')
    .map((line) => line.split(/ {2,}/));
}

function storedToken(config: string): string {
  return (JSON.parse(readFileSync(config, 'utf8')) as { token: string }).token;
}

/** Starts a loopback HTTP server that records every request and responds with `handler`. */
async function startMock(
  handler: (request: IncomingMessage, response: ServerResponse) => void,
): Promise<{ url: string; requests: IncomingMessage[]; close(): Promise<void> }> {
  const requests: IncomingMessage[] = [];
  const mock: Server = createServer((request, response) => {
    requests.push(request);
    handler(request, response);
  });
  await new Promise<void>((resolve) => mock.listen(0, '127.0.0.1', resolve));
  const { port } = mock.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () => new Promise<void>((resolve) => mock.close(() => resolve())),
  };
}

function sendJson(response: ServerResponse, status: number, body: unknown): void {
  response.writeHead(status, { 'Content-Type': 'application/json' });
  response.end(JSON.stringify(body));
}

describe('mcrctl usage', () => {
  it('help documents exit codes', async () => {
    const result = await runMcrctl(['--help']);
    assertExit(result, 0);
    for (const line of [
      '0  success',
      '1  other failure',
      '2  usage error',
      '3  not logged in',
      '4  not found',
      '5  conflict',
      '6  permission denied',
      '7  server unreachable',
    ]) {
      assert.ok(result.stdout.includes(line), `--help lacks "${line}"`);
    }
  });

  it('help works on every command', async () => {
    const commands = [
      ['login'],
      ['logout'],
      ['status'],
      ['repo'],
      ['repo', 'list'],
      ['repo', 'show'],
      ['repo', 'delete'],
      ['tag', 'list'],
      ['tag', 'delete'],
      ['account', 'list'],
      ['account', 'show'],
      ['account', 'create'],
      ['account', 'update'],
      ['account', 'disable'],
      ['account', 'enable'],
      ['account', 'delete'],
      ['token', 'create'],
      ['token', 'list'],
      ['token', 'revoke'],
      ['policy', 'list'],
      ['policy', 'show'],
      ['policy', 'create'],
      ['policy', 'update'],
      ['policy', 'delete'],
      ['policy', 'explain'],
      ['audit', 'list'],
      ['audit', 'verify'],
      ['gc', 'run'],
      ['gc', 'status'],
    ];
    for (const command of commands) {
      const result = await runMcrctl([...command, '--help']);
      assertExit(result, 0);
      assert.ok(
        result.stdout.startsWith(`Usage: mcrctl ${command.join(' ')}`),
        `help of ${command.join(' ')}: ${result.stdout}`,
      );
    }
  });

  it('unknown command exits 2', async () => {
    const result = await runMcrctl(['frobnicate']);
    assertExit(result, 2);
    assert.match(result.stderr, /unknown command 'frobnicate'/);
  });

  it('missing argument exits 2', async () => {
    const result = await admin(['repo', 'show']);
    assertExit(result, 2);
    assert.match(result.stderr, /missing required argument 'name'/);
  });

  it('invalid option values exit 2', async () => {
    const role = await admin(['account', 'create', 'someone', '--role', 'boss', '--no-password']);
    assertExit(role, 2);
    const expires = await admin(['token', 'create', DEV_USER, 'x', '--expires', 'yesterday']);
    assertExit(expires, 2);
    assert.match(expires.stderr, /invalid --expires "yesterday"/);
    const limit = await admin(['repo', 'list', '--limit', '0']);
    assertExit(limit, 2);
  });
});

describe('mcrctl login, logout and status', () => {
  it('login stores a 0600 config file', async () => {
    const xdg = mkdtempSync(path.join(tmpdir(), 'mcrctl-xdg-'));
    const env = { MCRCTL_CONFIG: undefined, XDG_CONFIG_HOME: xdg };
    const result = await runMcrctl(
      ['login', server.url, '--username', ADMIN_USER, '--password-stdin'],
      { env, input: `${ADMIN_PASSWORD}\n` },
    );
    assertExit(result, 0);
    assert.match(
      result.stdout,
      /Logged in to http:\/\/127\.0\.0\.1:\d+ as admin \(role admin, human\)/,
    );

    const file = path.join(xdg, 'mcr', 'mcrctl.json');
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.equal(statSync(path.dirname(file)).mode & 0o777, 0o700);
    const stored = JSON.parse(readFileSync(file, 'utf8')) as Record<string, string>;
    assert.equal(stored.url, server.url);
    assert.equal(stored.username, ADMIN_USER);
    assert.equal(typeof stored.token, 'string');
    assert.ok(!result.stdout.includes(stored.token as string), 'login printed the session token');
    assert.ok(!readFileSync(file, 'utf8').includes(ADMIN_PASSWORD), 'the password was stored');

    const status = await runMcrctl(['status'], { env });
    assertExit(status, 0);
  });

  it('login with a wrong password exits 3', async () => {
    const config = tempConfigPath();
    const result = await runMcrctl(['login', server.url, '-u', ADMIN_USER, '--password-stdin'], {
      config,
      input: 'not-the-password',
    });
    assertExit(result, 3);
    assert.match(result.stderr, /invalid username, password or access token/);
    assert.equal(existsSync(config), false);
  });

  it('login without URL or password exits 2', async () => {
    const noUrl = await runMcrctl(['login', '-u', ADMIN_USER, '--password-stdin'], {
      input: ADMIN_PASSWORD,
    });
    assertExit(noUrl, 2);
    assert.match(noUrl.stderr, /missing server URL/);

    const noPassword = await runMcrctl(['login', server.url, '-u', ADMIN_USER]);
    assertExit(noPassword, 2);
    assert.match(noPassword.stderr, /--password-stdin/);

    const badUrl = await runMcrctl(['login', 'registry.example:5000', '-u', ADMIN_USER]);
    assertExit(badUrl, 2);
  });

  it('status shows server, health and account', async () => {
    const table = await admin(['status']);
    assertExit(table, 0);
    assert.match(table.stdout, new RegExp(`^Server: +${server.url}$`, 'm'));
    assert.match(table.stdout, /^Health: +ok$/m);
    assert.match(table.stdout, /^ {2}database: +ok$/m);
    assert.match(table.stdout, /^ {2}storage: +ok$/m);
    assert.match(table.stdout, /^Account: +admin \(role admin, human\)$/m);

    const json = parseJson<{
      url: string;
      health: { status: string; checks: Record<string, { ok: boolean }> };
      account: { username: string; role: string };
    }>(await admin(['--json', 'status']));
    assert.equal(json.url, server.url);
    assert.equal(json.health.status, 'ok');
    assert.equal(json.health.checks.database?.ok, true);
    assert.equal(json.account.username, ADMIN_USER);
    assert.equal(json.account.role, 'admin');
  });

  it('status without login exits 3', async () => {
    const result = await runMcrctl(['--url', server.url, 'status']);
    assertExit(result, 3);
    assert.match(result.stdout, /^Health: +ok$/m);
    assert.match(result.stderr, /not logged in to http:\/\/127\.0\.0\.1:\d+/);
    assert.match(result.stderr, /run mcrctl login http:\/\/127\.0\.0\.1:\d+/);
  });

  it('logout revokes the session', async () => {
    const config = await loggedInConfig(ADMIN_USER, ADMIN_PASSWORD);
    const token = storedToken(config);
    const result = await runMcrctl(['logout'], { config });
    assertExit(result, 0);
    assert.match(result.stdout, /Logged out of/);
    assert.equal(existsSync(config), false);

    const reuse = await runMcrctl(['--url', server.url, '--token', token, 'repo', 'list']);
    assertExit(reuse, 3);

    const again = await runMcrctl(['logout'], { config });
    assertExit(again, 0);
    assert.match(again.stderr, /not logged in/);
  });

  it('environment overrides the stored login', async () => {
    const result = await runMcrctl(['--json', 'repo', 'list'], {
      env: { MCRCTL_URL: server.url, MCRCTL_TOKEN: storedToken(adminConfig) },
    });
    const body = parseJson<{ repositories: Array<{ name: string }> }>(result);
    assert.ok(body.repositories.some((repository) => repository.name === 'team/app'));
  });
});

describe('mcrctl failures before the server', () => {
  it('command without login exits 3', async () => {
    const result = await runMcrctl(['repo', 'list']);
    assertExit(result, 3);
    assert.match(result.stderr, /not logged in/);
    assert.match(result.stderr, /run mcrctl login URL/);
  });

  it('unreachable server exits 7', async () => {
    const port = await unusedPort();
    const result = await runMcrctl([
      '--url',
      `http://127.0.0.1:${port}`,
      '--token',
      'unused',
      'repo',
      'list',
    ]);
    assertExit(result, 7);
    assert.match(result.stderr, /cannot reach http:\/\/127\.0\.0\.1:\d+/);
    assert.match(result.stderr, /check the URL and that the server is running/);
  });

  it('stored token is not sent elsewhere', async () => {
    const mock = await startMock((_request, response) => sendJson(response, 200, {}));
    try {
      const result = await admin(['--url', mock.url, 'repo', 'list']);
      assertExit(result, 3);
      assert.equal(mock.requests.length, 0);
    } finally {
      await mock.close();
    }
  });
});

describe('mcrctl against unexpected answers', () => {
  it('missing endpoint exits 1, not 4', async () => {
    const mock = await startMock((request, response) =>
      sendJson(response, 404, { error: `no endpoint at ${request.method} ${request.url}` }),
    );
    try {
      const result = await runMcrctl(['--url', mock.url, '--token', 'x', 'repo', 'list']);
      assertExit(result, 1);
      assert.match(result.stderr, /has no GET \/v1\/repositories endpoint/);
    } finally {
      await mock.close();
    }
  });

  it('degraded health makes status exit 1', async () => {
    const mock = await startMock((_request, response) =>
      sendJson(response, 503, {
        status: 'degraded',
        checks: { database: { ok: true }, storage: { ok: false, error: 'disk full' } },
      }),
    );
    try {
      const result = await runMcrctl(['--url', mock.url, '--token', 'x', 'status']);
      assertExit(result, 1);
      assert.match(result.stdout, /^Health: +degraded$/m);
      assert.match(result.stdout, /^ {2}storage: +failed: disk full$/m);
      assert.match(result.stderr, /reports degraded health/);
    } finally {
      await mock.close();
    }
  });

  it('running GC makes gc run exit 5', async () => {
    const mock = await startMock((_request, response) =>
      sendJson(response, 409, { error: 'a garbage collection run is already running' }),
    );
    try {
      const result = await runMcrctl(['--url', mock.url, '--token', 'x', 'gc', 'run']);
      assertExit(result, 5);
      assert.match(result.stderr, /already running/);
      assert.match(result.stderr, /mcrctl gc status/);
    } finally {
      await mock.close();
    }
  });

  it('server error exits 1', async () => {
    const mock = await startMock((_request, response) =>
      sendJson(response, 500, { error: 'internal server error' }),
    );
    try {
      const result = await runMcrctl(['--url', mock.url, '--token', 'x', 'account', 'list']);
      assertExit(result, 1);
      assert.match(result.stderr, /internal server error \(HTTP 500\)/);
    } finally {
      await mock.close();
    }
  });
});

describe('mcrctl repo and tag', () => {
  it('repo list prints a table', async () => {
    const result = await admin(['repo', 'list']);
    assertExit(result, 0);
    const [head, ...rows] = tableRows(result.stdout);
    assert.deepEqual(head, ['NAME', 'TAGS', 'MANIFESTS', 'SIZE', 'CREATED']);
    const app = rows.find((row) => row[0] === 'team/app');
    assert.ok(app, result.stdout);
    assert.equal(app[1], '2');
    assert.equal(app[2], '2');
    assert.match(app[3] as string, /^\d+(\.\d+)? (B|KiB)$/);
  });

  it('repo list prints JSON', async () => {
    const body = parseJson<{
      repositories: Array<{ name: string; tag_count: number; size_bytes: number }>;
      next_cursor: string | null;
    }>(await admin(['--json', 'repo', 'list']));
    const app = body.repositories.find((repository) => repository.name === 'team/app');
    assert.equal(app?.tag_count, 2);
    assert.ok((app?.size_bytes ?? 0) > 0);
    assert.equal(body.next_cursor, null);
  });

  it('repo list pages with --limit and --all', async () => {
    type Page = { repositories: Array<{ name: string }>; next_cursor: string | null };
    const first = parseJson<Page>(await admin(['--json', 'repo', 'list', '--limit', '1']));
    assert.equal(first.repositories.length, 1);
    assert.equal(typeof first.next_cursor, 'string');

    const second = parseJson<Page>(
      await admin(['--json', 'repo', 'list', '--limit', '1', '--cursor', first.next_cursor ?? '']),
    );
    assert.equal(second.repositories.length, 1);
    assert.notEqual(second.repositories[0]?.name, first.repositories[0]?.name);

    const all = parseJson<Page>(await admin(['--json', 'repo', 'list', '--all', '--limit', '1']));
    const names = all.repositories.map((repository) => repository.name);
    for (const name of ['alpine', 'team/app', 'team/lib']) assert.ok(names.includes(name), name);
    assert.equal(new Set(names).size, names.length);
    assert.equal(all.next_cursor, null);

    const table = await admin(['repo', 'list', '--limit', '1']);
    assertExit(table, 0);
    assert.match(table.stderr, /more results: run again with --cursor \S+, or with --all/);
  });

  it('repo show prints tags and manifests', async () => {
    const table = await admin(['repo', 'show', 'team/app']);
    assertExit(table, 0);
    assert.match(table.stdout, /^Name: +team\/app$/m);
    assert.match(table.stdout, /^v1 +sha256:[0-9a-f]{12} +\d{4}-/m);
    assert.match(table.stdout, /^v2 +sha256:[0-9a-f]{12} +\d{4}-/m);

    const json = parseJson<{
      name: string;
      tags: Array<{ name: string; digest: string }>;
      manifests: Array<{ digest: string; media_type: string; tags: string[] }>;
    }>(await admin(['--json', 'repo', 'show', 'team/app']));
    assert.equal(json.name, 'team/app');
    assert.deepEqual(json.tags.map((tag) => tag.name).sort(), ['v1', 'v2']);
    assert.equal(json.manifests.length, 2);
    assert.equal(json.manifests[0]?.media_type, 'application/vnd.oci.image.manifest.v1+json');
  });

  it('repo show of a missing repository exits 4', async () => {
    const result = await admin(['repo', 'show', 'no/such']);
    assertExit(result, 4);
    assert.match(result.stderr, /cannot show repository no\/such: repository no\/such not found/);
  });

  it('tag list and delete', async () => {
    await pushImage(server, 'tags/demo', 'keep');
    await pushImage(server, 'tags/demo', 'drop');

    const table = await admin(['tag', 'list', 'tags/demo']);
    assertExit(table, 0);
    const [head, ...rows] = tableRows(table.stdout);
    assert.deepEqual(head, ['TAG', 'DIGEST', 'UPDATED']);
    assert.deepEqual(rows.map((row) => row[0]).sort(), ['drop', 'keep']);

    const deleted = await admin(['tag', 'delete', 'tags/demo', 'drop']);
    assertExit(deleted, 0);
    assert.match(deleted.stdout, /Deleted tag tags\/demo:drop\./);

    const json = parseJson<{ tags: Array<{ name: string }>; next_cursor: string | null }>(
      await admin(['--json', 'tag', 'list', 'tags/demo']),
    );
    assert.deepEqual(
      json.tags.map((tag) => tag.name),
      ['keep'],
    );

    assertExit(await admin(['tag', 'delete', 'tags/demo', 'drop']), 4);
    assertExit(await admin(['tag', 'list', 'no/such']), 4);
  });

  it('repo delete needs --yes without a terminal', async () => {
    await pushImage(server, 'doomed/app', 'v1');
    const unconfirmed = await admin(['repo', 'delete', 'doomed/app']);
    assertExit(unconfirmed, 2);
    assert.match(unconfirmed.stderr, /refusing to delete repository doomed\/app/);
    assert.match(unconfirmed.stderr, /pass --yes/);
    assert.equal((await server.fetch('/v1/repositories/doomed/app')).status, 200);

    const deleted = await admin(['repo', 'delete', 'doomed/app', '--yes']);
    assertExit(deleted, 0);
    assert.match(deleted.stdout, /Deleted repository doomed\/app\./);
    assert.equal((await server.fetch('/v1/repositories/doomed/app')).status, 404);

    assertExit(await admin(['repo', 'delete', 'doomed/app', '--yes']), 4);
  });
});

describe('mcrctl account and token', () => {
  it('account create, update and delete', async () => {
    const created = await admin(['account', 'create', 'carol', '--password-stdin'], {
      input: 'carol-password\n',
    });
    assertExit(created, 0);
    assert.match(created.stdout, /Created account carol \(role user, human\)\./);

    const duplicate = await admin([
      'account',
      'create',
      'carol',
      '--kind',
      'system',
      '--no-password',
    ]);
    assertExit(duplicate, 5);
    assert.match(duplicate.stderr, /account carol already exists/);

    const invalid = await admin([
      'account',
      'create',
      'Not Valid',
      '--kind',
      'system',
      '--no-password',
    ]);
    assertExit(invalid, 2);
    assert.match(invalid.stderr, /invalid username "Not Valid"/);

    const noPassword = await admin(['account', 'create', 'dave', '--no-password']);
    assertExit(noPassword, 2);
    assert.match(noPassword.stderr, /a human account needs a password/);

    const table = await admin(['account', 'list']);
    assertExit(table, 0);
    const [head, ...rows] = tableRows(table.stdout);
    assert.deepEqual(head, ['USERNAME', 'ROLE', 'KIND', 'PROVIDER', 'DISABLED', 'CREATED']);
    assert.deepEqual(rows.find((row) => row[0] === 'carol')?.slice(0, 5), [
      'carol',
      'user',
      'human',
      'local',
      'no',
    ]);

    type Account = { username: string; role: string; kind: string; disabled: boolean };
    const updated = parseJson<Account>(
      await admin(['--json', 'account', 'update', 'carol', '--role', 'guest', '--kind', 'system']),
    );
    assert.equal(updated.role, 'guest');
    assert.equal(updated.kind, 'system');

    const disabled = parseJson<Account>(await admin(['--json', 'account', 'disable', 'carol']));
    assert.equal(disabled.disabled, true);
    const login = await runMcrctl(['login', server.url, '-u', 'carol', '--password-stdin'], {
      input: 'carol-password',
    });
    assertExit(login, 3);
    const enabled = parseJson<Account>(await admin(['--json', 'account', 'enable', 'carol']));
    assert.equal(enabled.disabled, false);

    const list = parseJson<{ accounts: Account[]; next_cursor: string | null }>(
      await admin(['--json', 'account', 'list']),
    );
    assert.ok(list.accounts.some((account) => account.username === 'carol'));
    assert.equal(list.next_cursor, null);

    assertExit(await admin(['account', 'update', 'carol']), 2);
    assertExit(await admin(['account', 'update', 'nobody', '--role', 'user']), 4);

    const unconfirmed = await admin(['account', 'delete', 'carol']);
    assertExit(unconfirmed, 2);
    const deleted = await admin(['account', 'delete', 'carol', '--yes']);
    assertExit(deleted, 0);
    assert.match(deleted.stdout, /Deleted account carol\./);
    assertExit(await admin(['account', 'show', 'carol']), 4);
    assertExit(await admin(['account', 'delete', 'carol', '--yes']), 4);
  });

  it('token create, use and revoke', async () => {
    type Token = {
      id: number;
      name: string;
      scopes: string[] | null;
      expires_at: string | null;
      revoked_at: string | null;
      secret?: string;
    };
    const token = parseJson<Token>(
      await admin([
        '--json',
        'token',
        'create',
        DEV_USER,
        'ci',
        '--scope',
        'pull',
        '--scope',
        'catalog',
        '--expires',
        '1d',
      ]),
    );
    assert.match(token.secret ?? '', /^mcr_pat_/);
    assert.deepEqual([...(token.scopes ?? [])].sort(), ['catalog', 'pull']);
    const expiresIn = Date.parse(token.expires_at ?? '') - Date.now();
    assert.ok(expiresIn > 23 * 3_600_000, token.expires_at ?? '');
    assert.ok(expiresIn <= 24 * 3_600_000, token.expires_at ?? '');

    const shown = await admin(['token', 'create', DEV_USER, 'laptop']);
    assertExit(shown, 0);
    assert.match(shown.stdout, /^mcr_pat_\S+$/m);
    assert.match(shown.stderr, /cannot be shown again/);

    const table = await admin(['token', 'list', DEV_USER]);
    assertExit(table, 0);
    const [head, ...rows] = tableRows(table.stdout);
    assert.deepEqual(head, ['ID', 'NAME', 'SCOPES', 'EXPIRES', 'LAST USED', 'REVOKED', 'CREATED']);
    const row = rows.find((cells) => cells[1] === 'ci');
    assert.equal(row?.[0], String(token.id));
    assert.deepEqual(row?.[2]?.split(',').sort(), ['catalog', 'pull']);

    const asDev = ['--url', server.url, '--user', DEV_USER, '--token', token.secret ?? ''];
    const own = await runMcrctl([...asDev, '--json', 'account', 'show', DEV_USER]);
    assert.equal(parseJson<{ username: string }>(own).username, DEV_USER);

    const withoutUser = await runMcrctl([
      '--url',
      server.url,
      '--token',
      token.secret ?? '',
      'status',
    ]);
    assertExit(withoutUser, 2);
    assert.match(withoutUser.stderr, /pass --user NAME or set MCRCTL_USER/);

    const revoked = parseJson<Token>(
      await admin(['--json', 'token', 'revoke', DEV_USER, String(token.id)]),
    );
    assert.equal(revoked.id, token.id);
    assert.notEqual(revoked.revoked_at, null);
    // The server remembers verified credentials for a while, but revoking drops them at once.
    assertExit(await runMcrctl([...asDev, 'account', 'show', DEV_USER]), 3);

    assertExit(await admin(['token', 'revoke', DEV_USER, '99999']), 4);
    assertExit(await admin(['token', 'revoke', DEV_USER, 'abc']), 2);
    assertExit(await admin(['token', 'list', 'nobody']), 4);
  });

  it('non-admin commands exit 6', async () => {
    const config = await loggedInConfig(DEV_USER, DEV_PASSWORD);
    const repositories = await runMcrctl(['repo', 'list'], { config });
    assertExit(repositories, 6);
    assert.match(repositories.stderr, /dev is not an administrator/);
    assert.match(repositories.stderr, /needs an administrator account/);

    assertExit(await runMcrctl(['account', 'list'], { config }), 6);
    assertExit(await runMcrctl(['account', 'show', ADMIN_USER], { config }), 6);
    assertExit(await runMcrctl(['policy', 'list'], { config }), 6);
    assertExit(await runMcrctl(['audit', 'list'], { config }), 6);
    assertExit(await runMcrctl(['gc', 'status'], { config }), 6);

    const status = await runMcrctl(['status'], { config });
    assertExit(status, 0);
    assert.match(status.stdout, /^Account: +dev \(role user, human\)$/m);
  });
});

describe('mcrctl policy', () => {
  type Rule = {
    id: number;
    priority: number;
    effect: string;
    description: string;
    subjects: string[];
    actions: string[];
    repositories: string[];
    enabled: boolean;
    created_at: string;
    updated_at: string;
  };

  function ruleFile(name: string, text: string): string {
    const file = path.join(mkdtempSync(path.join(tmpdir(), 'mcrctl-rule-')), name);
    writeFileSync(file, text);
    return file;
  }

  it('policy create, show, update and delete', async () => {
    const toml = ruleFile(
      'deny.toml',
      [
        'priority = 10',
        'effect = "deny"',
        'description = "no pushes to vendor"',
        'subjects = ["role:user"]',
        'actions = ["push"]',
        'repositories = ["vendor/**"]',
        '',
      ].join('\n'),
    );
    const created = await admin(['policy', 'create', toml]);
    assertExit(created, 0);
    const id = Number(/Created policy rule (\d+)\./.exec(created.stdout)?.[1]);
    assert.ok(id > 0, created.stdout);

    const shown = parseJson<Rule>(await admin(['--json', 'policy', 'show', String(id)]));
    const { id: shownId, created_at: createdAt, updated_at: updatedAt, ...fields } = shown;
    assert.equal(shownId, id);
    assert.match(createdAt, /^\d{4}-\d{2}-\d{2}T/);
    assert.match(updatedAt, /^\d{4}-\d{2}-\d{2}T/);
    assert.deepEqual(fields, {
      priority: 10,
      effect: 'deny',
      description: 'no pushes to vendor',
      subjects: ['role:user'],
      actions: ['push'],
      repositories: ['vendor/**'],
      enabled: true,
    });

    const table = await admin(['policy', 'list']);
    assertExit(table, 0);
    const [head, ...rows] = tableRows(table.stdout);
    assert.deepEqual(head, [
      'ID',
      'PRIORITY',
      'EFFECT',
      'SUBJECTS',
      'ACTIONS',
      'REPOSITORIES',
      'ENABLED',
      'DESCRIPTION',
    ]);
    assert.deepEqual(
      rows.find((row) => row[0] === String(id)),
      [String(id), '10', 'deny', 'role:user', 'push', 'vendor/**', 'yes', 'no pushes to vendor'],
    );

    // policy show --json output, edited, is a valid rule file for policy update.
    const json = ruleFile('deny.json', JSON.stringify({ ...shown, enabled: false, priority: 20 }));
    const updated = parseJson<Rule>(await admin(['--json', 'policy', 'update', String(id), json]));
    assert.equal(updated.enabled, false);
    assert.equal(updated.priority, 20);

    const list = parseJson<{ rules: Rule[]; next_cursor: string | null }>(
      await admin(['--json', 'policy', 'list']),
    );
    assert.ok(list.rules.some((rule) => rule.id === id && rule.priority === 20));

    assertExit(await admin(['policy', 'delete', String(id)]), 0);
    assertExit(await admin(['policy', 'show', String(id)]), 4);
    assertExit(await admin(['policy', 'delete', String(id)]), 4);
    assertExit(await admin(['policy', 'update', String(id), json]), 4);
  });

  it('policy explain shows the deciding rule', async () => {
    const allowed = parseJson<{ allowed: boolean; reason: string; rule: Rule | null }>(
      await admin([
        '--json',
        'policy',
        'explain',
        '--account',
        DEV_USER,
        '--action',
        'push',
        '--repository',
        'dev/app',
      ]),
    );
    assert.equal(allowed.allowed, true);
    assert.deepEqual(allowed.rule?.repositories, ['{account}/**']);

    const denied = await admin([
      'policy',
      'explain',
      '--account',
      DEV_USER,
      '--action',
      'push',
      '--repository',
      'team/app',
    ]);
    assertExit(denied, 0);
    assert.match(denied.stdout, /^Allowed: +no$/m);
    assert.match(denied.stdout, /^Reason: +no rule allows dev to push on team\/app$/m);

    assertExit(await admin(['policy', 'explain', '--action', 'fly']), 2);
    assertExit(await admin(['policy', 'explain', '--repository', 'x']), 2);
    assertExit(await admin(['policy', 'explain', '--account', 'nobody', '--action', 'pull']), 4);
  });

  it('invalid rule files exit 2', async () => {
    const unknownField = ruleFile('extra.toml', 'priority = 1\ncolour = "red"\n');
    const extra = await admin(['policy', 'create', unknownField]);
    assertExit(extra, 2);
    assert.match(extra.stderr, /unknown field "colour"/);

    const yaml = await admin(['policy', 'create', ruleFile('rule.yaml', 'priority: 1\n')]);
    assertExit(yaml, 2);
    assert.match(yaml.stderr, /extension \.toml or \.json/);

    const broken = await admin(['policy', 'create', ruleFile('broken.json', '{"priority": ')]);
    assertExit(broken, 2);
    assert.match(broken.stderr, /is not valid JSON/);

    const rejected = await admin([
      'policy',
      'create',
      ruleFile(
        'maybe.toml',
        'priority = 1\neffect = "maybe"\nsubjects = ["*"]\nactions = ["pull"]\nrepositories = ["**"]\n',
      ),
    ]);
    assertExit(rejected, 2);
    assert.match(rejected.stderr, /cannot create a policy rule from .*maybe\.toml: /);

    assertExit(await admin(['policy', 'create', '/nonexistent/rule.toml']), 2);
  });
});

describe('mcrctl audit', () => {
  type Event = { id: number; type: string; repository: string | null; reference: string | null };

  it('audit list filters events', async () => {
    const json = parseJson<{ events: Event[]; next_cursor: string | null }>(
      await admin([
        '--json',
        'audit',
        'list',
        '--type',
        'manifest.push',
        '--repository',
        'team/app',
        '--since',
        '1h',
      ]),
    );
    assert.deepEqual(json.events.map((event) => event.reference).sort(), ['v1', 'v2']);
    for (const event of json.events) {
      assert.equal(event.type, 'manifest.push');
      assert.equal(event.repository, 'team/app');
    }

    const table = await admin(['audit', 'list', '--type', 'manifest.push', '--actor', ADMIN_USER]);
    assertExit(table, 0);
    const [head, ...rows] = tableRows(table.stdout);
    assert.deepEqual(head, [
      'TIME',
      'TYPE',
      'ACTOR',
      'CLIENT',
      'REPOSITORY',
      'REFERENCE',
      'OUTCOME',
    ]);
    assert.ok(rows.length >= 4, table.stdout);
    assert.ok(rows.every((row) => row[1] === 'manifest.push' && row[2] === ADMIN_USER));

    const page = parseJson<{ events: Event[]; next_cursor: string | null }>(
      await admin(['--json', 'audit', 'list', '--limit', '1']),
    );
    assert.equal(page.events.length, 1);
    assert.equal(typeof page.next_cursor, 'string');

    const future = parseJson<{ events: Event[] }>(
      await admin(['--json', 'audit', 'list', '--since', '2999-01-01']),
    );
    assert.deepEqual(future.events, []);
    assertExit(await admin(['audit', 'list', '--since', 'last tuesday']), 2);
  });

  it('audit verify reports an intact chain', async () => {
    const json = parseJson<{ ok: boolean; checked: number; broken: unknown }>(
      await admin(['--json', 'audit', 'verify']),
    );
    assert.equal(json.ok, true);
    assert.ok(json.checked > 0);
    assert.equal(json.broken, null);

    const table = await admin(['audit', 'verify']);
    assertExit(table, 0);
    assert.match(table.stdout, /^Audit log intact: \d+ events checked\.$/m);
  });

  it('audit list --follow prints new events', async () => {
    const child = spawnMcrctl(
      ['--json', 'audit', 'list', '--follow', '--interval', '1', '--type', 'manifest.push'],
      { config: adminConfig },
    );
    let stdout = '';
    let stderr = '';
    child.stdout?.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const waitFor = async (pattern: RegExp) => {
      const deadline = Date.now() + 15_000;
      while (!pattern.test(stdout)) {
        if (Date.now() > deadline || child.exitCode !== null) {
          throw new Error(`no ${pattern} in --follow output: ${stdout}${stderr}`);
        }
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
    };
    try {
      await waitFor(/"reference":"latest"/);
      await pushImage(server, 'follow/app', 'live');
      await waitFor(/"reference":"live"/);
    } finally {
      child.kill('SIGTERM');
    }
    const events = stdout
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as Event);
    assert.ok(events.every((event) => event.type === 'manifest.push'));
    assert.equal(events.at(-1)?.reference, 'live');
    assert.equal(events.filter((event) => event.reference === 'live').length, 1);
    const ids = events.map((event) => event.id);
    assert.deepEqual(
      ids,
      [...ids].sort((a, b) => a - b),
      'events are not printed oldest first',
    );
  });
});

describe('mcrctl gc', () => {
  type Run = { id: number; state: string; dry_run: boolean; trigger: string };

  it('gc run --wait prints a summary', async () => {
    const run = parseJson<Run>(
      await admin(['--json', 'gc', 'run', '--dry-run', '--wait'], { timeoutMs: 60_000 }),
    );
    assert.equal(run.state, 'succeeded');
    assert.equal(run.dry_run, true);

    const table = await admin(['gc', 'run', '--wait', '--delete-untagged'], { timeoutMs: 60_000 });
    assertExit(table, 0);
    assert.match(table.stdout, /^State: +succeeded$/m);
    assert.match(table.stdout, /^Dry run: +no$/m);
    assert.match(table.stdout, /^Blobs deleted: +\d+$/m);
    assert.match(table.stdout, /^Bytes freed: +\d+(\.\d+)? (B|KiB|MiB)$/m);
  });

  it('gc status lists and shows runs', async () => {
    const started = parseJson<Run>(await admin(['--json', 'gc', 'run', '--dry-run', '--wait']));
    const list = parseJson<{ runs: Run[]; next_cursor: string | null }>(
      await admin(['--json', 'gc', 'status']),
    );
    assert.ok(list.runs.some((run) => run.id === started.id));

    const single = parseJson<Run>(await admin(['--json', 'gc', 'status', String(started.id)]));
    assert.equal(single.id, started.id);
    assert.equal(single.state, 'succeeded');

    const table = await admin(['gc', 'status']);
    assertExit(table, 0);
    assert.deepEqual(tableRows(table.stdout)[0], [
      'ID',
      'STATE',
      'TRIGGER',
      'DRY RUN',
      'STARTED',
      'FINISHED',
      'BLOBS',
      'FREED',
      'MANIFESTS',
      'UPLOADS',
      'ERROR',
    ]);
    assertExit(await admin(['gc', 'status', '99999']), 4);
  });
});

describe('mcrctl fsck', () => {
  it('exits 0 on a sound registry and 8 with the damaged digest named', async () => {
    const clean = await admin(['fsck']);
    assertExit(clean, 0);
    assert.match(clean.stdout, /^Result: +clean$/m);

    const image = await pushImage(server, 'fsck/cli', 'v1');
    const hex = image.layerDigest.slice('sha256:'.length);
    const file = path.join(server.dataDir, 'blobs', 'sha256', hex.slice(0, 2), hex);
    const bytes = readFileSync(file);
    bytes[0] = (bytes[0] as number) ^ 0xff;
    writeFileSync(file, bytes);

    const damaged = await admin(['fsck']);
    assertExit(damaged, 8);
    assert.match(damaged.stdout, new RegExp(`corrupt +${image.layerDigest}`));
    const report = JSON.parse((await admin(['--json', 'fsck'])).stdout) as {
      clean: boolean;
      corrupt: Array<{ digest: string }>;
    };
    assert.equal(report.clean, false);
    assert.deepEqual(
      report.corrupt.map((entry) => entry.digest),
      [image.layerDigest],
    );

    // Leave the server sound for any test that runs after this one.
    bytes[0] = (bytes[0] as number) ^ 0xff;
    writeFileSync(file, bytes);
  });
});
