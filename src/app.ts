import { readFileSync } from 'node:fs';

import type { FastifyInstance } from 'fastify';
import type { Logger } from 'pino';

import { AllowAll } from './auth/access.js';
import type { Config } from './config/index.js';
import { buildServer } from './http/server.js';
import { openMetadataDb, type MetadataDb } from './metadata/db.js';
import { Registry } from './registry/index.js';
import { FilesystemBlobStore } from './storage/index.js';

/** A running registry: its HTTP server and what it stands on. */
export interface RunningRegistry {
  app: FastifyInstance;
  metadata: MetadataDb;
  registry: Registry;
  /** The address the server listens on, with the port the OS chose for port 0. */
  address: { host: string; port: number };
  close(): Promise<void>;
}

/** Opens storage and the database, then starts serving on the configured address. */
export async function startRegistry(config: Config, log: Logger): Promise<RunningRegistry> {
  if (config.storage.driver !== 'filesystem') {
    throw new Error(
      `storage.driver "${config.storage.driver}" is not available in this build; use "filesystem"`,
    );
  }

  const store = new FilesystemBlobStore(config.dataDir);
  await store.init();
  const metadata = await openMetadataDb({
    driver: config.database.driver,
    dataDir: config.dataDir,
    url: config.database.url,
  });

  const registry = new Registry({ db: metadata.db, dialect: metadata.dialect, store, log });
  const https = config.server.tls_cert
    ? { cert: readFileSync(config.server.tls_cert), key: readFileSync(config.server.tls_key) }
    : undefined;
  const app = buildServer({
    registry,
    access: new AllowAll(),
    log,
    externalUrl: config.server.external_url,
    https,
  });

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
    },
    'mcr listening',
  );

  return {
    app,
    metadata,
    registry,
    address,
    async close() {
      await app.close();
      await metadata.close();
    },
  };
}
