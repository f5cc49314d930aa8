import type { Command } from 'commander';

import { apiPath } from './client.js';
import { addPageOptions, addYesOption, pageOptions, type RawPageOptions } from './common.js';
import { globalOptions, resolveSession } from './context.js';
import { CliError, ExitCode } from './errors.js';
import {
  formatBytes,
  formatList,
  formatTime,
  printFields,
  printJson,
  printLine,
  printMoreNote,
  printPage,
  printTable,
  shortDigest,
} from './output.js';
import { confirmAction } from './prompt.js';

interface RepositorySummary {
  name: string;
  tag_count: number;
  manifest_count: number;
  size_bytes: number;
  created_at: string;
}

interface Tag {
  name: string;
  digest: string;
  updated_at: string;
}

interface RepositoryDetails {
  name: string;
  created_at: string;
  size_bytes: number;
  tags: Tag[];
  manifests: Array<{
    digest: string;
    media_type: string;
    artifact_type: string | null;
    size: number;
    tags: string[];
    created_at: string;
  }>;
}

/** Registers `repo` and `tag`. */
export function registerRepositoryCommands(program: Command): void {
  const repo = program.command('repo').description('list, show and delete repositories');

  addPageOptions(repo.command('list').description('list repositories'), 'repositories').action(
    async (options: RawPageOptions, command: Command) => {
      const { client } = resolveSession(command);
      const page = await client.list<RepositorySummary>(
        '/v1/repositories',
        'repositories',
        'list repositories',
        pageOptions(options),
      );
      printPage(
        globalOptions(command).json,
        'repositories',
        page,
        ['name', 'tags', 'manifests', 'size', 'created'],
        (item) => [
          item.name,
          item.tag_count,
          item.manifest_count,
          formatBytes(item.size_bytes),
          formatTime(item.created_at),
        ],
        'no repositories found',
      );
    },
  );

  repo
    .command('show')
    .argument('<name>', 'repository name, such as team/app')
    .description("show a repository's tags and manifests")
    .action(async (name: string, _options: unknown, command: Command) => {
      const { client } = resolveSession(command);
      const { body } = await client.request<RepositoryDetails>(
        'GET',
        apiPath('/v1/repositories', name),
        `show repository ${name}`,
      );
      if (typeof body?.name !== 'string' || !Array.isArray(body.manifests)) {
        throw new CliError(
          ExitCode.failure,
          `cannot show repository ${name}: the server's response is not a repository`,
          'check that the server runs a compatible mcr version',
        );
      }
      if (globalOptions(command).json) {
        printJson(body);
        return;
      }
      printFields([
        ['Name', body.name],
        ['Created', formatTime(body.created_at)],
        ['Size', formatBytes(body.size_bytes)],
      ]);
      printLine();
      printLine('Tags:');
      printTable(
        ['tag', 'digest', 'updated'],
        (body.tags ?? []).map((tag) => [
          tag.name,
          shortDigest(tag.digest),
          formatTime(tag.updated_at),
        ]),
        '(no tags)',
      );
      printLine();
      printLine('Manifests:');
      printTable(
        ['digest', 'media type', 'artifact type', 'size', 'tags', 'created'],
        (body.manifests ?? []).map((manifest) => [
          shortDigest(manifest.digest),
          manifest.media_type,
          manifest.artifact_type,
          formatBytes(manifest.size),
          formatList(manifest.tags),
          formatTime(manifest.created_at),
        ]),
        '(no manifests)',
      );
    });

  addYesOption(
    repo
      .command('delete')
      .argument('<name>', 'repository name')
      .description('delete a repository with all its tags and manifests'),
  ).action(async (name: string, options: { yes?: boolean }, command: Command) => {
    const { client } = resolveSession(command);
    await confirmAction(`delete repository ${name} with all its tags and manifests`, options.yes);
    await client.request('DELETE', apiPath('/v1/repositories', name), `delete repository ${name}`);
    if (globalOptions(command).json) printJson({ deleted: true, repository: name });
    else printLine(`Deleted repository ${name}.`);
  });

  const tag = program.command('tag').description('list and delete tags');

  addPageOptions(
    tag
      .command('list')
      .argument('<repository>', 'repository name')
      .description("list a repository's tags"),
    'tags',
  ).action(async (repository: string, options: RawPageOptions, command: Command) => {
    const { client } = resolveSession(command);
    const page = await client.list<Tag>(
      apiPath('/v1/repositories', repository, '-', 'tags'),
      'tags',
      `list tags of ${repository}`,
      pageOptions(options),
    );
    if (globalOptions(command).json) {
      printJson({ tags: page.items, next_cursor: page.next_cursor });
      return;
    }
    printTable(
      ['tag', 'digest', 'updated'],
      page.items.map((item) => [item.name, item.digest, formatTime(item.updated_at)]),
      `no tags found in ${repository}`,
    );
    printMoreNote(page.next_cursor);
  });

  tag
    .command('delete')
    .argument('<repository>', 'repository name')
    .argument('<tag>', 'tag name')
    .description('delete a tag')
    .action(async (repository: string, tagName: string, _options: unknown, command: Command) => {
      const { client } = resolveSession(command);
      await client.request(
        'DELETE',
        apiPath('/v1/repositories', repository, '-', 'tags', tagName),
        `delete tag ${repository}:${tagName}`,
      );
      if (globalOptions(command).json) {
        printJson({ deleted: true, repository, tag: tagName });
      } else {
        printLine(`Deleted tag ${repository}:${tagName}.`);
      }
    });
}
