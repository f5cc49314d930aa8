import { CompiledQuery, type Compilable, type Kysely, type QueryResult } from 'kysely';

import type { Database } from './schema.js';

/** One parameter of a compiled query: an argument of the call, or a value fixed at build time. */
type Parameter = { argument: number } | { value: unknown };

/**
 * A query that Kysely builds and compiles once, on its first run for a
 * dialect, with placeholder arguments. Each later run only puts the
 * arguments into the parameter list, which on hot paths such as a manifest
 * push saves most of the time Kysely spends building a query.
 *
 * Every argument must be bound as a plain parameter. So an argument may not
 * be null where the builder would write `is null` instead of `= ?`, nor an
 * array that the builder spreads into `in (...)`.
 */
export class PreparedQuery<Args extends unknown[], Row> {
  /** Compiled SQL by the Kysely adapter (one per dialect) it was compiled for. */
  private readonly compiled = new WeakMap<object, { sql: string; parameters: Parameter[] }>();

  constructor(private readonly build: (db: Kysely<Database>, ...args: Args) => Compilable<Row>) {}

  /** Runs the query with these arguments on a database or inside a transaction. */
  async execute(db: Kysely<Database>, ...args: Args): Promise<QueryResult<Row>> {
    const adapter = db.getExecutor().adapter;
    let compiled = this.compiled.get(adapter);
    if (compiled === undefined) {
      compiled = this.compile(db, args.length);
      this.compiled.set(adapter, compiled);
    }
    const parameters = compiled.parameters.map((parameter) =>
      'argument' in parameter ? args[parameter.argument] : parameter.value,
    );
    return db.executeQuery<Row>(CompiledQuery.raw(compiled.sql, parameters) as CompiledQuery<Row>);
  }

  /** Returns the SQL this query runs on `db`, for inspecting its query plan. */
  sql(db: Kysely<Database>): string {
    return (
      this.compiled.get(db.getExecutor().adapter)?.sql ??
      this.compile(db, this.build.length - 1).sql
    );
  }

  /** Runs the query and returns its first row, if any. */
  async first(db: Kysely<Database>, ...args: Args): Promise<Row | undefined> {
    return (await this.execute(db, ...args)).rows[0];
  }

  private compile(db: Kysely<Database>, arity: number): { sql: string; parameters: Parameter[] } {
    const placeholders = Array.from({ length: arity }, (_, index) => ({ placeholder: index }));
    const query = this.build(db, ...(placeholders as unknown as Args)).compile();
    const parameters = query.parameters.map((value): Parameter => {
      const index = placeholders.indexOf(value as { placeholder: number });
      return index === -1 ? { value } : { argument: index };
    });
    const bound = new Set(
      parameters.flatMap((parameter) => ('argument' in parameter ? [parameter.argument] : [])),
    );
    if (bound.size !== arity) {
      throw new Error(`prepared query binds ${bound.size} of its ${arity} arguments: ${query.sql}`);
    }
    return { sql: query.sql, parameters };
  }
}

/** List lengths a PreparedListQuery keeps compiled before it starts over. */
const MAX_LIST_LENGTHS = 64;

/**
 * A query with a list of values of varying length, such as `digest in (...)`
 * or a multi-row insert, kept as one PreparedQuery per list length. `build`
 * gets the fixed arguments and the list, each value bound as a parameter.
 */
export class PreparedListQuery<Fixed extends unknown[], Item, Row> {
  private readonly byLength = new Map<number, PreparedQuery<unknown[], Row>>();

  constructor(
    private readonly build: (db: Kysely<Database>, fixed: Fixed, items: Item[]) => Compilable<Row>,
  ) {}

  /** Runs the query with these fixed arguments and list values. */
  async execute(db: Kysely<Database>, fixed: Fixed, items: Item[]): Promise<QueryResult<Row>> {
    let query = this.byLength.get(items.length);
    if (query === undefined) {
      const split = fixed.length;
      query = new PreparedQuery<unknown[], Row>((builder, ...args) =>
        this.build(builder, args.slice(0, split) as Fixed, args.slice(split) as Item[]),
      );
      if (this.byLength.size >= MAX_LIST_LENGTHS) this.byLength.clear();
      this.byLength.set(items.length, query);
    }
    return query.execute(db, ...fixed, ...items);
  }
}
