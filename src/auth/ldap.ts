import { isIP } from 'node:net';
import type { ConnectionOptions } from 'node:tls';

import {
  Client,
  Filter,
  FilterParser,
  InvalidCredentialsError,
  ResultCodeError,
  type Entry,
} from 'ldapts';
import type { Logger } from 'pino';

import {
  ACCOUNT_NAME_PATTERN,
  type Identity,
  type IdentityProvider,
  type Role,
} from './identity.js';

/** Settings of the LDAP provider, taken from the `ldap` section of the configuration. */
export interface LdapIdentityProviderOptions {
  /** Directory server, `ldap://host:port` or `ldaps://host:port`. */
  url: string;
  /** DN template of a user entry, for example `uid={username},ou=people,dc=example,dc=org`. */
  userDn: string;
  /** Base DN of the group search. An empty string turns group lookup off. */
  groupBaseDn: string;
  /** Group search filter. `{dn}` is the user's DN and `{username}` the account name. */
  groupFilter: string;
  /** Group names (the `cn` of a group entry) that give the admin role. */
  adminGroups: string[];
  /** Group names that give the user role. */
  userGroups: string[];
  /** Group names that give the guest role. */
  guestGroups: string[];
  /** Sends the StartTLS extended operation before the bind. Only for ldap:// URLs. */
  startTls: boolean;
  /**
   * Maximum time for one whole authentication (connect, StartTLS, bind and
   * group search), in milliseconds.
   */
  timeoutMs: number;
  log: Logger;
}

/**
 * Checks passwords with an LDAP simple bind as the user and reads the user's
 * groups to pick a role. Every call opens its own connection and closes it
 * before returning.
 */
export class LdapIdentityProvider implements IdentityProvider {
  readonly name = 'ldap';

  private readonly url: string;
  private readonly userDnTemplate: string;
  private readonly groupBaseDn: string;
  private readonly groupFilterTemplate: string;
  private readonly adminGroups: Set<string>;
  private readonly userGroups: Set<string>;
  private readonly guestGroups: Set<string>;
  private readonly hasRoleGroups: boolean;
  private readonly startTls: boolean;
  private readonly tlsOptions: ConnectionOptions;
  private readonly timeoutMs: number;
  private readonly log: Logger;

  /** Throws an Error naming the `ldap.*` key when the settings cannot work. */
  constructor(options: LdapIdentityProviderOptions) {
    const url = parseLdapUrl(options.url);
    if (!options.userDn.includes('{username}')) {
      throw new Error(
        `invalid ldap.user_dn "${options.userDn}": it must contain {username}, for example "uid={username},ou=people,dc=example,dc=org"`,
      );
    }
    if (options.startTls && url.protocol === 'ldaps:') {
      throw new Error(
        `ldap.start_tls cannot be used with the ldaps:// URL ${options.url}: use an ldap:// URL or turn start_tls off`,
      );
    }
    if (!Number.isFinite(options.timeoutMs) || options.timeoutMs <= 0) {
      throw new Error(`invalid ldap.timeout ${options.timeoutMs} ms: it must be more than zero`);
    }

    const hasRoleGroups =
      options.adminGroups.length + options.userGroups.length + options.guestGroups.length > 0;
    if (hasRoleGroups && options.groupBaseDn === '') {
      throw new Error(
        'ldap.group_base_dn is required when ldap.admin_groups, ldap.user_groups or ldap.guest_groups is set',
      );
    }
    if (options.groupBaseDn !== '') {
      validateGroupFilter(options.groupFilter);
    }

    this.url = options.url;
    this.userDnTemplate = options.userDn;
    this.groupBaseDn = options.groupBaseDn;
    this.groupFilterTemplate = options.groupFilter;
    this.adminGroups = lowerCaseSet(options.adminGroups);
    this.userGroups = lowerCaseSet(options.userGroups);
    this.guestGroups = lowerCaseSet(options.guestGroups);
    this.hasRoleGroups = hasRoleGroups;
    this.startTls = options.startTls;
    this.tlsOptions = tlsOptionsFor(url);
    this.timeoutMs = options.timeoutMs;
    this.log = options.log.child({ provider: 'ldap', ldapUrl: options.url });
  }

  async authenticate(username: string, password: string): Promise<Identity | undefined> {
    if (!ACCOUNT_NAME_PATTERN.test(username)) {
      // The value is left out of the log because users sometimes type a
      // password into the username field.
      this.log.debug(
        { usernameLength: username.length },
        'LDAP login rejected: invalid account name',
      );
      return undefined;
    }
    // A simple bind with a DN and an empty password is an unauthenticated bind
    // (RFC 4513, section 5.1.2). Servers that allow it report success, so the
    // bind would prove nothing about the password.
    if (password === '') {
      this.log.debug({ username }, 'LDAP login rejected: empty password');
      return undefined;
    }

    const userDn = expandUserDn(this.userDnTemplate, username);
    const client = new Client({
      url: this.url,
      timeout: this.timeoutMs,
      connectTimeout: this.timeoutMs,
    });
    try {
      return await withDeadline(
        this.bindAndReadRole(client, username, userDn, password),
        this.timeoutMs,
        () => new Error(`LDAP server ${this.url} did not respond within ${this.timeoutMs} ms`),
      );
    } finally {
      await this.close(client);
    }
  }

  private async bindAndReadRole(
    client: Client,
    username: string,
    userDn: string,
    password: string,
  ): Promise<Identity | undefined> {
    if (this.startTls) {
      try {
        await client.startTLS(this.tlsOptions);
      } catch (error) {
        throw this.failure('StartTLS', error);
      }
    }

    try {
      await client.bind(userDn, password);
    } catch (error) {
      if (error instanceof InvalidCredentialsError) {
        this.log.debug({ username, userDn }, 'LDAP login rejected: invalid credentials');
        return undefined;
      }
      throw this.failure(`bind as ${userDn}`, error);
    }

    // Without role groups every directory user is a user, so the groups are not read.
    const groups = this.hasRoleGroups ? await this.searchGroups(client, userDn, username) : [];
    const role = this.roleFor(groups);
    this.log.debug({ username, userDn, groups, role }, 'LDAP login succeeded');
    return { username, role, kind: 'human' };
  }

  /** Searches the group base as the bound user and returns the `cn` values of the matches. */
  private async searchGroups(client: Client, userDn: string, username: string): Promise<string[]> {
    const filter = expandGroupFilter(this.groupFilterTemplate, userDn, username);
    let entries: Entry[];
    try {
      const result = await client.search(this.groupBaseDn, {
        scope: 'sub',
        filter,
        attributes: ['cn'],
      });
      entries = result.searchEntries;
    } catch (error) {
      throw this.failure(`group search under ${this.groupBaseDn}`, error);
    }
    return entries.flatMap((entry) => attributeStrings(entry['cn']));
  }

  /**
   * Picks the role from group names, which are compared without regard to
   * case, as LDAP compares `cn` values.
   */
  private roleFor(groups: string[]): Role {
    if (!this.hasRoleGroups) return 'user';

    const names = groups.map((group) => group.toLowerCase());
    if (names.some((name) => this.adminGroups.has(name))) return 'admin';
    if (names.some((name) => this.userGroups.has(name))) return 'user';
    // Members of a guest group and users outside every configured group both get guest.
    return 'guest';
  }

  private failure(step: string, error: unknown): Error {
    let message = error instanceof Error ? error.message : String(error);
    // slapd often sends an empty diagnostic message, so the message alone can
    // be just "Code: 0x20". The class name says which result code it is.
    if (error instanceof ResultCodeError) message = `${error.name}: ${message.trim()}`;
    return new Error(`LDAP ${step} on ${this.url} failed: ${message}`, { cause: error });
  }

  private async close(client: Client): Promise<void> {
    try {
      await client.unbind();
    } catch (error) {
      // The connection is closed anyway, because ldapts destroys the socket even when unbind fails.
      this.log.debug({ err: error }, 'LDAP unbind failed');
    }
  }
}

/**
 * Escapes a string for use as an attribute value in a DN (RFC 4514, section
 * 2.4). A backslash goes before `"`, `+`, `,`, `;`, `<`, `>`, `\` and `=`,
 * before a leading `#` or space and before a trailing space. NUL becomes `\00`.
 */
export function escapeDnValue(value: string): string {
  let escaped = '';
  for (let index = 0; index < value.length; index++) {
    const char = value.charAt(index);
    const isFirst = index === 0;
    const isLast = index === value.length - 1;
    if (char === '\0') {
      escaped += '\\00';
    } else if ('"+,;<>\\='.includes(char)) {
      escaped += `\\${char}`;
    } else if ((isFirst && (char === '#' || char === ' ')) || (isLast && char === ' ')) {
      escaped += `\\${char}`;
    } else {
      escaped += char;
    }
  }
  return escaped;
}

/** Replaces every `{username}` in a DN template with the username escaped as a DN value. */
export function expandUserDn(template: string, username: string): string {
  // A replacer function keeps `$&` and similar patterns in the value literal.
  return template.replace(/\{username\}/g, () => escapeDnValue(username));
}

/**
 * Replaces `{dn}` and `{username}` in a filter template with the values
 * escaped for an LDAP filter (RFC 4515: `*`, `(`, `)`, `\` and NUL become hex
 * escapes). One pass over the template, so text inside a value is never
 * expanded again.
 */
export function expandGroupFilter(template: string, dn: string, username: string): string {
  return template.replace(/\{(dn|username)\}/g, (_match, key: string) =>
    Filter.escape(key === 'dn' ? dn : username),
  );
}

function parseLdapUrl(value: string): URL {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new Error(`invalid ldap.url "${value}": expected ldap://HOST:PORT or ldaps://HOST:PORT`);
  }
  if ((url.protocol !== 'ldap:' && url.protocol !== 'ldaps:') || url.hostname === '') {
    throw new Error(`invalid ldap.url "${value}": expected ldap://HOST:PORT or ldaps://HOST:PORT`);
  }
  return url;
}

/** Returns StartTLS options that verify the server certificate against the URL's host. */
function tlsOptionsFor(url: URL): ConnectionOptions {
  const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
  // Node sends no SNI for an IP address, and warns when servername is one.
  return isIP(host) === 0 ? { host, servername: host } : { host };
}

function validateGroupFilter(template: string): void {
  const sample = expandGroupFilter(template, 'uid=sample,dc=example,dc=org', 'sample');
  try {
    FilterParser.parseString(sample);
  } catch (error) {
    throw new Error(`invalid ldap.group_filter "${template}": ${(error as Error).message}`, {
      cause: error,
    });
  }
}

function lowerCaseSet(values: string[]): Set<string> {
  return new Set(values.map((value) => value.toLowerCase()));
}

function attributeStrings(value: Entry[string] | undefined): string[] {
  if (value === undefined) return [];
  const values = Array.isArray(value) ? value : [value];
  return values.map((item) => (Buffer.isBuffer(item) ? item.toString('utf8') : item));
}

/**
 * Settles like `promise`, or rejects with `timeoutError()` after `ms`
 * milliseconds. The caller must stop the work behind `promise` (here by
 * closing the LDAP connection), which this function cannot do.
 */
async function withDeadline<T>(
  promise: Promise<T>,
  ms: number,
  timeoutError: () => Error,
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(timeoutError()), ms);
  });
  try {
    return await Promise.race([promise, deadline]);
  } finally {
    clearTimeout(timer);
  }
}
