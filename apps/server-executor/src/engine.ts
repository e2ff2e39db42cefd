import type { HostTensor } from '@tandem/protocol';
import type { GcKind } from './gc-watch';
import { modelIdOf, readManifest, sampledToken, StageRunner, type Float32Tensor, type KvCache, type StageKind } from '@tandem/model';

/**
 * One session's cache on an engine: the engine's own state for it (`kv`: a KvCache, or a handle
 * to one kept in the inference thread) and the tokens each stage has taken for the session, the
 * one count of its context (the session checks steps against it, the scheduler advances it).
 */
export class SessionCache<K = unknown> {
  private readonly taken: Uint32Array;
  constructor(
    readonly kv: K,
    stageCount: number,
  ) {
    this.taken = new Uint32Array(stageCount);
  }
  /** Tokens stage `stage` has taken (0 for a stage the session never ran here). */
  tokensAt(stage: number): number {
    return this.taken[stage];
  }
  /** Records that a step of `tokens` positions ran stages [begin, end) (or that `tokens` positions of a stage's state were put here). */
  advance(begin: number, end: number, tokens: number): void {
    for (let s = begin; s < end; s++) this.taken[s] += tokens;
  }
  /** Records that stage `stage` holds nothing any more (its state was taken to the client). */
  clearStage(stage: number): void {
    this.taken[stage] = 0;
  }
}

/** An attention stage's keys and values for positions of one session, float32 [1, nHead, T, headDim] each. */
export interface StageKv {
  readonly key: Float32Tensor;
  readonly value: Float32Tensor;
}

/**
 * The executor's view of a model engine (constructor-injected so logic tests can use a fake);
 * `K` is what it keeps per session in a SessionCache.
 */
export interface StageEngine<K = unknown> {
  readonly modelId: string;
  readonly stageCount: number;
  readonly nEmbd: number;
  /** Attention heads (an attention stage's keys and values are [1, nHead, T, nEmbd / nHead]). */
  readonly nHead: number;
  readonly vocabSize: number;
  readonly nPositions: number;
  /** Whether stage compute runs on the calling (event-loop) thread, so its CPU time is the main thread's. */
  readonly computesOnEventLoop?: boolean;
  /**
   * For an engine that computes on a thread of its own: calls `listener` with each garbage-collection
   * pause of that thread (an engine on the event loop has none of its own: the event loop's count).
   */
  onGcPause?(listener: (kind: GcKind, ms: number) => void): void;
  stageKind(stage: number): StageKind;
  newCache(): SessionCache<K>;
  /** Frees a cache's memory now (it is never used again). */
  releaseCache(cache: SessionCache<K>): void;
  /**
   * Runs one stage for several sessions; result i belongs to inputs[i]/caches[i]. An engine
   * may take ownership of the inputs' memory (the worker engine transfers it to its thread):
   * callers must not read an input's data after the call resolved. When the call rejects,
   * the inputs are intact, so the caller may retry them.
   *
   * `sample[i]` (a head stage only): result i is the greedy token of input i's last position,
   * int64 [1, 1] (`sampledToken`), in place of its logits, which then never leave the engine
   * (for GPT-2's vocabulary 201 KB a token, whose churn on the event loop made it collect every
   * second or so, pausing every stream for 10-60 ms). An engine that does not sample returns
   * the logits all the same: callers read the token with `tokenOfOutput`, which takes either.
   */
  runBatch(stage: number, inputs: readonly HostTensor[], caches: readonly SessionCache<K>[], sample?: readonly boolean[]): Promise<HostTensor[]>;
  /**
   * Whether {@link runRange} over exactly `[begin, end)` is one fused session call (a range
   * loaded fused, see EngineLoadOptions.fuseAllStages). Absent: no fused range.
   */
  hasFusedRange?(begin: number, end: number): boolean;
  /**
   * Runs stages `begin..end-1` on one session's step as one engine call and returns the last
   * stage's output; with `lastRowOnly` and a range ending with the head, the last position's
   * logits only ([1,1,V]). Values and the cache afterwards are those of running the stages one
   * by one (bit for bit). Ownership of the input as for {@link runBatch}: it may be taken,
   * and is intact when the call rejects. Present when the engine can have fused ranges.
   * `sample` (a range ending with the head): the greedy token of the last position, as for
   * {@link runBatch}'s `sample`.
   */
  runRange?(begin: number, end: number, input: HostTensor, cache: SessionCache<K>, lastRowOnly: boolean, sample?: boolean): Promise<HostTensor>;
  /**
   * Runs stages `begin..end-1` for several sessions' one-token steps as ONE engine call, stage by
   * stage inside the engine as the scheduler would call them: a position-wise stage batched over
   * the steps, an attention stage per session (their caches differ in length); result i belongs
   * to inputs[i]/caches[i], the head's output sampled where `sample[i]` (as {@link runBatch}).
   * Values and caches afterwards are those of those calls made one by one (bit for bit).
   * Ownership of the inputs as for {@link runBatch}. When it rejects, some stages may have run
   * and the steps cannot be retried (their caches moved on): the caller fails them. Present
   * where it saves per-call costs (the worker engine: one thread hop for a round of decode steps
   * instead of one per stage call, 20 for two sessions of the `small` preset).
   */
  runSteps?(begin: number, end: number, inputs: readonly HostTensor[], caches: readonly SessionCache<K>[], sample?: readonly boolean[]): Promise<HostTensor[]>;
  /**
   * Appends positions of stage `stage`'s state handed over by the client (`kv_put`) to a
   * session's cache: `tokens` positions after those the stage holds, with their keys and values
   * for an attention stage (`kv`, absent for the others). The cache's count advances by `tokens`,
   * and for `embed` the next token's position follows them. Ownership of `kv` as for the inputs
   * of {@link runBatch}. Absent: this engine cannot take handed-over state.
   */
  putState?(stage: number, cache: SessionCache<K>, tokens: number, kv: StageKv | undefined): Promise<void>;
  /**
   * Hands stage `stage`'s whole state for a session to the caller (`kv_take`) and frees it: the
   * keys and values of an attention stage (positions 0..N-1), undefined for the others; the
   * stage then holds nothing (count 0; `embed`'s next position is 0). Absent: this engine cannot
   * hand state over.
   */
  takeState?(stage: number, cache: SessionCache<K>): Promise<StageKv | undefined>;
  warmup(): Promise<void>;
  close(): Promise<void>;
  /**
   * Resolves, with the cause, once the engine can no longer run anything (e.g. its worker
   * thread died); every later call then rejects with EngineUnavailableError. Absent for an
   * engine that cannot fail this way.
   */
  readonly failed?: Promise<Error>;
}

/** How an engine loads its model. */
export interface EngineLoadOptions {
  /** onnxruntime intra-op threads; 0 or undefined lets onnxruntime choose. */
  readonly intraOpNumThreads?: number;
  /**
   * Also load one fused session over every stage `[0, n)` (StageRunner `fusedRanges`), so a
   * whole step of a session is one onnxruntime call ({@link StageEngine.runRange}). It holds
   * a second copy of the weights (gpt2: about +640 MB of RSS) and lengthens the load.
   */
  readonly fuseAllStages?: boolean;
  /**
   * Give memory back after bursts (EXECUTOR_RETURN_MEMORY): onnxruntime runs without its CPU
   * memory arena, and once the last KV cache is released the engine's thread collects garbage
   * (KV buffers are JavaScript ArrayBuffers, freed only by the collector).
   */
  readonly returnMemory?: boolean;
}

/** Prompt tokens of the engine's warm-up (OnnxStageEngine.warmup). */
export const WARMUP_PROMPT_TOKENS = 64;
/** Decode steps of the engine's warm-up, each way it can run them (stage by stage, fused). */
export const WARMUP_DECODE_STEPS = 16;

/**
 * StageEngine on onnxruntime-node through the shared StageRunner, holding every stage, run on
 * the calling thread: onnxruntime's `run` holds that thread for the whole call, so on the
 * executor's event loop a long batch stalls every stream, health check and keepalive
 * (EXECUTOR_ENGINE=inline). `WorkerStageEngine` runs this same engine off the loop.
 */
export class OnnxStageEngine implements StageEngine<KvCache> {
  private constructor(
    private readonly runner: StageRunner,
    readonly modelId: string,
  ) {}

  static async load(modelDir: string, opts: EngineLoadOptions = {}): Promise<OnnxStageEngine> {
    const n = opts.fuseAllStages ? (await readManifest(modelDir)).stages.length : 0;
    const runner = await StageRunner.load(modelDir, {
      intraOpNumThreads: opts.intraOpNumThreads || undefined,
      fusedRanges: n > 0 ? [[0, n]] : [],
      memoryArena: opts.returnMemory !== true,
    });
    return new OnnxStageEngine(runner, modelIdOf(modelDir));
  }

  get stageCount(): number {
    return this.runner.manifest.stages.length;
  }
  get nEmbd(): number {
    return this.runner.manifest.config.nEmbd;
  }
  get nHead(): number {
    return this.runner.manifest.config.nHead;
  }
  get vocabSize(): number {
    return this.runner.manifest.config.vocabSize;
  }
  get nPositions(): number {
    return this.runner.manifest.config.nPositions;
  }
  stageKind(stage: number): StageKind {
    return this.runner.manifest.stages[stage].kind;
  }
  newCache(): SessionCache<KvCache> {
    return new SessionCache(this.runner.newCache(), this.stageCount);
  }
  releaseCache(cache: SessionCache<KvCache>): void {
    cache.kv.clear();
  }

  async runBatch(stage: number, inputs: readonly HostTensor[], caches: readonly SessionCache<KvCache>[], sample?: readonly boolean[]): Promise<HostTensor[]> {
    const out = await this.runner.runBatch(
      stage,
      inputs,
      caches.map((c) => c.kv),
    );
    return sample && this.stageKind(stage) === 'head' ? out.map((t, i) => (sample[i] ? sampledToken(t, this.vocabSize) : t)) : out;
  }

  hasFusedRange(begin: number, end: number): boolean {
    return this.runner.hasFusedRange(begin, end);
  }

  /** StageEngine.runSteps, by this engine's own stage calls (the worker engine's thread runs it). */
  async runSteps(
    begin: number,
    end: number,
    inputs: readonly HostTensor[],
    caches: readonly SessionCache<KvCache>[],
    sample?: readonly boolean[],
  ): Promise<HostTensor[]> {
    let xs = inputs;
    for (let stage = begin; stage < end; stage++) {
      const last = stage === end - 1 ? sample : undefined;
      if (this.stageKind(stage) === 'attn') {
        const out: HostTensor[] = [];
        for (let i = 0; i < xs.length; i++) out.push((await this.runBatch(stage, [xs[i]], [caches[i]]))[0]);
        xs = out;
      } else {
        xs = await this.runBatch(stage, xs, caches, last);
      }
    }
    return xs as HostTensor[];
  }

  async runRange(begin: number, end: number, input: HostTensor, cache: SessionCache<KvCache>, lastRowOnly: boolean, sample?: boolean): Promise<HostTensor> {
    const out = await this.runner.runRange(begin, end, input, cache.kv, { lastOnly: lastRowOnly });
    return sample && this.stageKind(end - 1) === 'head' ? sampledToken(out, this.vocabSize) : out;
  }

  /** StageRunner.appendState for an embed or attention stage (the count alone for MLP and head stages, which keep nothing). */
  async putState(stage: number, cache: SessionCache<KvCache>, tokens: number, kv: StageKv | undefined): Promise<void> {
    const kind = this.stageKind(stage);
    if (kind === 'embed' || kind === 'attn') this.runner.appendState(stage, cache.kv, { tokens, ...(kv ?? {}) });
    cache.advance(stage, stage + 1, tokens);
  }

  /** StageRunner.exportState then dropState for an embed or attention stage; the count alone for the others. */
  async takeState(stage: number, cache: SessionCache<KvCache>): Promise<StageKv | undefined> {
    const kind = this.stageKind(stage);
    let kv: StageKv | undefined;
    if (kind === 'embed' || kind === 'attn') {
      const st = this.runner.exportState(stage, cache.kv);
      this.runner.dropState(stage, cache.kv);
      if (st.key && st.value) kv = { key: st.key, value: st.value };
    }
    cache.clearStage(stage);
    return kv;
  }

  /**
   * Runs a prompt of {@link WARMUP_PROMPT_TOKENS} and {@link WARMUP_DECODE_STEPS} decode steps
   * through every stage, and through the fused whole-model session when loaded (both capped by
   * the model's positions), so first requests pay no lazy initialisation. A shorter warm-up (4
   * tokens and one step) left the first long-context session of a fresh engine at about 3 × its
   * steady step for its first 10 steps (small preset, 14–22 ms against 4–7 at 200–400
   * positions), inflating the figures the executor publishes first, which the planner plans with.
   */
  async warmup(): Promise<void> {
    const n = this.stageCount;
    const steps = Math.min(WARMUP_DECODE_STEPS, Math.max(0, this.nPositions - 2));
    const prompt = Math.max(1, Math.min(WARMUP_PROMPT_TOKENS, this.nPositions - steps));
    for (const fused of this.runner.hasFusedRange(0, n) ? [false, true] : [false]) {
      const cache = this.runner.newCache();
      for (let k = 0; k <= steps; k++) {
        const t = k === 0 ? prompt : 1;
        let x: HostTensor = { dtype: 'int64', shape: [1, t], data: new BigInt64Array(t).fill(1n) };
        if (fused) await this.runner.runRange(0, n, x, cache, { lastOnly: true });
        else for (let s = 0; s < n; s++) x = await this.runner.run(s, x, cache);
      }
      cache.clear();
    }
  }

  async close(): Promise<void> {
    await this.runner.close();
  }
}
