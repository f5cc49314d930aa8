import { createHash, generateKeyPairSync, randomUUID, type KeyObject } from 'node:crypto';
import { createPrivateKey, createPublicKey } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';

import { jwtVerify, SignJWT } from 'jose';

/** One entry of a token's `access` claim, as the Docker token specification defines it. */
export interface AccessEntry {
  type: string;
  name: string;
  actions: string[];
}

/** The claims mcr reads back from its own tokens. */
export interface VerifiedToken {
  subject: string | undefined;
  access: AccessEntry[];
  expiresAt: number;
  issuedAt: number;
  /** Claims beyond the standard ones, as given to issue(). */
  claims: Record<string, unknown>;
}

interface SigningKey {
  kid: string;
  privateKey: KeyObject;
  publicKey: KeyObject;
  createdAt: number;
}

/**
 * Issues and verifies the registry's JWTs, signed with Ed25519 keys kept as
 * PEM files (mode 0600) in `<data_dir>/keys`. New tokens are signed with the
 * newest key; tokens signed with any key still in the folder verify, so a key
 * is rotated by adding a new file and removing the old one after the longest
 * token lifetime.
 */
export class TokenIssuer {
  private readonly keys = new Map<string, SigningKey>();
  private current: SigningKey;

  /** The keys folder's modification time when it was last read, and when that was. */
  private readMtime = 0;
  private readAt = 0;

  constructor(
    private readonly keysDir: string,
    private readonly issuer: string,
  ) {
    mkdirSync(keysDir, { recursive: true, mode: 0o700 });
    this.readKeys();
    if (this.keys.size === 0) {
      const { privateKey } = generateKeyPairSync('ed25519');
      const key = this.add(privateKey, Date.now());
      // Written under another name and renamed, so that a process starting
      // at the same moment never reads half a key.
      const partial = path.join(keysDir, `.${key.kid}.pem.${process.pid}`);
      writeFileSync(partial, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
      renameSync(partial, path.join(keysDir, `${key.kid}.pem`));
    }
    this.current = [...this.keys.values()].sort(
      (a, b) => b.createdAt - a.createdAt,
    )[0] as SigningKey;
  }

  /** Adds the Ed25519 keys of the folder's PEM files that are not known yet. */
  private readKeys(): void {
    this.readAt = Date.now();
    this.readMtime = statSync(this.keysDir).mtimeMs;
    for (const file of readdirSync(this.keysDir).filter((name) => name.endsWith('.pem'))) {
      const fullPath = path.join(this.keysDir, file);
      const privateKey = createPrivateKey(readFileSync(fullPath));
      if (privateKey.asymmetricKeyType !== 'ed25519' || this.keys.has(kidOf(privateKey))) continue;
      this.add(privateKey, statSync(fullPath).mtimeMs);
    }
  }

  /**
   * Returns the key with this id. For an unknown id it reads the folder again
   * if the folder changed since the last read, because another process may
   * have added the key. The folder's time follows the kernel's coarse clock,
   * so it also reads again while the last read came within a second of the
   * folder's last change.
   */
  private keyById(kid: string): SigningKey | undefined {
    if (!this.keys.has(kid)) {
      const mtime = statSync(this.keysDir).mtimeMs;
      if (mtime !== this.readMtime || this.readAt - mtime < KEYS_SETTLED_MS) this.readKeys();
    }
    return this.keys.get(kid);
  }

  /** The key id new tokens carry in their header. */
  get keyId(): string {
    return this.current.kid;
  }

  private add(privateKey: KeyObject, createdAt: number): SigningKey {
    const key = {
      kid: kidOf(privateKey),
      privateKey,
      publicKey: createPublicKey(privateKey),
      createdAt,
    };
    this.keys.set(key.kid, key);
    return key;
  }

  /** Signs a token for `audience` (the service) granting `access`. */
  async issue(options: {
    subject: string | undefined;
    audience: string;
    access: AccessEntry[];
    ttlMs: number;
    kind?: 'access' | 'refresh';
    /** Extra claims, such as the limits a refresh token carries forward. */
    claims?: Record<string, unknown>;
  }): Promise<{ token: string; issuedAt: Date; expiresIn: number }> {
    const issuedAt = new Date();
    const expiresIn = Math.max(1, Math.floor(options.ttlMs / 1000));
    const jwt = new SignJWT({
      ...options.claims,
      access: options.access,
      kind: options.kind ?? 'access',
    })
      .setProtectedHeader({ alg: 'EdDSA', kid: this.current.kid, typ: 'JWT' })
      .setIssuer(this.issuer)
      .setAudience(options.audience)
      .setIssuedAt(Math.floor(issuedAt.getTime() / 1000))
      .setNotBefore(Math.floor(issuedAt.getTime() / 1000) - 5)
      .setExpirationTime(Math.floor(issuedAt.getTime() / 1000) + expiresIn)
      .setJti(randomUUID());
    if (options.subject !== undefined) jwt.setSubject(options.subject);
    return { token: await jwt.sign(this.current.privateKey), issuedAt, expiresIn };
  }

  /** Verifies signature, issuer, audience and lifetime; returns undefined for any failure. */
  async verify(
    token: string,
    audience: string,
    kind: 'access' | 'refresh' = 'access',
  ): Promise<VerifiedToken | undefined> {
    try {
      const { payload } = await jwtVerify(
        token,
        async (header) => {
          const key = this.keyById(header.kid ?? '');
          if (!key) throw new Error(`unknown key id ${header.kid}`);
          return key.publicKey;
        },
        { issuer: this.issuer, audience, algorithms: ['EdDSA'] },
      );
      if ((payload.kind ?? 'access') !== kind) return undefined;
      const access = Array.isArray(payload.access) ? (payload.access as AccessEntry[]) : [];
      return {
        subject: payload.sub,
        access,
        expiresAt: (payload.exp ?? 0) * 1000,
        issuedAt: (payload.iat ?? 0) * 1000,
        claims: payload as Record<string, unknown>,
      };
    } catch {
      return undefined;
    }
  }
}

/** How long after the keys folder's last change a read of it is trusted to have seen every key. */
const KEYS_SETTLED_MS = 1000;

/** Returns the key id of a key: the start of the SHA-256 of its public key. */
function kidOf(privateKey: KeyObject): string {
  const der = createPublicKey(privateKey).export({ type: 'spki', format: 'der' });
  return createHash('sha256').update(der).digest('base64url').slice(0, 16);
}
