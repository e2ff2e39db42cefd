import * as grpc from '@grpc/grpc-js';
import {
  addReflection,
  capStatus,
  channelOptions,
  ExecutorServiceService,
  GRPCInferenceServiceService,
  INFERENCE_SERVICE_NAME,
  HEALTH_SERVICE_NAME,
  HealthReporter,
  ServerLoad,
  ServingStatus,
  Subjects,
  type ExecutorServiceServer,
  type GetStatusResponse,
  type Keepalive,
  type ProbeLinkRequest,
  type ProbeLinkResponse,
  type SessionRequest,
  type SessionResponse,
} from '@tandem/protocol';
import {
  bindServer,
  errorEdge,
  hostOf,
  MetricsEndpoint,
  serverAuthOptions,
  serveWithEdge,
  ValidationError,
  shutdownServer,
  startTelemetry,
  TelemetryPublisher,
  type Logger,
  type ServerSecurity,
  type TelemetrySettings,
} from '@tandem/service-kit';
import { Admission, type AdmittedWork } from './admission';
import { advertisedAddress, DEFAULT_LONG_STEP_TOKENS, DEFAULT_MAX_BATCH_TOKENS, DEFAULT_PREFILL_STALL_MS } from './config';
import type { StageEngine } from './engine';
import { NotReadyError, toGrpcStatus } from './errors';
import { defaultKvBudgetBytes, KvBudget, kvBytesOf } from './kv-budget';
import { LoadMeter, StepTotals, type ExecutorCounters, type LoadInterval } from './load-meter';
import { watchGc } from './gc-watch';
import { ExecutorMetrics } from './metrics';
import { OipModels } from './oip-models';
import { OipService, type OipServerState } from './oip-service';
import { mainThreadCpuMs } from './overhead';
import { StageScheduler } from './scheduler';
import { SplitSession, type TrafficCounters } from './split-session';
import { ClientTokenRates } from './token-rate';

export interface ExecutorServerOptions extends TelemetrySettings {
  readonly engine: StageEngine;
  readonly log: Logger;
  /** host:port; port 0 picks a free one. */
  readonly address: string;
  /**
   * EXECUTOR_ADVERTISE_ADDR: the host:port clients reach this executor at, published in every
   * load report (ServerLoad.address); 'off' publishes none; undefined derives it from `address`
   * (its host with the bound port) when that host is concrete, none when a wildcard (advertisedAddress).
   */
  readonly advertiseAddress?: string;
  readonly serverId: string;
  readonly maxSessions: number;
  /** Concurrent sessions one client id may hold; 0 or undefined: no limit beyond maxSessions. */
  readonly maxSessionsPerClient?: number;
  /**
   * Tokens per second one client id may have computed (a bucket per client, a burst of one
   * second's worth; see ClientTokenRates); 0 or undefined: no limit.
   */
  readonly maxTokensPerSPerClient?: number;
  /** Retry hint sent with a RESOURCE_EXHAUSTED refusal (message and trailer `retry-after-ms`), ms (default 1000). */
  readonly retryAfterMs?: number;
  /** 0 means the model's nPositions. */
  readonly maxContextTokens: number;
  /** KV-cache bytes all sessions may hold together; 0 or undefined means a quarter of the machine's memory. */
  readonly maxKvBytes?: number;
  readonly maxMessageBytes: number;
  readonly batching: boolean;
  readonly maxBatch: number;
  /** Most tokens in one batch beyond its first step (default DEFAULT_MAX_BATCH_TOKENS). */
  readonly maxBatchTokens?: number;
  /** Prefill interleaving (SchedulerOptions.longStepTokens); 0 off (default DEFAULT_LONG_STEP_TOKENS). */
  readonly longStepTokens?: number;
  /** SchedulerOptions.maxStallMs (default DEFAULT_PREFILL_STALL_MS). */
  readonly prefillStallMs?: number;
  /** Decode rounds (SchedulePolicy.rounds) where the engine has runSteps; default true. */
  readonly decodeRounds?: boolean;
  readonly idleTimeoutMs: number;
  /**
   * TLS credentials and bearer tokens of the gRPC port (loadServerSecurity); undefined =
   * plaintext, no tokens. With tokens, a session's `open.client_id` must be its token's identity.
   */
  readonly security?: ServerSecurity;
  /**
   * HTTP/2 keepalive of the gRPC port (GRPC_KEEPALIVE_*; default DEFAULT_KEEPALIVE): a client
   * that stops answering pings (gone without FIN or RST) is dropped within time + timeout and
   * its sessions are cancelled and freed, a server-side generation included (its token writes
   * would otherwise go on succeeding into buffers until it is done).
   */
  readonly keepalive?: Keepalive;
  /** Port of the Prometheus endpoint (GET /metrics) on the host of `address`; 0 picks a free one; undefined: none (the metrics are still kept, see `metrics`). */
  readonly metricsPort?: number;
}

/** The executor's gRPC service name, as health reports it. */
export const EXECUTOR_SERVICE_NAME = 'tandem.executor.v1.ExecutorService';
/** The largest payload and reply of a link probe (ExecutorService.ProbeLink), bytes. */
export const PROBE_MAX_BYTES = 1 << 20;

/**
 * The server-executor: serves split sessions over gRPC on one engine, and the Open Inference
 * Protocol (KServe v2, OipService) on the same server and scheduler, reports health
 * (SERVING only after the engine warmed up; NOT_SERVING while draining) and publishes
 * its load over NATS.
 */
export class ExecutorServer {
  private readonly server: grpc.Server;
  private readonly health = new HealthReporter(ServingStatus.NOT_SERVING);
  private readonly scheduler: StageScheduler;
  /** The sessions open and the Open Inference Protocol calls running, and whether one more may start. */
  private readonly admission: Admission<AdmittedWork>;
  /** The Open Inference Protocol (KServe v2) service on the same server. */
  private readonly oip: OipService;
  /** True once the engine warmed up and the start-up profile ran (the executor serves). */
  private ready = false;
  /** Token buckets per client id (EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT), when limited. */
  private readonly rates: ClientTokenRates | undefined;
  private draining = false;
  /** Ends the event loop's garbage-collection watch (set by start()). */
  private stopGcWatch: (() => void) | undefined;
  /** stop() has begun. */
  private stopping = false;
  /** Why the engine can no longer run stages, once it failed. */
  private engineFailure: Error | undefined;
  private telemetry: TelemetryPublisher | undefined;
  /** Steps of more positions are long (interleaved prefills); 1 when interleaving is off. */
  private readonly longStepTokens: number;
  /** The steps finished (since the start-up profile). */
  private steps = new StepTotals();
  private readonly traffic: TrafficCounters = { messagesIn: 0, bytesIn: 0, messagesOut: 0, bytesOut: 0, kvBytesIn: 0, kvBytesOut: 0 };
  private port = 0;
  /** The address published in load reports (ServerLoad.address), known once bound; undefined: none. */
  private advertised: string | undefined;
  private readonly log: Logger;
  private readonly maxContext: number;
  private readonly kv: KvBudget;
  /** The Prometheus registry and its endpoint (started when `metricsPort` is set). */
  readonly metrics: MetricsEndpoint;
  private readonly observed: ExecutorMetrics;
  /** True while the start-up profile runs: its steps are not traffic. */
  private profiling = false;
  private resolveClosed!: (e: Error | undefined) => void;
  /** Resolves when the server has stopped, with the error that stopped it if any. */
  readonly closed = new Promise<Error | undefined>((r) => {
    this.resolveClosed = r;
  });

  constructor(private readonly opts: ExecutorServerOptions) {
    this.log = opts.log.child({ component: 'executor' });
    const interleave = opts.longStepTokens ?? DEFAULT_LONG_STEP_TOKENS;
    this.longStepTokens = interleave > 0 ? interleave : 1;
    this.scheduler = new StageScheduler(opts.engine, {
      batching: opts.batching,
      maxBatch: opts.maxBatch,
      maxBatchTokens: opts.maxBatchTokens ?? DEFAULT_MAX_BATCH_TOKENS,
      ...(interleave > 0 ? { longStepTokens: interleave } : {}),
      maxStallMs: opts.prefillStallMs ?? DEFAULT_PREFILL_STALL_MS,
      rounds: opts.decodeRounds ?? true,
      onStepDone: (o) => {
        this.steps.record(o);
        if (!this.profiling) this.observed.step(o);
      },
      onCall: (n, stage, ms) => {
        if (!this.profiling) this.observed.call(n, stage, ms);
      },
    });
    this.maxContext = opts.maxContextTokens > 0 ? Math.min(opts.maxContextTokens, opts.engine.nPositions) : opts.engine.nPositions;
    this.kv = new KvBudget(opts.maxKvBytes ? opts.maxKvBytes : defaultKvBudgetBytes());
    this.rates = opts.maxTokensPerSPerClient ? new ClientTokenRates(opts.maxTokensPerSPerClient) : undefined;
    const { stageCount, nEmbd } = opts.engine;
    this.admission = new Admission(
      { ...opts, kvBytesPerToken: kvBytesOf(stageCount, nEmbd, 0, stageCount, 1), tokens: opts.security?.tokens },
      this.kv,
      this.rates,
    );
    this.oip = new OipService({
      engine: opts.engine,
      scheduler: this.scheduler,
      models: new OipModels({
        modelId: opts.engine.modelId,
        stageCount,
        nEmbd,
        vocabSize: opts.engine.vocabSize,
        maxContextTokens: this.maxContext,
        maxRows: opts.maxBatch,
        maxMessageBytes: opts.maxMessageBytes,
      }),
      admission: this.admission,
      kv: this.kv,
      rates: this.rates,
      tokens: opts.security?.tokens,
      state: () => this.oipState(),
      log: this.log,
    });
    this.server = new grpc.Server({ ...channelOptions(opts.maxMessageBytes, opts.keepalive), ...serverAuthOptions(opts.security?.tokens) });
    this.metrics = new MetricsEndpoint(this.log);
    this.observed = new ExecutorMetrics(this.metrics.registry, {
      activeSessions: () => this.admission.members.size,
      queueDepth: () => this.scheduler.depth,
      kvBytes: () => this.kvBytes(),
    });
    void opts.engine.failed?.then((err) => this.onEngineFailed(err));
  }

  /** The engine died: log it for an operator, report NOT_SERVING and refuse new sessions; health and status keep answering. */
  private onEngineFailed(err: Error): void {
    if (this.engineFailure || this.draining) return;
    this.engineFailure = err;
    this.admission.refuse(`the executor cannot run stages and accepts no new sessions: ${capStatus(err.message, 300)}`);
    this.log.error({ err }, 'the inference engine failed; reporting NOT_SERVING');
    this.health.set('', ServingStatus.NOT_SERVING);
    this.health.set(EXECUTOR_SERVICE_NAME, ServingStatus.NOT_SERVING);
  }

  /** Warms the engine up, binds, marks SERVING and starts telemetry. Resolves with the bound port. */
  async start(): Promise<{ port: number }> {
    serveWithEdge(this.server, ExecutorServiceService, this.handlers(), errorEdge(this.log, toGrpcStatus));
    serveWithEdge(this.server, GRPCInferenceServiceService, this.oip.handlers(), errorEdge(this.log, toGrpcStatus));
    this.health.addTo(this.server);
    // Server reflection (grpcurl, Postman): one name per service this server serves.
    addReflection(this.server, [EXECUTOR_SERVICE_NAME, INFERENCE_SERVICE_NAME, HEALTH_SERVICE_NAME]);
    this.port = await bindServer(this.server, this.opts.address, this.opts.security?.credentials ?? grpc.ServerCredentials.createInsecure());
    this.advertised = advertisedAddress(this.opts.advertiseAddress, hostOf(this.opts.address), this.port);
    if (this.opts.metricsPort !== undefined) await this.metrics.start(hostOf(this.opts.address), this.opts.metricsPort);
    // Collections pause the thread they run on: the event loop's stall every stream, the
    // inference thread's stretch the engine call in flight (tandem_executor_gc_pause_duration_seconds).
    this.stopGcWatch = watchGc((kind, ms) => this.observed.gcPause('main', kind, ms));
    this.opts.engine.onGcPause?.((kind, ms) => this.observed.gcPause('engine', kind, ms));
    const t0 = performance.now();
    await this.opts.engine.warmup();
    this.profiling = true;
    try {
      await this.profile();
    } finally {
      this.profiling = false;
    }
    this.log.info(
      {
        port: this.port,
        advertised: this.advertised ?? '(none)',
        tls: this.opts.security?.tls ?? false,
        mtls: this.opts.security?.mtls ?? false,
        tokens: !!this.opts.security?.tokens,
        modelId: this.opts.engine.modelId,
        warmupMs: Math.round(performance.now() - t0),
      },
      'executor ready',
    );
    // Drained while warming up (SIGUSR2): it stays NOT_SERVING.
    if (!this.draining) {
      this.health.set('', ServingStatus.SERVING);
      this.health.set(EXECUTOR_SERVICE_NAME, ServingStatus.SERVING);
    }
    this.ready = true;
    const report = this.loadReader();
    this.telemetry = startTelemetry(this.opts, {
      name: `executor-${this.opts.serverId}`,
      subject: Subjects.serverLoad(this.opts.serverId),
      payload: () => ServerLoad.encode(report()).finish(),
      log: this.log,
    });
    return { port: this.port };
  }

  /**
   * Measures every stage once before serving (a 16-token prefill and 3 decode steps, twice),
   * through the scheduler so the figures land in the stage statistics: the planner gets
   * the server's costs from the first load report, not only after traffic arrived. The first
   * round runs stage by stage (every stage gets a figure of its own); the second as a
   * server-side generation runs (fused when the engine has the whole range fused), which gives
   * the whole-model figure (StageScheduler.wholeStats).
   */
  private async profile(): Promise<void> {
    const n = this.opts.engine.stageCount;
    for (let round = 0; round < 2; round++) {
      const cache = this.opts.engine.newCache();
      let tokens = 16;
      for (let step = 0; step < 4; step++) {
        // Round 0 stage by stage (every stage gets a figure of its own); round 1 as a server-side
        // generation's steps run (fused when loaded, the head on the last row): the whole-model figure.
        await this.scheduler.submit('profile', 0, n, { dtype: 'int64', shape: [1, tokens], data: new BigInt64Array(tokens).fill(1n) }, cache, {
          fuse: round > 0,
          lastRowOnly: round > 0,
        });
        tokens = 1;
      }
      this.opts.engine.releaseCache(cache);
    }
    // Profiling is not traffic: step counts start from zero (and load reports from now).
    this.steps = new StepTotals();
  }

  /** Liveness and readiness as the Open Inference Protocol reports them (ServerLive, ServerReady, ModelReady). */
  private oipState(): OipServerState {
    const live = this.engineFailure === undefined;
    const ready = live && this.ready && !this.draining;
    const notReadyReason = !live
      ? 'the executor cannot run stages (its inference engine failed)'
      : this.draining
        ? 'the executor is draining and accepts no new inference'
        : 'the executor is warming up; retry when ServerReady is true';
    return { live, ready, notReadyReason };
  }

  /** KV-cache bytes reserved by open sessions, and the budget (EXECUTOR_MAX_KV_BYTES). */
  kvBytes(): { used: number; limit: number } {
    return { used: this.kv.usedBytes, limit: this.kv.limitBytes };
  }

  /** The address published in load reports (ServerLoad.address), once started; undefined: none. */
  get advertisedAddress(): string | undefined {
    return this.advertised;
  }

  /** Current counters, as GetStatus returns them. */
  status(): GetStatusResponse {
    return {
      activeSessions: this.admission.members.size,
      queueDepth: this.scheduler.depth,
      sessionsOpened: this.admission.opened,
      stepsCompleted: this.steps.count,
      maxSessions: this.opts.maxSessions,
      modelId: this.opts.engine.modelId,
      draining: this.draining,
      batchedSteps: this.scheduler.batchedStepCount,
    };
  }

  /** What the executor has counted so far: reading changes nothing (readers take differences, see LoadMeter). */
  counters(): ExecutorCounters {
    return { atMs: performance.now(), busyMs: this.scheduler.busyTimeMs, cpuMs: mainThreadCpuMs(), traffic: { ...this.traffic }, steps: this.steps.snapshot() };
  }

  /**
   * A reader of the load reports published over NATS (also used by tests): each call reports the
   * interval since its previous call (the first: since the reader was made). Readers are independent.
   */
  loadReader(): () => ServerLoad {
    const meter = new LoadMeter(this.counters(), this.opts.engine.computesOnEventLoop !== false);
    return () => this.loadReport(meter.next(this.counters()));
  }

  /** The load report: the state now and the load of one interval. */
  private loadReport(interval: LoadInterval): ServerLoad {
    return {
      serverId: this.opts.serverId,
      modelId: this.opts.engine.modelId,
      stages: this.scheduler.stats.snapshot(),
      wholeModel: this.scheduler.wholeStats.snapshot()[0],
      queueDepth: this.scheduler.depth,
      activeSessions: this.admission.members.size,
      unixMs: Date.now(),
      longStepTokens: this.longStepTokens,
      ...interval,
      ...(this.advertised !== undefined ? { address: this.advertised } : {}),
      ...(this.draining ? { draining: true } : {}),
    };
  }

  private handlers(): ExecutorServiceServer {
    return {
      session: (call: grpc.ServerDuplexStream<SessionRequest, SessionResponse>) => {
        new SplitSession(
          call,
          this.opts.engine,
          this.scheduler,
          { maxContextTokens: this.maxContext, idleTimeoutMs: this.opts.idleTimeoutMs },
          this.log,
          this.admission,
          this.traffic,
          this.kv,
          this.rates,
          this.observed,
        );
      },
      getStatus: (_call, cb) => cb(null, this.status()),
      probeLink: (call, cb) => cb(null, this.probeLink(call.request)),
    };
  }

  /**
   * A link probe's answer (ExecutorService.ProbeLink): `reply_bytes` zero bytes, the payload
   * discarded. Both sizes at most {@link PROBE_MAX_BYTES}; none while draining.
   */
  private probeLink(req: ProbeLinkRequest): ProbeLinkResponse {
    for (const [field, n] of [
      ['payload', req.payload.byteLength],
      ['reply_bytes', req.replyBytes],
    ] as const)
      if (n > PROBE_MAX_BYTES) throw new ValidationError(`${field} must be at most ${PROBE_MAX_BYTES} bytes, given ${n}`);
    if (this.draining || this.stopping) throw new NotReadyError('the executor is draining and answers no link probe');
    return { payload: Buffer.alloc(req.replyBytes) };
  }

  /**
   * Starts draining without stopping (SIGUSR2): NOT_SERVING, new sessions and inference refused
   * with UNAVAILABLE, a load report saying `draining` published at once and on every interval
   * after, so the planner moves this executor's clients elsewhere; open sessions run on to
   * their end. The executor stays up (GetStatus, health, metrics) until stop(); there is no way
   * back but a restart. Idempotent.
   */
  drain(): void {
    if (this.draining) return;
    this.draining = true;
    this.admission.refuse('the executor is draining and accepts no new sessions');
    this.health.set('', ServingStatus.NOT_SERVING);
    this.health.set(EXECUTOR_SERVICE_NAME, ServingStatus.NOT_SERVING);
    this.telemetry?.publishNow();
    this.log.info({ sessions: this.admission.members.size }, 'draining');
  }

  /**
   * Drains (see drain()), then stops: NOT_SERVING at once, no new sessions, a load report saying `draining` published at
   * once (and on every interval while the grace runs, so a planner moves this executor's clients
   * elsewhere before it is gone), open sessions get `graceMs` to finish, then are ended with
   * UNAVAILABLE; the gRPC server and NATS are closed. Idempotent.
   */
  async stop(opts: { graceMs?: number } = {}): Promise<void> {
    if (this.stopping) {
      await this.closed;
      return;
    }
    this.stopping = true;
    this.drain();
    const sessions = this.admission.members;
    const graceMs = opts.graceMs ?? 10_000;
    const until = Date.now() + graceMs;
    while (sessions.size > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    for (const s of [...sessions]) s.close('the executor is shutting down', grpc.status.UNAVAILABLE, true);
    this.health.closeWatchers();
    await shutdownServer(this.server);
    await this.metrics.stop();
    this.stopGcWatch?.();
    await this.telemetry?.stop();
    await this.opts.engine.close();
    this.log.info('executor stopped');
    this.resolveClosed(undefined);
  }
}
