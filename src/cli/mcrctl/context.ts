import type { Command } from 'commander';

import { ApiClient, type Credentials } from './client.js';
import { configPath, readStoredLogin, type StoredLogin } from './config.js';
import { CliError, ExitCode, usageError } from './errors.js';

/** Prefix of mcr access token secrets, which the server accepts only as a Basic password. */
const ACCESS_TOKEN_PREFIX = 'mcr_pat_';

/** Options that every command accepts (defined on the root command). */
export interface GlobalOptions {
  url?: string;
  token?: string;
  user?: string;
  json?: boolean;
}

/** Returns the root command's options as seen from `command`. */
export function globalOptions(command: Command): GlobalOptions {
  return command.optsWithGlobals<GlobalOptions>();
}

/** The server and credentials a command uses, resolved from options, environment and config. */
export interface Session {
  client: ApiClient;
  url: string;
  /** The account name, when the credentials include it. */
  username: string | undefined;
  /** Source of the credentials. */
  source: 'token option' | 'config file' | 'none';
  configFile: string;
  stored: StoredLogin | undefined;
}

/**
 * Validates a server URL and returns it without a trailing slash.
 * Only http and https URLs without query or fragment are accepted.
 */
export function normalizeUrl(input: string): string {
  let url: URL;
  try {
    url = new URL(input.trim());
  } catch {
    throw usageError(
      `invalid server URL ${JSON.stringify(input)}`,
      'give a URL such as https://registry.example.com or http://127.0.0.1:5000',
    );
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw usageError(
      `invalid server URL ${JSON.stringify(input)}: the scheme must be http or https`,
      'give a URL such as https://registry.example.com or http://127.0.0.1:5000',
    );
  }
  if (url.search !== '' || url.hash !== '' || url.username !== '' || url.password !== '') {
    throw usageError(
      `invalid server URL ${JSON.stringify(input)}: remove the credentials, query or fragment`,
    );
  }
  return `${url.origin}${url.pathname}`.replace(/\/+$/, '');
}

/** Returns the advice printed when a command needs a login. */
export function loginHint(url: string | undefined): string {
  return url ? `run mcrctl login ${url}` : 'run mcrctl login URL';
}

/**
 * Resolves the server URL and credentials for a command. The URL is --url,
 * else $MCRCTL_URL, else the stored login's. The credentials are --token
 * (or $MCRCTL_TOKEN), else the stored session token, which is sent only to
 * the server it was issued by.
 */
export function resolveSession(command: Command): Session {
  const options = globalOptions(command);
  const configFile = configPath();
  const stored = readStoredLogin(configFile);

  const rawUrl = options.url ?? stored?.url;
  if (rawUrl === undefined) {
    throw new CliError(
      ExitCode.unauthenticated,
      'not logged in: no server URL is stored or given',
      'run mcrctl login URL, or pass --url and --token',
    );
  }
  const url = normalizeUrl(rawUrl);

  let credentials: Credentials | undefined;
  let username: string | undefined;
  let source: Session['source'] = 'none';
  if (options.token !== undefined && options.token !== '') {
    source = 'token option';
    username = options.user;
    if (options.token.startsWith(ACCESS_TOKEN_PREFIX)) {
      if (!options.user) {
        throw usageError(
          'an access token (mcr_pat_...) needs the name of its account',
          'pass --user NAME or set MCRCTL_USER',
        );
      }
      credentials = { type: 'basic', username: options.user, password: options.token };
    } else {
      credentials = { type: 'bearer', token: options.token };
    }
  } else if (stored && normalizeUrl(stored.url) === url) {
    source = 'config file';
    username = stored.username;
    credentials = { type: 'bearer', token: stored.token };
  }

  return {
    client: new ApiClient(url, credentials, loginHint(url)),
    url,
    username,
    source,
    configFile,
    stored,
  };
}
