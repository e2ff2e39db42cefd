/** @tandem/demo: the whole system on one machine, as `tandem demo` runs it (docs/demo.md). */
export { DEMO_DEVICES } from './devices';
export { DEMO_SEED, demoModelDir } from './model';
export { DEFAULT_NATS_URL, ensureNats, NatsSetupError } from './nats';
export type { DemoNats } from './nats';
export { DemoInterrupted, runDemo } from './run';
export type { DemoAgentReport, DemoOptions, DemoReport, DemoRun } from './run';
