/** A policy rule as written by an operator, before it gets an id. */
export interface PolicyRuleInput {
  priority: number;
  effect: 'allow' | 'deny';
  description: string;
  subjects: string[];
  actions: string[];
  repositories: string[];
  enabled?: boolean;
}

/**
 * The rules a fresh install starts with. Admins need no rule: the admin role
 * is allowed everything. Users may pull every repository, list the catalog,
 * and push to and delete from the repositories under their own name. Guests
 * and anonymous callers get nothing until an operator adds a rule.
 */
export const DEFAULT_POLICY_RULES: PolicyRuleInput[] = [
  {
    priority: 100,
    effect: 'allow',
    description: 'users pull every repository and list the catalog',
    subjects: ['role:user'],
    actions: ['pull', 'catalog'],
    repositories: ['**'],
  },
  {
    priority: 100,
    effect: 'allow',
    description: 'users push to and delete from repositories under their own name',
    subjects: ['role:user'],
    actions: ['push', 'delete'],
    repositories: ['{account}/**'],
  },
];
