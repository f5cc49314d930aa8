import type { AccessEntry } from './jwt.js';
import type { AccountKind, Role } from './identity.js';
import type { PolicyAction, PolicyStore } from './policy.js';

/** An action a caller may take on a repository. */
export type Action = 'pull' | 'push' | 'delete' | 'catalog';

/** The identity behind a request. */
export interface Caller {
  /** The authenticated account's name; undefined for an anonymous caller. */
  username?: string;
  role?: Role;
  kind?: AccountKind;
  /** The client's address, for audit and rate limits. */
  address: string;
  /** Actions an access token used as a password is limited to. */
  tokenScopes?: PolicyAction[] | null;
  /** The id of the access token used as a password, if one was. */
  tokenId?: number;
  /** Grants of a bearer token; present only for callers that sent one. */
  grants?: AccessEntry[];
}

/**
 * Decides whether a caller may perform an action on a repository (null for
 * registry-wide actions such as the catalog). Every /v2/ operation goes
 * through `decide`, and only through it.
 */
export interface AccessControl {
  /** Decides for this request: a bearer token's grants, or else the policy. */
  decide(caller: Caller, repository: string | null, action: Action): Promise<boolean>;
  /** Decides by the policy alone, ignoring what a bearer token grants. */
  policyAllows(caller: Caller, repository: string | null, action: Action): Promise<boolean>;
}

/** Access control backed by the policy engine and bearer-token grants. */
export class PolicyAccessControl implements AccessControl {
  constructor(private readonly policies: PolicyStore) {}

  async decide(caller: Caller, repository: string | null, action: Action): Promise<boolean> {
    if (caller.grants) return grantsAllow(caller.grants, repository, action);
    return this.policyAllows(caller, repository, action);
  }

  async policyAllows(caller: Caller, repository: string | null, action: Action): Promise<boolean> {
    if (caller.tokenScopes && !caller.tokenScopes.includes(action)) return false;
    const decision = await this.policies.decide(
      { username: caller.username, role: caller.role, kind: caller.kind },
      action,
      repository,
    );
    return decision.allowed;
  }
}

/** Reports whether a bearer token's access claim covers an action. */
export function grantsAllow(
  grants: AccessEntry[],
  repository: string | null,
  action: Action,
): boolean {
  if (repository === null) {
    return grants.some(
      (grant) =>
        grant.type === 'registry' &&
        grant.name === action &&
        (grant.actions.includes('*') || grant.actions.includes(action)),
    );
  }
  return grants.some(
    (grant) =>
      grant.type === 'repository' &&
      grant.name === repository &&
      (grant.actions.includes(action) || grant.actions.includes('*')),
  );
}
