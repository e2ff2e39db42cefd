import { lastPosition } from '@tandem/model';
import type { HostTensor } from '@tandem/protocol';
import type { StageEngine } from './engine';
import { SessionClosedError } from './errors';
import { StageStats } from './stage-stats';

/** One step of one session: stages [stage, end) still to run on `tensor`. */
interface Job {
  readonly sessionId: string;
  /** First stage of the step (the job has not started while `stage === begin`). */
  readonly begin: number;
  stage: number;
  readonly end: number;
  tensor: HostTensor;
  readonly cache: unknown;
  /** Positions in `tensor` (T of [1, T, ...]); 1 once cut to the last position for the head. */
  tokens: number;
  /** Positions at submission. */
  positions: number;
  /** Long at submission (see StepOutcome.long). */
  long: boolean;
  /** Run the head on the last position only (the step needs only the next token). */
  readonly lastRowOnly: boolean;
  /** May run as one fused engine call (SubmitOptions.fuse). */
  readonly fuse: boolean;
  readonly enqueuedAtMs: number;
  startedAtMs: number | undefined;
  /** When its last stage call ended (its submission before the first): how long a long step has been held back. */
  lastRanAtMs: number;
  computeMs: number;
  batchedStages: number;
  readonly resolve: (r: StepOutcome) => void;
  readonly reject: (e: unknown) => void;
}

/** What a step produced and what it cost. */
export interface StepOutcome {
  readonly tensor: HostTensor;
  /** Server compute attributed to this step (its share of each batch it ran in), ms. */
  readonly computeMs: number;
  /** Time from submission until its first stage started, ms. */
  readonly queueMs: number;
  /** Stages of this step that ran batched with another session. */
  readonly batchedStages: number;
  /** Time from its first stage call's start to its last one's end, ms: its compute plus the other sessions' calls it waited for between its stages, whole batched calls included. */
  readonly serviceMs: number;
  /** Positions of the step at submission (1 for a decode step). */
  readonly positions: number;
  /** The step's stages as the published figures (StageStats) price them when it finished, ms (0 while any is unmeasured). */
  readonly nominalMs: number;
  /** The step came with more positions than `longStepTokens` (more than one when none is set). */
  readonly long: boolean;
}

/** How one step is to run. */
export interface SubmitOptions {
  /**
   * Only the last position's head output is wanted (a sampled step): the hidden state is cut
   * to its last position before the head stage. The head is position-wise, so that row is
   * bit-identical to the last row of the full head, at 1/T of the cost.
   */
  readonly lastRowOnly?: boolean;
  /**
   * May the step run as one fused engine call (see StageScheduler)? Default true; false runs
   * it stage by stage whatever the engine offers (the executor's start-up profile uses it so
   * that every stage gets a measured cost of its own).
   */
  readonly fuse?: boolean;
}

export interface SchedulerOptions {
  readonly batching: boolean;
  readonly maxBatch: number;
  /**
   * Most tokens in one batch of a position-wise stage (default: no limit). A batch always takes
   * its first step, whatever its length, then others while the total stays within this.
   */
  readonly maxBatchTokens?: number;
  /**
   * Steps of more positions than this are long (prompt prefills): they run stage by stage,
   * never fused, and steps of at most this many (decode steps, short prompts) go first, so a
   * decode step waits for at most one stage call of a long prefill rather than all of it
   * (prefill interleaving, the stage-level form of chunked prefill). Default: no step is long.
   */
  readonly longStepTokens?: number;
  /**
   * A long step held back by short ones for this long gets the next call (its stage, batched
   * with other long steps there), so prefills progress under a steady stream of decode steps.
   * ms, default 10.
   */
  readonly maxStallMs?: number;
  /**
   * A step that has waited this long since its last stage call (or its submission) heads the
   * next call, whatever its depth: serving the shallowest stage first otherwise starves deep
   * steps while new shallow ones keep arriving (a 200-session soak saw step p99 of 11-25 s).
   * ms, default 200.
   */
  readonly maxWaitMs?: number;
  /** Called after each step completes (for counters). */
  readonly onStepDone?: (o: StepOutcome) => void;
  /** Monotonic clock in ms (injected for tests). */
  readonly now?: () => number;
}

/**
 * Runs the server's stages of every session on one engine, one stage call at a time (the
 * engine uses all its threads for one call). Depth-synchronised batching: it serves the
 * shallowest waiting stage and, when that stage is position-wise (embed, mlp, head), runs
 * it for every waiting step at the same stage in one engine call; attention stages run
 * per session (their KV caches differ in length). A step moves through its stage range
 * one stage per turn, so steps of other sessions interleave and meet at the same depth.
 *
 * Prefill interleaving (`longStepTokens`): while short steps (decode steps) wait, long ones
 * (prompt prefills) are held back, except that one held back for `maxStallMs` gets the next
 * call; long steps never run fused. So a decode step waits behind at most one stage call of a
 * prefill, not the whole prefill, and a prefill still advances a stage per `maxStallMs` under
 * any stream of decode steps (TPOT bounded, TTFT stretched at most by that rate).
 *
 * Fused steps: a step picked before it started whose whole range the engine has fused
 * (`hasFusedRange(begin, end)`) runs as ONE engine call (`runRange`) when no other step waits
 * at its first stage (or batching is off), i.e. when it would run alone anyway: that saves
 * the per-stage call overhead (for gpt2, 26 calls and thread hops per token). When others
 * wait there, it runs stage by stage and batches with them as above. After a call that
 * finished steps, the scheduler yields one event-loop turn before picking the next call, so
 * that sessions decoding on the server submit their next step first and can be batched
 * (continuous batching) rather than alternate in fused calls.
 *
 * Statistics: a stage-by-stage call is recorded for its stage. A fused call's time is spread
 * over its stages in proportion to their current cost figures (StageStats.recordSpread), so
 * the per-stage costs keep the shape measured stage by stage (start-up profile, batched
 * calls) and follow the level measured by fused calls; a step whose stages have no figures
 * yet counts in compute and busy time only.
 *
 * Invariant: each step's stages run in order and exactly once (a fused call runs them all).
 */
export class StageScheduler {
  private readonly queue: Job[] = [];
  private running = false;
  /** Jobs inside the engine call now. */
  private readonly inCall = new Set<Job>();
  /** Callbacks to run once the current engine call returns. */
  private afterCall: (() => void)[] = [];
  /** Sessions cancelled while one of their steps was inside the engine call. */
  private readonly cancelled = new Map<string, SessionClosedError>();
  private busyMs = 0;
  private batchedSteps = 0;
  private readonly now: () => number;
  readonly stats: StageStats;

  constructor(private readonly engine: StageEngine, private readonly opts: SchedulerOptions) {
    this.now = opts.now ?? (() => performance.now());
    this.stats = new StageStats(engine.stageCount);
  }

  /** Steps waiting or running. */
  get depth(): number { return this.queue.length; }
  /** Total engine busy time since start, ms. */
  get busyTimeMs(): number { return this.busyMs; }
  /** Steps that shared a stage call with another session. */
  get batchedStepCount(): number { return this.batchedSteps; }

  /** Queues stages [begin, end) of one session's step on `tensor`. */
  submit(sessionId: string, begin: number, end: number, tensor: HostTensor, cache: unknown, opts: SubmitOptions = {}): Promise<StepOutcome> {
    return new Promise<StepOutcome>((resolve, reject) => {
      const at = this.now();
      const job: Job = { sessionId, begin, stage: begin, end, tensor, cache, tokens: 0, positions: 0, long: false, lastRowOnly: opts.lastRowOnly ?? false, fuse: opts.fuse ?? true, enqueuedAtMs: at, startedAtMs: undefined, lastRanAtMs: at, computeMs: 0, batchedStages: 0, resolve, reject };
      this.setInput(job, tensor);
      job.positions = job.tokens;
      job.long = job.tokens > (this.opts.longStepTokens ?? 1);
      this.queue.push(job);
      // Start on the next turn of the event loop, so steps that arrived in the same I/O
      // phase (from several streams) can share the first stage call.
      if (!this.running) { this.running = true; setImmediate(() => void this.pump()); }
    });
  }

  /** Makes `t` the input of the job's current stage, cut to its last position before the head when asked. */
  private setInput(j: Job, t: HostTensor): void {
    j.tensor = j.lastRowOnly && t.dtype === 'float32' && this.engine.stageKind(j.stage) === 'head' ? lastPosition(t) : t;
    j.tokens = j.tensor.shape[1] ?? 1;
  }

  /**
   * Fails every step of a session (it was cancelled or ended): waiting steps at once, a step
   * inside the current engine call when that call returns. Resolves once no stage call of
   * that session is running, so its cache can then be freed safely.
   */
  cancelSession(sessionId: string, reason: SessionClosedError): Promise<void> {
    for (let i = this.queue.length - 1; i >= 0; i--) {
      const j = this.queue[i];
      if (j.sessionId === sessionId && !this.inCall.has(j)) {
        this.queue.splice(i, 1);
        j.reject(reason);
      }
    }
    if (![...this.inCall].some((j) => j.sessionId === sessionId)) return Promise.resolve();
    this.cancelled.set(sessionId, reason);
    return new Promise<void>((resolve) => this.afterCall.push(resolve));
  }

  /** Whether `j` is a long step (see SchedulerOptions.longStepTokens). */
  private isLong(j: Job): boolean {
    return j.tokens > (this.opts.longStepTokens ?? Number.POSITIVE_INFINITY);
  }

  /**
   * The steps the next call is chosen from: every waiting step, unless both short and long
   * ones wait; then the short ones, or the long ones when one of them has been held back for
   * `maxStallMs` since its last call. O(queue length).
   */
  private candidates(): Job[] {
    if (this.opts.longStepTokens === undefined) return this.queue;
    const short = this.queue.filter((j) => !this.isLong(j));
    if (short.length === 0 || short.length === this.queue.length) return this.queue;
    const now = this.now();
    const stall = this.opts.maxStallMs ?? 10;
    const long = this.queue.filter((j) => this.isLong(j));
    return long.some((j) => now - j.lastRanAtMs >= stall) ? long : short;
  }

  /**
   * The next engine call, from `pool` (see `candidates`): the step that has waited `maxWaitMs`
   * since its last call if there is one, else the oldest step among those at the shallowest stage, batched with
   * other steps at that stage when the stage is position-wise. Serving the shallowest stage
   * first lets steps that arrived together stay at the same depth (after each attention
   * stage, which runs per session, they meet again at the next MLP). A batch holds at most
   * `maxBatch` steps and, beyond its first step, at most `maxBatchTokens` tokens: steps
   * that do not fit wait for a later call (the oldest step at a stage heads the next batch
   * there, so a long step is not passed over twice) while shorter ones behind it may join.
   * O(queue length).
   */
  private pickBatch(pool: Job[]): Job[] {
    let head = pool[0];
    let longest = pool[0];
    for (const j of pool) {
      if (j.stage < head.stage) head = j;
      if (j.lastRanAtMs < longest.lastRanAtMs) longest = j;
    }
    if (this.now() - longest.lastRanAtMs >= (this.opts.maxWaitMs ?? 200)) head = longest;
    const kind = this.engine.stageKind(head.stage);
    if (!this.opts.batching || kind === 'attn') return [head];
    const maxTokens = this.opts.maxBatchTokens ?? Number.POSITIVE_INFINITY;
    const batch: Job[] = [head];
    let tokens = head.tokens;
    for (const j of pool) {
      if (batch.length >= this.opts.maxBatch) break;
      if (j === head || j.stage !== head.stage || tokens + j.tokens > maxTokens) continue;
      batch.push(j);
      tokens += j.tokens;
    }
    return batch;
  }

  /**
   * Whether `j` (the head of the next call) runs as one fused call: it has not started, it is
   * not long, the engine has its whole range fused, and no other step of `pool` waits at its
   * stage (with batching off none could join it anyway). O(queue length).
   */
  private runsFused(j: Job, pool: Job[]): boolean {
    if (!j.fuse || j.stage !== j.begin || this.isLong(j) || !this.engine.runRange || !this.engine.hasFusedRange?.(j.stage, j.end)) return false;
    return !this.opts.batching || !pool.some((o) => o !== j && o.stage === j.stage);
  }

  /** The calls of one turn: one fused call of one step, or one stage for a batch of steps. */
  private async call(batch: Job[], fused: boolean): Promise<(HostTensor | Error)[]> {
    const stage = batch[0].stage;
    if (fused) {
      const j = batch[0];
      try {
        return [await (this.engine.runRange as NonNullable<StageEngine['runRange']>)(j.stage, j.end, j.tensor, j.cache, j.lastRowOnly)];
      } catch (err) {
        return [err as Error];
      }
    }
    try {
      return await this.engine.runBatch(stage, batch.map((j) => j.tensor), batch.map((j) => j.cache));
    } catch (err) {
      // One bad input must not fail the others: rerun them one by one.
      if (batch.length === 1) return [err as Error];
      const outputs: (HostTensor | Error)[] = [];
      for (const j of batch) {
        try { outputs.push((await this.engine.runBatch(stage, [j.tensor], [j.cache]))[0]); } catch (e) { outputs.push(e as Error); }
      }
      return outputs;
    }
  }

  /** Per-stage statistics of a fused call of `j` that took `ms`: the stages and their token counts as a staged run records them. */
  private recordFused(j: Job, ms: number): void {
    const parts: { stage: number; tokens: number }[] = [];
    for (let s = j.stage; s < j.end; s++) {
      // Stage by stage, a lastRowOnly step reaches the head cut to one row (see setInput).
      const cut = j.lastRowOnly && s > j.stage && this.engine.stageKind(s) === 'head';
      parts.push({ stage: s, tokens: cut ? 1 : j.tokens });
    }
    this.stats.recordSpread(parts, ms);
  }

  /** Stages [begin, end) of `j` priced by the current figures, the head as one row when cut; 0 when a figure is missing. O(stages). */
  private nominal(j: Job): number {
    let ms = 0;
    for (let s = j.begin; s < j.end; s++) {
      const rows = j.lastRowOnly && this.engine.stageKind(s) === 'head' ? 1 : j.positions;
      const f = this.stats.figure(s, rows);
      if (!(f > 0)) return 0;
      ms += f;
    }
    return ms;
  }

  private async pump(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const pool = this.candidates();
        const batch = this.pickBatch(pool);
        const fused = batch.length === 1 && this.runsFused(batch[0], pool);
        const stage = batch[0].stage;
        const t0 = this.now();
        for (const j of batch) { j.startedAtMs ??= t0; this.inCall.add(j); }
        const outputs = await this.call(batch, fused);
        const t1 = this.now();
        const elapsed = t1 - t0;
        this.inCall.clear();
        this.busyMs += elapsed;
        const totalTokens = batch.reduce((a, j) => a + j.tokens, 0);
        let finished = 0;
        batch.forEach((j, i) => {
          const share = elapsed * (j.tokens / totalTokens);
          j.computeMs += share;
          j.lastRanAtMs = t1;
          if (batch.length > 1) { this.batchedSteps++; j.batchedStages++; }
          const idx = this.queue.indexOf(j);
          const cancelledBy = this.cancelled.get(j.sessionId);
          const out = cancelledBy ?? outputs[i];
          if (out instanceof Error) {
            if (idx >= 0) this.queue.splice(idx, 1);
            j.reject(out);
            finished++;
            return;
          }
          if (fused) {
            this.recordFused(j, share);
            j.stage = j.end;
          } else {
            this.stats.record(stage, j.tokens, share);
            j.stage++;
          }
          if (j.stage < j.end) this.setInput(j, out);
          if (j.stage >= j.end) {
            if (idx >= 0) this.queue.splice(idx, 1);
            const started = j.startedAtMs ?? t0;
            const nominalMs = this.nominal(j);
            const outcome = { tensor: out, computeMs: j.computeMs, queueMs: started - j.enqueuedAtMs, batchedStages: j.batchedStages, serviceMs: t1 - started, positions: j.positions, nominalMs, long: j.long };
            this.opts.onStepDone?.(outcome);
            j.resolve(outcome);
            finished++;
          }
        });
        this.cancelled.clear();
        const waiting = this.afterCall;
        this.afterCall = [];
        for (const w of waiting) w();
        // Let the sessions whose steps just finished submit their next ones before the next pick.
        if (finished > 0) await new Promise<void>((r) => setImmediate(r));
      }
    } finally {
      this.running = false;
    }
  }
}
