import type { Kysely } from 'kysely';

import type { Database } from '../metadata/schema.js';

/** A login attempt turned away because of earlier failures. */
export class ThrottledError extends Error {
  constructor(readonly retryAfterSeconds: number) {
    super(`too many failed logins; try again in ${retryAfterSeconds} seconds`);
    this.name = 'ThrottledError';
  }
}

/** How many attempts pass between two sweeps of expired counters. */
const SWEEP_EVERY = 200;

/**
 * Counts failed logins per account and per client address in fixed windows,
 * in the database so that every process reads the same counts. After
 * `maxFailures` failures for an account, or `maxAddressFailures` from one
 * address, within a window, attempts under that key are turned away until
 * the window ends. The address limit is the higher one because many users
 * can share an address behind NAT. A limit of 0 turns its check off. The
 * Authenticator runs the logins of one account one at a time, so parallel
 * attempts each see the failures before them.
 */
export class LoginThrottle {
  private attempts = 0;

  constructor(
    private readonly db: Kysely<Database>,
    private readonly maxFailures: number,
    private readonly maxAddressFailures: number,
    private readonly windowMs: number,
  ) {}

  private get enabled(): boolean {
    return this.maxFailures > 0 || this.maxAddressFailures > 0;
  }

  /** Throws ThrottledError when the account or the address is over its limit. */
  async check(username: string, address: string): Promise<void> {
    if (!this.enabled) return;
    const now = Date.now();
    this.attempts += 1;
    if (this.attempts % SWEEP_EVERY === 0) {
      await this.db
        .deleteFrom('auth_failures')
        .where('window_start', '<=', now - this.windowMs)
        .execute();
    }

    const rows = await this.db
      .selectFrom('auth_failures')
      .selectAll()
      .where('key', 'in', [accountKey(username), addressKey(address)])
      .execute();
    let retryAfter = 0;
    for (const row of rows) {
      const limit = row.key.startsWith('account:') ? this.maxFailures : this.maxAddressFailures;
      const windowEnd = row.window_start + this.windowMs;
      if (limit > 0 && windowEnd > now && row.failures >= limit) {
        retryAfter = Math.max(retryAfter, Math.ceil((windowEnd - now) / 1000));
      }
    }
    if (retryAfter > 0) throw new ThrottledError(retryAfter);
  }

  /** Counts a failed login under the account and the address. */
  async failed(username: string, address: string): Promise<void> {
    if (!this.enabled) return;
    const now = Date.now();
    await this.increment(accountKey(username), now);
    await this.increment(addressKey(address), now);
  }

  /** Clears the account's failures after a successful login; the address keeps its count. */
  async succeeded(username: string): Promise<void> {
    if (!this.enabled) return;
    await this.db.deleteFrom('auth_failures').where('key', '=', accountKey(username)).execute();
  }

  private async increment(
    key: string,
    now: number,
  ): Promise<{ failures: number; window_start: number }> {
    const windowStart = now - this.windowMs;
    return this.db
      .insertInto('auth_failures')
      .values({ key, window_start: now, failures: 1 })
      .onConflict((oc) =>
        oc.column('key').doUpdateSet((eb) => ({
          // A window that has ended starts over; otherwise the count grows.
          failures: eb
            .case()
            .when('auth_failures.window_start', '<=', windowStart)
            .then(1)
            .else(eb('auth_failures.failures', '+', 1))
            .end(),
          window_start: eb
            .case()
            .when('auth_failures.window_start', '<=', windowStart)
            .then(now)
            .else(eb.ref('auth_failures.window_start'))
            .end(),
        })),
      )
      .returning(['failures', 'window_start'])
      .executeTakeFirstOrThrow();
  }
}

// Keys are bounded: the username comes from the client.
function accountKey(username: string): string {
  return `account:${username.slice(0, 128)}`;
}

function addressKey(address: string): string {
  return `address:${address.slice(0, 64)}`;
}
