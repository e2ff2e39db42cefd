import { lastPosition, StageStats, type StageKind } from '@tandem/model';
import type { HostTensor } from '@tandem/protocol';
import type { SessionCache, StageEngine } from './engine';
import { SessionClosedError } from './errors';

/** A waiting step as the schedule sees it: plain data. */
export interface QueuedStep {
  /** First stage of the step (it has not started while `stage === begin`). */
  readonly begin: number;
  /** The stage it runs next. */
  readonly stage: number;
  /** Positions of its input at that stage (T of [1, T, ...]); 1 once cut to the last position for the head. */
  readonly tokens: number;
  /** When its last stage call ended (its submission before the first), ms. */
  readonly lastRanAtMs: number;
  /** Before it starts it may run as one fused call: the engine has its whole range fused and it may be fused (SubmitOptions.fuse). */
  readonly fusable: boolean;
  /** The stage after its last (steps of the same `begin` and `end` may share a decode round, SchedulePolicy.rounds). */
  readonly end?: number;
}

/** One step of one session in the scheduler: its schedule view and what running it needs. */
interface Job extends QueuedStep {
  readonly sessionId: string;
  stage: number;
  readonly end: number;
  tensor: HostTensor;
  readonly cache: SessionCache;
  tokens: number;
  /** Positions the step brings to its cache's stages (its input's T, before any cut). */
  readonly taken: number;
  /** Positions at submission. */
  readonly positions: number;
  /** Long at submission (see StepOutcome.long). */
  readonly long: boolean;
  /** Run the head on the last position only (the step needs only the next token). */
  readonly lastRowOnly: boolean;
  /** Its head's output comes back as the greedy token (SubmitOptions.sample). */
  readonly sample: boolean;
  readonly enqueuedAtMs: number;
  startedAtMs: number | undefined;
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
  /** The step ran through every stage of the engine (an all-server step), not a split's range. */
  readonly whole: boolean;
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
   * Only the next token is wanted (a step ending with the head): the output is the greedy
   * token of the last position, int64 [1, 1], made where the logits were (StageEngine.runBatch's
   * `sample`; read it with `tokenOfOutput`, as an engine may return the logits all the same).
   */
  readonly sample?: boolean;
  /**
   * May the step run as one fused engine call (see StageScheduler)? Default true; false runs
   * it stage by stage whatever the engine offers (the executor's start-up profile uses it so
   * that every stage gets a measured cost of its own).
   */
  readonly fuse?: boolean;
}

/** How {@link schedule} picks the next call. */
export interface SchedulePolicy {
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
   * with other long steps there), so prefills progress under a steady stream of decode steps;
   * and never sooner after the last long call ended than that call took, so that while short
   * steps wait long steps take at most half of the engine's time, however many there are.
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
  /**
   * Decode rounds: when every waiting step is a one-token step that could run fused over the
   * same range and none is under way (sessions decoding on the server, nothing else waiting),
   * they run as ONE engine call over that range (StageEngine.runSteps), batched inside the
   * engine as they would be stage by stage, instead of one call per stage (20 calls, thread
   * hops and result buffers a round for two sessions of the `small` preset). Set by the caller
   * only for an engine that has runSteps. Default false.
   */
  readonly rounds?: boolean;
}

export interface SchedulerOptions extends SchedulePolicy {
  /** Called after each step completes (for counters). */
  readonly onStepDone?: (o: StepOutcome) => void;
  /**
   * Called after each engine call (for metrics): the number of steps it ran, the stage it ran
   * ('fused' for one call through every stage) and its wall time in ms.
   */
  readonly onCall?: (steps: number, stage: number | 'fused', elapsedMs: number) => void;
  /** Monotonic clock in ms (injected for tests). */
  readonly now?: () => number;
}

/** The scheduler's decision for one engine call: plain data. */
export interface Batch<S extends QueuedStep = QueuedStep> {
  /** The steps, the one heading the call first; their outputs come back in this order. */
  readonly steps: readonly S[];
  /** The stage they run (for a fused call, the first of its range). */
  readonly stage: number;
  /**
   * One call over the whole range of its steps: of its only step, a fused call (runRange); of
   * several one-token steps, a decode round (runSteps, SchedulePolicy.rounds). Else one call of
   * `stage` for every step.
   */
  readonly fused: boolean;
}

/** Whether a step of `tokens` positions at its stage is long under `policy` (never when it sets no `longStepTokens`). */
export function isLongStep(tokens: number, policy: Pick<SchedulePolicy, 'longStepTokens'>): boolean {
  return tokens > (policy.longStepTokens ?? Number.POSITIVE_INFINITY);
}

/** The last engine call that ran long steps: when it ended and how long it took, ms. */
export interface LongCall {
  readonly endedAtMs: number;
  readonly ms: number;
}

/**
 * The next engine call for `queue` (not empty) at `now` (ms), stage `s` being of kind `kinds[s]`,
 * `lastLong` the last call that ran long steps (none yet: undefined):
 * the policy StageScheduler describes, as a pure function (O(queue length)). The pool is every
 * waiting step, or only the short ones or only the long ones while both wait (interleaving). The
 * head is the step of the pool that waited `maxWaitMs` since its last call, else the oldest at the
 * shallowest stage (while steps are under way, a step that could run fused waits for them); it
 * runs fused when it may and no other step of the pool waits, except, with batching off, steps
 * not yet started at its own stage.
 * Else steps of the pool at its stage join it in queue order when that stage is position-wise,
 * within `maxBatch` steps and, beyond the head, `maxBatchTokens` tokens (a step that does not fit
 * waits; the oldest heads the next batch there, so a long step is not passed over twice).
 */
export function schedule<S extends QueuedStep>(
  queue: readonly S[],
  now: number,
  kinds: readonly StageKind[],
  policy: SchedulePolicy,
  lastLong?: LongCall,
): Batch<S> {
  const isLong = (j: S): boolean => isLongStep(j.tokens, policy);
  let pool = queue;
  if (policy.longStepTokens !== undefined) {
    const short = queue.filter((j) => !isLong(j));
    if (short.length > 0 && short.length < queue.length) {
      const long = queue.filter(isLong);
      const stall = policy.maxStallMs ?? 10;
      // Each long step's own stall, and the long steps' share of the engine: two prefills would
      // otherwise take turns, each stalled while the other ran, and starve the decode steps.
      const due = long.some((j) => now - j.lastRanAtMs >= stall) && (!lastLong || now - lastLong.endedAtMs >= Math.max(stall, lastLong.ms));
      pool = due ? long : short;
    }
  }
  // A step that could run as one fused call waits while steps are under way: they finish first
  // (their work is bounded: none starts meanwhile), and it then runs fused, or batched with
  // them at the first stage when their sessions come back with their next steps. Catching up
  // with them stage by stage instead costs it 1.5-1.7x a fused call alone on the small preset.
  const fusableNow = (j: S): boolean => j.fusable && j.stage === j.begin && !isLong(j);
  let candidates = pool;
  if (pool.some(fusableNow)) {
    const underWay = pool.filter((j) => j.stage > j.begin);
    if (underWay.length > 0) candidates = underWay;
  }
  let head = candidates[0];
  for (const j of candidates) if (j.stage < head.stage) head = j;
  let longest = pool[0];
  for (const j of pool) if (j.lastRanAtMs < longest.lastRanAtMs) longest = j;
  if (now - longest.lastRanAtMs >= (policy.maxWaitMs ?? 200)) head = longest;
  const stage = head.stage;
  // Fused only when nothing else in the pool waits: a fused call finishes the head's token at
  // once, and a server-side decode loop resubmits its next step at the first stage before the
  // next pick, so fusing past deeper steps let one session take call after call while those
  // waited for maxWaitMs (token stalls of 100-320 ms measured under load). Past a deeper step
  // not yet started (a split's server range), it runs stage by stage and catches up with it.
  const alone = pool.every((j) => j === head || (!policy.batching && j.stage === stage && j.stage === j.begin));
  const fused = fusableNow(head) && alone;
  if (!fused && policy.rounds && policy.batching && head.tokens === 1 && fusableNow(head)) {
    const round = pool.filter((j) => fusableNow(j) && j.tokens === 1 && j.begin === head.begin && j.end === head.end);
    // Only when nothing else waits: a step of another kind is batched with them stage by stage.
    if (round.length === pool.length) return { steps: [head, ...round.filter((j) => j !== head)].slice(0, policy.maxBatch), stage, fused: true };
  }
  if (fused || !policy.batching || kinds[stage] === 'attn') return { steps: [head], stage, fused };
  const maxTokens = policy.maxBatchTokens ?? Number.POSITIVE_INFINITY;
  const steps: S[] = [head];
  let tokens = head.tokens;
  for (const j of pool) {
    if (steps.length >= policy.maxBatch) break;
    if (j === head || j.stage !== stage || tokens + j.tokens > maxTokens) continue;
    steps.push(j);
    tokens += j.tokens;
  }
  return { steps, stage, fused: false };
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
 * call, once short steps have had the engine at least as long as the last long call took;
 * long steps never run fused. So a decode step waits behind at most one stage call of a
 * prefill at a time, not the whole prefill, and long steps take at most half of the engine
 * while short ones wait, however many prefills run at once (two prefills each stalled behind
 * the other's call used to take every call in turn: decode steps through every stage took
 * 40-160 ms instead of 5-7); a prefill still advances under any stream of decode steps (TPOT
 * stretched at most twice, TTFT at most about twice).
 *
 * Fused steps: a step picked before it started whose whole range the engine has fused
 * (`hasFusedRange(begin, end)`) runs as ONE engine call (`runRange`) when no other step waits
 * (with batching off: none but steps not yet started at its first stage), i.e. when it would
 * run alone anyway: that saves the per-stage call overhead (for gpt2, 26 calls and thread hops
 * per token). While other steps are under way it waits for them to finish (then it runs fused
 * or batched with their next steps at the first stage); past a deeper step not yet started (a
 * split's server range) it runs stage by stage and catches up with it. Fusing past deeper steps
 * starved them: a server-side decode loop resubmits at the first stage before the next pick,
 * so one session took fused call after call while the steps under way waited for `maxWaitMs`
 * (a load test at 5 req/s saw every session of one agent get no token for 100-320 ms while
 * another's came every 5 ms). After a call that
 * finished steps, the scheduler yields one event-loop turn before picking the next call, so
 * that sessions decoding on the server submit their next step first and can be batched
 * (continuous batching) rather than alternate in fused calls.
 *
 * Decode rounds (`rounds`, with an engine that has runSteps): when the only steps waiting are
 * one-token steps that could each run fused over the same range (sessions decoding on the
 * server) and none is under way, they run as ONE engine call (`runSteps`), batched inside the
 * engine exactly as they would be stage by stage. With the worker engine that is one thread hop
 * and one set of result buffers per round instead of one per stage call (20 for two sessions of
 * the `small` preset, each ~0.1 ms and a few buffers for the collector). A round's steps are
 * charged by tokens like a batch, and recorded in `wholeStats` like fused steps (no stage).
 *
 * Statistics: a stage-by-stage call is recorded for its stage (`stats`: what each stage costs
 * as a split's server range runs it). A fused call records no stage: it is cheaper than its
 * stages one call each, and pricing a split's range at that level would make splits look
 * cheaper than they are. Each step through every stage `[0, n)` that may fuse records its
 * whole compute in `wholeStats` (stage 0): fused when it ran alone, its shares of batched calls
 * otherwise, so the figure is what an all-server step costs as steps actually run. Steps that
 * may not fuse (SubmitOptions.fuse false, the start-up profile's staged round) record it only
 * when the engine has no fused whole range.
 *
 * Each call is decided by {@link schedule} (plain data from a pure function of the queue), then
 * run on the engine and settled (time charged, figures recorded, promises settled) apart.
 * Invariant: each step's stages run in order and exactly once (a fused call runs them all).
 */
export class StageScheduler {
  private readonly queue: Job[] = [];
  private running = false;
  /** The last call that ran long steps (schedule's `lastLong`). */
  private lastLong: LongCall | undefined;
  /** Jobs inside the engine call now. */
  private readonly inCall = new Set<Job>();
  /** Callbacks to run once the current engine call returns. */
  private afterCall: (() => void)[] = [];
  /** Sessions cancelled while one of their steps was inside the engine call. */
  private readonly cancelled = new Map<string, SessionClosedError>();
  private busyMs = 0;
  private batchedSteps = 0;
  private readonly now: () => number;
  /** Kind of each stage of the engine. */
  private readonly kinds: readonly StageKind[];
  /** Per-stage costs, each stage run on its own call (batched or not). */
  readonly stats: StageStats;
  /** Cost of a step through every stage as all-server steps run (stage 0 holds it). */
  readonly wholeStats = new StageStats(1);
  /** Whether the engine runs the whole range `[0, n)` as one fused call. */
  private readonly wholeFused: boolean;
  /** The options as schedule() reads them: decode rounds only with an engine that has runSteps. */
  private readonly policy: SchedulePolicy;

  constructor(
    private readonly engine: StageEngine,
    private readonly opts: SchedulerOptions,
  ) {
    this.now = opts.now ?? (() => performance.now());
    this.stats = new StageStats(engine.stageCount);
    this.wholeFused = engine.runRange !== undefined && engine.hasFusedRange?.(0, engine.stageCount) === true;
    this.policy = { ...opts, rounds: opts.rounds === true && engine.runSteps !== undefined };
    this.kinds = Array.from({ length: engine.stageCount }, (_, s) => engine.stageKind(s));
  }

  /** Steps waiting or running. */
  get depth(): number {
    return this.queue.length;
  }
  /** Total engine busy time since start, ms. */
  get busyTimeMs(): number {
    return this.busyMs;
  }
  /** Steps that shared a stage call with another session. */
  get batchedStepCount(): number {
    return this.batchedSteps;
  }

  /** Queues stages [begin, end) of one session's step on `tensor`; its cache takes the step's positions when it is done. */
  submit(sessionId: string, begin: number, end: number, tensor: HostTensor, cache: SessionCache, opts: SubmitOptions = {}): Promise<StepOutcome> {
    return new Promise<StepOutcome>((resolve, reject) => {
      const at = this.now();
      const lastRowOnly = opts.lastRowOnly ?? false;
      const input = this.cut(tensor, begin, lastRowOnly);
      const tokens = input.shape[1] ?? 1;
      const fusable = (opts.fuse ?? true) && this.engine.runRange !== undefined && this.engine.hasFusedRange?.(begin, end) === true;
      this.queue.push({
        sessionId,
        begin,
        stage: begin,
        end,
        tensor: input,
        cache,
        tokens,
        taken: tensor.shape[1] ?? 1,
        positions: tokens,
        long: tokens > (this.opts.longStepTokens ?? 1),
        lastRowOnly,
        sample: opts.sample ?? false,
        fusable,
        enqueuedAtMs: at,
        startedAtMs: undefined,
        lastRanAtMs: at,
        computeMs: 0,
        batchedStages: 0,
        resolve,
        reject,
      });
      // Start on the next turn of the event loop, so steps that arrived in the same I/O
      // phase (from several streams) can share the first stage call.
      if (!this.running) {
        this.running = true;
        setImmediate(() => void this.pump());
      }
    });
  }

  /** `t` as the input of `stage`: cut to its last position before the head when only that row is wanted. */
  private cut(t: HostTensor, stage: number, lastRowOnly: boolean): HostTensor {
    return lastRowOnly && t.dtype === 'float32' && this.kinds[stage] === 'head' ? lastPosition(t) : t;
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

  /** Decides, runs and settles one call at a time while steps wait. */
  private async pump(): Promise<void> {
    try {
      while (this.queue.length > 0) {
        const batch = schedule(this.queue, this.now(), this.kinds, this.policy, this.lastLong);
        const t0 = this.now();
        for (const j of batch.steps) {
          j.startedAtMs ??= t0;
          this.inCall.add(j);
        }
        const outputs = await this.run(batch);
        this.inCall.clear();
        const t1 = this.now();
        if (isLongStep(batch.steps[0].tokens, this.opts)) this.lastLong = { endedAtMs: t1, ms: t1 - t0 };
        const finished = this.settle(batch, outputs, t0, t1);
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

  /** Runs one call: one output (or error) per step of `batch`; a failed batch is run again step by step, so one bad input fails no other. */
  private async run(batch: Batch<Job>): Promise<(HostTensor | Error)[]> {
    const { stage, steps } = batch;
    if (batch.fused && steps.length > 1 && this.engine.runSteps) {
      // A decode round: when it fails some stages may have run, so no step can be retried.
      try {
        return await this.engine.runSteps(
          stage,
          steps[0].end,
          steps.map((j) => j.tensor),
          steps.map((j) => j.cache),
          steps.some((j) => j.sample) ? steps.map((j) => j.sample) : undefined,
        );
      } catch (err) {
        return steps.map(() => err as Error);
      }
    }
    if (batch.fused && this.engine.runRange) {
      const j = steps[0];
      try {
        return [await this.engine.runRange(stage, j.end, j.tensor, j.cache, j.lastRowOnly, j.sample)];
      } catch (err) {
        return [err as Error];
      }
    }
    // A step's output is sampled at its last stage, and only when that stage is the head.
    const sampled = (j: Job): boolean => j.sample && stage === j.end - 1 && this.kinds[stage] === 'head';
    const sample = steps.some(sampled) ? steps.map(sampled) : undefined;
    try {
      return await this.engine.runBatch(
        stage,
        steps.map((j) => j.tensor),
        steps.map((j) => j.cache),
        sample,
      );
    } catch (err) {
      if (steps.length === 1) return [err as Error];
      const outputs: (HostTensor | Error)[] = [];
      for (const j of steps) {
        try {
          outputs.push((await this.engine.runBatch(stage, [j.tensor], [j.cache], sampled(j) ? [true] : undefined))[0]);
        } catch (e) {
          outputs.push(e as Error);
        }
      }
      return outputs;
    }
  }

  /**
   * Applies the outputs of a call that ran from `t0` to `t1`: charges each step its share of
   * the time (by tokens), records the stage figures, moves each step on, and settles the steps
   * it finished or failed (a cancelled session's fail with its reason). Returns how many it settled.
   */
  private settle(batch: Batch<Job>, outputs: readonly (HostTensor | Error)[], t0: number, t1: number): number {
    const elapsed = t1 - t0;
    this.busyMs += elapsed;
    this.opts.onCall?.(batch.steps.length, batch.fused ? 'fused' : batch.stage, elapsed);
    const totalTokens = batch.steps.reduce((a, j) => a + j.tokens, 0);
    let settled = 0;
    batch.steps.forEach((j, i) => {
      const share = elapsed * (j.tokens / totalTokens);
      j.computeMs += share;
      j.lastRanAtMs = t1;
      if (batch.steps.length > 1) {
        this.batchedSteps++;
        j.batchedStages++;
      }
      const out = this.cancelled.get(j.sessionId) ?? outputs[i];
      if (!(out instanceof Error)) {
        // A decode step's context: the positions its stage held before it (advanced once the step ends).
        if (!batch.fused) this.stats.record(batch.stage, j.tokens, share, j.cache.tokensAt(batch.stage));
        j.stage = batch.fused ? j.end : j.stage + 1;
        if (j.stage < j.end) {
          j.tensor = this.cut(out, j.stage, j.lastRowOnly);
          j.tokens = j.tensor.shape[1] ?? 1;
          return;
        }
      }
      const idx = this.queue.indexOf(j);
      if (idx >= 0) this.queue.splice(idx, 1);
      settled++;
      if (out instanceof Error) {
        j.reject(out);
        return;
      }
      const context = j.cache.tokensAt(j.begin);
      j.cache.advance(j.begin, j.end, j.taken);
      if (this.isWhole(j) && (j.fusable || !this.wholeFused)) this.wholeStats.record(0, j.positions, j.computeMs, context);
      const started = j.startedAtMs ?? t0;
      const outcome = {
        tensor: out,
        computeMs: j.computeMs,
        queueMs: started - j.enqueuedAtMs,
        batchedStages: j.batchedStages,
        serviceMs: t1 - started,
        positions: j.positions,
        nominalMs: this.nominal(j, context),
        long: j.long,
        whole: this.isWhole(j),
      };
      this.opts.onStepDone?.(outcome);
      j.resolve(outcome);
    });
    return settled;
  }

  /** Whether `j` runs every stage of the engine. */
  private isWhole(j: Job): boolean {
    return j.begin === 0 && j.end === this.engine.stageCount;
  }

  /**
   * Stages [begin, end) of `j` priced by the current figures, the head as one row when cut, a
   * decode step at its `context` (the positions held before it) where a decode line is fitted;
   * 0 when a figure is missing. A whole step that may fuse is priced by the whole-model figure
   * (what the planner prices an all-server step at) once measured. O(stages).
   */
  private nominal(j: Job, context: number): number {
    if (this.isWhole(j) && j.fusable) {
      const whole = this.wholeStats.figure(0, j.positions, context);
      if (whole > 0) return whole;
    }
    let ms = 0;
    for (let s = j.begin; s < j.end; s++) {
      const rows = j.lastRowOnly && this.kinds[s] === 'head' ? 1 : j.positions;
      const f = this.stats.figure(s, rows, context);
      if (!(f > 0)) return 0;
      ms += f;
    }
    return ms;
  }
}
