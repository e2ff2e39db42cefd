import { solveClientOnly, solveGreedy, solveGreedyRatio, solvePrefix, solveServerOnly } from './baselines';
import { solveDp } from './exact-dp';
import { solveDpGrid } from './grid-dp';
import { ALGORITHMS, type Algorithm, type PlacementInstance, type PlacementResult } from './types';

const SOLVERS: Readonly<Record<Algorithm, (instance: PlacementInstance) => PlacementResult>> = {
  dp: solveDp,
  'dp-grid': solveDpGrid,
  greedy: solveGreedy,
  prefix: solvePrefix,
  'server-only': solveServerOnly,
  'client-only': solveClientOnly,
  'greedy-ratio': solveGreedyRatio,
};

/** Whether `name` is one of {@link ALGORITHMS}. O(1). */
export function isAlgorithm(name: string): name is Algorithm {
  return (ALGORITHMS as readonly string[]).includes(name);
}

/**
 * Solves a validated instance with the named algorithm (`dp` by default). The instance is
 * expected to have passed {@link validateInstance}; solvers do not re-check it.
 * @throws RangeError for an unknown algorithm; InstanceValidationError from `dp-grid` when
 *   `resolutionMs` is missing or too fine.
 * Complexity: that of the chosen solver.
 */
export function solve(instance: PlacementInstance, algorithm: Algorithm = 'dp'): PlacementResult {
  const solver = SOLVERS[algorithm];
  if (!solver) throw new RangeError(`algorithm must be one of ${ALGORITHMS.join(', ')}, given ${JSON.stringify(algorithm)}`);
  return solver(instance);
}
