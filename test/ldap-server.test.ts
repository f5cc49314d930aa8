// Runs mcr with the LDAP identity provider against a real slapd and checks
// that directory users log in to /v2/ with the roles their groups give them.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { basicAuth, startServer, type TestServer } from './helpers/server.js';
import { GROUPS_DN, PEOPLE_DN, startSlapd, USERS, type Slapd } from './helpers/slapd.js';

let slapd: Slapd;
let server: TestServer;

before(async () => {
  slapd = await startSlapd();
  server = await startServer({
    env: {
      MCR_AUTH_PROVIDER: 'ldap',
      MCR_LDAP_URL: slapd.url,
      MCR_LDAP_USER_DN: `uid={username},${PEOPLE_DN}`,
      MCR_LDAP_GROUP_BASE_DN: GROUPS_DN,
      MCR_LDAP_ADMIN_GROUPS: 'mcr-admins',
      MCR_LDAP_USER_GROUPS: 'mcr-users,mcr-developers',
    },
  });
});

after(async () => {
  await server?.cleanup();
  await slapd?.stop();
});

function as(username: string, password: string, target: string, init: RequestInit = {}) {
  return fetch(`${server.url}${target}`, {
    ...init,
    headers: { authorization: basicAuth(username, password) },
  });
}

describe('LDAP login through mcr', () => {
  it('maps directory groups to roles on the account it records', async () => {
    assert.equal((await as('alice', USERS.alice.password, '/v2/')).status, 200);
    assert.equal((await as('bob', USERS.bob.password, '/v2/')).status, 200);

    const accounts = (await (await server.fetch('/v1/accounts')).json()) as {
      accounts: Array<{ username: string; role: string; provider: string }>;
    };
    const byName = new Map(accounts.accounts.map((account) => [account.username, account]));
    assert.equal(byName.get('alice')?.role, 'admin');
    assert.equal(byName.get('alice')?.provider, 'ldap');
    assert.equal(byName.get('bob')?.role, 'user');
  });

  it('applies the policy to directory users', async () => {
    const own = await as('bob', USERS.bob.password, '/v2/bob/app/blobs/uploads/', {
      method: 'POST',
    });
    assert.equal(own.status, 202);
    const other = await as('bob', USERS.bob.password, '/v2/team/app/blobs/uploads/', {
      method: 'POST',
    });
    assert.equal(other.status, 403);
    // carol is in no mapped group, so she is a guest and may do nothing.
    const guest = await as('carol', USERS.carol.password, '/v2/bob/app/tags/list');
    assert.equal(guest.status, 403);
  });

  it('rejects a wrong directory password', async () => {
    const response = await as('alice', 'not-alice-password', '/v2/');
    assert.equal(response.status, 401);
  });

  it('keeps the local admin working beside the directory', async () => {
    assert.equal((await server.fetch('/v2/')).status, 200);
  });
});
