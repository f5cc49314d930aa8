/** What a caller may do to a repository. */
export type Action = 'pull' | 'push' | 'delete' | 'catalog';

/** Who is making a request. */
export interface Caller {
  /** The authenticated account's name; undefined for an anonymous caller. */
  username?: string;
  /** The client's address, for audit and rate limits. */
  address: string;
}

/**
 * Decides whether a caller may perform an action on a repository (null for
 * registry-wide actions such as the catalog). Every
 * /v2/ operation goes through `decide`, and only through it.
 */
export interface AccessControl {
  decide(caller: Caller, repository: string | null, action: Action): Promise<boolean>;
}

/**
 * Allows every action to every caller.
 * NOTE: this is the only policy until accounts and the policy engine exist; it
 * must not be used on a registry reachable by anyone untrusted.
 */
export class AllowAll implements AccessControl {
  async decide(): Promise<boolean> {
    return true;
  }
}
