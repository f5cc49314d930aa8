import type { Kysely } from 'kysely';

import type { Database } from '../metadata/schema.js';
import type { PolicyRuleInput } from './default-policy.js';
import { ACCOUNT_KINDS, ROLES, type AccountKind, type Role } from './identity.js';

export type { PolicyRuleInput } from './default-policy.js';

/** Actions a policy rule can grant or deny. */
export const POLICY_ACTIONS = ['pull', 'push', 'delete', 'catalog', 'admin'] as const;
export type PolicyAction = (typeof POLICY_ACTIONS)[number];

/** A stored policy rule. */
export interface PolicyRule extends Required<PolicyRuleInput> {
  id: number;
  createdAt: number;
  updatedAt: number;
}

/** Whom a decision is about; no username means an anonymous caller. */
export interface PolicySubject {
  username?: string;
  role?: Role;
  kind?: AccountKind;
}

/** The outcome of evaluating the policy, with the reason in words. */
export interface Decision {
  allowed: boolean;
  reason: string;
  /** The rule that decided, when one did. */
  rule?: PolicyRule;
}

/** A rule that failed validation; the message names the field. */
export class PolicyValidationError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PolicyValidationError';
  }
}

const PATTERN_CHARS = /^[a-z0-9._\-/*{}]+$/;

/**
 * Checks a rule before it is stored. Subjects are `*` (any signed-in
 * account), `anonymous`, `account:NAME`, `role:ROLE` or `kind:KIND`; actions
 * are those of POLICY_ACTIONS or `*`; repositories are globs in which `*`
 * matches within one path segment, `**` across segments, and `{account}`
 * stands for the caller's account name.
 */
export function validateRule(input: PolicyRuleInput): PolicyRuleInput {
  if (!Number.isInteger(input.priority) || input.priority < 0 || input.priority > 1_000_000) {
    throw new PolicyValidationError('priority must be an integer from 0 to 1000000');
  }
  if (input.effect !== 'allow' && input.effect !== 'deny') {
    throw new PolicyValidationError(`effect must be "allow" or "deny", not "${input.effect}"`);
  }
  if (input.subjects.length === 0) throw new PolicyValidationError('subjects must not be empty');
  for (const subject of input.subjects) validateSubject(subject);

  if (input.actions.length === 0) throw new PolicyValidationError('actions must not be empty');
  for (const action of input.actions) {
    if (action !== '*' && !(POLICY_ACTIONS as readonly string[]).includes(action)) {
      throw new PolicyValidationError(
        `unknown action "${action}"; use one of ${POLICY_ACTIONS.join(', ')} or *`,
      );
    }
  }

  if (input.repositories.length === 0) {
    throw new PolicyValidationError('repositories must not be empty; use ["**"] for all');
  }
  for (const pattern of input.repositories) validatePattern(pattern);
  return input;
}

function validateSubject(subject: string): void {
  if (subject === '*' || subject === 'anonymous') return;
  const [kind, value] = splitOnce(subject, ':');
  if (kind === 'account' && value && /^[a-z0-9][a-z0-9._-]{0,63}$/.test(value)) return;
  if (kind === 'role' && (ROLES as readonly string[]).includes(value ?? '')) return;
  if (kind === 'kind' && (ACCOUNT_KINDS as readonly string[]).includes(value ?? '')) return;
  throw new PolicyValidationError(
    `invalid subject "${subject}"; use *, anonymous, account:NAME, role:${ROLES.join('|')} or kind:${ACCOUNT_KINDS.join('|')}`,
  );
}

function validatePattern(pattern: string): void {
  const withoutPlaceholder = pattern.replaceAll('{account}', 'x');
  if (
    pattern === '' ||
    !PATTERN_CHARS.test(pattern) ||
    /[{}]/.test(withoutPlaceholder) ||
    pattern.split('/').some((segment) => segment.includes('**') && segment !== '**') ||
    pattern.startsWith('/') ||
    pattern.endsWith('/') ||
    pattern.includes('//')
  ) {
    throw new PolicyValidationError(
      `invalid repository pattern "${pattern}"; use lower-case path segments with * (within a segment), ** (a whole segment: any depth) and {account}`,
    );
  }
}

/**
 * Reports whether a repository name matches a rule's pattern for this
 * account. Matching works segment by segment without regular expressions,
 * in time proportional to the pattern's length times the name's, so no
 * pattern can make it slow.
 */
export function matchRepository(
  pattern: string,
  repository: string,
  username: string | undefined,
  nameSegments: readonly string[] = repository.split('/'),
): boolean {
  if (pattern.includes('{account}')) {
    if (username === undefined) return false;
    pattern = pattern.replaceAll('{account}', username);
  }
  if (!pattern.includes('*')) return pattern === repository;

  const patternSegments = splitPattern(pattern);
  // A literal first segment settles most mismatches at once.
  const first = patternSegments[0] as string;
  if (!first.includes('*') && first !== nameSegments[0]) return false;

  // reachable[j]: the pattern segments seen so far can match the first j name segments.
  let reachable = new Uint8Array(nameSegments.length + 1);
  let next = new Uint8Array(nameSegments.length + 1);
  reachable[0] = 1;
  for (const segment of patternSegments) {
    next.fill(0);
    if (segment === '**') {
      // "**" matches any number of whole segments, none included.
      let seen = 0;
      for (let j = 0; j <= nameSegments.length; j++) {
        seen |= reachable[j] as number;
        next[j] = seen;
      }
    } else {
      for (let j = 0; j < nameSegments.length; j++) {
        if (reachable[j] && matchSegment(segment, nameSegments[j] as string)) next[j + 1] = 1;
      }
    }
    [reachable, next] = [next, reachable];
  }
  return reachable[nameSegments.length] === 1;
}

const splitPatterns = new Map<string, string[]>();

function splitPattern(pattern: string): string[] {
  let segments = splitPatterns.get(pattern);
  if (!segments) {
    segments = pattern.split('/');
    if (splitPatterns.size > 10_000) splitPatterns.clear();
    splitPatterns.set(pattern, segments);
  }
  return segments;
}

/** Matches one path segment against a glob segment in which `*` is any run of characters. */
function matchSegment(glob: string, text: string): boolean {
  // Greedy matching that backtracks only to the last `*`: linear in practice
  // and at worst proportional to the product of the lengths.
  let g = 0;
  let t = 0;
  let star = -1;
  let resume = 0;
  while (t < text.length) {
    if (g < glob.length && glob[g] !== '*' && glob[g] === text[t]) {
      g += 1;
      t += 1;
    } else if (g < glob.length && glob[g] === '*') {
      star = g;
      resume = t;
      g += 1;
    } else if (star !== -1) {
      g = star + 1;
      resume += 1;
      t = resume;
    } else {
      return false;
    }
  }
  while (g < glob.length && glob[g] === '*') g += 1;
  return g === glob.length;
}

/** Lists the subject strings a rule may name that cover this caller. */
function subjectKeys(subject: PolicySubject): Set<string> {
  if (subject.username === undefined) return new Set(['anonymous']);
  const keys = new Set(['*', `account:${subject.username}`]);
  if (subject.role) keys.add(`role:${subject.role}`);
  if (subject.kind) keys.add(`kind:${subject.kind}`);
  return keys;
}

/**
 * Decides an action: an admin account is allowed everything; otherwise the
 * matching rules with the lowest priority number decide, a deny among them
 * wins, and no matching rule means deny. Registry-wide actions (`catalog`,
 * `admin`) pass `repository` as null and ignore the rules' repository patterns.
 */
export function evaluate(
  rules: readonly PolicyRule[],
  subject: PolicySubject,
  action: PolicyAction,
  repository: string | null,
): Decision {
  if (subject.username !== undefined && subject.role === 'admin') {
    return {
      allowed: true,
      reason: `${subject.username} has the admin role, which bypasses the policy`,
    };
  }

  const keys = subjectKeys(subject);
  const nameSegments = repository === null ? [] : repository.split('/');
  let best: PolicyRule | undefined;
  for (const rule of rules) {
    if (!rule.enabled) continue;
    // Only a rule at least as urgent as the best so far can change the outcome.
    if (best !== undefined && rule.priority > best.priority) continue;
    if (!rule.actions.includes(action) && !rule.actions.includes('*')) continue;
    if (!rule.subjects.some((entry) => keys.has(entry))) continue;
    if (
      repository !== null &&
      !rule.repositories.some((pattern) =>
        matchRepository(pattern, repository, subject.username, nameSegments),
      )
    ) {
      continue;
    }
    if (
      best === undefined ||
      rule.priority < best.priority ||
      (rule.priority === best.priority && rule.effect === 'deny' && best.effect === 'allow')
    ) {
      best = rule;
    }
  }

  const caller = subject.username ?? 'an anonymous caller';
  const request = repository === null ? action : `${action} on ${repository}`;
  if (!best) return { allowed: false, reason: `no rule allows ${caller} to ${request}` };
  return {
    allowed: best.effect === 'allow',
    reason: `rule ${best.id} (priority ${best.priority}, ${best.effect}: ${best.description || 'no description'}) matches ${caller} for ${request}`,
    rule: best,
  };
}

/** How long a process trusts its copy of the rules before reading them again. */
const RULES_CACHE_MS = 1000;

/**
 * Policy rules in the database, with a short cache. Changes made through this
 * store take effect at once in this process; other processes see them within
 * RULES_CACHE_MS.
 */
export class PolicyStore {
  private cache: { rules: PolicyRule[]; loadedAt: number } | undefined;

  constructor(private readonly db: Kysely<Database>) {}

  async rules(): Promise<PolicyRule[]> {
    if (this.cache && Date.now() - this.cache.loadedAt < RULES_CACHE_MS) return this.cache.rules;
    const rows = await this.db
      .selectFrom('policy_rules')
      .selectAll()
      .orderBy('priority')
      .orderBy('id')
      .execute();
    const rules = rows.map(toRule);
    this.cache = { rules, loadedAt: Date.now() };
    return rules;
  }

  async decide(
    subject: PolicySubject,
    action: PolicyAction,
    repository: string | null,
  ): Promise<Decision> {
    return evaluate(await this.rules(), subject, action, repository);
  }

  async get(id: number): Promise<PolicyRule | undefined> {
    const row = await this.db
      .selectFrom('policy_rules')
      .selectAll()
      .where('id', '=', id)
      .executeTakeFirst();
    return row ? toRule(row) : undefined;
  }

  async create(input: PolicyRuleInput): Promise<PolicyRule> {
    validateRule(input);
    const now = Date.now();
    const row = await this.db
      .insertInto('policy_rules')
      .values({ ...toRow(input), created_at: now, updated_at: now })
      .returningAll()
      .executeTakeFirstOrThrow();
    this.cache = undefined;
    return toRule(row);
  }

  async update(id: number, input: PolicyRuleInput): Promise<PolicyRule | undefined> {
    validateRule(input);
    const row = await this.db
      .updateTable('policy_rules')
      .set({ ...toRow(input), updated_at: Date.now() })
      .where('id', '=', id)
      .returningAll()
      .executeTakeFirst();
    this.cache = undefined;
    return row ? toRule(row) : undefined;
  }

  async delete(id: number): Promise<boolean> {
    const result = await this.db.deleteFrom('policy_rules').where('id', '=', id).executeTakeFirst();
    this.cache = undefined;
    return result.numDeletedRows > 0n;
  }
}

function toRow(input: PolicyRuleInput) {
  return {
    priority: input.priority,
    effect: input.effect,
    description: input.description,
    subjects: JSON.stringify(input.subjects),
    actions: JSON.stringify(input.actions),
    repositories: JSON.stringify(input.repositories),
    enabled: input.enabled === false ? 0 : 1,
  };
}

function toRule(row: {
  id: number;
  priority: number;
  effect: 'allow' | 'deny';
  description: string;
  subjects: string;
  actions: string;
  repositories: string;
  enabled: number;
  created_at: number;
  updated_at: number;
}): PolicyRule {
  return {
    id: row.id,
    priority: row.priority,
    effect: row.effect,
    description: row.description,
    subjects: JSON.parse(row.subjects) as string[],
    actions: JSON.parse(row.actions) as string[],
    repositories: JSON.parse(row.repositories) as string[],
    enabled: row.enabled !== 0,
    createdAt: row.created_at,
    updatedAt: row.updated_at,
  };
}

function splitOnce(value: string, separator: string): [string, string | undefined] {
  const index = value.indexOf(separator);
  return index === -1 ? [value, undefined] : [value.slice(0, index), value.slice(index + 1)];
}
