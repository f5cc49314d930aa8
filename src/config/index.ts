import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import path from 'node:path';

import { parse as parseToml } from 'smol-toml';
import { z } from 'zod';

import { parseDuration } from './duration.js';

const listenAddress = z.string().refine((value) => parseListenAddress(value) !== undefined, {
  message: 'expected HOST:PORT, for example "127.0.0.1:5000" or "[::1]:5000"',
});

const optionalListenAddress = z
  .string()
  .refine((value) => value === '' || parseListenAddress(value) !== undefined, {
    message: 'expected HOST:PORT or an empty string to turn it off',
  });

/** PostgreSQL's statement_timeout is a 32-bit count of milliseconds. */
const MAX_STATEMENT_TIMEOUT_MS = 2 ** 31 - 1;

const duration = z.string().refine((value) => parseDuration(value) !== undefined, {
  message: 'expected a duration such as "30m", "1h" or "1h30m"',
});

/** A list, written in TOML as an array or in the environment as comma-separated values. */
const stringList = z.preprocess(
  (value) =>
    typeof value === 'string'
      ? value
          .split(',')
          .map((item) => item.trim())
          .filter((item) => item !== '')
      : value,
  z.array(z.string()),
);

/** A boolean, written in the environment as "true" or "false". */
const boolean = z.preprocess((value) => {
  if (value === 'true') return true;
  if (value === 'false') return false;
  return value;
}, z.boolean());

const integer = z.preprocess(
  (value) => (typeof value === 'string' && /^\d+$/.test(value) ? Number(value) : value),
  z.number().int().nonnegative(),
);

const optionalDuration = z
  .string()
  .refine((value) => value === '' || parseDuration(value) !== undefined, {
    message: 'expected a duration such as "720h", or an empty string for no limit',
  });

const externalUrl = z.string().refine((value) => value === '' || isHttpUrl(value), {
  message: 'expected an http:// or https:// URL, or an empty string',
});

/** The configuration file's schema; every key has a default, so no file is needed. */
const configSchema = z.strictObject({
  data_dir: z.string().min(1).default('./data'),
  server: z
    .strictObject({
      listen_addr: listenAddress.default('127.0.0.1:5000'),
      external_url: externalUrl.default(''),
      tls_cert: z.string().default(''),
      tls_key: z.string().default(''),
      grpc_addr: optionalListenAddress.default(''),
    })
    .prefault({}),
  database: z
    .strictObject({
      driver: z.enum(['sqlite', 'postgres']).default('sqlite'),
      url: z.string().default(''),
      statement_timeout: duration
        .refine((value) => (parseDuration(value) as number) <= MAX_STATEMENT_TIMEOUT_MS, {
          message: 'expected at most "596h", the longest statement timeout PostgreSQL accepts',
        })
        .default('60s'),
      connect_wait: duration.default('60s'),
    })
    .prefault({}),
  storage: z
    .strictObject({
      driver: z.enum(['filesystem', 's3']).default('filesystem'),
    })
    .prefault({}),
  gc: z
    .strictObject({
      grace_period: duration.default('1h'),
      schedule: z
        .string()
        .refine((value) => value === '' || (parseDuration(value) ?? 0) > 0, {
          message:
            'expected a duration such as "24h" between runs, or an empty string to turn it off',
        })
        .default(''),
      upload_max_age: duration.default('24h'),
      delete_untagged: boolean.default(false),
      lock_ttl: z
        .string()
        .refine((value) => (parseDuration(value) ?? 0) >= 1000, {
          message: 'expected a duration of at least 1s, such as "1m"',
        })
        .default('1m'),
    })
    .prefault({}),
  auth: z
    .strictObject({
      provider: z.enum(['local', 'ldap']).default('local'),
      service: z.string().default(''),
      token_ttl: duration.default('5m'),
      refresh_token_ttl: duration.default('720h'),
      max_failures: integer.default(10),
      max_failures_per_address: integer.default(50),
      failure_window: duration.default('15m'),
    })
    .prefault({}),
  ldap: z
    .strictObject({
      url: z.string().default(''),
      user_dn: z.string().default(''),
      group_base_dn: z.string().default(''),
      group_filter: z.string().default('(|(member={dn})(uniqueMember={dn})(memberUid={username}))'),
      admin_groups: stringList.default([]),
      user_groups: stringList.default([]),
      guest_groups: stringList.default([]),
      start_tls: boolean.default(false),
      timeout: duration.default('5s'),
    })
    .prefault({}),
  audit: z
    .strictObject({
      record_pulls: boolean.default(false),
      retention: optionalDuration.default('2160h'),
    })
    .prefault({}),
  metrics: z
    .strictObject({
      mode: z.enum(['off', 'auth', 'open']).default('auth'),
      listen_addr: optionalListenAddress.default(''),
    })
    .prefault({}),
  log: z
    .strictObject({
      level: z.enum(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'),
    })
    .prefault({}),
});

type RawConfig = z.output<typeof configSchema>;

/** The validated configuration with paths resolved and durations in milliseconds. */
export interface Config extends RawConfig {
  /** Absolute data directory. */
  dataDir: string;
  listen: { host: string; port: number };
  /** PostgreSQL's statement timeout, or 0 for none. */
  statementTimeoutMs: number;
  /** How long to retry at start while PostgreSQL cannot be reached. */
  connectWaitMs: number;
  gracePeriodMs: number;
  /** Time between scheduled GC runs; undefined when no schedule is set. */
  gcScheduleMs: number | undefined;
  gcUploadMaxAgeMs: number;
  gcLockTtlMs: number;
  tokenTtlMs: number;
  refreshTokenTtlMs: number;
  failureWindowMs: number;
  ldapTimeoutMs: number;
  /** Age past which audit events are pruned; undefined keeps them forever. */
  auditRetentionMs: number | undefined;
}

/** A configuration that failed validation; the message names every bad key. */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

/**
 * Loads the configuration: defaults, then the TOML file (if any), then the
 * MCR_* environment variables, which override keys of the same name.
 */
export function loadConfig(
  options: { file?: string; env?: NodeJS.ProcessEnv; cwd?: string } = {},
): Config {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  const file = options.file ?? (env.MCR_CONFIG || undefined);

  let raw: Record<string, unknown> = {};
  if (file) raw = readTomlFile(file);
  applyEnvironment(raw, env);

  const result = configSchema.safeParse(raw);
  if (!result.success) {
    const problems = result.error.issues.map((issue) => {
      const key = issue.path.join('.') || '(top level)';
      if (issue.code === 'unrecognized_keys') {
        const prefix = issue.path.length ? `${issue.path.join('.')}.` : '';
        return `unknown key ${issue.keys.map((k) => prefix + k).join(', ')}`;
      }
      return `${key}: ${issue.message} (environment variable ${envName(issue.path.map(String))})`;
    });
    throw new ConfigError(`invalid configuration: ${problems.join('; ')}`);
  }

  const config = result.data;
  if ((config.server.tls_cert === '') !== (config.server.tls_key === '')) {
    throw new ConfigError(
      'invalid configuration: server.tls_cert and server.tls_key must be set together',
    );
  }
  if (config.database.driver === 'postgres' && config.database.url === '') {
    throw new ConfigError(
      'invalid configuration: database.url is required when database.driver is "postgres" (MCR_DATABASE_URL)',
    );
  }
  if (config.database.driver === 'postgres' && !/^postgres(ql)?:\/\/./.test(config.database.url)) {
    throw new ConfigError(
      'invalid configuration: database.url must be a URL such as postgres://USER:PASSWORD@HOST:5432/DATABASE (MCR_DATABASE_URL)',
    );
  }

  if (config.metrics.mode === 'open' && config.metrics.listen_addr === '') {
    throw new ConfigError(
      'invalid configuration: metrics.listen_addr is required when metrics.mode is "open", so that unauthenticated metrics stay off the registry port (MCR_METRICS_LISTEN_ADDR)',
    );
  }
  if (config.auth.provider === 'ldap' && (config.ldap.url === '' || config.ldap.user_dn === '')) {
    throw new ConfigError(
      'invalid configuration: ldap.url and ldap.user_dn are required when auth.provider is "ldap" (MCR_LDAP_URL, MCR_LDAP_USER_DN)',
    );
  }

  return {
    ...config,
    dataDir: path.resolve(cwd, config.data_dir),
    listen: parseListenAddress(config.server.listen_addr) as { host: string; port: number },
    statementTimeoutMs: parseDuration(config.database.statement_timeout) as number,
    connectWaitMs: parseDuration(config.database.connect_wait) as number,
    gracePeriodMs: parseDuration(config.gc.grace_period) as number,
    gcScheduleMs: config.gc.schedule === '' ? undefined : parseDuration(config.gc.schedule),
    gcUploadMaxAgeMs: parseDuration(config.gc.upload_max_age) as number,
    gcLockTtlMs: parseDuration(config.gc.lock_ttl) as number,
    tokenTtlMs: parseDuration(config.auth.token_ttl) as number,
    refreshTokenTtlMs: parseDuration(config.auth.refresh_token_ttl) as number,
    failureWindowMs: parseDuration(config.auth.failure_window) as number,
    ldapTimeoutMs: parseDuration(config.ldap.timeout) as number,
    auditRetentionMs:
      config.audit.retention === '' ? undefined : parseDuration(config.audit.retention),
  };
}

/** Lists every key the environment can override: MCR_ plus the upper-cased section and key. */
function environmentKeys(): Array<{ path: string[]; name: string }> {
  const keys: Array<{ path: string[]; name: string }> = [];
  for (const [key, value] of Object.entries(configSchema.shape)) {
    const inner = unwrapObject(value);
    if (inner) {
      for (const child of Object.keys(inner.shape)) {
        keys.push({ path: [key, child], name: envName([key, child]) });
      }
    } else {
      keys.push({ path: [key], name: envName([key]) });
    }
  }
  return keys;
}

function unwrapObject(schema: z.ZodType): z.ZodObject | undefined {
  let current: z.ZodType = schema;
  for (let depth = 0; depth < 5; depth++) {
    if (current instanceof z.ZodObject) return current;
    const def = (current as unknown as { def: { innerType?: z.ZodType } }).def;
    if (!def.innerType) return undefined;
    current = def.innerType;
  }
  return undefined;
}

function envName(keyPath: string[]): string {
  return `MCR_${keyPath.join('_').toUpperCase()}`;
}

function applyEnvironment(raw: Record<string, unknown>, env: NodeJS.ProcessEnv): void {
  for (const { path: keyPath, name } of environmentKeys()) {
    const value = env[name];
    if (value === undefined) continue;
    if (keyPath.length === 1) {
      raw[keyPath[0] as string] = value;
      continue;
    }
    const section = keyPath[0] as string;
    const existing = raw[section];
    const target =
      typeof existing === 'object' && existing !== null
        ? (existing as Record<string, unknown>)
        : {};
    target[keyPath[1] as string] = value;
    raw[section] = target;
  }
}

function readTomlFile(file: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw new ConfigError(`cannot read configuration file ${file}: ${(error as Error).message}`);
  }
  try {
    return parseToml(text) as Record<string, unknown>;
  } catch (error) {
    throw new ConfigError(`invalid TOML in ${file}: ${(error as Error).message}`);
  }
}

/** Splits "host:port" or "[v6]:port" into its parts, or returns undefined. */
export function parseListenAddress(value: string): { host: string; port: number } | undefined {
  const match = /^(?:\[([^\]]+)\]|([^:[\]]*)):(\d{1,5})$/.exec(value);
  if (!match) return undefined;
  const host = match[1] ?? match[2] ?? '';
  const port = Number(match[3]);
  if (port > 65535) return undefined;
  if (match[1] !== undefined && isIP(host) !== 6) return undefined;
  if (host === '') return undefined;
  return { host, port };
}

function isHttpUrl(value: string): boolean {
  try {
    const url = new URL(value);
    return url.protocol === 'http:' || url.protocol === 'https:';
  } catch {
    return false;
  }
}
