import type { StageTiming } from '@tandem/protocol';

/**
 * Exponentially weighted per-stage costs, split into prefill (per token) and decode
 * (per one-token step), as the planner's cost model wants them. Figures are 0 until
 * measured.
 */
export class StageStats {
  private readonly prefill: Float64Array;
  private readonly decode: Float64Array;
  private readonly count: Uint32Array;

  constructor(readonly stageCount: number, private readonly alpha = 0.2) {
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

  /**
   * Records one call that ran several stages (a fused call) and cost `ms` in all: each part
   * (stage, tokens as that stage would have seen them) is recorded with a share of `ms`
   * proportional to its current figure (decode ms, or prefill ms/token × tokens). So the
   * stages keep their relative costs as last measured stage by stage while their level
   * follows the fused calls. When any part has no figure yet nothing is recorded (the call
   * cannot be split meaningfully) and false is returned. O(parts).
   */
  recordSpread(parts: readonly { readonly stage: number; readonly tokens: number }[], ms: number): boolean {
    const weights = parts.map((p) => this.figure(p.stage, p.tokens));
    const total = weights.reduce((a, w) => a + w, 0);
    if (parts.length === 0 || weights.some((w) => !(w > 0))) return false;
    parts.forEach((p, i) => this.record(p.stage, p.tokens, ms * (weights[i] / total)));
    return true;
  }

  /** The current figure of `stage` for a step of `tokens` positions, ms (0 until measured). */
  figure(stage: number, tokens: number): number {
    return tokens <= 1 ? this.decode[stage] : this.prefill[stage] * tokens;
  }

  /** The figures as published: prefill per prompt token and one decode step, ms (EWMA). */
  snapshot(): StageTiming[] {
    return Array.from({ length: this.stageCount }, (_, stage) => ({ stage, prefillMsPerToken: this.prefill[stage], decodeMs: this.decode[stage], samples: this.count[stage] }));
  }
}

/** How much longer steps take than their own compute, per kind: decode steps (one position), short prompts, long prompts (StepOutcome.long). */
export interface Stretch {
  readonly decode: number;
  readonly prompt: number;
  readonly longPrompt: number;
}

/** The kind of a finished step, as an index of per-kind sums (StepCounts): 0 decode step (one position), 1 prompt, 2 long prompt. */
export function stepKind(o: { readonly positions: number; readonly long: boolean }): number {
  return o.long ? 2 : o.positions > 1 ? 1 : 0;
}

/**
 * The measured slow-down of steps on this executor: per kind of step (decode, short prompt,
 * long prompt), Σ service time (first stage call's start to last one's end) over Σ nominal
 * time (the per-stage figures this executor publishes, for the step's stages and positions,
 * as they stood when it finished), over one telemetry interval, folded into an exponential
 * moving average across intervals. Since the figures are per-step shares of batched calls, a
 * decode step batched with B − 1 others is stretched about B times (it waits for the whole
 * call); a prompt in the same batch less (its share is larger); a long prompt held back
 * behind short steps more. The planner prices server latency as the published figures ×
 * stretch, so the product is what steps took (the executor's own measurement instead of a
 * queueing formula), whichever way the figures move. An interval without steps of a
 * kind moves its figure toward 1 (no load, no slow-down). 0 until the first measured interval.
 */
export class StretchMeter {
  private readonly value = [0, 0, 0];

  constructor(private readonly alpha = 0.3) {}

  /** Folds one interval into each kind's average: Σ service and Σ nominal time of its steps, per kind (stepKind). */
  interval(serviceMs: readonly number[], nominalMs: readonly number[]): Stretch {
    for (let k = 0; k < 3; k++) {
      const measured = nominalMs[k] > 0 ? Math.max(1, serviceMs[k] / nominalMs[k]) : undefined;
      if (measured !== undefined) this.value[k] = this.value[k] === 0 ? measured : this.value[k] + this.alpha * (measured - this.value[k]);
      else if (this.value[k] > 0) this.value[k] += this.alpha * (1 - this.value[k]);
    }
    return { decode: this.value[0], prompt: this.value[1], longPrompt: this.value[2] };
  }
}
