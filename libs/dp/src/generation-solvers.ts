import { greedyRatioPlacement, prefixPlacement } from './baselines';
import { solveGenerationDp } from './generation-dp';
import {
  betterGeneration,
  evaluateGeneration,
  generationAsContractInstance,
  generationResultOf,
  sloCheck,
  sloRatio,
  type GenerationInstance,
  type GenerationResult,
} from './generation';
import { solveDpGrid } from './grid-dp';
import { ALGORITHMS, type Algorithm, type Location } from './types';
import { InstanceValidationError } from './validate';

/**
 * `greedy` for a generation, the contract's rule with feasibility judged on every stated
 * SLO: for i = 0..S-1, stage i on the client if the placement so far, with stage i on the
 * client and every later stage on the server, meets every stated SLO; otherwise on the
 * server. Never revisited. Complexity: O(S²).
 */
export function solveGenerationGreedy(instance: GenerationInstance): GenerationResult {
  const n = instance.stages.length;
  const tentative = new Array<Location>(n).fill('server');
  for (let i = 0; i < n; i++) {
    tentative[i] = 'client';
    if (!sloCheck(instance.slo, evaluateGeneration(instance, tentative)).feasible) tentative[i] = 'server';
  }
  return generationResultOf(instance, 'greedy', tentative);
}

/**
 * `prefix` for a generation: the best single split (first k stages on the client, k = 0..S;
 * k = 0 is all-server, priced with server-side decoding when the instance allows it). Among
 * the k meeting every stated SLO, the least work, then the lower E2E; if none does, the
 * least largest ratio latency / SLO, then the least work (then the smaller k).
 * Complexity: O(S²).
 */
export function solveGenerationPrefix(instance: GenerationInstance): GenerationResult {
  const n = instance.stages.length;
  let best = generationResultOf(instance, 'prefix', prefixPlacement(n, 0));
  for (let k = 1; k <= n; k++) {
    const r = generationResultOf(instance, 'prefix', prefixPlacement(n, k));
    if (betterGeneration(instance.slo, r, best)) best = r;
  }
  return best;
}

/** `server-only` for a generation: every stage on the server (server-side decoding unless disabled). O(S). */
export function solveGenerationServerOnly(instance: GenerationInstance): GenerationResult {
  return generationResultOf(instance, 'server-only', prefixPlacement(instance.stages.length, 0));
}

/** `client-only` for a generation: every stage on the client. O(S). */
export function solveGenerationClientOnly(instance: GenerationInstance): GenerationResult {
  const n = instance.stages.length;
  return generationResultOf(instance, 'client-only', prefixPlacement(n, n));
}

/**
 * `dp-grid` for a generation, defined only when `e2eMs` is the one stated SLO (the grid
 * bounds one latency): the contract's dp-grid on {@link generationAsContractInstance}, its
 * placement re-priced as a generation, then compared exactly ({@link betterGeneration}) with
 * the all-server plan with server-side decoding, which the contract instance cannot express.
 * @throws InstanceValidationError naming `slo` when TTFT or TPOT is stated, or naming
 *   `resolutionMs` as the contract's dp-grid does.
 * Complexity: O(S · e2eMs / resolutionMs).
 */
export function solveGenerationDpGrid(instance: GenerationInstance): GenerationResult {
  const { slo } = instance;
  if (slo.ttftMs !== undefined || slo.tpotMs !== undefined || slo.e2eMs === undefined) {
    throw new InstanceValidationError('slo', 'must state e2eMs alone for dp-grid, which bounds one latency (use dp for TTFT/TPOT SLOs)', slo);
  }
  const grid = solveDpGrid(generationAsContractInstance(instance));
  let best = generationResultOf(instance, 'dp-grid', grid.placement);
  if (instance.serverDecoding ?? true) {
    const streamed = generationResultOf(instance, 'dp-grid', prefixPlacement(instance.stages.length, 0));
    if (betterGeneration(slo, streamed, best)) best = streamed;
  }
  return best;
}

/**
 * `greedy-ratio` for a generation ({@link greedyRatioPlacement}): the latency a move adds is
 * the rise of the largest ratio latency / SLO over the stated SLOs; all-server is priced with
 * server-side decoding when the instance allows it. Complexity: O(S⁴).
 */
export function solveGenerationGreedyRatio(instance: GenerationInstance): GenerationResult {
  const placement = greedyRatioPlacement(instance.stages.length, (p) => {
    const c = evaluateGeneration(instance, p);
    return { work: c.serverWork, latency: sloRatio(instance.slo, c), feasible: sloCheck(instance.slo, c).feasible };
  });
  return generationResultOf(instance, 'greedy-ratio', placement);
}

const GENERATION_SOLVERS: Readonly<Record<Algorithm, (instance: GenerationInstance) => GenerationResult>> = {
  dp: solveGenerationDp,
  'dp-grid': solveGenerationDpGrid,
  greedy: solveGenerationGreedy,
  prefix: solveGenerationPrefix,
  'server-only': solveGenerationServerOnly,
  'client-only': solveGenerationClientOnly,
  'greedy-ratio': solveGenerationGreedyRatio,
};

/**
 * Solves a validated generation instance with the named algorithm (`dp` by default).
 * @throws RangeError for an unknown algorithm; InstanceValidationError from `dp-grid` when a
 *   TTFT or TPOT SLO is stated or `resolutionMs` is missing or too fine.
 * Complexity: that of the chosen solver.
 */
export function solveGeneration(instance: GenerationInstance, algorithm: Algorithm = 'dp'): GenerationResult {
  const solver = GENERATION_SOLVERS[algorithm];
  if (!solver) throw new RangeError(`algorithm must be one of ${ALGORITHMS.join(', ')}, given ${JSON.stringify(algorithm)}`);
  return solver(instance);
}
