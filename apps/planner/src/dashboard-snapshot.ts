import type { ClassObservations, ClientObservations, ClientPlan, ExecutorSummary, ServerLoad } from '@tandem/protocol';
import type { RequestClass } from './config';

/**
 * What the dashboard reads of the planner: its own state, never a copy kept apart
 * (PlannerServer implements it). Every member is cheap to read except `plans` and
 * `observations`, O(clients log clients) and O(clients × classes × window).
 */
export interface DashboardSource {
  /** Current plans, ordered by client id. */
  plans(): ClientPlan[];
  /** What was observed of each client of `plans`, in that order. */
  observations(plans: readonly ClientPlan[]): ClientObservations[];
  /** The followed executor's smoothed load report (undefined until one reported). */
  readonly load: ServerLoad | undefined;
  readonly followedExecutor: string | undefined;
  readonly executorIds: readonly string[];
  /** Every executor whose load report is kept, with the plans naming each, in id order. */
  executorSummaries(): ExecutorSummary[];
  /** What the planner optimises now ('work' or 'latency'). */
  readonly currentObjective: string;
  /** Shed pairs as `clientId/requestClass`. */
  readonly shedClasses: readonly string[];
  /** Server time per ms of predicted work (the shedder's; 1 until learned). */
  readonly workScale: number;
  clientClassOf(clientId: string): string | undefined;
  readonly counters: { readonly profiles: number; readonly loads: number; readonly outcomes: number; readonly badMessages: number };
}

/** What the dashboard states of the planner that does not change while it runs. */
export interface DashboardInfo {
  readonly modelId: string;
  readonly algorithm: string;
  /** Stage names of the planned model, in order: a placement has one letter per stage. */
  readonly stages: readonly string[];
  readonly classes: readonly RequestClass[];
  /** PLANNER_SLO_TARGET, 0..1. */
  readonly attainmentTarget: number;
}

/** The followed executor's load as the dashboard shows it. */
export interface ServerView {
  readonly serverId: string;
  /** Smoothed utilisation, 0..1. */
  readonly utilisation: number;
  readonly queueDepth: number;
  readonly activeSessions: number;
  /** Smoothed mean queue wait, ms. */
  readonly meanQueueMs: number;
  readonly workScale: number;
}

/** One executor the planner hears from. */
export interface ExecutorView {
  readonly id: string;
  /** Where clients reach it; '' when it advertises none (never assigned). */
  readonly address: string;
  /** Clients whose plan names it. */
  readonly clients: number;
  /** Smoothed utilisation, 0..1. */
  readonly utilisation: number;
  readonly draining: boolean;
  readonly lastReportUnixMs: number;
}

/** One request class over every client planned. Figures with no outcome behind them are null. */
export interface ClassView {
  readonly name: string;
  readonly slaMs: number | null;
  readonly ttftMs: number | null;
  readonly tpotMs: number | null;
  /** Clients with a plan for it. */
  readonly clients: number;
  /** Of those, clients whose plan runs every stage of it on the server. */
  readonly allServer: number;
  /** Of those, clients whose plan runs every stage of it on the device. */
  readonly allClient: number;
  /** Pairs of this class shed now. */
  readonly shed: number;
  /** SLO attainment of the plans in force (weighted by their outcomes), 0..1. */
  readonly attainment: number | null;
  readonly planOutcomes: number;
  readonly outcomes: number;
  readonly failures: number;
  /** Mean predicted and observed end-to-end latency over the recent successful generations, ms. */
  readonly predictedE2eMs: number | null;
  readonly observedE2eMs: number | null;
}

/** One class of one client's plan. */
export interface ClientClassView {
  readonly name: string;
  /** One letter per stage: C runs on the client, S on the server (a phased plan's prefill). */
  readonly placement: string;
  /** A phased plan's decode placement, when it differs from `placement`. */
  readonly decodePlacement?: string;
  readonly slaMs: number;
  readonly ttftMs: number;
  readonly tpotMs: number;
  readonly predictedLatencyMs: number;
  readonly predictedServerWorkMs: number;
  readonly feasible: boolean;
  readonly shed: boolean;
  readonly planOutcomes: number;
  readonly attainment: number | null;
  readonly predictedE2eMs: number | null;
  readonly observedE2eMs: number | null;
}

export interface ClientView {
  readonly clientId: string;
  /** The client class its profile states ('' when none). */
  readonly clientClass: string;
  readonly epoch: number;
  readonly createdUnixMs: number;
  /** The executor its plan names, when it names one. */
  readonly executor?: string;
  readonly classes: readonly ClientClassView[];
}

/**
 * Everything one dashboard update shows, as sent on /events (JSON). Invariants: `clients`
 * holds at most the dashboard's `maxClients` of the `clientsTotal` clients with a plan, in
 * client id order; `classes` follows the planner's class order; figures are rounded (ms to
 * 0.1, ratios to 0.001) so that an unchanged state gives the same JSON.
 */
export interface DashboardSnapshot {
  readonly modelId: string;
  readonly algorithm: string;
  readonly objective: string;
  readonly stages: readonly string[];
  readonly attainmentTarget: number;
  /** null until an executor reported load. */
  readonly server: ServerView | null;
  readonly executors: number;
  /** Each executor heard from, with the clients assigned to it (none while plans name no executor). */
  readonly executorList: readonly ExecutorView[];
  readonly classes: readonly ClassView[];
  readonly clients: readonly ClientView[];
  readonly clientsTotal: number;
  readonly shed: readonly string[];
  readonly telemetry: { readonly profiles: number; readonly loads: number; readonly outcomes: number; readonly dropped: number };
}

const ms = (v: number): number => Math.round(v * 10) / 10;
const ratio = (v: number): number => Math.round(v * 1000) / 1000;

/** Of one class's observations: attainment and mean figures, null where no outcome is behind them. */
function observed(o: ClassObservations | undefined): Pick<ClientClassView, 'planOutcomes' | 'attainment' | 'predictedE2eMs' | 'observedE2eMs'> {
  return {
    planOutcomes: o?.planOutcomes ?? 0,
    attainment: o && o.planOutcomes > 0 ? ratio(o.attainment) : null,
    predictedE2eMs: o && o.window > 0 ? ms(o.predictedE2eMeanMs) : null,
    observedE2eMs: o && o.window > 0 ? ms(o.observedE2eMeanMs) : null,
  };
}

/**
 * One snapshot of the planner's state for the dashboard: every planned client counts in the
 * per-class figures, the first `maxClients` (by id) are listed. O(clients × classes × window).
 */
export function dashboardSnapshot(source: DashboardSource, info: DashboardInfo, maxClients: number): DashboardSnapshot {
  const plans = source.plans();
  const observations = source.observations(plans);
  const shed = [...source.shedClasses];
  const shedSet = new Set(shed);
  const classIndex = new Map(info.classes.map((c, i) => [c.name, i]));
  const sums = info.classes.map(() => ({
    clients: 0,
    allServer: 0,
    allClient: 0,
    shed: 0,
    weighted: 0,
    planOutcomes: 0,
    outcomes: 0,
    failures: 0,
    window: 0,
    predicted: 0,
    observed: 0,
  }));
  const clients: ClientView[] = [];
  plans.forEach((p, n) => {
    const obs = new Map((observations[n]?.classes ?? []).map((o) => [o.name, o]));
    const classes = p.classes.map((c): ClientClassView => {
      const o = obs.get(c.name);
      const isShed = shedSet.has(`${p.clientId}/${c.name}`);
      const i = classIndex.get(c.name);
      if (i !== undefined) {
        const s = sums[i];
        s.clients++;
        if (/^S+$/.test(c.placement)) s.allServer++;
        if (/^C+$/.test(c.placement)) s.allClient++;
        if (isShed) s.shed++;
        if (o) {
          s.weighted += o.attainment * o.planOutcomes;
          s.planOutcomes += o.planOutcomes;
          s.outcomes += o.outcomes;
          s.failures += o.failures;
          s.window += o.window;
          s.predicted += o.predictedE2eMeanMs * o.window;
          s.observed += o.observedE2eMeanMs * o.window;
        }
      }
      return {
        name: c.name,
        placement: c.placement,
        ...(c.decodePlacement && c.decodePlacement !== c.placement ? { decodePlacement: c.decodePlacement } : {}),
        slaMs: ms(c.slaMs),
        ttftMs: ms(c.ttftMs),
        tpotMs: ms(c.tpotMs),
        predictedLatencyMs: ms(c.predictedLatencyMs),
        predictedServerWorkMs: ms(c.predictedServerWork),
        feasible: c.feasible,
        shed: isShed,
        ...observed(o),
      };
    });
    if (clients.length < maxClients) {
      clients.push({
        clientId: p.clientId,
        clientClass: source.clientClassOf(p.clientId) ?? '',
        epoch: p.epoch,
        createdUnixMs: p.createdUnixMs,
        ...(p.executor ? { executor: p.executor.id } : {}),
        classes,
      });
    }
  });
  const load = source.load;
  return {
    modelId: info.modelId,
    algorithm: info.algorithm,
    objective: source.currentObjective,
    stages: info.stages,
    attainmentTarget: info.attainmentTarget,
    server: load
      ? {
          serverId: source.followedExecutor ?? load.serverId,
          utilisation: ratio(load.utilisation),
          queueDepth: load.queueDepth,
          activeSessions: load.activeSessions,
          meanQueueMs: ms(load.meanQueueMs),
          workScale: ratio(source.workScale),
        }
      : null,
    executors: source.executorIds.length,
    executorList: source.executorSummaries().map((e) => ({
      id: e.id,
      address: e.address,
      clients: e.clients,
      utilisation: ratio(e.utilisation),
      draining: e.draining,
      lastReportUnixMs: e.lastReportUnixMs,
    })),
    classes: info.classes.map((c, i): ClassView => {
      const s = sums[i];
      return {
        name: c.name,
        slaMs: c.slaMs ?? null,
        ttftMs: c.ttftMs ?? null,
        tpotMs: c.tpotMs ?? null,
        clients: s.clients,
        allServer: s.allServer,
        allClient: s.allClient,
        shed: s.shed,
        attainment: s.planOutcomes > 0 ? ratio(s.weighted / s.planOutcomes) : null,
        planOutcomes: s.planOutcomes,
        outcomes: s.outcomes,
        failures: s.failures,
        predictedE2eMs: s.window > 0 ? ms(s.predicted / s.window) : null,
        observedE2eMs: s.window > 0 ? ms(s.observed / s.window) : null,
      };
    }),
    clients,
    clientsTotal: plans.length,
    shed,
    telemetry: {
      profiles: source.counters.profiles,
      loads: source.counters.loads,
      outcomes: source.counters.outcomes,
      dropped: source.counters.badMessages,
    },
  };
}
