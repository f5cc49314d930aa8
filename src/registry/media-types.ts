/** Manifest media types mcr stores, and the ones it rejects by name. */
export const MEDIA_TYPES = {
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
  dockerManifestList: 'application/vnd.docker.distribution.manifest.list.v2+json',
} as const;

export const SCHEMA1_MEDIA_TYPES: readonly string[] = [
  'application/vnd.docker.distribution.manifest.v1+json',
  'application/vnd.docker.distribution.manifest.v1+prettyjws',
];

/** Media types whose body lists child manifests rather than a config and layers. */
export const INDEX_MEDIA_TYPES: readonly string[] = [
  MEDIA_TYPES.ociIndex,
  MEDIA_TYPES.dockerManifestList,
];

export const MANIFEST_MEDIA_TYPES: readonly string[] = Object.values(MEDIA_TYPES);

/** Layer media types that registries need not hold, when the descriptor has URLs. */
export const NON_DISTRIBUTABLE_LAYER_TYPES: readonly string[] = [
  'application/vnd.oci.image.layer.nondistributable.v1.tar',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  'application/vnd.oci.image.layer.nondistributable.v1.tar+zstd',
  'application/vnd.docker.image.rootfs.foreign.diff.tar.gzip',
];

/** Strips parameters such as "; charset=utf-8" from a Content-Type value. */
export function baseMediaType(contentType: string | undefined): string | undefined {
  if (contentType === undefined) return undefined;
  const base = contentType.split(';')[0]?.trim().toLowerCase();
  return base === '' ? undefined : base;
}
