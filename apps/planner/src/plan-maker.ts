import {
  ALGORITHMS,
  fastestGenerationPlacement,
  generationResultOf,
  isPlacementLetters,
  PHASED_ALGORITHM,
  phasedResultOf,
  placementFromLetters as fromLetters,
  placementToLetters as toLetters,
  placementKind,
  planKey,
  solveGeneration,
  solveGenerationDpBelow,
  solvePhasedAndSingle,
  sloRatio,
  type Algorithm,
  type GenerationResult,
  type GenerationStage,
  type HandoverInstance,
  type KvHandoverCost,
  type Location,
  type PlacementKind,
  type Slo,
} from '@tandem/dp';
import type { ClassPlacement, ClientProfile, ServerLoad, StageTiming } from '@tandem/protocol';
import type { RequestClass, SlaOverrides, SloOverride } from './config';
import { UNMEASURED_LINK_BYTES_PER_MS } from './telemetry';

/**
 * What the planner optimises. `work`: the least server work that meets every SLO (the
 * throughput objective, used when the server is busy). `latency`: the fastest placement in
 * the SLOs' own terms, the least largest ratio latency / SLO (used while the server is idle:
 * its capacity is free, so requests get the best latency).
 */
export type Objective = 'work' | 'latency';

/**
 * The algorithms the objective applies to: the planner's own solvers. The baselines
 * (`server-only`, `client-only`, `greedy`, `prefix`) always place as their rule says, so that a
 * comparison against them is against what a user of that rule would run (`server-only` keeps
 * every stage on the server at every load).
 */
const OBJECTIVE_ALGORITHMS: ReadonlySet<PlannerAlgorithm> = new Set<PlannerAlgorithm>(['dp', 'dp-grid', PHASED_ALGORITHM]);

/**
 * The planner's algorithms: the contract's, and `dp-phased` (libs/dp's exact solver of the
 * phased problem: prefill and decode placed apart, the KV caches of the stages that change
 * side handed over once between the phases).
 */
export type PlannerAlgorithm = Algorithm | typeof PHASED_ALGORITHM;
export const PLANNER_ALGORITHMS: readonly PlannerAlgorithm[] = [...ALGORITHMS, PHASED_ALGORITHM];

/**
 * A plan priced on an instance: the generation figures (libs/dp) with `placement` the
 * prefill's placement, `decodePlacement` the decode's (the same unless the plan is phased)
 * and the hand-over between them.
 */
export interface PricedPlan extends Omit<GenerationResult, 'algorithm'> {
  readonly decodePlacement: Location[];
  readonly handoverMs: number;
}

/**
 * Prefill compute of a prompt of `tokens` tokens by one stage's published figures, ms: the line
 * its publisher fitted over prompt lengths (StageTiming.prefill_fixed_ms +
 * tokens · prefill_ms_per_token_fitted) when there is one, else the mean per token × tokens
 * (a publisher that fits none, or has seen too few prompts of different lengths). The mean per
 * token holds each prefill's fixed part (weights read once per call, the head's one row)
 * spread over its own length, so it prices a long prompt too high and a short one too low:
 * on the mobile load test, all-server TTFT measured 1.10 × its prediction for 16-token chat
 * prompts and 0.81 × for 234-token documents.
 */
export function prefillMsOf(t: Pick<StageTiming, 'prefillMsPerToken' | 'prefillFixedMs' | 'prefillMsPerTokenFitted'>, tokens: number): number {
  const slope = t.prefillMsPerTokenFitted ?? 0;
  return slope > 0 ? (t.prefillFixedMs ?? 0) + tokens * slope : t.prefillMsPerToken * tokens;
}

/**
 * Decode compute of one step at a context of `context` positions (those held before it) by one
 * stage's published figures, ms: the line its publisher fitted over contexts
 * (StageTiming.decode_fixed_ms + context · decode_ms_per_context_token) when there is one, else
 * the mean step (decode_ms). An attention stage reads and extends its whole cache each step: on
 * the `small` preset the engine's own step grows about 1.5x from 16 to 512 positions
 * (tools/bench/context-bench.ts), and under load the edge load test's all-server TPOT was about
 * twice as long for prompts of 200 tokens and over as for those under 50.
 */
export function decodeMsOf(t: Pick<StageTiming, 'decodeMs' | 'decodeFixedMs' | 'decodeMsPerContextToken'>, context: number): number {
  const slope = t.decodeMsPerContextToken ?? 0;
  return slope > 0 ? (t.decodeFixedMs ?? 0) + context * slope : t.decodeMs;
}

/** Whether a priced plan places the two phases apart. */
function isPhased(p: Pick<PricedPlan, 'placement' | 'decodePlacement'>): boolean {
  return p.placement.some((l, i) => l !== p.decodePlacement[i]);
}

/**
 * `algorithm`'s answer for `inst` as a priced plan. A dp-phased pair whose phases differ is
 * taken only when it saves at least `phasedMinSaving` of the server work of dp's best single
 * placement (when that one meets the SLOs; libs/dp returns it beside the pair): an operator's
 * margin on top of the hand-over's priced work (PlanMakerOptions.phasedMinSaving).
 */
function solveWith(inst: HandoverInstance, algorithm: PlannerAlgorithm, phasedMinSaving = 0): PricedPlan {
  if (algorithm === PHASED_ALGORITHM) {
    const { phased: r, single } = solvePhasedAndSingle(inst);
    const pair: PricedPlan = { ...r, placement: r.prefillPlacement, decodePlacement: r.decodePlacement };
    if (phasedMinSaving > 0 && isPhased(pair)) {
      if (single.feasible && r.feasible && r.serverWork > (1 - phasedMinSaving) * single.serverWork) return singlePlan(single);
    }
    return pair;
  }
  return singlePlan(solveGeneration(inst, algorithm));
}

/**
 * One placement's generation answer as a priced plan: both phases placed alike, no hand-over.
 * (Field by field: a spread of the answer cost a fifth of a re-plan at 10,000 clients.)
 */
function singlePlan(r: GenerationResult): PricedPlan {
  return {
    feasible: r.feasible,
    placement: r.placement,
    decodePlacement: r.placement,
    handoverMs: 0,
    serverWork: r.serverWork,
    latencyMs: r.latencyMs,
    switches: r.switches,
    ttftMs: r.ttftMs,
    tpotMs: r.tpotMs,
    e2eMs: r.e2eMs,
    met: r.met,
    serverDecoding: r.serverDecoding,
  };
}

/** Whether a priced plan runs every stage of both phases on the device (nothing on the server, no crossing). */
function serverFree(p: Pick<PricedPlan, 'placement' | 'decodePlacement'>): boolean {
  return p.placement.every((l) => l === 'client') && p.decodePlacement.every((l) => l === 'client');
}

/** Whether two placements are the same stage by stage. */
function samePlacement(a: readonly Location[], b: readonly Location[]): boolean {
  if (a === b) return true;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return a.length === b.length;
}

/** A pair of placements priced exactly on `inst` (a generation's figures when they are equal). */
function priced(inst: HandoverInstance, prefill: Location[], decode: Location[] = prefill): PricedPlan {
  if (samePlacement(prefill, decode)) return singlePlan(generationResultOf(inst, 'dp', prefill));
  const r = phasedResultOf(inst, PHASED_ALGORITHM, prefill, decode);
  return { ...r, placement: r.prefillPlacement, decodePlacement: r.decodePlacement };
}

/**
 * What the planner learned from outcomes about one client's request class (calibration.ts):
 * how to plan it differently from what the model alone says.
 */
export interface ClassAdjustment {
  /** Multiplies the SLA the class is planned against: safety factor / correction factor (1 = as configured). */
  readonly slaScale: number;
  /** Places every stage on the server whatever the solver finds (the safety controller's floor). */
  readonly allServer: boolean;
  /**
   * Places the class on its least-server-work plan within `shedMaxSlowdown` × its SLOs (the
   * overload shedder, shedding.ts: the server cannot serve it in time, so it relieves the
   * server for the others, served late but within that bound). Wins over `allServer`.
   */
  readonly shed?: boolean;
  /**
   * Per kind of placement, factors on a plan's predicted TTFT and TPOT (each ≥ 1; a kind
   * absent is taken at 1): a plan of that kind must meet the class's (scaled) SLOs with its
   * predictions multiplied by them. What the outcomes of each kind said its predictions miss
   * by (calibration.ts, `kindFactors`). Applied by the planner's own solvers under the work
   * objective.
   */
  readonly kinds?: KindFactors;
}

/** Factors on predicted TTFT and TPOT per kind of placement (ClassAdjustment.kinds). */
export type KindFactors = Readonly<Partial<Record<PlacementKind, { readonly ttft: number; readonly tpot: number }>>>;

/** A stage as the manifest describes it. */
export interface ModelStage {
  readonly name: string;
  readonly inBytesPerToken: number;
  /** KV-cache bytes the stage keeps per token (attention stages; absent or 0 otherwise): what a phased plan hands over. */
  readonly kvBytesPerToken?: number;
}

export interface PlanMakerOptions {
  readonly stages: readonly ModelStage[];
  readonly classes: readonly RequestClass[];
  /** Per client class and request class: a number is an E2E `slaMs`; an object replaces the objectives it states. */
  readonly slaOverrides: SlaOverrides;
  readonly algorithm: PlannerAlgorithm;
  readonly hysteresis: number;
  /**
   * A plan not in force is taken only when it meets its SLOs with this fraction of them to
   * spare (else the best plan that does, else it as it is); the plan in force is kept while it
   * meets them at all (and the new optimum saves no more than `hysteresis`). A plan at the
   * bound flips in and out as the load's figures move by a few per cent, and it is the plan
   * the load's tail makes miss. A plan that places nothing on the server in either phase is
   * exempt: its figures are the device's alone, which the load does not move. Default 0
   * (PLANNER_ENTRY_MARGIN: 0.05).
   */
  readonly entryMargin?: number;
  /**
   * dp-phased only: the least fraction of server work a pair whose phases differ must save
   * against dp's best single placement to be chosen (default 0: any saving). The hand-over's
   * own server work is priced (the executor's fitted overhead per message and per KiB, see
   * {@link PlanMaker.kvHandover}); this is an operator's margin on top of it. (Before it was
   * priced, a device-prefill / server-decode pair priced at 10–15 % less work cost the server
   * 1.3× an all-server plan's CPU per request on the mobile load test.)
   */
  readonly phasedMinSaving?: number;
  readonly slaMargin: number;
  readonly resolutionMs: number;
  readonly maxUtilisation: number;
  /** Server work of one hand-over to the server (per step), ms: gRPC, protobuf, scheduling. */
  readonly serverEntryMs?: number;
  /**
   * Whether the executor decodes all-server generations itself and streams the tokens
   * (default true): the all-server plan is then priced with one upload of the prompt and no
   * per-token crossing. False prices it stepped, like any split.
   */
  readonly serverDecoding?: boolean;
  /**
   * How server latency under load is priced: `stretch` (default) by the executor's measured
   * slow-down when it reports one, `mm1` always by 1 / (1 − utilisation).
   */
  readonly serverLatency?: 'stretch' | 'mm1';
  /**
   * What a class gets when no plan meets its SLOs at the server's load (the server is
   * overloaded). `relieve` (default): the fastest placement at that load, or the best plan at
   * no load when that costs the server less, which sends every such class to its devices
   * while the server is stretched. `hold`: the best plan at no load whenever one exists (the
   * plan it will meet its SLOs with once the overload passes), relief being left to the
   * overload shedder (shedding.ts), which moves only as many classes as the server needs;
   * the fastest placement only for a class no plan serves in time even at no load.
   */
  readonly overload?: 'relieve' | 'hold';
  /**
   * A shed class (ClassAdjustment.shed) gets the least-work plan that answers within this many
   * times each of its SLOs as stated (priced at the current load); a class no plan serves
   * within that is not shed. Default {@link DEFAULT_SHED_MAX_SLOWDOWN}.
   */
  readonly shedMaxSlowdown?: number;
}

/** Default PlanMakerOptions.shedMaxSlowdown: a shed request may take up to twice its SLOs. */
export const DEFAULT_SHED_MAX_SLOWDOWN = 2;

/** Client time of a stage the client cannot run: large enough that no SLA admits it, finite for the solvers. */
export const UNRUNNABLE_MS = 1e12;
/** Busy telemetry intervals behind the executor's overhead fit before the planner prices with it. */
export const MIN_OVERHEAD_SAMPLES = 10;
/** Bytes of a sampled token id coming back from the head. */
const TOKEN_BYTES = 8;
/**
 * Keys plus values per hand-over message, bytes: the executor's kv_chunk size when a kv_take
 * names none (apps/server-executor DEFAULT_KV_CHUNK_BYTES), which the agent's kv_put chunks
 * follow too.
 */
export const KV_CHUNK_BYTES = 1 << 20;

/**
 * A client's measured stage times by stage index (undefined where it has no samples), for
 * `count` stages. The profile is read as given: the last entry of a stage wins, as a map would.
 */
function measuredStages(client: ClientProfile, count: number): (StageTiming | undefined)[] {
  const out = new Array<StageTiming | undefined>(count).fill(undefined);
  for (const s of client.stages) if (s.samples > 0 && s.stage >= 0 && s.stage < count) out[s.stage] = s;
  return out;
}

/** `inst` with every SLO it states multiplied by `factor`. */
function scaledSlos(inst: HandoverInstance, factor: number): HandoverInstance {
  if (factor === 1) return inst;
  const slo: { -readonly [K in keyof Slo]: Slo[K] } = {};
  for (const k of ['e2eMs', 'ttftMs', 'tpotMs'] as const) if (inst.slo[k] !== undefined) slo[k] = (inst.slo[k] as number) * factor;
  return { ...inst, slo };
}

/** The kind of a priced plan (all-server, split, all-device), as the calibrator tells outcomes apart. */
function kindOf(p: Pick<PricedPlan, 'placement' | 'decodePlacement'>): PlacementKind {
  return placementKind(toLetters(p.placement) + toLetters(p.decodePlacement));
}

/** Whether `p` meets `inst`'s SLOs with its predicted TTFT and TPOT multiplied by its kind's factors. */
function meetsKind(inst: HandoverInstance, p: PricedPlan, kinds: KindFactors): boolean {
  if (!p.feasible) return false;
  const f = kinds[kindOf(p)];
  if (!f) return true;
  const { ttftMs, tpotMs } = inst.slo;
  return (ttftMs === undefined || p.ttftMs * f.ttft <= ttftMs) && (tpotMs === undefined || p.tpotMs * f.tpot <= tpotMs);
}

/** `inst` with its TTFT and TPOT SLOs divided by `f`'s factors: plans priced against it as if their predictions were × `f`. */
function kindSlos(inst: HandoverInstance, f: { readonly ttft: number; readonly tpot: number }): HandoverInstance {
  const { ttftMs, tpotMs } = inst.slo;
  return {
    ...inst,
    slo: { ...inst.slo, ...(ttftMs !== undefined ? { ttftMs: ttftMs / f.ttft } : {}), ...(tpotMs !== undefined ? { tpotMs: tpotMs / f.tpot } : {}) },
  };
}

/** `inst` planned against every stated SLO scaled by the learned adjustment (calibration.ts). */
function adjusted(inst: HandoverInstance | undefined, adj: ClassAdjustment | undefined): HandoverInstance | undefined {
  return inst && adj ? scaledSlos(inst, adj.slaScale) : inst;
}

/**
 * The plan of least server work that answers within `slowdown` × each of the class's SLOs,
 * priced on `inst` (a shed class, ClassAdjustment.shed: served late, but not unboundedly);
 * undefined when no plan does.
 */
function leastWork(inst: HandoverInstance, algorithm: PlannerAlgorithm, slowdown: number, phasedMinSaving?: number): PricedPlan | undefined {
  const bounded = solveWith(scaledSlos(inst, slowdown), algorithm, phasedMinSaving);
  return bounded.feasible ? priced(inst, bounded.placement, bounded.decodePlacement) : undefined;
}

/** Every stage on the server in both phases, priced on `inst`: the safety controller's floor. */
function allServer(inst: HandoverInstance): PricedPlan {
  return priced(
    inst,
    inst.stages.map((): Location => 'server'),
  );
}

/**
 * The queue waits of an instance on `server` whose prompt is a long step there (`longPrompt`) or
 * not: with the executor's waits per kind of step (ServerLoad.queue_waits), a prompt's entries
 * wait its kind's (long prompt or prompt), a split decode pass's entries the split decode
 * steps', each token the server decodes itself the all-server decode steps'; from an executor
 * that reports only mean_queue_ms, every entry waits that (none when it is 0).
 */
function queueOf(server: ServerLoad, longPrompt: boolean): Pick<HandoverInstance, 'serverQueueMs' | 'serverDecodeQueueMs' | 'serverStreamedQueueMs'> {
  const w = server.queueWaits;
  if (!w) return server.meanQueueMs > 0 ? { serverQueueMs: server.meanQueueMs } : {};
  return {
    serverQueueMs: longPrompt ? w.longPromptMs : w.promptMs,
    serverDecodeQueueMs: w.splitDecodeMs,
    serverStreamedQueueMs: w.decodeMs,
  };
}

/**
 * Turns telemetry into placements: for each request class, a generation instance (libs/dp,
 * docs/placement.md) priced pass by pass (prefill of maxPromptTokens, expectedNewTokens − 1
 * decode passes) from the client's measured stage times and the server's, with the class's
 * TTFT / TPOT / E2E SLOs, solved with the configured algorithm. The all-server plan is priced
 * as the executor runs it (prompt up once, tokens streamed down, each step at the whole-model
 * cost the executor measures, ServerLoad.whole_model), so every split is compared against it;
 * a split's server range is priced by the per-stage figures, which are what stages cost run
 * one call each as that range runs. Under load the server's stage times (for latency, not for work) are stretched
 * by the slow-down the executor measures (its steps' service time over their compute, per
 * decode and prefill: batching and interleaving included), or, from an executor that does not
 * report it, by 1 / (1 − utilisation), the mean time in an M/M/1 queue: the busier the
 * server, the more the same SLOs push onto the client. Pure: same inputs, same plans.
 */
export class PlanMaker {
  /** The widest hidden state a stage takes, KiB per token (what a hand-over moves, entryWork). */
  private readonly hiddenKib: number;
  constructor(readonly opts: PlanMakerOptions) {
    this.hiddenKib = Math.max(...opts.stages.map((s) => s.inBytesPerToken)) / 1024;
  }

  /**
   * The SLOs of `cls` for a client class, before the margin: the class's objectives with
   * the override's replacing those it states (a number overrides `slaMs`). ms.
   */
  slosFor(clientClass: string, cls: RequestClass): { slaMs?: number; ttftMs?: number; tpotMs?: number } {
    const o = this.opts.slaOverrides[clientClass]?.[cls.name];
    const over: SloOverride = typeof o === 'number' ? { slaMs: o } : (o ?? {});
    const out: { slaMs?: number; ttftMs?: number; tpotMs?: number } = {};
    for (const k of ['slaMs', 'ttftMs', 'tpotMs'] as const) {
      const v = over[k] ?? cls[k];
      if (v !== undefined) out[k] = v;
    }
    return out;
  }

  /** The end-to-end SLO of `cls` for a client class, ms; 0 when none is stated. */
  slaFor(clientClass: string, cls: RequestClass): number {
    return this.slosFor(clientClass, cls).slaMs ?? 0;
  }

  /**
   * The generation instance for one client and class, or undefined when the server has not
   * reported yet. `utilisation` overrides the server's reported one (the load the latency is
   * priced at). Each stated SLO is scaled by `slaMargin`.
   */
  instance(client: ClientProfile, server: ServerLoad | undefined, cls: RequestClass, utilisation?: number): HandoverInstance | undefined {
    if (!server || server.stages.length !== this.opts.stages.length) return undefined;
    const clientStages = measuredStages(client, this.opts.stages.length);
    const n = cls.maxPromptTokens;
    const m = Math.max(0, cls.expectedNewTokens - 1);
    // Decode pass k (1..m) attends to the prompt and the k - 1 tokens before it: on average n + (m - 1) / 2 positions.
    const context = n + Math.max(0, m - 1) / 2;
    const u = Math.min(Math.max(utilisation ?? server.utilisation, 0), this.opts.maxUtilisation);
    const inflate = 1 / (1 - u);
    // The executor's measured slow-down of steps (ServerLoad.decode_stretch for all-server
    // decode steps, split_decode_stretch for a split's server range, which waits at each of its
    // stages (decode_stretch from executors that do not report it), prompt_stretch for prompts
    // of at most long_step_tokens positions, long_prompt_stretch for longer ones) when it
    // reports one, else the M/M/1 inflation; none at no load.
    const cap = 1 / (1 - this.opts.maxUtilisation);
    const useStretch = (this.opts.serverLatency ?? 'stretch') === 'stretch';
    const slowdown = (measured: number): number => (utilisation === 0 ? 1 : useStretch && measured >= 1 ? Math.min(measured, cap) : inflate);
    const decodeSlow = slowdown(server.decodeStretch);
    const splitDecodeSlow = slowdown(server.splitDecodeStretch || server.decodeStretch);
    // A prompt of more than long_step_tokens positions is a long step to the executor.
    const longPrompt = n > Math.max(1, server.longStepTokens);
    const prefillSlow = slowdown(longPrompt ? server.longPromptStretch : server.promptStretch);
    const last = this.opts.stages.length - 1;
    const stages: GenerationStage[] = this.opts.stages.map((st, i) => {
      const c = clientStages[i];
      const s = server.stages[i];
      // A generation samples: the head's prefill runs on the prompt's last position only, one
      // row like a decode step (executor and agent both cut the hidden state before the head).
      const oneRow = i === last;
      const serverPrefill = oneRow ? s.decodeMs : prefillMsOf(s, n);
      const stage: { -readonly [K in keyof GenerationStage]: GenerationStage[K] } = {
        name: st.name,
        inBytesPerToken: st.inBytesPerToken,
        clientPrefillMs: c ? (oneRow ? c.decodeMs : prefillMsOf(c, n)) : UNRUNNABLE_MS,
        clientDecodeMs: c ? decodeMsOf(c, context) : 0,
        // Latency from the loaded times, server work from the unloaded ones.
        serverPrefillMs: serverPrefill * prefillSlow,
        serverDecodeMs: decodeMsOf(s, context) * splitDecodeSlow,
        serverPrefillWork: serverPrefill,
        serverDecodeWork: decodeMsOf(s, context),
      };
      if (st.kvBytesPerToken) stage.kvBytesPerToken = st.kvBytesPerToken;
      return stage;
    });
    const slos = this.slosFor(client.clientClass, cls);
    const margin = this.opts.slaMargin;
    const slo: { -readonly [K in keyof Slo]: Slo[K] } = {};
    if (slos.slaMs !== undefined) slo.e2eMs = slos.slaMs * margin;
    if (slos.ttftMs !== undefined) slo.ttftMs = slos.ttftMs * margin;
    if (slos.tpotMs !== undefined) slo.tpotMs = slos.tpotMs * margin;
    const entry = this.entryWork(server, n, m);
    // A whole-model step (fused alone, batched otherwise) costs what the executor measured for
    // it, not the sum of its stages run one call each: the streamed all-server plan is priced
    // by it, the splits by the stages.
    const whole = server.wholeModel;
    const wholePrefill = whole && whole.prefillMsPerToken > 0 ? prefillMsOf(whole, n) : 0;
    const serverWholeModel =
      whole && whole.decodeMs > 0 && wholePrefill > 0
        ? {
            serverPrefillMs: wholePrefill * prefillSlow,
            serverDecodeMs: decodeMsOf(whole, context) * decodeSlow,
            serverPrefillWork: wholePrefill,
            serverDecodeWork: decodeMsOf(whole, context),
          }
        : undefined;
    return {
      stages,
      promptTokens: n,
      decodeSteps: m,
      outBytesPerPass: TOKEN_BYTES,
      // A link direction the profile leaves out is not measured: priced as a fast local link.
      // One it states is priced as stated (the planner refuses a throughput of 0, telemetry.ts).
      // Every entry to the server also pays the client's measured step overhead (message
      // handling on both hosts), as it pays the uplink's latency.
      uplink: {
        latencyMs: (client.uplink?.latencyMs ?? 0) + (client.stepOverheadMs ?? 0),
        bytesPerMs: client.uplink?.bytesPerMs ?? UNMEASURED_LINK_BYTES_PER_MS,
      },
      downlink: client.downlink ? { ...client.downlink } : { latencyMs: 0, bytesPerMs: UNMEASURED_LINK_BYTES_PER_MS },
      slo,
      serverDecoding: this.opts.serverDecoding ?? true,
      ...(serverWholeModel ? { serverWholeModel } : {}),
      // A private device (AGENT_PRIVATE) keeps its embedding and head: every solver honours it.
      ...(client.private ? { private: true } : {}),
      // Every entry to the server (and every server-decoded token) waits in its queue first.
      // (At no load, the `utilisation` 0 alternative, there is no queue.)
      ...(utilisation !== 0 ? queueOf(server, longPrompt) : {}),
      resolutionMs: this.opts.resolutionMs,
      ...(entry > 0 ? { serverEntryWork: entry } : {}),
      ...(this.opts.algorithm === PHASED_ALGORITHM ? { ...this.kvHandover(server), ...this.prefillEntry(server, n, entry) } : {}),
    };
  }

  /**
   * The server's work of a KV hand-over (dp-phased): the executor's fitted overhead
   * (ServerLoad.overhead, the smoothed fit priced everywhere else) per message and per KiB of
   * KV cache in and out (ms_per_kv_kib_in / _out; from an executor that does not report them,
   * its per-KiB figures for tensors), in chunks of {@link KV_CHUNK_BYTES}, once the fit rests
   * on at least {@link MIN_OVERHEAD_SAMPLES} busy intervals; nothing before (the hand-over's
   * entries are still priced by `serverEntryWork`).
   */
  kvHandover(server: ServerLoad): { kvHandover?: KvHandoverCost } {
    const o = server.overhead;
    if (!o || o.samples < MIN_OVERHEAD_SAMPLES) return {};
    return {
      kvHandover: {
        msPerMessageIn: o.msPerMessageIn,
        msPerMessageOut: o.msPerMessageOut,
        msPerKibIn: o.msPerKvKibIn ?? o.msPerKibIn,
        msPerKibOut: o.msPerKvKibOut ?? o.msPerKibOut,
        chunkBytes: KV_CHUNK_BYTES,
      },
    };
  }
  /**
   * Server work of one entry to the server in a phased plan's prefill pass, ms: the fitted
   * overhead per message each way and the prompt's n hidden states in and out (`entry`, the
   * mean over the passes, averages them with the decode passes' single tokens, which prices a
   * prefill that enters the server at every other stage as if each entry carried a few tokens).
   * Nothing before the fit rests on {@link MIN_OVERHEAD_SAMPLES} busy intervals: every entry is
   * then `serverEntryMs`.
   */
  prefillEntry(server: ServerLoad, n: number, entry: number): { serverPrefillEntryWork?: number } {
    const o = server.overhead;
    if (!o || o.samples < MIN_OVERHEAD_SAMPLES || entry <= 0) return {};
    return { serverPrefillEntryWork: o.msPerMessageIn + o.msPerMessageOut + n * this.hiddenKib * (o.msPerKibIn + o.msPerKibOut) };
  }

  /**
   * Server work of one hand-over to the server per pass, ms: the executor's fitted overhead
   * (ServerLoad.overhead: per message each way and per KiB each way) once it rests on at
   * least {@link MIN_OVERHEAD_SAMPLES} busy intervals, otherwise `serverEntryMs`. The bytes
   * are the hidden state crossing in and out, averaged over the generation's passes
   * ((n + m) tokens over m + 1 passes), so the generation's total is exact.
   */
  entryWork(server: ServerLoad, n: number, m: number): number {
    const o = server.overhead;
    if (!o || o.samples < MIN_OVERHEAD_SAMPLES) return this.opts.serverEntryMs ?? 0;
    const tokensPerPass = (n + m) / (m + 1);
    return o.msPerMessageIn + o.msPerMessageOut + tokensPerPass * this.hiddenKib * (o.msPerKibIn + o.msPerKibOut);
  }

  /**
   * The placements for one client. `previous` (the client's current plan) is kept per class
   * while it stays feasible and the new optimum saves no more than `hysteresis` of its work,
   * so plans do not flap on measurement noise. `objective` applies to the planner's own
   * solvers (dp, dp-grid); a baseline algorithm always places by its rule. A plan is feasible when it meets every SLO
   * the class states (scaled by `adjust`, the learned corrections per class; the reported
   * SLOs and predictions stay the model's). Returns undefined until the server has reported.
   * `allServerWork`, when given, receives each class's all-server server work per request (in
   * class order), priced on the instance already built: the most a latency plan can cost the
   * server, which the planner's choice of objective weighs. `shedSaving`, when given, receives
   * each class's server work per request that shedding it would save (in class order): the
   * plan's work minus its least-work plan's, for a plan that misses its SLOs; 0 for one that
   * meets them or is shed already (the overload shedder's candidates, shedding.ts).
   */
  plan(
    client: ClientProfile,
    server: ServerLoad | undefined,
    previous: readonly ClassPlacement[] | undefined,
    objective: Objective = 'work',
    adjust?: (requestClass: string) => ClassAdjustment | undefined,
    allServerWork?: number[],
    shedSaving?: number[],
  ): ClassPlacement[] | undefined {
    if (!OBJECTIVE_ALGORITHMS.has(this.opts.algorithm)) objective = 'work';
    const out: ClassPlacement[] = [];
    const S = this.opts.stages.length;
    let oneToken: HandoverInstance | undefined;
    for (const cls of this.opts.classes) {
      const adj = adjust?.(cls.name);
      const inst = adjusted(this.instance(client, server, cls), adj);
      if (!inst) return undefined;
      const prev = previous?.find((p) => p.name === cls.name);
      const inForce =
        prev && isPlacementLetters(prev.placement, S) && (!prev.decodePlacement || isPlacementLetters(prev.decodePlacement, S)) ? prev : undefined;
      // The plan in force, priced at this load.
      const kept = inForce && priced(inst, fromLetters(inForce.placement), inForce.decodePlacement ? fromLetters(inForce.decodePlacement) : undefined);
      // When it meets the SLOs it gives way only to a plan doing less work than it by more than
      // the hysteresis (below), so dp searches below that work alone, which answers the same and
      // prunes most of the search (solveGenerationDpBelow); when nothing is found it stays.
      const fast = kept?.feasible && objective === 'work' && this.opts.algorithm === 'dp' && !isPhased(kept) ? kept : undefined;
      const cheaper = fast && solveGenerationDpBelow(inst, (1 - this.opts.hysteresis) * fast.serverWork);
      const keep = fast !== undefined && !cheaper;
      const solved: { best: PricedPlan; idle?: HandoverInstance } = fast
        ? { best: cheaper ? singlePlan(cheaper) : fast }
        : this.solveUnderLoad(inst, client, server, cls, objective, adj);
      let { best } = solved;
      allServerWork?.push(allServer(inst).serverWork);
      // A plan is entered only with `entryMargin` of its SLOs to spare, and kept (below) while it
      // meets them at all (PlanMakerOptions.entryMargin).
      const margin = this.opts.entryMargin ?? 0;
      // A plan with no server stage in either phase is priced from the device alone: its figures
      // do not move with the server's load, so it enters without that margin.
      if (!keep && objective === 'work' && best.feasible && margin > 0 && !serverFree(best) && sloRatio(inst.slo, best) > 1 - margin) {
        const roomy = solveWith(scaledSlos(inst, 1 - margin), this.opts.algorithm, this.opts.phasedMinSaving);
        if (roomy.feasible) best = priced(inst, roomy.placement, roomy.decodePlacement);
      }
      if (
        !keep &&
        inForce &&
        kept &&
        planKey(inForce) !== planKey({ placement: toLetters(best.placement), decodePlacement: toLetters(best.decodePlacement) })
      ) {
        const saves =
          objective === 'work'
            ? kept.serverWork - best.serverWork > this.opts.hysteresis * kept.serverWork
            : sloRatio(inst.slo, kept) - sloRatio(inst.slo, best) > this.opts.hysteresis * sloRatio(inst.slo, kept);
        const fixes = !kept.feasible && best.feasible;
        const faster = !kept.feasible && !best.feasible && sloRatio(inst.slo, best) < sloRatio(inst.slo, kept) * (1 - this.opts.hysteresis);
        // When both miss, a plan in force that would meet its SLOs on an idle server stays: it
        // misses only because of the server's load, which swings with single prefills at any
        // rate, and the plan that would replace it (faster or cheaper at that load) is then most
        // often a device's own, which misses every request while in force. One that misses on
        // an idle server too (its device or link is why) gives way as before. A server that
        // stays overloaded is the shedder's to relieve (shedSaving, adj.shed).
        const idle = !kept.feasible && !best.feasible ? (solved.idle ?? this.idleInstance(client, server, cls, adj)) : undefined;
        const loadOnly = idle !== undefined && priced(idle, kept.placement, kept.decodePlacement).feasible;
        if (loadOnly || (!saves && !fixes && !faster && (kept.feasible || !best.feasible))) best = kept;
      }
      // A plan its kind's outcomes say misses (ClassAdjustment.kinds) gives way to the least-work
      // plan that meets the SLOs with its own kind's factors; when none does, it stays.
      if (adj?.kinds && objective === 'work' && this.followsObjective && best.feasible && !meetsKind(inst, best, adj.kinds)) {
        best = this.byKind(inst, adj.kinds) ?? best;
      }
      if (adj?.allServer) best = allServer(inst);
      // The bound is on the SLOs as stated: the planning margin is taken out again.
      const slowdown = (this.opts.shedMaxSlowdown ?? DEFAULT_SHED_MAX_SLOWDOWN) / this.opts.slaMargin;
      if (adj?.shed) best = leastWork(inst, this.opts.algorithm, slowdown, this.opts.phasedMinSaving) ?? best;
      if (shedSaving) {
        const shed = best.feasible || adj?.shed ? undefined : leastWork(inst, this.opts.algorithm, slowdown, this.opts.phasedMinSaving);
        shedSaving.push(shed ? Math.max(0, best.serverWork - shed.serverWork) : 0);
      }
      const slos = this.slosFor(client.clientClass, cls);
      // TTFT of the same placement for a one-token prompt: the slope lets an agent predict a
      // request by its own prompt length, not the class's longest.
      // A single placement's TTFT depends on the prompt alone (not on the class's decode length
      // or SLOs), so one one-token instance serves every class; a phased plan's hand-over
      // depends on the decode length too, so it is priced on its own class's.
      const n = cls.maxPromptTokens;
      const phased = isPhased(best);
      const oneTokenOf = (): HandoverInstance | undefined => this.instance(client, server, { ...cls, maxPromptTokens: 1 });
      const one = n <= 1 ? undefined : phased ? oneTokenOf() : (oneToken ??= oneTokenOf());
      const short = one ? priced(one, best.placement, best.decodePlacement) : undefined;
      const perToken = short ? Math.max(0, (best.ttftMs - short.ttftMs) / (n - 1)) : 0;
      // A phased plan moves the prompt's cache: its hand-over has a slope per prompt token too.
      const handoverPerToken = phased && short ? Math.max(0, (best.handoverMs - short.handoverMs) / (n - 1)) : 0;
      // So has a decode pass, once the executor prices its steps over their context (decodeMsOf):
      // one pass is TPOT less the hand-over's share of it.
      const planPasses = cls.expectedNewTokens - 1;
      const passOf = (p: PricedPlan): number => p.tpotMs - (planPasses >= 1 ? p.handoverMs / planPasses : 0);
      const tpotPerToken = short && planPasses >= 1 ? Math.max(0, (passOf(best) - passOf(short)) / (n - 1)) : 0;
      out.push({
        name: cls.name,
        maxPromptTokens: cls.maxPromptTokens,
        expectedNewTokens: cls.expectedNewTokens,
        placement: toLetters(best.placement),
        slaMs: slos.slaMs ?? 0,
        predictedLatencyMs: best.e2eMs,
        predictedServerWork: best.serverWork,
        feasible: best.feasible,
        ttftMs: slos.ttftMs ?? 0,
        tpotMs: slos.tpotMs ?? 0,
        predictedTtftMs: best.ttftMs,
        predictedTpotMs: best.tpotMs,
        predictedTtftMsPerPromptToken: perToken,
        ...(tpotPerToken > 0 ? { predictedTpotMsPerPromptToken: tpotPerToken } : {}),
        ...(phased
          ? {
              decodePlacement: toLetters(best.decodePlacement),
              predictedHandoverMs: best.handoverMs,
              ...(handoverPerToken > 0 ? { predictedHandoverMsPerPromptToken: handoverPerToken } : {}),
            }
          : {}),
      });
    }
    return out;
  }

  /**
   * The plan of least server work that meets `inst`'s SLOs with its predicted TTFT and TPOT
   * multiplied by its kind's factors, undefined when none does. Candidates: the solver's best
   * against the SLOs tightened by the split factors (the best split that meets them, or a
   * single-kind plan better than any such split), every stage on the server, every stage on
   * the client; each judged by its own kind's factors. O(one solve).
   */
  private byKind(inst: HandoverInstance, kinds: KindFactors): PricedPlan | undefined {
    const split = solveWith(kinds.split ? kindSlos(inst, kinds.split) : inst, this.opts.algorithm, this.opts.phasedMinSaving);
    const client = inst.stages.map((): Location => 'client');
    const candidates = [allServer(inst), priced(inst, client)];
    if (split.feasible) candidates.push(priced(inst, split.placement, split.decodePlacement));
    let best: PricedPlan | undefined;
    for (const p of candidates) if (meetsKind(inst, p, kinds) && (!best || p.serverWork < best.serverWork)) best = p;
    return best;
  }

  /** The instance of `cls` for `client` on `server` at no load (utilisation 0: no slow-down, no queue), adjusted by `adj`. */
  private idleInstance(
    client: ClientProfile,
    server: ServerLoad | undefined,
    cls: RequestClass,
    adj: ClassAdjustment | undefined,
  ): HandoverInstance | undefined {
    return adjusted(this.instance(client, server, cls, 0), adj);
  }

  /** Whether the algorithm follows the objective (the planner's own solvers; baselines place by their rule). */
  get followsObjective(): boolean {
    return OBJECTIVE_ALGORITHMS.has(this.opts.algorithm);
  }

  /**
   * Solves `inst` (the class at the server's reported load). When nothing meets the SLOs there, the fallback is
   * the solver's fastest placement at that load, unless the best plan at no load (the most
   * work the SLOs could ever leave on the client) costs the server less: an overloaded server
   * is relieved, not given everything because the slow clients cannot meet the SLOs alone.
   * With `overload: 'hold'` the best plan at no load is taken whenever there is one (see
   * PlanMakerOptions.overload). Either way the plan is reported at the loaded prices, infeasible,
   * and the no-load instance comes back with it (`idle`) for the caller's use.
   */
  private solveUnderLoad(
    inst: HandoverInstance,
    client: ClientProfile,
    server: ServerLoad | undefined,
    cls: RequestClass,
    objective: Objective,
    adj?: ClassAdjustment,
  ): { best: PricedPlan; idle?: HandoverInstance } {
    // The latency objective takes the fastest single placement, for both phases.
    const best =
      objective === 'work' ? solveWith(inst, this.opts.algorithm, this.opts.phasedMinSaving) : priced(inst, fastestGenerationPlacement(inst).placement);
    if (best.feasible || objective !== 'work' || !(server && server.utilisation > 0)) return { best };
    const idleInst = this.idleInstance(client, server, cls, adj);
    if (!idleInst) return { best }; // never: the same server as `inst`, which was priced
    const idle = solveWith(idleInst, this.opts.algorithm, this.opts.phasedMinSaving);
    if (!idle.feasible || ((this.opts.overload ?? 'relieve') === 'relieve' && idle.serverWork >= best.serverWork)) return { best, idle: idleInst };
    return { best: { ...priced(inst, idle.placement, idle.decodePlacement), feasible: false }, idle: idleInst };
  }
}
