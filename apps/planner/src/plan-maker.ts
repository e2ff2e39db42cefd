import { evaluatePlacement, instanceFromMeasured, meetsSla, minLatencyPlacement, solve, type Algorithm, type Location, type Placement, type PlacementInstance } from '@tandem/dp';
import type { ClassPlacement, ClientProfile, ServerLoad } from '@tandem/protocol';
import type { RequestClass } from './config';

/**
 * What the planner optimises. `work`: the least server work that meets the SLA (the
 * throughput objective, used when the server is busy). `latency`: the fastest placement
 * (used while the server is idle: its capacity is free, so requests get the best latency).
 */
export type Objective = 'work' | 'latency';

/**
 * What the planner learned from outcomes about one client's request class (calibration.ts):
 * how to plan it differently from what the model alone says.
 */
export interface ClassAdjustment {
  /** Multiplies the SLA the class is planned against: safety factor / correction factor (1 = as configured). */
  readonly slaScale: number;
  /** Places every stage on the server whatever the solver finds (the safety controller's floor). */
  readonly allServer: boolean;
}

/** A stage as the manifest describes it. */
export interface ModelStage {
  readonly name: string;
  readonly inBytesPerToken: number;
}

export interface PlanMakerOptions {
  readonly stages: readonly ModelStage[];
  readonly classes: readonly RequestClass[];
  readonly slaOverrides: Readonly<Record<string, Readonly<Record<string, number>>>>;
  readonly algorithm: Algorithm;
  readonly hysteresis: number;
  readonly slaMargin: number;
  readonly resolutionMs: number;
  readonly maxUtilisation: number;
  /** Server work of one hand-over to the server (per step), ms: gRPC, protobuf, scheduling. */
  readonly serverEntryMs?: number;
}

/** Client time of a stage the client cannot run: large enough that no SLA admits it, finite for the solvers. */
export const UNRUNNABLE_MS = 1e12;
/** Bytes of a sampled token id coming back from the head. */
const TOKEN_BYTES = 8;

/** `inst` planned against its SLA scaled by the learned adjustment (calibration.ts). */
function adjusted(inst: PlacementInstance | undefined, adj: ClassAdjustment | undefined): PlacementInstance | undefined {
  return inst && adj && adj.slaScale !== 1 ? { ...inst, slaMs: inst.slaMs * adj.slaScale } : inst;
}

/** Every stage on the server, priced on `inst`: the safety controller's floor. */
function allServer(inst: PlacementInstance, best: ReturnType<typeof solve>): { placement: string; best: ReturnType<typeof solve> } {
  const placement = inst.stages.map((): Location => 'server');
  const cost = evaluatePlacement(inst, placement);
  return { placement: toLetters(placement), best: { ...best, placement, ...cost, feasible: meetsSla(inst, cost.latencyMs) } };
}

const toLetters = (p: Placement): string => p.map((l) => (l === 'client' ? 'C' : 'S')).join('');
const fromLetters = (s: string): Location[] => [...s].map((c): Location => (c === 'C' ? 'client' : 'server'));

/**
 * Turns telemetry into placements: for each request class, an instance priced for the
 * whole generation (prefill of maxPromptTokens, expectedNewTokens decode steps) from the
 * client's measured stage times and the server's, solved with the configured algorithm.
 * Under load the server's stage times (for latency, not for work) are inflated by
 * 1 / (1 - utilisation), the mean time in an M/M/1 queue: the busier the server, the more
 * the same SLA pushes onto the client. Pure: same inputs, same plans.
 */
export class PlanMaker {
  constructor(readonly opts: PlanMakerOptions) {}

  slaFor(clientClass: string, cls: RequestClass): number {
    return this.opts.slaOverrides[clientClass]?.[cls.name] ?? cls.slaMs;
  }

  /**
   * The instance for one client and class, or undefined when the server has not reported yet.
   * `utilisation` overrides the server's reported one (the load the latency is priced at).
   */
  instance(client: ClientProfile, server: ServerLoad | undefined, cls: RequestClass, utilisation?: number): PlacementInstance | undefined {
    if (!server || server.stages.length !== this.opts.stages.length) return undefined;
    const clientStages = new Map(client.stages.filter((s) => s.samples > 0).map((s) => [s.stage, s]));
    const u = Math.min(Math.max(utilisation ?? server.utilisation, 0), this.opts.maxUtilisation);
    const inflate = 1 / (1 - u);
    const n = cls.maxPromptTokens;
    const m = Math.max(0, cls.expectedNewTokens - 1);
    const base = {
      outBytesPerPass: TOKEN_BYTES,
      uplink: { latencyMs: client.uplink?.latencyMs ?? 0, bytesPerMs: client.uplink?.bytesPerMs || 1e6 },
      downlink: { latencyMs: client.downlink?.latencyMs ?? 0, bytesPerMs: client.downlink?.bytesPerMs || 1e6 },
      slaMs: this.slaFor(client.clientClass, cls) * this.opts.slaMargin,
      promptTokens: n,
      decodeSteps: m,
      resolutionMs: this.opts.resolutionMs,
      serverEntryWorkPerPass: this.opts.serverEntryMs ?? 0,
    };
    const stagesWith = (serverScale: number) => this.opts.stages.map((st, i) => {
      const c = clientStages.get(i);
      const s = server.stages[i];
      return {
        name: st.name,
        inBytesPerToken: st.inBytesPerToken,
        clientPrefillMs: c ? c.prefillMsPerToken * n : UNRUNNABLE_MS,
        clientDecodeMs: c ? c.decodeMs : 0,
        serverPrefillMs: s.prefillMsPerToken * n * serverScale,
        serverDecodeMs: s.decodeMs * serverScale,
      };
    });
    const timed = instanceFromMeasured({ ...base, stages: stagesWith(inflate) });
    const work = instanceFromMeasured({ ...base, stages: stagesWith(1) });
    // Latency from the loaded times, server work from the unloaded ones.
    return { ...timed, stages: timed.stages.map((s, i) => ({ ...s, serverWork: work.stages[i].serverWork })) };
  }

  /**
   * The placements for one client. `previous` (the client's current plan) is kept per class
   * while it stays feasible and the new optimum saves no more than `hysteresis` of its work,
   * so plans do not flap on measurement noise. `adjust` gives the learned corrections per class
   * (the reported SLA and predictions stay the model's). Returns undefined until the server has reported.
   */
  plan(client: ClientProfile, server: ServerLoad | undefined, previous: readonly ClassPlacement[] | undefined, objective: Objective = 'work',
    adjust?: (requestClass: string) => ClassAdjustment | undefined): ClassPlacement[] | undefined {
    const out: ClassPlacement[] = [];
    for (const cls of this.opts.classes) {
      const adj = adjust?.(cls.name);
      const solved = this.solveUnderLoad(client, server, cls, objective, adj);
      if (!solved) return undefined;
      const { inst } = solved;
      let { best } = solved;
      let placement = toLetters(best.placement);
      const prev = previous?.find((p) => p.name === cls.name);
      if (prev && prev.placement.length === inst.stages.length && prev.placement !== placement) {
        const kept = evaluatePlacement(inst, fromLetters(prev.placement));
        const keptFeasible = meetsSla(inst, kept.latencyMs);
        const saves = objective === 'work'
          ? kept.serverWork - best.serverWork > this.opts.hysteresis * kept.serverWork
          : kept.latencyMs - best.latencyMs > this.opts.hysteresis * kept.latencyMs;
        const fixes = !keptFeasible && best.feasible;
        const faster = !keptFeasible && !best.feasible && best.latencyMs < kept.latencyMs * (1 - this.opts.hysteresis);
        if (!saves && !fixes && !faster && (keptFeasible || !best.feasible)) {
          placement = prev.placement;
          best = { ...best, placement: fromLetters(prev.placement), latencyMs: kept.latencyMs, serverWork: kept.serverWork, feasible: keptFeasible };
        }
      }
      if (adj?.allServer) ({ placement, best } = allServer(inst, best));
      out.push({
        name: cls.name,
        maxPromptTokens: cls.maxPromptTokens,
        expectedNewTokens: cls.expectedNewTokens,
        placement,
        slaMs: this.slaFor(client.clientClass, cls),
        predictedLatencyMs: best.latencyMs,
        predictedServerWork: best.serverWork,
        feasible: best.feasible,
      });
    }
    return out;
  }

  /**
   * Solves at the server's reported load. When nothing meets the SLA there, the fallback is
   * the solver's fastest placement at that load, unless the best plan at no load (the most
   * work the SLA could ever leave on the client) costs the server less: an overloaded server
   * is relieved, not given everything because the slow clients cannot meet the SLA alone.
   * Either way the plan is reported at the loaded prices, infeasible.
   */
  private solveUnderLoad(client: ClientProfile, server: ServerLoad | undefined, cls: RequestClass, objective: Objective, adj?: ClassAdjustment):
    { inst: PlacementInstance; best: ReturnType<typeof solve> } | undefined {
    const inst = adjusted(this.instance(client, server, cls), adj);
    if (!inst) return undefined;
    const best = objective === 'work' ? solve(inst, this.opts.algorithm) : this.fastest(inst);
    if (best.feasible || objective !== 'work' || !(server && server.utilisation > 0)) return { inst, best };
    const idle = solve(adjusted(this.instance(client, server, cls, 0), adj)!, this.opts.algorithm);
    if (!idle.feasible || idle.serverWork >= best.serverWork) return { inst, best };
    const cost = evaluatePlacement(inst, idle.placement);
    return { inst, best: { ...idle, ...cost, feasible: false } };
  }

  private fastest(inst: PlacementInstance): ReturnType<typeof solve> {
    const placement = minLatencyPlacement(inst);
    const cost = evaluatePlacement(inst, placement);
    return { algorithm: this.opts.algorithm, placement, ...cost, feasible: meetsSla(inst, cost.latencyMs) };
  }
}
