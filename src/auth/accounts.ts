import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import path from 'node:path';

import type { Kysely, Selectable } from 'kysely';
import type { Logger } from 'pino';

import { ConfigError } from '../config/index.js';
import { runTransaction } from '../metadata/db.js';
import type { AccountsTable, Database } from '../metadata/schema.js';
import {
  ACCOUNT_KINDS,
  ACCOUNT_NAME_PATTERN,
  ROLES,
  type AccountKind,
  type Identity,
  type Role,
} from './identity.js';
import { hashPassword } from './passwords.js';

/** An account without its password hash, which stays in this module. */
export interface Account {
  id: number;
  username: string;
  role: Role;
  kind: AccountKind;
  provider: string;
  disabled: boolean;
  createdAt: number;
  updatedAt: number;
}

/** A rejected account change; the message names the field and the reason. */
export class AccountError extends Error {
  constructor(
    message: string,
    readonly reason: 'invalid' | 'conflict' | 'not_found',
  ) {
    super(message);
    this.name = 'AccountError';
  }
}

/** Minimum length of a local password. */
export const MIN_PASSWORD_LENGTH = 8;

/** Name of the file, in the data directory, that receives a generated admin password. */
export const ADMIN_PASSWORD_FILE = 'admin-password';

export function validateUsername(username: string): void {
  if (!ACCOUNT_NAME_PATTERN.test(username)) {
    throw new AccountError(
      `invalid username "${username.slice(0, 80)}": use 1 to 64 lower-case letters, digits, ".", "_" or "-", starting with a letter or digit`,
      'invalid',
    );
  }
}

function validatePassword(password: string): void {
  if (password.length < MIN_PASSWORD_LENGTH) {
    throw new AccountError(
      `password is too short: use at least ${MIN_PASSWORD_LENGTH} characters`,
      'invalid',
    );
  }
}

/** Accounts in the metadata database. */
export class Accounts {
  /** Called with an account id whenever the account changes, so caches can drop it. */
  onChange: (accountId: number) => void = () => undefined;

  constructor(
    private readonly db: Kysely<Database>,
    private readonly log: Logger,
  ) {}

  async findByName(username: string): Promise<Account | undefined> {
    const row = await this.db
      .selectFrom('accounts')
      .selectAll()
      .where('username', '=', username)
      .executeTakeFirst();
    return row ? toAccount(row) : undefined;
  }

  async findById(id: number): Promise<Account | undefined> {
    const row = await this.db
      .selectFrom('accounts')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirst();
    return row ? toAccount(row) : undefined;
  }

  /** Returns the argon2 hash of a local account's password, if it has one. */
  async passwordHash(
    username: string,
  ): Promise<{ account: Account; hash: string | null } | undefined> {
    const row = await this.db
      .selectFrom('accounts')
      .selectAll()
      .where('username', '=', username)
      .executeTakeFirst();
    return row ? { account: toAccount(row), hash: row.password_hash } : undefined;
  }

  /** Lists accounts by username, optionally a page of `limit` after `after`. */
  async list(limit?: number, after?: string): Promise<Account[]> {
    let query = this.db.selectFrom('accounts').selectAll().orderBy('username');
    if (after !== undefined) query = query.where('username', '>', after);
    if (limit !== undefined) query = query.limit(limit);
    return (await query.execute()).map(toAccount);
  }

  /** Creates a local account. */
  async create(input: {
    username: string;
    password?: string;
    role: Role;
    kind: AccountKind;
  }): Promise<Account> {
    validateUsername(input.username);
    validateRole(input.role);
    validateKind(input.kind);
    if (input.kind === 'human' && input.password === undefined) {
      throw new AccountError('a human account needs a password', 'invalid');
    }
    if (input.password !== undefined) validatePassword(input.password);

    const passwordHash = input.password === undefined ? null : await hashPassword(input.password);
    const now = Date.now();
    const row = await this.db
      .insertInto('accounts')
      .values({
        username: input.username,
        password_hash: passwordHash,
        role: input.role,
        kind: input.kind,
        provider: 'local',
        disabled: 0,
        created_at: now,
        updated_at: now,
      })
      .onConflict((oc) => oc.column('username').doNothing())
      .returningAll()
      .executeTakeFirst();
    if (!row) throw new AccountError(`account ${input.username} already exists`, 'conflict');

    this.log.info(
      { account: input.username, role: input.role, kind: input.kind },
      'account created',
    );
    return toAccount(row);
  }

  /**
   * Changes an account's role, kind, password or disabled flag. A password
   * change also ends the account's login sessions.
   */
  async update(
    username: string,
    changes: { role?: Role; kind?: AccountKind; disabled?: boolean; password?: string },
  ): Promise<Account> {
    if (changes.role !== undefined) validateRole(changes.role);
    if (changes.kind !== undefined) validateKind(changes.kind);
    if (changes.password !== undefined) validatePassword(changes.password);

    const passwordHash =
      changes.password !== undefined ? await hashPassword(changes.password) : undefined;
    const row = await runTransaction(this.db, async (trx) => {
      const updated = await trx
        .updateTable('accounts')
        .set({
          ...(changes.role !== undefined ? { role: changes.role } : {}),
          ...(changes.kind !== undefined ? { kind: changes.kind } : {}),
          ...(changes.disabled !== undefined ? { disabled: changes.disabled ? 1 : 0 } : {}),
          ...(passwordHash !== undefined ? { password_hash: passwordHash } : {}),
          updated_at: Date.now(),
        })
        .where('username', '=', username)
        .returningAll()
        .executeTakeFirst();
      // A new password ends the account's login sessions, so that a client
      // that logged in with the old one has to log in again.
      if (updated && passwordHash !== undefined) {
        await trx.deleteFrom('sessions').where('account_id', '=', updated.id).execute();
      }
      return updated;
    });
    if (!row) throw new AccountError(`account ${username} not found`, 'not_found');

    this.onChange(row.id);
    this.log.info(
      {
        account: username,
        role: changes.role,
        kind: changes.kind,
        disabled: changes.disabled,
        passwordChanged: changes.password !== undefined,
      },
      'account updated',
    );
    return toAccount(row);
  }

  async delete(username: string): Promise<void> {
    const row = await this.db
      .deleteFrom('accounts')
      .where('username', '=', username)
      .returning('id')
      .executeTakeFirst();
    if (!row) throw new AccountError(`account ${username} not found`, 'not_found');
    this.onChange(row.id);
    this.log.info({ account: username }, 'account deleted');
  }

  /**
   * Records an identity an external provider confirmed: creates its account
   * on first login and keeps its role in step with the directory afterwards.
   */
  async upsertExternal(identity: Identity, provider: string): Promise<Account> {
    const now = Date.now();
    const row = await this.db
      .insertInto('accounts')
      .values({
        username: identity.username,
        password_hash: null,
        role: identity.role,
        kind: identity.kind,
        provider,
        disabled: 0,
        created_at: now,
        updated_at: now,
      })
      // updated_at moves only when the role does, because bearer tokens
      // issued before an account's last change stop working.
      .onConflict((oc) =>
        oc.column('username').doUpdateSet((eb) => ({
          role: identity.role,
          updated_at: eb
            .case()
            .when('accounts.role', '=', identity.role)
            .then(eb.ref('accounts.updated_at'))
            .else(now)
            .end(),
        })),
      )
      .returningAll()
      .executeTakeFirstOrThrow();
    return toAccount(row);
  }

  /**
   * Creates the `admin` account on first start, when no admin exists. The
   * password comes from `password` (MCR_ADMIN_PASSWORD) or is generated,
   * logged once and written to a 0600 file in the data directory.
   */
  async ensureAdmin(password: string | undefined, dataDir: string): Promise<void> {
    if (await this.hasAdmin()) return;

    const generated = password === undefined || password === '';
    const secret = generated ? randomBytes(18).toString('base64url') : password;
    try {
      await this.create({ username: 'admin', password: secret, role: 'admin', kind: 'human' });
    } catch (error) {
      // Another process starting on the same data directory created it first.
      if (error instanceof AccountError && error.reason === 'conflict' && (await this.hasAdmin())) {
        this.log.info({ account: 'admin' }, 'another process created the admin account');
        return;
      }
      if (error instanceof AccountError && error.reason === 'invalid') {
        throw new ConfigError(`invalid MCR_ADMIN_PASSWORD: ${error.message}`);
      }
      throw error;
    }

    if (generated) {
      const file = path.join(dataDir, ADMIN_PASSWORD_FILE);
      writeFileSync(file, `${secret}\n`, { mode: 0o600 });
      // The one place a secret is written to the log, on purpose: an operator
      // who starts mcr without MCR_ADMIN_PASSWORD has no other way to learn it.
      this.log.warn(
        { account: 'admin', passwordFile: file, generatedPassword: secret },
        'created the admin account with a generated password; change it after the first login',
      );
    } else {
      this.log.info({ account: 'admin' }, 'created the admin account with MCR_ADMIN_PASSWORD');
    }
  }

  private async hasAdmin(): Promise<boolean> {
    const admin = await this.db
      .selectFrom('accounts')
      .select('id')
      .where('role', '=', 'admin')
      .limit(1)
      .executeTakeFirst();
    return admin !== undefined;
  }
}

function validateRole(role: string): asserts role is Role {
  if (!(ROLES as readonly string[]).includes(role)) {
    throw new AccountError(`invalid role "${role}": use one of ${ROLES.join(', ')}`, 'invalid');
  }
}

function validateKind(kind: string): asserts kind is AccountKind {
  if (!(ACCOUNT_KINDS as readonly string[]).includes(kind)) {
    throw new AccountError(
      `invalid kind "${kind}": use one of ${ACCOUNT_KINDS.join(', ')}`,
      'invalid',
    );
  }
}

function toAccount(row: Selectable<AccountsTable>): Account {
  return {
    id: row.id,
    username: row.username,
    role: row.role,
    kind: row.kind,
    provider: row.provider,
    disabled: row.disabled !== 0,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}
