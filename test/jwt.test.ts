import assert from 'node:assert/strict';
import { createPrivateKey, generateKeyPairSync } from 'node:crypto';
import {
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';

import { SignJWT } from 'jose';

import { TokenIssuer } from '../src/auth/jwt.js';

const ACCESS = [{ type: 'repository', name: 'team/app', actions: ['pull'] }];

function newIssuer(): { issuer: TokenIssuer; keysDir: string } {
  const keysDir = path.join(mkdtempSync(path.join(tmpdir(), 'mcr-keys-')), 'keys');
  return { issuer: new TokenIssuer(keysDir, 'mcr'), keysDir };
}

function currentKey(keysDir: string) {
  const file = readdirSync(keysDir).find((name) => name.endsWith('.pem')) as string;
  return {
    kid: file.replace(/\.pem$/, ''),
    key: createPrivateKey(readFileSync(path.join(keysDir, file))),
  };
}

/** Signs arbitrary claims with the issuer's own key, to build tokens it must reject. */
async function forge(
  keysDir: string,
  claims: Record<string, unknown>,
  options: { exp?: number; aud?: string; iss?: string } = {},
) {
  const { kid, key } = currentKey(keysDir);
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ kind: 'access', access: ACCESS, ...claims })
    .setProtectedHeader({ alg: 'EdDSA', kid })
    .setIssuer(options.iss ?? 'mcr')
    .setAudience(options.aud ?? 'mcr')
    .setSubject('alice')
    .setIssuedAt(now - 10)
    .setExpirationTime(options.exp ?? now + 60)
    .sign(key);
}

describe('TokenIssuer', () => {
  it('keeps its Ed25519 key in a 0600 file named by key id', async () => {
    const { issuer, keysDir } = newIssuer();
    const { kid } = currentKey(keysDir);
    assert.equal(issuer.keyId, kid);
    assert.equal(statSync(path.join(keysDir, `${kid}.pem`)).mode & 0o777, 0o600);

    const { token } = await issuer.issue({
      subject: 'alice',
      audience: 'mcr',
      access: ACCESS,
      ttlMs: 60_000,
    });
    const header = JSON.parse(Buffer.from(token.split('.')[0] as string, 'base64url').toString());
    assert.deepEqual(header, { alg: 'EdDSA', kid, typ: 'JWT' });
    const verified = await issuer.verify(token, 'mcr');
    assert.equal(verified?.subject, 'alice');
    assert.deepEqual(verified?.access, ACCESS);
  });

  it('rejects a tampered signature or payload', async () => {
    const { issuer } = newIssuer();
    const { token } = await issuer.issue({
      subject: 'alice',
      audience: 'mcr',
      access: ACCESS,
      ttlMs: 60_000,
    });
    const [header, payload, signature] = token.split('.') as [string, string, string];
    const flipped = signature.slice(0, -2) + (signature.endsWith('AA') ? 'BA' : 'AA');
    assert.equal(await issuer.verify(`${header}.${payload}.${flipped}`, 'mcr'), undefined);

    const wider = JSON.parse(Buffer.from(payload, 'base64url').toString());
    wider.access = [{ type: 'repository', name: 'team/app', actions: ['pull', 'push', 'delete'] }];
    const widened = Buffer.from(JSON.stringify(wider)).toString('base64url');
    assert.equal(await issuer.verify(`${header}.${widened}.${signature}`, 'mcr'), undefined);
  });

  it('rejects alg none', async () => {
    const { issuer } = newIssuer();
    const header = Buffer.from(JSON.stringify({ alg: 'none', typ: 'JWT' })).toString('base64url');
    const payload = Buffer.from(
      JSON.stringify({
        sub: 'alice',
        aud: 'mcr',
        iss: 'mcr',
        exp: Math.floor(Date.now() / 1000) + 60,
        access: ACCESS,
        kind: 'access',
      }),
    ).toString('base64url');
    assert.equal(await issuer.verify(`${header}.${payload}.`, 'mcr'), undefined);
  });

  it('rejects an expired token, a wrong audience and a wrong issuer', async () => {
    const { issuer, keysDir } = newIssuer();
    assert.ok(
      await issuer.verify(await forge(keysDir, {}), 'mcr'),
      'a well-formed forged token verifies',
    );
    const expired = await forge(keysDir, {}, { exp: Math.floor(Date.now() / 1000) - 1 });
    assert.equal(await issuer.verify(expired, 'mcr'), undefined);
    assert.equal(
      await issuer.verify(await forge(keysDir, {}, { aud: 'other-registry' }), 'mcr'),
      undefined,
    );
    assert.equal(await issuer.verify(await forge(keysDir, {}), 'other-service'), undefined);
    assert.equal(
      await issuer.verify(await forge(keysDir, {}, { iss: 'someone-else' }), 'mcr'),
      undefined,
    );
  });

  it('keeps refresh and access tokens apart', async () => {
    const { issuer } = newIssuer();
    const refresh = await issuer.issue({
      subject: 'alice',
      audience: 'mcr',
      access: [],
      ttlMs: 60_000,
      kind: 'refresh',
    });
    assert.equal(await issuer.verify(refresh.token, 'mcr'), undefined);
    assert.ok(await issuer.verify(refresh.token, 'mcr', 'refresh'));
  });

  it('accepts a key added in the same clock tick', async () => {
    const { issuer, keysDir } = newIssuer();
    // The folder's time is set by hand, so that it can be set back exactly.
    const tick = Date.now() / 1000;
    utimesSync(keysDir, tick, tick);
    // A token with an unknown key id makes the issuer read the folder.
    const stranger = await new SignJWT({ kind: 'access', access: ACCESS })
      .setProtectedHeader({ alg: 'EdDSA', kid: 'unknown-key' })
      .sign(generateKeyPairSync('ed25519').privateKey);
    assert.equal(await issuer.verify(stranger, 'mcr'), undefined);

    // Another process adds its key, and the folder keeps its time, as when
    // the change falls within the kernel's clock tick of that read.
    const { issuer: other, keysDir: otherDir } = newIssuer();
    const { kid } = currentKey(otherDir);
    writeFileSync(
      path.join(keysDir, `${kid}.pem`),
      readFileSync(path.join(otherDir, `${kid}.pem`)),
      { mode: 0o600 },
    );
    utimesSync(keysDir, tick, tick);

    const { token } = await other.issue({
      audience: 'mcr',
      access: ACCESS,
      subject: 'alice',
      ttlMs: 60_000,
    });
    const verified = await issuer.verify(token, 'mcr');
    assert.equal(verified?.subject, 'alice');
  });

  it('rotates keys and retires old tokens', async () => {
    const { issuer, keysDir } = newIssuer();
    const old = await issuer.issue({
      subject: 'alice',
      audience: 'mcr',
      access: ACCESS,
      ttlMs: 60_000,
    });

    // Rotation: add a new key, keep the old one while its tokens live.
    const { privateKey } = generateKeyPairSync('ed25519');
    const newFile = path.join(keysDir, 'new-key.pem');
    writeFileSync(newFile, privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o600 });
    // The newest file signs; make "newest" independent of timestamp resolution.
    const later = new Date(Date.now() + 60_000);
    utimesSync(newFile, later, later);
    const rotated = new TokenIssuer(keysDir, 'mcr');
    assert.notEqual(rotated.keyId, issuer.keyId);
    assert.ok(
      await rotated.verify(old.token, 'mcr'),
      'old tokens verify while the old key is kept',
    );
    const fresh = await rotated.issue({
      subject: 'alice',
      audience: 'mcr',
      access: ACCESS,
      ttlMs: 60_000,
    });

    // Removing the old key retires its tokens.
    rmSync(path.join(keysDir, `${issuer.keyId}.pem`));
    const retired = new TokenIssuer(keysDir, 'mcr');
    assert.equal(await retired.verify(old.token, 'mcr'), undefined);
    assert.ok(await retired.verify(fresh.token, 'mcr'));
  });
});
