/** The server-executor's parts, for the launcher, tests and tools. */
export { DEFAULT_MAX_BATCH_TOKENS, executorEnv, loadConfig } from './config';
export type { ExecutorConfig } from './config';
export { OnnxStageEngine, SessionCache, WARMUP_DECODE_STEPS, WARMUP_PROMPT_TOKENS } from './engine';
export { IDLE_COLLECT_DELAY_MS, WorkerStageEngine } from './worker-engine';
export { EngineUnavailableError } from './errors';
export type { EngineLoadOptions, StageEngine, StageKv } from './engine';
export { EXECUTOR_SERVICE_NAME, ExecutorServer } from './executor-server';
export type { ExecutorServerOptions } from './executor-server';
export { StageScheduler } from './scheduler';
export { ExecutorMetrics } from './metrics';
export type { GcThread } from './metrics';
export { GC_KINDS, watchGc } from './gc-watch';
export type { GcKind } from './gc-watch';
export type { StepOutcome } from './scheduler';
