import { createHash } from 'node:crypto';

/** sha256 digest string of some bytes. */
export function sha256(data: Buffer | string): string {
  return `sha256:${createHash('sha256').update(data).digest('hex')}`;
}

/** sha512 digest string of some bytes. */
export function sha512(data: Buffer | string): string {
  return `sha512:${createHash('sha512').update(data).digest('hex')}`;
}

export const OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json';
export const OCI_INDEX = 'application/vnd.oci.image.index.v1+json';
export const OCI_CONFIG = 'application/vnd.oci.image.config.v1+json';
export const OCI_LAYER = 'application/vnd.oci.image.layer.v1.tar+gzip';
export const OCI_EMPTY = 'application/vnd.oci.empty.v1+json';
export const DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json';
export const DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json';
export const DOCKER_CONFIG = 'application/vnd.docker.container.image.v1+json';

/** Anything that sends authenticated requests to a registry, such as a TestServer. */
export interface RegistryClient {
  fetch(target: string, init?: RequestInit): Promise<Response>;
}

/** Pushes a blob in one request (POST with digest); returns its digest. */
export async function pushBlob(
  client: RegistryClient,
  name: string,
  data: Buffer | string,
): Promise<string> {
  const bytes = Buffer.from(data);
  const digest = sha256(bytes);
  const response = await client.fetch(`/v2/${name}/blobs/uploads/?digest=${digest}`, {
    method: 'POST',
    body: bytes,
    headers: { 'Content-Type': 'application/octet-stream' },
  });
  if (response.status !== 201) {
    throw new Error(
      `push of blob ${digest} to ${name} failed: ${response.status} ${await response.text()}`,
    );
  }
  return digest;
}

/** Builds the descriptor of some bytes with a media type. */
export function descriptor(mediaType: string, data: Buffer | string) {
  const bytes = Buffer.from(data);
  return { mediaType, digest: sha256(bytes), size: bytes.length };
}

/**
 * Pushes a small image (config and one layer) and its manifest under `reference`;
 * returns the manifest's bytes and digest.
 */
export async function pushImage(
  client: RegistryClient,
  name: string,
  reference: string,
  options: {
    layer?: string;
    subject?: { mediaType: string; digest: string; size: number };
    artifactType?: string;
    configMediaType?: string;
  } = {},
): Promise<{ digest: string; body: Buffer; layerDigest: string; configDigest: string }> {
  const config = JSON.stringify({
    architecture: 'amd64',
    os: 'linux',
    rootfs: { type: 'layers', diff_ids: [] },
  });
  const layer = options.layer ?? `layer of ${name}:${reference} ${Math.random()}`;
  const configDigest = await pushBlob(client, name, config);
  const layerDigest = await pushBlob(client, name, layer);
  const manifest: Record<string, unknown> = {
    schemaVersion: 2,
    mediaType: OCI_MANIFEST,
    config: descriptor(options.configMediaType ?? OCI_CONFIG, config),
    layers: [descriptor(OCI_LAYER, layer)],
  };
  if (options.artifactType) manifest.artifactType = options.artifactType;
  if (options.subject) manifest.subject = options.subject;
  const body = Buffer.from(JSON.stringify(manifest));
  const response = await client.fetch(`/v2/${name}/manifests/${reference}`, {
    method: 'PUT',
    body,
    headers: { 'Content-Type': OCI_MANIFEST },
  });
  if (response.status !== 201) {
    throw new Error(
      `push of manifest ${name}:${reference} failed: ${response.status} ${await response.text()}`,
    );
  }
  return { digest: sha256(body), body, layerDigest, configDigest };
}

/** Accept header that lists every manifest media type mcr stores, except Docker schema 1. */
export const ALL_MANIFEST_TYPES = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST].join(
  ', ',
);

/** A manifest as the registry served it. */
export interface ServedManifest {
  status: number;
  /** The Docker-Content-Digest header. */
  digest: string | null;
  /** The Content-Type header. */
  mediaType: string | null;
  body: Buffer;
}

/** Fetches a manifest by tag or digest, accepting every manifest media type. */
export async function fetchManifest(
  client: RegistryClient,
  name: string,
  reference: string,
): Promise<ServedManifest> {
  const response = await client.fetch(`/v2/${name}/manifests/${reference}`, {
    headers: { Accept: ALL_MANIFEST_TYPES },
  });
  return {
    status: response.status,
    digest: response.headers.get('docker-content-digest'),
    mediaType: response.headers.get('content-type'),
    body: Buffer.from(await response.arrayBuffer()),
  };
}

/** Fetches a blob. Throws unless the registry returns 200. */
export async function fetchBlob(
  client: RegistryClient,
  name: string,
  digest: string,
): Promise<Buffer> {
  const response = await client.fetch(`/v2/${name}/blobs/${digest}`);
  if (response.status !== 200) {
    throw new Error(`GET blob ${digest} from ${name} returned ${response.status}`);
  }
  return Buffer.from(await response.arrayBuffer());
}
