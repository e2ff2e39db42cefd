// The service settings the tests and the benchmarks share, each with the parts a test states
// itself (the engine, the logger, the identity, the model's stages and classes) left out.

/**
 * The planner settings the tests and the benchmarks plan with (a PlanMakerOptions without its
 * stages and classes): the DP solver, no SLA overrides, hysteresis 5 %, SLA margin 0.9, 0.5 ms
 * resolution, utilisation priced up to 0.9.
 */
export const PLAN_SETTINGS = {
  slaOverrides: {},
  algorithm: 'dp',
  hysteresis: 0.05,
  slaMargin: 0.9,
  resolutionMs: 0.5,
  maxUtilisation: 0.9,
} as const;

/**
 * The planner server settings the tests share (a PlannerServerOptions without its planner,
 * logger, NATS and model): 127.0.0.1 port 0, clients kept 60 s after their last profile, no
 * debounce, work minimised at any load.
 */
export const PLANNER_SETTINGS = {
  address: '127.0.0.1:0',
  clientTtlMs: 60_000,
  debounceMs: 0,
  idleUtilisation: 0,
} as const;

/**
 * The executor settings the tests share (an ExecutorServerOptions without its engine, logger,
 * id and telemetry): 127.0.0.1 port 0, 16 sessions, the model's full context, 8 MiB messages,
 * batches of up to 8 steps, a 30 s idle timeout.
 */
export const EXECUTOR_SETTINGS = {
  address: '127.0.0.1:0',
  maxSessions: 16,
  maxContextTokens: 0,
  maxMessageBytes: 8 << 20,
  batching: true,
  maxBatch: 8,
  idleTimeoutMs: 30_000,
} as const;
