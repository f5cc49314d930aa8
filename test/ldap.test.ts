// Tests the LDAP identity provider against a real OpenLDAP server (slapd) on
// a loopback port, with real binds and group searches. The ldapwhoami and
// ldapsearch commands (ldap-utils) show what the directory itself would
// accept, independently of the provider and its client library.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath, pathToFileURL } from 'node:url';

import { Client, InvalidCredentialsError } from 'ldapts';
import { pino, type Logger } from 'pino';

import { ACCOUNT_NAME_PATTERN } from '../src/auth/identity.js';
import {
  escapeDnValue,
  expandGroupFilter,
  expandUserDn,
  LdapIdentityProvider,
  type LdapIdentityProviderOptions,
} from '../src/auth/ldap.js';
import { run } from './helpers/images.js';
import {
  createTestCertificates,
  GROUPS_DN,
  PEOPLE_DN,
  SPECIAL_UID,
  startSlapd,
  TRICKY_OU_DN,
  USERS,
  type Slapd,
} from './helpers/slapd.js';

const USER_DN_TEMPLATE = `uid={username},${PEOPLE_DN}`;
const DEFAULT_GROUP_FILTER = '(|(member={dn})(uniqueMember={dn})(memberUid={username}))';
/** Environment for ldap-utils commands. LDAPNOINIT=1 makes libldap skip ldap.conf and ~/.ldaprc. */
const LDAP_UTILS_ENV = { PATH: process.env.PATH ?? '', LDAPNOINIT: '1' };

let slapd: Slapd;

before(async () => {
  slapd = await startSlapd();
});

after(async () => {
  await slapd?.stop();
});

/** An in-memory pino destination. */
class LogCapture {
  readonly lines: string[] = [];
  readonly logger: Logger = pino(
    { level: 'trace' },
    { write: (line: string) => this.lines.push(line) },
  );

  text(): string {
    return this.lines.join('');
  }
}

function createProvider(
  overrides: Partial<LdapIdentityProviderOptions> = {},
): LdapIdentityProvider {
  return new LdapIdentityProvider({
    url: slapd.url,
    userDn: USER_DN_TEMPLATE,
    groupBaseDn: GROUPS_DN,
    groupFilter: DEFAULT_GROUP_FILTER,
    adminGroups: ['mcr-admins'],
    userGroups: ['mcr-users', 'mcr-developers'],
    guestGroups: ['mcr-guests'],
    startTls: false,
    timeoutMs: 5000,
    log: pino({ level: 'silent' }),
    ...overrides,
  });
}

/** Binds with ldapts directly, bypassing the provider. Resolves true on success. */
async function bindDirectly(dn: string, password: string): Promise<boolean> {
  const client = new Client({ url: slapd.url, timeout: 5000, connectTimeout: 5000 });
  try {
    await client.bind(dn, password);
    return true;
  } catch (error) {
    if (error instanceof InvalidCredentialsError) return false;
    throw error;
  } finally {
    await client.unbind();
  }
}

function portOf(server: Server): number {
  const address = server.address();
  if (address === null || typeof address === 'string') {
    throw new Error(`server has no TCP address: ${String(address)}`);
  }
  return address.port;
}

/** Returns a loopback port with nothing listening on it. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = portOf(server);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Starts a loopback TCP server that accepts connections and never sends a byte. */
async function startSilentServer(): Promise<{ url: string; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `ldap://127.0.0.1:${portOf(server)}/`,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Resolves with the rejection error of `promise`, failing the test if it resolves. */
async function rejectionOf(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof Error, `expected an Error, got ${String(error)}`);
    return error;
  }
  assert.fail('expected the promise to reject');
}

describe('LdapIdentityProvider roles', () => {
  it('gives alice admin', async () => {
    const identity = await createProvider().authenticate('alice', USERS.alice.password);
    assert.deepEqual(identity, { username: 'alice', role: 'admin', kind: 'human' });
  });

  it('gives bob user', async () => {
    const identity = await createProvider().authenticate('bob', USERS.bob.password);
    assert.deepEqual(identity, { username: 'bob', role: 'user', kind: 'human' });
  });

  it('gives carol guest when in no group', async () => {
    const identity = await createProvider().authenticate('carol', USERS.carol.password);
    assert.deepEqual(identity, { username: 'carol', role: 'guest', kind: 'human' });
  });

  it('finds posixGroup membership by memberUid', async () => {
    const identity = await createProvider().authenticate('dave', USERS.dave.password);
    assert.deepEqual(identity, { username: 'dave', role: 'user', kind: 'human' });
  });

  it('gives everyone user without role groups', async () => {
    const provider = createProvider({ adminGroups: [], userGroups: [], guestGroups: [] });
    for (const name of ['alice', 'bob', 'carol'] as const) {
      const identity = await provider.authenticate(name, USERS[name].password);
      assert.deepEqual(identity, { username: name, role: 'user', kind: 'human' }, name);
    }
  });

  it('gives everyone user without group base', async () => {
    const provider = createProvider({
      groupBaseDn: '',
      adminGroups: [],
      userGroups: [],
      guestGroups: [],
    });
    const identity = await provider.authenticate('alice', USERS.alice.password);
    assert.deepEqual(identity, { username: 'alice', role: 'user', kind: 'human' });
  });

  it('compares group names ignoring case', async () => {
    const provider = createProvider({ adminGroups: ['MCR-Admins'] });
    const identity = await provider.authenticate('alice', USERS.alice.password);
    assert.equal(identity?.role, 'admin');
  });

  it('gives guest to a guest-group member', async () => {
    // bob is in mcr-users. When that group is only a guest group, he is a guest.
    const provider = createProvider({ userGroups: [], guestGroups: ['mcr-users'] });
    const identity = await provider.authenticate('bob', USERS.bob.password);
    assert.equal(identity?.role, 'guest');
  });

  it('prefers admin over user groups', async () => {
    const provider = createProvider({ adminGroups: ['mcr-admins'], userGroups: ['mcr-admins'] });
    const identity = await provider.authenticate('alice', USERS.alice.password);
    assert.equal(identity?.role, 'admin');
  });
});

describe('LdapIdentityProvider rejected logins', () => {
  it('rejects a wrong password', async () => {
    const provider = createProvider();
    assert.equal(await provider.authenticate('alice', USERS.bob.password), undefined);
    assert.equal(await provider.authenticate('alice', `${USERS.alice.password}x`), undefined);
  });

  it('rejects an unknown user', async () => {
    const identity = await createProvider().authenticate('mallory', USERS.alice.password);
    assert.equal(identity, undefined);
  });

  it('rejects an empty password', async () => {
    const identity = await createProvider().authenticate('alice', '');
    assert.equal(identity, undefined);
  });

  it('slapd accepts a bind without password', async () => {
    // The provider must check for empty passwords itself, because this
    // server reports success for a DN with an empty password.
    const output = await run(
      'ldapwhoami',
      ['-x', '-H', slapd.url, '-D', USERS.alice.dn, '-w', ''],
      { env: LDAP_UTILS_ENV, timeoutMs: 10_000 },
    );
    assert.equal(output.trim(), 'anonymous');
    assert.equal(await bindDirectly(USERS.alice.dn, ''), true);
  });

  it('rejects an empty password offline', async () => {
    // The server is unreachable, so resolving (not rejecting) proves that
    // the provider made no connection.
    const provider = createProvider({ url: `ldap://127.0.0.1:${await closedPort()}/` });
    assert.equal(await provider.authenticate('alice', ''), undefined);
  });

  it('rejects names mcr does not allow', async () => {
    const provider = createProvider();
    const names = ['Alice', 'ALICE', '', ' alice', 'alice ', '-alice', 'alice\0', 'a'.repeat(65)];
    for (const name of names) {
      assert.equal(await provider.authenticate(name, USERS.alice.password), undefined, name);
    }
    // The longest allowed name still reaches the directory, which does not know it.
    assert.equal(ACCOUNT_NAME_PATTERN.test('a'.repeat(64)), true);
    assert.equal(await provider.authenticate('a'.repeat(64), USERS.alice.password), undefined);
  });
});

describe('LdapIdentityProvider injection', () => {
  const attempts: Array<[username: string, password: string]> = [
    ['alice,ou=people', USERS.alice.password],
    [`alice,${PEOPLE_DN}`, USERS.alice.password],
    ['uid=alice', USERS.alice.password],
    ['alice+cn=Alice', USERS.alice.password],
    ['*', USERS.alice.password],
    ['*', USERS.bob.password],
    ['alice)(uid=*', USERS.alice.password],
    ['alice*', USERS.alice.password],
    ['bob\\', USERS.bob.password],
    ['bob\\2a', USERS.bob.password],
    ['bob)(cn=mcr-admins', USERS.bob.password],
    ['#alice', USERS.alice.password],
    // Inserted into the DN unescaped, this names frank's entry in another OU.
    [`frank,${TRICKY_OU_DN.replace(`,${PEOPLE_DN}`, '')}`, USERS.frank.password],
    [SPECIAL_UID, USERS.special.password],
  ];

  for (const [username, password] of attempts) {
    it(`rejects username ${JSON.stringify(username)}`, async () => {
      const identity = await createProvider().authenticate(username, password);
      assert.equal(identity, undefined);
    });
  }

  it('escapes DN values per RFC 4514', () => {
    const cases: Array<[input: string, expected: string]> = [
      ['alice', 'alice'],
      ['a,b', 'a\\,b'],
      ['a+b', 'a\\+b'],
      ['a"b', 'a\\"b'],
      ['a\\b', 'a\\\\b'],
      ['a<b>c', 'a\\<b\\>c'],
      ['a;b', 'a\\;b'],
      ['a=b', 'a\\=b'],
      ['#a', '\\#a'],
      ['a#', 'a#'],
      [' a', '\\ a'],
      ['a ', 'a\\ '],
      ['a b', 'a b'],
      [' ', '\\ '],
      ['a\0b', 'a\\00b'],
      ['alice,ou=people', 'alice\\,ou\\=people'],
      ['', ''],
    ];
    for (const [input, expected] of cases) {
      assert.equal(escapeDnValue(input), expected, JSON.stringify(input));
    }
  });

  it('expands the DN template once', () => {
    assert.equal(expandUserDn('uid={username},ou=people', 'a,b'), 'uid=a\\,b,ou=people');
    assert.equal(expandUserDn('uid={username},cn={username}', 'x'), 'uid=x,cn=x');
    // A replacement string would turn $& into the matched text.
    assert.equal(expandUserDn('uid={username}', '$&'), 'uid=$&');
  });

  it('escaped special DN binds in slapd', async () => {
    const dn = expandUserDn(USER_DN_TEMPLATE, SPECIAL_UID);
    assert.equal(await bindDirectly(dn, USERS.special.password), true);
    // The same uid inserted without escaping names no entry this password opens.
    const rawDn = `uid=${SPECIAL_UID},${PEOPLE_DN}`;
    const rawBind = await bindDirectly(rawDn, USERS.special.password).catch(() => false);
    assert.equal(rawBind, false);
  });

  it('escaped DN cannot reach another entry', async () => {
    const dn = expandUserDn(USER_DN_TEMPLATE, `alice,${PEOPLE_DN}`);
    assert.equal(dn, `uid=alice\\,ou\\=people\\,dc\\=mcr\\,dc\\=test,${PEOPLE_DN}`);
    assert.equal(await bindDirectly(dn, USERS.alice.password), false);
  });

  it('escapes filter values per RFC 4515', () => {
    const cases: Array<[input: string, expected: string]> = [
      ['alice', '(memberUid=alice)'],
      ['*', '(memberUid=\\2a)'],
      ['alice)(uid=*', '(memberUid=alice\\29\\28uid=\\2a)'],
      ['bob\\', '(memberUid=bob\\5c)'],
      ['a\0b', '(memberUid=a\\00b)'],
      ['{dn}', '(memberUid={dn})'],
    ];
    for (const [input, expected] of cases) {
      assert.equal(expandGroupFilter('(memberUid={username})', 'dc=x', input), expected, input);
    }
    assert.equal(
      expandGroupFilter('(|(member={dn})(memberUid={username}))', 'uid=a\\,b,dc=x', 'a'),
      '(|(member=uid=a\\5c,b,dc=x)(memberUid=a))',
    );
  });

  it('unescaped filter would elevate frank', async () => {
    // frank's DN contains filter syntax. Put into the filter as it is, it adds
    // (cn=mcr-admins) as an alternative, and the search finds the admin group.
    const naiveFilter = DEFAULT_GROUP_FILTER.replaceAll('{dn}', USERS.frank.dn).replaceAll(
      '{username}',
      'frank',
    );
    const output = await run(
      'ldapsearch',
      [
        '-x',
        '-LLL',
        '-H',
        slapd.url,
        '-D',
        USERS.frank.dn,
        '-w',
        USERS.frank.password,
        '-b',
        GROUPS_DN,
        naiveFilter,
        'cn',
      ],
      { env: LDAP_UTILS_ENV, timeoutMs: 10_000 },
    );
    assert.match(output, /^cn: mcr-admins$/m);
  });

  it('escaped filter keeps frank a user', async () => {
    const provider = createProvider({ userDn: `uid={username},${TRICKY_OU_DN}` });
    const identity = await provider.authenticate('frank', USERS.frank.password);
    // frank is in mcr-users, so the escaped DN still matches his member value.
    assert.deepEqual(identity, { username: 'frank', role: 'user', kind: 'human' });
  });
});

describe('LdapIdentityProvider failures', () => {
  it('rejects quickly on a closed port', async () => {
    const url = `ldap://127.0.0.1:${await closedPort()}/`;
    const provider = createProvider({ url, timeoutMs: 2000 });
    const started = Date.now();
    const error = await rejectionOf(provider.authenticate('alice', USERS.alice.password));
    const elapsedMs = Date.now() - started;
    assert.ok(error.message.includes(url), error.message);
    assert.ok(!error.message.includes(USERS.alice.password), error.message);
    assert.ok(elapsedMs < 2000, `took ${elapsedMs} ms`);
  });

  it('times out on a silent server', async () => {
    const server = await startSilentServer();
    try {
      const provider = createProvider({ url: server.url, timeoutMs: 500 });
      const started = Date.now();
      const error = await rejectionOf(provider.authenticate('alice', USERS.alice.password));
      const elapsedMs = Date.now() - started;
      assert.ok(error.message.includes(server.url), error.message);
      assert.match(error.message, /500 ms|timed out/);
      assert.ok(elapsedMs >= 450, `took ${elapsedMs} ms`);
      assert.ok(elapsedMs < 2000, `took ${elapsedMs} ms`);
    } finally {
      await server.close();
    }
  });

  it('rejects a missing group base', async () => {
    const groupBaseDn = `ou=missing,${GROUPS_DN}`;
    const provider = createProvider({ groupBaseDn });
    const error = await rejectionOf(provider.authenticate('alice', USERS.alice.password));
    assert.ok(error.message.includes(groupBaseDn), error.message);
    assert.ok(error.message.includes(slapd.url), error.message);
    assert.match(error.message, /NoSuchObjectError/);
  });

  it('rejects StartTLS when unsupported', async () => {
    // This slapd has no certificate, so it rejects StartTLS. The provider
    // must fail instead of binding in plain text.
    const provider = createProvider({ startTls: true });
    const logStart = slapd.output().length;
    const error = await rejectionOf(provider.authenticate('alice', USERS.alice.password));
    assert.match(error.message, /StartTLS/);
    assert.ok(error.message.includes(slapd.url), error.message);
    assert.doesNotMatch(slapd.output().slice(logStart), /BIND dn=/);
  });

  it('keeps passwords out of logs', async () => {
    const capture = new LogCapture();
    const silent = await startSilentServer();
    // Not a valid account name, so the call that passes it as the username
    // shows that rejected names stay out of the log too.
    const password = 'Log-Probe-Password-58e1!';
    try {
      const provider = createProvider({ log: capture.logger });
      await provider.authenticate('alice', USERS.alice.password);
      await provider.authenticate('alice', password);
      await provider.authenticate('mallory', password);
      await provider.authenticate(password, password);
      const unreachable = createProvider({
        log: capture.logger,
        url: `ldap://127.0.0.1:${await closedPort()}/`,
      });
      const unreachableError = await rejectionOf(unreachable.authenticate('alice', password));
      const stalled = createProvider({ log: capture.logger, url: silent.url, timeoutMs: 300 });
      const stalledError = await rejectionOf(stalled.authenticate('alice', password));

      assert.ok(capture.lines.length >= 4, `only ${capture.lines.length} log lines`);
      assert.ok(capture.text().includes('LDAP login succeeded'), capture.text());
      assert.ok(!capture.text().includes(USERS.alice.password), capture.text());
      assert.ok(!capture.text().includes(password), capture.text());
      assert.ok(!unreachableError.message.includes(password), unreachableError.message);
      assert.ok(!stalledError.message.includes(password), stalledError.message);
    } finally {
      await silent.close();
    }
  });
});

describe('LdapIdentityProvider settings', () => {
  it('requires {username} in the DN template', () => {
    assert.throws(() => createProvider({ userDn: `uid=alice,${PEOPLE_DN}` }), /ldap\.user_dn/);
  });

  it('requires an ldap or ldaps URL', () => {
    assert.throws(() => createProvider({ url: 'http://127.0.0.1:389' }), /ldap\.url/);
    assert.throws(() => createProvider({ url: 'not a url' }), /ldap\.url/);
  });

  it('rejects StartTLS on ldaps', () => {
    assert.throws(
      () => createProvider({ url: 'ldaps://127.0.0.1:636', startTls: true }),
      /ldap\.start_tls/,
    );
  });

  it('rejects an invalid group filter', () => {
    assert.throws(() => createProvider({ groupFilter: '(member={dn}' }), /ldap\.group_filter/);
  });

  it('requires group base for role groups', () => {
    assert.throws(() => createProvider({ groupBaseDn: '' }), /ldap\.group_base_dn/);
  });

  it('rejects a zero timeout', () => {
    assert.throws(() => createProvider({ timeoutMs: 0 }), /ldap\.timeout/);
  });
});

describe('LdapIdentityProvider StartTLS', () => {
  let tlsSlapd: Slapd;
  let certificateDir: string;
  let caFile: string;

  before(async () => {
    certificateDir = mkdtempSync(path.join(tmpdir(), 'mcr-ldap-tls-'));
    const files = await createTestCertificates(certificateDir);
    caFile = files.caFile;
    tlsSlapd = await startSlapd({ tls: { certFile: files.certFile, keyFile: files.keyFile } });
  });

  after(async () => {
    await tlsSlapd?.stop();
    if (certificateDir) rmSync(certificateDir, { recursive: true, force: true });
  });

  it('rejects an untrusted certificate', async () => {
    // The test CA is not in this process's trust store.
    const provider = createProvider({ url: tlsSlapd.url, startTls: true });
    const error = await rejectionOf(provider.authenticate('alice', USERS.alice.password));
    assert.match(error.message, /StartTLS/);
    assert.match(error.message, /certificate/i);
    assert.ok(error.message.includes(tlsSlapd.url), error.message);
    // The bind never reached the server.
    assert.doesNotMatch(tlsSlapd.output(), /BIND dn="uid=alice/);
  });

  it('binds over a trusted StartTLS session', async () => {
    // NODE_EXTRA_CA_CERTS is read only at process start, so a child Node
    // process runs the provider with the test CA trusted.
    const providerUrl = pathToFileURL(
      path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../src/auth/ldap.js'),
    ).href;
    const script = `
      const { LdapIdentityProvider } = await import(process.env.PROVIDER_URL);
      const { pino } = await import(process.env.PINO_URL);
      const provider = new LdapIdentityProvider({
        ...JSON.parse(process.env.PROVIDER_OPTIONS),
        log: pino({ level: 'silent' }),
      });
      const identity = await provider.authenticate('alice', process.env.LDAP_PASSWORD);
      process.stdout.write(JSON.stringify(identity ?? null));
    `;
    const options = {
      url: tlsSlapd.url,
      userDn: USER_DN_TEMPLATE,
      groupBaseDn: GROUPS_DN,
      groupFilter: DEFAULT_GROUP_FILTER,
      adminGroups: ['mcr-admins'],
      userGroups: [],
      guestGroups: [],
      startTls: true,
      timeoutMs: 5000,
    };
    const output = await run(process.execPath, ['--input-type=module', '-e', script], {
      env: {
        NODE_EXTRA_CA_CERTS: caFile,
        PROVIDER_URL: providerUrl,
        PINO_URL: import.meta.resolve('pino'),
        PROVIDER_OPTIONS: JSON.stringify(options),
        LDAP_PASSWORD: USERS.alice.password,
      },
      timeoutMs: 30_000,
    });
    assert.deepEqual(JSON.parse(output), { username: 'alice', role: 'admin', kind: 'human' });
    // slapd logs a StartTLS operation before alice's bind.
    assert.match(tlsSlapd.output(), /STARTTLS[\s\S]*BIND dn="uid=alice,ou=people,dc=mcr,dc=test"/);
  });
});
