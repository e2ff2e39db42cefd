/** The planner's parts, for the launcher, tests and tools. */
export { checkClasses, DEFAULT_CLASSES, loadConfig, plannerEnv } from './config';
export type { PlannerConfig, RequestClass } from './config';
export { PlanMaker, UNRUNNABLE_MS } from './plan-maker';
export type { ModelStage, Objective, PlanMakerOptions } from './plan-maker';
export { PlannerServer } from './planner-server';
export type { PlannerServerOptions } from './planner-server';
