import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { describe, it } from 'node:test';

const MODULE = new URL('../src/http/chunk-collection.js', import.meta.url).href;

/**
 * Runs a Node.js process that counts the collections releaseReceivedChunks
 * starts while 40 MiB of received chunks are reported, one MiB at a time.
 */
function countCollections(flags: string[]): string {
  const script = `
    let count = 0;
    const collect = globalThis.gc;
    if (collect) globalThis.gc = (options) => { count += 1; collect(options); };
    const { releaseReceivedChunks } = await import(${JSON.stringify(MODULE)});
    for (let i = 0; i < 40; i++) releaseReceivedChunks(1024 * 1024);
    console.log(collect ? count : 'no gc');
  `;
  return execFileSync(process.execPath, [...flags, '--input-type=module', '-e', script], {
    encoding: 'utf8',
  }).trim();
}

describe('received chunk collection', () => {
  it('collects after every 8 MiB with --expose-gc', () => {
    assert.equal(countCollections(['--expose-gc']), '5');
  });

  it('does nothing without --expose-gc', () => {
    assert.equal(countCollections([]), 'no gc');
  });
});
