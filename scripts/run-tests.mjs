// Runs every compiled test file with Node's test runner. Node 20's --test
// takes no globs, so this lists the files. Set MCR_TEST_ONLY to a substring
// of file names to run a subset.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';

const root = path.resolve('dist/test');
const only = process.env.MCR_TEST_ONLY ?? '';
const files = readdirSync(root, { recursive: true })
  .map(String)
  .filter((file) => file.endsWith('.test.js') && file.includes(only))
  .sort()
  .map((file) => path.join(root, file));

if (files.length === 0) {
  console.error(`no test files under ${root} match "${only}"`);
  process.exit(1);
}

const concurrency = process.env.MCR_TEST_CONCURRENCY ?? '2';
const result = spawnSync(
  process.execPath,
  ['--test', `--test-concurrency=${concurrency}`, '--test-reporter=spec', ...files],
  { stdio: 'inherit' },
);
process.exit(result.status ?? 1);
