export {
  GarbageCollector,
  GcConflictError,
  type CollectorOptions,
  type RunOptions,
} from './collector.js';
export type { GcPhase, GcProgress, GcRun, GcTrigger } from './runs.js';
