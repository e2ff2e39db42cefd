import { isPlacementLetters, planKey } from '@tandem/dp';
import * as grpc from '@grpc/grpc-js';
import {
  addressList,
  addressListProblem,
  addressProblem,
  channelOptions,
  ID_PATTERN,
  PlannerServiceClient,
  capStatus,
  quoted,
  type ExecutorAssignment,
  type Keepalive,
  type ClassPlacement,
  type ClientPlan,
  type WatchPlansResponse,
} from '@tandem/protocol';
import { clientOptions, type ClientSecurity, type Logger } from '@tandem/service-kit';

/** The placement a generation will use, frozen at its start. */
export interface ChosenPlacement {
  /** The prefill's placement (the whole generation's when `decodePlacement` is absent). */
  readonly placement: string;
  /** A phased plan's decode placement, only when it differs from `placement`. */
  readonly decodePlacement?: string;
  readonly epoch: number;
  readonly requestClass: string;
  readonly slaMs: number;
}

/**
 * Follows this client's plan stream from the planner. Starts all-server (epoch 0; all-device
 * on a private device) until a plan arrives; keeps the last good plan while the planner is away and reconnects with
 * backoff (250 ms doubling to 5 s). A plan that does not fit this device (wrong length,
 * other letters, a 'C' on a stage it cannot run) is refused and logged; the previous one stays.
 *
 * Epochs order plans within one stream only: the first plan of each new stream is the
 * planner's current plan and is taken whatever its epoch (a restarted planner numbers its
 * epochs from its own clock again, which may be behind the epoch held); a later plan on the
 * same stream is taken only with a higher epoch than the stream's previous one.
 */
export class PlanFollower {
  private plan: ClientPlan | undefined;
  private client: PlannerServiceClient | undefined;
  /** The planners' addresses (PLANNER_ADDR, comma-separated), and which one is watched now. */
  private readonly addrs: readonly string[];
  private addrIndex = 0;
  private call: grpc.ClientReadableStream<WatchPlansResponse> | undefined;
  private stopped = false;
  private backoffMs = 250;
  private retryTimer: NodeJS.Timeout | undefined;
  private listeners: ((p: ClientPlan) => void)[] = [];
  /** The planner's reason for having no plan for this client (WatchPlansResponse.no_plan_reason), while it has none. */
  private plannerReason = '';
  /** Why the last plan stream ended, or the last plan refused, for {@link noPlanReason}. */
  private lastProblem = '';
  connected = false;

  constructor(
    private readonly opts: {
      plannerAddr: string | undefined;
      upstream?: ClientSecurity;
      keepalive?: Keepalive;
      /** Largest gRPC message sent or accepted, bytes (AGENT_MAX_MESSAGE_BYTES, as on every connection of the agent). */
      maxMessageBytes: number;
      clientId: string;
      stageCount: number;
      canRun: (stage: number) => boolean;
      /** AGENT_PRIVATE: refuse plans that put the first or last stage on the server; with no plan, run every stage here. */
      private?: boolean;
    },
    private readonly log: Logger,
  ) {
    const problem = opts.plannerAddr ? addressListProblem(opts.plannerAddr, MAX_PLANNERS) : undefined;
    if (problem) throw new Error(`PLANNER_ADDR ${problem}, given ${quoted(opts.plannerAddr ?? '')}`);
    this.addrs = opts.plannerAddr ? addressList(opts.plannerAddr) : [];
  }

  start(): void {
    if (this.addrs.length === 0) return;
    this.connect();
    this.watch();
  }

  /** The planner watched now (one of PLANNER_ADDR's), or undefined without a planner. */
  get plannerAddr(): string | undefined {
    return this.addrs[this.addrIndex];
  }

  private connect(): void {
    this.client?.close();
    this.client = new PlannerServiceClient(
      this.addrs[this.addrIndex],
      this.opts.upstream?.credentials ?? grpc.credentials.createInsecure(),
      clientOptions(this.opts.upstream, channelOptions(this.opts.maxMessageBytes, this.opts.keepalive)),
    );
  }

  /** The current plan, if any. */
  current(): ClientPlan | undefined {
    return this.plan;
  }

  /**
   * Why no plan is followed (every generation runs all-server; all-device on a private device), or '' while one is: no planner
   * configured, the planner not reached, the planner's own reason (e.g. no executor has reported
   * its load yet), or a plan refused as unfit for this device.
   */
  noPlanReason(): string {
    if (this.plan) return '';
    if (!this.opts.plannerAddr)
      return `no planner configured (PLANNER_ADDR is 'off'): every generation runs ${this.opts.private ? 'on this device (AGENT_PRIVATE)' : 'all-server'}`;
    if (!this.connected) return `not connected to the planner at ${this.plannerAddr}${this.lastProblem ? `: ${this.lastProblem}` : ' yet'}`;
    if (this.lastProblem) return this.lastProblem;
    if (this.plannerReason) return `the planner has no plan for this client yet: ${this.plannerReason}`;
    return "waiting for the planner's first plan";
  }

  /** Calls `fn` with every plan accepted from now on. */
  onPlan(fn: (p: ClientPlan) => void): void {
    this.listeners.push(fn);
  }

  /** The placement for a prompt of `promptTokens` tokens: the first class that covers it, else the last class. */
  choose(promptTokens: number): ChosenPlacement {
    const plan = this.plan;
    if (!plan || plan.classes.length === 0) {
      // Without a plan: all-server, or for a private device everything here (its token ids stay).
      return { placement: (this.opts.private ? 'C' : 'S').repeat(this.opts.stageCount), epoch: 0, requestClass: 'default', slaMs: 0 };
    }
    const cls: ClassPlacement = plan.classes.find((c) => promptTokens <= c.maxPromptTokens) ?? plan.classes[plan.classes.length - 1];
    const decode = cls.decodePlacement;
    return {
      placement: cls.placement,
      ...(decode && decode !== cls.placement ? { decodePlacement: decode } : {}),
      epoch: plan.epoch,
      requestClass: cls.name,
      slaMs: cls.slaMs,
    };
  }

  /**
   * Why a plan cannot be followed by this device, or undefined when it can. A phased class's
   * `decode_placement` (absent or empty: none) is checked by the same rules as its `placement`.
   */
  problem(plan: ClientPlan): string | undefined {
    const executors = executorsProblem(plan);
    if (executors) return executors;
    for (const [i, c] of plan.classes.entries()) {
      const placements: [string, string][] = [['placement', c.placement]];
      if (c.decodePlacement) placements.push(['decodePlacement', c.decodePlacement]);
      for (const [field, p] of placements) {
        if (!isPlacementLetters(p, this.opts.stageCount)) {
          return `classes[${i}].${field} must be ${this.opts.stageCount} letters C or S, given ${quoted(p)}`;
        }
        const bad = [...p].findIndex((ch, s) => ch === 'C' && !this.opts.canRun(s));
        if (bad >= 0) return `classes[${i}].${field} puts stage ${bad} on this client, which does not hold it`;
        const leak = privacyProblem(p, this.opts.private === true);
        if (leak) return `classes[${i}].${field} ${leak}`;
      }
    }
    return undefined;
  }

  private watch(): void {
    if (this.stopped || !this.client) return;
    const call = this.client.watchPlans({ clientId: this.opts.clientId });
    this.call = call;
    /** Epoch of the last plan this stream delivered (-1: none yet, so its first is taken whatever its epoch). */
    let streamEpoch = -1;
    call.on('data', (m: WatchPlansResponse) => {
      if (this.call !== call) return;
      this.connected = true;
      this.lastProblem = '';
      this.backoffMs = 250;
      const plan = m.plan;
      if (!plan) {
        this.plannerReason = capStatus(m.noPlanReason, 300);
        return;
      }
      if (plan.epoch <= streamEpoch) return;
      streamEpoch = plan.epoch;
      if (this.plan && plan.epoch === this.plan.epoch && plan.createdUnixMs === this.plan.createdUnixMs) return; // the plan held, sent again on a new stream
      const problem = this.problem(plan);
      if (problem) {
        this.log.warn({ epoch: plan.epoch, problem }, 'refused a plan');
        this.lastProblem = `refused the planner's plan (epoch ${plan.epoch}): ${problem}`;
        return;
      }
      this.plan = plan;
      this.plannerReason = '';
      this.log.info(
        {
          epoch: plan.epoch,
          classes: plan.classes.map((c) => `${c.name}=${planKey(c)}`),
          ...(plan.executor ? { executor: `${plan.executor.id}@${plan.executor.address}`, alternates: plan.alternates.length } : {}),
        },
        'new plan',
      );
      for (const l of this.listeners) l(plan);
    });
    const again = (why: string): void => {
      if (this.call !== call) return;
      this.connected = false;
      this.lastProblem = capStatus(why, 300);
      this.plannerReason = '';
      this.call = undefined;
      if (this.stopped) return;
      // With several planners (they share their plans through the state bucket, and a standby
      // serves the leader's), the next stream goes to the next one: a planner that died is left
      // at once, and the first plan of the new stream is taken whatever its epoch.
      const from = this.addrs[this.addrIndex];
      if (this.addrs.length > 1) {
        this.addrIndex = (this.addrIndex + 1) % this.addrs.length;
        this.connect();
      }
      this.log.debug({ why, from, to: this.addrs[this.addrIndex], retryInMs: this.backoffMs }, 'plan stream lost; keeping the last plan');
      this.retryTimer = setTimeout(() => this.watch(), this.backoffMs);
      this.retryTimer.unref();
      this.backoffMs = Math.min(5000, this.backoffMs * 2);
    };
    call.on('error', (e: grpc.ServiceError) => again(e.details || e.message));
    call.on('end', () => again('stream ended'));
  }

  stop(): void {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    this.call?.cancel();
    this.client?.close();
  }
}

/** Most planners PLANNER_ADDR may list. */
export const MAX_PLANNERS = 8;

/** Most alternates a plan may name (ClientPlan.alternates); more is refused as a bad plan. */
export const MAX_ALTERNATES = 8;

/**
 * Why the executors a plan names (ClientPlan.executor, .alternates) cannot be followed, or
 * undefined when they can: each must have an id as executors publish them (ID_PATTERN) and an
 * address host:port (addressProblem); at most MAX_ALTERNATES alternates. The agent connects to
 * them with its own TLS trust and token only (docs/security.md).
 */
export function executorsProblem(plan: Pick<ClientPlan, 'executor' | 'alternates'>): string | undefined {
  const check = (field: string, e: ExecutorAssignment): string | undefined => {
    if (!ID_PATTERN.test(e.id)) return `${field}.id must be 1..64 letters, digits, - or _, given ${quoted(e.id)}`;
    const bad = addressProblem(e.address);
    return bad ? `${field}.address ${bad}, given ${quoted(e.address)}` : undefined;
  };
  if (plan.executor) {
    const p = check('executor', plan.executor);
    if (p) return p;
  }
  if (plan.alternates.length > MAX_ALTERNATES) return `alternates must name at most ${MAX_ALTERNATES} executors, given ${plan.alternates.length}`;
  for (const [i, a] of plan.alternates.entries()) {
    const p = check(`alternates[${i}]`, a);
    if (p) return p;
  }
  return undefined;
}

/**
 * Why `placement` ('C'/'S' per stage) would send a private device's token ids or text to the
 * server (its first or last stage there), or undefined when it would not (or the device is not
 * private). O(1).
 */
export function privacyProblem(placement: string, isPrivate: boolean): string | undefined {
  if (!isPrivate) return undefined;
  const last = placement.length - 1;
  if (placement[0] === 'S') return 'puts stage 0 (token ids in) on the server, which AGENT_PRIVATE forbids';
  if (placement[last] === 'S') return `puts stage ${last} (tokens out) on the server, which AGENT_PRIVATE forbids`;
  return undefined;
}
