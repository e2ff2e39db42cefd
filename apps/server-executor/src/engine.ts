import type { HostTensor } from '@tandem/protocol';
import { modelIdOf, readManifest, StageRunner, type KvCache } from '@tandem/model';

/** What a stage computes; position-wise stages can batch sessions by concatenating tokens. */
export type StageKind = 'embed' | 'attn' | 'mlp' | 'head';

/** The executor's view of a model engine (constructor-injected so logic tests can use a fake). */
export interface StageEngine {
  readonly modelId: string;
  readonly stageCount: number;
  readonly nEmbd: number;
  readonly vocabSize: number;
  readonly nPositions: number;
  /** Whether stage compute runs on the calling (event-loop) thread, so its CPU time is the main thread's. */
  readonly computesOnEventLoop?: boolean;
  stageKind(stage: number): StageKind;
  newCache(): unknown;
  /** Frees a cache's memory now (it is never used again). */
  releaseCache(cache: unknown): void;
  /**
   * Runs one stage for several sessions; result i belongs to inputs[i]/caches[i]. An engine
   * may take ownership of the inputs' memory (the worker engine transfers it to its thread):
   * callers must not read an input's data after the call resolved. When the call rejects,
   * the inputs are intact, so the caller may retry them.
   */
  runBatch(stage: number, inputs: readonly HostTensor[], caches: readonly unknown[]): Promise<HostTensor[]>;
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
   */
  runRange?(begin: number, end: number, input: HostTensor, cache: unknown, lastRowOnly: boolean): Promise<HostTensor>;
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

/**
 * StageEngine on onnxruntime-node through the shared StageRunner, holding every stage, run on
 * the calling thread: onnxruntime's `run` holds that thread for the whole call, so on the
 * executor's event loop a long batch stalls every stream, health check and keepalive
 * (EXECUTOR_ENGINE=inline). `WorkerStageEngine` runs this same engine off the loop.
 */
export class OnnxStageEngine implements StageEngine {
  private constructor(private readonly runner: StageRunner, readonly modelId: string) {}

  static async load(modelDir: string, opts: EngineLoadOptions = {}): Promise<OnnxStageEngine> {
    const n = opts.fuseAllStages ? (await readManifest(modelDir)).stages.length : 0;
    const runner = await StageRunner.load(modelDir, { intraOpNumThreads: opts.intraOpNumThreads || undefined, fusedRanges: n > 0 ? [[0, n]] : [], memoryArena: opts.returnMemory !== true });
    return new OnnxStageEngine(runner, modelIdOf(modelDir));
  }

  get stageCount(): number { return this.runner.manifest.stages.length; }
  get nEmbd(): number { return this.runner.manifest.config.nEmbd; }
  get vocabSize(): number { return this.runner.manifest.config.vocabSize; }
  get nPositions(): number { return this.runner.manifest.config.nPositions; }
  stageKind(stage: number): StageKind { return this.runner.manifest.stages[stage].kind; }
  newCache(): KvCache { return this.runner.newCache(); }
  releaseCache(cache: unknown): void { (cache as KvCache).clear(); }

  async runBatch(stage: number, inputs: readonly HostTensor[], caches: readonly unknown[]): Promise<HostTensor[]> {
    return this.runner.runBatch(stage, inputs as never, caches as KvCache[]) as Promise<HostTensor[]>;
  }

  hasFusedRange(begin: number, end: number): boolean { return this.runner.hasFusedRange(begin, end); }

  async runRange(begin: number, end: number, input: HostTensor, cache: unknown, lastRowOnly: boolean): Promise<HostTensor> {
    return this.runner.runRange(begin, end, input as never, cache as KvCache, { lastOnly: lastRowOnly }) as Promise<HostTensor>;
  }

  /**
   * Runs a 4-token prompt and one decode step through every stage, and through the fused
   * whole-model session when loaded, so first requests pay no lazy initialisation.
   */
  async warmup(): Promise<void> {
    const n = this.stageCount;
    for (const fused of this.runner.hasFusedRange(0, n) ? [false, true] : [false]) {
      const cache = this.runner.newCache();
      for (const t of [4, 1]) {
        let x: HostTensor = { dtype: 'int64', shape: [1, t], data: new BigInt64Array(t).fill(1n) };
        if (fused) await this.runner.runRange(0, n, x as never, cache, { lastOnly: true });
        else for (let s = 0; s < n; s++) x = (await this.runner.run(s, x as never, cache)) as HostTensor;
      }
      cache.clear();
    }
  }

  async close(): Promise<void> { await this.runner.close(); }
}
