import * as grpc from '@grpc/grpc-js';
import { planKey } from '@tandem/dp';
import {
  addReflection,
  ClientProfile,
  GenerationOutcome,
  channelOptions,
  HEALTH_SERVICE_NAME,
  HealthReporter,
  ID_PATTERN,
  PlannerServiceService,
  ServerLoad,
  ServingStatus,
  Subjects,
  type ClassPlacement,
  type ClientObservations,
  type ClientPlan,
  type ExecutorAssignment,
  type ExecutorSummary,
  type Keepalive,
  type StageTiming,
  type StepQueueWaits,
  type PlannerServiceServer,
  type WatchPlansRequest,
  type WatchPlansResponse,
} from '@tandem/protocol';
import {
  AuthError,
  bindServer,
  checkIdentity,
  connectNats,
  errorEdge,
  hostOf,
  MetricsEndpoint,
  OPERATOR_IDENTITY,
  serverAuthOptions,
  serveWithEdge,
  shutdownServer,
  ValidationError,
  type Logger,
  type NatsAuth,
  type NatsConnection,
  type ServerSecurity,
} from '@tandem/service-kit';
import { Calibrator, DEFAULT_CALIBRATION } from './calibration';
import { Shedder, type ShedCandidate, type ShedOptions } from './shedding';
import { toGrpcStatus } from './errors';
import { DirtyQueue } from './dirty-queue';
import { PlannerMetrics } from './metrics';
import { validateOutcome } from './outcomes';
import { decodeMsOf, prefillMsOf, type ClassAdjustment, type Objective, type PlanMaker } from './plan-maker';
import { PlanState, type PlannerRole } from './plan-state';
import { QUEUE_KINDS, shown, STRETCH_KINDS, TelemetryError, validateLoad, validateProfile } from './telemetry';

/** ListPlans page size when the request states none (page_size 0). */
export const DEFAULT_PLANS_PAGE_SIZE = 1000;
/** Largest ListPlans page: a larger page_size is served as this many (about 1 MiB of plans). */
export const MAX_PLANS_PAGE_SIZE = 5000;
/** Most executors whose load reports the planner keeps at once; a report from one more is dropped. */
export const MAX_EXECUTORS = 64;

/** An opaque ListPlans page token: the last client id of the page before (base64url). */
export function pageTokenOf(lastClientId: string): string {
  return Buffer.from(`v1:${lastClientId}`, 'utf8').toString('base64url');
}

/** The client id a page token continues after. @throws ValidationError naming page_token when it is not one this planner issued. */
export function clientIdOfPageToken(token: string): string {
  const text = /^[A-Za-z0-9_-]{1,200}$/.test(token) ? Buffer.from(token, 'base64url').toString('utf8') : '';
  const id = text.startsWith('v1:') ? text.slice(3) : '';
  if (!ID_PATTERN.test(id)) throw new ValidationError(`page_token must be a next_page_token from an earlier ListPlans answer, given ${shown(token)}`);
  return id;
}

/** The Error of an unknown thrown value, its message cut to a log-friendly length. */
function errText(err: unknown): string {
  const m = err instanceof Error ? err.message : String(err);
  return m.length > 500 ? `${m.slice(0, 497)}...` : m;
}

export interface PlannerServerOptions {
  readonly maker: PlanMaker;
  /** Learns from the agents' outcomes (default: a Calibrator with DEFAULT_CALIBRATION). */
  readonly calibrator?: Calibrator;
  /**
   * Sheds classes to their devices while the server is overloaded (shedding.ts; objective
   * algorithms only). Default: off. The maker should then hold classes on their plans at no
   * load (PlanMakerOptions.overload 'hold'), leaving relief to the shedder.
   */
  readonly shedding?: ShedOptions;
  readonly log: Logger;
  readonly address: string;
  readonly natsUrl: string;
  /** NATS credentials (docs/security.md (NATS)); undefined connects without. */
  readonly natsAuth?: NatsAuth;
  /** Id of the model planned for (see modelIdOf); telemetry about another model is refused. Empty accepts any. */
  readonly modelId: string;
  /**
   * A client not heard from for this long is forgotten; so is an executor's load report
   * (and the planner then follows another executor, see onLoad).
   */
  readonly clientTtlMs: number;
  readonly debounceMs: number;
  /**
   * Telemetry changes a plan's inputs materially when some priced figure (a stage time, a
   * link's latency or throughput, the server's load-inflated stage time) moved by more than
   * this fraction since the client was last planned; smaller changes re-plan nothing.
   * Default 0.02.
   */
  readonly replanThreshold?: number;
  /**
   * A re-plan that keeps a client's placements, executor and alternates sends the client its
   * new predictions (with a new epoch) when a predicted TTFT, TPOT or end-to-end latency moved
   * by more than this fraction since the client last got them; below it they are refreshed
   * silently (ListPlans shows them). Agents stamp their summaries and outcomes with the plan's
   * predictions, and the calibrator compares outcomes with them, so predictions left from
   * another load or link would be read as the plan's error. Default 0.1.
   */
  readonly predictionPushThreshold?: number;
  /** Longest a re-plan runs before yielding to the event loop, ms. Default 10. */
  readonly sliceMs?: number;
  /**
   * TLS credentials and bearer tokens of the gRPC port (loadServerSecurity); undefined =
   * plaintext, no tokens. With tokens, WatchPlans serves only the caller's own client id and
   * ListPlans only operator tokens (identity '*').
   */
  readonly security?: ServerSecurity;
  /** HTTP/2 keepalive of the gRPC port (GRPC_KEEPALIVE_*): a watcher whose connection died is dropped; default DEFAULT_KEEPALIVE. */
  readonly keepalive?: Keepalive;
  /** Largest gRPC message accepted or sent, bytes (default PLANNER_MAX_MESSAGE_BYTES). */
  readonly maxMessageBytes?: number;
  /**
   * Below this server utilisation the planner optimises latency (the server has capacity to
   * spare); at or above it, server work under the SLA. It returns to latency only when both the
   * measured utilisation and the one all-server plans would cause at the clients' request rates
   * (latencyUtilisation) are below half this value, so the objective does not flap. 0 always
   * optimises work.
   */
  readonly idleUtilisation: number;
  /**
   * Weight of a new load report in the smoothed figures the planner prices and chooses its
   * objective by (utilisation, queue wait, stage times, stretches; an exponential moving
   * average, `smoothLoad`; 1 = no smoothing). One interval's figures swing with single
   * prefills and batches at low rates; plans should not. Default 1.
   */
  readonly utilisationSmoothing?: number;
  /** Wall clock in Unix ms (injected for tests). */
  readonly now?: () => number;
  /** Port of the Prometheus endpoint (GET /metrics) on the host of `address`; 0 picks a free one; undefined: none (the metrics are still kept, see `metrics`). */
  readonly metricsPort?: number;
  /**
   * The plans in a NATS JetStream key-value bucket, and leader election among planners
   * sharing it (plan-state.ts; docs/planner.md, "State and failover"). Undefined: plans live
   * in memory only and this planner always plans.
   */
  readonly state?: {
    /** The plans bucket (PLANNER_STATE_BUCKET); the lease lives in `<bucket>-leader`. */
    readonly bucket: string;
    /** The leader lease, ms (PLANNER_LEADER_LEASE_MS). */
    readonly leaseMs: number;
    /** This planner's id in the lease (default: host, pid and a random suffix). */
    readonly id?: string;
  };
}

/** The planner's gRPC service name, as health reports it. */
export const PLANNER_SERVICE_NAME = 'tandem.planner.v1.PlannerService';
/**
 * The health name that says whether this planner leads: SERVING on the leader, NOT_SERVING on
 * a standby (which still serves plans: PLANNER_SERVICE_NAME is SERVING on both); unknown
 * without a state bucket.
 */
export const PLANNER_LEADER_HEALTH = 'tandem.planner.v1.PlannerService/leader';

/**
 * Largest gRPC message the planner accepts or sends by default, bytes: the executor's and the
 * agent's default (EXECUTOR_MAX_MESSAGE_BYTES, AGENT_MAX_MESSAGE_BYTES). A ListPlans page stays
 * near 1 MiB (MAX_PLANS_PAGE_SIZE), under grpc-js's own 4 MiB too; the same limit on every
 * service keeps one rule for clients.
 */
export const PLANNER_MAX_MESSAGE_BYTES = 64 * 1024 * 1024;

/** Why the planner has no plan for a client yet, as WatchPlansResponse.no_plan_reason says it. */
export const NO_PLAN_REASONS = {
  noProfile: 'no profile from this client yet (an agent publishes it over NATS when its NATS_URL is set)',
  noLoad: 'no executor has reported its load yet (an executor publishes it over NATS when its NATS_URL is set); plans are made once one has',
  planning: 'the first plan is being made',
} as const;

interface ClientState {
  /**
   * Requests per second of each request class (index as the planner's classes), from the
   * outcomes its agent publishes; with `allServerWork`, what the latency objective would cost.
   */
  readonly rates: RateMeter[];
  /** Server work per request, ms, of each class's all-server placement at the last re-plan (objective algorithms only). */
  allServerWork: number[] | undefined;
  /** Server work per request shedding each class would save, ms, at the last re-plan (PlanMaker.plan's shedSaving; with shedding on). */
  shedSaving: number[] | undefined;
  /** The latest profile received. */
  profile: ClientProfile;
  /** The profile the current plan was made from (undefined until the first plan). */
  plannedWith: ClientProfile | undefined;
  lastSeenMs: number;
  plan: ClientPlan | undefined;
  /** The plan the client's streams were last sent (its predictions as the client holds them). */
  pushed: ClientPlan | undefined;
}

/** What the planner logs for each change of a class's safety factor (Calibrator). */
const SAFETY_MESSAGES = {
  tighten: 'plan misses its SLO attainment target; planning the class tighter',
  relax: 'SLO attainment recovered; relaxing the class one step',
  release: 'all-server misses its SLO attainment target too (the server or the SLO, not the plan); releasing the class from all-server',
} as const;

/**
 * Weight of each load report in the utilisation the overload shedder reads: faster than the
 * pricing's smoothing (PLANNER_UTILISATION_SMOOTHING), so an overload is seen in a few reports.
 */
export const SHED_SMOOTHING = 0.5;
/** Offered utilisation below which the work scale is not learned (too little load to compare). */
const MIN_OFFERED = 0.05;
/** The largest work scale believed. */
const MAX_WORK_SCALE = 10;

/** Time constant of the request rates the planner estimates from outcomes, ms. */
export const RATE_TIME_CONSTANT_MS = 10_000;

/**
 * An event rate with exponential forgetting (time constant RATE_TIME_CONSTANT_MS): each event
 * adds 1 / τ, and the sum decays as e^(−t/τ), so a steady stream of r events/s reads r.
 */
export class RateMeter {
  private value = 0;
  private atMs = 0;
  add(nowMs: number): void {
    this.value = this.perS(nowMs) + 1000 / RATE_TIME_CONSTANT_MS;
    this.atMs = nowMs;
  }
  /** Events per second at `nowMs`. */
  perS(nowMs: number): number {
    return this.value * Math.exp(-Math.max(0, nowMs - this.atMs) / RATE_TIME_CONSTANT_MS);
  }
}

/** Executor ids in code-unit order (the order candidates, alternates' ties and summaries use). */
function byId(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Whether two plans name the same executor at the same address (or both none). */
function sameAssignment(a: ExecutorAssignment | undefined, b: ExecutorAssignment | undefined): boolean {
  return (a?.id ?? '') === (b?.id ?? '') && (a?.address ?? '') === (b?.address ?? '');
}

/** A set of executor assignments as one string, order left out (a plan's alternates: their order alone changes nothing to push). */
function assignmentsKey(list: readonly ExecutorAssignment[] | undefined): string {
  return (list ?? [])
    .map((a) => `${a.id}@${a.address}`)
    .sort()
    .join(',');
}

/**
 * Whether a predicted TTFT, TPOT or end-to-end latency of `classes` moved by more than
 * `threshold` (relative) from `held`'s (the same classes, in order). O(classes).
 */
export function predictionsMoved(held: ClientPlan, classes: readonly ClassPlacement[], threshold: number): boolean {
  return classes.some((c, i) => {
    const h = held.classes[i];
    if (!h) return true;
    return (
      relChange(h.predictedLatencyMs, c.predictedLatencyMs) > threshold ||
      relChange(h.predictedTtftMs, c.predictedTtftMs) > threshold ||
      relChange(h.predictedTpotMs, c.predictedTpotMs) > threshold
    );
  });
}

/** |a - b| relative to the larger of the two; figures below `floor` count as `floor` (noise on ~0 ms stages is not a change). */
function relChange(a: number, b: number, floor = 1e-3): number {
  return Math.abs(a - b) / Math.max(Math.abs(a), Math.abs(b), floor);
}

/** Prompt lengths (and decode contexts) at which a stage's prefill and decode prices are compared (a fitted line moves both ends apart). */
const PROBE_PROMPT_TOKENS = [16, 256] as const;

/** Whether a stage's priced figures moved by more than `threshold` (relative): one decode step, and the prefill of a short and a long prompt. */
function timingMoved(a: StageTiming, b: StageTiming, threshold: number): boolean {
  // Prompt lengths stand for contexts too: a decode step attends to a prompt and what followed it.
  return PROBE_PROMPT_TOKENS.some(
    (n) => relChange(prefillMsOf(a, n), prefillMsOf(b, n)) > threshold || relChange(decodeMsOf(a, n), decodeMsOf(b, n)) > threshold,
  );
}

/** Whether a new profile moves any figure the planner prices by more than `threshold` (relative) since `old`. O(stages). */
export function profileChanged(old: ClientProfile, p: ClientProfile, threshold: number): boolean {
  if (old.clientClass !== p.clientClass || old.stages.length !== p.stages.length) return true;
  for (let i = 0; i < p.stages.length; i++) {
    const a = old.stages[i];
    const b = p.stages[i];
    if (a.stage !== b.stage || a.samples > 0 !== b.samples > 0) return true;
    if (timingMoved(a, b, threshold)) return true;
  }
  for (const k of ['uplink', 'downlink'] as const) {
    const a = old[k];
    const b = p[k];
    if (!a || !b) {
      if (a !== b) return true;
      continue;
    }
    if (relChange(a.latencyMs, b.latencyMs, 0.05) > threshold || relChange(a.bytesPerMs, b.bytesPerMs) > threshold) return true;
  }
  // Priced per entry like the uplink's latency, and as finely.
  return relChange(old.stepOverheadMs ?? 0, p.stepOverheadMs ?? 0, 0.05) > threshold;
}

/**
 * `l` folded into the moving average `prev` (weight `a` for the new report; `prev` undefined or
 * of another stage count: `l` as it is): utilisation, queue waits, every stage figure, the
 * whole-model figures and each stretch. A stretch not measured (0) on either side is taken as it comes, so the average
 * starts from the first measurement. One interval's figures swing with single prefills and
 * batches at low rates; predictions and plans are made from the averages, so that they
 * state what a request can expect over the next seconds, not what the last one saw.
 */
export function smoothLoad(prev: ServerLoad | undefined, l: ServerLoad, a: number): ServerLoad {
  if (!prev || prev.stages.length !== l.stages.length || a >= 1) return l;
  const avg = (was: number, v: number): number => was + a * (v - was);
  const measured = (was: number, v: number): number => foldMeasured(was, v, a);
  return {
    ...l,
    utilisation: avg(prev.utilisation, l.utilisation),
    meanQueueMs: avg(prev.meanQueueMs, l.meanQueueMs),
    ...(l.queueWaits && prev.queueWaits ? { queueWaits: smoothWaits(prev.queueWaits, l.queueWaits, a) } : {}),
    decodeStretch: measured(prev.decodeStretch, l.decodeStretch),
    promptStretch: measured(prev.promptStretch, l.promptStretch),
    longPromptStretch: measured(prev.longPromptStretch, l.longPromptStretch),
    ...(l.splitDecodeStretch !== undefined ? { splitDecodeStretch: measured(prev.splitDecodeStretch ?? 0, l.splitDecodeStretch) } : {}),
    stages: l.stages.map((s, i) => smoothTiming(prev.stages[i], s, a)),
    ...(l.wholeModel ? { wholeModel: prev.wholeModel ? smoothTiming(prev.wholeModel, l.wholeModel, a) : l.wholeModel } : {}),
  };
}

/** Each kind's queue wait of `l` folded into `prev`'s with weight `a`. */
function smoothWaits(prev: StepQueueWaits, l: StepQueueWaits, a: number): StepQueueWaits {
  const out = { ...l };
  for (const k of QUEUE_KINDS) out[k] = prev[k] + a * (l[k] - prev[k]);
  return out;
}

/** `v` folded into the average `was` with weight `a`; a figure not measured (0) on either side is taken as it comes. */
function foldMeasured(was: number, v: number, a: number): number {
  return was > 0 && v > 0 ? was + a * (v - was) : v;
}

/**
 * A fitted line (fixed part, slope) of `s` folded into `prev`'s with weight `a`, as a pair, once
 * both sides have one (its fixed part may be 0); undefined otherwise (the new line stands).
 */
function foldLine(prev: [number | undefined, number | undefined], s: [number | undefined, number | undefined], a: number): [number, number] | undefined {
  const [f0, k0] = prev;
  const [f1, k1] = s;
  if (!k0 || !k1) return undefined;
  return [(f0 ?? 0) + a * ((f1 ?? 0) - (f0 ?? 0)), k0 + a * (k1 - k0)];
}

/** Stage figures `s` folded into `prev` with weight `a` ({@link foldMeasured}, {@link foldLine}). */
function smoothTiming(prev: StageTiming, s: StageTiming, a: number): StageTiming {
  const out = { ...s, prefillMsPerToken: foldMeasured(prev.prefillMsPerToken, s.prefillMsPerToken, a), decodeMs: foldMeasured(prev.decodeMs, s.decodeMs, a) };
  // The fitted prefill line over the prompt, and the decode line over the context.
  const prefill = foldLine([prev.prefillFixedMs, prev.prefillMsPerTokenFitted], [s.prefillFixedMs, s.prefillMsPerTokenFitted], a);
  if (prefill) [out.prefillFixedMs, out.prefillMsPerTokenFitted] = prefill;
  const decode = foldLine([prev.decodeFixedMs, prev.decodeMsPerContextToken], [s.decodeFixedMs, s.decodeMsPerContextToken], a);
  if (decode) [out.decodeFixedMs, out.decodeMsPerContextToken] = decode;
  return out;
}

/**
 * Whether a new load report moves the server's priced stage times (each stage time × the
 * queueing inflation 1 / (1 - u), u capped at `maxUtilisation`, or × the executor's measured
 * decode / prompt / long-prompt stretch) by more than `threshold` since `old`. O(stages).
 */
export function loadChanged(old: ServerLoad, l: ServerLoad, threshold: number, maxUtilisation: number): boolean {
  if (old.stages.length !== l.stages.length) return true;
  const inflate = (u: number): number => 1 / (1 - Math.min(Math.max(u, 0), maxUtilisation));
  const fa = inflate(old.utilisation);
  const fb = inflate(l.utilisation);
  if (relChange(fa, fb) > threshold) return true;
  for (const k of STRETCH_KINDS) if (relChange(old[k] ?? 0, l[k] ?? 0) > threshold) return true;
  if (old.longStepTokens !== l.longStepTokens) return true;
  const moved = (a: StageTiming | undefined, b: StageTiming | undefined): boolean =>
    a === undefined || b === undefined ? a !== b : timingMoved(a, b, threshold);
  for (let i = 0; i < l.stages.length; i++) if (moved(old.stages[i], l.stages[i])) return true;
  return moved(old.wholeModel, l.wholeModel);
}

/** The overload shedder's state: the shedder, the utilisation it reads and the work scale it learned. */
interface ShedState {
  readonly shedder: Shedder;
  /** The executor's utilisation, averaged with weight SHED_SMOOTHING per report (undefined before the first). */
  utilisation: number | undefined;
  /** Server time per ms of predicted work, learned from load reports (Shedder.decide's workScale). */
  workScale: number;
}

/** The latest load report of one executor, smoothed. */
interface ExecutorState {
  /** Its latest report, utilisation and queue wait smoothed over its own reports. */
  load: ServerLoad;
  lastSeenMs: number;
  /** Where clients reach it (ServerLoad.address); '' when it advertises none: then it is never assigned. */
  address: string;
  /** Its last report said it is draining: it is assigned no client. */
  draining: boolean;
  /** The load the plans in force were priced from, while clients are assigned executors (docs/planner.md, "Several executors"). */
  plannedLoad: ServerLoad | undefined;
  /** Its own overload shedder, while clients are assigned executors and shedding is on. */
  shed: ShedState | undefined;
}

/** One executor a client's plan was priced on, with what the choice among executors compares. */
interface Priced {
  readonly id: string;
  readonly ex: ExecutorState;
  readonly classes: ClassPlacement[];
  readonly allServerWork: number[] | undefined;
  readonly shedSaving: number[] | undefined;
  /** Classes whose plan misses its SLOs there. */
  readonly missed: number;
  /** The objective's cost of the plan there (work or latency, weighted by the class rates) over 1 − the executor's expected utilisation. */
  readonly score: number;
  /** Utilisation the client adds there at its request rates (work scale included). */
  readonly util: number;
}

/** What one re-plan round (a debounced pass over the dirty clients) did, for its log line. */
interface Round {
  /** The epoch the plans changed in this round carry (0 until the first change). */
  epoch: number;
  replanned: number;
  changed: number;
  /** Clients whose placements held and whose new predictions were sent (predictionPushThreshold). */
  refreshed: number;
  /** Clients whose plan moved to another executor this round. */
  moved: number;
  errors: number;
  startedMs: number;
}

/**
 * The planner service: keeps the latest profile of every client and the load of the
 * executor it follows (from NATS), re-solves placements when either changes, and pushes a
 * client's plan on its WatchPlans stream only when a placement changed.
 *
 * Epochs: one per re-plan round, not per client. Every plan changed in a round carries the
 * round's epoch, max(last epoch + 1, wall clock ms) when the round's first plan changes (a
 * client changed twice in one round takes a fresh one). Rounds are debounced, so epochs stay
 * at the wall clock instead of running ahead of it by one ms per changed client. A restarted
 * planner starts again from the clock; agents take the first plan of each new stream whatever
 * its epoch (apps/client-agent/src/plan-follower.ts), so they follow a restarted planner even
 * if its clock is behind the last epoch they hold. Within one stream epochs only increase.
 * With a state bucket (`state`, plan-state.ts) the plans and the last epoch outlive the
 * process: a restarted planner, or a standby taking the lead, continues them.
 *
 * Nothing from outside can stop it: telemetry is checked against stated ranges
 * (telemetry.ts) and dropped, counted by reason, when out of them; an error while planning one
 * client is logged and counted (`planErrors`), and that client keeps its plan in force; every
 * timer callback is guarded (`timerErrors`).
 */
export class PlannerServer {
  private readonly server: grpc.Server;
  private readonly health = new HealthReporter(ServingStatus.NOT_SERVING);
  private readonly clients = new Map<string, ClientState>();
  /**
   * Plans from the state bucket of clients this planner has no profile of (yet): served as they
   * are until the client's profile arrives (it then starts from this plan) or, on the leader,
   * forgotten after the client TTL (`atMs`: since when the leader holds it).
   */
  private readonly adopted = new Map<string, { plan: ClientPlan; atMs: number }>();
  /** The state bucket and the election (undefined: no state, always plans). */
  private state: PlanState | undefined;
  private readonly watchers = new Map<string, Set<grpc.ServerWritableStream<WatchPlansRequest, WatchPlansResponse>>>();
  /** Load reports per executor id (at most MAX_EXECUTORS; forgotten after the TTL, except the followed one). */
  private readonly executors = new Map<string, ExecutorState>();
  /** The executor whose load plans are priced from (see onLoad). */
  private followed: string | undefined;
  private serverLoad: ServerLoad | undefined;
  /** The load report every plan in force was made from (undefined until one arrived). */
  private plannedLoad: ServerLoad | undefined;
  private objective: Objective = 'work';
  /** Whether the log said that clients wait for an executor's load (once per process). */
  private warnedNoLoad = false;
  private nc: NatsConnection | undefined;
  private lastEpoch = 0;
  private replanTimer: NodeJS.Timeout | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  /** Clients whose plans must be re-solved, in arrival order; drained in slices. */
  private readonly dirty = new DirtyQueue();
  private slicing = false;
  private round: Round = { epoch: 0, replanned: 0, changed: 0, refreshed: 0, moved: 0, errors: 0, startedMs: 0 };
  /**
   * Utilisation the current round added to (or took from) each executor by moving clients onto
   * it (off it), at their request rates: a stream of clients assigned in one round spreads
   * instead of herding onto the executor that was cheapest before the round.
   */
  private readonly roundAdded = new Map<string, number>();
  /** Plans (of known and of adopted clients) naming each executor, and their sum. */
  private readonly assigned = new Map<string, number>();
  private assignedTotal = 0;
  /** The executors clients are assigned among now ('' while plans name none), to see when that set changes. */
  private executorsKey = '';
  /** When this planner started (Unix ms): executors a stored plan names are waited for one client TTL after. */
  private startedMs = 0;
  /** Whether a client was left on an executor not heard of yet since the start (re-planned once the TTL passed). */
  private waitedForExecutor = false;
  private stopped = false;
  private readonly now: () => number;
  private readonly log: Logger;
  private readonly calibrator: Calibrator;
  /**
   * The overload shedder of the followed executor, when shedding is on for an objective
   * algorithm and plans name no executor; while they do, each executor has its own
   * (ExecutorState.shed).
   */
  private shedState: ShedState | undefined;
  private readonly classNames: ReadonlySet<string>;
  private readonly classIndex: ReadonlyMap<string, number>;
  /**
   * Counters, for status and tests. `outcomes`: outcomes taken; `strayOutcomes`: well-formed
   * outcomes of a client the planner does not know (not yet, or forgotten), ignored;
   * `badMessages`: telemetry messages dropped, and `dropped` the same by reason
   * (`Type.field:rule`, e.g. `ClientProfile.stages[].decodeMs:range`, or `Type:decode`);
   * `otherLoads`: valid load reports of an executor other than the followed one (kept; planned
   * from only while clients are assigned executors); `executorMoves`: plans moved to another
   * executor; `otherExecutorOutcomes`: outcomes whose executor is not the one the client's plan
   * names (calibrated all the same); `planErrors`: clients whose re-plan threw (their plan in force stays);
   * `timerErrors`: throws caught in a timer callback outside planning;
   * `slices` / `passes` / `lastPassMs`: the sliced re-planning (see runSlices).
   */
  readonly counters = {
    profiles: 0,
    loads: 0,
    otherLoads: 0,
    executorMoves: 0,
    otherExecutorOutcomes: 0,
    outcomes: 0,
    strayOutcomes: 0,
    badMessages: 0,
    dropped: {} as Record<string, number>,
    planErrors: 0,
    timerErrors: 0,
    plansPushed: 0,
    /** Plans sent again with the same placements because their predictions moved (predictionPushThreshold). */
    predictionPushes: 0,
    replans: 0,
    slices: 0,
    passes: 0,
    lastPassMs: 0,
    shed: 0,
    restored: 0,
  };
  private readonly threshold: number;
  private readonly predictionPushThreshold: number;
  private readonly sliceMs: number;
  /** The Prometheus registry and its endpoint (started when `metricsPort` is set). */
  readonly metrics: MetricsEndpoint;
  private readonly observed: PlannerMetrics;

  constructor(private readonly opts: PlannerServerOptions) {
    this.now = opts.now ?? Date.now;
    this.log = opts.log.child({ component: 'planner' });
    this.server = new grpc.Server({
      ...channelOptions(opts.maxMessageBytes ?? PLANNER_MAX_MESSAGE_BYTES, opts.keepalive),
      ...serverAuthOptions(opts.security?.tokens),
    });
    this.threshold = opts.replanThreshold ?? 0.02;
    this.predictionPushThreshold = opts.predictionPushThreshold ?? 0.1;
    this.sliceMs = opts.sliceMs ?? 10;
    this.calibrator = opts.calibrator ?? new Calibrator(DEFAULT_CALIBRATION);
    this.shedState = this.newShedState();
    this.classNames = new Set(opts.maker.opts.classes.map((c) => c.name));
    this.classIndex = new Map(opts.maker.opts.classes.map((c, i) => [c.name, i]));
    this.metrics = new MetricsEndpoint(this.log);
    const counters = this.counters;
    const calibrator = this.calibrator;
    this.observed = new PlannerMetrics(
      this.metrics.registry,
      {
        clients: () => this.clients.size,
        dropped: () => counters.dropped,
        accepted: () => ({ ClientProfile: counters.profiles, ServerLoad: counters.loads, GenerationOutcome: counters.outcomes }),
        attainment: () => calibrator.attainmentByClass(),
        attainmentTarget: calibrator.opts.target,
        shedNow: () => this.shedPairs().length,
        shedChanges: () => ({ shed: counters.shed, restored: counters.restored }),
        executorClients: () => this.assigned,
      },
      [...this.classNames],
    );
    this.state = opts.state
      ? new PlanState(
          { ...opts.state, classes: opts.maker.opts.classes.map((c) => c.name), log: this.log, registry: this.metrics.registry },
          {
            stored: (id, plan) => this.stored(id, plan),
            storedEpoch: (epoch) => {
              this.lastEpoch = Math.max(this.lastEpoch, epoch);
            },
            role: (role) => this.roleChanged(role),
          },
        )
      : undefined;
  }

  /** Whether this planner plans and pushes (it leads, or keeps no state); a standby serves the bucket's plans. */
  get planning(): boolean {
    return !this.state || this.state.role === 'leader';
  }

  /** 'leader' or 'standby' with a state bucket; undefined without one. */
  get role(): PlannerRole | undefined {
    return this.state?.role;
  }

  /** The state bucket's counters (writes, failures, refused entries by reason, role changes); undefined without state. */
  get stateCounters(): PlanState['counters'] | undefined {
    return this.state?.counters;
  }

  /** The epoch the next changed plan starts from (the last handed out, or read from the bucket). */
  get epoch(): number {
    return this.lastEpoch;
  }

  /**
   * A plan the state bucket holds (new, changed or deleted): epochs never go back below it;
   * a standby (or a planner before its first election) serves it, pushing it to the client's
   * streams when its epoch differs from the one they have. The leader's own writes come back
   * here too, and are ignored.
   */
  private stored(id: string, plan: ClientPlan | undefined): void {
    if (plan) this.lastEpoch = Math.max(this.lastEpoch, plan.epoch);
    if (this.planning || this.stopped) return;
    const st = this.clients.get(id);
    const prev = st ? st.plan : this.adopted.get(id)?.plan;
    this.countExecutor(prev, plan);
    if (st) st.plan = st.pushed = plan;
    else if (plan) this.adopted.set(id, { plan, atMs: this.now() });
    else this.adopted.delete(id);
    if (plan && (!prev || prev.epoch !== plan.epoch)) this.sendToWatchers(id, plan);
  }

  /** The election's outcome: a new leader re-plans every client (same placements keep their epochs); a standby stops planning. */
  private roleChanged(role: PlannerRole): void {
    if (this.stopped) return;
    this.health.set(PLANNER_LEADER_HEALTH, role === 'leader' ? ServingStatus.SERVING : ServingStatus.NOT_SERVING);
    if (role === 'standby') {
      clearTimeout(this.replanTimer);
      this.replanTimer = undefined;
      return;
    }
    const now = this.now();
    for (const a of this.adopted.values()) a.atMs = now;
    for (const id of this.clients.keys()) this.dirty.add(id);
    this.scheduleReplan();
  }

  async start(): Promise<{ port: number }> {
    // A request that does not decode is answered INVALID_ARGUMENT (not grpc-js's bare INTERNAL), before its handler runs.
    serveWithEdge(this.server, PlannerServiceService, this.handlers(), errorEdge(this.log, toGrpcStatus));
    this.health.addTo(this.server);
    // Server reflection (grpcurl, Postman): one name per service this server serves.
    addReflection(this.server, [PLANNER_SERVICE_NAME, HEALTH_SERVICE_NAME]);
    this.startedMs = this.now();
    const port = await bindServer(this.server, this.opts.address, this.opts.security?.credentials ?? grpc.ServerCredentials.createInsecure());
    if (this.opts.metricsPort !== undefined) await this.metrics.start(hostOf(this.opts.address), this.opts.metricsPort);
    this.nc = await connectNats(this.opts.natsUrl, 'planner', this.log, { auth: this.opts.natsAuth });
    this.subscribe(this.nc);
    await this.nc.flush();
    if (this.state) {
      this.health.set(PLANNER_LEADER_HEALTH, ServingStatus.NOT_SERVING);
      const opened = await this.state.open(this.nc).catch(async (err: unknown) => {
        await this.stop();
        throw err;
      });
      // No JetStream on this NATS server (logged): plans in memory, as without a bucket.
      if (!opened) {
        this.state = undefined;
        this.health.set(PLANNER_LEADER_HEALTH, ServingStatus.SERVING);
      }
    }
    this.sweepTimer = setInterval(() => this.guarded('sweep', () => this.forgetSilentClients()), Math.max(1000, Math.min(this.opts.clientTtlMs / 4, 30_000)));
    this.sweepTimer.unref();
    this.health.set('', ServingStatus.SERVING);
    this.health.set(PLANNER_SERVICE_NAME, ServingStatus.SERVING);
    this.log.info(
      {
        port,
        tls: this.opts.security?.tls ?? false,
        mtls: this.opts.security?.mtls ?? false,
        tokens: !!this.opts.security?.tokens,
        algorithm: this.opts.maker.opts.algorithm,
        ...(this.state ? { stateBucket: this.opts.state?.bucket, role: this.state.role, epoch: this.lastEpoch, storedPlans: this.plans().length } : {}),
      },
      'planner ready',
    );
    return { port };
  }

  private subscribe(nc: NatsConnection): void {
    const consume = async <T>(subject: string, type: string, decode: (data: Uint8Array) => T, handle: (m: T, subject: string) => void): Promise<void> => {
      for await (const m of nc.subscribe(subject)) {
        let msg: T;
        try {
          msg = decode(m.data);
        } catch (err) {
          this.dropped(m.subject, `${type}:decode`, `${type} does not decode: ${errText(err)}`);
          continue;
        }
        try {
          handle(msg, m.subject);
        } catch (err) {
          // Validation errors name their reason; any other throw is counted as the type's.
          const reason =
            err instanceof TelemetryError ? err.reason : `${type}.${/^[A-Za-z_][\w.[\]]*/.exec(errText(err))?.[0]?.replace(/\[\d+\]/g, '[]') ?? ''}:invalid`;
          this.dropped(m.subject, reason, errText(err));
        }
      }
    };
    const run = (p: Promise<void>, subject: string): void => {
      p.catch((err: unknown) => this.log.error({ subject, err: errText(err) }, 'telemetry subscription ended'));
    };
    run(
      consume(Subjects.allClientProfiles, 'ClientProfile', ClientProfile.decode, (m, subject) => this.onProfile(m, subject)),
      Subjects.allClientProfiles,
    );
    run(
      consume(Subjects.allServerLoads, 'ServerLoad', ServerLoad.decode, (m, subject) => this.onLoad(m, subject)),
      Subjects.allServerLoads,
    );
    run(
      consume(Subjects.allOutcomes, 'GenerationOutcome', GenerationOutcome.decode, (m, subject) => this.onOutcome(m, subject)),
      Subjects.allOutcomes,
    );
  }

  /** Counts (by reason) and logs one dropped telemetry message. */
  private dropped(subject: string, reason: string, message: string): void {
    this.counters.badMessages++;
    this.counters.dropped[reason] = (this.counters.dropped[reason] ?? 0) + 1;
    this.log.warn({ subject: shown(subject), reason, err: message }, 'dropped a telemetry message');
  }

  /** Runs a timer callback; a throw is logged and counted, never fatal. */
  private guarded(what: string, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.counters.timerErrors++;
      this.log.error({ what, err: errText(err) }, 'a planner timer callback failed; carrying on');
    }
  }

  /**
   * Takes one generation outcome (from NATS or a test) into the client's calibration, and
   * re-plans the client when its corrections changed.
   * @throws Error naming the field when it is malformed.
   */
  onOutcome(o: GenerationOutcome, subject?: string): void {
    const v = validateOutcome(o, { stageCount: this.opts.maker.opts.stages.length, classes: this.classNames, subject });
    if (!o.modelId) throw new TelemetryError(`GenerationOutcome.modelId must name the model (it is empty), given ''`, 'GenerationOutcome.modelId:required');
    this.checkModel(o.modelId);
    const client = this.clients.get(v.clientId);
    if (!client) {
      this.counters.strayOutcomes++;
      return;
    }
    this.counters.outcomes++;
    this.observed.outcome(v);
    const planned = client.plan?.executor?.id;
    if (v.executorId && planned && v.executorId !== planned) {
      // Learned from all the same (the client ran what it was planned, elsewhere: e.g. on an
      // alternate while its executor refused it, or before it read a move); counted, and logged.
      this.counters.otherExecutorOutcomes++;
      this.log.debug({ clientId: v.clientId, executorId: v.executorId, planned }, "an outcome from another executor than the plan's");
    }
    const classIndex = this.classIndex.get(v.requestClass); // validateOutcome let in only a class of classNames: always found
    if (classIndex === undefined)
      throw new TelemetryError(`GenerationOutcome.requestClass must be a planned class, given '${v.requestClass}'`, 'GenerationOutcome.requestClass:class');
    client.rates[classIndex].add(this.now());
    // A shed class misses by decision, not by a wrong plan: its outcomes must not tighten it.
    if (this.isShed(v.clientId, v.requestClass)) return;
    const r = this.calibrator.record(v, this.now());
    if (r.safety) {
      this.log.info({ clientId: v.clientId, requestClass: v.requestClass, placement: v.placement, ...r.safety }, SAFETY_MESSAGES[r.safety.change]);
    }
    if (r.replan) {
      this.dirty.add(v.clientId);
      this.scheduleReplan();
    }
  }

  /**
   * Takes one client profile (from NATS or a test).
   * @throws TelemetryError naming the field, the rule and the value when it is malformed or out of range (telemetry.ts).
   */
  onProfile(p: ClientProfile, subject?: string): void {
    validateProfile(p, { stageCount: this.opts.maker.opts.stages.length, modelId: this.opts.modelId, subject });
    this.counters.profiles++;
    const st = this.clients.get(p.clientId);
    // A plan from the state bucket: the client's plan in force, re-planned from (same placements keep its epoch).
    const restored = st ? undefined : this.adopted.get(p.clientId)?.plan;
    if (restored) this.adopted.delete(p.clientId);
    if (st) {
      st.profile = p;
      st.lastSeenMs = this.now();
    } else
      this.clients.set(p.clientId, {
        rates: this.opts.maker.opts.classes.map(() => new RateMeter()),
        allServerWork: undefined,
        shedSaving: undefined,
        profile: p,
        plannedWith: undefined,
        lastSeenMs: this.now(),
        plan: restored,
        pushed: restored,
      });
    // A profile that moves nothing the plan is priced from only refreshes the client's TTL.
    if (st?.plannedWith && st.plan && !profileChanged(st.plannedWith, p, this.threshold)) return;
    if (!st && !restored) this.tellWaiting(p.clientId);
    this.markDirty(p.clientId);
  }

  /**
   * Why the planner has no plan for `clientId` (WatchPlansResponse.no_plan_reason), or '' when it
   * has one. Plans need the client's profile and the followed executor's load (both over NATS).
   */
  noPlanReason(clientId: string): string {
    const st = this.clients.get(clientId);
    if (st?.plan || this.adopted.has(clientId)) return '';
    if (!st) return NO_PLAN_REASONS.noProfile;
    return this.serverLoad ? NO_PLAN_REASONS.planning : NO_PLAN_REASONS.noLoad;
  }

  /**
   * A client's first profile arrived: its watchers, told "no profile" so far, learn why there is
   * still no plan when no executor has reported its load (an executor without telemetry leaves
   * every client all-server: said once in the log too, for the operator).
   */
  private tellWaiting(clientId: string): void {
    if (this.serverLoad) return; // its plan follows within the debounce
    if (!this.warnedNoLoad) {
      this.warnedNoLoad = true;
      this.log.warn({ clientId }, `clients are waiting for plans: ${NO_PLAN_REASONS.noLoad}`);
    }
    for (const w of this.watchers.get(clientId) ?? []) w.write({ plan: undefined, noPlanReason: NO_PLAN_REASONS.noLoad });
  }

  /**
   * Takes one server load report. Reports are kept per executor id (each smoothed over its
   * own reports). With one executor (or none advertising an address), plans are priced from
   * one executor's: the one the planner follows. It follows the first executor it hears from,
   * and keeps following it while it reports; when it has been silent for the TTL
   * (`clientTtlMs`), the next executor to report is followed instead (logged), and every
   * client is re-planned from its load. Reports of the others are kept (and counted,
   * `otherLoads`) but plan nothing, so an executor id cannot overwrite the load the plans are
   * made from. With several executors advertising an address, each client is assigned one of
   * them and priced from its load (`candidates`, `choose`; docs/planner.md, "Several
   * executors"): a report re-plans every client when it moves that executor's prices
   * materially, or when the set of executors clients may be assigned changed (one drains,
   * appears, changes its address), which moves the clients of a draining executor at once.
   * The objective still follows the followed executor's utilisation.
   * @throws TelemetryError naming the field, the rule and the value when it is malformed or out of range (telemetry.ts).
   */
  onLoad(l: ServerLoad, subject?: string): void {
    validateLoad(l, { stageCount: this.opts.maker.opts.stages.length, modelId: this.opts.modelId, subject });
    const now = this.now();
    const known = this.executors.get(l.serverId);
    if (!known && this.executors.size >= MAX_EXECUTORS) {
      throw new TelemetryError(
        `ServerLoad.serverId must be one of the ${MAX_EXECUTORS} executors reporting now (no more are kept), given ${shown(l.serverId)}`,
        'ServerLoad.serverId:capacity',
      );
    }
    this.counters.loads++;
    const a = this.opts.utilisationSmoothing ?? 1;
    const prev = known?.load;
    const reported = l.utilisation;
    l = smoothLoad(prev, l, a);
    const address = l.address ?? '';
    const draining = l.draining ?? false;
    let ex = known;
    if (ex) {
      ex.load = l;
      ex.lastSeenMs = now;
      ex.address = address;
      ex.draining = draining;
    } else this.executors.set(l.serverId, (ex = { load: l, lastSeenMs: now, address, draining, plannedLoad: undefined, shed: undefined }));
    const assigning = this.checkExecutors(now) !== undefined;
    if (assigning) {
      // This executor's own shedder reads its own utilisation, among the clients assigned to it.
      if (this.planning) {
        ex.shed ??= this.newShedState();
        if (ex.shed) this.shed(reported, now, ex.shed, l.serverId);
      }
      if (this.isAssignable(ex, now) && (!ex.plannedLoad || loadChanged(ex.plannedLoad, l, this.threshold, this.opts.maker.opts.maxUtilisation))) {
        ex.plannedLoad = l;
        this.replanAll();
      }
    }
    const followed = this.followed === undefined ? undefined : this.executors.get(this.followed);
    if (this.followed !== l.serverId) {
      if (followed && now - followed.lastSeenMs <= this.opts.clientTtlMs) {
        this.counters.otherLoads++;
        return;
      }
      this.log.info({ serverId: l.serverId, before: this.followed }, "planning from this executor's load");
      this.followed = l.serverId;
      this.plannedLoad = undefined; // another executor's prices: re-plan everyone
    }
    if (!assigning && this.shedState) this.shed(reported, now, this.shedState, undefined);
    const u = l.utilisation;
    this.serverLoad = l;
    const idle = this.opts.idleUtilisation;
    const before = this.objective;
    if (u >= idle) this.objective = 'work';
    else if (u < idle / 2 && (before === 'latency' || this.latencyUtilisation(u) < idle / 2)) this.objective = 'latency';
    if (before !== this.objective) this.log.info({ utilisation: u, objective: this.objective }, 'objective changed');
    // Every plan depends on the server's prices: re-plan all clients, but only when those
    // prices moved materially since the plans in force were made (or the objective changed).
    if (before === this.objective && this.plannedLoad && !loadChanged(this.plannedLoad, l, this.threshold, this.opts.maker.opts.maxUtilisation)) return;
    this.plannedLoad = l;
    this.replanAll();
  }

  /** Queues every client for re-planning. */
  private replanAll(): void {
    for (const id of this.clients.keys()) this.dirty.add(id);
    this.scheduleReplan();
  }

  /** A fresh overload shedder's state, when shedding is on for an objective algorithm. */
  private newShedState(): ShedState | undefined {
    const o = this.opts.shedding;
    return o?.enabled && this.opts.maker.followsObjective ? { shedder: new Shedder(o), utilisation: undefined, workScale: 1 } : undefined;
  }

  /** Whether an executor may be assigned clients: it advertises an address, is not draining, and was heard within the TTL. */
  private isAssignable(ex: ExecutorState, now = this.now()): boolean {
    return ex.address !== '' && !ex.draining && now - ex.lastSeenMs <= this.opts.clientTtlMs;
  }

  /**
   * The executors clients are assigned among now (id order), or undefined when plans name no
   * executor: assignment is on while at least two executors heard within the TTL advertise an
   * address (draining ones included), or while some plan names an executor already (so that
   * the clients of an executor that drained or went silent move to the one left, and a
   * restarted planner keeps the assignments it stored); it needs one assignable executor.
   * O(executors).
   */
  candidates(now = this.now()): [string, ExecutorState][] | undefined {
    let advertised = 0;
    const out: [string, ExecutorState][] = [];
    for (const [id, ex] of this.executors) {
      if (ex.address === '' || now - ex.lastSeenMs > this.opts.clientTtlMs) continue;
      advertised++;
      if (!ex.draining) out.push([id, ex]);
    }
    if (out.length === 0 || (advertised < 2 && this.assignedTotal === 0)) return undefined;
    return out.sort((x, y) => byId(x[0], y[0]));
  }

  /**
   * Re-plans every client when the set of executors they may be assigned changed (an executor
   * drains, goes silent for the TTL, appears, or changes its address), and when assignment
   * starts or stops: the shedders start afresh then (their pairs were the old set's). Returns
   * the candidates it saw (`candidates(now)`).
   */
  private checkExecutors(now: number): [string, ExecutorState][] | undefined {
    const c = this.candidates(now);
    const key = c ? c.map(([id, ex]) => `${id}@${ex.address}`).join(',') : '';
    if (key === this.executorsKey) return c;
    const was = this.executorsKey;
    this.executorsKey = key;
    if ((was === '') !== (key === '')) {
      this.shedState = this.newShedState();
      for (const ex of this.executors.values()) ex.shed = undefined;
    }
    this.log.info({ executors: c ? c.map(([id, ex]) => ({ id, address: ex.address })) : [] }, 'the executors clients may be assigned changed');
    this.replanAll();
    return c;
  }

  /** `prev` replaced by `next` in the counts of plans per executor. */
  private countExecutor(prev: ClientPlan | undefined, next: ClientPlan | undefined): void {
    const a = prev?.executor?.id;
    const b = next?.executor?.id;
    if (a === b) return;
    if (a) {
      const n = (this.assigned.get(a) ?? 0) - 1;
      if (n > 0) this.assigned.set(a, n);
      else this.assigned.delete(a);
      this.assignedTotal--;
    }
    if (b) {
      this.assigned.set(b, (this.assigned.get(b) ?? 0) + 1);
      this.assignedTotal++;
    }
  }

  /**
   * The utilisation the server would reach if every client's plans went all-server (the most a
   * latency plan costs): the measured `u` plus, per client and class, its request rate times
   * the server work all-server would add over the plan in force. The objective returns to
   * latency only when this stays below half the threshold, so that a fleet moved to the
   * devices by the work objective is not brought back all at once onto a server that it would
   * saturate (which would send it back again: the objective would flap with the load it causes).
   * O(clients × classes), evaluated only while the objective could return to latency.
   */
  latencyUtilisation(u: number): number {
    return u + this.rateWeightedWork(this.now(), (st, i, planned) => (st.allServerWork ? Math.max(0, st.allServerWork[i] - planned) : 0));
  }

  /**
   * Σ over clients with a plan (of `executorId` when given: those whose plan names it) and
   * their classes of request rate (per s, from the outcomes) × `workOf` the class (ms;
   * `planned` is its plan's predicted server work), / 1000: a utilisation. O(clients × classes).
   */
  private rateWeightedWork(now: number, workOf: (st: ClientState, i: number, planned: number) => number, executorId?: string): number {
    let total = 0;
    for (const st of this.clients.values()) {
      if (!st.plan || (executorId !== undefined && st.plan.executor?.id !== executorId)) continue;
      for (let i = 0; i < st.rates.length; i++) {
        const r = st.rates[i].perS(now);
        if (r > 0) total += (r * workOf(st, i, st.plan.classes[i]?.predictedServerWork ?? 0)) / 1000;
      }
    }
    return total;
  }

  /**
   * One decision of an overload shedder on a load report (`u` the utilisation as reported):
   * the followed executor's while plans name no executor, else `executorId`'s, among the
   * clients assigned to it. Classes shed or given back are re-planned at once (and logged).
   */
  private shed(u: number, now: number, s: ShedState, executorId: string | undefined): void {
    if (!this.planning) return;
    s.utilisation = s.utilisation === undefined ? u : s.utilisation + SHED_SMOOTHING * (u - s.utilisation);
    // What a ms of the plans' predicted work measures on the server (the process's whole CPU,
    // not only its stages'): utilisation over the load the plans in force offer at the
    // outcomes' rates, learned while the server is not saturated (a saturated one reads 1
    // whatever is offered).
    const offered = this.offeredUtilisation(now, executorId);
    if (offered > MIN_OFFERED && u < s.shedder.opts.above) {
      const k = Math.min(Math.max(u / offered, 1), MAX_WORK_SCALE);
      s.workScale += SHED_SMOOTHING * (k - s.workScale);
    }
    const rateOf = (clientId: string, requestClass: string): number => {
      const i = this.classIndex.get(requestClass);
      const st = this.clients.get(clientId);
      return st && i !== undefined ? st.rates[i].perS(now) : 0;
    };
    const candidates = (): ShedCandidate[] => {
      const out: ShedCandidate[] = [];
      for (const [clientId, st] of this.clients) {
        if (executorId !== undefined && st.plan?.executor?.id !== executorId) continue;
        st.shedSaving?.forEach((saved, i) => {
          if (saved > 0) out.push({ clientId, requestClass: this.opts.maker.opts.classes[i].name, workSavedMs: saved, ratePerS: st.rates[i].perS(now) });
        });
      }
      return out;
    };
    const d = s.shedder.decide(s.utilisation, now, candidates, rateOf, s.workScale);
    const changed = [...d.shed, ...d.restored];
    if (changed.length === 0) return;
    this.counters.shed += d.shed.length;
    this.counters.restored += d.restored.length;
    const pairs = (cs: readonly ShedCandidate[]): string[] => cs.map((c) => `${c.clientId}/${c.requestClass}`);
    // An overload is the operator's to see (warn); its end is routine (info).
    const fields = {
      ...(executorId !== undefined ? { executor: executorId } : {}),
      utilisation: Number(s.utilisation.toFixed(3)),
      shed: pairs(d.shed),
      restored: pairs(d.restored),
      shedNow: s.shedder.shed.length,
    };
    if (d.shed.length) this.log.warn(fields, 'server overloaded: shedding classes to their least-work plans');
    else this.log.info(fields, 'server has room again: giving shed classes their plans back');
    for (const c of changed) this.dirty.add(c.clientId);
    this.scheduleReplan();
  }

  /** The utilisation the plans in force offer (those naming `executorId` when given): Σ over clients and classes of request rate × predicted server work. */
  offeredUtilisation(now: number, executorId?: string): number {
    return this.rateWeightedWork(now, (_st, _i, planned) => planned, executorId);
  }

  /** Server time per ms of predicted work, as the followed executor's shedder uses it (1 until learned, or while plans name executors). */
  get workScale(): number {
    return this.shedState?.workScale ?? 1;
  }

  /** The shedder deciding for a client now: its executor's while plans name executors, else the followed executor's. */
  private shedderOf(clientId: string): Shedder | undefined {
    if (this.executorsKey === '') return this.shedState?.shedder;
    const e = this.clients.get(clientId)?.plan?.executor?.id;
    return e ? this.executors.get(e)?.shed?.shedder : undefined;
  }

  /** Whether a client's class is shed now. */
  private isShed(clientId: string, requestClass: string): boolean {
    return this.shedderOf(clientId)?.isShed(clientId, requestClass) ?? false;
  }

  /** Every shed pair now, first shed first (per executor, in executor order, while plans name executors). */
  private shedPairs(): readonly ShedCandidate[] {
    if (this.executorsKey === '') return this.shedState?.shedder.shed ?? [];
    return [...this.executors.values()].flatMap((ex) => ex.shed?.shedder.shed ?? []);
  }

  /** Classes shed to their least-work plans now, as `clientId/requestClass`, first shed first. */
  get shedClasses(): string[] {
    return this.shedPairs().map((c) => `${c.clientId}/${c.requestClass}`);
  }

  /** Queues one client for re-planning (e.g. its calibration changed). */
  markDirty(clientId: string): void {
    if (!this.clients.has(clientId)) return;
    this.dirty.add(clientId);
    this.scheduleReplan();
  }

  private checkModel(modelId: string): void {
    if (modelId && this.opts.modelId && modelId !== this.opts.modelId) {
      throw new TelemetryError(
        `modelId must be ${shown(this.opts.modelId)} (the model this planner plans for), given ${shown(modelId)}`,
        'GenerationOutcome.modelId:model',
      );
    }
  }

  /** The executor whose load plans are priced from (undefined until one reported). */
  get followedExecutor(): string | undefined {
    return this.followed;
  }

  private scheduleReplan(): void {
    if (this.replanTimer || this.slicing || this.stopped || !this.planning) return;
    this.replanTimer = setTimeout(() => {
      this.replanTimer = undefined;
      this.guarded('replan', () => this.runSlices());
    }, this.opts.debounceMs);
  }

  /**
   * Drains the dirty set in slices of at most `sliceMs`, yielding to the event loop between
   * them (setImmediate), so health checks, plan streams and telemetry are served during a
   * re-plan of many clients. A client marked dirty again while a pass runs is re-solved once
   * more, after the others (the set keeps arrival order).
   */
  private runSlices(): void {
    if (this.stopped || !this.planning) {
      this.slicing = false;
      return;
    }
    if (!this.slicing) {
      this.slicing = true;
      this.beginRound();
    }
    this.counters.slices++;
    const until = performance.now() + this.sliceMs;
    do {
      const id = this.dirty.shift();
      if (id === undefined) break;
      this.replanGuarded(id);
    } while (performance.now() < until);
    if (this.dirty.size > 0) {
      setImmediate(() => this.guarded('replan', () => this.runSlices()));
      return;
    }
    this.slicing = false;
    this.counters.passes++;
    this.counters.lastPassMs = performance.now() - this.round.startedMs;
    this.endRound();
  }

  /** Re-solves every queued client at once, without yielding (tests and tools): one round. */
  replan(): void {
    if (!this.planning) return;
    this.beginRound();
    for (const id of this.dirty.toArray()) {
      this.dirty.delete(id);
      this.replanGuarded(id);
    }
    this.endRound();
  }

  private beginRound(): void {
    this.round = { epoch: 0, replanned: 0, changed: 0, refreshed: 0, moved: 0, errors: 0, startedMs: performance.now() };
    this.roundAdded.clear();
  }

  /** One info line per round that changed a plan or failed to plan a client (per-client changes are logged at debug). */
  private endRound(): void {
    const r = this.round;
    this.observed.replanRound(performance.now() - r.startedMs);
    if (r.changed === 0 && r.errors === 0) {
      if (r.refreshed > 0) this.log.debug({ epoch: r.epoch, replanned: r.replanned, refreshed: r.refreshed }, 'predictions sent again');
      return;
    }
    this.log.info(
      {
        epoch: r.epoch,
        replanned: r.replanned,
        changed: r.changed,
        ...(r.refreshed > 0 ? { refreshed: r.refreshed } : {}),
        ...(r.moved > 0 ? { movedExecutor: r.moved } : {}),
        errors: r.errors,
        clients: this.clients.size,
        passMs: Math.round(performance.now() - r.startedMs),
      },
      'plans changed',
    );
  }

  /**
   * The epoch of a plan changed in this round: the round's (allocated at its first change),
   * or a fresh one when this client's plan already carries the round's (changed twice in one round).
   */
  private epochFor(prev: ClientPlan | undefined): number {
    if (this.round.epoch === 0 || (prev && prev.epoch >= this.round.epoch)) {
      this.lastEpoch = Math.max(this.lastEpoch + 1, this.now());
      this.round.epoch = this.lastEpoch;
      this.state?.writeEpoch(this.lastEpoch);
    }
    return this.round.epoch;
  }

  /** replanClient, with a throw logged and counted: the client keeps the plan in force, the round goes on. */
  private replanGuarded(id: string): void {
    try {
      this.replanClient(id);
    } catch (err) {
      this.counters.planErrors++;
      this.round.errors++;
      this.log.error({ clientId: id, err: errText(err) }, 'planning a client failed; its plan in force stays');
    }
  }

  /** Re-solves one client's plan; pushes it to the client's streams when a placement changed. */
  private replanClient(id: string): void {
    const st = this.clients.get(id);
    if (!st) return;
    const now = this.now();
    if (now - st.lastSeenMs > this.opts.clientTtlMs) {
      this.forget(id);
      return;
    }
    const candidates = this.candidates(now);
    if (candidates && st.plan && now - this.startedMs < this.opts.clientTtlMs && this.namesUnheard(st.plan)) {
      // A stored plan names an executor this planner has not heard from yet (it restarted): the
      // plan stays as it is until that executor reports or the client TTL since the start passed,
      // so that a restart does not move clients by the order the executors happen to report in.
      this.waitedForExecutor = true;
      return;
    }
    this.counters.replans++;
    this.round.replanned++;
    const priced = candidates ? this.choose(id, st, candidates, now) : this.priceOn(id, st, undefined, this.serverLoad, now);
    if (!priced) return;
    const { classes } = priced;
    const executor: ExecutorAssignment | undefined = candidates ? { id: priced.id, address: priced.ex.address } : undefined;
    const alternates: ExecutorAssignment[] = candidates ? priced.alternates.map((p) => ({ id: p.id, address: p.ex.address })) : [];
    st.plannedWith = st.profile;
    st.allServerWork = priced.allServerWork;
    st.shedSaving = priced.shedSaving;
    const prev = st.plan;
    const changed =
      !prev ||
      classes.some((c, i) => {
        const was = prev.classes[i];
        return !was || planKey(c) !== planKey(was);
      }) ||
      !sameAssignment(prev.executor, executor) ||
      assignmentsKey(prev.alternates) !== assignmentsKey(alternates);
    if (!changed) {
      // Same placements, executor and alternates: the predictions (and the alternates' order)
      // are refreshed (shown by ListPlans). The client gets them, with a new epoch (not a plan
      // change), only when they moved from what it holds by more than the push threshold.
      st.plan = { ...prev, classes, alternates };
      if (predictionsMoved(st.pushed ?? prev, classes, this.predictionPushThreshold)) {
        st.plan = { ...st.plan, epoch: this.epochFor(prev), createdUnixMs: now };
        this.round.refreshed++;
        this.counters.predictionPushes++;
        this.push(id, st);
      }
      this.afterPlan(id, st.plan, now);
      return;
    }
    if (executor && prev?.executor && prev.executor.id !== executor.id) {
      this.round.moved++;
      this.counters.executorMoves++;
      // Its shed pairs were the old executor's decision.
      this.executors.get(prev.executor.id)?.shed?.shedder.forget(id);
      this.log.debug({ clientId: id, from: prev.executor.id, to: executor.id }, 'client moved to another executor');
    }
    st.plan = {
      clientId: id,
      epoch: this.epochFor(st.plan),
      classes,
      algorithm: this.opts.maker.opts.algorithm,
      createdUnixMs: now,
      ...(executor ? { executor } : {}),
      alternates,
    };
    this.countExecutor(prev, st.plan);
    this.round.changed++;
    this.observed.planChanged(this.opts.maker.opts.algorithm, this.objective);
    this.log.debug({ clientId: id, epoch: st.plan.epoch, placements: classes.map((c) => `${c.name}=${planKey(c)}`) }, 'plan changed');
    this.push(id, st);
    this.afterPlan(id, st.plan, now);
  }

  /** Whether a plan names (as its executor or an alternate) an executor whose load this planner does not hold. */
  private namesUnheard(plan: ClientPlan): boolean {
    if (plan.executor && !this.executors.has(plan.executor.id)) return true;
    return plan.alternates.some((a) => !this.executors.has(a.id));
  }

  /**
   * One client's plan priced on one executor's load (`executorId` undefined: the followed
   * executor's, as plans are made while they name no executor). Undefined when there is no
   * load to price from yet. `score` and `util` are what `choose` compares (docs/planner.md,
   * "Several executors").
   */
  private priceOn(
    id: string,
    st: ClientState,
    executorId: string | undefined,
    load: ServerLoad | undefined,
    now: number,
  ): (Priced & { alternates: Priced[] }) | undefined {
    const ex = executorId === undefined ? undefined : this.executors.get(executorId);
    const shedder = executorId === undefined ? this.shedState : ex?.shed;
    const allServerWork = this.opts.idleUtilisation > 0 && this.opts.maker.followsObjective ? [] : undefined;
    const shedSaving = shedder ? [] : undefined;
    const classes = this.opts.maker.plan(st.profile, load, st.plan?.classes, this.objective, this.adjustments(id, shedder?.shedder), allServerWork, shedSaving);
    if (!classes || !load) return undefined;
    let cost = 0;
    let missed = 0;
    let util = 0;
    const rates = st.rates.map((r) => r.perS(now));
    const ratesKnown = rates.some((r) => r > 0);
    classes.forEach((c, i) => {
      // Classes weigh by their request rates once outcomes showed them, alike until then.
      const w = ratesKnown ? rates[i] : 1;
      cost += w * (this.objective === 'work' ? c.predictedServerWork : c.predictedLatencyMs);
      util += (rates[i] * c.predictedServerWork) / 1000;
      if (!c.feasible) missed++;
    });
    const maxU = this.opts.maker.opts.maxUtilisation;
    const u = Math.min(Math.max(load.utilisation + (executorId === undefined ? 0 : (this.roundAdded.get(executorId) ?? 0)), 0), maxU);
    return {
      id: executorId ?? '',
      ex: ex ?? { load, lastSeenMs: now, address: '', draining: false, plannedLoad: undefined, shed: undefined },
      classes,
      allServerWork,
      shedSaving,
      missed,
      score: cost / (1 - u),
      util: util * (shedder?.workScale ?? 1),
      alternates: [],
    };
  }

  /**
   * The executor a client's plan names, among `candidates` (id order), with the others as its
   * alternates, best first. Each is priced with its own load (PlanMaker.plan on its smoothed
   * report), its utilisation raised by what this round moved onto it; fewest classes missing
   * their SLOs first, then the least score (the objective's cost over 1 − that utilisation).
   * The client stays on its executor unless another misses fewer classes or scores lower by
   * more than the hysteresis; a client without one (new, or its executor drained or went
   * silent) takes, among those within the hysteresis of the best, the one fewest plans name.
   * O(candidates × one plan).
   */
  private choose(id: string, st: ClientState, candidates: readonly [string, ExecutorState][], now: number): (Priced & { alternates: Priced[] }) | undefined {
    const all: Priced[] = [];
    for (const [eid, ex] of candidates) {
      const p = this.priceOn(id, st, eid, ex.load, now);
      if (p) all.push(p);
    }
    if (all.length === 0) return undefined;
    const order = (a: Priced, b: Priced): number => a.missed - b.missed || a.score - b.score || byId(a.id, b.id);
    all.sort(order);
    const best = all[0];
    const h = this.opts.maker.opts.hysteresis;
    const cur = st.plan?.executor?.id;
    const current = all.find((p) => p.id === cur);
    let pick = best;
    if (current) {
      if (best.missed >= current.missed && best.score >= current.score * (1 - h)) pick = current;
    } else {
      for (const p of all) {
        if (p.missed !== best.missed || p.score > best.score * (1 + h)) continue;
        const np = this.assigned.get(p.id) ?? 0;
        const nk = this.assigned.get(pick.id) ?? 0;
        if (np < nk) pick = p;
      }
    }
    if (pick.id !== cur) {
      this.roundAdded.set(pick.id, (this.roundAdded.get(pick.id) ?? 0) + pick.util);
      if (current) this.roundAdded.set(current.id, (this.roundAdded.get(current.id) ?? 0) - current.util);
    }
    return { ...pick, alternates: all.filter((p) => p !== pick) };
  }

  /**
   * The calibrator's adjustments of one client, with the classes `shedder` sheds marked: the
   * shedder of the executor the plan is priced on (shed pairs are that executor's decision: on
   * another executor the client is priced unshed).
   */
  private adjustments(id: string, shedder: Shedder | undefined): ((requestClass: string) => ClassAdjustment | undefined) | undefined {
    const learned = this.calibrator.adjustments(id);
    if (!shedder) return learned;
    return (requestClass) => {
      const a = learned?.(requestClass);
      return shedder.isShed(id, requestClass) ? { slaScale: a?.slaScale ?? 1, allServer: a?.allServer ?? false, shed: true } : a;
    };
  }

  /** Writes the client's plan to the state bucket and to each of its plan streams. */
  private push(id: string, st: ClientState): void {
    const plan = st.plan;
    if (!plan) return;
    st.pushed = plan;
    this.state?.writePlan(plan);
    this.sendToWatchers(id, plan);
  }

  /** Sends `plan` on each of the client's plan streams. */
  private sendToWatchers(id: string, plan: ClientPlan): void {
    for (const w of this.watchers.get(id) ?? []) {
      w.write({ plan, noPlanReason: '' });
      this.counters.plansPushed++;
    }
  }

  /** Tells the calibrator what was planned; a tighten step that left the placement as it was is followed by another. */
  private afterPlan(id: string, plan: ClientPlan, now: number): void {
    if (this.calibrator.planned(id, plan.classes, plan.epoch, now)) {
      this.dirty.add(id);
      this.scheduleReplan();
    }
  }

  /** Drops a client the planner has not heard from for the TTL, with its calibration (its plan streams stay open). */
  private forget(id: string): void {
    const plan = this.clients.get(id)?.plan;
    if (this.state && plan) {
      // The leader deletes the stored plan; a standby keeps serving it (the leader decides when a client is gone).
      if (this.planning) this.state.deletePlan(id);
      else this.adopted.set(id, { plan, atMs: this.now() });
    }
    this.shedderOf(id)?.forget(id);
    this.clients.delete(id);
    this.dirty.delete(id);
    this.calibrator.forget(id);
    // A standby keeps serving the plan (adopted above): it still names its executor.
    if (!this.state || this.planning) this.countExecutor(plan, undefined);
  }

  /** Forgets clients, and executors other than the followed one, not heard from for the TTL. */
  private forgetSilentClients(): void {
    const now = this.now();
    for (const [id, st] of this.clients) {
      if (now - st.lastSeenMs > this.opts.clientTtlMs) this.forget(id);
    }
    if (this.state && this.planning) {
      for (const [id, a] of this.adopted) {
        if (now - a.atMs <= this.opts.clientTtlMs) continue;
        this.adopted.delete(id);
        this.countExecutor(a.plan, undefined);
        this.state.deletePlan(id);
      }
    }
    for (const [id, ex] of this.executors) {
      if (id !== this.followed && now - ex.lastSeenMs > this.opts.clientTtlMs) this.executors.delete(id);
    }
    // An executor silent for the TTL is no longer assigned: its clients move now.
    this.checkExecutors(now);
    if (this.waitedForExecutor && now - this.startedMs >= this.opts.clientTtlMs) {
      this.waitedForExecutor = false;
      this.replanAll();
    }
  }

  /** The followed executor's load report the plans are priced from, smoothed (undefined until one reported). */
  get load(): ServerLoad | undefined {
    return this.serverLoad;
  }

  /** The client class a known client's latest profile states (undefined for a client the planner does not know). */
  clientClassOf(clientId: string): string | undefined {
    return this.clients.get(clientId)?.profile.clientClass;
  }

  /** Executors whose load reports are kept now (the followed one and the others heard within the TTL). */
  get executorIds(): string[] {
    return [...this.executors.keys()];
  }

  /** Every executor whose load report is kept, with the plans naming it (ListPlansResponse.executors), in id order. */
  executorSummaries(): ExecutorSummary[] {
    return [...this.executors.entries()]
      .sort((x, y) => byId(x[0], y[0]))
      .map(([id, ex]) => ({
        id,
        address: ex.address,
        clients: this.assigned.get(id) ?? 0,
        utilisation: ex.load.utilisation,
        draining: ex.draining,
        lastReportUnixMs: ex.lastSeenMs,
      }));
  }

  /** Client ids with open plan streams (a client whose last stream closed is not listed). */
  get watchedClients(): string[] {
    return [...this.watchers.keys()];
  }

  /** What the planner optimises now. */
  get currentObjective(): Objective {
    return this.objective;
  }

  /** Current plans, ordered by client id (code-unit order: ids are ASCII, see ID_PATTERN). */
  plans(): ClientPlan[] {
    const held = [...this.clients.values()].flatMap((c) => (c.plan ? [c.plan] : []));
    for (const a of this.adopted.values()) held.push(a.plan);
    return held.sort((a, b) => (a.clientId < b.clientId ? -1 : a.clientId > b.clientId ? 1 : 0));
  }

  /**
   * One page of `plans()`: at most `pageSize` plans (0: DEFAULT_PLANS_PAGE_SIZE; more than
   * MAX_PLANS_PAGE_SIZE: that many) of clients after the one `pageToken` names (empty: from
   * the first), and the token of the next page (empty on the last). Keyset paging: a client
   * added or forgotten between pages does not shift the others.
   * @throws ValidationError naming page_token when it is not a token this planner issued.
   */
  plansPage(pageSize: number, pageToken: string): { plans: ClientPlan[]; nextPageToken: string } {
    const size = pageSize === 0 ? DEFAULT_PLANS_PAGE_SIZE : Math.min(pageSize, MAX_PLANS_PAGE_SIZE);
    const after = pageToken === '' ? undefined : clientIdOfPageToken(pageToken);
    const all = this.plans();
    const from = after === undefined ? 0 : all.findIndex((p) => p.clientId > after);
    const page = from < 0 ? [] : all.slice(from, from + size);
    const more = from >= 0 && from + size < all.length;
    return { plans: page, nextPageToken: more ? pageTokenOf(page[page.length - 1].clientId) : '' };
  }

  /** What was observed of each client with a plan, in the order of `plans()`. */
  observations(plans: readonly ClientPlan[] = this.plans()): ClientObservations[] {
    return plans.map((p) => ({
      clientId: p.clientId,
      classes: this.calibrator.observations(
        p.clientId,
        p.classes.map((c) => c.name),
      ),
    }));
  }

  /**
   * The handlers, behind the planner's edge (serveWithEdge): what they throw is answered with
   * its status (ValidationError: INVALID_ARGUMENT; AuthError: UNAUTHENTICATED or
   * PERMISSION_DENIED, with tokens only; anything else INTERNAL, logged).
   */
  private handlers(): PlannerServiceServer {
    // With tokens: who the caller is (the interceptor already let only known tokens in); undefined without.
    const identity = (metadata: grpc.Metadata): string | undefined => this.opts.security?.tokens?.authenticate(metadata);
    return {
      watchPlans: (call: grpc.ServerWritableStream<WatchPlansRequest, WatchPlansResponse>) => {
        const id = call.request.clientId;
        if (!ID_PATTERN.test(id)) throw new ValidationError(`client_id must match ${ID_PATTERN}, given ${shown(id)}`);
        checkIdentity(identity(call.metadata), 'client_id', id);
        let set = this.watchers.get(id);
        if (!set) this.watchers.set(id, (set = new Set()));
        set.add(call);
        const remove = (): void => {
          // The set of a client whose last watcher left goes too (a client id is any string a caller sends).
          const s = this.watchers.get(id);
          if (!s) return;
          s.delete(call);
          if (s.size === 0) this.watchers.delete(id);
        };
        call.on('cancelled', remove);
        call.on('close', remove);
        const plan = this.clients.get(id)?.plan ?? this.adopted.get(id)?.plan;
        if (plan) {
          call.write({ plan, noPlanReason: '' });
          this.counters.plansPushed++;
        } else call.write({ plan: undefined, noPlanReason: this.noPlanReason(id) });
      },
      listPlans: (call, cb) => {
        const caller = identity(call.metadata);
        if (caller !== undefined && caller !== OPERATOR_IDENTITY) {
          throw new AuthError(
            grpc.status.PERMISSION_DENIED,
            `ListPlans must be called with an operator token (identity '*'; it shows every client's plan), given the token of '${caller}'`,
          );
        }
        const page = this.plansPage(call.request.pageSize, call.request.pageToken);
        cb(null, {
          plans: page.plans,
          observations: this.observations(page.plans),
          nextPageToken: page.nextPageToken,
          executors: call.request.pageToken === '' ? this.executorSummaries() : [],
          ...(this.state ? { plannerRole: this.state.role } : {}),
        });
      },
    };
  }

  /** Ends every plan stream (agents keep their last plan), closes the server and NATS. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    clearTimeout(this.replanTimer);
    clearInterval(this.sweepTimer);
    this.health.set('', ServingStatus.NOT_SERVING);
    this.health.set(PLANNER_SERVICE_NAME, ServingStatus.NOT_SERVING);
    for (const set of this.watchers.values()) for (const w of set) w.end();
    this.watchers.clear();
    this.health.closeWatchers();
    // A leader writes what is queued and releases its lease first, so a standby takes over at once.
    await this.state?.stop();
    await shutdownServer(this.server);
    await this.metrics.stop();
    if (this.nc) await this.nc.close().catch((err: unknown) => this.log.warn({ err }, 'closing NATS failed'));
  }
}
