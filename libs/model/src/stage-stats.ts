import type { StageTiming } from '@tandem/protocol';

/**
 * Weight each earlier prefill keeps when a new one is recorded into the line fit (half-life
 * about 14 prefills): long enough to hold prompts of several lengths, short enough to follow
 * the machine.
 */
export const PREFILL_FIT_DECAY = 0.95;
/** Prefills recorded before a line is fitted. */
export const PREFILL_FIT_MIN_SAMPLES = 8;
/**
 * Least spread of the recorded prompt lengths (standard deviation over mean) for a line: prompts
 * of about one length tell a slope from a fixed part no better than the mean per token does.
 */
export const PREFILL_FIT_MIN_SPREAD = 0.25;

/** A prefill's compute as a line over its prompt length: `fixedMs + tokens · msPerToken`. */
export interface PrefillLine {
  readonly fixedMs: number;
  readonly msPerToken: number;
}

/**
 * Exponentially weighted least squares of ms over tokens (weights {@link PREFILL_FIT_DECAY}^age).
 * A line with a negative intercept (a cost that grows faster than the prompt, attention's n²)
 * becomes the line through the origin that fits best; none while the prompts are too few or
 * too alike.
 */
class LineFit {
  private w = 0;
  private x = 0;
  private y = 0;
  private xx = 0;
  private xy = 0;
  private n = 0;

  add(tokens: number, ms: number): void {
    const d = PREFILL_FIT_DECAY;
    this.w = this.w * d + 1;
    this.x = this.x * d + tokens;
    this.y = this.y * d + ms;
    this.xx = this.xx * d + tokens * tokens;
    this.xy = this.xy * d + tokens * ms;
    this.n++;
  }

  line(): PrefillLine | undefined {
    if (this.n < PREFILL_FIT_MIN_SAMPLES) return undefined;
    const mx = this.x / this.w;
    const my = this.y / this.w;
    const varX = this.xx / this.w - mx * mx;
    if (!(varX > (PREFILL_FIT_MIN_SPREAD * mx) ** 2)) return undefined;
    const slope = (this.xy / this.w - mx * my) / varX;
    const fixed = my - slope * mx;
    if (fixed >= 0 && slope > 0) return { fixedMs: fixed, msPerToken: slope };
    const through = this.xy / this.xx;
    return through > 0 ? { fixedMs: 0, msPerToken: through } : undefined;
  }
}

/**
 * Exponentially weighted per-stage costs, split into prefill (per token) and decode
 * (per one-token step), as the planner's cost model wants them (the executor's figures and
 * a client's local ones), and a line fitted over recent prefills' lengths (StageTiming's
 * prefill_fixed_ms and prefill_ms_per_token_fitted). Figures are 0 until measured.
 */
export class StageStats {
  private readonly prefill: Float64Array;
  private readonly decode: Float64Array;
  private readonly count: Uint32Array;
  private readonly fits: LineFit[];

  constructor(
    readonly stageCount: number,
    private readonly alpha = 0.2,
  ) {
    this.prefill = new Float64Array(stageCount);
    this.decode = new Float64Array(stageCount);
    this.count = new Uint32Array(stageCount);
    this.fits = Array.from({ length: stageCount }, () => new LineFit());
  }

  /** Records that `tokens` tokens at `stage` cost `ms` of compute. */
  record(stage: number, tokens: number, ms: number): void {
    if (tokens <= 1) this.decode[stage] = this.decode[stage] === 0 ? ms : this.decode[stage] + this.alpha * (ms - this.decode[stage]);
    else {
      const per = ms / tokens;
      this.prefill[stage] = this.prefill[stage] === 0 ? per : this.prefill[stage] + this.alpha * (per - this.prefill[stage]);
      this.fits[stage].add(tokens, ms);
    }
    this.count[stage]++;
  }

  /** Sets the figures of `stage` (a start-up estimate), as if from `samples` measurements. */
  set(stage: number, prefillMsPerToken: number, decodeMs: number, samples: number): void {
    [this.prefill[stage], this.decode[stage], this.count[stage]] = [prefillMsPerToken, decodeMs, samples];
  }

  /** The fitted prefill line of `stage`; undefined until {@link PREFILL_FIT_MIN_SAMPLES} prefills of different lengths. */
  prefillLine(stage: number): PrefillLine | undefined {
    return this.fits[stage].line();
  }

  /** The current figure of `stage` for a step of `tokens` positions, ms (0 until measured): a prompt by the fitted line once there is one. */
  figure(stage: number, tokens: number): number {
    if (tokens <= 1) return this.decode[stage];
    const line = this.fits[stage].line();
    return line ? line.fixedMs + tokens * line.msPerToken : this.prefill[stage] * tokens;
  }

  /** The figures as published: prefill per prompt token, its fitted line (absent without one) and one decode step, ms. */
  snapshot(): StageTiming[] {
    return Array.from({ length: this.stageCount }, (_, stage) => {
      const line = this.fits[stage].line();
      return {
        stage,
        prefillMsPerToken: this.prefill[stage],
        decodeMs: this.decode[stage],
        samples: this.count[stage],
        ...(line ? { prefillFixedMs: line.fixedMs, prefillMsPerTokenFitted: line.msPerToken } : {}),
      };
    });
  }
}
