import { readFileSync } from 'node:fs';
import path from 'node:path';

import { Option, type Command } from 'commander';
import { parse as parseToml } from 'smol-toml';

import { apiPath } from './client.js';
import { addPageOptions, pageOptions, type RawPageOptions } from './common.js';
import { globalOptions, resolveSession } from './context.js';
import { usageError } from './errors.js';
import { formatList, formatTime, printFields, printJson, printLine, printPage } from './output.js';

const ACTIONS = ['pull', 'push', 'delete', 'catalog', 'admin'];

/** Fields a rule file may set. */
const RULE_FIELDS = [
  'priority',
  'effect',
  'description',
  'subjects',
  'actions',
  'repositories',
  'enabled',
];

/** Fields that the server sets. A rule file may contain them (as policy show --json prints them), and they are dropped. */
const SERVER_FIELDS = ['id', 'created_at', 'updated_at'];

interface Rule {
  id: number;
  priority: number;
  effect: 'allow' | 'deny';
  description: string;
  subjects: string[];
  actions: string[];
  repositories: string[];
  enabled: boolean;
  created_at: string;
  updated_at: string;
}

interface Explanation {
  allowed: boolean;
  reason: string;
  rule: Rule | null;
}

const RULE_FILE_HELP = `
A rule file is TOML (.toml) or JSON (.json) with these fields:
  priority      integer, 0 to 1000000
  effect        "allow" or "deny"
  description   text (optional)
  subjects      list of "*", "anonymous", "account:NAME", "role:ROLE" or "kind:KIND"
  actions       list of ${ACTIONS.join(', ')} or "*"
  repositories  list of globs: "*" matches within a path segment, "**" across
                segments, "{account}" is the caller's account name
  enabled       true or false (optional)
The id, created_at and updated_at fields of policy show --json output are
ignored, so that output can be edited and passed to policy update.
Among the enabled rules that match a request, those with the lowest priority
number decide, and a deny among them wins. No matching rule means deny, and
administrators are allowed everything. policy explain shows the deciding rule.

Example (TOML):
  priority = 100
  effect = "allow"
  description = "everyone pushes to their own namespace"
  subjects = ["role:user"]
  actions = ["pull", "push"]
  repositories = ["{account}/**"]`;

/** Reads a rule file, choosing the parser by extension, and returns the rule fields. */
export function readRuleFile(file: string): Record<string, unknown> {
  const extension = path.extname(file).toLowerCase();
  if (extension !== '.toml' && extension !== '.json') {
    throw usageError(
      `unknown format of rule file ${file}`,
      'name it with the extension .toml or .json',
    );
  }

  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    throw usageError(`cannot read rule file ${file}: ${(error as Error).message}`);
  }

  let parsed: unknown;
  try {
    parsed = extension === '.toml' ? parseToml(text) : JSON.parse(text);
  } catch (error) {
    const format = extension === '.toml' ? 'TOML' : 'JSON';
    throw usageError(`rule file ${file} is not valid ${format}: ${(error as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw usageError(`rule file ${file} must contain one rule as an object`);
  }

  const rule: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(parsed)) {
    if (SERVER_FIELDS.includes(key)) continue;
    if (!RULE_FIELDS.includes(key)) {
      throw usageError(
        `rule file ${file} has an unknown field ${JSON.stringify(key)}`,
        `use only ${RULE_FIELDS.join(', ')}`,
      );
    }
    rule[key] = value;
  }
  return rule;
}

function printRule(rule: Rule): void {
  printFields([
    ['ID', rule.id],
    ['Priority', rule.priority],
    ['Effect', rule.effect],
    ['Description', rule.description],
    ['Subjects', formatList(rule.subjects)],
    ['Actions', formatList(rule.actions)],
    ['Repositories', formatList(rule.repositories)],
    ['Enabled', rule.enabled ? 'yes' : 'no'],
    ['Created', formatTime(rule.created_at)],
    ['Updated', formatTime(rule.updated_at)],
  ]);
}

function parseRuleId(id: string): number {
  if (!/^[1-9]\d*$/.test(id)) {
    throw usageError(`invalid rule id ${JSON.stringify(id)}: expected a positive integer`);
  }
  return Number(id);
}

/** Registers `policy`. */
export function registerPolicyCommands(program: Command): void {
  const policy = program.command('policy').description('manage access policy rules');

  addPageOptions(policy.command('list').description('list policy rules'), 'rules').action(
    async (options: RawPageOptions, command: Command) => {
      const { client } = resolveSession(command);
      const page = await client.list<Rule>(
        '/v1/policies',
        'rules',
        'list policy rules',
        pageOptions(options),
      );
      printPage(
        globalOptions(command).json,
        'rules',
        page,
        [
          'id',
          'priority',
          'effect',
          'subjects',
          'actions',
          'repositories',
          'enabled',
          'description',
        ],
        (rule) => [
          rule.id,
          rule.priority,
          rule.effect,
          formatList(rule.subjects),
          formatList(rule.actions),
          formatList(rule.repositories),
          rule.enabled ? 'yes' : 'no',
          rule.description,
        ],
        'no policy rules found',
      );
    },
  );

  policy
    .command('show')
    .argument('<id>', 'rule id')
    .description('show one policy rule')
    .action(async (id: string, _options: unknown, command: Command) => {
      const ruleId = parseRuleId(id);
      const { client } = resolveSession(command);
      const { body } = await client.request<Rule>(
        'GET',
        apiPath('/v1/policies', ruleId),
        `show policy rule ${ruleId}`,
      );
      if (globalOptions(command).json) printJson(body);
      else printRule(body);
    });

  policy
    .command('create')
    .argument('<file>', 'rule file (.toml or .json)')
    .description('create a policy rule from a file')
    .addHelpText('after', RULE_FILE_HELP)
    .action(async (file: string, _options: unknown, command: Command) => {
      const rule = readRuleFile(file);
      const { client } = resolveSession(command);
      const { body } = await client.request<Rule>(
        'POST',
        '/v1/policies',
        `create a policy rule from ${file}`,
        {
          body: rule,
        },
      );
      if (globalOptions(command).json) {
        printJson(body);
        return;
      }
      printLine(`Created policy rule ${body.id}.`);
      printRule(body);
    });

  policy
    .command('update')
    .argument('<id>', 'rule id')
    .argument('<file>', 'rule file (.toml or .json) with the whole new rule')
    .description('replace a policy rule with the rule in a file')
    .addHelpText('after', RULE_FILE_HELP)
    .action(async (id: string, file: string, _options: unknown, command: Command) => {
      const ruleId = parseRuleId(id);
      const rule = readRuleFile(file);
      const { client } = resolveSession(command);
      const { body } = await client.request<Rule>(
        'PUT',
        apiPath('/v1/policies', ruleId),
        `update policy rule ${ruleId}`,
        {
          body: rule,
        },
      );
      if (globalOptions(command).json) {
        printJson(body);
        return;
      }
      printLine(`Updated policy rule ${body.id}.`);
      printRule(body);
    });

  policy
    .command('delete')
    .argument('<id>', 'rule id')
    .description('delete a policy rule')
    .action(async (id: string, _options: unknown, command: Command) => {
      const ruleId = parseRuleId(id);
      const { client } = resolveSession(command);
      await client.request(
        'DELETE',
        apiPath('/v1/policies', ruleId),
        `delete policy rule ${ruleId}`,
      );
      if (globalOptions(command).json) printJson({ deleted: true, id: ruleId });
      else printLine(`Deleted policy rule ${ruleId}.`);
    });

  policy
    .command('explain')
    .description('show whether the policy allows an action and which rule decides')
    .option('--account <name>', 'account to check (default: an anonymous caller)')
    .addOption(
      new Option('--action <action>', 'action to check').choices(ACTIONS).makeOptionMandatory(),
    )
    .option('--repository <name>', 'repository to check, such as team/app')
    .addHelpText(
      'after',
      `
Exits with 0 whether or not the action is allowed; read "allowed" in the
--json output to branch on the answer.`,
    )
    .action(
      async (
        options: { account?: string; action: string; repository?: string },
        command: Command,
      ) => {
        const { client } = resolveSession(command);
        const body: Record<string, string> = { action: options.action };
        if (options.account !== undefined) body.account = options.account;
        if (options.repository !== undefined) body.repository = options.repository;
        const { body: explanation } = await client.request<Explanation>(
          'POST',
          '/v1/policies/explain',
          'explain the policy decision',
          { body },
        );
        if (globalOptions(command).json) {
          printJson(explanation);
          return;
        }
        const rule = explanation.rule;
        printFields([
          ['Account', options.account ?? 'anonymous'],
          ['Action', options.action],
          ['Repository', options.repository],
          ['Allowed', explanation.allowed ? 'yes' : 'no'],
          ['Reason', explanation.reason],
          [
            'Rule',
            rule
              ? `${rule.id} (priority ${rule.priority}, ${rule.effect}) ${rule.description}`.trim()
              : null,
          ],
        ]);
      },
    );
}
