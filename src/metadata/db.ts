import { closeSync, mkdirSync, openSync, readSync } from 'node:fs';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Worker } from 'node:worker_threads';

import SqliteDatabase from 'better-sqlite3';
import {
  CompiledQuery,
  Kysely,
  PostgresDialect,
  SqliteDialect,
  type Driver,
  type Transaction,
  type SqliteDatabase as SqliteDialectDatabase,
} from 'kysely';

import { migrate, type Dialect } from './migrations.js';
import type { Database } from './schema.js';

/** An open metadata database with the dialect it speaks. */
export interface MetadataDb {
  db: Kysely<Database>;
  dialect: Dialect;
  /**
   * Returns a number that changes whenever any connection commits a write,
   * for caches of what the database holds. Where it is undefined, nothing may
   * be cached.
   */
  changeCounter?: () => number;
  /**
   * Like changeCounter, but counts commits of other connections (other
   * processes). On PostgreSQL it counts every commit, as changeCounter does.
   */
  externalChangeCounter?: () => number;
  /**
   * The server calls it as each request arrives and waits for it, so that
   * the counters a request reads include every commit made before it arrived.
   */
  onRequestArrival?: () => void | Promise<void>;
  /** The SQLite file, when the dialect is SQLite. */
  sqlitePath?: string;
  close(): Promise<void>;
}

export interface OpenOptions {
  driver: Dialect;
  /** Data directory; the SQLite file is `mcr.db` inside it. */
  dataDir: string;
  /** PostgreSQL connection URL. */
  url?: string;
  /**
   * Checkpoints SQLite's write-ahead log in a worker thread, so that
   * commits on the event loop wait for a checkpoint's writes and fsyncs only
   * when the log passes 4,000 pages. For the server; a short-lived command
   * needs no thread.
   */
  backgroundCheckpoints?: boolean;
  /** Called when background checkpoints fail and commits take them over again. */
  onCheckpointError?: (error: Error) => void;
  /**
   * Called when an idle PostgreSQL connection fails, as when the server
   * restarts or ends it. The pool opens another for the next query. Without
   * a listener, the failure would end the process.
   */
  onConnectionError?: (error: Error) => void;
  /**
   * How long a PostgreSQL statement, or a transaction left idle, may run
   * before the server cancels it, in milliseconds, or 0 for no limit.
   */
  statementTimeoutMs?: number;
  /**
   * How long to keep trying at start while PostgreSQL cannot be reached or
   * is still starting up, in milliseconds, or 0 to fail at the first attempt.
   */
  connectWaitMs?: number;
  /** Called before each new attempt while waiting for PostgreSQL at start. */
  onConnectRetry?: (error: Error, waitedMs: number) => void;
}

/** Raised when mcr cannot connect to PostgreSQL or bring its schema up to date at start. */
export class DatabaseOpenError extends Error {
  constructor(message: string, options: { cause: unknown }) {
    super(message, options);
    this.name = 'DatabaseOpenError';
  }
}

/** Opens the metadata database and brings its schema up to date. */
export async function openMetadataDb(options: OpenOptions): Promise<MetadataDb> {
  if (options.driver === 'sqlite') {
    const handle = await openSqlite(options);
    await migrate(handle.db, handle.dialect);
    return handle;
  }
  // NOTE: an attempt can take up to CONNECTION_TIMEOUT_MS to fail, so the
  // whole wait can pass connectWaitMs by that much.
  const started = Date.now();
  for (let attempt = 1; ; attempt += 1) {
    const handle = await openPostgres(options);
    try {
      await migrate(handle.db, handle.dialect);
      return handle;
    } catch (error) {
      await handle.close().catch(() => undefined);
      const waited = Date.now() - started;
      const delay = Math.min(attempt * CONNECT_RETRY_STEP_MS, CONNECT_RETRY_MAX_MS);
      if (!isDatabaseUnavailable(error) || waited + delay > (options.connectWaitMs ?? 0)) {
        throw new DatabaseOpenError(
          `failed to open the PostgreSQL database ${redactPassword(options.url ?? '')} (MCR_DATABASE_URL): ${(error as Error).message}`,
          { cause: error },
        );
      }
      options.onConnectRetry?.(error as Error, waited);
      await sleep(delay);
    }
  }
}

/**
 * Runs `work` in a transaction, and runs it again when PostgreSQL aborts it
 * for a conflict with a concurrent transaction. Conflicts are deadlocks
 * (40P01), serialization failures (40001) and foreign keys to rows that a
 * concurrent transaction deleted (23503), as when garbage collection deletes
 * a blob that a manifest push references. A new attempt reads afresh, so a
 * push that lost its blob fails with the registry's own error, and garbage
 * collection finds the new reference. `work` must change nothing outside the
 * transaction. SQLite runs one write transaction at a time and raises none
 * of these; there, `work` runs in the database's CommitGroup.
 */
export async function runTransaction<T>(
  db: Kysely<Database>,
  work: (trx: Transaction<Database>) => Promise<T>,
): Promise<T> {
  const group = commitGroups.get(db);
  if (group !== undefined) return group.run(work);
  for (let attempt = 1; ; attempt += 1) {
    try {
      return await db.transaction().execute(work);
    } catch (error) {
      const code = (error as { code?: unknown }).code;
      if (attempt >= TRANSACTION_ATTEMPTS || typeof code !== 'string') throw error;
      if (!CONFLICT_CODES.has(code)) throw error;
      // A random pause, so that two transactions that deadlocked do not meet again.
      await sleep(Math.random() * 20 * attempt);
    }
  }
}

const TRANSACTION_ATTEMPTS = 5;

/** The commit group of each SQLite database that runTransaction uses. */
const commitGroups = new WeakMap<Kysely<Database>, CommitGroup>();

/** Transactions that one commit takes at most. */
const MAX_GROUP = 64;

/**
 * Runs the transactions that requests start at about the same time in one
 * SQLite transaction, each inside a savepoint of its own, and commits them
 * together. SQLite runs one write transaction at a time anyway, and a commit
 * writes every page that the transaction changed to the write-ahead log. The
 * transactions of concurrent manifest pushes change the same pages (the
 * newest rows of each table and index), so one commit for all of them writes
 * each page once.
 *
 * A transaction that fails is rolled back to its savepoint, and the others go
 * on. No caller hears of success before the commit: if the commit fails, or
 * SQLite rolls the whole transaction back, every transaction of the group fails.
 */
class CommitGroup {
  private queue: Array<{
    work: (trx: Transaction<Database>) => Promise<unknown>;
    resolve: (value: unknown) => void;
    reject: (error: unknown) => void;
  }> = [];
  private scheduled = false;

  constructor(
    private readonly db: Kysely<Database>,
    private readonly sqlite: SqliteDatabase.Database,
  ) {}

  run<T>(work: (trx: Transaction<Database>) => Promise<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      this.queue.push({ work, resolve: resolve as (value: unknown) => void, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        // After the event loop has read what every connection sent, so that
        // the requests that arrived together join one group.
        setImmediate(() => void this.flush());
      }
    });
  }

  private async flush(): Promise<void> {
    const group = this.queue.splice(0, MAX_GROUP);
    const outcomes: Array<{ value: unknown } | { error: unknown }> = [];
    try {
      await this.db.transaction().execute(async (trx) => {
        for (const item of group) {
          await trx.executeQuery(SAVEPOINT);
          try {
            const value = await item.work(trx);
            await trx.executeQuery(RELEASE);
            outcomes.push({ value });
          } catch (error) {
            // Some errors, such as a full disk, end the whole transaction.
            if (!this.sqlite.inTransaction) throw error;
            await trx.executeQuery(ROLLBACK_TO);
            await trx.executeQuery(RELEASE);
            outcomes.push({ error });
          }
        }
      });
    } catch (error) {
      group.forEach((item, index) => {
        const outcome = outcomes[index];
        item.reject(outcome && 'error' in outcome ? outcome.error : error);
      });
      return;
    } finally {
      this.scheduled = this.queue.length > 0;
      if (this.scheduled) setImmediate(() => void this.flush());
    }
    group.forEach((item, index) => {
      const outcome = outcomes[index] as (typeof outcomes)[number];
      if ('error' in outcome) item.reject(outcome.error);
      else item.resolve(outcome.value);
    });
  }
}

const SAVEPOINT = CompiledQuery.raw('savepoint mcr_transaction');
const RELEASE = CompiledQuery.raw('release mcr_transaction');
const ROLLBACK_TO = CompiledQuery.raw('rollback to mcr_transaction');
const CONFLICT_CODES = new Set(['40P01', '40001', '23503']);

/** Pauses between attempts to reach PostgreSQL at start: 1 s, 2 s, and so on up to 5 s. */
const CONNECT_RETRY_STEP_MS = 1_000;
const CONNECT_RETRY_MAX_MS = 5_000;

/**
 * Reports whether an error means that the metadata database cannot be
 * reached, is starting or shutting down, or is too busy to respond. Such
 * errors are PostgreSQL's connection exceptions (SQLSTATE class 08), operator
 * interventions (57P), cancelled statements (57014, the statement timeout),
 * too many connections (53300), network failures, no pool connection within
 * the timeout, and SQLite still locked after its busy timeout.
 */
export function isDatabaseUnavailable(error: unknown): boolean {
  const code = (error as { code?: unknown } | undefined)?.code;
  if (typeof code === 'string' && UNAVAILABLE_CODES.test(code)) return true;
  const message = error instanceof Error ? error.message : '';
  return (
    message.startsWith('Connection terminated') ||
    message === 'timeout exceeded when trying to connect'
  );
}

const UNAVAILABLE_CODES =
  /^(08[0-9A-Z]{3}|57P0[1-3]|57014|53300|ECONNREFUSED|ECONNRESET|ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|ENOTFOUND|EAI_AGAIN|SQLITE_BUSY)$/;

/** Returns a connection URL with its password, if any, replaced by `***`. */
function redactPassword(url: string): string {
  try {
    const parsed = new URL(url);
    if (parsed.password !== '') parsed.password = '***';
    return parsed.toString();
  } catch {
    return '(an invalid URL)';
  }
}

async function openSqlite(options: OpenOptions): Promise<MetadataDb> {
  const { dataDir } = options;
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });
  const file = path.join(dataDir, 'mcr.db');

  // Create the file ourselves first so that it gets mode 0600 whatever the umask.
  closeSync(openSync(file, 'a', 0o600));

  const sqlite = new SqliteDatabase(file);
  await enableWal(sqlite);
  // Each commit flushes the log, so that what a 201 acknowledged survives a
  // power loss. CommitGroup shares one commit, and its flush, among the
  // transactions that start together.
  sqlite.pragma('synchronous = FULL');
  sqlite.pragma('foreign_keys = ON');
  sqlite.pragma('busy_timeout = 5000');

  let checkpointer: { stop(): Promise<void> } | undefined;
  if (options.backgroundCheckpoints) {
    try {
      checkpointer = await startCheckpointer(file, sqlite, options.onCheckpointError);
    } catch (error) {
      // Commits keep checkpointing, as they do without the thread.
      options.onCheckpointError?.(error as Error);
    }
  }

  const connection = withStatementCache(sqlite);
  const db = new Kysely<Database>({
    dialect: new ImmediateSqliteDialect({ database: connection }, sqlite),
  });
  commitGroups.set(db, new CommitGroup(db, sqlite));
  // data_version changes when another connection (another process) commits;
  // this connection's own writes are counted by the statement wrapper. In a
  // profile of manifest GETs, the two reads of each request (credentials,
  // then manifest) took 15% of the server's CPU time. So a value read is kept
  // until the next request arrives or the event loop turns, whichever comes
  // first.
  const dataVersion = sqlite.prepare('pragma data_version').pluck();
  const walIndex = new WalIndexWatch(`${file}-shm`);
  let lastDataVersion = 0;
  let knownDataVersion: number | undefined;
  const forgetDataVersion = () => {
    knownDataVersion = undefined;
  };
  const readDataVersion = (): number => {
    if (knownDataVersion === undefined) {
      if (walIndex.changed()) lastDataVersion = dataVersion.get() as number;
      knownDataVersion = lastDataVersion;
      setImmediate(forgetDataVersion);
    }
    return knownDataVersion;
  };
  return {
    db,
    dialect: 'sqlite',
    sqlitePath: file,
    changeCounter: () => connection.writes + readDataVersion(),
    externalChangeCounter: readDataVersion,
    onRequestArrival: forgetDataVersion,
    close: async () => {
      await checkpointer?.stop();
      await db.destroy();
      walIndex.close();
    },
  };
}

/**
 * Tells whether any connection may have committed since the last call, by
 * comparing the first 96 bytes of the `-shm` file: the two copies of SQLite's
 * wal-index header, which every commit rewrites. One pread costs less than
 * `pragma data_version`, whose read transaction took 5% of the server's CPU
 * time under manifest GET load. A torn read or an error counts as a change.
 *
 * NOTE: this relies on the wal-index layout that SQLite's wal.c documents:
 * two 48-byte copies of the header at the start of the file, each with a
 * transaction counter. If a later SQLite changed it, the tests of two
 * connections and of two processes would fail.
 */
class WalIndexWatch {
  private fd: number | undefined;
  private readonly seen = Buffer.alloc(WAL_INDEX_HEADERS_BYTES);
  private readonly current = Buffer.alloc(WAL_INDEX_HEADERS_BYTES);
  private opened = false;

  constructor(private readonly shmFile: string) {}

  changed(): boolean {
    if (!this.opened) {
      // The file exists once the connection has read in WAL mode.
      this.opened = true;
      try {
        this.fd = openSync(this.shmFile, 'r');
      } catch {
        this.fd = undefined;
      }
      return true;
    }
    if (this.fd === undefined) return true;
    try {
      const read = readSync(this.fd, this.current, 0, WAL_INDEX_HEADERS_BYTES, 0);
      if (read === WAL_INDEX_HEADERS_BYTES && this.current.equals(this.seen)) return false;
      this.current.copy(this.seen);
      return true;
    } catch {
      return true;
    }
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

/** Bytes of the two copies of the wal-index header at the start of the `-shm` file. */
const WAL_INDEX_HEADERS_BYTES = 96;

/**
 * Switches the database to WAL mode. Two processes starting on one new file
 * both try to, and even with busy_timeout set first, SQLite failed one of
 * them with SQLITE_BUSY in 8 of 30 paired starts. So this retries for up to 5 s.
 */
async function enableWal(sqlite: SqliteDatabase.Database): Promise<void> {
  const deadline = Date.now() + 5000;
  for (;;) {
    try {
      sqlite.pragma('journal_mode = WAL');
      return;
    } catch (error) {
      if ((error as { code?: string }).code !== 'SQLITE_BUSY' || Date.now() > deadline) throw error;
      await sleep(10 + Math.random() * 40);
    }
  }
}

/** Automatic checkpoints of the event loop's connection, in pages of log (SQLite's default). */
const AUTOCHECKPOINT_PAGES = 1000;

/**
 * Log size, in pages, at which the event loop's connection checkpoints in its
 * commits even while the checkpoint thread runs. The thread's PASSIVE
 * checkpoints alone let the log grow without end under steady writes: it
 * reached 308 MB during 10,000 tag pushes. SQLite starts the log over only
 * when a write begins after a checkpoint copied every frame, and under steady
 * writes another write always came first. A commit's own checkpoint runs
 * before the next write can begin, and by then the thread has copied most
 * frames. While the thread's checkpoint holds SQLite's checkpoint lock, a
 * commit's checkpoint gives up and the log grows past this size until the
 * next commit after the thread's checkpoint ends.
 */
const BOUNDED_AUTOCHECKPOINT_PAGES = 4 * AUTOCHECKPOINT_PAGES;

/** How long a stopping checkpoint thread may take before it is terminated. */
const CHECKPOINT_STOP_MS = 5000;

/**
 * Starts the checkpoint thread (checkpoint-worker.ts) and raises the
 * connection's automatic checkpoint threshold once it runs. If the thread
 * fails, the connection checkpoints at SQLite's default threshold again.
 */
async function startCheckpointer(
  file: string,
  sqlite: SqliteDatabase.Database,
  onError: ((error: Error) => void) | undefined,
): Promise<{ stop(): Promise<void> }> {
  const worker = new Worker(new URL('./checkpoint-worker.js', import.meta.url), {
    workerData: { file },
  });
  worker.unref();
  const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
  let stopping = false;

  const fail = (error: Error) => {
    if (stopping) return;
    stopping = true;
    sqlite.pragma(`wal_autocheckpoint = ${AUTOCHECKPOINT_PAGES}`);
    void worker.terminate();
    onError?.(error);
  };

  await new Promise<void>((resolve, reject) => {
    worker.once('error', reject);
    worker.once('message', () => resolve());
  });
  sqlite.pragma(`wal_autocheckpoint = ${BOUNDED_AUTOCHECKPOINT_PAGES}`);
  worker.on('error', fail);
  worker.on('message', (message: { type: string; message?: string }) => {
    if (message.type === 'error') fail(new Error(`WAL checkpoint failed: ${message.message}`));
  });
  worker.once('exit', (code) => fail(new Error(`checkpoint thread exited with code ${code}`)));

  return {
    async stop() {
      if (stopping) return exited;
      stopping = true;
      worker.postMessage('stop');
      const timer = setTimeout(() => void worker.terminate(), CHECKPOINT_STOP_MS);
      await exited;
      clearTimeout(timer);
    },
  };
}

async function openPostgres(options: OpenOptions): Promise<MetadataDb> {
  // Loaded only for PostgreSQL, so that a SQLite registry does not carry the client.
  const { default: pg } = await import('pg');
  // 64-bit integers (ids, sizes, times) fit in a JavaScript number below 2^53.
  pg.types.setTypeParser(pg.types.builtins.INT8, (value) => Number(value));
  const pool = new pg.Pool({
    connectionString: options.url ?? '',
    max: 10,
    // A request waits at most this long for a connection, so that a server
    // that does not respond, or locks that hold every connection, fail
    // requests instead of stalling them without end.
    connectionTimeoutMillis: CONNECTION_TIMEOUT_MS,
    ...(options.statementTimeoutMs
      ? {
          statement_timeout: options.statementTimeoutMs,
          idle_in_transaction_session_timeout: options.statementTimeoutMs,
        }
      : {}),
  });
  pool.on('error', (error) => options.onConnectionError?.(error));
  // A connection that fails during a query emits the error too, with no
  // listener of the pool's while it is checked out. The query in flight
  // rejects with the same error, so nothing more is needed here.
  pool.on('connect', (client) => client.on('error', () => undefined));
  const db = new Kysely<Database>({ dialect: new PostgresDialect({ pool }) });
  const snapshots = new SnapshotWatch(async () => {
    const result = await pool.query<{ snapshot: string }>(
      'select pg_current_snapshot()::text as snapshot',
    );
    return result.rows[0]?.snapshot ?? '';
  });
  return {
    db,
    dialect: 'postgres',
    changeCounter: () => snapshots.value,
    externalChangeCounter: () => snapshots.value,
    onRequestArrival: () => snapshots.refresh(),
    close: () => db.destroy(),
  };
}

/**
 * A change counter for PostgreSQL, from the server's current snapshot
 * (`xmin:xmax:in-progress xids`). Two equal snapshots see the same committed
 * transactions, so while the text stays the same, no commit of any process
 * has become visible. The counter goes up each time the text changes, which
 * also happens when a write transaction starts. That only makes caches look
 * again.
 *
 * The write-ahead log position is no substitute: it moves when the commit
 * record is written, before other sessions see the commit, so a lookup in
 * between cached the old row under the new position.
 *
 * Each refresh queries the server once, after the caller arrived, so a request
 * sees every commit that finished before it. Requests arriving while a query
 * is under way share the next query instead of each sending one.
 */
class SnapshotWatch {
  /** Goes up with each change of the snapshot and after each failed read. */
  value = 0;
  private snapshot: string | undefined;
  private running: Promise<void> | undefined;
  private queued: Promise<void> | undefined;

  constructor(private readonly read: () => Promise<string>) {}

  refresh(): Promise<void> {
    if (this.running === undefined) return this.start();
    // The query under way may have run before the caller's arrival.
    this.queued ??= this.running.then(() => {
      this.queued = undefined;
      return this.start();
    });
    return this.queued;
  }

  private start(): Promise<void> {
    const running = this.read().then(
      (snapshot) => {
        if (snapshot === this.snapshot) return;
        this.snapshot = snapshot;
        this.value += 1;
      },
      () => {
        // A new value, so that no cache serves the request. If the
        // database is down, the request fails in its own queries.
        this.snapshot = undefined;
        this.value += 1;
      },
    );
    const current = running.finally(() => {
      // A refresh may have started another query since this one.
      if (this.running === current) this.running = undefined;
    });
    this.running = current;
    return current;
  }
}

/** How long a query waits to open a PostgreSQL connection or get one from the pool. */
const CONNECTION_TIMEOUT_MS = 10_000;

/** Prepared statements kept per connection; the application has far fewer distinct queries. */
const STATEMENT_CACHE_MAX = 500;

/**
 * Wraps a connection so that the same SQL text reuses its prepared
 * statement. Kysely prepares every query anew, and on hot paths such as a
 * manifest GET the parsing took more time than running the query.
 */
function withStatementCache(
  sqlite: SqliteDatabase.Database,
): SqliteDialectDatabase & { readonly writes: number } {
  const statements = new Map<string, SqliteDatabase.Statement>();
  const connection = {
    /** Statements run that may have written, counted for `changeCounter`. */
    writes: 0,
    close: () => {
      statements.clear();
      sqlite.close();
    },
    prepare: (sql: string) => {
      let statement = statements.get(sql);
      // A statement still iterating rows cannot run again until it is done.
      if (!statement || statement.busy) {
        const fresh = sqlite.prepare(sql);
        if (!statement) {
          if (statements.size >= STATEMENT_CACHE_MAX) statements.clear();
          statements.set(sql, fresh);
        }
        statement = fresh;
      }
      if (!statement.reader) connection.writes += 1;
      return statement;
    },
  };
  return connection;
}

/**
 * SQLite dialect whose transactions start with BEGIN IMMEDIATE. A deferred
 * transaction that reads and then writes fails at once with "database is
 * locked" when another connection (the sqlite3 shell, a backup tool) wrote
 * in between; an immediate one takes the write lock first and so waits
 * politely for busy_timeout instead.
 *
 * After some errors, such as a full disk during the commit, SQLite has
 * already rolled the transaction back. A ROLLBACK then fails with "no
 * transaction is active", and Kysely would throw that error instead of the
 * one that explains the failure, so the driver skips it.
 */
class ImmediateSqliteDialect extends SqliteDialect {
  constructor(
    config: ConstructorParameters<typeof SqliteDialect>[0],
    private readonly sqlite: SqliteDatabase.Database,
  ) {
    super(config);
  }

  override createDriver(): Driver {
    const driver = super.createDriver();
    driver.beginTransaction = async (connection) => {
      await connection.executeQuery(CompiledQuery.raw('begin immediate'));
    };
    driver.rollbackTransaction = async (connection) => {
      if (this.sqlite.inTransaction) await connection.executeQuery(CompiledQuery.raw('rollback'));
    };
    return driver;
  }
}
