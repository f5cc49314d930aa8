// Measures how long one policy decision takes with 1,000 rules, the worst
// case where no rule matches and every rule is checked. Run it after a build:
//   npm run build && node dist/bench/policy-decision.js
import { performance } from 'node:perf_hooks';

import { evaluate, type PolicyRule } from '../src/auth/policy.js';

const RULES = 1000;
const DECISIONS = 100_000;

const rules: PolicyRule[] = [];
for (let i = 0; i < RULES; i++) {
  rules.push({
    id: i + 1,
    priority: i % 50,
    effect: i % 7 === 0 ? 'deny' : 'allow',
    description: `rule ${i}`,
    subjects: [`account:user${i}`, `role:${i % 2 === 0 ? 'guest' : 'user'}`],
    actions: ['push', 'delete'],
    repositories: [`team${i}/*`, `org/team${i}/**`, '{account}/**'],
    enabled: true,
    createdAt: 0,
    updatedAt: 0,
  });
}

const subject = { username: 'nobody', role: 'user' as const, kind: 'human' as const };
const repositories = Array.from({ length: 100 }, (_, i) => `org/team${i * 13}/service/app${i}`);

// Warm up the compiled-pattern cache and the JIT.
for (let i = 0; i < 10_000; i++) evaluate(rules, subject, 'push', repositories[i % 100] as string);

const start = performance.now();
let allowed = 0;
for (let i = 0; i < DECISIONS; i++) {
  if (evaluate(rules, subject, 'push', repositories[i % 100] as string).allowed) allowed += 1;
}
const elapsedMs = performance.now() - start;

console.log(
  `${DECISIONS} decisions against ${RULES} rules: ${((elapsedMs * 1000) / DECISIONS).toFixed(1)} µs per decision (${allowed} allowed)`,
);
