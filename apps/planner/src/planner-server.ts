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
   * Below this server utilisation the planner optimises latency (the server has capacity to
   * spare); at or above it, server work under the SLA. It returns to latency only below half
   * this value, so the objective does not flap. 0 always optimises work.
   */
  readonly idleUtilisation: number;
  /** Wall clock in Unix ms (injected for tests). */
  readonly now?: () => number;
}

interface ClientState {
  profile: ClientProfile;
  lastSeenMs: number;
  plan: ClientPlan | undefined;
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
  private objective: Objective = 'work';
  private nc: NatsConnection | undefined;
  private lastEpoch = 0;
  private replanTimer: NodeJS.Timeout | undefined;
  private readonly dirty = new Set<string>();
  private allDirty = false;
  private stopped = false;
  private readonly now: () => number;
  private readonly log: Logger;
  private readonly calibrator: Calibrator;
  private readonly classNames: ReadonlySet<string>;
  /**
   * Counters, for status and tests. `outcomes`: outcomes taken; `strayOutcomes`: well-formed
   * outcomes of a client the planner does not know (not yet, or forgotten), ignored.
   */
  readonly counters = { profiles: 0, loads: 0, outcomes: 0, strayOutcomes: 0, badMessages: 0, plansPushed: 0, replans: 0 };

  constructor(private readonly opts: PlannerServerOptions) {
    this.now = opts.now ?? Date.now;
    this.log = opts.log.child({ component: 'planner' });
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
    if (st) { st.profile = p; st.lastSeenMs = this.now(); } else this.clients.set(p.clientId, { profile: p, lastSeenMs: this.now(), plan: undefined });
    this.dirty.add(p.clientId);
    this.scheduleReplan();
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
    this.counters.loads++;
    this.serverLoad = l;
    const idle = this.opts.idleUtilisation;
    const before = this.objective;
    if (l.utilisation >= idle) this.objective = 'work';
    else if (l.utilisation < idle / 2) this.objective = 'latency';
    if (before !== this.objective) this.log.info({ utilisation: l.utilisation, objective: this.objective }, 'objective changed');
    this.allDirty = true;
    this.scheduleReplan();
  }

  private checkModel(modelId: string): void {
    if (modelId && this.opts.modelId && modelId !== this.opts.modelId) {
      throw new Error(`modelId must be '${this.opts.modelId}' (the model this planner plans for), given '${modelId}'`);
    }
  }

  private scheduleReplan(): void {
    if (this.replanTimer || this.stopped) return;
    this.replanTimer = setTimeout(() => { this.replanTimer = undefined; this.replan(); }, this.opts.debounceMs);
  }

  /** Re-solves the plans of every client whose inputs changed; pushes the ones that changed. */
  replan(): void {
    const ids = this.allDirty ? [...this.clients.keys()] : [...this.dirty];
    this.allDirty = false;
    this.dirty.clear();
    const now = this.now();
    for (const id of ids) {
      const st = this.clients.get(id);
      if (!st) continue;
      if (now - st.lastSeenMs > this.opts.clientTtlMs) { this.clients.delete(id); this.calibrator.forget(id); continue; }
      this.counters.replans++;
      const classes = this.opts.maker.plan(st.profile, this.serverLoad, st.plan?.classes, this.objective, this.calibrator.adjustments(id));
      if (!classes) continue;
      const changed = !st.plan || classes.some((c, i) => c.placement !== st.plan!.classes[i]?.placement);
      if (!changed) {
        // Same placements: refresh the predictions silently (shown by ListPlans), no push.
        st.plan = { ...st.plan!, classes };
        this.afterPlan(id, st.plan, now);
        continue;
      }
      this.lastEpoch = Math.max(this.lastEpoch + 1, now);
      st.plan = { clientId: id, epoch: this.lastEpoch, classes, algorithm: this.opts.maker.opts.algorithm, createdUnixMs: now };
      this.log.info({ clientId: id, epoch: st.plan.epoch, placements: classes.map((c) => `${c.name}=${c.placement}`) }, 'plan changed');
      for (const w of this.watchers.get(id) ?? []) { w.write({ plan: st.plan }); this.counters.plansPushed++; }
      this.afterPlan(id, st.plan, now);
    }
  }

  /** Tells the calibrator what was planned; a tighten step that left the placement as it was is followed by another. */
  private afterPlan(id: string, plan: ClientPlan, now: number): void {
    if (this.calibrator.planned(id, plan.classes, plan.epoch, now)) {
      this.dirty.add(id);
      this.scheduleReplan();
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
    this.health.set('', ServingStatus.NOT_SERVING);
    for (const set of this.watchers.values()) for (const w of set) w.end();
    this.watchers.clear();
    this.health.closeWatchers();
    await shutdownServer(this.server);
    if (this.nc) await this.nc.close().catch((err: unknown) => this.log.warn({ err }, 'closing NATS failed'));
  }
}
