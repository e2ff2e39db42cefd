/**
 * @tandem/loadtest: the open-loop load test of the real services (`tandem loadtest`,
 * docs/loadtest.md) and the soak of one executor (`npm run soak`).
 */
export { arrivalTimes, buildTrace, promptPools } from './arrivals';
export { dist, percentile, sloMet, summarize } from './metrics';
export type { Dist, RequestRecord, RunStats } from './metrics';
export { mergeSamples, predictionErrors, predictionSamples } from './prediction';
export { buildReport, compare, predictionSection, ratios, serverContention, spreadOf, summarizePolicy } from './report';
export type { LoadtestReport, ReportContext } from './report';
export { deviceSide, runLoadtest } from './run';
export type { LoadtestOptions, LoadtestRun, RateResult } from './run';
export { BUNDLED_SCENARIOS, DEFAULT_POLICIES, loadScenario, plannerSloEnv, POLICIES, ScenarioError, scenarioPathOf, validateScenario } from './scenario';
export type { Emulation, Policy, Scenario } from './scenario';
export { formatSoakReport, promptIds, runSoak, startExecutorProcess } from './soak';
export type { SoakOptions, SoakReport } from './soak';
