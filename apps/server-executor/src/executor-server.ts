import * as grpc from '@grpc/grpc-js';
import {
  capStatus,
  channelOptions,
  ExecutorServiceService,
  HealthReporter,
  quoted,
  ServerLoad,
  ServingStatus,
  Subjects,
  type ExecutorServiceServer,
  type GetStatusResponse,
  type Keepalive,
  type SessionRequest,
  type SessionResponse,
} from '@tandem/protocol';
import { bindServer, checkIdentity, errorEdge, serverAuthOptions, serveWithEdge, shutdownServer, TelemetryPublisher, type Logger, type NatsAuth, type ServerSecurity } from '@tandem/service-kit';
import { DEFAULT_LONG_STEP_TOKENS, DEFAULT_MAX_BATCH_TOKENS, DEFAULT_PREFILL_STALL_MS } from './config';
import type { StageEngine } from './engine';
import { CapacityError, NotReadyError, toGrpcStatus } from './errors';
import { defaultKvBudgetBytes, isAttentionStage, KvBudget, kvBytesPerToken } from './kv-budget';
import { mainThreadCpuMs, OverheadModel } from './overhead';
import { StretchMeter } from './stage-stats';
import { StageScheduler } from './scheduler';
import { SplitSession, type TrafficCounters } from './split-session';
import { ClientTokenRates } from './token-rate';

export interface ExecutorServerOptions {
  readonly engine: StageEngine;
  readonly log: Logger;
  /** host:port; port 0 picks a free one. */
  readonly address: string;
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
  readonly idleTimeoutMs: number;
  /** NATS URL for telemetry, or undefined for none. */
  readonly natsUrl?: string;
  /** NATS credentials (docs/security.md (NATS)); undefined connects without. */
  readonly natsAuth?: NatsAuth;
  readonly telemetryIntervalMs: number;
  /**
   * TLS credentials and bearer tokens of the gRPC port (loadServerSecurity); undefined =
   * plaintext, no tokens. With tokens, a session's `open.clientId` must be its token's identity.
   */
  readonly security?: ServerSecurity;
  /**
   * HTTP/2 keepalive of the gRPC port (GRPC_KEEPALIVE_*; default DEFAULT_KEEPALIVE): a client
   * that stops answering pings (gone without FIN or RST) is dropped within time + timeout and
   * its sessions are cancelled and freed, a server-side generation included (its token writes
   * would otherwise go on succeeding into buffers until it is done).
   */
  readonly keepalive?: Keepalive;
}

/**
 * The server-executor: serves split sessions over gRPC on one engine, reports health
 * (SERVING only after the engine warmed up; NOT_SERVING while draining) and publishes
 * its load over NATS.
 */
export class ExecutorServer {
  private readonly server: grpc.Server;
  private readonly health = new HealthReporter(ServingStatus.NOT_SERVING);
  private readonly scheduler: StageScheduler;
  private readonly sessions = new Set<SplitSession>();
  /** Open sessions per client id (EXECUTOR_MAX_SESSIONS_PER_CLIENT). */
  private readonly perClient = new Map<string, number>();
  /** Token buckets per client id (EXECUTOR_MAX_TOKENS_PER_S_PER_CLIENT), when limited. */
  private readonly rates: ClientTokenRates | undefined;
  private sessionsOpened = 0;
  private draining = false;
  /** Why the engine can no longer run stages, once it failed. */
  private engineFailure: Error | undefined;
  private telemetry: TelemetryPublisher | undefined;
  private lastBusyMs = 0;
  private lastTickMs = performance.now();
  private queueWaitSumMs = 0;
  private queueWaitCount = 0;
  private readonly stretch = new StretchMeter();
  /** Steps of more positions are long (interleaved prefills); 1 when interleaving is off. */
  private readonly longStepTokens: number;
  private stepsCompleted = 0;
  private readonly traffic: TrafficCounters = { messagesIn: 0, bytesIn: 0, messagesOut: 0, bytesOut: 0 };
  private readonly overhead = new OverheadModel();
  private lastCpuMs: number | undefined;
  private port = 0;
  private readonly log: Logger;
  private readonly maxContext: number;
  private readonly kv: KvBudget;
  private resolveClosed!: (e: Error | undefined) => void;
  /** Resolves when the server has stopped, with the error that stopped it if any. */
  readonly closed = new Promise<Error | undefined>((r) => { this.resolveClosed = r; });

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
      onStepDone: (o) => { this.stepsCompleted++; this.queueWaitSumMs += o.queueMs; this.queueWaitCount++; this.stretch.record(o); },
    });
    this.maxContext = opts.maxContextTokens > 0 ? Math.min(opts.maxContextTokens, opts.engine.nPositions) : opts.engine.nPositions;
    this.kv = new KvBudget(opts.maxKvBytes ? opts.maxKvBytes : defaultKvBudgetBytes());
    this.rates = opts.maxTokensPerSPerClient ? new ClientTokenRates(opts.maxTokensPerSPerClient) : undefined;
    this.server = new grpc.Server({ ...channelOptions(opts.maxMessageBytes, opts.keepalive), ...serverAuthOptions(opts.security?.tokens) });
    void opts.engine.failed?.then((err) => this.onEngineFailed(err));
  }

  /** The engine died: log it for an operator, report NOT_SERVING and refuse new sessions; health and status keep answering. */
  private onEngineFailed(err: Error): void {
    if (this.engineFailure || this.draining) return;
    this.engineFailure = err;
    this.log.error({ err }, 'the inference engine failed; reporting NOT_SERVING');
    this.health.set('', ServingStatus.NOT_SERVING);
    this.health.set('tandem.executor.v1.ExecutorService', ServingStatus.NOT_SERVING);
  }

  /** Warms the engine up, binds, marks SERVING and starts telemetry. Resolves with the bound port. */
  async start(): Promise<{ port: number }> {
    serveWithEdge(this.server, ExecutorServiceService, this.handlers(), errorEdge(this.log, toGrpcStatus));
    this.health.addTo(this.server);
    this.port = await bindServer(this.server, this.opts.address, this.opts.security?.credentials ?? grpc.ServerCredentials.createInsecure());
    const t0 = performance.now();
    await this.opts.engine.warmup();
    await this.profile();
    this.log.info({ port: this.port, tls: this.opts.security?.tls ?? false, mtls: this.opts.security?.mtls ?? false, tokens: !!this.opts.security?.tokens, modelId: this.opts.engine.modelId, warmupMs: Math.round(performance.now() - t0) }, 'executor ready');
    this.health.set('', ServingStatus.SERVING);
    this.health.set('tandem.executor.v1.ExecutorService', ServingStatus.SERVING);
    if (this.opts.natsUrl) {
      this.telemetry = new TelemetryPublisher({
        natsUrl: this.opts.natsUrl, natsAuth: this.opts.natsAuth, name: `executor-${this.opts.serverId}`, subject: Subjects.serverLoad(this.opts.serverId),
        intervalMs: this.opts.telemetryIntervalMs, payload: () => ServerLoad.encode(this.loadReport()).finish(), log: this.log,
      });
      this.telemetry.start();
    }
    return { port: this.port };
  }

  /**
   * Measures every stage once before serving (a 16-token prefill and 3 decode steps, twice),
   * through the scheduler so the figures land in the stage statistics: the planner gets
   * the server's costs from the first load report, not only after traffic arrived. The first
   * round runs stage by stage (every stage gets a figure of its own); the second may run
   * fused when the engine has the whole range fused, so the figures also reflect that path.
   */
  private async profile(): Promise<void> {
    const n = this.opts.engine.stageCount;
    for (let round = 0; round < 2; round++) {
      const cache = this.opts.engine.newCache();
      let tokens = 16;
      for (let step = 0; step < 4; step++) {
        await this.scheduler.submit('profile', 0, n, { dtype: 'int64', shape: [1, tokens], data: new BigInt64Array(tokens).fill(1n) }, cache, { fuse: round > 0 });
        tokens = 1;
      }
      this.opts.engine.releaseCache(cache);
    }
    // Profiling is not traffic: counters and utilisation start from zero.
    this.stepsCompleted = 0;
    this.queueWaitSumMs = 0;
    this.queueWaitCount = 0;
    this.stretch.reset();
    this.lastBusyMs = this.scheduler.busyTimeMs;
    this.lastTickMs = performance.now();
    this.lastCpuMs = mainThreadCpuMs();
  }

  /** KV-cache bytes reserved by open sessions, and the budget (EXECUTOR_MAX_KV_BYTES). */
  kvBytes(): { used: number; limit: number } {
    return { used: this.kv.usedBytes, limit: this.kv.limitBytes };
  }

  /** Current counters, as GetStatus returns them. */
  status(): GetStatusResponse {
    return {
      activeSessions: this.sessions.size,
      queueDepth: this.scheduler.depth,
      sessionsOpened: this.sessionsOpened,
      stepsCompleted: this.stepsCompleted,
      maxSessions: this.opts.maxSessions,
      modelId: this.opts.engine.modelId,
      draining: this.draining,
      batchedSteps: this.scheduler.batchedStepCount,
    };
  }

  /** The load report published over NATS (also used by tests). */
  loadReport(): ServerLoad {
    const now = performance.now();
    const busy = this.scheduler.busyTimeMs;
    const wallMs = Math.max(1, now - this.lastTickMs);
    const busyMs = busy - this.lastBusyMs;
    const util = Math.min(1, Math.max(0, busyMs / wallMs));
    this.lastBusyMs = busy;
    this.lastTickMs = now;
    this.recordOverhead(wallMs, busyMs);
    const meanQueueMs = this.queueWaitCount ? this.queueWaitSumMs / this.queueWaitCount : 0;
    this.queueWaitSumMs = 0;
    this.queueWaitCount = 0;
    const stretch = this.stretch.interval();
    return {
      serverId: this.opts.serverId,
      modelId: this.opts.engine.modelId,
      stages: this.scheduler.stats.snapshot().map((s) => ({ stage: s.stage, prefillMsPerToken: s.prefillMsPerToken, decodeMs: s.decodeMs, samples: s.samples })),
      queueDepth: this.scheduler.depth,
      activeSessions: this.sessions.size,
      utilisation: util,
      unixMs: Date.now(),
      meanQueueMs,
      overhead: this.overhead.fit(),
      decodeStretch: stretch.decode,
      promptStretch: stretch.prompt,
      longPromptStretch: stretch.longPrompt,
      longStepTokens: this.longStepTokens,
    };
  }

  /**
   * Feeds one interval to the overhead model: the main thread's CPU besides stage compute
   * (compute is subtracted when the engine runs it on the event loop) against the session
   * traffic of the interval. Counters restart for the next interval.
   */
  private recordOverhead(wallMs: number, busyMs: number): void {
    const cpu = mainThreadCpuMs();
    if (cpu !== undefined && this.lastCpuMs !== undefined) {
      const computeOnMain = this.opts.engine.computesOnEventLoop === false ? 0 : busyMs;
      this.overhead.record({ cpuMs: Math.max(0, cpu - this.lastCpuMs - computeOnMain), wallMs, ...this.traffic });
    }
    this.lastCpuMs = cpu;
    Object.assign(this.traffic, { messagesIn: 0, bytesIn: 0, messagesOut: 0, bytesOut: 0 });
  }

  private handlers(): ExecutorServiceServer {
    return {
      session: (call: grpc.ServerDuplexStream<SessionRequest, SessionResponse>) => {
        const s = new SplitSession(call, this.opts.engine, this.scheduler, { maxContextTokens: this.maxContext, idleTimeoutMs: this.opts.idleTimeoutMs },
          this.log, (sess) => { this.authorize(call.metadata, sess.clientId); this.admit(sess); }, this.traffic, this.kv, this.rates);
        void s.closed.then(() => {
          if (!this.sessions.delete(s)) return;
          this.rates?.release(s.clientId);
          const n = (this.perClient.get(s.clientId) ?? 1) - 1;
          if (n > 0) this.perClient.set(s.clientId, n);
          else this.perClient.delete(s.clientId);
        });
      },
      getStatus: (_call, cb) => cb(null, this.status()),
    };
  }

  /** With tokens: a session opens only under its caller's own client id (PERMISSION_DENIED otherwise). */
  private authorize(metadata: grpc.Metadata, clientId: string): void {
    const tokens = this.opts.security?.tokens;
    if (!tokens) return;
    // The interceptor let the call in, so the metadata authenticates; this learns who.
    checkIdentity(tokens.authenticate(metadata), 'open.clientId', clientId);
  }

  private admit(s: SplitSession): void {
    if (this.draining) throw new NotReadyError('the executor is draining and accepts no new sessions');
    if (this.engineFailure) throw new NotReadyError(`the executor cannot run stages and accepts no new sessions: ${capStatus(this.engineFailure.message, 300)}`);
    const retryAfterMs = this.opts.retryAfterMs ?? 1000;
    if (this.sessions.size >= this.opts.maxSessions) throw new CapacityError(`open sessions must stay <= ${this.opts.maxSessions} (EXECUTOR_MAX_SESSIONS), given one more`, retryAfterMs);
    const perClient = this.opts.maxSessionsPerClient ?? 0;
    const held = this.perClient.get(s.clientId) ?? 0;
    if (perClient > 0 && held >= perClient) {
      throw new CapacityError(`open sessions of client ${quoted(s.clientId, 64)} must stay <= ${perClient} (EXECUTOR_MAX_SESSIONS_PER_CLIENT), given one more; retry after ${retryAfterMs} ms or when one of its sessions ends`, retryAfterMs);
    }
    const e = this.opts.engine;
    let oneToken = 0;
    for (let st = 0; st < e.stageCount; st++) if (isAttentionStage(st, e.stageCount)) oneToken += kvBytesPerToken(e.nEmbd);
    if (!this.kv.hasRoom(oneToken)) {
      throw new CapacityError(`the KV cache must stay <= ${this.kv.limitBytes} bytes (EXECUTOR_MAX_KV_BYTES) and ${this.kv.usedBytes} are in use by ${this.sessions.size} open sessions: not one more token fits, retry later`, retryAfterMs);
    }
    this.sessions.add(s);
    this.perClient.set(s.clientId, held + 1);
    this.rates?.acquire(s.clientId);
    this.sessionsOpened++;
  }

  /**
   * Drains: NOT_SERVING at once, no new sessions, open sessions get `graceMs` to finish,
   * then are ended with UNAVAILABLE; the gRPC server and NATS are closed. Idempotent.
   */
  async stop(opts: { graceMs?: number } = {}): Promise<void> {
    if (this.draining) { await this.closed; return; }
    this.draining = true;
    this.health.set('', ServingStatus.NOT_SERVING);
    this.health.set('tandem.executor.v1.ExecutorService', ServingStatus.NOT_SERVING);
    this.log.info({ sessions: this.sessions.size }, 'draining');
    const graceMs = opts.graceMs ?? 10_000;
    const until = Date.now() + graceMs;
    while (this.sessions.size > 0 && Date.now() < until) await new Promise((r) => setTimeout(r, 20));
    for (const s of this.sessions) s.close('the executor is shutting down', grpc.status.UNAVAILABLE, true);
    this.health.closeWatchers();
    await shutdownServer(this.server);
    await this.telemetry?.stop();
    await this.opts.engine.close();
    this.log.info('executor stopped');
    this.resolveClosed(undefined);
  }
}
