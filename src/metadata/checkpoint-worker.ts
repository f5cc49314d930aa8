// Runs in a worker thread: checkpoints the SQLite write-ahead log of the file
// named in workerData every CHECKPOINT_INTERVAL_MS, on its own connection.
import { parentPort, workerData } from 'node:worker_threads';

import SqliteDatabase from 'better-sqlite3';

const CHECKPOINT_INTERVAL_MS = 200;

const { file } = workerData as { file: string };
const sqlite = new SqliteDatabase(file);
sqlite.pragma('busy_timeout = 5000');
const checkpoint = sqlite.prepare('pragma wal_checkpoint(PASSIVE)');

// PASSIVE copies what it can without waiting for readers or writers to
// finish, as SQLite's documentation of wal_checkpoint describes it.
const timer = setInterval(() => {
  try {
    checkpoint.run();
  } catch (error) {
    parentPort?.postMessage({ type: 'error', message: (error as Error).message });
  }
}, CHECKPOINT_INTERVAL_MS);

parentPort?.on('message', (message: unknown) => {
  if (message !== 'stop') return;
  clearInterval(timer);
  sqlite.close();
  parentPort?.close();
});
parentPort?.postMessage({ type: 'ready' });
