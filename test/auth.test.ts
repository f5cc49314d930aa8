import assert from 'node:assert/strict';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';

import { OCI_MANIFEST, pushImage } from './helpers/oci.js';
import {
  ADMIN_PASSWORD,
  basicAuth,
  runUntilExit,
  startServer,
  type TestServer,
} from './helpers/server.js';

let server: TestServer;
before(async () => {
  server = await startServer({ env: { MCR_AUTH_MAX_FAILURES: '5' } });
  await createAccount('alice', 'alice-password', 'user');
  await createAccount('bob', 'bob-password', 'user');
  await createAccount('gary', 'gary-password', 'guest');
  await pushImage(server, 'team/app', 'v1');
  await pushImage(server, 'alice/app', 'v1');
});
after(async () => {
  await server.cleanup();
});

async function createAccount(username: string, password: string, role: string): Promise<void> {
  const response = await server.fetch('/v1/accounts', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ username, password, role, kind: 'human' }),
  });
  assert.equal(response.status, 201, await response.text());
}

function as(username: string, password: string, target: string, init: RequestInit = {}) {
  const headers = new Headers(init.headers);
  headers.set('authorization', basicAuth(username, password));
  return fetch(`${server.url}${target}`, { ...init, headers });
}

function bearer(token: string, target: string, init: RequestInit = {}) {
  const headers = new Headers(init.headers);
  headers.set('authorization', `Bearer ${token}`);
  return fetch(`${server.url}${target}`, { ...init, headers });
}

async function errorCode(response: Response): Promise<string | undefined> {
  const body = (await response.json()) as { errors?: Array<{ code: string }> };
  return body.errors?.[0]?.code;
}

interface Claims {
  sub?: string;
  aud: string;
  iss: string;
  exp: number;
  access: Array<{ type: string; name: string; actions: string[] }>;
}

function claimsOf(token: string): Claims {
  const [, payload] = token.split('.');
  return JSON.parse(Buffer.from(payload as string, 'base64url').toString('utf8')) as Claims;
}

function headerOf(token: string): { alg: string; kid: string } {
  return JSON.parse(Buffer.from(token.split('.')[0] as string, 'base64url').toString('utf8'));
}

async function tokenFor(
  username: string | undefined,
  password: string | undefined,
  ...scopes: string[]
) {
  const query = new URLSearchParams({ service: 'mcr' });
  for (const scope of scopes) query.append('scope', scope);
  const init: RequestInit = {};
  if (username !== undefined && password !== undefined) {
    init.headers = { authorization: basicAuth(username, password) };
  }
  const response = await fetch(`${server.url}/v2/token?${query}`, init);
  assert.equal(response.status, 200, await response.clone().text());
  const body = (await response.json()) as {
    token: string;
    access_token: string;
    expires_in: number;
  };
  assert.equal(body.token, body.access_token);
  return body;
}

describe('the /v2/ challenge', () => {
  it('challenges an anonymous caller with the token realm', async () => {
    const response = await fetch(`${server.url}/v2/`);
    assert.equal(response.status, 401);
    assert.equal(
      response.headers.get('www-authenticate'),
      `Bearer realm="${server.url}/v2/token",service="mcr"`,
    );
    assert.equal(await errorCode(response), 'UNAUTHORIZED');
  });

  it('names the scope an operation needs', async () => {
    const pull = await fetch(`${server.url}/v2/team/app/manifests/v1`);
    assert.equal(pull.status, 401);
    assert.match(pull.headers.get('www-authenticate') ?? '', /scope="repository:team\/app:pull"/);
    const push = await fetch(`${server.url}/v2/team/app/blobs/uploads/`, { method: 'POST' });
    assert.equal(push.status, 401);
    assert.match(
      push.headers.get('www-authenticate') ?? '',
      /scope="repository:team\/app:pull,push"/,
    );
    const catalog = await fetch(`${server.url}/v2/_catalog`);
    assert.match(catalog.headers.get('www-authenticate') ?? '', /scope="registry:catalog:\*"/);
  });

  it('accepts Basic credentials sent straight to /v2/', async () => {
    assert.equal((await as('alice', 'alice-password', '/v2/')).status, 200);
    const wrong = await as('alice', 'not-her-password', '/v2/');
    assert.equal(wrong.status, 401);
    assert.equal(await errorCode(wrong), 'UNAUTHORIZED');
  });

  it('rejects a forged or foreign bearer token', async () => {
    const { token } = await tokenFor('alice', 'alice-password', 'repository:team/app:pull');
    const [head, payload] = token.split('.');
    const forged = `${head}.${payload}.${'A'.repeat(86)}`;
    const response = await bearer(forged, '/v2/team/app/manifests/v1');
    assert.equal(response.status, 401);
    assert.match(response.headers.get('www-authenticate') ?? '', /error="invalid_token"/);
  });
});

describe('token endpoint', () => {
  it('grants only what the policy allows for each scope', async () => {
    const body = await tokenFor(
      'alice',
      'alice-password',
      'repository:team/app:pull,push,delete',
      'repository:alice/app:pull,push repository:alice/other:*',
      'registry:catalog:*',
    );
    const claims = claimsOf(body.token);
    assert.equal(claims.sub, 'alice');
    assert.equal(claims.aud, 'mcr');
    assert.ok(body.expires_in > 0);
    assert.ok(body.expires_in <= 300);
    assert.deepEqual(claims.access, [
      { type: 'repository', name: 'team/app', actions: ['pull'] },
      { type: 'repository', name: 'alice/app', actions: ['pull', 'push'] },
      { type: 'repository', name: 'alice/other', actions: ['pull', 'push', 'delete'] },
      { type: 'registry', name: 'catalog', actions: ['*'] },
    ]);
    assert.equal(headerOf(body.token).alg, 'EdDSA');
  });

  it('gives a guest and an anonymous caller empty grants', async () => {
    const guest = claimsOf(
      (await tokenFor('gary', 'gary-password', 'repository:team/app:pull')).token,
    );
    assert.deepEqual(guest.access, [{ type: 'repository', name: 'team/app', actions: [] }]);
    const anonymous = claimsOf(
      (await tokenFor(undefined, undefined, 'repository:team/app:pull')).token,
    );
    assert.equal(anonymous.sub, undefined);
    assert.deepEqual(anonymous.access, [{ type: 'repository', name: 'team/app', actions: [] }]);
  });

  it('rejects wrong credentials with 401', async () => {
    const response = await fetch(
      `${server.url}/v2/token?service=mcr&scope=repository:team/app:pull`,
      {
        headers: { authorization: basicAuth('alice', 'wrong-password') },
      },
    );
    assert.equal(response.status, 401);
    assert.equal(await errorCode(response), 'UNAUTHORIZED');
  });

  it('rejects an unknown service', async () => {
    const response = await fetch(`${server.url}/v2/token?service=elsewhere`, {
      headers: { authorization: basicAuth('alice', 'alice-password') },
    });
    assert.equal(response.status, 400);
  });

  it('serves the OAuth2 password and refresh-token grants', async () => {
    const form = new URLSearchParams({
      grant_type: 'password',
      service: 'mcr',
      client_id: 'test',
      access_type: 'offline',
      username: 'alice',
      password: 'alice-password',
      scope: 'repository:alice/app:pull,push repository:team/app:pull',
    });
    const response = await fetch(`${server.url}/v2/token`, {
      method: 'POST',
      body: form,
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    assert.equal(response.status, 200);
    const body = (await response.json()) as { access_token: string; refresh_token: string };
    assert.ok(body.refresh_token);
    assert.deepEqual(claimsOf(body.access_token).access, [
      { type: 'repository', name: 'alice/app', actions: ['pull', 'push'] },
      { type: 'repository', name: 'team/app', actions: ['pull'] },
    ]);

    const refreshed = await fetch(`${server.url}/v2/token`, {
      method: 'POST',
      body: new URLSearchParams({
        grant_type: 'refresh_token',
        service: 'mcr',
        client_id: 'test',
        refresh_token: body.refresh_token,
        scope: 'repository:team/app:pull',
      }),
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    assert.equal(refreshed.status, 200);
    const second = (await refreshed.json()) as { access_token: string };
    assert.equal(claimsOf(second.access_token).sub, 'alice');

    // A refresh token is not an access token, and the other way round.
    assert.equal((await bearer(body.refresh_token, '/v2/')).status, 401);
    const misuse = await fetch(`${server.url}/v2/token`, {
      method: 'POST',
      body: new URLSearchParams({
        grant_type: 'refresh_token',
        service: 'mcr',
        refresh_token: second.access_token,
      }),
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    assert.equal(misuse.status, 401);
  });
});

describe('bearer tokens on /v2/', () => {
  it('allow exactly what they grant', async () => {
    const { token } = await tokenFor('alice', 'alice-password', 'repository:team/app:pull');
    assert.equal((await bearer(token, '/v2/')).status, 200);
    const pull = await bearer(token, '/v2/team/app/manifests/v1');
    assert.equal(pull.status, 200);

    // alice may push to alice/app, but this token was not issued for it: the
    // client is told to fetch a token with that scope.
    const insufficient = await bearer(token, '/v2/alice/app/blobs/uploads/', { method: 'POST' });
    assert.equal(insufficient.status, 401);
    assert.match(insufficient.headers.get('www-authenticate') ?? '', /error="insufficient_scope"/);

    // The policy denies alice a push to team/app, whatever token she holds.
    const denied = await bearer(token, '/v2/team/app/blobs/uploads/', { method: 'POST' });
    assert.equal(denied.status, 403);
    assert.equal(await errorCode(denied), 'DENIED');
  });

  it('answer 404 to a push-only HEAD of a manifest that does not exist', async () => {
    await server.fetch('/v1/policies', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({
        priority: 1,
        effect: 'allow',
        description: 'bob writes drops without reading them',
        subjects: ['account:bob'],
        actions: ['push'],
        repositories: ['drops/**'],
      }),
    });
    await server.fetch('/v1/policies', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({
        priority: 1,
        effect: 'deny',
        description: 'nobody reads drops',
        subjects: ['*'],
        actions: ['pull'],
        repositories: ['drops/**'],
      }),
    });
    const { token } = await tokenFor('bob', 'bob-password', 'repository:drops/x:pull,push');
    assert.deepEqual(claimsOf(token).access[0]?.actions, ['push']);
    const head = await bearer(token, '/v2/drops/x/manifests/missing', { method: 'HEAD' });
    assert.equal(head.status, 404);
    const get = await bearer(token, '/v2/drops/x/manifests/missing');
    assert.equal(get.status, 403);
  });
});

describe('policy enforcement with Basic credentials', () => {
  it('lets a user pull anything and push only under their name', async () => {
    assert.equal((await as('alice', 'alice-password', '/v2/team/app/manifests/v1')).status, 200);
    const push = await as('alice', 'alice-password', '/v2/team/app/blobs/uploads/', {
      method: 'POST',
    });
    assert.equal(push.status, 403);
    assert.equal(await errorCode(push), 'DENIED');
    const own = await as('alice', 'alice-password', '/v2/alice/new/blobs/uploads/', {
      method: 'POST',
    });
    assert.equal(own.status, 202);
    const del = await as('alice', 'alice-password', '/v2/team/app/manifests/v1', {
      method: 'DELETE',
    });
    assert.equal(del.status, 403);
  });

  it('gives a guest nothing', async () => {
    const response = await as('gary', 'gary-password', '/v2/team/app/manifests/v1');
    assert.equal(response.status, 403);
    assert.equal(await errorCode(response), 'DENIED');
  });

  it('lists in the catalog only what the caller may pull', async () => {
    const rule = await server.fetch('/v1/policies', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({
        priority: 50,
        effect: 'deny',
        description: 'hide team from alice',
        subjects: ['account:alice'],
        actions: ['pull'],
        repositories: ['team/**'],
      }),
    });
    assert.equal(rule.status, 201);
    const { id } = (await rule.json()) as { id: number };

    const catalog = (await (await as('alice', 'alice-password', '/v2/_catalog')).json()) as {
      repositories: string[];
    };
    assert.ok(catalog.repositories.includes('alice/app'));
    assert.ok(!catalog.repositories.includes('team/app'));
    const admin = (await (await server.fetch('/v2/_catalog')).json()) as { repositories: string[] };
    assert.ok(admin.repositories.includes('team/app'));

    // The change takes effect on the next request, and so does its removal.
    assert.equal((await as('alice', 'alice-password', '/v2/team/app/manifests/v1')).status, 403);
    assert.equal((await server.fetch(`/v1/policies/${id}`, { method: 'DELETE' })).status, 204);
    assert.equal((await as('alice', 'alice-password', '/v2/team/app/manifests/v1')).status, 200);
  });

  it('falls back when mount source is unreadable', async () => {
    const image = await pushImage(server, 'secret/src', 'v1');
    await server.fetch('/v1/policies', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({
        priority: 1,
        effect: 'deny',
        description: 'secret',
        subjects: ['*'],
        actions: ['pull'],
        repositories: ['secret/**'],
      }),
    });
    const response = await as(
      'alice',
      'alice-password',
      `/v2/alice/stolen/blobs/uploads/?mount=${image.layerDigest}&from=secret/src`,
      { method: 'POST' },
    );
    assert.equal(response.status, 202);
    const mine = await as('alice', 'alice-password', `/v2/alice/stolen/blobs/${image.layerDigest}`);
    assert.equal(mine.status, 404);
  });

  it('grants anonymous pulls only through a rule for anonymous', async () => {
    await pushImage(server, 'public/hello', 'v1');
    assert.equal((await fetch(`${server.url}/v2/public/hello/manifests/v1`)).status, 401);
    await server.fetch('/v1/policies', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({
        priority: 1,
        effect: 'allow',
        description: 'public images',
        subjects: ['anonymous'],
        actions: ['pull'],
        repositories: ['public/**'],
      }),
    });
    const { token } = await tokenFor(undefined, undefined, 'repository:public/hello:pull');
    assert.equal((await bearer(token, '/v2/public/hello/manifests/v1')).status, 200);
    const other = await tokenFor(undefined, undefined, 'repository:team/app:pull');
    assert.equal((await bearer(other.token, '/v2/team/app/manifests/v1')).status, 401);
  });
});

describe('access tokens', () => {
  async function issue(username: string, password: string, body: Record<string, unknown>) {
    const response = await as(username, password, `/v1/accounts/${username}/tokens`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(body),
    });
    assert.equal(response.status, 201, await response.clone().text());
    return (await response.json()) as { id: number; secret: string; name: string };
  }

  it('work as passwords and stop working when revoked', async () => {
    const token = await issue('alice', 'alice-password', { name: 'ci' });
    assert.match(token.secret, /^mcr_pat_/);
    assert.equal((await as('alice', token.secret, '/v2/alice/app/manifests/v1')).status, 200);
    const viaTokenEndpoint = await tokenFor('alice', token.secret, 'repository:alice/app:push');
    assert.deepEqual(claimsOf(viaTokenEndpoint.token).access[0]?.actions, ['push']);

    const listed = (await (
      await as('alice', 'alice-password', '/v1/accounts/alice/tokens')
    ).json()) as {
      tokens: Array<{ id: number; last_used_at: string | null; secret?: string }>;
    };
    const entry = listed.tokens.find((item) => item.id === token.id);
    assert.ok(entry?.last_used_at, 'last use is recorded');
    assert.equal(entry?.secret, undefined);

    const revoke = await as('alice', 'alice-password', `/v1/accounts/alice/tokens/${token.id}`, {
      method: 'DELETE',
    });
    assert.equal(revoke.status, 200);
    assert.equal((await as('alice', token.secret, '/v2/')).status, 401);
  });

  it('expire', async () => {
    const token = await issue('alice', 'alice-password', {
      name: 'short',
      expires_at: new Date(Date.now() + 1500).toISOString(),
    });
    assert.equal((await as('alice', token.secret, '/v2/')).status, 200);
    await new Promise((resolve) => setTimeout(resolve, 1600));
    assert.equal((await as('alice', token.secret, '/v2/')).status, 401);
    assert.equal(await tokenForStatus('alice', token.secret), 401);
  });

  it('limit what their scopes name', async () => {
    const token = await issue('alice', 'alice-password', { name: 'readonly', scopes: ['pull'] });
    assert.equal((await as('alice', token.secret, '/v2/alice/app/manifests/v1')).status, 200);
    const push = await as('alice', token.secret, '/v2/alice/app/blobs/uploads/', {
      method: 'POST',
    });
    assert.equal(push.status, 403);
  });

  it('belong to their account only', async () => {
    const token = await issue('alice', 'alice-password', { name: 'mine' });
    assert.equal((await as('bob', token.secret, '/v2/')).status, 401);
    const foreign = await as('bob', 'bob-password', '/v1/accounts/alice/tokens');
    assert.equal(foreign.status, 403);
  });
});

describe('refresh tokens and restricted access tokens', () => {
  async function refreshWith(username: string, secret: string, scope: string): Promise<string> {
    const response = await fetch(
      `${server.url}/v2/token?service=mcr&offline_token=true&scope=${encodeURIComponent(scope)}`,
      { headers: { authorization: basicAuth(username, secret) } },
    );
    assert.equal(response.status, 200);
    return ((await response.json()) as { refresh_token: string }).refresh_token;
  }

  async function exchange(refresh: string, scope: string): Promise<Response> {
    return fetch(`${server.url}/v2/token`, {
      method: 'POST',
      body: new URLSearchParams({
        grant_type: 'refresh_token',
        service: 'mcr',
        refresh_token: refresh,
        scope,
      }),
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
  }

  it('keep the scopes of the access token they came from', async () => {
    const issued = await as('alice', 'alice-password', '/v1/accounts/alice/tokens', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'pull-only-refresh', scopes: ['pull'] }),
    });
    const token = (await issued.json()) as { id: number; secret: string };
    const refresh = await refreshWith('alice', token.secret, 'repository:alice/app:pull');
    const exchanged = await exchange(refresh, 'repository:alice/app:pull,push,delete');
    assert.equal(exchanged.status, 200);
    const claims = claimsOf(((await exchanged.json()) as { access_token: string }).access_token);
    assert.deepEqual(claims.access, [{ type: 'repository', name: 'alice/app', actions: ['pull'] }]);

    await as('alice', 'alice-password', `/v1/accounts/alice/tokens/${token.id}`, {
      method: 'DELETE',
    });
    assert.equal((await exchange(refresh, 'repository:alice/app:pull')).status, 401);
  });

  it('stop working after a password change', async () => {
    await createAccount('grace', 'grace-password', 'user');
    const refresh = await refreshWith('grace', 'grace-password', 'repository:grace/app:pull');
    assert.equal((await exchange(refresh, 'repository:grace/app:pull')).status, 200);
    await new Promise((resolve) => setTimeout(resolve, 1100));
    const patch = await server.fetch('/v1/accounts/grace', {
      method: 'PATCH',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ password: 'grace-new-password' }),
    });
    assert.equal(patch.status, 200);
    assert.equal((await exchange(refresh, 'repository:grace/app:pull')).status, 401);
  });

  it('forbid a scope-limited access token to mint tokens', async () => {
    const issued = await as('alice', 'alice-password', '/v1/accounts/alice/tokens', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'limited', scopes: ['pull'] }),
    });
    const limited = (await issued.json()) as { secret: string };
    const escalate = await as('alice', limited.secret, '/v1/accounts/alice/tokens', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'escalated' }),
    });
    assert.equal(escalate.status, 403);
  });

  it('reject an expiry that does not parse', async () => {
    const response = await as('alice', 'alice-password', '/v1/accounts/alice/tokens', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: 'leap', expires_at: '9999-12-31T23:59:60Z' }),
    });
    assert.equal(response.status, 400);
  });

  it('answer a malformed Authorization header at the token endpoint with 401', async () => {
    for (const header of [
      'Basic !!!***',
      `Basic ${Buffer.from('nocolon').toString('base64')}`,
      'Bearer xyz',
    ]) {
      const response = await fetch(`${server.url}/v2/token?service=mcr`, {
        headers: { authorization: header },
      });
      assert.equal(response.status, 401, header);
    }
  });

  it('name malformed Basic credentials on /v2/', async () => {
    for (const header of ['Basic !!!***', `Basic ${Buffer.from('nocolon').toString('base64')}`]) {
      const response = await fetch(`${server.url}/v2/`, { headers: { authorization: header } });
      assert.equal(response.status, 401, header);
      const body = (await response.json()) as { errors: Array<{ message: string }> };
      assert.match(body.errors[0]?.message ?? '', /malformed Basic credentials/, header);
    }
  });
});

async function tokenForStatus(username: string, password: string): Promise<number> {
  const response = await fetch(`${server.url}/v2/token?service=mcr`, {
    headers: { authorization: basicAuth(username, password) },
  });
  return response.status;
}

describe('disabled accounts', () => {
  it('cannot log in with a password, a token or a refresh token', async () => {
    await createAccount('dave', 'dave-password', 'user');
    const { token } = await tokenFor('dave', 'dave-password', 'repository:team/app:pull');
    // Both credentials work first, so that the server has them cached when
    // the account is disabled.
    assert.equal((await as('dave', 'dave-password', '/v2/')).status, 200);
    assert.equal((await bearer(token, '/v2/')).status, 200);
    const patch = await server.fetch('/v1/accounts/dave', {
      method: 'PATCH',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ disabled: true }),
    });
    assert.equal(patch.status, 200);
    assert.equal((await as('dave', 'dave-password', '/v2/')).status, 401);
    assert.equal((await bearer(token, '/v2/team/app/manifests/v1')).status, 401);
    assert.equal((await bearer(token, '/v2/')).status, 401);
    assert.equal(await tokenForStatus('dave', 'dave-password'), 401);
  });
});

describe('bearer tokens after an account change', () => {
  /** Changes gina's account a second after the last token, so that the change is in a later second. */
  async function changeGina(change: Record<string, unknown>): Promise<void> {
    // Token issue times have whole seconds; a change in the same second is not seen.
    await new Promise((resolve) => setTimeout(resolve, 1100));
    const response = await server.fetch('/v1/accounts/gina', {
      method: 'PATCH',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(change),
    });
    assert.equal(response.status, 200);
  }

  it('stop working once the role or the password changes', async () => {
    await createAccount('gina', 'gina-password', 'user');
    const before = await tokenFor('gina', 'gina-password', 'repository:gina/app:pull,push');
    assert.equal((await bearer(before.token, '/v2/')).status, 200);

    await changeGina({ role: 'guest' });
    const stale = await bearer(before.token, '/v2/');
    assert.equal(stale.status, 401);
    assert.match(stale.headers.get('www-authenticate') ?? '', /error="invalid_token"/);

    await changeGina({ role: 'user' });
    await new Promise((resolve) => setTimeout(resolve, 1100));
    const after = await tokenFor('gina', 'gina-password', 'repository:gina/app:pull');
    assert.equal((await bearer(after.token, '/v2/')).status, 200);

    await changeGina({ password: 'gina-new-password' });
    assert.equal((await bearer(after.token, '/v2/')).status, 401);
  });
});

describe('login throttling', () => {
  it('answers 429 after repeated failures and keeps secrets out of the log', async () => {
    await createAccount('erin', 'erin-password', 'user');
    const statuses: number[] = [];
    for (let i = 0; i < 7; i++) {
      statuses.push((await as('erin', `wrong-${i}-secret`, '/v2/')).status);
    }
    assert.deepEqual(statuses.slice(0, 5), [401, 401, 401, 401, 401]);
    assert.equal(statuses[5], 429);
    const throttled = await as('erin', 'erin-password', '/v2/');
    assert.equal(throttled.status, 429);
    assert.equal(await errorCode(throttled), 'TOOMANYREQUESTS');
    assert.ok(Number(throttled.headers.get('retry-after')) > 0);

    const text = JSON.stringify(server.logs);
    for (const secret of ['wrong-0-secret', 'erin-password', 'alice-password', 'mcr_pat_']) {
      assert.ok(!text.includes(secret), `log contains ${secret}`);
    }
    assert.ok(
      server.logs.some((entry) => entry.msg === 'login failed' && entry.account === 'erin'),
    );
  });
});

describe('login throttling under concurrency', () => {
  it('lets no more than the limit of parallel wrong logins through', async () => {
    await createAccount('frank', 'frank-password', 'user');
    const statuses = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        as('frank', `wrong-parallel-${i}`, '/v2/').then((r) => r.status),
      ),
    );
    assert.equal(statuses.filter((status) => status === 401).length, 5);
    assert.equal(statuses.filter((status) => status === 429).length, 15);
  });

  it('lets parallel correct logins all through', async () => {
    await createAccount('hank', 'hank-password', 'user');
    const statuses = await Promise.all(
      Array.from({ length: 40 }, () => as('hank', 'hank-password', '/v2/').then((r) => r.status)),
    );
    assert.deepEqual(new Set(statuses), new Set([200]));
  });
});

describe('credentials with a NUL character', () => {
  it('get 401 on every login path', async () => {
    const header = basicAuth('ad\0min', ADMIN_PASSWORD);
    for (const target of ['/v2/', '/v2/token?service=mcr']) {
      const response = await fetch(`${server.url}${target}`, {
        headers: { authorization: header },
      });
      await response.arrayBuffer();
      assert.equal(response.status, 401, target);
    }
    const token = await fetch(`${server.url}/v2/`, {
      headers: { authorization: basicAuth('admin', 'mcr_pat_\0token') },
    });
    await token.arrayBuffer();
    assert.equal(token.status, 401);
    const session = await fetch(`${server.url}/v1/auth/login`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: 'ad\u0000min', password: ADMIN_PASSWORD }),
    });
    await session.arrayBuffer();
    assert.equal(session.status, 401);
  });
});

describe('first start', () => {
  it('rejects a short MCR_ADMIN_PASSWORD in one line', () => {
    const result = runUntilExit({ MCR_ADMIN_PASSWORD: 'short' });
    assert.equal(result.status, 2, result.stderr);
    assert.equal(
      result.stderr,
      'mcr: invalid MCR_ADMIN_PASSWORD: password is too short: use at least 8 characters\n',
    );
  });

  it('generates an admin password once, in a 0600 file', async () => {
    const fresh = await startServer({ env: { MCR_ADMIN_PASSWORD: '' } });
    try {
      const file = path.join(fresh.dataDir, 'admin-password');
      assert.equal(statSync(file).mode & 0o777, 0o600);
      const password = readFileSync(file, 'utf8').trim();
      assert.ok(password.length >= 20);
      const response = await fetch(`${fresh.url}/v2/`, {
        headers: { authorization: basicAuth('admin', password) },
      });
      assert.equal(response.status, 200);
      const mentions = fresh.logs.filter((entry) => JSON.stringify(entry).includes(password));
      assert.equal(mentions.length, 1);

      const keys = readdirSync(path.join(fresh.dataDir, 'keys'));
      assert.equal(keys.length, 1);
      assert.equal(
        statSync(path.join(fresh.dataDir, 'keys', keys[0] as string)).mode & 0o777,
        0o600,
      );
    } finally {
      await fresh.cleanup();
    }
  });
});

describe('manifest push by an allowed user', () => {
  it('stores the push under the user namespace', async () => {
    const image = await pushImage(
      {
        fetch: (target, init) => as('alice', 'alice-password', target, init),
      },
      'alice/pushed',
      'v1',
    );
    const response = await as('bob', 'bob-password', '/v2/alice/pushed/manifests/v1', {
      headers: { accept: OCI_MANIFEST },
    });
    assert.equal(response.headers.get('docker-content-digest'), image.digest);
  });
});
