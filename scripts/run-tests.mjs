// Runs every compiled test file with Node's test runner, then runs the test
// files of POSTGRES_FILES again with every mcr they start on a PostgreSQL
// server of this run's own. Node 20's --test takes no globs, so this lists
// the files. Set MCR_TEST_ONLY to a substring of file names to run a subset,
// and MCR_TEST_DATABASES to "sqlite" or "postgres" to run one pass only.
import { spawnSync } from 'node:child_process';
import { readdirSync } from 'node:fs';
import path from 'node:path';

/**
 * Test files whose servers and checks go through mcr's interfaces only, so
 * they hold for either database. Tests in them that open the SQLite file
 * themselves skip on PostgreSQL.
 */
const POSTGRES_FILES = [
  'api-admin',
  'api-blobs',
  'api-listings',
  'api-manifests',
  'audit',
  'auth',
  'bad-input',
  'challenge',
  'gc',
  'gc-race',
  'interop',
  'manifest-cache',
  'mcrctl',
  'metrics',
  'multi-process',
  'postgres',
];

const root = path.resolve('dist/test');
const only = process.env.MCR_TEST_ONLY ?? '';
const databases = (process.env.MCR_TEST_DATABASES ?? 'sqlite,postgres').split(',');
const files = readdirSync(root, { recursive: true })
  .map(String)
  .filter((file) => file.endsWith('.test.js') && file.includes(only))
  .sort()
  .map((file) => path.join(root, file));
const postgresFiles = files.filter((file) =>
  POSTGRES_FILES.includes(path.basename(file, '.test.js')),
);

if (files.length === 0) {
  console.error(`no test files under ${root} match "${only}"`);
  process.exit(1);
}

const concurrency = process.env.MCR_TEST_CONCURRENCY ?? '2';
const run = (label, testFiles, env) => {
  console.log(`\n# ${label}: ${testFiles.length} test files\n`);
  const result = spawnSync(
    process.execPath,
    ['--test', `--test-concurrency=${concurrency}`, '--test-reporter=spec', ...testFiles],
    { stdio: 'inherit', env: { ...process.env, ...env } },
  );
  return result.status ?? 1;
};

let status = 0;
if (databases.includes('sqlite')) status = run('SQLite', files, {});
if (databases.includes('postgres') && postgresFiles.length > 0) {
  const { POSTGRES_URL_ENV, startPostgres } = await import(path.join(root, 'helpers/postgres.js'));
  const server = await startPostgres();
  try {
    const pass = run('PostgreSQL', postgresFiles, { [POSTGRES_URL_ENV]: server.url });
    if (status === 0) status = pass;
  } finally {
    await server.stop();
  }
}
process.exit(status);
