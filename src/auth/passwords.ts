import { Algorithm, hash, verify } from '@node-rs/argon2';

/**
 * Hashes a password with argon2id and the library's default cost (19 MiB of
 * memory, 2 passes, 1 lane: the OWASP minimum for argon2id).
 */
export function hashPassword(password: string): Promise<string> {
  return hash(password, { algorithm: Algorithm.Argon2id });
}

/** Checks a password against an argon2 hash; false for a malformed hash. */
export async function verifyPassword(passwordHash: string, password: string): Promise<boolean> {
  try {
    return await verify(passwordHash, password);
  } catch {
    return false;
  }
}
