import type { Generated } from 'kysely';

/** Times are milliseconds since the Unix epoch, stored as 64-bit integers. */
export type EpochMs = number;

export interface RepositoriesTable {
  id: Generated<number>;
  name: string;
  created_at: EpochMs;
}

export interface BlobsTable {
  id: Generated<number>;
  digest: string;
  size: number;
  created_at: EpochMs;
}

export interface RepositoryBlobsTable {
  repository_id: number;
  blob_id: number;
  created_at: EpochMs;
}

export interface ManifestsTable {
  id: Generated<number>;
  repository_id: number;
  digest: string;
  media_type: string;
  artifact_type: string | null;
  subject_digest: string | null;
  /** JSON object of the manifest's annotations, kept for the referrers response. */
  annotations: string | null;
  content: Uint8Array;
  size: number;
  created_at: EpochMs;
}

/** A reference from a manifest to a blob (config, layer) or to a child manifest (index). */
export interface ManifestReferencesTable {
  manifest_id: number;
  digest: string;
  kind: 'blob' | 'manifest';
  blob_id: number | null;
}

export interface TagsTable {
  id: Generated<number>;
  repository_id: number;
  name: string;
  manifest_id: number;
  updated_at: EpochMs;
}

export interface UploadsTable {
  id: string;
  repository_id: number;
  offset: number;
  storage_key: string;
  started_at: EpochMs;
  updated_at: EpochMs;
  /** Random id of the request that holds the session, if any. */
  holder: string | null;
  /** When the holder's lease ends, if it holds the session. */
  held_until: EpochMs | null;
}

export interface AccountsTable {
  id: Generated<number>;
  username: string;
  /** argon2id hash; null for accounts whose password an external provider checks. */
  password_hash: string | null;
  role: 'admin' | 'user' | 'guest';
  kind: 'human' | 'system';
  /** Identity provider that owns the account: 'local' or 'ldap'. */
  provider: string;
  disabled: number;
  created_at: EpochMs;
  updated_at: EpochMs;
}

export interface AccessTokensTable {
  id: Generated<number>;
  account_id: number;
  name: string;
  /** Hex SHA-256 of the secret; the secret itself is shown once and never stored. */
  secret_sha256: string;
  /** JSON array of actions the token may use, or null for all the account may do. */
  scopes: string | null;
  expires_at: EpochMs | null;
  last_used_at: EpochMs | null;
  revoked_at: EpochMs | null;
  created_at: EpochMs;
}

export interface PolicyRulesTable {
  id: Generated<number>;
  priority: number;
  effect: 'allow' | 'deny';
  description: string;
  /** JSON arrays. */
  subjects: string;
  actions: string;
  repositories: string;
  enabled: number;
  created_at: EpochMs;
  updated_at: EpochMs;
}

/** Failed logins per key ("account:NAME" or "address:IP") within the current window. */
export interface AuthFailuresTable {
  key: string;
  window_start: EpochMs;
  failures: number;
}

/** A session token of the CLI or web UI; only its SHA-256 is stored. */
export interface SessionsTable {
  id: Generated<number>;
  account_id: number;
  secret_sha256: string;
  created_at: EpochMs;
  expires_at: EpochMs;
  last_used_at: EpochMs;
}

/**
 * One audit event. `hash` is the SHA-256 of the previous row's hash and this
 * row's fields, so editing or removing a row breaks the chain after it.
 */
export interface AuditEventsTable {
  id: Generated<number>;
  time: EpochMs;
  type: string;
  actor: string | null;
  client_address: string | null;
  repository: string | null;
  reference: string | null;
  digest: string | null;
  outcome: 'success' | 'failure' | 'denied';
  /** JSON object. */
  details: string;
  previous_hash: string;
  hash: string;
}

export interface GcRunsTable {
  id: Generated<number>;
  /** Origin of the run: 'api', 'cli' or 'schedule'. */
  trigger: string;
  state: 'running' | 'succeeded' | 'failed';
  dry_run: number;
  started_at: EpochMs;
  finished_at: EpochMs | null;
  /** Phase and counters while running, as JSON. */
  progress: string;
  blobs_deleted: number;
  bytes_freed: number;
  manifests_deleted: number;
  uploads_deleted: number;
  error: string | null;
}

/** Named locks that hold across processes, such as the single GC run. */
export interface LocksTable {
  name: string;
  holder: string;
  acquired_at: EpochMs;
  expires_at: EpochMs;
}

/**
 * A blob whose row garbage collection deleted and whose bytes it is deleting.
 * While the row exists, no upload may commit the same digest.
 */
export interface BlobTombstonesTable {
  digest: string;
  /** The GC lock holder that deletes the bytes. */
  holder: string;
  created_at: EpochMs;
}

/**
 * An upload whose bytes are being moved into the blob store under `digest`.
 * While the row exists, garbage collection keeps the blob.
 */
export interface BlobCommitsTable {
  storage_key: string;
  digest: string;
  started_at: EpochMs;
}

export interface SchemaMigrationsTable {
  version: number;
  name: string;
  applied_at: EpochMs;
}

export interface Database {
  repositories: RepositoriesTable;
  blobs: BlobsTable;
  repository_blobs: RepositoryBlobsTable;
  manifests: ManifestsTable;
  manifest_references: ManifestReferencesTable;
  tags: TagsTable;
  uploads: UploadsTable;
  accounts: AccountsTable;
  access_tokens: AccessTokensTable;
  policy_rules: PolicyRulesTable;
  auth_failures: AuthFailuresTable;
  sessions: SessionsTable;
  audit_events: AuditEventsTable;
  gc_runs: GcRunsTable;
  locks: LocksTable;
  blob_tombstones: BlobTombstonesTable;
  blob_commits: BlobCommitsTable;
  schema_migrations: SchemaMigrationsTable;
}
