import { readFileSync } from 'node:fs';
import path from 'node:path';

import type { FastifyInstance } from 'fastify';
import { sql } from 'kysely';
import type { Logger } from 'pino';

import { AuditLog } from './audit/log.js';
import { AccessTokens } from './auth/access-tokens.js';
import { PolicyAccessControl } from './auth/access.js';
import { Accounts } from './auth/accounts.js';
import { Authenticator } from './auth/authenticator.js';
import type { IdentityProvider } from './auth/identity.js';
import { TokenIssuer } from './auth/jwt.js';
import { PolicyStore } from './auth/policy.js';
import { Sessions } from './auth/sessions.js';
import { LoginThrottle } from './auth/throttle.js';
import { parseListenAddress, type Config } from './config/index.js';
import { Fsck } from './fsck/index.js';
import { startOpenMetricsServer } from './http/metrics.js';
import { GarbageCollector } from './gc/index.js';
import { buildServer } from './http/server.js';
import { GC_DECORATOR } from './http/v1/gc.js';
import { openMetadataDb, type MetadataDb } from './metadata/db.js';
import { Locks } from './metadata/locks.js';
import { Metrics } from './metrics/index.js';
import { Registry } from './registry/index.js';
import { FilesystemBlobStore } from './storage/index.js';

/** How long a shutdown waits for requests in flight before closing their connections. */
const SHUTDOWN_GRACE_MS = 10_000;

/** The authentication and authorization services of a running registry. */
export interface AuthServices {
  accounts: Accounts;
  tokens: AccessTokens;
  policies: PolicyStore;
  authenticator: Authenticator;
  issuer: TokenIssuer;
  sessions: Sessions;
  audit: AuditLog;
}

/** A running registry: its HTTP server and the services behind it. */
export interface RunningRegistry {
  app: FastifyInstance;
  metadata: MetadataDb;
  registry: Registry;
  auth: AuthServices;
  gc: GarbageCollector;
  /** The address the server listens on, with the port the OS chose for port 0. */
  address: { host: string; port: number };
  close(): Promise<void>;
}

/** Opens storage and the database, then starts serving on the configured address. */
export async function startRegistry(
  config: Config,
  log: Logger,
  env: NodeJS.ProcessEnv = process.env,
): Promise<RunningRegistry> {
  if (config.storage.driver !== 'filesystem') {
    throw new Error(
      `storage.driver "${config.storage.driver}" is not available in this build; use "filesystem"`,
    );
  }

  const store = new FilesystemBlobStore(config.dataDir);
  const prefixErrors = await store.init();
  if (prefixErrors.length > 0) {
    log.warn(
      { err: prefixErrors[0], failed: prefixErrors.length, dataDir: config.dataDir },
      'failed to create blob prefix directories; pushes into them fail until the data directory is repaired',
    );
  }
  const metadata = await openMetadataDb({
    driver: config.database.driver,
    dataDir: config.dataDir,
    url: config.database.url,
    statementTimeoutMs: config.statementTimeoutMs,
    connectWaitMs: config.connectWaitMs,
    onConnectRetry: (error, waitedMs) =>
      log.warn(
        {
          error: error.message,
          code: (error as { code?: unknown }).code,
          waitedMs,
          connectWaitMs: config.connectWaitMs,
        },
        'PostgreSQL cannot be reached yet; trying again (database.connect_wait)',
      ),
    backgroundCheckpoints: true,
    onCheckpointError: (error) =>
      log.error({ err: error }, 'background WAL checkpoints stopped; commits run them again'),
    onConnectionError: (error) =>
      log.warn(
        { err: error },
        'an idle PostgreSQL connection failed; the next query opens another',
      ),
  });

  const auth = await createAuthServices(config, metadata, log);
  await auth.accounts.ensureAdmin(env.MCR_ADMIN_PASSWORD, config.dataDir);

  const metrics = new Metrics(metadata.db);
  const registry = new Registry({
    db: metadata.db,
    dialect: metadata.dialect,
    store,
    log,
    changeCounter: metadata.changeCounter,
  });
  const https = config.server.tls_cert
    ? { cert: readFileSync(config.server.tls_cert), key: readFileSync(config.server.tls_key) }
    : undefined;
  const app = buildServer({
    registry,
    access: new PolicyAccessControl(auth.policies),
    auth: {
      authenticator: auth.authenticator,
      tokens: auth.tokens,
      issuer: auth.issuer,
      accounts: auth.accounts,
      service: serviceName(config),
      externalUrl: config.server.external_url,
      tls: Boolean(https),
    },
    services: auth,
    metrics,
    metricsMode: config.metrics.mode,
    checkHealth: () => checkHealth(metadata, store),
    fsck: new Fsck(metadata.db, metadata.dialect, store, log, config.gracePeriodMs),
    tokenTtlMs: config.tokenTtlMs,
    refreshTokenTtlMs: config.refreshTokenTtlMs,
    log,
    externalUrl: config.server.external_url,
    https,
    onRequestArrival: metadata.onRequestArrival,
  });
  const gc = new GarbageCollector({
    db: metadata.db,
    dialect: metadata.dialect,
    store,
    log,
    locks: new Locks(metadata.db),
    gracePeriodMs: config.gracePeriodMs,
    lockTtlMs: config.gcLockTtlMs,
    defaults: {
      deleteUntagged: config.gc.delete_untagged,
      uploadMaxAgeMs: config.gcUploadMaxAgeMs,
    },
    onFinished: (run) =>
      auth.audit.record({
        type: 'gc.run',
        actor: null,
        outcome: run.state === 'succeeded' ? 'success' : 'failure',
        details: {
          run: run.id,
          trigger: run.trigger,
          dryRun: run.dryRun,
          blobsDeleted: run.blobsDeleted,
          bytesFreed: run.bytesFreed,
          manifestsDeleted: run.manifestsDeleted,
          uploadsDeleted: run.uploadsDeleted,
          error: run.error,
        },
      }),
  });
  // The /v1/gc routes read the collector from this decoration.
  app.decorate(GC_DECORATOR, gc);

  await app.listen({ host: config.listen.host, port: config.listen.port });
  const bound = app.server.address();
  const address =
    bound && typeof bound === 'object'
      ? { host: bound.address, port: bound.port }
      : { host: config.listen.host, port: config.listen.port };

  if (!https) {
    log.warn(
      { address },
      'serving plain HTTP; set server.tls_cert and server.tls_key unless a TLS proxy is in front',
    );
  }
  log.info(
    {
      address,
      tls: Boolean(https),
      dataDir: config.dataDir,
      database: config.database.driver,
      storage: config.storage.driver,
      authProvider: config.auth.provider,
    },
    'mcr listening',
  );

  let metricsServer: FastifyInstance | undefined;
  if (config.metrics.mode === 'open') {
    const metricsAddress = parseListenAddress(config.metrics.listen_addr) as {
      host: string;
      port: number;
    };
    metricsServer = await startOpenMetricsServer(metrics, metricsAddress.host, metricsAddress.port);
    log.info(
      { address: metricsServer.server.address() },
      'metrics listening without authentication',
    );
  }

  const pruneAudit = startAuditRetention(auth.audit, config.auditRetentionMs, log);
  gc.startBackground(config.gcScheduleMs);

  return {
    app,
    metadata,
    registry,
    auth,
    gc,
    address,
    async close() {
      // Node closes the connections that are idle when close() starts; one
      // still sending a response would otherwise linger until its keep-alive
      // timeout. Close each as it goes idle, and all of them after a grace
      // period.
      if (pruneAudit) clearInterval(pruneAudit);
      await metricsServer?.close();
      const closing = app.close();
      const idle = setInterval(() => app.server.closeIdleConnections(), 100);
      const force = setTimeout(() => {
        log.warn('closing connections still busy 10 s after shutdown began');
        app.server.closeAllConnections();
      }, SHUTDOWN_GRACE_MS);
      try {
        await closing;
      } finally {
        clearInterval(idle);
        clearTimeout(force);
      }
      await gc.stop();
      auth.audit.close();
      await store.close();
      await metadata.close();
    },
  };
}

async function createAuthServices(
  config: Config,
  metadata: MetadataDb,
  log: Logger,
): Promise<AuthServices> {
  const accounts = new Accounts(metadata.db, log);
  const tokens = new AccessTokens(metadata.db, accounts, log);
  const policies = new PolicyStore(metadata.db);
  const throttle = new LoginThrottle(
    metadata.db,
    config.auth.max_failures,
    config.auth.max_failures_per_address,
    config.failureWindowMs,
  );
  let provider: IdentityProvider | undefined;
  if (config.auth.provider === 'ldap') {
    // Loaded only when configured, to keep the LDAP client out of memory otherwise.
    const { LdapIdentityProvider } = await import('./auth/ldap.js');
    provider = new LdapIdentityProvider({
      url: config.ldap.url,
      userDn: config.ldap.user_dn,
      groupBaseDn: config.ldap.group_base_dn,
      groupFilter: config.ldap.group_filter,
      adminGroups: config.ldap.admin_groups,
      userGroups: config.ldap.user_groups,
      guestGroups: config.ldap.guest_groups,
      startTls: config.ldap.start_tls,
      timeoutMs: config.ldapTimeoutMs,
      log,
    });
  }
  const audit = new AuditLog(
    metadata.db,
    metadata.dialect,
    path.join(config.dataDir, 'audit-head'),
    log,
    config.audit.record_pulls,
  );
  const authenticator = new Authenticator(
    accounts,
    tokens,
    provider,
    throttle,
    log,
    audit,
    metadata.externalChangeCounter,
  );
  const issuer = new TokenIssuer(path.join(config.dataDir, 'keys'), serviceName(config));
  const sessions = new Sessions(metadata.db, metadata.dialect, accounts);
  return { accounts, tokens, policies, authenticator, issuer, sessions, audit };
}

/** Returns the token service name: configured, or the external URL's host, or "mcr". */
function serviceName(config: Config): string {
  if (config.auth.service) return config.auth.service;
  if (config.server.external_url) return new URL(config.server.external_url).host;
  return 'mcr';
}

/** Checks that the database runs a query and that blob storage is writable. */
async function checkHealth(
  metadata: MetadataDb,
  store: FilesystemBlobStore,
): Promise<Record<string, { ok: boolean; error?: string }>> {
  const checks: Record<string, { ok: boolean; error?: string }> = {};
  try {
    // Reads a table, so that a database whose pages cannot be read fails.
    await sql`select max(version) from schema_migrations`.execute(metadata.db);
    checks.database = { ok: true };
  } catch (error) {
    checks.database = { ok: false, error: (error as Error).message };
  }
  try {
    await store.checkWritable();
    checks.storage = { ok: true };
  } catch (error) {
    checks.storage = { ok: false, error: (error as Error).message };
  }
  return checks;
}

/** How often audit retention runs, in milliseconds. */
const AUDIT_PRUNE_INTERVAL_MS = 3_600_000;

/** Prunes audit events past the retention now and then hourly; returns the timer. */
function startAuditRetention(
  audit: AuditLog,
  retentionMs: number | undefined,
  log: Logger,
): NodeJS.Timeout | undefined {
  if (retentionMs === undefined) return undefined;
  const prune = () => {
    audit.prune(Date.now() - retentionMs).catch((error: unknown) => {
      log.error({ err: error }, 'audit retention failed');
    });
  };
  prune();
  const timer = setInterval(prune, AUDIT_PRUNE_INTERVAL_MS);
  timer.unref();
  return timer;
}
