/**
 * @tandem/loadtest: the open-loop load test of the real services (`tandem loadtest`,
 * docs/loadtest.md) and the soak of one executor (`npm run soak`).
 */
export { arrivalTimes, buildTrace, promptPools } from './arrivals';
export { dist, percentile, sloMet, summarize } from './metrics';
export type { Dist, RequestRecord, RunStats } from './metrics';
export { mergeSamples, predictionErrors, predictionSamples } from './prediction';
export { buildReport, compare, executorSection, predictionSection, ratios, serverContention, spreadOf, summarizePolicy } from './report';
export type { LoadtestReport, ReportContext } from './report';
export { attributeExecutors, executorShares, loadtestExecutorId, MAX_EXECUTORS, OUTCOME_JOIN_TOLERANCE_MS } from './executors';
export type { ExecutorShare, OutcomeSeen } from './executors';
export { readResults, RECORDS_FILE, ResultsFileError, ResultsWriter, RUNS_FILE } from './results-files';
export type { RunSettings } from './results-files';
export { deviceSide, runLoadtest } from './run';
export type { LoadtestOptions, LoadtestRun, RateResult } from './run';
export {
  BUNDLED_SCENARIOS,
  DEFAULT_POLICIES,
  loadScenario,
  plannerSloEnv,
  POLICIES,
  requestSlo,
  scaleSlos,
  ScenarioError,
  scenarioPathOf,
  sloScale,
  validateScenario,
} from './scenario';
export type { Emulation, Policy, Scenario } from './scenario';
export { formatSoakReport, promptIds, runSoak, startExecutorProcess } from './soak';
export type { SoakOptions, SoakReport } from './soak';
