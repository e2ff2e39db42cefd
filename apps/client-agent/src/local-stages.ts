import type { HostTensor } from '@tandem/protocol';
import { StageRunner, type KvCache } from '@tandem/model';

/** Measured cost of one local stage. */
export interface LocalStageCost {
  readonly stage: number;
  readonly prefillMsPerToken: number;
  readonly decodeMs: number;
  readonly samples: number;
}

const sleep = (ms: number): Promise<void> => (ms > 0 ? new Promise((r) => setTimeout(r, ms)) : Promise.resolve());

/**
 * The stages this device runs, on the shared StageRunner, with their measured costs
 * (EWMA; prefill per token and one decode step). With `slowdown` > 1 each stage is padded
 * to slowdown × its measured time: EMULATION of a slower device, for one-machine tests.
 */
export class LocalStages {
  private readonly prefill = new Map<number, number>();
  private readonly decode = new Map<number, number>();
  private readonly samples = new Map<number, number>();
  /** Emulated padding owed but not slept yet, ms (timers cannot sleep a fraction of a ms). */
  private paddingDebtMs = 0;

  private constructor(readonly runner: StageRunner, readonly slowdown: number, private readonly alpha = 0.2) {}

  static async load(modelDir: string, stages: readonly number[], opts: { slowdown: number; intraOpNumThreads?: number }): Promise<LocalStages> {
    const runner = await StageRunner.load(modelDir, { stages, intraOpNumThreads: opts.intraOpNumThreads || undefined });
    return new LocalStages(runner, opts.slowdown);
  }

  get stages(): ReadonlySet<number> { return this.runner.stages; }
  has(stage: number): boolean { return this.runner.stages.has(stage); }
  newCache(): KvCache { return this.runner.newCache(); }

  /** Runs one stage; resolves with its output and the time it took (including emulated padding). */
  async run(stage: number, input: HostTensor, cache: KvCache): Promise<{ output: HostTensor; ms: number }> {
    const t0 = performance.now();
    const output = (await this.runner.run(stage, input as never, cache)) as HostTensor;
    const real = performance.now() - t0;
    await this.pad((this.slowdown - 1) * real);
    const ms = real * this.slowdown;
    this.record(stage, input.shape[1] ?? 1, ms);
    return { output, ms };
  }

  /**
   * Sleeps the emulated padding. Short paddings are owed and paid together once they reach
   * 4 ms, and what a sleep overshoots is credited, so a generation takes slowdown × its real
   * compute time within a few ms (a 1 ms-per-stage timer floor would otherwise inflate fast stages).
   */
  private async pad(ms: number): Promise<void> {
    this.paddingDebtMs += ms;
    if (this.paddingDebtMs < 4) return;
    const t0 = performance.now();
    await sleep(this.paddingDebtMs);
    this.paddingDebtMs -= performance.now() - t0;
  }

  private record(stage: number, tokens: number, ms: number): void {
    const upd = (m: Map<number, number>, v: number): void => {
      const old = m.get(stage) ?? 0;
      m.set(stage, old === 0 ? v : old + this.alpha * (v - old));
    };
    if (tokens <= 1) upd(this.decode, ms);
    else upd(this.prefill, ms / tokens);
    this.samples.set(stage, (this.samples.get(stage) ?? 0) + 1);
  }

  /**
   * Measures every local stage: a prefill of `promptTokens` then `decodeSteps` decode
   * steps, repeated `rounds` times (the first round also pays onnxruntime's lazy start).
   */
  async profile(opts: { promptTokens: number; decodeSteps: number; rounds: number; nEmbd: number }): Promise<void> {
    for (let r = 0; r < opts.rounds; r++) {
      const cache = this.newCache();
      for (const [t, steps] of [[opts.promptTokens, 1], [1, opts.decodeSteps]] as const) {
        for (let k = 0; k < steps; k++) {
          for (const s of [...this.stages].sort((a, b) => a - b)) {
            const input: HostTensor = s === 0
              ? { dtype: 'int64', shape: [1, t], data: new BigInt64Array(t).fill(1n) }
              : { dtype: 'float32', shape: [1, t, opts.nEmbd], data: new Float32Array(t * opts.nEmbd).fill(0.01) };
            await this.run(s, input, cache);
          }
        }
      }
      cache.clear();
    }
  }

  costs(): LocalStageCost[] {
    return [...this.stages].sort((a, b) => a - b).map((stage) => ({
      stage, prefillMsPerToken: this.prefill.get(stage) ?? 0, decodeMs: this.decode.get(stage) ?? 0, samples: this.samples.get(stage) ?? 0,
    }));
  }

  close(): Promise<void> { return this.runner.close(); }
}
