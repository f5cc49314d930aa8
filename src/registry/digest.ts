import { createHash, type Hash } from 'node:crypto';

import { RegistryError } from './errors.js';

/** Digest algorithms mcr accepts, with the length of their hex encoding. */
export const DIGEST_ALGORITHMS = { sha256: 64, sha512: 128 } as const;

export type DigestAlgorithm = keyof typeof DIGEST_ALGORITHMS;

/** A validated `algorithm:hex` digest, split into its parts. */
export interface Digest {
  algorithm: DigestAlgorithm;
  hex: string;
  /** The canonical `algorithm:hex` form. */
  value: string;
}

const DIGEST_PATTERN = /^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$/;

/**
 * Parses a digest string, rejecting anything that is not a supported algorithm
 * followed by lower-case hex of exactly the algorithm's length. Only digests
 * that passed here may reach a storage path or a query.
 */
export function parseDigest(input: string): Digest {
  const match = DIGEST_PATTERN.exec(input);
  if (!match) {
    throw new RegistryError('DIGEST_INVALID', `invalid digest "${truncate(input)}"`, {
      detail: { digest: truncate(input) },
    });
  }

  const algorithm = match[1] as string;
  const hex = match[2] as string;
  if (!(algorithm in DIGEST_ALGORITHMS)) {
    throw new RegistryError(
      'DIGEST_INVALID',
      `unsupported digest algorithm "${truncate(algorithm)}"; use sha256 or sha512`,
      { detail: { digest: truncate(input) } },
    );
  }

  const expectedLength = DIGEST_ALGORITHMS[algorithm as DigestAlgorithm];
  if (hex.length !== expectedLength || !/^[a-f0-9]+$/.test(hex)) {
    throw new RegistryError(
      'DIGEST_INVALID',
      `invalid ${algorithm} digest: expected ${expectedLength} lower-case hex characters`,
      { detail: { digest: truncate(input) } },
    );
  }

  return { algorithm: algorithm as DigestAlgorithm, hex, value: input };
}

/** Reports whether a string is a syntactically valid, supported digest. */
export function isDigest(input: string): boolean {
  try {
    parseDigest(input);
    return true;
  } catch {
    return false;
  }
}

export function createDigestHash(algorithm: DigestAlgorithm): Hash {
  return createHash(algorithm);
}

/** Computes the digest of bytes already in memory (manifests, never blobs). */
export function digestOf(bytes: Uint8Array, algorithm: DigestAlgorithm = 'sha256'): string {
  return `${algorithm}:${createHash(algorithm).update(bytes).digest('hex')}`;
}

function truncate(value: string): string {
  return value.length > 200 ? `${value.slice(0, 200)}...` : value;
}
