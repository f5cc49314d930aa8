import type { Command } from 'commander';

import { ApiClient, apiPath } from './client.js';
import { configPath, readStoredLogin, removeStoredLogin, writeStoredLogin } from './config.js';
import { globalOptions, loginHint, normalizeUrl, resolveSession } from './context.js';
import { CliError, ExitCode, usageError } from './errors.js';
import { formatTime, printFields, printJson, printLine, printNote } from './output.js';
import { isInteractive, promptLine, promptSecret, readStdinSecret } from './prompt.js';

interface LoginResponse {
  token: string;
  expires_at: string | null;
  account: { username: string; role: string; kind: string };
}

interface HealthResponse {
  status: 'ok' | 'degraded';
  checks: Record<string, { ok: boolean; error?: string }>;
}

interface AccountResponse {
  username: string;
  role: string;
  kind: string;
  disabled: boolean;
}

/** Registers login, logout and status. */
export function registerSessionCommands(program: Command): void {
  program
    .command('login')
    .argument('[url]', 'server URL (default: --url, $MCRCTL_URL or the stored login)')
    .description('log in to an mcr server and store a session token in the config file')
    .option('-u, --username <name>', 'account name (prompted for when omitted)')
    .option('--password-stdin', 'read the password from standard input')
    .addHelpText(
      'after',
      `
The session token is stored in $MCRCTL_CONFIG, else $XDG_CONFIG_HOME/mcr/mcrctl.json,
else ~/.config/mcr/mcrctl.json, with file mode 0600. The password is never stored.

Examples:
  mcrctl login https://registry.example.com
  printf '%s' "$PASSWORD" | mcrctl login http://127.0.0.1:5000 -u admin --password-stdin`,
    )
    .action(login);

  program
    .command('logout')
    .description('revoke the session on the server and delete the stored login')
    .action(logout);

  program
    .command('status')
    .description('show the server URL, its health and the account you are logged in as')
    .addHelpText(
      'after',
      `
Exits with 7 when the server is unreachable, 3 when not logged in or the
session is no longer valid, 1 when the server reports degraded health, else 0.`,
    )
    .action(status);
}

async function login(
  urlArgument: string | undefined,
  options: { username?: string; passwordStdin?: boolean },
  command: Command,
): Promise<void> {
  const file = configPath();
  const rawUrl = urlArgument ?? globalOptions(command).url ?? readStoredLogin(file)?.url;
  if (rawUrl === undefined) {
    throw usageError(
      'missing server URL',
      'run mcrctl login URL, for example mcrctl login https://registry.example.com',
    );
  }
  const url = normalizeUrl(rawUrl);

  let username = options.username;
  if (username === undefined) {
    if (!isInteractive()) {
      throw usageError(
        'missing --username',
        'pass --username NAME when standard input is not a terminal',
      );
    }
    username = await promptLine('Username: ');
    if (username === '') throw usageError('missing username');
  }

  let password: string;
  if (options.passwordStdin) {
    password = await readStdinSecret('--password-stdin');
  } else if (isInteractive()) {
    password = await promptSecret('Password: ');
  } else {
    throw usageError(
      'missing password: standard input is not a terminal',
      'pipe the password in and pass --password-stdin',
    );
  }

  const client = new ApiClient(url, undefined, loginHint(url));
  let response;
  try {
    response = await client.request<LoginResponse>(
      'POST',
      '/v1/auth/login',
      `log in to ${url} as ${username}`,
      { anonymous: true, body: { username, password } },
    );
  } catch (error) {
    if (error instanceof CliError && error.exitCode === ExitCode.unauthenticated) {
      throw new CliError(error.exitCode, error.message, 'check the username and password');
    }
    throw error;
  }

  const session = response.body;
  if (typeof session?.token !== 'string' || session.token === '') {
    throw new CliError(ExitCode.failure, `login to ${url} failed: the response has no token`);
  }
  const account = session.account ?? { username, role: undefined, kind: undefined };
  writeStoredLogin(file, { url, token: session.token, username: account.username });

  if (globalOptions(command).json) {
    printJson({
      url,
      username: account.username,
      role: account.role,
      kind: account.kind,
      expires_at: session.expires_at ?? null,
      config_file: file,
    });
    return;
  }
  printLine(`Logged in to ${url} as ${account.username} (role ${account.role}, ${account.kind}).`);
  if (session.expires_at) printLine(`The session expires at ${formatTime(session.expires_at)}.`);
}

async function logout(_options: unknown, command: Command): Promise<void> {
  const json = globalOptions(command).json;
  const { source } = resolveSessionOrNone(command);
  if (source === undefined || source.source === 'none') {
    if (json) printJson({ logged_out: false });
    else printNote('not logged in; nothing to do');
    return;
  }

  let revokeError: CliError | undefined;
  try {
    await source.client.request('POST', '/v1/auth/logout', `log out of ${source.url}`, {
      // 401: the session has expired or was revoked already, so logging out is done.
      acceptStatus: [401],
    });
  } catch (error) {
    if (!(error instanceof CliError)) throw error;
    revokeError = error;
  }
  if (source.source === 'config file') removeStoredLogin(source.configFile);

  if (revokeError) {
    const local = source.source === 'config file' ? 'deleted the stored login, but ' : '';
    throw new CliError(
      revokeError.exitCode,
      `${local}could not revoke the session on the server: ${revokeError.message}`,
      'the session stays valid until it expires',
    );
  }
  if (json) printJson({ logged_out: true, url: source.url });
  else printLine(`Logged out of ${source.url}.`);
}

/** Resolves the session, or returns undefined when no server URL is known at all. */
function resolveSessionOrNone(command: Command) {
  try {
    return { source: resolveSession(command) };
  } catch (error) {
    if (error instanceof CliError && error.exitCode === ExitCode.unauthenticated) {
      return { source: undefined };
    }
    throw error;
  }
}

async function status(_options: unknown, command: Command): Promise<void> {
  const session = resolveSession(command);
  const { body: health } = await session.client.request<HealthResponse>(
    'GET',
    '/v1/health',
    `check the health of ${session.url}`,
    { anonymous: true, acceptStatus: [503] },
  );

  let account: AccountResponse | undefined;
  let accountProblem: CliError | undefined;
  if (session.source === 'none') {
    accountProblem = new CliError(
      ExitCode.unauthenticated,
      `not logged in to ${session.url}`,
      loginHint(session.url),
    );
  } else if (session.username === undefined) {
    // NOTE: the /v1 API has no "who am I" endpoint, so a session token given
    // with --token and no --user cannot be checked or named here.
    accountProblem = undefined;
  } else {
    try {
      account = (
        await session.client.request<AccountResponse>(
          'GET',
          apiPath('/v1/accounts', session.username),
          `look up account ${session.username}`,
        )
      ).body;
    } catch (error) {
      if (!(error instanceof CliError) || error.exitCode === ExitCode.unreachable) throw error;
      accountProblem = error;
    }
  }

  if (globalOptions(command).json) {
    printJson({
      url: session.url,
      health,
      credentials: session.source,
      config_file: session.configFile,
      account: account ?? null,
      account_error: accountProblem?.message ?? null,
    });
  } else {
    const checks = Object.entries(health?.checks ?? {}).map(([name, check]): [string, string] => [
      `  ${name}`,
      check.ok ? 'ok' : `failed: ${check.error ?? 'no details'}`,
    ]);
    let accountText: string;
    if (account) {
      accountText = `${account.username} (role ${account.role}, ${account.kind}${account.disabled ? ', disabled' : ''})`;
    } else if (accountProblem) {
      accountText = accountProblem.message;
    } else {
      accountText = 'unknown: a token given without --user';
    }
    printFields([
      ['Server', session.url],
      ['Health', health?.status ?? 'unknown'],
      ...checks,
      ['Account', accountText],
      ['Credentials', session.source === 'config file' ? session.configFile : session.source],
    ]);
  }

  if (accountProblem) {
    throw new CliError(accountProblem.exitCode, accountProblem.message, accountProblem.hint);
  }
  if (health?.status !== 'ok') {
    throw new CliError(
      ExitCode.failure,
      `the server at ${session.url} reports ${health?.status ?? 'unknown'} health`,
      'check the failed checks above and the registry log',
    );
  }
}
