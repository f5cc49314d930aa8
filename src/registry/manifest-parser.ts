import { parseDigest } from './digest.js';
import { RegistryError } from './errors.js';
import {
  baseMediaType,
  INDEX_MEDIA_TYPES,
  MANIFEST_MEDIA_TYPES,
  MEDIA_TYPES,
  SCHEMA1_MEDIA_TYPES,
} from './media-types.js';

/** A content descriptor as the OCI image specification defines it. */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  urls?: string[];
  artifactType?: string;
  annotations?: Record<string, string>;
}

/** The parts of a manifest or index that the registry validates and indexes. */
export interface ParsedManifest {
  mediaType: string;
  isIndex: boolean;
  config?: Descriptor;
  layers: Descriptor[];
  /** Child manifests of an index. */
  manifests: Descriptor[];
  subject?: Descriptor;
  /** `artifactType`, or for an image manifest without one, the config's media type. */
  artifactType?: string;
  annotations?: Record<string, string>;
}

/**
 * Parses and checks the structure of a manifest body. The media type comes
 * from the body's `mediaType` or, failing that, from the Content-Type header;
 * when both are present they must agree.
 */
export function parseManifest(bytes: Buffer, contentType: string | undefined): ParsedManifest {
  let body: unknown;
  try {
    body = JSON.parse(bytes.toString('utf8'));
  } catch (error) {
    throw invalid(`manifest is not valid JSON: ${(error as Error).message}`);
  }
  if (!isObject(body)) throw invalid('manifest must be a JSON object');

  if (body.schemaVersion === 1) {
    throw invalid('Docker schema 1 manifests are not supported; push schema 2 or OCI instead');
  }
  if (body.schemaVersion !== 2) {
    throw invalid(`schemaVersion must be 2, not ${JSON.stringify(body.schemaVersion)}`);
  }

  const headerType = baseMediaType(contentType);
  const bodyType = body.mediaType;
  if (bodyType !== undefined && typeof bodyType !== 'string') {
    throw invalid('mediaType must be a string');
  }
  if (bodyType !== undefined && headerType !== undefined && bodyType !== headerType) {
    throw invalid(
      `mediaType "${bodyType}" in the manifest does not match Content-Type "${headerType}"`,
    );
  }

  const mediaType = bodyType ?? headerType;
  if (mediaType === undefined) {
    throw invalid('manifest has no mediaType and the request has no Content-Type');
  }
  if (SCHEMA1_MEDIA_TYPES.includes(mediaType)) {
    throw invalid('Docker schema 1 manifests are not supported; push schema 2 or OCI instead');
  }
  if (!MANIFEST_MEDIA_TYPES.includes(mediaType)) {
    throw invalid(
      `unsupported manifest media type "${mediaType}"; expected one of ${MANIFEST_MEDIA_TYPES.join(', ')}`,
    );
  }

  const artifactType = optionalString(body, 'artifactType');
  const annotations = optionalAnnotations(body.annotations, 'annotations');
  const subject = body.subject === undefined ? undefined : descriptor(body.subject, 'subject');

  if (INDEX_MEDIA_TYPES.includes(mediaType)) {
    if (!Array.isArray(body.manifests)) throw invalid('an index must have a "manifests" array');
    const manifests = body.manifests.map((item, i) => descriptor(item, `manifests[${i}]`));
    return {
      mediaType,
      isIndex: true,
      layers: [],
      manifests,
      subject,
      artifactType,
      annotations,
    };
  }

  if (body.config === undefined) throw invalid('a manifest must have a "config" descriptor');
  const config = descriptor(body.config, 'config');
  const rawLayers = body.layers ?? [];
  if (!Array.isArray(rawLayers)) throw invalid('"layers" must be an array');
  const layers = rawLayers.map((item, i) => descriptor(item, `layers[${i}]`));

  if (mediaType === MEDIA_TYPES.dockerManifest && artifactType !== undefined) {
    throw invalid('Docker schema 2 manifests cannot have an artifactType');
  }

  return {
    mediaType,
    isIndex: false,
    config,
    layers,
    manifests: [],
    subject,
    artifactType: artifactType ?? config.mediaType,
    annotations,
  };
}

function descriptor(value: unknown, where: string): Descriptor {
  if (!isObject(value)) throw invalid(`${where} must be a descriptor object`);

  const mediaType = value.mediaType;
  if (typeof mediaType !== 'string' || mediaType === '') {
    throw invalid(`${where}.mediaType must be a non-empty string`);
  }

  const digest = value.digest;
  if (typeof digest !== 'string') throw invalid(`${where}.digest must be a string`);
  try {
    parseDigest(digest);
  } catch {
    throw invalid(`${where}.digest "${digest.slice(0, 200)}" is not a valid digest`);
  }

  const size = value.size;
  if (typeof size !== 'number' || !Number.isSafeInteger(size) || size < 0) {
    throw invalid(`${where}.size must be a non-negative integer`);
  }

  let urls: string[] | undefined;
  if (value.urls !== undefined) {
    if (!Array.isArray(value.urls) || !value.urls.every((url) => typeof url === 'string')) {
      throw invalid(`${where}.urls must be an array of strings`);
    }
    urls = value.urls as string[];
  }

  return {
    mediaType,
    digest,
    size,
    urls,
    artifactType: optionalString(value, 'artifactType', where),
    annotations: optionalAnnotations(value.annotations, `${where}.annotations`),
  };
}

function optionalString(
  value: Record<string, unknown>,
  key: string,
  where?: string,
): string | undefined {
  const field = value[key];
  if (field === undefined) return undefined;
  if (typeof field !== 'string') {
    throw invalid(`${where ? `${where}.` : ''}${key} must be a string`);
  }
  // PostgreSQL cannot store one, and no media type or artifact type has one.
  if (field.includes('\0')) {
    throw invalid(`${where ? `${where}.` : ''}${key} must not contain a NUL character`);
  }
  return field;
}

function optionalAnnotations(value: unknown, where: string): Record<string, string> | undefined {
  if (value === undefined) return undefined;
  if (!isObject(value) || !Object.values(value).every((v) => typeof v === 'string')) {
    throw invalid(`${where} must be an object of string values`);
  }
  return value as Record<string, string>;
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function invalid(message: string): RegistryError {
  return new RegistryError('MANIFEST_INVALID', message);
}
