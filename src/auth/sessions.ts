import { createHash, randomBytes } from 'node:crypto';

import type { Kysely } from 'kysely';

import { runTransaction } from '../metadata/db.js';
import type { Dialect } from '../metadata/migrations.js';
import type { Database } from '../metadata/schema.js';
import type { Account, Accounts } from './accounts.js';

/** Every session token starts with this, so it is recognisable in a header. */
export const SESSION_PREFIX = 'mcr_sess_';

/** How long a session lasts without use, and at most, in milliseconds. */
export const SESSION_TTL_MS = 12 * 3_600_000;

function secretHash(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}

/** Login sessions of the CLI and the web UI, stored as hashes of their tokens. */
export class Sessions {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly dialect: Dialect,
    private readonly accounts: Accounts,
  ) {}

  /**
   * Opens a session for an account as the login read it; the token is
   * returned once. Returns undefined, opening nothing, when the account
   * changed (a new password, say), was disabled or was deleted since.
   */
  async create(account: Account): Promise<{ token: string; expiresAt: number } | undefined> {
    const token = SESSION_PREFIX + randomBytes(32).toString('base64url');
    const now = Date.now();
    const expiresAt = now + SESSION_TTL_MS;
    return runTransaction(this.db, async (trx) => {
      // On PostgreSQL, the lock makes a concurrent change wait for this
      // commit, so that a new password's deletion of sessions covers this one.
      let query = trx
        .selectFrom('accounts')
        .select('id')
        .where('id', '=', account.id)
        .where('updated_at', '=', account.updatedAt)
        .where('disabled', '=', 0);
      if (this.dialect === 'postgres') query = query.forShare();
      if ((await query.executeTakeFirst()) === undefined) return undefined;
      await trx
        .insertInto('sessions')
        .values({
          account_id: account.id,
          secret_sha256: secretHash(token),
          created_at: now,
          expires_at: expiresAt,
          last_used_at: now,
        })
        .execute();
      return { token, expiresAt };
    });
  }

  /** Returns the session's account when the token is known, unexpired and the account enabled. */
  async verify(token: string): Promise<Account | undefined> {
    if (!token.startsWith(SESSION_PREFIX)) return undefined;
    const row = await this.db
      .selectFrom('sessions')
      .selectAll()
      .where('secret_sha256', '=', secretHash(token))
      .executeTakeFirst();
    if (!row || row.expires_at <= Date.now()) return undefined;
    const account = await this.accounts.findById(row.account_id);
    if (!account || account.disabled) return undefined;
    return account;
  }

  /** Ends a session; returns false when the token was not a live session. */
  async delete(token: string): Promise<boolean> {
    const result = await this.db
      .deleteFrom('sessions')
      .where('secret_sha256', '=', secretHash(token))
      .executeTakeFirst();
    return result.numDeletedRows > 0n;
  }
}
