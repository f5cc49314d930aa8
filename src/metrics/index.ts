import { sql, type Kysely } from 'kysely';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

import type { Database } from '../metadata/schema.js';

/** The counters the registry core moves; the HTTP layer and scrapes fill in the rest. */
export interface RegistryMetrics {
  blobBytesReceived(bytes: number): void;
  manifestPushed(): void;
}

/**
 * Prometheus metrics of one mcr process. Counters of requests and bytes are
 * per process; gauges and GC totals are read from the database at scrape
 * time, so they agree across processes and survive restarts.
 */
export class Metrics implements RegistryMetrics {
  readonly registry = new Registry();

  private readonly requests = new Counter({
    name: 'mcr_http_requests_total',
    help: 'HTTP requests by route, method and status',
    labelNames: ['route', 'method', 'status'] as const,
    registers: [this.registry],
  });

  private readonly duration = new Histogram({
    name: 'mcr_http_request_duration_seconds',
    help: 'HTTP request latency in seconds by route, method and status',
    labelNames: ['route', 'method', 'status'] as const,
    buckets: [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60],
    registers: [this.registry],
  });

  private readonly bytesReceived = new Counter({
    name: 'mcr_blob_bytes_received_total',
    help: 'Blob bytes received in uploads',
    registers: [this.registry],
  });

  private readonly bytesSent = new Counter({
    name: 'mcr_blob_bytes_sent_total',
    help: 'Blob bytes sent in complete blob responses',
    registers: [this.registry],
  });

  private readonly manifestsPushed = new Counter({
    name: 'mcr_manifests_pushed_total',
    help: 'Manifests pushed',
    registers: [this.registry],
  });

  constructor(db: Kysely<Database>) {
    new Gauge({
      name: 'mcr_upload_sessions_open',
      help: 'Upload sessions started and not yet finished or cancelled',
      registers: [this.registry],
      async collect() {
        const row = await db
          .selectFrom('uploads')
          .select((eb) => eb.fn.countAll<number>().as('count'))
          .executeTakeFirstOrThrow();
        this.set(Number(row.count));
      },
    });

    new Gauge({
      name: 'mcr_storage_bytes',
      help: 'Bytes of all blobs recorded in the database',
      registers: [this.registry],
      async collect() {
        const row = await db
          .selectFrom('blobs')
          .select(sql<number>`coalesce(sum(size), 0)`.as('total'))
          .executeTakeFirstOrThrow();
        this.set(Number(row.total));
      },
    });

    // GC totals come from gc_runs, so they count runs of every process.
    const gcTotals = async () =>
      db
        .selectFrom('gc_runs')
        .select([
          'state',
          sql<number>`count(*)`.as('runs'),
          sql<number>`coalesce(sum(blobs_deleted), 0)`.as('blobs'),
          sql<number>`coalesce(sum(bytes_freed), 0)`.as('bytes'),
        ])
        .where('dry_run', '=', 0)
        .groupBy('state')
        .execute();

    new Gauge({
      name: 'mcr_gc_runs_total',
      help: 'Garbage collection runs (not dry runs) by final state',
      labelNames: ['state'] as const,
      registers: [this.registry],
      async collect() {
        this.reset();
        for (const row of await gcTotals()) this.set({ state: row.state }, Number(row.runs));
      },
    });
    new Gauge({
      name: 'mcr_gc_blobs_deleted_total',
      help: 'Blobs deleted by garbage collection',
      registers: [this.registry],
      async collect() {
        this.set((await gcTotals()).reduce((sum, row) => sum + Number(row.blobs), 0));
      },
    });
    new Gauge({
      name: 'mcr_gc_bytes_freed_total',
      help: 'Bytes freed by garbage collection',
      registers: [this.registry],
      async collect() {
        this.set((await gcTotals()).reduce((sum, row) => sum + Number(row.bytes), 0));
      },
    });
  }

  /** Records one finished HTTP request. */
  observeRequest(route: string, method: string, status: number, seconds: number): void {
    const labels = { route, method, status: String(status) };
    this.requests.inc(labels);
    this.duration.observe(labels, seconds);
  }

  blobBytesReceived(bytes: number): void {
    this.bytesReceived.inc(bytes);
  }

  blobBytesSent(bytes: number): void {
    this.bytesSent.inc(bytes);
  }

  manifestPushed(): void {
    this.manifestsPushed.inc();
  }

  /** Renders every metric in the Prometheus text format. */
  render(): Promise<string> {
    return this.registry.metrics();
  }

  get contentType(): string {
    return this.registry.contentType;
  }
}
