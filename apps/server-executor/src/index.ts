/** The server-executor's parts, for the launcher, tests and tools. */
export { executorEnv, loadConfig } from './config';
export type { ExecutorConfig } from './config';
export { OnnxStageEngine } from './engine';
export type { StageEngine, StageKind } from './engine';
export { ExecutorServer } from './executor-server';
export type { ExecutorServerOptions } from './executor-server';
export { StageScheduler } from './scheduler';
export type { StepOutcome } from './scheduler';
