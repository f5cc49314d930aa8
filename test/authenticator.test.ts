// The credential cache of the authenticator against account changes that
// land while a login is being verified. The services run on a real SQLite
// database. Only the moment of the change is arranged: a wrapper around the
// account lookup, which the verification makes before argon2 runs, commits it.
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

import Database from 'better-sqlite3';
import { pino } from 'pino';

import { AccessTokens } from '../src/auth/access-tokens.js';
import { Accounts } from '../src/auth/accounts.js';
import { Authenticator, LoginError } from '../src/auth/authenticator.js';
import { LoginThrottle } from '../src/auth/throttle.js';
import { openMetadataDb } from '../src/metadata/db.js';

const PASSWORD = 'correct horse battery staple';

async function openServices() {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'mcr-authn-'));
  const file = path.join(dataDir, 'mcr.db');
  const metadata = await openMetadataDb({ driver: 'sqlite', dataDir });
  const log = pino({ level: 'silent' });
  const accounts = new Accounts(metadata.db, log);
  const tokens = new AccessTokens(metadata.db, accounts, log);
  const throttle = new LoginThrottle(metadata.db, 0, 0, 60_000);
  const authenticator = new Authenticator(
    accounts,
    tokens,
    undefined,
    throttle,
    log,
    undefined,
    metadata.externalChangeCounter,
  );
  await accounts.create({ username: 'alice', password: PASSWORD, role: 'user', kind: 'human' });
  return { file, metadata, accounts, authenticator };
}

describe('authenticator cache', () => {
  it('forgets a login disabled mid-verification', async () => {
    const { metadata, accounts, authenticator } = await openServices();
    try {
      // The account is disabled after the verification has read it, while
      // argon2 has still to run.
      const readHash = accounts.passwordHash.bind(accounts);
      accounts.passwordHash = async (username: string) => {
        const found = await readHash(username);
        await accounts.update('alice', { disabled: true });
        return found;
      };
      const first = await authenticator.login('alice', PASSWORD, '127.0.0.1');
      assert.equal(first.account.username, 'alice');
      accounts.passwordHash = readHash;

      await assert.rejects(
        authenticator.login('alice', PASSWORD, '127.0.0.1'),
        (error: unknown) => error instanceof LoginError && error.reason === 'disabled',
      );
    } finally {
      await metadata.close();
    }
  });

  it('forgets a login another process disabled', async () => {
    const { file, metadata, accounts, authenticator } = await openServices();
    // Another process: a second connection, whose commits reach this
    // process only through SQLite's data_version.
    const other = new Database(file);
    try {
      const readHash = accounts.passwordHash.bind(accounts);
      accounts.passwordHash = async (username: string) => {
        const found = await readHash(username);
        other.prepare("update accounts set disabled = 1 where username = 'alice'").run();
        return found;
      };
      await authenticator.login('alice', PASSWORD, '127.0.0.1');
      accounts.passwordHash = readHash;
      await new Promise((resolve) => setImmediate(resolve));

      await assert.rejects(
        authenticator.login('alice', PASSWORD, '127.0.0.1'),
        (error: unknown) => error instanceof LoginError && error.reason === 'disabled',
      );
    } finally {
      other.close();
      await metadata.close();
    }
  });

  for (const via of ['this process', 'another process'] as const) {
    it(`does not join a login begun before a change through ${via}`, async () => {
      const { file, metadata, accounts, authenticator } = await openServices();
      const other = new Database(file);
      try {
        // The first login stops after reading the account, until released.
        let release!: () => void;
        const gate = new Promise<void>((resolve) => (release = resolve));
        let reads = 0;
        const readHash = accounts.passwordHash.bind(accounts);
        accounts.passwordHash = async (username: string) => {
          const found = await readHash(username);
          reads += 1;
          if (reads === 1) await gate;
          return found;
        };
        const first = authenticator.login('alice', PASSWORD, '127.0.0.1');
        while (reads === 0) await new Promise((resolve) => setImmediate(resolve));

        if (via === 'this process') {
          await accounts.update('alice', { disabled: true });
        } else {
          other.prepare("update accounts set disabled = 1 where username = 'alice'").run();
        }
        // The second login arrives after the change, as a new request.
        metadata.onRequestArrival!();
        const second = authenticator.login('alice', PASSWORD, '127.0.0.1');
        release();

        assert.equal((await first).account.username, 'alice');
        await assert.rejects(
          second,
          (error: unknown) => error instanceof LoginError && error.reason === 'disabled',
        );
      } finally {
        other.close();
        await metadata.close();
      }
    });
  }

  it('remembers a login with no change', async () => {
    const { metadata, accounts, authenticator } = await openServices();
    try {
      await authenticator.login('alice', PASSWORD, '127.0.0.1');
      let reads = 0;
      const readHash = accounts.passwordHash.bind(accounts);
      accounts.passwordHash = async (username: string) => {
        reads += 1;
        return readHash(username);
      };
      const again = await authenticator.login('alice', PASSWORD, '127.0.0.1');
      assert.equal(again.account.username, 'alice');
      assert.equal(reads, 0, 'the second login read the account again');
    } finally {
      await metadata.close();
    }
  });
});
