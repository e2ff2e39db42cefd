import { isPlacementLetters } from '@tandem/dp';
import * as grpc from '@grpc/grpc-js';
import {
  addReflection,
  AgentServiceService,
  channelOptions,
  HEALTH_SERVICE_NAME,
  quoted,
  ClientProfile,
  DEFAULT_CALL_DEADLINE_MS,
  ExecutorServiceClient,
  executorStatus,
  type ClassPlacement,
  GenerationOutcome,
  HealthReporter,
  probeLink,
  ServingStatus,
  Subjects,
  type AgentServiceServer,
  type AgentStatusResponse,
  type GenerateRequest,
  type GenerateResponse,
  type Keepalive,
} from '@tandem/protocol';
import { decode, encode, readManifest } from '@tandem/model';
import { settledWithin } from '@tandem/util';
import {
  bindServer,
  clientOptions,
  errorEdge,
  hostOf,
  MetricsEndpoint,
  serverAuthOptions,
  serveWithEdge,
  shutdownServer,
  StatusError,
  startTelemetry,
  TelemetryPublisher,
  ValidationError,
  type ClientSecurity,
  type EdgeHandlers,
  type Logger,
  type ServerSecurity,
  type TelemetrySettings,
} from '@tandem/service-kit';
import { toGrpcStatus } from './errors';
import { CONNECT_TIMEOUT_MS, ExecutorPool, MAX_EXECUTOR_CLIENTS, settled, type ExecutorLease } from './executor-pool';
import { generate, isSessionLost, type GenerationStats } from './generation';
import { DEFAULT_LINK_PROBE_BYTES, LinkEmulator, LinkEstimator } from './link';
import { LocalStages } from './local-stages';
import { AgentMetrics } from './metrics';
import { buildOutcome, predictedOf, type Predicted } from './outcome';
import { PlanFollower, privacyProblem, type ChosenPlacement } from './plan-follower';
import { RemoteSession } from './remote-session';
import type { ReplayRecording } from './replay';

export interface ClientAgentOptions extends TelemetrySettings {
  readonly modelDir: string;
  readonly modelId: string;
  readonly clientId: string;
  readonly clientClass: string;
  readonly address: string;
  readonly stages: readonly number[];
  /**
   * The device's token ids and text never leave it (AGENT_PRIVATE): its profile says so, so
   * plans keep the first and last stage here; a plan or a request placement that would send
   * them is refused; sessions are opened private; with no plan it runs every stage itself.
   */
  readonly private?: boolean;
  readonly threads: number;
  readonly slowdown: number;
  /** EMULATION: replay local stages from this recording instead of computing them. */
  readonly replay?: ReplayRecording;
  readonly link: LinkEmulator;
  /** EXECUTOR_ADDR: where generations open when the plan names no executor, and the last fallback when it does. */
  readonly executorAddr: string;
  /** An executor client no plan has named for this long and no generation uses is closed, ms (default EXECUTOR_IDLE_MS). */
  readonly executorIdleMs?: number;
  readonly plannerAddr?: string;
  readonly deadlineMs: number;
  readonly maxMessageBytes: number;
  readonly log: Logger;
  /** TLS and bearer tokens of the local Generate API (loadServerSecurity); undefined = plaintext, no tokens. */
  readonly security?: ServerSecurity;
  /** TLS and the bearer token of calls to the executor and the planner (loadUpstreamSecurity); undefined = plaintext, no token. */
  readonly upstream?: ClientSecurity;
  /**
   * HTTP/2 keepalive of the Generate API and of the connections to the executor and the
   * planner (GRPC_KEEPALIVE_*; default DEFAULT_KEEPALIVE): a dead connection to the executor
   * ends its sessions with UNAVAILABLE within time + timeout, and their generations resume on
   * a new connection instead of waiting out their deadline.
   */
  readonly keepalive?: Keepalive;
  /** Port of the Prometheus endpoint (GET /metrics) on the host of `address`; 0 picks a free one; undefined: none (the metrics are still kept, see `metrics`). */
  readonly metricsPort?: number;
  /** Bytes of each link probe (AGENT_LINK_PROBE_BYTES; default {@link DEFAULT_LINK_PROBE_BYTES}; 0 = no probes): see ClientAgent.probeLink. */
  readonly linkProbeBytes?: number;
}

/** The agent's gRPC service name, as health reports it. */
export const AGENT_SERVICE_NAME = 'tandem.agent.v1.AgentService';

/**
 * How long start() waits for the first link probe before the first profile goes out anyway, ms.
 * Two to six transfers of 256 KiB each way ({@link PROBE_SAMPLES}, {@link PROBE_MAX_SAMPLES}) take
 * about 0.8–2.5 s on a 10 Mbit/s link; a link so slow that the probe takes longer is published as
 * estimated until the probe ends.
 */
export const FIRST_PROBE_WAIT_MS = 5000;

/**
 * Transfers a link probe times each way, at least. The estimate keeps the fastest (a busy host
 * only ever slows a transfer): with one, the first profile of an agent started under load stated a
 * downlink 19 % below the link's (a CI run of the link-probe test).
 */
export const PROBE_SAMPLES = 2;

/**
 * Transfers a link probe times each way at most: past {@link PROBE_SAMPLES} it goes on until the
 * two fastest agree within {@link PROBE_AGREEMENT} of the faster (with two, a host busy through
 * both still left the estimate 15 % or more below the link's in one run of three of the
 * link-probe test under a second test run).
 */
export const PROBE_MAX_SAMPLES = 6;

/** How close the two fastest probe transfers of a direction must be to end its probe early: relative. */
export const PROBE_AGREEMENT = 0.05;

/** Whether the two fastest of `ms` (round trips of the same transfer) agree within {@link PROBE_AGREEMENT}. */
export function probeSettled(ms: readonly number[]): boolean {
  if (ms.length < PROBE_SAMPLES) return false;
  const [a, b] = [...ms].sort((x, y) => x - y);
  return b - a <= PROBE_AGREEMENT * a;
}

/** A Generate request after validation. */
interface ValidRequest {
  readonly ids: number[];
  readonly maxNewTokens: number;
  readonly placement?: string;
  /** With `placement`, a phased override's decode placement (only when it differs). */
  readonly decodePlacement?: string;
}

/** An executor a generation may open on: its address, and its id when a plan named it ('' for EXECUTOR_ADDR). */
interface ExecutorTarget {
  readonly address: string;
  readonly id: string;
}

/** The label of an executor in the agent's metrics: its id, 'configured' (EXECUTOR_ADDR, unnamed), 'none' (no server stage ran). */
function executorLabel(t: ExecutorTarget | undefined): string {
  return !t ? 'none' : t.id || 'configured';
}

/** Adds the executor queueing of every step of `session` to `into.ms` (GenerationStats reports compute only). */
function countQueueing(session: RemoteSession, into: { ms: number }): RemoteSession {
  const step = session.step.bind(session);
  session.step = async (...args) => {
    const r = await step(...args);
    into.ms += r.queueMs;
    return r;
  };
  return session;
}

/**
 * The client-agent: runs this device's stages, follows the planner's plans, publishes its
 * profile (per-stage times, link) over NATS and serves the local Generate API.
 */
export class ClientAgent {
  private readonly server: grpc.Server;
  private readonly health = new HealthReporter(ServingStatus.NOT_SERVING);
  private readonly estimator = new LinkEstimator();
  /** A gRPC client per executor address: EXECUTOR_ADDR's and those plans name. */
  private readonly executors: ExecutorPool;
  private sweepTimer: NodeJS.Timeout | undefined;
  private local!: LocalStages;
  private follower!: PlanFollower;
  private telemetry: TelemetryPublisher | undefined;
  private pingTimer: NodeJS.Timeout | undefined;
  /** A link probe is under way; or the executor answered UNIMPLEMENTED (an older one): no more probes. */
  private probing = false;
  private probeUnsupported = false;
  /** After a failed probe, none before this (Date.now() ms): a refusing executor is asked every 30 s, not at every ping. */
  private probeNotBefore = 0;
  private readonly running = new Set<AbortController>();
  private stageCount = 0;
  private nEmbd = 0;
  private vocabSize = 0;
  private nPositions = 0;
  private generations = 0;
  private failures = 0;
  private resumedGenerations = 0;
  private stopping = false;
  private readonly log: Logger;
  /** The Prometheus registry and its endpoint (started when `metricsPort` is set). */
  readonly metrics: MetricsEndpoint;
  private readonly observed: AgentMetrics;

  constructor(private readonly opts: ClientAgentOptions) {
    this.log = opts.log.child({ component: 'agent', clientId: opts.clientId });
    this.metrics = new MetricsEndpoint(this.log);
    this.observed = new AgentMetrics(this.metrics.registry, { resumed: () => this.resumedGenerations });
    this.server = new grpc.Server({ ...channelOptions(opts.maxMessageBytes, opts.keepalive), ...serverAuthOptions(opts.security?.tokens) });
    // Every executor is reached with the same TLS trust, token and channel options: a plan
    // chooses among executors, never how the agent authenticates (docs/security.md).
    this.executors = new ExecutorPool({
      configured: opts.executorAddr,
      idleMs: opts.executorIdleMs,
      make: (address) =>
        new ExecutorServiceClient(
          address,
          opts.upstream?.credentials ?? grpc.credentials.createInsecure(),
          clientOptions(opts.upstream, channelOptions(opts.maxMessageBytes, opts.keepalive)),
        ),
    });
  }

  /** Loads and profiles the local stages, connects to the planner and NATS, binds the API. Resolves with the port. */
  async start(): Promise<{ port: number }> {
    const manifest = await readManifest(this.opts.modelDir);
    this.stageCount = manifest.stages.length;
    ({ nEmbd: this.nEmbd, vocabSize: this.vocabSize, nPositions: this.nPositions } = manifest.config);
    this.local = await LocalStages.load(this.opts.modelDir, this.opts.stages, {
      slowdown: this.opts.slowdown,
      intraOpNumThreads: this.opts.threads,
      replay: this.opts.replay,
    });
    await this.local.profile({ promptTokens: 16, decodeSteps: 3, rounds: 2, nEmbd: this.nEmbd });
    this.follower = new PlanFollower(
      {
        plannerAddr: this.opts.plannerAddr,
        upstream: this.opts.upstream,
        keepalive: this.opts.keepalive,
        maxMessageBytes: this.opts.maxMessageBytes,
        clientId: this.opts.clientId,
        stageCount: this.stageCount,
        canRun: (s) => this.local.has(s),
        private: this.opts.private === true,
      },
      this.log,
    );
    this.follower.onPlan((plan) => {
      this.observed.planUpdated();
      this.executors.named([...(plan.executor ? [plan.executor.address] : []), ...plan.alternates.map((a) => a.address)]);
      this.telemetry?.publishNow();
    });
    this.follower.start();
    // A request that does not decode is answered INVALID_ARGUMENT (not grpc-js's bare INTERNAL), before its handler runs.
    serveWithEdge(this.server, AgentServiceService, this.handlers(), errorEdge(this.log, toGrpcStatus));
    this.health.addTo(this.server);
    // Server reflection (grpcurl, Postman): one name per service this server serves.
    addReflection(this.server, [AGENT_SERVICE_NAME, HEALTH_SERVICE_NAME]);
    const port = await bindServer(this.server, this.opts.address, this.opts.security?.credentials ?? grpc.ServerCredentials.createInsecure());
    if (this.opts.metricsPort !== undefined) await this.metrics.start(hostOf(this.opts.address), this.opts.metricsPort);
    // The first profile waits for the link probe when the executor answered the ping (at most
    // FIRST_PROBE_WAIT_MS): sent before it, the profile would state the estimator's guess (1e6
    // bytes/ms), and the first plans, a phased plan's KV hand-over above all, would be priced on
    // it. An executor that did not answer is probed at the next ping.
    const answered = await this.pingExecutor();
    const probe = this.probeLink();
    if (answered && !(await settledWithin(probe, FIRST_PROBE_WAIT_MS)))
      this.log.info(
        { waitedMs: FIRST_PROBE_WAIT_MS },
        'the link probe is still running: the first profile states the estimated link, the probe corrects it when it ends',
      );
    this.pingTimer = setInterval(() => void this.pingExecutor().then(() => this.probeLink()), 2000);
    this.pingTimer.unref();
    this.sweepTimer = setInterval(() => this.executors.sweep(), Math.max(100, Math.min(10_000, (this.opts.executorIdleMs ?? 60_000) / 4)));
    this.sweepTimer.unref();
    this.telemetry = startTelemetry(this.opts, {
      name: `agent-${this.opts.clientId}`,
      subject: Subjects.clientProfile(this.opts.clientId),
      payload: () => ClientProfile.encode(this.profile()).finish(),
      log: this.log,
    });
    this.health.set('', ServingStatus.SERVING);
    this.health.set(AGENT_SERVICE_NAME, ServingStatus.SERVING);
    this.log.info({ port, stages: this.opts.stages.length, slowdown: this.opts.slowdown }, 'agent ready');
    return { port };
  }

  /**
   * Half the round trip of a small call to the executor new generations open on feeds the
   * latency estimate. The call is timed once the channel is connected: a first call would also
   * time the connection (TCP and TLS), and the estimate keeps its smallest recent round trip.
   */
  private async pingExecutor(): Promise<boolean> {
    const lease = this.executors.acquire(this.targets()[0].address);
    if (!lease) return false;
    try {
      await settled(lease.client, DEFAULT_CALL_DEADLINE_MS);
      const t0 = performance.now();
      await executorStatus(lease.client);
      this.estimator.recordRtt(performance.now() - t0 + 2 * this.opts.link.up.latencyMs);
      return true;
    } catch {
      // No connection or no answer: nothing to time (the next ping tries again).
      return false;
    } finally {
      lease.release();
    }
  }

  /**
   * Measures the link's throughput where the estimator has none yet, so that the first plans
   * price transfers (a phased plan's KV hand-over above all) on the link instead of a guess:
   * times an upload of `linkProbeBytes` to the executor new generations open on
   * (ExecutorService.ProbeLink), then a download of as many, each {@link PROBE_SAMPLES} times and
   * on until the two fastest agree ({@link probeSettled}, at most {@link PROBE_MAX_SAMPLES}: the
   * estimate keeps the fastest, so transfers slowed by a busy host do not set the first plans'
   * link). Runs after each ping until both
   * directions are measured; generations' own transfers keep the estimate up to date after
   * that. An executor without the call (UNIMPLEMENTED) is not asked again; after another
   * failure the probe waits 30 s. A probe is at most the agent's message size less 1 KiB.
   */
  private async probeLink(): Promise<void> {
    const bytes = Math.min(this.opts.linkProbeBytes ?? DEFAULT_LINK_PROBE_BYTES, Math.max(0, this.opts.maxMessageBytes - 1024));
    const measured = this.estimator.measured();
    if (bytes === 0 || this.probing || this.probeUnsupported || this.stopping || Date.now() < this.probeNotBefore || (measured.up && measured.down)) return;
    const lease = this.executors.acquire(this.targets()[0].address);
    if (!lease) return;
    this.probing = true;
    /** The round trip of a probe moving `up` bytes up and `down` bytes down, emulated link included, ms. */
    const probe = async (up: number, down: number): Promise<number> => {
      const t0 = performance.now();
      await this.opts.link.uplink(up);
      await probeLink(lease.client, up, down, 10_000);
      await this.opts.link.downlink(down);
      return performance.now() - t0;
    };
    try {
      // An empty probe first: the round trip of the same call and the same emulated crossings
      // with nothing to carry, which is what each transfer below has on top of its bytes (a
      // ping's round trip differs from it on a busy host, and the estimate takes off the smallest).
      this.estimator.recordRtt(await probe(0, 0));
      // Up before down in each round: the estimator takes the uplink's time off a download's.
      const ups: number[] = [];
      const downs: number[] = [];
      const timed = async (samples: number[], up: number, down: number): Promise<void> => {
        samples.push(await probe(up, down));
        this.estimator.recordTransfer(up, down, samples[samples.length - 1]);
      };
      for (let i = 0; i < PROBE_MAX_SAMPLES; i++) {
        const upDone = measured.up || probeSettled(ups);
        const downDone = measured.down || probeSettled(downs);
        if (upDone && downDone) break;
        if (!upDone) await timed(ups, bytes, 0);
        if (!downDone) await timed(downs, 0, bytes);
      }
      this.log.debug({ link: this.estimator.estimate() }, 'link probed');
    } catch (err) {
      if ((err as grpc.ServiceError).code === grpc.status.UNIMPLEMENTED) {
        this.probeUnsupported = true;
        this.log.info('the executor answers no link probe (an older one): the link is measured by generations alone');
      } else {
        this.probeNotBefore = Date.now() + 30_000;
        this.log.debug({ err }, 'link probe failed; tried again in 30 s');
      }
    } finally {
      lease.release();
      this.probing = false;
    }
  }

  /**
   * The executors a new generation may open on, in order: the plan's executor, its alternates,
   * then EXECUTOR_ADDR (each address once; EXECUTOR_ADDR keeps a plan's id when a plan names it).
   */
  private targets(): ExecutorTarget[] {
    const plan = this.follower?.current();
    const out: ExecutorTarget[] = [];
    const add = (address: string, id: string): void => {
      if (!out.some((t) => t.address === address)) out.push({ address, id });
    };
    if (plan?.executor) add(plan.executor.address, plan.executor.id);
    for (const a of plan?.alternates ?? []) add(a.address, a.id);
    add(this.opts.executorAddr, '');
    return out;
  }

  /**
   * Opens executor sessions for one generation: each open goes to the first executor of
   * `targets()` (read at that moment: the plan's current executor) that accepts it, trying the
   * next when one refuses as UNAVAILABLE (draining, connection refused, lost). An executor on
   * which this generation lost a session, or whose open failed, is tried only when no other is
   * left. An executor that does not connect within CONNECT_TIMEOUT_MS is given up on when another
   * is left to try. `used` is the executor of the last session opened; `release` gives its client back.
   */
  private sessionOpener(open: (client: ExecutorServiceClient) => Promise<RemoteSession>, signal: AbortSignal, until: number) {
    const avoid = new Set<string>();
    let lease: ExecutorLease | undefined;
    let session: RemoteSession | undefined;
    const state = {
      used: undefined as ExecutorTarget | undefined,
      open: async (): Promise<RemoteSession> => {
        // The previous session was lost there (not ended or refused with a hint): go elsewhere if possible.
        if (session && state.used && isSessionLost(session.failed)) avoid.add(state.used.address);
        const all = this.targets();
        const fresh = all.filter((t) => !avoid.has(t.address));
        let lastErr: unknown = new StatusError(
          grpc.status.UNAVAILABLE,
          `no executor channel is free: the agent is stopping, or all ${MAX_EXECUTOR_CLIENTS} of its executor channels are in use`,
        );
        const order = fresh.length > 0 ? fresh : all;
        for (const [i, t] of order.entries()) {
          signal.throwIfAborted();
          const l = this.executors.acquire(t.address);
          if (!l) continue;
          try {
            // With another executor to try, one that does not answer is given up on in CONNECT_TIMEOUT_MS.
            if (i < order.length - 1) await settled(l.client, Math.min(CONNECT_TIMEOUT_MS, Math.max(0, until - Date.now())));
            const s = await open(l.client);
            lease?.release();
            lease = l;
            session = s;
            state.used = t;
            return s;
          } catch (err) {
            l.release();
            if (!isSessionLost(err) || signal.aborted) throw err;
            avoid.add(t.address);
            const e = err as { details?: string; message?: string };
            this.log.warn(
              { executor: t.id || 'configured', address: t.address, why: e.details ?? e.message },
              'executor refused a session as unavailable; trying the next',
            );
            lastErr = err;
          }
        }
        throw lastErr;
      },
      release: (): void => {
        lease?.release();
        lease = undefined;
      },
    };
    return state;
  }

  /** The profile published over NATS: local stage costs and the link as measured. */
  profile(): ClientProfile {
    const link = this.estimator.estimate();
    const overhead = this.estimator.stepOverheadMs;
    return {
      clientId: this.opts.clientId,
      clientClass: this.opts.clientClass,
      modelId: this.opts.modelId,
      stages: this.local.costs(),
      uplink: link.up,
      downlink: link.down,
      unixMs: Date.now(),
      planEpoch: this.follower.current()?.epoch ?? 0,
      ...(this.opts.private ? { private: true } : {}),
      ...(overhead !== undefined ? { stepOverheadMs: overhead } : {}),
    };
  }

  /** The agent's state, as GetStatus answers it: the plan followed (or why none is), counters. */
  status(): AgentStatusResponse {
    const plan = this.follower.current();
    const next = this.targets()[0];
    return {
      clientId: this.opts.clientId,
      clientClass: this.opts.clientClass,
      planEpoch: plan?.epoch ?? 0,
      // Deprecated form of classPlacements, kept for callers that read it.
      placements: plan?.classes.map((c) => `${c.name}=${c.placement}`) ?? [],
      generations: this.generations,
      failures: this.failures,
      plannerConnected: this.follower.connected,
      resumedGenerations: this.resumedGenerations,
      classPlacements:
        plan?.classes.map((c) => ({
          requestClass: c.name,
          placement: c.placement,
          planEpoch: plan.epoch,
          maxPromptTokens: c.maxPromptTokens,
          slaMs: c.slaMs,
          predictedLatencyMs: c.predictedLatencyMs,
          predictedTtftMs: c.predictedTtftMs,
          predictedTpotMs: c.predictedTpotMs,
          ...(c.decodePlacement && c.decodePlacement !== c.placement ? { decodePlacement: c.decodePlacement } : {}),
        })) ?? [],
      noPlanReason: this.follower.noPlanReason(),
      executorAddress: next.address,
      executorId: next.id,
    };
  }

  private validate(req: GenerateRequest): ValidRequest {
    let ids: number[];
    if (req.input?.$case === 'prompt') {
      if (req.input.value.length === 0) throw new ValidationError('prompt must be non-empty text, given an empty string');
      ids = encode(req.input.value);
      // The tokenizer knows GPT-2's 50,257 ids; a smaller model knows fewer.
      const bad = ids.findIndex((v) => v >= this.vocabSize);
      if (bad >= 0)
        throw new ValidationError(`prompt must tokenise to ids in 0..${this.vocabSize - 1} (this model's vocabulary), given id ${ids[bad]} at token ${bad}`);
    } else if (req.input?.$case === 'ids') {
      ids = req.input.value.ids;
      if (ids.length === 0) throw new ValidationError('ids must hold at least one token id, given none');
      const bad = ids.findIndex((v) => v >= this.vocabSize);
      if (bad >= 0) throw new ValidationError(`ids[${bad}] must be in 0..${this.vocabSize - 1}, given ${ids[bad]}`);
    } else {
      throw new ValidationError('input must be a prompt or ids, given neither');
    }
    // The last generated token is never fed back, so prompt + maxNewTokens - 1 must fit the context.
    const room = this.nPositions - ids.length + 1;
    if (room < 1) throw new ValidationError(`the prompt must fit the context of ${this.nPositions} tokens, given ${ids.length} tokens`);
    if (req.maxNewTokens < 1 || req.maxNewTokens > room)
      throw new ValidationError(`max_new_tokens must be in 1..${room} for this prompt, given ${req.maxNewTokens}`);
    const checkPlacement = (field: string, p: string): void => {
      if (!isPlacementLetters(p, this.stageCount)) throw new ValidationError(`${field} must be ${this.stageCount} letters C or S, given ${quoted(p)}`);
      const bad = [...p].findIndex((c, s) => c === 'C' && !this.local.has(s));
      if (bad >= 0) throw new ValidationError(`${field} puts stage ${bad} on this client, which does not hold it`);
      const leak = privacyProblem(p, this.opts.private === true);
      if (leak) throw new ValidationError(`${field} ${leak}`);
    };
    const placement = req.placement || undefined;
    if (placement !== undefined) checkPlacement('placement', placement);
    const decode = req.decodePlacement || undefined;
    if (decode !== undefined) {
      if (placement === undefined)
        throw new ValidationError(
          `decode_placement must come with placement (it overrides the plan's decode, so the prefill's too), given ${quoted(decode)} alone`,
        );
      checkPlacement('decode_placement', decode);
    }
    return { ids, maxNewTokens: req.maxNewTokens, placement, ...(decode !== undefined && decode !== placement ? { decodePlacement: decode } : {}) };
  }

  /**
   * Runs one generation; `onToken` sees each token. Used by the gRPC handler and by tools
   * that embed an agent. A generation that followed a plan is reported to the planner as a
   * GenerationOutcome, also when it fails (not when `signal` aborted it: see the proto).
   * `deadline` (Date.now() ms, e.g. the gRPC caller's) bounds the generation together with the
   * agent's own AGENT_DEADLINE_MS, whichever is earlier: it is the executor session's gRPC
   * deadline, and a generation that lost its session resumes on a new one only while it allows.
   */
  async generate(
    req: GenerateRequest,
    onToken: (id: number, index: number) => void,
    signal: AbortSignal,
    deadline = Infinity,
  ): Promise<{
    stats: GenerationStats;
    placement: string;
    decodePlacement?: string;
    epoch: number;
    requestClass: string;
    slaMs: number;
    promptTokens: number;
    predicted: Predicted;
    /** The executor of the generation's last session: its id when a plan named it ('' for EXECUTOR_ADDR, or when no server stage ran). */
    executorId: string;
    /** That executor's address; '' when no server stage ran. */
    executorAddress: string;
  }> {
    const v = this.validate(req);
    const chosen: ChosenPlacement =
      v.placement !== undefined
        ? { placement: v.placement, ...(v.decodePlacement ? { decodePlacement: v.decodePlacement } : {}), epoch: 0, requestClass: 'override', slaMs: 0 }
        : this.follower.choose(v.ids.length);
    // The class of the plan followed, taken now (a new plan may come while this runs).
    const plan = this.follower.current();
    const planned = chosen.epoch > 0 && plan?.epoch === chosen.epoch ? plan.classes.find((c) => c.name === chosen.requestClass) : undefined;
    const queue = { ms: 0 };
    const until = Math.min(deadline, Date.now() + this.opts.deadlineMs);
    const opener = this.sessionOpener(
      (client) =>
        RemoteSession.open(client, {
          clientId: this.opts.clientId,
          planEpoch: chosen.epoch,
          modelId: this.opts.modelId,
          deadline: until,
          private: this.opts.private === true,
        }),
      signal,
      until,
    );
    const t0 = performance.now();
    let produced = 0;
    let ttftMs = 0;
    const report = (ok: boolean, stats?: GenerationStats): void => {
      if (!planned) return;
      const e2eMs = stats?.totalMs ?? performance.now() - t0;
      const { clientId, clientClass, modelId } = this.opts;
      const outcome = buildOutcome(
        { clientId, clientClass, modelId },
        planned,
        chosen.epoch,
        chosen.placement,
        {
          ok,
          promptTokens: v.ids.length,
          newTokens: produced,
          ttftMs: stats?.ttftMs ?? ttftMs,
          e2eMs,
          serverComputeMs: stats?.serverComputeMs ?? 0,
          serverQueueMs: queue.ms,
        },
        Date.now(),
        predictedOf(planned, v.ids.length, v.maxNewTokens),
        chosen.decodePlacement,
        opener.used?.id,
      );
      this.telemetry?.publish(Subjects.outcome(this.opts.clientId), GenerationOutcome.encode(outcome).finish());
    };
    // Replay (emulation): the generation's cache is tied to a cursor that follows its tokens.
    const cursor = this.local.armReplay(v.ids);
    let stats: GenerationStats;
    try {
      const running = generate(
        {
          local: this.local,
          openRemote: async () => countQueueing(await opener.open(), queue),
          emulator: this.opts.link,
          estimator: this.estimator,
          vocabSize: this.vocabSize,
          signal,
          resume: {
            deadline: until,
            onResumed: ({ tokens, attempts, lostMs }) =>
              this.log.warn(
                {
                  tokens,
                  attempts,
                  lostMs: Math.round(lostMs),
                  placement: chosen.placement,
                  decodePlacement: chosen.decodePlacement,
                  executor: executorLabel(opener.used),
                },
                'generation resumed on a new executor session',
              ),
          },
        },
        chosen.placement,
        v.ids,
        v.maxNewTokens,
        (id, index) => {
          if (produced++ === 0) ttftMs = performance.now() - t0;
          cursor?.advance(id);
          onToken(id, index);
        },
        chosen.decodePlacement,
      );
      this.local.disarm(); // generate() created its cache synchronously, before its first await
      stats = await running;
    } catch (err) {
      this.observed.generation(chosen.placement, signal.aborted ? 'cancelled' : 'failed', undefined, executorLabel(opener.used));
      if (!signal.aborted) report(false);
      throw err;
    } finally {
      opener.release();
    }
    if (stats.resumes > 0) this.resumedGenerations++;
    this.observed.generation(chosen.placement, 'ok', { e2eMs: stats.totalMs, ttftMs: stats.ttftMs }, executorLabel(opener.used));
    this.observed.handover(stats);
    report(true, stats);
    return {
      stats,
      ...chosen,
      promptTokens: v.ids.length,
      predicted: predictedOf(planned, v.ids.length, v.maxNewTokens),
      executorId: opener.used?.id ?? '',
      executorAddress: opener.used?.address ?? '',
    };
  }

  /** The handlers, behind the agent's edge (serveWithEdge, errors.ts): what they throw or reject with is answered with its status. */
  private handlers(): EdgeHandlers<AgentServiceServer> {
    return {
      generate: async (call: grpc.ServerWritableStream<GenerateRequest, GenerateResponse>) => {
        if (this.stopping) throw new StatusError(grpc.status.UNAVAILABLE, 'the agent is shutting down');
        const ac = new AbortController();
        this.running.add(ac);
        call.on('cancelled', () => ac.abort(new Error('cancelled by the caller')));
        // The caller's deadline goes on to the executor session (Infinity when it set none).
        const callerDeadline = call.getDeadline();
        const deadline = callerDeadline instanceof Date ? callerDeadline.getTime() : callerDeadline;
        try {
          const r = await this.generate(
            call.request,
            (id, index) => call.write({ kind: { $case: 'token', value: { index, id, text: decode([id]) } } }),
            ac.signal,
            deadline,
          );
          this.generations++;
          call.write({
            kind: {
              $case: 'summary',
              value: {
                ids: r.stats.ids,
                text: decode(r.stats.ids),
                placement: r.placement,
                planEpoch: r.epoch,
                requestClass: r.requestClass,
                slaMs: r.slaMs,
                ttftMs: r.stats.ttftMs,
                totalMs: r.stats.totalMs,
                serverComputeMs: r.stats.serverComputeMs,
                clientComputeMs: r.stats.clientComputeMs,
                promptTokens: r.promptTokens,
                ...r.predicted,
                ...(r.decodePlacement ? { decodePlacement: r.decodePlacement } : {}),
                ...(r.stats.handoverMs > 0 ? { handoverMs: r.stats.handoverMs } : {}),
                ...(r.executorId ? { executorId: r.executorId } : {}),
              },
            },
          });
          call.end();
        } catch (err) {
          if (!(err instanceof ValidationError)) this.failures++;
          // Aborted by stop() (a caller that cancelled is told nothing: the edge leaves its call alone).
          throw ac.signal.aborted ? new StatusError(grpc.status.UNAVAILABLE, 'the agent is shutting down', { cause: err }) : err;
        } finally {
          this.running.delete(ac);
        }
      },
      getStatus: (_call, cb) => cb(null, this.status()),
    };
  }

  /** Stops accepting work, lets running generations finish for `graceMs`, then cancels them and closes everything. */
  async stop(opts: { graceMs?: number } = {}): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    this.health.set('', ServingStatus.NOT_SERVING);
    this.health.set(AGENT_SERVICE_NAME, ServingStatus.NOT_SERVING);
    const until = Date.now() + (opts.graceMs ?? 10_000);
    while (this.running.size > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    for (const ac of this.running) ac.abort(new Error('the agent is shutting down'));
    clearInterval(this.pingTimer);
    clearInterval(this.sweepTimer);
    this.follower?.stop();
    this.health.closeWatchers();
    await shutdownServer(this.server);
    await this.metrics.stop();
    this.executors.close();
    await this.telemetry?.stop();
    await this.local?.close();
  }
}
