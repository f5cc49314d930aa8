import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';

import { MCR_NODE_ENV, MCR_NODE_FLAGS } from './helpers/server.js';

/** Reads a file of the repository, relative to its root. */
function repositoryFile(name: string): string {
  return readFileSync(new URL(`../../${name}`, import.meta.url), 'utf8');
}

/** Returns the line of `text` that contains `marker`. */
function lineWith(text: string, marker: string): string {
  const line = text.split('\n').find((candidate) => candidate.includes(marker));
  assert.ok(line !== undefined, `no line contains ${marker}`);
  return line;
}

// Each way of starting mcr repeats the Node.js settings that the tests use,
// because V8 and libuv read them before any of mcr's code runs.
describe('launchers', () => {
  const launchers: Array<[string, string]> = [
    ['npm start', JSON.parse(repositoryFile('package.json')).scripts.start as string],
    ['mcr shebang', repositoryFile('src/cli/mcr.ts').split('\n')[0] ?? ''],
    ['systemd unit', repositoryFile('packaging/mcr.service')],
    ['Dockerfile', repositoryFile('packaging/Dockerfile')],
  ];

  for (const [name, text] of launchers) {
    it(`${name} passes the Node.js flags and thread count`, () => {
      for (const flag of MCR_NODE_FLAGS) assert.ok(text.includes(flag), `${name} lacks ${flag}`);
      for (const [variable, value] of Object.entries(MCR_NODE_ENV)) {
        assert.ok(text.includes(`${variable}=${value}`), `${name} lacks ${variable}=${value}`);
      }
    });
  }

  it('service and image pass the flags to node', () => {
    const execStart = lineWith(repositoryFile('packaging/mcr.service'), 'ExecStart=');
    const entrypoint = lineWith(repositoryFile('packaging/Dockerfile'), 'ENTRYPOINT');
    for (const flag of MCR_NODE_FLAGS) {
      assert.ok(execStart.includes(flag), `ExecStart lacks ${flag}`);
      assert.ok(entrypoint.includes(`"${flag}"`), `ENTRYPOINT lacks ${flag}`);
    }
  });
});
