import { approxEqual, approxLessOrEqual, transferMs } from './evaluate';
import { grown } from './grown';
import { resultOf } from './result';
import type { Location, PlacementInstance, PlacementResult } from './types';

/** Slack on the SLA pruning bound, wider than the equality tolerance so pruning never drops a label the final check would accept. */
const PRUNE_SLACK = 4e-9;

/**
 * Growable struct-of-arrays store of (latency, work, parent, location) labels.
 * Labels of one (stage, location) occupy a contiguous range, sorted by latency ascending
 * with work strictly descending (a Pareto front).
 */
class LabelStore {
  lat: Float64Array;
  work: Float64Array;
  parent: Int32Array;
  server: Uint8Array;
  size = 0;
  constructor(capacity: number) {
    this.lat = new Float64Array(capacity);
    this.work = new Float64Array(capacity);
    this.parent = new Int32Array(capacity);
    this.server = new Uint8Array(capacity);
  }
  push(lat: number, work: number, parent: number, server: number): void {
    if (this.size === this.lat.length) this.grow();
    const k = this.size++;
    this.lat[k] = lat;
    this.work[k] = work;
    this.parent[k] = parent;
    this.server[k] = server;
  }
  private grow(): void {
    const cap = this.lat.length * 2;
    this.lat = grown(this.lat, cap);
    this.work = grown(this.work, cap);
    this.parent = grown(this.parent, cap);
    this.server = grown(this.server, cap);
  }
}

/**
 * Merges two Pareto fronts (each sorted by latency ascending, work strictly descending),
 * shifted by `addA` / `addB` latency and `workA` / `workB` work, into `store` as the front of a new
 * (stage, location). Labels whose latency plus `lowerBound` exceeds `limit` are dropped;
 * since both inputs are sorted by latency, each input stops at its first such label.
 * Order of additions matches evaluatePlacement: (latency + transfer) + compute.
 */
function mergeFronts(
  store: LabelStore,
  a0: number,
  a1: number,
  transferA: number,
  computeA: number,
  b0: number,
  b1: number,
  transferB: number,
  computeB: number,
  workA: number,
  workB: number,
  server: number,
  lowerBound: number,
  limit: number,
): void {
  const { lat, work } = store;
  let i = a0;
  let j = b0;
  let best = Infinity;
  let latA = i < a1 ? lat[i] + transferA + computeA : Infinity;
  let latB = j < b1 ? lat[j] + transferB + computeB : Infinity;
  if (latA + lowerBound > limit) latA = Infinity;
  if (latB + lowerBound > limit) latB = Infinity;
  while (latA !== Infinity || latB !== Infinity) {
    let l: number;
    let w: number;
    let from: number;
    const wA = latA !== Infinity ? work[i] + workA : Infinity;
    const wB = latB !== Infinity ? work[j] + workB : Infinity;
    if (latA < latB || (latA === latB && wA <= wB)) {
      l = latA;
      w = wA;
      from = i++;
      latA = i < a1 ? lat[i] + transferA + computeA : Infinity;
      if (latA + lowerBound > limit) latA = Infinity;
    } else {
      l = latB;
      w = wB;
      from = j++;
      latB = j < b1 ? lat[j] + transferB + computeB : Infinity;
      if (latB + lowerBound > limit) latB = Infinity;
    }
    if (w < best) {
      best = w;
      store.push(l, w, from, server);
    }
  }
}

/**
 * Lower bounds for SLA pruning: `lbClient[i]` / `lbServer[i]` is the least latency of
 * running stages i..S-1 and returning the result, given that stage i-1 ran on the client /
 * server (`i = S`: only the final download, if any). O(S).
 */
function completionBounds(instance: PlacementInstance): { lbClient: Float64Array; lbServer: Float64Array } {
  const { stages, uplink, downlink } = instance;
  const n = stages.length;
  const lbClient = new Float64Array(n + 1);
  const lbServer = new Float64Array(n + 1);
  lbClient[n] = 0;
  lbServer[n] = transferMs(downlink, instance.outBytes);
  for (let i = n - 1; i >= 0; i--) {
    const s = stages[i];
    const onClient = s.clientMs + lbClient[i + 1];
    const onServer = s.serverMs + lbServer[i + 1];
    lbClient[i] = Math.min(onClient, transferMs(uplink, s.inBytes) + onServer);
    lbServer[i] = Math.min(transferMs(downlink, s.inBytes) + onClient, onServer);
  }
  return { lbClient, lbServer };
}

/**
 * Runs the label-setting DP and returns the chosen placement.
 * `minLatencyOnly` makes the SLA irrelevant: the answer is a minimum-latency placement
 * (least work among those within tolerance of the minimum).
 */
function labelDp(instance: PlacementInstance, minLatencyOnly: boolean): Location[] {
  const { stages, uplink, downlink, slaMs } = instance;
  const n = stages.length;
  const { lbClient, lbServer } = completionBounds(instance);
  const minLatency = lbClient[0];
  const feasible = !minLatencyOnly && approxLessOrEqual(minLatency, slaMs);
  const bound = feasible ? slaMs : minLatency;
  const limit = bound + PRUNE_SLACK * Math.abs(bound);
  const store = new LabelStore(Math.max(64, 16 * n));
  const entryWork = instance.serverEntryWork ?? 0;
  // Front ranges of the previous stage; the virtual stage -1 is one client label (index 0).
  store.push(0, 0, -1, 0);
  let c0 = 0,
    c1 = 1,
    s0 = 1,
    s1 = 1;
  for (let i = 0; i < n; i++) {
    const st = stages[i];
    const up = transferMs(uplink, st.inBytes);
    const down = transferMs(downlink, st.inBytes);
    const nc0 = store.size;
    // Stage i on the client: from a client label (no transfer) or a server label (download).
    mergeFronts(store, c0, c1, 0, st.clientMs, s0, s1, down, st.clientMs, 0, 0, 0, lbClient[i + 1], limit);
    const nc1 = store.size;
    // Stage i on the server: from a server label (no transfer) or a client label (upload,
    // which also pays the entry work).
    mergeFronts(store, s0, s1, 0, st.serverMs, c0, c1, up, st.serverMs, st.serverWork, st.serverWork + entryWork, 1, lbServer[i + 1], limit);
    const ns1 = store.size;
    c0 = nc0;
    c1 = nc1;
    s0 = nc1;
    s1 = ns1;
  }
  const finalDown = transferMs(downlink, instance.outBytes);
  const { lat, work } = store;
  const finalLat = (k: number): number => (k >= s0 ? lat[k] + finalDown : lat[k]);
  let chosen = -1;
  if (feasible) {
    let minWork = Infinity;
    for (let k = c0; k < s1; k++) if (approxLessOrEqual(finalLat(k), slaMs) && work[k] < minWork) minWork = work[k];
    let bestLat = Infinity;
    for (let k = c0; k < s1; k++) {
      const l = finalLat(k);
      if (approxLessOrEqual(l, slaMs) && (work[k] === minWork || approxEqual(work[k], minWork)) && l < bestLat) {
        bestLat = l;
        chosen = k;
      }
    }
  }
  if (chosen < 0) {
    let bestLat = Infinity;
    for (let k = c0; k < s1; k++) bestLat = Math.min(bestLat, finalLat(k));
    let bestWork = Infinity;
    for (let k = c0; k < s1; k++) {
      if (approxLessOrEqual(finalLat(k), bestLat) && work[k] < bestWork) {
        bestWork = work[k];
        chosen = k;
      }
    }
  }
  const placement = new Array<Location>(n);
  for (let i = n - 1, k = chosen; i >= 0; i--) {
    placement[i] = store.server[k] === 1 ? 'server' : 'client';
    k = store.parent[k];
  }
  return placement;
}

/**
 * `dp`: the exact optimum of CONTRACT §3, with no discretisation. Least server work among
 * placements meeting `slaMs` (within 1e-9 relative), then the lower latency; if no placement
 * meets `slaMs`, a minimum-latency placement (least work among ties) with `feasible: false`.
 * Placements may switch sides any number of times.
 *
 * Method: a forward DP over (stage, location). Each cell holds the Pareto front of
 * (latency so far, server work so far) labels of partial placements ending there; a label
 * is dropped when another in the same cell is at least as fast and does no more work
 * (such a label can never lead to a better answer, since the cost of the remaining stages
 * depends only on the cell), or when its latency plus the least possible latency of the
 * remaining stages (precomputed backwards) exceeds the SLA. Each front is built by merging
 * the two predecessor fronts, both already sorted by latency, in linear time.
 *
 * Invariants: the result is optimal (equals a brute force over all 2^S placements); the
 * reported figures are exactly evaluatePlacement's.
 * Complexity: O(S · F) time and memory, F the largest front (at most the number of distinct
 * server-work values of a prefix, in practice tens to a few hundred); O(2^S) only in
 * adversarial worst cases.
 */
export function solveDp(instance: PlacementInstance): PlacementResult {
  return resultOf(instance, 'dp', labelDp(instance, false));
}

/**
 * A minimum-latency placement (least server work among placements within 1e-9 relative of
 * the minimum latency), whatever the SLA. Used as the fallback of every optimising solver.
 * Complexity: as {@link solveDp}.
 */
export function minLatencyPlacement(instance: PlacementInstance): Location[] {
  return labelDp(instance, true);
}
