// Runs the registry benchmark with --quick as a child process and checks
// that it finishes and prints a row for every figure. Times and ratios vary
// by machine, so nothing here checks them.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import path from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const BENCH_ENTRY = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../bench/run.js');

const ROWS = [
  'blob push, monolithic',
  'blob push, chunked',
  'blob GET',
  'small blob push',
  'manifest GET',
  'manifest GET p50',
  'manifest GET p99',
  'manifest HEAD',
  'manifest HEAD p50',
  'manifest HEAD p99',
  'tag creation',
  'tags listing, full',
  'tags listing, pages',
  'tags listing, page count',
  'catalog walk',
  'catalog page count',
  'skopeo push',
  'skopeo pull',
  'peak RSS (VmHWM)',
  'SHA-256, one core',
  'node:http receive+hash+write',
  'mcr monolithic push / that ceiling',
  'node:http, one GET per page of the tag walk',
  'mcr tag walk / that floor',
];

function runQuickBench(): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [BENCH_ENTRY, '--quick'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    child.once('error', reject);
    child.once('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('bench/run.js --quick', () => {
  it('prints every figure', { timeout: 60_000 }, async () => {
    const { code, stdout, stderr } = await runQuickBench();
    assert.equal(code, 0, `exit code ${code}; stderr:\n${stderr}`);
    const lines = stdout.split('\n');
    for (const row of ROWS) {
      const line = lines.find((candidate) => candidate.startsWith(`${row}  `));
      assert.ok(line !== undefined, `no row "${row}" in the output:\n${stdout}`);
      assert.match(line, /\d/, `row "${row}" has no number: ${line}`);
    }
  });
});
