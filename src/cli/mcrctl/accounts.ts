import { Option, type Command } from 'commander';

import { apiPath } from './client.js';
import {
  addPageOptions,
  addYesOption,
  collectList,
  pageOptions,
  type RawPageOptions,
} from './common.js';
import { globalOptions, resolveSession } from './context.js';
import { usageError } from './errors.js';
import {
  formatList,
  formatTime,
  printFields,
  printJson,
  printLine,
  printMoreNote,
  printNote,
  printPage,
  printTable,
} from './output.js';
import { confirmAction, isInteractive, promptSecret, readStdinSecret } from './prompt.js';
import { parseExpiry } from './time.js';

const ROLES = ['admin', 'user', 'guest'];
const KINDS = ['human', 'system'];
const SCOPES = ['pull', 'push', 'delete', 'catalog', 'admin'];

interface Account {
  username: string;
  role: string;
  kind: string;
  provider: string;
  disabled: boolean;
  created_at: string;
  updated_at: string;
}

interface AccessToken {
  id: number;
  name: string;
  scopes: string[] | null;
  expires_at: string | null;
  last_used_at: string | null;
  revoked_at: string | null;
  created_at: string;
  secret?: string;
}

/** Registers `account` and `token`. */
export function registerAccountCommands(program: Command): void {
  registerAccount(program.command('account').description('manage accounts'));
  registerToken(program.command('token').description('manage personal access tokens'));
}

function printAccount(account: Account): void {
  printFields([
    ['Username', account.username],
    ['Role', account.role],
    ['Kind', account.kind],
    ['Provider', account.provider],
    ['Disabled', account.disabled ? 'yes' : 'no'],
    ['Created', formatTime(account.created_at)],
    ['Updated', formatTime(account.updated_at)],
  ]);
}

/** Reads a new password from --password-stdin or a prompt, or returns undefined for none. */
async function newPassword(options: {
  passwordStdin?: boolean;
  password?: boolean;
}): Promise<string | undefined> {
  if (options.passwordStdin) return readStdinSecret('--password-stdin');
  if (options.password === false || !isInteractive()) return undefined;
  const first = await promptSecret('New password: ');
  if (first === '')
    throw usageError(
      'the password must not be empty',
      'pass --no-password for an account without one',
    );
  const second = await promptSecret('Repeat the password: ');
  if (first !== second) throw usageError('the passwords do not match');
  return first;
}

function registerAccount(account: Command): void {
  addPageOptions(account.command('list').description('list accounts'), 'accounts').action(
    async (options: RawPageOptions, command: Command) => {
      const { client } = resolveSession(command);
      const page = await client.list<Account>(
        '/v1/accounts',
        'accounts',
        'list accounts',
        pageOptions(options),
      );
      printPage(
        globalOptions(command).json,
        'accounts',
        page,
        ['username', 'role', 'kind', 'provider', 'disabled', 'created'],
        (item) => [
          item.username,
          item.role,
          item.kind,
          item.provider,
          item.disabled ? 'yes' : 'no',
          formatTime(item.created_at),
        ],
        'no accounts found',
      );
    },
  );

  account
    .command('show')
    .argument('<username>', 'account name')
    .description('show one account')
    .action(async (username: string, _options: unknown, command: Command) => {
      const { client } = resolveSession(command);
      const { body } = await client.request<Account>(
        'GET',
        apiPath('/v1/accounts', username),
        `show account ${username}`,
      );
      if (globalOptions(command).json) printJson(body);
      else printAccount(body);
    });

  account
    .command('create')
    .argument('<username>', 'account name: lower-case letters, digits, ".", "_" or "-"')
    .description('create an account')
    .addOption(new Option('--role <role>', 'role of the account').choices(ROLES).default('user'))
    .addOption(
      new Option('--kind <kind>', 'a person or a machine (CI, integrations)')
        .choices(KINDS)
        .default('human'),
    )
    .option('--password-stdin', 'read the password from standard input')
    .option(
      '--no-password',
      'create the account without a password (the server accepts this for --kind system, which logs in with access tokens)',
    )
    .addHelpText(
      'after',
      `
On a terminal, the password is prompted for unless --password-stdin or
--no-password is given. Without a terminal, the account gets a password only
with --password-stdin.`,
    )
    .action(
      async (
        username: string,
        options: { role: string; kind: string; passwordStdin?: boolean; password?: boolean },
        command: Command,
      ) => {
        if (options.passwordStdin && options.password === false) {
          throw usageError('--password-stdin and --no-password cannot be combined');
        }
        const { client } = resolveSession(command);
        const password = await newPassword(options);
        const { body } = await client.request<Account>(
          'POST',
          '/v1/accounts',
          `create account ${username}`,
          {
            body: {
              username,
              role: options.role,
              kind: options.kind,
              ...(password === undefined ? {} : { password }),
            },
          },
        );
        if (globalOptions(command).json) printJson(body);
        else printLine(`Created account ${body.username} (role ${body.role}, ${body.kind}).`);
      },
    );

  account
    .command('update')
    .argument('<username>', 'account name')
    .description("change an account's role, kind, password or disabled state")
    .addOption(new Option('--role <role>', 'new role').choices(ROLES))
    .addOption(new Option('--kind <kind>', 'new kind').choices(KINDS))
    .option('--password-stdin', 'read a new password from standard input')
    .option('--password-prompt', 'prompt for a new password on the terminal')
    .option('--disable', 'disable the account')
    .option('--enable', 'enable a disabled account')
    .action(
      async (
        username: string,
        options: {
          role?: string;
          kind?: string;
          passwordStdin?: boolean;
          passwordPrompt?: boolean;
          disable?: boolean;
          enable?: boolean;
        },
        command: Command,
      ) => {
        if (options.disable && options.enable)
          throw usageError('--disable and --enable cannot be combined');
        if (options.passwordStdin && options.passwordPrompt) {
          throw usageError('--password-stdin and --password-prompt cannot be combined');
        }
        const changes: Record<string, unknown> = {};
        if (options.role !== undefined) changes.role = options.role;
        if (options.kind !== undefined) changes.kind = options.kind;
        if (options.disable) changes.disabled = true;
        if (options.enable) changes.disabled = false;
        const { client } = resolveSession(command);
        if (options.passwordStdin) changes.password = await readStdinSecret('--password-stdin');
        if (options.passwordPrompt) {
          if (!isInteractive())
            throw usageError('--password-prompt needs a terminal', 'use --password-stdin');
          changes.password = await newPassword({});
        }
        if (Object.keys(changes).length === 0) {
          throw usageError(
            'nothing to update',
            'pass at least one of --role, --kind, --password-stdin, --password-prompt, --disable or --enable',
          );
        }
        await patchAccount(command, client, username, changes);
      },
    );

  account
    .command('disable')
    .argument('<username>', 'account name')
    .description('disable an account')
    .action(async (username: string, _options: unknown, command: Command) => {
      const { client } = resolveSession(command);
      await patchAccount(command, client, username, { disabled: true }, 'Disabled');
    });

  account
    .command('enable')
    .argument('<username>', 'account name')
    .description('enable a disabled account')
    .action(async (username: string, _options: unknown, command: Command) => {
      const { client } = resolveSession(command);
      await patchAccount(command, client, username, { disabled: false }, 'Enabled');
    });

  addYesOption(
    account
      .command('delete')
      .argument('<username>', 'account name')
      .description('delete an account'),
  ).action(async (username: string, options: { yes?: boolean }, command: Command) => {
    const { client } = resolveSession(command);
    await confirmAction(`delete account ${username}`, options.yes);
    await client.request('DELETE', apiPath('/v1/accounts', username), `delete account ${username}`);
    if (globalOptions(command).json) printJson({ deleted: true, username });
    else printLine(`Deleted account ${username}.`);
  });
}

async function patchAccount(
  command: Command,
  client: ReturnType<typeof resolveSession>['client'],
  username: string,
  changes: Record<string, unknown>,
  verb = 'Updated',
): Promise<void> {
  const { body } = await client.request<Account>(
    'PATCH',
    apiPath('/v1/accounts', username),
    `update account ${username}`,
    {
      body: changes,
    },
  );
  if (globalOptions(command).json) {
    printJson(body);
    return;
  }
  printLine(`${verb} account ${body.username}.`);
  printAccount(body);
}

function registerToken(token: Command): void {
  token
    .command('create')
    .argument('<account>', 'account the token belongs to')
    .argument('<name>', 'token name, such as ci-pipeline')
    .description('create a personal access token and print its secret once')
    .option(
      '--expires <when>',
      'expiry: a duration from now (90m, 12h, 30d) or a date (2030-01-31 or an ISO 8601 date-time); default: never',
    )
    .option(
      '--scope <scopes>',
      `limit the token to these actions (${SCOPES.join(', ')}); repeat or separate with commas; default: everything the account may do`,
      collectList,
    )
    .addHelpText(
      'after',
      `
Use the secret as the password of docker login or podman login, or with
mcrctl --user ACCOUNT --token SECRET. It cannot be shown again.`,
    )
    .action(
      async (
        accountName: string,
        name: string,
        options: { expires?: string; scope?: string[] },
        command: Command,
      ) => {
        for (const scope of options.scope ?? []) {
          if (!SCOPES.includes(scope)) {
            throw usageError(
              `invalid --scope ${JSON.stringify(scope)}`,
              `use ${SCOPES.join(', ')}`,
            );
          }
        }
        const body: Record<string, unknown> = { name };
        if (options.expires !== undefined) body.expires_at = parseExpiry(options.expires);
        if (options.scope !== undefined) body.scopes = [...new Set(options.scope)];

        const { client } = resolveSession(command);
        const { body: created } = await client.request<AccessToken>(
          'POST',
          apiPath('/v1/accounts', accountName, 'tokens'),
          `create token ${name} for ${accountName}`,
          { body },
        );
        if (globalOptions(command).json) {
          printJson(created);
          return;
        }
        printLine(`Created token ${created.name} (id ${created.id}) for ${accountName}.`);
        printLine(`Scopes:  ${formatList(created.scopes) ?? 'everything the account may do'}`);
        printLine(`Expires: ${formatTime(created.expires_at) ?? 'never'}`);
        printNote('Store the secret now; it cannot be shown again:');
        printLine(created.secret ?? '(the server returned no secret)');
      },
    );

  addPageOptions(
    token
      .command('list')
      .argument('<account>', 'account name')
      .description("list an account's access tokens"),
    'tokens',
  ).action(async (accountName: string, options: RawPageOptions, command: Command) => {
    const { client } = resolveSession(command);
    const page = await client.list<AccessToken>(
      apiPath('/v1/accounts', accountName, 'tokens'),
      'tokens',
      `list tokens of ${accountName}`,
      pageOptions(options),
    );
    if (globalOptions(command).json) {
      printJson({ tokens: page.items, next_cursor: page.next_cursor });
      return;
    }
    printTable(
      ['id', 'name', 'scopes', 'expires', 'last used', 'revoked', 'created'],
      page.items.map((item) => [
        item.id,
        item.name,
        formatList(item.scopes) ?? 'all',
        formatTime(item.expires_at) ?? 'never',
        formatTime(item.last_used_at) ?? 'never',
        formatTime(item.revoked_at),
        formatTime(item.created_at),
      ]),
      `no tokens found for ${accountName}`,
    );
    printMoreNote(page.next_cursor);
  });

  token
    .command('revoke')
    .argument('<account>', 'account name')
    .argument('<id>', 'token id, as token list shows it')
    .description('revoke an access token')
    .action(async (accountName: string, id: string, _options: unknown, command: Command) => {
      if (!/^[1-9]\d*$/.test(id))
        throw usageError(`invalid token id ${JSON.stringify(id)}: expected a positive integer`);
      const { client } = resolveSession(command);
      const { body } = await client.request<AccessToken>(
        'DELETE',
        apiPath('/v1/accounts', accountName, 'tokens', id),
        `revoke token ${id} of ${accountName}`,
      );
      if (globalOptions(command).json) printJson(body);
      else printLine(`Revoked token ${body.name} (id ${body.id}) of ${accountName}.`);
    });
}
