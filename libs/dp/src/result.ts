import { evaluatePlacement, meetsSla } from './evaluate';
import type { Algorithm, Location, PlacementInstance, PlacementResult } from './types';

/**
 * Builds the answer for `placement`: figures are re-evaluated exactly, so every solver's
 * reported latency, work and switches are those of the placement it returns. O(S).
 */
export function resultOf(instance: PlacementInstance, algorithm: Algorithm, placement: Location[]): PlacementResult {
  const cost = evaluatePlacement(instance, placement);
  return {
    algorithm,
    feasible: meetsSla(instance, cost.latencyMs),
    placement,
    serverWork: cost.serverWork,
    latencyMs: cost.latencyMs,
    switches: cost.switches,
  };
}
