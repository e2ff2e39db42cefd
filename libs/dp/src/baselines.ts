import { approxEqual, approxLessOrEqual, evaluatePlacement } from './evaluate';
import { resultOf } from './result';
import type { Location, PlacementInstance, PlacementResult } from './types';

/**
 * `greedy`, the baseline the paper beats, exactly as CONTRACT §3 defines it: for
 * i = 0..S-1 in order, put stage i on the client if the placement made so far, with
 * stage i on the client and every later stage on the server, meets `slaMs` (within 1e-9
 * relative); otherwise put it on the server. Decisions are never revisited, and the cost
 * of switching back later is never weighed.
 *
 * Invariants: if all-server meets the SLA, so does the greedy placement (every accepted
 * tentative placement is the final one with a server suffix, checked when accepted);
 * its work is never below {@link solveDp}'s on a feasible instance.
 * Complexity: O(S²): each of the S tentative placements is evaluated in full, summing in
 * the same order as evaluatePlacement so borderline decisions match a re-evaluation.
 */
export function solveGreedy(instance: PlacementInstance): PlacementResult {
  const n = instance.stages.length;
  const tentative = new Array<Location>(n).fill('server');
  for (let i = 0; i < n; i++) {
    tentative[i] = 'client';
    const { latencyMs } = evaluatePlacement(instance, tentative);
    if (!approxLessOrEqual(latencyMs, instance.slaMs)) tentative[i] = 'server';
  }
  return resultOf(instance, 'greedy', tentative);
}

/** The placement with the first `k` stages on the client and the rest on the server. O(S). */
export function prefixPlacement(stageCount: number, k: number): Location[] {
  const p = new Array<Location>(stageCount);
  for (let i = 0; i < stageCount; i++) p[i] = i < k ? 'client' : 'server';
  return p;
}

/**
 * `prefix`: the best single split, as classic split inference does: the first k stages on
 * the client and the rest on the server, for k = 0..S (k = S is all-client). Among the k
 * that meet `slaMs`, the least server work, then the lower latency (then the smaller k);
 * if none does, the fastest k (then the least work).
 * Complexity: O(S²) (S+1 evaluations of O(S)).
 */
export function solvePrefix(instance: PlacementInstance): PlacementResult {
  const n = instance.stages.length;
  let best = -1;
  let bestLat = Infinity;
  let bestWork = Infinity;
  let bestFeasible = false;
  for (let k = 0; k <= n; k++) {
    const { latencyMs, serverWork } = evaluatePlacement(instance, prefixPlacement(n, k));
    const feasible = approxLessOrEqual(latencyMs, instance.slaMs);
    let better: boolean;
    if (best < 0) better = true;
    else if (feasible !== bestFeasible) better = feasible;
    else if (feasible) {
      better = approxEqual(serverWork, bestWork) ? latencyMs < bestLat : serverWork < bestWork;
    } else {
      better = approxEqual(latencyMs, bestLat) ? serverWork < bestWork : latencyMs < bestLat;
    }
    if (better) {
      best = k;
      bestLat = latencyMs;
      bestWork = serverWork;
      bestFeasible = feasible;
    }
  }
  return resultOf(instance, 'prefix', prefixPlacement(n, best));
}

/** `server-only`: every stage on the server (2 transfers: upload of the input, download of the result). O(S). */
export function solveServerOnly(instance: PlacementInstance): PlacementResult {
  return resultOf(instance, 'server-only', prefixPlacement(instance.stages.length, 0));
}

/** `client-only`: every stage on the client (no transfers, no server work). O(S). */
export function solveClientOnly(instance: PlacementInstance): PlacementResult {
  const n = instance.stages.length;
  return resultOf(instance, 'client-only', prefixPlacement(n, n));
}

/** What {@link greedyRatioPlacement} needs of a placement: its server work, its latency measure and whether it meets the SLOs. */
export interface RatioFigures {
  readonly work: number;
  /** The latency the move trades work against: ms for the contract, the largest latency / SLO ratio for a generation. */
  readonly latency: number;
  readonly feasible: boolean;
}

/**
 * The rule of `greedy-ratio`, over any pricing: start with every stage on the server; then,
 * repeatedly, among the moves of one run of consecutive server stages to the client, take the
 * one that saves the most server work per unit of latency added (a move that adds none comes
 * first, the larger saving first among those), as long as the placement it gives meets the
 * SLOs (or, while the current one misses them, lowers its latency). Stops when no such move
 * saves work. Every move saves work, so it ends within S moves.
 * Complexity: O(S³) evaluations of O(S): up to S moves, each weighing O(S²) runs.
 */
export function greedyRatioPlacement(stageCount: number, price: (placement: readonly Location[]) => RatioFigures): Location[] {
  let placement = new Array<Location>(stageCount).fill('server');
  let current = price(placement);
  for (;;) {
    let best: { placement: Location[]; figures: RatioFigures; score: number; saved: number } | undefined;
    for (let a = 0; a < stageCount; a++) {
      for (let b = a + 1; b <= stageCount && placement[b - 1] === 'server'; b++) {
        const candidate = placement.slice();
        for (let i = a; i < b; i++) candidate[i] = 'client';
        const figures = price(candidate);
        const saved = current.work - figures.work;
        if (saved <= 0 || approxEqual(figures.work, current.work)) continue;
        if (!figures.feasible && (current.feasible || !(figures.latency < current.latency))) continue;
        const added = figures.latency - current.latency;
        const score = added <= 0 ? Infinity : saved / added;
        if (!best || score > best.score || (score === best.score && saved > best.saved)) best = { placement: candidate, figures, score, saved };
      }
    }
    if (!best) return placement;
    placement = best.placement;
    current = best.figures;
  }
}

/**
 * `greedy-ratio`: a fairer greedy than the contract's myopic one ({@link greedyRatioPlacement}
 * with the instance's latency in ms and `slaMs`). Its work is never below {@link solveDp}'s on
 * a feasible instance. Complexity: O(S⁴).
 */
export function solveGreedyRatio(instance: PlacementInstance): PlacementResult {
  const placement = greedyRatioPlacement(instance.stages.length, (p) => {
    const c = evaluatePlacement(instance, p);
    return { work: c.serverWork, latency: c.latencyMs, feasible: approxLessOrEqual(c.latencyMs, instance.slaMs) };
  });
  return resultOf(instance, 'greedy-ratio', placement);
}
