import { createHash } from 'node:crypto';
import { closeSync, constants, ftruncateSync, openSync, readFileSync, writeSync } from 'node:fs';

import { sql, type Kysely, type Selectable, type Transaction } from 'kysely';
import type { Logger } from 'pino';

import type { Dialect } from '../metadata/migrations.js';
import { PreparedQuery } from '../metadata/prepared.js';
import type { AuditEventsTable, Database } from '../metadata/schema.js';

/** The outcome of an audited action. */
export type AuditOutcome = 'success' | 'failure' | 'denied';

/** An event to record; the log adds the time and the chain hashes. */
export interface AuditEventInput {
  type: string;
  actor?: string | null;
  clientAddress?: string | null;
  repository?: string | null;
  reference?: string | null;
  digest?: string | null;
  outcome: AuditOutcome;
  details?: Record<string, unknown>;
}

/** A stored audit event. */
export interface AuditEvent {
  id: number;
  time: number;
  type: string;
  actor: string | null;
  clientAddress: string | null;
  repository: string | null;
  reference: string | null;
  digest: string | null;
  outcome: AuditOutcome;
  details: Record<string, unknown>;
}

/** Filters of an audit listing; times are epoch milliseconds. */
export interface AuditFilter {
  type?: string;
  actor?: string;
  repository?: string;
  since?: number;
  until?: number;
  /** Only events with a smaller id (the cursor of newest-first paging). */
  beforeId?: number;
  limit: number;
}

/** The result of checking the hash chain. */
export interface AuditVerification {
  ok: boolean;
  checked: number;
  broken: { id: number; reason: string } | null;
}

const selectLastEvent = new PreparedQuery((db) =>
  db.selectFrom('audit_events').select(['id', 'hash']).orderBy('id', 'desc').limit(1),
);

const insertEvent = new PreparedQuery(
  (
    db,
    id: number,
    time: number,
    type: string,
    actor: string | null,
    clientAddress: string | null,
    repository: string | null,
    reference: string | null,
    digest: string | null,
    outcome: AuditOutcome,
    details: string,
    previousHash: string,
    hash: string,
  ) =>
    db.insertInto('audit_events').values({
      id,
      time,
      type,
      actor,
      client_address: clientAddress,
      repository,
      reference,
      digest,
      outcome,
      details,
      previous_hash: previousHash,
      hash,
    }),
);

/** The newest event of the chain. */
export interface AuditHead {
  id: number;
  hash: string;
}

/** previous_hash of the first event ever recorded. */
const GENESIS = '0'.repeat(64);

/**
 * The append-only audit log. Each row carries the SHA-256 of the previous
 * row's hash and its own fields (id included), so editing a row, or removing
 * one from the middle, breaks the chain at the next row; removing the newest
 * rows is caught by comparing with the head (id and hash) kept in a file in
 * the data directory. Retention pruning removes the oldest rows, and the chain
 * then verifies from the first kept row.
 */
export class AuditLog {
  private headWritten = 0;
  private headFd: number | undefined;
  private headLength = -1;

  constructor(
    private readonly db: Kysely<Database>,
    private readonly dialect: Dialect,
    private readonly headFile: string,
    private readonly log: Logger,
    readonly recordPulls: boolean,
  ) {}

  /** Appends an event. A failure to record is logged, never thrown at the caller. */
  async record(input: AuditEventInput): Promise<void> {
    try {
      const head = await this.db.transaction().execute((trx) => this.appendIn(trx, [input]));
      this.committed(head);
    } catch (error) {
      this.log.error({ err: error, auditType: input.type }, 'failed to record an audit event');
    }
  }

  /**
   * Appends events inside the caller's transaction, so that they commit or
   * roll back with the change they describe. Pass the result to `committed`
   * once the transaction has committed.
   */
  async appendIn(trx: Transaction<Database>, inputs: AuditEventInput[]): Promise<AuditHead> {
    if (this.dialect === 'postgres') {
      // Serialises appends across processes so the chain stays linear.
      await sql`select pg_advisory_xact_lock(7283002)`.execute(trx);
    }
    const last = await selectLastEvent.first(trx);
    // Ids are chosen here, not by the database, so that the hash that covers
    // each one goes in with its row. They follow the head file's event, so
    // that a table emptied by retention does not reuse an id the file names.
    let head: AuditHead = last ?? {
      id: Math.max(this.headWritten, readHead(this.headFile)?.id ?? 0),
      hash: GENESIS,
    };
    for (const input of inputs) {
      const row = {
        id: head.id + 1,
        time: Date.now(),
        type: input.type,
        actor: input.actor ?? null,
        client_address: input.clientAddress ?? null,
        repository: input.repository ?? null,
        reference: input.reference ?? null,
        digest: input.digest ?? null,
        outcome: input.outcome,
        details: JSON.stringify(input.details ?? {}),
        previous_hash: head.hash,
      };
      const hash = chainHash(head.hash, row);
      await insertEvent.execute(trx, ...chainFields(row), row.previous_hash, hash);
      head = { id: row.id, hash };
    }
    return head;
  }

  /** Records in the head file that events up to `head` are committed. */
  committed(head: AuditHead): void {
    // Transactions can commit out of order; the file only ever moves forward.
    if (head.id <= this.headWritten) return;
    this.headWritten = head.id;
    this.writeHead(`${head.id} ${head.hash}\n`);
  }

  /**
   * Overwrites the head file in place through a descriptor kept open:
   * truncating and rewriting the file took longer than the event's database
   * transaction.
   */
  private writeHead(line: string): void {
    if (this.headFd === undefined) {
      this.headFd = openSync(this.headFile, constants.O_WRONLY | constants.O_CREAT, 0o600);
    }
    const bytes = Buffer.from(line);
    writeSync(this.headFd, bytes, 0, bytes.length, 0);
    // Only the first write can meet a longer line, one an earlier process left.
    if (bytes.length !== this.headLength) ftruncateSync(this.headFd, bytes.length);
    this.headLength = bytes.length;
  }

  /** Closes the head file. */
  close(): void {
    if (this.headFd !== undefined) closeSync(this.headFd);
    this.headFd = undefined;
    this.headLength = -1;
  }

  /** Lists events newest first. */
  async list(filter: AuditFilter): Promise<AuditEvent[]> {
    let query = this.db
      .selectFrom('audit_events')
      .selectAll()
      .orderBy('id', 'desc')
      .limit(filter.limit);
    if (filter.type !== undefined) query = query.where('type', '=', filter.type);
    if (filter.actor !== undefined) query = query.where('actor', '=', filter.actor);
    if (filter.repository !== undefined) query = query.where('repository', '=', filter.repository);
    if (filter.since !== undefined) query = query.where('time', '>=', filter.since);
    if (filter.until !== undefined) query = query.where('time', '<', filter.until);
    if (filter.beforeId !== undefined) query = query.where('id', '<', filter.beforeId);
    return (await query.execute()).map(toEvent);
  }

  /**
   * Recomputes the chain from the oldest kept row and compares the newest row
   * with the head file. Names the first row that does not fit.
   */
  async verify(): Promise<AuditVerification> {
    let previous: { id: number; hash: string } | undefined;
    let checked = 0;
    const batch = 1000;
    for (;;) {
      let query = this.db.selectFrom('audit_events').selectAll().orderBy('id').limit(batch);
      if (previous) query = query.where('id', '>', previous.id);
      const rows = await query.execute();
      for (const row of rows) {
        if (previous && row.previous_hash !== previous.hash) {
          return broken(
            checked,
            row.id,
            `previous_hash does not match event ${previous.id}: an event before it was edited or removed`,
          );
        }
        if (previous && row.id !== previous.id + 1) {
          return broken(checked, row.id, `events ${previous.id + 1} to ${row.id - 1} are missing`);
        }
        if (chainHash(row.previous_hash, row) !== row.hash) {
          return broken(checked, row.id, 'its fields do not match its hash: the event was edited');
        }
        previous = { id: row.id, hash: row.hash };
        checked += 1;
      }
      if (rows.length < batch) break;
    }

    const head = readHead(this.headFile);
    if (head && (!previous || previous.id < head.id)) {
      return broken(checked, head.id, `the newest events up to ${head.id} were removed`);
    }
    if (head && previous && previous.id === head.id && previous.hash !== head.hash) {
      return broken(checked, head.id, 'the newest event does not match the recorded head');
    }
    return { ok: true, checked, broken: null };
  }

  /** Deletes events older than the cutoff; returns how many went. */
  async prune(olderThan: number): Promise<number> {
    const result = await this.db
      .deleteFrom('audit_events')
      .where('time', '<', olderThan)
      .executeTakeFirst();
    const deleted = Number(result.numDeletedRows);
    if (deleted > 0)
      this.log.info(
        { deleted, olderThan: new Date(olderThan).toISOString() },
        'pruned audit events',
      );
    return deleted;
  }
}

function broken(checked: number, id: number, reason: string): AuditVerification {
  return { ok: false, checked, broken: { id, reason: `event ${id}: ${reason}` } };
}

function readHead(file: string): AuditHead | undefined {
  try {
    const [id, hash] = readFileSync(file, 'utf8').trim().split(' ');
    return id && hash ? { id: Number(id), hash } : undefined;
  } catch {
    return undefined;
  }
}

/** Lists the fields of an event that its hash covers, in the order of the insert's arguments. */
function chainFields(row: Omit<Selectable<AuditEventsTable>, 'hash' | 'previous_hash'>) {
  return [
    row.id,
    row.time,
    row.type,
    row.actor,
    row.client_address,
    row.repository,
    row.reference,
    row.digest,
    row.outcome,
    row.details,
  ] as const;
}

function chainHash(
  previousHash: string,
  row: Omit<Selectable<AuditEventsTable>, 'hash' | 'previous_hash'> & { hash?: string },
): string {
  const fields = chainFields(row);
  return createHash('sha256')
    .update(`${previousHash}\n${JSON.stringify(fields)}`)
    .digest('hex');
}

function toEvent(row: Selectable<AuditEventsTable>): AuditEvent {
  return {
    id: row.id,
    time: row.time,
    type: row.type,
    actor: row.actor,
    clientAddress: row.client_address,
    repository: row.repository,
    reference: row.reference,
    digest: row.digest,
    outcome: row.outcome,
    details: JSON.parse(row.details) as Record<string, unknown>,
  };
}
