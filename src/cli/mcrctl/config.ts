import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { homedir } from 'node:os';
import path from 'node:path';

import { CliError, ExitCode } from './errors.js';

/** The login that `mcrctl login` stores: the server URL, the account and its session token. */
export interface StoredLogin {
  url: string;
  token: string;
  username: string;
}

/**
 * Returns the config file path: $MCRCTL_CONFIG, else
 * $XDG_CONFIG_HOME/mcr/mcrctl.json, else ~/.config/mcr/mcrctl.json.
 */
export function configPath(env: NodeJS.ProcessEnv = process.env): string {
  if (env.MCRCTL_CONFIG) return path.resolve(env.MCRCTL_CONFIG);
  const base = env.XDG_CONFIG_HOME ? env.XDG_CONFIG_HOME : path.join(homedir(), '.config');
  return path.join(base, 'mcr', 'mcrctl.json');
}

/** Reads the stored login, or returns undefined when there is no config file. */
export function readStoredLogin(file: string): StoredLogin | undefined {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw new CliError(
      ExitCode.failure,
      `cannot read config file ${file}: ${(error as Error).message}`,
    );
  }

  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new CliError(
      ExitCode.failure,
      `config file ${file} is not valid JSON: ${(error as Error).message}`,
      `delete it and run mcrctl login URL again`,
    );
  }
  const login = parsed as Partial<StoredLogin>;
  if (
    typeof login.url !== 'string' ||
    typeof login.token !== 'string' ||
    typeof login.username !== 'string'
  ) {
    throw new CliError(
      ExitCode.failure,
      `config file ${file} lacks url, token or username`,
      `delete it and run mcrctl login URL again`,
    );
  }

  const mode = statSync(file).mode & 0o777;
  if (mode & 0o077) {
    process.stderr.write(
      `mcrctl: warning: config file ${file} has mode ${mode.toString(8)} and other users ` +
        `may read the session token in it; run chmod 600 ${file}\n`,
    );
  }
  return { url: login.url, token: login.token, username: login.username };
}

/**
 * Writes the stored login with mode 0600, creating missing directories with
 * mode 0700. The file is written under a temporary name and renamed, so a
 * reader never sees half a file and an older file's looser mode is replaced.
 */
export function writeStoredLogin(file: string, login: StoredLogin): void {
  const directory = path.dirname(file);
  mkdirSync(directory, { recursive: true, mode: 0o700 });
  const temporary = path.join(directory, `.mcrctl-${randomBytes(6).toString('hex')}.tmp`);
  try {
    writeFileSync(temporary, `${JSON.stringify(login, null, 2)}\n`, { mode: 0o600, flag: 'wx' });
    // The mode given to writeFileSync is masked by the umask; 0600 survives any
    // usual umask, but chmod makes it exact.
    chmodSync(temporary, 0o600);
    renameSync(temporary, file);
  } catch (error) {
    rmSync(temporary, { force: true });
    throw new CliError(
      ExitCode.failure,
      `cannot write config file ${file}: ${(error as Error).message}`,
      'set MCRCTL_CONFIG to a writable path',
    );
  }
}

/** Deletes the config file; a missing file is not an error. */
export function removeStoredLogin(file: string): void {
  rmSync(file, { force: true });
}
