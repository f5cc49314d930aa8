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
  schema_migrations: SchemaMigrationsTable;
}
