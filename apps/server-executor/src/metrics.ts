import { counter, Counter, Histogram, latencyHistogram, readGauge, type Registry } from '@tandem/service-kit';
import { GC_KINDS, type GcKind } from './gc-watch';
import type { StepOutcome } from './scheduler';

/** The executor's threads with a heap of their own: the event loop, and the inference thread of the worker engine. */
export type GcThread = 'main' | 'engine';

/** How a server-side generation ended: every token made, the session closed under it (cancel, deadline, idle, shutdown), or an error of its own. */
export type GenerationEnd = 'completed' | 'cancelled' | 'failed';

/** Which way a stage's state moved between the phases of a phased plan: `put` to the server, `take` to the client. */
export type HandOverDirection = 'put' | 'take';

/** What a session tells about its server-side generation (SplitSession's decode loop) and its hand-overs. */
export interface GenerationObserver {
  generationStarted(): void;
  /** One token made and written. */
  token(): void;
  generationEnded(how: GenerationEnd): void;
  /** A kv_put chunk taken (`stageStarted` on its stage's first chunk), or a kv_take answered (`stageStarted` true): `bytes` of keys plus values. */
  handOver?(direction: HandOverDirection, bytes: number, stageStarted: boolean): void;
}

/** What the gauges read when scraped: the executor's own state, never a copy of it. */
export interface ExecutorGaugeSources {
  activeSessions(): number;
  queueDepth(): number;
  kvBytes(): { used: number; limit: number };
}

/**
 * The executor's Prometheus metrics (`tandem_executor_*`), registered in `registry`. Events are
 * observed where they happen (the scheduler's finished steps and engine calls, the sessions'
 * server-side generations); the gauges read the executor's state when scraped.
 */
export class ExecutorMetrics implements GenerationObserver {
  private readonly stepSeconds: Histogram<'kind'>;
  private readonly batchSize: Histogram;
  private readonly stageCallSeconds: Histogram<'stage'>;
  private readonly started: Counter;
  private readonly finished: Counter<'status'>;
  private readonly tokens: Counter;
  private readonly handOverBytes: Counter<'direction'>;
  private readonly handOverStages: Counter<'direction'>;
  private readonly gcPauses: Histogram<'thread' | 'kind'>;

  constructor(registry: Registry, read: ExecutorGaugeSources) {
    const registers = [registry];
    this.stepSeconds = latencyHistogram(
      registry,
      'tandem_executor_step_duration_seconds',
      'Steps (a split step, or one token of a server-side generation) from submission to result, queueing included, by kind: decode (one position) or prompt',
      ['kind'],
    );
    this.batchSize = new Histogram({
      name: 'tandem_executor_batch_size',
      help: 'Steps run together in one engine call (1: alone)',
      buckets: [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128],
      registers,
    });
    this.stageCallSeconds = latencyHistogram(
      registry,
      'tandem_executor_stage_call_duration_seconds',
      "Engine calls by stage (the stage's index, or 'fused' for one call through every stage of an all-server step): the call's wall time, every step of its batch together",
      ['stage'],
    );
    this.started = counter(registry, 'tandem_executor_generations_started_total', 'Server-side generations started');
    this.finished = counter(
      registry,
      'tandem_executor_generations_finished_total',
      'Server-side generations ended, by status: completed (every token made), cancelled (the session closed first: cancel, deadline, idle, shutdown) or failed',
      ['status'],
    );
    this.tokens = counter(registry, 'tandem_executor_generated_tokens_total', 'Tokens made by server-side generations');
    this.handOverBytes = counter(
      registry,
      'tandem_executor_kv_handover_bytes_total',
      'KV-cache bytes (keys plus values) handed over between the phases of phased plans, by direction: put (kv_put, client to server) or take (kv_take, server to client)',
      ['direction'],
    );
    this.handOverStages = counter(
      registry,
      'tandem_executor_kv_handover_stages_total',
      "Stages whose state was handed over between the phases of phased plans, by direction: put (a stage's first kv_put chunk) or take (a kv_take answered)",
      ['direction'],
    );
    this.gcPauses = new Histogram({
      name: 'tandem_executor_gc_pause_duration_seconds',
      help: "Garbage-collection pauses by thread (main: the event loop; engine: the inference thread, whose pauses stretch the engine call they fall in) and V8's kind (minor, major, incremental, weakcb)",
      labelNames: ['thread', 'kind'],
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25],
      registers,
    });
    for (const thread of ['main', 'engine'] as const) for (const kind of GC_KINDS) this.gcPauses.zero({ thread, kind });
    for (const direction of ['put', 'take'] as const) {
      this.handOverBytes.inc({ direction }, 0);
      this.handOverStages.inc({ direction }, 0);
    }
    for (const status of ['completed', 'cancelled', 'failed'] as const) this.finished.inc({ status }, 0);
    for (const kind of ['decode', 'prompt']) this.stepSeconds.zero({ kind });
    readGauge(registry, 'tandem_executor_sessions_active', 'Sessions open', () => read.activeSessions());
    readGauge(registry, 'tandem_executor_queue_depth', 'Steps queued or running in the scheduler', () => read.queueDepth());
    readGauge(registry, 'tandem_executor_kv_reserved_bytes', 'KV-cache bytes reserved by open sessions', () => read.kvBytes().used);
    readGauge(registry, 'tandem_executor_kv_limit_bytes', 'KV-cache bytes all sessions together may hold (EXECUTOR_MAX_KV_BYTES)', () => read.kvBytes().limit);
  }

  /** A finished step (the scheduler's onStepDone). */
  step(o: Pick<StepOutcome, 'queueMs' | 'serviceMs' | 'positions' | 'long'>): void {
    this.stepSeconds.observe({ kind: o.positions > 1 || o.long ? 'prompt' : 'decode' }, Math.max(0, o.queueMs + o.serviceMs) / 1000);
  }

  /** One garbage-collection pause of `thread` that took `ms`. */
  gcPause(thread: GcThread, kind: GcKind, ms: number): void {
    this.gcPauses.observe({ thread, kind }, Math.max(0, ms) / 1000);
  }

  /** One engine call of `steps` steps through `stage` that took `ms` (the scheduler's onCall). */
  call(steps: number, stage: number | 'fused', ms: number): void {
    this.batchSize.observe(steps);
    this.stageCallSeconds.observe({ stage: String(stage) }, Math.max(0, ms) / 1000);
  }

  generationStarted(): void {
    this.started.inc();
  }

  token(): void {
    this.tokens.inc();
  }

  generationEnded(how: GenerationEnd): void {
    this.finished.inc({ status: how });
  }

  handOver(direction: HandOverDirection, bytes: number, stageStarted: boolean): void {
    this.handOverBytes.inc({ direction }, bytes);
    if (stageStarted) this.handOverStages.inc({ direction });
  }
}
