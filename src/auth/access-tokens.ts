import { createHash, randomBytes } from 'node:crypto';

import type { Kysely, Selectable } from 'kysely';
import type { Logger } from 'pino';

import type { AccessTokensTable, Database } from '../metadata/schema.js';
import { AccountError, type Account, type Accounts } from './accounts.js';
import { POLICY_ACTIONS, type PolicyAction } from './policy.js';

/** Every access token secret starts with this, so it is recognisable in a password field. */
export const TOKEN_PREFIX = 'mcr_pat_';

/** An access token's metadata; the secret is never stored. */
export interface AccessToken {
  id: number;
  accountId: number;
  name: string;
  /** Actions the token may use, or null for everything its account may do. */
  scopes: PolicyAction[] | null;
  expiresAt: number | null;
  lastUsedAt: number | null;
  revokedAt: number | null;
  createdAt: number;
}

/** Minimum age of last_used_at before a use writes it again, in milliseconds. */
const LAST_USED_RESOLUTION_MS = 60_000;

function secretHash(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}

/** Personal access tokens: named, revocable, optionally expiring secrets per account. */
export class AccessTokens {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly accounts: Accounts,
    private readonly log: Logger,
  ) {}

  /** Issues a token; the returned secret is shown once and cannot be read again. */
  async create(
    username: string,
    input: { name: string; expiresAt?: number | null; scopes?: PolicyAction[] | null },
  ): Promise<{ token: AccessToken; secret: string }> {
    const account = await this.accounts.findByName(username);
    if (!account) throw new AccountError(`account ${username} not found`, 'not_found');
    if (!/^[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}$/.test(input.name)) {
      throw new AccountError(
        'invalid token name: use 1 to 64 letters, digits, spaces, ".", "_" or "-"',
        'invalid',
      );
    }
    if (input.expiresAt != null && input.expiresAt <= Date.now()) {
      throw new AccountError('expiry must be in the future', 'invalid');
    }
    for (const scope of input.scopes ?? []) {
      if (!(POLICY_ACTIONS as readonly string[]).includes(scope)) {
        throw new AccountError(
          `invalid scope "${scope}": use ${POLICY_ACTIONS.join(', ')}`,
          'invalid',
        );
      }
    }

    const secret = TOKEN_PREFIX + randomBytes(32).toString('base64url');
    const row = await this.db
      .insertInto('access_tokens')
      .values({
        account_id: account.id,
        name: input.name,
        secret_sha256: secretHash(secret),
        scopes: input.scopes ? JSON.stringify(input.scopes) : null,
        expires_at: input.expiresAt ?? null,
        last_used_at: null,
        revoked_at: null,
        created_at: Date.now(),
      })
      .onConflict((oc) => oc.columns(['account_id', 'name']).doNothing())
      .returningAll()
      .executeTakeFirst();
    if (!row) {
      throw new AccountError(
        `account ${username} already has a token named "${input.name}"`,
        'conflict',
      );
    }
    this.log.info({ account: username, token: input.name, tokenId: row.id }, 'access token issued');
    return { token: toToken(row), secret };
  }

  /** Lists an account's tokens by id, optionally a page of `limit` after id `after`. */
  async list(username: string, limit?: number, after?: number): Promise<AccessToken[]> {
    let query = this.db
      .selectFrom('access_tokens')
      .innerJoin('accounts', 'accounts.id', 'access_tokens.account_id')
      .selectAll('access_tokens')
      .where('accounts.username', '=', username)
      .orderBy('access_tokens.id');
    if (after !== undefined) query = query.where('access_tokens.id', '>', after);
    if (limit !== undefined) query = query.limit(limit);
    return (await query.execute()).map(toToken);
  }

  /** Revokes a token by id; revoked tokens stay listed with their revocation time. */
  async revoke(username: string, id: number): Promise<AccessToken> {
    const account = await this.accounts.findByName(username);
    if (!account) throw new AccountError(`account ${username} not found`, 'not_found');
    const row = await this.db
      .updateTable('access_tokens')
      .set({ revoked_at: Date.now() })
      .where('id', '=', id)
      .where('account_id', '=', account.id)
      .where('revoked_at', 'is', null)
      .returningAll()
      .executeTakeFirst();
    if (!row) throw new AccountError(`account ${username} has no active token ${id}`, 'not_found');
    this.accounts.onChange(account.id);
    this.log.info({ account: username, tokenId: id, token: row.name }, 'access token revoked');
    return toToken(row);
  }

  /** Reports whether a token is unrevoked and unexpired. */
  async isActive(id: number): Promise<boolean> {
    const row = await this.db
      .selectFrom('access_tokens')
      .select(['revoked_at', 'expires_at'])
      .where('id', '=', id)
      .executeTakeFirst();
    if (!row || row.revoked_at !== null) return false;
    return row.expires_at === null || row.expires_at > Date.now();
  }

  /**
   * Looks up a secret. Returns the token and its account when the secret is
   * known, unrevoked, unexpired and its account enabled; records the use.
   */
  async verify(secret: string): Promise<{ token: AccessToken; account: Account } | undefined> {
    if (!secret.startsWith(TOKEN_PREFIX)) return undefined;
    const row = await this.db
      .selectFrom('access_tokens')
      .selectAll()
      .where('secret_sha256', '=', secretHash(secret))
      .executeTakeFirst();
    if (!row || row.revoked_at !== null) return undefined;

    const now = Date.now();
    if (row.expires_at !== null && row.expires_at <= now) return undefined;
    const account = await this.accounts.findById(row.account_id);
    if (!account || account.disabled) return undefined;

    if (row.last_used_at === null || now - row.last_used_at > LAST_USED_RESOLUTION_MS) {
      await this.db
        .updateTable('access_tokens')
        .set({ last_used_at: now })
        .where('id', '=', row.id)
        .execute();
      row.last_used_at = now;
    }
    return { token: toToken(row), account };
  }
}

function toToken(row: Selectable<AccessTokensTable>): AccessToken {
  return {
    id: row.id,
    accountId: row.account_id,
    name: row.name,
    scopes: row.scopes ? (JSON.parse(row.scopes) as PolicyAction[]) : null,
    expiresAt: row.expires_at,
    lastUsedAt: row.last_used_at,
    revokedAt: row.revoked_at,
    createdAt: row.created_at,
  };
}
