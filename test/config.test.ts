import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

import { parseDuration } from '../src/config/duration.js';
import { ConfigError, loadConfig, parseListenAddress } from '../src/config/index.js';

function writeToml(text: string): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'mcr-config-'));
  const file = path.join(dir, 'mcr.toml');
  writeFileSync(file, text);
  return file;
}

describe('configuration', () => {
  it('uses embedded defaults without a file', () => {
    const config = loadConfig({ env: {}, cwd: '/srv' });
    assert.equal(config.dataDir, '/srv/data');
    assert.deepEqual(config.listen, { host: '127.0.0.1', port: 5000 });
    assert.equal(config.database.driver, 'sqlite');
    assert.equal(config.storage.driver, 'filesystem');
    assert.equal(config.gracePeriodMs, 3_600_000);
    assert.equal(config.statementTimeoutMs, 60_000);
    assert.equal(config.connectWaitMs, 60_000);
    assert.equal(config.log.level, 'info');
    assert.equal(config.server.grpc_addr, '');
  });

  it('reads every fixed key from TOML', () => {
    const file = writeToml(`
data_dir = "/var/lib/mcr"
[server]
listen_addr = "[::1]:5443"
external_url = "https://registry.example.test"
grpc_addr = "127.0.0.1:5001"
[database]
driver = "postgres"
url = "postgres://mcr@localhost/mcr"
statement_timeout = "30s"
connect_wait = "0s"
[storage]
driver = "filesystem"
[gc]
grace_period = "1h30m"
[log]
level = "debug"
`);
    const config = loadConfig({ file, env: {} });
    assert.equal(config.dataDir, '/var/lib/mcr');
    assert.deepEqual(config.listen, { host: '::1', port: 5443 });
    assert.equal(config.server.external_url, 'https://registry.example.test');
    assert.equal(config.database.driver, 'postgres');
    assert.equal(config.statementTimeoutMs, 30_000);
    assert.equal(config.connectWaitMs, 0);
    assert.equal(config.gracePeriodMs, 5_400_000);
    assert.equal(config.log.level, 'debug');
  });

  it('lets MCR_ variables override the file', () => {
    const file = writeToml('[server]\nlisten_addr = "127.0.0.1:6000"\n');
    const config = loadConfig({
      file,
      env: {
        MCR_SERVER_LISTEN_ADDR: '0.0.0.0:7000',
        MCR_DATA_DIR: '/tmp/x',
        MCR_GC_GRACE_PERIOD: '10m',
        MCR_DATABASE_CONNECT_WAIT: '2m',
        MCR_LOG_LEVEL: 'warn',
      },
    });
    assert.equal(config.connectWaitMs, 120_000);
    assert.deepEqual(config.listen, { host: '0.0.0.0', port: 7000 });
    assert.equal(config.dataDir, '/tmp/x');
    assert.equal(config.gracePeriodMs, 600_000);
    assert.equal(config.log.level, 'warn');
  });

  it('accepts the packaged example configuration', () => {
    const file = path.resolve(
      fileURLToPath(import.meta.url),
      '../../../packaging/mcr.example.toml',
    );
    const config = loadConfig({ file, env: {} });
    assert.equal(config.dataDir, '/var/lib/mcr');
    assert.deepEqual(config.listen, { host: '0.0.0.0', port: 5000 });
    assert.equal(config.metrics.mode, 'auth');
  });

  it('finds the file through MCR_CONFIG', () => {
    const file = writeToml('[log]\nlevel = "error"\n');
    assert.equal(loadConfig({ env: { MCR_CONFIG: file } }).log.level, 'error');
  });

  const invalid: Array<[string, string | Record<string, string>, RegExp]> = [
    [
      'bad listen address',
      { MCR_SERVER_LISTEN_ADDR: 'localhost' },
      /server\.listen_addr.*MCR_SERVER_LISTEN_ADDR/,
    ],
    ['port out of range', { MCR_SERVER_LISTEN_ADDR: '127.0.0.1:70000' }, /server\.listen_addr/],
    ['unknown driver', { MCR_DATABASE_DRIVER: 'mysql' }, /database\.driver/],
    ['bad duration', { MCR_GC_GRACE_PERIOD: 'soon' }, /gc\.grace_period/],
    ['bad log level', { MCR_LOG_LEVEL: 'loud' }, /log\.level/],
    ['bad external url', { MCR_SERVER_EXTERNAL_URL: 'ftp://x' }, /server\.external_url/],
    ['postgres without url', { MCR_DATABASE_DRIVER: 'postgres' }, /database\.url/],
    [
      'postgres url of another scheme',
      { MCR_DATABASE_DRIVER: 'postgres', MCR_DATABASE_URL: 'mysql://db/mcr' },
      /database\.url must be a URL such as postgres:.*MCR_DATABASE_URL/,
    ],
    [
      'postgres url that is no URL',
      { MCR_DATABASE_DRIVER: 'postgres', MCR_DATABASE_URL: 'notaurl' },
      /database\.url must be a URL/,
    ],
    ['cert without key', { MCR_SERVER_TLS_CERT: '/c.pem' }, /tls_cert and server\.tls_key/],
    ['unknown key in a section', '[server]\nlisten = "x"\n', /unknown key server\.listen/],
    ['unknown section', '[cache]\nsize = 1\n', /unknown key cache/],
    ['wrong type', '[server]\nlisten_addr = 5000\n', /server\.listen_addr/],
    ['invalid TOML', '[server\n', /invalid TOML/],
    [
      'a statement timeout PostgreSQL cannot take',
      { MCR_DATABASE_STATEMENT_TIMEOUT: '597h' },
      /database\.statement_timeout: expected at most "596h".*MCR_DATABASE_STATEMENT_TIMEOUT/,
    ],
    [
      'a duration too long to count',
      { MCR_DATABASE_CONNECT_WAIT: `${'9'.repeat(400)}h` },
      /database\.connect_wait: expected a duration/,
    ],
  ];
  for (const [name, input, pattern] of invalid) {
    it(`rejects ${name}, naming the key`, () => {
      const options =
        typeof input === 'string' ? { file: writeToml(input), env: {} } : { env: input };
      assert.throws(
        () => loadConfig(options),
        (error: unknown) => {
          assert.ok(error instanceof ConfigError);
          assert.match(error.message, pattern);
          return true;
        },
      );
    });
  }

  it('names a missing file', () => {
    assert.throws(
      () => loadConfig({ file: '/nonexistent/mcr.toml', env: {} }),
      /nonexistent\/mcr\.toml/,
    );
  });
});

describe('parseDuration', () => {
  const cases: Array<[string, number | undefined]> = [
    ['1h', 3_600_000],
    ['90s', 90_000],
    ['1h30m', 5_400_000],
    ['250ms', 250],
    ['2d', 172_800_000],
    ['', undefined],
    ['1', undefined],
    ['h', undefined],
    ['1h 30m', undefined],
    ['-1h', undefined],
    ['3000000d', 259_200_000_000_000],
    ['300000000000d', undefined],
  ];
  for (const [input, expected] of cases) {
    it(`parses "${input}"`, () => assert.equal(parseDuration(input), expected));
  }
});

describe('parseListenAddress', () => {
  it('splits IPv4, IPv6 and host names', () => {
    assert.deepEqual(parseListenAddress('127.0.0.1:5000'), { host: '127.0.0.1', port: 5000 });
    assert.deepEqual(parseListenAddress('[::1]:0'), { host: '::1', port: 0 });
    assert.deepEqual(parseListenAddress('localhost:80'), { host: 'localhost', port: 80 });
  });
  it('rejects malformed addresses', () => {
    for (const value of ['5000', ':5000', '[nothex]:1', '1.2.3.4:', '::1:5000', 'a:99999']) {
      assert.equal(parseListenAddress(value), undefined, value);
    }
  });
});
