import type { StageTiming } from '@tandem/protocol';

/**
 * Exponentially weighted per-stage costs, split into prefill (per token) and decode
 * (per one-token step), as the planner's cost model wants them (the executor's figures and
 * a client's local ones). Figures are 0 until measured.
 */
export class StageStats {
  private readonly prefill: Float64Array;
  private readonly decode: Float64Array;
  private readonly count: Uint32Array;

  constructor(
    readonly stageCount: number,
    private readonly alpha = 0.2,
  ) {
    this.prefill = new Float64Array(stageCount);
    this.decode = new Float64Array(stageCount);
    this.count = new Uint32Array(stageCount);
  }

  /** Records that `tokens` tokens at `stage` cost `ms` of compute. */
  record(stage: number, tokens: number, ms: number): void {
    if (tokens <= 1) this.decode[stage] = this.decode[stage] === 0 ? ms : this.decode[stage] + this.alpha * (ms - this.decode[stage]);
    else {
      const per = ms / tokens;
      this.prefill[stage] = this.prefill[stage] === 0 ? per : this.prefill[stage] + this.alpha * (per - this.prefill[stage]);
    }
    this.count[stage]++;
  }

  /** Sets the figures of `stage` (a start-up estimate), as if from `samples` measurements. */
  set(stage: number, prefillMsPerToken: number, decodeMs: number, samples: number): void {
    [this.prefill[stage], this.decode[stage], this.count[stage]] = [prefillMsPerToken, decodeMs, samples];
  }

  /** The current figure of `stage` for a step of `tokens` positions, ms (0 until measured). */
  figure(stage: number, tokens: number): number {
    return tokens <= 1 ? this.decode[stage] : this.prefill[stage] * tokens;
  }

  /** The figures as published: prefill per prompt token and one decode step, ms (EWMA). */
  snapshot(): StageTiming[] {
    return Array.from({ length: this.stageCount }, (_, stage) => ({
      stage,
      prefillMsPerToken: this.prefill[stage],
      decodeMs: this.decode[stage],
      samples: this.count[stage],
    }));
  }
}
