// Runs a private OpenLDAP server (Debian's slapd package) for tests: its own
// slapd.conf, database and TLS files in a temporary directory, listening only
// on a free loopback port, in the foreground as the current user. The
// system's slapd service and its configuration are never used.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';

import { Client } from 'ldapts';

import { run } from './images.js';

export const SLAPD = '/usr/sbin/slapd';
export const SLAPADD = '/usr/sbin/slapadd';

export const SUFFIX = 'dc=mcr,dc=test';
export const ROOT_DN = `cn=admin,${SUFFIX}`;
export const ROOT_PASSWORD = 'root-secret-3f9a';
export const PEOPLE_DN = `ou=people,${SUFFIX}`;
export const GROUPS_DN = `ou=groups,${SUFFIX}`;

/**
 * An organizational unit whose name is filter syntax. A DN under it, put
 * unescaped into an OR filter such as `(|(member={dn}))`, adds
 * `(cn=mcr-admins)` as an alternative.
 */
export const TRICKY_OU_DN = `ou=x*)(cn=mcr-admins)(cn=x,${PEOPLE_DN}`;

/**
 * A uid with every character that RFC 4514 requires escaping in a DN value
 * except NUL, including a leading `#` and a trailing space.
 */
export const SPECIAL_UID = '#a,b+c="d" <e>;f\\g=h ';

/** A fixture account's entry DN and password. */
export interface FixtureUser {
  dn: string;
  password: string;
}

/**
 * The accounts in the fixture directory. Group membership: alice is in
 * mcr-admins, bob and frank in mcr-users (by member DN), dave in
 * mcr-developers (a posixGroup, by memberUid), and carol and the special
 * user in no group.
 */
export const USERS = {
  alice: { dn: `uid=alice,${PEOPLE_DN}`, password: 'alice-pw-71c2' },
  bob: { dn: `uid=bob,${PEOPLE_DN}`, password: 'bob-pw-0d4e' },
  carol: { dn: `uid=carol,${PEOPLE_DN}`, password: 'carol-pw-9b18' },
  dave: { dn: `uid=dave,${PEOPLE_DN}`, password: 'dave-pw-52aa' },
  frank: { dn: `uid=frank,${TRICKY_OU_DN}`, password: 'frank-pw-e803' },
  // The DN is written with hex escapes so that it does not depend on the
  // escaping code under test.
  special: {
    dn: String.raw`uid=\23a\2Cb\2Bc\3D\22d\22 \3Ce\3E\3Bf\5Cg\3Dh\20,` + PEOPLE_DN,
    password: 'special-pw-4c67',
  },
} satisfies Record<string, FixtureUser>;

export interface SlapdOptions {
  /** PEM files that turn on StartTLS. Without them, the server rejects StartTLS. */
  tls?: { certFile: string; keyFile: string };
}

/** A running slapd with the fixture directory loaded. */
export interface Slapd {
  /** For example ldap://127.0.0.1:40123/ */
  url: string;
  port: number;
  /** Temporary directory with slapd.conf, the fixture LDIF and the database. */
  dir: string;
  /** Returns the server's standard error so far, which is its stats log (`-d 256`). */
  output(): string;
  /** Stops slapd with SIGTERM (SIGKILL after 5 s) and removes its directory. */
  stop(): Promise<void>;
}

const START_TIMEOUT_MS = 10_000;
const PORT_ATTEMPTS = 3;
const MAX_OUTPUT_CHARS = 1024 * 1024;

/** Starts slapd with the fixture entries and resolves once the root DN can bind. */
export async function startSlapd(options: SlapdOptions = {}): Promise<Slapd> {
  for (const program of [SLAPD, SLAPADD]) {
    if (!existsSync(program)) {
      throw new Error(`${program} not found. Install slapd with scripts/install-test-deps.sh`);
    }
  }

  const dir = mkdtempSync(path.join(tmpdir(), 'mcr-slapd-'));
  try {
    const configFile = path.join(dir, 'slapd.conf');
    mkdirSync(path.join(dir, 'db'));
    writeFileSync(configFile, slapdConfig(dir, options));
    const ldifFile = path.join(dir, 'fixtures.ldif');
    writeFileSync(ldifFile, fixtureLdif());
    // slapadd writes the database directly, before the server starts.
    await run(SLAPADD, ['-f', configFile, '-l', ldifFile], { timeoutMs: 30_000 });

    // The port is free when checked but could be taken before slapd binds it,
    // so a start that fails is tried again on another port.
    let lastError: Error | undefined;
    for (let attempt = 0; attempt < PORT_ATTEMPTS; attempt++) {
      const port = await findFreePort();
      try {
        return await launch(dir, configFile, port);
      } catch (error) {
        lastError = error as Error;
      }
    }
    throw lastError ?? new Error('slapd did not start');
  } catch (error) {
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
}

async function launch(dir: string, configFile: string, port: number): Promise<Slapd> {
  const url = `ldap://127.0.0.1:${port}/`;
  const child = spawn(SLAPD, ['-f', configFile, '-h', url, '-d', '256'], {
    // LDAPNOINIT keeps libldap from reading /etc/ldap/ldap.conf and ~/.ldaprc.
    env: { PATH: process.env.PATH ?? '', LDAPNOINIT: '1' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });

  let output = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    if (output.length < MAX_OUTPUT_CHARS) output += chunk.toString();
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  // A test process that dies without calling stop() would leave slapd running.
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);

  const stop = async () => {
    process.removeListener('exit', killOnExit);
    await stopProcess(child, exited);
    rmSync(dir, { recursive: true, force: true });
  };

  try {
    await waitForBind(url, child);
  } catch (error) {
    process.removeListener('exit', killOnExit);
    await stopProcess(child, exited);
    throw new Error(`${(error as Error).message}. slapd output:\n${output.slice(-4000)}`, {
      cause: error,
    });
  }
  return { url, port, dir, output: () => output, stop };
}

async function waitForBind(url: string, child: ChildProcess): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  let lastError: unknown;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(
        `slapd exited during start with ${child.signalCode ?? `exit status ${child.exitCode}`}`,
      );
    }
    const client = new Client({ url, timeout: 1000, connectTimeout: 1000 });
    try {
      await client.bind(ROOT_DN, ROOT_PASSWORD);
      return;
    } catch (error) {
      lastError = error;
    } finally {
      await client.unbind().catch(() => undefined);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(
    `slapd on ${url} accepted no bind within ${START_TIMEOUT_MS} ms: ${String(lastError)}`,
  );
}

async function stopProcess(child: ChildProcess, exited: Promise<void>): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await exited;
  clearTimeout(timer);
}

function findFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function slapdConfig(dir: string, options: SlapdOptions): string {
  const lines = [
    'include /etc/ldap/schema/core.schema',
    'include /etc/ldap/schema/cosine.schema',
    'include /etc/ldap/schema/inetorgperson.schema',
    'include /etc/ldap/schema/nis.schema',
    'modulepath /usr/lib/ldap',
    'moduleload back_mdb',
    `pidfile ${path.join(dir, 'slapd.pid')}`,
    `argsfile ${path.join(dir, 'slapd.args')}`,
    // slapd rejects a bind with a DN and an empty password by default
    // (unwillingToPerform). Some directory servers accept it as an anonymous
    // bind, and this setting makes slapd one of them, so the tests can show
    // that mcr itself rejects empty passwords.
    'allow bind_anon_dn',
  ];
  if (options.tls) {
    lines.push(`TLSCertificateFile ${options.tls.certFile}`);
    lines.push(`TLSCertificateKeyFile ${options.tls.keyFile}`);
  }
  // The database has no access rules, so slapd lets every client read every
  // entry and a bound user can search the groups.
  lines.push(
    'database mdb',
    'maxsize 16777216',
    `suffix "${SUFFIX}"`,
    `rootdn "${ROOT_DN}"`,
    `rootpw ${ROOT_PASSWORD}`,
    `directory ${path.join(dir, 'db')}`,
  );
  return lines.join('\n') + '\n';
}

/** One LDIF record: a DN and its attributes, in order. */
type LdifRecord = [dn: string, attributes: Array<[name: string, value: string]>];

function fixtureLdif(): string {
  const person = (user: FixtureUser, uid: string, cn: string): LdifRecord => [
    user.dn,
    [
      ['objectClass', 'inetOrgPerson'],
      ['uid', uid],
      ['cn', cn],
      ['sn', cn],
      ['userPassword', sshaHash(user.password)],
    ],
  ];
  const records: LdifRecord[] = [
    [
      SUFFIX,
      [
        ['objectClass', 'dcObject'],
        ['objectClass', 'organization'],
        ['dc', 'mcr'],
        ['o', 'mcr tests'],
      ],
    ],
    [
      PEOPLE_DN,
      [
        ['objectClass', 'organizationalUnit'],
        ['ou', 'people'],
      ],
    ],
    [
      TRICKY_OU_DN,
      [
        ['objectClass', 'organizationalUnit'],
        ['ou', 'x*)(cn=mcr-admins)(cn=x'],
      ],
    ],
    person(USERS.alice, 'alice', 'Alice'),
    person(USERS.bob, 'bob', 'Bob'),
    person(USERS.carol, 'carol', 'Carol'),
    person(USERS.dave, 'dave', 'Dave'),
    person(USERS.frank, 'frank', 'Frank'),
    person(USERS.special, SPECIAL_UID, 'Special'),
    [
      GROUPS_DN,
      [
        ['objectClass', 'organizationalUnit'],
        ['ou', 'groups'],
      ],
    ],
    [
      `cn=mcr-admins,${GROUPS_DN}`,
      [
        ['objectClass', 'groupOfNames'],
        ['cn', 'mcr-admins'],
        ['member', USERS.alice.dn],
      ],
    ],
    [
      `cn=mcr-users,${GROUPS_DN}`,
      [
        ['objectClass', 'groupOfNames'],
        ['cn', 'mcr-users'],
        ['member', USERS.bob.dn],
        ['member', USERS.frank.dn],
      ],
    ],
    [
      `cn=mcr-developers,${GROUPS_DN}`,
      [
        ['objectClass', 'posixGroup'],
        ['cn', 'mcr-developers'],
        ['gidNumber', '5001'],
        ['memberUid', 'dave'],
      ],
    ],
  ];
  return records.map(([dn, attributes]) => formatLdifRecord(dn, attributes)).join('\n');
}

function formatLdifRecord(dn: string, attributes: Array<[string, string]>): string {
  const lines = [formatLdifLine('dn', dn)];
  for (const [name, value] of attributes) lines.push(formatLdifLine(name, value));
  return lines.join('\n') + '\n';
}

/**
 * Formats `name: value`, or `name:: base64` for values that RFC 2849 does not
 * allow as plain text (NUL, CR, LF, non-ASCII, a leading space, colon or `<`)
 * or that end with a space, which it recommends encoding.
 */
function formatLdifLine(name: string, value: string): string {
  const hasUnsafeChar = [...value].some((char) => {
    const code = char.codePointAt(0) ?? 0;
    return code === 0 || code === 10 || code === 13 || code > 0x7f;
  });
  const isSafe = !hasUnsafeChar && !/^[ :<]/.test(value) && !value.endsWith(' ');
  if (isSafe) return `${name}: ${value}`;
  return `${name}:: ${Buffer.from(value, 'utf8').toString('base64')}`;
}

/** Hashes a password in OpenLDAP's {SSHA} scheme: base64 of SHA-1(password + salt) + salt. */
function sshaHash(password: string): string {
  const salt = randomBytes(8);
  const digest = createHash('sha1').update(password, 'utf8').update(salt).digest();
  return `{SSHA}${Buffer.concat([digest, salt]).toString('base64')}`;
}

/**
 * Writes a certificate authority and a server certificate for 127.0.0.1
 * signed by it, using the openssl command. Returns the PEM file paths.
 */
export async function createTestCertificates(
  dir: string,
): Promise<{ caFile: string; certFile: string; keyFile: string }> {
  const caKey = path.join(dir, 'ca-key.pem');
  const caFile = path.join(dir, 'ca.pem');
  const keyFile = path.join(dir, 'server-key.pem');
  const requestFile = path.join(dir, 'server.csr');
  const certFile = path.join(dir, 'server.pem');
  const extensionsFile = path.join(dir, 'server.ext');
  writeFileSync(
    extensionsFile,
    'subjectAltName = IP:127.0.0.1\nextendedKeyUsage = serverAuth\nbasicConstraints = CA:FALSE\n',
  );

  const openssl = (...args: string[]) => run('openssl', args, { timeoutMs: 60_000 });
  await openssl(
    'req',
    '-x509',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    caKey,
    '-out',
    caFile,
    '-days',
    '2',
    '-subj',
    '/CN=mcr test CA',
  );
  await openssl(
    'req',
    '-newkey',
    'rsa:2048',
    '-nodes',
    '-keyout',
    keyFile,
    '-out',
    requestFile,
    '-subj',
    '/CN=127.0.0.1',
  );
  await openssl(
    'x509',
    '-req',
    '-in',
    requestFile,
    '-CA',
    caFile,
    '-CAkey',
    caKey,
    '-CAcreateserial',
    '-out',
    certFile,
    '-days',
    '2',
    '-extfile',
    extensionsFile,
  );
  return { caFile, certFile, keyFile };
}
