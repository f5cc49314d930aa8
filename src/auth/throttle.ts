import type { Kysely } from 'kysely';

import type { Database } from '../metadata/schema.js';

/** A login attempt turned away because of earlier failures. */
export class ThrottledError extends Error {
  constructor(readonly retryAfterSeconds: number) {
    super(`too many failed logins; try again in ${retryAfterSeconds} seconds`);
    this.name = 'ThrottledError';
  }
}

/**
 * Counts failed logins per account and per client address in fixed windows,
 * in the database so that every process sees the same counts. After
 * `maxFailures` failures for an account, or `maxAddressFailures` from one
 * address, within a window, attempts under that key are turned away until the
 * window ends. The address limit is the higher one because many users can
 * share an address behind NAT. A limit of 0 turns its check off.
 */
export class LoginThrottle {
  constructor(
    private readonly db: Kysely<Database>,
    private readonly maxFailures: number,
    private readonly maxAddressFailures: number,
    private readonly windowMs: number,
  ) {}

  /** Throws ThrottledError when the account or the address is over its limit. */
  async check(username: string, address: string): Promise<void> {
    if (this.maxFailures === 0 && this.maxAddressFailures === 0) return;
    const now = Date.now();
    const rows = await this.db
      .selectFrom('auth_failures')
      .selectAll()
      .where('key', 'in', keys(username, address))
      .execute();
    for (const row of rows) {
      const limit = row.key.startsWith('account:') ? this.maxFailures : this.maxAddressFailures;
      const windowEnd = row.window_start + this.windowMs;
      if (limit > 0 && windowEnd > now && row.failures >= limit) {
        throw new ThrottledError(Math.ceil((windowEnd - now) / 1000));
      }
    }
  }

  async recordFailure(username: string, address: string): Promise<void> {
    if (this.maxFailures === 0 && this.maxAddressFailures === 0) return;
    const now = Date.now();
    const windowStart = now - this.windowMs;
    for (const key of keys(username, address)) {
      await this.db
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
        .execute();
    }
  }

  /** Clears an account's failures after a successful login; the address keeps its count. */
  async recordSuccess(username: string): Promise<void> {
    if (this.maxFailures === 0) return;
    await this.db.deleteFrom('auth_failures').where('key', '=', `account:${username}`).execute();
  }
}

function keys(username: string, address: string): string[] {
  return [`account:${username}`, `address:${address}`];
}
