/** @tandem/simulate: the SplitLLM evaluation at model shapes this machine cannot run (`tandem simulate`, docs/simulate.md). */
export { SIMULATED_MODELS } from './models';
export { DEFAULT_RANGES, placementShape, QUICK_RANGES, runSweep, summarize, summarizePhased, sweepConfigs } from './sweep';
export { SERVING_TPOT_MS } from './sweep';
export type { PhasedFigures, PhasedOutcome, PhasedSummary } from './sweep';
export type { SweepRanges } from './sweep';
export { buildReport } from './report';
export type { SimulationReport } from './report';
