import { approxEqual, approxLessOrEqual, transferMs } from './evaluate';
import { grown } from './grown';
import {
  betterGeneration,
  generationResultOf,
  queueWaits,
  serverWherever,
  sloRatio,
  type GenerationInstance,
  type GenerationResult,
  type Slo,
} from './generation';
import type { Location } from './types';

/** Slack on the pruning bounds, wider than the equality tolerance so pruning never drops a label the final check would accept. */
const PRUNE_SLACK = 4e-9;

/**
 * Per-stage costs of one pass, both sides, both passes, with the lower bounds of completing
 * the chain from each stage. Arrays are indexed by stage; bounds by stage 0..S, "given the
 * previous stage ran on the client / server". The arrays may be longer than S (one workspace
 * serves every solve, see {@link prepare}); only the first S (S + 1 for bounds) entries count.
 */
class Prepared {
  S = 0;
  /** Decode passes m. */
  m = 0;
  cP = new Float64Array(0);
  cD = new Float64Array(0);
  sP = new Float64Array(0);
  sD = new Float64Array(0);
  /** Server work of the stage for the whole generation. */
  sW = new Float64Array(0);
  /** Crossing into stage i: prefill pass (n tokens) and decode pass (1 token), up and down. */
  upP = new Float64Array(0);
  upD = new Float64Array(0);
  downP = new Float64Array(0);
  downD = new Float64Array(0);
  /** The same for the prefill and the m decode passes together (P + m·D), what the E bounds run on. */
  cE = new Float64Array(0);
  sE = new Float64Array(0);
  upE = new Float64Array(0);
  downE = new Float64Array(0);
  /** Entry work for the whole generation (one entry per pass). */
  entry = 0;
  /** Stages that must run on the client (as generation.ts's pinnedToClient): the first and the last when private. */
  private = false;
  /** Final download of the head's output, per pass. */
  finalDown = 0;
  /** Lower bounds on the rest of the prefill pass (P), a decode pass (D) and P + m·D (E). */
  lbPc = new Float64Array(0);
  lbPs = new Float64Array(0);
  lbDc = new Float64Array(0);
  lbDs = new Float64Array(0);
  lbEc = new Float64Array(0);
  lbEs = new Float64Array(0);
  /** Makes every table hold at least S + 1 entries. */
  reserve(S: number): void {
    if (this.lbPc.length > S) return;
    const cap = Math.max(64, 2 * (S + 1));
    const t = (): Float64Array<ArrayBuffer> => new Float64Array(cap);
    [this.cP, this.cD, this.sP, this.sD, this.sW, this.upP, this.upD, this.downP, this.downD] = [t(), t(), t(), t(), t(), t(), t(), t(), t()];
    [this.cE, this.sE, this.upE, this.downE] = [t(), t(), t(), t()];
    [this.lbPc, this.lbPs, this.lbDc, this.lbDs, this.lbEc, this.lbEs] = [t(), t(), t(), t(), t(), t()];
  }
  /** Whether stage i is pinned to the client. */
  pinned(i: number): boolean {
    return this.private && (i === 0 || i === this.S - 1);
  }
}

/**
 * Lower bounds of completing a pass from each stage (`lc` given the previous stage on the
 * client, `ls` on the server), from the stage costs on each side and the crossings into each
 * stage, backwards from S with the final download `fin`.
 */
function bounds(S: number, c: Float64Array, sv: Float64Array, up: Float64Array, down: Float64Array, fin: number, lc: Float64Array, ls: Float64Array): void {
  lc[S] = 0;
  ls[S] = fin;
  for (let i = S - 1; i >= 0; i--) {
    const onClient = c[i] + lc[i + 1];
    const onServer = sv[i] + ls[i + 1];
    lc[i] = Math.min(onClient, up[i] + onServer);
    ls[i] = Math.min(down[i] + onClient, onServer);
  }
}

/**
 * One workspace for every solve: a solve's twenty small arrays cost more to allocate (and
 * collect) than to fill. A solve prepares, runs its passes and reads its answer synchronously,
 * and nothing it calls prepares again, so sharing it is safe.
 */
const workspace = new Prepared();

function prepare(inst: GenerationInstance): Prepared {
  const { stages, uplink, downlink } = inst;
  const S = stages.length;
  const n = inst.promptTokens;
  const m = inst.decodeSteps;
  // With no decode pass TPOT is 0: decode costs take no part.
  const dm = m > 0 ? 1 : 0;
  const queue = queueWaits(inst);
  const p = workspace;
  p.reserve(S);
  p.S = S;
  p.m = m;
  const { cP, cD, sP, sD, sW, upP, upD, downP, downD, cE, sE, upE, downE } = p;
  for (let i = 0; i < S; i++) {
    const s = stages[i];
    cP[i] = s.clientPrefillMs;
    sP[i] = s.serverPrefillMs;
    cD[i] = dm * s.clientDecodeMs;
    sD[i] = dm * s.serverDecodeMs;
    sW[i] = (s.serverPrefillWork ?? s.serverPrefillMs) + m * (s.serverDecodeWork ?? s.serverDecodeMs);
    // Every entry to the server waits its queue, as it pays the uplink's latency.
    upP[i] = transferMs(uplink, n * s.inBytesPerToken) + queue.prefill;
    upD[i] = dm * (transferMs(uplink, s.inBytesPerToken) + queue.decode);
    downP[i] = transferMs(downlink, n * s.inBytesPerToken);
    downD[i] = dm * transferMs(downlink, s.inBytesPerToken);
    cE[i] = cP[i] + m * cD[i];
    sE[i] = sP[i] + m * sD[i];
    upE[i] = upP[i] + m * upD[i];
    downE[i] = downP[i] + m * downD[i];
  }
  p.finalDown = transferMs(downlink, inst.outBytesPerPass);
  bounds(S, cP, sP, upP, downP, p.finalDown, p.lbPc, p.lbPs);
  bounds(S, cD, sD, upD, downD, dm * p.finalDown, p.lbDc, p.lbDs);
  bounds(S, cE, sE, upE, downE, p.finalDown + m * dm * p.finalDown, p.lbEc, p.lbEs);
  p.entry = (inst.serverEntryWork ?? 0) * (m + 1);
  p.private = inst.private === true;
  return p;
}

/** Growable struct-of-arrays store of (TTFT, TPOT, work, parent, side) labels. */
class LabelStore {
  ttft: Float64Array;
  tpot: Float64Array;
  work: Float64Array;
  parent: Int32Array;
  server: Uint8Array;
  size = 0;
  constructor(capacity: number) {
    this.ttft = new Float64Array(capacity);
    this.tpot = new Float64Array(capacity);
    this.work = new Float64Array(capacity);
    this.parent = new Int32Array(capacity);
    this.server = new Uint8Array(capacity);
  }
  push(ttft: number, tpot: number, work: number, parent: number, server: number): void {
    if (this.size === this.ttft.length) this.grow();
    const k = this.size++;
    this.ttft[k] = ttft;
    this.tpot[k] = tpot;
    this.work[k] = work;
    this.parent[k] = parent;
    this.server[k] = server;
  }
  private grow(): void {
    const cap = this.ttft.length * 2;
    this.ttft = grown(this.ttft, cap);
    this.tpot = grown(this.tpot, cap);
    this.work = grown(this.work, cap);
    this.parent = grown(this.parent, cap);
    this.server = grown(this.server, cap);
  }
}

/**
 * One store reused by every pass: allocating five typed arrays per solve cost a fifth of a
 * planner's re-plan time. A pass runs to completion synchronously and reads nothing of the
 * store after it returns, so sharing it is safe; it only grows.
 */
let shared: LabelStore | undefined;
function sharedStore(capacity: number): LabelStore {
  if (!shared || shared.ttft.length < capacity) shared = new LabelStore(capacity);
  shared.size = 0;
  return shared;
}

/** Limits a pass prunes against (Infinity: not constrained), and whether labels compare on E2E only. */
interface Limits {
  readonly ttft: number;
  readonly tpot: number;
  readonly e2e: number;
  /** Labels doing more work than this cannot win (a known feasible plan does less). */
  readonly work: number;
  /**
   * Only E2E matters (neither TTFT nor TPOT stated): labels are compared on (E2E, work);
   * otherwise on (TTFT, TPOT, work).
   */
  readonly e2eOnly: boolean;
}

/**
 * One source of candidate labels for a cell: the predecessor front `[k, to)` shifted by a
 * transfer (`trP`, `trD`) and a compute time (`addP`, `addD`) on each pass and by `addW`
 * work. Fronts are stored in (work, key x, key y) order; a constant shift keeps that order
 * (rounding is monotone), so two sources merge in linear time.
 */
class Source {
  k = 0;
  to = 0;
  trP = 0;
  trD = 0;
  addP = 0;
  addD = 0;
  addW = 0;
  // The current candidate (valid while k < to).
  t = 0;
  d = 0;
  w = 0;
  x = 0;
  y = 0;
  set(from: number, to: number, trP: number, trD: number, addP: number, addD: number, addW: number): this {
    this.k = from;
    this.to = to;
    this.trP = trP;
    this.trD = trD;
    this.addP = addP;
    this.addD = addD;
    this.addW = addW;
    return this;
  }
  /** Moves to the first label from `k` on that the bounds do not rule out. */
  advance(store: LabelStore, m: number, lim: Limits, lbP: number, lbD: number, lbE: number): void {
    const { ttft, tpot, work } = store;
    for (; this.k < this.to; this.k++) {
      const k = this.k;
      const t = ttft[k] + this.trP + this.addP;
      const d = tpot[k] + this.trD + this.addD;
      const w = work[k] + this.addW;
      const e = t + m * d;
      if (t + lbP > lim.ttft || d + lbD > lim.tpot || e + lbE > lim.e2e || w > lim.work) continue;
      this.t = t;
      this.d = d;
      this.w = w;
      if (lim.e2eOnly) {
        this.x = e;
        this.y = 0;
      } else {
        this.x = t;
        this.y = d;
      }
      return;
    }
  }
}

/** The kept labels' (x, y) staircase of one cell: x strictly ascending, y strictly descending. */
export class Staircase {
  x = new Float64Array(64);
  y = new Float64Array(64);
  size = 0;
  /**
   * Adds (x, y) unless a point with x' <= x and y' <= y is there; drops the points it
   * dominates. Returns whether it was added. O(log F) search plus the shift.
   */
  offer(x: number, y: number): boolean {
    const xs = this.x;
    const ys = this.y;
    let lo = 0;
    let hi = this.size;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (xs[mid] <= x) lo = mid + 1;
      else hi = mid;
    }
    const j = lo - 1; // largest index with xs[j] <= x
    if (j >= 0 && ys[j] <= y) return false;
    // Points with x' >= x and y' >= y form a run starting at j (if x' = x) or j + 1.
    const start = j >= 0 && xs[j] === x ? j : j + 1;
    let end = start;
    while (end < this.size && ys[end] >= y) end++;
    const removed = end - start;
    if (removed !== 1) {
      if (this.size - removed + 1 > xs.length) this.grow();
      this.x.copyWithin(start + 1, end, this.size);
      this.y.copyWithin(start + 1, end, this.size);
      this.size += 1 - removed;
    }
    this.x[start] = x;
    this.y[start] = y;
    return true;
  }
  private grow(): void {
    this.x = grown(this.x, this.x.length * 2);
    this.y = grown(this.y, this.y.length * 2);
  }
}

/**
 * Builds the front of one cell (stage i on one side) from its sources, keeping labels that no
 * other label of the cell dominates in (key x, key y, work) and that the completion bounds do
 * not rule out. Candidates arrive in (work, x, y) order, so a candidate is dominated iff some
 * kept label has x <= its x and y <= its y, which the staircase answers.
 */
function fillCell(
  store: LabelStore,
  sources: readonly Source[],
  count: number,
  server: number,
  m: number,
  lim: Limits,
  lbP: number,
  lbD: number,
  lbE: number,
  stair: Staircase,
): void {
  stair.size = 0;
  for (let j = 0; j < count; j++) sources[j].advance(store, m, lim, lbP, lbD, lbE);
  for (;;) {
    let src: Source | undefined;
    for (let j = 0; j < count; j++) {
      const c = sources[j];
      if (c.k >= c.to) continue;
      if (!src || c.w < src.w || (c.w === src.w && (c.x < src.x || (c.x === src.x && c.y < src.y)))) src = c;
    }
    if (!src) return;
    if (stair.offer(src.x, src.y)) store.push(src.t, src.d, src.w, src.k, server);
    src.k++;
    src.advance(store, m, lim, lbP, lbD, lbE);
  }
}

/** The staircase and the three sources every pass reuses (a pass runs synchronously to its end, as the label store). */
const passStair = new Staircase();
const passSources = [new Source(), new Source(), new Source()];

/**
 * The choice among a DP's complete labels. `feasibleOnly`: the least work among labels
 * meeting every stated SLO (within 1e-9 relative), then the lower E2E. Otherwise: the least
 * largest ratio latency / SLO, then the least work, then the lower E2E. Ties within 1e-9
 * relative keep the first offered.
 */
export class FinalPick {
  chosen = -1;
  private ratio = Infinity;
  private work = Infinity;
  private e2e = Infinity;
  constructor(
    private readonly slo: Slo,
    private readonly feasibleOnly: boolean,
  ) {}
  /** Offers label `k` with its final figures. O(1). */
  offer(k: number, ttftMs: number, tpotMs: number, e2eMs: number, work: number): void {
    const slo = this.slo;
    let ratio = 0;
    if (this.feasibleOnly) {
      if (
        (slo.ttftMs !== undefined && !approxLessOrEqual(ttftMs, slo.ttftMs)) ||
        (slo.tpotMs !== undefined && !approxLessOrEqual(tpotMs, slo.tpotMs)) ||
        (slo.e2eMs !== undefined && !approxLessOrEqual(e2eMs, slo.e2eMs))
      )
        return;
    } else {
      ratio = sloRatio(slo, { ttftMs, tpotMs, e2eMs });
    }
    let better: boolean;
    if (this.chosen < 0) better = true;
    else if (!this.feasibleOnly && !approxEqual(ratio, this.ratio)) better = ratio < this.ratio;
    else if (!approxEqual(work, this.work)) better = work < this.work;
    else better = e2eMs < this.e2e;
    if (better) {
      this.chosen = k;
      this.ratio = ratio;
      this.work = work;
      this.e2e = e2eMs;
    }
  }
}

/**
 * Runs the forward label DP once under `lim` and returns the best placement among the
 * surviving complete labels by the rule below, or undefined when none survives.
 * `feasibleOnly`: the least work among labels meeting every stated SLO, then the lower E2E.
 * Otherwise: the least largest ratio latency / SLO, then the least work, then the lower E2E.
 */
function labelPass(p: Prepared, inst: GenerationInstance, lim: Limits, feasibleOnly: boolean): Location[] | undefined {
  const { S, m } = p;
  const store = sharedStore(Math.max(64, 16 * S));
  store.push(0, 0, 0, -1, 0);
  // Cells of the previous stage as store ranges: client [c0, c1), server after a client stage
  // [s0, s1), and the all-server prefix (every stage so far on the server) [a0, a1), at most
  // one label, kept apart: with server-side decoding the stepped all-server plan is not a plan
  // (the streamed one, priced apart, is), so it must not prune the splits it would dominate.
  // Label 0 stands for "before stage 0, on the client".
  let c0 = 0,
    c1 = 1,
    s0 = 1,
    s1 = 1,
    a0 = 1,
    a1 = 1;
  const stair = passStair;
  const sources = passSources;
  const [a, b, c] = sources;
  for (let i = 0; i < S; i++) {
    const nc0 = store.size;
    // Stage i on the client: from a client label, or from a server label (download).
    a.set(c0, c1, 0, 0, p.cP[i], p.cD[i], 0);
    b.set(s0, s1, p.downP[i], p.downD[i], p.cP[i], p.cD[i], 0);
    c.set(a0, a1, p.downP[i], p.downD[i], p.cP[i], p.cD[i], 0);
    fillCell(store, sources, 3, 0, m, lim, p.lbPc[i + 1], p.lbDc[i + 1], p.lbEc[i + 1], stair);
    const nc1 = store.size;
    // Stage i on the server after a client stage: from a server label of the same kind, or
    // from a client label (upload and one entry per pass). At stage 0 that upload starts the
    // all-server prefix instead. A stage pinned to the client has no server cells.
    if (i > 0 && !p.pinned(i)) {
      a.set(s0, s1, 0, 0, p.sP[i], p.sD[i], p.sW[i]);
      b.set(c0, c1, p.upP[i], p.upD[i], p.sP[i], p.sD[i], p.sW[i] + p.entry);
      fillCell(store, sources, 2, 1, m, lim, p.lbPs[i + 1], p.lbDs[i + 1], p.lbEs[i + 1], stair);
    }
    const ns1 = store.size;
    // The all-server prefix: from label 0 with the upload at stage 0, then staying on the server.
    if (!p.pinned(i)) {
      if (i === 0) a.set(0, 1, p.upP[0], p.upD[0], p.sP[0], p.sD[0], p.sW[0] + p.entry);
      else a.set(a0, a1, 0, 0, p.sP[i], p.sD[i], p.sW[i]);
      fillCell(store, sources, 1, 1, m, lim, p.lbPs[i + 1], p.lbDs[i + 1], p.lbEs[i + 1], stair);
    }
    c0 = nc0;
    c1 = nc1;
    s0 = nc1;
    s1 = ns1;
    a0 = ns1;
    a1 = store.size;
  }
  // The stepped all-server plan competes only when the server does not decode on its own.
  if (inst.serverDecoding ?? true) a1 = a0;
  const { ttft, tpot, work } = store;
  const dm = m > 0 ? 1 : 0;
  const pick = new FinalPick(inst.slo, feasibleOnly);
  for (let k = c0; k < a1; k++) {
    const fin = k >= s0 ? p.finalDown : 0;
    const t = ttft[k] + fin;
    const d = tpot[k] + dm * fin;
    pick.offer(k, t, d, t + m * d, work[k]);
  }
  const chosen = pick.chosen;
  if (chosen < 0) return undefined;
  const placement = new Array<Location>(S);
  for (let i = S - 1, k = chosen; i >= 0; i--) {
    placement[i] = store.server[k] === 1 ? 'server' : 'client';
    k = store.parent[k];
  }
  return placement;
}

const ALL = (S: number, side: Location): Location[] => new Array<Location>(S).fill(side);

/** A bound `v` widened by the pruning slack (Infinity when not stated). */
const widen = (v: number | undefined): number => (v === undefined ? Infinity : v + PRUNE_SLACK * Math.abs(v));

/** The all-server plan decoded on the server (streamed) when the instance has it, priced exactly. */
function streamedPlan(instance: GenerationInstance, S: number): GenerationResult | undefined {
  const serverDecoding = (instance.serverDecoding ?? true) && !instance.private;
  return serverDecoding ? generationResultOf(instance, 'dp', ALL(S, 'server')) : undefined;
}

/**
 * dp's first pass: the least-work placement meeting every stated SLO with work at most
 * `workAtMost` (pruned from the start; Infinity for no bound), the streamed plan compared exactly;
 * undefined when none does.
 */
function bestFeasible(p: Prepared, instance: GenerationInstance, streamed: GenerationResult | undefined, workAtMost: number): GenerationResult | undefined {
  const { slo } = instance;
  const streamedFits = streamed !== undefined && streamed.feasible && approxLessOrEqual(streamed.serverWork, workAtMost);
  const limits: Limits = {
    ttft: widen(slo.ttftMs),
    tpot: widen(slo.tpotMs),
    e2e: widen(slo.e2eMs),
    work: widen(streamedFits ? Math.min(workAtMost, streamed.serverWork) : workAtMost),
    e2eOnly: slo.ttftMs === undefined && slo.tpotMs === undefined,
  };
  const placement = labelPass(p, instance, limits, true);
  let best = placement ? generationResultOf(instance, 'dp', placement) : undefined;
  if (streamedFits && (!best || betterGeneration(slo, streamed, best))) best = streamed;
  return best && approxLessOrEqual(best.serverWork, workAtMost) ? best : undefined;
}

/**
 * `dp` for a generation: the exact optimum. Least server work among placements meeting
 * every stated SLO (each within 1e-9 relative), then the lower E2E; when no placement meets
 * them all, the placement minimising the largest ratio latency / SLO over the stated SLOs
 * (then the least work, then the lower E2E), with `feasible: false`. Placements may switch
 * sides any number of times.
 *
 * Method: a forward DP over (stage, side), the server side split in two cells: after a
 * client stage, and the all-server prefix (one label). Each cell holds the Pareto front of labels
 * (TTFT so far, TPOT so far, server work so far) of partial placements ending there (when
 * only E2E is stated, (E2E so far, work)): the remaining passes' costs depend only on the
 * cell, and every final figure (TTFT, TPOT, E2E = TTFT + m·TPOT, the ratio) is monotone in
 * the label's, so a dominated label never leads to a better answer. A label is also dropped
 * when its TTFT, TPOT or E2E plus the least possible rest of that figure (precomputed
 * backwards) exceeds the stated bound. Fronts are built by merging the predecessor fronts
 * in (work, latency) order against a staircase of the kept labels.
 * The all-server plan with server-side decoding is not a path of this DP (its decode passes
 * cross nothing, and `serverWholeModel` may price its compute apart); it is a separate
 * candidate compared exactly ({@link betterGeneration}). Its stepped twin stays in its own
 * cell and is not an answer then, so it prunes no split the streamed plan would not beat.
 * A first pass prunes against the SLOs; when nothing meets them, a second pass minimises the
 * ratio, pruning against the best ratio of all-client and all-server.
 *
 * Invariants: the result equals a brute force over all 2^S placements (tested); reported
 * figures are exactly evaluateGeneration's.
 * Complexity: O(S · F log F) time (a staircase search per candidate label) and O(S · F)
 * memory, F the largest front; F is small in
 * practice because TTFT, TPOT and work grow together along a model, O(2^S) only in
 * adversarial cases.
 */
export function solveGenerationDp(instance: GenerationInstance): GenerationResult {
  const p = prepare(instance);
  const { slo } = instance;
  const streamed = streamedPlan(instance, p.S);
  const feasible = bestFeasible(p, instance, streamed, Infinity);
  if (feasible) return feasible;
  // Nothing meets every SLO (nor does the streamed plan): minimise the largest ratio. Any real placement bounds it.
  const ends = [generationResultOf(instance, 'dp', ALL(p.S, 'client')), generationResultOf(instance, 'dp', serverWherever(instance))];
  const r = Math.min(...ends.map((e) => sloRatio(slo, e)));
  const at = (v: number | undefined): number => (v === undefined ? Infinity : widen(r * v));
  const e2eOnly = slo.ttftMs === undefined && slo.tpotMs === undefined;
  const placement = labelPass(p, instance, { ttft: at(slo.ttftMs), tpot: at(slo.tpotMs), e2e: at(slo.e2eMs), work: Infinity, e2eOnly }, false);
  let best = placement ? generationResultOf(instance, 'dp', placement) : undefined;
  if (streamed && (!best || betterGeneration(slo, streamed, best))) best = streamed;
  // Some placement always survives the second pass (the one attaining the ratio bound), or
  // the streamed all-server plan is the bound itself.
  if (!best) throw new Error('solveGenerationDp: no placement survived the ratio-bound pass, which always keeps one attaining the bound');
  return best;
}

/**
 * {@link solveGenerationDp}'s answer when it meets every stated SLO with server work at most
 * `workAtMost` (within 1e-9 relative); undefined when no placement does. A caller that holds a
 * plan meeting the SLOs and would replace it only by one doing less work (the planner's
 * hysteresis) asks this: labels doing more than `workAtMost` are pruned from the start, so the
 * search is much smaller, and the answer, when there is one, is the unbounded one (the optimum
 * and every label on its way do no more work than it, so none of them is pruned, and what is
 * pruned does more work than the optimum by more than the tolerance).
 * Complexity: as {@link solveGenerationDp}, with smaller fronts.
 */
export function solveGenerationDpBelow(instance: GenerationInstance, workAtMost: number): GenerationResult | undefined {
  const p = prepare(instance);
  return bestFeasible(p, instance, streamedPlan(instance, p.S), workAtMost);
}

/**
 * The placement with the least largest ratio latency / SLO (least work among ties), whatever
 * the SLOs allow: the fastest plan in the SLOs' own terms. With only `e2eMs` stated it is a
 * minimum-E2E placement. Complexity: as {@link solveGenerationDp}.
 */
export function fastestGenerationPlacement(instance: GenerationInstance): GenerationResult {
  const p = prepare(instance);
  const { slo } = instance;
  const serverDecoding = (instance.serverDecoding ?? true) && !instance.private;
  const allServer = generationResultOf(instance, 'dp', serverWherever(instance));
  const ends = [generationResultOf(instance, 'dp', ALL(p.S, 'client')), allServer];
  const r = Math.min(...ends.map((e) => sloRatio(slo, e)));
  const at = (v: number | undefined): number => (v === undefined ? Infinity : r * v * (1 + PRUNE_SLACK));
  const e2eOnly = slo.ttftMs === undefined && slo.tpotMs === undefined;
  const placement = labelPass(p, instance, { ttft: at(slo.ttftMs), tpot: at(slo.tpotMs), e2e: at(slo.e2eMs), work: Infinity, e2eOnly }, false);
  const asInfeasible = (x: GenerationResult): GenerationResult => ({ ...x, feasible: false });
  let best = placement ? generationResultOf(instance, 'dp', placement) : undefined;
  // Compare on the ratio whatever feasibility says.
  if (serverDecoding && (!best || betterGeneration(slo, asInfeasible(allServer), asInfeasible(best)))) best = allServer;
  if (!best) throw new Error('fastestGenerationPlacement: no placement survived the ratio-bound pass, which always keeps one attaining the bound');
  return best;
}
