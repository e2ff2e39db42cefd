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

/**
 * Weight each earlier decode step keeps in the decode line (half-life about 70 steps): decode
 * steps come many times a second, and the line needs the contexts of several sessions.
 */
export const DECODE_FIT_DECAY = 0.99;

/** A prefill's compute as a line over its prompt length: `fixedMs + tokens · msPerToken`. */
export interface PrefillLine {
  readonly fixedMs: number;
  readonly msPerToken: number;
}

/**
 * A decode step's compute as a line over its context (the positions its stages held before it):
 * `fixedMs + context · msPerContextToken`. An attention stage reads and extends its whole cache
 * every step (on the `small` preset the engine's own step grows about 1.5x from 16 to 512
 * positions, and all-server TPOT under load about 2x from prompts under 50 tokens to 200 and
 * over), so one mean figure prices long prompts' decodes too low.
 */
export interface DecodeLine {
  readonly fixedMs: number;
  readonly msPerContextToken: number;
}

/**
 * Exponentially weighted least squares of ms over x (prompt tokens or context; weights
 * `decay`^age). A prefill line with a negative intercept (a cost that grows faster than the
 * prompt, attention's n²) becomes the line through the origin that fits best; a decode line
 * has none then, nor without a rising slope (a stage whose step does not grow with its
 * context is its mean); none while the samples are too few or their x too alike.
 */
class LineFit {
  private w = 0;
  private x = 0;
  private y = 0;
  private xx = 0;
  private xy = 0;
  private n = 0;

  constructor(
    private readonly decay: number,
    private readonly throughOrigin: boolean,
  ) {}

  add(tokens: number, ms: number): void {
    const d = this.decay;
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
    if (!this.throughOrigin) return undefined;
    const through = this.xy / this.xx;
    return through > 0 ? { fixedMs: 0, msPerToken: through } : undefined;
  }
}

/**
 * Exponentially weighted per-stage costs, split into prefill (per token) and decode
 * (per one-token step), as the planner's cost model wants them (the executor's figures and
 * a client's local ones), a line fitted over recent prefills' lengths (StageTiming's
 * prefill_fixed_ms and prefill_ms_per_token_fitted) and one over recent decode steps' contexts
 * (decode_fixed_ms and decode_ms_per_context_token). Figures are 0 until measured.
 */
export class StageStats {
  private readonly prefill: Float64Array;
  private readonly decode: Float64Array;
  private readonly count: Uint32Array;
  private readonly fits: LineFit[];
  private readonly decodeFits: LineFit[];

  constructor(
    readonly stageCount: number,
    private readonly alpha = 0.2,
  ) {
    this.prefill = new Float64Array(stageCount);
    this.decode = new Float64Array(stageCount);
    this.count = new Uint32Array(stageCount);
    this.fits = Array.from({ length: stageCount }, () => new LineFit(PREFILL_FIT_DECAY, true));
    this.decodeFits = Array.from({ length: stageCount }, () => new LineFit(DECODE_FIT_DECAY, false));
  }

  /**
   * Records that `tokens` tokens at `stage` cost `ms` of compute; `context`, for a decode step,
   * the positions the stage held before it (left out: the step is not fitted over context).
   */
  record(stage: number, tokens: number, ms: number, context?: number): void {
    if (tokens <= 1) {
      this.decode[stage] = this.decode[stage] === 0 ? ms : this.decode[stage] + this.alpha * (ms - this.decode[stage]);
      if (context !== undefined) this.decodeFits[stage].add(context, ms);
    } else {
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

  /** The fitted decode line of `stage`; undefined until {@link PREFILL_FIT_MIN_SAMPLES} decode steps of different contexts show a rising cost. */
  decodeLine(stage: number): DecodeLine | undefined {
    const line = this.decodeFits[stage].line();
    return line && { fixedMs: line.fixedMs, msPerContextToken: line.msPerToken };
  }

  /**
   * The current figure of `stage` for a step of `tokens` positions, ms (0 until measured): a
   * prompt by the fitted line once there is one, a decode step at `context` by the decode line
   * once there is one (the mean step without `context`).
   */
  figure(stage: number, tokens: number, context?: number): number {
    if (tokens <= 1) {
      const line = context === undefined ? undefined : this.decodeLine(stage);
      return line ? line.fixedMs + (context ?? 0) * line.msPerContextToken : this.decode[stage];
    }
    const line = this.fits[stage].line();
    return line ? line.fixedMs + tokens * line.msPerToken : this.prefill[stage] * tokens;
  }

  /** The figures as published: prefill per prompt token, one decode step and their fitted lines (each absent without one), ms. */
  snapshot(): StageTiming[] {
    return Array.from({ length: this.stageCount }, (_, stage) => {
      const line = this.fits[stage].line();
      const decode = this.decodeLine(stage);
      return {
        stage,
        prefillMsPerToken: this.prefill[stage],
        decodeMs: this.decode[stage],
        samples: this.count[stage],
        ...(line ? { prefillFixedMs: line.fixedMs, prefillMsPerTokenFitted: line.msPerToken } : {}),
        ...(decode ? { decodeFixedMs: decode.fixedMs, decodeMsPerContextToken: decode.msPerContextToken } : {}),
      };
    });
  }
}
