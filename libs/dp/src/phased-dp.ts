import { transferMs } from './evaluate';
import { betterGeneration, pinnedToClient, serverWherever, sloRatio, type GenerationResult } from './generation';
import { FinalPick, Staircase, solveGenerationDp } from './generation-dp';
import { PHASED_ALGORITHM, handoverWork, phasedResultOf, streamedDecode, type HandoverInstance, type PhasedResult } from './phased';
import type { Location } from './types';

/** Slack on the pruning bounds, wider than the equality tolerance so pruning never drops a label the final check would accept. */
const PRUNE_SLACK = 4e-9;

// A cell is a stage's (prefill side, decode side) with what the path so far has done:
// whether KV moved up or down, whether every decode side so far was the server (D_ALL), and
// whether every side of both phases so far was (P_ALL, only kept with D_ALL: it marks the
// streamed all-server plan, and matters for nothing else).
const P_SERVER = 1;
const D_SERVER = 2;
const KV_UP = 4;
const KV_DOWN = 8;
const P_ALL = 16;
const D_ALL = 32;

/** Growable struct-of-arrays label store: (TTFT so far, decode-and-hand-over so far, work so far, parent, cell). */
class Labels {
  t: number[] = [];
  g: number[] = [];
  w: number[] = [];
  parent: number[] = [];
  cell: number[] = [];
  push(t: number, g: number, w: number, parent: number, cell: number): number {
    this.t.push(t);
    this.g.push(g);
    this.w.push(w);
    this.parent.push(parent);
    this.cell.push(cell);
    return this.t.length - 1;
  }
}

/** One stage's candidate labels, bucketed by destination cell. */
class Candidates {
  t: number[] = [];
  g: number[] = [];
  w: number[] = [];
  parent: number[] = [];
  private cells = new Map<number, number[]>();
  clear(): void {
    this.t.length = 0;
    this.g.length = 0;
    this.w.length = 0;
    this.parent.length = 0;
    this.cells.clear();
  }
  push(cell: number, t: number, g: number, w: number, parent: number): void {
    let bucket = this.cells.get(cell);
    if (!bucket) this.cells.set(cell, (bucket = []));
    bucket.push(this.t.length);
    this.t.push(t);
    this.g.push(g);
    this.w.push(w);
    this.parent.push(parent);
  }
  byCell(): IterableIterator<[number, number[]]> {
    return this.cells.entries();
  }
}

/** Bounds a label must stay within (Infinity: not constrained). */
interface Limits {
  readonly ttft: number;
  readonly tpot: number;
  readonly e2e: number;
  readonly work: number;
}

/**
 * Least time of the rest of one pass from stage i on, given stage i-1 ran on the client
 * (`[0]`) or the server (`[1]`), stepped: `rest[i][side]`, i = 0..S.
 */
function restBounds(c: readonly number[], sv: readonly number[], up: readonly number[], down: readonly number[], fin: number): [number[], number[]] {
  const S = c.length;
  const lc = new Array<number>(S + 1).fill(0);
  const ls = new Array<number>(S + 1).fill(0);
  ls[S] = fin;
  for (let i = S - 1; i >= 0; i--) {
    lc[i] = Math.min(c[i] + lc[i + 1], up[i] + sv[i] + ls[i + 1]);
    ls[i] = Math.min(down[i] + c[i] + lc[i + 1], sv[i] + ls[i + 1]);
  }
  return [lc, ls];
}

/**
 * The exact phased optimum by a forward label DP (see {@link solvePhasedDp}); undefined when
 * no label survives `lim`. `feasibleOnly` picks as the feasible rule does, otherwise by the
 * least SLO ratio.
 */
function phasedPass(inst: HandoverInstance, lim: Limits, feasibleOnly: boolean): { prefill: Location[]; decode: Location[] } | undefined {
  const { stages, uplink, downlink, slo } = inst;
  const S = stages.length;
  const n = inst.promptTokens;
  const m = inst.decodeSteps;
  const queue = inst.serverQueueMs ?? 0;
  const entry = inst.serverEntryWork ?? 0;
  const serverDecoding = inst.serverDecoding ?? true;
  const finalDown = transferMs(downlink, inst.outBytesPerPass);
  // Per stage: crossing into it (n tokens in the prefill, 1 in a decode pass), queue included on the way up.
  const upP = stages.map((s) => transferMs(uplink, n * s.inBytesPerToken) + queue);
  const downP = stages.map((s) => transferMs(downlink, n * s.inBytesPerToken));
  const upD = stages.map((s) => transferMs(uplink, s.inBytesPerToken) + queue);
  const downD = stages.map((s) => transferMs(downlink, s.inBytesPerToken));
  const [restPc, restPs] = restBounds(
    stages.map((s) => s.clientPrefillMs),
    stages.map((s) => s.serverPrefillMs),
    upP,
    downP,
    finalDown,
  );
  const [restDc, restDs] = restBounds(
    stages.map((s) => s.clientDecodeMs),
    stages.map((s) => s.serverDecodeMs),
    upD,
    downD,
    finalDown,
  );
  // Decode figures of the all-server decode prefix before stage i, kept out of D_ALL labels
  // (every label of those cells shares them) and added when a path leaves it.
  const allD = new Array<number>(S + 1).fill(0);
  const allDW = new Array<number>(S + 1).fill(0);
  for (let i = 0; i < S; i++) {
    allD[i + 1] = allD[i] + (i === 0 ? upD[0] : 0) + stages[i].serverDecodeMs;
    allDW[i + 1] = allDW[i] + m * ((stages[i].serverDecodeWork ?? stages[i].serverDecodeMs) + (i === 0 ? entry : 0));
  }
  const loop = streamedDecode(inst);
  // With only E2E stated, TTFT and G matter only as their sum: labels then keep TTFT at 0 and
  // carry the sum in G, which makes fronts two-dimensional (the sum, work).
  const e2eOnly = slo.ttftMs === undefined && slo.tpotMs === undefined;
  const labels = new Labels();
  labels.push(0, 0, 0, -1, P_ALL | D_ALL);
  // The previous stage's fronts: label indices per cell.
  let fronts: number[][] = [];
  fronts[P_ALL | D_ALL] = [0];
  // Whether a label at stage i (0-based, just placed) can still meet the limits.
  const viable = (i: number, t: number, g: number, w: number, cell: number): boolean => {
    if (w > lim.work) return false;
    const restP = cell & P_SERVER ? restPs[i + 1] : restPc[i + 1];
    if (t + restP > lim.ttft) return false;
    const lat = (cell & KV_UP ? uplink.latencyMs : 0) + (cell & KV_DOWN ? downlink.latencyMs : 0);
    // A D_ALL label's decode is still open (stepped or the server's loop): bound it by 0.
    // (With only E2E stated, `t` is 0 and `g` holds TTFT so far too: the E2E bound still holds.)
    const G = g + lat + (cell & D_ALL ? 0 : m * (cell & D_SERVER ? restDs[i + 1] : restDc[i + 1]));
    return G <= lim.tpot * m && t + restP + G <= lim.e2e;
  };
  const cand = new Candidates();
  const stair = new Staircase();
  const pinned = pinnedToClient(inst);
  for (let i = 0; i < S; i++) {
    const s = stages[i];
    const kv = (s.kvBytesPerToken ?? 0) * n;
    // A stage pinned to the client has no server side in either phase.
    const sides = pinned[i] ? (['client'] as const) : (['client', 'server'] as const);
    cand.clear();
    fronts.forEach((front, cell) => {
      if (!front) return;
      const pPrev = cell & P_SERVER ? 'server' : 'client';
      const dPrev = cell & D_SERVER ? 'server' : 'client';
      for (const ps of sides) {
        for (const ds of sides) {
          let addT = 0;
          let addW = 0;
          if (ps === 'server') {
            addT += (ps !== pPrev ? upP[i] : 0) + s.serverPrefillMs;
            addW += (s.serverPrefillWork ?? s.serverPrefillMs) + (ps !== pPrev ? entry : 0);
          } else addT += (ps !== pPrev ? downP[i] : 0) + s.clientPrefillMs;
          const dAll = (cell & D_ALL) !== 0 && ds === 'server';
          let pass = 0;
          if (!dAll) {
            if (cell & D_ALL) {
              pass += allD[i];
              addW += allDW[i];
            }
            if (ds === 'server') {
              pass += (ds !== dPrev ? upD[i] : 0) + s.serverDecodeMs;
              addW += m * ((s.serverDecodeWork ?? s.serverDecodeMs) + (ds !== dPrev ? entry : 0));
            } else pass += (ds !== dPrev ? downD[i] : 0) + s.clientDecodeMs;
          }
          let addG = m * pass;
          let flags = cell & (KV_UP | KV_DOWN);
          if (kv > 0 && ps !== ds) {
            // The server's hand-over work is also time of the hand-over (evaluatePhased).
            const hw = handoverWork(inst.kvHandover, s.kvBytesPerToken ?? 0, n, ps === 'client');
            addW += hw;
            addG += hw;
            if (ps === 'client') {
              addG += kv / uplink.bytesPerMs;
              flags |= KV_UP;
            } else {
              addG += kv / downlink.bytesPerMs;
              flags |= KV_DOWN;
            }
          }
          if (e2eOnly) {
            addG += addT;
            addT = 0;
          }
          const to =
            (ps === 'server' ? P_SERVER : 0) |
            (ds === 'server' ? D_SERVER : 0) |
            flags |
            ((cell & P_ALL) !== 0 && ps === 'server' && dAll ? P_ALL : 0) |
            (dAll ? D_ALL : 0);
          for (const k of front) {
            const t = labels.t[k] + addT;
            const g = labels.g[k] + addG;
            const w = labels.w[k] + addW;
            if (viable(i, t, g, w, to)) cand.push(to, t, g, w, k);
          }
        }
      }
    });
    // Each cell's front: its candidates in (work, TTFT, G) order, kept unless an earlier kept
    // one (no more work) has TTFT and G no larger, which the staircase answers.
    const next: number[][] = [];
    for (const [cell, idx] of cand.byCell()) {
      idx.sort((x, y) => cand.w[x] - cand.w[y] || cand.t[x] - cand.t[y] || cand.g[x] - cand.g[y]);
      stair.size = 0;
      const front: number[] = [];
      for (const c of idx) if (stair.offer(cand.t[c], cand.g[c])) front.push(labels.push(cand.t[c], cand.g[c], cand.w[c], cand.parent[c], cell));
      next[cell] = front;
    }
    fronts = next;
  }
  const pick = new FinalPick(slo, feasibleOnly);
  for (let cell = 0; cell < fronts.length; cell++) {
    const front = fronts[cell];
    if (!front) continue;
    // Both phases all-server with server-side decoding is the streamed plan, priced apart.
    if (serverDecoding && cell & P_ALL && cell & D_ALL) continue;
    const pEndsServer = (cell & P_SERVER) !== 0;
    const streamed = serverDecoding && (cell & D_ALL) !== 0;
    const tokenUp = streamed && !pEndsServer;
    const up = (cell & KV_UP) !== 0 || tokenUp;
    const down = (cell & KV_DOWN) !== 0;
    // The decode passes and the hand-over, in the label's terms: m · pass + hand-over.
    let rest = (up ? uplink.latencyMs : 0) + (tokenUp ? stages[0].inBytesPerToken / uplink.bytesPerMs : 0) + (down ? downlink.latencyMs : 0);
    let restW = entry * ((up ? 1 : 0) + (down ? 1 : 0));
    if (streamed) {
      rest += m * loop.ms;
      restW += m * loop.work;
    } else if (cell & D_ALL) {
      rest += m * (allD[S] + finalDown);
      restW += allDW[S];
    } else if (cell & D_SERVER) rest += m * finalDown;
    for (const k of front) {
      // With only E2E stated, G holds TTFT so far too (t is 0); only the sum is used then.
      const ttft = labels.t[k] + (pEndsServer ? finalDown : 0);
      const G = labels.g[k] + rest;
      const w = labels.w[k] + restW;
      const tpot = G / m;
      const e2e = ttft + G;
      pick.offer(k, ttft, tpot, e2e, w);
    }
  }
  const chosen = pick.chosen;
  if (chosen < 0) return undefined;
  const prefill = new Array<Location>(S);
  const decode = new Array<Location>(S);
  for (let i = S - 1, k = chosen; i >= 0; i--) {
    const cell = labels.cell[k];
    prefill[i] = cell & P_SERVER ? 'server' : 'client';
    decode[i] = cell & D_SERVER ? 'server' : 'client';
    k = labels.parent[k];
  }
  return { prefill, decode };
}

/**
 * `dp-phased`: the exact optimum over pairs of placements, one for the prefill pass and one
 * for the decode passes ({@link evaluatePhased} prices a pair). Least server work among pairs
 * meeting every stated SLO (each within 1e-9 relative), then the lower E2E; when no pair meets
 * them, the least largest ratio latency / SLO (then the least work, then the lower E2E), with
 * `feasible: false`. With no decode pass the decode placement takes no part: the answer is
 * `dp`'s, with both placements equal.
 *
 * Method: a forward DP over stages whose cells are the stage's pair of sides (4) and what the
 * path so far has done: KV moved up, KV moved down, every decode side so far the server (whether the
 * server's own loop may decode), every side of both phases so far the server (the streamed
 * all-server plan). A cell holds the Pareto front of
 * labels (TTFT so far, G so far, server work so far, a moved stage's hand-over work included
 * at that stage in both G and work: it is the stage's alone), where G = m · decode pass + hand-over
 * is the one figure through which TPOT (G / m) and E2E (TTFT + G) see the decode and the
 * hand-over. The rest of the chain's costs depend only on the cell and every final figure
 * (the ratio and the work with the hand-over's entries included) is monotone in the label's,
 * so a dominated label never leads to a better answer. A label is dropped when a figure plus
 * the least the rest of its pass can add passes its bound (prefill and decode sides are
 * independent, so their rests add). The all-server decode prefix is kept out of its labels
 * (every label of those cells shares it) and added when the path leaves it or at the end, as
 * the server's loop or stepped. The plan that is all-server in both phases is the
 * generation's streamed plan, compared apart ({@link betterGeneration}).
 * `dp`'s answer (equal phases) is a candidate and bounds the search: a first pass prunes
 * against the SLOs and against `dp`'s work when that answer is feasible; when it is not, a
 * second pass minimises the ratio, pruning against the best ratio of `dp`'s answer and the
 * two pairs that change every side.
 *
 * Invariants: the result equals a brute force over all 4^S pairs (tested); reported figures
 * are exactly evaluatePhased's.
 * Complexity: O(S · C · F²) time, C ≤ 64 cells, F the largest front: small in practice
 * because the figures grow together along a model, exponential only in adversarial cases.
 */
export function solvePhasedDp(instance: HandoverInstance): PhasedResult {
  return solvePhasedAndSingle(instance).phased;
}

/**
 * {@link solvePhasedDp}'s answer and, beside it, `dp`'s (the best single placement, which the
 * phased solve computes on the way), so a caller comparing the two solves once.
 * Complexity: that of {@link solvePhasedDp}.
 */
export function solvePhasedAndSingle(instance: HandoverInstance): { readonly phased: PhasedResult; readonly single: GenerationResult } {
  const S = instance.stages.length;
  if (instance.decodeSteps === 0) {
    const r = solveGenerationDp(instance);
    return { phased: phasedResultOf(instance, PHASED_ALGORITHM, r.placement, [...r.placement]), single: r };
  }
  const { slo } = instance;
  const all = (side: Location): Location[] => new Array<Location>(S).fill(side);
  const streamed =
    (instance.serverDecoding ?? true) && !instance.private ? phasedResultOf(instance, PHASED_ALGORITHM, all('server'), all('server')) : undefined;
  // dp's answer is a pair with equal phases: its work bounds the optimum's when it is feasible,
  // and its ratio bounds the least ratio when nothing is.
  const dp = solveGenerationDp(instance);
  const widen = (v: number | undefined): number => (v === undefined ? Infinity : v + PRUNE_SLACK * Math.abs(v));
  let pair = phasedPass(
    instance,
    { ttft: widen(slo.ttftMs), tpot: widen(slo.tpotMs), e2e: widen(slo.e2eMs), work: dp.feasible ? widen(dp.serverWork) : Infinity },
    true,
  );
  if (!pair && !dp.feasible) {
    const ends = [
      phasedResultOf(instance, PHASED_ALGORITHM, all('client'), serverWherever(instance)),
      phasedResultOf(instance, PHASED_ALGORITHM, serverWherever(instance), all('client')),
    ];
    const r = Math.min(sloRatio(slo, dp), ...ends.map((e) => sloRatio(slo, e)));
    const at = (v: number | undefined): number => (v === undefined ? Infinity : widen(r * v));
    pair = phasedPass(instance, { ttft: at(slo.ttftMs), tpot: at(slo.tpotMs), e2e: at(slo.e2eMs), work: Infinity }, false);
  }
  const fromDp = phasedResultOf(instance, PHASED_ALGORITHM, dp.placement, [...dp.placement]);
  let best = fromDp;
  if (pair) {
    const found = phasedResultOf(instance, PHASED_ALGORITHM, pair.prefill, pair.decode);
    if (betterGeneration(slo, found, best)) best = found;
  }
  if (streamed && betterGeneration(slo, streamed, best)) best = streamed;
  return { phased: best, single: dp };
}
