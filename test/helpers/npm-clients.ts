// Pushes and pulls with the npm registry-client libraries that the interop
// tests drive: oci-registry-client (push and pull) and
// @snyk/docker-registry-v2-client (pull only). oci-registry-client picks
// plain HTTP for 127.0.0.1 by itself, and the Snyk client gets it through
// its `protocol` option.
import { Readable } from 'node:stream';

import { getLayer, getManifest as snykGetManifest } from '@snyk/docker-registry-v2-client';
import { RegistryClientV2 } from 'oci-registry-client';

import { ALL_MANIFEST_TYPES, sha256 } from './oci.js';

/** A registry account's credentials. */
export interface Credentials {
  username: string;
  password: string;
}

/** What a library pulled: the manifest and the bytes of its config and layers by digest. */
export interface PulledImage {
  /** The digest the library reports for the manifest. */
  digest: string;
  mediaType: string;
  manifest: {
    artifactType?: string;
    config: { digest: string };
    layers: Array<{ digest: string }>;
  };
  blobs: Map<string, Buffer>;
}

/**
 * Returns an oci-registry-client for `host/repository` that accepts OCI
 * manifests and indexes as well as Docker ones.
 */
export function ociRegistryClient(
  host: string,
  repository: string,
  credentials: Credentials,
): RegistryClientV2 {
  return new RegistryClientV2({
    name: `${host}/${repository}`,
    username: credentials.username,
    password: credentials.password,
    acceptOCIManifests: true,
    acceptManifestLists: true,
  });
}

/**
 * Uploads each blob with oci-registry-client (POST, then PUT with the
 * digest), then the manifest under `reference`. Returns the digest from
 * the registry's Docker-Content-Digest header.
 */
export async function pushWithOciRegistryClient(
  client: RegistryClientV2,
  blobs: Buffer[],
  manifest: Buffer,
  mediaType: string,
  reference: string,
): Promise<string | null> {
  for (const blob of blobs) {
    await client.blobUpload({
      digest: sha256(blob),
      stream: Readable.from([blob]),
      contentLength: blob.length,
    });
  }
  const { digest } = await client.putManifest({
    manifestData: manifest,
    ref: reference,
    mediaType,
  });
  return digest;
}

/** Pulls a manifest and every blob it names with oci-registry-client. */
export async function pullWithOciRegistryClient(
  client: RegistryClientV2,
  reference: string,
): Promise<PulledImage> {
  const { resp, manifest } = await client.getManifest({ ref: reference });
  // The response is a node-fetch Response. The package's types name it, but
  // without @types/node-fetch installed TypeScript does not see its headers.
  const headers = (resp as unknown as { headers: Headers }).headers;
  const image = manifest as PulledImage['manifest'];
  const blobs = new Map<string, Buffer>();
  for (const { digest } of [image.config, ...image.layers]) {
    const { stream } = await client.createBlobReadStream({ digest });
    const chunks: Buffer[] = [];
    for await (const chunk of stream) chunks.push(Buffer.from(chunk as Buffer));
    blobs.set(digest, Buffer.concat(chunks));
  }
  return {
    digest: headers.get('docker-content-digest') ?? '',
    mediaType: headers.get('content-type') ?? '',
    manifest: image,
    blobs,
  };
}

/**
 * Pulls a manifest and every blob it names with the Snyk client, over
 * plain HTTP. The returned `digest` is the client's `manifestDigest`.
 */
export async function pullWithSnyk(
  host: string,
  repository: string,
  reference: string,
  credentials: Credentials,
): Promise<PulledImage> {
  const options = { protocol: 'http:', acceptManifest: ALL_MANIFEST_TYPES };
  const manifest = await snykGetManifest(
    host,
    repository,
    reference,
    credentials.username,
    credentials.password,
    options,
  );
  const blobs = new Map<string, Buffer>();
  for (const { digest } of [manifest.config, ...manifest.layers]) {
    const bytes = await getLayer(
      host,
      repository,
      digest,
      credentials.username,
      credentials.password,
      { protocol: 'http:' },
    );
    blobs.set(digest, bytes);
  }
  return {
    digest: manifest.manifestDigest ?? '',
    mediaType: manifest.manifestContentType ?? '',
    manifest,
    blobs,
  };
}
