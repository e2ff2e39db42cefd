/**
 * @tandem/dp: the split-placement problem (which stages of a request run on the client and
 * which on the server) and its solvers. Pure and synchronous: no I/O, clock, logging or
 * global state; every function returns plain data.
 */
export { ALGORITHMS } from './types';
export type { Algorithm, Link, Location, Placement, PlacementCost, PlacementInstance, PlacementResult, Stage } from './types';
export { InstanceValidationError, validateInstance } from './validate';
export { isPlacementLetters, placementFromLetters, placementKind, placementToLetters, planKey, type PlacementKind } from './placement';
export { RELATIVE_TOLERANCE, approxEqual, approxLessOrEqual, evaluatePlacement, meetsSla, transferMs } from './evaluate';
export { isAlgorithm, solve } from './solve';
export { minLatencyPlacement, solveDp } from './exact-dp';
export { MAX_GRID_CELLS, solveDpGrid } from './grid-dp';
export { greedyRatioPlacement, prefixPlacement, solveClientOnly, solveGreedy, solveGreedyRatio, solvePrefix, solveServerOnly } from './baselines';
export type { RatioFigures } from './baselines';
export { generationFromShape, instanceFromMeasured, instanceFromShape, linkFromMbps, requestCosts } from './cost-model';
export type { DeviceSpec, MeasuredProfile, MeasuredStage, RequestCosts, RequestShape, ShapeScenario, StageCost, TransformerShape } from './cost-model';
export {
  SLO_KEYS,
  betterGeneration,
  evaluateGeneration,
  generationAsContractInstance,
  generationResultOf,
  honourPins,
  isServerDecodingPlacement,
  pinnedToClient,
  queueWaits,
  serverWherever,
  sloCheck,
  sloRatio,
  statedSlos,
} from './generation';
export type {
  ComparableResult,
  GenerationCost,
  GenerationInstance,
  GenerationResult,
  GenerationStage,
  Slo,
  SloKey,
  SloMet,
  WholeModelCost,
} from './generation';
export { isGenerationInstance, isPhasedInstance, validateGenerationInstance, validatePhasedInstance } from './generation-validate';
export { PHASED_ALGORITHM, evaluatePhased, handoverWork, phaseEntryWork, phasedResultOf } from './phased';
export type { HandoverInstance, KvHandoverCost, PhasedCost, PhasedInstance, PhasedResult } from './phased';
export { solvePhasedAndSingle, solvePhasedDp } from './phased-dp';
export { fastestGenerationPlacement, solveGenerationDp, solveGenerationDpBelow } from './generation-dp';
export {
  solveGeneration,
  solveGenerationClientOnly,
  solveGenerationDpGrid,
  solveGenerationGreedy,
  solveGenerationGreedyRatio,
  solveGenerationPrefix,
  solveGenerationServerOnly,
} from './generation-solvers';
