import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { Validator } from '@seriousme/openapi-schema-validator';

import { queryTestDatabase } from './helpers/database.js';
import { pushImage } from './helpers/oci.js';
import { basicAuth, startServer, type TestServer } from './helpers/server.js';

let server: TestServer;
before(async () => {
  server = await startServer();
  await json('POST', '/v1/accounts', {
    username: 'user1',
    password: 'user1-password',
    role: 'user',
    kind: 'human',
  });
  await pushImage(server, 'team/one', 'v1');
  await pushImage(server, 'team/one', 'v2');
  await pushImage(server, 'team/two', 'v1');
  await pushImage(server, 'solo', 'latest');
});
after(async () => {
  await server.cleanup();
});

/** Sends a JSON request as admin (or with the given Authorization) and returns status and body. */
async function json(
  method: string,
  target: string,
  body?: unknown,
  authorization?: string | null,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const headers: Record<string, string> = {};
  if (body !== undefined) headers['content-type'] = 'application/json';
  let payload: string | undefined;
  if (typeof body === 'string') payload = body;
  else if (body !== undefined) payload = JSON.stringify(body);
  const init: RequestInit = { method, headers, body: payload };
  const response =
    authorization === undefined
      ? await server.fetch(target, init)
      : await fetch(`${server.url}${target}`, {
          ...init,
          headers: authorization === null ? headers : { ...headers, authorization },
        });
  const text = await response.text();
  return {
    status: response.status,
    body: text ? (JSON.parse(text) as Record<string, unknown>) : {},
  };
}

/** Creates a human account as admin. */
async function createAccount(username: string, password: string, role: string): Promise<void> {
  const created = await json('POST', '/v1/accounts', { username, password, role, kind: 'human' });
  assert.equal(created.status, 201);
}

const asUser = basicAuth('user1', 'user1-password');

describe('sessions', () => {
  it('log in, authorize requests and log out', async () => {
    const login = await json(
      'POST',
      '/v1/auth/login',
      { username: 'admin', password: 'test-admin-password' },
      null,
    );
    assert.equal(login.status, 200);
    const token = login.body.token as string;
    assert.match(token, /^mcr_sess_/);
    assert.deepEqual(login.body.account, { username: 'admin', role: 'admin', kind: 'human' });
    assert.ok(Date.parse(login.body.expires_at as string) > Date.now());

    const bearer = `Bearer ${token}`;
    assert.equal((await json('GET', '/v1/accounts', undefined, bearer)).status, 200);
    assert.equal((await json('POST', '/v1/auth/logout', undefined, bearer)).status, 204);
    assert.equal((await json('GET', '/v1/accounts', undefined, bearer)).status, 401);
    assert.equal((await json('POST', '/v1/auth/logout', undefined, bearer)).status, 401);
  });

  it('end sessions on a password change', async () => {
    await createAccount('xsession', 'xsession-password', 'admin');
    const login = async (username: string, password: string) => {
      const response = await json('POST', '/v1/auth/login', { username, password }, null);
      assert.equal(response.status, 200);
      return `Bearer ${response.body.token as string}`;
    };
    const first = await login('xsession', 'xsession-password');
    const second = await login('xsession', 'xsession-password');
    const other = await login('admin', 'test-admin-password');
    assert.equal((await json('GET', '/v1/accounts', undefined, first)).status, 200);

    // A change of kind keeps the sessions, and a new password ends both.
    const kind = await json('PATCH', '/v1/accounts/xsession', { kind: 'system' }, other);
    assert.equal(kind.status, 200);
    assert.equal((await json('GET', '/v1/accounts', undefined, first)).status, 200);
    const change = await json(
      'PATCH',
      '/v1/accounts/xsession',
      { password: 'xsession-new-password' },
      other,
    );
    assert.equal(change.status, 200);
    for (const bearer of [first, second]) {
      const response = await json('GET', '/v1/accounts', undefined, bearer);
      assert.equal(response.status, 401);
      assert.equal(response.body.error, 'session is invalid or expired: log in again');
    }
    assert.equal((await json('GET', '/v1/accounts', undefined, other)).status, 200);
    const left = await queryTestDatabase(
      server.dataDir,
      'select count(*) as n from sessions s join accounts a on a.id = s.account_id where a.username = ?',
      ['xsession'],
    );
    assert.equal(Number(left.rows[0]?.n), 0);

    // The new password opens a working session.
    const fresh = await login('xsession', 'xsession-new-password');
    assert.equal((await json('GET', '/v1/accounts', undefined, fresh)).status, 200);
    assert.equal((await json('DELETE', '/v1/accounts/xsession')).status, 204);
  });

  it('open none with an access token', async () => {
    await createAccount('xtoken', 'xtoken-password', 'user');
    const issued = await json('POST', '/v1/accounts/xtoken/tokens', { name: 'login' });
    assert.equal(issued.status, 201);
    const login = await json(
      'POST',
      '/v1/auth/login',
      { username: 'xtoken', password: issued.body.secret },
      null,
    );
    assert.equal(login.status, 401);
    assert.equal(
      login.body.error,
      'log in with a password; send an access token itself as Basic credentials or as a Bearer token',
    );
    assert.equal((await json('DELETE', '/v1/accounts/xtoken')).status, 204);
  });

  it('open none that outlives a concurrent password change', async () => {
    await createAccount('yrace', 'yrace-password-0', 'user');
    let opened = 0;
    for (let round = 0; round < 8; round++) {
      const old = `yrace-password-${round}`;
      const logins = Array.from({ length: 4 }, () =>
        json('POST', '/v1/auth/login', { username: 'yrace', password: old }, null),
      );
      const change = json('PATCH', '/v1/accounts/yrace', {
        password: `yrace-password-${round + 1}`,
      });
      const [changed, ...results] = await Promise.all([change, ...logins]);
      assert.equal(changed.status, 200);
      // Whatever the order, no session opened with the old password may work
      // once both are done: the change ended it, or it began after the change.
      for (const result of results) {
        if (result.status !== 200) continue;
        opened += 1;
        const bearer = `Bearer ${result.body.token as string}`;
        const after = await json('GET', '/v1/accounts/yrace', undefined, bearer);
        assert.equal(after.status, 401, `round ${round}: a session outlived the change`);
      }
    }
    console.log(`${opened} of 32 logins opened a session before the change ended it`);
    assert.equal((await json('DELETE', '/v1/accounts/yrace')).status, 204);
  });

  it('reject wrong credentials and bad bodies', async () => {
    assert.equal(
      (await json('POST', '/v1/auth/login', { username: 'admin', password: 'nope' }, null)).status,
      401,
    );
    assert.equal((await json('POST', '/v1/auth/login', { username: 'admin' }, null)).status, 400);
    assert.equal((await json('POST', '/v1/auth/login', '{not json', null)).status, 400);
  });

  it('reject a body that is not sent as JSON', async () => {
    for (const type of ['text/plain', 'application/x-www-form-urlencoded']) {
      const response = await server.fetch('/v1/gc', {
        method: 'POST',
        headers: { 'content-type': type },
        body: '{"dry_run":true}',
      });
      assert.equal(response.status, 415, type);
      assert.deepEqual(await response.json(), { error: 'send the body as application/json' });
    }
    // Neither request started a garbage collection run.
    const runs = await json('GET', '/v1/gc');
    assert.equal(runs.status, 200);
    assert.deepEqual(runs.body.runs, []);
  });
});

describe('health', () => {
  it('reports database and storage without authentication', async () => {
    const health = await json('GET', '/v1/health', undefined, null);
    assert.equal(health.status, 200);
    assert.equal(health.body.status, 'ok');
    assert.deepEqual(health.body.checks, { database: { ok: true }, storage: { ok: true } });
  });

  it('reports a database whose tables cannot be read', async () => {
    const damaged = await startServer();
    try {
      await queryTestDatabase(damaged.dataDir, 'drop table schema_migrations');

      const response = await fetch(`${damaged.url}/v1/health`);
      assert.equal(response.status, 503);
      const body = (await response.json()) as {
        status: string;
        checks: Record<string, { ok: boolean; error?: string }>;
      };
      assert.equal(body.status, 'degraded');
      assert.equal(body.checks.database?.ok, false);
      assert.match(body.checks.database?.error ?? '', /schema_migrations/);
      assert.deepEqual(body.checks.storage, { ok: true });
    } finally {
      await damaged.cleanup();
    }
  });
});

describe('repositories', () => {
  it('lists with counts and sizes, page by page', async () => {
    const first = await json('GET', '/v1/repositories?limit=2');
    assert.equal(first.status, 200);
    const rows = first.body.repositories as Array<{
      name: string;
      tag_count: number;
      manifest_count: number;
      size_bytes: number;
    }>;
    assert.deepEqual(
      rows.map((row) => row.name),
      ['solo', 'team/one'],
    );
    assert.equal(rows[1]?.tag_count, 2);
    assert.equal(rows[1]?.manifest_count, 2);
    assert.ok((rows[1]?.size_bytes ?? 0) > 0);
    assert.ok(first.body.next_cursor);

    const second = await json(
      'GET',
      `/v1/repositories?limit=2&cursor=${first.body.next_cursor as string}`,
    );
    assert.deepEqual(
      (second.body.repositories as Array<{ name: string }>).map((row) => row.name),
      ['team/two'],
    );
    assert.equal(second.body.next_cursor, null);
  });

  it('shows a repository with tags and manifests, and its tags alone', async () => {
    const detail = await json('GET', '/v1/repositories/team/one');
    assert.equal(detail.status, 200);
    assert.equal(detail.body.name, 'team/one');
    const tags = detail.body.tags as Array<{ name: string; digest: string }>;
    assert.deepEqual(
      tags.map((tag) => tag.name),
      ['v1', 'v2'],
    );
    const manifests = detail.body.manifests as Array<{ digest: string; tags: string[] }>;
    assert.equal(manifests.length, 2);
    assert.deepEqual(
      manifests
        .map((manifest) => manifest.tags)
        .flat()
        .sort(),
      ['v1', 'v2'],
    );

    const tagPage = await json('GET', '/v1/repositories/team/one/-/tags?limit=1');
    assert.deepEqual(
      (tagPage.body.tags as Array<{ name: string }>).map((tag) => tag.name),
      ['v1'],
    );
    const next = await json(
      'GET',
      `/v1/repositories/team/one/-/tags?limit=1&cursor=${tagPage.body.next_cursor as string}`,
    );
    assert.deepEqual(
      (next.body.tags as Array<{ name: string }>).map((tag) => tag.name),
      ['v2'],
    );
  });

  it('deletes a tag and then the whole repository', async () => {
    assert.equal((await json('DELETE', '/v1/repositories/team/one/-/tags/v1')).status, 204);
    assert.equal((await json('DELETE', '/v1/repositories/team/one/-/tags/v1')).status, 404);
    assert.equal((await server.fetch('/v2/team/one/manifests/v1')).status, 404);

    assert.equal((await json('DELETE', '/v1/repositories/team/one')).status, 204);
    assert.equal((await json('GET', '/v1/repositories/team/one')).status, 404);
    assert.equal((await json('DELETE', '/v1/repositories/team/one')).status, 404);
    assert.equal((await server.fetch('/v2/team/one/tags/list')).status, 404);
  });

  it('address a repository whose name ends in tags', async () => {
    await pushImage(server, 'team/tags', 'v1');
    const detail = await json('GET', '/v1/repositories/team/tags');
    assert.equal(detail.body.name, 'team/tags');
    const tags = await json('GET', '/v1/repositories/team/tags/-/tags');
    assert.deepEqual(
      (tags.body.tags as Array<{ name: string }>).map((tag) => tag.name),
      ['v1'],
    );
    assert.equal((await json('DELETE', '/v1/repositories/team/tags')).status, 204);
  });

  it('rejects invalid names, bad cursors, strangers and non-admins', async () => {
    assert.equal((await json('GET', '/v1/repositories/Team/One')).status, 400);
    assert.equal((await json('GET', '/v1/repositories?cursor=%%%')).status, 400);
    assert.equal((await json('GET', '/v1/repositories?limit=0')).status, 400);
    assert.equal((await json('GET', '/v1/repositories?bogus=1')).status, 400);
    assert.equal((await json('GET', '/v1/repositories', undefined, null)).status, 401);
    assert.equal((await json('GET', '/v1/repositories', undefined, asUser)).status, 403);
    assert.equal((await json('DELETE', '/v1/repositories/solo', undefined, asUser)).status, 403);
  });
});

describe('accounts', () => {
  it('create, show, update, disable and delete', async () => {
    const created = await json('POST', '/v1/accounts', {
      username: 'robot',
      role: 'user',
      kind: 'system',
    });
    assert.equal(created.status, 201);
    assert.equal(created.body.kind, 'system');
    assert.equal(created.body.disabled, false);
    assert.equal(created.body.password_hash, undefined);

    assert.equal((await json('GET', '/v1/accounts/robot')).body.role, 'user');
    const updated = await json('PATCH', '/v1/accounts/robot', { role: 'guest', disabled: true });
    assert.equal(updated.status, 200);
    assert.equal(updated.body.role, 'guest');
    assert.equal(updated.body.disabled, true);
    assert.equal((await json('DELETE', '/v1/accounts/robot')).status, 204);
    assert.equal((await json('GET', '/v1/accounts/robot')).status, 404);
  });

  it('page through the list', async () => {
    const first = await json('GET', '/v1/accounts?limit=1');
    assert.deepEqual(
      (first.body.accounts as Array<{ username: string }>).map((a) => a.username),
      ['admin'],
    );
    const second = await json(
      'GET',
      `/v1/accounts?limit=1&cursor=${first.body.next_cursor as string}`,
    );
    assert.deepEqual(
      (second.body.accounts as Array<{ username: string }>).map((a) => a.username),
      ['user1'],
    );
  });

  const badBodies: Array<[string, unknown]> = [
    ['a wrong type', { username: 'x1', password: 'long-password', role: 'user', kind: 7 }],
    ['a missing field', { username: 'x2', password: 'long-password', kind: 'human' }],
    [
      'an unknown field',
      { username: 'x3', password: 'long-password', role: 'user', kind: 'human', admin: true },
    ],
    ['an unknown role', { username: 'x4', password: 'long-password', role: 'root', kind: 'human' }],
    [
      'an invalid username',
      { username: 'Bad Name', password: 'long-password', role: 'user', kind: 'human' },
    ],
    ['a short password', { username: 'x5', password: 'short', role: 'user', kind: 'human' }],
    ['a human without a password', { username: 'x6', role: 'user', kind: 'human' }],
  ];
  for (const [name, body] of badBodies) {
    it(`reject ${name}`, async () => {
      const response = await json('POST', '/v1/accounts', body);
      assert.equal(response.status, 400);
      assert.equal(typeof response.body.error, 'string');
    });
  }

  it('answer 409, 404, 401 and 403 where they should', async () => {
    assert.equal(
      (
        await json('POST', '/v1/accounts', {
          username: 'user1',
          password: 'user1-password',
          role: 'user',
          kind: 'human',
        })
      ).status,
      409,
    );
    assert.equal((await json('PATCH', '/v1/accounts/ghost', { role: 'user' })).status, 404);
    assert.equal((await json('PATCH', '/v1/accounts/user1', {})).status, 400);
    assert.equal((await json('DELETE', '/v1/accounts/admin')).status, 409);
    assert.equal((await json('GET', '/v1/accounts', undefined, null)).status, 401);
    assert.equal((await json('GET', '/v1/accounts', undefined, asUser)).status, 403);
    assert.equal((await json('GET', '/v1/accounts/user1', undefined, asUser)).status, 200);
    assert.equal((await json('GET', '/v1/accounts/admin', undefined, asUser)).status, 403);
  });
});

describe('access tokens', () => {
  it('issue, list and revoke, with 404 and 400 cases', async () => {
    const issued = await json(
      'POST',
      '/v1/accounts/user1/tokens',
      { name: 'ci', scopes: ['pull'] },
      asUser,
    );
    assert.equal(issued.status, 201);
    assert.match(issued.body.secret as string, /^mcr_pat_/);
    assert.equal(
      (await json('POST', '/v1/accounts/user1/tokens', { name: 'ci' }, asUser)).status,
      409,
    );
    assert.equal(
      (await json('POST', '/v1/accounts/user1/tokens', { name: 'x', scopes: ['fly'] }, asUser))
        .status,
      400,
    );
    assert.equal(
      (await json('POST', '/v1/accounts/user1/tokens', { name: 'x', expires_at: 'soon' }, asUser))
        .status,
      400,
    );
    assert.equal((await json('POST', '/v1/accounts/ghost/tokens', { name: 'x' })).status, 404);

    const listed = await json('GET', '/v1/accounts/user1/tokens', undefined, asUser);
    const tokens = listed.body.tokens as Array<{ id: number; name: string; secret?: string }>;
    assert.deepEqual(
      tokens.map((token) => token.name),
      ['ci'],
    );
    assert.equal(tokens[0]?.secret, undefined);

    const id = issued.body.id as number;
    assert.equal(
      (await json('DELETE', `/v1/accounts/user1/tokens/${id}`, undefined, asUser)).status,
      200,
    );
    assert.equal(
      (await json('DELETE', `/v1/accounts/user1/tokens/${id}`, undefined, asUser)).status,
      404,
    );
    assert.equal(
      (await json('DELETE', '/v1/accounts/user1/tokens/abc', undefined, asUser)).status,
      400,
    );
  });
});

describe('policies', () => {
  const rule = {
    priority: 10,
    effect: 'allow',
    description: 'user1 pushes to team',
    subjects: ['account:user1'],
    actions: ['push'],
    repositories: ['team/**'],
  };

  it('create, show, replace, explain and delete', async () => {
    const created = await json('POST', '/v1/policies', rule);
    assert.equal(created.status, 201);
    const id = created.body.id as number;
    assert.equal(
      (await json('GET', `/v1/policies/${id}`)).body.description,
      'user1 pushes to team',
    );

    const explained = await json('POST', '/v1/policies/explain', {
      account: 'user1',
      action: 'push',
      repository: 'team/x',
    });
    assert.equal(explained.body.allowed, true);
    assert.equal((explained.body.rule as { id: number }).id, id);
    assert.match(explained.body.reason as string, new RegExp(`rule ${id}`));

    const replaced = await json('PUT', `/v1/policies/${id}`, { ...rule, effect: 'deny' });
    assert.equal(replaced.body.effect, 'deny');
    const denied = await json('POST', '/v1/policies/explain', {
      account: 'user1',
      action: 'push',
      repository: 'team/x',
    });
    assert.equal(denied.body.allowed, false);

    const listed = await json('GET', '/v1/policies?limit=1');
    assert.equal((listed.body.rules as unknown[]).length, 1);
    assert.ok(listed.body.next_cursor);

    assert.equal((await json('DELETE', `/v1/policies/${id}`)).status, 204);
    assert.equal((await json('GET', `/v1/policies/${id}`)).status, 404);
    assert.equal((await json('PUT', `/v1/policies/${id}`, rule)).status, 404);
    assert.equal((await json('DELETE', `/v1/policies/${id}`)).status, 404);
  });

  it('validate rules and explain requests', async () => {
    assert.equal(
      (await json('POST', '/v1/policies', { ...rule, subjects: ['team:x'] })).status,
      400,
    );
    assert.equal((await json('POST', '/v1/policies', { ...rule, priority: 'high' })).status, 400);
    assert.equal((await json('POST', '/v1/policies', { ...rule, extra: 1 })).status, 400);
    assert.equal(
      (await json('POST', '/v1/policies', { ...rule, repositories: ['Team/*'] })).status,
      400,
    );
    assert.equal(
      (await json('POST', '/v1/policies/explain', { account: 'ghost', action: 'pull' })).status,
      404,
    );
    assert.equal((await json('POST', '/v1/policies/explain', { action: 'fly' })).status, 400);
    assert.equal((await json('POST', '/v1/policies', rule, asUser)).status, 403);
    assert.equal((await json('GET', '/v1/policies', undefined, null)).status, 401);
  });
});

describe('OpenAPI document', () => {
  it('validates as OpenAPI 3 and lists every route', async () => {
    const response = await json('GET', '/v1/openapi.json', undefined, null);
    assert.equal(response.status, 200);
    const validator = new Validator();
    const result = await validator.validate(response.body);
    assert.equal(result.valid, true, JSON.stringify(result.errors));

    const paths = Object.keys(response.body.paths as Record<string, unknown>);
    for (const expected of [
      '/v1/auth/login',
      '/v1/auth/logout',
      '/v1/health',
      '/v1/repositories',
      '/v1/repositories/{*}',
      '/v1/accounts',
      '/v1/accounts/{name}',
      '/v1/accounts/{name}/tokens',
      '/v1/accounts/{name}/tokens/{id}',
      '/v1/policies',
      '/v1/policies/{id}',
      '/v1/policies/explain',
      '/v1/audit',
      '/v1/audit/verify',
    ]) {
      assert.ok(paths.includes(expected), `${expected} is documented`);
    }
  });
});
