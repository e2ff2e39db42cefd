import * as grpc from '@grpc/grpc-js';
import {
  ClientProfile,
  GenerationOutcome,
  HealthReporter,
  ID_PATTERN,
  PlannerServiceService,
  ServerLoad,
  ServingStatus,
  Subjects,
  type ClientObservations,
  type ClientPlan,
  type PlannerServiceServer,
  type WatchPlansRequest,
  type WatchPlansResponse,
} from '@tandem/protocol';
import { bindInsecure, connectNats, type Logger, type NatsConnection, shutdownServer } from '@tandem/service-kit';
import { Calibrator, DEFAULT_CALIBRATION } from './calibration';
import { validateOutcome } from './outcomes';
import type { Objective, PlanMaker } from './plan-maker';

export interface PlannerServerOptions {
  readonly maker: PlanMaker;
  /** Learns from the agents' outcomes (default: a Calibrator with DEFAULT_CALIBRATION). */
  readonly calibrator?: Calibrator;
  readonly log: Logger;
  readonly address: string;
  readonly natsUrl: string;
  /** Id of the model planned for (see modelIdOf); telemetry about another model is refused. Empty accepts any. */
  readonly modelId: string;
  readonly clientTtlMs: number;
  readonly debounceMs: number;
  /**
   * Telemetry changes a plan's inputs materially when some priced figure (a stage time, a
   * link's latency or throughput, the server's load-inflated stage time) moved by more than
   * this fraction since the client was last planned; smaller changes re-plan nothing.
   * Default 0.02.
   */
  readonly replanThreshold?: number;
  /** Longest a re-plan runs before yielding to the event loop, ms. Default 10. */
  readonly sliceMs?: number;
  /**
   * Below this server utilisation the planner optimises latency (the server has capacity to
   * spare); at or above it, server work under the SLA. It returns to latency only below half
   * this value, so the objective does not flap. 0 always optimises work.
   */
  readonly idleUtilisation: number;
  /**
   * Weight of a new load report's utilisation (and mean queue wait) in the smoothed figures the
   * planner prices and chooses its objective by (an exponential moving average; 1 = no
   * smoothing). One interval's utilisation swings with single prefills at low rates; plans
   * should not. Default 1.
   */
  readonly utilisationSmoothing?: number;
  /** Wall clock in Unix ms (injected for tests). */
  readonly now?: () => number;
}

interface ClientState {
  /** The latest profile received. */
  profile: ClientProfile;
  /** The profile the current plan was made from (undefined until the first plan). */
  plannedWith: ClientProfile | undefined;
  lastSeenMs: number;
  plan: ClientPlan | undefined;
}

/** |a - b| relative to the larger of the two; figures below `floor` count as `floor` (noise on ~0 ms stages is not a change). */
function relChange(a: number, b: number, floor = 1e-3): number {
  return Math.abs(a - b) / Math.max(Math.abs(a), Math.abs(b), floor);
}

/** Whether a new profile moves any figure the planner prices by more than `threshold` (relative) since `old`. O(stages). */
export function profileChanged(old: ClientProfile, p: ClientProfile, threshold: number): boolean {
  if (old.clientClass !== p.clientClass || old.stages.length !== p.stages.length) return true;
  for (let i = 0; i < p.stages.length; i++) {
    const a = old.stages[i];
    const b = p.stages[i];
    if (a.stage !== b.stage || (a.samples > 0) !== (b.samples > 0)) return true;
    if (relChange(a.prefillMsPerToken, b.prefillMsPerToken) > threshold || relChange(a.decodeMs, b.decodeMs) > threshold) return true;
  }
  for (const k of ['uplink', 'downlink'] as const) {
    const a = old[k];
    const b = p[k];
    if (!a || !b) { if (a !== b) return true; continue; }
    if (relChange(a.latencyMs, b.latencyMs, 0.05) > threshold || relChange(a.bytesPerMs, b.bytesPerMs) > threshold) return true;
  }
  return false;
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
  for (const k of ['decodeStretch', 'promptStretch', 'longPromptStretch'] as const) if (relChange(old[k], l[k]) > threshold) return true;
  if (old.longStepTokens !== l.longStepTokens) return true;
  for (let i = 0; i < l.stages.length; i++) {
    const a = old.stages[i];
    const b = l.stages[i];
    if (relChange(a.prefillMsPerToken, b.prefillMsPerToken) > threshold || relChange(a.decodeMs, b.decodeMs) > threshold) return true;
  }
  return false;
}

/**
 * The planner service: keeps the latest profile of every client and the server's load
 * (from NATS), re-solves placements when either changes, and pushes a client's plan on
 * its WatchPlans stream only when a placement changed. Epochs increase across restarts
 * (they start from the wall clock), so agents never take a new plan for an old one.
 */
export class PlannerServer {
  private readonly server = new grpc.Server();
  private readonly health = new HealthReporter(ServingStatus.NOT_SERVING);
  private readonly clients = new Map<string, ClientState>();
  private readonly watchers = new Map<string, Set<grpc.ServerWritableStream<WatchPlansRequest, WatchPlansResponse>>>();
  private serverLoad: ServerLoad | undefined;
  /** The load report every plan in force was made from (undefined until one arrived). */
  private plannedLoad: ServerLoad | undefined;
  private objective: Objective = 'work';
  private nc: NatsConnection | undefined;
  private lastEpoch = 0;
  private replanTimer: NodeJS.Timeout | undefined;
  private sweepTimer: NodeJS.Timeout | undefined;
  /** Clients whose plans must be re-solved, in arrival order; drained in slices. */
  private readonly dirty = new Set<string>();
  private slicing = false;
  private passStartedMs = 0;
  private stopped = false;
  private readonly now: () => number;
  private readonly log: Logger;
  private readonly calibrator: Calibrator;
  private readonly classNames: ReadonlySet<string>;
  /**
   * Counters, for status and tests. `outcomes`: outcomes taken; `strayOutcomes`: well-formed
   * outcomes of a client the planner does not know (not yet, or forgotten), ignored;
   * `slices` / `passes` / `lastPassMs`: the sliced re-planning (see runSlices).
   */
  readonly counters = { profiles: 0, loads: 0, outcomes: 0, strayOutcomes: 0, badMessages: 0, plansPushed: 0, replans: 0, slices: 0, passes: 0, lastPassMs: 0 };
  private readonly threshold: number;
  private readonly sliceMs: number;

  constructor(private readonly opts: PlannerServerOptions) {
    this.now = opts.now ?? Date.now;
    this.log = opts.log.child({ component: 'planner' });
    this.threshold = opts.replanThreshold ?? 0.02;
    this.sliceMs = opts.sliceMs ?? 10;
    this.calibrator = opts.calibrator ?? new Calibrator(DEFAULT_CALIBRATION);
    this.classNames = new Set(opts.maker.opts.classes.map((c) => c.name));
  }

  async start(): Promise<{ port: number }> {
    this.server.addService(PlannerServiceService, this.handlers());
    this.health.addTo(this.server);
    const port = await bindInsecure(this.server, this.opts.address);
    this.nc = await connectNats(this.opts.natsUrl, 'planner', this.log);
    this.subscribe(this.nc);
    await this.nc.flush();
    this.sweepTimer = setInterval(() => this.forgetSilentClients(), Math.max(1000, Math.min(this.opts.clientTtlMs / 4, 30_000)));
    this.sweepTimer.unref();
    this.health.set('', ServingStatus.SERVING);
    this.log.info({ port, algorithm: this.opts.maker.opts.algorithm }, 'planner ready');
    return { port };
  }

  private subscribe(nc: NatsConnection): void {
    const consume = async (subject: string, handle: (data: Uint8Array, subject: string) => void): Promise<void> => {
      for await (const m of nc.subscribe(subject)) {
        try {
          handle(m.data, m.subject);
        } catch (err) {
          this.counters.badMessages++;
          this.log.warn({ subject: m.subject, err: (err as Error).message }, 'dropped a malformed telemetry message');
        }
      }
    };
    void consume(Subjects.allClientProfiles, (data, subject) => this.onProfile(ClientProfile.decode(data), subject));
    void consume(Subjects.allServerLoads, (data) => this.onLoad(ServerLoad.decode(data)));
    void consume(Subjects.allOutcomes, (data, subject) => this.onOutcome(GenerationOutcome.decode(data), subject));
  }

  /**
   * Takes one generation outcome (from NATS or a test) into the client's calibration, and
   * re-plans the client when its corrections changed.
   * @throws Error naming the field when it is malformed.
   */
  onOutcome(o: GenerationOutcome, subject?: string): void {
    const v = validateOutcome(o, { stageCount: this.opts.maker.opts.stages.length, classes: this.classNames, subject });
    this.checkModel(o.modelId);
    if (!this.clients.has(v.clientId)) { this.counters.strayOutcomes++; return; }
    this.counters.outcomes++;
    const r = this.calibrator.record(v, this.now());
    if (r.safety) {
      this.log.info({ clientId: v.clientId, requestClass: v.requestClass, placement: v.placement, ...r.safety },
        r.safety.change === 'tighten' ? 'plan misses its SLO attainment target; planning the class tighter' : 'SLO attainment recovered; relaxing the class one step');
    }
    if (r.replan) {
      this.dirty.add(v.clientId);
      this.scheduleReplan();
    }
  }

  /** Takes one client profile (from NATS or a test). @throws Error naming the field when it is malformed. */
  onProfile(p: ClientProfile, subject?: string): void {
    if (!ID_PATTERN.test(p.clientId)) throw new Error(`clientId must match ${ID_PATTERN}, given '${p.clientId}'`);
    if (subject && subject !== Subjects.clientProfile(p.clientId)) throw new Error(`clientId must match the subject ${subject}, given '${p.clientId}'`);
    this.checkModel(p.modelId);
    const n = this.opts.maker.opts.stages.length;
    for (const [i, s] of p.stages.entries()) {
      if (s.stage >= n) throw new Error(`stages[${i}].stage must be in 0..${n - 1}, given ${s.stage}`);
      for (const k of ['prefillMsPerToken', 'decodeMs'] as const) {
        if (!Number.isFinite(s[k]) || s[k] < 0) throw new Error(`stages[${i}].${k} must be a finite number >= 0, given ${s[k]}`);
      }
    }
    for (const k of ['uplink', 'downlink'] as const) {
      const l = p[k];
      if (l && (!Number.isFinite(l.latencyMs) || l.latencyMs < 0)) throw new Error(`${k}.latencyMs must be a finite number >= 0, given ${l.latencyMs}`);
      if (l && (!Number.isFinite(l.bytesPerMs) || l.bytesPerMs < 0)) throw new Error(`${k}.bytesPerMs must be a finite number >= 0, given ${l.bytesPerMs}`);
    }
    this.counters.profiles++;
    const st = this.clients.get(p.clientId);
    if (st) { st.profile = p; st.lastSeenMs = this.now(); } else this.clients.set(p.clientId, { profile: p, plannedWith: undefined, lastSeenMs: this.now(), plan: undefined });
    // A profile that moves nothing the plan is priced from only refreshes the client's TTL.
    if (st?.plannedWith && st.plan && !profileChanged(st.plannedWith, p, this.threshold)) return;
    this.markDirty(p.clientId);
  }

  /** Takes one server load report. @throws Error naming the field when it is malformed. */
  onLoad(l: ServerLoad): void {
    this.checkModel(l.modelId);
    const n = this.opts.maker.opts.stages.length;
    if (l.stages.length !== n) throw new Error(`stages must list all ${n} stages, given ${l.stages.length}`);
    for (const [i, s] of l.stages.entries()) {
      if (s.stage !== i) throw new Error(`stages[${i}].stage must be ${i}, given ${s.stage}`);
      for (const k of ['prefillMsPerToken', 'decodeMs'] as const) {
        if (!Number.isFinite(s[k]) || s[k] < 0) throw new Error(`stages[${i}].${k} must be a finite number >= 0, given ${s[k]}`);
      }
    }
    if (!Number.isFinite(l.utilisation) || l.utilisation < 0 || l.utilisation > 1) throw new Error(`utilisation must be in 0..1, given ${l.utilisation}`);
    if (!Number.isFinite(l.meanQueueMs) || l.meanQueueMs < 0 || l.meanQueueMs > 86_400_000) throw new Error(`meanQueueMs must be a number in 0..86400000, given ${l.meanQueueMs}`);
    for (const k of ['decodeStretch', 'promptStretch', 'longPromptStretch'] as const) {
      if (!Number.isFinite(l[k]) || !(l[k] === 0 || (l[k] >= 1 && l[k] <= 1000))) throw new Error(`${k} must be 0 (not measured) or a number in 1..1000, given ${l[k]}`);
    }
    if (l.overhead) {
      for (const k of ['msPerMessageIn', 'msPerMessageOut', 'msPerKibIn', 'msPerKibOut', 'idleMsPerS'] as const) {
        const v = l.overhead[k];
        if (!Number.isFinite(v) || v < 0 || v > 1000) throw new Error(`overhead.${k} must be a number in 0..1000, given ${v}`);
      }
    }
    this.counters.loads++;
    const a = this.opts.utilisationSmoothing ?? 1;
    const prev = this.serverLoad;
    const smooth = (was: number | undefined, now: number): number => (was === undefined ? now : was + a * (now - was));
    const u = smooth(prev?.utilisation, l.utilisation);
    l = { ...l, utilisation: u, meanQueueMs: smooth(prev?.meanQueueMs, l.meanQueueMs) };
    this.serverLoad = l;
    const idle = this.opts.idleUtilisation;
    const before = this.objective;
    if (u >= idle) this.objective = 'work';
    else if (u < idle / 2) this.objective = 'latency';
    if (before !== this.objective) this.log.info({ utilisation: u, objective: this.objective }, 'objective changed');
    // Every plan depends on the server's prices: re-plan all clients, but only when those
    // prices moved materially since the plans in force were made (or the objective changed).
    if (before === this.objective && this.plannedLoad && !loadChanged(this.plannedLoad, l, this.threshold, this.opts.maker.opts.maxUtilisation)) return;
    this.plannedLoad = l;
    for (const id of this.clients.keys()) this.dirty.add(id);
    this.scheduleReplan();
  }

  /** Queues one client for re-planning (e.g. its calibration changed). */
  markDirty(clientId: string): void {
    if (!this.clients.has(clientId)) return;
    this.dirty.add(clientId);
    this.scheduleReplan();
  }

  private checkModel(modelId: string): void {
    if (modelId && this.opts.modelId && modelId !== this.opts.modelId) {
      throw new Error(`modelId must be '${this.opts.modelId}' (the model this planner plans for), given '${modelId}'`);
    }
  }

  private scheduleReplan(): void {
    if (this.replanTimer || this.slicing || this.stopped) return;
    this.replanTimer = setTimeout(() => { this.replanTimer = undefined; this.runSlices(); }, this.opts.debounceMs);
  }

  /**
   * Drains the dirty set in slices of at most `sliceMs`, yielding to the event loop between
   * them (setImmediate), so health checks, plan streams and telemetry are served during a
   * re-plan of many clients. A client marked dirty again while a pass runs is re-solved once
   * more, after the others (the set keeps arrival order).
   */
  private runSlices(): void {
    if (this.stopped) return;
    if (!this.slicing) { this.slicing = true; this.passStartedMs = performance.now(); }
    this.counters.slices++;
    const until = performance.now() + this.sliceMs;
    do {
      const next = this.dirty.values().next();
      if (next.done) break;
      this.dirty.delete(next.value);
      this.replanClient(next.value);
    } while (performance.now() < until);
    if (this.dirty.size > 0) { setImmediate(() => this.runSlices()); return; }
    this.slicing = false;
    this.counters.passes++;
    this.counters.lastPassMs = performance.now() - this.passStartedMs;
  }

  /** Re-solves every queued client at once, without yielding (tests and tools). */
  replan(): void {
    for (const id of [...this.dirty]) { this.dirty.delete(id); this.replanClient(id); }
  }

  /** Re-solves one client's plan; pushes it to the client's streams when a placement changed. */
  private replanClient(id: string): void {
    const st = this.clients.get(id);
    if (!st) return;
    const now = this.now();
    if (now - st.lastSeenMs > this.opts.clientTtlMs) { this.forget(id); return; }
    this.counters.replans++;
    const classes = this.opts.maker.plan(st.profile, this.serverLoad, st.plan?.classes, this.objective, this.calibrator.adjustments(id));
    if (!classes) return;
    st.plannedWith = st.profile;
    const changed = !st.plan || classes.some((c, i) => c.placement !== st.plan!.classes[i]?.placement);
    if (!changed) {
      // Same placements: refresh the predictions silently (shown by ListPlans), no push.
      st.plan = { ...st.plan!, classes };
      this.afterPlan(id, st.plan, now);
      return;
    }
    this.lastEpoch = Math.max(this.lastEpoch + 1, now);
    st.plan = { clientId: id, epoch: this.lastEpoch, classes, algorithm: this.opts.maker.opts.algorithm, createdUnixMs: now };
    this.log.info({ clientId: id, epoch: st.plan.epoch, placements: classes.map((c) => `${c.name}=${c.placement}`) }, 'plan changed');
    for (const w of this.watchers.get(id) ?? []) { w.write({ plan: st.plan }); this.counters.plansPushed++; }
    this.afterPlan(id, st.plan, now);
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
    this.clients.delete(id);
    this.dirty.delete(id);
    this.calibrator.forget(id);
  }

  /** Forgets clients not heard from for the TTL. */
  private forgetSilentClients(): void {
    const now = this.now();
    for (const [id, st] of this.clients) {
      if (now - st.lastSeenMs > this.opts.clientTtlMs) this.forget(id);
    }
  }

  /** What the planner optimises now. */
  get currentObjective(): Objective { return this.objective; }

  /** Current plans, ordered by client id. */
  plans(): ClientPlan[] {
    return [...this.clients.values()].filter((c) => c.plan).map((c) => c.plan!).sort((a, b) => a.clientId.localeCompare(b.clientId));
  }

  /** What was observed of each client with a plan, in the order of `plans()`. */
  observations(plans: readonly ClientPlan[] = this.plans()): ClientObservations[] {
    return plans.map((p) => ({ clientId: p.clientId, classes: this.calibrator.observations(p.clientId, p.classes.map((c) => c.name)) }));
  }

  private handlers(): PlannerServiceServer {
    return {
      watchPlans: (call: grpc.ServerWritableStream<WatchPlansRequest, WatchPlansResponse>) => {
        const id = call.request.clientId;
        if (!ID_PATTERN.test(id)) {
          call.emit('error', { code: grpc.status.INVALID_ARGUMENT, details: `clientId must match ${ID_PATTERN}, given '${id}'` });
          return;
        }
        let set = this.watchers.get(id);
        if (!set) this.watchers.set(id, (set = new Set()));
        set.add(call);
        const remove = (): void => { set?.delete(call); };
        call.on('cancelled', remove);
        call.on('close', remove);
        const plan = this.clients.get(id)?.plan;
        if (plan) { call.write({ plan }); this.counters.plansPushed++; }
      },
      listPlans: (_call, cb) => {
        const plans = this.plans();
        cb(null, { plans, observations: this.observations(plans) });
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
    for (const set of this.watchers.values()) for (const w of set) w.end();
    this.watchers.clear();
    this.health.closeWatchers();
    await shutdownServer(this.server);
    if (this.nc) await this.nc.close().catch((err: unknown) => this.log.warn({ err }, 'closing NATS failed'));
  }
}
