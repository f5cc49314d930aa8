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
  schema_migrations: SchemaMigrationsTable;
}
