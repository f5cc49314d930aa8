import { createHash } from 'node:crypto';

import type { Logger } from 'pino';

import type { AuditLog } from '../audit/log.js';

import type { Account, Accounts } from './accounts.js';
import { TOKEN_PREFIX, type AccessTokens } from './access-tokens.js';
import { ACCOUNT_NAME_PATTERN, type IdentityProvider } from './identity.js';
import { verifyPassword } from './passwords.js';
import type { PolicyAction } from './policy.js';
import type { LoginThrottle } from './throttle.js';

/** The result of a successful login: the account and, for an access token, its limits. */
export interface Principal {
  account: Account;
  /** Actions an access token is limited to; null when a password or an unlimited token was used. */
  tokenScopes: PolicyAction[] | null;
  /** The kind of credential the caller presented. */
  method: 'password' | 'access-token';
  /** When the credential stops working, for an expiring access token. */
  expiresAt?: number;
  /** The access token's id, when one was used. */
  tokenId?: number;
}

/** A login that failed; `reason` is for logs and never reaches the client in detail. */
export class LoginError extends Error {
  constructor(readonly reason: 'invalid-credentials' | 'disabled' | 'provider-failed') {
    super('invalid username or password');
    this.name = 'LoginError';
  }
}

export { ThrottledError } from './throttle.js';

/**
 * A verified login kept in memory. When it is older than CREDENTIAL_CACHE_MS,
 * or `checked` (the database's count of other processes' commits when it was
 * last checked) has moved, it is checked against the database again before
 * use: a local password by comparing the stored argon2 hash with the one it
 * was verified against, an access token by verifying it again. Neither runs
 * argon2. A directory login is verified with the directory again once old.
 */
interface RememberedLogin {
  principal: Principal;
  /** The argon2 hash a local password was verified against. */
  passwordHash?: string;
  expiresAt: number;
  checked: number | undefined;
}

/** A successful verification, with the hash a local password matched. */
type Verified = Principal & { passwordHash?: string };

/**
 * How long a remembered login is used without reading the database, so that
 * a client sending Basic credentials on every request pays neither for argon2
 * nor for a database read each time. Changing or disabling an account or
 * revoking a token through this process drops the entry at once. A commit
 * by another process makes the next use check the entry.
 */
const CREDENTIAL_CACHE_MS = 30_000;
const CREDENTIAL_CACHE_MAX = 10_000;

/** Returns when a login verified now is due to be checked again. */
function loginExpiry(principal: Principal): number {
  return Math.min(Date.now() + CREDENTIAL_CACHE_MS, principal.expiresAt ?? Infinity);
}

/** Checks usernames with passwords or access tokens, with throttling and a short cache. */
export class Authenticator {
  /** Verified logins by a hash of their credentials. */
  private readonly cache = new Map<string, RememberedLogin>();

  /** Accounts named by bearer tokens, by username, checked like `cache`. */
  private readonly tokenAccounts = new Map<
    string,
    { account: Account; expiresAt: number; checked: number | undefined }
  >();
  /**
   * Verifications under way by a hash of their credentials, with the change
   * counters as they were when each started.
   */
  private readonly inFlight = new Map<
    string,
    { attempt: Promise<Principal>; external: number | undefined; local: number }
  >();
  /** Calls of forgetAccount so far, so that a login verified across one is not remembered. */
  private localChanges = 0;
  private readonly queues = new Map<string, Promise<unknown>>();

  constructor(
    private readonly accounts: Accounts,
    private readonly tokens: AccessTokens,
    private readonly provider: IdentityProvider | undefined,
    private readonly throttle: LoginThrottle,
    private readonly log: Logger,
    private readonly audit?: AuditLog,
    /** Counts commits of other processes to the database, where the database can tell. */
    private readonly externalChanges?: () => number,
  ) {
    accounts.onChange = (accountId) => this.forgetAccount(accountId);
  }

  /**
   * Logs a caller in with a username and a password or access token. Throws
   * ThrottledError after too many failures and LoginError for anything else
   * that is wrong.
   */
  async login(username: string, secret: string, address: string): Promise<Principal> {
    // PostgreSQL cannot store a NUL character, and the throttle and the audit
    // log record the name. No account name contains one, so the login fails
    // either way.
    username = username.replaceAll('\0', '\uFFFD');
    const cacheKey = createHash('sha256').update(`${username}\0${secret}`).digest('hex');
    const cached = await this.remembered(cacheKey, secret);
    if (cached) return cached;

    // Identical credentials arriving together share one verification, unless
    // an account changed since it started, because it may have read the
    // account before the change. The logins of one account run one at a
    // time, so that each reads the failures recorded before it.
    const external = this.externalChanges?.();
    const pending = this.inFlight.get(cacheKey);
    if (pending && pending.external === external && pending.local === this.localChanges) {
      return pending.attempt;
    }
    const entry = {
      attempt: this.serialize(username, () => this.attempt(username, secret, address, cacheKey)),
      external,
      local: this.localChanges,
    };
    this.inFlight.set(cacheKey, entry);
    try {
      return await entry.attempt;
    } finally {
      if (this.inFlight.get(cacheKey) === entry) this.inFlight.delete(cacheKey);
    }
  }

  private async attempt(
    username: string,
    secret: string,
    address: string,
    cacheKey: string,
  ): Promise<Principal> {
    const cached = await this.remembered(cacheKey, secret);
    if (cached) return cached;

    // Read before the account is read, so that a change committed during the
    // verification leaves the counters different from what the entry records.
    const checked = this.externalChanges?.();
    const localChanges = this.localChanges;

    try {
      await this.throttle.check(username, address);
    } catch (error) {
      await this.audit?.record({
        type: 'login',
        actor: username.slice(0, 64),
        clientAddress: address,
        outcome: 'denied',
        details: { reason: 'throttled' },
      });
      throw error;
    }

    let principal: Verified;
    try {
      principal = await this.verify(username, secret);
    } catch (error) {
      if (!(error instanceof LoginError)) throw error;
      await this.throttle.failed(username, address);
      this.log.warn(
        { account: username.slice(0, 64), client: address, reason: error.reason },
        'login failed',
      );
      await this.audit?.record({
        type: 'login',
        actor: username.slice(0, 64),
        clientAddress: address,
        outcome: 'failure',
        details: { reason: error.reason },
      });
      throw error;
    }

    await this.throttle.succeeded(username);
    await this.audit?.record({
      type: 'login',
      actor: username,
      clientAddress: address,
      outcome: 'success',
      details: { method: principal.method },
    });
    const { passwordHash, ...verified } = principal;
    // An account changed in this process during the verification is not
    // remembered: forgetAccount ran before there was an entry to drop.
    if (this.localChanges !== localChanges) return verified;
    if (this.cache.size >= CREDENTIAL_CACHE_MAX) this.cache.clear();
    this.cache.set(cacheKey, {
      principal: verified,
      passwordHash,
      expiresAt: loginExpiry(verified),
      checked,
    });
    return verified;
  }

  /** Returns the principal of a remembered login, checking it again when it is due. */
  private async remembered(cacheKey: string, secret: string): Promise<Principal | undefined> {
    const entry = this.cache.get(cacheKey);
    if (entry === undefined) return undefined;
    const expired = entry.expiresAt <= Date.now();
    const changes = this.externalChanges?.();
    if (!expired && changes === entry.checked) return entry.principal;

    const directoryLogin = entry.principal.method === 'password' && !entry.passwordHash;
    const principal = expired && directoryLogin ? undefined : await this.recheck(entry, secret);
    if (principal === undefined) {
      this.cache.delete(cacheKey);
      return undefined;
    }
    entry.principal = principal;
    entry.checked = changes;
    entry.expiresAt = loginExpiry(principal);
    return principal;
  }

  /** Checks a remembered login against the database, without argon2. */
  private async recheck(entry: RememberedLogin, secret: string): Promise<Principal | undefined> {
    const { principal } = entry;
    if (principal.method === 'access-token') {
      const found = await this.tokens.verify(secret);
      if (!found || found.account.id !== principal.account.id || found.account.disabled) {
        return undefined;
      }
      return { ...principal, account: found.account };
    }
    if (entry.passwordHash) {
      const local = await this.accounts.passwordHash(principal.account.username);
      if (
        !local ||
        local.hash !== entry.passwordHash ||
        local.account.id !== principal.account.id ||
        local.account.disabled
      ) {
        return undefined;
      }
      return { ...principal, account: local.account };
    }
    // A directory login: any change to the account moves its updated_at.
    const account = await this.accounts.findById(principal.account.id);
    if (!account || account.disabled || account.updatedAt !== principal.account.updatedAt) {
      return undefined;
    }
    return principal;
  }

  /** Runs `operation` after every earlier login of the same account has finished. */
  private async serialize<T>(username: string, operation: () => Promise<T>): Promise<T> {
    const key = username.slice(0, 128);
    const previous = this.queues.get(key) ?? Promise.resolve();
    const current = previous.catch(() => undefined).then(operation);
    this.queues.set(key, current);
    try {
      return await current;
    } finally {
      if (this.queues.get(key) === current) this.queues.delete(key);
    }
  }

  /** Drops every remembered login of an account (after it is changed or a token revoked). */
  forgetAccount(accountId: number): void {
    this.localChanges += 1;
    for (const [key, entry] of this.cache) {
      if (entry.principal.account.id === accountId) this.cache.delete(key);
    }
    for (const [username, entry] of this.tokenAccounts) {
      if (entry.account.id === accountId) this.tokenAccounts.delete(username);
    }
  }

  /**
   * Returns the account a bearer token names, if it exists and is enabled,
   * remembering it for as long as a verified password.
   */
  async tokenAccount(username: string): Promise<Account | undefined> {
    const entry = this.tokenAccounts.get(username);
    const changes = this.externalChanges?.();
    if (entry && entry.expiresAt > Date.now() && entry.checked === changes) return entry.account;
    const localChanges = this.localChanges;
    const account = await this.accounts.findByName(username);
    if (!account || account.disabled) {
      this.tokenAccounts.delete(username);
      return undefined;
    }
    if (this.localChanges !== localChanges) return account;
    if (this.tokenAccounts.size >= CREDENTIAL_CACHE_MAX) this.tokenAccounts.clear();
    this.tokenAccounts.set(username, {
      account,
      expiresAt: Date.now() + CREDENTIAL_CACHE_MS,
      checked: changes,
    });
    return account;
  }

  private async verify(username: string, secret: string): Promise<Verified> {
    // No account can have such a name, so no hash needs computing.
    if (!ACCOUNT_NAME_PATTERN.test(username)) throw new LoginError('invalid-credentials');

    if (secret.startsWith(TOKEN_PREFIX)) {
      // No token contains a NUL character, and PostgreSQL rejects one in a query.
      if (secret.includes('\0')) throw new LoginError('invalid-credentials');
      const found = await this.tokens.verify(secret);
      if (!found || found.account.username !== username) {
        throw new LoginError('invalid-credentials');
      }
      return {
        account: found.account,
        tokenScopes: found.token.scopes,
        method: 'access-token',
        expiresAt: found.token.expiresAt ?? undefined,
        tokenId: found.token.id,
      };
    }

    // Local accounts with a password (the first admin among them) always log
    // in locally, so a directory outage cannot lock the operator out.
    const local = await this.accounts.passwordHash(username);
    if (local && local.hash !== null) {
      if (!(await verifyPassword(local.hash, secret))) throw new LoginError('invalid-credentials');
      if (local.account.disabled) throw new LoginError('disabled');
      return {
        account: local.account,
        tokenScopes: null,
        method: 'password',
        passwordHash: local.hash,
      };
    }

    if (!this.provider) throw new LoginError('invalid-credentials');
    let identity;
    try {
      identity = await this.provider.authenticate(username, secret);
    } catch (error) {
      this.log.error(
        { err: error, provider: this.provider.name, account: username },
        'identity provider failed',
      );
      throw new LoginError('provider-failed');
    }
    if (!identity) throw new LoginError('invalid-credentials');
    if (local?.account.disabled) throw new LoginError('disabled');
    const account = await this.accounts.upsertExternal(identity, this.provider.name);
    return { account, tokenScopes: null, method: 'password' };
  }
}
