import { transferMs } from './evaluate';
import { betterGeneration, pinnedToClient, queueWaits, serverWherever, sloRatio, type GenerationResult, type Slo } from './generation';
import { FinalPick, Staircase, solveGenerationDp } from './generation-dp';
import { grown } from './grown';
import {
  PHASED_ALGORITHM,
  evaluatePhased,
  handoverWork,
  phaseEntryWork,
  phasedResultOf,
  streamedDecode,
  type HandoverInstance,
  type PhasedResult,
} from './phased';
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

const CELLS = 64;

/**
 * Growable struct-of-arrays label store: (TTFT so far, decode-and-hand-over so far, work so
 * far, parent, cell). A stage's front of a cell is a run of consecutive labels, in (work,
 * TTFT, G) order.
 */
class Labels {
  t: Float64Array;
  g: Float64Array;
  w: Float64Array;
  parent: Int32Array;
  cell: Uint8Array;
  size = 0;
  constructor(capacity: number) {
    this.t = new Float64Array(capacity);
    this.g = new Float64Array(capacity);
    this.w = new Float64Array(capacity);
    this.parent = new Int32Array(capacity);
    this.cell = new Uint8Array(capacity);
  }
  /** Makes room for `more` labels past `size`. */
  reserve(more: number): void {
    if (this.size + more <= this.t.length) return;
    const cap = Math.max(2 * this.t.length, this.size + more);
    this.t = grown(this.t, cap);
    this.g = grown(this.g, cap);
    this.w = grown(this.w, cap);
    this.parent = grown(this.parent, cap);
    this.cell = grown(this.cell, cap);
  }
}

/**
 * One stage's candidates for one cell: (TTFT, G, work, parent) and, after {@link sortCandidates},
 * their order by (work, TTFT, G) in `ord`, ties kept in arrival order.
 */
class Candidates {
  t = new Float64Array(256);
  g = new Float64Array(256);
  w = new Float64Array(256);
  parent = new Int32Array(256);
  ord = new Int32Array(256);
  tmp = new Int32Array(256);
  /** Starts of the ascending runs the candidates arrived in (then their count at `runs[runCount]`). */
  runs = new Int32Array(257);
  runsTmp = new Int32Array(257);
  reserve(n: number): void {
    if (n <= this.t.length) return;
    const cap = Math.max(2 * this.t.length, n);
    this.t = grown(this.t, cap);
    this.g = grown(this.g, cap);
    this.w = grown(this.w, cap);
    this.parent = grown(this.parent, cap);
    this.ord = new Int32Array(cap);
    this.tmp = new Int32Array(cap);
    this.runs = new Int32Array(cap + 1);
    this.runsTmp = new Int32Array(cap + 1);
  }
}

/**
 * Everything a solve works in (its stage tables, its passes' labels and candidates), reused by
 * every solve as `dp` reuses its store: a solve runs to completion synchronously and reads
 * nothing of it after it returns; it only grows.
 */
class Workspace {
  labels = new Labels(4096);
  cand = new Candidates();
  // One stage's moves (source cell, pair of sides): destination, source, what they add, and
  // the next move into the same destination (-1: none).
  moveTo = new Int32Array(4 * CELLS);
  moveCell = new Int32Array(4 * CELLS);
  moveT = new Float64Array(4 * CELLS);
  moveG = new Float64Array(4 * CELLS);
  moveW = new Float64Array(4 * CELLS);
  moveNext = new Int32Array(4 * CELLS);
  /** Per destination cell, its first and last move (-1 between stages: none). */
  head = new Int32Array(CELLS).fill(-1);
  tail = new Int32Array(CELLS);
  dests = new Int32Array(CELLS);
  active = new Int32Array(CELLS);
  nextActive = new Int32Array(CELLS);
  from = new Int32Array(CELLS);
  to = new Int32Array(CELLS);
  nextFrom = new Int32Array(CELLS);
  nextTo = new Int32Array(CELLS);
  stair = new Staircase();
  // The per-stage tables of a solve ({@link Prepared}), S + 1 long at least.
  cP = new Float64Array(0);
  sP = new Float64Array(0);
  sPW = new Float64Array(0);
  cD = new Float64Array(0);
  sD = new Float64Array(0);
  sDW = new Float64Array(0);
  upP = new Float64Array(0);
  downP = new Float64Array(0);
  upD = new Float64Array(0);
  downD = new Float64Array(0);
  kv = new Float64Array(0);
  kvUpMs = new Float64Array(0);
  kvDownMs = new Float64Array(0);
  hwUp = new Float64Array(0);
  hwDown = new Float64Array(0);
  restPc = new Float64Array(0);
  restPs = new Float64Array(0);
  restDc = new Float64Array(0);
  restDs = new Float64Array(0);
  allD = new Float64Array(0);
  allDW = new Float64Array(0);
  openG = new Float64Array(0);
  openW = new Float64Array(0);
  reserveStages(length: number): void {
    if (this.cP.length >= length) return;
    const cap = Math.max(64, 2 * length);
    const table = (): Float64Array<ArrayBuffer> => new Float64Array(cap);
    this.cP = table();
    this.sP = table();
    this.sPW = table();
    this.cD = table();
    this.sD = table();
    this.sDW = table();
    this.upP = table();
    this.downP = table();
    this.upD = table();
    this.downD = table();
    this.kv = table();
    this.kvUpMs = table();
    this.kvDownMs = table();
    this.hwUp = table();
    this.hwDown = table();
    this.restPc = table();
    this.restPs = table();
    this.restDc = table();
    this.restDs = table();
    this.allD = table();
    this.allDW = table();
    this.openG = table();
    this.openW = table();
  }
}
let workspace: Workspace | undefined;

/**
 * Orders candidates [0, n) by (work, TTFT, G), stably, into `c.ord`: the candidates arrive as
 * `runCount` ascending runs (each source's front shifted by constants stays in order), which
 * merge pairwise. Returns the array holding the order (`c.ord` or `c.tmp`).
 */
function sortCandidates(c: Candidates, n: number, runCount: number): Int32Array {
  let src = c.ord;
  let dst = c.tmp;
  for (let k = 0; k < n; k++) src[k] = k;
  let runs = c.runs;
  let next = c.runsTmp;
  runs[runCount] = n;
  const { t, g, w } = c;
  while (runCount > 1) {
    let out = 0;
    let r = 0;
    for (; r + 1 < runCount; r += 2) {
      let a = runs[r];
      const aEnd = runs[r + 1];
      let b = aEnd;
      const bEnd = runs[r + 2];
      let o = a;
      next[out++] = a;
      while (a < aEnd && b < bEnd) {
        const x = src[a];
        const y = src[b];
        // Take from the right run only when strictly before (stable).
        const wx = w[x];
        const wy = w[y];
        if (wy < wx || (wy === wx && (t[y] < t[x] || (t[y] === t[x] && g[y] < g[x])))) {
          dst[o++] = y;
          b++;
        } else {
          dst[o++] = x;
          a++;
        }
      }
      while (a < aEnd) dst[o++] = src[a++];
      while (b < bEnd) dst[o++] = src[b++];
    }
    if (r < runCount) {
      next[out++] = runs[r];
      for (let k = runs[r]; k < n; k++) dst[k] = src[k];
    }
    next[out] = n;
    runCount = out;
    const s = src;
    src = dst;
    dst = s;
    const q = runs;
    runs = next;
    next = q;
  }
  return src;
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
 * (into `lc`) or the server (into `ls`), stepped, i = 0..S.
 */
function restBounds(S: number, c: Float64Array, sv: Float64Array, up: Float64Array, down: Float64Array, fin: number, lc: Float64Array, ls: Float64Array): void {
  lc[S] = 0;
  ls[S] = fin;
  for (let i = S - 1; i >= 0; i--) {
    lc[i] = Math.min(c[i] + lc[i + 1], up[i] + sv[i] + ls[i + 1]);
    ls[i] = Math.min(down[i] + c[i] + lc[i + 1], sv[i] + ls[i + 1]);
  }
}

/**
 * What both passes of a solve read, taken from the instance once: per-stage figures in
 * arrays (a stage object's fields cost a lookup each, and the inner loops would repeat them),
 * the rests' bounds and the all-server decode prefix. The arrays are the workspace's, valid
 * until the next solve, and may be longer than S + 1.
 */
interface Prepared {
  readonly S: number;
  readonly n: number;
  readonly m: number;
  /** The server work of one entry in the prefill pass and in a decode pass ({@link phaseEntryWork}). */
  readonly entryP: number;
  readonly entryD: number;
  readonly serverDecoding: boolean;
  readonly finalDown: number;
  /** Only E2E stated (see {@link phasedPass}). */
  readonly e2eOnly: boolean;
  readonly pinned: readonly boolean[];
  /** Per stage: its compute and server work per pass of each phase. */
  readonly cP: Float64Array;
  readonly sP: Float64Array;
  readonly sPW: Float64Array;
  readonly cD: Float64Array;
  readonly sD: Float64Array;
  readonly sDW: Float64Array;
  /** Per stage: crossing into it (n tokens in the prefill, 1 in a decode pass), queue included on the way up. */
  readonly upP: Float64Array;
  readonly downP: Float64Array;
  readonly upD: Float64Array;
  readonly downD: Float64Array;
  /** Per stage: its KV cache's bytes (0: nothing to hand over), its transfer up or down, the server's hand-over work up or down. */
  readonly kv: Float64Array;
  readonly kvUpMs: Float64Array;
  readonly kvDownMs: Float64Array;
  readonly hwUp: Float64Array;
  readonly hwDown: Float64Array;
  /** Least rest of the prefill pass and of a decode pass from stage i on, after the client or the server. */
  readonly restPc: Float64Array;
  readonly restPs: Float64Array;
  readonly restDc: Float64Array;
  readonly restDs: Float64Array;
  /** Decode time and work (m passes) of the all-server decode prefix before stage i. */
  readonly allD: Float64Array;
  readonly allDW: Float64Array;
  /** The least a D_ALL label after stage i-1 still adds to G and to work ({@link phasedPass}). */
  readonly openG: Float64Array;
  readonly openW: Float64Array;
  /** The server's own decode loop (one pass). */
  readonly loop: { readonly ms: number; readonly work: number };
  readonly upLatency: number;
  readonly downLatency: number;
  /** The last token's upload that starts the server's loop after a phased prefill (its serialization; the latency is upLatency). */
  readonly tokenUpMs: number;
}

function preparePhased(inst: HandoverInstance): Prepared {
  const { stages, uplink, downlink, slo } = inst;
  const S = stages.length;
  const n = inst.promptTokens;
  const m = inst.decodeSteps;
  const queue = queueWaits(inst);
  const { prefill: entryP, decode: entryD } = phaseEntryWork(inst);
  const serverDecoding = inst.serverDecoding ?? true;
  const finalDown = transferMs(downlink, inst.outBytesPerPass);
  const tables = workspace ?? (workspace = new Workspace());
  tables.reserveStages(S + 1);
  const { cP, sP, sPW, cD, sD, sDW, upP, downP, upD, downD, kv, kvUpMs, kvDownMs, hwUp, hwDown } = tables;
  const { restPc, restPs, restDc, restDs, allD, allDW, openG, openW } = tables;
  for (let i = 0; i < S; i++) {
    const s = stages[i];
    cP[i] = s.clientPrefillMs;
    sP[i] = s.serverPrefillMs;
    sPW[i] = s.serverPrefillWork ?? s.serverPrefillMs;
    cD[i] = s.clientDecodeMs;
    sD[i] = s.serverDecodeMs;
    sDW[i] = s.serverDecodeWork ?? s.serverDecodeMs;
    upP[i] = transferMs(uplink, n * s.inBytesPerToken) + queue.prefill;
    downP[i] = transferMs(downlink, n * s.inBytesPerToken);
    upD[i] = transferMs(uplink, s.inBytesPerToken) + queue.decode;
    downD[i] = transferMs(downlink, s.inBytesPerToken);
    const perToken = s.kvBytesPerToken ?? 0;
    kv[i] = perToken * n;
    kvUpMs[i] = kv[i] / uplink.bytesPerMs;
    kvDownMs[i] = kv[i] / downlink.bytesPerMs;
    hwUp[i] = handoverWork(inst.kvHandover, perToken, n, true);
    hwDown[i] = handoverWork(inst.kvHandover, perToken, n, false);
  }
  restBounds(S, cP, sP, upP, downP, finalDown, restPc, restPs);
  restBounds(S, cD, sD, upD, downD, finalDown, restDc, restDs);
  allD[0] = 0;
  allDW[0] = 0;
  for (let i = 0; i < S; i++) {
    allD[i + 1] = allD[i] + (i === 0 ? upD[0] : 0) + sD[i];
    allDW[i + 1] = allDW[i] + m * (sDW[i] + (i === 0 ? entryD : 0));
  }
  const loop = streamedDecode(inst);
  // A D_ALL label's decode is still open: it leaves the all-server decode at a later stage j
  // (paying the prefix before j, which only grows, and at least the stepped rest from the
  // server: allD[j] + restDs[j] never falls as j grows) or keeps it to the end (the server's
  // loop, or stepped).
  openG[0] = 0;
  openW[0] = 0;
  for (let j = 1; j <= S; j++) {
    openG[j] = Math.min(m * (allD[j] + restDs[j]), serverDecoding ? m * loop.ms : Infinity);
    openW[j] = Math.min(allDW[j], serverDecoding ? m * loop.work : Infinity);
  }
  return {
    S,
    n,
    m,
    entryP,
    entryD,
    serverDecoding,
    finalDown,
    e2eOnly: slo.ttftMs === undefined && slo.tpotMs === undefined,
    pinned: pinnedToClient(inst),
    cP,
    sP,
    sPW,
    cD,
    sD,
    sDW,
    upP,
    downP,
    upD,
    downD,
    kv,
    kvUpMs,
    kvDownMs,
    hwUp,
    hwDown,
    restPc,
    restPs,
    restDc,
    restDs,
    allD,
    allDW,
    openG,
    openW,
    loop,
    // A hand-over waits, once per direction, behind the server's work as a decode entry does (evaluatePhased).
    upLatency: uplink.latencyMs + queue.decode,
    downLatency: downlink.latencyMs + queue.decode,
    tokenUpMs: S > 0 ? stages[0].inBytesPerToken / uplink.bytesPerMs : 0,
  };
}

/**
 * The exact phased optimum by a forward label DP (see {@link solvePhasedDp}); undefined when
 * no label survives `lim`. `feasibleOnly` picks as the feasible rule does, otherwise by the
 * least SLO ratio.
 */
function phasedPass(p: Prepared, slo: Slo, lim: Limits, feasibleOnly: boolean): { prefill: Location[]; decode: Location[] } | undefined {
  const { S, m, entryP, entryD, serverDecoding, finalDown, e2eOnly, pinned, loop } = p;
  const { cP, sP, sPW, cD, sD, sDW, upP, downP, upD, downD, kv, kvUpMs, kvDownMs, hwUp, hwDown } = p;
  const { restPc, restPs, restDc, restDs, allD, allDW, openG, openW, upLatency, downLatency } = p;
  // With only E2E stated, TTFT and G matter only as their sum: labels then keep TTFT at 0 and
  // carry the sum in G, which makes fronts two-dimensional (the sum, work), each a staircase
  // whose G falls as work grows.
  const tpotLim = lim.tpot * m;
  const ws = workspace ?? (workspace = new Workspace());
  const { labels, cand, moveTo, moveCell, moveT, moveG, moveW, moveNext, head, tail, dests, stair } = ws;
  labels.t[0] = 0;
  labels.g[0] = 0;
  labels.w[0] = 0;
  labels.parent[0] = -1;
  labels.cell[0] = P_ALL | D_ALL;
  labels.size = 1;
  // The previous stage's cells holding labels, ascending (`active[0, activeCount)`), cell c's
  // front the labels [from[c], to[c]).
  let { active, from, to, nextActive, nextFrom, nextTo } = ws;
  active[0] = P_ALL | D_ALL;
  let activeCount = 1;
  from[P_ALL | D_ALL] = 0;
  to[P_ALL | D_ALL] = 1;
  // The first label of the previous stage's fronts.
  let stageFirst = 0;
  for (let i = 0; i < S; i++) {
    const moved = kv[i] > 0;
    // A stage pinned to the client has no server side in either phase.
    const sideCount = pinned[i] ? 1 : 2;
    // The stage's moves (source cell, pair of sides), each listed under its destination cell
    // in the order made: source cells ascending, then prefill side, then decode side.
    let moves = 0;
    let destCount = 0;
    for (let a = 0; a < activeCount; a++) {
      const cell = active[a];
      const pPrevServer = (cell & P_SERVER) !== 0;
      const dPrevServer = (cell & D_SERVER) !== 0;
      for (let pk = 0; pk < sideCount; pk++) {
        const psServer = pk === 1;
        for (let dk = 0; dk < sideCount; dk++) {
          const dsServer = dk === 1;
          let addT = 0;
          let addW = 0;
          if (psServer) {
            addT += (!pPrevServer ? upP[i] : 0) + sP[i];
            addW += sPW[i] + (!pPrevServer ? entryP : 0);
          } else addT += (pPrevServer ? downP[i] : 0) + cP[i];
          const dAll = (cell & D_ALL) !== 0 && dsServer;
          let pass = 0;
          if (!dAll) {
            if (cell & D_ALL) {
              pass += allD[i];
              addW += allDW[i];
            }
            if (dsServer) {
              pass += (!dPrevServer ? upD[i] : 0) + sD[i];
              addW += m * (sDW[i] + (!dPrevServer ? entryD : 0));
            } else pass += (dPrevServer ? downD[i] : 0) + cD[i];
          }
          let addG = m * pass;
          let flags = cell & (KV_UP | KV_DOWN);
          if (moved && psServer !== dsServer) {
            // The server's hand-over work is also time of the hand-over (evaluatePhased).
            const hw = psServer ? hwDown[i] : hwUp[i];
            addW += hw;
            addG += hw;
            if (!psServer) {
              addG += kvUpMs[i];
              flags |= KV_UP;
            } else {
              addG += kvDownMs[i];
              flags |= KV_DOWN;
            }
          }
          if (e2eOnly) {
            addG += addT;
            addT = 0;
          }
          const dest =
            (psServer ? P_SERVER : 0) | (dsServer ? D_SERVER : 0) | flags | ((cell & P_ALL) !== 0 && psServer && dAll ? P_ALL : 0) | (dAll ? D_ALL : 0);
          moveTo[moves] = dest;
          moveCell[moves] = cell;
          moveT[moves] = addT;
          moveG[moves] = addG;
          moveW[moves] = addW;
          moveNext[moves] = -1;
          if (head[dest] < 0) {
            head[dest] = moves;
            dests[destCount++] = dest;
          } else moveNext[tail[dest]] = moves;
          tail[dest] = moves;
          moves++;
        }
      }
    }
    // Destinations ascending (a handful), so the next stage's cells are.
    for (let a = 1; a < destCount; a++) {
      const d = dests[a];
      let b = a - 1;
      for (; b >= 0 && dests[b] > d; b--) dests[b + 1] = dests[b];
      dests[b + 1] = d;
    }
    // A destination's sources are distinct cells (a cell's moves differ in their sides), so
    // it gets at most the previous stage's labels as candidates.
    cand.reserve(labels.size - stageFirst);
    stageFirst = labels.size;
    let nextCount = 0;
    for (let di = 0; di < destCount; di++) {
      const dest = dests[di];
      const firstMove = head[dest];
      head[dest] = -1;
      // A label at stage i in `dest` must still be able to meet the limits: each figure plus
      // the least the rest of its pass can add (prefill and decode sides are independent, so
      // their rests add). (With only E2E stated, `t` is 0 and `g` holds TTFT so far too: the
      // E2E bound still holds.)
      const restP = dest & P_SERVER ? restPs[i + 1] : restPc[i + 1];
      const lat = (dest & KV_UP ? upLatency : 0) + (dest & KV_DOWN ? downLatency : 0);
      const restG = dest & D_ALL ? openG[i + 1] : m * (dest & D_SERVER ? restDs[i + 1] : restDc[i + 1]);
      const workLim = dest & D_ALL ? lim.work - openW[i + 1] : lim.work;
      const ct = cand.t;
      const cg = cand.g;
      const cw = cand.w;
      const cp = cand.parent;
      const runs = cand.runs;
      const lt = labels.t;
      const lg = labels.g;
      const lw = labels.w;
      let count = 0;
      let runCount = 0;
      for (let mv = firstMove; mv >= 0; mv = moveNext[mv]) {
        const addT = moveT[mv];
        const addG = moveG[mv];
        const addW = moveW[mv];
        const k1 = to[moveCell[mv]];
        for (let k = from[moveCell[mv]]; k < k1; k++) {
          const w = lw[k] + addW;
          // A front is in work order, and so is its shift: past the work bound, all are.
          if (w > workLim) break;
          const t = lt[k] + addT;
          if (t + restP > lim.ttft) continue;
          const g = lg[k] + addG;
          const G = g + lat + restG;
          if (G > tpotLim || t + restP + G > lim.e2e) continue;
          // A new ascending run starts where this candidate sorts before the previous one.
          if (count === 0) runs[runCount++] = 0;
          else {
            const pw = cw[count - 1];
            if (w < pw || (w === pw && (t < ct[count - 1] || (t === ct[count - 1] && g < cg[count - 1])))) runs[runCount++] = count;
          }
          ct[count] = t;
          cg[count] = g;
          cw[count] = w;
          cp[count] = k;
          count++;
        }
      }
      if (count === 0) continue;
      const ord = runCount > 1 ? sortCandidates(cand, count, runCount) : undefined;
      // The cell's front: its candidates in (work, TTFT, G) order, kept unless an earlier kept
      // one (no more work) has TTFT and G no larger, which the staircase answers (with only
      // E2E stated, TTFT is 0: kept when G is below every earlier kept one's).
      labels.reserve(count);
      const first = labels.size;
      let size = first;
      const st = labels.t;
      const sg = labels.g;
      const sw = labels.w;
      const sp = labels.parent;
      const sc = labels.cell;
      if (e2eOnly) {
        let least = Infinity;
        for (let k = 0; k < count; k++) {
          const c = ord ? ord[k] : k;
          const g = cg[c];
          if (!(g < least)) continue;
          least = g;
          st[size] = ct[c];
          sg[size] = g;
          sw[size] = cw[c];
          sp[size] = cp[c];
          sc[size] = dest;
          size++;
        }
      } else {
        stair.size = 0;
        for (let k = 0; k < count; k++) {
          const c = ord ? ord[k] : k;
          if (!stair.offer(ct[c], cg[c])) continue;
          st[size] = ct[c];
          sg[size] = cg[c];
          sw[size] = cw[c];
          sp[size] = cp[c];
          sc[size] = dest;
          size++;
        }
      }
      labels.size = size;
      nextFrom[dest] = first;
      nextTo[dest] = size;
      nextActive[nextCount++] = dest;
    }
    let swap = active;
    active = nextActive;
    nextActive = swap;
    swap = from;
    from = nextFrom;
    nextFrom = swap;
    swap = to;
    to = nextTo;
    nextTo = swap;
    activeCount = nextCount;
  }
  const pick = new FinalPick(slo, feasibleOnly);
  const { t: lt, g: lg, w: lw } = labels;
  for (let a = 0; a < activeCount; a++) {
    const cell = active[a];
    // Both phases all-server with server-side decoding is the streamed plan, priced apart.
    if (serverDecoding && cell & P_ALL && cell & D_ALL) continue;
    const pEndsServer = (cell & P_SERVER) !== 0;
    const streamed = serverDecoding && (cell & D_ALL) !== 0;
    // The server's loop starts from the client's last token (behind any cache going up) and
    // sends its first token down (evaluatePhased).
    const up = (cell & KV_UP) !== 0 || streamed;
    const down = (cell & KV_DOWN) !== 0;
    // The decode passes and the hand-over, in the label's terms: m · pass + hand-over.
    let rest = (up ? upLatency : 0) + (streamed ? p.tokenUpMs + finalDown : 0) + (down ? downLatency : 0);
    let restW = entryD * ((up ? 1 : 0) + (down ? 1 : 0));
    if (streamed) {
      rest += m * loop.ms;
      restW += m * loop.work;
    } else if (cell & D_ALL) {
      rest += m * (allD[S] + finalDown);
      restW += allDW[S];
    } else if (cell & D_SERVER) rest += m * finalDown;
    for (let k = from[cell]; k < to[cell]; k++) {
      // With only E2E stated, G holds TTFT so far too (t is 0); only the sum is used then.
      const ttft = lt[k] + (pEndsServer ? finalDown : 0);
      const G = lg[k] + rest;
      const w = lw[k] + restW;
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
 * the server's loop or stepped; until then the bounds count the least it can still add
 * (leaving later, whose prefix only grows, or the loop or the stepped decode to the end),
 * in time and in work. The plan that is all-server in both phases is the
 * generation's streamed plan, compared apart ({@link betterGeneration}).
 * `dp`'s answer (equal phases) is a candidate and bounds the search: a first pass prunes
 * against the SLOs and against `dp`'s work when that answer is feasible; when it is not, a
 * second pass minimises the ratio, pruning against the best ratio of `dp`'s answer and the
 * two pairs that change every side.
 *
 * Invariants: the result equals a brute force over all 4^S pairs (tested); reported figures
 * are exactly evaluatePhased's.
 * Each stage's front of a cell is built from its sources (a previous front shifted by one
 * move's costs, still in (work, TTFT, G) order) by merging them and one staircase sweep.
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
  // dp's answer is a pair with equal phases: its work bounds the optimum's when it is feasible,
  // and its ratio bounds the least ratio when nothing is.
  const dp = solveGenerationDp(instance);
  const widen = (v: number | undefined): number => (v === undefined ? Infinity : v + PRUNE_SLACK * Math.abs(v));
  const prepared = preparePhased(instance);
  let pair = phasedPass(
    prepared,
    slo,
    { ttft: widen(slo.ttftMs), tpot: widen(slo.tpotMs), e2e: widen(slo.e2eMs), work: dp.feasible ? widen(dp.serverWork) : Infinity },
    true,
  );
  if (!pair && !dp.feasible) {
    const ends = [evaluatePhased(instance, all('client'), serverWherever(instance)), evaluatePhased(instance, serverWherever(instance), all('client'))];
    const r = Math.min(sloRatio(slo, dp), ...ends.map((e) => sloRatio(slo, e)));
    const at = (v: number | undefined): number => (v === undefined ? Infinity : widen(r * v));
    pair = phasedPass(prepared, slo, { ttft: at(slo.ttftMs), tpot: at(slo.tpotMs), e2e: at(slo.e2eMs), work: Infinity }, false);
  }
  // Equal phases are priced as the generation (evaluatePhased), so dp's pair has dp's figures:
  // compare with those and price the pair only when it is the answer (undefined: dp's pair).
  let best: PhasedResult | undefined;
  const sameAsDp = (placement: readonly Location[]): boolean => placement.every((l, i) => l === dp.placement[i]);
  if (pair && !(sameAsDp(pair.prefill) && sameAsDp(pair.decode))) {
    const found = phasedResultOf(instance, PHASED_ALGORITHM, pair.prefill, pair.decode);
    if (betterGeneration(slo, found, dp)) best = found;
  }
  // The streamed all-server plan, unless it is dp's answer (then it is that pair, not better
  // than the best so far).
  if ((instance.serverDecoding ?? true) && !instance.private && !dp.serverDecoding) {
    const streamed = phasedResultOf(instance, PHASED_ALGORITHM, all('server'), all('server'));
    if (betterGeneration(slo, streamed, best ?? dp)) best = streamed;
  }
  return { phased: best ?? phasedResultOf(instance, PHASED_ALGORITHM, dp.placement, [...dp.placement]), single: dp };
}
