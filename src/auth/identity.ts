/** Roles an account can have; `admin` bypasses the policy engine. */
export const ROLES = ['admin', 'user', 'guest'] as const;
export type Role = (typeof ROLES)[number];

/** Whether an account is a person or a machine (CI, a system integration). */
export const ACCOUNT_KINDS = ['human', 'system'] as const;
export type AccountKind = (typeof ACCOUNT_KINDS)[number];

/** Account names: 1 to 64 lower-case letters, digits, ".", "_" or "-", starting alphanumeric. */
export const ACCOUNT_NAME_PATTERN = /^[a-z0-9][a-z0-9._-]{0,63}$/;

/** The owner of a set of credentials, as an identity provider reports it. */
export interface Identity {
  username: string;
  role: Role;
  kind: AccountKind;
}

/**
 * Checks a username and password against a source of accounts. mcr keeps an
 * account row for every identity a provider confirms, so that tokens, policies
 * and the audit log can name it.
 */
export interface IdentityProvider {
  readonly name: string;
  /**
   * Resolves with the identity when the password is right, and with undefined
   * when the user is unknown or the password wrong. Rejects only when the
   * provider itself fails (for example, the directory is unreachable).
   */
  authenticate(username: string, password: string): Promise<Identity | undefined>;
}
