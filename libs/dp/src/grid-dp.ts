import { approxEqual, transferMs } from './evaluate';
import { minLatencyPlacement } from './exact-dp';
import { resultOf } from './result';
import type { Location, PlacementInstance, PlacementResult } from './types';
import { InstanceValidationError, requireResolution } from './validate';

/** Largest table `dp-grid` builds (stages × budget steps × 2 locations); beyond it the resolution is rejected. */
export const MAX_GRID_CELLS = 50_000_000;

const NO_PARENT = 255;

/**
 * Whole steps of `resolutionMs` covering `ms`, rounded up. A tiny relative allowance keeps
 * exact multiples (e.g. 0.3 / 0.1 = 2.9999999999999996) from gaining a step through floating
 * error; the rounding stays conservative because feasibility is re-checked on exact times.
 */
function steps(ms: number, resolutionMs: number): number {
  const q = ms / resolutionMs;
  const r = Math.round(q);
  return Math.abs(q - r) <= 1e-12 * Math.max(1, q) ? r : Math.ceil(q);
}

/**
 * `dp-grid`: the paper's time-discretised DP. The latency budget `slaMs` is cut into
 * J = ⌊slaMs / resolutionMs⌋ steps and every compute and transfer time is rounded up to
 * whole steps; `V[k][j][loc]` is the least server work of placing stages 0..k with stage k at
 * `loc` using exactly j steps, filled stage by stage from two predecessors per cell, and the
 * placement is recovered from per-cell back pointers. The answer is the least work over all
 * j ≤ J (the final download included), then the fewest steps.
 *
 * Invariants: because times are rounded up, a placement it finds within the budget truly
 * meets `slaMs`, so `feasible: true` is always true on exact times, and it never does less
 * work than {@link solveDp}; it may do more (the rounding). When no placement fits the
 * rounded budget it returns a minimum-latency placement, whose `feasible` flag is then
 * evaluated exactly (it can be true when rounding alone hid every feasible placement).
 * Reported figures are exactly evaluatePlacement's.
 * @throws InstanceValidationError when `resolutionMs` is missing or not > 0, or so fine that
 *   the table would exceed {@link MAX_GRID_CELLS} cells.
 * Complexity: O(S · J) time, O(S · J) bytes of back pointers plus O(J) numbers.
 */
export function solveDpGrid(instance: PlacementInstance): PlacementResult {
  const resolutionMs = requireResolution(instance);
  const { stages, uplink, downlink, slaMs } = instance;
  const n = stages.length;
  const budget = Math.floor(slaMs / resolutionMs + 1e-12 * (slaMs / resolutionMs));
  const width = budget + 1;
  if (n * width * 2 > MAX_GRID_CELLS) {
    const minRes = (slaMs * n * 2) / MAX_GRID_CELLS;
    throw new InstanceValidationError(
      'resolutionMs',
      `must keep dp-grid's table within ${MAX_GRID_CELLS} cells (2 × stages × slaMs/resolutionMs), so be >= ${minRes}`,
      resolutionMs,
    );
  }
  const entryWork = instance.serverEntryWork ?? 0;
  // Back pointers: for stage k and location (0 client, 1 server), which location stage k-1 had.
  const from = new Uint8Array(n * 2 * width).fill(NO_PARENT);
  let vc = new Float64Array(width).fill(Infinity);
  let vs = new Float64Array(width).fill(Infinity);
  let nc = new Float64Array(width);
  let ns = new Float64Array(width);
  // Stage 0 comes from the client (stage -1).
  {
    const s = stages[0];
    const tc = steps(s.clientMs, resolutionMs);
    const ts = steps(transferMs(uplink, s.inBytes), resolutionMs) + steps(s.serverMs, resolutionMs);
    if (tc <= budget) {
      vc[tc] = 0;
      from[tc] = 0;
    }
    if (ts <= budget) {
      vs[ts] = s.serverWork + entryWork;
      from[width + ts] = 0;
    }
  }
  for (let k = 1; k < n; k++) {
    const s = stages[k];
    const tc = steps(s.clientMs, resolutionMs);
    const ts = steps(s.serverMs, resolutionMs);
    const up = steps(transferMs(uplink, s.inBytes), resolutionMs);
    const down = steps(transferMs(downlink, s.inBytes), resolutionMs);
    const base = k * 2 * width;
    nc.fill(Infinity);
    ns.fill(Infinity);
    for (let j = 0; j < width; j++) {
      // Client cell: stay on the client, or come down from the server.
      let best = Infinity;
      let par = NO_PARENT;
      if (j >= tc && vc[j - tc] < best) {
        best = vc[j - tc];
        par = 0;
      }
      if (j >= tc + down && vs[j - tc - down] < best) {
        best = vs[j - tc - down];
        par = 1;
      }
      if (par !== NO_PARENT) {
        nc[j] = best;
        from[base + j] = par;
      }
      // Server cell: stay on the server, or come up from the client.
      best = Infinity;
      par = NO_PARENT;
      if (j >= ts && vs[j - ts] < best) {
        best = vs[j - ts];
        par = 1;
      }
      if (j >= ts + up && vc[j - ts - up] + entryWork < best) {
        best = vc[j - ts - up] + entryWork;
        par = 0;
      }
      if (par !== NO_PARENT) {
        ns[j] = best + s.serverWork;
        from[base + width + j] = par;
      }
    }
    [vc, nc] = [nc, vc];
    [vs, ns] = [ns, vs];
  }
  const out = steps(transferMs(downlink, instance.outBytes), resolutionMs);
  let minWork = Infinity;
  for (let j = 0; j < width; j++) {
    if (vc[j] < minWork) minWork = vc[j];
    if (j + out <= budget && vs[j] < minWork) minWork = vs[j];
  }
  if (minWork === Infinity) return resultOf(instance, 'dp-grid', minLatencyPlacement(instance));
  const near = (w: number): boolean => w === minWork || (w !== Infinity && approxEqual(w, minWork));
  let endJ = -1;
  let endLoc = 0;
  for (let j = 0; j < width && endJ < 0; j++) {
    if (near(vc[j])) {
      endJ = j;
      endLoc = 0;
    } else if (j + out <= budget && near(vs[j])) {
      endJ = j;
      endLoc = 1;
    }
  }
  const placement = new Array<Location>(n);
  let j = endJ;
  let loc = endLoc;
  for (let k = n - 1; k >= 0; k--) {
    placement[k] = loc === 1 ? 'server' : 'client';
    const prev = from[k * 2 * width + loc * width + j];
    const s = stages[k];
    if (loc === 0) j -= steps(s.clientMs, resolutionMs) + (prev === 1 ? steps(transferMs(downlink, s.inBytes), resolutionMs) : 0);
    else j -= steps(s.serverMs, resolutionMs) + (prev === 0 ? steps(transferMs(uplink, s.inBytes), resolutionMs) : 0);
    loc = prev;
  }
  return resultOf(instance, 'dp-grid', placement);
}
