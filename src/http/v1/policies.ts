import type { FastifyInstance } from 'fastify';

import type { PolicyRule, PolicyRuleInput } from '../../auth/policy.js';
import { POLICY_ACTIONS } from '../../auth/policy.js';
import {
  ApiError,
  adminCaller,
  audit,
  decodeCursor,
  DEFAULT_PAGE,
  page,
  pageQuery,
  sendJson,
  type V1Deps,
} from './context.js';

const ruleBody = {
  type: 'object',
  additionalProperties: false,
  required: ['priority', 'effect', 'subjects', 'actions', 'repositories'],
  properties: {
    priority: { type: 'integer', minimum: 0, maximum: 1_000_000 },
    effect: { type: 'string', enum: ['allow', 'deny'] },
    description: { type: 'string', maxLength: 1000 },
    subjects: {
      type: 'array',
      minItems: 1,
      maxItems: 100,
      items: { type: 'string', minLength: 1 },
    },
    actions: { type: 'array', minItems: 1, items: { type: 'string', minLength: 1 } },
    repositories: {
      type: 'array',
      minItems: 1,
      maxItems: 100,
      items: { type: 'string', minLength: 1 },
    },
    enabled: { type: 'boolean' },
  },
} as const;

const idParam = {
  type: 'object',
  properties: { id: { type: 'integer', minimum: 1 } },
  required: ['id'],
} as const;

const explainBody = {
  type: 'object',
  additionalProperties: false,
  required: ['action'],
  properties: {
    account: { type: 'string', maxLength: 64 },
    action: { type: 'string', enum: [...POLICY_ACTIONS] },
    repository: { type: 'string', maxLength: 255 },
  },
} as const;

type RuleBody = Omit<PolicyRuleInput, 'description'> & { description?: string };

function ruleJson(rule: PolicyRule) {
  return {
    id: rule.id,
    priority: rule.priority,
    effect: rule.effect,
    description: rule.description,
    subjects: rule.subjects,
    actions: rule.actions,
    repositories: rule.repositories,
    enabled: rule.enabled,
    created_at: new Date(rule.createdAt).toISOString(),
    updated_at: new Date(rule.updatedAt).toISOString(),
  };
}

/** Registers /v1/policies and the explain endpoint. */
const isRuleKey = (value: unknown): value is [number, number] =>
  Array.isArray(value) && value.length === 2 && value.every((item) => typeof item === 'number');

export function registerPolicyRoutes(app: FastifyInstance, { auth }: V1Deps): void {
  app.get<{ Querystring: { limit?: number; cursor?: string } }>(
    '/v1/policies',
    {
      schema: {
        tags: ['policies'],
        summary: 'List policy rules in evaluation order',
        querystring: { type: 'object', additionalProperties: false, properties: pageQuery },
      },
    },
    async (request, reply) => {
      await adminCaller(request, auth);
      const limit = request.query.limit ?? DEFAULT_PAGE;
      const after = decodeCursor(request.query.cursor, isRuleKey);
      const rules = (await auth.policies.rules()).filter(
        (rule) =>
          !after || rule.priority > after[0] || (rule.priority === after[0] && rule.id > after[1]),
      );
      const { items, nextCursor } = page(rules.slice(0, limit + 1), limit, (rule) => [
        rule.priority,
        rule.id,
      ]);
      sendJson(reply, 200, { rules: items.map(ruleJson), next_cursor: nextCursor });
    },
  );

  app.post<{ Body: RuleBody }>(
    '/v1/policies',
    { schema: { tags: ['policies'], summary: 'Create a policy rule', body: ruleBody } },
    async (request, reply) => {
      const caller = await adminCaller(request, auth);
      const rule = await auth.policies.create({ description: '', ...request.body });
      await audit(auth, caller, { type: 'policy.create', details: { rule: ruleJson(rule) } });
      sendJson(reply, 201, ruleJson(rule));
    },
  );

  app.get<{ Params: { id: number } }>(
    '/v1/policies/:id',
    { schema: { tags: ['policies'], summary: 'Show a policy rule', params: idParam } },
    async (request, reply) => {
      await adminCaller(request, auth);
      const rule = await auth.policies.get(request.params.id);
      if (!rule) throw new ApiError(404, `policy rule ${request.params.id} not found`);
      sendJson(reply, 200, ruleJson(rule));
    },
  );

  app.put<{ Params: { id: number }; Body: RuleBody }>(
    '/v1/policies/:id',
    {
      schema: {
        tags: ['policies'],
        summary: 'Replace a policy rule',
        params: idParam,
        body: ruleBody,
      },
    },
    async (request, reply) => {
      const caller = await adminCaller(request, auth);
      const rule = await auth.policies.update(request.params.id, {
        description: '',
        ...request.body,
      });
      if (!rule) throw new ApiError(404, `policy rule ${request.params.id} not found`);
      await audit(auth, caller, { type: 'policy.update', details: { rule: ruleJson(rule) } });
      sendJson(reply, 200, ruleJson(rule));
    },
  );

  app.delete<{ Params: { id: number } }>(
    '/v1/policies/:id',
    { schema: { tags: ['policies'], summary: 'Delete a policy rule', params: idParam } },
    async (request, reply) => {
      const caller = await adminCaller(request, auth);
      if (!(await auth.policies.delete(request.params.id))) {
        throw new ApiError(404, `policy rule ${request.params.id} not found`);
      }
      await audit(auth, caller, { type: 'policy.delete', details: { ruleId: request.params.id } });
      reply.code(204).send();
    },
  );

  app.post<{
    Body: { account?: string; action: (typeof POLICY_ACTIONS)[number]; repository?: string };
  }>(
    '/v1/policies/explain',
    {
      schema: {
        tags: ['policies'],
        summary: 'Explain the decision for an account, action and repository',
        body: explainBody,
      },
    },
    async (request, reply) => {
      await adminCaller(request, auth);
      const { account: username, action, repository } = request.body;
      let subject = {};
      if (username !== undefined) {
        const account = await auth.accounts.findByName(username);
        if (!account) throw new ApiError(404, `account ${username} not found`);
        if (account.disabled) {
          sendJson(reply, 200, {
            allowed: false,
            reason: `account ${username} is disabled`,
            rule: null,
          });
          return;
        }
        subject = { username: account.username, role: account.role, kind: account.kind };
      }
      const decision = await auth.policies.decide(subject, action, repository ?? null);
      sendJson(reply, 200, {
        allowed: decision.allowed,
        reason: decision.reason,
        rule: decision.rule ? ruleJson(decision.rule) : null,
      });
    },
  );
}
