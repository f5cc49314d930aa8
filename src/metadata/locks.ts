import type { Kysely } from 'kysely';

import type { Database } from './schema.js';

/**
 * Named locks in the database, so that they hold across processes. A lock
 * expires at `expires_at` unless its holder renews it, so a crashed holder
 * cannot keep it forever.
 */
export class Locks {
  constructor(private readonly db: Kysely<Database>) {}

  /** Takes the lock for `ttlMs` unless another holder has it; returns whether it was taken. */
  async acquire(name: string, holder: string, ttlMs: number): Promise<boolean> {
    const now = Date.now();
    const row = await this.db
      .insertInto('locks')
      .values({ name, holder, acquired_at: now, expires_at: now + ttlMs })
      .onConflict((oc) =>
        oc
          .column('name')
          .doUpdateSet({ holder, acquired_at: now, expires_at: now + ttlMs })
          .where((eb) =>
            eb.or([eb('locks.expires_at', '<', now), eb('locks.holder', '=', holder)]),
          ),
      )
      .returning('holder')
      .executeTakeFirst();
    return row?.holder === holder;
  }

  /** Extends a held lock; returns false when the lock was lost (expired and taken). */
  async renew(name: string, holder: string, ttlMs: number): Promise<boolean> {
    const result = await this.db
      .updateTable('locks')
      .set({ expires_at: Date.now() + ttlMs })
      .where('name', '=', name)
      .where('holder', '=', holder)
      .executeTakeFirst();
    return result.numUpdatedRows > 0n;
  }

  async release(name: string, holder: string): Promise<void> {
    await this.db
      .deleteFrom('locks')
      .where('name', '=', name)
      .where('holder', '=', holder)
      .execute();
  }
}
