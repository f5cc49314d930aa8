import assert from 'node:assert/strict';
import { describe, it } from 'node:test';

import fc from 'fast-check';

import { DEFAULT_POLICY_RULES } from '../src/auth/default-policy.js';
import {
  evaluate,
  matchRepository,
  validateRule,
  type PolicyRule,
  type PolicyRuleInput,
} from '../src/auth/policy.js';

function rules(...inputs: PolicyRuleInput[]): PolicyRule[] {
  return inputs.map((input, i) => ({
    enabled: true,
    ...input,
    id: i + 1,
    createdAt: 0,
    updatedAt: 0,
  })) as PolicyRule[];
}

const alice = { username: 'alice', role: 'user' as const, kind: 'human' as const };
const ci = { username: 'ci', role: 'user' as const, kind: 'system' as const };
const guest = { username: 'gary', role: 'guest' as const, kind: 'human' as const };
const root = { username: 'root', role: 'admin' as const, kind: 'human' as const };
const anonymous = {};

describe('matchRepository', () => {
  const cases: Array<[string, string, boolean]> = [
    ['**', 'a', true],
    ['**', 'a/b/c', true],
    ['team/*', 'team/app', true],
    ['team/*', 'team/app/sub', false],
    ['team/*', 'team', false],
    ['team/**', 'team', true],
    ['team/**', 'team/app/sub', true],
    ['team/**', 'teams/app', false],
    ['*/app', 'x/app', true],
    ['*/app', 'x/y/app', false],
    ['a/**/z', 'a/b/c/z', true],
    ['lib.x', 'libyx', false],
    ['{account}/**', 'alice/app', true],
    ['{account}/**', 'bob/app', false],
    ['{account}/**', 'alice', true],
  ];
  for (const [pattern, repository, expected] of cases) {
    it(`${pattern} ${expected ? 'matches' : 'does not match'} ${repository}`, () => {
      assert.equal(matchRepository(pattern, repository, 'alice'), expected);
    });
  }

  it('never matches {account} for an anonymous caller', () => {
    assert.equal(matchRepository('{account}/**', 'alice/app', undefined), false);
  });
});

describe('evaluate', () => {
  const defaults = rules(...DEFAULT_POLICY_RULES);

  it('lets users pull everything and push under their own name', () => {
    assert.equal(evaluate(defaults, alice, 'pull', 'team/app').allowed, true);
    assert.equal(evaluate(defaults, alice, 'push', 'alice/app').allowed, true);
    assert.equal(evaluate(defaults, alice, 'delete', 'alice/app').allowed, true);
    assert.equal(evaluate(defaults, alice, 'push', 'team/app').allowed, false);
    assert.equal(evaluate(defaults, alice, 'catalog', null).allowed, true);
  });

  it('gives guests and anonymous callers nothing by default', () => {
    for (const subject of [guest, anonymous]) {
      for (const action of ['pull', 'push', 'delete'] as const) {
        assert.equal(evaluate(defaults, subject, action, 'team/app').allowed, false);
      }
      assert.equal(evaluate(defaults, subject, 'catalog', null).allowed, false);
    }
  });

  it('lets the admin role bypass every rule', () => {
    const denyAll = rules({
      priority: 0,
      effect: 'deny',
      description: 'deny all',
      subjects: ['*'],
      actions: ['*'],
      repositories: ['**'],
    });
    const decision = evaluate(denyAll, root, 'delete', 'any/thing');
    assert.equal(decision.allowed, true);
    assert.match(decision.reason, /admin role/);
  });

  it('lets the lowest priority number decide', () => {
    const set = rules(
      {
        priority: 10,
        effect: 'deny',
        description: 'freeze prod',
        subjects: ['*'],
        actions: ['push'],
        repositories: ['prod/**'],
      },
      {
        priority: 20,
        effect: 'allow',
        description: 'ci pushes',
        subjects: ['kind:system'],
        actions: ['push'],
        repositories: ['**'],
      },
    );
    assert.equal(evaluate(set, ci, 'push', 'prod/app').allowed, false);
    assert.equal(evaluate(set, ci, 'push', 'dev/app').allowed, true);
    assert.equal(evaluate(set, ci, 'push', 'prod/app').rule?.id, 1);
  });

  it('lets deny win a tie at equal priority', () => {
    const set = rules(
      {
        priority: 5,
        effect: 'allow',
        description: '',
        subjects: ['account:alice'],
        actions: ['pull'],
        repositories: ['**'],
      },
      {
        priority: 5,
        effect: 'deny',
        description: 'secrets',
        subjects: ['role:user'],
        actions: ['pull'],
        repositories: ['secret/*'],
      },
    );
    assert.equal(evaluate(set, alice, 'pull', 'secret/x').allowed, false);
    assert.equal(evaluate(set, alice, 'pull', 'public/x').allowed, true);
  });

  it('denies when no rule matches and says so', () => {
    const decision = evaluate([], alice, 'pull', 'x');
    assert.equal(decision.allowed, false);
    assert.equal(decision.rule, undefined);
    assert.match(decision.reason, /no rule allows alice/);
  });

  it('grants anonymous callers only through the anonymous subject', () => {
    const set = rules({
      priority: 1,
      effect: 'allow',
      description: 'public pull',
      subjects: ['anonymous'],
      actions: ['pull'],
      repositories: ['public/**'],
    });
    assert.equal(evaluate(set, anonymous, 'pull', 'public/x').allowed, true);
    assert.equal(evaluate(set, anonymous, 'pull', 'private/x').allowed, false);
    assert.equal(evaluate(set, alice, 'pull', 'public/x').allowed, false);
  });

  it('skips disabled rules', () => {
    const set = rules({
      priority: 1,
      effect: 'allow',
      description: '',
      subjects: ['*'],
      actions: ['pull'],
      repositories: ['**'],
      enabled: false,
    });
    assert.equal(evaluate(set, alice, 'pull', 'x').allowed, false);
  });
});

describe('validateRule', () => {
  const valid: PolicyRuleInput = {
    priority: 1,
    effect: 'allow',
    description: '',
    subjects: ['role:user'],
    actions: ['pull'],
    repositories: ['**'],
  };
  const invalid: Array<[string, Partial<PolicyRuleInput>, RegExp]> = [
    ['negative priority', { priority: -1 }, /priority/],
    ['unknown effect', { effect: 'maybe' as 'allow' }, /effect/],
    ['unknown subject kind', { subjects: ['group:x'] }, /invalid subject/],
    ['unknown role', { subjects: ['role:owner'] }, /invalid subject/],
    ['unknown action', { actions: ['write'] }, /unknown action/],
    ['empty repositories', { repositories: [] }, /repositories/],
    ['upper-case pattern', { repositories: ['Team/*'] }, /invalid repository pattern/],
    ['unknown placeholder', { repositories: ['{user}/*'] }, /invalid repository pattern/],
    ['triple star', { repositories: ['a/***'] }, /invalid repository pattern/],
    ['empty subjects', { subjects: [] }, /subjects/],
  ];
  it('accepts a well-formed rule', () => assert.doesNotThrow(() => validateRule(valid)));
  for (const [name, change, pattern] of invalid) {
    it(`rejects ${name}`, () =>
      assert.throws(() => validateRule({ ...valid, ...change }), pattern));
  }
});

describe('evaluate, as a table', () => {
  const ruleSets: Record<string, PolicyRule[]> = {
    defaults: rules(...DEFAULT_POLICY_RULES),
    layered: rules(
      {
        priority: 10,
        effect: 'deny',
        description: 'prod is frozen',
        subjects: ['*'],
        actions: ['push', 'delete'],
        repositories: ['prod/**'],
      },
      {
        priority: 10,
        effect: 'allow',
        description: 'ci may push prod',
        subjects: ['kind:system'],
        actions: ['push'],
        repositories: ['prod/*'],
      },
      {
        priority: 20,
        effect: 'allow',
        description: 'everyone pushes',
        subjects: ['*'],
        actions: ['push', 'pull'],
        repositories: ['**'],
      },
      {
        priority: 30,
        effect: 'allow',
        description: 'anonymous reads public',
        subjects: ['anonymous'],
        actions: ['pull'],
        repositories: ['public/*'],
      },
    ),
  };
  type Row = [
    ruleSet: string,
    subject: string,
    action: 'pull' | 'push' | 'delete' | 'catalog',
    repository: string | null,
    allowed: boolean,
    ruleId?: number,
  ];
  const subjects: Record<string, object> = { alice, ci, guest, root, anonymous };
  const table: Row[] = [
    ['defaults', 'alice', 'pull', 'x/y', true, 1],
    ['defaults', 'alice', 'push', 'alice/y', true, 2],
    ['defaults', 'alice', 'push', 'alicex/y', false],
    ['defaults', 'alice', 'delete', 'bob/y', false],
    ['defaults', 'alice', 'catalog', null, true, 1],
    ['defaults', 'ci', 'push', 'ci/tools', true, 2],
    ['defaults', 'guest', 'pull', 'x', false],
    ['defaults', 'anonymous', 'pull', 'x', false],
    ['defaults', 'root', 'delete', 'anything/at/all', true],
    // Deny wins the tie at priority 10 for ci on prod/app.
    ['layered', 'ci', 'push', 'prod/app', false, 1],
    ['layered', 'alice', 'push', 'prod/app', false, 1],
    // `*` stays in one segment, so the allow for ci does not reach prod/a/b;
    // the deny with ** does.
    ['layered', 'ci', 'push', 'prod/a/b', false, 1],
    ['layered', 'alice', 'pull', 'prod/app', true, 3],
    ['layered', 'alice', 'push', 'dev/app', true, 3],
    ['layered', 'alice', 'delete', 'dev/app', false],
    ['layered', 'anonymous', 'pull', 'public/app', true, 4],
    ['layered', 'anonymous', 'pull', 'public/app/sub', false],
    ['layered', 'anonymous', 'push', 'dev/app', false],
    ['layered', 'root', 'push', 'prod/app', true],
    ['layered', 'alice', 'catalog', null, false],
  ];
  for (const [ruleSet, subjectName, action, repository, allowed, ruleId] of table) {
    it(`${ruleSet}: ${subjectName} ${action} ${repository ?? '(registry)'} -> ${allowed ? 'allow' : 'deny'}`, () => {
      const decision = evaluate(
        ruleSets[ruleSet] as PolicyRule[],
        subjects[subjectName] as object,
        action,
        repository,
      );
      assert.equal(decision.allowed, allowed, decision.reason);
      assert.equal(decision.rule?.id, ruleId);
    });
  }
});

describe('matchRepository properties', () => {
  const segment = fc.stringMatching(/^[a-z0-9]{1,8}$/);
  const name = fc.array(segment, { minLength: 1, maxLength: 5 }).map((parts) => parts.join('/'));

  it('matches a literal pattern only against itself', () => {
    fc.assert(
      fc.property(name, name, (pattern, repository) => {
        assert.equal(matchRepository(pattern, repository, undefined), pattern === repository);
      }),
    );
  });

  it('matches every name with **', () => {
    fc.assert(fc.property(name, (repository) => matchRepository('**', repository, undefined)));
  });

  it('keeps * inside one segment', () => {
    fc.assert(
      fc.property(
        segment,
        segment,
        fc.array(segment, { maxLength: 3 }),
        (prefix, child, deeper) => {
          const repository = [prefix, child, ...deeper].join('/');
          assert.equal(matchRepository(`${prefix}/*`, repository, undefined), deeper.length === 0);
        },
      ),
    );
  });

  it('matches prefix/** exactly for the prefix and names under it', () => {
    fc.assert(
      fc.property(name, name, (prefix, repository) => {
        const expected = repository === prefix || repository.startsWith(`${prefix}/`);
        assert.equal(matchRepository(`${prefix}/**`, repository, undefined), expected);
      }),
    );
  });

  it('expands {account} to the caller only', () => {
    fc.assert(
      fc.property(segment, segment, name, (caller, owner, rest) => {
        const repository = `${owner}/${rest}`;
        assert.equal(matchRepository('{account}/**', repository, caller), caller === owner);
      }),
    );
  });
});

describe('matchRepository on hostile input', () => {
  it('stays fast for many wildcards against a long name', { timeout: 10_000 }, () => {
    const name = Array.from({ length: 120 }, () => 'a').join('-');
    assert.equal(matchRepository('*-*-*-*-*-*-*-*-*-*-*-*-x', name, undefined), false);
    const deep = Array.from({ length: 60 }, () => 'a').join('/');
    assert.equal(matchRepository('**/**/**/**/**/**/**/**/**/x', deep, undefined), false);
  });

  it('rejects ** inside a segment', () => {
    assert.throws(
      () =>
        validateRule({
          priority: 1,
          effect: 'allow',
          description: '',
          subjects: ['*'],
          actions: ['pull'],
          repositories: ['team/a**b'],
        }),
      /invalid repository pattern/,
    );
  });
});
