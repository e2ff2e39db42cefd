/** The planner's parts, for the launcher, tests and tools. */
export { checkClasses, DEFAULT_CLASSES, isLoopback, loadConfig, plannerEnv } from './config';
export type { PlannerConfig, RequestClass } from './config';
export { PlanMaker, UNRUNNABLE_MS } from './plan-maker';
export type { ClassAdjustment, ModelStage, Objective, PlanMakerOptions } from './plan-maker';
export { Calibrator, Decayed, DEFAULT_CALIBRATION, OBSERVATION_WINDOW } from './calibration';
export type { CalibrationOptions, RecordResult } from './calibration';
export { DASHBOARD_DEFAULTS, PlannerDashboard } from './dashboard';
export type { PlannerDashboardOptions } from './dashboard';
export { dashboardSnapshot } from './dashboard-snapshot';
export type { ClassView, ClientClassView, ClientView, DashboardInfo, DashboardSnapshot, DashboardSource, ServerView } from './dashboard-snapshot';
export { MAX_OUTCOME_MS, validateOutcome } from './outcomes';
export type { ValidOutcome } from './outcomes';
export {
  clientIdOfPageToken,
  DEFAULT_PLANS_PAGE_SIZE,
  MAX_EXECUTORS,
  MAX_PLANS_PAGE_SIZE,
  NO_PLAN_REASONS,
  pageTokenOf,
  PLANNER_MAX_MESSAGE_BYTES,
  PLANNER_LEADER_HEALTH,
  PLANNER_SERVICE_NAME,
  PlannerServer,
} from './planner-server';
export { DEFAULT_LEASE_MS, DEFAULT_STATE_BUCKET, EPOCH_KEY, LEADER_KEY, planKeyOf, PlanState, STATE_OFF } from './plan-state';
export type { PlannerRole } from './plan-state';
export { TELEMETRY_LIMITS, TelemetryError, UNMEASURED_LINK_BYTES_PER_MS, validateLoad, validateProfile } from './telemetry';
export type { TelemetryContext } from './telemetry';
export type { PlannerServerOptions } from './planner-server';
