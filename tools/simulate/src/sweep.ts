import {
  generationFromShape,
  instanceFromShape,
  linkFromMbps,
  solveClientOnly,
  solveGenerationDp,
  solveGenerationServerOnly,
  solvePhasedDp,
  solveDp,
  solveDpGrid,
  solveGreedy,
  solveGreedyRatio,
  solvePrefix,
  solveServerOnly,
  type GenerationInstance,
  type RequestShape,
} from '@tandem/dp';
import { groupBy } from '@tandem/util';
import { SIMULATED_MODELS, type SimulatedModel } from './models';

/** A network profile: per-direction rate and one-way latency. */
export interface NetworkProfile {
  readonly name: string;
  readonly upMbps: number;
  readonly downMbps: number;
  readonly oneWayMs: number;
}

/** The swept ranges. Every combination is one configuration. */
export interface SweepRanges {
  /** SLA = factor × the all-server latency of the configuration (> 1, so all-server always meets it). */
  readonly slaFactors: readonly number[];
  /** Effective client compute, TFLOP/s (phone NPU … laptop GPU). */
  readonly clientTflops: readonly number[];
  /** Effective server compute, TFLOP/s (one GPU at realistic utilisation). */
  readonly serverTflops: readonly number[];
  readonly networks: readonly NetworkProfile[];
  /** Bytes per activation element crossing a boundary: 4 (float32), 2 (float16). */
  readonly activationBytes: readonly number[];
  /** Sequence lengths kept from each model's own list (all when undefined). */
  readonly seqLens?: readonly number[];
  /** dp-grid budgets: the resolution is SLA / steps. */
  readonly gridSteps: readonly number[];
  /** Fixed cost per stage and pass, ms (dispatch, kernel launches). */
  readonly clientOverheadMs: number;
  readonly serverOverheadMs: number;
}

/** The default sweep (6,840 configurations). */
export const DEFAULT_RANGES: SweepRanges = {
  slaFactors: [1.5, 2, 3, 5],
  clientTflops: [0.2, 0.5, 1, 2, 5],
  serverTflops: [25, 50, 100],
  networks: [
    { name: 'cellular', upMbps: 10, downMbps: 50, oneWayMs: 25 },
    { name: 'wifi', upMbps: 50, downMbps: 200, oneWayMs: 10 },
    { name: 'fast', upMbps: 100, downMbps: 500, oneWayMs: 5 },
  ],
  activationBytes: [4, 2],
  gridSteps: [100, 1000],
  clientOverheadMs: 0.1,
  serverOverheadMs: 0.02,
};

/** `--quick`: a corner of the default sweep (16 configurations per model, ViT 8). */
export const QUICK_RANGES: SweepRanges = {
  ...DEFAULT_RANGES,
  slaFactors: [1.5, 3],
  clientTflops: [0.5, 2],
  serverTflops: [50],
  activationBytes: [4],
  networks: [DEFAULT_RANGES.networks[0], DEFAULT_RANGES.networks[1]],
  seqLens: [128, 197, 512],
};

/** One solved configuration: server work of each algorithm (server-ms) and a few dp details. */
export interface ConfigResult {
  readonly model: string;
  readonly family: SimulatedModel['family'];
  readonly seqLen: number;
  readonly slaFactor: number;
  readonly clientTflops: number;
  readonly serverTflops: number;
  readonly network: string;
  readonly activationBytes: number;
  readonly slaMs: number;
  readonly work: {
    readonly serverOnly: number;
    readonly dp: number;
    readonly greedy: number;
    readonly greedyRatio: number;
    readonly prefix: number;
    readonly grid: readonly number[];
  };
  readonly dpSwitches: number;
  /** Whether running everything on the client meets the SLA (then the optimum does no server work). */
  readonly clientOnlyFeasible: boolean;
  /** Shape of the dp placement. */
  readonly dpShape: PlacementShape;
  /** Whether every algorithm's placement met the SLA (all-server always does here). */
  readonly allFeasible: boolean;
  /**
   * Generative models with `decodeSteps` > 0 only: the same configuration as a generation
   * priced per pass (docs/placement.md), the server decoding an all-server plan itself; server
   * work of that streamed all-server plan, of `dp` (both phases alike) and of `dp-phased`
   * (prefill and decode placed apart, each attention stage's KV cache handed over when it
   * changes side), under two SLO rules ({@link PhasedFigures}).
   */
  readonly phased?: PhasedFigures;
}

/** Server work of one generation under server-only (streamed), dp and dp-phased, and what dp-phased chose. */
export interface PhasedOutcome {
  readonly work: { readonly serverOnly: number; readonly dp: number; readonly dpPhased: number };
  /** Whether dp-phased's two placements differ. */
  readonly phasesDiffer: boolean;
  /** dp-phased's decode placement is all on the client (the server only prefills, or nothing). */
  readonly decodeOnClient: boolean;
  /** Bytes of KV cache dp-phased hands over between the phases. */
  readonly kvBytes: number;
}

/**
 * The phased comparison of one configuration under two SLO rules: `e2e`, the paper's (E2E ≤
 * the SLA factor × the streamed all-server E2E), and `serving`, as serving systems state
 * them (TTFT ≤ the SLA factor × the streamed all-server TTFT, TPOT ≤ `SERVING_TPOT_MS`).
 */
export interface PhasedFigures {
  readonly e2e: PhasedOutcome;
  readonly serving: PhasedOutcome;
}

/** The TPOT bound of the serving rule: 20 tokens a second, faster than people read. */
export const SERVING_TPOT_MS = 50;

/** Options of {@link runSweep}. */
export interface SweepOptions {
  readonly ranges: SweepRanges;
  /** Model names to run (all when undefined). */
  readonly models?: readonly string[];
  /** Decode steps priced after the prompt for generative models (0: one forward pass, as the paper). */
  readonly decodeSteps: number;
  readonly onProgress?: (done: number, total: number, what: string) => void;
}

/**
 * Shape of a placement: `all-client`, `all-server`, `client-then-server` (a client prefix, as
 * classic split inference), `server-then-client` (a server prefix, the result finished on the
 * client) or `multi-switch` (more than one boundary crossed besides the ends).
 */
export type PlacementShape = 'all-client' | 'all-server' | 'client-then-server' | 'server-then-client' | 'multi-switch';

/** Classifies a placement. O(S). */
export function placementShape(placement: readonly ('client' | 'server')[]): PlacementShape {
  let changes = 0;
  for (let i = 1; i < placement.length; i++) if (placement[i] !== placement[i - 1]) changes++;
  if (changes === 0) return placement[0] === 'client' ? 'all-client' : 'all-server';
  if (changes === 1) return placement[0] === 'client' ? 'client-then-server' : 'server-then-client';
  return 'multi-switch';
}

interface Config {
  readonly model: SimulatedModel;
  readonly seqLen: number;
  readonly slaFactor: number;
  readonly clientTflops: number;
  readonly serverTflops: number;
  readonly network: NetworkProfile;
  readonly activationBytes: number;
}

/** The configurations a sweep visits, in order. @throws RangeError on an unknown model name. */
export function sweepConfigs(options: Pick<SweepOptions, 'ranges' | 'models'>): Config[] {
  const { ranges } = options;
  let models = SIMULATED_MODELS;
  const wanted = options.models;
  if (wanted) {
    const known = new Set(SIMULATED_MODELS.map((m) => m.shape.name));
    const unknown = wanted.filter((m) => !known.has(m));
    if (unknown.length) throw new RangeError(`unknown model '${unknown[0]}': models are ${[...known].join(', ')}`);
    models = SIMULATED_MODELS.filter((m) => wanted.includes(m.shape.name));
  }
  const out: Config[] = [];
  for (const model of models) {
    const only = ranges.seqLens;
    const seqLens = only ? model.seqLens.filter((n) => only.includes(n)) : model.seqLens;
    for (const seqLen of seqLens.length ? seqLens : [model.seqLens[0]]) {
      for (const network of ranges.networks) {
        for (const clientTflops of ranges.clientTflops) {
          for (const serverTflops of ranges.serverTflops) {
            for (const activationBytes of ranges.activationBytes) {
              for (const slaFactor of ranges.slaFactors) out.push({ model, seqLen, slaFactor, clientTflops, serverTflops, network, activationBytes });
            }
          }
        }
      }
    }
  }
  return out;
}

function request(model: SimulatedModel, seqLen: number, decodeSteps: number): RequestShape {
  return model.generative && decodeSteps > 0 ? { kind: 'generation', promptTokens: seqLen, decodeSteps } : { kind: 'prefill', tokens: seqLen };
}

/**
 * Runs the sweep: for each configuration, builds the instance with the analytic cost model,
 * sets the SLA to `slaFactor` × the all-server latency, and solves it with server-only,
 * greedy, greedy-ratio, prefix, dp and dp-grid (each grid budget). Deterministic; CPU-bound.
 */
export function runSweep(options: SweepOptions): ConfigResult[] {
  const { ranges } = options;
  const configs = sweepConfigs(options);
  const results: ConfigResult[] = [];
  configs.forEach((c, k) => {
    const base = instanceFromShape({
      model: { ...c.model.shape, activationBytes: c.activationBytes },
      request: request(c.model, c.seqLen, options.decodeSteps),
      client: { flopsPerSecond: c.clientTflops * 1e12, overheadMsPerStage: ranges.clientOverheadMs },
      server: { flopsPerSecond: c.serverTflops * 1e12, overheadMsPerStage: ranges.serverOverheadMs },
      uplink: linkFromMbps(c.network.oneWayMs, c.network.upMbps),
      downlink: linkFromMbps(c.network.oneWayMs, c.network.downMbps),
      slaMs: 1,
    });
    const serverOnlyLatency = solveServerOnly(base).latencyMs;
    const instance = { ...base, slaMs: c.slaFactor * serverOnlyLatency };
    const so = solveServerOnly(instance);
    const dp = solveDp(instance);
    const greedy = solveGreedy(instance);
    const greedyRatio = solveGreedyRatio(instance);
    const prefix = solvePrefix(instance);
    const grids = ranges.gridSteps.map((steps) => solveDpGrid({ ...instance, resolutionMs: instance.slaMs / steps }));
    const phased = c.model.generative && options.decodeSteps > 0 ? phasedFigures(c, options.decodeSteps, ranges) : undefined;
    results.push({
      ...(phased ? { phased } : {}),
      model: c.model.shape.name,
      family: c.model.family,
      seqLen: c.seqLen,
      slaFactor: c.slaFactor,
      clientTflops: c.clientTflops,
      serverTflops: c.serverTflops,
      network: c.network.name,
      activationBytes: c.activationBytes,
      slaMs: instance.slaMs,
      work: {
        serverOnly: so.serverWork,
        dp: dp.serverWork,
        greedy: greedy.serverWork,
        greedyRatio: greedyRatio.serverWork,
        prefix: prefix.serverWork,
        grid: grids.map((g) => g.serverWork),
      },
      dpSwitches: dp.switches,
      clientOnlyFeasible: solveClientOnly(instance).feasible,
      dpShape: placementShape(dp.placement),
      allFeasible: [so, dp, greedy, greedyRatio, prefix, ...grids].every((r) => r.feasible),
    });
    options.onProgress?.(k + 1, configs.length, c.model.shape.name);
  });
  return results;
}

/** The phased comparison of one configuration ({@link ConfigResult.phased}). */
function phasedFigures(c: Config, decodeSteps: number, ranges: SweepRanges): PhasedFigures {
  const draft = generationFromShape({
    model: { ...c.model.shape, activationBytes: c.activationBytes },
    request: { kind: 'generation', promptTokens: c.seqLen, decodeSteps },
    client: { flopsPerSecond: c.clientTflops * 1e12, overheadMsPerStage: ranges.clientOverheadMs },
    server: { flopsPerSecond: c.serverTflops * 1e12, overheadMsPerStage: ranges.serverOverheadMs },
    uplink: linkFromMbps(c.network.oneWayMs, c.network.upMbps),
    downlink: linkFromMbps(c.network.oneWayMs, c.network.downMbps),
    slo: { e2eMs: 1 },
  });
  const streamed = solveGenerationServerOnly(draft);
  const outcome = (slo: GenerationInstance['slo']): PhasedOutcome => {
    const instance = { ...draft, slo };
    const dp = solveGenerationDp(instance);
    const phased = solvePhasedDp(instance);
    return {
      work: { serverOnly: streamed.serverWork, dp: dp.serverWork, dpPhased: phased.serverWork },
      phasesDiffer: phased.prefillPlacement.some((l, i) => l !== phased.decodePlacement[i]),
      decodeOnClient: phased.decodePlacement.every((l) => l === 'client'),
      kvBytes: phased.kvUpBytes + phased.kvDownBytes,
    };
  };
  return {
    e2e: outcome({ e2eMs: c.slaFactor * streamed.e2eMs }),
    serving: outcome({ ttftMs: c.slaFactor * streamed.ttftMs, tpotMs: Math.max(SERVING_TPOT_MS, streamed.tpotMs * c.slaFactor) }),
  };
}

/** Aggregate figures of a group of configurations' phased comparison; undefined when none has one. */
export interface PhasedSummary {
  readonly configs: number;
  /** Mean over configurations of 1 − W / W_server-only (streamed). */
  readonly reductionVsServerOnly: { readonly dp: number; readonly dpPhased: number };
  /** Mean over configurations of (W_dp − W_dp-phased) / W_dp (0 where dp does no server work). */
  readonly phasedOverDp: number;
  /** The same, pooled: 1 − ΣW_dp-phased / ΣW_dp. */
  readonly phasedOverDpPooled: number;
  /** Share of configurations where dp-phased's placements differ between the phases. */
  readonly phasesDifferShare: number;
  /** Share where dp-phased decodes on the client alone. */
  readonly decodeOnClientShare: number;
}

/** Summarises the phased comparison of `rows` (those that have one) under one SLO rule. O(rows). */
export function summarizePhased(rows: readonly ConfigResult[], rule: keyof PhasedFigures): PhasedSummary | undefined {
  const ph = rows.flatMap((r) => (r.phased ? [r.phased[rule]] : []));
  if (ph.length === 0) return undefined;
  const works = ph.map((p) => p.work);
  return {
    configs: ph.length,
    reductionVsServerOnly: { dp: meanGain(works, 'serverOnly', 'dp'), dpPhased: meanGain(works, 'serverOnly', 'dpPhased') },
    phasedOverDp: meanGain(works, 'dp', 'dpPhased'),
    phasedOverDpPooled: pooledGain(works, 'dp', 'dpPhased'),
    phasesDifferShare: share(ph, (p) => p.phasesDiffer),
    decodeOnClientShare: share(ph, (p) => p.decodeOnClient),
  };
}

/** Aggregate figures of a group of configurations; fractions in [0, 1] unless noted. */
export interface Summary {
  readonly configs: number;
  /** Mean over configurations of 1 − W_algo / W_server-only. */
  readonly reductionVsServerOnly: {
    readonly dp: number;
    readonly greedy: number;
    readonly greedyRatio: number;
    readonly prefix: number;
    readonly grid: readonly number[];
  };
  /** Mean over configurations of (W_greedy − W_dp) / W_greedy (0 where greedy already does no server work). */
  readonly dpOverGreedy: number;
  /** The same, pooled: 1 − ΣW_dp / ΣW_greedy. */
  readonly dpOverGreedyPooled: number;
  readonly dpOverPrefix: number;
  readonly dpOverPrefixPooled: number;
  /** Mean over configurations of (W_greedy-ratio − W_dp) / W_greedy-ratio: dp against the fairer greedy. */
  readonly dpOverGreedyRatio: number;
  readonly dpOverGreedyRatioPooled: number;
  /** What dp-grid's rounding costs, per grid budget: mean (W_grid − W_dp) / W_server-only. */
  readonly gridCost: readonly number[];
  /** Share of configurations where dp-grid does more work than dp, per grid budget. */
  readonly gridSuboptimalShare: readonly number[];
  /** Share of configurations whose dp placement crosses the network more than twice. */
  readonly dpMultiSwitchShare: number;
  /** Share of each dp placement shape. */
  readonly dpShapes: Readonly<Record<PlacementShape, number>>;
  /** Share where dp does strictly less work than greedy. */
  readonly dpBeatsGreedyShare: number;
  /** Configurations where some algorithm missed the SLA (expected 0: all-server meets it by construction). */
  readonly infeasible: number;
}

const mean = (xs: readonly number[]): number => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);
const sum = (xs: readonly number[]): number => xs.reduce((a, b) => a + b, 0);
const gain = (worse: number, better: number): number => (worse > 0 ? (worse - better) / worse : 0);
/** Mean over `works` of the gain of `better` over `worse`. */
const meanGain = <K extends string, W extends Record<K, number>>(works: readonly W[], worse: K, better: K): number =>
  mean(works.map((w) => gain(w[worse], w[better])));
/** The gain of `better` over `worse`, pooled over `works`: 1 − Σbetter / Σworse. */
const pooledGain = <K extends string, W extends Record<K, number>>(works: readonly W[], worse: K, better: K): number =>
  gain(sum(works.map((w) => w[worse])), sum(works.map((w) => w[better])));
/** Share of `xs` for which `test` holds. */
const share = <T>(xs: readonly T[], test: (x: T) => boolean): number => mean(xs.map((x) => (test(x) ? 1 : 0)));

/** Summarises a group of configuration results. O(rows). */
export function summarize(rows: readonly ConfigResult[]): Summary {
  const gridCount = rows.length ? rows[0].work.grid.length : 0;
  const grids = Array.from({ length: gridCount }, (_, g) => g);
  const works = rows.map((r) => r.work);
  const shapeShare = (shape: PlacementShape): number => share(rows, (r) => r.dpShape === shape);
  return {
    configs: rows.length,
    reductionVsServerOnly: {
      dp: meanGain(works, 'serverOnly', 'dp'),
      greedy: meanGain(works, 'serverOnly', 'greedy'),
      greedyRatio: meanGain(works, 'serverOnly', 'greedyRatio'),
      prefix: meanGain(works, 'serverOnly', 'prefix'),
      grid: grids.map((g) => mean(works.map((w) => gain(w.serverOnly, w.grid[g])))),
    },
    dpOverGreedy: meanGain(works, 'greedy', 'dp'),
    dpOverGreedyPooled: pooledGain(works, 'greedy', 'dp'),
    dpOverPrefix: meanGain(works, 'prefix', 'dp'),
    dpOverPrefixPooled: pooledGain(works, 'prefix', 'dp'),
    dpOverGreedyRatio: meanGain(works, 'greedyRatio', 'dp'),
    dpOverGreedyRatioPooled: pooledGain(works, 'greedyRatio', 'dp'),
    gridCost: grids.map((g) => mean(works.map((w) => (w.grid[g] - w.dp) / w.serverOnly))),
    gridSuboptimalShare: grids.map((g) => share(works, (w) => w.grid[g] > w.dp * (1 + 1e-9))),
    dpMultiSwitchShare: share(rows, (r) => r.dpSwitches > 2),
    dpShapes: {
      'all-client': shapeShare('all-client'),
      'client-then-server': shapeShare('client-then-server'),
      'server-then-client': shapeShare('server-then-client'),
      'multi-switch': shapeShare('multi-switch'),
      'all-server': shapeShare('all-server'),
    },
    dpBeatsGreedyShare: share(works, (w) => w.dp < w.greedy * (1 - 1e-9)),
    infeasible: rows.filter((r) => !r.allFeasible).length,
  };
}

/** Groups rows by `key` (in first-seen order) and summarises each group. */
export function summarizeBy<K extends string | number>(rows: readonly ConfigResult[], key: (r: ConfigResult) => K): { key: K; summary: Summary }[] {
  return [...groupBy(rows, key)].map(([k, g]) => ({ key: k, summary: summarize(g) }));
}
